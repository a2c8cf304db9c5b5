//! The Ghost against an in-test Mirage over loopback, with the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use shared::envelope::{Command, Envelope, Outcome};
use shared::handshake::CAP_SESSION_COMMAND;

fn cmd(id: &str, ghost: &str, seed: &str, op: &str, args: &[(&str, &str)]) -> Command {
    Command {
        command_id: id.into(),
        intent_id: "intent.t".into(),
        ghost_id: ghost.into(),
        seed_selector: seed.into(),
        operation: op.into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_and_reconnects_with_growing_jittered_delay() {
    let dir = TempDir::new("hb");
    let mirage = FakeMirage::bind(0).await;
    let _g = GhostProc::start(&dir.0, &config(&dir.0, "ghost.hb", &mirage.addr(), ""));
    let mut conn = mirage.accept().await;

    // The registration line has the vector's shape, plus our capability.
    assert_eq!(conn.reg.ghost_id, "ghost.hb");
    assert_eq!(conn.reg.peer_identity, "ghost.hb");
    let ids: Vec<_> = conn.reg.seeds().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["seed.flow", "seed.fs", "seed.kv"]);
    assert!(conn.reg.has_capability(CAP_SESSION_COMMAND));
    assert!(conn
        .reg
        .seeds()
        .iter()
        .all(|s| !s.name.is_empty() && !s.description.is_empty()));

    // Heartbeats, exactly as PROTOCOL.md §6; never acked here.
    for n in 1..=2u64 {
        let (_, env) = conn.recv(Duration::from_secs(5)).await.expect("heartbeat");
        let Envelope::Event(e) = env else {
            panic!("{env:?}")
        };
        assert_eq!(e.event_id, format!("evt.session.ghost.hb.{n}"));
        assert_eq!(e.command_id, format!("cmd.session.heartbeat.{n}"));
        assert_eq!(e.intent_id, "intent.session.heartbeat");
        assert_eq!(e.seed_id, "seed.session");
        assert_eq!(e.outcome, Outcome::Success);
    }
    // Nothing from Mirage for dead_after (1 s): the Ghost drops the session and redials.
    let start = Instant::now();
    while conn.recv(Duration::from_secs(5)).await.is_some() {}
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "session not dropped in time"
    );

    // Now refuse every handshake: attempts come with growing, jittered gaps.
    let mut at = Vec::new();
    while at.len() < 5 {
        let (s, _) = tokio::time::timeout(Duration::from_secs(10), mirage.listener.accept())
            .await
            .expect("redial")
            .unwrap();
        at.push(Instant::now());
        drop(s);
    }
    let gaps: Vec<f64> = at
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
        .collect();
    eprintln!("redial gaps ms: {gaps:?}");
    // Unjittered bases would be 200, 400, 800, 1600 (attempts 2..5); jitter is U[0.5,1.5).
    assert!(gaps[3] > gaps[0], "delay grows: {gaps:?}");
    let bases = [200.0, 400.0, 800.0, 1600.0];
    for (g, b) in gaps.iter().zip(bases) {
        assert!(
            *g >= b * 0.5 - 30.0 && *g <= b * 1.5 + 150.0,
            "gap {g} outside jitter of {b}: {gaps:?}"
        );
    }
    assert!(
        gaps.iter().zip(bases).any(|(g, b)| (g - b).abs() > b * 0.1),
        "no jitter visible: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_yield_one_event_and_replays_do_not_run_again() {
    let dir = TempDir::new("cmd");
    let mirage = FakeMirage::bind(0).await;
    let g = GhostProc::start(&dir.0, &config(&dir.0, "ghost.c", &mirage.addr(), ""));
    let mut conn = mirage.accept().await;

    conn.send(Envelope::Command(cmd(
        "c1",
        "ghost.c",
        "seed.flow",
        "echo",
        &[("msg", "hi")],
    )))
    .await;
    let e1 = conn
        .next_event(Duration::from_secs(5))
        .await
        .expect("event");
    assert_eq!(e1.event_id, "evt.c1");
    assert_eq!(e1.command_id, "c1");
    assert_eq!(e1.intent_id, "intent.t");
    assert_eq!(e1.outcome, Outcome::Success);
    assert_eq!(e1.stdout.as_deref(), Some(&b"flow echo: msg=hi\n"[..]));
    assert_eq!(e1.execution_id.as_deref(), Some("exec.c1"));
    conn.ack(&e1).await;

    // The same command_id again: the stored event comes back, the seed does not run.
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.send(Envelope::Command(cmd(
        "c1",
        "ghost.c",
        "seed.flow",
        "echo",
        &[("msg", "hi")],
    )))
    .await;
    let e2 = conn
        .next_event(Duration::from_secs(5))
        .await
        .expect("replayed event");
    assert_eq!(
        e2, e1,
        "identical event, same timestamp: not executed again"
    );
    conn.ack(&e2).await;

    // Exactly one event per command: nothing else but heartbeats follows.
    assert!(conn.next_event(Duration::from_millis(600)).await.is_none());
    let st = tokio::task::spawn_blocking({
        let mut a = g.admin();
        move || a.call(json!({"action": "status"}))
    })
    .await
    .unwrap();
    assert_eq!(st["data"]["Dispatcher"]["executed"], 1, "{st}");
    assert_eq!(st["data"]["Dispatcher"]["replayed"], 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_get_error_events_not_silence() {
    let dir = TempDir::new("bad");
    let mirage = FakeMirage::bind(0).await;
    let _g = GhostProc::start(&dir.0, &config(&dir.0, "ghost.b", &mirage.addr(), ""));
    let mut conn = mirage.accept().await;

    let cases = [
        (cmd("u1", "ghost.b", "seed.nope", "x", &[]), "unknown seed"),
        (
            cmd("u2", "ghost.b", "seed.flow", "rm", &[]),
            "unknown operation",
        ),
        (
            cmd("u3", "ghost.other", "seed.flow", "status", &[]),
            "delivered to",
        ),
        (
            cmd(
                "u4",
                "ghost.b",
                "seed.kv",
                "put",
                &[("colour", "x"), ("key", "k")],
            ),
            "does not take argument",
        ),
    ];
    for (c, why) in cases {
        let id = c.command_id.clone();
        conn.send(Envelope::Command(c)).await;
        let e = conn
            .next_event(Duration::from_secs(5))
            .await
            .expect("error event");
        assert_eq!(e.command_id, id);
        assert_eq!(e.outcome, Outcome::Error);
        assert_eq!(e.error_code, Some(1300), "{e:?}");
        assert!(
            e.error_reason.as_deref().unwrap_or("").contains(why),
            "{e:?}"
        );
        conn.ack(&e).await;
    }

    // Fencing: token 5 acts, then a holder with token 3 is stale.
    let mut c = cmd(
        "f1",
        "ghost.b",
        "seed.kv",
        "put",
        &[("key", "k"), ("value", "v")],
    );
    c.lock_token = Some(5);
    conn.send(Envelope::Command(c)).await;
    let e = conn.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e.outcome, Outcome::Success, "{e:?}");
    conn.ack(&e).await;
    let mut c = cmd(
        "f2",
        "ghost.b",
        "seed.kv",
        "put",
        &[("key", "k"), ("value", "stale")],
    );
    c.lock_token = Some(3);
    conn.send(Envelope::Command(c)).await;
    let e = conn.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e.outcome, Outcome::Error);
    assert!(e.error_reason.unwrap().contains("stale lock_token 3"));
    // The stale write did not happen.
    conn.send(Envelope::Command(cmd(
        "f3",
        "ghost.b",
        "seed.kv",
        "get",
        &[("key", "k")],
    )))
    .await;
    let e = conn.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e.stdout.as_deref(), Some(&b"v\n"[..]));
}

#[test]
fn required_policy_exits_when_mirage_never_answers() {
    let dir = TempDir::new("req");
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = config(&dir.0, "ghost.req", &dead, "").replace(
        "policy = \"auto\"",
        "policy = \"required\"\nmax_connect_attempts = 3",
    );
    let mut g = GhostProc::start(&dir.0, &cfg);
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(st) = g.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "ghost kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(3));
    assert!(
        read_log(&dir.0).contains("no Mirage after 3 attempts"),
        "{}",
        read_log(&dir.0)
    );
}
