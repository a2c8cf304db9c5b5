//! Seeds: service handlers with named operations. A new seed implements [`Seed`] and is added
//! to [`builtin`]; nothing else in the Ghost changes (docs/SEEDS.md).
//!
//! Each seed runs in its own supervised actor (`actors::seed`): `start` when the Ghost starts,
//! `call` per operation (synchronously, or as a future when the seed awaits I/O), `stop` on
//! shutdown, and a fresh instance after a panic.

pub mod chaos;
pub mod flow;
pub mod fs;
pub mod kdht;
pub mod kv;
pub mod raft;
pub mod redis;
pub mod redis_move;
pub mod service;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::LocalBoxFuture;

use shared::envelope::Args;
use shared::handshake::{validate_seed_id, OperationInfo, SeedInfo};

/// What a seed returns. `status` is `ok` or `error`; the event's outcome is success iff
/// status is ok and exit_code is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOutput {
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: u32,
}

impl SeedOutput {
    pub fn ok(stdout: impl Into<Vec<u8>>) -> SeedOutput {
        SeedOutput {
            status: "ok".into(),
            stdout: stdout.into(),
            stderr: Vec::new(),
            exit_code: 0,
        }
    }

    pub fn error(exit_code: u32, stderr: impl Into<Vec<u8>>) -> SeedOutput {
        SeedOutput {
            status: "error".into(),
            stdout: Vec::new(),
            stderr: stderr.into(),
            exit_code: exit_code.max(1),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == "ok" && self.exit_code == 0
    }
}

/// One declared operation: the allowlist the Ghost (and Mirage) check before a seed runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub idempotent: bool,
    /// Argument names accepted; `required` ones must be present.
    pub args: &'static [&'static str],
    pub required: &'static [&'static str],
    /// Accepts any argument names (e.g. `seed.flow echo`).
    pub open_args: bool,
}

impl OperationSpec {
    pub const fn new(name: &'static str, description: &'static str) -> OperationSpec {
        OperationSpec {
            name,
            description,
            idempotent: true,
            args: &[],
            required: &[],
            open_args: false,
        }
    }

