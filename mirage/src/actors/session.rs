//! `GhostSession`: one per connected Ghost, on a session Arbiter. Reads the registration
//! line (bounded, with the handshake deadline), applies the identity rule, registers with the
//! Supervisor, then carries frames: events in (acked after the plan persisted them, the
//! stored ack for duplicates), heartbeats acked as liveness only, commands out. Closes on
//! framing errors, on silence past `dead_after`, or when replaced.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use bytes::BytesMut;
use shared::envelope::{AckStatus, Envelope, ErrorEnvelope, EventAck};
use shared::error::{code, WireError};
use shared::handshake::{self, Registration, RegistrationAck, CAP_SESSION_COMMAND};
use shared::session::heartbeat::is_heartbeat;
use shared::session::identity;
use shared::wire::tlv::id as tlv_id;
use shared::wire::{Frame, FrameCodec, Limits};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

type Reader = Box<dyn AsyncRead + Unpin>;
type Writer = Box<dyn AsyncWrite + Unpin>;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use super::protocol::{
    ClockSkew, Close, Heartbeats, IngestBatch, Register, SendCommand, SessionClosed, SessionHandle,
    SessionVerified, SupervisorForSession,
};
use crate::config::{Limits as MirageLimits, MirageConfig};
use crate::metrics as m;

pub struct GhostSession {
    cfg: Arc<MirageConfig>,
    supervisor: SupervisorForSession,
    peer: String,
    socket: Option<TcpStream>,
    ghost: String,
    session_id: String,
    tx: Option<mpsc::Sender<Frame>>,
    last_rx: Instant,
    next_msg_id: u64,
    open: Arc<std::sync::atomic::AtomicUsize>,
    tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    verified: bool,
    /// Events read but not yet handed to the Supervisor: everything decoded from one read
    /// goes in one message (bounded by MAX_BATCH).
    batch: Vec<(u64, shared::envelope::Event)>,
    /// The Ghost declared `session.command` (ours): it decodes `error` frames. An edgectl
    /// Ghost does not, so it is only ever sent `event.ack` (PROTOCOL.md §2).
    ext_frames: bool,
    /// Heartbeats acked since the Supervisor was last told, and when the last one came.
    heartbeats: u64,
    last_heartbeat_ms: u64,
    /// A flush is scheduled; the batch's length when it last looked (see `flush_soon`).
    batch_seen: Option<usize>,
    /// The Ghost's clock against ours, from its heartbeats' timestamps.
    skew: crate::skew::SkewEstimator,
    /// The serial of the client certificate this session was admitted with: a revocation
    /// listed after the handshake closes the open session too, not only the next one.
    cert_serial: Option<String>,
}

/// Events per Supervisor message.
const MAX_BATCH: usize = 256;

impl GhostSession {
    pub fn new(
        socket: TcpStream,
        peer: String,
        cfg: Arc<MirageConfig>,
        supervisor: impl Into<SupervisorForSession>,
        open: Arc<std::sync::atomic::AtomicUsize>,
        tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    ) -> GhostSession {
        GhostSession {
            cfg,
            supervisor: supervisor.into(),
            peer,
            socket: Some(socket),
            ghost: String::new(),
            session_id: String::new(),
            tx: None,
            last_rx: Instant::now(),
            next_msg_id: 1,
            open,
            tls,
            verified: false,
            batch: Vec::new(),
            ext_frames: false,
            heartbeats: 0,
            last_heartbeat_ms: 0,
            batch_seen: None,
            skew: Default::default(),
            cert_serial: None,
        }
    }

    /// This Ghost's HMAC key, when one is configured.
    fn key(&self) -> Option<Vec<u8>> {
        self.cfg
            .auth
            .keys
            .get(&self.ghost)
            .map(|k| k.as_bytes().to_vec())
    }

