//! The `Outbox`: every terminal event is persisted before it is sent, stays until Mirage
//! accepts it, goes again after a reconnect, a restart or an overdue ack, and is marked failed
//! on a rejected ack. Many events are in flight at once.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use shared::metrics::MeteredAddr;

use crate::logic::{OutboxState, ToSend};
use crate::store::{Persist, Store, Update};

/// Sent to the link: put these events on the wire.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendEvents(pub Vec<ToSend>);

pub struct Outbox {
    state: OutboxState,
    store: MeteredAddr<Store>,
    link: Option<MeteredAddr<crate::actors::link::MirageLink>>,
    ack_timeout_ms: u64,
    pub acked: u64,
    pub failed: u64,
    /// Acks and rejections handed to the store but not yet on disk: until then a crash sends
    /// those events again (allowed: delivery is at least once).
    unsynced: usize,
}

impl Outbox {
    pub fn new(state: OutboxState, store: MeteredAddr<Store>, ack_timeout_ms: u64) -> Outbox {
        Outbox {
            state,
            store,
            link: None,
            ack_timeout_ms,
            acked: 0,
            failed: 0,
            unsynced: 0,
        }
    }

    fn flush(&mut self) {
        let Some(link) = &self.link else { return };
        let batch = self.state.to_send(shared::now_ms(), self.ack_timeout_ms);
        if !batch.is_empty() {
            link.do_send(SendEvents(batch));
        }
    }
}

impl Actor for Outbox {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        shared::metrics::actor("ghost.outbox").instance_started();
        // Overdue acks are found by this tick.
        ctx.run_interval(Duration::from_millis(250), |act, _| act.flush());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        shared::metrics::actor("ghost.outbox").instance_stopped();
    }
}

/// Persist and queue a terminal event. Resolves once it is on disk.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Enqueue {
    pub event_id: String,
    pub command_id: Option<String>,
    pub payload: Bytes,
    /// false for an admin-run command: persisted as its execution record, answered in the
    /// admin reply only, never sent on the session (edgectl's Mirage would count it twice).
    pub session: bool,
}

impl Handler<Enqueue> for Outbox {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, m: Enqueue, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let persist = Persist {
            event_id: m.event_id.clone(),
            command_id: m.command_id,
            payload: m.payload.clone(),
            now_ms: shared::now_ms(),
            session: m.session,
        };
        Box::pin(
            async move {
                store
                    .send(persist)
                    .await
                    .map_err(|e| format!("store mailbox: {e}"))?
            }
            .into_actor(self)
            .map(move |res, act, _| {
                let seq = res?;
                if m.session {
                    act.state.push(seq, m.event_id, m.payload);
                    act.flush();
                }
                Ok(())
            }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Acked {
    pub event_id: String,
    pub accepted: bool,
    pub reason: String,
}

impl Handler<Acked> for Outbox {
    type Result = ();

    fn handle(&mut self, m: Acked, ctx: &mut Context<Self>) {
        if self.state.on_ack(&m.event_id).is_none() {
            tracing::debug!(component = "ghost.outbox", event_id = %m.event_id, "ack for an event not waiting (duplicate ack)");
            return;
        }
        let update = if m.accepted {
            self.acked += 1;
            Update::Acked {
                event_id: m.event_id,
            }
        } else {
            self.failed += 1;
            tracing::warn!(component = "ghost.outbox", event_id = %m.event_id, reason = %m.reason, "event rejected by Mirage; marked failed");
            Update::Failed {
                event_id: m.event_id,
                reason: m.reason,
            }
        };
        self.unsynced += 1;
        let store = self.store.clone();
        ctx.spawn(
            async move { store.send(update).await }
                .into_actor(self)
                .map(|_, act, _| act.unsynced = act.unsynced.saturating_sub(1)),
        );
        self.flush();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub enum Link {
    Up(MeteredAddr<crate::actors::link::MirageLink>),
    Down,
}

impl Handler<Link> for Outbox {
    type Result = ();

    fn handle(&mut self, m: Link, _: &mut Context<Self>) {
        match m {
            Link::Up(r) => {
                self.link = Some(r);
                // Whatever was on the wire before is sent again on the new session.
                self.state.on_disconnect();
                self.flush();
            }
            Link::Down => {
                self.link = None;
                self.state.on_disconnect();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OutboxStats {
    pub pending: usize,
    pub in_flight: usize,
    pub acked: u64,
    pub failed: u64,
    /// Acknowledged events whose removal is not yet on disk.
    pub unsynced: usize,
}

#[derive(Message)]
#[rtype(result = "OutboxStats")]
pub struct Stats;

impl Handler<Stats> for Outbox {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(OutboxStats {
            pending: self.state.len(),
            in_flight: self.state.in_flight(),
            acked: self.acked,
            failed: self.failed,
            unsynced: self.unsynced,
        })
    }
}

shared::metered!(Outbox, Enqueue);
shared::metered!(Outbox, Acked);
shared::metered!(Outbox, Link);

impl Handler<shared::metrics::Metered<Stats>> for Outbox {
    type Result = MessageResult<shared::metrics::Metered<Stats>>;
    fn handle(
        &mut self,
        m: shared::metrics::Metered<Stats>,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        let MessageResult(s) = <Self as Handler<Stats>>::handle(self, m.msg, ctx);
        m.guard.handled(std::time::Duration::ZERO);
        MessageResult(s)
    }
}
