//! `trainer rollout`: the minimal cloud side of a rollout. It reads the bundle's manifest
//! from the store (its sha256, size and creation time go into the command), signs one
//! command with a command key, publishes it (to each device's `devices/<id>/cmd`, or
//! retained to `fleet/<fleet>/rollout`), follows the devices' events and prints each
//! device's outcome. Staged waves across a fleet come later.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{json, Value};
use shared::command::{Action, Command, Target, FORMAT, FORMAT_VERSION};

/// What to roll out, where, signed by whom.
#[derive(clap::Args, Debug, Clone)]
pub struct RolloutArgs {
    /// The model to roll out: its bundle is STORE/models/<MODEL>/ (or --bundle).
    #[arg(long, required_unless_present = "rollback")]
    pub model: Option<String>,
    /// Send a rollback command instead: each device goes back to its previous model.
    #[arg(long, conflicts_with = "model")]
    pub rollback: bool,
    /// The fleet (devices check it).
    #[arg(long)]
    pub fleet: String,
    /// Target these devices (repeatable); without it the whole fleet (or --percent).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Target this percentage of the fleet (devices whose id hashes below it).
    #[arg(long, conflicts_with = "devices", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub percent: Option<u8>,
    /// Private command-signing key (PKCS#8 PEM, `exporter keygen --role command`).
    #[arg(long, env = "EDGECP_COMMAND_KEY")]
    pub key: PathBuf,
    /// Broker URL: mqtt://HOST[:PORT] or, with TLS, mqtts://HOST[:PORT] (then --broker-ca).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883", env = "EDGECP_BROKER")]
    pub broker: String,
    /// PEM file with the CA(s) that signed the broker's certificate (mqtts:// only; the
    /// system's roots are not trusted).
    #[arg(long, env = "EDGECP_BROKER_CA")]
    pub broker_ca: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with --broker-key).
    #[arg(long, env = "EDGECP_BROKER_CERT", requires = "broker_key")]
    pub broker_cert: Option<PathBuf>,
    /// PEM private key of --broker-cert.
    #[arg(long, env = "EDGECP_BROKER_KEY", requires = "broker_cert")]
    pub broker_key: Option<PathBuf>,
    /// Broker username.
    #[arg(long, env = "EDGECP_BROKER_USER")]
    pub broker_user: Option<String>,
    /// File whose first line is the broker password (never on the command line).
    #[arg(long, env = "EDGECP_BROKER_PASSWORD_FILE", requires = "broker_user")]
    pub broker_password_file: Option<PathBuf>,
    /// Store the bundles were uploaded to by `exporter bundle`.
    #[arg(long, default_value = "runs", env = "EDGECP_STORE")]
    pub store: String,
    /// The bundle's location as devices reach it (default: STORE/models/<MODEL>).
    #[arg(long)]
    pub bundle: Option<String>,
    /// Rollout id in every report (default r-<milliseconds>).
    #[arg(long)]
    pub rollout_id: Option<String>,
    /// Command sequence number; must exceed every earlier command's for the fleet
    /// (default: the current time in milliseconds).
    #[arg(long)]
    pub sequence: Option<u64>,
    /// Seconds the command stays valid.
    #[arg(long, default_value_t = 3600)]
    pub valid_for: u64,
    /// Seconds to follow the devices' events.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// With a fleet target: stop following after this many devices have an outcome.
    #[arg(long)]
    pub expect: Option<usize>,
    /// One JSON object per device on stdout, then a summary.
    #[arg(long)]
    pub json: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The rollout action for `model`: its manifest from the store.
