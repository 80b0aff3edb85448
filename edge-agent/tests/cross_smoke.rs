//! The device build under emulation, end to end (run by cross/test.sh, which builds the
//! agent for an ARM target and sets `EDGECP_CROSS_AGENT` to it and `EDGECP_CROSS_RUNNER`
//! to its qemu command): the emulated `edge-agent run` connects to a private Mosquitto,
//! takes a signed rollout, pulls the bundle from a loopback S3 server (s3s-fs), verifies
//! and activates it, and then answers 1,000 GTSRB validation images over HTTP exactly as
//! this (x86) build's `edge-agent serve` answers them with the same bundle: the same
//! prediction sets, p-values within 1e-5, embeddings within 1e-4.

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/device.rs"]
mod device;
#[path = "common/port.rs"]
mod port;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;
use std::time::{Duration, Instant};

use broker::{kind, Broker, Observer};
use device::{Agent, AgentSpec, Keys};
use serde_json::Value;

const FLEET: &str = "lab";
const IMAGES: usize = 1000;
const PER_REQUEST: usize = 20;
const EPSILON: f64 = 0.05;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test is run by cross/test.sh for an ARM build")
    })
}

/// `n` validation images (spread over the split), as NHWC f32 raw pixel values.
fn validation_images(n: usize) -> (Vec<f32>, usize) {
    let data = std::env::var("EDGECP_DATA").unwrap_or_else(|_| "../../shared/data".into());
    let dir = Path::new(&data).join("gtsrb");
    let set = shared::data::compact::read_split(&dir, "valid")
        .unwrap_or_else(|e| panic!("GTSRB validation split under {}: {e}", dir.display()));
    let per = set.side * set.side * 3;
    let total = set.labels.len();
    assert!(total >= n, "{total} validation images, need {n}");
    let mut x = Vec::with_capacity(n * per);
    for i in 0..n {
        let at = i * total / n * per;
        x.extend(set.pixels[at..at + per].iter().map(|&v| f32::from(v)));
    }
    (x, set.side)
}

