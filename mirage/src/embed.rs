//! Mirage in-process: `Mirage::start(cfg)` inside an actix System (an application, or a
//! `#[actix::test]`) brings up the same store, Supervisor, report hub, session listener and
//! HTTP API that `mirage serve` does, and hands back their addresses and a `stop`.
//!
//! Not done here, unlike `mirage serve`: the panic hook that ends the process (the embedding
//! program decides; see [`crate::supervision::install_panic_hook`]), the signal handling,
//! the `mirage ready` line and the co-located Ghosts of `mirage up`.

use std::net::SocketAddr;
use std::path::Path;

use actorkit::metrics::MeteredAddr;

use crate::actors::report_stream::ReportHub;
use crate::actors::supervisor::Supervisor;
use crate::config::MirageConfig;
use crate::server;

pub struct Mirage;

/// A started Mirage: where it listens, its actors, and how to stop it.
pub struct Running {
    /// The Ghost session listener.
    pub session: SocketAddr,
    /// The HTTP API, unless `api.listen` was empty.
    pub api: Option<SocketAddr>,
    pub supervisor: MeteredAddr<Supervisor>,
    pub hub: MeteredAddr<ReportHub>,
    core: server::Core,
    api_server: Option<actix_web::dev::ServerHandle>,
}

impl Mirage {
    /// A config for an embedded Mirage: both listeners on ephemeral 127.0.0.1 ports, state
    /// in `data_dir`.
    pub fn ephemeral_config(data_dir: &Path) -> MirageConfig {
        let mut cfg = MirageConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_path_buf(),
            ..MirageConfig::default()
        };
        cfg.api.listen = "127.0.0.1:0".into();
        cfg
    }

    /// Starts Mirage on the current actix System. Errors are the ones `mirage serve` reports
    /// (bad config, unusable data_dir, port in use, bad certificate).
    pub async fn start(cfg: MirageConfig) -> Result<Running, String> {
        let prepared = server::prepare(cfg)?;
        let cfg = prepared.cfg.clone();
        let core = server::start_core(prepared).await?;
        let (api, api_server) = match server::start_api(&cfg, &core, "") {
            Err(e) => {
                stop_core(&core);
                return Err(e);
            }
            Ok(None) => (None, None),
            Ok(Some((addr, server))) => {
                let handle = server.handle();
                actix_rt::spawn(server);
                (Some(addr), Some(handle))
            }
        };
        tracing::info!(component = "mirage", session = %core.session_addr, api = ?api, "embedded Mirage started");
        Ok(Running {
            session: core.session_addr,
            api,
            supervisor: core.sup.clone(),
            hub: core.hub.clone(),
            core,
            api_server,
        })
    }
}

fn stop_core(core: &server::Core) {
    core.accept.abort();
    for a in &core.arbiters {
        a.stop();
    }
}

impl Running {
    /// Closes both listeners and ends every Ghost session (their Arbiters stop). The
    /// orchestrator actors end with the System.
    pub async fn stop(self) {
        if let Some(h) = &self.api_server {
            h.stop(true).await;
        }
        stop_core(&self.core);
    }
}
