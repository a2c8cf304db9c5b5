//! Wires Mirage together: store, supervisor and plans on the orchestrator Arbiter, Ghost
//! sessions spread round-robin over one Arbiter per core, the session listener (backlog
//! 4096, so a reconnect storm is not throttled by SYN drops), and the HTTP API.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use tokio::net::{TcpSocket, TcpStream};

use crate::actors::report_stream::ReportHub;
use crate::actors::session::GhostSession;
use crate::actors::supervisor::{Restored, Supervisor};
use crate::api;
use crate::config::MirageConfig;
use crate::history::ReportRecord;
use crate::plan::FleetView;
use crate::store::{Db, Recovered, RemoteBackend, Store};

/// `mirage up`: a co-located local Ghost started next to Mirage.
#[derive(Debug, Clone)]
pub struct LocalGhost {
    pub bin: std::path::PathBuf,
    pub admin: String,
    pub seeds: Vec<String>,
    /// Ghost processes in all (`mirage up --ghosts N`): the local one plus `ghost.2`, ….
    pub ghosts: usize,
}

/// `mirage up --ghosts` at most.
pub const MAX_UP_GHOSTS: usize = 64;

pub fn serve(cfg: MirageConfig) -> Result<i32, String> {
    serve_with(cfg, None)
}

/// Everything `start_core` needs, checked and loaded before any actor starts.
pub(crate) struct Prepared {
    pub cfg: Arc<MirageConfig>,
    store: StoreInit,
    restored: Restored,
    tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    /// The session listener's socket, bound (not listening) before the election so its
    /// address can be published; `None` binds `cfg.listen` in `start_core`.
    session_socket: Option<TcpSocket>,
}

enum StoreInit {
    Sqlite(Db),
    Remote(Arc<dyn RemoteBackend>),
}

/// What `start_core` brought up on the current System.
pub(crate) struct Core {
    pub session_addr: SocketAddr,
    pub sup: MeteredAddr<Supervisor>,
    pub hub: MeteredAddr<ReportHub>,
    /// The accept loop (aborting it closes the session listener).
    pub accept: tokio::task::JoinHandle<()>,
    /// The session Arbiters (stopping them ends every Ghost session).
    pub arbiters: Vec<actix_rt::ArbiterHandle>,
}

