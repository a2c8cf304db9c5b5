//! Issue 18 item 3: the supervision policy. A panic in a state-owning actor (an intent plan,
//! a seed lock) restarts it from its persisted state and the intent still ends satisfied with
//! every effect once (RELIABILITY.md); a panic in a non-restartable actor (the orchestrator
//! Supervisor) ends the process with a clear log line and a non-zero code. Faults come from
//! `MIRAGE_FAULT`, which debug builds only read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(30);

fn kv_plan(id: &str, steps: &[(&str, &str)]) -> String {
    let mut p =
        format!("intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n");
    for (k, v) in steps {
        p.push_str(&format!(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"{k}\",value=\"{v}\"}}\nblocking=true\n"
        ));
    }
    p
}

fn alive(m: &mut Mirage) -> bool {
    matches!(m.proc.child.try_wait(), Ok(None))
}

#[test]
fn a_plan_that_panics_restarts_from_its_persisted_state() {
    let dir = TempDir::new("sup-plan");
    let mut m = Mirage::start_env(&dir, 0, "", &[("MIRAGE_FAULT", "plan")]);
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let id = m.submit(&kv_plan("p1", &[("a", "1"), ("b", "2")]));
    m.wait_status(&id, "satisfied", T);
    let log = m.proc.log_text();
    assert!(log.contains("injected panic"), "{}", tail(&log, 30));
    assert!(
        log.contains("intent plan restarted from its persisted state"),
        "{}",
        tail(&log, 30)
    );
    // Effects once: two steps, two executions (the re-sent command was de-duplicated).
    assert_eq!(g.executed(), 2);
    assert!(m.held_locks().is_empty(), "{:?}", m.held_locks());
    // Still one Mirage, still serving.
    assert!(alive(&mut m));
    let id = m.submit(&kv_plan("p2", &[("c", "3")]));
    m.wait_status(&id, "satisfied", T);
    assert_eq!(g.executed(), 3);
    // (Reading the kv store goes through the Ghost's dispatcher too: read last.)
    assert_eq!(g.kv_get("a").as_deref(), Some("1"));
    assert_eq!(g.kv_get("b").as_deref(), Some("2"));
}

#[test]
fn a_lock_that_panics_restarts_from_its_persisted_state() {
    let dir = TempDir::new("sup-lock");
    let mut m = Mirage::start_env(&dir, 0, "", &[("MIRAGE_FAULT", "lock")]);
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let id = m.submit(&kv_plan("l1", &[("a", "1")]));
    m.wait_status(&id, "satisfied", T);
    let log = m.proc.log_text();
    assert!(
        log.contains("seed lock restarted from its persisted state"),
        "{}",
        tail(&log, 30)
    );
    assert_eq!(g.executed(), 1, "effects once");
    assert!(m.held_locks().is_empty(), "{:?}", m.held_locks());
    // The restarted lock still serialises: two intents on the same key both finish.
    let a = m.submit(&kv_plan("l2", &[("b", "2")]));
    let b = m.submit(&kv_plan("l3", &[("c", "3")]));
    m.wait_status(&a, "satisfied", T);
    m.wait_status(&b, "satisfied", T);
    assert_eq!(g.executed(), 3);
    assert!(m.held_locks().is_empty());
    assert!(alive(&mut m));
}

#[test]
fn a_panic_in_the_supervisor_ends_the_process() {
    let dir = TempDir::new("sup-abort");
    let mut m = Mirage::start_env(&dir, 0, "", &[("MIRAGE_FAULT", "supervisor")]);
    // The submission reaches the Supervisor, which panics; the answer may never come.
    let body = kv_plan("x1", &[("a", "1")]);
    if let Ok(mut s) = std::net::TcpStream::connect(&m.api) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "POST /v1/intents HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let deadline = Instant::now() + T;
    let code = loop {
        if let Some(st) = m.proc.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "mirage still running after the panic"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(70), "exit code");
    let log = m.proc.log_text();
    assert!(
        log.contains("unrecoverable panic in a non-restartable actor"),
        "{}",
        tail(&log, 20)
    );
}
