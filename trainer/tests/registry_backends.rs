//! Run registry tests, each against both backends: SQLite in a temporary directory and
//! MySQL/MariaDB in a fresh database per test (`edgecp_test_<random>`, dropped afterwards).
//!
//! MariaDB must be reachable at `EDGECP_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`, a
//! URL without a database); the MySQL tests fail, not skip, when it is not: the project's test
//! script starts it.

#[allow(dead_code)] // the binary uses what these tests do not
#[path = "../src/registry/mod.rs"]
mod registry;
#[path = "../src/runs.rs"]
mod runs;

use std::time::Duration;

use registry::{
    Artifact, MetricOrder, NewRun, Registry, RegistryError, RunFilter, RunGuard, RunId, Status,
};
use sqlx::Connection;

/// A database for one test; a MySQL one is dropped when this is.
struct TestDb {
    url: String,
    mysql_admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

fn mysql_base() -> String {
    std::env::var("EDGECP_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
        .trim_end_matches('/')
        .to_string()
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!(
            "sqlite://{}/nested/registry.db?mode=rwc",
            dir.path().display()
        );
        TestDb {
            url,
            mysql_admin: None,
            _dir: Some(dir),
        }
    }

    async fn mysql() -> TestDb {
        registry::install_drivers();
        let base = mysql_base();
        let admin = format!("{base}/test");
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                "MariaDB/MySQL is not reachable at {admin} ({e}). The registry's MySQL tests need \
                 it: start MariaDB on 127.0.0.1:3306 (root, empty password), as the project's test \
                 script does, or point EDGECP_TEST_MYSQL at a server (mysql://USER[:PW]@HOST:PORT)"
            )
            });
        let name = format!("edgecp_test_{}", &registry::new_id()[12..]);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4"
        )))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE for the test");
        let _ = conn.close().await;
        TestDb {
            url: format!("{base}/{name}"),
            mysql_admin: Some((admin, name)),
            _dir: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.mysql_admin.take() else {
            return;
        };
        // Drop cannot await: a thread with its own runtime and connection drops the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = sqlx::AnyConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name}"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

fn new_run(experiment: &str, name: &str) -> NewRun {
    NewRun {
        experiment: experiment.into(),
        name: name.into(),
        config: format!("{{\"name\":\"{name}\",\"lr\":0.001}}"),
        seed: Some(u64::MAX - 7),
        dataset_id: Some("gtsrb-32-v1".into()),
        dataset_sha256: Some("ab".repeat(32)),
        code_version: None,
    }
}

async fn set_column(reg: &Registry, run: &RunId, column: &str, value: i64) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE runs SET {column} = ? WHERE id = ?"
    )))
    .bind(value)
    .bind(run.as_str())
    .execute(reg.pool())
    .await
    .expect("raw update");
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

// ---------------------------------------------------------------------------------------
// The tests, written once, instantiated for each backend at the bottom.

