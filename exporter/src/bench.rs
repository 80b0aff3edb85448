//! `exporter bench`: embedding latency (batch 1) and throughput (batch 64) of the same
//! exported files through the agent's native engine (`infer`), tract-onnx, tract-tflite,
//! onnxruntime and LiteRT (the last two from Python, in the test venv), with ratios to
//! onnxruntime.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::runtime::{Format, TractModel};

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub runtime: String,
    pub batch: usize,
    /// Median seconds per call.
    pub seconds: f64,
    pub images_per_sec: f64,
    /// images/s divided by onnxruntime's at the same batch (higher is better).
    pub ratio_to_onnxruntime: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds per call of `f` over about `budget` (at least 5 calls, 2 warm-up calls).
pub fn time_calls(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    f()?;
    let end = Instant::now() + budget;
    let mut times = vec![];
    while Instant::now() < end || times.len() < 5 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// tract on `bytes` at each batch size.
pub fn bench_tract(
    format: Format,
    bytes: &[u8],
    side: usize,
    batches: &[usize],
    budget: Duration,
) -> Result<Vec<BenchRow>> {
    let mut rows = vec![];
    for &b in batches {
        let m = TractModel::load(format, bytes, b, side).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let x: Vec<f32> = (0..b * side * side * 3)
            .map(|i| (i * 37 % 256) as f32)
            .collect();
        let s = time_calls(budget, || {
            m.run(&x).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(())
        })?;
        rows.push(BenchRow {
            runtime: format!("tract-{}", format.name()),
            batch: b,
            seconds: s,
            images_per_sec: b as f64 / s,
            ratio_to_onnxruntime: None,
        });
    }
    Ok(rows)
}

/// The agent's native engine ([`infer`]) on the ONNX file at each batch size.
pub fn bench_native(
    bytes: &[u8],
    threads: usize,
    batches: &[usize],
    budget: Duration,
) -> Result<Vec<BenchRow>> {
    let e = infer::Engine::from_onnx(bytes, "model.onnx", infer::Options { threads })?;
    let (h, w, c) = e.input_dims();
    let mut rows = vec![];
    for &b in batches {
        let x: Vec<f32> = (0..b * h * w * c).map(|i| (i * 37 % 256) as f32).collect();
        let s = time_calls(budget, || {
            e.embed(&x)?;
            Ok(())
        })?;
        rows.push(BenchRow {
            runtime: "native".into(),
            batch: b,
            seconds: s,
            images_per_sec: b as f64 / s,
            ratio_to_onnxruntime: None,
        });
    }
    Ok(rows)
}

/// The Python half: onnxruntime and LiteRT on `dir/model.onnx` and `dir/model.tflite`.
pub fn bench_python(
    python: &Path,
    script: &Path,
    dir: &Path,
    side: usize,
    threads: usize,
    batches: &[usize],
    budget: Duration,
) -> Result<Vec<BenchRow>> {
    let cfg = serde_json::json!({
        "side": side,
        "threads": threads,
        "batches": batches,
        "seconds": budget.as_secs_f64(),
    });
    std::fs::write(dir.join("bench.json"), cfg.to_string())?;
    let out = Command::new(python)
        .arg(script)
        .arg(dir)
        .output()
        .with_context(|| format!("starting {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .with_context(|| format!("{} printed no JSON: {text}", script.display()))?;
    let mut rows = vec![];
    for rt in ["onnxruntime", "litert"] {
        for &b in batches {
            let r = &v[format!("{rt}_b{b}")];
            let s = r["seconds"].as_f64().context("missing seconds")?;
            rows.push(BenchRow {
                runtime: rt.to_string(),
                batch: b,
                seconds: s,
                images_per_sec: b as f64 / s,
                ratio_to_onnxruntime: None,
            });
        }
    }
    Ok(rows)
}

/// Fills in the ratios to onnxruntime.
pub fn add_ratios(rows: &mut [BenchRow]) {
    let reference: Vec<(usize, f64)> = rows
        .iter()
        .filter(|r| r.runtime == "onnxruntime")
        .map(|r| (r.batch, r.images_per_sec))
        .collect();
    for r in rows.iter_mut() {
        r.ratio_to_onnxruntime = reference
            .iter()
            .find(|(b, _)| *b == r.batch)
            .map(|(_, ips)| r.images_per_sec / ips);
    }
}

/// The test venv's python: `EDGECP_PYTHON`, else `scripts/pyenv.sh` of the source tree.
pub fn python(repo: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("EDGECP_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let script = repo.join("scripts/pyenv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {} (or set EDGECP_PYTHON)", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed (set EDGECP_PYTHON to a python with onnxruntime and ai-edge-litert): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    ))
}

/// Where tract-onnx's time goes: median seconds of the graph cut after each block
/// (`relu1`, `relu2`, `relu3`, then the whole net), at batch `batch`. Differences of
/// consecutive prefixes are the blocks' own times.
pub fn tract_prefix_times(
    onnx_bytes: &[u8],
    side: usize,
    batch: usize,
    budget: Duration,
) -> Result<Vec<(String, f64)>> {
    use tract_onnx::prelude::*;
    let x: Vec<f32> = (0..batch * side * side * 3)
        .map(|i| (i * 37 % 256) as f32)
        .collect();
    let mut out = vec![];
    for cut in ["relu1", "relu2", "relu3", "embedding"] {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &onnx_bytes[..])?
            .with_input_fact(0, f32::fact([batch, side, side, 3]).into())?;
        if cut != "embedding" {
            let id = model.node_by_name(cut)?.id;
            model = model.with_output_outlets(&[OutletId::new(id, 0)])?;
        }
        let plan = model.into_optimized()?.into_runnable()?;
        let s = time_calls(budget, || {
            let t = Tensor::from_shape(&[batch, side, side, 3], &x)?;
            plan.run(tvec!(t.into()))?;
            Ok(())
        })?;
        out.push((cut.to_string(), s));
    }
    Ok(out)
}
