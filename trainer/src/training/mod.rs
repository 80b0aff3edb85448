//! Training core: the siamese embedding network, its losses, samplers, augmentation, the
//! AdamW loop with checkpoints, resume and early stopping.
//!
//! Reproducibility: every random number (initialisation, batch sampling, augmentation,
//! dropout masks) comes from ChaCha8 seeded by the trial seed; step `s` draws from stream
//! `s + 1` (initialisation from stream 0). So the random numbers of a step do not depend on
//! what came before it, and a resumed run draws exactly what an uninterrupted run draws.
//! Same seed and same thread count give byte-identical weights.
//!
//! Files in the run folder:
//! - `checkpoint.safetensors`: `model.<name>` (network, see [`model`]), `adam_m.<name>` and
//!   `adam_v.<name>` (optimiser moments); metadata key `edgecp.checkpoint` holds the JSON of
//!   the loop state (step, early-stopping state, evaluations, configuration). Written every
//!   `checkpoint_every` steps and at the end, atomically (temporary file + rename).
//! - `best.safetensors`: the weights at the best validation evaluation so far.
//! - `model.safetensors`: the result: the best weights when a validation split was given,
//!   else the last ones.

// Until `trainer train` / `trainer demo` call into this module (the lead wires the CLI),
// the binary target does not use it; tests do. Remove this line when it is wired.

pub mod augment;
pub mod config;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod optim;
pub mod sampler;
pub mod speed;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use shared::data::ImageSet;

pub use config::{LossKind, StopMetric, TrialConfig};
pub use model::{embed, Arch, Backbone, ConvKernel};
pub use speed::{measure as measure_speed, SpeedReport};

/// The checkpoint (weights, optimiser moments, loop state).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The best weights so far (by the early-stopping metric).
pub const BEST_FILE: &str = "best.safetensors";
/// The trained weights, written at the end.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Metadata key of the loop state in the checkpoint.
pub const CHECKPOINT_METADATA_KEY: &str = "edgecp.checkpoint";
/// Images per forward pass when embedding for evaluation.
pub const EVAL_BATCH: usize = 256;

/// Progress of one training step, for progress bars.
#[derive(Clone, Debug)]
pub struct StepProgress {
    /// Steps done (1-based after the first step).
    pub step: usize,
    pub total_steps: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    pub epochs: usize,
    pub loss: f64,
    pub lr: f64,
    /// Training images per second in this process (sampling, forward, backward, update).
    pub images_per_sec: f64,
}

/// Receives metrics and progress as training goes.
pub trait TrainObserver: Send {
    /// A metric value (`train_loss` every step, `lr`, `epoch_loss` at the end of an epoch,
    /// `validation_nc_accuracy` / `validation_silhouette` / `train_nc_accuracy` at each evaluation).
    fn metric(&mut self, _step: usize, _epoch: usize, _name: &str, _value: f64) {}
    /// After every step.
    fn progress(&mut self, _progress: &StepProgress) {}
    /// A checkpoint was written.
    fn checkpoint(&mut self, _step: usize, _path: &Path) {}
}

/// An observer that ignores everything.
#[cfg(test)]
pub struct NoObserver;
#[cfg(test)]
impl TrainObserver for NoObserver {}

/// One evaluation on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub step: usize,
    /// Nearest-centroid accuracy on validation with centroids of training embeddings.
    pub nc_accuracy: f64,
    /// Silhouette of the validation embeddings by class (NaN where undefined).
    pub silhouette: f64,
}

impl Evaluation {
    pub fn metric(&self, m: StopMetric) -> f64 {
        match m {
            StopMetric::ValidationNcAccuracy => self.nc_accuracy,
            StopMetric::ValidationSilhouette => self.silhouette,
        }
    }
}

/// What a training run produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained network: the best weights when a validation split was given.
    pub model: Backbone,
    /// Steps completed (including those before a resume).
    pub steps: usize,
    pub total_steps: usize,
    pub stopped_early: bool,
    /// The step whose weights are the result (best evaluation or the last step).
    pub chosen_step: usize,
    pub best: Option<Evaluation>,
    pub evaluations: Vec<Evaluation>,
    /// Loss of every step run in this process, in order.
    pub losses: Vec<f64>,
    /// First step run in this process (0 unless resumed).
    pub resumed_at: usize,
    /// Training images per second in this process (evaluation excluded).
    pub images_per_sec: f64,
    pub seconds: f64,
    pub weights_path: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopState {
    step: usize,
    finished: bool,
    stopped_early: bool,
    best: Option<Evaluation>,
    bad_evals: usize,
    evaluations: Vec<Evaluation>,
    epoch_loss_sum: f64,
    epoch_loss_steps: usize,
    train_images: usize,
    config: TrialConfig,
}