async fn round_trip(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    if reg.backend() == registry::Backend::Sqlite {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(reg.pool())
            .await
            .unwrap();
        assert_eq!(
            mode, "wal",
            "readers must not block a training run's writes"
        );
    }
    let run = reg.start_run(&new_run("signs", "first")).await.unwrap();
    assert_eq!(run.as_str().len(), 32);
    assert_eq!(reg.status(&run).await.unwrap(), Status::Running);

    reg.log_params(
        &run,
        &[
            ("lr", "0.001"),
            ("loss", "triplet"),
            ("klasse", "Höchstgeschwindigkeit"),
        ],
    )
    .await
    .unwrap();
    // The same value again is fine (idempotent), another value is refused.
    reg.log_params(&run, &[("lr", "0.001")]).await.unwrap();
    let conflict = reg.log_params(&run, &[("lr", "0.1")]).await.unwrap_err();
    assert!(
        matches!(conflict, RegistryError::ParamConflict { .. }),
        "{conflict}"
    );

    // 1,200 per-step values in one call: more than one multi-row INSERT chunk.
    let steps: Vec<(String, i64, f64)> = (0..600)
        .flat_map(|s| {
            [
                ("loss".to_string(), s, 1.0 / (s as f64 + 1.0)),
                ("train_silhouette".to_string(), s, s as f64 / 600.0),
            ]
        })
        .collect();
    reg.log_metrics(&run, &steps).await.unwrap();
    reg.log_final_metrics(
        &run,
        &[("validation_silhouette", 0.5), ("nc_accuracy", 0.9)],
    )
    .await
    .unwrap();
    // A final value logged again replaces the old one.
    reg.log_final_metrics(&run, &[("validation_silhouette", 0.75)])
        .await
        .unwrap();
    let art = Artifact {
        name: "weights.safetensors".into(),
        uri: "file:///tmp/runs/x/weights.safetensors".into(),
        sha256: "cd".repeat(32),
        bytes: 5_000_000_000,
        created_ms: 0,
    };
    reg.log_artifact(&run, &art).await.unwrap();
    reg.log_artifact(
        &run,
        &Artifact {
            bytes: 42,
            ..art.clone()
        },
    )
    .await
    .unwrap();
    reg.heartbeat(&run).await.unwrap();
    reg.finish_run(&run, Status::Finished).await.unwrap();

    let d = reg.run(&run).await.unwrap();
    assert_eq!(d.run.id, run);
    assert_eq!(d.run.experiment, "signs");
    assert_eq!(d.run.name, "first");
    assert_eq!(d.run.status, Status::Finished);
    assert_eq!(
        d.run.seed,
        Some(u64::MAX - 7),
        "u64 seeds survive the BIGINT column"
    );
    assert_eq!(d.run.dataset_id.as_deref(), Some("gtsrb-32-v1"));
    assert_eq!(d.run.dataset_sha256, Some("ab".repeat(32)));
    assert_eq!(d.run.code_version, registry::code_version());
    assert_eq!(d.run.pid, std::process::id() as i64);
    assert_eq!(d.run.host, registry::host_name());
    assert!(d.run.config.contains("\"lr\":0.001"));
    assert!(d.run.end_ms.is_some_and(|e| e >= d.run.start_ms));
    assert_eq!(d.params.len(), 3);
    assert_eq!(d.params["klasse"], "Höchstgeschwindigkeit");
    assert_eq!(d.metrics.len(), 2);
    assert_eq!(d.metrics["validation_silhouette"], 0.75);
    assert_eq!(d.metrics["nc_accuracy"], 0.9);
    assert_eq!(d.metric_histories, vec!["loss", "train_silhouette"]);
    assert_eq!(d.artifacts.len(), 1);
    assert_eq!(d.artifacts[0].bytes, 42);
    assert_eq!(d.artifacts[0].sha256, "cd".repeat(32));

    let hist = reg.metric_history(&run, "loss").await.unwrap();
    assert_eq!(hist.len(), 600);
    assert!(hist.windows(2).all(|w| w[0].step < w[1].step));
    assert_eq!(hist[0].value, 1.0);
    assert_eq!(hist[599].value, 1.0 / 600.0);
    assert!(reg.metric_history(&run, "nope").await.unwrap().is_empty());

    // The JSON of a run carries everything `trainer runs show --json` promises.
    let json: serde_json::Value = serde_json::to_value(&d).unwrap();
    assert_eq!(json["status"], "finished");
    assert_eq!(json["metrics"]["nc_accuracy"], 0.9);
    assert_eq!(json["artifacts"][0]["name"], "weights.safetensors");
    assert!(runs::format_show(&d).contains("validation_silhouette"));
    reg.close().await;
}

