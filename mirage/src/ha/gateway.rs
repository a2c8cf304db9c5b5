//! A thin etcd v3 client over etcd's JSON gRPC gateway (`POST /v3/...`), plain HTTP/1.1 on
//! tokio sockets: no gRPC stack, no protoc (docs/DECISIONS.md, "Issue 15"). Keys and values
//! are base64 on the wire, int64 fields are JSON strings, zero fields are omitted.
//!
//! Each call tries the endpoints in turn, starting with the last one that answered, with a
//! per-endpoint timeout, so one dead or stopped member costs one timeout, not the call.
//! Plain http only in this slice; TLS is left for the store backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::state::LeaseId;

/// Largest response read by the small calls (lease, election, txn): a few hundred bytes.
const MAX_RESPONSE: usize = 1 << 20;
/// Largest response of one page of a range read (recovery reads plans page by page).
const MAX_RANGE_RESPONSE: usize = 64 << 20;

/// One operation of a fenced txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Every key in `[from, to)`.
    DeleteRange {
        from: String,
        to: String,
    },
}

impl Op {
    /// One `Put` per (key, value).
    pub fn puts(puts: &[(&str, &str)]) -> Vec<Op> {
        puts.iter()
            .map(|(key, value)| Op::Put {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect()
    }

    /// Bytes this op puts on the wire before base64 (what etcd's request limit counts).
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 16,
            Op::DeleteRange { from, to } => from.len() + to.len() + 16,
        }
    }

    fn json(&self) -> Value {
        match self {
            Op::Put { key, value } => {
                json!({ "request_put": { "key": b64(key), "value": b64(value) } })
            }
            Op::Delete { key } => json!({ "request_delete_range": { "key": b64(key) } }),
            Op::DeleteRange { from, to } => {
                json!({ "request_delete_range": { "key": b64(from), "range_end": b64(to) } })
            }
        }
    }
}

/// The key just past every key that starts with `prefix` (etcd's "prefix" range end).
pub fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return String::from_utf8_lossy(&b).into_owned();
        }
    }
    // All 0xff (or empty): to the end of the key space.
    "\0".into()
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint answered {path} ({endpoints}): {errors}")]
    Unreachable {
        path: String,
        endpoints: String,
        errors: String,
    },
    #[error("etcd {endpoint} {path}: HTTP {status}: {body}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("etcd {endpoint} {path}: bad response: {why}")]
    Bad {
        endpoint: String,
        path: String,
        why: String,
    },
}

/// One key as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: LeaseId,
}

/// A leader's right to write: its election key and the revision that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// etcd compared the election key and it is not ours (gone, or another leader's).
    #[error(
        "fenced write refused: election key {key} has create_revision {current:?}, ours is {ours}"
    )]
    Refused {
        key: String,
        ours: i64,
        current: Option<i64>,
    },
    /// The store's commit chain key is not at the value this commit follows: an older txn
    /// of ours arrived late, or the index is stale. Nothing was written.
    #[error("store commit chain {key} is at {current:?}, this commit follows {expected:?}")]
    ChainMoved {
        key: String,
        expected: Option<String>,
        current: Option<String>,
    },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Orders the store's commits: each txn also compares `key`'s value with `prev` (the
/// commit before it; `None`: the key is absent) and sets it to `next`. A txn that reaches
/// etcd late (its first attempt timed out, was retried elsewhere, and later batches went
/// in) fails that compare instead of writing stale values over newer ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub key: String,
    pub prev: Option<String>,
    pub next: String,
}

pub struct Etcd {
    endpoints: Vec<String>,
    timeout: Duration,
    preferred: AtomicUsize,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// int64 fields arrive as strings ("42"), absent when zero.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> Kv {
    Kv {
        key: unb64(&v["key"]),
        value: unb64(&v["value"]),
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    }
}

