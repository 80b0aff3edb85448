//! Online validity: true labels arrive later (`POST /v1/feedback`, by prediction id) and
//! two things are tracked per active model.
//!
//! Prediction ids are 128 random bits ([`PredictionId`]): only whoever saw an answer can
//! label it. The alarm and the violation flag latch until [`Monitor::reset`], an explicit
//! action that is logged.
//!
//! 1. The empirical error rate (true label outside the prediction set) with an exact
//!    Clopper-Pearson interval; `violation` when its lower end is above the mean epsilon.
//! 2. A conformal test martingale. Each labelled example gets the smoothed conformal
//!    p-value of its true-label score against the calibration scores plus every earlier
//!    labelled score (the bag grows as labels arrive), which under exchangeability makes
//!    the p-values independent and uniform (Vovk, Nouretdinov, Gammerman 2003). The
//!    martingale is the simple mixture `M_n = mean over k of prod_i k p_i^(k-1)` over a
//!    grid of k in (0, 1); by Ville's inequality P(sup M_n >= 1/delta) <= delta, so an
//!    alarm at 1/delta is a false alarm with probability at most delta.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::Serializer;

use shared::icp::martingale::PowerMartingale;

use crate::model::loader::LoadedModel;
use crate::monitoring::adaptive::{Adaptive, AdaptiveConfig, LevelSnapshot};
use crate::monitoring::inputs::InputMonitor;
use crate::monitoring::stats::clopper_pearson;

/// Settings of the monitor.
#[derive(Clone, Debug)]
pub struct ValidityConfig {
    /// Alarm when the martingale reaches 1/delta.
    pub delta: f64,
    /// Confidence level of the error-rate interval is `1 - ci_alpha`.
    pub ci_alpha: f64,
    /// Predictions kept waiting for their label (oldest dropped first).
    pub max_pending: usize,
    /// Seed of the smoothing taus.
    pub seed: u64,
    /// Log the alarm as a warning (off for `edge-agent drift`'s many replayed streams).
    pub log_alarm: bool,
    /// Adaptive calibration from labels (ACI), opt-in.
    pub adaptive: Option<AdaptiveConfig>,
}

impl Default for ValidityConfig {
    fn default() -> Self {
        ValidityConfig {
            delta: 0.01,
            ci_alpha: 0.05,
            max_pending: 8192,
            seed: 0,
            log_alarm: true,
            adaptive: None,
        }
    }
}

/// The id of an answer: 128 bits from a CSPRNG (rand's thread RNG, ChaCha12 seeded and
/// reseeded from the OS), written as 32 hex digits. Unguessable, so feedback by id labels
/// only answers its sender has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PredictionId(u128);

impl PredictionId {
    /// A fresh random id.
    pub fn random() -> PredictionId {
        PredictionId(rand::rng().random())
    }

    /// Parses the 32-hex-digit form; `None` for anything else.
    pub fn parse(s: &str) -> Option<PredictionId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(PredictionId)
    }
}

impl std::fmt::Display for PredictionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for PredictionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why feedback was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeedbackError {
    #[error("no pending prediction with id {0:?} (unknown, already labelled, or expired)")]
    UnknownId(String),
    #[error("prediction {id} was made by model {made_by}, the active model is {active}")]
    OtherModel {
        id: String,
        made_by: String,
        active: String,
    },
    #[error("label {label} is out of range for {n_classes} classes")]
    Label { label: u16, n_classes: usize },
    #[error("{0}")]
    Score(String),
}

/// A prediction waiting for its true label.
#[derive(Clone, Debug)]
struct Pending {
    embedding: Vec<f32>,
    set: Vec<u16>,
    epsilon: f64,
}

/// The figures at one moment.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ValiditySnapshot {
    pub model_id: String,
    pub feedback: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub error_rate_ci_low: f64,
    pub error_rate_ci_high: f64,
    pub ci_level: f64,
    pub mean_epsilon: f64,
    /// The interval lies above the mean epsilon: the error bound is violated.
    pub violation: bool,
    pub martingale: f64,
    pub log10_martingale: f64,
    pub alarm_threshold: f64,
    pub alarm: bool,
    /// Labelled examples seen when the martingale first crossed 1/delta.
    pub alarm_after: Option<u64>,
    pub pending: usize,
    /// Explicit resets of the figures so far ([`Monitor::reset`]).
    pub resets: u64,
    /// The adaptive levels (`--adaptive aci`), one per epsilon answered at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<Vec<LevelSnapshot>>,
}

