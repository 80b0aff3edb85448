//! The command line: one function per subcommand.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use exporter::bundle::{self as xbundle, ONNX_FILE, TFLITE_FILE};
use exporter::export::export;
use exporter::golden::{self, Golden};
use exporter::source::{open_run, RunSource};
use shared::bundle::{self, keys};

#[derive(Parser, Debug)]
#[command(
    name = "exporter",
    version,
    about = "Export trained embedding networks to ONNX / TFLite / TensorRT and sign model bundles",
    long_about = "Export trained embedding networks to ONNX, TFLite and (where NVIDIA TensorRT \
                  exists) TensorRT engines, check each against the trained network on golden \
                  inputs, and pack signed bundles for edge devices (format: docs/BUNDLE.md).\n\n\
                  RUN is a run folder (holding model.safetensors), a weights file, or a run id \
                  (or unique prefix) in the registry. Logs go to stderr; results and --json go \
                  to stdout."
)]
pub struct Cli {
    /// Run registry URL: `sqlite://FILE?mode=rwc` (embedded default) or
    /// `mysql://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, global = true, env = trainer::registry::URL_ENV, default_value = trainer::registry::DEFAULT_URL)]
    registry: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the run's network as ONNX (opset 13, NHWC float32 input of raw pixels, dynamic
    /// batch) and check it against the trained network through tract.
    Onnx(ModelArgs),
    /// Write the run's network as a float32 TFLite flatbuffer and check it through tract;
    /// with --int8 also a post-training-quantised int8 file, with size, accuracy and ICP
    /// figures of both (and of candle and ONNX) on a dataset's splits.
    Tflite(TfliteArgs),
    /// Generate an ed25519 signing key pair (PEM: NAME.key private, NAME.pub public).
    Keygen(KeygenArgs),
    /// Export, check, sign and pack a run's bundle; upload it to STORE/models/<model_id>/
    /// and record it in the registry.
    Bundle(BundleArgs),
    /// Verify a bundle: signature, format version, every file's size and sha256, and each
    /// float32 model's outputs on the golden inputs (through tract). Exit 0 only when all hold.
    Verify(VerifyArgs),
    /// Summarise a bundle's manifest (not verified; use `verify` for that).
    Inspect(InspectArgs),
    /// Latency (batch 1) and throughput (batch 64) of the exported files through
    /// tract-onnx, tract-tflite, onnxruntime and LiteRT (Python), with ratios to onnxruntime.
    Bench(BenchArgs),
    /// Build a TensorRT engine from the run's ONNX file with trtexec (needs TensorRT).
    #[cfg(feature = "tensorrt")]
    Tensorrt(TensorrtArgs),
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// The run: folder, weights file, or registry run id (prefix).
    #[arg(long)]
    run: String,
    /// Output file (default: model.onnx / model.tflite in the current folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object (the last line).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct TfliteArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Also write an int8 model (post-training quantisation calibrated on --data's
    /// calibration split) to OUT with `.int8.tflite`, and report its figures.
    #[arg(long, requires = "data")]
    int8: bool,
    /// Dataset version (folder or URL, as `trainer ingest` writes) for calibration and
    /// evaluation; the run's own dataset for honest figures.
    #[arg(long)]
    data: Option<String>,
    /// Calibration images for the activation ranges.
    #[arg(long, default_value_t = 1000)]
    calibration_images: usize,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Folder for the key files.
    #[arg(long, default_value = "keys")]
    out: PathBuf,
    /// What the key will sign: bundles (`exporter bundle --key`) or rollout commands
    /// (`trainer rollout --key`). Devices trust each role separately and refuse a key in
    /// the wrong one, so give each role its own key.
    #[arg(long, value_enum, default_value_t = KeyRole::Bundle)]
    role: KeyRole,
    /// Base name of the key files (default: `signing` for bundles, `command` for
    /// commands).
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum KeyRole {
    Bundle,
    Command,
}

#[derive(Args, Debug)]
struct BundleArgs {
    /// The run: folder, weights file, or registry run id (prefix).
    #[arg(long)]
    run: String,
    /// Private signing key (PKCS#8 PEM, from `exporter keygen`).
    #[arg(long, default_value = "keys/signing.key", env = "EDGECP_SIGNING_KEY")]
    key: PathBuf,
    /// Local folder for bundles: this one goes to OUT/<model_id>/ (replacing an older copy).
    #[arg(long, default_value = "bundles")]
    out: PathBuf,
    /// Object-store location the bundle is uploaded to, under models/<model_id>/.
    #[arg(long, default_value = "runs", env = "EDGECP_STORE")]
    store: String,
    /// Skip the upload and the registry record.
    #[arg(long)]
    local_only: bool,
    /// Class names, one per line (default: GTSRB's 43 names when the run has 43 classes).
    #[arg(long)]
    class_names: Option<PathBuf>,
    /// Print one JSON object (the last line).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The bundle folder.
    bundle: PathBuf,
    /// Public key (SubjectPublicKeyInfo PEM) the bundle must be signed with.
    #[arg(long)]
    key: PathBuf,
    /// Print one JSON object (the last line).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The bundle folder.
    bundle: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// The run (default: a randomly initialised network of the default architecture:
    /// the speed does not depend on the weights).
    #[arg(long)]
    run: Option<String>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    batches: Vec<usize>,
    /// Seconds of timed calls per runtime and batch size.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Skip the Python runtimes (onnxruntime, LiteRT).
    #[arg(long)]
    no_python: bool,
    /// Threads for every runtime (default: all logical CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object (the last line).
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "tensorrt")]
#[derive(Args, Debug)]
struct TensorrtArgs {
    /// The run: folder, weights file, or registry run id (prefix).
    #[arg(long)]
    run: String,
    /// Build a float16 engine.
    #[arg(long)]
    fp16: bool,
    /// Folder for model.onnx and the engine.
    #[arg(long, default_value = "engines")]
    out: PathBuf,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Onnx(a) => write_model(&a, &cli.registry, true),
        Command::Tflite(a) => {
            write_model(&a.model, &cli.registry, false)?;
            if a.int8 {
                tflite_int8(&a, &cli.registry)?;
            }
            Ok(())
        }
        Command::Keygen(a) => keygen(&a),
        Command::Bundle(a) => make_bundle(&a, &cli.registry),
        Command::Verify(a) => verify(&a),
        Command::Inspect(a) => inspect(&a),
        Command::Bench(a) => bench(&a, &cli.registry),
        #[cfg(feature = "tensorrt")]
        Command::Tensorrt(a) => tensorrt(&a, &cli.registry),
    }
}