impl Etcd {
    /// `endpoints`: `host:port` client addresses (http).
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Etcd {
        Etcd {
            endpoints,
            timeout,
            preferred: AtomicUsize::new(0),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POST `body` to `path` on the first endpoint that answers.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        self.call_capped(path, body, MAX_RESPONSE).await
    }

    async fn call_capped(&self, path: &str, body: &Value, cap: usize) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let ep = &self.endpoints[idx];
            match tokio::time::timeout(self.timeout, post(ep, path, body, cap)).await {
                Ok(Ok((200, v))) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Ok((status, v))) => {
                    // etcd without quorum answers 503 on some calls: try another member.
                    if status >= 500 {
                        errors.push(format!("{ep}: HTTP {status} {v}"));
                        continue;
                    }
                    return Err(EtcdError::Status {
                        endpoint: ep.clone(),
                        path: path.into(),
                        status,
                        body: v.to_string(),
                    });
                }
                Ok(Err(e)) => errors.push(format!("{ep}: {e}")),
                Err(_) => errors.push(format!("{ep}: timed out after {:?}", self.timeout)),
            }
        }
        Err(EtcdError::Unreachable {
            path: path.into(),
            endpoints: self.endpoints.join(","),
            errors: errors.join("; "),
        })
    }

    /// A lease of `ttl` (whole seconds, at least 1); etcd may grant a longer one.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<(LeaseId, Duration), EtcdError> {
        let secs = ttl.as_secs().max(1);
        let v = self
            .call("/v3/lease/grant", &json!({ "TTL": secs.to_string() }))
            .await?;
        let id = int(&v["ID"]);
        if id == 0 {
            return Err(self.bad("/v3/lease/grant", format!("no lease id in {v}")));
        }
        let granted = u64::try_from(int(&v["TTL"])).unwrap_or(0);
        Ok((id, Duration::from_secs(granted)))
    }

    /// Renews the lease; the remaining TTL, zero if the lease no longer exists.
    pub async fn lease_keepalive(&self, id: LeaseId) -> Result<Duration, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await?;
        // A streaming call: the gateway wraps each message in {"result": …} or {"error": …}.
        if let Some(e) = v.get("error") {
            return Err(self.bad("/v3/lease/keepalive", e.to_string()));
        }
        let r = v.get("result").unwrap_or(&v);
        Ok(Duration::from_secs(
            u64::try_from(int(&r["TTL"])).unwrap_or(0),
        ))
    }

    pub async fn lease_revoke(&self, id: LeaseId) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await?;
        Ok(())
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self
            .call("/v3/kv/range", &json!({ "key": b64(key) }))
            .await?;
        Ok(v["kvs"].as_array().and_then(|a| a.first()).map(kv_of))
    }

    /// Unconditional put (for tests and non-leader bookkeeping); the new revision.
    pub async fn put(&self, key: &str, value: &str) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/kv/put",
                &json!({ "key": b64(key), "value": b64(value) }),
            )
            .await?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Creates `key` bound to `lease` if absent: `Ok(revision)` when created, else the
    /// current holder.
    pub async fn create_if_absent(
        &self,
        key: &str,
        value: &str,
        lease: LeaseId,
    ) -> Result<Result<i64, Kv>, EtcdError> {
        let k = b64(key);
        let body = json!({
            "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
            "success": [{ "request_put": { "key": k, "value": b64(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": k } }],
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(Ok(int(&v["header"]["revision"])));
        }
        let current = v["responses"]
            .get(0)
            .and_then(|r| r["response_range"]["kvs"].get(0))
            .map(kv_of);
        match current {
            Some(kv) => Ok(Err(kv)),
            // Deleted between compare and read cannot happen in one txn; an empty answer is
            // a protocol surprise.
            None => Err(self.bad("/v3/kv/txn", format!("create failed, no holder in {v}"))),
        }
    }

    /// Puts `puts` only if the election key still has the create_revision of `fence`; the
    /// txn's revision on success. That revision is also the fencing token of anything the
    /// write grants (e.g. a seed lock): etcd's revision only grows, and a new leader's key is
    /// created after the old one's is gone, so tokens grow across leaders.
    pub async fn fenced_put(
        &self,
        fence: &Fence,
        puts: &[(&str, &str)],
    ) -> Result<i64, FenceError> {
        self.fenced_txn(fence, &Op::puts(puts)).await
    }

    /// `ops` in one txn, only if the election key still has the create_revision of `fence`;
    /// the txn's revision on success. A refusal is `FenceError::Refused`: etcd itself
    /// compared, whatever this process believes about its leadership.
    pub async fn fenced_txn(&self, fence: &Fence, ops: &[Op]) -> Result<i64, FenceError> {
        let k = b64(&fence.key);
        let success: Vec<Value> = ops.iter().map(Op::json).collect();
        let body = json!({
            "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL",
                          "create_revision": fence.revision.to_string() }],
            "success": success,
            "failure": [{ "request_range": { "key": k } }],
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(int(&v["header"]["revision"]));
        }
        let current = v["responses"]
            .get(0)
            .and_then(|r| r["response_range"]["kvs"].get(0))
            .map(|kv| int(&kv["create_revision"]));
        Err(FenceError::Refused {
            key: fence.key.clone(),
            ours: fence.revision,
            current,
        })
    }

    /// As `fenced_txn`, also conditional on the commit chain (`Chain`). A retry whose first
    /// attempt did commit finds the chain at its own `next`: that is success.
    pub async fn fenced_chained_txn(
        &self,
        fence: &Fence,
        chain: &Chain,
        ops: &[Op],
    ) -> Result<i64, FenceError> {
        let k = b64(&fence.key);
        let c = b64(&chain.key);
        let mut success: Vec<Value> = ops.iter().map(Op::json).collect();
        success.push(json!({ "request_put": { "key": c, "value": b64(&chain.next) } }));
        let chain_cmp = match &chain.prev {
            Some(prev) => {
                json!({ "key": c, "target": "VALUE", "result": "EQUAL", "value": b64(prev) })
            }
            None => {
                json!({ "key": c, "target": "CREATE", "result": "EQUAL", "create_revision": "0" })
            }
        };
        let body = json!({
            "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL",
                          "create_revision": fence.revision.to_string() }, chain_cmp],
            "success": success,
            "failure": [{ "request_range": { "key": k } }, { "request_range": { "key": c } }],
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            return Ok(int(&v["header"]["revision"]));
        }
        let first = |i: usize| {
            v["responses"]
                .get(i)
                .and_then(|r| r["response_range"]["kvs"].get(0))
                .map(kv_of)
        };
        let election = first(0).map(|kv| kv.create_revision);
        if election != Some(fence.revision) {
            return Err(FenceError::Refused {
                key: fence.key.clone(),
                ours: fence.revision,
                current: election,
            });
        }
        let current = first(1).map(|kv| kv.value);
        if current.as_deref() == Some(chain.next.as_str()) {
            return Ok(int(&v["header"]["revision"]));
        }
        Err(FenceError::ChainMoved {
            key: chain.key.clone(),
            expected: chain.prev.clone(),
            current,
        })
    }

    /// Every key under `prefix` in key order, `page` keys a request (linearizable reads;
    /// all pages at the revision of the first, so the result is one consistent snapshot).
    pub async fn range_prefix(&self, prefix: &str, page: usize) -> Result<Vec<Kv>, EtcdError> {
        let end = b64(&prefix_end(prefix));
        let mut out = Vec::new();
        let mut from = prefix.to_owned();
        let mut revision = 0i64;
        loop {
            let mut body =
                json!({ "key": b64(&from), "range_end": end, "limit": page.to_string() });
            if revision > 0 {
                body["revision"] = json!(revision.to_string());
            }
            let v = self
                .call_capped("/v3/kv/range", &body, MAX_RANGE_RESPONSE)
                .await?;
            if revision == 0 {
                revision = int(&v["header"]["revision"]);
            }
            let kvs: Vec<Kv> = v["kvs"]
                .as_array()
                .map(|a| a.iter().map(kv_of).collect())
                .unwrap_or_default();
            let more = v["more"].as_bool().unwrap_or(false);
            let Some(last) = kvs.last() else {
                return Ok(out);
            };
            // The next page starts just after the last key.
            from = format!("{}\0", last.key);
            out.extend(kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// The last key under `prefix` (sorted by key), if any.
    pub async fn last_key(&self, prefix: &str) -> Result<Option<String>, EtcdError> {
        let body = json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)),
                           "limit": "1", "sort_order": "DESCEND", "sort_target": "KEY",
                           "keys_only": true });
        let v = self.call("/v3/kv/range", &body).await?;
        Ok(v["kvs"]
            .as_array()
            .and_then(|a| a.first())
            .map(|kv| unb64(&kv["key"])))
    }

    fn bad(&self, path: &str, why: String) -> EtcdError {
        let idx = self.preferred.load(Ordering::Relaxed) % self.endpoints.len().max(1);
        EtcdError::Bad {
            endpoint: self.endpoints.get(idx).cloned().unwrap_or_default(),
            path: path.into(),
            why,
        }
    }
}

/// One HTTP/1.1 POST with `Connection: close`; status and the first JSON value of the body.
async fn post(
    endpoint: &str,
    path: &str,
    body: &Value,
    cap: usize,
) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect(endpoint)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    (&mut s)
        .take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if buf.len() > cap {
        return Err(format!("response over {cap} bytes"));
    }
    parse_response(&buf)
}