struct State {
    pending: HashMap<PredictionId, Pending>,
    order: VecDeque<PredictionId>,
    feedback: u64,
    errors: u64,
    epsilon_sum: f64,
    /// Sorted scores: one bag (pooled) or one per class (Mondrian).
    bags: Vec<Vec<f64>>,
    /// The mixture of power martingales (shared::icp::martingale); its crossing of 1/delta
    /// is the alarm, counted in labelled examples (it bets once per feedback).
    martingale: PowerMartingale,
    rng: ChaCha8Rng,
    resets: u64,
}

/// The online validity monitor of one model.
pub struct Monitor {
    model_id: String,
    mondrian: bool,
    cfg: ValidityConfig,
    /// The calibration bags, sorted (what a reset returns to).
    calibration: Vec<Vec<f64>>,
    state: Mutex<State>,
    /// The label-free drift monitor of the same model (every answer, no labels).
    inputs: InputMonitor,
    /// ACI levels, when the adaptive mode is on.
    adaptive: Option<Adaptive>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor whose bags start as the model's calibration scores.
    pub fn for_model(model: &LoadedModel, cfg: ValidityConfig) -> Monitor {
        let cal = model.predictor.icp().calibration();
        let mondrian = cal.is_mondrian();
        let bags = if mondrian {
            (0..cal.n_classes())
                .map(|c| cal.scores_for(c).to_vec())
                .collect()
        } else {
            vec![cal.scores_for(0).to_vec()]
        };
        let mut m = Monitor::with_bags(model.model_id(), bags, mondrian, cfg);
        m.inputs = InputMonitor::new(
            model.model_id(),
            model.predictor.label_free_calibration(),
            m.cfg.delta,
            m.cfg.seed,
            m.cfg.log_alarm,
        );
        if let Some(kind) = model.predictor.label_free_kind() {
            m.inputs = m.inputs.with_score(kind.name());
        }
        m.adaptive = m
            .cfg
            .adaptive
            .clone()
            .map(|a| Adaptive::load(model.model_id(), a));
        m
    }

    /// A monitor over given calibration scores (`bags[0]` pooled, else one per class).
    pub fn with_bags(
        model_id: &str,
        mut bags: Vec<Vec<f64>>,
        mondrian: bool,
        cfg: ValidityConfig,
    ) -> Monitor {
        for b in &mut bags {
            b.retain(|v| !v.is_nan());
            b.sort_by(f64::total_cmp);
        }
        Monitor {
            model_id: model_id.to_string(),
            mondrian,
            state: Mutex::new(State {
                pending: HashMap::new(),
                order: VecDeque::new(),
                feedback: 0,
                errors: 0,
                epsilon_sum: 0.0,
                bags: bags.clone(),
                martingale: PowerMartingale::new(),
                rng: ChaCha8Rng::seed_from_u64(cfg.seed),
                resets: 0,
            }),
            calibration: bags,
            inputs: InputMonitor::new(model_id, None, cfg.delta, cfg.seed, cfg.log_alarm),
            adaptive: None,
            cfg,
        }
    }

    /// The adaptive levels, when the mode is on: answers at epsilon are cut at
    /// `adaptive().level(epsilon)`.
    pub fn adaptive(&self) -> Option<&Adaptive> {
        self.adaptive.as_ref()
    }

