//! The Ghost's embedded database (SQLite, WAL) under `data_dir`: the outbox, the executed
//! command_ids of the dedupe window, start markers of non-idempotent commands, and lock
//! fences. One writer: the [`Store`] actor on its
//! own thread (a `SyncArbiter` of one), so no event loop ever blocks on disk.
//!
//! `synchronous=NORMAL` in WAL mode: a committed write survives a process crash (SIGKILL),
//! which is the failure this store exists for; only an OS crash can lose the last commits.

use std::path::Path;

use actix::prelude::*;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
}

/// What a restart recovers.
#[derive(Debug, Default)]
pub struct Recovered {
    /// (seq, event_id, payload) of events not yet acknowledged, oldest first.
    pub outbox: Vec<(u64, String, Bytes)>,
    /// (command_id, event payload, done_ms) inside the dedupe window, oldest first.
    pub executions: Vec<(String, Bytes, u64)>,
    /// (command_id, started_ms) of commands whose start was recorded and whose end was not
    /// (the process stopped while the seed had them), inside the window, oldest first.
    pub started: Vec<(String, u64)>,
    pub fences: Vec<(String, u64)>,
    pub failed_events: u64,
}

pub struct Db {
    conn: Connection,
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("ghost.db"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS outbox (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_id TEXT NOT NULL UNIQUE,
                 payload BLOB NOT NULL,
                 state TEXT NOT NULL DEFAULT 'pending',
                 reason TEXT,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS executions (
                 command_id TEXT PRIMARY KEY,
                 event BLOB NOT NULL,
                 done_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS executions_done ON executions(done_ms);
             CREATE TABLE IF NOT EXISTS started (
                 command_id TEXT PRIMARY KEY,
                 started_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS fences (
                 seed_id TEXT PRIMARY KEY,
                 token INTEGER NOT NULL
             );",
        )?;
        Ok(Db { conn })
    }

    /// Persists a terminal event (and, for a command, its execution record) in one
    /// transaction. Returns the outbox sequence; an event already waiting keeps its seq.
    pub fn persist(
        &mut self,
        event_id: &str,
        command_id: Option<&str>,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO outbox(event_id, payload, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(event_id) DO UPDATE SET state='pending', reason=NULL",
            params![event_id, payload, now_ms as i64],
        )?;
        let seq: i64 = tx.query_row(
            "SELECT seq FROM outbox WHERE event_id=?1",
            params![event_id],
            |r| r.get(0),
        )?;
        if let Some(cid) = command_id {
            tx.execute(
                "INSERT INTO executions(command_id, event, done_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(command_id) DO NOTHING",
                params![cid, payload, now_ms as i64],
            )?;
            // Finished: no longer interrupted, whatever happens next.
            tx.execute("DELETE FROM started WHERE command_id=?1", params![cid])?;
        }
        tx.commit()?;
        Ok(seq as u64)
    }

    /// Persists the execution record of an admin-run command, whose event is answered in the
    /// admin reply only: nothing goes in the outbox, so nothing is sent on the session, now
    /// or after a restart (issue 21 item 1).
    pub fn record_execution(
        &mut self,
        command_id: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO executions(command_id, event, done_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(command_id) DO NOTHING",
            params![command_id, payload, now_ms as i64],
        )?;
        tx.execute(
            "DELETE FROM started WHERE command_id=?1",
            params![command_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records that a command is being handed to its seed (before any effect can happen).
    pub fn mark_started(&mut self, command_id: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO started(command_id, started_ms) VALUES (?1, ?2)
             ON CONFLICT(command_id) DO NOTHING",
            params![command_id, now_ms as i64],
        )?;
        Ok(())
    }

    pub fn acked(&mut self, event_id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM outbox WHERE event_id=?1", params![event_id])?;
        Ok(())
    }

    pub fn failed(&mut self, event_id: &str, reason: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE outbox SET state='failed', reason=?2 WHERE event_id=?1",
            params![event_id, reason],
        )?;
        Ok(())
    }

    pub fn save_fence(&mut self, seed: &str, token: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO fences(seed_id, token) VALUES (?1, ?2)
             ON CONFLICT(seed_id) DO UPDATE SET token=max(token, excluded.token)",
            params![seed, token as i64],
        )?;
        Ok(())
    }

    pub fn prune_executions(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        self.conn.execute(
            "DELETE FROM started WHERE started_ms < ?1",
            params![before_ms as i64],
        )?;
        Ok(self.conn.execute(
            "DELETE FROM executions WHERE done_ms < ?1",
            params![before_ms as i64],
        )?)
    }

    pub fn execution(&self, command_id: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT event, done_ms FROM executions WHERE command_id=?1",
                params![command_id],
                |r| {
                    Ok((
                        Bytes::from(r.get::<_, Vec<u8>>(0)?),
                        r.get::<_, i64>(1)? as u64,
                    ))
                },
            )
            .optional()?)
    }

