//! Events produced while Mirage is unreachable survive SIGKILL of the Ghost and reach Mirage
//! exactly once after it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const N: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_sigkill_and_delivers_each_event_once() {
    let dir = TempDir::new("restart");
    let port = free_port();
    let mirage_addr = format!("127.0.0.1:{port}");
    let cfg = config(&dir.0, "ghost.r", &mirage_addr, "");
    let cfg = cfg.replace("max_ms = 2000", "max_ms = 400").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nexecute_without_token = true",
    );

    // Mirage is down: commands arrive through the admin boundary and their events wait.
    let mut g = GhostProc::start(&dir.0, &cfg);
    let ids = tokio::task::spawn_blocking({
        let mut a = g.admin();
        move || {
            let mut ids = Vec::new();
            for i in 0..N {
                let r = a.call(json!({"action": "execute", "command": {
                    "command_id": format!("cmd.r.{i}"), "intent_id": "intent.r",
                    "seed_selector": "seed.kv", "operation": "put",
                    "args": {"key": format!("k{i}"), "value": "v"}}}));
                assert_eq!(r["ok"], true, "{r}");
                ids.push(r["data"]["event"]["EventID"].as_str().unwrap().to_owned());
            }
            let st = a.call(json!({"action": "status"}));
            assert_eq!(st["data"]["Outbox"]["pending"], N, "{st}");
            ids
        }
    })
    .await
    .unwrap();

    g.sigkill();
    let g = GhostProc::start(&dir.0, &cfg);

    // Mirage comes back: every event arrives, each once.
    let mirage = FakeMirage::bind(port).await;
    let mut conn = mirage.accept().await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < N && Instant::now() < deadline {
        if let Some(e) = conn.next_event(Duration::from_secs(5)).await {
            *seen.entry(e.event_id.clone()).or_default() += 1;
            conn.ack(&e).await;
        }
    }
    // Anything more would be a duplicate.
    while let Some(e) = conn.next_event(Duration::from_secs(2)).await {
        *seen.entry(e.event_id.clone()).or_default() += 1;
        conn.ack(&e).await;
    }
    // The dedupe window is persisted: the restarted process does not run cmd.r.0 again
    // (sent again through the admin boundary: Mirage's ids are another space, issue 19 item
    // 9); its stored event is sent again.
    let (again, st) = tokio::task::spawn_blocking({
        let mut a = g.admin();
        move || {
            let r = a.call(json!({"action": "execute", "command": {
                "command_id": "cmd.r.0", "intent_id": "intent.r",
                "seed_selector": "seed.kv", "operation": "put",
                "args": {"key": "k0", "value": "v"}}}));
            (r, a.call(json!({"action": "status"})))
        }
    })
    .await
    .unwrap();
    assert_eq!(again["data"]["event"]["EventID"], "evt.cmd.r.0", "{again}");
    let replay = conn
        .next_event(Duration::from_secs(5))
        .await
        .expect("replayed event");
    assert_eq!(
        replay.event_id, "evt.admin:cmd.r.0",
        "namespaced on the session"
    );
    conn.ack(&replay).await;
    assert_eq!(st["data"]["Dispatcher"]["executed"], 0, "{st}");
    assert_eq!(st["data"]["Dispatcher"]["replayed"], 1, "{st}");

    // On the session, admin events carry their namespaced ids (Mirage knows no such command).
    let ids: Vec<String> = ids
        .iter()
        .map(|i| format!("evt.admin:{}", i.trim_start_matches("evt.")))
        .collect();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), want);
    assert!(seen.values().all(|&c| c == 1), "duplicates: {seen:?}");
    eprintln!(
        "delivered {} events after SIGKILL + restart, each once",
        seen.len()
    );

    // Acked events are gone for good once their removal is on disk: another crash and
    // restart sends nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = tokio::task::spawn_blocking({
            let mut a = g.admin();
            move || a.call(json!({"action": "status"}))
        })
        .await
        .unwrap();
        assert_eq!(st["data"]["Outbox"]["pending"], 0, "{st}");
        if st["data"]["Outbox"]["unsynced"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "acks never synced: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(conn);
    let mut g = g;
    g.sigkill();
    let _g = GhostProc::start(&dir.0, &cfg);
    let mut conn = mirage.accept().await;
    assert!(conn.next_event(Duration::from_secs(2)).await.is_none());
}
