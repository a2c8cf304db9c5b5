//! Production mode over mTLS with real processes (issue 6, acceptance 1) and the refusals
//! (acceptance 2: other CA, no client certificate, expired, another ghost's certificate,
//! declared peer mismatch, plaintext Ghost, production without TLS).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::*;
use mirage::certs;

const T: Duration = Duration::from_secs(30);

fn mirage_tls(pki: &Path) -> String {
    format!(
        "[tls]\nmode = \"production\"\nenabled = true\ncert_file = \"{0}/mirage.pem\"\nkey_file = \"{0}/mirage.key\"\nca_file = \"{0}/ca.pem\"\n",
        pki.display()
    )
}

fn ghost_tls(ca: &Path, cert: Option<(&Path, &Path)>, production: bool) -> String {
    let mut s = format!(
        "[tls]\nmode = \"{}\"\nenabled = true\nca_file = \"{}\"\nserver_name = \"127.0.0.1\"\n",
        if production {
            "production"
        } else {
            "development"
        },
        ca.display()
    );
    if let Some((c, k)) = cert {
        s.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    s
}

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
}

#[test]
fn production_mtls_ghosts_register_and_run_an_intent() {
    let dir = TempDir::new("tls-ok");
    let pki = dir.path("pki");
    let st = Command::new(bin("mirage"))
        .args([
            "certs",
            "init",
            "--out",
            pki.to_str().unwrap(),
            "--mirage-host",
            "127.0.0.1",
            "--ghost",
            "g1",
            "--ghost",
            "g2",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let m = Mirage::start(&dir, 0, &mirage_tls(&pki));
    let ghosts: Vec<Ghost> = ["g1", "g2"]
        .iter()
        .map(|g| {
            let extra = ghost_tls(
                &pki.join("ca.pem"),
                Some((&pki.join(format!("{g}.pem")), &pki.join(format!("{g}.key")))),
                true,
            );
            Ghost::start(&dir, g, &m.session, &extra)
        })
        .collect();
    m.wait_ghosts(2, T);
    let id = m.submit("intent_id=\"tls\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"secure\",value=\"yes\"}\nblocking=true\n");
    m.wait_status(&id, "satisfied", T);
    for g in &ghosts {
        assert_eq!(g.kv_get("secure").as_deref(), Some("yes"));
    }
}

#[test]
fn refusals_name_their_reason_and_reach_no_seed() {
    let dir = TempDir::new("tls-bad");
    let pki = dir.path("pki");
    std::fs::create_dir_all(&pki).unwrap();
    // The fleet PKI, plus a rogue CA that issues a certificate for g1.
    let ca = certs::new_ca("fleet", 30).unwrap();
    let rogue = certs::new_ca("rogue", 30).unwrap();
    write(&pki.join("ca.pem"), &ca.cert_pem);
    let srv = certs::server_cert(&ca, &["127.0.0.1".into()], 30).unwrap();
    write(&pki.join("mirage.pem"), &srv.cert_pem);
    write(&pki.join("mirage.key"), &srv.key_pem);
    let leaf = |name: &str, issuer: &certs::Ca, id: &str, from: i64, days: i64| {
        let l = certs::client_cert(issuer, id, from, days).unwrap();
        write(&pki.join(format!("{name}.pem")), &l.cert_pem);
        write(&pki.join(format!("{name}.key")), &l.key_pem);
        (
            pki.join(format!("{name}.pem")),
            pki.join(format!("{name}.key")),
        )
    };
    let rogue_g1 = leaf("rogue-g1", &rogue, "g1", -1, 30);
    let expired_g1 = leaf("expired-g1", &ca, "g1", -10, -2);
    let g2_cert = leaf("g2", &ca, "g2", -1, 30);
    let g1_cert = leaf("g1", &ca, "g1", -1, 30);
    let ca_pem = pki.join("ca.pem");

    let m = Mirage::start(&dir, 0, &mirage_tls(&pki));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "rogue",
            ghost_tls(&ca_pem, Some((&rogue_g1.0, &rogue_g1.1)), false),
            "TLS handshake refused",
        ),
        (
            "nocert",
            ghost_tls(&ca_pem, None, false),
            "TLS handshake refused",
        ),
        (
            "expired",
            ghost_tls(&ca_pem, Some((&expired_g1.0, &expired_g1.1)), false),
            "TLS handshake refused",
        ),
        (
            "g1",
            ghost_tls(&ca_pem, Some((&g2_cert.0, &g2_cert.1)), true),
            "identity binding failure: certificate is g2",
        ),
        ("plain", String::new(), "TLS handshake refused"),
    ];
    let mut procs = Vec::new();
    for (id, extra, _) in &cases {
        procs.push(Ghost::start(&dir, id, &m.session, extra));
    }
    // Declared peer mismatch: g1's own certificate, another declared identity.
    let mismatch = ghost_tls(&ca_pem, Some((&g1_cert.0, &g1_cert.1)), true);
    let cfg = dir.path("mm.toml");
    write(
        &cfg,
        &format!(
            "ghost_id = \"g1\"\ndata_dir = \"{}\"\n{mismatch}\n[mirage]\naddresses = [\"{}\"]\npeer_identity = \"g9\"\n[backoff]\ninitial_ms = 50\nmax_ms = 500\n",
            dir.path("mm").display(),
            m.session
        ),
    );
    let mm = Proc::spawn(
        &bin("ghost"),
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path("mm.log"),
    );

    // Each refusal is logged with its reason.
    let deadline = Instant::now() + T;
    let want = [
        "TLS handshake refused",
        "identity binding failure: certificate is g2",
        "declared peer mismatch",
    ];
    loop {
        let log = m.proc.log_text();
        if want.iter().all(|w| log.contains(w)) && log.matches("TLS handshake refused").count() >= 4
        {
            assert!(log.contains("verify:"), "the verify result is logged");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing refusals; mirage log:\n{}",
            tail(&log, 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The Ghosts see why, too.
    assert!(tail(&procs[3].proc.log_text(), 200).contains("identity binding failure"));
    assert!(mm.log_text().contains("declared peer mismatch"));
    // Nobody registered, so no command can reach any seed.
    let (_, ghosts) = m.get("/v1/ghosts");
    assert!(ghosts.as_array().unwrap().is_empty(), "{ghosts}");
    for p in &procs {
        assert_eq!(p.executed(), 0);
    }
    drop(mm);
}

#[test]
fn production_without_tls_is_refused_at_startup() {
    let dir = TempDir::new("tls-cfg");
    let cfg = dir.path("m.toml");
    write(&cfg, "[tls]\nmode = \"production\"\n");
    let out = Command::new(bin("mirage"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires tls.enabled"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = dir.path("g.toml");
    write(
        &g,
        "[tls]\nmode = \"production\"\nenabled = true\nca_file = \"x\"\n",
    );
    let out = Command::new(bin("ghost"))
        .args(["serve", "--config", g.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires mTLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The API off loopback without a token is refused too.
    write(&cfg, "[api]\nlisten = \"0.0.0.0:1\"\n");
    let out = Command::new(bin("mirage"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer token"));
}

#[test]
fn the_api_can_be_served_over_https_with_a_token() {
    use std::io::{Read, Write};
    let dir = TempDir::new("api-tls");
    let pki = dir.path("pki");
    let st = Command::new(bin("mirage"))
        .args([
            "certs",
            "init",
            "--out",
            pki.to_str().unwrap(),
            "--mirage-host",
            "127.0.0.1",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let extra = format!(
        "[api]\ntoken = \"t0k\"\ntls_cert_file = \"{0}/mirage.pem\"\ntls_key_file = \"{0}/mirage.key\"",
        pki.display()
    );
    let m = Mirage::start(&dir, 0, &extra);
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_ca_file(pki.join("ca.pem")).unwrap();
    let connector = b.build();
    let get = |path: &str, token: Option<&str>| -> String {
        let tcp = std::net::TcpStream::connect(&m.api).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = connector
            .connect("127.0.0.1", tcp)
            .expect("certificate verifies against the fleet CA");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(get("/healthz", None).starts_with("HTTP/1.1 200"));
    assert!(get("/v1/ghosts", None).starts_with("HTTP/1.1 401"));
    assert!(get("/v1/ghosts", Some("t0k")).starts_with("HTTP/1.1 200"));
    // Plain HTTP gets no API answer.
    let (status, _) = http_raw(&m.api, "GET", "/healthz", None, &[]);
    assert_ne!(status, 200);
}
