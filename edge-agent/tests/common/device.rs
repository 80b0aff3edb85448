//! A device under test: signed bundles (two built from different seeds, the rest derived
//! from them by editing and re-signing the manifest), signed commands, the real
//! `edge-agent run` process (killed with SIGKILL at will, restarted on the same data
//! folder) and an HTTP load that records every answer's model.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use shared::bundle::{self, golden::Golden, keys, Manifest};
use shared::command::{Action, Command, Target};
use trainer::training::config::ModelConfig;
use trainer::training::model::{Arch, Backbone};

/// A bundle folder and what a command needs to name it.
#[derive(Clone, Debug)]
pub struct Built {
    pub dir: PathBuf,
    pub model_id: String,
    pub manifest_sha256: String,
    pub bytes: u64,
    pub created_ms: i64,
}

fn describe(dir: &Path) -> Built {
    let mbytes = std::fs::read(dir.join(bundle::MANIFEST_FILE)).unwrap();
    let m: Manifest = serde_json::from_slice(&mbytes).unwrap();
    let sig = std::fs::metadata(dir.join(bundle::SIGNATURE_FILE))
        .unwrap()
        .len();
    Built {
        dir: dir.to_path_buf(),
        model_id: m.model_id.clone(),
        manifest_sha256: bundle::sha256_hex(&mbytes),
        bytes: mbytes.len() as u64 + sig + m.files.iter().map(|f| f.bytes).sum::<u64>(),
        created_ms: m.created_ms,
    }
}

/// A real bundle from weights of seed `seed` (and centroids of seed `seed + 100`).
pub fn build_seeded(root: &Path, name: &str, seed: u64, key: &SigningKey) -> Built {
    let run = root.join(format!("run-{name}"));
    let cfg = ModelConfig {
        embedding_dim: crate::common::DIM,
        batch_norm: false,
        dropout: 0.0,
        l2_normalize: true,
    };
    let arch = Arch::new(32, &cfg).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let net = Backbone::new(arch, &Device::Cpu, &mut rng).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    net.save(&run.join("model.safetensors")).unwrap();
    std::fs::write(
        run.join("reference.safetensors"),
        crate::common::reference_bytes(seed + 100),
    )
    .unwrap();
    let src = exporter::source::open_run(run.to_str().unwrap(), "sqlite::memory:").unwrap();
    let golden = exporter::golden::synthetic(&src.net).unwrap();
    let out = root.join(name);
    exporter::bundle::build(&src, &golden, key, &out, shared::data::gtsrb_class_names()).unwrap();
    describe(&out)
}

/// A copy of `base` in `root/name` whose manifest `edit` changed (it may change files
/// too: entries are re-hashed), signed with `key`.
pub fn derive(
    base: &Built,
    root: &Path,
    name: &str,
    key: &SigningKey,
    edit: impl FnOnce(&mut Manifest, &Path),
) -> Built {
    let out = root.join(name);
    let _ = std::fs::remove_dir_all(&out);
    crate::common::copy_dir(&base.dir, &out);
    let mut m: Manifest =
        serde_json::from_slice(&std::fs::read(out.join(bundle::MANIFEST_FILE)).unwrap()).unwrap();
    edit(&mut m, &out);
    m.files = m
        .files
        .iter()
        .map(|f| bundle::file_entry(&out, &f.name, &f.role).unwrap())
        .collect();
    bundle::write_signed(&out, &m, key).unwrap();
    describe(&out)
}

/// Golden expected outputs shifted by `by`: the self-test fails on any device.
pub fn alter_golden(m: &mut Manifest, dir: &Path, by: f32) {
    let path = dir.join(&m.golden.file);
    let mut g = Golden::parse(&std::fs::read(&path).unwrap(), &m.golden.file).unwrap();
    g.expected.iter_mut().for_each(|v| *v += by);
    std::fs::write(&path, g.to_safetensors().unwrap()).unwrap();
}

/// Keys of a test fleet, written as PEM files.
pub struct Keys {
    pub bundle: SigningKey,
    pub bundle_pub: PathBuf,
    pub command: SigningKey,
    pub command_pub: PathBuf,
    /// Trusted by nobody.
    pub rogue: SigningKey,
}

