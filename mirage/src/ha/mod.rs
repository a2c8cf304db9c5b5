//! High availability over etcd (issue 15, first slice): leader election on one etcd key bound
//! to a lease, and fenced writes. Not yet wired into the store or dispatch.
//!
//! - `state`: the pure leadership state machine (no clock, no sockets).
//! - `gateway`: a thin etcd v3 client over etcd's JSON gateway.
//! - `elector`: the task that drives the machine against etcd, and the handle for writes.

pub mod elector;
pub mod gateway;
pub mod state;

pub use elector::{spawn, ElectorConfig, HaHandle, WriteError};
pub use gateway::{Etcd, EtcdError, Fence, FenceError, Kv};
pub use state::{Action, Input, LeaseId, Machine, Role};
