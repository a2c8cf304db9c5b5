//! Oracles for the control-plane parsers (issue 17 item 6): the Ghost admin NDJSON lines, the
//! intent bodies of `POST /v1/intents` (TOML and JSON), and the plan validator and state
//! machine fed with a fuzzed fleet. Each panics only when a property breaks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use ghost::admin::{parse_request, AdminLine, BoundedLines, ExecuteRequest, Request, MAX_LINE};
use mirage::intent::{self, Intent, Offline, On, MAX_STEPS, MAX_TIMEOUT_MS};
use mirage::plan::{self, Effect, FleetView, GhostView, Input, Plan};
use serde_json::{json, Map, Value};
use shared::envelope::{Envelope, Outcome};
use tokio_util::codec::Decoder;

/// A line item as plain data, so whole and chunked decoding can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Line(String),
    TooLong,
    NotUtf8,
}

fn lines_of(max: usize, chunks: &[&[u8]]) -> Vec<Item> {
    let mut codec = BoundedLines::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        // A bounded codec keeps at most one line's worth (plus the chunk just added).
        while let Some(l) = codec.decode(&mut buf).expect("BoundedLines never errors") {
            out.push(match l {
                AdminLine::Line(s) => Item::Line(s),
                AdminLine::TooLong => Item::TooLong,
                AdminLine::NotUtf8 => Item::NotUtf8,
            });
        }
        assert!(
            buf.len() <= max + chunk.len() + 1,
            "BoundedLines kept {} bytes with max {max}",
            buf.len()
        );
    }
    out
}

/// `admin_line`: byte 0 picks the line limit (high bit: a small one, to reach `TooLong`),
/// byte 1 the split point; the rest is the connection's bytes. Decoding whole and in two
/// chunks gives the same items; every complete line is parsed under three admin settings;
/// an accepted request is re-rendered and must parse back equal.
pub fn admin_line(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let max = if data[0] & 0x80 != 0 {
        1 + (data[0] & 0x7f) as usize
    } else {
        MAX_LINE
    };
    let rest = &data[2..];
    let cut = if rest.is_empty() {
        0
    } else {
        data[1] as usize % (rest.len() + 1)
    };
    let whole = lines_of(max, &[rest]);
    let split = lines_of(max, &[&rest[..cut], &rest[cut..]]);
    assert_eq!(whole, split, "chunking changed the lines (max {max})");
    for item in &whole {
        let Item::Line(line) = item else { continue };
        assert!(
            line.len() <= max && !line.contains('\n'),
            "line over the limit"
        );
        admin_request(line);
    }
}

fn admin_request(line: &str) {
    let open = parse_request(line, "", true);
    let closed = parse_request(line, "", false);
    let tokened = parse_request(line, "s3cret", false);
    for r in [&open, &closed, &tokened] {
        if let Err(e) = r {
            assert!(!e.trim().is_empty(), "empty error for {line:?}");
        }
    }
    // Settings only take away: whatever a stricter one accepts, the open one accepts alike.
    for r in [&closed, &tokened] {
        if let Ok(req) = r {
            assert_eq!(
                open.as_ref().ok(),
                Some(req),
                "settings changed the request"
            );
        }
    }
    if let Ok(Request::Execute(_) | Request::ExecuteEnvelope { .. }) = &closed {
        panic!("execute accepted without a token: {line:?}");
    }
    match &open {
        Ok(Request::Execute(c)) => {
            for v in [&c.seed_selector, &c.operation] {
                assert!(!v.is_empty() && v.trim() == v, "untrimmed or empty: {c:?}");
            }
            let again = render_execute(c);
            assert_eq!(
                parse_request(&again, "", true).as_ref(),
                Ok(&Request::Execute(c.clone())),
                "execute {again} parses differently"
            );
        }
        Ok(Request::ExecuteEnvelope { cmd, message_id }) => {
            let bytes = Envelope::Command(cmd.clone())
                .to_frame(*message_id)
                .and_then(|f| f.to_bytes())
                .unwrap_or_else(|e| panic!("decoded command does not frame: {e}"));
            let again = json!({"action": "execute_envelope", "command_frame": B64.encode(&bytes)});
            let back = parse_request(&again.to_string(), "", true);
            assert_eq!(back.as_ref(), open.as_ref(), "command_frame round trip");
        }
        _ => {}
    }
}

