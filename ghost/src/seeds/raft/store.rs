//! The raft-node's durable state in one SQLite file (`<seed data dir>/raft.sqlite`, WAL,
//! `synchronous=FULL`): the log, the vote, the committed id, the replicated KV state machine
//! with its applied id and membership, and the latest snapshot. Every write is one
//! transaction, so a SIGKILL leaves either the old or the new state, never a mix.

// openraft's storage traits fix the error type (`StorageError`, 224 bytes): helpers use it too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::types::{NodeId, Request, Response, TypeConfig, MAX_KEYS};

type SErr = StorageError<NodeId>;
type Node = openraft::BasicNode;
/// The snapshot row: its meta and its bytes.
type StoredSnapshot = (SnapshotMeta<NodeId, Node>, Vec<u8>);

/// The shared SQLite connection, and the last committed index for observations.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    pub committed: Arc<AtomicU64>,
}

fn io<E: std::error::Error + 'static>(
    f: fn(openraft::AnyError) -> StorageIOError<NodeId>,
) -> impl Fn(E) -> SErr {
    move |e| SErr::IO {
        source: f(openraft::AnyError::new(&e)),
    }
}

fn w(e: impl std::error::Error + 'static) -> SErr {
    io(StorageIOError::write)(e)
}

fn r(e: impl std::error::Error + 'static) -> SErr {
    io(StorageIOError::read)(e)
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    kv: BTreeMap<String, String>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),
                 meta TEXT NOT NULL, data BLOB NOT NULL);",
        )
        .map_err(|e| format!("prepare {}: {e}", path.display()))?;
        let db = Db {
            conn: Arc::new(Mutex::new(conn)),
            committed: Arc::new(AtomicU64::new(0)),
        };
        let c: Option<LogId<NodeId>> = db.meta("committed").map_err(|e| e.to_string())?;
        db.committed
            .store(c.map(|l| l.index).unwrap_or(0), Ordering::Relaxed);
        Ok(db)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding it cannot leave a half transaction: SQLite rolls it back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, k: &str) -> Result<Option<T>, SErr> {
        let c = self.lock();
        let v: Option<String> = c
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |row| row.get(0))
            .optional()
            .map_err(r)?;
        match v {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s).map(Some).map_err(r),
        }
    }

    fn set_meta<T: Serialize>(&self, k: &str, v: &T) -> Result<(), SErr> {
        let s = serde_json::to_string(v).map_err(w)?;
        self.lock()
            .execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, s],
            )
            .map_err(w)?;
        Ok(())
    }

    /// A linearizable read is this, after `ensure_linearizable` (applied ≥ the read index).
    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        self.lock()
            .query_row("SELECT v FROM kv WHERE k = ?1", [key], |row| row.get(0))
            .optional()
            .map_err(|e| format!("read {key:?}: {e}"))
    }

    pub fn keys(&self) -> Result<u64, String> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM kv", [], |row| row.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(|e| format!("count keys: {e}"))
    }
}

/// Applies one command inside the caller's transaction.
fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    req: &Request,
    keys: &mut u64,
) -> Result<Response, rusqlite::Error> {
    let key = match req {
        Request::Put { key, .. } | Request::Delete { key } => key,
    };
    let prev: Option<String> = tx
        .query_row("SELECT v FROM kv WHERE k = ?1", [key], |row| row.get(0))
        .optional()?;
    match req {
        Request::Put { value, .. } => {
            if prev.is_none() && *keys >= MAX_KEYS as u64 {
                return Ok(Response {
                    prev: None,
                    refused: Some(format!("the state machine holds {MAX_KEYS} keys already")),
                });
            }
            tx.execute(
                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![key, value],
            )?;
            if prev.is_none() {
                *keys += 1;
            }
        }
        Request::Delete { .. } => {
            if tx.execute("DELETE FROM kv WHERE k = ?1", [key])? > 0 {
                *keys = keys.saturating_sub(1);
            }
        }
    }
    Ok(Response {
        prev,
        refused: None,
    })
}

