//! MQTT: the agent's only connection to the broker (MQTT v5 through `rumqttc`).
//!
//! Topics (device `<id>`, fleet `<fleet>`, see [`topics`]):
//!
//! | topic                   | direction | QoS | retained |
//! |-------------------------|-----------|-----|----------|
//! | `devices/<id>/cmd`      | in        | 1   |          |
//! | `fleet/<fleet>/rollout` | in        | 1   | (by the sender) |
//! | `devices/<id>/status`   | out       | 1   | yes; also the last will |
//! | `devices/<id>/events`   | out       | 1   | no; with a message expiry |
//! | `devices/<id>/telemetry`| out       | 0   | no |
//!
//! The shape: [`spawn`] starts one thin IO task that owns rumqttc's event loop; the caller
//! gets a cloneable [`Publisher`] and a bounded receiver of [`Inbound`] events. What can be
//! reasoned about without a broker is in plain functions: [`parse_url`], [`topics`],
//! [`backoff`].
//!
//! What the IO task adds to rumqttc, and why:
//! - reconnects with exponential backoff and full jitter ([`backoff`]): rumqttc retries as
//!   fast as it is polled;
//! - subscribes again after every ConnAck whose `session_present` is false: rumqttc does not,
//!   and a broker restart without persistence (or an expired session) forgets them; the
//!   session itself is kept (clean start false + a session expiry), so a short outage loses
//!   no QoS 1 command;
//! - republishes the latest status after every ConnAck, because the last will has replaced
//!   it with the offline payload on the broker;
//! - bounds what comes from outside: maximum incoming packet size (told to the broker in
//!   CONNECT, so it drops larger messages for this client instead of cutting the
//!   connection), a bounded inbound queue, a small outgoing in-flight window (rumqttc's
//!   default preallocates 65,536 slots, about 14 MB per client).

pub mod backoff;
mod io;
pub mod topics;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

pub use io::{spawn, PublishError, Publisher};
pub use shared::broker::{parse_url, BrokerError, BrokerUrl};
pub use topics::{SegmentError, Source};

/// The last will used when the caller has no other: the status topic carries JSON, so the
/// will is JSON too (a consumer that parses every status parses this one).
pub const DEFAULT_OFFLINE_WILL: &[u8] = br#"{"state":"offline"}"#;

/// Everything the connection needs. [`MqttSettings::new`] fills the defaults.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (see [`parse_url`]).
    pub url: String,
    /// This device: a single topic level, also the MQTT client id (so the broker keeps one
    /// session per device and an ACL can say `pattern write devices/%c/#`).
    pub device_id: String,
    /// The fleet whose rollouts this device follows: a single topic level.
    pub fleet: String,
    /// PEM file with the CA(s) that signed the broker's certificate; required for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain for mutual TLS; together with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `client_cert`.
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    /// File holding the password (one line; a trailing newline is dropped), so that it is
    /// never on a command line or in a config file that gets shared.
    pub password_file: Option<PathBuf>,
    /// MQTT keep-alive: the broker declares the device gone (and publishes the will) after
    /// 1.5 times this without traffic. 5 s to 65,535 s (rumqttc panics below 5 s).
    pub keep_alive: Duration,
    /// First reconnect window; each failure doubles it up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Outgoing QoS 1 publishes in flight (1 to 1024; the broker's receive maximum lowers
    /// it further). rumqttc preallocates one slot per possible packet id.
    pub inflight: u16,
    /// Largest MQTT packet accepted from the broker, and largest payload this side sends.
    pub max_packet_bytes: u32,
    /// How long the broker keeps this device's session (subscriptions, queued QoS 1
    /// commands) while it is away.
    pub session_expiry: Duration,
    /// Message expiry interval put on events: progress older than this is of no use.
    pub event_expiry: Option<Duration>,
    /// Inbound events held for the caller before the IO task waits (and stops reading).
    pub inbound_queue: usize,
    /// Outgoing requests held for the IO task; beyond it `publish_*` answer `QueueFull`.
    pub outbound_queue: usize,
}

impl MqttSettings {
    /// Defaults: keep-alive 30 s, backoff 500 ms to 60 s, 32 in flight, 256 KiB packets,
    /// session kept 1 h, events expire after 10 min, queues of 32 and 64.
    pub fn new(
        url: impl Into<String>,
        device_id: impl Into<String>,
        fleet: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            device_id: device_id.into(),
            fleet: fleet.into(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password_file: None,
            keep_alive: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            inflight: 32,
            max_packet_bytes: 256 * 1024,
            session_expiry: Duration::from_secs(3600),
            event_expiry: Some(Duration::from_secs(600)),
            inbound_queue: 32,
            outbound_queue: 64,
        }
    }
}

