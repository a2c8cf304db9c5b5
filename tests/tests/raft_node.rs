//! Issue 12: the `raft-node` seed on three real Ghosts under a real Mirage. The cluster is
//! formed by config/plans/raft-cluster.toml (satisfied only with 3 voters and a leader); a put
//! through one member is read through another; SIGKILL of the leader's Ghost gives a new
//! leader that Mirage observes within 5 s; writes continue; the killed Ghost, restarted,
//! catches up to the leader's applied index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(40);
const SEEDS: &str = "seeds = [\"seed.flow\", \"raft-node\"]";

fn exec(g: &Ghost, op: &str, args: Value) -> Value {
    g.admin(json!({"action": "execute", "command": {
        "seed_selector": "raft-node", "operation": op, "args": args}}))
}

fn ok(r: &Value) -> bool {
    r["data"]["event"]["Outcome"] == "success"
}

fn put(g: &Ghost, k: &str, v: &str) -> Value {
    exec(g, "put", json!({"key": k, "value": v}))
}

fn get(g: &Ghost, k: &str) -> String {
    let r = exec(g, "get", json!({"key": k}));
    assert!(ok(&r), "get {k}: {r}");
    seed_text(&r, "Stdout").trim_end().to_owned()
}

/// Mirage's latest observation of one Ghost's member.
fn observed(m: &Mirage, ghost: &str) -> Value {
    m.get(&format!("/v1/ghosts/{ghost}")).1["observed"]["raft-node"]["state"].clone()
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

#[test]
fn a_cluster_formed_by_an_intent_fails_over_and_a_restarted_member_catches_up() {
    let started = Instant::now();
    let dir = TempDir::new("raft-node");
    let m = Mirage::start(&dir, 0, "");
    let ids = ["g1", "g2", "g3"];
    let mut gs: Vec<Option<Ghost>> = ids
        .iter()
        .map(|id| Some(Ghost::start(&dir, id, &m.session, SEEDS)))
        .collect();
    m.wait_ghosts(3, T);

    let port = free_port();
    let plan = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/plans/raft-cluster.toml"
    ))
    .unwrap()
    .replace("7101", &port.to_string());
    let id = m.submit(&plan);
    let detail = m.wait_status(&id, "satisfied", Duration::from_secs(60));
    assert_eq!(detail["summary"]["steps_done"], 5, "{detail}");
    let formed = started.elapsed();

    // Every member is a voter of the same 3-member cluster, and Mirage sees a leader.
    let mut leader_ghost = None;
    wait_for("3 voters and one leader observed by Mirage", T, || {
        let obs: Vec<Value> = ids.iter().map(|g| observed(&m, g)).collect();
        let all = obs
            .iter()
            .all(|o| o["voters"] == "3" && o["voter"] == "true");
        leader_ghost = obs.iter().position(|o| o["role"] == "leader");
        all && leader_ghost.is_some()
    });
    let l = leader_ghost.unwrap();
    let old = observed(&m, ids[l]);
    let old_term = num(&old, "term");
    let old_leader = old["node_id"].as_str().unwrap().to_owned();

    // `mirage services` lists the three members with their role and raft:// URI.
    let out = std::process::Command::new(bin("mirage"))
        .arg("services")
        .env("MIRAGE_API", format!("http://{}", m.api))
        .output()
        .unwrap();
    let services = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<&str> = services
        .lines()
        .filter(|l| l.starts_with("raft-node"))
        .collect();
    assert_eq!(rows.len(), 3, "{services}");
    assert!(
        rows.iter().all(|r| r.contains("raft://127.0.0.1:")),
        "{services}"
    );
    assert!(
        rows.iter().filter(|r| r.contains("leader")).count() == 1
            && rows.iter().filter(|r| r.contains("follower")).count() == 2,
        "{services}"
    );
    assert!(services.contains(&format!("raft://127.0.0.1:{port}")));

    // A put through a follower, a read through another member.
    let (a, b) = ((l + 1) % 3, (l + 2) % 3);
    let r = put(gs[a].as_ref().unwrap(), "color", "blue");
    assert!(ok(&r), "{r}");
    assert_eq!(get(gs[b].as_ref().unwrap(), "color"), "blue");
    assert_eq!(get(gs[l].as_ref().unwrap(), "color"), "blue");
    // Bad input is refused, naming the argument.
    let bad = exec(
        gs[a].as_ref().unwrap(),
        "put",
        json!({"key": "", "value": "x"}),
    );
    assert!(!ok(&bad));
    let bad = exec(
        gs[a].as_ref().unwrap(),
        "put",
        json!({"key": "k", "value": "v".repeat(16 * 1024 + 1)}),
    );
    assert!(seed_text(&bad, "Stderr").contains("value"), "{bad}");

    // SIGKILL of the leader's Ghost: Mirage observes a new leader.
    gs[l].as_mut().unwrap().proc.sigkill();
    let t0 = Instant::now();
    let mut new_leader = String::new();
    wait_for("a new leader observed by Mirage", T, || {
        [a, b].iter().any(|i| {
            let o = observed(&m, ids[*i]);
            let fresh = o["role"] == "leader" && num(&o, "term") > old_term;
            if fresh {
                new_leader = o["node_id"].as_str().unwrap_or("").to_owned();
            }
            fresh
        })
    });
    let failover = t0.elapsed();
    assert_ne!(new_leader, old_leader);
    assert!(
        failover < Duration::from_secs(5),
        "new leader observed after {failover:?}"
    );

    // Writes continue on the two survivors.
    let mut last = String::new();
    for i in 0..20 {
        last = format!("v{i}");
        let r = put(gs[a].as_ref().unwrap(), "counter", &last);
        assert!(ok(&r), "put {i}: {r}");
    }
    assert_eq!(get(gs[a].as_ref().unwrap(), "counter"), last);
    let r = exec(gs[b].as_ref().unwrap(), "delete", json!({"key": "color"}));
    assert!(ok(&r), "{r}");
    let gone = exec(gs[a].as_ref().unwrap(), "get", json!({"key": "color"}));
    assert!(seed_text(&gone, "Stderr").contains("no key"), "{gone}");

    // The killed Ghost restarts with its data dir; its member catches up to the leader.
    drop(gs[l].take());
    let t1 = Instant::now();
    gs[l] = Some(Ghost::start(&dir, ids[l], &m.session, SEEDS));
    let leader_ghost = [a, b]
        .into_iter()
        .find(|i| observed(&m, ids[*i])["role"] == "leader")
        .unwrap();
    let mut target = 0;
    wait_for("the restarted member to catch up", T, || {
        let lead = observed(&m, ids[leader_ghost]);
        target = num(&lead, "applied");
        let me = observed(&m, ids[l]);
        me["node_id"].as_str() == Some(old_leader.as_str())
            && me["role"] == "follower"
            && num(&me, "applied") >= target
            && target > 0
    });
    let caught_up = t1.elapsed();
    assert_eq!(get(gs[l].as_ref().unwrap(), "counter"), last);
    // Its own state machine holds the writes made while it was down (read locally from
    // its store file through the status the member reports).
    let st: Value = serde_json::from_str(
        seed_text(
            &exec(gs[l].as_ref().unwrap(), "status", json!({})),
            "Stdout",
        )
        .trim(),
    )
    .unwrap();
    assert!(num(&st, "applied") >= target, "{st}");

    eprintln!(
        "raft-node: cluster formed by the intent in {} ms; new leader observed by Mirage {} ms after SIGKILL of the leader's Ghost; restarted member caught up to applied index {target} in {} ms; total {} ms",
        formed.as_millis(),
        failover.as_millis(),
        caught_up.as_millis(),
        started.elapsed().as_millis()
    );
}

