//! `IntentPlan`: one per active intent. Feeds inputs to the pure [`Plan`], persists the new
//! state, and only then executes the effects (dispatch, locks, reports). Stops when the plan
//! is finished.

use actix::prelude::*;
use shared::metrics::MeteredAddr;
use tokio::sync::oneshot;

use super::supervisor::{Dispatch, LockOp, PlanFinished, PlanReport, Supervisor};
use super::FleetHandle;
use crate::plan::{Effect, Input, Plan, Status};
use crate::store::{Put, Store, Write};

pub struct IntentPlan {
    pub plan: Plan,
    pub seq: u64,
    supervisor: Addr<Supervisor>,
    store: MeteredAddr<Store>,
    fleet: FleetHandle,
    finished: bool,
    timer: Option<SpawnHandle>,
    timer_at: u64,
    /// Inputs persisted-but-not-answered; the actor stops only when this is 0, so no caller
    /// waiting on an earlier input sees a closed mailbox.
    in_flight: usize,
}

/// How often a plan waiting for a placement looks again.
const PLACEMENT_RETRY_MS: u64 = 250;

impl IntentPlan {
    pub fn new(
        plan: Plan,
        seq: u64,
        supervisor: Addr<Supervisor>,
        store: MeteredAddr<Store>,
        fleet: FleetHandle,
    ) -> IntentPlan {
        IntentPlan {
            plan,
            seq,
            supervisor,
            store,
            fleet,
            finished: false,
            timer: None,
            timer_at: 0,
            in_flight: 0,
        }
    }

    fn stop_when_idle(&mut self, ctx: &mut Context<Self>) {
        if self.finished && self.in_flight == 0 {
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
            ctx.address().do_send(PlanMsg(Input::Tick));
        }));
    }

    pub fn status_word(plan: &Plan) -> &'static str {
        match plan.status {
            Status::Satisfied if plan.intent.keep_ms.is_some() => "standing",
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

    /// Persist, then act. Resolves when the state is on disk and the effects are out.
    fn apply(
        &mut self,
        fx: Vec<Effect>,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let writes = self.write().into_iter().collect();
        self.in_flight += 1;
        self.store.do_send(Put {
            writes,
            done: Some(tx),
        });
        let _ = ctx;
        Box::pin(
            async move { rx.await.map_err(|_| "store gone".to_string())? }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.in_flight -= 1;
                    if let Err(e) = &res {
                        tracing::error!(component = "mirage.plan", intent_id = %act.plan.intent.intent_id, error = %e, "plan state not persisted; effects held back");
                        act.stop_when_idle(ctx);
                        return res;
                    }
                    act.execute(fx, ctx);
                    if !act.finished {
                        act.schedule(ctx);
                    }
                    act.stop_when_idle(ctx);
                    res
                }),
        )
    }

    fn execute(&mut self, fx: Vec<Effect>, ctx: &mut Context<Self>) {
        let id = self.plan.intent.intent_id.clone();
        let me = ctx.address();
        for e in fx {
            match e {
                Effect::Acquire {
                    key,
                    owner,
                    lease_ms,
                } => self.supervisor.do_send(LockOp::Acquire {
                    key,
                    owner,
                    lease_ms,
                    plan: me.clone(),
                }),
                Effect::Release { key, owner } => {
                    self.supervisor.do_send(LockOp::Release { key, owner })
                }
                Effect::Renew {
                    key,
                    owner,
                    lease_ms,
                } => self.supervisor.do_send(LockOp::Renew {
                    key,
                    owner,
                    lease_ms,
                }),
                Effect::Dispatch {
                    ghost,
                    command,
                    kind: _,
                } => self.supervisor.do_send(Dispatch {
                    intent_id: id.clone(),
                    ghost,
                    command,
                }),
                Effect::Report(draft) => self.supervisor.do_send(PlanReport {
                    intent_id: id.clone(),
                    draft,
                    steps_total: self.plan.intent.steps.len(),
                    steps_done: self.plan.steps_done,
                }),
                Effect::Finished(status) => {
                    self.finished = true;
                    self.supervisor.do_send(PlanFinished {
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

    fn started(&mut self, _: &mut Context<Self>) {
        shared::metrics::actor("mirage.intent_plan").instance_started();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        shared::metrics::actor("mirage.intent_plan").instance_stopped();
    }
}

/// An input for the plan; resolves once its new state is persisted and its effects are out.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct PlanMsg(pub Input);

impl Handler<PlanMsg> for IntentPlan {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, m: PlanMsg, ctx: &mut Context<Self>) -> Self::Result {
        if self.finished {
            return Box::pin(fut::ready(Ok(())));
        }
        let fleet = self.fleet.borrow().clone();
        let before = self.plan.clone();
        let fx = self.plan.handle(m.0, shared::now_ms(), &fleet);
        if fx.is_empty() && before == self.plan {
            self.schedule(ctx);
            return Box::pin(fut::ready(Ok(())));
        }
        self.apply(fx, ctx)
    }
}

/// After a restart: re-acquire locks and re-send unanswered commands.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Resume;

impl Handler<Resume> for IntentPlan {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, _: Resume, ctx: &mut Context<Self>) -> Self::Result {
        let fleet = self.fleet.borrow().clone();
        let fx = self.plan.resume(shared::now_ms(), &fleet);
        self.apply(fx, ctx)
    }
}

/// A copy of the plan for queries.
#[derive(Message)]
#[rtype(result = "Plan")]
pub struct Snapshot;

impl Handler<Snapshot> for IntentPlan {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.plan.clone())
    }
}

shared::metered!(IntentPlan, PlanMsg);