fn open(run: &str, registry: &str) -> Result<(RunSource, Golden)> {
    let src = open_run(run, registry)?;
    let golden = golden::synthetic(&src.net)?;
    Ok((src, golden))
}

fn write_model(a: &ModelArgs, registry: &str, onnx: bool) -> Result<()> {
    let (src, golden) = open(&a.run, registry)?;
    let ex = export(&src, &golden)?;
    let (bytes, diff, default) = if onnx {
        (&ex.onnx, ex.onnx_max_abs, ONNX_FILE)
    } else {
        (&ex.tflite, ex.tflite_max_abs, TFLITE_FILE)
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(default));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
    let json = serde_json::json!({
        "run_id": src.run_id,
        "file": out.display().to_string(),
        "bytes": bytes.len(),
        "sha256": bundle::sha256_hex(bytes),
        "golden_inputs": golden.count(),
        "max_abs_diff_tract": diff,
    });
    if a.json {
        println!("{json}");
    } else {
        println!(
            "wrote {} ({} bytes) from run {}; tract on {} golden inputs: max |diff| {:.2e} to the trained network",
            out.display(),
            bytes.len(),
            src.run_id,
            golden.count(),
            diff
        );
    }
    Ok(())
}

fn keygen(a: &KeygenArgs) -> Result<()> {
    let name = a.name.clone().unwrap_or_else(|| {
        match a.role {
            KeyRole::Bundle => "signing",
            KeyRole::Command => "command",
        }
        .to_string()
    });
    let key = keys::generate()?;
    let paths = keys::write_keypair(&key, &a.out, &name)?;
    println!("private key {} (keep it secret)", paths.private.display());
    match a.role {
        KeyRole::Bundle => println!(
            "public key  {} (devices: [keys] bundle, or --key; `exporter verify --key`)",
            paths.public.display()
        ),
        KeyRole::Command => println!(
            "public key  {} (devices: [keys] command, or --command-key; sign with `trainer rollout --key {}`)",
            paths.public.display(),
            paths.private.display()
        ),
    }
    Ok(())
}

