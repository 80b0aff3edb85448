//! Calibration scores, sorted once, and p-values by binary search.
//!
//! With calibration scores `A_1..A_n` (pooled, or those of class y under Mondrian
//! calibration) and a test score `a = alpha(x, y)`:
//! - [`PValueMode::Standard`]: `(#{A_i >= a} + 1) / (n + 1)` (valid);
//! - [`PValueMode::Smoothed`]: `(#{A_i > a} + tau * (#{A_i == a} + 1)) / (n + 1)` with
//!   `tau ~ U[0, 1)` (exactly valid; the definition and operation order of crepes 0.8.0's
//!   `p_values_batch`);
//! - [`PValueMode::ReferenceCount`]: `#{A_i >= a} / n`, the reference pipeline's count, for
//!   parity only (not valid: it can be 0).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::ncm::check_labels;
use super::IcpError;

/// How p-values are computed from the calibration scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PValueMode {
    /// `(#{A_i >= a} + 1) / (n + 1)`.
    #[default]
    Standard,
    /// `(#{A_i > a} + tau (#{A_i == a} + 1)) / (n + 1)`; the taus come from ChaCha8 seeded
    /// with `seed`, one stream per test sample (see [`tau_row`]).
    Smoothed { seed: u64 },
    /// `#{A_i >= a} / n` (the reference pipeline; for parity, not valid).
    ReferenceCount,
}

/// Counts of calibration scores relative to a test score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// `#{A_i > a}`
    pub greater: usize,
    /// `#{A_i == a}`
    pub equal: usize,
    /// number of calibration scores compared against
    pub n: usize,
}

impl Counts {
    /// `#{A_i >= a}`
    pub fn at_least(&self) -> usize {
        self.greater + self.equal
    }
}

/// Sorted calibration scores, pooled or per class (Mondrian).
#[derive(Clone, Debug)]
pub struct Calibration {
    n_classes: usize,
    mondrian: bool,
    /// pooled: all scores ascending; Mondrian: class blocks, each ascending.
    sorted: Vec<f64>,
    /// class c uses sorted[offsets[c]..offsets[c+1]] (pooled: every class uses all).
    offsets: Vec<usize>,
}

/// Branch-free binary search: the number of leading elements of ascending `s` that are
/// `< x` (`UPPER`: `<= x`).
#[inline(always)]
fn rank_bsearch<const UPPER: bool>(s: &[f64], x: f64) -> usize {
    let mut size = s.len();
    if size == 0 {
        return 0;
    }
    let mut base = 0usize;
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        let go = if UPPER { s[mid] <= x } else { s[mid] < x };
        base = if go { mid } else { base };
        size -= half;
    }
    let go = if UPPER { s[base] <= x } else { s[base] < x };
    base + usize::from(go)
}

/// Probes from the top before the binary search: most test scores of the wrong classes lie
/// above (nearly) all calibration scores, where 1 to [`GALLOP`] comparisons suffice.
const GALLOP: usize = 8;

/// The number of elements of ascending `s` that are `< x` (`UPPER`: `<= x`).
#[inline(always)]
fn rank<const UPPER: bool>(s: &[f64], x: f64) -> usize {
    // invariant: every element of s[hi..] fails the test (is >= x, or > x for UPPER)
    let mut hi = s.len();
    let mut step = 1;
    for _ in 0..GALLOP {
        if hi == 0 {
            return 0;
        }
        let probe = hi.saturating_sub(step);
        let below = if UPPER { s[probe] <= x } else { s[probe] < x };
        if below {
            return probe + 1 + rank_bsearch::<UPPER>(&s[probe + 1..hi], x);
        }
        hi = probe;
        step <<= 1;
    }
    rank_bsearch::<UPPER>(&s[..hi], x)
}

/// First index whose value is `>= x` (`s` ascending).
#[inline(always)]
fn lower_bound(s: &[f64], x: f64) -> usize {
    rank::<false>(s, x)
}

/// First index whose value is `> x` (`s` ascending).
#[inline(always)]
fn upper_bound(s: &[f64], x: f64) -> usize {
    rank::<true>(s, x)
}

