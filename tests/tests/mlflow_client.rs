//! Our MLflow REST client (`trainer::tracking::MlflowClient`) against a real MLflow 3.17.2
//! server (MariaDB backend store, S3 artifact root on s3s-fs, artifact proxy on).

use tests::{free_port, MlflowServer, MysqlDb, S3Server};
use trainer::tracking::mlflow::{MetricPoint, MAX_METRICS_PER_BATCH};
use trainer::tracking::{MlflowClient, MlflowError, RunStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_client_against_a_real_server() {
    let s3 = S3Server::start();
    s3.bucket("mlflow");
    // our client writes the S3 artifact root with the standard settings
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let db = MysqlDb::create("edgecp_mlclient");
    let server = MlflowServer::start(free_port(), &db, &s3, "s3://mlflow/");
    let c = MlflowClient::new(&server.url).unwrap();

    assert!(c.experiment_by_name("nope").await.unwrap().is_none());
    let e = c.get_or_create_experiment("client").await.unwrap();
    assert_eq!(
        c.get_or_create_experiment("client")
            .await
            .unwrap()
            .experiment_id,
        e.experiment_id
    );
    assert!(e.artifact_location.starts_with("s3://mlflow/"), "{e:?}");

    // three runs; the first gets more than one request's worth of everything
    let mut ids = vec![];
    for (i, score) in [0.3, 0.9, 0.6].iter().enumerate() {
        let run = c
            .create_run(
                &e.experiment_id,
                &format!("r{i}"),
                1_000 + i as i64,
                &[("k".into(), format!("{i}"))],
            )
            .await
            .unwrap();
        assert!(run.artifact_uri.starts_with("s3://mlflow/"), "{run:?}");
        let n = if i == 0 {
            2 * MAX_METRICS_PER_BATCH + 500
        } else {
            3
        };
        let metrics: Vec<MetricPoint> = (0..n)
            .map(|s| MetricPoint {
                key: "loss".into(),
                value: 1.0 / (s + 1) as f64,
                timestamp_ms: 5,
                step: s as i64,
            })
            .chain(std::iter::once(MetricPoint {
                key: "score".into(),
                value: *score,
                timestamp_ms: 5,
                step: 0,
            }))
            .collect();
        let params: Vec<(String, String)> = (0..if i == 0 { 150 } else { 2 })
            .map(|p| (format!("p{p:03}"), format!("v{p}")))
            .collect();
        c.log_batch(&run.run_id, &metrics, &params, &[("t".into(), "x".into())])
            .await
            .unwrap();
        ids.push(run.run_id);
    }
    let hist = c.metric_history(&ids[0], "loss").await.unwrap();
    assert_eq!(hist.len(), 2 * MAX_METRICS_PER_BATCH + 500);
    let mut steps: Vec<i64> = hist.iter().map(|m| m.step).collect();
    steps.sort();
    assert_eq!(steps, (0..2500).collect::<Vec<i64>>());
    let r0 = c.get_run(&ids[0]).await.unwrap();
    assert_eq!(r0.data.params.len(), 150);
    assert_eq!(r0.param("p149"), Some("v149"));
    assert_eq!(r0.tag("t"), Some("x"));

    // params are immutable: the server's refusal is named and not retried
    let err = c
        .log_batch(&ids[0], &[], &[("p000".into(), "changed".into())], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MlflowError::Api { code, status: 400, .. } if code == "INVALID_PARAMETER_VALUE"),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains(&server.url), "{err}");
    // too long for MLflow: refused before sending
    let long = "x".repeat(7000);
    assert!(c
        .log_batch(&ids[0], &[], &[("long".into(), long)], &[])
        .await
        .is_err());

    // search with order_by, and a filter
    let ordered = c
        .search_runs(
            std::slice::from_ref(&e.experiment_id),
            "",
            &["metrics.score DESC".into()],
        )
        .await
        .unwrap();
    let order: Vec<&str> = ordered.iter().map(|r| r.info.run_id.as_str()).collect();
    assert_eq!(
        order,
        vec![ids[1].as_str(), ids[2].as_str(), ids[0].as_str()]
    );
    let high = c
        .search_runs(
            std::slice::from_ref(&e.experiment_id),
            "metrics.score > 0.5",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(high.len(), 2);

    // end a run
    c.update_run(&ids[1], RunStatus::Finished, 9_999)
        .await
        .unwrap();
    let r1 = c.get_run(&ids[1]).await.unwrap();
    assert_eq!(r1.info.status, "FINISHED");
    assert_eq!(r1.info.end_time, Some(9_999));

    // artifacts straight to S3 (a 9 MB file goes multipart), listed by the server
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 9 << 20]).unwrap();
    c.upload_artifact(&r0.info.artifact_uri, "big.bin", &big)
        .await
        .unwrap();
    let files = c.list_artifacts(&ids[0], "").await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        (files[0].path.as_str(), files[0].file_size),
        ("big.bin", Some(9 << 20))
    );

    // and through the server's proxy for an mlflow-artifacts: experiment
    let px = c
        .get_or_create_experiment_at("proxied", Some("mlflow-artifacts:/proxied-exp"))
        .await
        .unwrap();
    let run = c.create_run(&px.experiment_id, "p", 1, &[]).await.unwrap();
    assert!(run.artifact_uri.starts_with("mlflow-artifacts:"), "{run:?}");
    let small = dir.path().join("notes.txt");
    std::fs::write(&small, "hello").unwrap();
    c.upload_artifact(&run.artifact_uri, "notes.txt", &small)
        .await
        .unwrap();
    let files = c.list_artifacts(&run.run_id, "").await.unwrap();
    assert_eq!(
        files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["notes.txt"]
    );

    // a server that is not there: a transient error naming it
    let gone = MlflowClient::new(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    let err = gone.get_or_create_experiment("x").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}