/// The log half: openraft's [`RaftLogStorage`] over the `log` and `meta` tables.
#[derive(Clone)]
pub struct LogStore {
    pub db: Db,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let lo = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => match x.checked_sub(1) {
                Some(h) => h,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => i64::MAX as u64,
        };
        let c = self.db.lock();
        let mut st = c
            .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")
            .map_err(r)?;
        let rows = st
            .query_map(
                params![
                    lo.min(i64::MAX as u64) as i64,
                    hi.min(i64::MAX as u64) as i64
                ],
                |row| row.get::<_, String>(0),
            )
            .map_err(r)?;
        let mut out = Vec::new();
        for row in rows {
            let s = row.map_err(r)?;
            out.push(serde_json::from_str(&s).map_err(r)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let purged: Option<LogId<NodeId>> = self.db.meta("purged")?;
        let last: Option<String> = self
            .db
            .lock()
            .query_row(
                "SELECT entry FROM log ORDER BY idx DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(r)?;
        let last = match last {
            None => purged,
            Some(s) => Some(
                serde_json::from_str::<Entry<TypeConfig>>(&s)
                    .map_err(r)?
                    .log_id,
            ),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.db.set_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.db.meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        self.db
            .committed
            .store(committed.map(|l| l.index).unwrap_or(0), Ordering::Relaxed);
        self.db.set_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        self.db.meta("committed")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let res = (|| {
            let mut c = self.db.lock();
            let tx = c.transaction()?;
            {
                let mut st =
                    tx.prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")?;
                for e in entries {
                    let s = serde_json::to_string(&e)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    st.execute(params![e.log_id.index as i64, s])?;
                }
            }
            tx.commit()
        })();
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(w(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.db
            .lock()
            .execute("DELETE FROM log WHERE idx >= ?1", [log_id.index as i64])
            .map_err(w)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        // The purged id first: a crash between the two leaves extra entries, never a gap.
        self.db.set_meta("purged", &Some(log_id))?;
        self.db
            .lock()
            .execute("DELETE FROM log WHERE idx <= ?1", [log_id.index as i64])
            .map_err(w)?;
        Ok(())
    }
}

/// The state-machine half: the `kv` table, its applied id and membership, the snapshot.
#[derive(Clone)]
pub struct StateMachine {
    pub db: Db,
}

impl StateMachine {
    fn snapshot_row(&self) -> Result<Option<StoredSnapshot>, SErr> {
        let row: Option<(String, Vec<u8>)> = self
            .db
            .lock()
            .query_row("SELECT meta, data FROM snapshot WHERE id = 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
            .map_err(r)?;
        match row {
            None => Ok(None),
            Some((m, d)) => Ok(Some((serde_json::from_str(&m).map_err(r)?, d))),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        // One read transaction: the KV content and the applied id it belongs to agree.
        let (data, meta) = {
            let mut c = self.db.lock();
            let tx = c.transaction().map_err(r)?;
            let mut kv = BTreeMap::new();
            {
                let mut st = tx.prepare("SELECT k, v FROM kv").map_err(r)?;
                let rows = st
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                    })
                    .map_err(r)?;
                for row in rows {
                    let (k, v) = row.map_err(r)?;
                    kv.insert(k, v);
                }
            }
            let get = |k: &str| -> Result<Option<String>, SErr> {
                tx.query_row("SELECT v FROM meta WHERE k = ?1", [k], |row| row.get(0))
                    .optional()
                    .map_err(r)
            };
            let applied: Option<LogId<NodeId>> = match get("applied")? {
                Some(s) => serde_json::from_str(&s).map_err(r)?,
                None => None,
            };
            let membership: StoredMembership<NodeId, Node> = match get("membership")? {
                Some(s) => serde_json::from_str(&s).map_err(r)?,
                None => StoredMembership::default(),
            };
            let data = serde_json::to_vec(&SnapshotBody { kv }).map_err(r)?;
            let id = match applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, shared::now_ms()),
                None => format!("0-0-{}", shared::now_ms()),
            };
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: id,
            };
            tx.execute(
                "INSERT OR REPLACE INTO snapshot (id, meta, data) VALUES (1, ?1, ?2)",
                params![serde_json::to_string(&meta).map_err(w)?, data],
            )
            .map_err(w)?;
            tx.commit().map_err(w)?;
            (data, meta)
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), SErr> {
        let applied: Option<Option<LogId<NodeId>>> = self.db.meta("applied")?;
        let m: Option<StoredMembership<NodeId, Node>> = self.db.meta("membership")?;
        Ok((applied.flatten(), m.unwrap_or_default()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut keys = self.db.keys().map_err(|e| w(std::io::Error::other(e)))?;
        let mut c = self.db.lock();
        let tx = c.transaction().map_err(w)?;
        let mut out = Vec::new();
        let mut last = None;
        let mut membership = None;
        for e in entries {
            last = Some(e.log_id);
            match &e.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(req) => out.push(apply_one(&tx, req, &mut keys).map_err(w)?),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
                    out.push(Response::default());
                }
            }
        }
        let set = |k: &str, v: String| {
            tx.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )
        };
        if let Some(l) = last {
            set("applied", serde_json::to_string(&Some(l)).map_err(w)?).map_err(w)?;
        }
        if let Some(m) = membership {
            set("membership", serde_json::to_string(&m).map_err(w)?).map_err(w)?;
        }
        tx.commit().map_err(w)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(r)?;
        let mut c = self.db.lock();
        let tx = c.transaction().map_err(w)?;
        tx.execute("DELETE FROM kv", []).map_err(w)?;
        {
            let mut st = tx
                .prepare("INSERT INTO kv (k, v) VALUES (?1, ?2)")
                .map_err(w)?;
            for (k, v) in &body.kv {
                st.execute(params![k, v]).map_err(w)?;
            }
        }
        let set = |k: &str, v: String| {
            tx.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )
        };
        set(
            "applied",
            serde_json::to_string(&meta.last_log_id).map_err(w)?,
        )
        .map_err(w)?;
        set(
            "membership",
            serde_json::to_string(&meta.last_membership).map_err(w)?,
        )
        .map_err(w)?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshot (id, meta, data) VALUES (1, ?1, ?2)",
            params![serde_json::to_string(meta).map_err(w)?, data],
        )
        .map_err(w)?;
        tx.commit().map_err(w)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        Ok(self.snapshot_row()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Membership};

    fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload,
        }
    }

    fn put(k: &str, v: &str) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Request::Put {
            key: k.into(),
            value: v.into(),
        })
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn the_state_machine_applies_survives_a_reopen_and_round_trips_a_snapshot() {
        let dir = std::env::temp_dir().join(format!(
            "raft-store-{}-{}",
            std::process::id(),
            shared::now_ms()
        ));
        let path = dir.join("raft.sqlite");
        rt().block_on(async {
            let db = Db::open(&path).unwrap();
            let mut sm = StateMachine { db: db.clone() };
            let m = Membership::new(vec![[1u64].into()], None);
            let out = sm
                .apply(vec![
                    entry(1, 1, EntryPayload::Membership(m)),
                    entry(1, 2, put("a", "1")),
                    entry(1, 3, put("a", "2")),
                    entry(1, 4, put("b", "x")),
                    entry(
                        1,
                        5,
                        EntryPayload::Normal(Request::Delete { key: "b".into() }),
                    ),
                ])
                .await
                .unwrap();
            assert_eq!(out[2].prev.as_deref(), Some("1"));
            assert_eq!(out[4].prev.as_deref(), Some("x"));
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(5));

            // Reopen (what a restart after SIGKILL sees).
            drop(sm);
            let db2 = Db::open(&path).unwrap();
            let mut sm2 = StateMachine { db: db2.clone() };
            let (applied, mem) = sm2.applied_state().await.unwrap();
            assert_eq!(applied.map(|l| l.index), Some(5));
            assert_eq!(mem.membership().voter_ids().collect::<Vec<_>>(), vec![1]);
            assert_eq!(db2.get("a").unwrap().as_deref(), Some("2"));
            assert_eq!(db2.get("b").unwrap(), None);

            // Install the snapshot into a fresh store.
            let other = Db::open(&dir.join("other.sqlite")).unwrap();
            let mut sm3 = StateMachine { db: other.clone() };
            sm3.apply(vec![entry(1, 1, put("stale", "y"))])
                .await
                .unwrap();
            let cur = sm2.get_current_snapshot().await.unwrap().unwrap();
            sm3.install_snapshot(&cur.meta, cur.snapshot).await.unwrap();
            assert_eq!(other.get("a").unwrap().as_deref(), Some("2"));
            assert_eq!(other.get("stale").unwrap(), None);
            assert_eq!(
                sm3.applied_state().await.unwrap().0.map(|l| l.index),
                Some(5)
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_log_store_appends_truncates_purges_and_keeps_the_vote() {
        let dir = std::env::temp_dir().join(format!(
            "raft-log-{}-{}",
            std::process::id(),
            shared::now_ms()
        ));
        let path = dir.join("raft.sqlite");
        rt().block_on(async {
            let mut ls = LogStore {
                db: Db::open(&path).unwrap(),
            };
            {
                let c = ls.db.lock();
                for i in 1..=5u64 {
                    let e = entry(1, i, put("k", &i.to_string()));
                    c.execute(
                        "INSERT INTO log (idx, entry) VALUES (?1, ?2)",
                        params![i as i64, serde_json::to_string(&e).unwrap()],
                    )
                    .unwrap();
                }
            }
            assert_eq!(ls.try_get_log_entries(2..4).await.unwrap().len(), 2);
            assert_eq!(ls.try_get_log_entries(..).await.unwrap().len(), 5);
            ls.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
                .await
                .unwrap();
            let st = ls.get_log_state().await.unwrap();
            assert_eq!(st.last_log_id.map(|l| l.index), Some(3));
            ls.purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
                .await
                .unwrap();
            let st = ls.get_log_state().await.unwrap();
            assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(3));
            assert_eq!(st.last_log_id.map(|l| l.index), Some(3));
            ls.save_vote(&Vote::new(7, 2)).await.unwrap();
            let mut again = LogStore {
                db: Db::open(&path).unwrap(),
            };
            assert_eq!(again.read_vote().await.unwrap(), Some(Vote::new(7, 2)));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
