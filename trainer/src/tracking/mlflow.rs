//! A client of MLflow's REST API (2.0 paths, served unchanged by MLflow 3): experiments,
//! runs, batched params/metrics/tags, run search, metric history and artifacts.
//!
//! # Artifacts: straight to the artifact root, the proxy only when the server asks for it
//! A run's `artifact_uri` says where its files belong. When it is an object-store URL
//! (`s3://...`, `gs://...`, `wasbs://...`, `file://...`: a server started with
//! `--default-artifact-root s3://...`),
//! files are written there directly through `object_store` (multipart, with the same
//! credentials and endpoint the rest of the programs use), and the MLflow UI reads them back
//! through the server's boto3. Only for `mlflow-artifacts:/...` (a server that proxies
//! artifacts, `--serve-artifacts`) do files go through the server's artifact endpoint with a
//! single PUT. Why: weights and reference files reach tens of MB, and MLflow's proxy buffers
//! and streams every byte through one Python worker (known to struggle with large files);
//! writing to S3 directly keeps the tracking server out of the data path.
//!
//! # Limits
//! `runs/log-batch` takes at most 1,000 metrics, 100 params and 100 tags, 1,000 entities in
//! all per request; param values at most 6,000 characters. [`MlflowClient::log_batch`] splits
//! larger batches and refuses over-long params (the full configuration goes as a file).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

/// Per-request limits of `runs/log-batch`.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
pub const MAX_PARAMS_PER_BATCH: usize = 100;
pub const MAX_TAGS_PER_BATCH: usize = 100;
pub const MAX_ENTITIES_PER_BATCH: usize = 1000;
/// Longest param value MLflow stores.
pub const MAX_PARAM_CHARS: usize = 6000;

#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error(
        "MLflow tracking URL {url:?} is not usable: {reason} (expected http(s)://HOST[:PORT])"
    )]
    BadUrl { url: String, reason: String },
    #[error("MLflow server at {url} is unreachable ({endpoint}): {source}")]
    Unreachable {
        url: String,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("MLflow server at {url} answered {status} to {endpoint}: {code}: {message}")]
    Api {
        url: String,
        endpoint: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("MLflow server at {url} sent an unexpected answer to {endpoint}: {reason}")]
    BadResponse {
        url: String,
        endpoint: String,
        reason: String,
    },
    #[error("MLflow: {0}")]
    Invalid(String),
    #[error("MLflow artifact {name} to {uri}: {reason}")]
    Artifact {
        name: String,
        uri: String,
        reason: String,
    },
}

impl MlflowError {
    /// Worth retrying later: the server is down, overloaded or failing internally.
    pub fn is_transient(&self) -> bool {
        match self {
            MlflowError::Unreachable { .. } => true,
            MlflowError::Api { status, code, .. } => {
                *status >= 500 || *status == 429 || code == "TEMPORARILY_UNAVAILABLE"
            }
            MlflowError::Artifact { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, MlflowError>;

/// An experiment.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    #[serde(default)]
    pub artifact_location: String,
}

/// A run's info block.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    #[serde(default)]
    pub run_name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub artifact_uri: String,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub end_time: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// A metric value as MLflow returns it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub step: i64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RunData {
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// A run with its latest metrics, params and tags.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Run {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
}

impl Run {
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.data
            .metrics
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value)
    }
    pub fn param(&self, key: &str) -> Option<&str> {
        value_of(&self.data.params, key)
    }
    pub fn tag(&self, key: &str) -> Option<&str> {
        value_of(&self.data.tags, key)
    }
}

fn value_of<'a>(pairs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

/// One file or folder in a run's artifacts.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FileInfo {
    pub path: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub file_size: Option<i64>,
}

/// Final state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// A metric point to log.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub key: String,
    pub value: f64,
    pub timestamp_ms: i64,
    pub step: i64,
}

/// The REST client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MlflowClient {
    base: String,
    http: reqwest::Client,
}

