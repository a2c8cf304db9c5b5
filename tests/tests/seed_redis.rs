//! Issue 11 item 4: `seed.redis` runs a real redis-server per instance on seed.service's
//! supervision. config/plans/redis.toml starts one through an intent; its URI is listed by
//! /v1/services; a SIGKILL of redis-server is observed within 1 s and the server restarted
//! per policy; PING/INFO answer over TCP; the Ghost's SIGTERM leaves no redis-server behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(40);

fn exec(g: &Ghost, op: &str, args: Value) -> Value {
    g.admin(json!({"action": "execute", "command": {
        "seed_selector": "seed.redis", "operation": op, "args": args}}))
}

fn outcome(r: &Value) -> &str {
    r["data"]["event"]["Outcome"].as_str().unwrap_or("?")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

#[test]
fn redis_started_by_an_intent_is_listed_observed_restarted_and_stopped() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server is not installed: run scripts/deps.sh --test");
    }
    let dir = TempDir::new("seed-redis");
    let m = Mirage::start(&dir, 0, "");
    let mut g = Ghost::start(
        &dir,
        "g1",
        &m.session,
        "seeds = [\"seed.flow\", \"seed.redis\"]",
    );
    m.wait_ghosts(1, T);
    let port = free_port();
    let plan = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/plans/redis.toml"
    ))
    .unwrap()
    .replace("6390", &port.to_string());
    let id = m.submit(&plan);
    let detail = m.wait_status(&id, "satisfied", T);
    assert_eq!(detail["summary"]["steps_done"], 2, "{detail}");

    let uri = format!("redis://127.0.0.1:{port}/0");
    wait_for("the URI in /v1/services", T, || {
        m.get("/v1/services").1["seed.redis"][0]["uris"] == json!([uri])
    });
    let st: Value = serde_json::from_str(
        seed_text(&exec(&g, "status", json!({"name": "cache"})), "Stdout").trim(),
    )
    .unwrap();
    let p1 = st["pid"].as_u64().unwrap() as u32;
    assert!(alive(p1));
    // Its data lives under the Ghost's data dir.
    wait_for(
        "redis's append-only data in the Ghost's data dir",
        T,
        || {
            dir.path("g1/redis/cache").read_dir().is_ok_and(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("appendonly"))
                })
            })
        },
    );
    // The CLI shows the same: `mirage services` lists the URI, `mirage ghost show` the state.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin("mirage"))
            .args(args)
            .env("MIRAGE_API", format!("http://{}", m.api))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(cli(&["services"]).contains(&uri), "{}", cli(&["services"]));
    // A step can target the seed by its URI (issue 11 item 3): placed on the Ghost whose
    // instance advertises it; a URI nobody advertises is never placed.
    let by_uri = |id: &str, u: &str, timeout: &str| {
        format!(
            "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n\
             [[step]]\nseed=\"seed.redis\"\noperation=\"health\"\nargs={{name=\"cache\"}}\n\
             uri=\"{u}\"\ntimeout=\"{timeout}\"\non=\"one\"\n"
        )
    };
    let id = m.submit(&by_uri("by-uri", &uri, "20s"));
    let d = m.wait_status(&id, "satisfied", T);
    assert!(d.to_string().contains("PONG"), "the health output: {d}");
    let id = m.submit(&by_uri("by-wrong-uri", "redis://127.0.0.1:1/0", "2s"));
    let d = m.wait_status(&id, "failed", T);
    assert!(
        d.to_string().contains("advertises redis://127.0.0.1:1/0"),
        "{d}"
    );
    let show = cli(&["ghost", "show", "g1"]);
    assert!(
        show.contains("seed.redis/cache") && show.contains("state=running"),
        "{show}"
    );
    let info = exec(&g, "info", json!({"name": "cache", "section": "server"}));
    assert!(
        seed_text(&info, "Stdout").contains(&format!("tcp_port:{port}")),
        "{info}"
    );

    let _ = std::process::Command::new("kill")
        .args(["-KILL", &p1.to_string()])
        .status();
    let t0 = Instant::now();
    let obs =
        |m: &Mirage| m.get("/v1/ghosts/g1").1["observed"]["seed.redis/cache"]["state"].clone();
    wait_for("the exit observation", T, || {
        obs(&m)["last_exit"] == "signal 9"
    });
    let seen = t0.elapsed();
    assert!(
        seen < Duration::from_secs(1),
        "exit observed after {seen:?}"
    );
    wait_for("the restart", T, || {
        let o = obs(&m);
        o["state"] == "running" && o["restarts"] == "1"
    });
    let restarted = t0.elapsed();
    let h = exec(&g, "health", json!({"name": "cache"}));
    assert_eq!(seed_text(&h, "Stdout").trim(), "PONG", "{h}");
    let st: Value = serde_json::from_str(
        seed_text(&exec(&g, "status", json!({"name": "cache"})), "Stdout").trim(),
    )
    .unwrap();
    let p2 = st["pid"].as_u64().unwrap() as u32;
    assert_ne!(p1, p2);

    // Bad input names the argument; nothing but redis-server's fixed argv runs.
    let bad = exec(&g, "start", json!({"name": "x", "port": "80"}));
    assert!(seed_text(&bad, "Stderr").contains("port"), "{bad}");
    let bad = exec(&g, "start", json!({"name": "x", "argv": "sh"}));
    assert_eq!(outcome(&bad), "error");

    assert_eq!(g.proc.sigterm(), Some(0));
    wait_for(
        "no redis-server after the Ghost's SIGTERM",
        Duration::from_secs(5),
        || !alive(p2),
    );
    eprintln!(
        "redis {uri}: SIGKILL observed by Mirage in {} ms, PONG again after restart at {} ms; no orphan after SIGTERM",
        seen.as_millis(),
        restarted.as_millis()
    );
}

