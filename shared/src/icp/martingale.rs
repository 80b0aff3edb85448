//! Conformal test martingales in bounded memory: the machinery of an online test of
//! exchangeability that can run on every answer of a device for months.
//!
//! The exact online test (Vovk, Nouretdinov, Gammerman 2003) gives each new score the
//! smoothed conformal p-value against every earlier score (the calibration scores and all
//! scores seen since); under exchangeability those p-values are independent and uniform,
//! so a betting martingale on them crosses `1/delta` with probability at most `delta`
//! (Ville's inequality). Keeping every earlier score is unbounded memory. Here the scores
//! are first mapped to one of [`BINS`] equal bins of `[0, 1]` (a fixed map chosen before
//! any data, so it is itself a nonconformity measure); scores in one bin are ties, which
//! the smoothed p-value breaks with its random tau. The p-values stay exactly independent
//! and uniform, and the bag is a Fenwick tree of counts: 32 KiB, `O(log BINS)` per score.
//! What is lost is resolution inside a bin (1/4096 of the range), not validity.
//!
//! [`PowerMartingale`] is the simple mixture `M_n = mean over k of prod_i k p_i^(k-1)` over
//! a grid of betting exponents k in (0, 1), kept as logarithms. It suits a test that starts
//! when the shift may already be there (the labelled monitor, which sees few examples).
//!
//! [`ChangePointMartingale`] is for a test that runs for months on every answer. A plain
//! power martingale loses capital at a steady rate while the data stay exchangeable (its
//! logarithm falls by `k - 1 - ln k` per score for each exponent k), so after a long quiet
//! period a shift must first win all that back, and the longer the device ran the later it
//! alarms. A jumper that keeps moving capital between betting states (Vovk et al., "Retrain
//! or not retrain", 2021) reacts in relative terms but pays a constant tax on its total,
//! which Ville's threshold sees: measured here, it alarmed later than the power mixture
//! after 50,000 quiet scores. The change-point mixture instead keeps an idle (non-betting)
//! share and, at step n, starts a fraction `c / (n + 1)` of it betting with every exponent:
//! it is the mixture, over the step t where a change may begin, of power martingales
//! started at t with weight about `c t^-(1+c)`. Idle capital is never bet, so the total
//! stays near `n^-c` on exchangeable data, and a shift that begins at step t costs at most
//! about `(1 + c) ln t + ln(K / c)` nats before it counts, then grows at the rate of the
//! best exponent. Each step's expected factor is 1 under exchangeability: a test
//! martingale, so Ville's bound holds for the whole, unbounded run.
//!
//! Sans IO: the tests drive these with generated streams.

use serde::{Deserialize, Serialize};

/// Bins of `[0, 1]` for the counting bag.
pub const BINS: usize = 4096;

/// Mixture grid of the power martingale's betting exponents k.
pub const K_GRID: usize = 20;

fn k_of(i: usize) -> f64 {
    (i as f64 + 0.5) / K_GRID as f64
}

/// The bin of a score in `[0, 1]` (clamped; NaN goes to the last bin, the strangest).
pub fn bin_of(score: f64) -> usize {
    if score.is_nan() {
        return BINS - 1;
    }
    ((score.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1)
}

/// Counts of earlier scores per bin, with prefix sums (a Fenwick tree).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountingBag {
    tree: Vec<u64>,
    total: u64,
}

impl Default for CountingBag {
    fn default() -> Self {
        CountingBag::new()
    }
}

impl CountingBag {
    pub fn new() -> CountingBag {
        CountingBag {
            tree: vec![0; BINS + 1],
            total: 0,
        }
    }

    /// A bag holding `scores` (e.g. the calibration split's).
    pub fn from_scores(scores: &[f64]) -> CountingBag {
        let mut b = CountingBag::new();
        for &s in scores {
            b.insert(bin_of(s));
        }
        b
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn insert(&mut self, bin: usize) {
        let mut i = bin + 1;
        while i <= BINS {
            self.tree[i] += 1;
            i += i & i.wrapping_neg();
        }
        self.total += 1;
    }

    /// Scores in bins `0..=bin`.
    fn up_to(&self, bin: usize) -> u64 {
        let mut i = (bin + 1).min(BINS);
        let mut s = 0;
        while i > 0 {
            s += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        s
    }

    /// The smoothed conformal p-value of a score in `bin` against the bag:
    /// `(#greater + tau (#equal + 1)) / (n + 1)`, in (0, 1] unless `tau` is 0.
    pub fn p_value(&self, bin: usize, tau: f64) -> f64 {
        let not_above = self.up_to(bin);
        let below = if bin == 0 { 0 } else { self.up_to(bin - 1) };
        let greater = self.total - not_above;
        let equal = not_above - below;
        (greater as f64 + tau * (equal as f64 + 1.0)) / (self.total as f64 + 1.0)
    }
}

/// The mixture of power martingales over [`K_GRID`] exponents, as logarithms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerMartingale {
    log_m: Vec<f64>,
    /// p-values seen.
    pub steps: u64,
    /// Steps when the martingale first reached the threshold it was given.
    pub crossed_after: Option<u64>,
}

impl Default for PowerMartingale {
    fn default() -> Self {
        PowerMartingale::new()
    }
}

impl PowerMartingale {
    pub fn new() -> PowerMartingale {
        PowerMartingale {
            log_m: vec![0.0; K_GRID],
            steps: 0,
            crossed_after: None,
        }
    }

