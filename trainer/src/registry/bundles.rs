//! Model bundles in the registry (migration 0002): which signed bundle came from which run
//! and where it was uploaded.

use serde::{Deserialize, Serialize};

use super::{now_ms, retry, Registry, Result};

/// One recorded bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub model_id: String,
    pub run_id: String,
    pub format_version: i64,
    /// sha256 (hex) of the signed manifest bytes.
    pub manifest_sha256: String,
    /// URL of the bundle folder in the object store.
    pub uri: String,
    /// Hex of the ed25519 public key that signed it.
    pub public_key: String,
    /// Milliseconds since the Unix epoch; 0 on input: now.
    pub created_ms: i64,
}

impl Registry {
    /// Records a bundle; the same model id again replaces the record (a re-upload).
    pub async fn record_bundle(&self, b: &BundleRecord) -> Result<()> {
        retry(|| async {
            let exists =
                sqlx::query_scalar::<_, String>("SELECT model_id FROM bundles WHERE model_id = ?")
                    .bind(&b.model_id)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(self.err("bundles", "select"))?
                    .is_some();
            let sql = if exists {
                "UPDATE bundles SET run_id = ?, format_version = ?, manifest_sha256 = ?, uri = ?, \
                 public_key = ?, created_ms = ? WHERE model_id = ?"
            } else {
                "INSERT INTO bundles (run_id, format_version, manifest_sha256, uri, public_key, \
                 created_ms, model_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
            };
            let created = if b.created_ms == 0 {
                now_ms()
            } else {
                b.created_ms
            };
            sqlx::query(sql)
                .bind(&b.run_id)
                .bind(b.format_version)
                .bind(&b.manifest_sha256)
                .bind(&b.uri)
                .bind(&b.public_key)
                .bind(created)
                .bind(&b.model_id)
                .execute(self.pool())
                .await
                .map_err(self.err("bundles", "write"))?;
            Ok(())
        })
        .await
    }

    /// Bundles, newest first; only those of `run` when given.
    pub async fn bundles(&self, run: Option<&str>) -> Result<Vec<BundleRecord>> {
        type Row = (String, String, i64, String, String, String, i64);
        let cols = "model_id, run_id, format_version, manifest_sha256, uri, public_key, created_ms";
        let rows: Vec<Row> = match run {
            Some(r) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {cols} FROM bundles WHERE run_id = ? ORDER BY created_ms DESC, model_id"
            )))
                .bind(r)
                .fetch_all(self.pool())
                .await
            }
            None => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {cols} FROM bundles ORDER BY created_ms DESC, model_id"
                )))
                .fetch_all(self.pool())
                .await
            }
        }
        .map_err(self.err("bundles", "select"))?;
        Ok(rows
            .into_iter()
            .map(|r| BundleRecord {
                model_id: r.0,
                run_id: r.1,
                format_version: r.2,
                manifest_sha256: r.3,
                uri: r.4,
                public_key: r.5,
                created_ms: r.6,
            })
            .collect())
    }
}
