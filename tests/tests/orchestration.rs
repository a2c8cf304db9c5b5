//! Mirage with real Ghosts over loopback (issue 4, acceptance 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e::fake_ghost::{registration, FakeGhost};
use e2e::proxy::Proxy;
use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn summaries(reports: &[Value]) -> Vec<String> {
    reports
        .iter()
        .map(|r| r["summary"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn three_step_intent_across_three_ghosts_is_satisfied_with_the_right_reports() {
    let dir = TempDir::new("three");
    let m = Mirage::start(&dir, 0, "");
    let ghosts: Vec<Ghost> = ["g1", "g2", "g3"]
        .iter()
        .map(|g| Ghost::start(&dir, g, &m.session, ""))
        .collect();
    m.wait_ghosts(3, T);
    let id = m.submit(
        r#"
intent_id = "three"
actor = "test"
target_scope = "ghost:g*"
objective = "three steps"
[[step]]
seed = "seed.kv"
operation = "put"
args = { key = "color", value = "blue" }
[[step]]
seed = "seed.flow"
operation = "step"
args = { name = "plan" }
on = "g2"
[[step]]
seed = "seed.fs"
operation = "write"
args = { path = "hello.txt", content = "hi" }
blocking = true
"#,
    );
    let detail = m.wait_status(&id, "satisfied", T);
    assert_eq!(detail["summary"]["steps_done"], 3);
    let s = summaries(&m.reports(&id));
    let want = [
        "intent three accepted: 3 step(s) over ghost:g*",
        "intent three step 1/3 dispatched to g1, g2, g3",
        "intent three step 1/3 done",
        "intent three step 2/3 dispatched to g2",
        "intent three step 2/3 done",
        "intent three step 3/3 dispatched to g1, g2, g3",
        "intent three satisfied: 3 step(s) done",
    ];
    assert_eq!(s, want);
    let last = m.reports(&id).pop().unwrap();
    assert_eq!(last["phase"], "complete");
    assert_eq!(last["completion_state"], "satisfied");
    for g in &ghosts {
        assert_eq!(g.kv_get("color").as_deref(), Some("blue"));
    }
    // Effects happened once per ghost: 2 commands on g1/g3, 3 on g2 (plus our kv_get).
    assert_eq!(ghosts[0].executed(), 3);
    assert_eq!(ghosts[1].executed(), 4);
}

#[test]
fn contending_intents_wait_for_the_lock_and_fencing_tokens_rise() {
    let dir = TempDir::new("locks");
    let m = Mirage::start(&dir, 0, "");
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let plan = |id: &str, ms: u32| {
        format!(
            "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={{ms=\"{ms}\"}}\nblocking=true\n"
        )
    };
    let a = m.submit(&plan("first", 1500));
    std::thread::sleep(Duration::from_millis(200));
    let (_, locks) = m.get("/v1/locks");
    assert_eq!(locks[0]["key"], "g1::seed.flow");
    assert_eq!(locks[0]["holder"]["owner"]["intent_id"], "first");
    assert_eq!(locks[0]["holder"]["token"], 1);
    let b = m.submit(&plan("second", 10));
    std::thread::sleep(Duration::from_millis(300));
    let waiting = summaries(&m.reports(&b));
    assert!(
        waiting.iter().any(|s| s
            == "intent second step 1/1 waiting on seed lock g1::seed.flow held by first/step 1"),
        "{waiting:?}"
    );
    assert!(
        !waiting.iter().any(|s| s.contains("dispatched")),
        "nothing dispatched while blocked"
    );
    let (_, locks) = m.get("/v1/locks");
    assert_eq!(locks[0]["waiters"][0][0]["intent_id"], "second");
    m.wait_status(&a, "satisfied", T);
    m.wait_status(&b, "satisfied", T);
    let (_, locks) = m.get("/v1/locks");
    assert_eq!(
        locks[0]["last_token"], 2,
        "the second holder got a higher token: {locks}"
    );
    assert!(locks[0]["holder"].is_null());
}

#[test]
fn a_failing_step_stops_the_plan() {
    let dir = TempDir::new("fail");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let id = m.submit(
        "intent_id=\"f\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"fail\"\nargs={code=\"3\",message=\"disk full\"}\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"after\",value=\"x\"}\n",
    );
    m.wait_status(&id, "failed", T);
    let s = summaries(&m.reports(&id));
    assert!(
        s.last().unwrap().contains("failed at step 1/2 on g1"),
        "{s:?}"
    );
    assert!(s.last().unwrap().contains("disk full"), "{s:?}");
    assert!(!s.iter().any(|x| x.contains("step 2/2")), "{s:?}");
    assert_eq!(g.kv_get("after"), None, "step 2 never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_event_changes_nothing_and_gets_the_stored_ack() {
    let dir = TempDir::new("dup");
    let m = tokio::task::spawn_blocking({
        let d = dir.0.clone();
        move || Mirage::start(d, 0, "")
    })
    .await
    .unwrap();
    let mut fake = FakeGhost::connect(&m.session, &registration("fake", &["seed.kv"]))
        .await
        .unwrap();
    assert_eq!(fake.ack.session_id.as_deref(), Some("fake#1"));
    let api = m.api.clone();
    let plan = "intent_id=\"d\"\nactor=\"t\"\ntarget_scope=\"ghost:fake\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\"}\n[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\nargs={key=\"k\"}\n";
    let (st, _) =
        tokio::task::spawn_blocking(move || http(&api, "POST", "/v1/intents", Some(plan)))
            .await
            .unwrap();
    assert_eq!(st, 201);
    let c1 = fake
        .next_command(Duration::from_secs(10))
        .await
        .expect("command");
    // cmd.<intent>.s<submission>.<step>.<ghost>.<attempt>
    let parts: Vec<&str> = c1.command_id.split('.').collect();
    assert!(
        parts.len() == 6 && parts[..2] == ["cmd", "d"] && parts[2].starts_with('s'),
        "{}",
        c1.command_id
    );
    assert_eq!(parts[3..], ["1", "fake", "1"], "{}", c1.command_id);
    let e = fake.event_for(&c1, true);
    let (_, a1) = fake.event(&e).await;
    // The same event again, twice: the stored ack, unchanged, and no second transition.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, a2) = fake.event(&e).await;
    let (_, a3) = fake.event(&e).await;
    assert_eq!(a1, a2);
    assert_eq!(a1, a3);
    let c2 = fake
        .next_command(Duration::from_secs(10))
        .await
        .expect("step 2");
    assert_eq!(
        c2.command_id,
        format!("cmd.d.{}.2.fake.1", parts[2]),
        "same submission, step 2"
    );
    assert!(
        fake.next_command(Duration::from_millis(300))
            .await
            .is_none(),
        "step 2 sent once"
    );
    let e2 = fake.event_for(&c2, true);
    fake.event(&e2).await;
    let api = m.api.clone();
    let reports = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = http(&api, "GET", "/v1/reports?intent=d", None);
            let s = summaries(v.as_array().unwrap());
            if s.iter().any(|x| x.contains("satisfied")) || std::time::Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        reports
            .iter()
            .filter(|s| s.contains("step 1/2 done"))
            .count(),
        1,
        "{reports:?}"
    );
    assert_eq!(
        reports.iter().filter(|s| s.contains("satisfied")).count(),
        1,
        "{reports:?}"
    );
    drop(m);
}

#[test]
fn ghost_disconnect_mid_step_then_reconnect_completes_the_step_once() {
    let dir = TempDir::new("cut");
    let m = Mirage::start(&dir, 0, "");
    let proxy = Proxy::start(&m.session);
    let g = Ghost::start(&dir, "g1", &proxy.addr, "");
    m.wait_ghosts(1, T);
    let id = m.submit(
        "intent_id=\"c\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"1500\"}\ntimeout=\"20s\"\n",
    );
    std::thread::sleep(Duration::from_millis(400));
    proxy.cut();
    // Mirage notices the drop; the step keeps waiting for the same command.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, v) = m.get("/v1/ghosts/g1");
        if v["connected"] == false {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    m.wait_status(&id, "satisfied", T);
    assert_eq!(g.executed(), 1, "the step ran once despite the reconnect");
    let s = summaries(&m.reports(&id));
    assert_eq!(
        s.iter().filter(|x| x.contains("dispatched")).count(),
        1,
        "{s:?}"
    );
}

#[test]
fn withdraw_leaves_the_queue_and_a_broken_lock_fails_its_holder() {
    let dir = TempDir::new("withdraw");
    let m = Mirage::start(&dir, 0, "");
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let plan = |id: &str| {
        format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={{ms=\"3000\"}}\nblocking=true\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"{id}\",value=\"x\"}}\n"
    )
    };
    let a = m.submit(&plan("holder"));
    std::thread::sleep(Duration::from_millis(200));
    let b = m.submit(&plan("waiter"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(m.delete(&format!("/v1/intents/{b}")).0, 202);
    m.wait_status(&b, "withdrawn", T);
    let (_, locks) = m.get("/v1/locks");
    assert!(
        locks[0]["waiters"].as_array().unwrap().is_empty(),
        "{locks}"
    );
    assert_eq!(
        m.delete(&format!("/v1/intents/{b}")).0,
        409,
        "already finished"
    );
    assert_eq!(m.delete("/v1/intents/nope").0, 404);
    // The operator breaks the holder's lock: it loses it and fails; the lock is free.
    assert_eq!(m.delete("/v1/locks/g1::seed.flow").0, 202);
    let d = m.wait_status(&a, "failed", T);
    assert!(
        d["plan"]["failure"]
            .as_str()
            .unwrap()
            .contains("taken away"),
        "{d}"
    );
    let (_, locks) = m.get("/v1/locks");
    assert!(locks[0]["holder"].is_null());
    assert_eq!(m.delete("/v1/locks/none::seed.x").0, 404);
}

#[test]
fn a_standing_intent_corrects_drift() {
    let dir = TempDir::new("keep");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let id = m.submit(
        "intent_id=\"keep\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"k stays v\"\nkeep=\"1s\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\ncheck={operation=\"get\",args={key=\"k\"}}\n",
    );
    m.wait_status(&id, "satisfied", T);
    assert_eq!(g.kv_get("k").as_deref(), Some("v"));
    // Drift: someone deletes the key behind Mirage's back.
    let r = g.admin(serde_json::json!({"action": "execute", "command": {"seed_selector": "seed.kv", "operation": "delete", "args": {"key": "k"}}}));
    assert_eq!(r["ok"], true);
    let deadline = std::time::Instant::now() + T;
    loop {
        let s = summaries(&m.reports(&id));
        if s.iter()
            .any(|x| x.contains("corrected and satisfied again"))
        {
            assert!(
                s.iter()
                    .any(|x| x.contains("drift: step 1/1 check failed on g1")),
                "{s:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no correction: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let corrective: Vec<Value> = m
        .reports(&id)
        .into_iter()
        .filter(|r| r["completion_state"] == "corrective")
        .collect();
    assert_eq!(corrective.len(), 1);
    assert_eq!(g.kv_get("k").as_deref(), Some("v"), "drift corrected");
    // Withdrawing ends it.
    assert_eq!(m.delete(&format!("/v1/intents/{id}")).0, 202);
    m.wait_status(&id, "withdrawn", T);
}

#[test]
fn a_ghost_without_session_commands_is_driven_through_its_admin_boundary() {
    let dir = TempDir::new("admin");
    let edge = Ghost::start_headless(&dir, "edge");
    let m = Mirage::start(
        &dir,
        0,
        &format!(
            "[[ghost_admin]]\nid = \"edge\"\naddr = \"{}\"\ntoken = \"{}\"\n",
            edge.admin, edge.token
        ),
    );
    m.wait_ghosts(1, T);
    let (_, g) = m.get("/v1/ghosts/edge");
    assert_eq!(g["via_admin"], edge.admin.as_str(), "{g}");
    assert!(
        g["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "seed.kv"),
        "seeds learnt from list_seeds: {g}"
    );
    let id = m.submit(
        "intent_id=\"edge\"\nactor=\"t\"\ntarget_scope=\"ghost:edge\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"via\",value=\"admin\"}\nblocking=true\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\n",
    );
    m.wait_status(&id, "satisfied", T);
    assert_eq!(edge.kv_get("via").as_deref(), Some("admin"));
    // A refused command comes back as a failed step, not a hang.
    let id = m.submit(
        "intent_id=\"edge-bad\"\nactor=\"t\"\ntarget_scope=\"ghost:edge\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"fail\"\n",
    );
    m.wait_status(&id, "failed", T);
}
