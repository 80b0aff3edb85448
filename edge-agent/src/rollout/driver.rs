//! The IO around the rollout machine: it feeds [`Machine`] the events of the world
//! (commands from MQTT, IO completions, timers) and carries out its actions in order
//! (persist, publish, download, verify, load, swap, health gate, roll back, prune).
//!
//! One task owns the machine; downloads, verification and loading run on other tasks and
//! report back through a channel, so the machine never waits on IO and requests keep
//! being answered by the serving model while a new one downloads and loads beside it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};
use shared::command::{self, TrustedKeys};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::download::{self, DownloadLimits, DownloadSpec};
use super::machine::{Action, Event, Job, Machine, ModelRef, Report, State};
use super::persist;
use crate::model::loader::{self, LoadError, LoadOptions, LoadedModel};
use crate::monitoring::health::{self, Baseline, GateSettings, Verdict};
use crate::mqtt::{Inbound, Publisher};
use crate::serving::http::AppState;

/// The models folder inside the data folder: `models/<model_id>/` and staging folders.
pub const MODELS_DIR: &str = "models";

/// The machine's state as `GET /v1/rollout` shows it.
#[derive(Debug, Default)]
pub struct RolloutView(Mutex<Value>);

impl RolloutView {
    /// What `/v1/rollout` says between the HTTP server's start and the driver's first
    /// status (MQTT being set up): a state, never a 404.
    pub fn starting() -> RolloutView {
        RolloutView(Mutex::new(json!({
            "state": "starting",
            "note": "the rollout driver is starting (connecting to the broker)",
        })))
    }

    pub fn get(&self) -> Value {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, v: Value) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// Everything the driver needs besides the machine.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    pub data_dir: PathBuf,
    pub keys: TrustedKeys,
    pub load: LoadOptions,
    pub limits: DownloadLimits,
    /// object_store options for bundle locations (beside the environment's).
    pub store_options: Vec<(String, String)>,
    pub gate: GateSettings,
    pub epsilon: f64,
    pub telemetry_every: Duration,
}

/// Milliseconds since the Unix epoch (command validity windows are in wall-clock time).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Loads `models/<id>` with whichever bundle key signed it.
pub fn load_model(
    dir: &Path,
    keys: &[VerifyingKey],
    opts: &LoadOptions,
) -> Result<LoadedModel, LoadError> {
    let mut last = None;
    for k in keys {
        match loader::load(dir, k, opts) {
            Ok(m) => return Ok(m),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| LoadError::Manifest("no bundle key is configured".into())))
}

/// What a completed piece of IO sends back.
enum Done {
    Event(Event),
    /// A candidate loaded and self-tested beside the serving model.
    Loaded(u64, Box<LoadedModel>),
    /// The previous model, loaded for a rollback (or to keep ready during the gate).
    Previous(u64, Box<LoadedModel>, bool),
    /// The golden self-test run again on the model now serving.
    SelfTest(u64, Result<(), String>),
}

/// A health gate in progress.
struct GateRun {
    seq: u64,
    model_id: String,
    started: Instant,
    baseline: Baseline,
    self_test: Option<Result<(), String>>,
}

/// The rollout driver of `edge-agent run`.
pub struct Driver {
    machine: Machine,
    s: DriverSettings,
    app: Arc<AppState>,
    view: Arc<RolloutView>,
    publisher: Option<Publisher>,
    tx: mpsc::Sender<Done>,
    rx: mpsc::Receiver<Done>,
    /// The download in flight: its sequence and how to stop it.
    download: Option<(u64, CancellationToken)>,
    /// A candidate loaded beside the serving model, waiting for its swap.
    standby: Option<LoadedModel>,
    /// The model before the swap, kept loaded while the health gate runs.
    kept: Option<Arc<LoadedModel>>,
    gate: Option<GateRun>,
    /// The p99 latency of the model being replaced, taken at the swap.
    swap_baseline_p99: Option<f64>,
    timers: BinaryHeap<Reverse<i64>>,
    started: Instant,
    /// Cancelled when the agent is asked to stop (ends a wait for a state write).
    stopping: CancellationToken,
}

