//! Issue 11 item 3: `seed.service` runs only allowlisted processes, supervises them (restart
//! per policy with backoff, an unexpected exit observed at once), answers status and logs,
//! and the Ghost's SIGTERM leaves no child behind. Real `ghost`, `mirage` and child processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(40);

fn exec(g: &Ghost, op: &str, args: Value) -> Value {
    g.admin(json!({"action": "execute", "command": {
        "seed_selector": "seed.service", "operation": op, "args": args}}))
}

fn outcome(r: &Value) -> &str {
    r["data"]["event"]["Outcome"].as_str().unwrap_or("?")
}

fn pid_of(r: &Value) -> u32 {
    let v: Value = serde_json::from_str(seed_text(r, "Stdout").trim()).unwrap_or(Value::Null);
    v["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {r}")) as u32
}

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
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

const SERVICES: &str = r#"seeds = ["seed.service"]
[services.sleeper]
argv = ["sleep", "1000"]
restart = "on-failure"
backoff_initial_ms = 100
ready = "exec:true"
stop_grace_ms = 2000
[services.once]
argv = ["sh", "-c", "echo hello-from-once; echo second line; exit 3"]
restart = "no"
"#;

#[test]
fn allowlisted_services_are_supervised_observed_and_never_orphaned() {
    let dir = TempDir::new("seed-service");
    let m = Mirage::start(&dir, 0, "");
    let mut g = Ghost::start(&dir, "g1", &m.session, SERVICES);
    m.wait_ghosts(1, T);

    // Nothing outside the allowlist runs, whatever the arguments say.
    let r = exec(&g, "start", json!({"name": "nope"}));
    assert_eq!(outcome(&r), "error");
    assert!(seed_text(&r, "Stderr").contains("not allowlisted"), "{r}");
    let r = exec(&g, "start", json!({"name": "sleeper", "argv": "rm -rf /"}));
    assert_eq!(outcome(&r), "error");
    assert!(r.to_string().contains("argv"), "{r}");

    let r = exec(&g, "start", json!({"name": "sleeper"}));
    assert_eq!(outcome(&r), "success", "{r}");
    let p1 = pid_of(&r);
    assert!(alive(p1));
    wait_for("the running observation", T, || {
        m.get("/v1/ghosts/g1").1["observed"]["seed.service/sleeper"]["state"]["state"] == "running"
    });

    // SIGKILL behind the Ghost's back: observed at once, restarted per policy.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &p1.to_string()])
        .status();
    let t0 = Instant::now();
    let obs =
        |m: &Mirage| m.get("/v1/ghosts/g1").1["observed"]["seed.service/sleeper"]["state"].clone();
    wait_for("the exit observation", T, || {
        obs(&m)["last_exit"] == "signal 9"
    });
    let seen = t0.elapsed();
    assert!(
        seen < Duration::from_secs(1),
        "exit observed after {seen:?}"
    );
    wait_for("the restart", T, || {
        let o = obs(&m);
        o["state"] == "running" && o["restarts"] == "1"
    });
    let restarted = t0.elapsed();
    let st = exec(&g, "status", json!({"name": "sleeper"}));
    let p2 = pid_of(&st);
    assert_ne!(p1, p2);
    assert!(alive(p2));

    // restart=no: a process that fails at once fails its start, naming its exit, and stays
    // down; its log is readable, bounded by lines.
    let r = exec(&g, "start", json!({"name": "once"}));
    assert_eq!(outcome(&r), "error", "{r}");
    assert!(seed_text(&r, "Stderr").contains("exit code 3"), "{r}");
    wait_for("once to fail", T, || {
        seed_text(&exec(&g, "status", json!({"name": "once"})), "Stdout").contains("\"failed\"")
    });
    let logs = exec(&g, "logs", json!({"name": "once", "lines": "1"}));
    assert_eq!(seed_text(&logs, "Stdout"), "second line\n", "{logs}");
    let bad = exec(&g, "logs", json!({"name": "once", "lines": "100000"}));
    assert!(seed_text(&bad, "Stderr").contains("lines"), "{bad}");

    // stop / start give a new process; the Ghost's SIGTERM stops it (checked by PID).
    let r = exec(&g, "stop", json!({"name": "sleeper"}));
    assert_eq!(outcome(&r), "success", "{r}");
    wait_for("the stopped process to go", T, || !alive(p2));
    let p3 = pid_of(&exec(&g, "start", json!({"name": "sleeper"})));
    assert!(alive(p3));
    assert_eq!(g.proc.sigterm(), Some(0));
    wait_for(
        "no orphan after the Ghost's SIGTERM",
        Duration::from_secs(5),
        || !alive(p3),
    );
    eprintln!(
        "SIGKILL of the service: exit observed by Mirage in {} ms, running again (restarts=1) in {} ms; no orphan after SIGTERM",
        seen.as_millis(),
        restarted.as_millis()
    );
}
