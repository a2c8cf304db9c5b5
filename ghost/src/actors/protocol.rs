//! Messages between the link and the outbox, defined apart from both actors so neither
//! file imports the other (no file cycle): the outbox reaches the link through a
//! [`LinkHandle`] that names only the message it sends.

use actix::prelude::*;
use actorkit::metrics::MeteredRecipient;

use crate::logic::ToSend;

/// Sent to the link: put these events on the wire.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendEvents(pub Vec<ToSend>);

/// The outbox's handle on the live link (metered like any address).
pub type LinkHandle = MeteredRecipient<SendEvents>;

/// Sent to the outbox: the session came up (with the link to send through) or went down.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Link {
    Up(LinkHandle),
    Down,
}

/// Sent to the outbox: Mirage's `event.ack` for one event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acked {
    pub event_id: String,
    pub accepted: bool,
    pub reason: String,
}
