//! The NDJSON handshake (PROTOCOL.md §2): one `seed.register` line from the Ghost, one
//! `seed.register.ack` line from Mirage, then frames on the same stream.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::WireError;

/// Each line, `\n` included, is at most this long.
pub const MAX_LINE: usize = 128 * 1024;

pub const TYPE_REGISTER: &str = "seed.register";
pub const TYPE_REGISTER_ACK: &str = "seed.register.ack";

/// Longest accepted ext `instance_id`.
pub const MAX_INSTANCE_ID: usize = 128;

/// How a rejected ack's message starts when another live Ghost process (another instance_id)
/// holds the ghost_id. Code 1000 (an identity failure, as edgectl's rejections).
pub const REJECT_ID_CONFLICT: &str = "ghost_id conflict";

/// ext capability: "send me commands on this session".
pub const CAP_SESSION_COMMAND: &str = "session.command";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OperationInfo {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub idempotent: bool,
    /// ext: argument names the operation accepts (the allowlist Mirage plans against).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SeedInfo {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Registration {
    pub ghost_id: String,
    #[serde(default)]
    pub peer_identity: String,
    /// Required and non-null; `[]` is valid. `None` here means missing or null (rejected).
    pub seed_list: Option<Vec<SeedInfo>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// ext: which Ghost process this is, generated once and kept in its data dir. Lets
    /// Mirage tell a reconnect of the same Ghost (takeover) from a second process claiming
    /// the same ghost_id (refused while the first is alive). Absent from edgectl Ghosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

impl Registration {
    pub fn seeds(&self) -> &[SeedInfo] {
        self.seed_list.as_deref().unwrap_or(&[])
    }

    /// The instance id, when one was sent and is not blank.
    pub fn instance(&self) -> Option<&str> {
        self.instance_id.as_deref().filter(|i| !i.trim().is_empty())
    }

    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }

    /// PROTOCOL.md §2 rules, plus limits that keep ids safe to log and store.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_ghost_id(&self.ghost_id)?;
        if let Some(i) = self.instance() {
            if i.len() > MAX_INSTANCE_ID || i.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(invalid(&format!(
                    "invalid registration: instance_id must be at most {MAX_INSTANCE_ID} bytes without whitespace or control characters"
                )));
            }
        }
        let seeds = self
            .seed_list
            .as_ref()
            .ok_or_else(|| invalid("invalid registration: missing seed_list"))?;
        for (i, s) in seeds.iter().enumerate() {
            if s.id.trim().is_empty() || s.name.trim().is_empty() || s.description.trim().is_empty()
            {
                return Err(invalid(&format!(
                    "invalid registration: seed_list[{i}] needs non-blank id, name and description"
                )));
            }
            validate_seed_id(&s.id)
                .map_err(|r| invalid(&format!("invalid registration: seed_list[{i}]: {r}")))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RegistrationAck {
    pub status: String,
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub message: String,
    pub ghost_id: String,
    #[serde(default)]
    pub timestamp_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
}

impl RegistrationAck {
    pub fn accepted(&self) -> bool {
        self.status == "accepted"
    }

    pub fn validate(&self) -> Result<(), WireError> {
        match self.status.trim() {
            "accepted" | "rejected" => {}
            _ => return Err(invalid("invalid registration ack: invalid status")),
        }
        if self.ghost_id.trim().is_empty() {
            return Err(invalid("invalid registration ack: missing ghost_id"));
        }
        if self.timestamp_ms == 0 {
            return Err(invalid("invalid registration ack: missing timestamp_ms"));
        }
        Ok(())
    }
}

fn invalid(reason: &str) -> WireError {
    WireError::Handshake(reason.to_owned())
}

/// Seed ids: `[a-z0-9._-]`, no leading, trailing or doubled separator.
pub fn validate_seed_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("seed id must be 1..=128 bytes, got {}", id.len()));
    }
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    let b = id.as_bytes();
    if let Some(c) = b
        .iter()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || sep(**c)))
    {
        return Err(format!(
            "seed id {id:?} has {:?}; allowed are [a-z0-9._-]",
            *c as char
        ));
    }
    if sep(b[0]) || sep(b[b.len() - 1]) {
        return Err(format!(
            "seed id {id:?} must not start or end with a separator"
        ));
    }
    if b.windows(2).any(|w| sep(w[0]) && sep(w[1])) {
        return Err(format!("seed id {id:?} has a doubled separator"));
    }
    Ok(())
}

