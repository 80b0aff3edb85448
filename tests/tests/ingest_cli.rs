//! `trainer ingest` driven as a user would: real inputs, real output folders.

use tests::{data_dir, last_json, run};

#[test]
fn synthetic_ingest_writes_a_versioned_dataset_and_a_json_summary() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let args = [
        "ingest",
        "--source",
        "synthetic",
        "--out",
        dir,
        "--synthetic-tracks",
        "5",
        "--synthetic-frames",
        "4",
        "--json",
    ];
    let o = run("trainer", &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    let id = j["dataset_id"].as_str().unwrap();
    let splits = j["splits"].as_object().unwrap();
    let total: u64 = splits.values().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 43 * 5 * 4);
    for s in splits.values() {
        let h: u64 = s["class_histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(h, s["count"].as_u64().unwrap());
    }
    assert_eq!(
        std::fs::read_to_string(out.path().join("LATEST")).unwrap(),
        id
    );
    assert!(out.path().join(id).join("manifest.json").is_file());
    // Deterministic: the same command gives the same content id.
    let again = last_json(&run("trainer", &args));
    assert_eq!(again["dataset_id"], j["dataset_id"]);
}

#[test]
fn official_layout_ingest_counts_every_image_and_splits_by_track() {
    let root = data_dir().join("gtsrb-official-subset/GTSRB");
    let out = tempfile::tempdir().unwrap();
    let o = run(
        "trainer",
        &[
            "ingest",
            "--source",
            &format!("gtsrb:{}", root.display()),
            "--out",
            out.path().to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    let splits = j["splits"].as_object().unwrap();
    let total: u64 = splits.values().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 3870, "the subset holds 3 tracks x 43 classes");
    // 3 tracks per class: one for each split, so every class is in every split.
    for name in ["train", "calibration", "validation"] {
        assert_eq!(splits[name]["tracks"].as_u64().unwrap(), 43, "{name}");
    }
}

#[test]
fn bad_source_and_malformed_input_are_clear_errors() {
    let out = tempfile::tempdir().unwrap();
    let o = run(
        "trainer",
        &[
            "ingest",
            "--source",
            "png:/x",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected gtsrb:PATH"));

    // A class folder whose CSV has the wrong header.
    let src = tempfile::tempdir().unwrap();
    let cls = src.path().join("Final_Training/Images/00000");
    std::fs::create_dir_all(&cls).unwrap();
    std::fs::write(cls.join("GT-00000.csv"), "File;W;H\r\n").unwrap();
    let o = run(
        "trainer",
        &[
            "ingest",
            "--source",
            &format!("gtsrb:{}", src.path().display()),
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("GT-00000.csv"), "{err}");
    assert!(
        !out.path().join("LATEST").exists(),
        "a failed ingest must not publish a version"
    );
}