pub fn serve_with(cfg: MirageConfig, local: Option<LocalGhost>) -> Result<i32, String> {
    // Before any actor: a panic outside a restartable actor ends the process.
    crate::supervision::install_panic_hook();
    if cfg.store.backend == "etcd" {
        if local.is_some() {
            return Err("`mirage up` runs one Mirage with its Ghosts; with store.backend = \"etcd\" run `mirage serve` on each Mirage host".into());
        }
        return serve_etcd(cfg);
    }
    if local.is_some() && cfg.local_ghost.is_empty() {
        cfg.validate()?;
        return Err("local_ghost is empty; `mirage up` needs an id for its local Ghost".into());
    }
    let prepared = prepare(cfg)?;
    let cfg = prepared.cfg.clone();
    let sys = actix_rt::System::new();
    if let Some(l) = &local {
        if l.ghosts == 0 || l.ghosts > MAX_UP_GHOSTS {
            return Err(format!(
                "--ghosts {}: must be 1..={MAX_UP_GHOSTS}",
                l.ghosts
            ));
        }
    }
    let child: Rc<RefCell<Vec<std::process::Child>>> = Rc::new(RefCell::new(Vec::new()));
    let child_for_stop = child.clone();
    let started: Result<(), String> = sys.block_on(async move {
        let core = start_core(prepared).await?;
        let session_addr = core.session_addr;
        let mut local_admin = String::new();
        if let Some(l) = &local {
            let c = spawn_local_ghost(l, &cfg.local_ghost, &cfg.data_dir.join("local-ghost"), &l.admin, &session_addr)?;
            local_admin = l.admin.clone();
            child.borrow_mut().push(c);
            // More Ghosts on this machine, each its own id, data dir and (ephemeral) admin port.
            for i in 2..=l.ghosts {
                let id = format!("ghost.{i}");
                let dir = cfg.data_dir.join(&id);
                match spawn_local_ghost(l, &id, &dir, "127.0.0.1:0", &session_addr) {
                    Ok(c) => child.borrow_mut().push(c),
                    Err(e) => {
                        stop_child(&child);
                        return Err(e);
                    }
                }
            }
        }

        let mut api_addr = String::from("off");
        if let Some((addr, server)) = start_api(&cfg, &core, &local_admin)? {
            api_addr = addr.to_string();
            actix_rt::spawn(server);
        }
        // Handlers first: whoever reads the "ready" line may send SIGTERM at once.
        let signals = shared::notify::Signals::install();
        println!("mirage ready mirage_id={} session={session_addr} api={api_addr}", cfg.mirage_id);
        if local.is_some() {
            println!(
                "  local ghost {} (admin {local_admin}) started; data in {}",
                cfg.local_ghost,
                cfg.data_dir.display()
            );
            let n = local.as_ref().map_or(1, |l| l.ghosts);
            if n > 1 {
                println!("  and {} more: ghost.2 … ghost.{n}", n - 1);
            }
            if api_addr != "off" {
                println!("  dashboard  http://{api_addr}/");
                println!("  try        mirage issue submit config/plans/hello.toml --wait --api http://{api_addr}");
            }
            println!("  Ctrl-C stops everything.");
        }
        actix_rt::spawn(async move {
            // READY=1 once the handlers are in, STOPPING=1 when a signal arrives.
            signals.ready_until_signal().await;
            tracing::info!(component = "mirage", "signal received; stopping");
            System::current().stop();
        });
        Ok(())
    });
    if let Err(e) = started {
        stop_child(&child_for_stop);
        // Actors may have started before the failure (e.g. the API port is in use): stop the
        // System and let it run them down in its own context. Dropping it with them still
        // scheduled panics ("there is no reactor running").
        System::current().stop_with_code(2);
        let _ = sys.run_with_code();
        return Err(e);
    }
    let code = sys.run_with_code().map_err(|e| e.to_string());
    stop_child(&child_for_stop);
    code
}

/// Checks the config, opens and recovers the store, loads the certificates.
pub(crate) fn prepare(cfg: MirageConfig) -> Result<Prepared, String> {
    cfg.validate()?;
    if cfg.store.backend != "sqlite" {
        return Err(format!(
            "store.backend {:?}: an embedded Mirage (Mirage::start) runs on SQLite only; `mirage serve` runs on etcd",
            cfg.store.backend
        ));
    }
    if cfg.data_dir.exists() && !cfg.data_dir.is_dir() {
        return Err(format!(
            "data_dir {} is not a directory (set data_dir or --data-dir to a directory)",
            cfg.data_dir.display()
        ));
    }
    let mut db = Db::open(&cfg.data_dir)
        .map_err(|e| format!("cannot open data_dir {}: {e}", cfg.data_dir.display()))?
        .with_reserve(cfg.store.reserve_bytes);
    let rec = db.recover(cfg.limits.reports).map_err(|e| e.to_string())?;
    let restored = restored(rec);
    // Certificates are loaded now: a bad file is a startup error.
    let tls = crate::tls::acceptor(&cfg.tls)?.map(Arc::new);
    Ok(Prepared {
        cfg: Arc::new(cfg),
        store: StoreInit::Sqlite(db),
        restored,
        tls,
        session_socket: None,
    })
}

/// What the store recovered, as the Supervisor takes it.
fn restored(rec: Recovered) -> Restored {
    let reports: Vec<ReportRecord> = rec
        .reports
        .iter()
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    tracing::info!(
        component = "mirage",
        active = rec.active.len(),
        finished = rec.finished.len(),
        locks = rec.locks.len(),
        reports = reports.len(),
        "recovered state"
    );
    Restored {
        active: rec.active,
        finished: rec.finished,
        locks: rec.locks,
        reports,
        max_intent_seq: rec.max_intent_seq,
        max_report_seq: rec.max_report_seq,
    }
}

