//! Locations on a real S3 server process on loopback: s3s-fs (installed and cached by
//! scripts/test.sh; `EDGECP_S3S_FS` names another binary). Round trip with a 50 MB
//! multipart upload, a ranged read, the object URL, a missing bucket and wrong credentials.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use shared::store;

const KEY: &str = "edgecp-test";
const SECRET: &str = "edgecp-test-secret";

/// An s3s-fs process serving a temporary folder (each subfolder a bucket).
struct S3Server {
    child: Child,
    endpoint: String,
    root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGECP_S3S_FS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cache/edgecp/s3s-fs-0.14.1/bin/s3s-fs");
    assert!(
        p.is_file(),
        "no S3 server binary at {}: run scripts/test.sh (it installs s3s-fs) or set EDGECP_S3S_FS",
        p.display()
    );
    p
}

impl S3Server {
    fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "s3s-fs did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    fn bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name)).unwrap();
    }

    fn open(&self, location: &str, secret: &str) -> store::Location {
        store::open_with_options(
            location,
            &[
                ("aws_endpoint", &self.endpoint),
                ("aws_allow_http", "true"),
                ("aws_access_key_id", KEY),
                ("aws_secret_access_key", secret),
                ("aws_region", "us-east-1"),
            ],
        )
        .unwrap()
    }
}

#[test]
fn a_50_mb_multipart_upload_round_trips_with_ranged_reads() {
    let s3 = S3Server::start();
    s3.bucket("artifacts");
    let loc = s3.open("s3://artifacts/runs/r1", SECRET);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.bin");
    let len: usize = 50 * 1024 * 1024 + 123;
    let bytes: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    assert!(len as u64 > store::MULTIPART_THRESHOLD);

    let object = loc.child("model.bin");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sha, size) = rt
        .block_on(store::upload_file(&loc, &object, &file))
        .unwrap();
    assert_eq!(size, len as u64);
    assert_eq!(sha, store::sha256_hex(&bytes));
    assert_eq!(
        store::object_url(&loc, &object).unwrap(),
        "s3://artifacts/runs/r1/model.bin"
    );
    // the server holds exactly the file, under the location's prefix
    let on_disk = s3.root.path().join("artifacts/runs/r1/model.bin");
    assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), len as u64);

    let (head, range) = rt
        .block_on(async {
            let head = loc.store.head(&object).await?;
            let range = loc.store.get_range(&object, 20_000_000..20_001_000).await?;
            Ok::<_, object_store::Error>((head, range))
        })
        .unwrap();
    assert_eq!(head.size, len as u64);
    assert_eq!(range.as_ref(), &bytes[20_000_000..20_001_000]);
    let back = rt
        .block_on(async { loc.store.get(&object).await?.bytes().await })
        .unwrap();
    assert_eq!(store::sha256_hex(&back), sha);
}

#[test]
fn a_missing_bucket_and_wrong_credentials_are_errors_that_say_so() {
    let s3 = S3Server::start();
    s3.bucket("present");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("small.txt");
    std::fs::write(&file, b"hello").unwrap();

    let missing = s3.open("s3://absent/x", SECRET);
    let e = rt
        .block_on(async { missing.store.get(&missing.child("f")).await.map(|_| ()) })
        .unwrap_err();
    eprintln!("missing bucket: {e}");
    let e = e.to_string();
    assert!(
        e.contains("NoSuchBucket") || e.contains("404") || e.contains("not found"),
        "{e}"
    );

    let wrong = s3.open("s3://present/x", "not-the-secret");
    let e = rt
        .block_on(store::upload_file(&wrong, &wrong.child("f"), &file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3://present/x/f"), "{e}");
    assert!(
        e.contains("SignatureDoesNotMatch") || e.contains("403") || e.contains("Forbidden"),
        "{e}"
    );
    assert!(!s3.root.path().join("present/x/f").exists());

    // a URL without a bucket is refused before any request
    let e = store::open("s3:///nobucket").unwrap_err().to_string();
    assert!(e.contains("no bucket"), "{e}");
}
