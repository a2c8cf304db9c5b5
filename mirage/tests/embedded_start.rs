#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
//! Invariant: `Mirage::start` in process serves a real Ghost registration on its session port
//! and the HTTP API on its API port (both ephemeral), the Ghost shows in `/v1/ghosts`, and
//! after `stop` both ports refuse connections.

use std::time::Duration;

use bytes::BytesMut;
use mirage::Mirage;
use shared::handshake::{self, Registration, CAP_SESSION_COMMAND};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(api: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(api).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[actix::test]
async fn embedded_mirage_registers_a_ghost_and_stops() {
    let dir = std::env::temp_dir().join(format!("mirage-embed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = Mirage::start(Mirage::ephemeral_config(&dir)).await.unwrap();
    let api = run.api.expect("api address");
    assert_ne!(run.session.port(), 0);
    assert_ne!(api.port(), 0);

    // A real registration over the session port.
    let reg = Registration {
        ghost_id: "g-embed".into(),
        peer_identity: "g-embed".into(),
        capabilities: vec![CAP_SESSION_COMMAND.into()],
        seed_list: Some(Vec::new()),
        ..Default::default()
    };
    let mut s = TcpStream::connect(run.session).await.unwrap();
    s.write_all(&handshake::registration_line(&reg).unwrap())
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
    assert!(ack.accepted(), "{ack:?}");

    let mut listed = String::new();
    for _ in 0..50 {
        listed = get(api, "/v1/ghosts").await;
        if listed.contains("\"g-embed\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed.contains("\"g-embed\""), "{listed}");
    let actors = get(api, "/v1/actors").await;
    assert!(actors.contains("mirage.supervisor"), "{actors}");

    let (session, api_addr) = (run.session, api);
    run.stop().await;
    drop(s);
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(session).await.is_err() && TcpStream::connect(api_addr).await.is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(refused, "a port still accepts after stop");
}
