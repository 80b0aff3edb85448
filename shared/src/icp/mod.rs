//! Inductive conformal prediction (ICP) on embeddings (DESIGN.md, "ICP, precisely").
//!
//! The pieces, in the order a pipeline uses them:
//! 1. [`Ncm::fit`]: a nonconformity measure ([`NcmKind`]: nearest centroid, k-NN, 1-NN
//!    ratio) from proper-training embeddings and labels. [`Ncm::scores`] gives
//!    `alpha(x, y)` for every class y of every embedding at once (`n x C`, row-major).
//! 2. [`Calibration`]: the calibration scores `A_i = alpha(x_i, y_i)`, sorted once, pooled
//!    or Mondrian (per class); p-values by binary search ([`PValueMode`]).
//! 3. [`IcpPredictor`]: embeddings in, [`Predictions`] out: p-values, prediction sets
//!    `{y : p_y > epsilon}`, credibility (max p) and confidence (1 - second largest p). The
//!    scoring, the p-values and the sets are fused per block of queries, blocks run in
//!    parallel with rayon, and nothing is allocated per sample.
//! 4. [`evaluate`]: error rate, set sizes and empty / singleton / multiple fractions over
//!    an epsilon grid ([`default_epsilon_grid`]), with `ece` and `mce`.
//!
//! 5. [`Aci`]: adaptive conformal inference, the level that keeps the long-run error rate
//!    at epsilon under shift once labels arrive.
//!
//! 6. [`martingale`]: online exchangeability tests (conformal test martingales) in bounded
//!    memory, for drift monitors that run on every answer.
//!
//! Embeddings are f32 rows of length `dim` in one row-major slice; labels are `u16` class
//! indices below `n_classes`; scores and p-values are f64.

mod adaptive;
mod calibration;
mod distance;
pub mod martingale;
mod metrics;
mod ncm;
pub mod novelty;
pub(crate) mod simd;

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use adaptive::Aci;
pub use calibration::{tau_row, Calibration, Counts, PValueMode};
pub use metrics::{
    default_epsilon_grid, epsilon_grid, evaluate, ClassErrors, EpsilonRow, IcpEvaluation,
};
pub use ncm::{distance_ratio, Ncm, NcmKind};
pub use novelty::{CentroidDistance, LabelFreeKind};

pub(crate) use distance::gram;

use distance::QUERY_BLOCK;

/// What can go wrong in ICP. Every invalid input is reported; nothing panics or yields NaN.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IcpError {
    #[error("the calibration set is empty: ICP needs at least one calibration score")]
    EmptyCalibration,
    #[error(
        "Mondrian calibration: class {class} has no calibration examples, so its p-values are \
         undefined (add calibration data for it or use pooled calibration)"
    )]
    EmptyCalibrationClass { class: usize },
    #[error("there are no proper-training embeddings to fit the nonconformity measure on")]
    EmptyTraining,
    #[error("class {class} has no proper-training embeddings: the {measure} measure needs at least one per class")]
    EmptyTrainingClass { class: usize, measure: &'static str },
    #[error("ICP needs at least 2 classes, got {0}")]
    TooFewClasses(usize),
    #[error(
        "k = {k} is invalid with {n_references} reference embeddings (need 1 <= k <= references)"
    )]
    InvalidK { k: usize, n_references: usize },
    #[error("wrong size of {what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("label {label} at position {index} is out of range for {n_classes} classes")]
    LabelOutOfRange {
        index: usize,
        label: u16,
        n_classes: usize,
    },
    #[error("{what} contain a non-finite value (NaN or infinity)")]
    NonFinite { what: &'static str },
    #[error("{what}: NaN at position {index}")]
    NanScore { what: &'static str, index: usize },
    #[error("tau {tau} at position {index} is outside [0, 1)")]
    InvalidTau { index: usize, tau: f64 },
    #[error("significance level epsilon = {0} is outside [0, 1]")]
    InvalidEpsilon(f64),
    #[error("invalid epsilon grid: {0}")]
    InvalidGrid(String),
    #[error("the nonconformity measure has {ncm} classes but the calibration has {calibration}")]
    ClassMismatch { ncm: usize, calibration: usize },
    #[error("{0}")]
    InvalidSetting(String),
}

/// Prediction sets of a batch as bitsets: the classes of one sample.
#[derive(Clone, Copy, Debug)]
pub struct ClassSet<'a> {
    words: &'a [u64],
    n_classes: usize,
}