impl Driver {
    pub fn new(
        machine: Machine,
        s: DriverSettings,
        app: Arc<AppState>,
        publisher: Option<Publisher>,
    ) -> Driver {
        let (tx, rx) = mpsc::channel(64);
        // `run` installs the view before it serves (so /v1/rollout never says "no
        // rollouts" on an agent that takes them); tests that build a driver alone get one here
        let view = app
            .rollout
            .get_or_init(|| Arc::new(RolloutView::default()))
            .clone();
        let d = Driver {
            machine,
            s,
            app,
            view,
            publisher,
            tx,
            rx,
            download: None,
            standby: None,
            kept: None,
            gate: None,
            swap_baseline_p99: None,
            timers: BinaryHeap::new(),
            started: Instant::now(),
            stopping: CancellationToken::new(),
        };
        d.refresh_view();
        d
    }

    fn models_dir(&self) -> PathBuf {
        self.s.data_dir.join(MODELS_DIR)
    }

    /// The status document (retained on `devices/<id>/status`, and `GET /v1/rollout`).
    pub fn status(&self) -> Value {
        let st = self.machine.state();
        let free = super::disk::available_bytes(&self.s.data_dir).ok();
        let p = self.machine.policy();
        json!({
            "device_id": p.device_id,
            "fleet": p.fleet,
            "state": st.phase.name(),
            "online": true,
            "active": st.active.as_ref().map(|m| &m.model_id),
            "previous": st.previous.as_ref().map(|m| &m.model_id),
            "serving": self.app.slot.current().model_id(),
            "rollout_id": st.phase.rollout_id().or(st.last.as_ref().map(|o| o.rollout_id.as_str())),
            "phase": st.phase,
            "last": st.last,
            "last_error": st.last.as_ref().and_then(|o| o.reason.as_ref().map(|r| format!("{r}: {}", o.detail.clone().unwrap_or_default()))),
            "highest_sequence": st.highest_sequence,
            "model_floor_ms": st.model_floor_ms,
            "pending": st.pending.as_ref().map(|c| &c.rollout_id),
            "progress": self.machine.progress().map(|(b, t)| json!({ "bytes": b, "total": t })),
            "agent_version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "free_disk_bytes": free,
            "broker_up": self.machine.broker_up(),
        })
    }

    fn refresh_view(&self) {
        self.view.set(self.status());
    }

    fn publish_status(&self) {
        let doc = self.status();
        self.view.set(doc.clone());
        if let Some(p) = &self.publisher {
            if let Err(e) = p.publish_status(doc.to_string(), true) {
                tracing::warn!(error = %e, "status not published");
            }
        }
    }

    fn publish_report(&self, r: &Report) {
        let mut v = serde_json::to_value(r)
            .unwrap_or_else(|e| json!({ "event": "error", "detail": e.to_string() }));
        v["device_id"] = self.machine.policy().device_id.clone().into();
        v["at_ms"] = now_ms().into();
        match r {
            Report::Refused { .. } | Report::Failed { .. } | Report::RolledBack { .. } => {
                tracing::warn!(event = %v, "rollout")
            }
            Report::Downloading { .. } => tracing::debug!(event = %v, "rollout"),
            _ => tracing::info!(event = %v, "rollout"),
        }
        if let Some(p) = &self.publisher {
            if let Err(e) = p.publish_event(v.to_string()) {
                tracing::warn!(error = %e, "event not published");
            }
        }
    }

    /// Feeds one event and carries out what the machine asks, in order.
    pub async fn feed(&mut self, ev: Event) -> anyhow::Result<()> {
        let actions = self.machine.handle(ev);
        for a in actions {
            self.act(a).await?;
        }
        self.refresh_view();
        Ok(())
    }

