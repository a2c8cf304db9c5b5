//! `raft-node`: one Raft member per Ghost that hosts it, on openraft. Its log, vote and
//! snapshot live in `<data_dir>/seeds/raft-node/raft.sqlite` (survives SIGKILL), its peer
//! transport listens on its own TCP port on 127.0.0.1 (`raft://127.0.0.1:PORT`), and it
//! replicates a key-value state machine. A member that was started once starts again with
//! the Ghost (same node id, same port), so a restarted Ghost rejoins and catches up.
//!
//! openraft runs on the seed's own small runtime (two threads): the seed's operations only
//! await its answers, and dropping the seed (after a panic) stops all of it.

pub mod net;
pub mod node;
pub mod store;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shared::envelope::Args;

use self::net::{ClientOp, ClientReply, Envelope, Reply, Rpc};
use self::node::Node;
use self::store::{Db, LogStore, StateMachine};
use self::types::{NodeId, Request};
use super::{Call, OperationSpec, Seed, SeedCtx, SeedOutput};

pub const SEED_ID: &str = "raft-node";
/// Longest `await` and client retry window an argument may ask for.
pub const MAX_WAIT_MS: u64 = 120_000;
const DEFAULT_WAIT_MS: u64 = 5_000;

static OPS: &[OperationSpec] = &[
    OperationSpec::new(
        "start",
        "Start this Ghost's member (port 1024..=65535 or an ephemeral one, kept across restarts; advertise raft://host:port)",
    )
    .args(&["port", "node_id", "advertise"]),
    OperationSpec::new(
        "init",
        "Bootstrap a cluster: members id=raft://host:port,... (default: this member alone)",
    )
    .args(&["members"]),
    OperationSpec::new("join", "Join the cluster a member at `via` (raft://host:port) belongs to")
        .args(&["via", "timeout_ms"])
        .required(&["via"]),
    OperationSpec::new("leave", "Remove a member (node_id, default this one) from the cluster")
        .args(&["node_id", "timeout_ms"]),
    OperationSpec::new("status", "Term, role, leader, commit and applied index, membership (JSON)"),
    OperationSpec::new(
        "await",
        "Wait until `voters` members are voters and a leader is known (timeout_ms, default 5000)",
    )
    .args(&["voters", "timeout_ms"])
    .required(&["voters"]),
    OperationSpec::new("put", "Replicate key=value (committed by a quorum before it answers)")
        .args(&["key", "value", "timeout_ms"])
        .required(&["key", "value"])
        .mutating(),
    OperationSpec::new("get", "Linearizable read of key (read index on the leader)")
        .args(&["key", "timeout_ms"])
        .required(&["key"]),
    OperationSpec::new("delete", "Replicate the removal of key")
        .args(&["key", "timeout_ms"])
        .required(&["key"])
        .mutating(),
];

/// `<seed data dir>/node.json`: who this member is, kept from its first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    pub node_id: NodeId,
    pub port: u16,
    /// host:port the other members dial (default 127.0.0.1:port).
    pub advertise: String,
}

fn node_file(dir: &Path) -> PathBuf {
    dir.join("node.json")
}

fn read_node_file(dir: &Path) -> Result<Option<NodeFile>, String> {
    let p = node_file(dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read {}: {e}", p.display())),
    }
}

fn write_node_file(dir: &Path, f: &NodeFile) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let p = node_file(dir);
    let tmp = dir.join("node.json.tmp");
    let body = serde_json::to_vec_pretty(f).map_err(|e| e.to_string())?;
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    file.write_all(&body)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &p).map_err(|e| format!("rename to {}: {e}", p.display()))
}

