//! SIGKILL Mirage in the middle of a 20-step plan; after a restart the intent ends satisfied
//! and every step's effect happened exactly once (issue 4, acceptance 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;

#[test]
fn mirage_sigkill_mid_plan_resumes_and_each_effect_happens_once() {
    let dir = TempDir::new("crash");
    let mut m = Mirage::start(&dir, 0, "");
    let session_port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, Duration::from_secs(20));

    // 20 steps: a short sleep, then a put, ten times.
    let mut plan = String::from(
        "intent_id=\"long\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"twenty\"\n",
    );
    for i in 0..10 {
        plan.push_str("[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"120\"}\ntimeout=\"20s\"\n");
        plan.push_str(&format!(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k{i}\",value=\"v{i}\"}}\nblocking=true\ntimeout=\"20s\"\n"
        ));
    }
    let id = m.submit(&plan);

    // Kill it once a few steps are done but well before the end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let done_before = loop {
        let (_, v) = m.get(&format!("/v1/intents/{id}"));
        let done = v["summary"]["steps_done"].as_u64().unwrap_or(0);
        if done >= 5 {
            break done;
        }
        assert!(Instant::now() < deadline, "plan did not progress: {v}");
        std::thread::sleep(Duration::from_millis(10));
    };
    m.proc.sigkill();
    eprintln!("killed mirage after {done_before} of 20 steps");
    assert!(done_before < 20);

    let restarted = Instant::now();
    let m = Mirage::start(&dir, session_port, "");
    let detail = m.wait_status(&id, "satisfied", Duration::from_secs(60));
    eprintln!(
        "mirage restarted; the remaining {} steps done, intent satisfied {:.2}s after the restart",
        20 - done_before,
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(detail["summary"]["steps_done"], 20);
    for i in 0..10 {
        assert_eq!(
            g.kv_get(&format!("k{i}")).as_deref(),
            Some(format!("v{i}").as_str())
        );
    }
    // 20 commands ran, each once (the 10 kv_get calls above are ours).
    assert_eq!(g.executed(), 30, "every step's effect exactly once");
    let held = m.held_locks();
    assert!(held.is_empty(), "no lock left held: {held:?}");
}
