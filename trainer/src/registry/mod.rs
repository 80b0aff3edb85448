//! The run registry: experiments, runs, params, metrics (per step and final) and artifacts in
//! SQL, so that every trial can be reproduced, compared and chosen from with plain queries.
//!
//! # One code path for SQLite and MySQL/MariaDB
//! The registry speaks through sqlx's `Any` driver: the URL picks the backend at run time
//! (`sqlite://runs/registry.db?mode=rwc`, the embedded default, or
//! `mysql://user:password@host:3306/db`, also `mariadb://`), and every statement below is
//! written once in the SQL that both dialects accept (`?` placeholders, VARCHAR/TEXT/DOUBLE/
//! BIGINT, no RETURNING, no upserts, no AUTOINCREMENT: ids are generated here). sqlx was chosen
//! over `mysql_async` (named in the design card) because `mysql_async` speaks MySQL only: the
//! embedded SQLite default would need a second implementation of every query, and the two
//! would drift. sqlx is pure Rust for MySQL (no libmysqlclient) and bundles SQLite.
//!
//! Dialect notes: MySQL compares VARCHARs with the database collation (usually
//! case-insensitive `utf8mb4_general_ci`), so experiment and metric names that differ only in
//! case collide there and not in SQLite: use lower-case names. Create MySQL databases with
//! `CHARACTER SET utf8mb4`. Metric values must be finite (MySQL rejects NaN and infinities,
//! SQLite turns NaN into NULL): [`Registry::log_metrics`] refuses them with a clear error.
//!
//! # Schema (trainer/migrations/, applied at open)
//! `experiments(id, name UNIQUE, created_ms)`; `runs(id, experiment_id, name, status, config,
//! seed, dataset_id, dataset_sha256, code_version, start_ms, end_ms, heartbeat_ms, host, pid)`;
//! `params(run_id, name, value)` PK (run_id, name); `metrics(run_id, name, step, value, ts_ms)`
//! per-step history; `final_metrics(run_id, name, value, ts_ms)` PK (run_id, name);
//! `artifacts(run_id, name, uri, sha256, bytes, created_ms)` PK (run_id, name). Times are
//! milliseconds since the Unix epoch (UTC); ids are [`new_id`]s. Writes that two processes
//! may race on are single-row by primary key or plain INSERTs (no gap locks on InnoDB), and a
//! transaction that still loses a conflict (deadlock, busy) is retried.
//!
//! # Run lifecycle
//! A run starts `running`; only [`Registry::finish_run`] moves it, once, to `finished`,
//! `failed` or `killed`. A process that dies without saying so is found by
//! [`Registry::reap_stale`] (heartbeat older than a limit, or its pid gone on this host) and
//! marked `killed`; [`RunGuard`] marks a run `failed` when the code that owns it returns early
//! or panics. So a run that fails or is killed is never left marked finished.

// Parts of the API (models, best-run selection, history) are used by commands that land
// later; the tests exercise all of it.

mod blocking;
mod bundles;
mod guard;
mod migrate;
mod trials;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;
use sqlx::{AssertSqlSafe, Connection, Row};

#[allow(unused_imports)] // the public API, used as the commands that need it land
pub use blocking::BlockingRegistry;
pub use bundles::BundleRecord;
#[allow(unused_imports)]
pub use guard::{Heartbeat, RunGuard, HEARTBEAT_EVERY};
#[allow(unused_imports)]
pub use migrate::{MIGRATIONS_TABLE, SCHEMA_VERSION};
#[allow(unused_imports)]
pub use trials::{
    ClaimedTrial, NewSweep, NewTrial, TrialCounts, TrialRow, TrialStatus, MAX_ATTEMPTS,
};

/// URL used when neither `--registry` nor `EDGECP_REGISTRY` is given.
pub const DEFAULT_URL: &str = "sqlite://runs/registry.db?mode=rwc";
/// Environment variable that selects the registry URL.
pub const URL_ENV: &str = "EDGECP_REGISTRY";
/// A `running` run whose heartbeat is older than this is reaped as `killed` when the
/// registry opens. Runs heartbeat every [`guard::HEARTBEAT_EVERY`] through [`RunGuard`].
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Rows per multi-row INSERT: 500 x 5 parameters stays far below SQLite's and MySQL's limits.
const INSERT_CHUNK: usize = 500;

