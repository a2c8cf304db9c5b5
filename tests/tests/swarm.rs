//! `ghost swarm` against Mirage: many real sessions in one process, fan-out intents over all
//! of them. Also the regression test for events of one step persisted in the same group
//! commit: every event must be accepted (none rejected or lost) — the full-scale runs are
//! benchmarks (BENCHMARKS.md), this is their smoke version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

pub fn swarm(
    mirage: &str,
    count: usize,
    extra: &[&str],
) -> (std::process::Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(bin("ghost"))
        .args([
            "swarm",
            "--mirage",
            mirage,
            "--count",
            &count.to_string(),
            "--heartbeat-ms",
            "1000",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

#[test]
fn a_swarm_of_60_runs_fan_out_intents_and_every_event_is_accepted() {
    let dir = TempDir::new("swarm");
    let m = Mirage::start(&dir, 0, "");
    let (mut child, rx) = swarm(&m.session, 60, &[]);
    m.wait_ghosts(60, Duration::from_secs(30));
    for i in 0..3 {
        let id = m.submit(&format!(
            "intent_id=\"fan{i}\"\nactor=\"t\"\ntarget_scope=\"ghost:swarm-*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k\",value=\"{i}\"}}\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\n"
        ));
        m.wait_status(&id, "satisfied", Duration::from_secs(30));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        if v["events_acked"] == 360 {
            assert_eq!(v["commands"], 360);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every event was accepted: {v}"
        );
    }
    assert!(
        !m.proc.log_text().contains("not recorded"),
        "{}",
        tail(&m.proc.log_text(), 20)
    );
    let _ = child.kill();
    let _ = child.wait();
}
