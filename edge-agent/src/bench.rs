//! `edge-agent bench`: end-to-end predict latency at batch 1 (decode excluded and
//! included), throughput at batch 64, RSS while serving and cold start to first answer,
//! against Python onnxruntime + NumPy ICP (`scripts/py/bench_ort.py`) on the same bundle
//! in the same run.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use edge_agent::config::FileConfig;
use edge_agent::model::pipeline;
use edge_agent::monitoring::stats::percentile;
use edge_agent::serving::input::image_input;
use serde_json::json;

use crate::{load_model, ModelArgs, Resolved};

/// Benchmark settings.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the figures as one JSON object (last line).
    #[arg(long)]
    pub json: bool,
    /// Timed batch-1 calls.
    #[arg(long, default_value_t = 500)]
    pub iters: usize,
    /// Python with onnxruntime and NumPy for the baseline (default: $EDGECP_PYTHON, else
    /// the test venv `scripts/pyenv.sh` of the source tree creates once and prints, as
    /// `trainer bench` does).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The baseline script (default: scripts/py/bench_ort.py of the source tree).
    #[arg(long)]
    pub script: Option<PathBuf>,
}

fn ppm(side: usize, px: &[u8]) -> Vec<u8> {
    let mut v = format!("P6\n{side} {side}\n255\n").into_bytes();
    v.extend_from_slice(px);
    v
}

/// What the monitors add, as the HTTP service runs them: per answer the label-free score
/// (the centroid distance, where the bundle tests it) and test,
/// the pending prediction kept for its label and the ACI level and cut; per label the
/// true-label score, the labelled martingale and the ACI update (no state file). Returns
/// microseconds (per answer, per label), means over a few thousand.
fn monitor_cost(
    model: &edge_agent::model::loader::LoadedModel,
    x: &[f32],
    per: usize,
    eps: f64,
) -> Result<(f64, f64)> {
    use edge_agent::monitoring::adaptive::{AdaptiveConfig, DEFAULT_GAMMA};
    use edge_agent::monitoring::validity::{Monitor, PredictionId, ValidityConfig};
    let g = x.len() / per.max(1);
    let (answers, emb) = pipeline::answer(model, x, eps)?;
    let dim = model.predictor.dim();
    let cfg = ValidityConfig {
        log_alarm: false,
        adaptive: Some(AdaptiveConfig {
            gamma: DEFAULT_GAMMA,
            state_file: None,
        }),
        ..ValidityConfig::default()
    };
    let monitor = Monitor::for_model(model, cfg);
    let names = model.predictor.class_names();
    let n = 5000;
    let mut ids = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let k = i % g.max(1);
        let mut a = answers[k].clone();
        // the label-free score again (the centroid distance costs a pass over the
        // centroids that the answer above already paid): counted as the monitor's
        let row = &emb[k * dim..(k + 1) * dim];
        let free = model
            .predictor
            .centroid_distance(row)
            .unwrap_or(a.label_free);
        monitor.inputs().observe(&[free]);
        if let Some(level) = monitor.adaptive().and_then(|ad| ad.level(eps)) {
            a.cut_at(level, names);
        }
        let id = PredictionId::random();
        monitor.record(id, &emb[k * dim..(k + 1) * dim], &a.set, eps);
        ids.push((id, model.golden.labels[k]));
        std::hint::black_box(&a);
    }
    let per_answer = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for (id, label) in &ids {
        monitor
            .feedback(&id.to_string(), *label, model)
            .map_err(|e| anyhow::anyhow!("feedback in the benchmark: {e}"))?;
    }
    let per_label = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    Ok((per_answer, per_label))
}

/// Starts `serve` on loopback, times process start -> first answer, then reads its RSS
/// after 200 requests.
fn serve_figures(r: &Resolved, body: &[u8]) -> Result<(f64, f64)> {
    let exe = std::env::current_exe().context("locating the agent binary")?;
    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--runtime"])
        .arg(r.opts.runtime.name())
        .arg("--bundle")
        .arg(&r.bundle)
        .arg("--key")
        .arg(&r.key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting edge-agent serve")?;
    let result = probe(&mut child, t0, body);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn probe(child: &mut std::process::Child, t0: Instant, body: &[u8]) -> Result<(f64, f64)> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening http://")
        .with_context(|| format!("serve did not start: {line:?}"))?
        .to_string();
    let post = || -> Result<()> {
        let mut s = std::net::TcpStream::connect(&addr)?;
        write!(
                s,
                "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/x-portable-pixmap\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
        s.write_all(body)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        anyhow::ensure!(resp.starts_with("HTTP/1.1 200"), "bad answer: {resp}");
        Ok(())
    };
    post()?;
    let cold = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..200 {
        post()?;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .context("reading the server's /proc status")?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok((cold, rss_kb / 1024.0))
}

/// The CPU's model name (`/proc/cpuinfo`; `None` elsewhere): ratios differ between CPU
/// families, so every figure says where it was measured.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The Python side's figures (`None`, with a warning, when there is no Python with
/// onnxruntime or the script fails: the bench still prints ours).
fn baseline(a: &BenchArgs, bundle: &Path) -> Option<serde_json::Value> {
    let python = match shared::pyenv::python_for(a.python.as_deref(), "EDGECP_PYTHON", None) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "no Python baseline");
            return None;
        }
    };
    let script = a
        .script
        .clone()
        .unwrap_or_else(|| shared::pyenv::source_file("scripts/py/bench_ort.py"));
    let py = Command::new(&python)
        .arg(&script)
        .arg(bundle)
        .args(["--iters", &a.iters.to_string()])
        .output();
    match py {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok()),
        Ok(o) => {
            tracing::warn!(python = %python.display(), script = %script.display(), stderr = %String::from_utf8_lossy(&o.stderr), "the Python baseline failed");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, python = %python.display(), "cannot run the Python baseline");
            None
        }
    }
}

