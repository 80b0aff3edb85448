//! `edge-agent run`: the device's long-running mode. It serves the model its data folder
//! names as active before it connects anywhere (a device without network keeps
//! answering), then takes signed rollout commands over MQTT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use edge_agent::config::FileConfig;
use edge_agent::model::loader::LoadOptions;
use edge_agent::model::predictor::parse_ncm;
use edge_agent::model::runtime::Runtime;
use edge_agent::model::slot::ModelSlot;
use edge_agent::monitoring::health::GateSettings;
use edge_agent::mqtt::{self, MqttSettings};
use edge_agent::rollout::download::DownloadLimits;
use edge_agent::rollout::driver::{self, Driver, DriverSettings};
use edge_agent::rollout::machine::{Machine, Policy};
use edge_agent::sdnotify;
use edge_agent::serving::http::{self, AppState};
use shared::command::TrustedKeys;

use crate::{serving, ServeArgs, Serving};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Everything `serve` takes; `--bundle` is the factory model, installed on a first
    /// start when the data folder names no active model, and `--key` a bundle key.
    #[command(flatten)]
    serve: ServeArgs,
    /// This device's id: its MQTT client id and its topics' level (`devices/<id>/...`).
    #[arg(long, env = "EDGE_AGENT_DEVICE_ID")]
    device_id: Option<String>,
    /// The fleet whose rollouts (`fleet/<fleet>/rollout`) this device follows.
    #[arg(long, env = "EDGE_AGENT_FLEET")]
    fleet: Option<String>,
    /// Rollout state (rollout.json) and models (models/<id>/).
    #[arg(long, env = "EDGE_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Broker: mqtt://HOST:PORT or mqtts://HOST:PORT (CA, client certificate and
    /// password in the configuration file's [mqtt]).
    #[arg(long, env = "EDGE_AGENT_BROKER")]
    broker: Option<String>,
    /// A trusted bundle-signing key (repeatable; beside --key and [keys] bundle).
    #[arg(long = "bundle-key")]
    bundle_keys: Vec<PathBuf>,
    /// A trusted command-signing key (repeatable; beside [keys] command).
    #[arg(long = "command-key", env = "EDGE_AGENT_COMMAND_KEY")]
    command_keys: Vec<PathBuf>,
    /// Health window after an activation, milliseconds (default 30000).
    #[arg(long, env = "EDGE_AGENT_HEALTH_WINDOW_MS")]
    health_window_ms: Option<u64>,
    /// Answers the health window must see before it passes (default 20; it passes with
    /// fewer after the longest window, 10 min by default).
    #[arg(long, env = "EDGE_AGENT_HEALTH_MIN_ANSWERS")]
    health_min_answers: Option<u64>,
    /// Seconds between telemetry reports (default 30).
    #[arg(long, env = "EDGE_AGENT_TELEMETRY_INTERVAL_S")]
    telemetry_interval_s: Option<f64>,
}

fn read_keys(paths: &[PathBuf], role: &str) -> Result<Vec<ed25519_dalek::VerifyingKey>> {
    paths
        .iter()
        .map(|p| {
            shared::bundle::keys::read_public(p)
                .with_context(|| format!("{role} key {}", p.display()))
        })
        .collect()
}

fn download_limits(file: &FileConfig) -> DownloadLimits {
    let d = DownloadLimits::default();
    let f = &file.download;
    let ms = Duration::from_millis;
    DownloadLimits {
        max_bundle_bytes: f.max_bundle_bytes.unwrap_or(d.max_bundle_bytes),
        free_disk_reserve_bytes: f
            .free_disk_reserve_bytes
            .unwrap_or(d.free_disk_reserve_bytes),
        stall_timeout: f.stall_timeout_ms.map_or(d.stall_timeout, ms),
        min_bytes_per_sec: f.min_bytes_per_sec.unwrap_or(d.min_bytes_per_sec),
        deadline: f.deadline_ms.map_or(d.deadline, ms),
        retries: f.retries.unwrap_or(d.retries),
        ..d
    }
}

