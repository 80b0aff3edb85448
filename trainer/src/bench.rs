//! `trainer bench icp`: ICP decisions per second and the silhouette, ours (Rust, in
//! process) against what a user would otherwise write (vectorised NumPy with BLAS, and
//! scikit-learn's `silhouette_score`), measured in one run on identical data.
//!
//! The data are synthetic Gaussian class clusters of embedding size `--dim`. They are
//! written to a temporary directory as raw little-endian arrays and `scripts/py/bench_icp.py`
//! is run with the venv's python (`--python`, else `EDGECP_PYTHON`, else
//! `scripts/pyenv.sh`). A table goes to stdout; with `--json` the last stdout line is one
//! JSON object with every figure and the ratios (ours / theirs, higher is better).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use shared::icp::{IcpPredictor, Ncm, NcmKind, PValueMode, Predictions};
use shared::silhouette::silhouette;

#[derive(clap::Args, Debug)]
pub struct IcpBenchArgs {
    /// Print the figures as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Embedding dimension E.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 43)]
    pub classes: usize,
    /// Calibration scores (calibration examples).
    #[arg(long, default_value_t = 5000)]
    pub calibration: usize,
    /// Proper-training embeddings: k-NN references and centroid fit.
    #[arg(long, default_value_t = 28000)]
    pub references: usize,
    /// k of the k-NN measure.
    #[arg(long, default_value_t = 40)]
    pub k: usize,
    /// Batch size of the batched figures (also the number of distinct queries at batch 1).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Samples of the silhouette figure.
    #[arg(long, default_value_t = 30000)]
    pub silhouette_n: usize,
    /// Repetitions of each silhouette run (the fastest counts).
    #[arg(long, default_value_t = 2)]
    pub silhouette_repeats: usize,
    /// Significance level of the prediction sets.
    #[arg(long, default_value_t = 0.05)]
    pub epsilon: f64,
    /// Minimum measuring time per throughput figure, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub min_seconds: f64,
    /// Seed of the synthetic data and of the smoothing taus.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Python with numpy and scikit-learn (default: $EDGECP_PYTHON, else scripts/pyenv.sh).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The Python side (default: scripts/py/bench_icp.py of the source tree).
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Skip the scikit-learn run on float64 input (float32, the embeddings' type, always runs).
    #[arg(long)]
    pub no_sklearn_f64: bool,
}

/// SplitMix64 + Box-Muller: reproducible synthetic data without extra dependencies.
struct Gen(u64);

impl Gen {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Class centres and labelled samples around them (labels uniform).
struct Clusters {
    centres: Vec<f64>,
    dim: usize,
    classes: usize,
}

impl Clusters {
    fn new(g: &mut Gen, classes: usize, dim: usize) -> Self {
        Clusters {
            centres: (0..classes * dim).map(|_| g.normal()).collect(),
            dim,
            classes,
        }
    }

    fn sample(&self, g: &mut Gen, n: usize, noise: f64) -> (Vec<f32>, Vec<u16>) {
        let mut x = Vec::with_capacity(n * self.dim);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            // every class present (round-robin start), then uniform
            let c = if i < self.classes {
                i
            } else {
                (g.next_u64() % self.classes as u64) as usize
            };
            for t in 0..self.dim {
                x.push((self.centres[c * self.dim + t] + noise * g.normal()) as f32);
            }
            y.push(c as u16);
        }
        (x, y)
    }
}

/// Items per second of `f` (which processes `items` per call): one warm-up call, then
/// calls until `min` has elapsed.
fn rate(items: usize, min: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t0 = Instant::now();
    let mut calls = 0usize;
    loop {
        f()?;
        calls += 1;
        let el = t0.elapsed();
        if el >= min {
            return Ok((items * calls) as f64 / el.as_secs_f64());
        }
    }
}

fn write_raw<T: Copy>(dir: &Path, name: &str, v: &[T], to_le: impl Fn(T) -> Vec<u8>) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
    for &x in v {
        f.write_all(&to_le(x))?;
    }
    f.flush()?;
    Ok(())
}

fn read_f64(path: &Path) -> Result<Vec<f64>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

