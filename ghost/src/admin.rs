//! The Ghost admin boundary (PROTOCOL.md §7): one JSON request per line, one response per line
//! `{"ok":bool,"error":"…","data":…}`, many requests per connection. Action names and key
//! shapes follow edgectl (Go field names such as `GhostID`; request keys case-insensitive).
//!
//! Unlike edgectl: lines are bounded, connections are limited and time out when idle, a token
//! is required off loopback, and `execute_envelope` honours the frame's ghost_id.
//!
//! Commands from here never share Mirage's id space or fence state (issue 19 item 9): their
//! command_ids are namespaced (`admin:` inside the Ghost, shown without it), so one sent
//! early cannot make Mirage's real command a "duplicate"; their lock tokens are checked
//! against fences of their own (`admin-fences.json`), so 2^63 sent here cannot make Mirage's
//! tokens stale. `execute`/`execute_envelope` need `admin.token` unless
//! `admin.execute_without_token` says otherwise.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actorkit::metrics::MeteredAddr;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Buf, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use shared::envelope::{Args, Command, Envelope, Event};
use shared::handshake::SeedInfo;
use shared::wire::{decode_one, Limits};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::actors::dispatcher::{DStats, Dispatcher, Recent, Record, Run, Source};
use crate::actors::link::{MirageLink, Status};
use crate::actors::outbox::{Outbox, Stats};
use crate::config::GhostConfig;

pub const MAX_LINE: usize = 1024 * 1024;
pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_LIST: usize = 1000;

pub struct AdminCtx {
    pub cfg: GhostConfig,
    pub seeds: Vec<SeedInfo>,
    pub dispatcher: MeteredAddr<Dispatcher>,
    pub outbox: MeteredAddr<Outbox>,
    pub link: Option<actorkit::metrics::MeteredAddr<MirageLink>>,
    pub children: Rc<RefCell<crate::children::Children>>,
    seq: RefCell<u64>,
    bound_mirage: RefCell<Option<String>>,
    /// Lock fences of admin-path commands, loaded on first use.
    fences: RefCell<Option<crate::logic::Fences>>,
}

impl AdminCtx {
    pub fn new(
        cfg: GhostConfig,
        seeds: Vec<SeedInfo>,
        dispatcher: MeteredAddr<Dispatcher>,
        outbox: MeteredAddr<Outbox>,
        link: Option<actorkit::metrics::MeteredAddr<MirageLink>>,
        children: Rc<RefCell<crate::children::Children>>,
    ) -> AdminCtx {
        AdminCtx {
            cfg,
            seeds,
            dispatcher,
            outbox,
            link,
            children,
            seq: RefCell::new(0),
            bound_mirage: RefCell::new(None),
            fences: RefCell::new(None),
        }
    }
}