    fn send_env(&mut self, env: &Envelope, message_id: u64) {
        let key = self.key();
        let Some(tx) = &self.tx else { return };
        match env.to_frame(message_id) {
            Ok(mut f) => {
                if let Some(k) = key {
                    if let Err(e) = shared::wire::auth::sign(&mut f, &self.ghost, &k) {
                        tracing::error!(component = "mirage.session", ghost_id = %self.ghost, error = %e, "cannot sign frame");
                        return;
                    }
                }
                if tx.try_send(f).is_err() {
                    tracing::warn!(component = "mirage.session", ghost_id = %self.ghost, "write queue full; frame dropped");
                }
            }
            Err(e) => {
                tracing::error!(component = "mirage.session", ghost_id = %self.ghost, error = %e, "cannot encode frame")
            }
        }
    }

    fn error_frame(&mut self, e: &WireError, ref_id: Option<u64>) {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        self.send_env(
            &Envelope::Error(ErrorEnvelope {
                error_code: e.code(),
                error_reason: e.to_string(),
                ref_message_id: ref_id,
                timestamp_ms: Some(shared::now_ms()),
                ..Default::default()
            }),
            id,
        );
    }

    /// Answers a frame this session refuses. A Ghost of ours gets an `error` frame; an
    /// edgectl Ghost cannot decode one (it would re-send the event until its ack timeout and
    /// then re-dial), so a refused event gets a rejected `event.ack` instead, and a frame
    /// that is not a readable event gets no answer (the session closes when the stream is
    /// broken).
    fn refuse(&mut self, e: &WireError, frame: Option<&Frame>) {
        if self.ext_frames {
            self.error_frame(e, frame.map(|f| f.message_id));
            return;
        }
        let Some(f) = frame else { return };
        match refused_event_ack(f, &self.ghost, e) {
            Some(a) => {
                tracing::info!(component = "mirage.session", ghost_id = %self.ghost, message_id = f.message_id, event_id = %a.event_id, command_id = %a.command_id, code = a.ack_code, "event refused; answered with a rejected event.ack (the ghost takes no error frames)");
                self.send_env(&Envelope::EventAck(a), f.message_id);
            }
            None => {
                tracing::debug!(component = "mirage.session", ghost_id = %self.ghost, message_id = f.message_id, message_type = f.message_type, "refused frame has no event_id and command_id; no answer an edgectl ghost can read")
            }
        }
    }

    /// Tells the Supervisor about the heartbeats acked since last time (one message per
    /// tick, not one per heartbeat).
    fn report_heartbeats(&mut self) {
        if self.heartbeats == 0 || self.ghost.is_empty() {
            return;
        }
        self.supervisor.heartbeats.do_send(Heartbeats {
            ghost_id: self.ghost.clone(),
            count: std::mem::take(&mut self.heartbeats),
            last_ms: self.last_heartbeat_ms,
        });
    }

    /// Drop the writer (it flushes and closes) and stop.
    fn close(&mut self, reason: &str, ctx: &mut Context<Self>) {
        if !self.ghost.is_empty() {
            tracing::info!(component = "mirage.session", peer = %self.peer, ghost_id = %self.ghost, reason, "session closing");
        }
        self.tx = None;
        ctx.stop();
    }

    fn reject(
        &self,
        mut w: Writer,
        code: u32,
        message: String,
        ghost_id: String,
    ) -> impl std::future::Future<Output = ()> {
        let ack = RegistrationAck {
            status: "rejected".into(),
            code,
            message,
            ghost_id,
            timestamp_ms: shared::now_ms(),
            ..Default::default()
        };
        let t = Duration::from_millis(self.cfg.timeouts.write_ms);
        async move {
            if let Ok(line) = handshake::registration_ack_line(&ack) {
                let _ = tokio::time::timeout(t, async {
                    let _ = w.write_all(&line).await;
                    let _ = w.shutdown().await;
                })
                .await;
            }
        }
    }

