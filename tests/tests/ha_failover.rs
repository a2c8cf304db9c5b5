//! Issue 15, second slice: three `mirage serve` processes on a real 3-member etcd
//! (`[store] backend = "etcd"`), three `ghost serve` processes listing all three Mirages.
//! The leader is SIGKILLed in the middle of 20-step plans (a sleep and a blocking put, ten
//! times, on each Ghost); another Mirage leads, the intents end satisfied, every step ran
//! once, lock tokens only rise and no two Mirages lead at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::etcd::{available, EtcdCluster};
use e2e::*;

const TTL_MS: u64 = 3000;

/// One cluster at a time: three etcd members and three Mirages per test on a 2-core
/// machine is already a lot, and the failover bounds are timing.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn mirage_toml(i: usize, endpoints: &[String], prefix: &str) -> String {
    mirage_toml_with(i, endpoints, prefix, TTL_MS, 500)
}

fn mirage_toml_with(
    i: usize,
    endpoints: &[String],
    prefix: &str,
    ttl_ms: u64,
    timeout_ms: u64,
) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "mirage_id = \"mirage-{i}\"\n[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [{}]\nprefix = \"{prefix}\"\nlease_ttl_ms = {ttl_ms}\ntimeout_ms = {timeout_ms}\n",
        eps.join(", ")
    )
}

