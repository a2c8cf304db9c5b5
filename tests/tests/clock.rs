//! Issue 19 items 2 and 4: a Ghost whose wall clock is wrong. libfaketime is preloaded into
//! the Ghost process only (Mirage keeps the real clock), so the two clocks differ by an hour.
//!
//! - A Ghost SIGKILLed mid `seed.fs append` and restarted an hour ahead must still know the
//!   append had started: the re-sent command is not run again, the intent fails "effect
//!   unknown", the line is in the file once. (Its dedupe window and start markers used to age
//!   on the wall clock: the jump expired them and the append ran twice.)
//! - A Ghost an hour ahead runs commands (Mirage sends a relative budget, not only an
//!   absolute deadline from its own clock) and `/v1/ghosts` shows the measured skew.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(120);
const HOUR_MS: i64 = 3_600_000;

/// libfaketime, which CI installs (scripts/deps.sh --test). Missing is a failure, not a skip:
/// without it these tests would prove nothing.
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime not found (looked at {candidates:?}): install the Debian package \
                 faketime (`bash scripts/deps.sh --test` does)"
            )
        })
}

/// `ghost serve` as `Ghost::start` runs it, with its wall clock shifted by `offset`
/// (libfaketime syntax, e.g. "+1h"); the monotonic clock is left alone.
fn ghost_with_clock(dir: &Path, id: &str, mirage: &str, offset: &str) -> Ghost {
    let data = dir.join(id);
    let cfg = dir.join(format!("{id}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "ghost_id = \"{id}\"\ndata_dir = \"{}\"\n[mirage]\naddresses = [\"{mirage}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[timeouts]\nheartbeat_ms = 300\ndead_after_ms = 2000\nack_timeout_ms = 3000\n[backoff]\ninitial_ms = 50\nmax_ms = 500\n",
            data.display(),
            token = e2e::ADMIN_TOKEN,
        ),
    )
    .unwrap();
    let lib = libfaketime();
    let proc = Proc::spawn_env(
        &bin("ghost"),
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.join(format!("{id}.log")),
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let admin = proc.field("admin");
    Ghost {
        proc,
        admin,
        token: e2e::ADMIN_TOKEN.to_owned(),
    }
}

fn ghost_info(m: &Mirage, id: &str) -> Value {
    let (_, v) = m.get("/v1/ghosts");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|g| g["ghost_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until Mirage has measured the Ghost's clock an hour ahead (±1 min), which also
/// proves libfaketime took effect in the Ghost; returns the skew.
fn wait_skew_an_hour_ahead(m: &Mirage, id: &str) -> i64 {
    let mut skew = 0;
    wait_until("Mirage to measure the Ghost's clock skew", T, || {
        skew = ghost_info(m, id)["clock_skew_ms"].as_i64().unwrap_or(0);
        (skew - HOUR_MS).abs() < 60_000
    });
    skew
}

fn wait_terminal(m: &Mirage, id: &str) -> Value {
    let mut detail = Value::Null;
    wait_until("the intent to end", T, || {
        detail = m.get(&format!("/v1/intents/{id}")).1;
        matches!(
            detail["summary"]["status"].as_str(),
            Some("satisfied" | "failed")
        )
    });
    detail
}

#[test]
fn a_ghost_restarted_an_hour_ahead_still_knows_its_append_had_started() {
    let dir = TempDir::new("clock-kill");
    let m = Mirage::start(&dir, 0, "");
    let mut g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    // The append happens, then the seed holds its answer; the step may take two hours, so
    // Mirage keeps re-sending the same command after the Ghost comes back.
    let id = m.submit(
        "intent_id=\"ck\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.fs\"\noperation=\"append\"\nargs={path=\"count.log\",content=\"one\\n\",hold_ms=\"8000\"}\ntimeout=\"2h\"\n",
    );
    let file = dir.path("g1/fs/count.log");
    let lines = || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_until("the append", T, || lines().len() == 1);
    g.proc.sigkill();

    g = ghost_with_clock(dir.as_ref(), "g1", &m.session, "+1h");
    let skew = wait_skew_an_hour_ahead(&m, "g1");
    let d = wait_terminal(&m, &id);
    assert_eq!(lines(), ["one"], "the append happened once: {d}");
    assert_eq!(d["summary"]["status"], "failed", "{d}");
    let failure = d["plan"]["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("ghost restarted while command") && failure.contains("effect is unknown"),
        "the failure says why: {d}"
    );
    let st = g.admin(json!({"action": "status"}));
    assert_eq!(st["data"]["Dispatcher"]["executed"], 0, "{st}");
    assert_eq!(st["data"]["Dispatcher"]["interrupted"], 1, "{st}");
    let log = g.proc.log_text();
    assert!(
        log.contains("interrupted=1"),
        "the restart recovered the start marker: {}",
        tail(&log, 20)
    );
    eprintln!(
        "ghost restarted with its clock {skew} ms ahead: interrupted=1, line once, intent failed \"effect unknown\""
    );
}

#[test]
fn a_ghost_an_hour_ahead_runs_commands_and_mirage_shows_the_skew() {
    let dir = TempDir::new("clock-skew");
    let m = Mirage::start(&dir, 0, "");
    let g = ghost_with_clock(dir.as_ref(), "g1", &m.session, "+1h");
    m.wait_ghosts(1, T);
    let skew = wait_skew_an_hour_ahead(&m, "g1");
    let info = ghost_info(&m, "g1");
    let warning = info["clock_warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("ahead of Mirage's"),
        "/v1/ghosts warns: {info}"
    );
    // A one-minute step: its absolute deadline is 59 minutes in the past on the Ghost's clock.
    let id = m.submit(
        "intent_id=\"cs\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\ntimeout=\"60s\"\n\
         [[step]]\nseed=\"seed.fs\"\noperation=\"append\"\nargs={path=\"a.log\",content=\"x\\n\"}\ntimeout=\"60s\"\n",
    );
    let d = m.wait_status(&id, "satisfied", T);
    assert_eq!(g.kv_get("k").as_deref(), Some("v"), "{d}");
    assert_eq!(
        std::fs::read_to_string(dir.path("g1/fs/a.log")).unwrap_or_default(),
        "x\n"
    );
    eprintln!("ghost {skew} ms ahead: intent satisfied; /v1/ghosts: {warning}");
}
