//! `SeedLock`: one per `ghost_id::seed_selector` key. Owns a pure [`LockQueue`], tells plans
//! when they are granted, queued or lose the lock, persists every change, expires leases.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;

use super::protocol::{LockMsg, LockState, PlanHandle, PlanMsg, Resume};
use crate::lock::{Acquired, Grant, LockQueue, Owner};
use crate::plan::Input;
use crate::store::{Put, Store, Write};

pub struct SeedLock {
    pub queue: LockQueue,
    plans: HashMap<Owner, PlanHandle>,
    store: MeteredAddr<Store>,
    /// The queue as last handed to the store (the same JSON): a restart after a panic
    /// starts again from it. The store applies writes in order, so it is what a process
    /// restart would read.
    persisted: String,
}

impl SeedLock {
    pub fn new(queue: LockQueue, store: MeteredAddr<Store>) -> SeedLock {
        SeedLock {
            persisted: serde_json::to_string(&queue).unwrap_or_default(),
            queue,
            plans: HashMap::new(),
            store,
        }
    }

    fn persist(&mut self) {
        if let Ok(json) = serde_json::to_string(&self.queue) {
            self.persisted.clone_from(&json);
            self.store.do_send(Put {
                writes: vec![Write::Lock {
                    key: self.queue.key.clone(),
                    json,
                }],
                done: None,
            });
        }
    }

    fn tell(&self, owner: &Owner, input: Input) {
        if let Some(p) = self.plans.get(owner) {
            p.input.do_send(PlanMsg(input));
        }
    }

    fn granted(&mut self, g: Option<Grant>) {
        if let Some(g) = g {
            tracing::info!(component = "mirage.lock", key = %self.queue.key, holder = %g.owner, token = g.token, "seed lock granted");
            self.tell(
                &g.owner,
                Input::LockGranted {
                    key: self.queue.key.clone(),
                    token: g.token,
                },
            );
        }
    }

    fn lost(&mut self, lost: Owner, next: Option<Grant>, why: &str) {
        tracing::warn!(component = "mirage.lock", key = %self.queue.key, holder = %lost, why, "seed lock taken away");
        self.tell(
            &lost,
            Input::LockLost {
                key: self.queue.key.clone(),
            },
        );
        self.plans.remove(&lost);
        self.granted(next);
        self.persist();
    }
}

impl Actor for SeedLock {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.seed_lock").instance_started();
        ctx.run_interval(Duration::from_millis(500), |act, _| {
            if let Some((lost, next)) = act.queue.expire(shared::now_ms()) {
                act.lost(lost, next, "lease expired");
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.seed_lock").instance_stopped();
    }
}

impl Handler<LockMsg> for SeedLock {
    type Result = ();

    fn handle(&mut self, m: LockMsg, ctx: &mut Context<Self>) {
        if let Err(why) = crate::supervision::restartable(|| self.handle_inner(m)) {
            tracing::error!(component = "mirage.lock", key = %self.queue.key, panic = %why, "seed lock panicked; restarting it from its persisted state");
            ctx.stop();
        }
    }
}

impl Supervised for SeedLock {
    /// Back to the persisted queue. The message that panicked is lost, so every plan this
    /// lock knows resumes (re-acquires, re-sends unanswered commands) as after a process
    /// restart; acquiring again is idempotent for a holder or waiter.
    fn restarting(&mut self, _: &mut Context<Self>) {
        match serde_json::from_str::<LockQueue>(&self.persisted) {
            Ok(q) => self.queue = q,
            Err(e) => {
                tracing::error!(component = "mirage.lock", key = %self.queue.key, error = %e, "persisted lock queue unreadable; restarting from memory");
            }
        }
        tracing::warn!(component = "mirage.lock", key = %self.queue.key, plans = self.plans.len(), "seed lock restarted from its persisted state");
        for p in self.plans.values() {
            p.resume.do_send(Resume);
        }
    }
}

impl SeedLock {
    fn handle_inner(&mut self, m: LockMsg) {
        let now = shared::now_ms();
        match m {
            LockMsg::Acquire {
                owner,
                lease_ms,
                plan,
            } => {
                self.plans.insert(owner.clone(), plan);
                crate::supervision::inject("lock");
                match self.queue.acquire(owner.clone(), now, lease_ms) {
                    Acquired::Granted(token) | Acquired::Held(token) => {
                        self.granted(Some(Grant { owner, token }));
                    }
                    Acquired::Queued { holder, position } => {
                        tracing::info!(component = "mirage.lock", key = %self.queue.key, waiter = %owner, %holder, position, "waiting for seed lock");
                        self.tell(
                            &owner,
                            Input::LockQueued {
                                key: self.queue.key.clone(),
                                holder,
                            },
                        );
                    }
                }
                self.persist();
            }
            LockMsg::Release { owner } => {
                let next = self.queue.release(&owner, now);
                self.plans.remove(&owner);
                self.granted(next);
                self.persist();
            }
            LockMsg::Renew { owner, lease_ms } => self.queue.renew(&owner, now, lease_ms),
            LockMsg::Break => {
                if let Some((lost, next)) = self.queue.break_lock(now) {
                    self.lost(lost, next, "broken by an operator");
                }
            }
        }
    }
}

impl Handler<LockState> for SeedLock {
    type Result = MessageResult<LockState>;
    fn handle(&mut self, _: LockState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.queue.clone())
    }
}

actorkit::metered!(SeedLock, LockMsg);
actorkit::metered_result!(SeedLock, LockState);
