//! The `Supervisor`: the orchestrator loop. Knows the fleet (registrations, sessions), the
//! active plans and the lock actors; routes commands to sessions and events to plans; keeps
//! the event_id window and the report history; answers queries. One per process, on the
//! orchestrator Arbiter.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use serde::Serialize;
use shared::envelope::{AckStatus, Command, Event, EventAck};
use shared::error::code;
use shared::handshake::{Registration, RegistrationAck, CAP_SESSION_COMMAND, REJECT_ID_CONFLICT};

use super::intent_plan::{Discard, IntentPlan, PlanMsg, Resume, Snapshot};
use super::report_stream::{Publish, ReportHub};
use super::seed_lock::{LockMsg, LockState, SeedLock};
use super::session::{Close, GhostSession, SendCommand};
use super::FleetHandle;
use crate::config::MirageConfig;
use crate::history::{EventWindow, ReportRecord, Reports};
use crate::intent::Intent;
use crate::lock::{LockQueue, Owner};
use crate::metrics as m;
use crate::plan::{FleetView, GhostView, Input, Plan, ReportDraft, Status};
use crate::store::{Put, Store, Write};

pub struct GhostEntry {
    pub registration: Registration,
    pub session: Option<MeteredAddr<GhostSession>>,
    pub session_id: String,
    pub peer: String,
    pub registered_ms: u64,
    pub last_event_ms: u64,
    pub events: u64,
    /// Heartbeat events acked on its sessions (edgectl Ghosts send nothing else), and when
    /// the last one came. Not in `events`: those are observations (command results).
    pub heartbeats: u64,
    pub last_heartbeat_ms: u64,
    /// `[[ghost_admin]]`: driven through this admin address, reachable now or not.
    pub admin_addr: Option<String>,
    pub admin_ok: bool,
    /// With frame auth required, a session counts only after its first authenticated frame.
    pub verified: bool,
    /// Another Ghost process (another instance_id) tried to register this ghost_id while the
    /// holder was alive, and was refused.
    pub conflict: Option<Conflict>,
    /// When the session ended (0 while connected): the oldest disconnected Ghosts are
    /// forgotten first.
    pub disconnected_ms: u64,
}

/// A refused claim to a held ghost_id.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Conflict {
    /// The claimant's instance_id and address.
    pub instance_id: String,
    pub peer: String,
    pub first_ms: u64,
    pub last_ms: u64,
    /// Registrations refused for this claimant.
    pub refused: u64,
}

/// A conflict with no refused attempt for this long is over (the claimant stopped); a Ghost
/// backs off to at most 5 s (x1.5 jitter) after a rejection, so a live claimant retries well
/// inside it.
pub const CONFLICT_STALE_MS: u64 = 30_000;

/// What a registration for a ghost_id that may be held means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No live session holds the id: register.
    Free,
    /// The same Ghost again (same instance_id, or either side sent none, as edgectl Ghosts
    /// do): the new session replaces the old one.
    Takeover,
    /// A different instance_id while the holder's session is alive: refuse.
    Conflict,
}

/// Pure rule: `held` is the live holder's instance_id (`None` when no live session),
/// `Some(None)` a live holder that sent none.
pub fn claim(held: Option<Option<&str>>, new: Option<&str>) -> Claim {
    match held {
        None => Claim::Free,
        Some(Some(h)) if new.is_some_and(|n| n != h) => Claim::Conflict,
        Some(_) => Claim::Takeover,
    }
}

impl GhostEntry {
    fn connected(&self) -> bool {
        (self.session.is_some() && self.verified) || (self.admin_addr.is_some() && self.admin_ok)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GhostInfo {
    pub ghost_id: String,
    pub connected: bool,
    pub session_id: String,
    pub peer: String,
    pub registered_ms: u64,
    /// Events other than heartbeats (command results, observations) and the last one's time.
    pub last_event_ms: u64,
    pub events: u64,
    /// Heartbeat events acked (an edgectl Ghost sends one every 5 s and nothing else on its
    /// session) and the last one's time.
    pub heartbeats: u64,
    pub last_heartbeat_ms: u64,
    /// The latest of `last_event_ms` and `last_heartbeat_ms`: when the Ghost was last heard.
    pub last_seen_ms: u64,
    pub session_commands: bool,
    pub labels: BTreeMap<String, String>,
    pub seeds: Vec<shared::handshake::SeedInfo>,
    pub local: bool,
    pub via_admin: Option<String>,
    /// ext registration `instance_id` of the current (or last) holder.
    pub instance_id: Option<String>,
    /// A second Ghost process claiming this ghost_id, refused while the holder is alive.
    pub conflict: Option<Conflict>,
    /// Latest observation per seed (shared::observe); omitted when there is none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub observed: BTreeMap<String, crate::observe::Observed>,
    /// The Ghost's clock minus Mirage's, in ms, from its heartbeats (null until measured).
    pub clock_skew_ms: Option<i64>,
    /// Set when the skew is large enough to matter (see `skew::warning`).
    pub clock_warning: Option<String>,
    /// `mirage ghost drain`: no new step is placed here.
    pub drained: bool,
}

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
    ghosts: BTreeMap<String, GhostEntry>,
    fleet: FleetHandle,
    fleet_dirty: bool,
    /// ghost_id → measured clock skew (ms), for `/v1/ghosts`; only for known Ghosts.
    clock_skew: BTreeMap<String, i64>,
    /// Ghosts whose view changed since the shared snapshot was last updated.
    fleet_changed: HashSet<String>,
    active: HashMap<String, Active>,
    finished: HashMap<String, (IntentSummary, Box<Plan>)>,
    finished_order: VecDeque<String>,
    routes: HashMap<String, String>,
    intent_routes: HashMap<String, Vec<String>>,
    interest: HashMap<String, HashSet<String>>,
    locks: HashMap<String, MeteredAddr<SeedLock>>,
    restored_locks: HashMap<String, LockQueue>,
    events: EventWindow,
    reports: Reports,
    report_seq: u64,
    intent_seq: u64,
    session_seq: u64,
    hub: MeteredAddr<ReportHub>,
    finished_since_prune: u64,
    pending_resume: Vec<(u64, Plan)>,
    admin_msg_id: u64,
    /// API callers waiting for an intent to finish (`POST /v1/intents?wait=`), bounded by
    /// `MAX_WAITERS`; a caller that gave up leaves a closed sender, swept when the bound is hit.
    waiters: HashMap<String, Vec<tokio::sync::oneshot::Sender<IntentSummary>>>,
    waiter_count: usize,
    /// Ghosts with a session now (the session limit counts these).
    connected_sessions: usize,
    /// Disconnected Ghosts, oldest disconnect first, as (disconnected_ms, ghost_id); entries
    /// that reconnected since are skipped (and compacted away) when met.
    disconnected: VecDeque<(u64, String)>,
    disconnected_n: usize,
    /// Latest observed state per ghost/seed (bounded; crate::observe).
    observed: crate::observe::Observations,
    /// The newest submission generation handed out (see `next_generation`).
    last_generation: u64,
    /// Drained ghost_ids (crate::drain), persisted in data_dir.
    drained: BTreeSet<String>,
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
        let mut s = Supervisor {
            last_generation,
            events: EventWindow::new(cfg.limits.event_window_ms, cfg.limits.event_window),
            reports,
            cfg,
            store,
            ghosts: BTreeMap::new(),
            fleet,
            fleet_dirty: true,
            clock_skew: BTreeMap::new(),
            fleet_changed: HashSet::new(),
            active: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            routes: HashMap::new(),
            intent_routes: HashMap::new(),
            interest: HashMap::new(),
            locks: HashMap::new(),
            restored_locks: restored
                .locks
                .into_iter()
                .map(|q| (q.key.clone(), q))
                .collect(),
            report_seq: restored.max_report_seq,
            intent_seq: restored.max_intent_seq,
            session_seq: 0,
            hub,
            finished_since_prune: 0,
            pending_resume: restored.active,
            admin_msg_id: 0,
            waiters: HashMap::new(),
            waiter_count: 0,
            connected_sessions: 0,
            disconnected: VecDeque::new(),
            disconnected_n: 0,
            observed: crate::observe::Observations::default(),
            drained: BTreeSet::new(),
        };
        match crate::drain::load(&s.cfg.data_dir) {
            Ok(d) => s.drained = d,
            Err(e) => {
                tracing::warn!(component = "mirage.supervisor", error = %e, "drained list not read; no Ghost drained")
            }
        }
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

    fn ghost_view(
        g: &GhostEntry,
        observed: &crate::observe::Observations,
        id: &str,
        drained: bool,
    ) -> GhostView {
        GhostView {
            drained,
            disconnected_ms: g.disconnected_ms,
            observed: observed
                .of(id)
                .into_iter()
                .map(|(k, o)| (k, o.state))
                .collect(),
            connected: g.connected(),
            seeds: g
                .registration
                .seeds()
                .iter()
                .map(|s| {
                    let ops = (!s.operations.is_empty())
                        .then(|| s.operations.iter().map(|o| o.name.clone()).collect());
                    (s.id.clone(), ops)
                })
                .collect(),
            idempotent: g
                .registration
                .seeds()
                .iter()
                .flat_map(|s| {
                    s.operations
                        .iter()
                        .filter(|o| o.idempotent)
                        .map(|o| (s.id.clone(), o.name.clone()))
                })
                .collect(),
        }
    }

    /// Applies changed Ghosts to the shared snapshot now, so the next placement sees them.
    /// Copy-on-write: plans hold the snapshot only while handling a message, so this is
    /// usually an in-place O(log n) update, not a copy.
    fn flush_fleet(&mut self) {
        if self.fleet_dirty {
            self.rebuild_fleet();
            self.fleet_changed.clear();
            return;
        }
        if self.fleet_changed.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut self.fleet_changed);
        let mut cell = self.fleet.borrow_mut();
        let f = Arc::make_mut(&mut cell);
        for id in changed {
            match self.ghosts.get(&id) {
                Some(g) => {
                    let d = self.drained.contains(&id);
                    f.ghosts
                        .insert(id.clone(), Self::ghost_view(g, &self.observed, &id, d));
                }
                None => {
                    f.ghosts.remove(&id);
                }
            }
        }
    }

