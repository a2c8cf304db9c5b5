//! The user boundary end to end: `mirage up` with its local Ghost, `mirage issue submit
//! --wait`, the table commands, and `mirage reports --follow` resuming across a restart
//! (issue 5, acceptance 1 and 5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::*;

fn cli(api: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("mirage"))
        .args(args)
        .env("MIRAGE_API", format!("http://{api}"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mirage_up_runs_hello_to_satisfied_on_the_local_ghost() {
    let dir = TempDir::new("up");
    let (mut up, ports) = spawn_up(&dir, 1);
    let (session, api, admin) = (ports.session, ports.api, ports.admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = e2e::http(&api, "GET", "/v1/ghosts/ghost.local", None);
        if v["connected"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "local ghost never connected: {}",
            up.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The README's second Ghost (config/ghost.toml) joins beside the local one: its example
    // id is not `mirage up`'s own (issue 23 item 8), so neither is refused as a conflict.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/ghost.toml");
    let second = Proc::spawn(
        &bin("ghost"),
        &[
            "serve",
            "--config",
            example,
            "--mirage",
            &format!("127.0.0.1:{session}"),
            "--data-dir",
            dir.path("ghost-a").to_str().unwrap(),
        ],
        dir.path("ghost-a.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = e2e::http(&api, "GET", "/v1/overview", None);
        if v["ghosts_connected"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the example Ghost did not join beside ghost.local: {v}\n{}",
            second.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, local) = e2e::http(&api, "GET", "/v1/ghosts/ghost.local", None);
    assert_eq!(local["connected"], true, "{local}");
    assert!(local["conflict"].is_null(), "{local}");
    drop(second);
    let (code, out, err) = cli(
        &api,
        &["issue", "submit", "config/plans/hello.toml", "--wait"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("satisfied: 1 step(s) done"), "{out}");
    assert!(out.contains("[####################] 1/1"), "{out}");
    let (code, out, _) = cli(&api, &["ghosts"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("GHOST"), "{out}");
    assert!(
        out.contains("ghost.local") && out.contains("local"),
        "{out}"
    );
    let (_, out, _) = cli(&api, &["intents"]);
    assert!(out.contains("satisfied") && out.contains("1/1"), "{out}");
    let (code, out, _) = cli(&api, &["--json", "services"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["seed.flow"]
            .as_array()
            .is_some_and(|a| a.iter().any(|g| g["ghost_id"] == "ghost.local")),
        "{v}"
    );
    // A failing plan exits 1; a bad one explains itself and exits 2.
    let bad = dir.path("fail.toml");
    std::fs::write(&bad, "actor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"fail\"\non=\"one\"\n").unwrap();
    let (code, out, _) = cli(&api, &["issue", "submit", bad.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 1, "{out}");
    std::fs::write(&bad, "actor=\"t\"\n").unwrap();
    let (code, _, err) = cli(&api, &["issue", "submit", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("400") && err.contains("target_scope"), "{err}");
    let (code, _, err) = cli("127.0.0.1:1", &["ghosts"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach Mirage"), "{err}");
    // Ctrl-C (SIGTERM) stops Mirage and its local Ghost.
    assert_eq!(up.sigterm(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{admin}")).is_err(),
        "local ghost still running"
    );
}

#[test]
fn reports_follow_resumes_without_gaps_after_a_restart() {
    let dir = TempDir::new("follow");
    let http_port = free_port();
    let extra = format!("[api]\nlisten = \"127.0.0.1:{http_port}\"");
    let mut m = Mirage::start(&dir, 0, &extra);
    let session_port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, Duration::from_secs(20));
    let api = m.api.clone();
    let mut follow = Command::new(bin("mirage"))
        .args(["reports", "--follow", "--json"])
        .env("MIRAGE_API", format!("http://{api}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if let Ok(v) = serde_json::from_str(&l) {
                let _ = tx.send(v);
            }
        }
    });
    let plan = |id: &str| {
        format!("intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\n")
    };
    let a = m.submit(&plan("before"));
    m.wait_status(&a, "satisfied", Duration::from_secs(20));
    // Mirage (and its API) goes away, reports are made while the follower is cut off...
    m.proc.sigterm();
    let mut m = Mirage::start(&dir, session_port, &extra);
    m.wait_ghosts(1, Duration::from_secs(20));
    // A finished intent keeps its last word across the restart.
    let (_, v) = m.get(&format!("/v1/intents/{a}"));
    assert_eq!(v["summary"]["last_state"], "satisfied", "{v}");
    assert!(
        !v["summary"]["last_summary"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{v}"
    );
    let b = m.submit(&plan("after"));
    m.wait_status(&b, "satisfied", Duration::from_secs(20));
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seqs.last().is_none_or(|s: &u64| *s < 6) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("follower saw every report");
        let v = rx.recv_timeout(left).unwrap();
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs,
        (1..=6).collect::<Vec<u64>>(),
        "no gap, no duplicate across the restart"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    m.proc.sigterm();
}
