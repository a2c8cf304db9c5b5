//! The messages Mirage's actors send each other, and the handles they send them through.
//!
//! They live here, apart from the actors that handle them, so that no actor file names
//! another's: a plan reaches the Supervisor through a [`SupervisorForPlan`], a session through
//! a [`SupervisorForSession`], a lock reaches its plans through a [`PlanHandle`], and the
//! Supervisor a session through a [`SessionHandle`]. Each handle is a set of
//! `MeteredRecipient`s (one per message kind), metered like the actor's address. Only the
//! Supervisor, which starts plans and locks, names their actor types.

use actix::prelude::*;
use actorkit::metrics::MeteredRecipient;
use shared::envelope::{Command, Event, EventAck};
use shared::handshake::{Registration, RegistrationAck};

use crate::lock::{LockQueue, Owner};
use crate::plan::{Input, Plan, ReportDraft, Status};

// ------------------------------------------------------------------ session → Supervisor

/// A Ghost's registration; answers the ack to write back, or the rejection.
#[derive(Message)]
#[rtype(result = "Result<RegistrationAck, RegistrationAck>")]
pub struct Register {
    pub reg: Registration,
    pub session: SessionHandle,
    pub peer: String,
}

/// The session's first frame carried a valid auth block: the Ghost may be used now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionVerified {
    pub ghost_id: String,
    pub session_id: String,
}

/// Heartbeats a session acked since its last report (sent once per session tick).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Heartbeats {
    pub ghost_id: String,
    pub count: u64,
    pub last_ms: u64,
}

/// A session measured its Ghost's clock skew anew.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClockSkew {
    pub ghost_id: String,
    pub session_id: String,
    pub skew_ms: i64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub ghost_id: String,
    pub session_id: String,
    pub reason: String,
}

/// An event from a Ghost; resolves with the ack to send, after the plan persisted it. `None`:
/// it could not be recorded now; no ack, so the Ghost sends it again after its ack timeout.
#[derive(Message)]
#[rtype(result = "Option<EventAck>")]
pub struct Ingest {
    pub ghost_id: String,
    pub event: Event,
}

/// Every event a session read in one go: one message and one store write for all of them.
/// Answers, per event in order, its frame's message_id and its ack (None: not recorded).
#[derive(Message)]
#[rtype(result = "Vec<(u64, Option<EventAck>)>")]
pub struct IngestBatch {
    pub ghost_id: String,
    pub events: Vec<(u64, Event)>,
}

/// What a `GhostSession` sends the Supervisor.
#[derive(Clone)]
pub struct SupervisorForSession {
    pub register: MeteredRecipient<Register>,
    pub verified: MeteredRecipient<SessionVerified>,
    pub heartbeats: MeteredRecipient<Heartbeats>,
    pub clock_skew: MeteredRecipient<ClockSkew>,
    pub closed: MeteredRecipient<SessionClosed>,
    pub ingest: MeteredRecipient<IngestBatch>,
}

// ------------------------------------------------------------------ Supervisor → session

#[derive(Message)]
#[rtype(result = "()")]
pub struct SendCommand(pub Command);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: String,
}

/// One Ghost connection as the Supervisor sees it.
#[derive(Clone)]
pub struct SessionHandle {
    pub commands: MeteredRecipient<SendCommand>,
    pub close: MeteredRecipient<Close>,
}

// ------------------------------------------------------------------ plan → Supervisor

#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub intent_id: String,
    pub ghost: String,
    pub command: Command,
}

#[derive(Message)]
#[rtype(result = "()")]
pub enum LockOp {
    Acquire {
        key: String,
        owner: Owner,
        lease_ms: u64,
        plan: PlanHandle,
    },
    Release {
        key: String,
        owner: Owner,
    },
    Renew {
        key: String,
        owner: Owner,
        lease_ms: u64,
    },
}

/// A plan wants to hear when `ghost` comes back (it owes that Ghost a catch-up).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub intent_id: String,
    pub ghost: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PlanReport {
    pub intent_id: String,
    pub draft: ReportDraft,
    pub steps_total: usize,
    pub steps_done: usize,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PlanFinished {
    pub intent_id: String,
    pub status: Status,
    pub plan: Box<Plan>,
}

/// What an `IntentPlan` sends the Supervisor.
#[derive(Clone)]
pub struct SupervisorForPlan {
    pub dispatch: MeteredRecipient<Dispatch>,
    pub lock: MeteredRecipient<LockOp>,
    pub watch: MeteredRecipient<Watch>,
    pub report: MeteredRecipient<PlanReport>,
    pub finished: MeteredRecipient<PlanFinished>,
}

// ------------------------------------------------------------------ → plan

/// Why a plan did not take an input in: its new state is not on disk and its effects did not
/// go out (an event stays unacked, so the Ghost sends it again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The store refused the write, in its words (a full disk, say).
    #[error("{0}")]
    Store(String),
    #[error("store gone")]
    StoreGone,
    #[error("plan state cannot be serialised")]
    Unserialisable,
    #[error("plan stopped")]
    Stopped,
    /// A panic restarted the plan from its persisted state before this input was written.
    #[error("plan restarted")]
    Restarted,
    #[error("plan panicked: {0}")]
    Panicked(String),
    /// The submission was refused (see [`Discard`]).
    #[error("intent refused")]
    Discarded,
}

/// An input for the plan; resolves once its new state is persisted and its effects are out.
#[derive(Message)]
#[rtype(result = "Result<(), PlanError>")]
pub struct PlanMsg(pub Input);

/// After a restart: re-acquire locks and re-send unanswered commands.
#[derive(Message)]
#[rtype(result = "Result<(), PlanError>")]
pub struct Resume;

/// The submission was refused (its first write failed): stop without a trace, so the
/// intent neither counts as active nor runs later when a retried write lands.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Discard;

/// A copy of the plan for queries.
#[derive(Message)]
#[rtype(result = "Plan")]
pub struct Snapshot;

/// What a `SeedLock` sends the plans that hold or wait for it.
#[derive(Clone)]
pub struct PlanHandle {
    pub input: MeteredRecipient<PlanMsg>,
    pub resume: MeteredRecipient<Resume>,
}

// ------------------------------------------------------------------ Supervisor → lock

#[derive(Message)]
#[rtype(result = "()")]
pub enum LockMsg {
    Acquire {
        owner: Owner,
        lease_ms: u64,
        plan: PlanHandle,
    },
    Release {
        owner: Owner,
    },
    Renew {
        owner: Owner,
        lease_ms: u64,
    },
    Break,
}

/// The lock's queue, for `/v1/locks`.
#[derive(Message)]
#[rtype(result = "LockQueue")]
pub struct LockState;
