//! `mirage certs rotate` (issue 16): a new certificate for a Ghost while its session is up;
//! the session goes on (commands keep running over it), and the next session, after a cut,
//! handshakes with the new certificate even though the old one has been revoked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use e2e::*;

const T: Duration = Duration::from_secs(40);

fn session_of(m: &Mirage, id: &str) -> Option<String> {
    let (_, g) = m.get(&format!("/v1/ghosts/{id}"));
    (g["connected"] == true).then(|| g["session_id"].as_str().unwrap_or("").to_owned())
}

fn echo(m: &Mirage, id: &str) {
    m.submit(&format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={{msg=\"x\"}}\n"
    ));
    m.wait_status(id, "satisfied", T);
}

#[test]
fn a_rotated_certificate_is_used_from_the_next_session_without_downtime() {
    let dir = TempDir::new("rotate");
    let pki = dir.path("pki");
    let p = pki.to_str().unwrap();
    mirage_certs(&[
        "init",
        "--out",
        p,
        "--mirage-host",
        "127.0.0.1",
        "--ghost",
        "g1",
    ]);
    let mirage_tls = format!(
        "[tls]\nmode = \"production\"\nenabled = true\ncert_file = \"{p}/mirage.pem\"\nkey_file = \"{p}/mirage.key\"\nca_file = \"{p}/ca.pem\"\nrevoked_file = \"{p}/revoked.txt\"\n"
    );
    let port = free_port();
    let m = Mirage::start(&dir, port, &mirage_tls);
    // The Ghost reads its files in place (as when they are delivered to its host's path).
    let _g = Ghost::start(
        &dir,
        "g1",
        &m.session,
        &format!(
            "[tls]\nmode = \"production\"\nenabled = true\nca_file = \"{p}/ca.pem\"\nserver_name = \"127.0.0.1\"\ncert_file = \"{p}/g1.pem\"\nkey_file = \"{p}/g1.key\"\n"
        ),
    );
    let deadline = std::time::Instant::now() + T;
    while session_of(&m, "g1").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "g1 never connected: {:?}\nmirage:\n{}\nghost:\n{}",
            m.get("/v1/ghosts/g1"),
            tail(&m.proc.log_text(), 20),
            tail(&_g.proc.log_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = session_of(&m, "g1").unwrap();

    let out = mirage_certs(&["rotate", "--dir", p, "g1", "--revoke-old"]);
    assert!(out.contains("rotated g1: serial"), "{out}");
    assert!(out.contains("revoked the previous serial"), "{out}");
    let old = out
        .lines()
        .find_map(|l| l.strip_prefix("revoked the previous serial "))
        .unwrap()
        .trim()
        .to_owned();
    assert!(std::fs::read_to_string(pki.join("revoked.txt"))
        .unwrap()
        .contains(&old));
    assert!(pki.join(format!("g1.rotated-{old}.pem")).exists());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(pki.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("g1.key"), 0o600);
        assert_eq!(mode(&format!("g1.rotated-{old}.key")), 0o600);
    }

    // No downtime: the same session carries a command after the rotation.
    echo(&m, "during");
    assert_eq!(session_of(&m, "g1").as_deref(), Some(first.as_str()));

    // The next session (Mirage restarted on the same address) handshakes with the new
    // certificate; the old one would be refused.
    drop(m);
    let m = Mirage::start(&dir, port, &mirage_tls);
    let deadline = std::time::Instant::now() + T;
    // A new Mirage process: any session it has is a new one.
    while session_of(&m, "g1").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "g1 not back on a new session\nmirage:\n{}\nghost:\n{}",
            tail(&m.proc.log_text(), 20),
            tail(&_g.proc.log_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    echo(&m, "after");
    assert!(_g
        .proc
        .log_text()
        .contains("TLS files changed; the next session uses them"));
    let log = m.proc.log_text();
    assert!(!log.contains("is revoked"), "{}", tail(&log, 30));

    // Rotating a Ghost that has no certificate says how to issue one.
    let out = Command::new(bin("mirage"))
        .args(["certs", "rotate", "--dir", p, "nobody"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("add-ghost"));
}
