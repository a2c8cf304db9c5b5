//! Fan-out over `ghost:*` with a Ghost offline (issue 23 item 2): the intent detail gives
//! per-Ghost results (done / failed / offline-skipped …), and the plan's `offline` key says
//! whether an offline Ghost is skipped (default, now said), fails the step, or is caught up
//! when it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn plan(id: &str, offline: &str) -> String {
    format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n{offline}\
         [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"{id}\",value=\"v\"}}\n"
    )
}

fn results(d: &Value) -> Vec<(String, String)> {
    d["plan"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["ghost"].as_str().unwrap_or_default().to_owned(),
                r["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pair(g: &str, r: &str) -> (String, String) {
    (g.to_owned(), r.to_owned())
}

#[test]
fn offline_ghosts_are_reported_and_the_plan_says_what_happens_to_them() {
    let dir = TempDir::new("fanout-offline");
    let m = Mirage::start(&dir, 0, "");
    let g1 = Ghost::start(&dir, "g1", &m.session, "");
    let mut g2 = Ghost::start(&dir, "g2", &m.session, "");
    m.wait_ghosts(2, T);
    g2.proc.sigterm();
    wait_for("g2 offline", || {
        m.get("/v1/ghosts/g2").1["connected"] == false
    });

    // Default (skip): satisfied, but the detail and the summary say g2 was skipped.
    let id = m.submit(&plan("skip", ""));
    let d = m.wait_status(&id, "satisfied", T);
    assert_eq!(
        results(&d),
        [pair("g1", "done"), pair("g2", "offline_skipped")],
        "{d}"
    );
    let said = d["summary"]["last_summary"].as_str().unwrap_or_default();
    assert!(said.contains("1 offline Ghost(s) skipped: g2"), "{said}");

    // offline = "fail": the step fails on g2.
    let id = m.submit(&plan("fail", "offline=\"fail\"\n"));
    let d = m.wait_status(&id, "failed", T);
    let failure = d["plan"]["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("on g2: offline when the step was placed"),
        "{failure}"
    );
    assert_eq!(
        g1.kv_get("fail").as_deref(),
        Some("v"),
        "ran on the connected one"
    );

    // offline = "catch_up": satisfied for g1, run on g2 once it is back.
    let id = m.submit(&plan("cu", "offline=\"catch_up\"\n"));
    let d = m.wait_status(&id, "satisfied", T);
    assert_eq!(
        results(&d),
        [pair("g1", "done"), pair("g2", "catch_up_pending")],
        "{d}"
    );
    let (st, l) = m.get("/v1/intents");
    assert_eq!(st, 200);
    assert!(
        l.as_array().unwrap().iter().any(|i| i["intent_id"] == "cu"),
        "{l}"
    );
    let back = Instant::now();
    let g2 = Ghost::start(&dir, "g2", &m.session, "");
    let mut d = Value::Null;
    wait_for("g2 caught up", || {
        d = m.get(&format!("/v1/intents/{id}")).1;
        results(&d).contains(&pair("g2", "caught_up"))
    });
    let took = back.elapsed();
    assert_eq!(g2.kv_get("cu").as_deref(), Some("v"), "the step ran on g2");
    assert_eq!(g2.kv_get("skip"), None, "a skipped step is not caught up");
    assert!(d["plan"]["catch_up"].as_object().unwrap().is_empty(), "{d}");
    let reports: Vec<String> = m
        .reports(&id)
        .iter()
        .map(|r| r["summary"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        reports.iter().any(|r| r.contains("g2 caught up")),
        "{reports:?}"
    );
    eprintln!(
        "fan-out with g2 offline: skip → satisfied with g2 offline_skipped; fail → failed on g2; \
         catch_up → g2 caught up {:.2}s after its restart",
        took.as_secs_f64()
    );
}
