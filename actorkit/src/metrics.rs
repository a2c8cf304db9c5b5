//! Actor mailbox metrics. actix exposes no queue length, so every message sent through a
//! [`MeteredAddr`] is wrapped in [`Metered`], whose guard keeps a per-actor-kind depth gauge
//! and a per-message-type one (stack-notes §4: ~+115 ns per message). Readable from any
//! thread, so a stuck actor still reports its depth. The raw `Addr` inside a `MeteredAddr` is
//! private: a send that skips the meter must be written as `ctx.address()` inside the actor
//! itself, which is visible in review.

use std::any::TypeId;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, MailboxError, Message, Recipient};
use serde::Serialize;

/// One set of mailbox counters: an actor kind, one instance, or one message type of a kind.
#[derive(Debug, Default)]
pub struct Counters {
    depth: AtomicI64,
    peak: AtomicI64,
    sent: AtomicU64,
    handled: AtomicU64,
    dropped: AtomicU64,
    send_failed: AtomicU64,
    handle_ns_total: AtomicU64,
    handle_ns_max: AtomicU64,
    wait_ns_total: AtomicU64,
    wait_ns_max: AtomicU64,
}

impl Counters {
    fn enqueue(&self) {
        self.sent.fetch_add(1, Relaxed);
        let d = self.depth.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(d, Relaxed);
    }

    fn handled(&self, wait_ns: u64, ns: u64) {
        self.handled.fetch_add(1, Relaxed);
        self.handle_ns_total.fetch_add(ns, Relaxed);
        self.handle_ns_max.fetch_max(ns, Relaxed);
        self.wait_ns_total.fetch_add(wait_ns, Relaxed);
        self.wait_ns_max.fetch_max(wait_ns, Relaxed);
    }

