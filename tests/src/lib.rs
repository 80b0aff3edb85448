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

/// Credentials of the s3s-fs test server.
pub const S3_KEY: &str = "edgecp-test";
pub const S3_SECRET: &str = "edgecp-test-secret";
/// Credentials of the Garage test server (Garage wants `GK` + 24 hex digits and 64 hex digits).
pub const GARAGE_KEY: &str = "GK0123456789abcdef01234567";
pub const GARAGE_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Which S3 server a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Kind {
    /// s3s-fs: light, serves a folder (each subfolder a bucket); lenient where production
    /// servers are not (a missing bucket reads as NoSuchKey, a write creates the bucket).
    S3sFs,
    /// Garage: a production S3 server (single node, SQLite metadata); strict about buckets,
    /// keys and permissions.
    Garage,
}

/// A real S3 server process on loopback. scripts/test.sh installs and caches both
/// binaries and exports `EDGECP_S3S_FS` and `EDGECP_GARAGE`; without them,
/// [`S3Server::start_kind`] panics saying so.
pub struct S3Server {
    child: std::process::Child,
    pub kind: S3Kind,
    pub endpoint: String,
    /// s3s-fs: the served folder (objects are files under `<bucket>/<key>`); Garage: its
    /// configuration, metadata and data.
    pub root: tempfile::TempDir,
    pub key: String,
    pub secret: String,
    /// Garage: the binary and its configuration file, for `garage -c CONFIG ...`.
    garage: Option<(PathBuf, PathBuf)>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cached_binary(var: &str, default: &str, what: &str) -> PathBuf {
    let bin = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        home.join(".cache/edgecp").join(default)
    });
    assert!(
        bin.is_file(),
        "no {what} binary at {}: run scripts/test.sh (it installs it) or set {var}",
        bin.display()
    );
    bin
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{what} did not listen on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl S3Server {
    /// An s3s-fs server (the lenient one; objects visible as files under `root`).
    pub fn start() -> S3Server {
        S3Server::start_kind(S3Kind::S3sFs)
    }

    /// A Garage server with one node, a key and no bucket yet.
    pub fn garage() -> S3Server {
        S3Server::start_kind(S3Kind::Garage)
    }

    pub fn start_kind(kind: S3Kind) -> S3Server {
        match kind {
            S3Kind::S3sFs => S3Server::start_s3s_fs(),
            S3Kind::Garage => S3Server::start_garage(),
        }
    }

    fn start_s3s_fs() -> S3Server {
        let bin = cached_binary("EDGECP_S3S_FS", "s3s-fs-0.14.1/bin/s3s-fs", "s3s-fs");
        let root = tempfile::tempdir().expect("temporary folder");
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        wait_for_port(port, "s3s-fs", Path::new("/dev/null"));
        S3Server {
            child,
            kind: S3Kind::S3sFs,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            key: S3_KEY.into(),
            secret: S3_SECRET.into(),
            garage: None,
        }
    }

    fn start_garage() -> S3Server {
        let bin = cached_binary("EDGECP_GARAGE", "garage-2.5.0/bin/garage", "Garage");
        let root = tempfile::tempdir().expect("temporary folder");
        let (s3_port, rpc_port) = (free_port(), free_port());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let secret = format!(
            "{:032x}{:032x}",
            nanos,
            u128::from(std::process::id()) << 64 | nanos
        );
        let dir = root.path();
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"us-east-1\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n",
                meta = dir.join("meta").display(),
                data = dir.join("data").display(),
            ),
        )
        .expect("garage.toml");
        let log = dir.join("garage.log");
        let out = std::fs::File::create(&log).expect("garage log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(out.try_clone().expect("garage log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut server = S3Server {
            child,
            kind: S3Kind::Garage,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            root,
            key: GARAGE_KEY.into(),
            secret: GARAGE_SECRET.into(),
            garage: Some((bin, config)),
        };
        wait_for_port(rpc_port, "garage (RPC)", &log);
        // one node, one zone, a layout applied; then the test key
        let t0 = std::time::Instant::now();
        let node = loop {
            let status = server.garage_cli(&["status"]);
            if let Some(id) = status
                .lines()
                .find(|l| l.contains("NO ROLE ASSIGNED"))
                .and_then(|l| l.split_whitespace().next())
            {
                break id.to_string();
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "garage never reported its node: {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        server.garage_cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        server.garage_cli(&["layout", "apply", "--version", "1"]);
        server.garage_cli(&[
            "key",
            "import",
            "--yes",
            "-n",
            "test",
            GARAGE_KEY,
            GARAGE_SECRET,
        ]);
        wait_for_port(s3_port, "garage (S3)", &log);
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "garage exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        server
    }

    /// `garage -c CONFIG ARGS...`; panics with its output when it fails.
    fn garage_cli(&self, args: &[&str]) -> String {
        let (bin, config) = self.garage.as_ref().expect("a Garage server");
        let o = Command::new(bin)
            .arg("-c")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap_or_else(|e| panic!("running garage {args:?}: {e}"));
        assert!(
            o.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Creates a bucket the test key may read and write.
    pub fn bucket(&self, name: &str) {
        match self.kind {
            S3Kind::S3sFs => {
                std::fs::create_dir_all(self.root.path().join(name)).expect("bucket folder")
            }
            S3Kind::Garage => {
                self.garage_cli(&["bucket", "create", name]);
                self.garage_cli(&[
                    "bucket", "allow", "--read", "--write", "--owner", name, "--key", "test",
                ]);
            }
        }
    }

    /// The environment our programs read S3 settings from (object_store's names).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The settings MLflow (boto3) reads for an s3:// artifact root on this server.
    pub fn mlflow_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MLFLOW_S3_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    /// A location on this server with `secret` as the secret key.
    pub fn open(&self, location: &str, secret: &str) -> shared::store::Location {
        shared::store::open_with_options(
            location,
            &[
                ("aws_endpoint", &self.endpoint),
                ("aws_allow_http", "true"),
                ("aws_access_key_id", &self.key),
                ("aws_secret_access_key", secret),
                ("aws_region", "us-east-1"),
            ],
        )
        .expect("an s3:// location")
    }
}

/// Azurite's development account and its key: public, the same in every Azurite install.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite, Microsoft's Azure Storage emulator (its blob service, from npm), on loopback.
/// scripts/test.sh installs and caches it and exports `EDGECP_AZURITE` (the
/// `azurite-blob` launcher); containers are created with Azure's own Python client
/// (scripts/py/azure_blob.py in the MLflow venv), since object_store cannot create them.
pub struct AzuriteServer {
    child: std::process::Child,
    /// The account's blob URL, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
    /// The server's own URL (`AZURITE_BLOB_STORAGE_URL`), without the account.
    pub url: String,
    _root: tempfile::TempDir,
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AzuriteServer {
    pub fn start() -> AzuriteServer {
        let bin = cached_binary(
            "EDGECP_AZURITE",
            "azurite-3.37.0/node_modules/.bin/azurite-blob",
            "Azurite",
        );
        let root = tempfile::tempdir().expect("temporary folder");
        let port = free_port();
        let log = root.path().join("azurite.log");
        let out = std::fs::File::create(&log).expect("azurite log");
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(root.path().join("data"))
            .arg("--skipApiVersionCheck")
            .stdout(out.try_clone().expect("azurite log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        wait_for_port(port, "azurite", &log);
        let url = format!("http://127.0.0.1:{port}");
        AzuriteServer {
            child,
            endpoint: format!("{url}/{AZURITE_ACCOUNT}"),
            url,
            _root: root,
        }
    }

    /// Runs scripts/py/azure_blob.py (Azure's Python client) against this server.
    pub fn client(&self, args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/py/azure_blob.py");
        let o = Command::new(mlflow_python())
            .arg(&script)
            .args([self.endpoint.as_str(), AZURITE_ACCOUNT, AZURITE_KEY])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            o.status.success(),
            "azure_blob.py {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn container(&self, name: &str) {
        self.client(&["create-container", name]);
    }

    /// The environment our programs read Azure settings from, as a user of Azurite
    /// writes it (object_store's emulator switch; the development account's key).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url.clone()),
        ]
    }

    /// The settings MLflow (azure-storage-blob) reads for a wasbs:// artifact root on
    /// this server: a connection string naming its blob endpoint.
    pub fn mlflow_env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!(
                "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
                self.endpoint
            ),
        )]
    }

    /// A location on this server with `key` as the account key, configured the way a
    /// custom Azure endpoint is (account, key, endpoint), not through the emulator switch.
    pub fn open(&self, location: &str, key: &str) -> shared::store::Location {
        shared::store::open_with_options(
            location,
            &[
                ("azure_storage_account_name", AZURITE_ACCOUNT),
                ("azure_storage_account_key", key),
                ("azure_storage_endpoint", &self.endpoint),
                ("azure_allow_http", "true"),
            ],
        )
        .expect("an Azure location")
    }
}

/// A cloud object-store server the end-to-end tests run our programs against: the same
/// commands, only the URLs and the environment differ.
pub trait CloudServer {
    /// The URL of `path` in bucket (container) `bucket`, e.g. `s3://bucket/path`.
    fn url(&self, bucket: &str, path: &str) -> String;
    /// Creates a bucket (container) the programs may read and write.
    fn make_bucket(&self, bucket: &str);
    /// The environment our programs read this server's settings and credentials from.
    fn program_env(&self) -> Vec<(&'static str, String)>;
    /// [`CloudServer::program_env`] with a wrong secret.
    fn program_env_wrong_secret(&self) -> Vec<(&'static str, String)>;
    /// Words of which the server's refusal of a wrong secret contains one.
    fn denied_words(&self) -> &'static [&'static str];
    /// A location on this server, opened in this process with the right secret.
    fn location(&self, url: &str) -> shared::store::Location;
}

impl CloudServer for S3Server {
    fn url(&self, bucket: &str, path: &str) -> String {
        format!("s3://{bucket}/{path}")
    }
    fn make_bucket(&self, bucket: &str) {
        self.bucket(bucket)
    }
    fn program_env(&self) -> Vec<(&'static str, String)> {
        self.env()
    }
    fn program_env_wrong_secret(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        for (k, v) in &mut env {
            if *k == "AWS_SECRET_ACCESS_KEY" {
                *v = "wrong".into();
            }
        }
        env
    }
    fn denied_words(&self) -> &'static [&'static str] {
        &["403", "Signature"]
    }
    fn location(&self, url: &str) -> shared::store::Location {
        self.open(url, &self.secret)
    }
}

impl CloudServer for AzuriteServer {
    fn url(&self, container: &str, path: &str) -> String {
        format!("az://{container}/{path}")
    }
    fn make_bucket(&self, container: &str) {
        self.container(container)
    }
    fn program_env(&self) -> Vec<(&'static str, String)> {
        self.env()
    }
    fn program_env_wrong_secret(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        // a well-formed key (base64) that is not the account's
        env.push((
            "AZURE_STORAGE_ACCOUNT_KEY",
            "d3Jvbmcta2V5LXdyb25nLWtleQ==".into(),
        ));
        env
    }
    fn denied_words(&self) -> &'static [&'static str] {
        &["403", "AuthorizationFailure", "AuthenticationFailed"]
    }
    fn location(&self, url: &str) -> shared::store::Location {
        self.open(url, AZURITE_KEY)
    }
}

