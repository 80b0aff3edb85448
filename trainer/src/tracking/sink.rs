//! [`MlflowRun`]: sends a training run's records to MLflow from a thread of its own, so that
//! training never waits on the tracking server and never fails because of it.
//!
//! Records (params, tags, per-step metrics, artifacts, the final status) go into a channel;
//! the thread batches them (one request per second at most while training), creates the
//! MLflow run on first contact, and keeps whatever it could not send. When the server is
//! down, it retries with a growing pause (up to [`MAX_BACKOFF`]), so a server that comes back
//! mid-training receives the whole history. [`MlflowRun::finish`] waits a bounded time for
//! the queue to drain; what is still unsent then is reported as missing, never an error.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::mlflow::{MetricPoint, MlflowClient, MlflowError, RunInfo, RunStatus};

/// Longest pause between two attempts to reach a server that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How often queued metrics are sent while training.
const FLUSH_EVERY: Duration = Duration::from_millis(1000);

enum Msg {
    Metric(MetricPoint),
    Params(Vec<(String, String)>),
    Tags(Vec<(String, String)>),
    Artifact(String, PathBuf),
    Finish(RunStatus, Instant),
}

/// What reached MLflow, and what did not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackingReport {
    pub url: String,
    pub experiment_id: Option<String>,
    pub run_id: Option<String>,
    pub metrics_sent: usize,
    pub artifacts_sent: usize,
    /// Records never delivered (empty when everything arrived).
    pub missing: Vec<String>,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

/// A run being tracked in MLflow.
pub struct MlflowRun {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<TrackingReport>>,
}

struct Sender {
    client: MlflowClient,
    experiment: String,
    run_name: String,
    start_ms: i64,
    tags_at_create: Vec<(String, String)>,
    run: Option<RunInfo>,
    metrics: VecDeque<MetricPoint>,
    params: Vec<(String, String)>,
    tags: Vec<(String, String)>,
    artifacts: VecDeque<(String, PathBuf)>,
    report: TrackingReport,
    backoff: Duration,
    next_try: Instant,
    warned_down: bool,
}

