//! The `Outbox`: every terminal event is persisted before it is sent, stays until Mirage
//! accepts it, goes again after a reconnect, a restart or an overdue ack, and is marked failed
//! on a rejected ack. Many events are in flight at once.
//!
//! When the store cannot persist an event (a full disk), the outbox first gives back its
//! disk reserve and tries again; if that fails too it is *failing*: the dispatcher sends
//! terminal events that are not persisted ([`EnqueueVolatile`], kept in memory until acked)
//! and refuses new commands with the reason, so Mirage learns why at once. A probe write
//! every second finds out when the store works again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::actors::protocol::LinkHandle;
use crate::actors::protocol::{Acked, Link, SendEvents};
use crate::logic::OutboxState;
use crate::reserve::Reserve;
use crate::store::{Inline, Persist, PersistBatch, SettleBatch, Store, Update};

/// Sequence numbers of events that are not persisted: above every store seq, so they are
/// sent after the persisted ones, and never confused with them.
const VOLATILE_SEQ: u64 = 1 << 62;
/// Events not persisted kept at once (each one answers a command refused or run while the
/// store failed; Mirage sends at most its in-flight window to a Ghost).
const MAX_VOLATILE: usize = 4096;
/// A probe write while failing, every this many 250 ms ticks.
const PROBE_TICKS: u64 = 4;
/// While the reserve is not held, whether it can be made again is checked this often.
const RESERVE_TICKS: u64 = 20;

/// Whether the outbox can persist events: `Some(reason)` while it cannot. Shared with the
/// dispatcher, which refuses commands while it is set.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    pub fn failing(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, reason: &str) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let first = g.is_none();
        *g = Some(reason.to_owned());
        first
    }

    fn clear(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }
}

pub struct Outbox {
    state: OutboxState,
    store: MeteredAddr<Store>,
    link: Option<LinkHandle>,
    ack_timeout_ms: u64,
    pub acked: u64,
    pub failed: u64,
    /// Acks and rejections handed to the store but not yet on disk: until then a crash sends
    /// those events again (allowed: delivery is at least once).
    unsynced: usize,
    health: Health,
    reserve: Option<Arc<Reserve>>,
    /// event_ids of events sent without being persisted (no store update on their ack).
    volatile: HashSet<String>,
    volatile_seq: u64,
    pub volatile_sent: u64,
    probing: bool,
    ticks: u64,
    /// Group commit: events that arrived while a batch was being persisted go together in
    /// the next one (one transaction for many concurrent commands), each answered once its
    /// batch is on disk.
    to_persist: Vec<(Enqueue, oneshot::Sender<Result<(), String>>)>,
    persisting: bool,
    /// Batches of at most [`INLINE_MAX`] events commit on this thread when the store thread
    /// is idle (`None`: always on the store thread).
    inline: Option<Inline>,
    /// Acks and rejections waiting for the next settle batch, and whether one is in flight.
    to_settle: Vec<(String, Option<String>)>,
    settling: bool,
}

