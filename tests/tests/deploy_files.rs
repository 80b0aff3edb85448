//! The deployment files (compose.yaml, .env.example, deploy/k8s, deploy/sweeps) are
//! checked by scripts/py/check_deploy.py: Compose schema and `docker-compose config`,
//! Kubernetes schemas (strict), .env.example against compose.yaml, no committed secret,
//! and every `trainer ...` / `exporter ...` invocation against the real binaries' --help
//! (flags, subcommands, EDGECP_* variables). Then its self-test proves that it catches
//! broken copies. The Python side needs the venv and docker-compose that scripts/test.sh
//! installs and exports as EDGECP_DEPLOY_PYTHON.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use tests::bin;

fn check(extra: &[&str]) {
    let python = std::env::var_os("EDGECP_DEPLOY_PYTHON").unwrap_or_else(|| {
        panic!(
            "EDGECP_DEPLOY_PYTHON is not set: run scripts/test.sh (it creates the venv of \
             scripts/requirements-deploy.txt, installs docker-compose and exports the variable)"
        )
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/py/check_deploy.py");
    let mut args: Vec<OsString> = vec![
        script.into(),
        "--root".into(),
        root.into(),
        "--trainer".into(),
        bin("trainer").into(),
        "--exporter".into(),
        bin("exporter").into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let out = Command::new(&python)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", PathBuf::from(&python).display()));
    assert!(
        out.status.success(),
        "check_deploy.py {extra:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deploy_files_are_valid_for_the_programs() {
    check(&[]);
}

#[test]
fn deploy_checker_catches_broken_files() {
    check(&["--self-test"]);
}
