//! `IntentPlan`: one per active intent. Feeds inputs to the pure [`Plan`], persists the new
//! state, and only then executes the effects (dispatch, locks, reports). Stops when the plan
//! is finished.

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use tokio::sync::oneshot;

use super::protocol::{
    Discard, Dispatch, LockOp, PlanError, PlanFinished, PlanHandle, PlanMsg, PlanReport, Resume,
    Snapshot, SupervisorForPlan, Watch,
};
use super::FleetHandle;
use crate::plan::{Effect, Input, Plan, Status};
use crate::store::{Put, Store, Write};

pub struct IntentPlan {
    pub plan: Plan,
    pub seq: u64,
    supervisor: SupervisorForPlan,
    store: MeteredAddr<Store>,
    fleet: FleetHandle,
    finished: bool,
    timer: Option<SpawnHandle>,
    timer_at: u64,
    /// A write of the plan is being committed.
    persisting: bool,
    /// State changed since the write in flight was taken: write again when it lands.
    dirty: bool,
    /// Effects and callers of inputs not yet covered by a committed write. Inputs arriving
    /// while a write commits share the next one, so a step over thousands of Ghosts costs
    /// one serialisation per commit, not one per event (which was quadratic).
    pending_fx: Vec<Effect>,
    pending_replies: Vec<oneshot::Sender<Result<(), PlanError>>>,
    /// Writes that failed in a row (a full disk, say): the state stays in memory, its
    /// effects stay pending, and the write is tried again after a backoff, so the plan goes
    /// on by itself once the store takes writes again.
    write_failures: u32,
    retry: Option<SpawnHandle>,
    /// The plan as last committed to the store (the same JSON): a restart after a panic
    /// starts again from it, as a process restart would.
    committed: String,
    /// JSON of the write in flight, committed when it lands.
    in_flight: Option<String>,
    /// Set by `restarting`: `started` resumes the plan.
    resume_on_start: bool,
}

/// How often a plan waiting for a placement looks again.
const PLACEMENT_RETRY_MS: u64 = 250;

impl IntentPlan {
    pub fn new(
        plan: Plan,
        seq: u64,
        supervisor: SupervisorForPlan,
        store: MeteredAddr<Store>,
        fleet: FleetHandle,
    ) -> IntentPlan {
        let committed = serde_json::to_string(&plan).unwrap_or_default();
        IntentPlan {
            committed,
            in_flight: None,
            resume_on_start: false,
            plan,
            seq,
            supervisor,
            store,
            fleet,
            finished: false,
            timer: None,
            timer_at: 0,
            persisting: false,
            dirty: false,
            pending_fx: Vec::new(),
            pending_replies: Vec::new(),
            write_failures: 0,
            retry: None,
        }
    }

    /// 250 ms, doubling, at most 5 s.
    fn retry_delay(failures: u32) -> std::time::Duration {
        let ms = 250u64.saturating_mul(1 << failures.saturating_sub(1).min(5));
        std::time::Duration::from_millis(ms.min(5_000))
    }

    fn schedule_retry(&mut self, ctx: &mut Context<Self>) {
        if self.retry.is_some() {
            return;
        }
        let delay = Self::retry_delay(self.write_failures);
        self.retry = Some(ctx.run_later(delay, |act, ctx| {
            act.retry = None;
            if act.dirty && !act.persisting {
                act.flush(ctx);
            }
        }));
    }

    fn stop_when_idle(&mut self, ctx: &mut Context<Self>) {
        if self.finished && !self.persisting && self.pending_replies.is_empty() {
            ctx.stop();
        }
    }