    fn dequeue(&self, handled: bool) {
        self.depth.fetch_sub(1, Relaxed);
        if !handled {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    fn failed(&self) {
        self.send_failed.fetch_add(1, Relaxed);
    }
}

/// Counters for one actor kind (all instances of it share one set), or for one instance
/// whose figures also roll up into its kind (`parent`).
#[derive(Debug)]
pub struct ActorMetrics {
    pub name: String,
    all: Counters,
    instances: AtomicI64,
    parent: Option<Arc<ActorMetrics>>,
    /// Per message type; few types per kind, so a scan under a read lock.
    msgs: RwLock<Vec<(TypeId, &'static str, Arc<Counters>)>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActorSnapshot {
    pub actor: String,
    pub instances: i64,
    pub mailbox_depth: i64,
    pub mailbox_peak: i64,
    pub sent: u64,
    pub handled: u64,
    pub dropped_unhandled: u64,
    pub send_failed: u64,
    pub handle_mean_us: f64,
    pub handle_max_us: f64,
    pub queue_wait_mean_us: f64,
    pub queue_wait_max_us: f64,
    /// Per message type, by name.
    pub messages: Vec<MessageSnapshot>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageSnapshot {
    pub message: String,
    pub depth: i64,
    pub sent: u64,
    pub handled: u64,
    pub dropped_unhandled: u64,
    pub send_failed: u64,
    pub handle_mean_us: f64,
    pub handle_max_us: f64,
    pub queue_wait_mean_us: f64,
    pub queue_wait_max_us: f64,
}

fn mean_us(total_ns: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        total_ns as f64 / n as f64 / 1000.0
    }
}

impl MessageSnapshot {
    fn of(message: &str, c: &Counters) -> MessageSnapshot {
        let handled = c.handled.load(Relaxed);
        MessageSnapshot {
            message: message.to_owned(),
            depth: c.depth.load(Relaxed).max(0),
            sent: c.sent.load(Relaxed),
            handled,
            dropped_unhandled: c.dropped.load(Relaxed),
            send_failed: c.send_failed.load(Relaxed),
            handle_mean_us: mean_us(c.handle_ns_total.load(Relaxed), handled),
            handle_max_us: c.handle_ns_max.load(Relaxed) as f64 / 1000.0,
            queue_wait_mean_us: mean_us(c.wait_ns_total.load(Relaxed), handled),
            queue_wait_max_us: c.wait_ns_max.load(Relaxed) as f64 / 1000.0,
        }
    }
}

/// `a::b::Ingest` → `Ingest`; `a::Metered<b::X>` → `Metered<X>` is not needed: only the
/// inner message type is named.
fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    let head = full.split('<').next().unwrap_or(full);
    match head.rfind("::") {
        Some(i) if !full.contains('<') => &full[i + 2..],
        _ => full,
    }
}

impl ActorMetrics {
    fn new(name: &str, parent: Option<Arc<ActorMetrics>>) -> ActorMetrics {
        ActorMetrics {
            name: name.to_owned(),
            all: Counters::default(),
            instances: AtomicI64::new(0),
            parent,
            msgs: RwLock::new(Vec::new()),
        }
    }

    /// Metrics for one instance of kind `kind`, kept by its owner (not in the registry, so
    /// they go when the instance goes); everything also counts in the kind.
    pub fn instance(kind: &str, name: &str) -> Arc<ActorMetrics> {
        Arc::new(ActorMetrics::new(name, Some(actor(kind))))
    }

    pub fn snapshot(&self) -> ActorSnapshot {
        let c = &self.all;
        let handled = c.handled.load(Relaxed);
        let kind = self.parent.as_deref().unwrap_or(self);
        let mut messages: Vec<MessageSnapshot> = if self.parent.is_some() {
            Vec::new()
        } else {
            kind.msgs
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(_, n, c)| MessageSnapshot::of(n, c))
                .collect()
        };
        messages.sort_by(|a, b| a.message.cmp(&b.message));
        ActorSnapshot {
            actor: self.name.clone(),
            instances: self.instances.load(Relaxed),
            mailbox_depth: c.depth.load(Relaxed).max(0),
            mailbox_peak: c.peak.load(Relaxed),
            sent: c.sent.load(Relaxed),
            handled,
            dropped_unhandled: c.dropped.load(Relaxed),
            send_failed: c.send_failed.load(Relaxed),
            handle_mean_us: mean_us(c.handle_ns_total.load(Relaxed), handled),
            handle_max_us: c.handle_ns_max.load(Relaxed) as f64 / 1000.0,
            queue_wait_mean_us: mean_us(c.wait_ns_total.load(Relaxed), handled),
            queue_wait_max_us: c.wait_ns_max.load(Relaxed) as f64 / 1000.0,
            messages,
        }
    }

    /// The kind's counters for message type `M`, created on first use.
    fn msg<M: 'static>(&self) -> Arc<Counters> {
        let kind = self.parent.as_deref().unwrap_or(self);
        let id = TypeId::of::<M>();
        if let Some((_, _, c)) = kind
            .msgs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(t, _, _)| *t == id)
        {
            return Arc::clone(c);
        }
        let mut w = kind.msgs.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, c)) = w.iter().find(|(t, _, _)| *t == id) {
            return Arc::clone(c);
        }
        let c = Arc::new(Counters::default());
        w.push((id, short_type_name::<M>(), Arc::clone(&c)));
        c
    }

    fn enqueue<M: 'static>(self: &Arc<Self>) -> DepthGuard {
        let msg = self.msg::<M>();
        self.all.enqueue();
        if let Some(p) = &self.parent {
            p.all.enqueue();
        }
        msg.enqueue();
        DepthGuard {
            m: Arc::clone(self),
            msg,
            enqueued: Instant::now(),
            handled: false,
        }
    }

    fn failed(&self, msg: &Counters) {
        self.all.failed();
        if let Some(p) = &self.parent {
            p.all.failed();
        }
        msg.failed();
    }

    /// Call from an actor's `started`/`stopped` to count live instances.
    pub fn instance_started(&self) {
        self.instances.fetch_add(1, Relaxed);
        if let Some(p) = &self.parent {
            p.instance_started();
        }
    }

    pub fn instance_stopped(&self) {
        self.instances.fetch_sub(1, Relaxed);
        if let Some(p) = &self.parent {
            p.instance_stopped();
        }
    }
}

/// Decrements the depth when the message is handled or dropped unhandled.
#[derive(Debug)]
pub struct DepthGuard {
    m: Arc<ActorMetrics>,
    msg: Arc<Counters>,
    enqueued: Instant,
    handled: bool,
}

