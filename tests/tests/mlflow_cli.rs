//! `trainer train --mlflow` against a real MLflow 3.17.2 server (`mlflow server` from the
//! test venv) whose backend store is MariaDB and whose artifact root is on a real S3 server
//! (s3s-fs); the registry is MariaDB too. What MLflow holds is read back with MLflow's own
//! Python client (scripts/py/mlflow_runs.py), not with ours.
//!
//! One test, three phases (the server takes ~20 s to start, so it is started once):
//! 1. MLflow is down when training starts and comes up mid-run: training goes on, and the
//!    whole history reaches MLflow when it answers.
//! 2. MLflow up: params, tags, per-step curves, final metrics and files all arrive; the
//!    registry names the MLflow run.
//! 3. MLflow down for good: training still finishes (exit 0, run finished in the
//!    registry) and the report says what never reached MLflow.

use std::process::{Command, Stdio};

use tests::{bin, free_port, last_json, run_env, MlflowServer, MysqlDb, S3Server};

fn train_args<'a>(
    registry: &'a str,
    data: &'a str,
    mlflow: &'a str,
    wait: &'a str,
) -> Vec<&'a str> {
    vec![
        "--registry",
        registry,
        "train",
        "--data",
        data,
        "--artifacts",
        "artifacts",
        "--experiment",
        "tracked",
        "--mlflow",
        mlflow,
        "--mlflow-wait",
        wait,
        "--set",
        "epochs=2",
        "--set",
        "steps_per_epoch=6",
        "--set",
        "eval_every=4",
        "--json",
    ]
}

#[test]
fn training_is_tracked_in_mlflow_even_when_it_is_down() {
    let s3 = S3Server::start();
    s3.bucket("mlflow");
    let mlflow_db = MysqlDb::create("edgecp_mlflow");
    let registry_db = MysqlDb::create("edgecp_tracked");
    let registry = registry_db.url();
    let work = tempfile::tempdir().unwrap();
    let env = s3.env();

    let o = run_env(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", "datasets"],
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // 1. down at the start, up mid-run
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(bin("trainer"))
        .args(train_args(&registry, "datasets", &url, "300"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .current_dir(work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let server = MlflowServer::start(port, &mlflow_db, &s3, "s3://mlflow/");
    let first = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    let j1 = last_json(&first);
    assert_eq!(
        j1["mlflow"]["missing"].as_array().map(Vec::len),
        Some(0),
        "{}\n{stderr}",
        j1["mlflow"]
    );
    assert!(
        stderr.contains("training goes on"),
        "the outage was not reported: {stderr}"
    );

    // 2. up
    let o = run_env(
        "trainer",
        &train_args(&registry, "datasets", &url, "60"),
        &env,
        work.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j2 = last_json(&o);

    let dump = server.dump("tracked", &s3);
    let runs = dump["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{dump}");
    for j in [&j1, &j2] {
        let run_id = j["run_id"].as_str().unwrap();
        let r = runs
            .iter()
            .find(|r| r["tags"]["edgecp.run_id"] == run_id)
            .unwrap_or_else(|| panic!("run {run_id} is not in MLflow: {dump}"));
        assert_eq!(r["status"], "FINISHED");
        assert_eq!(r["run_id"], j["mlflow"]["run_id"]);
        // reproducible from what is logged: the whole configuration, data hash, code, seed
        for p in [
            "model.embedding_dim",
            "optim.lr",
            "seed",
            "epochs",
            "dataset",
            "icp.ncm",
        ] {
            assert!(
                r["params"].get(p).is_some(),
                "param {p} missing: {}",
                r["params"]
            );
        }
        assert_eq!(r["params"]["epochs"], "2");
        for t in [
            "edgecp.dataset_sha256",
            "edgecp.code_version",
            "edgecp.seed",
            "edgecp.dataset_id",
        ] {
            assert!(r["tags"].get(t).is_some(), "tag {t} missing: {}", r["tags"]);
        }
        // curves: every per-step value the registry has, at the same steps
        let steps = registry_db.query(&format!(
            "SELECT step FROM metrics WHERE run_id = '{run_id}' AND name = 'train_loss' ORDER BY step"
        ));
        let reg_steps: Vec<i64> = steps.lines().map(|l| l.trim().parse().unwrap()).collect();
        let hist: Vec<i64> = r["history"]["train_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_i64().unwrap())
            .collect();
        assert_eq!(
            hist, reg_steps,
            "train_loss history differs from the registry's"
        );
        assert!(reg_steps.len() >= 12, "{reg_steps:?}");
        assert!(
            r["history"]["validation_nc_accuracy"]
                .as_array()
                .unwrap()
                .len()
                >= 2
        );
        let nc = r["metrics"]["validation_nc_accuracy"].as_f64().unwrap();
        assert!((nc - j["nc_accuracy"].as_f64().unwrap()).abs() < 1e-9);
        assert!(
            r["metrics"].get("icp_error_eps050").is_some(),
            "{}",
            r["metrics"]
        );
        // files, listed from the S3 artifact root by MLflow's client
        let files: Vec<&str> = r["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        for f in [
            "model.safetensors",
            "reference.safetensors",
            "calibration.png",
            "training_curves.png",
            "embeddings_pca.png",
            "report.json",
            "config.toml",
        ] {
            assert!(files.contains(&f), "{f} missing from {files:?}");
        }
        assert!(r["artifact_uri"]
            .as_str()
            .unwrap()
            .starts_with("s3://mlflow/"));
        // the registry names the MLflow run
        let linked = registry_db.query(&format!(
            "SELECT value FROM params WHERE run_id = '{run_id}' AND name = 'mlflow_run_id'"
        ));
        assert_eq!(linked.trim(), r["run_id"].as_str().unwrap());
    }

    // 3. down for good: training finishes, the report lists what is missing
    drop(server);
    let o = run_env(
        "trainer",
        &train_args(&registry, "datasets", &url, "1"),
        &env,
        work.path(),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let j3 = last_json(&o);
    let missing = j3["mlflow"]["missing"].as_array().unwrap();
    assert!(
        missing
            .iter()
            .any(|m| m.as_str().unwrap().contains("never created")),
        "{missing:?}"
    );
    assert!(stderr.contains("did not receive"), "{stderr}");
    let status = registry_db.query(&format!(
        "SELECT status FROM runs WHERE id = '{}'",
        j3["run_id"].as_str().unwrap()
    ));
    assert_eq!(status.trim(), "finished");
}

#[test]
fn a_bad_mlflow_url_is_refused_before_any_run_starts() {
    let work = tempfile::tempdir().unwrap();
    let registry = format!("sqlite://{}/r.db?mode=rwc", work.path().display());
    let o = run_env(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", "datasets"],
        &[],
        work.path(),
    );
    assert!(o.status.success());
    for bad in ["localhost:5000", "ftp://host/x", "http://"] {
        let o = run_env(
            "trainer",
            &train_args(&registry, "datasets", bad, "1"),
            &[],
            work.path(),
        );
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("MLflow tracking URL") && err.contains(bad),
            "{err}"
        );
    }
    let o = run_env(
        "trainer",
        &["--registry", &registry, "runs", "list", "--json"],
        &[],
        work.path(),
    );
    assert_eq!(last_json(&o)["runs"].as_array().map(Vec::len), Some(0));
}
