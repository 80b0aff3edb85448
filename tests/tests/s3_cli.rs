//! The programs with every location on a real S3 server (Garage, and s3s-fs, on loopback;
//! settings from the standard AWS_* environment): `trainer ingest` writes a dataset version
//! to S3, `trainer train` reads it from there and uploads its artifacts, `exporter bundle`
//! reads the run's weights back from S3 and uploads the signed bundle, and `edge-agent`
//! verifies that bundle once downloaded from the server.

use object_store::ObjectStoreExt;
use tests::{last_json, run_env, S3Kind, S3Server};

/// Downloads every object under `loc` (recursively) into `dir`.
fn download(loc: &shared::store::Location, dir: &std::path::Path) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut n = 0;
        let mut todo = vec![loc.prefix.clone()];
        while let Some(prefix) = todo.pop() {
            let listed = loc.store.list_with_delimiter(Some(&prefix)).await.unwrap();
            todo.extend(listed.common_prefixes);
            for o in listed.objects {
                let rel = o.location.as_ref()[loc.prefix.as_ref().len()..].trim_start_matches('/');
                let path = dir.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let bytes = loc
                    .store
                    .get(&o.location)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                std::fs::write(&path, &bytes).unwrap();
                n += 1;
            }
        }
        n
    })
}

#[test]
fn garage_datasets_artifacts_and_bundles_go_through_s3() {
    through_s3(S3Kind::Garage);
}

#[test]
fn s3s_fs_datasets_artifacts_and_bundles_go_through_s3() {
    through_s3(S3Kind::S3sFs);
}

fn through_s3(kind: S3Kind) {
    let s3 = S3Server::start_kind(kind);
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
    let fetched = tempfile::tempdir().unwrap();
    let n = download(&s3.open("s3://datasets/signs", &s3.secret), fetched.path());
    assert!(n >= 4, "{n} objects in s3://datasets/signs");
    assert!(fetched.path().join("LATEST").is_file());

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
    // the uploaded bundle, byte for byte, is what the device verifies
    let dir = fetched.path().join("bundle");
    let n = download(
        &s3.open(&format!("s3://models/fleet/models/{model_id}"), &s3.secret),
        &dir,
    );
    assert!(n >= 4, "{n} objects in the uploaded bundle");
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
