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

/// Credentials of the test S3 server.
pub const S3_KEY: &str = "edgecp-test";
pub const S3_SECRET: &str = "edgecp-test-secret";

/// A real S3 server process on loopback: s3s-fs serving a temporary folder (each
/// subfolder a bucket). scripts/test.sh installs and caches the binary and exports
/// `EDGECP_S3S_FS`; without either, [`S3Server::start`] panics saying so.
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = std::env::var_os("EDGECP_S3S_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                home.join(".cache/edgecp/s3s-fs-0.14.1/bin/s3s-fs")
            });
        assert!(
            bin.is_file(),
            "no S3 server binary at {}: run scripts/test.sh (it installs s3s-fs) or set EDGECP_S3S_FS",
            bin.display()
        );
        let root = tempfile::tempdir().expect("temporary folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "s3s-fs did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name)).expect("bucket folder");
    }

    /// The environment our programs read S3 settings from (object_store's names).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A location on this server with `secret` as the secret key.
    pub fn open(&self, location: &str, secret: &str) -> shared::store::Location {
        shared::store::open_with_options(
            location,
            &[
                ("aws_endpoint", &self.endpoint),
                ("aws_allow_http", "true"),
                ("aws_access_key_id", S3_KEY),
                ("aws_secret_access_key", secret),
                ("aws_region", "us-east-1"),
            ],
        )
        .expect("an s3:// location")
    }
}

/// Runs a workspace binary with `args` and extra environment variables in folder `cwd`
/// (a temporary one: relative defaults such as `runs/` must not land in the checkout).
pub fn run_env(name: &str, args: &[&str], env: &[(&str, String)], cwd: &Path) -> Output {
    let mut c = Command::new(bin(name));
    c.args(args).env("RUST_LOG", "warn").current_dir(cwd);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}
