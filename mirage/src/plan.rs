//! One intent's plan as a pure state machine: inputs (start, lock grants, events, ticks,
//! Ghosts coming and going, withdraw) and the time go in; effects (acquire/release locks,
//! dispatch commands, reports) come out. The `IntentPlan` actor executes the effects.
//!
//! Rules: steps run in order; a step runs on its placement in parallel; a blocking step holds
//! the seed lock of every Ghost it runs on; a failed step fails the intent unless
//! `continue_on_error`; each attempt has a timeout and a step has bounded retries; a step with
//! a `check` runs the check first and skips the operation where it succeeds; a standing
//! intent re-runs its checks every `keep` and corrects drift.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::envelope::{Command, CompletionState, Outcome, Phase};

use crate::intent::{Intent, On, Step};
use crate::lock::{self, Owner};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Satisfied,
    Failed,
    Withdrawn,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Failed | Status::Withdrawn)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Satisfied => "satisfied",
            Status::Failed => "failed",
            Status::Withdrawn => "withdrawn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Check,
    Main,
}

/// What Mirage knows of the fleet when it places a step.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// ghost id → (connected, seed id → declared operations; `None` = not declared).
    pub ghosts: BTreeMap<String, GhostView>,
    /// The co-located local Ghost, preferred for `on = "one"`.
    pub local: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GhostView {
    pub connected: bool,
    pub seeds: BTreeMap<String, Option<Vec<String>>>,
    /// (seed, operation) pairs the Ghost declared idempotent at registration. Anything else
    /// may have had its effect when an attempt ends without a terminal event.
    pub idempotent: std::collections::BTreeSet<(String, String)>,
}

impl FleetView {
    /// Declared idempotent by this Ghost (unknown Ghost or undeclared: no).
    pub fn idempotent(&self, ghost: &str, seed: &str, op: &str) -> bool {
        self.ghosts
            .get(ghost)
            .is_some_and(|g| g.idempotent.contains(&(seed.to_owned(), op.to_owned())))
    }