/// Why the connection could not be set up (configuration; connection failures after start
/// are [`Inbound::Down`] events, retried).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The broker URL, or a TLS file ([`shared::broker`]).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("setting {name}: {reason}")]
    Setting { name: &'static str, reason: String },
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the IO task tells the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Connected, and subscribed: sent after the ConnAck, or after the SubAck when the IO
    /// task had to subscribe (so a command published after `Up` is delivered).
    /// `session_present: false` means the broker had no session: the IO task subscribed
    /// again and republishes the latest status itself.
    Up { session_present: bool },
    /// A connect attempt failed or the connection dropped; the next attempt comes after
    /// `retry_in`. `error` names the cause (a TLS failure starts with `TLS:`, a refusal
    /// by the broker names its reason code).
    Down { error: String, retry_in: Duration },
    /// A message on one of the two subscribed topics.
    Command {
        source: Source,
        payload: Bytes,
        /// Delivered from the broker's retained store (e.g. the fleet's current rollout
        /// when subscribing), not live.
        retained: bool,
        /// The remaining message expiry interval the broker reported, if the sender set
        /// one; expired messages are dropped before they get here.
        expires_in: Option<Duration>,
    },
}

fn setting(name: &'static str, reason: impl Into<String>) -> MqttError {
    MqttError::Setting {
        name,
        reason: reason.into(),
    }
}

/// Checks the settings that rumqttc would otherwise panic on or silently clamp.
fn validate(s: &MqttSettings) -> Result<BrokerUrl, MqttError> {
    let url = parse_url(&s.url)?;
    topics::validate_segment("device id", &s.device_id)?;
    topics::validate_segment("fleet", &s.fleet)?;
    if s.keep_alive < Duration::from_secs(5) || s.keep_alive > Duration::from_secs(65_535) {
        return Err(setting(
            "keep_alive",
            format!("{:?} is outside 5 s ..= 65535 s", s.keep_alive),
        ));
    }
    if s.backoff_min.is_zero() || s.backoff_max < s.backoff_min {
        return Err(setting(
            "backoff_min/backoff_max",
            format!(
                "need 0 < min <= max, got {:?} and {:?}",
                s.backoff_min, s.backoff_max
            ),
        ));
    }
    if !(1..=1024).contains(&s.inflight) {
        return Err(setting(
            "inflight",
            format!("{} is outside 1..=1024", s.inflight),
        ));
    }
    // 268,435,455 is the largest packet MQTT can encode
    if !(1024..=268_435_455).contains(&s.max_packet_bytes) {
        return Err(setting(
            "max_packet_bytes",
            format!("{} is outside 1024..=268435455", s.max_packet_bytes),
        ));
    }
    if s.session_expiry.as_secs() > u64::from(u32::MAX) {
        return Err(setting("session_expiry", "more than u32::MAX seconds"));
    }
    if let Some(e) = s.event_expiry {
        if e.as_secs() == 0 || e.as_secs() > u64::from(u32::MAX) {
            return Err(setting("event_expiry", "must be 1 s ..= u32::MAX s"));
        }
    }
    if s.inbound_queue == 0 || s.outbound_queue == 0 {
        return Err(setting(
            "inbound_queue/outbound_queue",
            "must be at least 1",
        ));
    }
    if url.tls && s.ca_file.is_none() {
        return Err(setting("ca_file", format!("{} needs a CA file", s.url)));
    }
    if !url.tls && (s.ca_file.is_some() || s.client_cert.is_some() || s.client_key.is_some()) {
        return Err(setting(
            "ca_file/client_cert/client_key",
            format!(
                "TLS files given for the plain URL {}; use mqtts:// to encrypt",
                s.url
            ),
        ));
    }
    if s.client_cert.is_some() != s.client_key.is_some() {
        return Err(setting(
            "client_cert/client_key",
            "a client certificate and its key go together",
        ));
    }
    if s.password_file.is_some() && s.username.is_none() {
        return Err(setting("password_file", "a password needs a username"));
    }
    Ok(url)
}

/// The password: the file's first line without its line ending.
fn read_password(path: &Path) -> Result<String, MqttError> {
    let text = std::fs::read_to_string(path).map_err(|source| MqttError::File {
        what: "password file",
        path: path.to_owned(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_checked() {
        let good = MqttSettings::new("mqtt://127.0.0.1:1883", "d1", "f");
        assert!(validate(&good).is_ok());
        let check = |f: &dyn Fn(&mut MqttSettings), needle: &str| {
            let mut s = good.clone();
            f(&mut s);
            let e = validate(&s).expect_err(needle).to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        check(&|s| s.device_id = "d/1".into(), "device id");
        check(&|s| s.fleet = "#".into(), "fleet");
        check(&|s| s.keep_alive = Duration::from_secs(1), "keep_alive");
        check(&|s| s.inflight = 0, "inflight");
        check(&|s| s.inflight = 65_535, "inflight");
        check(&|s| s.max_packet_bytes = 10, "max_packet_bytes");
        check(&|s| s.backoff_min = Duration::ZERO, "backoff");
        check(&|s| s.url = "mqtts://b:8883".into(), "ca_file");
        check(&|s| s.ca_file = Some("ca.pem".into()), "plain URL");
        check(
            &|s| {
                s.url = "mqtts://b".into();
                s.ca_file = Some("ca.pem".into());
                s.client_cert = Some("c.pem".into());
            },
            "go together",
        );
        check(&|s| s.password_file = Some("p".into()), "username");
    }

    #[test]
    fn password_first_line() {
        let dir = std::env::temp_dir().join(format!("mqtt-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "s3cret\r\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret");
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_password(&p).unwrap(), "");
        let e = read_password(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("password file") && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