/// Binds the session listener's address (no `listen` yet: until then a connection is
/// refused, so a Ghost tries its next Mirage address at once).
fn bind_session(listen: &str) -> Result<TcpSocket, String> {
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("listen {listen}: {e}"))?;
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("listen {listen}: {e}"))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| format!("listen {listen}: {e}"))?;
    socket.bind(listen).map_err(|e| {
        format!("listen {listen}: {e} (set `listen` or --listen to a free ip:port)")
    })?;
    Ok(socket)
}

/// The session listener, the store, the Supervisor, the report hub and the session
/// Arbiters, on the current System.
pub(crate) async fn start_core(p: Prepared) -> Result<Core, String> {
    let Prepared {
        cfg,
        store,
        restored,
        tls,
        session_socket,
    } = p;
    // The listener first: a port in use fails before any actor starts.
    let socket = match session_socket {
        Some(s) => s,
        None => bind_session(&cfg.listen)?,
    };
    let listener = socket
        .listen(4096)
        .map_err(|e| format!("listen {}: {e}", cfg.listen))?;
    let session_addr = listener.local_addr().map_err(|e| e.to_string())?;

    let store = match store {
        StoreInit::Sqlite(db) => Store::new(db),
        StoreInit::Remote(r) => Store::remote(r),
    };
    let store = MeteredAddr::new(store.start(), "mirage.store");
    let fleet = Rc::new(RefCell::new(Arc::new(FleetView::default())));
    let hub = MeteredAddr::new(ReportHub::default().start(), "mirage.report_hub");
    let sup = MeteredAddr::new(
        Supervisor::new(cfg.clone(), store, fleet, restored, hub.clone()).start(),
        "mirage.supervisor",
    );
    let arbiters: Vec<Arbiter> = (0..cfg.threads()).map(|_| Arbiter::new()).collect();
    let arbiter_handles = arbiters.iter().map(|a| a.handle()).collect();
    let open = Arc::new(AtomicUsize::new(0));
    // Handshakes count too, so half-open floods are bounded.
    let max_open = cfg.limits.sessions + 1024;
    let accept = {
        let cfg = cfg.clone();
        let sup = sup.clone();
        actix_rt::spawn(async move {
            let mut next = 0usize;
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(component = "mirage.listener", error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if open.load(Ordering::Relaxed) >= max_open {
                    tracing::warn!(component = "mirage.listener", %peer, limit = max_open, "connection refused: too many open");
                    crate::metrics::SESSIONS_REJECTED.inc();
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let Ok(std_sock) = sock.into_std() else {
                    continue;
                };
                open.fetch_add(1, Ordering::Relaxed);
                let (cfg, sup, open, tls) = (cfg.clone(), sup.clone(), open.clone(), tls.clone());
                let arb = &arbiters[next % arbiters.len()];
                next = next.wrapping_add(1);
                // Re-register the socket with the target Arbiter's own reactor.
                arb.spawn(async move {
                        match TcpStream::from_std(std_sock) {
                            Ok(s) => {
                                GhostSession::new(s, peer.to_string(), cfg, sup, open, tls).start();
                            }
                            Err(e) => {
                                open.fetch_sub(1, Ordering::Relaxed);
                                tracing::warn!(component = "mirage.listener", %peer, error = %e, "cannot adopt socket");
                            }
                        }
                    });
            }
        })
    };
    Ok(Core {
        session_addr,
        sup,
        hub,
        accept,
        arbiters: arbiter_handles,
    })
}

/// The HTTP API when `api.listen` is set: its address and the server future to spawn.
pub(crate) fn start_api(
    cfg: &MirageConfig,
    core: &Core,
    local_admin: &str,
) -> Result<Option<(SocketAddr, actix_web::dev::Server)>, String> {
    if cfg.api.listen.is_empty() {
        return Ok(None);
    }
    {
        let token = std::env::var("MIRAGE_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| cfg.api.token.clone());
        let state = app_state(core, token, local_admin);
        let tls = (!cfg.api.tls_cert_file.is_empty()).then_some((
            cfg.api.tls_cert_file.as_str(),
            cfg.api.tls_key_file.as_str(),
        ));
        api::start(&cfg.api.listen, cfg.api.max_body, tls, state).map(Some)
    }
}

fn app_state(core: &Core, token: String, local_admin: &str) -> api::AppState {
    api::AppState {
        sup: core.sup.clone(),
        hub: core.hub.clone(),
        token: Arc::new(token),
        local_admin: Arc::new(local_admin.to_owned()),
    }
}

fn stop_child(child: &Rc<RefCell<Vec<std::process::Child>>>) {
    let mut all = std::mem::take(&mut *child.borrow_mut());
    // SIGTERM to all first so each Ghost flushes and stops its seeds' processes; then make
    // sure, after more than a Ghost's default seed stop grace (5 s).
    for c in &all {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for _ in 0..400 {
        all.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if all.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for c in &mut all {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Starts `ghost serve` for the local Ghost, pointed at our session listener.
fn spawn_local_ghost(
    l: &LocalGhost,
    id: &str,
    dir: &std::path::Path,
    admin: &str,
    session: &SocketAddr,
) -> Result<std::process::Child, String> {
    if !l.bin.exists() {
        return Err(format!(
            "ghost binary not found at {} (build it: cargo build --release -p ghost, or pass --ghost-bin)",
            l.bin.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log =
        std::fs::File::create(dir.join("ghost.log")).map_err(|e| format!("ghost log: {e}"))?;
    let mut cmd = std::process::Command::new(&l.bin);
    // Readiness is Mirage's to report (NotifyAccess=main), not its local Ghosts'.
    cmd.env_remove("NOTIFY_SOCKET");
    cmd.arg("serve")
        .args(["--id", id])
        .args(["--mirage", &session.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .args(["--admin", admin])
        .args(["--seeds", &l.seeds.join(",")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log));
    let c = cmd
        .spawn()
        .map_err(|e| format!("cannot start the local ghost {}: {e}", l.bin.display()))?;
    tracing::info!(component = "mirage", ghost_id = %id, pid = c.id(), admin = %admin, data_dir = %dir.display(), "local ghost started");
    Ok(c)
}

/// Exit code of a Mirage that lost its etcd leadership: the service manager starts it
/// again (`Restart=on-failure`) and it campaigns as a follower (docs/DECISIONS.md).
pub const EXIT_LEADERSHIP_LOST: i32 = 75;

/// The seed-lock fencing tokens of a new leader start above every token of earlier
/// leaders: the epoch (its election key's create revision, which only grows from leader to
/// leader) in the high bits. See docs/DECISIONS.md, "Issue 15 (second slice)".
pub const LOCK_EPOCH_SHIFT: u32 = 20;

pub fn lock_token_floor(election_revision: i64) -> u64 {
    u64::try_from(election_revision)
        .unwrap_or(0)
        .saturating_mul(1 << LOCK_EPOCH_SHIFT)
}

/// `mirage serve` with `store.backend = "etcd"`: binds both addresses, serves the follower
/// API, campaigns; once leading, recovers from etcd and starts the same core and API as
/// with SQLite (every commit fenced). Losing leadership ends the process (exit 75).
fn serve_etcd(cfg: MirageConfig) -> Result<i32, String> {
    use crate::ha::status::{HaView, LeaderInfo, HA};
    use crate::store_etcd::{EtcdDb, Layout};
    use std::time::{Duration, Instant};

    cfg.validate()?;
    if cfg.data_dir.exists() && !cfg.data_dir.is_dir() {
        return Err(format!(
            "data_dir {} is not a directory",
            cfg.data_dir.display()
        ));
    }
    let tls = crate::tls::acceptor(&cfg.tls)?.map(Arc::new);
    let e = cfg.store.etcd.clone();
    let layout = Layout {
        prefix: e.prefix.clone(),
        max_ops: e.max_txn_ops,
        max_bytes: e.max_txn_bytes,
    };
    let cfg = Arc::new(cfg);
    let sys = actix_rt::System::new();
    let started: Result<(), String> = sys.block_on(async move {
        let t0 = Instant::now();
        let socket = bind_session(&cfg.listen)?;
        let session_addr = socket.local_addr().map_err(|e| e.to_string())?;
        let token = std::env::var("MIRAGE_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| cfg.api.token.clone());
        let mut api_addr = String::new();
        // One listening socket for the whole life of the process: the follower API answers
        // on it, then the leader's API takes it over (no moment where the port is closed).
        let mut api_socket = None;
        if !cfg.api.listen.is_empty() {
            let l = std::net::TcpListener::bind(&cfg.api.listen)
                .map_err(|e| format!("api listen {}: {e}", cfg.api.listen))?;
            api_addr = l.local_addr().map_err(|e| e.to_string())?.to_string();
            let follower = l.try_clone().map_err(|e| format!("api listen: {e}"))?;
            let server = crate::ha::follower::start(follower, &cfg.mirage_id, &token)?;
            api_socket = Some((l, server.handle()));
            actix_rt::spawn(server);
        }
        let etcd = Arc::new(crate::ha::Etcd::new(e.hosts(), Duration::from_millis(e.timeout_ms)));
        let me = LeaderInfo {
            mirage_id: cfg.mirage_id.clone(),
            api: api_addr.clone(),
            session: session_addr.to_string(),
        };
        let (ha, _driver) = crate::ha::spawn(
            etcd.clone(),
            crate::ha::ElectorConfig {
                election_key: layout.election_key(),
                id: me.encode(),
                ttl: Duration::from_millis(e.lease_ttl_ms),
                rejoin_after: Duration::from_secs(1),
            },
        );
        HA.set(HaView {
            role: "candidate",
            store: "etcd",
            endpoints: e.hosts(),
            election_key: layout.election_key(),
            leader: None,
            election_revision: None,
            why: None,
        });
        let signals = shared::notify::Signals::install();
        println!(
            "mirage ready mirage_id={} session={session_addr} api={} store=etcd role=candidate",
            cfg.mirage_id,
            if api_addr.is_empty() { "off" } else { &api_addr }
        );
        // Set on SIGTERM/SIGINT: the step-down that follows our own resign is a stop (exit
        // 0), not a lost leadership (exit 75).
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let ha = ha.clone();
            let stopping = stopping.clone();
            actix_rt::spawn(async move {
                signals.ready_until_signal().await;
                stopping.store(true, Ordering::SeqCst);
                tracing::info!(component = "mirage", "signal received; resigning and stopping");
                // Revoking the lease lets another Mirage lead at once instead of after a TTL.
                ha.resign().await;
                System::current().stop();
            });
        }
        actix_rt::spawn(async move {
            let mut rx = ha.subscribe();
            // Follow until leading.
            let revision = loop {
                let role = rx.borrow_and_update().clone();
                match role {
                    crate::ha::Role::Leader { revision } => break revision,
                    crate::ha::Role::Follower { leader } => HA.update(|v| {
                        v.role = if leader.is_some() { "follower" } else { "candidate" };
                        v.leader = leader.as_deref().map(LeaderInfo::decode);
                    }),
                    crate::ha::Role::Candidate => HA.update(|v| v.role = "candidate"),
                    crate::ha::Role::Deposed { why } => HA.update(|v| {
                        v.role = "candidate";
                        v.why = Some(why);
                    }),
                }
                if rx.changed().await.is_err() {
                    return;
                }
            };
            crate::metrics::HA_LEADERSHIP_GAINED.inc();
            // "leader" once it orchestrates; until then the follower API answers 503.
            HA.update(|v| {
                v.role = "recovering";
                v.leader = Some(me.clone());
                v.election_revision = Some(revision);
                v.why = None;
            });
            let won_at = Instant::now();
            tracing::info!(component = "mirage.ha", revision, after_ms = t0.elapsed().as_millis() as u64, "leading: recovering state from etcd");
            let db = Arc::new(EtcdDb::new(etcd.clone(), ha.clone(), layout.clone()));
            let rec = match db.recover(cfg.limits.reports).await {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(component = "mirage.ha", error = %err, "cannot recover state from etcd as the new leader; resigning and exiting");
                    ha.resign().await;
                    std::process::exit(EXIT_LEADERSHIP_LOST);
                }
            };
            let mut restored = restored(rec);
            let floor = lock_token_floor(revision);
            crate::lock::set_epoch_floor(floor);
            for q in &mut restored.locks {
                q.last_token = q.last_token.max(floor);
            }
            tracing::info!(component = "mirage", active = restored.active.len(), finished = restored.finished.len(), locks = restored.locks.len(), reports = restored.reports.len(), lock_token_floor = floor, recover_ms = won_at.elapsed().as_millis() as u64, "recovered state from etcd");
            let prepared = Prepared {
                cfg: cfg.clone(),
                store: StoreInit::Remote(db),
                restored,
                tls,
                session_socket: Some(socket),
            };
            let core = match start_core(prepared).await {
                Ok(c) => c,
                Err(err) => {
                    tracing::error!(component = "mirage.ha", error = %err, "cannot start as the leader; resigning and exiting");
                    ha.resign().await;
                    std::process::exit(EXIT_LEADERSHIP_LOST);
                }
            };
            if let Some((listener, follower)) = api_socket {
                // The follower API stops first; the socket stays open (we hold it), so
                // connections wait in its backlog for the leader's API, none is refused.
                follower.stop(false).await;
                match api::start_on(listener, cfg.api.max_body, app_state(&core, token, "")) {
                    Ok((_, server)) => {
                        actix_rt::spawn(server);
                    }
                    Err(err) => tracing::error!(component = "mirage.ha", error = %err, "leader API did not start; Ghost sessions still served"),
                }
            }
            HA.update(|v| v.role = "leader");
            println!(
                "mirage leading mirage_id={} revision={revision} session={session_addr} api={api_addr} after_ms={}",
                cfg.mirage_id,
                t0.elapsed().as_millis()
            );
            tracing::info!(component = "mirage.ha", revision, ready_ms = won_at.elapsed().as_millis() as u64, "leader: orchestrating");
            // Lead until the fence is gone (lease window passed, key gone, a commit refused).
            while ha.is_leader() {
                let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
            }
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            // The elector's own reason (quorum lost, key gone, commit refused) arrives with
            // its next tick; the local clock may have closed the window just before.
            let deadline = Instant::now() + Duration::from_millis(300);
            let why = loop {
                if let crate::ha::Role::Deposed { why } = rx.borrow_and_update().clone() {
                    break why;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !matches!(tokio::time::timeout(left, rx.changed()).await, Ok(Ok(()))) {
                    break match ha.role() {
                        crate::ha::Role::Deposed { why } => why,
                        r => format!("no longer leading ({r:?})"),
                    };
                }
            };
            crate::metrics::HA_LEADERSHIP_LOST.inc();
            HA.update(|v| {
                v.role = "deposed";
                v.why = Some(why.clone());
                v.leader = None;
            });
            // Nothing commits any more (the store's fence is gone); stop taking Ghost
            // traffic at once so they move to the new leader.
            core.accept.abort();
            for a in &core.arbiters {
                a.stop();
            }
            tracing::error!(component = "mirage.ha", why = %why, exit_code = EXIT_LEADERSHIP_LOST, "leadership lost: stopped dispatching; exiting so the service manager restarts this Mirage as a follower");
            eprintln!("mirage: leadership lost ({why}); exiting with code {EXIT_LEADERSHIP_LOST}");
            // Long enough for the overview to show why and the log to flush.
            tokio::time::sleep(Duration::from_millis(500)).await;
            std::process::exit(EXIT_LEADERSHIP_LOST);
        });
        Ok(())
    });
    if let Err(e) = started {
        System::current().stop_with_code(2);
        let _ = sys.run_with_code();
        return Err(e);
    }
    sys.run_with_code().map_err(|e| e.to_string())
}
