//! `edge-agent`: the on-device runtime that verifies signed bundles and answers every input
//! with a conformal prediction set.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use edge_agent::config::FileConfig;
use edge_agent::model::loader::{self, LoadOptions, LoadedModel};
use edge_agent::model::pipeline;
use edge_agent::model::predictor::parse_ncm;
use edge_agent::model::runtime::Runtime;
use edge_agent::model::slot::ModelSlot;
use edge_agent::monitoring::adaptive::{AdaptiveConfig, AdaptiveMode, DEFAULT_GAMMA};
use edge_agent::monitoring::assurance::{AlertRule, Assurance, Line, MemoryPin};
use edge_agent::monitoring::validity::ValidityConfig;
use edge_agent::sdnotify;
use edge_agent::serving::http::{self, Access, AppState, Limits};
use edge_agent::serving::input::image_input;
use tracing::Level;
use tracing_subscriber::filter::Targets;

#[cfg(feature = "eval")]
mod bench;
#[cfg(feature = "eval")]
mod drift;
mod run;

#[derive(Parser, Debug)]
#[command(
    name = "edge-agent",
    version,
    about = "Serve verified models on edge devices with conformal prediction sets",
    long_about = "Serve verified models on edge devices: verify signed bundles (signature, \
                  hashes, format version, golden-input self-test) and answer every input \
                  with an inductive conformal prediction set whose error rate stays below a \
                  chosen epsilon.\n\nSettings come from --config (TOML), overridden by \
                  EDGE_AGENT_* environment variables, overridden by flags."
)]
struct Cli {
    /// Configuration file (TOML; see the edge_agent::config docs for the keys).
    #[arg(long, global = true, env = "EDGE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer image files (PNG, JPEG, PPM; any size) with prediction sets.
    Predict(PredictArgs),
    /// Check a bundle as loading does (every parity-checked model) and exit 0 if it holds.
    Verify(ModelArgs),
    /// Serve predictions over HTTP until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Measure latency, throughput, memory and cold start against Python onnxruntime.
    #[cfg(feature = "eval")]
    Bench(bench::BenchArgs),
    /// Replay labelled images (as they are, darkened, rotated, noisy) through the model and
    /// the online validity monitor: alarm rates and the labels each alarm needed.
    #[cfg(feature = "eval")]
    Drift(drift::DriftArgs),
    /// A device build (without the `eval` feature) leaves out `bench` and `drift`: they
    /// are measurements for a workstation. Named here so that asking for one says so.
    #[cfg(not(feature = "eval"))]
    #[command(name = "bench", hide = true, disable_help_flag = true)]
    BenchNotBuilt(NotBuilt),
    #[cfg(not(feature = "eval"))]
    #[command(name = "drift", hide = true, disable_help_flag = true)]
    DriftNotBuilt(NotBuilt),
    /// Serve over HTTP and take signed rollouts over MQTT: download, verify, activate
    /// beside the serving model, health-gate, roll back (see docs/ROLLOUT.md).
    Run(run::RunArgs),
}

/// Whatever follows a subcommand this build leaves out.
#[cfg(not(feature = "eval"))]
#[derive(Args, Debug)]
struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

#[cfg(not(feature = "eval"))]
fn not_built(name: &str) -> Result<ExitCode> {
    bail!(
        "`edge-agent {name}` is not in this build: it is a workstation measurement, built with \
         the `eval` feature (cargo build --release -p edge-agent --features eval)"
    )
}

/// Which bundle, trusted by which key, run how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Bundle directory (manifest.json, manifest.sig and the files it lists).
    #[arg(long, env = "EDGE_AGENT_BUNDLE")]
    bundle: Option<PathBuf>,
    /// Trusted ed25519 public key (PEM SubjectPublicKeyInfo, as `exporter keygen` writes).
    #[arg(long, env = "EDGE_AGENT_KEY")]
    key: Option<PathBuf>,
    /// Engine: native (default: the ONNX file through the agent's own engine), tract (the
    /// ONNX file through tract), tflite (the TFLite file through tract), ort (the ONNX file
    /// through onnxruntime; needs the `ort` build feature and libonnxruntime).
    #[arg(long, env = "EDGE_AGENT_RUNTIME")]
    runtime: Option<Runtime>,
    /// Nonconformity measure instead of the bundle's: nearest_centroid, knn40, nn_ratio.
    #[arg(long, env = "EDGE_AGENT_NCM")]
    ncm: Option<String>,
}

