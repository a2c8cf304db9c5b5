//! Seed locks: one FIFO queue per `ghost_id::seed_selector` key. A grant carries a fencing
//! token that rises with every grant of the key, so a stale holder's commands are refused by
//! the Ghost. A holder that stops making progress loses the lock when its lease ends.
//! Pure: the `SeedLock` actor owns one queue and the clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Who holds or waits: one step of one intent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub intent_id: String,
    pub step: usize,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/step {}", self.intent_id, self.step + 1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub owner: Owner,
    pub token: u64,
    pub granted_ms: u64,
    pub lease_until_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Granted(u64),
    /// Already held by this owner (after a restart, say): same token.
    Held(u64),
    Queued {
        holder: Owner,
        position: usize,
    },
}

/// A grant handed to the next waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub owner: Owner,
    pub token: u64,
}

/// The lowest `last_token` a lock queue made in this process starts from: 0 with SQLite;
/// with etcd, the leader's epoch (`server::lock_token_floor`), so a key first locked under
/// a new leader still grants tokens above every earlier leader's.
static EPOCH_FLOOR: AtomicU64 = AtomicU64::new(0);

pub fn epoch_floor() -> u64 {
    EPOCH_FLOOR.load(Ordering::Relaxed)
}

pub fn set_epoch_floor(floor: u64) {
    EPOCH_FLOOR.store(floor, Ordering::Relaxed);
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockQueue {
    pub key: String,
    pub holder: Option<Holder>,
    pub waiters: VecDeque<(Owner, u64)>,
    pub last_token: u64,
}

impl LockQueue {
    pub fn new(key: impl Into<String>, last_token: u64) -> LockQueue {
        LockQueue {
            key: key.into(),
            holder: None,
            waiters: VecDeque::new(),
            last_token,
        }
    }

    fn grant(&mut self, owner: Owner, now: u64, lease_ms: u64) -> u64 {
        self.last_token += 1;
        self.holder = Some(Holder {
            owner,
            token: self.last_token,
            granted_ms: now,
            lease_until_ms: now.saturating_add(lease_ms),
        });
        self.last_token
    }

    pub fn acquire(&mut self, owner: Owner, now: u64, lease_ms: u64) -> Acquired {
        if let Some(h) = &self.holder {
            if h.owner == owner {
                return Acquired::Held(h.token);
            }
            let holder = h.owner.clone();
            let position = match self.waiters.iter().position(|(w, _)| *w == owner) {
                Some(p) => p + 1,
                None => {
                    self.waiters.push_back((owner, lease_ms));
                    self.waiters.len()
                }
            };
            return Acquired::Queued { holder, position };
        }
        Acquired::Granted(self.grant(owner, now, lease_ms))
    }

    /// Hands the lock to the first waiter, if any.
    fn next(&mut self, now: u64) -> Option<Grant> {
        let (owner, lease) = self.waiters.pop_front()?;
        let token = self.grant(owner.clone(), now, lease);
        Some(Grant { owner, token })
    }

    /// The holder releases (or a waiter gives up its place). Returns the next grant.
    pub fn release(&mut self, owner: &Owner, now: u64) -> Option<Grant> {
        match &self.holder {
            Some(h) if h.owner == *owner => {
                self.holder = None;
                self.next(now)
            }
            _ => {
                self.waiters.retain(|(w, _)| w != owner);
                None
            }
        }
    }

    /// Progress by the holder extends its lease.
    pub fn renew(&mut self, owner: &Owner, now: u64, lease_ms: u64) {
        if let Some(h) = &mut self.holder {
            if h.owner == *owner {
                h.lease_until_ms = h.lease_until_ms.max(now.saturating_add(lease_ms));
            }
        }
    }

    /// Ends an expired lease: (the holder that lost it, the next grant).
    pub fn expire(&mut self, now: u64) -> Option<(Owner, Option<Grant>)> {
        let h = self.holder.as_ref()?;
        if now < h.lease_until_ms {
            return None;
        }
        let lost = h.owner.clone();
        self.holder = None;
        Some((lost, self.next(now)))
    }

    /// An operator breaks the lock: same as an expiry now.
    pub fn break_lock(&mut self, now: u64) -> Option<(Owner, Option<Grant>)> {
        let lost = self.holder.take()?.owner;
        Some((lost, self.next(now)))
    }

    /// After a restart: drop the holder and the waiters that no live plan step stands
    /// behind any more (`live`: the step is its intent's current one and needs this key).
    /// The lock table is written after the plan state, so a crash between the two leaves
    /// locks held by steps that had already finished; left alone, their own intent's next
    /// step would wait for the lease to run out. A freed lock goes to the first live waiter.
    pub fn reconcile(&mut self, live: impl Fn(&Owner) -> bool, now: u64) -> Reconciled {
        let mut out = Reconciled::default();
        let mut dropped = Vec::new();
        self.waiters.retain(|(w, _)| {
            let keep = live(w);
            if !keep {
                dropped.push(w.clone());
            }
            keep
        });
        out.dropped_waiters = dropped;
        if let Some(h) = &self.holder {
            if !live(&h.owner) {
                out.released = Some(h.owner.clone());
                self.holder = None;
                out.grant = self.next(now);
            }
        }
        out
    }

    pub fn is_idle(&self) -> bool {
        self.holder.is_none() && self.waiters.is_empty()
    }
}

/// What `reconcile` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub released: Option<Owner>,
    pub dropped_waiters: Vec<Owner>,
    pub grant: Option<Grant>,
}