/// Everything that can go wrong in the registry; each message names the URL or the table.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry URL {url:?} is not usable: {reason} (expected sqlite://PATH?mode=rwc or mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to the run registry at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply the schema migrations of the run registry at {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("the run registry at {url} has schema version {found}, newer than this program's {supported}: it was written by a newer edgecp; upgrade this program (the database was not changed)")]
    SchemaTooNew {
        url: String,
        found: i64,
        supported: i64,
    },
    #[error("run registry at {url}: {op} on table `{table}` failed: {source}")]
    Query {
        url: String,
        table: &'static str,
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("run {0} not found in the registry")]
    RunNotFound(String),
    #[error("run id prefix {prefix:?} is ambiguous: it matches {candidates:?}")]
    AmbiguousRun {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("run {run} is {from}, cannot mark it {to}: only a running run changes status, once")]
    InvalidTransition {
        run: String,
        from: Status,
        to: Status,
    },
    #[error(
        "metric {name:?} of run {run} (step {step:?}) is {value}: only finite values are stored"
    )]
    NonFinite {
        run: String,
        name: String,
        step: Option<i64>,
        value: f64,
    },
    #[error(
        "param {name:?} of run {run} is already {old:?}; params are immutable, cannot set {new:?}"
    )]
    ParamConflict {
        run: String,
        name: String,
        old: String,
        new: String,
    },
    #[error("invalid input for the run registry: {0}")]
    Invalid(String),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The status of a run. Stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Finished,
    Failed,
    Killed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Killed => "killed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "running" => Ok(Status::Running),
            "finished" => Ok(Status::Finished),
            "failed" => Ok(Status::Failed),
            "killed" => Ok(Status::Killed),
            other => Err(RegistryError::Invalid(format!(
                "unknown run status {other:?} (running, finished, failed, killed)"
            ))),
        }
    }
}

/// A run id: 32 lower-case hex digits, time-ordered (48-bit milliseconds + 80 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new id: time-ordered, unique across processes and machines without coordination.
pub fn new_id() -> String {
    let ms = now_ms() as u64 & 0xffff_ffff_ffff;
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    format!("{:012x}{:020x}", ms, random)
}

/// What a caller says about a run when it starts it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewRun {
    /// Experiment name; created on first use.
    pub experiment: String,
    /// Human-readable run name (need not be unique).
    pub name: String,
    /// The complete configuration (JSON or TOML text) that reproduces the run.
    pub config: String,
    pub seed: Option<u64>,
    pub dataset_id: Option<String>,
    /// sha256 (hex) of the dataset manifest.
    pub dataset_sha256: Option<String>,
    /// None: [`code_version`] of this binary.
    pub code_version: Option<String>,
}

/// One run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: RunId,
    pub experiment: String,
    pub name: String,
    pub status: Status,
    pub config: String,
    pub seed: Option<u64>,
    pub dataset_id: Option<String>,
    pub dataset_sha256: Option<String>,
    pub code_version: String,
    /// Milliseconds since the Unix epoch (UTC).
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub heartbeat_ms: i64,
    pub host: String,
    pub pid: i64,
}

/// A run with its final metrics, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    #[serde(flatten)]
    pub run: RunInfo,
    /// Final (summary) metrics by name.
    pub metrics: BTreeMap<String, f64>,
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunInfo,
    pub params: BTreeMap<String, String>,
    /// Final (summary) metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Names of the metrics that have per-step history.
    pub metric_histories: Vec<String>,
    pub artifacts: Vec<Artifact>,
}

/// A file that belongs to a run, stored in the object store at `uri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
    #[serde(default)]
    pub created_ms: i64,
}

/// One value of a metric's history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: i64,
    pub value: f64,
    pub ts_ms: i64,
}

/// Sort runs by a final metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricOrder {
    pub metric: String,
    pub higher_is_better: bool,
}

/// Which runs [`Registry::list_runs`] returns: newest first unless ordered by a metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFilter {
    pub experiment: Option<String>,
    pub status: Option<Status>,
    pub limit: Option<u32>,
    /// Runs without that metric come last.
    pub order_by: Option<MetricOrder>,
}

/// Which backend a URL selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Backend {
    Sqlite,
    MySql,
}

/// The run registry. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Registry {
    pool: AnyPool,
    /// The URL as given (password included), for the guard's own connections.
    connect_url: String,
    /// The URL with any password masked, for messages.
    url: String,
    backend: Backend,
}

impl fmt::Debug for Registry {
    /// Without the password-bearing URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This binary's version: the package version, plus `+GIT` when the build set
/// `EDGECP_GIT_DESCRIBE` (a build script can run `git describe --always --dirty`).
pub fn code_version() -> String {
    match option_env!("EDGECP_GIT_DESCRIBE") {
        Some(git) if !git.is_empty() => format!("{}+{}", env!("CARGO_PKG_VERSION"), git),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// This machine's host name (best effort).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Whether a process with this pid exists on this host. Without /proc, assumes it does (the
/// heartbeat limit still reaps the run).
fn pid_alive(pid: i64) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The URL with the password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}{tail}");
            }
        }
    }
    url.to_string()
}

