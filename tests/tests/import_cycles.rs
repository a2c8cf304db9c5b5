#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! No new import cycle between the files of a crate (issue 18): `scripts/cycles.sh --check`
//! passes on the workspace, and the same check fails on a crate that has a cycle, so the gate
//! is real.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn check(dirs: &[&Path]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/cycles.sh"))
        .arg("--check")
        .args(dirs)
        .output()
        .expect("run scripts/cycles.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_workspace_has_no_import_cycle() {
    let (ok, text) = check(&[]);
    assert!(ok, "new import cycle:\n{text}");
    // Every known one is gone too (issue 18): the crates' files form no cycle at all.
    assert!(text.contains("0 cycle set(s)"), "cycles left:\n{text}");
}

#[test]
fn a_new_cycle_fails_the_check() {
    let dir = std::env::temp_dir().join(format!("cycles-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("actors")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod actors;\npub mod config;\n").unwrap();
    std::fs::write(src.join("actors/mod.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("actors/a.rs"), "use super::b::B;\npub struct A;\n").unwrap();
    std::fs::write(
        src.join("actors/b.rs"),
        "pub struct B(pub Option<crate::actors::a::A>);\n",
    )
    .unwrap();
    std::fs::write(src.join("config.rs"), "use crate::actors::a::A;\n").unwrap();
    let (ok, text) = check(&[&dir]);
    let (acyclic_ok, acyclic) = {
        std::fs::write(src.join("actors/b.rs"), "pub struct B;\n").unwrap();
        check(&[&dir])
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "a cycle passed the check:\n{text}");
    assert!(
        text.contains("new import cycle")
            && text.contains("actors/a.rs <-> ")
            && text.contains("actors/b.rs"),
        "{text}"
    );
    assert!(
        !text.contains("config.rs <->"),
        "config.rs is not in the cycle: {text}"
    );
    assert!(
        acyclic_ok,
        "the same crate without the cycle failed:\n{acyclic}"
    );
}
