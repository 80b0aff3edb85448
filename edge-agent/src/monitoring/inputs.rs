//! Drift without labels: is the device still seeing inputs like the calibration inputs?
//!
//! Every answer carries a label-free score (`shared::icp::novelty`: the distance of its
//! embedding to the nearest class centroid, or in older bundles the nonconformity of its
//! most conforming class). The bundle stores the same score for every calibration example. Each answer's score
//! gets a smoothed conformal p-value against the calibration scores and every earlier
//! answer's, and a conformal test martingale bets on those p-values
//! (`shared::icp::martingale::ExchangeabilityTest`, a change-point mixture so that it still
//! reacts quickly after months of quiet). If the answered inputs are exchangeable with the calibration inputs,
//! the martingale reaches `1/delta` with probability at most `delta`, ever (Ville's
//! inequality): an alarm is a false alarm with probability at most `delta`.
//!
//! What it detects: a change in the distribution of the inputs as the embedding sees them
//! (darker, noisier, rotated, another camera or another place), as far as it moves the
//! label-free score. What it cannot detect: a change of the labels given the inputs (the
//! same images now meaning other classes), nor a shift the embedding maps onto the
//! calibration inputs' scores. The labelled monitor (`validity`) covers the first when
//! labels arrive.
//!
//! Sans IO: the HTTP handlers feed it scores; it holds 32 KiB of counts per model.

use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use shared::icp::martingale::ExchangeabilityTest;

/// The figures of the label-free monitor at one moment.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DriftSnapshot {
    pub model_id: String,
    /// False when the bundle has no label-free calibration scores (trained before they
    /// were written): nothing is tested then, and `note` says so.
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Which label-free score is tested (`centroid_distance` or `min_score`,
    /// `shared::icp::novelty`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<&'static str>,
    /// Calibration examples the answers are compared with.
    pub calibration: usize,
    /// Mean label-free score of the calibration examples.
    pub calibration_mean_score: f64,
    /// Answers tested since the start or the last reset.
    pub answers: u64,
    /// Mean label-free score of those answers.
    pub mean_score: f64,
    pub delta: f64,
    pub martingale: f64,
    pub log10_martingale: f64,
    pub alarm_threshold: f64,
    /// The martingale reached `1/delta`: the inputs no longer look like the calibration
    /// inputs. Latches until an explicit reset.
    pub alarm: bool,
    /// Answers seen when it first did.
    pub alarm_after: Option<u64>,
    pub resets: u64,
}

struct State {
    test: Option<ExchangeabilityTest>,
    rng: ChaCha8Rng,
    answers: u64,
    score_sum: f64,
    resets: u64,
}

/// The label-free drift monitor of one model.
pub struct InputMonitor {
    model_id: String,
    score: Option<&'static str>,
    delta: f64,
    log_alarm: bool,
    /// What a reset starts from (`None`: not available).
    calibration: Option<Vec<f64>>,
    calibration_mean: f64,
    state: Mutex<State>,
}

impl std::fmt::Debug for InputMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputMonitor")
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

