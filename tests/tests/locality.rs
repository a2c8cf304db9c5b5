//! Issue 11 item 7: `on = "local"` prefers the co-located Ghost and falls back to any Ghost
//! hosting the seed when it is down; `on = "one"` keeps its meaning. Real processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(40);

fn plan(id: &str, on: &str) -> String {
    format!(
        "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={{m=\"x\"}}\non=\"{on}\"\n"
    )
}

fn dispatched_to(m: &Mirage, id: &str) -> String {
    m.reports(id)
        .iter()
        .filter_map(|r| r["summary"].as_str())
        .find_map(|s| s.split_once("dispatched to ").map(|(_, g)| g.to_owned()))
        .unwrap_or_default()
}

#[test]
fn local_prefers_the_colocated_ghost_and_falls_back_when_it_is_down() {
    let dir = TempDir::new("locality");
    // As Mirage::start, with g1 as the co-located Ghost.
    let cfg = dir.path("mirage.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nlocal_ghost = \"g1\"\ntick_ms = 100\n[api]\nlisten = \"127.0.0.1:0\"\n[timeouts]\nheartbeat_ms = 500\ndead_after_ms = 3000\n",
            dir.path("mirage").display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        &bin("mirage"),
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path("mirage.log"),
    );
    let (session, api) = (proc.field("session"), proc.field("api"));
    let m = Mirage { proc, session, api };
    let mut g1 = Ghost::start(&dir, "g1", &m.session, "");
    let _g2 = Ghost::start(&dir, "g2", &m.session, "");
    m.wait_ghosts(2, T);
    for (id, on) in [("l1", "local"), ("o1", "one")] {
        let i = m.submit(&plan(id, on));
        m.wait_status(&i, "satisfied", T);
        assert_eq!(dispatched_to(&m, &i), "g1", "on={on}");
    }
    g1.proc.sigkill();
    let deadline = Instant::now() + T;
    while m.get("/v1/ghosts/g1").1["connected"] != false {
        assert!(Instant::now() < deadline, "g1 still shown connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (id, on) in [("l2", "local"), ("o2", "one")] {
        let i = m.submit(&plan(id, on));
        m.wait_status(&i, "satisfied", T);
        assert_eq!(
            dispatched_to(&m, &i),
            "g2",
            "on={on} with the local Ghost down"
        );
    }
}