/// Uploads a 50 MB file (well over [`shared::store::MULTIPART_THRESHOLD`], so in parts) as
/// object `name` of `loc`, then checks it by HEAD, by a ranged read, by listing `loc` (it is
/// the only object there) and whole. Returns the object's URL, its sha256 and its size.
pub fn multipart_round_trip(loc: &shared::store::Location, name: &str) -> (String, String, u64) {
    use object_store::ObjectStoreExt;
    use shared::store;
    let tmp = tempfile::tempdir().expect("temporary folder");
    let file = tmp.path().join("big.bin");
    let len: usize = 50 * 1024 * 1024 + 123;
    let bytes: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
    std::fs::write(&file, &bytes).expect("writing the 50 MB file");
    assert!(len as u64 > store::MULTIPART_THRESHOLD);

    let object = loc.child(name);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (sha, size) = rt
        .block_on(store::upload_file(loc, &object, &file))
        .unwrap();
    assert_eq!(size, len as u64);
    assert_eq!(sha, store::sha256_hex(&bytes));

    let (head, range, listed) = rt
        .block_on(async {
            let head = loc.store.head(&object).await?;
            let range = loc.store.get_range(&object, 20_000_000..20_001_000).await?;
            let listed = loc.store.list_with_delimiter(Some(&loc.prefix)).await?;
            Ok::<_, object_store::Error>((head, range, listed))
        })
        .unwrap();
    assert_eq!(head.size, len as u64);
    assert_eq!(range.as_ref(), &bytes[20_000_000..20_001_000]);
    assert_eq!(listed.objects.len(), 1, "{listed:?}");
    let back = rt
        .block_on(async { loc.store.get(&object).await?.bytes().await })
        .unwrap();
    assert_eq!(store::sha256_hex(&back), sha);
    (store::object_url(loc, &object).unwrap(), sha, size)
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

/// A free TCP port on loopback (nothing listens on it when this returns).
///
/// The port is drawn below the kernel's ephemeral range (ip_local_port_range): a port that
/// `bind(0)` hands out can be taken, before the test binds it again, as the local port of
/// any outgoing connection on the machine (CI saw a TcpGate lose its port that way).
pub fn free_port() -> u16 {
    bind_free_port().1
}

/// A listener on a free loopback port below the ephemeral range, and that port.
fn bind_free_port() -> (std::net::TcpListener, u16) {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // 12,000 ports under the range (never below 10,000, where well-known services sit)
    let (lo, hi) = (low.saturating_sub(12_000).max(10_000), low);
    for _ in 0..1000 {
        // RandomState is seeded per process; the counter makes each draw differ
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = if hi > lo {
            lo + (h.finish() % u64::from(hi - lo)) as u16
        } else {
            0
        };
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            let port = l.local_addr().map(|a| a.port()).unwrap_or(port);
            return (l, port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = l.local_addr().expect("a bound port").port();
    (l, port)
}

/// A fresh MariaDB/MySQL database on the local server (root, empty password, as on the
/// project machines), dropped when this is. `EDGECP_TEST_MYSQL_HOST` / `_PORT` move it.
pub struct MysqlDb {
    pub name: String,
    host: String,
    port: String,
}

impl MysqlDb {
    pub fn create(prefix: &str) -> MysqlDb {
        let host = std::env::var("EDGECP_TEST_MYSQL_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let port = std::env::var("EDGECP_TEST_MYSQL_PORT").unwrap_or_else(|_| "3306".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000);
        let db = MysqlDb { name, host, port };
        db.sql(&format!(
            "CREATE DATABASE {} CHARACTER SET utf8mb4",
            db.name
        ));
        db
    }

    /// Runs SQL through the `mysql` client; panics with its message on failure.
    pub fn sql(&self, sql: &str) -> String {
        let o = Command::new("mysql")
            .args([
                "-h", &self.host, "-P", &self.port, "-u", "root", "-N", "-B", "-e", sql,
            ])
            .output()
            .unwrap_or_else(|e| {
                panic!("the `mysql` client is needed to prepare MariaDB test databases: {e}")
            });
        assert!(
            o.status.success(),
            "MariaDB at {}:{} refused {sql:?}: {} (the tests need MariaDB with root and an empty password; scripts/test.sh starts it)",
            self.host,
            self.port,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// SQL inside this database.
    pub fn query(&self, sql: &str) -> String {
        self.sql(&format!("USE {}; {sql}", self.name))
    }

    /// URL for our programs.
    pub fn url(&self) -> String {
        format!("mysql://root@{}:{}/{}", self.host, self.port, self.name)
    }

    /// URL for our programs, through `gate` (a [`TcpGate`] in front of this server).
    pub fn url_through(&self, gate: &TcpGate) -> String {
        format!("mysql://root@127.0.0.1:{}/{}", gate.port, self.name)
    }

    /// The server's address, for a [`TcpGate`].
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// URL for MLflow (SQLAlchemy + PyMySQL).
    pub fn sqlalchemy_url(&self) -> String {
        format!(
            "mysql+pymysql://root@{}:{}/{}",
            self.host, self.port, self.name
        )
    }
}

impl Drop for MysqlDb {
    fn drop(&mut self) {
        let _ = Command::new("mysql")
            .args(["-h", &self.host, "-P", &self.port, "-u", "root"])
            .args(["-e", &format!("DROP DATABASE IF EXISTS {}", self.name)])
            .output();
    }
}

/// The Python of the MLflow venv (`EDGECP_MLFLOW_PYTHON`, set by scripts/test.sh).
pub fn mlflow_python() -> PathBuf {
    let p = std::env::var_os("EDGECP_MLFLOW_PYTHON").map(PathBuf::from);
    match p {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "EDGECP_MLFLOW_PYTHON is not set to a Python with mlflow {}: run scripts/test.sh (it creates the venv from scripts/requirements-mlflow.txt)",
            "3.17.2"
        ),
    }
}

/// A real MLflow tracking server (`mlflow server`, from the venv) with a MariaDB backend
/// store and an S3 artifact root on `s3`, stopped when dropped.
pub struct MlflowServer {
    child: std::process::Child,
    pub url: String,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        // `mlflow server` runs uvicorn as a child in the group started for it: kill the
        // whole group at once (a graceful stop keeps answering for a while), then wait
        // until nothing listens on the port any more.
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && t0.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl MlflowServer {
    /// Starts the server on `port` and waits (up to 3 minutes) until /health answers.
    /// `artifact_root` is an s3:// URL on `s3`.
    pub fn start(port: u16, db: &MysqlDb, s3: &S3Server, artifact_root: &str) -> MlflowServer {
        MlflowServer::start_with(port, db, &s3.mlflow_env(), artifact_root)
    }

    /// [`MlflowServer::start`] with the artifact store's settings for MLflow in `env` (see
    /// [`S3Server::mlflow_env`], [`AzuriteServer::mlflow_env`]).
    pub fn start_with(
        port: u16,
        db: &MysqlDb,
        env: &[(&str, String)],
        artifact_root: &str,
    ) -> MlflowServer {
        use std::os::unix::process::CommandExt;
        let py = mlflow_python();
        let mlflow = py.with_file_name("mlflow");
        let dir = tempfile::tempdir().expect("temporary folder");
        let log = dir.path().join("mlflow.log");
        let out = std::fs::File::create(&log).expect("mlflow log file");
        let err = out.try_clone().expect("mlflow log file");
        let mut cmd = Command::new(&mlflow);
        cmd.args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            .args(["--backend-store-uri", &db.sqlalchemy_url()])
            // New experiments store files straight in S3 (what our client prefers); the
            // artifact proxy is served too, for experiments created with an
            // `mlflow-artifacts:` location.
            .args(["--default-artifact-root", artifact_root])
            .args([
                "--serve-artifacts",
                "--artifacts-destination",
                &format!("{}/proxied", artifact_root.trim_end_matches('/')),
            ])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", mlflow.display()));
        let mut server = MlflowServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
            _dir: dir,
        };
        let t0 = std::time::Instant::now();
        loop {
            if server.healthy() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "mlflow server exited ({status}): {}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(180),
                "mlflow server did not answer /health within 3 minutes: {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let req = format!(
            "GET /health HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
    }

    /// Everything MLflow holds for one experiment, read with MLflow's own Python client
    /// (scripts/py/mlflow_runs.py): runs, params, tags, metric histories, artifacts.
    pub fn dump(&self, experiment: &str, s3: &S3Server) -> serde_json::Value {
        self.dump_with(experiment, &s3.mlflow_env())
    }

    /// [`MlflowServer::dump`] with the artifact store's settings for MLflow in `env`.
    pub fn dump_with(&self, experiment: &str, env: &[(&str, String)]) -> serde_json::Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/py/mlflow_runs.py");
        let o = Command::new(mlflow_python())
            .arg(&script)
            .args(["--tracking-uri", &self.url, "--experiment", experiment])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running scripts/py/mlflow_runs.py");
        assert!(
            o.status.success(),
            "mlflow_runs.py failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("mlflow_runs.py prints JSON")
    }
}

/// A TCP forwarder on loopback in front of a real server, which a test can cut (new
/// connections refused, open ones broken) and restore: the network fault of a registry
/// that restarts or drops off the network, without touching the server itself.
pub struct TcpGate {
    pub port: u16,
    target: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Every connection forwarded so far (client side), to break them on [`TcpGate::cut`].
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl TcpGate {
    pub fn start(target: &str) -> TcpGate {
        // the first listener is the one that found the port: no window for another to take it
        let (listener, port) = bind_free_port();
        let mut gate = TcpGate {
            port,
            target: target.to_string(),
            open: Default::default(),
            conns: Default::default(),
            listener: None,
        };
        gate.serve(listener);
        gate
    }

    /// Accepts and forwards connections again, on the same port.
    pub fn restore(&mut self) {
        // the port lies below the ephemeral range, so nothing should take it while cut;
        // a few retries cover a listener that the kernel has not quite released
        let t0 = std::time::Instant::now();
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if t0.elapsed() > std::time::Duration::from_secs(10) => {
                    panic!("binding the gate on port {} for 10 s: {e}", self.port)
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        use std::sync::atomic::Ordering;
        self.open.store(true, Ordering::SeqCst);
        let (open, conns, target) = (self.open.clone(), self.conns.clone(), self.target.clone());
        self.listener = Some(std::thread::spawn(move || {
            for client in listener.incoming() {
                if !open.load(Ordering::SeqCst) {
                    break; // the listener is dropped here: connections are refused
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                let (Ok(c2), Ok(c3), Ok(s2)) =
                    (client.try_clone(), client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                conns.lock().unwrap().push(c3);
                pipe(client, server);
                pipe(s2, c2);
            }
        }));
    }

    /// Refuses new connections and breaks the open ones.
    pub fn cut(&mut self) {
        use std::sync::atomic::Ordering;
        self.open.store(false, Ordering::SeqCst);
        // wake the accept loop so that it sees the flag and drops the listener
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.cut();
    }
}
