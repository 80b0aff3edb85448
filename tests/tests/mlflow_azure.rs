//! MLflow with its artifact root on Azure Blob Storage: a real `mlflow server` 3.17.2
//! (MariaDB backend store) whose default artifact root is a `wasbs://` URL on Azurite.
//! `trainer train --mlflow` writes the run's files straight into that container through
//! object_store (the environment's Azure settings), and MLflow's own client, reading with
//! azure-storage-blob, lists them.

use tests::{free_port, last_json, run_env, AzuriteServer, MlflowServer, MysqlDb, AZURITE_ACCOUNT};

#[test]
fn run_files_go_straight_to_an_azure_artifact_root_and_mlflow_lists_them() {
    let azurite = AzuriteServer::start();
    azurite.container("mlflow");
    let mlflow_db = MysqlDb::create("edgecp_mlflow_az");
    let root = format!("wasbs://mlflow@{AZURITE_ACCOUNT}.blob.core.windows.net/");
    let server = MlflowServer::start_with(free_port(), &mlflow_db, &azurite.mlflow_env(), &root);
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_str().unwrap();
    let env = azurite.env();

    let o = run_env(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", "datasets"],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let registry = format!("sqlite://{w}/registry.db?mode=rwc");
    let o = run_env(
        "trainer",
        &[
            "--registry",
            &registry,
            "train",
            "--data",
            "datasets",
            "--experiment",
            "on-azure",
            "--mlflow",
            &server.url,
            "--set",
            "epochs=1",
            "--set",
            "steps_per_epoch=4",
            "--set",
            "eval_every=4",
            "--json",
        ],
        &env,
        work.path(),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let j = last_json(&o);
    assert_eq!(
        j["mlflow"]["missing"].as_array().map(Vec::len),
        Some(0),
        "{}\n{stderr}",
        j["mlflow"]
    );

    let dump = server.dump_with("on-azure", &azurite.mlflow_env());
    let runs = dump["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{dump}");
    let r = &runs[0];
    assert_eq!(r["status"], "FINISHED");
    let uri = r["artifact_uri"].as_str().unwrap();
    assert!(uri.starts_with(&root), "{uri}");
    let files: Vec<&str> = r["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for f in [
        "model.safetensors",
        "reference.safetensors",
        "report.json",
        "config.toml",
    ] {
        assert!(files.contains(&f), "{f} missing from {files:?}");
    }
    // the weights are one ordinary blob of the size MLflow reports, in the run's folder
    let size = r["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .and_then(|f| f["size"].as_u64())
        .unwrap();
    let run_path = uri.trim_start_matches(&root);
    let got = azurite.client(&["sha256", "mlflow", &format!("{run_path}/model.safetensors")]);
    assert!(
        got.contains(&format!("\"size\": {size}")),
        "{got} vs {size}"
    );
}