impl<'a> ClassSet<'a> {
    pub fn contains(&self, class: usize) -> bool {
        class < self.n_classes && self.words[class / 64] >> (class % 64) & 1 == 1
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The classes in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + 'a {
        let words = self.words;
        words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    None
                } else {
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    Some(wi * 64 + b)
                }
            })
        })
    }
}

/// One sample's conformal prediction (owned, serialisable).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub epsilon: f64,
    /// `{y : p_y > epsilon}`, ascending
    pub set: Vec<u16>,
    /// one per class
    pub p_values: Vec<f64>,
    /// largest p-value
    pub credibility: f64,
    /// 1 - second largest p-value
    pub confidence: f64,
    /// The label-free score of the input ([`Ncm::label_free_score`]): what the drift
    /// monitor tests, with no label needed.
    #[serde(default)]
    pub label_free: f64,
}

/// Buffers of one block task: the scorer's scratch, taus, a copy of a score row.
#[derive(Clone, Debug, Default)]
struct Work {
    scratch: ncm::Scratch,
    taus: Vec<f64>,
    alpha: Vec<f64>,
}

/// Conformal predictions of a batch at one significance level.
#[derive(Clone, Debug, Default)]
pub struct Predictions {
    /// kept between `predict_into` calls on small batches (no allocation per call)
    work: Option<Box<Work>>,
    n_classes: usize,
    epsilon: f64,
    words: usize,
    p_values: Vec<f64>,
    credibility: Vec<f64>,
    confidence: Vec<f64>,
    label_free: Vec<f64>,
    sets: Vec<u64>,
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.credibility.len()
    }

    pub fn is_empty(&self) -> bool {
        self.credibility.is_empty()
    }

    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// All p-values, `n x C` row-major.
    pub fn p_values(&self) -> &[f64] {
        &self.p_values
    }

    /// The p-values of sample `i` (one per class).
    pub fn p_values_of(&self, i: usize) -> &[f64] {
        &self.p_values[i * self.n_classes..(i + 1) * self.n_classes]
    }

    pub fn credibility(&self) -> &[f64] {
        &self.credibility
    }

    pub fn confidence(&self) -> &[f64] {
        &self.confidence
    }

    /// Label-free scores, one per sample ([`Ncm::label_free_score`] of its score row).
    pub fn label_free(&self) -> &[f64] {
        &self.label_free
    }

    /// The prediction set of sample `i`.
    pub fn set(&self, i: usize) -> ClassSet<'_> {
        ClassSet {
            words: &self.sets[i * self.words..(i + 1) * self.words],
            n_classes: self.n_classes,
        }
    }

    /// Sample `i` as an owned [`Prediction`].
    pub fn prediction(&self, i: usize) -> Prediction {
        Prediction {
            epsilon: self.epsilon,
            set: self.set(i).iter().map(|c| c as u16).collect(),
            p_values: self.p_values_of(i).to_vec(),
            credibility: self.credibility[i],
            confidence: self.confidence[i],
            label_free: self.label_free[i],
        }
    }

    fn reset(&mut self, n: usize, n_classes: usize, epsilon: f64) {
        self.n_classes = n_classes;
        self.epsilon = epsilon;
        self.words = n_classes.div_ceil(64);
        self.p_values.resize(n * n_classes, 0.0);
        self.credibility.resize(n, 0.0);
        self.confidence.resize(n, 0.0);
        self.label_free.resize(n, 0.0);
        self.sets.resize(n * self.words, 0);
    }
}

/// A fitted measure plus its calibration: embeddings in, conformal predictions out.
#[derive(Debug)]
pub struct IcpPredictor {
    ncm: Ncm,
    calibration: Calibration,
    mode: PValueMode,
    /// global index of the next test sample (numbers the smoothing streams)
    next_sample: AtomicU64,
}

