//! The health of the serving model, as a rollout's health gate and the device's telemetry
//! see it.
//!
//! [`Tap`] collects, per model, what the HTTP path observes on every answer (latency, set
//! sizes, errors); it is a few counters and a bounded ring of latencies behind one mutex.
//! [`judge`] is the gate's verdict, a pure function of the window's figures, the previous
//! model's latency and the validation figures the bundle's manifest carries, so that tests
//! drive it without a model or a clock.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// Latencies kept per model for percentiles (the newest ones).
const LATENCY_RING: usize = 4096;
/// Set sizes above this share the last histogram bucket.
pub const SET_SIZE_BUCKETS: usize = 8;

/// What one model's answers looked like since a point in time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    /// Answers given (one per input).
    pub answers: u64,
    /// Requests that failed inside the model (not the client's bad input).
    pub errors: u64,
    /// Requests answered (batches count once).
    pub requests: u64,
    pub empty: u64,
    pub set_size_sum: u64,
    /// Answers by set size: 0, 1, ..., `SET_SIZE_BUCKETS - 1` or more.
    pub set_sizes: [u64; SET_SIZE_BUCKETS],
    #[serde(skip)]
    latencies: Vec<f64>,
    #[serde(skip)]
    next: usize,
}

impl Window {
    fn push_latency(&mut self, s: f64) {
        if self.latencies.len() < LATENCY_RING {
            self.latencies.push(s);
        } else {
            self.latencies[self.next] = s;
            self.next = (self.next + 1) % LATENCY_RING;
        }
    }

    /// Latency quantile `q` in seconds over the kept requests; `None` without any.
    pub fn latency(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        Some(crate::monitoring::stats::percentile(&v, q))
    }

    pub fn latency_count(&self) -> usize {
        self.latencies.len()
    }

    pub fn empty_rate(&self) -> Option<f64> {
        (self.answers > 0).then(|| self.empty as f64 / self.answers as f64)
    }

    pub fn mean_set_size(&self) -> Option<f64> {
        (self.answers > 0).then(|| self.set_size_sum as f64 / self.answers as f64)
    }

    pub fn error_rate(&self) -> Option<f64> {
        let n = self.requests + self.errors;
        (n > 0).then(|| self.errors as f64 / n as f64)
    }
}

/// Per-model windows, fed by the HTTP path.
#[derive(Debug, Default)]
pub struct Tap {
    models: Mutex<HashMap<String, Window>>,
}

impl Tap {
    fn with<R>(&self, model_id: &str, f: impl FnOnce(&mut Window) -> R) -> R {
        let mut g = self.models.lock().unwrap_or_else(|p| p.into_inner());
        // a device serves one or two models at a time; more means stale entries
        if g.len() > 8 && !g.contains_key(model_id) {
            g.clear();
        }
        f(g.entry(model_id.to_string()).or_default())
    }

    /// One answered request: its latency and the size of each answer's set.
    pub fn answered(&self, model_id: &str, seconds: f64, sizes: &[usize]) {
        self.with(model_id, |w| {
            w.requests += 1;
            w.push_latency(seconds);
            for &s in sizes {
                w.answers += 1;
                w.set_size_sum += s as u64;
                if s == 0 {
                    w.empty += 1;
                }
                w.set_sizes[s.min(SET_SIZE_BUCKETS - 1)] += 1;
            }
        });
    }

    /// One request the model failed.
    pub fn failed(&self, model_id: &str) {
        self.with(model_id, |w| w.errors += 1);
    }

    /// The window of `model_id` so far, which starts again empty.
    pub fn take(&self, model_id: &str) -> Window {
        self.with(model_id, std::mem::take)
    }

    /// A copy of the window of `model_id` so far.
    pub fn peek(&self, model_id: &str) -> Window {
        self.with(model_id, |w| w.clone())
    }
}