async fn list_and_best(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    let mut ids = Vec::new();
    // (name, experiment, final silhouette, how it ends)
    let plan: [(&str, &str, Option<f64>, Option<Status>); 7] = [
        ("r1", "e1", Some(0.5), Some(Status::Finished)),
        ("r2", "e1", Some(0.8), Some(Status::Finished)),
        ("r3", "e1", Some(0.9), Some(Status::Failed)),
        ("r4", "e1", Some(0.95), None),
        ("r5", "e1", Some(0.8), Some(Status::Finished)),
        ("r6", "e2", Some(0.99), Some(Status::Finished)),
        ("r7", "e1", None, Some(Status::Finished)),
    ];
    for (name, exp, sil, end) in plan {
        pause().await;
        let id = reg.start_run(&new_run(exp, name)).await.unwrap();
        if let Some(v) = sil {
            reg.log_final_metrics(&id, &[("validation_silhouette", v), ("other", -v)])
                .await
                .unwrap();
        }
        if let Some(status) = end {
            reg.finish_run(&id, status).await.unwrap();
        }
        ids.push(id);
    }
    let name_of = |s: &registry::RunSummary| s.run.name.clone();

    // best_run: finished only, experiment filter, both directions, deterministic tie-break.
    let best = reg
        .best_run(Some("e1"), "validation_silhouette", true)
        .await
        .unwrap();
    assert_eq!(
        best.as_ref().map(name_of).as_deref(),
        Some("r2"),
        "r5 ties with r2 but started later"
    );
    assert_eq!(best.unwrap().metrics["validation_silhouette"], 0.8);
    let worst = reg
        .best_run(Some("e1"), "validation_silhouette", false)
        .await
        .unwrap();
    assert_eq!(worst.map(|s| s.run.name).as_deref(), Some("r1"));
    let lowest_other = reg.best_run(Some("e1"), "other", false).await.unwrap();
    assert_eq!(lowest_other.map(|s| s.run.name).as_deref(), Some("r2"));
    let any = reg
        .best_run(None, "validation_silhouette", true)
        .await
        .unwrap();
    assert_eq!(any.map(|s| s.run.name).as_deref(), Some("r6"));
    assert!(reg
        .best_run(Some("e1"), "no_such_metric", true)
        .await
        .unwrap()
        .is_none());
    assert!(reg
        .best_run(Some("no_such_exp"), "validation_silhouette", true)
        .await
        .unwrap()
        .is_none());

    // list_runs: newest first by default.
    let all = reg.list_runs(&RunFilter::default()).await.unwrap();
    let names: Vec<String> = all.iter().map(name_of).collect();
    assert_eq!(names, ["r7", "r6", "r5", "r4", "r3", "r2", "r1"]);
    assert_eq!(all[1].metrics["validation_silhouette"], 0.99);
    assert!(all[0].metrics.is_empty());

    let filter = RunFilter {
        experiment: Some("e1".into()),
        status: Some(Status::Finished),
        limit: None,
        order_by: Some(MetricOrder {
            metric: "validation_silhouette".into(),
            higher_is_better: true,
        }),
    };
    let sorted: Vec<String> = reg
        .list_runs(&filter)
        .await
        .unwrap()
        .iter()
        .map(name_of)
        .collect();
    // Ties: the later start first in listings (newest), runs without the metric last.
    assert_eq!(sorted, ["r5", "r2", "r1", "r7"]);
    let limited = reg
        .list_runs(&RunFilter {
            limit: Some(2),
            status: Some(Status::Running),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.iter().map(name_of).collect::<Vec<_>>(), ["r4"]);
    let table = runs::format_list(&all, &["validation_silhouette".to_string()]);
    assert_eq!(table.lines().count(), 8, "{table}");
    assert!(table.contains("0.9900"), "{table}");

    // Id prefixes: a unique prefix resolves, a shared one is ambiguous, junk is not found.
    let id = &ids[0];
    assert_eq!(&reg.resolve_run(&id.as_str()[..20]).await.unwrap(), id);
    assert_eq!(
        &reg.resolve_run(&id.as_str().to_uppercase()).await.unwrap(),
        id
    );
    let err = reg.resolve_run(&id.as_str()[..3]).await.unwrap_err();
    assert!(matches!(err, RegistryError::AmbiguousRun { .. }), "{err}");
    let err = reg.resolve_run("zz%").await.unwrap_err();
    assert!(matches!(err, RegistryError::RunNotFound(_)), "{err}");
    let err = reg.resolve_run("ffffffff").await.unwrap_err();
    assert!(matches!(err, RegistryError::RunNotFound(_)), "{err}");

    // The CLI's entry point (synchronous: its own runtime) on the same URL; prints to stdout.
    let commands = [
        runs::RunsCommand::List {
            experiment: None,
            status: None,
            limit: 5,
            sort: Some("validation_silhouette".into()),
            min: false,
            metrics: vec![],
            json: true,
        },
        runs::RunsCommand::List {
            experiment: Some("e1".into()),
            status: Some(Status::Finished),
            limit: 5,
            sort: None,
            min: false,
            metrics: vec!["other".into()],
            json: false,
        },
        runs::RunsCommand::Show {
            run: id.as_str()[..16].to_string(),
            json: false,
        },
        runs::RunsCommand::Show {
            run: id.as_str().to_string(),
            json: true,
        },
    ];
    for cmd in commands {
        let url = url.to_string();
        tokio::task::spawn_blocking(move || runs::run(&cmd, &url))
            .await
            .unwrap()
            .unwrap();
    }
    let url2 = url.to_string();
    let err = tokio::task::spawn_blocking(move || {
        runs::run(
            &runs::RunsCommand::Show {
                run: "ffffffffff".into(),
                json: false,
            },
            &url2,
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
    reg.close().await;
}

async fn experiments_get_or_create(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.experiment("shared").await })
        })
        .collect();
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_ne!(reg.experiment("other").await.unwrap(), ids[0]);
    let err = reg.experiment(" ").await.unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)));
    reg.close().await;
}

