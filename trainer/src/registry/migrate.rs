//! Versioned schema migrations, embedded in the binary and applied when the registry opens.
//!
//! sqlx's own migrator runs them (its `Migrate` implementation exists for the `Any` driver and
//! dispatches to the SQLite or MySQL one): each migration is applied once and recorded in
//! `edgecp_migrations` with a checksum; concurrent openers serialise on the backend's lock
//! (MySQL `GET_LOCK`, SQLite's write lock); a changed migration text is refused. A database
//! that was migrated by a newer edgecp (a version this binary does not know) is refused
//! before anything is touched: see [`super::RegistryError::SchemaTooNew`].

use std::borrow::Cow;

use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::AnyPool;
use sqlx::SqlSafeStr;

use super::RegistryError;

/// Table that records which migrations were applied (sqlx's layout, our name).
pub const MIGRATIONS_TABLE: &str = "edgecp_migrations";

/// The migrations this binary knows, oldest first: (version, description, SQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "run registry: experiments, runs, params, metrics, artifacts",
        include_str!("../../migrations/0001_run_registry.sql"),
    ),
    (
        2,
        "model bundles",
        include_str!("../../migrations/0002_model_bundles.sql"),
    ),
    (
        3,
        "sweeps, trials, devices, rollouts",
        include_str!("../../migrations/0003_sweeps_trials_fleet.sql"),
    ),
];

/// Newest schema version this binary writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut m = Migrator::with_migrations(migrations);
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// Highest applied version, or None when the migrations table does not exist yet.
async fn applied_version(pool: &AnyPool) -> Option<i64> {
    let sql = format!("SELECT MAX(version) FROM {MIGRATIONS_TABLE} WHERE success = TRUE");
    sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
}

/// Applies every pending migration; refuses a database from a newer version.
pub async fn run(pool: &AnyPool, url: &str) -> Result<(), RegistryError> {
    let too_new = |found: i64| RegistryError::SchemaTooNew {
        url: url.to_string(),
        found,
        supported: SCHEMA_VERSION,
    };
    if let Some(found) = applied_version(pool).await {
        if found > SCHEMA_VERSION {
            return Err(too_new(found));
        }
    }
    match migrator().run(pool).await {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(v)) => {
            Err(too_new(applied_version(pool).await.unwrap_or(v)))
        }
        Err(MigrateError::Dirty(v)) => Err(RegistryError::Invalid(format!(
            "the run registry at {url}: migration {v} was applied only in part (MySQL cannot roll \
             back DDL); repair the schema by hand, then delete version {v} from {MIGRATIONS_TABLE}"
        ))),
        Err(source) => Err(RegistryError::Migrate {
            url: url.to_string(),
            source,
        }),
    }
}