async fn rollout_action(a: &RolloutArgs, model: &str) -> Result<Action> {
    shared::command::segment("model id", model).map_err(anyhow::Error::msg)?;
    let bundle = match &a.bundle {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => {
            let loc = shared::store::open(&a.store)?.sub(&format!("models/{model}"));
            shared::store::object_url(&loc, &loc.prefix)?
        }
    };
    let read = |name: &str| {
        let url = format!("{bundle}/{name}");
        async move {
            shared::store::read_url(&url)
                .await
                .with_context(|| format!("reading {url}"))
        }
    };
    let manifest_bytes = read(shared::bundle::MANIFEST_FILE).await?;
    if manifest_bytes.len() as u64 > shared::bundle::MAX_MANIFEST_BYTES {
        bail!("{bundle}: manifest.json is larger than a manifest may be");
    }
    let sig = read(shared::bundle::SIGNATURE_FILE).await?;
    let manifest: shared::bundle::Manifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{bundle}/manifest.json"))?;
    if manifest.model_id != model {
        bail!(
            "{bundle}: the manifest is for model {}, not {model}",
            manifest.model_id
        );
    }
    let bundle_bytes = manifest_bytes.len() as u64
        + sig.len() as u64
        + manifest.files.iter().map(|f| f.bytes).sum::<u64>();
    Ok(Action::Rollout {
        model_id: model.to_string(),
        bundle,
        manifest_sha256: shared::bundle::sha256_hex(&manifest_bytes),
        bundle_bytes,
        model_created_ms: manifest.created_ms,
    })
}

