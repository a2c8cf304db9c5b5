//! Operator CLI (issue 16): completions and man pages from clap, `--version` with the commit,
//! the CLI over HTTPS with a CA file, `ghost drain/undrain` (persisted) and `intent logs`,
//! each against real `mirage` and `ghost` processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use e2e::*;

/// Runs the mirage CLI with `env`; (exit code, stdout, stderr).
fn mirage(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(bin("mirage"));
    c.args(args).env_remove("MIRAGE_CA_FILE");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_man_pages_and_version_come_from_clap() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = mirage(&["completions", shell], &[]);
        assert_eq!(code, 0, "{err}");
        // The script knows the subcommands added for operators.
        assert!(
            out.contains("drain") && out.contains("logs"),
            "{shell}: {out:.300}"
        );
    }
    assert!(mirage(&["completions", "bash"], &[])
        .1
        .contains("_mirage()"));
    let (code, _, err) = mirage(&["completions", "tcsh"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("possible values"), "{err}");

    let dir = TempDir::new("man");
    let out = dir.path("man");
    let (code, _, err) = mirage(&["man", "--out", out.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let page = std::fs::read_to_string(out.join("mirage-ghost-drain.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "{page:.200}"
    );
    assert!(page.contains("no new step"), "{page}");
    assert!(out.join("mirage.1").exists());
    let st = Command::new(bin("ghost"))
        .args(["man", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success());
    assert!(out.join("ghost-serve.1").exists());

    // The commit the binaries were built from (build.rs), "unknown" outside git.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let (code, v, _) = mirage(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        v.trim(),
        format!("mirage {} ({head})", env!("CARGO_PKG_VERSION"))
    );
    let g = Command::new(bin("ghost"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&g.stdout).contains(&format!("({head})")));
    // Every new command has --help.
    for args in [
        &["ghost", "drain", "--help"][..],
        &["ghost", "undrain", "--help"],
        &["intent", "logs", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        let (code, out, _) = mirage(args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

#[test]
fn the_cli_speaks_https_with_the_fleet_ca() {
    let dir = TempDir::new("cli-https");
    let pki = dir.path("pki");
    let (code, _, err) = mirage(
        &[
            "certs",
            "init",
            "--out",
            pki.to_str().unwrap(),
            "--mirage-host",
            "127.0.0.1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let extra = format!(
        "[api]\ntoken = \"t0k\"\ntls_cert_file = \"{0}/mirage.pem\"\ntls_key_file = \"{0}/mirage.key\"",
        pki.display()
    );
    let m = Mirage::start(&dir, 0, &extra);
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    let url = format!("https://{}", m.api);
    let ca = pki.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let token = [("MIRAGE_TOKEN", "t0k")];
    wait_until("g1 listed over https", Duration::from_secs(20), || {
        let (code, out, _) = mirage(&["--api", &url, "--ca-file", ca, "ghosts"], &token);
        code == 0 && out.contains("g1") && out.contains("connected")
    });
    // Without the CA the server certificate does not verify, and the error says what to do.
    let (code, _, err) = mirage(&["--api", &url, "ghosts"], &token);
    assert_ne!(code, 0);
    assert!(err.contains("--ca-file"), "{err}");
    // The CA from the environment; submit --wait follows the report stream over TLS too.
    let plan = dir.path("hello.toml");
    std::fs::write(
        &plan,
        "actor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={msg=\"over-tls\"}\non=\"one\"\n",
    )
    .unwrap();
    let env = [("MIRAGE_TOKEN", "t0k"), ("MIRAGE_CA_FILE", ca)];
    let (code, out, err) = mirage(
        &[
            "--api",
            &url,
            "issue",
            "submit",
            plan.to_str().unwrap(),
            "--wait",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("submitted"), "{out}");
    // A wrong token over https is the API's 401, not a TLS failure.
    let (code, _, err) = mirage(
        &["--api", &url, "ghosts"],
        &[("MIRAGE_TOKEN", "nope"), ("MIRAGE_CA_FILE", ca)],
    );
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
}

fn plan(id: &str, scope: &str, steps: &str) -> String {
    format!("intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"{scope}\"\nobjective=\"o\"\n{steps}")
}

#[test]
fn a_drained_ghost_finishes_its_command_and_gets_no_new_steps_until_undrained() {
    let dir = TempDir::new("drain");
    let session = free_port();
    let m = Mirage::start(&dir, session, "");
    let _g1 = Ghost::start(&dir, "g1", &m.session, "");
    let _g2 = Ghost::start(&dir, "g2", &m.session, "");
    m.wait_ghosts(2, Duration::from_secs(20));
    let api = format!("http://{}", m.api);
    let cli = |args: &[&str]| {
        let mut a = vec!["--api", api.as_str()];
        a.extend_from_slice(args);
        mirage(&a, &[])
    };

    // A command running on g1 when it is drained runs to its end.
    m.submit(&plan(
        "long",
        "ghost:g1",
        "[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"2500\"}\n",
    ));
    // Sent at submit (g1 is connected); the drain lands while it sleeps.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(m.get("/v1/intents/long").1["summary"]["status"], "active");
    let (code, out, err) = cli(&["ghost", "drain", "g1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("drained g1"), "{out}");
    m.wait_status("long", "satisfied", Duration::from_secs(15));

    // A step for every Ghost goes to g2 only; its output is in `intent logs`.
    m.submit(&plan(
        "all",
        "ghost:*",
        "[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={msg=\"hi-from-step\"}\non=\"all\"\n",
    ));
    m.wait_status("all", "satisfied", Duration::from_secs(15));
    let (code, out, err) = cli(&["intent", "logs", "all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on g2") && !out.contains("on g1"), "{out}");
    assert!(
        out.contains("stdout| ") && out.contains("hi-from-step"),
        "{out}"
    );
    let (_, js, _) = cli(&["--json", "intent", "logs", "all", "--step", "1"]);
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1, "{v}");
    let (_, js, _) = cli(&["--json", "intent", "logs", "all", "--step", "2"]);
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert!(v["outputs"].as_array().unwrap().is_empty(), "{v}");

    // A step only g1 can take waits while it is drained…
    m.submit(&plan(
        "pinned",
        "ghost:g1",
        "[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={msg=\"x\"}\ntimeout=\"60s\"\n",
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(
        m.get("/v1/intents/pinned").1["summary"]["status"],
        "satisfied"
    );
    let (_, out, _) = cli(&["ghost", "show", "g1"]);
    assert!(out.contains("connected,drained"), "{out}");

    // …and the drain outlives a Mirage restart.
    let data = dir.path("mirage");
    assert!(std::fs::read_to_string(data.join("drained.txt"))
        .unwrap()
        .lines()
        .any(|l| l == "g1"));
    drop(m);
    let m = Mirage::start(&dir, session, "");
    m.wait_ghosts(2, Duration::from_secs(20));
    assert_eq!(m.get("/v1/ghosts/g1").1["drained"], true);
    let api = format!("http://{}", m.api);
    let (code, out, err) = mirage(&["--api", &api, "ghost", "undrain", "g1"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("undrained g1"), "{out}");
    m.wait_status("pinned", "satisfied", Duration::from_secs(15));
    assert_eq!(m.get("/v1/ghosts/g1").1["drained"], false);
}
