//! The Ghost admin boundary cannot deny or poison Mirage's work (issue 19 item 9): its
//! commands live in their own id space and fence state, and `execute*` needs a token unless
//! the operator opts out for an edgectl Mirage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::Engine;
use e2e::*;
use serde_json::json;
use shared::envelope::{Args, Command, Envelope};

const T: Duration = Duration::from_secs(40);

fn kv_plan(intent: &str, ghost: &str, value: &str) -> String {
    format!("intent_id=\"{intent}\"\nactor=\"t\"\ntarget_scope=\"ghost:{ghost}\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k\",value=\"{value}\"}}\nblocking=true\n")
}

fn frame(cmd: Command) -> String {
    let b = Envelope::Command(cmd)
        .to_frame(1)
        .and_then(|f| f.to_bytes())
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(&b)
}

fn kv_put(id: &str, ghost: &str, value: &str, lock_token: Option<u64>) -> Command {
    let mut args = Args::new();
    args.insert("key".into(), "k".into());
    args.insert("value".into(), value.into());
    Command {
        command_id: id.into(),
        intent_id: "intent.admin".into(),
        ghost_id: ghost.into(),
        seed_selector: "seed.kv".into(),
        operation: "put".into(),
        args,
        lock_token,
        ..Default::default()
    }
}

