//! Bounded memories of Mirage, pure: the event_id → ack window that makes ingest idempotent,
//! and the report history (bounded globally and per intent).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use shared::envelope::{CompletionState, EventAck, Outcome, Phase};

/// event_id → the ack sent for it, for at least `ttl_ms` and at most `max` entries.
pub struct EventWindow {
    ttl_ms: u64,
    max: usize,
    acks: HashMap<String, EventAck>,
    order: VecDeque<(u64, String)>,
}

impl EventWindow {
    pub fn new(ttl_ms: u64, max: usize) -> EventWindow {
        EventWindow {
            ttl_ms,
            max: max.max(1),
            acks: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, event_id: &str) -> Option<&EventAck> {
        self.acks.get(event_id)
    }

    pub fn insert(&mut self, ack: EventAck, now_ms: u64) {
        self.expire(now_ms);
        if self.acks.len() >= self.max {
            if let Some((_, old)) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
        self.order.push_back((now_ms, ack.event_id.clone()));
        self.acks.insert(ack.event_id.clone(), ack);
    }

    pub fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        while let Some((at, _)) = self.order.front() {
            if *at >= cutoff {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.acks.remove(&id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}

/// One report as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    pub seq: u64,
    pub intent_id: String,
    pub phase: Phase,
    pub completion_state: CompletionState,
    pub summary: String,
    pub step: Option<usize>,
    pub steps_total: usize,
    pub steps_done: usize,
    pub command_id: Option<String>,
    pub event_id: Option<String>,
    pub ghost_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub timestamp_ms: u64,
}

/// The newest `max_total` reports, at most `max_per_intent` of each intent.
pub struct Reports {
    max_total: usize,
    max_per_intent: usize,
    all: VecDeque<ReportRecord>,
    per_intent: HashMap<String, usize>,
    pub dropped: u64,
}

impl Reports {
    pub fn new(max_total: usize, max_per_intent: usize) -> Reports {
        Reports {
            max_total: max_total.max(1),
            max_per_intent: max_per_intent.max(1),
            all: VecDeque::new(),
            per_intent: HashMap::new(),
            dropped: 0,
        }
    }

    pub fn push(&mut self, r: ReportRecord) {
        let n = self.per_intent.entry(r.intent_id.clone()).or_default();
        *n += 1;
        if *n > self.max_per_intent {
            // Drop this intent's oldest report (a chatty intent cannot evict the others).
            if let Some(pos) = self.all.iter().position(|x| x.intent_id == r.intent_id) {
                self.all.remove(pos);
                *n -= 1;
                self.dropped += 1;
            }
        }
        self.all.push_back(r);
        while self.all.len() > self.max_total {
            if let Some(old) = self.all.pop_front() {
                self.dropped += 1;
                if let Some(c) = self.per_intent.get_mut(&old.intent_id) {
                    *c -= 1;
                    if *c == 0 {
                        self.per_intent.remove(&old.intent_id);
                    }
                }
            }
        }
    }

    /// Newest last; `after` skips reports with seq ≤ it (resume).
    pub fn query(&self, intent: Option<&str>, after: u64, limit: usize) -> Vec<ReportRecord> {
        let mut v: Vec<ReportRecord> = self
            .all
            .iter()
            .rev()
            .filter(|r| r.seq > after && intent.is_none_or(|i| r.intent_id == i))
            .take(limit)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::envelope::AckStatus;

    fn ack(id: &str) -> EventAck {
        EventAck {
            event_id: id.into(),
            command_id: "c".into(),
            ghost_id: "g".into(),
            ack_status: AckStatus::Accepted,
            ack_code: 0,
            timestamp_ms: 1,
            extra: vec![],
        }
    }

    fn rep(seq: u64, intent: &str) -> ReportRecord {
        ReportRecord {
            seq,
            intent_id: intent.into(),
            phase: Phase::InProgress,
            completion_state: CompletionState::InProgress,
            summary: String::new(),
            step: None,
            steps_total: 1,
            steps_done: 0,
            command_id: None,
            event_id: None,
            ghost_id: None,
            outcome: None,
            timestamp_ms: seq,
        }
    }

    #[test]
    fn window_is_bounded_by_time_and_count() {
        let mut w = EventWindow::new(100, 2);
        w.insert(ack("a"), 0);
        w.insert(ack("b"), 10);
        assert!(w.get("a").is_some());
        w.insert(ack("c"), 20);
        assert!(w.get("a").is_none(), "count bound");
        w.expire(115);
        assert!(w.get("b").is_none() && w.get("c").is_some(), "time bound");
    }

    #[test]
    fn reports_are_bounded_globally_and_per_intent() {
        let mut r = Reports::new(5, 2);
        for s in 1..=3 {
            r.push(rep(s, "chatty"));
        }
        r.push(rep(4, "quiet"));
        assert_eq!(r.query(Some("chatty"), 0, 10).len(), 2);
        for s in 5..=10 {
            r.push(rep(s, &format!("i{s}")));
        }
        assert_eq!(r.len(), 5);
        assert_eq!(
            r.query(None, 8, 10)
                .iter()
                .map(|x| x.seq)
                .collect::<Vec<_>>(),
            [9, 10]
        );
        assert_eq!(
            r.query(None, 0, 2)
                .iter()
                .map(|x| x.seq)
                .collect::<Vec<_>>(),
            [9, 10]
        );
    }
}
