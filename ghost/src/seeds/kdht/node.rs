//! The libp2p swarm of one kdht node, on a dedicated thread with its own current-thread tokio
//! runtime (so the seed's actor thread only awaits one-shot replies). Operations arrive through
//! a bounded channel; the loop ends when the channel closes (`leave`, Ghost stop, seed drop),
//! which drops the swarm and frees the port.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, GetRecordOk, NodeStatus, QueryId, QueryResult, Quorum, Record};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, identify, identity, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol,
    Swarm,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{KdhtSpec, QUERY_TIMEOUT};
use crate::seeds::SeedCtx;

/// The DHT protocol: Ghost nodes form their own network, apart from any public one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ghost/kad/1.0.0");
/// Operations queued for the node at most; past it an operation is refused ("busy").
pub const QUEUE: usize = 64;
/// Entries `peers` prints at most.
const MAX_LISTED: usize = 256;
/// Listen addresses taken from one peer's identify message at most.
const MAX_ADDRS_PER_PEER: usize = 4;
const TICK: Duration = Duration::from_millis(200);
const REDIAL: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(5);

pub type Reply = oneshot::Sender<Result<String, String>>;

/// One operation for the node; each answers on its one-shot `reply`.
pub enum Req {
    Join {
        peers: Vec<(PeerId, Multiaddr)>,
        wait: Duration,
        reply: Reply,
    },
    Store {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Option<Duration>,
        reply: Reply,
    },
    Find {
        key: Vec<u8>,
        reply: Reply,
    },
    Peers(Reply),
    Status(Reply),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    limits: connection_limits::Behaviour,
}

/// The seed's side of a running node.
pub struct NodeHandle {
    pub uri: String,
    tx: mpsc::Sender<Req>,
    alive: Arc<AtomicBool>,
    done: oneshot::Receiver<()>,
}

impl NodeHandle {
    /// Starts the node and waits (≤ 5 s) until it listens; Err names what failed.
    pub fn spawn(
        key: identity::Keypair,
        spec: KdhtSpec,
        ctx: SeedCtx,
    ) -> Result<NodeHandle, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let (done_tx, done) = oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let alive2 = alive.clone();
        std::thread::Builder::new()
            .name("kdht-node".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(run(key, spec, ctx, rx, started_tx)),
                    Err(e) => {
                        let _ = started_tx.send(Err(format!("cannot start a runtime: {e}")));
                    }
                }
                alive2.store(false, Ordering::SeqCst);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the node thread: {e}"))?;
        let addr = started_rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| format!("the node did not listen within {START_TIMEOUT:?}"))??;
        Ok(NodeHandle {
            uri: super::uri(&addr),
            tx,
            alive,
            done,
        })
    }

    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.tx.is_closed()
    }

    /// Queues one operation; never blocks (a full queue is refused).
    pub fn send(
        &self,
        req: impl FnOnce(Reply) -> Req,
    ) -> Result<oneshot::Receiver<Result<String, String>>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(req(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                format!("the node is busy ({QUEUE} operations queued); try again")
            }
            mpsc::error::TrySendError::Closed(_) => "the node stopped".to_owned(),
        })?;
        Ok(rx)
    }

    /// Closes the channel (the loop ends, the port closes) and waits ≤ 3 s for it.
    pub async fn shutdown(self) {
        let NodeHandle { tx, done, .. } = self;
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
    }
}