/// The command ids the Ghost ran from `source` ("session" = Mirage, "admin").
fn command_ids(g: &Ghost, source: &str) -> Vec<String> {
    let v = g.admin(json!({"action": "verification", "limit": 1000}));
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == source)
        .filter_map(|r| r["command_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn admin_commands_cannot_make_mirage_commands_duplicates_or_stale() {
    let dir = TempDir::new("admin-ns");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);

    // Intent "poison": step 1 sleeps, so its step 2's command id (which carries the
    // submission's generation) is known before Mirage sends it.
    let id = m.submit(
        "intent_id=\"poison\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={ms=\"3000\"}\n\
         [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"mirage\"}\nblocking=true\n"
    );
    let (_, d) = m.get(&format!("/v1/intents/{id}"));
    let generation = d["plan"]["generation"].as_u64().expect("plan.generation");
    let mirage_id = format!("cmd.poison.s{}.2.g1.1", mirage::plan::base36(generation));
    let mirage_id = mirage_id.as_str();
    // 1. That id sent first through the admin boundary (`execute`).
    let r = g.admin(json!({"action": "execute", "command": {
        "command_id": mirage_id, "intent_id": "poison",
        "seed_selector": "seed.kv", "operation": "put", "args": {"key": "k", "value": "admin"}}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["data"]["event"]["CommandID"], mirage_id,
        "the admin client sees its own id"
    );
    // 2. The same id through `execute_envelope`, and a fence of 2^63 on seed.kv.
    let r = g.admin(json!({"action": "execute_envelope",
        "command_frame": frame(kv_put(mirage_id, "g1", "admin", Some(1 << 63)))}));
    assert_eq!(r["ok"], true, "{r}");
    let ev = base64::engine::general_purpose::STANDARD
        .decode(r["data"]["event_frame"].as_str().unwrap())
        .unwrap();
    let ev = shared::wire::decode_one(&ev, &Default::default()).unwrap();
    let Ok(Envelope::Event(ev)) = Envelope::from_frame(&ev) else {
        panic!("no event in the reply")
    };
    assert_eq!(ev.command_id, mirage_id);
    assert_eq!(ev.event_id, format!("evt.{mirage_id}"));
    assert_eq!(g.kv_get("k").as_deref(), Some("admin"));

    // 3. Mirage's real command runs (not a "duplicate"), and its blocking step's lock token is
    //    not "stale".
    let v = m.wait_status(&id, "satisfied", T);
    assert_eq!(g.kv_get("k").as_deref(), Some("mirage"), "{v}");
    let ids = command_ids(&g, "session");
    assert!(
        ids.iter().any(|c| c == mirage_id),
        "the test pre-sent Mirage's real command id: {ids:?}"
    );
    // The envelope with the same id was a replay inside the admin space: one admin run.
    let admin = command_ids(&g, "admin");
    assert_eq!(
        admin.iter().filter(|c| *c == mirage_id).count(),
        1,
        "{admin:?}"
    );
    let locks = m.get("/v1/locks").1;
    eprintln!("locks after: {locks}");
    // A second blocking intent too: the 2^63 fence is nowhere in Mirage's space.
    let id = m.submit(&kv_plan("after", "g1", "again"));
    m.wait_status(&id, "satisfied", T);
    assert_eq!(g.kv_get("k").as_deref(), Some("again"));

    // 4. The admin path keeps fences of its own: a lower token there is stale.
    let r = g.admin(json!({"action": "execute_envelope",
        "command_frame": frame(kv_put("cmd.x.1", "g1", "old", Some(5)))}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("stale lock_token 5"),
        "{r}"
    );
    assert_eq!(g.kv_get("k").as_deref(), Some("again"));
    // Persisted, in its own file.
    let fences = std::fs::read_to_string(dir.path("g1/admin-fences.json")).unwrap();
    assert!(fences.contains(&(1u64 << 63).to_string()), "{fences}");
    // Lookups by the admin client's id find the admin execution, marked as such.
    let r = g.admin(json!({"action": "execution_by_command_id", "command_id": mirage_id}));
    assert_eq!(r["data"]["found"], true, "{r}");
    assert_eq!(r["data"]["execution"]["Source"], "admin", "{r}");
    assert_eq!(r["data"]["execution"]["CommandID"], mirage_id, "{r}");
}

#[test]
fn execute_needs_a_token_unless_the_operator_opts_out() {
    let dir = TempDir::new("admin-token");
    let m = Mirage::start(&dir, 0, "");
    // No token configured: status still answers, execute* is refused, naming the settings.
    let g = Ghost::start_with_admin(&dir, "g1", &m.session, "", "token = \"\"");
    m.wait_ghosts(1, T);
    assert_eq!(g.admin(json!({"action": "status"}))["ok"], true);
    let cmd =
        json!({"seed_selector": "seed.kv", "operation": "put", "args": {"key": "k", "value": "v"}});
    let r = g.admin(json!({"action": "execute", "command": cmd}));
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("admin.token") && e.contains("admin.execute_without_token"),
        "{e}"
    );
    let r = g.admin(json!({"action": "execute_envelope",
        "command_frame": frame(kv_put("cmd.y.1", "g1", "v", None))}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("admin.token"), "{r}");
    assert_eq!(g.executed(), 0, "nothing ran");
    assert!(g
        .proc
        .log_text()
        .contains("admin boundary has no admin.token"));

    // With a token: a wrong one is refused, the right one runs.
    let t = Ghost::start_with_admin(&dir, "g2", &m.session, "", "token = \"s3cret\"");
    let r = t.admin(json!({"action": "execute", "command": cmd, "token": "wrong"}));
    assert!(r["error"].as_str().unwrap().contains("unauthorized"), "{r}");
    let r = t.admin(json!({"action": "execute", "command": cmd}));
    assert_eq!(r["ok"], true, "{r}");

    // The edgectl opt-out: no token, execute allowed (loopback only), and an edgectl-style
    // Mirage (no token) drives the Ghost through execute_envelope.
    let edge_dir = TempDir::new("admin-edge");
    let cfg = edge_dir.path("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "ghost_id = \"edge\"\ndata_dir = \"{}\"\n[mirage]\npolicy = \"headless\"\n[admin]\nlisten = \"127.0.0.1:0\"\nexecute_without_token = true\n",
            edge_dir.path("edge").display()
        ),
    )
    .unwrap();
    let edge = Proc::spawn(
        &bin("ghost"),
        &["serve", "--config", cfg.to_str().unwrap()],
        edge_dir.path("edge.log"),
    );
    let edge_admin = edge.field("admin");
    let m2 = Mirage::start(
        &edge_dir,
        0,
        &format!("[[ghost_admin]]\nid = \"edge\"\naddr = \"{edge_admin}\"\n"),
    );
    m2.wait_ghosts(1, T);
    let id = m2.submit(&kv_plan("edge", "edge", "via-admin"));
    m2.wait_status(&id, "satisfied", T);
}
