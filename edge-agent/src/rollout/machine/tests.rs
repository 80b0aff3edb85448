//! The machine driven without a broker, a store or a model: a table of every phase against
//! every event, named scenarios, and random event sequences (with restarts from the last
//! persisted state) checked against the invariants a safety engineer signs.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::command::{Action as Order, Command, Target, FORMAT, FORMAT_VERSION};

use super::*;

const DEVICE: &str = "dev-1";
const FLEET: &str = "lab";

fn policy() -> Policy {
    Policy {
        device_id: DEVICE.into(),
        fleet: FLEET.into(),
        rollout_timeout_ms: 60_000,
        retry_min_ms: 100,
        retry_max_ms: 2_000,
    }
}

fn model(i: u32) -> ModelRef {
    ModelRef {
        model_id: format!("m{i}"),
        manifest_sha256: format!("{i:064x}"),
        created_ms: i64::from(i) * 1000,
    }
}

fn rollout(seq: u64, m: &ModelRef) -> Command {
    Command {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        rollout_id: format!("r{seq}"),
        fleet: FLEET.into(),
        target: Target::All,
        sequence: seq,
        not_before_ms: 0,
        not_after_ms: 1_000_000_000,
        action: Order::Rollout {
            model_id: m.model_id.clone(),
            bundle: format!("s3://b/models/{}", m.model_id),
            manifest_sha256: m.manifest_sha256.clone(),
            bundle_bytes: 1000,
            model_created_ms: m.created_ms,
        },
    }
}

fn rollback(seq: u64) -> Command {
    Command {
        action: Order::Rollback,
        ..rollout(seq, &model(0))
    }
}

