//! Actor mailbox metrics. actix exposes no queue length, so every message sent through a
//! [`MeteredAddr`] is wrapped in [`Metered`], whose guard keeps a per-actor-type depth gauge
//! (stack-notes §4: ~+115 ns per message). Readable from any thread, so a stuck actor still
//! reports its depth.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, MailboxError, Message};
use serde::Serialize;

/// Counters for one actor type (all instances of it share one set).
#[derive(Debug, Default)]
pub struct ActorMetrics {
    pub name: String,
    depth: AtomicI64,
    peak: AtomicI64,
    sent: AtomicU64,
    handled: AtomicU64,
    dropped: AtomicU64,
    send_failed: AtomicU64,
    handle_ns_total: AtomicU64,
    handle_ns_max: AtomicU64,
    instances: AtomicI64,
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
}

impl ActorMetrics {
    pub fn snapshot(&self) -> ActorSnapshot {
        let handled = self.handled.load(Relaxed);
        let total = self.handle_ns_total.load(Relaxed);
        ActorSnapshot {
            actor: self.name.clone(),
            instances: self.instances.load(Relaxed),
            mailbox_depth: self.depth.load(Relaxed).max(0),
            mailbox_peak: self.peak.load(Relaxed),
            sent: self.sent.load(Relaxed),
            handled,
            dropped_unhandled: self.dropped.load(Relaxed),
            send_failed: self.send_failed.load(Relaxed),
            handle_mean_us: if handled == 0 {
                0.0
            } else {
                total as f64 / handled as f64 / 1000.0
            },
            handle_max_us: self.handle_ns_max.load(Relaxed) as f64 / 1000.0,
        }
    }

    fn enqueue(self: &Arc<Self>) -> DepthGuard {
        self.sent.fetch_add(1, Relaxed);
        let d = self.depth.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(d, Relaxed);
        DepthGuard {
            m: Arc::clone(self),
            handled: false,
        }
    }

    /// Call from an actor's `started`/`stopped` to count live instances.
    pub fn instance_started(&self) {
        self.instances.fetch_add(1, Relaxed);
    }

    pub fn instance_stopped(&self) {
        self.instances.fetch_sub(1, Relaxed);
    }
}

/// Decrements the depth when the message is handled or dropped unhandled.
#[derive(Debug)]
pub struct DepthGuard {
    m: Arc<ActorMetrics>,
    handled: bool,
}

impl DepthGuard {
    pub fn handled(mut self, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        self.m.handled.fetch_add(1, Relaxed);
        self.m.handle_ns_total.fetch_add(ns, Relaxed);
        self.m.handle_ns_max.fetch_max(ns, Relaxed);
        self.handled = true;
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        self.m.depth.fetch_sub(1, Relaxed);
        if !self.handled {
            self.m.dropped.fetch_add(1, Relaxed);
        }
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

/// Global registry, one entry per actor type name.
fn registry() -> &'static Mutex<Vec<Arc<ActorMetrics>>> {
    static R: OnceLock<Mutex<Vec<Arc<ActorMetrics>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// The metrics of actor type `name`, created on first use.
pub fn actor(name: &str) -> Arc<ActorMetrics> {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = r.iter().find(|m| m.name == name) {
        return Arc::clone(m);
    }
    let m = Arc::new(ActorMetrics {
        name: name.to_owned(),
        ..ActorMetrics::default()
    });
    r.push(Arc::clone(&m));
    m
}

pub fn snapshot_all() -> Vec<ActorSnapshot> {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<ActorSnapshot> = r.iter().map(|m| m.snapshot()).collect();
    v.sort_by(|a, b| a.actor.cmp(&b.actor));
    v
}

/// Prometheus text exposition of every actor's mailbox metrics.
pub fn render_prometheus(out: &mut String) {
    let snaps = snapshot_all();
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ActorSnapshot) -> f64,
    );
    let series: [Series; 7] = [
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
            "actor_handle_seconds_mean",
            "gauge",
            "Mean handling time",
            |s| s.handle_mean_us / 1e6,
        ),
        ("actor_instances", "gauge", "Live actor instances", |s| {
            s.instances as f64
        }),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &snaps {
            let _ = writeln!(out, "{name}{{actor=\"{}\"}} {}", s.actor, get(s));
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

impl<A: Actor> MeteredAddr<A> {
    pub fn new(addr: Addr<A>, name: &str) -> Self {
        MeteredAddr {
            addr,
            metrics: actor(name),
        }
    }

    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    pub fn metrics(&self) -> &Arc<ActorMetrics> {
        &self.metrics
    }

    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    fn wrap<M>(&self, msg: M) -> Metered<M> {
        Metered {
            msg,
            guard: self.metrics.enqueue(),
            enqueued: Instant::now(),
        }
    }

    /// Unbounded: only for producers that are themselves bounded.
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Metered<M>>,
        A::Context: ToEnvelope<A, Metered<M>>,
    {
        self.addr.do_send(self.wrap(msg));
    }

    /// Bounded by the mailbox capacity; `Full` is counted as a failed send.
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Metered<M>>,
        A::Context: ToEnvelope<A, Metered<M>>,
    {
        self.addr.try_send(self.wrap(msg)).map_err(|e| {
            self.metrics.send_failed.fetch_add(1, Relaxed);
            match e {
                SendError::Full(m) => SendError::Full(m.msg),
                SendError::Closed(m) => SendError::Closed(m.msg),
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
        let r = self.addr.send(self.wrap(msg)).await;
        if r.is_err() {
            self.metrics.send_failed.fetch_add(1, Relaxed);
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
}
