//! Read-only questions: the fleet (from the registry), intents, reports, locks, an overview.

use actix::prelude::*;
use serde::Serialize;

use super::operator::OperatorError;
use super::{IntentSummary, Supervisor};
use crate::actors::protocol::{LockState, Snapshot};
use crate::history::ReportRecord;
use crate::lock::LockQueue;
use crate::orchestrator::registry::{GhostInfo, GhostPage};
use crate::plan::Plan;

/// A page of the fleet in ghost_id order: ids after `after`, at most `limit` of them.
#[derive(Message)]
#[rtype(result = "GhostPage")]
pub struct ListGhosts {
    pub after: Option<String>,
    pub limit: usize,
}

impl ListGhosts {
    pub fn all() -> ListGhosts {
        ListGhosts {
            after: None,
            limit: usize::MAX,
        }
    }
}

/// One Ghost by id.
#[derive(Message)]
#[rtype(result = "Option<GhostInfo>")]
pub struct GetGhost(pub String);

impl Handler<ListGhosts> for Supervisor {
    type Result = MessageResult<ListGhosts>;

    fn handle(&mut self, m: ListGhosts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.fleet.page(m.after, m.limit, shared::now_ms()))
    }
}

impl Handler<GetGhost> for Supervisor {
    type Result = MessageResult<GetGhost>;

    fn handle(&mut self, m: GetGhost, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.fleet.info(&m.0, shared::now_ms()))
    }
}

#[derive(Message)]
#[rtype(result = "Vec<IntentSummary>")]
pub struct ListIntents {
    pub limit: usize,
}

impl Handler<ListIntents> for Supervisor {
    type Result = MessageResult<ListIntents>;

    fn handle(&mut self, m: ListIntents, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<IntentSummary> = self
            .active
            .values()
            .map(|a| a.summary.clone())
            .chain(self.finished.values().map(|f| f.0.clone()))
            .collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.submitted_seq));
        v.truncate(m.limit);
        MessageResult(v)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IntentDetail {
    pub summary: IntentSummary,
    pub plan: Plan,
    pub reports: Vec<ReportRecord>,
}

#[derive(Message)]
#[rtype(result = "Result<IntentDetail, OperatorError>")]
pub struct GetIntent(pub String);

impl Handler<GetIntent> for Supervisor {
    type Result = ResponseActFuture<Self, Result<IntentDetail, OperatorError>>;

    fn handle(&mut self, m: GetIntent, _: &mut Context<Self>) -> Self::Result {
        let mut reports = self
            .reports
            .query(Some(&m.0), 0, self.cfg.limits.reports_per_intent);
        // Only this submission's: a reused intent_id's earlier run is history, not this one.
        let since = self
            .active
            .get(&m.0)
            .map(|a| a.summary.first_report_seq)
            .or_else(|| self.finished.get(&m.0).map(|f| f.1.first_report_seq))
            .unwrap_or(0);
        reports.retain(|r| r.seq >= since);
        if let Some((summary, plan)) = self.finished.get(&m.0) {
            return Box::pin(fut::ready(Ok(IntentDetail {
                summary: summary.clone(),
                plan: (**plan).clone(),
                reports,
            })));
        }
        let Some(a) = self.active.get(&m.0) else {
            return Box::pin(fut::ready(Err(OperatorError::NoIntent(m.0))));
        };
        let (addr, summary) = (a.addr.clone(), a.summary.clone());
        Box::pin(
            async move {
                let plan = addr.send(Snapshot).await?;
                Ok(IntentDetail {
                    summary,
                    plan,
                    reports,
                })
            }
            .into_actor(self),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Vec<ReportRecord>")]
pub struct QueryReports {
    pub intent: Option<String>,
    pub after: u64,
    pub limit: usize,
}

impl Handler<QueryReports> for Supervisor {
    type Result = MessageResult<QueryReports>;

    fn handle(&mut self, m: QueryReports, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.reports.query(m.intent.as_deref(), m.after, m.limit))
    }
}

#[derive(Message)]
#[rtype(result = "Vec<LockQueue>")]
pub struct ListLocks;

impl Handler<ListLocks> for Supervisor {
    type Result = ResponseActFuture<Self, Vec<LockQueue>>;

    fn handle(&mut self, _: ListLocks, _: &mut Context<Self>) -> Self::Result {
        let addrs: Vec<_> = self.locks.values().cloned().collect();
        let restored: Vec<LockQueue> = self.restored_locks.values().cloned().collect();
        Box::pin(
            async move {
                let mut out = restored;
                for a in addrs {
                    if let Ok(q) = a.send(LockState).await {
                        out.push(q);
                    }
                }
                // Idle locks stay listed: their last token shows how far fencing has come.
                out.sort_by(|a, b| a.key.cmp(&b.key));
                out
            }
            .into_actor(self),
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub mirage_id: String,
    pub ghosts_connected: usize,
    pub ghosts_known: usize,
    /// Disconnected Ghosts still remembered (bounded by `limits.disconnected_ghosts`).
    pub ghosts_disconnected: usize,
    pub intents_active: usize,
    pub intents_finished_kept: usize,
    pub reports_kept: usize,
    pub event_window: usize,
    pub routes: usize,
    pub locks: usize,
    /// The store's disk: "ok", "disk full" (writes fail) or "disk low: no reserve".
    pub store: &'static str,
}

#[derive(Message)]
#[rtype(result = "Overview")]
pub struct GetOverview;

impl Handler<GetOverview> for Supervisor {
    type Result = MessageResult<GetOverview>;

    fn handle(&mut self, _: GetOverview, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Overview {
            mirage_id: self.cfg.mirage_id.clone(),
            ghosts_connected: self.core.fleet.connected_count(),
            ghosts_known: self.core.fleet.known(),
            ghosts_disconnected: self.core.fleet.disconnected_count(),
            intents_active: self.active.len(),
            intents_finished_kept: self.finished.len(),
            reports_kept: self.reports.len(),
            event_window: self.core.events.len(),
            routes: self.core.routes.len(),
            locks: self.locks.len(),
            store: crate::store::DISK.status(),
        })
    }
}

actorkit::metered_result!(Supervisor, ListGhosts);
actorkit::metered_result!(Supervisor, GetGhost);
actorkit::metered_result!(Supervisor, ListIntents);
actorkit::metered!(Supervisor, GetIntent);
actorkit::metered_result!(Supervisor, QueryReports);
actorkit::metered!(Supervisor, ListLocks);
actorkit::metered_result!(Supervisor, GetOverview);
