//! The rollout of one device as a sans-IO state machine: events in, actions out, no IO.
//!
//! ```text
//! idle -> downloading -> verifying -> loading -> (swap) -> health_gate -> idle (committed)
//!              |              |           |                    |
//!              +--------------+-----------+-> idle (failed)    +-> rolling_back -> idle
//! ```
//!
//! The driver (`rollout::driver`) feeds it events (a command whose signature
//! `shared::command::open` checked, IO completions, timers) and carries out the actions it
//! returns, in order. Every change of [`State`] comes with an [`Action::Persist`] first in
//! its list, so that the driver writes the state (atomically) before it acts on it: a
//! SIGKILL anywhere restarts from a state that names a verified model, and the anti-replay
//! figures (highest sequence, model floor) are on disk before any download starts.
//!
//! Completions carry the sequence number of the command they belong to; one for another
//! command (a download cancelled by a newer command that still reports) is ignored.

use serde::{Deserialize, Serialize};
use shared::command::{Action as Order, Command};

/// Version of the persisted state's format.
pub const STATE_VERSION: u32 = 1;

/// A model the device holds on disk, verified.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub model_id: String,
    pub manifest_sha256: String,
    pub created_ms: i64,
}

/// An accepted rollout command, as the device works on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub rollout_id: String,
    pub sequence: u64,
    pub model_id: String,
    pub bundle: String,
    pub manifest_sha256: String,
    pub bundle_bytes: u64,
    pub model_created_ms: i64,
    pub accepted_ms: i64,
    /// The download must have finished by then (the step timeout of AWS IoT Jobs).
    pub deadline_ms: i64,
    /// Failed download attempts so far.
    pub attempts: u32,
    /// When the next attempt starts, while waiting after a failure.
    pub retry_at_ms: Option<i64>,
}

/// Where the rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    Idle,
    Downloading {
        job: Job,
    },
    /// The download is complete in staging; verifying it and moving it into models/.
    Verifying {
        job: Job,
    },
    /// Verified and installed; loading and self-testing beside the serving model, then
    /// swapping it in. The active pointer still names the old model.
    Loading {
        job: Job,
        model: ModelRef,
    },
    /// Swapped in and active; the previous model stays loaded until the gate's verdict.
    HealthGate {
        job: Job,
        started_ms: i64,
    },
    /// Going back to `to` (the previous model).
    RollingBack {
        rollout_id: String,
        sequence: u64,
        to: ModelRef,
        reason: String,
        detail: String,
    },
}

impl Phase {
    /// Its name, as reports give it.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Downloading { .. } => "downloading",
            Phase::Verifying { .. } => "verifying",
            Phase::Loading { .. } => "loading",
            Phase::HealthGate { .. } => "health_gate",
            Phase::RollingBack { .. } => "rolling_back",
        }
    }

    /// The sequence of the command being worked on.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Phase::Idle => None,
            Phase::Downloading { job }
            | Phase::Verifying { job }
            | Phase::Loading { job, .. }
            | Phase::HealthGate { job, .. } => Some(job.sequence),
            Phase::RollingBack { sequence, .. } => Some(*sequence),
        }
    }

    /// The rollout being worked on.
    pub fn rollout_id(&self) -> Option<&str> {
        match self {
            Phase::Idle => None,
            Phase::Downloading { job }
            | Phase::Verifying { job }
            | Phase::Loading { job, .. }
            | Phase::HealthGate { job, .. } => Some(&job.rollout_id),
            Phase::RollingBack { rollout_id, .. } => Some(rollout_id),
        }
    }
}

/// How the last rollout ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Succeeded,
    Failed,
    RolledBack,
    Canceled,
}

/// The last rollout's end, for the status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub rollout_id: String,
    pub result: Ending,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub at_ms: i64,
}

/// Everything the device must remember across a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The model the device serves (at boot it loads this one).
    pub active: Option<ModelRef>,
    /// The model before it, kept on disk for a rollback.
    pub previous: Option<ModelRef>,
    /// Highest command sequence accepted: anything at or below is a replay.
    pub highest_sequence: u64,
    /// `created_ms` of the newest model accepted: older ones need an explicit rollback.
    pub model_floor_ms: i64,
    pub phase: Phase,
    /// A command that arrived while a rollout was past the point of cancelling (loading,
    /// health gate, rolling back): the newest one waits here, and runs next.
    pub pending: Option<Command>,
    pub last: Option<Outcome>,
}