impl Keys {
    pub fn new(dir: &Path) -> Keys {
        std::fs::create_dir_all(dir).unwrap();
        let bundle = keys::generate().unwrap();
        let command = keys::generate().unwrap();
        let bundle_pub = dir.join("bundle.pub");
        let command_pub = dir.join("command.pub");
        std::fs::write(&bundle_pub, keys::public_pem(&bundle.verifying_key())).unwrap();
        std::fs::write(&command_pub, keys::public_pem(&command.verifying_key())).unwrap();
        Keys {
            bundle,
            bundle_pub,
            command,
            command_pub,
            rogue: keys::generate().unwrap(),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A rollout command for `b` at `location`, valid for ten minutes from now.
pub fn rollout(fleet: &str, seq: u64, b: &Built, location: &str) -> Command {
    Command {
        format: shared::command::FORMAT.into(),
        format_version: shared::command::FORMAT_VERSION,
        rollout_id: format!("r{seq}-{}", b.model_id),
        fleet: fleet.into(),
        target: Target::All,
        sequence: seq,
        not_before_ms: now_ms() - 60_000,
        not_after_ms: now_ms() + 600_000,
        action: Action::Rollout {
            model_id: b.model_id.clone(),
            bundle: location.into(),
            manifest_sha256: b.manifest_sha256.clone(),
            bundle_bytes: b.bytes,
            model_created_ms: b.created_ms,
        },
    }
}

/// The JSON of `cmd`'s envelope signed with `key`.
pub fn signed(cmd: &Command, key: &SigningKey) -> String {
    serde_json::to_string(&cmd.sign(key).unwrap()).unwrap()
}

/// How to start an agent (kept to restart it the same way).
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub device: String,
    pub fleet: String,
    pub data_dir: PathBuf,
    pub broker: String,
    pub factory: PathBuf,
    pub bundle_pub: PathBuf,
    pub command_pub: PathBuf,
    pub config: PathBuf,
    pub extra: Vec<String>,
    /// stderr of every start, appended.
    pub log: PathBuf,
    /// The command that runs the agent (e.g. qemu and an ARM build); empty: this build's.
    pub program: Vec<String>,
}

/// A running `edge-agent run`; SIGKILLed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub spec: AgentSpec,
    pub started: Instant,
}

impl Agent {
    /// Starts the agent and waits for its listening line (panics with its log if it exits).
    pub fn start(spec: &AgentSpec) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .unwrap();
        let started = Instant::now();
        let mut cmd = match spec.program.split_first() {
            Some((first, rest)) => {
                let mut c = std::process::Command::new(first);
                c.args(rest);
                c
            }
            None => crate::common::agent(),
        };
        let mut child = cmd
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(&spec.config)
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(["--device-id", &spec.device, "--fleet", &spec.fleet])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--broker", &spec.broker])
            .arg("--bundle")
            .arg(&spec.factory)
            .arg("--bundle-key")
            .arg(&spec.bundle_pub)
            .arg("--command-key")
            .arg(&spec.command_pub)
            .args(&spec.extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening http://") else {
            let status = child.wait().unwrap();
            panic!(
                "the agent exited ({status}) instead of listening; log:\n{}",
                tail(&spec.log)
            );
        };
        // keep draining stdout so that the agent never blocks on it
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Agent {
            child,
            addr: addr.to_string(),
            spec: spec.clone(),
            started,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asserts the process is still running (it did not crash).
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("the agent exited: {st}; log:\n{}", tail(&self.spec.log));
        }
    }