fn gate_settings(a: &RunArgs, file: &FileConfig) -> Result<GateSettings> {
    let d = GateSettings::default();
    let h = &file.health;
    let g = GateSettings {
        window_ms: a.health_window_ms.or(h.window_ms).unwrap_or(d.window_ms),
        min_answers: a
            .health_min_answers
            .or(h.min_answers)
            .unwrap_or(d.min_answers),
        max_window_ms: h.max_window_ms.unwrap_or(d.max_window_ms),
        max_error_rate: h.max_error_rate.unwrap_or(d.max_error_rate),
        p99_ratio: h.p99_ratio.unwrap_or(d.p99_ratio),
        p99_slack_ms: h.p99_slack_ms.unwrap_or(d.p99_slack_ms),
        set_margin: h.set_margin.unwrap_or(d.set_margin),
        min_answers_for_sets: h.min_answers_for_sets.unwrap_or(d.min_answers_for_sets),
    };
    if g.max_window_ms < g.window_ms {
        bail!(
            "[health] max_window_ms {} is below window_ms {}",
            g.max_window_ms,
            g.window_ms
        );
    }
    if !(0.0..=1.0).contains(&g.max_error_rate) || g.p99_ratio < 1.0 || g.set_margin < 0.0 {
        bail!("[health]: max_error_rate is in [0, 1], p99_ratio at least 1, set_margin at least 0");
    }
    Ok(g)
}