    fn rebuild_fleet(&mut self) {
        if !self.fleet_dirty {
            return;
        }
        let mut f = FleetView {
            ghosts: BTreeMap::new(),
            local: (!self.cfg.local_ghost.is_empty()).then(|| self.cfg.local_ghost.clone()),
        };
        for (id, g) in &self.ghosts {
            let d = self.drained.contains(id);
            f.ghosts
                .insert(id.clone(), Self::ghost_view(g, &self.observed, id, d));
        }
        *self.fleet.borrow_mut() = Arc::new(f);
        self.fleet_dirty = false;
    }

    fn start_plan(
        &mut self,
        seq: u64,
        plan: Plan,
        ctx: &mut Context<Self>,
    ) -> MeteredAddr<IntentPlan> {
        let id = plan.intent.intent_id.clone();
        let summary = IntentSummary::of(&plan, seq);
        let (me, store, fleet) = (
            MeteredAddr::new(ctx.address(), "mirage.supervisor"),
            self.store.clone(),
            self.fleet.clone(),
        );
        // Under an actix Supervisor: a panic restarts it from its persisted state.
        let addr = MeteredAddr::new(
            actix::Supervisor::start(move |_| IntentPlan::new(plan, seq, me, store, fleet)),
            "mirage.intent_plan",
        );
        self.active.insert(
            id,
            Active {
                seq,
                addr: addr.clone(),
                summary,
            },
        );
        addr
    }

    fn lock_actor(&mut self, key: &str) -> MeteredAddr<SeedLock> {
        if let Some(a) = self.locks.get(key) {
            return a.clone();
        }
        let q = self
            .restored_locks
            .remove(key)
            .unwrap_or_else(|| LockQueue::new(key, crate::lock::epoch_floor()));
        let a = MeteredAddr::new(
            {
                let store = self.store.clone();
                actix::Supervisor::start(move |_| SeedLock::new(q, store))
            },
            "mirage.seed_lock",
        );
        self.locks.insert(key.to_owned(), a.clone());
        a
    }

    fn forget_routes(&mut self, intent_id: &str) {
        if let Some(cids) = self.intent_routes.remove(intent_id) {
            for c in cids {
                self.routes.remove(&c);
            }
        }
        for set in self.interest.values_mut() {
            set.remove(intent_id);
        }
    }

    /// Probes every `[[ghost_admin]]` Ghost: reachable, right id, which seeds.
    fn poll_admin_ghosts(&mut self, ctx: &mut Context<Self>) {
        let timeout = Duration::from_millis(self.cfg.timeouts.connect_ms.min(2000));
        for ga in self.cfg.ghost_admin.clone() {
            let fut = async move { crate::admin_client::probe(&ga.addr, &ga.token, timeout).await };
            let id = ga.id.clone();
            ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
                let Some(g) = act.ghosts.get_mut(&id) else { return };
                let was = g.admin_ok;
                match res {
                    Ok((reported, seeds)) if reported == id => {
                        g.admin_ok = true;
                        if g.registered_ms == 0 {
                            g.registered_ms = shared::now_ms();
                        }
                        if g.registration.seeds() != seeds.as_slice() {
                            g.registration.seed_list = Some(seeds);
                            act.fleet_changed.insert(id.clone());
                        }
                    }
                    Ok((reported, _)) => {
                        g.admin_ok = false;
                        tracing::warn!(component = "mirage.supervisor", ghost_id = %id, reported = %reported, "admin ghost reports another id; not used");
                    }
                    Err(e) => {
                        g.admin_ok = false;
                        if was {
                            tracing::warn!(component = "mirage.supervisor", ghost_id = %id, error = %e, "admin ghost unreachable");
                        }
                    }
                }
                if was != g.admin_ok {
                    act.fleet_changed.insert(id.clone());
                    if g.admin_ok {
                        tracing::info!(component = "mirage.supervisor", ghost_id = %id, "admin ghost reachable");
                        act.flush_fleet();
                        act.ghost_up(&id);
                    }
                }
                act.flush_fleet();
            }));
        }
    }

    fn ghost_up(&self, ghost: &str) {
        if let Some(intents) = self.interest.get(ghost) {
            for id in intents {
                if let Some(a) = self.active.get(id) {
                    a.addr.do_send(PlanMsg(Input::GhostUp(ghost.to_owned())));
                }
            }
        }
    }

    /// Runs a command through an admin Ghost's `execute_envelope` and ingests its event.
    fn dispatch_admin(
        &mut self,
        addr: String,
        ghost: String,
        command: Command,
        ctx: &mut Context<Self>,
    ) {
        self.admin_msg_id += 1;
        let msg_id = self.admin_msg_id;
        let timeout = Duration::from_millis(
            command
                .deadline_ms
                .map(|d| d.saturating_sub(shared::now_ms()))
                .unwrap_or(30_000)
                .clamp(1000, 600_000),
        );
        let me = MeteredAddr::new(ctx.address(), "mirage.supervisor");
        m::COMMANDS_SENT.inc();
        let token = self
            .cfg
            .ghost_admin
            .iter()
            .find(|g| g.id == ghost)
            .map(|g| g.token.clone())
            .unwrap_or_default();
        actix_rt::spawn(async move {
            let cmd = command.clone();
            let res = crate::admin_client::execute(&addr, &token, msg_id, command, timeout).await;
            let ev = match res {
                Ok(e) => e,
                Err(why) => {
                    // The Ghost refused or could not be reached: a terminal error, not silence.
                    let mut e = Event::new(
                        format!("evt.{}", cmd.command_id),
                        cmd.command_id.clone(),
                        cmd.intent_id.clone(),
                        ghost.clone(),
                        cmd.seed_selector.clone(),
                        shared::envelope::Outcome::Error,
                    );
                    e.error_code = Some(code::RUNTIME);
                    e.error_reason = Some(format!("admin {addr}: {why}"));
                    e.timestamp_ms = Some(shared::now_ms());
                    e
                }
            };
            me.do_send(Ingest {
                ghost_id: ghost,
                event: ev,
            });
        });
    }

    fn publish(&mut self, r: ReportRecord) {
        m::REPORTS.inc();
        if let Ok(json) = serde_json::to_string(&r) {
            self.store.do_send(Put {
                writes: vec![Write::Report {
                    seq: r.seq,
                    intent_id: r.intent_id.clone(),
                    json,
                }],
                done: None,
            });
        }
        let r = Arc::new(r);
        // The hub filters per subscriber; a slow one is told what it missed.
        self.hub.do_send(Publish(r.clone()));
        self.reports.push((*r).clone());
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.supervisor").instance_started();
        self.rebuild_fleet();
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
                self.routes.insert(cid.clone(), id.clone());
                self.intent_routes
                    .entry(id.clone())
                    .or_default()
                    .push(cid.clone());
                self.interest
                    .entry(o.ghost.clone())
                    .or_default()
                    .insert(id.clone());
            }
            let addr = self.start_plan(seq, plan, ctx);
            addr.do_send(Resume);
        }
        for ga in self.cfg.ghost_admin.clone() {
            self.ghosts.insert(
                ga.id.clone(),
                GhostEntry {
                    registration: Registration {
                        ghost_id: ga.id.clone(),
                        peer_identity: ga.id.clone(),
                        seed_list: Some(vec![]),
                        admin_addr: Some(ga.addr.clone()),
                        ..Default::default()
                    },
                    session: None,
                    session_id: String::new(),
                    peer: ga.addr.clone(),
                    registered_ms: 0,
                    last_event_ms: 0,
                    events: 0,
                    heartbeats: 0,
                    last_heartbeat_ms: 0,
                    admin_addr: Some(ga.addr),
                    admin_ok: false,
                    verified: true,
                    conflict: None,
                    disconnected_ms: 0,
                },
            );
        }
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
            let now = shared::now_ms();
            act.events.expire(now);
            act.evict_disconnected(now);
            act.flush_fleet();
        });
    }
}

