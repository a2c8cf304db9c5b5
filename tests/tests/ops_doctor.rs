//! `mirage doctor` / `ghost doctor` (issue 16) on a good setup and on broken ones: a key
//! others can read, a certificate from another CA, an expired certificate, a port in use, a
//! world-writable data dir, a Ghost clock an hour ahead of a running Mirage (libfaketime).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::*;

fn run(exe: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new(bin(exe));
    c.args(args)
        .env_remove("MIRAGE_CONFIG")
        .env_remove("GHOST_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn init(pki: &Path) {
    let (code, out) = run(
        "mirage",
        &[
            "certs",
            "init",
            "--out",
            pki.to_str().unwrap(),
            "--mirage-host",
            "127.0.0.1",
            "--ghost",
            "g1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
}

fn mirage_toml(dir: &TempDir, pki: &Path, cert: &str, data: &Path) -> PathBuf {
    let cfg = dir.path("mirage.toml");
    let p = pki.display();
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{}\"\n[tls]\nmode = \"production\"\nenabled = true\ncert_file = \"{cert}\"\nkey_file = \"{p}/mirage.key\"\nca_file = \"{p}/ca.pem\"\nrevoked_file = \"{p}/revoked.txt\"\n",
            free_port(),
            data.display(),
            free_port()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn mirage_doctor_passes_a_good_setup_and_names_each_problem_with_its_fix() {
    let dir = TempDir::new("doctor-m");
    let pki = dir.path("pki");
    init(&pki);
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o700);
    let good = format!("{}/mirage.pem", pki.display());
    let cfg = mirage_toml(&dir, &pki, &good, &data);
    let (code, out) = run(
        "mirage",
        &["doctor", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("chains to"), "{out}");
    assert!(out.contains("no problems found"), "{out}");
    assert!(!out.contains("PROBLEM"), "{out}");

    // Broken: a certificate from another fleet's CA, a key others can read, the session
    // port taken, a data dir anyone can write.
    let other = dir.path("other");
    init(&other);
    let foreign = format!("{}/mirage.pem", other.display());
    let cfg = mirage_toml(&dir, &pki, &foreign, &data);
    chmod(&pki.join("mirage.key"), 0o644);
    chmod(&data, 0o777);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let _taken = std::net::TcpListener::bind(&listen).unwrap();
    let (code, out) = run(
        "mirage",
        &["doctor", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    for want in [
        "does not verify against",
        "is not the key of",
        "mode 0644 lets other users read it",
        &format!("fix: chmod 600 {}/mirage.key", pki.display()),
        &format!("listen {listen}: already in use"),
        "writable by every user",
        &format!("fix: chmod 700 {}", data.display()),
        "problem(s) found",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    // A config that does not parse stops there, with the key named.
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\nnot_a_key = 1\n").unwrap();
    let (code, out) = run(
        "mirage",
        &["doctor", "--config", bad.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.contains("not_a_key") && out.contains("fix:"), "{out}");
}

#[test]
fn ghost_doctor_checks_certificates_reachability_and_clock_against_a_running_mirage() {
    let dir = TempDir::new("doctor-g");
    let pki = dir.path("pki");
    init(&pki);
    let m = Mirage::start(&dir, 0, "");
    let data = dir.path("g1");
    std::fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o700);
    let write_cfg = |cert: &Path| {
        let cfg = dir.path("ghost.toml");
        std::fs::write(
            &cfg,
            format!(
                "ghost_id = \"g1\"\ndata_dir = \"{}\"\n[mirage]\naddresses = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n[tls]\nmode = \"production\"\nenabled = true\nca_file = \"{pki}/ca.pem\"\ncert_file = \"{}\"\nkey_file = \"{pki}/g1.key\"\nserver_name = \"127.0.0.1\"\n",
                data.display(),
                m.session,
                free_port(),
                cert.display(),
                pki = pki.display(),
            ),
        )
        .unwrap();
        cfg
    };
    let cfg = write_cfg(&pki.join("g1.pem"));
    let api = format!("http://{}", m.api);
    let args = [
        "doctor",
        "--config",
        cfg.to_str().unwrap(),
        "--mirage-api",
        &api,
    ];
    let (code, out) = run("ghost", &args, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reachable"), "{out}");
    assert!(out.contains("ms ahead of Mirage") || out.contains("ms behind Mirage"));

    // The same host with its wall clock an hour ahead.
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime (scripts/deps.sh --test installs faketime)");
    let (code, out) = run(
        "ghost",
        &args,
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME", "+1h"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM  clock"), "{out}");
    assert!(
        out.contains("ahead of Mirage") && out.contains("timedatectl"),
        "{out}"
    );

    // An expired certificate under the right CA, and Mirage gone.
    let ca = mirage::certs::load_ca(&pki).unwrap();
    let expired = mirage::certs::client_cert(&ca, "g1", -30, -1).unwrap();
    let old = dir.path("expired.pem");
    std::fs::write(&old, &expired.cert_pem).unwrap();
    let cfg = write_cfg(&old);
    drop(m);
    let (code, out) = run("ghost", &["doctor", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    for want in [
        "expired",
        "mirage certs rotate",
        "does not verify against",
        "Connection refused",
        "not measured: pass --mirage-api",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}