impl State {
    /// A device that has never had a model, or one whose first model is `active`.
    pub fn new(active: Option<ModelRef>) -> State {
        State {
            version: STATE_VERSION,
            model_floor_ms: active.as_ref().map_or(i64::MIN, |m| m.created_ms),
            active,
            previous: None,
            highest_sequence: 0,
            phase: Phase::Idle,
            pending: None,
            last: None,
        }
    }
}

/// Settings of the machine.
#[derive(Clone, Debug)]
pub struct Policy {
    pub device_id: String,
    pub fleet: String,
    /// How long a rollout may take from acceptance to a complete download.
    pub rollout_timeout_ms: i64,
    /// Waits between failed download attempts: `min * 2^attempt`, at most `max`.
    pub retry_min_ms: i64,
    pub retry_max_ms: i64,
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The process started; `active_loaded` says whether the active model loaded.
    Boot {
        now_ms: i64,
        active_loaded: bool,
    },
    /// A command whose signature checked.
    Command {
        cmd: Command,
        now_ms: i64,
    },
    /// A command refused before it could be read (unsigned, bad signature, wrong role...).
    Unreadable {
        reason: String,
        detail: String,
    },
    DownloadProgress {
        seq: u64,
        bytes: u64,
        total: u64,
    },
    Downloaded {
        seq: u64,
        now_ms: i64,
    },
    DownloadFailed {
        seq: u64,
        reason: String,
        detail: String,
        retryable: bool,
        now_ms: i64,
    },
    Verified {
        seq: u64,
        model: ModelRef,
        now_ms: i64,
    },
    VerifyFailed {
        seq: u64,
        reason: String,
        detail: String,
        now_ms: i64,
    },
    Loaded {
        seq: u64,
        now_ms: i64,
    },
    LoadFailed {
        seq: u64,
        reason: String,
        detail: String,
        now_ms: i64,
    },
    Swapped {
        seq: u64,
        now_ms: i64,
    },
    HealthPassed {
        seq: u64,
        now_ms: i64,
    },
    HealthFailed {
        seq: u64,
        figure: String,
        detail: String,
        now_ms: i64,
    },
    RolledBack {
        seq: u64,
        now_ms: i64,
    },
    RollbackFailed {
        seq: u64,
        detail: String,
        now_ms: i64,
    },
    Timer {
        now_ms: i64,
    },
    BrokerUp,
    BrokerDown,
}

/// What the device reports on its events topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    Received {
        rollout_id: String,
        sequence: u64,
        model_id: Option<String>,
    },
    Refused {
        rollout_id: Option<String>,
        reason: String,
        detail: String,
    },
    Queued {
        rollout_id: String,
        behind: String,
    },
    Downloading {
        rollout_id: String,
        bytes: u64,
        total: u64,
    },
    Retrying {
        rollout_id: String,
        reason: String,
        detail: String,
        attempt: u32,
        in_ms: i64,
    },
    Verified {
        rollout_id: String,
        model_id: String,
    },
    Activated {
        rollout_id: String,
        model_id: String,
    },
    HealthPassed {
        rollout_id: String,
        model_id: String,
    },
    Failed {
        rollout_id: String,
        reason: String,
        detail: String,
    },
    RolledBack {
        rollout_id: String,
        to_model_id: String,
        reason: String,
    },
    Canceled {
        rollout_id: String,
        reason: String,
    },
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write this state atomically before the actions after it.
    Persist(Box<State>),
    Report(Report),
    /// Start (or resume) the download of `job` into its staging folder.
    Download(Job),
    CancelDownload {
        seq: u64,
    },
    /// Verify the complete staging folder against the command and move it into models/.
    Verify(Job),
    /// Load and self-test the installed model beside the serving one.
    Load {
        job: Job,
        model: ModelRef,
    },
    /// Put the loaded candidate into the serving slot, keeping the old model loaded.
    Swap {
        seq: u64,
    },
    /// Watch the new model for the health window (loading the previous model beside it
    /// if it is not loaded, as after a restart).
    StartHealthGate {
        job: Job,
        previous: Option<ModelRef>,
    },
    /// Serve `to` again (load it unless it is still loaded).
    RollBack {
        seq: u64,
        to: ModelRef,
    },
    /// Drop whatever is loaded beside the serving model (a candidate, or the previous
    /// model kept for the health gate).
    DropStandby,
    /// Remove model folders other than these, and every staging folder.
    Prune {
        keep: Vec<String>,
    },
    /// Send [`Event::Timer`] at this time.
    SetTimer {
        at_ms: i64,
    },
}