/// Events in one persist transaction at most.
const MAX_PERSIST_BATCH: usize = 256;
/// A batch this small commits inline (one event at low load): a commit is tens of µs, two
/// thread crossings cost as much on a busy machine. Bigger ones go to the store thread, off
/// this event loop, which also runs the session and the dispatcher.
const INLINE_MAX: usize = 4;

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
            health: Health::default(),
            reserve: None,
            volatile: HashSet::new(),
            volatile_seq: VOLATILE_SEQ,
            volatile_sent: 0,
            probing: false,
            ticks: 0,
            to_persist: Vec::new(),
            persisting: false,
            inline: None,
            to_settle: Vec::new(),
            settling: false,
        }
    }

    /// Persists everything queued in one transaction; when it lands, answers each caller
    /// and queues the session's events for sending, then starts the next batch. A small
    /// batch first lets the events already in the mailbox join it (one yield), then commits
    /// inline if the store thread is idle.
    fn persist_pending(&mut self, ctx: &mut Context<Self>) {
        if self.persisting || self.to_persist.is_empty() {
            return;
        }
        if self.inline.is_some()
            && self.to_persist.len() <= INLINE_MAX
            && self.health.failing().is_none()
        {
            self.persisting = true;
            ctx.spawn(
                tokio::task::yield_now()
                    .into_actor(self)
                    .map(|(), act, ctx| {
                        act.persisting = false;
                        act.commit_pending(ctx, true);
                    }),
            );
            return;
        }
        self.commit_pending(ctx, false);
    }

    fn commit_pending(&mut self, ctx: &mut Context<Self>, try_inline: bool) {
        if self.persisting || self.to_persist.is_empty() {
            return;
        }
        let n = self.to_persist.len().min(MAX_PERSIST_BATCH);
        let now_ms = shared::now_ms();
        let rows: Vec<Persist> = self.to_persist[..n]
            .iter()
            .map(|(m, _)| Persist {
                event_id: m.event_id.clone(),
                command_id: m.command_id.clone(),
                payload: m.payload.clone(),
                now_ms,
                session: m.session,
            })
            .collect();
        // Not while acks are on their way to the store thread: an event re-sent after its
        // ack (a replayed duplicate) must not be written before that ack's delete.
        if try_inline && n <= INLINE_MAX && !self.settling {
            // Busy or failed: the store thread decides (and gives back the reserve).
            if let Some(Ok(seqs)) = self.inline.as_ref().and_then(|i| i.try_persist(&rows)) {
                let batch: Vec<_> = self.to_persist.drain(..n).collect();
                self.persisted(batch, Ok(seqs));
                return self.persist_pending(ctx);
            }
        }
        self.persisting = true;
        let batch: Vec<_> = self.to_persist.drain(..n).collect();
        let store = self.store.clone();
        let reserve = self.reserve.clone();
        ctx.spawn(
            async move {
                let send = |rows: Vec<Persist>| async {
                    store
                        .send(PersistBatch(rows))
                        .await
                        .map_err(|e| format!("store mailbox: {e}"))?
                };
                match send(rows.clone()).await {
                    Ok(seqs) => Ok(seqs),
                    Err(e) => match reserve.filter(|r| r.release()) {
                        // Space for these and the next events while the operator makes room.
                        Some(r) => {
                            tracing::error!(component = "ghost.outbox", events = rows.len(), error = %e, reserve_bytes = r.bytes(), "events not persisted; released the outbox disk reserve and trying again");
                            send(rows).await
                        }
                        None => Err(e),
                    },
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.persisting = false;
                act.persisted(batch, res);
                act.persist_pending(ctx);
            }),
        );
    }

    /// A batch's commit is over: answer each caller; a committed session event is queued
    /// for sending.
    fn persisted(
        &mut self,
        batch: Vec<(Enqueue, oneshot::Sender<Result<(), String>>)>,
        res: Result<Vec<u64>, String>,
    ) {
        match res {
            Ok(seqs) => {
                self.on_persist_ok();
                let mut queued = false;
                for ((m, tx), seq) in batch.into_iter().zip(seqs) {
                    if m.session {
                        let cid = m.command_id.as_deref().unwrap_or("");
                        tracing::debug!(target: "hop", hop = "ghost.persisted", command_id = %cid);
                        self.state.push(seq, m.event_id, m.payload);
                        queued = true;
                    }
                    let _ = tx.send(Ok(()));
                }
                if queued {
                    self.flush();
                }
            }
            Err(e) => {
                self.on_persist_error(&e);
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }

    /// Commits the queued acks and rejections together, then the next batch.
    fn settle_pending(&mut self, ctx: &mut Context<Self>) {
        if self.settling || self.to_settle.is_empty() {
            return;
        }
        self.settling = true;
        let batch = std::mem::take(&mut self.to_settle);
        let n = batch.len();
        let store = self.store.clone();
        ctx.spawn(
            async move { store.send(SettleBatch(batch)).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.settling = false;
                    act.unsynced = act.unsynced.saturating_sub(n);
                    match res {
                        Ok(Ok(())) => {}
                        // As before: the event stays on disk and goes again after a restart
                        // (delivery is at least once).
                        Ok(Err(e)) => {
                            tracing::warn!(component = "ghost.outbox", events = n, error = %e, "acks not persisted; those events are sent again after a restart")
                        }
                        Err(e) => {
                            tracing::warn!(component = "ghost.outbox", events = n, error = %e, "store mailbox: acks not persisted")
                        }
                    }
                    act.settle_pending(ctx);
                }),
        );
    }

    /// Small batches commit on this thread through `inline` (see [`INLINE_MAX`]).
    pub fn with_inline(mut self, inline: Inline) -> Outbox {
        self.inline = Some(inline);
        self
    }

    /// The disk reserve given back when the store fails (see [`Reserve`]).
    pub fn with_reserve(mut self, reserve: Option<Arc<Reserve>>) -> Outbox {
        self.reserve = reserve;
        self
    }

    /// Shared failing/healthy state, for the dispatcher.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    fn on_persist_error(&mut self, e: &str) {
        if self.health.set(e) {
            tracing::error!(component = "ghost.outbox", error = %e, "the outbox cannot persist events; commands are refused and their events sent unpersisted until it can");
        }
    }

    fn on_persist_ok(&mut self) {
        if self.health.clear() {
            tracing::warn!(
                component = "ghost.outbox",
                "the outbox persists events again"
            );
        }
    }

    /// Once a second while failing: a small write (a fence no seed has) shows whether the
    /// store can write again.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        if self.probing || self.health.failing().is_none() {
            return;
        }
        self.probing = true;
        let store = self.store.clone();
        ctx.spawn(
            async move {
                match store
                    .send(Update::Fence {
                        seed: "outbox.probe".into(),
                        token: 0,
                    })
                    .await
                {
                    Ok(r) => r,
                    Err(e) => Err(format!("store mailbox: {e}")),
                }
            }
            .into_actor(self)
            .map(|res, act, _| {
                act.probing = false;
                if res.is_ok() {
                    act.on_persist_ok();
                }
            }),
        );
    }

    /// Makes the reserve again (off the event loop) once the store is healthy.
    fn refill_reserve(&mut self) {
        let Some(r) = &self.reserve else { return };
        if r.held() || self.health.failing().is_some() {
            return;
        }
        let r = r.clone();
        tokio::task::spawn_blocking(move || match r.ensure() {
            Ok(true) => {
                tracing::info!(
                    component = "ghost.outbox",
                    bytes = r.bytes(),
                    "outbox disk reserve in place"
                )
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(component = "ghost.outbox", error = %e, "cannot make the outbox disk reserve")
            }
        });
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
        actorkit::metrics::actor("ghost.outbox").instance_started();
        // Overdue acks are found by this tick.
        ctx.run_interval(Duration::from_millis(250), |act, ctx| {
            act.flush();
            act.ticks += 1;
            if act.ticks.is_multiple_of(PROBE_TICKS) {
                act.probe(ctx);
            }
            if act.ticks.is_multiple_of(RESERVE_TICKS) {
                act.refill_reserve();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("ghost.outbox").instance_stopped();
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
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, m: Enqueue, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.to_persist.push((m, tx));
        self.persist_pending(ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("outbox stopped".into())) })
    }
}

