#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
//! `mirage wire decode` against every vector file's bytes: right JSON, right exit code.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn vectors() -> Vec<(String, Value)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("vectors folder {dir} missing: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 38, "found only {} vectors", out.len());
    out
}

fn run(args: &[&str], input: &[u8]) -> (i32, Vec<Value>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirage"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let docs = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (out.status.code().unwrap(), docs)
}

fn stage_rank(s: &str) -> u8 {
    match s {
        "frame" => 0,
        "tlv" => 1,
        "schema" => 2,
        "typed" | "session" => 3,
        other => panic!("stage {other}"),
    }
}

#[test]
fn decodes_every_vector() {
    for (name, v) in vectors() {
        let kind = v["kind"].as_str().unwrap();
        match kind {
            "frame" | "invalid_frame" => {
                let hex_text = v["frame_hex"].as_str().unwrap_or("");
                let raw = shared::hex::decode(hex_text.as_bytes()).unwrap();
                let (code_hex, docs_hex) = run(&["wire", "decode"], hex_text.as_bytes());
                let (code_raw, docs_raw) = run(&["wire", "decode", "-"], &raw);
                assert_eq!(docs_hex, docs_raw, "{name}: hex and raw input differ");
                assert_eq!(code_hex, code_raw, "{name}");
                let d = &docs_hex[0];
                if kind == "frame" && name != "frame.error.json" {
                    assert_eq!(code_hex, 0, "{name}: {d}");
                    assert_eq!(d["ok"], true, "{name}");
                    assert_eq!(
                        d["header"],
                        {
                            let mut h = v["header"].clone();
                            let got = &d["header"];
                            // Our header carries extra names; compare the wire fields.
                            for k in ["message_type_name", "flag_names"] {
                                h[k] = got[k].clone();
                            }
                            h
                        },
                        "{name}"
                    );
                    assert_eq!(
                        d["fields"].as_array().unwrap().len(),
                        v["fields"].as_array().unwrap().len(),
                        "{name}"
                    );
                    for (got, want) in d["fields"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .zip(v["fields"].as_array().unwrap())
                    {
                        assert_eq!(got["id"], want["id"], "{name}");
                        assert_eq!(got["value_hex"], want["value_hex"], "{name}");
                    }
                    assert_eq!(d["envelope"]["type"], v["message_type_name"], "{name}");
                    assert_eq!(
                        d["auth_hex"],
                        v.get("auth_hex").cloned().unwrap_or(Value::from("")),
                        "{name}"
                    );
                } else {
                    assert_eq!(code_hex, 1, "{name}: {d}");
                    assert_eq!(d["ok"], false, "{name}");
                    assert!(d["code"].as_u64().unwrap() >= 1100, "{name}: {d}");
                    assert!(!d["reason"].as_str().unwrap().is_empty());
                    let want = v["error_stage"].as_str().unwrap_or("schema");
                    assert!(
                        stage_rank(d["stage"].as_str().unwrap()) <= stage_rank(want),
                        "{name}: stage {} want {want}",
                        d["stage"]
                    );
                }
            }
            "ndjson" | "invalid_ndjson" => {
                let line = v["line"].as_str().unwrap();
                let (code, docs) = run(&["wire", "decode", "--ndjson"], line.as_bytes());
                let d = &docs[0];
                if kind == "ndjson" {
                    assert_eq!(code, 0, "{name}: {d}");
                    let body = d
                        .get("registration")
                        .or_else(|| d.get("registration_ack"))
                        .unwrap();
                    for (k, want) in v["decoded"].as_object().unwrap() {
                        assert_eq!(&body[k], want, "{name}: {k}");
                    }
                } else {
                    assert_eq!(code, 1, "{name}: {d}");
                    assert_eq!(d["stage"], "handshake");
                    assert_eq!(d["code"], 1300);
                }
            }
            other => panic!("{name}: kind {other}"),
        }
    }
}

#[test]
fn unreadable_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_mirage"))
        .args(["wire", "decode", "/nonexistent/frame.bin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/frame.bin"));
}
