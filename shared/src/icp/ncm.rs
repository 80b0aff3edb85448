//! Nonconformity measures on embeddings, scored for every class at once.
//!
//! For a batch of `n` embeddings a measure writes an `n x C` row-major matrix whose entry
//! `(i, y)` is `alpha(x_i, y)` (DESIGN.md, "ICP, precisely"):
//! - nearest centroid: `d(f(x), mu_y) / min_{c != y} d(f(x), mu_c)`;
//! - k-NN: the number of the k nearest proper-training embeddings whose label is not y
//!   (nearest = smallest Euclidean distance, ties broken by the lower reference index);
//! - 1-NN ratio: `d(nearest of class y) / d(nearest of any other class)`.
//!
//! Distances are Euclidean. Ratios follow one convention wherever a denominator vanishes:
//! `0/0 = 1` (equidistant) and `x/0 = +inf` for `x > 0`; a measure never yields NaN.
//!
//! Arithmetic: centroid distances are direct f32 differences (`sum (x_t - mu_t)^2`), square
//! roots and ratios in f64. k-NN and 1-NN ratio rank references by `||r||^2 - 2 q.r`
//! (f32 gemm tiles, the query norm added in f64 where a distance is needed). All of it is
//! exact for small-integer data, which the reference tests use to compare bit for bit with
//! a brute-force f64 implementation.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::distance::{gram, min_key, TopK, QUERY_BLOCK, REF_TILE};
use super::simd::{self, all_finite, centroid_squared_distances, row_squared_norms, CLASS_BLOCK};
use super::IcpError;

/// Which nonconformity measure to use (serialisable configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NcmKind {
    /// `d(x, mu_y) / min_{c != y} d(x, mu_c)` with class centroids `mu`.
    NearestCentroid,
    /// Number of the `k` nearest proper-training embeddings whose label differs from y.
    Knn { k: usize },
    /// `d(nearest of class y) / d(nearest of any other class)`.
    NearestNeighbourRatio,
}

impl NcmKind {
    /// The reference research code's k-NN measure (k = 40).
    pub const KNN40: NcmKind = NcmKind::Knn { k: 40 };

    /// Short human-readable name.
    pub fn name(&self) -> &'static str {
        match self {
            NcmKind::NearestCentroid => "nearest centroid",
            NcmKind::Knn { .. } => "k-NN",
            NcmKind::NearestNeighbourRatio => "1-NN ratio",
        }
    }

    /// The measure's key in files: `nearest_centroid`, `knn<k>`, `nn_ratio` (the suffix of a
    /// run's and a bundle's `calibration_scores.<key>` tensors, docs/BUNDLE.md).
    pub fn key(&self) -> String {
        match self {
            NcmKind::NearestCentroid => "nearest_centroid".into(),
            NcmKind::Knn { k } => format!("knn{k}"),
            NcmKind::NearestNeighbourRatio => "nn_ratio".into(),
        }
    }
}

#[derive(Clone, Debug)]
enum Model {
    Centroids {
        /// C x dim, row-major.
        centroids: Vec<f32>,
        /// transposed and padded: `ct[t * cpad + c]`, cpad = C rounded up to CLASS_BLOCK
        ct: Vec<f32>,
        cpad: usize,
    },
    Knn {
        k: usize,
        refs: Vec<f32>,
        norms: Vec<f32>,
        labels: Vec<u16>,
    },
    NnRatio {
        /// References grouped by class: class c occupies rows offsets[c]..offsets[c+1].
        refs: Vec<f32>,
        norms: Vec<f32>,
        offsets: Vec<usize>,
    },
}

/// A fitted nonconformity measure.
#[derive(Clone, Debug)]
pub struct Ncm {
    kind: NcmKind,
    dim: usize,
    n_classes: usize,
    model: Model,
}

/// Per-task buffers of the block scorers (allocated once per block task, never per sample).
#[derive(Clone, Debug, Default)]
pub(crate) struct Scratch {
    tile: Vec<f32>,
    keys: Vec<f32>,
    idx: Vec<u32>,
    lens: Vec<usize>,
    mins: Vec<f32>,
    dist: Vec<f64>,
    counts: Vec<u32>,
    sq: Vec<f32>,
}

pub(crate) fn check_labels(labels: &[u16], n_classes: usize) -> Result<(), IcpError> {
    match labels.iter().position(|&l| usize::from(l) >= n_classes) {
        Some(index) => Err(IcpError::LabelOutOfRange {
            index,
            label: labels[index],
            n_classes,
        }),
        None => Ok(()),
    }
}

