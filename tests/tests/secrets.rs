//! Secrets and tokens with real processes (issue 19 item 12): a spawned child Ghost's config
//! (admin token, HMAC key) is private; the API's bearer scheme is case-insensitive; the report
//! stream takes a percent-encoded `?token=`; the dashboard sends no Referer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;

const T: Duration = Duration::from_secs(40);

/// Status line and headers (lower-cased) of one request; the body is not read (streams).
fn head(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut out = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        out.push_str(&line.to_ascii_lowercase());
    }
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn api_tokens_bearer_scheme_percent_decoding_and_referrer_policy() {
    let dir = TempDir::new("secrets-api");
    // Every character here needs percent-encoding in a query string.
    let token = "s3 +cr&et=%/?#x";
    let m = Mirage::start(&dir, 0, &format!("[api]\ntoken = \"{token}\""));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (st, _) = http_raw(
            &m.api,
            "GET",
            "/v1/ghosts",
            None,
            &[("Authorization", &format!("{scheme} {token}"))],
        );
        assert_eq!(st, 200, "scheme {scheme}");
    }
    let (st, _) = http_raw(
        &m.api,
        "GET",
        "/v1/ghosts",
        None,
        &[("Authorization", "Bearer s3 +cr&et=%/?#")],
    );
    assert_eq!(st, 401, "a prefix of the token");
    // The report stream with the token as the dashboard sends it (encodeURIComponent).
    let (st, h) = head(
        &m.api,
        &format!("/v1/reports/stream?after=0&token={}", percent_encode(token)),
        &[],
    );
    assert_eq!(st, 200, "{h}");
    assert!(h.contains("text/event-stream"), "{h}");
    let (st, _) = head(
        &m.api,
        &format!(
            "/v1/reports/stream?after=0&token={}",
            percent_encode("s3 +cr")
        ),
        &[],
    );
    assert_eq!(st, 401);
    // The dashboard: no Referer leaves it, and the token leaves its visible URL.
    let (st, h) = head(&m.api, "/dashboard", &[]);
    assert_eq!(st, 200);
    assert!(h.contains("referrer-policy: no-referrer"), "{h}");
    let (_, body) = http_raw(&m.api, "GET", "/dashboard", None, &[]);
    assert!(body.contains("history.replaceState"));
    assert!(body.contains("encodeURIComponent(token)"));
}

#[test]
fn a_spawned_child_ghost_config_is_private() {
    let dir = TempDir::new("secrets-child");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(
        &dir,
        "parent",
        &m.session,
        "[auth]\nkey = \"hmac-secret-key\"",
    );
    m.wait_ghosts(1, T);
    let addr = format!("127.0.0.1:{}", free_port());
    let r = g.admin(json!({"action": "spawn_ghost",
        "spawn": {"target_name": "kid", "admin_addr": addr}}));
    assert_eq!(r["ok"], true, "{r}");
    let child_dir = dir.path("parent/children/parent.kid");
    let cfg = child_dir.join("ghost.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains(ADMIN_TOKEN) && text.contains("hmac-secret-key"),
        "the file holds both secrets"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cfg), 0o600, "child config");
    assert_eq!(mode(&child_dir), 0o700, "child data dir");
    // The child runs on that config: it answers on its admin address with the token.
    let deadline = Instant::now() + T;
    let status = loop {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let line = format!("{}\n", json!({"action": "status", "token": ADMIN_TOKEN}));
            s.write_all(line.as_bytes()).unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(Instant::now() < deadline, "child not listening on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains("parent.kid"), "{status}");
}