#[derive(Args, Debug)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Significance level (default: the bundle's icp.epsilon).
    #[arg(long, env = "EDGE_AGENT_EPSILON")]
    epsilon: Option<f64>,
    /// One JSON object per image on stdout.
    #[arg(long)]
    json: bool,
    /// Images per inference call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, env = "EDGE_AGENT_LISTEN")]
    listen: Option<String>,
    /// Default significance level (a request may give its own).
    #[arg(long, env = "EDGE_AGENT_EPSILON")]
    epsilon: Option<f64>,
    /// When the assurance output goes high.
    #[arg(long, value_enum, env = "EDGE_AGENT_ALERT_RULE")]
    alert_rule: Option<AlertRule>,
    /// Assurance output: none, memory, or (feature gpio) /dev/gpiochipN:LINE.
    #[arg(long, env = "EDGE_AGENT_PIN")]
    pin: Option<String>,
    /// Largest request body in bytes (413 beyond; default 8 MiB).
    #[arg(long, env = "EDGE_AGENT_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Time limit per request in milliseconds, from its headers to its answer, waiting for
    /// a worker included (408 beyond; default 10000).
    #[arg(long, env = "EDGE_AGENT_TIMEOUT_MS")]
    timeout_ms: Option<u64>,
    /// Prediction and feedback requests worked on at once, after their body has arrived
    /// (more wait, within their timeout; default 64). /healthz, /metrics and /v1/model
    /// never wait.
    #[arg(long, env = "EDGE_AGENT_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Most inputs in one batch request.
    #[arg(long, env = "EDGE_AGENT_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Widest or tallest image decoded, in pixels, read from the image's header before
    /// decoding (413 beyond; default 8192).
    #[arg(long, env = "EDGE_AGENT_MAX_IMAGE_SIDE")]
    max_image_side: Option<u32>,
    /// Most bytes decoding one image may allocate, estimated from its header before
    /// decoding (413 beyond; default 64 MiB: a 12-megapixel photo decodes).
    #[arg(long, env = "EDGE_AGENT_MAX_DECODED_BYTES")]
    max_decoded_bytes: Option<u64>,
    /// Bytes all requests in flight may hold together for bodies (as they arrive), parsed
    /// JSON and batch pixels (503 with Retry-After beyond; default 64 MiB).
    #[arg(long, env = "EDGE_AGENT_REQUEST_BUDGET_BYTES")]
    request_budget_bytes: Option<usize>,
    /// Bytes all image decodes in flight may allocate together (more wait their turn;
    /// default 128 MiB). At least --max-decoded-bytes.
    #[arg(long, env = "EDGE_AGENT_DECODE_BUDGET_BYTES")]
    decode_budget_bytes: Option<u64>,
    /// Time a connection has to send a request's headers, in milliseconds; also how long
    /// an idle keep-alive connection stays open (default 5000).
    #[arg(long, env = "EDGE_AGENT_HEADER_READ_TIMEOUT_MS")]
    header_read_timeout_ms: Option<u64>,
    /// Time a request has to send its whole body, in milliseconds (408 beyond; default
    /// 5000).
    #[arg(long, env = "EDGE_AGENT_BODY_READ_TIMEOUT_MS")]
    body_read_timeout_ms: Option<u64>,
    /// File holding the bearer token /v1/feedback requires. Without it any client holding
    /// an answer's id may label that answer; on a device, give the token to the
    /// labelled-data source only.
    #[arg(long, env = "EDGE_AGENT_FEEDBACK_TOKEN_FILE")]
    feedback_token_file: Option<PathBuf>,
    /// File holding the bearer token /v1/validity/reset requires (without it the reset is
    /// disabled: the drift alarm and violation flag stay latched until a restart).
    #[arg(long, env = "EDGE_AGENT_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Drift alarm when a conformal test martingale (labelled or label-free) reaches
    /// 1/delta: a false alarm has probability at most delta.
    #[arg(long, env = "EDGE_AGENT_DELTA")]
    delta: Option<f64>,
    /// Adaptive calibration from labels: `aci` cuts each answer's set at a level that the
    /// labels of /v1/feedback move, so that the long-run error rate of the labelled answers
    /// stays at epsilon even under shift (docs/AGENT.md states the guarantee).
    #[arg(long, value_enum, env = "EDGE_AGENT_ADAPTIVE")]
    adaptive: Option<AdaptiveMode>,
    /// ACI step size gamma in (0, 1] (default 0.005).
    #[arg(long, env = "EDGE_AGENT_ACI_GAMMA")]
    aci_gamma: Option<f64>,
    /// File that keeps the ACI state across restarts (`run`: <data_dir>/aci.json).
    #[arg(long, env = "EDGE_AGENT_ACI_STATE_FILE")]
    aci_state_file: Option<PathBuf>,
    /// Plan every batch size before serving (slower start, no first-batch delay).
    #[arg(long)]
    warm_up: bool,
}

