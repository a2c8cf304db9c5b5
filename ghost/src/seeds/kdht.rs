//! `seed.kdht` (kdht-node): a real Kademlia DHT node per hosting Ghost, on libp2p's `kad`
//! behaviour over TCP + Noise + Yamux (docs/SEEDS.md, docs/DECISIONS.md). No home-made DHT:
//! routing, lookups, replication and republication are libp2p's.
//!
//! The node runs on a dedicated thread (its own current-thread tokio runtime, `node.rs`);
//! operations reach it through a bounded channel and await a one-shot reply, so the seed's
//! actor thread never blocks. It listens on 127.0.0.1 only and advertises
//! `kdht:///ip4/127.0.0.1/tcp/PORT/p2p/PEERID` (a multiaddr after `kdht://`).

mod node;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use shared::envelope::Args;

use super::{Call, OperationSpec, Seed, SeedCtx, SeedOutput};

pub use node::{NodeHandle, Reply, Req};

/// Longest key accepted (bytes).
pub const MAX_KEY_BYTES: usize = 256;
/// Most bootstrap peers one `join` takes.
pub const MAX_JOIN_PEERS: usize = 64;
/// Longest `join` wait, and the default.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// Longest record TTL accepted.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a store/find may take before the operation reports a timeout.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `[kdht]` of ghost.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KdhtSpec {
    /// TCP port on 127.0.0.1; 0 = ephemeral (the URI says which).
    pub port: u16,
    /// Peers a record is stored on (libp2p's replication factor).
    pub replication: usize,
    /// Bounds of the record store (libp2p's MemoryStore limits).
    pub max_records: usize,
    pub max_value_bytes: usize,
    /// Established connections at most (incoming and outgoing each).
    pub max_connections: u32,
}

impl Default for KdhtSpec {
    fn default() -> Self {
        KdhtSpec {
            port: 0,
            replication: 3,
            max_records: 4096,
            max_value_bytes: 16 * 1024,
            max_connections: 128,
        }
    }
}

impl KdhtSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.port != 0 && self.port < 1024 {
            return Err(format!(
                "kdht.port is {}; it must be 0 (ephemeral) or 1024..=65535",
                self.port
            ));
        }
        if !(1..=20).contains(&self.replication) {
            return Err(format!(
                "kdht.replication is {}; it must be 1..=20",
                self.replication
            ));
        }
        if !(1..=1_000_000).contains(&self.max_records) {
            return Err(format!(
                "kdht.max_records is {}; it must be 1..=1000000",
                self.max_records
            ));
        }
        if !(1..=64 * 1024).contains(&self.max_value_bytes) {
            return Err(format!(
                "kdht.max_value_bytes is {}; it must be 1..=65536",
                self.max_value_bytes
            ));
        }
        if !(1..=4096).contains(&self.max_connections) {
            return Err(format!(
                "kdht.max_connections is {}; it must be 1..=4096",
                self.max_connections
            ));
        }
        Ok(())
    }
}

/// The URI a node advertises.
pub fn uri(addr: &Multiaddr) -> String {
    format!("kdht://{addr}")
}

/// A bootstrap peer: `kdht:///ip4/H/tcp/P/p2p/ID` or the bare multiaddr, which must end in
/// `/p2p/ID` (Kademlia's routing table is keyed by peer id).
pub fn parse_peer(s: &str) -> Result<(PeerId, Multiaddr), String> {
    let t = s.trim();
    let m = t.strip_prefix("kdht://").unwrap_or(t);
    let addr: Multiaddr = m
        .parse()
        .map_err(|e| format!("peer {t:?} is not a kdht URI or multiaddr: {e}"))?;
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(id)) => Ok((id, addr)),
        _ => Err(format!("peer {t:?} must end in /p2p/PEERID")),
    }
}

/// `peers` of `join`: comma- or whitespace-separated, deduplicated, bounded.
pub fn parse_peers(s: &str) -> Result<Vec<(PeerId, Multiaddr)>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let (id, addr) = parse_peer(p).map_err(|e| format!("argument peers: {e}"))?;
        if seen.insert(id) {
            out.push((id, addr));
        }
        if out.len() > MAX_JOIN_PEERS {
            return Err(format!("argument peers: more than {MAX_JOIN_PEERS} peers"));
        }
    }
    Ok(out)
}

pub fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("argument key must not be empty".into());
    }
    if k.len() > MAX_KEY_BYTES {
        return Err(format!(
            "argument key is {} bytes; at most {MAX_KEY_BYTES} are accepted",
            k.len()
        ));
    }
    Ok(())
}