impl Clone for IcpPredictor {
    fn clone(&self) -> Self {
        IcpPredictor {
            ncm: self.ncm.clone(),
            calibration: self.calibration.clone(),
            mode: self.mode,
            next_sample: AtomicU64::new(self.next_sample.load(Ordering::Relaxed)),
        }
    }
}

impl IcpPredictor {
    pub fn new(ncm: Ncm, calibration: Calibration, mode: PValueMode) -> Result<Self, IcpError> {
        if ncm.n_classes() != calibration.n_classes() {
            return Err(IcpError::ClassMismatch {
                ncm: ncm.n_classes(),
                calibration: calibration.n_classes(),
            });
        }
        Ok(IcpPredictor {
            ncm,
            calibration,
            mode,
            next_sample: AtomicU64::new(0),
        })
    }

    /// Scores the calibration examples with `ncm` and calibrates (pooled or Mondrian).
    pub fn calibrate(
        ncm: Ncm,
        embeddings: &[f32],
        labels: &[u16],
        mondrian: bool,
        mode: PValueMode,
    ) -> Result<Self, IcpError> {
        let scores = ncm.label_scores(embeddings, labels)?;
        let calibration = Calibration::new(&scores, labels, ncm.n_classes(), mondrian)?;
        Self::new(ncm, calibration, mode)
    }

    pub fn ncm(&self) -> &Ncm {
        &self.ncm
    }

    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    pub fn mode(&self) -> PValueMode {
        self.mode
    }

    pub fn n_classes(&self) -> usize {
        self.ncm.n_classes()
    }

    /// Numbers the next test sample `first` for the smoothing taus (see [`tau_row`]):
    /// each call of `predict*` / `p_values` takes the next `n` sample numbers.
    pub fn set_next_sample(&self, first: u64) {
        self.next_sample.store(first, Ordering::Relaxed);
    }

    /// p-values (`n x C`) of a batch of embeddings.
    pub fn p_values(&self, embeddings: &[f32]) -> Result<Vec<f64>, IcpError> {
        // epsilon 0 is valid and the sets are then dropped
        let mut out = Predictions::default();
        self.predict_into(embeddings, 0.0, &mut out)?;
        Ok(out.p_values)
    }

    /// Conformal predictions at significance level `epsilon`.
    pub fn predict(&self, embeddings: &[f32], epsilon: f64) -> Result<Predictions, IcpError> {
        let mut out = Predictions::default();
        self.predict_into(embeddings, epsilon, &mut out)?;
        Ok(out)
    }