/// The RNG of initialisation (`None`) or of step `step` (0-based).
pub fn rng_for(seed: u64, step: Option<usize>) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step.map_or(0, |s| s as u64 + 1));
    rng
}

/// Per-class mean embeddings of the classes present in `labels`: `(classes, centroids)`.
pub fn class_centroids(emb: &[f32], dim: usize, labels: &[u16]) -> (Vec<u16>, Vec<f32>) {
    let mut sums = std::collections::BTreeMap::<u16, (Vec<f64>, usize)>::new();
    for (row, &l) in emb.chunks_exact(dim).zip(labels) {
        let e = sums.entry(l).or_insert_with(|| (vec![0.0; dim], 0));
        e.0.iter_mut()
            .zip(row)
            .for_each(|(a, &v)| *a += f64::from(v));
        e.1 += 1;
    }
    let classes = sums.keys().copied().collect();
    let centroids = sums
        .values()
        .flat_map(|(s, n)| s.iter().map(move |v| (v / *n as f64) as f32))
        .collect();
    (classes, centroids)
}

/// Nearest-centroid accuracy of `emb` against `centroids` of `classes` (one row each).
pub fn nc_accuracy(
    classes: &[u16],
    centroids: &[f32],
    emb: &[f32],
    dim: usize,
    labels: &[u16],
) -> f64 {
    let correct = emb
        .chunks_exact(dim)
        .zip(labels)
        .filter(|(x, &y)| {
            let best = centroids
                .chunks_exact(dim)
                .map(|c| {
                    c.iter()
                        .zip(*x)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                })
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(k, _)| classes[k]);
            best == Some(y)
        })
        .count();
    correct as f64 / labels.len().max(1) as f64
}

/// Evaluates `model` on `validation`: centroids from up to `train_per_class` training
/// images per class (0: all), nearest-centroid accuracy (a validation class absent from
/// training counts as wrong) and silhouette.
pub fn evaluate(
    model: &Backbone,
    train: &ImageSet,
    validation: &ImageSet,
    train_per_class: usize,
    step: usize,
) -> Result<Evaluation> {
    let idx = sampler::ClassIndex::new(&train.labels).subsample(train_per_class);
    let sub = train.select(&idx);
    let dim = model.arch().embedding_dim;
    let train_e = embed(model, &sub, EVAL_BATCH)?;
    let val_e = embed(model, validation, EVAL_BATCH)?;
    let (classes, centroids) = class_centroids(&train_e, dim, &sub.labels);
    let silhouette =
        shared::silhouette::silhouette_score(&val_e, dim, &validation.labels).unwrap_or(f64::NAN);
    Ok(Evaluation {
        step,
        nc_accuracy: nc_accuracy(&classes, &centroids, &val_e, dim, &validation.labels),
        silhouette,
    })
}

fn save_checkpoint(
    path: &Path,
    model: &Backbone,
    opt: &optim::AdamW,
    state: &LoopState,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t))
        .collect();
    tensors.extend(opt.named_state()?);
    let meta = serde_json::to_string(state)?;
    let bytes = model::encode_safetensors(&tensors, CHECKPOINT_METADATA_KEY, &meta)?;
    model::write_atomic(path, &bytes)
}

type NamedTensors = HashMap<String, Tensor>;

fn load_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(NamedTensors, NamedTensors, LoopState)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (tensors, meta) = model::decode_safetensors(&bytes, device, CHECKPOINT_METADATA_KEY)
        .with_context(|| format!("decoding checkpoint {}", path.display()))?;
    let state: LoopState = serde_json::from_str(&meta).context("checkpoint: bad loop state")?;
    let mut net = HashMap::new();
    let mut rest = HashMap::new();
    for (k, v) in tensors {
        match k.strip_prefix("model.") {
            Some(n) => {
                net.insert(n.to_string(), v);
            }
            None => {
                rest.insert(k, v);
            }
        }
    }
    Ok((net, rest, state))
}

