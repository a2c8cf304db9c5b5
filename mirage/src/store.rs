//! Mirage's embedded database (SQLite, WAL) under `data_dir`: intents with their plan state,
//! seed locks and reports. The `Store` actor is the only writer and group-commits: writes
//! that arrive while a transaction commits go together in the next one. With
//! `[store] backend = "etcd"` the same actor commits each batch through a `RemoteBackend`
//! (`store_etcd.rs`: fenced etcd txns) instead.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use crate::plan::Plan;
use shared::reserve::Reserve;

/// The disk under `data_dir`, as the store last found it (for `/v1/overview` and
/// `/metrics`). One store per process.
pub struct DiskState {
    /// When a write last failed on a full disk (ms of process time + 1; 0 = never). Kept as
    /// a time, not a flag: on a nearly full disk small writes succeed between big ones that
    /// fail, and the state must not flicker with them.
    last_full_ms: AtomicU64,
    /// The disk reserve was given back (or could not be made) and is not made yet.
    reserve_released: AtomicBool,
}

pub static DISK: DiskState = DiskState {
    last_full_ms: AtomicU64::new(0),
    reserve_released: AtomicBool::new(false),
};

/// "disk full" lasts this long after the last write that failed on a full disk.
const FULL_HOLD: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl DiskState {
    fn mark_full(&self) {
        self.last_full_ms.store(now_ms(), Relaxed);
    }
    /// A write failed on a full disk within the last 10 s.
    pub fn full(&self) -> bool {
        let at = self.last_full_ms.load(Relaxed);
        at != 0 && now_ms().saturating_sub(at) < FULL_HOLD.as_millis() as u64
    }
    pub fn reserve_released(&self) -> bool {
        self.reserve_released.load(Relaxed)
    }
    /// "ok", "disk full" or "disk low: no reserve" (given back, or no room to make it).
    pub fn status(&self) -> &'static str {
        if self.full() {
            "disk full"
        } else if self.reserve_released() {
            "disk low: no reserve"
        } else {
            "ok"
        }
    }
}

/// The reserve file in `data_dir`.
pub const RESERVE_FILE: &str = "mirage.reserve";