// ------------------------------------------------------------------ sessions

#[derive(Message)]
#[rtype(result = "Result<RegistrationAck, RegistrationAck>")]
pub struct Register {
    pub reg: Registration,
    pub session: MeteredAddr<GhostSession>,
    pub peer: String,
}

impl Handler<Register> for Supervisor {
    type Result = Result<RegistrationAck, RegistrationAck>;

    fn handle(&mut self, m: Register, _: &mut Context<Self>) -> Self::Result {
        let now = shared::now_ms();
        let ghost = m.reg.ghost_id.clone();
        let rejected = |message: String| RegistrationAck {
            status: "rejected".into(),
            code: code::TRANSPORT,
            message,
            ghost_id: ghost.clone(),
            timestamp_ms: now,
            ..Default::default()
        };
        let held = self
            .ghosts
            .get(&ghost)
            .filter(|g| g.session.is_some())
            .map(|g| g.registration.instance());
        if claim(held, m.reg.instance()) == Claim::Conflict {
            return Err(rejected(self.refuse_claim(&ghost, &m.reg, &m.peer, now)));
        }
        let replacing = held.is_some();
        if !replacing && self.connected_sessions >= self.cfg.limits.sessions {
            m::SESSIONS_REJECTED.inc();
            return Err(rejected(format!(
                "session limit of {} reached",
                self.cfg.limits.sessions
            )));
        }
        self.session_seq += 1;
        let session_id = format!("{ghost}#{}", self.session_seq);
        let entry = self
            .ghosts
            .entry(ghost.clone())
            .or_insert_with(|| GhostEntry {
                registration: m.reg.clone(),
                session: None,
                session_id: String::new(),
                peer: String::new(),
                registered_ms: now,
                last_event_ms: 0,
                events: 0,
                heartbeats: 0,
                last_heartbeat_ms: 0,
                admin_addr: None,
                admin_ok: false,
                verified: false,
                conflict: None,
                disconnected_ms: 0,
            });
        if let Some(old) = entry.session.take() {
            tracing::info!(component = "mirage.supervisor", ghost_id = %ghost, old = %entry.session_id, new = %session_id, "new session replaces the old one");
            old.do_send(Close {
                reason: format!("replaced by session {session_id}"),
            });
        } else {
            self.connected_sessions += 1;
            if entry.disconnected_ms != 0 {
                self.disconnected_n = self.disconnected_n.saturating_sub(1);
            }
        }
        // The claimant is the holder now (the old holder ended), or the claim went quiet.
        if entry.conflict.as_ref().is_some_and(|c| {
            Some(c.instance_id.as_str()) == m.reg.instance()
                || now.saturating_sub(c.last_ms) > CONFLICT_STALE_MS
        }) {
            entry.conflict = None;
        }
        entry.registration = m.reg;
        entry.session = Some(m.session);
        entry.verified = !self.cfg.auth.required;
        entry.session_id = session_id.clone();
        entry.peer = m.peer;
        entry.disconnected_ms = 0;
        self.fleet_changed.insert(ghost.clone());
        self.flush_fleet();
        m::SESSIONS_OPENED.inc();
        // Commands sent while it was away may not have arrived: plans re-send them.
        if !self.cfg.auth.required {
            self.ghost_up(&ghost);
        }
        Ok(RegistrationAck {
            status: "accepted".into(),
            code: 0,
            message: "registered".into(),
            ghost_id: ghost,
            timestamp_ms: now,
            session_id: Some(session_id),
            heartbeat_interval_ms: Some(self.cfg.timeouts.heartbeat_ms),
        })
    }
}

impl Supervisor {
    /// Records a refused claim to a held ghost_id (logged once per claimant, counted every
    /// time) and returns the rejection's message. The holder's instance_id is not told: it
    /// would let the claimant pose as the holder.
    fn refuse_claim(&mut self, ghost: &str, reg: &Registration, peer: &str, now: u64) -> String {
        m::GHOST_ID_CONFLICTS.inc();
        let claimant = reg.instance().unwrap_or_default().to_owned();
        let Some(g) = self.ghosts.get_mut(ghost) else {
            return format!("{REJECT_ID_CONFLICT}: {ghost}");
        };
        match &mut g.conflict {
            Some(c)
                if c.instance_id == claimant
                    && now.saturating_sub(c.last_ms) <= CONFLICT_STALE_MS =>
            {
                c.refused += 1;
                c.last_ms = now;
                c.peer = peer.to_owned();
                tracing::debug!(component = "mirage.supervisor", ghost_id = %ghost, instance_id = %claimant, peer = %peer, refused = c.refused, "ghost_id conflict: claim refused again");
            }
            _ => {
                tracing::warn!(component = "mirage.supervisor", ghost_id = %ghost, holder_session = %g.session_id, holder_peer = %g.peer, holder_instance = %g.registration.instance().unwrap_or_default(), claimant_instance = %claimant, claimant_peer = %peer, "ghost_id conflict: a second Ghost process claims this ghost_id while the holder is alive; refused (stop one of them or give it its own ghost_id)");
                g.conflict = Some(Conflict {
                    instance_id: claimant,
                    peer: peer.to_owned(),
                    first_ms: now,
                    last_ms: now,
                    refused: 1,
                });
                self.fleet_changed.insert(ghost.to_owned());
            }
        }
        format!(
            "{REJECT_ID_CONFLICT}: {ghost} is held by a live session ({}) of another Ghost process (another instance_id); stop one of the two or give this one its own ghost_id",
            g.session_id
        )
    }
}