    /// Bets on one p-value; returns true the first time `log M` reaches `log_threshold`
    /// (`ln(1/delta)`).
    pub fn bet(&mut self, p: f64, log_threshold: f64) -> bool {
        // p > 0 unless tau == 0 exactly; keep the logarithm finite
        let lp = p.max(f64::MIN_POSITIVE).ln();
        for (i, m) in self.log_m.iter_mut().enumerate() {
            let k = k_of(i);
            *m += k.ln() + (k - 1.0) * lp;
        }
        self.steps += 1;
        if self.crossed_after.is_none() && self.log_value() >= log_threshold {
            self.crossed_after = Some(self.steps);
            return true;
        }
        false
    }

    /// `ln M_n`.
    pub fn log_value(&self) -> f64 {
        log_mean_exp(&self.log_m)
    }
}

/// `ln(mean(exp(v)))` without overflow.
pub fn log_mean_exp(v: &[f64]) -> f64 {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    let s: f64 = v.iter().map(|x| (x - max).exp()).sum();
    max + (s / v.len() as f64).ln()
}

/// The rate `c` at which [`ChangePointMartingale`] starts idle capital betting.
pub const START_RATE: f64 = 0.5;

/// A test martingale that mixes over the step where a change begins: an idle share that
/// does not bet, and one share per power exponent of [`PowerMartingale`]'s grid, fed from
/// the idle share at a falling rate (see the module comment). Capital is kept as shares
/// and a logarithm, renormalised every step, so it neither overflows nor underflows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangePointMartingale {
    /// Share of the capital in each state (`[0]` idle); they sum to 1.
    shares: Vec<f64>,
    /// `ln` of the whole capital.
    log_capital: f64,
    /// `c`: at step n a fraction `c / (n + 1)` of the idle share starts betting.
    pub start_rate: f64,
    /// p-values seen.
    pub steps: u64,
    /// Steps when the martingale first reached the threshold it was given.
    pub crossed_after: Option<u64>,
}

impl Default for ChangePointMartingale {
    fn default() -> Self {
        ChangePointMartingale::new(START_RATE)
    }
}

impl ChangePointMartingale {
    /// Capital 1, all idle; `start_rate` is clamped to (0, 1].
    pub fn new(start_rate: f64) -> ChangePointMartingale {
        let mut shares = vec![0.0; K_GRID + 1];
        shares[0] = 1.0;
        ChangePointMartingale {
            shares,
            log_capital: 0.0,
            start_rate: if start_rate.is_nan() {
                START_RATE
            } else {
                start_rate.clamp(1e-6, 1.0)
            },
            steps: 0,
            crossed_after: None,
        }
    }

    /// Bets on one p-value; returns true the first time `ln M` reaches `log_threshold`.
    pub fn bet(&mut self, p: f64, log_threshold: f64) -> bool {
        let lp = p.max(f64::MIN_POSITIVE).ln();
        let n = self.steps + 1;
        // step 1 starts a fraction c/2 betting, step n a fraction c/(n+1) of what is left
        let start = self.shares[0] * self.start_rate / (n as f64 + 1.0);
        self.shares[0] -= start;
        let each = start / K_GRID as f64;
        let mut total = self.shares[0];
        for (i, s) in self.shares[1..].iter_mut().enumerate() {
            let k = k_of(i);
            *s = (*s + each) * k * ((k - 1.0) * lp).exp();
            total += *s;
        }
        // total > 0: the idle share never bets and never reaches 0
        for s in &mut self.shares {
            *s /= total;
        }
        self.log_capital += total.ln();
        self.steps = n;
        if self.crossed_after.is_none() && self.log_capital >= log_threshold {
            self.crossed_after = Some(n);
            return true;
        }
        false
    }

    /// `ln M_n`.
    pub fn log_value(&self) -> f64 {
        self.log_capital
    }
}

