//! The raft-node seed's pure parts: the type config, the replicated commands, argument and
//! URI parsing, bounds, and the rate bound on observations. No I/O here.

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

/// A key is 1..=256 bytes, a value at most 16 KiB: with [`MAX_PAYLOAD_ENTRIES`] entries per
/// append the largest frame stays well inside [`MAX_FRAME`].
pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Keys the state machine holds at most; a put of a new key past it is refused.
pub const MAX_KEYS: usize = 100_000;
/// Largest peer frame (length-prefixed JSON), either way.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;
/// Entries per AppendEntries and bytes per snapshot chunk.
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;
pub const SNAPSHOT_CHUNK: u64 = 1024 * 1024;
/// Members a cluster may have (`init members=...`).
pub const MAX_MEMBERS: usize = 16;

/// A replicated command: what the log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Put { key: String, value: String },
    Delete { key: String },
}

/// What applying a command answered: the value it replaced (`None` = the key was absent), or
/// a refusal (a full state machine) that every replica reaches alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub prev: Option<String>,
    pub refused: Option<String>,
}

openraft::declare_raft_types!(
    /// The raft-node type config: u64 node ids, a node's address, KV commands.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;

pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "argument key must be 1..={MAX_KEY_BYTES} bytes, got {}",
            key.len()
        ));
    }
    Ok(())
}

pub fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "argument value must be at most {MAX_VALUE_BYTES} bytes, got {}",
            value.len()
        ));
    }
    Ok(())
}

/// `raft://host:port` → `host:port`. The host is an IPv4 literal or a name of
/// `[A-Za-z0-9.-]`; the port 1..=65535.
pub fn parse_uri(uri: &str) -> Result<String, String> {
    let rest = uri
        .trim()
        .strip_prefix("raft://")
        .ok_or_else(|| format!("{uri:?} is not a raft://host:port URI"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{uri:?} has no port"))?;
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!("{uri:?} has a bad host {host:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
        _ => Err(format!("{uri:?} has a bad port {port:?}")),
    }
}

pub fn uri_of(addr: &str) -> String {
    format!("raft://{addr}")
}

/// `init members=1=raft://127.0.0.1:7101,2=raft://127.0.0.1:7102`: node id → address.
pub fn parse_members(s: &str) -> Result<BTreeMap<NodeId, BasicNode>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, uri) = part
            .split_once('=')
            .ok_or_else(|| format!("argument members: {part:?} is not id=raft://host:port"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("argument members: node id {id:?} is not a whole number"))?;
        let addr = parse_uri(uri).map_err(|e| format!("argument members: {e}"))?;
        if out.insert(id, BasicNode::new(addr)).is_some() {
            return Err(format!("argument members: node {id} given twice"));
        }
    }
    if out.is_empty() {
        return Err("argument members is empty".into());
    }
    if out.len() > MAX_MEMBERS {
        return Err(format!("argument members: at most {MAX_MEMBERS}"));
    }
    Ok(out)
}

pub fn parse_node_id(arg: &str, v: &str) -> Result<NodeId, String> {
    match v.trim().parse::<NodeId>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("argument {arg} {v:?} must be a whole number > 0")),
    }
}

/// Rate bound on observations: a changed state goes out at once unless one went out less
/// than `min_gap_ms` ago; then it waits (the newest wins) until the gap has passed.
#[derive(Debug, Default)]
pub struct ObserveGate {
    last_sent: Option<BTreeMap<String, String>>,
    last_at: Option<u64>,
    pending: Option<BTreeMap<String, String>>,
}

impl ObserveGate {
    /// Offers the current state at `now`; returns what to publish now, if anything.
    pub fn offer(
        &mut self,
        state: BTreeMap<String, String>,
        now: u64,
        min_gap_ms: u64,
    ) -> Option<BTreeMap<String, String>> {
        if self.last_sent.as_ref() == Some(&state) {
            self.pending = None;
            return None;
        }
        self.pending = Some(state);
        self.poll(now, min_gap_ms)
    }

    /// A pending state whose gap has passed.
    pub fn poll(&mut self, now: u64, min_gap_ms: u64) -> Option<BTreeMap<String, String>> {
        let due = self
            .last_at
            .is_none_or(|t| now.saturating_sub(t) >= min_gap_ms);
        if !due {
            return None;
        }
        let s = self.pending.take()?;
        self.last_sent = Some(s.clone());
        self.last_at = Some(now);
        Some(s)
    }

    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_uri("raft://127.0.0.1:7101").unwrap(),
            "127.0.0.1:7101"
        );
        assert_eq!(parse_uri("raft://node-a.lan:80/").unwrap(), "node-a.lan:80");
        for bad in [
            "http://127.0.0.1:1",
            "raft://127.0.0.1",
            "raft://:7101",
            "raft://a b:1",
            "raft://h:0",
            "raft://h:99999",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn members_parse_with_bounds() {
        let m = parse_members("1=raft://127.0.0.1:1, 2=raft://127.0.0.1:2").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2].addr, "127.0.0.1:2");
        assert!(parse_members("").is_err());
        assert!(parse_members("x=raft://h:1")
            .unwrap_err()
            .contains("node id"));
        assert!(parse_members("1=raft://h:1,1=raft://h:2")
            .unwrap_err()
            .contains("twice"));
        let many: Vec<String> = (1..=17).map(|i| format!("{i}=raft://h:{i}")).collect();
        assert!(parse_members(&many.join(","))
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn keys_and_values_are_bounded() {
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(parse_node_id("node_id", "0").is_err());
        assert_eq!(parse_node_id("node_id", " 7 ").unwrap(), 7);
    }

    #[test]
    fn commands_round_trip_as_json() {
        let r = Request::Put {
            key: "k".into(),
            value: "v\n\"x\"".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }

    fn st(role: &str) -> BTreeMap<String, String> {
        [("role".to_owned(), role.to_owned())].into()
    }

    #[test]
    fn the_observe_gate_sends_changes_at_most_once_per_gap_and_keeps_the_newest() {
        let mut g = ObserveGate::default();
        assert_eq!(g.offer(st("follower"), 1000, 100), Some(st("follower")));
        // Unchanged: nothing.
        assert_eq!(g.offer(st("follower"), 1010, 100), None);
        // Changed within the gap: held, the newest wins.
        assert_eq!(g.offer(st("candidate"), 1020, 100), None);
        assert_eq!(g.offer(st("leader"), 1050, 100), None);
        assert!(g.has_pending());
        assert_eq!(g.poll(1090, 100), None);
        assert_eq!(g.poll(1100, 100), Some(st("leader")));
        assert!(!g.has_pending());
        // Back to what was sent last while pending: the pending one is dropped.
        assert_eq!(g.offer(st("x"), 1150, 100), None);
        assert_eq!(g.offer(st("leader"), 1160, 100), None);
        assert_eq!(g.poll(1300, 100), None);
    }
}