/// The session's first frame carried a valid auth block: the Ghost may be used now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionVerified {
    pub ghost_id: String,
    pub session_id: String,
}

impl Handler<SessionVerified> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: SessionVerified, _: &mut Context<Self>) {
        if let Some(g) = self.ghosts.get_mut(&m.ghost_id) {
            if g.session_id == m.session_id && !g.verified {
                g.verified = true;
                self.fleet_changed.insert(m.ghost_id.clone());
                self.flush_fleet();
                self.ghost_up(&m.ghost_id);
            }
        }
    }
}

/// Heartbeats a session acked since its last report (sent once per session tick).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heartbeats {
    pub ghost_id: String,
    pub count: u64,
    pub last_ms: u64,
}

impl Handler<Heartbeats> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Heartbeats, _: &mut Context<Self>) {
        if let Some(g) = self.ghosts.get_mut(&m.ghost_id) {
            g.heartbeats += m.count;
            g.last_heartbeat_ms = g.last_heartbeat_ms.max(m.last_ms);
        }
    }
}

/// A session measured its Ghost's clock skew anew.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClockSkew {
    pub ghost_id: String,
    pub session_id: String,
    pub skew_ms: i64,
}

impl Handler<ClockSkew> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: ClockSkew, _: &mut Context<Self>) {
        if self
            .ghosts
            .get(&m.ghost_id)
            .is_some_and(|g| g.session_id == m.session_id)
        {
            self.clock_skew.insert(m.ghost_id, m.skew_ms);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub ghost_id: String,
    pub session_id: String,
    pub reason: String,
}

impl Handler<SessionClosed> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: SessionClosed, _: &mut Context<Self>) {
        if let Some(g) = self.ghosts.get_mut(&m.ghost_id) {
            // A replaced session's end must not mark the Ghost disconnected.
            if g.session_id == m.session_id && g.session.is_some() {
                g.session = None;
                self.connected_sessions = self.connected_sessions.saturating_sub(1);
                if g.admin_addr.is_none() {
                    let now = shared::now_ms().max(1);
                    g.disconnected_ms = now;
                    self.disconnected.push_back((now, m.ghost_id.clone()));
                    self.disconnected_n += 1;
                }
                self.fleet_changed.insert(m.ghost_id.clone());
                tracing::info!(component = "mirage.supervisor", ghost_id = %m.ghost_id, session_id = %m.session_id, reason = %m.reason, "ghost disconnected");
                self.evict_disconnected(shared::now_ms());
                self.flush_fleet();
            }
        }
    }
}

impl Supervisor {
    /// Forgets disconnected Ghosts past `limits.disconnected_ghosts` or older than
    /// `limits.disconnected_ghost_ms`, oldest disconnect first, so registrations from ever new
    /// ghost_ids cannot grow the registry without bound.
    fn evict_disconnected(&mut self, now: u64) {
        let (cap, age) = (
            self.cfg.limits.disconnected_ghosts,
            self.cfg.limits.disconnected_ghost_ms,
        );
        while let Some((at, id)) = self.disconnected.front() {
            let (at, live) = (
                *at,
                self.ghosts.get(id).is_some_and(|g| {
                    g.session.is_none() && g.admin_addr.is_none() && g.disconnected_ms == *at
                }),
            );
            if live && self.disconnected_n <= cap && now.saturating_sub(at) <= age {
                break;
            }
            let Some((_, id)) = self.disconnected.pop_front() else {
                break;
            };
            if live {
                self.ghosts.remove(&id);
                self.observed.forget(&id);
                self.disconnected_n = self.disconnected_n.saturating_sub(1);
                self.fleet_changed.insert(id.clone());
                m::GHOSTS_EVICTED.inc();
                tracing::debug!(component = "mirage.supervisor", ghost_id = %id, disconnected_ms = at, "disconnected ghost forgotten (registry bound)");
            }
        }
        // Reconnects leave stale queue items behind; keep the queue within twice the live ones.
        if self.disconnected.len() > 2 * self.disconnected_n + 64 {
            let ghosts = &self.ghosts;
            self.disconnected.retain(|(at, id)| {
                ghosts
                    .get(id)
                    .is_some_and(|g| g.session.is_none() && g.disconnected_ms == *at)
            });
        }
    }
}

/// An event from a Ghost; resolves with the ack to send, after the plan persisted it. `None`:
/// it could not be recorded now; no ack, so the Ghost sends it again after its ack timeout.
#[derive(Message)]
#[rtype(result = "Option<EventAck>")]
pub struct Ingest {
    pub ghost_id: String,
    pub event: Event,
}

fn ack(e: &Event, ghost: &str, status: AckStatus, code: u32) -> EventAck {
    EventAck {
        event_id: e.event_id.clone(),
        command_id: e.command_id.clone(),
        ghost_id: ghost.to_owned(),
        ack_status: status,
        ack_code: code,
        timestamp_ms: shared::now_ms(),
        extra: vec![],
    }
}

/// What ingesting one event needs: an answer now, or the plan's word first.
enum Step {
    Now(Option<EventAck>),
    Plan {
        plan: Option<MeteredAddr<IntentPlan>>,
        route: Option<String>,
        event: Box<Event>,
        ghost: String,
    },
}

impl Supervisor {
    /// The synchronous part of ingest: dedupe, bookkeeping, the audit write, routing.
    fn ingest_step(&mut self, ghost_id: String, event: Event, writes: &mut Vec<Write>) -> Step {
        if let Some(stored) = self.events.get(&event.event_id) {
            m::EVENTS_DUPLICATE.inc();
            return Step::Now(Some(stored.clone()));
        }
        m::EVENTS_RECEIVED.inc();
        let now = shared::now_ms();
        if let Some(g) = self.ghosts.get_mut(&ghost_id) {
            g.events += 1;
            g.last_event_ms = now;
        }
        if event.ghost_id != ghost_id {
            tracing::warn!(component = "mirage.supervisor", ghost_id = %ghost_id, event_ghost = %event.ghost_id, event_id = %event.event_id, "event for another ghost on this session; rejected");
            let a = ack(&event, &ghost_id, AckStatus::Rejected, code::TRANSPORT);
            self.events.insert(a.clone(), now);
            return Step::Now(Some(a));
        }
        if shared::observe::is_observation(&event) {
            // State, not a command's answer: kept, acked, never routed to a plan.
            match self.observed.record(&ghost_id, &event, now) {
                // Observed checks of standing intents read it from the fleet snapshot.
                Ok(()) => {
                    self.fleet_changed.insert(ghost_id.clone());
                }
                Err(e) => {
                    tracing::warn!(component = "mirage.supervisor", ghost_id = %ghost_id, event_id = %event.event_id, seed = %event.seed_id, error = %e, "observation not kept");
                }
            }
            let a = ack(&event, &ghost_id, AckStatus::Accepted, 0);
            self.events.insert(a.clone(), now);
            return Step::Now(Some(a));
        }
        writes.push(Write::Event {
            event_id: event.event_id.clone(),
            ghost_id: ghost_id.clone(),
            command_id: event.command_id.clone(),
            intent_id: event.intent_id.clone(),
            outcome: event.outcome.as_str().to_owned(),
            at_ms: now,
        });
        let route = self.routes.remove(&event.command_id);
        tracing::debug!(target: "hop", hop = "event.ingest", command_id = %event.command_id);
        let plan = route
            .as_ref()
            .and_then(|id| self.active.get(id))
            .map(|a| a.addr.clone());
        Step::Plan {
            plan,
            route,
            event: Box::new(event),
            ghost: ghost_id,
        }
    }

