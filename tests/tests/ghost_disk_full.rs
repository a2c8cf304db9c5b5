//! A full disk on the Ghost, with real processes on a small tmpfs (issue 19 items 6 and 8):
//! - `seed.fs write`/`append` over an existing file on a full disk fail and leave the old
//!   content whole, with no temp file and no 0-byte file behind;
//! - the outbox's disk reserve lets events persist while something else filled the disk;
//! - with no reserve, an intent on a Ghost whose outbox cannot persist fails at once with a
//!   reason that names the outbox and the disk, and Mirage's retries do not run the command
//!   again.
//!
//! Mounting needs root; where it is not permitted each test prints SKIP and returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;

const T: Duration = Duration::from_secs(40);

/// Writes `path` until the disk refuses; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![b'z'; 4096];
    let mut n = 0u64;
    while f.write_all(&chunk).is_ok() {
        n += chunk.len() as u64;
    }
    let _ = f.sync_all();
    n
}

fn exec(cfg: &Path, op: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("ghost"))
        .args(["exec", "seed.fs", op])
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_write_on_a_full_disk_leaves_the_old_file_whole_and_nothing_behind() {
    let dir = TempDir::new("fs-full");
    let root = dir.path("root");
    let Some(_mnt) = Tmpfs::mount(&root, "2m") else {
        return;
    };
    let cfg = dir.path("ghost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[seed]\nfs_root = \"{}\"\nfs_max_file_bytes = 4194304\nfs_max_total_bytes = 0\n",
            root.display()
        ),
    )
    .unwrap();
    let old = "o".repeat(100 * 1024);
    let (ok, err) = exec(&cfg, "write", &["path=d/f", &format!("content={old}")]);
    assert!(ok, "{err}");
    let filled = fill(&root.join("filler"));
    let new = "n".repeat(100 * 1024);

    let (ok, err) = exec(&cfg, "write", &["path=d/f", &format!("content={new}")]);
    assert!(!ok, "a write on a full disk fails");
    assert!(err.contains("No space left on device"), "{err}");
    let (ok, err) = exec(&cfg, "append", &["path=d/f", &format!("content={new}")]);
    assert!(!ok && err.contains("No space left on device"), "{err}");
    let (ok, err) = exec(&cfg, "write", &["path=d/g", &format!("content={new}")]);
    assert!(!ok && err.contains("No space left on device"), "{err}");

    assert_eq!(
        std::fs::read_to_string(root.join("d/f")).unwrap(),
        old,
        "the old content is whole"
    );
    let left: Vec<String> = std::fs::read_dir(root.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["f"], "no temp file and no 0-byte file left");
    println!(
        "filled {filled} bytes; write, append and a new file all refused, d/f whole ({} bytes)",
        old.len()
    );

    // Room again: the same write goes through.
    std::fs::remove_file(root.join("filler")).unwrap();
    let (ok, err) = exec(&cfg, "write", &["path=d/f", &format!("content={new}")]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(root.join("d/f")).unwrap(), new);
}

fn ghost_status(g: &Ghost) -> serde_json::Value {
    g.admin(json!({"action": "status"}))["data"].clone()
}

#[test]
fn the_outbox_reserve_keeps_events_persisting_on_a_full_disk() {
    let dir = TempDir::new("outbox-reserve");
    let Some(_mnt) = Tmpfs::mount(&dir.path("g1"), "4m") else {
        return;
    };
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "[outbox]\nreserve_bytes = 524288\n");
    m.wait_ghosts(1, T);
    assert_eq!(ghost_status(&g)["Outbox"]["reserve_held"], true);
    let filled = fill(&dir.path("g1/filler"));
    let id = m.submit(
        "intent_id=\"r1\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\ntimeout=\"60s\"\n",
    );
    let started = Instant::now();
    m.wait_status(&id, "satisfied", T);
    let st = ghost_status(&g);
    assert_eq!(st["Outbox"]["reserve_held"], false, "{st}");
    assert_eq!(st["Outbox"]["volatile_sent"], 0, "{st}");
    assert!(
        g.proc
            .log_text()
            .contains("released the outbox disk reserve"),
        "{}",
        tail(&g.proc.log_text(), 20)
    );
    println!(
        "disk filled ({filled} bytes by another writer); intent satisfied in {:?} on the reserve",
        started.elapsed()
    );
}

#[test]
fn an_outbox_that_cannot_persist_fails_the_intent_at_once_with_the_reason() {
    let dir = TempDir::new("outbox-full");
    let Some(_mnt) = Tmpfs::mount(&dir.path("g1"), "2m") else {
        return;
    };
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "[outbox]\nreserve_bytes = 0\n");
    m.wait_ghosts(1, T);
    let filled = fill(&dir.path("g1/filler"));
    // Three attempts of 60 s each: the intent must fail well before the first one ends.
    let id = m.submit(
        "intent_id=\"full1\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\ntimeout=\"60s\"\nretries=2\n",
    );
    let started = Instant::now();
    let d = m.wait_status(&id, "failed", Duration::from_secs(30));
    let took = started.elapsed();
    let failure = d["plan"]["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("outbox cannot persist events") && failure.contains("disk is full"),
        "the failure names the outbox and the disk: {d}"
    );
    let st = ghost_status(&g);
    assert_eq!(
        st["Dispatcher"]["executed"], 1,
        "the put ran once; the retries were refused without running: {st}"
    );
    assert!(st["Outbox"]["failing"]
        .as_str()
        .unwrap_or_default()
        .contains("disk is full"));

    // Room again: the outbox finds out by itself (a probe write every second), no restart,
    // and the next intent is satisfied.
    std::fs::remove_file(dir.path("g1/filler")).unwrap();
    let freed = Instant::now();
    while ghost_status(&g)["Outbox"]["failing"] != "" {
        assert!(freed.elapsed() < T, "the outbox did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    let recovered = freed.elapsed();
    let id = m.submit(
        "intent_id=\"full2\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"w\"}\ntimeout=\"60s\"\n",
    );
    m.wait_status(&id, "satisfied", T);
    println!(
        "disk filled ({filled} bytes); intent failed after {took:?} (step timeout 60 s), 1 execution for 3 attempts: {failure}; outbox healthy {recovered:?} after space returned"
    );
}
