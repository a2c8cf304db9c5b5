#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
//! Conformance with the Go peer: every file in ../shared/vectors (the folder beside the repo)
//! is asserted as vectors/README.md says for its kind.

use std::path::PathBuf;

use bytes::BytesMut;
use serde_json::{json, Value};
use shared::envelope::Envelope;
use shared::error::{Stage, WireError};
use shared::handshake;
use shared::hex;
use shared::wire::tlv;
use shared::wire::{Frame, FrameCodec, Header, Limits};
use tokio_util::codec::Decoder;

fn vectors_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors"))
}

fn load_all() -> Vec<(String, Value)> {
    let dir = vectors_dir();
    let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "vectors folder {} is missing ({e}); it must sit beside the repo",
            dir.display()
        )
    });
    let mut out = Vec::new();
    for entry in rd {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        out.push((name, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 38,
        "expected the full vector set, found {}",
        out.len()
    );
    out
}

fn bytes_of(v: &Value, key: &str) -> Vec<u8> {
    match v.get(key).and_then(Value::as_str) {
        Some(h) => hex::decode(h.as_bytes()).expect("vector hex"),
        None => Vec::new(),
    }
}

/// Decodes a byte string as a stream: frames until the bytes end, EOF handled strictly.
fn decode_stream(bytes: &[u8]) -> Result<Vec<Frame>, WireError> {
    let mut codec = FrameCodec::new(Limits::default());
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(f) = codec.decode(&mut buf)? {
        frames.push(f);
    }
    if let Some(f) = codec.decode_eof(&mut buf)? {
        frames.push(f);
    }
    if frames.is_empty() {
        return Err(WireError::ShortHeader { got: 0 });
    }
    Ok(frames)
}

/// Full pipeline: frame, TLV, schema, typed.
fn decode_all(bytes: &[u8]) -> Result<(Frame, Envelope), WireError> {
    let frames = decode_stream(bytes)?;
    assert_eq!(frames.len(), 1);
    let frame = frames.into_iter().next().unwrap();
    let env = Envelope::from_frame(&frame)?;
    Ok((frame, env))
}

fn go_key_to_snake(k: &str) -> String {
    if k == "TimestampMS" {
        return "timestamp_ms".into();
    }
    let k = k.replace("ID", "Id");
    let mut s = String::new();
    for (i, c) in k.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

/// Go writes zero values for absent optionals; we use null.
fn go_value_matches(go: &Value, ours: &Value) -> bool {
    match (go, ours) {
        (Value::String(s), Value::Null) if s.is_empty() => true,
        (Value::Number(n), Value::Null) if n.as_u64() == Some(0) => true,
        _ => go == ours,
    }
}

fn check_frame(name: &str, v: &Value) {
    let bytes = bytes_of(v, "frame_hex");
    let frames = decode_stream(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(frames.len(), 1, "{name}");
    let frame = &frames[0];

    // Header, exactly.
    let h = Header::parse(&bytes).unwrap();
    let want = &v["header"];
    assert_eq!(format!("0x{:08X}", h.magic), want["magic"], "{name} magic");
    for (k, got) in [
        ("version", h.version as u64),
        ("header_len", h.header_len as u64),
        ("message_id", h.message_id),
        ("message_type", h.message_type as u64),
        ("flags", h.flags as u64),
        ("payload_len", h.payload_len),
    ] {
        assert_eq!(want[k].as_u64(), Some(got), "{name} header.{k}");
    }
    assert_eq!(frame.header(), h, "{name}: derived header");
    assert_eq!(
        frame.auth.as_ref(),
        bytes_of(v, "auth_hex").as_slice(),
        "{name} auth"
    );

    // Fields, in order, raw.
    let fields = frame.fields().unwrap_or_else(|e| panic!("{name}: {e}"));
    let want_fields = v["fields"].as_array().unwrap();
    assert_eq!(fields.len(), want_fields.len(), "{name} field count");
    for (got, want) in fields.iter().zip(want_fields) {
        assert_eq!(Some(got.id as u64), want["id"].as_u64(), "{name} field id");
        assert_eq!(
            Some(got.ty as u64),
            want["type"].as_u64(),
            "{name} field {} type",
            got.id
        );
        assert_eq!(
            hex::encode(&got.value),
            want["value_hex"].as_str().unwrap(),
            "{name} field {}",
            got.id
        );
    }

    // Re-encode from header + raw fields: byte for byte.
    let re = Frame {
        message_id: h.message_id,
        message_type: h.message_type,
        flags: h.flags,
        auth: frame.auth.clone(),
        payload: fields.to_bytes().unwrap(),
    };
    assert_eq!(
        hex::encode(&re.to_bytes().unwrap()),
        v["frame_hex"].as_str().unwrap(),
        "{name} re-encode"
    );

    // Envelope.
    let env = Envelope::from_frame(frame);
    if name == "frame.error.json" {
        // edgectl defines no error field set; ours needs 800/801, so this is a schema reject.
        let e = env.unwrap_err();
        assert_eq!(e.stage(), Stage::Schema, "{name}: {e}");
        assert!(e.to_string().contains("field=800"), "{e}");
        return;
    }
    let env = env.unwrap_or_else(|e| panic!("{name}: envelope: {e}"));
    assert_eq!(
        Some(env.message_type() as u64),
        v["message_type"].as_u64(),
        "{name}"
    );
    let ours = serde_json::to_value(&env).unwrap();
    if let Some(Value::Object(decoded)) = v.get("decoded") {
        for (k, go) in decoded {
            let key = go_key_to_snake(k);
            let got = ours.get(&key).unwrap_or(&Value::Null);
            assert!(
                go_value_matches(go, got),
                "{name}: {key}: go {go} ours {got}"
            );
        }
    }
    // Typed re-encode: known fields in edgectl's order, extras carried through; identical
    // whenever the frame has no unknown or duplicate fields.
    let typed = env.to_fields().to_bytes().unwrap();
    let again = Envelope::decode(env.message_type(), &tlv::decode(&typed).unwrap()).unwrap();
    assert_eq!(again, env, "{name}: typed round trip");
    let has_extras = fields.iter().enumerate().any(|(i, f)| {
        fields.iter().take(i).any(|g| g.id == f.id) || tlv::id::describe(f.id).is_none()
    });
    if !has_extras {
        assert_eq!(
            hex::encode(&typed),
            v["payload_hex"].as_str().unwrap(),
            "{name}: typed encode"
        );
    }
}

fn expected_stage(s: &str) -> Stage {
    match s {
        "frame" => Stage::Frame,
        "tlv" => Stage::Tlv,
        "schema" => Stage::Schema,
        "session" => Stage::Typed,
        other => panic!("unknown error_stage {other}"),
    }
}

fn check_invalid_frame(name: &str, v: &Value) {
    let bytes = bytes_of(v, "frame_hex");
    let err = match decode_all(&bytes) {
        Ok((_, env)) => panic!("{name}: decoded but must fail: {env:?}"),
        Err(e) => e,
    };
    let want = expected_stage(v["error_stage"].as_str().unwrap());
    assert!(
        err.stage() <= want,
        "{name}: failed at {} ({err}), want {want} or earlier",
        err.stage()
    );
}

fn check_ndjson(name: &str, v: &Value) {
    let line = bytes_of(v, "line_hex");
    assert_eq!(
        line,
        v["line"].as_str().unwrap().as_bytes(),
        "{name}: line_hex"
    );
    let decoded = &v["decoded"];
    let t: Value = serde_json::from_slice(&line).unwrap();
    match t["type"].as_str().unwrap() {
        handshake::TYPE_REGISTER => {
            let r = handshake::parse_registration(&line).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.ghost_id, decoded["ghost_id"], "{name}");
            assert_eq!(r.peer_identity, decoded["peer_identity"], "{name}");
            let seeds: Vec<Value> = r
                .seeds()
                .iter()
                .map(|s| json!({"id": s.id, "name": s.name, "description": s.description}))
                .collect();
            assert_eq!(Value::Array(seeds), decoded["seed_list"], "{name}");
            let ours = handshake::registration_line(&r).unwrap();
            assert_eq!(
                handshake::parse_registration(&ours).unwrap(),
                r,
                "{name}: our line"
            );
        }
        handshake::TYPE_REGISTER_ACK => {
            let a =
                handshake::parse_registration_ack(&line).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(a.status, decoded["status"]);
            assert_eq!(Some(a.code as u64), decoded["code"].as_u64());
            assert_eq!(a.message, decoded["message"]);
            assert_eq!(a.ghost_id, decoded["ghost_id"]);
            assert_eq!(Some(a.timestamp_ms), decoded["timestamp_ms"].as_u64());
            let ours = handshake::registration_ack_line(&a).unwrap();
            assert_eq!(
                handshake::parse_registration_ack(&ours).unwrap(),
                a,
                "{name}: our line"
            );
        }
        other => panic!("{name}: unexpected type {other}"),
    }
}

fn check_invalid_ndjson(name: &str, v: &Value) {
    let line = bytes_of(v, "line_hex");
    assert!(
        handshake::parse_registration(&line).is_err(),
        "{name}: accepted as registration"
    );
    assert!(
        handshake::parse_registration_ack(&line).is_err(),
        "{name}: accepted as ack"
    );
}

#[test]
fn every_vector_holds() {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (name, v) in load_all() {
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no kind"))
            .to_owned();
        match kind.as_str() {
            "frame" => check_frame(&name, &v),
            "invalid_frame" => check_invalid_frame(&name, &v),
            "ndjson" => check_ndjson(&name, &v),
            "invalid_ndjson" => check_invalid_ndjson(&name, &v),
            other => panic!("{name}: unknown kind {other}"),
        }
        *counts.entry(kind).or_default() += 1;
    }
    eprintln!("vectors checked: {counts:?}");
    assert!(counts.get("frame").copied().unwrap_or(0) >= 14);
    assert!(counts.get("invalid_frame").copied().unwrap_or(0) >= 16);
    assert!(counts.get("ndjson").copied().unwrap_or(0) >= 4);
    assert!(counts.get("invalid_ndjson").copied().unwrap_or(0) >= 4);
}