/// Binds and serves until the System stops. Returns the bound address.
pub async fn listen(ctx: Rc<AdminCtx>) -> Result<SocketAddr, String> {
    let addr: SocketAddr = ctx
        .cfg
        .admin
        .listen
        .parse()
        .map_err(|_| format!("admin listen {:?} is not ip:port", ctx.cfg.admin.listen))?;
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A connection burst beyond the slots is accepted and closed at once rather than
        // left to SYN retries behind a full queue (tokio's default backlog is 1024).
        socket.listen(4096)
    };
    let listener = bind().map_err(|e| format!("admin listen {addr}: {e}"))?;
    if ctx.cfg.admin.token.is_empty() && !ctx.cfg.admin.execute_without_token {
        tracing::warn!(component = "ghost.admin", %addr, "admin boundary has no admin.token: execute and execute_envelope are refused (set admin.token, or admin.execute_without_token = true for an edgectl Mirage)");
    }
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    actix_rt::spawn(async move {
        // Refusals are logged at most once a second, with a count: a flood must not turn
        // into a log flood.
        let (mut refused, mut logged_at) = (0u64, None::<std::time::Instant>);
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // e.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(component = "ghost.admin", error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                refused += 1;
                if logged_at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                    tracing::warn!(component = "ghost.admin", %peer, limit = MAX_CONNECTIONS, refused, "admin connections refused: limit reached");
                    refused = 0;
                    logged_at = Some(std::time::Instant::now());
                }
                drop(sock);
                continue;
            };
            let ctx = ctx.clone();
            actix_rt::spawn(async move {
                serve_conn(ctx, sock, peer).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}

async fn serve_conn(ctx: Rc<AdminCtx>, sock: TcpStream, peer: SocketAddr) {
    let mut lines = Framed::new(sock, BoundedLines::new(MAX_LINE));
    // Per line, not per byte: a client dribbling bytes (slowloris) or sending nothing
    // (half-open) gives its slot back after this long.
    let idle = Duration::from_millis(ctx.cfg.admin.idle_timeout_ms);
    loop {
        let next = match tokio::time::timeout(idle, lines.next()).await {
            Err(_) => {
                tracing::info!(component = "ghost.admin", %peer, idle_ms = idle.as_millis() as u64, "admin connection closed: no complete request line in time");
                return;
            }
            Ok(None) => return,
            Ok(Some(l)) => l,
        };
        let resp = match next {
            Ok(AdminLine::Line(line)) if line.trim().is_empty() => continue,
            Ok(AdminLine::Line(line)) => handle_line(&ctx, &line).await,
            Ok(AdminLine::TooLong) => {
                tracing::warn!(component = "ghost.admin", %peer, limit = MAX_LINE, "admin line too long");
                err(format!("request line exceeds {MAX_LINE} bytes"))
            }
            Ok(AdminLine::NotUtf8) => err("request line is not UTF-8"),
            Err(_) => return,
        };
        if lines.send(resp.to_string()).await.is_err() {
            return;
        }
    }
}

pub enum AdminLine {
    Line(String),
    TooLong,
    NotUtf8,
}

/// Newline-delimited lines of at most `max` bytes. An oversized line is discarded up to its
/// newline and reported as `TooLong`, and the connection carries on (tokio-util's
/// `LinesCodec` ends the stream instead).
pub struct BoundedLines {
    max: usize,
    discarding: bool,
    scanned: usize,
}

impl BoundedLines {
    pub fn new(max: usize) -> BoundedLines {
        BoundedLines {
            max,
            discarding: false,
            scanned: 0,
        }
    }
}

impl Decoder for BoundedLines {
    type Item = AdminLine;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<AdminLine>, std::io::Error> {
        let nl = buf[self.scanned..].iter().position(|&b| b == b'\n');
        match nl {
            Some(i) if self.discarding => {
                buf.advance(self.scanned + i + 1);
                self.scanned = 0;
                self.discarding = false;
                Ok(Some(AdminLine::TooLong))
            }
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                if end > self.max {
                    buf.advance(end + 1);
                    return Ok(Some(AdminLine::TooLong));
                }
                let line = buf.split_to(end + 1);
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                Ok(Some(match std::str::from_utf8(line) {
                    Ok(s) => AdminLine::Line(s.to_owned()),
                    Err(_) => AdminLine::NotUtf8,
                }))
            }
            None if self.discarding || buf.len() > self.max => {
                // Drop what we have; keep looking for the end of this line.
                self.discarding = true;
                buf.clear();
                self.scanned = 0;
                Ok(None)
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }
}

impl Encoder<String> for BoundedLines {
    type Error = std::io::Error;

    fn encode(&mut self, line: String, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.reserve(line.len() + 1);
        dst.extend_from_slice(line.as_bytes());
        dst.extend_from_slice(b"\n");
        Ok(())
    }
}

fn err(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

fn ok(data: Value) -> Value {
    if data.is_null() {
        json!({"ok": true})
    } else {
        json!({"ok": true, "data": data})
    }
}

/// Go decodes keys case-insensitively: fold the request's keys (two levels) to lower case.
fn lower(v: Value, depth: u8) -> Value {
    match v {
        Value::Object(m) if depth > 0 => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lower(v, depth - 1)))
                .collect(),
        ),
        other => other,
    }
}

/// Key lookup ignoring case and underscores: `target_name`, `TargetName` and `targetname`
/// are one key (Go's Mirage and Ghost disagree on these spellings).
fn field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let want = norm(k);
    m.get(k)
        .or_else(|| m.iter().find(|(key, _)| norm(key) == want).map(|(_, v)| v))
}

fn s<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    field(m, k)
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or("")
}

fn limit_of(m: &Map<String, Value>) -> usize {
    match field(m, "limit").and_then(Value::as_i64) {
        Some(n) if n > 0 => (n as usize).min(MAX_LIST),
        _ => 20,
    }
}