/// The answers of `addr` for `x` (`?embedding=true`, batches of [`PER_REQUEST`]).
fn answers(addr: &str, x: &[f32], per: usize) -> Vec<Value> {
    let mut out = vec![];
    for chunk in x.chunks(per * PER_REQUEST) {
        let body = serde_json::json!({ "tensor": chunk, "epsilon": EPSILON }).to_string();
        let (st, text) = common::try_http(
            addr,
            "POST",
            "/v1/predict/batch?embedding=true",
            "",
            "application/json",
            body.as_bytes(),
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("POST /v1/predict/batch to {addr}: {e}"));
        assert_eq!(st, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let items = v["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results in {text:.300}"));
        assert_eq!(v["failed"], 0, "{text:.300}");
        out.extend(items.iter().cloned());
    }
    out
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "run by cross/test.sh: needs EDGECP_CROSS_AGENT (an ARM edge-agent) and EDGECP_CROSS_RUNNER (its qemu command)"]
fn emulated_agent_takes_a_rollout_and_answers_as_x86_does() {
    let t = Instant::now();
    let bin = env("EDGECP_CROSS_AGENT");
    let runner = env("EDGECP_CROSS_RUNNER");
    let target = std::env::var("EDGECP_CROSS_TARGET").unwrap_or_else(|_| "?".into());
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let keys = Keys::new(&r.join("keys"));
    let a = device::build_seeded(r, "a", 21, &keys.bundle);
    let b0 = device::build_seeded(r, "b0", 22, &keys.bundle);
    let b = device::derive(&b0, r, "b", &keys.bundle, |m, _| {
        m.created_ms = a.created_ms + 1000;
        m.model_id = format!("b-{}", &m.model_id[m.model_id.len() - 8..]);
    });

    let s3 = s3::S3sFs::start();
    let bucket = s3.bucket("bundles");
    s3::upload_dir(&b.dir, &bucket, "models/b");
    let broker = Broker::start();
    let obs = Observer::start(&broker, "arm-1");
    let mut cfg = String::from("[store.options]\n");
    for (k, v) in s3::store_options(s3.port) {
        cfg += &format!("{k} = {v:?}\n");
    }
    cfg += "[health]\np99_slack_ms = 60000.0\nmin_answers_for_sets = 10\n";
    let config = r.join("agent.toml");
    std::fs::write(&config, cfg).unwrap();
    let mut program: Vec<String> = runner.split_whitespace().map(str::to_string).collect();
    program.push(bin.clone());

    // a device build leaves out the workstation measurements, and says so
    let out = std::process::Command::new(&program[0])
        .args(&program[1..])
        .arg("drift")
        .output()
        .unwrap_or_else(|e| panic!("running {program:?}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not in this build") && err.contains("eval"),
        "{err}"
    );
    let spec = AgentSpec {
        device: "arm-1".into(),
        fleet: FLEET.into(),
        data_dir: r.join("data"),
        broker: broker.url(),
        factory: a.dir.clone(),
        bundle_pub: keys.bundle_pub.clone(),
        command_pub: keys.command_pub.clone(),
        config,
        extra: [
            "--health-window-ms",
            "500",
            "--health-min-answers",
            "0",
            "--telemetry-interval-s",
            "1",
            "--epsilon",
            "0.05",
        ]
        .map(String::from)
        .to_vec(),
        log: r.join("agent.log"),
        program,
    };
    let agent = Agent::start(&spec);
    let (st, model) = agent.predict();
    let first_answer = agent.started.elapsed();
    assert_eq!(st, 200);
    assert_eq!(model.as_deref(), Some(a.model_id.as_str()));
    obs.wait_status(Duration::from_secs(60), "online", |s| {
        s["online"] == true && s["active"] == a.model_id.as_str()
    });

    let cmd = device::rollout(FLEET, 1, &b, "s3://bundles/models/b");
    let mark = obs.mark();
    let t0 = Instant::now();
    broker.publish(
        "devices/arm-1/cmd",
        &device::signed(&cmd, &keys.command),
        false,
    );
    let act = obs.wait_event(mark, Duration::from_secs(120), "activated", |e| {
        kind(e) == "activated"
    });
    let activated = act.at - t0;
    // answers during the gate (min_answers_for_sets) are part of the check below
    let (x, side) = validation_images(IMAGES);
    let per = side * side * 3;
    let t1 = Instant::now();
    let arm = answers(&agent.addr, &x, per);
    let arm_s = t1.elapsed().as_secs_f64();
    obs.wait_event(mark, Duration::from_secs(120), "health_passed", |e| {
        kind(e) == "health_passed"
    });
    let r = agent.rollout();
    assert_eq!(r["serving"], b.model_id.as_str(), "{r:#}");

    let host = common::Server::start(&b.dir, &keys.bundle_pub, &["--epsilon", "0.05"])
        .unwrap_or_else(|e| panic!("x86 serve: {e}"));
    let x86 = answers(&host.addr, &x, per);
    assert_eq!(arm.len(), IMAGES);
    assert_eq!(x86.len(), IMAGES);

    let (mut mismatches, mut max_p, mut max_e) = (0usize, 0f64, 0f64);
    for (i, (p, q)) in arm.iter().zip(&x86).enumerate() {
        assert_eq!(p["model_id"], b.model_id.as_str(), "{p}");
        let dp = max_diff(&floats(&p["p_values"]), &floats(&q["p_values"]));
        let de = max_diff(&floats(&p["embedding"]), &floats(&q["embedding"]));
        max_p = max_p.max(dp);
        max_e = max_e.max(de);
        if p["set"] != q["set"] {
            mismatches += 1;
            println!(
                "image {i}: set {} on {target}, {} on x86 (p-values differ by up to {dp:.2e}, embeddings by {de:.2e})",
                p["set"], q["set"]
            );
        }
    }
    println!(
        "cross_smoke {target}: first answer {:.0} ms after start; command -> activated {:.0} ms; {IMAGES} images in {arm_s:.1} s under qemu; set mismatches {mismatches}; max |p diff| {max_p:.2e}; max |embedding diff| {max_e:.2e}; {:.1} s in all",
        first_answer.as_secs_f64() * 1e3,
        activated.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(mismatches, 0, "prediction sets differ from x86's");
    assert!(max_p <= 1e-5, "p-values differ by {max_p}");
    assert!(max_e <= 1e-4, "embeddings differ by {max_e}");
}
