//! A standing intent's drift check compares content (issue 23 item 5): a kv value changed
//! behind Mirage's back is corrected, not only a deleted key. Runs config/plans/standing.toml
//! itself (with a 1 s keep instead of 30 s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[test]
fn a_changed_value_is_drift_and_is_corrected() {
    let dir = TempDir::new("standing-content");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let plan = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/plans/standing.toml"
    ))
    .unwrap();
    assert!(plan.contains("keep = \"30s\""), "{plan}");
    let plan = format!(
        "intent_id = \"flag\"\n{}",
        plan.replace("keep = \"30s\"", "keep = \"1s\"")
    );
    let id = m.submit(&plan);
    m.wait_status(&id, "satisfied", T);
    assert_eq!(g.kv_get("feature.x").as_deref(), Some("on"));
    // Drift: the value is changed (the key still exists, so a plain `get` check passes).
    let r = g.admin(json!({"action": "execute", "command": {"seed_selector": "seed.kv", "operation": "put", "args": {"key": "feature.x", "value": "off"}}}));
    assert_eq!(r["ok"], true, "{r}");
    let changed = Instant::now();
    let deadline = changed + T;
    loop {
        let s: Vec<String> = m
            .reports(&id)
            .iter()
            .map(|r| r["summary"].as_str().unwrap_or_default().to_owned())
            .collect();
        if s.iter()
            .any(|x| x.contains("corrected and satisfied again"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "drift never corrected: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = changed.elapsed();
    assert_eq!(g.kv_get("feature.x").as_deref(), Some("on"), "corrected");
    let (_, d) = m.get(&format!("/v1/intents/{id}"));
    let outs = d["plan"]["outputs"].as_array().cloned().unwrap_or_default();
    assert!(
        outs.iter()
            .any(|o| o["stdout"] == "off\n" && o["kind"] == "check"),
        "the check that saw the drift is in the output: {outs:?}"
    );
    assert_eq!(m.delete(&format!("/v1/intents/{id}")).0, 202);
    m.wait_status(&id, "withdrawn", T);
    eprintln!(
        "standing content drift (feature.x on → off) corrected {:.2}s after the change",
        took.as_secs_f64()
    );
}
