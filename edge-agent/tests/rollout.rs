//! `edge-agent run` end to end: the real agent binary, a private Mosquitto, a real S3
//! server (s3s-fs) behind a fault-injecting proxy, signed bundles and signed commands.
//! Every test checks that each HTTP answer came from a verified model, that the agent did
//! not crash (or came back consistent after the SIGKILL the test sent), that a fault is
//! reported with its reason, and that the agent converges once the fault is gone.

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/device.rs"]
mod device;
#[path = "common/pki.rs"]
mod pki;
#[path = "common/port.rs"]
mod port;
#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeSet;
use std::path::Path;
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
        // under the target's scratch folder, since a static is never dropped: this run's
        // copy stays, those of runs over an hour old go
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(scratch).unwrap();
        for e in std::fs::read_dir(scratch).unwrap().flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
            if old
                && e.file_name()
                    .to_string_lossy()
                    .starts_with("rollout-bundles")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
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
        let flipped = device::derive(&b0, r, "flipped", k, at(t + 1000, "flipped"));
        {
            // after signing: the manifest still names the original bytes
            let onnx = flipped.dir.join("model.onnx");
            let mut bytes = std::fs::read(&onnx).unwrap();
            let i = bytes.len() / 2;
            bytes[i] ^= 0x01;
            std::fs::write(&onnx, bytes).unwrap();
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
    // field order is drop order: the agent goes first, then a file system mounted for it
    agent: Agent,
    mount: Option<device::Tmpfs>,
    obs: Observer,
    broker: Broker,
    proxy: s3::Proxy,
    _s3: s3::S3sFs,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    seq: u64,
    device: String,
    /// With [`World::over_tls`]: the agent reaches the broker by mutual TLS.
    pki: Option<pki::Pki>,
}

fn location(name: &str) -> String {
    format!("s3://{BUCKET}/models/{name}")
}

impl World {
    fn new(device: &str, extra: &[&str]) -> World {
        World::with_config(device, extra, "")
    }

    fn with_config(device: &str, extra: &[&str], more_config: &str) -> World {
        World::build(device, extra, "", more_config, |_| None)
    }

    /// A world whose config has `download` lines in its `[download]` section and
    /// `more_config` after the rest; `setup` prepares the (not yet existing) data folder
    /// before the agent starts, and may mount a file system there (unmounted after the
    /// agent is gone).
    fn build(
        device: &str,
        extra: &[&str],
        download: &str,
        more_config: &str,
        setup: impl FnOnce(&Path) -> Option<device::Tmpfs>,
    ) -> World {
        World::build_full(device, extra, download, more_config, setup, false)
    }

    /// A world whose agent connects to the broker's mutual-TLS listener (`mqtts://`, a CA
    /// file, its own client certificate); the test still watches through the plain one.
    fn over_tls(device: &str) -> World {
        World::build_full(device, &[], "", "", |_| None, true)
    }

