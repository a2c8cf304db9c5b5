//! `mirage wire decode`: explain a frame or handshake line to an operator, as JSON.

use bytes::BytesMut;
use serde_json::{json, Map, Value};
use shared::envelope::{schema, Envelope};
use shared::error::WireError;
use shared::handshake;
use shared::hex;
use shared::wire::tlv::{self, ty, Field};
use shared::wire::{flags, Frame, FrameCodec, Header, Limits};
use tokio_util::codec::Decoder;

/// Input is hex text when it holds only hex digits and whitespace; raw bytes otherwise.
pub fn detect_input(raw: &[u8]) -> Vec<u8> {
    let trimmed = raw.trim_ascii();
    if !trimmed.is_empty()
        && trimmed
            .iter()
            .all(|c| c.is_ascii_hexdigit() || c.is_ascii_whitespace())
    {
        if let Some(b) = hex::decode(trimmed) {
            return b;
        }
    }
    raw.to_vec()
}

/// Decodes the input and returns one JSON document per frame or line, and whether all were ok.
pub fn decode(raw: &[u8], force_ndjson: bool) -> (Vec<Value>, bool) {
    let bytes = detect_input(raw);
    let looks_like_json = bytes.trim_ascii_start().first() == Some(&b'{');
    if force_ndjson || looks_like_json {
        let docs: Vec<Value> = lines(&bytes).into_iter().map(decode_line).collect();
        let ok = !docs.is_empty() && docs.iter().all(|d| d["ok"] == true);
        if docs.is_empty() {
            return (vec![failure(&WireError::LineEof, Map::new())], false);
        }
        return (docs, ok);
    }
    decode_frames(&bytes)
}

fn lines(b: &[u8]) -> Vec<&[u8]> {
    b.split_inclusive(|&c| c == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .collect()
}

fn failure(e: &WireError, mut extra: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("ok".into(), false.into());
    m.insert("stage".into(), e.stage().as_str().into());
    m.insert("code".into(), e.code().into());
    m.insert("reason".into(), e.to_string().into());
    m.append(&mut extra);
    Value::Object(m)
}

fn decode_line(line: &[u8]) -> Value {
    if line.len() > handshake::MAX_LINE {
        return failure(
            &WireError::LineTooLong {
                limit: handshake::MAX_LINE,
            },
            Map::new(),
        );
    }
    let kind = serde_json::from_slice::<Value>(line.trim_ascii())
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
    let parsed = match kind.as_deref() {
        Some(handshake::TYPE_REGISTER_ACK) => handshake::parse_registration_ack(line).map(
            |a| json!({"ok": true, "type": handshake::TYPE_REGISTER_ACK, "registration_ack": a}),
        ),
        _ => handshake::parse_registration(line)
            .map(|r| json!({"ok": true, "type": handshake::TYPE_REGISTER, "registration": r})),
    };
    parsed.unwrap_or_else(|e| failure(&e, Map::new()))
}

fn decode_frames(bytes: &[u8]) -> (Vec<Value>, bool) {
    let mut codec = FrameCodec::new(Limits::default());
    let mut buf = BytesMut::from(bytes);
    let mut docs = Vec::new();
    loop {
        // Header context for error reports, when 32 bytes are there.
        let header = Header::parse(&buf).ok();
        let step = match codec.decode(&mut buf) {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => codec.decode_eof(&mut buf),
            Err(e) => Err(e),
        };
        match step {
            Ok(Some(frame)) => docs.push(describe_frame(&frame)),
            Ok(None) => break,
            Err(e) => {
                let mut extra = Map::new();
                if let Some(h) = header {
                    extra.insert("header".into(), header_json(&h));
                }
                docs.push(failure(&e, extra));
                return (docs, false);
            }
        }
    }
    if docs.is_empty() {
        return (
            vec![failure(&WireError::ShortHeader { got: 0 }, Map::new())],
            false,
        );
    }
    let ok = docs.iter().all(|d| d["ok"] == true);
    (docs, ok)
}

fn header_json(h: &Header) -> Value {
    let mut names = Vec::new();
    for (bit, n) in [
        (flags::HAS_AUTH, "has_auth"),
        (flags::IS_RESPONSE, "is_response"),
        (flags::IS_ERROR, "is_error"),
    ] {
        if h.flags & bit != 0 {
            names.push(n);
        }
    }
    json!({
        "magic": format!("0x{:08X}", h.magic),
        "version": h.version,
        "header_len": h.header_len,
        "message_id": h.message_id,
        "message_type": h.message_type,
        "message_type_name": schema::type_name(h.message_type),
        "flags": h.flags,
        "flag_names": names,
        "payload_len": h.payload_len,
    })
}

fn field_json(f: &Field) -> Value {
    let value = match f.ty {
        ty::STRING => f.as_str().map(Value::from).ok(),
        ty::U8 => f.as_u8().map(Value::from).ok(),
        ty::U16 => f.as_u16().map(Value::from).ok(),
        ty::U32 => f.as_u32().map(Value::from).ok(),
        ty::U64 => f.as_u64().map(Value::from).ok(),
        ty::BOOL => f.as_bool().map(Value::from).ok(),
        ty::BYTES => std::str::from_utf8(&f.value).ok().map(Value::from),
        _ => None,
    };
    json!({
        "id": f.id,
        "type": f.ty,
        "type_name": ty::name(f.ty),
        "name": tlv::id::describe(f.id).map(|(n, _)| n),
        "value": value.unwrap_or(Value::Null),
        "value_hex": hex::encode(&f.value),
    })
}

fn describe_frame(frame: &Frame) -> Value {
    let mut ctx = Map::new();
    ctx.insert("header".into(), header_json(&frame.header()));
    ctx.insert("auth_hex".into(), hex::encode(&frame.auth).into());
    let fields = match frame.fields() {
        Ok(f) => f,
        Err(e) => return failure(&e, ctx),
    };
    ctx.insert(
        "fields".into(),
        fields.iter().map(field_json).collect::<Vec<_>>().into(),
    );
    match Envelope::decode(frame.message_type, &fields) {
        Ok(env) => {
            let mut m = Map::new();
            m.insert("ok".into(), true.into());
            m.append(&mut ctx);
            m.insert(
                "envelope".into(),
                serde_json::to_value(&env).unwrap_or(Value::Null),
            );
            Value::Object(m)
        }
        Err(e) => failure(&e, ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_hex_and_raw() {
        assert_eq!(detect_input(b" ed ce\n"), vec![0xed, 0xce]);
        assert_eq!(detect_input(b"{\"a\":1}"), b"{\"a\":1}".to_vec());
        // Odd digit count is not hex: treated as raw bytes.
        assert_eq!(detect_input(b"abc"), b"abc".to_vec());
    }

    #[test]
    fn empty_input_is_a_frame_stage_failure() {
        let (docs, ok) = decode(b"", false);
        assert!(!ok);
        assert_eq!(docs[0]["stage"], "frame");
        assert_eq!(docs[0]["code"], 1100);
    }
}