    /// Wake this plan exactly when it next needs a tick.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let now = shared::now_ms();
        let Some(at) = self.plan.next_wakeup(now, PLACEMENT_RETRY_MS) else {
            if let Some(h) = self.timer.take() {
                ctx.cancel_future(h);
            }
            return;
        };
        if self.timer.is_some() && self.timer_at == at {
            return;
        }
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        self.timer_at = at;
        let delay = std::time::Duration::from_millis(at.saturating_sub(now));
        self.timer = Some(ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            // A self-send, metered like any other input.
            MeteredAddr::new(ctx.address(), "mirage.intent_plan").do_send(PlanMsg(Input::Tick));
        }));
    }

    /// This plan as a lock sees it: metered like its address.
    fn handle_of(ctx: &Context<Self>) -> PlanHandle {
        let me = MeteredAddr::new(ctx.address(), "mirage.intent_plan");
        PlanHandle {
            input: me.recipient(),
            resume: me.recipient(),
        }
    }

    pub fn status_word(plan: &Plan) -> &'static str {
        match plan.status {
            // Kept, or owing offline Ghosts a catch-up: still active (restored at a restart).
            Status::Satisfied if plan.intent.keep_ms.is_some() || !plan.catch_up.is_empty() => {
                "standing"
            }
            s => s.as_str(),
        }
    }

    fn write(&self) -> Option<Write> {
        match serde_json::to_string(&self.plan) {
            Ok(json) => Some(Write::Intent {
                intent_id: self.plan.intent.intent_id.clone(),
                seq: self.seq,
                status: Self::status_word(&self.plan).to_owned(),
                plan: json,
                updated_ms: shared::now_ms(),
            }),
            Err(e) => {
                tracing::error!(component = "mirage.plan", intent_id = %self.plan.intent.intent_id, error = %e, "cannot serialise plan");
                None
            }
        }
    }

    /// Persist, then act: queue the effects and the caller's reply behind the next write.
    /// The reply resolves once the state is on disk and the effects are out.
    fn apply(
        &mut self,
        fx: Vec<Effect>,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<(), PlanError>> {
        let (tx, rx) = oneshot::channel();
        self.pending_fx.extend(fx);
        self.pending_replies.push(tx);
        self.dirty = true;
        if !self.persisting {
            self.flush(ctx);
        }
        rx
    }

    /// One write for everything pending; when it commits, its effects go out and its callers
    /// are answered, then whatever arrived meanwhile is written the same way.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.dirty = false;
        let fx = std::mem::take(&mut self.pending_fx);
        let replies = std::mem::take(&mut self.pending_replies);
        let Some(write) = self.write() else {
            for r in replies {
                let _ = r.send(Err(PlanError::Unserialisable));
            }
            return;
        };
        self.persisting = true;
        if let Write::Intent { plan, .. } = &write {
            self.in_flight = Some(plan.clone());
        }
        let (tx, rx) = oneshot::channel();
        self.store.do_send(Put {
            writes: vec![write],
            done: Some(tx),
        });
        ctx.spawn(
            async move {
                match rx.await {
                    Ok(r) => r.map_err(PlanError::Store),
                    Err(_) => Err(PlanError::StoreGone),
                }
            }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.persisting = false;
                    match &res {
                        Ok(()) => {
                            tracing::debug!(target: "hop", hop = "plan.persisted", intent_id = %act.plan.intent.intent_id);
                            if let Some(j) = act.in_flight.take() {
                                act.committed = j;
                            }
                            if act.write_failures > 0 {
                                tracing::info!(component = "mirage.plan", intent_id = %act.plan.intent.intent_id, failures = act.write_failures, "plan state persisted again; held-back effects go out");
                            }
                            act.write_failures = 0;
                            act.execute(fx, ctx);
                        }
                        Err(e) => {
                            // The state in memory is ahead of the disk: keep its effects
                            // (before any that came later) and write it again, rather than
                            // lose them (a step whose event was taken in would never move on).
                            act.write_failures = act.write_failures.saturating_add(1);
                            tracing::error!(component = "mirage.plan", intent_id = %act.plan.intent.intent_id, error = %e, failures = act.write_failures, retry_in_ms = Self::retry_delay(act.write_failures).as_millis() as u64, "plan state not persisted; effects held back until a write succeeds");
                            let later = std::mem::replace(&mut act.pending_fx, fx);
                            act.pending_fx.extend(later);
                            act.dirty = true;
                        }
                    }
                    for r in replies {
                        let _ = r.send(res.clone());
                    }
                    if res.is_err() {
                        act.schedule_retry(ctx);
                        // Deadlines still fall due while the disk is full.
                        if !act.finished {
                            act.schedule(ctx);
                        }
                    } else if act.dirty && !act.pending_replies.is_empty() {
                        act.flush(ctx);
                    } else if !act.finished {
                        act.schedule(ctx);
                    }
                    act.stop_when_idle(ctx);
                }),
        );
    }

    fn execute(&mut self, fx: Vec<Effect>, ctx: &mut Context<Self>) {
        let id = self.plan.intent.intent_id.clone();
        for e in fx {
            match e {
                Effect::Acquire {
                    key,
                    owner,
                    lease_ms,
                } => self.supervisor.lock.do_send(LockOp::Acquire {
                    key,
                    owner,
                    lease_ms,
                    plan: Self::handle_of(ctx),
                }),
                Effect::Release { key, owner } => {
                    self.supervisor.lock.do_send(LockOp::Release { key, owner })
                }
                Effect::Renew {
                    key,
                    owner,
                    lease_ms,
                } => self.supervisor.lock.do_send(LockOp::Renew {
                    key,
                    owner,
                    lease_ms,
                }),
                Effect::Dispatch {
                    ghost,
                    command,
                    kind: _,
                } => self.supervisor.dispatch.do_send(Dispatch {
                    intent_id: id.clone(),
                    ghost,
                    command,
                }),
                Effect::Watch { ghost } => self.supervisor.watch.do_send(Watch {
                    intent_id: id.clone(),
                    ghost,
                }),
                Effect::Report(draft) => self.supervisor.report.do_send(PlanReport {
                    intent_id: id.clone(),
                    draft,
                    steps_total: self.plan.intent.steps.len(),
                    steps_done: self.plan.steps_done,
                }),
                Effect::Finished(status) => {
                    self.finished = true;
                    self.supervisor.finished.do_send(PlanFinished {
                        intent_id: id.clone(),
                        status,
                        plan: Box::new(self.plan.clone()),
                    });
                    if let Some(h) = self.timer.take() {
                        ctx.cancel_future(h);
                    }
                }
            }
        }
    }
}

