//! Ghost, the node agent: hosts seeds, dials its Mirage, executes commands, and keeps every
//! event in a durable outbox until Mirage acknowledges it.

pub mod logic;
pub mod seeds;