    /// As [`IcpPredictor::predict`], reusing `out`'s buffers.
    pub fn predict_into(
        &self,
        embeddings: &[f32],
        epsilon: f64,
        out: &mut Predictions,
    ) -> Result<(), IcpError> {
        if !(0.0..=1.0).contains(&epsilon) {
            return Err(IcpError::InvalidEpsilon(epsilon));
        }
        let n = self.ncm.check_queries(embeddings)?;
        let c = self.n_classes();
        out.reset(n, c, epsilon);
        let first = self.next_sample.fetch_add(n as u64, Ordering::Relaxed);
        let dim = self.ncm.dim();
        let w = out.words;
        let block = |work: &mut Work,
                     b: usize,
                     q: &[f32],
                     pv: &mut [f64],
                     cred: &mut [f64],
                     conf: &mut [f64],
                     free: &mut [f64],
                     sets: &mut [u64]| {
            let Work {
                scratch: s,
                taus,
                alpha,
            } = work;
            self.ncm.score_block(q, pv, s);
            let first_row = first + (b * QUERY_BLOCK) as u64;
            for (i, ((((row, cr), cf), lf), set)) in pv
                .chunks_exact_mut(c)
                .zip(cred.iter_mut())
                .zip(conf.iter_mut())
                .zip(free.iter_mut())
                .zip(sets.chunks_exact_mut(w))
                .enumerate()
            {
                if let PValueMode::Smoothed { seed } = self.mode {
                    tau_row(seed, first_row + i as u64, taus);
                }
                *lf = self.ncm.label_free_score(row);
                self.finish_row(row, alpha, taus, epsilon, cr, cf, set);
            }
        };
        let new_work = || Work {
            scratch: self.ncm.scratch(),
            taus: vec![0.0f64; c],
            alpha: vec![0.0f64; c],
        };
        if n <= QUERY_BLOCK {
            let mut work = match out.work.take() {
                Some(w) if w.taus.len() == c && self.ncm.scratch_fits(&w.scratch) => w,
                _ => Box::new(new_work()),
            };
            block(
                &mut work,
                0,
                embeddings,
                &mut out.p_values,
                &mut out.credibility,
                &mut out.confidence,
                &mut out.label_free,
                &mut out.sets,
            );
            out.work = Some(work);
        } else {
            embeddings
                .par_chunks(QUERY_BLOCK * dim)
                .zip(out.p_values.par_chunks_mut(QUERY_BLOCK * c))
                .zip(out.credibility.par_chunks_mut(QUERY_BLOCK))
                .zip(out.confidence.par_chunks_mut(QUERY_BLOCK))
                .zip(out.label_free.par_chunks_mut(QUERY_BLOCK))
                .zip(out.sets.par_chunks_mut(QUERY_BLOCK * w))
                .enumerate()
                .for_each_init(
                    new_work,
                    |s, (b, (((((q, pv), cred), conf), free), sets))| {
                        block(s, b, q, pv, cred, conf, free, sets)
                    },
                );
        }
        Ok(())
    }