pub fn check_value(v: &str, max: usize) -> Result<(), String> {
    if v.len() > max {
        return Err(format!(
            "argument value is {} bytes; at most {max} are accepted (kdht.max_value_bytes)",
            v.len()
        ));
    }
    Ok(())
}

/// `ttl`/`wait`: `30s`, `500ms`, `2m`, `1h` or milliseconds, 1 ms..=max.
pub fn parse_duration(name: &str, v: &str, max: Duration) -> Result<Duration, String> {
    let t = v.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "ms"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("argument {name} {v:?} must be like 30s, 500ms, 2m or 1h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(|| format!("argument {name} {v:?} must be like 30s, 500ms, 2m or 1h"))?;
    let d = Duration::from_millis(ms);
    if d.is_zero() || d > max {
        return Err(format!(
            "argument {name} {v:?} must be between 1ms and {}s",
            max.as_secs()
        ));
    }
    Ok(d)
}

/// The node's keypair from `path` (libp2p's protobuf encoding), or a new ed25519 one written
/// there (0600, atomically) when there is none. A file that is not a key is an error naming it:
/// replacing it silently would change the node's identity behind the operator's back.
pub fn load_or_make_key(path: &std::path::Path) -> Result<libp2p::identity::Keypair, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) => libp2p::identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            format!(
                "seed.kdht: {}: not a node key ({e}); remove it to give this node a new identity",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| format!("seed.kdht: encoding a new node key: {e}"))?;
            let tmp = path.with_extension("tmp");
            let write = || -> std::io::Result<()> {
                if let Some(d) = path.parent() {
                    std::fs::create_dir_all(d)?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)
            };
            write().map_err(|e| format!("seed.kdht: writing {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("seed.kdht: reading {}: {e}", path.display())),
    }
}

static OPS: &[OperationSpec] = &[
    OperationSpec::new(
        "start",
        "Run the node (it runs from Ghost start; after leave it starts again); prints status",
    ),
    OperationSpec::new(
        "join",
        "Dial bootstrap `peers` (kdht URIs, comma-separated) and wait (`wait`, default 10s) until the routing table holds every one of them, connected",
    )
    .args(&["peers", "wait"])
    .required(&["peers"]),
    OperationSpec::new(
        "store",
        "Store `value` under `key` locally and on the `replication` closest peers (`ttl` optional)",
    )
    .args(&["key", "value", "ttl"])
    .required(&["key", "value"])
    .mutating(),
    OperationSpec::new("find", "Look `key` up in the DHT (local store first)")
        .args(&["key"])
        .required(&["key"]),
    OperationSpec::new(
        "peers",
        "Routing table summary: every peer, its addresses, connected or not",
    ),
    OperationSpec::new(
        "status",
        "State, peer id, URI, routing table size, connected peers, stored records",
    ),
    OperationSpec::new(
        "leave",
        "Stop the node: close every connection and the port (start runs it again)",
    )
    .mutating(),
];

/// The seed: one node at a time; `leave` drops it, `start` builds it again (same identity).
pub struct Kdht {
    spec: KdhtSpec,
    key: libp2p::identity::Keypair,
    node: Option<NodeHandle>,
}

impl Kdht {
    /// A node with a fresh identity (nothing to keep it in: `ghost swarm`, tests).
    pub fn new(spec: KdhtSpec) -> Kdht {
        Kdht {
            spec,
            key: libp2p::identity::Keypair::generate_ed25519(),
            node: None,
        }
    }

    /// A node whose identity (and so its peer id and URI) survives Ghost restarts: peers'
    /// routing tables and the bootstrap URIs Mirage hands out stay valid.
    pub fn with_key_file(spec: KdhtSpec, path: &std::path::Path) -> Result<Kdht, String> {
        Ok(Kdht {
            spec,
            key: load_or_make_key(path)?,
            node: None,
        })
    }

    fn ensure_started(&mut self, ctx: &SeedCtx) -> Result<(), String> {
        if self.node.as_ref().is_some_and(|n| n.alive()) {
            return Ok(());
        }
        let n = NodeHandle::spawn(self.key.clone(), self.spec.clone(), ctx.clone())?;
        tracing::info!(component = "ghost.seed.kdht", uri = %n.uri, "kdht node listening");
        self.node = Some(n);
        Ok(())
    }