    pub const fn args(mut self, args: &'static [&'static str]) -> Self {
        self.args = args;
        self
    }

    pub const fn required(mut self, required: &'static [&'static str]) -> Self {
        self.required = required;
        self
    }

    pub const fn open(mut self) -> Self {
        self.open_args = true;
        self
    }

    pub const fn mutating(mut self) -> Self {
        self.idempotent = false;
        self
    }

    /// Checks argument names against the declaration.
    pub fn check_args(&self, args: &Args) -> Result<(), String> {
        for r in self.required {
            if args.get(*r).is_none_or(|v| v.trim().is_empty()) {
                return Err(format!("operation {} needs argument {r:?}", self.name));
            }
        }
        if !self.open_args {
            if let Some(k) = args.keys().find(|k| !self.args.contains(&k.as_str())) {
                return Err(format!(
                    "operation {} does not take argument {k:?} (accepted: {})",
                    self.name,
                    self.args.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// What [`Seed::call`] gives back: a result now, or a future the seed's actor awaits on the
/// seed's own thread (so a seed can await network I/O without blocking anyone).
pub enum Call {
    Done(SeedOutput),
    Pending(LocalBoxFuture<'static, SeedOutput>),
}

/// Most observations queued between the seeds and the outbox; past it new ones are dropped
/// (counted, logged): an observation is the latest state, a later one supersedes it.
pub const OBSERVATION_QUEUE: usize = 1024;

/// Observed state a seed publishes at any time (`{state: running, pid, uri}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub seed: String,
    pub state: Args,
    pub at_ms: u64,
}

/// What a seed gets from the Ghost: its id, where it may keep data, a way to publish
/// observations. Cheap to clone; futures may keep a copy.
#[derive(Clone)]
pub struct SeedCtx {
    pub seed_id: String,
    pub data_dir: PathBuf,
    observe: Option<tokio::sync::mpsc::Sender<Observation>>,
    dropped: Arc<AtomicU64>,
}

impl SeedCtx {
    pub fn new(
        seed_id: &str,
        data_dir: PathBuf,
        observe: Option<tokio::sync::mpsc::Sender<Observation>>,
    ) -> SeedCtx {
        SeedCtx {
            seed_id: seed_id.to_owned(),
            data_dir,
            observe,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// No Ghost around it (`ghost exec`, unit tests): observations go nowhere.
    pub fn detached(seed_id: &str) -> SeedCtx {
        SeedCtx::new(seed_id, PathBuf::from("."), None)
    }

    /// Publishes observed state; never blocks. Errors name a bound it breaks, or say that it
    /// was dropped (no Ghost around, or the queue to the outbox is full).
    pub fn observe(&self, state: Args) -> Result<(), String> {
        shared::observe::validate(&state)?;
        let Some(tx) = &self.observe else {
            return Err("observations go nowhere here (no Ghost session)".into());
        };
        let o = Observation {
            seed: self.seed_id.clone(),
            state,
            at_ms: shared::now_ms(),
        };
        tx.try_send(o).map_err(|e| {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(component = "ghost.seed", seed = %self.seed_id, dropped = n, error = %e, "observation dropped");
            format!("observation dropped: {e}")
        })
    }

    pub fn observations_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A service handler. It runs on its own actor thread: a blocking `execute` blocks only this
/// seed. It must not panic on any input; if it does, the command fails and the seed is
/// rebuilt (after a backoff) while the Ghost and the other seeds carry on.
pub trait Seed: Send + 'static {
    fn id(&self) -> &'static str;
    fn name(&self) -> &'static str;
    fn description(&self) -> String;
    fn operations(&self) -> &'static [OperationSpec];

    /// A synchronous operation. Seeds that override [`Seed::call`] need not implement it.
    fn execute(&mut self, operation: &str, _args: &Args) -> SeedOutput {
        SeedOutput::error(
            70,
            format!(
                "{}: operation {operation} is asynchronous and runs only inside a Ghost\n",
                self.id()
            ),
        )
    }

    /// Runs one operation; the default calls `execute`. Return [`Call::Pending`] to await I/O.
    fn call(&mut self, operation: &str, args: &Args, _ctx: &SeedCtx) -> Call {
        Call::Done(self.execute(operation, args))
    }

    /// Operations of this seed that may run at the same time (pending futures); 1 = in order.
    fn concurrency(&self) -> usize {
        1
    }

    /// Called when the seed's actor starts (Ghost start, or a restart after a failure). An
    /// error is a failure: the seed is restarted with backoff.
    fn start(&mut self, _ctx: &SeedCtx) -> Result<(), String> {
        Ok(())
    }

    /// Called once on Ghost shutdown; the Ghost waits for it at most `seed.stop_grace_ms`.
    fn stop(&mut self) -> LocalBoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn operation(&self, name: &str) -> Option<&'static OperationSpec> {
        self.operations().iter().find(|o| o.name == name)
    }

    /// What the handshake advertises.
    fn info(&self) -> SeedInfo {
        SeedInfo {
            id: self.id().to_owned(),
            name: self.name().to_owned(),
            description: self.description(),
            operations: self
                .operations()
                .iter()
                .map(|o| OperationInfo {
                    name: o.name.to_owned(),
                    description: o.description.to_owned(),
                    idempotent: o.idempotent,
                    args: o.args.iter().map(|a| (*a).to_owned()).collect(),
                })
                .collect(),
        }
    }
}

/// Settings for the built-in seeds.
#[derive(Debug, Clone)]
pub struct SeedSettings {
    pub fs_root: PathBuf,
    pub fs_max_file_bytes: u64,
    /// Quota on the total bytes under the seed.fs root; 0 = off.
    pub fs_max_total_bytes: u64,
    pub kv_max_keys: usize,
    pub kv_max_value_bytes: usize,
    pub flow_max_sleep_ms: u64,
    /// `[services.NAME]` of ghost.toml: the only processes seed.service may run.
    pub services: BTreeMap<String, service::ServiceSpec>,
    /// Where services keep their cwd and logs by default (`<data_dir>/services`).
    pub services_dir: PathBuf,
    /// `[redis.NAME]` of ghost.toml, and where instances keep their data.
    pub redis: BTreeMap<String, redis::RedisSpec>,
    pub redis_dir: PathBuf,
    /// `[kdht]` of ghost.toml: seed.kdht's port, replication factor and store bounds.
    pub kdht: kdht::KdhtSpec,
    /// Where seed.kdht keeps its node key (`<data_dir>/kdht.key`); None = a new identity
    /// per process (`ghost swarm`).
    pub kdht_key_file: Option<PathBuf>,
}

impl Default for SeedSettings {
    fn default() -> Self {
        SeedSettings {
            fs_root: PathBuf::from("data/fs"),
            fs_max_file_bytes: 1024 * 1024,
            fs_max_total_bytes: 1024 * 1024 * 1024,
            kv_max_keys: 100_000,
            kv_max_value_bytes: 64 * 1024,
            flow_max_sleep_ms: 60_000,
            services: BTreeMap::new(),
            services_dir: PathBuf::from("data/services"),
            redis: BTreeMap::new(),
            redis_dir: PathBuf::from("data/redis"),
            kdht: kdht::KdhtSpec::default(),
            kdht_key_file: None,
        }
    }
}

/// The seeds a Ghost hosts by default.
pub const BUILTIN: &[&str] = &["seed.flow", "seed.kv", "seed.fs"];

/// Every seed this Ghost can host (`ghost seeds` lists them); the rest are opt-in by config.
pub const KNOWN: &[&str] = &[
    "seed.flow",
    "seed.kv",
    "seed.fs",
    "seed.service",
    "seed.redis",
    "seed.chaos",
    "seed.kdht",
    "raft-node",
];

/// Builds one built-in seed by id (`flow` is accepted for `seed.flow`, as edgectl does).
pub fn builtin(id: &str, settings: &SeedSettings) -> Result<Box<dyn Seed>, String> {
    Ok(match id.trim() {
        "seed.flow" | "flow" => Box::new(flow::Flow::new(settings.flow_max_sleep_ms)),
        "seed.kv" | "kv" => Box::new(kv::Kv::new(
            settings.kv_max_keys,
            settings.kv_max_value_bytes,
        )),
        "seed.fs" | "fs" => Box::new(
            fs::Fs::new(settings.fs_root.clone(), settings.fs_max_file_bytes)
                .with_max_hold_ms(settings.flow_max_sleep_ms)
                .with_max_total_bytes(settings.fs_max_total_bytes),
        ),
        "seed.chaos" => Box::new(chaos::Chaos::new(settings.flow_max_sleep_ms)),
        "seed.service" => Box::new(service::Service::new(
            settings.services.clone(),
            settings.services_dir.clone(),
        )),
        "seed.redis" => Box::new(redis::Redis::new(
            &settings.redis,
            settings.redis_dir.clone(),
        )),
        "seed.kdht" | "kdht-node" => Box::new(match &settings.kdht_key_file {
            Some(f) => kdht::Kdht::with_key_file(settings.kdht.clone(), f)?,
            None => kdht::Kdht::new(settings.kdht.clone()),
        }),
        "raft-node" => Box::new(raft::RaftNode::new()),
        other => {
            return Err(format!(
                "unknown built-in seed {other:?} (built-ins: {})",
                KNOWN.join(", ")
            ))
        }
    })
}

/// The seeds a Ghost hosts, by id. An empty registry is valid.
#[derive(Default)]
pub struct Registry {
    seeds: BTreeMap<String, Box<dyn Seed>>,
}

impl Registry {
    pub fn register(&mut self, seed: Box<dyn Seed>) -> Result<(), String> {
        let id = seed.id();
        validate_seed_id(id)?;
        if seed.name().trim().is_empty() || seed.description().trim().is_empty() {
            return Err(format!("seed {id}: name and description must not be blank"));
        }
        if self.seeds.contains_key(id) {
            return Err(format!("seed {id} registered twice"));
        }
        self.seeds.insert(id.to_owned(), seed);
        Ok(())
    }

    /// Built-ins from a config list; blanks and `none` are skipped, duplicates rejected.
    pub fn from_ids(ids: &[String], settings: &SeedSettings) -> Result<Registry, String> {
        let mut r = Registry::default();
        for id in ids {
            let id = id.trim();
            if id.is_empty() || id == "none" {
                continue;
            }
            r.register(builtin(id, settings)?)?;
        }
        Ok(r)
    }

    pub fn infos(&self) -> Vec<SeedInfo> {
        self.seeds.values().map(|s| s.info()).collect()
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Box<dyn Seed>> {
        self.seeds.get_mut(id)
    }

    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }

    pub fn into_seeds(self) -> impl Iterator<Item = (String, Box<dyn Seed>)> {
        self.seeds.into_iter()
    }
}

/// Runs one operation directly, with the allowlist check (`ghost exec`, tests).
pub fn run_checked(seed: &mut dyn Seed, operation: &str, args: &Args) -> SeedOutput {
    match seed.operation(operation) {
        None => SeedOutput::error(
            64,
            format!(
                "unknown operation {operation:?} for {} (declared: {})\n",
                seed.id(),
                seed.operations()
                    .iter()
                    .map(|o| o.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(spec) => match spec.check_args(args) {
            Err(e) => SeedOutput::error(64, format!("{e}\n")),
            Ok(()) => match seed.call(operation, args, &SeedCtx::detached(seed.id())) {
                Call::Done(out) => out,
                Call::Pending(f) => block_local(f),
            },
        },
    }
}

/// Awaits an operation's future outside a Ghost (`ghost exec`) on a one-off local runtime.
fn block_local(f: LocalBoxFuture<'static, SeedOutput>) -> SeedOutput {
    if tokio::runtime::Handle::try_current().is_ok() {
        return SeedOutput::error(70, "asynchronous operation cannot run here\n");
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => tokio::task::LocalSet::new().block_on(&rt, f),
        Err(e) => SeedOutput::error(70, format!("cannot start a runtime: {e}\n")),
    }
}