/// The openraft settings: loopback-sized timeouts, bounded payloads, a snapshot every
/// 1000 entries with 500 kept for slow followers. A follower refuses votes for a leader
/// lease of `election_timeout_max` after the last heartbeat, so a failover takes up to about
/// twice that (2.8 s); heartbeats at 200 ms leave room for a loaded machine.
pub fn raft_config() -> Result<Config, String> {
    Config {
        cluster_name: SEED_ID.into(),
        heartbeat_interval: 200,
        election_timeout_min: 700,
        election_timeout_max: 1400,
        install_snapshot_timeout: 2000,
        max_payload_entries: types::MAX_PAYLOAD_ENTRIES,
        snapshot_max_chunk_size: types::SNAPSHOT_CHUNK,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 500,
        ..Config::default()
    }
    .validate()
    .map_err(|e| format!("raft config: {e}"))
}

#[derive(Default)]
struct Slot {
    node: Option<Arc<Node>>,
    booting: bool,
}

pub struct RaftNode {
    rt: Option<tokio::runtime::Runtime>,
    slot: Arc<Mutex<Slot>>,
    ctx: Option<SeedCtx>,
}

impl Default for RaftNode {
    fn default() -> Self {
        RaftNode::new()
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        // Inside the Ghost's async context a runtime may not block on drop.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn err(code: u32, msg: impl std::fmt::Display) -> SeedOutput {
    SeedOutput::error(code, format!("raft-node: {msg}\n"))
}

fn wait_ms(args: &Args) -> Result<Duration, SeedOutput> {
    match args.get("timeout_ms") {
        None => Ok(Duration::from_millis(DEFAULT_WAIT_MS)),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms <= MAX_WAIT_MS => Ok(Duration::from_millis(ms)),
            _ => Err(err(
                64,
                format!("argument timeout_ms {v:?} must be 0..={MAX_WAIT_MS}"),
            )),
        },
    }
}

/// Retries what was certainly not applied (no leader yet, leader unreachable) until `within`.
async fn retrying(node: Arc<Node>, op: ClientOp, within: Duration) -> ClientReply {
    let t0 = Instant::now();
    loop {
        let r = node.client(op.clone(), false).await;
        match r {
            ClientReply::NotApplied(_) if t0.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            r => return r,
        }
    }
}

/// Exit codes: 0 done; 3 no such key; 69 not applied (safe to retry); 75 outcome unknown
/// (it may have taken effect); 1 refused.
fn reply_output(r: ClientReply, ok: impl FnOnce(Option<String>) -> SeedOutput) -> SeedOutput {
    match r {
        ClientReply::Ok(v) => ok(v),
        ClientReply::NotApplied(why) => err(69, format!("not applied: {why}")),
        ClientReply::Unknown(why) => err(75, format!("outcome unknown: {why}")),
        ClientReply::Failed(why) => err(1, why),
    }
}

