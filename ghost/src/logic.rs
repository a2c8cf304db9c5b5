//! Pure state machines of the Ghost: lifecycle, command boundary checks, the command_id
//! dedupe window, lock fences and the outbox. No I/O and no clocks: callers pass `now_ms`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, RandomState};

use bytes::Bytes;
use shared::envelope::Command;
use shared::error::code;

use crate::seeds::OperationSpec;

// ---------------------------------------------------------------- lifecycle

/// `boot → appeared → seeded → radiating`; only a radiating Ghost takes commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Boot,
    Appeared,
    Seeded,
    Radiating,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Boot => "boot",
            Phase::Appeared => "appeared",
            Phase::Seeded => "seeded",
            Phase::Radiating => "radiating",
        }
    }

    fn advance(self, from: Phase, to: Phase) -> Result<Phase, String> {
        if self == from {
            Ok(to)
        } else {
            Err(format!(
                "ghost: invalid lifecycle transition: have={} want={}",
                self.as_str(),
                from.as_str()
            ))
        }
    }

    pub fn appear(self) -> Result<Phase, String> {
        self.advance(Phase::Boot, Phase::Appeared)
    }
    pub fn seed(self) -> Result<Phase, String> {
        self.advance(Phase::Appeared, Phase::Seeded)
    }
    pub fn radiate(self) -> Result<Phase, String> {
        self.advance(Phase::Seeded, Phase::Radiating)
    }
}

// ---------------------------------------------------------------- boundary

/// Why a command was refused; it still gets a terminal `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: u32,
    pub reason: String,
}

fn reject(code: u32, reason: String) -> Result<(), Rejection> {
    Err(Rejection { code, reason })
}

/// What the boundary needs to know about each hosted seed.
pub type Catalog = BTreeMap<String, &'static [OperationSpec]>;

/// Highest lock token seen per seed: a command carrying an older one comes from a stale
/// lock holder and must not act.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fences(pub HashMap<String, u64>);

impl Fences {
    pub fn check(&self, seed: &str, token: u64) -> Result<(), u64> {
        match self.0.get(seed) {
            Some(&max) if token < max => Err(max),
            _ => Ok(()),
        }
    }

    /// Records an accepted token; true if it raised the fence (worth persisting).
    pub fn observe(&mut self, seed: &str, token: u64) -> bool {
        let e = self.0.entry(seed.to_owned()).or_insert(0);
        if token > *e {
            *e = token;
            true
        } else {
            false
        }
    }
}