/// Ghost ids: non-blank, at most 255 bytes, no whitespace or control characters (they are
/// logged, stored and used as lock keys).
pub fn validate_ghost_id(id: &str) -> Result<(), WireError> {
    if id.trim().is_empty() {
        return Err(invalid("invalid registration: missing ghost_id"));
    }
    if id.len() > 255 {
        return Err(invalid(
            "invalid registration: ghost_id longer than 255 bytes",
        ));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        // edgectl accepts such ids; we keep refusing them and say so (docs/DECISIONS.md).
        return Err(invalid(&format!(
            "invalid registration: ghost_id {id:?} contains whitespace or control characters; \
             edgectl accepts such ids, this Mirage refuses them (ids are logged, stored and used \
             as lock keys): choose a ghost_id without them"
        )));
    }
    Ok(())
}

/// Go matches JSON keys case-insensitively; lower-case the keys of the envelope and its
/// first object level so `"Ghost_ID"` reads as `"ghost_id"`.
fn lower_keys(v: Value, depth: usize) -> Value {
    match v {
        Value::Object(m) if depth > 0 => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lower_keys(v, depth - 1)))
                .collect(),
        ),
        Value::Array(a) if depth > 0 => {
            Value::Array(a.into_iter().map(|v| lower_keys(v, depth)).collect())
        }
        other => other,
    }
}

fn parse_line(line: &[u8], want_type: &str, body_key: &str) -> Result<Value, WireError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| invalid(&format!("line is not a JSON object: {e}")))?;
    let Value::Object(m) = lower_keys(v, 3) else {
        return Err(invalid("line is not a JSON object"));
    };
    match m.get("type").and_then(Value::as_str) {
        Some(t) if t == want_type => {}
        Some(t) => {
            return Err(invalid(&format!(
                "unexpected control type {t:?}, want {want_type:?}"
            )))
        }
        None => return Err(invalid("missing control type")),
    }
    match m.get(body_key) {
        Some(body @ Value::Object(_)) => Ok(body.clone()),
        _ => Err(invalid(&format!("missing {body_key} object"))),
    }
}

/// Parses and validates a `seed.register` line (trailing `\n` optional).
pub fn parse_registration(line: &[u8]) -> Result<Registration, WireError> {
    let body = parse_line(line, TYPE_REGISTER, "registration")?;
    let reg: Registration =
        serde_json::from_value(body).map_err(|e| invalid(&format!("invalid registration: {e}")))?;
    reg.validate()?;
    Ok(reg)
}

/// Parses and validates a `seed.register.ack` line.
pub fn parse_registration_ack(line: &[u8]) -> Result<RegistrationAck, WireError> {
    let body = parse_line(line, TYPE_REGISTER_ACK, "registration_ack")?;
    let ack: RegistrationAck = serde_json::from_value(body)
        .map_err(|e| invalid(&format!("invalid registration ack: {e}")))?;
    ack.validate()?;
    Ok(ack)
}

#[derive(Serialize)]
struct RegisterLine<'a> {
    #[serde(rename = "type")]
    t: &'a str,
    registration: &'a Registration,
}

#[derive(Serialize)]
struct AckLine<'a> {
    #[serde(rename = "type")]
    t: &'a str,
    registration_ack: &'a RegistrationAck,
}

/// One `seed.register` line, `\n` included.
pub fn registration_line(reg: &Registration) -> Result<Vec<u8>, WireError> {
    let mut v = serde_json::to_vec(&RegisterLine {
        t: TYPE_REGISTER,
        registration: reg,
    })
    .map_err(|e| WireError::Encode(e.to_string()))?;
    v.push(b'\n');
    if v.len() > MAX_LINE {
        return Err(WireError::LineTooLong { limit: MAX_LINE });
    }
    Ok(v)
}

/// One `seed.register.ack` line, `\n` included.
pub fn registration_ack_line(ack: &RegistrationAck) -> Result<Vec<u8>, WireError> {
    let mut v = serde_json::to_vec(&AckLine {
        t: TYPE_REGISTER_ACK,
        registration_ack: ack,
    })
    .map_err(|e| WireError::Encode(e.to_string()))?;
    v.push(b'\n');
    Ok(v)
}