async fn migrations_idempotent(url: &str) {
    let reg = Registry::open(url).await.expect("first open");
    let run = reg.start_run(&new_run("m", "kept")).await.unwrap();
    reg.finish_run(&run, Status::Finished).await.unwrap();
    reg.close().await;
    for _ in 0..2 {
        let reg = Registry::open(url).await.expect("reopen");
        let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            registry::MIGRATIONS_TABLE
        )))
        .fetch_one(reg.pool())
        .await
        .unwrap();
        assert_eq!(
            applied,
            registry::SCHEMA_VERSION,
            "each migration applied once"
        );
        assert_eq!(
            reg.status(&run).await.unwrap(),
            Status::Finished,
            "data survives"
        );
        reg.close().await;
    }
}

async fn newer_schema_refused(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (version, description, success, checksum, execution_time) \
         VALUES (?, 'from the future', TRUE, ?, 0)",
        registry::MIGRATIONS_TABLE
    )))
    .bind(registry::SCHEMA_VERSION + 1)
    .bind(vec![0u8; 48])
    .execute(reg.pool())
    .await
    .unwrap();
    reg.close().await;
    let err = Registry::open(url).await.unwrap_err();
    match &err {
        RegistryError::SchemaTooNew {
            found, supported, ..
        } => {
            assert_eq!(*found, registry::SCHEMA_VERSION + 1);
            assert_eq!(*supported, registry::SCHEMA_VERSION);
        }
        other => panic!("expected SchemaTooNew, got {other}"),
    }
    assert!(err.to_string().contains("newer"), "{err}");
}

async fn stale_runs_reaped(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    let silent = reg.start_run(&new_run("s", "no heartbeat")).await.unwrap();
    let orphan = reg.start_run(&new_run("s", "dead process")).await.unwrap();
    let alive = reg.start_run(&new_run("s", "alive")).await.unwrap();
    let done = reg.start_run(&new_run("s", "done")).await.unwrap();
    reg.finish_run(&done, Status::Finished).await.unwrap();

    set_column(
        &reg,
        &silent,
        "heartbeat_ms",
        registry::now_ms() - 3_600_000,
    )
    .await;
    set_column(&reg, &done, "heartbeat_ms", 0).await;
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = child.id() as i64;
    child.wait().unwrap();
    set_column(&reg, &orphan, "pid", dead_pid).await;

    let mut reaped = reg.reap_stale(Duration::from_secs(60)).await.unwrap();
    reaped.sort();
    let mut expected = vec![silent.clone(), orphan.clone()];
    expected.sort();
    assert_eq!(reaped, expected);
    assert_eq!(reg.status(&silent).await.unwrap(), Status::Killed);
    assert_eq!(reg.status(&orphan).await.unwrap(), Status::Killed);
    assert_eq!(reg.status(&alive).await.unwrap(), Status::Running);
    assert_eq!(
        reg.status(&done).await.unwrap(),
        Status::Finished,
        "finished runs stay"
    );
    assert!(reg
        .reap_stale(Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());

    // A killed run cannot be finished afterwards, and its heartbeat tells its owner.
    let err = reg.finish_run(&silent, Status::Finished).await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::InvalidTransition {
                from: Status::Killed,
                to: Status::Finished,
                ..
            }
        ),
        "{err}"
    );
    assert!(reg.heartbeat(&orphan).await.is_err());
    reg.heartbeat(&alive).await.unwrap();

    // Opening the registry reaps with the default limit.
    let old = reg.start_run(&new_run("s", "old")).await.unwrap();
    set_column(&reg, &old, "heartbeat_ms", 0).await;
    reg.close().await;
    let reg = Registry::open(url).await.unwrap();
    assert_eq!(reg.status(&old).await.unwrap(), Status::Killed);
    assert_eq!(reg.status(&alive).await.unwrap(), Status::Running);
    reg.close().await;
}

