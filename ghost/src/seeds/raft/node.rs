//! One running member: the openraft handle, its store, the peer listener, the client
//! operations (forwarded one hop to the leader when this member is not it) and the observer
//! that publishes term, role, leader, commit, applied and membership on change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::net::{self, ClientOp, ClientReply, Envelope, ExchangeError, Reply, Rpc};
use super::store::Db;
use super::types::{uri_of, NodeId, ObserveGate, Request};
use crate::seeds::SeedCtx;

/// Peer connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// A client write or a read index waits this long for the cluster.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A join waits this long for the learner to catch up and the voter change to commit.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Observations of one member go out at most this often.
pub const OBSERVE_GAP_MS: u64 = 200;

pub struct Node {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft<super::types::TypeConfig>,
    pub db: Db,
}

pub fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

type Metrics = RaftMetrics<NodeId, BasicNode>;

impl Node {
    fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// The leader's address, when one is known and is not this member.
    fn leader_addr(&self, m: &Metrics) -> Option<(NodeId, String)> {
        let l = m.current_leader?;
        let n = m.membership_config.membership().get_node(&l)?;
        Some((l, n.addr.clone()))
    }

    /// What `status` prints and the observations carry.
    pub fn state(&self) -> BTreeMap<String, String> {
        let m = self.metrics();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let learners: BTreeSet<NodeId> = mem.learner_ids().collect();
        let members: Vec<String> = mem
            .nodes()
            .map(|(id, n)| {
                let kind = if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                };
                format!("{id}:{kind}@{}", uri_of(&n.addr))
            })
            .collect();
        let leader = m.current_leader;
        let leader_uri = leader
            .and_then(|l| mem.get_node(&l))
            .map(|n| uri_of(&n.addr))
            .unwrap_or_default();
        let s = |v: &dyn std::fmt::Display| v.to_string();
        BTreeMap::from([
            ("state".into(), "running".into()),
            ("node_id".into(), s(&self.id)),
            ("uri".into(), uri_of(&self.addr)),
            ("role".into(), role(m.state).into()),
            ("term".into(), s(&m.current_term)),
            (
                "leader".into(),
                leader.map(|l| l.to_string()).unwrap_or_default(),
            ),
            ("leader_uri".into(), leader_uri),
            (
                "commit".into(),
                s(&self.db.committed.load(Ordering::Relaxed)),
            ),
            (
                "applied".into(),
                s(&m.last_applied.map(|l| l.index).unwrap_or(0)),
            ),
            ("last_log".into(), s(&m.last_log_index.unwrap_or(0))),
            ("voters".into(), s(&voters.len())),
            ("learners".into(), s(&learners.len())),
            ("voter".into(), s(&voters.contains(&self.id))),
            ("members".into(), members.join(";")),
        ])
    }

    /// True once `n` voters are configured and a voter is known as leader.
    pub fn formed(&self, n: usize) -> bool {
        let m = self.metrics();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        voters.len() >= n && m.current_leader.is_some_and(|l| voters.contains(&l))
    }

    async fn forward(&self, m: &Metrics, op: ClientOp, ttl: Duration) -> ClientReply {
        let Some((leader, addr)) = self.leader_addr(m) else {
            return ClientReply::NotApplied("no leader known yet".into());
        };
        let env = Envelope {
            to: leader,
            rpc: Rpc::Client(op),
        };
        match net::exchange(&addr, &env, ttl).await {
            Ok(Reply::Client(r)) => r,
            Ok(other) => ClientReply::NotApplied(format!("leader {leader} answered {other:?}")),
            Err(ExchangeError::Connect(e)) => {
                ClientReply::NotApplied(format!("leader {leader} unreachable: {e}"))
            }
            Err(e @ ExchangeError::AfterSend(_)) => {
                ClientReply::Unknown(format!("forwarded to leader {leader}: {e}"))
            }
        }
    }

    /// A client operation; `forwarded` = it came from another member (answered here only).
    pub async fn client(&self, op: ClientOp, forwarded: bool) -> ClientReply {
        let m = self.metrics();
        let leader_here = m.current_leader == Some(self.id) && m.state == ServerState::Leader;
        if !leader_here {
            if forwarded {
                return ClientReply::NotApplied(format!(
                    "node {} is not the leader (leader {:?})",
                    self.id, m.current_leader
                ));
            }
            let ttl = match op {
                ClientOp::Join { .. } => JOIN_TIMEOUT,
                _ => CLIENT_TIMEOUT,
            };
            return self.forward(&m, op, ttl + Duration::from_secs(1)).await;
        }
        match op {
            ClientOp::Write(req) => {
                match tokio::time::timeout(CLIENT_TIMEOUT, self.raft.client_write(req)).await {
                    Err(_) => {
                        ClientReply::Unknown(format!("not committed within {CLIENT_TIMEOUT:?}"))
                    }
                    // Proposed here as leader: whatever failed, it may still commit.
                    Ok(Err(e)) => ClientReply::Unknown(e.to_string()),
                    Ok(Ok(r)) => match r.data.refused {
                        Some(why) => ClientReply::Failed(why),
                        None => ClientReply::Ok(r.data.prev),
                    },
                }
            }
            ClientOp::Read { key } => {
                match tokio::time::timeout(CLIENT_TIMEOUT, self.raft.ensure_linearizable()).await {
                    Err(_) => {
                        ClientReply::NotApplied(format!("no read index within {CLIENT_TIMEOUT:?}"))
                    }
                    Ok(Err(e)) => ClientReply::NotApplied(e.to_string()),
                    Ok(Ok(_)) => match self.db.get(&key) {
                        Ok(v) => ClientReply::Ok(v),
                        Err(e) => ClientReply::Failed(e),
                    },
                }
            }
            ClientOp::Join { node_id, addr } => self.join_here(&m, node_id, addr).await,
            ClientOp::Leave { node_id } => {
                let mem = m.membership_config.membership();
                if mem.get_node(&node_id).is_none() {
                    return ClientReply::Ok(None);
                }
                let change = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
                let res = tokio::time::timeout(JOIN_TIMEOUT, self.change_membership(change)).await;
                match res {
                    Err(_) => {
                        ClientReply::Unknown(format!("not committed within {JOIN_TIMEOUT:?}"))
                    }
                    Ok(Err(e)) => ClientReply::Failed(e.to_string()),
                    Ok(Ok(_)) => ClientReply::Ok(None),
                }
            }
        }
    }

    /// One membership change, waiting out another one still in flight: Ghosts joining at
    /// once (a plan's `join` on all) each ask the leader, and openraft refuses a change while
    /// the previous joint config is uncommitted. The caller bounds the total wait.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> {
        let mut pause = Duration::from_millis(20);
        loop {
            match self.raft.change_membership(change.clone(), false).await {
                Err(e)
                    if matches!(
                        e.api_error(),
                        Some(ClientWriteError::ChangeMembershipError(
                            ChangeMembershipError::InProgress(_)
                        ))
                    ) =>
                {
                    tracing::debug!(
                        component = "seed.raft",
                        node_id = self.id,
                        "membership change in progress; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other.map(|_| ()),
            }
        }
    }

    async fn join_here(&self, m: &Metrics, id: NodeId, addr: String) -> ClientReply {
        let mem = m.membership_config.membership();
        let is_voter = mem.voter_ids().any(|v| v == id);
        match mem.get_node(&id) {
            Some(n) if n.addr != addr => {
                return ClientReply::Failed(format!(
                    "node {id} is a member at {}, not {}",
                    uri_of(&n.addr),
                    uri_of(&addr)
                ))
            }
            Some(_) if is_voter => return ClientReply::Ok(None),
            _ => {}
        }
        let go = async {
            if mem.get_node(&id).is_none() {
                self.raft
                    .add_learner(id, BasicNode::new(addr.clone()), true)
                    .await
                    .map_err(|e| format!("add learner {id}: {e}"))?;
            }
            self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                .await
                .map_err(|e| format!("make {id} a voter: {e}"))?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(JOIN_TIMEOUT, go).await {
            Err(_) => {
                ClientReply::Unknown(format!("join of {id} not done within {JOIN_TIMEOUT:?}"))
            }
            Ok(Err(e)) => ClientReply::Failed(e),
            Ok(Ok(())) => ClientReply::Ok(None),
        }
    }

    pub async fn write(&self, req: Request) -> ClientReply {
        self.client(ClientOp::Write(req), false).await
    }
}

/// Serves peers until the runtime goes. A bad frame or a frame for another node closes that
/// connection only.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(component = "seed.raft", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(component = "seed.raft", %peer, "too many peer connections; closed");
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(&node, s).await {
                tracing::debug!(component = "seed.raft", %peer, error = %e, "peer connection closed");
            }
        });
    }
}

