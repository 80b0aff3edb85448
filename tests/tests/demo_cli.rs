//! The README's first command, `trainer demo`, end to end with no data and no services.

use tests::{last_json, run};

#[test]
fn demo_runs_offline_and_prints_the_icp_table_as_json() {
    let out = tempfile::tempdir().unwrap();
    let o = run(
        "trainer",
        &["demo", "--out", out.path().to_str().unwrap(), "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
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
    // Larger epsilon never gives larger sets.
    let sizes: Vec<f64> = icp
        .iter()
        .map(|r| r["mean_set_size"].as_f64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[1] <= w[0] + 1e-12));
    let acc = j["nc_accuracy"].as_f64().unwrap();
    assert!(
        acc > 1.0 / 43.0,
        "nearest centroid beats chance even untrained: {acc}"
    );
    assert!(out.path().join("report.json").is_file());
    assert!(j["seconds"].as_f64().unwrap() < 300.0);
}