fn build(key: identity::Keypair, spec: &KdhtSpec) -> Result<Swarm<Behaviour>, String> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| format!("transport: {e}"))?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let store = MemoryStore::with_config(
                id,
                MemoryStoreConfig {
                    max_records: spec.max_records,
                    max_value_bytes: spec.max_value_bytes,
                    max_providers_per_key: spec.replication,
                    max_provided_keys: spec.max_records,
                },
            );
            let mut cfg = kad::Config::new(KAD_PROTOCOL);
            let rf = NonZeroUsize::new(spec.replication).unwrap_or(NonZeroUsize::MIN);
            cfg.set_replication_factor(rf);
            // Answers before the operation's own deadline.
            cfg.set_query_timeout(QUERY_TIMEOUT - Duration::from_secs(2));
            // A record with the largest value still fits a message; anything larger a peer
            // sends is refused by the codec.
            cfg.set_max_packet_size(spec.max_value_bytes + 8 * 1024);
            let mut kad = kad::Behaviour::with_config(id, store, cfg);
            // Listening on 127.0.0.1 never confirms an external address: serve regardless.
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new(
                "/ghost/kdht/1.0.0".into(),
                key.public(),
            ));
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_pending_incoming(Some(32))
                    .with_max_pending_outgoing(Some(64))
                    .with_max_established_incoming(Some(spec.max_connections))
                    .with_max_established_outgoing(Some(spec.max_connections))
                    .with_max_established_per_peer(Some(2)),
            );
            Behaviour {
                kad,
                identify,
                limits,
            }
        })
        .map_err(|e| format!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

struct Join {
    want: BTreeSet<PeerId>,
    addrs: HashMap<PeerId, Multiaddr>,
    started: Instant,
    deadline: Instant,
    last_dial: Instant,
    reply: Reply,
}

struct Node {
    swarm: Swarm<Behaviour>,
    ctx: SeedCtx,
    uri: String,
    replication: usize,
    /// Store queries in flight: the quorum asked for, the reply.
    puts: HashMap<QueryId, (usize, Reply)>,
    gets: HashMap<QueryId, (Vec<u8>, Reply)>,
    joins: Vec<Join>,
    dirty: bool,
}

async fn run(
    key: identity::Keypair,
    spec: KdhtSpec,
    ctx: SeedCtx,
    mut rx: mpsc::Receiver<Req>,
    started: std::sync::mpsc::SyncSender<Result<Multiaddr, String>>,
) {
    let mut swarm = match build(key, &spec) {
        Ok(s) => s,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let listen = Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(spec.port));
    if let Err(e) = swarm.listen_on(listen.clone()) {
        let _ = started.send(Err(format!("cannot listen on {listen}: {e}")));
        return;
    }
    let first = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(format!("listener on {listen}: {error}"))
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(format!("listener on {listen} closed: {reason:?}"))
                }
                _ => {}
            }
        }
    })
    .await;
    let addr = match first {
        Ok(Ok(a)) => a.with(Protocol::P2p(*swarm.local_peer_id())),
        Ok(Err(e)) => {
            let _ = started.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = started.send(Err(format!("no listen address on {listen} within 5 s")));
            return;
        }
    };
    let _ = started.send(Ok(addr.clone()));
    let mut node = Node {
        swarm,
        ctx,
        uri: super::uri(&addr),
        replication: spec.replication,
        puts: HashMap::new(),
        gets: HashMap::new(),
        joins: Vec::new(),
        dirty: true,
    };
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            req = rx.recv() => match req {
                None => break,
                Some(r) => node.on_req(r),
            },
            ev = node.swarm.select_next_some() => node.on_event(ev),
            _ = tick.tick() => {
                node.check_joins();
                if node.dirty {
                    node.dirty = false;
                    node.publish("running");
                }
            }
        }
    }
    node.publish("left");
    tracing::info!(component = "ghost.seed.kdht", uri = %node.uri, "kdht node left");
}

