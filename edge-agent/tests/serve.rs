//! End to end through the real binary: `predict` on image files, `verify`, and `serve` over
//! real HTTP on loopback (every endpoint, bad input, a tampered bundle, a bounded
//! concurrent load, SIGTERM).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[test]
fn predict_answers_every_image_format_and_reports_bad_files_without_stopping() {
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let imgs = root.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::write(imgs.join("a.png"), png(32, 32, 1)).unwrap();
    std::fs::write(imgs.join("b.jpg"), jpeg(97, 61)).unwrap();
    std::fs::write(imgs.join("c.ppm"), ppm(40, 50)).unwrap();
    std::fs::write(imgs.join("d.png"), b"not an image").unwrap();
    std::fs::write(imgs.join("e.png"), png(300, 200, 9)).unwrap();
    let out = agent()
        .args([
            "predict",
            "--json",
            "--epsilon",
            "0.1",
            "--batch",
            "2",
            "--bundle",
        ])
        .arg(&dir)
        .arg("--key")
        .arg(&key)
        .args(["a.png", "b.jpg", "c.ppm", "d.png", "e.png", "missing.png"].map(|f| imgs.join(f)))
        .output()
        .unwrap();
    assert!(!out.status.success(), "bad files must fail the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    for (i, v) in lines.iter().enumerate() {
        let bad = i == 3 || i == 5;
        assert_eq!(v.get("error").is_some(), bad, "{v}");
        if !bad {
            for f in [
                "file",
                "set",
                "labels",
                "p_values",
                "credibility",
                "confidence",
                "epsilon",
                "model_id",
            ] {
                assert!(v.get(f).is_some(), "{f} missing: {v}");
            }
            assert_eq!(v["epsilon"], 0.1);
            assert_eq!(v["p_values"].as_array().unwrap().len(), 43);
        }
    }
    let ok = agent()
        .args(["predict", "--bundle"])
        .arg(&dir)
        .arg("--key")
        .arg(&key)
        .arg(imgs.join("a.png"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let v = agent()
        .args(["verify", "--bundle"])
        .arg(&dir)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[test]
fn tampered_bundles_are_never_served() {
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let wrong = root.path().join("wrong.pub");
    std::fs::write(
        &wrong,
        shared::bundle::keys::public_pem(
            &shared::bundle::keys::generate().unwrap().verifying_key(),
        ),
    )
    .unwrap();
    let err = Server::start(&dir, &wrong, &[])
        .err()
        .expect("served with a wrong key");
    assert!(err.contains("signature"), "{err}");
    for name in [
        "model.onnx",
        "reference.safetensors",
        "golden.safetensors",
        "manifest.json",
    ] {
        let bad = root.path().join(format!("bad-{name}"));
        copy_dir(&dir, &bad);
        let mut b = std::fs::read(bad.join(name)).unwrap();
        let n = b.len();
        b[n / 3] ^= 0x40;
        std::fs::write(bad.join(name), &b).unwrap();
        let err = Server::start(&bad, &key, &[])
            .err()
            .expect("tampered bundle served");
        assert!(err.contains("refused"), "{name}: {err}");
    }
}

#[test]
fn the_service_answers_refuses_bad_input_tracks_validity_and_stops_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let s = Server::start(
        &dir,
        &key,
        &["--max-body-bytes", "200000", "--delta", "0.01"],
    )
    .unwrap();

    let (st, body) = s.request("GET", "/healthz", "text/plain", b"");
    assert_eq!(st, 200, "{body}");
    let (st, body) = s.request("GET", "/v1/model", "text/plain", b"");
    assert_eq!(st, 200, "{body}");
    let model: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(model["runtime"], "native");
    assert!(model["self_test"]["max_abs_diff"].as_f64().unwrap() <= 1e-4);

    // an image body of any size and format
    let (st, body) = s.request("POST", "/v1/predict", "image/png", &png(64, 48, 3));
    assert_eq!(st, 200, "{body}");
    let a: Value = serde_json::from_str(&body).unwrap();
    // an unguessable id: 128 random bits as 32 hex digits
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(a["p_values"].as_array().unwrap().len(), 43);
    let (st, body) = s.request(
        "POST",
        "/v1/predict?epsilon=0.2",
        "image/x-portable-pixmap",
        &ppm(20, 20),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["epsilon"],
        0.2
    );
    // a raw tensor
    let t: Vec<f32> = (0..32 * 32 * 3).map(|i| (i % 200) as f32).collect();
    let j = serde_json::json!({ "tensor": t, "epsilon": 0.05 }).to_string();
    let (st, body) = s.request("POST", "/v1/predict", "application/json", j.as_bytes());
    assert_eq!(st, 200, "{body}");
    // a batch of images, one of them broken
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let j = serde_json::json!({ "images": [b64(&png(32, 32, 1)), b64(b"garbage"), b64(&jpeg(50, 50))] })
        .to_string();
    let (st, body) = s.request(
        "POST",
        "/v1/predict/batch",
        "application/json",
        j.as_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["failed"], 1);
    assert!(r["results"][1]["error"]
        .as_str()
        .unwrap()
        .contains("images[1]"));
    assert!(r["results"][2]["set"].is_array());

    // bad input: 4xx with a message, and the service lives on
    let bad: [(&str, &str, Vec<u8>, u16); 8] = [
        ("/v1/predict", "image/png", b"garbage".to_vec(), 400),
        ("/v1/predict", "image/png", vec![], 400),
        (
            "/v1/predict",
            "application/json",
            b"{\"tensor\": [1, 2]}".to_vec(),
            400,
        ),
        ("/v1/predict", "application/json", b"{nope".to_vec(), 400),
        ("/v1/predict?epsilon=2", "image/png", png(8, 8, 1), 400),
        ("/v1/predict", "image/png", vec![0x89; 300_000], 413),
        ("/v1/predict/batch", "application/json", b"{}".to_vec(), 400),
        (
            "/v1/feedback",
            "application/json",
            b"{\"id\": \"000000000000000000000000000f423f\", \"label\": 1}".to_vec(),
            404,
        ),
    ];
    for (path, ctype, body, want) in bad {
        let (st, msg) = s.request("POST", path, ctype, &body);
        assert_eq!(st, want, "{path} {ctype}: {msg}");
        if want != 413 {
            assert!(msg.contains("error"), "{msg}");
        }
    }
    let (st, _) = s.request("GET", "/nowhere", "text/plain", b"");
    assert_eq!(st, 404);

    // feedback by prediction id
    let j = serde_json::json!({ "id": id, "label": 3 }).to_string();
    let (st, body) = s.request("POST", "/v1/feedback", "application/json", j.as_bytes());
    assert_eq!(st, 200, "{body}");
    let f: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(f["validity"]["feedback"], 1);
    let (st, _) = s.request("POST", "/v1/feedback", "application/json", j.as_bytes());
    assert_eq!(st, 404, "the same id twice");

    let (st, m) = s.request("GET", "/metrics", "text/plain", b"");
    assert_eq!(st, 200);
    for needle in [
        "edge_agent_requests_total{route=\"/v1/predict\",status=\"200\"} 3",
        "edge_agent_request_seconds_bucket{route=\"/v1/predict\",le=\"+Inf\"}",
        "edge_agent_prediction_sets_total{size=",
        "edge_agent_validity_feedback_total{",
        "edge_agent_validity_martingale{",
        "edge_agent_validity_error_rate_ci_high{",
    ] {
        assert!(m.contains(needle), "{needle} not in\n{m}");
    }

    // graceful shutdown on SIGTERM
    let mut s = s;
    let pid = s.child.id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    loop {
        if let Some(code) = s.child.try_wait().unwrap() {
            assert!(code.success(), "exit after SIGTERM: {code}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bounded_concurrent_load_gets_no_errors() {
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let s = Server::start(&dir, &key, &["--concurrency", "8"]).unwrap();
    let (clients, per) = (8, 50);
    let body = png(48, 48, 5);
    let t0 = Instant::now();
    let results: Vec<(u32, Vec<f64>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                let (addr, body) = (&s.addr, &body);
                sc.spawn(move || {
                    let mut errors = 0;
                    let mut lat = vec![];
                    for _ in 0..per {
                        let t = Instant::now();
                        let (st, _) = http(addr, "POST", "/v1/predict", "image/png", body);
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        errors += u32::from(st != 200);
                    }
                    (errors, lat)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let errors: u32 = results.iter().map(|r| r.0).sum();
    let mut lat: Vec<f64> = results.into_iter().flat_map(|r| r.1).collect();
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| edge_agent::monitoring::stats::percentile(&lat, q);
    println!(
        "load: {} requests from {clients} clients in {wall:.2} s ({:.0}/s), errors {errors}, p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        lat.len() as f64 / wall,
        p(0.5),
        p(0.99)
    );
    assert_eq!(errors, 0);
    let (st, _) = s.request("GET", "/healthz", "text/plain", b"");
    assert_eq!(st, 200);
}
