//! Mirage, the orchestrator. This crate grows the Supervisor, sessions, plans, locks and the
//! user boundary; today it holds the operator tools.

pub mod wire_tool;
