//! Withdraw does not hand a seed lock on while the withdrawn command still runs (issue 23
//! item 4): the holder keeps the lock until its command's terminal event arrives (or its
//! attempt timeout passes); only then is the waiter's step dispatched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn plan(id: &str, ms: u64) -> String {
    format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={{ms=\"{ms}\"}}\nblocking=true\ntimeout=\"30s\"\n"
    )
}

fn report_with(m: &Mirage, id: &str, text: &str) -> Option<Value> {
    m.reports(id)
        .into_iter()
        .find(|r| r["summary"].as_str().unwrap_or_default().contains(text))
}

fn wait_report(m: &Mirage, id: &str, text: &str) -> Value {
    let deadline = Instant::now() + T;
    loop {
        if let Some(r) = report_with(m, id, text) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no report {text:?} for {id}: {:?}\n{}",
            m.reports(id),
            tail(&m.proc.log_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn withdrawing_the_holder_mid_step_keeps_the_lock_until_its_command_ends() {
    let dir = TempDir::new("withdraw-lock");
    let m = Mirage::start(&dir, 0, "");
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    const HOLD_MS: u64 = 3000;
    let a = m.submit(&plan("holder", HOLD_MS));
    let a_sent = wait_report(&m, &a, "dispatched to g1");
    let b = m.submit(&plan("waiter", 50));
    wait_report(&m, &b, "waiting on seed lock g1::seed.flow held by holder");

    let (st, v) = m.delete(&format!("/v1/intents/{a}"));
    let withdrawn_at = Instant::now();
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "withdrawing", "its command still runs: {v}");
    let (_, d) = m.get(&format!("/v1/intents/{a}"));
    assert_eq!(d["summary"]["status"], "withdrawing", "{d}");
    let held = m.held_locks();
    assert!(
        held.iter()
            .any(|l| l["holder"]["owner"]["intent_id"] == "holder"),
        "the withdrawn holder keeps the lock: {held:?}"
    );

    m.wait_status(&a, "withdrawn", T);
    let a_end = wait_report(&m, &a, "running command(s) ended");
    let b_sent = wait_report(&m, &b, "dispatched to g1");
    m.wait_status(&b, "satisfied", T);
    let gap = b_sent["timestamp_ms"].as_u64().unwrap() - a_sent["timestamp_ms"].as_u64().unwrap();
    assert!(
        b_sent["seq"].as_u64() > a_end["seq"].as_u64(),
        "the waiter is dispatched only after the holder's command ended: {a_end} / {b_sent}"
    );
    assert!(
        gap >= HOLD_MS - 100,
        "the waiter's step went out {gap} ms after the holder's ({HOLD_MS} ms sleep)"
    );
    assert!(m.held_locks().is_empty(), "{:?}", m.held_locks());
    eprintln!(
        "withdraw mid-step: waiter dispatched {gap} ms after the holder's {HOLD_MS} ms command started \
         ({} ms after the withdraw), after its end",
        withdrawn_at.elapsed().as_millis()
    );
}
