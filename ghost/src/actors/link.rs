//! `MirageLink`: dials Mirage (addresses in order), registers advertising `session.command`,
//! sends heartbeats and events, takes commands and acks, notices a dead Mirage, and
//! reconnects with exponential backoff and jitter. The decisions (which address, how long to
//! wait, when to give up, when a silent Mirage is dead) are the sans-I/O machines in
//! `shared::session::{dial, heartbeat}`; this actor owns the sockets and the timers.
//!
//! Each session has a generation number; everything that arrives from an older session is
//! ignored. Reads come through `ctx.add_stream`; writes go to a task that owns the write half
//! through a bounded channel sized above the outbox pipeline, so events never block the actor.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use bytes::BytesMut;
use futures::StreamExt;
use shared::envelope::{AckStatus, Command, Envelope, ErrorEnvelope};
use shared::error::WireError;
use shared::handshake::{self, Registration, RegistrationAck};
use shared::session::dial::{DialAction, DialConfig, DialEvent, Dialer, GiveUp};
use shared::session::heartbeat::{self, Liveness, Tick};
use shared::session::{Backoff, Jitter, Timeouts};
use shared::wire::{Frame, FrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::actors::dispatcher::{Dispatcher, Run, Source};
use crate::actors::outbox::Outbox;
use crate::actors::protocol::{Acked, Link, SendEvents};
use crate::config::Policy;

pub use shared::session::heartbeat::HEARTBEAT_INTENT;

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub ghost_id: String,
    pub addresses: Vec<String>,
    pub registration: Registration,
    pub timeouts: Timeouts,
    pub backoff: Backoff,
    pub policy: Policy,
    pub max_connect_attempts: u32,
    pub max_in_flight: usize,
    /// TLS connector (fleet CA pinned, client identity) and the server name per address.
    pub tls: Option<crate::tls::Connector>,
    /// Re-reads the TLS files before each dial (certificate rotation).
    pub tls_reload: Option<crate::tls::Reloading>,
    pub server_names: Vec<String>,
    /// HMAC key (key_id, secret): sign every frame; with `auth_required`, verify Mirage's.
    pub auth: Option<(String, Vec<u8>)>,
    pub auth_required: bool,
}

struct Session {
    tx: mpsc::Sender<Frame>,
    stream: SpawnHandle,
    liveness: Liveness,
    next_msg_id: u64,
    mirage: String,
    session_id: Option<String>,
}

pub struct MirageLink {
    cfg: LinkConfig,
    dispatcher: MeteredAddr<Dispatcher>,
    outbox: MeteredAddr<Outbox>,
    me: Option<MeteredAddr<MirageLink>>,
    session: Option<Session>,
    gen: u64,
    dial: Dialer,
    jitter: Jitter,
    hb_seq: u64,
    pub sessions: u64,
    pub last_error: String,
}

enum ConnectError {
    Failed(String),
    Rejected(RegistrationAck),
}

type Reader = Box<dyn tokio::io::AsyncRead + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Unpin>;
type Connected = (Reader, Writer, BytesMut, RegistrationAck);

/// What the reader stream yields, tagged with the session generation.
pub enum LinkIn {
    Frame(u64, Result<Frame, WireError>),
    End(u64),
}

impl Message for LinkIn {
    type Result = ();
}