/// Where the first line in `buf` ends (index just past `\n`), or an error once `limit` bytes
/// have arrived without one. `None`: need more bytes.
pub fn find_line_end(buf: &[u8], limit: usize) -> Result<Option<usize>, WireError> {
    let window = &buf[..buf.len().min(limit)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= limit => Err(WireError::LineTooLong { limit }),
        None => Ok(None),
    }
}

/// Reads one line of at most `limit` bytes (`\n` included) from `r` through `buf`.
///
/// Never buffers more than `limit` plus one read's worth. Bytes after the line stay in
/// `buf`: after the handshake they are the first frame bytes, so hand `buf` to the frame
/// reader (`FramedRead::read_buffer_mut`).
pub async fn read_line<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Bytes, WireError> {
    loop {
        if let Some(end) = find_line_end(buf, limit)? {
            return Ok(buf.split_to(end).freeze());
        }
        // Read no further than the limit allows.
        let want = (limit + 1).saturating_sub(buf.len()).clamp(1, 8192);
        buf.reserve(want);
        let n = (&mut *r).take(want as u64).read_buf(buf).await?;
        if n == 0 {
            return Err(WireError::LineEof);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ids() {
        for ok in ["seed.flow", "a", "kv-2", "x_y.z"] {
            assert!(validate_seed_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a._b", "Seed", "a b", "a/b"] {
            assert!(validate_seed_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_case_insensitive_and_null_seed_list_rejected() {
        let r = parse_registration(
            br#"{"Type":"seed.register","Registration":{"Ghost_ID":"g1","Seed_List":[]}}"#,
        )
        .unwrap();
        assert_eq!(r.ghost_id, "g1");
        assert!(parse_registration(
            br#"{"type":"seed.register","registration":{"ghost_id":"g1","seed_list":null}}"#
        )
        .is_err());
        assert!(parse_registration(
            br#"{"type":"seed.register","registration":{"ghost_id":"g1"}}"#
        )
        .is_err());
    }

    #[test]
    fn instance_id_is_optional_and_bounded() {
        let base = br#"{"type":"seed.register","registration":{"ghost_id":"g1","peer_identity":"g1","seed_list":[]}}"#;
        let r = parse_registration(base).unwrap();
        assert_eq!(r.instance(), None);
        // Absent stays absent on the wire: an edgectl Mirage sees the bytes it knows.
        let line = registration_line(&r).unwrap();
        assert!(!String::from_utf8_lossy(&line).contains("instance_id"));
        let r = parse_registration(
            br#"{"type":"seed.register","registration":{"ghost_id":"g1","seed_list":[],"instance_id":"abc"}}"#,
        )
        .unwrap();
        assert_eq!(r.instance(), Some("abc"));
        let long = format!(
            r#"{{"type":"seed.register","registration":{{"ghost_id":"g1","seed_list":[],"instance_id":"{}"}}}}"#,
            "x".repeat(MAX_INSTANCE_ID + 1)
        );
        assert!(parse_registration(long.as_bytes()).is_err());
        assert!(parse_registration(
            br#"{"type":"seed.register","registration":{"ghost_id":"g1","seed_list":[],"instance_id":"a b"}}"#
        )
        .is_err());
    }

    #[test]
    fn line_end_is_bounded() {
        assert_eq!(find_line_end(b"ab\ncd", 10).unwrap(), Some(3));
        assert_eq!(find_line_end(b"abc", 10).unwrap(), None);
        assert!(find_line_end(&[b'x'; 10], 10).is_err());
        // A newline past the limit does not count.
        assert!(find_line_end(b"0123456789\n", 10).is_err());
    }

    #[tokio::test]
    async fn read_line_keeps_the_rest_and_stops_at_the_limit() {
        let data = b"{\"a\":1}\nFRAMEBYTES".to_vec();
        let mut r = &data[..];
        let mut buf = BytesMut::new();
        let line = read_line(&mut r, &mut buf, 64).await.unwrap();
        assert_eq!(&line[..], b"{\"a\":1}\n");
        let mut rest = buf.to_vec();
        rest.extend_from_slice(r);
        assert_eq!(rest, b"FRAMEBYTES");

        let big = vec![b'x'; 1 << 20];
        let mut r = &big[..];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_line(&mut r, &mut buf, 1000).await,
            Err(WireError::LineTooLong { limit: 1000 })
        ));
        assert!(buf.len() <= 1001, "buffered {}", buf.len());

        let mut r = &b"no newline"[..];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_line(&mut r, &mut buf, 1000).await,
            Err(WireError::LineEof)
        ));
    }
}
