//! The outbox's disk reserve (`data_dir/outbox.reserve`, `outbox.reserve_bytes`); the
//! mechanism is [`shared::reserve`], which Mirage's store uses too.

use std::path::Path;

pub use shared::reserve::Reserve;

pub const FILE: &str = "outbox.reserve";

pub fn outbox(data_dir: &Path, bytes: u64) -> Reserve {
    Reserve::new(data_dir.join(FILE), bytes, "ghost.outbox")
}
