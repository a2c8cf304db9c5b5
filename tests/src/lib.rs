//! Harness for cross-process tests: real `mirage` and `ghost` binaries in temp dirs on
//! loopback, a tiny blocking HTTP client for the API, a Ghost admin client, a cuttable TCP
//! proxy and a scripted fake Ghost. Everything is bounded in time and cleaned up on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};

use serde_json::Value;

static BUILD: Once = Once::new();
static N: AtomicU32 = AtomicU32::new(0);

/// target/debug (or release) next to this test binary; builds the two binaries once.
pub fn bin(name: &str) -> PathBuf {
    BUILD.call_once(|| {
        // Same profile as this test binary, so target/<profile>/ has them.
        let mut args = vec!["build", "-q", "-p", "mirage", "-p", "ghost"];
        if !cfg!(debug_assertions) {
            args.push("--release");
        }
        let st = Command::new(env!("CARGO"))
            .args(&args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build");
        assert!(st.success(), "building mirage and ghost failed");
    });
    // Test binaries live in target/<profile>/deps, the bench tool in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap();
    }
    dir.join(name)
}

/// `ghost swarm` with `count` sessions against `mirage`; its per-second JSON stats lines
/// arrive on the receiver. Kill the child to stop it.
pub fn swarm(
    mirage: &str,
    count: usize,
    extra: &[&str],
) -> (std::process::Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(bin("ghost"))
        .args(["swarm", "--mirage", mirage, "--count", &count.to_string()])
        // Tests want quick heartbeats; a caller may choose its own.
        .args(if extra.contains(&"--heartbeat-ms") {
            &[][..]
        } else {
            &["--heartbeat-ms", "1000"][..]
        })
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "mg-e2e-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that prints one `… ready …` line; killed on drop.
pub struct Proc {
    pub child: Child,
    pub ready: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(exe: &Path, args: &[&str], log: PathBuf) -> Proc {
        Proc::spawn_env(exe, args, log, &[])
    }

    /// As `spawn`, with extra environment (e.g. `RUST_LOG`, default `info`).
    pub fn spawn_env(exe: &Path, args: &[&str], log: PathBuf, env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            ))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not start; log:\n{}",
                    exe.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        assert!(ready.contains("ready"), "{ready}");
        Proc { child, ready, log }
    }

    pub fn field(&self, key: &str) -> String {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.sigkill();
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.sigterm();
        }
    }
}

pub struct Mirage {
    pub proc: Proc,
    pub session: String,
    pub api: String,
}

impl Mirage {
    /// Starts `mirage serve` with its data under `dir/mirage`. `session` 0 = any free port.
    pub fn start(dir: impl AsRef<Path>, session_port: u16, extra_toml: &str) -> Mirage {
        Mirage::start_env(dir, session_port, extra_toml, &[])
    }

