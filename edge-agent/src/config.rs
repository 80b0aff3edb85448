//! The agent's configuration file (TOML). Every key is optional; a command-line flag or its
//! environment variable (`EDGE_AGENT_*`) wins over the file, the file over the defaults.
//!
//! ```toml
//! bundle = "/var/lib/edgecp/bundles/current"
//! key = "/etc/edgecp/fleet.pub"
//! runtime = "native"        # or "tract", "tflite", "ort" (feature)
//! epsilon = 0.05            # default: the bundle's icp.epsilon
//! listen = "127.0.0.1:8080"
//! alert_rule = "not_singleton"
//! feedback_token_file = "/etc/edgecp/feedback.token"   # /v1/feedback needs it as a bearer token
//! admin_token_file = "/etc/edgecp/admin.token"         # /v1/validity/reset needs it
//! [limits]
//! max_body_bytes = 4194304
//! timeout_ms = 5000
//! concurrency = 64
//! max_image_side = 8192
//! max_decoded_bytes = 67108864
//! request_budget_bytes = 67108864
//! decode_budget_bytes = 134217728
//! header_read_timeout_ms = 5000
//! body_read_timeout_ms = 5000
//! [validity]
//! delta = 0.01
//! adaptive = "aci"          # opt-in: labels from /v1/feedback move the sets' levels
//! aci_gamma = 0.005
//!
//! # edge-agent run: rollouts over MQTT (`bundle` is then the factory model of a first start)
//! device_id = "cam-0042"
//! fleet = "lab"
//! data_dir = "/var/lib/edgecp"
//! telemetry_interval_s = 30
//! [keys]
//! bundle = ["/etc/edgecp/bundle.pub"]
//! command = ["/etc/edgecp/command.pub"]
//! [mqtt]
//! url = "mqtts://broker.example:8883"
//! ca_file = "/etc/edgecp/ca.pem"
//! client_cert = "/etc/edgecp/device.pem"
//! client_key = "/etc/edgecp/device.key"
//! [store.options]
//! aws_endpoint = "https://s3.example"
//! [download]
//! max_bundle_bytes = 268435456
//! free_disk_reserve_bytes = 104857600
//! stall_timeout_ms = 30000
//! min_bytes_per_sec = 1024
//! rollout_timeout_ms = 3600000
//! [health]
//! window_ms = 30000
//! min_answers = 20
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::runtime::Runtime;
use crate::monitoring::assurance::AlertRule;

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Parse { path: PathBuf, what: String },
}

/// Request limits of the HTTP service.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_body_bytes: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub concurrency: Option<usize>,
    pub max_batch: Option<usize>,
    /// Widest or tallest image decoded, in pixels.
    pub max_image_side: Option<u32>,
    /// Most bytes decoding one image may allocate (from its header, before decoding).
    pub max_decoded_bytes: Option<u64>,
    /// Bytes all requests in flight may hold at once for bodies and parsed JSON (beyond: 503).
    pub request_budget_bytes: Option<usize>,
    /// Bytes all image decodes in flight may allocate at once (beyond: wait).
    pub decode_budget_bytes: Option<u64>,
    /// Time a connection has to send a request's headers (also the idle keep-alive time).
    pub header_read_timeout_ms: Option<u64>,
    /// Time a request has to send its whole body.
    pub body_read_timeout_ms: Option<u64>,
}

/// Online validity settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValiditySection {
    pub delta: Option<f64>,
    pub ci_alpha: Option<f64>,
    pub max_pending: Option<usize>,
    /// `off` (default) or `aci`: adaptive calibration from labels.
    pub adaptive: Option<crate::monitoring::adaptive::AdaptiveMode>,
    /// ACI step size.
    pub aci_gamma: Option<f64>,
    /// Where the ACI state survives restarts (`edge-agent run`: `<data_dir>/aci.json`).
    pub aci_state_file: Option<PathBuf>,
}

/// Trusted public keys by role (`edge-agent run`): bundle keys verify bundles, command
/// keys verify rollout commands; a key may not have both roles.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysSection {
    pub bundle: Vec<PathBuf>,
    pub command: Vec<PathBuf>,
}

/// The broker (`edge-agent run`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub url: Option<String>,
    /// CA certificate(s) the broker's certificate must chain to (PEM; mqtts).
    pub ca_file: Option<PathBuf>,
    /// This device's certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive_s: Option<u64>,
    pub backoff_min_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
}