impl RaftNode {
    pub fn new() -> RaftNode {
        RaftNode {
            rt: None,
            slot: Arc::new(Mutex::new(Slot::default())),
            ctx: None,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self) -> Result<Arc<Node>, SeedOutput> {
        let s = self.slot();
        match (&s.node, s.booting) {
            (Some(n), _) => Ok(n.clone()),
            (None, true) => Err(err(69, "the member is starting; try again")),
            (None, false) => Err(err(69, "the member is not started (run start)")),
        }
    }

    fn runtime(&mut self) -> Result<tokio::runtime::Handle, String> {
        if self.rt.is_none() {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("raft-node")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the raft runtime: {e}"))?;
            self.rt = Some(rt);
        }
        self.rt
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or_else(|| "no runtime".to_string())
    }

    /// Binds the port and boots openraft on the seed's runtime; the future answers when the
    /// member serves.
    fn boot(
        &mut self,
        f: NodeFile,
        ctx: SeedCtx,
    ) -> Result<LocalBoxFuture<'static, Result<(), String>>, String> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", f.port))
            .map_err(|e| format!("bind 127.0.0.1:{}: {e}", f.port))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let port = std_listener
            .local_addr()
            .map_err(|e| format!("listener: {e}"))?
            .port();
        let f = NodeFile {
            port,
            advertise: if f.advertise.is_empty() {
                format!("127.0.0.1:{port}")
            } else {
                f.advertise
            },
            ..f
        };
        write_node_file(&ctx.data_dir, &f)?;
        let handle = self.runtime()?;
        self.slot().booting = true;
        let slot = self.slot.clone();
        let dir = ctx.data_dir.clone();
        let task = handle.spawn(async move {
            let db = Db::open(&dir.join("raft.sqlite"))?;
            let config = Arc::new(raft_config()?);
            let raft = Raft::new(
                f.node_id,
                config,
                net::Network,
                LogStore { db: db.clone() },
                StateMachine { db: db.clone() },
            )
            .await
            .map_err(|e| format!("raft: {e}"))?;
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| format!("listener: {e}"))?;
            let node = Arc::new(Node {
                id: f.node_id,
                addr: f.advertise.clone(),
                raft,
                db,
            });
            tokio::spawn(node::serve(node.clone(), listener));
            tokio::spawn(node::observe(node.clone(), ctx));
            tracing::info!(component = "seed.raft", node_id = f.node_id, uri = %types::uri_of(&f.advertise), "raft member serving");
            Ok::<_, String>(node)
        });
        Ok(Box::pin(async move {
            let res = match task.await {
                Ok(r) => r,
                Err(e) => Err(format!("boot task: {e}")),
            };
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            s.booting = false;
            match res {
                Ok(node) => {
                    s.node = Some(node);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }))
    }

    fn op_start(&mut self, args: &Args, ctx: &SeedCtx) -> Call {
        if let Ok(n) = self.node() {
            return Call::Done(status_output(&n));
        }
        if self.slot().booting {
            return Call::Done(err(69, "the member is starting; try again"));
        }
        let port = match args.get("port") {
            None => None,
            Some(p) => match super::redis::parse_port(p) {
                Ok(p) => Some(p),
                Err(e) => return Call::Done(err(64, e)),
            },
        };
        let node_id = match args
            .get("node_id")
            .map(|v| types::parse_node_id("node_id", v))
        {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(e)) => return Call::Done(err(64, e)),
        };
        let advertise = match args.get("advertise").map(|v| types::parse_uri(v)) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => return Call::Done(err(64, format!("argument advertise: {e}"))),
        };
        let f = match read_node_file(&ctx.data_dir) {
            Err(e) => return Call::Done(err(70, e)),
            Ok(Some(f)) => {
                // A member's identity is fixed at its first start: the others know it by it.
                let clash = [
                    port.filter(|p| *p != f.port)
                        .map(|p| format!("port {p} (it has {})", f.port)),
                    node_id
                        .filter(|n| *n != f.node_id)
                        .map(|n| format!("node_id {n} (it has {})", f.node_id)),
                    advertise
                        .clone()
                        .filter(|a| *a != f.advertise)
                        .map(|a| format!("advertise {a} (it has {})", f.advertise)),
                ];
                if let Some(c) = clash.into_iter().flatten().next() {
                    return Call::Done(err(
                        64,
                        format!("this member was started before; it keeps its identity, not {c}"),
                    ));
                }
                f
            }
            Ok(None) => NodeFile {
                node_id: node_id.unwrap_or_else(random_node_id),
                port: port.unwrap_or(0),
                advertise: advertise.unwrap_or_default(),
            },
        };
        match self.boot(f, ctx.clone()) {
            Err(e) => Call::Done(err(70, e)),
            Ok(fut) => {
                let slot = self.slot.clone();
                Call::Pending(Box::pin(async move {
                    match fut.await {
                        Err(e) => err(70, e),
                        Ok(()) => match slot.lock().unwrap_or_else(|p| p.into_inner()).node.clone()
                        {
                            Some(n) => status_output(&n),
                            None => err(70, "the member stopped while starting"),
                        },
                    }
                }))
            }
        }
    }
}

