//! `seed.service`: supervised child processes from the `[services.NAME]` allowlist in
//! ghost.toml. An operation names a service; its argv, env and cwd come only from the config,
//! so nothing else can run whatever the arguments say. Each running service has a monitor
//! task on the seed's thread: it starts the process (own process group, output appended to a
//! log file), probes readiness, publishes every state change as an observation (an unexpected
//! exit at once), restarts per policy with backoff, and stops it with its signal and grace.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use shared::envelope::Args;
use tokio::sync::watch;

use super::{Call, OperationSpec, Seed, SeedCtx, SeedOutput};

/// Log lines `logs` returns at most, and bytes it reads from the end of the file at most.
pub const MAX_LOG_LINES: usize = 1000;
pub const MAX_LOG_TAIL_BYTES: u64 = 256 * 1024;
/// Services one Ghost may declare.
pub const MAX_SERVICES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    No,
    #[default]
    OnFailure,
    Always,
}

/// One allowlisted service (`[services.NAME]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Working directory; empty = the service's dir under the Ghost's data dir.
    pub cwd: String,
    /// Log file (stdout and stderr appended); relative paths are under the service's dir.
    pub log: String,
    pub restart: Restart,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// `tcp:PORT` (connect to 127.0.0.1:PORT) or `exec:PROGRAM ARG...` (exit 0); empty = none.
    pub ready: String,
    pub ready_timeout_ms: u64,
    /// TERM, INT, QUIT, HUP or KILL.
    pub stop_signal: String,
    pub stop_grace_ms: u64,
    /// Start with the Ghost.
    pub autostart: bool,
    /// Entrypoint(s) advertised in observations and registration (`redis://127.0.0.1:6390/0`).
    pub uri: String,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            argv: Vec::new(),
            env: BTreeMap::new(),
            cwd: String::new(),
            log: String::new(),
            restart: Restart::OnFailure,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            ready: String::new(),
            ready_timeout_ms: 10_000,
            stop_signal: "TERM".into(),
            stop_grace_ms: 5_000,
            autostart: false,
            uri: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    None,
    Tcp(u16),
    Exec(Vec<String>),
}

pub fn parse_probe(s: &str) -> Result<Probe, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Probe::None);
    }
    if let Some(p) = s.strip_prefix("tcp:") {
        return match p.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(Probe::Tcp(port)),
            _ => Err(format!("ready {s:?}: tcp:PORT needs a port 1..=65535")),
        };
    }
    if let Some(cmd) = s.strip_prefix("exec:") {
        let argv: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err(format!("ready {s:?}: exec:PROGRAM needs a program"));
        }
        return Ok(Probe::Exec(argv));
    }
    Err(format!(
        "ready {s:?}: expected tcp:PORT or exec:PROGRAM ARG..."
    ))
}

pub fn parse_signal(s: &str) -> Result<rustix::process::Signal, String> {
    use rustix::process::Signal;
    Ok(
        match s
            .trim()
            .trim_start_matches("SIG")
            .to_ascii_uppercase()
            .as_str()
        {
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "QUIT" => Signal::QUIT,
            "HUP" => Signal::HUP,
            "KILL" => Signal::KILL,
            _ => {
                return Err(format!(
                    "stop_signal {s:?}: expected TERM, INT, QUIT, HUP or KILL"
                ))
            }
        },
    )
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

/// Checks every `[services.NAME]` key, naming the one that is wrong.
pub fn validate(services: &BTreeMap<String, ServiceSpec>) -> Result<(), String> {
    if services.len() > MAX_SERVICES {
        return Err(format!(
            "services: {} declared; at most {MAX_SERVICES}",
            services.len()
        ));
    }
    for (name, s) in services {
        let at = |k: &str| format!("services.{name}.{k}");
        if !valid_name(name) {
            return Err(format!(
                "services.{name}: a service name is 1..=64 of [a-z0-9_-]"
            ));
        }
        if s.argv.is_empty() || s.argv[0].trim().is_empty() {
            return Err(format!("{}: needs a program (argv[0])", at("argv")));
        }
        if s.argv.iter().any(|a| a.contains('\0')) {
            return Err(format!("{}: contains a NUL byte", at("argv")));
        }
        for k in s.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("{}: bad variable name {k:?}", at("env")));
            }
        }
        if s.backoff_initial_ms == 0 || s.backoff_initial_ms > s.backoff_max_ms {
            return Err(format!(
                "{}: must be above 0 and at most backoff_max_ms ({})",
                at("backoff_initial_ms"),
                s.backoff_max_ms
            ));
        }
        if s.backoff_max_ms > 600_000 {
            return Err(format!("{}: at most 600000", at("backoff_max_ms")));
        }
        parse_probe(&s.ready).map_err(|e| format!("services.{name}.{e}"))?;
        if s.ready_timeout_ms == 0 || s.ready_timeout_ms > 600_000 {
            return Err(format!("{}: must be 1..=600000", at("ready_timeout_ms")));
        }
        parse_signal(&s.stop_signal).map_err(|e| format!("services.{name}.{e}"))?;
        if s.stop_grace_ms == 0 || s.stop_grace_ms > 600_000 {
            return Err(format!("{}: must be 1..=600000", at("stop_grace_ms")));
        }
    }
    Ok(())
}

