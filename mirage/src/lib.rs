//! Mirage, the orchestrator. This crate grows the Supervisor, sessions, plans, locks and the
//! user boundary; today it holds the operator tools.

pub mod intent;
pub mod lock;
pub mod plan;
pub mod wire_tool;