/// Status and first JSON value of a complete HTTP/1.1 response (identity or chunked body).
pub fn parse_response(buf: &[u8]) -> Result<(u16, Value), String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let raw = &buf[end + 4..];
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    let first = serde_json::Deserializer::from_slice(&body)
        .into_iter::<Value>()
        .next();
    match first {
        Some(Ok(v)) => Ok((status, v)),
        Some(Err(e)) => Err(format!(
            "HTTP {status}, body not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
        None => Ok((status, Value::Null)),
    }
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_txt = String::from_utf8_lossy(&raw[..nl]);
        let size_txt = size_txt.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_txt, 16)
            .map_err(|_| format!("bad chunk size {size_txt:?}"))?;
        raw = &raw[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size {
            // A stream cut short still holds whole messages before the cut.
            out.extend_from_slice(raw);
            return Ok(out);
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_identity_and_chunked_bodies() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\":\"1\"}";
        let (s, v) = parse_response(r).unwrap();
        assert_eq!((s, int(&v["a"])), (200, 1));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"re\r\n12\r\nsult\":{\"TTL\":\"5\"}}\r\n1\r\n\n\r\n0\r\n\r\n";
        let (_, v) = parse_response(r).unwrap();
        assert_eq!(int(&v["result"]["TTL"]), 5);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        let (s, _) = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").unwrap();
        assert_eq!(s, 503);
    }

    #[test]
    fn decodes_kvs_with_omitted_zero_fields() {
        let kv = kv_of(&json!({ "key": b64("k"), "create_revision": "12", "mod_revision": "13" }));
        assert_eq!(
            kv,
            Kv {
                key: "k".into(),
                value: String::new(),
                create_revision: 12,
                mod_revision: 13,
                lease: 0
            }
        );
    }
}