fn reports(actions: &[Action]) -> Vec<&Report> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn refused_reason(actions: &[Action]) -> Option<String> {
    reports(actions).iter().find_map(|r| match r {
        Report::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

fn failed_reason(actions: &[Action]) -> Option<String> {
    reports(actions).iter().find_map(|r| match r {
        Report::Failed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// Runs a rollout of `m` (sequence `seq`) to the health gate.
fn to_health_gate(mc: &mut Machine, seq: u64, m: &ModelRef) {
    let a = mc.handle(Event::Command {
        cmd: rollout(seq, m),
        now_ms: 10,
    });
    assert!(matches!(a[0], Action::Persist(_)), "{a:?}");
    assert!(a.iter().any(|x| matches!(x, Action::Download(_))));
    mc.handle(Event::Downloaded { seq, now_ms: 20 });
    let a = mc.handle(Event::Verified {
        seq,
        model: m.clone(),
        now_ms: 30,
    });
    assert!(a.iter().any(|x| matches!(x, Action::Load { .. })), "{a:?}");
    let a = mc.handle(Event::Loaded { seq, now_ms: 40 });
    assert_eq!(a, vec![Action::Swap { seq }]);
    let a = mc.handle(Event::Swapped { seq, now_ms: 50 });
    assert!(matches!(&a[0], Action::Persist(s) if s.active.as_ref() == Some(m)));
}

#[test]
fn a_rollout_goes_from_command_to_committed_persisting_before_each_step() {
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    to_health_gate(&mut mc, 5, &model(2));
    assert_eq!(mc.state().previous, Some(model(1)));
    assert_eq!(mc.state().highest_sequence, 5);
    assert_eq!(mc.state().model_floor_ms, 2000);
    let a = mc.handle(Event::HealthPassed { seq: 5, now_ms: 60 });
    assert!(matches!(&a[0], Action::Persist(s) if s.phase == Phase::Idle));
    assert!(a.contains(&Action::DropStandby));
    assert!(a.contains(&Action::Prune {
        keep: vec!["m2".into(), "m1".into()]
    }));
    assert_eq!(mc.state().last.as_ref().unwrap().result, Ending::Succeeded);
}

#[test]
fn a_failed_health_gate_rolls_back_and_reports_the_figure() {
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    to_health_gate(&mut mc, 5, &model(2));
    let a = mc.handle(Event::HealthFailed {
        seq: 5,
        figure: "empty_set_rate".into(),
        detail: "0.31 > 0.05".into(),
        now_ms: 70,
    });
    assert_eq!(failed_reason(&a).as_deref(), Some("health_gate"));
    assert!(reports(&a)
        .iter()
        .any(|r| matches!(r, Report::Failed { detail, .. } if detail.contains("empty_set_rate"))));
    assert!(a.contains(&Action::RollBack {
        seq: 5,
        to: model(1)
    }));
    // still on the new model until the slot holds the old one
    assert_eq!(mc.state().active, Some(model(2)));
    let a = mc.handle(Event::RolledBack { seq: 5, now_ms: 80 });
    assert!(matches!(&a[0], Action::Persist(s) if s.active == Some(model(1))));
    assert_eq!(mc.state().last.as_ref().unwrap().result, Ending::RolledBack);
    assert_eq!(mc.state().previous, None);
}

#[test]
fn commands_are_refused_with_their_reason_and_nothing_changes() {
    let mut base = State::new(Some(model(3)));
    base.highest_sequence = 10;
    base.model_floor_ms = 3000;
    let cases: Vec<(Command, i64, &str)> = vec![
        (
            Command {
                fleet: "other".into(),
                ..rollout(11, &model(4))
            },
            10,
            "other_fleet",
        ),
        (
            Command {
                target: Target::Devices {
                    devices: vec!["dev-2".into()],
                },
                ..rollout(11, &model(4))
            },
            10,
            "not_targeted",
        ),
        (
            Command {
                target: Target::Percent { percent: 0 },
                ..rollout(11, &model(4))
            },
            10,
            "not_targeted",
        ),
        (
            Command {
                not_after_ms: 5,
                ..rollout(11, &model(4))
            },
            10,
            "expired",
        ),
        (
            Command {
                not_before_ms: 100,
                ..rollout(11, &model(4))
            },
            10,
            "not_yet_valid",
        ),
        (rollout(10, &model(4)), 10, "replay"),
        (rollout(3, &model(4)), 10, "replay"),
        (rollout(11, &model(2)), 10, "downgrade"),
        (rollback(11), 10, "no_previous"),
    ];
    for (cmd, now, want) in cases {
        let mut mc = Machine::new(base.clone(), policy());
        let a = mc.handle(Event::Command {
            cmd: cmd.clone(),
            now_ms: now,
        });
        assert_eq!(refused_reason(&a).as_deref(), Some(want), "{cmd:?}: {a:?}");
        assert!(!a.iter().any(|x| matches!(x, Action::Download(_))));
        assert_eq!(mc.state().active, base.active);
        assert_eq!(mc.state().phase, Phase::Idle);
    }
    // an explicit rollback goes below the floor
    let mut s = base.clone();
    s.previous = Some(model(1));
    let mut mc = Machine::new(s, policy());
    let a = mc.handle(Event::Command {
        cmd: rollback(11),
        now_ms: 10,
    });
    assert!(a.contains(&Action::RollBack {
        seq: 11,
        to: model(1)
    }));
    assert!(matches!(&a[0], Action::Persist(s) if s.highest_sequence == 11));
}

#[test]
fn a_duplicate_of_the_command_in_progress_changes_nothing() {
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 10,
    });
    let before = mc.state().clone();
    let a = mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 11,
    });
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(mc.state(), &before);
    // and after it ended, the retained command seen again on a reconnect changes nothing
    mc.handle(Event::DownloadFailed {
        seq: 5,
        reason: "file_sha256_mismatch".into(),
        detail: "x".into(),
        retryable: false,
        now_ms: 12,
    });
    let a = mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 13,
    });
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn a_newer_command_supersedes_a_download_and_waits_behind_a_health_gate() {
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 10,
    });
    let a = mc.handle(Event::Command {
        cmd: rollout(6, &model(3)),
        now_ms: 11,
    });
    assert_eq!(a[0], Action::CancelDownload { seq: 5 });
    assert!(matches!(&mc.state().phase, Phase::Downloading { job } if job.sequence == 6));
    // the cancelled download's late completion is ignored
    assert!(mc
        .handle(Event::Downloaded { seq: 5, now_ms: 12 })
        .is_empty());

    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    to_health_gate(&mut mc, 5, &model(2));
    let a = mc.handle(Event::Command {
        cmd: rollout(7, &model(3)),
        now_ms: 55,
    });
    assert!(matches!(a.last(), Some(Action::Persist(s)) if s.pending.is_some()));
    let a = mc.handle(Event::HealthPassed { seq: 5, now_ms: 60 });
    // committed, then the queued command starts
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Download(j) if j.sequence == 7)));
    assert_eq!(mc.state().pending, None);
}

