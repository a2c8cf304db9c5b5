//! Issue 12: the standing intent that keeps a raft-node cluster at its size
//! (config/plans/raft-keep.toml, `raft.keep`). A real Mirage and four real Ghosts hosting
//! raft-node: raft-cluster.toml forms a 3-member cluster on three of them, the fourth comes
//! up as a spare, the keeper is submitted, and the leader's Ghost is SIGKILLed and not
//! restarted. Mirage must, without help, start a member on the spare, join it as a voter
//! and remove the dead member (each a `corrective` report naming them), and the data written
//! before the kill must be readable through the new member.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(40);
const SEEDS: &str = "seeds = [\"seed.flow\", \"raft-node\"]";

fn exec(g: &Ghost, op: &str, args: Value) -> Value {
    g.admin(json!({"action": "execute", "command": {
        "seed_selector": "raft-node", "operation": op, "args": args}}))
}

fn ok(r: &Value) -> bool {
    r["data"]["event"]["Outcome"] == "success"
}

fn observed(m: &Mirage, ghost: &str) -> Value {
    m.get(&format!("/v1/ghosts/{ghost}")).1["observed"]["raft-node"]["state"].clone()
}

fn plan(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../config/plans/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn wait_for(what: &str, m: &Mirage, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < within,
            "timed out waiting for {what}\nmirage log tail:\n{}",
            tail(&m.proc.log_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

#[test]
fn a_member_whose_ghost_is_gone_is_replaced_on_a_spare_ghost_and_removed() {
    let _ = bin("ghost"); // the binaries are built before the clock starts
    let started = Instant::now();
    let dir = TempDir::new("raft-keep");
    let m = Mirage::start(&dir, 0, "");
    let ids = ["g1", "g2", "g3"];
    let mut gs: Vec<Option<Ghost>> = ids
        .iter()
        .map(|id| Some(Ghost::start(&dir, id, &m.session, SEEDS)))
        .collect();
    m.wait_ghosts(3, T);
    let port = free_port();
    let id = m.submit(&plan("raft-cluster.toml").replace("7101", &port.to_string()));
    m.wait_status(&id, "satisfied", Duration::from_secs(60));

    // The spare comes up after the cluster formed: it hosts raft-node but runs no member.
    let g4 = Ghost::start(&dir, "g4", &m.session, SEEDS);
    m.wait_ghosts(4, T);
    // The keeper, re-checking every second, a member dead after 3 s gone.
    let keeper = plan("raft-keep.toml")
        .replace("keep = \"5s\"", "keep = \"1s\"")
        .replace("gone_after = \"10s\"", "gone_after = \"3s\"");
    assert!(keeper.contains("gone_after = \"3s\""), "{keeper}");
    let kid = m.submit(&keeper);
    m.wait_status(&kid, "satisfied", T);
    let summaries = |m: &Mirage| -> Vec<(String, String)> {
        m.reports(&kid)
            .iter()
            .map(|r| {
                (
                    r["completion_state"].as_str().unwrap_or("").to_owned(),
                    r["summary"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };

    // Data written before the kill.
    let mut leader = None;
    wait_for("a leader observed by Mirage", &m, T, || {
        leader = ids.iter().position(|g| observed(&m, g)["role"] == "leader");
        leader.is_some()
    });
    let l = leader.unwrap();
    let r = exec(
        gs[(l + 1) % 3].as_ref().unwrap(),
        "put",
        json!({"key": "before", "value": "kill"}),
    );
    assert!(ok(&r), "{r}");
    // A healthy cluster: the keeper changed nothing (no drift, g4 runs no member).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        summaries(&m).iter().all(|(st, _)| st != "corrective"),
        "{:?}",
        summaries(&m)
    );
    assert!(observed(&m, "g4").is_null(), "{}", observed(&m, "g4"));

    // SIGKILL of the leader's Ghost, not restarted.
    let victim = ids[l];
    let dead_id = observed(&m, victim)["node_id"].as_str().unwrap().to_owned();
    gs[l].as_mut().unwrap().proc.sigkill();
    let killed = Instant::now();
    let survivors: Vec<&str> = ids.iter().copied().filter(|g| *g != victim).collect();

    // g4 becomes a voter...
    let joined = wait_for("g4 to be a voter", &m, T, || {
        observed(&m, "g4")["voter"] == "true"
    });
    let dead_tag = format!("{dead_id}:voter@");
    // ...and the dead member leaves: 3 voters, none of them the dead one, seen by every
    // member left.
    wait_for("the dead member removed", &m, T, || {
        survivors.iter().chain(["g4"].iter()).all(|g| {
            let o = observed(&m, g);
            o["voters"] == "3"
                && o["voter"] == "true"
                && !o["members"]
                    .as_str()
                    .unwrap_or(dead_tag.as_str())
                    .contains(&dead_tag)
        })
    });
    let removed = killed.elapsed();

    // The corrections are `corrective` reports naming the dead member, its Ghost and g4.
    let reports = summaries(&m);
    let corrective: Vec<&String> = reports
        .iter()
        .filter(|(st, _)| st == "corrective")
        .map(|(_, s)| s)
        .collect();
    let named = |what: &str| {
        corrective
            .iter()
            .any(|s| s.contains(&format!("member {dead_id} on {victim}")) && s.contains(what))
    };
    assert!(named("starting a replacement member on g4"), "{reports:?}");
    assert!(named("g4 joins as its replacement"), "{reports:?}");
    assert!(named(&format!("removing member {dead_id}")), "{reports:?}");
    assert!(
        reports
            .iter()
            .any(|(_, s)| s.contains("corrected and satisfied again")),
        "{reports:?}"
    );
    assert_eq!(
        m.get(&format!("/v1/intents/{kid}")).1["summary"]["status"],
        "satisfied"
    );

    // Writes succeed through the new member, and it serves what was written before.
    let r = exec(&g4, "put", json!({"key": "after", "value": "replaced"}));
    assert!(ok(&r), "{r}");
    let r = exec(&g4, "get", json!({"key": "before"}));
    assert!(ok(&r), "{r}");
    assert_eq!(seed_text(&r, "Stdout").trim_end(), "kill");
    let other = gs[ids.iter().position(|g| *g == survivors[0]).unwrap()]
        .as_ref()
        .unwrap();
    let r = exec(other, "get", json!({"key": "after"}));
    assert_eq!(seed_text(&r, "Stdout").trim_end(), "replaced", "{r}");

    // Withdrawn, the keeper stops.
    assert_eq!(m.delete(&format!("/v1/intents/{kid}")).0, 202);
    m.wait_status(&kid, "withdrawn", T);
    eprintln!(
        "raft.keep: leader's Ghost {victim} (member {dead_id}) SIGKILLed; g4 a voter after {} ms, the dead member removed after {} ms (gone_after 3 s, keep 1 s); test {} ms",
        joined.as_millis(),
        removed.as_millis(),
        started.elapsed().as_millis()
    );
    for s in &corrective {
        eprintln!("  corrective: {s}");
    }
}
