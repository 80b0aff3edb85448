//! The README's first command, `trainer demo`, end to end with no data and no services
//! (on a short training budget here; the full demo is timed in docs/TRAINING.md).

use tests::{last_json, run};

#[test]
fn demo_trains_calibrates_and_prints_the_json_contract() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let o = run("trainer", &["demo", "--out", dir, "--steps", "3", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    for key in ["seconds", "nc_accuracy", "icp", "run_id", "artifacts"] {
        assert!(!j[key].is_null(), "missing {key} in {j}");
    }
    let icp = j["icp"].as_array().unwrap();
    assert_eq!(icp.len(), 199, "one row per epsilon of 0.001..=0.199");
    for row in icp {
        let f = |k: &str| row[k].as_f64().unwrap();
        let total = f("empty") + f("singleton") + f("multiple");
        assert!(
            (total - 1.0).abs() < 1e-9,
            "set-size fractions sum to {total}"
        );
        assert!((0.0..=1.0).contains(&f("error_rate")));
    }
    let sizes: Vec<f64> = icp
        .iter()
        .map(|r| r["mean_set_size"].as_f64().unwrap())
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[1] <= w[0] + 1e-12),
        "sets shrink as epsilon grows"
    );
    for a in j["artifacts"].as_array().unwrap() {
        let p = std::path::Path::new(a.as_str().unwrap());
        assert!(
            p.is_file() && p.metadata().unwrap().len() > 0,
            "{}",
            p.display()
        );
    }
    assert_eq!(j["training"]["steps"].as_u64(), Some(3));

    // The run was exported, signed and bundled; the bundle verifies with the printed key,
    // and a single changed byte makes `exporter verify` fail naming the file.
    let bundle = j["bundle"].as_str().expect("bundle in the JSON");
    let key = j["public_key"].as_str().expect("public_key in the JSON");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(bundle).join("manifest.json")).unwrap(),
    )
    .unwrap();
    // the calibration split's grouping and the label-free reference are recorded
    let cal = &manifest["icp"]["calibration"];
    assert_eq!(cal["grouped_by"], "track", "{manifest}");
    let groups = cal["groups"].as_u64().unwrap();
    assert!(
        groups >= 1 && groups <= manifest["icp"]["n_calibration"].as_u64().unwrap(),
        "{manifest}"
    );
    // the drift monitor tests the centroid distance (the trainer writes both kinds)
    assert_eq!(
        cal["label_free_scores"], "calibration_centroid_distance",
        "{manifest}"
    );
    let o = run("exporter", &["verify", bundle, "--key", key, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(last_json(&o)["valid"], true);
    let o = run("exporter", &["inspect", bundle]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("model.tflite"));
    // The agent serves the bundle; its drift experiment replays the demo's validation
    // images (as they are and shifted) through the online validity monitor.
    let data = format!("{dir}/datasets");
    let o = run(
        "edge-agent",
        &[
            "drift",
            "--bundle",
            bundle,
            "--key",
            key,
            "--data",
            &data,
            "--streams",
            "3",
            "--labels",
            "200",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = last_json(&o);
    // streams exchangeable by construction (calibration halves): one row per score
    let ex = d["exchangeable"].as_array().unwrap();
    assert_eq!(ex.len(), 2, "{d}");
    for r in ex {
        assert_eq!(r["streams"], 1000, "{r}");
        // Ville: at most delta = 0.01 of them in expectation; 25 or more of 1,000 would
        // happen by chance with probability below 1e-4
        assert!(r["alarms"].as_u64().unwrap() < 25, "{r}");
    }
    let shifts = d["shifts"].as_array().unwrap();
    let names: Vec<&str> = shifts
        .iter()
        .map(|r| r["shift"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["none", "dark-tracks", "darken", "rotate", "noise"]);
    for r in shifts {
        let alarms = r["alarms"].as_u64().unwrap();
        assert!(alarms <= 3, "{r}");
        let length = r["stream_length"].as_u64().unwrap();
        assert!((1..=200).contains(&length), "{r}");
        // the demo's bundle carries label-free calibration scores: that monitor ran too,
        // and reports like the labelled one
        assert_eq!(r["label_free_available"], true, "{r}");
        let free = r["label_free_alarms"].as_u64().unwrap();
        assert!(free <= 3, "{r}");
        match r["median_inputs_to_label_free_alarm"].as_u64() {
            Some(m) => assert!(free > 0 && (1..=length).contains(&m), "{r}"),
            None => assert_eq!(free, 0, "{r}"),
        }
        // both label-free scores are compared, the bundle's first
        assert_eq!(r["label_free_score"], "centroid_distance", "{r}");
        let kinds: Vec<&str> = r["label_free_scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["score"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["centroid_distance", "min_score"], "{r}");
        assert_eq!(
            r["label_free_scores"][0]["alarms"], r["label_free_alarms"],
            "{r}"
        );
        // ACI against static calibration at each default level
        let aci = r["aci"].as_array().unwrap();
        assert_eq!(aci.len(), 3, "{r}");
        for row in aci {
            for k in ["static_error_rate", "aci_error_rate"] {
                assert!((0.0..=1.0).contains(&row[k].as_f64().unwrap()), "{row}");
            }
        }
        assert!(
            (0.0..=1.0).contains(&r["error_rate"].as_f64().unwrap()),
            "{r}"
        );
        // an alarm says when it came, within the stream
        match r["median_labels_to_alarm"].as_u64() {
            Some(m) => assert!(alarms > 0 && (1..=200).contains(&m), "{r}"),
            None => assert_eq!(alarms, 0, "{r}"),
        }
    }
    let o = run(
        "edge-agent",
        &[
            "drift", "--bundle", bundle, "--key", key, "--data", &data, "--split", "bogus",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--split bogus"));

    let tflite = std::path::Path::new(bundle).join("model.tflite");
    let mut bytes = std::fs::read(&tflite).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&tflite, &bytes).unwrap();
    let o = run("exporter", &["verify", bundle, "--key", key]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("model.tflite") && err.contains("sha256"),
        "{err}"
    );

    // The run is in the demo's registry, finished, with its final metrics.
    let registry = format!("sqlite://{dir}/registry.db?mode=rwc");
    let run_id = j["run_id"].as_str().unwrap();
    let o = run(
        "trainer",
        &["--registry", &registry, "runs", "show", run_id, "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = last_json(&o);
    let text = shown.to_string();
    assert!(text.contains("\"finished\""), "{text}");
    assert!(text.contains("validation_nc_accuracy"), "{text}");
}

#[test]
fn bad_training_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trial.toml");
    std::fs::write(&cfg, "[optim]\nlearning_rate = 0.1\n").unwrap();
    let o = run(
        "trainer",
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            "/nonexistent",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("optim.learning_rate"), "{err}");

    let o = run(
        "trainer",
        &["train", "--set", "optim.lr=-1", "--data", "/nonexistent"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("optim.lr"), "{err}");
}