impl Node {
    fn routing_peers(&mut self) -> BTreeSet<PeerId> {
        let mut out = BTreeSet::new();
        for b in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in b.iter() {
                out.insert(*e.node.key.preimage());
            }
        }
        out
    }

    fn stored(&mut self) -> usize {
        self.swarm.behaviour_mut().kad.store_mut().records().count()
    }

    fn status(&mut self, state: &str) -> serde_json::Value {
        let table = self.routing_peers().len();
        let stored = self.stored();
        json!({
            "state": state,
            "uri": self.uri,
            "peer_id": self.swarm.local_peer_id().to_string(),
            "routing_table_size": table,
            "connected_peers": self.swarm.connected_peers().count(),
            "stored_records": stored,
            "replication": self.replication,
        })
    }

    /// Observed state (best effort: a full queue drops it, a later one supersedes it).
    fn publish(&mut self, state: &str) {
        let s = self.status(state);
        let mut m: shared::envelope::Args = s
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let v = v
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string());
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if state != "running" {
            // A node that left advertises nothing.
            m.remove("uri");
        }
        let _ = self.ctx.observe(m);
    }

    fn on_req(&mut self, r: Req) {
        match r {
            Req::Status(reply) => {
                let s = self.status("running");
                let _ = reply.send(Ok(s.to_string()));
            }
            Req::Peers(reply) => {
                let mut list = Vec::new();
                let connected: BTreeSet<PeerId> = self.swarm.connected_peers().copied().collect();
                for b in self.swarm.behaviour_mut().kad.kbuckets() {
                    for e in b.iter() {
                        if list.len() >= MAX_LISTED {
                            break;
                        }
                        let id = *e.node.key.preimage();
                        list.push(json!({
                            "peer_id": id.to_string(),
                            "addresses": e.node.value.iter().take(MAX_ADDRS_PER_PEER).map(|a| a.to_string()).collect::<Vec<_>>(),
                            "connected": connected.contains(&id),
                            "table_status": if e.status == NodeStatus::Connected { "connected" } else { "disconnected" },
                        }));
                    }
                }
                let _ = reply.send(Ok(
                    json!({"routing_table_size": list.len(), "peers": list}).to_string()
                ));
            }
            Req::Join { peers, wait, reply } => {
                let me = *self.swarm.local_peer_id();
                let mut want = BTreeSet::new();
                let mut addrs = HashMap::new();
                for (id, addr) in peers.into_iter().filter(|(id, _)| *id != me) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&id, addr.clone());
                    self.dial(id, &addr);
                    want.insert(id);
                    addrs.insert(id, addr);
                }
                // A node with no known peer has nothing to bootstrap from: not an error here.
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
                let now = Instant::now();
                self.joins.push(Join {
                    want,
                    addrs,
                    started: now,
                    deadline: now + wait,
                    last_dial: now,
                    reply,
                });
                self.dirty = true;
                self.check_joins();
            }
            Req::Store {
                key,
                value,
                ttl,
                reply,
            } => {
                let record = Record {
                    key: kad::RecordKey::new(&key),
                    value,
                    publisher: None,
                    expires: ttl.map(|t| Instant::now() + t),
                };
                self.dirty = true;
                let peers = self.routing_peers().len();
                if peers == 0 {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    let r = kad.store_mut().put(record);
                    let _ = reply.send(
                        r.map(|()| json!({"stored": "local", "replicas": 0, "note": "no peers: join first"}).to_string())
                            .map_err(|e| format!("the record store refused it: {e}")),
                    );
                    return;
                }
                let q = NonZeroUsize::new(self.replication.min(peers)).unwrap_or(NonZeroUsize::MIN);
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, Quorum::N(q))
                {
                    Ok(id) => {
                        self.puts.insert(id, (q.get(), reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("the record store refused it: {e}")));
                    }
                }
            }
            Req::Find { key, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(kad::RecordKey::new(&key));
                self.gets.insert(id, (key, reply));
            }
        }
    }

    fn dial(&mut self, id: PeerId, addr: &Multiaddr) {
        if self.swarm.is_connected(&id) {
            return;
        }
        let opts = DialOpts::peer_id(id).addresses(vec![addr.clone()]).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(component = "ghost.seed.kdht", peer = %id, error = %e, "dial refused");
        }
    }

    /// Answers every `join` whose peers are all in the routing table and connected, or
    /// whose wait is over (naming the peers missing); re-dials the rest once a second.
    fn check_joins(&mut self) {
        if self.joins.is_empty() {
            return;
        }
        let table = self.routing_peers();
        let now = Instant::now();
        let mut keep = Vec::new();
        let mut redial = Vec::new();
        for mut j in std::mem::take(&mut self.joins) {
            let missing: Vec<PeerId> = j
                .want
                .iter()
                .filter(|p| !(table.contains(*p) && self.swarm.is_connected(p)))
                .copied()
                .collect();
            if missing.is_empty() {
                tracing::info!(
                    component = "ghost.seed.kdht",
                    peers = j.want.len(),
                    table = table.len(),
                    waited_ms = (now - j.started).as_millis() as u64,
                    "joined"
                );
                let _ = j.reply.send(Ok(json!({
                    "joined": j.want.len(),
                    "routing_table_size": table.len(),
                    "uri": self.uri,
                })
                .to_string()));
            } else if now >= j.deadline {
                let names: Vec<String> = missing.iter().take(8).map(|p| p.to_string()).collect();
                let _ = j.reply.send(Err(format!(
                    "the routing table holds {} of {} peers after the wait; missing (connected and in the table): {}",
                    j.want.len() - missing.len(),
                    j.want.len(),
                    names.join(", ")
                )));
            } else {
                if now.duration_since(j.last_dial) >= REDIAL {
                    j.last_dial = now;
                    redial.extend(
                        missing
                            .iter()
                            .filter_map(|p| j.addrs.get(p).map(|a| (*p, a.clone()))),
                    );
                }
                keep.push(j);
            }
        }
        self.joins = keep;
        for (id, addr) in redial {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&id, addr.clone());
            self.dial(id, &addr);
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(k)) => self.on_kad(k),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                // A peer that speaks our DHT and says where it listens joins the table (an
                // inbound connection alone tells only its ephemeral source port).
                for a in info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                }
                self.dirty = true;
            }
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. } => {
                self.dirty = true;
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // Garbage, a wrong protocol or a failed handshake: refused by the stack.
                tracing::debug!(component = "ghost.seed.kdht", from = %send_back_addr, error = %error, "incoming connection refused");
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::OutboundQueryProgressed {
                id, result, stats, ..
            } => match result {
                QueryResult::PutRecord(r) => {
                    if let Some((quorum, reply)) = self.puts.remove(&id) {
                        let _ = reply.send(match r {
                            // The quorum is met: that many peers acknowledged the record.
                            Ok(_) => Ok(json!({
                                "stored": "local",
                                "replicas": quorum,
                                "replication": self.replication,
                                "duration_ms": stats.duration().map(|d| d.as_millis() as u64),
                            })
                            .to_string()),
                            Err(e) => Err(format!("stored locally, but replication failed: {e}")),
                        });
                    }
                }
                QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(pr))) => {
                    if let Some((key, reply)) = self.gets.remove(&id) {
                        let from = pr
                            .peer
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "local".into());
                        let _ = reply.send(Ok(json!({
                            "key": String::from_utf8_lossy(&key),
                            "value": String::from_utf8_lossy(&pr.record.value),
                            "from": from,
                        })
                        .to_string()));
                        // One record answers: stop asking.
                        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                            q.finish();
                        }
                    }
                }
                QueryResult::GetRecord(Ok(GetRecordOk::FinishedWithNoAdditionalRecord {
                    ..
                })) => {
                    if let Some((key, reply)) = self.gets.remove(&id) {
                        let _ = reply.send(Err(format!(
                            "key {:?} not found",
                            String::from_utf8_lossy(&key)
                        )));
                    }
                }
                QueryResult::GetRecord(Err(e)) => {
                    if let Some((key, reply)) = self.gets.remove(&id) {
                        let _ = reply.send(Err(match e {
                            kad::GetRecordError::NotFound { closest_peers, .. } => format!(
                                "key {:?} not found (asked the {} closest peers)",
                                String::from_utf8_lossy(&key),
                                closest_peers.len()
                            ),
                            other => {
                                format!("lookup of {:?}: {other}", String::from_utf8_lossy(&key))
                            }
                        }));
                    }
                }
                _ => {}
            },
            kad::Event::RoutingUpdated { .. } | kad::Event::InboundRequest { .. } => {
                self.dirty = true;
            }
            _ => {}
        }
    }
}