impl Reconciled {
    pub fn changed(&self) -> bool {
        self.released.is_some() || !self.dropped_waiters.is_empty()
    }
}

pub fn key(ghost_id: &str, seed: &str) -> String {
    format!("{ghost_id}::{seed}")
}

/// The first step of the lock set that step `idx` belongs to: a run of steps where each
/// but the last hands its locks on to the next (`hands_on(j)`: step j does). The whole set
/// holds its locks as that one step's [`Owner`], so a re-acquire by a later step of the set
/// is `Held` (same fencing token) and no other owner is granted between two of its steps.
pub fn set_start(idx: usize, hands_on: impl Fn(usize) -> bool) -> usize {
    let mut j = idx;
    while j > 0 && hands_on(j - 1) {
        j -= 1;
    }
    j
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    Keep,
    Release,
}

/// A lock `key` held by a finished step of a lock set, once the next step has begun.
/// `next`: that step's locks and whether it still waits for its placement, when it is of
/// the same set (None: another owner, or no step). Kept when the next step needs the key
/// or cannot tell yet (waiting for its Ghost); released otherwise.
pub fn carry(
    next: Option<(&std::collections::BTreeMap<String, Option<u64>>, bool)>,
    key: &str,
) -> Carry {
    match next {
        Some((locks, waiting)) if waiting || locks.contains_key(key) => Carry::Keep,
        _ => Carry::Release,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(i: &str) -> Owner {
        Owner {
            intent_id: i.into(),
            step: 0,
        }
    }

    #[test]
    fn fifo_hand_over_with_rising_tokens() {
        let mut q = LockQueue::new("g::seed.kv", 0);
        assert_eq!(q.acquire(o("a"), 0, 100), Acquired::Granted(1));
        assert_eq!(q.acquire(o("a"), 1, 100), Acquired::Held(1));
        assert_eq!(
            q.acquire(o("b"), 1, 100),
            Acquired::Queued {
                holder: o("a"),
                position: 1
            }
        );
        assert_eq!(
            q.acquire(o("c"), 1, 100),
            Acquired::Queued {
                holder: o("a"),
                position: 2
            }
        );
        assert_eq!(
            q.acquire(o("b"), 2, 100),
            Acquired::Queued {
                holder: o("a"),
                position: 1
            }
        );
        assert_eq!(
            q.release(&o("a"), 5),
            Some(Grant {
                owner: o("b"),
                token: 2
            })
        );
        assert_eq!(
            q.release(&o("b"), 6),
            Some(Grant {
                owner: o("c"),
                token: 3
            })
        );
        assert_eq!(q.release(&o("c"), 7), None);
        assert!(q.is_idle());
        assert_eq!(
            q.acquire(o("d"), 8, 100),
            Acquired::Granted(4),
            "tokens never repeat"
        );
    }

    #[test]
    fn waiter_leaving_and_foreign_release() {
        let mut q = LockQueue::new("k", 10);
        q.acquire(o("a"), 0, 100);
        q.acquire(o("b"), 0, 100);
        assert_eq!(q.release(&o("b"), 1), None, "a waiter withdraws");
        assert_eq!(q.release(&o("x"), 1), None, "not holder, not waiter");
        assert_eq!(q.holder.as_ref().unwrap().owner, o("a"));
        assert_eq!(q.release(&o("a"), 2), None);
    }

    #[test]
    fn reconcile_frees_locks_of_finished_steps() {
        let step = |i: &str, n: usize| Owner {
            intent_id: i.into(),
            step: n,
        };
        // Held by step 1 of "a", which has moved on to step 2 (queued behind itself), and a
        // waiter whose intent is gone.
        let mut q = LockQueue::new("k", 0);
        q.acquire(step("a", 1), 0, 45_000);
        q.acquire(step("gone", 0), 0, 45_000);
        q.acquire(step("a", 2), 0, 45_000);
        let live = |o: &Owner| *o == step("a", 2);
        let r = q.reconcile(live, 10);
        assert_eq!(r.released, Some(step("a", 1)));
        assert_eq!(r.dropped_waiters, [step("gone", 0)]);
        assert_eq!(
            r.grant,
            Some(Grant {
                owner: step("a", 2),
                token: 2
            }),
            "the live waiter gets it at once, with a new token"
        );
        assert!(r.changed());
        assert_eq!(q.acquire(step("a", 2), 11, 45_000), Acquired::Held(2));
        // Nothing stale: nothing changes.
        let before = q.clone();
        let r = q.reconcile(live, 12);
        assert!(!r.changed());
        assert_eq!(q, before);
        // A stale holder and no waiter: the lock is free, tokens keep rising.
        let mut q = LockQueue::new("k", 7);
        q.acquire(step("a", 0), 0, 45_000);
        let r = q.reconcile(|_| false, 1);
        assert_eq!((r.released, r.grant), (Some(step("a", 0)), None));
        assert!(q.is_idle());
        assert_eq!(q.acquire(step("a", 1), 2, 1), Acquired::Granted(9));
    }

    #[test]
    fn a_lock_set_is_one_holder_from_its_first_step_to_its_last() {
        // Steps 1..=4 are a set (1, 2, 3 hand on; 4 ends it); 0 and 5 stand alone.
        let hands_on = |j: usize| (1..=3).contains(&j);
        let starts: Vec<usize> = (0..6).map(|i| set_start(i, hands_on)).collect();
        assert_eq!(starts, [0, 1, 1, 1, 1, 5]);
        // The set's owner keeps the queue from its first grant to its last release: a
        // waiter that queued during step 1 is granted only after step 4.
        let set = Owner {
            intent_id: "mv".into(),
            step: set_start(3, hands_on),
        };
        let mut q = LockQueue::new("ghost.2::seed.redis", 0);
        assert_eq!(q.acquire(set.clone(), 0, 1000), Acquired::Granted(1));
        assert!(matches!(
            q.acquire(o("other"), 1, 1000),
            Acquired::Queued { position: 1, .. }
        ));
        for step in 2..=4 {
            // Each later step of the set re-acquires as the same owner: held, same token.
            let owner = Owner {
                intent_id: "mv".into(),
                step: set_start(step, hands_on),
            };
            assert_eq!(q.acquire(owner, step as u64, 1000), Acquired::Held(1));
            assert_eq!(q.holder.as_ref().unwrap().owner, set);
        }
        assert_eq!(
            q.release(&set, 10),
            Some(Grant {
                owner: o("other"),
                token: 2
            })
        );
        // What a finished step does with each of its locks once the next has begun.
        let mut next = std::collections::BTreeMap::new();
        next.insert("a::seed.redis".to_owned(), None);
        assert_eq!(carry(Some((&next, false)), "a::seed.redis"), Carry::Keep);
        assert_eq!(carry(Some((&next, false)), "b::seed.redis"), Carry::Release);
        assert_eq!(
            carry(Some((&next, true)), "b::seed.redis"),
            Carry::Keep,
            "a step waiting for its Ghost keeps the set's locks"
        );
        assert_eq!(carry(None, "a::seed.redis"), Carry::Release);
    }

    #[test]
    fn lease_expiry_and_break_hand_over() {
        let mut q = LockQueue::new("k", 0);
        q.acquire(o("a"), 0, 100);
        q.acquire(o("b"), 0, 50);
        assert_eq!(q.expire(99), None);
        q.renew(&o("a"), 90, 100);
        assert_eq!(q.expire(150), None, "renewed to 190");
        let (lost, next) = q.expire(190).unwrap();
        assert_eq!(lost, o("a"));
        assert_eq!(
            next,
            Some(Grant {
                owner: o("b"),
                token: 2
            })
        );
        assert_eq!(q.holder.as_ref().unwrap().lease_until_ms, 240);
        let (lost, next) = q.break_lock(200).unwrap();
        assert_eq!((lost, next), (o("b"), None));
        assert_eq!(q.break_lock(201), None);
    }
}
