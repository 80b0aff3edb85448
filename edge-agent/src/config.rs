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
//! [limits]
//! max_body_bytes = 4194304
//! timeout_ms = 5000
//! concurrency = 64
//! [validity]
//! delta = 0.01
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::assurance::AlertRule;
use crate::runtime::Runtime;

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
}

/// Online validity settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValiditySection {
    pub delta: Option<f64>,
    pub ci_alpha: Option<f64>,
    pub max_pending: Option<usize>,
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
    pub limits: Limits,
    pub validity: ValiditySection,
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
            "bundle = \"b\"\nkey = \"k\"\nruntime = \"tflite\"\nepsilon = 0.1\nalert_rule = \"empty\"\n[limits]\nconcurrency = 4\n[validity]\ndelta = 0.05\n",
        )
        .unwrap();
        assert_eq!(c.runtime, Some(Runtime::Tflite));
        assert_eq!(c.alert_rule, Some(AlertRule::Empty));
        assert_eq!(c.limits.concurrency, Some(4));
        assert_eq!(c.validity.delta, Some(0.05));
        assert!(toml::from_str::<FileConfig>("bundel = \"b\"").is_err());
    }
}