/// A write failed because the disk (or the file system's quota) is full.
fn disk_full(e: &StoreError) -> bool {
    match e {
        StoreError::Sql(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::DiskFull
        }
        StoreError::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store: {0}")]
    Json(#[from] serde_json::Error),
    /// The files are not what they should be (wiped, corrupt); the message names them.
    #[error("store: {0}")]
    Refused(String),
}

/// What mirage.db keeps, for the messages that refuse to start without it.
const HOLDS: &str = "intents, their plans, seed locks and reports";

#[derive(Debug, Clone)]
pub enum Write {
    Intent {
        intent_id: String,
        seq: u64,
        status: String,
        plan: String,
        updated_ms: u64,
    },
    Report {
        seq: u64,
        intent_id: String,
        json: String,
    },
    Lock {
        key: String,
        json: String,
    },
    /// An observed event (bounded retention, see `Prune`).
    Event {
        event_id: String,
        ghost_id: String,
        command_id: String,
        intent_id: String,
        outcome: String,
        at_ms: u64,
    },
    /// A refused submission: its row, if a write of it landed after all (only that
    /// submission's: an older one of the same intent_id has another seq).
    Forget {
        intent_id: String,
        seq: u64,
    },
    /// Retention: drop finished intents beyond the newest `keep`, reports beyond `keep`.
    Prune {
        keep_finished: u64,
        keep_reports: u64,
    },
}

pub struct Db {
    conn: Connection,
    path: std::path::PathBuf,
    reserve: Option<Arc<Reserve>>,
    /// The last checkpoint tried after a failed write (at most one a second).
    last_rescue: Option<Instant>,
    /// A write failed on a full disk and none has committed since.
    in_full: bool,
    /// The last "disk full" / "writes commit again" lines (at most one each in `FULL_HOLD`:
    /// on a nearly full disk they would alternate with every commit).
    full_logged: Option<Instant>,
    ok_logged: Option<Instant>,
}

/// What a restart recovers.
#[derive(Debug, Default)]
pub struct Recovered {
    pub active: Vec<(u64, Plan)>,
    pub finished: Vec<(u64, Plan)>,
    pub locks: Vec<crate::lock::LockQueue>,
    pub reports: Vec<String>,
    pub max_intent_seq: u64,
    pub max_report_seq: u64,
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("mirage.db");
        // Before SQLite touches the files: it would start empty on a wiped database and drop
        // a damaged WAL without a word (intents lost, satisfied ones active again).
        let checked = shared::dbguard::check(&path, HOLDS).map_err(StoreError::Refused)?;
        for w in &checked.warnings {
            tracing::error!(component = "mirage.store", file = %path.display(), warning = %w, "database files");
        }
        let conn = Connection::open(&path)?;
        // A second connection (`spawn_checkpointer`) copies the WAL back all the time, so the
        // writer's own automatic checkpoint (every 1,000 pages) finds little left to copy and
        // no longer stalls a commit for ~100 ms. The writer's checkpoint must stay: only a
        // checkpoint that completes between two writes lets the WAL start over; without it
        // the WAL grew without bound under steady load (11 GB in five minutes).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             PRAGMA journal_size_limit=67108864;
             CREATE TABLE IF NOT EXISTS intents (
                 intent_id TEXT PRIMARY KEY,
                 seq INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 plan TEXT NOT NULL,
                 updated_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS intents_status ON intents(status, seq);
             CREATE TABLE IF NOT EXISTS reports (
                 seq INTEGER PRIMARY KEY,
                 intent_id TEXT NOT NULL,
                 json TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS locks (
                 key TEXT PRIMARY KEY,
                 json TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_id TEXT NOT NULL UNIQUE,
                 ghost_id TEXT NOT NULL,
                 command_id TEXT NOT NULL,
                 intent_id TEXT NOT NULL,
                 outcome TEXT NOT NULL,
                 at_ms INTEGER NOT NULL
             );",
        )?;
        shared::dbguard::mark(&path).map_err(|e| {
            StoreError::Refused(format!(
                "cannot write {}: {e}",
                shared::dbguard::marker_path(&path).display()
            ))
        })?;
        if checked.fresh {
            tracing::info!(component = "mirage.store", file = %path.display(), "new database");
        }
        Ok(Db {
            conn,
            path,
            reserve: None,
            last_rescue: None,
            in_full: false,
            full_logged: None,
            ok_logged: None,
        })
    }

    /// Keeps `bytes` of the disk in `data_dir/mirage.reserve` (0 = off), made now if the disk
    /// has twice that free, else later (by the checkpoint thread).
    pub fn with_reserve(mut self, bytes: u64) -> Db {
        if bytes == 0 {
            return self;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let r = Arc::new(Reserve::new(dir.join(RESERVE_FILE), bytes, "mirage.store"));
        match r.ensure() {
            Ok(true) => {}
            Ok(false) => {
                DISK.reserve_released.store(true, Relaxed);
                tracing::warn!(component = "mirage.store", bytes, data_dir = %dir.display(), "not enough free space for the store's disk reserve; made later when there is");
            }
            Err(e) => {
                DISK.reserve_released.store(true, Relaxed);
                tracing::warn!(component = "mirage.store", error = %e, "cannot make the store's disk reserve");
            }
        }
        self.reserve = Some(r);
        self
    }

    /// Commits `batch` in one transaction. On a full disk: gives the reserve back (once),
    /// folds the WAL into mirage.db and truncates it (a WAL that cannot be checkpointed only
    /// grows), and tries once more. The first commit after a full disk truncates the WAL
    /// again, so the file shrinks back from what it grew to while checkpoints failed.
    pub fn apply(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        let res = match self.apply_once(batch) {
            Err(e) if disk_full(&e) => {
                DISK.mark_full();
                self.in_full = true;
                crate::metrics::STORE_DISK_FULL.inc();
                let released = self.reserve.as_ref().is_some_and(|r| r.release());
                let log = self.full_logged.is_none_or(|t| t.elapsed() >= FULL_HOLD);
                if released {
                    DISK.reserve_released.store(true, Relaxed);
                    crate::metrics::STORE_RESERVE_RELEASED.inc();
                    self.full_logged = Some(Instant::now());
                    tracing::error!(component = "mirage.store", error = %e, writes = batch.len(), reserve_bytes = self.reserve.as_ref().map_or(0, |r| r.bytes()), "store: disk full; released the disk reserve, checkpointing the WAL and trying again; free space in data_dir");
                } else if log {
                    self.full_logged = Some(Instant::now());
                    tracing::error!(component = "mirage.store", error = %e, writes = batch.len(), "store: disk full and no disk reserve left to give back; writes fail until there is room in data_dir");
                }
                if released || self.rescue_due() {
                    match self.truncate_wal() {
                        Ok((before, after)) => {
                            tracing::info!(
                                component = "mirage.store",
                                wal_bytes_before = before,
                                wal_bytes_after = after,
                                "WAL checkpointed into mirage.db and truncated on a full disk"
                            )
                        }
                        // Expected while nothing was given back; tried again once a second.
                        Err(ck) if released || log => {
                            tracing::warn!(component = "mirage.store", error = %ck, "WAL not truncated on the full disk (mirage.db cannot grow)")
                        }
                        Err(_) => {}
                    }
                }
                if released {
                    self.apply_once(batch)
                } else {
                    Err(e)
                }
            }
            r => r,
        };
        if res.is_ok() && self.in_full {
            self.in_full = false;
            // The WAL grew while checkpoints failed; give that space back too.
            let truncated = if self.rescue_due() {
                self.truncate_wal()
            } else {
                Err("tried less than 1 s ago".into())
            };
            if self.ok_logged.is_none_or(|t| t.elapsed() >= FULL_HOLD) {
                self.ok_logged = Some(Instant::now());
                match truncated {
                    Ok((before, after)) => {
                        tracing::info!(component = "mirage.store", wal_bytes_before = before, wal_bytes_after = after, "store: writes commit again after a full disk; WAL checkpointed and truncated")
                    }
                    Err(e) => {
                        tracing::info!(component = "mirage.store", wal_truncate = %e, "store: writes commit again after a full disk")
                    }
                }
            }
        }
        res
    }

    /// A TRUNCATE checkpoint after a full disk, at most one a second (it costs a full copy of
    /// the WAL when it works, and fails at once when it cannot).
    fn rescue_due(&mut self) -> bool {
        let due = self
            .last_rescue
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            self.last_rescue = Some(Instant::now());
        }
        due
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)`: the WAL's bytes before and after, or why it
    /// did not complete. The callers log (a failing one only at the start of a full disk).
    fn truncate_wal(&mut self) -> Result<(u64, u64), String> {
        let wal = self.path.with_extension("db-wal");
        let len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let before = len();
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| e.to_string())?;
        if busy != 0 {
            return Err("a reader was busy".into());
        }
        Ok((before, len()))
    }

    fn apply_once(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for w in batch {
            match w {
                Write::Intent {
                    intent_id,
                    seq,
                    status,
                    plan,
                    updated_ms,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO intents(intent_id, seq, status, plan, updated_ms) VALUES (?1,?2,?3,?4,?5)
                         ON CONFLICT(intent_id) DO UPDATE SET seq=excluded.seq, status=excluded.status,
                         plan=excluded.plan, updated_ms=excluded.updated_ms",
                    )?
                    .execute(params![intent_id, *seq as i64, status, plan, *updated_ms as i64])?;
                }
                Write::Report {
                    seq,
                    intent_id,
                    json,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO reports(seq, intent_id, json) VALUES (?1,?2,?3)",
                    )?
                    .execute(params![*seq as i64, intent_id, json])?;
                }
                Write::Lock { key, json } => {
                    tx.prepare_cached("INSERT OR REPLACE INTO locks(key, json) VALUES (?1,?2)")?
                        .execute(params![key, json])?;
                }
                Write::Event {
                    event_id,
                    ghost_id,
                    command_id,
                    intent_id,
                    outcome,
                    at_ms,
                } => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO events(event_id, ghost_id, command_id, intent_id, outcome, at_ms)
                         VALUES (?1,?2,?3,?4,?5,?6)",
                    )?
                    .execute(params![event_id, ghost_id, command_id, intent_id, outcome, *at_ms as i64])?;
                }
                Write::Forget { intent_id, seq } => {
                    tx.prepare_cached("DELETE FROM intents WHERE intent_id=?1 AND seq=?2")?
                        .execute(params![intent_id, *seq as i64])?;
                }
                Write::Prune {
                    keep_finished,
                    keep_reports,
                } => {
                    tx.execute(
                        "DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?1",
                        params![*keep_reports as i64],
                    )?;
                    tx.execute(
                        "DELETE FROM intents WHERE status IN ('failed','withdrawn','satisfied')
                         AND seq <= (SELECT max(seq) FROM intents) - ?1",
                        params![*keep_finished as i64],
                    )?;
                    tx.execute(
                        "DELETE FROM reports WHERE seq <= (SELECT max(seq) FROM reports) - ?1",
                        params![*keep_reports as i64],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Everything a restart needs. A row that cannot be read is corruption: the error names
    /// the file and the table and says what to do, rather than only the decoder's words.
    pub fn recover(&mut self, recent_reports: usize) -> Result<Recovered, StoreError> {
        let path = self.path.clone();
        self.recover_rows(recent_reports).map_err(|(table, e)| {
            StoreError::Refused(format!(
                "{}: table {table} cannot be read ({e}): the database is corrupt. Restore it from \
                 a backup; or, to start with an empty database on purpose, move it and {} aside",
                path.display(),
                shared::dbguard::marker_path(&path).display()
            ))
        })
    }

    fn recover_rows(
        &mut self,
        recent_reports: usize,
    ) -> Result<Recovered, (&'static str, StoreError)> {
        let mut r = Recovered::default();
        let t = |table: &'static str| move |e: StoreError| (table, e);
        self.read_intents(&mut r).map_err(t("intents"))?;
        self.read_locks(&mut r).map_err(t("locks"))?;
        self.read_reports(&mut r, recent_reports)
            .map_err(t("reports"))?;
        Ok(r)
    }

    fn read_intents(&mut self, r: &mut Recovered) -> Result<(), StoreError> {
        {
            let mut st = self
                .conn
                .prepare("SELECT seq, status, plan FROM intents ORDER BY seq")?;
            let rows = st.query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (seq, status, plan) = row?;
                r.max_intent_seq = r.max_intent_seq.max(seq);
                let plan: Plan = serde_json::from_str(&plan)
                    .map_err(|e| StoreError::Refused(format!("row seq {seq}: plan: {e}")))?;
                // "standing": a satisfied intent that is kept and re-checked.
                match status.as_str() {
                    "active" | "standing" => r.active.push((seq, plan)),
                    _ => r.finished.push((seq, plan)),
                }
            }
        }
        Ok(())
    }

    fn read_locks(&mut self, r: &mut Recovered) -> Result<(), StoreError> {
        let mut st = self.conn.prepare("SELECT json FROM locks")?;
        let rows = st.query_map([], |row| row.get::<_, String>(0))?;
        for row in rows {
            r.locks.push(serde_json::from_str(&row?)?);
        }
        Ok(())
    }

    fn read_reports(&mut self, r: &mut Recovered, recent_reports: usize) -> Result<(), StoreError> {
        {
            let mut st = self
                .conn
                .prepare("SELECT seq, json FROM reports ORDER BY seq DESC LIMIT ?1")?;
            let rows = st.query_map(params![recent_reports as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (seq, json) = row?;
                r.max_report_seq = r.max_report_seq.max(seq);
                r.reports.push(json);
            }
            r.reports.reverse();
        }
        Ok(())
    }
}

/// A store that commits over the network (etcd): one batch per call, awaited on the
/// store's own thread (the orchestrator Arbiter), one call at a time. `store_etcd.rs`.
pub trait RemoteBackend {
    fn apply(
        self: Arc<Self>,
        batch: Vec<Write>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>;
}

/// Where the `Store` commits: the embedded SQLite database (default) or a remote store.
enum Backend {
    Sqlite(Arc<Mutex<Db>>),
    Remote(Arc<dyn RemoteBackend>),
}

/// The single writer. Writes queue while a commit runs on the blocking pool; each commit
/// takes everything queued (group commit) and then answers every waiter.
pub struct Store {
    backend: Backend,
    queue: Vec<Write>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    committing: bool,
    /// A delayed commit is scheduled for writes nobody waits for.
    lingering: bool,
    /// A commit is scheduled for the end of this poll: the Puts already in the mailbox go
    /// in the same transaction.
    kick_scheduled: bool,
    pub commits: u64,
    pub writes: u64,
    /// Batches of at most this many writes (bounds one transaction's size).
    pub max_batch: usize,
    /// Commits failed in a row, and when the last one was logged (at most one line in
    /// `FAIL_LOG_EVERY`: plans retry their writes, so a full disk fails many commits).
    failed: u64,
    failed_logged: Option<Instant>,
    ok_logged: bool,
}

const FAIL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Store {
    pub fn new(db: Db) -> Store {
        Store::with_backend(Backend::Sqlite(Arc::new(Mutex::new(db))))
    }

    /// A store committing to `remote` (etcd): the same group commit, every batch one call.
    pub fn remote(remote: Arc<dyn RemoteBackend>) -> Store {
        Store::with_backend(Backend::Remote(remote))
    }

    fn with_backend(backend: Backend) -> Store {
        Store {
            backend,
            queue: Vec::new(),
            waiters: Vec::new(),
            committing: false,
            lingering: false,
            kick_scheduled: false,
            commits: 0,
            writes: 0,
            max_batch: 10_000,
            failed: 0,
            failed_logged: None,
            ok_logged: false,
        }
    }

    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.queue.is_empty() {
            return;
        }
        // Writes nobody waits for (reports, the event audit) ride along with the next commit
        // somebody waits for, or go after LINGER: a commit costs ~100 µs whatever its size,
        // and at moderate load most of them carried a single report.
        if self.waiters.is_empty() && self.queue.len() < self.max_batch {
            if !self.lingering {
                self.lingering = true;
                ctx.run_later(LINGER, |act, ctx| {
                    act.lingering = false;
                    act.commit(ctx);
                });
            }
            return;
        }
        self.commit(ctx);
    }

    fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.queue.is_empty() {
            return;
        }
        let db = match &self.backend {
            Backend::Sqlite(db) => db.clone(),
            Backend::Remote(r) => {
                let r = r.clone();
                self.commit_remote(r, ctx);
                return;
            }
        };
        if self.queue.len() <= INLINE_MAX && !DISK.full() {
            self.commit_inline(db, ctx);
            return;
        }
        self.committing = true;
        let (batch, waiters) = self.take_batch();
        let started = std::time::Instant::now();
        let fut = async move {
            let n = batch.len();
            let res = tokio::task::spawn_blocking(move || {
                let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
                db.apply(&batch).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("store task: {e}"))
            .and_then(|r| r);
            (res, n)
        };
        ctx.spawn(fut.into_actor(self).map(move |(res, n), act, ctx| {
            act.committing = false;
            act.done(res, n, started, waiters, ctx);
        }));
    }

    /// The next batch (up to `max_batch`) and the waiters it covers: those registered so far
    /// are covered once this batch and everything before it is committed; later waiters wait
    /// for a later batch.
    fn take_batch(&mut self) -> (Vec<Write>, Vec<oneshot::Sender<Result<(), String>>>) {
        let n = self.queue.len().min(self.max_batch);
        let batch: Vec<Write> = self.queue.drain(..n).collect();
        let waiters = if self.queue.is_empty() {
            std::mem::take(&mut self.waiters)
        } else {
            Vec::new()
        };
        (batch, waiters)
    }

    /// Everything queued (up to `max_batch`) as one remote commit, awaited here: a network
    /// round trip, no blocking pool. Writes that arrive meanwhile go in the next one.
    fn commit_remote(&mut self, remote: Arc<dyn RemoteBackend>, ctx: &mut Context<Self>) {
        self.committing = true;
        let (batch, waiters) = self.take_batch();
        let n = batch.len();
        let started = Instant::now();
        ctx.spawn(
            remote
                .apply(batch)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.committing = false;
                    act.done(res, n, started, waiters, ctx);
                }),
        );
    }

    /// A small commit on this thread: the two thread crossings of the blocking pool cost
    /// more than the commit itself (WAL, `synchronous=NORMAL`: no fsync), and one intent
    /// waits for two commits (issue 20 trace). Big batches still go to the blocking pool.
    fn commit_inline(&mut self, db: Arc<Mutex<Db>>, ctx: &mut Context<Self>) {
        let batch: Vec<Write> = std::mem::take(&mut self.queue);
        let waiters = std::mem::take(&mut self.waiters);
        let started = Instant::now();
        let res = {
            let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
            db.apply(&batch).map_err(|e| e.to_string())
        };
        self.done(res, batch.len(), started, waiters, ctx);
    }

    /// After a commit: counters, the failure log, the waiters, and the next commit.
    fn done(
        &mut self,
        res: Result<(), String>,
        n: usize,
        started: Instant,
        waiters: Vec<oneshot::Sender<Result<(), String>>>,
        ctx: &mut Context<Self>,
    ) {
        {
            let act = &mut *self;
            act.commits += 1;
            act.writes += n as u64;
            crate::metrics::STORE_COMMIT_US.observe(started.elapsed());
            match &res {
                Err(e) => {
                    act.failed += 1;
                    if act
                        .failed_logged
                        .is_none_or(|t| t.elapsed() >= FAIL_LOG_EVERY)
                    {
                        act.failed_logged = Some(Instant::now());
                        act.ok_logged = false;
                        tracing::error!(component = "mirage.store", error = %e, writes = n, failed_in_a_row = act.failed, "commit failed");
                    }
                }
                Ok(()) if act.failed > 0 => {
                    // Once per logged failure, not per flip of a nearly full disk.
                    if !act.ok_logged {
                        tracing::info!(
                            component = "mirage.store",
                            failed = act.failed,
                            "commits succeed again"
                        );
                        act.ok_logged = true;
                    }
                    act.failed = 0;
                }
                Ok(()) => {}
            }
            for w in waiters {
                let _ = w.send(res.clone());
            }
        }
        self.kick(ctx);
    }
}

/// Batches of at most this many writes commit on the store's own thread.
const INLINE_MAX: usize = 4;

impl Actor for Store {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.store").instance_started();
        if let Backend::Sqlite(db) = &self.backend {
            let found = db.lock().map(|d| (d.path.clone(), d.reserve.clone()));
            if let Ok((path, reserve)) = found {
                spawn_checkpointer(path, reserve, Arc::downgrade(db));
            }
        }
    }
}

/// Copies the WAL back into the database every 200 ms from a second connection. PASSIVE
/// checkpoints never block the writer, and they leave the writer's own checkpoint only the
/// last few pages. A failing checkpoint (a full disk: mirage.db cannot grow) backs off to
/// 5 s and logs once a minute. It also makes the disk reserve again once it is given back
/// and the disk has room. Ends when the store is gone.
fn spawn_checkpointer(
    path: std::path::PathBuf,
    reserve: Option<Arc<Reserve>>,
    alive: std::sync::Weak<Mutex<Db>>,
) {
    const EVERY: Duration = Duration::from_millis(200);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    const LOG_EVERY: Duration = Duration::from_secs(60);
    const RESERVE_EVERY: Duration = Duration::from_secs(5);
    let spawned = std::thread::Builder::new()
        .name("mirage-checkpoint".into())
        .spawn(move || {
            let conn = match Connection::open(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(component = "mirage.store", error = %e, "checkpoint connection failed; the WAL will grow");
                    return;
                }
            };
            let _ = conn.busy_timeout(Duration::from_millis(100));
            let mut pause = EVERY;
            let mut failed = 0u64;
            let mut logged: Option<Instant> = None;
            let mut reserve_checked = Instant::now();
            while alive.strong_count() > 0 {
                std::thread::sleep(pause);
                let started = Instant::now();
                let res = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                match res {
                    Ok((log, done)) => {
                        crate::metrics::STORE_CHECKPOINT_US.observe(started.elapsed());
                        tracing::trace!(component = "mirage.store", wal_frames = log, checkpointed = done, "checkpoint");
                        if failed > 0 {
                            tracing::info!(component = "mirage.store", failed, "checkpoints succeed again");
                        }
                        failed = 0;
                        logged = None;
                        pause = EVERY;
                    }
                    Err(e) => {
                        failed += 1;
                        crate::metrics::STORE_CHECKPOINT_FAILED.inc();
                        if logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                            logged = Some(Instant::now());
                            tracing::warn!(component = "mirage.store", error = %e, failed_in_a_row = failed, "checkpoint failed; the WAL grows until it works again");
                        }
                        pause = (pause * 2).min(MAX_BACKOFF);
                    }
                }
                if let Some(r) = &reserve {
                    if !r.held() && !DISK.full() && reserve_checked.elapsed() >= RESERVE_EVERY {
                        reserve_checked = Instant::now();
                        match r.ensure() {
                            Ok(true) => {
                                DISK.reserve_released.store(false, Relaxed);
                                tracing::info!(component = "mirage.store", bytes = r.bytes(), file = %r.path().display(), "store disk reserve in place");
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(component = "mirage.store", error = %e, "cannot make the store's disk reserve")
                            }
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(component = "mirage.store", error = %e, "cannot start the checkpoint thread; the WAL will grow");
    }
}

/// How long a write nobody waits for may wait for company.
const LINGER: Duration = Duration::from_millis(5);

/// Queue writes; the reply resolves when they are committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Put {
    pub writes: Vec<Write>,
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

impl Handler<Put> for Store {
    type Result = ();

    fn handle(&mut self, m: Put, ctx: &mut Context<Self>) {
        self.queue.extend(m.writes);
        if let Some(d) = m.done {
            self.waiters.push(d);
        }
        if !self.kick_scheduled {
            // A ready future runs in this same poll, after the mailbox is drained (no timer:
            // a zero-delay timer waits for the next millisecond tick).
            self.kick_scheduled = true;
            ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Self, ctx| {
                act.kick_scheduled = false;
                act.kick(ctx);
            }));
        }
    }
}

actorkit::metered!(Store, Put);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::parse;

    #[test]
    fn round_trip_and_retention() {
        let dir = std::env::temp_dir().join(format!("mirage-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut db = Db::open(&dir).unwrap();
        let p = Plan::new(
            parse(
                "intent_id=\"a\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\n",
                || "x".into(),
            )
            .unwrap(),
            1,
        );
        let plan = serde_json::to_string(&p).unwrap();
        let mut batch = vec![];
        for i in 1..=5u64 {
            batch.push(Write::Intent {
                intent_id: format!("i{i}"),
                seq: i,
                status: if i == 5 {
                    "active".into()
                } else {
                    "satisfied".into()
                },
                plan: plan.clone(),
                updated_ms: i,
            });
            batch.push(Write::Report {
                seq: i,
                intent_id: format!("i{i}"),
                json: format!("{{\"seq\":{i}}}"),
            });
        }
        db.apply(&batch).unwrap();
        let r = db.recover(3).unwrap();
        assert_eq!(r.active.len(), 1);
        assert_eq!(r.finished.len(), 4);
        assert_eq!(r.reports.len(), 3);
        assert_eq!(r.max_report_seq, 5);
        db.apply(&[Write::Prune {
            keep_finished: 2,
            keep_reports: 2,
        }])
        .unwrap();
        let r = db.recover(10).unwrap();
        assert_eq!(r.active.len(), 1, "active intents are never pruned");
        assert!(r.finished.len() <= 2, "{}", r.finished.len());
        assert_eq!(r.reports.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn plan_json() -> String {
        let p = Plan::new(
            parse(
                "intent_id=\"a\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\n",
                || "x".into(),
            )
            .unwrap(),
            1,
        );
        serde_json::to_string(&p).unwrap()
    }

    /// Copies the data dir's files as a SIGKILL leaves them (database, WAL, index, marker).
    fn snapshot(from: &Path, to: &Path) {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to).unwrap();
        for f in [
            "mirage.db",
            "mirage.db-wal",
            "mirage.db-shm",
            "mirage.db.created",
        ] {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }

    #[test]
    fn a_damaged_wal_is_refused_a_healthy_one_is_not() {
        let base = std::env::temp_dir().join(format!("mirage-store-wal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let live = base.join("live");
        let mut db = Db::open(&live).unwrap();
        // Everything stays in the WAL, as between two checkpoints.
        db.conn
            .execute_batch("PRAGMA wal_autocheckpoint=0")
            .unwrap();
        let plan = plan_json();
        for i in 1..=300u64 {
            db.apply(&[Write::Intent {
                intent_id: format!("i{i}"),
                seq: i,
                status: "satisfied".into(),
                plan: plan.clone(),
                updated_ms: i,
            }])
            .unwrap();
        }
        let wal_len = std::fs::metadata(live.join("mirage.db-wal")).unwrap().len();
        assert!(wal_len > 64 * 1024, "{wal_len}");

        // Healthy: no refusal, no warning, every intent back.
        let copy = base.join("copy");
        snapshot(&live, &copy);
        let c = shared::dbguard::check(&copy.join("mirage.db"), HOLDS).unwrap();
        assert!(c.warnings.is_empty() && !c.fresh, "{c:?}");
        assert_eq!(
            Db::open(&copy).unwrap().recover(10).unwrap().finished.len(),
            300
        );

        let refused = |what: &str, damage: &dyn Fn(&Path)| {
            snapshot(&live, &copy);
            damage(&copy.join("mirage.db-wal"));
            match Db::open(&copy) {
                Err(StoreError::Refused(e)) => {
                    assert!(e.contains("mirage.db-wal is corrupt"), "{what}: {e}");
                    assert!(e.contains("Restore"), "{what}: {e}");
                }
                Err(e) => panic!("{what}: {e}"),
                Ok(mut db) => panic!(
                    "{what}: opened with {} intents",
                    db.recover(10).unwrap().finished.len()
                ),
            }
        };
        let garbage_at = |off: u64| {
            move |p: &Path| {
                use std::io::{Seek, SeekFrom, Write as _};
                let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.seek(SeekFrom::Start(off)).unwrap();
                f.write_all(&[0xA5; 8192]).unwrap();
            }
        };
        refused("8 KiB over the header", &garbage_at(0));
        refused("8 KiB in the middle", &garbage_at(wal_len / 2));
        refused("8 KiB over the end", &garbage_at(wal_len - 8192));
        refused("truncated to half", &|p: &Path| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(wal_len / 2).unwrap();
        });
        // Garbage after the last frame loses nothing: it starts.
        snapshot(&live, &copy);
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(copy.join("mirage.db-wal"))
                .unwrap();
            f.write_all(&[0xA5; 8192]).unwrap();
        }
        assert_eq!(
            Db::open(&copy).unwrap().recover(10).unwrap().finished.len(),
            300
        );
        // A missing WAL starts (the loss is logged) with what was checkpointed.
        snapshot(&live, &copy);
        std::fs::remove_file(copy.join("mirage.db-wal")).unwrap();
        let c = shared::dbguard::check(&copy.join("mirage.db"), HOLDS).unwrap();
        assert_eq!(c.warnings.len(), 1, "{c:?}");
        assert!(c.warnings[0].contains("those commits are lost"), "{c:?}");
        drop(db);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_wiped_database_is_refused_and_a_new_one_starts() {
        let dir = std::env::temp_dir().join(format!("mirage-store-wiped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        drop(Db::open(&dir).unwrap());
        assert!(dir.join("mirage.db.created").exists());
        std::fs::write(dir.join("mirage.db"), b"").unwrap();
        let _ = std::fs::remove_file(dir.join("mirage.db-wal"));
        match Db::open(&dir) {
            Err(StoreError::Refused(e)) => {
                assert!(e.contains("mirage.db is empty (0 bytes)"), "{e}");
                assert!(e.contains("remove"), "{e}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a wiped database opened"),
        }
        std::fs::remove_file(dir.join("mirage.db.created")).unwrap();
        assert!(
            Db::open(&dir).is_ok(),
            "without the marker: a deliberate fresh start"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupted_row_names_the_file_and_says_it_is_corruption() {
        let dir = std::env::temp_dir().join(format!("mirage-store-row-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut db = Db::open(&dir).unwrap();
        db.conn
            .execute(
                "INSERT INTO intents VALUES ('bad', 1, 'active', CAST(x'7bff' AS TEXT), 1)",
                [],
            )
            .unwrap();
        let e = db.recover(10).unwrap_err().to_string();
        assert!(
            e.contains(&dir.join("mirage.db").display().to_string()),
            "{e}"
        );
        assert!(e.contains("table intents"), "{e}");
        assert!(e.contains("the database is corrupt"), "{e}");
        assert!(e.contains("Restore it from a backup"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rolled_back_spill_left_in_the_wal_is_not_corruption() {
        let base = std::env::temp_dir().join(format!("mirage-store-spill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let live = base.join("live");
        let mut db = Db::open(&live).unwrap();
        // A tiny page cache makes a big transaction spill frames into the WAL before it ends.
        db.conn
            .execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=5;")
            .unwrap();
        let plan = plan_json();
        let tx = db.conn.transaction().unwrap();
        for i in 0..2000 {
            tx.execute(
                "INSERT INTO intents VALUES (?1, ?2, 'active', ?3, 0)",
                params![format!("spill{i}"), i, plan],
            )
            .unwrap();
        }
        drop(tx); // rolled back
        let spilled = std::fs::metadata(live.join("mirage.db-wal")).unwrap().len();
        db.apply(&[Write::Intent {
            intent_id: "kept".into(),
            seq: 1,
            status: "satisfied".into(),
            plan: plan.clone(),
            updated_ms: 1,
        }])
        .unwrap();
        assert!(spilled > 100 * 1024, "the transaction spilled: {spilled}");
        let copy = base.join("copy");
        snapshot(&live, &copy);
        let c = shared::dbguard::check(&copy.join("mirage.db"), HOLDS).unwrap();
        assert!(c.warnings.is_empty(), "{c:?}");
        let r = Db::open(&copy).unwrap().recover(10).unwrap();
        assert_eq!(r.finished.len(), 1);
        assert!(r.active.is_empty());
        drop(db);
        let _ = std::fs::remove_dir_all(&base);
    }
}