async fn status_transitions(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    let run = reg.start_run(&new_run("t", "once")).await.unwrap();
    let err = reg.finish_run(&run, Status::Running).await.unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
    reg.finish_run(&run, Status::Finished).await.unwrap();
    for again in [Status::Finished, Status::Failed, Status::Killed] {
        let err = reg.finish_run(&run, again).await.unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::InvalidTransition {
                    from: Status::Finished,
                    ..
                }
            ),
            "{err}"
        );
    }
    let failed = reg.start_run(&new_run("t", "fails")).await.unwrap();
    reg.finish_run(&failed, Status::Failed).await.unwrap();
    let err = reg.finish_run(&failed, Status::Finished).await.unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");

    let ghost = RunId("0123456789abcdef0123456789abcdef".into());
    for err in [
        reg.finish_run(&ghost, Status::Finished).await.unwrap_err(),
        reg.heartbeat(&ghost).await.unwrap_err(),
        reg.log_metrics(&ghost, &[("loss", 0, 1.0)])
            .await
            .unwrap_err(),
        reg.log_final_metrics(&ghost, &[("loss", 1.0)])
            .await
            .unwrap_err(),
        reg.log_params(&ghost, &[("a", "b")]).await.unwrap_err(),
        reg.run(&ghost).await.unwrap_err(),
    ] {
        assert!(matches!(err, RegistryError::RunNotFound(_)), "{err}");
    }
    let live = reg.start_run(&new_run("t", "nan")).await.unwrap();
    let err = reg
        .log_metrics(&live, &[("loss", 0, 1.0), ("loss", 1, f64::NAN)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NonFinite { step: Some(1), .. }),
        "{err}"
    );
    assert!(
        reg.metric_history(&live, "loss").await.unwrap().is_empty(),
        "nothing written"
    );
    reg.close().await;
}

async fn guarded_step(reg: &Registry, fail: bool) -> Result<RunId, String> {
    let guard = RunGuard::start(reg, &new_run("g", "guarded"))
        .await
        .map_err(|e| e.to_string())?;
    let id = guard.id().clone();
    if fail {
        // Early return through `?`: the guard is dropped unfinished.
        Err::<(), String>(format!("training of {id} diverged"))?;
    }
    guard
        .finish(Status::Finished)
        .await
        .map_err(|e| e.to_string())?;
    Ok(id)
}

async fn run_guard(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    let ok = guarded_step(&reg, false).await.unwrap();
    assert_eq!(reg.status(&ok).await.unwrap(), Status::Finished);

    let err = guarded_step(&reg, true).await.unwrap_err();
    let failed_id = RunId(err.split_whitespace().nth(2).unwrap().to_string());
    assert_eq!(reg.status(&failed_id).await.unwrap(), Status::Failed);

    // A panic while the guard is alive also marks the run failed.
    let reg2 = reg.clone();
    let panicked = tokio::spawn(async move {
        let guard = RunGuard::start(&reg2, &new_run("g", "panics"))
            .await
            .unwrap();
        let id = guard.id().clone();
        if !id.as_str().is_empty() {
            panic!("boom in run {id}");
        }
        guard.finish(Status::Finished).await.unwrap();
    })
    .await;
    assert!(panicked.is_err());
    let last = reg
        .list_runs(&RunFilter {
            experiment: Some("g".into()),
            limit: Some(1),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(last[0].run.name, "panics");
    assert_eq!(last[0].run.status, Status::Failed);

    // The heartbeat runs on its own thread even while this runtime's only thread is blocked.
    let run = reg.start_run(&new_run("g", "beats")).await.unwrap();
    set_column(&reg, &run, "heartbeat_ms", 0).await;
    let guard = RunGuard::adopt(&reg, run.clone(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(400));
    let beat = reg.run(&run).await.unwrap().run.heartbeat_ms;
    assert!(
        beat > registry::now_ms() - 10_000,
        "heartbeat advanced: {beat}"
    );
    guard.finish(Status::Finished).await.unwrap();
    // A finished run's heartbeat no longer moves.
    let after = reg.run(&run).await.unwrap().run;
    assert_eq!(after.status, Status::Finished);
    reg.close().await;
}

async fn concurrent_writers(url: &str) {
    // Two registries (as two processes would have) write to their own runs at once while a
    // third lists: no "database is locked", nothing lost.
    let a = Registry::open(url).await.expect("open a");
    let b = Registry::open(url).await.expect("open b");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let reg = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let guard = RunGuard::start(&reg, &new_run("busy", &format!("w{i}")))
                .await
                .unwrap();
            for step in 0..40 {
                let batch: Vec<(String, i64, f64)> = (0..10)
                    .map(|k| (format!("m{k}"), step, (step * k) as f64))
                    .collect();
                reg.log_metrics(guard.id(), &batch).await.unwrap();
                reg.log_final_metrics(guard.id(), &[("last_step", step as f64)])
                    .await
                    .unwrap();
            }
            let id = guard.id().clone();
            guard.finish(Status::Finished).await.unwrap();
            id
        }));
    }
    let reader = {
        let reg = a.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                reg.list_runs(&RunFilter::default()).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    reader.await.unwrap();
    for id in &ids {
        let d = a.run(id).await.unwrap();
        assert_eq!(d.run.status, Status::Finished);
        assert_eq!(d.metrics["last_step"], 39.0);
        assert_eq!(a.metric_history(id, "m3").await.unwrap().len(), 40);
    }
    a.close().await;
    b.close().await;
}