    pub fn recover(&mut self, window_start_ms: u64) -> Result<Recovered, StoreError> {
        let mut rec = Recovered::default();
        let mut st = self.conn.prepare(
            "SELECT seq, event_id, payload FROM outbox WHERE state='pending' ORDER BY seq",
        )?;
        rec.outbox = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    Bytes::from(r.get::<_, Vec<u8>>(2)?),
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut st = self.conn.prepare(
            "SELECT command_id, event, done_ms FROM executions WHERE done_ms >= ?1 ORDER BY done_ms",
        )?;
        rec.executions = st
            .query_map(params![window_start_ms as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut st = self.conn.prepare(
            "SELECT s.command_id, s.started_ms FROM started s
             LEFT JOIN executions e ON e.command_id = s.command_id
             WHERE e.command_id IS NULL AND s.started_ms >= ?1 ORDER BY s.started_ms",
        )?;
        rec.started = st
            .query_map(params![window_start_ms as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<_, _>>()?;
        let mut st = self.conn.prepare("SELECT seed_id, token FROM fences")?;
        rec.fences = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<_, _>>()?;
        rec.failed_events = self.conn.query_row(
            "SELECT count(*) FROM outbox WHERE state='failed'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        Ok(rec)
    }
}

/// The single writer.
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Store {
        Store { db }
    }
}

impl Actor for Store {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<u64, String>")]
pub struct Persist {
    pub event_id: String,
    pub command_id: Option<String>,
    pub payload: Bytes,
    pub now_ms: u64,
    /// false: an admin-run command's event, kept as its execution record only (no outbox
    /// row, so never sent on the session); the result's seq is then 0.
    pub session: bool,
}

impl Handler<Persist> for Store {
    type Result = Result<u64, String>;
    fn handle(&mut self, m: Persist, _: &mut SyncContext<Self>) -> Self::Result {
        match (m.session, m.command_id.as_deref()) {
            (false, Some(cid)) => self
                .db
                .record_execution(cid, &m.payload, m.now_ms)
                .map(|()| 0),
            _ => self
                .db
                .persist(&m.event_id, m.command_id.as_deref(), &m.payload, m.now_ms),
        }
        .map_err(|e| e.to_string())
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub enum Update {
    Acked {
        event_id: String,
    },
    Failed {
        event_id: String,
        reason: String,
    },
    Fence {
        seed: String,
        token: u64,
    },
    Prune {
        before_ms: u64,
    },
    /// A command is about to reach its seed; answered once the marker is committed.
    Started {
        command_id: String,
        now_ms: u64,
    },
}

impl Handler<Update> for Store {
    type Result = Result<(), String>;
    fn handle(&mut self, m: Update, _: &mut SyncContext<Self>) -> Self::Result {
        let r = match m {
            Update::Acked { event_id } => self.db.acked(&event_id),
            Update::Failed { event_id, reason } => self.db.failed(&event_id, &reason),
            Update::Fence { seed, token } => self.db.save_fence(&seed, token),
            Update::Prune { before_ms } => self.db.prune_executions(before_ms).map(|_| ()),
            Update::Started { command_id, now_ms } => self.db.mark_started(&command_id, now_ms),
        };
        r.map_err(|e| e.to_string())
    }
}

shared::metered!(Store, Persist);
shared::metered!(Store, Update);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_prunes() {
        let dir = std::env::temp_dir().join(format!("ghost-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut db = Db::open(&dir).unwrap();
            let s1 = db.persist("evt.a", Some("a"), b"A", 10).unwrap();
            let s2 = db.persist("evt.b", Some("b"), b"B", 20).unwrap();
            assert!(s2 > s1);
            assert_eq!(db.persist("evt.a", Some("a"), b"A", 30).unwrap(), s1);
            db.persist("evt.session.x", None, b"H", 30).unwrap();
            db.acked("evt.session.x").unwrap();
            db.failed("evt.b", "rejected").unwrap();
            db.save_fence("seed.kv", 7).unwrap();
            db.save_fence("seed.kv", 3).unwrap();
        }
        let mut db = Db::open(&dir).unwrap();
        let rec = db.recover(0).unwrap();
        assert_eq!(rec.outbox.len(), 1);
        assert_eq!(rec.outbox[0].1, "evt.a");
        assert_eq!(rec.failed_events, 1);
        assert_eq!(rec.executions.len(), 2);
        assert_eq!(rec.fences, vec![("seed.kv".to_string(), 7)]);
        assert_eq!(db.prune_executions(15).unwrap(), 1);
        assert_eq!(db.recover(0).unwrap().executions.len(), 1);
        assert!(db.execution("b").unwrap().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_run_executions_never_reach_the_outbox() {
        let dir = std::env::temp_dir().join(format!("ghost-store-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut db = Db::open(&dir).unwrap();
            db.mark_started("admin:cmd.i.1", 10).unwrap();
            db.record_execution("admin:cmd.i.1", b"E", 11).unwrap();
        }
        let mut db = Db::open(&dir).unwrap();
        let rec = db.recover(0).unwrap();
        assert!(rec.outbox.is_empty(), "nothing to send on the session");
        assert_eq!(
            rec.executions.len(),
            1,
            "still deduplicated after a restart"
        );
        assert!(rec.started.is_empty(), "finished");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn start_markers_survive_a_crash_until_the_command_finishes() {
        let dir = std::env::temp_dir().join(format!("ghost-store-started-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut db = Db::open(&dir).unwrap();
            db.mark_started("done", 10).unwrap();
            db.persist("evt.done", Some("done"), b"D", 11).unwrap();
            db.mark_started("cut", 20).unwrap();
            db.mark_started("cut", 25).unwrap(); // the first start is kept
            db.mark_started("old", 1).unwrap();
        } // dropped without finishing "cut": as after SIGKILL
        let mut db = Db::open(&dir).unwrap();
        let rec = db.recover(5).unwrap();
        assert_eq!(rec.started, vec![("cut".to_string(), 20)]);
        db.prune_executions(21).unwrap();
        assert!(
            db.recover(0).unwrap().started.is_empty(),
            "pruned with the window"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