/// Registration descriptions stay under Mirage's default limit (1024 bytes).
pub const MAX_DESCRIPTION: usize = 900;

/// `head` then `items` joined by `sep`, cut (with `…`) before MAX_DESCRIPTION.
pub fn bounded_description(head: &str, items: &[String], sep: &str) -> String {
    let mut d = head.to_owned();
    for (i, it) in items.iter().enumerate() {
        let add = if i == 0 {
            it.clone()
        } else {
            format!("{sep}{it}")
        };
        if d.len() + add.len() + 4 > MAX_DESCRIPTION {
            d.push_str(" …");
            break;
        }
        d.push_str(&add);
    }
    d
}

/// Delay before restart number `n` (1 = first).
pub fn backoff_ms(spec: &ServiceSpec, n: u32) -> u64 {
    let shift = n.saturating_sub(1).min(20);
    spec.backoff_initial_ms
        .saturating_mul(1u64 << shift)
        .min(spec.backoff_max_ms)
}

/// Whether the policy restarts a process that exited (`success` = exit code 0).
pub fn restarts(policy: Restart, success: bool) -> bool {
    match policy {
        Restart::No => false,
        Restart::OnFailure => !success,
        Restart::Always => true,
    }
}

/// What `status` shows and observations carry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub ready: bool,
}

struct Running {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

type Shared<T> = Arc<Mutex<T>>;

/// Never held across an await; a poisoned lock (a panic elsewhere) still holds valid maps.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Services of one seed; shared by `seed.service` and seeds built on it (`seed.redis`).
/// Clones share the same processes.
#[derive(Clone)]
pub struct ServiceSet {
    pub seed_id: &'static str,
    specs: Shared<BTreeMap<String, ServiceSpec>>,
    dir: PathBuf,
    status: Shared<BTreeMap<String, Status>>,
    running: Shared<BTreeMap<String, Running>>,
}

impl ServiceSet {
    pub fn new(seed_id: &'static str, specs: BTreeMap<String, ServiceSpec>, dir: PathBuf) -> Self {
        ServiceSet {
            seed_id,
            specs: Arc::new(Mutex::new(specs)),
            dir,
            status: Shared::default(),
            running: Shared::default(),
        }
    }

    /// Asks every monitor to stop its process (the seed is being dropped, e.g. after a
    /// panic): no child outlives the seed that started it.
    pub fn signal_stop_all(&self) {
        for r in lock(&self.running).values() {
            let _ = r.stop.send(true);
        }
    }

    pub fn names(&self) -> Vec<String> {
        lock(&self.specs).keys().cloned().collect()
    }

    /// Adds (or replaces, while it is not running) a service the seed itself builds
    /// (`seed.redis`); at most MAX_SERVICES.
    pub fn declare(&self, name: &str, spec: ServiceSpec) -> Result<(), String> {
        let mut specs = lock(&self.specs);
        if !specs.contains_key(name) && specs.len() >= MAX_SERVICES {
            return Err(format!(
                "{}: {MAX_SERVICES} instances already",
                self.seed_id
            ));
        }
        let running = lock(&self.running)
            .get(name)
            .is_some_and(|r| !*r.done.borrow());
        if running {
            if specs.get(name).is_some_and(|s| s.argv != spec.argv) {
                return Err(format!(
                    "{}: instance {name} runs with other settings; stop it first",
                    self.seed_id
                ));
            }
            return Ok(());
        }
        specs.insert(name.to_owned(), spec);
        Ok(())
    }

