//! Mirage's state in etcd (`[store] backend = "etcd"`): the same `Write`s and the same
//! `Recovered` as the SQLite store, every commit a fenced etcd txn (compare: the election key
//! still has the create_revision this leader made it with). A deposed leader's commit is
//! refused by etcd itself, so nothing that waits for a commit (dispatch, a lock grant's
//! effects, `event.ack`) can follow it.
//!
//! Keys under `prefix`:
//! - `election`: the leader's key (bound to its lease; `ha::elector`);
//! - `intents/<intent_id>`: a header line `{"seq","status","updated_ms"}`, then the plan JSON;
//! - `reports/<seq, 20 digits>`: the report JSON;
//! - `locks/<key>`: the lock queue JSON;
//! - `events/<n, 20 digits>`: the observed event (retention like the reports);
//! - `commit`: the commit chain, `<epoch>.<n>` of the last txn: each txn compares it with
//!   the value it follows and sets its own, so a txn that reaches etcd late (a timed-out
//!   attempt, retried) cannot overwrite newer values (`gateway::Chain`).
//!
//! One batch is one txn while it fits etcd's limits (`max_txn_ops`, `max_txn_bytes`); a
//! bigger batch goes as several fenced txns in order (not atomic together: each writer's own
//! writes are whole values, and a writer whose commit fails writes again). A single value
//! over `max_txn_bytes` is refused with its name and size, and nothing of its batch is sent.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ha::gateway::{Chain, Etcd, EtcdError, FenceError, Op};
use crate::ha::{HaHandle, WriteError};
use crate::plan::Plan;
use crate::store::{Recovered, RemoteBackend, StoreError, Write};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IntentHeader {
    seq: u64,
    status: String,
    updated_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EventRow<'a> {
    event_id: &'a str,
    ghost_id: &'a str,
    command_id: &'a str,
    intent_id: &'a str,
    outcome: &'a str,
    at_ms: u64,
}

fn finished(status: &str) -> bool {
    matches!(status, "failed" | "withdrawn" | "satisfied")
}

/// What the store knows of the keys it wrote, to decide `Forget` and `Prune` without
/// reading etcd: intent_id → (seq, finished), the newest report seq and event number.
#[derive(Debug, Default, Clone)]
struct Index {
    intents: HashMap<String, (u64, bool)>,
    max_report_seq: u64,
    event_seq: u64,
    /// The commit chain's value (`commit` key): the txn the next one follows.
    chain: Option<String>,
    /// A commit failed in a way that may have applied part of it: read the index back
    /// from etcd before the next commit.
    stale: bool,
}

/// The key layout and the split into txns: pure (no I/O), unit-tested.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: String,
    pub max_ops: usize,
    pub max_bytes: usize,
}

