//! Ghost, the node agent: hosts seeds, dials its Mirage, executes commands, and keeps every
//! event in a durable outbox until Mirage acknowledges it.

pub mod actors;
pub mod admin;
pub mod children;
pub mod config;
pub mod doctor;
pub mod instance;
pub mod logic;
pub mod reserve;
pub mod runtime;
pub mod seeds;
pub mod store;
pub mod swarm;
pub mod tls;