impl Sender {
    fn note_error(&mut self, e: &MlflowError) {
        if !self.warned_down {
            tracing::warn!(
                "{e}; training goes on, MLflow records are kept and sent when it answers"
            );
            self.warned_down = true;
        } else {
            tracing::debug!("MLflow: {e}");
        }
        self.report.last_error = Some(e.to_string());
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn recovered(&mut self) {
        if self.warned_down {
            tracing::info!("MLflow at {} answers again", self.client.url());
            self.warned_down = false;
        }
        self.backoff = Duration::from_millis(500);
    }

    /// One round of delivery. True when everything queued has been sent.
    async fn deliver(&mut self) -> bool {
        if Instant::now() < self.next_try {
            return false;
        }
        if self.run.is_none() {
            let created = async {
                let exp = self
                    .client
                    .get_or_create_experiment(&self.experiment)
                    .await?;
                self.report.experiment_id = Some(exp.experiment_id.clone());
                self.client
                    .create_run(
                        &exp.experiment_id,
                        &self.run_name,
                        self.start_ms,
                        &self.tags_at_create,
                    )
                    .await
            }
            .await;
            match created {
                Ok(info) => {
                    tracing::info!(
                        "MLflow run {} in experiment {:?} at {}",
                        info.run_id,
                        self.experiment,
                        self.client.url()
                    );
                    self.report.run_id = Some(info.run_id.clone());
                    self.run = Some(info);
                    self.recovered();
                }
                Err(e) => {
                    self.note_error(&e);
                    return false;
                }
            }
        }
        let Some(run) = self.run.clone() else {
            return false;
        };
        if !self.metrics.is_empty() || !self.params.is_empty() || !self.tags.is_empty() {
            let metrics: Vec<MetricPoint> = self.metrics.iter().cloned().collect();
            match self
                .client
                .log_batch(&run.run_id, &metrics, &self.params, &self.tags)
                .await
            {
                Ok(()) => {
                    self.report.metrics_sent += metrics.len();
                    self.metrics.clear();
                    self.params.clear();
                    self.tags.clear();
                    self.recovered();
                }
                Err(e) if e.is_transient() => {
                    self.note_error(&e);
                    return false;
                }
                Err(e) => {
                    // The server refuses these records (not a passing fault): report them
                    // missing rather than retrying forever.
                    self.report.missing.push(format!(
                        "{} metric points, {} params, {} tags refused: {e}",
                        self.metrics.len(),
                        self.params.len(),
                        self.tags.len()
                    ));
                    self.report.last_error = Some(e.to_string());
                    self.metrics.clear();
                    self.params.clear();
                    self.tags.clear();
                }
            }
        }
        while let Some((name, path)) = self.artifacts.front().cloned() {
            match self
                .client
                .upload_artifact(&run.artifact_uri, &name, &path)
                .await
            {
                Ok(()) => {
                    self.report.artifacts_sent += 1;
                    self.artifacts.pop_front();
                }
                Err(e) => {
                    self.note_error(&e);
                    return false;
                }
            }
        }
        true
    }

    fn push(&mut self, msg: Msg) -> Option<(RunStatus, Instant)> {
        match msg {
            Msg::Metric(m) => self.metrics.push_back(m),
            Msg::Params(p) => self.params.extend(p),
            Msg::Tags(t) => self.tags.extend(t),
            Msg::Artifact(n, p) => self.artifacts.push_back((n, p)),
            Msg::Finish(s, d) => return Some((s, d)),
        }
        None
    }

    fn run_loop(mut self, rx: mpsc::Receiver<Msg>, rt: tokio::runtime::Runtime) -> TrackingReport {
        let mut finish: Option<(RunStatus, Instant)> = None;
        let mut last_flush = Instant::now();
        loop {
            if finish.is_none() {
                match rx.recv_timeout(FLUSH_EVERY) {
                    Ok(msg) => finish = self.push(msg),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // The handle was dropped without finish: the trial ended in an error.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        finish = Some((RunStatus::Failed, Instant::now() + Duration::from_secs(5)))
                    }
                }
                while let Ok(msg) = rx.try_recv() {
                    if let Some(f) = self.push(msg) {
                        finish = Some(f);
                    }
                }
                if finish.is_none() && last_flush.elapsed() < FLUSH_EVERY {
                    continue;
                }
            }
            last_flush = Instant::now();
            let all_sent = rt.block_on(self.deliver());
            if let Some((status, deadline)) = finish {
                if all_sent {
                    if let Some(run) = &self.run {
                        let end = crate::registry::now_ms();
                        match rt.block_on(self.client.update_run(&run.run_id, status, end)) {
                            Ok(()) => return self.report,
                            Err(e) => self.note_error(&e),
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return self.give_up(status);
                }
                let pause = self
                    .next_try
                    .saturating_duration_since(Instant::now())
                    .min(deadline.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(50));
                std::thread::sleep(pause);
            }
        }
    }

    fn give_up(mut self, status: RunStatus) -> TrackingReport {
        let r = &mut self.report;
        if self.run.is_none() {
            r.missing
                .push("the MLflow run itself (never created)".into());
        }
        if !self.metrics.is_empty() {
            r.missing
                .push(format!("{} metric points", self.metrics.len()));
        }
        if !self.params.is_empty() || !self.tags.is_empty() {
            r.missing.push(format!(
                "{} params and {} tags",
                self.params.len(),
                self.tags.len()
            ));
        }
        for (name, _) in &self.artifacts {
            r.missing.push(format!("artifact {name}"));
        }
        r.missing.push(format!("run status {}", status.as_str()));
        self.report
    }
}

impl MlflowRun {
    /// Starts tracking a run named `run_name` in experiment `experiment` (created when
    /// missing) with these tags. Only the URL is checked here; the server is contacted from
    /// the tracking thread.
    pub fn start(
        url: &str,
        experiment: &str,
        run_name: &str,
        tags: Vec<(String, String)>,
    ) -> Result<MlflowRun, MlflowError> {
        let client = MlflowClient::new(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MlflowError::Invalid(format!("cannot start a tokio runtime: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let sender = Sender {
            report: TrackingReport {
                url: client.url().to_string(),
                ..Default::default()
            },
            client,
            experiment: experiment.to_string(),
            run_name: run_name.to_string(),
            start_ms: crate::registry::now_ms(),
            tags_at_create: tags,
            run: None,
            metrics: VecDeque::new(),
            params: vec![],
            tags: vec![],
            artifacts: VecDeque::new(),
            backoff: Duration::from_millis(500),
            next_try: Instant::now(),
            warned_down: false,
        };
        let thread = std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || sender.run_loop(rx, rt))
            .map_err(|e| MlflowError::Invalid(format!("cannot start the MLflow thread: {e}")))?;
        Ok(MlflowRun {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            // A send fails only if the thread ended, which it does only after finish.
            let _ = tx.send(msg);
        }
    }

    pub fn log_metric(&self, key: &str, step: i64, value: f64) {
        if value.is_finite() {
            self.send(Msg::Metric(MetricPoint {
                key: key.to_string(),
                value,
                timestamp_ms: crate::registry::now_ms(),
                step,
            }));
        }
    }

    pub fn log_params(&self, params: Vec<(String, String)>) {
        self.send(Msg::Params(params));
    }

    pub fn set_tags(&self, tags: Vec<(String, String)>) {
        self.send(Msg::Tags(tags));
    }

    /// Uploads a local file as `<run's artifact root>/<name>` (the file must stay until
    /// [`MlflowRun::finish`] returns).
    pub fn log_artifact(&self, name: &str, path: PathBuf) {
        self.send(Msg::Artifact(name.to_string(), path));
    }

    /// Ends the run with `status`, waiting at most `wait` for queued records to arrive.
    pub fn finish(mut self, status: RunStatus, wait: Duration) -> TrackingReport {
        self.end(status, wait)
    }

    fn end(&mut self, status: RunStatus, wait: Duration) -> TrackingReport {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Finish(status, Instant::now() + wait));
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(report)) => report,
            _ => TrackingReport {
                missing: vec!["everything: the MLflow thread stopped unexpectedly".into()],
                ..Default::default()
            },
        }
    }
}

impl Drop for MlflowRun {
    /// A run dropped without [`MlflowRun::finish`] (the trial failed) is marked FAILED,
    /// waiting a few seconds at most.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let r = self.end(RunStatus::Failed, Duration::from_secs(5));
            if !r.missing.is_empty() {
                tracing::warn!("MLflow: not delivered: {}", r.missing.join(", "));
            }
        }
    }
}