fn class_names(src: &RunSource, file: Option<&Path>) -> Result<Vec<String>> {
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect());
    }
    let gtsrb = shared::data::gtsrb_class_names();
    Ok(match src.n_classes {
        Some(n) if n != gtsrb.len() => (0..n).map(|i| format!("class {i}")).collect(),
        _ => gtsrb,
    })
}

fn make_bundle(a: &BundleArgs, registry: &str) -> Result<()> {
    let key = keys::read_private(&a.key).with_context(|| {
        format!(
            "reading the signing key (create one with `exporter keygen --out {}`)",
            a.key
                .parent()
                .map_or(".".into(), |p| p.display().to_string())
        )
    })?;
    let (src, golden) = open(&a.run, registry)?;
    let names = class_names(&src, a.class_names.as_deref())?;
    let staging = a.out.join(format!(".{}.partial", src.run_id));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the leftover {}", staging.display()))?;
    }
    let built = xbundle::build(&src, &golden, &key, &staging, names)?;
    let dir = a.out.join(&built.manifest.model_id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&staging, &dir)
        .with_context(|| format!("moving the bundle to {}", dir.display()))?;
    let uploaded = if a.local_only {
        None
    } else {
        Some(xbundle::publish(
            &dir,
            &built.manifest,
            &built.manifest_sha256,
            &hex_key(&key),
            &a.store,
            registry,
        )?)
    };
    let json = serde_json::json!({
        "model_id": built.manifest.model_id,
        "run_id": built.manifest.run_id,
        "bundle": dir.display().to_string(),
        "manifest_sha256": built.manifest_sha256,
        "uri": uploaded,
        "models": built.manifest.models,
    });
    if a.json {
        println!("{json}");
    } else {
        println!(
            "bundle {} for run {} in {}",
            built.manifest.model_id,
            built.manifest.run_id,
            dir.display()
        );
        for m in &built.manifest.models {
            println!(
                "  {:<14} {:<7} max |diff| to the trained network {:.2e}",
                m.file, m.precision, m.max_abs_diff
            );
        }
        println!("  manifest sha256 {}", built.manifest_sha256);
        if let Some(u) = uploaded {
            println!("  uploaded to {u} and recorded in the registry");
        }
    }
    Ok(())
}

fn hex_key(key: &ed25519_dalek::SigningKey) -> String {
    key.verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn verify(a: &VerifyArgs) -> Result<()> {
    let key = keys::read_public(&a.key)?;
    let (b, parity) = xbundle::verify_full(&a.bundle, &key)
        .with_context(|| format!("bundle {} is NOT valid", a.bundle.display()))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "valid": true,
                "model_id": b.manifest.model_id,
                "manifest_sha256": b.manifest_sha256,
                "files": b.manifest.files.len(),
                "parity": parity,
            })
        );
    } else {
        println!(
            "bundle {} is valid: signature, format version {}, {} files (sizes and sha256)",
            b.manifest.model_id,
            b.manifest.format_version,
            b.manifest.files.len()
        );
        for p in &parity {
            println!(
                "  {:<14} golden inputs max |diff| {:.2e} <= {:.0e}",
                p.file, p.max_abs_diff, p.tolerance
            );
        }
    }
    Ok(())
}