impl MirageLink {
    pub fn new(
        cfg: LinkConfig,
        dispatcher: MeteredAddr<Dispatcher>,
        outbox: MeteredAddr<Outbox>,
    ) -> MirageLink {
        let dial = Dialer::new(DialConfig {
            addresses: cfg.addresses.len(),
            backoff: cfg.backoff.clone(),
            required: cfg.policy == Policy::Required,
            max_attempts: cfg.max_connect_attempts,
        });
        MirageLink {
            cfg,
            dispatcher,
            outbox,
            me: None,
            session: None,
            gen: 0,
            dial,
            jitter: Jitter::from_entropy(),
            hb_seq: 0,
            sessions: 0,
            last_error: String::new(),
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.gen += 1;
        let gen = self.gen;
        let idx = self.dial.address();
        let Some(addr) = self.cfg.addresses.get(idx).cloned() else {
            return;
        };
        let t = self.cfg.timeouts.clone();
        let line = handshake::registration_line(&self.cfg.registration);
        if let Some(c) = self.cfg.tls_reload.as_mut().and_then(|r| r.refresh()) {
            self.cfg.tls = Some(c);
        }
        let tls = self.cfg.tls.clone();
        let server_name = self.cfg.server_names.get(idx).cloned().unwrap_or_default();
        let fut = async move {
            let line = line.map_err(|e| ConnectError::Failed(e.to_string()))?;
            let stream = tokio::time::timeout(t.connect(), TcpStream::connect(&addr))
                .await
                .map_err(|_| ConnectError::Failed(format!("connect to {addr} timed out")))?
                .map_err(|e| ConnectError::Failed(format!("connect to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let (mut r, mut w): (Reader, Writer) = match tls {
                None => {
                    let (r, w) = stream.into_split();
                    (Box::new(r), Box::new(w))
                }
                Some(c) => {
                    let s = tokio::time::timeout(t.handshake(), c.connect(&server_name, stream))
                        .await
                        .map_err(|_| {
                            ConnectError::Failed(format!("TLS handshake with {addr} timed out"))
                        })?
                        .map_err(|e| {
                            ConnectError::Failed(format!(
                                "TLS handshake with {addr} ({server_name}): {e}"
                            ))
                        })?;
                    let (r, w) = tokio::io::split(s);
                    (Box::new(r), Box::new(w))
                }
            };
            let mut buf = BytesMut::with_capacity(1024);
            let ack = tokio::time::timeout(t.handshake(), async {
                w.write_all(&line).await?;
                let l = handshake::read_line(&mut r, &mut buf, handshake::MAX_LINE).await?;
                handshake::parse_registration_ack(&l)
            })
            .await
            .map_err(|_| ConnectError::Failed(format!("handshake with {addr} timed out")))?
            .map_err(|e| ConnectError::Failed(format!("handshake with {addr}: {e}")))?;
            if !ack.accepted() {
                return Err(ConnectError::Rejected(ack));
            }
            Ok::<Connected, ConnectError>((r, w, buf, ack))
        };
        let addr_for_log = addr_for_log_of(&self.cfg.addresses, idx);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if gen != act.gen {
                return;
            }
            match res {
                Ok(c) => act.established(c, addr_for_log, ctx),
                Err(ConnectError::Rejected(ack)) => {
                    act.last_error = format!("registration rejected: code {} {}", ack.code, ack.message);
                    if ack.message.starts_with(handshake::REJECT_ID_CONFLICT) {
                        // Another live process holds our ghost_id: redialling soon cannot help.
                        tracing::error!(component = "ghost.link", peer = %addr_for_log, ghost_id = %act.cfg.ghost_id, code = ack.code, reason = %ack.message, "another Ghost process holds this ghost_id at Mirage; backing off to the longest delay");
                    } else {
                        tracing::error!(component = "ghost.link", peer = %addr_for_log, code = ack.code, reason = %ack.message, "Mirage rejected the registration");
                    }
                    // Retrying a rejection quickly cannot help: the dialer waits the longest delay.
                    match act.dial.on(DialEvent::Rejected, act.jitter.unit()) {
                        DialAction::GiveUp(_) => fatal(&act.last_error),
                        a => act.schedule_reconnect(a, ctx),
                    }
                }
                Err(ConnectError::Failed(e)) => {
                    act.last_error = e.clone();
                    match act.dial.on(DialEvent::Failed, act.jitter.unit()) {
                        DialAction::GiveUp(GiveUp::Unreachable { attempts }) => {
                            fatal(&format!("no Mirage after {attempts} attempts: {e}"))
                        }
                        a => {
                            tracing::warn!(component = "ghost.link", peer = %addr_for_log, attempt = act.dial.attempt(), error = %e, "Mirage unreachable");
                            act.schedule_reconnect(a, ctx);
                        }
                    }
                }
            }
        }));
    }