/// Issue 11 items 4–5: `mirage up --ghosts 3` runs ghost.local, ghost.2 and ghost.3 (own data
/// dirs and admin ports); config/plans/redis.toml runs to satisfied on the local Ghost; Ctrl-C
/// (SIGTERM) stops Mirage, its Ghosts and their redis-server.
#[test]
fn mirage_up_with_three_ghosts_runs_the_redis_plan_to_satisfied() {
    let dir = TempDir::new("up-redis");
    let (mut up, ports) = spawn_up(&dir, 3);
    let (api, admin) = (ports.api, ports.admin);
    for id in ["ghost.local", "ghost.2", "ghost.3"] {
        wait_for(&format!("{id} to connect"), T, || {
            e2e::http(&api, "GET", &format!("/v1/ghosts/{id}"), None).1["connected"] == true
        });
    }
    assert!(dir.path("data/ghost.2").is_dir() && dir.path("data/ghost.3").is_dir());
    let port = free_port();
    let plan = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/plans/redis.toml"
    ))
    .unwrap()
    .replace("6390", &port.to_string());
    let (st, v) = e2e::http(&api, "POST", "/v1/intents", Some(&plan));
    assert_eq!(st, 201, "{v}");
    let id = v["intent_id"].as_str().unwrap().to_owned();
    let mut detail = Value::Null;
    wait_for("the redis plan to be satisfied", T, || {
        detail = e2e::http(&api, "GET", &format!("/v1/intents/{id}"), None).1;
        assert_ne!(detail["summary"]["status"], "failed", "{detail}");
        detail["summary"]["status"] == "satisfied"
    });
    let mut pid = 0;
    wait_for("redis observed on ghost.local", T, || {
        let g = e2e::http(&api, "GET", "/v1/ghosts/ghost.local", None).1;
        let o = &g["observed"]["seed.redis/cache"]["state"];
        pid = o["pid"].as_str().and_then(|p| p.parse().ok()).unwrap_or(0);
        o["state"] == "running" && pid > 0
    });
    assert!(alive(pid));
    assert_eq!(up.sigterm(), Some(0));
    wait_for(
        "redis-server gone after mirage up stopped",
        Duration::from_secs(10),
        || !alive(pid),
    );
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{admin}")).is_err(),
        "local ghost still running"
    );
    eprintln!("mirage up --ghosts 3: 3 Ghosts connected, redis plan satisfied, no process left after SIGTERM");
}
