//! Fault scenarios (issue 7, first part): a partitioned Ghost and stalled acks. Each asserts
//! the invariants: the intent ends satisfied, every effect happens once, nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::proxy::Proxy;
use e2e::*;

const T: Duration = Duration::from_secs(40);

#[test]
fn a_partitioned_ghost_heals_and_its_step_completes_once() {
    let dir = TempDir::new("partition");
    let m = Mirage::start(&dir, 0, "");
    let proxy = Proxy::start(&m.session);
    let g1 = Ghost::start(&dir, "g1", &m.session, "");
    let g2 = Ghost::start(&dir, "g2", &m.session, "");
    let g3 = Ghost::start(&dir, "g3", &proxy.addr, "");
    m.wait_ghosts(3, T);
    let id = m.submit("intent_id=\"part\"\nactor=\"t\"\ntarget_scope=\"ghost:g*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"800\"}\ntimeout=\"30s\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"after\",value=\"heal\"}\ntimeout=\"30s\"\n");
    std::thread::sleep(Duration::from_millis(200));
    // Partition g3 for longer than dead_after (3 s on Mirage, 2 s on the Ghost).
    proxy.blackhole(true);
    let deadline = Instant::now() + T;
    loop {
        let (_, v) = m.get("/v1/ghosts/g3");
        if v["connected"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "partition not detected");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The others finished their part; the step waits for g3.
    let (_, d) = m.get(&format!("/v1/intents/{id}"));
    assert_eq!(d["summary"]["status"], "active", "{d}");
    proxy.blackhole(false);
    proxy.cut(); // the stale connection goes; g3 redials through the healed link
    m.wait_status(&id, "satisfied", T);
    for g in [&g1, &g2, &g3] {
        assert_eq!(g.kv_get("after").as_deref(), Some("heal"));
    }
    // Each Ghost ran the sleep and the put once (plus our kv_get).
    assert_eq!(g1.executed(), 3);
    assert_eq!(g2.executed(), 3);
    assert_eq!(
        g3.executed(),
        3,
        "the partitioned Ghost ran each command once"
    );
}

#[test]
fn stalled_acks_make_the_ghost_resend_and_nothing_happens_twice() {
    let dir = TempDir::new("ackstall");
    let m = Mirage::start(&dir, 0, "");
    let proxy = Proxy::start(&m.session);
    let g = Ghost::start(&dir, "g1", &proxy.addr, "");
    m.wait_ghosts(1, T);
    proxy.drop_acks(true);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(m.submit(&format!(
            "intent_id=\"stall{i}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k{i}\",value=\"v\"}}\n"
        )));
    }
    for id in &ids {
        m.wait_status(id, "satisfied", T);
    }
    // Past the Ghost's ack timeout (3 s) its events go again; Mirage answers with the stored ack.
    std::thread::sleep(Duration::from_millis(3500));
    proxy.drop_acks(false);
    let deadline = Instant::now() + T;
    loop {
        let st = g.admin(serde_json::json!({"action": "status"}));
        if st["data"]["Outbox"]["pending"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "outbox never drained: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        proxy.dropped_acks() >= 5,
        "acks were really stalled ({})",
        proxy.dropped_acks()
    );
    let (_, metrics) = http_raw(&m.api, "GET", "/metrics", None, &[]);
    let dup: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mirage_events_duplicate_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        dup >= 5,
        "the Ghost re-sent its events ({dup} duplicates seen)"
    );
    assert_eq!(g.executed(), 5, "each command ran once");
    for id in &ids {
        let reports = m.reports(id);
        assert_eq!(
            reports
                .iter()
                .filter(|r| r["completion_state"] == "satisfied")
                .count(),
            1
        );
    }
}