    pub fn spec(&self, name: &str) -> Result<ServiceSpec, String> {
        let specs = lock(&self.specs);
        specs.get(name).cloned().ok_or_else(|| {
            format!(
                "{}: service {name:?} is not allowlisted in ghost.toml (allowlisted: {})",
                self.seed_id,
                if specs.is_empty() {
                    "none".to_owned()
                } else {
                    specs.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )
        })
    }

    fn service_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn log_path(&self, name: &str, spec: &ServiceSpec) -> PathBuf {
        if spec.log.is_empty() {
            self.service_dir(name).join(format!("{name}.log"))
        } else if Path::new(&spec.log).is_absolute() {
            PathBuf::from(&spec.log)
        } else {
            self.service_dir(name).join(&spec.log)
        }
    }

    pub fn status_of(&self, name: &str) -> Status {
        lock(&self.status).get(name).cloned().unwrap_or(Status {
            state: "stopped".into(),
            ..Status::default()
        })
    }

    /// Starts the service's monitor unless it runs; resolves once it is ready (or failed).
    pub fn start(&self, name: &str, ctx: &SeedCtx) -> LocalBoxFuture<'static, SeedOutput> {
        let spec = match self.spec(name) {
            Ok(s) => s,
            Err(e) => return ready(SeedOutput::error(2, format!("{e}\n"))),
        };
        let name = name.to_owned();
        let already = lock(&self.running)
            .get(&name)
            .is_some_and(|r| !*r.done.borrow());
        if !already {
            let (stop_tx, stop_rx) = watch::channel(false);
            let (done_tx, done_rx) = watch::channel(false);
            lock(&self.running).insert(
                name.clone(),
                Running {
                    stop: stop_tx,
                    done: done_rx,
                },
            );
            lock(&self.status).insert(
                name.clone(),
                Status {
                    state: "starting".into(),
                    ..Status::default()
                },
            );
            let m = Monitor {
                seed_id: self.seed_id,
                name: name.clone(),
                log: self.log_path(&name, &spec),
                cwd: if spec.cwd.is_empty() {
                    self.service_dir(&name)
                } else {
                    PathBuf::from(&spec.cwd)
                },
                spec: spec.clone(),
                status: self.status.clone(),
                ctx: ctx.clone(),
            };
            tokio::task::spawn_local(async move {
                m.run(stop_rx).await;
                let _ = done_tx.send(true);
            });
        }
        let status = self.status.clone();
        let timeout = Duration::from_millis(spec.ready_timeout_ms + 1000);
        Box::pin(async move {
            let t0 = tokio::time::Instant::now();
            loop {
                let st = lock(&status).get(&name).cloned().unwrap_or_default();
                if st.ready {
                    return SeedOutput::ok(format!("{}\n", json_status(&name, &st)));
                }
                if matches!(st.state.as_str(), "failed" | "exited" | "stopped")
                    || t0.elapsed() > timeout
                {
                    return SeedOutput::error(
                        1,
                        format!(
                            "service {name} did not become ready: {}\n",
                            json_status(&name, &st)
                        ),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    /// Stops the service (its signal, then KILL after its grace); resolves once it is gone.
    pub fn stop(&self, name: &str) -> LocalBoxFuture<'static, SeedOutput> {
        if let Err(e) = self.spec(name) {
            return ready(SeedOutput::error(2, format!("{e}\n")));
        }
        let r = lock(&self.running).remove(name);
        let name = name.to_owned();
        let status = self.status.clone();
        Box::pin(async move {
            if let Some(mut r) = r {
                let _ = r.stop.send(true);
                while !*r.done.borrow() {
                    if r.done.changed().await.is_err() {
                        break;
                    }
                }
            }
            let st = lock(&status).get(&name).cloned().unwrap_or_default();
            SeedOutput::ok(format!("{}\n", json_status(&name, &st)))
        })
    }

    /// Stops every service at once.
    pub fn stop_all(&self) -> LocalBoxFuture<'static, ()> {
        let names: Vec<String> = lock(&self.running).keys().cloned().collect();
        let all: Vec<_> = names.iter().map(|n| self.stop(n)).collect();
        Box::pin(async move {
            futures::future::join_all(all).await;
        })
    }

    pub fn status_text(&self, name: Option<&str>) -> SeedOutput {
        let names: Vec<String> = match name {
            Some(n) => match self.spec(n) {
                Ok(_) => vec![n.to_owned()],
                Err(e) => return SeedOutput::error(2, format!("{e}\n")),
            },
            None => self.names(),
        };
        let mut out = String::new();
        for n in names {
            out.push_str(&json_status(&n, &self.status_of(&n)).to_string());
            out.push('\n');
        }
        SeedOutput::ok(out)
    }

    pub fn logs(&self, name: &str, lines: Option<&String>) -> SeedOutput {
        let spec = match self.spec(name) {
            Ok(s) => s,
            Err(e) => return SeedOutput::error(2, format!("{e}\n")),
        };
        let n = match lines.map(|v| v.trim().parse::<usize>()) {
            None => 100,
            Some(Ok(n)) if (1..=MAX_LOG_LINES).contains(&n) => n,
            Some(_) => {
                return SeedOutput::error(
                    2,
                    format!("argument lines must be a whole number 1..={MAX_LOG_LINES}\n"),
                )
            }
        };
        match tail(&self.log_path(name, &spec), n) {
            Ok(t) => SeedOutput::ok(t),
            Err(e) => SeedOutput::error(1, format!("service {name}: {e}\n")),
        }
    }
}

fn ready(o: SeedOutput) -> LocalBoxFuture<'static, SeedOutput> {
    Box::pin(async move { o })
}

fn json_status(name: &str, st: &Status) -> serde_json::Value {
    serde_json::json!({"service": name, "state": st.state, "pid": st.pid, "ready": st.ready,
        "restarts": st.restarts, "last_exit": st.last_exit})
}

/// The last `n` lines of a file, reading at most MAX_LOG_TAIL_BYTES from its end.
pub fn tail(path: &Path, n: usize) -> Result<String, String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("log {}: {e}", path.display())),
    };
    let len = f
        .metadata()
        .map_err(|e| format!("log {}: {e}", path.display()))?
        .len();
    let from = len.saturating_sub(MAX_LOG_TAIL_BYTES);
    f.seek(SeekFrom::Start(from))
        .map_err(|e| format!("log {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_LOG_TAIL_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| format!("log {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = lines[skip..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

struct Monitor {
    seed_id: &'static str,
    name: String,
    spec: ServiceSpec,
    log: PathBuf,
    cwd: PathBuf,
    status: Shared<BTreeMap<String, Status>>,
    ctx: SeedCtx,
}

impl Monitor {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        let st = {
            let mut map = lock(&self.status);
            let st = map.entry(self.name.clone()).or_default();
            f(st);
            st.clone()
        };
        let mut obs: Args = [
            ("service".to_owned(), self.name.clone()),
            ("state".to_owned(), st.state.clone()),
            ("ready".to_owned(), st.ready.to_string()),
            ("restarts".to_owned(), st.restarts.to_string()),
        ]
        .into();
        if let Some(p) = st.pid {
            obs.insert("pid".into(), p.to_string());
        }
        if let Some(e) = &st.last_exit {
            obs.insert("last_exit".into(), e.clone());
        }
        if !self.spec.uri.is_empty() {
            obs.insert("uri".into(), self.spec.uri.clone());
        }
        tracing::info!(component = "ghost.service", seed = self.seed_id, service = %self.name, state = %st.state, pid = ?st.pid, restarts = st.restarts, "service state");
        let _ = self.ctx.observe(obs);
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            let mut child = match self.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(component = "ghost.service", service = %self.name, error = %e, "service cannot start");
                    self.set(|s| {
                        s.state = "failed".into();
                        s.pid = None;
                        s.ready = false;
                        s.last_exit = Some(e.clone());
                    });
                    return;
                }
            };
            let pid = child.id();
            self.set(|s| {
                s.state = "starting".into();
                s.pid = pid;
                s.ready = false;
            });
            let probe = parse_probe(&self.spec.ready).unwrap_or(Probe::None);
            let up = tokio::select! {
                r = self.probe(&probe) => r,
                _ = child.wait() => false,
                _ = stop.changed() => false,
            };
            if up && !*stop.borrow() {
                failures = 0;
                self.set(|s| {
                    s.state = "running".into();
                    s.ready = true;
                });
            }
            let exited = tokio::select! {
                st = child.wait() => Some(st),
                _ = wait_true(&mut stop) => None,
            };
            let (desc, success) = match exited {
                Some(Ok(st)) => (describe(&st), st.success()),
                Some(Err(e)) => (format!("wait failed: {e}"), false),
                None => {
                    let desc = self.stop_child(&mut child).await;
                    self.set(|s| {
                        s.state = "stopped".into();
                        s.pid = None;
                        s.ready = false;
                        s.last_exit = Some(desc.clone());
                    });
                    return;
                }
            };
            let again = restarts(self.spec.restart, success);
            self.set(|s| {
                s.state = if again {
                    "exited"
                } else if success {
                    "stopped"
                } else {
                    "failed"
                }
                .into();
                s.pid = None;
                s.ready = false;
                s.last_exit = Some(desc.clone());
            });
            if !again {
                return;
            }
            failures = failures.saturating_add(1);
            let delay = backoff_ms(&self.spec, failures);
            tracing::warn!(component = "ghost.service", service = %self.name, exit = %desc, backoff_ms = delay, "service exited; restarting per policy");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                _ = wait_true(&mut stop) => {
                    self.set(|s| s.state = "stopped".into());
                    return;
                }
            }
            self.set(|s| s.restarts += 1);
        }
    }

