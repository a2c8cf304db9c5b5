//! The `Supervisor`: the orchestrator loop's actor shell, one per process, on the
//! orchestrator Arbiter. It owns the I/O (plan and lock actors, sessions, the store, the
//! report hub, timers) and leaves the decisions to the pure core in `orchestrator/` (fleet
//! registry, routes, ingest) and to the plan and lock cores. Its handlers are split by job:
//! `sessions` (Ghost sessions come and go), `ingest` (events to plans, acks back), `plans`
//! (plan effects: dispatch, locks, reports, finish), `admin_ghosts` (`[[ghost_admin]]`
//! Ghosts), `operator` (submit, wait, withdraw, break a lock, drain) and `queries`.

pub mod admin_ghosts;
pub mod ingest;
pub mod operator;
pub mod plans;
pub mod queries;
pub mod sessions;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use serde::Serialize;

use super::intent_plan::IntentPlan;
use super::protocol::{PlanMsg, Resume, SessionHandle, SupervisorForPlan, SupervisorForSession};
use super::report_stream::ReportHub;
use super::seed_lock::SeedLock;
use super::FleetHandle;
use crate::config::MirageConfig;
use crate::history::{ReportRecord, Reports};
use crate::lock::LockQueue;
use crate::orchestrator::Orchestrator;
use crate::plan::{Input, Plan, Status};
use crate::store::{Put, Store, Write};

#[derive(Debug, Clone, Serialize)]
pub struct IntentSummary {
    pub intent_id: String,
    pub actor: String,
    pub objective: String,
    pub target_scope: String,
    pub status: String,
    pub steps_total: usize,
    pub steps_done: usize,
    pub last_summary: String,
    pub last_state: Option<shared::envelope::CompletionState>,
    pub submitted_seq: u64,
    #[serde(skip)]
    pub first_report_seq: u64,
}

impl IntentSummary {
    fn of(plan: &Plan, seq: u64) -> IntentSummary {
        IntentSummary {
            intent_id: plan.intent.intent_id.clone(),
            actor: plan.intent.actor.clone(),
            objective: plan.intent.objective.clone(),
            target_scope: plan.intent.target_scope.clone(),
            status: if plan.withdrawing.is_some() && plan.status == Status::Active {
                "withdrawing".to_owned()
            } else if plan.intent.keep_ms.is_none() && !plan.catch_up.is_empty() {
                "satisfied".to_owned()
            } else {
                IntentPlan::status_word(plan).to_owned()
            },
            steps_total: plan.intent.steps.len(),
            steps_done: plan.steps_done,
            last_summary: plan.failure.clone().unwrap_or_default(),
            last_state: None,
            submitted_seq: seq,
            first_report_seq: plan.first_report_seq,
        }
    }
}

struct Active {
    seq: u64,
    addr: MeteredAddr<IntentPlan>,
    summary: IntentSummary,
}

pub struct Supervisor {
    cfg: Arc<MirageConfig>,
    store: MeteredAddr<Store>,
    /// The pure core: fleet registry, routes, event-id window.
    core: Orchestrator<SessionHandle>,
    /// The snapshot plans place against; the core updates it.
    fleet: FleetHandle,
    active: HashMap<String, Active>,
    finished: HashMap<String, (IntentSummary, Box<Plan>)>,
    finished_order: VecDeque<String>,
    locks: HashMap<String, MeteredAddr<SeedLock>>,
    restored_locks: HashMap<String, LockQueue>,
    reports: Reports,
    report_seq: u64,
    intent_seq: u64,
    hub: MeteredAddr<ReportHub>,
    finished_since_prune: u64,
    pending_resume: Vec<(u64, Plan)>,
    admin_msg_id: u64,
    /// API callers waiting for an intent to finish (`POST /v1/intents?wait=`), bounded by
    /// `MAX_WAITERS`; a caller that gave up leaves a closed sender, swept when the bound is hit.
    waiters: HashMap<String, Vec<tokio::sync::oneshot::Sender<IntentSummary>>>,
    waiter_count: usize,
    /// The newest submission generation handed out (see `next_generation`).
    last_generation: u64,
}

/// Callers that may wait for intents at once (each costs a map entry and a channel).
pub const MAX_WAITERS: usize = 100_000;

pub struct Restored {
    pub active: Vec<(u64, Plan)>,
    pub finished: Vec<(u64, Plan)>,
    pub locks: Vec<LockQueue>,
    pub reports: Vec<ReportRecord>,
    pub max_intent_seq: u64,
    pub max_report_seq: u64,
}

