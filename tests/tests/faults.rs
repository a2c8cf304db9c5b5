//! Fault scenarios (issue 7): a partitioned Ghost, stalled acks, a lock holder's Ghost dying,
//! a Mirage restart under 2,000 Ghosts, a slow link and a frame cut in its middle. Each
//! asserts the invariants: the intent ends satisfied, every effect happens once, nothing is
//! lost.
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
    let partitioned = Instant::now();
    proxy.blackhole(false);
    proxy.cut(); // the stale connection goes; g3 redials through the healed link
    m.wait_status(&id, "satisfied", T);
    eprintln!(
        "partition: intent satisfied {:.2}s after the heal",
        partitioned.elapsed().as_secs_f64()
    );
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
    let resumed = Instant::now();
    let deadline = Instant::now() + T;
    loop {
        let st = g.admin(serde_json::json!({"action": "status"}));
        if st["data"]["Outbox"]["pending"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "outbox never drained: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = resumed.elapsed();
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
    eprintln!(
        "ack stall: {} acks dropped, {dup} duplicate events acked again, 5 commands run once; outbox empty {:.2}s after acks resumed",
        proxy.dropped_acks(),
        drained.as_secs_f64()
    );
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

#[test]
fn the_lock_holders_ghost_dies_and_the_waiting_intent_proceeds() {
    let dir = TempDir::new("holder-dies");
    let m = Mirage::start(&dir, 0, "");
    let port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    let mut g = Ghost::start(&dir, "g1", &format!("127.0.0.1:{port}"), "");
    m.wait_ghosts(1, T);
    let plan = |id: &str, ms: u32, timeout: &str| {
        format!("intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={{ms=\"{ms}\"}}\nblocking=true\ntimeout=\"{timeout}\"\n")
    };
    let a = m.submit(&plan("holder", 5000, "2s"));
    std::thread::sleep(Duration::from_millis(300));
    let b = m.submit(&plan("waiter", 10, "30s"));
    std::thread::sleep(Duration::from_millis(300));
    // The holder's Ghost dies mid-step.
    g.proc.sigkill();
    let killed = Instant::now();
    // Its attempt times out, the lock goes to the waiter.
    let d = m.wait_status(&a, "failed", T);
    let failed_after = killed.elapsed();
    assert!(
        d["plan"]["failure"].as_str().unwrap().contains("no event"),
        "{d}"
    );
    let (_, locks) = m.get("/v1/locks");
    assert_eq!(
        locks[0]["holder"]["owner"]["intent_id"], "waiter",
        "{locks}"
    );
    assert_eq!(locks[0]["holder"]["token"], 2);
    // The Ghost comes back; the waiter's command reaches it and completes.
    let restarted = Instant::now();
    g = Ghost::start(&dir, "g1", &format!("127.0.0.1:{port}"), "");
    m.wait_status(&b, "satisfied", T);
    eprintln!(
        "holder dies: holder failed {:.2}s after the kill (2 s step timeout), waiter satisfied {:.2}s after the Ghost restarted",
        failed_after.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    let (_, locks) = m.get("/v1/locks");
    assert!(locks[0]["holder"].is_null(), "{locks}");
    drop(g);
}

#[test]
fn mirage_restart_with_2000_connected_ghosts_all_reregister() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let n = 2000;
    let dir = TempDir::new("storm");
    let mut m = Mirage::start(&dir, 0, "");
    let port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    let mut swarm = Command::new(bin("ghost"))
        .args([
            "swarm",
            "--mirage",
            &m.session,
            "--count",
            &n.to_string(),
            "--heartbeat-ms",
            "2000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = swarm.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(out).lines() {});
    m.wait_ghosts(n, Duration::from_secs(120));
    let rss = m.proc.rss_kib();
    eprintln!("{n} ghosts connected; Mirage RSS {rss} KiB");
    m.proc.sigterm();
    let t = Instant::now();
    let m = Mirage::start(&dir, port, "");
    m.wait_ghosts(n, Duration::from_secs(120));
    let took = t.elapsed();
    eprintln!(
        "{n} ghosts re-registered {:.2}s after the Mirage restart",
        took.as_secs_f64()
    );
    // They work: an intent over ten of them (swarm-10 … swarm-19).
    let id = m.submit("intent_id=\"after-storm\"\nactor=\"t\"\ntarget_scope=\"ghost:swarm-1?\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\ntimeout=\"60s\"\n");
    m.wait_status(&id, "satisfied", Duration::from_secs(120));
    let _ = swarm.kill();
    let _ = swarm.wait();
}

#[test]
fn a_slow_link_and_a_frame_cut_in_its_middle_lose_nothing_and_repeat_nothing() {
    let dir = TempDir::new("slowcut");
    let m = Mirage::start(&dir, 0, "");
    let proxy = Proxy::start(&m.session);
    let g = Ghost::start(&dir, "g1", &proxy.addr, "");
    m.wait_ghosts(1, T);
    let plan = |id: &str| {
        format!("intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"{id}\",value=\"v\"}}\ntimeout=\"30s\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\ntimeout=\"30s\"\n")
    };
    // Slow link: 150 ms each way on every chunk (heartbeats still arrive within dead_after).
    proxy.delay(150);
    let t = Instant::now();
    let slow = m.submit(&plan("slow"));
    m.wait_status(&slow, "satisfied", T);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(4 * 150),
        "two round trips through the delay: {took:?}"
    );
    eprintln!(
        "slow link: 2-step intent satisfied in {:.2}s",
        took.as_secs_f64()
    );
    proxy.delay(0);
    // The next command frame is cut in its middle: the Ghost sees a truncated frame and a
    // closed connection, redials, and Mirage sends the command again (same command_id).
    proxy.cut_next_frame();
    let t = Instant::now();
    let cut = m.submit(&plan("cut"));
    m.wait_status(&cut, "satisfied", T);
    assert_eq!(proxy.frames_cut(), 1, "a frame was cut");
    eprintln!(
        "mid-frame cut: intent satisfied {:.2}s after submit",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(g.kv_get("slow").as_deref(), Some("v"));
    assert_eq!(g.kv_get("cut").as_deref(), Some("v"));
    // 4 commands ran once each, plus our two reads.
    assert_eq!(g.executed(), 6, "nothing ran twice, nothing was lost");
}