fn backend_of(url: &str) -> Result<Backend> {
    let bad = |reason: &str| RegistryError::BadUrl {
        url: redact_url(url),
        reason: reason.to_string(),
    };
    let scheme = url
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .ok_or_else(|| bad("no scheme"))?;
    match scheme.as_str() {
        "sqlite" => Ok(Backend::Sqlite),
        "mysql" | "mariadb" => {
            let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
            let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
            let db = path.split('?').next().unwrap_or("");
            if db.is_empty() {
                Err(bad(
                    "no database name after the host (mysql://USER@HOST:PORT/DATABASE)",
                ))
            } else {
                Ok(Backend::MySql)
            }
        }
        other => Err(bad(&format!(
            "unsupported scheme {other:?}: the registry speaks sqlite and mysql/mariadb"
        ))),
    }
}

/// Creates the parent directory of a SQLite file URL (sqlx's `mode=rwc` creates the file only).
fn ensure_sqlite_dir(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or("");
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path.starts_with(':') || path.starts_with("file:") {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| RegistryError::BadUrl {
                url: url.to_string(),
                reason: format!("cannot create directory {}: {e}", parent.display()),
            })?;
        }
    }
    Ok(())
}

/// Puts a SQLite file in WAL mode (persistent in the file), so that readers (`trainer runs
/// list`) and the heartbeat do not block a training run's writes. Best effort: switching
/// needs a moment with no other connection, so a busy database keeps its mode.
async fn use_wal(pool: &AnyPool) {
    let mode = sqlx::query_scalar::<_, String>("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap_or_default();
    if mode.eq_ignore_ascii_case("wal") || mode.eq_ignore_ascii_case("memory") {
        return;
    }
    if let Err(e) = sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
        .fetch_one(pool)
        .await
    {
        tracing::debug!("run registry: SQLite stays in {mode} journal mode: {e}");
    }
}

static DRIVERS: Once = Once::new();

/// Registers sqlx's SQLite and MySQL drivers with the `Any` driver (once per process).
pub fn install_drivers() {
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

const RUN_COLUMNS: &str = "r.id, e.name AS experiment, r.name, r.status, r.config, r.seed, \
     r.dataset_id, r.dataset_sha256, r.code_version, r.start_ms, r.end_ms, r.heartbeat_ms, \
     r.host, r.pid";

fn run_from_row(row: &AnyRow) -> std::result::Result<RunInfo, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let status = status
        .parse::<Status>()
        .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
    Ok(RunInfo {
        id: RunId(row.try_get("id")?),
        experiment: row.try_get("experiment")?,
        name: row.try_get("name")?,
        status,
        config: row.try_get("config")?,
        seed: row.try_get::<Option<i64>, _>("seed")?.map(|s| s as u64),
        dataset_id: row.try_get("dataset_id")?,
        dataset_sha256: row.try_get("dataset_sha256")?,
        code_version: row.try_get("code_version")?,
        start_ms: row.try_get("start_ms")?,
        end_ms: row.try_get("end_ms")?,
        heartbeat_ms: row.try_get("heartbeat_ms")?,
        host: row.try_get("host")?,
        pid: row.try_get("pid")?,
    })
}

fn check_metric(run: &RunId, name: &str, step: Option<i64>, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(RegistryError::NonFinite {
            run: run.to_string(),
            name: name.to_string(),
            step,
            value,
        });
    }
    if name.is_empty() {
        return Err(RegistryError::Invalid(format!(
            "run {run}: empty metric name"
        )));
    }
    Ok(())
}

impl RegistryError {
    /// A transient conflict between concurrent writers: MySQL's deadlock / serialization
    /// failure (SQLSTATE 40001) or lock wait timeout (1205), SQLite's busy / locked.
    pub fn is_transient(&self) -> bool {
        let RegistryError::Query { source, .. } = self else {
            return false;
        };
        let Some(db) = source.as_database_error() else {
            return false;
        };
        let code = db.code().unwrap_or_default();
        let message = db.message();
        code == "40001"
            || message.contains("Lock wait timeout")
            || matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517")
            || message.contains("database is locked")
    }

