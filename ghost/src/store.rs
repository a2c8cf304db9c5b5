//! The Ghost's embedded database (SQLite, WAL) under `data_dir`: the outbox, the executed
//! command_ids of the dedupe window, start markers of non-idempotent commands, and lock
//! fences. One writer: the [`Store`] actor on its
//! own thread (a `SyncArbiter` of one), so no event loop ever blocks on disk.
//!
//! `synchronous=NORMAL` in WAL mode: a committed write survives a process crash (SIGKILL),
//! which is the failure this store exists for; only an OS crash can lose the last commits.
//!
//! Records age on the [`GhostClock`], never on the wall clock: a clock set forward while the
//! Ghost was down must not make the window forget a command Mirage is about to re-send.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    /// The files are not what they should be (wiped, corrupt); the message names them.
    #[error("store: {0}")]
    Refused(String),
}

/// What ghost.db keeps, for the messages that refuse to start without it.
const HOLDS: &str = "the outbox, the dedupe window, start markers and lock fences";

/// The Ghost's aging clock: milliseconds of Ghost run time, monotonic within a run
/// (`Instant`) and resumed after a restart from the highest value the store holds. Neither a
/// wall-clock jump nor the time the Ghost was down moves it, so a record is only ever kept
/// longer than its window (see `logic::keep_until`).
#[derive(Debug, Clone, Copy)]
pub struct GhostClock {
    base: u64,
    origin: Instant,
}

impl GhostClock {
    pub fn resume(base: u64) -> GhostClock {
        GhostClock {
            base,
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        self.base
            .saturating_add(self.origin.elapsed().as_millis().min(u64::MAX as u128) as u64)
    }
}

/// SQLite stores i64; "kept until the command ends" (`u64::MAX`) is stored as `i64::MAX`.
fn tick_sql(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

/// A finished command's execution record (kept at least as long as its start marker was),
/// and the marker removed: no longer interrupted, whatever happens next.
fn insert_execution(
    tx: &rusqlite::Transaction<'_>,
    cid: &str,
    payload: &[u8],
    now_ms: u64,
    tick: u64,
    keep_until: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO executions(command_id, event, done_ms, tick, keep_until)
         VALUES (?1, ?2, ?3, ?4,
           max(?5, coalesce((SELECT keep_until FROM started WHERE command_id=?1), 0)))
         ON CONFLICT(command_id) DO NOTHING",
    )?
    .execute(params![
        cid,
        payload,
        now_ms as i64,
        tick_sql(tick),
        tick_sql(keep_until)
    ])?;
    tx.prepare_cached("DELETE FROM started WHERE command_id=?1")?
        .execute(params![cid])?;
    Ok(())
}

/// An event into the outbox (an event already waiting keeps its seq) and, for a command,
/// its execution record; inside the caller's transaction. Returns the outbox seq.
fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    event_id: &str,
    command_id: Option<&str>,
    payload: &[u8],
    now_ms: u64,
    tick: u64,
    keep_until: u64,
) -> Result<u64, StoreError> {
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO outbox(event_id, payload, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(event_id) DO UPDATE SET state='pending', reason=NULL
             RETURNING seq",
        )?
        .query_row(params![event_id, payload, now_ms as i64], |r| r.get(0))?;
    if let Some(cid) = command_id {
        insert_execution(tx, cid, payload, now_ms, tick, keep_until)?;
    }
    Ok(seq as u64)
}

fn tick_from_sql(t: i64) -> u64 {
    if t == i64::MAX {
        u64::MAX
    } else {
        t.max(0) as u64
    }
}

/// What a restart recovers.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Where the Ghost clock resumes (see [`GhostClock`]).
    pub clock_ms: u64,
    /// (seq, event_id, payload) of events not yet acknowledged, oldest first.
    pub outbox: Vec<(u64, String, Bytes)>,
    /// Execution records still kept at `clock_ms`, each handed to `recover`'s callback as
    /// (command_id, keep_until), oldest first; their events stay on disk.
    pub executions: usize,
    /// (command_id, marker) of commands whose start was recorded and whose end was not (the
    /// process stopped while the seed had them), still kept at `clock_ms`, oldest first.
    pub started: Vec<(String, crate::logic::Marker)>,
    pub fences: Vec<(String, u64)>,
    pub failed_events: u64,
}