    fn start_frames(&mut self, r: Reader, w: Writer, leftover: BytesMut, ctx: &mut Context<Self>) {
        let limits = Limits {
            max_payload: self.cfg.limits.max_payload,
            ..Limits::default()
        };
        let mut framed = FramedRead::with_capacity(r, FrameCodec::new(limits), 256);
        framed.read_buffer_mut().extend_from_slice(&leftover);
        ctx.add_stream(framed);
        let (tx, rx) = mpsc::channel::<Frame>(self.cfg.limits.session_queue.max(16));
        let me = MeteredAddr::new(ctx.address(), "mirage.session");
        shared::session::spawn_frame_writer(
            w,
            FrameCodec::new(limits),
            rx,
            Duration::from_millis(self.cfg.timeouts.write_ms),
            move |e| {
                me.do_send(Close {
                    reason: format!("write failed: {e}"),
                })
            },
        );
        self.tx = Some(tx);
        self.last_rx = Instant::now();
        let hb = Duration::from_millis(
            self.cfg
                .timeouts
                .heartbeat_ms
                .min(self.cfg.timeouts.dead_after_ms / 3)
                .max(100),
        );
        let dead = Duration::from_millis(self.cfg.timeouts.dead_after_ms);
        let revoked = (!self.cfg.tls.revoked_file.is_empty())
            .then(|| crate::tls::revoked_list(Path::new(&self.cfg.tls.revoked_file)));
        ctx.run_interval(hb, move |act, ctx| {
            act.report_heartbeats();
            if let (Some(list), Some(serial)) = (&revoked, &act.cert_serial) {
                // Only a listed serial closes an open session; an unreadable list refuses new
                // handshakes (fails closed there) but does not drop the whole fleet at once.
                if let Ok(true) = list.listed(serial) {
                    let why = format!(
                        "client certificate serial {serial} was revoked while the session was open"
                    );
                    act.close(&why, ctx);
                    return;
                }
            }
            if act.last_rx.elapsed() > dead {
                let why = format!(
                    "nothing from the ghost for {} ms",
                    act.last_rx.elapsed().as_millis()
                );
                act.close(&why, ctx);
            }
        });
    }
}

// One value per handshake, moved once: its size does not matter, a Box would only add noise.
#[allow(clippy::large_enum_variant)]
enum Handshake {
    /// Admitted: the streams, what was read past the line, the registration, the client
    /// certificate's serial (with TLS client certificates).
    Ok(Reader, Writer, BytesMut, Registration, Option<String>),
    Reject(Writer, u32, String, String),
    /// The TLS handshake failed or the certificate is unusable: no ack line is possible.
    TlsRefused(String),
    Gone(String),
}

/// TLS (when configured) and the identity the client certificate proves.
async fn secure(
    socket: TcpStream,
    tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    deadline: Duration,
) -> Result<(Reader, Writer, Option<(String, String)>), Handshake> {
    let Some(acc) = tls else {
        let (r, w) = socket.into_split();
        return Ok((Box::new(r), Box::new(w), None));
    };
    let ssl =
        openssl::ssl::Ssl::new(acc.context()).map_err(|e| Handshake::TlsRefused(e.to_string()))?;
    let mut s = tokio_openssl::SslStream::new(ssl, socket)
        .map_err(|e| Handshake::TlsRefused(e.to_string()))?;
    match tokio::time::timeout(deadline, std::pin::Pin::new(&mut s).accept()).await {
        Err(_) => return Err(Handshake::TlsRefused("TLS handshake timed out".into())),
        Ok(Err(e)) => {
            let verify = s.ssl().verify_result();
            return Err(Handshake::TlsRefused(format!(
                "TLS handshake failed: {e} (verify: {})",
                verify.error_string()
            )));
        }
        Ok(Ok(())) => {}
    }
    let id = match s.ssl().peer_certificate() {
        Some(c) => Some((
            crate::tls::identity(&c).map_err(Handshake::TlsRefused)?,
            crate::tls::serial_hex(&c),
        )),
        None => None,
    };
    let (r, w) = tokio::io::split(s);
    Ok((Box::new(r), Box::new(w), id))
}