    /// The registry could not be reached: the connection was refused or lost, or the pool
    /// found no live connection in time. Worth waiting out, unlike a refused query.
    pub fn is_unreachable(&self) -> bool {
        let (RegistryError::Query { source, .. } | RegistryError::Connect { source, .. }) = self
        else {
            return false;
        };
        matches!(
            source,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
        ) || source.as_database_error().is_some_and(|d| {
            // MySQL: server has gone away, lost connection, communication link failure
            matches!(d.code().as_deref(), Some("2006" | "2013" | "08S01"))
        })
    }
}

/// Runs a write transaction again (up to 6 tries, with a growing pause) when it lost a
/// conflict with a concurrent writer; InnoDB expects applications to do so.
async fn retry<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt < 5 => {
                attempt += 1;
                let jitter = rand::random::<u64>() % 10;
                tokio::time::sleep(Duration::from_millis(10 * (1 << attempt) + jitter)).await;
                tracing::debug!("run registry: retrying after a write conflict: {e}");
            }
            other => return other,
        }
    }
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

impl Registry {
    /// Opens (creating if needed) the registry at `url`, applies pending migrations and reaps
    /// runs left `running` by dead processes ([`DEFAULT_STALE_AFTER`]).
    pub async fn open(url: &str) -> Result<Registry> {
        let registry = Self::open_without_reaping(url).await?;
        registry.reap_stale(DEFAULT_STALE_AFTER).await?;
        Ok(registry)
    }

    /// Opens and migrates, without reaping stale runs.
    pub async fn open_without_reaping(url: &str) -> Result<Registry> {
        let backend = backend_of(url)?;
        if backend == Backend::Sqlite {
            ensure_sqlite_dir(url)?;
        }
        install_drivers();
        let shown = redact_url(url);
        let connect_err = |source| RegistryError::Connect {
            url: shown.clone(),
            source,
        };
        // One direct connection first: a refused connection or bad credentials fail at once
        // with the server's own message (the pool would retry until its timeout and then
        // report only that it timed out).
        sqlx::AnyConnection::connect(url)
            .await
            .map_err(connect_err)?
            .close()
            .await
            .map_err(connect_err)?;
        // An in-memory SQLite database lives as long as its one connection: keep exactly one.
        let in_memory =
            backend == Backend::Sqlite && (url.contains(":memory:") || url.contains("mode=memory"));
        let mut options = AnyPoolOptions::new()
            .max_connections(if in_memory { 1 } else { 4 })
            .acquire_timeout(Duration::from_secs(15));
        if in_memory {
            options = options.idle_timeout(None).max_lifetime(None);
        }
        let pool = options
            .connect(url)
            .await
            .map_err(|source| RegistryError::Connect {
                url: shown.clone(),
                source,
            })?;
        if backend == Backend::Sqlite {
            use_wal(&pool).await;
        }
        migrate::run(&pool, &shown).await?;
        Ok(Registry {
            pool,
            connect_url: url.to_string(),
            url: shown,
            backend,
        })
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool (for later modules that add their own tables).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn err(
        &self,
        table: &'static str,
        op: &'static str,
    ) -> impl Fn(sqlx::Error) -> RegistryError + Copy + '_ {
        move |source| RegistryError::Query {
            url: self.url.clone(),
            table,
            op,
            source,
        }
    }

    /// The id of experiment `name`, created if it does not exist (safe under concurrency).
    pub async fn experiment(&self, name: &str) -> Result<String> {
        if name.trim().is_empty() {
            return Err(RegistryError::Invalid("experiment name is empty".into()));
        }
        let find = || async {
            sqlx::query_scalar::<_, String>("SELECT id FROM experiments WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.err("experiments", "select"))
        };
        if let Some(id) = find().await? {
            return Ok(id);
        }
        let id = new_id();
        let inserted =
            sqlx::query("INSERT INTO experiments (id, name, created_ms) VALUES (?, ?, ?)")
                .bind(&id)
                .bind(name)
                .bind(now_ms())
                .execute(&self.pool)
                .await;
        match inserted {
            Ok(_) => Ok(id),
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                // Another process created it between our SELECT and INSERT.
                find()
                    .await?
                    .ok_or_else(|| self.err("experiments", "insert")(e))
            }
            Err(e) => Err(self.err("experiments", "insert")(e)),
        }
    }

