//! Issue 19 item 7: a full disk under Mirage's data dir must not wedge intents. A refused
//! submission (503) leaves nothing behind: not active, not counted, its id free. A plan whose
//! write failed keeps its state and its held-back effects and writes again by itself, so
//! it goes on once space is back, without a restart. Mirage's data dir is a small tmpfs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(60);

/// An objective this long makes every write of the plan large, so a full disk bites.
fn big_objective() -> String {
    "x".repeat(200 * 1024)
}

#[test]
fn a_refused_submission_leaves_nothing_behind() {
    let dir = TempDir::new("disk-full-submit");
    let Some(fs) = Tmpfs::mount(&dir.path("mirage"), "6m") else {
        return;
    };
    let m = Mirage::start(&dir, 0, "[limits]\nactive_intents = 3\n");
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let ok = m.submit(
        "intent_id=\"warm\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"a\",value=\"1\"}\n",
    );
    m.wait_status(&ok, "satisfied", T);

    let (filler, _) = fs.fill();
    let plan = |id: &str| {
        format!(
            "intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"{}\"\n\
             [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"{id}\",value=\"1\"}}\n",
            big_objective()
        )
    };
    // More refusals than the active limit: none of them may count toward it.
    let mut refused = 0;
    for i in 0..5 {
        let (st, v) = m.post("/v1/intents", &plan(&format!("full-{i}")));
        assert_eq!(st, 503, "submission {i} on a full disk: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .contains("intent not persisted"),
            "{v}"
        );
        refused += 1;
        let (st, _) = m.get(&format!("/v1/intents/full-{i}"));
        assert_eq!(st, 404, "a refused intent is not kept");
    }
    let (_, o) = m.get("/v1/overview");
    assert_eq!(
        o["intents_active"], 0,
        "refused intents are not active: {o}"
    );

    // Space back: the same ids are free and run, with no restart.
    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    for i in 0..3 {
        let (st, v) = m.post("/v1/intents", &plan(&format!("full-{i}")));
        assert_eq!(st, 201, "resubmitted full-{i} after space came back: {v}");
        m.wait_status(&format!("full-{i}"), "satisfied", T);
    }
    eprintln!(
        "disk full: {refused} submissions refused (503), none kept or counted; \
         the same ids accepted and satisfied {:.2}s after space came back",
        back.elapsed().as_secs_f64()
    );
}

#[test]
fn a_plan_whose_write_failed_goes_on_when_space_is_back() {
    let dir = TempDir::new("disk-full-plan");
    let Some(fs) = Tmpfs::mount(&dir.path("mirage"), "6m") else {
        return;
    };
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    // Step 1 runs 2 s; its event arrives while the disk is full. Step 2 is what a plan that
    // dropped its held-back dispatch would never send.
    let id = m.submit(&format!(
        "intent_id=\"p\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"{}\"\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={{ms=\"2000\"}}\ntimeout=\"60s\"\n\
         [[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"after\",value=\"yes\"}}\ntimeout=\"60s\"\n",
        big_objective()
    ));
    wait_until("step 1 to be dispatched", T, || {
        m.reports(&id).iter().any(|r| {
            r["summary"]
                .as_str()
                .unwrap_or_default()
                .contains("step 1/2 dispatched")
        })
    });
    let (filler, _) = fs.fill();
    let filled = Instant::now();
    wait_until("a plan write to fail on the full disk", T, || {
        m.proc.log_text().contains("plan state not persisted")
    });
    // Give the Ghost time to send its event again a few times while the disk stays full.
    std::thread::sleep(Duration::from_secs(3));
    // Step 2 is held back until the plan's state is on disk. SQLite can sometimes reuse WAL
    // space it already owns even on a full disk, so a retried write may land early; then step 2
    // may legitimately run. What must never happen is step 2 before any successful write.
    let after = g.kv_get("after");
    let persisted = m.proc.log_text().contains("plan state persisted again");
    if !persisted {
        assert_eq!(
            after, None,
            "step 2 ran before the plan state was persisted"
        );
        let (_, d) = m.get(&format!("/v1/intents/{id}"));
        assert_eq!(d["summary"]["status"], "active", "{}", d["summary"]);
    }

    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    m.wait_status(&id, "satisfied", Duration::from_secs(30));
    let took = back.elapsed();
    assert_eq!(g.kv_get("after").as_deref(), Some("yes"));
    assert!(
        m.proc.log_text().contains("plan state persisted again"),
        "{}",
        tail(&m.proc.log_text(), 20)
    );
    eprintln!(
        "disk full mid-plan: full for {:.1}s, satisfied {:.2}s after space came back \
         (step timeout 60s, no restart)",
        (back - filled).as_secs_f64(),
        took.as_secs_f64()
    );
}
