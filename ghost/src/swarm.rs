//! `ghost swarm`: N Ghosts in one process for load, storms and scale. Each is a real session
//! (TCP or TLS, registration, heartbeats, commands executed by in-memory seeds, events kept
//! in an in-memory outbox until acked and re-sent after a reconnect, jittered backoff), run
//! as a lightweight task instead of the full actor stack with its SQLite outbox. Dialling,
//! backoff, heartbeat naming and liveness are the same sans-I/O machines the real Ghost's
//! link runs (`shared::session::{dial, heartbeat}`).
//!
//! As in the real Ghost, seeds run off the event loop: one worker task per seed of each
//! Ghost takes its commands in order and runs each on the blocking pool, so a
//! `seed.flow sleep` holds only its own seed, never the runtime the sessions share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use shared::envelope::{AckStatus, Command, Envelope, Event, Outcome};
use shared::handshake::{self, Registration, CAP_SESSION_COMMAND};
use shared::session::dial::{DialAction, DialConfig, DialEvent, Dialer};
use shared::session::heartbeat::{self, Liveness, Tick};
use shared::session::{Backoff, Jitter};
use shared::wire::{Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use crate::seeds::{builtin, run_checked, Seed, SeedOutput, SeedSettings};

/// Commands queued per seed of one swarm Ghost before new ones are refused.
const SEED_QUEUE: usize = 1024;

/// Runs one seed's commands in order, each on the blocking pool; results go to `done`.
async fn seed_worker(
    mut seed: Box<dyn Seed>,
    id: String,
    mut rx: mpsc::Receiver<Command>,
    done: mpsc::UnboundedSender<(Command, SeedOutput)>,
) {
    while let Some(c) = rx.recv().await {
        let (op, args) = (c.operation.clone(), c.args.clone());
        let res = tokio::task::spawn_blocking(move || {
            let out = run_checked(seed.as_mut(), &op, &args);
            (seed, out)
        })
        .await;
        let out = match res {
            Ok((s, out)) => {
                seed = s;
                out
            }
            Err(_) => {
                // The seed panicked: a fresh one takes its place, the command fails.
                match builtin(&id, &SeedSettings::default()) {
                    Ok(s) => seed = s,
                    Err(_) => return,
                }
                SeedOutput::error(70, "seed panicked\n")
            }
        };
        if done.send((c, out)).is_err() {
            return;
        }
    }
}

fn event_for(ghost: &str, c: &Command, out: SeedOutput) -> Event {
    let mut e = Event::new(
        format!("evt.{}", c.command_id),
        c.command_id.clone(),
        c.intent_id.clone(),
        ghost.to_owned(),
        c.seed_selector.clone(),
        if out.succeeded() {
            Outcome::Success
        } else {
            Outcome::Error
        },
    );
    e.timestamp_ms = Some(shared::now_ms());
    e.status = Some(out.status);
    e.exit_code = Some(out.exit_code);
    e.stderr = Some(out.stderr.into());
    e
}

#[derive(Debug, Clone)]
pub struct SwarmConfig {
    pub mirage: String,
    pub count: usize,
    pub id_prefix: String,
    pub seeds: Vec<String>,
    pub heartbeat: Duration,
    /// TLS: fleet CA, and a directory with `<ghost_id>.pem` / `<ghost_id>.key`.
    pub ca_file: Option<PathBuf>,
    pub cert_dir: Option<PathBuf>,
    pub server_name: String,
    /// Dials in flight at once (a storm is still a storm, but not a self-inflicted SYN flood).
    pub dial_concurrency: usize,
}

#[derive(Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub registrations: AtomicU64,
    pub commands: AtomicU64,
    pub events_acked: AtomicU64,
    pub failures: AtomicU64,
}

