//! Wires the actors together and runs a Ghost until it is told to stop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use shared::handshake::{Registration, CAP_SESSION_COMMAND};

use crate::actors::dispatcher::{Dispatcher, DispatcherParts};
use crate::actors::link::{LinkConfig, MirageLink};
use crate::actors::outbox::Outbox;
use crate::actors::seed::{Factory, SeedActor, Shutdown};
use crate::admin::{self, AdminCtx};
use crate::children::Children;
use crate::config::{GhostConfig, Policy};
use crate::logic::{Catalog, DedupeWindow, Fences, OutboxState, Phase};
use crate::seeds::{builtin, Registry, SeedCtx, SeedSettings};
use crate::store::{Db, GhostClock, Inline, SharedDb, Store};

pub fn seed_settings(cfg: &GhostConfig) -> SeedSettings {
    SeedSettings {
        fs_root: cfg.fs_root(),
        fs_max_file_bytes: cfg.seed.fs_max_file_bytes,
        fs_max_total_bytes: cfg.seed.fs_max_total_bytes,
        kv_max_keys: cfg.seed.kv_max_keys,
        kv_max_value_bytes: cfg.seed.kv_max_value_bytes,
        flow_max_sleep_ms: cfg.seed.flow_max_sleep_ms,
        services: cfg.services.clone(),
        services_dir: cfg.data_dir.join("services"),
        redis: cfg.redis.clone(),
        redis_dir: cfg.data_dir.join("redis"),
        kdht: cfg.kdht.clone(),
        kdht_key_file: Some(cfg.data_dir.join("kdht.key")),
    }
}