/// BENCHMARKS.md: put throughput and latency on a 3-member loopback cluster, through the
/// Ghosts' admin boundary (what a user's `ghost exec`/Mirage command pays), `RAFT_BENCH_PUTS`
/// puts (default 2000) from `RAFT_BENCH_CLIENTS` clients (default 8) spread over the members;
/// then the failover time after SIGKILL of the leader's Ghost (`RAFT_BENCH_KILLS` times, default
/// 3), seen by polling `status`, each kill once the member restarted after the previous one
/// has caught up (`RAFT_BENCH_NO_CATCHUP=1`: at once).
#[test]
#[ignore]
fn bench_raft_puts_and_failover() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (puts, clients) = (env("RAFT_BENCH_PUTS", 2000), env("RAFT_BENCH_CLIENTS", 8));
    let kills = env("RAFT_BENCH_KILLS", 3);
    let dir = TempDir::new("raft-bench");
    let m = Mirage::start(&dir, 0, "");
    let ids = ["g1", "g2", "g3"];
    let mut gs: Vec<Option<Ghost>> = ids
        .iter()
        .map(|id| Some(Ghost::start(&dir, id, &m.session, SEEDS)))
        .collect();
    let port = free_port();
    let g = |i: usize| gs[i].as_ref().unwrap();
    assert!(ok(&exec(g(0), "start", json!({"port": port.to_string()}))));
    assert!(ok(&exec(g(1), "start", json!({}))));
    assert!(ok(&exec(g(2), "start", json!({}))));
    assert!(ok(&exec(g(0), "init", json!({}))));
    let via = format!("raft://127.0.0.1:{port}");
    assert!(ok(&exec(g(1), "join", json!({"via": via}))));
    assert!(ok(&exec(g(2), "join", json!({"via": via}))));
    let r = exec(g(0), "await", json!({"voters": "3", "timeout_ms": "20000"}));
    assert!(ok(&r), "{r}");
    let admins: Vec<String> = (0..3).map(|i| g(i).admin.clone()).collect();
    let token = g(0).token.clone();
    let t0 = Instant::now();
    let lat: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let (admins, token) = (&admins, &token);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for n in 0..puts / clients {
                        let admin = &admins[(c + n) % 3];
                        let req = json!({"action": "execute", "token": token, "command": {
                            "seed_selector": "raft-node", "operation": "put",
                            "args": {"key": format!("k{c}-{}", n % 50), "value": format!("v{n}")}}});
                        let t = Instant::now();
                        let st = std::net::TcpStream::connect(admin).unwrap();
                        use std::io::{BufRead, Write};
                        let mut w = st.try_clone().unwrap();
                        w.write_all(format!("{req}\n").as_bytes()).unwrap();
                        let mut line = String::new();
                        std::io::BufReader::new(st).read_line(&mut line).unwrap();
                        assert!(line.contains("\"success\""), "{line}");
                        out.push(t.elapsed());
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed();
    let mut all: Vec<Duration> = lat.into_iter().flatten().collect();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    eprintln!(
        "raft-node bench: {} puts from {clients} clients in {} ms = {:.0} puts/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        wall.as_millis(),
        all.len() as f64 / wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all[all.len() - 1].as_secs_f64() * 1e3
    );
    // Failover: SIGKILL the leader's Ghost, time until a survivor reports itself leader.
    let status = |g: &Ghost| -> Value {
        serde_json::from_str(seed_text(&exec(g, "status", json!({})), "Stdout").trim())
            .unwrap_or(Value::Null)
    };
    let role = |g: &Ghost| -> (String, u64) {
        let st = status(g);
        (
            st["role"].as_str().unwrap_or("").to_owned(),
            num(&st, "term"),
        )
    };
    let mut fails = Vec::new();
    for _ in 0..kills {
        let l = (0..3)
            .find(|i| gs[*i].as_ref().is_some_and(|g| role(g).0 == "leader"))
            .unwrap();
        let term = role(gs[l].as_ref().unwrap()).1;
        gs[l].as_mut().unwrap().proc.sigkill();
        let t = Instant::now();
        wait_for("a new leader", T, || {
            (0..3).filter(|i| *i != l).any(|i| {
                let (r, tm) = role(gs[i].as_ref().unwrap());
                r == "leader" && tm > term
            })
        });
        fails.push(t.elapsed());
        drop(gs[l].take());
        gs[l] = Some(Ghost::start(&dir, ids[l], &m.session, SEEDS));
        let back = gs[l].as_ref().unwrap();
        wait_for("the restarted member back as follower", T, || {
            role(back).0 == "follower"
        });
        // The next kill is a single failure only once the restarted member holds the
        // leader's log: killed earlier, two of three members are behind, and openraft
        // delays the stale member's next election by 2 x election_timeout_max after its
        // vote is refused (the 5–8.5 s failovers). RAFT_BENCH_NO_CATCHUP=1 measures that.
        if std::env::var("RAFT_BENCH_NO_CATCHUP").is_err() {
            let leader = (0..3).find(|i| role(gs[*i].as_ref().unwrap()).0 == "leader");
            if let Some(li) = leader {
                let lead = status(gs[li].as_ref().unwrap());
                let want = (num(&lead, "last_log"), num(&lead, "applied"));
                wait_for("the restarted member to catch up", T, || {
                    let me = status(back);
                    num(&me, "last_log") >= want.0 && num(&me, "applied") >= want.1
                });
            }
        }
    }
    let mut sorted = fails.clone();
    sorted.sort();
    eprintln!(
        "raft-node failover (SIGKILL of the leader's Ghost → a survivor is leader): {:?} ms; median {} ms, max {} ms, over 5 s: {} of {}",
        fails.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        sorted[sorted.len() / 2].as_millis(),
        sorted[sorted.len() - 1].as_millis(),
        fails.iter().filter(|d| **d >= Duration::from_secs(5)).count(),
        fails.len()
    );
    // RAFT_BENCH_LOGS=DIR keeps the Ghosts' logs (openraft's election lines) for a look.
    if let Ok(to) = std::env::var("RAFT_BENCH_LOGS") {
        let _ = std::process::Command::new("cp")
            .args(["-r", dir.0.to_str().unwrap(), &to])
            .status();
    }
}