impl MlflowClient {
    /// A client of the server at `url` (`http://host:5000`, any path prefix kept).
    pub fn new(url: &str) -> Result<MlflowClient> {
        let bad = |reason: &str| MlflowError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(bad(&format!(
                "scheme {:?} is not http or https",
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none() {
            return Err(bad("no host"));
        }
        shared::store::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // MLflow's uvicorn closes idle keep-alive connections after 5 s: reusing one it
            // has just closed fails the request (seen between training and evaluation).
            .pool_idle_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| bad(&format!("cannot build an HTTP client: {e}")))?;
        Ok(MlflowClient {
            base: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        if !query.is_empty() {
            let q: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query.iter())
                .finish();
            url.push('?');
            url.push_str(&q);
        }
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| MlflowError::Unreachable {
                url: self.base.clone(),
                endpoint: endpoint.to_string(),
                source,
            })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|source| MlflowError::Unreachable {
                url: self.base.clone(),
                endpoint: endpoint.to_string(),
                source,
            })?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let short: String = text.chars().take(300).collect();
            return Err(MlflowError::Api {
                url: self.base.clone(),
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                code: v["error_code"].as_str().unwrap_or("HTTP_ERROR").to_string(),
                message: v["message"].as_str().map(str::to_string).unwrap_or(short),
            });
        }
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text).map_err(|e| MlflowError::BadResponse {
            url: self.base.clone(),
            endpoint: endpoint.to_string(),
            reason: format!("not JSON ({e})"),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        v: serde_json::Value,
    ) -> Result<T> {
        serde_json::from_value(v).map_err(|e| MlflowError::BadResponse {
            url: self.base.clone(),
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })
    }

    /// The experiment with this name, if it exists.
    pub async fn experiment_by_name(&self, name: &str) -> Result<Option<Experiment>> {
        let ep = "experiments/get-by-name";
        match self
            .call(reqwest::Method::GET, ep, &[("experiment_name", name)], None)
            .await
        {
            Ok(v) => Ok(Some(self.decode(ep, v["experiment"].clone())?)),
            Err(MlflowError::Api { code, .. }) if code == "RESOURCE_DOES_NOT_EXIST" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The experiment with this name, created when missing (a concurrent creator wins and is
    /// read back).
    pub async fn get_or_create_experiment(&self, name: &str) -> Result<Experiment> {
        self.get_or_create_experiment_at(name, None).await
    }

    /// [`Self::get_or_create_experiment`], creating it with this artifact location (an
    /// object-store URL, or `mlflow-artifacts:/PATH` for the server's proxy) instead of the
    /// server's default.
    pub async fn get_or_create_experiment_at(
        &self,
        name: &str,
        artifact_location: Option<&str>,
    ) -> Result<Experiment> {
        if let Some(e) = self.experiment_by_name(name).await? {
            return Ok(e);
        }
        let ep = "experiments/create";
        let mut body = json!({ "name": name });
        if let Some(loc) = artifact_location {
            body["artifact_location"] = json!(loc);
        }
        match self.call(reqwest::Method::POST, ep, &[], Some(body)).await {
            Ok(_) => {}
            Err(MlflowError::Api { code, .. }) if code == "RESOURCE_ALREADY_EXISTS" => {}
            Err(e) => return Err(e),
        }
        self.experiment_by_name(name)
            .await?
            .ok_or_else(|| MlflowError::BadResponse {
                url: self.base.clone(),
                endpoint: ep.to_string(),
                reason: format!("experiment {name:?} was created but cannot be read back"),
            })
    }

    /// Creates a run.
    pub async fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_ms: i64,
        tags: &[(String, String)],
    ) -> Result<RunInfo> {
        let ep = "runs/create";
        let tags: Vec<_> = tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let v = self
            .call(
                reqwest::Method::POST,
                ep,
                &[],
                Some(json!({
                    "experiment_id": experiment_id,
                    "run_name": run_name,
                    "start_time": start_ms,
                    "tags": tags,
                })),
            )
            .await?;
        self.decode(ep, v["run"]["info"].clone())
    }

    /// Logs metrics, params and tags, split into requests within MLflow's limits.
    pub async fn log_batch(
        &self,
        run_id: &str,
        metrics: &[MetricPoint],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<()> {
        if let Some((k, v)) = params
            .iter()
            .find(|(_, v)| v.chars().count() > MAX_PARAM_CHARS)
        {
            return Err(MlflowError::Invalid(format!(
                "param {k:?} is {} characters long; MLflow keeps at most {MAX_PARAM_CHARS}",
                v.chars().count()
            )));
        }
        if let Some(m) = metrics.iter().find(|m| !m.value.is_finite()) {
            return Err(MlflowError::Invalid(format!(
                "metric {:?} at step {} is {}: only finite values are logged",
                m.key, m.step, m.value
            )));
        }
        for batch in batches(metrics, params, tags) {
            let body = json!({
                "run_id": run_id,
                "metrics": batch.0.iter().map(|m| json!({
                    "key": m.key, "value": m.value, "timestamp": m.timestamp_ms, "step": m.step
                })).collect::<Vec<_>>(),
                "params": batch.1.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                "tags": batch.2.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            });
            self.call(reqwest::Method::POST, "runs/log-batch", &[], Some(body))
                .await?;
        }
        Ok(())
    }

    /// Ends a run.
    pub async fn update_run(&self, run_id: &str, status: RunStatus, end_ms: i64) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            "runs/update",
            &[],
            Some(json!({ "run_id": run_id, "status": status.as_str(), "end_time": end_ms })),
        )
        .await
        .map(|_| ())
    }

    /// One run.
    pub async fn get_run(&self, run_id: &str) -> Result<Run> {
        let ep = "runs/get";
        let v = self
            .call(reqwest::Method::GET, ep, &[("run_id", run_id)], None)
            .await?;
        self.decode(ep, v["run"].clone())
    }

    /// Runs of the experiments matching `filter` (MLflow's search syntax, "" for all), in
    /// `order_by` order (e.g. `metrics.validation_silhouette DESC`); every page.
    pub async fn search_runs(
        &self,
        experiment_ids: &[String],
        filter: &str,
        order_by: &[String],
    ) -> Result<Vec<Run>> {
        let ep = "runs/search";
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({
                "experiment_ids": experiment_ids,
                "filter": filter,
                "order_by": order_by,
                "max_results": 1000,
            });
            if let Some(t) = &token {
                body["page_token"] = json!(t);
            }
            let v = self
                .call(reqwest::Method::POST, ep, &[], Some(body))
                .await?;
            let runs: Vec<Run> = self.decode(ep, v["runs"].clone()).or_else(|e| {
                if v["runs"].is_null() {
                    Ok(vec![])
                } else {
                    Err(e)
                }
            })?;
            out.extend(runs);
            match v["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Every logged value of one metric of a run.
    pub async fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>> {
        let ep = "metrics/get-history";
        let mut out: Vec<Metric> = vec![];
        let mut token = String::new();
        loop {
            let mut q = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ];
            if !token.is_empty() {
                q.push(("page_token", token.as_str()));
            }
            let v = self.call(reqwest::Method::GET, ep, &q, None).await?;
            if !v["metrics"].is_null() {
                out.extend(self.decode::<Vec<Metric>>(ep, v["metrics"].clone())?);
            }
            match v["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// The files under `path` ("" for the root) of a run's artifacts, as the server sees them.
    pub async fn list_artifacts(&self, run_id: &str, path: &str) -> Result<Vec<FileInfo>> {
        let ep = "artifacts/list";
        let mut q = vec![("run_id", run_id)];
        if !path.is_empty() {
            q.push(("path", path));
        }
        let v = self.call(reqwest::Method::GET, ep, &q, None).await?;
        if v["files"].is_null() {
            return Ok(vec![]);
        }
        self.decode(ep, v["files"].clone())
    }

    /// Stores a local file as `<artifact_uri>/<name>`: straight into the object store for
    /// object-store URIs, through the server's artifact proxy for `mlflow-artifacts:` ones.
    pub async fn upload_artifact(&self, artifact_uri: &str, name: &str, file: &Path) -> Result<()> {
        let fail = |reason: String| MlflowError::Artifact {
            name: name.to_string(),
            uri: artifact_uri.to_string(),
            reason,
        };
        if let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") {
            // mlflow-artifacts:/<path> or mlflow-artifacts://host/<path>: the path part
            let path = match rest.strip_prefix("//") {
                Some(hosted) => hosted.split_once('/').map(|(_, p)| p).unwrap_or(""),
                None => rest.trim_start_matches('/'),
            };
            let body = tokio::fs::read(file)
                .await
                .map_err(|e| fail(format!("reading {}: {e}", file.display())))?;
            let url = format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{}/{}",
                self.base,
                path.trim_end_matches('/'),
                name
            );
            let resp = self
                .http
                .put(&url)
                .timeout(Duration::from_secs(600))
                .body(body)
                .send()
                .await
                .map_err(|e| fail(format!("PUT {url}: {e}")))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                return Err(fail(format!(
                    "PUT {url}: {status}: {}",
                    text.chars().take(300).collect::<String>()
                )));
            }
            return Ok(());
        }
        // The endpoint MLflow's own clients use for its S3 artifact root, when set, wins
        // over AWS_ENDPOINT_URL (which may point at another store).
        let endpoint = std::env::var("MLFLOW_S3_ENDPOINT_URL")
            .ok()
            .filter(|e| !e.is_empty() && artifact_uri.starts_with("s3://"));
        let root = match &endpoint {
            Some(e) => shared::store::open_with_options(
                artifact_uri,
                &[
                    ("aws_endpoint", e.as_str()),
                    (
                        "aws_allow_http",
                        if e.starts_with("http://") {
                            "true"
                        } else {
                            "false"
                        },
                    ),
                ],
            ),
            None => shared::store::open(artifact_uri),
        }
        .map_err(|e| fail(e.to_string()))?;
        let object = root.child(name);
        shared::store::upload_file(&root, &object, file)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(())
    }
}

type Batch<'a> = (
    &'a [MetricPoint],
    &'a [(String, String)],
    &'a [(String, String)],
);

/// Splits a log-batch into requests: params and tags first (within their own limits), then
/// metrics filling each request up to the entity limit.
fn batches<'a>(
    metrics: &'a [MetricPoint],
    params: &'a [(String, String)],
    tags: &'a [(String, String)],
) -> Vec<Batch<'a>> {
    let mut out: Vec<Batch<'a>> = vec![];
    let (mut p, mut t, mut m) = (params, tags, metrics);
    while !p.is_empty() || !t.is_empty() || !m.is_empty() {
        let np = p.len().min(MAX_PARAMS_PER_BATCH);
        let nt = t.len().min(MAX_TAGS_PER_BATCH);
        let nm = m
            .len()
            .min(MAX_METRICS_PER_BATCH)
            .min(MAX_ENTITIES_PER_BATCH - np - nt);
        out.push((&m[..nm], &p[..np], &t[..nt]));
        p = &p[np..];
        t = &t[nt..];
        m = &m[nm..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(n: usize) -> Vec<MetricPoint> {
        (0..n)
            .map(|i| MetricPoint {
                key: format!("m{}", i % 7),
                value: i as f64,
                timestamp_ms: 0,
                step: i as i64,
            })
            .collect()
    }

    #[test]
    fn batches_stay_within_mlflows_limits_and_keep_everything_in_order() {
        let params: Vec<(String, String)> =
            (0..250).map(|i| (format!("p{i}"), "v".into())).collect();
        let tags: Vec<(String, String)> = (0..30).map(|i| (format!("t{i}"), "v".into())).collect();
        for (nm, np, nt) in [
            (0, 0, 0),
            (1, 0, 0),
            (2500, 250, 30),
            (999, 100, 1),
            (1000, 0, 0),
        ] {
            let m = points(nm);
            let b = batches(&m, &params[..np], &tags[..nt]);
            let mut seen_m = vec![];
            let (mut seen_p, mut seen_t) = (0, 0);
            for (bm, bp, bt) in &b {
                assert!(bm.len() <= MAX_METRICS_PER_BATCH);
                assert!(bp.len() <= MAX_PARAMS_PER_BATCH);
                assert!(bt.len() <= MAX_TAGS_PER_BATCH);
                assert!(bm.len() + bp.len() + bt.len() <= MAX_ENTITIES_PER_BATCH);
                assert!(!(bm.is_empty() && bp.is_empty() && bt.is_empty()));
                seen_m.extend(bm.iter().cloned());
                seen_p += bp.len();
                seen_t += bt.len();
            }
            assert_eq!(seen_m, m);
            assert_eq!((seen_p, seen_t), (np, nt));
        }
        // 2500 metrics + 250 params: the params need 3 requests, the metrics at least 3
        assert!(batches(&points(2500), &params, &[]).len() >= 3);
    }

    #[test]
    fn bad_urls_are_named() {
        for url in ["", "localhost:5000", "ftp://x", "http://"] {
            let e = MlflowClient::new(url).unwrap_err();
            assert!(e.to_string().contains("MLflow tracking URL"), "{e}");
        }
        assert!(MlflowClient::new("http://127.0.0.1:5000/").is_ok());
    }
}
