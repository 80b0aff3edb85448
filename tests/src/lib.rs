//! Helpers for end-to-end tests that drive the real binaries (`trainer`, `exporter`,
//! `edge-agent`) as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of a workspace binary, built by `cargo build --workspace --bins` (scripts/test.sh
/// does it first: `cargo test` alone builds a package's binary only for that package's own
/// integration tests, so it could be missing or stale here). Panics with instructions when
/// it is absent.
pub fn bin(name: &str) -> PathBuf {
    // This test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside <target>/<profile>/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a workspace binary with `args` and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// The last non-empty line of stdout parsed as JSON (the `--json` contract of our CLIs).
pub fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| {
            panic!(
                "no output; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

/// The shared data folder (`EDGECP_DATA`, default `../shared/data` beside the checkout);
/// panics naming the path and the variable when it is missing, so nothing passes silently.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("EDGECP_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(
        dir.join("gtsrb").is_dir(),
        "GTSRB data not found at {} (set EDGECP_DATA to the folder holding gtsrb/ and gtsrb-official-subset/)",
        dir.display()
    );
    dir
}
