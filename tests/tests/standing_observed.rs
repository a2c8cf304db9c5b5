//! Issue 11 item 2: a standing intent's check reads the Ghost's latest observation
//! (`check = { observed = { state = "running" } }`), sends no check command, and notices a
//! seed.service child killed behind the Ghost's back (restart = "no", so only the standing
//! intent brings it back). Real `mirage`, `ghost` and child processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(60);

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

const SERVICES: &str = r#"seeds = ["seed.service"]
[services.sleeper]
argv = ["sleep", "1000"]
restart = "no"
ready = "exec:true"
stop_grace_ms = 2000
"#;

#[test]
fn a_standing_observed_check_restarts_a_killed_service() {
    let dir = TempDir::new("standing-observed");
    let m = Mirage::start(&dir, 0, "");
    let mut g = Ghost::start(&dir, "g1", &m.session, SERVICES);
    m.wait_ghosts(1, T);
    let id = m.submit(
        r#"
intent_id = "keep-sleeper"
actor = "test"
target_scope = "ghost:g1"
objective = "sleeper keeps running"
keep = "1s"
[[step]]
seed = "seed.service"
operation = "start"
args = { name = "sleeper" }
check = { observed = { state = "running" } }
"#,
    );
    m.wait_status(&id, "satisfied", T);
    let obs =
        |m: &Mirage| m.get("/v1/ghosts/g1").1["observed"]["seed.service/sleeper"]["state"].clone();
    let pid = |m: &Mirage| obs(m)["pid"].as_str().and_then(|p| p.parse::<u32>().ok());
    wait_for("the running observation", T, || {
        obs(&m)["state"] == "running"
    });
    let p1 = pid(&m).expect("a pid in the observation");
    assert!(alive(p1));
    // Let a few re-check rounds pass: they read the observation, sending no check command.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, d) = m.get(&format!("/v1/intents/{id}"));
    let outs = d["plan"]["outputs"].as_array().cloned().unwrap_or_default();
    assert!(
        outs.iter().all(|o| o["kind"] != "check"),
        "an observed check sends no command: {outs:?}"
    );
    assert_eq!(outs.len(), 1, "only the first start ran: {outs:?}");
    assert_eq!(pid(&m), Some(p1), "nothing restarted a running service");

    let _ = std::process::Command::new("kill")
        .args(["-KILL", &p1.to_string()])
        .status();
    let killed = Instant::now();
    let took = wait_for("the standing intent to restart the service", T, || {
        let s: Vec<String> = m
            .reports(&id)
            .iter()
            .map(|r| r["summary"].as_str().unwrap_or_default().to_owned())
            .collect();
        s.iter()
            .any(|x| x.contains("corrected and satisfied again"))
            && obs(&m)["state"] == "running"
            && pid(&m).is_some_and(|p| p != p1)
    });
    let p2 = pid(&m).unwrap();
    assert!(alive(p2), "the restarted service runs");
    let drift: Vec<String> = m
        .reports(&id)
        .iter()
        .map(|r| r["summary"].as_str().unwrap_or_default().to_owned())
        .filter(|s| s.contains("drift"))
        .collect();
    assert!(!drift.is_empty(), "the drift was reported");
    assert_eq!(m.delete(&format!("/v1/intents/{id}")).0, 202);
    m.wait_status(&id, "withdrawn", T);
    assert_eq!(g.proc.sigterm(), Some(0));
    wait_for(
        "no orphan after the Ghost's SIGTERM",
        Duration::from_secs(5),
        || !alive(p2),
    );
    eprintln!(
        "killed service (restart = no) restarted by the standing observed check {} ms after SIGKILL (wait loop {} ms)",
        killed.elapsed().as_millis(),
        took.as_millis()
    );
}
