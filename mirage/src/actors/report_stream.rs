//! Report fan-out (DESIGN.md §3): the Supervisor publishes each report to one `ReportHub`,
//! which filters per subscriber and forwards to that subscriber's `ReportStream` actor. A
//! stream owns a bounded queue towards its HTTP response (SSE, the dashboard, `mirage
//! reports --follow`); when the client reads too slowly the stream drops reports, counts
//! them and, as soon as there is room, sends one `gap` event naming how many and which seqs
//! were lost. So a consumer that never reads costs at most one queue, never the whole feed.
//! Streams stop when the client goes (its end of the queue is dropped) and are listed, with
//! their subscriber, in `GET /v1/actors`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorkit::metrics::{ActorMetrics, MeteredAddr};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::history::ReportRecord;

/// Items queued towards one client (after a slow spell, the gap marker comes first).
pub const STREAM_QUEUE: usize = 256;
/// How often a stream looks for room for its gap marker and for a client that went.
const TICK: Duration = Duration::from_millis(250);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Report streams at once; more are refused (503) rather than queued.
pub const MAX_STREAMS: usize = 4096;

pub const KIND: &str = "mirage.report_stream";

/// What a subscriber asked for; matched at the hub.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Filter {
    /// Only this intent's reports.
    pub intent: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &ReportRecord) -> bool {
        self.intent.as_ref().is_none_or(|i| *i == r.intent_id)
    }
}

/// Who is listening, for `/v1/actors`.
#[derive(Debug, Clone, Serialize)]
pub struct Subscriber {
    pub peer: String,
    /// The client's User-Agent (`mirage-cli` for `--follow`, a browser for the dashboard).
    pub client: String,
    pub filter: Filter,
}

/// One queued SSE chunk; `seq` for reports, so the response can skip what its replay sent.
#[derive(Debug)]
pub struct Chunk {
    pub seq: Option<u64>,
    pub bytes: actix_web::web::Bytes,
}

pub fn sse(r: &ReportRecord) -> actix_web::web::Bytes {
    let data = serde_json::to_string(r).unwrap_or_default();
    actix_web::web::Bytes::from(format!("id: {}\nevent: report\ndata: {data}\n\n", r.seq))
}

/// Reports dropped for a slow client since its last delivered item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gap {
    pub missed: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl Gap {
    fn add(g: Option<Gap>, seq: u64) -> Gap {
        match g {
            None => Gap {
                missed: 1,
                first_seq: seq,
                last_seq: seq,
            },
            Some(g) => Gap {
                missed: g.missed + 1,
                first_seq: g.first_seq.min(seq),
                last_seq: g.last_seq.max(seq),
            },
        }
    }

    /// `missed` as before (the dashboard reads it); the seq range is new.
    pub fn sse(&self) -> actix_web::web::Bytes {
        actix_web::web::Bytes::from(format!(
            "event: gap\ndata: {{\"missed\":{},\"first_seq\":{},\"last_seq\":{}}}\n\n",
            self.missed, self.first_seq, self.last_seq
        ))
    }
}

/// Live figures of one stream, readable from the API without a message.
#[derive(Debug)]
pub struct StreamInfo {
    pub id: u64,
    pub subscriber: Subscriber,
    pub metrics: Arc<ActorMetrics>,
    delivered: AtomicU64,
    gaps: AtomicU64,
    missed: AtomicU64,
    queued: AtomicU64,
}

fn live() -> &'static Mutex<BTreeMap<u64, Arc<StreamInfo>>> {
    static L: OnceLock<Mutex<BTreeMap<u64, Arc<StreamInfo>>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// One `/v1/actors` entry per live stream: its mailbox figures and its subscriber.
pub fn snapshot_streams() -> Vec<Value> {
    let l = live().lock().unwrap_or_else(|p| p.into_inner());
    l.values()
        .map(|i| {
            let mut v = serde_json::to_value(i.metrics.snapshot()).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.remove("messages");
                o.insert("kind".into(), json!(KIND));
                o.insert("subscriber".into(), json!(i.subscriber));
                o.insert(
                    "queue".into(),
                    json!({"len": i.queued.load(Relaxed), "cap": STREAM_QUEUE}),
                );
                o.insert("delivered".into(), json!(i.delivered.load(Relaxed)));
                o.insert("gaps".into(), json!(i.gaps.load(Relaxed)));
                o.insert("missed".into(), json!(i.missed.load(Relaxed)));
            }
            v
        })
        .collect()
}

pub fn live_streams() -> usize {
    live().lock().unwrap_or_else(|p| p.into_inner()).len()
}

// ---- hub ----

struct Sub {
    filter: Filter,
    addr: MeteredAddr<ReportStream>,
}

#[derive(Default)]
pub struct ReportHub {
    next: u64,
    subs: HashMap<u64, Sub>,
    me: Option<MeteredAddr<ReportHub>>,
}

impl Actor for ReportHub {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.report_hub").instance_started();
        self.me = Some(MeteredAddr::new(ctx.address(), "mirage.report_hub"));
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        actorkit::metrics::actor("mirage.report_hub").instance_stopped();
    }
}

/// A new subscriber: starts its stream, which pushes into `tx`. Err when at `MAX_STREAMS`.
#[derive(Message)]
#[rtype(result = "Result<u64, String>")]
pub struct Subscribe {
    pub subscriber: Subscriber,
    pub tx: mpsc::Sender<Chunk>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub Arc<ReportRecord>);

/// A stream stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Gone(pub u64);

