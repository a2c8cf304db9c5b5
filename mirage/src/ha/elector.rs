//! The elector: the etcd I/O around the leadership `Machine` (lease grant and keepalive,
//! campaign on one election key, observation, revoke). One tokio task drives it; an
//! `HaHandle` reads the role and makes fenced writes.
//!
//! Observation polls the election key (a linearizable range) every sixth of the TTL rather
//! than holding a watch stream: a follower learns of a vacancy within TTL/6, and the leader
//! that its key is gone or another's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::gateway::{Chain, Etcd, Fence, FenceError, Op};
use super::state::{Action, Input, Machine, Role};

#[derive(Debug, Clone)]
pub struct ElectorConfig {
    /// The one election key; its value names the leader (e.g. its API address).
    pub election_key: String,
    pub id: String,
    /// Lease TTL (whole seconds in etcd).
    pub ttl: Duration,
    /// How long a deposed elector waits before it campaigns again.
    pub rejoin_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("not the leader ({0:?})")]
    NotLeader(Role),
    #[error(transparent)]
    Fence(#[from] FenceError),
}

struct Shared {
    machine: Mutex<Machine>,
    start: Instant,
    role_tx: watch::Sender<Role>,
    /// Freezes the driver (a stand-in for SIGSTOP in tests: no keepalive, no tick).
    paused: AtomicBool,
    /// Ends the driver without resigning (the lease runs out, as after SIGKILL).
    stopped: AtomicBool,
}

impl Shared {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // A panic while holding it leaves a consistent Machine (inputs are pure), so take it.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn feed(&self, input: Input) -> Vec<Action> {
        let mut m = self.lock();
        let out = m.input(input);
        let role = m.role().clone();
        drop(m);
        self.role_tx.send_if_modified(|r| {
            if *r != role {
                *r = role;
                true
            } else {
                false
            }
        });
        out
    }
}

#[derive(Clone)]
pub struct HaHandle {
    shared: Arc<Shared>,
    etcd: Arc<Etcd>,
    key: String,
}

