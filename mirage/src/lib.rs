//! Mirage, the orchestrator: Ghost sessions, intent plans, seed locks, reports, durable state,
//! and the operator tools. [`Mirage::start`] runs it in-process (tests, embedding).

pub mod actors;
pub mod admin_client;
pub mod api;
pub mod certs;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod drain;
pub mod embed;
pub mod fleet;
pub mod ha;
pub mod history;
pub mod intent;
pub mod lock;
pub mod metrics;
pub mod observe;
pub mod orchestrator;
pub mod plan;
pub mod raft_keep;
pub mod server;
pub mod skew;
pub mod step;
pub mod storage_move;
pub mod store;
pub mod store_etcd;
pub mod supervision;
pub mod tls;
pub mod wire_tool;

pub use embed::{Mirage, Running};
