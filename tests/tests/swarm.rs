//! `ghost swarm` against Mirage: many real sessions in one process, fan-out intents over all
//! of them. Also the regression test for events of one step persisted in the same group
//! commit: every event must be accepted (none rejected or lost) — the full-scale runs are
//! benchmarks (BENCHMARKS.md), this is their smoke version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;

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

/// Issue 6, acceptance 3 (and issue 8's session scenario over mTLS): N swarm Ghosts over
/// mTLS held by one Mirage; RSS per session and the time for all to re-register after a
/// Mirage restart. `SESSIONS=1000 cargo test -p e2e --release --test swarm -- --ignored
/// --nocapture mtls_sessions` (also `make bench-tls`).
#[test]
#[ignore = "benchmark: run in release, figures go to BENCHMARKS.md"]
fn mtls_sessions_held_and_reregistered_after_restart() {
    use mirage::certs;
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = TempDir::new("mtls-sessions");
    let pki = dir.path("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = certs::new_ca("fleet", 30).unwrap();
    std::fs::write(pki.join("ca.pem"), &ca.cert_pem).unwrap();
    let srv = certs::server_cert(&ca, &["127.0.0.1".into()], 30).unwrap();
    std::fs::write(pki.join("mirage.pem"), &srv.cert_pem).unwrap();
    std::fs::write(pki.join("mirage.key"), &srv.key_pem).unwrap();
    for i in 0..n {
        let l = certs::client_cert(&ca, &format!("swarm-{i}"), -1, 30).unwrap();
        std::fs::write(pki.join(format!("swarm-{i}.pem")), &l.cert_pem).unwrap();
        std::fs::write(pki.join(format!("swarm-{i}.key")), &l.key_pem).unwrap();
    }
    let tls = format!(
        "[tls]\nmode = \"production\"\nenabled = true\ncert_file = \"{0}/mirage.pem\"\nkey_file = \"{0}/mirage.key\"\nca_file = \"{0}/ca.pem\"\n[timeouts]\nheartbeat_ms = 5000\ndead_after_ms = 15000",
        pki.display()
    );
    let mut m = Mirage::start(&dir, 0, &tls);
    let port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = m.proc.rss_kib();
    let ca_arg = pki.join("ca.pem");
    let t0 = Instant::now();
    let (mut child, _rx) = swarm(
        &m.session,
        n,
        &[
            "--ca",
            ca_arg.to_str().unwrap(),
            "--cert-dir",
            pki.to_str().unwrap(),
        ],
    );
    m.wait_ghosts(n, Duration::from_secs(120));
    let first = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = m.proc.rss_kib();
    m.proc.sigterm();
    let t1 = Instant::now();
    let m = Mirage::start(&dir, port, &tls);
    m.wait_ghosts(n, Duration::from_secs(120));
    let again = t1.elapsed();
    let per = (rss1.saturating_sub(rss0)) as f64 / n as f64;
    println!(
        "{{\"bench\":\"mtls_sessions\",\"sessions\":{n},\"first_registration_s\":{:.2},\"rss_before_kib\":{rss0},\"rss_after_kib\":{rss1},\"rss_per_session_kib\":{per:.1},\"reregistration_after_restart_s\":{:.2}}}",
        first.as_secs_f64(),
        again.as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
}