    fn hosts(&self, ghost: &str, seed: &str, op: &str) -> Result<bool, String> {
        let Some(g) = self.ghosts.get(ghost) else {
            return Ok(false);
        };
        match g.seeds.get(seed) {
            None => Ok(false),
            Some(Some(ops)) if !ops.iter().any(|o| o == op) => Err(format!(
                "{ghost} does not declare operation {op:?} for {seed} (declared: {})",
                ops.join(", ")
            )),
            Some(_) => Ok(true),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportDraft {
    pub phase: Phase,
    pub state: CompletionState,
    pub summary: String,
    pub step: Option<usize>,
    pub command_id: Option<String>,
    pub event_id: Option<String>,
    pub ghost_id: Option<String>,
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Acquire {
        key: String,
        owner: Owner,
        lease_ms: u64,
    },
    Release {
        key: String,
        owner: Owner,
    },
    Renew {
        key: String,
        owner: Owner,
        lease_ms: u64,
    },
    Dispatch {
        ghost: String,
        command: Command,
        kind: Kind,
    },
    Report(ReportDraft),
    /// The intent reached a terminal state or satisfied without `keep`: the actor may stop.
    Finished(Status),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Start,
    Tick,
    LockGranted {
        key: String,
        token: u64,
    },
    LockQueued {
        key: String,
        holder: Owner,
    },
    /// A lock this plan held was taken away (lease expiry or operator break).
    LockLost {
        key: String,
    },
    Event {
        ghost: String,
        command_id: String,
        event_id: String,
        outcome: Outcome,
        reason: Option<String>,
    },
    GhostUp(String),
    Withdraw {
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outstanding {
    pub ghost: String,
    pub kind: Kind,
    pub attempt: u32,
    pub deadline_ms: u64,
    pub command: CommandRecord,
}

/// The command as dispatched (re-sent unchanged after a reconnect or restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub operation: String,
    pub args: shared::envelope::Args,
    pub lock_token: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GhostProgress {
    Pending,
    Checking,
    Running,
    Done,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRun {
    pub index: usize,
    pub started_ms: u64,
    pub placement: Vec<String>,
    pub waiting_placement: Option<String>,
    pub locks: BTreeMap<String, Option<u64>>,
    pub blocked_by: Option<String>,
    pub ghosts: BTreeMap<String, GhostProgress>,
    pub outstanding: BTreeMap<String, Outstanding>,
    pub dispatched: bool,
    pub corrected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub intent: Intent,
    pub status: Status,
    /// 0: the first pass; n > 0: the n-th standing re-check.
    pub round: u32,
    pub step: Option<StepRun>,
    pub steps_done: usize,
    pub next_keep_ms: Option<u64>,
    pub round_corrected: bool,
    pub failure: Option<String>,
    /// Unique per submission and persisted with the plan: part of every command id, so a
    /// reused intent_id never meets the old submission's commands in a Ghost's dedupe window,
    /// while a re-send of this submission's command (after a restart) keeps its id.
    /// 0: a plan persisted before generations existed (its ids keep the old form).
    #[serde(default)]
    pub generation: u64,
    /// The first report seq of this submission: an earlier submission of the same intent_id
    /// left reports in the history that are not this one's.
    #[serde(default)]
    pub first_report_seq: u64,
}

fn report(
    phase: Phase,
    state: CompletionState,
    summary: String,
    step: Option<usize>,
) -> ReportDraft {
    ReportDraft {
        phase,
        state,
        summary,
        step,
        command_id: None,
        event_id: None,
        ghost_id: None,
        outcome: None,
    }
}

/// A Ghost that restarted while a non-idempotent command ran refuses to run it again and
/// says its effect is unknown (ghost/src/logic.rs `after_interruption`). The wire has no
/// code for this (1400 covers every runtime failure), so the reason text carries it.
pub fn ghost_says_effect_unknown(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("effect is unknown") || r.contains("effect unknown")
}

/// Lower-case base 36: short command ids.
fn base36(mut n: u64) -> String {
    const D: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

impl Plan {
    /// `generation` must differ from every earlier submission's of the same intent_id (the
    /// supervisor hands out rising values; see `Supervisor::next_generation`).
    pub fn new(intent: Intent, generation: u64) -> Plan {
        Plan {
            intent,
            status: Status::Active,
            round: 0,
            step: None,
            steps_done: 0,
            next_keep_ms: None,
            round_corrected: false,
            failure: None,
            generation,
            first_report_seq: 0,
        }
    }

    pub fn id(&self) -> &str {
        &self.intent.intent_id
    }

    fn total(&self) -> usize {
        self.intent.steps.len()
    }

    fn owner(&self, step: usize) -> Owner {
        Owner {
            intent_id: self.intent.intent_id.clone(),
            step,
        }
    }

    fn lease_ms(s: &Step) -> u64 {
        s.timeout_ms
            .saturating_mul(s.retries as u64 + 2)
            .saturating_add(5_000)
    }

    /// When this plan next needs a `Tick`: the earliest attempt deadline, a placement retry,
    /// or the next standing re-check. `None`: only inputs can move it.
    pub fn next_wakeup(&self, now: u64, retry_ms: u64) -> Option<u64> {
        if self.status.is_terminal() {
            return None;
        }
        if self.status == Status::Satisfied && self.step.is_none() {
            return self.next_keep_ms;
        }
        let s = self.step.as_ref()?;
        if s.waiting_placement.is_some() {
            return Some(now.saturating_add(retry_ms));
        }
        s.outstanding.values().map(|o| o.deadline_ms).min()
    }

    /// Whether this plan's current step holds or waits for `key` as `owner` (recovery drops
    /// lock holders and waiters for which this is false).
    pub fn needs_lock(&self, owner: &Owner, key: &str) -> bool {
        !self.status.is_terminal()
            && owner.intent_id == self.intent.intent_id
            && self
                .step
                .as_ref()
                .is_some_and(|s| s.index == owner.step && s.locks.contains_key(key))
    }

    /// Commands this plan is waiting on (for routing after a restart).
    pub fn outstanding(&self) -> impl Iterator<Item = (&String, &Outstanding)> {
        self.step.iter().flat_map(|s| s.outstanding.iter())
    }

    pub fn handle(&mut self, input: Input, now: u64, fleet: &FleetView) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.status.is_terminal() {
            return fx;
        }
        match input {
            Input::Start => {
                if self.step.is_none() && self.status == Status::Active {
                    fx.push(Effect::Report(report(
                        Phase::InProgress,
                        CompletionState::InProgress,
                        format!(
                            "intent {} accepted: {} step(s) over {}",
                            self.id(),
                            self.total(),
                            self.intent.target_scope
                        ),
                        None,
                    )));
                    self.begin_step(0, now, fleet, &mut fx);
                }
            }
            Input::Tick => self.tick(now, fleet, &mut fx),
            Input::LockGranted { key, token } => self.lock_granted(key, token, now, &mut fx),
            Input::LockQueued { key, holder } => self.lock_queued(key, holder, &mut fx),
            Input::LockLost { key } => {
                if let Some(s) = &mut self.step {
                    if let Some(t) = s.locks.get_mut(&key) {
                        *t = None;
                    }
                    let why = format!("seed lock {key} was taken away (lease expired or broken)");
                    let idx = s.index;
                    self.fail(idx, why, &mut fx);
                }
            }
            Input::Event {
                ghost,
                command_id,
                event_id,
                outcome,
                reason,
            } => self.on_event(
                ghost, command_id, event_id, outcome, reason, false, now, fleet, &mut fx,
            ),
            Input::GhostUp(g) => {
                // Commands sent while it was away may never have arrived: send them again,
                // same command_id (the Ghost dedupes).
                if let Some(s) = &self.step {
                    for o in s.outstanding.values().filter(|o| o.ghost == g) {
                        fx.push(self.dispatch_effect(s.index, o));
                    }
                    if s.waiting_placement.is_some() {
                        let idx = s.index;
                        self.begin_step(idx, now, fleet, &mut fx);
                    }
                }
            }
            Input::Withdraw { why } => {
                self.release_all(&mut fx);
                self.status = Status::Withdrawn;
                self.step = None;
                fx.push(Effect::Report(report(
                    Phase::Complete,
                    CompletionState::Failed,
                    format!("intent {} withdrawn: {why}", self.id()),
                    None,
                )));
                fx.push(Effect::Finished(Status::Withdrawn));
            }
        }
        fx
    }

    /// After a restart: ask for the locks again and re-send what was never answered.
    pub fn resume(&mut self, now: u64, fleet: &FleetView) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.status.is_terminal() {
            return fx;
        }
        let Some(s) = &self.step else {
            if self.status == Status::Active {
                return self.handle(Input::Start, now, fleet);
            }
            return fx;
        };
        let step = &self.intent.steps[s.index];
        for key in s.locks.keys() {
            fx.push(Effect::Acquire {
                key: key.clone(),
                owner: self.owner(s.index),
                lease_ms: Self::lease_ms(step),
            });
        }
        for o in s.outstanding.values() {
            fx.push(self.dispatch_effect(s.index, o));
        }
        fx
    }

    fn place(&self, idx: usize, fleet: &FleetView) -> Result<Vec<String>, String> {
        let s = &self.intent.steps[idx];
        let in_scope = |g: &str| self.intent.in_scope(g);
        let mut candidates = Vec::new();
        let mut refusal = None;
        for (g, v) in &fleet.ghosts {
            if !in_scope(g) || !v.connected {
                continue;
            }
            let op = s.check.as_ref().map(|c| c.operation.as_str());
            match fleet
                .hosts(g, &s.seed, &s.operation)
                .and_then(|ok| match (ok, op) {
                    (true, Some(op)) => fleet.hosts(g, &s.seed, op),
                    (r, _) => Ok(r),
                }) {
                Ok(true) => candidates.push(g.clone()),
                Ok(false) => {}
                Err(e) => refusal = Some(e),
            }
        }
        let none = |what: String| match &refusal {
            Some(r) => Err(r.clone()),
            None => Err(what),
        };
        match &s.on {
            On::All if candidates.is_empty() => none(format!(
                "no connected ghost in {} hosts {}",
                self.intent.target_scope, s.seed
            )),
            On::All => Ok(candidates),
            // `local` and `one` choose alike: the co-located Ghost first (issue 11).
            On::One | On::Local => {
                if let Some(l) = &fleet.local {
                    if candidates.contains(l) {
                        return Ok(vec![l.clone()]);
                    }
                }
                if candidates.is_empty() {
                    return none(format!(
                        "no connected ghost in {} hosts {}",
                        self.intent.target_scope, s.seed
                    ));
                }
                // Spread single-ghost steps of different intents over the candidates.
                let h = self
                    .intent
                    .intent_id
                    .bytes()
                    .fold(idx as u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
                Ok(vec![
                    candidates[(h % candidates.len() as u64) as usize].clone()
                ])
            }
            On::Ghost(g) => {
                if !in_scope(g) {
                    Err(format!("{g} is outside {}", self.intent.target_scope))
                } else if candidates.contains(g) {
                    Ok(vec![g.clone()])
                } else {
                    none(format!("{g} is not connected or does not host {}", s.seed))
                }
            }
        }
    }

    fn begin_step(&mut self, idx: usize, now: u64, fleet: &FleetView, fx: &mut Vec<Effect>) {
        // In a standing re-check round only steps with a check run.
        let mut idx = idx;
        while self.round > 0 && idx < self.total() && self.intent.steps[idx].check.is_none() {
            idx += 1;
        }
        if idx >= self.total() {
            self.complete_round(now, fx);
            return;
        }
        let started = match &self.step {
            Some(s) if s.index == idx => s.started_ms,
            _ => now,
        };
        let step = self.intent.steps[idx].clone();
        let placement = match self.place(idx, fleet) {
            Ok(p) => p,
            Err(why) => {
                let first = !matches!(&self.step, Some(s) if s.index == idx && s.waiting_placement.as_deref() == Some(why.as_str()));
                self.step = Some(StepRun {
                    index: idx,
                    started_ms: started,
                    placement: vec![],
                    waiting_placement: Some(why.clone()),
                    locks: BTreeMap::new(),
                    blocked_by: None,
                    ghosts: BTreeMap::new(),
                    outstanding: BTreeMap::new(),
                    dispatched: false,
                    corrected: false,
                });
                if first {
                    fx.push(Effect::Report(report(
                        Phase::InProgress,
                        CompletionState::InProgress,
                        format!(
                            "intent {} step {}/{} waiting: {why}",
                            self.id(),
                            idx + 1,
                            self.total()
                        ),
                        Some(idx),
                    )));
                }
                return;
            }
        };
        let locks: BTreeMap<String, Option<u64>> = if step.blocking {
            placement
                .iter()
                .map(|g| (lock::key(g, &step.seed), None))
                .collect()
        } else {
            BTreeMap::new()
        };
        self.step = Some(StepRun {
            index: idx,
            started_ms: started,
            placement: placement.clone(),
            waiting_placement: None,
            locks: locks.clone(),
            blocked_by: None,
            ghosts: placement
                .iter()
                .map(|g| (g.clone(), GhostProgress::Pending))
                .collect(),
            outstanding: BTreeMap::new(),
            dispatched: false,
            corrected: false,
        });
        if locks.is_empty() {
            self.dispatch_step(now, fx);
        } else {
            // Sorted keys: two intents needing the same locks cannot deadlock.
            for key in locks.keys() {
                fx.push(Effect::Acquire {
                    key: key.clone(),
                    owner: self.owner(idx),
                    lease_ms: Self::lease_ms(&step),
                });
            }
        }
    }

    fn lock_granted(&mut self, key: String, token: u64, now: u64, fx: &mut Vec<Effect>) {
        let intent_id = self.intent.intent_id.clone();
        let Some(s) = &mut self.step else {
            // Not ours any more (withdrawn or moved on): nothing holds it for us.
            return;
        };
        match s.locks.get_mut(&key) {
            Some(t) => *t = Some(token),
            None => {
                fx.push(Effect::Release {
                    key,
                    owner: Owner {
                        intent_id,
                        step: s.index,
                    },
                });
                return;
            }
        }
        if !s.dispatched && s.locks.values().all(Option::is_some) {
            s.blocked_by = None;
            self.dispatch_step(now, fx);
        }
    }

    fn lock_queued(&mut self, key: String, holder: Owner, fx: &mut Vec<Effect>) {
        let total = self.total();
        let id = self.id().to_owned();
        let Some(s) = &mut self.step else { return };
        let who = holder.to_string();
        if s.blocked_by.as_deref() == Some(&who) {
            return; // said already
        }
        s.blocked_by = Some(who.clone());
        fx.push(Effect::Report(report(
            Phase::InProgress,
            CompletionState::InProgress,
            format!(
                "intent {id} step {}/{total} waiting on seed lock {key} held by {who}",
                s.index + 1
            ),
            Some(s.index),
        )));
    }

    fn command_id(&self, idx: usize, ghost: &str, kind: Kind, attempt: u32) -> String {
        let prefix = match kind {
            Kind::Main => "cmd",
            Kind::Check => "chk",
        };
        let round = if self.round == 0 {
            String::new()
        } else {
            format!("r{}.", self.round)
        };
        let generation = if self.generation == 0 {
            String::new()
        } else {
            format!("s{}.", base36(self.generation))
        };
        format!(
            "{prefix}.{}.{generation}{round}{}.{ghost}.{attempt}",
            self.intent.intent_id,
            idx + 1
        )
    }

    fn dispatch_effect(&self, idx: usize, o: &Outstanding) -> Effect {
        let step = &self.intent.steps[idx];
        Effect::Dispatch {
            ghost: o.ghost.clone(),
            kind: o.kind,
            command: Command {
                command_id: o.command.command_id.clone(),
                intent_id: self.intent.intent_id.clone(),
                ghost_id: o.ghost.clone(),
                seed_selector: step.seed.clone(),
                operation: o.command.operation.clone(),
                args: o.command.args.clone(),
                lock_token: o.command.lock_token,
                deadline_ms: Some(o.deadline_ms),
                attempt: Some(o.attempt),
                timestamp_ms: None,
                extra: vec![],
            },
        }
    }

    fn send(&mut self, ghost: &str, kind: Kind, attempt: u32, now: u64, fx: &mut Vec<Effect>) {
        let Some(s) = &self.step else { return };
        let idx = s.index;
        let step = &self.intent.steps[idx];
        let (operation, args) = match (kind, &step.check) {
            (Kind::Check, Some(c)) => (c.operation.clone(), c.args.clone()),
            _ => (step.operation.clone(), step.args.clone()),
        };
        let lock_token = s
            .locks
            .get(&lock::key(ghost, &step.seed))
            .copied()
            .flatten();
        let o = Outstanding {
            ghost: ghost.to_owned(),
            kind,
            attempt,
            deadline_ms: now.saturating_add(step.timeout_ms),
            command: CommandRecord {
                command_id: self.command_id(idx, ghost, kind, attempt),
                operation,
                args,
                lock_token,
            },
        };
        fx.push(self.dispatch_effect(idx, &o));
        if let Some(s) = &mut self.step {
            s.ghosts.insert(
                ghost.to_owned(),
                match kind {
                    Kind::Check => GhostProgress::Checking,
                    Kind::Main => GhostProgress::Running,
                },
            );
            s.outstanding.insert(o.command.command_id.clone(), o);
        }
    }

    fn dispatch_step(&mut self, now: u64, fx: &mut Vec<Effect>) {
        let Some(s) = &mut self.step else { return };
        s.dispatched = true;
        let idx = s.index;
        let ghosts = s.placement.clone();
        let has_check = self.intent.steps[idx].check.is_some();
        let kind = if has_check { Kind::Check } else { Kind::Main };
        for g in &ghosts {
            self.send(g, kind, 1, now, fx);
        }
        if self.round == 0 {
            fx.push(Effect::Report(report(
                Phase::InProgress,
                CompletionState::InProgress,
                format!(
                    "intent {} step {}/{} dispatched to {}",
                    self.id(),
                    idx + 1,
                    self.total(),
                    ghosts.join(", ")
                ),
                Some(idx),
            )));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_event(
        &mut self,
        ghost: String,
        command_id: String,
        event_id: String,
        outcome: Outcome,
        reason: Option<String>,
        timed_out: bool,
        now: u64,
        fleet: &FleetView,
        fx: &mut Vec<Effect>,
    ) {
        let Some(s) = &mut self.step else { return };
        let Some(o) = s.outstanding.remove(&command_id) else {
            return; // duplicate or late: changes nothing
        };
        let idx = s.index;
        let step = self.intent.steps[idx].clone();
        if o.ghost != ghost {
            // An event for this command from another Ghost: ignore it, keep waiting.
            s.outstanding.insert(command_id, o);
            return;
        }
        for key in s.locks.keys() {
            fx.push(Effect::Renew {
                key: key.clone(),
                owner: Owner {
                    intent_id: self.intent.intent_id.clone(),
                    step: idx,
                },
                lease_ms: Self::lease_ms(&step),
            });
        }
        match (o.kind, outcome) {
            (Kind::Check, Outcome::Success) => {
                s.ghosts.insert(ghost.clone(), GhostProgress::Done);
            }
            (Kind::Check, Outcome::Error) => {
                if self.round > 0 && !s.corrected {
                    s.corrected = true;
                    self.round_corrected = true;
                    let mut r = report(
                        Phase::InProgress,
                        CompletionState::Corrective,
                        format!(
                            "intent {} drift: step {}/{} check failed on {ghost}; correcting",
                            self.id(),
                            idx + 1,
                            self.total()
                        ),
                        Some(idx),
                    );
                    r.ghost_id = Some(ghost.clone());
                    r.command_id = Some(command_id.clone());
                    fx.push(Effect::Report(r));
                }
                self.send(&ghost, Kind::Main, 1, now, fx);
            }
            (Kind::Main, Outcome::Success) => {
                s.ghosts.insert(ghost.clone(), GhostProgress::Done);
            }
            (Kind::Main, Outcome::Error) => {
                let why = reason.unwrap_or_else(|| "seed reported an error".into());
                // The effect may have happened: running it again could do it twice, so
                // neither `retries` nor anything else repeats it; a person has to look.
                let unknown = if timed_out {
                    !fleet.idempotent(&ghost, &step.seed, &o.command.operation)
                } else {
                    ghost_says_effect_unknown(&why)
                };
                if unknown {
                    let why = format!(
                        "effect unknown: {why}{}; not retried (retries = {}): an operator must \
                         check {ghost} before running it again",
                        if timed_out {
                            format!(
                                ", and {} {} is not declared idempotent",
                                step.seed, o.command.operation
                            )
                        } else {
                            String::new()
                        },
                        step.retries
                    );
                    if step.continue_on_error {
                        // The intent goes on; the report history must still say it.
                        let mut r = report(
                            Phase::InProgress,
                            CompletionState::InProgress,
                            format!(
                                "intent {} step {}/{} on {ghost}: {why}",
                                self.intent.intent_id,
                                idx + 1,
                                self.intent.steps.len()
                            ),
                            Some(idx),
                        );
                        r.command_id = Some(command_id.clone());
                        r.ghost_id = Some(ghost.clone());
                        r.outcome = Some(Outcome::Error);
                        fx.push(Effect::Report(r));
                    }
                    s.ghosts.insert(ghost.clone(), GhostProgress::Failed(why));
                } else if o.attempt <= step.retries {
                    let mut r = report(
                        Phase::InProgress,
                        CompletionState::InProgress,
                        format!(
                            "intent {} step {}/{} attempt {} failed on {ghost} ({why}); retrying",
                            self.id(),
                            idx + 1,
                            self.total(),
                            o.attempt
                        ),
                        Some(idx),
                    );
                    r.command_id = Some(command_id.clone());
                    r.event_id = Some(event_id.clone());
                    r.ghost_id = Some(ghost.clone());
                    r.outcome = Some(Outcome::Error);
                    fx.push(Effect::Report(r));
                    self.send(&ghost, Kind::Main, o.attempt + 1, now, fx);
                    return;
                } else {
                    s.ghosts.insert(ghost.clone(), GhostProgress::Failed(why));
                }
            }
        }
        self.maybe_finish_step(Some((command_id, event_id, ghost, outcome)), now, fleet, fx);
    }

    fn maybe_finish_step(
        &mut self,
        last: Option<(String, String, String, Outcome)>,
        now: u64,
        fleet: &FleetView,
        fx: &mut Vec<Effect>,
    ) {
        let Some(s) = &self.step else { return };
        let done = s
            .ghosts
            .values()
            .all(|g| matches!(g, GhostProgress::Done | GhostProgress::Failed(_)));
        if !done || !s.outstanding.is_empty() {
            return;
        }
        let idx = s.index;
        let failed: Vec<(String, String)> = s
            .ghosts
            .iter()
            .filter_map(|(g, p)| match p {
                GhostProgress::Failed(why) => Some((g.clone(), why.clone())),
                _ => None,
            })
            .collect();
        self.release_all(fx);
        let step = &self.intent.steps[idx];
        let r = |phase, state, summary| {
            let mut r = report(phase, state, summary, Some(idx));
            if let Some((c, e, g, o)) = &last {
                r.command_id = Some(c.clone());
                r.event_id = Some(e.clone());
                r.ghost_id = Some(g.clone());
                r.outcome = Some(*o);
            }
            r
        };
        if !failed.is_empty() && !step.continue_on_error {
            let (g, why) = &failed[0];
            let summary = format!(
                "intent {} failed at step {}/{} on {g}: {why}",
                self.id(),
                idx + 1,
                self.total()
            );
            self.failure = Some(summary.clone());
            self.status = Status::Failed;
            self.step = None;
            fx.push(Effect::Report(r(
                Phase::Complete,
                CompletionState::Failed,
                summary,
            )));
            fx.push(Effect::Finished(Status::Failed));
            return;
        }
        if self.round == 0 {
            self.steps_done = idx + 1;
            let note = if failed.is_empty() {
                String::new()
            } else {
                format!(" ({} ghost(s) failed; continue_on_error)", failed.len())
            };
            if idx + 1 < self.total() {
                fx.push(Effect::Report(r(
                    Phase::InProgress,
                    CompletionState::InProgress,
                    format!(
                        "intent {} step {}/{} done{note}",
                        self.id(),
                        idx + 1,
                        self.total()
                    ),
                )));
            }
        }
        self.begin_step(idx + 1, now, fleet, fx);
    }

    fn complete_round(&mut self, now: u64, fx: &mut Vec<Effect>) {
        self.step = None;
        let first = self.round == 0;
        if first || self.round_corrected {
            let summary = if first {
                format!(
                    "intent {} satisfied: {} step(s) done",
                    self.id(),
                    self.total()
                )
            } else {
                format!("intent {} corrected and satisfied again", self.id())
            };
            fx.push(Effect::Report(report(
                Phase::Complete,
                CompletionState::Satisfied,
                summary,
                None,
            )));
        }
        self.status = Status::Satisfied;
        self.round_corrected = false;
        match self.intent.keep_ms {
            Some(k) => self.next_keep_ms = Some(now.saturating_add(k)),
            None => fx.push(Effect::Finished(Status::Satisfied)),
        }
    }

    fn fail(&mut self, idx: usize, why: String, fx: &mut Vec<Effect>) {
        self.release_all(fx);
        let summary = format!(
            "intent {} failed at step {}/{}: {why}",
            self.id(),
            idx + 1,
            self.total()
        );
        self.failure = Some(summary.clone());
        self.status = Status::Failed;
        self.step = None;
        fx.push(Effect::Report(report(
            Phase::Complete,
            CompletionState::Failed,
            summary,
            Some(idx),
        )));
        fx.push(Effect::Finished(Status::Failed));
    }

    fn release_all(&mut self, fx: &mut Vec<Effect>) {
        if let Some(s) = &mut self.step {
            let owner = Owner {
                intent_id: self.intent.intent_id.clone(),
                step: s.index,
            };
            for key in std::mem::take(&mut s.locks).into_keys() {
                fx.push(Effect::Release {
                    key,
                    owner: owner.clone(),
                });
            }
        }
    }

    fn tick(&mut self, now: u64, fleet: &FleetView, fx: &mut Vec<Effect>) {
        // A standing intent's next re-check.
        if self.status == Status::Satisfied && self.step.is_none() {
            if let Some(at) = self.next_keep_ms {
                if now >= at {
                    self.round += 1;
                    self.next_keep_ms = None;
                    self.begin_step(0, now, fleet, fx);
                }
            }
            return;
        }
        let Some(s) = &self.step else { return };
        let idx = s.index;
        let timeout = self.intent.steps[idx].timeout_ms;
        if s.waiting_placement.is_some() {
            if now.saturating_sub(s.started_ms) >= timeout {
                let why = s.waiting_placement.clone().unwrap_or_default();
                self.fail(idx, format!("no placement within {timeout}ms: {why}"), fx);
            } else {
                self.begin_step(idx, now, fleet, fx);
            }
            return;
        }
        let overdue: Vec<(String, Outstanding)> = s
            .outstanding
            .iter()
            .filter(|(_, o)| now >= o.deadline_ms)
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (cid, o) in overdue {
            let why = format!(
                "no event for {cid} within {timeout}ms (ghost {} {})",
                o.ghost,
                if fleet.ghosts.get(&o.ghost).is_some_and(|g| g.connected) {
                    "connected"
                } else {
                    "disconnected"
                }
            );
            // A timed-out check counts as "not satisfied"; a timed-out attempt as an error.
            self.on_event(
                o.ghost.clone(),
                cid.clone(),
                String::new(),
                Outcome::Error,
                Some(why),
                true,
                now,
                fleet,
                fx,
            );
            if self.status.is_terminal() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::parse;

    fn fleet(ghosts: &[&str]) -> FleetView {
        let mut f = FleetView::default();
        for g in ghosts {
            let mut v = GhostView {
                connected: true,
                ..Default::default()
            };
            for s in ["seed.kv", "seed.flow"] {
                v.seeds.insert(s.into(), None);
            }
            for (s, o) in [
                ("seed.kv", "put"),
                ("seed.kv", "get"),
                ("seed.flow", "status"),
            ] {
                v.idempotent.insert((s.into(), o.into()));
            }
            f.ghosts.insert(g.to_string(), v);
        }
        f
    }

    fn plan(steps: &str) -> Plan {
        let text = format!(
            "intent_id=\"i1\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n{steps}"
        );
        Plan::new(parse(&text, || "x".into()).unwrap(), 0)
    }

    fn dispatched(fx: &[Effect]) -> Vec<(String, String)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Dispatch { ghost, command, .. } => {
                    Some((ghost.clone(), command.command_id.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn states(fx: &[Effect]) -> Vec<CompletionState> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Report(r) => Some(r.state),
                _ => None,
            })
            .collect()
    }

    fn ev(g: &str, cid: &str, ok: bool) -> Input {
        Input::Event {
            ghost: g.into(),
            command_id: cid.into(),
            event_id: format!("evt.{cid}"),
            outcome: if ok { Outcome::Success } else { Outcome::Error },
            reason: (!ok).then(|| "boom".into()),
        }
    }

    const TWO: &str = "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"status\"\non=\"one\"\n";

    #[test]
    fn wakeups_follow_deadlines_and_keep() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\ntimeout=\"3s\"\n");
        assert_eq!(p.next_wakeup(0, 250), None);
        p.handle(Input::Start, 100, &f);
        assert_eq!(p.next_wakeup(100, 250), Some(3100));
        p.handle(ev("a", "cmd.i1.1.a.1", true), 200, &f);
        assert_eq!(p.next_wakeup(200, 250), None, "finished");
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n");
        p.handle(Input::Start, 0, &fleet(&[]));
        assert_eq!(p.next_wakeup(10, 250), Some(260), "placement retry");
    }

    #[test]
    fn steps_run_in_order_and_fan_out() {
        let f = fleet(&["a", "b", "c"]);
        let mut p = plan(TWO);
        let fx = p.handle(Input::Start, 0, &f);
        let d = dispatched(&fx);
        assert_eq!(d.len(), 3, "step 1 on every ghost in scope: {d:?}");
        assert_eq!(d[0], ("a".into(), "cmd.i1.1.a.1".into()));
        // Step 2 waits for all three.
        assert!(dispatched(&p.handle(ev("a", "cmd.i1.1.a.1", true), 1, &f)).is_empty());
        assert!(dispatched(&p.handle(ev("b", "cmd.i1.1.b.1", true), 1, &f)).is_empty());
        let fx = p.handle(ev("c", "cmd.i1.1.c.1", true), 2, &f);
        let d = dispatched(&fx);
        assert_eq!(d.len(), 1, "on = one");
        assert_eq!(p.steps_done, 1);
        let (g, cid) = d[0].clone();
        let fx = p.handle(ev(&g, &cid, true), 3, &f);
        assert_eq!(p.status, Status::Satisfied);
        assert_eq!(states(&fx).last(), Some(&CompletionState::Satisfied));
        assert!(fx.contains(&Effect::Finished(Status::Satisfied)));
    }

    #[test]
    fn one_prefers_the_local_ghost_and_explicit_ghost_is_honoured() {
        let mut f = fleet(&["a", "b", "local"]);
        f.local = Some("local".into());
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\non=\"one\"\n");
        assert_eq!(dispatched(&p.handle(Input::Start, 0, &f))[0].0, "local");
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\non=\"b\"\n");
        assert_eq!(dispatched(&p.handle(Input::Start, 0, &f))[0].0, "b");
    }

    #[test]
    fn failure_stops_the_plan_unless_continue_on_error() {
        let f = fleet(&["a"]);
        let mut p = plan(TWO);
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", false), 1, &f);
        assert_eq!(p.status, Status::Failed);
        assert!(dispatched(&fx).is_empty(), "later steps are not dispatched");
        assert_eq!(states(&fx), [CompletionState::Failed]);
        assert!(p.handle(Input::Tick, 100_000, &f).is_empty(), "terminal");

        let mut p = plan(&TWO.replacen(
            "operation=\"put\"",
            "operation=\"put\"\ncontinue_on_error=true",
            1,
        ));
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", false), 1, &f);
        assert_eq!(dispatched(&fx).len(), 1, "next step runs");
        assert_eq!(p.status, Status::Active);
    }

    #[test]
    fn retries_use_new_command_ids_and_are_bounded() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nretries=2\n");
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", false), 1, &f);
        assert_eq!(
            dispatched(&fx),
            [("a".to_string(), "cmd.i1.1.a.2".to_string())]
        );
        let fx = p.handle(ev("a", "cmd.i1.1.a.2", false), 2, &f);
        assert_eq!(dispatched(&fx)[0].1, "cmd.i1.1.a.3");
        let fx = p.handle(ev("a", "cmd.i1.1.a.3", false), 3, &f);
        assert!(dispatched(&fx).is_empty());
        assert_eq!(p.status, Status::Failed);
    }

    #[test]
    fn attempts_time_out_and_duplicates_change_nothing() {
        let f = fleet(&["a"]);
        let mut p =
            plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\ntimeout=\"1s\"\nretries=1\n");
        p.handle(Input::Start, 0, &f);
        assert!(p.handle(Input::Tick, 999, &f).is_empty());
        let fx = p.handle(Input::Tick, 1000, &f);
        assert_eq!(
            dispatched(&fx)[0].1,
            "cmd.i1.1.a.2",
            "timeout counts as a failed attempt"
        );
        // The late event of attempt 1 changes nothing.
        assert!(p.handle(ev("a", "cmd.i1.1.a.1", true), 1001, &f).is_empty());
        let fx = p.handle(ev("a", "cmd.i1.1.a.2", true), 1002, &f);
        assert_eq!(p.status, Status::Satisfied);
        assert_eq!(states(&fx), [CompletionState::Satisfied]);
        assert!(
            p.handle(ev("a", "cmd.i1.1.a.2", true), 1003, &f).is_empty(),
            "duplicate"
        );
    }

    #[test]
    fn an_unknown_effect_is_never_retried() {
        // The Ghost restarted mid-command and says the effect is unknown: no retry.
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nretries=3\n");
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(
            Input::Event {
                ghost: "a".into(),
                command_id: "cmd.i1.1.a.1".into(),
                event_id: "evt.cmd.i1.1.a.1".into(),
                outcome: Outcome::Error,
                reason: Some("ghost restarted while command cmd.i1.1.a.1 was executing (seed.kv put); the operation is not idempotent, so it was not run again and its effect is unknown".into()),
            },
            1,
            &f,
        );
        assert!(dispatched(&fx).is_empty(), "not retried: {fx:?}");
        assert_eq!(p.status, Status::Failed);
        let failure = p.failure.clone().unwrap();
        assert!(
            failure.contains("effect unknown") && failure.contains("an operator must check a"),
            "{failure}"
        );

        // An attempt of an operation not declared idempotent times out: effect unknown too.
        let mut p =
            plan("[[step]]\nseed=\"seed.kv\"\noperation=\"append\"\ntimeout=\"1s\"\nretries=2\n");
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(Input::Tick, 1000, &f);
        assert!(dispatched(&fx).is_empty(), "not retried: {fx:?}");
        assert_eq!(p.status, Status::Failed);
        let failure = p.failure.clone().unwrap();
        assert!(
            failure.contains("effect unknown: no event for cmd.i1.1.a.1")
                && failure.contains("seed.kv append is not declared idempotent"),
            "{failure}"
        );

        // With continue_on_error the intent goes on, and a report still says it.
        let mut p = plan(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"append\"\ntimeout=\"1s\"\ncontinue_on_error=true\n[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\n",
        );
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(Input::Tick, 1000, &f);
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Report(r)
                if r.summary.contains("step 1/2 on a: effect unknown")
                    && r.ghost_id.as_deref() == Some("a"))),
            "{fx:?}"
        );
        assert_eq!(dispatched(&fx)[0].1, "cmd.i1.2.a.1", "step 2 runs");

        // A plain error of a non-idempotent operation (it did not run) is still retried.
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"append\"\nretries=1\n");
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", false), 1, &f);
        assert_eq!(dispatched(&fx)[0].1, "cmd.i1.1.a.2");
    }