impl DepthGuard {
    /// `took`: the handling time; the queue wait is what came before it.
    pub fn handled(mut self, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        let wait = self.enqueued.elapsed().saturating_sub(took);
        let wait_ns = wait.as_nanos().min(u64::MAX as u128) as u64;
        self.m.all.handled(wait_ns, ns);
        if let Some(p) = &self.m.parent {
            p.all.handled(wait_ns, ns);
        }
        self.msg.handled(wait_ns, ns);
        self.handled = true;
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        self.m.all.dequeue(self.handled);
        if let Some(p) = &self.m.parent {
            p.all.dequeue(self.handled);
        }
        self.msg.dequeue(self.handled);
    }
}

/// A message on its way through a metered mailbox.
pub struct Metered<M> {
    pub msg: M,
    pub guard: DepthGuard,
    pub enqueued: Instant,
}

impl<M: Message> Message for Metered<M> {
    type Result = M::Result;
}

/// Global registry, one entry per actor kind name.
fn registry() -> &'static Mutex<Vec<Arc<ActorMetrics>>> {
    static R: OnceLock<Mutex<Vec<Arc<ActorMetrics>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// The metrics of actor kind `name`, created on first use.
pub fn actor(name: &str) -> Arc<ActorMetrics> {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = r.iter().find(|m| m.name == name) {
        return Arc::clone(m);
    }
    let m = Arc::new(ActorMetrics::new(name, None));
    r.push(Arc::clone(&m));
    m
}

pub fn snapshot_all() -> Vec<ActorSnapshot> {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<ActorSnapshot> = r.iter().map(|m| m.snapshot()).collect();
    v.sort_by(|a, b| a.actor.cmp(&b.actor));
    v
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Prometheus text exposition of every actor kind's mailbox metrics, and per message type.
pub fn render_prometheus(out: &mut String) {
    let snaps = snapshot_all();
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ActorSnapshot) -> f64,
    );
    let series: [Series; 11] = [
        ("actor_mailbox_depth", "gauge", "Messages queued now", |s| {
            s.mailbox_depth as f64
        }),
        (
            "actor_mailbox_peak",
            "gauge",
            "Highest queue depth seen",
            |s| s.mailbox_peak as f64,
        ),
        (
            "actor_messages_sent_total",
            "counter",
            "Messages sent to the actor",
            |s| s.sent as f64,
        ),
        (
            "actor_messages_handled_total",
            "counter",
            "Messages handled",
            |s| s.handled as f64,
        ),
        (
            "actor_messages_dropped_total",
            "counter",
            "Messages dropped unhandled",
            |s| s.dropped_unhandled as f64,
        ),
        (
            "actor_send_failed_total",
            "counter",
            "Sends refused (mailbox full or closed)",
            |s| s.send_failed as f64,
        ),
        (
            "actor_handle_seconds_mean",
            "gauge",
            "Mean handling time",
            |s| s.handle_mean_us / 1e6,
        ),
        (
            "actor_handle_seconds_max",
            "gauge",
            "Longest handling time",
            |s| s.handle_max_us / 1e6,
        ),
        (
            "actor_queue_wait_seconds_mean",
            "gauge",
            "Mean time a message waited in the mailbox",
            |s| s.queue_wait_mean_us / 1e6,
        ),
        (
            "actor_queue_wait_seconds_max",
            "gauge",
            "Longest time a message waited in the mailbox",
            |s| s.queue_wait_max_us / 1e6,
        ),
        ("actor_instances", "gauge", "Live actor instances", |s| {
            s.instances as f64
        }),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &snaps {
            let _ = writeln!(out, "{name}{{actor=\"{}\"}} {}", esc(&s.actor), get(s));
        }
    }
    type MsgSeries = (
        &'static str,
        &'static str,
        &'static str,
        fn(&MessageSnapshot) -> f64,
    );
    let per_msg: [MsgSeries; 7] = [
        (
            "actor_message_depth",
            "gauge",
            "Messages of this type queued now",
            |m| m.depth as f64,
        ),
        (
            "actor_message_handled_total",
            "counter",
            "Messages of this type handled",
            |m| m.handled as f64,
        ),
        (
            "actor_message_dropped_total",
            "counter",
            "Messages of this type dropped unhandled",
            |m| m.dropped_unhandled as f64,
        ),
        (
            "actor_message_send_failed_total",
            "counter",
            "Sends of this type refused",
            |m| m.send_failed as f64,
        ),
        (
            "actor_message_handle_seconds_max",
            "gauge",
            "Longest handling time of this type",
            |m| m.handle_max_us / 1e6,
        ),
        (
            "actor_message_queue_wait_seconds_mean",
            "gauge",
            "Mean mailbox wait of this type",
            |m| m.queue_wait_mean_us / 1e6,
        ),
        (
            "actor_message_queue_wait_seconds_max",
            "gauge",
            "Longest mailbox wait of this type",
            |m| m.queue_wait_max_us / 1e6,
        ),
    ];
    for (name, kind, help, get) in per_msg {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &snaps {
            for m in &s.messages {
                let _ = writeln!(
                    out,
                    "{name}{{actor=\"{}\",message=\"{}\"}} {}",
                    esc(&s.actor),
                    esc(&m.message),
                    get(m)
                );
            }
        }
    }
}

