//! Issue 18 item 1: every report subscriber is a `ReportStream` actor behind the
//! `ReportHub`: listed in `/v1/actors` with its subscriber and mailbox figures, bounded for a
//! consumer that never reads (which is told what it missed with a `gap` event once it reads),
//! and gone when its client goes. A real `mirage` process and a real Ghost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// An SSE request on a socket whose receive buffer is `rcvbuf` bytes (0: the default), read
/// up to the stream's first comment so the subscription exists when this returns.
fn subscribe(api: &str, query: &str, rcvbuf: u32) -> TcpStream {
    let addr: std::net::SocketAddr = api.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if rcvbuf > 0 {
            // Set before connect, so the advertised window stays this small.
            sock.set_recv_buffer_size(rcvbuf).unwrap();
        }
        sock.connect(addr).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = &s;
    write!(
        w,
        "GET /v1/reports/stream{query} HTTP/1.1\r\nHost: x\r\nUser-Agent: e2e-{rcvbuf}\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !String::from_utf8_lossy(&got).contains(": mirage report stream") {
        let n = (&s).read(&mut b).unwrap();
        assert!(n > 0, "stream closed before its first line");
        got.push(b[0]);
    }
    s
}

fn streams(m: &Mirage) -> Vec<Value> {
    let (st, v) = m.get("/v1/actors");
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "mirage.report_stream")
        .cloned()
        .collect()
}

/// Three steps and a long id (reports name it): many report bytes per intent, so the kernel's
/// socket buffers (over a megabyte on loopback) fill and Mirage's own queue is reached.
fn echo_plan(i: usize) -> String {
    let step = "[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\n";
    format!(
        "intent_id=\"e{i}-{}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n{step}{step}{step}",
        "x".repeat(110)
    )
}

const INTENTS: usize = 800;

/// Submits `INTENTS` intents (ids from `base`) from four threads and waits for them all.
fn run_intents(m: &Mirage, base: usize) {
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let api = m.api.clone();
            std::thread::spawn(move || {
                for i in (t..INTENTS).step_by(4) {
                    let (st, v) = http(&api, "POST", "/v1/intents", Some(&echo_plan(base + i)));
                    assert_eq!(st, 201, "{v}");
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    wait_until("every intent finishes", Duration::from_secs(240), || {
        m.get("/v1/overview").1["intents_active"] == 0
    });
}

#[test]
fn report_streams_are_actors_bounded_and_go_with_their_client() {
    let started = Instant::now();
    let dir = TempDir::new("report-streams");
    let m = Mirage::start(
        &dir,
        0,
        "[limits]\nreports = 2000\nfinished_intents = 200\n",
    );
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);

    // Three subscribers: three stream actors, each with its subscriber and mailbox figures.
    let a = subscribe(&m.api, "", 0);
    let b = subscribe(&m.api, &format!("?intent=e0-{}", "x".repeat(110)), 0);
    let c = subscribe(&m.api, "?after=0", 0);
    let list = streams(&m);
    assert_eq!(list.len(), 3, "{list:?}");
    for s in &list {
        for f in ["mailbox_depth", "mailbox_peak", "sent", "handled", "queue"] {
            assert!(!s[f].is_null(), "no {f} in {s}");
        }
    }
    let peers: Vec<String> = list
        .iter()
        .map(|s| s["subscriber"]["peer"].as_str().unwrap().to_owned())
        .collect();
    for conn in [&a, &b, &c] {
        let me = conn.local_addr().unwrap().to_string();
        assert!(peers.contains(&me), "{me} not among {peers:?}");
    }
    assert!(
        list.iter()
            .any(|s| s["subscriber"]["filter"]["intent"]
                == format!("e0-{}", "x".repeat(110)).as_str()),
        "the filter is listed: {list:?}"
    );
    let kinds = m.get("/v1/actors").1;
    let kind = kinds
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["actor"] == "mirage.report_stream")
        .cloned()
        .unwrap();
    assert_eq!(kind["instances"], 3, "{kind}");

    // A client that goes takes its actor with it.
    let gone = b.local_addr().unwrap().to_string();
    drop(b);
    wait_until("the stream of a closed client stops", T, || {
        let l = streams(&m);
        l.len() == 2 && l.iter().all(|s| s["subscriber"]["peer"] != gone.as_str())
    });
    drop(a);
    drop(c);
    wait_until("all streams stop", T, || streams(&m).is_empty());

    // Warm-up without stalled consumers, so the bounded histories reach their size first
    // and what grows afterwards is what the stalled streams cost.
    run_intents(&m, 0);
    let last_seq = |m: &Mirage| -> u64 {
        let (_, v) = m.get("/v1/reports?limit=10000");
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let seq0 = last_seq(&m);

    // Consumers that never read: many reports later, Mirage has not buffered them.
    const STALLED: usize = 20;
    let stalled: Vec<TcpStream> = (0..STALLED).map(|_| subscribe(&m.api, "", 4096)).collect();
    assert_eq!(streams(&m).len(), STALLED);
    let before = m.proc.rss_kib();
    run_intents(&m, INTENTS);
    let published = last_seq(&m) - seq0;
    let after = m.proc.rss_kib();
    let (_, all) = m.get("/v1/reports?limit=10000");
    let all = all.as_array().unwrap();
    let per_report = serde_json::to_string(all).unwrap().len() as u64 / all.len() as u64;
    let list = streams(&m);
    let missed: Vec<u64> = list.iter().map(|s| s["missed"].as_u64().unwrap()).collect();
    assert!(
        missed.iter().all(|&n| n > 0),
        "every stalled stream dropped reports: {missed:?} of {published}: {list:?}"
    );
    for s in &list {
        let q = &s["queue"];
        assert!(
            q["len"].as_u64().unwrap() <= q["cap"].as_u64().unwrap(),
            "{s}"
        );
    }
    // Unbounded buffering would hold every report once per stalled stream.
    let grown_kib = after.saturating_sub(before);
    let unbounded = published * per_report * STALLED as u64;
    eprintln!(
        "reports={published} ~{per_report} B each; unbounded would be {unbounded} B; rss before={before} KiB after={after} KiB grown={grown_kib} KiB missed={missed:?}"
    );
    assert!(
        grown_kib * 1024 < unbounded / 3,
        "RSS grew {grown_kib} KiB for {STALLED} stalled streams ({unbounded} B if unbounded)"
    );

    // Once one reads, it gets the gap marker: how many and which seqs it missed.
    let mut s = &stalled[0];
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + T;
    while !String::from_utf8_lossy(&got).contains("event: gap") {
        assert!(Instant::now() < deadline, "no gap marker");
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed before its gap marker");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let gap_line = text
        .split("event: gap\n")
        .nth(1)
        .and_then(|r| r.lines().next())
        .and_then(|l| l.strip_prefix("data: "))
        .unwrap();
    let gap: Value = serde_json::from_str(gap_line).unwrap();
    let (n, first, last) = (
        gap["missed"].as_u64().unwrap(),
        gap["first_seq"].as_u64().unwrap(),
        gap["last_seq"].as_u64().unwrap(),
    );
    assert!(n > 0 && first <= last && last - first + 1 >= n, "{gap}");
    // The reports before the marker end below the gap; what follows it is newer.
    let before_gap = text.split("event: gap\n").next().unwrap();
    let last_before = before_gap
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(last_before < first, "{last_before} then gap {gap}");
    drop(stalled);
    wait_until("stalled streams stop once closed", T, || {
        streams(&m).is_empty()
    });
    eprintln!("report_streams wall {:?}", started.elapsed());
}