/// Queue a terminal event that could not be persisted: sent like any other (again after a
/// reconnect or an overdue ack) but kept only in memory, so a restart loses it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueVolatile {
    pub event_id: String,
    pub payload: Bytes,
}

impl Handler<EnqueueVolatile> for Outbox {
    type Result = ();

    fn handle(&mut self, m: EnqueueVolatile, _: &mut Context<Self>) {
        if self.volatile.len() >= MAX_VOLATILE {
            tracing::error!(component = "ghost.outbox", event_id = %m.event_id, held = self.volatile.len(), "too many unpersisted events waiting; this one is dropped");
            return;
        }
        self.volatile_seq += 1;
        if self
            .state
            .push(self.volatile_seq, m.event_id.clone(), m.payload)
        {
            self.volatile.insert(m.event_id);
            self.volatile_sent += 1;
        }
        self.flush();
    }
}

impl Handler<Acked> for Outbox {
    type Result = ();

    fn handle(&mut self, m: Acked, ctx: &mut Context<Self>) {
        if self.state.on_ack(&m.event_id).is_none() {
            tracing::debug!(component = "ghost.outbox", event_id = %m.event_id, "ack for an event not waiting (duplicate ack)");
            return;
        }
        if self.volatile.remove(&m.event_id) {
            // Nothing on disk to update.
            if m.accepted {
                self.acked += 1;
            } else {
                self.failed += 1;
            }
            self.flush();
            return;
        }
        if m.accepted {
            self.acked += 1;
            self.to_settle.push((m.event_id, None));
        } else {
            self.failed += 1;
            tracing::warn!(component = "ghost.outbox", event_id = %m.event_id, reason = %m.reason, "event rejected by Mirage; marked failed");
            self.to_settle.push((m.event_id, Some(m.reason)));
        }
        self.unsynced += 1;
        self.settle_pending(ctx);
        self.flush();
    }
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

#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxStats {
    pub pending: usize,
    pub in_flight: usize,
    pub acked: u64,
    pub failed: u64,
    /// Acknowledged events whose removal is not yet on disk.
    pub unsynced: usize,
    /// Events sent without being persisted (the store failed), since start.
    pub volatile_sent: u64,
    /// Why the outbox cannot persist events now; empty when it can.
    pub failing: String,
    /// The disk reserve is in place.
    pub reserve_held: bool,
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
            volatile_sent: self.volatile_sent,
            failing: self.health.failing().unwrap_or_default(),
            reserve_held: self.reserve.as_ref().is_some_and(|r| r.held()),
        })
    }
}

actorkit::metered!(Outbox, Enqueue);
actorkit::metered!(Outbox, Acked);
actorkit::metered!(Outbox, EnqueueVolatile);
actorkit::metered!(Outbox, Link);

impl Handler<actorkit::metrics::Metered<Stats>> for Outbox {
    type Result = MessageResult<actorkit::metrics::Metered<Stats>>;
    fn handle(
        &mut self,
        m: actorkit::metrics::Metered<Stats>,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        let MessageResult(s) = <Self as Handler<Stats>>::handle(self, m.msg, ctx);
        m.guard.handled(std::time::Duration::ZERO);
        MessageResult(s)
    }
}