    /// After the plan answered (or there was none): the ack, or none so the Ghost re-sends.
    fn ingest_done(
        &mut self,
        res: Result<(), String>,
        route: Option<String>,
        e: Event,
        ghost: String,
    ) -> Option<EventAck> {
        match res {
            Ok(()) => {
                let a = ack(&e, &ghost, AckStatus::Accepted, 0);
                self.events.insert(a.clone(), shared::now_ms());
                Some(a)
            }
            Err(err) => {
                tracing::error!(component = "mirage.supervisor", event_id = %e.event_id, ghost_id = %ghost, error = %err, "event not recorded; not acked, the ghost will send it again");
                if let Some(r) = route {
                    self.routes.insert(e.command_id.clone(), r);
                }
                None
            }
        }
    }

    fn store_writes(&self, writes: Vec<Write>) {
        if !writes.is_empty() {
            self.store.do_send(Put { writes, done: None });
        }
    }
}

/// Why an event failed, in the words the Ghost gave: its refusal, else the seed's stderr
/// (bounded) and a non-zero exit code.
fn failure_reason(e: &Event) -> Option<String> {
    const MAX: usize = 512;
    if let Some(r) = &e.error_reason {
        return Some(r.clone());
    }
    let mut text = e
        .stderr
        .as_ref()
        .map(|s| String::from_utf8_lossy(s).trim().to_owned())
        .unwrap_or_default();
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    match (text.is_empty(), e.exit_code.filter(|c| *c != 0)) {
        (true, None) => None,
        (true, Some(c)) => Some(format!("exit code {c}")),
        (false, None) => Some(text),
        (false, Some(c)) => Some(format!("{text} (exit code {c})")),
    }
}

/// The plan's answer for one event: Ok once its effect is persisted.
async fn to_plan(
    plan: Option<MeteredAddr<IntentPlan>>,
    e: &Event,
    ghost: &str,
) -> Result<(), String> {
    let Some(plan) = plan else { return Ok(()) };
    let input = Input::Event {
        ghost: ghost.to_owned(),
        command_id: e.command_id.clone(),
        event_id: e.event_id.clone(),
        outcome: e.outcome,
        reason: failure_reason(e),
        output: crate::plan::Output::from_bytes(
            e.stdout.as_deref(),
            e.stderr.as_deref(),
            e.exit_code,
        )
        .map(Box::new),
    };
    match plan.send(PlanMsg(input)).await {
        Ok(r) => r,
        Err(err) => Err(err.to_string()),
    }
}

impl Handler<Ingest> for Supervisor {
    type Result = ResponseActFuture<Self, Option<EventAck>>;

    fn handle(&mut self, m: Ingest, _: &mut Context<Self>) -> Self::Result {
        let mut writes = Vec::new();
        let step = self.ingest_step(m.ghost_id, m.event, &mut writes);
        self.store_writes(writes);
        match step {
            Step::Now(a) => Box::pin(fut::ready(a)),
            Step::Plan {
                plan,
                route,
                event,
                ghost,
            } => Box::pin(
                async move {
                    let res = to_plan(plan, &event, &ghost).await;
                    (res, event, ghost)
                }
                .into_actor(self)
                .map(move |(res, e, ghost), act, _| act.ingest_done(res, route, *e, ghost)),
            ),
        }
    }
}

/// Every event a session read in one go: one message and one store write for all of them.
/// Answers, per event in order, its frame's message_id and its ack (None: not recorded).
#[derive(Message)]
#[rtype(result = "Vec<(u64, Option<EventAck>)>")]
pub struct IngestBatch {
    pub ghost_id: String,
    pub events: Vec<(u64, Event)>,
}

impl Handler<IngestBatch> for Supervisor {
    type Result = ResponseActFuture<Self, Vec<(u64, Option<EventAck>)>>;

    fn handle(&mut self, m: IngestBatch, _: &mut Context<Self>) -> Self::Result {
        /// Per event: its answer now, or its place among the plans' answers.
        enum Slot {
            Now(Option<EventAck>),
            Wait(Option<String>),
        }
        let mut writes = Vec::new();
        let mut slots = Vec::with_capacity(m.events.len());
        let mut waits = Vec::new();
        for (msg_id, e) in m.events {
            match self.ingest_step(m.ghost_id.clone(), e, &mut writes) {
                Step::Now(a) => slots.push((msg_id, Slot::Now(a))),
                Step::Plan {
                    plan,
                    route,
                    event,
                    ghost,
                } => {
                    slots.push((msg_id, Slot::Wait(route)));
                    // The future owns its event and hands it back with the plan's answer.
                    waits.push(async move {
                        let res = to_plan(plan, &event, &ghost).await;
                        (res, event, ghost)
                    });
                }
            }
        }
        self.store_writes(writes);
        // Plans answer concurrently; answers keep the order of the events.
        Box::pin(
            futures::future::join_all(waits)
                .into_actor(self)
                .map(move |results, act, _| {
                    let mut results = results.into_iter();
                    slots
                        .into_iter()
                        .map(|(msg_id, slot)| match slot {
                            Slot::Now(a) => (msg_id, a),
                            Slot::Wait(route) => match results.next() {
                                Some((res, e, ghost)) => {
                                    (msg_id, act.ingest_done(res, route, *e, ghost))
                                }
                                None => (msg_id, None),
                            },
                        })
                        .collect()
                }),
        )
    }
}

// ------------------------------------------------------------------ plans

#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub intent_id: String,
    pub ghost: String,
    pub command: Command,
}

impl Handler<Dispatch> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Dispatch, ctx: &mut Context<Self>) {
        let cid = m.command.command_id.clone();
        tracing::debug!(target: "hop", hop = "command.dispatch", intent_id = %m.intent_id, command_id = %cid);
        if self
            .routes
            .insert(cid.clone(), m.intent_id.clone())
            .is_none()
        {
            self.intent_routes
                .entry(m.intent_id.clone())
                .or_default()
                .push(cid.clone());
        }
        self.interest
            .entry(m.ghost.clone())
            .or_default()
            .insert(m.intent_id.clone());
        let Some(g) = self.ghosts.get(&m.ghost) else {
            return;
        };
        // A verified session that takes commands, else the admin route, else wait.
        let session = g
            .session
            .as_ref()
            .filter(|_| g.verified && g.registration.has_capability(CAP_SESSION_COMMAND));
        let Some(session) = session else {
            if let (Some(addr), true) = (g.admin_addr.clone(), g.admin_ok) {
                self.dispatch_admin(addr, m.ghost, m.command, ctx);
            } else if g.session.is_some() && !g.registration.has_capability(CAP_SESSION_COMMAND) {
                tracing::warn!(component = "mirage.supervisor", ghost_id = %m.ghost, command_id = %cid, "ghost takes no commands on its session and has no [[ghost_admin]] entry; the step will time out");
            } else {
                tracing::debug!(component = "mirage.supervisor", ghost_id = %m.ghost, command_id = %cid, "ghost offline or not yet verified; command waits for it");
            }
            return;
        };
        m::COMMANDS_SENT.inc();
        session.do_send(SendCommand(m.command));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub enum LockOp {
    Acquire {
        key: String,
        owner: Owner,
        lease_ms: u64,
        plan: MeteredAddr<IntentPlan>,
    },
    Release {
        key: String,
        owner: Owner,
    },
    Renew {
        key: String,
        owner: Owner,
        lease_ms: u64,
    },
}

impl Handler<LockOp> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: LockOp, _: &mut Context<Self>) {
        match m {
            LockOp::Acquire {
                key,
                owner,
                lease_ms,
                plan,
            } => self.lock_actor(&key).do_send(LockMsg::Acquire {
                owner,
                lease_ms,
                plan,
            }),
            LockOp::Release { key, owner } => {
                self.lock_actor(&key).do_send(LockMsg::Release { owner })
            }
            LockOp::Renew {
                key,
                owner,
                lease_ms,
            } => self
                .lock_actor(&key)
                .do_send(LockMsg::Renew { owner, lease_ms }),
        }
    }
}

