//! Bad handshakes get their code or a close, and a good Ghost registers meanwhile
//! (issue 4, acceptance 5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use e2e::fake_ghost::{registration, FakeGhost};
use e2e::*;
use shared::handshake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads the rejection line (if any) and then expects EOF.
async fn rejection(s: &mut TcpStream, within: Duration) -> Option<handshake::RegistrationAck> {
    let mut buf = BytesMut::new();
    let line = tokio::time::timeout(
        within,
        handshake::read_line(s, &mut buf, handshake::MAX_LINE),
    )
    .await
    .expect("mirage answered in time");
    let ack = line
        .ok()
        .and_then(|l| handshake::parse_registration_ack(&l).ok());
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(within, s.read(&mut rest))
        .await
        .expect("closed in time");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "connection closed after the rejection"
    );
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_are_rejected_and_a_good_ghost_registers_meanwhile() {
    let dir = TempDir::new("hs");
    let m = tokio::task::spawn_blocking({
        let d = dir.0.clone();
        move || Mirage::start(d, 0, "[timeouts]\nhandshake_ms = 1000")
    })
    .await
    .unwrap();
    let addr = m.session.clone();

    // Silence: opened first, answered at the deadline.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let silent_at = Instant::now();

    // Garbage.
    let mut garbage = TcpStream::connect(&addr).await.unwrap();
    garbage
        .write_all(b"\x00\x01\x02 this is not json\n")
        .await
        .unwrap();

    // A 200 KiB line: refused once it passes 128 KiB, without waiting for the rest.
    let mut big = TcpStream::connect(&addr).await.unwrap();
    let chunk = vec![b'x'; 200 * 1024];
    let _ = big.write_all(&chunk).await;

    // Wrong identity.
    let mut reg = registration("ghost.a", &["seed.kv"]);
    reg.peer_identity = "ghost.b".into();
    let wrong = FakeGhost::connect(&addr, &reg)
        .await
        .err()
        .expect("rejected");
    assert_eq!(wrong.code, 1000);
    assert_eq!(wrong.message, "identity binding failure");
    assert_eq!(wrong.ghost_id, "ghost.a");

    // Meanwhile a good Ghost registers at once.
    let t = Instant::now();
    let good = FakeGhost::connect(&addr, &registration("ghost.good", &["seed.kv"]))
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "good ghost took {took:?}");
    assert!(good.ack.accepted());

    let g = rejection(&mut garbage, Duration::from_secs(5))
        .await
        .expect("garbage gets an ack line");
    assert_eq!(
        (g.status.as_str(), g.code, g.ghost_id.as_str()),
        ("rejected", 1300, "unknown")
    );
    let b = rejection(&mut big, Duration::from_secs(5))
        .await
        .expect("oversize gets an ack line");
    assert_eq!(b.code, 1300);
    assert!(b.message.contains("exceeds"), "{}", b.message);
    let s = rejection(&mut silent, Duration::from_secs(5))
        .await
        .expect("silence gets an ack line");
    assert_eq!(s.code, 1300);
    let waited = silent_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Mirage still serves: the good ghost is listed, the bad ones are not.
    let api = m.api.clone();
    let (_, ghosts) = tokio::task::spawn_blocking(move || http(&api, "GET", "/v1/ghosts", None))
        .await
        .unwrap();
    let ids: Vec<&str> = ghosts
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["ghost_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ghost.good"]);
    drop(good);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_replaces_the_old_and_bad_frames_get_error_frames() {
    use futures::{SinkExt, StreamExt};
    use shared::envelope::Envelope;
    use shared::wire::{tlv, Frame, FrameCodec};
    use tokio_util::codec::Framed;

    let dir = TempDir::new("replace");
    let m = tokio::task::spawn_blocking({
        let d = dir.0.clone();
        move || Mirage::start(d, 0, "")
    })
    .await
    .unwrap();
    let reg = registration("ghost.r", &["seed.kv"]);
    let mut old = FakeGhost::connect(&m.session, &reg).await.unwrap();
    let new = FakeGhost::connect(&m.session, &reg).await.unwrap();
    assert_ne!(old.ack.session_id, new.ack.session_id);
    // The old session is closed (an error frame may come first), the Ghost stays connected.
    let deadline = Instant::now() + Duration::from_secs(5);
    while old.recv(Duration::from_millis(200)).await.is_some() {
        assert!(Instant::now() < deadline, "old session not closed");
    }
    let api = m.api.clone();
    let g = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(200));
        http(&api, "GET", "/v1/ghosts/ghost.r", None).1
    })
    .await
    .unwrap();
    assert_eq!(g["connected"], true, "{g}");
    assert_eq!(g["session_id"].as_str(), new.ack.session_id.as_deref());
    drop(new);

    // A semantically bad frame gets an error frame naming it; the session stays up.
    let mut s = TcpStream::connect(&m.session).await.unwrap();
    s.write_all(&handshake::registration_line(&registration("ghost.s", &[])).unwrap())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let line = handshake::read_line(&mut s, &mut buf, handshake::MAX_LINE)
        .await
        .unwrap();
    assert!(handshake::parse_registration_ack(&line).unwrap().accepted());
    let mut f = Framed::new(s, FrameCodec::default());
    f.read_buffer_mut().extend_from_slice(&buf);
    let fields = tlv::Fields(vec![tlv::Field::string(tlv::id::EVENT_ID, "evt.x")]);
    f.send(Frame::new(77, 5, 0, fields.to_bytes().unwrap()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), f.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Envelope::Error(e) = Envelope::from_frame(&reply).unwrap() else {
        panic!("{reply:?}")
    };
    assert_eq!(e.error_code, 1300);
    assert_eq!(e.ref_message_id, Some(77));
    assert!(
        e.error_reason.contains("missing required field"),
        "{}",
        e.error_reason
    );
    // A broken frame header: error frame, then close.
    f.get_mut()
        .write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(8))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), f.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Envelope::Error(e) = Envelope::from_frame(&reply).unwrap() else {
        panic!()
    };
    assert_eq!(e.error_code, 1100);
    let end = tokio::time::timeout(Duration::from_secs(5), f.next())
        .await
        .unwrap();
    assert!(
        end.is_none() || end.unwrap().is_err(),
        "closed after a framing error"
    );
    drop(m);
}
