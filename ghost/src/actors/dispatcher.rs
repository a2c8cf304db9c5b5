//! The `Dispatcher`: every command, from the session or the admin boundary, passes here.
//! Dedupe first (a command_id seen inside the window is not run again: its stored event is
//! sent again), then the boundary checks, then the seed's own actor. Every command ends in
//! exactly one terminal event, persisted through the Outbox before anyone is told.
//!
//! A non-idempotent operation gets a persisted start marker before it reaches its seed. If
//! the Ghost stops before the command's event is persisted, the re-sent command finds the
//! marker and is not run again: it ends with an `error` event saying its effect is unknown
//! (see `logic::after_interruption`).
//!
//! When the outbox cannot persist events (a full disk), the command's event is sent anyway,
//! as an `error` event that is not persisted and that says why, and new commands are
//! refused without running (so no effect happens that cannot be reported, and Mirage's
//! retries do not run a command again and again) until the outbox works again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use bytes::Bytes;
use serde::Serialize;
use shared::envelope::{Command, Envelope, Event, Outcome};
use shared::error::code;
use shared::wire::tlv;

use crate::actors::outbox::{Enqueue, EnqueueVolatile, Health, Outbox};
use crate::actors::seed::{Execute, SeedActor};
use crate::logic::{
    after_interruption, check_command, keep_until, needs_start_marker, remaining_ms, Catalog,
    DedupeWindow, Fences, Marker, Phase, Rejection, Seen,
};
use crate::reserve::Reserve;
use crate::seeds::SeedOutput;
use crate::store::{GhostClock, LoadExecution, Store, Update};

/// Most recent executions kept for the admin boundary.
const RECENT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Session,
    Admin,
}

/// One finished execution, as the admin boundary shows it.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub source: Source,
    pub command: Command,
    pub event: Event,
}

struct SeedSlot {
    addr: MeteredAddr<SeedActor>,
    queued: usize,
}

pub struct Dispatcher {
    ghost_id: String,
    phase: Phase,
    catalog: Catalog,
    fences: Fences,
    dedupe: DedupeWindow,
    /// Ages the dedupe window and start markers (never the wall clock).
    clock: GhostClock,
    seeds: HashMap<String, SeedSlot>,
    seed_mailbox: usize,
    max_output: usize,
    outbox: MeteredAddr<Outbox>,
    outbox_health: Health,
    reserve: Option<Arc<Reserve>>,
    store: MeteredAddr<Store>,
    recent: VecDeque<Record>,
    seq: u64,
    pub executed: u64,
    pub replayed: u64,
    pub rejected: u64,
    /// Re-sent commands found started and unfinished (the Ghost stopped while they ran).
    pub interrupted: u64,
}

pub struct DispatcherParts {
    pub ghost_id: String,
    pub phase: Phase,
    pub catalog: Catalog,
    pub fences: Fences,
    pub dedupe: DedupeWindow,
    pub clock: GhostClock,
    pub seeds: HashMap<String, MeteredAddr<SeedActor>>,
    pub seed_mailbox: usize,
    pub max_output: usize,
    pub outbox: MeteredAddr<Outbox>,
    /// The outbox's failing/healthy state (`Outbox::health`).
    pub outbox_health: Health,
    /// Given back when a start marker cannot be written (a full disk).
    pub reserve: Option<Arc<Reserve>>,
    pub store: MeteredAddr<Store>,
}

impl Dispatcher {
    pub fn new(p: DispatcherParts) -> Dispatcher {
        Dispatcher {
            ghost_id: p.ghost_id,
            phase: p.phase,
            catalog: p.catalog,
            fences: p.fences,
            dedupe: p.dedupe,
            clock: p.clock,
            seeds: p
                .seeds
                .into_iter()
                .map(|(k, addr)| (k, SeedSlot { addr, queued: 0 }))
                .collect(),
            seed_mailbox: p.seed_mailbox.max(1),
            max_output: p.max_output,
            outbox: p.outbox,
            outbox_health: p.outbox_health,
            reserve: p.reserve,
            store: p.store,
            recent: VecDeque::with_capacity(RECENT),
            seq: 0,
            executed: 0,
            replayed: 0,
            rejected: 0,
            interrupted: 0,
        }
    }

    fn clip(&self, mut b: Vec<u8>) -> Bytes {
        if b.len() > self.max_output {
            b.truncate(self.max_output);
            b.extend_from_slice(b"\n[output truncated]\n");
        }
        Bytes::from(b)
    }

