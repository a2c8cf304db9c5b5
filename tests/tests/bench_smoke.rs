//! Every bench scenario at a tiny size, so the benchmark commands keep working (issue 8,
//! acceptance 3). Figures from these runs mean nothing (debug build, tiny N); the full runs
//! are in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use e2e::TempDir;
use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    // The bench tool starts the mirage and ghost binaries of its own profile; build them.
    let _ = e2e::bin("mirage");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--no-append")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["scenario"], args[0], "{v}");
    v
}

#[test]
fn loop_closed_and_open() {
    let v = bench(&[
        "loop",
        "--intents",
        "60",
        "--concurrency",
        "3",
        "--ghosts",
        "2",
    ]);
    assert_eq!(
        (v["intents"].as_u64(), v["failed"].as_u64()),
        (Some(60), Some(0)),
        "{v}"
    );
    assert!(v["p99_ms"].as_f64().unwrap() > 0.0, "{v}");
    let v = bench(&["loop", "--intents", "40", "--rate", "100", "--ghosts", "2"]);
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["offered_per_s"], 100.0, "{v}");
}

#[test]
fn events_are_all_acknowledged() {
    let v = bench(&[
        "events",
        "--sessions",
        "2",
        "--events",
        "500",
        "--window",
        "16",
    ]);
    assert_eq!(v["acked"], 1000, "{v}");
}

#[test]
fn sessions_storm_and_fanout() {
    let v = bench(&["sessions", "--count", "20", "--seconds", "1"]);
    assert_eq!(v["connected_at_end"], 20, "{v}");
    assert!(v["mirage_rss_kib"].as_u64().unwrap() > 0, "{v}");
    let v = bench(&["storm", "--count", "20"]);
    assert!(
        v["all_registered_after_restart_s"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    let v = bench(&["fanout", "--ghosts", "20", "--rounds", "1"]);
    assert_eq!(v["seconds_each"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn sustained_sweep_and_codec() {
    let v = bench(&[
        "sustained",
        "--seconds",
        "3",
        "--rate",
        "40",
        "--interval",
        "1",
        "--ghosts",
        "2",
    ]);
    assert_eq!(v["failed"], 0, "{v}");
    assert!(v["series"].as_array().unwrap().len() >= 2, "{v}");
    let dir = TempDir::new("sweep");
    let plot = dir.path("latency.svg");
    let v = bench(&[
        "sweep",
        "--rates",
        "40,80",
        "--seconds",
        "1",
        "--ghosts",
        "2",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(v["points"].as_array().unwrap().len(), 2, "{v}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("offered intents/s"),
        "plot drawn"
    );
    // The plot can be redrawn from the sweep's JSON line alone.
    let line = dir.path("sweep.json");
    std::fs::write(&line, v.to_string()).unwrap();
    std::fs::remove_file(&plot).unwrap();
    let p = bench(&[
        "plot",
        "--from",
        line.to_str().unwrap(),
        "--out",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(p["points"], 2, "{p}");
    assert!(p["plot_error"].is_null(), "{p}");
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));
    let v = bench(&["codec", "--seconds", "0.2"]);
    assert!(v["decode_per_s"].as_f64().unwrap() > 0.0, "{v}");
}