    fn spawn(&self) -> Result<tokio::process::Child, String> {
        if let Some(d) = self.log.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("log dir {}: {e}", d.display()))?;
        }
        std::fs::create_dir_all(&self.cwd)
            .map_err(|e| format!("cwd {}: {e}", self.cwd.display()))?;
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| format!("log {}: {e}", self.log.display()))
        };
        let (out, err) = (open()?, open()?);
        let mut cmd = tokio::process::Command::new(&self.spec.argv[0]);
        cmd.args(&self.spec.argv[1..])
            .envs(&self.spec.env)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Own process group: the stop signal reaches its children too.
            .process_group(0)
            .kill_on_drop(true);
        cmd.spawn()
            .map_err(|e| format!("spawn {:?}: {e}", self.spec.argv[0]))
    }

    /// True once the probe passes (at once without a probe), false on timeout.
    async fn probe(&self, p: &Probe) -> bool {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.spec.ready_timeout_ms);
        loop {
            let ok = match p {
                Probe::None => true,
                Probe::Tcp(port) => tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok(),
                Probe::Exec(argv) => tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .is_ok_and(|s| s.success()),
            };
            if ok {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(component = "ghost.service", service = %self.name, ready = %self.spec.ready, "service not ready in time");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stop signal to the process group, KILL after the grace.
    async fn stop_child(&self, child: &mut tokio::process::Child) -> String {
        let sig = parse_signal(&self.spec.stop_signal).unwrap_or(rustix::process::Signal::TERM);
        if let Some(pid) = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, sig);
        }
        let grace = Duration::from_millis(self.spec.stop_grace_ms);
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(st)) => describe(&st),
            _ => {
                tracing::warn!(component = "ghost.service", service = %self.name, grace_ms = self.spec.stop_grace_ms, "service ignored its stop signal; killing it");
                if let Some(pid) = child
                    .id()
                    .and_then(|p| rustix::process::Pid::from_raw(p as i32))
                {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                "killed after its grace".into()
            }
        }
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            // The ServiceSet is gone: stop, as its Drop asked.
            return;
        }
    }
}