/// An online exchangeability test of scores in `[0, 1]`: each score's p-value against the
/// calibration scores and every earlier score (then it joins them), bet on by two
/// [`ChangePointMartingale`]s, one on `p` (scores larger than the calibration's) and one on
/// `1 - p` (smaller), and the test's capital is their mean. Under exchangeability `1 - p`
/// is as uniform as `p`, so the mean is a test martingale too and the test alarms with
/// probability at most `delta`, ever. Two-sided because a stream can leave the calibration
/// distribution either way: on GTSRB the darkest tracks sit *closer* to the class
/// centroids than the calibration frames do, and their prediction sets miss more often.
/// The price on a one-sided shift is `ln 2` nats (a few answers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeabilityTest {
    pub delta: f64,
    bag: CountingBag,
    /// Bets on small p-values (larger scores).
    pub martingale: ChangePointMartingale,
    /// Bets on large p-values (smaller scores).
    #[serde(default)]
    pub lower: ChangePointMartingale,
    /// Steps when the mean first reached `1/delta`.
    #[serde(default)]
    pub crossed_after: Option<u64>,
}

impl ExchangeabilityTest {
    /// `delta` in (0, 1): the false-alarm probability allowed.
    pub fn new(calibration: &[f64], delta: f64) -> ExchangeabilityTest {
        ExchangeabilityTest {
            delta,
            bag: CountingBag::from_scores(calibration),
            martingale: ChangePointMartingale::default(),
            lower: ChangePointMartingale::default(),
            crossed_after: None,
        }
    }

    /// One score with its smoothing `tau` (uniform in [0, 1), from the caller's RNG);
    /// returns its p-value and whether the alarm fired now (first crossing).
    pub fn observe(&mut self, score: f64, tau: f64) -> (f64, bool) {
        let bin = bin_of(score);
        let p = self.bag.p_value(bin, tau);
        self.bag.insert(bin);
        // each side is told no threshold: the alarm is the mean's
        self.martingale.bet(p, f64::INFINITY);
        self.lower.bet(1.0 - p, f64::INFINITY);
        let fired = self.crossed_after.is_none() && self.log_value() >= -self.delta.ln();
        if fired {
            self.crossed_after = Some(self.martingale.steps);
        }
        (p, fired)
    }

    /// `ln` of the test's capital, the mean of the two sides.
    pub fn log_value(&self) -> f64 {
        let (a, b) = (self.martingale.log_value(), self.lower.log_value());
        let m = a.max(b);
        m + (0.5 * ((a - m).exp() + (b - m).exp())).ln()
    }

    pub fn alarm_after(&self) -> Option<u64> {
        self.crossed_after
    }

    /// Scores seen so far in the bag (calibration and stream).
    pub fn bag_len(&self) -> u64 {
        self.bag.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn p_values_count_greater_and_ties() {
        let b = CountingBag::from_scores(&[0.1, 0.5, 0.5, 0.9]);
        assert_eq!(b.len(), 4);
        // 0.5's bin: 1 greater (0.9), 2 equal
        let p0 = b.p_value(bin_of(0.5), 0.0);
        let p1 = b.p_value(bin_of(0.5), 1.0);
        assert!((p0 - 1.0 / 5.0).abs() < 1e-12, "{p0}");
        assert!((p1 - 4.0 / 5.0).abs() < 1e-12, "{p1}");
        // beyond the largest: only its own tie
        assert!((b.p_value(bin_of(1.0), 1.0) - 0.2).abs() < 1e-12);
        assert_eq!(bin_of(f64::NAN), BINS - 1);
        assert_eq!(bin_of(-3.0), 0);
    }

    /// The p-values of an exchangeable stream are uniform: their mean is 1/2 and a tenth
    /// fall below 0.1 (even with heavy ties: scores on 10 values only).
    #[test]
    fn exchangeable_p_values_are_uniform_even_with_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cal: Vec<f64> = (0..500)
            .map(|_| f64::from(rng.random_range(0..10u8)) / 10.0)
            .collect();
        let mut t = ExchangeabilityTest::new(&cal, 0.01);
        let (mut sum, mut low, n) = (0.0, 0u32, 20_000);
        for _ in 0..n {
            let s = f64::from(rng.random_range(0..10u8)) / 10.0;
            let (p, _) = t.observe(s, rng.random());
            sum += p;
            low += u32::from(p < 0.1);
        }
        let mean = sum / f64::from(n);
        let frac = f64::from(low) / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((frac - 0.1).abs() < 0.01, "below 0.1: {frac}");
        assert_eq!(t.bag_len(), 500 + 20_000);
    }