impl HaHandle {
    /// The role, with a leader whose safe window has passed shown as not leading.
    pub fn role(&self) -> Role {
        let m = self.shared.lock();
        match m.role() {
            Role::Leader { .. } if m.fence_at(self.shared.now()).is_none() => Role::Deposed {
                why: "lease window passed, stepping down".into(),
            },
            r => r.clone(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.fence().is_some()
    }

    /// The fence to write with, only while leading.
    pub fn fence(&self) -> Option<Fence> {
        let m = self.shared.lock();
        m.fence_at(self.shared.now()).map(|revision| Fence {
            key: self.key.clone(),
            revision,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.shared.role_tx.subscribe()
    }

    /// A write conditional on our leadership; the revision (the fencing token) on success.
    /// A refusal deposes this elector at once.
    pub async fn fenced_put(&self, puts: &[(&str, &str)]) -> Result<i64, WriteError> {
        self.fenced_txn(&Op::puts(puts)).await
    }

    /// `ops` in one txn conditional on our leadership (the store's commits); the revision.
    /// A refusal deposes this elector at once.
    pub async fn fenced_txn(&self, ops: &[Op]) -> Result<i64, WriteError> {
        let Some(fence) = self.fence() else {
            return Err(WriteError::NotLeader(self.role()));
        };
        let res = self.etcd.fenced_txn(&fence, ops).await;
        self.deposed_if_refused(res)
    }

    /// etcd refusing a fenced write means another elector leads: step down at once.
    fn deposed_if_refused(&self, res: Result<i64, FenceError>) -> Result<i64, WriteError> {
        if let Err(e @ FenceError::Refused { .. }) = &res {
            self.shared.feed(Input::FenceRefused);
            tracing::error!(error = %e, "fenced commit refused by etcd, stepped down");
        }
        res.map_err(Into::into)
    }

    /// As `fenced_txn`, also conditional on the store's commit chain.
    pub async fn fenced_chained_txn(&self, chain: &Chain, ops: &[Op]) -> Result<i64, WriteError> {
        let Some(fence) = self.fence() else {
            return Err(WriteError::NotLeader(self.role()));
        };
        let res = self.etcd.fenced_chained_txn(&fence, chain, ops).await;
        self.deposed_if_refused(res)
    }

    /// The election revision while leading (the fence's), else `None`.
    pub fn revision(&self) -> Option<i64> {
        self.fence().map(|f| f.revision)
    }

    pub fn etcd(&self) -> &Arc<Etcd> {
        &self.etcd
    }

    pub fn pause(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    /// Stops the driver without revoking the lease (leadership ends when the lease does).
    pub fn abandon(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
    }

    /// Steps down and revokes the lease, so another elector can lead at once.
    pub async fn resign(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for a in self.shared.feed(Input::Resign) {
            if let Action::Revoke(id) = a {
                if let Err(e) = self.etcd.lease_revoke(id).await {
                    tracing::warn!(lease = id, error = %e, "revoke on resign failed; the lease will expire");
                }
            }
        }
    }
}

/// Starts the elector on the current tokio runtime.
pub fn spawn(etcd: Arc<Etcd>, cfg: ElectorConfig) -> (HaHandle, tokio::task::JoinHandle<()>) {
    let (role_tx, _) = watch::channel(Role::Follower { leader: None });
    let shared = Arc::new(Shared {
        machine: Mutex::new(Machine::new()),
        start: Instant::now(),
        role_tx,
        paused: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
    });
    let handle = HaHandle {
        shared: shared.clone(),
        etcd: etcd.clone(),
        key: cfg.election_key.clone(),
    };
    let task = tokio::spawn(drive(shared, etcd, cfg));
    (handle, task)
}

async fn drive(shared: Arc<Shared>, etcd: Arc<Etcd>, cfg: ElectorConfig) {
    let period = (cfg.ttl / 3).max(Duration::from_millis(100));
    let observe_every = (cfg.ttl / 6).max(Duration::from_millis(100));
    let mut pending: VecDeque<Action> = shared.lock().start().into();
    let mut last_keepalive = Duration::ZERO;
    let mut last_observe = Duration::ZERO;
    let mut deposed_at: Option<Duration> = None;
    let endpoints = etcd.endpoints().join(",");
    loop {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        if shared.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        while let Some(action) = pending.pop_front() {
            if shared.stopped.load(Ordering::SeqCst) {
                return;
            }
            let next = act(&shared, &etcd, &cfg, &endpoints, action).await;
            pending.extend(next);
        }
        let now = shared.now();
        pending.extend(shared.feed(Input::Tick { now }));
        let (role, lease) = {
            let m = shared.lock();
            (m.role().clone(), m.lease())
        };
        match role {
            Role::Deposed { .. } => {
                let at = *deposed_at.get_or_insert(now);
                if now.saturating_sub(at) >= cfg.rejoin_after {
                    deposed_at = None;
                    pending.extend(shared.feed(Input::Rejoin));
                }
            }
            _ => {
                deposed_at = None;
                if let Some(id) = lease {
                    if now.saturating_sub(last_keepalive) >= period {
                        last_keepalive = now;
                        let input = match etcd.lease_keepalive(id).await {
                            Ok(ttl) => Input::KeepaliveOk { sent_at: now, ttl },
                            Err(e) => {
                                tracing::warn!(lease = id, error = %e, "etcd lease keepalive failed");
                                Input::KeepaliveFailed {
                                    now: shared.now(),
                                    error: e.to_string(),
                                }
                            }
                        };
                        pending.extend(shared.feed(input));
                    }
                }
                if now.saturating_sub(last_observe) >= observe_every && pending.is_empty() {
                    last_observe = now;
                    match etcd.get(&cfg.election_key).await {
                        Ok(kv) => pending.extend(shared.feed(Input::Observed {
                            leader: kv.map(|kv| (kv.value, kv.create_revision, kv.lease)),
                        })),
                        Err(e) => {
                            tracing::debug!(error = %e, "observing the election key failed")
                        }
                    }
                }
            }
        }
        if pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn act(
    shared: &Shared,
    etcd: &Etcd,
    cfg: &ElectorConfig,
    endpoints: &str,
    action: Action,
) -> Vec<Action> {
    match action {
        Action::GrantLease => {
            let sent_at = shared.now();
            match etcd.lease_grant(cfg.ttl).await {
                Ok((id, ttl)) => shared.feed(Input::LeaseGranted { id, ttl, sent_at }),
                Err(e) => {
                    tracing::warn!(endpoints, error = %e, "etcd lease grant failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    shared.feed(Input::LeaseFailed)
                }
            }
        }
        Action::Campaign(lease) => {
            match etcd
                .create_if_absent(&cfg.election_key, &cfg.id, lease)
                .await
            {
                Ok(Ok(revision)) => shared.feed(Input::CampaignWon { revision }),
                // A retried campaign whose first try committed finds its own key.
                Ok(Err(holder)) if holder.lease == lease => shared.feed(Input::CampaignWon {
                    revision: holder.create_revision,
                }),
                Ok(Err(holder)) => shared.feed(Input::CampaignLost {
                    leader: holder.value,
                }),
                Err(e) => {
                    tracing::warn!(endpoints, error = %e, "campaign failed");
                    shared.feed(Input::CampaignFailed)
                }
            }
        }
        Action::Lead { revision } => {
            tracing::info!(id = %cfg.id, key = %cfg.election_key, revision, "leading");
            Vec::new()
        }
        Action::StepDown { why } => {
            tracing::error!(id = %cfg.id, endpoints, why = %why, "stepped down: no longer leading");
            Vec::new()
        }
        Action::Revoke(id) => {
            if let Err(e) = etcd.lease_revoke(id).await {
                tracing::debug!(lease = id, error = %e, "revoking an old lease failed; it will expire");
            }
            Vec::new()
        }
    }
}