    async fn act(&mut self, a: Action) -> anyhow::Result<()> {
        match a {
            Action::Persist(state) => {
                self.persist(state).await?;
                self.publish_status();
            }
            Action::Report(r) => self.publish_report(&r),
            Action::Download(job) => self.start_download(job)?,
            Action::CancelDownload { seq } => {
                if let Some((s, token)) = &self.download {
                    if *s == seq {
                        token.cancel();
                        self.download = None;
                    }
                }
            }
            Action::Verify(job) => self.start_verify(job),
            Action::Load { job, model } => self.start_load(job, model),
            Action::Swap { seq } => self.swap(seq).await?,
            Action::StartHealthGate { job, previous } => self.start_gate(job, previous),
            Action::RollBack { seq, to } => self.roll_back(seq, to).await?,
            Action::DropStandby => {
                self.standby = None;
                self.kept = None;
                self.gate = None;
                crate::serving::memory::trim();
            }
            Action::Prune { keep } => {
                let dir = self.models_dir();
                let removed = tokio::task::spawn_blocking(move || {
                    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
                    download::prune(&dir, &keep)
                })
                .await?;
                match removed {
                    Ok(r) if !r.is_empty() => {
                        tracing::info!(removed = ?r, "old models and staging removed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning the models folder"),
                }
            }
            Action::SetTimer { at_ms } => self.timers.push(Reverse(at_ms)),
        }
        Ok(())
    }

    /// Writes the state. While the disk refuses it (full, say), the agent keeps serving
    /// and tries again with backoff until it is written or the agent is stopped: nothing
    /// is acted on before its state is on disk, and a full disk does not take the serving
    /// model down with it.
    async fn persist(&mut self, state: Box<State>) -> anyhow::Result<()> {
        let mut pause = Duration::from_millis(200);
        loop {
            let (dir, st) = (self.s.data_dir.clone(), state.clone());
            let e = match tokio::task::spawn_blocking(move || persist::save(&dir, &st)).await? {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            tracing::error!(error = %e, retry_in_ms = pause.as_millis() as u64, "rollout state not written; serving on and trying again");
            tokio::select! {
                _ = self.stopping.cancelled() => return Err(e.into()),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    fn spec(&self, job: &Job) -> DownloadSpec {
        DownloadSpec {
            location: job.bundle.clone(),
            manifest_sha256: job.manifest_sha256.clone(),
            declared_bytes: job.bundle_bytes,
            store_options: self.s.store_options.clone(),
        }
    }

    fn start_download(&mut self, job: Job) -> anyhow::Result<()> {
        if let Some((_, t)) = self.download.take() {
            t.cancel();
        }
        let token = CancellationToken::new();
        self.download = Some((job.sequence, token.clone()));
        let spec = self.spec(&job);
        let limits = self.s.limits.clone();
        let keys = self.s.keys.clone();
        let staging = download::staging_dir(&self.models_dir(), &job.rollout_id)?;
        let tx = self.tx.clone();
        let seq = job.sequence;
        tokio::spawn(async move {
            let mut last_report = (0u64, Instant::now());
            let ptx = tx.clone();
            let mut progress = move |p: download::Progress| {
                // a progress event per 5 % or per second, whichever comes first
                let step = (p.total / 20).max(1);
                if p.bytes_done >= last_report.0 + step
                    || last_report.1.elapsed() >= Duration::from_secs(1)
                    || p.bytes_done == p.total
                {
                    last_report = (p.bytes_done, Instant::now());
                    let _ = ptx.try_send(Done::Event(Event::DownloadProgress {
                        seq,
                        bytes: p.bytes_done,
                        total: p.total,
                    }));
                }
            };
            let r = download::download(
                &spec,
                &limits,
                &keys.bundle,
                &staging,
                &mut progress,
                &token,
            )
            .await;
            if token.is_cancelled() {
                return;
            }
            let ev = match r {
                Ok(d) => {
                    tracing::info!(
                        bytes = d.total_bytes,
                        fetched = d.fetched_bytes,
                        resumed = d.resumed_bytes,
                        "bundle downloaded"
                    );
                    Event::Downloaded {
                        seq,
                        now_ms: now_ms(),
                    }
                }
                Err(e) => {
                    let mut reason = e.reason().to_string();
                    // a manifest signed by a command key: the role is wrong, say so
                    if reason == "bad_manifest_signature"
                        && signed_by_command_key(&spec, &keys).await
                    {
                        reason = "wrong_key_role".into();
                    }
                    Event::DownloadFailed {
                        seq,
                        reason,
                        detail: shared::error_text::chain(&e),
                        retryable: e.retryable(),
                        now_ms: now_ms(),
                    }
                }
            };
            let _ = tx.send(Done::Event(ev)).await;
        });
        Ok(())
    }

    fn start_verify(&mut self, job: Job) {
        let spec = self.spec(&job);
        let keys = self.s.keys.clone();
        let models = self.models_dir();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let seq = job.sequence;
            let ev = match download::staging_dir(&models, &job.rollout_id).and_then(|staging| {
                match installed_before_crash(&staging, &models, &job, &spec, &keys.bundle) {
                    Some(inst) => Ok(inst),
                    None => download::install(&staging, &spec, &keys.bundle, &models),
                }
            }) {
                Ok(inst) => match shared::bundle::read_unverified(&inst.path) {
                    Ok(m) => Event::Verified {
                        seq,
                        model: ModelRef {
                            model_id: inst.model_id,
                            manifest_sha256: spec.manifest_sha256.clone(),
                            created_ms: m.created_ms,
                        },
                        now_ms: now_ms(),
                    },
                    Err(e) => Event::VerifyFailed {
                        seq,
                        reason: "manifest_invalid".into(),
                        detail: e.to_string(),
                        now_ms: now_ms(),
                    },
                },
                Err(e) => Event::VerifyFailed {
                    seq,
                    reason: e.reason().into(),
                    detail: shared::error_text::chain(&e),
                    now_ms: now_ms(),
                },
            };
            let _ = tx.blocking_send(Done::Event(ev));
        });
    }

    fn start_load(&mut self, job: Job, model: ModelRef) {
        let dir = self.models_dir().join(&model.model_id);
        let keys = self.s.keys.bundle.clone();
        let opts = self.s.load.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let seq = job.sequence;
            let msg = match load_model(&dir, &keys, &opts) {
                Ok(m) if m.bundle.manifest_sha256 != model.manifest_sha256 => {
                    Done::Event(Event::LoadFailed {
                        seq,
                        reason: "manifest_sha256_mismatch".into(),
                        detail: format!(
                            "{} holds manifest {}, the rollout verified {}",
                            dir.display(),
                            m.bundle.manifest_sha256,
                            model.manifest_sha256
                        ),
                        now_ms: now_ms(),
                    })
                }
                Ok(m) => {
                    tracing::info!(
                        model_id = m.model_id(),
                        load_ms = m.load_ms,
                        self_test_max_abs_diff = m.self_test.max_abs_diff,
                        "candidate loaded and self-tested beside the serving model"
                    );
                    Done::Loaded(seq, Box::new(m))
                }
                Err(e) => Done::Event(Event::LoadFailed {
                    seq,
                    reason: match e {
                        LoadError::SelfTest { .. } => "self_test_failed".into(),
                        _ => "load_failed".into(),
                    },
                    detail: shared::error_text::chain(&e),
                    now_ms: now_ms(),
                }),
            };
            let _ = tx.blocking_send(msg);
        });
    }

    async fn swap(&mut self, seq: u64) -> anyhow::Result<()> {
        let Some(model) = self.standby.take() else {
            return Box::pin(self.feed(Event::LoadFailed {
                seq,
                reason: "load_failed".into(),
                detail: "no loaded candidate to swap in (lost in a restart)".into(),
                now_ms: now_ms(),
            }))
            .await;
        };
        let new_id = model.model_id().to_string();
        let old = self.app.slot.swap(model);
        self.swap_baseline_p99 = self.app.health.peek(old.model_id()).latency(99.0);
        tracing::info!(from = old.model_id(), to = %new_id, "swapped: new requests go to the new model, those in flight finish on the old one");
        self.kept = Some(old);
        Box::pin(self.feed(Event::Swapped {
            seq,
            now_ms: now_ms(),
        }))
        .await
    }

    fn start_gate(&mut self, job: Job, previous: Option<ModelRef>) {
        let serving = self.app.slot.current();
        let (empty, mean) =
            health::baseline_from_manifest(&serving.bundle.manifest.metrics, self.s.epsilon);
        // the window starts now: what the model did before does not count
        let _ = self.app.health.take(serving.model_id());
        self.gate = Some(GateRun {
            seq: job.sequence,
            model_id: serving.model_id().to_string(),
            started: Instant::now(),
            baseline: Baseline {
                previous_p99_s: self.swap_baseline_p99.take(),
                validation_empty: empty,
                validation_mean_set_size: mean,
            },
            self_test: None,
        });
        let tx = self.tx.clone();
        let seq = job.sequence;
        tokio::task::spawn_blocking(move || {
            let tol = serving.bundle.manifest.golden.tolerance as f32;
            let r = loader::self_test(&serving.engine, &serving.golden, tol)
                .map(|_| ())
                .map_err(|e| shared::error_text::chain(&e));
            let _ = tx.blocking_send(Done::SelfTest(seq, r));
        });
        // after a restart the previous model is not loaded: load it, so that a rollback is
        // a swap and not a load
        let have_previous = self
            .kept
            .as_ref()
            .is_some_and(|k| Some(k.model_id()) == previous.as_ref().map(|p| p.model_id.as_str()));
        if let (false, Some(p)) = (have_previous, previous) {
            self.load_previous(seq, p, false);
        }
    }

    fn load_previous(&self, seq: u64, to: ModelRef, then_swap: bool) {
        let dir = self.models_dir().join(&to.model_id);
        let keys = self.s.keys.bundle.clone();
        let opts = self.s.load.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let msg = match load_model(&dir, &keys, &opts) {
                Ok(m) => Done::Previous(seq, Box::new(m), then_swap),
                Err(e) if then_swap => Done::Event(Event::RollbackFailed {
                    seq,
                    detail: format!("loading {}: {}", to.model_id, shared::error_text::chain(&e)),
                    now_ms: now_ms(),
                }),
                Err(e) => {
                    tracing::warn!(model_id = %to.model_id, error = %shared::error_text::chain(&e), "the previous model does not load: a rollback would fail");
                    return;
                }
            };
            let _ = tx.blocking_send(msg);
        });
    }

    async fn roll_back(&mut self, seq: u64, to: ModelRef) -> anyhow::Result<()> {
        self.gate = None;
        if self.app.slot.current().model_id() == to.model_id {
            // already serving it (a restart whose active model did not load)
            return Box::pin(self.feed(Event::RolledBack {
                seq,
                now_ms: now_ms(),
            }))
            .await;
        }
        match self.kept.take() {
            Some(k) if k.model_id() == to.model_id => {
                let from = self.app.slot.swap_arc(k);
                tracing::warn!(from = from.model_id(), to = %to.model_id, "rolled back");
                Box::pin(self.feed(Event::RolledBack {
                    seq,
                    now_ms: now_ms(),
                }))
                .await
            }
            _ => {
                self.load_previous(seq, to, true);
                Ok(())
            }
        }
    }

    async fn on_done(&mut self, d: Done) -> anyhow::Result<()> {
        match d {
            Done::Event(ev) => {
                if let Event::Downloaded { seq, .. } | Event::DownloadFailed { seq, .. } = &ev {
                    if self.download.as_ref().is_some_and(|(s, _)| s == seq) {
                        self.download = None;
                    }
                }
                self.feed(ev).await
            }
            Done::Loaded(seq, m) => {
                self.standby = Some(*m);
                self.feed(Event::Loaded {
                    seq,
                    now_ms: now_ms(),
                })
                .await
            }
            Done::Previous(seq, m, then_swap) => {
                if then_swap {
                    let from = self.app.slot.swap(*m);
                    tracing::warn!(from = from.model_id(), "rolled back");
                    self.feed(Event::RolledBack {
                        seq,
                        now_ms: now_ms(),
                    })
                    .await
                } else {
                    self.kept = Some(Arc::new(*m));
                    Ok(())
                }
            }
            Done::SelfTest(seq, r) => {
                if let Some(g) = &mut self.gate {
                    if g.seq == seq {
                        g.self_test = Some(r);
                    }
                }
                self.check_gate().await
            }
        }
    }

    async fn check_gate(&mut self) -> anyhow::Result<()> {
        let Some(g) = &self.gate else { return Ok(()) };
        let Some(self_test) = g.self_test.clone() else {
            return Ok(());
        };
        let model = self.app.slot.current();
        let alarm = self.app.monitor_for(&model).snapshot().alarm;
        let window = self.app.health.peek(&g.model_id);
        let elapsed = g.started.elapsed().as_millis() as u64;
        let verdict = health::judge(
            &self.s.gate,
            &g.baseline,
            &window,
            elapsed,
            self_test,
            alarm,
        );
        let seq = g.seq;
        match verdict {
            Verdict::Wait => Ok(()),
            Verdict::Pass => {
                tracing::info!(
                    answers = window.answers,
                    p99_ms = window.latency(99.0).map(|s| s * 1e3),
                    "health gate passed"
                );
                self.gate = None;
                self.feed(Event::HealthPassed {
                    seq,
                    now_ms: now_ms(),
                })
                .await
            }
            Verdict::Fail { figure, detail } => {
                self.gate = None;
                self.feed(Event::HealthFailed {
                    seq,
                    figure,
                    detail,
                    now_ms: now_ms(),
                })
                .await
            }
        }
    }

    fn telemetry(&self) -> Value {
        let model = self.app.slot.current();
        let w = self.app.telemetry.take(model.model_id());
        let monitor = self.app.monitor_for(&model);
        let validity = monitor.snapshot();
        let drift = monitor.inputs().snapshot();
        json!({
            "device_id": self.machine.policy().device_id,
            "at_ms": now_ms(),
            "model_id": model.model_id(),
            "requests": w.requests,
            "answers": w.answers,
            "errors": w.errors,
            "latency_p50_ms": w.latency(50.0).map(|s| s * 1e3),
            "latency_p99_ms": w.latency(99.0).map(|s| s * 1e3),
            "set_size_histogram": w.set_sizes,
            "empty_rate": w.empty_rate(),
            "mean_set_size": w.mean_set_size(),
            "validity": validity,
            "drift": drift,
        })
    }

    /// Runs until `shutdown` resolves: boots the machine, then reacts to commands, IO
    /// completions and timers.
    pub async fn run(
        mut self,
        inbound: Option<mpsc::Receiver<Inbound>>,
        active_loaded: bool,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stopping = self.stopping.clone();
        let stop_watch = tokio::spawn(async move {
            shutdown.await;
            stopping.cancel();
        });
        let stop = self.stopping.clone();
        let r = self.run_loop(inbound, active_loaded, &stop).await;
        stop_watch.abort();
        r
    }

    async fn run_loop(
        &mut self,
        mut inbound: Option<mpsc::Receiver<Inbound>>,
        active_loaded: bool,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        self.publish_status();
        self.feed(Event::Boot {
            now_ms: now_ms(),
            active_loaded,
        })
        .await?;
        let mut gate_tick = tokio::time::interval(Duration::from_millis(200));
        gate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut telemetry =
            tokio::time::interval(self.s.telemetry_every.max(Duration::from_millis(100)));
        telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        telemetry.tick().await;
        loop {
            let next_timer = self.timers.peek().map(|Reverse(t)| *t);
            let sleep = match next_timer {
                Some(t) => Duration::from_millis((t - now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(d) = self.rx.recv() => self.on_done(d).await?,
                Some(msg) = async { match inbound.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    self.on_inbound(msg).await?
                }
                _ = tokio::time::sleep(sleep), if next_timer.is_some() => {
                    let now = now_ms();
                    while self.timers.peek().is_some_and(|Reverse(t)| *t <= now) {
                        self.timers.pop();
                    }
                    self.feed(Event::Timer { now_ms: now }).await?;
                }
                _ = gate_tick.tick(), if self.gate.is_some() => self.check_gate().await?,
                _ = telemetry.tick() => {
                    if let Some(p) = &self.publisher {
                        let _ = p.publish_telemetry(self.telemetry().to_string());
                    }
                }
            }
        }
        if let Some((_, t)) = self.download.take() {
            t.cancel();
        }
        Ok(())
    }

    async fn on_inbound(&mut self, msg: Inbound) -> anyhow::Result<()> {
        match msg {
            Inbound::Up { session_present } => {
                tracing::info!(session_present, "broker connected");
                self.feed(Event::BrokerUp).await?;
                self.publish_status();
            }
            Inbound::Down { error, retry_in } => {
                tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "broker connection down");
                self.feed(Event::BrokerDown).await?;
            }
            Inbound::Command {
                source,
                payload,
                retained,
                ..
            } => {
                let ev = match command::open(&payload, &self.s.keys) {
                    Ok(cmd) => {
                        tracing::info!(?source, retained, rollout_id = %cmd.rollout_id, sequence = cmd.sequence, "signed command");
                        Event::Command {
                            cmd,
                            now_ms: now_ms(),
                        }
                    }
                    Err(e) => Event::Unreadable {
                        reason: e.reason().into(),
                        detail: e.to_string(),
                    },
                };
                self.feed(ev).await?;
            }
        }
        Ok(())
    }
}