/// How long the command has left, as this Ghost sees it at `now_ms` (its wall clock);
/// negative once passed. The relative budget Mirage attaches (ext 207) is preferred: it does
/// not depend on the two clocks agreeing. Without one (an edgectl Mirage, the admin
/// boundary), the absolute `deadline_ms` is compared with this Ghost's clock, edgectl's
/// meaning, which is off by the clock skew.
pub fn remaining_ms(cmd: &Command, now_ms: u64) -> Option<i64> {
    if let Some(b) = cmd.budget_ms() {
        return Some(b.min(i64::MAX as u64) as i64);
    }
    cmd.deadline_ms
        .map(|d| (d as i128 - now_ms as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// The command boundary, in the documented order:
/// 1. the Ghost is radiating;
/// 2. the command is addressed to this Ghost;
/// 3. its deadline has not passed;
/// 4. the seed is hosted here;
/// 5. the operation is declared by the seed;
/// 6. the arguments are declared (required present, no unknown names);
/// 7. its lock token is not stale.
pub fn check_command(
    cmd: &Command,
    phase: Phase,
    local_ghost: &str,
    catalog: &Catalog,
    fences: &Fences,
    now_ms: u64,
) -> Result<(), Rejection> {
    if phase != Phase::Radiating {
        return reject(
            code::RUNTIME,
            format!("ghost is {}, not radiating", phase.as_str()),
        );
    }
    if cmd.ghost_id.trim() != local_ghost {
        return reject(
            code::SEMANTIC,
            format!(
                "command for ghost {:?} delivered to {local_ghost:?}",
                cmd.ghost_id
            ),
        );
    }
    if let Some(left) = remaining_ms(cmd, now_ms) {
        if left < 0 {
            return reject(
                code::RUNTIME,
                format!(
                    "deadline passed {} ms ago; not started{}",
                    left.unsigned_abs(),
                    if cmd.budget_ms().is_none() {
                        " (absolute deadline against this Ghost's clock: check its clock if Mirage's differs)"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    let seed = cmd.seed_selector.trim();
    let Some(ops) = catalog.get(seed) else {
        return reject(
            code::SEMANTIC,
            format!(
                "unknown seed {seed:?} (hosted: {})",
                catalog.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    };
    let Some(op) = ops.iter().find(|o| o.name == cmd.operation) else {
        return reject(
            code::SEMANTIC,
            format!(
                "unknown operation {:?} for {seed} (declared: {})",
                cmd.operation,
                ops.iter().map(|o| o.name).collect::<Vec<_>>().join(", ")
            ),
        );
    };
    if let Err(e) = op.check_args(&cmd.args) {
        return reject(code::SEMANTIC, e);
    }
    if let Some(token) = cmd.lock_token {
        if let Err(max) = fences.check(seed, token) {
            return reject(
                code::SEMANTIC,
                format!("stale lock_token {token} for {seed}: a holder with token {max} has acted"),
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- dedupe window

// Every age below is measured on the Ghost clock (`store::GhostClock`): milliseconds of Ghost
// run time, carried across restarts from the highest value persisted. A wall-clock jump
// cannot move it, and time the Ghost was down does not count: records can only be kept
// longer than their window, never shorter, and a command that is kept too long costs memory
// (bounded by `max_entries`), one that is forgotten too soon may run twice.

/// Until when (Ghost clock) a record of a command received at `now` must be kept: the window,
/// plus the time Mirage may still re-send the same command_id (`remaining_ms`, the command's
/// budget at receipt). Without a deadline nobody can say when re-sending stops: `u64::MAX`
/// (kept until the command ends, or evicted by `max_entries`).
pub fn keep_until(now: u64, window_ms: u64, remaining_ms: Option<i64>) -> u64 {
    match remaining_ms {
        Some(r) => now
            .saturating_add(window_ms)
            .saturating_add(r.max(0) as u64),
        None => u64::MAX,
    }
}

/// Where the Ghost clock resumes after a restart: past every value it has persisted (the
/// clock itself is saved every prune tick; stamps written since then are newer).
pub fn resume_clock(persisted: impl IntoIterator<Item = u64>) -> u64 {
    persisted.into_iter().max().unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: claimed, now in flight.
    New,
    /// Executing right now: its event will follow; do nothing.
    InFlight,
    /// Done inside the window, its event in the store: read it (by command_id) and send it
    /// again. The window keeps a 64-bit hash of the id, not the id, so if the store has no
    /// record the match was another id's hash (or a record just past its time): not a
    /// duplicate, [`DedupeWindow::claim`] it.
    Stored,
    /// Done inside the window with an event that was never persisted (the store failed):
    /// send this one (TLV payload) again.
    Done(Bytes),
    /// Claimed again, but a start was recorded at `started_ms` (wall clock, for the message)
    /// and no end: the Ghost stopped while the seed had it, so its effect is unknown
    /// ([`after_interruption`] decides).
    Interrupted { started_ms: u64 },
}

/// A persisted start marker: wall time of the start (shown to people) and until when it is
/// kept on the Ghost clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub started_ms: u64,
    pub keep_until: u64,
}

/// Keys of [`DedupeWindow::done`] are already SipHash outputs: hashing them again is waste.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; any other input still gets a (weak) mix.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeySet = HashSet<u64, BuildHasherDefault<KeyHasher>>;

/// Slots of the expiry index per window: a record is dropped at the end of its slot, so it
/// is kept at most window/1024 longer than its time (never shorter).
const SLOTS_PER_WINDOW: u64 = 1024;

/// The command_ids done inside the window, kept at least `window_ms` of Ghost clock (longer
/// when Mirage may re-send the command later), at most `max_entries`; and the claims of
/// commands executing now, and the start markers of those that never finished.
///
/// A done command costs ~17 bytes here, not its event: a 64-bit keyed hash of its id in a
/// set and in the expiry slot of its `keep_until`. The event itself is in the store
/// (`executions`), read back on the rare duplicate ([`Seen::Stored`]). The hash can only
/// make a new command look done, never the reverse, and the store read settles that.
#[derive(Debug)]
pub struct DedupeWindow {
    window_ms: u64,
    max_entries: usize,
    slot_ms: u64,
    ids: RandomState,
    /// Commands claimed and not finished (full ids: a false match here would drop a command).
    in_flight: HashSet<String>,
    /// Hashes of done command ids (each once; see `extra`).
    done: KeySet,
    /// Further records of a hash already in `done` (two ids with one hash, or one id done
    /// again after a false match): almost always empty.
    extra: HashMap<u64, u32>,
    /// Records per expiry slot (`keep_until / slot_ms`), for expiry and early eviction.
    expiry: BTreeMap<u64, VecDeque<u64>>,
    records: usize,
    /// Done commands whose event could not be persisted: the event is only here.
    unpersisted: HashMap<String, (Bytes, u64)>,
    /// Records dropped before their time because of `max_entries` (should stay 0).
    pub evicted_early: u64,
    /// command_id → marker of executions recorded as started and not (yet) finished.
    started: HashMap<String, Marker>,
}

impl DedupeWindow {
    pub fn new(window_ms: u64, max_entries: usize) -> DedupeWindow {
        DedupeWindow {
            window_ms,
            max_entries: max_entries.max(1),
            slot_ms: (window_ms / SLOTS_PER_WINDOW).max(1),
            ids: RandomState::new(),
            in_flight: HashSet::new(),
            done: KeySet::default(),
            extra: HashMap::new(),
            expiry: BTreeMap::new(),
            records: 0,
            unpersisted: HashMap::new(),
            evicted_early: 0,
            started: HashMap::new(),
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn key(&self, command_id: &str) -> u64 {
        self.ids.hash_one(command_id)
    }

    pub fn check_and_claim(&mut self, command_id: &str) -> Seen {
        if self.in_flight.contains(command_id) {
            return Seen::InFlight;
        }
        if let Some((event, _)) = self.unpersisted.get(command_id) {
            return Seen::Done(event.clone());
        }
        if self.done.contains(&self.key(command_id)) {
            return Seen::Stored;
        }
        self.claim(command_id)
    }

    /// Claims a command without looking at the done records: after [`Seen::Stored`] found
    /// no record in the store. `InFlight` if another copy claimed it meanwhile.
    pub fn claim(&mut self, command_id: &str) -> Seen {
        if !self.in_flight.insert(command_id.to_owned()) {
            return Seen::InFlight;
        }
        match self.started.get(command_id) {
            Some(m) => Seen::Interrupted {
                started_ms: m.started_ms,
            },
            None => Seen::New,
        }
    }

    /// The start of a claimed command's execution was recorded (persisted). Until the
    /// command completes, claiming it again after a release or a restart says `Interrupted`.
    pub fn started(&mut self, command_id: &str, marker: Marker) {
        self.restore_started(command_id.to_owned(), marker);
    }

    /// Restores a persisted start marker that has no execution record (the Ghost stopped
    /// while the command ran).
    pub fn restore_started(&mut self, command_id: String, marker: Marker) {
        self.started.insert(command_id, marker);
        if self.started.len() > self.max_entries {
            // Markers are only left by crashes, so this is rare: a scan is fine.
            let first = self
                .started
                .iter()
                .min_by_key(|(_, m)| m.keep_until)
                .map(|(id, _)| id.clone());
            if let Some(id) = first {
                self.started.remove(&id);
                self.evicted_early += 1;
            }
        }
    }

    /// Start markers held (recorded, not finished).
    pub fn started_len(&self) -> usize {
        self.started.len()
    }

    /// Until when the record of a command completing at `now` is kept: at least as long as
    /// its start marker would have been (Mirage may still re-send it). Drops the marker.
    fn finish(&mut self, command_id: &str, now: u64) -> u64 {
        self.in_flight.remove(command_id);
        let keep = now.saturating_add(self.window_ms);
        match self.started.remove(command_id) {
            Some(m) => keep.max(m.keep_until),
            None => keep,
        }
    }

    /// The command's event is persisted (in the store's `executions`) at `now` (Ghost
    /// clock); returns how many records were evicted early to stay within `max_entries`.
    pub fn complete(&mut self, command_id: &str, now: u64) -> usize {
        let keep = self.finish(command_id, now);
        self.restore(command_id, keep)
    }

    /// The command's event could not be persisted (the store failed): it is kept here, so
    /// the command re-sent is answered with it rather than run again.
    pub fn complete_unpersisted(&mut self, command_id: &str, event: Bytes, now: u64) {
        let keep = self.finish(command_id, now);
        self.unpersisted
            .insert(command_id.to_owned(), (event, keep));
        if self.unpersisted.len() > self.max_entries {
            // Only while the store fails: a scan is fine.
            let first = self
                .unpersisted
                .iter()
                .min_by_key(|(_, (_, k))| *k)
                .map(|(id, _)| id.clone());
            if let Some(id) = first {
                self.unpersisted.remove(&id);
                self.evicted_early += 1;
            }
        }
    }

    /// Drops a claim whose execution could not be recorded (so a retry may run it).
    pub fn release(&mut self, command_id: &str) {
        self.in_flight.remove(command_id);
    }

    /// Restores the record of a command done (its event persisted), kept until `keep_until`
    /// (Ghost clock); returns how many records were evicted early to stay within
    /// `max_entries`.
    pub fn restore(&mut self, command_id: &str, keep_until: u64) -> usize {
        let key = self.key(command_id);
        if !self.done.insert(key) {
            *self.extra.entry(key).or_insert(0) += 1;
        }
        let slot = keep_until / self.slot_ms;
        if let Some(mut last) = self.expiry.last_entry() {
            if *last.key() < slot {
                // That slot fills no more (or rarely): give back its spare capacity.
                last.get_mut().shrink_to_fit();
            }
        }
        self.expiry.entry(slot).or_default().push_back(key);
        self.records += 1;
        let mut evicted = 0;
        while self.records > self.max_entries {
            let Some(mut first) = self.expiry.first_entry() else {
                break;
            };
            let k = first.get_mut().pop_front();
            if first.get().is_empty() {
                first.remove();
            }
            if let Some(k) = k {
                self.forget(k);
                self.evicted_early += 1;
                evicted += 1;
            }
        }
        evicted
    }

    /// One record of `key` goes.
    fn forget(&mut self, key: u64) {
        self.records = self.records.saturating_sub(1);
        match self.extra.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.extra.remove(&key);
            }
            None => {
                self.done.remove(&key);
            }
        }
    }

    /// Removes what is kept until before `now` (Ghost clock); returns `now`, the cutoff to
    /// prune storage with.
    pub fn expire(&mut self, now: u64) -> u64 {
        self.started.retain(|_, m| m.keep_until >= now);
        self.unpersisted.retain(|_, (_, k)| *k >= now);
        let slot_ms = self.slot_ms;
        while let Some(first) = self.expiry.first_entry() {
            // Every record in a slot is kept until at most the slot's last millisecond.
            let last_ms = first
                .key()
                .saturating_mul(slot_ms)
                .saturating_add(slot_ms - 1);
            if last_ms >= now {
                break;
            }
            for k in first.remove() {
                self.forget(k);
            }
        }
        now
    }

    /// Records held: done commands and claims in flight.
    pub fn len(&self) -> usize {
        self.records + self.unpersisted.len() + self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------- interrupted executions

/// Whether the dispatcher must persist a start marker before handing this command to its
/// seed. Only operations declared non-idempotent need one: running an idempotent operation
/// again is harmless, so it costs no write on the hot path.
pub fn needs_start_marker(cmd: &Command, catalog: &Catalog) -> bool {
    operation_idempotent(cmd, catalog) != Some(true)
}

fn operation_idempotent(cmd: &Command, catalog: &Catalog) -> Option<bool> {
    catalog
        .get(cmd.seed_selector.trim())?
        .iter()
        .find(|o| o.name == cmd.operation)
        .map(|o| o.idempotent)
}

/// A command is claimed again (Mirage re-sent it after a reconnect, or the admin boundary
/// repeated it) and its execution had started, at `started_ms`, without finishing: the Ghost
/// stopped while the seed had it. An operation declared idempotent may run again (`Ok`);
/// anything else must not, because its effect may already have happened: it ends with a
/// terminal `error` event (runtime execution, 1400) saying the effect is unknown.
pub fn after_interruption(
    cmd: &Command,
    started_ms: u64,
    catalog: &Catalog,
) -> Result<(), Rejection> {
    match operation_idempotent(cmd, catalog) {
        Some(true) => Ok(()),
        declared => reject(
            code::RUNTIME,
            format!(
                "ghost restarted while command {} was executing ({} {}, started at {started_ms} ms); \
                 the operation is {}, so it was not run again and its effect is unknown",
                cmd.command_id,
                cmd.seed_selector.trim(),
                cmd.operation,
                if declared.is_none() {
                    "no longer declared"
                } else {
                    "not idempotent"
                }
            ),
        ),
    }
}

// ---------------------------------------------------------------- outbox

#[derive(Debug, Clone)]
struct Pending {
    event_id: String,
    payload: Bytes,
    sent_at: Option<u64>,
    attempts: u32,
}

/// Events persisted but not yet acknowledged, in persist order. Pipelined: up to
/// `max_in_flight` are on the wire at once; one unacked past `ack_timeout_ms` goes again.
#[derive(Debug)]
pub struct OutboxState {
    items: BTreeMap<u64, Pending>,
    by_event: HashMap<String, u64>,
    max_in_flight: usize,
    in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToSend {
    pub seq: u64,
    pub event_id: String,
    pub payload: Bytes,
    pub attempt: u32,
}

impl OutboxState {
    pub fn new(max_in_flight: usize) -> OutboxState {
        OutboxState {
            items: BTreeMap::new(),
            by_event: HashMap::new(),
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
        }
    }

    /// Adds a persisted event; false if that event_id is already waiting (kept once).
    pub fn push(&mut self, seq: u64, event_id: String, payload: Bytes) -> bool {
        if self.by_event.contains_key(&event_id) {
            return false;
        }
        self.by_event.insert(event_id.clone(), seq);
        self.items.insert(
            seq,
            Pending {
                event_id,
                payload,
                sent_at: None,
                attempts: 0,
            },
        );
        true
    }

    /// What to put on the wire now: unsent events while the pipeline has room, and events
    /// whose ack is overdue (resent; they stay counted as in flight).
    pub fn to_send(&mut self, now_ms: u64, ack_timeout_ms: u64) -> Vec<ToSend> {
        let mut out = Vec::new();
        for (&seq, p) in self.items.iter_mut() {
            let due = match p.sent_at {
                None if self.in_flight < self.max_in_flight => {
                    self.in_flight += 1;
                    true
                }
                None => false,
                Some(t) => now_ms.saturating_sub(t) >= ack_timeout_ms,
            };
            if due {
                p.sent_at = Some(now_ms);
                p.attempts += 1;
                out.push(ToSend {
                    seq,
                    event_id: p.event_id.clone(),
                    payload: p.payload.clone(),
                    attempt: p.attempts,
                });
            }
        }
        out
    }

    /// An ack arrived: the event leaves the outbox (accepted, or rejected and marked failed).
    /// `None` for an ack of something not waiting (a duplicate ack).
    pub fn on_ack(&mut self, event_id: &str) -> Option<u64> {
        let seq = self.by_event.remove(event_id)?;
        if let Some(p) = self.items.remove(&seq) {
            if p.sent_at.is_some() {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
        Some(seq)
    }

    /// The session dropped: everything is unsent again and goes out after reconnect.
    pub fn on_disconnect(&mut self) {
        for p in self.items.values_mut() {
            p.sent_at = None;
        }
        self.in_flight = 0;
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds::{builtin, SeedSettings};

    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        for id in ["seed.flow", "seed.kv"] {
            let s = builtin(id, &SeedSettings::default()).unwrap();
            c.insert(id.to_owned(), s.operations());
        }
        c
    }

    fn cmd(seed: &str, op: &str) -> Command {
        Command {
            command_id: "c1".into(),
            intent_id: "i1".into(),
            ghost_id: "g1".into(),
            seed_selector: seed.into(),
            operation: op.into(),
            ..Default::default()
        }
    }

    #[test]
    fn lifecycle_order() {
        let p = Phase::Boot
            .appear()
            .unwrap()
            .seed()
            .unwrap()
            .radiate()
            .unwrap();
        assert_eq!(p, Phase::Radiating);
        assert!(Phase::Boot.radiate().is_err());
        assert!(Phase::Radiating.appear().is_err());
    }

    #[test]
    fn boundary_checks_in_order() {
        let c = catalog();
        let f = Fences::default();
        let ok = |m: &Command| check_command(m, Phase::Radiating, "g1", &c, &f, 1000);
        assert!(ok(&cmd("seed.flow", "status")).is_ok());
        // Not radiating beats everything else.
        let e = check_command(&cmd("nope", "x"), Phase::Seeded, "g1", &c, &f, 0).unwrap_err();
        assert!(e.reason.contains("not radiating"));
        // Wrong ghost beats unknown seed.
        let mut m = cmd("nope", "x");
        m.ghost_id = "g2".into();
        assert!(ok(&m).unwrap_err().reason.contains("delivered to"));
        let mut m = cmd("seed.flow", "status");
        m.deadline_ms = Some(999);
        assert!(ok(&m).unwrap_err().reason.contains("deadline passed"));
        assert!(ok(&cmd("nope", "x"))
            .unwrap_err()
            .reason
            .contains("unknown seed"));
        assert!(ok(&cmd("seed.flow", "rm"))
            .unwrap_err()
            .reason
            .contains("unknown operation"));
        let mut m = cmd("seed.kv", "put");
        assert!(ok(&m)
            .unwrap_err()
            .reason
            .contains("needs argument \"key\""));
        m.args.insert("key".into(), "k".into());
        m.args.insert("colour".into(), "red".into());
        assert!(ok(&m)
            .unwrap_err()
            .reason
            .contains("does not take argument"));
    }

    #[test]
    fn fences_refuse_stale_tokens() {
        let c = catalog();
        let mut f = Fences::default();
        assert!(f.observe("seed.kv", 5));
        assert!(!f.observe("seed.kv", 5));
        let mut m = cmd("seed.kv", "list");
        m.lock_token = Some(4);
        let e = check_command(&m, Phase::Radiating, "g1", &c, &f, 0).unwrap_err();
        assert!(e.reason.contains("stale lock_token 4"));
        m.lock_token = Some(5);
        assert!(check_command(&m, Phase::Radiating, "g1", &c, &f, 0).is_ok());
    }

    #[test]
    fn dedupe_claims_once_and_replays_within_the_window() {
        let mut d = DedupeWindow::new(1000, 10);
        assert_eq!(d.check_and_claim("c1"), Seen::New);
        assert_eq!(d.check_and_claim("c1"), Seen::InFlight);
        d.complete("c1", 100);
        assert_eq!(d.check_and_claim("c1"), Seen::Stored);
        d.expire(1100);
        assert_eq!(d.check_and_claim("c1"), Seen::Stored, "window is inclusive");
        d.expire(1101);
        assert_eq!(d.check_and_claim("c1"), Seen::New);
        d.release("c1");
        assert_eq!(d.check_and_claim("c1"), Seen::New);
        assert_eq!(d.check_and_claim("c2"), Seen::New, "other ids are new");
    }

    #[test]
    fn a_done_match_the_store_does_not_confirm_is_claimed_once() {
        let mut d = DedupeWindow::new(1000, 10);
        d.check_and_claim("c1");
        d.complete("c1", 0);
        assert_eq!(d.check_and_claim("c1"), Seen::Stored);
        // The store had no record (another id's hash): claimed, and a second copy waits.
        assert_eq!(d.claim("c1"), Seen::New);
        assert_eq!(d.check_and_claim("c1"), Seen::InFlight);
        assert_eq!(d.claim("c1"), Seen::InFlight);
        // Done again: two records of one hash, each dropped at its own time.
        d.complete("c1", 500);
        assert_eq!(d.len(), 2);
        d.expire(1001);
        assert_eq!(
            d.check_and_claim("c1"),
            Seen::Stored,
            "the later record holds"
        );
        assert_eq!(d.len(), 1);
        d.expire(1501);
        assert_eq!(d.check_and_claim("c1"), Seen::New);
    }

    #[test]
    fn an_event_that_was_not_persisted_is_kept_in_memory_for_the_window() {
        let mut d = DedupeWindow::new(1000, 10);
        d.check_and_claim("c1");
        d.complete_unpersisted("c1", Bytes::from_static(b"ev"), 10);
        assert_eq!(
            d.check_and_claim("c1"),
            Seen::Done(Bytes::from_static(b"ev"))
        );
        d.expire(1010);
        assert!(matches!(d.check_and_claim("c1"), Seen::Done(_)));
        d.expire(1011);
        assert_eq!(d.check_and_claim("c1"), Seen::New);
    }

    #[test]
    fn a_record_is_kept_at_most_one_slot_longer_never_shorter() {
        // Window 10,240 ms: slots of 10 ms.
        let mut d = DedupeWindow::new(10_240, 10);
        d.check_and_claim("c1");
        d.complete("c1", 0);
        d.expire(10_240);
        assert_eq!(d.check_and_claim("c1"), Seen::Stored, "its own time");
        d.expire(10_249);
        assert_eq!(d.check_and_claim("c1"), Seen::Stored, "end of its slot");
        d.expire(10_250);
        assert_eq!(d.check_and_claim("c1"), Seen::New);
    }

    fn mk(started_ms: u64, keep_until: u64) -> Marker {
        Marker {
            started_ms,
            keep_until,
        }
    }

    #[test]
    fn a_started_command_claimed_again_is_interrupted_until_it_completes() {
        let mut d = DedupeWindow::new(1000, 10);
        assert_eq!(d.check_and_claim("c1"), Seen::New);
        d.started("c1", mk(50, 5000));
        assert_eq!(
            d.check_and_claim("c1"),
            Seen::InFlight,
            "still running here"
        );
        // The event could not be recorded: the claim goes, the start marker stays.
        d.release("c1");
        assert_eq!(
            d.check_and_claim("c1"),
            Seen::Interrupted { started_ms: 50 }
        );
        d.complete("c1", 60);
        assert_eq!(d.started_len(), 0);
        assert_eq!(d.check_and_claim("c1"), Seen::Stored);
        // Completed, the record is kept as long as its marker would have been (5000), not
        // only one window from completion (1060): Mirage may still re-send it.
        d.expire(4000);
        assert_eq!(d.check_and_claim("c1"), Seen::Stored);
        d.expire(5001);
        assert_eq!(d.check_and_claim("c1"), Seen::New);
        // After a restart: restored markers, expired on their own keep_until.
        let mut d = DedupeWindow::new(1000, 10);
        d.restore_started("c2".into(), mk(100, 1100));
        d.restore_started("c3".into(), mk(100, 3000));
        d.restore_started("c4".into(), mk(100, u64::MAX));
        d.expire(1500);
        assert_eq!(
            d.check_and_claim("c2"),
            Seen::New,
            "past its keep_until: forgotten"
        );
        assert_eq!(
            d.check_and_claim("c3"),
            Seen::Interrupted { started_ms: 100 }
        );
        d.expire(u64::MAX - 1);
        assert_eq!(
            d.check_and_claim("c4"),
            Seen::Interrupted { started_ms: 100 },
            "no deadline: kept until the command ends"
        );
    }

    #[test]
    fn markers_are_kept_while_mirage_can_re_send_and_age_only_on_the_ghost_clock() {
        // Budget 2 h at receipt, window 15 min: the marker outlives both.
        let w = 15 * 60_000;
        assert_eq!(keep_until(10, w, Some(7_200_000)), 10 + w + 7_200_000);
        assert_eq!(
            keep_until(10, w, Some(-5)),
            10 + w,
            "a passed budget adds nothing"
        );
        assert_eq!(keep_until(10, w, None), u64::MAX);
        assert_eq!(keep_until(u64::MAX - 1, w, Some(i64::MAX)), u64::MAX);
        // The clock resumes past everything persisted; the wall clock plays no part, so a
        // Ghost restarted with its wall clock an hour ahead ages nothing by that hour.
        assert_eq!(resume_clock([5, 90, 40]), 90);
        assert_eq!(resume_clock([]), 0);
        let mut d = DedupeWindow::new(w, 10);
        d.check_and_claim("c1");
        d.started(
            "c1",
            mk(1_700_000_000_000, keep_until(90, w, Some(7_200_000))),
        );
        d.release("c1");
        // One second of Ghost clock after the restart: still interrupted.
        d.expire(resume_clock([90]) + 1000);
        assert_eq!(
            d.check_and_claim("c1"),
            Seen::Interrupted {
                started_ms: 1_700_000_000_000
            }
        );
    }

    #[test]
    fn the_relative_budget_wins_over_the_absolute_deadline() {
        let mut m = cmd("seed.flow", "status");
        assert_eq!(remaining_ms(&m, 1000), None);
        m.deadline_ms = Some(1500);
        assert_eq!(remaining_ms(&m, 1000), Some(500));
        assert_eq!(remaining_ms(&m, 2000), Some(-500));
        // The Ghost's clock is an hour ahead of Mirage's: the absolute deadline looks long
        // gone, the budget Mirage attached says 30 s are left.
        m.deadline_ms = Some(1_000_030_000);
        m.attach_budget(1_000_000_000);
        assert_eq!(m.budget_ms(), Some(30_000));
        assert_eq!(remaining_ms(&m, 1_000_000_000 + 3_600_000), Some(30_000));
        let (c, f) = (catalog(), Fences::default());
        assert!(check_command(&m, Phase::Radiating, "g1", &c, &f, 1_003_600_000).is_ok());
        m.extra.clear();
        let e = check_command(&m, Phase::Radiating, "g1", &c, &f, 1_003_600_000).unwrap_err();
        assert!(
            e.reason.contains("deadline passed 3570000 ms ago"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains("check its clock"), "{}", e.reason);
    }

    #[test]
    fn interrupted_commands_run_again_only_when_idempotent() {
        let mut c = catalog();
        let fs = builtin("seed.fs", &SeedSettings::default()).unwrap();
        c.insert("seed.fs".into(), fs.operations());
        let mut append = cmd("seed.fs", "append");
        append.args.insert("path".into(), "p".into());
        let sleep = cmd("seed.flow", "sleep");
        assert!(needs_start_marker(&append, &c));
        assert!(!needs_start_marker(&sleep, &c), "idempotent: no marker");
        assert!(
            needs_start_marker(&cmd("seed.flow", "nope"), &c),
            "undeclared counts as not idempotent"
        );
        assert_eq!(after_interruption(&sleep, 7, &c), Ok(()));
        let r = after_interruption(&append, 7, &c).unwrap_err();
        assert_eq!(r.code, code::RUNTIME);
        assert!(r
            .reason
            .contains("ghost restarted while command c1 was executing"));
        assert!(r.reason.contains("seed.fs append, started at 7 ms"));
        assert!(r.reason.contains("not idempotent"));
        assert!(r.reason.contains("effect is unknown"));
        let r = after_interruption(&cmd("seed.gone", "x"), 7, &c).unwrap_err();
        assert!(r.reason.contains("no longer declared"), "{}", r.reason);
    }

    #[test]
    fn dedupe_is_bounded_and_counts_early_evictions() {
        let mut d = DedupeWindow::new(u64::MAX, 3);
        for i in 0..5 {
            let id = format!("c{i}");
            d.check_and_claim(&id);
            d.complete(&id, i);
        }
        d.check_and_claim("m1");
        for i in 0..5 {
            d.restore_started(format!("m{i}"), mk(i, i));
        }
        assert_eq!(d.started_len(), 3, "markers are bounded too");
        assert_eq!(d.len(), 4, "3 done and the claim of m1");
        d.release("m1");
        assert_eq!(d.evicted_early, 4);
        assert_eq!(d.check_and_claim("c0"), Seen::New);
    }

    #[test]
    fn outbox_pipelines_resends_overdue_and_replays_after_disconnect() {
        let mut o = OutboxState::new(2);
        for i in 0..3u64 {
            assert!(o.push(i, format!("e{i}"), Bytes::new()));
        }
        assert!(
            !o.push(9, "e0".into(), Bytes::new()),
            "event ids are kept once"
        );
        let first: Vec<_> = o.to_send(0, 100).into_iter().map(|t| t.event_id).collect();
        assert_eq!(first, ["e0", "e1"], "pipeline window of 2");
        assert!(o.to_send(50, 100).is_empty());
        assert_eq!(o.on_ack("e0"), Some(0));
        assert_eq!(o.on_ack("e0"), None, "duplicate ack");
        let next: Vec<_> = o.to_send(60, 100).into_iter().map(|t| t.event_id).collect();
        assert_eq!(next, ["e2"]);
        let overdue = o.to_send(100, 100);
        assert_eq!(overdue.len(), 1);
        assert_eq!(
            (overdue[0].event_id.as_str(), overdue[0].attempt),
            ("e1", 2)
        );
        o.on_disconnect();
        let again: Vec<_> = o
            .to_send(101, 100)
            .into_iter()
            .map(|t| t.event_id)
            .collect();
        assert_eq!(again, ["e1", "e2"]);
        assert_eq!(o.len(), 2);
    }
}
