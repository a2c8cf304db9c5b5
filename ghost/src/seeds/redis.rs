//! `seed.redis`: real `redis-server` instances on seed.service's supervision (restart per
//! policy, exits observed at once, stop on Ghost shutdown). The argv is built here, never
//! taken from arguments: an operation picks an instance name and a port, nothing else. Each
//! instance keeps its data under `<data_dir>/redis/<name>`, listens on 127.0.0.1 only and
//! advertises `redis://127.0.0.1:PORT/0`. `health` is a PING over TCP, `info` the INFO reply
//! (a tiny RESP exchange, bounded).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use shared::envelope::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::redis_move::{self, Manifest};
use super::service::{self, call_common, Restart, ServiceSet, ServiceSpec};
use super::{Call, OperationSpec, Seed, SeedCtx, SeedOutput};

/// Bytes of an INFO reply kept at most.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// `[redis.NAME]` of ghost.toml (optional: `start name=.. port=..` declares one too).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSpec {
    pub port: u16,
    pub restart: Restart,
    pub autostart: bool,
    /// The server binary (default `redis-server` on PATH).
    pub binary: String,
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            port: 0,
            restart: Restart::OnFailure,
            autostart: false,
            binary: "redis-server".into(),
        }
    }
}

pub fn uri(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/0")
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

pub fn parse_port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(p) if p >= 1024 => Ok(p),
        _ => Err(format!(
            "argument port {v:?} must be a whole number 1024..=65535"
        )),
    }
}

pub fn validate(m: &BTreeMap<String, RedisSpec>) -> Result<(), String> {
    for (name, r) in m {
        if !valid_name(name) {
            return Err(format!(
                "redis.{name}: an instance name is 1..=64 of [a-z0-9_-]"
            ));
        }
        if r.port < 1024 {
            return Err(format!(
                "redis.{name}.port is {}; it must be 1024..=65535",
                r.port
            ));
        }
        if r.binary.trim().is_empty() {
            return Err(format!("redis.{name}.binary must not be empty"));
        }
    }
    Ok(())
}

/// The service that runs one instance: fixed flags, data in its own dir (the cwd).
pub fn service_spec(r: &RedisSpec) -> ServiceSpec {
    let port = r.port.to_string();
    ServiceSpec {
        argv: [
            r.binary.as_str(),
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            ".",
            "--daemonize",
            "no",
            "--appendonly",
            "yes",
            "--protected-mode",
            "yes",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        restart: r.restart,
        backoff_initial_ms: 200,
        ready: format!("tcp:{}", r.port),
        stop_signal: "TERM".into(),
        stop_grace_ms: 5_000,
        autostart: r.autostart,
        uri: uri(r.port),
        ..ServiceSpec::default()
    }
}

/// One command as a RESP array of bulk strings.
pub fn resp_command(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
    }
    out
}

/// Parses one RESP reply: simple string, error, integer or bulk string. `Ok(None)` = need
/// more bytes.
pub fn parse_reply(buf: &[u8]) -> Result<Option<String>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    match buf.first() {
        Some(b'+') | Some(b':') => Ok(Some(line)),
        Some(b'-') => Err(format!("redis error: {line}")),
        Some(b'$') => {
            let n: i64 = line
                .parse()
                .map_err(|_| format!("bad bulk length {line:?}"))?;
            if n < 0 {
                return Ok(Some(String::new()));
            }
            let n = n as usize;
            if n > MAX_REPLY_BYTES {
                return Err(format!("reply of {n} bytes exceeds {MAX_REPLY_BYTES}"));
            }
            let start = end + 2;
            if buf.len() < start + n {
                return Ok(None);
            }
            Ok(Some(
                String::from_utf8_lossy(&buf[start..start + n]).into_owned(),
            ))
        }
        _ => Err("not a RESP reply".into()),
    }
}

/// Sends one command to 127.0.0.1:port and reads its reply, bounded in time and size.
pub async fn ask(port: u16, parts: &[&str]) -> Result<String, String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        s.write_all(&resp_command(parts))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = parse_reply(&buf)? {
                return Ok(r);
            }
            if buf.len() > MAX_REPLY_BYTES + 64 {
                return Err(format!("reply exceeds {MAX_REPLY_BYTES} bytes"));
            }
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed before the reply".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no reply from 127.0.0.1:{port} within {IO_TIMEOUT:?}"))?
}