#[test]
fn download_failures_retry_with_backoff_until_the_deadline() {
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 0,
    });
    let mut now = 0;
    let mut waits = vec![];
    loop {
        let a = mc.handle(Event::DownloadFailed {
            seq: 5,
            reason: "store".into(),
            detail: "500".into(),
            retryable: true,
            now_ms: now,
        });
        if let Some(r) = failed_reason(&a) {
            assert_eq!(r, "store");
            break;
        }
        let at = a
            .iter()
            .find_map(|x| match x {
                Action::SetTimer { at_ms } => Some(*at_ms),
                _ => None,
            })
            .unwrap();
        waits.push(at - now);
        // a timer before the retry time does nothing; at it, the download starts again
        assert!(mc.handle(Event::Timer { now_ms: at - 1 }).is_empty());
        let a = mc.handle(Event::Timer { now_ms: at });
        assert!(a.iter().any(|x| matches!(x, Action::Download(_))), "{a:?}");
        now = at;
    }
    assert_eq!(&waits[..5], &[100, 200, 400, 800, 1600]);
    assert!(waits.iter().all(|w| *w <= 2000));
    assert!(now < 60_000);
}

#[test]
fn the_deadline_ends_a_download_that_never_finishes() {
    let mut mc = Machine::new(State::new(None), policy());
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 0,
    });
    let a = mc.handle(Event::Timer { now_ms: 60_000 });
    assert_eq!(a[0], Action::CancelDownload { seq: 5 });
    assert_eq!(failed_reason(&a).as_deref(), Some("timed_out"));
}

#[test]
fn a_verified_bundle_that_is_not_the_commanded_one_fails() {
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 0,
    });
    mc.handle(Event::Downloaded { seq: 5, now_ms: 1 });
    let a = mc.handle(Event::Verified {
        seq: 5,
        model: model(3),
        now_ms: 2,
    });
    assert_eq!(failed_reason(&a).as_deref(), Some("manifest_mismatch"));
    assert_eq!(mc.state().active, Some(model(1)));
}

#[test]
fn restarts_resume_every_phase() {
    // between swap and pointer write: the state still says loading, active = old
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 0,
    });
    mc.handle(Event::Downloaded { seq: 5, now_ms: 1 });
    mc.handle(Event::Verified {
        seq: 5,
        model: model(2),
        now_ms: 2,
    });
    let saved = mc.state().clone();
    assert_eq!(saved.active, Some(model(1)));
    let mut mc = Machine::new(saved, policy());
    let a = mc.handle(Event::Boot {
        now_ms: 3,
        active_loaded: true,
    });
    assert!(matches!(&a[0], Action::Load { model, .. } if *model == model_2()));
    // during a download: resumed, with its deadline timer
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 0,
    });
    let mut mc = Machine::new(mc.state().clone(), policy());
    let a = mc.handle(Event::Boot {
        now_ms: 3,
        active_loaded: true,
    });
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Download(j) if j.sequence == 5)));
    // past the deadline: failed
    let a = mc.clone().handle(Event::Boot {
        now_ms: 60_001,
        active_loaded: true,
    });
    assert_eq!(failed_reason(&a).as_deref(), Some("timed_out"));
    // an active model that does not load at boot: back to the previous one
    let mut s = State::new(Some(model(2)));
    s.previous = Some(model(1));
    let a = Machine::new(s, policy()).handle(Event::Boot {
        now_ms: 0,
        active_loaded: false,
    });
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::RollBack { to, .. } if *to == model(1))));
}

fn model_2() -> ModelRef {
    model(2)
}

/// One state per phase, with the job's sequence 5 and model m2 (active m1).
fn one_of_each_phase() -> Vec<State> {
    let mut mc = Machine::new(State::new(Some(model(1))), policy());
    let mut states = vec![mc.state().clone()];
    mc.handle(Event::Command {
        cmd: rollout(5, &model(2)),
        now_ms: 10,
    });
    states.push(mc.state().clone());
    mc.handle(Event::Downloaded { seq: 5, now_ms: 20 });
    states.push(mc.state().clone());
    mc.handle(Event::Verified {
        seq: 5,
        model: model(2),
        now_ms: 30,
    });
    states.push(mc.state().clone());
    mc.handle(Event::Loaded { seq: 5, now_ms: 40 });
    mc.handle(Event::Swapped { seq: 5, now_ms: 50 });
    states.push(mc.state().clone());
    mc.handle(Event::HealthFailed {
        seq: 5,
        figure: "f".into(),
        detail: "d".into(),
        now_ms: 60,
    });
    states.push(mc.state().clone());
    states
}

