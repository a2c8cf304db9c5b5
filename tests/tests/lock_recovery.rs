//! Issue 19 item 10: locks held by a finished step after a Mirage crash. The plan state is
//! committed before the lock releases its step's end sends out, so a SIGKILL between the two
//! commits leaves the lock table saying "held by step k" while the plan is at step k+1,
//! waiting for those very locks; before the fix it waited for the lease to end
//! (timeout × (retries + 2) + 5 s = 45 s here). Recovery frees them from the plan state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use mirage::lock::{Holder, Owner};
use mirage::plan::GhostProgress;
use mirage::store::{Db, Write};

const GHOSTS: usize = 20;
const STEPS: usize = 12;
/// Lease of a blocking step with timeout 20 s and no retries.
const LEASE: Duration = Duration::from_secs(45);

/// The swarm process goes with the test, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mirage_sigkill_mid_fan_out_leaves_no_lock_held_by_a_finished_step() {
    let dir = TempDir::new("lock-recovery");
    let mut m = Mirage::start(&dir, 0, "");
    let session_port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    let (child, _stats) = swarm(&m.session, GHOSTS, &[]);
    let _swarm = KillOnDrop(child);
    m.wait_ghosts(GHOSTS, Duration::from_secs(60));
    let mut plan = String::from(
        "intent_id=\"fan\"\nactor=\"t\"\ntarget_scope=\"ghost:swarm-*\"\nobjective=\"o\"\n",
    );
    for i in 0..STEPS {
        plan.push_str(&format!(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k\",value=\"{i}\"}}\nblocking=true\ntimeout=\"20s\"\n"
        ));
    }
    let id = m.submit(&plan);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, d) = m.get(&format!("/v1/intents/{id}"));
        if d["summary"]["steps_done"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {d}");
        std::thread::sleep(Duration::from_millis(10));
    }
    m.proc.sigkill();

    // What the crash left. The natural window (plan committed, lock releases not yet) is a
    // few ms per step; where this kill missed it, the state it leaves is set up here: the
    // plan has just begun step k (locks asked for, nothing dispatched) and the lock table
    // still names step k-1 of the same intent as holder.
    let natural;
    {
        let mut db = Db::open(&dir.path("mirage")).unwrap();
        let rec = db.recover(10).unwrap();
        let (seq, mut p) = rec
            .active
            .into_iter()
            .find(|(_, p)| p.intent.intent_id == id)
            .expect("the intent is active in the database");
        let s = p.step.as_mut().expect("a step is running");
        let k = s.index;
        assert!(k >= 1, "at step {k}");
        let stale = |q: &mirage::lock::LockQueue| {
            q.holder
                .as_ref()
                .is_some_and(|h| h.owner.intent_id == id && h.owner.step < k)
        };
        natural = rec.locks.iter().any(stale);
        if !natural {
            for v in s.locks.values_mut() {
                *v = None;
            }
            for g in s.ghosts.values_mut() {
                *g = GhostProgress::Pending;
            }
            s.outstanding.clear();
            s.dispatched = false;
            s.blocked_by = None;
            let now = shared::now_ms();
            let mut writes = vec![Write::Intent {
                intent_id: id.clone(),
                seq,
                status: "active".into(),
                plan: serde_json::to_string(&p).unwrap(),
                updated_ms: now,
            }];
            let keys: Vec<String> = p.step.as_ref().unwrap().locks.keys().cloned().collect();
            assert_eq!(keys.len(), GHOSTS);
            for mut q in rec.locks.into_iter().filter(|q| keys.contains(&q.key)) {
                q.waiters.clear();
                q.holder = Some(Holder {
                    owner: Owner {
                        intent_id: id.clone(),
                        step: k - 1,
                    },
                    token: q.last_token,
                    granted_ms: now,
                    lease_until_ms: now + LEASE.as_millis() as u64,
                });
                writes.push(Write::Lock {
                    key: q.key.clone(),
                    json: serde_json::to_string(&q).unwrap(),
                });
            }
            db.apply(&writes).unwrap();
        }
    }

    let restarted = Instant::now();
    let m = Mirage::start(&dir, session_port, "");
    m.wait_status(&id, "satisfied", LEASE);
    let took = restarted.elapsed();
    assert!(
        took < LEASE / 2,
        "satisfied {:.1}s after the restart: the resumed step waited on its own intent's locks",
        took.as_secs_f64()
    );
    assert!(
        m.proc
            .log_text()
            .contains("recovery: seed lock held or awaited by a step that is no longer running"),
        "recovery freed the stale locks: {}",
        tail(&m.proc.log_text(), 30)
    );
    let held = m.held_locks();
    assert!(held.is_empty(), "every lock free at the end: {held:?}");
    eprintln!(
        "lock recovery: {GHOSTS} Ghosts x {STEPS} blocking steps, Mirage SIGKILLed after step 2 \
         (stale lock left by the crash itself: {natural}); satisfied {:.2}s after the restart \
         (lease {}s)",
        took.as_secs_f64(),
        LEASE.as_secs()
    );
}
