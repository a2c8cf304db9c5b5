//! Command output reaches Mirage's user (issue 23 item 3): the stdout/stderr a Ghost puts in
//! its event (seed.result, ext fields 401/402) is kept, bounded, with the plan and shown by
//! `GET /v1/intents/{id}`, `mirage intent show` and `mirage --json intent show`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use e2e::*;

const T: Duration = Duration::from_secs(60);

fn cli(api: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("mirage"))
        .args(args)
        .env("MIRAGE_API", format!("http://{api}"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn seed_output_appears_in_intent_show_and_the_api() {
    let dir = TempDir::new("output");
    let m = Mirage::start(&dir, 0, "");
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let big = "y".repeat(6000);
    let id = m.submit(&format!(
        "intent_id=\"out\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={{msg=\"hello-from-g1\"}}\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={{big=\"{big}\"}}\n\
         [[step]]\nseed=\"seed.flow\"\noperation=\"fail\"\nargs={{code=\"3\",message=\"disk on fire\"}}\n"
    ));
    let d = m.wait_status(&id, "failed", T);
    let outs = d["plan"]["outputs"].as_array().cloned().unwrap_or_default();
    assert_eq!(outs.len(), 3, "{d}");
    assert_eq!(outs[0]["stdout"], "flow echo: msg=hello-from-g1\n", "{d}");
    assert_eq!(outs[0]["ghost"], "g1");
    assert_eq!(outs[0]["step"], 0);
    let cut = outs[1]["stdout"].as_str().unwrap();
    assert_eq!(cut.len(), 4096, "bounded to 4 KiB per stream");
    assert!(outs[1]["stdout_bytes"].as_u64().unwrap() > 6000);
    assert_eq!(outs[2]["outcome"], "error");
    assert!(
        outs[2]["stderr"].as_str().unwrap().contains("disk on fire"),
        "{}",
        outs[2]
    );
    assert_eq!(outs[2]["exit_code"], 3);

    let (code, out, err) = cli(&m.api, &["intent", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("step 1 on g1 ") && out.contains("stdout| flow echo: msg=hello-from-g1"),
        "{out}"
    );
    assert!(
        out.contains("stderr| ") && out.contains("disk on fire"),
        "{out}"
    );
    assert!(out.contains("bytes, first 4096 kept)"), "{out}");
    let (code, out, err) = cli(&m.api, &["--json", "intent", "show", &id]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["plan"]["outputs"][0]["stdout"],
        "flow echo: msg=hello-from-g1\n"
    );
    eprintln!(
        "output kept: 3 commands, stdout 'flow echo: msg=hello-from-g1', a 6000+ byte stdout cut to 4096, stderr of the failure"
    );
}
