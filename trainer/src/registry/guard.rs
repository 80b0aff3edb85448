//! [`RunGuard`]: owns a running run, keeps its heartbeat, and marks it `failed` if dropped
//! before [`RunGuard::finish`] (an early `?` return or a panic).
//!
//! Drop cannot be async, and blocking on the caller's runtime from inside it can deadlock
//! (a current-thread runtime cannot drive its own IO while its only thread is blocked). So
//! both the heartbeat and the drop-time update run on a separate OS thread with a small
//! current-thread tokio runtime of its own and a connection of its own, opened from the
//! registry URL. Drop waits for that update at most [`DROP_WAIT`]; if the database cannot be
//! reached then, the run stays `running` and the next [`super::Registry::reap_stale`] marks it
//! `killed` (its heartbeat stops with the guard), so it is never left marked finished.
//! An in-memory SQLite URL (`sqlite::memory:`) is private to each connection: there the
//! drop-time update cannot reach the run and only the reaper applies.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use sqlx::AnyConnection;
use sqlx::Connection;

use super::{now_ms, NewRun, Registry, Result, RunId, Status};

/// How often a guarded run's heartbeat is written.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// How long a dropped guard waits for the `failed` update.
pub const DROP_WAIT: Duration = Duration::from_secs(10);

fn small_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Writes a run's heartbeat every `every` from its own thread and connection, so a busy or
/// blocked async runtime (training is CPU-bound) does not starve it. Stops when dropped.
pub struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(url: &str, run: &RunId, every: Duration) -> Heartbeat {
        let (stop, stopped) = mpsc::channel::<()>();
        let url = url.to_string();
        let run = run.clone();
        let thread = std::thread::Builder::new()
            .name("registry-heartbeat".into())
            .spawn(move || {
                let Ok(rt) = small_runtime() else {
                    tracing::warn!("run registry: no runtime for the heartbeat of run {run}");
                    return;
                };
                let mut conn: Option<AnyConnection> = None;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    rt.block_on(async {
                        if conn.is_none() {
                            conn = AnyConnection::connect(&url).await.ok();
                        }
                        let Some(c) = conn.as_mut() else { return };
                        let beat = sqlx::query(
                            "UPDATE runs SET heartbeat_ms = ? WHERE id = ? AND status = ?",
                        )
                        .bind(now_ms())
                        .bind(run.as_str())
                        .bind(Status::Running.as_str())
                        .execute(c)
                        .await;
                        if let Err(e) = beat {
                            tracing::warn!("run registry: heartbeat of run {run} failed: {e}");
                            conn = None;
                        }
                    });
                }
                if let Some(c) = conn {
                    let _ = rt.block_on(c.close());
                }
            })
            .ok();
        Heartbeat {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Owns a `running` run: heartbeats it, and marks it `failed` when dropped unfinished.
pub struct RunGuard {
    registry: Registry,
    run: RunId,
    heartbeat: Option<Heartbeat>,
    armed: bool,
}

impl RunGuard {
    /// Starts a run and guards it (heartbeat every [`HEARTBEAT_EVERY`]).
    pub async fn start(registry: &Registry, new: &NewRun) -> Result<RunGuard> {
        let run = registry.start_run(new).await?;
        Ok(Self::adopt(registry, run, HEARTBEAT_EVERY))
    }

    /// Guards a run that was started elsewhere.
    pub fn adopt(registry: &Registry, run: RunId, heartbeat_every: Duration) -> RunGuard {
        let heartbeat = Heartbeat::start(&registry.connect_url, &run, heartbeat_every);
        RunGuard {
            registry: registry.clone(),
            run,
            heartbeat: Some(heartbeat),
            armed: true,
        }
    }

    pub fn id(&self) -> &RunId {
        &self.run
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Ends the run with `status` (normally `finished`) and disarms the guard.
    pub async fn finish(mut self, status: Status) -> Result<()> {
        self.heartbeat.take();
        self.armed = false;
        self.registry.finish_run(&self.run, status).await
    }

    /// Leaves the run `running` and unguarded (for a process that hands it to another).
    pub fn disarm(mut self) -> RunId {
        self.heartbeat.take();
        self.armed = false;
        self.run.clone()
    }
}

/// Marks `run` failed through a fresh connection on a thread of its own; waits `wait`.
fn mark_failed_blocking(url: &str, run: &RunId, wait: Duration) -> bool {
    let (done, result) = mpsc::channel::<bool>();
    let url = url.to_string();
    let run = run.clone();
    let spawned = std::thread::Builder::new()
        .name("registry-guard".into())
        .spawn(move || {
            let ok = small_runtime().ok().is_some_and(|rt| {
                rt.block_on(async {
                    let Ok(mut conn) = AnyConnection::connect(&url).await else {
                        return false;
                    };
                    let now = now_ms();
                    let updated = sqlx::query(
                        "UPDATE runs SET status = ?, end_ms = ?, heartbeat_ms = ? \
                         WHERE id = ? AND status = ?",
                    )
                    .bind(Status::Failed.as_str())
                    .bind(now)
                    .bind(now)
                    .bind(run.as_str())
                    .bind(Status::Running.as_str())
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                    updated.is_ok_and(|r| r.rows_affected() > 0)
                })
            });
            let _ = done.send(ok);
        });
    spawned.is_ok() && result.recv_timeout(wait).unwrap_or(false)
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.heartbeat.take();
        if !self.armed {
            return;
        }
        if mark_failed_blocking(&self.registry.connect_url, &self.run, DROP_WAIT) {
            tracing::warn!(run = %self.run, "run registry: run ended without finishing: marked failed");
        } else {
            tracing::warn!(
                run = %self.run,
                "run registry: could not mark the unfinished run failed; it stays running until reaped as killed"
            );
        }
    }
}
