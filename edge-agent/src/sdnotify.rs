//! systemd's notify protocol (`sd_notify(3)`), without libsystemd: under a `Type=notify`
//! unit systemd sets `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and the
//! agent sends it datagrams of `KEY=value` lines: `READY=1` once it serves, `STATUS=` for
//! `systemctl status`, `STOPPING=1` on shutdown and `WATCHDOG=1` pings when the unit has
//! `WatchdogSec=` (systemd then sets `WATCHDOG_USEC` and `WATCHDOG_PID`).
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing. A failed send is logged
//! and never fatal: the agent serves whether or not its supervisor hears it.
//!
//! The functions that read the environment ([`ready`], [`status`], [`stopping`],
//! [`watchdog_ping`], [`watchdog_interval`], [`spawn_watchdog`]) are thin wrappers over
//! [`NotifyAddr`], [`parse_watchdog`] and [`watchdog_loop`], which take the values as
//! parameters (tests use those: the environment is process-global).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a notification could not be sent, or a variable could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor @name")]
    BadAddress(String),
    #[error("abstract sockets (NOTIFY_SOCKET=@...) exist on Linux only")]
    Unsupported,
    #[error("WATCHDOG_USEC {0:?} is not a positive number of microseconds")]
    BadWatchdogUsec(String),
    #[error("WATCHDOG_PID {0:?} is not a process id")]
    BadWatchdogPid(String),
    #[error("sending to the notify socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Where systemd listens (the value of `NOTIFY_SOCKET`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket: the name after the `@` (sent with a leading NUL byte).
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    /// Reads a `NOTIFY_SOCKET` value: an absolute path or `@name`. Anything else (relative
    /// paths, `vsock:` addresses of newer systemd versions) is refused rather than guessed.
    pub fn parse(value: &OsStr) -> Result<NotifyAddr, NotifyError> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_bytes();
        match bytes.split_first() {
            Some((b'@', name)) if !name.is_empty() => Ok(NotifyAddr::Abstract(name.to_vec())),
            Some((b'/', _)) => Ok(NotifyAddr::Path(PathBuf::from(value))),
            _ => Err(NotifyError::BadAddress(
                value.to_string_lossy().into_owned(),
            )),
        }
    }

    /// Sends `msg` as one datagram from an unbound socket (systemd identifies the sender
    /// by its credentials, not by an address).
    pub fn send(&self, msg: &str) -> Result<(), NotifyError> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let sent = match self {
            NotifyAddr::Path(p) => socket.send_to(msg.as_bytes(), p)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            NotifyAddr::Abstract(name) => {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(msg.as_bytes(), &addr)?
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            NotifyAddr::Abstract(_) => return Err(NotifyError::Unsupported),
        };
        if sent != msg.len() {
            // datagrams are sent whole or not at all; this would be a kernel oddity
            return Err(NotifyError::Io(std::io::Error::other(format!(
                "sent {sent} of {} bytes",
                msg.len()
            ))));
        }
        Ok(())
    }
}

/// A `STATUS=` value on one line: the protocol separates fields by newlines.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// `READY=1`, the status, and our pid (so that `NotifyAccess=main` accepts it even when a
/// wrapper started us).
pub fn ready_message(status: &str, pid: u32) -> String {
    format!("READY=1\nSTATUS={}\nMAINPID={pid}", one_line(status))
}

pub fn status_message(status: &str) -> String {
    format!("STATUS={}", one_line(status))
}

pub const STOPPING: &str = "STOPPING=1";
pub const WATCHDOG: &str = "WATCHDOG=1";

/// The watchdog timeout from `WATCHDOG_USEC` and `WATCHDOG_PID` (the variables' values,
/// `None` when unset), as `sd_watchdog_enabled(3)` reads them: `Ok(None)` without a
/// timeout, or when the timeout is meant for another process (`WATCHDOG_PID` is set and
/// not `own_pid`: a child that inherited the environment must not ping for its parent).
pub fn parse_watchdog(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let micros = usec
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&u| u > 0 && u != u64::MAX)
        .ok_or_else(|| NotifyError::BadWatchdogUsec(usec.to_string()))?;
    if let Some(pid) = pid {
        let p = pid
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| NotifyError::BadWatchdogPid(pid.to_string()))?;
        if p != own_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(micros)))
}

/// `NOTIFY_SOCKET`, if set and usable (an unusable value is logged once per call).
fn env_addr() -> Option<NotifyAddr> {
    let value = std::env::var_os("NOTIFY_SOCKET")?;
    match NotifyAddr::parse(&value) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "systemd notification not sent");
            None
        }
    }
}

/// Sends `msg` to systemd if we run under it; failures are logged.
fn notify(msg: &str) {
    let Some(addr) = env_addr() else {
        return;
    };
    match addr.send(msg) {
        Ok(()) => tracing::debug!(message = msg, "sd_notify"),
        Err(e) => tracing::warn!(error = %e, message = msg, "systemd notification not sent"),
    }
}

/// Tells systemd the agent serves (`Type=notify` units count as started from here).
pub fn ready(status: &str) {
    notify(&ready_message(status, std::process::id()));
}

/// The line `systemctl status` shows.
pub fn status(status: &str) {
    notify(&status_message(status));
}

/// Tells systemd the agent is shutting down (so a slow drain is not taken for a hang).
pub fn stopping() {
    notify(STOPPING);
}

/// One watchdog ping.
pub fn watchdog_ping() {
    notify(WATCHDOG);
}

