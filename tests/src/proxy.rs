//! A TCP proxy between a Ghost and Mirage for fault injection: cut every connection (a
//! dropped link), cut the next command frame in its middle, delay traffic both ways (a
//! slow link), black-hole it without closing (a partition), or drop Mirage's `event.ack`
//! frames (an ack stall, which makes the Ghost send events again). The Mirage→Ghost direction
//! is parsed frame by frame after the handshake line. Runs on its own thread; stops when
//! dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Default)]
struct Faults {
    blackhole: AtomicBool,
    drop_acks: AtomicBool,
    dropped_acks: std::sync::atomic::AtomicU64,
    delay_ms: std::sync::atomic::AtomicU64,
    cut_mid_frame: AtomicBool,
    cut_frames: std::sync::atomic::AtomicU64,
    /// Raw TCP both ways (no Mirage framing), e.g. a Ghost-to-Ghost storage.move transfer.
    raw: AtomicBool,
    /// Raw mode: the server→client byte at this offset (of each connection) is flipped;
    /// 0 = off (offset 0 is never flipped).
    flip_at: std::sync::atomic::AtomicU64,
    flipped: std::sync::atomic::AtomicU64,
}

impl Faults {
    async fn hold(&self) {
        while self.blackhole.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let d = self.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
    }
}

pub struct Proxy {
    pub addr: String,
    cut: watch::Sender<u64>,
    faults: Arc<Faults>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Copies client→server bytes, holding them while black-holed.
async fn upstream(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    f: Arc<Faults>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        f.hold().await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Raw server→client copy: delayed per chunk like `upstream`, one byte flipped if asked.
async fn raw_downstream(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    f: Arc<Faults>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        f.hold().await;
        let at = f.flip_at.load(Ordering::Relaxed);
        if at > 0 && (offset..offset + n as u64).contains(&at) {
            buf[(at - offset) as usize] ^= 0x01;
            f.flipped.fetch_add(1, Ordering::Relaxed);
        }
        offset += n as u64;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Server→client: the handshake line passes, then whole frames, minus acks while stalled.
async fn downstream(
    from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    f: Arc<Faults>,
) {
    if f.raw.load(Ordering::Relaxed) {
        return raw_downstream(from, to, f).await;
    }
    let mut from = from;
    let mut buf = BytesMut::new();
    let mut line_done = false;
    loop {
        let n = match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let _ = n;
        f.hold().await;
        if !line_done {
            let Some(i) = buf.iter().position(|b| *b == b'\n') else {
                continue;
            };
            let line = buf.split_to(i + 1);
            if to.write_all(&line).await.is_err() {
                return;
            }
            line_done = true;
        }
        while buf.len() >= 32 {
            let header_len = u16::from_be_bytes([buf[6], buf[7]]) as usize;
            let payload_len = u64::from_be_bytes(buf[24..32].try_into().unwrap_or([0; 8])) as usize;
            let total = header_len + payload_len;
            if buf.len() < total {
                break;
            }
            let frame = buf.split_to(total);
            let message_type = u32::from_be_bytes([frame[16], frame[17], frame[18], frame[19]]);
            if message_type == 8 && f.drop_acks.load(Ordering::Relaxed) {
                f.dropped_acks.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if message_type == 2 && f.cut_mid_frame.swap(false, Ordering::Relaxed) {
                // Half a frame, then the connection goes: the Ghost sees a truncated frame.
                let _ = to.write_all(&frame[..frame.len() / 2]).await;
                let _ = to.flush().await;
                f.cut_frames.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let target = target.to_owned();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap().to_string();
        let (cut, cut_rx) = watch::channel(0u64);
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let faults = Arc::new(Faults::default());
        let f2 = faults.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let target = Arc::new(target);
                loop {
                    let accepted = tokio::select! {
                        _ = &mut stop_rx => return,
                        a = listener.accept() => a,
                    };
                    let Ok((inbound, _)) = accepted else { continue };
                    let (target, f) = (target.clone(), f2.clone());
                    let mut cut_rx = cut_rx.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(outbound)) = tokio::time::timeout(
                            Duration::from_secs(5),
                            TcpStream::connect(target.as_str()),
                        )
                        .await
                        else {
                            return;
                        };
                        let gen = *cut_rx.borrow_and_update();
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = outbound.into_split();
                        tokio::select! {
                            _ = upstream(ir, ow, f.clone()) => {}
                            _ = downstream(or, iw, f) => {}
                            _ = async { while cut_rx.changed().await.is_ok() { if *cut_rx.borrow() != gen { break } } } => {}
                        }
                    });
                }
            });
        });
        Proxy {
            addr,
            cut,
            faults,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A raw TCP relay (no Mirage framing) with the same faults plus [`Proxy::flip_at`].
    pub fn start_raw(target: &str) -> Proxy {
        let p = Proxy::start(target);
        p.faults.raw.store(true, Ordering::Relaxed);
        p
    }

    /// Raw mode: flip one bit of the server→client byte at `offset` (> 0) of each connection.
    pub fn flip_at(&self, offset: u64) {
        self.faults.flip_at.store(offset, Ordering::Relaxed);
    }

    /// Bytes flipped so far.
    pub fn flipped(&self) -> u64 {
        self.faults.flipped.load(Ordering::Relaxed)
    }

    /// Drops every connection open now (new ones are accepted again).
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// Partition: nothing passes either way, nothing is closed.
    pub fn blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::Relaxed);
    }

    /// Ack stall: Mirage's event.ack frames are dropped.
    pub fn drop_acks(&self, on: bool) {
        self.faults.drop_acks.store(on, Ordering::Relaxed);
    }

    /// Slow link: every chunk waits this long before it is passed on, both ways (0: off).
    pub fn delay(&self, ms: u64) {
        self.faults.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The next command frame (Mirage→Ghost) is cut in its middle and the connection closed.
    pub fn cut_next_frame(&self) {
        self.faults.cut_mid_frame.store(true, Ordering::Relaxed);
    }

    /// Frames cut in their middle so far.
    pub fn frames_cut(&self) -> u64 {
        self.faults.cut_frames.load(Ordering::Relaxed)
    }

    pub fn dropped_acks(&self) -> u64 {
        self.faults.dropped_acks.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.blackhole(false);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