/// Runs the Ghost; returns the process exit code.
pub fn serve(cfg: GhostConfig) -> Result<i32, String> {
    cfg.validate()?;
    // appear → seed → radiate
    // TLS files are read now: a bad one is a startup error, not a reconnect loop.
    let tls = crate::tls::connector(&cfg.tls)?;
    let phase = Phase::Boot.appear()?;
    let settings = seed_settings(&cfg);
    let registry = Registry::from_ids(&cfg.seeds, &settings)?;
    let phase = phase.seed()?;
    let infos = registry.infos();
    let mut catalog = Catalog::new();
    for (id, seed) in registry_ops(&cfg, &settings)? {
        catalog.insert(id, seed);
    }

    let window_ms = cfg.dedupe.window_ms;
    let mut db = Db::open(&cfg.data_dir, window_ms)
        .map_err(|e| format!("{e} (data_dir {})", cfg.data_dir.display()))?;
    let instance_id = crate::instance::load_or_create(&cfg.data_dir)?;
    // The window keeps a hash per executed command; the events stay on disk.
    let mut dedupe = DedupeWindow::new(window_ms, cfg.dedupe.max_entries);
    let rec = db
        .recover(|cid, keep| {
            dedupe.restore(cid, keep);
        })
        .map_err(|e| e.to_string())?;
    let clock = GhostClock::resume(rec.clock_ms);
    tracing::info!(component = "ghost", ghost_id = %cfg.ghost_id, instance_id = %instance_id, outbox = rec.outbox.len(), executions = rec.executions, interrupted = rec.started.len(), failed_events = rec.failed_events, ghost_clock_ms = rec.clock_ms, "recovered state");
    for (cid, marker) in rec.started {
        tracing::warn!(component = "ghost", command_id = %cid, started_ms = marker.started_ms, "command was executing when the Ghost stopped; its effect is unknown");
        dedupe.restore_started(cid, marker);
    }
    let mut outbox_state = OutboxState::new(cfg.mirage.max_in_flight);
    for (seq, id, payload) in rec.outbox {
        outbox_state.push(seq, id, payload);
    }
    let fences = Fences(rec.fences.into_iter().collect());
    let phase = phase.radiate()?;
    // Room on the data dir's disk that only the outbox can take back (a full disk).
    let reserve = (cfg.outbox.reserve_bytes > 0).then(|| {
        let r = Arc::new(crate::reserve::outbox(&cfg.data_dir, cfg.outbox.reserve_bytes));
        match r.ensure() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(component = "ghost", bytes = cfg.outbox.reserve_bytes, data_dir = %cfg.data_dir.display(), "not enough free space for the outbox disk reserve; made later when there is"),
            Err(e) => tracing::warn!(component = "ghost", error = %e, "cannot make the outbox disk reserve"),
        }
        r
    });

    let sys = actix_rt::System::new();
    let children = Rc::new(RefCell::new(Children::default()));
    let children_for_stop = children.clone();
    let started: Result<(), String> = sys.block_on(async move {
        // One connection: the store thread's, lent to the outbox for small inline commits.
        let db: SharedDb = Arc::new(Mutex::new(db));
        let inline = Inline::new(db.clone(), clock, window_ms);
        let store_addr = SyncArbiter::start(1, move || Store::new(db.clone(), clock, window_ms));
        let store = MeteredAddr::new(store_addr, "ghost.store");

        // Each seed: its own arbiter thread, under a Supervisor that rebuilds it after a panic.
        let mut seed_addrs = HashMap::new();
        let mut seeds_for_stop: Vec<MeteredAddr<SeedActor>> = Vec::new();
        let mut seed_arbiters = Vec::new();
        let (obs_tx, obs_rx) = tokio::sync::mpsc::channel(crate::seeds::OBSERVATION_QUEUE);
        for (id, seed) in registry.into_seeds() {
            let slot = Arc::new(Mutex::new(Some(seed)));
            let settings = settings.clone();
            let sid = id.clone();
            let factory: Factory = Arc::new(move || {
                let s = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                s.map(Ok).unwrap_or_else(|| builtin(&sid, &settings))
            });
            let sctx = SeedCtx::new(
                &id,
                cfg.data_dir.join("seeds").join(&id),
                Some(obs_tx.clone()),
            );
            let arbiter = Arbiter::new();
            let aid = id.clone();
            let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                SeedActor::new(&aid, factory, sctx)
            });
            seed_arbiters.push(arbiter);
            let addr = MeteredAddr::new(addr, "ghost.seed");
            seeds_for_stop.push(addr.clone());
            seed_addrs.insert(id, addr);
        }
        let stop_grace = std::time::Duration::from_millis(cfg.seed.stop_grace_ms);

        let outbox = Outbox::new(outbox_state, store.clone(), cfg.timeouts.ack_timeout_ms)
            .with_reserve(reserve.clone())
            .with_inline(inline);
        let outbox_health = outbox.health();
        let outbox = MeteredAddr::new(outbox.start(), "ghost.outbox");
        drop(obs_tx);
        if cfg.mirage.policy == Policy::Headless {
            // No Mirage will ever ack them: keep them out of the durable outbox.
            actix_rt::spawn(drain_observations(obs_rx, cfg.ghost_id.clone()));
        } else {
            actix_rt::spawn(forward_observations(
                obs_rx,
                cfg.ghost_id.clone(),
                outbox.clone(),
            ));
        }
        let dispatcher = MeteredAddr::new(
            Dispatcher::new(DispatcherParts {
                ghost_id: cfg.ghost_id.clone(),
                phase,
                catalog,
                fences,
                dedupe,
                clock,
                seeds: seed_addrs,
                seed_mailbox: cfg.seed.mailbox,
                max_output: cfg.seed.max_output_bytes,
                outbox: outbox.clone(),
                outbox_health,
                reserve,
                store: store.clone(),
            })
            .start(),
            "ghost.dispatcher",
        );

        let link = if cfg.mirage.policy == Policy::Headless {
            tracing::info!(component = "ghost", "policy headless: no Mirage session");
            None
        } else {
            let registration = Registration {
                ghost_id: cfg.ghost_id.clone(),
                peer_identity: cfg.peer_identity().to_owned(),
                seed_list: Some(infos.clone()),
                capabilities: vec![CAP_SESSION_COMMAND.to_owned()],
                labels: cfg.labels.clone(),
                admin_addr: (!cfg.admin.listen.is_empty()).then(|| cfg.admin.listen.clone()),
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                instance_id: Some(instance_id.clone()),
            };
            let lc = LinkConfig {
                ghost_id: cfg.ghost_id.clone(),
                addresses: cfg.mirage.addresses.clone(),
                registration,
                timeouts: cfg.timeouts.clone(),
                backoff: cfg.backoff.clone(),
                policy: cfg.mirage.policy,
                max_connect_attempts: cfg.mirage.max_connect_attempts,
                max_in_flight: cfg.mirage.max_in_flight,
                server_names: cfg
                    .mirage
                    .addresses
                    .iter()
                    .map(|a| cfg.server_name(a))
                    .collect(),
                tls_reload: tls.is_some().then(|| crate::tls::Reloading::new(&cfg.tls)),
                tls,
                auth: cfg.auth_key(),
                auth_required: cfg.auth.required,
            };
            Some(MeteredAddr::new(
                MirageLink::new(lc, dispatcher.clone(), outbox.clone()).start(),
                "ghost.link",
            ))
        };

        let mut admin_addr = String::new();
        if !cfg.admin.listen.is_empty() {
            let ctx = Rc::new(AdminCtx::new(
                cfg.clone(),
                infos.clone(),
                dispatcher.clone(),
                outbox.clone(),
                link.clone(),
                children,
            ));
            admin_addr = admin::listen(ctx).await?.to_string();
        }
        // Handlers first: whoever reads the "ready" line may send SIGTERM at once.
        let signals = shared::notify::Signals::install();
        // One line on stdout for whoever started us (tests, `mirage up`).
        println!(
            "ghost ready ghost_id={} admin={} seeds={} policy={:?}",
            cfg.ghost_id,
            if admin_addr.is_empty() {
                "off"
            } else {
                &admin_addr
            },
            infos
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            cfg.mirage.policy
        );
        actix_rt::spawn(async move {
            // READY=1 once the handlers are in, STOPPING=1 when a signal arrives.
            signals.ready_until_signal().await;
            tracing::info!(component = "ghost", "signal received; stopping");
            stop_seeds(&seeds_for_stop, stop_grace).await;
            for a in &seed_arbiters {
                a.stop();
            }
            System::current().stop();
        });
        Ok(())
    });
    if let Err(e) = started {
        // Actors started before the failure (e.g. the admin port is in use): let the System
        // run them down in its own context; dropping it with them scheduled panics.
        System::current().stop_with_code(2);
        let _ = sys.run_with_code();
        children_for_stop.borrow_mut().shutdown();
        return Err(e);
    }
    let code = sys.run_with_code().map_err(|e| e.to_string())?;
    children_for_stop.borrow_mut().shutdown();
    Ok(code)
}

