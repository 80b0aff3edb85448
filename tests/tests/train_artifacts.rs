//! `trainer train --artifacts file:///...`: the run's files go to the location given as a
//! URL, and the registry's record of each (URI, sha256, size) matches what is there.

use tests::{last_json, run};

#[test]
fn artifacts_at_a_file_url_match_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let data = format!("{dir}/datasets");
    let o = run(
        "trainer",
        &[
            "ingest",
            "--source",
            "synthetic",
            "--out",
            &data,
            "--synthetic-tracks",
            "8",
            "--synthetic-frames",
            "3",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let registry = format!("sqlite://{dir}/registry.db?mode=rwc");
    let location = format!("file://{dir}/x");
    let o = run(
        "trainer",
        &[
            "--registry",
            &registry,
            "train",
            "--data",
            &data,
            "--artifacts",
            &location,
            "--set",
            "epochs=1",
            "--set",
            "steps_per_epoch=2",
            "--set",
            "eval_every=2",
            "--set",
            "checkpoint_every=2",
            "--set",
            "eval_train_per_class=5",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run_id = last_json(&o)["run_id"].as_str().unwrap().to_string();

    let o = run(
        "trainer",
        &["--registry", &registry, "runs", "show", &run_id, "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = last_json(&o);
    let artifacts = shown["artifacts"].as_array().unwrap();
    let names: Vec<&str> = artifacts
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for name in [
        "weights",
        "reference",
        "calibration_plot",
        "training_curves",
        "embedding_projection",
        "report",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let run_folder = std::fs::canonicalize(tmp.path().join("x").join(&run_id)).unwrap();
    for a in artifacts {
        let uri = a["uri"].as_str().unwrap();
        let path = uri
            .strip_prefix("file://")
            .unwrap_or_else(|| panic!("not a file URL: {uri}"));
        let path = std::path::Path::new(path);
        assert_eq!(path.parent(), Some(run_folder.as_path()), "{uri}");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!(a["bytes"].as_u64(), Some(bytes.len() as u64), "{uri}");
        assert_eq!(
            a["sha256"].as_str(),
            Some(shared::store::sha256_hex(&bytes).as_str()),
            "{uri}"
        );
    }
}