static OPS: &[OperationSpec] = &[
    OperationSpec::new(
        "start",
        "Start instance `name` (port from ghost.toml, or `port` 1024..=65535); waits for it",
    )
    .args(&["name", "port"])
    .required(&["name"]),
    OperationSpec::new("stop", "Stop an instance (TERM, KILL after 5 s)")
        .args(&["name"])
        .required(&["name"]),
    OperationSpec::new("restart", "Stop, then start an instance")
        .args(&["name"])
        .required(&["name"]),
    OperationSpec::new("status", "State, pid, restarts, URI of one instance or all")
        .args(&["name"]),
    OperationSpec::new(
        "logs",
        "Last lines of an instance's log (lines, default 100)",
    )
    .args(&["name", "lines"])
    .required(&["name"]),
    OperationSpec::new("health", "PING the instance over TCP (PONG = healthy)")
        .args(&["name"])
        .required(&["name"]),
    OperationSpec::new("info", "INFO from the instance (optional section)")
        .args(&["name", "section"])
        .required(&["name"]),
    OperationSpec::new(
        "snapshot",
        "storage.move: BGSAVE instance `name` into a snapshot for `move` (size, sha256, keys)",
    )
    .args(&["name", "move"])
    .required(&["name", "move"]),
    OperationSpec::new(
        "serve",
        "storage.move: offer snapshot `move` once to Ghost `for` with `token` on 127.0.0.1:`port` for `ttl`",
    )
    .args(&["name", "move", "token", "for", "port", "ttl"])
    .required(&["name", "move", "token", "for", "port"]),
    OperationSpec::new(
        "restore",
        "storage.move: fetch `move` from `from` as Ghost `as` with `token`, verify sha256, start `name` on `port`, verify keys",
    )
    .args(&["name", "port", "move", "from", "token", "as"])
    .required(&["name", "port", "move", "from", "token", "as"])
    .mutating(),
    OperationSpec::new(
        "verify",
        "storage.move: the restored instance's key count equals its snapshot's",
    )
    .args(&["name", "move"])
    .required(&["name", "move"]),
];

pub struct Redis {
    set: ServiceSet,
    ports: BTreeMap<String, u16>,
    dir: PathBuf,
    /// Moves offered now (move id → token): a re-sent `serve` with the same token is a no-op.
    serving: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Redis {
    pub fn new(conf: &BTreeMap<String, RedisSpec>, dir: PathBuf) -> Redis {
        let specs = conf
            .iter()
            .map(|(n, r)| (n.clone(), service_spec(r)))
            .collect();
        Redis {
            set: ServiceSet::new("seed.redis", specs, dir.clone()),
            ports: conf.iter().map(|(n, r)| (n.clone(), r.port)).collect(),
            dir,
            serving: Arc::default(),
        }
    }

    fn port_of(&self, name: &str) -> Result<u16, String> {
        self.ports.get(name).copied().ok_or_else(|| {
            format!("seed.redis: no instance {name:?} (start it with a port, or declare [redis.{name}] in ghost.toml)")
        })
    }

    fn ask_op(&self, name: &str, parts: Vec<String>) -> Call {
        let port = match self.port_of(name) {
            Ok(p) => p,
            Err(e) => return Call::Done(SeedOutput::error(2, format!("{e}\n"))),
        };
        let fut: LocalBoxFuture<'static, SeedOutput> = Box::pin(async move {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            match ask(port, &refs).await {
                Ok(r) => SeedOutput::ok(format!("{}\n", r.trim_end())),
                Err(e) => SeedOutput::error(1, format!("seed.redis {}: {e}\n", uri(port))),
            }
        });
        Call::Pending(fut)
    }
}

fn arg<'a>(args: &'a Args, k: &str) -> Result<&'a str, String> {
    args.get(k)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("argument {k} is required"))
}

fn move_arg(args: &Args) -> Result<String, String> {
    let m = arg(args, "move")?;
    if !redis_move::valid_move_id(m) {
        return Err(format!(
            "argument move {m:?} must be 1..=128 of [A-Za-z0-9._-]"
        ));
    }
    Ok(m.to_owned())
}

fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

fn fail(code: u32, e: impl std::fmt::Display) -> SeedOutput {
    SeedOutput::error(code, format!("{e}\n"))
}

