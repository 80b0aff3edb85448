//! `trainer worker`: claims trials from the registry and runs them, one at a time, until
//! told to stop (or, with `--exit-when-done`, until its sweep has nothing left to run or
//! wait for). Run any number, on any machine that reaches the registry, the object store
//! and (optionally) MLflow.
//!
//! Each trial is claimed with a lease that a thread of its own renews while the trial
//! trains; a worker that dies (SIGKILL, lost machine) stops renewing, and when the lease
//! expires another worker takes the trial again. A finished trial is exported, signed and
//! bundled ([`crate::bundling`]) before it is marked finished, so every finished trial can
//! be deployed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::registry::{BlockingRegistry, ClaimedTrial, Registry};
use crate::train_cmd::{seconds, IcpArgs};
use crate::training::TrialConfig;
use crate::trial::{run_trial, TrialRequest};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Only take trials of this sweep (by name). Default: any sweep's.
    #[arg(long, value_name = "NAME")]
    pub sweep: Option<String>,
    /// Exit once the sweep (or, without --sweep, every sweep) has no trial left pending or
    /// running. Without it, the worker keeps polling for new trials (a long-lived service).
    #[arg(long)]
    pub exit_when_done: bool,
    /// Stop after this many trials.
    #[arg(long, value_name = "N")]
    pub max_trials: Option<usize>,
    /// Dataset for sweeps recorded without one.
    #[arg(long, env = "EDGECP_DATASET")]
    pub data: Option<String>,
    /// Artifact location of the runs (directory or URL, e.g. s3://bucket/runs).
    #[arg(long, env = "EDGECP_ARTIFACTS", default_value = "runs/artifacts")]
    pub artifacts: String,
    /// Where bundles are uploaded (directory or URL, e.g. s3://bucket/bundles).
    #[arg(long, env = "EDGECP_BUNDLES", default_value = "runs/bundles")]
    pub bundles: String,
    /// Signing key (from `exporter keygen`) for the bundles.
    #[arg(
        long,
        env = "EDGECP_SIGNING_KEY",
        value_name = "FILE",
        required_unless_present = "no_bundle"
    )]
    pub key: Option<PathBuf>,
    /// Do not bundle finished trials (they cannot be deployed until bundled by hand).
    #[arg(long)]
    pub no_bundle: bool,
    /// MLflow tracking server every trial also logs to.
    #[arg(long, env = crate::tracking::URL_ENV, value_name = "URL")]
    pub mlflow: Option<String>,
    /// Seconds a trial's end waits for MLflow records still queued.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub mlflow_wait: f64,
    /// Lease of a claimed trial, renewed every third of it while the trial runs; another
    /// worker takes the trial this long after this worker stops renewing it.
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub lease_secs: f64,
    /// Pause between looks for work when there is none.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub poll_secs: f64,
    /// How long the worker waits out a registry it cannot reach (server restarting,
    /// network gone) when looking for work, retrying with a growing pause, before it exits
    /// with an error. 0: exit at the first failure.
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    pub registry_patience: f64,
    #[command(flatten)]
    pub icp: IcpArgs,
    /// Print one JSON line per trial and a summary.
    #[arg(long)]
    pub json: bool,
}

/// What became of one claimed trial.
#[derive(Debug, Serialize)]
struct TrialOutcome {
    trial: String,
    sweep: String,
    index: i64,
    attempt: i64,
    status: &'static str,
    run_id: Option<String>,
    model_id: Option<String>,
    bundle_uri: Option<String>,
    nc_accuracy: Option<f64>,
    seconds: f64,
    error: Option<String>,
}

