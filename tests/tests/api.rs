//! Every API endpoint, including its error cases (issue 5, acceptance 2), and /metrics parsed
//! as Prometheus text (acceptance 4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

#[test]
fn every_endpoint_and_its_errors() {
    let dir = TempDir::new("api");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);

    let (st, h) = m.get("/healthz");
    assert_eq!((st, &h["ok"]), (200, &json!(true)));
    // Mirage's clock, for `ghost doctor --mirage-api` (issue 16).
    assert!(
        h["now_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
        "{h}"
    );
    let (st, html) = http_raw(&m.api, "GET", "/", None, &[]);
    assert_eq!(st, 200);
    assert!(html.contains("<title>Mirage</title>"));

    // Submit: TOML and JSON; errors name the field.
    let id = m.submit("intent_id=\"a1\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\nblocking=true\n");
    m.wait_status(&id, "satisfied", T);
    let (st, v) = m.post("/v1/intents", r#"{"intent_id":"a2","actor":"t","target_scope":"ghost:*","objective":"o","steps":[{"seed":"seed.flow","operation":"status"}]}"#);
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["intent_id"], "a2");
    let (st, v) = m.post("/v1/intents", "actor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"Not A Seed\"\noperation=\"x\"\n");
    assert_eq!(st, 400);
    assert_eq!(v["field"], "step[0].seed", "{v}");
    let (st, v) = m.post("/v1/intents", "{not json");
    assert_eq!((st, v["field"].clone()), (400, json!("body")));
    let (st, _) = m.post("/v1/intents", "intent_id=\"a1\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\n");
    assert_eq!(st, 409, "duplicate id");
    // ?wait= holds the answer until the intent has finished…
    let (st, v) = m.post("/v1/intents?wait=20", "intent_id=\"w1\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\n");
    assert_eq!((st, v["status"].clone()), (201, json!("satisfied")), "{v}");
    let (st, v) = m.post("/v1/intents?wait=20", "intent_id=\"w2\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"fail\"\n");
    assert_eq!((st, v["status"].clone()), (201, json!("failed")), "{v}");
    // …and says so (202) when it is still running at the deadline.
    let (st, v) = m.post("/v1/intents?wait=0.5", "intent_id=\"w3\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"3000\"}\n");
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["intent_id"], "w3");
    assert!(v["wait"].as_str().unwrap().contains("still running"), "{v}");
    m.wait_status("w3", "satisfied", T);
    let big = format!("actor=\"t\"\n# {}\n", "x".repeat(2 * 1024 * 1024));
    let (st, _) = m.post("/v1/intents", &big);
    assert_eq!(st, 413, "oversize body");

    // Intents.
    let (st, v) = m.get("/v1/intents");
    assert_eq!(st, 200);
    assert!(v.as_array().unwrap().iter().any(|i| i["intent_id"] == "a1"));
    let (st, v) = m.get("/v1/intents/a1");
    assert_eq!(st, 200);
    assert_eq!(v["summary"]["status"], "satisfied");
    assert!(!v["reports"].as_array().unwrap().is_empty());
    assert_eq!(m.get("/v1/intents/nope").0, 404);
    assert_eq!(m.delete("/v1/intents/nope").0, 404);
    assert_eq!(m.delete("/v1/intents/a1").0, 409);

    // Ghosts, services, locks.
    let (_, v) = m.get("/v1/ghosts");
    assert_eq!(v[0]["ghost_id"], "g1");
    assert_eq!(m.get("/v1/ghosts/g1").1["connected"], true);
    assert_eq!(m.get("/v1/ghosts/nope").0, 404);
    let (_, v) = m.get("/v1/services");
    assert_eq!(v["seed.kv"][0]["uri"], "kv://g1");
    let (_, v) = m.get("/v1/locks");
    assert_eq!(v[0]["key"], "g1::seed.kv");
    assert_eq!(v[0]["last_token"], 1);
    assert_eq!(m.delete("/v1/locks/g1::seed.kv").0, 202);
    assert_eq!(m.delete("/v1/locks/nope").0, 404);
    let (st, _) = m.post(
        "/v1/ghosts/spawn",
        r#"{"target_name":"x","admin_addr":"127.0.0.1:1"}"#,
    );
    assert_eq!(st, 409, "no local ghost under plain serve");

    // Reports (with resume), actors, overview, unknown routes.
    let (_, all) = m.get("/v1/reports?intent=a1");
    let all = all.as_array().unwrap().clone();
    assert!(all.len() >= 3);
    let first = all[0]["seq"].as_u64().unwrap();
    let (_, after) = m.get(&format!("/v1/reports?intent=a1&after={first}"));
    assert_eq!(after.as_array().unwrap().len(), all.len() - 1);
    assert_eq!(m.get("/v1/reports?limit=x").0, 400);
    let (_, actors) = m.get("/v1/actors");
    assert!(actors
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["actor"] == "mirage.supervisor"));
    assert_eq!(m.get("/v1/overview").1["ghosts_connected"], 1);
    assert_eq!(m.get("/v1/nope").0, 404);
    // The stream replays from `after` and then stays open: read until the first report.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&m.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /v1/reports/stream?after=0&intent=a1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("event: report") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("text/event-stream"), "{text}");
        assert!(text.contains(&format!("id: {first}")), "{text}");
    }

    // /metrics parses as Prometheus text and has mailbox gauges for every actor type.
    let (st, text) = http_raw(&m.api, "GET", "/metrics", None, &[]);
    assert_eq!(st, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let depth: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "actor_mailbox_depth")
        .filter_map(|s| s.labels.get("actor").map(str::to_owned))
        .collect();
    for a in [
        "mirage.supervisor",
        "mirage.session",
        "mirage.intent_plan",
        "mirage.store",
        "mirage.seed_lock",
    ] {
        assert!(
            depth.iter().any(|d| d == a),
            "no mailbox gauge for {a}: {depth:?}"
        );
    }
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "mirage_intents_submitted_total"));
    drop(g);
}

#[test]
fn a_token_is_required_when_configured() {
    let dir = TempDir::new("token");
    let m = Mirage::start(&dir, 0, "[api]\ntoken = \"s3cret\"");
    let (st, v) = m.get("/v1/ghosts");
    assert_eq!(st, 401, "{v}");
    let (st, _) = http_raw(
        &m.api,
        "GET",
        "/v1/ghosts",
        None,
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(st, 401);
    let (st, _) = http_raw(
        &m.api,
        "GET",
        "/v1/ghosts",
        None,
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(st, 200);
    assert_eq!(m.get("/healthz").0, 200, "health stays public");
}