/// The taus of one test sample: `out[y]` for class y, from ChaCha8 seeded with `seed`,
/// stream `sample` (the sample's global index), in class order. Independent of batching.
pub fn tau_row(seed: u64, sample: u64, out: &mut [f64]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(sample);
    for t in out {
        *t = rng.random::<f64>();
    }
}

impl Calibration {
    /// Pooled calibration: every class's p-value uses all `scores`.
    pub fn pooled(scores: &[f64], n_classes: usize) -> Result<Self, IcpError> {
        if n_classes < 2 {
            return Err(IcpError::TooFewClasses(n_classes));
        }
        if scores.is_empty() {
            return Err(IcpError::EmptyCalibration);
        }
        check_scores("calibration scores", scores)?;
        let mut sorted = scores.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        Ok(Calibration {
            n_classes,
            mondrian: false,
            offsets: vec![0, sorted.len()],
            sorted,
        })
    }

    /// Mondrian (class-conditional) calibration: class y's p-value uses only the scores of
    /// calibration examples labelled y. Every class needs at least one.
    pub fn mondrian(scores: &[f64], labels: &[u16], n_classes: usize) -> Result<Self, IcpError> {
        if n_classes < 2 {
            return Err(IcpError::TooFewClasses(n_classes));
        }
        if scores.len() != labels.len() {
            return Err(IcpError::Shape {
                what: "calibration labels (one per score)",
                expected: scores.len(),
                got: labels.len(),
            });
        }
        if scores.is_empty() {
            return Err(IcpError::EmptyCalibration);
        }
        check_labels(labels, n_classes)?;
        check_scores("calibration scores", scores)?;
        let mut counts = vec![0usize; n_classes];
        for &l in labels {
            counts[usize::from(l)] += 1;
        }
        if let Some(class) = counts.iter().position(|&c| c == 0) {
            return Err(IcpError::EmptyCalibrationClass { class });
        }
        let mut offsets = vec![0usize; n_classes + 1];
        for c in 0..n_classes {
            offsets[c + 1] = offsets[c] + counts[c];
        }
        let mut fill = offsets.clone();
        let mut sorted = vec![0.0; scores.len()];
        for (&a, &l) in scores.iter().zip(labels) {
            let c = usize::from(l);
            sorted[fill[c]] = a;
            fill[c] += 1;
        }
        for c in 0..n_classes {
            sorted[offsets[c]..offsets[c + 1]].sort_unstable_by(f64::total_cmp);
        }
        Ok(Calibration {
            n_classes,
            mondrian: true,
            sorted,
            offsets,
        })
    }

    /// Pooled or Mondrian by flag (labels are used only when `mondrian`).
    pub fn new(
        scores: &[f64],
        labels: &[u16],
        n_classes: usize,
        mondrian: bool,
    ) -> Result<Self, IcpError> {
        if mondrian {
            Self::mondrian(scores, labels, n_classes)
        } else {
            Self::pooled(scores, n_classes)
        }
    }

    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    pub fn is_mondrian(&self) -> bool {
        self.mondrian
    }

    /// Total number of calibration scores.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The ascending calibration scores that class `class`'s p-values use.
    #[inline(always)]
    pub fn scores_for(&self, class: usize) -> &[f64] {
        if self.mondrian {
            &self.sorted[self.offsets[class]..self.offsets[class + 1]]
        } else {
            &self.sorted
        }
    }

    /// Counts of the calibration scores for `class` relative to `alpha`.
    #[inline(always)]
    pub fn counts(&self, class: usize, alpha: f64) -> Counts {
        let s = self.scores_for(class);
        let lo = lower_bound(s, alpha);
        let hi = upper_bound(s, alpha);
        Counts {
            greater: s.len() - hi,
            equal: hi - lo,
            n: s.len(),
        }
    }

