//! Label-free scores: how unlike the calibration inputs an input is, with no label.
//!
//! Two kinds, both in `[0, 1]` (the drift monitor's counting bag bins that interval):
//!
//! - [`LabelFreeKind::MinScore`]: the nonconformity of the most conforming label,
//!   `min_y alpha(x, y)` ([`crate::icp::Ncm::label_free_score`]). For the ratio measures
//!   that is `d1 / d2`: it sees inputs that fall between classes, but an input that moves
//!   away from every class alike (darker, lower contrast) keeps its ratio.
//! - [`LabelFreeKind::CentroidDistance`]: the distance of the embedding to its nearest
//!   class centroid, `d1`, squashed by `d / (1 + d)` (monotone, so the test's ranks are
//!   those of `d1`). It sees where the embedding lies, not only which class is nearest:
//!   capture conditions that pull embeddings off every class move it.
//!
//! Each is calibrated by the same score on the calibration split (stored in the bundle's
//! reference file); neither can see a change of the labels given the inputs.

use super::IcpError;

/// Reference-file tensor of the calibration split's centroid distances (one per example,
/// calibration order): independent of the nonconformity measure.
pub const CENTROID_DISTANCE_TENSOR: &str = "calibration_centroid_distance";

/// Prefix of the per-measure min-score tensors (`calibration_label_free.<measure key>`).
pub const MIN_SCORE_PREFIX: &str = "calibration_label_free";

/// Which label-free score a bundle's drift monitor tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelFreeKind {
    MinScore,
    CentroidDistance,
}

impl LabelFreeKind {
    /// Every kind, in the exporter's order of preference.
    pub const ALL: [LabelFreeKind; 2] = [LabelFreeKind::CentroidDistance, LabelFreeKind::MinScore];

    /// Short name, as `/v1/model` and the logs show it.
    pub fn name(self) -> &'static str {
        match self {
            LabelFreeKind::MinScore => "min_score",
            LabelFreeKind::CentroidDistance => "centroid_distance",
        }
    }

    /// The reference-file tensor with this kind's calibration scores under measure `ncm_key`.
    pub fn tensor(self, ncm_key: &str) -> String {
        match self {
            LabelFreeKind::MinScore => format!("{MIN_SCORE_PREFIX}.{ncm_key}"),
            LabelFreeKind::CentroidDistance => CENTROID_DISTANCE_TENSOR.to_string(),
        }
    }

    /// The kind whose tensor under `ncm_key` is `name`, if any.
    pub fn of_tensor(name: &str, ncm_key: &str) -> Option<LabelFreeKind> {
        LabelFreeKind::ALL
            .into_iter()
            .find(|k| k.tensor(ncm_key) == name)
    }
}

/// The centroid-distance score: nearest class centroid, squashed into `[0, 1)`.
#[derive(Clone, Debug)]
pub struct CentroidDistance {
    centroids: Vec<f32>,
    dim: usize,
}

impl CentroidDistance {
    /// `centroids` is `C x dim`, row-major, finite, with at least one row.
    pub fn new(centroids: Vec<f32>, dim: usize) -> Result<CentroidDistance, IcpError> {
        if dim == 0 || centroids.is_empty() || !centroids.len().is_multiple_of(dim) {
            return Err(IcpError::Shape {
                what: "centroids (a non-empty multiple of the embedding size)",
                expected: dim.max(1) * (centroids.len() / dim.max(1)).max(1),
                got: centroids.len(),
            });
        }
        if centroids.iter().any(|v| !v.is_finite()) {
            return Err(IcpError::NonFinite { what: "centroids" });
        }
        Ok(CentroidDistance { centroids, dim })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The score of one embedding (`dim` values; a non-finite one scores 1, the strangest).
    pub fn score(&self, embedding: &[f32]) -> f64 {
        let mut best = f64::INFINITY;
        for c in self.centroids.chunks_exact(self.dim) {
            // f32 lanes accumulate fast; the sum of 128-odd squares keeps ~6 digits, and
            // the test only needs the order
            let d2: f32 = c
                .iter()
                .zip(embedding)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            best = best.min(f64::from(d2));
        }
        let d = best.sqrt();
        if d.is_finite() {
            d / (1.0 + d)
        } else {
            1.0
        }
    }

    /// The scores of `n x dim` embeddings.
    pub fn scores(&self, embeddings: &[f32]) -> Result<Vec<f64>, IcpError> {
        if !embeddings.len().is_multiple_of(self.dim) {
            return Err(IcpError::Shape {
                what: "embeddings (rows of the embedding size)",
                expected: embeddings.len().div_ceil(self.dim) * self.dim,
                got: embeddings.len(),
            });
        }
        Ok(embeddings
            .chunks_exact(self.dim)
            .map(|e| self.score(e))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_to_the_nearest_centroid_squashed_in_order() {
        let c = CentroidDistance::new(vec![0.0, 0.0, 3.0, 4.0], 2).unwrap();
        let s = c
            .scores(&[0.0, 0.0, 3.0, 4.0, 0.0, 1.0, 30.0, 40.0])
            .unwrap();
        assert_eq!(s[0], 0.0);
        assert_eq!(s[1], 0.0);
        assert!((s[2] - 0.5).abs() < 1e-12, "distance 1 -> 1/2: {}", s[2]);
        // (30, 40) is 45 from (3, 4): 45 / 46
        assert!((s[3] - 45.0 / 46.0).abs() < 1e-6, "{}", s[3]);
        assert!(s.iter().all(|v| (0.0..1.0).contains(v)));
        assert_eq!(c.score(&[f32::NAN, 0.0]), 1.0);
        assert_eq!(c.score(&[f32::INFINITY, 0.0]), 1.0);
    }

    #[test]
    fn bad_shapes_are_named() {
        assert!(CentroidDistance::new(vec![], 2).is_err());
        assert!(CentroidDistance::new(vec![1.0, 2.0, 3.0], 2).is_err());
        assert!(CentroidDistance::new(vec![1.0, 2.0], 0).is_err());
        assert!(CentroidDistance::new(vec![1.0, f32::NAN], 2).is_err());
        let c = CentroidDistance::new(vec![1.0, 2.0], 2).unwrap();
        let e = c.scores(&[1.0, 2.0, 3.0]).unwrap_err().to_string();
        assert!(e.contains("embeddings"), "{e}");
    }

    #[test]
    fn tensor_names_round_trip() {
        for k in [LabelFreeKind::MinScore, LabelFreeKind::CentroidDistance] {
            assert_eq!(LabelFreeKind::of_tensor(&k.tensor("nc"), "nc"), Some(k));
        }
        assert_eq!(
            LabelFreeKind::MinScore.tensor("knn40"),
            "calibration_label_free.knn40"
        );
        assert_eq!(
            LabelFreeKind::of_tensor("calibration_label_free.knn40", "nc"),
            None
        );
        assert_eq!(LabelFreeKind::of_tensor("centroids", "nc"), None);
    }
}