/// The gate's settings.
#[derive(Clone, Debug, Serialize)]
pub struct GateSettings {
    /// The gate lasts at least this long after activation...
    pub window_ms: u64,
    /// ... and until this many answers were given ...
    pub min_answers: u64,
    /// ... but no longer than this: then it judges what it has.
    pub max_window_ms: u64,
    /// Highest error rate (failed requests / requests).
    pub max_error_rate: f64,
    /// p99 latency may be this many times the previous model's ...
    pub p99_ratio: f64,
    /// ... plus this many milliseconds (short requests jitter).
    pub p99_slack_ms: f64,
    /// Empty-set rate and mean set size may differ from the manifest's validation
    /// figures by this much (absolute) ...
    pub set_margin: f64,
    /// ... once the window holds this many answers (fewer say too little).
    pub min_answers_for_sets: u64,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            window_ms: 30_000,
            min_answers: 20,
            max_window_ms: 600_000,
            max_error_rate: 0.01,
            p99_ratio: 2.0,
            p99_slack_ms: 5.0,
            set_margin: 0.15,
            min_answers_for_sets: 50,
        }
    }
}

/// What the new model is compared with.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Baseline {
    /// p99 latency of the previous model (seconds), if it answered enough before the swap.
    pub previous_p99_s: Option<f64>,
    /// From the manifest, at the serving epsilon.
    pub validation_empty: Option<f64>,
    pub validation_mean_set_size: Option<f64>,
}

/// The gate's answer at one moment.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Not enough seen yet.
    Wait,
    Pass,
    /// The figure that failed and by how much.
    Fail {
        figure: String,
        detail: String,
    },
}

/// Judges the window `w`, `elapsed_ms` after activation; `self_test` is the result of the
/// golden self-test run again on the serving model, `alarm` the validity monitor's.
pub fn judge(
    s: &GateSettings,
    base: &Baseline,
    w: &Window,
    elapsed_ms: u64,
    self_test: Result<(), String>,
    alarm: bool,
) -> Verdict {
    let fail = |figure: &str, detail: String| Verdict::Fail {
        figure: figure.to_string(),
        detail,
    };
    if let Err(e) = self_test {
        return fail("self_test", e);
    }
    if alarm {
        return fail(
            "validity_alarm",
            "the online validity monitor alarmed on labelled answers".into(),
        );
    }
    // failures that cannot get better are reported at once
    if let Some(r) = w.error_rate() {
        let n = w.requests + w.errors;
        if r > s.max_error_rate && n >= 20 {
            return fail(
                "error_rate",
                format!(
                    "{r:.4} of {n} requests failed (at most {})",
                    s.max_error_rate
                ),
            );
        }
    }
    let ended =
        elapsed_ms >= s.max_window_ms || (elapsed_ms >= s.window_ms && w.answers >= s.min_answers);
    if !ended {
        return Verdict::Wait;
    }
    if let Some(r) = w.error_rate() {
        if r > s.max_error_rate {
            return fail(
                "error_rate",
                format!(
                    "{r:.4} of {} requests failed (at most {})",
                    w.requests + w.errors,
                    s.max_error_rate
                ),
            );
        }
    }
    if let (Some(prev), Some(p99)) = (base.previous_p99_s, w.latency(99.0)) {
        let limit = prev * s.p99_ratio + s.p99_slack_ms / 1e3;
        if w.latency_count() >= 20 && p99 > limit {
            return fail(
                "latency_p99",
                format!(
                    "p99 {:.2} ms against the previous model's {:.2} ms (limit {:.2} ms)",
                    p99 * 1e3,
                    prev * 1e3,
                    limit * 1e3
                ),
            );
        }
    }
    if w.answers >= s.min_answers_for_sets {
        if let (Some(want), Some(got)) = (base.validation_empty, w.empty_rate()) {
            if (got - want).abs() > s.set_margin {
                return fail(
                    "empty_set_rate",
                    format!(
                        "{got:.4} over {} answers; validation {want:.4} (margin {})",
                        w.answers, s.set_margin
                    ),
                );
            }
        }
        if let (Some(want), Some(got)) = (base.validation_mean_set_size, w.mean_set_size()) {
            if (got - want).abs() > s.set_margin.max(s.set_margin * want) {
                return fail(
                    "mean_set_size",
                    format!(
                        "{got:.4} over {} answers; validation {want:.4} (margin {})",
                        w.answers, s.set_margin
                    ),
                );
            }
        }
    }
    Verdict::Pass
}

