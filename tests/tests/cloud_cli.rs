//! The programs with every location on a real object-store server on loopback: S3 (Garage
//! and s3s-fs; settings from the standard AWS_* environment) and Azure Blob Storage
//! (Azurite; AZURE_* settings). `trainer ingest` writes a dataset version to the store,
//! `trainer train` reads it from there and uploads its artifacts, `exporter bundle` reads
//! the run's weights back and uploads the signed bundle, and `edge-agent` verifies that
//! bundle once downloaded from the server.

use object_store::ObjectStoreExt;
use tests::{last_json, run_env, AzuriteServer, CloudServer, S3Kind, S3Server};

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
    through_store(&S3Server::start_kind(S3Kind::Garage));
}

#[test]
fn s3s_fs_datasets_artifacts_and_bundles_go_through_s3() {
    through_store(&S3Server::start_kind(S3Kind::S3sFs));
}

#[test]
fn azurite_datasets_artifacts_and_bundles_go_through_azure_blob_storage() {
    let azurite = AzuriteServer::start();
    let (model_id, manifest_sha) = through_store(&azurite);
    // what the exporter uploaded are ordinary blobs to Azure's own client
    let prefix = format!("fleet/models/{model_id}/");
    let listed = azurite.client(&["list", "models", &prefix]);
    assert!(listed.contains("manifest.sig"), "{listed}");
    let got = azurite.client(&["sha256", "models", &format!("{prefix}manifest.json")]);
    assert!(got.contains(&manifest_sha), "{got} vs {manifest_sha}");
}

/// Runs the programs against `server`; returns the bundle's model id and the sha256 of the
/// manifest the device verified.
fn through_store(server: &dyn CloudServer) -> (String, String) {
    for b in ["datasets", "artifacts", "models"] {
        server.make_bucket(b);
    }
    let env = server.program_env();
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_str().unwrap();
    let signs = server.url("datasets", "signs");
    let runs = server.url("artifacts", "runs");
    let fleet = server.url("models", "fleet");

    let o = run_env(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", &signs],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fetched = tempfile::tempdir().unwrap();
    let n = download(&server.location(&signs), fetched.path());
    assert!(n >= 4, "{n} objects in {signs}");
    assert!(fetched.path().join("LATEST").is_file());

    let registry = format!("sqlite://{w}/registry.db?mode=rwc");
    let o = run_env(
        "trainer",
        &[
            "--registry",
            &registry,
            "train",
            "--data",
            &signs,
            "--artifacts",
            &runs,
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
    let weights = format!("{runs}/{run_id}/model.safetensors");
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
            &fleet,
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
        &server.location(&format!("{fleet}/models/{model_id}")),
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
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();

    // wrong credentials name the service's answer and the location
    let other = server.url("datasets", "other");
    let o = run_env(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", &other],
        &server.program_env_wrong_secret(),
        work.path(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&other) && server.denied_words().iter().any(|w| err.contains(w)),
        "{err}"
    );
    (model_id.to_string(), shared::store::sha256_hex(&manifest))
}