    fn schedule_reconnect(&mut self, action: DialAction, ctx: &mut Context<Self>) {
        let DialAction::Dial { delay, .. } = action else {
            return;
        };
        tracing::info!(
            component = "ghost.link",
            delay_ms = delay.as_millis() as u64,
            attempt = self.dial.attempt(),
            "reconnecting"
        );
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn established(&mut self, c: Connected, mirage: String, ctx: &mut Context<Self>) {
        let (r, w, leftover, ack) = c;
        let gen = self.gen;
        let mut framed = FramedRead::with_capacity(r, FrameCodec::default(), 256);
        framed.read_buffer_mut().extend_from_slice(&leftover);
        let stream = framed
            .map(move |item| LinkIn::Frame(gen, item))
            .chain(futures::stream::once(async move { LinkIn::End(gen) }));
        let handle = ctx.add_stream(stream);

        let (tx, rx) = mpsc::channel::<Frame>(self.cfg.max_in_flight * 2 + 64);
        let me = MeteredAddr::new(ctx.address(), "ghost.link");
        shared::session::spawn_frame_writer(
            w,
            FrameCodec::default(),
            rx,
            Duration::from_millis(self.cfg.timeouts.write_ms),
            move |e| {
                me.do_send(WriterFailed {
                    gen,
                    error: e.to_string(),
                })
            },
        );

        self.sessions += 1;
        self.dial.on(DialEvent::Established, 0.0);
        tracing::info!(component = "ghost.link", peer = %mirage, session_id = ack.session_id.as_deref().unwrap_or(""), "registered with Mirage");
        self.session = Some(Session {
            tx,
            stream: handle,
            liveness: Liveness::new(Instant::now(), self.cfg.timeouts.dead_after()),
            next_msg_id: 1,
            mirage,
            session_id: ack.session_id,
        });
        if let Some(me) = &self.me {
            self.outbox.do_send(Link::Up(me.recipient()));
        }
        self.heartbeat();
    }

    fn send_frame(&mut self, env: &Envelope) -> bool {
        let Some(s) = &mut self.session else {
            return false;
        };
        let id = s.next_msg_id;
        s.next_msg_id += 1;
        match env.to_frame(id) {
            Ok(mut f) => {
                if let Some((kid, key)) = &self.cfg.auth {
                    if let Err(e) = shared::wire::auth::sign(&mut f, kid, key) {
                        tracing::error!(component = "ghost.link", error = %e, "cannot sign frame");
                        return false;
                    }
                }
                s.tx.try_send(f).is_ok()
            }
            Err(e) => {
                tracing::error!(component = "ghost.link", error = %e, "cannot encode frame");
                false
            }
        }
    }

    fn heartbeat(&mut self) {
        self.hb_seq += 1;
        let ev = heartbeat::heartbeat_event(&self.cfg.ghost_id, self.hb_seq, shared::now_ms());
        self.send_frame(&Envelope::Event(ev));
    }

    fn teardown(&mut self, reason: &str, ctx: &mut Context<Self>) {
        let Some(s) = self.session.take() else { return };
        ctx.cancel_future(s.stream);
        drop(s.tx);
        self.last_error = reason.to_owned();
        tracing::warn!(component = "ghost.link", peer = %s.mirage, reason, "session lost");
        self.outbox.do_send(Link::Down);
        self.gen += 1;
        let a = self.dial.on(DialEvent::Lost, self.jitter.unit());
        self.schedule_reconnect(a, ctx);
    }

    fn error_frame(&mut self, e: &WireError, ref_id: Option<u64>) {
        let env = Envelope::Error(ErrorEnvelope {
            error_code: e.code(),
            error_reason: e.to_string(),
            ref_message_id: ref_id,
            timestamp_ms: Some(shared::now_ms()),
            ..Default::default()
        });
        self.send_frame(&env);
    }
}

fn addr_for_log_of(addresses: &[String], idx: usize) -> String {
    addresses.get(idx).cloned().unwrap_or_default()
}

fn fatal(reason: &str) {
    tracing::error!(
        component = "ghost.link",
        reason,
        "policy is required and Mirage is not available; exiting"
    );
    eprintln!("ghost: {reason}");
    System::current().stop_with_code(3);
}

impl Actor for MirageLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("ghost.link").instance_started();
        self.me = Some(MeteredAddr::new(ctx.address(), "ghost.link"));
        let hb = self.cfg.timeouts.heartbeat();
        ctx.run_interval(hb, move |act, ctx| {
            let Some(s) = &act.session else { return };
            match s.liveness.on_tick(Instant::now()) {
                Tick::Dead { silent } => {
                    let why = format!("no frame from Mirage for {} ms", silent.as_millis());
                    act.teardown(&why, ctx);
                }
                Tick::Heartbeat => act.heartbeat(),
            }
        });
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("ghost.link").instance_stopped();
    }
}