fn render_execute(c: &ExecuteRequest) -> String {
    json!({"action": "execute", "command": {
        "command_id": c.command_id, "intent_id": c.intent_id,
        "seed_selector": c.seed_selector, "operation": c.operation, "args": c.args,
    }})
    .to_string()
}

/// An accepted intent written back as a user would write it (every field explicit).
fn render_intent(i: &Intent) -> Value {
    let steps: Vec<Value> = i
        .steps
        .iter()
        .map(|s| {
            let mut m = Map::new();
            m.insert("seed".into(), json!(s.seed));
            m.insert("operation".into(), json!(s.operation));
            m.insert("args".into(), json!(s.args));
            let on = match &s.on {
                On::All => "all".to_owned(),
                On::One => "one".to_owned(),
                On::Local => "local".to_owned(),
                On::Ghost(g) => g.clone(),
            };
            m.insert("on".into(), json!(on));
            m.insert("blocking".into(), json!(s.blocking));
            m.insert("timeout".into(), json!(s.timeout_ms));
            m.insert("retries".into(), json!(s.retries));
            m.insert("continue_on_error".into(), json!(s.continue_on_error));
            let offline = match s.offline {
                Offline::Skip => "skip",
                Offline::Fail => "fail",
                Offline::CatchUp => "catch_up",
            };
            m.insert("offline".into(), json!(offline));
            if let Some(u) = &s.uri {
                m.insert("uri".into(), json!(u));
            }
            if let Some(c) = &s.check {
                let mut cm = Map::new();
                if c.observed.is_empty() {
                    cm.insert("operation".into(), json!(c.operation));
                    cm.insert("args".into(), json!(c.args));
                    if let Some(e) = &c.expect {
                        cm.insert("expect".into(), json!(e));
                    }
                } else {
                    cm.insert("observed".into(), json!(c.observed));
                }
                m.insert("check".into(), Value::Object(cm));
            }
            Value::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("intent_id".into(), json!(i.intent_id));
    m.insert("actor".into(), json!(i.actor));
    m.insert("target_scope".into(), json!(i.target_scope));
    m.insert("objective".into(), json!(i.objective));
    if let Some(k) = i.keep_ms {
        m.insert("keep".into(), json!(k));
    }
    m.insert("step".into(), Value::Array(steps));
    Value::Object(m)
}

fn expanded(i: &Intent) -> bool {
    i.steps.iter().any(|s| {
        !s.locks.is_empty()
            || s.hold_locks
            || s.check.as_ref().is_some_and(|c| c.raft_keep.is_some())
    })
}

fn check_intent(i: &Intent) {
    assert!(intent::validate_intent_id(&i.intent_id).is_ok(), "{i:?}");
    assert!(!i.steps.is_empty() && i.steps.len() <= MAX_STEPS, "{i:?}");
    for s in &i.steps {
        assert!((1..=MAX_TIMEOUT_MS).contains(&s.timeout_ms), "{s:?}");
        assert!(s.retries <= 100, "{s:?}");
    }
    // Steps Mirage expanded itself (storage.move, raft.keep) carry fields the input form does
    // not have (lock sets, keeper checks): the caller checks re-parsing is deterministic.
    if expanded(i) {
        return;
    }
    let v = render_intent(i);
    let from_json = intent::parse(&v.to_string(), || "unused".into())
        .unwrap_or_else(|e| panic!("accepted intent re-rendered as JSON is refused: {e}: {v}"));
    assert_eq!(&from_json, i, "JSON round trip differs: {v}");
    // TOML cannot hold every string (e.g. NUL in a key is fine, but keys must be strings:
    // they are); a render failure is the toml crate's limit, not ours.
    if let Ok(t) = toml::to_string(&v) {
        if !t.trim_start().starts_with('{') {
            let from_toml = intent::parse(&t, || "unused".into()).unwrap_or_else(|e| {
                panic!("accepted intent re-rendered as TOML is refused: {e}:\n{t}")
            });
            assert_eq!(&from_toml, i, "TOML round trip differs:\n{t}");
        }
    }
}

/// `intent_body`: a `POST /v1/intents` body (JSON when it starts with `{`, TOML otherwise).
/// Refusals name a field; an accepted intent is within its bounds and round-trips through
/// JSON and TOML.
pub fn intent_body(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the API answers 400 "body is not UTF-8" before parsing
    };
    match intent::parse(text, || "generated.1".into()) {
        Ok(i) => {
            check_intent(&i);
            if expanded(&i) {
                let again = intent::parse(text, || "generated.1".into());
                assert_eq!(
                    again.as_ref().ok(),
                    Some(&i),
                    "an expanded intent re-parsed differently"
                );
            }
        }
        Err(e) => {
            assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e:?}");
        }
    }
}