/// 1..2^53: readable in JSON by any client.
fn random_node_id() -> NodeId {
    let (a, _) = uuid::Uuid::new_v4().as_u64_pair();
    (a & ((1 << 53) - 1)).max(1)
}

fn status_output(n: &Node) -> SeedOutput {
    let st = n.state();
    SeedOutput::ok(format!(
        "{}\n",
        serde_json::to_string(&st).unwrap_or_else(|_| "{}".into())
    ))
}

impl Seed for RaftNode {
    fn id(&self) -> &'static str {
        SEED_ID
    }
    fn name(&self) -> &'static str {
        "Raft member"
    }
    fn description(&self) -> String {
        "A Raft member (openraft) with a replicated key-value state machine; peers on raft://127.0.0.1:PORT".into()
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }
    fn concurrency(&self) -> usize {
        16
    }

    fn start(&mut self, ctx: &SeedCtx) -> Result<(), String> {
        self.ctx = Some(ctx.clone());
        // Started before: start again with the same identity (a restarted Ghost rejoins).
        if let Some(f) = read_node_file(&ctx.data_dir)? {
            let fut = self.boot(f, ctx.clone())?;
            // The member lands in the slot; a failure is logged and `start` may retry it.
            actix_rt::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::error!(component = "seed.raft", error = %e, "raft member did not start");
                }
            });
        }
        Ok(())
    }

    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        let node = self.slot().node.take();
        Box::pin(async move {
            if let Some(n) = node {
                let _ = n.raft.shutdown().await;
            }
        })
    }

    fn call(&mut self, op: &str, args: &Args, ctx: &SeedCtx) -> Call {
        if op == "start" {
            return self.op_start(args, ctx);
        }
        let node = match self.node() {
            Ok(n) => n,
            Err(e) => return Call::Done(e),
        };
        let within = match wait_ms(args) {
            Ok(d) => d,
            Err(e) => return Call::Done(e),
        };
        let arg = |k: &str| args.get(k).cloned().unwrap_or_default();
        let rt = match self.runtime() {
            Ok(h) => h,
            Err(e) => return Call::Done(err(70, e)),
        };
        // Everything awaits on the seed's runtime; this thread only waits for the answer.
        let on_rt = move |f: futures::future::BoxFuture<'static, SeedOutput>| -> Call {
            let h = rt.spawn(f);
            Call::Pending(Box::pin(async move {
                h.await
                    .unwrap_or_else(|e| err(70, format!("operation task: {e}")))
            }))
        };
        match op {
            "status" => Call::Done(status_output(&node)),
            "put" | "delete" => {
                let key = arg("key");
                if let Err(e) = types::check_key(&key) {
                    return Call::Done(err(64, e));
                }
                let req = if op == "put" {
                    let value = arg("value");
                    if let Err(e) = types::check_value(&value) {
                        return Call::Done(err(64, e));
                    }
                    Request::Put { key, value }
                } else {
                    Request::Delete { key }
                };
                on_rt(Box::pin(async move {
                    let r = retrying(node, ClientOp::Write(req), within).await;
                    reply_output(r, |prev| match prev {
                        Some(_) => SeedOutput::ok("ok replaced\n"),
                        None => SeedOutput::ok("ok\n"),
                    })
                }))
            }
            "get" => {
                let key = arg("key");
                if let Err(e) = types::check_key(&key) {
                    return Call::Done(err(64, e));
                }
                on_rt(Box::pin(async move {
                    let r = retrying(node, ClientOp::Read { key: key.clone() }, within).await;
                    reply_output(r, |v| match v {
                        Some(v) => SeedOutput::ok(format!("{v}\n")),
                        None => err(3, format!("no key {key:?}")),
                    })
                }))
            }
            "init" => {
                let members = match args.get("members") {
                    None => Ok([(node.id, BasicNode::new(node.addr.clone()))].into()),
                    Some(m) => types::parse_members(m),
                };
                let members = match members {
                    Ok(m) if m.contains_key(&node.id) => m,
                    Ok(_) => {
                        return Call::Done(err(
                            64,
                            format!("argument members must include this member ({})", node.id),
                        ))
                    }
                    Err(e) => return Call::Done(err(64, e)),
                };
                on_rt(Box::pin(async move {
                    match node.raft.initialize(members).await {
                        Ok(()) => SeedOutput::ok("initialized\n"),
                        Err(e) => match e.api_error() {
                            Some(openraft::error::InitializeError::NotAllowed(_)) => {
                                SeedOutput::ok("already initialized\n")
                            }
                            _ => err(1, format!("init: {e}")),
                        },
                    }
                }))
            }
            "join" => {
                let via = match types::parse_uri(&arg("via")) {
                    Ok(a) => a,
                    Err(e) => return Call::Done(err(64, format!("argument via: {e}"))),
                };
                let within = if args.contains_key("timeout_ms") {
                    within
                } else {
                    node::JOIN_TIMEOUT
                };
                on_rt(Box::pin(async move {
                    let t0 = Instant::now();
                    loop {
                        if node.state().get("voter").map(String::as_str) == Some("true") {
                            return SeedOutput::ok("member\n");
                        }
                        let env = Envelope {
                            to: 0,
                            rpc: Rpc::Client(ClientOp::Join {
                                node_id: node.id,
                                addr: node.addr.clone(),
                            }),
                        };
                        let r = match net::exchange(
                            &via,
                            &env,
                            node::JOIN_TIMEOUT + Duration::from_secs(2),
                        )
                        .await
                        {
                            Ok(Reply::Client(r)) => r,
                            Ok(other) => {
                                ClientReply::NotApplied(format!("{via} answered {other:?}"))
                            }
                            Err(e) => ClientReply::NotApplied(format!("{via}: {e}")),
                        };
                        match r {
                            ClientReply::Ok(_) => return SeedOutput::ok("joined\n"),
                            ClientReply::NotApplied(_) | ClientReply::Unknown(_)
                                if t0.elapsed() < within =>
                            {
                                tokio::time::sleep(Duration::from_millis(200)).await
                            }
                            other => return reply_output(other, |_| SeedOutput::ok("joined\n")),
                        }
                    }
                }))
            }
            "leave" => {
                let id = match args.get("node_id") {
                    None => node.id,
                    Some(v) => match types::parse_node_id("node_id", v) {
                        Ok(n) => n,
                        Err(e) => return Call::Done(err(64, e)),
                    },
                };
                on_rt(Box::pin(async move {
                    let r = retrying(
                        node,
                        ClientOp::Leave { node_id: id },
                        within.max(node::JOIN_TIMEOUT),
                    )
                    .await;
                    reply_output(r, |_| SeedOutput::ok(format!("node {id} removed\n")))
                }))
            }
            "await" => {
                let n = match arg("voters").trim().parse::<usize>() {
                    Ok(n) if (1..=types::MAX_MEMBERS).contains(&n) => n,
                    _ => {
                        return Call::Done(err(
                            64,
                            format!("argument voters must be 1..={}", types::MAX_MEMBERS),
                        ))
                    }
                };
                on_rt(Box::pin(async move {
                    let t0 = Instant::now();
                    while !node.formed(n) {
                        if t0.elapsed() >= within {
                            let st = node.state();
                            return err(
                                75,
                                format!(
                                    "{} voter(s), leader {:?} after {within:?}; want {n} voters and a leader",
                                    st.get("voters").map(String::as_str).unwrap_or("?"),
                                    st.get("leader").map(String::as_str).unwrap_or("")
                                ),
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    status_output(&node)
                }))
            }
            other => Call::Done(err(64, format!("unknown operation {other}"))),
        }
    }
}