    /// One p-value. `tau` is used only by [`PValueMode::Smoothed`].
    #[inline(always)]
    pub fn p_value(&self, class: usize, alpha: f64, mode: PValueMode, tau: f64) -> f64 {
        let s = self.scores_for(class);
        let n = s.len();
        match mode {
            PValueMode::Standard => {
                let ge = n - lower_bound(s, alpha);
                (ge + 1) as f64 / (n + 1) as f64
            }
            PValueMode::ReferenceCount => {
                let ge = n - lower_bound(s, alpha);
                ge as f64 / n as f64
            }
            PValueMode::Smoothed { .. } => {
                let lo = lower_bound(s, alpha);
                let hi = upper_bound(s, alpha);
                smoothed(n - hi, hi - lo, n, tau)
            }
        }
    }

    /// p-values of one sample's score row (C values) into `out`; `taus` (C values) only
    /// for smoothed p-values.
    #[inline(always)]
    pub(crate) fn p_row(&self, scores: &[f64], mode: PValueMode, taus: &[f64], out: &mut [f64]) {
        match mode {
            PValueMode::Smoothed { .. } => {
                for (y, ((o, &a), &t)) in out.iter_mut().zip(scores).zip(taus).enumerate() {
                    *o = self.p_value(y, a, mode, t);
                }
            }
            _ => {
                for (y, (o, &a)) in out.iter_mut().zip(scores).enumerate() {
                    *o = self.p_value(y, a, mode, 0.0);
                }
            }
        }
    }

    /// p-values for a batch of score rows (`n x C`) into `out` (`n x C`). Smoothed taus come
    /// from [`tau_row`] with samples numbered from `first_sample`.
    pub fn p_values(
        &self,
        scores: &[f64],
        mode: PValueMode,
        first_sample: u64,
        out: &mut [f64],
    ) -> Result<(), IcpError> {
        self.check_batch(scores, out.len())?;
        let c = self.n_classes;
        let mut taus = vec![0.0; c];
        for (i, (srow, orow)) in scores
            .chunks_exact(c)
            .zip(out.chunks_exact_mut(c))
            .enumerate()
        {
            if let PValueMode::Smoothed { seed } = mode {
                tau_row(seed, first_sample + i as u64, &mut taus);
            }
            self.p_row(srow, mode, &taus, orow);
        }
        Ok(())
    }

    /// Smoothed p-values with explicit taus (`n x C`, each in [0, 1)), e.g. to reproduce
    /// another implementation's random draws.
    pub fn p_values_with_taus(
        &self,
        scores: &[f64],
        taus: &[f64],
        out: &mut [f64],
    ) -> Result<(), IcpError> {
        self.check_batch(scores, out.len())?;
        if taus.len() != scores.len() {
            return Err(IcpError::Shape {
                what: "taus (one per score)",
                expected: scores.len(),
                got: taus.len(),
            });
        }
        if let Some(index) = taus.iter().position(|t| !(0.0..1.0).contains(t)) {
            return Err(IcpError::InvalidTau {
                index,
                tau: taus[index],
            });
        }
        let c = self.n_classes;
        let mode = PValueMode::Smoothed { seed: 0 };
        for ((srow, trow), orow) in scores
            .chunks_exact(c)
            .zip(taus.chunks_exact(c))
            .zip(out.chunks_exact_mut(c))
        {
            self.p_row(srow, mode, trow, orow);
        }
        Ok(())
    }

    fn check_batch(&self, scores: &[f64], out_len: usize) -> Result<(), IcpError> {
        let c = self.n_classes;
        if !scores.len().is_multiple_of(c) {
            return Err(IcpError::Shape {
                what: "test scores (rows x classes)",
                expected: scores.len() / c * c,
                got: scores.len(),
            });
        }
        if out_len != scores.len() {
            return Err(IcpError::Shape {
                what: "p-value buffer (rows x classes)",
                expected: scores.len(),
                got: out_len,
            });
        }
        check_scores("test scores", scores)
    }
}

/// crepes' smoothed p-value, same operation order:
/// `(greater + tau * (equal + 1)) / (n + 1)`.
#[inline(always)]
fn smoothed(greater: usize, equal: usize, n: usize, tau: f64) -> f64 {
    (greater as f64 + tau * (equal + 1) as f64) / (n + 1) as f64
}

