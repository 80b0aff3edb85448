//! A private Mosquitto broker on a free loopback port (never the machine's own on 1883),
//! an observer of one device's topics (mosquitto_sub) and a publisher (mosquitto_pub).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

// every test file that includes this one declares `mod port` (common/port.rs)
use super::port::free_port;

fn mosquitto() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("mosquitto in /usr/sbin or /usr/bin")
}

/// A private broker: `listener PORT 127.0.0.1`, anonymous, no persistence. Killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// A second listener with TLS: its port and its options (cafile, certfile, ...).
    tls: Option<(u16, String)>,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_tls(None)
    }

    /// With `tls`, a second listener on its own port takes these TLS options (the first,
    /// plain one stays for the test's observer and publisher).
    pub fn start_tls(tls: Option<&str>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Broker {
            child: None,
            port: free_port(),
            tls: tls.map(|o| (free_port(), o.to_string())),
            dir,
        };
        b.spawn();
        b
    }

    /// `mqtts://127.0.0.1:PORT` of the TLS listener.
    pub fn tls_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("a broker started with TLS");
        format!("mqtts://127.0.0.1:{port}")
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nlog_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nmax_keepalive 65535\n",
            self.port,
            self.dir.path().join("mosquitto.log").display()
        );
        if let Some((port, options)) = &self.tls {
            text += &format!("listener {port} 127.0.0.1\n{options}");
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let t0 = Instant::now();
        let tls_port = self.tls.as_ref().map_or(self.port, |(p, _)| *p);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A fresh broker (no retained messages, no sessions) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Publishes `payload` on `topic` (QoS 1).
    pub fn publish(&self, topic: &str, payload: &str, retain: bool) {
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-V", "mqttv5", "-q", "1", "-t", topic, "-m", payload]);
        if retain {
            c.arg("-r");
        }
        let out = c.output().expect("running mosquitto_pub");
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message seen by an [`Observer`].
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub json: Value,
    pub at: Instant,
}

/// Everything published under `devices/<id>/#`, as JSON, in order (mosquitto_sub `-v`).
pub struct Observer {
    child: Child,
    msgs: Arc<Mutex<Vec<Msg>>>,
    pub device: String,
}

impl Observer {
    pub fn start(broker: &Broker, device: &str) -> Observer {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-V", "mqttv5", "-q", "1", "-v"])
            .args(["-t", &format!("devices/{device}/#")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Some((topic, payload)) = line.split_once(' ') else {
                    continue;
                };
                let json = serde_json::from_str(payload)
                    .unwrap_or_else(|_| Value::String(payload.to_string()));
                m.lock().unwrap().push(Msg {
                    topic: topic.to_string(),
                    json,
                    at: Instant::now(),
                });
            }
        });
        let o = Observer {
            child,
            msgs,
            device: device.to_string(),
        };
        // subscribed once a probe of ours comes back
        let probe = format!("devices/{device}/probe");
        let t0 = Instant::now();
        loop {
            broker.publish(&probe, "{\"probe\":true}", false);
            let seen = |o: &Observer| o.all().iter().any(|m| m.topic == probe);
            let t1 = Instant::now();
            while !seen(&o) && t1.elapsed() < Duration::from_millis(300) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if seen(&o) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "observer never subscribed"
            );
        }
        o
    }

    pub fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// How many messages so far (a mark to look after).
    pub fn mark(&self) -> usize {
        self.msgs.lock().unwrap().len()
    }

    fn topic(&self, leaf: &str) -> String {
        format!("devices/{}/{leaf}", self.device)
    }

    /// Events (`devices/<id>/events`) after `mark`.
    pub fn events_since(&self, mark: usize) -> Vec<Msg> {
        let t = self.topic("events");
        self.all()
            .into_iter()
            .skip(mark)
            .filter(|m| m.topic == t)
            .collect()
    }

    /// The latest status document.
    pub fn status(&self) -> Option<Value> {
        let t = self.topic("status");
        self.all()
            .into_iter()
            .rev()
            .find(|m| m.topic == t)
            .map(|m| m.json)
    }

    /// Waits for an event after `mark` that `pred` accepts; panics with every event seen
    /// after `limit`.
    pub fn wait_event(
        &self,
        mark: usize,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Msg {
        let t0 = Instant::now();
        loop {
            if let Some(m) = self.events_since(mark).into_iter().find(|m| pred(&m.json)) {
                return m;
            }
            if t0.elapsed() > limit {
                panic!(
                    "no event {what} within {limit:?}; events: {:#?}",
                    self.events_since(mark)
                        .iter()
                        .map(|m| m.json.to_string())
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a status that `pred` accepts.
    pub fn wait_status(&self, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.status().filter(|s| pred(s)) {
                return s;
            }
            if t0.elapsed() > limit {
                panic!(
                    "no status {what} within {limit:?}; last: {:?}",
                    self.status()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event's `event` field.
pub fn kind(v: &Value) -> &str {
    v["event"].as_str().unwrap_or("")
}