/// `num / den` with `0/0 = 1`, `inf/inf = 1` and `x/0 = +inf` (for `num, den >= 0`).
#[inline(always)]
pub fn distance_ratio(num: f64, den: f64) -> f64 {
    // select form (no branches) so that loops over classes vectorise; x/0 = +inf for
    // x > 0 already holds in IEEE arithmetic
    let q = num / den;
    if num == den {
        1.0
    } else {
        q
    }
}

/// Writes `out[y] = d[y] / min_{c != y} d[c]` (see [`distance_ratio`]).
#[inline(always)]
fn ratio_scores(d: &[f64], out: &mut [f64]) {
    let (mut i1, mut m1, mut m2) = (0usize, f64::INFINITY, f64::INFINITY);
    for (c, &v) in d.iter().enumerate() {
        if v < m1 {
            m2 = m1;
            m1 = v;
            i1 = c;
        } else if v < m2 {
            m2 = v;
        }
    }
    for (o, &v) in out.iter_mut().zip(d) {
        *o = distance_ratio(v, m1);
    }
    out[i1] = distance_ratio(d[i1], m2);
}

impl Ncm {
    /// Fits a measure on proper-training embeddings (`labels.len()` rows of `dim` f32).
    /// Nearest centroid and 1-NN ratio need every class `0..n_classes` to be present.
    pub fn fit(
        kind: NcmKind,
        embeddings: &[f32],
        labels: &[u16],
        dim: usize,
        n_classes: usize,
    ) -> Result<Self, IcpError> {
        if n_classes < 2 {
            return Err(IcpError::TooFewClasses(n_classes));
        }
        check_rows("proper-training embeddings", embeddings, dim, labels.len())?;
        if labels.is_empty() {
            return Err(IcpError::EmptyTraining);
        }
        check_labels(labels, n_classes)?;
        if !all_finite(embeddings) {
            return Err(IcpError::NonFinite {
                what: "proper-training embeddings",
            });
        }
        let mut counts = vec![0usize; n_classes];
        for &l in labels {
            counts[usize::from(l)] += 1;
        }
        let need_all = !matches!(kind, NcmKind::Knn { .. });
        if need_all {
            if let Some(class) = counts.iter().position(|&c| c == 0) {
                return Err(IcpError::EmptyTrainingClass {
                    class,
                    measure: kind.name(),
                });
            }
        }
        let model = match kind {
            NcmKind::NearestCentroid => {
                let mut sums = vec![0.0f64; n_classes * dim];
                for (row, &l) in embeddings.chunks_exact(dim).zip(labels) {
                    let s = &mut sums[usize::from(l) * dim..(usize::from(l) + 1) * dim];
                    for (a, &v) in s.iter_mut().zip(row) {
                        *a += f64::from(v);
                    }
                }
                let centroids = sums
                    .chunks_exact(dim)
                    .zip(&counts)
                    .flat_map(|(s, &c)| s.iter().map(move |v| (v / c as f64) as f32))
                    .collect();
                centroid_model(centroids, dim, n_classes)
            }
            NcmKind::Knn { k } => {
                if k == 0 || k > labels.len() || labels.len() > u32::MAX as usize {
                    return Err(IcpError::InvalidK {
                        k,
                        n_references: labels.len(),
                    });
                }
                Model::Knn {
                    k,
                    refs: embeddings.to_vec(),
                    norms: row_squared_norms(embeddings, dim),
                    labels: labels.to_vec(),
                }
            }
            NcmKind::NearestNeighbourRatio => {
                let mut order: Vec<usize> = (0..labels.len()).collect();
                order.sort_by_key(|&i| labels[i]);
                let mut refs = Vec::with_capacity(embeddings.len());
                for &i in &order {
                    refs.extend_from_slice(&embeddings[i * dim..(i + 1) * dim]);
                }
                let mut offsets = vec![0usize; n_classes + 1];
                for c in 0..n_classes {
                    offsets[c + 1] = offsets[c] + counts[c];
                }
                let norms = row_squared_norms(&refs, dim);
                Model::NnRatio {
                    refs,
                    norms,
                    offsets,
                }
            }
        };
        Ok(Ncm {
            kind,
            dim,
            n_classes,
            model,
        })
    }

    /// A nearest-centroid measure from given centroids (`n_classes x dim`, e.g. from a bundle).
    pub fn from_centroids(
        centroids: Vec<f32>,
        dim: usize,
        n_classes: usize,
    ) -> Result<Self, IcpError> {
        if n_classes < 2 {
            return Err(IcpError::TooFewClasses(n_classes));
        }
        check_rows("centroids", &centroids, dim, n_classes)?;
        if !all_finite(&centroids) {
            return Err(IcpError::NonFinite { what: "centroids" });
        }
        Ok(Ncm {
            kind: NcmKind::NearestCentroid,
            dim,
            n_classes,
            model: centroid_model(centroids, dim, n_classes),
        })
    }