fn check_scores(what: &'static str, scores: &[f64]) -> Result<(), IcpError> {
    match scores.iter().position(|a| a.is_nan()) {
        Some(index) => Err(IcpError::NanScore { what, index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_match_linear_scan() {
        let s = [0.0, 1.0, 1.0, 1.0, 2.0, 5.0, 5.0];
        for x in [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 6.0, f64::INFINITY] {
            assert_eq!(
                lower_bound(&s, x),
                s.iter().filter(|&&v| v < x).count(),
                "lb {x}"
            );
            assert_eq!(
                upper_bound(&s, x),
                s.iter().filter(|&&v| v <= x).count(),
                "ub {x}"
            );
        }
        // long arrays with runs of ties: every position of the gallop and the fallback
        let mut long: Vec<f64> = (0..1000).map(|i| (i / 7) as f64).collect();
        long.extend(std::iter::repeat_n(500.0, 300));
        for x in (-2..=520).map(|v| v as f64 * 0.5) {
            assert_eq!(
                lower_bound(&long, x),
                long.iter().filter(|&&v| v < x).count(),
                "lb {x}"
            );
            assert_eq!(
                upper_bound(&long, x),
                long.iter().filter(|&&v| v <= x).count(),
                "ub {x}"
            );
        }
        for n in 0..40 {
            let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
            for x in -1..=n + 1 {
                let x = x as f64;
                assert_eq!(lower_bound(&v, x), v.iter().filter(|&&e| e < x).count());
                assert_eq!(upper_bound(&v, x), v.iter().filter(|&&e| e <= x).count());
            }
        }
        assert_eq!(lower_bound(&[], 1.0), 0);
        assert_eq!(upper_bound(&[], 1.0), 0);
    }

    #[test]
    fn ties_counted_exactly() {
        let cal = Calibration::pooled(&[3.0, 1.0, 2.0, 2.0, 2.0], 2).unwrap();
        let c = cal.counts(0, 2.0);
        assert_eq!((c.greater, c.equal, c.n), (1, 3, 5));
        assert_eq!(cal.p_value(0, 2.0, PValueMode::Standard, 0.0), 5.0 / 6.0);
        assert_eq!(
            cal.p_value(0, 2.0, PValueMode::ReferenceCount, 0.0),
            4.0 / 5.0
        );
        let p = cal.p_value(0, 2.0, PValueMode::Smoothed { seed: 0 }, 0.5);
        assert_eq!(p, (1.0 + 0.5 * 4.0) / 6.0);
        // above every score: smallest p-values
        assert_eq!(cal.p_value(1, 9.0, PValueMode::Standard, 0.0), 1.0 / 6.0);
        assert_eq!(cal.p_value(1, 9.0, PValueMode::ReferenceCount, 0.0), 0.0);
    }

    #[test]
    fn empty_calibration_is_an_error() {
        assert_eq!(
            Calibration::pooled(&[], 3).unwrap_err(),
            IcpError::EmptyCalibration
        );
        assert_eq!(
            Calibration::mondrian(&[], &[], 3).unwrap_err(),
            IcpError::EmptyCalibration
        );
    }

    #[test]
    fn mondrian_missing_class_is_an_error() {
        let err = Calibration::mondrian(&[0.1, 0.2, 0.3], &[0, 2, 0], 3).unwrap_err();
        assert_eq!(err, IcpError::EmptyCalibrationClass { class: 1 });
        assert!(err.to_string().contains("class 1"), "{err}");
    }

    #[test]
    fn nan_scores_rejected() {
        assert!(matches!(
            Calibration::pooled(&[0.1, f64::NAN], 2),
            Err(IcpError::NanScore { index: 1, .. })
        ));
        let cal = Calibration::pooled(&[0.1, 0.2], 2).unwrap();
        let mut out = [0.0; 2];
        assert!(cal
            .p_values(&[0.1, f64::NAN], PValueMode::Standard, 0, &mut out)
            .is_err());
    }

    #[test]
    fn taus_do_not_depend_on_batching() {
        let mut a = [0.0; 5];
        let mut b = [0.0; 5];
        tau_row(7, 12, &mut a);
        tau_row(7, 12, &mut b);
        assert_eq!(a, b);
        tau_row(7, 13, &mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|t| (0.0..1.0).contains(t)));
    }
}