impl StreamHandler<LinkIn> for MirageLink {
    fn handle(&mut self, item: LinkIn, ctx: &mut Context<Self>) {
        let (gen, res) = match item {
            LinkIn::End(gen) => {
                if gen == self.gen {
                    self.teardown("Mirage closed the session", ctx);
                }
                return;
            }
            LinkIn::Frame(gen, res) => (gen, res),
        };
        if gen != self.gen {
            return;
        }
        let frame = match res {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(component = "ghost.link", direction = "in", code = e.code(), stage = %e.stage(), error = %e, "framing error; closing the session");
                self.error_frame(&e, None);
                self.teardown(&e.to_string(), ctx);
                return;
            }
        };
        if self.cfg.auth_required {
            let key = self.cfg.auth.clone();
            let ok = shared::wire::auth::verify(&frame, |id| {
                key.as_ref()
                    .filter(|(kid, _)| kid == id)
                    .map(|(_, k)| k.clone())
            });
            if let Err(e) = ok {
                tracing::error!(component = "ghost.link", direction = "in", message_id = frame.message_id, code = e.code(), error = %e, "frame without a valid auth block; closing");
                self.error_frame(&e, Some(frame.message_id));
                self.teardown(&e.to_string(), ctx);
                return;
            }
        }
        if let Some(s) = &mut self.session {
            s.liveness.on_frame(Instant::now());
        }
        match Envelope::from_frame(&frame) {
            Ok(Envelope::EventAck(a)) => {
                if heartbeat::is_heartbeat_ack(&a.event_id) {
                    return; // heartbeat: liveness only
                }
                self.outbox.do_send(Acked {
                    accepted: a.ack_status == AckStatus::Accepted,
                    reason: format!("ack_status {} ack_code {}", a.ack_status, a.ack_code),
                    event_id: a.event_id,
                });
            }
            Ok(Envelope::Command(c)) => {
                self.dispatch(c);
            }
            Ok(Envelope::Error(e)) => {
                tracing::warn!(component = "ghost.link", direction = "in", message_id = frame.message_id, code = e.error_code, reason = %e.error_reason, "error frame from Mirage");
            }
            Ok(other) => {
                let e = WireError::BadValue {
                    field_id: 0,
                    reason: format!(
                        "message type {} is not accepted by a Ghost",
                        other.message_type()
                    ),
                };
                tracing::warn!(
                    component = "ghost.link",
                    direction = "in",
                    message_id = frame.message_id,
                    message_type = frame.message_type,
                    "unexpected message type"
                );
                self.error_frame(&e, Some(frame.message_id));
            }
            Err(e) => {
                tracing::warn!(component = "ghost.link", direction = "in", message_id = frame.message_id, message_type = frame.message_type, code = e.code(), error = %e, "invalid frame");
                self.error_frame(&e, Some(frame.message_id));
                if e.breaks_stream() {
                    self.teardown(&e.to_string(), ctx);
                }
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // Sessions end through `LinkIn::End`; the actor outlives them.
    }
}

impl MirageLink {
    fn dispatch(&self, cmd: Command) {
        self.dispatcher.do_send(Run {
            cmd,
            source: Source::Session,
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct WriterFailed {
    gen: u64,
    error: String,
}

impl Handler<WriterFailed> for MirageLink {
    type Result = ();
    fn handle(&mut self, m: WriterFailed, ctx: &mut Context<Self>) {
        if m.gen == self.gen {
            self.teardown(&format!("write failed: {}", m.error), ctx);
        }
    }
}

impl Handler<SendEvents> for MirageLink {
    type Result = ();
    fn handle(&mut self, m: SendEvents, _: &mut Context<Self>) {
        let Some(s) = &mut self.session else { return };
        for t in m.0 {
            let mut f = Frame::new(s.next_msg_id, shared::envelope::mt::EVENT, 0, t.payload);
            s.next_msg_id += 1;
            if let Some((kid, key)) = &self.cfg.auth {
                if let Err(e) = shared::wire::auth::sign(&mut f, kid, key) {
                    tracing::error!(component = "ghost.link", error = %e, "cannot sign frame");
                    continue;
                }
            }
            if s.tx.try_send(f).is_err() {
                // Left in flight; the outbox sends it again when its ack is overdue.
                tracing::warn!(component = "ghost.link", event_id = %t.event_id, "write queue full");
            }
        }
    }
}

actorkit::metered!(MirageLink, SendEvents);
actorkit::metered!(MirageLink, WriterFailed);
actorkit::metered_result!(MirageLink, Status);

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkStatus {
    pub connected: bool,
    pub mirage: String,
    pub session_id: String,
    pub sessions: u64,
    pub last_error: String,
}

#[derive(Message)]
#[rtype(result = "LinkStatus")]
pub struct Status;

impl Handler<Status> for MirageLink {
    type Result = MessageResult<Status>;
    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        MessageResult(LinkStatus {
            connected: self.session.is_some(),
            mirage: self
                .session
                .as_ref()
                .map(|s| s.mirage.clone())
                .unwrap_or_default(),
            session_id: self
                .session
                .as_ref()
                .and_then(|s| s.session_id.clone())
                .unwrap_or_default(),
            sessions: self.sessions,
            last_error: self.last_error.clone(),
        })
    }
}