/// The machine: its state and policy.
#[derive(Clone, Debug)]
pub struct Machine {
    state: State,
    policy: Policy,
    /// Download progress (not persisted: the staging files are the resume offset).
    progress: Option<(u64, u64)>,
    broker_up: bool,
}

/// Reasons the machine refuses a command.
pub mod reason {
    pub const OTHER_FLEET: &str = "other_fleet";
    pub const NOT_TARGETED: &str = "not_targeted";
    pub const EXPIRED: &str = "expired";
    pub const NOT_YET_VALID: &str = "not_yet_valid";
    pub const REPLAY: &str = "replay";
    pub const DOWNGRADE: &str = "downgrade";
    pub const NO_PREVIOUS: &str = "no_previous";
    pub const SUPERSEDED: &str = "superseded";
    pub const TIMED_OUT: &str = "timed_out";
    pub const HEALTH_GATE: &str = "health_gate";
    pub const MANIFEST_MISMATCH: &str = "manifest_mismatch";
    pub const ROLLBACK_FAILED: &str = "rollback_failed";
    pub const ACTIVE_UNLOADABLE: &str = "active_unloadable";
    pub const COMMANDED: &str = "commanded";
}

impl Machine {
    /// A machine resuming from `state` (as read from disk, or [`State::new`]).
    pub fn new(state: State, policy: Policy) -> Machine {
        Machine {
            state,
            policy,
            progress: None,
            broker_up: false,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Bytes downloaded and total, while downloading.
    pub fn progress(&self) -> Option<(u64, u64)> {
        match self.state.phase {
            Phase::Downloading { .. } => self.progress,
            _ => None,
        }
    }

    pub fn broker_up(&self) -> bool {
        self.broker_up
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Boot {
                now_ms,
                active_loaded,
            } => self.boot(now_ms, active_loaded, &mut out),
            Event::Command { cmd, now_ms } => self.command(cmd, now_ms, &mut out),
            Event::Unreadable { reason, detail } => out.push(Action::Report(Report::Refused {
                rollout_id: None,
                reason,
                detail,
            })),
            Event::DownloadProgress { seq, bytes, total } => {
                if let Phase::Downloading { job } = &self.state.phase {
                    if job.sequence == seq {
                        self.progress = Some((bytes, total));
                        out.push(Action::Report(Report::Downloading {
                            rollout_id: job.rollout_id.clone(),
                            bytes,
                            total,
                        }));
                    }
                }
            }
            Event::Downloaded { seq, .. } => {
                if let Phase::Downloading { job } = &self.state.phase {
                    if job.sequence == seq {
                        let mut job = job.clone();
                        job.retry_at_ms = None;
                        self.state.phase = Phase::Verifying { job: job.clone() };
                        self.persist(&mut out);
                        out.push(Action::Verify(job));
                    }
                }
            }
            Event::DownloadFailed {
                seq,
                reason,
                detail,
                retryable,
                now_ms,
            } => {
                if let Phase::Downloading { job } = &self.state.phase {
                    if job.sequence == seq && job.retry_at_ms.is_none() {
                        let mut job = job.clone();
                        job.attempts = job.attempts.saturating_add(1);
                        let wait = self.backoff_ms(job.attempts);
                        if retryable && now_ms.saturating_add(wait) < job.deadline_ms {
                            job.retry_at_ms = Some(now_ms + wait);
                            let report = Report::Retrying {
                                rollout_id: job.rollout_id.clone(),
                                reason,
                                detail,
                                attempt: job.attempts,
                                in_ms: wait,
                            };
                            self.state.phase = Phase::Downloading { job };
                            self.persist(&mut out);
                            out.push(Action::Report(report));
                            out.push(Action::SetTimer {
                                at_ms: now_ms + wait,
                            });
                        } else {
                            self.fail(&job.rollout_id.clone(), &reason, &detail, now_ms, &mut out);
                        }
                    }
                }
            }
            Event::Verified { seq, model, now_ms } => {
                if let Phase::Verifying { job } = &self.state.phase {
                    if job.sequence == seq {
                        let job = job.clone();
                        if model.model_id != job.model_id
                            || model.manifest_sha256 != job.manifest_sha256
                            || model.created_ms != job.model_created_ms
                        {
                            let detail = format!(
                                "the verified bundle is {} (manifest {}, created {}); the command named {} (manifest {}, created {})",
                                model.model_id, model.manifest_sha256, model.created_ms,
                                job.model_id, job.manifest_sha256, job.model_created_ms
                            );
                            self.fail(
                                &job.rollout_id,
                                reason::MANIFEST_MISMATCH,
                                &detail,
                                now_ms,
                                &mut out,
                            );
                        } else {
                            let report = Report::Verified {
                                rollout_id: job.rollout_id.clone(),
                                model_id: model.model_id.clone(),
                            };
                            self.state.phase = Phase::Loading {
                                job: job.clone(),
                                model: model.clone(),
                            };
                            self.persist(&mut out);
                            out.push(Action::Report(report));
                            out.push(Action::Load { job, model });
                        }
                    }
                }
            }
            Event::VerifyFailed {
                seq,
                reason,
                detail,
                now_ms,
            } => {
                if let Phase::Verifying { job } = &self.state.phase {
                    if job.sequence == seq {
                        let id = job.rollout_id.clone();
                        self.fail(&id, &reason, &detail, now_ms, &mut out);
                    }
                }
            }
            Event::Loaded { seq, .. } => {
                if let Phase::Loading { job, .. } = &self.state.phase {
                    if job.sequence == seq {
                        // the active pointer changes only once the slot holds the model
                        out.push(Action::Swap { seq });
                    }
                }
            }
            Event::LoadFailed {
                seq,
                reason,
                detail,
                now_ms,
            } => {
                if let Phase::Loading { job, .. } = &self.state.phase {
                    if job.sequence == seq {
                        let id = job.rollout_id.clone();
                        out.push(Action::DropStandby);
                        self.fail(&id, &reason, &detail, now_ms, &mut out);
                    }
                }
            }
            Event::Swapped { seq, now_ms } => {
                if let Phase::Loading { job, model } = &self.state.phase {
                    if job.sequence == seq {
                        let (job, model) = (job.clone(), model.clone());
                        // re-activating the serving model leaves the previous one as it was
                        if self.state.active.as_ref() != Some(&model) {
                            self.state.previous = self.state.active.take();
                        }
                        self.state.active = Some(model.clone());
                        self.state.phase = Phase::HealthGate {
                            job: job.clone(),
                            started_ms: now_ms,
                        };
                        self.persist(&mut out);
                        out.push(Action::Report(Report::Activated {
                            rollout_id: job.rollout_id.clone(),
                            model_id: model.model_id,
                        }));
                        out.push(Action::StartHealthGate {
                            job,
                            previous: self.state.previous.clone(),
                        });
                    }
                }
            }
            Event::HealthPassed { seq, now_ms } => {
                if let Phase::HealthGate { job, .. } = &self.state.phase {
                    if job.sequence == seq {
                        let job = job.clone();
                        self.state.phase = Phase::Idle;
                        self.state.last = Some(Outcome {
                            rollout_id: job.rollout_id.clone(),
                            result: Ending::Succeeded,
                            reason: None,
                            detail: None,
                            at_ms: now_ms,
                        });
                        self.persist(&mut out);
                        out.push(Action::Report(Report::HealthPassed {
                            rollout_id: job.rollout_id,
                            model_id: job.model_id,
                        }));
                        out.push(Action::DropStandby);
                        out.push(self.prune());
                        self.next_pending(now_ms, &mut out);
                    }
                }
            }
            Event::HealthFailed {
                seq,
                figure,
                detail,
                now_ms,
            } => {
                if let Phase::HealthGate { job, .. } = &self.state.phase {
                    if job.sequence == seq {
                        let job = job.clone();
                        let detail = format!("{figure}: {detail}");
                        if self.state.previous.is_some() {
                            out.push(Action::Report(Report::Failed {
                                rollout_id: job.rollout_id.clone(),
                                reason: reason::HEALTH_GATE.into(),
                                detail: detail.clone(),
                            }));
                        }
                        self.roll_back(
                            &job.rollout_id,
                            seq,
                            reason::HEALTH_GATE,
                            &detail,
                            now_ms,
                            &mut out,
                        );
                    }
                }
            }
            Event::RolledBack { seq, now_ms } => {
                if let Phase::RollingBack {
                    rollout_id,
                    sequence,
                    to,
                    reason,
                    detail,
                } = &self.state.phase
                {
                    if *sequence == seq {
                        let (rollout_id, to, reason, detail) = (
                            rollout_id.clone(),
                            to.clone(),
                            reason.clone(),
                            detail.clone(),
                        );
                        self.state.active = Some(to.clone());
                        self.state.previous = None;
                        self.state.phase = Phase::Idle;
                        self.state.last = Some(Outcome {
                            rollout_id: rollout_id.clone(),
                            result: Ending::RolledBack,
                            reason: Some(reason.clone()),
                            detail: Some(detail),
                            at_ms: now_ms,
                        });
                        self.persist(&mut out);
                        out.push(Action::Report(Report::RolledBack {
                            rollout_id,
                            to_model_id: to.model_id,
                            reason,
                        }));
                        out.push(Action::DropStandby);
                        out.push(self.prune());
                        self.next_pending(now_ms, &mut out);
                    }
                }
            }
            Event::RollbackFailed {
                seq,
                detail,
                now_ms,
            } => {
                if let Phase::RollingBack {
                    rollout_id,
                    sequence,
                    ..
                } = &self.state.phase
                {
                    if *sequence == seq {
                        // the slot still holds the model it had: that one stays active
                        let id = rollout_id.clone();
                        self.fail(&id, reason::ROLLBACK_FAILED, &detail, now_ms, &mut out);
                    }
                }
            }
            Event::Timer { now_ms } => self.timer(now_ms, &mut out),
            Event::BrokerUp => self.broker_up = true,
            Event::BrokerDown => self.broker_up = false,
        }
        out
    }

    fn persist(&self, out: &mut Vec<Action>) {
        out.push(Action::Persist(Box::new(self.state.clone())));
    }

    fn prune(&self) -> Action {
        let keep = [&self.state.active, &self.state.previous]
            .into_iter()
            .flatten()
            .map(|m| m.model_id.clone())
            .collect();
        Action::Prune { keep }
    }

    fn backoff_ms(&self, attempt: u32) -> i64 {
        let p = self.policy.retry_min_ms.max(1);
        let shift = attempt.saturating_sub(1).min(30);
        p.saturating_mul(1i64 << shift)
            .min(self.policy.retry_max_ms.max(p))
    }

    /// Ends the current rollout as failed; the serving model stays.
    fn fail(
        &mut self,
        rollout_id: &str,
        why: &str,
        detail: &str,
        now_ms: i64,
        out: &mut Vec<Action>,
    ) {
        if matches!(self.state.phase, Phase::Downloading { .. }) {
            if let Some(seq) = self.state.phase.sequence() {
                out.push(Action::CancelDownload { seq });
            }
        }
        self.state.phase = Phase::Idle;
        self.state.last = Some(Outcome {
            rollout_id: rollout_id.to_string(),
            result: Ending::Failed,
            reason: Some(why.to_string()),
            detail: Some(detail.to_string()),
            at_ms: now_ms,
        });
        self.progress = None;
        self.persist(out);
        out.push(Action::Report(Report::Failed {
            rollout_id: rollout_id.to_string(),
            reason: why.to_string(),
            detail: detail.to_string(),
        }));
        out.push(self.prune());
        self.next_pending(now_ms, out);
    }

    /// Starts going back to the previous model, or fails when there is none.
    fn roll_back(
        &mut self,
        rollout_id: &str,
        seq: u64,
        why: &str,
        detail: &str,
        now_ms: i64,
        out: &mut Vec<Action>,
    ) {
        match self.state.previous.clone() {
            Some(to) => {
                self.state.phase = Phase::RollingBack {
                    rollout_id: rollout_id.to_string(),
                    sequence: seq,
                    to: to.clone(),
                    reason: why.to_string(),
                    detail: detail.to_string(),
                };
                self.persist(out);
                out.push(Action::RollBack { seq, to });
            }
            None => {
                let detail =
                    format!("{detail}; no previous model to roll back to, the active one stays");
                self.fail(rollout_id, why, &detail, now_ms, out);
            }
        }
    }

    fn boot(&mut self, now_ms: i64, active_loaded: bool, out: &mut Vec<Action>) {
        self.progress = None;
        if !active_loaded && self.state.active.is_some() {
            // what the pointer names does not load: go back if there is somewhere to go
            let id = self
                .state
                .phase
                .rollout_id()
                .map_or_else(|| "boot".to_string(), str::to_string);
            let seq = self
                .state
                .phase
                .sequence()
                .unwrap_or(self.state.highest_sequence);
            if let Some(to) = self.state.previous.clone() {
                self.state.phase = Phase::RollingBack {
                    rollout_id: id,
                    sequence: seq,
                    to: to.clone(),
                    reason: reason::ACTIVE_UNLOADABLE.into(),
                    detail: "the active model did not load at boot".into(),
                };
                self.persist(out);
                out.push(Action::RollBack { seq, to });
                return;
            }
        }
        match self.state.phase.clone() {
            Phase::Idle => self.next_pending(now_ms, out),
            Phase::Downloading { job } => {
                if now_ms >= job.deadline_ms {
                    self.fail(
                        &job.rollout_id,
                        reason::TIMED_OUT,
                        "the rollout's download deadline passed while the agent was down",
                        now_ms,
                        out,
                    );
                } else {
                    let mut job = job;
                    job.retry_at_ms = None;
                    self.state.phase = Phase::Downloading { job: job.clone() };
                    self.persist(out);
                    out.push(Action::SetTimer {
                        at_ms: job.deadline_ms,
                    });
                    out.push(Action::Download(job));
                }
            }
            Phase::Verifying { job } => out.push(Action::Verify(job)),
            Phase::Loading { job, model } => out.push(Action::Load { job, model }),
            Phase::HealthGate { job, .. } => {
                // the window starts again: the samples before the restart are gone
                self.state.phase = Phase::HealthGate {
                    job: job.clone(),
                    started_ms: now_ms,
                };
                self.persist(out);
                out.push(Action::StartHealthGate {
                    job,
                    previous: self.state.previous.clone(),
                });
            }
            Phase::RollingBack { sequence, to, .. } => {
                out.push(Action::RollBack { seq: sequence, to })
            }
        }
    }

    fn timer(&mut self, now_ms: i64, out: &mut Vec<Action>) {
        if let Phase::Downloading { job } = &self.state.phase {
            let job = job.clone();
            if now_ms >= job.deadline_ms {
                let detail = format!(
                    "the download did not complete within {} ms of acceptance",
                    job.deadline_ms - job.accepted_ms
                );
                self.fail(&job.rollout_id, reason::TIMED_OUT, &detail, now_ms, out);
            } else if job.retry_at_ms.is_some_and(|t| now_ms >= t) {
                let mut job = job;
                job.retry_at_ms = None;
                self.state.phase = Phase::Downloading { job: job.clone() };
                self.persist(out);
                out.push(Action::Download(job));
            }
        }
    }

    /// The checks of a command against this device and its state; `Ok(false)` for a
    /// duplicate, which changes nothing.
    fn admissible(&self, cmd: &Command, now_ms: i64) -> Result<bool, (&'static str, String)> {
        let p = &self.policy;
        if cmd.fleet != p.fleet {
            return Err((
                reason::OTHER_FLEET,
                format!("for fleet {:?}; this device is in {:?}", cmd.fleet, p.fleet),
            ));
        }
        if !cmd.target.includes(&p.device_id) {
            return Err((
                reason::NOT_TARGETED,
                format!("device {:?} is not among the targets", p.device_id),
            ));
        }
        let dup = |seq: u64, id: &str| seq == cmd.sequence && id == cmd.rollout_id;
        let in_progress = self
            .state
            .phase
            .sequence()
            .zip(self.state.phase.rollout_id())
            .is_some_and(|(s, id)| dup(s, id));
        let queued = self
            .state
            .pending
            .as_ref()
            .is_some_and(|c| dup(c.sequence, &c.rollout_id));
        let last = self
            .state
            .last
            .as_ref()
            .is_some_and(|o| dup(self.state.highest_sequence, &o.rollout_id));
        if in_progress || queued || last {
            return Ok(false);
        }
        if now_ms < cmd.not_before_ms {
            return Err((
                reason::NOT_YET_VALID,
                format!("valid from {} ms, now {now_ms}", cmd.not_before_ms),
            ));
        }
        if now_ms > cmd.not_after_ms {
            return Err((
                reason::EXPIRED,
                format!("valid until {} ms, now {now_ms}", cmd.not_after_ms),
            ));
        }
        let floor_seq = self
            .state
            .pending
            .as_ref()
            .map_or(self.state.highest_sequence, |c| {
                c.sequence.max(self.state.highest_sequence)
            });
        if cmd.sequence <= floor_seq {
            return Err((
                reason::REPLAY,
                format!(
                    "sequence {} is not above {floor_seq}, the highest accepted",
                    cmd.sequence
                ),
            ));
        }
        if let Order::Rollout {
            model_created_ms, ..
        } = &cmd.action
        {
            if *model_created_ms < self.state.model_floor_ms {
                return Err((
                    reason::DOWNGRADE,
                    format!(
                        "the model was created at {model_created_ms} ms, before the device's floor {} ms; send a rollback command to go back",
                        self.state.model_floor_ms
                    ),
                ));
            }
        }
        Ok(true)
    }

    fn refuse(cmd: &Command, why: &str, detail: String, out: &mut Vec<Action>) {
        out.push(Action::Report(Report::Refused {
            rollout_id: Some(cmd.rollout_id.clone()),
            reason: why.to_string(),
            detail,
        }));
    }

    fn command(&mut self, cmd: Command, now_ms: i64, out: &mut Vec<Action>) {
        match self.admissible(&cmd, now_ms) {
            Err((why, detail)) => return Self::refuse(&cmd, why, detail, out),
            Ok(false) => return,
            Ok(true) => {}
        }
        match &self.state.phase {
            Phase::Idle => self.start(cmd, now_ms, out),
            Phase::Downloading { job } | Phase::Verifying { job } => {
                // nothing is installed yet: the newer command wins at once
                let old = job.clone();
                if matches!(self.state.phase, Phase::Downloading { .. }) {
                    out.push(Action::CancelDownload { seq: old.sequence });
                }
                out.push(Action::Report(Report::Canceled {
                    rollout_id: old.rollout_id.clone(),
                    reason: reason::SUPERSEDED.into(),
                }));
                self.state.last = Some(Outcome {
                    rollout_id: old.rollout_id,
                    result: Ending::Canceled,
                    reason: Some(reason::SUPERSEDED.into()),
                    detail: Some(format!("by {}", cmd.rollout_id)),
                    at_ms: now_ms,
                });
                self.state.phase = Phase::Idle;
                self.progress = None;
                // its staging folder will never be resumed (staging is per rollout): give
                // the disk back before the newer bundle needs it
                out.push(self.prune());
                self.start(cmd, now_ms, out);
            }
            Phase::Loading { .. } | Phase::HealthGate { .. } | Phase::RollingBack { .. } => {
                // a rollback during the health gate acts at once; anything else waits
                if let (Order::Rollback, Phase::HealthGate { job, .. }) =
                    (&cmd.action, &self.state.phase)
                {
                    let job = job.clone();
                    self.state.highest_sequence = cmd.sequence;
                    self.roll_back(
                        &cmd.rollout_id,
                        cmd.sequence,
                        reason::COMMANDED,
                        "a rollback command arrived during the health gate",
                        now_ms,
                        out,
                    );
                    out.push(Action::Report(Report::Received {
                        rollout_id: cmd.rollout_id.clone(),
                        sequence: cmd.sequence,
                        model_id: None,
                    }));
                    out.push(Action::Report(Report::Canceled {
                        rollout_id: job.rollout_id.clone(),
                        reason: reason::COMMANDED.into(),
                    }));
                    return;
                }
                let behind = self
                    .state
                    .phase
                    .rollout_id()
                    .unwrap_or_default()
                    .to_string();
                out.push(Action::Report(Report::Queued {
                    rollout_id: cmd.rollout_id.clone(),
                    behind,
                }));
                if let Some(old) = self.state.pending.replace(cmd) {
                    out.push(Action::Report(Report::Canceled {
                        rollout_id: old.rollout_id,
                        reason: reason::SUPERSEDED.into(),
                    }));
                }
                self.persist(out);
            }
        }
    }

    /// Acts on an admissible command while idle.
    fn start(&mut self, cmd: Command, now_ms: i64, out: &mut Vec<Action>) {
        self.state.highest_sequence = cmd.sequence;
        match cmd.action {
            Order::Rollback => {
                if self.state.previous.is_none() {
                    self.persist(out);
                    return Self::refuse(
                        &cmd,
                        reason::NO_PREVIOUS,
                        "the device holds no previous model".into(),
                        out,
                    );
                }
                self.roll_back(
                    &cmd.rollout_id,
                    cmd.sequence,
                    reason::COMMANDED,
                    "a rollback command",
                    now_ms,
                    out,
                );
                out.push(Action::Report(Report::Received {
                    rollout_id: cmd.rollout_id.clone(),
                    sequence: cmd.sequence,
                    model_id: None,
                }));
            }
            Order::Rollout {
                model_id,
                bundle,
                manifest_sha256,
                bundle_bytes,
                model_created_ms,
            } => {
                self.state.model_floor_ms = self.state.model_floor_ms.max(model_created_ms);
                let received = Action::Report(Report::Received {
                    rollout_id: cmd.rollout_id.clone(),
                    sequence: cmd.sequence,
                    model_id: Some(model_id.clone()),
                });
                let already = self.state.active.as_ref().is_some_and(|m| {
                    m.model_id == model_id && m.manifest_sha256 == manifest_sha256
                });
                if already {
                    self.state.last = Some(Outcome {
                        rollout_id: cmd.rollout_id.clone(),
                        result: Ending::Succeeded,
                        reason: Some("already_active".into()),
                        detail: None,
                        at_ms: now_ms,
                    });
                    self.persist(out);
                    out.push(received);
                    out.push(Action::Report(Report::HealthPassed {
                        rollout_id: cmd.rollout_id,
                        model_id,
                    }));
                    return;
                }
                let job = Job {
                    rollout_id: cmd.rollout_id,
                    sequence: cmd.sequence,
                    model_id,
                    bundle,
                    manifest_sha256,
                    bundle_bytes,
                    model_created_ms,
                    accepted_ms: now_ms,
                    deadline_ms: now_ms.saturating_add(self.policy.rollout_timeout_ms),
                    attempts: 0,
                    retry_at_ms: None,
                };
                self.progress = Some((0, bundle_bytes));
                self.state.phase = Phase::Downloading { job: job.clone() };
                // the sequence and floor are on disk before the first byte is fetched
                self.persist(out);
                out.push(received);
                out.push(Action::SetTimer {
                    at_ms: job.deadline_ms,
                });
                out.push(Action::Download(job));
            }
        }
    }

    /// Runs the queued command, if any, once idle.
    fn next_pending(&mut self, now_ms: i64, out: &mut Vec<Action>) {
        if !matches!(self.state.phase, Phase::Idle) {
            return;
        }
        let Some(cmd) = self.state.pending.take() else {
            return;
        };
        match self.admissible(&cmd, now_ms) {
            Ok(true) => self.start(cmd, now_ms, out),
            Ok(false) => self.persist(out),
            Err((why, detail)) => {
                self.persist(out);
                Self::refuse(&cmd, why, detail, out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
