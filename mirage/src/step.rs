//! The validated intent's types (what Mirage plans from), apart from the parser in
//! `intent.rs`: the step expansions (`storage_move`, `raft_keep`) build these, and the
//! parser calls the expansions, so the types sit below both (no file import cycle).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::envelope::Args;

pub const MAX_STEPS: usize = 256;
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// Every Ghost in scope hosting the seed.
    All,
    /// One such Ghost, the co-located local Ghost first.
    One,
    /// Locality (`on = "local"`): the co-located Ghost when it hosts the seed and is
    /// connected, else any one Ghost hosting it (a preference, not a restriction).
    Local,
    /// This Ghost.
    Ghost(String),
}

/// What a fan-out step (`on = "all"`) does about Ghosts in scope that host its seed but are
/// offline when it is placed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offline {
    /// Run on the connected ones; the offline ones are reported as skipped.
    #[default]
    Skip,
    /// The offline ones count as failed Ghosts of the step (so the step fails unless
    /// `continue_on_error`).
    Fail,
    /// Run on the connected ones; each offline one runs the step when it comes back (after
    /// the intent's pass, in step order), and the intent stays active until all have.
    CatchUp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub operation: String,
    #[serde(default)]
    pub args: Args,
    /// The desired content: the check passes only where its stdout (one trailing newline
    /// aside) equals this. Without it a check passes when its operation succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// An observed check (`check = { observed = { state = "running" } }`): no command is
    /// sent; it passes where the Ghost's latest observation of the step's seed instance has
    /// every one of these values. `operation` is empty then.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observed: BTreeMap<String, String>,
    /// A step of an expanded `raft.keep` (raft_keep.rs): Mirage answers the check from
    /// the cluster's observations; no command is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_keep: Option<Keep>,
}

impl Check {
    /// False for checks Mirage answers itself (observed, raft.keep).
    pub fn sends_command(&self) -> bool {
        self.observed.is_empty() && self.raft_keep.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub seed: String,
    pub operation: String,
    pub args: Args,
    pub on: On,
    pub blocking: bool,
    pub timeout_ms: u64,
    pub retries: u32,
    pub continue_on_error: bool,
    pub check: Option<Check>,
    #[serde(default)]
    pub offline: Offline,
    /// Place the step only on a Ghost whose seed instance advertises this entrypoint URI in
    /// its latest observation (`redis://127.0.0.1:6390/0`, issue 11 item 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Seed locks (`ghost_id::seed`) a blocking step holds besides its own Ghosts' (a
    /// storage.move step holds both ends' locks, issue 14).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    /// A step of a lock set: when it succeeds its locks pass to the next step instead of
    /// being released, so nothing else runs on those seeds in between (storage.move).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_locks: bool,
}

/// A validated intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub intent_id: String,
    pub actor: String,
    pub target_scope: String,
    pub objective: String,
    pub keep_ms: Option<u64>,
    pub steps: Vec<Step>,
}

/// A validation failure naming the offending field, e.g. `step[2].seed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn fe(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1)
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// `*` any run, `?` one character; over the whole ghost id.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl Intent {
    pub fn scope_glob(&self) -> &str {
        self.target_scope.strip_prefix("ghost:").unwrap_or("*")
    }

    pub fn in_scope(&self, ghost_id: &str) -> bool {
        glob_match(self.scope_glob(), ghost_id)
    }
}

/// The phase of an expanded `raft.keep` step (raft_keep.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Join,
    Remove,
}

/// One expanded step's part of the keeper, carried in its check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keep {
    pub phase: Phase,
    pub voters: usize,
    pub gone_after_ms: u64,
}
