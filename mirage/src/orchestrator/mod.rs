//! The orchestrator core (pure): the fleet registry, the routes from commands to intents,
//! and the ingest decisions (dedupe by event id, which events reach a plan, what is acked),
//! beside the pure plan (`plan.rs`) and lock (`lock.rs`) cores. The `Supervisor` actor
//! (actors/supervisor.rs) owns the I/O and calls this; nothing here touches a socket, an
//! actor or a clock (time comes in as `now`, ms).

pub mod ingest;
pub mod registry;
pub mod routes;

use std::sync::Arc;

use shared::envelope::{AckStatus, Event, EventAck};
use shared::error::code;

use crate::config::MirageConfig;
use crate::history::EventWindow;
use crate::metrics as m;
use crate::store::Write;

pub use registry::{Registry, Route};
pub use routes::Routes;

/// What ingesting one event needs: an answer now, or its plan's word first.
#[derive(Debug)]
pub enum Decision {
    /// A duplicate (the stored ack again), an event for another Ghost (rejected), or an
    /// observation (kept and accepted): answered now, never routed to a plan.
    Now(EventAck),
    /// A command's event: to the plan `route` names (none: no active plan; acked once its
    /// audit row is written), then [`Orchestrator::ingest_done`].
    Plan {
        route: Option<String>,
        event: Box<Event>,
        ghost: String,
    },
}

pub struct Orchestrator<S> {
    pub fleet: Registry<S>,
    pub routes: Routes,
    pub events: EventWindow,
}

impl<S> Orchestrator<S> {
    pub fn new(cfg: Arc<MirageConfig>, drained: std::collections::BTreeSet<String>) -> Self {
        Orchestrator {
            events: EventWindow::new(cfg.limits.event_window_ms, cfg.limits.event_window),
            fleet: Registry::new(cfg, drained),
            routes: Routes::default(),
        }
    }

    /// The synchronous part of ingest: dedupe, bookkeeping, the audit write (pushed on
    /// `writes`), routing.
    pub fn ingest(
        &mut self,
        ghost_id: String,
        event: Event,
        now: u64,
        writes: &mut Vec<Write>,
    ) -> Decision {
        if let Some(stored) = self.events.get(&event.event_id) {
            m::EVENTS_DUPLICATE.inc();
            return Decision::Now(stored.clone());
        }
        m::EVENTS_RECEIVED.inc();
        self.fleet.event_seen(&ghost_id, now);
        if event.ghost_id != ghost_id {
            tracing::warn!(component = "mirage.supervisor", ghost_id = %ghost_id, event_ghost = %event.ghost_id, event_id = %event.event_id, "event for another ghost on this session; rejected");
            let a = ingest::ack(&event, &ghost_id, AckStatus::Rejected, code::TRANSPORT, now);
            self.events.insert(a.clone(), now);
            return Decision::Now(a);
        }
        if shared::observe::is_observation(&event) {
            // State, not a command's answer: kept, acked, never routed to a plan.
            self.fleet.observe(&ghost_id, &event, now);
            let a = ingest::ack(&event, &ghost_id, AckStatus::Accepted, 0, now);
            self.events.insert(a.clone(), now);
            return Decision::Now(a);
        }
        writes.push(Write::Event {
            event_id: event.event_id.clone(),
            ghost_id: ghost_id.clone(),
            command_id: event.command_id.clone(),
            intent_id: event.intent_id.clone(),
            outcome: event.outcome.as_str().to_owned(),
            at_ms: now,
        });
        let route = self.routes.take(&event.command_id);
        tracing::debug!(target: "hop", hop = "event.ingest", command_id = %event.command_id);
        Decision::Plan {
            route,
            event: Box::new(event),
            ghost: ghost_id,
        }
    }

    /// After the plan answered (`Err`: why the event could not be recorded): the ack, or
    /// none so the Ghost sends it again (its route is kept for that).
    pub fn ingest_done<E: std::fmt::Display>(
        &mut self,
        res: Result<(), E>,
        route: Option<String>,
        e: &Event,
        ghost: &str,
        now: u64,
    ) -> Option<EventAck> {
        match res {
            Ok(()) => {
                let a = ingest::ack(e, ghost, AckStatus::Accepted, 0, now);
                self.events.insert(a.clone(), now);
                Some(a)
            }
            Err(err) => {
                tracing::error!(component = "mirage.supervisor", event_id = %e.event_id, ghost_id = %ghost, error = %err, "event not recorded; not acked, the ghost will send it again");
                if let Some(r) = route {
                    self.routes.restore(&e.command_id, r);
                }
                None
            }
        }
    }