    /// SIGKILL, then a new process on the same data folder.
    pub fn restart(&mut self) {
        self.kill9();
        *self = Agent::start(&self.spec.clone());
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Value {
        let (st, body) = crate::common::try_http(
            &self.addr,
            "GET",
            path,
            "",
            "text/plain",
            b"",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(st, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET /v1/rollout`.
    /// Waits out the moment after start when the driver has not yet filled it in.
    pub fn rollout(&self) -> Value {
        let t0 = std::time::Instant::now();
        loop {
            let r = self.get("/v1/rollout");
            if r["state"] != "starting" || t0.elapsed() > Duration::from_secs(10) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One prediction: its status and the answering model.
    pub fn predict(&self) -> (u16, Option<String>) {
        predict(&self.addr)
    }

    /// Waits until `/v1/rollout` satisfies `pred`.
    pub fn wait_rollout(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.rollout();
            if pred(&v) {
                return v;
            }
            if t0.elapsed() > limit {
                panic!(
                    "/v1/rollout never {what} within {limit:?}: {v:#}\nlog:\n{}",
                    tail(&self.spec.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A field of /proc/PID/status in kB.
    pub fn proc_kb(&self, field: &str) -> Option<u64> {
        crate::common::proc_kb(self.pid(), field)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last 60 lines of a log file.
pub fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn image() -> &'static [u8] {
    static IMG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMG.get_or_init(|| crate::common::png(32, 32, 7))
}

/// One `POST /v1/predict` of a small PNG: status (0 when the connection failed) and model.
pub fn predict(addr: &str) -> (u16, Option<String>) {
    match crate::common::try_http(
        addr,
        "POST",
        "/v1/predict",
        "",
        "image/png",
        image(),
        Duration::from_secs(10),
    ) {
        Ok((st, body)) => {
            let model = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["model_id"].as_str().map(str::to_string));
            (st, model)
        }
        Err(_) => (0, None),
    }
}

/// One answer of a [`Load`].
#[derive(Clone, Debug)]
pub struct Hit {
    /// Which load thread (each thread's hits are in order).
    pub thread: usize,
    pub at: Instant,
    pub status: u16,
    pub model: Option<String>,
    pub seconds: f64,
}

/// Requests in a loop from `threads` threads against an address that may change (the
/// agent restarts on a new port) until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub addr: Arc<Mutex<String>>,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: &str, threads: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = Arc::new(Mutex::new(addr.to_string()));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|thread| {
                let (stop, addr, hits) = (stop.clone(), addr.clone(), hits.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let a = addr.lock().unwrap().clone();
                        let t0 = Instant::now();
                        let (status, model) = predict(&a);
                        hits.lock().unwrap().push(Hit {
                            thread,
                            at: t0,
                            status,
                            model,
                            seconds: t0.elapsed().as_secs_f64(),
                        });
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            addr,
            hits,
            threads,
        }
    }

    pub fn retarget(&self, addr: &str) {
        *self.addr.lock().unwrap() = addr.to_string();
    }

    pub fn stop(mut self) -> Vec<Hit> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let h = self.hits.lock().unwrap().clone();
        h
    }
}

/// Asserts that every answer came from a verified model.
pub fn assert_verified(hits: &[Hit], verified: &BTreeSet<String>) {
    for h in hits {
        if let Some(m) = &h.model {
            assert!(
                verified.contains(m),
                "an answer came from {m}, which is not a verified model ({verified:?})"
            );
        }
    }
}

/// Asserts that each load thread saw the models in `order` (runs of one model folded;
/// a thread may miss a short run): what an atomic swap allows.
pub fn assert_order(hits: &[Hit], order: &[&str]) {
    let threads: BTreeSet<usize> = hits.iter().map(|h| h.thread).collect();
    for t in threads {
        let mut runs: Vec<&str> = hits
            .iter()
            .filter(|h| h.thread == t)
            .filter_map(|h| h.model.as_deref())
            .collect();
        runs.dedup();
        let mut want = order.iter();
        for r in &runs {
            assert!(
                want.any(|w| w == r),
                "thread {t} saw {runs:?}, not in the order {order:?}"
            );
        }
    }
}

/// The `p`-th percentile of `v` (sorted in place), in the unit of `v`.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A tmpfs of a fixed size mounted on a folder; unmounted (lazily) on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `dir` (created); `Err(why)` when `mount` fails.
    pub fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {}: {} {}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Bytes free for an unprivileged writer on the file system holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes only into the struct we hand it; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    #[allow(clippy::unnecessary_cast)]
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    free
}
