//! Events produced while Mirage is unreachable survive SIGKILL of the Ghost and reach Mirage
//! exactly once after it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use shared::envelope::{Command, Envelope};

const N: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_sigkill_and_delivers_each_event_once() {
    let dir = TempDir::new("restart");
    let mirage = FakeMirage::bind(0).await;
    let cfg = config(&dir.0, "ghost.r", &mirage.addr(), "");
    let cfg = cfg.replace("max_ms = 2000", "max_ms = 400");

    // Mirage sends N commands on the session and never acks their events: they wait in the
    // outbox. (Admin-run commands are answered in the admin reply only, issue 21 item 1.)
    let mut g = GhostProc::start(&dir.0, &cfg);
    let mut conn = mirage.accept().await;
    for i in 0..N {
        conn.send(Envelope::Command(Command {
            command_id: format!("cmd.r.{i}"),
            intent_id: "intent.r".into(),
            ghost_id: "ghost.r".into(),
            seed_selector: "seed.kv".into(),
            operation: "put".into(),
            args: [
                ("key".to_string(), format!("k{i}")),
                ("value".to_string(), "v".to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }))
        .await;
    }
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.len() < N && Instant::now() < deadline {
        if let Some(e) = conn.next_event(Duration::from_secs(5)).await {
            *first.entry(e.event_id.clone()).or_default() += 1;
        }
    }
    assert_eq!(first.len(), N, "every command answered once: {first:?}");
    let st = tokio::task::spawn_blocking({
        let mut a = g.admin();
        move || a.call(json!({"action": "status"}))
    })
    .await
    .unwrap();
    assert_eq!(st["data"]["Outbox"]["pending"], N, "{st}");
    let ids: Vec<String> = first.keys().cloned().collect();
    drop(conn);

    g.sigkill();
    let g = GhostProc::start(&dir.0, &cfg);

    // The next session: every unacked event arrives again, each once.
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
    // The dedupe window is persisted: the restarted process does not run cmd.r.0 again when
    // Mirage re-sends it; its stored event is sent again.
    conn.send(Envelope::Command(Command {
        command_id: "cmd.r.0".into(),
        intent_id: "intent.r".into(),
        ghost_id: "ghost.r".into(),
        seed_selector: "seed.kv".into(),
        operation: "put".into(),
        args: [
            ("key".to_string(), "k0".to_string()),
            ("value".to_string(), "v".to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }))
    .await;
    let replay = conn
        .next_event(Duration::from_secs(5))
        .await
        .expect("replayed event");
    assert_eq!(replay.event_id, "evt.cmd.r.0");
    conn.ack(&replay).await;
    let st = tokio::task::spawn_blocking({
        let mut a = g.admin();
        move || a.call(json!({"action": "status"}))
    })
    .await
    .unwrap();
    assert_eq!(st["data"]["Dispatcher"]["executed"], 0, "{st}");
    assert_eq!(st["data"]["Dispatcher"]["replayed"], 1, "{st}");

    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ids);
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
        // The last ack was written just before this status request, on another socket.
        if st["data"]["Outbox"]["pending"] == 0 && st["data"]["Outbox"]["unsynced"] == 0 {
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