/// Where bundles come from (`edge-agent run`): `object_store` options (such as
/// `aws_endpoint`, `aws_allow_http`, `aws_access_key_id`) beside the environment's
/// `AWS_*` / `AZURE_*` / `GOOGLE_*` variables.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub options: std::collections::BTreeMap<String, String>,
}

/// Download bounds (`edge-agent run`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadSection {
    /// Largest bundle accepted, whatever a command declares.
    pub max_bundle_bytes: Option<u64>,
    /// Free space that must remain on the data folder's disk after a download.
    pub free_disk_reserve_bytes: Option<u64>,
    /// A connection that brings less than `min_bytes_per_sec` over this window is stalled.
    pub stall_timeout_ms: Option<u64>,
    pub min_bytes_per_sec: Option<u64>,
    /// One download attempt's limit (it resumes after a failure until the rollout's).
    pub deadline_ms: Option<u64>,
    pub retries: Option<u32>,
    /// A rollout's download must be complete within this time of its acceptance.
    pub rollout_timeout_ms: Option<u64>,
}

/// The health gate after an activation (`edge-agent run`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub window_ms: Option<u64>,
    pub min_answers: Option<u64>,
    pub max_window_ms: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub p99_slack_ms: Option<f64>,
    pub set_margin: Option<f64>,
    pub min_answers_for_sets: Option<u64>,
}

/// The file's content.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub bundle: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub runtime: Option<Runtime>,
    pub ncm: Option<String>,
    pub epsilon: Option<f64>,
    pub listen: Option<String>,
    pub alert_rule: Option<AlertRule>,
    /// `none`, `memory` or (feature `gpio`) `/dev/gpiochipN:LINE`.
    pub pin: Option<String>,
    /// A file holding the bearer token `/v1/feedback` requires (none: any client holding a
    /// prediction id may label it).
    pub feedback_token_file: Option<PathBuf>,
    /// A file holding the bearer token `/v1/validity/reset` requires (none: reset disabled).
    pub admin_token_file: Option<PathBuf>,
    pub limits: Limits,
    pub validity: ValiditySection,
    /// `edge-agent run`: this device's id (its MQTT client id and topic level).
    pub device_id: Option<String>,
    pub fleet: Option<String>,
    /// `edge-agent run`: rollout state and models (`models/<id>/`).
    pub data_dir: Option<PathBuf>,
    /// Seconds between telemetry reports.
    pub telemetry_interval_s: Option<f64>,
    pub keys: KeysSection,
    pub mqtt: MqttSection,
    pub store: StoreSection,
    pub download: DownloadSection,
    pub health: HealthSection,
}

impl FileConfig {
    /// Reads `path`; `None` gives the empty configuration.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            what: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_unknown_keys_are_refused() {
        let c: FileConfig = toml::from_str(
            "bundle = \"b\"\nkey = \"k\"\nruntime = \"tflite\"\nepsilon = 0.1\nalert_rule = \"empty\"\nadmin_token_file = \"a.token\"\n[limits]\nconcurrency = 4\nmax_image_side = 4096\nmax_decoded_bytes = 1000\nrequest_budget_bytes = 2000\ndecode_budget_bytes = 3000\nheader_read_timeout_ms = 100\nbody_read_timeout_ms = 200\n[validity]\ndelta = 0.05\n",
        )
        .unwrap();
        assert_eq!(c.admin_token_file, Some(PathBuf::from("a.token")));
        assert_eq!(c.limits.max_image_side, Some(4096));
        assert_eq!(c.limits.max_decoded_bytes, Some(1000));
        assert_eq!(c.limits.request_budget_bytes, Some(2000));
        assert_eq!(c.limits.decode_budget_bytes, Some(3000));
        assert_eq!(c.limits.header_read_timeout_ms, Some(100));
        assert_eq!(c.limits.body_read_timeout_ms, Some(200));
        assert_eq!(c.runtime, Some(Runtime::Tflite));
        assert_eq!(c.alert_rule, Some(AlertRule::Empty));
        assert_eq!(c.limits.concurrency, Some(4));
        assert_eq!(c.validity.delta, Some(0.05));
        assert!(toml::from_str::<FileConfig>("bundel = \"b\"").is_err());
    }
}