fn inspect(a: &InspectArgs) -> Result<()> {
    let m = bundle::read_unverified(&a.bundle)?;
    if a.json {
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    println!(
        "model {} (run {}), format {} v{}, by {}",
        m.model_id, m.run_id, m.format, m.format_version, m.producer
    );
    println!(
        "input  {} {:?} {} {} {}, values {}..{}, normalisation x*{:.6}{:+} {}",
        m.input.name,
        m.input.shape,
        m.input.layout,
        m.input.dtype,
        m.input.color,
        m.input.value_range[0],
        m.input.value_range[1],
        m.input.normalization.scale,
        m.input.normalization.offset,
        if m.input.normalization.in_graph {
            "(in the graph)"
        } else {
            "(by the caller)"
        }
    );
    println!(
        "output {} {:?} {}{}",
        m.output.name,
        m.output.shape,
        m.output.dtype,
        if m.output.l2_normalized {
            ", L2-normalised"
        } else {
            ""
        }
    );
    println!(
        "ICP    {} ({}{}), {} calibration scores, epsilon {}",
        m.icp.ncm.name(),
        serde_json::to_string(&m.icp.p_values)?,
        if m.icp.mondrian { ", Mondrian" } else { "" },
        m.icp.n_calibration,
        m.icp.epsilon
    );
    if let Some(c) = &m.icp.calibration {
        println!(
            "       calibration from {} {}s (whole groups per split){}",
            c.groups,
            c.grouped_by,
            if c.label_free_scores.is_some() {
                ", label-free scores for the drift monitor"
            } else {
                ""
            }
        );
    }
    println!(
        "classes {}: {}{}",
        m.class_names.len(),
        m.class_names
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if m.class_names.len() > 3 { ", ..." } else { "" }
    );
    println!("models:");
    for x in &m.models {
        println!(
            "  {:<14} {:<7} {:<8} max |diff| {:.2e}{}",
            x.file,
            x.format,
            x.precision,
            x.max_abs_diff,
            x.target
                .as_ref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        );
    }
    println!("files:");
    for f in &m.files {
        println!(
            "  {:<24} {:<10} {:>10} bytes  sha256 {}",
            f.name, f.role, f.bytes, f.sha256
        );
    }
    println!("metrics:");
    for (k, v) in &m.metrics {
        println!("  {k} = {v}");
    }
    println!(
        "(not verified: run `exporter verify {} --key PUB`)",
        a.bundle.display()
    );
    Ok(())
}

#[cfg(feature = "tensorrt")]
fn tensorrt(a: &TensorrtArgs, registry: &str) -> Result<()> {
    use exporter::tensorrt::*;
    let Some(trtexec) = find_trtexec() else {
        anyhow::bail!(
            "{}",
            missing_trtexec_message(std::env::var("PATH").ok().as_deref())
        );
    };
    let (src, golden) = open(&a.run, registry)?;
    let ex = export(&src, &golden)?;
    std::fs::create_dir_all(&a.out)?;
    let onnx = a.out.join(ONNX_FILE);
    std::fs::write(&onnx, &ex.onnx)?;
    let gpu = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .context("nvidia-smi did not name a GPU: TensorRT engines need one")?;
    let banner = std::process::Command::new(&trtexec)
        .arg("--help")
        .output()?;
    let text = String::from_utf8_lossy(&banner.stdout).to_string()
        + &String::from_utf8_lossy(&banner.stderr);
    let version = text
        .split("TensorRT v")
        .nth(1)
        .and_then(|r| {
            r.split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
                .next()
        })
        .unwrap_or("unknown")
        .to_string();
    let req = EngineRequest {
        onnx,
        side: src.net.arch().side,
        fp16: a.fp16,
        gpu,
        tensorrt_version: version,
        out_dir: a.out.clone(),
    };
    let args = trtexec_args(&req);
    tracing::info!(?args, "running trtexec");
    let status = std::process::Command::new(&trtexec).args(&args).status()?;
    if !status.success() {
        anyhow::bail!("trtexec failed ({status}) with arguments {args:?}");
    }
    println!(
        "engine {} ({} / TensorRT {})",
        engine_path(&req).display(),
        req.gpu,
        req.tensorrt_version
    );
    Ok(())
}

fn bench(a: &BenchArgs, registry: &str) -> Result<()> {
    use exporter::bench::*;
    use exporter::runtime::Format;
    let net = match &a.run {
        Some(r) => open_run(r, registry)?.net,
        None => {
            let cfg = trainer::training::TrialConfig::default();
            let arch = trainer::training::Arch::new(32, &cfg.model)?;
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
            trainer::training::Backbone::new(arch, &candle_core::Device::Cpu, &mut rng)?
        }
    };
    let side = net.arch().side;
    let folded = exporter::net::FoldedNet::from_backbone(&net)?;
    let onnx = exporter::onnx::to_onnx_bytes(&folded, &[]);
    let tflite = exporter::tflite::to_tflite_bytes(&folded, "bench");
    let dir = std::env::temp_dir().join(format!("edgecp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(ONNX_FILE), &onnx)?;
    std::fs::write(dir.join(TFLITE_FILE), &tflite)?;
    let budget = std::time::Duration::from_secs_f64(a.seconds);
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    exporter::runtime::set_threads(threads);
    let bar = indicatif::ProgressBar::new(if a.no_python { 3 } else { 4 });
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:20}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("native (infer)");
    let mut rows = bench_native(&onnx, threads, &a.batches, budget)?;
    bar.inc(1);
    bar.set_message("tract-onnx");
    rows.extend(bench_tract(Format::Onnx, &onnx, side, &a.batches, budget)?);
    bar.inc(1);
    bar.set_message("tract-tflite");
    rows.extend(bench_tract(
        Format::Tflite,
        &tflite,
        side,
        &a.batches,
        budget,
    )?);
    bar.inc(1);
    if !a.no_python {
        bar.set_message("onnxruntime, LiteRT (Python)");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let py = python(&repo)?;
        let script = repo.join("scripts/py/bench_runtimes.py");
        rows.extend(bench_python(
            &py, &script, &dir, side, threads, &a.batches, budget,
        )?);
        bar.inc(1);
    }
    let batch = a.batches.iter().copied().max().unwrap_or(1);
    let prefixes = tract_prefix_times(&onnx, side, batch, budget)?;
    bar.finish_and_clear();
    std::fs::remove_dir_all(&dir).ok();
    add_ratios(&mut rows);
    if !a.json {
        println!(
            "{:<14} {:>6} {:>12} {:>12} {:>10}",
            "runtime", "batch", "latency", "images/s", "vs ORT"
        );
        for r in &rows {
            println!(
                "{:<14} {:>6} {:>9.1} us {:>12.0} {:>10}",
                r.runtime,
                r.batch,
                r.seconds * 1e6,
                r.images_per_sec,
                r.ratio_to_onnxruntime
                    .map_or("-".into(), |x| format!("{x:.2}x"))
            );
        }
        println!("{threads} threads; same ONNX and TFLite files for every runtime");
        println!("where tract-onnx's time goes at batch {batch} (graph cut after each block):");
        let mut prev = 0.0;
        for (cut, s) in &prefixes {
            println!(
                "  up to {cut:<10} {:>9.1} us  (+{:.1} us)",
                s * 1e6,
                (s - prev) * 1e6
            );
            prev = *s;
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"threads": threads, "rows": rows, "tract_onnx_prefix_seconds": prefixes})
        );
    }
    Ok(())
}

