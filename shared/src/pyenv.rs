//! The Python the benchmarks compare against (`trainer bench`, `edge-agent bench`): named
//! by a flag, else by an environment variable, else the venv `scripts/pyenv.sh` of the
//! source tree creates once (under the cargo target folder) and prints.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why no Python could be found or made.
#[derive(Debug, thiserror::Error)]
pub enum PyenvError {
    #[error("cannot run {script} ({source}); pass --python or set {var}")]
    Spawn {
        script: String,
        var: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{script} is not there (a binary outside its source tree); pass --python or set {var}"
    )]
    NoScript { script: String, var: String },
    #[error("{script} failed: {stderr}; pass --python or set {var}")]
    Failed {
        script: String,
        var: String,
        stderr: String,
    },
    #[error("{script} printed no python path; pass --python or set {var}")]
    NoPath { script: String, var: String },
}

/// The workspace root this crate was built from (where `scripts/` lives).
pub fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file of the source tree, e.g. `scripts/py/bench_ort.py`.
pub fn source_file(relative: &str) -> PathBuf {
    source_root().join(relative)
}

/// The Python to compare against: `explicit`, else the environment variable `var` (when
/// not blank), else the venv that `scripts/pyenv.sh [requirements]` creates (once per
/// requirements hash) and prints. `requirements` is relative to the source root; `None`
/// is the test venv (NumPy, scikit-learn, onnxruntime, ...).
pub fn python_for(
    explicit: Option<&Path>,
    var: &str,
    requirements: Option<&str>,
) -> Result<PathBuf, PyenvError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var(var) {
        if !p.trim().is_empty() {
            return Ok(PathBuf::from(p.trim()));
        }
    }
    let script = source_file("scripts/pyenv.sh");
    let name = script.display().to_string();
    if !script.is_file() {
        return Err(PyenvError::NoScript {
            script: name,
            var: var.to_string(),
        });
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if let Some(r) = requirements {
        cmd.arg(source_file(r));
    }
    let out = cmd.output().map_err(|source| PyenvError::Spawn {
        script: name.clone(),
        var: var.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(PyenvError::Failed {
            script: name,
            var: var.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last().map(str::trim) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(PyenvError::NoPath {
            script: name,
            var: var.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_python_wins() {
        let p = python_for(
            Some(Path::new("/x/python")),
            "EDGECP_PYENV_TEST_UNSET",
            None,
        );
        assert_eq!(p.ok(), Some(PathBuf::from("/x/python")));
    }

    #[test]
    fn the_scripts_are_found_from_the_source_root() {
        assert!(source_file("scripts/pyenv.sh").is_file());
        assert!(source_file("scripts/py/bench_ort.py").is_file());
    }
}