/// The role `/v1/overview` names; "" when the API does not answer within 2 s (a port
/// that refuses must not end the test: that is what it checks for).
fn role(m: &Mirage) -> String {
    use std::io::{Read, Write};
    let Ok(addr) = m.api.parse() else {
        return String::new();
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        eprintln!("mirage api {} refused a connection", m.api);
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        s,
        "GET /v1/overview HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let _ = s.take(1 << 20).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["role"].as_str().unwrap_or("").to_owned()
}

/// The one Mirage among `ms` (skipping `dead`) that says it leads; panics if two do.
fn leader(ms: &[Mirage], dead: &[usize], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let leading: Vec<usize> = (0..ms.len())
            .filter(|i| !dead.contains(i))
            .filter(|&i| role(&ms[i]) == "leader")
            .collect();
        assert!(leading.len() <= 1, "two Mirages lead at once: {leading:?}");
        if let [i] = leading[..] {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no leader within {within:?}; logs:\n{}",
            ms.iter()
                .enumerate()
                .filter(|(i, _)| !dead.contains(i))
                .map(|(_, m)| tail(&m.proc.log_text(), 15))
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn plan(id: &str, ghost: &str) -> String {
    let mut p = format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:{ghost}\"\nobjective=\"twenty\"\n"
    );
    for i in 0..10 {
        p.push_str("[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"300\"}\ntimeout=\"30s\"\n");
        p.push_str(&format!(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k{i}\",value=\"v{i}\"}}\nblocking=true\ntimeout=\"30s\"\n"
        ));
    }
    p
}

/// Tokens seen per lock key with their holder, in observation order, across leaders.
#[derive(Default)]
struct LockLog(HashMap<String, Vec<(u64, String, usize)>>);

impl LockLog {
    fn observe(&mut self, m: &Mirage, who: usize) {
        let (st, v) = m.get("/v1/locks");
        if st != 200 {
            return;
        }
        for l in v.as_array().into_iter().flatten() {
            let Some(h) = l.get("holder").filter(|h| !h.is_null()) else {
                continue;
            };
            let key = l["key"].as_str().unwrap_or("").to_owned();
            let token = h["token"].as_u64().unwrap_or(0);
            let owner = h["owner"].to_string();
            let seen = self.0.entry(key.clone()).or_default();
            if let Some((last, last_owner, _)) = seen.last() {
                assert!(
                    token >= *last,
                    "lock {key}: token {token} after {last}: fencing tokens went backwards"
                );
                assert!(
                    token != *last || owner == *last_owner,
                    "lock {key}: token {token} held by {owner} and {last_owner}: one lock held twice"
                );
            }
            seen.push((token, owner, who));
        }
    }
}

fn steps_done(m: &Mirage, id: &str) -> u64 {
    let (_, v) = m.get(&format!("/v1/intents/{id}"));
    v["summary"]["steps_done"].as_u64().unwrap_or(0)
}

/// Two Mirages on `cluster` (`toml(i, endpoints, prefix)` each), one Ghost listing both, and
/// intent `name` (the 20-step plan) submitted to the leader and 3 steps in.
struct MidPlan {
    ms: Vec<Mirage>,
    g: Ghost,
    first: usize,
    id: String,
    _dir: TempDir,
}

fn mid_plan(
    name: &str,
    cluster: &EtcdCluster,
    toml: impl Fn(usize, &[String], &str) -> String,
) -> MidPlan {
    let dir = TempDir::new(&format!("ha-{name}"));
    let prefix = format!("/mirage-{name}-{}/", std::process::id());
    let ms: Vec<Mirage> = (0..2)
        .map(|i| {
            let d = dir.path(&format!("m{i}"));
            std::fs::create_dir_all(&d).unwrap();
            Mirage::start(&d, 0, &toml(i, &cluster.endpoints(), &prefix))
        })
        .collect();
    let first = leader(&ms, &[], Duration::from_secs(30));
    let list = format!("{}\", \"{}", ms[0].session, ms[1].session);
    let g = Ghost::start(&dir, "g0", &list, "");
    ms[first].wait_ghosts(1, Duration::from_secs(30));
    let id = ms[first].submit(&plan(name, "g0"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while steps_done(&ms[first], &id) < 3 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    MidPlan {
        ms,
        g,
        first,
        id,
        _dir: dir,
    }
}

#[test]
fn leader_sigkill_mid_plan_another_leads_and_every_effect_happens_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let dir = TempDir::new("ha-failover");
    let prefix = format!("/mirage-{}/", std::process::id());
    let mut ms: Vec<Mirage> = (0..3)
        .map(|i| {
            let d = dir.path(&format!("m{i}"));
            std::fs::create_dir_all(&d).unwrap();
            Mirage::start(&d, 0, &mirage_toml(i, &cluster.endpoints(), &prefix))
        })
        .collect();
    let first = leader(&ms, &[], Duration::from_secs(30));
    eprintln!("mirage-{first} leads");

    // A follower names the leader and redirects what it cannot serve.
    let f = (first + 1) % 3;
    let (_, ov) = ms[f].get("/v1/overview");
    assert_eq!(ov["role"], "follower", "{ov}");
    assert_eq!(ov["leader"]["mirage_id"], format!("mirage-{first}"), "{ov}");
    let (st, v) = ms[f].post("/v1/intents", "intent_id=\"x\"");
    assert_eq!(st, 307, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("the leader is mirage-{first}")),
        "{v}"
    );

    let addrs: Vec<String> = ms.iter().map(|m| m.session.clone()).collect();
    let list = addrs.join("\", \"");
    let ghosts: Vec<Ghost> = (0..3)
        .map(|i| Ghost::start(&dir, &format!("g{i}"), &list, ""))
        .collect();
    ms[first].wait_ghosts(3, Duration::from_secs(30));
    let ids: Vec<String> = (0..3)
        .map(|i| ms[first].submit(&plan(&format!("long{i}"), &format!("g{i}"))))
        .collect();

    // Kill the leader once every plan is under way and none is near its end.
    let mut locks = LockLog::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        locks.observe(&ms[first], first);
        let done: Vec<u64> = ids.iter().map(|id| steps_done(&ms[first], id)).collect();
        if done.iter().all(|&d| d >= 3) {
            eprintln!("steps done before the kill: {done:?}");
            assert!(done.iter().all(|&d| d < 20), "{done:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "plans did not progress: {done:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ms[first].proc.sigkill();
    let killed = Instant::now();
    let next = leader(&ms, &[first], Duration::from_secs(30));
    let failover = killed.elapsed();
    eprintln!(
        "FAILOVER: mirage-{next} leads {:.2}s after SIGKILL of mirage-{first} (lease TTL {TTL_MS} ms)",
        failover.as_secs_f64()
    );
    assert!(
        failover < Duration::from_millis(TTL_MS) * 2,
        "another Mirage led only after {failover:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            locks.observe(&ms[next], next);
            let (_, v) = ms[next].get(&format!("/v1/intents/{id}"));
            let status = v["summary"]["status"].as_str().unwrap_or("");
            if status == "satisfied" {
                break;
            }
            assert!(
                !matches!(status, "failed" | "withdrawn"),
                "intent {id} {status}: {v}\nlog:\n{}",
                tail(&ms[next].proc.log_text(), 40)
            );
            assert!(
                Instant::now() < deadline,
                "intent {id} not satisfied: {v}\nlog:\n{}",
                tail(&ms[next].proc.log_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "all 3 intents satisfied {:.2}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    // Every step's effect once: 20 commands per Ghost, plus the 10 reads below.
    for (i, g) in ghosts.iter().enumerate() {
        for k in 0..10 {
            assert_eq!(
                g.kv_get(&format!("k{k}")).as_deref(),
                Some(format!("v{k}").as_str()),
                "g{i} k{k}"
            );
        }
        assert_eq!(g.executed(), 30, "g{i}: every step's effect exactly once");
        assert!(
            !g.proc.log_text().contains("stale lock_token"),
            "g{i} refused a stale token: {}",
            tail(&g.proc.log_text(), 20)
        );
    }
    // Tokens granted by the new leader are above the old leader's.
    let max_old = locks
        .0
        .values()
        .flatten()
        .filter(|(_, _, w)| *w == first)
        .map(|(t, _, _)| *t)
        .max()
        .unwrap_or(0);
    let min_new = locks
        .0
        .values()
        .flatten()
        .filter(|(_, _, w)| *w == next)
        .map(|(t, _, _)| *t)
        .min();
    eprintln!("lock tokens: old leader up to {max_old}, new leader from {min_new:?}");
    let held = ms[next].held_locks();
    assert!(held.is_empty(), "no lock left held: {held:?}");
    // The survivors: one leader, one follower naming it.
    let third = (0..3).find(|i| *i != first && *i != next).unwrap();
    let (_, ov) = ms[third].get("/v1/overview");
    assert_eq!(ov["leader"]["mirage_id"], format!("mirage-{next}"), "{ov}");
    // The CLI pointed at the follower follows its 307 to the leader.
    let out = std::process::Command::new(bin("mirage"))
        .args(["intent", "show", &ids[0]])
        .env("MIRAGE_API", format!("http://{}", ms[third].api))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("satisfied"), "{text}");
    // A planned stop: SIGTERM makes the leader resign (exit 0, not 75) and the last
    // Mirage leads at once instead of after a lease TTL.
    let t = Instant::now();
    assert_eq!(
        ms[next].proc.sigterm(),
        Some(0),
        "{}",
        tail(&ms[next].proc.log_text(), 20)
    );
    let last = leader(&ms, &[first, next], Duration::from_secs(30));
    eprintln!(
        "HANDOVER: mirage-{last} leads {:.2}s after SIGTERM of the leader",
        t.elapsed().as_secs_f64()
    );
    assert!(
        t.elapsed() < Duration::from_millis(TTL_MS),
        "{:?}",
        t.elapsed()
    );
    drop(ghosts);
    drop(ms);
    drop(cluster);
}

/// The exit code of a Mirage expected to end on its own within `within`.
fn exit_code(m: &mut Mirage, within: Duration, who: &str) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = m.proc.child.try_wait() {
            return st.code();
        }
        assert!(
            Instant::now() < deadline,
            "{who} is still running; log:\n{}",
            tail(&m.proc.log_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(m: &Mirage, sig: &str) {
    std::process::Command::new("kill")
        .args([sig, &m.proc.child.id().to_string()])
        .status()
        .unwrap();
}

/// A leader SIGSTOPped past its lease and then SIGCONTed commits nothing more: its store's
/// fence is gone (its own clock, and etcd's compare), it stops taking Ghost traffic, says
/// why and exits 75; the new leader finishes the intent with every effect once.
#[test]
fn a_paused_leader_is_deposed_and_exits_without_acting() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    // `_dir` first: bindings drop in reverse, so the processes go before their directory.
    let MidPlan {
        _dir,
        mut ms,
        g,
        first,
        id,
    } = mid_plan("paused", &cluster, mirage_toml);
    let other = 1 - first;
    signal(&ms[first], "-STOP");
    let stopped = Instant::now();
    let next = leader(&ms, &[first], Duration::from_secs(30));
    assert_eq!(next, other);
    eprintln!(
        "PAUSE: mirage-{next} leads {:.2}s after SIGSTOP of mirage-{first}",
        stopped.elapsed().as_secs_f64()
    );
    signal(&ms[first], "-CONT");
    // The old leader exits 75 on its own, naming why.
    let code = exit_code(
        &mut ms[first],
        Duration::from_secs(20),
        "the deposed leader",
    );
    let log = ms[first].proc.log_text();
    eprintln!("the deposed leader's last lines:\n{}", tail(&log, 6));
    assert_eq!(code, Some(75), "{}", tail(&log, 30));
    assert!(log.contains("leadership lost"), "{}", tail(&log, 30));
    ms[next].wait_status(&id, "satisfied", Duration::from_secs(120));
    assert_eq!(g.executed(), 20, "every step's effect exactly once");
    assert!(!g.proc.log_text().contains("stale lock_token"));
    drop(g);
    drop(ms);
    drop(cluster);
}

/// etcd loses quorum (two of three members SIGKILLed): the leader stops dispatching, says
/// why and exits 75; the follower does not lead while there is no quorum; once the members
/// are back it leads and the intent ends satisfied, every effect once.
#[test]
fn quorum_loss_stops_the_leader_and_a_mirage_leads_again_after() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    // `_dir` first: bindings drop in reverse, so the processes go before their directory.
    let MidPlan {
        _dir,
        mut ms,
        g,
        first,
        id,
    } = mid_plan("quorum", &cluster, mirage_toml);
    let other = 1 - first;
    cluster.sigkill(1);
    cluster.sigkill(2);
    let lost = Instant::now();
    let code = exit_code(
        &mut ms[first],
        Duration::from_secs(30),
        "the leader without quorum",
    );
    let log = ms[first].proc.log_text();
    eprintln!(
        "QUORUM: the leader exited {code:?} {:.2}s after quorum loss:\n{}",
        lost.elapsed().as_secs_f64(),
        tail(&log, 4)
    );
    assert_eq!(code, Some(75));
    assert!(log.contains("without quorum"), "{}", tail(&log, 30));
    // No quorum, no leader.
    std::thread::sleep(Duration::from_millis(TTL_MS));
    assert_ne!(role(&ms[other]), "leader");
    cluster.restart(1);
    cluster.restart(2);
    let back = Instant::now();
    let next = leader(&ms, &[first], Duration::from_secs(60));
    assert_eq!(next, other);
    eprintln!(
        "QUORUM: mirage-{next} leads {:.2}s after the members restarted",
        back.elapsed().as_secs_f64()
    );
    ms[next].wait_status(&id, "satisfied", Duration::from_secs(120));
    assert_eq!(g.executed(), 20, "every step's effect exactly once");
    drop(g);
    drop(ms);
    drop(cluster);
}

/// Repeated leader kills under load (`make soak-etcd`, `SOAK_KILLS`, `SEED`): each round
/// submits ten short intents (an append, or a blocking sleep under a seed lock then an
/// append) to the leader, SIGKILLs it at a seeded moment and starts it again on the same
/// ports (as a service manager would; it comes back as a follower). At the end every intent
/// is satisfied, every append happened exactly once, no lock is left held. Step timeouts are
/// 60 s: an intent may live through several back-to-back failovers (~3 s each), and an
/// append whose event is overdue fails as "effect unknown" by design (not retried).
#[test]
#[ignore]
fn soak_etcd_leader_kills() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let kills: usize = std::env::var("SOAK_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = Rng::new(seed);
    let cluster = EtcdCluster::start(3);
    let dir = TempDir::new("ha-soak");
    let prefix = format!("/mirage-soak-{}/", std::process::id());
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let start = |i: usize| {
        let d = dir.path(&format!("m{i}"));
        std::fs::create_dir_all(&d).unwrap();
        Mirage::start(
            &d,
            ports[i].0,
            &format!(
                "{}[api]\nlisten = \"127.0.0.1:{}\"\n",
                mirage_toml(i, &cluster.endpoints(), &prefix),
                ports[i].1
            ),
        )
    };
    let mut ms: Vec<Mirage> = (0..3).map(start).collect();
    let list = ms
        .iter()
        .map(|m| m.session.clone())
        .collect::<Vec<_>>()
        .join("\", \"");
    let ghosts: Vec<Ghost> = (0..3)
        .map(|i| Ghost::start(&dir, &format!("g{i}"), &list, ""))
        .collect();
    let mut lead = leader(&ms, &[], Duration::from_secs(30));
    ms[lead].wait_ghosts(3, Duration::from_secs(30));
    let mut ids: Vec<(String, usize)> = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..kills {
        for k in 0..10 {
            let id = format!("r{round}-{k}");
            let g = rng.range(0, 3) as usize;
            let append = format!("[[step]]\nseed=\"seed.fs\"\noperation=\"append\"\nargs={{path=\"soak/{id}.log\",content=\"{id}\\n\",hold_ms=\"{}\"}}\ntimeout=\"60s\"\n", rng.range(0, 400));
            let mut p = format!("intent_id=\"{id}\"\nactor=\"soak\"\ntarget_scope=\"ghost:g{g}\"\nobjective=\"soak\"\n");
            if rng.range(0, 2) == 0 {
                p.push_str(&format!("[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={{ms=\"{}\"}}\nblocking=true\ntimeout=\"60s\"\n", rng.range(50, 300)));
            }
            p.push_str(&append);
            ms[lead].submit(&p);
            ids.push((id, g));
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
        ms[lead].proc.sigkill();
        let killed = Instant::now();
        let next = leader(&ms, &[lead], Duration::from_secs(30));
        failovers.push(killed.elapsed());
        eprintln!(
            "round {round}: killed mirage-{lead}, mirage-{next} leads after {:.2}s",
            killed.elapsed().as_secs_f64()
        );
        ms[lead] = start(lead);
        lead = next;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    for (id, _) in &ids {
        loop {
            let (_, v) = ms[lead].get(&format!("/v1/intents/{id}"));
            let status = v["summary"]["status"].as_str().unwrap_or("").to_owned();
            if status == "satisfied" {
                break;
            }
            assert!(
                !matches!(status.as_str(), "failed" | "withdrawn"),
                "SEED={seed}: {id} {status}: {v}"
            );
            assert!(
                Instant::now() < deadline,
                "SEED={seed}: {id} not satisfied: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (id, g) in &ids {
        let n = std::fs::read_to_string(dir.path(&format!("g{g}/fs/soak/{id}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l == id)
            .count();
        assert_eq!(n, 1, "SEED={seed}: {id} appended {n} times on g{g}");
    }
    assert!(ms[lead].held_locks().is_empty());
    for (i, g) in ghosts.iter().enumerate() {
        assert!(!g.proc.log_text().contains("stale lock_token"), "g{i}");
    }
    failovers.sort();
    eprintln!(
        "SOAK-ETCD SEED={seed}: {} kills, {} intents satisfied, every append once; failover min {:.2}s median {:.2}s max {:.2}s",
        kills,
        ids.len(),
        failovers[0].as_secs_f64(),
        failovers[failovers.len() / 2].as_secs_f64(),
        failovers[failovers.len() - 1].as_secs_f64()
    );
}

/// One etcd member lost (the first endpoint every Mirage tries): the leader keeps leading
/// (no exit, no failover) and the intent ends satisfied, every effect once.
#[test]
fn one_etcd_member_lost_the_leader_keeps_leading() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    // The default lease (5 s) and a 2 s request timeout: the killed member may be etcd's
    // leader, and the survivors' election plus a loaded machine (CI) took longer than a
    // 3 s lease's fence (2.25 s) once. Losing a member must not depose Mirage.
    // `_dir` first: bindings drop in reverse, so the processes go before their directory.
    let MidPlan {
        _dir,
        ms,
        g,
        first,
        id,
    } = mid_plan("member", &cluster, |i, e: &[String], p: &str| {
        mirage_toml_with(i, e, p, 5000, 2000)
    });
    cluster.sigkill(0);
    let t = Instant::now();
    ms[first].wait_status(&id, "satisfied", Duration::from_secs(120));
    eprintln!(
        "MEMBER: intent satisfied {:.2}s after etcd member 0 was killed, same leader",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(role(&ms[first]), "leader");
    assert_ne!(role(&ms[1 - first]), "leader");
    assert_eq!(g.executed(), 20, "every step's effect exactly once");
}
