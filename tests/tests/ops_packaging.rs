//! Packaging (issue 16): the systemd units pass `systemd-analyze verify` (when systemd is on
//! the machine) and a unit-file lint (always); the Debian package metadata names both
//! binaries, both units, both configs, and maintainer scripts that parse; and the readiness
//! the units rely on (`Type=notify`): `mirage serve` and `ghost serve` send READY=1 to
//! $NOTIFY_SOCKET once they listen and STOPPING=1 on SIGTERM, then exit within the unit's
//! TimeoutStopSec. Building the .deb itself needs a release build: `make deb`, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::*;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// section → key → values (a key may repeat). Refuses what systemd would warn about: a line
/// outside a section, a line that is not `key=value`, an unknown section.
fn parse_unit(text: &str) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, String> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = None::<String>;
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if !["Unit", "Service", "Install"].contains(&s) {
                return Err(format!("line {}: unknown section [{s}]", n + 1));
            }
            section = Some(s.to_owned());
            out.entry(s.to_owned()).or_default();
            continue;
        }
        let Some(sec) = &section else {
            return Err(format!("line {}: outside any section", n + 1));
        };
        let Some((k, v)) = l.split_once('=') else {
            return Err(format!("line {}: not key=value: {l}", n + 1));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("line {}: bad key {k:?}", n + 1));
        }
        out.get_mut(sec)
            .unwrap()
            .entry(k.to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    Ok(out)
}

fn seconds(v: &str) -> Option<u64> {
    let v = v.trim();
    v.strip_suffix("min")
        .and_then(|m| m.parse::<u64>().ok().map(|m| m * 60))
        .or_else(|| v.strip_suffix('s').and_then(|s| s.parse().ok()))
        .or_else(|| v.parse().ok())
}