/// Settings after file, environment and flags.
pub struct Resolved {
    pub bundle: PathBuf,
    pub key: PathBuf,
    pub opts: LoadOptions,
}

fn resolve(a: &ModelArgs, file: &FileConfig) -> Result<Resolved> {
    let bundle =
        a.bundle.clone().or_else(|| file.bundle.clone()).context(
            "no bundle: give --bundle, EDGE_AGENT_BUNDLE or `bundle` in the config file",
        )?;
    let key = a
        .key
        .clone()
        .or_else(|| file.key.clone())
        .context("no trusted key: give --key, EDGE_AGENT_KEY or `key` in the config file")?;
    let ncm = match a.ncm.as_ref().or(file.ncm.as_ref()) {
        Some(s) => Some(parse_ncm(s)?),
        None => None,
    };
    Ok(Resolved {
        bundle,
        key,
        opts: LoadOptions {
            runtime: a.runtime.or(file.runtime).unwrap_or(Runtime::Native),
            ncm,
            warm_up: false,
        },
    })
}

/// Reads the key and loads the bundle (every check); errors say what failed.
pub fn load_model(r: &Resolved) -> Result<LoadedModel> {
    let key = shared::bundle::keys::read_public(&r.key)?;
    let m = loader::load(&r.bundle, &key, &r.opts)?;
    tracing::info!(
        model_id = m.model_id(),
        runtime = m.engine.runtime().name(),
        self_test_max_abs_diff = m.self_test.max_abs_diff,
        load_ms = format!("{:.1}", m.load_ms),
        "bundle verified and self-tested"
    );
    Ok(m)
}

