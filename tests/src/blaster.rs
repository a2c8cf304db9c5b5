//! A session that sends events as fast as Mirage acknowledges them (event → event.ack
//! throughput): `window` events in flight, every ack counted. Events name commands Mirage
//! never sent, which it records and acknowledges like any other event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use shared::envelope::{AckStatus, Envelope, Event, Outcome};
use shared::handshake;
use shared::wire::{Frame, FrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;

use crate::fake_ghost::registration;

/// What one session's blast measured.
pub struct Blast {
    /// Acks with status accepted.
    pub acked: u64,
    /// Write → ack time of every acked event, in nanoseconds, in ack order.
    pub lat_ns: Vec<u64>,
}

pub struct Blaster {
    id: String,
    framed: Framed<TcpStream, FrameCodec>,
}

impl Blaster {
    pub async fn connect(addr: &str, id: &str) -> Blaster {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let reg = registration(id, &["seed.flow"]);
        s.write_all(&handshake::registration_line(&reg).expect("line"))
            .await
            .expect("register");
        let mut buf = bytes::BytesMut::new();
        let line = handshake::read_line(&mut s, &mut buf, handshake::MAX_LINE)
            .await
            .expect("ack line");
        let ack = handshake::parse_registration_ack(&line).expect("ack");
        assert!(ack.accepted(), "registration refused: {ack:?}");
        let mut framed = Framed::new(s, FrameCodec::default());
        framed.read_buffer_mut().extend_from_slice(&buf);
        Blaster {
            id: id.to_owned(),
            framed,
        }
    }

    /// Sends `n` events with at most `window` unacknowledged; returns the accepted acks.
    pub async fn blast(self, n: u64, window: usize) -> u64 {
        self.blast_timed(n, window).await.acked
    }

    /// As [`Blaster::blast`], also timing each event from its write to its ack (matched by
    /// the frame's message_id, which Mirage echoes on the ack).
    pub async fn blast_timed(self, n: u64, window: usize) -> Blast {
        let (mut tx, mut rx) = self.framed.split();
        let credit = Arc::new(Semaphore::new(window));
        let id = self.id.clone();
        let c = credit.clone();
        let t0 = Instant::now();
        // Nanoseconds after t0 each event was written, by message_id - 1.
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let sent_w = sent.clone();
        let writer = tokio::spawn(async move {
            for i in 0..n {
                let Ok(p) = c.acquire().await else { return };
                p.forget();
                let mut e = Event::new(
                    format!("evt.bench.{id}.{i}"),
                    format!("cmd.bench.{id}.{i}"),
                    "bench",
                    id.clone(),
                    "seed.flow",
                    Outcome::Success,
                );
                e.timestamp_ms = Some(shared::now_ms());
                let Ok(f) = Envelope::Event(e).to_frame(i + 1) else {
                    return;
                };
                // Batch writes: flush only when no more credit is at hand right now.
                let flush = c.available_permits() == 0 || i + 1 == n;
                sent_w[i as usize].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let r = if flush {
                    SinkExt::<Frame>::send(&mut tx, f).await
                } else {
                    SinkExt::<Frame>::feed(&mut tx, f).await
                };
                if r.is_err() {
                    return;
                }
            }
            // Keep the write half open until the reader has every ack.
            std::future::pending::<()>().await;
        });
        let mut acked = 0;
        let mut seen = 0;
        let mut lat_ns = Vec::with_capacity(n as usize);
        while seen < n {
            let next = tokio::time::timeout(std::time::Duration::from_secs(30), rx.next()).await;
            let Ok(Some(Ok(f))) = next else { break };
            if let Ok(Envelope::EventAck(a)) = Envelope::from_frame(&f) {
                let now = t0.elapsed().as_nanos() as u64;
                seen += 1;
                if a.ack_status == AckStatus::Accepted {
                    acked += 1;
                }
                if let Some(s) = (f.message_id as usize)
                    .checked_sub(1)
                    .and_then(|i| sent.get(i))
                {
                    lat_ns.push(now.saturating_sub(s.load(Ordering::Relaxed)));
                }
                credit.add_permits(1);
            }
        }
        writer.abort();
        Blast { acked, lat_ns }
    }
}