/// The `spawn_ghost` answer in both spellings: edgectl's Mirage decodes its untagged
/// `SpawnGhostResult` (`TargetName`, `GhostID`, `AdminAddr`; Go matches keys ignoring case
/// but not underscores), our clients and edgectl's Ghost read the snake_case keys.
pub fn spawn_reply(id: &str, addr: &str) -> Value {
    json!({
        "target_name": id, "ghost_id": id, "admin_addr": addr,
        "TargetName": id, "GhostID": id, "AdminAddr": addr,
    })
}

/// One admin request, parsed and authorised (no actor, no I/O: see [`parse_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    ListSeeds,
    Execute(ExecuteRequest),
    /// A decoded command frame (lock token still in it) and the frame's message id.
    ExecuteEnvelope {
        cmd: Command,
        message_id: u64,
    },
    ExecutionByCommandId(String),
    RecentEvents(usize),
    Verification(usize),
    SpawnGhost {
        target_name: String,
        admin_addr: String,
    },
    Actors,
    BindMirage(String),
}

/// `execute`'s command; empty ids are filled in by the Ghost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteRequest {
    pub command_id: String,
    pub intent_id: String,
    pub seed_selector: String,
    pub operation: String,
    pub args: Args,
}

/// Parses one request line against the admin settings `token` and `execute_without_token`.
/// Err is the response's `error` text. Pure, so it can be fuzzed (fuzz/ `admin_line`).
pub fn parse_request(
    line: &str,
    token: &str,
    execute_without_token: bool,
) -> Result<Request, String> {
    let req = match serde_json::from_str::<Value>(line) {
        Ok(v) => lower(v, 2),
        Err(e) => return Err(format!("invalid request: {e}")),
    };
    let Value::Object(m) = req else {
        return Err("invalid request: not a JSON object".into());
    };
    if !token.is_empty() && !constant_eq(s(&m, "token"), token) {
        return Err("unauthorized: missing or wrong token".into());
    }
    let action = s(&m, "action");
    if matches!(action, "execute" | "execute_envelope")
        && token.is_empty()
        && !execute_without_token
    {
        return Err(EXECUTE_NEEDS_TOKEN.into());
    }
    Ok(match action {
        "status" => Request::Status,
        "list_seeds" => Request::ListSeeds,
        "execute" => Request::Execute(parse_execute(&m)?),
        "execute_envelope" => parse_execute_envelope(&m)?,
        "execution_by_command_id" => Request::ExecutionByCommandId(s(&m, "command_id").to_owned()),
        "recent_events" => Request::RecentEvents(limit_of(&m)),
        "verification" => Request::Verification(limit_of(&m)),
        "spawn_ghost" => {
            let spawn = field(&m, "spawn")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Request::SpawnGhost {
                target_name: s(&spawn, "target_name").to_owned(),
                admin_addr: s(&spawn, "admin_addr").to_owned(),
            }
        }
        "actors" => Request::Actors,
        "bind_mirage" => Request::BindMirage(s(&m, "mirage_id").to_owned()),
        "" => return Err("missing action".into()),
        other => return Err(format!("unknown action: {other}")),
    })
}

