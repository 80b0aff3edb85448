//! Adaptive conformal inference (ACI; Gibbs and Candès, "Adaptive conformal inference
//! under distribution shift", NeurIPS 2021): the level at which prediction sets are cut
//! moves with the errors that labels reveal, so that the long-run error rate stays at the
//! target `epsilon` on any sequence, exchangeable or not.
//!
//! State: the working level `alpha_t` (starting at `epsilon`). A prediction at time t is
//! the set `{y : p_y > alpha_t}`; when its label arrives, `err` is 1 if the label was
//! outside that set, and
//!
//! ```text
//! alpha_{t+1} = alpha_t + gamma * (epsilon - err)
//! ```
//!
//! Summing the updates telescopes: `mean(err) - epsilon = (alpha_1 - alpha_{T+1}) / (gamma T)`
//! for ANY sequence of errors. With p-values in (0, 1], a level `alpha <= 0` gives the full
//! set (no error possible) and `alpha >= 1` the empty set (always an error), so `alpha_t`
//! stays in `[-gamma, 1 + gamma]` when each label arrives before the next prediction, and
//! the long-run error rate obeys
//!
//! ```text
//! |mean(err) - epsilon| <= (max(epsilon, 1 - epsilon) + gamma) / (gamma T)
//! ```
//!
//! When labels arrive late (at most `D` predictions outstanding), `alpha_t` can overshoot by
//! `gamma D` more before the errors that push it back arrive; the bound becomes
//! `(max(epsilon, 1 - epsilon) + gamma (1 + D)) / (gamma T)` ([`Aci::bound`] takes D).
//!
//! What it does not give: a per-prediction (conditional) guarantee; under exchangeable data
//! it keeps roughly the static level (sets do not grow), and a smaller gamma moves slower
//! but varies less. Sans IO: [`Aci`] is plain state, saved and restored with serde.

use serde::{Deserialize, Serialize};

use super::IcpError;

/// The adaptive level of one target epsilon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aci {
    /// The long-run error rate wanted.
    pub epsilon: f64,
    /// Step size.
    pub gamma: f64,
    /// The current working level `alpha_t` (may leave [0, 1]: below 0 every set is full,
    /// above 1 every set is empty).
    pub alpha: f64,
    /// Labels seen (T).
    pub labels: u64,
    /// Labels outside their set.
    pub errors: u64,
    /// The most labels outstanding at once (D), for [`Aci::bound`].
    #[serde(default)]
    pub max_outstanding: u64,
}

impl Aci {
    /// A fresh state at `alpha_1 = epsilon`. `epsilon` in (0, 1), `gamma` in (0, 1].
    pub fn new(epsilon: f64, gamma: f64) -> Result<Aci, IcpError> {
        if !(epsilon > 0.0 && epsilon < 1.0) {
            return Err(IcpError::InvalidSetting(format!(
                "ACI epsilon must be in (0, 1), got {epsilon}"
            )));
        }
        if !(gamma > 0.0 && gamma <= 1.0) {
            return Err(IcpError::InvalidSetting(format!(
                "ACI gamma must be in (0, 1], got {gamma}"
            )));
        }
        Ok(Aci {
            epsilon,
            gamma,
            alpha: epsilon,
            labels: 0,
            errors: 0,
            max_outstanding: 0,
        })
    }

    /// The level to cut the next prediction set at: `{y : p_y > level}`. Callers keep it
    /// with the prediction, to tell the error when the label comes.
    pub fn level(&self) -> f64 {
        self.alpha
    }

    /// Whether the true label's p-value `p_true` falls outside the set cut at `level`.
    pub fn is_error(p_true: f64, level: f64) -> bool {
        p_true <= level
    }

    /// One label: `err` whether it was outside the set its prediction was given;
    /// `outstanding` how many other predictions were still waiting for labels (0 when
    /// labels come one by one).
    pub fn update(&mut self, err: bool, outstanding: u64) {
        let e = if err { 1.0 } else { 0.0 };
        self.alpha += self.gamma * (self.epsilon - e);
        self.labels += 1;
        self.errors += u64::from(err);
        self.max_outstanding = self.max_outstanding.max(outstanding);
    }

    /// The error rate over the labels seen (0 before any).
    pub fn error_rate(&self) -> f64 {
        if self.labels == 0 {
            0.0
        } else {
            self.errors as f64 / self.labels as f64
        }
    }

