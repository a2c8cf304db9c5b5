//! Issue 22 item 1: a reused intent_id runs afresh. Command ids carry a per-submission
//! generation, so a Ghost's dedupe window cannot answer a new submission with the stored
//! event of an old one; the generation is persisted, so a re-send of the same submission
//! after a Mirage restart keeps its id and is still deduped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// Small enough that Mirage forgets a finished intent (and its event ids) after a few more.
const SMALL: &str = "[limits]\nfinished_intents = 5\nevent_window = 5\n";

fn write_version(id: &str, v: u32) -> String {
    format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"deploy\"\n\
         [[step]]\nseed=\"seed.fs\"\noperation=\"write\"\nargs={{path=\"version\",content=\"version={v}\"}}\ntimeout=\"20s\"\n"
    )
}

/// Command ids of the events the Ghost sent for this intent_id.
fn command_ids(g: &Ghost, id: &str) -> Vec<String> {
    let v = g.admin(json!({"action": "recent_events", "limit": 1000}));
    let mut ids: Vec<String> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["IntentID"] == id)
        .filter_map(|e| e["CommandID"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn a_reused_intent_id_runs_afresh_with_new_command_ids() {
    let dir = TempDir::new("reuse");
    let m = Mirage::start(&dir, 0, SMALL);
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let file = dir.path("g1/fs/version");

    let id = m.submit(&write_version("deploy-42", 1));
    m.wait_status(&id, "satisfied", T);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "version=1");
    let first = command_ids(&g, &id);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(g.executed(), 1);

    // While Mirage still remembers it, the id is taken.
    let (st, v) = m.post("/v1/intents", &write_version("deploy-42", 2));
    assert_eq!(st, 409, "{v}");

    for i in 0..8 {
        let other = m.submit(&format!(
            "intent_id=\"other-{i}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
             [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k{i}\",value=\"v\"}}\n"
        ));
        m.wait_status(&other, "satisfied", T);
    }
    let (st, _) = m.get("/v1/intents/deploy-42");
    assert_eq!(st, 404, "Mirage has forgotten the first deploy-42");

    // The same id again, writing version=2: it must run, not replay the old event.
    let submitted = Instant::now();
    let id = m.submit(&write_version("deploy-42", 2));
    let d = m.wait_status(&id, "satisfied", T);
    // `intent show` is this submission's: one acceptance, one satisfied, none of the first's.
    let reports = d["reports"].as_array().unwrap();
    for what in ["accepted", "satisfied"] {
        assert_eq!(
            reports
                .iter()
                .filter(|r| r["summary"].as_str().unwrap_or_default().contains(what))
                .count(),
            1,
            "{what}: {reports:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "version=2",
        "the resubmission ran"
    );
    assert_eq!(g.executed(), 10, "1 + 8 + the resubmission, each run once");
    let second: Vec<String> = command_ids(&g, &id)
        .into_iter()
        .filter(|c| !first.contains(c))
        .collect();
    assert_eq!(
        second.len(),
        1,
        "the resubmission's command id is new: first {first:?}, now {:?}",
        command_ids(&g, &id)
    );
    eprintln!(
        "reuse: deploy-42 resubmitted after 8 other intents: version=2 written, satisfied in {:.2}s, \
         command ids {first:?} then {second:?}",
        submitted.elapsed().as_secs_f64()
    );
}

#[test]
fn the_same_submission_keeps_its_command_ids_across_a_mirage_restart() {
    let dir = TempDir::new("reuse-restart");
    let mut m = Mirage::start(&dir, 0, SMALL);
    let session_port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let file = dir.path("g1/fs/once.log");
    let lines = || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count()
    };
    // The append happens at once; its answer is held 3 s, long enough to kill Mirage.
    let id = m.submit(
        "intent_id=\"once\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.fs\"\noperation=\"append\"\nargs={path=\"once.log\",content=\"x\\n\",hold_ms=\"3000\"}\ntimeout=\"30s\"\n",
    );
    wait_until("the append", T, || lines() == 1);
    let (_, before) = m.get(&format!("/v1/intents/{id}"));
    let sent: Vec<String> = before["plan"]["step"]["outstanding"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(sent.len(), 1, "{before}");
    m.proc.sigkill();

    let m = Mirage::start(&dir, session_port, SMALL);
    let d = m.wait_status(&id, "satisfied", T);
    assert_eq!(
        command_ids(&g, &id),
        sent,
        "one command, the id sent before the restart"
    );
    assert_eq!(
        lines(),
        1,
        "the re-sent command was deduped, not run again: {d}"
    );
    assert_eq!(g.executed(), 1, "the Ghost ran it once");
    eprintln!(
        "reuse: Mirage SIGKILLed mid-append, restarted: re-sent {} deduped, 1 line",
        sent[0]
    );
}
