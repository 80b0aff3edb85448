//! The programs with every location on a real S3 server (s3s-fs on loopback, settings from
//! the standard AWS_* environment): `trainer ingest` writes a dataset version to S3,
//! `trainer train` reads it from there and uploads its artifacts, `exporter bundle` reads
//! the run's weights back from S3 and uploads the signed bundle, and `edge-agent` serves
//! that bundle once downloaded.

use tests::{last_json, run_env, S3Server};

#[test]
fn datasets_artifacts_and_bundles_go_through_s3() {
    let s3 = S3Server::start();
    for b in ["datasets", "artifacts", "models"] {
        s3.bucket(b);
    }
    let env = s3.env();
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_str().unwrap();

    let o = run_env(
        "trainer",
        &[
            "ingest",
            "--source",
            "synthetic",
            "--out",
            "s3://datasets/signs",
        ],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(s3
        .root
        .path()
        .join("datasets")
        .read_dir()
        .unwrap()
        .next()
        .is_some());

    let registry = format!("sqlite://{w}/registry.db?mode=rwc");
    let o = run_env(
        "trainer",
        &[
            "--registry",
            &registry,
            "train",
            "--data",
            "s3://datasets/signs",
            "--artifacts",
            "s3://artifacts/runs",
            "--set",
            "epochs=1",
            "--set",
            "steps_per_epoch=3",
            "--set",
            "eval_every=3",
            "--json",
        ],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    let run_id = j["run_id"].as_str().unwrap().to_string();
    let urls: Vec<&str> = j["artifact_urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    let weights = format!("s3://artifacts/runs/{run_id}/model.safetensors");
    assert!(urls.contains(&weights.as_str()), "{urls:?}");

    let o = run_env(
        "exporter",
        &["keygen", "--out", &format!("{w}/keys")],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_env(
        "exporter",
        &[
            "--registry",
            &registry,
            "bundle",
            "--run",
            &run_id,
            "--key",
            &format!("{w}/keys/signing.key"),
            "--out",
            &format!("{w}/bundles"),
            "--store",
            "s3://models/fleet",
            "--json",
        ],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = last_json(&o);
    let model_id = b["model_id"].as_str().unwrap();
    // the uploaded bundle, byte for byte, is what the device verifies and serves
    let uploaded = s3
        .root
        .path()
        .join(format!("models/fleet/models/{model_id}"));
    let dir = if uploaded.is_dir() {
        uploaded
    } else {
        // s3s-fs may keep objects under other names: download through the agent's path
        panic!("bundle not found at {}", uploaded.display());
    };
    let o = run_env(
        "edge-agent",
        &[
            "verify",
            "--bundle",
            dir.to_str().unwrap(),
            "--key",
            &format!("{w}/keys/signing.pub"),
        ],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(last_json(&o)["ok"], true);

    // wrong credentials name the service's answer and the location
    let mut bad = env.clone();
    for (k, v) in &mut bad {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong".into();
        }
    }
    let o = run_env(
        "trainer",
        &[
            "ingest",
            "--source",
            "synthetic",
            "--out",
            "s3://datasets/other",
        ],
        &bad,
        work.path(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("s3://datasets/other") && (err.contains("403") || err.contains("Signature")),
        "{err}"
    );
}
