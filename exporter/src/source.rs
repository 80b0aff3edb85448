//! Where a run's files come from: a run folder (or weights file) on disk, or a run id (or
//! unique prefix) in the registry whose artifacts are read through the object store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use shared::icp::{NcmKind, PValueMode};
use trainer::registry::{BlockingRegistry, RunId};
use trainer::training::Backbone;

use crate::net::backbone_from_bytes;

/// File names of a run folder (as the trainer writes them).
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const REFERENCE_FILE: &str = "reference.safetensors";
pub const REPORT_FILE: &str = "report.json";

/// The ICP settings a run was evaluated with (from its report).
#[derive(Clone, Debug, Deserialize)]
pub struct RunIcp {
    pub ncm: NcmKind,
    pub mondrian: bool,
    pub p_values: PValueMode,
}

/// A run's weights and what the bundle needs besides.
pub struct RunSource {
    pub run_id: String,
    /// Where the weights came from (a path or URL), for messages.
    pub weights_origin: String,
    pub net: Backbone,
    pub reference: Option<Vec<u8>>,
    pub icp: Option<RunIcp>,
    pub n_classes: Option<usize>,
    pub metrics: BTreeMap<String, f64>,
}

impl std::fmt::Debug for RunSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSource")
            .field("run_id", &self.run_id)
            .field("weights_origin", &self.weights_origin)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ReportView {
    run_id: Option<String>,
    evaluation: Option<EvaluationView>,
}

#[derive(Deserialize)]
struct EvaluationView {
    n_classes: Option<usize>,
    icp_settings: Option<RunIcp>,
    nc_accuracy: Option<f64>,
    knn_accuracy: Option<f64>,
    #[serde(default)]
    validity: Vec<ValidityView>,
}

/// One epsilon of the run's validation figures (older reports lack `empty` and
/// `mean_set_size`).
#[derive(Deserialize)]
struct ValidityView {
    epsilon: f64,
    error_rate: f64,
    empty: Option<f64>,
    mean_set_size: Option<f64>,
}

/// The manifest's key for a validation figure at `epsilon`: `validation_<what>_eps050`
/// for 0.05. The agent's health gate reads `validation_empty_eps*` and
/// `validation_mean_set_size_eps*`.
pub fn validation_key(what: &str, epsilon: f64) -> String {
    format!(
        "validation_{what}_eps{:03}",
        (epsilon * 1000.0).round() as u32
    )
}

fn apply_report(src: &mut RunSource, bytes: &[u8], origin: &str) -> Result<()> {
    let report: ReportView =
        serde_json::from_slice(bytes).with_context(|| format!("{origin}: not a run report"))?;
    if let Some(id) = report.run_id {
        src.run_id = id;
    }
    if let Some(e) = report.evaluation {
        src.n_classes = e.n_classes;
        src.icp = e.icp_settings;
        for (k, v) in [
            ("validation_nc_accuracy", e.nc_accuracy),
            ("validation_knn_accuracy", e.knn_accuracy),
        ] {
            if let Some(v) = v {
                src.metrics.entry(k.to_string()).or_insert(v);
            }
        }
        validation_metrics(&e.validity, &mut src.metrics);
    }
    Ok(())
}