impl Actor for GhostSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.session").instance_started();
        let Some(socket) = self.socket.take() else {
            ctx.stop();
            return;
        };
        let deadline = Duration::from_millis(self.cfg.timeouts.handshake_ms);
        let tls = self.tls.clone();
        // With auth required, only Ghosts that have a key may register.
        let keyed: Option<Vec<String>> = self
            .cfg
            .auth
            .required
            .then(|| self.cfg.auth.keys.keys().cloned().collect());
        let limits = self.cfg.limits.clone();
        let read = async move {
            let (mut r, w, cert) = match secure(socket, tls, deadline).await {
                Ok(x) => x,
                Err(h) => return h,
            };
            let (cert_id, cert_serial) = cert.unzip();
            let mut buf = BytesMut::with_capacity(1024);
            let line = match tokio::time::timeout(
                deadline,
                handshake::read_line(&mut r, &mut buf, handshake::MAX_LINE),
            )
            .await
            {
                Err(_) => {
                    return Handshake::Reject(w, code::SEMANTIC, "invalid registration payload: no registration line within the handshake deadline".into(), "unknown".into())
                }
                Ok(Err(WireError::LineEof)) => return Handshake::Gone("closed before registering".into()),
                Ok(Err(e)) => return Handshake::Reject(w, code::SEMANTIC, format!("invalid registration payload: {e}"), "unknown".into()),
                Ok(Ok(l)) => l,
            };
            match handshake::parse_registration(&line) {
                Err(e) => Handshake::Reject(
                    w,
                    code::SEMANTIC,
                    format!("invalid registration payload: {e}"),
                    "unknown".into(),
                ),
                Ok(reg) if check_size(&reg, line.len(), &limits).is_err() => {
                    m::REGISTRATIONS_OVERSIZE.inc();
                    let why = check_size(&reg, line.len(), &limits)
                        .err()
                        .unwrap_or_default();
                    Handshake::Reject(
                        w,
                        code::SEMANTIC,
                        format!("invalid registration payload: {why}"),
                        reg.ghost_id,
                    )
                }
                // Auth keys and identity binding: the pure rule in shared::session::identity.
                Ok(reg) => match identity::admit(&reg, keyed.as_deref(), cert_id.as_deref()) {
                    Err(no) => Handshake::Reject(w, no.code, no.message, reg.ghost_id),
                    Ok(()) => Handshake::Ok(r, w, buf, reg, cert_serial),
                },
            }
        };
        ctx.wait(read.into_actor(self).then(|h, act, ctx| {
            let me = MeteredAddr::new(ctx.address(), "mirage.session");
            let sup = act.supervisor.register.clone();
            let peer = act.peer.clone();
            async move {
                match h {
                    Handshake::Ok(r, w, buf, reg, serial) => {
                        let res = sup
                            .send(Register {
                                reg: reg.clone(),
                                session: SessionHandle {
                                    commands: me.recipient(),
                                    close: me.recipient(),
                                },
                                peer,
                            })
                            .await;
                        match res {
                            Ok(Ok(ack)) => Ok((r, w, buf, reg, ack, serial)),
                            Ok(Err(rej)) => Err(Handshake::Reject(w, rej.code, rej.message, rej.ghost_id)),
                            Err(e) => Err(Handshake::Reject(w, code::INTERNAL, format!("mirage unavailable: {e}"), reg.ghost_id)),
                        }
                    }
                    other => Err(other),
                }
            }
            .into_actor(act)
        }).then(|res, act, _| {
            let wt = Duration::from_millis(act.cfg.timeouts.write_ms);
            async move {
                match res {
                    Ok((r, mut w, buf, reg, ack, serial)) => {
                        let line = handshake::registration_ack_line(&ack).map_err(|e| e.to_string());
                        let written = match line {
                            Ok(line) => tokio::time::timeout(wt, w.write_all(&line)).await.map_err(|_| "ack write timed out".to_string()).and_then(|r| r.map_err(|e| e.to_string())),
                            Err(e) => Err(e),
                        };
                        match written {
                            Ok(()) => Ok((r, w, buf, reg, ack, serial)),
                            Err(e) => Err(Handshake::Gone(e)),
                        }
                    }
                    Err(h) => Err(h),
                }
            }
            .into_actor(act)
        }).map(|res, act, ctx| match res {
            Ok((r, w, buf, reg, ack, serial)) => {
                act.ghost = reg.ghost_id.clone();
                act.cert_serial = serial;
                act.ext_frames = reg.has_capability(CAP_SESSION_COMMAND);
                act.session_id = ack.session_id.clone().unwrap_or_default();
                tracing::info!(component = "mirage.session", peer = %act.peer, ghost_id = %act.ghost, session_id = %act.session_id, seeds = reg.seeds().len(), "ghost registered");
                act.start_frames(r, w, buf, ctx);
            }
            Err(Handshake::Reject(w, code, message, ghost)) => {
                m::SESSIONS_REJECTED.inc();
                if message.starts_with(handshake::REJECT_ID_CONFLICT) {
                    // The Supervisor logs a conflict once; a claimant retries every few seconds.
                    tracing::debug!(component = "mirage.session", peer = %act.peer, ghost_id = %ghost, code, reason = %message, "registration rejected");
                } else {
                    tracing::warn!(component = "mirage.session", peer = %act.peer, ghost_id = %ghost, code, reason = %message, "registration rejected");
                }
                // Detached: the rejection line is written and the socket closed after we stop.
                actix_rt::spawn(act.reject(w, code, message, ghost));
                ctx.stop();
            }
            Err(Handshake::TlsRefused(why)) => {
                m::SESSIONS_REJECTED.inc();
                tracing::warn!(component = "mirage.session", peer = %act.peer, code = code::TRANSPORT, reason = %why, "TLS handshake refused");
                ctx.stop();
            }
            Err(Handshake::Gone(why)) | Err(Handshake::Ok(_, _, _, Registration { ghost_id: why, .. }, _)) => {
                m::SESSIONS_REJECTED.inc();
                tracing::info!(component = "mirage.session", peer = %act.peer, reason = %why, "connection ended during the handshake");
                ctx.stop();
            }
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.session").instance_stopped();
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.report_heartbeats();
        if !self.ghost.is_empty() {
            self.supervisor.closed.do_send(SessionClosed {
                ghost_id: self.ghost.clone(),
                session_id: self.session_id.clone(),
                reason: "session ended".into(),
            });
        }
    }
}

/// `[limits] registration_*`: what Mirage keeps per Ghost stays small whatever a peer sends
/// (the 128 KiB line limit alone would let 10,000 ghost_ids hold over a GiB). The reason
/// names the limit to raise.
pub fn check_size(reg: &Registration, line_len: usize, l: &MirageLimits) -> Result<(), String> {
    if line_len > l.registration_bytes {
        return Err(format!(
            "registration is {line_len} bytes; limits.registration_bytes is {}",
            l.registration_bytes
        ));
    }
    let seeds = reg.seeds();
    if seeds.len() > l.registration_seeds {
        return Err(format!(
            "seed_list has {} seeds; limits.registration_seeds is {}",
            seeds.len(),
            l.registration_seeds
        ));
    }
    let max = l.registration_description_bytes;
    for (i, s) in seeds.iter().enumerate() {
        let texts = [("name", &s.name), ("description", &s.description)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.len()))
            .chain(s.operations.iter().map(|o| {
                (
                    format!("operation {:?} description", o.name),
                    o.description.len(),
                )
            }));
        for (what, n) in texts {
            if n > max {
                return Err(format!(
                    "seed_list[{i}] ({}) {what} is {n} bytes; limits.registration_description_bytes is {max}",
                    s.id
                ));
            }
        }
    }
    Ok(())
}