/// Seeds' observations become `event` frames through the durable outbox (shared::observe).
async fn forward_observations(
    mut rx: tokio::sync::mpsc::Receiver<crate::seeds::Observation>,
    ghost_id: String,
    outbox: MeteredAddr<Outbox>,
) {
    let mut n: u64 = 0;
    while let Some(o) = rx.recv().await {
        n += 1;
        let ev = shared::observe::event(&ghost_id, &o.seed, &o.state, o.at_ms, n);
        let payload = match shared::Envelope::Event(ev.clone()).to_fields().to_bytes() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(component = "ghost.observe", seed = %o.seed, error = %e, "observation not encoded");
                continue;
            }
        };
        let enqueue = crate::actors::outbox::Enqueue {
            event_id: ev.event_id.clone(),
            command_id: None,
            payload,
            session: true,
        };
        match outbox.send(enqueue).await {
            Ok(Ok(())) => {
                tracing::info!(component = "ghost.observe", seed = %o.seed, event_id = %ev.event_id, state = ?o.state, "observation queued")
            }
            Ok(Err(e)) => {
                tracing::error!(component = "ghost.observe", seed = %o.seed, event_id = %ev.event_id, error = %e, "observation not persisted")
            }
            Err(e) => {
                tracing::error!(component = "ghost.observe", seed = %o.seed, error = %e, "outbox unavailable; observation dropped")
            }
        }
    }
}

async fn drain_observations(
    mut rx: tokio::sync::mpsc::Receiver<crate::seeds::Observation>,
    ghost_id: String,
) {
    while let Some(o) = rx.recv().await {
        tracing::info!(component = "ghost.observe", ghost_id = %ghost_id, seed = %o.seed, state = ?o.state, "observation (headless: not sent)");
    }
}

/// Stops every seed at once, each bounded by `grace` (plus a margin for a stuck mailbox).
async fn stop_seeds(seeds: &[MeteredAddr<SeedActor>], grace: std::time::Duration) {
    let all = futures::future::join_all(seeds.iter().map(|a| a.send(Shutdown { grace })));
    let bound = grace + std::time::Duration::from_millis(500);
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::warn!(
            component = "ghost",
            grace_ms = grace.as_millis() as u64,
            "seeds did not all stop in time"
        );
    }
}

fn registry_ops(
    cfg: &GhostConfig,
    settings: &SeedSettings,
) -> Result<Vec<(String, &'static [crate::seeds::OperationSpec])>, String> {
    let r = Registry::from_ids(&cfg.seeds, settings)?;
    Ok(r.into_seeds().map(|(id, s)| (id, s.operations())).collect())
}
