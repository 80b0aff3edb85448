//! `shared::silhouette` against scikit-learn's `silhouette_score` / `silhouette_samples`
//! (Python, via `scripts/py/silhouette_ref.py`). Python is found through `EDGECP_PYTHON`,
//! else `scripts/pyenv.sh`; if neither works the tests fail (never pass silently).

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use shared::silhouette::{silhouette, silhouette_score, SilhouetteError};

/// (score, samples) from scikit-learn on the same f32 values (widened to f64 exactly).
fn sklearn(x: &[f32], dim: usize, labels: &[u16]) -> (f64, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("meta.json"),
        format!(r#"{{"n": {}, "dim": {dim}}}"#, labels.len()),
    )
    .unwrap();
    std::fs::write(
        d.join("x.f32"),
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(
        d.join("labels.u16"),
        labels
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = common::run_reference_script("silhouette_ref.py", d);
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let score = v["score"].as_f64().unwrap();
    let samples = std::fs::read(d.join("samples.f64"))
        .unwrap()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (score, samples)
}

/// Gaussian clusters of uneven sizes plus one singleton cluster; labels with gaps, in
/// shuffled order; optionally far from the origin (cancellation check).
fn clusters(
    seed: u64,
    n: usize,
    dim: usize,
    k: usize,
    spread: f64,
    offset: f64,
) -> (Vec<f32>, Vec<u16>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centre = Normal::new(0.0, spread).unwrap();
    let noise = Normal::new(0.0, 1.0).unwrap();
    let centres: Vec<f64> = (0..k * dim)
        .map(|_| centre.sample(&mut rng) + offset)
        .collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = if i == n / 2 {
            k // the singleton cluster
        } else {
            // uneven sizes: cluster j has weight j + 1
            let r = rng.random_range(0..k * (k + 1) / 2);
            let mut c = 0;
            let mut acc = 0;
            while acc + c < r {
                acc += c + 1;
                c += 1;
            }
            c
        };
        for t in 0..dim {
            let base = if c == k {
                offset + 3.0 * spread
            } else {
                centres[c * dim + t]
            };
            x.push((base + noise.sample(&mut rng)) as f32);
        }
        labels.push(c as u16 * 3 + 1); // gaps in the label values
    }
    (x, labels)
}

fn compare(x: &[f32], dim: usize, labels: &[u16]) {
    let ours = silhouette(x, dim, labels).unwrap();
    let (score, samples) = sklearn(x, dim, labels);
    assert!(
        (ours.score - score).abs() <= 1e-6,
        "silhouette {} vs scikit-learn {score} (diff {})",
        ours.score,
        (ours.score - score).abs()
    );
    let worst = ours
        .samples
        .iter()
        .zip(&samples)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-5,
        "per-sample silhouette differs from scikit-learn by up to {worst}"
    );
    // the singleton cluster's member is 0 in both
    let single = labels
        .iter()
        .position(|&l| labels.iter().filter(|&&m| m == l).count() == 1);
    if let Some(i) = single {
        assert_eq!(ours.samples[i], 0.0);
        assert_eq!(samples[i], 0.0);
    }
}

#[test]
fn silhouette_equals_sklearn_small() {
    let (x, labels) = clusters(1, 300, 16, 5, 2.0, 0.0);
    compare(&x, 16, &labels);
}

#[test]
fn silhouette_equals_sklearn_several_tiles_far_from_origin() {
    // > 256 points (several tiles, symmetric accumulation across tiles), data far from the
    // origin (|x|^2 + |y|^2 - 2 x.y cancels badly without centring)
    let (x, labels) = clusters(2, 700, 24, 7, 1.5, 40.0);
    compare(&x, 24, &labels);
}

#[test]
fn silhouette_equals_sklearn_with_duplicates_and_two_clusters() {
    let (mut x, mut labels) = clusters(3, 257, 3, 2, 0.5, 0.0);
    // exact duplicate points, one of them across clusters
    let dim = 3;
    for i in 0..10 {
        let src = x[i * dim..(i + 1) * dim].to_vec();
        x[(100 + i) * dim..(101 + i) * dim].copy_from_slice(&src);
    }
    labels[100] = labels[0];
    compare(&x, dim, &labels);
}

#[test]
fn silhouette_score_errors() {
    assert_eq!(
        silhouette_score(&[0.0; 6], 2, &[1, 1, 1]).unwrap_err(),
        SilhouetteError::TooFewClusters(1)
    );
    assert!(matches!(
        silhouette_score(&[0.0; 6], 2, &[1, 2, 3]),
        Err(SilhouetteError::TooManyClusters {
            clusters: 3,
            max: 2
        })
    ));
    assert!(matches!(
        silhouette_score(&[0.0; 5], 2, &[1, 2, 3]),
        Err(SilhouetteError::Shape { .. })
    ));
}
