//! The MQTT module against real Mosquitto processes. Every test starts its own private
//! broker (`mosquitto -c FILE` on a free loopback port, persistence off), so tests can stop
//! it, give it TLS or passwords, and run in parallel; the machine's broker on :1883 is never
//! touched. A second, raw rumqttc client observes and publishes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_agent::mqtt::{self, backoff, Inbound, MqttSettings, Source};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[path = "common/pki.rs"]
mod pki;

use pki::{pki, write};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const WILL: &[u8] = mqtt::DEFAULT_OFFLINE_WILL;

#[path = "common/port.rs"]
mod port;
use port::free_port;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A private Mosquitto: its config, log and certificates live in a temp dir; killed on drop.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    extra: String,
    child: Option<Child>,
}

impl Broker {
    fn start(extra: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &str) -> Broker {
        let mut b = Broker {
            dir,
            port: free_port(),
            extra: extra.to_owned(),
            child: None,
        };
        b.launch();
        b
    }

    fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let anonymous = if self.extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        // `user root`: as root, mosquitto would otherwise switch to the mosquitto user and
        // lose access to this private temp dir
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\npersistence false\nuser root\n{anonymous}{}\n",
                self.port, self.extra
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log file");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                panic!("mosquitto did not listen on {}: {}", self.port, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn settings(url: &str, id: &str, fleet: &str) -> MqttSettings {
    let mut s = MqttSettings::new(url, id, fleet);
    s.keep_alive = Duration::from_secs(5);
    s.backoff_min = Duration::from_millis(100);
    s.backoff_max = Duration::from_secs(1);
    s
}

/// The next inbound event that `pick` accepts, within `within`; the others are skipped.
async fn expect<T>(
    rx: &mut mpsc::Receiver<Inbound>,
    within: Duration,
    what: &str,
    mut pick: impl FnMut(&Inbound) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => {
                if let Some(t) = pick(&ev) {
                    return t;
                }
                seen.push(ev);
            }
            Ok(None) => panic!("channel closed waiting for {what}; seen {seen:?}"),
            Err(_) => panic!("no {what} within {within:?}; seen {seen:?}"),
        }
    }
}

async fn up(rx: &mut mpsc::Receiver<Inbound>) -> bool {
    expect(rx, Duration::from_secs(10), "Up", |e| match e {
        Inbound::Up { session_present } => Some(*session_present),
        _ => None,
    })
    .await
}

async fn down(rx: &mut mpsc::Receiver<Inbound>) -> String {
    expect(rx, Duration::from_secs(10), "Down", |e| match e {
        Inbound::Down { error, .. } => Some(error.clone()),
        _ => None,
    })
    .await
}

