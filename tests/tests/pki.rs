//! The fleet PKI with real processes and real certificates (issue 19 items 1 and 13): only a
//! leaf signed directly by the fleet CA identifies a Ghost; the kept CA key issues new Ghosts;
//! a revoked certificate's open session is closed and it is refused at every later handshake; a Ghost refuses a Mirage
//! certificate it should not trust.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::*;
use mirage::certs;
use serde_json::Value;

const T: Duration = Duration::from_secs(40);

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
}

fn mirage_tls(pki: &Path, revoked: Option<&Path>) -> String {
    let mut s = format!(
        "[tls]\nmode = \"production\"\nenabled = true\ncert_file = \"{0}/mirage.pem\"\nkey_file = \"{0}/mirage.key\"\nca_file = \"{0}/ca.pem\"\n",
        pki.display()
    );
    if let Some(r) = revoked {
        s.push_str(&format!("revoked_file = \"{}\"\n", r.display()));
    }
    s
}

fn ghost_tls(ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\nmode = \"production\"\nenabled = true\nca_file = \"{}\"\nserver_name = \"127.0.0.1\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// Writes `<name>.pem` (the certificate, then any chain) and `<name>.key`.
fn files(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write(&c, cert_pem);
    write(&k, key_pem);
    (c, k)
}

fn ghosts(m: &Mirage) -> Vec<Value> {
    m.get("/v1/ghosts")
        .1
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn connected(m: &Mirage, id: &str) -> bool {
    ghosts(m)
        .iter()
        .any(|g| g["ghost_id"] == id && g["connected"] == true)
}

/// Waits until the Mirage log has a line with every one of `parts`; returns that line.
fn log_line(m: &Mirage, parts: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = m.proc.log_text();
        if let Some(l) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no mirage log line with {parts:?}; tail:\n{}",
            tail(&log, 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn only_a_leaf_signed_directly_by_the_fleet_ca_identifies_a_ghost() {
    let dir = TempDir::new("pki-leaf");
    let pki = dir.path("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = certs::new_ca("fleet", 30).unwrap();
    write(&pki.join("ca.pem"), &ca.cert_pem);
    let srv = certs::server_cert(&ca, &["127.0.0.1".into()], 30).unwrap();
    files(&pki, "mirage", &srv.cert_pem, &srv.key_pem);
    let ca_pem = pki.join("ca.pem");

    // The attack of the issue: a CA:TRUE certificate for ghost.a from the fleet CA, and a
    // leaf for ghost.b signed by it, sent with its chain.
    let sub = certs::intermediate(&ca, "ghost.a", 30).unwrap();
    let sub_files = files(&pki, "ghost.a", &sub.cert_pem, &sub.key_pem);
    let b = certs::client_cert(&sub, "ghost.b", -1, 30).unwrap();
    let chain = format!("{}{}", b.cert_pem, sub.cert_pem);
    let b_files = files(&pki, "ghost.b", &chain, &b.key_pem);
    // A server certificate (serverAuth only) named like a Ghost.
    let srv_c = certs::server_cert(&ca, &["ghost.c".into()], 30).unwrap();
    let c_files = files(&pki, "ghost.c", &srv_c.cert_pem, &srv_c.key_pem);
    // Another CA's certificate.
    let rogue = certs::new_ca("rogue", 30).unwrap();
    let d = certs::client_cert(&rogue, "ghost.d", -1, 30).unwrap();
    let d_files = files(&pki, "ghost.d", &d.cert_pem, &d.key_pem);
    // A leaf with no extendedKeyUsage (accepted, with a warning) and a proper one.
    let e = certs::client_cert_without_eku(&ca, "ghost.e", 30).unwrap();
    let e_files = files(&pki, "ghost.e", &e.cert_pem, &e.key_pem);
    let f = certs::client_cert(&ca, "ghost.f", -1, 30).unwrap();
    let f_files = files(&pki, "ghost.f", &f.cert_pem, &f.key_pem);

    let m = Mirage::start(&dir, 0, &mirage_tls(&pki, None));
    let cases = [
        ("ghost.a", &sub_files, "CA:TRUE"),
        ("ghost.b", &b_files, "signed directly by the fleet CA"),
        ("ghost.c", &c_files, "unsuitable certificate purpose"),
        (
            "ghost.d",
            &d_files,
            "unable to get local issuer certificate",
        ),
    ];
    let mut procs = Vec::new();
    for (id, (c, k), _) in &cases {
        procs.push(Ghost::start(
            &dir,
            id,
            &m.session,
            &ghost_tls(&ca_pem, c, k),
        ));
    }
    let good: Vec<Ghost> = [("ghost.e", &e_files), ("ghost.f", &f_files)]
        .iter()
        .map(|(id, (c, k))| Ghost::start(&dir, id, &m.session, &ghost_tls(&ca_pem, c, k)))
        .collect();

    // Each bad certificate is refused at the handshake, with its reason and Ghost named.
    for (id, _, why) in &cases {
        let l = log_line(
            &m,
            &["client certificate refused", &format!("ghost={id}"), why],
            T,
        );
        eprintln!("{id}: {l}");
    }
    // The proper leaves register; the one without EKU is logged.
    m.wait_ghosts(2, T);
    assert!(connected(&m, "ghost.e") && connected(&m, "ghost.f"));
    log_line(&m, &["no extendedKeyUsage", "ghost=ghost.e"], T);
    let id = m.submit("intent_id=\"pki\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\n");
    m.wait_status(&id, "satisfied", T);
    assert_eq!(good[1].kv_get("k").as_deref(), Some("v"));

    // Refused again on every retry, never registered, nothing executed.
    for (id, _, _) in &cases {
        let deadline = Instant::now() + T;
        while m
            .proc
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("client certificate refused") && l.contains(&format!("ghost={id}"))
            })
            .count()
            < 2
        {
            assert!(Instant::now() < deadline, "{id} refused only once");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let registered: Vec<String> = ghosts(&m)
        .iter()
        .map(|g| g["ghost_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(registered.len(), 2, "{registered:?}");
    for p in &procs {
        assert_eq!(p.executed(), 0);
        let st = p.admin(serde_json::json!({"action": "status"}));
        assert_ne!(st["data"]["MirageLink"], "session", "{st}");
    }
}

#[test]
fn an_added_ghost_registers_and_once_revoked_is_refused_at_its_next_handshake() {
    let dir = TempDir::new("pki-revoke");
    let pki = dir.path("pki");
    let p = pki.to_str().unwrap();
    mirage_certs(&["init", "--out", p, "--mirage-host", "127.0.0.1"]);
    let mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(pki.join(f)).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600, "the CA key is kept, private");
    assert_eq!(mode(""), 0o700);
    // Two Ghosts join the fleet after `init`, under the same CA.
    for g in ["g.new", "g.other"] {
        let out = mirage_certs(&["add-ghost", "--dir", p, g]);
        assert!(out.contains("cert_file = \""), "{out}");
    }
    assert_eq!(mode("g.new.key"), 0o600);
    // Each Ghost host keeps its own copy of its files.
    let copy = |g: &str, tag: &str| {
        let to = dir.path(&format!("{g}-{tag}"));
        std::fs::create_dir_all(&to).unwrap();
        for ext in ["pem", "key"] {
            std::fs::copy(
                pki.join(format!("{g}.{ext}")),
                to.join(format!("{g}.{ext}")),
            )
            .unwrap();
        }
        ghost_tls(
            &pki.join("ca.pem"),
            &to.join(format!("{g}.pem")),
            &to.join(format!("{g}.key")),
        )
    };
    let new_tls = copy("g.new", "1");
    let other_tls = copy("g.other", "1");
    let m = Mirage::start(&dir, 0, &mirage_tls(&pki, Some(&pki.join(certs::REVOKED))));
    let mut g_new = Ghost::start(&dir, "g.new", &m.session, &new_tls);
    let _g_other = Ghost::start(&dir, "g.other", &m.session, &other_tls);
    m.wait_ghosts(2, T);

    let out = mirage_certs(&["revoke", "--dir", p, "g.new"]);
    assert!(out.contains("revoked g.new"), "{out}");
    // Its open session is closed at its next heartbeat tick (not left open until it happens
    // to reconnect), and every reconnection is refused with the reason; Mirage was not
    // restarted and the other Ghost stays.
    let t0 = Instant::now();
    let l = log_line(&m, &["was revoked while the session was open"], T);
    let closed = t0.elapsed();
    eprintln!("{l}");
    let l = log_line(
        &m,
        &["client certificate refused", "ghost=g.new", "is revoked"],
        T,
    );
    eprintln!("{l}");
    let deadline = Instant::now() + T;
    while m.proc.log_text().matches("is revoked").count() < 2 {
        assert!(Instant::now() < deadline, "refused only once");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!connected(&m, "g.new"), "{:?}", ghosts(&m));
    assert!(connected(&m, "g.other"), "{:?}", ghosts(&m));
    assert!(
        !m.proc
            .log_text()
            .contains("ghost=g.other reason=client certificate"),
        "the other Ghost's session was touched"
    );
    eprintln!(
        "revoked g.new: its open session closed {} ms after `certs revoke` returned",
        closed.as_millis()
    );
    g_new.proc.sigkill();
    let _g_new = Ghost::start(&dir, "g.new", &m.session, &new_tls);
    let deadline = Instant::now() + T;
    while m.proc.log_text().matches("is revoked").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "a restarted revoked Ghost was not refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(_g_new.executed(), 0);

    // A new certificate for the same Ghost is issued and accepted.
    mirage_certs(&["add-ghost", "--dir", p, "g.new"]);
    drop(_g_new);
    let _g_new2 = Ghost::start(&dir, "g.new", &m.session, &copy("g.new", "2"));
    let deadline = Instant::now() + T;
    while !connected(&m, "g.new") {
        assert!(Instant::now() < deadline, "re-issued g.new not registered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One TLS server that reports whether the Ghost completed a handshake and sent its first
/// line (the registration) over it.
fn fake_mirage(cert: &str, key: &str) -> (String, mpsc::Receiver<Result<String, String>>) {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    let dir = std::env::temp_dir().join(format!("pki-fake-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, k) = files(&dir, "srv", cert, key);
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_certificate_chain_file(&c).unwrap();
    b.set_private_key_file(&k, SslFiletype::PEM).unwrap();
    let acc = b.build();
    let _ = std::fs::remove_dir_all(&dir);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The Ghost retries; its first attempt is the verdict.
        let Ok((s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = match acc.accept(s) {
            Ok(tls) => {
                let mut line = String::new();
                match BufReader::new(tls).read_line(&mut line) {
                    Ok(n) if n > 0 => Ok(line),
                    Ok(_) => Err("closed after the handshake".into()),
                    Err(e) => Err(format!("read: {e}")),
                }
            }
            Err(e) => Err(format!("handshake: {e}")),
        };
        let _ = tx.send(r);
    });
    (addr, rx)
}

#[test]
fn a_ghost_refuses_a_mirage_certificate_it_should_not_trust() {
    let dir = TempDir::new("pki-server");
    let ca = certs::new_ca("fleet", 30).unwrap();
    let ca_pem = dir.path("ca.pem");
    write(&ca_pem, &ca.cert_pem);
    let rogue = certs::new_ca("rogue", 30).unwrap();
    let cases: Vec<(&str, certs::Leaf, bool)> = vec![
        (
            "right",
            certs::server_cert(&ca, &["mirage.test".into()], 30).unwrap(),
            true,
        ),
        (
            "rogue",
            certs::server_cert(&rogue, &["mirage.test".into()], 30).unwrap(),
            false,
        ),
        (
            "wrongname",
            certs::server_cert(&ca, &["other.test".into()], 30).unwrap(),
            false,
        ),
        // A Ghost's own certificate (clientAuth only) cannot pose as Mirage.
        (
            "clientonly",
            certs::client_cert(&ca, "mirage.test", -1, 30).unwrap(),
            false,
        ),
    ];
    let mut running = Vec::new();
    for (name, leaf, want_ok) in cases {
        let (addr, rx) = fake_mirage(&leaf.cert_pem, &leaf.key_pem);
        let tls = format!(
            "[tls]\nenabled = true\nca_file = \"{}\"\nserver_name = \"mirage.test\"\n",
            ca_pem.display()
        );
        let g = Ghost::start(&dir, &format!("g.{name}"), &addr, &tls);
        running.push((name, want_ok, rx, g));
    }
    for (name, want_ok, rx, g) in running {
        let r = rx
            .recv_timeout(T)
            .unwrap_or_else(|_| Err("no connection".into()));
        eprintln!("{name}: {r:?}");
        if want_ok {
            assert!(
                r.as_ref().is_ok_and(|l| l.contains("registration")),
                "{name}: {r:?}"
            );
        } else {
            assert!(r.is_err(), "{name}: the Ghost sent its registration: {r:?}");
            assert!(
                tail(&g.proc.log_text(), 100)
                    .to_lowercase()
                    .contains("certificate"),
                "{name}: the Ghost says why:\n{}",
                tail(&g.proc.log_text(), 20)
            );
        }
    }
}