    fn event_for(&self, cmd: &Command, out: SeedOutput, rejection: Option<Rejection>) -> Event {
        let outcome = if rejection.is_none() && out.succeeded() {
            Outcome::Success
        } else {
            Outcome::Error
        };
        let mut ev = Event::new(
            format!("evt.{}", cmd.command_id),
            cmd.command_id.clone(),
            cmd.intent_id.clone(),
            self.ghost_id.clone(),
            cmd.seed_selector.clone(),
            outcome,
        );
        ev.timestamp_ms = Some(shared::now_ms());
        ev.execution_id = Some(format!("exec.{}", cmd.command_id));
        ev.status = Some(out.status.clone());
        ev.exit_code = Some(out.exit_code);
        ev.stdout = Some(self.clip(out.stdout));
        ev.stderr = Some(self.clip(out.stderr));
        if let Some(r) = rejection {
            ev.error_code = Some(r.code);
            ev.error_reason = Some(r.reason);
        } else if outcome == Outcome::Error {
            ev.error_code = Some(code::RUNTIME);
        }
        ev
    }

    /// An `error` event for `cmd` that says `reason`, sent without being persisted.
    fn send_volatile(&mut self, cmd: &Command, reason: String, stderr: &[u8]) -> (Event, Bytes) {
        let mut err = format!("{reason}\n").into_bytes();
        err.extend_from_slice(stderr);
        let r = Rejection {
            code: code::INTERNAL,
            reason,
        };
        let ev = self.event_for(cmd, SeedOutput::error(1, err), Some(r));
        let payload = Envelope::Event(ev.clone())
            .to_fields()
            .to_bytes()
            .unwrap_or_default();
        if !payload.is_empty() {
            self.outbox.do_send(EnqueueVolatile {
                event_id: ev.event_id.clone(),
                payload: payload.clone(),
            });
        }
        (ev, payload)
    }

    /// Persist, remember in the dedupe window, keep for the admin view, answer.
    fn finish(
        &mut self,
        source: Source,
        cmd: Command,
        ev: Event,
    ) -> ResponseActFuture<Self, Result<Event, String>> {
        let payload = match Envelope::Event(ev.clone()).to_fields().to_bytes() {
            Ok(p) => p,
            Err(e) => {
                self.dedupe.release(&cmd.command_id);
                return Box::pin(fut::ready(Err(format!("encode event: {e}"))));
            }
        };
        let enqueue = Enqueue {
            event_id: ev.event_id.clone(),
            command_id: Some(cmd.command_id.clone()),
            payload,
            // An admin-run command is answered in the admin reply only.
            session: source == Source::Session,
        };
        let outbox = self.outbox.clone();
        Box::pin(
            async move {
                outbox
                    .send(enqueue)
                    .await
                    .map_err(|e| format!("outbox mailbox: {e}"))?
            }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(()) => {
                    let now = act.clock.now();
                    act.dedupe.complete(&cmd.command_id, now);
                    act.seq += 1;
                    if act.recent.len() == RECENT {
                        act.recent.pop_front();
                    }
                    act.recent.push_back(Record {
                        seq: act.seq,
                        source,
                        command: cmd,
                        event: ev.clone(),
                    });
                    Ok(ev)
                }
                Err(e) => {
                    // Mirage hears why now rather than at its step timeout. The event is
                    // remembered in memory, so the same command re-sent is not run again.
                    let what = match (&ev.outcome, &ev.error_reason) {
                        (Outcome::Success, _) => "ran and succeeded".to_owned(),
                        (_, Some(r)) => format!("was not run or failed: {r}"),
                        (_, None) => "ran and failed".to_owned(),
                    };
                    let reason = format!(
                        "the Ghost's outbox cannot persist events ({e}); the command {what}, but its event is not durable, so it is reported as failed"
                    );
                    tracing::error!(component = "ghost.dispatcher", command_id = %cmd.command_id, error = %e, "event not persisted; sending an error event that is not persisted");
                    let stderr = ev.stderr.clone().unwrap_or_default();
                    let (vev, vpayload) = act.send_volatile(&cmd, reason, &stderr);
                    let now = act.clock.now();
                    act.dedupe
                        .complete_unpersisted(&cmd.command_id, vpayload, now);
                    act.seq += 1;
                    if act.recent.len() == RECENT {
                        act.recent.pop_front();
                    }
                    act.recent.push_back(Record {
                        seq: act.seq,
                        source,
                        command: cmd,
                        event: vev.clone(),
                    });
                    Ok(vev)
                }
            }),
        )
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("ghost.dispatcher").instance_started();
        ctx.run_interval(Duration::from_secs(30), |act, _| {
            let now = act.dedupe.expire(act.clock.now());
            act.store.do_send(Update::Prune { now });
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("ghost.dispatcher").instance_stopped();
    }
}

