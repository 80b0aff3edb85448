//! Bundle downloads against a real S3 server (s3s-fs) behind a fault-injecting proxy: the
//! happy path and install, resuming after a cut, retries after 500s and resets, stalls,
//! the deadline, cancellation, and every refusal (tampered, truncated, oversized, too
//! little or a full disk), each checked for what was fetched and what was left behind.

mod common;
#[path = "common/port.rs"]
mod port;
#[path = "common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use edge_agent::rollout::download::{
    self, DownloadError, DownloadLimits, DownloadSpec, Downloaded, Progress,
};
use s3::{Mode, Proxy, S3sFs};
use shared::bundle::{self, keys, Manifest};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "bundles";

/// One signed bundle for every test of this file (building it takes seconds).
struct Bundle {
    _root: tempfile::TempDir,
    dir: PathBuf,
    key: ed25519_dalek::SigningKey,
    manifest: Manifest,
    manifest_sha256: String,
    total: u64,
}

fn bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        // under the target's scratch folder, since a static is never dropped: this run's
        // copy stays, those of runs over an hour old go
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(scratch).unwrap();
        for e in std::fs::read_dir(scratch).unwrap().flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
            if old
                && e.file_name()
                    .to_string_lossy()
                    .starts_with("download-bundle")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let root = tempfile::Builder::new()
            .prefix("download-bundle")
            .tempdir_in(scratch)
            .unwrap();
        let (dir, _, key) = common::built_bundle(root.path());
        let mbytes = std::fs::read(dir.join(bundle::MANIFEST_FILE)).unwrap();
        let manifest: Manifest = serde_json::from_slice(&mbytes).unwrap();
        let total = mbytes.len() as u64 + 64 + manifest.files.iter().map(|f| f.bytes).sum::<u64>();
        Bundle {
            _root: root,
            dir,
            key,
            manifest_sha256: bundle::sha256_hex(&mbytes),
            manifest,
            total,
        }
    })
}

struct Fx {
    s3: S3sFs,
    proxy: Proxy,
    work: tempfile::TempDir,
}

async fn fixture() -> Fx {
    let s3 = S3sFs::start();
    s3.bucket(BUCKET);
    let proxy = Proxy::start(s3.port).await;
    Fx {
        s3,
        proxy,
        work: tempfile::tempdir().unwrap(),
    }
}

impl Fx {
    /// Uploads the bundle under `prefix` after `tamper` has changed a copy of it.
    fn upload(&self, prefix: &str, tamper: impl FnOnce(&Path)) -> DownloadSpec {
        let copy = self.work.path().join(format!("src-{prefix}"));
        common::copy_dir(&bundle().dir, &copy);
        tamper(&copy);
        s3::upload_dir(&copy, &self.s3.bucket(BUCKET), prefix);
        DownloadSpec {
            location: format!("s3://{BUCKET}/{prefix}"),
            manifest_sha256: bundle().manifest_sha256.clone(),
            declared_bytes: bundle().total,
            store_options: s3::store_options(self.proxy.port),
        }
    }

    fn models(&self) -> PathBuf {
        self.work.path().join("models")
    }

    fn staging(&self, id: &str) -> PathBuf {
        download::staging_dir(&self.models(), id).unwrap()
    }

    /// Object keys requested that are files of the bundle (neither manifest nor signature).
    fn file_requests(&self) -> Vec<String> {
        self.proxy
            .requested()
            .into_iter()
            .filter(|k| !k.ends_with("/manifest.json") && !k.ends_with("/manifest.sig"))
            .collect()
    }
}

fn limits() -> DownloadLimits {
    DownloadLimits {
        max_bundle_bytes: 1 << 30,
        free_disk_reserve_bytes: 0,
        stall_timeout: Duration::from_secs(1),
        min_bytes_per_sec: 4096,
        deadline: Duration::from_secs(20),
        retries: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        chunk_bytes: 64 << 10,
    }
}

fn vk() -> ed25519_dalek::VerifyingKey {
    bundle().key.verifying_key()
}

/// A download with a progress log; `hook` runs at every progress report.
async fn fetch_with(
    spec: &DownloadSpec,
    limits: &DownloadLimits,
    staging: &Path,
    cancel: &CancellationToken,
    mut hook: impl FnMut(&Progress) + Send,
) -> (Result<Downloaded, DownloadError>, Vec<Progress>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let mut progress = move |p: Progress| {
        hook(&p);
        l.lock().unwrap().push(p);
    };
    let r = download::download(spec, limits, &[vk()], staging, &mut progress, cancel).await;
    let log = log.lock().unwrap().clone();
    (r, log)
}