/// The install of `job` if it is already done: `models/<model_id>` holds the command's
/// bundle, signed by a trusted key. That is what a SIGKILL after the install's rename (or
/// while an install of an already present model removed its staging folder) and before
/// the next state write leaves: the state still says `verifying`, and installing again
/// would look for a staging folder that is gone or half removed.
fn installed_before_crash(
    staging: &Path,
    models: &Path,
    job: &Job,
    spec: &DownloadSpec,
    keys: &[VerifyingKey],
) -> Option<download::Installed> {
    if !super::disk::safe_component(&job.model_id) {
        return None;
    }
    let path = models.join(&job.model_id);
    if !path.is_dir() {
        return None;
    }
    let ok = keys.iter().any(|k| {
        shared::bundle::verify(&path, k).is_ok_and(|v| v.manifest_sha256 == spec.manifest_sha256)
    });
    ok.then(|| {
        if staging.exists() {
            if let Err(e) = std::fs::remove_dir_all(staging) {
                tracing::warn!(path = %staging.display(), error = %e, "removing a staging folder");
            }
        }
        tracing::info!(path = %path.display(), "bundle already installed");
        download::Installed {
            path,
            model_id: job.model_id.clone(),
            manifest_sha256: spec.manifest_sha256.clone(),
            already_present: true,
        }
    })
}

