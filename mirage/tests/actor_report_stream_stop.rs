#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
//! Invariant: a report stream is listed (with its subscriber and mailbox figures) exactly while
//! its client is there, and stops on its own when the client goes, even if nothing is
//! published. The real `ReportHub` and `ReportStream` actors, in process.

use std::time::Duration;

use actix::Actor;
use actorkit::metrics::MeteredAddr;
use mirage::actors::report_stream::{
    snapshot_streams, Chunk, Filter, ReportHub, Subscribe, Subscriber, STREAM_QUEUE,
};
use tokio::sync::mpsc;

fn listed(peer: &str) -> Option<serde_json::Value> {
    snapshot_streams()
        .into_iter()
        .find(|s| s["subscriber"]["peer"] == peer)
}

#[actix::test]
async fn a_stream_is_listed_while_its_client_is_there_and_stops_when_it_goes() {
    let hub = MeteredAddr::new(ReportHub::default().start(), "mirage.report_hub");
    let peer = "127.0.0.1:4242";
    let (tx, rx) = mpsc::channel::<Chunk>(STREAM_QUEUE);
    let sub = Subscriber {
        peer: peer.into(),
        client: "mirage-cli".into(),
        filter: Filter::default(),
    };
    hub.send(Subscribe {
        subscriber: sub,
        tx,
    })
    .await
    .unwrap()
    .unwrap();
    // `started` registers it; give the actor its first turn.
    let mut entry = None;
    for _ in 0..100 {
        entry = listed(peer);
        if entry.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let entry = entry.expect("stream listed after subscribing");
    assert_eq!(entry["kind"], "mirage.report_stream");
    assert_eq!(entry["subscriber"]["client"], "mirage-cli");
    assert_eq!(entry["queue"]["cap"], STREAM_QUEUE as u64);
    assert!(entry.get("mailbox_depth").is_some(), "{entry}");

    drop(rx);
    let mut gone = false;
    for _ in 0..300 {
        if listed(peer).is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "stream still listed 3 s after its client went");
}
