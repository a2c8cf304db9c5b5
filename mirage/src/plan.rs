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

pub use crate::fleet::{FleetView, GhostView};
use crate::intent::{Intent, Offline, On, Step};
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

/// The Ghost's latest observation of `seed` (or of one of its instances, `seed/name`)
/// lists `uri` among its comma-separated `uri` values.
fn advertises(v: &GhostView, seed: &str, uri: &str) -> bool {
    v.observed.iter().any(|(key, state)| {
        let of_seed = key == seed
            || key
                .strip_prefix(seed)
                .is_some_and(|rest| rest.starts_with('/'));
        of_seed
            && state
                .get("uri")
                .is_some_and(|us| us.split(',').any(|x| x.trim() == uri))
    })
}

/// Most URIs one `{uris:SEED}` argument expands to, and its longest expansion.
pub const MAX_ARG_URIS: usize = 64;
pub const MAX_ARG_URIS_BYTES: usize = 8 * 1024;

/// A step argument whose whole value is `{uris:SEED}` stands for every URI that connected
/// Ghosts in the intent's scope advertise for SEED in their latest observations (sorted,
/// comma-separated, deduplicated): how a step hands one Ghost's entrypoints to the others
/// (config/plans/kdht.toml joins DHT nodes through each other). `Ok(None)`: no placeholder.
/// Err: nobody advertises one yet (the step waits for a placement like any other).
pub fn resolve_args(
    args: &shared::envelope::Args,
    intent: &Intent,
    fleet: &FleetView,
) -> Result<Option<shared::envelope::Args>, String> {
    let seed_of = |v: &str| {
        v.trim()
            .strip_prefix("{uris:")
            .and_then(|r| r.strip_suffix('}'))
            .map(|s| s.trim().to_owned())
    };
    if !args.values().any(|v| seed_of(v).is_some()) {
        return Ok(None);
    }
    let mut out = args.clone();
    for v in out.values_mut() {
        let Some(seed) = seed_of(v) else { continue };
        let mut uris = std::collections::BTreeSet::new();
        for (g, view) in &fleet.ghosts {
            if !intent.in_scope(g) || !view.connected {
                continue;
            }
            for (key, state) in &view.observed {
                let of_seed = *key == seed
                    || key
                        .strip_prefix(seed.as_str())
                        .is_some_and(|rest| rest.starts_with('/'));
                if let Some(us) = state.get("uri").filter(|_| of_seed) {
                    uris.extend(
                        us.split(',')
                            .map(str::trim)
                            .filter(|u| !u.is_empty())
                            .map(str::to_owned),
                    );
                }
            }
        }
        if uris.is_empty() {
            return Err(format!(
                "no connected ghost in {} advertises a URI for {seed} yet",
                intent.target_scope
            ));
        }
        let joined = uris
            .into_iter()
            .take(MAX_ARG_URIS)
            .collect::<Vec<_>>()
            .join(",");
        if joined.len() > MAX_ARG_URIS_BYTES {
            return Err(format!(
                "the URIs advertised for {seed} exceed {MAX_ARG_URIS_BYTES} bytes"
            ));
        }
        *v = joined;
    }
    Ok(Some(out))
}

/// At submit: refuse a step whose seed or operation no known Ghost in scope declares, rather
/// than let it wait for a placement until its timeout. Known means in the registry, connected
/// or not (a Ghost that is offline now is remembered with its registration). A step is
/// accepted when no Ghost in scope is known yet (a fleet still coming up, a Mirage just
/// restarted), or when one in scope has not said what it hosts (an unreached
/// `[[ghost_admin]]` Ghost, a Ghost that registers no seed list): those may still host it.
/// Err: (step index, what is missing, which Ghosts were considered).
pub fn submit_check(intent: &Intent, fleet: &FleetView) -> Result<(), (usize, String)> {
    const NAMED: usize = 8;
    for (idx, s) in intent.steps.iter().enumerate() {
        let considered: Vec<(&String, &GhostView)> = fleet
            .ghosts
            .iter()
            .filter(|(g, _)| intent.in_scope(g))
            .filter(|(g, _)| match &s.on {
                On::Ghost(only) => *g == only,
                _ => true,
            })
            .collect();
        if considered.is_empty() || considered.iter().any(|(_, v)| v.seeds.is_empty()) {
            continue;
        }
        let mut ops = vec![s.operation.as_str()];
        if let Some(c) = s.check.as_ref().filter(|c| c.sends_command()) {
            ops.push(c.operation.as_str());
        }
        let hosts_seed = considered
            .iter()
            .any(|(_, v)| v.seeds.contains_key(&s.seed));
        let missing = if !hosts_seed {
            Some(format!("seed {:?}", s.seed))
        } else {
            ops.iter()
                .find(|op| {
                    !considered.iter().any(|(_, v)| match v.seeds.get(&s.seed) {
                        Some(None) => true,
                        Some(Some(declared)) => declared.iter().any(|d| d == *op),
                        None => false,
                    })
                })
                .map(|op| format!("operation {op:?} of seed {:?}", s.seed))
        };
        let Some(missing) = missing else { continue };
        let mut names: Vec<String> = considered
            .iter()
            .take(NAMED)
            .map(|(g, v)| {
                let state = if v.connected { "connected" } else { "offline" };
                let declared = match v.seeds.get(&s.seed) {
                    Some(Some(o)) => format!("{} declares {}", s.seed, o.join(", ")),
                    Some(None) => format!("hosts {}", s.seed),
                    None => format!(
                        "seeds {}",
                        v.seeds.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
                format!("{g} ({state}; {declared})")
            })
            .collect();
        if considered.len() > NAMED {
            names.push(format!("and {} more", considered.len() - NAMED));
        }
        let scope = match &s.on {
            On::Ghost(g) => format!("{g} in {}", intent.target_scope),
            _ => intent.target_scope.clone(),
        };
        return Err((
            idx,
            format!(
                "step {}/{}: no known Ghost in {scope} declares {missing}; considered: {}",
                idx + 1,
                intent.steps.len(),
                names.join("; ")
            ),
        ));
    }
    Ok(())
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
    /// Tell this plan when `ghost` comes back (a Ghost it owes a catch-up).
    Watch {
        ghost: String,
    },
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
        /// What the seed printed, already bounded (see [`Output::from_bytes`]).
        output: Option<Box<Output>>,
    },
    GhostUp(String),
    Withdraw {
        why: String,
    },
}

/// Per-Ghost results one intent keeps (beyond it they are counted in `results_dropped`).
pub const RESULTS_PER_INTENT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GhostOutcome {
    Done,
    Failed,
    /// Offline at placement; `offline = "skip"`.
    OfflineSkipped,
    /// Offline at placement; `offline = "fail"`.
    OfflineFailed,
    /// Offline at placement; `offline = "catch_up"`: runs when it comes back.
    CatchUpPending,
    /// Ran the step after coming back.
    CaughtUp,
    /// Ran the step after coming back, and it failed.
    CatchUpFailed,
}

/// One Ghost's result of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhostResult {
    pub step: usize,
    pub ghost: String,
    pub result: GhostOutcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Per stream per command: the first bytes of stdout and of stderr kept.
pub const OUTPUT_MAX_BYTES: usize = 4096;
/// Commands whose output one intent keeps (the latest; older ones are counted as dropped).
pub const OUTPUTS_PER_INTENT: usize = 32;

/// A command's output as the Ghost put it in its event (seed.result stdout/stderr, ext
/// fields 401/402), bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<u32>,
    /// Bytes the seed printed; more than kept means the text was cut.
    pub stdout_bytes: usize,
    pub stderr_bytes: usize,
}