async fn connection(node: &Node, mut s: TcpStream) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    loop {
        // Idle peers are dropped; an active one sends heartbeats far more often.
        let buf = match tokio::time::timeout(Duration::from_secs(60), net::read_frame(&mut s)).await
        {
            Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        let env: Envelope = match serde_json::from_slice(&buf) {
            Ok(e) => e,
            Err(e) => {
                let _ = net::write_frame(&mut s, &Reply::Refused(format!("bad frame: {e}"))).await;
                return Err(std::io::Error::other(format!("bad frame: {e}")));
            }
        };
        // `to: 0` = whoever listens here: only a client operation (`join via=URI`).
        let anyone = env.to == 0 && matches!(env.rpc, Rpc::Client(_));
        if env.to != node.id && !anyone {
            let why = format!("this is node {}, not {}", node.id, env.to);
            net::write_frame(&mut s, &Reply::Refused(why.clone())).await?;
            return Err(std::io::Error::other(why));
        }
        let reply = match env.rpc {
            Rpc::Append(r) => Reply::Append(node.raft.append_entries(r).await),
            Rpc::Vote(r) => Reply::Vote(node.raft.vote(r).await),
            Rpc::Snapshot(r) => Reply::Snapshot(node.raft.install_snapshot(r).await),
            Rpc::Client(op) => Reply::Client(node.client(op, true).await),
        };
        net::write_frame(&mut s, &reply).await?;
    }
}

/// Publishes the member's state on every change, at most every [`OBSERVE_GAP_MS`].
pub async fn observe(node: Arc<Node>, ctx: SeedCtx) {
    let mut rx = node.raft.metrics();
    let mut gate = ObserveGate::default();
    let mut tick = tokio::time::interval(Duration::from_millis(OBSERVE_GAP_MS / 2));
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {}
        }
        if let Some(s) = gate.offer(node.state(), shared::now_ms(), OBSERVE_GAP_MS) {
            let _ = ctx.observe(s);
        }
    }
}