impl Supervisor {
    pub fn new(
        cfg: Arc<MirageConfig>,
        store: MeteredAddr<Store>,
        fleet: FleetHandle,
        mut restored: Restored,
        hub: MeteredAddr<ReportHub>,
    ) -> Supervisor {
        Self::reconcile_locks(&mut restored, &store);
        let mut reports = Reports::new(cfg.limits.reports, cfg.limits.reports_per_intent);
        // The newest report of each intent, so finished intents keep their last word.
        let mut last: HashMap<String, (String, shared::envelope::CompletionState)> = HashMap::new();
        for r in restored.reports {
            last.insert(r.intent_id.clone(), (r.summary.clone(), r.completion_state));
            reports.push(r);
        }
        let last_generation = restored
            .active
            .iter()
            .chain(restored.finished.iter())
            .map(|(_, p)| p.generation)
            .max()
            .unwrap_or(0);
        let drained = match crate::drain::load(&cfg.data_dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(component = "mirage.supervisor", error = %e, "drained list not read; no Ghost drained");
                Default::default()
            }
        };
        let mut s = Supervisor {
            last_generation,
            core: Orchestrator::new(cfg.clone(), drained),
            reports,
            cfg,
            store,
            fleet,
            active: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            locks: HashMap::new(),
            restored_locks: restored
                .locks
                .into_iter()
                .map(|q| (q.key.clone(), q))
                .collect(),
            report_seq: restored.max_report_seq,
            intent_seq: restored.max_intent_seq,
            hub,
            finished_since_prune: 0,
            pending_resume: restored.active,
            admin_msg_id: 0,
            waiters: HashMap::new(),
            waiter_count: 0,
        };
        for (seq, plan) in restored.finished {
            let mut summary = IntentSummary::of(&plan, seq);
            if let Some((text, state)) = last.remove(&summary.intent_id) {
                summary.last_summary = text;
                summary.last_state = Some(state);
            }
            s.remember_finished(summary, Box::new(plan));
        }
        s
    }

    /// Frees restored locks held or awaited by plan steps that are no longer current (the
    /// lock table lags the plan state by one commit, so a crash can leave them behind) and
    /// persists what changed. Before any plan resumes, so the resumed steps find them free.
    fn reconcile_locks(restored: &mut Restored, store: &MeteredAddr<Store>) {
        let plans: HashMap<&str, &Plan> = restored
            .active
            .iter()
            .map(|(_, p)| (p.intent.intent_id.as_str(), p))
            .collect();
        let now = shared::now_ms();
        let mut writes = Vec::new();
        for q in &mut restored.locks {
            let key = q.key.clone();
            let r = q.reconcile(
                |o| {
                    plans
                        .get(o.intent_id.as_str())
                        .is_some_and(|p| p.needs_lock(o, &key))
                },
                now,
            );
            if !r.changed() {
                continue;
            }
            let dropped: Vec<String> = r.dropped_waiters.iter().map(|o| o.to_string()).collect();
            tracing::warn!(
                component = "mirage.lock",
                key = %key,
                released = %r.released.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                dropped_waiters = ?dropped,
                granted = %r.grant.as_ref().map(|g| g.owner.to_string()).unwrap_or_default(),
                "recovery: seed lock held or awaited by a step that is no longer running; freed"
            );
            if let Ok(json) = serde_json::to_string(q) {
                writes.push(Write::Lock { key, json });
            }
        }
        if !writes.is_empty() {
            store.do_send(Put { writes, done: None });
        }
    }

    /// A generation no earlier submission had: the wall clock in ms, moved on past the last
    /// one handed out (or restored), so it rises even if the clock steps back, and a fresh
    /// data dir (no rows to restore) still does not repeat the ids of a former life.
    fn next_generation(&mut self) -> u64 {
        self.last_generation = shared::now_ms().max(self.last_generation.saturating_add(1));
        self.last_generation
    }

    fn remember_finished(&mut self, summary: IntentSummary, plan: Box<Plan>) {
        let id = summary.intent_id.clone();
        if self.finished.insert(id.clone(), (summary, plan)).is_none() {
            self.finished_order.push_back(id);
        }
        while self.finished_order.len() > self.cfg.limits.finished_intents {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// Applies changed Ghosts to the shared snapshot now, so the next placement sees them.
    fn flush_fleet(&mut self) {
        self.core.fleet.flush_fleet(&self.fleet);
    }

    /// Plans that owe `ghost` commands or a catch-up hear that it is back.
    fn ghost_up(&self, ghost: &str) {
        for id in self.core.routes.interested(ghost) {
            if let Some(a) = self.active.get(id) {
                a.addr.do_send(PlanMsg(Input::GhostUp(ghost.to_owned())));
            }
        }
    }

    fn store_writes(&self, writes: Vec<Write>) {
        if !writes.is_empty() {
            self.store.do_send(Put { writes, done: None });
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.supervisor").instance_started();
        self.core.fleet.rebuild_fleet(&self.fleet);
        // Resume every active intent from its persisted state.
        let resumed = std::mem::take(&mut self.pending_resume);
        if !resumed.is_empty() {
            tracing::info!(
                component = "mirage.supervisor",
                intents = resumed.len(),
                "resuming active intents"
            );
        }
        for (seq, plan) in resumed {
            // Routes first, so events for re-sent commands find their plan.
            let id = plan.intent.intent_id.clone();
            for (cid, o) in plan.outstanding() {
                self.core.routes.resumed(&id, &o.ghost, cid);
            }
            let addr = self.start_plan(seq, plan, ctx);
            addr.do_send(Resume);
        }
        self.core.fleet.add_admin_ghosts();
        if !self.cfg.ghost_admin.is_empty() {
            self.poll_admin_ghosts(ctx);
            ctx.run_interval(Duration::from_secs(3), |act, ctx| {
                act.poll_admin_ghosts(ctx)
            });
        }
        ctx.run_interval(Duration::from_millis(self.cfg.tick_ms), |act, _| {
            act.flush_fleet();
        });
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.core.tick(shared::now_ms());
            act.flush_fleet();
        });
    }
}

/// The Supervisor as a session sees it (the session names the messages, not this actor).
impl From<MeteredAddr<Supervisor>> for SupervisorForSession {
    fn from(a: MeteredAddr<Supervisor>) -> SupervisorForSession {
        SupervisorForSession {
            register: a.recipient(),
            verified: a.recipient(),
            heartbeats: a.recipient(),
            clock_skew: a.recipient(),
            closed: a.recipient(),
            ingest: a.recipient(),
        }
    }
}

/// The Supervisor as a plan sees it.
impl From<MeteredAddr<Supervisor>> for SupervisorForPlan {
    fn from(a: MeteredAddr<Supervisor>) -> SupervisorForPlan {
        SupervisorForPlan {
            dispatch: a.recipient(),
            lock: a.recipient(),
            watch: a.recipient(),
            report: a.recipient(),
            finished: a.recipient(),
        }
    }
}
