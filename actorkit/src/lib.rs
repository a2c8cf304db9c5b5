//! Actor helpers shared by Mirage and Ghost. The protocol crate (`shared`) has no actix;
//! what needs actix lives here.

pub mod metrics;