impl Handler<Subscribe> for ReportHub {
    type Result = Result<u64, String>;
    fn handle(&mut self, m: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if self.subs.len() >= MAX_STREAMS {
            return Err(format!("{MAX_STREAMS} report streams are open"));
        }
        let Some(hub) = self.me.clone() else {
            return Err("report hub not started".into());
        };
        self.next += 1;
        let id = self.next;
        let metrics = ActorMetrics::instance(KIND, &format!("{KIND}/{id}"));
        let info = Arc::new(StreamInfo {
            id,
            subscriber: m.subscriber.clone(),
            metrics: metrics.clone(),
            delivered: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        let stream = ReportStream {
            info,
            tx: m.tx,
            gap: None,
            last_item: Instant::now(),
            hub,
        };
        let addr = MeteredAddr::with_metrics(stream.start(), metrics);
        tracing::info!(component = "mirage.report_hub", stream = id, peer = %m.subscriber.peer,
            client = %m.subscriber.client, intent = ?m.subscriber.filter.intent, "report stream opened");
        self.subs.insert(
            id,
            Sub {
                filter: m.subscriber.filter,
                addr,
            },
        );
        Ok(id)
    }
}

impl Handler<Publish> for ReportHub {
    type Result = ();
    fn handle(&mut self, m: Publish, _: &mut Context<Self>) {
        for s in self.subs.values() {
            if s.filter.matches(&m.0) {
                s.addr.do_send(Deliver(m.0.clone()));
            }
        }
    }
}

impl Handler<Gone> for ReportHub {
    type Result = ();
    fn handle(&mut self, m: Gone, _: &mut Context<Self>) {
        self.subs.remove(&m.0);
    }
}

actorkit::metered!(ReportHub, Subscribe);
actorkit::metered!(ReportHub, Publish);
actorkit::metered!(ReportHub, Gone);

// ---- one stream ----

pub struct ReportStream {
    info: Arc<StreamInfo>,
    tx: mpsc::Sender<Chunk>,
    gap: Option<Gap>,
    last_item: Instant,
    hub: MeteredAddr<ReportHub>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<ReportRecord>);

enum Push {
    Done,
    Full,
    Closed,
}

impl ReportStream {
    fn push(&mut self, c: Chunk) -> Push {
        let r = match self.tx.try_send(c) {
            Ok(()) => {
                self.last_item = Instant::now();
                Push::Done
            }
            Err(mpsc::error::TrySendError::Full(_)) => Push::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Push::Closed,
        };
        let queued = self.tx.max_capacity() - self.tx.capacity();
        self.info.queued.store(queued as u64, Relaxed);
        r
    }

    /// The gap marker goes out before anything newer; false while there is no room.
    fn flush_gap(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some(g) = self.gap else { return true };
        match self.push(Chunk {
            seq: None,
            bytes: g.sse(),
        }) {
            Push::Done => {
                tracing::info!(component = KIND, stream = self.info.id, peer = %self.info.subscriber.peer,
                    missed = g.missed, first_seq = g.first_seq, last_seq = g.last_seq, "slow consumer: gap marker sent");
                self.info.gaps.fetch_add(1, Relaxed);
                self.gap = None;
                true
            }
            Push::Full => false,
            Push::Closed => {
                ctx.stop();
                false
            }
        }
    }
}

impl Actor for ReportStream {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.info.metrics.instance_started();
        live()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.info.id, self.info.clone());
        ctx.run_interval(TICK, |act, ctx| {
            if act.tx.is_closed() {
                ctx.stop();
                return;
            }
            if act.flush_gap(ctx) && act.last_item.elapsed() >= KEEP_ALIVE {
                let ka = Chunk {
                    seq: None,
                    bytes: actix_web::web::Bytes::from_static(b": keep-alive\n\n"),
                };
                if let Push::Closed = act.push(ka) {
                    ctx.stop();
                }
            }
        });
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.info.metrics.instance_stopped();
        live()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.info.id);
        self.hub.do_send(Gone(self.info.id));
        tracing::info!(component = KIND, stream = self.info.id, peer = %self.info.subscriber.peer,
            delivered = self.info.delivered.load(Relaxed), missed = self.info.missed.load(Relaxed), "report stream closed");
    }
}

impl Handler<Deliver> for ReportStream {
    type Result = ();
    fn handle(&mut self, m: Deliver, ctx: &mut Context<Self>) {
        let seq = m.0.seq;
        if !self.flush_gap(ctx) {
            self.gap = Some(Gap::add(self.gap, seq));
            self.info.missed.fetch_add(1, Relaxed);
            return;
        }
        match self.push(Chunk {
            seq: Some(seq),
            bytes: sse(&m.0),
        }) {
            Push::Done => {
                self.info.delivered.fetch_add(1, Relaxed);
            }
            Push::Full => {
                self.gap = Some(Gap::add(self.gap, seq));
                self.info.missed.fetch_add(1, Relaxed);
            }
            Push::Closed => ctx.stop(),
        }
    }
}

actorkit::metered!(ReportStream, Deliver);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_counts_and_ranges() {
        let g = Gap::add(None, 7);
        let g = Gap::add(Some(g), 9);
        let g = Gap::add(Some(g), 8);
        assert_eq!(
            g,
            Gap {
                missed: 3,
                first_seq: 7,
                last_seq: 9
            }
        );
        let text = String::from_utf8(g.sse().to_vec()).unwrap_or_default();
        assert_eq!(
            text,
            "event: gap\ndata: {\"missed\":3,\"first_seq\":7,\"last_seq\":9}\n\n"
        );
    }
}
