//! `trainer sweep` writes 9 trials to a MariaDB registry; 3 `trainer worker` processes claim
//! them (`SELECT ... FOR UPDATE SKIP LOCKED` with a lease); one worker is killed with SIGKILL
//! while it trains. Every trial must complete exactly once: finished, with exactly one
//! finished run and a signed bundle, the killed worker's trial taken again after its lease
//! expired.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::{bin, last_json, run_env, MysqlDb};

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("a worker did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn nine_trials_three_workers_one_killed_every_trial_exactly_once() {
    let db = MysqlDb::create("edgecp_sweep");
    let registry = db.url();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    let o = run_env(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", "datasets"],
        &[],
        w,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_env("exporter", &["keygen", "--out", "keys"], &[], w);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spec = format!(
        "experiment = \"kill-test\"\ndataset = \"{}\"\nmethod = \"grid\"\n\
         [base]\nepochs = 1\nsteps_per_epoch = 6\neval_every = 6\n\
         [grid]\n\"model.embedding_dim\" = [8, 16, 32]\n\"optim.lr\" = [0.001, 0.002, 0.003]\n",
        w.join("datasets").display()
    );
    std::fs::write(w.join("spec.toml"), spec).unwrap();
    let o = run_env(
        "trainer",
        &[
            "--registry",
            &registry,
            "sweep",
            "--spec",
            "spec.toml",
            "--name",
            "kill9",
            "--json",
        ],
        &[],
        w,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(last_json(&o)["trials"].as_array().map(Vec::len), Some(9));
    // the same name again is refused, naming it
    let o = run_env(
        "trainer",
        &[
            "--registry",
            &registry,
            "sweep",
            "--spec",
            "spec.toml",
            "--name",
            "kill9",
        ],
        &[],
        w,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"kill9\" exists"));

    let start_worker = || {
        Command::new(bin("trainer"))
            .args(["--registry", &registry, "worker", "--sweep", "kill9"])
            .args([
                "--exit-when-done",
                "--lease-secs",
                "4",
                "--poll-secs",
                "0.3",
            ])
            .args(["--key", "keys/signing.key", "--bundles", "bundle-store"])
            .args(["--artifacts", "artifacts", "--json"])
            .env("RUST_LOG", "warn")
            .current_dir(w)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut victim = start_worker();
    let mut others = [start_worker(), start_worker()];

    // kill the victim while it holds a trial
    let t0 = Instant::now();
    let held = loop {
        let row = db.query(&format!(
            "SELECT id FROM trials WHERE status = 'running' AND worker LIKE '%:{}'",
            victim.id()
        ));
        if let Some(id) = row.lines().next() {
            break id.trim().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the victim never took a trial"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(700));
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();

    for o in &mut others {
        let status = wait_with_timeout(o, Duration::from_secs(1200));
        let mut err = String::new();
        use std::io::Read;
        o.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "a worker failed: {err}");
    }

    // every trial finished exactly once, with a run and a bundle
    let rows =
        db.query("SELECT idx, status, attempts, run_id, model_id, id FROM trials ORDER BY idx");
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 9, "{rows:?}");
    let mut runs = std::collections::BTreeSet::new();
    for r in &rows {
        assert_eq!(r[1], "finished", "{r:?}");
        assert!(r[3] != "NULL" && r[4] != "NULL", "{r:?}");
        assert!(runs.insert(r[3].to_string()), "run {} counted twice", r[3]);
    }
    let taken_again = rows.iter().find(|r| r[5] == held).unwrap();
    assert!(
        taken_again[2].parse::<i64>().unwrap() >= 2,
        "the killed worker's trial was not claimed again: {taken_again:?}"
    );

    // opening the registry reaps the killed worker's run (its pid is gone): then exactly
    // the 9 trial runs are finished and nothing is left running
    let o = run_env(
        "trainer",
        &["--registry", &registry, "runs", "list", "--json"],
        &[],
        w,
    );
    assert!(o.status.success());
    let by_status = db.query("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status");
    let finished: i64 = by_status
        .lines()
        .find_map(|l| l.strip_prefix("finished\t"))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0);
    assert_eq!(finished, 9, "{by_status}");
    assert!(!by_status.contains("running"), "{by_status}");
    let linked = db.query(
        "SELECT COUNT(*) FROM trials t JOIN runs r ON r.id = t.run_id \
         JOIN bundles b ON b.model_id = t.model_id AND b.run_id = t.run_id \
         WHERE r.status = 'finished'",
    );
    assert_eq!(linked.trim(), "9");
    // the bundles were uploaded where the workers were told
    let store = w.join("bundle-store");
    assert!(store.is_dir());

    // `sweep --show` reports the same
    let o = run_env(
        "trainer",
        &[
            "--registry",
            &registry,
            "sweep",
            "--show",
            "kill9",
            "--json",
        ],
        &[],
        w,
    );
    let j = last_json(&o);
    let trials = j["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 9);
    assert!(trials.iter().all(|t| t["status"] == "finished"));
}
