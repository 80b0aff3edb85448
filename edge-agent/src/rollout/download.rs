//! A bundle's way onto the device: resumable, bounded and checked as early as possible.
//!
//! [`download`] fetches a bundle from its object-store location into a staging folder,
//! cheapest checks first, so that a wrong or oversized bundle costs a few kilobytes and
//! not a transfer: the manifest (bounded) must hash to the command's sha256 and carry a
//! signature by a bundle key, and must be well formed; the sizes it lists must fit the
//! command's declared size, the configured maximum and the free disk (with a reserve left)
//! before any file byte is fetched. Each file then arrives by ranged GETs into
//! `<name>.part`, hashed as it is written and synced now and then, so that a later call
//! resumes from what is on disk (re-hashing it) instead of starting over. A file is renamed
//! to its name only once its size and sha256 equal the manifest's.
//!
//! The downloader is the only retry layer: the store is opened with `object_store`'s own
//! retries off, every request runs under a stall watch (fewer than `min_bytes_per_sec` over
//! a `stall_timeout` window aborts it, so a request that hangs cannot hang the download),
//! transient failures back off exponentially with full jitter, and the whole call is
//! bounded by a deadline and a cancellation token.
//!
//! Nothing in staging is ever loaded: [`install`] verifies the complete folder
//! ([`shared::bundle::verify`]) and renames it into `models/<model_id>/`; [`prune`] removes
//! what is no longer needed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore};
use sha2::{Digest, Sha256};
use shared::bundle::{self, BundleError, FileEntry, Manifest, MANIFEST_FILE, SIGNATURE_FILE};
use shared::store::StoreError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::disk;

/// What a rollout command says about the bundle to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadSpec {
    /// The bundle folder: an object-store URL (`s3://bucket/models/<model_id>`) or a local
    /// folder, as [`shared::store::open`] reads it.
    pub location: String,
    /// Lowercase hex sha256 of the bundle's `manifest.json`.
    pub manifest_sha256: String,
    /// The bundle's size in bytes (manifest, signature and files), as the command declares.
    pub declared_bytes: u64,
    /// Object-store settings that override the environment's (`object_store` key names,
    /// e.g. `aws_endpoint`); empty when the environment configures the store.
    pub store_options: Vec<(String, String)>,
}

/// The bounds of one download call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadLimits {
    /// Largest bundle accepted, whatever the command declares.
    pub max_bundle_bytes: u64,
    /// Bytes that must remain free on the staging file system after the download.
    pub free_disk_reserve_bytes: u64,
    /// Length of the window over which progress is judged ...
    pub stall_timeout: Duration,
    /// ... and the throughput below which a request is stalled (and aborted). Even at 0, a
    /// window without a single byte is a stall.
    pub min_bytes_per_sec: u64,
    /// Bound on this call (retries across calls are the caller's).
    pub deadline: Duration,
    /// Transient failures in a row (a request that brings bytes resets the count) before
    /// giving up.
    pub retries: u32,
    /// Backoff before retry `n`: uniformly random in `[0, min(backoff_max, backoff_min *
    /// 2^(n-1))]` (exponential, full jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bytes asked for by one ranged GET.
    pub chunk_bytes: u64,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        Self {
            max_bundle_bytes: 2 << 30,
            free_disk_reserve_bytes: 256 << 20,
            stall_timeout: Duration::from_secs(30),
            min_bytes_per_sec: 1024,
            deadline: Duration::from_secs(3600),
            retries: 8,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            chunk_bytes: 1 << 20,
        }
    }
}

/// Why a download or an install failed. [`DownloadError::reason`] is the stable short code
/// a device reports.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bundle location: {0}")]
    Location(#[source] StoreError),
    #[error("download request: {what}")]
    InvalidSpec { what: String },
    #[error("manifest sha256 {found} differs from the command's {expected}")]
    ManifestSha256Mismatch { expected: String, found: String },
    #[error("manifest signature: {what}")]
    BadManifestSignature { what: String },
    #[error("manifest: {0}")]
    ManifestInvalid(#[source] BundleError),
    #[error("bundle is {total} bytes, more than {what} ({limit} bytes)")]
    TooLarge {
        total: u64,
        limit: u64,
        what: &'static str,
    },
    #[error("{}: {available} bytes free, the download needs {needed} more and {reserve} must stay free", path.display())]
    DiskInsufficient {
        path: PathBuf,
        available: u64,
        needed: u64,
        reserve: u64,
    },
    #[error("{}: the disk is full", path.display())]
    DiskFull { path: PathBuf },
    #[error("{object}: stalled: {got} bytes in {window:?}, fewer than {need} ({attempts} attempts in a row)")]
    Stalled {
        object: String,
        window: Duration,
        got: u64,
        need: u64,
        attempts: u32,
    },
    #[error("not done within the deadline of {0:?}")]
    Deadline(Duration),
    #[error("{name}: the store holds {found} bytes, the manifest lists {expected}")]
    Truncated {
        name: String,
        expected: u64,
        found: u64,
    },
    #[error("{name}: sha256 {found} differs from the manifest's {expected}")]
    FileSha256Mismatch {
        name: String,
        expected: String,
        found: String,
    },
    #[error("{name}: is {found} bytes, the manifest lists {expected}")]
    FileSizeMismatch {
        name: String,
        expected: u64,
        found: u64,
    },
    #[error("{object}: not found in the bundle location")]
    NotFound { object: String },
    #[error("{object}: access denied: {what}")]
    Denied { object: String, what: String },
    #[error("{object}: {what} ({attempts} attempts in a row)")]
    Store {
        object: String,
        what: String,
        attempts: u32,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("model id {0:?} is not a single plain folder name")]
    UnsafeModelId(String),
    #[error("{}: another bundle is installed there", path.display())]
    InstallConflict { path: PathBuf },
    #[error("bundle: {0}")]
    Bundle(#[source] BundleError),
}

impl DownloadError {
    /// A stable short code for reports and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Location(_) => "bad_location",
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::ManifestSha256Mismatch { .. } => "manifest_sha256_mismatch",
            Self::BadManifestSignature { .. } => "bad_manifest_signature",
            Self::ManifestInvalid(_) => "manifest_invalid",
            Self::TooLarge { .. } => "too_large",
            Self::DiskInsufficient { .. } => "disk_insufficient",
            Self::DiskFull { .. } => "disk_full",
            Self::Stalled { .. } => "stalled",
            Self::Deadline(_) => "deadline",
            Self::Truncated { .. } => "truncated",
            Self::FileSha256Mismatch { .. } => "file_sha256_mismatch",
            Self::FileSizeMismatch { .. } => "file_size_mismatch",
            Self::NotFound { .. } => "not_found",
            Self::Denied { .. } => "store_denied",
            Self::Store { .. } => "store",
            Self::Io { .. } => "io",
            Self::Cancelled => "cancelled",
            Self::UnsafeModelId(_) => "unsafe_model_id",
            Self::InstallConflict { .. } => "install_conflict",
            Self::Bundle(_) => "bundle_invalid",
        }
    }

    /// Whether a later call may succeed with the same command (the network, the disk or
    /// the clock were in the way), as opposed to a bundle that will never do.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::DiskInsufficient { .. }
                | Self::DiskFull { .. }
                | Self::Stalled { .. }
                | Self::Deadline(_)
                | Self::Store { .. }
                | Self::Io { .. }
                | Self::Cancelled
        )
    }
}

