//! `edge-agent run` end to end: the real agent binary, a private Mosquitto, a real S3
//! server (s3s-fs) behind a fault-injecting proxy, signed bundles and signed commands.
//! Every test checks that each HTTP answer came from a verified model, that the agent did
//! not crash (or came back consistent after the SIGKILL the test sent), that a fault is
//! reported with its reason, and that the agent converges once the fault is gone.

mod common;
#[path = "common/broker.rs"]
mod broker;
#[path = "common/device.rs"]
mod device;
#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use broker::{kind, Broker, Observer};
use device::{Agent, AgentSpec, Built, Hit, Keys, Load};
use serde_json::Value;
use shared::command::{Action, Command, Target};

const BUCKET: &str = "bundles";
const FLEET: &str = "lab";
const EPSILON: f64 = 0.05;
const LIMIT: Duration = Duration::from_secs(30);

/// Every bundle of this file, built once (building the two real ones takes seconds).
struct Fleet {
    _root: tempfile::TempDir,
    keys: Keys,
    /// The factory model.
    a: Built,
    /// Newer than `a`, its own weights.
    b: Built,
    /// Newer than `b`.
    c: Built,
    /// As new as `b`; its validation figures are far from what it does: the gate fails.
    sick: Built,
    /// As new as `b`; golden outputs altered (and re-signed): the self-test fails.
    bad_golden: Built,
    /// As new as `b`; signed by a key nobody trusts.
    rogue: Built,
    /// As new as `b`; one byte of model.onnx flipped after signing.
    flipped: Built,
    /// Older than `b`.
    old: Built,
    /// Newest, equally new: the loops alternate between them.
    x: Built,
    y: Built,
}

fn fleet() -> &'static Fleet {
    static F: OnceLock<Fleet> = OnceLock::new();
    F.get_or_init(|| {
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(scratch).unwrap();
        let root = tempfile::Builder::new()
            .prefix("rollout-bundles")
            .tempdir_in(scratch)
            .unwrap();
        let r = root.path();
        let keys = Keys::new(&r.join("keys"));
        let k = &keys.bundle;
        let a0 = device::build_seeded(r, "a0", 11, k);
        let b0 = device::build_seeded(r, "b0", 12, k);
        let t = a0.created_ms;
        let at = |ms: i64, id: &'static str| {
            move |m: &mut shared::bundle::Manifest, _: &Path| {
                m.created_ms = ms;
                m.model_id = format!("{id}-{}", &m.model_id[m.model_id.len() - 8..]);
            }
        };
        let a = device::derive(&a0, r, "a", k, at(t, "a"));
        let b = device::derive(&b0, r, "b", k, at(t + 1000, "b"));
        let c = device::derive(&a0, r, "c", k, at(t + 2000, "c"));
        let tag = (EPSILON * 1000.0).round() as u32;
        let sick = device::derive(&b0, r, "sick", k, |m, d| {
            at(t + 1000, "sick")(m, d);
            m.metrics
                .insert(format!("validation_empty_eps{tag:03}"), 0.97);
            m.metrics
                .insert(format!("validation_mean_set_size_eps{tag:03}"), 0.03);
        });
        let bad_golden = device::derive(&b0, r, "bad_golden", k, |m, d| {
            at(t + 1000, "badgolden")(m, d);
            device::alter_golden(m, d, 0.5);
        });
        let rogue = device::derive(&b0, r, "rogue", &keys.rogue, at(t + 1000, "rogue"));
        let mut flipped = device::derive(&b0, r, "flipped", k, at(t + 1000, "flipped"));
        {
            let onnx = flipped.dir.join("model.onnx");
            let mut bytes = std::fs::read(&onnx).unwrap();
            let i = bytes.len() / 2;
            bytes[i] ^= 0x01;
            std::fs::write(&onnx, bytes).unwrap();
            flipped.dir = flipped.dir.clone();
        }
        let old = device::derive(&a0, r, "old", k, at(t + 500, "old"));
        let x = device::derive(&a0, r, "x", k, at(t + 5000, "x"));
        let y = device::derive(&b0, r, "y", k, at(t + 5000, "y"));
        Fleet {
            _root: root,
            keys,
            a,
            b,
            c,
            sick,
            bad_golden,
            rogue,
            flipped,
            old,
            x,
            y,
        }
    })
}

/// Models whose answers are allowed: verified bundles.
fn verified() -> BTreeSet<String> {
    let f = fleet();
    [&f.a, &f.b, &f.c, &f.sick, &f.old, &f.x, &f.y]
        .iter()
        .map(|b| b.model_id.clone())
        .collect()
}

/// One device and its world: S3 behind a proxy, a broker, an observer, the agent.
struct World {
    // field order is drop order: the agent goes first
    agent: Agent,
    obs: Observer,
    broker: Broker,
    proxy: s3::Proxy,
    s3: s3::S3sFs,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    seq: u64,
    device: String,
}

fn location(name: &str) -> String {
    format!("s3://{BUCKET}/models/{name}")
}

impl World {
    fn new(device: &str, extra: &[&str]) -> World {
        World::with_config(device, extra, "")
    }

