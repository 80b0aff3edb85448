//! `edge-agent drift`: the online monitors on real images. Streams drawn from a dataset
//! split (as `trainer ingest` writes it), each in its own random order, go through the
//! served model and three things an agent does with them:
//!
//! 1. the label-free drift monitor (`monitoring::inputs`): every answer's label-free score,
//!    no labels at all; the inputs it needed to alarm are reported, for each label-free
//!    score the bundle's reference file holds (centroid distance and min score,
//!    `shared::icp::novelty`), the one the bundle's agent tests first;
//! 2. the labelled validity monitor (`monitoring::validity`), with the true labels as
//!    `POST /v1/feedback` would deliver them; the labels it needed are reported;
//! 3. adaptive conformal inference (`shared::icp::Aci`) against static calibration: the
//!    stream's error rate and mean set size at each `--aci-epsilons` level.
//!
//! The streams:
//! - `none`: the images as they are: exchangeable with the calibration data as far as the
//!   split is, so alarms should come in at most a fraction delta of the streams;
//! - `dark-tracks`: a real shift of capture conditions: only the quarter of the split's
//!   tracks (physical signs) whose frames are darkest on average (dusk, shade, backlight),
//!   unchanged, as a camera placed in such conditions would see them;
//! - `darken` (pixels x 0.3), `rotate` (180 degrees), `noise` (uniform +-64 per channel):
//!   synthetic shifts of every image.
//!
//! Each image is embedded once per shift (batched); the streams then replay the scores.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use edge_agent::model::loader::LoadedModel;
use edge_agent::model::predictor::LabelFree;
use edge_agent::monitoring::inputs::InputMonitor;
use edge_agent::monitoring::validity::{Monitor, ValidityConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use shared::icp::Aci;

use crate::{load_model, ModelArgs, Resolved};

/// Drift experiment settings.
#[derive(Args, Debug)]
pub struct DriftArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dataset written by `trainer ingest` (a version folder or its root).
    #[arg(long)]
    pub data: String,
    /// Split to stream: validation, calibration, test or train.
    #[arg(long, default_value = "validation")]
    pub split: String,
    /// Streams per shift (each a fresh monitor and a fresh random order).
    #[arg(long, default_value_t = 20)]
    pub streams: usize,
    /// Images per stream, at most the shift's images (labels for the labelled monitor, plain
    /// inputs for the label-free one, the stream length for ACI).
    #[arg(long, default_value_t = 1000)]
    pub labels: usize,
    /// Alarm level: the martingale reaching 1/delta.
    #[arg(long, default_value_t = 0.01)]
    pub delta: f64,
    /// Significance level of the prediction sets (default: the bundle's).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Print one JSON object (last line).
    #[arg(long)]
    pub json: bool,
    /// Step size gamma of adaptive conformal inference.
    #[arg(long, default_value_t = 0.005)]
    pub gamma: f64,
    /// Target error rates at which ACI is compared with static calibration.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.05,0.1")]
    pub aci_epsilons: Vec<f64>,
}

/// How an image is changed before it is answered.
#[derive(Clone, Copy, Debug)]
enum Shift {
    None,
    DarkTracks,
    Darken,
    Rotate,
    Noise,
}

impl Shift {
    const ALL: [Shift; 5] = [
        Shift::None,
        Shift::DarkTracks,
        Shift::Darken,
        Shift::Rotate,
        Shift::Noise,
    ];

    fn name(self) -> &'static str {
        match self {
            Shift::None => "none",
            Shift::DarkTracks => "dark-tracks",
            Shift::Darken => "darken",
            Shift::Rotate => "rotate",
            Shift::Noise => "noise",
        }
    }

    /// The model input (f32 raw pixels) of one u8 RGB image.
    fn apply(self, px: &[u8], rng: &mut ChaCha8Rng) -> Vec<f32> {
        match self {
            Shift::None | Shift::DarkTracks => px.iter().map(|&v| f32::from(v)).collect(),
            Shift::Darken => px.iter().map(|&v| (f32::from(v) * 0.3).round()).collect(),
            // 180 degrees: the pixel order reversed, each pixel's RGB kept
            Shift::Rotate => px
                .chunks_exact(3)
                .rev()
                .flatten()
                .map(|&v| f32::from(v))
                .collect(),
            Shift::Noise => px
                .iter()
                .map(|&v| (f32::from(v) + rng.random_range(-64.0f32..=64.0)).clamp(0.0, 255.0))
                .collect(),
        }
    }
}