    /// Scores -> p-values in place (`alpha` is scratch), then credibility, confidence and
    /// the set bits.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn finish_row(
        &self,
        row: &mut [f64],
        alpha: &mut [f64],
        taus: &[f64],
        epsilon: f64,
        cred: &mut f64,
        conf: &mut f64,
        set: &mut [u64],
    ) {
        alpha.copy_from_slice(row);
        self.calibration.p_row(alpha, self.mode, taus, row);
        set.fill(0);
        let (mut m1, mut m2) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for (y, &p) in row.iter().enumerate() {
            if p > m1 {
                m2 = m1;
                m1 = p;
            } else if p > m2 {
                m2 = p;
            }
            set[y / 64] |= u64::from(p > epsilon) << (y % 64);
        }
        *cred = m1;
        *conf = 1.0 - m2;
    }

    /// Predicts a labelled test set and evaluates it over `grid`.
    pub fn evaluate(
        &self,
        embeddings: &[f32],
        labels: &[u16],
        grid: &[f64],
    ) -> Result<IcpEvaluation, IcpError> {
        let p = self.p_values(embeddings)?;
        evaluate(&p, labels, self.n_classes(), grid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Vec<f32>, Vec<u16>) {
        // three classes on a line in 2-D
        let mut x = Vec::new();
        let mut y = Vec::new();
        for c in 0..3u16 {
            for j in 0..5 {
                x.push(c as f32 * 10.0 + j as f32 * 0.1);
                x.push(j as f32 * 0.05);
                y.push(c);
            }
        }
        (x, y)
    }

    #[test]
    fn icp_predict_basic() {
        let (x, y) = toy();
        for kind in [
            NcmKind::NearestCentroid,
            NcmKind::Knn { k: 3 },
            NcmKind::NearestNeighbourRatio,
        ] {
            let ncm = Ncm::fit(kind, &x, &y, 2, 3).unwrap();
            // calibration points: the training points moved slightly (not the same points)
            let cal: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v + (i % 2) as f32 * 0.013)
                .collect();
            let icp = IcpPredictor::calibrate(ncm, &cal, &y, false, PValueMode::Standard).unwrap();
            // two calibration points as queries: each p-value counts the point itself
            let q = [cal[2], cal[3], cal[24], cal[25]];
            let pred = icp.predict(&q, 0.1).unwrap();
            assert_eq!(pred.len(), 2);
            assert!(pred.set(0).contains(0), "{kind:?}");
            assert!(pred.set(1).contains(2), "{kind:?}");
            let p0 = pred.prediction(0);
            assert_eq!(
                p0.credibility,
                p0.p_values.iter().cloned().fold(0.0, f64::max)
            );
            assert!(pred.confidence()[0] <= 1.0);
        }
    }

    /// Every answer carries its label-free score, the same as scoring the embedding alone,
    /// in the single-block path and the parallel one.
    #[test]
    fn predictions_carry_the_label_free_score() {
        let (x, y) = toy();
        for kind in [NcmKind::NearestCentroid, NcmKind::Knn { k: 3 }] {
            let ncm = Ncm::fit(kind, &x, &y, 2, 3).unwrap();
            let icp = IcpPredictor::calibrate(ncm, &x, &y, false, PValueMode::Standard).unwrap();
            for n in [1, 3 * QUERY_BLOCK + 5] {
                let q: Vec<f32> = (0..2 * n).map(|i| (i % 37) as f32 * 0.9 - 3.0).collect();
                let pred = icp.predict(&q, 0.1).unwrap();
                let want = icp.ncm().label_free_scores(&q).unwrap();
                assert_eq!(pred.label_free(), &want[..], "{kind:?}, {n} queries");
                assert_eq!(pred.prediction(n - 1).label_free, want[n - 1]);
                assert!(want.iter().all(|s| (0.0..=1.0).contains(s)));
            }
        }
    }

    #[test]
    fn icp_errors_are_typed() {
        let (x, y) = toy();
        let ncm = Ncm::fit(NcmKind::NearestCentroid, &x, &y, 2, 3).unwrap();
        assert_eq!(
            IcpPredictor::calibrate(ncm.clone(), &[], &[], false, PValueMode::Standard)
                .unwrap_err(),
            IcpError::EmptyCalibration
        );
        let err =
            IcpPredictor::calibrate(ncm.clone(), &x[..10], &y[..5], true, PValueMode::Standard)
                .unwrap_err();
        assert_eq!(err, IcpError::EmptyCalibrationClass { class: 1 });
        let icp = IcpPredictor::calibrate(ncm, &x, &y, false, PValueMode::Standard).unwrap();
        assert!(matches!(
            icp.predict(&[f32::NAN, 0.0], 0.1),
            Err(IcpError::NonFinite { .. })
        ));
        assert!(matches!(
            icp.predict(&[0.0, 0.0, 1.0], 0.1),
            Err(IcpError::Shape { .. })
        ));
        assert!(matches!(
            icp.predict(&[0.0, 0.0], 1.5),
            Err(IcpError::InvalidEpsilon(_))
        ));
        assert!(matches!(
            Ncm::fit(NcmKind::NearestCentroid, &x[..10], &y[..5], 2, 3),
            Err(IcpError::EmptyTrainingClass { class: 1, .. })
        ));
        assert!(matches!(
            Ncm::fit(NcmKind::Knn { k: 0 }, &x, &y, 2, 3),
            Err(IcpError::InvalidK { .. })
        ));
        assert!(matches!(
            Ncm::fit(NcmKind::Knn { k: 16 }, &x, &y, 2, 3),
            Err(IcpError::InvalidK { .. })
        ));
        assert!(matches!(
            Ncm::fit(NcmKind::Knn { k: 2 }, &x, &y, 2, 2),
            Err(IcpError::LabelOutOfRange { .. })
        ));
    }

    #[test]
    fn icp_ratio_conventions() {
        assert_eq!(distance_ratio(0.0, 0.0), 1.0);
        assert_eq!(distance_ratio(1.0, 0.0), f64::INFINITY);
        assert_eq!(distance_ratio(1.0, 2.0), 0.5);
        assert_eq!(distance_ratio(f64::INFINITY, f64::INFINITY), 1.0);
    }

    #[test]
    fn icp_class_set_iter() {
        let words = [0b1011u64, 1 << 3];
        let s = ClassSet {
            words: &words,
            n_classes: 70,
        };
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 3, 67]);
        assert_eq!(s.len(), 4);
        assert!(s.contains(67) && !s.contains(2) && !s.contains(200));
    }
}
