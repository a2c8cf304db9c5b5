//! The HMAC-SHA256 frame auth block (PROTOCOL.md §6) with real processes: a Ghost with its
//! key runs an intent; a wrong key, no signature and no configured key are refused with code
//! 1000, logged, and reach no seed (issue 6, acceptance 2: missing or wrong HMAC).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn frames_need_a_valid_hmac_when_required() {
    let dir = TempDir::new("auth");
    let m = Mirage::start(
        &dir,
        0,
        "[auth]\nrequired = true\n[auth.keys]\ngood = \"k-good\"\nwrong = \"k-wrong\"\nunsigned = \"k-unsigned\"",
    );
    let good = Ghost::start(
        &dir,
        "good",
        &m.session,
        "[auth]\nkey = \"k-good\"\nrequired = true",
    );
    let wrong = Ghost::start(&dir, "wrong", &m.session, "[auth]\nkey = \"not-the-key\"");
    let unsigned = Ghost::start(&dir, "unsigned", &m.session, "");
    let nokey = Ghost::start(&dir, "nokey", &m.session, "[auth]\nkey = \"whatever\"");
    m.wait_ghosts(1, T);
    let id = m.submit("intent_id=\"signed\"\nactor=\"t\"\ntarget_scope=\"ghost:*\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"k\",value=\"v\"}\non=\"good\"\n");
    m.wait_status(&id, "satisfied", T);
    assert_eq!(good.kv_get("k").as_deref(), Some("v"));

    let deadline = Instant::now() + T;
    loop {
        let log = m.proc.log_text();
        let ok = log.contains("MAC does not verify for key_id \\\"wrong\\\"")
            || log.contains("MAC does not verify for key_id \"wrong\"");
        if ok
            && log.contains("frame carries no auth block")
            && log.contains("no key is configured for nokey")
        {
            assert!(
                log.contains("frame refused: auth") && log.contains("code=1000"),
                "{}",
                tail(&log, 40)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals not logged:\n{}",
            tail(&log, 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Refused Ghosts keep redialling, but never count as connected, so nothing is placed
    // on them: sampled over 2 s of their reconnect attempts.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (_, ghosts) = m.get("/v1/ghosts");
        let connected: Vec<String> = ghosts
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["connected"] == true)
            .map(|g| g["ghost_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(connected, ["good"], "{ghosts}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = m.submit("intent_id=\"to-wrong\"\nactor=\"t\"\ntarget_scope=\"ghost:wrong\"\nobjective=\"o\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={key=\"x\"}\ntimeout=\"1s\"\n");
    m.wait_status(&id, "failed", T);
    for g in [&wrong, &unsigned, &nokey] {
        assert_eq!(g.executed(), 0, "no command reached a seed");
    }
}