/// Run a command; resolves with its terminal event once that event is persisted.
#[derive(Message)]
#[rtype(result = "Result<Event, String>")]
pub struct Run {
    pub cmd: Command,
    pub source: Source,
}

impl Handler<Run> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<Event, String>>;

    fn handle(&mut self, m: Run, _: &mut Context<Self>) -> Self::Result {
        // Per-hop timestamps of one command (BENCHMARKS.md, issue 20): off unless `hop=debug`.
        tracing::debug!(target: "hop", hop = "ghost.command", command_id = %m.cmd.command_id);
        let seen = self.dedupe.check_and_claim(&m.cmd.command_id);
        self.on_seen(m, seen)
    }
}

impl Dispatcher {
    /// Acts on what the dedupe window says about a command.
    fn on_seen(&mut self, m: Run, seen: Seen) -> ResponseActFuture<Self, Result<Event, String>> {
        match seen {
            Seen::InFlight => {
                tracing::info!(component = "ghost.dispatcher", command_id = %m.cmd.command_id, "duplicate command while it runs; its event will follow");
                Box::pin(fut::ready(Err(format!(
                    "command {} is already executing; its event will follow",
                    m.cmd.command_id
                ))))
            }
            Seen::Done(payload) => self.replay(m, payload),
            Seen::Stored => {
                // The window holds only a hash of the id: the event is read from the store.
                let store = self.store.clone();
                let command_id = m.cmd.command_id.clone();
                Box::pin(
                    async move {
                        match store.send(LoadExecution { command_id }).await {
                            Ok(r) => r,
                            Err(e) => Err(format!("store mailbox: {e}")),
                        }
                    }
                    .into_actor(self)
                    .then(move |res, act, _| match res {
                        Ok(Some(payload)) => act.replay(m, payload),
                        Ok(None) => {
                            // No record: another id's hash (or one just past its time).
                            let seen = act.dedupe.claim(&m.cmd.command_id);
                            act.on_seen(m, seen)
                        }
                        Err(e) => {
                            tracing::error!(component = "ghost.dispatcher", command_id = %m.cmd.command_id, error = %e, "duplicate command: its stored event cannot be read; not run again");
                            Box::pin(fut::ready(Err(format!(
                                "command {} ran already; its stored event cannot be read: {e}",
                                m.cmd.command_id
                            ))))
                        }
                    }),
                )
            }
            Seen::New => self.execute(m, None),
            Seen::Interrupted { started_ms } => self.execute(m, Some(started_ms)),
        }
    }

