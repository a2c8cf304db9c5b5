//! The leadership state machine: pure, no clock, no sockets. The elector (`elector.rs`) feeds
//! it what etcd answered and the time it read (`now`, a duration since any fixed start) and
//! carries out the actions it returns.
//!
//! Safety rule: a leader acts only while `now < lease_safe_until`, which is computed from the
//! time a keepalive was *sent* (not answered) plus the TTL etcd granted, less a margin. etcd
//! cannot have expired the lease before then, so nobody else can have been elected; past it,
//! the leader steps down on its own, even if etcd is unreachable (quorum loss).

use std::time::Duration;

/// An etcd lease id (int64 on the wire).
pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No lease yet, or waiting for the current leader to go.
    Follower { leader: Option<String> },
    /// Holds a lease, asking etcd to create the election key.
    Candidate,
    /// Created the election key at `revision` (its create_revision, the fence).
    Leader { revision: i64 },
    /// Was leader (or candidate) and stopped; `why` is the operator-facing reason.
    Deposed { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    LeaseGranted {
        id: LeaseId,
        ttl: Duration,
        sent_at: Duration,
    },
    /// A lease grant failed (etcd unreachable): ask again.
    LeaseFailed,
    CampaignWon {
        revision: i64,
    },
    /// The election key exists and is not ours: `leader` is its value.
    CampaignLost {
        leader: String,
    },
    /// etcd renewed the lease; `ttl == 0` means the lease is gone.
    KeepaliveOk {
        sent_at: Duration,
        ttl: Duration,
    },
    KeepaliveFailed {
        now: Duration,
        error: String,
    },
    /// A campaign got no answer; it may or may not have created the key (observe decides).
    CampaignFailed,
    /// The current election key: `None` if absent, else (value, create_revision, lease).
    Observed {
        leader: Option<(String, i64, LeaseId)>,
    },
    /// etcd refused a fenced write: our election key is not the one we created.
    FenceRefused,
    Tick {
        now: Duration,
    },
    /// After being deposed: start over with a fresh lease.
    Rejoin,
    /// Leave on purpose (shutdown).
    Resign,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    GrantLease,
    /// Create-if-absent of the election key, bound to this lease.
    Campaign(LeaseId),
    /// Leadership gained: the fence every write must carry.
    Lead {
        revision: i64,
    },
    /// Leadership (or candidacy) lost; stop dispatching, say why.
    StepDown {
        why: String,
    },
    /// Best-effort revoke of a lease we no longer use (deletes our key at once).
    Revoke(LeaseId),
}

#[derive(Debug, Clone)]
pub struct Machine {
    role: Role,
    lease: Option<LeaseId>,
    ttl: Duration,
    /// The leader acts only before this (see the module comment).
    safe_until: Duration,
    /// First keepalive failure in the current run of failures, for the message.
    failing_since: Option<Duration>,
    last_error: Option<String>,
}

