//! Mirage's actors (DESIGN.md §3): `Supervisor`, one `GhostSession` per connection, one
//! `IntentPlan` per active intent, one `SeedLock` per lock key, the `Store` writer, and the `ReportHub` with one `ReportStream` per
//! report subscriber.
//! Orchestration actors share the orchestrator Arbiter (one thread), so they share the
//! current fleet view by `Rc`; sessions live on their own Arbiters and talk by address.

pub mod intent_plan;
pub mod protocol;
pub mod report_stream;
pub mod seed_lock;
pub mod session;
pub mod supervisor;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::plan::FleetView;

/// The latest fleet snapshot, replaced (not mutated) by the Supervisor.
pub type FleetHandle = Rc<RefCell<Arc<FleetView>>>;
