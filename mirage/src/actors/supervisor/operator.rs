//! What an operator asks through the API: submit an intent, wait for it, withdraw it, break a
//! lock, drain a Ghost. Refusals are [`OperatorError`]s; the API alone maps them to HTTP.

use actix::prelude::*;

use super::{IntentSummary, Supervisor, MAX_WAITERS};
use crate::actors::protocol::{Discard, LockMsg, PlanError, PlanMsg, Snapshot};
use crate::intent::Intent;
use crate::metrics as m;
use crate::plan::{Input, Plan, Status};
use crate::store::{Put, Write};

/// Why the Supervisor refused an operator's request. The texts are what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("intent {0} already exists; submit it under a new intent_id")]
    Exists(String),
    #[error("{active} intents are active (limit {limit}); try again later")]
    TooManyActive { active: usize, limit: usize },
    /// Step `step` (0-based) cannot run on the fleet as it is.
    #[error("intent {id} refused: {why}")]
    Refused {
        id: String,
        step: usize,
        why: String,
    },
    /// The intent's first write failed: it is not in.
    #[error("intent not persisted: {0}")]
    NotPersisted(PlanError),
    /// The plan took the input but could not record it (the store, a restart).
    #[error("{0}")]
    NotRecorded(PlanError),
    /// The plan's actor did not answer.
    #[error("{0}")]
    PlanUnavailable(String),
    #[error("intent vanished")]
    Vanished,
    #[error("intent {0} is standing; it finishes only when withdrawn")]
    Standing(String),
    #[error("no intent {0}")]
    NoIntent(String),
    #[error("intent {0} has already finished")]
    Finished(String),
    #[error("{0} callers are already waiting for intents; poll instead")]
    TooManyWaiters(usize),
    #[error("no lock {0}")]
    NoLock(String),
    #[error("too many drained Ghosts")]
    TooManyDrained,
    /// The drained list could not be saved (nothing changed).
    #[error("{0}")]
    DrainNotSaved(String),
}

impl From<MailboxError> for OperatorError {
    fn from(e: MailboxError) -> OperatorError {
        OperatorError::PlanUnavailable(e.to_string())
    }
}

#[derive(Message)]
#[rtype(result = "Result<IntentSummary, OperatorError>")]
pub struct Submit(pub Intent);

impl Handler<Submit> for Supervisor {
    type Result = ResponseActFuture<Self, Result<IntentSummary, OperatorError>>;

    fn handle(&mut self, m: Submit, ctx: &mut Context<Self>) -> Self::Result {
        // Not restartable: a panic here ends the process (crate::supervision).
        crate::supervision::inject("supervisor");
        let id = m.0.intent_id.clone();
        if self.active.contains_key(&id) || self.finished.contains_key(&id) {
            return Box::pin(fut::ready(Err(OperatorError::Exists(id))));
        }
        if self.active.len() >= self.cfg.limits.active_intents {
            return Box::pin(fut::ready(Err(OperatorError::TooManyActive {
                active: self.active.len(),
                limit: self.cfg.limits.active_intents,
            })));
        }
        self.flush_fleet();
        if let Err((idx, why)) = crate::plan::submit_check(&m.0, &self.fleet.borrow()) {
            tracing::info!(component = "mirage.supervisor", intent_id = %id, step = idx + 1, reason = %why, "intent refused at submit");
            return Box::pin(fut::ready(Err(OperatorError::Refused {
                id,
                step: idx,
                why,
            })));
        }
        self.intent_seq += 1;
        m::INTENTS_SUBMITTED.inc();
        let mut plan = Plan::new(m.0, self.next_generation());
        plan.first_report_seq = self.report_seq + 1;
        let seq = self.intent_seq;
        let addr = self.start_plan(seq, plan, ctx);
        let summary = self.active.get(&id).map(|a| a.summary.clone());
        Box::pin(
            async move {
                addr.send(PlanMsg(Input::Start))
                    .await?
                    .map_err(OperatorError::NotPersisted)
            }
            .into_actor(self)
            .map(move |res, act, _| {
                if let Err(e) = res {
                    // Refused: nothing of it may stay behind (not active, not counted, its id
                    // free), and a row a later write might still land is removed after it.
                    if act.active.get(&id).is_some_and(|a| a.seq == seq) {
                        if let Some(a) = act.active.remove(&id) {
                            a.addr.do_send(Discard);
                        }
                        act.core.routes.forget(&id);
                        act.store.do_send(Put {
                            writes: vec![Write::Forget {
                                intent_id: id.clone(),
                                seq,
                            }],
                            done: None,
                        });
                        tracing::warn!(component = "mirage.supervisor", intent_id = %id, error = %e, "intent refused: its state could not be written");
                    }
                    return Err(e);
                }
                act.active
                    .get(&id)
                    .map(|a| a.summary.clone())
                    .or_else(|| act.finished.get(&id).map(|f| f.0.clone()))
                    .or(summary)
                    .ok_or(OperatorError::Vanished)
            }),
        )
    }
}

