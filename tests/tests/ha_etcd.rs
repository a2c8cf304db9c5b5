//! Issue 15, first slice: leader election and fenced writes on a real 3-member etcd
//! (child processes on loopback). Two electors (`mirage::ha`) contend in this process; the
//! etcd members are killed, stopped and restarted by PID.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::etcd::{available, EtcdCluster};
use mirage::ha::{spawn, ElectorConfig, Etcd, FenceError, HaHandle, Role, WriteError};

/// One cluster at a time: three etcd members per test on a 2-core machine is already a lot.
static SERIAL: Mutex<()> = Mutex::new(());

const KEY: &str = "/mirage/election";

struct Setup {
    rt: tokio::runtime::Runtime,
    etcd: Arc<Etcd>,
    cluster: EtcdCluster,
}

fn setup() -> Option<Setup> {
    if !available() {
        return None;
    }
    let cluster = EtcdCluster::start(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let etcd = Arc::new(Etcd::new(cluster.endpoints(), Duration::from_millis(500)));
    Some(Setup { rt, etcd, cluster })
}

fn elector(s: &Setup, id: &str, ttl: Duration) -> HaHandle {
    let cfg = ElectorConfig {
        election_key: KEY.into(),
        id: id.into(),
        ttl,
        rejoin_after: Duration::from_millis(500),
    };
    let _g = s.rt.enter();
    spawn(s.etcd.clone(), cfg).0
}

/// Waits for exactly one of `hs` to lead, checking at every poll that never two do at once.
fn one_leader(hs: &[&HaHandle], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let leading: Vec<usize> = (0..hs.len()).filter(|&i| hs[i].is_leader()).collect();
        assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        if let [i] = leading[..] {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no leader within {within:?}: {:?}",
            hs.iter().map(|h| h.role()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn leader_dies_without_resigning_the_other_leads_within_the_ttl() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = setup() else { return };
    let ttl = Duration::from_secs(3);
    let a = elector(&s, "a", ttl);
    let b = elector(&s, "b", ttl);
    let first = one_leader(&[&a, &b], Duration::from_secs(15));
    let (lead, other) = if first == 0 { (&a, &b) } else { (&b, &a) };
    // Exactly one keeps leading for a while, the other names it.
    std::thread::sleep(ttl);
    assert!(lead.is_leader() && !other.is_leader());
    let leader_name = if first == 0 { "a" } else { "b" };
    assert_eq!(
        other.role(),
        Role::Follower {
            leader: Some(leader_name.into())
        }
    );
    let t0 = Instant::now();
    lead.abandon(); // as SIGKILL: no resign, keepalives stop, the lease runs out
                    // The abandoned one's own window closes before etcd can expire its lease, so the two
                    // never overlap (one_leader checks at every poll).
    let deadline = Instant::now() + ttl * 3;
    while !other.is_leader() {
        let _ = one_leader_or_none(&[&a, &b]);
        assert!(Instant::now() < deadline, "no failover: {:?}", other.role());
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed();
    assert!(!lead.is_leader());
    println!(
        "failover: {} ms (lease TTL {} ms)",
        took.as_millis(),
        ttl.as_millis()
    );
    // Expiry comes at most TTL after the last keepalive (plus etcd's 500 ms expiry sweep);
    // the follower polls every TTL/6.
    assert!(took <= ttl + Duration::from_millis(1500), "{took:?}");
    // The new leader's fenced writes go through.
    let rev =
        s.rt.block_on(other.fenced_put(&[("/mirage/x", "1")]))
            .unwrap();
    assert!(rev > 0);
    // A resign revokes the lease: a third elector leads well within the TTL.
    let c = elector(&s, "c", ttl);
    e2e::wait_until("c follows", Duration::from_secs(10), || {
        c.role()
            == Role::Follower {
                leader: Some(["a", "b"][1 - first].into()),
            }
    });
    let t1 = Instant::now();
    s.rt.block_on(other.resign());
    assert!(!other.is_leader());
    e2e::wait_until("c leads after the resign", ttl, || c.is_leader());
    println!("after resign: {} ms", t1.elapsed().as_millis());
    assert!(matches!(
        s.rt.block_on(other.fenced_put(&[("/mirage/x", "2")])),
        Err(WriteError::NotLeader(_))
    ));
}

#[test]
fn paused_leader_is_fenced_and_notices_it_is_deposed() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = setup() else { return };
    let ttl = Duration::from_secs(3);
    let a = elector(&s, "a", ttl);
    let b = elector(&s, "b", ttl);
    let first = one_leader(&[&a, &b], Duration::from_secs(15));
    let (old, new) = if first == 0 { (&a, &b) } else { (&b, &a) };
    // Tokens the old leader hands out (e.g. a seed lock's) before its pause.
    let mut old_tokens = Vec::new();
    for i in 0..3 {
        old_tokens.push(
            s.rt.block_on(old.fenced_put(&[("/mirage/lock/web", &format!("old-{i}"))]))
                .unwrap(),
        );
    }
    let stale = old.fence().unwrap();
    old.pause(true); // as SIGSTOP: no keepalive, no tick
    let t0 = Instant::now();
    wait_until_leader(new, ttl * 3);
    assert!(!old.is_leader(), "paused leader still thinks it leads");
    println!(
        "paused leader replaced after {} ms (lease TTL {} ms)",
        t0.elapsed().as_millis(),
        ttl.as_millis()
    );
    let new_fence = new.fence().unwrap();
    assert!(new_fence.revision > stale.revision);
    // The paused process wakes up with a write in flight under its old fence: etcd refuses it.
    old.pause(false);
    match s
        .rt
        .block_on(s.etcd.fenced_put(&stale, &[("/mirage/lock/web", "stale")]))
    {
        Err(FenceError::Refused { current, ours, .. }) => {
            assert_eq!(ours, stale.revision);
            assert_eq!(current, Some(new_fence.revision));
        }
        other => panic!("stale fenced write was not refused: {other:?}"),
    }
    let kv =
        s.rt.block_on(s.etcd.get("/mirage/lock/web"))
            .unwrap()
            .unwrap();
    assert_eq!(kv.value, "old-2", "the refused write changed nothing");
    // Through its handle it cannot write either, and it knows it is deposed.
    match s
        .rt
        .block_on(old.fenced_put(&[("/mirage/lock/web", "stale")]))
    {
        Err(WriteError::NotLeader(_)) | Err(WriteError::Fence(FenceError::Refused { .. })) => {}
        other => panic!("old leader wrote: {other:?}"),
    }
    e2e::wait_until(
        "old leader sees it is deposed",
        Duration::from_secs(5),
        || !old.is_leader() && !matches!(old.role(), Role::Leader { .. }),
    );
    // Fencing tokens grow across leaders.
    let new_token =
        s.rt.block_on(new.fenced_put(&[("/mirage/lock/web", "new")]))
            .unwrap();
    assert!(
        old_tokens.iter().all(|t| *t < new_token),
        "{old_tokens:?} < {new_token}"
    );
    assert!(new.is_leader());
}

/// Asserts never two leaders; which one leads, if any.
fn one_leader_or_none(hs: &[&HaHandle]) -> Option<usize> {
    let leading: Vec<usize> = (0..hs.len()).filter(|&i| hs[i].is_leader()).collect();
    assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
    leading.first().copied()
}

fn wait_until_leader(h: &HaHandle, within: Duration) {
    e2e::wait_until("the other elector leads", within, || h.is_leader());
}

#[test]
fn one_etcd_member_killed_leader_keeps_leading_and_writing() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut s) = setup() else { return };
    // A longer TTL absorbs an etcd re-election (~1-2 s) if the killed member led etcd.
    let ttl = Duration::from_secs(5);
    let a = elector(&s, "a", ttl);
    let b = elector(&s, "b", ttl);
    let first = one_leader(&[&a, &b], Duration::from_secs(15));
    let lead = if first == 0 { &a } else { &b };
    let mut roles = lead.subscribe();
    roles.mark_unchanged();
    // Member 0 is every client's first endpoint: the clients must move to another.
    s.cluster.sigkill(0);
    let t0 = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut last_rev = 0;
    while t0.elapsed() < ttl * 2 {
        match s
            .rt
            .block_on(lead.fenced_put(&[("/mirage/progress", &ok.to_string())]))
        {
            Ok(rev) => {
                assert!(rev > last_rev);
                last_rev = rev;
                ok += 1;
            }
            Err(e) => {
                failed += 1;
                eprintln!("write failed: {e}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "one member down for {} s: {ok} fenced writes ok, {failed} failed",
        (ttl * 2).as_secs()
    );
    assert!(
        !roles.has_changed().unwrap(),
        "leadership changed: {:?}",
        lead.role()
    );
    assert!(lead.is_leader());
    assert!(ok >= 20, "{ok} writes ok, {failed} failed");
    // The last write went through after the member was gone.
    s.rt.block_on(lead.fenced_put(&[("/mirage/progress", "last")]))
        .unwrap();
}

#[test]
fn quorum_lost_leader_steps_down_and_says_why_then_a_leader_returns() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut s) = setup() else { return };
    let ttl = Duration::from_secs(3);
    let a = elector(&s, "a", ttl);
    let b = elector(&s, "b", ttl);
    let first = one_leader(&[&a, &b], Duration::from_secs(15));
    let lead = if first == 0 { &a } else { &b };
    s.cluster.sigkill(1);
    s.cluster.sigkill(2);
    let t0 = Instant::now();
    e2e::wait_until("the leader steps down", ttl * 2, || !lead.is_leader());
    let took = t0.elapsed();
    println!(
        "quorum lost: leader stepped down after {} ms (lease TTL {} ms)",
        took.as_millis(),
        ttl.as_millis()
    );
    // etcd's leader still renews leases until its CheckQuorum notices (one election timeout,
    // 1 s); from there the leader is gone within 3/4 of the TTL.
    assert!(took <= ttl + Duration::from_millis(1500), "{took:?}");
    // Nobody leads without quorum, and the reason names etcd and the endpoints.
    let why = loop {
        match lead.role() {
            Role::Deposed { why } if why.contains("etcd") => break why,
            r => {
                assert!(t0.elapsed() < ttl * 3, "no reason given: {r:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    println!("reason: {why}");
    assert!(
        why.contains("quorum") || why.contains("unreachable"),
        "{why}"
    );
    assert!(why.contains(&s.cluster.members[0].endpoint()), "{why}");
    std::thread::sleep(ttl);
    assert!(!a.is_leader() && !b.is_leader());
    s.cluster.restart(1);
    s.cluster.restart(2);
    let t1 = Instant::now();
    let again = one_leader(&[&a, &b], Duration::from_secs(30));
    println!(
        "quorum back: {} leads after {} ms",
        ["a", "b"][again],
        t1.elapsed().as_millis()
    );
    let h = if again == 0 { &a } else { &b };
    s.rt.block_on(h.fenced_put(&[("/mirage/after", "1")]))
        .unwrap();
}

/// A contender in its own process (tests/src/bin/ha_contender.rs); its stdout lines are
/// collected with the time each arrived. Killed on drop.
struct Contender {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Contender {
    fn start(endpoints: &[String], id: &str) -> Contender {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ha_contender"))
            .args(["--endpoints", &endpoints.join(","), "--id", id])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push((Instant::now(), line));
            }
        });
        Contender { child, lines }
    }

    fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// The revision of the last `role leader rev=R` line, if it is the last role line.
    fn leading(&self) -> Option<i64> {
        let lines = self.lines.lock().unwrap();
        let last = lines.iter().rev().find(|(_, l)| l.starts_with("role "))?;
        last.1.strip_prefix("role leader rev=")?.parse().ok()
    }

    /// Revisions of the writes it saw succeed, with the time each was printed.
    fn writes_ok(&self) -> Vec<(Instant, i64)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|(t, l)| Some((*t, l.strip_prefix("write ok rev=")?.parse().ok()?)))
            .collect()
    }

    fn has_line(&self, since: Instant, prefix: &str) -> bool {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .any(|(t, l)| *t >= since && l.starts_with(prefix))
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigstopped_leader_process_cannot_write_after_losing_leadership_and_sigkill_fails_over() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = setup() else { return };
    let ttl = Duration::from_secs(3);
    let eps = s.cluster.endpoints();
    let cs = [Contender::start(&eps, "a"), Contender::start(&eps, "b")];
    let mut first = None;
    e2e::wait_until("a contender process leads", Duration::from_secs(20), || {
        first = (0..2).find(|&i| cs[i].leading().is_some());
        first.is_some()
    });
    let first = first.unwrap();
    let (old, new) = (&cs[first], &cs[1 - first]);
    e2e::wait_until("the leader writes", Duration::from_secs(5), || {
        !old.writes_ok().is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    old.signal("-STOP");
    let t0 = Instant::now();
    e2e::wait_until("the other process leads", ttl * 3, || {
        new.leading().is_some()
    });
    let new_rev = new.leading().unwrap();
    println!(
        "SIGSTOPped leader replaced after {} ms",
        t0.elapsed().as_millis()
    );
    // Past its lease by another TTL, then continued.
    std::thread::sleep(ttl);
    let resumed = Instant::now();
    old.signal("-CONT");
    e2e::wait_until(
        "the resumed process says it is deposed",
        Duration::from_secs(5),
        || old.has_line(resumed, "role deposed"),
    );
    std::thread::sleep(Duration::from_secs(1));
    // Every write the old leader saw succeed committed before the new leader's key existed
    // (a write in flight at the SIGSTOP may print after SIGCONT, but with an old revision).
    let old_writes = old.writes_ok();
    assert!(!old_writes.is_empty());
    assert!(
        old_writes.iter().all(|(_, rev)| *rev < new_rev),
        "old leader wrote at or after the new leader's revision {new_rev}: {old_writes:?}"
    );
    let after: Vec<_> = old_writes.iter().filter(|(t, _)| *t >= resumed).collect();
    println!(
        "old leader: {} writes ok before the stop, {} printed after SIGCONT (all < {new_rev})",
        old_writes.len() - after.len(),
        after.len()
    );
    let kv = s.rt.block_on(s.etcd.get("/mirage/owner")).unwrap().unwrap();
    assert_eq!(
        kv.value,
        ["a", "b"][1 - first],
        "the owner key is the new leader's"
    );
    assert!(new.writes_ok().iter().all(|(_, rev)| *rev > new_rev));
    // SIGKILL of the new leader's process: the resumed one rejoins and leads.
    let t1 = Instant::now();
    let killed = &cs[1 - first];
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &killed.child.id().to_string()])
        .status();
    e2e::wait_until("the first process leads again", ttl * 3, || {
        old.leading().is_some_and(|r| r > new_rev)
    });
    let took = t1.elapsed();
    println!(
        "SIGKILLed leader process replaced after {} ms (TTL {} ms)",
        took.as_millis(),
        ttl.as_millis()
    );
    assert!(took <= ttl + Duration::from_millis(1500), "{took:?}");
}

/// The etcd store backend against real etcd limits: a batch of 750 writes goes as several
/// fenced txns (etcd refuses more than 128 operations in one) and all of it is recovered; a
/// value over the byte budget is refused with its name and nothing of its batch is written;
/// a txn over etcd's own op limit is an error, never a silent drop; a stale fence is refused
/// by etcd itself.
#[test]
fn etcd_store_splits_big_batches_refuses_oversize_and_recovers_everything() {
    use mirage::store::Write;
    use mirage::store_etcd::{EtcdDb, Layout};
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = setup() else { return };
    let a = elector(&s, "a", Duration::from_secs(3));
    wait_until_leader(&a, Duration::from_secs(15));
    let layout = |max_ops| Layout {
        prefix: "/mirage/".into(),
        max_ops,
        max_bytes: 1 << 20,
    };
    let db = EtcdDb::new(s.etcd.clone(), a.clone(), layout(128));
    let plan = |id: &str| {
        let intent = mirage::intent::parse(
            &format!("intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\n"),
            || id.into(),
        )
        .unwrap();
        serde_json::to_string(&mirage::plan::Plan::new(intent, 1)).unwrap()
    };
    let lock = |k: String| Write::Lock {
        json: serde_json::to_string(&mirage::lock::LockQueue::new(k.clone(), 7)).unwrap(),
        key: k,
    };
    let mut batch: Vec<Write> = (0..300).map(|i| lock(format!("g::seed.kv#{i}"))).collect();
    for i in 0..50u64 {
        batch.push(Write::Intent {
            intent_id: format!("i{i}"),
            seq: i + 1,
            status: if i < 10 { "active" } else { "satisfied" }.into(),
            plan: plan(&format!("i{i}")),
            updated_ms: i,
        });
    }
    for seq in 1..=400u64 {
        batch.push(Write::Report {
            seq,
            intent_id: "i0".into(),
            json: format!("{{\"seq\":{seq}}}"),
        });
    }
    s.rt.block_on(db.apply(batch)).unwrap();
    let r = s.rt.block_on(db.recover(1000)).unwrap();
    assert_eq!(r.locks.len(), 300);
    assert_eq!((r.active.len(), r.finished.len()), (10, 40));
    assert_eq!(
        (r.reports.len(), r.max_report_seq, r.max_intent_seq),
        (400, 400, 50)
    );

    // One value over the budget: the whole batch refused, by name; nothing of it written.
    let huge = Write::Lock {
        key: "huge".into(),
        json: "x".repeat(2 << 20),
    };
    let e =
        s.rt.block_on(db.apply(vec![lock("new".into()), huge]))
            .unwrap_err();
    assert!(
        e.contains("lock huge is") && e.contains("max_txn_bytes"),
        "{e}"
    );
    let r = s.rt.block_on(db.recover(10)).unwrap();
    assert!(
        !r.locks.iter().any(|q| q.key == "new"),
        "nothing of a refused batch"
    );

    // Configured above etcd's own limit: etcd's refusal comes back as an error.
    let loose = EtcdDb::new(s.etcd.clone(), a.clone(), layout(1000));
    let e =
        s.rt.block_on(loose.apply((0..200).map(|i| lock(format!("more#{i}"))).collect()))
            .unwrap_err();
    assert!(e.contains("too many operations"), "{e}");

    // A stale fence: etcd compares and refuses, whatever the writer believes.
    let stale = mirage::ha::Fence {
        key: KEY.into(),
        revision: 1,
    };
    let put = mirage::ha::Op::Put {
        key: "/mirage/locks/stale".into(),
        value: "{}".into(),
    };
    assert!(matches!(
        s.rt.block_on(s.etcd.fenced_txn(&stale, &[put])),
        Err(FenceError::Refused { .. })
    ));

    // The commit chain: a txn that reaches etcd late (it follows an older commit) writes
    // nothing; a retry of a txn that did commit is a success, not a second write.
    let fence = mirage::ha::Fence {
        key: KEY.into(),
        revision: a.revision().unwrap(),
    };
    let chain_now =
        s.rt.block_on(s.etcd.get("/mirage/commit"))
            .unwrap()
            .unwrap()
            .value;
    let late = mirage::ha::Chain {
        key: "/mirage/commit".into(),
        prev: Some("0.0".into()),
        next: "late".into(),
    };
    let put = |v: &str| mirage::ha::Op::Put {
        key: "/mirage/locks/late".into(),
        value: v.into(),
    };
    assert!(matches!(
        s.rt.block_on(s.etcd.fenced_chained_txn(&fence, &late, &[put("stale")])),
        Err(FenceError::ChainMoved { .. })
    ));
    assert!(s
        .rt
        .block_on(s.etcd.get("/mirage/locks/late"))
        .unwrap()
        .is_none());
    let next = mirage::ha::Chain {
        key: "/mirage/commit".into(),
        prev: Some(chain_now),
        next: "retried".into(),
    };
    for _ in 0..2 {
        s.rt.block_on(s.etcd.fenced_chained_txn(&fence, &next, &[put("new")]))
            .unwrap();
    }
    assert_eq!(
        s.rt.block_on(s.etcd.get("/mirage/locks/late"))
            .unwrap()
            .unwrap()
            .value,
        "new"
    );
}
