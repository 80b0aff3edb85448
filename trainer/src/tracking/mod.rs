//! Experiment tracking in MLflow, besides the run registry: the registry is the record the
//! programs rely on (best-model selection, bundles, sweeps); MLflow is where people look at
//! runs (live curves, plots, files) from any browser.
//!
//! - [`mlflow`]: our REST client (experiments, runs, batched logging, search, artifacts).
//! - [`sink`]: [`MlflowRun`], the background sender a training run logs through.

pub mod mlflow;
pub mod sink;

pub use mlflow::{MlflowClient, MlflowError, RunStatus};
pub use sink::{MlflowRun, TrackingReport};

/// Environment variable naming the MLflow server (`--mlflow`).
pub const URL_ENV: &str = "EDGECP_MLFLOW";

/// A TOML document as flat `section.key = value` params, so each setting is a column in
/// MLflow's run table (nothing when it does not parse).
pub fn flatten_toml(text: &str) -> Vec<(String, String)> {
    text.parse::<toml::Table>()
        .map(|t| crate::training::config::toml_leaves(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_names_every_leaf_by_its_path() {
        let flat = flatten_toml("seed = 3\n[model]\nembedding_dim = 64\nname = \"x\"\n[optim]\nlr = 0.001\nbetas = [0.9, 0.99]\n");
        let get = |k: &str| flat.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        assert_eq!(get("seed").as_deref(), Some("3"));
        assert_eq!(get("model.embedding_dim").as_deref(), Some("64"));
        assert_eq!(get("model.name").as_deref(), Some("x"));
        assert_eq!(get("optim.lr").as_deref(), Some("0.001"));
        assert_eq!(get("optim.betas").as_deref(), Some("[0.9, 0.99]"));
        assert_eq!(flat.len(), 5);
    }
}
