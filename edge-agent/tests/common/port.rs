//! Free loopback ports for the private servers the tests start (Mosquitto, s3s-fs).
//!
//! A port is drawn below the kernel's ephemeral range (ip_local_port_range): one that
//! `bind(0)` hands out can be taken, before the server binds it, as the local port of any
//! outgoing connection on the machine; ports below the range are never handed out that way.

use std::net::TcpListener;

use rand::Rng;

pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // 12,000 ports under the range, never below 10,000 where well-known services sit
    let (lo, hi) = (low.saturating_sub(12_000).max(10_000), low);
    if hi > lo {
        for _ in 0..1000 {
            let port = rand::rng().random_range(lo..hi);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