    /// Starts a run (status `running`, heartbeat now, this host and pid).
    pub async fn start_run(&self, new: &NewRun) -> Result<RunId> {
        let experiment_id = self.experiment(&new.experiment).await?;
        let id = new_id();
        let now = now_ms();
        let code = new.code_version.clone().unwrap_or_else(code_version);
        sqlx::query(
            "INSERT INTO runs (id, experiment_id, name, status, config, seed, dataset_id, \
             dataset_sha256, code_version, start_ms, end_ms, heartbeat_ms, host, pid) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&experiment_id)
        .bind(&new.name)
        .bind(Status::Running.as_str())
        .bind(&new.config)
        .bind(new.seed.map(|s| s as i64))
        .bind(new.dataset_id.clone())
        .bind(new.dataset_sha256.clone())
        .bind(&code)
        .bind(now)
        .bind(now)
        .bind(host_name())
        .bind(std::process::id() as i64)
        .execute(&self.pool)
        .await
        .map_err(self.err("runs", "insert"))?;
        Ok(RunId(id))
    }

    /// Maps a foreign-key violation (the run does not exist) to [`RegistryError::RunNotFound`].
    fn write_err(
        &self,
        run: &RunId,
        table: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> RegistryError + '_ {
        let run = run.to_string();
        move |e| {
            if e.as_database_error()
                .is_some_and(|d| d.is_foreign_key_violation())
            {
                RegistryError::RunNotFound(run)
            } else {
                self.err(table, "insert")(e)
            }
        }
    }

    /// Records params. Params are immutable: the same value again is accepted, another
    /// value is [`RegistryError::ParamConflict`]. One transaction.
    pub async fn log_params<K: AsRef<str>, V: AsRef<str>>(
        &self,
        run: &RunId,
        params: &[(K, V)],
    ) -> Result<()> {
        if params.is_empty() {
            return Ok(());
        }
        let existing = self.params(run).await?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.err("params", "begin"))?;
        let mut seen = BTreeMap::new();
        for (k, v) in params {
            let (k, v) = (k.as_ref(), v.as_ref());
            let old = existing.get(k).or_else(|| seen.get(k));
            match old {
                Some(old) if old == v => continue,
                Some(old) => {
                    return Err(RegistryError::ParamConflict {
                        run: run.to_string(),
                        name: k.to_string(),
                        old: old.clone(),
                        new: v.to_string(),
                    })
                }
                None => {}
            }
            sqlx::query("INSERT INTO params (run_id, name, value) VALUES (?, ?, ?)")
                .bind(run.as_str())
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await
                .map_err(self.write_err(run, "params"))?;
            seen.insert(k.to_string(), v.to_string());
        }
        tx.commit().await.map_err(self.err("params", "commit"))?;
        Ok(())
    }

