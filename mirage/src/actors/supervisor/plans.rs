//! Plans' effects: start plans and lock actors, send commands where the core routes them,
//! locks, reports (history, store, hub), a finished plan's end.

use std::sync::Arc;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;

use super::{Active, IntentSummary, Supervisor};
use crate::actors::intent_plan::IntentPlan;
use crate::actors::protocol::{
    Dispatch, LockMsg, LockOp, PlanFinished, PlanMsg, PlanReport, SendCommand, SupervisorForPlan,
    Watch,
};
use crate::actors::report_stream::Publish;
use crate::actors::seed_lock::SeedLock;
use crate::history::ReportRecord;
use crate::lock::LockQueue;
use crate::metrics as m;
use crate::orchestrator::Route;
use crate::plan::{Input, Plan};
use crate::store::{Put, Write};

impl Supervisor {
    pub(super) fn start_plan(
        &mut self,
        seq: u64,
        plan: Plan,
        ctx: &mut Context<Self>,
    ) -> MeteredAddr<IntentPlan> {
        let id = plan.intent.intent_id.clone();
        let summary = IntentSummary::of(&plan, seq);
        let (me, store, fleet) = (
            SupervisorForPlan::from(MeteredAddr::new(ctx.address(), "mirage.supervisor")),
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

impl Handler<Dispatch> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Dispatch, ctx: &mut Context<Self>) {
        let cid = m.command.command_id.clone();
        tracing::debug!(target: "hop", hop = "command.dispatch", intent_id = %m.intent_id, command_id = %cid);
        match self.core.dispatch(&m.intent_id, &m.ghost, &cid) {
            Route::Session(session) => {
                m::COMMANDS_SENT.inc();
                session.commands.do_send(SendCommand(m.command));
            }
            Route::Admin(addr) => self.dispatch_admin(addr, m.ghost, m.command, ctx),
            Route::NoCommands => {
                tracing::warn!(component = "mirage.supervisor", ghost_id = %m.ghost, command_id = %cid, "ghost takes no commands on its session and has no [[ghost_admin]] entry; the step will time out");
            }
            Route::Waiting => {
                tracing::debug!(component = "mirage.supervisor", ghost_id = %m.ghost, command_id = %cid, "ghost offline or not yet verified; command waits for it");
            }
            Route::Unknown => {}
        }
    }
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

impl Handler<Watch> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: Watch, _: &mut Context<Self>) {
        if !self.active.contains_key(&m.intent_id) {
            return;
        }
        let connected = self.core.watch(&m.intent_id, &m.ghost);
        // Came back before the plan asked: tell it now.
        if let Some(a) = self.active.get(&m.intent_id).filter(|_| connected) {
            a.addr.do_send(PlanMsg(Input::GhostUp(m.ghost)));
        }
    }
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

impl Handler<PlanFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: PlanFinished, _: &mut Context<Self>) {
        let Some(a) = self.active.remove(&m.intent_id) else {
            return;
        };
        tracing::debug!(target: "hop", hop = "plan.finished", intent_id = %m.intent_id);
        self.core.routes.forget(&m.intent_id);
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
    }
}

actorkit::metered!(Supervisor, Dispatch);
actorkit::metered!(Supervisor, LockOp);
actorkit::metered!(Supervisor, Watch);
actorkit::metered!(Supervisor, PlanReport);
actorkit::metered!(Supervisor, PlanFinished);