/// Whether the bundle's manifest is signed by one of the command keys (a bundle signed
/// with the wrong role's key): fetched again, only after its signature failed.
async fn signed_by_command_key(spec: &DownloadSpec, keys: &TrustedKeys) -> bool {
    use object_store::ObjectStoreExt;
    if keys.command.is_empty() {
        return false;
    }
    let opts: Vec<(&str, &str)> = spec
        .store_options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let Ok(loc) = shared::store::open_with_options(&spec.location, &opts) else {
        return false;
    };
    let get = |name: &str| {
        let (store, path) = (loc.store.clone(), loc.child(name));
        async move {
            let meta = store.head(&path).await.ok()?;
            if meta.size > shared::bundle::MAX_MANIFEST_BYTES {
                return None;
            }
            store.get(&path).await.ok()?.bytes().await.ok()
        }
    };
    match (
        get(shared::bundle::MANIFEST_FILE).await,
        get(shared::bundle::SIGNATURE_FILE).await,
    ) {
        (Some(m), Some(s)) => command::manifest_signed_by_command_key(&m, &s, keys),
        _ => false,
    }
}

/// Boot: the state on disk (or a first one from the factory bundle), and the model it
/// names loaded, before any network. Returns the state, the loaded model and whether the
/// active one loaded (false: the previous one serves, and the machine rolls back).
pub fn boot(
    data_dir: &Path,
    factory: Option<&Path>,
    keys: &TrustedKeys,
    opts: &LoadOptions,
) -> anyhow::Result<(State, LoadedModel, bool)> {
    use anyhow::Context;
    let models = data_dir.join(MODELS_DIR);
    std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
    let state = match persist::load(data_dir)? {
        Some(s) => s,
        None => {
            let src = factory.context(
                "the data folder holds no rollout state and no factory bundle is given (`bundle` in the configuration): the agent has no model to serve",
            )?;
            let m = install_factory(src, &models, keys, opts)?;
            let s = State::new(Some(m));
            persist::save(data_dir, &s)?;
            s
        }
    };
    let active = state
        .active
        .clone()
        .context("the rollout state names no active model")?;
    match load_model(&models.join(&active.model_id), &keys.bundle, opts) {
        Ok(m) => Ok((state, m, true)),
        Err(e) => {
            tracing::error!(model_id = %active.model_id, error = %shared::error_text::chain(&e), "the active model does not load");
            let prev = state.previous.clone().with_context(|| {
                format!(
                    "the active model {} does not load ({}) and there is no previous one",
                    active.model_id,
                    shared::error_text::chain(&e)
                )
            })?;
            let m = load_model(&models.join(&prev.model_id), &keys.bundle, opts).with_context(
                || {
                    format!(
                        "neither the active model {} nor the previous one {} loads",
                        active.model_id, prev.model_id
                    )
                },
            )?;
            Ok((state, m, false))
        }
    }
}