    /// A duplicate inside the window: its stored event (TLV payload) goes again, the
    /// command does not run.
    fn replay(&mut self, m: Run, payload: Bytes) -> ResponseActFuture<Self, Result<Event, String>> {
        self.replayed += 1;
        tracing::info!(component = "ghost.dispatcher", command_id = %m.cmd.command_id, "duplicate command inside the dedupe window; sending its stored event again");
        let ev =
            tlv::decode(&payload).and_then(|f| Envelope::decode(shared::envelope::mt::EVENT, &f));
        let Ok(Envelope::Event(ev)) = ev else {
            return Box::pin(fut::ready(Err("stored event unreadable".into())));
        };
        if m.source == Source::Admin {
            // Answered in the admin reply only, as the first run was.
            return Box::pin(fut::ready(Ok(ev)));
        }
        let enqueue = Enqueue {
            event_id: ev.event_id.clone(),
            command_id: None,
            payload: payload.clone(),
            session: true,
        };
        let outbox = self.outbox.clone();
        Box::pin(
            async move {
                match outbox.send(enqueue).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        // The store is failing: send the stored event anyway.
                        outbox.do_send(EnqueueVolatile {
                            event_id: ev.event_id.clone(),
                            payload,
                        });
                    }
                    Err(e) => return Err(format!("outbox mailbox: {e}")),
                }
                Ok(ev)
            }
            .into_actor(self),
        )
    }

    /// A claimed command (`interrupted`: its start was recorded before a restart): the
    /// boundary checks, then its seed.
    fn execute(
        &mut self,
        m: Run,
        interrupted: Option<u64>,
    ) -> ResponseActFuture<Self, Result<Event, String>> {
        let cmd = m.cmd;
        if let Some(why) = self.outbox_health.failing() {
            // Not run: its result could not be recorded. A re-send may run it later.
            self.dedupe.release(&cmd.command_id);
            self.rejected += 1;
            let reason = format!(
                "not run: the Ghost's outbox cannot persist events ({why}); free disk space in the Ghost's data_dir"
            );
            tracing::warn!(component = "ghost.dispatcher", command_id = %cmd.command_id, seed = %cmd.seed_selector, operation = %cmd.operation, reason = %reason, "command refused");
            let (ev, _) = self.send_volatile(&cmd, reason, b"");
            return Box::pin(fut::ready(Ok(ev)));
        }
        if let Some(started_ms) = interrupted {
            self.interrupted += 1;
            match after_interruption(&cmd, started_ms, &self.catalog) {
                Ok(()) => {
                    tracing::warn!(component = "ghost.dispatcher", command_id = %cmd.command_id, seed = %cmd.seed_selector, operation = %cmd.operation, started_ms, "command was interrupted by a restart; idempotent, so it runs again");
                }
                Err(r) => {
                    tracing::warn!(component = "ghost.dispatcher", command_id = %cmd.command_id, seed = %cmd.seed_selector, operation = %cmd.operation, started_ms, code = r.code, reason = %r.reason, "command was interrupted by a restart; not idempotent, not run again");
                    let ev = self.event_for(
                        &cmd,
                        SeedOutput::error(1, format!("{}\n", r.reason)),
                        Some(r),
                    );
                    return self.finish(m.source, cmd, ev);
                }
            }
        }

        let now = shared::now_ms();
        if let Err(r) = check_command(
            &cmd,
            self.phase,
            &self.ghost_id,
            &self.catalog,
            &self.fences,
            now,
        ) {
            self.rejected += 1;
            tracing::warn!(component = "ghost.dispatcher", command_id = %cmd.command_id, seed = %cmd.seed_selector, operation = %cmd.operation, code = r.code, reason = %r.reason, "command refused at the boundary");
            let ev = self.event_for(
                &cmd,
                SeedOutput::error(1, format!("{}\n", r.reason)),
                Some(r),
            );
            return self.finish(m.source, cmd, ev);
        }
        let seed_id = cmd.seed_selector.trim().to_owned();
        let Some(slot) = self.seeds.get_mut(&seed_id) else {
            let r = Rejection {
                code: code::INTERNAL,
                reason: format!("seed {seed_id} has no actor"),
            };
            let ev = self.event_for(&cmd, SeedOutput::error(1, "internal\n"), Some(r));
            return self.finish(m.source, cmd, ev);
        };
        if slot.queued >= self.seed_mailbox {
            let r = Rejection {
                code: code::RUNTIME,
                reason: format!("seed {seed_id} is busy: {} commands queued", slot.queued),
            };
            self.rejected += 1;
            let ev = self.event_for(
                &cmd,
                SeedOutput::error(1, format!("{}\n", r.reason)),
                Some(r),
            );
            return self.finish(m.source, cmd, ev);
        }
        if let Some(token) = cmd.lock_token {
            if self.fences.observe(&seed_id, token) {
                self.store.do_send(Update::Fence {
                    seed: seed_id.clone(),
                    token,
                });
            }
        }
        slot.queued += 1;
        let addr = slot.addr.clone();
        // The budget is measured from here on this Ghost's monotonic clock, so neither its
        // wall clock nor Mirage's can shorten it.
        let remaining = remaining_ms(&cmd, now);
        let exec = Execute {
            operation: cmd.operation.clone(),
            args: cmd.args.clone(),
            deadline: remaining
                .and_then(|r| Instant::now().checked_add(Duration::from_millis(r.max(0) as u64))),
        };
        let source = m.source;
        // Not idempotent: the start is on disk before the seed can have any effect. It is
        // kept while Mirage may re-send the command (its budget) plus the window.
        let tick = self.clock.now();
        let mark = Marker {
            started_ms: now,
            keep_until: keep_until(tick, self.dedupe.window_ms(), remaining),
        };
        let marker = needs_start_marker(&cmd, &self.catalog).then(|| Update::Started {
            command_id: cmd.command_id.clone(),
            now_ms: now,
            tick,
            keep_until: mark.keep_until,
        });
        let marked = marker.is_some();
        let store = self.store.clone();
        let reserve = self.reserve.clone();
        let mark_cid = cmd.command_id.clone();
        let mark_keep = mark.keep_until;
        Box::pin(
            async move {
                if let Some(mark) = marker {
                    let mut r = store.send(mark).await;
                    if matches!(r, Ok(Err(_))) && reserve.as_ref().is_some_and(|r| r.release()) {
                        // A full disk: the reserve makes room for this marker and its event.
                        tracing::error!(component = "ghost.dispatcher", command_id = %mark_cid, "start marker not persisted; released the outbox disk reserve and trying again");
                        r = store
                            .send(Update::Started {
                                command_id: mark_cid.clone(),
                                now_ms: now,
                                tick,
                                keep_until: mark_keep,
                            })
                            .await;
                    }
                    match r {
                        Ok(Ok(())) => {
                            tracing::debug!(target: "hop", hop = "ghost.marked", command_id = %mark_cid);
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(format!("store mailbox: {e}")),
                    }
                }
                Ok(addr.send(exec).await)
            }
            .into_actor(self)
            .then(move |res, act, _| {
                if let Some(s) = act.seeds.get_mut(&seed_id) {
                    s.queued = s.queued.saturating_sub(1);
                }
                let ev = match res {
                    Ok(res) => {
                        if marked {
                            act.dedupe.started(&cmd.command_id, mark);
                        }
                        act.executed += 1;
                        tracing::debug!(target: "hop", hop = "ghost.executed", command_id = %cmd.command_id);
                        let out = res.unwrap_or_else(|e| {
                            SeedOutput::error(70, format!("seed actor unavailable: {e}\n"))
                        });
                        act.event_for(&cmd, out, None)
                    }
                    Err(e) => {
                        act.rejected += 1;
                        let r = Rejection {
                            code: code::INTERNAL,
                            reason: format!(
                                "cannot record the start of a non-idempotent command, so it was not run: {e}"
                            ),
                        };
                        tracing::error!(component = "ghost.dispatcher", command_id = %cmd.command_id, reason = %r.reason, "command not started");
                        act.event_for(
                            &cmd,
                            SeedOutput::error(1, format!("{}\n", r.reason)),
                            Some(r),
                        )
                    }
                };
                act.finish(source, cmd, ev)
            }),
        )
    }
}