impl Stats {
    pub fn json(&self) -> String {
        format!(
            "{{\"connected\":{},\"registrations\":{},\"commands\":{},\"events_acked\":{},\"failures\":{}}}",
            self.connected.load(Relaxed),
            self.registrations.load(Relaxed),
            self.commands.load(Relaxed),
            self.events_acked.load(Relaxed),
            self.failures.load(Relaxed)
        )
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn connector(
    cfg: &SwarmConfig,
    ghost: &str,
) -> Result<Option<tokio_native_tls::TlsConnector>, String> {
    let Some(ca) = &cfg.ca_file else {
        return Ok(None);
    };
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut b = native_tls::TlsConnector::builder();
    b.add_root_certificate(
        native_tls::Certificate::from_pem(&read(ca)?).map_err(|e| e.to_string())?,
    )
    .disable_built_in_roots(true);
    if let Some(dir) = &cfg.cert_dir {
        let id = native_tls::Identity::from_pkcs8(
            &read(&dir.join(format!("{ghost}.pem")))?,
            &read(&dir.join(format!("{ghost}.key")))?,
        )
        .map_err(|e| format!("{ghost}: {e}"))?;
        b.identity(id);
    }
    Ok(Some(b.build().map_err(|e| e.to_string())?.into()))
}

/// Runs until the process is stopped. Prints a stats line every second.
pub async fn run(cfg: SwarmConfig) -> Result<(), String> {
    let stats = Arc::new(Stats::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(cfg.dial_concurrency.max(1)));
    let settings = SeedSettings::default();
    for s in &cfg.seeds {
        if !matches!(s.as_str(), "seed.flow" | "seed.kv") {
            return Err(format!(
                "swarm seeds are in-memory: seed.flow and seed.kv (got {s})"
            ));
        }
        builtin(s, &settings)?;
    }
    for i in 0..cfg.count {
        let id = format!("{}{i}", cfg.id_prefix);
        let tls = connector(&cfg, &id)?;
        let (cfg, stats, gate) = (cfg.clone(), stats.clone(), gate.clone());
        tokio::spawn(async move { ghost(cfg, id, tls, stats, gate, i as u64).await });
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("{}", stats.json());
    }
}

async fn ghost(
    cfg: SwarmConfig,
    id: String,
    tls: Option<tokio_native_tls::TlsConnector>,
    stats: Arc<Stats>,
    gate: Arc<tokio::sync::Semaphore>,
    n: u64,
) {
    let settings = SeedSettings::default();
    let seeds: BTreeMap<String, Box<dyn Seed>> = cfg
        .seeds
        .iter()
        .filter_map(|s| builtin(s, &settings).ok().map(|b| (s.clone(), b)))
        .collect();
    let infos = seeds.values().map(|s| s.info()).collect();
    // Results of every seed of this Ghost; each seed's queue is bounded by SEED_QUEUE.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Command, SeedOutput)>();
    let queues: BTreeMap<String, mpsc::Sender<Command>> = seeds
        .into_iter()
        .map(|(sid, seed)| {
            let (tx, rx) = mpsc::channel(SEED_QUEUE);
            tokio::spawn(seed_worker(seed, sid.clone(), rx, done_tx.clone()));
            (sid, tx)
        })
        .collect();
    drop(done_tx);
    let reg = Registration {
        ghost_id: id.clone(),
        peer_identity: id.clone(),
        seed_list: Some(infos),
        capabilities: vec![CAP_SESSION_COMMAND.into()],
        ..Default::default()
    };
    let Ok(line) = handshake::registration_line(&reg) else {
        return;
    };
    let mut dial = Dialer::new(DialConfig {
        addresses: 1,
        backoff: Backoff::default(),
        required: false,
        max_attempts: 1,
    });
    let mut jitter = Jitter::new(shared::now_ms() ^ (n << 20));
    let mut next = dial.start();
    // Events not yet acked, by event_id: re-sent after a reconnect.
    let mut outbox: BTreeMap<String, Event> = BTreeMap::new();
    let mut hb = 0u64;
    loop {
        // Never required, so the dialer always answers with another dial.
        if let DialAction::Dial { delay, .. } = next {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        next = dial.on(DialEvent::Failed, jitter.unit());
        let permit = gate.acquire().await;
        let io: Box<dyn Io> = match TcpStream::connect(&cfg.mirage).await {
            Err(_) => {
                stats.failures.fetch_add(1, Relaxed);
                continue;
            }
            Ok(s) => {
                let _ = s.set_nodelay(true);
                match &tls {
                    None => Box::new(s),
                    Some(c) => match c.connect(&cfg.server_name, s).await {
                        Ok(t) => Box::new(t),
                        Err(_) => {
                            stats.failures.fetch_add(1, Relaxed);
                            continue;
                        }
                    },
                }
            }
        };
        let mut io = io;
        let mut buf = BytesMut::new();
        let registered = async {
            io.write_all(&line).await.ok()?;
            let l = handshake::read_line(&mut io, &mut buf, handshake::MAX_LINE)
                .await
                .ok()?;
            handshake::parse_registration_ack(&l)
                .ok()
                .filter(|a| a.accepted())
        };
        let ack = tokio::time::timeout(Duration::from_secs(10), registered)
            .await
            .ok()
            .flatten();
        drop(permit);
        if ack.is_none() {
            stats.failures.fetch_add(1, Relaxed);
            continue;
        }
        dial.on(DialEvent::Established, 0.0);
        stats.registrations.fetch_add(1, Relaxed);
        stats.connected.fetch_add(1, Relaxed);
        let mut framed = Framed::with_capacity(io, FrameCodec::default(), 256);
        framed.read_buffer_mut().extend_from_slice(&buf);
        let mut next_id = 1u64;
        let mut send = |env: Envelope| {
            let f = env.to_frame(next_id);
            next_id += 1;
            f
        };
        let mut ok = true;
        for e in outbox.values() {
            if let Ok(f) = send(Envelope::Event(e.clone())) {
                ok &= framed.feed(f).await.is_ok();
            }
        }
        ok &= SinkExt::<Frame>::flush(&mut framed).await.is_ok();
        let mut tick = tokio::time::interval(cfg.heartbeat);
        let mut live = Liveness::new(Instant::now(), cfg.heartbeat * 3);
        while ok {
            tokio::select! {
                _ = tick.tick() => {
                    if let Tick::Dead { .. } = live.on_tick(Instant::now()) {
                        break;
                    }
                    hb += 1;
                    let e = heartbeat::heartbeat_event(&id, hb, shared::now_ms());
                    let f: Result<Frame, _> = send(Envelope::Event(e));
                    ok = match f { Ok(f) => framed.send(f).await.is_ok(), Err(_) => false };
                }
                item = framed.next() => {
                    let Some(Ok(frame)) = item else { break };
                    live.on_frame(Instant::now());
                    match Envelope::from_frame(&frame) {
                        Ok(Envelope::EventAck(a)) if outbox.remove(&a.event_id).is_some() && a.ack_status == AckStatus::Accepted => {
                            stats.events_acked.fetch_add(1, Relaxed);
                        }
                        Ok(Envelope::Command(c)) => {
                            stats.commands.fetch_add(1, Relaxed);
                            // Queued for its seed's worker; only a refusal is answered here.
                            let refused = match queues.get(&c.seed_selector) {
                                None => {
                                    let why = format!("unknown seed {}\n", c.seed_selector);
                                    Some((c, SeedOutput::error(127, why)))
                                }
                                Some(q) => match q.try_send(c) {
                                    Ok(()) => None,
                                    Err(mpsc::error::TrySendError::Full(c)) => {
                                        Some((c, SeedOutput::error(1, format!("seed busy: {SEED_QUEUE} commands queued\n"))))
                                    }
                                    Err(mpsc::error::TrySendError::Closed(c)) => {
                                        Some((c, SeedOutput::error(70, "seed unavailable\n")))
                                    }
                                },
                            };
                            if let Some((c, out)) = refused {
                                let e = event_for(&id, &c, out);
                                outbox.insert(e.event_id.clone(), e.clone());
                                ok = match send(Envelope::Event(e)) { Ok(f) => framed.send(f).await.is_ok(), Err(_) => false };
                            }
                        }
                        _ => {}
                    }
                }
                Some((c, out)) = done_rx.recv() => {
                    let e = event_for(&id, &c, out);
                    outbox.insert(e.event_id.clone(), e.clone());
                    ok = match send(Envelope::Event(e)) { Ok(f) => framed.send(f).await.is_ok(), Err(_) => false };
                }
            }
        }
        stats.connected.fetch_sub(1, Relaxed);
        next = dial.on(DialEvent::Lost, jitter.unit());
    }
}
