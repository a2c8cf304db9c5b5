#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
//! Invariant: a report subscriber that does not read holds at most `STREAM_QUEUE` items in
//! Mirage, and when it reads again the first thing after what was queued is one gap marker
//! naming exactly the reports it missed. The real `ReportHub` and `ReportStream` actors, in
//! process, no sockets.

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actorkit::metrics::MeteredAddr;
use mirage::actors::report_stream::{
    Chunk, Filter, Publish, ReportHub, Subscribe, Subscriber, STREAM_QUEUE,
};
use mirage::history::ReportRecord;
use shared::envelope::{CompletionState, Phase};
use tokio::sync::mpsc;

fn report(seq: u64, intent: &str) -> Arc<ReportRecord> {
    Arc::new(ReportRecord {
        seq,
        intent_id: intent.into(),
        phase: Phase::InProgress,
        completion_state: CompletionState::InProgress,
        summary: format!("report {seq}"),
        step: None,
        steps_total: 1,
        steps_done: 0,
        command_id: None,
        event_id: None,
        ghost_id: None,
        outcome: None,
        timestamp_ms: seq,
    })
}

fn text(c: &Chunk) -> String {
    String::from_utf8_lossy(&c.bytes).into_owned()
}

#[actix::test]
async fn a_subscriber_that_never_reads_is_bounded_and_gets_one_gap_marker() {
    let hub = MeteredAddr::new(ReportHub::default().start(), "mirage.report_hub");
    let (tx, mut rx) = mpsc::channel::<Chunk>(STREAM_QUEUE);
    let sub = Subscriber {
        peer: "127.0.0.1:1".into(),
        client: "test".into(),
        filter: Filter {
            intent: Some("intent.a".into()),
        },
    };
    hub.send(Subscribe {
        subscriber: sub,
        tx,
    })
    .await
    .unwrap()
    .unwrap();

    // Far more than the queue holds, interleaved with another intent the filter drops at
    // the hub.
    let total = (STREAM_QUEUE * 4) as u64;
    for seq in 1..=total {
        hub.do_send(Publish(report(seq, "intent.a")));
        hub.do_send(Publish(report(100_000 + seq, "intent.b")));
    }
    // Give the actors time to deliver everything they are going to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.len() <= STREAM_QUEUE, "queue grew to {}", rx.len());

    // Read what was queued: reports of intent.a only, in order.
    let mut seqs = Vec::new();
    while let Ok(c) = rx.try_recv() {
        assert!(
            text(&c).contains("\"intent_id\":\"intent.a\""),
            "{}",
            text(&c)
        );
        seqs.push(c.seq.unwrap());
    }
    assert_eq!(seqs.len(), STREAM_QUEUE);
    assert_eq!(seqs, (1..=STREAM_QUEUE as u64).collect::<Vec<_>>());

    // Now there is room: within a stream tick the gap marker arrives, naming the rest.
    let gap = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("gap marker within 5 s")
        .unwrap();
    assert_eq!(gap.seq, None);
    let missed = total - STREAM_QUEUE as u64;
    assert_eq!(
        text(&gap),
        format!(
            "event: gap\ndata: {{\"missed\":{missed},\"first_seq\":{},\"last_seq\":{total}}}\n\n",
            STREAM_QUEUE + 1
        )
    );
    // And the next report after the gap is delivered normally.
    hub.do_send(Publish(report(total + 1, "intent.a")));
    let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("next report")
        .unwrap();
    assert_eq!(next.seq, Some(total + 1));
}