/// The documented unit lint: what an operator relies on, checked key by key.
fn lint(name: &str, text: &str) -> Vec<String> {
    let u = match parse_unit(text) {
        Ok(u) => u,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let mut bad = Vec::new();
    let one = |sec: &str, key: &str| -> Option<String> {
        let v = u.get(sec)?.get(key)?;
        (v.len() == 1).then(|| v[0].clone())
    };
    let mut want = |sec: &str, key: &str, ok: &dyn Fn(&str) -> bool, why: &str| match one(sec, key)
    {
        Some(v) if ok(&v) => {}
        Some(v) => bad.push(format!("{name}: [{sec}] {key}={v}: {why}")),
        None => bad.push(format!(
            "{name}: [{sec}] {key} missing (or repeated): {why}"
        )),
    };
    let bin = name.trim_end_matches(".service");
    want("Unit", "Description", &|v| !v.is_empty(), "say what it is");
    want(
        "Service",
        "Type",
        &|v| v == "notify",
        "readiness over NOTIFY_SOCKET",
    );
    want(
        "Service",
        "NotifyAccess",
        &|v| v == "main",
        "only the main process reports",
    );
    want(
        "Service",
        "ExecStart",
        &|v| v.starts_with(&format!("/usr/bin/{bin} serve ")),
        "the packaged binary's serve",
    );
    want(
        "Service",
        "Restart",
        &|v| v == "on-failure",
        "restart after a crash",
    );
    want(
        "Service",
        "KillSignal",
        &|v| v == "SIGTERM",
        "graceful stop",
    );
    want(
        "Service",
        "TimeoutStopSec",
        &|v| seconds(v).is_some_and(|s| (5..=120).contains(&s)),
        "a bounded drain",
    );
    want("Service", "NoNewPrivileges", &|v| v == "yes", "hardening");
    want("Service", "ProtectSystem", &|v| v == "strict", "hardening");
    want("Service", "ProtectHome", &|v| v == "yes", "hardening");
    want("Service", "PrivateTmp", &|v| v == "yes", "hardening");
    want(
        "Service",
        "StateDirectory",
        &|v| v == bin,
        "its data dir under /var/lib",
    );
    want(
        "Service",
        "User",
        &|v| v == bin,
        "its own user (postinst makes it)",
    );
    want(
        "Install",
        "WantedBy",
        &|v| v == "multi-user.target",
        "enable-able",
    );
    bad
}

fn units() -> Vec<(String, String)> {
    ["mirage.service", "ghost.service"]
        .iter()
        .map(|n| {
            let p = root().join("packaging/systemd").join(n);
            (n.to_string(), std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn the_units_pass_the_lint_and_systemd_analyze_verify() {
    for (name, text) in units() {
        let bad = lint(&name, &text);
        assert!(bad.is_empty(), "{bad:#?}");
        // The flags ExecStart passes exist on the binary.
        let bin_name = name.trim_end_matches(".service");
        let help = Command::new(bin(bin_name))
            .args(["serve", "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        let exec = parse_unit(&text).unwrap()["Service"]["ExecStart"][0].clone();
        for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
            assert!(help.contains(flag), "{name}: {flag} not in `serve --help`");
        }
    }
    // The lint is not vacuous: a unit with a missing key and a wrong value is refused.
    let (_, good) = &units()[0];
    let broken = good
        .replace("Type=notify", "Type=simple")
        .replace("NoNewPrivileges=yes\n", "");
    let bad = lint("mirage.service", &broken);
    assert!(bad.iter().any(|b| b.contains("Type=simple")), "{bad:?}");
    assert!(bad.iter().any(|b| b.contains("NoNewPrivileges")), "{bad:?}");
    assert!(lint("x.service", "Type=notify\n")[0].contains("outside any section"));

    // systemd's own check, on copies whose ExecStart is the binary built here (verify
    // wants the program to exist). Missing systemd-analyze: the lint above is the check.
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: unit files checked by the lint only");
        return;
    };
    assert!(out.status.success());
    let dir = TempDir::new("units");
    let mut paths = Vec::new();
    for (name, text) in units() {
        let b = name.trim_end_matches(".service");
        let p = dir.path(&name);
        std::fs::write(
            &p,
            text.replace(&format!("/usr/bin/{b}"), bin(b).to_str().unwrap()),
        )
        .unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    // Warnings (an unknown key, a bad value) go to stderr even when it exits 0.
    let noise: Vec<&str> = err.lines().filter(|l| l.contains(".service")).collect();
    assert!(noise.is_empty(), "systemd-analyze verify warned: {noise:?}");
}

#[test]
fn the_deb_metadata_lists_both_binaries_units_configs_and_sound_scripts() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("mirage/Cargo.toml")).unwrap())
            .unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a[0].as_str().unwrap().to_owned(),
                a[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has = |src: &str, dst: &str| assets.iter().any(|(s, d)| s == src && d == dst);
    assert!(has("target/release/mirage", "usr/bin/"), "{assets:?}");
    assert!(has("target/release/ghost", "usr/bin/"), "{assets:?}");
    assert!(has("../config/mirage.toml", "etc/mirage/mirage.toml"));
    assert!(has("../config/ghost.toml", "etc/ghost/ghost.toml"));
    // Every source outside target/ (built by `make deb`) is in the tree.
    for (src, _) in &assets {
        if !src.contains("target/") {
            assert!(
                root().join("mirage").join(src).exists(),
                "deb asset {src} is missing"
            );
        }
    }
    let conf: Vec<&str> = deb["conf-files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(conf, ["/etc/mirage/mirage.toml", "/etc/ghost/ghost.toml"]);
    // Both units, from the directory the lint checks.
    let units: Vec<&str> = deb["systemd-units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let dir = root()
                .join("mirage")
                .join(u["unit-scripts"].as_str().unwrap());
            let name = u["unit-name"].as_str().unwrap();
            assert!(dir.join(format!("{name}.service")).exists(), "{name}");
            assert_eq!(u["enable"].as_bool(), Some(false));
            name
        })
        .collect();
    assert_eq!(units, ["mirage", "ghost"]);
    // Maintainer scripts: executable, the #DEBHELPER# token cargo-deb fills, valid sh, and
    // postinst makes the users the units run as.
    let scripts = root()
        .join("mirage")
        .join(deb["maintainer-scripts"].as_str().unwrap());
    for s in ["postinst", "postrm"] {
        use std::os::unix::fs::PermissionsExt;
        let p = scripts.join(s);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("#DEBHELPER#"), "{s}");
        assert!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o111 != 0);
        let st = Command::new("sh").arg("-n").arg(&p).status().unwrap();
        assert!(st.success(), "{s} does not parse");
    }
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system") && postinst.contains("for u in mirage ghost"));
}

/// Binds a notify socket, runs `exe args` with NOTIFY_SOCKET pointing at it, expects READY=1,
/// then SIGTERM → STOPPING=1 and an exit within `stop_within`.
fn readiness(exe: &str, args: &[&str], dir: &TempDir, stop_within: Duration) {
    let sock = dir.path(&format!("{exe}.notify"));
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut p = Proc::spawn_env(
        &bin(exe),
        args,
        dir.path(&format!("{exe}.log")),
        &[("NOTIFY_SOCKET", sock.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1", "{exe}");
    let t = Instant::now();
    let code = p.sigterm();
    let n = rx.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1", "{exe}");
    assert_eq!(code, Some(0), "{exe} exit after SIGTERM: {}", p.log_text());
    assert!(t.elapsed() < stop_within, "{exe} took {:?}", t.elapsed());
}

#[test]
fn serve_reports_ready_and_stopping_over_notify_socket() {
    let dir = TempDir::new("notify");
    let (_, unit) = &units()[0];
    let stop = Duration::from_secs(
        seconds(&parse_unit(unit).unwrap()["Service"]["TimeoutStopSec"][0]).unwrap(),
    );
    let session = format!("127.0.0.1:{}", free_port());
    let data = dir.path("m");
    readiness(
        "mirage",
        &[
            "serve",
            "--listen",
            &session,
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &dir,
        stop,
    );
    let data = dir.path("g");
    readiness(
        "ghost",
        &[
            "serve",
            "--id",
            "g.notify",
            "--policy",
            "headless",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &dir,
        stop,
    );
}