/// Resolves `tx` with the intent's summary once it has finished (at once if it already has).
#[derive(Message)]
#[rtype(result = "Result<(), OperatorError>")]
pub struct WaitFinished {
    pub intent_id: String,
    pub tx: tokio::sync::oneshot::Sender<IntentSummary>,
}

impl Handler<WaitFinished> for Supervisor {
    type Result = Result<(), OperatorError>;

    fn handle(&mut self, m: WaitFinished, _: &mut Context<Self>) -> Self::Result {
        let a = self.active.get(&m.intent_id);
        // A standing intent stays active while it is kept; it has no finish to wait for.
        // Satisfied but still active (catching up offline Ghosts): answered with that now.
        if let Some(a) = a.filter(|a| a.summary.status == "satisfied") {
            let _ = m.tx.send(a.summary.clone());
            return Ok(());
        }
        if a.is_none() || a.is_some_and(|a| a.summary.status == "standing") {
            return match self.finished.get(&m.intent_id) {
                Some((s, _)) => {
                    let _ = m.tx.send(s.clone());
                    Ok(())
                }
                None if a.is_some() => Err(OperatorError::Standing(m.intent_id)),
                None => Err(OperatorError::NoIntent(m.intent_id)),
            };
        }
        if self.waiter_count >= MAX_WAITERS {
            // Sweep callers that stopped waiting before refusing anyone.
            let mut n = 0;
            self.waiters.retain(|_, ws| {
                ws.retain(|w| !w.is_closed());
                n += ws.len();
                !ws.is_empty()
            });
            self.waiter_count = n;
            if n >= MAX_WAITERS {
                return Err(OperatorError::TooManyWaiters(n));
            }
        }
        self.waiter_count += 1;
        self.waiters.entry(m.intent_id).or_default().push(m.tx);
        Ok(())
    }
}

/// Answers "withdrawn", or "withdrawing" while a running blocking command keeps its lock.
#[derive(Message)]
#[rtype(result = "Result<String, OperatorError>")]
pub struct Withdraw(pub String);

impl Handler<Withdraw> for Supervisor {
    type Result = ResponseActFuture<Self, Result<String, OperatorError>>;

    fn handle(&mut self, m: Withdraw, _: &mut Context<Self>) -> Self::Result {
        let Some(a) = self.active.get(&m.0) else {
            let e = if self.finished.contains_key(&m.0) {
                OperatorError::Finished(m.0)
            } else {
                OperatorError::NoIntent(m.0)
            };
            return Box::pin(fut::ready(Err(e)));
        };
        let addr = a.addr.clone();
        let id = m.0.clone();
        Box::pin(
            async move {
                addr.send(PlanMsg(Input::Withdraw {
                    why: "withdrawn by an operator".into(),
                }))
                .await?
                .map_err(OperatorError::NotRecorded)?;
                // A stopped plan has finished: withdrawn.
                let draining = addr
                    .send(Snapshot)
                    .await
                    .is_ok_and(|p| p.withdrawing.is_some() && p.status == Status::Active);
                Ok(draining)
            }
            .into_actor(self)
            .map(move |res: Result<bool, OperatorError>, act, _| {
                let draining = res?;
                if draining {
                    if let Some(a) = act.active.get_mut(&id) {
                        a.summary.status = "withdrawing".into();
                    }
                    return Ok("withdrawing".into());
                }
                Ok("withdrawn".into())
            }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), OperatorError>")]
pub struct BreakLock(pub String);

impl Handler<BreakLock> for Supervisor {
    type Result = Result<(), OperatorError>;

    fn handle(&mut self, m: BreakLock, _: &mut Context<Self>) -> Self::Result {
        match self.locks.get(&m.0) {
            Some(l) => {
                tracing::warn!(component = "mirage.supervisor", key = %m.0, "lock broken by an operator");
                l.do_send(LockMsg::Break);
                Ok(())
            }
            None => Err(OperatorError::NoLock(m.0)),
        }
    }
}

/// `mirage ghost drain|undrain ID`: Ok(true) when the Ghost is known to the registry.
#[derive(Message)]
#[rtype(result = "Result<bool, OperatorError>")]
pub struct SetDrain {
    pub ghost: String,
    pub drained: bool,
}

impl Handler<SetDrain> for Supervisor {
    type Result = Result<bool, OperatorError>;

    fn handle(&mut self, m: SetDrain, _: &mut Context<Self>) -> Self::Result {
        let change = self
            .core
            .fleet
            .drain_change(&m.ghost, m.drained)
            .map_err(|_| OperatorError::TooManyDrained)?;
        if let Some(next) = change {
            crate::drain::save(&self.cfg.data_dir, &next).map_err(OperatorError::DrainNotSaved)?;
            self.core.fleet.set_drained(next, &m.ghost);
            self.flush_fleet();
        }
        tracing::info!(component = "mirage.supervisor", ghost_id = %m.ghost, drained = m.drained, "ghost drain set by an operator");
        Ok(self.core.fleet.contains(&m.ghost))
    }
}

actorkit::metered!(Supervisor, Submit);
actorkit::metered!(Supervisor, WaitFinished);
actorkit::metered!(Supervisor, Withdraw);
actorkit::metered!(Supervisor, BreakLock);
actorkit::metered!(Supervisor, SetDrain);