fn predict(a: &PredictArgs, file: &FileConfig) -> Result<ExitCode> {
    let r = resolve(&a.model, file)?;
    let model = load_model(&r)?;
    let epsilon = a
        .epsilon
        .or(file.epsilon)
        .unwrap_or(model.bundle.manifest.icp.epsilon);
    if !(0.0..=1.0).contains(&epsilon) {
        bail!("--epsilon {epsilon} is outside [0, 1]");
    }
    let side = model.side();
    let mut failed = 0usize;
    for chunk in a.images.chunks(a.batch.max(1)) {
        let inputs: Vec<(String, Result<Vec<f32>, String>)> = chunk
            .iter()
            .map(|p| {
                let name = p.display().to_string();
                let x = std::fs::read(p)
                    .map_err(|e| e.to_string())
                    .and_then(|b| image_input(&b, &name, side).map_err(|e| e.to_string()));
                (name, x)
            })
            .collect();
        let valid: Vec<f32> = inputs
            .iter()
            .filter_map(|(_, x)| x.as_ref().ok())
            .flatten()
            .copied()
            .collect();
        let answers = if valid.is_empty() {
            vec![]
        } else {
            pipeline::answer(&model, &valid, epsilon)?.0
        };
        let mut answers = answers.into_iter();
        for (name, x) in inputs {
            match x {
                Err(e) => {
                    failed += 1;
                    tracing::error!(file = %name, error = %e, "cannot read image");
                    if a.json {
                        println!("{}", serde_json::json!({ "file": name, "error": e }));
                    } else {
                        eprintln!("{name}: error: {e}");
                    }
                }
                Ok(_) => {
                    let ans = answers.next().context("fewer answers than images")?;
                    if a.json {
                        let mut v = serde_json::to_value(&ans)?;
                        v["file"] = name.into();
                        v["model_id"] = model.model_id().into();
                        println!("{v}");
                    } else {
                        println!(
                            "{name}: {{{}}} credibility {:.4} confidence {:.4} (epsilon {epsilon})",
                            ans.labels.join(", "),
                            ans.credibility,
                            ans.confidence
                        );
                    }
                }
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {} images could not be answered",
            a.images.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: &ModelArgs, file: &FileConfig) -> Result<ExitCode> {
    let r = resolve(a, file)?;
    let key = shared::bundle::keys::read_public(&r.key)?;
    let (b, tests) = loader::verify(&r.bundle, &key)?;
    println!(
        "{}",
        serde_json::json!({ "ok": true, "model_id": b.manifest.model_id, "manifest_sha256": b.manifest_sha256, "self_test": tests })
    );
    Ok(ExitCode::SUCCESS)
}

fn pin_line(spec: &str) -> Result<Option<Box<dyn Line>>> {
    match spec {
        "none" | "" => Ok(None),
        "memory" => Ok(Some(Box::new(MemoryPin::new()))),
        #[cfg(feature = "gpio")]
        other => {
            let (chip, line) = other
                .rsplit_once(':')
                .context("--pin for GPIO is /dev/gpiochipN:LINE")?;
            let line: u32 = line.parse().context("--pin: LINE is a number")?;
            Ok(Some(
                edge_agent::monitoring::assurance::gpio_line(chip, line).map_err(anyhow::Error::msg)?,
            ))
        }
        #[cfg(not(feature = "gpio"))]
        other => bail!("--pin {other:?}: this build has no GPIO support (build with --features gpio), use none or memory"),
    }
}

/// A token file's content, trimmed; it must not be empty.
fn read_token(path: &std::path::Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let t = t.trim();
    if t.len() < 16 {
        bail!(
            "token file {}: the token must have at least 16 characters",
            path.display()
        );
    }
    Ok(t.to_string())
}

fn serve_limits(a: &ServeArgs, file: &FileConfig) -> Result<Limits> {
    let d = Limits::default();
    let fl = &file.limits;
    let ms = Duration::from_millis;
    let limits = Limits {
        max_body_bytes: a
            .max_body_bytes
            .or(fl.max_body_bytes)
            .unwrap_or(d.max_body_bytes),
        timeout: a.timeout_ms.or(fl.timeout_ms).map_or(d.timeout, ms),
        concurrency: a
            .concurrency
            .or(fl.concurrency)
            .unwrap_or(d.concurrency)
            .max(1),
        max_batch: a.max_batch.or(fl.max_batch).unwrap_or(d.max_batch).max(1),
        max_image_side: a
            .max_image_side
            .or(fl.max_image_side)
            .unwrap_or(d.max_image_side),
        max_decoded_bytes: a
            .max_decoded_bytes
            .or(fl.max_decoded_bytes)
            .unwrap_or(d.max_decoded_bytes),
        request_budget_bytes: a
            .request_budget_bytes
            .or(fl.request_budget_bytes)
            .unwrap_or(d.request_budget_bytes),
        decode_budget_bytes: a
            .decode_budget_bytes
            .or(fl.decode_budget_bytes)
            .unwrap_or(d.decode_budget_bytes),
        header_read_timeout: a
            .header_read_timeout_ms
            .or(fl.header_read_timeout_ms)
            .map_or(d.header_read_timeout, ms),
        body_read_timeout: a
            .body_read_timeout_ms
            .or(fl.body_read_timeout_ms)
            .map_or(d.body_read_timeout, ms),
    };
    limits.check().context("limits")?;
    Ok(limits)
}

/// The serving settings of `serve` and `run`, after file, environment and flags.
pub struct Serving {
    pub epsilon: f64,
    pub assurance: Option<Assurance>,
    pub limits: Limits,
    pub access: Access,
    pub validity: ValidityConfig,
    pub listen: String,
}

fn serving(a: &ServeArgs, file: &FileConfig, model: &LoadedModel) -> Result<Serving> {
    let epsilon = a
        .epsilon
        .or(file.epsilon)
        .unwrap_or(model.bundle.manifest.icp.epsilon);
    if !(0.0..=1.0).contains(&epsilon) {
        bail!("epsilon {epsilon} is outside [0, 1]");
    }
    let rule = a.alert_rule.or(file.alert_rule).unwrap_or_default();
    let pin = a.pin.as_deref().or(file.pin.as_deref()).unwrap_or("none");
    let assurance = pin_line(pin)?.map(|l| Assurance::new(rule, l));
    let limits = serve_limits(a, file)?;
    let access = Access {
        feedback_token: a
            .feedback_token_file
            .as_ref()
            .or(file.feedback_token_file.as_ref())
            .map(|p| read_token(p))
            .transpose()?,
        admin_token: a
            .admin_token_file
            .as_ref()
            .or(file.admin_token_file.as_ref())
            .map(|p| read_token(p))
            .transpose()?,
    };
    let dv = ValidityConfig::default();
    let validity = ValidityConfig {
        delta: a.delta.or(file.validity.delta).unwrap_or(dv.delta),
        ci_alpha: file.validity.ci_alpha.unwrap_or(dv.ci_alpha),
        max_pending: file.validity.max_pending.unwrap_or(dv.max_pending),
        adaptive: adaptive(a, file)?,
        ..dv
    };
    if !(validity.delta > 0.0 && validity.delta < 1.0) {
        bail!("delta {} is outside (0, 1)", validity.delta);
    }
    let listen = a
        .listen
        .clone()
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    Ok(Serving {
        epsilon,
        assurance,
        limits,
        access,
        validity,
        listen,
    })
}

/// The adaptive calibration settings (`None`: off).
fn adaptive(a: &ServeArgs, file: &FileConfig) -> Result<Option<AdaptiveConfig>> {
    let mode = a.adaptive.or(file.validity.adaptive).unwrap_or_default();
    let gamma = a
        .aci_gamma
        .or(file.validity.aci_gamma)
        .unwrap_or(DEFAULT_GAMMA);
    if !(gamma > 0.0 && gamma <= 1.0) {
        bail!("aci_gamma {gamma} is outside (0, 1]");
    }
    Ok(match mode {
        AdaptiveMode::Off => None,
        AdaptiveMode::Aci => Some(AdaptiveConfig {
            gamma,
            state_file: a
                .aci_state_file
                .clone()
                .or_else(|| file.validity.aci_state_file.clone()),
        }),
    })
}

/// The async runtime of the service: blocking work (decode, inference) holds a place in
/// the worker pool until it ends, so at most `concurrency` blocking tasks run; a few
/// threads more for the rest.
fn service_runtime(limits: &Limits) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(limits.concurrency.saturating_add(8))
        .build()
        .context("starting the async runtime")
}

fn serve(a: &ServeArgs, file: &FileConfig, t_start: Instant) -> Result<ExitCode> {
    let mut r = resolve(&a.model, file)?;
    r.opts.warm_up = a.warm_up;
    let model = load_model(&r)?;
    let Serving {
        epsilon,
        assurance,
        limits,
        access,
        validity,
        listen,
    } = serving(a, file, &model)?;
    let rt = service_runtime(&limits)?;
    let drain = limits.timeout + limits.header_read_timeout;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let state = AppState::new(
            Arc::new(ModelSlot::new(model)),
            epsilon,
            assurance,
            validity,
            limits,
            access,
        );
        // tests and scripts read the bound address from this line
        println!("listening http://{addr}");
        tracing::info!(%addr, epsilon, ready_ms = t_start.elapsed().as_secs_f64() * 1e3, "serving");
        // systemd (Type=notify): ready once the listener is bound and the verified model
        // is in the slot. The watchdog needs no check of its own here: the accept loop is
        // this runtime's main future (when it ends, the runtime and the pings end), and the
        // pings run on the workers that serve the connections, so stuck workers miss them.
        let _watchdog = sdnotify::spawn_watchdog(|| true);
        sdnotify::ready(&format!(
            "serving {} on http://{addr}",
            state.slot.current().model_id()
        ));
        let shutdown = async {
            http::shutdown_signal().await;
            sdnotify::stopping();
        };
        http::serve(listener, state, shutdown)
            .await
            .context("HTTP server")
    })?;
    // blocking work of requests that are gone ends at its next step; do not wait longer
    rt.shutdown_timeout(drain);
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let t_start = Instant::now();
    edge_agent::serving::memory::return_freed_memory();
    // RUST_LOG as `level` or `target=level,...` (tracing's `Targets`): the full EnvFilter
    // syntax (span fields, regexes) would bring a regex engine, about 0.5 MB of a device's
    // binary; a bad value falls back to `info` and says so.
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let wanted = std::env::var("RUST_LOG").ok();
    let (filter, bad) = match wanted.as_deref().map(str::parse::<Targets>) {
        Some(Ok(t)) => (t, None),
        Some(Err(e)) => (Targets::new().with_default(Level::INFO), Some(e)),
        None => (Targets::new().with_default(Level::INFO), None),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    if let Some(e) = bad {
        tracing::warn!(
            "RUST_LOG {wanted:?} is not `level` or `target=level,...` ({e}); logging at info"
        );
    }
    let cli = Cli::parse();
    let run = || -> Result<ExitCode> {
        let file = FileConfig::load(cli.config.as_deref())?;
        match &cli.command {
            Command::Predict(a) => predict(a, &file),
            Command::Verify(a) => verify(a, &file),
            Command::Serve(a) => serve(a, &file, t_start),
            #[cfg(feature = "eval")]
            Command::Bench(a) => bench::run(a, &file, |m| resolve(m, &file)),
            #[cfg(feature = "eval")]
            Command::Drift(a) => drift::run(a, |m| resolve(m, &file)),
            #[cfg(not(feature = "eval"))]
            Command::BenchNotBuilt(_) => not_built("bench"),
            #[cfg(not(feature = "eval"))]
            Command::DriftNotBuilt(_) => not_built("drift"),
            Command::Run(a) => run::run(a, &file, t_start),
        }
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", shared::error_text::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