/// Set in the child process of `killed_process`: the registry URL to start a run in.
const CHILD_URL_ENV: &str = "EDGECP_REGISTRY_TEST_CHILD_URL";

/// Not a test of its own: the child process of `killed_process` (returns at once otherwise).
/// Starts a guarded run, says its id, and waits to be killed.
#[tokio::test]
async fn child_process_holding_a_run() {
    let Ok(url) = std::env::var(CHILD_URL_ENV) else {
        return;
    };
    let reg = Registry::open(&url).await.expect("child: open");
    let guard = RunGuard::start(&reg, &new_run("k", "to be killed"))
        .await
        .expect("child: start");
    reg.log_metrics(guard.id(), &[("loss", 0, 1.0)])
        .await
        .unwrap();
    println!("RUN_ID={}", guard.id());
    tokio::time::sleep(Duration::from_secs(120)).await;
    guard.finish(Status::Finished).await.unwrap();
}

async fn killed_process(url: &str) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_holding_a_run",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL_ENV, url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let id = stdout
        .lines()
        .map_while(|l| l.ok())
        .find_map(|l| l.split("RUN_ID=").nth(1).map(|id| id.trim().to_string()))
        .expect("child printed its run id");
    let run = RunId(id);
    let reg = Registry::open(url).await.unwrap();
    assert_eq!(reg.status(&run).await.unwrap(), Status::Running);
    child.kill().unwrap(); // SIGKILL: no destructor, no guard, no last words
    child.wait().unwrap();
    reg.close().await;
    // The next open (any `trainer` command) finds the process gone and marks the run killed.
    let reg = Registry::open(url).await.unwrap();
    let d = reg.run(&run).await.unwrap();
    assert_eq!(d.run.status, Status::Killed);
    assert!(d.run.end_ms.is_some());
    assert_eq!(d.metric_histories, ["loss"]);
    assert!(reg.finish_run(&run, Status::Finished).await.is_err());
    reg.close().await;
}

async fn bundles_recorded(url: &str) {
    let reg = Registry::open(url).await.expect("open");
    let mut b = registry::BundleRecord {
        model_id: "0123456789ab-cafef00d".into(),
        run_id: "0123456789abcdef0123456789abcdef".into(),
        format_version: 1,
        manifest_sha256: "ab".repeat(32),
        uri: "file:///store/models/0123456789ab-cafef00d".into(),
        public_key: "cd".repeat(32),
        created_ms: 1_700_000_000_000,
    };
    reg.record_bundle(&b).await.expect("record");
    let other = registry::BundleRecord {
        model_id: "fedcba987654-00000000".into(),
        run_id: "fedcba9876543210fedcba9876543210".into(),
        created_ms: 1_700_000_000_001,
        ..b.clone()
    };
    reg.record_bundle(&other).await.expect("record another");
    assert_eq!(
        reg.bundles(None).await.unwrap(),
        vec![other.clone(), b.clone()]
    );
    // the same model id again replaces the record
    b.uri = "s3://bucket/models/0123456789ab-cafef00d".into();
    reg.record_bundle(&b).await.expect("re-record");
    assert_eq!(reg.bundles(Some(&b.run_id)).await.unwrap(), vec![b.clone()]);
    reg.close().await;
}

fn new_sweep(name: &str, n: usize) -> registry::NewSweep {
    registry::NewSweep {
        name: name.into(),
        experiment: "sweeps".into(),
        dataset: "datasets".into(),
        spec: "method = \"grid\"".into(),
        trials: (0..n)
            .map(|i| registry::NewTrial {
                overrides: vec![("model.embedding_dim".into(), (8 << i).to_string())],
                config: format!("seed = {i}"),
            })
            .collect(),
    }
}