/// A plan wants to hear when `ghost` comes back (it owes that Ghost a catch-up).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub intent_id: String,
    pub ghost: String,
}

impl Handler<Watch> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Watch, _: &mut Context<Self>) {
        if !self.active.contains_key(&m.intent_id) {
            return;
        }
        let connected = self.ghosts.get(&m.ghost).is_some_and(|g| g.connected());
        self.interest
            .entry(m.ghost.clone())
            .or_default()
            .insert(m.intent_id.clone());
        // Came back before the plan asked: tell it now.
        if let Some(a) = self.active.get(&m.intent_id).filter(|_| connected) {
            a.addr.do_send(PlanMsg(Input::GhostUp(m.ghost)));
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PlanReport {
    pub intent_id: String,
    pub draft: ReportDraft,
    pub steps_total: usize,
    pub steps_done: usize,
}

impl Handler<PlanReport> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: PlanReport, _: &mut Context<Self>) {
        self.report_seq += 1;
        let d = m.draft;
        let r = ReportRecord {
            seq: self.report_seq,
            intent_id: m.intent_id.clone(),
            phase: d.phase,
            completion_state: d.state,
            summary: d.summary,
            step: d.step,
            steps_total: m.steps_total,
            steps_done: m.steps_done,
            command_id: d.command_id,
            event_id: d.event_id,
            ghost_id: d.ghost_id,
            outcome: d.outcome,
            timestamp_ms: shared::now_ms(),
        };
        // Progress at debug, the end at info: an intent logged ~3 report lines at info, a
        // share of throughput at default logging (issue 20); every report stays in the store
        // and on /v1/reports.
        if r.completion_state == shared::envelope::CompletionState::InProgress {
            tracing::debug!(component = "mirage.report", intent_id = %r.intent_id, phase = %r.phase, completion_state = %r.completion_state, summary = %r.summary);
        } else {
            tracing::info!(component = "mirage.report", intent_id = %r.intent_id, phase = %r.phase, completion_state = %r.completion_state, summary = %r.summary);
        }
        if let Some(a) = self.active.get_mut(&m.intent_id) {
            a.summary.steps_done = m.steps_done;
            a.summary.last_summary = r.summary.clone();
            a.summary.last_state = Some(r.completion_state);
            if r.completion_state == shared::envelope::CompletionState::Satisfied {
                a.summary.status = "satisfied".into();
            }
        }
        self.publish(r);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PlanFinished {
    pub intent_id: String,
    pub status: Status,
    pub plan: Box<Plan>,
}

impl Handler<PlanFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: PlanFinished, _: &mut Context<Self>) {
        let Some(a) = self.active.remove(&m.intent_id) else {
            return;
        };
        tracing::debug!(target: "hop", hop = "plan.finished", intent_id = %m.intent_id);
        self.forget_routes(&m.intent_id);
        let mut summary = a.summary;
        summary.status = m.status.as_str().to_owned();
        summary.steps_done = m.plan.steps_done;
        if let Some(ws) = self.waiters.remove(&m.intent_id) {
            self.waiter_count -= ws.len();
            for w in ws {
                let _ = w.send(summary.clone());
            }
        }
        self.remember_finished(summary, m.plan);
        self.finished_since_prune += 1;
        if self.finished_since_prune >= 1000 {
            self.finished_since_prune = 0;
            self.store.do_send(Put {
                writes: vec![Write::Prune {
                    keep_finished: self.cfg.limits.finished_intents as u64,
                    keep_reports: self.cfg.limits.reports as u64,
                }],
                done: None,
            });
        }
        let _ = a.seq;
    }
}

// ------------------------------------------------------------------ user boundary

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }
}

#[derive(Message)]
#[rtype(result = "Result<IntentSummary, ApiError>")]
pub struct Submit(pub Intent);

impl Handler<Submit> for Supervisor {
    type Result = ResponseActFuture<Self, Result<IntentSummary, ApiError>>;

    fn handle(&mut self, m: Submit, ctx: &mut Context<Self>) -> Self::Result {
        // Not restartable: a panic here ends the process (crate::supervision).
        crate::supervision::inject("supervisor");
        let id = m.0.intent_id.clone();
        if self.active.contains_key(&id) || self.finished.contains_key(&id) {
            return Box::pin(fut::ready(Err(ApiError::new(
                409,
                format!("intent {id} already exists; submit it under a new intent_id"),
            ))));
        }
        if self.active.len() >= self.cfg.limits.active_intents {
            return Box::pin(fut::ready(Err(ApiError::new(
                429,
                format!(
                    "{} intents are active (limit {}); try again later",
                    self.active.len(),
                    self.cfg.limits.active_intents
                ),
            ))));
        }
        self.flush_fleet();
        if let Err((idx, why)) = crate::plan::submit_check(&m.0, &self.fleet.borrow()) {
            tracing::info!(component = "mirage.supervisor", intent_id = %id, step = idx + 1, reason = %why, "intent refused at submit");
            let mut e = ApiError::new(400, format!("intent {id} refused: {why}"));
            e.field = Some(format!("step[{idx}]"));
            return Box::pin(fut::ready(Err(e)));
        }
        self.intent_seq += 1;
        m::INTENTS_SUBMITTED.inc();
        let mut plan = Plan::new(m.0, self.next_generation());
        plan.first_report_seq = self.report_seq + 1;
        let seq = self.intent_seq;
        let addr = self.start_plan(seq, plan, ctx);
        let summary = self.active.get(&id).map(|a| a.summary.clone());
        Box::pin(
            async move {
                match addr.send(PlanMsg(Input::Start)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(ApiError::new(503, format!("intent not persisted: {e}"))),
                    Err(e) => Err(ApiError::new(500, e.to_string())),
                }
            }
            .into_actor(self)
            .map(move |res, act, _| {
                if let Err(e) = res {
                    // Refused: nothing of it may stay behind (not active, not counted, its id
                    // free), and a row a later write might still land is removed after it.
                    if act.active.get(&id).is_some_and(|a| a.seq == seq) {
                        if let Some(a) = act.active.remove(&id) {
                            a.addr.do_send(Discard);
                        }
                        act.forget_routes(&id);
                        act.store.do_send(Put {
                            writes: vec![Write::Forget {
                                intent_id: id.clone(),
                                seq,
                            }],
                            done: None,
                        });
                        tracing::warn!(component = "mirage.supervisor", intent_id = %id, error = %e.error, "intent refused: its state could not be written");
                    }
                    return Err(e);
                }
                act.active
                    .get(&id)
                    .map(|a| a.summary.clone())
                    .or_else(|| act.finished.get(&id).map(|f| f.0.clone()))
                    .or(summary)
                    .ok_or_else(|| ApiError::new(500, "intent vanished"))
            }),
        )
    }
}

/// Resolves `tx` with the intent's summary once it has finished (at once if it already has).
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct WaitFinished {
    pub intent_id: String,
    pub tx: tokio::sync::oneshot::Sender<IntentSummary>,
}