pub struct Db {
    conn: Connection,
    path: std::path::PathBuf,
}

/// Columns added when aging moved to the Ghost clock; a database from before gets them, its
/// old records keep one window of run time from now, its markers until their commands end.
const AGING_COLUMNS: [(&str, &str); 4] = [
    ("executions", "tick"),
    ("executions", "keep_until"),
    ("started", "tick"),
    ("started", "keep_until"),
];

impl Db {
    /// Opens (creating) `dir/ghost.db`. `window_ms` only matters for a database written
    /// before aging moved to the Ghost clock (its records get one window from now).
    pub fn open(dir: &Path, window_ms: u64) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("ghost.db");
        // Before SQLite touches the files: it would start empty on a wiped database and drop
        // a damaged WAL without a word.
        let checked = shared::dbguard::check(&path, HOLDS).map_err(StoreError::Refused)?;
        for w in &checked.warnings {
            tracing::error!(component = "ghost.store", file = %path.display(), warning = %w, "database files");
        }
        let conn = Connection::open(&path)?;
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
             CREATE TABLE IF NOT EXISTS started (
                 command_id TEXT PRIMARY KEY,
                 started_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS fences (
                 seed_id TEXT PRIMARY KEY,
                 token INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY,
                 value INTEGER NOT NULL
             );",
        )?;
        let mut db = Db {
            conn,
            path: path.clone(),
        };
        db.migrate_aging(window_ms)?;
        shared::dbguard::mark(&path).map_err(|e| {
            StoreError::Refused(format!(
                "cannot write {}: {e}",
                shared::dbguard::marker_path(&path).display()
            ))
        })?;
        if checked.fresh {
            tracing::info!(component = "ghost.store", file = %path.display(), "new database");
        }
        Ok(db)
    }

    /// Adds the Ghost-clock columns to a database that has only wall-clock ones.
    fn migrate_aging(&mut self, window_ms: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut added = false;
        for (table, col) in AGING_COLUMNS {
            let has: bool = tx.query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name=?1"),
                params![col],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !has {
                tx.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0"
                ))?;
                added = true;
            }
        }
        if added {
            let clock: i64 = tx
                .query_row("SELECT value FROM meta WHERE key='clock_ms'", [], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(0);
            let keep = tick_sql((clock as u64).saturating_add(window_ms));
            tx.execute(
                "UPDATE executions SET tick=?1, keep_until=?2",
                params![clock, keep],
            )?;
            tx.execute(
                "UPDATE started SET tick=?1, keep_until=?2",
                params![clock, i64::MAX],
            )?;
        }
        tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS executions_keep ON executions(keep_until);
             CREATE INDEX IF NOT EXISTS started_keep ON started(keep_until);",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Persists a terminal event (and, for a command, its execution record) in one
    /// transaction. Returns the outbox sequence; an event already waiting keeps its seq.
    /// The execution is kept until `keep_until` (Ghost clock) or as long as its start marker
    /// was, whichever is later.
    pub fn persist(
        &mut self,
        event_id: &str,
        command_id: Option<&str>,
        payload: &[u8],
        now_ms: u64,
        tick: u64,
        keep_until: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let seq = insert_event(&tx, event_id, command_id, payload, now_ms, tick, keep_until)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Several `persist`s (and admin-run `record_execution`s: `session` false, seq 0) in one
    /// transaction: the outbox's group commit. All or none are on disk.
    pub fn persist_batch(
        &mut self,
        batch: &[Persist],
        tick: u64,
        keep_until: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut seqs = Vec::with_capacity(batch.len());
        for m in batch {
            let seq = match (m.session, m.command_id.as_deref()) {
                (false, Some(cid)) => {
                    insert_execution(&tx, cid, &m.payload, m.now_ms, tick, keep_until)?;
                    0
                }
                _ => insert_event(
                    &tx,
                    &m.event_id,
                    m.command_id.as_deref(),
                    &m.payload,
                    m.now_ms,
                    tick,
                    keep_until,
                )?,
            };
            seqs.push(seq);
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// Acks and rejections of several events in one transaction.
    pub fn settle_batch(&mut self, batch: &[(String, Option<String>)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for (event_id, rejected) in batch {
            match rejected {
                None => tx
                    .prepare_cached("DELETE FROM outbox WHERE event_id=?1")?
                    .execute(params![event_id])?,
                Some(reason) => tx
                    .prepare_cached(
                        "UPDATE outbox SET state='failed', reason=?2 WHERE event_id=?1",
                    )?
                    .execute(params![event_id, reason])?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// Persists the execution record of an admin-run command, whose event is answered in the
    /// admin reply only: nothing goes in the outbox, so nothing is sent on the session, now
    /// or after a restart (issue 21 item 1). The record is the one `persist` writes.
    pub fn record_execution(
        &mut self,
        command_id: &str,
        payload: &[u8],
        now_ms: u64,
        tick: u64,
        keep_until: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        insert_execution(&tx, command_id, payload, now_ms, tick, keep_until)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that a command is being handed to its seed (before any effect can happen).
    pub fn mark_started(
        &mut self,
        command_id: &str,
        now_ms: u64,
        tick: u64,
        keep_until: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO started(command_id, started_ms, tick, keep_until) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(command_id) DO NOTHING",
            )?
            .execute(params![
                command_id,
                now_ms as i64,
                tick_sql(tick),
                tick_sql(keep_until)
            ],
        )?;
        Ok(())
    }

    pub fn acked(&mut self, event_id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE event_id=?1")?
            .execute(params![event_id])?;
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

    /// Drops what is kept until before `now` (Ghost clock) and saves the clock, so a restart
    /// resumes it from here.
    pub fn prune_executions(&mut self, now: u64) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM started WHERE keep_until < ?1",
            params![tick_sql(now)],
        )?;
        let n = tx.execute(
            "DELETE FROM executions WHERE keep_until < ?1",
            params![tick_sql(now)],
        )?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('clock_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value=max(value, excluded.value)",
            params![tick_sql(now)],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// The stored event of a finished command (its execution record) and when it was done
    /// (wall clock), if the record is still kept.
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

    /// Where the Ghost clock resumes: the saved clock or the newest stamp, whichever is later.
    pub fn clock(&self) -> Result<u64, StoreError> {
        let saved: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key='clock_ms'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let newest = |table: &str| -> Result<i64, StoreError> {
            Ok(self.conn.query_row(
                &format!("SELECT coalesce(max(tick), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )?)
        };
        Ok(crate::logic::resume_clock(
            [
                saved.unwrap_or(0),
                newest("executions")?,
                newest("started")?,
            ]
            .map(|t| t.max(0) as u64),
        ))
    }

    /// Everything a restart needs, aged on the resumed Ghost clock; each execution record
    /// kept goes to `on_execution` (command_id, keep_until) rather than into memory at once.
    /// A row that cannot be read is corruption: the error names the file and says what to do.
    pub fn recover(
        &mut self,
        on_execution: impl FnMut(&str, u64),
    ) -> Result<Recovered, StoreError> {
        self.recover_rows(on_execution).map_err(|e| {
            StoreError::Refused(format!(
                "{}: the stored state cannot be read ({e}): the database is corrupt. Restore it \
                 from a backup; or, to start with an empty database on purpose, move it and {} aside",
                self.path.display(),
                shared::dbguard::marker_path(&self.path).display()
            ))
        })
    }

    fn recover_rows(
        &mut self,
        mut on_execution: impl FnMut(&str, u64),
    ) -> Result<Recovered, StoreError> {
        let mut rec = Recovered {
            clock_ms: self.clock()?,
            ..Default::default()
        };
        let now = tick_sql(rec.clock_ms);
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
            "SELECT command_id, keep_until FROM executions WHERE keep_until >= ?1 ORDER BY tick",
        )?;
        let mut rows = st.query(params![now])?;
        while let Some(r) = rows.next()? {
            let cid = r.get_ref(0)?.as_str().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })?;
            on_execution(cid, tick_from_sql(r.get::<_, i64>(1)?));
            rec.executions += 1;
        }
        drop(rows);
        drop(st);
        let mut st = self.conn.prepare(
            "SELECT s.command_id, s.started_ms, s.keep_until FROM started s
             LEFT JOIN executions e ON e.command_id = s.command_id
             WHERE e.command_id IS NULL AND s.keep_until >= ?1 ORDER BY s.tick",
        )?;
        rec.started = st
            .query_map(params![now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    crate::logic::Marker {
                        started_ms: r.get::<_, i64>(1)?.max(0) as u64,
                        keep_until: tick_from_sql(r.get::<_, i64>(2)?),
                    },
                ))
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

/// The database, shared by the store thread and the outbox's inline commits ([`Inline`]):
/// one connection, one writer at a time.
pub type SharedDb = Arc<Mutex<Db>>;

fn lock(db: &SharedDb) -> MutexGuard<'_, Db> {
    // A handler that panicked mid-transaction rolled it back when its guard dropped.
    db.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store thread. It stamps records with the Ghost clock it shares with the dispatcher.
pub struct Store {
    db: SharedDb,
    clock: GhostClock,
    window_ms: u64,
}

impl Store {
    pub fn new(db: SharedDb, clock: GhostClock, window_ms: u64) -> Store {
        Store {
            db,
            clock,
            window_ms,
        }
    }
}

/// A small event batch committed on the caller's thread (the outbox's event loop) when the
/// store thread is not using the database: the same transaction as [`PersistBatch`],
/// without the two thread crossings to the store thread and back (issue 20).
#[derive(Clone)]
pub struct Inline {
    db: SharedDb,
    clock: GhostClock,
    window_ms: u64,
}

impl Inline {
    pub fn new(db: SharedDb, clock: GhostClock, window_ms: u64) -> Inline {
        Inline {
            db,
            clock,
            window_ms,
        }
    }

    /// `None` while the store thread holds the database (send the batch there instead).
    pub fn try_persist(&self, batch: &[Persist]) -> Option<Result<Vec<u64>, String>> {
        let mut db = match self.db.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let tick = self.clock.now();
        Some(
            db.persist_batch(batch, tick, tick.saturating_add(self.window_ms))
                .map_err(|e| e.to_string()),
        )
    }
}

impl Actor for Store {
    type Context = SyncContext<Self>;
}

#[derive(Message, Clone)]
#[rtype(result = "Result<u64, String>")]
pub struct Persist {
    pub event_id: String,
    pub command_id: Option<String>,
    pub payload: Bytes,
    /// Wall clock, for people reading the outbox; aging uses the Ghost clock.
    pub now_ms: u64,
    /// false: an admin-run command's event, kept as its execution record only (no outbox
    /// row, so never sent on the session); the result's seq is then 0.
    pub session: bool,
}

impl Handler<Persist> for Store {
    type Result = Result<u64, String>;
    fn handle(&mut self, m: Persist, _: &mut SyncContext<Self>) -> Self::Result {
        let tick = self.clock.now();
        let keep_until = tick.saturating_add(self.window_ms);
        let mut db = lock(&self.db);
        match (m.session, m.command_id.as_deref()) {
            (false, Some(cid)) => db
                .record_execution(cid, &m.payload, m.now_ms, tick, keep_until)
                .map(|()| 0),
            _ => db.persist(
                &m.event_id,
                m.command_id.as_deref(),
                &m.payload,
                m.now_ms,
                tick,
                keep_until,
            ),
        }
        .map_err(|e| e.to_string())
    }
}

/// Several [`Persist`]s committed together (the outbox's group commit); the seqs in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, String>")]
pub struct PersistBatch(pub Vec<Persist>);

impl Handler<PersistBatch> for Store {
    type Result = Result<Vec<u64>, String>;
    fn handle(&mut self, m: PersistBatch, _: &mut SyncContext<Self>) -> Self::Result {
        let tick = self.clock.now();
        let keep_until = tick.saturating_add(self.window_ms);
        lock(&self.db)
            .persist_batch(&m.0, tick, keep_until)
            .map_err(|e| e.to_string())
    }
}

/// Acks (`None`) and rejections (`Some(reason)`) of several events, committed together.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct SettleBatch(pub Vec<(String, Option<String>)>);

impl Handler<SettleBatch> for Store {
    type Result = Result<(), String>;
    fn handle(&mut self, m: SettleBatch, _: &mut SyncContext<Self>) -> Self::Result {
        lock(&self.db).settle_batch(&m.0).map_err(|e| e.to_string())
    }
}

/// The stored event (TLV payload) of a finished command, for a duplicate of it (the
/// dedupe window keeps only a hash of its id).
#[derive(Message)]
#[rtype(result = "Result<Option<Bytes>, String>")]
pub struct LoadExecution {
    pub command_id: String,
}

impl Handler<LoadExecution> for Store {
    type Result = Result<Option<Bytes>, String>;
    fn handle(&mut self, m: LoadExecution, _: &mut SyncContext<Self>) -> Self::Result {
        lock(&self.db)
            .execution(&m.command_id)
            .map(|r| r.map(|(event, _)| event))
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
    /// Drop what is kept until before `now` (Ghost clock) and save the clock.
    Prune {
        now: u64,
    },
    /// A command is about to reach its seed; answered once the marker is committed.
    Started {
        command_id: String,
        /// Wall clock, shown in the "effect unknown" reason.
        now_ms: u64,
        /// Ghost clock: when, and until when the marker is kept.
        tick: u64,
        keep_until: u64,
    },
}

impl Handler<Update> for Store {
    type Result = Result<(), String>;
    fn handle(&mut self, m: Update, _: &mut SyncContext<Self>) -> Self::Result {
        let r = match m {
            Update::Acked { event_id } => lock(&self.db).acked(&event_id),
            Update::Failed { event_id, reason } => lock(&self.db).failed(&event_id, &reason),
            Update::Fence { seed, token } => lock(&self.db).save_fence(&seed, token),
            Update::Prune { now } => lock(&self.db).prune_executions(now).map(|_| ()),
            Update::Started {
                command_id,
                now_ms,
                tick,
                keep_until,
            } => lock(&self.db).mark_started(&command_id, now_ms, tick, keep_until),
        };
        r.map_err(|e| e.to_string())
    }
}

actorkit::metered!(Store, Persist);
actorkit::metered!(Store, PersistBatch);
actorkit::metered!(Store, SettleBatch);
actorkit::metered!(Store, Update);
actorkit::metered!(Store, LoadExecution);

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1000;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ghost-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn survives_reopen_and_prunes() {
        let dir = tmp("reopen");
        {
            let mut db = Db::open(&dir, W).unwrap();
            let s1 = db
                .persist("evt.a", Some("a"), b"A", 10, 10, 10 + W)
                .unwrap();
            let s2 = db
                .persist("evt.b", Some("b"), b"B", 20, 20, 20 + W)
                .unwrap();
            assert!(s2 > s1);
            assert_eq!(
                db.persist("evt.a", Some("a"), b"A", 30, 30, 30 + W)
                    .unwrap(),
                s1
            );
            db.persist("evt.session.x", None, b"H", 30, 30, 30 + W)
                .unwrap();
            db.acked("evt.session.x").unwrap();
            db.failed("evt.b", "rejected").unwrap();
            db.save_fence("seed.kv", 7).unwrap();
            db.save_fence("seed.kv", 3).unwrap();
        }
        let mut db = Db::open(&dir, W).unwrap();
        let rec = db.recover(|_, _| {}).unwrap();
        assert_eq!(rec.clock_ms, 20, "resumes past the newest stamp");
        assert_eq!(rec.outbox.len(), 1);
        assert_eq!(rec.outbox[0].1, "evt.a");
        assert_eq!(rec.failed_events, 1);
        assert_eq!(rec.executions, 2);
        assert_eq!(rec.fences, vec![("seed.kv".to_string(), 7)]);
        assert_eq!(db.prune_executions(15 + W).unwrap(), 1);
        assert_eq!(
            db.recover(|_, _| {}).unwrap().clock_ms,
            15 + W,
            "the prune saved the clock"
        );
        assert_eq!(db.recover(|_, _| {}).unwrap().executions, 1);
        assert!(db.execution("b").unwrap().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_run_executions_never_reach_the_outbox() {
        let dir = tmp("admin-run");
        {
            let mut db = Db::open(&dir, W).unwrap();
            db.mark_started("admin:cmd.i.1", 10, 10, 10 + W).unwrap();
            db.record_execution("admin:cmd.i.1", b"E", 11, 11, 11 + W)
                .unwrap();
        }
        let mut db = Db::open(&dir, W).unwrap();
        let rec = db.recover(|_, _| {}).unwrap();
        assert!(rec.outbox.is_empty(), "nothing to send on the session");
        assert_eq!(rec.executions, 1, "still deduplicated after a restart");
        assert!(rec.started.is_empty(), "finished");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn start_markers_survive_a_crash_until_the_command_finishes() {
        let dir = tmp("started");
        {
            let mut db = Db::open(&dir, W).unwrap();
            db.mark_started("done", 10, 10, 5000).unwrap();
            db.persist("evt.done", Some("done"), b"D", 11, 11, 11 + W)
                .unwrap();
            db.mark_started("cut", 20, 20, 9000).unwrap();
            db.mark_started("cut", 25, 25, 9999).unwrap(); // the first start is kept
            db.mark_started("old", 1, 1, 3).unwrap();
            db.mark_started("forever", 2, 2, u64::MAX).unwrap();
        } // dropped without finishing "cut": as after SIGKILL
        let mut db = Db::open(&dir, W).unwrap();
        db.prune_executions(4).unwrap();
        let mut kept = Vec::new();
        let rec = db.recover(|cid, k| kept.push((cid.to_owned(), k))).unwrap();
        let cut = crate::logic::Marker {
            started_ms: 20,
            keep_until: 9000,
        };
        let forever = crate::logic::Marker {
            started_ms: 2,
            keep_until: u64::MAX,
        };
        assert_eq!(
            rec.started,
            vec![("forever".to_string(), forever), ("cut".to_string(), cut)]
        );
        // The finished command's record is kept as long as its marker was (5000).
        assert_eq!(kept, vec![("done".to_string(), 5000)]);
        assert_eq!(rec.executions, 1);
        assert_eq!(
            db.execution("done").unwrap().map(|r| r.0),
            Some(Bytes::from_static(b"D")),
            "the event is read back from the store on a duplicate"
        );
        db.prune_executions(9001).unwrap();
        let rec = db.recover(|_, _| {}).unwrap();
        assert_eq!(rec.started, vec![("forever".to_string(), forever)]);
        assert_eq!(rec.executions, 0);
        assert_eq!(db.execution("done").unwrap(), None, "pruned");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_database_from_before_the_ghost_clock_is_migrated() {
        let dir = tmp("migrate");
        std::fs::create_dir_all(&dir).unwrap();
        {
            let c = Connection::open(dir.join("ghost.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE executions (command_id TEXT PRIMARY KEY, event BLOB NOT NULL, done_ms INTEGER NOT NULL);
                 CREATE TABLE started (command_id TEXT PRIMARY KEY, started_ms INTEGER NOT NULL);
                 INSERT INTO executions VALUES ('a', x'41', 1700000000000);
                 INSERT INTO started VALUES ('b', 1700000000000);",
            )
            .unwrap();
        }
        let mut db = Db::open(&dir, W).unwrap();
        let mut kept = Vec::new();
        let rec = db.recover(|cid, k| kept.push((cid.to_owned(), k))).unwrap();
        assert_eq!(rec.clock_ms, 0);
        assert_eq!(
            kept,
            vec![("a".to_string(), W)],
            "one window from the upgrade"
        );
        assert_eq!(rec.started[0].1.keep_until, u64::MAX);
        assert_eq!(rec.started[0].1.started_ms, 1_700_000_000_000);
        drop(db);
        // Opening again changes nothing.
        let mut db = Db::open(&dir, W).unwrap();
        let mut kept = Vec::new();
        db.recover(|_, k| kept.push(k)).unwrap();
        assert_eq!(kept, vec![W]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_ghost_clock_only_moves_forward_from_where_it_resumed() {
        let c = GhostClock::resume(500);
        let a = c.now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = c.now();
        assert!(a >= 500 && b >= a + 5, "{a} {b}");
    }
}