    /// The largest `|error rate - epsilon|` the method allows after the labels seen, for
    /// any sequence (infinite before the first label).
    pub fn bound(&self) -> f64 {
        if self.labels == 0 {
            return f64::INFINITY;
        }
        let start = self.epsilon.max(1.0 - self.epsilon);
        (start + self.gamma * (1.0 + self.max_outstanding as f64))
            / (self.gamma * self.labels as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Runs ACI over `n` steps where `p_true(t, level)` is the p-value of the true label
    /// (any function: the adversary may look at the level), labels one step late when
    /// `delay` (so D = 1).
    fn run(aci: &mut Aci, n: usize, delay: bool, mut p_true: impl FnMut(usize, f64) -> f64) {
        let mut pending: Option<bool> = None;
        for t in 0..n {
            let level = aci.level();
            let err = Aci::is_error(p_true(t, level), level);
            if delay {
                if let Some(e) = pending.replace(err) {
                    aci.update(e, 1);
                }
            } else {
                aci.update(err, 0);
            }
        }
        if let Some(e) = pending {
            aci.update(e, 0);
        }
    }

    fn check(aci: &Aci, what: &str) {
        let gap = (aci.error_rate() - aci.epsilon).abs();
        assert!(
            gap <= aci.bound() + 1e-12,
            "{what}: error rate {} vs epsilon {}: gap {gap} > bound {}",
            aci.error_rate(),
            aci.epsilon,
            aci.bound()
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(Aci::new(0.0, 0.1).is_err());
        assert!(Aci::new(1.0, 0.1).is_err());
        assert!(Aci::new(f64::NAN, 0.1).is_err());
        assert!(Aci::new(0.05, 0.0).is_err());
        assert!(Aci::new(0.05, 1.5).is_err());
        let a = Aci::new(0.05, 0.01).unwrap();
        assert_eq!(a.level(), 0.05);
        assert!(a.bound().is_infinite());
    }

    /// The long-run bound holds on sequences chosen against the method: an adversary
    /// that makes every prediction wrong whenever it can (p-value just at the level), one
    /// that is never wrong, alternating regimes, a shift halfway, random p-values of a
    /// miscalibrated model, and the same with labels one step late.
    #[test]
    fn the_long_run_bound_holds_on_adversarial_sequences() {
        for &eps in &[0.01, 0.05, 0.1, 0.3] {
            for &gamma in &[0.001, 0.005, 0.05, 0.5] {
                for delay in [false, true] {
                    let n = 20_000;
                    let tag = |s: &str| format!("{s} eps {eps} gamma {gamma} delay {delay}");
                    // wrong whenever a set can be wrong: the true label's p-value equals
                    // the level (a level <= 0 gives the full set: nothing can be wrong)
                    let mut a = Aci::new(eps, gamma).unwrap();
                    run(&mut a, n, delay, |_, level| {
                        if level > 0.0 {
                            level.min(1.0)
                        } else {
                            1.0
                        }
                    });
                    check(&a, &tag("always wrong"));
                    // never wrong (p = 1 unless the set is empty)
                    let mut a = Aci::new(eps, gamma).unwrap();
                    run(&mut a, n, delay, |_, _| 1.0);
                    check(&a, &tag("never wrong"));
                    // regimes of 500 wrong / 500 right
                    let mut a = Aci::new(eps, gamma).unwrap();
                    run(&mut a, n, delay, |t, level| {
                        if (t / 500) % 2 == 0 && level > 0.0 {
                            level.min(1.0)
                        } else {
                            1.0
                        }
                    });
                    check(&a, &tag("regimes"));
                    // a model calibrated for the first half, then p-values shrunk 10x
                    // (the calibration no longer holds)
                    let mut rng = ChaCha8Rng::seed_from_u64(7);
                    let mut a = Aci::new(eps, gamma).unwrap();
                    run(&mut a, n, delay, |t, _| {
                        let u: f64 = rng.random();
                        if t < n / 2 {
                            u
                        } else {
                            u * 0.1
                        }
                    });
                    check(&a, &tag("shift"));
                }
            }
        }
    }

    /// On exchangeable p-values (uniform, as a valid ICP gives) the level stays near
    /// epsilon and the error rate near epsilon: ACI does not inflate the sets.
    #[test]
    fn on_exchangeable_data_the_level_stays_near_epsilon() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut a = Aci::new(0.05, 0.005).unwrap();
        let mut levels = 0.0;
        let n = 50_000;
        run(&mut a, n, false, |_, _| {
            let u: f64 = rng.random();
            u
        });
        for _ in 0..1000 {
            levels += a.level();
            let u: f64 = rng.random();
            a.update(Aci::is_error(u, a.level()), 0);
        }
        let mean_level = levels / 1000.0;
        assert!((a.error_rate() - 0.05).abs() < 0.005, "{}", a.error_rate());
        assert!((mean_level - 0.05).abs() < 0.03, "mean level {mean_level}");
    }

    /// Under a shift that makes the static level wrong, ACI brings the error rate back to
    /// epsilon where the static cut stays wrong.
    #[test]
    fn under_shift_aci_corrects_what_the_static_level_gets_wrong() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let eps = 0.05;
        let mut a = Aci::new(eps, 0.01).unwrap();
        let (mut static_err, n) = (0u32, 40_000);
        for _ in 0..n {
            // the true label's p-value under shift: U^3 (mass near 0: too many errors)
            let u: f64 = rng.random();
            let p = u * u * u;
            static_err += u32::from(p <= eps);
            a.update(Aci::is_error(p, a.level()), 0);
        }
        let static_rate = f64::from(static_err) / f64::from(n);
        assert!(static_rate > 0.3, "static {static_rate}");
        assert!(
            (a.error_rate() - eps).abs() < 0.01,
            "aci {}",
            a.error_rate()
        );
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut a = Aci::new(0.1, 0.02).unwrap();
        a.update(true, 3);
        a.update(false, 0);
        let back: Aci = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a, back);
    }
}
