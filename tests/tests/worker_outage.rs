//! A long-lived `trainer worker` and a registry that drops off the network: the worker
//! waits it out (retrying with a growing pause) and takes the work that appeared meanwhile;
//! an outage longer than `--registry-patience` ends the worker with an error naming it.
//! The outage is a real one: a TCP gate in front of MariaDB refuses and breaks connections.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tests::{bin, last_json, run_env, MysqlDb, TcpGate};

fn worker(registry: &str, patience: &str, cwd: &std::path::Path) -> Child {
    Command::new(bin("trainer"))
        .args(["--registry", registry, "worker", "--max-trials", "1"])
        .args(["--poll-secs", "0.2", "--registry-patience", patience])
        .args(["--no-bundle", "--json"])
        .env("RUST_LOG", "warn")
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting trainer worker")
}

/// Waits for `child` to end (killing it after `limit`).
fn finish(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let t0 = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if t0.elapsed() > limit {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the worker did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    waiter.join().unwrap().unwrap()
}

/// Creates the registry's tables, so that the worker's start is quick.
fn registry_ready(db: &MysqlDb, w: &std::path::Path) {
    let o = run_env(
        "trainer",
        &["--registry", &db.url(), "runs", "list"],
        &[],
        w,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_worker_waits_out_a_registry_outage_then_takes_the_trial_written_meanwhile() {
    let db = MysqlDb::create("edgecp_outage");
    let mut gate = TcpGate::start(&db.addr());
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let o = run_env(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", "datasets"],
        &[],
        w,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    registry_ready(&db, w);

    let child = worker(&db.url_through(&gate), "120", w);
    std::thread::sleep(Duration::from_secs(3)); // it polls an empty registry
    gate.cut();
    let cut = Instant::now();

    // meanwhile a sweep of one trial arrives (written straight to the server)
    let spec = format!(
        "experiment = \"outage\"\ndataset = \"{}\"\nmethod = \"grid\"\n\
         [base]\nepochs = 1\nsteps_per_epoch = 4\neval_every = 4\n\
         [grid]\n\"model.embedding_dim\" = [8]\n",
        w.join("datasets").display()
    );
    std::fs::write(w.join("spec.toml"), spec).unwrap();
    let o = run_env(
        "trainer",
        &["--registry", &db.url(), "sweep", "--spec", "spec.toml"],
        &[],
        w,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // longer than the pool's own 15 s of reconnecting, so that the worker sees the outage
    std::thread::sleep(Duration::from_secs(22).saturating_sub(cut.elapsed()));
    gate.restore();

    let o = finish(child, Duration::from_secs(240));
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("worker's log:\n{err}");
    assert!(o.status.success(), "{err}");
    assert!(err.contains("cannot reach the run registry"), "{err}");
    assert!(err.contains("answers again"), "{err}");
    assert_eq!(last_json(&o)["finished"], 1);
    assert_eq!(db.query("SELECT status FROM trials").trim(), "finished");
}

#[test]
fn a_worker_gives_up_when_the_registry_stays_away_longer_than_its_patience() {
    let db = MysqlDb::create("edgecp_outage");
    let mut gate = TcpGate::start(&db.addr());
    let work = tempfile::tempdir().unwrap();
    registry_ready(&db, work.path());

    let child = worker(&db.url_through(&gate), "3", work.path());
    std::thread::sleep(Duration::from_secs(3));
    let cut = Instant::now();
    gate.cut();
    let o = finish(child, Duration::from_secs(90));
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("worker's log:\n{err}");
    assert!(!o.status.success());
    assert!(
        err.contains("unreachable for") && err.contains("--registry-patience 3"),
        "{err}"
    );
    // it waited at least its patience, and not much longer than a pool timeout beyond it
    let waited = cut.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
}