/// Time kept back from the lease: a leader stops a quarter TTL before etcd could expire it.
fn margin(ttl: Duration) -> Duration {
    ttl / 4
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

impl Machine {
    pub fn new() -> Machine {
        Machine {
            role: Role::Follower { leader: None },
            lease: None,
            ttl: Duration::ZERO,
            safe_until: Duration::ZERO,
            failing_since: None,
            last_error: None,
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn lease(&self) -> Option<LeaseId> {
        self.lease
    }

    /// The leader's fence, only while it may still act at `now`.
    pub fn fence_at(&self, now: Duration) -> Option<i64> {
        match self.role {
            Role::Leader { revision } if now < self.safe_until => Some(revision),
            _ => None,
        }
    }

    /// What to do first, from a fresh machine.
    pub fn start(&mut self) -> Vec<Action> {
        vec![Action::GrantLease]
    }

    fn step_down(&mut self, why: String) -> Vec<Action> {
        let was_active = matches!(self.role, Role::Leader { .. } | Role::Candidate);
        self.role = Role::Deposed { why: why.clone() };
        if was_active {
            vec![Action::StepDown { why }]
        } else {
            Vec::new()
        }
    }

    pub fn input(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::LeaseGranted { id, ttl, sent_at } => {
                if matches!(self.role, Role::Deposed { .. } | Role::Leader { .. }) {
                    // A stale grant after a step-down or while leading: not ours to use.
                    return vec![Action::Revoke(id)];
                }
                self.lease = Some(id);
                self.ttl = ttl;
                self.safe_until = sent_at + ttl.saturating_sub(margin(ttl));
                self.failing_since = None;
                self.role = Role::Candidate;
                vec![Action::Campaign(id)]
            }
            Input::LeaseFailed => match self.role {
                Role::Follower { .. } => vec![Action::GrantLease],
                _ => Vec::new(),
            },
            Input::CampaignWon { revision } => match (&self.role, self.lease) {
                (Role::Candidate, Some(_)) => {
                    self.role = Role::Leader { revision };
                    vec![Action::Lead { revision }]
                }
                _ => Vec::new(),
            },
            Input::CampaignLost { leader } => {
                if matches!(self.role, Role::Candidate | Role::Follower { .. }) {
                    self.role = Role::Follower {
                        leader: Some(leader),
                    };
                }
                Vec::new()
            }
            Input::KeepaliveOk { sent_at, ttl } => {
                if ttl.is_zero() {
                    self.lease = None;
                    return match self.role {
                        Role::Deposed { .. } => Vec::new(),
                        Role::Leader { .. } | Role::Candidate => self
                            .step_down("lease expired in etcd (keepalive found no lease)".into()),
                        Role::Follower { .. } => vec![Action::GrantLease],
                    };
                }
                if !matches!(self.role, Role::Deposed { .. }) {
                    self.ttl = ttl;
                    self.safe_until = self
                        .safe_until
                        .max(sent_at + ttl.saturating_sub(margin(ttl)));
                    self.failing_since = None;
                }
                Vec::new()
            }
            Input::KeepaliveFailed { now, error } => {
                let since = *self.failing_since.get_or_insert(now);
                self.last_error = Some(error.clone());
                if now >= self.safe_until && !matches!(self.role, Role::Deposed { .. }) {
                    let why = format!(
                        "etcd unreachable or without quorum for {} ms (lease TTL {} ms): {error}",
                        now.saturating_sub(since).as_millis(),
                        self.ttl.as_millis()
                    );
                    return self.step_down_or_regrant(why);
                }
                Vec::new()
            }
            Input::CampaignFailed => {
                if matches!(self.role, Role::Candidate) {
                    self.role = Role::Follower { leader: None };
                }
                Vec::new()
            }
            Input::Observed { leader } => match (&self.role, leader) {
                // A campaign whose answer was lost did create the key: it is ours (our lease).
                (Role::Follower { .. } | Role::Candidate, Some((_, rev, lease)))
                    if Some(lease) == self.lease =>
                {
                    self.role = Role::Leader { revision: rev };
                    vec![Action::Lead { revision: rev }]
                }
                (Role::Leader { revision }, Some((_, rev, _))) if rev != *revision => {
                    let why = format!("another leader holds the election key (revision {rev})");
                    self.step_down(why)
                }
                (Role::Leader { .. }, None) => {
                    self.step_down("our election key is gone from etcd (lease lost)".into())
                }
                (Role::Follower { .. }, None) => match self.lease {
                    Some(id) => {
                        self.role = Role::Candidate;
                        vec![Action::Campaign(id)]
                    }
                    None => vec![Action::GrantLease],
                },
                (Role::Follower { .. }, Some((value, _, _))) => {
                    self.role = Role::Follower {
                        leader: Some(value),
                    };
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Input::FenceRefused => {
                if matches!(self.role, Role::Leader { .. }) {
                    self.step_down("a fenced write was refused: leadership lost".into())
                } else {
                    Vec::new()
                }
            }
            Input::Tick { now } => {
                if matches!(self.role, Role::Leader { .. }) && now >= self.safe_until {
                    let why = match self.failing_since {
                        Some(since) => format!(
                            "etcd unreachable or without quorum: no keepalive answered for {} ms (lease TTL {} ms): {}",
                            now.saturating_sub(since).as_millis(),
                            self.ttl.as_millis(),
                            self.last_error.as_deref().unwrap_or("")
                        ),
                        None => format!(
                            "lease not renewed in time (TTL {} ms); paused or too slow",
                            self.ttl.as_millis()
                        ),
                    };
                    return self.step_down(why);
                }
                Vec::new()
            }
            Input::Rejoin => {
                if !matches!(self.role, Role::Deposed { .. }) {
                    return Vec::new();
                }
                self.role = Role::Follower { leader: None };
                self.failing_since = None;
                let mut out = Vec::new();
                if let Some(old) = self.lease.take() {
                    out.push(Action::Revoke(old));
                }
                out.push(Action::GrantLease);
                out
            }
            Input::Resign => {
                let mut out = self.step_down("resigned".into());
                if let Some(old) = self.lease.take() {
                    out.push(Action::Revoke(old));
                }
                out
            }
        }
    }

    /// A follower whose keepalives fail simply drops its lease and asks again; a leader or
    /// candidate steps down.
    fn step_down_or_regrant(&mut self, why: String) -> Vec<Action> {
        match self.role {
            Role::Follower { .. } => {
                self.lease = None;
                self.failing_since = None;
                vec![Action::GrantLease]
            }
            _ => self.step_down(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn leader(rev: i64) -> Machine {
        let mut m = Machine::new();
        assert_eq!(m.start(), vec![Action::GrantLease]);
        let a = m.input(Input::LeaseGranted {
            id: 7,
            ttl: ms(4000),
            sent_at: ms(0),
        });
        assert_eq!(a, vec![Action::Campaign(7)]);
        assert_eq!(m.role(), &Role::Candidate);
        let a = m.input(Input::CampaignWon { revision: rev });
        assert_eq!(a, vec![Action::Lead { revision: rev }]);
        m
    }

    #[test]
    fn campaign_won_leads_with_its_revision_as_fence() {
        let m = leader(42);
        assert_eq!(m.role(), &Role::Leader { revision: 42 });
        assert_eq!(m.fence_at(ms(100)), Some(42));
    }

    #[test]
    fn leader_stops_a_margin_before_the_lease_can_expire() {
        let mut m = leader(5);
        // Granted at 0 with TTL 4 s: safe until 3 s (a quarter kept back).
        assert_eq!(m.fence_at(ms(2999)), Some(5));
        assert_eq!(m.fence_at(ms(3000)), None);
        assert!(m.input(Input::Tick { now: ms(2999) }).is_empty());
        let a = m.input(Input::Tick { now: ms(3000) });
        assert!(matches!(&a[..], [Action::StepDown { why }] if why.contains("not renewed")));
        assert!(matches!(m.role(), Role::Deposed { .. }));
    }

    #[test]
    fn keepalive_extends_from_the_send_time_not_the_answer_time() {
        let mut m = leader(5);
        m.input(Input::KeepaliveOk {
            sent_at: ms(1000),
            ttl: ms(4000),
        });
        assert_eq!(m.fence_at(ms(3999)), Some(5));
        assert_eq!(m.fence_at(ms(4000)), None);
        // An old answer arriving late never shortens the window.
        m.input(Input::KeepaliveOk {
            sent_at: ms(500),
            ttl: ms(4000),
        });
        assert_eq!(m.fence_at(ms(3999)), Some(5));
    }

    #[test]
    fn failing_keepalives_depose_only_once_the_window_is_spent_and_say_why() {
        let mut m = leader(5);
        let err = "connect 127.0.0.1:1: refused".to_string();
        assert!(m
            .input(Input::KeepaliveFailed {
                now: ms(1000),
                error: err.clone()
            })
            .is_empty());
        assert_eq!(m.fence_at(ms(2000)), Some(5));
        let a = m.input(Input::KeepaliveFailed {
            now: ms(3100),
            error: err.clone(),
        });
        match &a[..] {
            [Action::StepDown { why }] => {
                assert!(why.contains("2100 ms"), "{why}");
                assert!(why.contains("refused"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Deposed stays deposed (no second step-down).
        assert!(m
            .input(Input::KeepaliveFailed {
                now: ms(5000),
                error: err
            })
            .is_empty());
        assert_eq!(m.fence_at(ms(3200)), None);
    }

    #[test]
    fn a_keepalive_that_finds_no_lease_deposes() {
        let mut m = leader(5);
        let a = m.input(Input::KeepaliveOk {
            sent_at: ms(1000),
            ttl: ms(0),
        });
        assert!(matches!(&a[..], [Action::StepDown { .. }]));
        assert_eq!(m.lease(), None);
    }

    #[test]
    fn refused_fence_or_foreign_key_deposes_the_leader() {
        let mut m = leader(5);
        let a = m.input(Input::FenceRefused);
        assert!(matches!(&a[..], [Action::StepDown { why }] if why.contains("refused")));
        let mut m = leader(5);
        let a = m.input(Input::Observed {
            leader: Some(("b".into(), 9, 99)),
        });
        assert!(matches!(&a[..], [Action::StepDown { why }] if why.contains("revision 9")));
        let mut m = leader(5);
        assert!(m
            .input(Input::Observed {
                leader: Some(("a".into(), 5, 7))
            })
            .is_empty());
        let a = m.input(Input::Observed { leader: None });
        assert!(matches!(&a[..], [Action::StepDown { .. }]));
    }

    #[test]
    fn follower_campaigns_when_the_key_goes() {
        let mut m = Machine::new();
        m.start();
        m.input(Input::LeaseGranted {
            id: 3,
            ttl: ms(4000),
            sent_at: ms(0),
        });
        m.input(Input::CampaignLost {
            leader: "other".into(),
        });
        assert_eq!(
            m.role(),
            &Role::Follower {
                leader: Some("other".into())
            }
        );
        assert_eq!(m.fence_at(ms(1)), None);
        let a = m.input(Input::Observed { leader: None });
        assert_eq!(a, vec![Action::Campaign(3)]);
        // A win only counts for a candidate.
        assert_eq!(
            m.input(Input::CampaignWon { revision: 11 }),
            vec![Action::Lead { revision: 11 }]
        );
    }

    #[test]
    fn deposed_ignores_wins_and_grants_until_rejoin_which_revokes_the_old_lease() {
        let mut m = leader(5);
        m.input(Input::FenceRefused);
        assert!(m.input(Input::CampaignWon { revision: 6 }).is_empty());
        assert_eq!(
            m.input(Input::LeaseGranted {
                id: 8,
                ttl: ms(4000),
                sent_at: ms(0)
            }),
            vec![Action::Revoke(8)]
        );
        assert_eq!(
            m.input(Input::Rejoin),
            vec![Action::Revoke(7), Action::GrantLease]
        );
        assert_eq!(m.role(), &Role::Follower { leader: None });
    }

    #[test]
    fn a_lost_campaign_answer_is_resolved_by_observing_our_own_lease_on_the_key() {
        let mut m = Machine::new();
        m.start();
        m.input(Input::LeaseGranted {
            id: 3,
            ttl: ms(4000),
            sent_at: ms(0),
        });
        assert!(m.input(Input::CampaignFailed).is_empty());
        assert_eq!(m.role(), &Role::Follower { leader: None });
        let a = m.input(Input::Observed {
            leader: Some(("me".into(), 21, 3)),
        });
        assert_eq!(a, vec![Action::Lead { revision: 21 }]);
        // Someone else's key (other lease) only names the leader.
        let mut m = Machine::new();
        m.input(Input::LeaseGranted {
            id: 3,
            ttl: ms(4000),
            sent_at: ms(0),
        });
        m.input(Input::CampaignFailed);
        assert!(m
            .input(Input::Observed {
                leader: Some(("b".into(), 21, 4))
            })
            .is_empty());
        assert_eq!(
            m.role(),
            &Role::Follower {
                leader: Some("b".into())
            }
        );
    }

    #[test]
    fn resign_steps_down_and_revokes() {
        let mut m = leader(5);
        let a = m.input(Input::Resign);
        assert_eq!(
            a,
            vec![
                Action::StepDown {
                    why: "resigned".into()
                },
                Action::Revoke(7)
            ]
        );
    }

    #[test]
    fn follower_with_failing_keepalive_regrants_instead_of_stepping_down() {
        let mut m = Machine::new();
        m.start();
        m.input(Input::LeaseGranted {
            id: 3,
            ttl: ms(4000),
            sent_at: ms(0),
        });
        m.input(Input::CampaignLost { leader: "x".into() });
        let a = m.input(Input::KeepaliveFailed {
            now: ms(3500),
            error: "timeout".into(),
        });
        assert_eq!(a, vec![Action::GrantLease]);
        assert_eq!(m.lease(), None);
    }

    proptest::proptest! {
        /// Whatever keepalives succeed, fail or arrive late, the leader's window never
        /// reaches past the earliest moment etcd could expire its lease: the latest
        /// successful keepalive's send time plus the TTL (etcd counts from receipt, later).
        #[test]
        fn the_fence_never_outlives_the_lease(
            steps in proptest::collection::vec((0u64..1500, 0u8..4, 0u64..800), 1..60),
            ttl_ms in 2000u64..6000,
        ) {
            let ttl = ms(ttl_ms);
            let mut m = Machine::new();
            m.start();
            m.input(Input::LeaseGranted { id: 1, ttl, sent_at: ms(0) });
            m.input(Input::CampaignWon { revision: 9 });
            let mut now = ms(0);
            let mut etcd_expiry = ttl;
            for (gap, kind, lag) in steps {
                now += ms(gap);
                match kind {
                    0 => {
                        // Sent `lag` ago, answered now.
                        let sent_at = now.saturating_sub(ms(lag));
                        m.input(Input::KeepaliveOk { sent_at, ttl });
                        etcd_expiry = etcd_expiry.max(sent_at + ttl);
                    }
                    1 => {
                        m.input(Input::KeepaliveFailed { now, error: "x".into() });
                    }
                    2 => {
                        m.input(Input::Tick { now });
                    }
                    _ => {
                        m.input(Input::Observed { leader: Some(("a".into(), 9, 1)) });
                    }
                }
                if m.fence_at(now).is_some() {
                    proptest::prop_assert!(now + ttl / 4 <= etcd_expiry);
                    proptest::prop_assert_eq!(m.role(), &Role::Leader { revision: 9 });
                }
                // Once deposed, never leader again without a new campaign.
                if matches!(m.role(), Role::Deposed { .. }) {
                    proptest::prop_assert!(m.fence_at(now).is_none());
                }
            }
        }
    }
}
