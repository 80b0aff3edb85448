//! Attacks on `edge-agent serve` over real loopback HTTP (issue 16, defects 4-7), each
//! against the real binary under a 1.5 GB address-space limit (RLIMIT_AS), with its peak
//! resident memory (VmHWM) measured from /proc:
//!
//! - image bombs: small PNG and JPEG files of 12000-13000 pixels a side, in parallel;
//!   images just under the decode limit, in parallel (the decode budget);
//! - slow senders: 100 connections that send a body byte a second, 20 that never finish
//!   their headers, while /healthz and a normal prediction must answer within 2 s;
//! - a request timeout of 300 ms with one worker: the work of a timed-out request stops,
//!   and every 408 is counted in /metrics;
//! - feedback with guessed prediction ids, and the latched drift alarm.
//!
//! Every load is bounded in count and time; all traffic stays on loopback. The tests take
//! a lock so that their timings do not disturb each other.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::Value;

/// The address space the agent may map: 1.5 GB.
const ADDRESS_SPACE: u64 = 1536 << 20;
/// Peak resident memory allowed while answering bombs.
const MAX_HWM_KB: u64 = 300 * 1024;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The attack images, made once (a few seconds) for every test.
struct Bombs {
    /// 13000 x 13000 PNG: 0.5 MB that decode to 507 MB.
    png13k: Vec<u8>,
    /// 12000 x 12000 and 13000 x 13000 JPEGs: a few MB that decode to 432 / 507 MB.
    jpg12k: Vec<u8>,
    jpg13k: Vec<u8>,
    /// 4600 x 4600 PNG: 63.5 MB decoded, just under the default limit of 64 MiB.
    png_big: Vec<u8>,
    /// 4000 x 3000 JPEG (12 megapixels, 36 MB decoded).
    jpg_12mp: Vec<u8>,
}

fn bombs() -> &'static Bombs {
    static BOMBS: OnceLock<Bombs> = OnceLock::new();
    BOMBS.get_or_init(|| {
        let t = Instant::now();
        let b = Bombs {
            png13k: png_bomb(13000, 13000),
            jpg12k: jpeg_bomb(12000, 12000),
            jpg13k: jpeg_bomb(13000, 13000),
            png_big: png_bomb(4600, 4600),
            jpg_12mp: jpeg_bomb(4000, 3000),
        };
        println!(
            "bombs made in {:.1} s: PNG 13000^2 {} bytes, JPEG 12000^2 {} bytes, JPEG 13000^2 {} bytes, PNG 4600^2 {} bytes, JPEG 4000x3000 {} bytes",
            t.elapsed().as_secs_f64(),
            b.png13k.len(),
            b.jpg12k.len(),
            b.jpg13k.len(),
            b.png_big.len(),
            b.jpg_12mp.len()
        );
        b
    })
}