    /// Params of a run by name.
    pub async fn params(&self, run: &RunId) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT name, value FROM params WHERE run_id = ? ORDER BY name")
            .bind(run.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("params", "select"))?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(self.err("params", "decode"))
    }

    /// Appends per-step values `(name, step, value)`, all in one transaction with multi-row
    /// INSERTs. Non-finite values are refused before anything is written.
    pub async fn log_metrics<K: AsRef<str>>(
        &self,
        run: &RunId,
        metrics: &[(K, i64, f64)],
    ) -> Result<()> {
        let rows: Vec<(&str, i64, f64)> = metrics
            .iter()
            .map(|(k, s, v)| (k.as_ref(), *s, *v))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        for &(name, step, value) in &rows {
            check_metric(run, name, Some(step), value)?;
        }
        let ts = now_ms();
        retry(|| async {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(self.err("metrics", "begin"))?;
            for chunk in rows.chunks(INSERT_CHUNK) {
                let sql = format!(
                    "INSERT INTO metrics (run_id, name, step, value, ts_ms) VALUES {}",
                    vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for &(name, step, value) in chunk {
                    q = q
                        .bind(run.as_str())
                        .bind(name)
                        .bind(step)
                        .bind(value)
                        .bind(ts);
                }
                q.execute(&mut *tx)
                    .await
                    .map_err(self.write_err(run, "metrics"))?;
            }
            tx.commit().await.map_err(self.err("metrics", "commit"))
        })
        .await
    }

    /// Records final (summary) values `(name, value)`; a name logged again replaces its
    /// value. One transaction: an UPDATE of each existing row by primary key, one multi-row
    /// INSERT of the new ones (no DELETE, so no gap locks on MySQL).
    pub async fn log_final_metrics<K: AsRef<str>>(
        &self,
        run: &RunId,
        metrics: &[(K, f64)],
    ) -> Result<()> {
        // The last value of a name given twice wins.
        let values: BTreeMap<&str, f64> = metrics.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        if values.is_empty() {
            return Ok(());
        }
        for (&name, &value) in &values {
            check_metric(run, name, None, value)?;
        }
        let ts = now_ms();
        retry(|| async {
            let existing = self
                .final_metrics(std::slice::from_ref(run))
                .await?
                .remove(run)
                .unwrap_or_default();
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(self.err("final_metrics", "begin"))?;
            let mut new_rows = Vec::new();
            for (&name, &value) in &values {
                if existing.contains_key(name) {
                    sqlx::query(
                        "UPDATE final_metrics SET value = ?, ts_ms = ? WHERE run_id = ? AND name = ?",
                    )
                    .bind(value)
                    .bind(ts)
                    .bind(run.as_str())
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.err("final_metrics", "update"))?;
                } else {
                    new_rows.push((name, value));
                }
            }
            for chunk in new_rows.chunks(INSERT_CHUNK) {
                let sql = format!(
                    "INSERT INTO final_metrics (run_id, name, value, ts_ms) VALUES {}",
                    vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for &(name, value) in chunk {
                    q = q.bind(run.as_str()).bind(name).bind(value).bind(ts);
                }
                q.execute(&mut *tx)
                    .await
                    .map_err(self.write_err(run, "final_metrics"))?;
            }
            tx.commit().await.map_err(self.err("final_metrics", "commit"))
        })
        .await
    }

    /// Records an artifact (a file in the object store); the same name again replaces it.
    pub async fn log_artifact(&self, run: &RunId, artifact: &Artifact) -> Result<()> {
        let bytes = i64::try_from(artifact.bytes).map_err(|_| {
            RegistryError::Invalid(format!("artifact {} is too large", artifact.name))
        })?;
        retry(|| async {
            let exists = sqlx::query_scalar::<_, String>(
                "SELECT name FROM artifacts WHERE run_id = ? AND name = ?",
            )
            .bind(run.as_str())
            .bind(&artifact.name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("artifacts", "select"))?
            .is_some();
            let sql = if exists {
                "UPDATE artifacts SET uri = ?, sha256 = ?, bytes = ?, created_ms = ? \
                 WHERE run_id = ? AND name = ?"
            } else {
                "INSERT INTO artifacts (uri, sha256, bytes, created_ms, run_id, name) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            };
            sqlx::query(sql)
                .bind(&artifact.uri)
                .bind(&artifact.sha256)
                .bind(bytes)
                .bind(now_ms())
                .bind(run.as_str())
                .bind(&artifact.name)
                .execute(&self.pool)
                .await
                .map_err(self.write_err(run, "artifacts"))?;
            Ok(())
        })
        .await
    }

    /// Current status of a run.
    pub async fn status(&self, run: &RunId) -> Result<Status> {
        let s = sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = ?")
            .bind(run.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("runs", "select"))?
            .ok_or_else(|| RegistryError::RunNotFound(run.to_string()))?;
        s.parse()
    }

    /// Says the run's process is alive. A run that is no longer `running` (reaped as killed,
    /// say) is an [`RegistryError::InvalidTransition`] error, so its owner learns of it.
    pub async fn heartbeat(&self, run: &RunId) -> Result<()> {
        let done = sqlx::query("UPDATE runs SET heartbeat_ms = ? WHERE id = ? AND status = ?")
            .bind(now_ms())
            .bind(run.as_str())
            .bind(Status::Running.as_str())
            .execute(&self.pool)
            .await
            .map_err(self.err("runs", "update"))?;
        if done.rows_affected() == 0 {
            let from = self.status(run).await?;
            // MySQL counts only changed rows: same millisecond twice is not an error.
            if from != Status::Running {
                return Err(RegistryError::InvalidTransition {
                    run: run.to_string(),
                    from,
                    to: Status::Running,
                });
            }
        }
        Ok(())
    }

    /// Ends a run: `running` -> `status` (finished, failed or killed), atomically and once.
    pub async fn finish_run(&self, run: &RunId, status: Status) -> Result<()> {
        if status == Status::Running {
            return Err(RegistryError::Invalid(format!(
                "run {run}: finish_run needs finished, failed or killed"
            )));
        }
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE runs SET status = ?, end_ms = ?, heartbeat_ms = ? WHERE id = ? AND status = ?",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(now)
        .bind(run.as_str())
        .bind(Status::Running.as_str())
        .execute(&self.pool)
        .await
        .map_err(self.err("runs", "update"))?;
        if done.rows_affected() == 0 {
            let from = self.status(run).await?;
            return Err(RegistryError::InvalidTransition {
                run: run.to_string(),
                from,
                to: status,
            });
        }
        Ok(())
    }

    /// Takes a `killed` or `failed` run back to `running` in this process, for `--resume`:
    /// the run's record continues instead of a second run being started. A `finished` run
    /// is never reopened.
    pub async fn reopen_run(&self, run: &RunId) -> Result<()> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE runs SET status = ?, end_ms = NULL, heartbeat_ms = ?, host = ?, pid = ? \
             WHERE id = ? AND status IN (?, ?)",
        )
        .bind(Status::Running.as_str())
        .bind(now)
        .bind(host_name())
        .bind(i64::from(std::process::id()))
        .bind(run.as_str())
        .bind(Status::Killed.as_str())
        .bind(Status::Failed.as_str())
        .execute(&self.pool)
        .await
        .map_err(self.err("runs", "update"))?;
        if done.rows_affected() == 0 {
            let from = self.status(run).await?;
            return Err(RegistryError::InvalidTransition {
                run: run.to_string(),
                from,
                to: Status::Running,
            });
        }
        Ok(())
    }

    /// Marks `killed` every `running` run whose heartbeat is older than `max_age`, or that was
    /// started on this host by a process that no longer exists. Returns the reaped ids.
    pub async fn reap_stale(&self, max_age: Duration) -> Result<Vec<RunId>> {
        let now = now_ms();
        let cutoff = now.saturating_sub(max_age.as_millis() as i64);
        let rows = sqlx::query("SELECT id, heartbeat_ms, host, pid FROM runs WHERE status = ?")
            .bind(Status::Running.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("runs", "select"))?;
        let host = host_name();
        let mut reaped = Vec::new();
        for row in &rows {
            let decode = || -> std::result::Result<(String, i64, String, i64), sqlx::Error> {
                Ok((
                    row.try_get("id")?,
                    row.try_get("heartbeat_ms")?,
                    row.try_get("host")?,
                    row.try_get("pid")?,
                ))
            };
            let (id, heartbeat, run_host, pid) = decode().map_err(self.err("runs", "decode"))?;
            let stale = heartbeat < cutoff;
            let dead = run_host == host && !pid_alive(pid);
            if !(stale || dead) {
                continue;
            }
            // The status guard makes this safe against the run finishing meanwhile.
            let done =
                sqlx::query("UPDATE runs SET status = ?, end_ms = ? WHERE id = ? AND status = ?")
                    .bind(Status::Killed.as_str())
                    .bind(now)
                    .bind(&id)
                    .bind(Status::Running.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(self.err("runs", "update"))?;
            if done.rows_affected() > 0 {
                tracing::warn!(
                    run = %id,
                    "run registry: marked run killed ({})",
                    if dead { "its process is gone" } else { "no heartbeat" }
                );
                reaped.push(RunId(id));
            }
        }
        Ok(reaped)
    }

    /// The full id of the run whose id starts with `prefix` (case-insensitive hex).
    pub async fn resolve_run(&self, prefix: &str) -> Result<RunId> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(RegistryError::RunNotFound(format!(
                "{prefix:?} (run ids are hex digits)"
            )));
        }
        let ids = sqlx::query_scalar::<_, String>(
            "SELECT id FROM runs WHERE id LIKE ? ORDER BY id LIMIT 6",
        )
        .bind(format!("{prefix}%"))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("runs", "select"))?;
        match ids.len() {
            0 => Err(RegistryError::RunNotFound(prefix)),
            1 => Ok(RunId(ids.into_iter().next().unwrap_or_default())),
            _ => Err(RegistryError::AmbiguousRun {
                prefix,
                candidates: ids,
            }),
        }
    }

    /// One run as stored.
    pub async fn run_info(&self, run: &RunId) -> Result<RunInfo> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN experiments e ON e.id = r.experiment_id \
             WHERE r.id = ?"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(run.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("runs", "select"))?
            .ok_or_else(|| RegistryError::RunNotFound(run.to_string()))?;
        run_from_row(&row).map_err(self.err("runs", "decode"))
    }

    /// A run with its params, final metrics and artifacts.
    pub async fn run(&self, run: &RunId) -> Result<RunDetail> {
        let info = self.run_info(run).await?;
        let params = self.params(run).await?;
        let metrics = self
            .final_metrics(std::slice::from_ref(run))
            .await?
            .remove(run)
            .unwrap_or_default();
        let metric_histories = sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name",
        )
        .bind(run.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("metrics", "select"))?;
        let rows = sqlx::query(
            "SELECT name, uri, sha256, bytes, created_ms FROM artifacts WHERE run_id = ? ORDER BY name",
        )
        .bind(run.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("artifacts", "select"))?;
        let artifacts = rows
            .iter()
            .map(|r| {
                Ok(Artifact {
                    name: r.try_get("name")?,
                    uri: r.try_get("uri")?,
                    sha256: r.try_get("sha256")?,
                    bytes: r.try_get::<i64, _>("bytes")? as u64,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(self.err("artifacts", "decode"))?;
        Ok(RunDetail {
            run: info,
            params,
            metrics,
            metric_histories,
            artifacts,
        })
    }

    /// Final metrics of several runs.
    async fn final_metrics(
        &self,
        runs: &[RunId],
    ) -> Result<BTreeMap<RunId, BTreeMap<String, f64>>> {
        let mut out: BTreeMap<RunId, BTreeMap<String, f64>> = BTreeMap::new();
        for chunk in runs.chunks(INSERT_CHUNK) {
            let sql = format!(
                "SELECT run_id, name, value FROM final_metrics WHERE run_id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(r.as_str());
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(self.err("final_metrics", "select"))?;
            for row in &rows {
                let decode = || -> std::result::Result<(String, String, f64), sqlx::Error> {
                    Ok((
                        row.try_get("run_id")?,
                        row.try_get("name")?,
                        row.try_get("value")?,
                    ))
                };
                let (run, name, value) = decode().map_err(self.err("final_metrics", "decode"))?;
                out.entry(RunId(run)).or_default().insert(name, value);
            }
        }
        Ok(out)
    }

    /// The per-step history of one metric, by step (then by time).
    pub async fn metric_history(&self, run: &RunId, name: &str) -> Result<Vec<MetricPoint>> {
        let rows = sqlx::query(
            "SELECT step, value, ts_ms FROM metrics WHERE run_id = ? AND name = ? \
             ORDER BY step, ts_ms",
        )
        .bind(run.as_str())
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("metrics", "select"))?;
        rows.iter()
            .map(|r| {
                Ok(MetricPoint {
                    step: r.try_get("step")?,
                    value: r.try_get("value")?,
                    ts_ms: r.try_get("ts_ms")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(self.err("metrics", "decode"))
    }

    /// Runs matching `filter`, each with its final metrics.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>> {
        let mut sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN experiments e ON e.id = r.experiment_id"
        );
        let mut binds: Vec<String> = Vec::new();
        if let Some(order) = &filter.order_by {
            sql.push_str(" LEFT JOIN final_metrics m ON m.run_id = r.id AND m.name = ?");
            binds.push(order.metric.clone());
        }
        let mut conds = Vec::new();
        if let Some(exp) = &filter.experiment {
            conds.push("e.name = ?");
            binds.push(exp.clone());
        }
        if let Some(status) = filter.status {
            conds.push("r.status = ?");
            binds.push(status.as_str().to_string());
        }
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        match &filter.order_by {
            Some(order) => sql.push_str(&format!(
                " ORDER BY (m.value IS NULL), m.value {}, r.start_ms DESC, r.id DESC",
                if order.higher_is_better {
                    "DESC"
                } else {
                    "ASC"
                }
            )),
            None => sql.push_str(" ORDER BY r.start_ms DESC, r.id DESC"),
        }
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("runs", "select"))?;
        let runs = rows
            .iter()
            .map(run_from_row)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(self.err("runs", "decode"))?;
        let ids: Vec<RunId> = runs.iter().map(|r| r.id.clone()).collect();
        let mut metrics = self.final_metrics(&ids).await?;
        Ok(runs
            .into_iter()
            .map(|run| RunSummary {
                metrics: metrics.remove(&run.id).unwrap_or_default(),
                run,
            })
            .collect())
    }

    /// The best finished run by a final metric, with plain SQL: `ORDER BY value DESC` (or
    /// ASC), ties broken by the earlier start, then the smaller id. `experiment` None: all.
    pub async fn best_run(
        &self,
        experiment: Option<&str>,
        metric: &str,
        higher_is_better: bool,
    ) -> Result<Option<RunSummary>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN experiments e ON e.id = r.experiment_id \
             JOIN final_metrics m ON m.run_id = r.id AND m.name = ? \
             WHERE r.status = ?{} ORDER BY m.value {}, r.start_ms ASC, r.id ASC LIMIT 1",
            if experiment.is_some() {
                " AND e.name = ?"
            } else {
                ""
            },
            if higher_is_better { "DESC" } else { "ASC" }
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(metric)
            .bind(Status::Finished.as_str());
        if let Some(exp) = experiment {
            q = q.bind(exp);
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("runs", "select"))?;
        let Some(row) = row else { return Ok(None) };
        let run = run_from_row(&row).map_err(self.err("runs", "decode"))?;
        let metrics = self
            .final_metrics(std::slice::from_ref(&run.id))
            .await?
            .remove(&run.id)
            .unwrap_or_default();
        Ok(Some(RunSummary { run, metrics }))
    }
}
