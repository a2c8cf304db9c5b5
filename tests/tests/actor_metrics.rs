//! Issue 18 item 2: mailbox figures per actor kind and per message type (depth, handled,
//! queue wait, handle time max, send failures) in `/metrics` and `/v1/actors`, including
//! the paths that used to bypass the meter: plan → Supervisor, lock → plan, API queries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn sample(scrape: &prometheus_parse::Scrape, metric: &str, actor: &str, msg: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.get("actor") == Some(actor)
                && (msg.is_empty() || s.labels.get("message") == Some(msg))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn per_kind_and_per_message_figures_are_exported() {
    let dir = TempDir::new("actor-metrics");
    let m = Mirage::start(&dir, 0, "");
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    // A blocking step takes a lock: plan → Supervisor (LockOp, Dispatch, PlanReport) and
    // lock → plan (PlanMsg).
    let id = m.submit("intent_id=\"m1\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\nblocking=true\n");
    m.wait_status(&id, "satisfied", T);
    for _ in 0..3 {
        assert_eq!(m.get("/v1/intents").0, 200);
    }

    let (st, text) = http_raw(&m.api, "GET", "/metrics", None, &[]);
    assert_eq!(st, 200);
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid");
    for (actor, msg) in [
        ("mirage.supervisor", "Submit"),
        ("mirage.supervisor", "ListIntents"),
        ("mirage.supervisor", "LockOp"),
        ("mirage.supervisor", "Dispatch"),
        ("mirage.supervisor", "PlanReport"),
        ("mirage.supervisor", "PlanFinished"),
        ("mirage.intent_plan", "PlanMsg"),
        ("mirage.seed_lock", "LockMsg"),
        ("mirage.report_hub", "Publish"),
    ] {
        let handled = sample(&scrape, "actor_message_handled_total", actor, msg);
        assert!(
            handled.is_some_and(|v| v >= 1.0),
            "{actor}/{msg} handled: {handled:?}"
        );
        for series in [
            "actor_message_depth",
            "actor_message_send_failed_total",
            "actor_message_handle_seconds_max",
            "actor_message_queue_wait_seconds_max",
            "actor_message_queue_wait_seconds_mean",
        ] {
            assert!(
                sample(&scrape, series, actor, msg).is_some(),
                "no {series} for {actor}/{msg}"
            );
        }
    }
    let lists = sample(
        &scrape,
        "actor_message_handled_total",
        "mirage.supervisor",
        "ListIntents",
    )
    .unwrap();
    assert!(lists >= 3.0, "API queries are metered: {lists}");
    for series in [
        "actor_send_failed_total",
        "actor_handle_seconds_max",
        "actor_queue_wait_seconds_max",
        "actor_queue_wait_seconds_mean",
    ] {
        for actor in ["mirage.supervisor", "mirage.intent_plan", "mirage.session"] {
            assert!(
                sample(&scrape, series, actor, "").is_some(),
                "no {series} for {actor}"
            );
        }
    }

    // The same figures in /v1/actors.
    let (_, actors) = m.get("/v1/actors");
    let sup = actors
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["actor"] == "mirage.supervisor")
        .cloned()
        .unwrap();
    assert!(sup["queue_wait_max_us"].as_f64().unwrap() > 0.0, "{sup}");
    let submit: &Value = sup["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["message"] == "Submit")
        .unwrap();
    assert_eq!(submit["handled"], 1, "{submit}");
    for f in [
        "depth",
        "send_failed",
        "handle_max_us",
        "queue_wait_max_us",
        "queue_wait_mean_us",
    ] {
        assert!(!submit[f].is_null(), "no {f} in {submit}");
    }
}