impl Layout {
    pub fn election_key(&self) -> String {
        format!("{}election", self.prefix)
    }
    fn commit_key(&self) -> String {
        format!("{}commit", self.prefix)
    }
    fn intents(&self) -> String {
        format!("{}intents/", self.prefix)
    }
    fn reports(&self) -> String {
        format!("{}reports/", self.prefix)
    }
    fn locks(&self) -> String {
        format!("{}locks/", self.prefix)
    }
    fn events(&self) -> String {
        format!("{}events/", self.prefix)
    }
    fn report_key(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.reports())
    }
    fn event_key(&self, n: u64) -> String {
        format!("{}{n:020}", self.events())
    }

    /// The batch as txns, in order, and the index after them. Several writes of one key in
    /// one txn become the last one (etcd refuses a txn naming a key twice); a `Prune` goes in
    /// txns of its own (its ranges would overlap the puts).
    fn plan(&self, batch: &[Write], index: &Index) -> Result<(Vec<Vec<Op>>, Index), StoreError> {
        let mut ix = index.clone();
        let mut txns: Vec<Vec<Op>> = Vec::new();
        let mut cur = Chunk::default();
        for w in batch {
            match w {
                Write::Intent {
                    intent_id,
                    seq,
                    status,
                    plan,
                    updated_ms,
                } => {
                    let head = serde_json::to_string(&IntentHeader {
                        seq: *seq,
                        status: status.clone(),
                        updated_ms: *updated_ms,
                    })?;
                    ix.intents
                        .insert(intent_id.clone(), (*seq, finished(status)));
                    self.push(
                        &mut cur,
                        &mut txns,
                        Op::Put {
                            key: format!("{}{intent_id}", self.intents()),
                            value: format!("{head}\n{plan}"),
                        },
                        &format!("intent {intent_id}"),
                    )?;
                }
                Write::Report { seq, json, .. } => {
                    ix.max_report_seq = ix.max_report_seq.max(*seq);
                    self.push(
                        &mut cur,
                        &mut txns,
                        Op::Put {
                            key: self.report_key(*seq),
                            value: json.clone(),
                        },
                        &format!("report {seq}"),
                    )?;
                }
                Write::Lock { key, json } => self.push(
                    &mut cur,
                    &mut txns,
                    Op::Put {
                        key: format!("{}{key}", self.locks()),
                        value: json.clone(),
                    },
                    &format!("lock {key}"),
                )?,
                Write::Event {
                    event_id,
                    ghost_id,
                    command_id,
                    intent_id,
                    outcome,
                    at_ms,
                } => {
                    ix.event_seq += 1;
                    let value = serde_json::to_string(&EventRow {
                        event_id,
                        ghost_id,
                        command_id,
                        intent_id,
                        outcome,
                        at_ms: *at_ms,
                    })?;
                    self.push(
                        &mut cur,
                        &mut txns,
                        Op::Put {
                            key: self.event_key(ix.event_seq),
                            value,
                        },
                        &format!("event {event_id}"),
                    )?;
                }
                Write::Forget { intent_id, seq } => {
                    if ix.intents.get(intent_id).is_some_and(|(s, _)| s == seq) {
                        ix.intents.remove(intent_id);
                        self.push(
                            &mut cur,
                            &mut txns,
                            Op::Delete {
                                key: format!("{}{intent_id}", self.intents()),
                            },
                            &format!("forget {intent_id}"),
                        )?;
                    }
                }
                Write::Prune {
                    keep_finished,
                    keep_reports,
                } => {
                    cur.flush(&mut txns);
                    let mut prune = Chunk::default();
                    let mut ops = Vec::new();
                    if ix.event_seq > *keep_reports {
                        ops.push(Op::DeleteRange {
                            from: self.events(),
                            to: self.event_key(ix.event_seq - keep_reports + 1),
                        });
                    }
                    if ix.max_report_seq > *keep_reports {
                        ops.push(Op::DeleteRange {
                            from: self.reports(),
                            to: self.report_key(ix.max_report_seq - keep_reports + 1),
                        });
                    }
                    let max_seq = ix.intents.values().map(|(s, _)| *s).max().unwrap_or(0);
                    let mut gone: Vec<String> = ix
                        .intents
                        .iter()
                        .filter(|(_, (s, fin))| {
                            *fin && max_seq.saturating_sub(*keep_finished) >= *s
                        })
                        .map(|(id, _)| id.clone())
                        .collect();
                    gone.sort();
                    for id in gone {
                        ix.intents.remove(&id);
                        ops.push(Op::Delete {
                            key: format!("{}{id}", self.intents()),
                        });
                    }
                    for op in ops {
                        self.push(&mut prune, &mut txns, op, "prune")?;
                    }
                    prune.flush(&mut txns);
                }
            }
        }
        cur.flush(&mut txns);
        Ok((txns, ix))
    }

    fn push(
        &self,
        cur: &mut Chunk,
        txns: &mut Vec<Vec<Op>>,
        op: Op,
        what: &str,
    ) -> Result<(), StoreError> {
        let size = op.size();
        if size > self.max_bytes {
            return Err(StoreError::Refused(format!(
                "{what} is {size} bytes, over store.etcd.max_txn_bytes ({}; etcd's own limit is --max-request-bytes, 1.5 MiB by default): not written",
                self.max_bytes
            )));
        }
        let key = match &op {
            Op::Put { key, .. } | Op::Delete { key } => Some(key.clone()),
            Op::DeleteRange { .. } => None,
        };
        if let Some(i) = key.as_ref().and_then(|k| cur.at.get(k)).copied() {
            cur.bytes = cur.bytes - cur.ops[i].size() + size;
            cur.ops[i] = op;
        } else {
            // One op of each txn is the commit chain's put.
            if cur.ops.len() + 1 >= self.max_ops || cur.bytes + size > self.max_bytes {
                cur.flush(txns);
            }
            if let Some(k) = key {
                cur.at.insert(k, cur.ops.len());
            }
            cur.bytes += size;
            cur.ops.push(op);
        }
        // A replacement can leave it over the byte budget: send what is there.
        if cur.bytes > self.max_bytes {
            cur.flush(txns);
        }
        Ok(())
    }
}