/// An actor address that meters every message sent through it.
pub struct MeteredAddr<A: Actor> {
    addr: Addr<A>,
    metrics: Arc<ActorMetrics>,
}

impl<A: Actor> Clone for MeteredAddr<A> {
    fn clone(&self) -> Self {
        MeteredAddr {
            addr: self.addr.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

// The one place the raw sends are allowed (clippy.toml disallows them elsewhere).
#[allow(clippy::disallowed_methods)]
impl<A: Actor> MeteredAddr<A> {
    pub fn new(addr: Addr<A>, name: &str) -> Self {
        MeteredAddr {
            addr,
            metrics: actor(name),
        }
    }

    /// Counted in `metrics` (e.g. an [`ActorMetrics::instance`]).
    pub fn with_metrics(addr: Addr<A>, metrics: Arc<ActorMetrics>) -> Self {
        MeteredAddr { addr, metrics }
    }

    pub fn metrics(&self) -> &Arc<ActorMetrics> {
        &self.metrics
    }

    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    /// Same actor instance (for de-duplication and identity checks, not for sending).
    pub fn same(&self, other: &Addr<A>) -> bool {
        self.addr == *other
    }

    fn wrap<M: 'static>(&self, msg: M) -> Metered<M> {
        Metered {
            msg,
            guard: self.metrics.enqueue::<M>(),
            enqueued: Instant::now(),
        }
    }

    /// Unbounded: only for producers that are themselves bounded. A closed mailbox counts as
    /// a failed send.
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Metered<M>>,
        A::Context: ToEnvelope<A, Metered<M>>,
    {
        let m = self.wrap(msg);
        if !self.addr.connected() {
            self.metrics.failed(&m.guard.msg);
        }
        self.addr.do_send(m);
    }

    /// Bounded by the mailbox capacity; `Full` is counted as a failed send.
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Metered<M>>,
        A::Context: ToEnvelope<A, Metered<M>>,
    {
        self.addr.try_send(self.wrap(msg)).map_err(|e| match e {
            SendError::Full(m) => {
                self.metrics.failed(&m.guard.msg);
                SendError::Full(m.msg)
            }
            SendError::Closed(m) => {
                self.metrics.failed(&m.guard.msg);
                SendError::Closed(m.msg)
            }
        })
    }

    pub async fn send<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Metered<M>>,
        A::Context: ToEnvelope<A, Metered<M>>,
    {
        let m = self.wrap(msg);
        let counters = Arc::clone(&m.guard.msg);
        let r = self.addr.send(m).await;
        if r.is_err() {
            self.metrics.failed(&counters);
        }
        r
    }
}

/// A metered handle that names only the message, not the actor (actix `Recipient`): lets a
/// module send to an actor without importing the actor's file, so no file cycle forms.
pub struct MeteredRecipient<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    rcpt: Recipient<Metered<M>>,
    metrics: Arc<ActorMetrics>,
}

impl<M> Clone for MeteredRecipient<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    fn clone(&self) -> Self {
        MeteredRecipient {
            rcpt: self.rcpt.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

impl<A: Actor> MeteredAddr<A> {
    /// The same metered mailbox, seen as a handle for `M` only.
    pub fn recipient<M>(&self) -> MeteredRecipient<M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Metered<M>>,
        A::Context: ToEnvelope<A, Metered<M>>,
    {
        MeteredRecipient {
            rcpt: self.addr.clone().recipient(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

// As for MeteredAddr: the one place the raw recipient sends are allowed.
#[allow(clippy::disallowed_methods)]
impl<M> MeteredRecipient<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    pub fn connected(&self) -> bool {
        self.rcpt.connected()
    }

    /// Unbounded, as [`MeteredAddr::do_send`]; a closed mailbox counts as a failed send.
    pub fn do_send(&self, msg: M) {
        let m = Metered {
            msg,
            guard: self.metrics.enqueue::<M>(),
            enqueued: Instant::now(),
        };
        if !self.rcpt.connected() {
            self.metrics.failed(&m.guard.msg);
        }
        self.rcpt.do_send(m);
    }

    /// Waits for the answer, as [`MeteredAddr::send`]; a failed delivery counts as a failed
    /// send.
    pub async fn send(&self, msg: M) -> Result<M::Result, MailboxError> {
        let m = Metered {
            msg,
            guard: self.metrics.enqueue::<M>(),
            enqueued: Instant::now(),
        };
        let counters = Arc::clone(&m.guard.msg);
        let r = self.rcpt.send(m).await;
        if r.is_err() {
            self.metrics.failed(&counters);
        }
        r
    }
}

/// Implements `Handler<Metered<M>>` for an actor that handles `M`, timing the handler.
/// (The orphan rule forbids a blanket impl.)
#[macro_export]
macro_rules! metered {
    ($actor:ty, $msg:ty) => {
        impl ::actix::Handler<$crate::metrics::Metered<$msg>> for $actor {
            type Result = <$actor as ::actix::Handler<$msg>>::Result;
            fn handle(
                &mut self,
                m: $crate::metrics::Metered<$msg>,
                ctx: &mut <$actor as ::actix::Actor>::Context,
            ) -> Self::Result {
                let start = ::std::time::Instant::now();
                let r = <$actor as ::actix::Handler<$msg>>::handle(self, m.msg, ctx);
                m.guard.handled(start.elapsed());
                r
            }
        }
    };
}

/// As [`metered!`], for a handler that answers with `MessageResult<M>`.
#[macro_export]
macro_rules! metered_result {
    ($actor:ty, $msg:ty) => {
        impl ::actix::Handler<$crate::metrics::Metered<$msg>> for $actor {
            type Result = ::actix::MessageResult<$crate::metrics::Metered<$msg>>;
            fn handle(
                &mut self,
                m: $crate::metrics::Metered<$msg>,
                ctx: &mut <$actor as ::actix::Actor>::Context,
            ) -> Self::Result {
                let start = ::std::time::Instant::now();
                let ::actix::MessageResult(r) =
                    <$actor as ::actix::Handler<$msg>>::handle(self, m.msg, ctx);
                m.guard.handled(start.elapsed());
                ::actix::MessageResult(r)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::prelude::*;

    struct Slow;
    impl Actor for Slow {
        type Context = Context<Self>;
    }
    struct Ping(u32);
    impl Message for Ping {
        type Result = u32;
    }
    impl Handler<Ping> for Slow {
        type Result = u32;
        fn handle(&mut self, p: Ping, _: &mut Context<Self>) -> u32 {
            p.0 + 1
        }
    }
    crate::metered!(Slow, Ping);

    #[actix::test]
    async fn depth_rises_and_falls_and_counts_match() {
        let a = MeteredAddr::new(Slow.start(), "test.slow");
        for i in 0..50 {
            a.do_send(Ping(i));
        }
        let peak_now = a.metrics().snapshot().mailbox_depth;
        assert_eq!(peak_now, 50, "nothing handled before we yield");
        assert_eq!(a.send(Ping(1)).await.unwrap(), 2);
        let s = a.metrics().snapshot();
        assert_eq!(s.sent, 51);
        assert_eq!(s.handled, 51);
        assert_eq!(s.mailbox_depth, 0);
        assert!(s.mailbox_peak >= 50);
        let mut text = String::new();
        render_prometheus(&mut text);
        assert!(text.contains("actor_mailbox_peak{actor=\"test.slow\"}"));
    }

    struct Quit;
    impl Message for Quit {
        type Result = ();
    }
    impl Handler<Quit> for Slow {
        type Result = ();
        fn handle(&mut self, _: Quit, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }
    crate::metered!(Slow, Quit);

    #[actix::test]
    async fn a_recipient_is_metered_like_the_address() {
        let a = MeteredAddr::new(Slow.start(), "test.recipient");
        let r: MeteredRecipient<Ping> = a.recipient();
        for i in 0..5 {
            r.do_send(Ping(i));
        }
        assert_eq!(a.metrics().snapshot().mailbox_depth, 5);
        // Through the address: the recipient's five were handled first, in order.
        assert_eq!(a.send(Ping(0)).await.unwrap(), 1);
        let s = a.metrics().snapshot();
        assert_eq!((s.sent, s.handled, s.mailbox_depth), (6, 6, 0));
        a.send(Quit).await.unwrap();
        for _ in 0..400 {
            if !r.connected() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!r.connected(), "the actor did not stop");
        r.do_send(Ping(9));
        assert_eq!(a.metrics().snapshot().send_failed, 1);
        assert!(r.send(Ping(9)).await.is_err());
        assert_eq!(a.metrics().snapshot().send_failed, 2);
    }

    #[actix::test]
    async fn a_recipient_send_answers_and_counts_per_message() {
        let a = MeteredAddr::new(Slow.start(), "test.recipient_send");
        let r: MeteredRecipient<Ping> = a.recipient();
        assert_eq!(r.send(Ping(41)).await.unwrap(), 42);
        let s = a.metrics().snapshot();
        assert_eq!((s.sent, s.handled, s.mailbox_depth), (1, 1, 0));
        let ping = s.messages.iter().find(|m| m.message == "Ping").unwrap();
        assert_eq!((ping.sent, ping.handled), (1, 1));
    }

    #[actix::test]
    async fn per_message_figures_and_failed_sends() {
        let a = MeteredAddr::new(Slow.start(), "test.per_msg");
        for i in 0..10 {
            a.do_send(Ping(i));
        }
        assert_eq!(a.send(Ping(0)).await.unwrap(), 1);
        a.send(Quit).await.unwrap();
        // Stopped: the next sends fail and are counted, per kind and per message type.
        assert!(a.send(Ping(1)).await.is_err());
        a.do_send(Ping(2));
        let s = a.metrics().snapshot();
        let ping = s.messages.iter().find(|m| m.message == "Ping").unwrap();
        assert_eq!(ping.handled, 11);
        assert_eq!(ping.send_failed, 2);
        assert!(ping.queue_wait_max_us > 0.0 && ping.handle_max_us > 0.0);
        let quit = s.messages.iter().find(|m| m.message == "Quit").unwrap();
        assert_eq!((quit.handled, quit.send_failed), (1, 0));
        assert_eq!(s.send_failed, 2);
        let mut text = String::new();
        render_prometheus(&mut text);
        assert!(text.contains(
            "actor_message_send_failed_total{actor=\"test.per_msg\",message=\"Ping\"} 2"
        ));
        assert!(text.contains("actor_queue_wait_seconds_max{actor=\"test.per_msg\"}"));
    }

    #[actix::test]
    async fn an_instance_rolls_up_into_its_kind() {
        let m = ActorMetrics::instance("test.kind", "test.kind/1");
        let a = MeteredAddr::with_metrics(Slow.start(), m);
        a.send(Ping(1)).await.unwrap();
        assert_eq!(a.metrics().snapshot().handled, 1);
        let kind = actor("test.kind").snapshot();
        assert_eq!(kind.handled, 1);
        assert_eq!(kind.messages[0].message, "Ping");
        assert!(snapshot_all().iter().all(|s| s.actor != "test.kind/1"));
    }
}