/// The rejected `event.ack` for an event frame that was refused, in the shape an edgectl
/// Ghost decodes (fields 4, 2, 200, 700, 701, 6; it ignores ext 801, which says why). `None`
/// when the frame is not an event or its event_id / command_id cannot be read: edgectl
/// requires both non-blank in an ack, and matches the ack to its event by event_id.
pub fn refused_event_ack(frame: &Frame, ghost: &str, e: &WireError) -> Option<EventAck> {
    if frame.message_type != shared::envelope::mt::EVENT {
        return None;
    }
    let fields = shared::wire::tlv::decode(&frame.payload).ok()?;
    let text = |fid| {
        fields
            .get(fid)
            .and_then(|f| f.as_str().ok())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
    };
    Some(EventAck {
        event_id: text(tlv_id::EVENT_ID)?,
        command_id: text(tlv_id::COMMAND_ID)?,
        ghost_id: ghost.to_owned(),
        ack_status: AckStatus::Rejected,
        ack_code: e.code(),
        timestamp_ms: shared::now_ms(),
        extra: vec![shared::wire::tlv::Field::string(
            tlv_id::ERROR_REASON,
            &bounded(e.to_string(), 512),
        )],
    })
}

/// A reason cut to at most `max` bytes (it may quote a peer's value of any length).
fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl GhostSession {
    /// Flushes the batch once the frames already read are handled, without a timer: a
    /// zero-delay `run_later` waits for the next tick of tokio's millisecond timer wheel,
    /// which held one event in flight ~1 ms before its ack. A spawned ready future runs in the
    /// same poll of this actor, after the frame stream; the stream yields every 16 frames, so
    /// the flush waits for a poll in which no frame arrived (the end of the read burst).
    fn flush_soon(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Self, ctx| {
            let n = act.batch.len();
            match act.batch_seen {
                Some(seen) if n > seen => {
                    act.batch_seen = Some(n);
                    act.flush_soon(ctx);
                }
                _ => {
                    act.batch_seen = None;
                    act.flush_events(ctx);
                }
            }
        }));
    }

    /// Hands the buffered events to the Supervisor; acks go out as it answers.
    fn flush_events(&mut self, ctx: &mut Context<Self>) {
        if self.batch.is_empty() {
            return;
        }
        if let Some(seen) = &mut self.batch_seen {
            // A full batch went early; the scheduled flush measures growth from empty.
            *seen = 0;
        }
        let events = std::mem::take(&mut self.batch);
        let n = events.len();
        let sup = self.supervisor.ingest.clone();
        let ingest = IngestBatch {
            ghost_id: self.ghost.clone(),
            events,
        };
        let fut = async move { sup.send(ingest).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| match res {
            Ok(acks) => {
                for (msg_id, a) in acks {
                    if let Some(a) = a {
                        tracing::debug!(target: "hop", hop = "ack.queued", command_id = %a.command_id);
                        act.send_env(&Envelope::EventAck(a), msg_id);
                    }
                }
            }
            Err(e) => {
                tracing::error!(component = "mirage.session", ghost_id = %act.ghost, events = n, error = %e, "supervisor unavailable; events not acked")
            }
        }));
    }
}

