//! Issue 14: `storage.move` moves a redis database between two Ghosts as one intent, Ghost to
//! Ghost. Real redis-server processes, real Ghosts, loopback:
//! - config/plans/storage-move.toml with `mirage up --ghosts 2` moves 100,000 keys from
//!   ghost.local to ghost.2 and ends satisfied; every key/value is equal on the target;
//! - faults: a flipped byte on the wire (sha256 mismatch), SIGKILL of the target Ghost
//!   mid-transfer, SIGKILL of Mirage mid-transfer; the source stays intact and serving in
//!   every case, a failed target is removed, a resumed move ends verified;
//! - the move holds both seed locks from its first step to its last, across a Mirage
//!   restart: intents on either seed wait, and run after it; its one-time token is never in
//!   `GET /v1/intents/{id}`, `mirage intent show`, its reports or the logs; SIGKILL of the
//!   source Ghost mid-transfer fails the move cleanly and the restarted source serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::proxy::Proxy;
use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const KEYS: usize = 100_000;

fn key(i: usize) -> String {
    format!("key:{i:06}")
}

/// ~40 bytes, different per key.
fn value(i: usize) -> String {
    format!(
        "value-{i}-{:08x}-payload-payload",
        (i as u64).wrapping_mul(2654435761) % 0xffff_ffff
    )
}

fn resp(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
    }
    out
}

fn conn(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn line(r: &mut impl BufRead) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.ends_with("\r\n"), "short reply {l:?}");
    l.trim_end().to_owned()
}

/// SETs every key, pipelined in batches of 1000.
fn fill(port: u16, n: usize) {
    let s = conn(port);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for start in (0..n).step_by(1000) {
        let mut batch = Vec::new();
        let end = (start + 1000).min(n);
        for i in start..end {
            batch.extend(resp(&["SET", &key(i), &value(i)]));
        }
        w.write_all(&batch).unwrap();
        for _ in start..end {
            assert_eq!(line(&mut r), "+OK");
        }
    }
}

/// Keys whose value differs from `value(i)` (or is missing), by MGET in batches of 500.
fn mismatches(port: u16, n: usize) -> usize {
    let s = conn(port);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut bad = 0;
    for start in (0..n).step_by(500) {
        let end = (start + 500).min(n);
        let keys: Vec<String> = (start..end).map(key).collect();
        let mut parts = vec!["MGET"];
        parts.extend(keys.iter().map(String::as_str));
        w.write_all(&resp(&parts)).unwrap();
        assert_eq!(line(&mut r), format!("*{}", end - start));
        for i in start..end {
            let h = line(&mut r);
            if h == "$-1" {
                bad += 1;
                continue;
            }
            let len: usize = h[1..].parse().unwrap();
            let mut v = vec![0u8; len + 2];
            r.read_exact(&mut v).unwrap();
            if v[..len] != *value(i).as_bytes() {
                bad += 1;
            }
        }
    }
    bad
}

fn dbsize(port: u16) -> Option<u64> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut w = s.try_clone().ok()?;
    w.write_all(&resp(&["DBSIZE"])).ok()?;
    let mut l = String::new();
    BufReader::new(s).read_line(&mut l).ok()?;
    l.trim().strip_prefix(':')?.parse().ok()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

fn plan_text(intent_id: &str, src: &str, dst: &str, dst_port: u16, tp: u16, extra: &str) -> String {
    format!(
        "intent_id = \"{intent_id}\"\nactor = \"t\"\ntarget_scope = \"ghost:*\"\nobjective = \"move\"\n\
         [[step]]\noperation = \"storage.move\"\n\
         args = {{ source = \"redis://{src}/cache\", target = \"redis://{dst}:{dst_port}/cache\", transfer_port = \"{tp}\"{extra} }}\n\
         timeout = \"20s\"\n"
    )
}

fn exec(g: &Ghost, op: &str, args: Value) -> Value {
    g.admin(json!({"action": "execute", "command": {
        "seed_selector": "seed.redis", "operation": op, "args": args}}))
}

fn redis_installed() {
    assert!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server is not installed: run scripts/deps.sh --test"
    );
}