    /// As `start`, with extra environment (e.g. `MIRAGE_FAULT`).
    pub fn start_env(
        dir: impl AsRef<Path>,
        session_port: u16,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Mirage {
        let dir = dir.as_ref();
        let cfg = dir.join("mirage.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{session_port}\"\ndata_dir = \"{}\"\nlocal_ghost = \"\"\ntick_ms = 100\n{}",
                dir.join("mirage").display(),
                merge_sections(
                    extra_toml,
                    &[
                        ("api", "listen = \"127.0.0.1:0\""),
                        ("timeouts", "heartbeat_ms = 500\ndead_after_ms = 3000"),
                    ]
                )
            ),
        )
        .unwrap();
        let proc = Proc::spawn_env(
            &bin("mirage"),
            &["serve", "--config", cfg.to_str().unwrap()],
            dir.join("mirage.log"),
            env,
        );
        let session = proc.field("session");
        let api = proc.field("api");
        Mirage { proc, session, api }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http(&self.api, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        http(&self.api, "POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        http(&self.api, "DELETE", path, None)
    }

    /// Submits a plan and returns its intent id.
    pub fn submit(&self, plan: &str) -> String {
        let (st, v) = self.post("/v1/intents", plan);
        assert_eq!(st, 201, "{v}");
        v["intent_id"].as_str().unwrap().to_owned()
    }

    /// Waits until the intent reaches `status` (satisfied, failed, withdrawn).
    pub fn wait_status(&self, id: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (st, v) = self.get(&format!("/v1/intents/{id}"));
            if st == 200 && v["summary"]["status"] == want {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "intent {id} not {want} within {within:?}: {v}\nmirage log tail:\n{}",
                    tail(&self.proc.log_text(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` ghosts are connected.
    pub fn wait_ghosts(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            // The overview counts the whole fleet; `/v1/ghosts` answers a page of it.
            let (_, v) = self.get("/v1/overview");
            let c = v["ghosts_connected"].as_u64().unwrap_or(0) as usize;
            if c >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {c} of {n} ghosts connected: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Locks that have a holder now (`/v1/locks`); empty when every lock is free.
    pub fn held_locks(&self) -> Vec<Value> {
        let (_, v) = self.get("/v1/locks");
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter(|l| !l["holder"].is_null())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn reports(&self, id: &str) -> Vec<Value> {
        let (_, v) = self.get(&format!("/v1/reports?intent={id}&limit=1000"));
        v.as_array().cloned().unwrap_or_default()
    }
}

/// Adds our keys to the caller's `[section]`s (or appends the sections), so a test can set
/// other keys of the same section. `extra` must start with a `[section]` header or be empty.
pub fn merge_sections(extra: &str, ours: &[(&str, &str)]) -> String {
    let mut out = extra.to_owned();
    for (sec, keys) in ours {
        // The caller's own value of a key wins.
        let keys: Vec<&str> = keys
            .lines()
            .filter(|l| {
                let k = l.split('=').next().unwrap_or("").trim();
                !extra
                    .lines()
                    .any(|e| e.split('=').next().unwrap_or("").trim() == k)
            })
            .collect();
        let keys = keys.join("\n");
        let header = format!("[{sec}]");
        if out.contains(&header) {
            out = out.replacen(&header, &format!("{header}\n{keys}"), 1);
        } else {
            out.push_str(&format!("\n{header}\n{keys}\n"));
        }
    }
    out
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The admin token harness Ghosts get unless a test sets its own (`execute*` needs one).
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

pub struct Ghost {
    pub proc: Proc,
    pub admin: String,
    /// Sent with every `admin()` request that has no `token` of its own.
    pub token: String,
}

/// The `token = "…"` a test's `[admin]` keys set, if any.
fn admin_token_in(admin_toml: &str) -> Option<String> {
    admin_toml.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "token").then(|| v.trim().trim_matches('"').to_owned())
    })
}

impl Ghost {
    pub fn start(dir: impl AsRef<Path>, id: &str, mirage: &str, extra_toml: &str) -> Ghost {
        Ghost::start_with_admin(dir, id, mirage, extra_toml, "")
    }

    /// Like `start`, with more `[admin]` keys (`admin_toml`, one `key = value` a line).
    pub fn start_with_admin(
        dir: impl AsRef<Path>,
        id: &str,
        mirage: &str,
        extra_toml: &str,
        admin_toml: &str,
    ) -> Ghost {
        let data = dir.as_ref().join(id);
        let (token, admin_toml) = match admin_token_in(admin_toml) {
            Some(t) => (t, admin_toml.to_owned()),
            None => (
                ADMIN_TOKEN.to_owned(),
                format!("{admin_toml}\ntoken = \"{ADMIN_TOKEN}\""),
            ),
        };
        Ghost::with_config(
            dir,
            id,
            token,
            &format!(
                "ghost_id = \"{id}\"\ndata_dir = \"{}\"\n{extra_toml}\n[mirage]\naddresses = [\"{mirage}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_toml}\n[timeouts]\nheartbeat_ms = 300\ndead_after_ms = 2000\nack_timeout_ms = 3000\n[backoff]\ninitial_ms = 50\nmax_ms = 500\n",
                data.display()
            ),
        )
    }

    /// A Ghost with no Mirage session, only its admin boundary (like an edgectl Ghost).
    pub fn start_headless(dir: impl AsRef<Path>, id: &str) -> Ghost {
        let data = dir.as_ref().join(id);
        Ghost::with_config(
            dir,
            id,
            ADMIN_TOKEN.to_owned(),
            &format!(
                "ghost_id = \"{id}\"\ndata_dir = \"{}\"\n[mirage]\npolicy = \"headless\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n",
                data.display()
            ),
        )
    }

    /// Writes `<id>.toml` into `dir`, runs `ghost serve` on it, waits for its ready line.
    fn with_config(dir: impl AsRef<Path>, id: &str, token: String, toml: &str) -> Ghost {
        let dir = dir.as_ref();
        let cfg = dir.join(format!("{id}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        // `E2E_GHOST_LOG` overrides the Ghost's `RUST_LOG` (the bench's hop trace).
        let log = std::env::var("E2E_GHOST_LOG").unwrap_or_else(|_| "info".into());
        let proc = Proc::spawn_env(
            &bin("ghost"),
            &["serve", "--config", cfg.to_str().unwrap()],
            dir.join(format!("{id}.log")),
            &[("RUST_LOG", &log)],
        );
        let admin = proc.field("admin");
        Ghost { proc, admin, token }
    }

    pub fn admin(&self, mut req: Value) -> Value {
        if let Some(m) = req.as_object_mut() {
            if !self.token.is_empty() && !m.contains_key("token") {
                m.insert("token".into(), Value::String(self.token.clone()));
            }
        }
        let s = TcpStream::connect(&self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut line = req.to_string();
        line.push('\n');
        w.write_all(line.as_bytes()).unwrap();
        let mut resp = String::new();
        BufReader::new(s).read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    }

    /// Commands this Ghost process actually ran (replays excluded).
    pub fn executed(&self) -> u64 {
        self.admin(serde_json::json!({"action": "status"}))["data"]["Dispatcher"]["executed"]
            .as_u64()
            .unwrap()
    }

    pub fn kv_get(&self, key: &str) -> Option<String> {
        let r = self.admin(serde_json::json!({"action": "execute", "command": {
            "seed_selector": "seed.kv", "operation": "get", "args": {"key": key}}}));
        if r["data"]["event"]["Outcome"] != "success" {
            return None;
        }
        let b64 = r["data"]["execution"]["SeedResult"]["Stdout"]
            .as_str()
            .unwrap_or("");
        Some(b64_decode(b64).trim_end().to_owned())
    }
}

/// The text of a base64 field (lossy UTF-8), as Ghost admin replies carry seed output.
pub fn b64_decode(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let Some(v) = A.iter().position(|a| *a == c) else {
            continue;
        };
        buf = buf << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (st, text) = http_raw(addr, method, path, body, &[]);
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (st, v)
}

pub fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    // Honour Content-Length: some servers keep the connection open despite `close`.
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let lower = head.to_ascii_lowercase();
    let len = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut raw = Vec::new();
    match len {
        Some(n) => {
            raw.resize(n, 0);
            let _ = r.read_exact(&mut raw);
        }
        None => {
            let _ = r.read_to_end(&mut raw);
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let body = if lower.contains("transfer-encoding: chunked") {
        dechunk(&text)
    } else {
        text
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub mod blaster;
pub mod etcd;
pub mod fake_ghost;
pub mod linearizability;
pub mod plot;
pub mod proxy;

/// Resident memory of any process, in KiB (0 once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples a process's RSS every 50 ms until dropped; `peak()` is the highest seen.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    pub fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_of(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssPeak {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many extra sockets a test may open: `want`, or fewer when this process's open-file
/// limit (which the servers it starts inherit) is lower, keeping 256 for everything else.
pub fn fd_budget(want: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    want.min(soft.saturating_sub(256))
}

/// A small seeded PRNG (xorshift64*): fault schedules and junk bytes that a seed reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift must not start at 0; mix the seed so nearby seeds diverge at once.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// `n` random bytes without `\n`, so a line reader sees one line when one is added.
    pub fn bytes_no_newline(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| match (self.next_u64() >> 32) as u8 {
                b'\n' => b'x',
                b => b,
            })
            .collect()
    }
}

/// A keep-alive HTTP/1.1 client (responses with Content-Length), for load loops.
pub struct KeepAlive {
    addr: String,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl KeepAlive {
    pub fn connect(addr: &str) -> KeepAlive {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        KeepAlive {
            addr: addr.to_owned(),
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    pub fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.w.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).unwrap();
        (status, String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tmpfs of `size` mounted at `at`, unmounted (lazily) on drop: declare it before the
/// processes that use it, so they are gone first. `None` (with a printed SKIPPED line) where
/// mounting is not permitted (the full-disk tests need root or CAP_SYS_ADMIN).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_owned())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {} ({}); this test needs root or CAP_SYS_ADMIN",
                    at.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); this test needs root");
                None
            }
        }
    }

    /// Fills what is left of the file system with one file (`filler`); its path and size.
    pub fn fill(&self) -> (PathBuf, u64) {
        use std::io::Write as _;
        let p = self.0.join("filler");
        let Ok(mut f) = std::fs::File::create(&p) else {
            return (p, 0);
        };
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // Whatever is left in smaller pieces too.
        while f.write_all(&chunk[..512]).is_ok() {}
        let _ = f.flush();
        let n = std::fs::metadata(&p).map_or(0, |m| m.len());
        (p, n)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A chromedriver process for the dashboard's browser tests; killed on drop.
pub struct WebDriver {
    pub child: Child,
    pub addr: String,
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver call; its `value`, or a panic naming the call and the answer.
pub fn wd(addr: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let b = body.map(|v| v.to_string());
    let (st, v) = http(addr, method, path, b.as_deref());
    assert!(st == 200, "webdriver {method} {path}: {st} {v}");
    v["value"].clone()
}

/// `Stdout` or `Stderr` of the seed.result in a Ghost admin `execute` reply, as text.
pub fn seed_text(r: &Value, which: &str) -> String {
    b64_decode(
        r["data"]["execution"]["SeedResult"][which]
            .as_str()
            .unwrap_or(""),
    )
}

/// Loopback ports of a `mirage up` started by [`spawn_up`].
pub struct UpPorts {
    pub session: u16,
    /// `127.0.0.1:PORT` of the HTTP API.
    pub api: String,
    pub admin: u16,
}

/// `mirage up [--ghosts N]` on free loopback ports, data under `dir/data`, log `dir/up.log`
/// (`ghosts` = 1: the local Ghost only, no `--ghosts` flag).
pub fn spawn_up(dir: &TempDir, ghosts: usize) -> (Proc, UpPorts) {
    let (session, http, admin) = (free_port(), free_port(), free_port());
    let data = dir.path("data");
    let (n, listen, api, admin_at) = (
        ghosts.to_string(),
        format!("127.0.0.1:{session}"),
        format!("127.0.0.1:{http}"),
        format!("127.0.0.1:{admin}"),
    );
    let mut args = vec!["up"];
    if ghosts > 1 {
        args.extend(["--ghosts", n.as_str()]);
    }
    args.extend([
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        listen.as_str(),
        "--http",
        api.as_str(),
        "--ghost-admin",
        admin_at.as_str(),
    ]);
    let up = Proc::spawn(&bin("mirage"), &args, dir.path("up.log"));
    (
        up,
        UpPorts {
            session,
            api,
            admin,
        },
    )
}

/// `mirage certs ARGS…`, which must succeed; its stdout.
pub fn mirage_certs(args: &[&str]) -> String {
    let out = Command::new(bin("mirage"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mirage certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
