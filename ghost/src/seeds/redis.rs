//! `seed.redis`: real `redis-server` instances on seed.service's supervision (restart per
//! policy, exits observed at once, stop on Ghost shutdown). The argv is built here, never
//! taken from arguments: an operation picks an instance name and a port, nothing else. Each
//! instance keeps its data under `<data_dir>/redis/<name>`, listens on 127.0.0.1 only and
//! advertises `redis://127.0.0.1:PORT/0`. `health` is a PING over TCP, `info` the INFO reply
//! (a tiny RESP exchange, bounded).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use shared::envelope::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
];

pub struct Redis {
    set: ServiceSet,
    ports: BTreeMap<String, u16>,
}

impl Redis {
    pub fn new(conf: &BTreeMap<String, RedisSpec>, dir: PathBuf) -> Redis {
        let specs = conf
            .iter()
            .map(|(n, r)| (n.clone(), service_spec(r)))
            .collect();
        Redis {
            set: ServiceSet::new("seed.redis", specs, dir),
            ports: conf.iter().map(|(n, r)| (n.clone(), r.port)).collect(),
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