fn describe(st: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

static OPS: &[OperationSpec] = &[
    OperationSpec::new(
        "start",
        "Start an allowlisted service; waits until it is ready",
    )
    .args(&["name"])
    .required(&["name"]),
    OperationSpec::new(
        "stop",
        "Stop a service (its stop signal, KILL after its grace)",
    )
    .args(&["name"])
    .required(&["name"]),
    OperationSpec::new("restart", "Stop, then start a service")
        .args(&["name"])
        .required(&["name"]),
    OperationSpec::new("status", "State, pid, restarts of one service or all").args(&["name"]),
    OperationSpec::new(
        "logs",
        "Last lines of a service's log (lines, default 100, max 1000)",
    )
    .args(&["name", "lines"])
    .required(&["name"]),
];

pub struct Service {
    set: ServiceSet,
}

impl Service {
    pub fn new(specs: BTreeMap<String, ServiceSpec>, dir: PathBuf) -> Service {
        Service {
            set: ServiceSet::new("seed.service", specs, dir),
        }
    }
}

/// The operations every service-backed seed answers the same way.
pub fn call_common(set: &ServiceSet, operation: &str, args: &Args, ctx: &SeedCtx) -> Call {
    let name = args.get("name").map(|s| s.trim()).unwrap_or("");
    match operation {
        "start" => Call::Pending(set.start(name, ctx)),
        "stop" => Call::Pending(set.stop(name)),
        "restart" => {
            let stop = set.stop(name);
            let (set, name, ctx) = (set.clone(), name.to_owned(), ctx.clone());
            Call::Pending(Box::pin(async move {
                let out = stop.await;
                if !out.succeeded() {
                    return out;
                }
                set.start(&name, &ctx).await
            }))
        }
        "status" => Call::Done(set.status_text(args.get("name").map(|s| s.trim()))),
        "logs" => Call::Done(set.logs(name, args.get("lines"))),
        other => Call::Done(SeedOutput::error(
            64,
            format!("{}: unknown operation {other}\n", set.seed_id),
        )),
    }
}

impl Seed for Service {
    fn id(&self) -> &'static str {
        "seed.service"
    }
    fn name(&self) -> &'static str {
        "Service"
    }
    fn description(&self) -> String {
        let names = self.set.names();
        if names.is_empty() {
            return "Supervised processes from the ghost.toml allowlist (none)".into();
        }
        bounded_description(
            "Supervised processes from the ghost.toml allowlist: ",
            &names,
            ", ",
        )
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }
    fn concurrency(&self) -> usize {
        MAX_SERVICES
    }
    fn start(&mut self, ctx: &SeedCtx) -> Result<(), String> {
        let auto: Vec<String> = lock(&self.set.specs)
            .iter()
            .filter(|(_, s)| s.autostart)
            .map(|(n, _)| n.clone())
            .collect();
        for n in auto {
            // Readiness is observed; nobody waits for it here.
            drop(self.set.start(&n, ctx));
        }
        Ok(())
    }
    fn call(&mut self, operation: &str, args: &Args, ctx: &SeedCtx) -> Call {
        call_common(&self.set, operation, args, ctx)
    }
    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        self.set.stop_all()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.set.signal_stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_signals_parse_or_name_the_problem() {
        assert_eq!(parse_probe("tcp:6390").unwrap(), Probe::Tcp(6390));
        assert_eq!(
            parse_probe("exec:redis-cli ping").unwrap(),
            Probe::Exec(vec!["redis-cli".into(), "ping".into()])
        );
        assert!(parse_probe("tcp:0").unwrap_err().contains("tcp:PORT"));
        assert!(parse_probe("http:1").unwrap_err().contains("expected"));
        assert!(parse_signal("SIGTERM").is_ok());
        assert!(parse_signal("USR9").unwrap_err().contains("stop_signal"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut m = BTreeMap::new();
        m.insert("web".to_owned(), ServiceSpec::default());
        assert!(validate(&m).unwrap_err().contains("services.web.argv"));
        m.get_mut("web").unwrap().argv = vec!["sleep".into(), "9".into()];
        assert!(validate(&m).is_ok());
        m.get_mut("web").unwrap().ready = "tcp:x".into();
        assert!(validate(&m).unwrap_err().contains("services.web.ready"));
        m.get_mut("web").unwrap().ready = String::new();
        m.get_mut("web").unwrap().stop_signal = "STOP".into();
        assert!(validate(&m)
            .unwrap_err()
            .contains("services.web.stop_signal"));
        let mut bad = BTreeMap::new();
        bad.insert("Bad Name".to_owned(), m["web"].clone());
        assert!(validate(&bad).unwrap_err().contains("Bad Name"));
    }

    #[test]
    fn restart_policy_and_backoff() {
        assert!(!restarts(Restart::No, false));
        assert!(restarts(Restart::OnFailure, false));
        assert!(!restarts(Restart::OnFailure, true));
        assert!(restarts(Restart::Always, true));
        let s = ServiceSpec::default();
        assert_eq!(backoff_ms(&s, 1), 200);
        assert_eq!(backoff_ms(&s, 2), 400);
        assert_eq!(backoff_ms(&s, 30), 10_000);
    }

    #[test]
    fn descriptions_are_bounded() {
        let many: Vec<String> = (0..MAX_SERVICES).map(|i| format!("{i:0>60}")).collect();
        let d = bounded_description("head: ", &many, ", ");
        assert!(
            d.len() <= MAX_DESCRIPTION && d.ends_with('…'),
            "{}",
            d.len()
        );
        assert_eq!(
            bounded_description("h: ", &["a".into(), "b".into()], ", "),
            "h: a, b"
        );
    }

    #[test]
    fn tail_is_bounded_to_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("svc-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.log");
        let body: String = (0..500).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, body).unwrap();
        assert_eq!(tail(&p, 2).unwrap(), "line 498\nline 499\n");
        assert_eq!(tail(&dir.join("none.log"), 5).unwrap(), "");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