/// The run's validation figures per epsilon as manifest metrics ([`validation_key`]).
fn validation_metrics(rows: &[ValidityView], metrics: &mut BTreeMap<String, f64>) {
    for r in rows {
        for (what, v) in [
            ("error_rate", Some(r.error_rate)),
            ("empty", r.empty),
            ("mean_set_size", r.mean_set_size),
        ] {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                metrics.insert(validation_key(what, r.epsilon), v);
            }
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Opens `run`: an existing folder (holding `model.safetensors`, and usually
/// `reference.safetensors` and `report.json`), an existing `.safetensors` file, or a run
/// id / unique id prefix in the registry at `registry_url`.
pub fn open_run(run: &str, registry_url: &str) -> Result<RunSource> {
    let path = Path::new(run);
    if path.is_dir() {
        let weights = path.join(WEIGHTS_FILE);
        if !weights.exists() {
            bail!(
                "run folder {} has no weights: {} is missing (was the run finished?)",
                path.display(),
                weights.display()
            );
        }
        return open_files(
            &weights,
            Some(&path.join(REFERENCE_FILE)),
            Some(&path.join(REPORT_FILE)),
            dir_name(path),
        );
    }
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        return open_files(
            path,
            Some(&dir.join(REFERENCE_FILE)),
            Some(&dir.join(REPORT_FILE)),
            dir_name(dir),
        );
    }
    open_registry_run(run, registry_url)
}

fn dir_name(p: &Path) -> String {
    std::fs::canonicalize(p)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| "local".into())
}

fn open_files(
    weights: &Path,
    reference: Option<&Path>,
    report: Option<&Path>,
    run_id: String,
) -> Result<RunSource> {
    let bytes = std::fs::read(weights)
        .with_context(|| format!("weights file {}: cannot read it", weights.display()))?;
    let net = backbone_from_bytes(&bytes, weights)?;
    let mut src = RunSource {
        run_id,
        weights_origin: weights.display().to_string(),
        net,
        reference: match reference {
            Some(p) => read_optional(p)?,
            None => None,
        },
        icp: None,
        n_classes: None,
        metrics: BTreeMap::new(),
    };
    if let Some(p) = report {
        if let Some(b) = read_optional(p)? {
            apply_report(&mut src, &b, &p.display().to_string())?;
        }
    }
    Ok(src)
}

fn open_registry_run(run: &str, registry_url: &str) -> Result<RunSource> {
    let reg = BlockingRegistry::open(registry_url)
        .with_context(|| format!("opening the run registry {registry_url}"))?;
    let registry = reg.registry();
    let id: RunId = reg.block_on(registry.resolve_run(run)).with_context(|| {
        format!("{run:?} is neither a folder, a weights file, nor a run in the registry")
    })?;
    let detail = reg
        .block_on(registry.run(&id))
        .with_context(|| format!("reading run {id}"))?;
    let artifact = |name: &str| detail.artifacts.iter().find(|a| a.name == name);
    let weights = artifact("weights").with_context(|| {
        format!(
            "run {id} has no weights artifact (status {}): nothing to export",
            detail.run.status.as_str()
        )
    })?;
    let fetch = |uri: &str| {
        reg.block_on(shared::store::read_url(uri))
            .with_context(|| format!("reading {uri}"))
    };
    let bytes = fetch(&weights.uri)?;
    let digest = shared::bundle::sha256_hex(&bytes);
    if digest != weights.sha256 {
        bail!(
            "weights {}: sha256 {digest} differs from the registry's {} (changed since the run?)",
            weights.uri,
            weights.sha256
        );
    }
    let net = backbone_from_bytes(&bytes, Path::new(&weights.uri))?;
    let mut src = RunSource {
        run_id: id.to_string(),
        weights_origin: weights.uri.clone(),
        net,
        reference: artifact("reference").map(|a| fetch(&a.uri)).transpose()?,
        icp: None,
        n_classes: None,
        metrics: detail.metrics.clone(),
    };
    if let Some(a) = artifact("report") {
        let b = fetch(&a.uri)?;
        apply_report(&mut src, &b, &a.uri)?;
    }
    Ok(src)
}

/// A local run folder's path, when `run` names one.
pub fn local_dir(run: &str) -> Option<PathBuf> {
    let p = Path::new(run);
    p.is_dir().then(|| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reports_validation_rows_become_the_manifest_keys_the_agent_reads() {
        let report: ReportView = serde_json::from_str(
            r#"{"evaluation": {"validity": [
                {"epsilon": 0.05, "error_rate": 0.04, "empty": 0.01, "mean_set_size": 1.02, "singleton": 0.9},
                {"epsilon": 0.1, "error_rate": 0.09}
            ]}}"#,
        )
        .unwrap();
        let mut m = BTreeMap::new();
        validation_metrics(&report.evaluation.unwrap().validity, &mut m);
        assert_eq!(m.get("validation_empty_eps050"), Some(&0.01));
        assert_eq!(m.get("validation_mean_set_size_eps050"), Some(&1.02));
        assert_eq!(m.get("validation_error_rate_eps100"), Some(&0.09));
        // an older report without the set figures gives none of them
        assert!(!m.contains_key("validation_empty_eps100"));
        assert_eq!(m.len(), 4);
    }
}