/// Trains a network on `train` (CPU, or CUDA device 0 with the `cuda` feature), writing
/// checkpoints and weights to `run_dir`. With `resume`, continues from the checkpoint in
/// `run_dir` when there is one (it must have been written with the same configuration and
/// training-set size); a finished run then returns at once.
pub fn train(
    cfg: &TrialConfig,
    train: &ImageSet,
    validation: Option<&ImageSet>,
    run_dir: &Path,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    if cfg.threads > 0 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build()
            .context("building the training thread pool")?;
        pool.install(|| train_inner(cfg, train, validation, run_dir, resume, observer))
    } else {
        train_inner(cfg, train, validation, run_dir, resume, observer)
    }
}

/// The device training runs on.
pub fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(Device::new_cuda(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Device::Cpu)
    }
}

fn train_inner(
    cfg: &TrialConfig,
    train: &ImageSet,
    validation: Option<&ImageSet>,
    run_dir: &Path,
    resume: bool,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    let started = Instant::now();
    if train.is_empty() {
        bail!("the training set is empty");
    }
    if let Some(v) = validation {
        if v.side != train.side {
            bail!(
                "validation images are {}x{}, training images {}x{}",
                v.side,
                v.side,
                train.side,
                train.side
            );
        }
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run folder {}", run_dir.display()))?;
    let device = device()?;
    let arch = Arch::new(train.side, &cfg.model)?;
    let mut net = Backbone::new(arch, &device, &mut rng_for(cfg.seed, None))?;
    let mut opt = optim::AdamW::new(net.params(), cfg.optim.weight_decay)?;
    let index = sampler::ClassIndex::new(&train.labels);
    let total = cfg.total_steps();
    let ckpt_path = run_dir.join(CHECKPOINT_FILE);
    let best_path = run_dir.join(BEST_FILE);
    let weights_path = run_dir.join(WEIGHTS_FILE);

    let mut state = LoopState {
        step: 0,
        finished: false,
        stopped_early: false,
        best: None,
        bad_evals: 0,
        evaluations: Vec::new(),
        epoch_loss_sum: 0.0,
        epoch_loss_steps: 0,
        train_images: train.len(),
        config: cfg.clone(),
    };
    if resume && ckpt_path.exists() {
        let (net_t, opt_t, st) = load_checkpoint(&ckpt_path, &device)?;
        if st.config != *cfg {
            bail!(
                "cannot resume from {}: it was written with a different configuration",
                ckpt_path.display()
            );
        }
        if st.train_images != train.len() {
            bail!(
                "cannot resume from {}: it was trained on {} images, this training set has {}",
                ckpt_path.display(),
                st.train_images,
                train.len()
            );
        }
        net.load_tensors(&net_t)?;
        opt.load_state(&opt_t, st.step as u64)?;
        tracing::info!(step = st.step, "resuming from {}", ckpt_path.display());
        state = st;
    } else {
        // A fresh run must not pick up another run's checkpoint or best weights.
        let _ = std::fs::remove_file(&ckpt_path);
        let _ = std::fs::remove_file(&best_path);
    }
    let resumed_at = state.step;
    let mut losses = Vec::new();
    let mut train_seconds = 0.0f64;
    let mut images_done = 0usize;

    while !state.finished && state.step < total {
        let step = state.step;
        let epoch = step / cfg.steps_per_epoch;
        let t0 = Instant::now();
        let mut rng = rng_for(cfg.seed, Some(step));
        let lr = cfg.lr_at(step);
        let make_input = |idx: &[usize], rng: &mut ChaCha8Rng| -> Result<Tensor> {
            if cfg.recipe.augment {
                augment::augmented_batch(train, idx, rng, &device)
            } else {
                model::batch_tensor(train, idx, &device)
            }
        };
        let (loss_t, n_images) = match cfg.recipe.loss {
            LossKind::Contrastive => {
                let pairs = sampler::balanced_pairs(&index, cfg.recipe.batch_pairs, &mut rng)?;
                let idx: Vec<usize> = pairs.a.iter().chain(&pairs.b).copied().collect();
                let x = make_input(&idx, &mut rng)?;
                let e = net.forward_train(&x, &mut rng)?;
                let n = pairs.a.len();
                let l = loss::contrastive(
                    &e.narrow(0, 0, n)?,
                    &e.narrow(0, n, n)?,
                    &pairs.same,
                    cfg.recipe.margin,
                )?;
                (l, cfg.batch_images())
            }
            LossKind::BatchHardTriplet => {
                let idx = sampler::pk_batch(
                    &index,
                    cfg.recipe.p_classes,
                    cfg.recipe.k_per_class,
                    &mut rng,
                )?;
                let labels: Vec<u16> = idx.iter().map(|&i| train.labels[i]).collect();
                let x = make_input(&idx, &mut rng)?;
                let e = net.forward_train(&x, &mut rng)?;
                (
                    loss::batch_hard_triplet(&e, &labels, cfg.recipe.margin)?,
                    cfg.batch_images(),
                )
            }
        };
        let loss_v = f64::from(loss_t.to_scalar::<f32>()?);
        if !loss_v.is_finite() {
            bail!("the loss diverged at step {} (value {loss_v})", step + 1);
        }
        let grads = loss_t.backward()?;
        opt.step(&grads, lr)?;
        train_seconds += t0.elapsed().as_secs_f64();
        images_done += n_images;
        losses.push(loss_v);
        state.step += 1;
        state.epoch_loss_sum += loss_v;
        state.epoch_loss_steps += 1;
        let done = state.step;
        observer.metric(done, epoch, "train_loss", loss_v);
        observer.metric(done, epoch, "lr", lr);
        observer.progress(&StepProgress {
            step: done,
            total_steps: total,
            epoch,
            epochs: cfg.epochs,
            loss: loss_v,
            lr,
            images_per_sec: images_done as f64 / train_seconds.max(1e-9),
        });
        if done.is_multiple_of(cfg.steps_per_epoch) {
            observer.metric(
                done,
                epoch,
                "epoch_loss",
                state.epoch_loss_sum / state.epoch_loss_steps.max(1) as f64,
            );
            state.epoch_loss_sum = 0.0;
            state.epoch_loss_steps = 0;
        }

        let last = done == total;
        if let Some(val) = validation {
            if (cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every)) || last {
                let ev = evaluate(&net, train, val, cfg.eval_train_per_class, done)?;
                observer.metric(done, epoch, "validation_nc_accuracy", ev.nc_accuracy);
                observer.metric(done, epoch, "validation_silhouette", ev.silhouette);
                let es = &cfg.early_stopping;
                let value = ev.metric(es.metric);
                let improved = match &state.best {
                    None => value.is_finite(),
                    Some(b) => value > b.metric(es.metric) + es.min_delta,
                };
                if improved {
                    state.best = Some(ev.clone());
                    state.bad_evals = 0;
                    net.save(&best_path)?;
                } else {
                    state.bad_evals += 1;
                }
                state.evaluations.push(ev);
                if es.patience > 0 && state.bad_evals >= es.patience && !last {
                    tracing::info!(
                        step = done,
                        "early stopping: no improvement of {} in {} evaluations",
                        es.metric.name(),
                        es.patience
                    );
                    state.stopped_early = true;
                    state.finished = true;
                }
            }
        }
        if last {
            state.finished = true;
        }
        if state.finished || (cfg.checkpoint_every > 0 && done.is_multiple_of(cfg.checkpoint_every))
        {
            save_checkpoint(&ckpt_path, &net, &opt, &state)?;
            observer.checkpoint(done, &ckpt_path);
        }
    }

    let chosen_step = match (&state.best, validation) {
        (Some(b), Some(_)) if best_path.exists() => {
            let best = Backbone::load(&best_path, &device)?;
            net.load_tensors(&best.named_tensors().into_iter().collect())?;
            b.step
        }
        _ => state.step,
    };
    net.save(&weights_path)?;
    Ok(TrainOutcome {
        model: net,
        steps: state.step,
        total_steps: total,
        stopped_early: state.stopped_early,
        chosen_step,
        best: state.best.clone(),
        evaluations: state.evaluations.clone(),
        losses,
        resumed_at,
        images_per_sec: images_done as f64 / train_seconds.max(1e-9),
        seconds: started.elapsed().as_secs_f64(),
        weights_path,
    })
}

#[cfg(test)]
mod tests;