/// Progress of a download, reported after every chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the bundle present in staging (resumed ones included).
    pub bytes_done: u64,
    /// The bundle's size.
    pub total: u64,
    /// Bytes received from the network by this call (manifest and signature included).
    pub fetched: u64,
}

/// A complete staging folder (not yet verified as a whole: that is [`install`]'s job).
#[derive(Clone, Debug)]
pub struct Downloaded {
    pub staging: PathBuf,
    pub manifest: Manifest,
    pub total_bytes: u64,
    /// Bytes that were already in staging when the call began, and kept.
    pub resumed_bytes: u64,
    /// Bytes received from the network by this call.
    pub fetched_bytes: u64,
}

/// A bundle moved into the models folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub path: PathBuf,
    pub model_id: String,
    pub manifest_sha256: String,
    /// The same bundle was already installed there (a repeated install after a restart).
    pub already_present: bool,
}

/// Prefix of staging folders inside a models folder ([`staging_dir`]).
pub const STAGING_PREFIX: &str = ".staging-";

/// Where rollout `rollout_id` stages its bundle: a hidden folder inside `models_dir`, so
/// that [`install`]'s rename stays on one file system and [`prune`] finds it.
pub fn staging_dir(models_dir: &Path, rollout_id: &str) -> Result<PathBuf, DownloadError> {
    if !disk::safe_component(rollout_id) {
        return Err(DownloadError::InvalidSpec {
            what: format!("rollout id {rollout_id:?} is not a plain name"),
        });
    }
    Ok(models_dir.join(format!("{STAGING_PREFIX}{rollout_id}")))
}

