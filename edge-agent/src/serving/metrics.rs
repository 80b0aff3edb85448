//! Prometheus text-format metrics: request counts by route and status, latency histograms
//! by route, prediction set sizes, work stopped because its request was gone, and the
//! validity figures (rendered by the server).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    set_sizes: BTreeMap<usize, u64>,
    alerts: u64,
    cancelled: BTreeMap<&'static str, u64>,
}

/// The service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// One finished request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut g = self.lock();
        *g.requests.entry((route.to_string(), status)).or_default() += 1;
        let h = g.latency.entry(route.to_string()).or_default();
        h.count += 1;
        h.sum += seconds;
        for (c, &le) in h.counts.iter_mut().zip(&LATENCY_BUCKETS) {
            if seconds <= le {
                *c += 1;
            }
        }
    }

    /// Answers with these set sizes; `alerts` of them raised the assurance output.
    pub fn answers(&self, sizes: impl IntoIterator<Item = usize>, alerts: u64) {
        let mut g = self.lock();
        for s in sizes {
            *g.set_sizes.entry(s).or_default() += 1;
        }
        g.alerts += alerts;
    }

    /// Blocking work stopped at `stage` because its request was gone (timed out, client
    /// left).
    pub fn cancelled(&self, stage: &'static str) {
        *self.lock().cancelled.entry(stage).or_default() += 1;
    }

    /// Appends the metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let g = self.lock();
        let _ = writeln!(
            out,
            "# HELP edge_agent_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE edge_agent_requests_total counter");
        for ((route, status), n) in &g.requests {
            let _ = writeln!(
                out,
                "edge_agent_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP edge_agent_request_seconds Request latency by route."
        );
        let _ = writeln!(out, "# TYPE edge_agent_request_seconds histogram");
        for (route, h) in &g.latency {
            for (c, le) in h.counts.iter().zip(&LATENCY_BUCKETS) {
                let _ = writeln!(
                    out,
                    "edge_agent_request_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "edge_agent_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "edge_agent_request_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "edge_agent_request_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP edge_agent_prediction_sets_total Answers by prediction set size."
        );
        let _ = writeln!(out, "# TYPE edge_agent_prediction_sets_total counter");
        for (size, n) in &g.set_sizes {
            let _ = writeln!(
                out,
                "edge_agent_prediction_sets_total{{size=\"{size}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP edge_agent_assurance_alerts_total Answers that raised the assurance output."
        );
        let _ = writeln!(out, "# TYPE edge_agent_assurance_alerts_total counter");
        let _ = writeln!(out, "edge_agent_assurance_alerts_total {}", g.alerts);
        let _ = writeln!(
            out,
            "# HELP edge_agent_work_cancelled_total Blocking work stopped before its next step because its request was gone, by step."
        );
        let _ = writeln!(out, "# TYPE edge_agent_work_cancelled_total counter");
        for (stage, n) in &g.cancelled {
            let _ = writeln!(
                out,
                "edge_agent_work_cancelled_total{{stage=\"{stage}\"}} {n}"
            );
        }
    }
}