impl InputMonitor {
    /// A monitor against `calibration` (the bundle's label-free calibration scores, or
    /// `None` when it has none). `delta` in (0, 1) is the false-alarm probability;
    /// `seed` seeds the smoothing taus.
    pub fn new(
        model_id: &str,
        calibration: Option<&[f64]>,
        delta: f64,
        seed: u64,
        log_alarm: bool,
    ) -> InputMonitor {
        let calibration = calibration.map(|c| c.to_vec());
        let calibration_mean = calibration
            .as_ref()
            .filter(|c| !c.is_empty())
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .unwrap_or(0.0);
        InputMonitor {
            model_id: model_id.to_string(),
            score: None,
            delta,
            log_alarm,
            state: Mutex::new(State {
                test: calibration
                    .as_ref()
                    .map(|c| ExchangeabilityTest::new(c, delta)),
                // a stream of its own, apart from the labelled monitor's taus
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6c61_6265_6c66_7265),
                answers: 0,
                score_sum: 0.0,
                resets: 0,
            }),
            calibration,
            calibration_mean,
        }
    }

    /// Names the score under test in the snapshots (`LabelFreeKind::name`).
    pub fn with_score(mut self, name: &'static str) -> InputMonitor {
        self.score = Some(name);
        self
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Tests the label-free scores of a batch of answers, in order; returns whether the
    /// alarm fired during this batch.
    pub fn observe(&self, scores: &[f64]) -> bool {
        let mut s = self.lock();
        let State {
            test,
            rng,
            answers,
            score_sum,
            ..
        } = &mut *s;
        let Some(test) = test.as_mut() else {
            return false;
        };
        let mut fired = false;
        for &score in scores {
            *answers += 1;
            *score_sum += if score.is_finite() { score } else { 1.0 };
            let tau: f64 = rng.random();
            fired |= test.observe(score, tau).1;
        }
        if fired && self.log_alarm {
            tracing::warn!(
                model_id = %self.model_id,
                after = test.alarm_after(),
                martingale = test.log_value().exp(),
                threshold = 1.0 / self.delta,
                "drift: the label-free test martingale crossed 1/delta: the inputs no longer look like the calibration inputs (no labels needed)"
            );
        }
        fired
    }

    /// Starts afresh from the calibration scores; returns the figures before.
    pub fn reset(&self) -> DriftSnapshot {
        let mut s = self.lock();
        let before = self.snapshot_of(&s);
        s.test = self
            .calibration
            .as_ref()
            .map(|c| ExchangeabilityTest::new(c, self.delta));
        s.answers = 0;
        s.score_sum = 0.0;
        s.resets += 1;
        before
    }

    pub fn snapshot(&self) -> DriftSnapshot {
        let s = self.lock();
        self.snapshot_of(&s)
    }

    fn snapshot_of(&self, s: &State) -> DriftSnapshot {
        let log_m = s.test.as_ref().map(|t| t.log_value()).unwrap_or(0.0);
        let alarm_after = s.test.as_ref().and_then(|t| t.alarm_after());
        DriftSnapshot {
            model_id: self.model_id.clone(),
            available: self.calibration.is_some(),
            note: self.calibration.is_none().then(|| {
                "the bundle has no label-free calibration scores (calibration_centroid_distance or calibration_label_free.<measure> in reference.safetensors): retrain to enable the label-free drift monitor".to_string()
            }),
            score: self.score,
            calibration: self.calibration.as_ref().map_or(0, |c| c.len()),
            calibration_mean_score: self.calibration_mean,
            answers: s.answers,
            mean_score: if s.answers == 0 {
                0.0
            } else {
                s.score_sum / s.answers as f64
            },
            delta: self.delta,
            martingale: log_m.exp(),
            log10_martingale: log_m / std::f64::consts::LN_10,
            alarm_threshold: 1.0 / self.delta,
            alarm: alarm_after.is_some(),
            alarm_after,
            resets: s.resets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration(rng: &mut ChaCha8Rng) -> Vec<f64> {
        (0..1000).map(|_| rng.random::<f64>() * 0.6).collect()
    }

    #[test]
    fn exchangeable_answers_rarely_alarm_and_shifted_ones_do() {
        let delta = 0.05;
        let streams = if cfg!(edgecp_cross) { 60 } else { 200 };
        let mut false_alarms = 0;
        let mut needed = vec![];
        for seed in 0..streams {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let cal = calibration(&mut rng);
            let quiet = InputMonitor::new("m", Some(&cal), delta, seed, false);
            let batch: Vec<f64> = (0..2000).map(|_| rng.random::<f64>() * 0.6).collect();
            false_alarms += usize::from(quiet.observe(&batch));
            // answers a little stranger than the calibration inputs, one at a time
            let shifted = InputMonitor::new("m", Some(&cal), delta, seed, false);
            for _ in 0..2000 {
                if shifted.observe(&[rng.random::<f64>() * 0.6 + 0.1]) {
                    break;
                }
            }
            let s = shifted.snapshot();
            assert!(s.alarm, "seed {seed}: no alarm on a shifted stream: {s:?}");
            needed.extend(s.alarm_after);
        }
        needed.sort();
        println!(
            "label-free: {false_alarms} false alarms in {streams} exchangeable streams of 2000 (delta {delta}); shift caught after {} (median) / {} (max) answers",
            needed[needed.len() / 2],
            needed[needed.len() - 1]
        );
        assert!(false_alarms as f64 / streams as f64 <= delta);
    }

    #[test]
    fn a_bundle_without_label_free_scores_says_so_and_tests_nothing() {
        let m = InputMonitor::new("old", None, 0.01, 0, false);
        assert!(!m.observe(&[1.0; 100]));
        let s = m.snapshot();
        assert!(!s.available && !s.alarm && s.answers == 0, "{s:?}");
        assert!(s.note.unwrap().contains("calibration_label_free"));
    }

    #[test]
    fn the_alarm_latches_until_a_reset() {
        let cal: Vec<f64> = (0..100).map(|i| f64::from(i) / 200.0).collect();
        let m = InputMonitor::new("m", Some(&cal), 0.01, 0, false);
        // answers stranger than every calibration input, NaN among them (counted strange)
        let mut strange = vec![0.9; 60];
        strange[3] = f64::NAN;
        assert!(m.observe(&strange));
        assert!(!m.observe(&[0.1; 50]), "fires once");
        let s = m.snapshot();
        assert!(s.alarm && s.answers == 110, "{s:?}");
        assert!(s.mean_score > s.calibration_mean_score);
        let before = m.reset();
        assert!(before.alarm);
        let s = m.snapshot();
        assert!(!s.alarm && s.answers == 0 && s.martingale == 1.0 && s.resets == 1);
    }
}