    /// A plan's command for `ghost`: its event will find `intent`; where it goes now.
    pub fn dispatch(&mut self, intent: &str, ghost: &str, command_id: &str) -> Route<'_, S> {
        self.routes.dispatched(intent, ghost, command_id);
        self.fleet.route(ghost)
    }

    /// A plan wants to hear when `ghost` comes back: true when it is connected already.
    pub fn watch(&mut self, intent: &str, ghost: &str) -> bool {
        self.routes.watch(intent, ghost);
        self.fleet.connected(ghost)
    }

    /// Once a second: old event ids and long-gone Ghosts go.
    pub fn tick(&mut self, now: u64) {
        self.events.expire(now);
        self.fleet.evict_disconnected(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::envelope::Outcome;
    use shared::handshake::{Registration, CAP_SESSION_COMMAND};

    fn orch() -> Orchestrator<u32> {
        let mut o = Orchestrator::new(Arc::new(MirageConfig::default()), Default::default());
        let reg = Registration {
            ghost_id: "g1".into(),
            peer_identity: "g1".into(),
            seed_list: Some(vec![]),
            capabilities: vec![CAP_SESSION_COMMAND.to_owned()],
            ..Default::default()
        };
        assert!(o.fleet.register(reg, 1, "p".into(), 10).is_ok());
        o
    }

    fn ev(id: &str, cid: &str, ghost: &str) -> Event {
        Event::new(id, cid, "i1", ghost, "seed.kv", Outcome::Success)
    }

    #[test]
    fn a_command_event_goes_to_its_plan_once_and_a_duplicate_gets_the_same_ack() {
        let mut o = orch();
        assert!(matches!(o.dispatch("i1", "g1", "c1"), Route::Session(1)));
        let mut writes = Vec::new();
        let d = o.ingest("g1".into(), ev("e1", "c1", "g1"), 100, &mut writes);
        let Decision::Plan {
            route,
            event,
            ghost,
        } = d
        else {
            panic!("a command's event goes to its plan: {d:?}");
        };
        assert_eq!(route.as_deref(), Some("i1"));
        assert_eq!(writes.len(), 1, "one audit row");
        assert!(
            o.events.get("e1").is_none(),
            "not acked before the plan's word"
        );
        let a = o.ingest_done(Ok::<(), String>(()), route, &event, &ghost, 101);
        assert_eq!(a.as_ref().map(|a| a.ack_status), Some(AckStatus::Accepted));
        // The Ghost sends it again (its ack was lost): the same ack, no second audit row.
        let again = o.ingest("g1".into(), ev("e1", "c1", "g1"), 102, &mut writes);
        let Decision::Now(b) = again else {
            panic!("a duplicate is answered now");
        };
        assert_eq!(Some(b), a);
        assert_eq!(writes.len(), 1);
        assert_eq!(o.fleet.get("g1").map(|g| g.events), Some(1));
    }

    #[test]
    fn an_event_not_recorded_is_not_acked_and_keeps_its_route() {
        let mut o = orch();
        let _ = o.dispatch("i1", "g1", "c1");
        let mut writes = Vec::new();
        let Decision::Plan {
            route,
            event,
            ghost,
        } = o.ingest("g1".into(), ev("e1", "c1", "g1"), 100, &mut writes)
        else {
            panic!("to the plan");
        };
        let failed = o.ingest_done(Err("store gone"), route, &event, &ghost, 101);
        assert_eq!(failed, None, "no ack: the Ghost sends it again");
        let Decision::Plan { route, .. } =
            o.ingest("g1".into(), ev("e1", "c1", "g1"), 102, &mut writes)
        else {
            panic!("the re-sent event goes to the plan again");
        };
        assert_eq!(route.as_deref(), Some("i1"));
    }

    #[test]
    fn an_event_for_another_ghost_is_rejected_and_an_observation_is_kept() {
        let mut o = orch();
        let mut writes = Vec::new();
        let d = o.ingest("g1".into(), ev("e1", "c1", "g2"), 100, &mut writes);
        let Decision::Now(a) = d else {
            panic!("answered now");
        };
        assert_eq!(
            (a.ack_status, a.ack_code),
            (AckStatus::Rejected, code::TRANSPORT)
        );
        assert!(writes.is_empty());
        // An event whose command no plan knows still gets its audit row and no route.
        let d = o.ingest("g1".into(), ev("e2", "c9", "g1"), 100, &mut writes);
        assert!(matches!(d, Decision::Plan { route: None, .. }), "{d:?}");
    }

    #[test]
    fn the_window_forgets_old_event_ids() {
        let mut o = orch();
        let mut writes = Vec::new();
        let _ = o.ingest("g1".into(), ev("e1", "c1", "g2"), 100, &mut writes);
        assert!(o.events.get("e1").is_some());
        o.tick(100 + MirageConfig::default().limits.event_window_ms + 1);
        assert!(o.events.get("e1").is_none());
    }

    #[test]
    fn watch_says_whether_the_ghost_is_back_already() {
        let mut o = orch();
        assert!(o.watch("i1", "g1"));
        assert!(!o.watch("i1", "g2"));
        assert_eq!(o.routes.interested("g2").collect::<Vec<_>>(), ["i1"]);
    }
}