pub async fn handle_line(ctx: &AdminCtx, line: &str) -> Value {
    let admin = &ctx.cfg.admin;
    let req = match parse_request(line, &admin.token, admin.execute_without_token) {
        Ok(r) => r,
        Err(e) => return err(e),
    };
    match req {
        Request::Status => status(ctx).await,
        Request::ListSeeds => ok(Value::Array(ctx.seeds.iter().map(seed_json).collect())),
        Request::Execute(c) => execute(ctx, c).await,
        Request::ExecuteEnvelope { cmd, message_id } => {
            execute_envelope(ctx, cmd, message_id).await
        }
        Request::ExecutionByCommandId(id) => {
            // The admin namespace first (what `execute` was given), then Mirage's.
            let mut rec = None;
            for command_id in [admin_ns(&id), id] {
                rec = ctx
                    .dispatcher
                    .send(crate::actors::dispatcher::Lookup { command_id })
                    .await
                    .ok()
                    .flatten();
                if rec.is_some() {
                    break;
                }
            }
            ok(json!({"found": rec.is_some(), "execution": execution_json(rec.as_ref())}))
        }
        Request::RecentEvents(limit) => match ctx.dispatcher.send(Recent { limit }).await {
            Ok(v) => ok(Value::Array(
                v.iter().map(|r| event_json(&r.event)).collect(),
            )),
            Err(e) => err(format!("dispatcher unavailable: {e}")),
        },
        Request::Verification(limit) => match ctx.dispatcher.send(Recent { limit }).await {
            Ok(v) => ok(Value::Array(
                v.iter()
                    .map(|r| verification_json(&ctx.cfg.ghost_id, r))
                    .collect(),
            )),
            Err(e) => err(format!("dispatcher unavailable: {e}")),
        },
        Request::SpawnGhost {
            target_name,
            admin_addr,
        } => {
            let r = ctx
                .children
                .borrow_mut()
                .spawn(&ctx.cfg, &target_name, &admin_addr);
            match r {
                Ok((id, addr)) => ok(spawn_reply(&id, &addr)),
                Err(e) => err(e),
            }
        }
        // ext: actor mailbox metrics (depth now and peak, sent, handled, handling time).
        Request::Actors => {
            ok(serde_json::to_value(actorkit::metrics::snapshot_all()).unwrap_or(Value::Null))
        }
        Request::BindMirage(id) => {
            tracing::info!(component = "ghost.admin", mirage_id = %id, "bind_mirage");
            *ctx.bound_mirage.borrow_mut() = Some(id);
            ok(Value::Null)
        }
    }
}

pub const EXECUTE_NEEDS_TOKEN: &str = "execute refused: the admin boundary has no admin.token; set admin.token and send it as \"token\" (or admin.execute_without_token = true on a loopback boundary for an edgectl Mirage, which cannot send one)";

/// Prefix of admin-path command ids inside the Ghost (dedupe window, outbox, records).
/// Mirage's ids start with `cmd.`, so the two spaces cannot meet.
pub const ADMIN_NS: &str = "admin:";

pub fn admin_ns(id: &str) -> String {
    format!("{ADMIN_NS}{id}")
}

/// An id as the admin client gave it: `admin:x` → `x`, `evt.admin:x` → `evt.x`,
/// `exec.admin:x` → `exec.x`; any other id unchanged.
pub fn shown(id: &str) -> String {
    for p in ["", "evt.", "exec."] {
        if let Some(rest) = id.strip_prefix(p).and_then(|r| r.strip_prefix(ADMIN_NS)) {
            return format!("{p}{rest}");
        }
    }
    id.to_owned()
}

/// The event an admin client gets back: its own ids, not the namespaced ones.
fn shown_event(mut e: Event) -> Event {
    e.event_id = shown(&e.event_id);
    e.command_id = shown(&e.command_id);
    e.execution_id = e.execution_id.as_deref().map(shown);
    e
}

fn fences_path(cfg: &GhostConfig) -> std::path::PathBuf {
    cfg.data_dir.join("admin-fences.json")
}

/// Checks an admin-path lock token against the admin fences and records it (persisted before
/// the command runs, so a restart does not forget it). Mirage's fences are not involved.
fn admin_fence(ctx: &AdminCtx, seed: &str, token: u64) -> Result<(), String> {
    let path = fences_path(&ctx.cfg);
    let mut slot = ctx.fences.borrow_mut();
    if slot.is_none() {
        let f = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<std::collections::HashMap<String, u64>>(&b)
                .map_err(|e| format!("ghost.admin: {} is unreadable ({e}); lock tokens on the admin boundary are refused until it is fixed or removed", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(format!("ghost.admin: {}: {e}", path.display())),
        };
        *slot = Some(crate::logic::Fences(f));
    }
    let Some(fences) = slot.as_mut() else {
        return Err("ghost.admin: fences unavailable".into());
    };
    if let Err(max) = fences.check(seed, token) {
        return Err(format!(
            "stale lock_token {token} for {seed}: an admin-path holder with token {max} has acted"
        ));
    }
    // Raised in memory only once it is on disk.
    let mut raised = crate::logic::Fences(fences.0.clone());
    if raised.observe(seed, token) {
        let text = serde_json::to_vec(&raised.0).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                format!(
                    "ghost.admin: cannot persist the admin fence in {}: {e}; not run",
                    path.display()
                )
            })?;
        *fences = raised;
    }
    Ok(())
}