/// DBSIZE once the instance has loaded its data (LOADING replies are waited out).
async fn dbsize_loaded(port: u16, within: Duration) -> Result<u64, String> {
    let t0 = tokio::time::Instant::now();
    loop {
        match ask(port, &["DBSIZE"]).await {
            Ok(n) => {
                return n
                    .trim()
                    .parse()
                    .map_err(|_| format!("DBSIZE answered {n:?}"))
            }
            Err(e) if t0.elapsed() < within && e.contains("LOADING") => {}
            Err(e) if t0.elapsed() < within && e.contains("connect") => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("worker: {e}"))?
}

impl Redis {
    /// BGSAVE, wait for it, hard-link the dump as this move's snapshot, hash it.
    fn snapshot(&self, name: &str, args: &Args) -> Call {
        let (port, move_id) = match (self.port_of(name), move_arg(args)) {
            (Ok(p), Ok(m)) => (p, m),
            (Err(e), _) | (_, Err(e)) => return Call::Done(fail(2, e)),
        };
        let (inst, moves, name) = (
            self.dir.join(name),
            redis_move::moves_dir(&self.dir),
            name.to_owned(),
        );
        Call::Pending(Box::pin(async move {
            let run = async {
                let before = ask(port, &["INFO", "persistence"]).await?;
                let saves0 = info_field(&before, "rdb_saves").unwrap_or_default();
                let t0 = tokio::time::Instant::now();
                loop {
                    match ask(port, &["BGSAVE"]).await {
                        Ok(_) => break,
                        Err(e) if e.contains("in progress") && t0.elapsed() < SNAPSHOT_WAIT => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(format!("BGSAVE: {e}")),
                    }
                }
                loop {
                    let i = ask(port, &["INFO", "persistence"]).await?;
                    let idle = info_field(&i, "rdb_bgsave_in_progress").as_deref() == Some("0");
                    if idle && info_field(&i, "rdb_saves").unwrap_or_default() != saves0 {
                        if info_field(&i, "rdb_last_bgsave_status").as_deref() != Some("ok") {
                            return Err("BGSAVE failed (see the instance's log)".into());
                        }
                        break;
                    }
                    if t0.elapsed() > SNAPSHOT_WAIT {
                        return Err(format!("BGSAVE not done within {SNAPSHOT_WAIT:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                blocking(move || {
                    std::fs::create_dir_all(&moves)
                        .map_err(|e| format!("create {}: {e}", moves.display()))?;
                    let file = moves.join(format!("{move_id}.rdb"));
                    let _ = std::fs::remove_file(&file);
                    std::fs::hard_link(inst.join("dump.rdb"), &file)
                        .map_err(|e| format!("link the dump: {e}"))?;
                    let (size, sha256) = redis_move::sha256_file(&file)?;
                    let keys = redis_move::rdb_key_count(&redis_move::read_head(&file)?)?;
                    let m = Manifest {
                        move_id: move_id.clone(),
                        name,
                        size,
                        sha256,
                        keys,
                        port,
                    };
                    redis_move::write_json(&moves.join(format!("{move_id}.json")), &m)?;
                    Ok(m)
                })
                .await
            };
            match run.await {
                Ok(m) => SeedOutput::ok(format!(
                    "snapshot {} of {}: {} bytes sha256={} keys={}\n",
                    m.move_id, m.name, m.size, m.sha256, m.keys
                )),
                Err(e) => fail(1, format!("seed.redis snapshot {}: {e}", uri(port))),
            }
        }))
    }

    fn serve(&self, name: &str, args: &Args, ctx: &SeedCtx) -> SeedOutput {
        let parsed = (|| {
            let move_id = move_arg(args)?;
            let token = arg(args, "token")?.to_owned();
            if !redis_move::valid_token(&token) {
                return Err("argument token must be 16..=128 letters and digits".to_owned());
            }
            let for_ghost = arg(args, "for")?.to_owned();
            shared::handshake::validate_ghost_id(&for_ghost)
                .map_err(|e| format!("argument for: {e}"))?;
            let port = parse_port(arg(args, "port")?)?;
            let ttl = match args.get("ttl") {
                None => Duration::from_secs(600),
                Some(t) => Duration::from_millis(
                    parse_ms(t)
                        .filter(|ms| (1..=86_400_000).contains(ms))
                        .ok_or_else(|| format!("argument ttl {t:?} must be 1ms..=24h"))?,
                ),
            };
            Ok((move_id, token, for_ghost, port, ttl))
        })();
        let (move_id, token, for_ghost, port, ttl) = match parsed {
            Ok(x) => x,
            Err(e) => return fail(2, e),
        };
        if let Some(t) = lock(&self.serving).get(&move_id) {
            return if *t == token {
                SeedOutput::ok(format!("offering {move_id} already\n"))
            } else {
                fail(2, format!("move {move_id} is offered with another token"))
            };
        }
        let moves = redis_move::moves_dir(&self.dir);
        let manifest = match redis_move::read_manifest(&moves.join(format!("{move_id}.json"))) {
            Ok(m) if m.name == name => m,
            Ok(m) => return fail(2, format!("move {move_id} is a snapshot of {}", m.name)),
            Err(e) => {
                return fail(
                    2,
                    format!("no snapshot for move {move_id} (run snapshot first): {e}"),
                )
            }
        };
        let (file, json) = (
            moves.join(format!("{move_id}.rdb")),
            moves.join(format!("{move_id}.json")),
        );
        let size = manifest.size;
        let offer = redis_move::Offer {
            manifest,
            file: file.clone(),
            for_ghost: for_ghost.clone(),
            token: token.clone(),
            deadline: std::time::Instant::now() + ttl,
        };
        let serving = self.serving.clone();
        let id = move_id.clone();
        lock(&self.serving).insert(move_id.clone(), token);
        // The snapshot goes with the offer: a spent token cannot be used again anyway.
        let done = move || {
            lock(&serving).remove(&id);
            let _ = std::fs::remove_file(&file);
            let _ = std::fs::remove_file(&json);
        };
        match redis_move::serve(port, offer, ctx.clone(), done) {
            Ok(addr) => SeedOutput::ok(format!(
                "offering {move_id} ({size} bytes) to {for_ghost} on {addr} for {} s\n",
                ttl.as_secs()
            )),
            Err(e) => {
                lock(&self.serving).remove(&move_id);
                fail(1, e)
            }
        }
    }

    fn restore(&mut self, name: &str, args: &Args, ctx: &SeedCtx) -> Call {
        let parsed = (|| {
            let move_id = move_arg(args)?;
            let port = parse_port(arg(args, "port")?)?;
            let from = arg(args, "from")?.to_owned();
            let token = arg(args, "token")?.to_owned();
            let me = arg(args, "as")?.to_owned();
            Ok::<_, String>((move_id, port, from, token, me))
        })();
        let (move_id, port, from, token, me) = match parsed {
            Ok(x) => x,
            Err(e) => return Call::Done(fail(2, e)),
        };
        let dest = self.dir.join(name);
        if dest.exists() || self.set.status_of(name).state != "stopped" {
            return Call::Done(fail(
                2,
                format!("seed.redis: instance {name} exists here; a move restores only into a new instance"),
            ));
        }
        if let Some((other, _)) = self.ports.iter().find(|(n, q)| **q == port && **n != name) {
            return Call::Done(fail(
                2,
                format!("argument port {port}: instance {other} has it"),
            ));
        }
        // Something else listening there would pass the readiness probe and answer DBSIZE.
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Call::Done(fail(2, format!("argument port {port} is not free: {e}")));
        }
        if let Err(e) = self.set.declare(
            name,
            service_spec(&RedisSpec {
                port,
                ..RedisSpec::default()
            }),
        ) {
            return Call::Done(fail(2, e));
        }
        self.ports.insert(name.to_owned(), port);
        let incoming = redis_move::incoming_dir(&self.dir, name);
        let (set, ctx, name) = (self.set.clone(), ctx.clone(), name.to_owned());
        Call::Pending(Box::pin(async move {
            let _ = std::fs::remove_dir_all(&incoming);
            let (inc, c, m) = (incoming.clone(), ctx.clone(), move_id.clone());
            let fetched =
                blocking(move || redis_move::fetch(&from, &m, &me, &token, &inc, &c)).await;
            let f = match fetched {
                Ok(f) => f,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&incoming);
                    return fail(1, format!("seed.redis restore {name}: {e}; target removed"));
                }
            };
            let marker = Manifest {
                move_id: move_id.clone(),
                name: name.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                keys: f.keys,
                port,
            };
            // Pending until the key count matches: a Ghost killed before that removes it.
            let installed = redis_move::write_json(&incoming.join(redis_move::PENDING), &marker)
                .and_then(|()| {
                    std::fs::rename(&incoming, &dest).map_err(|e| format!("install: {e}"))
                });
            if let Err(e) = installed {
                let _ = std::fs::remove_dir_all(&incoming);
                return fail(1, format!("seed.redis restore {name}: {e}; target removed"));
            }
            let started = set.start(&name, &ctx).await;
            let load = Duration::from_secs(60) + Duration::from_millis(f.size / 20_000);
            let check = if started.succeeded() {
                match dbsize_loaded(port, load).await {
                    Ok(n) if n == f.keys => Ok(()),
                    Ok(n) => Err(format!(
                        "the restored instance has {n} keys, the snapshot {}",
                        f.keys
                    )),
                    Err(e) => Err(format!("DBSIZE: {e}")),
                }
            } else {
                Err(format!(
                    "start: {}",
                    String::from_utf8_lossy(&started.stderr).trim()
                ))
            };
            let verified = check.and_then(|()| {
                std::fs::rename(
                    dest.join(redis_move::PENDING),
                    dest.join(redis_move::VERIFIED),
                )
                .map_err(|e| format!("mark verified: {e}"))
            });
            match verified {
                Ok(()) => {
                    let _ = ctx.observe(
                        [
                            ("instance".to_owned(), format!("move.{move_id}")),
                            ("role".to_owned(), "target".to_owned()),
                            ("state".to_owned(), "verified".to_owned()),
                            ("bytes".to_owned(), f.size.to_string()),
                            ("total".to_owned(), f.size.to_string()),
                            ("keys".to_owned(), f.keys.to_string()),
                            (
                                "rate_mb_s".to_owned(),
                                format!(
                                    "{:.1}",
                                    f.size as f64 / 1e6 / f.elapsed.as_secs_f64().max(1e-6)
                                ),
                            ),
                        ]
                        .into(),
                    );
                    SeedOutput::ok(format!(
                        "restored {name} on {} from move {move_id}: {}, keys verified\n",
                        uri(port),
                        redis_move::summary(&f)
                    ))
                }
                Err(e) => {
                    set.stop(&name).await;
                    let _ = std::fs::remove_dir_all(&dest);
                    fail(
                        1,
                        format!("seed.redis restore {name}: {e}; target stopped and removed"),
                    )
                }
            }
        }))
    }

    fn verify(&self, name: &str, args: &Args) -> Call {
        let (port, move_id) = match (self.port_of(name), move_arg(args)) {
            (Ok(p), Ok(m)) => (p, m),
            (Err(e), _) | (_, Err(e)) => return Call::Done(fail(2, e)),
        };
        let m = match redis_move::read_manifest(&self.dir.join(name).join(redis_move::VERIFIED)) {
            Ok(m) if m.move_id == move_id => m,
            Ok(m) => {
                return Call::Done(fail(
                    1,
                    format!("{name} was restored by move {}", m.move_id),
                ))
            }
            Err(e) => {
                return Call::Done(fail(
                    1,
                    format!("{name} is not a verified move target: {e}"),
                ))
            }
        };
        Call::Pending(Box::pin(async move {
            match dbsize_loaded(port, Duration::from_secs(60)).await {
                Ok(n) if n == m.keys => SeedOutput::ok(format!(
                    "verified {} on {}: keys={n} sha256={} (move {move_id})\n",
                    m.name,
                    uri(port),
                    m.sha256
                )),
                Ok(n) => fail(
                    1,
                    format!("{} has {n} keys, its snapshot {}", m.name, m.keys),
                ),
                Err(e) => fail(1, format!("seed.redis verify {}: {e}", uri(port))),
            }
        }))
    }
}