/// Bytes of a `.part` file written between syncs: a crash loses at most this much.
const SYNC_EVERY: u64 = 8 << 20;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a write error means: a full disk is reported as such (and not retried).
fn write_err(path: &Path, e: std::io::Error) -> DownloadError {
    if disk::is_no_space(&e) {
        DownloadError::DiskFull {
            path: path.to_path_buf(),
        }
    } else {
        DownloadError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Backoff before retry number `attempt` (1-based): full jitter over an exponential cap.
fn backoff(limits: &DownloadLimits, attempt: u32) -> Duration {
    let cap = limits
        .backoff_min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(limits.backoff_max);
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    use rand::Rng;
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// The stall watch of one request: over each window, at least `need` bytes must arrive.
#[derive(Debug)]
struct Window {
    len: Duration,
    need: u64,
    end: Instant,
    start_bytes: u64,
}

impl Window {
    fn new(limits: &DownloadLimits, now: Instant) -> Self {
        let len = limits.stall_timeout.max(Duration::from_millis(1));
        let need = (limits.min_bytes_per_sec as f64 * len.as_secs_f64()).ceil() as u64;
        Self {
            len,
            need: need.max(1),
            end: now + len,
            start_bytes: 0,
        }
    }

    /// At the window's end with `received` bytes so far: the bytes of a stalled window, or
    /// `None` and the next window begins.
    fn roll(&mut self, received: u64, now: Instant) -> Option<u64> {
        let got = received - self.start_bytes;
        if got < self.need {
            return Some(got);
        }
        self.start_bytes = received;
        self.end = now + self.len;
        None
    }
}

/// Why an await was interrupted.
enum Interrupt {
    Cancelled,
    Deadline,
    Stalled { got: u64 },
}

/// How a failed request ends the attempt.
enum Failure {
    /// Worth another request (network, server error, stall, short answer).
    Transient(Transient),
    /// Not worth another request.
    Fatal(DownloadError),
}

enum Transient {
    Store(String),
    Stalled { got: u64 },
    Short { found: u64 },
}

/// What one ranged GET brought: a prefix of the range asked for, and how it ended.
struct Answer {
    bytes: Vec<u8>,
    end: Result<(), Failure>,
}

/// How the size of the object a GET reaches is judged, before its body is read.
type SizeCheck<'a> = &'a (dyn Fn(u64) -> Result<(), DownloadError> + Send + Sync);

struct Fetcher<'a> {
    store: Arc<dyn ObjectStore>,
    limits: &'a DownloadLimits,
    cancel: &'a CancellationToken,
    deadline: Instant,
    /// Network bytes received by this call.
    fetched: u64,
}

impl Fetcher<'_> {
    fn check(&self) -> Result<(), DownloadError> {
        if self.cancel.is_cancelled() {
            return Err(DownloadError::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(DownloadError::Deadline(self.limits.deadline));
        }
        Ok(())
    }

    /// Awaits `fut` unless cancelled, past the deadline, or (with a window) stalled.
    async fn wait<F: std::future::Future>(
        &self,
        fut: F,
        mut window: Option<(&mut Window, u64)>,
    ) -> Result<F::Output, Interrupt> {
        let mut fut = pin!(fut);
        loop {
            let window_end = window.as_ref().map(|(w, _)| w.end);
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = self.cancel.cancelled() => return Err(Interrupt::Cancelled),
                _ = tokio::time::sleep_until(self.deadline) => return Err(Interrupt::Deadline),
                _ = async {
                    match window_end {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((w, received)) = window.as_mut() {
                        if let Some(got) = w.roll(*received, Instant::now()) {
                            return Err(Interrupt::Stalled { got });
                        }
                    }
                }
            }
        }
    }

    fn interrupted(&self, i: Interrupt) -> Failure {
        match i {
            Interrupt::Cancelled => Failure::Fatal(DownloadError::Cancelled),
            Interrupt::Deadline => Failure::Fatal(DownloadError::Deadline(self.limits.deadline)),
            Interrupt::Stalled { got } => Failure::Transient(Transient::Stalled { got }),
        }
    }

    /// One ranged GET of `range` of `object`, under the stall watch; `size_ok` judges the
    /// object's size from the response head, before any of its body is read.
    async fn get(
        &mut self,
        object: &ObjectPath,
        range: Range<u64>,
        size_ok: SizeCheck<'_>,
    ) -> Answer {
        let want = range.end - range.start;
        let mut bytes = Vec::new();
        let mut window = Window::new(self.limits, Instant::now());
        let request = self
            .store
            .get_opts(object, GetOptions::new().with_range(Some(range)));
        let result = match self.wait(request, Some((&mut window, 0))).await {
            Err(i) => {
                return Answer {
                    bytes,
                    end: Err(self.interrupted(i)),
                }
            }
            Ok(Err(e)) => {
                return Answer {
                    bytes,
                    end: Err(classify(object, e)),
                }
            }
            Ok(Ok(r)) => r,
        };
        if let Err(e) = size_ok(result.meta.size) {
            return Answer {
                bytes,
                end: Err(Failure::Fatal(e)),
            };
        }
        let mut stream = result.into_stream();
        let end = loop {
            let received = bytes.len() as u64;
            match self
                .wait(stream.next(), Some((&mut window, received)))
                .await
            {
                Err(i) => break Err(self.interrupted(i)),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(classify(object, e)),
                Ok(Some(Ok(piece))) => {
                    self.fetched += piece.len() as u64;
                    let room = (want - received) as usize;
                    if piece.len() > room {
                        // more than was asked for: keep what was, the rest is not trusted
                        bytes.extend_from_slice(&piece[..room]);
                        break Err(Failure::Transient(Transient::Store(format!(
                            "the server sent more than the {want} bytes asked for"
                        ))));
                    }
                    bytes.extend_from_slice(&piece);
                }
            }
        };
        let end = match end {
            Ok(()) if (bytes.len() as u64) < want => Err(Failure::Transient(Transient::Short {
                found: bytes.len() as u64,
            })),
            end => end,
        };
        Answer { bytes, end }
    }

    /// A whole small object (the manifest, the signature), at most `max` bytes, retried
    /// like any request.
    async fn get_small(
        &mut self,
        object: &ObjectPath,
        max: u64,
        size_ok: SizeCheck<'_>,
    ) -> Result<Vec<u8>, DownloadError> {
        let mut data = Vec::new();
        let mut failures = 0u32;
        loop {
            self.check()?;
            let start = data.len() as u64;
            let answer = self.get(object, start..max + 1, size_ok).await;
            let progressed = !answer.bytes.is_empty();
            data.extend_from_slice(&answer.bytes);
            match answer.end {
                Ok(()) => return Ok(data),
                // the object ended before `max + 1`: that is its whole length
                Err(Failure::Transient(Transient::Short { .. })) => return Ok(data),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(t)) => {
                    if progressed {
                        failures = 0;
                    }
                    failures += 1;
                    self.after_failure(object, t, failures, |found| DownloadError::Truncated {
                        name: object.to_string(),
                        expected: max,
                        found,
                    })
                    .await?;
                }
            }
        }
    }

    /// Gives up after too many failures in a row, or waits out the backoff.
    async fn after_failure(
        &self,
        object: &ObjectPath,
        t: Transient,
        failures: u32,
        short: impl FnOnce(u64) -> DownloadError,
    ) -> Result<(), DownloadError> {
        let what = match &t {
            Transient::Store(what) => what.clone(),
            Transient::Stalled { got } => {
                format!("stalled ({got} bytes in {:?})", self.limits.stall_timeout)
            }
            Transient::Short { found } => format!("short answer ({found} bytes)"),
        };
        if failures > self.limits.retries {
            return Err(match t {
                Transient::Store(what) => DownloadError::Store {
                    object: object.to_string(),
                    what,
                    attempts: failures,
                },
                Transient::Stalled { got } => DownloadError::Stalled {
                    object: object.to_string(),
                    window: self.limits.stall_timeout,
                    got,
                    need: Window::new(self.limits, Instant::now()).need,
                    attempts: failures,
                },
                Transient::Short { found } => short(found),
            });
        }
        let pause = backoff(self.limits, failures);
        tracing::warn!(%object, failure = failures, retries = self.limits.retries, ?pause, "download request failed, retrying: {what}");
        match self.wait(tokio::time::sleep(pause), None).await {
            Ok(()) => Ok(()),
            Err(Interrupt::Cancelled) => Err(DownloadError::Cancelled),
            Err(_) => Err(DownloadError::Deadline(self.limits.deadline)),
        }
    }
}

/// What an `object_store` error means for the download.
fn classify(object: &ObjectPath, e: object_store::Error) -> Failure {
    match e {
        object_store::Error::NotFound { .. } => Failure::Fatal(DownloadError::NotFound {
            object: object.to_string(),
        }),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Failure::Fatal(DownloadError::Denied {
            object: object.to_string(),
            what: chain(&e),
        }),
        e => Failure::Transient(Transient::Store(chain(&e))),
    }
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A `.part` file being appended to, with the hash of everything in it.
struct Part {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
    synced: u64,
}

impl Part {
    /// Opens (or creates) `path`, keeping at most `max` bytes of what is there and hashing
    /// them; a longer file is not a prefix of this one and starts over.
    fn open(path: &Path, max: u64) -> Result<Part, DownloadError> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let mut len = file.metadata().map_err(io_err(path))?.len();
        if len > max {
            tracing::warn!(path = %path.display(), len, max, "partial file longer than the manifest's size, starting it over");
            file.set_len(0).map_err(io_err(path))?;
            len = 0;
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = buf.len().min(left as usize);
            file.read_exact(&mut buf[..n]).map_err(io_err(path))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        file.seek(SeekFrom::Start(len)).map_err(io_err(path))?;
        Ok(Part {
            path: path.to_path_buf(),
            file,
            hasher,
            len,
            synced: len,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.file
            .write_all(bytes)
            .map_err(|e| write_err(&self.path, e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        if self.len - self.synced >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes the length durable: after a crash, the file is at least this long and its
    /// bytes are the ones written (a true resume offset).
    fn sync(&mut self) -> Result<(), DownloadError> {
        self.file
            .sync_data()
            .map_err(|e| write_err(&self.path, e))?;
        self.synced = self.len;
        Ok(())
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, DownloadError> + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DownloadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// sha256 (hex) and length of a whole file.
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

fn part_name(name: &str) -> String {
    format!("{name}.part")
}

/// Removes from `staging` everything that is not `keep` (a folder we own: leftovers of an
/// earlier bundle would never verify).
fn clear_except(staging: &Path, keep: &[String]) -> Result<(), DownloadError> {
    for entry in std::fs::read_dir(staging).map_err(io_err(staging))? {
        let entry = entry.map_err(io_err(staging))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        tracing::debug!(path = %path.display(), "removing from staging");
        if kind.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Bytes of `entry` already in staging that a download keeps (before re-hashing).
fn present_bytes(staging: &Path, entry: &FileEntry) -> u64 {
    let len = |p: PathBuf| std::fs::symlink_metadata(p).ok().map(|m| m.len());
    if len(staging.join(&entry.name)) == Some(entry.bytes) {
        return entry.bytes;
    }
    match len(staging.join(part_name(&entry.name))) {
        Some(n) if n <= entry.bytes => n,
        _ => 0,
    }
}

/// Downloads the bundle `spec` names into `staging` (created if absent; a folder the
/// caller names per rollout, best [`staging_dir`]), resuming from what is already there,
/// within `limits`; `progress` hears of every chunk; `cancel` stops the call at its next
/// network wait. The manifest must be signed by one of `bundle_keys`.
pub async fn download(
    spec: &DownloadSpec,
    limits: &DownloadLimits,
    bundle_keys: &[VerifyingKey],
    staging: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
    cancel: &CancellationToken,
) -> Result<Downloaded, DownloadError> {
    let started = Instant::now();
    if !is_sha256_hex(&spec.manifest_sha256) {
        return Err(DownloadError::InvalidSpec {
            what: format!(
                "manifest sha256 {:?} is not 64 lowercase hex digits",
                spec.manifest_sha256
            ),
        });
    }
    if bundle_keys.is_empty() {
        return Err(DownloadError::BadManifestSignature {
            what: "no bundle key is configured".into(),
        });
    }
    let options: Vec<(&str, &str)> = spec
        .store_options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // this module retries, times and resumes every request itself
    let no_retries = object_store::RetryConfig {
        max_retries: 0,
        ..Default::default()
    };
    let loc = shared::store::open_with_retry(&spec.location, &options, no_retries)
        .map_err(DownloadError::Location)?;
    std::fs::create_dir_all(staging).map_err(io_err(staging))?;
    let mut f = Fetcher {
        store: loc.store.clone(),
        limits,
        cancel,
        deadline: started + limits.deadline,
        fetched: 0,
    };

    // 1. the manifest, bounded, its sha256 first; then the signature
    let mobj = loc.child(MANIFEST_FILE);
    let max = bundle::MAX_MANIFEST_BYTES;
    let manifest_size = move |size: u64| {
        if size > max {
            Err(DownloadError::ManifestInvalid(BundleError::TooLarge {
                path: PathBuf::from(MANIFEST_FILE),
                limit: max,
                found: size,
            }))
        } else {
            Ok(())
        }
    };
    let mbytes = f.get_small(&mobj, max, &manifest_size).await?;
    let found = bundle::sha256_hex(&mbytes);
    if found != spec.manifest_sha256 {
        return Err(DownloadError::ManifestSha256Mismatch {
            expected: spec.manifest_sha256.clone(),
            found,
        });
    }
    let sobj = loc.child(SIGNATURE_FILE);
    let sig_size = |size: u64| {
        if size == 64 {
            Ok(())
        } else {
            Err(DownloadError::BadManifestSignature {
                what: format!("{SIGNATURE_FILE} is {size} bytes, an ed25519 signature is 64"),
            })
        }
    };
    let sig = f.get_small(&sobj, 64, &sig_size).await?;
    let sig: [u8; 64] =
        sig.as_slice()
            .try_into()
            .map_err(|_| DownloadError::BadManifestSignature {
                what: format!(
                    "{SIGNATURE_FILE} is {} bytes, an ed25519 signature is 64",
                    sig.len()
                ),
            })?;
    let sig = Signature::from_bytes(&sig);
    if !bundle_keys
        .iter()
        .any(|k| k.verify_strict(&mbytes, &sig).is_ok())
    {
        return Err(DownloadError::BadManifestSignature {
            what: format!(
                "does not verify with any of the {} bundle keys (tampered manifest, or signed by another key)",
                bundle_keys.len()
            ),
        });
    }
    let manifest = bundle::manifest_from_bytes(&mbytes, Path::new(MANIFEST_FILE))
        .map_err(DownloadError::ManifestInvalid)?;

    // 2. sizes
    let total = manifest
        .files
        .iter()
        .try_fold(mbytes.len() as u64 + 64, |t, e| t.checked_add(e.bytes))
        .unwrap_or(u64::MAX);
    if total > spec.declared_bytes {
        return Err(DownloadError::TooLarge {
            total,
            limit: spec.declared_bytes,
            what: "the size the command declares",
        });
    }
    if total > limits.max_bundle_bytes {
        return Err(DownloadError::TooLarge {
            total,
            limit: limits.max_bundle_bytes,
            what: "the configured maximum",
        });
    }
    if total < spec.declared_bytes {
        tracing::warn!(
            total,
            declared = spec.declared_bytes,
            "the bundle is smaller than the command declares"
        );
    }

    // staging holds this bundle only: a manifest of another one means its files are too
    let old_manifest = std::fs::read(staging.join(MANIFEST_FILE)).ok();
    if old_manifest.is_some_and(|old| old != mbytes) {
        tracing::info!(staging = %staging.display(), "staging holds another bundle, clearing it");
        clear_except(staging, &[])?;
    }
    let mut keep = vec![MANIFEST_FILE.to_string(), SIGNATURE_FILE.to_string()];
    for e in &manifest.files {
        keep.push(e.name.clone());
        keep.push(part_name(&e.name));
    }
    clear_except(staging, &keep)?;
    std::fs::write(staging.join(MANIFEST_FILE), &mbytes)
        .map_err(|e| write_err(&staging.join(MANIFEST_FILE), e))?;
    std::fs::write(staging.join(SIGNATURE_FILE), sig.to_bytes())
        .map_err(|e| write_err(&staging.join(SIGNATURE_FILE), e))?;

    // 3. free disk for what is left, before any file byte
    let present: u64 = manifest
        .files
        .iter()
        .map(|e| present_bytes(staging, e))
        .sum();
    let files_total = total - mbytes.len() as u64 - 64;
    let needed = files_total - present;
    let available = disk::available_bytes(staging).map_err(io_err(staging))?;
    if available < needed.saturating_add(limits.free_disk_reserve_bytes) {
        return Err(DownloadError::DiskInsufficient {
            path: staging.to_path_buf(),
            available,
            needed,
            reserve: limits.free_disk_reserve_bytes,
        });
    }
    tracing::info!(
        location = %spec.location,
        model_id = %manifest.model_id,
        total,
        resumable = present,
        "downloading bundle"
    );

    // 4. the files
    let mut done = total - files_total;
    let mut resumed = 0u64;
    for entry in &manifest.files {
        let object = loc.child(&entry.name);
        let kept = fetch_file(&mut f, &object, entry, staging, &mut done, total, progress).await?;
        resumed += kept;
    }
    disk::sync_dir(staging).map_err(io_err(staging))?;
    tracing::info!(
        model_id = %manifest.model_id,
        total,
        resumed,
        fetched = f.fetched,
        secs = started.elapsed().as_secs_f64(),
        "bundle downloaded"
    );
    Ok(Downloaded {
        staging: staging.to_path_buf(),
        manifest,
        total_bytes: total,
        resumed_bytes: resumed,
        fetched_bytes: f.fetched,
    })
}

/// Brings one file into staging; returns how many of its bytes were already there.
async fn fetch_file(
    f: &mut Fetcher<'_>,
    object: &ObjectPath,
    entry: &FileEntry,
    staging: &Path,
    done: &mut u64,
    total: u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<u64, DownloadError> {
    let final_path = staging.join(&entry.name);
    if std::fs::symlink_metadata(&final_path).is_ok() {
        let p = final_path.clone();
        let (sha, len) = blocking(&final_path, move || hash_file(&p).map_err(io_err(&p))).await?;
        if len == entry.bytes && sha == entry.sha256 {
            *done += len;
            return Ok(len);
        }
        tracing::warn!(file = %entry.name, "a finished file in staging does not match the manifest, fetching it again");
        std::fs::remove_file(&final_path).map_err(io_err(&final_path))?;
    }
    let part_path = staging.join(part_name(&entry.name));
    let (p, max) = (part_path.clone(), entry.bytes);
    let mut part = blocking(&part_path, move || Part::open(&p, max)).await?;
    let kept = part.len;
    *done += kept;
    let size_check = |size: u64| {
        if size < entry.bytes {
            Err(DownloadError::Truncated {
                name: entry.name.clone(),
                expected: entry.bytes,
                found: size,
            })
        } else if size > entry.bytes {
            Err(DownloadError::FileSizeMismatch {
                name: entry.name.clone(),
                expected: entry.bytes,
                found: size,
            })
        } else {
            Ok(())
        }
    };
    let mut failures = 0u32;
    while part.len < entry.bytes {
        f.check()?;
        let end = entry.bytes.min(part.len + f.limits.chunk_bytes.max(1));
        let answer = f.get(object, part.len..end, &size_check).await;
        let n = answer.bytes.len() as u64;
        if n > 0 {
            let data = answer.bytes;
            let written = blocking(&part_path, move || {
                let r = part.append(&data);
                Ok((part, r))
            })
            .await?;
            part = written.0;
            if let Err(e) = written.1 {
                if matches!(e, DownloadError::DiskFull { .. }) {
                    // give the device its space back; the bytes are lost anyway
                    drop(part);
                    let _ = std::fs::remove_file(&part_path);
                }
                return Err(e);
            }
            *done += n;
            progress(Progress {
                bytes_done: *done,
                total,
                fetched: f.fetched,
            });
        }
        match answer.end {
            Ok(()) => failures = 0,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(t)) => {
                if n > 0 {
                    failures = 0;
                }
                failures += 1;
                let (name, expected, at) = (entry.name.clone(), entry.bytes, part.len);
                f.after_failure(object, t, failures, move |_| DownloadError::Truncated {
                    name,
                    expected,
                    found: at,
                })
                .await?;
            }
        }
    }
    let sha = hex::encode(part.hasher.clone().finalize());
    if sha != entry.sha256 {
        drop(part);
        std::fs::remove_file(&part_path).map_err(io_err(&part_path))?;
        return Err(DownloadError::FileSha256Mismatch {
            name: entry.name.clone(),
            expected: entry.sha256.clone(),
            found: sha,
        });
    }
    let (p, fp) = (part_path.clone(), final_path.clone());
    blocking(&part_path, move || {
        part.sync()?;
        drop(part);
        std::fs::rename(&p, &fp).map_err(io_err(&fp))
    })
    .await?;
    if kept == entry.bytes {
        // nothing was fetched: say so once
        progress(Progress {
            bytes_done: *done,
            total,
            fetched: f.fetched,
        });
    }
    Ok(kept)
}

/// The bundle in `dir` verified with whichever of `keys` signed it.
fn verify_with_any(
    dir: &Path,
    keys: &[VerifyingKey],
) -> Result<bundle::VerifiedBundle, DownloadError> {
    for key in keys {
        match bundle::verify(dir, key) {
            Err(BundleError::BadSignature { .. }) => continue,
            Err(e) => return Err(bundle_error(e)),
            Ok(v) => return Ok(v),
        }
    }
    Err(DownloadError::BadManifestSignature {
        what: format!("does not verify with any of the {} bundle keys", keys.len()),
    })
}

/// A verification failure as the download reports the same thing.
fn bundle_error(e: BundleError) -> DownloadError {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match e {
        BundleError::Digest {
            path,
            expected,
            found,
        } => DownloadError::FileSha256Mismatch {
            name: name(&path),
            expected,
            found,
        },
        BundleError::Size {
            path,
            expected,
            found,
        } => DownloadError::FileSizeMismatch {
            name: name(&path),
            expected,
            found,
        },
        e @ (BundleError::Manifest { .. }
        | BundleError::UnknownVersion { .. }
        | BundleError::Invalid { .. }) => DownloadError::ManifestInvalid(e),
        e => DownloadError::Bundle(e),
    }
}

/// Verifies the complete staging folder (every file, the signature with one of
/// `bundle_keys`, the manifest's sha256 against the command's) and moves it to
/// `models_dir/<model_id>/`: files synced, one rename, the models folder synced. Returns
/// where it went. `staging` must be on the file system of `models_dir` ([`staging_dir`]).
/// Installing the same bundle again (a restart after the rename) finds it there and
/// succeeds; another bundle under the same model id is refused.
pub fn install(
    staging: &Path,
    spec: &DownloadSpec,
    bundle_keys: &[VerifyingKey],
    models_dir: &Path,
) -> Result<Installed, DownloadError> {
    let mut verified = verify_with_any(staging, bundle_keys)?;
    verified.release_files();
    if verified.manifest_sha256 != spec.manifest_sha256 {
        return Err(DownloadError::ManifestSha256Mismatch {
            expected: spec.manifest_sha256.clone(),
            found: verified.manifest_sha256,
        });
    }
    let model_id = verified.manifest.model_id.clone();
    if !disk::safe_component(&model_id) {
        return Err(DownloadError::UnsafeModelId(model_id));
    }
    std::fs::create_dir_all(models_dir).map_err(io_err(models_dir))?;
    let target = models_dir.join(&model_id);
    let installed = |already_present| Installed {
        path: target.clone(),
        model_id: model_id.clone(),
        manifest_sha256: spec.manifest_sha256.clone(),
        already_present,
    };
    if std::fs::symlink_metadata(&target).is_ok() {
        return match verify_with_any(&target, bundle_keys) {
            Ok(v) if v.manifest_sha256 == spec.manifest_sha256 => {
                std::fs::remove_dir_all(staging).map_err(io_err(staging))?;
                tracing::info!(path = %target.display(), "bundle already installed");
                Ok(installed(true))
            }
            _ => Err(DownloadError::InstallConflict { path: target }),
        };
    }
    // the files' bytes, then the folder's entries, then the rename and its parent
    for entry in std::fs::read_dir(staging).map_err(io_err(staging))? {
        let path = entry.map_err(io_err(staging))?.path();
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| write_err(&path, e))?;
    }
    disk::sync_dir(staging).map_err(io_err(staging))?;
    std::fs::rename(staging, &target).map_err(|e| {
        if e.raw_os_error() == Some(libc::EXDEV) {
            DownloadError::Io {
                path: target.clone(),
                source: std::io::Error::new(
                    e.kind(),
                    format!(
                        "staging {} is on another file system than the models folder",
                        staging.display()
                    ),
                ),
            }
        } else {
            DownloadError::Io {
                path: target.clone(),
                source: e,
            }
        }
    })?;
    disk::sync_dir(models_dir).map_err(io_err(models_dir))?;
    tracing::info!(path = %target.display(), sha256 = %spec.manifest_sha256, "bundle installed");
    Ok(installed(false))
}

/// Removes the folders of `models_dir` not named in `keep` (the active and the previous
/// model, and the staging folder of a download in progress): older models and stale
/// staging folders. Files (the agent's state) and symbolic links are left alone. Returns
/// the names removed.
pub fn prune(models_dir: &Path, keep: &[&str]) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(models_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        r => r?,
    };
    let mut removed = vec![];
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name.as_str()) || !entry.file_type()?.is_dir() {
            continue;
        }
        std::fs::remove_dir_all(entry.path())?;
        tracing::info!(folder = %name, "pruned");
        removed.push(name);
    }
    if !removed.is_empty() {
        disk::sync_dir(models_dir)?;
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DownloadLimits {
        DownloadLimits {
            stall_timeout: Duration::from_secs(2),
            min_bytes_per_sec: 100,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..DownloadLimits::default()
        }
    }

    #[test]
    fn a_window_with_too_few_bytes_is_a_stall_and_a_good_one_starts_the_next() {
        let t0 = Instant::now();
        let mut w = Window::new(&limits(), t0);
        assert_eq!((w.need, w.end), (200, t0 + Duration::from_secs(2)));
        // 250 bytes in the first window: fine, the next window counts from there
        assert_eq!(w.roll(250, t0 + Duration::from_secs(2)), None);
        assert_eq!(w.end, t0 + Duration::from_secs(4));
        // 199 more in the second: stalled, and it says how many came
        assert_eq!(w.roll(449, t0 + Duration::from_secs(4)), Some(199));
        // no throughput floor still needs one byte per window: a silent request stalls
        let zero = DownloadLimits {
            min_bytes_per_sec: 0,
            ..limits()
        };
        let mut w = Window::new(&zero, t0);
        assert_eq!(w.roll(0, t0 + Duration::from_secs(2)), Some(0));
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_cap() {
        let l = limits();
        for attempt in 1..=8u32 {
            let cap = (100u64 << (attempt - 1)).min(1000);
            let draws: Vec<u64> = (0..200)
                .map(|_| backoff(&l, attempt).as_millis() as u64)
                .collect();
            assert!(
                draws.iter().all(|&d| d <= cap),
                "attempt {attempt}: {draws:?}"
            );
            // full jitter: not always the cap, and spread over the range
            assert!(draws.iter().any(|&d| d < cap / 2), "attempt {attempt}");
        }
        // a huge attempt number neither overflows nor exceeds the maximum
        assert!(backoff(&l, u32::MAX) <= Duration::from_millis(1000));
    }

    #[test]
    fn every_error_has_its_own_reason_code() {
        let p = PathBuf::from("x");
        let errors = [
            DownloadError::Location(StoreError::Location {
                location: "x".into(),
                what: "y".into(),
            }),
            DownloadError::InvalidSpec { what: "x".into() },
            DownloadError::ManifestSha256Mismatch {
                expected: "a".into(),
                found: "b".into(),
            },
            DownloadError::BadManifestSignature { what: "x".into() },
            DownloadError::ManifestInvalid(BundleError::Manifest {
                path: p.clone(),
                what: "x".into(),
            }),
            DownloadError::TooLarge {
                total: 2,
                limit: 1,
                what: "x",
            },
            DownloadError::DiskInsufficient {
                path: p.clone(),
                available: 0,
                needed: 1,
                reserve: 0,
            },
            DownloadError::DiskFull { path: p.clone() },
            DownloadError::Stalled {
                object: "o".into(),
                window: Duration::from_secs(1),
                got: 0,
                need: 1,
                attempts: 1,
            },
            DownloadError::Deadline(Duration::from_secs(1)),
            DownloadError::Truncated {
                name: "f".into(),
                expected: 2,
                found: 1,
            },
            DownloadError::FileSha256Mismatch {
                name: "f".into(),
                expected: "a".into(),
                found: "b".into(),
            },
            DownloadError::FileSizeMismatch {
                name: "f".into(),
                expected: 2,
                found: 1,
            },
            DownloadError::NotFound { object: "o".into() },
            DownloadError::Denied {
                object: "o".into(),
                what: "x".into(),
            },
            DownloadError::Store {
                object: "o".into(),
                what: "x".into(),
                attempts: 1,
            },
            DownloadError::Io {
                path: p.clone(),
                source: std::io::Error::other("x"),
            },
            DownloadError::Cancelled,
            DownloadError::UnsafeModelId("..".into()),
            DownloadError::InstallConflict { path: p.clone() },
            DownloadError::Bundle(BundleError::Unlisted { path: p }),
        ];
        let mut codes: Vec<_> = errors.iter().map(DownloadError::reason).collect();
        assert!(codes.iter().all(|c| c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
        // a bundle that is wrong stays wrong; a stalled network may not
        assert!(!errors[2].retryable() && !errors[11].retryable());
        assert!(errors[8].retryable() && errors[15].retryable());
    }

    #[test]
    fn verification_failures_keep_their_file_names_and_reasons() {
        let e = bundle_error(BundleError::Digest {
            path: PathBuf::from("/s/model.onnx"),
            expected: "a".into(),
            found: "b".into(),
        });
        assert!(
            matches!(&e, DownloadError::FileSha256Mismatch { name, .. } if name == "model.onnx")
        );
        let e = bundle_error(BundleError::Size {
            path: PathBuf::from("/s/golden.safetensors"),
            expected: 2,
            found: 1,
        });
        assert_eq!(e.reason(), "file_size_mismatch");
        let e = bundle_error(BundleError::Unlisted {
            path: PathBuf::from("/s/x"),
        });
        assert_eq!(e.reason(), "bundle_invalid");
    }

    #[test]
    fn a_partial_file_is_resumed_from_its_hashed_prefix_or_started_over_when_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        std::fs::write(&path, b"hello ").unwrap();
        let mut part = Part::open(&path, 11).unwrap();
        assert_eq!(part.len, 6);
        part.append(b"world").unwrap();
        part.sync().unwrap();
        assert_eq!(
            hex::encode(part.hasher.clone().finalize()),
            bundle::sha256_hex(b"hello world")
        );
        drop(part);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        // longer than the file can be: not a prefix of it
        let part = Part::open(&path, 5).unwrap();
        assert_eq!(part.len, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn staging_folders_have_plain_names_inside_the_models_folder() {
        let m = Path::new("/var/lib/edge/models");
        assert_eq!(staging_dir(m, "r-42").unwrap(), m.join(".staging-r-42"));
        for bad in ["", "..", "a/b", ".x"] {
            assert_eq!(staging_dir(m, bad).unwrap_err().reason(), "invalid_spec");
        }
    }

    #[test]
    fn prune_removes_only_the_folders_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for d in ["a", "b", "c", ".staging-r1", ".staging-r2"] {
            std::fs::create_dir_all(m.join(d).join("sub")).unwrap();
            std::fs::write(m.join(d).join("f"), b"x").unwrap();
        }
        std::fs::write(m.join("state.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(m.join("a"), m.join("current")).unwrap();
        let removed = prune(m, &["a", "b", ".staging-r2"]).unwrap();
        assert_eq!(removed, vec![".staging-r1".to_string(), "c".to_string()]);
        let mut left: Vec<_> = std::fs::read_dir(m)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".staging-r2", "a", "b", "current", "state.json"]);
        assert!(m.join("a/f").exists(), "kept folders are untouched");
        // nothing to prune, or no models folder yet
        assert!(prune(m, &["a", "b", ".staging-r2"]).unwrap().is_empty());
        assert!(prune(&m.join("missing"), &[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_any_store_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let spec = DownloadSpec {
            location: "ftp://nowhere/x".into(),
            manifest_sha256: "A".repeat(64),
            declared_bytes: 1,
            store_options: vec![],
        };
        let mut progress = |_: Progress| {};
        let cancel = CancellationToken::new();
        let staging = dir.path().join("s");
        let r = download(&spec, &limits(), &[key], &staging, &mut progress, &cancel).await;
        assert_eq!(r.unwrap_err().reason(), "invalid_spec");
        let spec = DownloadSpec {
            manifest_sha256: "a".repeat(64),
            ..spec
        };
        let r = download(&spec, &limits(), &[], &staging, &mut progress, &cancel).await;
        assert_eq!(r.unwrap_err().reason(), "bad_manifest_signature");
        let r = download(&spec, &limits(), &[key], &staging, &mut progress, &cancel).await;
        assert_eq!(r.unwrap_err().reason(), "bad_location");
        assert!(!staging.exists());
    }

    #[tokio::test]
    async fn a_local_folder_without_a_manifest_is_not_found_and_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let spec = DownloadSpec {
            location: dir.path().join("bundle").display().to_string(),
            manifest_sha256: "a".repeat(64),
            declared_bytes: 1,
            store_options: vec![],
        };
        let mut progress = |_: Progress| {};
        let lim = DownloadLimits {
            backoff_min: Duration::from_secs(30),
            ..limits()
        };
        let t0 = std::time::Instant::now();
        let r = download(
            &spec,
            &lim,
            &[key],
            &dir.path().join("s"),
            &mut progress,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.unwrap_err().reason(), "not_found");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