/// The unit's watchdog timeout when it is meant for this process (`WatchdogSec=`).
pub fn watchdog_interval() -> Option<Duration> {
    let var = |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let (usec, pid) = (var("WATCHDOG_USEC"), var("WATCHDOG_PID"));
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "systemd watchdog ignored");
        None
    })
}

/// Pings `addr` every `timeout / 2` (systemd's advice) for as long as `alive()` holds.
/// Once it does not, the pings stop for good and systemd restarts the unit after the
/// timeout; the loop also runs on the runtime it watches, so a runtime whose worker
/// threads are all stuck misses its pings too.
pub async fn watchdog_loop(
    addr: NotifyAddr,
    timeout: Duration,
    mut alive: impl FnMut() -> bool + Send,
) {
    // interval() panics on zero; a microsecond timeout would be a busy loop
    let period = (timeout / 2).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !alive() {
            tracing::error!(
                "the serving loop has ended: no more watchdog pings (systemd restarts the agent)"
            );
            return;
        }
        if let Err(e) = addr.send(WATCHDOG) {
            tracing::warn!(error = %e, "systemd watchdog ping not sent");
        }
    }
}

/// Starts [`watchdog_loop`] on the current tokio runtime when systemd asked for a watchdog
/// (`NOTIFY_SOCKET` and `WATCHDOG_USEC` for this process); `None` otherwise.
pub fn spawn_watchdog(
    alive: impl FnMut() -> bool + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let timeout = watchdog_interval()?;
    let addr = env_addr()?;
    tracing::info!(
        timeout_s = timeout.as_secs_f64(),
        "systemd watchdog: pinging every half timeout"
    );
    Some(tokio::spawn(watchdog_loop(addr, timeout, alive)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn receive(socket: &UnixDatagram) -> Vec<u8> {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn a_socket_file_receives_the_exact_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let addr = NotifyAddr::parse(path.as_os_str()).unwrap();
        assert_eq!(addr, NotifyAddr::Path(path.clone()));

        addr.send(&ready_message("serving m-1 on http://127.0.0.1:8080", 4242))
            .unwrap();
        assert_eq!(
            receive(&server),
            b"READY=1\nSTATUS=serving m-1 on http://127.0.0.1:8080\nMAINPID=4242"
        );
        addr.send(&status_message("two\nlines\r")).unwrap();
        assert_eq!(receive(&server), b"STATUS=two lines ");
        addr.send(STOPPING).unwrap();
        assert_eq!(receive(&server), b"STOPPING=1");
        addr.send(WATCHDOG).unwrap();
        assert_eq!(receive(&server), b"WATCHDOG=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_receives_the_exact_message() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("edgecp-sdnotify-test-{}", std::process::id());
        let bound = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let server = UnixDatagram::bind_addr(&bound).unwrap();
        let addr = NotifyAddr::parse(OsStr::new(&format!("@{name}"))).unwrap();
        assert_eq!(addr, NotifyAddr::Abstract(name.clone().into_bytes()));
        addr.send(&ready_message("ok", 7)).unwrap();
        assert_eq!(receive(&server), b"READY=1\nSTATUS=ok\nMAINPID=7");
    }

    #[test]
    fn unusable_addresses_are_refused_and_a_missing_socket_is_an_error() {
        for bad in ["", "@", "relative/notify", "vsock:2:1234"] {
            assert!(
                matches!(
                    NotifyAddr::parse(OsStr::new(bad)),
                    Err(NotifyError::BadAddress(_))
                ),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let gone = NotifyAddr::Path(dir.path().join("nobody-listens"));
        assert!(matches!(gone.send(WATCHDOG), Err(NotifyError::Io(_))));
    }

    #[test]
    fn watchdog_variables_are_read_as_systemd_reads_them() {
        let s = |u: u64| Ok::<_, ()>(Some(Duration::from_micros(u)));
        let p = |u, pid, own| parse_watchdog(u, pid, own).map_err(|_| ());
        assert_eq!(p(None, None, 10), Ok(None));
        assert_eq!(p(None, Some("10"), 10), Ok(None));
        assert_eq!(p(Some("30000000"), None, 10), s(30_000_000));
        assert_eq!(p(Some("30000000"), Some("10"), 10), s(30_000_000));
        assert_eq!(p(Some(" 500000\n"), Some("10"), 10), s(500_000));
        // meant for another process (a parent that passed its environment on)
        assert_eq!(p(Some("30000000"), Some("11"), 10), Ok(None));
        for bad in ["", "0", "-5", "abc", "30s", "1.5", "18446744073709551615"] {
            assert!(
                matches!(
                    parse_watchdog(Some(bad), None, 10),
                    Err(NotifyError::BadWatchdogUsec(_))
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "0", "-1", "x", "10x", "4294967296"] {
            assert!(
                matches!(
                    parse_watchdog(Some("1000"), Some(bad), 10),
                    Err(NotifyError::BadWatchdogPid(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_watchdog_pings_while_alive_and_stops_for_good_after() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let c = checks.clone();
        // alive for three checks, then dead
        let alive = move || c.fetch_add(1, Ordering::SeqCst) < 3;
        tokio::time::timeout(
            Duration::from_secs(10),
            watchdog_loop(NotifyAddr::Path(path), Duration::from_millis(20), alive),
        )
        .await
        .expect("the loop ends once alive() is false");
        assert_eq!(checks.load(Ordering::SeqCst), 4);
        server.set_nonblocking(true).unwrap();
        let mut pings = 0;
        let mut buf = [0u8; 64];
        while let Ok(n) = server.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            pings += 1;
        }
        assert_eq!(pings, 3);
    }
}