/// `500ms`, `30s`, `10m` or milliseconds.
fn parse_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1)
    };
    n.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// How long a snapshot may wait for BGSAVE.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Seed for Redis {
    fn id(&self) -> &'static str {
        "seed.redis"
    }
    fn name(&self) -> &'static str {
        "Redis"
    }
    fn description(&self) -> String {
        // Registration advertises each declared instance's URI (as edgectl's
        // `endpoint_uri=` enrichment does).
        let items: Vec<String> = self
            .ports
            .iter()
            .map(|(n, p)| format!("{n}={}", uri(*p)))
            .collect();
        if items.is_empty() {
            return "Real redis-server instances, supervised".into();
        }
        service::bounded_description("Real redis-server instances, supervised; ", &items, "; ")
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }
    fn concurrency(&self) -> usize {
        service::MAX_SERVICES
    }
    fn start(&mut self, ctx: &SeedCtx) -> Result<(), String> {
        let removed = redis_move::clean_leftovers(&self.dir);
        if !removed.is_empty() {
            tracing::warn!(component = "ghost.move", removed = ?removed, "removed half-restored move targets");
        }
        for n in self.set.names() {
            if self.set.spec(&n).is_ok_and(|s| s.autostart) {
                drop(self.set.start(&n, ctx));
            }
        }
        Ok(())
    }
    fn call(&mut self, operation: &str, args: &Args, ctx: &SeedCtx) -> Call {
        let name = args.get("name").map(|s| s.trim()).unwrap_or("").to_owned();
        if !valid_name(&name) {
            return Call::Done(SeedOutput::error(
                2,
                format!("argument name {name:?} must be 1..=64 of [a-z0-9_-]\n"),
            ));
        }
        match operation {
            "start" => {
                if let Some(p) = args.get("port") {
                    let port = match parse_port(p) {
                        Ok(p) => p,
                        Err(e) => return Call::Done(SeedOutput::error(2, format!("{e}\n"))),
                    };
                    if let Some((other, _)) =
                        self.ports.iter().find(|(n, q)| **q == port && **n != name)
                    {
                        return Call::Done(SeedOutput::error(
                            2,
                            format!("argument port {port}: instance {other} has it\n"),
                        ));
                    }
                    let spec = service_spec(&RedisSpec {
                        port,
                        ..RedisSpec::default()
                    });
                    if let Err(e) = self.set.declare(&name, spec) {
                        return Call::Done(SeedOutput::error(2, format!("{e}\n")));
                    }
                    self.ports.insert(name.clone(), port);
                }
                call_common(&self.set, "start", args, ctx)
            }
            "health" => self.ask_op(&name, vec!["PING".into()]),
            "info" => {
                let mut parts = vec!["INFO".to_owned()];
                if let Some(s) = args.get("section").filter(|s| !s.trim().is_empty()) {
                    if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Call::Done(SeedOutput::error(
                            2,
                            format!("argument section {s:?} must be a word (e.g. server)\n"),
                        ));
                    }
                    parts.push(s.trim().to_owned());
                }
                self.ask_op(&name, parts)
            }
            "snapshot" => self.snapshot(&name, args),
            "serve" => Call::Done(self.serve(&name, args, ctx)),
            "restore" => self.restore(&name, args, ctx),
            "verify" => self.verify(&name, args),
            other => call_common(&self.set, other, args, ctx),
        }
    }
    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        self.set.stop_all()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.set.signal_stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_round_trip() {
        assert_eq!(resp_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(parse_reply(b"+PONG\r\n").unwrap().unwrap(), "PONG");
        assert_eq!(parse_reply(b"+PO").unwrap(), None);
        assert_eq!(parse_reply(b"$5\r\nhel").unwrap(), None);
        assert_eq!(parse_reply(b"$5\r\nhello\r\n").unwrap().unwrap(), "hello");
        assert!(parse_reply(b"-ERR no\r\n").unwrap_err().contains("ERR no"));
        assert!(parse_reply(b"$999999999\r\n").is_err());
        assert!(parse_reply(b"?\r\n").is_err());
    }

    #[test]
    fn config_and_args_are_validated_by_name() {
        let mut m = BTreeMap::new();
        m.insert("cache".to_owned(), RedisSpec::default());
        assert!(validate(&m).unwrap_err().contains("redis.cache.port"));
        m.get_mut("cache").unwrap().port = 6390;
        assert!(validate(&m).is_ok());
        assert!(parse_port("80").unwrap_err().contains("port"));
        let s = service_spec(&m["cache"]);
        assert_eq!(s.ready, "tcp:6390");
        assert_eq!(s.uri, "redis://127.0.0.1:6390/0");
        assert!(s.argv.windows(2).any(|w| w == ["--bind", "127.0.0.1"]));
    }
}