    fn ask(&self, req: impl FnOnce(node::Reply) -> Req, timeout: Duration) -> Call {
        let Some(n) = self.node.as_ref().filter(|n| n.alive()) else {
            return Call::Done(SeedOutput::error(
                3,
                "seed.kdht: the node is not running (it left; run start)\n",
            ));
        };
        let rx = match n.send(req) {
            Ok(rx) => rx,
            Err(e) => return Call::Done(SeedOutput::error(75, format!("seed.kdht: {e}\n"))),
        };
        let fut: LocalBoxFuture<'static, SeedOutput> = Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Err(_) => SeedOutput::error(
                    75,
                    format!("seed.kdht: no answer from the node within {timeout:?}\n"),
                ),
                Ok(Err(_)) => SeedOutput::error(70, "seed.kdht: the node stopped\n"),
                Ok(Ok(Ok(text))) => SeedOutput::ok(format!("{}\n", text.trim_end())),
                Ok(Ok(Err(e))) => SeedOutput::error(1, format!("seed.kdht: {e}\n")),
            }
        });
        Call::Pending(fut)
    }
}

fn arg<'a>(args: &'a Args, k: &str) -> &'a str {
    args.get(k).map(String::as_str).unwrap_or("")
}

fn bad(e: String) -> Call {
    Call::Done(SeedOutput::error(2, format!("{e}\n")))
}