    #[test]
    fn blocking_steps_wait_for_every_lock_and_carry_tokens() {
        let f = fleet(&["a", "b"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nblocking=true\n");
        let fx = p.handle(Input::Start, 0, &f);
        let keys: Vec<_> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Acquire { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(keys, ["a::seed.kv", "b::seed.kv"]);
        assert!(dispatched(&fx).is_empty());
        let fx = p.handle(
            Input::LockQueued {
                key: "b::seed.kv".into(),
                holder: Owner {
                    intent_id: "other".into(),
                    step: 0,
                },
            },
            1,
            &f,
        );
        assert_eq!(states(&fx), [CompletionState::InProgress]);
        let Effect::Report(r) = &fx[0] else { panic!() };
        assert!(r.summary.contains("held by other/step 1"), "{}", r.summary);
        assert!(dispatched(&p.handle(
            Input::LockGranted {
                key: "a::seed.kv".into(),
                token: 7
            },
            2,
            &f
        ))
        .is_empty());
        let fx = p.handle(
            Input::LockGranted {
                key: "b::seed.kv".into(),
                token: 3,
            },
            3,
            &f,
        );
        let tokens: Vec<_> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Dispatch { command, .. } => command.lock_token,
                _ => None,
            })
            .collect();
        assert_eq!(tokens, [7, 3]);
        p.handle(ev("a", "cmd.i1.1.a.1", true), 4, &f);
        let fx = p.handle(ev("b", "cmd.i1.1.b.1", true), 5, &f);
        let released: Vec<_> = fx
            .iter()
            .filter(|e| matches!(e, Effect::Release { .. }))
            .collect();
        assert_eq!(released.len(), 2, "locks released when the step ends");
    }

    #[test]
    fn only_the_current_step_needs_its_locks() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nblocking=true\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nblocking=true\n");
        p.handle(Input::Start, 0, &f);
        let o = |step| Owner {
            intent_id: "i1".into(),
            step,
        };
        assert!(p.needs_lock(&o(0), "a::seed.kv"));
        assert!(!p.needs_lock(&o(0), "b::seed.kv"), "not its key");
        p.handle(
            Input::LockGranted {
                key: "a::seed.kv".into(),
                token: 1,
            },
            1,
            &f,
        );
        p.handle(ev("a", "cmd.i1.1.a.1", true), 2, &f);
        assert!(!p.needs_lock(&o(0), "a::seed.kv"), "step 1 has finished");
        assert!(p.needs_lock(&o(1), "a::seed.kv"), "step 2 waits for it");
        let other = Owner {
            intent_id: "i2".into(),
            step: 1,
        };
        assert!(!p.needs_lock(&other, "a::seed.kv"));
    }

