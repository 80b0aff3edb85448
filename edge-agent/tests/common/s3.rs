//! A real S3 server (s3s-fs) on loopback, and a fault-injecting TCP proxy to put in front
//! of it. The server is started the way the workspace's end-to-end harness starts it
//! (tests/src/lib.rs, `S3Kind::S3sFs`): a served folder whose subfolders are buckets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const KEY: &str = "edgecp-test";
pub const SECRET: &str = "edgecp-test-secret";

/// An s3s-fs process serving a temporary folder; killed on drop.
pub struct S3sFs {
    child: Child,
    pub port: u16,
    pub root: tempfile::TempDir,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// every test file that includes this one declares `mod port` (common/port.rs)
use super::port::free_port;

/// The s3s-fs binary: `EDGECP_S3S_FS`, or where scripts/test.sh caches it.
pub fn binary() -> PathBuf {
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
        "no s3s-fs binary at {}: run scripts/test.sh (it installs it) or set EDGECP_S3S_FS",
        bin.display()
    );
    bin
}

impl S3sFs {
    pub fn start() -> S3sFs {
        let root = tempfile::tempdir().expect("temporary folder");
        let port = free_port();
        let bin = binary();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "s3s-fs did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        S3sFs { child, port, root }
    }

    /// The folder that holds `bucket`'s objects (objects are files under it).
    pub fn bucket(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("bucket folder");
        dir
    }
}

/// object_store settings for an S3 server at `127.0.0.1:port`. Each request gets its own
/// connection (no idle pool), so the proxy sees one request per connection.
pub fn store_options(port: u16) -> Vec<(String, String)> {
    [
        ("aws_endpoint", format!("http://127.0.0.1:{port}")),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", KEY.into()),
        ("aws_secret_access_key", SECRET.into()),
        ("aws_region", "us-east-1".into()),
        ("pool_max_idle_per_host", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What the proxy does to the next connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Close every connection after it has forwarded this many response bytes.
    CutAfter(u64),
    /// Forward this many response bytes, then nothing more while keeping the connection
    /// open; for the next `connections` connections (then `Pass`).
    Stall { after: u64, connections: u32 },
    /// Answer HTTP 500 to the next `requests` requests without forwarding them.
    Error500 { requests: u32 },
    /// Reset the next `connections` connections as soon as they are accepted.
    Reset { connections: u32 },
}

#[derive(Debug, Default)]
pub struct Stats {
    /// The request line of each connection ("GET /bucket/key HTTP/1.1").
    pub requests: Vec<String>,
    pub cut: u32,
    pub stalled: u32,
    /// For each stalled connection that ended: how long it was held silent before the
    /// client gave it up (the client's stall detection time).
    pub stall_held: Vec<Duration>,
    pub errors_500: u32,
    pub resets: u32,
}

struct State {
    mode: Mode,
    stats: Stats,
}

/// A TCP proxy on loopback in front of `127.0.0.1:upstream`.
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Pass,
            stats: Stats::default(),
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, upstream, st.clone()));
            }
        });
        Proxy { port, state, task }
    }

    pub fn set(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn stats<T>(&self, f: impl FnOnce(&Stats) -> T) -> T {
        f(&self.state.lock().unwrap().stats)
    }

    /// The object keys requested so far (path after the bucket), in order.
    pub fn requested(&self) -> Vec<String> {
        self.stats(|s| {
            s.requests
                .iter()
                .filter_map(|r| r.split(' ').nth(1))
                .map(|p| p.split('?').next().unwrap_or(p).to_string())
                .collect()
        })
    }
}

/// The request head's first line, read from `client` (bytes kept in `head`).
async fn first_line(client: &mut TcpStream, head: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next()?;
    Some(String::from_utf8_lossy(line).into_owned())
}

async fn serve(mut client: TcpStream, upstream: u16, state: Arc<Mutex<State>>) {
    // decided once per connection
    let mode = {
        let mut s = state.lock().unwrap();
        let mode = s.mode.clone();
        match &mut s.mode {
            Mode::Reset { connections } | Mode::Stall { connections, .. } => {
                *connections = connections.saturating_sub(1);
                if *connections == 0 {
                    s.mode = Mode::Pass;
                }
            }
            _ => {}
        }
        mode
    };
    if let Mode::Reset { .. } = mode {
        state.lock().unwrap().stats.resets += 1;
        let _ = client.set_zero_linger();
        return;
    }
    let mut head = Vec::new();
    let Some(line) = first_line(&mut client, &mut head).await else {
        return;
    };
    let answer_500 = {
        let mut s = state.lock().unwrap();
        s.stats.requests.push(line);
        match &mut s.mode {
            Mode::Error500 { requests } if *requests > 0 => {
                *requests -= 1;
                s.stats.errors_500 += 1;
                true
            }
            _ => false,
        }
    };
    if answer_500 {
        let body = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>injected</Message></Error>";
        let answer = format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    if up.write_all(&head).await.is_err() {
        return;
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let mut requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
    });
    let limit = match mode {
        Mode::CutAfter(n) => Some(n),
        Mode::Stall { after, .. } => Some(after),
        _ => None,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match ur.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = match limit {
            Some(l) => n.min((l - sent) as usize),
            None => n,
        };
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
        if limit == Some(sent) {
            match mode {
                Mode::CutAfter(_) => {
                    state.lock().unwrap().stats.cut += 1;
                }
                Mode::Stall { .. } => {
                    state.lock().unwrap().stats.stalled += 1;
                    // keep the connection open, send nothing, until the client goes
                    let t0 = Instant::now();
                    if tokio::time::timeout(Duration::from_secs(60), &mut requests)
                        .await
                        .is_ok()
                    {
                        state.lock().unwrap().stats.stall_held.push(t0.elapsed());
                    }
                }
                _ => {}
            }
            break;
        }
    }
    requests.abort();
}

/// Writes the files of bundle folder `dir` as objects under `bucket_dir/prefix/`.
pub fn upload_dir(dir: &Path, bucket_dir: &Path, prefix: &str) {
    let to = bucket_dir.join(prefix);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