fn every_event(seq: u64) -> Vec<Event> {
    let now_ms = 100;
    vec![
        Event::Boot {
            now_ms,
            active_loaded: true,
        },
        Event::Boot {
            now_ms,
            active_loaded: false,
        },
        Event::Command {
            cmd: rollout(9, &model(3)),
            now_ms,
        },
        Event::Command {
            cmd: rollback(9),
            now_ms,
        },
        Event::Command {
            cmd: rollout(5, &model(2)),
            now_ms,
        },
        Event::Unreadable {
            reason: "bad_signature".into(),
            detail: "x".into(),
        },
        Event::DownloadProgress {
            seq,
            bytes: 1,
            total: 2,
        },
        Event::Downloaded { seq, now_ms },
        Event::DownloadFailed {
            seq,
            reason: "store".into(),
            detail: "x".into(),
            retryable: true,
            now_ms,
        },
        Event::DownloadFailed {
            seq,
            reason: "disk_full".into(),
            detail: "x".into(),
            retryable: false,
            now_ms,
        },
        Event::Verified {
            seq,
            model: model(2),
            now_ms,
        },
        Event::Verified {
            seq,
            model: model(7),
            now_ms,
        },
        Event::VerifyFailed {
            seq,
            reason: "file_sha256_mismatch".into(),
            detail: "x".into(),
            now_ms,
        },
        Event::Loaded { seq, now_ms },
        Event::LoadFailed {
            seq,
            reason: "self_test".into(),
            detail: "x".into(),
            now_ms,
        },
        Event::Swapped { seq, now_ms },
        Event::HealthPassed { seq, now_ms },
        Event::HealthFailed {
            seq,
            figure: "p99".into(),
            detail: "x".into(),
            now_ms,
        },
        Event::RolledBack { seq, now_ms },
        Event::RollbackFailed {
            seq,
            detail: "x".into(),
            now_ms,
        },
        Event::Timer { now_ms },
        Event::Timer { now_ms: 1_000_000 },
        Event::BrokerUp,
        Event::BrokerDown,
    ]
}

/// What must hold after any step: the active model is one the machine knows as verified,
/// every state change is persisted before the first IO action, IO only in its phase.
fn check_step(before: &State, after: &State, actions: &[Action], verified: &HashSet<ModelRef>) {
    if let Some(m) = &after.active {
        assert!(verified.contains(m), "active {m:?} was never verified");
    }
    for a in actions {
        if let Action::Persist(s) = a {
            if let Some(m) = &s.active {
                assert!(
                    verified.contains(m),
                    "persisted active {m:?} never verified"
                );
            }
            assert!(s.highest_sequence >= before.highest_sequence);
        }
    }
    assert!(after.highest_sequence >= before.highest_sequence);
    assert!(after.model_floor_ms >= before.model_floor_ms);
    let last_persist = actions
        .iter()
        .rposition(|a| matches!(a, Action::Persist(_)));
    if before != after {
        let p = last_persist.unwrap_or_else(|| {
            panic!("state changed without a Persist: {before:?} -> {after:?}, {actions:?}")
        });
        match &actions[p] {
            Action::Persist(s) => assert_eq!(**s, *after, "the last Persist is the final state"),
            _ => unreachable!(),
        }
    }
    for (i, a) in actions.iter().enumerate() {
        match a {
            Action::Download(j) => {
                assert!(
                    matches!(&after.phase, Phase::Downloading { job } if job.sequence == j.sequence)
                );
                // the sequence that allows it is on disk already
                let persisted = actions[..i].iter().rev().find_map(|x| match x {
                    Action::Persist(s) => Some(s.highest_sequence),
                    _ => None,
                });
                assert!(
                    persisted.unwrap_or(before.highest_sequence) >= j.sequence,
                    "download of {} before its sequence was persisted: {actions:?}",
                    j.sequence
                );
            }
            Action::Swap { .. } => assert!(matches!(before.phase, Phase::Loading { .. })),
            _ => {}
        }
    }
}

