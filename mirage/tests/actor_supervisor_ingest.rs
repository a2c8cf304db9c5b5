#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
//! Invariant: through the Supervisor actor (no socket, a fake session actor behind a
//! `SessionHandle`), a submitted intent's command reaches the Ghost's session, its event is
//! acked once the plan has it, and the same event sent again gets the same ack without moving
//! the plan twice.

use std::time::Duration;

use actix::prelude::*;
use actorkit::metrics::MeteredAddr;
use mirage::actors::protocol::{Close, IngestBatch, Register, SendCommand, SessionHandle};
use mirage::actors::supervisor::operator::Submit;
use mirage::actors::supervisor::queries::GetIntent;
use mirage::Mirage;
use shared::envelope::{AckStatus, Command, Event, Outcome};
use shared::handshake::{Registration, SeedInfo, CAP_SESSION_COMMAND};
use tokio::sync::mpsc;

/// Stands in for a `GhostSession`: hands every command it is sent to the test.
struct FakeSession(mpsc::UnboundedSender<Command>);

impl Actor for FakeSession {
    type Context = Context<Self>;
}

impl Handler<SendCommand> for FakeSession {
    type Result = ();
    fn handle(&mut self, m: SendCommand, _: &mut Context<Self>) {
        let _ = self.0.send(m.0);
    }
}

impl Handler<Close> for FakeSession {
    type Result = ();
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

actorkit::metered!(FakeSession, SendCommand);
actorkit::metered!(FakeSession, Close);

#[actix::test]
async fn a_command_reaches_the_session_and_a_repeated_event_gets_the_same_ack() {
    let dir = std::env::temp_dir().join(format!("mirage-actor-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = Mirage::start(Mirage::ephemeral_config(&dir)).await.unwrap();
    let sup = run.supervisor.clone();

    let (tx, mut commands) = mpsc::unbounded_channel();
    let fake = MeteredAddr::new(FakeSession(tx).start(), "test.fake_session");
    let reg = Registration {
        ghost_id: "g1".into(),
        peer_identity: "g1".into(),
        capabilities: vec![CAP_SESSION_COMMAND.into()],
        seed_list: Some(vec![SeedInfo {
            id: "seed.kv".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let ack = sup
        .send(Register {
            reg,
            session: SessionHandle {
                commands: fake.recipient(),
                close: fake.recipient(),
            },
            peer: "in-process".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.session_id.as_deref(), Some("g1#1"));

    let intent = mirage::intent::parse(
        "intent_id=\"i1\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\n",
        || "unused".into(),
    )
    .unwrap();
    sup.send(Submit(intent)).await.unwrap().unwrap();
    let cmd = tokio::time::timeout(Duration::from_secs(10), commands.recv())
        .await
        .expect("the command reached the session")
        .unwrap();
    assert_eq!(cmd.intent_id, "i1");

    let ev = Event::new(
        "e1",
        cmd.command_id.clone(),
        "i1",
        "g1",
        cmd.seed_selector.clone(),
        Outcome::Success,
    );
    let first = sup
        .send(IngestBatch {
            ghost_id: "g1".into(),
            events: vec![(7, ev.clone())],
        })
        .await
        .unwrap();
    let (msg_id, a) = first.into_iter().next().unwrap();
    let a = a.expect("acked once the plan has it");
    assert_eq!((msg_id, a.ack_status), (7, AckStatus::Accepted));

    // The Ghost missed the ack and sends the event again, later (a fresh ack would carry
    // another timestamp).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let dups = mirage::metrics::EVENTS_DUPLICATE.get();
    let again = sup
        .send(IngestBatch {
            ghost_id: "g1".into(),
            events: vec![(8, ev)],
        })
        .await
        .unwrap();
    let (msg_id, b) = again.into_iter().next().unwrap();
    assert_eq!((msg_id, b.as_ref()), (8, Some(&a)), "the stored ack");
    assert_eq!(mirage::metrics::EVENTS_DUPLICATE.get(), dups + 1);

    let d = sup.send(GetIntent("i1".into())).await.unwrap().unwrap();
    assert_eq!(d.summary.status, "satisfied", "{:?}", d.summary);
    assert_eq!(d.summary.steps_done, 1);
    let ends = d
        .reports
        .iter()
        .filter(|r| r.completion_state == shared::envelope::CompletionState::Satisfied)
        .count();
    assert_eq!(ends, 1, "the repeated event moved nothing: {:?}", d.reports);
    assert!(
        commands.try_recv().is_err(),
        "no second command was sent for the step"
    );

    run.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