impl Seed for Kdht {
    fn id(&self) -> &'static str {
        "seed.kdht"
    }
    fn name(&self) -> &'static str {
        "kdht-node"
    }
    fn description(&self) -> String {
        match &self.node {
            Some(n) => format!("Kademlia DHT node (libp2p) at {}", n.uri),
            None => "Kademlia DHT node (libp2p kad over TCP + Noise + Yamux)".into(),
        }
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }
    fn concurrency(&self) -> usize {
        16
    }
    fn start(&mut self, ctx: &SeedCtx) -> Result<(), String> {
        self.ensure_started(ctx)
    }
    fn call(&mut self, operation: &str, args: &Args, ctx: &SeedCtx) -> Call {
        match operation {
            "start" => match self.ensure_started(ctx) {
                Ok(_) => self.ask(Req::Status, QUERY_TIMEOUT),
                Err(e) => Call::Done(SeedOutput::error(1, format!("seed.kdht: {e}\n"))),
            },
            "join" => {
                let peers = match parse_peers(arg(args, "peers")) {
                    Ok(p) => p,
                    Err(e) => return bad(e),
                };
                let wait = match args.get("wait").filter(|w| !w.trim().is_empty()) {
                    None => DEFAULT_WAIT,
                    Some(w) => match parse_duration("wait", w, MAX_WAIT) {
                        Ok(d) => d,
                        Err(e) => return bad(e),
                    },
                };
                self.ask(
                    |reply| Req::Join { peers, wait, reply },
                    wait + Duration::from_secs(2),
                )
            }
            "store" => {
                let (key, value) = (arg(args, "key"), arg(args, "value"));
                if let Err(e) =
                    check_key(key).and_then(|()| check_value(value, self.spec.max_value_bytes))
                {
                    return bad(e);
                }
                let ttl = match args.get("ttl").filter(|w| !w.trim().is_empty()) {
                    None => None,
                    Some(t) => match parse_duration("ttl", t, MAX_TTL) {
                        Ok(d) => Some(d),
                        Err(e) => return bad(e),
                    },
                };
                let (key, value) = (key.as_bytes().to_vec(), value.as_bytes().to_vec());
                self.ask(
                    |reply| Req::Store {
                        key,
                        value,
                        ttl,
                        reply,
                    },
                    QUERY_TIMEOUT + Duration::from_secs(2),
                )
            }
            "find" => {
                let key = arg(args, "key");
                if let Err(e) = check_key(key) {
                    return bad(e);
                }
                let key = key.as_bytes().to_vec();
                self.ask(
                    |reply| Req::Find { key, reply },
                    QUERY_TIMEOUT + Duration::from_secs(2),
                )
            }
            "peers" => self.ask(Req::Peers, QUERY_TIMEOUT),
            "status" => self.ask(Req::Status, QUERY_TIMEOUT),
            "leave" => {
                let Some(n) = self.node.take() else {
                    return Call::Done(SeedOutput::ok("{\"state\":\"left\"}\n"));
                };
                let uri = n.uri.clone();
                let fut: LocalBoxFuture<'static, SeedOutput> = Box::pin(async move {
                    n.shutdown().await;
                    SeedOutput::ok(format!(
                        "{}\n",
                        serde_json::json!({"state": "left", "was": uri})
                    ))
                });
                Call::Pending(fut)
            }
            other => Call::Done(SeedOutput::error(
                64,
                format!("seed.kdht: unknown operation {other}\n"),
            )),
        }
    }
    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        match self.node.take() {
            Some(n) => Box::pin(n.shutdown()),
            None => Box::pin(async {}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "12D3KooWGRUVh9Ldd2rWJKvPRXnoBEYm7tyLvnkYZRMmrYXVVRqP";

    #[test]
    fn peers_are_parsed_deduplicated_and_bounded() {
        let u = format!("kdht:///ip4/127.0.0.1/tcp/4001/p2p/{ID}");
        let (id, addr) = parse_peer(&u).unwrap();
        assert_eq!(id.to_string(), ID);
        assert_eq!(uri(&addr), u);
        let bare = format!("/ip4/127.0.0.1/tcp/4001/p2p/{ID}");
        assert_eq!(parse_peer(&bare).unwrap().0.to_string(), ID);
        assert_eq!(parse_peers(&format!("{u}, {bare}")).unwrap().len(), 1);
        assert!(parse_peers("").unwrap().is_empty());
        assert!(parse_peer("kdht:///ip4/127.0.0.1/tcp/4001")
            .unwrap_err()
            .contains("/p2p/PEERID"));
        assert!(parse_peer("redis://x")
            .unwrap_err()
            .contains("not a kdht URI"));
        let many: Vec<String> = (0..=MAX_JOIN_PEERS)
            .map(|_| {
                let id = PeerId::random();
                format!("/ip4/127.0.0.1/tcp/1/p2p/{id}")
            })
            .collect();
        assert!(parse_peers(&many.join(","))
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn keys_values_and_durations_are_bounded_by_name() {
        assert!(check_key("").unwrap_err().contains("key"));
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1))
            .unwrap_err()
            .contains("at most 256"));
        assert!(check_value(&"v".repeat(11), 10)
            .unwrap_err()
            .contains("value is 11 bytes"));
        assert_eq!(
            parse_duration("ttl", "2m", MAX_TTL).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration("wait", "1500", MAX_WAIT).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_duration("wait", "2h", MAX_WAIT)
            .unwrap_err()
            .contains("between"));
        assert!(parse_duration("ttl", "0s", MAX_TTL).is_err());
        assert!(parse_duration("ttl", "soon", MAX_TTL)
            .unwrap_err()
            .contains("ttl"));
        assert!(parse_duration("ttl", "99999999999999999h", MAX_TTL).is_err());
    }

    #[test]
    fn config_is_validated_by_name() {
        assert!(KdhtSpec::default().validate().is_ok());
        let bad = |f: fn(&mut KdhtSpec)| {
            let mut s = KdhtSpec::default();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert!(bad(|s| s.port = 80).contains("kdht.port"));
        assert!(bad(|s| s.replication = 0).contains("kdht.replication"));
        assert!(bad(|s| s.max_value_bytes = 1 << 20).contains("kdht.max_value_bytes"));
        assert!(bad(|s| s.max_records = 0).contains("kdht.max_records"));
    }

    #[test]
    fn bad_arguments_are_refused_before_the_node_is_asked() {
        let mut k = Kdht::new(KdhtSpec {
            max_value_bytes: 8,
            ..KdhtSpec::default()
        });
        let ctx = SeedCtx::detached("seed.kdht");
        let run = |k: &mut Kdht, op: &str, a: &[(&str, &str)]| {
            let args: Args = a
                .iter()
                .map(|(x, y)| ((*x).to_owned(), (*y).to_owned()))
                .collect();
            match k.call(op, &args, &ctx) {
                Call::Done(o) => o,
                Call::Pending(_) => panic!("{op} was sent to the node"),
            }
        };
        let o = run(&mut k, "store", &[("key", "a"), ("value", "123456789")]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("value is 9 bytes"));
        let long = "k".repeat(300);
        let o = run(&mut k, "find", &[("key", &long)]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("key is 300 bytes"));
        let o = run(&mut k, "join", &[("peers", "garbage")]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("argument peers"));
        // No node yet (never started): a clear error, not a hang.
        let o = run(&mut k, "status", &[]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("not running"));
    }

    #[test]
    fn the_node_key_is_kept_and_a_damaged_one_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("ghost-kdht-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = dir.join("kdht.key");
        let a = load_or_make_key(&f).unwrap();
        let b = load_or_make_key(&f).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&f, b"not a key").unwrap();
        let e = load_or_make_key(&f).unwrap_err();
        assert!(e.contains("kdht.key") && e.contains("remove it"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
