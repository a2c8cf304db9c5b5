//! The Ghost's actors (DESIGN.md §3): `MirageLink`, `Dispatcher`, one actor per seed, the
//! `Outbox`, and the `Store` writer. Every address that carries traffic is metered.

pub mod dispatcher;
pub mod link;
pub mod outbox;
pub mod protocol;
pub mod seed;