pub fn run(
    a: &BenchArgs,
    _file: &FileConfig,
    resolve: impl Fn(&ModelArgs) -> Result<Resolved>,
) -> Result<ExitCode> {
    let r = resolve(&a.model)?;
    let model = load_model(&r)?;
    model.engine.warm_up()?;
    let eps = model.bundle.manifest.icp.epsilon;
    // the verified golden data the model was self-tested on (not the file again)
    let golden = &model.golden;
    let side = golden.side;
    let per = side * side * 3;
    let g = golden.labels.len();
    let x: Vec<f32> = golden.inputs.iter().map(|&v| f32::from(v)).collect();
    let files: Vec<Vec<u8>> = golden.inputs.chunks(per).map(|p| ppm(side, p)).collect();

    let time_b1 = |decode: bool| -> Result<Vec<f64>> {
        let mut lat = Vec::with_capacity(a.iters);
        for i in 0..a.iters + 50 {
            let k = i % g;
            let t = Instant::now();
            let input = if decode {
                image_input(&files[k], "bench", side)?
            } else {
                x[k * per..(k + 1) * per].to_vec()
            };
            std::hint::black_box(pipeline::answer(&model, &input, eps)?);
            if i >= 50 {
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        lat.sort_by(f64::total_cmp);
        Ok(lat)
    };
    let raw = time_b1(false)?;
    let dec = time_b1(true)?;
    let (answer_us, label_us) = monitor_cost(&model, &x, per, eps)?;
    let xb: Vec<f32> = x.iter().copied().cycle().take(64 * per).collect();
    for _ in 0..3 {
        pipeline::answer(&model, &xb, eps)?;
    }
    let n = (a.iters / 10).max(20);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(pipeline::answer(&model, &xb, eps)?);
    }
    let thr = (64 * n) as f64 / t.elapsed().as_secs_f64();
    let (cold_ms, rss_mb) = serve_figures(&r, &files[0])?;

    let baseline = baseline(a, &r.bundle);
    let p50 = percentile(&raw, 0.5);
    let b = baseline.as_ref();
    let their_p50 = b.and_then(|v| v["p50_b1_us"].as_f64());
    let their_thr = b.and_then(|v| v["throughput_b64"].as_f64());
    let figures = json!({
        "model_id": model.model_id(),
        "runtime": model.engine.runtime().name(),
        "p50_b1_us": p50,
        "p99_b1_us": percentile(&raw, 0.99),
        "p50_b1_decode_us": percentile(&dec, 0.5),
        "p99_b1_decode_us": percentile(&dec, 0.99),
        "throughput_b64": thr,
        "monitors_us_per_answer": answer_us,
        "monitors_share_of_p50_b1": answer_us / p50,
        "monitors_us_per_label": label_us,
        "baseline": baseline,
        "p50_b1_ratio": their_p50.map(|t| t / p50),
        "throughput_b64_ratio": their_thr.map(|t| thr / t),
        "rss_mb": rss_mb,
        "cold_start_ms": cold_ms,
        "cpu": cpu_model(),
        "isa": infer::kernels::isa::isa().name(),
    });
    if !a.json {
        eprintln!(
            "batch 1: p50 {:.0} us, p99 {:.0} us (decode included: p50 {:.0} us); batch 64: {:.0} images/s; serving RSS {:.1} MB; cold start {:.1} ms",
            p50,
            percentile(&raw, 0.99),
            percentile(&dec, 0.5),
            thr,
            rss_mb,
            cold_ms
        );
        eprintln!(
            "monitors: {answer_us:.2} us per answer ({:.2} % of the batch-1 p50: label-free test, pending prediction, ACI level and cut), {label_us:.1} us per label (true-label score, labelled martingale, ACI update)",
            100.0 * answer_us / p50
        );
    }
    println!("{figures}");
    Ok(ExitCode::SUCCESS)
}