/// Compares SHA-256 digests in constant time: neither the content nor the length of the
/// configured token shows in how long a wrong guess takes.
pub fn constant_eq(a: &str, b: &str) -> bool {
    let (x, y) = (
        openssl::sha::sha256(a.as_bytes()),
        openssl::sha::sha256(b.as_bytes()),
    );
    openssl::memcmp::eq(&x, &y)
}

async fn status(ctx: &AdminCtx) -> Value {
    let d = ctx.dispatcher.send(DStats).await.ok();
    let o = ctx.outbox.send(Stats).await.ok();
    let l = match &ctx.link {
        Some(l) => l.send(Status).await.ok(),
        None => None,
    };
    let link_mode = match (&l, ctx.bound_mirage.borrow().is_some()) {
        (Some(s), _) if s.connected => "session",
        (_, true) => "admin_route",
        _ => "none",
    };
    ok(json!({
        "GhostID": ctx.cfg.ghost_id,
        "Phase": d.as_ref().map(|d| d.phase.as_str()).unwrap_or("radiating"),
        "SeedCount": ctx.seeds.len(),
        "MirageLink": link_mode,
        "Mirage": l,
        "Outbox": o,
        "Dispatcher": d,
        "Children": ctx.children.borrow().list(),
    }))
}

fn seed_json(s: &SeedInfo) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Description": s.description,
        "Operations": s.operations.iter().map(|o| json!({
            "Name": o.name, "Description": o.description, "Idempotent": o.idempotent, "Args": o.args,
        })).collect::<Vec<_>>(),
    })
}

fn event_json(e: &Event) -> Value {
    json!({
        "EventID": shown(&e.event_id),
        "CommandID": shown(&e.command_id),
        "IntentID": e.intent_id,
        "GhostID": e.ghost_id,
        "SeedID": e.seed_id,
        "Outcome": e.outcome.as_str(),
        "TimestampMS": e.timestamp_ms.unwrap_or(0),
        "ErrorCode": e.error_code.unwrap_or(0),
        "ErrorReason": e.error_reason.clone().unwrap_or_default(),
    })
}

fn execution_json(r: Option<&Record>) -> Value {
    let Some(r) = r else {
        return json!({
            "MessageID": 0, "CommandID": "", "ExecutionID": "", "IntentID": "", "GhostID": "",
            "SeedSelector": "", "Operation": "", "Args": null, "Outcome": "", "Phase": "",
        });
    };
    let e = &r.event;
    let exec_id = shown(e.execution_id.as_deref().unwrap_or_default());
    let command_id = shown(&r.command.command_id);
    json!({
        "MessageID": r.seq,
        "CommandID": command_id,
        "ExecutionID": exec_id,
        "IntentID": r.command.intent_id,
        "GhostID": e.ghost_id,
        "SeedSelector": r.command.seed_selector,
        "Operation": r.command.operation,
        "Args": r.command.args,
        "SeedExecute": {
            "ExecutionID": exec_id, "CommandID": command_id, "SeedID": r.command.seed_selector,
            "Operation": r.command.operation, "Args": r.command.args,
        },
        "SeedResult": {
            "ExecutionID": exec_id,
            "SeedID": e.seed_id,
            "Status": e.status.clone().unwrap_or_default(),
            "Stdout": B64.encode(e.stdout.as_deref().unwrap_or_default()),
            "Stderr": B64.encode(e.stderr.as_deref().unwrap_or_default()),
            "ExitCode": e.exit_code.unwrap_or(0),
        },
        "Event": event_json(e),
        "Outcome": e.outcome.as_str(),
        "Phase": "complete",
        "Source": r.source,
    })
}

fn verification_json(ghost: &str, r: &Record) -> Value {
    let e = &r.event;
    json!({
        "request_id": format!("req.{ghost}.{}", r.seq),
        "trace_id": format!("trace.{ghost}.{}", r.seq),
        "command_message_id": r.seq,
        "command_message_type": 2,
        "event_message_type": 5,
        "command_id": shown(&r.command.command_id),
        "execution_id": e.execution_id.as_deref().map(shown),
        "event_id": shown(&e.event_id),
        "ghost_id": e.ghost_id,
        "seed_id": e.seed_id,
        "operation": r.command.operation,
        "outcome": e.outcome.as_str(),
        "seed_status": e.status,
        "exit_code": e.exit_code.unwrap_or(0),
        "timestamp_ms": e.timestamp_ms.unwrap_or(0),
        "status": e.outcome.as_str(),
        // ext: who sent it ("session" = Mirage, "admin" = this boundary).
        "source": r.source,
    })
}

