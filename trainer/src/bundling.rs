//! Exports, checks, signs and bundles a finished run through the `exporter` program, for
//! `trainer demo` and for every trial a `trainer worker` finishes.
//!
//! The exporter's library depends on this crate (it rebuilds a run's network from
//! [`crate::training::model`]), so this crate cannot call it in-process without a
//! dependency cycle: it runs the `exporter` binary, which is built and shipped beside
//! `trainer` (same cargo target folder, same container image).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A bundle the exporter wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bundled {
    /// The local bundle folder.
    pub dir: PathBuf,
    pub model_id: String,
    /// Where it was uploaded (the object-store URL), when the exporter says.
    pub uri: Option<String>,
}

/// The `exporter` binary: `EDGECP_EXPORTER`, else beside this executable (same cargo
/// target folder), else on PATH.
pub fn exporter_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("EDGECP_EXPORTER") {
        return Ok(PathBuf::from(p));
    }
    let name = format!("exporter{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(&name)));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join(&name))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "runs are bundled with the `exporter` binary, which is not beside {} nor on PATH: \
         build it (`cargo build --release -p exporter`, or `cargo build --release` for the whole \
         workspace) or set EDGECP_EXPORTER to its path",
        std::env::current_exe().map_or("trainer".into(), |p| p.display().to_string())
    )
}

/// `exporter --registry REGISTRY bundle --run RUN --key KEY --out OUT --store STORE --json`:
/// `run` is a run id (its artifacts are found through the registry) or a run folder.
pub fn bundle_run(
    registry: &str,
    run: &str,
    key: &Path,
    out: &Path,
    store: &str,
    quiet: bool,
) -> Result<Bundled> {
    let exporter = exporter_binary()?;
    let mut cmd = std::process::Command::new(&exporter);
    cmd.arg("--registry")
        .arg(registry)
        .arg("bundle")
        .arg("--run")
        .arg(run)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .arg("--store")
        .arg(store)
        .arg("--json");
    if quiet {
        cmd.env("RUST_LOG", "warn");
    }
    let output = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", exporter.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} bundle --run {run} failed ({})",
            exporter.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("exporter bundle printed no JSON: {stdout}"))?;
    let dir = v["bundle"]
        .as_str()
        .context("exporter bundle's JSON has no bundle path")?;
    Ok(Bundled {
        dir: PathBuf::from(dir),
        model_id: v["model_id"].as_str().unwrap_or("").to_string(),
        uri: v["uri"].as_str().map(str::to_string),
    })
}