/// Looks up an execution: recent memory first, then the persisted dedupe window.
#[derive(Message)]
#[rtype(result = "Option<Record>")]
pub struct Lookup {
    pub command_id: String,
}

impl Handler<Lookup> for Dispatcher {
    type Result = Option<Record>;

    fn handle(&mut self, m: Lookup, _: &mut Context<Self>) -> Option<Record> {
        self.recent
            .iter()
            .rev()
            .find(|r| r.command.command_id == m.command_id)
            .cloned()
    }
}

/// The newest executions, newest last.
#[derive(Message)]
#[rtype(result = "Vec<Record>")]
pub struct Recent {
    pub limit: usize,
}

impl Handler<Recent> for Dispatcher {
    type Result = MessageResult<Recent>;

    fn handle(&mut self, m: Recent, _: &mut Context<Self>) -> Self::Result {
        let skip = self.recent.len().saturating_sub(m.limit);
        MessageResult(self.recent.iter().skip(skip).cloned().collect())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatcherStats {
    pub phase: Phase,
    pub executed: u64,
    pub replayed: u64,
    pub rejected: u64,
    pub interrupted: u64,
    pub dedupe_entries: usize,
    pub dedupe_evicted_early: u64,
}

#[derive(Message)]
#[rtype(result = "DispatcherStats")]
pub struct DStats;

impl Handler<DStats> for Dispatcher {
    type Result = MessageResult<DStats>;

    fn handle(&mut self, _: DStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(DispatcherStats {
            phase: self.phase,
            executed: self.executed,
            replayed: self.replayed,
            rejected: self.rejected,
            interrupted: self.interrupted,
            dedupe_entries: self.dedupe.len(),
            dedupe_evicted_early: self.dedupe.evicted_early,
        })
    }
}

actorkit::metered!(Dispatcher, Run);
actorkit::metered!(Dispatcher, Lookup);
actorkit::metered_result!(Dispatcher, Recent);
actorkit::metered_result!(Dispatcher, DStats);
