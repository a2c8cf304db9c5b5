//! Mirage's own counters for `/metrics` (actor mailboxes come from `actorkit::metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    v: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            v: AtomicU64::new(0),
        }
    }
    pub fn inc(&self) {
        self.v.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.v.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.v.load(Relaxed)
    }
}

/// Count, sum and max of a latency, in microseconds.
pub struct Latency {
    pub name: &'static str,
    pub help: &'static str,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Latency {
    pub const fn new(name: &'static str, help: &'static str) -> Latency {
        Latency {
            name,
            help,
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }
}

pub static SESSIONS_OPENED: Counter =
    Counter::new("mirage_sessions_opened_total", "Ghost sessions registered");
pub static SESSIONS_REJECTED: Counter = Counter::new(
    "mirage_sessions_rejected_total",
    "Handshakes rejected or failed",
);
pub static COMMANDS_SENT: Counter = Counter::new(
    "mirage_commands_sent_total",
    "Command frames sent to Ghosts",
);
pub static EVENTS_RECEIVED: Counter = Counter::new(
    "mirage_events_received_total",
    "Events received (heartbeats excluded)",
);
pub static EVENTS_DUPLICATE: Counter = Counter::new(
    "mirage_events_duplicate_total",
    "Events seen again inside the window",
);
pub static HEARTBEATS: Counter =
    Counter::new("mirage_heartbeats_total", "Heartbeat events acknowledged");
pub static REPORTS: Counter = Counter::new("mirage_reports_total", "Reports emitted");
pub static INTENTS_SUBMITTED: Counter =
    Counter::new("mirage_intents_submitted_total", "Intents accepted");
pub static GHOST_ID_CONFLICTS: Counter = Counter::new(
    "mirage_ghost_id_conflicts_total",
    "Registrations refused: another live Ghost process (another instance_id) holds the ghost_id",
);
pub static GHOSTS_EVICTED: Counter = Counter::new(
    "mirage_ghosts_evicted_total",
    "Disconnected Ghosts forgotten by the registry bound (count or age)",
);
pub static REGISTRATIONS_OVERSIZE: Counter = Counter::new(
    "mirage_registrations_oversize_total",
    "Registrations refused for exceeding a registration size limit",
);
pub static FRAME_ERRORS: Counter = Counter::new("mirage_frame_errors_total", "Frames rejected");
pub static STORE_COMMIT_US: Latency =
    Latency::new("mirage_store_commit", "Store group-commit latency");
pub static STORE_CHECKPOINT_US: Latency = Latency::new(
    "mirage_store_checkpoint",
    "WAL checkpoint latency (off the commit path)",
);

pub static STORE_DISK_FULL: Counter = Counter::new(
    "mirage_store_disk_full_total",
    "Store commits that failed on a full disk",
);
pub static STORE_RESERVE_RELEASED: Counter = Counter::new(
    "mirage_store_reserve_released_total",
    "Times the store's disk reserve (store.reserve_bytes) was given back on a full disk",
);
pub static STORE_CHECKPOINT_FAILED: Counter = Counter::new(
    "mirage_store_checkpoint_failed_total",
    "WAL checkpoints that failed (a full disk: mirage.db cannot grow)",
);

pub static HA_LEADERSHIP_LOST: Counter = Counter::new(
    "mirage_ha_leadership_lost_total",
    "Times this process stopped leading (store backend etcd); it exits right after",
);
pub static HA_LEADERSHIP_GAINED: Counter = Counter::new(
    "mirage_ha_leadership_gained_total",
    "Times this process became the leader (store backend etcd)",
);

pub fn render(out: &mut String, gauges: &[(&str, &str, u64)]) {
    for c in [
        &SESSIONS_OPENED,
        &SESSIONS_REJECTED,
        &COMMANDS_SENT,
        &EVENTS_RECEIVED,
        &EVENTS_DUPLICATE,
        &HEARTBEATS,
        &REPORTS,
        &INTENTS_SUBMITTED,
        &FRAME_ERRORS,
        &GHOST_ID_CONFLICTS,
        &GHOSTS_EVICTED,
        &REGISTRATIONS_OVERSIZE,
        &STORE_DISK_FULL,
        &STORE_RESERVE_RELEASED,
        &STORE_CHECKPOINT_FAILED,
        &HA_LEADERSHIP_GAINED,
        &HA_LEADERSHIP_LOST,
    ] {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} counter\n{} {}",
            c.name,
            c.help,
            c.name,
            c.name,
            c.get()
        );
    }
    for l in [&STORE_COMMIT_US, &STORE_CHECKPOINT_US] {
        let _ = writeln!(
        out,
        "# HELP {n}_seconds {h}\n# TYPE {n}_seconds summary\n{n}_seconds_count {}\n{n}_seconds_sum {}\n# TYPE {n}_seconds_max gauge\n{n}_seconds_max {}",
        l.count.load(Relaxed),
        l.sum_us.load(Relaxed) as f64 / 1e6,
        l.max_us.load(Relaxed) as f64 / 1e6,
        n = l.name,
        h = l.help
    );
    }
    // The store's disk gauges come in `gauges` from the caller (api.rs reads the store's
    // `DISK`), so this module, which the store counts into, does not name the store.
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    actorkit::metrics::render_prometheus(out);
}