fn source_root() -> PathBuf {
    shared::pyenv::source_root()
}

fn find_python(args: &IcpBenchArgs) -> Result<PathBuf> {
    python_for(args.python.as_deref(), "EDGECP_PYTHON", None)
}

/// The Python to compare against: `explicit`, else the environment variable `var`, else
/// the venv `scripts/pyenv.sh [requirements]` creates (once) and prints
/// ([`shared::pyenv::python_for`]).
fn python_for(explicit: Option<&Path>, var: &str, requirements: Option<&str>) -> Result<PathBuf> {
    Ok(shared::pyenv::python_for(explicit, var, requirements)?)
}

/// Temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run_icp(args: &IcpBenchArgs) -> Result<()> {
    if args.k == 0
        || args.k > args.references
        || args.classes < 2
        || args.batch == 0
        || args.dim == 0
    {
        bail!("need classes >= 2, 1 <= k <= references, batch >= 1, dim >= 1");
    }
    let (e, c, b) = (args.dim, args.classes, args.batch);
    let min = Duration::from_secs_f64(args.min_seconds);
    let threads = rayon::current_num_threads();
    tracing::info!(threads, "generating synthetic embeddings");
    let mut g = Gen(args.seed);
    let clusters = Clusters::new(&mut g, c, e);
    let noise = 0.6;
    let (refs, ref_labels) = clusters.sample(&mut g, args.references, noise);
    let (cal, cal_labels) = clusters.sample(&mut g, args.calibration, noise);
    let (queries, _) = clusters.sample(&mut g, b, noise);
    let (sil_x, sil_labels) = clusters.sample(&mut g, args.silhouette_n, noise);

    tracing::info!("fitting and calibrating");
    let nc = Ncm::fit(NcmKind::NearestCentroid, &refs, &ref_labels, e, c)?;
    let nc_cal = nc.label_scores(&cal, &cal_labels)?;
    let nc_icp =
        IcpPredictor::calibrate(nc.clone(), &cal, &cal_labels, false, PValueMode::Standard)?;
    let knn = Ncm::fit(NcmKind::Knn { k: args.k }, &refs, &ref_labels, e, c)?;
    let knn_cal = knn.label_scores(&cal, &cal_labels)?;
    let knn_icp = IcpPredictor::calibrate(
        knn.clone(),
        &cal,
        &cal_labels,
        false,
        PValueMode::Smoothed { seed: args.seed },
    )?;

    // ours
    tracing::info!("measuring ours");
    let mut out = Predictions::default();
    let ours_nc1 = rate(b, min, || {
        for q in queries.chunks_exact(e) {
            nc_icp.predict_into(q, args.epsilon, &mut out)?;
        }
        Ok(())
    })?;
    let ours_ncb = rate(b, min, || {
        Ok(nc_icp.predict_into(&queries, args.epsilon, &mut out)?)
    })?;
    nc_icp.predict_into(&queries, args.epsilon, &mut out)?;
    let ours_nc_p = out.p_values().to_vec();
    let ours_knnb = rate(b, min, || {
        Ok(knn_icp.predict_into(&queries, args.epsilon, &mut out)?)
    })?;
    let ours_knn_alpha = knn.scores(&queries)?;
    let mut sil_times = Vec::new();
    let mut sil_score = f64::NAN;
    for _ in 0..args.silhouette_repeats.max(1) {
        let t0 = Instant::now();
        sil_score = silhouette(&sil_x, e, &sil_labels)?.score;
        sil_times.push(t0.elapsed().as_secs_f64());
    }
    let ours_sil = sil_times.iter().cloned().fold(f64::INFINITY, f64::min);

    // theirs
    let dir =
        TempDir(std::env::temp_dir().join(format!("edgecp-bench-icp-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let d = dir.0.as_path();
    let le32 = |x: f32| x.to_le_bytes().to_vec();
    let le64 = |x: f64| x.to_le_bytes().to_vec();
    let le16 = |x: u16| x.to_le_bytes().to_vec();
    write_raw(d, "centroids.f32", nc.centroids().unwrap_or_default(), le32)?;
    write_raw(d, "refs.f32", &refs, le32)?;
    write_raw(d, "ref_labels.u16", &ref_labels, le16)?;
    write_raw(d, "queries.f32", &queries, le32)?;
    write_raw(d, "nc_cal.f64", &nc_cal, le64)?;
    write_raw(d, "knn_cal.f64", &knn_cal, le64)?;
    write_raw(d, "sil_x.f32", &sil_x, le32)?;
    write_raw(d, "sil_labels.u16", &sil_labels, le16)?;
    let meta = json!({
        "dim": e, "classes": c, "references": args.references, "batch": b,
        "silhouette_n": args.silhouette_n, "k": args.k, "epsilon": args.epsilon,
        "min_seconds": args.min_seconds, "seed": args.seed,
        "silhouette_repeats": args.silhouette_repeats.max(1),
        "sklearn_f64": !args.no_sklearn_f64,
    });
    std::fs::write(d.join("meta.json"), meta.to_string())?;
    let python = find_python(args)?;
    let script = args
        .script
        .clone()
        .unwrap_or_else(|| source_root().join("scripts/py/bench_icp.py"));
    tracing::info!(python = %python.display(), script = %script.display(), "measuring NumPy / scikit-learn");
    let res = Command::new(&python)
        .arg(&script)
        .arg(d)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !res.status.success() {
        bail!(
            "{} failed ({}):\n{}\n{}",
            script.display(),
            res.status,
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&res.stdout);
    let theirs: Map<String, Value> = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .with_context(|| format!("parsing the Python benchmark output: {stdout}"))?;
    let num = |k: &str| -> Result<f64> {
        theirs
            .get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("{k} missing from the Python output"))
    };

    // agreement checks (same data, same calibration scores)
    let np_p = read_f64(&d.join("np_nc_p.f64"))?;
    let nc_p_diff = ours_nc_p
        .iter()
        .zip(&np_p)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let np_alpha = read_f64(&d.join("np_knn_alpha.f64"))?;
    let knn_agree = ours_knn_alpha
        .iter()
        .zip(&np_alpha)
        .filter(|(a, b)| a == b)
        .count() as f64
        / ours_knn_alpha.len().max(1) as f64;

    let r_nc1 = ours_nc1 / num("np_nc_batch1_dps")?;
    let r_ncb = ours_ncb / num("np_nc_batch_dps")?;
    let r_knn = ours_knnb / num("np_knn_batch_dps")?;
    let r_sil = num("sk_silhouette_s")? / ours_sil;

    let mut o = Map::new();
    o.insert("bench".into(), json!("icp"));
    o.insert("threads".into(), json!(threads));
    o.insert("dim".into(), json!(e));
    o.insert("classes".into(), json!(c));
    o.insert("calibration".into(), json!(args.calibration));
    o.insert("references".into(), json!(args.references));
    o.insert("k".into(), json!(args.k));
    o.insert("batch".into(), json!(b));
    o.insert("silhouette_n".into(), json!(args.silhouette_n));
    o.insert("epsilon".into(), json!(args.epsilon));
    o.insert("ours_nc_batch1_dps".into(), json!(ours_nc1));
    o.insert("ours_nc_batch_dps".into(), json!(ours_ncb));
    o.insert("ours_knn_batch_dps".into(), json!(ours_knnb));
    o.insert("ours_silhouette_s".into(), json!(ours_sil));
    o.insert("ours_silhouette_score".into(), json!(sil_score));
    for (k, v) in &theirs {
        o.insert(k.clone(), v.clone());
    }
    o.insert("nc_p_max_abs_diff_vs_numpy".into(), json!(nc_p_diff));
    o.insert("knn_alpha_agreement_vs_numpy".into(), json!(knn_agree));
    o.insert(
        "silhouette_abs_diff_vs_sklearn_f32".into(),
        json!((sil_score - num("sk_silhouette_f32_score")?).abs()),
    );
    if let Ok(s64) = num("sk_silhouette_f64_score") {
        o.insert(
            "silhouette_abs_diff_vs_sklearn_f64".into(),
            json!((sil_score - s64).abs()),
        );
    }
    o.insert("nc_batch1_ratio".into(), json!(r_nc1));
    o.insert("nc_batch1024_ratio".into(), json!(r_ncb));
    o.insert("knn_batch1024_ratio".into(), json!(r_knn));
    o.insert("silhouette_ratio".into(), json!(r_sil));

    println!(
        "ICP benchmark: E={e}, {c} classes, {} calibration scores, k-NN k={} over {} references, \
         silhouette {}x{e}; {threads} threads; epsilon {}",
        args.calibration, args.k, args.references, args.silhouette_n, args.epsilon
    );
    println!(
        "{:<34} {:>16} {:>16} {:>9}",
        "figure", "ours", "theirs", "ratio"
    );
    let row = |name: &str, ours: f64, theirs: f64, ratio: f64, unit: &str| {
        println!(
            "{name:<34} {:>16} {:>16} {:>8.1}x",
            format!("{ours:.0} {unit}"),
            format!("{theirs:.0} {unit}"),
            ratio
        );
    };
    row(
        "nearest centroid, batch 1",
        ours_nc1,
        num("np_nc_batch1_dps")?,
        r_nc1,
        "dec/s",
    );
    row(
        &format!("nearest centroid, batch {b}"),
        ours_ncb,
        num("np_nc_batch_dps")?,
        r_ncb,
        "dec/s",
    );
    row(
        &format!("k-NN k={}, batch {b}", args.k),
        ours_knnb,
        num("np_knn_batch_dps")?,
        r_knn,
        "dec/s",
    );
    println!(
        "{:<34} {:>16} {:>16} {:>8.1}x",
        format!("silhouette {}x{e}", args.silhouette_n),
        format!("{ours_sil:.3} s"),
        format!("{:.3} s", num("sk_silhouette_s")?),
        r_sil
    );
    println!(
        "checks: NC p-values max |ours - NumPy| = {nc_p_diff:.3e}; k-NN scores equal to NumPy's: {:.4}; \
         silhouette ours {sil_score:.6} vs scikit-learn {:.6}",
        knn_agree,
        num("sk_silhouette_f32_score")?
    );
    if args.json {
        println!("{}", Value::Object(o));
    }
    Ok(())
}

/// `trainer bench train`: training and inference speed of the embedding network, ours
/// against candle's own ops and PyTorch (CPU) in the same run, same thread count.
#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    /// Print the figures as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Batch size of the training and forward figures.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Image side.
    #[arg(long, default_value_t = 32)]
    pub side: usize,
    /// Timed steps per figure (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Which networks: `reference` (no batch norm, dropout 0.25), `default` (batch norm,
    /// dropout 0.1, L2-normalised), or both.
    #[arg(long, value_enum, default_value = "both")]
    pub net: BenchNet,
    /// Skip candle's own ops (slow: about 10x ours).
    #[arg(long)]
    pub no_candle: bool,
    /// Skip PyTorch.
    #[arg(long)]
    pub no_pytorch: bool,
    /// Python with torch (default: $EDGECP_BENCH_PYTHON, else the venv that
    /// `scripts/pyenv.sh scripts/requirements-bench.txt` creates; several GB on first use).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchNet {
    Reference,
    Default,
    Both,
}

/// Measures our fused convolution blocks (the trainer's default) against candle's own ops
/// and PyTorch, per network, in one run.
pub fn run_train(args: &TrainBenchArgs) -> anyhow::Result<()> {
    use crate::training::config::TrialConfig;
    use crate::training::{measure_speed, ConvKernel, SpeedReport};
    let threads = rayon::current_num_threads();
    let nets: Vec<(&str, TrialConfig)> = match args.net {
        BenchNet::Reference => vec![("reference", TrialConfig::reference())],
        BenchNet::Default => vec![("default", TrialConfig::default())],
        BenchNet::Both => vec![
            ("reference", TrialConfig::reference()),
            ("default", TrialConfig::default()),
        ],
    };
    let python = if args.no_pytorch {
        None
    } else {
        Some(python_for(
            args.python.as_deref(),
            "EDGECP_BENCH_PYTHON",
            Some("scripts/requirements-bench.txt"),
        )?)
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "{s}x{s} images, batch {b}, {threads} threads; train = forward (training mode) + \
         loss mean(e^2) + backward + AdamW",
        s = args.side,
        b = args.batch
    );
    println!(
        "{:<10} {:<24} {:>12} {:>14} {:>10}",
        "net", "implementation", "train img/s", "forward img/s", "b1 ms"
    );
    let mut results = Vec::new();
    for (name, cfg) in &nets {
        let m = &cfg.model;
        let ours = measure_speed(ConvKernel::Fused, m, args.side, args.batch, args.steps)?;
        let candle = if args.no_candle {
            None
        } else {
            Some(measure_speed(
                ConvKernel::Candle,
                m,
                args.side,
                args.batch,
                args.steps,
            )?)
        };
        let torch: Option<SpeedReport> = match &python {
            None => None,
            Some(py) => Some(pytorch_speed(py, m, args, threads)?),
        };
        for r in [Some(&ours), candle.as_ref(), torch.as_ref()]
            .into_iter()
            .flatten()
        {
            let phases = r
                .step_ms
                .as_ref()
                .map(|p| {
                    format!(
                        "  (step: forward {:.1} ms, backward {:.1} ms, optimiser {:.1} ms)",
                        p.forward, p.backward, p.optimizer
                    )
                })
                .unwrap_or_default();
            println!(
                "{:<10} {:<24} {:>12.1} {:>14.1} {:>10.2}{phases}",
                name, r.kernel, r.train_images_per_sec, r.forward_images_per_sec, r.latency_b1_ms
            );
        }
        let vs = |o: Option<&SpeedReport>| {
            o.map(|b| {
                serde_json::json!({
                    "train": ratio(ours.train_images_per_sec, b.train_images_per_sec),
                    "forward": ratio(ours.forward_images_per_sec, b.forward_images_per_sec),
                    "latency_b1": ratio(b.latency_b1_ms, ours.latency_b1_ms),
                })
            })
        };
        let (vs_candle, vs_torch) = (vs(candle.as_ref()), vs(torch.as_ref()));
        for (who, v) in [("candle ops", &vs_candle), ("PyTorch", &vs_torch)] {
            if let Some(v) = v {
                println!(
                    "{:<10} ours / {who}: train {:.2}x, forward {:.2}x, batch-1 latency {:.2}x (>1: ours faster)",
                    name, v["train"].as_f64().unwrap_or(f64::NAN), v["forward"].as_f64().unwrap_or(f64::NAN),
                    v["latency_b1"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        results.push(serde_json::json!({
            "net": name,
            "fused": ours,
            "candle": candle,
            "pytorch": torch,
            "ratio_vs_candle": vs_candle,
            "ratio_vs_pytorch": vs_torch,
        }));
    }
    if args.json {
        let figures = serde_json::json!({
            "bench": "train",
            "threads": threads,
            "batch": args.batch,
            "side": args.side,
            "nets": results,
        });
        println!("{figures}");
    }
    Ok(())
}

/// Runs scripts/py/bench_train.py for the same network and thread count.
fn pytorch_speed(
    python: &Path,
    m: &crate::training::config::ModelConfig,
    args: &TrainBenchArgs,
    threads: usize,
) -> Result<crate::training::SpeedReport> {
    let script = source_root().join("scripts/py/bench_train.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(["--side", &args.side.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--dim", &m.embedding_dim.to_string()])
        .args(["--dropout", &m.dropout.to_string()]);
    if m.batch_norm {
        cmd.arg("--batch-norm");
    }
    if m.l2_normalize {
        cmd.arg("--l2");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed (is torch installed in {}?): {}",
            script.display(),
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("{}: not JSON: {line:?}", script.display()))?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{}: no number {k:?} in {line}", script.display()))
    };
    Ok(crate::training::SpeedReport {
        kernel: v["kernel"].as_str().unwrap_or("pytorch").to_string(),
        side: args.side,
        batch: args.batch,
        train_images_per_sec: num("train_images_per_sec")?,
        forward_images_per_sec: num("forward_images_per_sec")?,
        latency_b1_ms: num("latency_b1_ms")?,
        step_ms: None,
    })
}