    /// The label-free drift monitor of the same model.
    pub fn inputs(&self) -> &InputMonitor {
        &self.inputs
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

    /// Starts the figures afresh: error counts, the martingale, the alarm and the
    /// violation flag, and the bags back to the calibration scores (predictions waiting for
    /// their label stay); the label-free monitor too (see [`Monitor::inputs`]). Logged as
    /// a warning with `who` and `why`; returns the figures before the reset.
    pub fn reset(&self, who: &str, why: &str) -> ValiditySnapshot {
        let drift_before = self.inputs.reset();
        let mut s = self.lock();
        let before = self.snapshot_of(&s);
        s.feedback = 0;
        s.errors = 0;
        s.epsilon_sum = 0.0;
        s.bags = self.calibration.clone();
        s.martingale = PowerMartingale::new();
        s.resets += 1;
        tracing::warn!(
            model_id = %self.model_id,
            who,
            why,
            feedback_before = before.feedback,
            errors_before = before.errors,
            alarm_before = before.alarm,
            violation_before = before.violation,
            martingale_before = before.martingale,
            label_free_alarm_before = drift_before.alarm,
            label_free_answers_before = drift_before.answers,
            "validity: figures, drift alarms (labelled and label-free) and violation flag reset"
        );
        before
    }

    /// Remembers a prediction until its label arrives.
    pub fn record(&self, id: PredictionId, embedding: &[f32], set: &[u16], epsilon: f64) {
        let mut s = self.lock();
        while s.order.len() >= self.cfg.max_pending {
            if let Some(old) = s.order.pop_front() {
                s.pending.remove(&old);
            }
        }
        s.order.push_back(id);
        s.pending.insert(
            id,
            Pending {
                embedding: embedding.to_vec(),
                set: set.to_vec(),
                epsilon,
            },
        );
    }

    /// The true label of prediction `id`, scored with `model` (the active one).
    pub fn feedback(
        &self,
        id: &str,
        label: u16,
        model: &LoadedModel,
    ) -> Result<ValiditySnapshot, FeedbackError> {
        if model.model_id() != self.model_id {
            return Err(FeedbackError::OtherModel {
                id: id.to_string(),
                made_by: self.model_id.clone(),
                active: model.model_id().to_string(),
            });
        }
        let n_classes = model.predictor.n_classes();
        if usize::from(label) >= n_classes {
            return Err(FeedbackError::Label { label, n_classes });
        }
        let (p, outstanding) = {
            let mut s = self.lock();
            let unknown = || FeedbackError::UnknownId(id.chars().take(64).collect());
            let key = PredictionId::parse(id).ok_or_else(unknown)?;
            let p = s.pending.remove(&key).ok_or_else(unknown)?;
            s.order.retain(|&o| o != key);
            (p, s.pending.len() as u64)
        };
        let alpha = model
            .predictor
            .score(&p.embedding, label)
            .map_err(|e| FeedbackError::Score(e.to_string()))?;
        let error = !p.set.contains(&label);
        if let Some(a) = &self.adaptive {
            // the stored set is the one the answer gave (cut at its level)
            a.update(p.epsilon, error, outstanding);
        }
        Ok(self.observe(alpha, label, error, p.epsilon))
    }

    /// One labelled example: its true-label score `alpha`, whether the set missed it, and
    /// the epsilon it was answered at.
    pub fn observe(&self, alpha: f64, label: u16, error: bool, epsilon: f64) -> ValiditySnapshot {
        let mut s = self.lock();
        s.feedback += 1;
        s.errors += u64::from(error);
        s.epsilon_sum += epsilon;
        let bag_i = if self.mondrian { usize::from(label) } else { 0 };
        let tau: f64 = s.rng.random();
        let p = {
            let bag = &s.bags[bag_i.min(s.bags.len() - 1)];
            let below = bag.partition_point(|&v| v < alpha);
            let not_above = bag.partition_point(|&v| v <= alpha);
            let greater = bag.len() - not_above;
            let equal = not_above - below;
            (greater as f64 + tau * (equal as f64 + 1.0)) / (bag.len() as f64 + 1.0)
        };
        let bi = bag_i.min(s.bags.len() - 1);
        let bag = &mut s.bags[bi];
        let at = bag.partition_point(|&v| v < alpha);
        bag.insert(at, alpha);
        let fired = s.martingale.bet(p, -self.cfg.delta.ln());
        if fired && self.cfg.log_alarm {
            tracing::warn!(
                model_id = %self.model_id,
                after = s.feedback,
                martingale = s.martingale.log_value().exp(),
                threshold = 1.0 / self.cfg.delta,
                "validity: the conformal test martingale crossed 1/delta: the data no longer look exchangeable with the calibration data (drift)"
            );
        }
        self.snapshot_of(&s)
    }

    pub fn snapshot(&self) -> ValiditySnapshot {
        let s = self.lock();
        self.snapshot_of(&s)
    }

    fn snapshot_of(&self, s: &State) -> ValiditySnapshot {
        let (lo, hi) = clopper_pearson(s.errors, s.feedback, self.cfg.ci_alpha);
        let mean_epsilon = if s.feedback == 0 {
            0.0
        } else {
            s.epsilon_sum / s.feedback as f64
        };
        let log_m = s.martingale.log_value();
        ValiditySnapshot {
            model_id: self.model_id.clone(),
            feedback: s.feedback,
            errors: s.errors,
            error_rate: if s.feedback == 0 {
                0.0
            } else {
                s.errors as f64 / s.feedback as f64
            },
            error_rate_ci_low: lo,
            error_rate_ci_high: hi,
            ci_level: 1.0 - self.cfg.ci_alpha,
            mean_epsilon,
            violation: s.feedback > 0 && lo > mean_epsilon,
            martingale: log_m.exp(),
            log10_martingale: log_m / std::f64::consts::LN_10,
            alarm_threshold: 1.0 / self.cfg.delta,
            alarm: s.martingale.crossed_after.is_some(),
            alarm_after: s.martingale.crossed_after,
            pending: s.pending.len(),
            resets: s.resets,
            adaptive: self.adaptive.as_ref().map(|a| a.snapshot()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(delta: f64, seed: u64) -> ValidityConfig {
        ValidityConfig {
            delta,
            seed,
            ..ValidityConfig::default()
        }
    }

    /// Runs `steps` labelled examples whose scores come from `draw`; returns when the alarm
    /// fired (if it did).
    fn run(seed: u64, delta: f64, steps: usize, shift: f64) -> Option<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
        let cal: Vec<f64> = (0..500).map(|_| rng.random::<f64>()).collect();
        let m = Monitor::with_bags("m", vec![cal], false, cfg(delta, seed));
        for _ in 0..steps {
            let a = rng.random::<f64>() + shift;
            let s = m.observe(a, 0, false, 0.05);
            if s.alarm {
                return s.alarm_after;
            }
        }
        None
    }

    #[test]
    fn on_exchangeable_streams_the_alarm_rate_stays_below_delta() {
        let delta = 0.05;
        // fewer streams under qemu (cross/test.sh), where the arithmetic is the same
        let seeds = if cfg!(edgecp_cross) { 100 } else { 400 };
        let alarms = (0..seeds)
            .filter(|&s| run(s, delta, 2000, 0.0).is_some())
            .count();
        let rate = alarms as f64 / seeds as f64;
        println!("exchangeable: {alarms} alarms in {seeds} streams of 2000 (rate {rate:.4}, delta {delta})");
        assert!(rate <= delta, "alarm rate {rate} > delta {delta}");
    }

    #[test]
    fn on_a_shifted_stream_the_alarm_fires_and_says_when() {
        // scores shifted up by 0.3 of their range: the test inputs look stranger than
        // the calibration inputs (e.g. darkened or rotated images)
        let mut needed = vec![];
        for seed in 0..20 {
            let at = run(seed, 0.01, 5000, 0.3);
            assert!(at.is_some(), "seed {seed}: no alarm on a shifted stream");
            needed.extend(at);
        }
        needed.sort();
        println!(
            "shifted by 0.3: alarm after {} (median) / {} (max) labelled examples, delta 0.01",
            needed[needed.len() / 2],
            needed[needed.len() - 1]
        );
        assert!(needed[needed.len() - 1] < 500);
    }

    #[test]
    fn the_error_rate_carries_an_exact_interval() {
        let m = Monitor::with_bags("m", vec![vec![0.5]], false, cfg(0.01, 0));
        for i in 0..100 {
            m.observe(0.5, 0, i % 20 == 0, 0.05);
        }
        let s = m.snapshot();
        assert_eq!((s.feedback, s.errors), (100, 5));
        assert!((s.error_rate_ci_low - 0.01643187).abs() < 1e-6);
        assert!(!s.violation);
    }

    #[test]
    fn ids_are_random_hex_and_parse_back() {
        let a = PredictionId::random();
        let b = PredictionId::random();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(PredictionId::parse(&text), Some(a));
        assert_eq!(serde_json::to_value(a).unwrap(), serde_json::json!(text));
        for bad in [
            "",
            "1",
            "999999",
            &text[1..],
            &format!("{text}0"),
            "g".repeat(32).as_str(),
        ] {
            assert_eq!(PredictionId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_alarm_latches_until_an_explicit_reset() {
        let cal: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let m = Monitor::with_bags("m", vec![cal], false, cfg(0.01, 0));
        // scores far above every calibration score: p-values near 0, errors
        let mut s = m.snapshot();
        for _ in 0..50 {
            s = m.observe(5.0, 0, true, 0.05);
        }
        assert!(s.alarm && s.violation, "{s:?}");
        // ordinary labels afterwards do not clear it
        for i in 0..50 {
            s = m.observe(i as f64 / 50.0, 0, false, 0.05);
        }
        assert!(s.alarm && s.violation, "{s:?}");
        let before = m.reset("test", "cleared after inspection");
        assert!(before.alarm && before.violation);
        let s = m.snapshot();
        assert!(
            !s.alarm && !s.violation && s.feedback == 0 && s.martingale == 1.0,
            "{s:?}"
        );
        assert_eq!(s.resets, 1);
    }
}