async fn run(ctx: &AdminCtx, cmd: Command) -> Result<Event, String> {
    ctx.dispatcher
        .send(Run {
            cmd,
            source: Source::Admin,
        })
        .await
        .map_err(|e| format!("dispatcher unavailable: {e}"))?
}

fn parse_execute(m: &Map<String, Value>) -> Result<ExecuteRequest, String> {
    let Some(c) = field(m, "command").and_then(Value::as_object) else {
        return Err("ghost.admin: missing command".into());
    };
    let mut args = Args::new();
    match field(c, "args") {
        None | Some(Value::Null) => {}
        Some(Value::Object(a)) => {
            for (k, v) in a {
                match v.as_str() {
                    Some(v) => {
                        args.insert(k.clone(), v.to_owned());
                    }
                    None => return Err(format!("ghost.admin: args.{k} must be a string")),
                }
            }
        }
        Some(_) => return Err("ghost.admin: args must be an object of strings".into()),
    }
    let (seed, op) = (s(c, "seed_selector"), s(c, "operation"));
    if seed.is_empty() || op.is_empty() {
        return Err("ghost: invalid command envelope: missing seed_selector or operation".into());
    }
    Ok(ExecuteRequest {
        command_id: s(c, "command_id").to_owned(),
        intent_id: s(c, "intent_id").to_owned(),
        seed_selector: seed.to_owned(),
        operation: op.to_owned(),
        args,
    })
}

async fn execute(ctx: &AdminCtx, c: ExecuteRequest) -> Value {
    let n = {
        let mut q = ctx.seq.borrow_mut();
        *q += 1;
        *q
    };
    let g = &ctx.cfg.ghost_id;
    let or = |v: &str, d: String| if v.is_empty() { d } else { v.to_owned() };
    let cmd = Command {
        command_id: admin_ns(&or(
            &c.command_id,
            format!("cmd.{g}.{}.{n}", shared::now_ms()),
        )),
        intent_id: or(&c.intent_id, format!("intent.{g}.{n}")),
        ghost_id: g.clone(),
        seed_selector: c.seed_selector,
        operation: c.operation,
        args: c.args,
        ..Default::default()
    };
    let command_id = cmd.command_id.clone();
    match run(ctx, cmd).await {
        Ok(ev) => {
            let rec = ctx
                .dispatcher
                .send(crate::actors::dispatcher::Lookup { command_id })
                .await
                .ok()
                .flatten();
            let data = json!({"event": event_json(&ev), "execution": execution_json(rec.as_ref())});
            match &ev.error_reason {
                Some(reason)
                    if ev
                        .error_code
                        .is_some_and(|c| c != shared::error::code::RUNTIME) =>
                {
                    json!({"ok": false, "error": reason, "data": data})
                }
                _ => ok(data),
            }
        }
        Err(e) => err(e),
    }
}

fn parse_execute_envelope(m: &Map<String, Value>) -> Result<Request, String> {
    let raw = s(m, "command_frame");
    if raw.is_empty() {
        return Err("ghost.admin: missing command_frame".into());
    }
    let bytes = B64
        .decode(raw)
        .map_err(|e| format!("ghost.admin: command_frame is not base64: {e}"))?;
    let frame = decode_one(&bytes, &Limits::default())
        .map_err(|e| format!("ghost.admin: command_frame: {e} (code {})", e.code()))?;
    if frame.message_type != shared::envelope::mt::COMMAND {
        return Err(format!(
            "ghost.admin: command_frame has message_type {}, want 2 (command)",
            frame.message_type
        ));
    }
    match Envelope::from_frame(&frame) {
        Ok(Envelope::Command(cmd)) => Ok(Request::ExecuteEnvelope {
            cmd,
            message_id: frame.message_id,
        }),
        Ok(_) => Err("ghost.admin: command_frame is not a command".into()),
        Err(e) => Err(format!(
            "ghost.admin: command_frame: {e} (code {})",
            e.code()
        )),
    }
}

