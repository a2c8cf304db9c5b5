//! seed.fs confinement with real processes (issue 19 item 5, issue 17 item 4): a hard link
//! planted inside the root to a file outside it is refused for reading and writing, with a
//! reason that says so, through Mirage and a real Ghost and through `ghost exec`; the
//! outside file is never read out nor changed. (The flip race is a ghost unit test:
//! `cargo test -p ghost --lib a_path_flipped`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use e2e::*;

const T: Duration = Duration::from_secs(40);

#[test]
fn a_hard_link_planted_in_the_root_is_refused_with_the_reason() {
    let dir = TempDir::new("fs-hardlink");
    let outside = dir.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "TOP-SECRET\n").unwrap();
    let m = Mirage::start(&dir, 0, "");
    let _g = Ghost::start(&dir, "g1", &m.session, "");
    m.wait_ghosts(1, T);
    let root = dir.path("g1/fs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::hard_link(outside.join("secret"), root.join("planted")).unwrap();

    for (n, op, args) in [
        (0, "write", "{path=\"planted\",content=\"PWNED\"}"),
        (1, "append", "{path=\"planted\",content=\"PWNED\"}"),
        (2, "read", "{path=\"planted\"}"),
    ] {
        let id = m.submit(&format!(
            "intent_id=\"hl{n}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"o\"\n\
             [[step]]\nseed=\"seed.fs\"\noperation=\"{op}\"\nargs={args}\ntimeout=\"20s\"\n"
        ));
        let d = m.wait_status(&id, "failed", T);
        let failure = d["plan"]["failure"].as_str().unwrap_or_default();
        assert!(
            failure.contains("planted has 2 hard links"),
            "{op}: the failure names the hard link: {d}"
        );
        assert!(
            !d.to_string().contains("TOP-SECRET"),
            "{op}: nothing read out"
        );
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "TOP-SECRET\n",
        "the outside file is unchanged"
    );

    // `ghost exec` on the same root says the same, with a failing exit code.
    let cfg = dir.path("exec.toml");
    std::fs::write(&cfg, format!("[seed]\nfs_root = \"{}\"\n", root.display())).unwrap();
    let out = Command::new(bin("ghost"))
        .args(["exec", "seed.fs", "write", "path=planted", "content=PWNED"])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("planted has 2 hard links"), "{err}");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "TOP-SECRET\n"
    );
}
