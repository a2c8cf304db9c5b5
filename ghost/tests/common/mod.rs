//! Test harness: the real `ghost` binary in a temp dir, a blocking admin client, and an
//! in-test Mirage that speaks the handshake and frames over loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use shared::envelope::{AckStatus, Envelope, Event, EventAck};
use shared::handshake::{self, Registration, RegistrationAck};
use shared::wire::{Frame, FrameCodec};
use tokio::net::{TcpListener, TcpStream as TokioStream};
use tokio_util::codec::Framed;

static N: AtomicU32 = AtomicU32::new(0);

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "ghost-it-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound then released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct GhostProc {
    pub child: Child,
    pub admin: Option<String>,
    pub config: PathBuf,
}

impl GhostProc {
    /// Starts `ghost serve --config` with `toml` (data_dir is set by the caller) and waits
    /// for its ready line.
    pub fn start(dir: &Path, toml: &str) -> GhostProc {
        let config = dir.join("ghost.toml");
        std::fs::write(&config, toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ghost"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("ghost.log"))
                    .unwrap(),
            ))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("ghost did not start; log:\n{}", read_log(dir)));
        assert!(line.starts_with("ghost ready"), "{line}");
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .filter(|a| *a != "off")
            .map(str::to_owned);
        GhostProc {
            child,
            admin,
            config,
        }
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.sigkill();
        None
    }

    pub fn admin(&self) -> Admin {
        Admin::connect(self.admin.as_deref().expect("admin enabled"))
    }
}

impl Drop for GhostProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.sigterm();
        }
    }
}

pub fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("ghost.log")).unwrap_or_default()
}

/// Blocking NDJSON admin client.
pub struct Admin {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Admin {
    pub fn connect(addr: &str) -> Admin {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Admin {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    pub fn call(&mut self, req: Value) -> Value {
        let mut line = req.to_string();
        line.push('\n');
        self.w.write_all(line.as_bytes()).unwrap();
        let mut resp = String::new();
        self.r.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
    }
}

/// Minimal config text for a Ghost pointed at `mirage`.
pub fn config(dir: &Path, ghost_id: &str, mirage: &str, extra: &str) -> String {
    format!(
        r#"ghost_id = "{ghost_id}"
data_dir = "{}"
seeds = ["seed.flow", "seed.kv", "seed.fs"]
[mirage]
policy = "auto"
addresses = ["{mirage}"]
[admin]
listen = "127.0.0.1:0"
[timeouts]
heartbeat_ms = 200
dead_after_ms = 1000
ack_timeout_ms = 1500
[backoff]
initial_ms = 100
factor = 2.0
max_ms = 2000
{extra}
"#,
        dir.join("data").display()
    )
}

/// The Mirage side of one session.
pub struct MirageConn {
    pub reg: Registration,
    pub framed: Framed<TokioStream, FrameCodec>,
    next_id: u64,
}

pub struct FakeMirage {
    pub listener: TcpListener,
}

impl FakeMirage {
    pub async fn bind(port: u16) -> FakeMirage {
        FakeMirage {
            listener: TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
        }
    }

    pub fn addr(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// Accepts one Ghost, checks its registration line and accepts it.
    pub async fn accept(&self) -> MirageConn {
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(20), self.listener.accept())
            .await
            .expect("ghost did not connect")
            .unwrap();
        let mut buf = BytesMut::new();
        let line = handshake::read_line(&mut s, &mut buf, handshake::MAX_LINE)
            .await
            .unwrap();
        let reg = handshake::parse_registration(&line).unwrap();
        let ack = RegistrationAck {
            status: "accepted".into(),
            code: 0,
            message: "registered".into(),
            ghost_id: reg.ghost_id.clone(),
            timestamp_ms: shared::now_ms(),
            session_id: Some("s-test".into()),
            heartbeat_interval_ms: None,
        };
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            &handshake::registration_ack_line(&ack).unwrap(),
        )
        .await
        .unwrap();
        let mut framed = Framed::new(s, FrameCodec::default());
        framed.read_buffer_mut().extend_from_slice(&buf);
        MirageConn {
            reg,
            framed,
            next_id: 1,
        }
    }
}

impl MirageConn {
    pub async fn send(&mut self, env: Envelope) {
        let f = env.to_frame(self.next_id).unwrap();
        self.next_id += 1;
        self.framed.send(f).await.unwrap();
    }

    /// Next frame as an envelope, or None on timeout / close.
    pub async fn recv(&mut self, within: Duration) -> Option<(Frame, Envelope)> {
        match tokio::time::timeout(within, self.framed.next()).await {
            Ok(Some(Ok(f))) => {
                let env = Envelope::from_frame(&f).unwrap();
                Some((f, env))
            }
            _ => None,
        }
    }

    /// Next non-heartbeat event, acking heartbeats on the way (when `ack_heartbeats`).
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (_, env) = self.recv(left).await?;
            if let Envelope::Event(e) = env {
                if e.intent_id == "intent.session.heartbeat" {
                    let ack = ack_for(&e, AckStatus::Accepted);
                    self.send(ack).await;
                    continue;
                }
                return Some(e);
            }
        }
    }

    pub async fn ack(&mut self, e: &Event) {
        self.send(ack_for(e, AckStatus::Accepted)).await;
    }
}

pub fn ack_for(e: &Event, status: AckStatus) -> Envelope {
    Envelope::EventAck(EventAck {
        event_id: e.event_id.clone(),
        command_id: e.command_id.clone(),
        ghost_id: e.ghost_id.clone(),
        ack_status: status,
        ack_code: 0,
        timestamp_ms: shared::now_ms(),
        extra: vec![],
    })
}