async fn fetch(
    spec: &DownloadSpec,
    limits: &DownloadLimits,
    staging: &Path,
) -> (Result<Downloaded, DownloadError>, Vec<Progress>) {
    fetch_with(spec, limits, staging, &CancellationToken::new(), |_| {}).await
}

fn reason<T: std::fmt::Debug>(r: &Result<T, DownloadError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.reason(),
    }
}

/// Every file of folder `a` is byte-identical in `b`, and `b` has no other.
fn assert_same_files(a: &Path, b: &Path) {
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b));
    for n in names(a) {
        assert!(
            std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap(),
            "{n:?} differs"
        );
    }
}

fn largest_file() -> &'static bundle::FileEntry {
    bundle()
        .manifest
        .files
        .iter()
        .max_by_key(|f| f.bytes)
        .unwrap()
}

#[tokio::test]
async fn a_bundle_downloads_installs_byte_identical_and_installing_again_is_idempotent() {
    let fx = fixture().await;
    let spec = fx.upload("m1", |_| {});
    let lim = limits();
    let staging = fx.staging("r1");
    let other = keys::generate().unwrap().verifying_key();
    let mut log = vec![];
    let mut progress = |p: Progress| log.push(p);
    let t0 = Instant::now();
    // the signing key second: any configured bundle key will do
    let d = download::download(
        &spec,
        &lim,
        &[other, vk()],
        &staging,
        &mut progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let b = bundle();
    assert_eq!(d.total_bytes, b.total);
    assert_eq!(d.fetched_bytes, b.total, "every byte fetched exactly once");
    assert_eq!(d.resumed_bytes, 0);
    let last = log.last().unwrap();
    assert_eq!((last.bytes_done, last.total), (b.total, b.total));
    assert!(log.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    // manifest, signature, then one ranged GET per chunk of each file in order
    let req = fx.proxy.requested();
    assert!(req[0].ends_with("/m1/manifest.json") && req[1].ends_with("/m1/manifest.sig"));
    let chunks: u64 = b
        .manifest
        .files
        .iter()
        .map(|f| f.bytes.div_ceil(lim.chunk_bytes))
        .sum();
    assert_eq!(req.len() as u64, 2 + chunks, "{req:?}");
    assert!(fx
        .proxy
        .stats(|s| s.requests.iter().all(|r| r.starts_with("GET "))));
    assert!(
        !staging
            .join(format!("{}.part", b.manifest.files[0].name))
            .exists(),
        "no partial file left"
    );

    let inst = download::install(&staging, &spec, &[vk()], &fx.models()).unwrap();
    assert_eq!(inst.path, fx.models().join(&b.manifest.model_id));
    assert!(!inst.already_present);
    assert!(!staging.exists(), "staging moved away");
    assert_same_files(&b.dir, &inst.path);
    // and the installed folder is a bundle the agent verifies
    bundle::verify(&inst.path, &vk()).unwrap();

    // the same bundle again (a restart between rename and report): found, staging removed
    let staging2 = fx.staging("r2");
    fetch(&spec, &lim, &staging2).await.0.unwrap();
    let again = download::install(&staging2, &spec, &[vk()], &fx.models()).unwrap();
    assert!(again.already_present);
    assert!(!staging2.exists());
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_cut_download_resumes_where_it_stopped_fetching_at_most_1_2x_the_bundle() {
    let fx = fixture().await;
    let spec = fx.upload("cut", |_| {});
    let big = largest_file();
    let cut_at = big.bytes / 2;
    let mbytes = std::fs::metadata(bundle().dir.join("manifest.json"))
        .unwrap()
        .len();
    assert!(
        cut_at > mbytes + 2048,
        "the manifest must get through the cut"
    );
    // one request per file, no retries: the first cut ends the call
    let lim = DownloadLimits {
        chunk_bytes: 1 << 30,
        retries: 0,
        ..limits()
    };
    let staging = fx.staging("r");
    fx.proxy.set(Mode::CutAfter(cut_at));
    let (r, log) = fetch(&spec, &lim, &staging).await;
    assert_eq!(reason(&r), "store", "{r:?}");
    assert!(fx.proxy.stats(|s| s.cut) >= 1);
    let fetched1 = log.last().map(|p| p.fetched).unwrap_or(0);
    let parts: u64 = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(parts > 0, "the bytes before the cut are kept");

    fx.proxy.set(Mode::Pass);
    let (r, _) = fetch(&spec, &lim, &staging).await;
    let d = r.unwrap();
    assert!(d.resumed_bytes >= parts, "{} < {parts}", d.resumed_bytes);
    let both = fetched1 + d.fetched_bytes;
    assert!(
        both as f64 <= 1.2 * bundle().total as f64,
        "fetched {both} over two calls for a {} byte bundle",
        bundle().total
    );
    let inst = download::install(&staging, &spec, &[vk()], &fx.models()).unwrap();
    assert_same_files(&bundle().dir, &inst.path);
}

#[tokio::test]
async fn connections_cut_again_and_again_still_finish_since_each_brings_bytes() {
    let fx = fixture().await;
    let spec = fx.upload("cuts", |_| {});
    let lim = DownloadLimits {
        chunk_bytes: 1 << 30,
        retries: 1,
        ..limits()
    };
    fx.proxy.set(Mode::CutAfter(16 << 10));
    let (r, _) = fetch(&spec, &lim, &fx.staging("r")).await;
    let d = r.unwrap();
    let cuts = fx.proxy.stats(|s| s.cut);
    assert!(cuts >= 3, "{cuts} cuts");
    assert_eq!(d.fetched_bytes, bundle().total, "no byte fetched twice");
}

#[tokio::test]
async fn server_errors_and_resets_are_retried_and_too_many_in_a_row_fail() {
    let fx = fixture().await;
    let spec = fx.upload("e", |_| {});
    let lim = limits(); // 3 retries
    fx.proxy.set(Mode::Error500 { requests: 3 });
    let (r, _) = fetch(&spec, &lim, &fx.staging("a")).await;
    r.unwrap();
    assert_eq!(fx.proxy.stats(|s| s.errors_500), 3);

    fx.proxy.set(Mode::Reset { connections: 3 });
    let (r, _) = fetch(&spec, &lim, &fx.staging("b")).await;
    r.unwrap();
    assert_eq!(fx.proxy.stats(|s| s.resets), 3);

    // 1 + 2 retries, then the error; quickly (backoff of at most 100 ms)
    let lim = DownloadLimits {
        retries: 2,
        ..limits()
    };
    fx.proxy.set(Mode::Error500 { requests: 100 });
    let t0 = Instant::now();
    let (r, _) = fetch(&spec, &lim, &fx.staging("c")).await;
    assert_eq!(reason(&r), "store", "{r:?}");
    assert!(r.unwrap_err().to_string().contains("manifest.json"));
    assert_eq!(fx.proxy.stats(|s| s.errors_500), 3 + 3);
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_stalled_request_is_aborted_within_about_the_stall_window_and_resumed() {
    let fx = fixture().await;
    let spec = fx.upload("s", |_| {});
    let lim = limits(); // 1 s window, 4096 B/s
    let proxy_state = &fx.proxy;
    let mut armed = false;
    let t0 = Instant::now();
    let (r, _) = fetch_with(
        &spec,
        &lim,
        &fx.staging("r"),
        &CancellationToken::new(),
        |_| {
            // after the first chunk: the next request sends its head and a little, then nothing
            if !armed {
                armed = true;
                proxy_state.set(Mode::Stall {
                    after: 1000,
                    connections: 1,
                });
            }
        },
    )
    .await;
    let elapsed = t0.elapsed();
    let d = r.unwrap();
    assert_eq!(fx.proxy.stats(|s| s.stalled), 1);
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(3500), "{elapsed:?}");
    assert!(d.fetched_bytes <= bundle().total + 1000);

    // stalled every time: the error says so
    let lim = DownloadLimits {
        retries: 1,
        ..limits()
    };
    fx.proxy.set(Mode::Stall {
        after: 0,
        connections: 100,
    });
    let t0 = Instant::now();
    let (r, _) = fetch(&spec, &lim, &fx.staging("r2")).await;
    assert_eq!(reason(&r), "stalled", "{r:?}");
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_secs(2) && e < Duration::from_secs(4),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_deadline_ends_a_call_that_hangs() {
    let fx = fixture().await;
    let spec = fx.upload("d", |_| {});
    let lim = DownloadLimits {
        stall_timeout: Duration::from_secs(30),
        deadline: Duration::from_millis(1500),
        ..limits()
    };
    fx.proxy.set(Mode::Stall {
        after: 0,
        connections: 100,
    });
    let t0 = Instant::now();
    let (r, _) = fetch(&spec, &lim, &fx.staging("r")).await;
    let e = t0.elapsed();
    assert_eq!(reason(&r), "deadline", "{r:?}");
    assert!(
        e >= Duration::from_millis(1500) && e < Duration::from_secs(3),
        "{e:?}"
    );
}

#[tokio::test]
async fn cancelling_stops_the_download_and_a_later_call_finishes_it() {
    let fx = fixture().await;
    let spec = fx.upload("c", |_| {});
    let lim = DownloadLimits {
        chunk_bytes: 8 << 10,
        ..limits()
    };
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let staging = fx.staging("r");
    let (r, _) = fetch_with(&spec, &lim, &staging, &cancel, |_| c.cancel()).await;
    assert_eq!(reason(&r), "cancelled", "{r:?}");
    assert_eq!(
        fx.file_requests().len(),
        1,
        "nothing fetched after the cancel"
    );
    let d = fetch(&spec, &lim, &staging).await.0.unwrap();
    assert_eq!(
        d.resumed_bytes,
        bundle().manifest.files[0].bytes.min(8 << 10)
    );
}

#[tokio::test]
async fn an_object_shorter_than_the_manifest_says_is_truncated_and_nothing_is_installed() {
    let fx = fixture().await;
    let big = largest_file();
    let spec = fx.upload("t", |dir| {
        let p = dir.join(&big.name);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    });
    let staging = fx.staging("r");
    let (r, _) = fetch(&spec, &limits(), &staging).await;
    match &r {
        Err(DownloadError::Truncated {
            name,
            expected,
            found,
        }) => {
            assert_eq!(
                (name, *expected, *found),
                (&big.name, big.bytes, big.bytes - 10)
            );
        }
        other => panic!("{other:?}"),
    }
    // refused on the answer's head: one request for that file, not retried
    let n = fx
        .file_requests()
        .iter()
        .filter(|k| k.ends_with(&format!("/{}", big.name)))
        .count();
    assert_eq!(n, 1);
    assert!(!staging.join(&big.name).exists());
    assert!(download::install(&staging, &spec, &[vk()], &fx.models()).is_err());
    assert!(!fx.models().join(&bundle().manifest.model_id).exists());
}

#[tokio::test]
async fn one_flipped_byte_in_any_file_is_refused_naming_the_file() {
    let fx = fixture().await;
    let files = &bundle().manifest.files;
    assert!(files.len() >= 3);
    for (i, f) in files.iter().enumerate() {
        let prefix = format!("flip{i}");
        let spec = fx.upload(&prefix, |dir| {
            let p = dir.join(&f.name);
            let mut bytes = std::fs::read(&p).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x01;
            std::fs::write(&p, bytes).unwrap();
        });
        let staging = fx.staging(&prefix);
        let (r, _) = fetch(&spec, &limits(), &staging).await;
        match &r {
            Err(DownloadError::FileSha256Mismatch { name, .. }) => assert_eq!(name, &f.name),
            other => panic!("{}: {other:?}", f.name),
        }
        assert_eq!(r.as_ref().unwrap_err().reason(), "file_sha256_mismatch");
        assert!(!staging.join(&f.name).exists(), "{}", f.name);
        assert!(
            !staging.join(format!("{}.part", f.name)).exists(),
            "{}",
            f.name
        );
        assert!(download::install(&staging, &spec, &[vk()], &fx.models()).is_err());
    }
    assert!(!fx.models().join(&bundle().manifest.model_id).exists());
}

#[tokio::test]
async fn a_corrupt_partial_file_on_disk_is_dropped_and_the_next_call_fetches_it_again() {
    let fx = fixture().await;
    let spec = fx.upload("p", |_| {});
    let big = largest_file();
    let staging = fx.staging("r");
    std::fs::create_dir_all(&staging).unwrap();
    // a prefix of the file with one byte wrong, as a crash could leave it
    let mut prefix = std::fs::read(bundle().dir.join(&big.name)).unwrap();
    prefix.truncate(prefix.len() / 3);
    prefix[10] ^= 0xff;
    std::fs::write(staging.join(format!("{}.part", big.name)), &prefix).unwrap();
    // and a stray file a bundle would not verify with
    std::fs::write(staging.join("stray.bin"), b"x").unwrap();
    let (r, _) = fetch(&spec, &limits(), &staging).await;
    assert_eq!(reason(&r), "file_sha256_mismatch", "{r:?}");
    assert!(!staging.join(format!("{}.part", big.name)).exists());
    assert!(!staging.join("stray.bin").exists());
    let d = fetch(&spec, &limits(), &staging).await.0.unwrap();
    assert!(d.resumed_bytes < bundle().total);
    let inst = download::install(&staging, &spec, &[vk()], &fx.models()).unwrap();
    assert_same_files(&bundle().dir, &inst.path);
}

#[tokio::test]
async fn a_manifest_other_than_the_commands_is_refused_before_any_file_byte() {
    let fx = fixture().await;
    let mut spec = fx.upload("ms", |_| {});
    spec.manifest_sha256 = bundle::sha256_hex(b"another manifest");
    let staging = fx.staging("r");
    let (r, log) = fetch(&spec, &limits(), &staging).await;
    assert_eq!(reason(&r), "manifest_sha256_mismatch", "{r:?}");
    assert!(log.is_empty());
    let req = fx.proxy.requested();
    assert_eq!(req.len(), 1, "{req:?}");
    assert!(req[0].ends_with("/manifest.json"));
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

#[tokio::test]
async fn a_manifest_signed_by_another_key_is_refused_before_any_file_byte() {
    let fx = fixture().await;
    let spec = fx.upload("sig", |dir| {
        let other = keys::generate().unwrap();
        let m = std::fs::read(dir.join(bundle::MANIFEST_FILE)).unwrap();
        std::fs::write(dir.join(bundle::SIGNATURE_FILE), keys::sign(&other, &m)).unwrap();
    });
    let (r, _) = fetch(&spec, &limits(), &fx.staging("r")).await;
    assert_eq!(reason(&r), "bad_manifest_signature", "{r:?}");
    assert!(fx.file_requests().is_empty(), "{:?}", fx.proxy.requested());
    assert_eq!(fx.proxy.requested().len(), 2);
}

#[tokio::test]
async fn a_bundle_larger_than_declared_or_allowed_is_refused_before_any_file_byte() {
    let fx = fixture().await;
    let mut spec = fx.upload("big", |_| {});
    let total = bundle().total;
    spec.declared_bytes = total - 1;
    let (r, _) = fetch(&spec, &limits(), &fx.staging("a")).await;
    assert_eq!(reason(&r), "too_large", "{r:?}");
    assert!(r.unwrap_err().to_string().contains("declares"));

    spec.declared_bytes = total;
    let lim = DownloadLimits {
        max_bundle_bytes: total - 1,
        ..limits()
    };
    let (r, _) = fetch(&spec, &lim, &fx.staging("b")).await;
    assert_eq!(reason(&r), "too_large", "{r:?}");
    assert!(r.unwrap_err().to_string().contains("configured maximum"));
    assert!(fx.file_requests().is_empty());
}

#[tokio::test]
async fn too_little_free_disk_is_refused_before_any_file_byte() {
    let fx = fixture().await;
    let spec = fx.upload("disk", |_| {});
    let staging = fx.staging("r");
    std::fs::create_dir_all(&staging).unwrap();
    let free = edge_agent::rollout::disk::available_bytes(&staging).unwrap();
    let lim = DownloadLimits {
        free_disk_reserve_bytes: free + (1 << 30),
        ..limits()
    };
    let (r, _) = fetch(&spec, &lim, &staging).await;
    assert_eq!(reason(&r), "disk_insufficient", "{r:?}");
    assert!(fx.file_requests().is_empty());
}

/// A tmpfs mounted on a folder, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED the disk-full part: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_disk_that_fills_during_the_download_ends_it_with_disk_full() {
    let fx = fixture().await;
    let spec = fx.upload("full", |_| {});
    let small = fx.work.path().join("small");
    let Some(_fs) = Tmpfs::mount(&small, bundle().total + (1 << 20)) else {
        return;
    };
    let staging = small.join(".staging-r");
    let lim = DownloadLimits {
        chunk_bytes: 16 << 10,
        ..limits()
    };
    let filler = small.join("filler");
    let mut filled = false;
    let (r, _) = fetch_with(&spec, &lim, &staging, &CancellationToken::new(), |_| {
        // something else takes the rest of the disk after the first chunk
        if !filled {
            filled = true;
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            while f.write_all(&[0u8; 4096]).is_ok() {}
        }
    })
    .await;
    assert!(filled);
    assert_eq!(reason(&r), "disk_full", "{r:?}");
    // the partial file gives its space back; nothing is complete, nothing installed
    let left: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(download::install(&staging, &spec, &[vk()], &small).is_err());
    assert!(!small.join(&bundle().manifest.model_id).exists());
}