impl Handler<WaitFinished> for Supervisor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, m: WaitFinished, _: &mut Context<Self>) -> Self::Result {
        let a = self.active.get(&m.intent_id);
        // A standing intent stays active while it is kept; it has no finish to wait for.
        // Satisfied but still active (catching up offline Ghosts): answered with that now.
        if let Some(a) = a.filter(|a| a.summary.status == "satisfied") {
            let _ = m.tx.send(a.summary.clone());
            return Ok(());
        }
        if a.is_none() || a.is_some_and(|a| a.summary.status == "standing") {
            return match self.finished.get(&m.intent_id) {
                Some((s, _)) => {
                    let _ = m.tx.send(s.clone());
                    Ok(())
                }
                None if a.is_some() => Err(ApiError::new(
                    409,
                    format!(
                        "intent {} is standing; it finishes only when withdrawn",
                        m.intent_id
                    ),
                )),
                None => Err(ApiError::new(404, format!("no intent {}", m.intent_id))),
            };
        }
        if self.waiter_count >= MAX_WAITERS {
            // Sweep callers that stopped waiting before refusing anyone.
            let mut n = 0;
            self.waiters.retain(|_, ws| {
                ws.retain(|w| !w.is_closed());
                n += ws.len();
                !ws.is_empty()
            });
            self.waiter_count = n;
            if n >= MAX_WAITERS {
                return Err(ApiError::new(
                    429,
                    format!("{n} callers are already waiting for intents; poll instead"),
                ));
            }
        }
        self.waiter_count += 1;
        self.waiters.entry(m.intent_id).or_default().push(m.tx);
        Ok(())
    }
}

/// Answers "withdrawn", or "withdrawing" while a running blocking command keeps its lock.
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct Withdraw(pub String);

impl Handler<Withdraw> for Supervisor {
    type Result = ResponseActFuture<Self, Result<String, ApiError>>;