async fn trials_claimed_once(url: &str) {
    use registry::TrialStatus;
    let reg = Registry::open(url).await.expect("open");
    let sweep = reg
        .create_sweep(&new_sweep("grid-a", 6))
        .await
        .expect("sweep");
    let other = reg
        .create_sweep(&new_sweep("grid-b", 2))
        .await
        .expect("sweep");
    // names are unique
    let e = reg.create_sweep(&new_sweep("grid-a", 1)).await.unwrap_err();
    assert!(e.to_string().contains("\"grid-a\" exists"), "{e}");
    assert_eq!(reg.sweep_id("grid-a").await.unwrap(), Some(sweep.clone()));

    // concurrent claimers (each its own pool, as separate processes would be) never get
    // the same trial, and get them in order
    let mut tasks = vec![];
    for w in 0..4 {
        let url = url.to_string();
        let sweep = sweep.clone();
        tasks.push(tokio::spawn(async move {
            let reg = Registry::open_without_reaping(&url).await.expect("open");
            let mut got = vec![];
            while let Some(t) = reg
                .claim_trial(Some(&sweep), &format!("w{w}"), 60_000)
                .await
                .expect("claim")
            {
                got.push((t.idx, t.id, t.claim, t.config));
            }
            reg.close().await;
            got
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(
        all.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    assert_eq!(all[3].3, "seed = 3");
    // the other sweep is untouched
    let c = reg.trial_counts(Some(&other)).await.unwrap();
    assert_eq!((c.pending, c.running), (2, 0));
    let c = reg.trial_counts(Some(&sweep)).await.unwrap();
    assert_eq!((c.pending, c.running, c.done()), (0, 6, false));

    // only the holder of the claim renews, finishes or fails
    let (_, id0, claim0, _) = &all[0];
    assert!(reg.renew_trial(id0, claim0, 60_000).await.unwrap());
    assert!(!reg.renew_trial(id0, "not-the-claim", 60_000).await.unwrap());
    assert!(!reg
        .finish_trial(id0, "not-the-claim", "r", None)
        .await
        .unwrap());
    assert!(reg
        .finish_trial(id0, claim0, "run0", Some("model0"))
        .await
        .unwrap());
    assert!(
        !reg.finish_trial(id0, claim0, "run0", Some("model0"))
            .await
            .unwrap(),
        "finished twice"
    );
    let (_, id1, claim1, _) = &all[1];
    assert!(reg.fail_trial(id1, claim1, "boom").await.unwrap());

    // an expired lease is taken again; the old holder can no longer finish it
    let (_, id2, claim2, _) = &all[2];
    assert!(reg.renew_trial(id2, claim2, -1).await.unwrap()); // expire it now
    let again = reg
        .claim_trial(Some(&sweep), "w9", 60_000)
        .await
        .unwrap()
        .expect("the expired trial");
    assert_eq!(&again.id, id2);
    assert_eq!(again.attempts, 2);
    assert!(!reg.finish_trial(id2, claim2, "stale", None).await.unwrap());
    assert!(reg
        .finish_trial(id2, &again.claim, "run2", None)
        .await
        .unwrap());

    // a trial abandoned MAX_ATTEMPTS times is failed instead of handed out again
    let (_, id3, mut claim3, _) = all[3].clone();
    for attempt in 2..=registry::MAX_ATTEMPTS {
        assert!(reg.renew_trial(&id3, &claim3, -1).await.unwrap());
        let t = reg
            .claim_trial(Some(&sweep), "w9", 60_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((t.id.as_str(), t.attempts), (id3.as_str(), attempt));
        claim3 = t.claim;
    }
    assert!(reg.renew_trial(&id3, &claim3, -1).await.unwrap());
    assert!(reg
        .claim_trial(Some(&sweep), "w9", 60_000)
        .await
        .unwrap()
        .is_none());

    let rows = reg.trials(&sweep).await.unwrap();
    let status: Vec<TrialStatus> = rows.iter().map(|r| r.status).collect();
    use TrialStatus::*;
    assert_eq!(
        status,
        vec![Finished, Failed, Finished, Failed, Running, Running]
    );
    assert_eq!(rows[0].run_id.as_deref(), Some("run0"));
    assert_eq!(rows[0].model_id.as_deref(), Some("model0"));
    assert_eq!(rows[1].error.as_deref(), Some("boom"));
    assert!(rows[3].error.as_deref().unwrap().contains("abandoned"));
    assert_eq!(
        rows[0].overrides,
        vec![("model.embedding_dim".to_string(), "8".to_string())]
    );
    // any sweep: the other one's trials
    assert!(reg.claim_trial(None, "w9", 60_000).await.unwrap().is_some());
    reg.close().await;
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db.url).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::mysql().await;
                    super::$name(&db.url).await;
                }
            )*
        }
    };
}

both_backends!(
    round_trip,
    list_and_best,
    experiments_get_or_create,
    migrations_idempotent,
    newer_schema_refused,
    stale_runs_reaped,
    status_transitions,
    run_guard,
    concurrent_writers,
    killed_process,
    bundles_recorded,
    trials_claimed_once,
);

// ---------------------------------------------------------------------------------------
// URLs: backend-independent.

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    for url in [
        "postgres://localhost/db",
        "registry.db",
        "mysql://root@127.0.0.1:3306",
    ] {
        let err = Registry::open(url).await.unwrap_err();
        assert!(matches!(err, RegistryError::BadUrl { .. }), "{url}: {err}");
        assert!(err.to_string().contains("sqlite://"), "{err}");
    }
    // Nothing listens on port 1: a connection error that names the URL, password masked.
    let err = Registry::open("mysql://root:s3cret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("mysql://root:***@127.0.0.1:1/test"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    // A SQLite path that cannot be created.
    let err = Registry::open("sqlite:///proc/no/such/dir/registry.db?mode=rwc")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/proc/no/such/dir"), "{err}");
    // A SQLite file that is not a database.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let err = Registry::open(&format!("sqlite://{}", junk.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("junk.db"), "{err}");
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_schema() {
    let reg = Registry::open("sqlite::memory:").await.unwrap();
    let run = reg.start_run(&new_run("mem", "m")).await.unwrap();
    reg.log_final_metrics(&run, &[("acc", 0.5)]).await.unwrap();
    reg.finish_run(&run, Status::Finished).await.unwrap();
    let best = reg.best_run(Some("mem"), "acc", true).await.unwrap();
    assert_eq!(best.map(|b| b.run.id), Some(run));
}

#[test]
fn blocking_registry_from_sync_code() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/r.db?mode=rwc", dir.path().display());
    let reg = registry::BlockingRegistry::open(&url).unwrap();
    let guard = reg
        .block_on(RunGuard::start(reg.registry(), &new_run("sync", "s")))
        .unwrap();
    let id = guard.id().clone();
    reg.block_on(reg.registry().log_metrics(&id, &[("loss", 0, 0.5)]))
        .unwrap();
    drop(guard); // an early return in sync code: the run is marked failed
    assert_eq!(
        reg.block_on(reg.registry().status(&id)).unwrap(),
        Status::Failed
    );
}

#[test]
fn runs_cli_parses() {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: runs::RunsCommand,
    }
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "runs",
        "list",
        "--experiment",
        "e1",
        "--status",
        "finished",
        "--sort",
        "validation_silhouette",
        "--min",
        "--metrics",
        "a,b",
        "--json",
    ])
    .unwrap();
    match cli.cmd {
        runs::RunsCommand::List {
            status,
            min,
            metrics,
            json,
            ..
        } => {
            assert_eq!(status, Some(Status::Finished));
            assert!(min && json);
            assert_eq!(metrics, ["a", "b"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(Cli::try_parse_from(["runs", "list", "--status", "done"]).is_err());
    assert!(
        Cli::try_parse_from(["runs", "list", "--min"]).is_err(),
        "--min needs --sort"
    );
    let cli = Cli::try_parse_from(["runs", "show", "01a2", "--json"]).unwrap();
    assert!(matches!(
        cli.cmd,
        runs::RunsCommand::Show { json: true, .. }
    ));
}

#[test]
fn ids_are_time_ordered_hex() {
    let a = registry::new_id();
    std::thread::sleep(Duration::from_millis(2));
    let b = registry::new_id();
    assert_eq!(a.len(), 32);
    assert!(a
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert!(a < b);
    assert_eq!(
        registry::redact_url("mysql://u:pw@h:3306/db?ssl-mode=required"),
        "mysql://u:***@h:3306/db?ssl-mode=required"
    );
    assert_eq!(
        registry::redact_url("sqlite://runs/r.db"),
        "sqlite://runs/r.db"
    );
}