/// Lossy UTF-8 of at most `max` bytes of `b`, cut on a character boundary.
pub fn bounded_text(b: &[u8], max: usize) -> String {
    let mut cut = b.len().min(max);
    // A multi-byte character split at the cut would turn into U+FFFD; step back to its start.
    while cut > 0 && cut < b.len() && (b[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    String::from_utf8_lossy(&b[..cut]).into_owned()
}

impl Output {
    /// None when the event carried no output at all.
    pub fn from_bytes(
        stdout: Option<&[u8]>,
        stderr: Option<&[u8]>,
        exit_code: Option<u32>,
    ) -> Option<Output> {
        let (o, e) = (stdout.unwrap_or_default(), stderr.unwrap_or_default());
        if o.is_empty() && e.is_empty() {
            return None;
        }
        Some(Output {
            stdout: bounded_text(o, OUTPUT_MAX_BYTES),
            stderr: bounded_text(e, OUTPUT_MAX_BYTES),
            exit_code,
            stdout_bytes: o.len(),
            stderr_bytes: e.len(),
        })
    }
}

/// One command's output, kept with the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    pub step: usize,
    pub round: u32,
    pub ghost: String,
    pub command_id: String,
    pub operation: String,
    pub kind: Kind,
    pub outcome: Outcome,
    pub at_ms: u64,
    #[serde(flatten)]
    pub output: Output,
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
    /// Ghosts in scope hosting the seed but offline when an `on = "all"` step was placed.
    #[serde(default)]
    pub offline: Vec<String>,
    /// The step's args with `{uris:SEED}` expanded when it was placed (None: as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_args: Option<shared::envelope::Args>,
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
    /// Withdrawn while a blocking step's commands ran: the status stays `Active` (so a
    /// restart resumes it and keeps its locks) until they end, by event or attempt deadline;
    /// then the locks go and the plan ends `Withdrawn`. Nothing new is sent meanwhile.
    #[serde(default)]
    pub withdrawing: Option<String>,
    /// The latest commands' output, at most [`OUTPUTS_PER_INTENT`], oldest first.
    #[serde(default)]
    pub outputs: std::collections::VecDeque<CommandOutput>,
    /// Outputs dropped to keep that bound.
    #[serde(default)]
    pub outputs_dropped: u64,
    /// Per-Ghost results of finished steps, at most [`RESULTS_PER_INTENT`].
    #[serde(default)]
    pub results: Vec<GhostResult>,
    #[serde(default)]
    pub results_dropped: u64,
    /// Ghost → steps it missed while offline (`offline = "catch_up"`), run when it is back.
    #[serde(default)]
    pub catch_up: BTreeMap<String, Vec<usize>>,
    /// The Ghost whose catch-up pass runs now.
    #[serde(default)]
    pub catching: Option<String>,
    /// Observed checks "sent" while handling this input: (ghost, command_id), answered from
    /// the fleet's observations before `handle` returns, so none outlives one input.
    #[serde(skip)]
    pub local_checks: Vec<(String, String)>,
}

/// The observation an observed check reads: the step's seed, or its instance named by the
/// step's `name` argument (seed.service, seed.redis) — `seed.service/web`.
pub fn observed_key(step: &Step) -> String {
    match step.args.get("name").map(|n| n.trim()) {
        Some(n) if !n.is_empty() => format!("{}/{n}", step.seed),
        _ => step.seed.clone(),
    }
}

/// An observed check against a Ghost's observations: Ok where every wanted value is
/// observed, else why not (the drift, as it will read in the report).
pub fn observed_check(
    want: &BTreeMap<String, String>,
    key: &str,
    ghost: Option<&GhostView>,
) -> Result<(), String> {
    let Some(got) = ghost.and_then(|g| g.observed.get(key)) else {
        return Err(format!("no observation of {key}"));
    };
    let differ: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k} is {:?}, want {v:?}",
                got.get(k).map(String::as_str).unwrap_or("unset")
            )
        })
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!("observed {key}: {}", differ.join(", ")))
    }
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
pub fn base36(mut n: u64) -> String {
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
            withdrawing: None,
            outputs: Default::default(),
            outputs_dropped: 0,
            local_checks: Vec::new(),
            results: Vec::new(),
            results_dropped: 0,
            catch_up: BTreeMap::new(),
            catching: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.intent.intent_id
    }

    fn total(&self) -> usize {
        self.intent.steps.len()
    }

    /// The lock owner of `step`: the first step of its lock set (steps that hand their locks
    /// on, `hold_locks`, share one owner, so the queues see one holder throughout).
    fn owner(&self, step: usize) -> Owner {
        Owner {
            intent_id: self.intent.intent_id.clone(),
            step: lock::set_start(step, |j| {
                self.intent.steps.get(j).is_some_and(|s| s.hold_locks)
            }),
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
                .is_some_and(|s| self.owner(s.index) == *owner && s.locks.contains_key(key))
    }

    /// Commands this plan is waiting on (for routing after a restart).
    pub fn outstanding(&self) -> impl Iterator<Item = (&String, &Outstanding)> {
        self.step.iter().flat_map(|s| s.outstanding.iter())
    }

    pub fn handle(&mut self, input: Input, now: u64, fleet: &FleetView) -> Vec<Effect> {
        let mut fx = self.handle_input(input, now, fleet);
        // Observed checks sent meanwhile are answered here, from the fleet's observations;
        // answering one may start the next step and so send more.
        while !self.local_checks.is_empty() {
            let (ghost, command_id) = self.local_checks.remove(0);
            let Some(s) = &self.step else {
                self.local_checks.clear();
                break;
            };
            let step = &self.intent.steps[s.index];
            let Some(c) = step.check.as_ref() else {
                continue;
            };
            let key = observed_key(step);
            let checked = match &c.raft_keep {
                Some(k) => crate::raft_keep::check(k, &self.intent, fleet, now),
                None => observed_check(&c.observed, &key, fleet.ghosts.get(&ghost)),
            };
            let (outcome, reason) = match checked {
                Ok(()) => (Outcome::Success, None),
                Err(why) => (Outcome::Error, Some(why)),
            };
            let event_id = format!("{command_id}.observed");
            self.on_event(
                ghost, command_id, event_id, outcome, reason, false, now, fleet, &mut fx,
            );
        }
        fx
    }

    fn handle_input(&mut self, input: Input, now: u64, fleet: &FleetView) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.status.is_terminal() {
            return fx;
        }
        if self.withdrawing.is_some() {
            self.drain(input, now, &mut fx);
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
                output,
            } => {
                let (outcome, reason) =
                    self.check_content(&ghost, &command_id, outcome, reason, output.as_deref());
                self.keep_output(&ghost, &command_id, outcome, output, now);
                self.on_event(
                    ghost, command_id, event_id, outcome, reason, false, now, fleet, &mut fx,
                )
            }
            Input::GhostUp(g) => {
                if self.step.is_none() && self.status == Status::Satisfied {
                    // Back, and owed a catch-up: run the steps it missed.
                    self.next_catch_up(now, fleet, &mut fx);
                    return fx;
                }
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
                // A running blocking command keeps its seed lock until it ends: handing the
                // lock on now would let the next holder's command run beside it (a higher
                // fencing token stops only commands sent later, not one already running).
                let running: Vec<String> = self
                    .step
                    .iter()
                    .filter(|s| s.locks.values().any(Option::is_some))
                    .flat_map(|s| s.outstanding.keys().cloned())
                    .collect();
                if !running.is_empty() {
                    let keys: Vec<String> = self
                        .step
                        .iter()
                        .flat_map(|s| s.locks.keys().cloned())
                        .collect();
                    let until = self
                        .step
                        .iter()
                        .flat_map(|s| s.outstanding.values().map(|o| o.deadline_ms))
                        .max()
                        .unwrap_or(now);
                    fx.push(Effect::Report(report(
                        Phase::InProgress,
                        CompletionState::InProgress,
                        format!(
                            "intent {} withdrawing: {why}; seed lock(s) {} kept until {} ends \
                             (its event, or its attempt timeout in {} ms)",
                            self.id(),
                            keys.join(", "),
                            running.join(", "),
                            until.saturating_sub(now)
                        ),
                        self.step.as_ref().map(|s| s.index),
                    )));
                    self.withdrawing = Some(why);
                    return fx;
                }
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

    /// Ghosts in scope that host the step's seed but are offline (`on = "all"`, first pass).
    fn offline_hosts(&self, idx: usize, fleet: &FleetView) -> Vec<String> {
        let s = &self.intent.steps[idx];
        if s.on != On::All || self.catching.is_some() || self.round > 0 {
            return vec![];
        }
        fleet
            .ghosts
            .iter()
            .filter(|(g, v)| {
                !v.connected
                    && self.intent.in_scope(g)
                    && fleet.hosts(g, &s.seed, &s.operation) == Ok(true)
            })
            .map(|(g, _)| g.clone())
            .collect()
    }

    fn record(&mut self, step: usize, ghost: &str, result: GhostOutcome, detail: String) {
        if self.results.len() >= RESULTS_PER_INTENT {
            self.results_dropped += 1;
            return;
        }
        self.results.push(GhostResult {
            step,
            ghost: ghost.to_owned(),
            result,
            detail,
        });
    }

    /// Starts the catch-up pass of a Ghost that is owed one and connected now, if any.
    fn next_catch_up(&mut self, now: u64, fleet: &FleetView, fx: &mut Vec<Effect>) {
        let Some(g) = self
            .catch_up
            .keys()
            .find(|g| fleet.ghosts.get(*g).is_some_and(|v| v.connected))
            .cloned()
        else {
            return;
        };
        let steps: Vec<String> = self.catch_up[&g]
            .iter()
            .map(|i| (i + 1).to_string())
            .collect();
        fx.push(Effect::Report(report(
            Phase::InProgress,
            CompletionState::InProgress,
            format!(
                "intent {}: {g} is back; catching up step(s) {}",
                self.id(),
                steps.join(", ")
            ),
            None,
        )));
        self.catching = Some(g);
        self.begin_step(0, now, fleet, fx);
    }

    /// A successful check with `expect` passes only if its output is the desired content:
    /// otherwise it counts as a failed check (drift), and the operation runs.
    fn check_content(
        &self,
        ghost: &str,
        command_id: &str,
        outcome: Outcome,
        reason: Option<String>,
        output: Option<&Output>,
    ) -> (Outcome, Option<String>) {
        let Some(s) = &self.step else {
            return (outcome, reason);
        };
        let expect = self.intent.steps[s.index]
            .check
            .as_ref()
            .and_then(|c| c.expect.as_deref());
        let is_check = s
            .outstanding
            .get(command_id)
            .is_some_and(|o| o.ghost == ghost && o.kind == Kind::Check);
        let (Some(want), true, Outcome::Success) = (expect, is_check, outcome) else {
            return (outcome, reason);
        };
        let got = output.map(|o| o.stdout.as_str()).unwrap_or_default();
        let cut = output.is_some_and(|o| o.stdout_bytes > o.stdout.len());
        let got_trim = got.strip_suffix('\n').unwrap_or(got);
        if !cut && (got == want || got_trim == want) {
            return (outcome, reason);
        }
        let shown: String = got_trim.chars().take(80).collect();
        (
            Outcome::Error,
            Some(format!(
                "content differs: got {shown:?}, want {:?}",
                want.chars().take(80).collect::<String>()
            )),
        )
    }

    /// Keeps the output of a command this plan is waiting on (not of a duplicate or late
    /// event), within the per-intent bound.
    fn keep_output(
        &mut self,
        ghost: &str,
        command_id: &str,
        outcome: Outcome,
        output: Option<Box<Output>>,
        now: u64,
    ) {
        let Some(output) = output else { return };
        let Some(s) = &self.step else { return };
        let Some(o) = s.outstanding.get(command_id).filter(|o| o.ghost == ghost) else {
            return;
        };
        let kept = CommandOutput {
            step: s.index,
            round: self.round,
            ghost: ghost.to_owned(),
            command_id: command_id.to_owned(),
            operation: o.command.operation.clone(),
            kind: o.kind,
            outcome,
            at_ms: now,
            output: *output,
        };
        if self.outputs.len() >= OUTPUTS_PER_INTENT {
            self.outputs.pop_front();
            self.outputs_dropped += 1;
        }
        self.outputs.push_back(kept);
    }

    /// Withdrawn with commands running: take in their ends, send nothing new (no retry, no
    /// operation after a check), then release the locks and finish.
    fn drain(&mut self, input: Input, now: u64, fx: &mut Vec<Effect>) {
        let Some(s) = &mut self.step else {
            self.finish_withdraw(now, fx);
            return;
        };
        match input {
            Input::Event {
                ghost,
                command_id,
                outcome,
                reason,
                output,
                ..
            } => {
                self.keep_output(&ghost, &command_id, outcome, output, now);
                let Some(s) = &mut self.step else { return };
                if s.outstanding
                    .get(&command_id)
                    .is_some_and(|o| o.ghost == ghost)
                {
                    s.outstanding.remove(&command_id);
                    s.ghosts.insert(
                        ghost,
                        match outcome {
                            Outcome::Success => GhostProgress::Done,
                            Outcome::Error => GhostProgress::Failed(
                                reason.unwrap_or_else(|| "seed reported an error".into()),
                            ),
                        },
                    );
                }
            }
            Input::Tick => {
                s.outstanding.retain(|_, o| now < o.deadline_ms);
            }
            Input::LockLost { key } => {
                // Taken away (lease or operator): nothing left to hold back.
                s.locks.remove(&key);
                s.outstanding.clear();
            }
            Input::GhostUp(g) => {
                // The running command's event may have been lost with the session.
                let idx = s.index;
                let again: Vec<Outstanding> = s
                    .outstanding
                    .values()
                    .filter(|o| o.ghost == g)
                    .cloned()
                    .collect();
                for o in &again {
                    fx.push(self.dispatch_effect(idx, o));
                }
                return;
            }
            Input::LockGranted { key, .. } => {
                // Not held for anything any more.
                if s.locks.get(&key).is_some_and(Option::is_none) {
                    let idx = s.index;
                    s.locks.remove(&key);
                    let owner = self.owner(idx);
                    fx.push(Effect::Release { key, owner });
                }
            }
            Input::Start | Input::LockQueued { .. } | Input::Withdraw { .. } => {}
        }
        if self.step.as_ref().is_some_and(|s| s.outstanding.is_empty()) {
            self.finish_withdraw(now, fx);
        }
    }

    fn finish_withdraw(&mut self, _now: u64, fx: &mut Vec<Effect>) {
        let why = self.withdrawing.clone().unwrap_or_default();
        self.release_all(fx);
        self.status = Status::Withdrawn;
        self.step = None;
        fx.push(Effect::Report(report(
            Phase::Complete,
            CompletionState::Failed,
            format!(
                "intent {} withdrawn: {why}; its running command(s) ended, seed lock(s) released",
                self.id()
            ),
            None,
        )));
        fx.push(Effect::Finished(Status::Withdrawn));
    }

    /// After a restart: ask for the locks again and re-send what was never answered.
    pub fn resume(&mut self, now: u64, fleet: &FleetView) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.status.is_terminal() {
            return fx;
        }
        for g in self.catch_up.keys() {
            fx.push(Effect::Watch { ghost: g.clone() });
        }
        if self.step.is_none() && self.status == Status::Satisfied {
            self.next_catch_up(now, fleet, &mut fx);
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
        // The plan state and its reports are separate writes: a Mirage killed between the
        // two keeps a dispatched step whose "dispatched to" report never reached the disk
        // (found by the 1,000-fault soak). Saying what the resume re-sends closes that gap
        // and tells the user why the same command went out again.
        if !s.outstanding.is_empty() {
            let mut ghosts: Vec<&str> = s.outstanding.values().map(|o| o.ghost.as_str()).collect();
            ghosts.sort_unstable();
            ghosts.dedup();
            let summary = format!(
                "intent {} step {}/{} resumed: re-dispatched to {}",
                self.id(),
                s.index + 1,
                self.total(),
                ghosts.join(", ")
            );
            fx.push(Effect::Report(report(
                Phase::InProgress,
                CompletionState::InProgress,
                summary,
                Some(s.index),
            )));
        }
        fx
    }

    fn place(&self, idx: usize, fleet: &FleetView) -> Result<Vec<String>, String> {
        let s = &self.intent.steps[idx];
        if let Some(g) = &self.catching {
            return match fleet.hosts(g, &s.seed, &s.operation) {
                Ok(true) if fleet.ghosts.get(g).is_some_and(|v| v.connected) => Ok(vec![g.clone()]),
                Ok(_) => Err(format!(
                    "{g} (catching up) is not connected or does not host {}",
                    s.seed
                )),
                Err(e) => Err(e),
            };
        }
        let in_scope = |g: &str| self.intent.in_scope(g);
        let mut candidates = Vec::new();
        let mut refusal = None;
        for (g, v) in &fleet.ghosts {
            if !in_scope(g) || !v.connected || v.drained {
                continue;
            }
            if let Some(u) = &s.uri {
                if !advertises(v, &s.seed, u) {
                    continue;
                }
            }
            // An observed check sends no command: only the step's operation must be hosted.
            let op = s
                .check
                .as_ref()
                .filter(|c| c.sends_command())
                .map(|c| c.operation.as_str());
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
        let none = |what: String| match (&refusal, &s.uri) {
            (Some(r), _) => Err(r.clone()),
            (None, Some(u)) => Err(format!(
                "no connected ghost in {} advertises {u} for {}",
                self.intent.target_scope, s.seed
            )),
            (None, None) => Err(what),
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
        // In a catch-up pass only the steps that Ghost missed run.
        if let Some(g) = &self.catching {
            let missed = self.catch_up.get(g).cloned().unwrap_or_default();
            while idx < self.total() && !missed.contains(&idx) {
                idx += 1;
            }
        }
        if idx >= self.total() {
            self.complete_round(now, fleet, fx);
            return;
        }
        let started = match &self.step {
            Some(s) if s.index == idx => s.started_ms,
            _ => now,
        };
        let step = self.intent.steps[idx].clone();
        // Locks this step already holds (carried to it from its lock set) stay with it.
        let held: BTreeMap<String, Option<u64>> = match &self.step {
            Some(s) if s.index == idx => s.locks.clone(),
            _ => BTreeMap::new(),
        };
        let keeper = step.check.as_ref().and_then(|c| c.raft_keep.as_ref());
        let placed = match keeper {
            Some(k) => crate::raft_keep::placement(k, &self.intent, fleet, now),
            None => self.place(idx, fleet).and_then(|p| {
                resolve_args(&self.intent.steps[idx].args, &self.intent, fleet).map(|a| (p, a))
            }),
        };
        let (placement, resolved_args) = match placed {
            Ok(p) => p,
            Err(why) => {
                let first = !matches!(&self.step, Some(s) if s.index == idx && s.waiting_placement.as_deref() == Some(why.as_str()));
                self.step = Some(StepRun {
                    index: idx,
                    started_ms: started,
                    placement: vec![],
                    waiting_placement: Some(why.clone()),
                    locks: held,
                    blocked_by: None,
                    ghosts: BTreeMap::new(),
                    outstanding: BTreeMap::new(),
                    dispatched: false,
                    corrected: false,
                    offline: vec![],
                    resolved_args: None,
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
                .map(|g| lock::key(g, &step.seed))
                .chain(step.locks.iter().cloned())
                .chain(held.into_keys())
                .map(|k| (k, None))
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
            offline: self.offline_hosts(idx, fleet),
            resolved_args,
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
        let owner = self.step.as_ref().map(|s| self.owner(s.index));
        let Some(s) = &mut self.step else {
            // Not ours any more (withdrawn or moved on): nothing holds it for us.
            return;
        };
        match s.locks.get_mut(&key) {
            Some(t) => *t = Some(token),
            None => {
                if let Some(owner) = owner {
                    fx.push(Effect::Release { key, owner });
                }
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
            _ => (
                step.operation.clone(),
                s.resolved_args.clone().unwrap_or_else(|| step.args.clone()),
            ),
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
        let observed =
            kind == Kind::Check && step.check.as_ref().is_some_and(|c| !c.sends_command());
        if observed {
            self.local_checks
                .push((ghost.to_owned(), o.command.command_id.clone()));
        } else {
            fx.push(self.dispatch_effect(idx, &o));
        }
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
        let owner = Owner {
            intent_id: self.intent.intent_id.clone(),
            step: lock::set_start(idx, |j| {
                self.intent.steps.get(j).is_some_and(|s| s.hold_locks)
            }),
        };
        for key in s.locks.keys() {
            fx.push(Effect::Renew {
                key: key.clone(),
                owner: owner.clone(),
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
                            "intent {} drift: step {}/{} check failed on {ghost}{}; correcting",
                            self.id(),
                            idx + 1,
                            self.total(),
                            // A raft.keep check says which member and Ghost, and why.
                            match (
                                &reason,
                                step.check.as_ref().and_then(|c| c.raft_keep.as_ref())
                            ) {
                                (Some(r), Some(_)) => format!(": {r}"),
                                _ => String::new(),
                            }
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
        let mut failed: Vec<(String, String)> = s
            .ghosts
            .iter()
            .filter_map(|(g, p)| match p {
                GhostProgress::Failed(why) => Some((g.clone(), why.clone())),
                _ => None,
            })
            .collect();
        let progress: Vec<(String, Option<String>)> = s
            .ghosts
            .iter()
            .map(|(g, p)| match p {
                GhostProgress::Failed(why) => (g.clone(), Some(why.clone())),
                _ => (g.clone(), None),
            })
            .collect();
        let offline = s.offline.clone();
        let policy = self.intent.steps[idx].offline;
        let catching = self.catching.clone();
        // Re-check rounds of a standing intent are not results of their own.
        let progress = if self.round == 0 || catching.is_some() {
            progress
        } else {
            vec![]
        };
        for (g, why) in progress {
            let r = match (&catching, &why) {
                (Some(_), None) => GhostOutcome::CaughtUp,
                (Some(_), Some(_)) => GhostOutcome::CatchUpFailed,
                (None, None) => GhostOutcome::Done,
                (None, Some(_)) => GhostOutcome::Failed,
            };
            self.record(idx, &g, r, why.unwrap_or_default());
        }
        for g in &offline {
            match policy {
                Offline::Skip => {
                    self.record(idx, g, GhostOutcome::OfflineSkipped, String::new());
                }
                Offline::Fail => {
                    let why = "offline when the step was placed (offline = \"fail\")".to_owned();
                    self.record(idx, g, GhostOutcome::OfflineFailed, why.clone());
                    failed.push((g.clone(), why));
                }
                Offline::CatchUp => {
                    self.record(idx, g, GhostOutcome::CatchUpPending, String::new());
                    let missed = self.catch_up.entry(g.clone()).or_default();
                    if !missed.contains(&idx) {
                        missed.push(idx);
                        fx.push(Effect::Watch { ghost: g.clone() });
                    }
                }
            }
        }
        // A step of a lock set (storage.move) that succeeded hands its locks to the next
        // step instead of releasing them: nothing else may run on these seeds in between.
        let carry = failed.is_empty()
            && catching.is_none()
            && self.round == 0
            && self.intent.steps[idx].hold_locks;
        let carried = if carry {
            let owner = self.owner(idx);
            let keys = self
                .step
                .as_mut()
                .map(|s| std::mem::take(&mut s.locks))
                .unwrap_or_default();
            Some((owner, keys))
        } else {
            self.release_all(fx);
            None
        };
        if let Some(g) = catching {
            if let Some((_, why)) = failed
                .first()
                .filter(|_| !self.intent.steps[idx].continue_on_error)
            {
                // The intent was satisfied for the others; this Ghost's catch-up stops here.
                let summary = format!(
                    "intent {}: catch-up of {g} failed at step {}/{}: {why}",
                    self.id(),
                    idx + 1,
                    self.total()
                );
                fx.push(Effect::Report(report(
                    Phase::InProgress,
                    CompletionState::Failed,
                    summary,
                    Some(idx),
                )));
                self.step = None;
                self.catch_up.remove(&g);
                self.catching = None;
                self.after_pass(now, fleet, fx);
                return;
            }
            self.begin_step(idx + 1, now, fleet, fx);
            return;
        }
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
        if let Some((owner, keys)) = carried {
            self.settle_carried(owner, keys, fx);
        }
    }

    /// After the next step began: the carried locks it shares the owner of stay held (a
    /// step still waiting for its placement keeps them too); any other is released.
    fn settle_carried(
        &mut self,
        owner: Owner,
        keys: BTreeMap<String, Option<u64>>,
        fx: &mut Vec<Effect>,
    ) {
        let same = self.step.as_ref().map(|s| self.owner(s.index)) == Some(owner.clone());
        let lease_ms = self
            .step
            .as_ref()
            .map(|s| Self::lease_ms(&self.intent.steps[s.index]));
        for (key, token) in keys {
            let next = self.step.as_mut().filter(|_| same);
            let next_locks = next
                .as_ref()
                .map(|s| (&s.locks, s.waiting_placement.is_some()));
            match lock::carry(next_locks, &key) {
                lock::Carry::Keep => {
                    if let Some(s) = next {
                        s.locks.entry(key.clone()).or_insert(token);
                    }
                    fx.push(Effect::Renew {
                        key,
                        owner: owner.clone(),
                        lease_ms: lease_ms.unwrap_or(0),
                    });
                }
                lock::Carry::Release => fx.push(Effect::Release {
                    key,
                    owner: owner.clone(),
                }),
            }
        }
    }

    fn complete_round(&mut self, now: u64, fleet: &FleetView, fx: &mut Vec<Effect>) {
        self.step = None;
        if let Some(g) = self.catching.take() {
            self.catch_up.remove(&g);
            fx.push(Effect::Report(report(
                Phase::InProgress,
                CompletionState::InProgress,
                format!("intent {}: {g} caught up", self.id()),
                None,
            )));
            self.after_pass(now, fleet, fx);
            return;
        }
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
            let summary = format!("{summary}{}", self.offline_note());
            fx.push(Effect::Report(report(
                Phase::Complete,
                CompletionState::Satisfied,
                summary,
                None,
            )));
        }
        self.status = Status::Satisfied;
        self.round_corrected = false;
        if let Some(k) = self.intent.keep_ms {
            self.next_keep_ms = Some(now.saturating_add(k));
        }
        self.after_pass(now, fleet, fx);
    }

    /// After a pass (first, re-check or catch-up): the next catch-up, or done when nothing
    /// is owed and nothing is kept.
    fn after_pass(&mut self, now: u64, fleet: &FleetView, fx: &mut Vec<Effect>) {
        if self.step.is_some() {
            return;
        }
        if !self.catch_up.is_empty() {
            self.next_catch_up(now, fleet, fx);
            return;
        }
        if self.intent.keep_ms.is_none() {
            fx.push(Effect::Finished(Status::Satisfied));
        }
    }

    /// "; offline: b skipped; c to catch up" from the recorded results (empty when none).
    fn offline_note(&self) -> String {
        let names = |want: GhostOutcome| {
            let mut v: Vec<&str> = self
                .results
                .iter()
                .filter(|r| r.result == want)
                .map(|r| r.ghost.as_str())
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut parts = Vec::new();
        for (want, what) in [
            (GhostOutcome::OfflineSkipped, "skipped"),
            (GhostOutcome::CatchUpPending, "to catch up when back"),
        ] {
            let n = names(want);
            if !n.is_empty() {
                let shown: Vec<&str> = n.iter().take(10).copied().collect();
                let more = if n.len() > 10 {
                    format!(" and {} more", n.len() - 10)
                } else {
                    String::new()
                };
                parts.push(format!(
                    "{} offline Ghost(s) {what}: {}{more}",
                    n.len(),
                    shown.join(", ")
                ));
            }
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("; {}", parts.join("; "))
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
        let owner = self.step.as_ref().map(|s| self.owner(s.index));
        if let (Some(s), Some(owner)) = (&mut self.step, owner) {
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
            if now.saturating_sub(s.started_ms) >= timeout && self.catching.is_some() {
                // Gone again before its catch-up could run: it stays owed, tried when back.
                let why = s.waiting_placement.clone().unwrap_or_default();
                let g = self.catching.take().unwrap_or_default();
                self.step = None;
                fx.push(Effect::Report(report(
                    Phase::InProgress,
                    CompletionState::InProgress,
                    format!("intent {}: catch-up of {g} paused: {why}", self.id()),
                    Some(idx),
                )));
                return;
            }
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

/// The one-time transfer token is a credential: Mirage keeps it in the plan (a resumed move
/// re-sends the same commands) but never shows it. Blanks `token` in every seed.redis
/// step's args and in the commands as sent, in a copy for `GET /v1/intents/{id}`.
pub fn redact_move_token(plan: &mut Plan) {
    let blank = |a: &mut shared::envelope::Args| {
        if let Some(t) = a.get_mut("token") {
            crate::storage_move::REDACTED.clone_into(t);
        }
    };
    let redis: Vec<bool> = plan
        .intent
        .steps
        .iter()
        .map(|s| s.seed == crate::storage_move::SEED)
        .collect();
    for s in plan
        .intent
        .steps
        .iter_mut()
        .filter(|s| s.seed == crate::storage_move::SEED)
    {
        blank(&mut s.args);
    }
    if let Some(run) = plan
        .step
        .as_mut()
        .filter(|r| redis.get(r.index) == Some(&true))
    {
        if let Some(a) = run.resolved_args.as_mut() {
            blank(a);
        }
        for o in run.outstanding.values_mut() {
            blank(&mut o.command.args);
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
            output: None,
        }
    }

    const TWO: &str = "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"status\"\non=\"one\"\n";

    #[test]
    fn submit_refuses_what_no_known_ghost_in_scope_declares() {
        let mut f = fleet(&["a", "b"]);
        if let Some(v) = f.ghosts.get_mut("b") {
            v.connected = false;
            v.seeds
                .insert("seed.fs".into(), Some(vec!["read".into(), "write".into()]));
        }
        let ok = |steps: &str, f: &FleetView| submit_check(&plan(steps).intent, f);
        assert_eq!(ok(TWO, &f), Ok(()));
        let (idx, why) = ok(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n[[step]]\nseed=\"seed.nope\"\noperation=\"x\"\n",
            &f,
        )
        .unwrap_err();
        assert_eq!(idx, 1);
        assert!(
            why.starts_with("step 2/2: no known Ghost in ghost:* declares seed \"seed.nope\""),
            "{why}"
        );
        assert!(
            why.contains("a (connected;") && why.contains("b (offline;"),
            "{why}"
        );
        // Declared by an offline Ghost only: accepted (it may come back).
        assert_eq!(
            ok("[[step]]\nseed=\"seed.fs\"\noperation=\"read\"\n", &f),
            Ok(())
        );
        let (_, why) = ok("[[step]]\nseed=\"seed.fs\"\noperation=\"delete\"\n", &f).unwrap_err();
        assert!(
            why.contains("operation \"delete\" of seed \"seed.fs\""),
            "{why}"
        );
        assert!(why.contains("seed.fs declares read, write"), "{why}");
        // A check's operation counts too.
        let (_, why) = ok(
            "[[step]]\nseed=\"seed.fs\"\noperation=\"read\"\ncheck={operation=\"stat\"}\n",
            &f,
        )
        .unwrap_err();
        assert!(why.contains("\"stat\""), "{why}");
        // on = a Ghost: only that one is considered.
        assert!(ok(
            "[[step]]\nseed=\"seed.fs\"\noperation=\"read\"\non=\"a\"\n",
            &f
        )
        .is_err());
        // No Ghost known in scope, or one that has not said what it hosts: accepted.
        assert_eq!(
            ok(
                "[[step]]\nseed=\"seed.nope\"\noperation=\"x\"\n",
                &fleet(&[])
            ),
            Ok(())
        );
        f.ghosts.insert("c".into(), GhostView::default());
        assert_eq!(
            ok("[[step]]\nseed=\"seed.nope\"\noperation=\"x\"\n", &f),
            Ok(())
        );
    }

    #[test]
    fn a_drained_ghost_gets_no_new_step() {
        let mut f = fleet(&["a", "b"]);
        if let Some(v) = f.ghosts.get_mut("a") {
            v.drained = true;
        }
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n");
        let sent = dispatched(&p.handle(Input::Start, 0, &f));
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, "b");
        // Both drained: the step waits for a placement rather than going to a drained Ghost.
        if let Some(v) = f.ghosts.get_mut("b") {
            v.drained = true;
        }
        let mut p = plan("[[step]]\nseed=\"seed.flow\"\noperation=\"status\"\non=\"one\"\n");
        assert!(dispatched(&p.handle(Input::Start, 0, &f)).is_empty());
    }

    #[test]
    fn output_is_kept_bounded_and_only_for_awaited_commands() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.flow\"\noperation=\"status\"\n");
        p.handle(Input::Start, 0, &f);
        let big = vec![b'x'; OUTPUT_MAX_BYTES + 10];
        let out = Output::from_bytes(Some(b"hello\n"), Some(&big), Some(0)).unwrap();
        assert_eq!(out.stderr.len(), OUTPUT_MAX_BYTES);
        assert_eq!(out.stderr_bytes, OUTPUT_MAX_BYTES + 10);
        let with = |cid: &str, out: Output, ok: bool| Input::Event {
            ghost: "a".into(),
            command_id: cid.into(),
            event_id: format!("evt.{cid}"),
            outcome: if ok { Outcome::Success } else { Outcome::Error },
            reason: (!ok).then(|| "boom".into()),
            output: Some(Box::new(out)),
        };
        p.handle(with("cmd.other", out.clone(), true), 1, &f);
        assert!(p.outputs.is_empty(), "not a command of this plan");
        p.handle(with("cmd.i1.1.a.1", out, true), 2, &f);
        assert_eq!(p.status, Status::Satisfied);
        assert_eq!(p.outputs.len(), 1);
        assert_eq!(p.outputs[0].output.stdout, "hello\n");
        assert_eq!(p.outputs[0].operation, "status");
        assert_eq!(Output::from_bytes(Some(b""), None, Some(0)), None);
        // Cut on a character boundary: no half character.
        let s = "é".repeat(OUTPUT_MAX_BYTES);
        assert_eq!(bounded_text(s.as_bytes(), 5), "éé");
        // At most OUTPUTS_PER_INTENT per intent, the latest kept.
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nretries=100\n");
        p.handle(Input::Start, 0, &f);
        let o = Output::from_bytes(Some(b"o"), None, None).unwrap();
        for n in 1..=(OUTPUTS_PER_INTENT as u32 + 5) {
            p.handle(
                with(&format!("cmd.i1.1.a.{n}"), o.clone(), false),
                n as u64,
                &f,
            );
        }
        assert_eq!(p.outputs.len(), OUTPUTS_PER_INTENT);
        assert_eq!(p.outputs_dropped, 5);
        assert_eq!(p.outputs[0].command_id, "cmd.i1.1.a.6");
    }

    #[test]
    fn fan_out_reports_offline_ghosts_and_follows_the_offline_key() {
        let mut f = fleet(&["a", "b"]);
        if let Some(v) = f.ghosts.get_mut("b") {
            v.connected = false;
        }
        let results = |p: &Plan| -> Vec<(String, GhostOutcome)> {
            p.results
                .iter()
                .map(|r| (r.ghost.clone(), r.result))
                .collect()
        };
        // skip (default): satisfied, and says so.
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n");
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", true), 1, &f);
        assert_eq!(p.status, Status::Satisfied);
        assert!(fx.contains(&Effect::Finished(Status::Satisfied)));
        assert_eq!(
            results(&p),
            [
                ("a".into(), GhostOutcome::Done),
                ("b".into(), GhostOutcome::OfflineSkipped)
            ]
        );
        let said = fx.iter().any(|e| matches!(e, Effect::Report(r) if r.summary.contains("1 offline Ghost(s) skipped: b")));
        assert!(said, "{fx:?}");
        // fail: the step fails on b.
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\noffline=\"fail\"\n");
        p.handle(Input::Start, 0, &f);
        p.handle(ev("a", "cmd.i1.1.a.1", true), 1, &f);
        assert_eq!(p.status, Status::Failed);
        assert!(
            p.failure
                .as_deref()
                .unwrap_or_default()
                .contains("on b: offline"),
            "{:?}",
            p.failure
        );
        // catch_up: satisfied for a, stays alive, runs both steps on b when it is back.
        let mut p = plan("offline=\"catch_up\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\n");
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", true), 1, &f);
        assert!(fx.contains(&Effect::Watch { ghost: "b".into() }));
        let fx = p.handle(ev("a", "cmd.i1.2.a.1", true), 2, &f);
        assert_eq!(p.status, Status::Satisfied);
        assert!(!fx.contains(&Effect::Finished(Status::Satisfied)), "owes b");
        assert_eq!(p.catch_up.get("b"), Some(&vec![0, 1]));
        if let Some(v) = f.ghosts.get_mut("b") {
            v.connected = true;
        }
        let fx = p.handle(Input::GhostUp("b".into()), 3, &f);
        assert_eq!(
            dispatched(&fx),
            [("b".to_string(), "cmd.i1.1.b.1".to_string())]
        );
        let fx = p.handle(ev("b", "cmd.i1.1.b.1", true), 4, &f);
        assert_eq!(
            dispatched(&fx),
            [("b".to_string(), "cmd.i1.2.b.1".to_string())]
        );
        let fx = p.handle(ev("b", "cmd.i1.2.b.1", true), 5, &f);
        assert!(fx.contains(&Effect::Finished(Status::Satisfied)), "{fx:?}");
        assert!(p.catch_up.is_empty());
        assert_eq!(
            results(&p)
                .iter()
                .filter(|(g, r)| g == "b" && *r == GhostOutcome::CaughtUp)
                .count(),
            2
        );
    }

    #[test]
    fn a_step_with_a_uri_goes_to_the_ghost_that_advertises_it() {
        let mut f = fleet(&["a", "b", "c"]);
        for (g, key, uri) in [
            ("a", "seed.kv/x", "kv://a:1,kv://a:2"),
            ("b", "seed.kv/y", "kv://b:1"),
            ("c", "seed.kvx", "kv://b:1"),
        ] {
            let mut st = BTreeMap::new();
            st.insert("uri".to_string(), uri.to_string());
            f.ghosts.get_mut(g).unwrap().observed.insert(key.into(), st);
        }
        let mut p = plan(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\nargs={key=\"k\"}\nuri=\"kv://b:1\"\n",
        );
        let fx = p.handle(Input::Start, 0, &f);
        // Only b's seed.kv instance advertises it (c's is another seed whose name shares a prefix).
        assert_eq!(dispatched(&fx).len(), 1, "{fx:?}");
        assert_eq!(dispatched(&fx)[0].0, "b");
        let mut p = plan(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\nargs={key=\"k\"}\nuri=\"kv://a:2\"\n",
        );
        assert_eq!(dispatched(&p.handle(Input::Start, 0, &f))[0].0, "a");
        // Nobody advertises it (yet): nothing is sent and the wait names the URI.
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"get\"\nargs={key=\"k\"}\nuri=\"kv://nowhere:9\"\n");
        let fx = p.handle(Input::Start, 0, &f);
        assert!(dispatched(&fx).is_empty(), "{fx:?}");
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Report(r) if r.summary.contains("advertises kv://nowhere:9"))),
            "{fx:?}"
        );
    }

    #[test]
    fn a_uris_argument_expands_to_what_ghosts_in_scope_advertise() {
        let mut f = fleet(&["a", "b", "c"]);
        for (g, key, uri) in [
            ("a", "seed.kv", "kv://a:1"),
            ("b", "seed.kv/x", "kv://b:1,kv://b:2"),
            ("c", "seed.kvx", "kv://c:1"),
        ] {
            let mut st = BTreeMap::new();
            st.insert("uri".to_string(), uri.to_string());
            f.ghosts.get_mut(g).unwrap().observed.insert(key.into(), st);
        }
        let mut p = plan(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\", value=\"{uris:seed.kv}\"}\non=\"all\"\n",
        );
        let fx = p.handle(Input::Start, 0, &f);
        let sent: Vec<&Command> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Dispatch { command, .. } => Some(command),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 3, "{fx:?}");
        for c in sent {
            // Sorted and deduplicated; c's seed.kvx is another seed; other args untouched.
            assert_eq!(c.args["value"], "kv://a:1,kv://b:1,kv://b:2", "{c:?}");
            assert_eq!(c.args["key"], "k");
        }
        // Nobody advertises one yet: the step waits, saying so.
        let mut p = plan(
            "[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\", value=\"{uris:seed.flow}\"}\n",
        );
        let fx = p.handle(Input::Start, 0, &f);
        assert!(dispatched(&fx).is_empty(), "{fx:?}");
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Report(r) if r.summary.contains("advertises a URI for seed.flow"))),
            "{fx:?}"
        );
        // Out of scope or disconnected Ghosts add nothing.
        f.ghosts.get_mut("b").unwrap().connected = false;
        let a = resolve_args(
            &[("v".to_string(), "{uris:seed.kv}".to_string())].into(),
            &p.intent,
            &f,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a["v"], "kv://a:1");
        assert_eq!(
            resolve_args(
                &[("v".to_string(), "plain".to_string())].into(),
                &p.intent,
                &f
            ),
            Ok(None)
        );
    }

    #[test]
    fn a_check_with_expect_compares_content() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"on\"}\ncheck={operation=\"get\",args={key=\"k\"},expect=\"on\"}\n");
        let check = |cid: &str, stdout: &str| Input::Event {
            ghost: "a".into(),
            command_id: cid.into(),
            event_id: format!("evt.{cid}"),
            outcome: Outcome::Success,
            reason: None,
            output: Output::from_bytes(Some(stdout.as_bytes()), None, Some(0)).map(Box::new),
        };
        p.handle(Input::Start, 0, &f);
        // The key exists with another value: the check succeeded, but the content differs.
        let fx = p.handle(check("chk.i1.1.a.1", "off\n"), 1, &f);
        assert_eq!(
            dispatched(&fx),
            [("a".to_string(), "cmd.i1.1.a.1".to_string())]
        );
        p.handle(ev("a", "cmd.i1.1.a.1", true), 2, &f);
        assert_eq!(p.status, Status::Satisfied);
        // The right content: satisfied without running the operation.
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"on\"}\ncheck={operation=\"get\",args={key=\"k\"},expect=\"on\"}\n");
        p.handle(Input::Start, 0, &f);
        let fx = p.handle(check("chk.i1.1.a.1", "on\n"), 1, &f);
        assert!(dispatched(&fx).is_empty());
        assert_eq!(p.status, Status::Satisfied);
    }

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
                output: None,
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
    fn a_storage_move_step_takes_both_ghosts_locks_before_it_runs() {
        let mut f = fleet(&["a", "b"]);
        for v in f.ghosts.values_mut() {
            v.seeds.insert("seed.redis".into(), None);
        }
        let mut p = plan("[[step]]\noperation=\"storage.move\"\nargs={source=\"redis://a/cache\",target=\"redis://b:6391/cache\",transfer_port=7390}\n");
        assert_eq!(p.intent.steps.len(), 4);
        let fx = p.handle(Input::Start, 0, &f);
        let keys: Vec<_> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Acquire { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        // The snapshot runs on a, and holds b's lock too (sorted: no deadlock).
        assert_eq!(keys, ["a::seed.redis", "b::seed.redis"]);
        assert!(dispatched(&fx).is_empty());
        let fx = p.handle(
            Input::LockGranted {
                key: "a::seed.redis".into(),
                token: 1,
            },
            1,
            &f,
        );
        assert!(dispatched(&fx).is_empty(), "one lock of two is not enough");
        let fx = p.handle(
            Input::LockGranted {
                key: "b::seed.redis".into(),
                token: 2,
            },
            2,
            &f,
        );
        let d = dispatched(&fx);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "a");
    }

    #[test]
    fn a_storage_move_holds_both_locks_from_its_first_step_to_its_last() {
        let mut f = fleet(&["a", "b"]);
        for v in f.ghosts.values_mut() {
            v.seeds.insert("seed.redis".into(), None);
        }
        let text = "[[step]]\noperation=\"storage.move\"\nargs={source=\"redis://a/cache\",target=\"redis://b:6391/cache\",transfer_port=7390}\n";
        let released = |fx: &[Effect]| -> Vec<String> {
            fx.iter()
                .filter_map(|e| match e {
                    Effect::Release { key, .. } => Some(key.clone()),
                    _ => None,
                })
                .collect()
        };
        let set = Owner {
            intent_id: "i1".into(),
            step: 0,
        };
        let grant = |p: &mut Plan, now: u64| {
            let mut fx = Vec::new();
            for (key, token) in [("a::seed.redis", 1), ("b::seed.redis", 2)] {
                fx.extend(p.handle(
                    Input::LockGranted {
                        key: key.into(),
                        token,
                    },
                    now,
                    &f,
                ));
            }
            fx
        };
        let mut p = plan(text);
        p.handle(Input::Start, 0, &f);
        grant(&mut p, 1);
        let on = ["a", "a", "b", "b"];
        for (i, g) in on.iter().enumerate() {
            let cid = format!("cmd.i1.{}.{g}.1", i + 1);
            assert!(p.outstanding().any(|(c, _)| *c == cid), "step {i}: {cid}");
            assert!(p.needs_lock(&set, "a::seed.redis") && p.needs_lock(&set, "b::seed.redis"));
            let fx = p.handle(ev(g, &cid, true), 10 + i as u64, &f);
            if i + 1 < on.len() {
                assert!(
                    released(&fx).is_empty(),
                    "step {i} hands its locks on: {fx:?}"
                );
                // The next step asks again as the same owner (held: same token) and renews.
                for e in &fx {
                    if let Effect::Acquire { owner, .. } | Effect::Renew { owner, .. } = e {
                        assert_eq!(*owner, set);
                    }
                }
                assert!(fx.iter().any(|e| matches!(e, Effect::Renew { .. })));
                grant(&mut p, 20 + i as u64);
            } else {
                assert_eq!(released(&fx), ["a::seed.redis", "b::seed.redis"]);
                assert_eq!(p.status, Status::Satisfied);
            }
        }
        // A failure inside the set releases both at once.
        let mut p = plan(text);
        p.handle(Input::Start, 0, &f);
        grant(&mut p, 1);
        p.handle(ev("a", "cmd.i1.1.a.1", true), 2, &f);
        grant(&mut p, 3);
        p.handle(ev("a", "cmd.i1.2.a.1", true), 4, &f);
        grant(&mut p, 5);
        let fx = p.handle(ev("b", "cmd.i1.3.b.1", false), 6, &f);
        assert_eq!(p.status, Status::Failed);
        assert_eq!(released(&fx), ["a::seed.redis", "b::seed.redis"]);
        // A plain blocking step still releases at its end.
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nblocking=true\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nblocking=true\n");
        let f = fleet(&["a"]);
        p.handle(Input::Start, 0, &f);
        p.handle(
            Input::LockGranted {
                key: "a::seed.kv".into(),
                token: 1,
            },
            1,
            &f,
        );
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", true), 2, &f);
        assert_eq!(released(&fx), ["a::seed.kv"]);
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
        // Waiting for its lock (nothing dispatched): it leaves at once.
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nblocking=true\n");
        p.handle(Input::Start, 0, &f);
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
    fn withdraw_keeps_the_lock_until_the_running_command_ends() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nblocking=true\ntimeout=\"10s\"\nretries=2\n");
        p.handle(Input::Start, 0, &f);
        p.handle(
            Input::LockGranted {
                key: "a::seed.flow".into(),
                token: 1,
            },
            1,
            &f,
        );
        let released = |fx: &[Effect]| fx.iter().any(|e| matches!(e, Effect::Release { .. }));
        let fx = p.handle(
            Input::Withdraw {
                why: "operator".into(),
            },
            2,
            &f,
        );
        assert!(!released(&fx), "kept while cmd runs: {fx:?}");
        assert!(!fx.contains(&Effect::Finished(Status::Withdrawn)));
        assert_eq!(
            p.status,
            Status::Active,
            "resumed as active after a restart"
        );
        assert!(p.needs_lock(&p.owner(0), "a::seed.flow"));
        // A failure is not retried while withdrawing; its end releases the lock.
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", false), 3, &f);
        assert!(dispatched(&fx).is_empty(), "{fx:?}");
        assert!(released(&fx));
        assert!(fx.contains(&Effect::Finished(Status::Withdrawn)));
        assert_eq!(p.status, Status::Withdrawn);
        // No event: the attempt deadline ends the wait.
        let mut p = plan(
            "[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nblocking=true\ntimeout=\"10s\"\n",
        );
        p.handle(Input::Start, 0, &f);
        p.handle(
            Input::LockGranted {
                key: "a::seed.flow".into(),
                token: 1,
            },
            1,
            &f,
        );
        p.handle(
            Input::Withdraw {
                why: "operator".into(),
            },
            2,
            &f,
        );
        assert_eq!(p.next_wakeup(2, 250), Some(10_001));
        assert!(!released(&p.handle(Input::Tick, 5_000, &f)));
        let fx = p.handle(Input::Tick, 10_001, &f);
        assert!(released(&fx) && fx.contains(&Effect::Finished(Status::Withdrawn)));
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
    fn a_resume_reports_what_it_re_dispatches() {
        let f = fleet(&["a"]);
        let mut p = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n");
        let _ = p.handle(Input::Start, 0, &f);
        let mut restored: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        let fx = restored.resume(6, &f);
        let said: Vec<&str> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Report(d) => Some(d.summary.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].ends_with("step 1/1 resumed: re-dispatched to a"),
            "{said:?}"
        );
        // Nothing outstanding (the step's event came in): nothing re-sent, nothing said.
        let mut idle = plan("[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\n");
        assert!(!idle
            .resume(6, &f)
            .iter()
            .any(|e| matches!(e, Effect::Report(d) if d.summary.contains("re-dispatched"))));
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

    #[test]
    fn an_observed_check_reads_the_observation_and_corrects_drift() {
        let observe = |f: &mut FleetView, state: &str| {
            f.ghosts.get_mut("a").unwrap().observed.insert(
                "seed.kv/web".into(),
                [("state".into(), state.into()), ("pid".into(), "7".into())].into(),
            );
        };
        let mut f = fleet(&["a"]);
        // Declared operations: placement must not look for the (empty) check operation.
        f.ghosts
            .get_mut("a")
            .unwrap()
            .seeds
            .insert("seed.kv".into(), Some(vec!["put".into()]));
        let mut p = plan("keep=\"10s\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={name=\"web\"}\ncheck={observed={state=\"running\"}}\n");
        // Nothing observed yet: not satisfied, so the operation is sent and no check command.
        let fx = p.handle(Input::Start, 0, &f);
        assert_eq!(dispatched(&fx), [("a".into(), "cmd.i1.1.a.1".into())]);
        let fx = p.handle(ev("a", "cmd.i1.1.a.1", true), 1, &f);
        assert_eq!(states(&fx), [CompletionState::Satisfied]);
        // Observed running: the re-check passes without sending anything, and says nothing.
        observe(&mut f, "running");
        let fx = p.handle(Input::Tick, 10_002, &f);
        assert!(
            dispatched(&fx).is_empty() && states(&fx).is_empty(),
            "{fx:?}"
        );
        assert_eq!(p.status, Status::Satisfied);
        // Observed exited: drift, corrected by the operation.
        observe(&mut f, "exited");
        let fx = p.handle(Input::Tick, 20_003, &f);
        assert_eq!(states(&fx), [CompletionState::Corrective]);
        assert_eq!(dispatched(&fx), [("a".into(), "cmd.i1.r2.1.a.1".into())]);
        let fx = p.handle(ev("a", "cmd.i1.r2.1.a.1", true), 20_004, &f);
        assert_eq!(states(&fx), [CompletionState::Satisfied]);
        assert_eq!(
            observed_check(
                &[("state".into(), "running".into())].into(),
                "seed.kv/web",
                f.ghosts.get("a")
            ),
            Err("observed seed.kv/web: state is \"exited\", want \"running\"".into())
        );
        assert!(observed_check(&Default::default(), "seed.kv/db", f.ghosts.get("a")).is_err());
    }

    #[test]
    fn an_observed_check_is_validated() {
        let bad = |c: &str| {
            crate::intent::parse(&format!("intent_id=\"i\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\ncheck={c}\n"), || "x".into())
                .unwrap_err()
                .to_string()
        };
        let e = bad("{observed={state=\"running\"},operation=\"get\"}");
        assert!(e.contains("check.observed"), "{e}");
        let e = bad("{observed={\" \"=\"x\"}}");
        assert!(e.contains("check.observed"), "{e}");
    }
}