    /// Ville: on exchangeable streams the alarm fires in at most a fraction delta of them.
    #[test]
    fn the_false_alarm_rate_stays_below_delta() {
        let delta = 0.05;
        let streams = 300;
        let mut alarms = 0;
        for seed in 0..streams {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let cal: Vec<f64> = (0..300).map(|_| rng.random::<f64>()).collect();
            let mut t = ExchangeabilityTest::new(&cal, delta);
            for _ in 0..3000 {
                let s = rng.random::<f64>();
                t.observe(s, rng.random());
            }
            alarms += usize::from(t.alarm_after().is_some());
        }
        let rate = alarms as f64 / streams as f64;
        assert!(rate <= delta, "false alarms {alarms} of {streams}");
    }

    /// A shift of the scores (inputs stranger than the calibration's) is caught, and the
    /// number of scores it took is reported.
    #[test]
    fn a_shifted_stream_alarms() {
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let cal: Vec<f64> = (0..500).map(|_| rng.random::<f64>() * 0.7).collect();
            let mut t = ExchangeabilityTest::new(&cal, 0.01);
            for _ in 0..2000 {
                let s = rng.random::<f64>() * 0.7 + 0.2;
                if t.observe(s, rng.random()).1 {
                    break;
                }
            }
            let at = t.alarm_after();
            assert!(at.is_some_and(|n| n < 500), "seed {seed}: {at:?}");
        }
    }

    /// Scores that are *smaller* than the calibration's (inputs more typical than the
    /// calibration inputs, or a narrower mix of them) are a departure from exchangeability
    /// too: the lower side catches them, and a one-sided test never would.
    #[test]
    fn a_stream_of_smaller_scores_alarms_too() {
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(500 + seed);
            let cal: Vec<f64> = (0..500).map(|_| rng.random::<f64>() * 0.7 + 0.2).collect();
            let mut t = ExchangeabilityTest::new(&cal, 0.01);
            for _ in 0..2000 {
                let s = rng.random::<f64>() * 0.7;
                if t.observe(s, rng.random()).1 {
                    break;
                }
            }
            let at = t.alarm_after();
            assert!(at.is_some_and(|n| n < 500), "seed {seed}: {at:?}");
            assert!(t.lower.log_value() > t.martingale.log_value());
        }
    }

    /// After a long exchangeable stretch the change-point mixture still catches a shift
    /// quickly; the plain power mixture has lost so much capital meanwhile that it needs
    /// several times longer.
    #[test]
    fn a_shift_after_a_long_quiet_period_is_caught_quickly() {
        let quiet = 50_000;
        let (mut cp_needed, mut power_needed) = (vec![], vec![]);
        for seed in 0..5 {
            let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
            let mut cp = ChangePointMartingale::default();
            let mut pw = PowerMartingale::new();
            let th = -(0.01f64).ln();
            for _ in 0..quiet {
                let p: f64 = rng.random();
                cp.bet(p, th);
                pw.bet(p, th);
            }
            assert!(cp.crossed_after.is_none() && pw.crossed_after.is_none());
            let shares: f64 = cp.shares.iter().sum();
            assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
            // the idle capital alone keeps the total near n^-c
            assert!(cp.log_value() > -10.0, "{}", cp.log_value());
            // then p-values from a shift: U^2 (small p-values more often)
            let (mut cn, mut pn) = (None, None);
            for n in 1..=20_000u64 {
                let u: f64 = rng.random();
                let p = u * u;
                if cp.bet(p, th) && cn.is_none() {
                    cn = Some(n);
                }
                if pw.bet(p, th) && pn.is_none() {
                    pn = Some(n);
                }
            }
            cp_needed.push(cn.unwrap_or(u64::MAX));
            power_needed.push(pn.unwrap_or(u64::MAX));
        }
        println!("after {quiet} exchangeable p-values, shift caught after: change-point mixture {cp_needed:?}, power mixture {power_needed:?}");
        for (c, p) in cp_needed.iter().zip(&power_needed) {
            assert!(*c < 300, "change-point mixture needed {c}");
            assert!(
                c * 3 < *p,
                "change-point mixture {c} not well ahead of the power mixture {p}"
            );
        }
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut t = ExchangeabilityTest::new(&[0.2, 0.4], 0.01);
        t.observe(0.3, 0.5);
        let back: ExchangeabilityTest =
            serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        // the counts exactly; the logarithms to the last digit or so (JSON floats)
        assert_eq!(t.bag, back.bag);
        assert_eq!(t.martingale.steps, back.martingale.steps);
        assert!((t.martingale.log_value() - back.martingale.log_value()).abs() < 1e-12);
        assert!((t.log_value() - back.log_value()).abs() < 1e-12);
    }
}
