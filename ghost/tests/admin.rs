//! The admin boundary answers edgectl's request shapes (edgectl-behaviour.md §4.1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use shared::envelope::{Envelope, Outcome};

fn vector(name: &str) -> Value {
    let p = format!("{}/../../shared/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap()
}

#[test]
fn admin_actions_in_edgectl_shapes() {
    let dir = TempDir::new("admin");
    let dead = format!("127.0.0.1:{}", free_port());
    // As deployed for an edgectl Mirage, which cannot send a token.
    let cfg = config(&dir.0, "ghost.remote", &dead, "")
        .replace("policy = \"auto\"", "policy = \"headless\"")
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nexecute_without_token = true",
        );
    let mut g = GhostProc::start(&dir.0, &cfg);
    let mut a = g.admin();

    let st = a.call(json!({"Action": "status"}));
    assert_eq!(st["ok"], true);
    assert_eq!(st["data"]["GhostID"], "ghost.remote");
    assert_eq!(st["data"]["Phase"], "radiating");
    assert_eq!(st["data"]["SeedCount"], 3);

    let seeds = a.call(json!({"action": "list_seeds"}));
    let ids: Vec<&str> = seeds["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["seed.flow", "seed.fs", "seed.kv"]);
    assert_eq!(seeds["data"][0]["Name"], "Flow");
    assert_eq!(
        seeds["data"][0]["Description"],
        "Deterministic control-flow seed"
    );

    let r = a.call(json!({"action": "execute", "command": {
        "seed_selector": "seed.flow", "operation": "echo", "args": {"msg": "hi"}}}));
    assert_eq!(r["ok"], true, "{r}");
    let ev = &r["data"]["event"];
    assert_eq!(ev["Outcome"], "success");
    assert_eq!(ev["GhostID"], "ghost.remote");
    let cid = ev["CommandID"].as_str().unwrap().to_owned();
    assert!(cid.starts_with("cmd.ghost.remote."), "{cid}");
    assert_eq!(ev["EventID"], format!("evt.{cid}"));
    let stdout = B64
        .decode(
            r["data"]["execution"]["SeedResult"]["Stdout"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(stdout, b"flow echo: msg=hi\n");
    assert_eq!(r["data"]["execution"]["ExecutionID"], format!("exec.{cid}"));

    // A failing seed operation still answers ok with an error event; a refused one says why.
    let r = a.call(json!({"action": "execute", "command": {"seed_selector": "seed.flow", "operation": "fail"}}));
    assert_eq!(r["data"]["event"]["Outcome"], "error");
    let r = a.call(
        json!({"action": "execute", "command": {"seed_selector": "seed.nope", "operation": "x"}}),
    );
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("unknown seed"));

    let r = a.call(json!({"action": "execution_by_command_id", "command_id": cid}));
    assert_eq!(r["data"]["found"], true);
    assert_eq!(r["data"]["execution"]["Operation"], "echo");
    let r = a.call(json!({"action": "execution_by_command_id", "command_id": "nope"}));
    assert_eq!(
        (r["ok"].clone(), r["data"]["found"].clone()),
        (json!(true), json!(false))
    );

    let r = a.call(json!({"action": "recent_events", "limit": 2}));
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    let r = a.call(json!({"action": "verification"}));
    let v = &r["data"][0];
    assert_eq!(v["command_message_type"], 2);
    assert_eq!(v["event_message_type"], 5);
    assert!(v["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req.ghost.remote."));

    // execute_envelope with the Go peer's command frame.
    let vec = vector("frame.command.json");
    let frame = shared::hex::decode(vec["frame_hex"].as_str().unwrap().as_bytes()).unwrap();
    let r = a.call(json!({"action": "execute_envelope", "command_frame": B64.encode(&frame)}));
    assert_eq!(r["ok"], true, "{r}");
    let ev_bytes = B64
        .decode(r["data"]["event_frame"].as_str().unwrap())
        .unwrap();
    let f = shared::wire::decode_one(&ev_bytes, &Default::default()).unwrap();
    assert_eq!(
        f.message_id,
        vec["message_id"].as_u64().unwrap(),
        "message_id echoed"
    );
    let Envelope::Event(e) = Envelope::from_frame(&f).unwrap() else {
        panic!()
    };
    assert_eq!(e.command_id, "cmd.intent.lab.1.1");
    assert_eq!(e.intent_id, "intent.lab.1");
    assert_eq!(e.outcome, Outcome::Success);
    assert_eq!(
        e.stdout.as_deref(),
        Some(&b"flow echo: b=2,msg=hello\n"[..])
    );

    // Bad input answers with a reason and keeps the connection.
    let r = a.call(json!({"action": "execute_envelope", "command_frame": "!!"}));
    assert_eq!(r["ok"], false);
    let r = a.call(json!({"action": "frobnicate"}));
    assert_eq!(r["error"], "unknown action: frobnicate");
    let mut raw = std::net::TcpStream::connect(g.admin.as_deref().unwrap()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rd = BufReader::new(raw.try_clone().unwrap());
    raw.write_all(b"{not json\n").unwrap();
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":false"), "{line}");
    let big = vec![b'x'; 2 * 1024 * 1024];
    raw.write_all(&big).unwrap();
    raw.write_all(b"\n{\"action\":\"status\"}\n").unwrap();
    line.clear();
    rd.read_line(&mut line).unwrap();
    assert!(line.contains("exceeds"), "{line}");
    line.clear();
    rd.read_line(&mut line).unwrap();
    assert!(
        line.contains("ghost.remote"),
        "connection still serves: {line}"
    );

    assert_eq!(
        a.call(json!({"action": "bind_mirage", "mirage_id": "mirage.a"}))["ok"],
        true
    );
    let st = a.call(json!({"action": "status"}));
    assert_eq!(st["data"]["MirageLink"], "admin_route");

    // spawn_ghost starts a real child process with a derived id and its own admin address.
    let child_admin = format!("127.0.0.1:{}", free_port());
    let r = a.call(json!({"action": "spawn_ghost", "spawn": {"TargetName": "edge-1", "AdminAddr": child_admin}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["data"]["ghost_id"], "ghost.remote.edge.1");
    let deadline = Instant::now() + Duration::from_secs(15);
    let child_status = loop {
        if let Ok(s) = std::net::TcpStream::connect(&child_admin) {
            drop(s);
            break Admin::connect(&child_admin).call(json!({"action": "status"}));
        }
        assert!(Instant::now() < deadline, "child never listened");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(child_status["data"]["GhostID"], "ghost.remote.edge.1");
    let r = a.call(json!({"action": "spawn_ghost", "spawn": {"target_name": "edge-1", "admin_addr": child_admin}}));
    assert!(r["error"].as_str().unwrap().contains("already exists"));
    let r = a.call(
        json!({"action": "spawn_ghost", "spawn": {"target_name": "x", "admin_addr": "0.0.0.0:1"}}),
    );
    assert!(r["error"].as_str().unwrap().contains("not loopback"));

    // Stopping the parent stops its children.
    drop(a);
    assert_eq!(g.sigterm(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(&child_admin).is_err(),
        "child still running"
    );
}