/// The images a shift streams: the darkest quarter of the tracks for `dark-tracks` (at
/// least one track), every image otherwise.
fn members(set: &shared::data::ImageSet, shift: Shift) -> Vec<usize> {
    if !matches!(shift, Shift::DarkTracks) {
        return (0..set.len()).collect();
    }
    let mut by_track: std::collections::BTreeMap<&str, (f64, u64)> = Default::default();
    for i in 0..set.len() {
        let px = set.image(i);
        let e = by_track.entry(set.tracks[i].as_str()).or_default();
        e.0 += px.iter().map(|&v| f64::from(v)).sum::<f64>();
        e.1 += px.len() as u64;
    }
    let mut tracks: Vec<(&str, f64)> = by_track
        .into_iter()
        .map(|(t, (sum, n))| (t, sum / n.max(1) as f64))
        .collect();
    tracks.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
    let keep: std::collections::HashSet<&str> = tracks
        .iter()
        .take(tracks.len().div_ceil(4))
        .map(|t| t.0)
        .collect();
    (0..set.len())
        .filter(|&i| keep.contains(set.tracks[i].as_str()))
        .collect()
}

/// What the streams replay, per image of the split under one shift.
struct Scored {
    /// True-label nonconformity scores (the labelled monitor).
    alphas: Vec<f64>,
    /// Whether the set at the bundle's epsilon missed the label.
    misses: Vec<bool>,
    /// Label-free scores, one vector per [`LabelFree`] variant (the label-free monitors).
    free: Vec<Vec<f64>>,
    /// p-values of every class, `n x C` (ACI and static sets).
    p: Vec<f64>,
}

fn scores(
    model: &LoadedModel,
    set: &shared::data::ImageSet,
    shift: Shift,
    epsilon: f64,
    variants: &[&LabelFree],
) -> Result<Scored> {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let (mut alphas, mut misses) = (Vec::with_capacity(set.len()), Vec::with_capacity(set.len()));
    let mut free = vec![Vec::with_capacity(set.len()); variants.len()];
    let mut p = Vec::with_capacity(set.len() * model.predictor.n_classes());
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(64) {
        let x: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| shift.apply(set.image(i), &mut rng))
            .collect();
        let (answers, emb) = edge_agent::model::pipeline::answer(model, &x, epsilon)?;
        let dim = model.predictor.dim();
        for (k, &i) in chunk.iter().enumerate() {
            let label = set.labels[i];
            alphas.push(model.predictor.score(&emb[k * dim..(k + 1) * dim], label)?);
            misses.push(!answers[k].set.contains(&label));
            p.extend_from_slice(&answers[k].p_values);
        }
        for (v, out) in variants.iter().zip(&mut free) {
            out.extend(v.scores(model.predictor.icp(), &emb)?);
        }
    }
    Ok(Scored {
        alphas,
        misses,
        free,
        p,
    })
}

/// ACI against static calibration over one stream (`order`) at target `eps`: (static
/// error rate, static mean set size, ACI error rate, ACI mean set size).
fn aci_stream(
    p: &[f64],
    labels: &[u16],
    c: usize,
    order: &[usize],
    eps: f64,
    gamma: f64,
) -> Result<[f64; 4]> {
    let mut aci = Aci::new(eps, gamma)?;
    let mut sums = [0.0; 4];
    for &i in order {
        let row = &p[i * c..(i + 1) * c];
        let p_true = row[usize::from(labels[i])];
        let level = aci.level();
        let err = Aci::is_error(p_true, level);
        sums[0] += f64::from(u8::from(Aci::is_error(p_true, eps)));
        sums[1] += row.iter().filter(|&&v| v > eps).count() as f64;
        sums[2] += f64::from(u8::from(err));
        sums[3] += row.iter().filter(|&&v| v > level).count() as f64;
        aci.update(err, 0);
    }
    Ok(sums.map(|s| s / order.len().max(1) as f64))
}

/// Streams that are exchangeable with their calibration by construction: the calibration
/// split's label-free scores, dealt at random into a calibration half and a stream half
/// (frames, not tracks, so both halves hold the same tracks). Ville's inequality bounds
/// the alarm rate by delta here; the `none` shift, new tracks, is what a device sees.
/// At least 1,000 streams per score, each a fresh deal.
fn exchangeable_streams(variants: &[&LabelFree], a: &DriftArgs) -> Vec<serde_json::Value> {
    let streams = a.streams.max(1000);
    variants
        .iter()
        .map(|v| {
            let half = v.calibration().len() / 2;
            let n = a.labels.min(v.calibration().len() - half);
            let mut alarms = 0usize;
            for s in 0..streams {
                let mut deal = v.calibration().to_vec();
                deal.shuffle(&mut ChaCha8Rng::seed_from_u64(7_000 + s as u64));
                let (cal, stream) = deal.split_at(half);
                let m = InputMonitor::new("exchangeable", Some(cal), a.delta, s as u64, false);
                alarms += usize::from(m.observe(&stream[..n]));
            }
            json!({
                "score": v.kind().name(),
                "streams": streams,
                "stream_length": n,
                "alarms": alarms,
                "alarm_rate": alarms as f64 / streams as f64,
            })
        })
        .collect()
}