    fn with_config(device: &str, extra: &[&str], more_config: &str) -> World {
        let f = fleet();
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let s3 = s3::S3sFs::start();
        let bucket = s3.bucket(BUCKET);
        for (name, b) in [
            ("a", &f.a),
            ("b", &f.b),
            ("c", &f.c),
            ("sick", &f.sick),
            ("bad_golden", &f.bad_golden),
            ("rogue", &f.rogue),
            ("flipped", &f.flipped),
            ("old", &f.old),
            ("x", &f.x),
            ("y", &f.y),
        ] {
            s3::upload_dir(&b.dir, &bucket, &format!("models/{name}"));
        }
        let proxy = rt.block_on(s3::Proxy::start(s3.port));
        let broker = Broker::start();
        let obs = Observer::start(&broker, device);
        let mut cfg = String::from("[store.options]\n");
        for (k, v) in s3::store_options(proxy.port) {
            cfg += &format!("{k} = {v:?}\n");
        }
        cfg += "[download]\nstall_timeout_ms = 1500\n";
        cfg += "[health]\np99_slack_ms = 2000.0\nmin_answers_for_sets = 10\n";
        cfg += more_config;
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, cfg).unwrap();
        let mut args: Vec<String> = [
            "--health-window-ms",
            "300",
            "--health-min-answers",
            "0",
            "--telemetry-interval-s",
            "1",
            "--epsilon",
            "0.05",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let spec = AgentSpec {
            device: device.into(),
            fleet: FLEET.into(),
            data_dir: dir.path().join("data"),
            broker: broker.url(),
            factory: f.a.dir.clone(),
            bundle_pub: f.keys.bundle_pub.clone(),
            command_pub: f.keys.command_pub.clone(),
            config,
            extra: args,
            log: dir.path().join("agent.log"),
        };
        let agent = Agent::start(&spec);
        let w = World {
            agent,
            obs,
            broker,
            proxy,
            s3,
            rt,
            dir,
            seq: 0,
            device: device.into(),
        };
        // connected: the retained status names the factory model
        w.obs.wait_status(LIMIT, "online with the factory model", |s| {
            s["online"] == true && s["active"] == f.a.model_id.as_str()
        });
        w
    }

    fn cmd_topic(&self) -> String {
        format!("devices/{}/cmd", self.device)
    }

    /// Signs `cmd` with the command key and publishes it on this device's topic.
    fn send(&self, cmd: &Command) {
        let json = device::signed(cmd, &fleet().keys.command);
        self.broker.publish(&self.cmd_topic(), &json, false);
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A rollout of `b` (at `models/<name>`) with the next sequence.
    fn rollout(&mut self, b: &Built, name: &str) -> Command {
        let seq = self.next_seq();
        device::rollout(FLEET, seq, b, &location(name))
    }

    /// Sends a rollout of `b` and waits for its end; returns (events, command->activated,
    /// command->health_passed).
    fn roll_to(&mut self, b: &Built, name: &str) -> (Vec<Value>, Duration, Duration) {
        let cmd = self.rollout(b, name);
        let mark = self.obs.mark();
        let t0 = Instant::now();
        self.send(&cmd);
        let rid = cmd.rollout_id.clone();
        let act = self.obs.wait_event(mark, LIMIT, "activated", |e| {
            kind(e) == "activated" && e["rollout_id"] == rid.as_str()
        });
        let ok = self.obs.wait_event(mark, LIMIT, "health_passed", |e| {
            kind(e) == "health_passed" && e["rollout_id"] == rid.as_str()
        });
        let events = self
            .obs
            .events_since(mark)
            .into_iter()
            .filter(|m| m.json["rollout_id"] == rid.as_str())
            .map(|m| m.json)
            .collect();
        (events, act.at - t0, ok.at - t0)
    }

    /// The agent serves `model` (answers and `/v1/rollout`).
    fn assert_serving(&self, model: &str) {
        let (st, m) = self.agent.predict();
        assert_eq!(st, 200);
        assert_eq!(m.as_deref(), Some(model));
        let r = self.agent.rollout();
        assert_eq!(r["serving"], model, "{r:#}");
        assert_eq!(r["active"], model, "{r:#}");
    }

    fn log(&self) -> String {
        device::tail(&self.agent.spec.log)
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| kind(e).to_string()).collect()
}

/// The events' kinds, with runs of `downloading` folded into one.
fn folded(events: &[Value]) -> Vec<String> {
    let mut k = kinds(events);
    k.dedup();
    k
}

fn median(v: &mut [f64]) -> f64 {
    device::percentile(v, 50.0)
}

// ---------------------------------------------------------------------------------------

/// a. The factory model serves; a signed rollout of B goes received -> downloading ->
/// verified -> activated -> health_passed; answers switch from A to B; the retained
/// status says active B, previous A.
#[test]
fn a_happy_path() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-a", &[]);
    w.assert_serving(&f.a.model_id);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(5));
    let (events, to_act, to_ok) = w.roll_to(&f.b, "b");
    std::thread::sleep(Duration::from_millis(200));
    let hits = load.stop();
    assert_eq!(
        folded(&events),
        ["received", "downloading", "verified", "activated", "health_passed"],
        "{events:#?}"
    );
    device::assert_verified(&hits, &verified());
    assert!(hits.iter().all(|h| h.status == 200), "a request failed");
    // A, then B, never back
    let models: Vec<&str> = hits.iter().filter_map(|h| h.model.as_deref()).collect();
    let first_b = models
        .iter()
        .position(|m| *m == f.b.model_id)
        .expect("B answered");
    assert!(models[..first_b].iter().all(|m| *m == f.a.model_id));
    assert!(models[first_b..].iter().all(|m| *m == f.b.model_id));
    assert!(first_b > 0, "A answered before the swap");
    let st = w.obs.wait_status(LIMIT, "idle on B", |s| {
        s["state"] == "idle" && s["active"] == f.b.model_id.as_str()
    });
    assert_eq!(st["previous"], f.a.model_id.as_str());
    assert_eq!(st["last"]["result"], "succeeded");
    w.assert_serving(&f.b.model_id);
    w.agent.assert_alive();
    println!(
        "a_happy_path: command->activated {:.0} ms, command->health_passed {:.0} ms ({} answers, {:.1} s)",
        to_act.as_secs_f64() * 1e3,
        to_ok.as_secs_f64() * 1e3,
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}
