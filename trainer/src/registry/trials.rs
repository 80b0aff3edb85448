//! Sweeps and trials in the registry (migration 0003): the shared work queue of
//! `trainer sweep` (writes trials) and `trainer worker` (claims and runs them), the way
//! Optuna's database storage lets any number of machines share one study.
//!
//! # Claiming
//! A worker takes the oldest trial that is `pending`, or `running` with an expired lease (its
//! worker died), and marks it `running` with a fresh random claim token and a lease. On
//! MySQL/MariaDB the row is chosen with `SELECT ... FOR UPDATE SKIP LOCKED` inside a
//! transaction, so concurrent workers never wait on each other's candidate rows; SQLite has
//! one writer at a time, so there a single `UPDATE ... WHERE id = (SELECT ...)` is atomic.
//! The holder renews its lease ([`Registry::renew_trial`]) while the trial runs; finishing or
//! failing a trial is conditional on still holding the token, so a worker whose lease was
//! taken over cannot mark the trial a second time. A trial abandoned
//! [`MAX_ATTEMPTS`] times (a trial that kills its workers) is marked `failed`.

use serde::Serialize;
use sqlx::Row;

use super::{new_id, now_ms, retry, Backend, Registry, RegistryError, Result};

/// A trial whose lease has expired this many times is not handed out again.
pub const MAX_ATTEMPTS: i64 = 3;

/// A trial's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    Pending,
    Running,
    Finished,
    Failed,
}

impl TrialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Pending => "pending",
            TrialStatus::Running => "running",
            TrialStatus::Finished => "finished",
            TrialStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<TrialStatus> {
        Ok(match s {
            "pending" => TrialStatus::Pending,
            "running" => TrialStatus::Running,
            "finished" => TrialStatus::Finished,
            "failed" => TrialStatus::Failed,
            other => {
                return Err(RegistryError::Invalid(format!(
                    "unknown trial status {other:?} in table `trials`"
                )))
            }
        })
    }
}

/// A sweep to record: its trials are the override lists, in order.
#[derive(Debug, Clone)]
pub struct NewSweep {
    pub name: String,
    pub experiment: String,
    pub dataset: String,
    /// The spec file's text, kept so the sweep can be reproduced.
    pub spec: String,
    pub trials: Vec<NewTrial>,
}

/// One trial of a new sweep.
#[derive(Debug, Clone)]
pub struct NewTrial {
    /// What this trial varies.
    pub overrides: Vec<(String, String)>,
    /// Its whole configuration (TOML).
    pub config: String,
}

/// A trial a worker holds.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimedTrial {
    pub id: String,
    pub sweep_id: String,
    pub sweep: String,
    pub experiment: String,
    pub dataset: String,
    pub idx: i64,
    pub overrides: Vec<(String, String)>,
    /// The whole configuration (TOML).
    pub config: String,
    /// This worker's token: needed to renew, finish or fail the trial.
    pub claim: String,
    /// Claims so far, this one included.
    pub attempts: i64,
}

/// One row of `trials`, for listings and tests.
#[derive(Debug, Clone, Serialize)]
pub struct TrialRow {
    pub id: String,
    pub sweep: String,
    pub idx: i64,
    pub overrides: Vec<(String, String)>,
    pub status: TrialStatus,
    pub worker: Option<String>,
    pub attempts: i64,
    pub run_id: Option<String>,
    pub model_id: Option<String>,
    pub error: Option<String>,
}

/// Trial counts of a sweep (or of all sweeps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrialCounts {
    pub pending: i64,
    pub running: i64,
    pub finished: i64,
    pub failed: i64,
}

impl TrialCounts {
    /// Nothing left to run or wait for.
    pub fn done(&self) -> bool {
        self.pending == 0 && self.running == 0
    }
}

fn decode_overrides(text: &str) -> Result<Vec<(String, String)>> {
    serde_json::from_str(text).map_err(|e| {
        RegistryError::Invalid(format!(
            "trial overrides in table `trials` are not a JSON list of [key, value]: {e}"
        ))
    })
}