impl StreamHandler<Result<Frame, WireError>> for GhostSession {
    fn handle(&mut self, item: Result<Frame, WireError>, ctx: &mut Context<Self>) {
        let frame = match item {
            Ok(f) => f,
            Err(e) => {
                m::FRAME_ERRORS.inc();
                tracing::warn!(component = "mirage.session", peer = %self.peer, ghost_id = %self.ghost, direction = "in", code = e.code(), stage = %e.stage(), error = %e, "framing error; closing");
                self.refuse(&e, None);
                self.close(&e.to_string(), ctx);
                return;
            }
        };
        if self.cfg.auth.required {
            let key = self.key();
            let ghost = self.ghost.clone();
            // The key_id must be this session's ghost_id: one Ghost cannot sign as another.
            let res = shared::wire::auth::verify(&frame, |id| {
                (id == ghost).then(|| key.clone()).flatten()
            });
            if let Err(e) = res {
                m::FRAME_ERRORS.inc();
                tracing::warn!(component = "mirage.session", peer = %self.peer, ghost_id = %self.ghost, message_id = frame.message_id, message_type = frame.message_type, code = e.code(), reason = %e, "frame refused: auth");
                self.refuse(&e, Some(&frame));
                self.close(&e.to_string(), ctx);
                return;
            }
            if !self.verified {
                self.verified = true;
                self.supervisor.verified.do_send(SessionVerified {
                    ghost_id: self.ghost.clone(),
                    session_id: self.session_id.clone(),
                });
            }
        }
        self.last_rx = Instant::now();
        match Envelope::from_frame(&frame) {
            Ok(Envelope::Event(e)) if is_heartbeat(&e) => {
                m::HEARTBEATS.inc();
                self.heartbeats += 1;
                self.last_heartbeat_ms = shared::now_ms();
                if let Some(skew_ms) = e
                    .timestamp_ms
                    .and_then(|t| self.skew.sample(t, shared::now_ms()))
                {
                    if let Some(w) = crate::skew::warning(skew_ms) {
                        tracing::warn!(component = "mirage.session", ghost_id = %self.ghost, skew_ms, warning = %w, "ghost clock skew");
                    }
                    self.supervisor.clock_skew.do_send(ClockSkew {
                        ghost_id: self.ghost.clone(),
                        session_id: self.session_id.clone(),
                        skew_ms,
                    });
                }
                let a = EventAck {
                    event_id: e.event_id,
                    command_id: e.command_id,
                    ghost_id: self.ghost.clone(),
                    ack_status: AckStatus::Accepted,
                    ack_code: 0,
                    timestamp_ms: shared::now_ms(),
                    extra: vec![],
                };
                self.send_env(&Envelope::EventAck(a), frame.message_id);
            }
            Ok(Envelope::Event(e)) => {
                tracing::debug!(target: "hop", hop = "event.read", command_id = %e.command_id);
                self.batch.push((frame.message_id, e));
                if self.batch.len() >= MAX_BATCH {
                    self.flush_events(ctx);
                } else if self.batch_seen.is_none() {
                    self.batch_seen = Some(0);
                    self.flush_soon(ctx);
                }
            }
            Ok(Envelope::Error(e)) => {
                tracing::warn!(component = "mirage.session", ghost_id = %self.ghost, message_id = frame.message_id, code = e.error_code, reason = %e.error_reason, "error frame from ghost");
            }
            Ok(other) => {
                m::FRAME_ERRORS.inc();
                let e = WireError::BadValue {
                    field_id: 0,
                    reason: format!(
                        "message type {} is not accepted from a ghost",
                        other.message_type()
                    ),
                };
                tracing::warn!(component = "mirage.session", ghost_id = %self.ghost, message_id = frame.message_id, message_type = frame.message_type, "unexpected message type");
                self.refuse(&e, Some(&frame));
            }
            Err(e) => {
                m::FRAME_ERRORS.inc();
                tracing::warn!(component = "mirage.session", ghost_id = %self.ghost, message_id = frame.message_id, message_type = frame.message_type, code = e.code(), error = %e, "invalid frame");
                self.refuse(&e, Some(&frame));
                if e.breaks_stream() {
                    self.close(&e.to_string(), ctx);
                }
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.close("ghost closed the connection", ctx);
    }
}

impl Handler<SendCommand> for GhostSession {
    type Result = ();

    fn handle(&mut self, m: SendCommand, _: &mut Context<Self>) {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        let mut cmd = m.0;
        // The time left, measured now on our clock (ext 207): a Ghost whose clock differs
        // from ours still gets the whole budget. deadline_ms stays for edgectl peers.
        cmd.attach_budget(shared::now_ms());
        tracing::debug!(target: "hop", hop = "command.queued", command_id = %cmd.command_id);
        self.send_env(&Envelope::Command(cmd), id);
    }
}

impl Handler<Close> for GhostSession {
    type Result = ();

    fn handle(&mut self, m: Close, ctx: &mut Context<Self>) {
        let reason = m.reason;
        self.close(&reason, ctx);
    }
}

actorkit::metered!(GhostSession, SendCommand);
actorkit::metered!(GhostSession, Close);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use shared::handshake::{OperationInfo, SeedInfo};

    fn reg(seeds: usize, desc: usize) -> Registration {
        Registration {
            ghost_id: "g".into(),
            seed_list: Some(
                (0..seeds)
                    .map(|i| SeedInfo {
                        id: format!("seed.s{i}"),
                        name: "n".into(),
                        description: "d".repeat(desc),
                        operations: vec![OperationInfo {
                            name: "op".into(),
                            description: "o".into(),
                            ..Default::default()
                        }],
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_refused_event_gets_a_rejected_ack_with_its_ids() {
        use shared::wire::tlv::{Field, Fields};
        let frame = |fields: &[(u16, &str)]| {
            let mut p = Fields::new();
            for (fid, v) in fields {
                p.push(Field::string(*fid, v));
            }
            Frame::new(7, shared::envelope::mt::EVENT, 0, p.to_bytes().unwrap())
        };
        let e = WireError::BadValue {
            field_id: tlv_id::OUTCOME,
            reason: "outcome must be one of [success error], got \"skipped\"".into(),
        };
        let f = frame(&[
            (tlv_id::EVENT_ID, "evt.c"),
            (tlv_id::COMMAND_ID, "c"),
            (tlv_id::OUTCOME, "skipped"),
        ]);
        let a = refused_event_ack(&f, "g", &e).unwrap();
        assert_eq!((a.event_id.as_str(), a.command_id.as_str()), ("evt.c", "c"));
        assert_eq!(
            (a.ghost_id.as_str(), a.ack_status),
            ("g", AckStatus::Rejected)
        );
        assert_eq!(a.ack_code, code::SEMANTIC);
        assert!(a.timestamp_ms > 0);
        // It encodes (edgectl's required ack fields are all there) and says why.
        let back = Envelope::EventAck(a).to_frame(7).unwrap();
        let Ok(Envelope::EventAck(b)) = Envelope::from_frame(&back) else {
            panic!("not an ack")
        };
        assert!(b.extra.iter().any(|x| x.id == tlv_id::ERROR_REASON
            && String::from_utf8_lossy(&x.value).contains("skipped")));
        // No event_id or command_id to answer with, or not an event: no ack.
        assert!(refused_event_ack(&frame(&[(tlv_id::COMMAND_ID, "c")]), "g", &e).is_none());
        assert!(refused_event_ack(
            &frame(&[(tlv_id::EVENT_ID, "evt.c"), (tlv_id::COMMAND_ID, " ")]),
            "g",
            &e
        )
        .is_none());
        assert_eq!(bounded("é".repeat(300), 511).len(), 510 + '…'.len_utf8());
        let mut cmd = frame(&[(tlv_id::EVENT_ID, "evt.c"), (tlv_id::COMMAND_ID, "c")]);
        cmd.message_type = shared::envelope::mt::COMMAND;
        assert!(refused_event_ack(&cmd, "g", &e).is_none());
    }

    #[test]
    fn registration_size_limits_name_the_limit() {
        let l = MirageLimits {
            registration_seeds: 2,
            registration_description_bytes: 10,
            registration_bytes: 1000,
            ..MirageLimits::default()
        };
        check_size(&reg(2, 10), 500, &l).unwrap();
        let e = check_size(&reg(2, 10), 1001, &l).unwrap_err();
        assert!(e.contains("limits.registration_bytes is 1000"), "{e}");
        let e = check_size(&reg(3, 1), 100, &l).unwrap_err();
        assert!(e.contains("limits.registration_seeds is 2"), "{e}");
        let e = check_size(&reg(1, 11), 100, &l).unwrap_err();
        assert!(
            e.contains("description is 11 bytes; limits.registration_description_bytes is 10"),
            "{e}"
        );
        let mut r = reg(1, 1);
        r.seed_list.as_mut().unwrap()[0].operations[0].description = "x".repeat(11);
        assert!(check_size(&r, 100, &l)
            .unwrap_err()
            .contains("operation \"op\""));
    }
}
