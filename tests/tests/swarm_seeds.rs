//! `ghost swarm` runs seeds off its runtime (issue 19 item 15): a long `seed.flow sleep` on
//! one swarm Ghost does not hold up the others. The swarm runs on one runtime worker thread
//! here (TOKIO_WORKER_THREADS=1), so a seed run inline would freeze every session in it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(40);

#[test]
fn a_long_sleep_on_one_swarm_ghost_leaves_the_other_answering() {
    let dir = TempDir::new("swarm-sleep");
    let m = Mirage::start(&dir, 0, "");
    let mut child = Command::new(bin("ghost"))
        .args(["swarm", "--mirage", &m.session, "--count", "2"])
        .args(["--heartbeat-ms", "500", "--id-prefix", "sw-"])
        .env("TOKIO_WORKER_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    m.wait_ghosts(2, T);
    let sleep = m.submit(
        "intent_id=\"long\"\nactor=\"t\"\ntarget_scope=\"ghost:sw-0\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"8000\"}\ntimeout=\"30s\"\n",
    );
    // The sleep is on sw-0 once its step is dispatched.
    let deadline = Instant::now() + T;
    while !m
        .reports(&sleep)
        .iter()
        .any(|r| r["summary"].as_str().unwrap_or("").contains("dispatched"))
    {
        assert!(Instant::now() < deadline, "the sleep was not dispatched");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // let sw-0 take it up
    let asked = Instant::now();
    let echo = m.submit(
        "intent_id=\"quick\"\nactor=\"t\"\ntarget_scope=\"ghost:sw-1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={msg=\"hi\"}\ntimeout=\"30s\"\n",
    );
    m.wait_status(&echo, "satisfied", T);
    let answered = asked.elapsed();
    let (_, d) = m.get(&format!("/v1/intents/{sleep}"));
    assert_eq!(
        d["summary"]["status"], "active",
        "the sleep is still running: {d}"
    );
    assert!(
        answered < Duration::from_secs(4),
        "sw-1 answered in {answered:?}, while sw-0 sleeps 8 s"
    );
    m.wait_status(&sleep, "satisfied", T);
    println!(
        "sw-1 answered in {answered:?} while sw-0 slept 8 s (sleep satisfied {:?} after the echo was asked)",
        asked.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
}