impl Registry {
    /// Records a sweep and all its trials (`pending`) in one transaction. A sweep name is
    /// unique: recording it again is refused, naming the existing sweep.
    pub async fn create_sweep(&self, s: &NewSweep) -> Result<String> {
        if s.name.is_empty() || s.name.len() > 255 {
            return Err(RegistryError::Invalid(format!(
                "sweep name {:?}: expected 1 to 255 characters",
                s.name
            )));
        }
        if self.sweep_id(&s.name).await?.is_some() {
            return Err(RegistryError::Invalid(format!(
                "a sweep named {:?} exists already in {}: choose another name (--name)",
                s.name, self.url
            )));
        }
        let id = new_id();
        let now = now_ms();
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(self.err("sweeps", "begin"))?;
        sqlx::query(
            "INSERT INTO sweeps (id, name, experiment, dataset, spec, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&s.name)
        .bind(&s.experiment)
        .bind(&s.dataset)
        .bind(&s.spec)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(self.err("sweeps", "insert"))?;
        for (idx, trial) in s.trials.iter().enumerate() {
            let text = serde_json::to_string(&trial.overrides)
                .map_err(|e| RegistryError::Invalid(format!("trial {idx} overrides: {e}")))?;
            sqlx::query(
                "INSERT INTO trials (id, sweep_id, idx, overrides, config, status, claim, worker, \
                 lease_until_ms, attempts, run_id, model_id, error, created_ms, updated_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, 0, 0, NULL, NULL, NULL, ?, ?)",
            )
            .bind(new_id())
            .bind(&id)
            .bind(idx as i64)
            .bind(text)
            .bind(&trial.config)
            .bind(TrialStatus::Pending.as_str())
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(self.err("trials", "insert"))?;
        }
        tx.commit().await.map_err(self.err("sweeps", "commit"))?;
        Ok(id)
    }

    /// The id of the sweep with this name.
    pub async fn sweep_id(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar::<_, String>("SELECT id FROM sweeps WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(self.err("sweeps", "select"))
    }

    /// Claims the next trial (of the sweep `sweep_id`, or of any sweep) for `worker`, with a
    /// lease of `lease_ms`. None when no trial is pending or abandoned.
    pub async fn claim_trial(
        &self,
        sweep_id: Option<&str>,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<ClaimedTrial>> {
        loop {
            let claim = new_id();
            let now = now_ms();
            let taken = retry(|| async {
                match self.backend {
                    Backend::MySql => {
                        self.claim_mysql(sweep_id, worker, &claim, now, lease_ms)
                            .await
                    }
                    Backend::Sqlite => {
                        self.claim_sqlite(sweep_id, worker, &claim, now, lease_ms)
                            .await
                    }
                }
            })
            .await?;
            if !taken {
                return Ok(None);
            }
            let trial = self.claimed(&claim).await?;
            if trial.attempts > MAX_ATTEMPTS {
                // Its lease expired MAX_ATTEMPTS times: a trial that kills its workers.
                let why = format!(
                    "abandoned {MAX_ATTEMPTS} times: each worker that took it stopped renewing \
                     its lease (killed, or the trial crashes its process)"
                );
                self.fail_trial(&trial.id, &trial.claim, &why).await?;
                tracing::warn!(trial = %trial.id, "trial {} of sweep {} failed: {why}", trial.idx, trial.sweep);
                continue;
            }
            return Ok(Some(trial));
        }
    }

    async fn claim_mysql(
        &self,
        sweep_id: Option<&str>,
        worker: &str,
        claim: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(self.err("trials", "begin"))?;
        let filter = if sweep_id.is_some() {
            "AND sweep_id = ? "
        } else {
            ""
        };
        let sql = format!(
            "SELECT id FROM trials WHERE (status = 'pending' OR (status = 'running' AND \
             lease_until_ms < ?)) {filter}ORDER BY created_ms, idx LIMIT 1 FOR UPDATE SKIP LOCKED"
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(now);
        if let Some(s) = sweep_id {
            q = q.bind(s);
        }
        let Some(id) = q
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.err("trials", "select for update"))?
        else {
            tx.rollback()
                .await
                .map_err(self.err("trials", "rollback"))?;
            return Ok(false);
        };
        sqlx::query(
            "UPDATE trials SET status = 'running', claim = ?, worker = ?, lease_until_ms = ?, \
             attempts = attempts + 1, updated_ms = ? WHERE id = ?",
        )
        .bind(claim)
        .bind(worker)
        .bind(now + lease_ms)
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(self.err("trials", "claim"))?;
        tx.commit().await.map_err(self.err("trials", "commit"))?;
        Ok(true)
    }

    async fn claim_sqlite(
        &self,
        sweep_id: Option<&str>,
        worker: &str,
        claim: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool> {
        let filter = if sweep_id.is_some() {
            "AND sweep_id = ? "
        } else {
            ""
        };
        let sql = format!(
            "UPDATE trials SET status = 'running', claim = ?, worker = ?, lease_until_ms = ?, \
             attempts = attempts + 1, updated_ms = ? WHERE id = (SELECT id FROM trials WHERE \
             (status = 'pending' OR (status = 'running' AND lease_until_ms < ?)) {filter}\
             ORDER BY created_ms, idx LIMIT 1)"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(claim)
            .bind(worker)
            .bind(now + lease_ms)
            .bind(now)
            .bind(now);
        if let Some(s) = sweep_id {
            q = q.bind(s);
        }
        let done = q
            .execute(self.pool())
            .await
            .map_err(self.err("trials", "claim"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn claimed(&self, claim: &str) -> Result<ClaimedTrial> {
        let row = sqlx::query(
            "SELECT t.id, t.sweep_id, s.name, s.experiment, s.dataset, t.idx, t.overrides, \
             t.attempts, t.config FROM trials t JOIN sweeps s ON s.id = t.sweep_id WHERE t.claim = ?",
        )
        .bind(claim)
        .fetch_one(self.pool())
        .await
        .map_err(self.err("trials", "select claimed"))?;
        let get = self.err("trials", "decode");
        let overrides: String = row.try_get(6).map_err(get)?;
        Ok(ClaimedTrial {
            id: row.try_get(0).map_err(get)?,
            sweep_id: row.try_get(1).map_err(get)?,
            sweep: row.try_get(2).map_err(get)?,
            experiment: row.try_get(3).map_err(get)?,
            dataset: row.try_get(4).map_err(get)?,
            idx: row.try_get(5).map_err(get)?,
            overrides: decode_overrides(&overrides)?,
            config: row.try_get(8).map_err(get)?,
            claim: claim.to_string(),
            attempts: row.try_get(7).map_err(get)?,
        })
    }

    /// Extends the lease of a trial this worker holds. False when the claim was lost (the
    /// lease expired and another worker took the trial, or it was ended).
    pub async fn renew_trial(&self, id: &str, claim: &str, lease_ms: i64) -> Result<bool> {
        let now = now_ms();
        retry(|| async {
            let r = sqlx::query(
                "UPDATE trials SET lease_until_ms = ?, updated_ms = ? WHERE id = ? AND claim = ? \
                 AND status = 'running'",
            )
            .bind(now + lease_ms)
            .bind(now)
            .bind(id)
            .bind(claim)
            .execute(self.pool())
            .await
            .map_err(self.err("trials", "renew"))?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    /// Marks a held trial finished with its run and bundle. False when the claim was lost:
    /// then another worker owns the trial and this one must not count it.
    pub async fn finish_trial(
        &self,
        id: &str,
        claim: &str,
        run_id: &str,
        model_id: Option<&str>,
    ) -> Result<bool> {
        retry(|| async {
            let r = sqlx::query(
                "UPDATE trials SET status = 'finished', run_id = ?, model_id = ?, error = NULL, \
                 updated_ms = ? WHERE id = ? AND claim = ? AND status = 'running'",
            )
            .bind(run_id)
            .bind(model_id)
            .bind(now_ms())
            .bind(id)
            .bind(claim)
            .execute(self.pool())
            .await
            .map_err(self.err("trials", "finish"))?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    /// Marks a held trial failed with a message. False when the claim was lost.
    pub async fn fail_trial(&self, id: &str, claim: &str, error: &str) -> Result<bool> {
        retry(|| async {
            let r = sqlx::query(
                "UPDATE trials SET status = 'failed', error = ?, updated_ms = ? WHERE id = ? AND \
                 claim = ? AND status = 'running'",
            )
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .bind(claim)
            .execute(self.pool())
            .await
            .map_err(self.err("trials", "fail"))?;
            Ok(r.rows_affected() == 1)
        })
        .await
    }

    /// Trial counts per status, of one sweep or of all.
    pub async fn trial_counts(&self, sweep_id: Option<&str>) -> Result<TrialCounts> {
        let rows: Vec<(String, i64)> = match sweep_id {
            Some(s) => {
                sqlx::query_as(
                    "SELECT status, COUNT(*) FROM trials WHERE sweep_id = ? GROUP BY status",
                )
                .bind(s)
                .fetch_all(self.pool())
                .await
            }
            None => {
                sqlx::query_as("SELECT status, COUNT(*) FROM trials GROUP BY status")
                    .fetch_all(self.pool())
                    .await
            }
        }
        .map_err(self.err("trials", "count"))?;
        let mut c = TrialCounts::default();
        for (status, n) in rows {
            match TrialStatus::parse(&status)? {
                TrialStatus::Pending => c.pending = n,
                TrialStatus::Running => c.running = n,
                TrialStatus::Finished => c.finished = n,
                TrialStatus::Failed => c.failed = n,
            }
        }
        Ok(c)
    }

    /// The trials of a sweep in order.
    pub async fn trials(&self, sweep_id: &str) -> Result<Vec<TrialRow>> {
        let rows = sqlx::query(
            "SELECT t.id, s.name, t.idx, t.overrides, t.status, t.worker, t.attempts, t.run_id, \
             t.model_id, t.error FROM trials t JOIN sweeps s ON s.id = t.sweep_id \
             WHERE t.sweep_id = ? ORDER BY t.idx",
        )
        .bind(sweep_id)
        .fetch_all(self.pool())
        .await
        .map_err(self.err("trials", "select"))?;
        rows.iter()
            .map(|row| {
                let get = self.err("trials", "decode");
                let overrides: String = row.try_get(3).map_err(get)?;
                let status: String = row.try_get(4).map_err(get)?;
                Ok(TrialRow {
                    id: row.try_get(0).map_err(get)?,
                    sweep: row.try_get(1).map_err(get)?,
                    idx: row.try_get(2).map_err(get)?,
                    overrides: decode_overrides(&overrides)?,
                    status: TrialStatus::parse(&status)?,
                    worker: row.try_get(5).map_err(get)?,
                    attempts: row.try_get(6).map_err(get)?,
                    run_id: row.try_get(7).map_err(get)?,
                    model_id: row.try_get(8).map_err(get)?,
                    error: row.try_get(9).map_err(get)?,
                })
            })
            .collect()
    }
}
