//! Startup failures (issue 17 items 2 and 3), with the real binaries: each one exits 2 with
//! the reason on stderr and no panic; open listeners without authentication are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;

/// Runs a binary that should fail at startup; returns (exit code, stderr).
fn run_failing(exe: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .env_remove("MIRAGE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{} {args:?} did not exit; stdout {}",
                exe.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(what: &str, (code, err): (Option<i32>, String), names: &[&str]) {
    println!(
        "{what}: exit {code:?}, {}",
        err.lines().last().unwrap_or("")
    );
    assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{err}");
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    for n in names {
        assert!(
            err.contains(n),
            "{what}: stderr does not name {n:?}:\n{err}"
        );
    }
}

fn mirage_serve(dir: &TempDir, listen: &str, http: &str, extra: &[&str]) -> (Option<i32>, String) {
    let data = dir.path("data");
    let mut args = vec![
        "serve",
        "--listen",
        listen,
        "--http",
        http,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_failing(&bin("mirage"), &args)
}

#[test]
fn session_port_in_use_exits_2_without_a_panic() {
    let dir = TempDir::new("start-port");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    assert_refused(
        "session port in use",
        mirage_serve(&dir, &addr, "127.0.0.1:0", &[]),
        &[&format!("listen {addr}"), "Address already in use"],
    );
}

#[test]
fn api_port_in_use_exits_2_without_a_panic() {
    // The Supervisor and session listener are up by then: they must be run down cleanly.
    let dir = TempDir::new("start-api");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    assert_refused(
        "api port in use",
        mirage_serve(&dir, "127.0.0.1:0", &addr, &[]),
        &[&addr, "Address already in use"],
    );
}

#[test]
fn unusable_data_dirs_exit_2_without_a_panic() {
    // Root ignores permissions, so make the path unusable instead: a file, or under a file.
    let dir = TempDir::new("start-data");
    let file = dir.path("plain-file");
    std::fs::write(&file, "not a directory").unwrap();
    for (what, data, names) in [
        (
            "data_dir is a file",
            file.clone(),
            vec!["is not a directory", "data_dir"],
        ),
        (
            "data_dir under a file",
            file.join("sub"),
            vec!["data_dir", "Not a directory"],
        ),
    ] {
        let data = data.to_str().unwrap().to_owned();
        let mut names = names;
        names.push(&data);
        assert_refused(
            what,
            run_failing(
                &bin("mirage"),
                &[
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--http",
                    "127.0.0.1:0",
                    "--data-dir",
                    &data,
                ],
            ),
            &names,
        );
    }
}

#[test]
fn a_bad_certificate_file_exits_2_without_a_panic() {
    let dir = TempDir::new("start-cert");
    let cert = dir.path("cert.pem");
    let key = dir.path("key.pem");
    // A good key, so the certificate itself is what fails.
    let k = openssl::pkey::PKey::from_ec_key(
        openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    std::fs::write(&key, k.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    let cfg = dir.path("mirage.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tls]\nenabled = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path("data").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    assert_refused(
        "bad certificate",
        run_failing(
            &bin("mirage"),
            &["serve", "--config", cfg.to_str().unwrap()],
        ),
        &["tls: cert_file", "cert.pem"],
    );
    // A missing file is named too.
    std::fs::write(&key, "").unwrap();
    std::fs::remove_file(&key).unwrap();
    assert_refused(
        "missing key file",
        run_failing(
            &bin("mirage"),
            &["serve", "--config", cfg.to_str().unwrap()],
        ),
        &["tls:", "key.pem"],
    );
}

#[test]
fn an_unauthenticated_session_listener_off_loopback_is_refused() {
    // Validation refuses before anything binds, so nothing listens on 0.0.0.0 here.
    let dir = TempDir::new("start-open");
    assert_refused(
        "session listener on 0.0.0.0 without TLS or auth",
        mirage_serve(&dir, "0.0.0.0:0", "127.0.0.1:0", &[]),
        &[
            "listen 0.0.0.0:0 is not loopback",
            "tls.ca_file",
            "auth.required",
        ],
    );
    assert!(
        !dir.path("data").exists(),
        "refused before touching the data dir"
    );
    // The Ghost admin boundary refuses the same way without its token.
    let g = dir.path("g.toml");
    std::fs::write(
        &g,
        format!(
            "ghost_id = \"g\"\ndata_dir = \"{}\"\n[mirage]\npolicy = \"headless\"\n[admin]\nlisten = \"0.0.0.0:0\"\n",
            dir.path("g").display()
        ),
    )
    .unwrap();
    assert_refused(
        "ghost admin on 0.0.0.0 without a token",
        run_failing(&bin("ghost"), &["serve", "--config", g.to_str().unwrap()]),
        &["admin.listen 0.0.0.0:0 is not loopback", "admin.token"],
    );
}

#[test]
fn ghost_admin_port_in_use_exits_2_without_a_panic() {
    let dir = TempDir::new("start-gadmin");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let g = dir.path("g.toml");
    std::fs::write(
        &g,
        format!(
            "ghost_id = \"g\"\ndata_dir = \"{}\"\n[mirage]\npolicy = \"headless\"\n[admin]\nlisten = \"{addr}\"\n",
            dir.path("g").display()
        ),
    )
    .unwrap();
    assert_refused(
        "ghost admin port in use",
        run_failing(&bin("ghost"), &["serve", "--config", g.to_str().unwrap()]),
        &[&addr, "Address already in use"],
    );
}