#[derive(Default)]
struct Chunk {
    ops: Vec<Op>,
    at: HashMap<String, usize>,
    bytes: usize,
}

impl Chunk {
    fn flush(&mut self, txns: &mut Vec<Vec<Op>>) {
        if !self.ops.is_empty() {
            txns.push(std::mem::take(&mut self.ops));
        }
        self.at.clear();
        self.bytes = 0;
    }
}

/// The etcd backend: commits through the leader's fence, recovers by range reads.
pub struct EtcdDb {
    etcd: Arc<Etcd>,
    ha: HaHandle,
    layout: Layout,
    index: Mutex<Index>,
    /// Txns sent in this process (the commit chain's values are `<epoch>.<n>`).
    commits: std::sync::atomic::AtomicU64,
}

/// `key` without `prefix` (a range under the prefix only returns keys that start with it).
fn tail<'a>(key: &'a str, prefix: &str) -> &'a str {
    key.strip_prefix(prefix).unwrap_or(key)
}

fn etcd_err(e: EtcdError) -> StoreError {
    StoreError::Refused(format!("etcd: {e}"))
}

impl EtcdDb {
    pub fn new(etcd: Arc<Etcd>, ha: HaHandle, layout: Layout) -> EtcdDb {
        EtcdDb {
            etcd,
            ha,
            layout,
            index: Mutex::new(Index::default()),
            commits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything a new leader needs, read back from etcd (and the index rebuilt from it).
    pub async fn recover(&self, recent_reports: usize) -> Result<Recovered, StoreError> {
        let mut r = Recovered::default();
        let mut ix = Index::default();
        let page = 256;
        let mut intents = Vec::new();
        for kv in self
            .etcd
            .range_prefix(&self.layout.intents(), page)
            .await
            .map_err(etcd_err)?
        {
            let id = tail(&kv.key, &self.layout.intents()).to_owned();
            let bad = |why: String| {
                StoreError::Refused(format!(
                    "etcd key {}: {why}: the stored state is corrupt; restore etcd from a snapshot",
                    kv.key
                ))
            };
            let (head, plan) = kv
                .value
                .split_once('\n')
                .ok_or_else(|| bad("no header line".into()))?;
            let head: IntentHeader =
                serde_json::from_str(head).map_err(|e| bad(format!("header: {e}")))?;
            let plan: Plan = serde_json::from_str(plan).map_err(|e| bad(format!("plan: {e}")))?;
            ix.intents.insert(id, (head.seq, finished(&head.status)));
            r.max_intent_seq = r.max_intent_seq.max(head.seq);
            intents.push((head, plan));
        }
        intents.sort_by_key(|(h, _)| h.seq);
        for (h, plan) in intents {
            match h.status.as_str() {
                "active" | "standing" => r.active.push((h.seq, plan)),
                _ => r.finished.push((h.seq, plan)),
            }
        }
        for kv in self
            .etcd
            .range_prefix(&self.layout.locks(), page)
            .await
            .map_err(etcd_err)?
        {
            r.locks.push(serde_json::from_str(&kv.value).map_err(|e| {
                StoreError::Refused(format!("etcd key {}: lock queue: {e}", kv.key))
            })?);
        }
        // Reports: the newest `recent_reports` (keys sort by seq).
        let reports = self
            .etcd
            .range_prefix(&self.layout.reports(), 1024)
            .await
            .map_err(etcd_err)?;
        let skip = reports.len().saturating_sub(recent_reports);
        for kv in reports.into_iter().skip(skip) {
            let seq: u64 = tail(&kv.key, &self.layout.reports()).parse().unwrap_or(0);
            r.max_report_seq = r.max_report_seq.max(seq);
            r.reports.push(kv.value);
        }
        ix.max_report_seq = r.max_report_seq;
        ix.chain = self.chain_value().await?;
        ix.event_seq = self
            .etcd
            .last_key(&self.layout.events())
            .await
            .map_err(etcd_err)?
            .and_then(|k| tail(&k, &self.layout.events()).parse().ok())
            .unwrap_or(0);
        *self.index() = ix;
        Ok(r)
    }

    /// The index from etcd again, after a commit whose outcome is unknown.
    async fn reload_index(&self) -> Result<(), StoreError> {
        let mut ix = Index::default();
        for kv in self
            .etcd
            .range_prefix(&self.layout.intents(), 256)
            .await
            .map_err(etcd_err)?
        {
            if let Some(Ok(h)) = kv
                .value
                .split_once('\n')
                .map(|(h, _)| serde_json::from_str::<IntentHeader>(h))
            {
                ix.intents.insert(
                    tail(&kv.key, &self.layout.intents()).to_owned(),
                    (h.seq, finished(&h.status)),
                );
            }
        }
        ix.chain = self.chain_value().await?;
        ix.max_report_seq = self
            .etcd
            .last_key(&self.layout.reports())
            .await
            .map_err(etcd_err)?
            .and_then(|k| tail(&k, &self.layout.reports()).parse().ok())
            .unwrap_or(0);
        ix.event_seq = self
            .etcd
            .last_key(&self.layout.events())
            .await
            .map_err(etcd_err)?
            .and_then(|k| tail(&k, &self.layout.events()).parse().ok())
            .unwrap_or(0);
        *self.index() = ix;
        Ok(())
    }

    async fn chain_value(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .etcd
            .get(&self.layout.commit_key())
            .await
            .map_err(etcd_err)?
            .map(|kv| kv.value))
    }

    pub async fn apply(&self, batch: Vec<Write>) -> Result<(), String> {
        if self.index().stale {
            self.reload_index().await.map_err(|e| e.to_string())?;
        }
        let base = self.index().clone();
        let (txns, mut after) = self.layout.plan(&batch, &base).map_err(|e| e.to_string())?;
        let epoch = self.ha.revision().unwrap_or(0);
        for (i, ops) in txns.iter().enumerate() {
            let n = self
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let chain = Chain {
                key: self.layout.commit_key(),
                prev: self.index().chain.clone(),
                next: format!("{epoch}.{n}"),
            };
            match self.ha.fenced_chained_txn(&chain, ops).await {
                // The chain moved even if a later txn of this batch fails.
                Ok(_) => self.index().chain = Some(chain.next),
                Err(e) => {
                    if i > 0
                        || matches!(
                            e,
                            WriteError::Fence(FenceError::Etcd(_) | FenceError::ChainMoved { .. })
                        )
                    {
                        // Part of the batch (or this txn, unanswered) may be in etcd, or
                        // the chain is not where we thought: read it all back first.
                        self.index().stale = true;
                    }
                    return Err(format!(
                        "etcd commit ({} of {} txns applied, {} writes): {e}",
                        i,
                        txns.len(),
                        batch.len()
                    ));
                }
            }
        }
        after.chain = self.index().chain.clone();
        *self.index() = Index {
            stale: false,
            ..after
        };
        Ok(())
    }
}

impl RemoteBackend for EtcdDb {
    fn apply(
        self: Arc<Self>,
        batch: Vec<Write>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>>>> {
        Box::pin(async move { EtcdDb::apply(&self, batch).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(ops: usize, bytes: usize) -> Layout {
        Layout {
            prefix: "/m/".into(),
            max_ops: ops,
            max_bytes: bytes,
        }
    }

    fn lock(k: &str, v: &str) -> Write {
        Write::Lock {
            key: k.into(),
            json: v.into(),
        }
    }

    #[test]
    fn one_key_twice_in_a_txn_keeps_the_last_and_limits_split() {
        // 4 ops a txn: 3 writes and the commit chain's put.
        let l = layout(4, 1 << 20);
        let b = vec![
            lock("a", "1"),
            lock("b", "1"),
            lock("a", "2"),
            lock("c", "1"),
            lock("d", "1"),
        ];
        let (txns, _) = l.plan(&b, &Index::default()).unwrap();
        assert_eq!(txns.len(), 2, "{txns:?}");
        assert_eq!(txns[0].len(), 3);
        assert_eq!(
            txns[0][0],
            Op::Put {
                key: "/m/locks/a".into(),
                value: "2".into()
            }
        );
        assert_eq!(txns[1].len(), 1);
        // Bytes: each value 40 KiB, budget 100 KiB → two a txn.
        let l = layout(128, 100 * 1024);
        let big = "x".repeat(40 * 1024);
        let b: Vec<Write> = (0..5).map(|i| lock(&format!("k{i}"), &big)).collect();
        let (txns, _) = l.plan(&b, &Index::default()).unwrap();
        assert_eq!(txns.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        // One value over the budget: refused with its name, nothing planned.
        let huge = "x".repeat(200 * 1024);
        let e = l
            .plan(&[lock("ok", "1"), lock("big", &huge)], &Index::default())
            .unwrap_err();
        assert!(e.to_string().contains("lock big is"), "{e}");
        assert!(e.to_string().contains("max_txn_bytes"), "{e}");
    }

    #[test]
    fn forget_and_prune_follow_the_index() {
        let l = layout(128, 1 << 20);
        let intent = |id: &str, seq: u64, status: &str| Write::Intent {
            intent_id: id.into(),
            seq,
            status: status.into(),
            plan: "{}".into(),
            updated_ms: 0,
        };
        let mut b: Vec<Write> = (1..=5)
            .map(|i| intent(&format!("i{i}"), i, "satisfied"))
            .collect();
        b.push(intent("live", 6, "active"));
        for s in 1..=5 {
            b.push(Write::Report {
                seq: s,
                intent_id: "x".into(),
                json: "{}".into(),
            });
        }
        b.push(Write::Forget {
            intent_id: "i5".into(),
            seq: 4,
        });
        b.push(Write::Forget {
            intent_id: "i4".into(),
            seq: 4,
        });
        b.push(Write::Prune {
            keep_finished: 3,
            keep_reports: 2,
        });
        let (txns, ix) = l.plan(&b, &Index::default()).unwrap();
        assert_eq!(txns.len(), 2, "{txns:?}");
        // i4 forgotten (its seq matched), i5 not; prune drops finished seq <= 6 - 3.
        assert!(txns[0].contains(&Op::Delete {
            key: "/m/intents/i4".into()
        }));
        let prune = &txns[1];
        assert!(prune.contains(&Op::DeleteRange {
            from: "/m/reports/".into(),
            to: format!("/m/reports/{:020}", 4)
        }));
        for gone in ["i1", "i2", "i3"] {
            assert!(prune.contains(&Op::Delete {
                key: format!("/m/intents/{gone}")
            }));
        }
        let mut left: Vec<&String> = ix.intents.keys().collect();
        left.sort();
        assert_eq!(left, ["i5", "live"]);
    }
}
