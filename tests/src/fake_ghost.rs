//! A scripted Ghost speaking the wire protocol directly, for cases a real Ghost never
//! produces (duplicate events, bad handshakes).

use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use shared::envelope::{Command, Envelope, Event, EventAck, Outcome};
use shared::handshake::{self, Registration, RegistrationAck, SeedInfo, CAP_SESSION_COMMAND};
use shared::wire::{Frame, FrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub struct FakeGhost {
    pub id: String,
    pub ack: RegistrationAck,
    framed: Framed<TcpStream, FrameCodec>,
    next_id: u64,
    /// Frames read while waiting for something else (e.g. a command during an ack wait).
    backlog: std::collections::VecDeque<(Frame, Envelope)>,
}

pub fn registration(id: &str, seeds: &[&str]) -> Registration {
    Registration {
        ghost_id: id.into(),
        peer_identity: id.into(),
        seed_list: Some(
            seeds
                .iter()
                .map(|s| SeedInfo {
                    id: s.to_string(),
                    name: s.to_string(),
                    description: "fake".into(),
                    operations: vec![],
                })
                .collect(),
        ),
        capabilities: vec![CAP_SESSION_COMMAND.into()],
        ..Default::default()
    }
}

impl FakeGhost {
    /// Registers; returns the ack line's content when rejected.
    pub async fn connect(addr: &str, reg: &Registration) -> Result<FakeGhost, RegistrationAck> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&handshake::registration_line(reg).unwrap())
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let line = tokio::time::timeout(
            Duration::from_secs(10),
            handshake::read_line(&mut s, &mut buf, handshake::MAX_LINE),
        )
        .await
        .unwrap()
        .unwrap();
        let ack = handshake::parse_registration_ack(&line).unwrap();
        if !ack.accepted() {
            return Err(ack);
        }
        let mut framed = Framed::new(s, FrameCodec::default());
        framed.read_buffer_mut().extend_from_slice(&buf);
        Ok(FakeGhost {
            id: reg.ghost_id.clone(),
            ack,
            framed,
            next_id: 1,
            backlog: Default::default(),
        })
    }

    pub async fn recv(&mut self, within: Duration) -> Option<(Frame, Envelope)> {
        if let Some(x) = self.backlog.pop_front() {
            return Some(x);
        }
        self.recv_wire(within).await
    }

    async fn recv_wire(&mut self, within: Duration) -> Option<(Frame, Envelope)> {
        match tokio::time::timeout(within, self.framed.next()).await {
            Ok(Some(Ok(f))) => {
                let e = Envelope::from_frame(&f).ok()?;
                Some((f, e))
            }
            _ => None,
        }
    }

    pub async fn next_command(&mut self, within: Duration) -> Option<Command> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(tokio::time::Instant::now())?;
            if let (_, Envelope::Command(c)) = self.recv(left).await? {
                return Some(c);
            }
        }
    }

    /// Sends an event and returns the ack frame's message id and ack.
    pub async fn event(&mut self, e: &Event) -> (u64, EventAck) {
        let id = self.next_id;
        self.next_id += 1;
        let f = Envelope::Event(e.clone()).to_frame(id).unwrap();
        self.framed.send(f).await.unwrap();
        loop {
            let (f, env) = self.recv_wire(Duration::from_secs(10)).await.expect("ack");
            match env {
                Envelope::EventAck(a) if a.event_id == e.event_id => {
                    assert_eq!(f.message_id, id, "ack echoes the event's message_id");
                    return (f.message_id, a);
                }
                other => self.backlog.push_back((f, other)),
            }
        }
    }

    pub fn event_for(&self, c: &Command, ok: bool) -> Event {
        let mut e = Event::new(
            format!("evt.{}", c.command_id),
            c.command_id.clone(),
            c.intent_id.clone(),
            self.id.clone(),
            c.seed_selector.clone(),
            if ok { Outcome::Success } else { Outcome::Error },
        );
        e.timestamp_ms = Some(shared::now_ms());
        e
    }
}