const GHOSTS: [&str; 4] = ["g1", "g2", "edge-1", "edge-2"];
const SEEDS: [&str; 3] = ["seed.fs", "seed.flow", "seed.service"];
const OPS: [&str; 5] = ["append", "read", "sleep", "start", "status"];

/// A fleet from 9 bytes: which Ghosts are known, the local one, and per Ghost whether it is
/// connected, what it hosts and declares, what it observed.
fn fleet_of(b: &[u8; 9]) -> FleetView {
    let mut f = FleetView::default();
    for (i, g) in GHOSTS.iter().enumerate() {
        if b[0] & (1 << i) == 0 {
            continue;
        }
        let (x, y) = (b[1 + 2 * i], b[2 + 2 * i]);
        let mut v = GhostView {
            connected: x & 1 != 0,
            ..Default::default()
        };
        for (j, seed) in SEEDS.iter().enumerate() {
            let ops = || {
                OPS.iter()
                    .enumerate()
                    .filter(|(k, _)| y & (1 << k) != 0)
                    .map(|(_, o)| o.to_string())
                    .collect::<Vec<_>>()
            };
            match (x >> (1 + 2 * j)) & 3 {
                0 => {}
                1 => {
                    v.seeds.insert(seed.to_string(), None);
                }
                _ => {
                    v.seeds.insert(seed.to_string(), Some(ops()));
                }
            }
            if y & 0x20 != 0 {
                v.idempotent.insert((seed.to_string(), "read".into()));
            }
        }
        if y & 0x40 != 0 {
            let state = if y & 0x80 != 0 { "running" } else { "stopped" };
            v.observed.insert(
                "seed.service/web".into(),
                BTreeMap::from([("state".into(), state.into())]),
            );
        }
        f.ghosts.insert(g.to_string(), v);
    }
    if b[0] & 0x10 != 0 {
        f.local = Some(GHOSTS[(b[0] >> 5) as usize % GHOSTS.len()].to_owned());
    }
    f
}

/// `plan_check`: 9 bytes of fleet, then the intent body up to the first NUL, then a script.
/// `submit_check` on the fleet, then the plan state machine driven by the script (grants,
/// events, ticks, Ghosts coming back, lost locks, withdraw), then drained. Properties:
/// commands go only to known, connected Ghosts in scope, under this intent; a lock token
/// sent is one granted for that Ghost's seed lock and still held; a command that got its
/// terminal event is never sent again; a released lock was acquired; the plan ends.
pub fn plan_check(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<9>() else {
        return;
    };
    let (body, script) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(intent) = intent::parse(text, || "generated.1".into()) else {
        return;
    };
    let fleet = fleet_of(head);
    match plan::submit_check(&intent, &fleet) {
        Ok(()) => {}
        Err((idx, why)) => {
            assert!(idx < intent.steps.len(), "step index {idx} out of range");
            assert!(!why.is_empty());
            return; // the API refuses it: no plan runs
        }
    }
    let mut sim = Sim::new(intent, fleet);
    sim.run(script);
}

struct Sim {
    plan: Plan,
    fleet: FleetView,
    now: u64,
    next_token: u64,
    /// Acquires not answered yet: (key, step).
    acquires: VecDeque<(String, usize)>,
    /// Lock key → token granted and not released or lost.
    held: BTreeMap<String, u64>,
    /// Dispatched, no event yet: (ghost, command_id).
    sent: VecDeque<(String, String)>,
    answered: BTreeSet<String>,
    finished: bool,
}

impl Sim {
    fn new(intent: Intent, fleet: FleetView) -> Sim {
        Sim {
            plan: Plan::new(intent, 3),
            fleet,
            now: 1_700_000_000_000,
            next_token: 1,
            acquires: VecDeque::new(),
            held: BTreeMap::new(),
            sent: VecDeque::new(),
            answered: BTreeSet::new(),
            finished: false,
        }
    }