#[test]
fn storage_move_plan_moves_100k_keys_between_two_ghosts_of_mirage_up() {
    redis_installed();
    let dir = TempDir::new("storage-move");
    let (_up, ports) = spawn_up(&dir, 2);
    let api = ports.api;
    for id in ["ghost.local", "ghost.2"] {
        wait_for(&format!("{id} to connect"), T, || {
            e2e::http(&api, "GET", &format!("/v1/ghosts/{id}"), None).1["connected"] == true
        });
    }
    let submit = |plan: &str| {
        let (st, v) = e2e::http(&api, "POST", "/v1/intents", Some(plan));
        assert_eq!(st, 201, "{v}");
        v["intent_id"].as_str().unwrap().to_owned()
    };
    let wait = |id: &str, within: Duration| {
        let mut d = Value::Null;
        let t = wait_for(&format!("{id} satisfied"), within, || {
            d = e2e::http(&api, "GET", &format!("/v1/intents/{id}"), None).1;
            assert_ne!(d["summary"]["status"], "failed", "{d}");
            d["summary"]["status"] == "satisfied"
        });
        (t, d)
    };
    let src_port = free_port();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/plans/");
    let redis = std::fs::read_to_string(format!("{root}redis.toml"))
        .unwrap()
        .replace("6390", &src_port.to_string());
    wait(&submit(&redis), T);
    fill(src_port, KEYS);
    assert_eq!(dbsize(src_port), Some(KEYS as u64));

    let (dst_port, tp) = (free_port(), free_port());
    let plan = std::fs::read_to_string(format!("{root}storage-move.toml"))
        .unwrap()
        .replace("6391", &dst_port.to_string())
        .replace("7390", &tp.to_string());
    let id = submit(&plan);
    let (took, detail) = wait(&id, Duration::from_secs(120));
    assert_eq!(detail["summary"]["steps_done"], 4, "{detail}");
    // Every key/value on the target; the source untouched and serving.
    assert_eq!(dbsize(dst_port), Some(KEYS as u64));
    assert_eq!(mismatches(dst_port, KEYS), 0);
    assert_eq!(dbsize(src_port), Some(KEYS as u64));
    assert_eq!(mismatches(src_port, KEYS), 0);
    // The restored instance is a durable, supervised seed.redis instance on ghost.2.
    let target_uri = format!("redis://127.0.0.1:{dst_port}/0");
    wait_for("the target URI in /v1/services", T, || {
        e2e::http(&api, "GET", "/v1/services", None)
            .1
            .to_string()
            .contains(&target_uri)
    });
    assert!(dir.path("data/ghost.2/redis/cache/MOVE.verified").is_file());
    assert!(dir
        .path("data/ghost.2/redis/cache/appendonlydir/appendonly.aof.1.base.rdb")
        .is_file());
    // `mirage intent show` shows bytes moved and the rate.
    let out = std::process::Command::new(bin("mirage"))
        .args(["intent", "show", &id])
        .env("MIRAGE_API", format!("http://{api}"))
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(show.contains("transfer   ghost.2 move."), "{show}");
    assert!(
        show.contains("MB/s") && show.contains("keys verified"),
        "{show}"
    );
    let restored = show
        .lines()
        .find(|l| l.contains("restored cache"))
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "storage.move of {KEYS} keys: satisfied in {} ms; {restored}",
        took.as_millis()
    );
}

/// Two Ghosts and Mirage from the harness; `cache` on ga filled with KEYS keys.
/// Fields drop in order: the Ghosts stop (and stop their redis-server) before Mirage, and
/// the temp dir goes last (redis refuses SIGTERM when it cannot save into a deleted dir).
struct Fleet {
    ga: Ghost,
    gb: Ghost,
    m: Mirage,
    session_port: u16,
    src_port: u16,
    dir: TempDir,
}

const SEEDS: &str = "seeds = [\"seed.flow\", \"seed.redis\"]";

fn fleet(name: &str) -> Fleet {
    fleet_with(name, KEYS)
}

fn fleet_with(name: &str, keys: usize) -> Fleet {
    redis_installed();
    let dir = TempDir::new(name);
    let session_port = free_port();
    let m = Mirage::start(&dir, session_port, "");
    let ga = Ghost::start(&dir, "ga", &m.session, SEEDS);
    let gb = Ghost::start(&dir, "gb", &m.session, SEEDS);
    m.wait_ghosts(2, T);
    let src_port = free_port();
    let r = exec(
        &ga,
        "start",
        json!({"name": "cache", "port": src_port.to_string()}),
    );
    assert_eq!(r["data"]["event"]["Outcome"], "success", "{r}");
    fill(src_port, keys);
    Fleet {
        ga,
        gb,
        m,
        session_port,
        src_port,
        dir,
    }
}