fn alive(s: &mut Server, log: &Path) {
    if let Some(status) = s.child.try_wait().unwrap() {
        panic!(
            "the agent ended ({status}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

fn hwm_kb(s: &Server) -> u64 {
    proc_kb(s.child.id(), "VmHWM").expect("VmHWM of the agent")
}

/// `POST path` with `body` from `clients` threads at once, each sending every body of
/// `bodies` in turn; the statuses (0: no answer).
fn in_parallel(addr: &str, clients: usize, bodies: &[(&str, &str, &[u8])]) -> Vec<u16> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                sc.spawn(move || {
                    bodies
                        .iter()
                        .map(|(path, ctype, b)| {
                            try_http(addr, "POST", path, "", ctype, b, Duration::from_secs(60))
                                .map_or(0, |r| r.0)
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

fn get(addr: &str, path: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let (st, body) = try_http(
        addr,
        "GET",
        path,
        "",
        "text/plain",
        b"",
        Duration::from_secs(10),
    )
    .unwrap_or((0, String::new()));
    (st, body, t.elapsed())
}

/// Sum of `edge_agent_requests_total` over routes for one status.
fn requests_with_status(metrics: &str, status: u16) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("edge_agent_requests_total{")
                && l.contains(&format!("status=\"{status}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn image_bombs_are_refused_from_their_header_and_memory_stays_bounded() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let Bombs {
        png13k,
        jpg12k,
        jpg13k,
        png_big,
        jpg_12mp,
    } = bombs();
    assert!(png13k.len() < 1 << 20, "the PNG bomb is a small file");

    let log = root.path().join("agent.log");
    let mut s = start_limited(&dir, &key, &[], ADDRESS_SPACE, &log).unwrap();
    let start_hwm = hwm_kb(&s);

    // 4 clients at once, each sending the three bombs
    let bombs: [(&str, &str, &[u8]); 3] = [
        ("/v1/predict", "image/png", png13k),
        ("/v1/predict", "image/jpeg", jpg12k),
        ("/v1/predict", "image/jpeg", jpg13k),
    ];
    let t = Instant::now();
    let statuses = in_parallel(&s.addr, 4, &bombs);
    let bombs_s = t.elapsed().as_secs_f64();
    alive(&mut s, &log);
    let bomb_hwm = hwm_kb(&s);
    println!(
        "12 bombs from 4 clients: statuses {statuses:?} in {bombs_s:.2} s; VmHWM {start_hwm} kB at start, {bomb_hwm} kB after"
    );
    assert!(
        statuses.iter().all(|&st| st == 413),
        "every bomb is refused from its header: {statuses:?}"
    );
    assert!(bomb_hwm <= MAX_HWM_KB, "VmHWM {bomb_hwm} kB");

    // images just under the limit: decoded, but only as many at once as the budget holds
    let big: [(&str, &str, &[u8]); 2] = [
        ("/v1/predict", "image/png", png_big),
        ("/v1/predict", "image/jpeg", jpg_12mp),
    ];
    let t = Instant::now();
    let statuses = in_parallel(&s.addr, 6, &big);
    let big_s = t.elapsed().as_secs_f64();
    alive(&mut s, &log);
    let big_hwm = hwm_kb(&s);
    println!(
        "12 large images (6 PNG 4600^2 = 63.5 MB decoded, 6 JPEG 12 MP) from 6 clients: statuses {statuses:?} in {big_s:.2} s; VmHWM {big_hwm} kB"
    );
    assert!(statuses.iter().all(|&st| st == 200), "{statuses:?}");
    assert!(big_hwm <= MAX_HWM_KB, "VmHWM {big_hwm} kB");

    // and the service goes on
    let (st, _, _) = get(&s.addr, "/healthz");
    assert_eq!(st, 200);
    let (st, body) = s.request("POST", "/v1/predict", "image/png", &png(48, 48, 2));
    assert_eq!(st, 200, "{body}");
    let (_, m, _) = get(&s.addr, "/metrics");
    assert_eq!(
        metric(
            &m,
            "edge_agent_requests_total{route=\"/v1/predict\",status=\"413\"}"
        ),
        Some(12.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "edge_agent_memory_in_use_bytes{budget=\"decode\"}"),
        Some(0.0),
        "{m}"
    );
}

/// Reads until the status line of a response has arrived (or EOF / error / `deadline`);
/// the status, 0 for none.
fn status_line(mut c: &TcpStream, deadline: Instant) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || c.set_read_timeout(Some(left)).is_err() {
            return 0;
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Whether the server closed `c` (EOF, reset, or an answer followed by EOF) by `deadline`.
fn closed_by(mut c: &TcpStream, deadline: Instant) -> bool {
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || c.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match c.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_senders_hold_no_worker_and_health_and_predictions_answer_at_once() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let log = root.path().join("agent.log");
    let mut s = start_limited(&dir, &key, &[], ADDRESS_SPACE, &log).unwrap();
    let opened = Instant::now();
    // 100 connections that send their headers, then one body byte a second
    let slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            let head = format!(
                "POST /v1/predict HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\nContent-Length: 4096\r\n\r\nx",
                s.addr
            );
            c.write_all(head.as_bytes()).unwrap();
            c
        })
        .collect();
    // 20 that never finish their headers
    let partial: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            c
        })
        .collect();
    let stop = AtomicBool::new(false);
    let (healthz, predict, metrics) = std::thread::scope(|sc| {
        sc.spawn(|| {
            // one byte a second per connection, for at most 8 s
            for _ in 0..8 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for mut c in &slow {
                    let _ = c.write_all(b"x");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
        let healthz = get(&s.addr, "/healthz");
        let t = Instant::now();
        let predict = try_http(
            &s.addr,
            "POST",
            "/v1/predict",
            "",
            "image/png",
            &png(48, 48, 4),
            Duration::from_secs(10),
        )
        .unwrap_or((0, String::new()));
        let predict = (predict.0, predict.1, t.elapsed());
        let metrics = get(&s.addr, "/metrics");
        stop.store(true, Ordering::Relaxed);
        (healthz, predict, metrics)
    });
    println!(
        "with 100 slow-body and 20 slow-header connections open: /healthz {} in {:.1} ms, /v1/predict {} in {:.1} ms, /metrics {} in {:.1} ms",
        healthz.0,
        healthz.2.as_secs_f64() * 1e3,
        predict.0,
        predict.2.as_secs_f64() * 1e3,
        metrics.0,
        metrics.2.as_secs_f64() * 1e3
    );
    alive(&mut s, &log);
    assert_eq!(healthz.0, 200);
    assert!(healthz.2 < Duration::from_secs(2), "{:?}", healthz.2);
    assert_eq!(predict.0, 200, "{}", predict.1);
    assert!(predict.2 < Duration::from_secs(2), "{:?}", predict.2);
    assert_eq!(metrics.0, 200);
    assert!(metrics.2 < Duration::from_secs(2), "{:?}", metrics.2);

    // the slow bodies get 408 when their body time (5 s) is up
    let deadline = opened + Duration::from_secs(12);
    let statuses: Vec<u16> = slow.iter().map(|c| status_line(c, deadline)).collect();
    let timed_out = statuses.iter().filter(|&&st| st == 408).count();
    // the unfinished headers: the connection is closed after the header time (5 s)
    let deadline = Instant::now().max(opened + Duration::from_secs(9));
    let closed = partial.iter().filter(|c| closed_by(c, deadline)).count();
    println!(
        "slow bodies answered 408: {timed_out} of 100 ({:.1} s after opening); unfinished headers closed: {closed} of 20",
        opened.elapsed().as_secs_f64()
    );
    assert_eq!(timed_out, 100, "{statuses:?}");
    assert_eq!(closed, 20);
    alive(&mut s, &log);
    let (_, m, _) = get(&s.addr, "/metrics");
    assert!(
        requests_with_status(&m, 408) >= 100.0,
        "408s counted in /metrics:\n{m}"
    );
}

#[test]
fn a_timed_out_request_stops_its_work_and_every_status_is_counted() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let Bombs {
        png13k,
        jpg12k,
        png_big: big,
        ..
    } = bombs();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // a batch whose decodes together take longer than the timeout
    let batch = serde_json::json!({ "images": vec![b64(big); 16] }).to_string();
    // and one whose decodes take over a second even on a fast CPU (64 x 63.5 MB)
    let long_batch = serde_json::json!({ "images": vec![b64(big); 64] }).to_string();
    let log = root.path().join("agent.log");
    let mut s = start_limited(
        &dir,
        &key,
        &["--concurrency", "1", "--timeout-ms", "300"],
        ADDRESS_SPACE,
        &log,
    )
    .unwrap();

    // bombs, large images and batches from 4 clients at once
    let load: [(&str, &str, &[u8]); 4] = [
        ("/v1/predict", "image/png", png13k),
        ("/v1/predict", "image/jpeg", jpg12k),
        ("/v1/predict", "image/png", big),
        ("/v1/predict/batch", "application/json", batch.as_bytes()),
    ];
    let t = Instant::now();
    let mut statuses = in_parallel(&s.addr, 4, &load);
    // one batch alone: it gets the worker at once and times out while decoding
    let (st, _) = try_http(
        &s.addr,
        "POST",
        "/v1/predict/batch",
        "",
        "application/json",
        long_batch.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap_or((0, String::new()));
    statuses.push(st);
    let load_s = t.elapsed().as_secs_f64();
    alive(&mut s, &log);
    let n408 = statuses.iter().filter(|&&s| s == 408).count();
    let n413 = statuses.iter().filter(|&&s| s == 413).count();
    assert!(
        statuses.iter().all(|st| [200, 408, 413].contains(st)),
        "{statuses:?}"
    );
    assert_eq!(st, 408, "the lone batch outlives its 300 ms");
    assert_eq!(n413, 8, "{statuses:?}");

    // the work of timed-out requests ends at its next step: the worker and the decode
    // budget come back
    let t = Instant::now();
    let m = loop {
        let (_, m, _) = get(&s.addr, "/metrics");
        let idle = metric(&m, "edge_agent_workers_busy ") == Some(0.0)
            && metric(&m, "edge_agent_memory_in_use_bytes{budget=\"decode\"}") == Some(0.0);
        if idle || t.elapsed() > Duration::from_secs(10) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let hwm = hwm_kb(&s);
    let cancelled: f64 = m
        .lines()
        .filter(|l| l.starts_with("edge_agent_work_cancelled_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "concurrency 1, timeout 300 ms: statuses {statuses:?} in {load_s:.2} s ({n408} x 408, {n413} x 413); idle again {:.2} s later; work stopped early: {cancelled}; VmHWM {hwm} kB",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(metric(&m, "edge_agent_workers_busy "), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "edge_agent_memory_in_use_bytes{budget=\"decode\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(cancelled >= 1.0, "no work was stopped:\n{m}");
    assert_eq!(requests_with_status(&m, 408), n408 as f64, "{m}");
    assert_eq!(requests_with_status(&m, 413), n413 as f64, "{m}");
    assert!(hwm <= MAX_HWM_KB, "VmHWM {hwm} kB");
    let (st, _, _) = get(&s.addr, "/healthz");
    assert_eq!(st, 200);
}

/// An answer's id (as the JSON value it is) and set.
fn predict_id(s: &Server, seed: u8) -> (Value, Vec<u64>) {
    let (st, body) = s.request("POST", "/v1/predict", "image/png", &png(40, 40, seed));
    assert_eq!(st, 200, "{body}");
    let a: Value = serde_json::from_str(&body).unwrap();
    let id = a["id"].clone();
    let set = a["set"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    (id, set)
}

fn post_json(s: &Server, path: &str, auth: Option<&str>, body: &Value) -> (u16, String) {
    let extra = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    try_http(
        &s.addr,
        "POST",
        path,
        &extra,
        "application/json",
        body.to_string().as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap()
}

#[test]
fn feedback_needs_the_answer_id_and_the_alarm_resets_only_explicitly() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());

    // default settings: ids are unguessable, labelling someone else's answer fails
    let log = root.path().join("agent.log");
    let mut s = start_limited(&dir, &key, &[], ADDRESS_SPACE, &log).unwrap();
    let mine: Vec<(Value, Vec<u64>)> = (0..10).map(|i| predict_id(&s, i)).collect();
    // another client guesses: small numbers, as numbers and strings, and the neighbours
    // of the ids it has seen
    let mut guesses: Vec<Value> = (0..300u64).map(|i| serde_json::json!(i)).collect();
    guesses.extend((0..300u64).map(|i| serde_json::json!(i.to_string())));
    guesses.extend((0..300u64).map(|i| serde_json::json!(format!("{i:032x}"))));
    for (id, _) in &mine {
        let near: Vec<Value> = if let Some(n) = id.as_u64() {
            (1..=3)
                .flat_map(|d| [n + d, n.saturating_sub(d)])
                .map(Value::from)
                .collect()
        } else {
            let v = u128::from_str_radix(id.as_str().unwrap_or("0"), 16).unwrap_or(0);
            (1..=3u128)
                .flat_map(|d| [v.wrapping_add(d), v.wrapping_sub(d)])
                .map(|g| Value::from(format!("{g:032x}")))
                .collect()
        };
        guesses.extend(near);
    }
    let mut accepted = 0;
    let mut other = vec![];
    for g in &guesses {
        let (st, body) = post_json(
            &s,
            "/v1/feedback",
            None,
            &serde_json::json!({ "id": g, "label": 1 }),
        );
        accepted += usize::from(st == 200);
        if ![200, 400, 404].contains(&st) {
            other.push(format!("{g}: {st} {body}"));
        }
    }
    println!("{} guessed ids, {accepted} accepted", guesses.len());
    assert_eq!(accepted, 0, "guessed ids labelled another client's answers");
    assert!(other.is_empty(), "{other:?}");
    let (st, body) = post_json(
        &s,
        "/v1/feedback",
        None,
        &serde_json::json!({ "id": mine[0].0, "label": mine[0].1.first().copied().unwrap_or(0) }),
    );
    assert_eq!(st, 200, "the answer's own id: {body}");
    // without an admin token, no reset
    let (st, _) = post_json(
        &s,
        "/v1/validity/reset",
        None,
        &serde_json::json!({ "reason": "x" }),
    );
    assert_eq!(st, 403);
    alive(&mut s, &log);
    drop(s);

    // tokens: only the labelled-data source may label, only the admin may reset
    let feedback_token = "feedback-0123456789abcdef";
    let admin_token = "admin-0123456789abcdef-xyz";
    let ft = root.path().join("feedback.token");
    let at = root.path().join("admin.token");
    std::fs::write(&ft, format!("{feedback_token}\n")).unwrap();
    std::fs::write(&at, admin_token).unwrap();
    let log = root.path().join("agent2.log");
    let mut s = start_limited(
        &dir,
        &key,
        &[
            "--feedback-token-file",
            ft.to_str().unwrap(),
            "--admin-token-file",
            at.to_str().unwrap(),
        ],
        ADDRESS_SPACE,
        &log,
    )
    .unwrap();
    let (id, set) = predict_id(&s, 1);
    let label = |set: &[u64]| (0..43u64).find(|l| !set.contains(l)).unwrap();
    let item = serde_json::json!({ "id": id, "label": label(&set) });
    assert_eq!(post_json(&s, "/v1/feedback", None, &item).0, 401);
    assert_eq!(post_json(&s, "/v1/feedback", Some("wrong"), &item).0, 401);
    let (st, body) = post_json(&s, "/v1/feedback", Some(feedback_token), &item);
    assert_eq!(st, 200, "{body}");
    // false labels (outside every set) until the alarm latches
    let mut alarm_after = None;
    for i in 0..40u8 {
        let (id, set) = predict_id(&s, i.wrapping_add(7));
        let (st, body) = post_json(
            &s,
            "/v1/feedback",
            Some(feedback_token),
            &serde_json::json!({ "id": id, "label": label(&set) }),
        );
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["validity"]["alarm"] == true {
            alarm_after = Some(i + 2);
            break;
        }
    }
    println!("false labels until the drift alarm: {alarm_after:?}");
    assert!(alarm_after.is_some(), "no alarm after 41 false labels");
    let validity = || {
        let (_, body, _) = get(&s.addr, "/v1/model");
        serde_json::from_str::<Value>(&body).unwrap()["validity"].clone()
    };
    assert_eq!(validity()["alarm"], true);
    // resets: the admin token and a reason, and the log says who and why
    let why = serde_json::json!({ "reason": "camera cleaned, labels checked" });
    assert_eq!(post_json(&s, "/v1/validity/reset", None, &why).0, 401);
    assert_eq!(
        post_json(&s, "/v1/validity/reset", Some(feedback_token), &why).0,
        401
    );
    assert_eq!(
        post_json(
            &s,
            "/v1/validity/reset",
            Some(admin_token),
            &serde_json::json!({ "reason": " " })
        )
        .0,
        400
    );
    assert_eq!(validity()["alarm"], true, "still latched");
    let (st, body) = post_json(&s, "/v1/validity/reset", Some(admin_token), &why);
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["before"]["alarm"], true);
    // the label-free monitor tested every answer so far (no labels needed), and the
    // reset starts it afresh too
    let answered = r["drift_before"]["answers"].as_u64().unwrap();
    assert!(
        r["drift_before"]["available"] == true && Some(answered) == alarm_after.map(u64::from),
        "{}",
        r["drift_before"]
    );
    assert_eq!(r["drift"]["answers"], 0, "{}", r["drift"]);
    assert_eq!(r["drift"]["resets"], 1);
    let v = validity();
    assert_eq!(
        (
            v["alarm"].clone(),
            v["feedback"].clone(),
            v["resets"].clone()
        ),
        (Value::Bool(false), 0.into(), 1.into())
    );
    let (_, m, _) = get(&s.addr, "/metrics");
    assert!(
        m.contains("edge_agent_validity_resets_total{")
            && m.contains("edge_agent_validity_drift_alarm{")
            && m.contains("edge_agent_drift_available{")
            && m.contains("edge_agent_drift_answers_total{"),
        "{m}"
    );
    alive(&mut s, &log);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("and violation flag reset")
            && logged.contains("camera cleaned, labels checked")
            && logged.contains("127.0.0.1"),
        "{logged}"
    );
}

/// Adaptive calibration (`--adaptive aci`) on the real agent: labels outside the sets
/// lower the level (sets grow), labels inside raise it, the answers say which level cut
/// them, and the state survives a restart of the same model through its state file.
#[test]
fn adaptive_levels_follow_the_labels_and_survive_a_restart() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (dir, key, _) = built_bundle(root.path());
    let state = root.path().join("aci.json");
    let args = [
        "--adaptive",
        "aci",
        "--aci-gamma",
        "0.2",
        "--epsilon",
        "0.1",
        "--aci-state-file",
        state.to_str().unwrap(),
    ];
    let log = root.path().join("agent.log");
    let mut s = start_limited(&dir, &key, &args, ADDRESS_SPACE, &log).unwrap();
    let answer = |s: &Server, seed: u8| -> Value {
        let (st, body) = s.request("POST", "/v1/predict", "image/png", &png(40, 40, seed));
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let first = answer(&s, 1);
    assert_eq!(first["level"], 0.1, "{first}");
    assert_eq!(first["epsilon"], 0.1);
    // 4 answers at the static level, then a label outside each set (labels come back late:
    // after the first, the level is below 0 and every set is full): each moves the level
    // by 0.2 (0.1 - 1) = -0.18
    let mut pending = vec![first];
    for i in 0..3u8 {
        pending.push(answer(&s, i + 2));
    }
    for p in &pending {
        assert_eq!(p["level"], 0.1, "{p}");
        let set: Vec<u64> = p["set"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let wrong = (0..43u64).find(|l| !set.contains(l)).unwrap();
        let (st, body) = post_json(
            &s,
            "/v1/feedback",
            None,
            &serde_json::json!({ "id": p["id"], "label": wrong }),
        );
        assert_eq!(st, 200, "{body}");
    }
    let a = answer(&s, 9);
    let level = a["level"].as_f64().unwrap();
    assert!((level - (0.1 - 4.0 * 0.18)).abs() < 1e-9, "{a}");
    // below 0 every p-value is above the level: the full set
    assert_eq!(a["set"].as_array().unwrap().len(), 43, "{a}");
    let (_, body, _) = get(&s.addr, "/v1/model");
    let m: Value = serde_json::from_str(&body).unwrap();
    let ad = &m["validity"]["adaptive"][0];
    assert_eq!(
        (ad["labels"].clone(), ad["errors"].clone()),
        (4.into(), 4.into()),
        "{m}"
    );
    assert!(ad["bound"].as_f64().unwrap() > 0.0);
    // a label inside the (full) set raises it by 0.2 * 0.1
    let (st, body) = post_json(
        &s,
        "/v1/feedback",
        None,
        &serde_json::json!({ "id": a["id"], "label": 0 }),
    );
    assert_eq!(st, 200, "{body}");
    let expected = level + 0.02;
    alive(&mut s, &log);
    drop(s);

    // a restart with the same model and state file keeps the level
    let log = root.path().join("agent2.log");
    let mut s = start_limited(&dir, &key, &args, ADDRESS_SPACE, &log).unwrap();
    let b = answer(&s, 9);
    assert!(
        (b["level"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{b}"
    );
    alive(&mut s, &log);
    drop(s);

    // without the adaptive mode the answers carry no level and the state is left alone
    let log = root.path().join("agent3.log");
    let s = start_limited(&dir, &key, &["--epsilon", "0.1"], ADDRESS_SPACE, &log).unwrap();
    let c = answer(&s, 9);
    assert!(c.get("level").is_none(), "{c}");
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("\"labels\": 5"));
}