    pub fn kind(&self) -> NcmKind {
        self.kind
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Class centroids (`n_classes x dim`) of a nearest-centroid measure.
    pub fn centroids(&self) -> Option<&[f32]> {
        match &self.model {
            Model::Centroids { centroids, .. } => Some(centroids),
            _ => None,
        }
    }

    /// Reference embeddings and labels of a k-NN measure (in the order given to `fit`).
    pub fn references(&self) -> Option<(&[f32], &[u16])> {
        match &self.model {
            Model::Knn { refs, labels, .. } => Some((refs, labels)),
            _ => None,
        }
    }

    /// Number of rows in `embeddings`, after checking its shape and finiteness.
    pub(crate) fn check_queries(&self, embeddings: &[f32]) -> Result<usize, IcpError> {
        if !embeddings.len().is_multiple_of(self.dim) {
            return Err(IcpError::Shape {
                what: "embedding values (a multiple of the embedding dimension)",
                expected: embeddings.len() / self.dim * self.dim,
                got: embeddings.len(),
            });
        }
        if !simd::dispatch(
            #[inline(always)]
            || all_finite(embeddings),
        ) {
            return Err(IcpError::NonFinite { what: "embeddings" });
        }
        Ok(embeddings.len() / self.dim)
    }

    /// Nonconformity scores of every class for every embedding: `n x C`, row-major.
    pub fn scores(&self, embeddings: &[f32]) -> Result<Vec<f64>, IcpError> {
        let n = self.check_queries(embeddings)?;
        let mut out = vec![0.0; n * self.n_classes];
        self.scores_unchecked(embeddings, &mut out);
        Ok(out)
    }

    /// As [`Ncm::scores`], into a caller's buffer of `n x C` values.
    pub fn scores_into(&self, embeddings: &[f32], out: &mut [f64]) -> Result<(), IcpError> {
        let n = self.check_queries(embeddings)?;
        if out.len() != n * self.n_classes {
            return Err(IcpError::Shape {
                what: "score buffer (rows x classes)",
                expected: n * self.n_classes,
                got: out.len(),
            });
        }
        self.scores_unchecked(embeddings, out);
        Ok(())
    }

    /// The label-free score of one input from its row of class scores (as
    /// [`Ncm::scores`] gives them): the score of its most conforming label,
    /// `min_y alpha(x, y)`, in `[0, 1]`. For the ratio measures that is `d1 / d2` (nearest
    /// over second nearest: 1 when the input sits halfway between two classes); for k-NN
    /// it is the share of the k neighbours outside the majority class. It needs no label,
    /// so every answer has one; calibrated on the calibration split it feeds a test of
    /// whether inputs still look like the calibration inputs (issue 19's drift monitor).
    /// It sees a change of the inputs as the embedding sees them, never a change of the
    /// labels given the inputs.
    pub fn label_free_score(&self, row: &[f64]) -> f64 {
        let min = row.iter().copied().fold(f64::INFINITY, f64::min);
        let s = match self.kind() {
            NcmKind::Knn { k } => min / k.max(1) as f64,
            NcmKind::NearestCentroid | NcmKind::NearestNeighbourRatio => min,
        };
        if s.is_nan() {
            1.0
        } else {
            s.clamp(0.0, 1.0)
        }
    }

    /// [`Ncm::label_free_score`] of every embedding (e.g. the calibration split's).
    pub fn label_free_scores(&self, embeddings: &[f32]) -> Result<Vec<f64>, IcpError> {
        let all = self.scores(embeddings)?;
        Ok(all
            .chunks_exact(self.n_classes.max(1))
            .map(|row| self.label_free_score(row))
            .collect())
    }

    /// `alpha(x_i, y_i)` for labelled examples, e.g. the calibration scores.
    pub fn label_scores(&self, embeddings: &[f32], labels: &[u16]) -> Result<Vec<f64>, IcpError> {
        let n = self.check_queries(embeddings)?;
        if n != labels.len() {
            return Err(IcpError::Shape {
                what: "labels (one per embedding)",
                expected: n,
                got: labels.len(),
            });
        }
        check_labels(labels, self.n_classes)?;
        let all = {
            let mut out = vec![0.0; n * self.n_classes];
            self.scores_unchecked(embeddings, &mut out);
            out
        };
        Ok(all
            .chunks_exact(self.n_classes)
            .zip(labels)
            .map(|(row, &l)| row[usize::from(l)])
            .collect())
    }

    fn scores_unchecked(&self, embeddings: &[f32], out: &mut [f64]) {
        let bq = QUERY_BLOCK;
        if embeddings.len() <= bq * self.dim {
            let mut s = self.scratch();
            self.score_block(embeddings, out, &mut s);
            return;
        }
        embeddings
            .par_chunks(bq * self.dim)
            .zip(out.par_chunks_mut(bq * self.n_classes))
            .for_each_init(|| self.scratch(), |s, (q, o)| self.score_block(q, o, s));
    }

    pub(crate) fn scratch(&self) -> Scratch {
        let c = self.n_classes;
        let (tile, k) = match &self.model {
            Model::Centroids { .. } => (0, 0),
            Model::Knn { k, .. } => (QUERY_BLOCK * REF_TILE, *k),
            Model::NnRatio { .. } => (QUERY_BLOCK * REF_TILE, 0),
        };
        Scratch {
            tile: vec![0.0; tile],
            keys: vec![0.0; QUERY_BLOCK * k],
            idx: vec![0; QUERY_BLOCK * k],
            lens: vec![0; if k > 0 { QUERY_BLOCK } else { 0 }],
            mins: vec![0.0; if tile > 0 { QUERY_BLOCK * c } else { 0 }],
            dist: vec![0.0; c],
            counts: vec![0; c],
            sq: vec![
                0.0;
                if let Model::Centroids { cpad, .. } = &self.model {
                    *cpad
                } else {
                    0
                }
            ],
        }
    }

    /// Whether `s` (e.g. kept from an earlier call) has the shape [`Ncm::scratch`] makes.
    pub(crate) fn scratch_fits(&self, s: &Scratch) -> bool {
        let want = self.scratch_shape();
        let have = (
            s.tile.len(),
            s.keys.len(),
            s.idx.len(),
            s.lens.len(),
            s.mins.len(),
            s.dist.len(),
            s.counts.len(),
        );
        let sq = match &self.model {
            Model::Centroids { cpad, .. } => *cpad,
            _ => 0,
        };
        want == have && s.sq.len() == sq
    }

    fn scratch_shape(&self) -> (usize, usize, usize, usize, usize, usize, usize) {
        let c = self.n_classes;
        match &self.model {
            Model::Centroids { .. } => (0, 0, 0, 0, 0, c, c),
            Model::Knn { k, .. } => (
                QUERY_BLOCK * REF_TILE,
                QUERY_BLOCK * k,
                QUERY_BLOCK * k,
                QUERY_BLOCK,
                QUERY_BLOCK * c,
                c,
                c,
            ),
            Model::NnRatio { .. } => (QUERY_BLOCK * REF_TILE, 0, 0, 0, QUERY_BLOCK * c, c, c),
        }
    }

    /// Scores at most [`QUERY_BLOCK`] embeddings (`q`, already checked) into `out` (m x C).
    pub(crate) fn score_block(&self, q: &[f32], out: &mut [f64], s: &mut Scratch) {
        simd::dispatch(
            #[inline(always)]
            || self.score_block_inner(q, out, s),
        )
    }

    #[inline(always)]
    fn score_block_inner(&self, q: &[f32], out: &mut [f64], s: &mut Scratch) {
        let dim = self.dim;
        let c = self.n_classes;
        let m = q.len() / dim;
        debug_assert!(m <= QUERY_BLOCK && out.len() == m * c);
        match &self.model {
            Model::Centroids { ct, cpad, .. } => {
                for (x, o) in q.chunks_exact(dim).zip(out.chunks_exact_mut(c)) {
                    centroid_squared_distances(x, ct, *cpad, &mut s.sq);
                    for (d, &v) in s.dist.iter_mut().zip(&s.sq) {
                        *d = f64::from(v).sqrt();
                    }
                    ratio_scores(&s.dist, o);
                }
            }
            Model::Knn {
                k,
                refs,
                norms,
                labels,
            } => {
                let k = *k;
                s.lens[..m].fill(0);
                let n_refs = norms.len();
                let mut start = 0;
                while start < n_refs {
                    let end = (start + REF_TILE).min(n_refs);
                    let nb = end - start;
                    gram(q, &refs[start * dim..end * dim], dim, &mut s.tile);
                    for i in 0..m {
                        let mut top = TopK {
                            keys: &mut s.keys[i * k..(i + 1) * k],
                            idx: &mut s.idx[i * k..(i + 1) * k],
                            len: &mut s.lens[i],
                        };
                        top.scan(
                            &s.tile[i * nb..(i + 1) * nb],
                            &norms[start..end],
                            start as u32,
                        );
                    }
                    start = end;
                }
                for (i, o) in out.chunks_exact_mut(c).enumerate() {
                    s.counts.fill(0);
                    for &r in &s.idx[i * k..(i + 1) * k] {
                        s.counts[usize::from(labels[r as usize])] += 1;
                    }
                    for (v, &cnt) in o.iter_mut().zip(&s.counts) {
                        *v = (k - cnt as usize) as f64;
                    }
                }
            }
            Model::NnRatio {
                refs,
                norms,
                offsets,
            } => {
                s.mins[..m * c].fill(f32::INFINITY);
                let n_refs = norms.len();
                let mut start = 0;
                while start < n_refs {
                    let end = (start + REF_TILE).min(n_refs);
                    let nb = end - start;
                    gram(q, &refs[start * dim..end * dim], dim, &mut s.tile);
                    // classes whose rows intersect [start, end)
                    let mut cls = offsets.partition_point(|&o| o <= start) - 1;
                    while cls < c && offsets[cls] < end {
                        let a = offsets[cls].max(start);
                        let b = offsets[cls + 1].min(end);
                        if a < b {
                            for i in 0..m {
                                let row = &s.tile[i * nb + (a - start)..i * nb + (b - start)];
                                let v = min_key(row, &norms[a..b]);
                                let slot = &mut s.mins[i * c + cls];
                                if v < *slot {
                                    *slot = v;
                                }
                            }
                        }
                        cls += 1;
                    }
                    start = end;
                }
                for (i, (x, o)) in q.chunks_exact(dim).zip(out.chunks_exact_mut(c)).enumerate() {
                    let qn: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                    for (d, &mk) in s.dist.iter_mut().zip(&s.mins[i * c..(i + 1) * c]) {
                        *d = (qn + f64::from(mk)).max(0.0).sqrt();
                    }
                    ratio_scores(&s.dist, o);
                }
            }
        }
    }
}

fn centroid_model(centroids: Vec<f32>, dim: usize, n_classes: usize) -> Model {
    let cpad = n_classes.div_ceil(CLASS_BLOCK) * CLASS_BLOCK;
    let mut ct = vec![0.0f32; dim * cpad];
    for (c, mu) in centroids.chunks_exact(dim).enumerate() {
        for (t, &v) in mu.iter().enumerate() {
            ct[t * cpad + c] = v;
        }
    }
    Model::Centroids {
        centroids,
        ct,
        cpad,
    }
}

pub(crate) fn check_rows(
    what: &'static str,
    x: &[f32],
    dim: usize,
    rows: usize,
) -> Result<(), IcpError> {
    if dim == 0 {
        return Err(IcpError::Shape {
            what: "embedding dimension (must be positive)",
            expected: 1,
            got: 0,
        });
    }
    if x.len() != rows * dim {
        return Err(IcpError::Shape {
            what,
            expected: rows * dim,
            got: x.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod label_free_tests {
    use super::*;

    /// Two classes on a line (centroids at 0 and 10): the label-free score is d1 / d2,
    /// 0 at a centroid, 1 halfway, whatever the label; k-NN's is the minority share.
    #[test]
    fn label_free_scores_are_the_most_conforming_label_s_in_0_1() {
        let c = Ncm::from_centroids(vec![0.0, 10.0], 1, 2).unwrap();
        let s = c.label_free_scores(&[0.0, 2.0, 5.0, 8.0, 10.0]).unwrap();
        let want = [0.0, 0.25, 1.0, 0.25, 0.0];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{s:?}");
        }
        // far outside, on one side: d1/d2 goes to 1 as well (both far), never above
        let far = c.label_free_scores(&[1e6]).unwrap()[0];
        assert!(far > 0.99 && far <= 1.0, "{far}");

        let refs = [0.0f32, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        let labels = [0u16, 0, 0, 1, 1, 1, 1, 1];
        let knn = Ncm::fit(NcmKind::Knn { k: 4 }, &refs, &labels, 1, 2).unwrap();
        let s = knn.label_free_scores(&[1.0, 2.5, 11.5]).unwrap();
        // neighbours of 1.0: 0,1,2 (class 0) and 3 (class 1): 1 of 4 outside the majority
        assert!((s[0] - 0.25).abs() < 1e-12, "{s:?}");
        assert!(s.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!((s[2] - 0.0).abs() < 1e-12, "{s:?}");
    }
}