/// Renews a lease from its own thread and connection until dropped.
struct LeaseKeeper {
    stop: Option<mpsc::Sender<()>>,
    lost: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaseKeeper {
    fn start(url: &str, trial: &ClaimedTrial, lease: Duration) -> LeaseKeeper {
        let (stop, stopped) = mpsc::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let (url, id, claim, flag) = (
            url.to_string(),
            trial.id.clone(),
            trial.claim.clone(),
            lost.clone(),
        );
        let every = lease / 3;
        let lease_ms = lease.as_millis() as i64;
        let thread = std::thread::Builder::new()
            .name("trial-lease".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let mut reg: Option<Registry> = None;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    rt.block_on(async {
                        if reg.is_none() {
                            reg = Registry::open_without_reaping(&url).await.ok();
                        }
                        let Some(r) = &reg else {
                            tracing::warn!("trial {id}: cannot reach the registry to renew the lease");
                            return;
                        };
                        match r.renew_trial(&id, &claim, lease_ms).await {
                            Ok(true) => {}
                            Ok(false) => {
                                if !flag.swap(true, Ordering::SeqCst) {
                                    tracing::error!("trial {id}: lease lost (another worker took the trial); this run will not count");
                                }
                            }
                            Err(e) => {
                                tracing::warn!("trial {id}: renewing the lease failed: {e}");
                                reg = None;
                            }
                        }
                    });
                }
                if let Some(r) = reg {
                    rt.block_on(r.close());
                }
            })
            .ok();
        LeaseKeeper {
            stop: Some(stop),
            lost,
            thread,
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(args: &WorkerArgs, registry_url: &str) -> Result<()> {
    let lease = seconds("--lease-secs", args.lease_secs)?;
    let poll = seconds("--poll-secs", args.poll_secs)?;
    let mlflow_wait = seconds("--mlflow-wait", args.mlflow_wait)?;
    let patience = seconds("--registry-patience", args.registry_patience)?;
    if lease < Duration::from_secs(1) {
        anyhow::bail!(
            "--lease-secs {}: expected at least 1 second",
            args.lease_secs
        );
    }
    if let Some(k) = &args.key {
        if !args.no_bundle && !k.is_file() {
            anyhow::bail!(
                "signing key {} does not exist (make one with `exporter keygen --out DIR`, or pass --no-bundle)",
                k.display()
            );
        }
    }
    // Fail now, not after the first trial, when the bundler is missing.
    if !args.no_bundle {
        crate::bundling::exporter_binary()?;
    }
    let reg = BlockingRegistry::open(registry_url)
        .with_context(|| format!("opening the run registry {registry_url}"))?;
    let sweep_id = match &args.sweep {
        None => None,
        Some(name) => Some(
            reg.block_on(reg.registry().sweep_id(name))?
                .with_context(|| {
                    format!(
                        "no sweep named {name:?} in the run registry {}",
                        reg.registry().url()
                    )
                })?,
        ),
    };
    let worker = format!("{}:{}", crate::registry::host_name(), std::process::id());
    tracing::info!(worker, sweep = ?args.sweep, "worker started");
    let (mut finished, mut failed) = (0usize, 0usize);
    let mut taken = 0usize;
    // when the registry stopped answering, and how many looks failed since
    let mut outage: Option<std::time::Instant> = None;
    let mut retries = 0u32;
    loop {
        if args.max_trials.is_some_and(|m| taken >= m) {
            break;
        }
        let look_started = std::time::Instant::now();
        let look = reg.block_on(async {
            let registry = reg.registry();
            let trial = registry
                .claim_trial(sweep_id.as_deref(), &worker, lease.as_millis() as i64)
                .await?;
            let done = match (&trial, args.exit_when_done) {
                (None, true) => {
                    let counts = registry.trial_counts(sweep_id.as_deref()).await?;
                    tracing::debug!(?counts, "no trial to claim");
                    counts.done()
                }
                _ => false,
            };
            Ok::<_, crate::registry::RegistryError>((trial, done))
        });
        let (claimed, done) = match look {
            Ok(found) => {
                if let Some(since) = outage.take() {
                    tracing::warn!(
                        "the run registry {} answers again after {:.0}s",
                        reg.registry().url(),
                        since.elapsed().as_secs_f64()
                    );
                }
                found
            }
            Err(e) if e.is_unreachable() => {
                let since = *outage.get_or_insert(look_started);
                if since.elapsed() >= patience {
                    return Err(e).context(format!(
                        "the run registry has been unreachable for {:.0}s (--registry-patience {})",
                        since.elapsed().as_secs_f64(),
                        args.registry_patience
                    ));
                }
                retries += 1;
                let pause = Duration::from_millis(500 << retries.min(6))
                    .min(poll.max(Duration::from_secs(1)));
                tracing::warn!(
                    "cannot reach the run registry ({e}); trying again in {:.1}s",
                    pause.as_secs_f64()
                );
                std::thread::sleep(pause);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        retries = 0;
        let Some(trial) = claimed else {
            if done {
                break;
            }
            std::thread::sleep(poll);
            continue;
        };
        taken += 1;
        let outcome = run_one(args, registry_url, &reg, &trial, lease, mlflow_wait);
        match outcome.status {
            "finished" => finished += 1,
            _ => failed += 1,
        }
        if args.json {
            println!("{}", serde_json::to_string(&outcome)?);
        } else {
            match &outcome.error {
                None => println!(
                    "trial {} of {} finished: run {} bundle {} ({:.0}s)",
                    outcome.index,
                    outcome.sweep,
                    outcome.run_id.as_deref().unwrap_or("-"),
                    outcome.model_id.as_deref().unwrap_or("-"),
                    outcome.seconds
                ),
                Some(e) => println!(
                    "trial {} of {} {}: {e}",
                    outcome.index, outcome.sweep, outcome.status
                ),
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "worker": worker, "finished": finished, "failed": failed })
        );
    } else {
        println!("worker {worker}: {finished} trials finished, {failed} failed");
    }
    Ok(())
}

fn run_one(
    args: &WorkerArgs,
    registry_url: &str,
    reg: &BlockingRegistry,
    trial: &ClaimedTrial,
    lease: Duration,
    mlflow_wait: Duration,
) -> TrialOutcome {
    let t0 = std::time::Instant::now();
    tracing::info!(
        trial = %trial.id,
        "trial {} of sweep {} (attempt {}): {:?}",
        trial.idx,
        trial.sweep,
        trial.attempts,
        trial.overrides
    );
    let keeper = LeaseKeeper::start(registry_url, trial, lease);
    let mut out = TrialOutcome {
        trial: trial.id.clone(),
        sweep: trial.sweep.clone(),
        index: trial.idx,
        attempt: trial.attempts,
        status: "failed",
        run_id: None,
        model_id: None,
        bundle_uri: None,
        nc_accuracy: None,
        seconds: 0.0,
        error: None,
    };
    let result = (|| -> Result<()> {
        let cfg = TrialConfig::from_toml_str(&trial.config)
            .with_context(|| format!("trial {} configuration", trial.id))?;
        let dataset = if trial.dataset.is_empty() {
            args.data
                .clone()
                .context("the sweep has no dataset and neither --data nor EDGECP_DATASET is set")?
        } else {
            trial.dataset.clone()
        };
        let mut extra = vec![
            ("sweep".to_string(), trial.sweep.clone()),
            ("trial_id".to_string(), trial.id.clone()),
            ("trial_index".to_string(), trial.idx.to_string()),
        ];
        extra.extend(
            trial
                .overrides
                .iter()
                .map(|(k, v)| (format!("sweep.{k}"), v.clone())),
        );
        let report = run_trial(&TrialRequest {
            cfg,
            dataset,
            registry_url: registry_url.to_string(),
            artifacts: args.artifacts.clone(),
            experiment: trial.experiment.clone(),
            name: format!("{}-{:03}", trial.sweep, trial.idx),
            resume: None,
            icp: args.icp.settings(),
            quiet: !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            mlflow: args.mlflow.clone(),
            mlflow_wait,
            extra_params: extra,
        })?;
        out.run_id = Some(report.run_id.clone());
        out.nc_accuracy = Some(report.nc_accuracy);
        if !args.no_bundle {
            let key = args.key.as_deref().context("no signing key (--key)")?;
            let local = std::path::Path::new("runs")
                .join("worker-bundles")
                .join(&report.run_id);
            let b = crate::bundling::bundle_run(
                registry_url,
                &report.run_id,
                key,
                &local,
                &args.bundles,
                true,
            )
            .with_context(|| format!("bundling run {}", report.run_id))?;
            out.model_id = Some(b.model_id);
            out.bundle_uri = b.uri;
        }
        Ok(())
    })();
    let lost = keeper.lost.load(Ordering::SeqCst);
    drop(keeper);
    let registry = reg.registry();
    match result {
        Ok(()) => {
            let run = out.run_id.clone().unwrap_or_default();
            match reg.block_on(registry.finish_trial(
                &trial.id,
                &trial.claim,
                &run,
                out.model_id.as_deref(),
            )) {
                Ok(true) => out.status = "finished",
                Ok(false) => {
                    out.status = "lost";
                    out.error = Some(format!(
                        "the lease expired{} and another worker took the trial: run {run} does not count",
                        if lost { " while training" } else { "" }
                    ));
                }
                Err(e) => out.error = Some(format!("recording the finished trial: {e}")),
            }
        }
        Err(e) => {
            let msg = shared::error_text::chain(e.as_ref());
            tracing::error!(trial = %trial.id, "trial {} failed: {msg}", trial.idx);
            if let Err(e2) = reg.block_on(registry.fail_trial(&trial.id, &trial.claim, &msg)) {
                tracing::error!("recording the failure of trial {}: {e2}", trial.id);
            }
            out.error = Some(msg);
        }
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out
}