/// Copies a factory bundle into `models/<id>/` (verified there) and names it.
fn install_factory(
    src: &Path,
    models: &Path,
    keys: &TrustedKeys,
    opts: &LoadOptions,
) -> anyhow::Result<ModelRef> {
    use anyhow::Context;
    let m = load_model(src, &keys.bundle, opts)
        .with_context(|| format!("factory bundle {}", src.display()))?;
    let manifest = &m.bundle.manifest;
    let id = manifest.model_id.clone();
    if !super::disk::safe_component(&id) {
        anyhow::bail!(
            "factory bundle {}: model id {id:?} is not a plain name",
            src.display()
        );
    }
    let dst = models.join(&id);
    let tmp = models.join(format!("{}factory-{id}", download::STAGING_PREFIX));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let names = manifest.files.iter().map(|f| f.name.as_str()).chain([
        shared::bundle::MANIFEST_FILE,
        shared::bundle::SIGNATURE_FILE,
    ]);
    for n in names {
        std::fs::copy(src.join(n), tmp.join(n))
            .with_context(|| format!("copying {n} of the factory bundle"))?;
        std::fs::File::open(tmp.join(n))?.sync_all()?;
    }
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&tmp, &dst)?;
    persist::sync_dir(models)?;
    Ok(ModelRef {
        model_id: id,
        manifest_sha256: m.bundle.manifest_sha256.clone(),
        created_ms: manifest.created_ms,
    })
}
