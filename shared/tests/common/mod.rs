//! Test support shared by the integration tests of `shared`: where the data and the
//! reference Python live. Missing pieces fail loudly: a skipped check proves nothing.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared data folder: `$EDGECP_DATA`, else `../shared/data` beside the workspace.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("EDGECP_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(
        dir.join("gtsrb").is_dir() && dir.join("gtsrb-official-subset").is_dir(),
        "GTSRB test data not found at {}: set the environment variable EDGECP_DATA to the \
         folder that holds gtsrb/ and gtsrb-official-subset/",
        dir.display()
    );
    dir
}

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EDGECP_PYTHON") {
        if !p.trim().is_empty() {
            return PathBuf::from(p.trim());
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pyenv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} to set up the Python venv ({e}); set EDGECP_PYTHON",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "{} failed ({}): {}\nset EDGECP_PYTHON to a python with numpy, scikit-learn and crepes 0.8.0",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or("").trim().to_string();
    assert!(
        !path.is_empty() && Path::new(&path).exists(),
        "scripts/pyenv.sh printed no python path: {stdout:?}"
    );
    PathBuf::from(path)
}

/// Runs `scripts/py/<script>` with the venv python on the exchange folder `dir`; panics
/// with its output when it fails.
pub fn run_reference_script(script: &str, dir: &Path) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/py")
        .join(script);
    let py = python();
    let out = Command::new(&py)
        .arg(&path)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python {} ({e}); set EDGECP_PYTHON to the venv python",
                py.display()
            )
        });
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
