//! `edge-agent drift`: the online validity monitor on real labelled images. Streams drawn
//! from a dataset split (as `trainer ingest` writes it), each in its own random order, go
//! through the served model and the monitor with their true labels, as `POST /v1/feedback`
//! would deliver them:
//!
//! - `none`: the images as they are: exchangeable with the calibration data as far as the
//!   split is, so alarms should come in at most a fraction delta of the streams;
//! - `darken` (pixels x 0.3), `rotate` (180 degrees), `noise` (uniform +-64 per channel):
//!   shifted inputs, where the alarm should fire; the labels it needed are reported.
//!
//! Each image is embedded once per shift (batched); the streams then replay the scores.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use edge_agent::model::loader::LoadedModel;
use edge_agent::monitoring::validity::{Monitor, ValidityConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

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
    /// Labelled images per stream (at most the split's size).
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
}

/// How an image is changed before it is answered.
#[derive(Clone, Copy, Debug)]
enum Shift {
    None,
    Darken,
    Rotate,
    Noise,
}

impl Shift {
    const ALL: [Shift; 4] = [Shift::None, Shift::Darken, Shift::Rotate, Shift::Noise];

    fn name(self) -> &'static str {
        match self {
            Shift::None => "none",
            Shift::Darken => "darken",
            Shift::Rotate => "rotate",
            Shift::Noise => "noise",
        }
    }

    /// The model input (f32 raw pixels) of one u8 RGB image.
    fn apply(self, px: &[u8], rng: &mut ChaCha8Rng) -> Vec<f32> {
        match self {
            Shift::None => px.iter().map(|&v| f32::from(v)).collect(),
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

/// True-label scores and misses of every image of the split under one shift.
fn scores(
    model: &LoadedModel,
    set: &shared::data::ImageSet,
    shift: Shift,
    epsilon: f64,
) -> Result<(Vec<f64>, Vec<bool>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let (mut alphas, mut misses) = (Vec::with_capacity(set.len()), Vec::with_capacity(set.len()));
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
        }
    }
    Ok((alphas, misses))
}

fn median(v: &mut [u64]) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

pub fn run(a: &DriftArgs, resolve: impl Fn(&ModelArgs) -> Result<Resolved>) -> Result<ExitCode> {
    if !(a.delta > 0.0 && a.delta < 1.0) {
        bail!("--delta {} is outside (0, 1)", a.delta);
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
    let n = a.labels.min(set.len());
    let mut rows = vec![];
    for shift in Shift::ALL {
        let (alphas, misses) = scores(&model, &set, shift, epsilon)?;
        let error_rate = misses.iter().filter(|&&m| m).count() as f64 / misses.len() as f64;
        let mut needed = vec![];
        for s in 0..a.streams {
            let mut order: Vec<usize> = (0..set.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(1_000 + s as u64));
            let cfg = ValidityConfig {
                delta: a.delta,
                seed: s as u64,
                log_alarm: false,
                ..ValidityConfig::default()
            };
            let monitor = Monitor::for_model(&model, cfg);
            for (k, &i) in order.iter().take(n).enumerate() {
                if monitor
                    .observe(alphas[i], set.labels[i], misses[i], epsilon)
                    .alarm
                {
                    needed.push(k as u64 + 1);
                    break;
                }
            }
        }
        let alarms = needed.len();
        let max = needed.iter().copied().max();
        let med = median(&mut needed);
        if !a.json {
            eprintln!(
                "{:>6}: error rate {error_rate:.4} at epsilon {epsilon}; alarm in {alarms} of {} streams of {n} labels{}",
                shift.name(),
                a.streams,
                med.map_or(String::new(), |m| format!(
                    ", after {m} labels (median), {} (max)",
                    max.unwrap_or(m)
                ))
            );
        }
        rows.push(json!({
            "shift": shift.name(),
            "error_rate": error_rate,
            "streams": a.streams,
            "alarms": alarms,
            "alarm_rate": alarms as f64 / a.streams.max(1) as f64,
            "median_labels_to_alarm": med,
            "max_labels_to_alarm": max,
        }));
    }
    println!(
        "{}",
        json!({
            "model_id": model.model_id(),
            "split": a.split,
            "images": set.len(),
            "labels_per_stream": n,
            "delta": a.delta,
            "epsilon": epsilon,
            "shifts": rows,
        })
    );
    Ok(ExitCode::SUCCESS)
}