/// One label-free score's figures over a shift's streams.
struct FreeRow {
    alarms: usize,
    /// Inputs to the alarm, median and max over the streams that alarmed.
    median: Option<u64>,
    max: Option<u64>,
    /// Mean score of the shift's images and of the calibration examples.
    mean: f64,
    calibration_mean: f64,
}

fn median(v: &mut [u64]) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

pub fn run(a: &DriftArgs, resolve: impl Fn(&ModelArgs) -> Result<Resolved>) -> Result<ExitCode> {
    if !(a.delta > 0.0 && a.delta < 1.0) {
        bail!("--delta {} is outside (0, 1)", a.delta);
    }
    if !(a.gamma > 0.0 && a.gamma <= 1.0) {
        bail!("--gamma {} is outside (0, 1]", a.gamma);
    }
    if let Some(e) = a.aci_epsilons.iter().find(|e| !(**e > 0.0 && **e < 1.0)) {
        bail!("--aci-epsilons: {e} is outside (0, 1)");
    }
    let r = resolve(&a.model)?;
    let model = load_model(&r)?;
    let epsilon = a.epsilon.unwrap_or(model.bundle.manifest.icp.epsilon);
    let split = shared::data::split::SplitName::parse(&a.split).with_context(|| {
        format!(
            "--split {}: expected train, calibration, validation or test",
            a.split
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let set = rt
        .block_on(async {
            let loc = shared::store::open(&a.data)?;
            let ds = shared::data::shards::open_dataset(&loc).await?;
            anyhow::Ok(ds.read_split(split).await?)
        })
        .with_context(|| format!("reading the {} split of {}", a.split, a.data))?;
    if set.side != model.side() {
        bail!(
            "{}: images are {}x{}, the model takes {}x{}",
            a.data,
            set.side,
            set.side,
            model.side(),
            model.side()
        );
    }
    if set.is_empty() {
        bail!("{}: the {} split is empty", a.data, a.split);
    }
    let variants = model.predictor.label_free_variants();
    if variants.is_empty() && !a.json {
        eprintln!("note: the bundle has no label-free calibration scores (trained before they were written): the label-free monitor is skipped");
    }
    let c = model.predictor.n_classes();
    let exchangeable = exchangeable_streams(&variants, a);
    if !a.json {
        for (v, r) in variants.iter().zip(&exchangeable) {
            eprintln!(
                "exchangeable: label-free ({}) alarm in {} of {} streams of {} inputs (calibration split halves)",
                v.kind().name(),
                r["alarms"],
                r["streams"],
                r["stream_length"]
            );
        }
    }
    let mut rows = vec![];
    for shift in Shift::ALL {
        let m = members(&set, shift);
        let n = a.labels.min(m.len());
        let sc = scores(&model, &set, shift, epsilon, &variants)?;
        let error_rate = m.iter().filter(|&&i| sc.misses[i]).count() as f64 / m.len().max(1) as f64;
        let mut needed = vec![];
        let mut free_needed = vec![vec![]; variants.len()];
        let mut aci = vec![[0.0f64; 4]; a.aci_epsilons.len()];
        let mut aci_worst = vec![0.0f64; a.aci_epsilons.len()];
        for s in 0..a.streams {
            let mut order = m.clone();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(1_000 + s as u64));
            order.truncate(n);
            let cfg = ValidityConfig {
                delta: a.delta,
                seed: s as u64,
                log_alarm: false,
                ..ValidityConfig::default()
            };
            let monitor = Monitor::for_model(&model, cfg);
            for (k, &i) in order.iter().enumerate() {
                if monitor
                    .observe(sc.alphas[i], set.labels[i], sc.misses[i], epsilon)
                    .alarm
                {
                    needed.push(k as u64 + 1);
                    break;
                }
            }
            for ((v, free), got) in variants.iter().zip(&sc.free).zip(&mut free_needed) {
                let inputs = InputMonitor::new(
                    model.model_id(),
                    Some(v.calibration()),
                    a.delta,
                    s as u64,
                    false,
                );
                for (k, &i) in order.iter().enumerate() {
                    if inputs.observe(&[free[i]]) {
                        got.push(k as u64 + 1);
                        break;
                    }
                }
            }
            for (j, &eps) in a.aci_epsilons.iter().enumerate() {
                let r = aci_stream(&sc.p, &set.labels, c, &order, eps, a.gamma)?;
                for (acc, v) in aci[j].iter_mut().zip(r) {
                    *acc += v / a.streams.max(1) as f64;
                }
                aci_worst[j] = aci_worst[j].max((r[2] - eps).abs());
            }
        }
        let alarms = needed.len();
        let max = needed.iter().copied().max();
        let med = median(&mut needed);
        let per = |med: Option<u64>, max: Option<u64>, what: &str| {
            med.map_or(String::new(), |m| {
                format!(", after {m} {what} (median), {} (max)", max.unwrap_or(m))
            })
        };
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let free_rows: Vec<FreeRow> = free_needed
            .iter_mut()
            .zip(&variants)
            .zip(&sc.free)
            .map(|((got, v), free)| {
                let stream: Vec<f64> = m.iter().map(|&i| free[i]).collect();
                let max = got.iter().copied().max();
                FreeRow {
                    alarms: got.len(),
                    median: median(got),
                    max,
                    mean: mean(&stream),
                    calibration_mean: mean(v.calibration()),
                }
            })
            .collect();
        if !a.json {
            eprintln!(
                "{:>11}: {} images, error rate {error_rate:.4} at epsilon {epsilon}",
                shift.name(),
                m.len(),
            );
            for (v, r) in variants.iter().zip(&free_rows) {
                eprintln!(
                    "{:>11}  label-free ({}) alarm in {} of {} streams of {n} inputs{} (mean score {:.4}, calibration {:.4})",
                    "",
                    v.kind().name(),
                    r.alarms,
                    a.streams,
                    per(r.median, r.max, "inputs"),
                    r.mean,
                    r.calibration_mean
                );
            }
            eprintln!(
                "{:>11}  labelled alarm in {alarms} of {} streams of {n} labels{}",
                "",
                a.streams,
                per(med, max, "labels")
            );
            for (j, eps) in a.aci_epsilons.iter().enumerate() {
                let [se, ss, ae, asz] = aci[j];
                eprintln!(
                    "{:>11}  epsilon {eps}: static error {se:.4} (set {ss:.2}), ACI gamma {} error {ae:.4} (set {asz:.2}, worst stream |error - epsilon| {:.4})",
                    "", a.gamma, aci_worst[j]
                );
            }
        }
        let aci_rows: Vec<_> = a
            .aci_epsilons
            .iter()
            .zip(&aci)
            .zip(&aci_worst)
            .map(|((eps, r), worst)| {
                json!({
                    "epsilon": eps,
                    "static_error_rate": r[0],
                    "static_mean_set_size": r[1],
                    "aci_error_rate": r[2],
                    "aci_mean_set_size": r[3],
                    "aci_worst_stream_deviation": worst,
                })
            })
            .collect();
        let free_json: Vec<_> = variants
            .iter()
            .zip(&free_rows)
            .map(|(v, r)| {
                json!({
                    "score": v.kind().name(),
                    "alarms": r.alarms,
                    "alarm_rate": r.alarms as f64 / a.streams.max(1) as f64,
                    "median_inputs_to_alarm": r.median,
                    "max_inputs_to_alarm": r.max,
                    "mean_score": r.mean,
                    "calibration_mean_score": r.calibration_mean,
                })
            })
            .collect();
        let (free_alarms, free_med, free_max) = free_rows
            .first()
            .map_or((0, None, None), |r| (r.alarms, r.median, r.max));
        rows.push(json!({
            "shift": shift.name(),
            "images": m.len(),
            "stream_length": n,
            "error_rate": error_rate,
            "streams": a.streams,
            "alarms": alarms,
            "alarm_rate": alarms as f64 / a.streams.max(1) as f64,
            "median_labels_to_alarm": med,
            "max_labels_to_alarm": max,
            "label_free_available": !variants.is_empty(),
            "label_free_score": variants.first().map(|v| v.kind().name()),
            "label_free_scores": free_json,
            "label_free_alarms": free_alarms,
            "label_free_alarm_rate": free_alarms as f64 / a.streams.max(1) as f64,
            "median_inputs_to_label_free_alarm": free_med,
            "max_inputs_to_label_free_alarm": free_max,
            "aci_gamma": a.gamma,
            "aci": aci_rows,
        }));
    }
    println!(
        "{}",
        json!({
            "model_id": model.model_id(),
            "split": a.split,
            "images": set.len(),
            "labels_per_stream": a.labels,
            "delta": a.delta,
            "epsilon": epsilon,
            "exchangeable": exchangeable,
            "shifts": rows,
        })
    );
    Ok(ExitCode::SUCCESS)
}
