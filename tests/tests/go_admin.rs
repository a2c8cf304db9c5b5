//! Mirage driving a Ghost through its admin boundary the way an edgectl (Go) Ghost answers:
//! the event frame of a failed command carries no seed result (its stderr and exit code are
//! only in `execution_by_command_id`), and a command_id it has already run is refused with
//! "ghost: duplicate command_id". The peer here is scripted to those documented answers
//! (reference/edgectl-behaviour.md §4.1); Mirage and its real TCP client are the ones tested.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use e2e::{Mirage, TempDir};
use serde_json::{json, Value};
use shared::envelope::{Envelope, Event, Outcome};
use shared::wire::{decode_one, Limits};

const T: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Peer {
    /// command_id → (outcome, stderr, exit code): what this "Ghost" has on record.
    ran: Mutex<std::collections::HashMap<String, (String, String, u32)>>,
    execute_calls: AtomicUsize,
    lookups: AtomicUsize,
    stop: AtomicBool,
}

fn event_frame(cmd_id: &str, intent: &str, seed: &str, outcome: Outcome) -> String {
    // edgectl's event: ids and outcome only, no seed result fields.
    let mut e = Event::new(
        format!("evt.{cmd_id}"),
        cmd_id,
        intent,
        "edge",
        seed,
        outcome,
    );
    e.timestamp_ms = Some(shared::now_ms());
    let bytes = Envelope::Event(e)
        .to_frame(1)
        .and_then(|f| f.to_bytes())
        .unwrap();
    B64.encode(bytes)
}

fn answer(peer: &Peer, req: &Value) -> Value {
    match req["action"].as_str().unwrap_or("") {
        "status" => json!({"ok": true, "data": {"GhostID": "edge", "Radiating": true}}),
        "list_seeds" => json!({"ok": true, "data": [
            {"ID": "seed.kv", "Name": "seed.kv", "Operations": [{"Name": "put"}, {"Name": "get"}]}
        ]}),
        "execute_envelope" => {
            peer.execute_calls.fetch_add(1, Ordering::SeqCst);
            let raw = B64.decode(req["command_frame"].as_str().unwrap()).unwrap();
            let f = decode_one(&raw, &Limits::default()).unwrap();
            let Ok(Envelope::Command(c)) = Envelope::from_frame(&f) else {
                return json!({"ok": false, "error": "not a command"});
            };
            let mut ran = peer.ran.lock().unwrap();
            if ran.contains_key(&c.command_id)
                || c.args.get("key").map(String::as_str) == Some("pre")
            {
                // Already run (here: "pre" stands for a command run before a lost reply).
                ran.entry(c.command_id.clone())
                    .or_insert(("success".into(), String::new(), 0));
                return json!({"ok": false, "error": "ghost: duplicate command_id"});
            }
            let outcome = if c.operation == "get" {
                ran.insert(
                    c.command_id.clone(),
                    ("error".into(), "missing key=nope\n".into(), 1),
                );
                Outcome::Error
            } else {
                ran.insert(c.command_id.clone(), ("success".into(), String::new(), 0));
                Outcome::Success
            };
            json!({"ok": true, "data": {"event_frame":
                event_frame(&c.command_id, &c.intent_id, &c.seed_selector, outcome)}})
        }
        "execution_by_command_id" => {
            peer.lookups.fetch_add(1, Ordering::SeqCst);
            let id = req["command_id"].as_str().unwrap_or("");
            match peer.ran.lock().unwrap().get(id) {
                None => json!({"ok": true, "data": {"found": false, "execution": {}}}),
                Some((outcome, stderr, exit)) => json!({"ok": true, "data": {"found": true,
                    "execution": {
                        "CommandID": id, "GhostID": "edge", "SeedSelector": "seed.kv",
                        "SeedResult": {"SeedID": "seed.kv", "Status": if outcome == "success" {"ok"} else {"error"},
                            "Stdout": "", "Stderr": B64.encode(stderr), "ExitCode": exit},
                        "Event": {"EventID": format!("evt.{id}"), "CommandID": id, "GhostID": "edge",
                            "SeedID": "seed.kv", "Outcome": outcome, "TimestampMS": shared::now_ms()},
                        "Outcome": outcome, "Phase": "complete"}}}),
            }
        }
        other => json!({"ok": false, "error": format!("unknown action {other}")}),
    }
}

fn serve(peer: Arc<Peer>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !peer.stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((s, _)) => {
                    let peer = peer.clone();
                    std::thread::spawn(move || one(&peer, s));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    addr
}

// One request per connection, as edgectl's own admin clients do.
fn one(peer: &Peer, s: TcpStream) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    let mut w = s;
    let _ = writeln!(w, "{}", answer(peer, &req));
}

fn intent(id: &str, op: &str, key: &str) -> String {
    format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:edge\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"{op}\"\nargs={{key=\"{key}\",value=\"v\"}}\n"
    )
}

#[test]
fn a_go_ghosts_failure_reason_and_a_duplicate_refusal_reach_the_report() {
    let dir = TempDir::new("go-admin");
    let peer = Arc::new(Peer::default());
    let addr = serve(peer.clone());
    let m = Mirage::start(
        &dir,
        0,
        &format!("[[ghost_admin]]\nid = \"edge\"\naddr = \"{addr}\"\n"),
    );
    m.wait_ghosts(1, T);
    let t0 = std::time::Instant::now();

    // A failing step names the seed's own words and exit code, not "seed reported an error".
    let id = m.submit(&intent("go-fail", "get", "nope"));
    let d = m.wait_status(&id, "failed", T);
    let failure = d["plan"]["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("missing key=nope") && failure.contains("exit code 1"),
        "the failure carries the Go Ghost's stderr and exit code: {d}"
    );
    assert!(peer.lookups.load(Ordering::SeqCst) >= 1, "looked up once");

    // A command_id the Go Ghost has already run: its recorded outcome is used, the step is
    // satisfied, and the command is not run again (one execute_envelope, one lookup).
    let before = peer.execute_calls.load(Ordering::SeqCst);
    let id = m.submit(&intent("go-dup", "put", "pre"));
    m.wait_status(&id, "satisfied", T);
    assert_eq!(peer.execute_calls.load(Ordering::SeqCst), before + 1);
    // An ordinary success needs no lookup.
    let lookups = peer.lookups.load(Ordering::SeqCst);
    let id = m.submit(&intent("go-ok", "put", "k"));
    m.wait_status(&id, "satisfied", T);
    assert_eq!(
        peer.lookups.load(Ordering::SeqCst),
        lookups,
        "no lookup on success"
    );
    eprintln!("three intents in {:?}", t0.elapsed());
    peer.stop.store(true, Ordering::SeqCst);
}
