//! Events to plans, acks back: the core decides (dedupe, routing, what is acked); this sends
//! each command's event to its plan and answers once the plan has persisted it.

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use shared::envelope::{Event, EventAck};

use super::Supervisor;
use crate::actors::intent_plan::IntentPlan;
use crate::actors::protocol::{Ingest, IngestBatch, PlanError, PlanMsg};
use crate::orchestrator::ingest::plan_input;
use crate::orchestrator::Decision;

/// Why an event's plan did not record it: the plan's reason, or it did not answer.
#[derive(Debug, thiserror::Error)]
enum NotRecorded {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Mailbox(#[from] MailboxError),
}

/// What ingesting one event needs: an answer now, or its plan's word first.
enum Step {
    Now(EventAck),
    Plan(ToPlan),
}

/// One event waiting for its plan's word.
struct ToPlan {
    plan: Option<MeteredAddr<IntentPlan>>,
    route: Option<String>,
    event: Box<Event>,
    ghost: String,
}

impl Supervisor {
    /// The core's decision for one event, with the plan it goes to (none: no active plan).
    fn ingest_one(
        &mut self,
        ghost_id: String,
        event: Event,
        writes: &mut Vec<crate::store::Write>,
    ) -> Step {
        match self.core.ingest(ghost_id, event, shared::now_ms(), writes) {
            Decision::Now(a) => Step::Now(a),
            Decision::Plan {
                route,
                event,
                ghost,
            } => Step::Plan(ToPlan {
                plan: route
                    .as_ref()
                    .and_then(|id| self.active.get(id))
                    .map(|a| a.addr.clone()),
                route,
                event,
                ghost,
            }),
        }
    }

    fn ingest_done(
        &mut self,
        res: Result<(), NotRecorded>,
        route: Option<String>,
        e: &Event,
        ghost: &str,
    ) -> Option<EventAck> {
        self.core
            .ingest_done(res, route, e, ghost, shared::now_ms())
    }
}

impl ToPlan {
    /// The plan's answer for the event: Ok once its effect is persisted.
    async fn ask(self) -> (Result<(), NotRecorded>, Option<String>, Box<Event>, String) {
        let res = match &self.plan {
            None => Ok(()),
            Some(plan) => match plan
                .send(PlanMsg(plan_input(&self.event, &self.ghost)))
                .await
            {
                Ok(r) => r.map_err(NotRecorded::from),
                Err(err) => Err(NotRecorded::from(err)),
            },
        };
        (res, self.route, self.event, self.ghost)
    }
}

impl Handler<Ingest> for Supervisor {
    type Result = ResponseActFuture<Self, Option<EventAck>>;

    fn handle(&mut self, m: Ingest, _: &mut Context<Self>) -> Self::Result {
        let mut writes = Vec::new();
        let step = self.ingest_one(m.ghost_id, m.event, &mut writes);
        self.store_writes(writes);
        match step {
            Step::Now(a) => Box::pin(fut::ready(Some(a))),
            Step::Plan(to_plan) => Box::pin(to_plan.ask().into_actor(self).map(
                move |(res, route, e, ghost), act, _| act.ingest_done(res, route, &e, &ghost),
            )),
        }
    }
}

impl Handler<IngestBatch> for Supervisor {
    type Result = ResponseActFuture<Self, Vec<(u64, Option<EventAck>)>>;

    fn handle(&mut self, m: IngestBatch, _: &mut Context<Self>) -> Self::Result {
        /// Per event: its answer now, or its place among the plans' answers.
        enum Slot {
            Now(EventAck),
            Wait,
        }
        let mut writes = Vec::new();
        let mut slots = Vec::with_capacity(m.events.len());
        let mut waits = Vec::new();
        for (msg_id, e) in m.events {
            match self.ingest_one(m.ghost_id.clone(), e, &mut writes) {
                Step::Now(a) => slots.push((msg_id, Slot::Now(a))),
                Step::Plan(to_plan) => {
                    slots.push((msg_id, Slot::Wait));
                    // The future owns its event and hands it back with the plan's answer.
                    waits.push(to_plan.ask());
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
                            Slot::Now(a) => (msg_id, Some(a)),
                            Slot::Wait => match results.next() {
                                Some((res, route, e, ghost)) => {
                                    (msg_id, act.ingest_done(res, route, &e, &ghost))
                                }
                                None => (msg_id, None),
                            },
                        })
                        .collect()
                }),
        )
    }
}

actorkit::metered!(Supervisor, Ingest);
actorkit::metered!(Supervisor, IngestBatch);