/// The manifest's validation figures at `epsilon` (keys `validation_<what>_eps<NNN>`,
/// written by the exporter from the run's report), if it has them.
pub fn baseline_from_manifest(
    metrics: &std::collections::BTreeMap<String, f64>,
    epsilon: f64,
) -> (Option<f64>, Option<f64>) {
    let tag = (epsilon * 1000.0).round() as u32;
    (
        metrics
            .get(&format!("validation_empty_eps{tag:03}"))
            .copied(),
        metrics
            .get(&format!("validation_mean_set_size_eps{tag:03}"))
            .copied(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(answers: u64, empty: u64, size_sum: u64, lat_ms: f64) -> Window {
        let tap = Tap::default();
        for i in 0..answers {
            let size = if i < empty {
                0
            } else {
                (size_sum / answers.max(1)) as usize
            };
            tap.answered("m", lat_ms / 1e3, &[size]);
        }
        tap.take("m")
    }

    #[test]
    fn the_gate_waits_then_passes_a_model_like_its_validation() {
        let s = GateSettings {
            window_ms: 1000,
            min_answers: 50,
            ..GateSettings::default()
        };
        let base = Baseline {
            previous_p99_s: Some(0.004),
            validation_empty: Some(0.01),
            validation_mean_set_size: Some(1.0),
        };
        let w = window(100, 1, 100, 4.0);
        assert_eq!(judge(&s, &base, &w, 500, Ok(()), false), Verdict::Wait);
        assert_eq!(
            judge(&s, &base, &window(10, 0, 10, 4.0), 1500, Ok(()), false),
            Verdict::Wait
        );
        assert_eq!(judge(&s, &base, &w, 1500, Ok(()), false), Verdict::Pass);
        // a window without traffic ends at the longest wait
        assert_eq!(
            judge(
                &s,
                &base,
                &Window::default(),
                s.max_window_ms,
                Ok(()),
                false
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn each_figure_fails_the_gate_by_name() {
        let s = GateSettings {
            window_ms: 0,
            min_answers: 0,
            ..GateSettings::default()
        };
        let base = Baseline {
            previous_p99_s: Some(0.004),
            validation_empty: Some(0.01),
            validation_mean_set_size: Some(1.0),
        };
        let fig = |v: Verdict| match v {
            Verdict::Fail { figure, .. } => figure,
            other => panic!("{other:?}"),
        };
        let ok = window(100, 1, 100, 4.0);
        assert_eq!(
            fig(judge(&s, &base, &ok, 0, Err("diff 0.3".into()), false)),
            "self_test"
        );
        assert_eq!(
            fig(judge(&s, &base, &ok, 0, Ok(()), true)),
            "validity_alarm"
        );
        assert_eq!(
            fig(judge(
                &s,
                &base,
                &window(100, 40, 100, 4.0),
                0,
                Ok(()),
                false
            )),
            "empty_set_rate"
        );
        assert_eq!(
            fig(judge(
                &s,
                &base,
                &window(100, 0, 300, 4.0),
                0,
                Ok(()),
                false
            )),
            "mean_set_size"
        );
        assert_eq!(
            fig(judge(
                &s,
                &base,
                &window(100, 1, 100, 40.0),
                0,
                Ok(()),
                false
            )),
            "latency_p99"
        );
        let tap = Tap::default();
        for _ in 0..30 {
            tap.failed("m");
        }
        tap.answered("m", 0.001, &[1]);
        assert_eq!(
            fig(judge(&s, &base, &tap.take("m"), 0, Ok(()), false)),
            "error_rate"
        );
        // without validation figures or a previous latency those checks are skipped
        let none = Baseline::default();
        assert_eq!(
            judge(&s, &none, &window(100, 40, 300, 40.0), 0, Ok(()), false),
            Verdict::Pass
        );
    }

    #[test]
    fn the_tap_keeps_windows_apart_and_bounded() {
        let tap = Tap::default();
        for i in 0..(LATENCY_RING + 100) {
            tap.answered("a", i as f64, &[1, 0, 9]);
        }
        tap.answered("b", 1.0, &[2]);
        let a = tap.take("a");
        assert_eq!(a.answers, 3 * (LATENCY_RING as u64 + 100));
        assert_eq!(a.latency_count(), LATENCY_RING);
        assert_eq!(a.set_sizes[SET_SIZE_BUCKETS - 1], LATENCY_RING as u64 + 100);
        assert_eq!(tap.take("a").answers, 0);
        assert_eq!(tap.peek("b").answers, 1);
    }
}