fn int8_path(float: &Path) -> PathBuf {
    float.with_extension("int8.tflite")
}

fn tflite_int8(a: &TfliteArgs, registry: &str) -> Result<()> {
    use exporter::evaluate::{figures, set_agreement, SplitEmbeddings, Splits};
    use shared::data::split::SplitName;
    let data = a.data.as_deref().context("--int8 needs --data")?;
    let (src, golden) = open(&a.model.run, registry)?;
    let ex = export(&src, &golden)?;
    let rt = tokio::runtime::Runtime::new()?;
    let loc = shared::store::open(data)?;
    let (splits, names) = rt
        .block_on(async {
            let ds = shared::data::shards::open_dataset(&loc).await?;
            let s = Splits {
                train: ds.read_split(SplitName::Train).await?,
                calibration: ds.read_split(SplitName::Calibration).await?,
                validation: ds.read_split(SplitName::Validation).await?,
                n_classes: ds.manifest.class_names.len(),
            };
            anyhow::Ok((s, ds.manifest.class_names.clone()))
        })
        .with_context(|| format!("reading dataset {data}"))?;
    let side = src.net.arch().side;
    if splits.train.side != side {
        anyhow::bail!(
            "dataset {data} has {0}x{0} images, the network takes {side}x{side}",
            splits.train.side
        );
    }
    let dim = src.net.arch().embedding_dim;
    let n_cal = a.calibration_images.min(splits.calibration.len());
    let idx: Vec<usize> = (0..n_cal).collect();
    let cal_input = exporter::net::raw_input(&splits.calibration, &idx);
    let ranges = exporter::quantize::calibrate(&ex.onnx, &ex.net, &cal_input, 64)?;
    tracing::info!(?ranges, "activation ranges from {n_cal} calibration images");
    let int8 = exporter::quantize::to_tflite_int8_bytes(
        &ex.net,
        &ranges,
        &format!("edgecp int8, run {}", src.run_id),
    );
    let float_out = a
        .model
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(TFLITE_FILE));
    let out = int8_path(&float_out);
    std::fs::write(&out, &int8).with_context(|| format!("writing {}", out.display()))?;

    // Embeddings of every split: candle, tract-onnx, LiteRT float32 and int8.
    let bar = indicatif::ProgressBar::new(4);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:20}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let sets = [&splits.train, &splits.calibration, &splits.validation];
    bar.set_message("candle");
    let emb = |f: &dyn Fn(&shared::data::ImageSet) -> Result<Vec<f32>>| -> Result<SplitEmbeddings> {
        Ok(SplitEmbeddings {
            train: f(sets[0])?,
            calibration: f(sets[1])?,
            validation: f(sets[2])?,
        })
    };
    let candle = emb(&|s| exporter::net::reference_embeddings(&src.net, s))?;
    bar.inc(1);
    bar.set_message("tract-onnx");
    let tract =
        exporter::runtime::TractModel::load(exporter::runtime::Format::Onnx, &ex.onnx, 64, side)?;
    let onnx = emb(&|s| {
        let idx: Vec<usize> = (0..s.len()).collect();
        tract.run_all(&exporter::net::raw_input(s, &idx))
    })?;
    bar.inc(1);
    bar.set_message("LiteRT float32 and int8 (Python)");
    let dir = std::env::temp_dir().join(format!("edgecp-int8-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("float.tflite"), &ex.tflite)?;
    std::fs::write(dir.join("int8.tflite"), &int8)?;
    let split_names = ["train", "calibration", "validation"];
    for (n, s) in split_names.iter().zip(sets) {
        std::fs::write(dir.join(format!("{n}.u8")), &s.pixels)?;
    }
    let job = serde_json::json!({
        "side": side,
        "models": ["float.tflite", "int8.tflite"],
        "splits": {"train": sets[0].len(), "calibration": sets[1].len(), "validation": sets[2].len()},
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    std::fs::write(dir.join("job.json"), job.to_string())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = exporter::bench::python(&repo)?;
    let o = std::process::Command::new(&py)
        .arg(repo.join("scripts/py/embed_tflite.py"))
        .arg(&dir)
        .output()
        .with_context(|| format!("starting {}", py.display()))?;
    if !o.status.success() {
        anyhow::bail!(
            "embed_tflite.py failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let read = |model: &str, split: &str| -> Result<Vec<f32>> {
        let p = dir.join(format!("{model}.{split}.f32"));
        let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let litert = |m: &str| -> Result<SplitEmbeddings> {
        Ok(SplitEmbeddings {
            train: read(m, "train")?,
            calibration: read(m, "calibration")?,
            validation: read(m, "validation")?,
        })
    };
    let lf = litert("float.tflite")?;
    let li = litert("int8.tflite")?;
    bar.inc(2);
    bar.finish_and_clear();
    std::fs::remove_dir_all(&dir).ok();

    let icp = src.icp.clone();
    let mondrian = icp.as_ref().is_some_and(|i| i.mondrian);
    let mode = icp.map_or(shared::icp::PValueMode::Standard, |i| i.p_values);
    let eps = 0.05;
    let grid: Vec<f64> = (1..=199).map(|i| f64::from(i) / 1000.0).collect();
    let mut rows = vec![];
    for (name, e, bytes) in [
        ("candle (trained network)", &candle, None),
        ("onnx via tract", &onnx, Some(ex.onnx.len())),
        ("tflite float32 via LiteRT", &lf, Some(ex.tflite.len())),
        ("tflite int8 via LiteRT", &li, Some(int8.len())),
    ] {
        let f = figures(e, &splits, dim, eps, mondrian, mode)?;
        let ag = set_agreement(&candle, e, &splits, dim, &grid, mondrian, mode)?;
        rows.push(serde_json::json!({
            "model": name, "bytes": bytes, "figures": f,
            "sets_identical_to_candle": ag.identical, "set_differences": ag.differ,
            "max_calibration_scores_crossed": ag.max_scores_crossed,
        }));
    }
    let size_ratio = int8.len() as f64 / ex.tflite.len() as f64;
    let json = serde_json::json!({
        "run_id": src.run_id, "dataset": data, "classes": names.len(),
        "validation_images": splits.validation.len(), "calibration_images_for_ranges": n_cal,
        "int8_file": out.display().to_string(), "size_ratio_int8_to_float32": size_ratio,
        "epsilon_grid_for_set_identity": "0.001..0.199", "rows": rows,
    });
    if a.model.json {
        println!("{json}");
    } else {
        println!(
            "int8 model {} ({} bytes, {:.3}x the float32 file)",
            out.display(),
            int8.len(),
            size_ratio
        );
        println!(
            "{:<28} {:>10} {:>9} {:>11} {:>10} {:>22}",
            "model", "bytes", "NC acc", "err@0.05", "singleton", "sets = candle (0.001..0.199)"
        );
        for r in &rows {
            let f = &r["figures"];
            println!(
                "{:<28} {:>10} {:>9.4} {:>11.4} {:>10.3} {:>14.6} ({} differ, p-values at most {} calibration scores apart)",
                r["model"].as_str().unwrap_or(""),
                r["bytes"].as_u64().map_or("-".into(), |b| b.to_string()),
                f["nc_accuracy"].as_f64().unwrap_or(f64::NAN),
                f["icp_error"].as_f64().unwrap_or(f64::NAN),
                f["singleton"].as_f64().unwrap_or(f64::NAN),
                r["sets_identical_to_candle"].as_f64().unwrap_or(f64::NAN),
                r["set_differences"],
                r["max_calibration_scores_crossed"]
            );
        }
    }
    Ok(())
}