fn source_intact(f: &Fleet) {
    assert_eq!(
        dbsize(f.src_port),
        Some(KEYS as u64),
        "the source lost keys"
    );
    assert_eq!(mismatches(f.src_port, KEYS), 0, "the source changed");
}

fn target_removed(f: &Fleet, dst_port: u16) {
    let redis = f.dir.path("gb/redis");
    let left: Vec<String> = std::fs::read_dir(&redis)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cache"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "target leftovers in {}: {left:?}",
        redis.display()
    );
    assert_eq!(
        dbsize(dst_port),
        None,
        "a target instance answers on {dst_port}"
    );
}

/// Waits until the target Ghost reports the transfer under way (bytes moved, not all).
fn mid_transfer(m: &Mirage, move_key: &str) -> (u64, u64) {
    let mut seen = (0, 0);
    wait_for("the transfer to be under way", T, || {
        let o = m.get("/v1/ghosts/gb").1["observed"][move_key]["state"].clone();
        let n = |k: &str| {
            o[k].as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        seen = (n("bytes"), n("total"));
        o["state"] == "transferring" && seen.0 > 0 && seen.0 < seen.1
    });
    seen
}

#[test]
fn a_flipped_byte_on_the_wire_fails_the_move_by_checksum_and_leaves_the_source_serving() {
    let f = fleet("move-flip");
    let tp = free_port();
    let proxy = Proxy::start_raw(&format!("127.0.0.1:{tp}"));
    proxy.flip_at(1_000_000);
    let dst_port = free_port();
    let id = f.m.submit(&plan_text(
        "mv-flip",
        "ga",
        "gb",
        dst_port,
        tp,
        &format!(", via = \"{}\"", proxy.addr),
    ));
    let d = f.m.wait_status(&id, "failed", T);
    assert_eq!(proxy.flipped(), 1);
    assert!(d.to_string().contains("sha256 mismatch"), "{d}");
    target_removed(&f, dst_port);
    source_intact(&f);
    eprintln!(
        "flipped byte 1000000 of the transfer: move failed by sha256 mismatch; source intact"
    );
}

#[test]
fn sigkill_of_the_target_ghost_mid_transfer_fails_cleanly_and_leaves_the_source_serving() {
    let mut f = fleet("move-kill-target");
    let tp = free_port();
    let proxy = Proxy::start_raw(&format!("127.0.0.1:{tp}"));
    proxy.delay(20); // ~0.8 MB/s: seconds of transfer to kill it in
    let dst_port = free_port();
    let id = f.m.submit(&plan_text(
        "mv-kill-target",
        "ga",
        "gb",
        dst_port,
        tp,
        &format!(", via = \"{}\"", proxy.addr),
    ));
    let (bytes, total) = mid_transfer(&f.m, "seed.redis/move.mv-kill-target-0");
    f.gb.proc.sigkill();
    assert!(
        f.dir.path("gb/redis/cache.incoming").is_dir(),
        "the half transfer is on disk"
    );
    // The restarted Ghost removes the half-restored target before it serves anything.
    f.gb = Ghost::start(&f.dir, "gb", &f.m.session, SEEDS);
    let d = f.m.wait_status(&id, "failed", T);
    target_removed(&f, dst_port);
    source_intact(&f);
    let failure = d["summary"].to_string();
    eprintln!("target Ghost SIGKILLed at {bytes} of {total} bytes: intent failed ({failure}); target removed; source intact");
}

#[test]
fn sigkill_of_mirage_mid_transfer_resumes_and_ends_verified() {
    let mut f = fleet("move-kill-mirage");
    let tp = free_port();
    let proxy = Proxy::start_raw(&format!("127.0.0.1:{tp}"));
    proxy.delay(20);
    let dst_port = free_port();
    let id = f.m.submit(&plan_text(
        "mv-kill-mirage",
        "ga",
        "gb",
        dst_port,
        tp,
        &format!(", via = \"{}\"", proxy.addr),
    ));
    let (bytes, total) = mid_transfer(&f.m, "seed.redis/move.mv-kill-mirage-0");
    f.m.proc.sigkill();
    // The transfer goes on without Mirage (Ghost to Ghost); Mirage restarts on its data.
    f.m = Mirage::start(&f.dir, f.session_port, "");
    let d = f.m.wait_status(&id, "satisfied", T);
    assert_eq!(d["summary"]["steps_done"], 4, "{d}");
    assert_eq!(dbsize(dst_port), Some(KEYS as u64));
    assert_eq!(mismatches(dst_port, KEYS), 0);
    source_intact(&f);
    let _ = &f.ga;
    eprintln!("Mirage SIGKILLed at {bytes} of {total} bytes: restarted, the move resumed and ended verified");
}

fn intent_show(m: &Mirage, id: &str) -> String {
    let out = std::process::Command::new(bin("mirage"))
        .args(["intent", "show", id])
        .env("MIRAGE_API", format!("http://{}", m.api))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The move's one-time token, as Mirage keeps it (its database, read beside it).
fn token_in_mirage_db(f: &Fleet, intent_id: &str) -> String {
    let db = rusqlite::Connection::open_with_flags(
        f.dir.path("mirage/mirage.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let plan: String = db
        .query_row(
            "SELECT plan FROM intents WHERE intent_id = ?1",
            [intent_id],
            |r| r.get(0),
        )
        .unwrap();
    let plan: Value = serde_json::from_str(&plan).unwrap();
    let t = plan["intent"]["steps"][1]["args"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(t.len(), 32, "{t}");
    t
}

/// An intent with one blocking seed.redis step on `ghost`: it needs `ghost::seed.redis`.
fn side_intent(intent_id: &str, ghost: &str, port: u16) -> String {
    format!(
        "intent_id = \"{intent_id}\"\nactor = \"t\"\ntarget_scope = \"ghost:*\"\nobjective = \"side\"\n\
         [[step]]\nseed = \"seed.redis\"\noperation = \"start\"\non = \"{ghost}\"\nblocking = true\n\
         args = {{ name = \"side\", port = \"{port}\" }}\n"
    )
}

/// The seq of the first report of `detail` whose summary contains `what`.
fn report_seq(detail: &Value, what: &str) -> u64 {
    detail["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["summary"].as_str().unwrap_or_default().contains(what))
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or_else(|| panic!("no report {what:?} in {detail}"))
}

#[test]
fn a_move_holds_both_seed_locks_to_its_end_across_a_mirage_restart_and_never_shows_its_token() {
    let mut f = fleet("move-locks");
    let tp = free_port();
    let proxy = Proxy::start_raw(&format!("127.0.0.1:{tp}"));
    proxy.delay(20);
    let dst_port = free_port();
    let id = f.m.submit(&plan_text(
        "mv-locks",
        "ga",
        "gb",
        dst_port,
        tp,
        &format!(", via = \"{}\"", proxy.addr),
    ));
    let (bytes, total) = mid_transfer(&f.m, "seed.redis/move.mv-locks-0");
    // Bytes moved and the rate, while the transfer runs.
    let show = intent_show(&f.m, &id);
    assert!(
        show.contains("transfer   gb move.mv-locks-0: transferring ") && show.contains(" MB/s)"),
        "{show}"
    );
    // An intent on the target's seed and one on the source's, submitted mid-move.
    let (on_target, on_source) = (
        f.m.submit(&side_intent("side-target", "gb", free_port())),
        f.m.submit(&side_intent("side-source", "ga", free_port())),
    );
    for (s, key) in [
        (&on_target, "gb::seed.redis"),
        (&on_source, "ga::seed.redis"),
    ] {
        let want = format!("waiting on seed lock {key} held by mv-locks/step 1");
        wait_for(&format!("{s} to wait on {key}"), T, || {
            let d = f.m.get(&format!("/v1/intents/{s}")).1;
            d["summary"]["status"] == "active" && d.to_string().contains(&want)
        });
        let show = intent_show(&f.m, s);
        assert!(show.contains(&want), "{show}");
    }
    // The token: in Mirage's own state, never in what the API, the CLI or the logs show.
    let token = token_in_mirage_db(&f, &id);
    let no_token = |what: &str, text: &str| {
        assert!(!text.contains(&token), "the token is in {what}: {text}");
    };
    let (_, d) = f.m.get(&format!("/v1/intents/{id}"));
    assert_eq!(
        d["plan"]["intent"]["steps"][1]["args"]["token"],
        "[redacted]"
    );
    no_token("GET /v1/intents/{id}", &d.to_string());
    no_token("mirage intent show", &intent_show(&f.m, &id));
    no_token("/v1/reports", &f.m.get("/v1/reports").1.to_string());
    no_token("the Mirage log", &f.m.proc.log_text());
    // Mirage killed while the move holds the locks and two intents wait for them.
    f.m.proc.sigkill();
    f.m = Mirage::start(&f.dir, f.session_port, "");
    f.m.wait_ghosts(2, T);
    // Still waiting after the restart (the transfer, slowed, has seconds to go; the report
    // order below is the check that holds whatever the timing).
    let move_now = f.m.get(&format!("/v1/intents/{id}")).1;
    if move_now["summary"]["status"] == "active" {
        for s in [&on_target, &on_source] {
            let d = f.m.get(&format!("/v1/intents/{s}")).1;
            assert_eq!(d["summary"]["status"], "active", "{d}");
            assert_eq!(d["plan"]["steps_done"], 0, "{s} ran inside the move: {d}");
        }
    }
    let d = f.m.wait_status(&id, "satisfied", T);
    assert_eq!(d["summary"]["steps_done"], 4, "{d}");
    // Only after the move's last step had begun did either of them run.
    let last_step = report_seq(&d, "step 4/4 dispatched");
    for s in [&on_target, &on_source] {
        let ds = f.m.wait_status(s, "satisfied", T);
        let ran = report_seq(&ds, "step 1/1 dispatched");
        assert!(
            ran > last_step,
            "{s} dispatched at report {ran}, inside the move (its step 4 at {last_step})"
        );
    }
    let (_, d) = f.m.get(&format!("/v1/intents/{id}"));
    no_token("GET /v1/intents/{id} after the move", &d.to_string());
    no_token("mirage intent show after the move", &intent_show(&f.m, &id));
    no_token("the restarted Mirage's log", &f.m.proc.log_text());
    for (g, who) in [(&f.ga, "ga"), (&f.gb, "gb")] {
        no_token(&format!("{who}'s log"), &g.proc.log_text());
    }
    assert_eq!(dbsize(dst_port), Some(KEYS as u64));
    assert_eq!(mismatches(dst_port, KEYS), 0);
    source_intact(&f);
    eprintln!(
        "lock set: two intents queued at {bytes} of {total} bytes stayed queued across a Mirage SIGKILL and ran after the move's last step (report {last_step}); token absent from API, CLI, reports and logs"
    );
}

#[test]
fn sigkill_of_the_source_ghost_mid_transfer_fails_cleanly_and_the_restarted_source_serves() {
    let mut f = fleet("move-kill-source");
    let tp = free_port();
    let proxy = Proxy::start_raw(&format!("127.0.0.1:{tp}"));
    proxy.delay(20);
    let dst_port = free_port();
    let id = f.m.submit(&plan_text(
        "mv-kill-source",
        "ga",
        "gb",
        dst_port,
        tp,
        &format!(", via = \"{}\"", proxy.addr),
    ));
    let (bytes, total) = mid_transfer(&f.m, "seed.redis/move.mv-kill-source-0");
    f.ga.proc.sigkill();
    let d = f.m.wait_status(&id, "failed", T);
    let failure = d["summary"]["last_summary"].to_string();
    assert!(
        failure.contains("step 3/4 on gb") && failure.contains("target removed"),
        "{d}"
    );
    // Never marked good: no target left, the locks free again.
    target_removed(&f, dst_port);
    assert!(!f.dir.path("gb/redis/cache/MOVE.verified").exists());
    // The restarted source Ghost serves every key; the dead offer's snapshot is gone.
    f.ga = Ghost::start(&f.dir, "ga", &f.m.session, SEEDS);
    f.m.wait_ghosts(2, T);
    wait_for("ga's cache instance running", T, || {
        f.m.get("/v1/ghosts/ga").1["observed"]["seed.redis/cache"]["state"]["state"] == "running"
    });
    source_intact(&f);
    let moves: Vec<_> = std::fs::read_dir(f.dir.path("ga/redis/.moves"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(moves.is_empty(), "stale offer files: {moves:?}");
    eprintln!("source Ghost SIGKILLed at {bytes} of {total} bytes: intent failed ({failure}); target removed; restarted source serves all {KEYS} keys");
}

/// 1000 pseudorandom hex bytes per key (LZF cannot shrink them: the RDB is the data's size).
fn big_value(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(1000);
    while s.len() < 1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(1000);
    s
}

/// BENCHMARKS.md (issue 14): storage.move throughput for a MOVE_BENCH_MB (default 1024) MiB
/// dataset vs `redis-cli --rdb` + a copy of the same data, as a ratio in one run. Release:
/// `cargo test --release -p e2e --test storage_move -- --ignored --nocapture bench`
#[test]
#[ignore]
fn bench_move_throughput_vs_redis_cli_rdb_and_copy() {
    redis_installed();
    let mb: usize = std::env::var("MOVE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let n = mb * 1024 * 1024 / 1000;
    let f = fleet_with("move-bench", 0);
    let t0 = Instant::now();
    {
        let s = conn(f.src_port);
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        for start in (0..n).step_by(1000) {
            let end = (start + 1000).min(n);
            let mut batch = Vec::new();
            for i in start..end {
                batch.extend(resp(&["SET", &key(i), &big_value(i)]));
            }
            w.write_all(&batch).unwrap();
            for _ in start..end {
                assert_eq!(line(&mut r), "+OK");
            }
        }
    }
    eprintln!(
        "filled {n} keys of 1000 bytes in {} ms",
        t0.elapsed().as_millis()
    );
    // The anchor: a plain full-sync dump over the network, then a copy to the target's disk.
    let s = conn(f.src_port);
    let mut w = s.try_clone().unwrap();
    w.write_all(&resp(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]))
        .unwrap();
    assert_eq!(line(&mut BufReader::new(s)), "+OK");
    let anchor = f.dir.path("anchor.rdb");
    let t0 = Instant::now();
    let st = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &f.src_port.to_string(),
            "--rdb",
            anchor.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let t_rdb = t0.elapsed();
    let t1 = Instant::now();
    let copy = f.dir.path("gb-anchor-copy.rdb");
    std::fs::copy(&anchor, &copy).unwrap();
    std::fs::File::open(&copy).unwrap().sync_all().unwrap();
    let t_copy = t1.elapsed();
    let size = std::fs::metadata(&anchor).unwrap().len();
    let _ = std::fs::remove_file(&anchor);
    let _ = std::fs::remove_file(&copy);
    let anchor_mb_s = size as f64 / 1e6 / (t_rdb + t_copy).as_secs_f64();

    let (dst_port, tp) = (free_port(), free_port());
    let t0 = Instant::now();
    let id = f
        .m
        .submit(&plan_text("mv-bench", "ga", "gb", dst_port, tp, "").replace("\"20s\"", "\"20m\""));
    let d = f.m.wait_status(&id, "satisfied", Duration::from_secs(1200));
    let t_move = t0.elapsed();
    let move_mb_s = size as f64 / 1e6 / t_move.as_secs_f64();
    let restored = d
        .to_string()
        .split("restored cache")
        .nth(1)
        .and_then(|s| s.split("keys verified").next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(dbsize(dst_port), Some(n as u64));
    // A sample of the values (every 97th key) is equal on the target.
    let s = conn(dst_port);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in (0..n).step_by(97) {
        w.write_all(&resp(&["GET", &key(i)])).unwrap();
        let h = line(&mut r);
        assert_eq!(h, "$1000", "key {i}");
        let mut v = vec![0u8; 1002];
        r.read_exact(&mut v).unwrap();
        assert_eq!(&v[..1000], big_value(i).as_bytes(), "key {i}");
    }
    eprintln!(
        "BENCH storage.move {size} bytes ({n} keys): move {:.0} ms = {move_mb_s:.1} MB/s end to end \
         (snapshot + sha256 + transfer + load + verify); anchor redis-cli --rdb {} ms + copy {} ms = \
         {anchor_mb_s:.1} MB/s; ratio move/anchor = {:.2}; restore:{restored}",
        t_move.as_secs_f64() * 1000.0,
        t_rdb.as_millis(),
        t_copy.as_millis(),
        move_mb_s / anchor_mb_s
    );
}
