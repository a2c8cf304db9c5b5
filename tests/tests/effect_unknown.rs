//! "Effect unknown" is never retried (issue 23 item 1, issue 19 item 11). A non-idempotent
//! append whose effect may have happened ends the step with "effect unknown … an operator
//! must check", whatever `retries` says: when the Ghost restarted mid-command (it refuses to
//! run it again), and when the attempt timed out without a terminal event (a stopped Ghost).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn wait_terminal(m: &Mirage, id: &str) -> serde_json::Value {
    let mut detail = serde_json::Value::Null;
    wait_until("the intent to end", T, || {
        detail = m.get(&format!("/v1/intents/{id}")).1;
        matches!(
            detail["summary"]["status"].as_str(),
            Some("satisfied" | "failed")
        )
    });
    detail
}

fn lines_of(file: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn outbox_drained(g: &Ghost) {
    wait_until("the Ghost's outbox to drain", T, || {
        g.admin(json!({"action": "status"}))["data"]["Outbox"]["pending"] == 0
    });
}

#[test]
fn ghost_sigkill_mid_append_with_retries_is_not_retried() {
    let dir = TempDir::new("unknown-kill");
    let m = Mirage::start(&dir, 0, "");
    let mut g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    // The append happens at once, its answer is held 6 s; `retries = 1` must not repeat it.
    let id = m.submit(
        "intent_id=\"uk\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.fs\"\noperation=\"append\"\nargs={path=\"count.log\",content=\"one\\n\",hold_ms=\"6000\"}\ntimeout=\"30s\"\nretries=1\n",
    );
    let file = dir.path("g1/fs/count.log");
    wait_until("the append", T, || lines_of(&file).len() == 1);
    g.proc.sigkill();
    let killed = Instant::now();
    g = Ghost::start(&dir, "g1", &m.session, "");
    let d = wait_terminal(&m, &id);
    let took = killed.elapsed();
    assert_eq!(d["summary"]["status"], "failed", "{d}");
    let failure = d["plan"]["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("effect unknown")
            && failure.contains("not retried (retries = 1)")
            && failure.contains("an operator must check g1"),
        "the failure says why and what to do: {failure}"
    );
    outbox_drained(&g);
    assert_eq!(lines_of(&file), ["one"], "appended once");
    assert_eq!(g.executed(), 0, "the restarted Ghost ran nothing");
    let reports = m.reports(&id);
    assert!(
        !reports.iter().any(|r| r["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("retrying")),
        "no retry was announced: {reports:?}"
    );
    eprintln!(
        "effect unknown (ghost restart, retries=1): 1 line, not retried, failed {:.2}s after the kill",
        took.as_secs_f64()
    );
}

/// SIGCONTs the process when dropped, so a failing test leaves nothing stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let st = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn a_non_idempotent_attempt_that_times_out_is_effect_unknown_and_not_retried() {
    let dir = TempDir::new("unknown-stop");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    // Answered within 2.5 s normally; the Ghost is stopped past the 5 s attempt timeout.
    let id = m.submit(
        "intent_id=\"us\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.fs\"\noperation=\"append\"\nargs={path=\"count.log\",content=\"one\\n\",hold_ms=\"2500\"}\ntimeout=\"5s\"\nretries=1\n",
    );
    let file = dir.path("g1/fs/count.log");
    wait_until("the append", T, || lines_of(&file).len() == 1);
    let stopped = Stopped::stop(g.proc.child.id());
    let at = Instant::now();
    let d = wait_terminal(&m, &id);
    let took = at.elapsed();
    drop(stopped);
    assert_eq!(d["summary"]["status"], "failed", "{d}");
    let failure = d["plan"]["failure"].as_str().unwrap_or_default().to_owned();
    assert!(
        failure.contains("effect unknown: no event for")
            && failure.contains("seed.fs append is not declared idempotent")
            && failure.contains("an operator must check g1"),
        "{failure}"
    );
    // Resumed, the Ghost finishes the held append; its late event changes nothing.
    m.wait_ghosts(1, T);
    outbox_drained(&g);
    assert_eq!(lines_of(&file), ["one"], "appended once");
    assert_eq!(g.executed(), 1, "no second attempt reached the Ghost");
    let (_, d) = m.get(&format!("/v1/intents/{id}"));
    assert_eq!(d["summary"]["status"], "failed", "{d}");
    eprintln!(
        "effect unknown (attempt timeout, Ghost stopped, retries=1): 1 line, not retried, failed {:.2}s after SIGSTOP",
        took.as_secs_f64()
    );
}