impl Actor for IntentPlan {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.intent_plan").instance_started();
        if std::mem::take(&mut self.resume_on_start) {
            // As after a process restart: re-acquire locks, re-send unanswered commands.
            let fleet = self.fleet.borrow().clone();
            let fx = self.plan.resume(shared::now_ms(), &fleet);
            // Nobody waits for this answer.
            drop(self.apply(fx, ctx));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.intent_plan").instance_stopped();
    }
}

impl Supervised for IntentPlan {
    /// After a panic in a handler (see `crate::supervision`): back to the committed state.
    /// A finished plan that stopped on purpose is left finished: it stays idle until its
    /// last address goes, and then stops for good.
    fn restarting(&mut self, _: &mut Context<Self>) {
        if self.finished {
            return;
        }
        let id = self.plan.intent.intent_id.clone();
        match serde_json::from_str::<Plan>(&self.committed) {
            Ok(p) => self.plan = p,
            Err(e) => {
                tracing::error!(component = "mirage.plan", intent_id = %id, error = %e, "committed plan unreadable; restarting from memory");
            }
        }
        // Spawned futures (the write in flight, timers) went with the old context.
        self.timer = None;
        self.retry = None;
        self.persisting = false;
        self.dirty = false;
        self.in_flight = None;
        self.pending_fx.clear();
        for r in self.pending_replies.drain(..) {
            let _ = r.send(Err(PlanError::Restarted));
        }
        self.resume_on_start = true;
        tracing::warn!(component = "mirage.plan", intent_id = %id, steps_done = self.plan.steps_done, "intent plan restarted from its persisted state");
    }
}

impl Handler<PlanMsg> for IntentPlan {
    type Result = ResponseFuture<Result<(), PlanError>>;

    fn handle(&mut self, m: PlanMsg, ctx: &mut Context<Self>) -> Self::Result {
        if self.finished {
            return Box::pin(async { Ok(()) });
        }
        let fleet = self.fleet.borrow().clone();
        // Only a tick or an unrelated Ghost coming up can leave the plan as it was; comparing
        // a copy for every event would cost O(Ghosts) per event on a large step.
        let before = matches!(m.0, Input::Tick | Input::GhostUp(_)).then(|| self.plan.clone());
        let is_event = matches!(m.0, Input::Event { .. });
        let input = m.0;
        let handled = crate::supervision::restartable(|| {
            if is_event {
                crate::supervision::inject("plan");
            }
            self.plan.handle(input, shared::now_ms(), &fleet)
        });
        let fx = match handled {
            Ok(fx) => fx,
            Err(why) => {
                tracing::error!(component = "mirage.plan", intent_id = %self.plan.intent.intent_id, panic = %why, "intent plan panicked; restarting it from its persisted state");
                ctx.stop();
                return Box::pin(async move { Err(PlanError::Panicked(why)) });
            }
        };
        if fx.is_empty() && before.is_some_and(|b| b == self.plan) {
            if !self.persisting {
                self.schedule(ctx);
            }
            return Box::pin(async { Ok(()) });
        }
        let rx = self.apply(fx, ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(PlanError::Stopped)) })
    }
}

impl Handler<Resume> for IntentPlan {
    type Result = ResponseFuture<Result<(), PlanError>>;

    fn handle(&mut self, _: Resume, ctx: &mut Context<Self>) -> Self::Result {
        let fleet = self.fleet.borrow().clone();
        let fx = self.plan.resume(shared::now_ms(), &fleet);
        let rx = self.apply(fx, ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(PlanError::Stopped)) })
    }
}

impl Handler<Discard> for IntentPlan {
    type Result = ();

    fn handle(&mut self, _: Discard, ctx: &mut Context<Self>) {
        self.finished = true;
        self.dirty = false;
        self.pending_fx.clear();
        for r in self.pending_replies.drain(..) {
            let _ = r.send(Err(PlanError::Discarded));
        }
        for h in [self.timer.take(), self.retry.take()].into_iter().flatten() {
            ctx.cancel_future(h);
        }
        ctx.stop();
    }
}

impl Handler<Snapshot> for IntentPlan {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.plan.clone())
    }
}

actorkit::metered!(IntentPlan, PlanMsg);
actorkit::metered!(IntentPlan, Resume);
actorkit::metered!(IntentPlan, Discard);
actorkit::metered_result!(IntentPlan, Snapshot);