async fn execute_envelope(ctx: &AdminCtx, mut cmd: Command, message_id: u64) -> Value {
    if let Some(token) = cmd.lock_token.take() {
        if let Err(e) = admin_fence(ctx, cmd.seed_selector.trim(), token) {
            tracing::warn!(component = "ghost.admin", command_id = %cmd.command_id, seed = %cmd.seed_selector, error = %e, "execute_envelope refused");
            return err(e);
        }
    }
    cmd.command_id = admin_ns(&cmd.command_id);
    match run(ctx, cmd).await {
        Ok(ev) => match Envelope::Event(shown_event(ev))
            .to_frame(message_id)
            .and_then(|f| f.to_bytes())
        {
            Ok(b) => ok(json!({"event_frame": B64.encode(&b)})),
            Err(e) => err(format!("encode event frame: {e}")),
        },
        Err(e) => err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_is_exact() {
        assert!(constant_eq("s3cret", "s3cret"));
        assert!(!constant_eq("s3cret", "s3cre"));
        assert!(!constant_eq("", "s3cret"));
        assert!(!constant_eq("s3cret", "s3creT"));
        assert!(constant_eq("", ""));
    }

    #[test]
    fn admin_ids_are_shown_without_their_namespace() {
        let id = admin_ns("cmd.i.1");
        assert_eq!(id, "admin:cmd.i.1");
        assert_eq!(shown(&id), "cmd.i.1");
        assert_eq!(shown(&format!("evt.{id}")), "evt.cmd.i.1");
        assert_eq!(shown(&format!("exec.{id}")), "exec.cmd.i.1");
        // Mirage's ids are never touched, even one that mentions the prefix later.
        assert_eq!(shown("cmd.admin:x.1"), "cmd.admin:x.1");
        assert_eq!(shown("evt.cmd.i.1"), "evt.cmd.i.1");
    }

    #[test]
    fn requests_parse_without_a_ghost() {
        let line = r#"{"Action":"execute","Token":"t","Command":{"seed_selector":" seed.fs ","operation":"read","args":{"path":"a"}}}"#;
        let Ok(Request::Execute(c)) = parse_request(line, "t", false) else {
            panic!("execute with the token is accepted");
        };
        assert_eq!(
            (c.seed_selector.as_str(), c.operation.as_str()),
            ("seed.fs", "read")
        );
        assert_eq!(c.args.get("path").map(String::as_str), Some("a"));
        assert!(c.command_id.is_empty(), "the Ghost fills the id in");
        assert_eq!(
            parse_request(line, "other", false),
            Err("unauthorized: missing or wrong token".into())
        );
        assert_eq!(
            parse_request(line, "", false),
            Err(EXECUTE_NEEDS_TOKEN.into())
        );
        assert_eq!(
            parse_request(r#"{"action":"recent_events","limit":5000}"#, "", false),
            Ok(Request::RecentEvents(MAX_LIST))
        );
        assert_eq!(
            parse_request(
                r#"{"action":"execute","command":{"args":{"n":1}}}"#,
                "",
                true
            ),
            Err("ghost.admin: args.n must be a string".into())
        );
        assert!(parse_request("[1]", "", true).is_err());
        assert_eq!(parse_request("{}", "", true), Err("missing action".into()));
    }

    #[test]
    fn bounded_lines_discard_oversize_and_continue() {
        let mut c = BoundedLines::new(8);
        let mut b = BytesMut::from(&b"short\n0123456789abc"[..]);
        assert!(matches!(c.decode(&mut b).unwrap(), Some(AdminLine::Line(l)) if l == "short"));
        assert!(c.decode(&mut b).unwrap().is_none());
        assert!(b.is_empty(), "oversize bytes are not kept");
        b.extend_from_slice(b"def\nok\r\n");
        assert!(matches!(
            c.decode(&mut b).unwrap(),
            Some(AdminLine::TooLong)
        ));
        assert!(matches!(c.decode(&mut b).unwrap(), Some(AdminLine::Line(l)) if l == "ok"));
        let mut b = BytesMut::from(&b"0123456789\n"[..]);
        assert!(matches!(
            c.decode(&mut b).unwrap(),
            Some(AdminLine::TooLong)
        ));
        let mut b = BytesMut::from(&b"\xff\n"[..]);
        assert!(matches!(
            c.decode(&mut b).unwrap(),
            Some(AdminLine::NotUtf8)
        ));
    }
}
