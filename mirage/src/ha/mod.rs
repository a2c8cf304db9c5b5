//! High availability over etcd (issue 15): leader election on one etcd key bound to a lease,
//! fenced writes (the store's etcd backend, `store_etcd.rs`, commits through them), and what
//! a Mirage that does not lead serves (`follower`).
//!
//! - `state`: the pure leadership state machine (no clock, no sockets).
//! - `gateway`: a thin etcd v3 client over etcd's JSON gateway.
//! - `elector`: the task that drives the machine against etcd, and the handle for writes.
//! - `status`: this process's leadership as `/v1/overview` and `/metrics` show it.
//! - `follower`: the HTTP API of a Mirage that does not lead (overview, health, 307s).

pub mod elector;
pub mod follower;
pub mod gateway;
pub mod state;
pub mod status;

pub use elector::{spawn, ElectorConfig, HaHandle, WriteError};
pub use gateway::{Chain, Etcd, EtcdError, Fence, FenceError, Kv, Op};
pub use state::{Action, Input, LeaseId, Machine, Role};