/// Connection options for `--broker` and its TLS and login flags.
fn broker_options(a: &RolloutArgs, client_id: String) -> Result<MqttOptions> {
    let url = shared::broker::parse_url(&a.broker)?;
    let mut opts = MqttOptions::new(client_id, url.host.clone(), url.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_outgoing_inflight_upper_limit(16);
    let client = a.broker_cert.as_deref().zip(a.broker_key.as_deref());
    match (url.tls, &a.broker_ca) {
        (true, Some(ca)) => {
            let config = shared::broker::client_config(ca, client)?;
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        (true, None) => bail!("broker URL {}: mqtts:// needs --broker-ca", a.broker),
        (false, _) if a.broker_ca.is_some() || client.is_some() => bail!(
            "TLS files given for the plain URL {}; use mqtts:// to encrypt",
            a.broker
        ),
        (false, _) => {}
    }
    if let Some(user) = &a.broker_user {
        let password = match &a.broker_password_file {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("broker password file {}", p.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }
    Ok(opts)
}

/// One device's end of the rollout.
#[derive(Debug, Clone)]
struct Outcome {
    result: &'static str,
    reason: Option<String>,
    detail: Option<String>,
    seconds: f64,
}

pub fn run(a: &RolloutArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async(a))
}

async fn run_async(a: &RolloutArgs) -> Result<()> {
    let key = shared::bundle::keys::read_private(&a.key)
        .with_context(|| format!("command key {}", a.key.display()))?;
    let action = match (&a.model, a.rollback) {
        (_, true) => Action::Rollback,
        (Some(m), false) => rollout_action(a, m).await?,
        (None, false) => bail!("give --model or --rollback"),
    };
    let now = now_ms();
    let target = match (a.devices.is_empty(), a.percent) {
        (false, _) => Target::Devices {
            devices: a.devices.clone(),
        },
        (true, Some(percent)) => Target::Percent { percent },
        (true, None) => Target::All,
    };
    let cmd = Command {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        rollout_id: a.rollout_id.clone().unwrap_or_else(|| format!("r-{now}")),
        fleet: a.fleet.clone(),
        target,
        sequence: a.sequence.unwrap_or(now as u64),
        not_before_ms: now - 60_000,
        not_after_ms: now + (a.valid_for as i64).saturating_mul(1000),
        action,
    };
    let envelope = cmd.sign(&key)?;
    let payload = serde_json::to_vec(&envelope)?;

    let opts = broker_options(a, format!("trainer-rollout-{now}"))?;
    let (client, mut events) = AsyncClient::new(opts, 64);
    client
        .subscribe("devices/+/events", QoS::AtLeastOnce)
        .await?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout);
    let mut published = false;
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut progress: BTreeMap<String, String> = BTreeMap::new();
    let expect = if a.devices.is_empty() {
        a.expect
    } else {
        Some(a.devices.len())
    };
    eprintln!(
        "rollout {} (sequence {}) to fleet {}{}",
        cmd.rollout_id,
        cmd.sequence,
        cmd.fleet,
        match &cmd.target {
            Target::All => String::new(),
            Target::Percent { percent } => format!(", {percent}% of it"),
            Target::Devices { devices } => format!(", devices {}", devices.join(" ")),
        }
    );
    loop {
        if expect.is_some_and(|n| outcomes.len() >= n) {
            break;
        }
        let ev = match tokio::time::timeout_at(deadline.into(), events.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                if !published {
                    bail!("broker {}: {e}", a.broker);
                }
                tracing::warn!(error = %e, "broker connection; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Packet::SubAck(_)) if !published => {
                // subscribed first, so that no event is missed
                if a.devices.is_empty() {
                    client
                        .publish(
                            format!("fleet/{}/rollout", a.fleet),
                            QoS::AtLeastOnce,
                            true,
                            payload.clone(),
                        )
                        .await?;
                } else {
                    for d in &a.devices {
                        client
                            .publish(
                                format!("devices/{d}/cmd"),
                                QoS::AtLeastOnce,
                                false,
                                payload.clone(),
                            )
                            .await?;
                    }
                }
                published = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                let device = v["device_id"].as_str().unwrap_or("?").to_string();
                let ours = v["rollout_id"].as_str() == Some(cmd.rollout_id.as_str())
                    // a device that could not read the command says so without an id
                    || (v["rollout_id"].is_null() && a.devices.contains(&device));
                if !ours || outcomes.contains_key(&device) {
                    continue;
                }
                let event = v["event"].as_str().unwrap_or("").to_string();
                let reason = v["reason"].as_str().map(str::to_string);
                let detail = v["detail"].as_str().map(str::to_string);
                let result = match event.as_str() {
                    "health_passed" => Some("succeeded"),
                    "refused" => Some("refused"),
                    "canceled" => Some("canceled"),
                    // for a rollback command, going back is the success
                    "rolled_back" if a.rollback => Some("succeeded"),
                    "rolled_back" => Some("rolled_back"),
                    // a failed health gate goes on to roll back: wait for that
                    "failed" if reason.as_deref() != Some("health_gate") => Some("failed"),
                    _ => None,
                };
                let line = match (&event[..], &v["bytes"], &v["total"]) {
                    ("downloading", b, t) => format!(
                        "downloading {:.0}%",
                        100.0 * b.as_f64().unwrap_or(0.0) / t.as_f64().unwrap_or(1.0).max(1.0)
                    ),
                    _ => event.clone(),
                };
                if progress.get(&device) != Some(&line) && !a.json {
                    eprintln!(
                        "  {device}: {line}{}",
                        reason
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    );
                }
                progress.insert(device.clone(), line);
                if let Some(result) = result {
                    outcomes.insert(
                        device,
                        Outcome {
                            result,
                            reason,
                            detail,
                            seconds: started.elapsed().as_secs_f64(),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    let mut missing: Vec<&String> = a
        .devices
        .iter()
        .filter(|d| !outcomes.contains_key(*d))
        .collect();
    missing.sort();
    for (device, o) in &outcomes {
        if a.json {
            println!(
                "{}",
                json!({ "device_id": device, "rollout_id": cmd.rollout_id, "result": o.result, "reason": o.reason, "detail": o.detail, "seconds": o.seconds })
            );
        } else {
            println!(
                "{device}: {}{} after {:.2} s",
                o.result,
                o.reason
                    .as_ref()
                    .map(|r| format!(
                        " ({r}{})",
                        o.detail
                            .as_ref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ))
                    .unwrap_or_default(),
                o.seconds
            );
        }
    }
    for d in &missing {
        if a.json {
            println!(
                "{}",
                json!({ "device_id": d, "rollout_id": cmd.rollout_id, "result": "no_answer" })
            );
        } else {
            println!(
                "{d}: no outcome within {} s (last: {})",
                a.timeout,
                progress.get(*d).map_or("nothing heard", String::as_str)
            );
        }
    }
    let ok = outcomes
        .values()
        .filter(|o| o.result == "succeeded")
        .count();
    let summary = json!({ "rollout_id": cmd.rollout_id, "sequence": cmd.sequence, "succeeded": ok, "outcomes": outcomes.len(), "no_answer": missing.len() });
    if a.json {
        println!("{summary}");
    } else {
        eprintln!(
            "{ok} of {} device(s) succeeded",
            outcomes.len() + missing.len()
        );
    }
    let all_ok = missing.is_empty()
        && outcomes.values().all(|o| o.result == "succeeded")
        && !outcomes.is_empty();
    if !all_ok {
        bail!("rollout {} did not succeed on every device", cmd.rollout_id);
    }
    Ok(())
}