    fn apply(&mut self, input: Input) {
        let fx = self.plan.handle(input, self.now, &self.fleet);
        let id = self.plan.intent.intent_id.clone();
        for e in fx {
            match e {
                Effect::Acquire { key, owner, .. } => {
                    assert_eq!(owner.intent_id, id);
                    self.acquires.push_back((key, owner.step));
                }
                Effect::Release { key, owner } => {
                    assert_eq!(owner.intent_id, id);
                    self.acquires.retain(|(k, _)| *k != key);
                    self.held.remove(&key);
                }
                Effect::Renew { .. } | Effect::Report(_) | Effect::Watch { .. } => {}
                Effect::Dispatch { ghost, command, .. } => {
                    let v = self
                        .fleet
                        .ghosts
                        .get(&ghost)
                        .unwrap_or_else(|| panic!("dispatch to unknown Ghost {ghost}"));
                    assert!(v.connected, "dispatch to offline Ghost {ghost}");
                    assert!(self.plan.intent.in_scope(&ghost), "{ghost} not in scope");
                    assert_eq!(command.intent_id, id);
                    assert_eq!(command.ghost_id, ghost);
                    assert!(
                        !self.answered.contains(&command.command_id),
                        "{} sent again after its terminal event",
                        command.command_id
                    );
                    if let Some(t) = command.lock_token {
                        let key = mirage::lock::key(&ghost, &command.seed_selector);
                        assert_eq!(
                            self.held.get(&key),
                            Some(&t),
                            "lock token {t} for {key} not held"
                        );
                    }
                    self.sent.push_back((ghost, command.command_id));
                }
                Effect::Finished(_) => self.finished = true,
            }
        }
    }

    fn grant(&mut self) {
        if let Some((key, _)) = self.acquires.pop_front() {
            let token = self.next_token;
            self.next_token += 1;
            self.held.insert(key.clone(), token);
            self.apply(Input::LockGranted { key, token });
        }
    }

    fn answer(&mut self, ok: bool, with_output: bool) {
        if let Some((ghost, command_id)) = self.sent.pop_front() {
            self.answered.insert(command_id.clone());
            let output = with_output
                .then(|| plan::Output::from_bytes(Some(b"out\n"), Some(b"err"), Some(1)))
                .flatten()
                .map(Box::new);
            self.apply(Input::Event {
                ghost,
                event_id: format!("evt.{command_id}"),
                command_id,
                outcome: if ok { Outcome::Success } else { Outcome::Error },
                reason: (!ok).then(|| "seed reported an error".to_owned()),
                output,
            });
        }
    }

    fn run(&mut self, script: &[u8]) {
        self.apply(Input::Start);
        for &c in script.iter().take(512) {
            if self.plan.status.is_terminal() {
                break;
            }
            match c % 8 {
                0..=2 => self.answer(c & 0x10 == 0, c & 0x20 != 0),
                3 => self.grant(),
                4 => {
                    self.now += u64::from(c >> 3) * 1000;
                    self.apply(Input::Tick);
                }
                5 => {
                    let g = GHOSTS[(c >> 3) as usize % GHOSTS.len()];
                    if let Some(v) = self.fleet.ghosts.get_mut(g) {
                        v.connected = true;
                    }
                    self.apply(Input::GhostUp(g.to_owned()));
                }
                6 => {
                    if let Some(key) = self.held.keys().next().cloned() {
                        self.held.remove(&key);
                        self.apply(Input::LockLost { key });
                    }
                }
                _ => self.apply(Input::Withdraw { why: "fuzz".into() }),
            }
        }
        // Drain: every lock granted, every command succeeds, time jumps to the next wakeup;
        // the plan must end or wait on nothing but input it may legitimately wait for (a
        // catch-up for a Ghost that stays away, a standing intent's next round).
        let mut revived = false;
        for _ in 0..20_000 {
            if self.plan.status.is_terminal() || self.finished {
                return;
            }
            if !self.acquires.is_empty() {
                self.grant();
            } else if !self.sent.is_empty() {
                self.answer(true, false);
            } else if self.plan.status == plan::Status::Satisfied && self.plan.step.is_none() {
                return;
            } else if let Some(t) = self.plan.next_wakeup(self.now, 1000) {
                self.now = t.max(self.now + 1);
                self.apply(Input::Tick);
            } else if !revived {
                revived = true;
                for g in GHOSTS {
                    if let Some(v) = self.fleet.ghosts.get_mut(g) {
                        v.connected = true;
                        self.apply(Input::GhostUp(g.to_owned()));
                    }
                }
            } else {
                return;
            }
        }
        panic!(
            "plan never ended: status {:?}, step {:?}",
            self.plan.status, self.plan.step
        );
    }
}