    fn handle(&mut self, m: Withdraw, _: &mut Context<Self>) -> Self::Result {
        let Some(a) = self.active.get(&m.0) else {
            let e = if self.finished.contains_key(&m.0) {
                ApiError::new(409, format!("intent {} has already finished", m.0))
            } else {
                ApiError::new(404, format!("no intent {}", m.0))
            };
            return Box::pin(fut::ready(Err(e)));
        };
        let addr = a.addr.clone();
        let id = m.0.clone();
        Box::pin(
            async move {
                addr.send(PlanMsg(Input::Withdraw {
                    why: "withdrawn by an operator".into(),
                }))
                .await
                .map_err(|e| ApiError::new(500, e.to_string()))?
                .map_err(|e| ApiError::new(503, e))?;
                // A stopped plan has finished: withdrawn.
                let draining = addr
                    .send(Snapshot)
                    .await
                    .is_ok_and(|p| p.withdrawing.is_some() && p.status == Status::Active);
                Ok(draining)
            }
            .into_actor(self)
            .map(move |res: Result<bool, ApiError>, act, _| {
                let draining = res?;
                if draining {
                    if let Some(a) = act.active.get_mut(&id) {
                        a.summary.status = "withdrawing".into();
                    }
                    return Ok("withdrawing".into());
                }
                Ok("withdrawn".into())
            }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct BreakLock(pub String);

impl Handler<BreakLock> for Supervisor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, m: BreakLock, _: &mut Context<Self>) -> Self::Result {
        match self.locks.get(&m.0) {
            Some(l) => {
                tracing::warn!(component = "mirage.supervisor", key = %m.0, "lock broken by an operator");
                l.do_send(LockMsg::Break);
                Ok(())
            }
            None => Err(ApiError::new(404, format!("no lock {}", m.0))),
        }
    }
}

/// `mirage ghost drain|undrain ID`: Ok(true) when the Ghost is known to the registry.
#[derive(Message)]
#[rtype(result = "Result<bool, ApiError>")]
pub struct SetDrain {
    pub ghost: String,
    pub drained: bool,
}

impl Handler<SetDrain> for Supervisor {
    type Result = Result<bool, ApiError>;

    fn handle(&mut self, m: SetDrain, _: &mut Context<Self>) -> Self::Result {
        let mut next = self.drained.clone();
        let changed = if m.drained {
            if next.len() >= crate::drain::MAX {
                return Err(ApiError::new(429, "too many drained Ghosts"));
            }
            next.insert(m.ghost.clone())
        } else {
            next.remove(&m.ghost)
        };
        if changed {
            crate::drain::save(&self.cfg.data_dir, &next).map_err(|e| ApiError::new(500, e))?;
            self.drained = next;
            if self.ghosts.contains_key(&m.ghost) {
                self.fleet_changed.insert(m.ghost.clone());
                self.flush_fleet();
            }
        }
        tracing::info!(component = "mirage.supervisor", ghost_id = %m.ghost, drained = m.drained, "ghost drain set by an operator");
        Ok(self.ghosts.contains_key(&m.ghost))
    }
}

/// A page of the fleet in ghost_id order: ids after `after`, at most `limit` of them.
#[derive(Message)]
#[rtype(result = "GhostPage")]
pub struct ListGhosts {
    pub after: Option<String>,
    pub limit: usize,
}

impl ListGhosts {
    pub fn all() -> ListGhosts {
        ListGhosts {
            after: None,
            limit: usize::MAX,
        }
    }
}

pub struct GhostPage {
    pub ghosts: Vec<GhostInfo>,
    /// The cursor for the next page (the last ghost_id here), when there is more.
    pub next: Option<String>,
    pub total: usize,
}

/// One Ghost by id.
#[derive(Message)]
#[rtype(result = "Option<GhostInfo>")]
pub struct GetGhost(pub String);

impl Supervisor {
    fn ghost_info(&self, id: &str, g: &GhostEntry, now: u64) -> GhostInfo {
        GhostInfo {
            ghost_id: id.to_owned(),
            connected: g.connected(),
            session_id: g.session_id.clone(),
            peer: g.peer.clone(),
            registered_ms: g.registered_ms,
            last_event_ms: g.last_event_ms,
            events: g.events,
            heartbeats: g.heartbeats,
            last_heartbeat_ms: g.last_heartbeat_ms,
            last_seen_ms: g.last_event_ms.max(g.last_heartbeat_ms),
            session_commands: g.registration.has_capability(CAP_SESSION_COMMAND),
            labels: g.registration.labels.clone(),
            seeds: g.registration.seeds().to_vec(),
            local: id == self.cfg.local_ghost,
            via_admin: g.admin_addr.clone(),
            instance_id: g.registration.instance().map(str::to_owned),
            conflict: g
                .conflict
                .clone()
                .filter(|c| now.saturating_sub(c.last_ms) <= CONFLICT_STALE_MS),
            observed: self.observed.of(id),
            clock_skew_ms: self.clock_skew.get(id).copied(),
            clock_warning: self
                .clock_skew
                .get(id)
                .and_then(|s| crate::skew::warning(*s)),
            drained: self.drained.contains(id),
        }
    }
}

impl Handler<ListGhosts> for Supervisor {
    type Result = MessageResult<ListGhosts>;

    fn handle(&mut self, m: ListGhosts, _: &mut Context<Self>) -> Self::Result {
        use std::ops::Bound;
        let now = shared::now_ms();
        let start = match &m.after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        let mut it = self.ghosts.range((start, Bound::Unbounded));
        let ghosts: Vec<GhostInfo> = it
            .by_ref()
            .take(m.limit)
            .map(|(id, g)| self.ghost_info(id, g, now))
            .collect();
        let next = it
            .next()
            .and_then(|_| ghosts.last().map(|g| g.ghost_id.clone()));
        MessageResult(GhostPage {
            ghosts,
            next,
            total: self.ghosts.len(),
        })
    }
}

impl Handler<GetGhost> for Supervisor {
    type Result = MessageResult<GetGhost>;

    fn handle(&mut self, m: GetGhost, _: &mut Context<Self>) -> Self::Result {
        let now = shared::now_ms();
        MessageResult(self.ghosts.get(&m.0).map(|g| self.ghost_info(&m.0, g, now)))
    }
}

#[derive(Message)]
#[rtype(result = "Vec<IntentSummary>")]
pub struct ListIntents {
    pub limit: usize,
}

impl Handler<ListIntents> for Supervisor {
    type Result = MessageResult<ListIntents>;

    fn handle(&mut self, m: ListIntents, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<IntentSummary> = self
            .active
            .values()
            .map(|a| a.summary.clone())
            .chain(self.finished.values().map(|f| f.0.clone()))
            .collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.submitted_seq));
        v.truncate(m.limit);
        MessageResult(v)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IntentDetail {
    pub summary: IntentSummary,
    pub plan: Plan,
    pub reports: Vec<ReportRecord>,
}

#[derive(Message)]
#[rtype(result = "Result<IntentDetail, ApiError>")]
pub struct GetIntent(pub String);

impl Handler<GetIntent> for Supervisor {
    type Result = ResponseActFuture<Self, Result<IntentDetail, ApiError>>;

    fn handle(&mut self, m: GetIntent, _: &mut Context<Self>) -> Self::Result {
        let mut reports = self
            .reports
            .query(Some(&m.0), 0, self.cfg.limits.reports_per_intent);
        // Only this submission's: a reused intent_id's earlier run is history, not this one.
        let since = self
            .active
            .get(&m.0)
            .map(|a| a.summary.first_report_seq)
            .or_else(|| self.finished.get(&m.0).map(|f| f.1.first_report_seq))
            .unwrap_or(0);
        reports.retain(|r| r.seq >= since);
        if let Some((summary, plan)) = self.finished.get(&m.0) {
            return Box::pin(fut::ready(Ok(IntentDetail {
                summary: summary.clone(),
                plan: (**plan).clone(),
                reports,
            })));
        }
        let Some(a) = self.active.get(&m.0) else {
            return Box::pin(fut::ready(Err(ApiError::new(
                404,
                format!("no intent {}", m.0),
            ))));
        };
        let (addr, summary) = (a.addr.clone(), a.summary.clone());
        Box::pin(
            async move {
                let plan = addr
                    .send(Snapshot)
                    .await
                    .map_err(|e| ApiError::new(500, e.to_string()))?;
                Ok(IntentDetail {
                    summary,
                    plan,
                    reports,
                })
            }
            .into_actor(self),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Vec<ReportRecord>")]
pub struct QueryReports {
    pub intent: Option<String>,
    pub after: u64,
    pub limit: usize,
}

impl Handler<QueryReports> for Supervisor {
    type Result = MessageResult<QueryReports>;

    fn handle(&mut self, m: QueryReports, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.reports.query(m.intent.as_deref(), m.after, m.limit))
    }
}

#[derive(Message)]
#[rtype(result = "Vec<LockQueue>")]
pub struct ListLocks;

impl Handler<ListLocks> for Supervisor {
    type Result = ResponseActFuture<Self, Vec<LockQueue>>;

    fn handle(&mut self, _: ListLocks, _: &mut Context<Self>) -> Self::Result {
        let addrs: Vec<_> = self.locks.values().cloned().collect();
        let restored: Vec<LockQueue> = self.restored_locks.values().cloned().collect();
        Box::pin(
            async move {
                let mut out = restored;
                for a in addrs {
                    if let Ok(q) = a.send(LockState).await {
                        out.push(q);
                    }
                }
                // Idle locks stay listed: their last token shows how far fencing has come.
                out.sort_by(|a, b| a.key.cmp(&b.key));
                out
            }
            .into_actor(self),
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub mirage_id: String,
    pub ghosts_connected: usize,
    pub ghosts_known: usize,
    /// Disconnected Ghosts still remembered (bounded by `limits.disconnected_ghosts`).
    pub ghosts_disconnected: usize,
    pub intents_active: usize,
    pub intents_finished_kept: usize,
    pub reports_kept: usize,
    pub event_window: usize,
    pub routes: usize,
    pub locks: usize,
    /// The store's disk: "ok", "disk full" (writes fail) or "disk low: no reserve".
    pub store: &'static str,
}

#[derive(Message)]
#[rtype(result = "Overview")]
pub struct GetOverview;

impl Handler<GetOverview> for Supervisor {
    type Result = MessageResult<GetOverview>;

    fn handle(&mut self, _: GetOverview, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Overview {
            mirage_id: self.cfg.mirage_id.clone(),
            ghosts_connected: self.ghosts.values().filter(|g| g.connected()).count(),
            ghosts_known: self.ghosts.len(),
            ghosts_disconnected: self.disconnected_n,
            intents_active: self.active.len(),
            intents_finished_kept: self.finished.len(),
            reports_kept: self.reports.len(),
            event_window: self.events.len(),
            routes: self.routes.len(),
            locks: self.locks.len(),
            store: crate::store::DISK.status(),
        })
    }
}

actorkit::metered!(Supervisor, Ingest);
actorkit::metered!(Supervisor, IngestBatch);
actorkit::metered!(Supervisor, Heartbeats);
actorkit::metered!(Supervisor, Dispatch);
actorkit::metered!(Supervisor, Register);
actorkit::metered!(Supervisor, SessionClosed);
actorkit::metered!(Supervisor, Submit);
actorkit::metered!(Supervisor, PlanReport);
actorkit::metered!(Supervisor, LockOp);
actorkit::metered!(Supervisor, SessionVerified);
actorkit::metered!(Supervisor, ClockSkew);
actorkit::metered!(Supervisor, Watch);
actorkit::metered!(Supervisor, PlanFinished);
actorkit::metered!(Supervisor, WaitFinished);
actorkit::metered!(Supervisor, Withdraw);
actorkit::metered!(Supervisor, BreakLock);
actorkit::metered!(Supervisor, SetDrain);
actorkit::metered_result!(Supervisor, ListGhosts);
actorkit::metered_result!(Supervisor, GetGhost);
actorkit::metered_result!(Supervisor, ListIntents);
actorkit::metered!(Supervisor, GetIntent);
actorkit::metered_result!(Supervisor, QueryReports);
actorkit::metered!(Supervisor, ListLocks);
actorkit::metered_result!(Supervisor, GetOverview);

#[cfg(test)]
mod tests {
    use super::*;
    use shared::envelope::Outcome;

    fn ev() -> Event {
        Event::new("e", "c", "i", "g", "seed.kv", Outcome::Error)
    }

    #[test]
    fn a_failure_names_the_seeds_words_and_exit_code() {
        let mut e = ev();
        assert_eq!(failure_reason(&e), None);
        e.exit_code = Some(1);
        assert_eq!(failure_reason(&e).as_deref(), Some("exit code 1"));
        e.stderr = Some(bytes::Bytes::from_static(b"missing key=k\n"));
        assert_eq!(
            failure_reason(&e).as_deref(),
            Some("missing key=k (exit code 1)")
        );
        e.error_reason = Some("stale lock_token".into());
        assert_eq!(failure_reason(&e).as_deref(), Some("stale lock_token"));
        let mut long = ev();
        long.stderr = Some(bytes::Bytes::from("é".repeat(1000)));
        let r = failure_reason(&long).unwrap();
        assert!(
            r.len() <= 512 + '…'.len_utf8() && r.ends_with('…'),
            "{}",
            r.len()
        );
    }

    #[test]
    fn claim_rule() {
        // Nobody holds the id.
        assert_eq!(claim(None, Some("a")), Claim::Free);
        assert_eq!(claim(None, None), Claim::Free);
        // The same instance again: a reconnect, takes the session over.
        assert_eq!(claim(Some(Some("a")), Some("a")), Claim::Takeover);
        // Another instance while the holder lives: refused.
        assert_eq!(claim(Some(Some("a")), Some("b")), Claim::Conflict);
        // Either side without an instance_id (edgectl): today's takeover.
        assert_eq!(claim(Some(Some("a")), None), Claim::Takeover);
        assert_eq!(claim(Some(None), Some("b")), Claim::Takeover);
        assert_eq!(claim(Some(None), None), Claim::Takeover);
    }
}