    #[test]
    fn withdraw_releases_locks_and_stops() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nblocking=true\n");
        p.handle(Input::Start, 0, &f);
        p.handle(
            Input::LockGranted {
                key: "a::seed.kv".into(),
                token: 1,
            },
            1,
            &f,
        );
        let fx = p.handle(
            Input::Withdraw {
                why: "operator".into(),
            },
            2,
            &f,
        );
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Release { key, .. } if key == "a::seed.kv")));
        assert!(fx.contains(&Effect::Finished(Status::Withdrawn)));
        assert!(p.handle(ev("a", "cmd.i1.1.a.1", true), 3, &f).is_empty());
    }

    #[test]
    fn waits_for_placement_then_fails_at_timeout() {
        let empty = fleet(&[]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\ntimeout=\"2s\"\n");
        let fx = p.handle(Input::Start, 0, &empty);
        assert!(dispatched(&fx).is_empty());
        assert!(
            p.handle(Input::Tick, 500, &empty).is_empty(),
            "reported once"
        );
        let f = fleet(&["a"]);
        let fx = p.handle(Input::GhostUp("a".into()), 600, &f);
        assert_eq!(dispatched(&fx).len(), 1);

        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\ntimeout=\"2s\"\n");
        p.handle(Input::Start, 0, &empty);
        p.handle(Input::Tick, 2000, &empty);
        assert_eq!(p.status, Status::Failed);
    }

    #[test]
    fn allowlist_refuses_undeclared_operations() {
        let mut f = fleet(&["a"]);
        f.ghosts
            .get_mut("a")
            .unwrap()
            .seeds
            .insert("seed.kv".into(), Some(vec!["get".into()]));
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"drop\"\ntimeout=\"1s\"\n");
        let fx = p.handle(Input::Start, 0, &f);
        let Effect::Report(r) = &fx[1] else {
            panic!("{fx:?}")
        };
        assert!(
            r.summary.contains("does not declare operation \"drop\""),
            "{}",
            r.summary
        );
        assert!(dispatched(&fx).is_empty());
    }

    #[test]
    fn each_submission_has_its_own_command_ids_and_keeps_them_across_a_restart() {
        let f = fleet(&["a"]);
        let text = "intent_id=\"deploy-42\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n";
        let intent = parse(text, || "x".into()).unwrap();
        let mut first = Plan::new(intent.clone(), 1_700_000_000_000);
        let mut again = Plan::new(intent, 1_700_000_000_001);
        let a = dispatched(&first.handle(Input::Start, 0, &f));
        let b = dispatched(&again.handle(Input::Start, 0, &f));
        assert_eq!(
            a[0].1,
            format!("cmd.deploy-42.s{}.1.a.1", base36(1_700_000_000_000))
        );
        assert_ne!(a, b, "a reused intent_id gets new command ids");
        // The same submission after a restart re-sends the same id (the Ghost dedupes it).
        let json = serde_json::to_string(&again).unwrap();
        let mut restored: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(dispatched(&restored.resume(5, &f)), b);
        // A plan persisted before generations existed keeps its old ids.
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("generation");
        let old: Plan = serde_json::from_value(v).unwrap();
        assert_eq!(old.generation, 0);
        assert_eq!(old.command_id(0, "a", Kind::Main, 1), "cmd.deploy-42.1.a.1");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn ghost_reconnect_resends_the_same_command() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n");
        let first = dispatched(&p.handle(Input::Start, 0, &f));
        let again = dispatched(&p.handle(Input::GhostUp("a".into()), 5, &f));
        assert_eq!(first, again);
        // And after a restart from the persisted plan.
        let mut restored: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(dispatched(&restored.resume(6, &f)), first);
    }

    #[test]
    fn standing_intent_checks_and_corrects_drift() {
        let f = fleet(&["a"]);
        let mut p = plan("keep=\"10s\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\ncheck={operation=\"get\",args={key=\"k\"}}\n");
        let fx = p.handle(Input::Start, 0, &f);
        assert_eq!(dispatched(&fx)[0].1, "chk.i1.1.a.1", "check first");
        let fx = p.handle(ev("a", "chk.i1.1.a.1", false), 1, &f);
        assert_eq!(
            dispatched(&fx)[0].1,
            "cmd.i1.1.a.1",
            "not satisfied: run it"
        );
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", true), 2, &f);
        assert_eq!(p.status, Status::Satisfied);
        assert!(!fx.iter().any(|e| matches!(e, Effect::Finished(_))), "kept");
        assert!(p.handle(Input::Tick, 5000, &f).is_empty());
        // Re-check finds things fine: no report.
        let fx = p.handle(Input::Tick, 10_002, &f);
        assert_eq!(dispatched(&fx)[0].1, "chk.i1.r1.1.a.1");
        let fx = p.handle(ev("a", "chk.i1.r1.1.a.1", true), 10_003, &f);
        assert!(states(&fx).is_empty());
        // Next round: drift.
        let fx = p.handle(Input::Tick, 20_003, &f);
        let cid = dispatched(&fx)[0].1.clone();
        let fx = p.handle(ev("a", &cid, false), 20_004, &f);
        assert_eq!(states(&fx), [CompletionState::Corrective]);
        assert_eq!(dispatched(&fx)[0].1, "cmd.i1.r2.1.a.1");
        let fx = p.handle(ev("a", "cmd.i1.r2.1.a.1", true), 20_005, &f);
        assert_eq!(states(&fx), [CompletionState::Satisfied]);
    }
}