#[test]
fn every_phase_against_every_event() {
    let verified: HashSet<ModelRef> = [model(1), model(2)].into_iter().collect();
    let mut seen = HashSet::new();
    for state in one_of_each_phase() {
        seen.insert(state.phase.name());
        for seq in [5, 4] {
            for ev in every_event(seq) {
                let mut mc = Machine::new(state.clone(), policy());
                let actions = mc.handle(ev.clone());
                check_step(&state, mc.state(), &actions, &verified);
                // stale completions (another sequence) change nothing
                let is_completion = !matches!(
                    ev,
                    Event::Boot { .. }
                        | Event::Command { .. }
                        | Event::Timer { .. }
                        | Event::Unreadable { .. }
                        | Event::BrokerUp
                        | Event::BrokerDown
                );
                if seq == 4 && is_completion {
                    assert!(actions.is_empty(), "{ev:?} in {:?}", state.phase);
                    assert_eq!(mc.state(), &state);
                }
            }
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
}

/// A simulated device: the machine, a driver that carries out its actions with random
/// outcomes, crashes that restart from the last persisted state.
struct Sim {
    mc: Machine,
    disk: State,
    rng: ChaCha8Rng,
    now: i64,
    verified: HashSet<ModelRef>,
    /// IO in flight: (sequence, what) of the single download, and other pending results.
    download: Option<u64>,
    todo: Vec<Event>,
    /// What the serving slot holds.
    slot: Option<ModelRef>,
    candidate: Option<ModelRef>,
    next_seq: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let start = State::new(Some(model(1)));
        Sim {
            mc: Machine::new(start.clone(), policy()),
            disk: start,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            verified: [model(1)].into_iter().collect(),
            download: None,
            todo: vec![],
            slot: Some(model(1)),
            candidate: None,
            next_seq: 1,
        }
    }

    fn apply(&mut self, ev: Event) {
        let before = self.mc.state().clone();
        let actions = self.mc.handle(ev);
        check_step(&before, self.mc.state(), &actions, &self.verified);
        for a in actions {
            self.act(a);
        }
    }

    fn act(&mut self, a: Action) {
        let now_ms = self.now;
        match a {
            Action::Persist(s) => self.disk = *s,
            Action::Report(_) | Action::Prune { .. } => {}
            Action::Download(j) => {
                if let Some(d) = self.download {
                    assert_eq!(
                        d, j.sequence,
                        "two downloads at once ({d} and {})",
                        j.sequence
                    );
                }
                self.download = Some(j.sequence);
                let ev = match self.rng.random_range(0..4) {
                    0 => Event::DownloadFailed {
                        seq: j.sequence,
                        reason: "store".into(),
                        detail: String::new(),
                        retryable: true,
                        now_ms,
                    },
                    1 => Event::DownloadFailed {
                        seq: j.sequence,
                        reason: "file_sha256_mismatch".into(),
                        detail: String::new(),
                        retryable: false,
                        now_ms,
                    },
                    _ => Event::Downloaded {
                        seq: j.sequence,
                        now_ms,
                    },
                };
                self.todo.push(ev);
            }
            Action::CancelDownload { seq } => {
                if self.download == Some(seq) {
                    self.download = None;
                }
            }
            Action::Verify(j) => {
                let m = ModelRef {
                    model_id: j.model_id.clone(),
                    manifest_sha256: j.manifest_sha256.clone(),
                    created_ms: j.model_created_ms,
                };
                let ev = if self.rng.random_range(0..5) == 0 {
                    Event::VerifyFailed {
                        seq: j.sequence,
                        reason: "bad_manifest_signature".into(),
                        detail: String::new(),
                        now_ms,
                    }
                } else {
                    self.verified.insert(m.clone());
                    Event::Verified {
                        seq: j.sequence,
                        model: m,
                        now_ms,
                    }
                };
                self.todo.push(ev);
            }
            Action::Load { job, model } => {
                assert!(
                    self.verified.contains(&model),
                    "loading an unverified model"
                );
                let ev = if self.rng.random_range(0..5) == 0 {
                    Event::LoadFailed {
                        seq: job.sequence,
                        reason: "self_test".into(),
                        detail: String::new(),
                        now_ms,
                    }
                } else {
                    self.candidate = Some(model);
                    Event::Loaded {
                        seq: job.sequence,
                        now_ms,
                    }
                };
                self.todo.push(ev);
            }
            Action::Swap { seq } => {
                let c = self
                    .candidate
                    .take()
                    .expect("swap without a loaded candidate");
                assert!(self.verified.contains(&c));
                self.slot = Some(c);
                self.todo.push(Event::Swapped { seq, now_ms });
            }
            Action::StartHealthGate { job, .. } => {
                let ev = if self.rng.random_range(0..3) == 0 {
                    Event::HealthFailed {
                        seq: job.sequence,
                        figure: "p99".into(),
                        detail: String::new(),
                        now_ms,
                    }
                } else {
                    Event::HealthPassed {
                        seq: job.sequence,
                        now_ms,
                    }
                };
                self.todo.push(ev);
            }
            Action::RollBack { seq, to } => {
                assert!(self.verified.contains(&to));
                self.slot = Some(to);
                self.todo.push(Event::RolledBack { seq, now_ms });
            }
            Action::DropStandby => self.candidate = None,
            Action::SetTimer { .. } => {}
        }
    }

    /// Completions clear the download in flight as the driver would.
    fn complete(&mut self, ev: &Event) {
        if let Event::Downloaded { seq, .. } | Event::DownloadFailed { seq, .. } = ev {
            if self.download == Some(*seq) {
                self.download = None;
            }
        }
    }

    fn crash(&mut self) {
        // the process dies: IO in flight is lost, the slot restarts with the persisted
        // active model
        self.todo.clear();
        self.download = None;
        self.candidate = None;
        self.mc = Machine::new(self.disk.clone(), policy());
        self.slot = self.disk.active.clone();
        if let Some(m) = &self.slot {
            assert!(self.verified.contains(m), "boots into an unverified model");
        }
        self.apply(Event::Boot {
            now_ms: self.now,
            active_loaded: true,
        });
    }

    fn step(&mut self) {
        self.now += self.rng.random_range(0..3000);
        match self.rng.random_range(0..10) {
            0..=4 if !self.todo.is_empty() => {
                let i = self.rng.random_range(0..self.todo.len());
                let ev = self.todo.remove(i);
                self.complete(&ev);
                self.apply(ev);
            }
            5 | 6 => {
                let seq = if self.rng.random_range(0..4) == 0 {
                    self.rng.random_range(0..self.next_seq.max(1))
                } else {
                    self.next_seq += 1;
                    self.next_seq
                };
                let cmd = if self.rng.random_range(0..6) == 0 {
                    rollback(seq)
                } else {
                    rollout(seq, &model(self.rng.random_range(0..6)))
                };
                self.apply(Event::Command {
                    cmd,
                    now_ms: self.now,
                });
            }
            7 => self.apply(Event::Timer { now_ms: self.now }),
            8 => self.crash(),
            _ => {
                // a stray completion for some sequence
                let seq = self.rng.random_range(0..self.next_seq + 1);
                let ev = match self.rng.random_range(0..4) {
                    0 => Event::Downloaded {
                        seq,
                        now_ms: self.now,
                    },
                    1 => Event::Loaded {
                        seq,
                        now_ms: self.now,
                    },
                    2 => Event::HealthPassed {
                        seq,
                        now_ms: self.now,
                    },
                    _ => Event::RolledBack {
                        seq,
                        now_ms: self.now,
                    },
                };
                // only completions the driver could send: not for the running job
                if self.mc.state().phase.sequence() != Some(seq) {
                    self.apply(ev);
                }
            }
        }
        // when idle, the slot serves exactly the persisted active model
        if self.mc.state().phase == Phase::Idle && self.todo.is_empty() {
            assert_eq!(
                self.slot,
                self.mc.state().active,
                "slot and pointer disagree"
            );
        }
    }
}

#[test]
fn random_event_sequences_keep_the_invariants() {
    let mut phases = HashSet::new();
    let mut ends = HashSet::new();
    // under qemu (cross/test.sh) the walk is logic that does not depend on the target:
    // fewer seeds there keep the emulated suite short
    let seeds = if cfg!(edgecp_cross) { 100 } else { 400 };
    for seed in 0..seeds {
        let mut sim = Sim::new(seed);
        for _ in 0..300 {
            sim.step();
            phases.insert(sim.mc.state().phase.name());
            if let Some(o) = &sim.mc.state().last {
                ends.insert(format!("{:?}", o.result));
            }
        }
    }
    // the walk reached every phase and every ending
    assert_eq!(phases.len(), 6, "{phases:?}");
    assert!(ends.len() >= 4, "{ends:?}");
}