/// A raw rumqttc client that records every publish it receives.
struct Observer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    async fn new(port: u16, filters: &[&str]) -> Observer {
        let mut opts = MqttOptions::new(unique("obs"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (acked_tx, mut acked_rx) = mpsc::unbounded_channel();
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
        }
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = acked_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for _ in filters {
            tokio::time::timeout(Duration::from_secs(5), acked_rx.recv())
                .await
                .expect("observer SubAck");
        }
        Observer { client, rx, task }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Bytes>, props: Option<u32>) {
        let payload: Bytes = payload.into();
        match props {
            Some(expiry) => self
                .client
                .publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    payload,
                    PublishProperties {
                        message_expiry_interval: Some(expiry),
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            None => self
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap(),
        }
    }

    /// The next publish on `topic`, within `within`.
    async fn next_on(&mut self, topic: &str, within: Duration) -> Publish {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if p.topic == topic.as_bytes() => return p,
                Ok(Some(_)) => {}
                _ => panic!("observer: nothing on {topic} within {within:?}"),
            }
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn command(ev: &Inbound) -> Option<(Source, Bytes, Option<Duration>)> {
    match ev {
        Inbound::Command {
            source,
            payload,
            expires_in,
            ..
        } => Some((*source, payload.clone(), *expires_in)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_commands_on_both_topics_and_nothing_else() {
    let t0 = Instant::now();
    let broker = Broker::start("");
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let (publisher, mut rx, task) =
        mqtt::spawn(settings(&broker.url(), &id, &fleet), WILL.to_vec()).unwrap();
    assert!(!up(&mut rx).await, "a fresh broker has no session");

    let mut obs = Observer::new(broker.port, &[&format!("devices/{id}/#")]).await;
    // Up comes after the SubAck: a command sent now arrives
    obs.publish(&format!("devices/{id}/cmd"), "c1", Some(60))
        .await;
    let (src, payload, expiry) =
        expect(&mut rx, Duration::from_secs(5), "device command", command).await;
    assert_eq!((src, &payload[..]), (Source::Device, &b"c1"[..]));
    let expiry = expiry.expect("the broker passes the remaining expiry on");
    assert!(
        expiry > Duration::ZERO && expiry <= Duration::from_secs(60),
        "{expiry:?}"
    );

    obs.publish(&format!("devices/other-{id}/cmd"), "not mine", None)
        .await;
    obs.publish(&format!("fleet/other-{fleet}/rollout"), "not mine", None)
        .await;
    obs.publish(&format!("fleet/{fleet}/rollout"), "r1", None)
        .await;
    let (src, payload, expiry) =
        expect(&mut rx, Duration::from_secs(5), "fleet command", command).await;
    assert_eq!(
        (src, &payload[..], expiry),
        (Source::Fleet, &b"r1"[..], None)
    );
    // the other devices' messages were published first: had they come, they came before
    let late = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(late.is_err(), "unexpected: {late:?}");

    // the outgoing side: events carry an expiry, telemetry goes out at QoS 0
    publisher.publish_event(r#"{"e":1}"#).unwrap();
    let ev = obs
        .next_on(&format!("devices/{id}/events"), Duration::from_secs(5))
        .await;
    assert_eq!(ev.qos, QoS::AtLeastOnce);
    let exp = ev.properties.and_then(|p| p.message_expiry_interval);
    assert!(matches!(exp, Some(1..=600)), "{exp:?}");
    publisher.publish_telemetry(r#"{"n":2}"#).unwrap();
    let tel = obs
        .next_on(&format!("devices/{id}/telemetry"), Duration::from_secs(5))
        .await;
    assert_eq!(
        (tel.qos, &tel.payload[..]),
        (QoS::AtMostOnce, &br#"{"n":2}"#[..])
    );
    let big = vec![b'x'; 256 * 1024 + 1];
    assert!(matches!(
        publisher.publish_event(big),
        Err(mqtt::PublishError::TooLarge { .. })
    ));
    task.abort();
    println!("commands: {:?}", t0.elapsed());
}

/// The retained payload on `topic` as a new subscriber sees it.
async fn retained(port: u16, topic: &str) -> Publish {
    let mut o = Observer::new(port, &[topic]).await;
    let p = o.next_on(topic, Duration::from_secs(5)).await;
    assert!(p.retain, "{topic}: not retained");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_on_abort_then_status_replaces_it() {
    let t0 = Instant::now();
    let broker = Broker::start("");
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let status = format!("devices/{id}/status");
    let mut obs = Observer::new(broker.port, &[&status]).await;

    let (publisher, mut rx, task) =
        mqtt::spawn(settings(&broker.url(), &id, &fleet), WILL.to_vec()).unwrap();
    up(&mut rx).await;
    publisher
        .publish_status(r#"{"state":"online"}"#, true)
        .unwrap();
    let p = obs.next_on(&status, Duration::from_secs(5)).await;
    assert_eq!(&p.payload[..], br#"{"state":"online"}"#);

    // aborting drops the socket without DISCONNECT: the broker publishes the will
    task.abort();
    let p = obs.next_on(&status, Duration::from_secs(5)).await;
    assert_eq!(&p.payload[..], WILL);
    assert_eq!(&retained(broker.port, &status).await.payload[..], WILL);
    assert!(publisher.is_closed());
    assert_eq!(
        publisher.publish_telemetry("x"),
        Err(mqtt::PublishError::Closed)
    );

    // back again (same id, the broker kept the session): a new status replaces the will
    let (publisher, mut rx, task) =
        mqtt::spawn(settings(&broker.url(), &id, &fleet), WILL.to_vec()).unwrap();
    assert!(
        up(&mut rx).await,
        "session kept (clean start false + expiry)"
    );
    publisher
        .publish_status(r#"{"state":"idle"}"#, true)
        .unwrap();
    obs.next_on(&status, Duration::from_secs(5)).await;
    assert_eq!(
        &retained(broker.port, &status).await.payload[..],
        br#"{"state":"idle"}"#
    );
    task.abort();
    println!("will on abort: {:?}", t0.elapsed());
}

/// A TCP relay that can go silent: sockets stay open and nothing passes, as when a
/// device loses its network without a FIN or RST.
async fn relay(target: u16, frozen: Arc<AtomicBool>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let frozen = frozen.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, frozen.clone()), pump(sr, cw, frozen));
            });
        }
    });
    port
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        if frozen.load(Ordering::SeqCst) {
            // hold both sockets open, pass nothing
            std::future::pending::<()>().await;
        }
        if n == 0 || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_when_the_network_goes_silent() {
    let t0 = Instant::now();
    let broker = Broker::start("");
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let status = format!("devices/{id}/status");
    let mut obs = Observer::new(broker.port, &[&status]).await;
    let frozen = Arc::new(AtomicBool::new(false));
    let port = relay(broker.port, frozen.clone()).await;

    let (publisher, mut rx, task) = mqtt::spawn(
        settings(&format!("mqtt://127.0.0.1:{port}"), &id, &fleet),
        WILL.to_vec(),
    )
    .unwrap();
    up(&mut rx).await;
    publisher
        .publish_status(r#"{"state":"online"}"#, true)
        .unwrap();
    obs.next_on(&status, Duration::from_secs(5)).await;

    frozen.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    // keep-alive 5 s: the broker gives up after 1.5 x 5 s of silence (measured: ~11 s
    // after the cut, mosquitto checks keep-alives lazily)
    let p = obs.next_on(&status, Duration::from_secs(20)).await;
    assert_eq!(&p.payload[..], WILL);
    let after = cut.elapsed();
    assert!(
        after >= Duration::from_secs(4),
        "will after {after:?}: too early"
    );
    // meanwhile the client noticed too (no PINGRESP) and is retrying
    down(&mut rx).await;
    task.abort();
    println!("will on silence after {after:?}; total {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_reconnects_resubscribes_and_republishes_status() {
    let t0 = Instant::now();
    let mut broker = Broker::start("");
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let (publisher, mut rx, task) =
        mqtt::spawn(settings(&broker.url(), &id, &fleet), WILL.to_vec()).unwrap();
    assert!(!up(&mut rx).await);
    publisher
        .publish_status(r#"{"state":"serving"}"#, true)
        .unwrap();

    broker.stop();
    down(&mut rx).await;
    // a few refused attempts while it is away
    tokio::time::sleep(Duration::from_millis(800)).await;
    broker.launch();
    // persistence off: the session is gone, so the client must subscribe again itself
    assert!(
        !up(&mut rx).await,
        "session_present after a restart without persistence"
    );

    let obs = Observer::new(broker.port, &[]).await;
    obs.publish(&format!("devices/{id}/cmd"), "after-restart", None)
        .await;
    let (src, payload, _) = expect(
        &mut rx,
        Duration::from_secs(5),
        "command after restart",
        command,
    )
    .await;
    assert_eq!((src, &payload[..]), (Source::Device, &b"after-restart"[..]));
    // the retained status the restart lost was put back without the caller's help
    let st = retained(broker.port, &format!("devices/{id}/status")).await;
    assert_eq!(&st.payload[..], br#"{"state":"serving"}"#);
    task.abort();
    println!("restart: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_attempts_are_spaced_by_backoff() {
    let port = free_port(); // nothing listens there
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let s = settings(&format!("mqtt://127.0.0.1:{port}"), &id, &fleet);
    let (base, max) = (s.backoff_min, s.backoff_max);
    let (_publisher, mut rx, task) = mqtt::spawn(s, WILL.to_vec()).unwrap();
    let window = Duration::from_secs(3);
    let deadline = tokio::time::Instant::now() + window;
    let mut delays = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        match ev {
            Inbound::Down { retry_in, error } => {
                assert!(error.contains("I/O"), "{error}");
                delays.push(retry_in)
            }
            other => panic!("{other:?}"),
        }
    }
    task.abort();
    for (n, d) in delays.iter().enumerate() {
        let cap = backoff::ceiling(n as u32, base, max);
        assert!(*d <= cap, "attempt {n}: {d:?} > {cap:?}");
    }
    // refused connects on loopback take microseconds: without the sleeps there would be
    // thousands. With 100 ms doubling to 1 s, 3 s hold about 8 (at least 6 when every draw
    // is the ceiling; many more only if most draws are near zero).
    println!("attempts in {window:?}: {} ({delays:?})", delays.len());
    assert!(
        (4..=25).contains(&delays.len()),
        "{} attempts in {window:?}",
        delays.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_our_device_and_refuses_others() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let k = pki(dir.path(), &id);
    let conf = k.mosquitto_tls();
    let broker = Broker::start_in(dir, &conf);
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let tls = |cert: Option<&Path>, key: Option<&Path>, ca: &Path| {
        let mut s = settings(&url, &id, &fleet);
        s.ca_file = Some(ca.to_owned());
        s.client_cert = cert.map(Path::to_owned);
        s.client_key = key.map(Path::to_owned);
        s
    };

    let (_p, mut rx, task) = mqtt::spawn(
        tls(Some(&k.client_cert), Some(&k.client_key), &k.ca),
        WILL.to_vec(),
    )
    .unwrap();
    up(&mut rx).await;
    task.abort();

    for (what, s) in [
        ("no client certificate", tls(None, None, &k.ca)),
        (
            "certificate from another CA",
            tls(Some(&k.rogue_cert), Some(&k.rogue_key), &k.ca),
        ),
        (
            "broker not signed by the trusted CA",
            tls(Some(&k.client_cert), Some(&k.client_key), &k.rogue_ca),
        ),
    ] {
        let (_p, mut rx, task) = mqtt::spawn(s, WILL.to_vec()).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no event"));
        match first {
            Some(Inbound::Down { error, .. }) => {
                println!("{what}: {error}");
                assert!(error.starts_with("TLS"), "{what}: {error}");
            }
            other => panic!("{what}: expected Down, got {other:?}"),
        }
        task.abort();
    }

    // files that are not PEM are a configuration error, named with the file
    let mut s = tls(None, None, &k.client_key);
    s.ca_file = Some(broker.path("mosquitto.conf"));
    let e = mqtt::spawn(s, WILL.to_vec()).err().expect("not a CA file");
    assert!(e.to_string().contains("mosquitto.conf"), "{e}");
    println!("mtls: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_right_and_wrong() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pwfile)
        .args(["agent", "right-pass"])
        .status()
        .expect("mosquitto_passwd");
    assert!(st.success());
    let conf = format!(
        "allow_anonymous false\npassword_file {}\n",
        pwfile.display()
    );
    let right = write(dir.path(), "right", "right-pass\n");
    let wrong = write(dir.path(), "wrong", "wrong-pass\n");
    let broker = Broker::start_in(dir, &conf);
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let with = |file: &Path| {
        let mut s = settings(&broker.url(), &id, &fleet);
        s.username = Some("agent".into());
        s.password_file = Some(file.to_owned());
        s
    };

    let (_p, mut rx, task) = mqtt::spawn(with(&right), WILL.to_vec()).unwrap();
    up(&mut rx).await;
    task.abort();

    let (_p, mut rx, task) = mqtt::spawn(with(&wrong), WILL.to_vec()).unwrap();
    let error = down(&mut rx).await;
    println!("wrong password: {error}");
    assert!(
        error.contains("refused")
            && (error.contains("BadUserNamePassword") || error.contains("NotAuthorized")),
        "{error}"
    );
    task.abort();

    let (_p, mut rx, task) =
        mqtt::spawn(settings(&broker.url(), &id, &fleet), WILL.to_vec()).unwrap();
    let error = down(&mut rx).await;
    assert!(error.contains("refused"), "anonymous: {error}");
    task.abort();
    println!("password: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_command_is_not_delivered_and_the_client_stays_up() {
    let t0 = Instant::now();
    let broker = Broker::start("");
    let (id, fleet) = (unique("dev"), unique("fleet"));
    let mut s = settings(&broker.url(), &id, &fleet);
    s.max_packet_bytes = 4096;
    let (_p, mut rx, task) = mqtt::spawn(s, WILL.to_vec()).unwrap();
    up(&mut rx).await;
    let obs = Observer::new(broker.port, &[]).await;
    let topic = format!("devices/{id}/cmd");
    obs.publish(&topic, "first", None).await;
    expect(&mut rx, Duration::from_secs(5), "first", command).await;

    obs.publish(&topic, vec![b'x'; 64 * 1024], None).await;
    obs.publish(&topic, "after", None).await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let done = matches!(&ev, Inbound::Command { payload, .. } if &payload[..] == b"after");
        got.push(ev);
        if done {
            break;
        }
    }
    // the broker knew our limit from CONNECT and dropped the big one for us: no Down
    let sizes: Vec<_> = got
        .iter()
        .map(|e| match e {
            Inbound::Command { payload, .. } => format!("command {} B", payload.len()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, ["command 5 B"], "{got:?}");
    assert!(!task.is_finished());
    task.abort();
    println!("oversized: {:?}", t0.elapsed());
}

fn vm_rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Runs in a child process of its own (see below): other tests' threads would blur RSS.
#[tokio::test(flavor = "current_thread")]
#[ignore = "run by inflight_setting_keeps_the_client_small in a child process"]
async fn rss_child() {
    let port = free_port();
    let before = vm_rss_kb();
    let (_p, _rx, task) = mqtt::spawn(
        settings(&format!("mqtt://127.0.0.1:{port}"), "rss", "f"),
        WILL.to_vec(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ours = vm_rss_kb();
    // the same, with rumqttc's default outgoing in-flight limit (65,535)
    let (_c, _el) = AsyncClient::new(MqttOptions::new("rss2", "127.0.0.1", port), 64);
    let default = vm_rss_kb();
    task.abort();
    println!(
        "RSS_KB ours={} default={}",
        ours.saturating_sub(before),
        default.saturating_sub(ours)
    );
}

#[test]
fn inflight_setting_keeps_the_client_small() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["rss_child", "--exact", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RSS_KB"))
        .unwrap_or_else(|| panic!("no RSS line: {text}"));
    println!("{line}");
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (ours, default) = (field("ours="), field("default="));
    assert!(ours < 4 * 1024, "our client added {ours} kB");
    // and the default really is the cost being avoided
    assert!(default > 8 * 1024, "default client added only {default} kB");
}