pub fn run(a: &RunArgs, file: &FileConfig, t_start: Instant) -> Result<ExitCode> {
    let device_id = a
        .device_id
        .clone()
        .or_else(|| file.device_id.clone())
        .context("no device id: give --device-id, EDGE_AGENT_DEVICE_ID or `device_id`")?;
    let fleet = a
        .fleet
        .clone()
        .or_else(|| file.fleet.clone())
        .context("no fleet: give --fleet, EDGE_AGENT_FLEET or `fleet`")?;
    shared::command::segment("device id", &device_id).map_err(anyhow::Error::msg)?;
    shared::command::segment("fleet", &fleet).map_err(anyhow::Error::msg)?;
    let data_dir = a
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .context("no data folder: give --data-dir, EDGE_AGENT_DATA_DIR or `data_dir`")?;
    let broker = a
        .broker
        .clone()
        .or_else(|| file.mqtt.url.clone())
        .context("no broker: give --broker, EDGE_AGENT_BROKER or [mqtt] url")?;

    let m = &a.serve.model;
    let mut bundle_paths: Vec<PathBuf> = m.key.iter().chain(file.key.iter()).cloned().collect();
    bundle_paths.extend(a.bundle_keys.iter().cloned());
    bundle_paths.extend(file.keys.bundle.iter().cloned());
    bundle_paths.dedup();
    let mut command_paths = a.command_keys.clone();
    command_paths.extend(file.keys.command.iter().cloned());
    let keys = TrustedKeys {
        bundle: read_keys(&bundle_paths, "bundle")?,
        command: read_keys(&command_paths, "command")?,
    };
    keys.check()
        .map_err(anyhow::Error::msg)
        .context("trusted keys")?;
    if keys.command.is_empty() {
        tracing::warn!("no command key: every rollout command will be refused (no_command_key)");
    }
    let ncm = match m.ncm.as_ref().or(file.ncm.as_ref()) {
        Some(s) => Some(parse_ncm(s)?),
        None => None,
    };
    let load = LoadOptions {
        runtime: m.runtime.or(file.runtime).unwrap_or(Runtime::Native),
        ncm,
        warm_up: a.serve.warm_up,
    };
    let factory = m.bundle.clone().or_else(|| file.bundle.clone());

    // the model first, before any network
    let (state, model, active_loaded) = driver::boot(&data_dir, factory.as_deref(), &keys, &load)?;
    tracing::info!(
        model_id = model.model_id(),
        active_loaded,
        phase = state.phase.name(),
        load_ms = format!("{:.1}", model.load_ms),
        "serving model verified and self-tested"
    );
    let Serving {
        epsilon,
        assurance,
        limits,
        access,
        mut validity,
        listen,
    } = serving(&a.serve, file, &model)?;
    if let Some(ad) = &mut validity.adaptive {
        // the ACI state lives with the rest of the device's state
        ad.state_file
            .get_or_insert_with(|| data_dir.join("aci.json"));
    }
    let dl = download_limits(file);
    let settings = DriverSettings {
        data_dir: data_dir.clone(),
        keys,
        load,
        store_options: file
            .store
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        limits: dl,
        gate: gate_settings(a, file)?,
        epsilon,
        telemetry_every: Duration::from_secs_f64(
            a.telemetry_interval_s
                .or(file.telemetry_interval_s)
                .unwrap_or(30.0)
                .max(0.1),
        ),
    };
    let policy = Policy {
        device_id: device_id.clone(),
        fleet: fleet.clone(),
        rollout_timeout_ms: file.download.rollout_timeout_ms.unwrap_or(3_600_000) as i64,
        retry_min_ms: 1_000,
        retry_max_ms: 60_000,
    };
    let mut mq = MqttSettings::new(broker, device_id.clone(), fleet);
    let fm = &file.mqtt;
    mq.ca_file = fm.ca_file.clone();
    mq.client_cert = fm.client_cert.clone();
    mq.client_key = fm.client_key.clone();
    mq.username = fm.username.clone();
    mq.password_file = fm.password_file.clone();
    if let Some(s) = fm.keep_alive_s {
        mq.keep_alive = Duration::from_secs(s.max(1));
    }
    if let Some(ms) = fm.backoff_min_ms {
        mq.backoff_min = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = fm.backoff_max_ms {
        mq.backoff_max = Duration::from_millis(ms.max(1));
    }

    let rt = crate::service_runtime(&limits)?;
    let drain = limits.timeout + limits.header_read_timeout;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let app = AppState::new(
            Arc::new(ModelSlot::new(model)),
            epsilon,
            assurance,
            validity,
            limits,
            access,
        );
        // this agent takes rollouts: /v1/rollout answers from the first request on, before
        // the driver (below, after MQTT is set up) starts filling the view
        let _ = app.rollout.set(Arc::new(
            edge_agent::rollout::driver::RolloutView::starting(),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let http_task = {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move { http::serve(listener, app, stop.cancelled_owned()).await })
        };
        println!("listening http://{addr}");
        tracing::info!(%addr, epsilon, ready_ms = t_start.elapsed().as_secs_f64() * 1e3, "serving");
        // systemd (Type=notify): ready once the model answers over HTTP, before and
        // whatever MQTT does (a device without network still serves). The watchdog pings
        // while the HTTP task lives: it is spawned, so if it ended (a panic) the agent
        // would go on taking rollouts without serving; the pings also need the runtime's
        // workers to tick. (Reading the model slot would add nothing: it never blocks.)
        let http_alive = http_task.abort_handle();
        let _watchdog = sdnotify::spawn_watchdog(move || !http_alive.is_finished());
        sdnotify::ready(&format!(
            "serving {} on http://{addr}",
            app.slot.current().model_id()
        ));
        let will =
            serde_json::json!({ "device_id": device_id, "state": "offline", "online": false });
        let (publisher, inbound, mqtt_task) =
            mqtt::spawn(mq, will.to_string().into_bytes()).context("MQTT settings")?;
        let machine = Machine::new(state, policy);
        let driver = Driver::new(machine, settings, app, Some(publisher.clone()));
        let signal = async {
            http::shutdown_signal().await;
            sdnotify::stopping();
        };
        let result = driver.run(Some(inbound), active_loaded, signal).await;
        // a clean stop says so before it leaves (the will is for unclean ones)
        let _ = publisher.publish_status(will.to_string(), true);
        let _ = publisher.disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), mqtt_task).await;
        stop.cancel();
        let _ = tokio::time::timeout(drain, http_task).await;
        result
    })?;
    rt.shutdown_timeout(drain);
    Ok(ExitCode::SUCCESS)
}
