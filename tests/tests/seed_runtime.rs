//! Issue 11 item 1: seeds are supervised actors. A seed that panics (in a plain operation or
//! inside an awaited one) fails that command, is rebuilt after a backoff, and the Ghost keeps
//! serving the other seeds meanwhile; async operations of one seed run concurrently; SIGTERM
//! stops the Ghost promptly even with an operation pending. Real `ghost serve` process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

fn headless(dir: &TempDir, id: &str, extra: &str) -> Ghost {
    let cfg = dir.path(&format!("{id}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "ghost_id = \"{id}\"\ndata_dir = \"{}\"\n{extra}\n[mirage]\npolicy = \"headless\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n",
            dir.path(id).display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        &bin("ghost"),
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path(&format!("{id}.log")),
    );
    let admin = proc.field("admin");
    Ghost {
        proc,
        admin,
        token: ADMIN_TOKEN.into(),
    }
}

/// One admin request on its own connection (so threads can run several at once).
fn admin_at(addr: &str, mut req: Value) -> Value {
    use std::io::{BufRead, BufReader, Write};
    req["token"] = json!(ADMIN_TOKEN);
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    (&s).write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    let _ = BufReader::new(&s).read_line(&mut line);
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

fn exec_at(addr: &str, seed: &str, op: &str, args: Value) -> Value {
    admin_at(
        addr,
        json!({"action": "execute", "command": {
        "seed_selector": seed, "operation": op, "args": args}}),
    )
}

fn exec(g: &Ghost, seed: &str, op: &str, args: Value) -> Value {
    exec_at(&g.admin, seed, op, args)
}

fn outcome(r: &Value) -> &str {
    r["data"]["event"]["Outcome"].as_str().unwrap_or("?")
}

fn out_text(r: &Value, which: &str) -> String {
    seed_text(r, which).trim_end().to_owned()
}

#[test]
fn a_panicking_seed_is_restarted_and_the_other_seeds_keep_serving() {
    let dir = TempDir::new("seed-panic");
    let mut g = headless(&dir, "g1", "seeds = [\"seed.kv\", \"seed.chaos\"]");
    let put = exec(&g, "seed.kv", "put", json!({"key": "a", "value": "1"}));
    assert_eq!(outcome(&put), "success", "{put}");
    for _ in 0..3 {
        assert_eq!(
            outcome(&exec(&g, "seed.chaos", "count", json!({}))),
            "success"
        );
    }
    assert_eq!(
        out_text(&exec(&g, "seed.chaos", "count", json!({})), "Stdout"),
        "3"
    );

    for op in ["panic", "panic_async"] {
        let t0 = Instant::now();
        let r = exec(&g, "seed.chaos", op, json!({}));
        assert_eq!(outcome(&r), "error", "{r}");
        assert!(
            out_text(&r, "Stderr").contains("panicked"),
            "{op}: {}",
            out_text(&r, "Stderr")
        );
        // The Ghost is alive and the other seed serves at once, its state intact.
        assert!(g.proc.child.try_wait().unwrap().is_none(), "ghost exited");
        assert_eq!(g.kv_get("a").as_deref(), Some("1"));
        // The panicking seed comes back as a fresh instance (its counter starts again).
        let c = exec(&g, "seed.chaos", "count", json!({}));
        assert_eq!(outcome(&c), "success", "{c}");
        assert_eq!(out_text(&c, "Stdout"), "0", "{op}: not a fresh instance");
        eprintln!(
            "{op}: error event, kv served, fresh seed.chaos after {} ms",
            t0.elapsed().as_millis()
        );
    }
    let log = g.proc.log_text();
    assert!(log.contains("seed failed; restarting it"), "{log}");
    assert!(log.contains("seed restarts after a backoff"), "{log}");
    assert_eq!(g.proc.sigterm(), Some(0));
}

#[test]
fn async_operations_of_one_seed_run_concurrently_and_sigterm_is_bounded() {
    let dir = TempDir::new("seed-async");
    let mut g = headless(&dir, "g1", "seeds = [\"seed.flow\", \"seed.chaos\"]");
    let admin = g.admin.clone();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let admin = admin.clone();
            std::thread::spawn(move || {
                let r = exec_at(&admin, "seed.chaos", "sleep", json!({"ms": "1500"}));
                outcome(&r).to_owned()
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), "success");
    }
    let took = t0.elapsed();
    // One after another would be 6 s.
    assert!(
        took < Duration::from_millis(4500),
        "4 x 1500 ms sleeps took {took:?}"
    );
    eprintln!("4 concurrent 1500 ms awaits took {} ms", took.as_millis());
    // A blocking seed (seed.flow) still runs in order on its own thread.
    assert_eq!(
        outcome(&exec(&g, "seed.flow", "sleep", json!({"ms": "10"}))),
        "success"
    );

    // An operation is pending for 30 s when SIGTERM comes: the Ghost still stops promptly.
    let pending =
        std::thread::spawn(move || exec_at(&admin, "seed.chaos", "sleep", json!({"ms": "30000"})));
    std::thread::sleep(Duration::from_millis(300));
    let t1 = Instant::now();
    assert_eq!(g.proc.sigterm(), Some(0));
    let stop = t1.elapsed();
    assert!(stop < Duration::from_secs(7), "stop took {stop:?}");
    eprintln!(
        "SIGTERM with a pending 30 s operation: exited in {} ms",
        stop.as_millis()
    );
    let _ = pending.join();
}

const T: Duration = Duration::from_secs(40);

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// Issue 11 item 2: a seed's observation travels as an event through the Ghost's durable
/// outbox; Mirage keeps the latest per ghost/seed, shows it in /v1/ghosts/{id} and
/// /v1/services, and never takes it for a step's event.
#[test]
fn observations_reach_mirage_and_are_not_taken_for_step_events() {
    let dir = TempDir::new("seed-observe");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(
        &dir,
        "g1",
        &m.session,
        "seeds = [\"seed.flow\", \"seed.chaos\"]",
    );
    m.wait_ghosts(1, T);
    let id = m.submit(
        r#"
intent_id = "obs"
actor = "test"
target_scope = "ghost:g1"
objective = "observe"
[[step]]
seed = "seed.chaos"
operation = "observe"
args = { state = "running", uri = "redis://127.0.0.1:6390/0" }
[[step]]
seed = "seed.flow"
operation = "sleep"
args = { ms = "300" }
"#,
    );
    let detail = m.wait_status(&id, "satisfied", T);
    assert_eq!(detail["summary"]["steps_done"], 2, "{detail}");
    let took = wait_for("the observation in /v1/ghosts/g1", T, || {
        m.get("/v1/ghosts/g1").1["observed"]["seed.chaos"]["state"]["state"] == "running"
    });
    let (_, services) = m.get("/v1/services");
    let chaos = &services["seed.chaos"][0];
    assert_eq!(
        chaos["uris"],
        json!(["redis://127.0.0.1:6390/0"]),
        "{services}"
    );
    assert_eq!(chaos["observed"]["seed.chaos"]["state"]["state"], "running");
    // Each step reported once; the observation added no report of its own.
    let reports = m.reports(&id);
    assert!(
        reports.iter().all(|r| !r.to_string().contains("observe.")),
        "{reports:?}"
    );

    // A newer observation replaces the older one.
    let t0 = Instant::now();
    let r = exec(
        &g,
        "seed.chaos",
        "observe",
        json!({"state": "exited", "pid": "42"}),
    );
    assert_eq!(outcome(&r), "success", "{r}");
    wait_for("the newer observation", T, || {
        m.get("/v1/ghosts/g1").1["observed"]["seed.chaos"]["state"]["state"] == "exited"
    });
    let latency = t0.elapsed();
    // Bad input is refused at the Ghost, naming the key.
    let bad = exec(&g, "seed.chaos", "observe", json!({"bad key": "x"}));
    assert_eq!(outcome(&bad), "error", "{bad}");
    assert!(out_text(&bad, "Stderr").contains("bad key"), "{bad}");
    eprintln!(
        "observation visible {} ms after the intent was satisfied; a new one {} ms after it was made",
        took.as_millis(),
        latency.as_millis()
    );
}
