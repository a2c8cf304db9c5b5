//! Wires Mirage together: store, supervisor and plans on the orchestrator Arbiter, Ghost
//! sessions spread round-robin over one Arbiter per core, the session listener (backlog
//! 4096, so a reconnect storm is not throttled by SYN drops), and the HTTP API.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use shared::metrics::MeteredAddr;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast;

use crate::actors::session::GhostSession;
use crate::actors::supervisor::{Restored, Supervisor};
use crate::api;
use crate::config::MirageConfig;
use crate::history::ReportRecord;
use crate::plan::FleetView;
use crate::store::{Db, Store};

pub fn serve(cfg: MirageConfig) -> Result<i32, String> {
    cfg.validate()?;
    let mut db = Db::open(&cfg.data_dir)
        .map_err(|e| format!("{e} (data_dir {})", cfg.data_dir.display()))?;
    let rec = db.recover(cfg.limits.reports).map_err(|e| e.to_string())?;
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
    let restored = Restored {
        active: rec.active,
        finished: rec.finished,
        locks: rec.locks,
        reports,
        max_intent_seq: rec.max_intent_seq,
        max_report_seq: rec.max_report_seq,
    };
    let cfg = Arc::new(cfg);
    let sys = actix_rt::System::new();
    let started: Result<(), String> = sys.block_on(async move {
        let store = MeteredAddr::new(Store::new(db).start(), "mirage.store");
        let fleet = Rc::new(RefCell::new(Arc::new(FleetView::default())));
        let (feed, _) = broadcast::channel::<Arc<ReportRecord>>(1024);
        let sup = MeteredAddr::new(
            Supervisor::new(cfg.clone(), store, fleet, restored, feed.clone()).start(),
            "mirage.supervisor",
        );

        let listen: SocketAddr = cfg.listen.parse().map_err(|e| format!("listen {}: {e}", cfg.listen))?;
        let socket = if listen.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| e.to_string())?;
        socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
        socket.bind(listen).map_err(|e| format!("listen {listen}: {e}"))?;
        let listener = socket.listen(4096).map_err(|e| format!("listen {listen}: {e}"))?;
        let session_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let arbiters: Vec<Arbiter> = (0..cfg.threads()).map(|_| Arbiter::new()).collect();
        let open = Arc::new(AtomicUsize::new(0));
        // Handshakes count too, so half-open floods are bounded.
        let max_open = cfg.limits.sessions + 1024;
        {
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
                    let Ok(std_sock) = sock.into_std() else { continue };
                    open.fetch_add(1, Ordering::Relaxed);
                    let (cfg, sup, open) = (cfg.clone(), sup.clone(), open.clone());
                    let arb = &arbiters[next % arbiters.len()];
                    next = next.wrapping_add(1);
                    // Re-register the socket with the target Arbiter's own reactor.
                    arb.spawn(async move {
                        match TcpStream::from_std(std_sock) {
                            Ok(s) => {
                                GhostSession::new(s, peer.to_string(), cfg, sup, open).start();
                            }
                            Err(e) => {
                                open.fetch_sub(1, Ordering::Relaxed);
                                tracing::warn!(component = "mirage.listener", %peer, error = %e, "cannot adopt socket");
                            }
                        }
                    });
                }
            });
        }

        let mut api_addr = String::from("off");
        if !cfg.api.listen.is_empty() {
            let token = std::env::var("MIRAGE_TOKEN").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| cfg.api.token.clone());
            let state = api::AppState {
                sup: sup.clone(),
                feed,
                token: Arc::new(token),
            };
            let (addr, server) = api::start(&cfg.api.listen, cfg.api.max_body, state)?;
            api_addr = addr.to_string();
            actix_rt::spawn(server);
        }
        println!("mirage ready mirage_id={} session={session_addr} api={api_addr}", cfg.mirage_id);
        actix_rt::spawn(async {
            wait_for_signal().await;
            tracing::info!(component = "mirage", "signal received; stopping");
            System::current().stop();
        });
        Ok(())
    });
    started?;
    sys.run_with_code().map_err(|e| e.to_string())
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