    fn build_full(
        device: &str,
        extra: &[&str],
        download: &str,
        more_config: &str,
        setup: impl FnOnce(&Path) -> Option<device::Tmpfs>,
        tls: bool,
    ) -> World {
        let f = fleet();
        let dir = tempfile::tempdir().unwrap();
        let pki = tls.then(|| pki::pki(&dir.path().join("pki"), device));
        let mount = setup(&dir.path().join("data"));
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
        let broker = Broker::start_tls(pki.as_ref().map(|k| k.mosquitto_tls()).as_deref());
        let obs = Observer::start(&broker, device);
        let mut cfg = String::from("[store.options]\n");
        for (k, v) in s3::store_options(proxy.port) {
            cfg += &format!("{k} = {v:?}\n");
        }
        cfg += "[download]\nstall_timeout_ms = 1500\n";
        cfg += download;
        cfg += "[health]\np99_slack_ms = 2000.0\nmin_answers_for_sets = 10\n";
        cfg += more_config;
        if let Some(k) = &pki {
            cfg += &format!(
                "[mqtt]\nca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
                k.ca, k.client_cert, k.client_key
            );
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, cfg).unwrap();
        // defaults, unless `extra` gives the flag
        let mut args: Vec<String> = Vec::new();
        for (flag, value) in [
            ("--health-window-ms", "300"),
            ("--health-min-answers", "0"),
            ("--telemetry-interval-s", "1"),
            ("--epsilon", "0.05"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let spec = AgentSpec {
            device: device.into(),
            fleet: FLEET.into(),
            data_dir: dir.path().join("data"),
            broker: if pki.is_some() {
                broker.tls_url()
            } else {
                broker.url()
            },
            factory: f.a.dir.clone(),
            bundle_pub: f.keys.bundle_pub.clone(),
            command_pub: f.keys.command_pub.clone(),
            config,
            extra: args,
            log: dir.path().join("agent.log"),
            program: vec![],
        };
        let agent = Agent::start(&spec);
        let w = World {
            agent,
            mount,
            obs,
            broker,
            proxy,
            _s3: s3,
            _rt: rt,
            dir,
            seq: 0,
            device: device.into(),
            pki,
        };
        // connected: the retained status names the factory model
        w.obs
            .wait_status(LIMIT, "online with the factory model", |s| {
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
        [
            "received",
            "downloading",
            "verified",
            "activated",
            "health_passed"
        ],
        "{events:#?}"
    );
    device::assert_verified(&hits, &verified());
    assert!(hits.iter().all(|h| h.status == 200), "a request failed");
    // A, then B, never back
    device::assert_order(&hits, &[&f.a.model_id, &f.b.model_id]);
    let models: Vec<&str> = hits.iter().filter_map(|h| h.model.as_deref()).collect();
    assert_eq!(models.first(), Some(&f.a.model_id.as_str()));
    assert_eq!(models.last(), Some(&f.b.model_id.as_str()));
    let st = w.obs.wait_status(LIMIT, "idle on B", |s| {
        s["state"] == "idle" && s["active"] == f.b.model_id.as_str()
    });
    assert_eq!(st["previous"], f.a.model_id.as_str());
    assert_eq!(st["last"]["result"], "succeeded");
    w.assert_serving(&f.b.model_id);
    // telemetry (every second here) counts the answers of the serving model
    let t0 = Instant::now();
    let telemetry = loop {
        let seen = w.obs.all().into_iter().rev().find(|m| {
            m.topic == "devices/dev-a/telemetry" && m.json["requests"].as_u64() > Some(0)
        });
        if let Some(m) = seen {
            break m.json;
        }
        assert!(t0.elapsed() < LIMIT, "no telemetry");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(verified().contains(telemetry["model_id"].as_str().unwrap()));
    w.agent.assert_alive();
    println!(
        "a_happy_path: command->activated {:.0} ms, command->health_passed {:.0} ms ({} answers, {:.1} s)",
        to_act.as_secs_f64() * 1e3,
        to_ok.as_secs_f64() * 1e3,
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

impl World {
    /// Waits for an event of `kind` with `reason` after `mark`.
    fn wait_reason(&self, mark: usize, what: &str, reason: &str) -> Value {
        self.obs
            .wait_event(mark, LIMIT, &format!("{what}/{reason}"), |e| {
                kind(e) == what && e["reason"] == reason
            })
            .json
    }

    /// Idle, serving `model`, with this highest sequence: nothing changed.
    fn assert_idle_on(&self, model: &str, highest: u64) {
        let r = self.agent.rollout();
        assert_eq!(r["state"], "idle", "{r:#}");
        assert_eq!(r["highest_sequence"], highest, "{r:#}");
        assert!(r["pending"].is_null(), "{r:#}");
        self.assert_serving(model);
    }
}

/// b. A model that fails the health gate (its validation figures are far from what it
/// does) is rolled back automatically: failed{health_gate, empty_set_rate: ...}, then
/// rolled_back; A serves again; a following rollout of a good C converges.
#[test]
fn b_health_gate_failure_rolls_back() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new(
        "dev-b",
        &["--health-window-ms", "600", "--health-min-answers", "10"],
    );
    let load = Load::start(&w.agent.addr, 2, Duration::from_millis(2));
    let cmd = w.rollout(&f.sick, "sick");
    let mark = w.obs.mark();
    w.send(&cmd);
    let failed = w.wait_reason(mark, "failed", "health_gate");
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.starts_with("empty_set_rate"), "{failed}");
    let back = w
        .obs
        .wait_event(mark, LIMIT, "rolled_back", |e| kind(e) == "rolled_back");
    assert_eq!(
        back.json["to_model_id"],
        f.a.model_id.as_str(),
        "{}",
        back.json
    );
    assert_eq!(back.json["reason"], "health_gate");
    let events: Vec<Value> = w
        .obs
        .events_since(mark)
        .into_iter()
        .map(|m| m.json)
        .collect();
    assert_eq!(
        folded(&events),
        [
            "received",
            "downloading",
            "verified",
            "activated",
            "failed",
            "rolled_back"
        ],
        "{events:#?}"
    );
    let st = w.obs.wait_status(LIMIT, "rolled back to A", |s| {
        s["state"] == "idle" && s["last"]["result"] == "rolled_back"
    });
    assert_eq!(st["active"], f.a.model_id.as_str(), "{st:#}");
    assert_eq!(st["last"]["reason"], "health_gate", "{st:#}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("empty_set_rate"),
        "{st:#}"
    );
    let r = w.agent.rollout();
    assert_eq!(r["last"]["reason"], "health_gate", "{r:#}");
    w.assert_serving(&f.a.model_id);

    // again, with a SIGKILL in the sick model's health gate: the restarted agent serves
    // it (its state names it active), runs the gate again, and rolls back
    let cmd = w.rollout(&f.sick, "sick");
    let mark = w.obs.mark();
    w.send(&cmd);
    w.obs
        .wait_event(mark, LIMIT, "activated", |e| kind(e) == "activated");
    std::thread::sleep(Duration::from_millis(150));
    w.crash_and_restart();
    load.retarget(&w.agent.addr);
    let mark = w.obs.mark();
    let failed = w.wait_reason(mark, "failed", "health_gate");
    assert_eq!(failed["rollout_id"], cmd.rollout_id.as_str(), "{failed}");
    w.obs
        .wait_event(mark, LIMIT, "rolled_back", |e| kind(e) == "rolled_back");
    w.agent.wait_rollout(LIMIT, "rolled back", |r| {
        r["state"] == "idle" && r["last"]["result"] == "rolled_back"
    });
    w.assert_serving(&f.a.model_id);

    // the fault is gone: a good model converges (under the same load)
    let (events, _, _) = w.roll_to(&f.c, "c");
    assert_eq!(kinds(&events).last().unwrap(), "health_passed");
    w.assert_serving(&f.c.model_id);
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    // only the moment the agent was down failed
    assert!(hits.iter().all(|h| h.status == 200 || h.status == 0));
    let served: Vec<&str> = hits.iter().filter_map(|h| h.model.as_deref()).collect();
    assert!(
        served.contains(&f.sick.model_id.as_str()),
        "the sick model served in its gate"
    );
    // A, the sick model during its window, A again, then C
    device::assert_order(
        &hits,
        &[
            &f.a.model_id,
            &f.sick.model_id,
            &f.a.model_id,
            &f.sick.model_id,
            &f.a.model_id,
            &f.c.model_id,
        ],
    );
    w.agent.assert_alive();
    println!(
        "b_health_gate_failure_rolls_back: {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// c. Refusals, each reported with its reason and changing nothing: bad signature, a
/// command signed by the bundle key, another fleet, not targeted, expired, not yet valid,
/// unsigned; after a success the same command again is ignored silently, a lower
/// sequence is a replay, an older model a downgrade.
#[test]
fn c_refusals_change_nothing() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-c", &[]);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    let keys = &f.keys;
    let base = w.rollout(&f.b, "b");
    let refuse = |w: &World, payload: String, reason: &str| {
        let mark = w.obs.mark();
        w.broker.publish(&w.cmd_topic(), &payload, false);
        let e = w.wait_reason(mark, "refused", reason);
        assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
        w.assert_idle_on(&f.a.model_id, 0);
    };
    refuse(&w, device::signed(&base, &keys.rogue), "bad_signature");
    refuse(&w, device::signed(&base, &keys.bundle), "wrong_key_role");
    let mut other = base.clone();
    other.fleet = "elsewhere".into();
    refuse(&w, device::signed(&other, &keys.command), "other_fleet");
    let mut elsewhere = base.clone();
    elsewhere.target = Target::Devices {
        devices: vec!["dev-zz".into()],
    };
    refuse(
        &w,
        device::signed(&elsewhere, &keys.command),
        "not_targeted",
    );
    let mut expired = base.clone();
    expired.not_before_ms = device::now_ms() - 120_000;
    expired.not_after_ms = device::now_ms() - 60_000;
    refuse(&w, device::signed(&expired, &keys.command), "expired");
    let mut early = base.clone();
    early.not_before_ms = device::now_ms() + 60_000;
    early.not_after_ms = device::now_ms() + 120_000;
    refuse(&w, device::signed(&early, &keys.command), "not_yet_valid");
    refuse(&w, serde_json::to_string(&base).unwrap(), "unsigned");
    refuse(&w, "{\"nonsense\": true}".into(), "unsigned");
    refuse(&w, "not json".into(), "malformed");

    // the fault gone: the same command, properly signed, converges
    let mark = w.obs.mark();
    w.send(&base);
    w.obs.wait_event(mark, LIMIT, "health_passed", |e| {
        kind(e) == "health_passed" && e["rollout_id"] == base.rollout_id.as_str()
    });
    let highest = base.sequence;
    w.obs.wait_status(LIMIT, "idle on B", |s| {
        s["state"] == "idle" && s["active"] == f.b.model_id.as_str()
    });
    w.assert_idle_on(&f.b.model_id, highest);

    // the same command again: ignored without a word
    let mark = w.obs.mark();
    w.send(&base);
    std::thread::sleep(Duration::from_millis(700));
    let after = w.obs.events_since(mark);
    assert!(after.is_empty(), "a duplicate made events: {after:?}");
    w.assert_idle_on(&f.b.model_id, highest);
    // a lower sequence: replay
    let mut lower = w.rollout(&f.c, "c");
    lower.sequence = highest - 1;
    lower.rollout_id = "lower".into();
    let mark = w.obs.mark();
    w.send(&lower);
    let e = w.wait_reason(mark, "refused", "replay");
    assert_eq!(e["rollout_id"], "lower");
    w.assert_idle_on(&f.b.model_id, highest);
    // an older model: downgrade
    let older = w.rollout(&f.old, "old");
    let mark = w.obs.mark();
    w.send(&older);
    let e = w.wait_reason(mark, "refused", "downgrade");
    assert_eq!(e["rollout_id"], older.rollout_id.as_str());
    w.assert_idle_on(&f.b.model_id, highest);

    // and a newer model still goes through
    let (events, _, _) = w.roll_to(&f.c, "c");
    assert_eq!(kinds(&events).last().unwrap(), "health_passed");
    w.assert_serving(&f.c.model_id);
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    assert!(hits.iter().all(|h| h.status == 200), "a request failed");
    w.agent.assert_alive();
    println!(
        "c_refusals_change_nothing: {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// d. Bundle faults, each failed with its reason while A keeps serving: the command's
/// manifest sha256 differs, a flipped byte in a file, a manifest signed by another key,
/// golden outputs that the model does not reproduce (self-test). Then B converges.
#[test]
fn d_bundle_faults_keep_the_old_model() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-d", &[]);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    let mut mismatch = w.rollout(&f.b, "b");
    if let Action::Rollout {
        manifest_sha256, ..
    } = &mut mismatch.action
    {
        *manifest_sha256 = shared::bundle::sha256_hex(b"another manifest");
    }
    let cases = [
        (mismatch, "manifest_sha256_mismatch"),
        (w.rollout(&f.flipped, "flipped"), "file_sha256_mismatch"),
        (w.rollout(&f.rogue, "rogue"), "bad_manifest_signature"),
        (w.rollout(&f.bad_golden, "bad_golden"), "self_test_failed"),
    ];
    for (cmd, reason) in cases {
        let mark = w.obs.mark();
        w.send(&cmd);
        let e = w.wait_reason(mark, "failed", reason);
        assert_eq!(e["rollout_id"], cmd.rollout_id.as_str(), "{e}");
        let st = w.obs.wait_status(LIMIT, "idle after the failure", |s| {
            s["state"] == "idle" && s["last"]["rollout_id"] == cmd.rollout_id.as_str()
        });
        assert_eq!(st["last"]["result"], "failed", "{st:#}");
        assert_eq!(st["last"]["reason"], reason, "{st:#}");
        assert_eq!(st["active"], f.a.model_id.as_str(), "{st:#}");
        let events: Vec<Value> = w
            .obs
            .events_since(mark)
            .into_iter()
            .map(|m| m.json)
            .collect();
        assert!(
            !kinds(&events).iter().any(|k| k == "activated"),
            "{events:#?}"
        );
        w.assert_idle_on(&f.a.model_id, cmd.sequence);
        // nothing of the refused bundle stays on disk: the agent prunes right after it
        // writes (and publishes) the failure, so allow it that moment
        let list = || -> Vec<String> {
            std::fs::read_dir(w.dir.path().join("data/models"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let deadline = Instant::now() + LIMIT;
        let mut models = list();
        while models != [f.a.model_id.as_str()] && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            models = list();
        }
        assert_eq!(models, [f.a.model_id.as_str()], "{reason}");
    }
    let (events, _, _) = w.roll_to(&f.b, "b");
    assert_eq!(kinds(&events).last().unwrap(), "health_passed");
    w.assert_serving(&f.b.model_id);
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    assert!(hits.iter().all(|h| h.status == 200), "a request failed");
    w.agent.assert_alive();
    println!(
        "d_bundle_faults_keep_the_old_model: {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// The `resumed=N` of the agent log's last "bundle downloaded" line.
fn resumed_bytes(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("bundle downloaded"))?;
    let line = strip_ansi(line);
    let v = line.split("resumed=").nth(1)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// `s` without terminal colour sequences (ESC [ ... m).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_seq = false;
    for c in s.chars() {
        match (in_seq, c) {
            (false, '\x1b') => in_seq = true,
            (true, 'm') => in_seq = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// The rollout state file, as the agent wrote it last.
fn state_file(w: &World) -> Value {
    let p = w.dir.path().join("data/rollout.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

impl World {
    /// SIGKILL and a restart on the same data folder; the restarted agent serves a verified
    /// model at once, the one its state names as active.
    fn crash_and_restart(&mut self) {
        self.agent.kill9();
        let st = state_file(self);
        self.agent = Agent::start(&self.agent.spec.clone());
        let (code, model) = self.agent.predict();
        assert_eq!(code, 200);
        let model = model.unwrap();
        assert!(verified().contains(&model), "{model} is not verified");
        let r = self.agent.rollout();
        if st["phase"]["phase"] != "rolling_back" {
            assert_eq!(
                st["active"]["model_id"].as_str(),
                Some(model.as_str()),
                "after a restart the agent serves the active model of its state {st:#}"
            );
        }
        assert_eq!(r["serving"], model.as_str(), "{r:#}");
    }

    /// Waits until the agent is idle with `rollout_id` succeeded and `model` active.
    fn wait_converged(&self, rollout_id: &str, model: &str) -> Value {
        self.agent.wait_rollout(LIMIT, "converged", |r| {
            r["state"] == "idle"
                && r["last"]["rollout_id"] == rollout_id
                && r["last"]["result"] == "succeeded"
                && r["active"] == model
                && r["serving"] == model
        })
    }
}

/// e. SIGKILL during a (slowed) download, then a restart on the same data folder: the
/// download resumes and B activates. SIGKILL right after `activated` and during the
/// health gate: the restarted agent serves the new model and its gate runs again.
#[test]
fn e_sigkill_during_download_swap_and_gate() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-e", &["--health-window-ms", "1500"]);
    let rss_serving = (w.agent.proc_kb("VmRSS"), w.agent.proc_kb("VmHWM"));
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));

    // 1. during the download: 100 kB per connection, then a stall
    w.proxy.set(s3::Mode::Stall {
        after: 100_000,
        connections: 1_000_000,
    });
    let cmd = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send(&cmd);
    w.obs.wait_event(mark, LIMIT, "download progress", |e| {
        kind(e) == "downloading" && e["bytes"].as_u64().is_some_and(|b| b > 150_000)
    });
    let rss_downloading = (w.agent.proc_kb("VmRSS"), w.agent.proc_kb("VmHWM"));
    w.agent.kill9();
    // the broker tells the world: the last will replaces the retained status
    w.obs
        .wait_status(LIMIT, "offline (last will)", |s| s["state"] == "offline");
    w.crash_and_restart();
    load.retarget(&w.agent.addr);
    assert_eq!(state_file(&w)["phase"]["phase"], "downloading");
    w.proxy.set(s3::Mode::Pass);
    w.wait_converged(&cmd.rollout_id, &f.b.model_id);
    let resumed = resumed_bytes(&w.log());
    assert!(
        resumed.is_some_and(|r| r > 0),
        "the download did not resume: {resumed:?}\n{}",
        w.log()
    );
    w.assert_serving(&f.b.model_id);

    // 2. right after `activated`
    let cmd = w.rollout(&f.c, "c");
    let mark = w.obs.mark();
    w.send(&cmd);
    w.obs
        .wait_event(mark, LIMIT, "activated", |e| kind(e) == "activated");
    w.crash_and_restart();
    load.retarget(&w.agent.addr);
    let r = w.agent.rollout();
    assert_eq!(r["active"], f.c.model_id.as_str(), "{r:#}");
    assert_eq!(r["previous"], f.b.model_id.as_str(), "{r:#}");
    w.wait_converged(&cmd.rollout_id, &f.c.model_id);

    // 3. in the middle of the health gate
    let cmd = w.rollout(&f.x, "x");
    let mark = w.obs.mark();
    w.send(&cmd);
    w.obs
        .wait_event(mark, LIMIT, "activated", |e| kind(e) == "activated");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(w.agent.rollout()["state"], "health_gate");
    w.crash_and_restart();
    load.retarget(&w.agent.addr);
    assert_eq!(w.agent.rollout()["state"], "health_gate");
    let mark = w.obs.mark();
    w.wait_converged(&cmd.rollout_id, &f.x.model_id);
    w.obs
        .wait_event(mark, LIMIT, "health_passed after the restart", |e| {
            kind(e) == "health_passed" && e["rollout_id"] == cmd.rollout_id.as_str()
        });
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    // only the moments the agent was down failed
    let ok = hits.iter().filter(|h| h.status == 200).count();
    assert!(
        hits.iter().all(|h| h.status == 200 || h.status == 0),
        "an answer other than 200 or a refused connection"
    );
    w.agent.assert_alive();
    println!(
        "e_sigkill_during_download_swap_and_gate: {ok}/{} answers, download resumed from {} bytes, RSS serving {:?} kB (VmRSS, VmHWM), downloading {:?} kB, {:.1} s",
        hits.len(),
        resumed.unwrap_or(0),
        rss_serving,
        rss_downloading,
        t.elapsed().as_secs_f64()
    );
}

/// f. The broker is killed and a fresh one starts on the same port in the middle of a
/// download: the agent reconnects, subscribes again, the rollout completes, and a
/// command sent after the restart is obeyed.
#[test]
fn f_broker_restart_mid_download() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::with_config(
        "dev-f",
        &[],
        "[mqtt]\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\n",
    );
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    w.proxy.set(s3::Mode::Stall {
        after: 100_000,
        connections: 1_000_000,
    });
    let cmd = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send(&cmd);
    w.obs.wait_event(mark, LIMIT, "download progress", |e| {
        kind(e) == "downloading" && e["bytes"].as_u64().is_some_and(|b| b > 0)
    });
    w.broker.restart();
    w.obs = Observer::start(&w.broker, "dev-f");
    // the agent is back: its status is published again on the fresh broker
    w.obs.wait_status(LIMIT, "online again", |s| {
        s["online"] == true && s["broker_up"] == true
    });
    w.proxy.set(s3::Mode::Pass);
    w.wait_converged(&cmd.rollout_id, &f.b.model_id);
    w.obs.wait_status(LIMIT, "idle on B", |s| {
        s["state"] == "idle" && s["active"] == f.b.model_id.as_str()
    });
    // subscribed again: a new command arrives, this time the fleet's retained rollout
    let cmd = w.rollout(&f.c, "c");
    let mark = w.obs.mark();
    w.broker.publish(
        &format!("fleet/{FLEET}/rollout"),
        &device::signed(&cmd, &f.keys.command),
        true,
    );
    w.obs.wait_event(mark, LIMIT, "health_passed", |e| {
        kind(e) == "health_passed" && e["rollout_id"] == cmd.rollout_id.as_str()
    });
    w.wait_converged(&cmd.rollout_id, &f.c.model_id);
    // a restart gets the retained command again: a duplicate, ignored without a word
    w.crash_and_restart();
    load.retarget(&w.agent.addr);
    let mark = w.obs.mark();
    w.obs
        .wait_status(LIMIT, "online again", |s| s["online"] == true);
    std::thread::sleep(Duration::from_millis(700));
    let after = w.obs.events_since(mark);
    assert!(
        after.is_empty(),
        "the retained command made events: {after:?}"
    );
    w.assert_serving(&f.c.model_id);
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    assert!(hits.iter().all(|h| h.status == 200 || h.status == 0));
    w.agent.assert_alive();
    println!(
        "f_broker_restart_mid_download: {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// e2. The two crash windows a random SIGKILL rarely hits, made exactly: the state on
/// disk is the one a SIGKILL leaves there. (1) The bundle was renamed into models/ but
/// the agent died before it wrote `loading` (state `verifying`, no staging folder);
/// (2) the new model was swapped in but the agent died before it wrote `health_gate`
/// (state `loading`, active still A). Both restart serving A and converge on B.
#[test]
fn e2_crash_windows_between_io_and_state_write() {
    use edge_agent::rollout::machine::{Job, ModelRef, Phase};
    use edge_agent::rollout::persist;
    let f = fleet();
    let t = Instant::now();
    for (i, window) in ["verifying", "loading"].into_iter().enumerate() {
        let mut w = World::new(&format!("dev-e2-{i}"), &[]);
        let data = w.agent.spec.data_dir.clone();
        w.agent.kill9();
        let cmd = w.rollout(&f.b, "b");
        let job = Job {
            rollout_id: cmd.rollout_id.clone(),
            sequence: cmd.sequence,
            model_id: f.b.model_id.clone(),
            bundle: location("b"),
            manifest_sha256: f.b.manifest_sha256.clone(),
            bundle_bytes: f.b.bytes,
            model_created_ms: f.b.created_ms,
            accepted_ms: device::now_ms(),
            deadline_ms: device::now_ms() + 600_000,
            attempts: 0,
            retry_at_ms: None,
        };
        // what install leaves: the verified bundle under models/<id>, staging gone
        common::copy_dir(&f.b.dir, &data.join("models").join(&f.b.model_id));
        let mut st = persist::load(&data).unwrap().unwrap();
        st.highest_sequence = cmd.sequence;
        st.model_floor_ms = f.b.created_ms;
        st.phase = match window {
            "verifying" => Phase::Verifying { job },
            _ => Phase::Loading {
                job,
                model: ModelRef {
                    model_id: f.b.model_id.clone(),
                    manifest_sha256: f.b.manifest_sha256.clone(),
                    created_ms: f.b.created_ms,
                },
            },
        };
        persist::save(&data, &st).unwrap();
        let mark = w.obs.mark();
        w.agent = Agent::start(&w.agent.spec.clone());
        assert_eq!(w.agent.predict().1.as_deref(), Some(f.a.model_id.as_str()));
        w.wait_converged(&cmd.rollout_id, &f.b.model_id);
        let events: Vec<Value> = w
            .obs
            .events_since(mark)
            .into_iter()
            .map(|m| m.json)
            .collect();
        assert_eq!(
            kinds(&events).last().map(String::as_str),
            Some("health_passed"),
            "{window}: {events:#?}"
        );
        w.assert_serving(&f.b.model_id);
        w.agent.assert_alive();
    }
    println!(
        "e2_crash_windows_between_io_and_state_write: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// g. A loop of rollouts (EDGECP_ROLLOUT_LOOPS, default 10; the figure is 50),
/// each SIGKILLed at a random moment and restarted: the agent serves a verified model
/// every time, and converges on each target (the operator sends the same signed command
/// again after a restart: a duplicate is ignored, a lost one is taken).
#[test]
fn g_random_sigkill_loop() {
    use rand::{Rng, SeedableRng};
    let f = fleet();
    let t = Instant::now();
    let n = env_usize("EDGECP_ROLLOUT_LOOPS", 10);
    let seed = std::env::var("EDGECP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| device::now_ms() as u64);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut w = World::new("dev-g", &[]);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    let mut phases: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..n {
        let (target, name) = if i % 2 == 0 { (&f.x, "x") } else { (&f.y, "y") };
        let cmd = w.rollout(target, name);
        w.send(&cmd);
        let delay = rng.random_range(0..650);
        std::thread::sleep(Duration::from_millis(delay));
        w.agent.kill9();
        let phase = state_file(&w)["phase"]["phase"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let done = state_file(&w)["last"]["rollout_id"] == cmd.rollout_id.as_str();
        *phases
            .entry(if done { "done".into() } else { phase })
            .or_default() += 1;
        w.crash_and_restart();
        load.retarget(&w.agent.addr);
        w.send(&cmd);
        w.wait_converged(&cmd.rollout_id, &target.model_id);
    }
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    assert!(hits.iter().all(|h| h.status == 200 || h.status == 0));
    w.agent.assert_alive();
    println!(
        "g_random_sigkill_loop: {n} rollouts, seed {seed}, killed in {phases:?}, {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// h. Swaps under steady HTTP load (EDGECP_SWAPS, default 20; the figure is
/// 100): no request fails; p99 latency in rollout windows (verified -> health_passed)
/// against steady state.
#[test]
fn h_swaps_under_load() {
    let f = fleet();
    let t = Instant::now();
    let n = env_usize("EDGECP_SWAPS", 20);
    let mut w = World::new("dev-h", &["--health-window-ms", "0"]);
    let load = Load::start(&w.agent.addr, 2, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(500));
    let (mut windows, mut swaps) = (Vec::new(), Vec::new());
    let (mut to_act, mut to_ok) = (Vec::new(), Vec::new());
    let mut rss = (0u64, 0u64);
    for i in 0..n {
        let (target, name) = if i % 2 == 0 { (&f.x, "x") } else { (&f.y, "y") };
        let mark = w.obs.mark();
        let (events, act, ok) = w.roll_to(target, name);
        assert_eq!(kinds(&events).last().unwrap(), "health_passed");
        let at = |k: &str| {
            w.obs
                .events_since(mark)
                .into_iter()
                .find(|m| kind(&m.json) == k)
                .map(|m| m.at)
                .unwrap()
        };
        windows.push((at("received"), at("health_passed")));
        let a = at("activated");
        swaps.push((
            a - Duration::from_millis(100),
            a + Duration::from_millis(100),
        ));
        to_act.push(act.as_secs_f64() * 1e3);
        to_ok.push(ok.as_secs_f64() * 1e3);
        rss.0 = rss.0.max(w.agent.proc_kb("VmRSS").unwrap_or(0));
        rss.1 = rss.1.max(w.agent.proc_kb("VmHWM").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(300));
    }
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    let failed = hits.iter().filter(|h| h.status != 200).count();
    assert_eq!(failed, 0, "requests failed during swaps");
    let in_window = |h: &Hit| {
        windows
            .iter()
            .any(|(a, b)| h.at + Duration::from_secs_f64(h.seconds) >= *a && h.at <= *b)
    };
    let near_swap = |h: &Hit| {
        swaps
            .iter()
            .any(|(a, b)| h.at + Duration::from_secs_f64(h.seconds) >= *a && h.at <= *b)
    };
    let (mut swap, mut steady): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut at_swap: Vec<f64> = Vec::new();
    for h in &hits {
        if near_swap(h) {
            at_swap.push(h.seconds * 1e3);
        }
        if in_window(h) {
            swap.push(h.seconds * 1e3);
        } else {
            steady.push(h.seconds * 1e3);
        }
    }
    let n_at = at_swap.len();
    let p99_at_swap = device::percentile(&mut at_swap, 99.0);
    let (ns, nt) = (swap.len(), steady.len());
    let p99_swap = device::percentile(&mut swap, 99.0);
    let p99_steady = device::percentile(&mut steady, 99.0);
    let p50_steady = device::percentile(&mut steady, 50.0);
    w.agent.assert_alive();
    println!(
        "h_swaps_under_load: {n} swaps, {} requests, 0 failed; p99 within 100 ms of a swap {p99_at_swap:.2} ms ({n_at} requests), in rollout windows (received -> health_passed) {p99_swap:.2} ms ({ns} requests) vs steady {p99_steady:.2} ms ({nt} requests, p50 {p50_steady:.2} ms): ratio {:.2}; command->activated p50 {:.0} ms, command->health_passed p50 {:.0} ms; agent VmRSS max {} kB, VmHWM {} kB; {:.1} s",
        hits.len(),
        p99_swap / p99_steady,
        median(&mut to_act),
        median(&mut to_ok),
        rss.0,
        rss.1,
        t.elapsed().as_secs_f64()
    );
}

impl World {
    /// A signed `rollback` command with the next sequence.
    fn rollback_cmd(&mut self) -> Command {
        let seq = self.next_seq();
        let mut c = device::rollout(FLEET, seq, &fleet().a, &location("a"));
        c.rollout_id = format!("rb{seq}");
        c.action = Action::Rollback;
        c
    }
}

/// i. A newer command during a download supersedes it; one during the health gate waits
/// (queued) and runs next; a signed rollback goes back to the previous model, also in
/// the middle of a health gate; with no previous model it is refused.
#[test]
fn i_supersede_queue_and_rollback_commands() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-i", &["--health-window-ms", "1500"]);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));

    // superseded during its download
    w.proxy.set(s3::Mode::Stall {
        after: 100_000,
        connections: 1_000_000,
    });
    let first = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send(&first);
    w.obs.wait_event(mark, LIMIT, "download progress", |e| {
        kind(e) == "downloading" && e["bytes"].as_u64().is_some_and(|b| b > 0)
    });
    w.proxy.set(s3::Mode::Pass);
    let second = w.rollout(&f.c, "c");
    w.send(&second);
    let e = w.wait_reason(mark, "canceled", "superseded");
    assert_eq!(e["rollout_id"], first.rollout_id.as_str());
    w.obs.wait_event(mark, LIMIT, "activated", |e| {
        kind(e) == "activated" && e["rollout_id"] == second.rollout_id.as_str()
    });
    // queued behind the health gate
    let third = w.rollout(&f.x, "x");
    w.send(&third);
    let q = w
        .obs
        .wait_event(mark, LIMIT, "queued", |e| kind(e) == "queued")
        .json;
    assert_eq!(q["rollout_id"], third.rollout_id.as_str(), "{q}");
    assert_eq!(q["behind"], second.rollout_id.as_str(), "{q}");
    assert_eq!(w.agent.rollout()["pending"], third.rollout_id.as_str());
    w.wait_converged(&third.rollout_id, &f.x.model_id);
    let events: Vec<Value> = w
        .obs
        .events_since(mark)
        .into_iter()
        .map(|m| m.json)
        .collect();
    let order: Vec<(String, String)> = events
        .iter()
        .filter(|e| ["health_passed", "received"].contains(&kind(e)))
        .map(|e| {
            (
                kind(e).to_string(),
                e["rollout_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pos = |k: &str, id: &str| {
        order
            .iter()
            .position(|(a, b)| a == k && b == id)
            .unwrap_or_else(|| panic!("no {k} of {id}: {events:#?}"))
    };
    assert!(pos("health_passed", &second.rollout_id) < pos("received", &third.rollout_id));
    assert!(
        !events
            .iter()
            .any(|e| kind(e) == "activated" && e["rollout_id"] == first.rollout_id.as_str()),
        "the superseded rollout activated"
    );
    assert_eq!(w.agent.rollout()["previous"], f.c.model_id.as_str());

    // a rollback while idle: back to C; a second one has nowhere to go
    let rb = w.rollback_cmd();
    let mark = w.obs.mark();
    w.send(&rb);
    let e = w
        .obs
        .wait_event(mark, LIMIT, "rolled_back", |e| kind(e) == "rolled_back")
        .json;
    assert_eq!(e["to_model_id"], f.c.model_id.as_str(), "{e}");
    assert_eq!(e["reason"], "commanded", "{e}");
    w.agent.wait_rollout(LIMIT, "idle on C", |r| {
        r["state"] == "idle" && r["active"] == f.c.model_id.as_str() && r["previous"].is_null()
    });
    w.assert_serving(&f.c.model_id);
    let rb = w.rollback_cmd();
    let mark = w.obs.mark();
    w.send(&rb);
    w.wait_reason(mark, "refused", "no_previous");
    w.assert_serving(&f.c.model_id);

    // a rollback in the middle of a health gate acts at once
    let fourth = w.rollout(&f.y, "y");
    let mark = w.obs.mark();
    w.send(&fourth);
    w.obs
        .wait_event(mark, LIMIT, "activated", |e| kind(e) == "activated");
    let rb = w.rollback_cmd();
    w.send(&rb);
    let e = w.wait_reason(mark, "canceled", "commanded");
    assert_eq!(e["rollout_id"], fourth.rollout_id.as_str());
    let e = w
        .obs
        .wait_event(mark, LIMIT, "rolled_back", |e| kind(e) == "rolled_back")
        .json;
    assert_eq!(e["to_model_id"], f.c.model_id.as_str(), "{e}");
    w.agent.wait_rollout(LIMIT, "idle on C", |r| {
        r["state"] == "idle" && r["active"] == f.c.model_id.as_str()
    });
    w.assert_serving(&f.c.model_id);
    let hits = load.stop();
    device::assert_verified(&hits, &verified());
    assert!(hits.iter().all(|h| h.status == 200), "a request failed");
    w.agent.assert_alive();

    // SIGTERM: a clean stop that says so on the retained status
    let pid = w.agent.pid() as i32;
    // SAFETY: kill(2) on our own child's pid
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = w.agent.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    w.obs
        .wait_status(LIMIT, "offline after SIGTERM", |s| s["state"] == "offline");
    println!(
        "i_supersede_queue_and_rollback_commands: {} answers, SIGTERM exit in {:.0} ms, {:.1} s",
        hits.len(),
        t0.elapsed().as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64()
    );
}

/// The `trainer` binary beside this test's (`cargo build --workspace --bins` first, as
/// scripts/test.sh does).
fn trainer_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("trainer");
    assert!(
        bin.is_file(),
        "no trainer binary at {}: build it first (cargo build -p trainer; scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// j. The cloud side as a user runs it: `trainer rollout` reads the bundle's manifest from
/// the store, signs with a command key, publishes, follows the device's events and exits
/// 0 with the device's outcome; `--rollback` goes back; a command signed with the bundle
/// key is refused by the device and the CLI exits non-zero naming the reason.
impl World {
    /// The fleet's command key and bundle key as private PEM files, for `trainer rollout`.
    fn cli_keys(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        let f = fleet();
        let keydir = self.dir.path().join("cli-keys");
        std::fs::create_dir_all(&keydir).unwrap();
        let command_key = keydir.join("command.key");
        let bundle_key = keydir.join("bundle.key");
        let pem = shared::bundle::keys::private_pem;
        std::fs::write(&command_key, pem(&f.keys.command)).unwrap();
        std::fs::write(&bundle_key, pem(&f.keys.bundle)).unwrap();
        (command_key, bundle_key)
    }

    /// `trainer rollout --fleet lab --device <this device> --json` with `broker` (the
    /// `--broker` flag and its TLS flags), `args` and the private key `key`, against this
    /// world's store: (exit status 0, the JSON lines of stdout, stderr).
    fn trainer_rollout(
        &self,
        broker: &[&str],
        args: &[&str],
        key: &Path,
    ) -> (bool, Vec<Value>, String) {
        let out = std::process::Command::new(trainer_bin())
            .args([
                "rollout",
                "--fleet",
                FLEET,
                "--device",
                &self.device,
                "--json",
            ])
            .args(["--timeout", "30"])
            .args(broker)
            .arg("--key")
            .arg(key)
            .args(args)
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.proxy.port),
            )
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", s3::KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3::SECRET)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (
            out.status.success(),
            lines,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

#[test]
fn j_trainer_rollout_cli() {
    let f = fleet();
    let mut w = World::new("dev-j", &[]);
    let (command_key, bundle_key) = w.cli_keys();
    let url = w.broker.url();
    let plain = ["--broker", url.as_str()];
    let cli = |args: &[&str], key: &Path| w.trainer_rollout(&plain, args, key);
    let b = location("b");
    let t0 = Instant::now();
    let (ok, lines, err) = cli(&["--model", &f.b.model_id, "--bundle", &b], &command_key);
    assert!(ok, "trainer rollout failed: {lines:?}\n{err}");
    assert_eq!(lines[0]["device_id"], "dev-j", "{lines:?}");
    assert_eq!(lines[0]["result"], "succeeded", "{lines:?}");
    println!(
        "j_trainer_rollout_cli: trainer rollout to health_passed in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    w.assert_serving(&f.b.model_id);

    let (ok, lines, err) = cli(&["--rollback"], &command_key);
    assert!(ok, "trainer rollout --rollback failed: {lines:?}\n{err}");
    assert_eq!(lines[0]["result"], "succeeded", "{lines:?}");
    w.assert_serving(&f.a.model_id);

    // the bundle key is not a command key: the device says so, the CLI fails with it
    let c = location("c");
    let (ok, lines, _) = cli(&["--model", &f.c.model_id, "--bundle", &c], &bundle_key);
    assert!(!ok);
    assert_eq!(lines[0]["result"], "refused", "{lines:?}");
    assert_eq!(lines[0]["reason"], "wrong_key_role", "{lines:?}");
    w.assert_serving(&f.a.model_id);
    // a model the store does not hold: the CLI says which object, nothing is sent
    let (ok, _, err) = cli(
        &["--model", "nope", "--bundle", &location("nope")],
        &command_key,
    );
    assert!(!ok);
    assert!(err.contains("manifest.json"), "{err}");
    w.agent.assert_alive();
}

/// l. The same rollout over mutual TLS, as a fleet should run it: the agent reaches the
/// broker at `mqtts://` with the fleet's CA and its own client certificate (its common name
/// is its MQTT identity), `trainer rollout` with the operator's. The rollout succeeds and
/// the device comes back over TLS after a broker restart; a `trainer rollout` that does not
/// trust the broker's CA, presents no certificate or asks for mqtts:// without a CA file
/// sends nothing and says why.
#[test]
fn l_mutual_tls_end_to_end() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::over_tls("dev-l");
    let k = w.pki.as_ref().unwrap();
    let (command_key, _) = w.cli_keys();
    let url = w.broker.tls_url();
    let (ca, cert, key) = (
        k.ca.display().to_string(),
        k.operator_cert.display().to_string(),
        k.operator_key.display().to_string(),
    );
    let rogue_ca = k.rogue_ca.display().to_string();
    assert!(w.agent.spec.broker.starts_with("mqtts://"));
    println!(
        "l_mutual_tls_end_to_end: agent online over mTLS {:.0} ms after start",
        w.agent.started.elapsed().as_secs_f64() * 1e3
    );

    let b = location("b");
    let rollout_b = ["--model", f.b.model_id.as_str(), "--bundle", b.as_str()];
    let t0 = Instant::now();
    let mtls = [
        "--broker",
        &url,
        "--broker-ca",
        &ca,
        "--broker-cert",
        &cert,
        "--broker-key",
        &key,
    ];
    let (ok, lines, err) = w.trainer_rollout(&mtls, &rollout_b, &command_key);
    assert!(ok, "trainer rollout over mTLS failed: {lines:?}\n{err}");
    assert_eq!(lines[0]["result"], "succeeded", "{lines:?}");
    println!(
        "l_mutual_tls_end_to_end: trainer rollout over mTLS to health_passed in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    w.assert_serving(&f.b.model_id);

    // the broker comes back empty (no retained status, no session): the agent reconnects
    // over TLS, subscribes again and says it is online with b
    w.broker.restart();
    w.obs = Observer::start(&w.broker, "dev-l");
    w.obs
        .wait_status(LIMIT, "online with b after the restart", |s| {
            s["online"] == true && s["active"] == f.b.model_id.as_str()
        });

    // refused before anything is published: each fails, the device still serves b
    let c = location("c");
    let rollout_c = ["--model", f.c.model_id.as_str(), "--bundle", c.as_str()];
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "a broker certificate from a CA it does not trust",
            vec![
                "--broker",
                &url,
                "--broker-ca",
                &rogue_ca,
                "--broker-cert",
                &cert,
                "--broker-key",
                &key,
            ],
            "UnknownIssuer",
        ),
        (
            "no client certificate",
            vec!["--broker", &url, "--broker-ca", &ca],
            "CertificateRequired",
        ),
        (
            "mqtts:// without a CA file",
            vec!["--broker", &url],
            "--broker-ca",
        ),
        (
            "TLS files with a plain URL",
            vec!["--broker", "mqtt://127.0.0.1:1", "--broker-ca", &ca],
            "mqtts://",
        ),
    ];
    for (what, broker, needle) in cases {
        let mark = w.obs.mark();
        let t1 = Instant::now();
        let (ok, lines, err) = w.trainer_rollout(&broker, &rollout_c, &command_key);
        assert!(!ok, "{what}: trainer rollout succeeded: {lines:?}");
        assert!(err.contains(needle), "{what}: {err}");
        let last = err.lines().last().unwrap_or("");
        println!(
            "l_mutual_tls_end_to_end: {what}: exit 1 in {:.0} ms: {last}",
            t1.elapsed().as_secs_f64() * 1e3
        );
        assert!(
            w.obs.events_since(mark).is_empty(),
            "{what}: the device saw a command"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    w.assert_serving(&f.b.model_id);
    w.agent.assert_alive();
    println!(
        "l_mutual_tls_end_to_end: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// k. Store and disk faults through the real agent process (tests/download.rs has them
// against the download library alone). Each runs under a steady HTTP load: every answer
// comes from a verified model and none fails; the agent does not crash; the fault is
// reported with its reason; the agent converges once the fault is gone.

/// The numeric `field=N` of the agent log's last line that contains `marker`.
fn log_number(log: &str, marker: &str, field: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(marker))?;
    let line = strip_ansi(line);
    let v = line.split(&format!("{field}=")).nth(1)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl World {
    /// The events of `rollout_id` since `mark`.
    fn events_of(&self, mark: usize, rollout_id: &str) -> Vec<Value> {
        self.obs
            .events_since(mark)
            .into_iter()
            .map(|m| m.json)
            .filter(|e| e["rollout_id"] == rollout_id)
            .collect()
    }

    /// Sends `cmd` and waits until it converged on `model` (event and `/v1/rollout`).
    fn send_and_converge(&self, cmd: &Command, model: &str) {
        let mark = self.obs.mark();
        self.send(cmd);
        self.obs.wait_event(mark, LIMIT, "health_passed", |e| {
            kind(e) == "health_passed" && e["rollout_id"] == cmd.rollout_id.as_str()
        });
        self.wait_converged(&cmd.rollout_id, model);
        self.assert_serving(model);
    }

    /// The names in `<data>/models`, sorted.
    fn models_dir(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.agent.spec.data_dir.join("models"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Every file under `<data>/models` (relative paths).
    fn model_files(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let root = self.agent.spec.data_dir.join("models");
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }
}

/// The load's answers: all verified, none failed.
fn assert_clean(hits: &[Hit], test: &str) {
    device::assert_verified(hits, &verified());
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{test}: {} of {} requests failed: {:?}",
        failed.len(),
        hits.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(!hits.is_empty(), "{test}: no answers");
}

/// k1. The store answers 500 to the next requests of a rollout: the download retries each
/// (within `[download] retries`, 2 here), then gives the attempt up with `retrying`
/// {reason: store} naming the 500; the next attempt gets through and B converges.
#[test]
fn k_store_500s() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::build("dev-k1", &[], "retries = 2\n", "", |_| None);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    w.proxy.set(s3::Mode::Error500 { requests: 4 });
    let cmd = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send(&cmd);
    let retry = w.wait_reason(mark, "retrying", "store");
    assert_eq!(retry["rollout_id"], cmd.rollout_id.as_str(), "{retry}");
    assert_eq!(retry["attempt"], 1, "{retry}");
    let detail = retry["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("500") && detail.contains("manifest.json"),
        "the retry names the store failure: {retry}"
    );
    // the retry is in the state: GET /v1/rollout shows it while it waits (or it is done)
    w.send_and_converge(&cmd, &f.b.model_id);
    assert_eq!(w.proxy.stats(|s| s.errors_500), 4);
    let events = w.events_of(mark, &cmd.rollout_id);
    let k = folded(&events);
    assert_eq!(k.first().map(String::as_str), Some("received"), "{k:?}");
    assert!(k.contains(&"retrying".to_string()), "{k:?}");
    assert!(!k.contains(&"failed".to_string()), "{k:?}");
    assert_eq!(k.last().map(String::as_str), Some("health_passed"), "{k:?}");
    let hits = load.stop();
    assert_clean(&hits, "k_store_500s");
    device::assert_order(&hits, &[&f.a.model_id, &f.b.model_id]);
    w.agent.assert_alive();
    println!(
        "k_store_500s: 4 injected 500s, retrying{{store}} after 3 ({detail}), converged; {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// k2. Every connection is cut after 200 kB mid-file: each ranged GET keeps what arrived
/// and the next one resumes from there; the rollout completes with no more than 1.2x the
/// bundle fetched in all (the agent's `bundle downloaded` log line).
#[test]
fn k_connection_cut_resumes() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-k2", &[]);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    w.proxy.set(s3::Mode::CutAfter(200_000));
    let cmd = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send_and_converge(&cmd, &f.b.model_id);
    let cuts = w.proxy.stats(|s| s.cut);
    w.proxy.set(s3::Mode::Pass);
    // the model files (757 kB each) are larger than a connection's 200 kB: cut mid-file
    assert!(cuts >= 6, "only {cuts} connections were cut");
    let log = w.log();
    let fetched = log_number(&log, "bundle downloaded", "fetched")
        .unwrap_or_else(|| panic!("no `bundle downloaded ... fetched=` in the log:\n{log}"));
    let bytes = log_number(&log, "bundle downloaded", "bytes").unwrap();
    assert_eq!(bytes, f.b.bytes);
    assert!(
        fetched as f64 <= 1.2 * f.b.bytes as f64,
        "fetched {fetched} bytes for a bundle of {}",
        f.b.bytes
    );
    assert!(fetched >= f.b.bytes - 64 - 4096, "fetched {fetched}");
    // transparent: each cut brought bytes, so no attempt was given up
    let events = w.events_of(mark, &cmd.rollout_id);
    assert_eq!(
        folded(&events),
        [
            "received",
            "downloading",
            "verified",
            "activated",
            "health_passed"
        ],
        "{events:#?}"
    );
    let retries = log.matches("download request failed, retrying").count();
    assert!(retries >= cuts as usize - 1, "{retries} retries logged");
    let hits = load.stop();
    assert_clean(&hits, "k_connection_cut_resumes");
    w.agent.assert_alive();
    println!(
        "k_connection_cut_resumes: {cuts} connections cut at 200 kB, {retries} transparent retries (logged with the cause), fetched {fetched} bytes for a {} byte bundle ({:.3}x); {} answers, {:.1} s",
        f.b.bytes,
        fetched as f64 / f.b.bytes as f64,
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// k3. Stalls. (1) The manifest's connection stalls before a byte, twice: each is given
/// up after the stall timeout (1.5 s here), and with `retries = 1` the attempt ends with
/// `retrying`{reason: stalled}; the next one gets through and B converges. (2) A
/// connection stalls mid-file after 150 kB: the download notices within two stall
/// windows (a window that brought bytes is not a stall), resumes, and C converges.
#[test]
fn k_stall() {
    let f = fleet();
    let t = Instant::now();
    let stall = Duration::from_millis(1500);
    let mut w = World::build("dev-k3", &[], "retries = 1\n", "", |_| None);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));

    // 1. before the first byte
    w.proxy.set(s3::Mode::Stall {
        after: 0,
        connections: 2,
    });
    let cmd = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send(&cmd);
    let retry = w.wait_reason(mark, "retrying", "stalled");
    assert_eq!(retry["rollout_id"], cmd.rollout_id.as_str(), "{retry}");
    let r = w.agent.rollout();
    assert_eq!(r["state"], "downloading", "{r:#}");
    w.send_and_converge(&cmd, &f.b.model_id);
    let held = w.proxy.stats(|s| s.stall_held.clone());
    assert_eq!(held.len(), 2, "{held:?}");
    for h in &held {
        assert!(
            *h >= stall.mul_f64(0.8) && *h <= stall + Duration::from_millis(1000),
            "a silent connection was given up after {h:?}; the stall timeout is {stall:?}"
        );
    }

    // 2. in the middle of a file
    w.proxy.set(s3::Mode::Stall {
        after: 150_000,
        connections: 1_000_000,
    });
    let cmd = w.rollout(&f.c, "c");
    let mark = w.obs.mark();
    w.send(&cmd);
    let t0 = Instant::now();
    while w.proxy.stats(|s| s.stalled) < 3 {
        assert!(t0.elapsed() < LIMIT, "no connection stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    // the manifest and the signature passed (under 150 kB); the first file's GET stalls
    w.proxy.set(s3::Mode::Pass);
    w.obs.wait_event(mark, LIMIT, "health_passed", |e| {
        kind(e) == "health_passed" && e["rollout_id"] == cmd.rollout_id.as_str()
    });
    w.wait_converged(&cmd.rollout_id, &f.c.model_id);
    w.assert_serving(&f.c.model_id);
    let held2: Vec<Duration> = w.proxy.stats(|s| s.stall_held[held.len()..].to_vec());
    assert!(!held2.is_empty(), "the mid-file stall was never given up");
    for h in &held2 {
        assert!(
            *h <= stall * 2 + Duration::from_millis(1000),
            "a stalled connection was given up after {h:?}; the stall timeout is {stall:?}"
        );
    }
    let events = w.events_of(mark, &cmd.rollout_id);
    assert!(!kinds(&events).iter().any(|k| k == "failed"), "{events:#?}");
    let hits = load.stop();
    assert_clean(&hits, "k_stall");
    w.agent.assert_alive();
    println!(
        "k_stall: stall timeout {stall:?}; silent connections given up after {held:?} (retrying{{stalled}} after two), mid-file stalls after {held2:?}; {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// k4. The store holds a model file shorter than the manifest lists: `failed`{truncated}
/// before any of it is written; A keeps serving, nothing stays on disk; a new rollout of
/// the intact B converges.
#[test]
fn k_truncated_object() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-k4", &[]);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    let bucket = w._s3.bucket(BUCKET);
    s3::upload_dir(&f.b.dir, &bucket, "models/trunc");
    let onnx = bucket.join("models/trunc/model.onnx");
    let full = std::fs::metadata(&onnx).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&onnx)
        .unwrap()
        .set_len(full / 2)
        .unwrap();
    let cmd = w.rollout(&f.b, "trunc");
    let mark = w.obs.mark();
    w.send(&cmd);
    let e = w.wait_reason(mark, "failed", "truncated");
    assert_eq!(e["rollout_id"], cmd.rollout_id.as_str(), "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("model.onnx") && detail.contains(&(full / 2).to_string()),
        "{e}"
    );
    let r = w.agent.wait_rollout(LIMIT, "idle after the failure", |r| {
        r["state"] == "idle" && r["last"]["rollout_id"] == cmd.rollout_id.as_str()
    });
    assert_eq!(r["last"]["result"], "failed", "{r:#}");
    assert_eq!(r["last"]["reason"], "truncated", "{r:#}");
    w.assert_idle_on(&f.a.model_id, cmd.sequence);
    assert_eq!(w.models_dir(), [f.a.model_id.as_str()]);
    assert!(
        !kinds(&w.events_of(mark, &cmd.rollout_id))
            .iter()
            .any(|k| k == "retrying" || k == "activated"),
        "a truncated object is final"
    );
    // the intact bundle, a new rollout id
    let (events, _, _) = w.roll_to(&f.b, "b");
    assert_eq!(kinds(&events).last().unwrap(), "health_passed");
    w.assert_serving(&f.b.model_id);
    let hits = load.stop();
    assert_clean(&hits, "k_truncated_object");
    device::assert_order(&hits, &[&f.a.model_id, &f.b.model_id]);
    w.agent.assert_alive();
    println!(
        "k_truncated_object: failed{{truncated}}: {detail}; then B converged; {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// k5. `[download] free_disk_reserve_bytes` larger than the disk's free space: the
/// download stops after the manifest and signature, before any file byte is asked for,
/// with `retrying`{reason: disk_insufficient} (a disk may be freed: the rollout stays and
/// retries); A keeps serving. A restart with a sane reserve on the same data folder takes
/// the rollout up again and it converges.
#[test]
fn k_disk_too_small() {
    let f = fleet();
    let t = Instant::now();
    let free = device::free_bytes(&std::env::temp_dir());
    let reserve = free.saturating_mul(2).max(1 << 40);
    let mut w = World::build(
        "dev-k5",
        &[],
        &format!("free_disk_reserve_bytes = {reserve}\n"),
        "",
        |_| None,
    );
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    let cmd = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send(&cmd);
    let e = w.wait_reason(mark, "retrying", "disk_insufficient");
    assert_eq!(e["rollout_id"], cmd.rollout_id.as_str(), "{e}");
    let detail = e["detail"].as_str().unwrap().to_string();
    assert!(detail.contains(&reserve.to_string()), "{e}");
    // nothing but the manifest and its signature was asked for, or written
    let asked = w.proxy.requested();
    assert!(
        asked
            .iter()
            .all(|k| k.ends_with("/manifest.json") || k.ends_with("/manifest.sig")),
        "{asked:?}"
    );
    let events = w.events_of(mark, &cmd.rollout_id);
    assert!(
        events
            .iter()
            .all(|e| kind(e) != "downloading" || e["bytes"].as_u64().unwrap_or(0) <= 4096),
        "file bytes were downloaded: {events:#?}"
    );
    let files = w.model_files();
    let staged: Vec<&String> = files.iter().filter(|p| p.starts_with(".staging")).collect();
    assert!(
        staged
            .iter()
            .all(|p| p.ends_with("/manifest.json") || p.ends_with("/manifest.sig")),
        "{files:?}"
    );
    assert_eq!(w.agent.rollout()["state"], "downloading");
    w.assert_serving(&f.a.model_id);
    let hits1 = load.stop();

    // a sane reserve, the same data folder: the rollout in the state resumes
    let cfg = std::fs::read_to_string(&w.agent.spec.config).unwrap();
    let sane = cfg.replace(
        &format!("free_disk_reserve_bytes = {reserve}\n"),
        "free_disk_reserve_bytes = 1048576\n",
    );
    assert_ne!(cfg, sane);
    std::fs::write(&w.agent.spec.config, sane).unwrap();
    w.agent.restart();
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    w.wait_converged(&cmd.rollout_id, &f.b.model_id);
    // sent again (as an operator would): a duplicate, ignored
    let mark2 = w.obs.mark();
    w.send(&cmd);
    std::thread::sleep(Duration::from_millis(500));
    assert!(w.obs.events_since(mark2).is_empty());
    w.assert_serving(&f.b.model_id);
    let hits2 = load.stop();
    assert_clean(&hits1, "k_disk_too_small");
    assert_clean(&hits2, "k_disk_too_small");
    w.agent.assert_alive();
    println!(
        "k_disk_too_small: retrying{{disk_insufficient}}: {detail}; only the manifest and signature asked for; after a restart with a sane reserve it converged; {} answers, {:.1} s",
        hits1.len() + hits2.len(),
        t.elapsed().as_secs_f64()
    );
}

/// k6. The data folder is a 3.75 MB tmpfs (room for the factory model and one more) and
/// the reserve 0: the pre-check passes, then the test fills the disk while the download
/// stalls. The next write fails on ENOSPC: `retrying`{reason: disk_full}, the partial file
/// is removed, A keeps serving. The disk fills again: the agent keeps serving and waits
/// until its state can be written (it used to exit). With the space freed, the old
/// rollout downloads 1 MB again and a new rollout supersedes it: the old staging folder
/// is removed (it used to stay, and the new one waited for room forever) and it converges.
#[test]
fn k_disk_fills_during_download() {
    let f = fleet();
    let t = Instant::now();
    let mut mount_error = None;
    let mut w = World::build("dev-k6", &[], "free_disk_reserve_bytes = 0\n", "", |data| {
        match device::Tmpfs::mount(data, 3_750_000) {
            Ok(m) => Some(m),
            Err(e) => {
                mount_error = Some(e);
                None
            }
        }
    });
    if let Some(e) = mount_error {
        // only where mounting is not permitted (not root, or no CAP_SYS_ADMIN)
        println!("k_disk_fills_during_download: SKIPPED, cannot mount a tmpfs: {e}");
        return;
    }
    let data = w.agent.spec.data_dir.clone();
    assert!(w.mount.is_some());
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    let free0 = device::free_bytes(&data);
    assert!(
        free0 > f.b.bytes,
        "{free0} bytes free, the bundle is {}",
        f.b.bytes
    );
    w.proxy.set(s3::Mode::Stall {
        after: 150_000,
        connections: 1_000_000,
    });
    let cmd = w.rollout(&f.b, "b");
    let mark = w.obs.mark();
    w.send(&cmd);
    w.obs.wait_event(mark, LIMIT, "download progress", |e| {
        kind(e) == "downloading" && e["bytes"].as_u64().is_some_and(|b| b > 100_000)
    });
    // fill the disk
    let filler = data.join("filler");
    fill(&filler);
    assert!(device::free_bytes(&data) < 8192);
    w.proxy.set(s3::Mode::Pass);
    let e = w.wait_reason(mark, "retrying", "disk_full");
    assert_eq!(e["rollout_id"], cmd.rollout_id.as_str(), "{e}");
    let detail = e["detail"].as_str().unwrap().to_string();
    // A serves; nothing half-written: no partial file, no model folder of B
    w.assert_serving(&f.a.model_id);
    let files = w.model_files();
    assert!(!files.iter().any(|p| p.ends_with(".part")), "{files:?}");
    assert!(
        !w.models_dir().contains(&f.b.model_id),
        "{:?}",
        w.models_dir()
    );
    w.agent.assert_alive();
    // the disk fills up again (another writer takes the space the partial file freed):
    // the next attempt, and the state write that records it, find no room
    fill(&filler);
    let mark_full = w.obs.mark();
    std::thread::sleep(Duration::from_millis(3500));
    w.agent.assert_alive();
    w.assert_serving(&f.a.model_id);
    // the agent waits for room to write its state (before acting on anything), serving
    let log = w.log();
    assert!(
        log.contains("rollout state not written"),
        "the next attempt's state write did not meet the full disk:\n{log}"
    );
    let while_full = kinds(&w.events_of(mark_full, &cmd.rollout_id));
    // the space back: the state is written, the old rollout's attempt goes on (it may
    // still find the disk short, from the retry's point of view) and a new rollout
    // supersedes it
    // (the old one gets 1 MB into its staging folder first, then stalls: superseded, that
    // folder must go, or the new one never finds room for its bundle)
    w.proxy.set(s3::Mode::Stall {
        after: 1_000_000,
        connections: 1_000_000,
    });
    std::fs::remove_file(&filler).unwrap();
    w.obs
        .wait_event(mark_full, LIMIT, "the next attempt's progress", |e| {
            kind(e) == "downloading" && e["bytes"].as_u64().is_some_and(|b| b > 900_000)
        });
    w.proxy.set(s3::Mode::Pass);
    let cmd2 = w.rollout(&f.b, "b");
    w.send_and_converge(&cmd2, &f.b.model_id);
    let mut want = vec![f.a.model_id.clone(), f.b.model_id.clone()];
    want.sort();
    assert_eq!(w.models_dir(), want, "staging left behind");
    let hits = load.stop();
    assert_clean(&hits, "k_disk_fills_during_download");
    device::assert_order(&hits, &[&f.a.model_id, &f.b.model_id]);
    w.agent.assert_alive();
    println!(
        "k_disk_fills_during_download: 3.75 MB tmpfs, {free0} bytes free before; retrying{{disk_full}}: {detail}; no partial file left; with the disk full again the agent kept serving and waited to write its state (events meanwhile: {while_full:?}); converged after freeing; {} answers, {:.1} s",
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}

/// Appends to `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let block = vec![7u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // the last partial block
    let _ = file.write(&[7u8; 512]);
}

/// k7. A bundle whose manifest is signed by the command key: `failed`{wrong_key_role}
/// (the agent reads the manifest again to tell it from a bad signature); A keeps
/// serving; B converges.
#[test]
fn k_wrong_key_role_bundle() {
    let f = fleet();
    let t = Instant::now();
    let mut w = World::new("dev-k7", &[]);
    let load = Load::start(&w.agent.addr, 1, Duration::from_millis(10));
    let wrong = device::derive(&f.b, w.dir.path(), "wrongrole", &f.keys.command, |m, _| {
        m.model_id = format!("wrongrole-{}", &m.model_id[m.model_id.len() - 8..]);
    });
    let bucket = w._s3.bucket(BUCKET);
    s3::upload_dir(&wrong.dir, &bucket, "models/wrongrole");
    let cmd = w.rollout(&wrong, "wrongrole");
    let mark = w.obs.mark();
    w.send(&cmd);
    let e = w.wait_reason(mark, "failed", "wrong_key_role");
    assert_eq!(e["rollout_id"], cmd.rollout_id.as_str(), "{e}");
    let r = w.agent.wait_rollout(LIMIT, "idle after the failure", |r| {
        r["state"] == "idle" && r["last"]["rollout_id"] == cmd.rollout_id.as_str()
    });
    assert_eq!(r["last"]["reason"], "wrong_key_role", "{r:#}");
    w.assert_idle_on(&f.a.model_id, cmd.sequence);
    assert_eq!(w.models_dir(), [f.a.model_id.as_str()]);
    // the same bundle signed by the bundle key converges
    let (events, _, _) = w.roll_to(&f.b, "b");
    assert_eq!(kinds(&events).last().unwrap(), "health_passed");
    w.assert_serving(&f.b.model_id);
    let hits = load.stop();
    assert_clean(&hits, "k_wrong_key_role_bundle");
    w.agent.assert_alive();
    println!(
        "k_wrong_key_role_bundle: failed{{wrong_key_role}}: {}; then B converged; {} answers, {:.1} s",
        e["detail"],
        hits.len(),
        t.elapsed().as_secs_f64()
    );
}
