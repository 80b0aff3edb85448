//! `trainer best`: three short runs in two experiments of one registry; the best by a
//! validation metric is the one with the highest (or lowest) final value among that
//! experiment's finished runs, it comes with its bundle, and test metrics are refused.

use tests::{last_json, run};

fn train(registry: &str, data: &str, experiment: &str, seed: &str, dir: &str) -> String {
    let o = run(
        "trainer",
        &[
            "--registry",
            registry,
            "train",
            "--data",
            data,
            "--experiment",
            experiment,
            "--artifacts",
            dir,
            "--set",
            "epochs=1",
            "--set",
            "steps_per_epoch=3",
            "--set",
            "eval_every=3",
            "--set",
            &format!("seed={seed}"),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    last_json(&o)["run_id"].as_str().unwrap().to_string()
}

#[test]
fn best_picks_by_validation_metric_within_the_experiment() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().to_str().unwrap();
    let data = format!("{w}/data");
    let o = run(
        "trainer",
        &["ingest", "--source", "synthetic", "--out", &data],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let registry = format!("sqlite://{w}/registry.db?mode=rwc");
    let artifacts = format!("{w}/artifacts");
    let a = train(&registry, &data, "sweep", "1", &artifacts);
    let b = train(&registry, &data, "sweep", "2", &artifacts);
    let other = train(&registry, &data, "other", "3", &artifacts);

    let metric = "validation_silhouette";
    let value = |id: &str| -> f64 {
        let o = run(
            "trainer",
            &["--registry", &registry, "runs", "show", id, "--json"],
        );
        assert!(o.status.success());
        last_json(&o)["metrics"][metric].as_f64().unwrap()
    };
    let (va, vb) = (value(&a), value(&b));
    assert_ne!(va, vb, "two seeds gave the same silhouette");
    let (hi, lo) = if va > vb { (&a, &b) } else { (&b, &a) };

    let best = |extra: &[&str]| {
        let mut args = vec![
            "--registry",
            &registry,
            "best",
            "--metric",
            metric,
            "-e",
            "sweep",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = run("trainer", &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        last_json(&o)
    };
    let j = best(&[]);
    assert_eq!(j["run"]["id"].as_str(), Some(hi.as_str()), "{j}");
    assert_eq!(j["value"].as_f64(), Some(va.max(vb)));
    assert!(j["bundle"].is_null(), "no bundle was made yet: {j}");
    assert_eq!(best(&["--min"])["run"]["id"].as_str(), Some(lo.as_str()));

    // the best run's bundle, once recorded, comes with it
    let o = run("exporter", &["keygen", "--out", &format!("{w}/keys")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(
        "exporter",
        &[
            "--registry",
            &registry,
            "bundle",
            "--run",
            hi,
            "--key",
            &format!("{w}/keys/signing.key"),
            "--out",
            &format!("{w}/bundles"),
            "--store",
            &format!("{w}/store"),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model_id = last_json(&o)["model_id"].as_str().unwrap().to_string();
    assert_eq!(
        best(&[])["bundle"]["model_id"].as_str(),
        Some(model_id.as_str())
    );

    // every experiment: still a finished run with the metric, and `other` is a candidate
    let o = run(
        "trainer",
        &[
            "--registry",
            &registry,
            "best",
            "--metric",
            metric,
            "--json",
        ],
    );
    assert!(o.status.success());
    let all_best = last_json(&o)["run"]["id"].as_str().unwrap().to_string();
    assert!([&a, &b, &other].contains(&&all_best));

    // choosing on test data, an unknown metric, an unknown experiment: clear errors
    let o = run(
        "trainer",
        &[
            "--registry",
            &registry,
            "best",
            "--metric",
            "test_silhouette",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("validation"));
    let o = run(
        "trainer",
        &[
            "--registry",
            &registry,
            "best",
            "--metric",
            "validation_nope",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("validation_nope"));
    let o = run(
        "trainer",
        &["--registry", &registry, "best", "-e", "missing"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"missing\""));
}
