//! Flat TLV (PROTOCOL.md §4): `field_id:u16 | type:u8 | length:u32 | value`.
//!
//! Decoding keeps every field raw and in wire order, unknown ids and duplicates included, so a
//! frame re-encodes byte for byte. Lookups are first-wins. Typed accessors check widths.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::WireError;

pub const FIELD_HEADER_LEN: usize = 7;

/// TLV type bytes.
pub mod ty {
    pub const U8: u8 = 1;
    pub const U16: u8 = 2;
    pub const U32: u8 = 3;
    pub const U64: u8 = 4;
    pub const BOOL: u8 = 5;
    pub const STRING: u8 = 6;
    pub const BYTES: u8 = 7;

    pub fn name(t: u8) -> &'static str {
        match t {
            U8 => "u8",
            U16 => "u16",
            U32 => "u32",
            U64 => "u64",
            BOOL => "bool",
            STRING => "string",
            BYTES => "bytes",
            _ => "unknown",
        }
    }
}

/// Field ids. One id keeps one meaning in every message type.
pub mod id {
    pub const INTENT_ID: u16 = 1;
    pub const COMMAND_ID: u16 = 2;
    pub const EXECUTION_ID: u16 = 3;
    pub const EVENT_ID: u16 = 4;
    pub const PHASE: u16 = 5;
    pub const TIMESTAMP_MS: u16 = 6;
    pub const ACTOR: u16 = 100;
    pub const TARGET_SCOPE: u16 = 101;
    pub const OBJECTIVE: u16 = 102;
    pub const GHOST_ID: u16 = 200;
    pub const SEED_SELECTOR: u16 = 201;
    pub const OPERATION: u16 = 202;
    pub const ARGS: u16 = 203;
    /// ext: fencing token of the seed lock the command runs under.
    pub const LOCK_TOKEN: u16 = 204;
    /// ext: absolute deadline (ms since epoch) after which the Ghost must not start it.
    pub const DEADLINE_MS: u16 = 205;
    /// ext: dispatch attempt number.
    pub const ATTEMPT: u16 = 206;
    /// ext: ms the command had left before its deadline when the frame was written
    /// (relative, so a Ghost whose clock is off still measures it right). Carried as an
    /// unknown field (`Command::budget_ms`), so the typed envelope and its peers are unchanged.
    pub const BUDGET_MS: u16 = 207;
    pub const SEED_ID: u16 = 300;
    pub const EXEC_OPERATION: u16 = 301;
    pub const EXEC_ARGS: u16 = 302;
    pub const STATUS: u16 = 400;
    pub const STDOUT: u16 = 401;
    pub const STDERR: u16 = 402;
    pub const EXIT_CODE: u16 = 403;
    pub const OUTCOME: u16 = 500;
    pub const SUMMARY: u16 = 600;
    pub const COMPLETION_STATE: u16 = 601;
    pub const ACK_STATUS: u16 = 700;
    pub const ACK_CODE: u16 = 701;
    /// ext: error frames.
    pub const ERROR_CODE: u16 = 800;
    pub const ERROR_REASON: u16 = 801;
    pub const REF_MESSAGE_ID: u16 = 802;

    /// Name and declared type of a known field id.
    pub fn describe(id: u16) -> Option<(&'static str, u8)> {
        use super::ty::*;
        Some(match id {
            INTENT_ID => ("intent_id", STRING),
            COMMAND_ID => ("command_id", STRING),
            EXECUTION_ID => ("execution_id", STRING),
            EVENT_ID => ("event_id", STRING),
            PHASE => ("phase", STRING),
            TIMESTAMP_MS => ("timestamp_ms", U64),
            ACTOR => ("actor", STRING),
            TARGET_SCOPE => ("target_scope", STRING),
            OBJECTIVE => ("objective", STRING),
            GHOST_ID => ("ghost_id", STRING),
            SEED_SELECTOR => ("seed_selector", STRING),
            OPERATION => ("operation", STRING),
            ARGS => ("args", BYTES),
            LOCK_TOKEN => ("lock_token", U64),
            DEADLINE_MS => ("deadline_ms", U64),
            ATTEMPT => ("attempt", U32),
            BUDGET_MS => ("budget_ms", U64),
            SEED_ID => ("seed_id", STRING),
            EXEC_OPERATION => ("operation", STRING),
            EXEC_ARGS => ("args", BYTES),
            STATUS => ("status", STRING),
            STDOUT => ("stdout", BYTES),
            STDERR => ("stderr", BYTES),
            EXIT_CODE => ("exit_code", U32),
            OUTCOME => ("outcome", STRING),
            SUMMARY => ("summary", STRING),
            COMPLETION_STATE => ("completion_state", STRING),
            ACK_STATUS => ("ack_status", STRING),
            ACK_CODE => ("ack_code", U32),
            ERROR_CODE => ("error_code", U32),
            ERROR_REASON => ("error_reason", STRING),
            REF_MESSAGE_ID => ("ref_message_id", U64),
            _ => return None,
        })
    }
}

/// One raw field. The value is a zero-copy slice of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub id: u16,
    pub ty: u8,
    pub value: Bytes,
}

impl Field {
    pub fn string(id: u16, s: &str) -> Field {
        Field {
            id,
            ty: ty::STRING,
            value: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    pub fn bytes(id: u16, b: Bytes) -> Field {
        Field {
            id,
            ty: ty::BYTES,
            value: b,
        }
    }

    pub fn u32(id: u16, v: u32) -> Field {
        Field {
            id,
            ty: ty::U32,
            value: Bytes::copy_from_slice(&v.to_be_bytes()),
        }
    }

    pub fn u64(id: u16, v: u64) -> Field {
        Field {
            id,
            ty: ty::U64,
            value: Bytes::copy_from_slice(&v.to_be_bytes()),
        }
    }

    fn width(&self, want: usize, name: &'static str) -> Result<&[u8], WireError> {
        if self.value.len() != want {
            return Err(WireError::BadWidth {
                field_id: self.id,
                ty: name,
                want,
                got: self.value.len(),
            });
        }
        Ok(&self.value)
    }

    pub fn as_u8(&self) -> Result<u8, WireError> {
        Ok(self.width(1, "u8")?[0])
    }

    pub fn as_u16(&self) -> Result<u16, WireError> {
        Ok((&self.width(2, "u16")?[..]).get_u16())
    }

    pub fn as_u32(&self) -> Result<u32, WireError> {
        Ok((&self.width(4, "u32")?[..]).get_u32())
    }

    pub fn as_u64(&self) -> Result<u64, WireError> {
        Ok((&self.width(8, "u64")?[..]).get_u64())
    }

    pub fn as_bool(&self) -> Result<bool, WireError> {
        match self.width(1, "bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::BadValue {
                field_id: self.id,
                reason: format!("bool must be 0 or 1, got {v}"),
            }),
        }
    }

    pub fn as_str(&self) -> Result<&str, WireError> {
        std::str::from_utf8(&self.value).map_err(|_| WireError::InvalidUtf8 { field_id: self.id })
    }

    pub fn encoded_len(&self) -> usize {
        FIELD_HEADER_LEN + self.value.len()
    }
}

/// Fields in wire order, duplicates and unknown ids kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields(pub Vec<Field>);

impl Fields {
    pub fn new() -> Fields {
        Fields(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Fields {
        Fields(Vec::with_capacity(n))
    }

    pub fn push(&mut self, f: Field) {
        self.0.push(f);
    }

    /// First occurrence wins (edgectl's rule).
    pub fn get(&self, id: u16) -> Option<&Field> {
        self.0.iter().find(|f| f.id == id)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Field> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(Field::encoded_len).sum()
    }

    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        dst.reserve(self.encoded_len());
        for f in &self.0 {
            let len = u32::try_from(f.value.len()).map_err(|_| {
                WireError::Encode(format!("field {} longer than u32::MAX bytes", f.id))
            })?;
            dst.put_u16(f.id);
            dst.put_u8(f.ty);
            dst.put_u32(len);
            dst.extend_from_slice(&f.value);
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut b)?;
        Ok(b.freeze())
    }
}

impl FromIterator<Field> for Fields {
    fn from_iter<I: IntoIterator<Item = Field>>(iter: I) -> Self {
        Fields(iter.into_iter().collect())
    }
}

/// Decodes a payload into raw fields without looking at ids or types.
pub fn decode(payload: &Bytes) -> Result<Fields, WireError> {
    // A field needs at least 7 bytes, which bounds the Vec before we start.
    let mut out = Vec::with_capacity((payload.len() / FIELD_HEADER_LEN).min(32));
    let mut offset = 0usize;
    let total = payload.len();
    while offset < total {
        let remaining = total - offset;
        if remaining < FIELD_HEADER_LEN {
            return Err(WireError::ShortFieldHeader { offset, remaining });
        }
        let mut h = &payload[offset..offset + FIELD_HEADER_LEN];
        let id = h.get_u16();
        let t = h.get_u8();
        let len = h.get_u32();
        let start = offset + FIELD_HEADER_LEN;
        if len as usize > total - start {
            return Err(WireError::ShortFieldValue {
                offset,
                field_id: id,
                declared: len,
                remaining: total - start,
            });
        }
        let end = start + len as usize;
        out.push(Field {
            id,
            ty: t,
            value: payload.slice(start..end),
        });
        offset = end;
    }
    Ok(Fields(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_duplicates_and_unknowns() {
        let fs = Fields(vec![
            Field::string(4, "first"),
            Field::string(4, "second"),
            Field {
                id: 60000,
                ty: 99,
                value: Bytes::new(),
            },
        ]);
        let b = fs.to_bytes().unwrap();
        let back = decode(&b).unwrap();
        assert_eq!(back, fs);
        assert_eq!(back.get(4).unwrap().as_str().unwrap(), "first");
        assert_eq!(back.to_bytes().unwrap(), b);
    }

    #[test]
    fn widths_are_checked() {
        let f = Field {
            id: 6,
            ty: ty::U64,
            value: Bytes::from_static(&[0, 0, 0, 1]),
        };
        assert!(matches!(
            f.as_u64(),
            Err(WireError::BadWidth {
                want: 8,
                got: 4,
                ..
            })
        ));
        assert_eq!(Field::u32(1, 7).as_u32().unwrap(), 7);
        let b = Field {
            id: 9,
            ty: ty::BOOL,
            value: Bytes::from_static(&[2]),
        };
        assert!(b.as_bool().is_err());
        let s = Field {
            id: 1,
            ty: ty::STRING,
            value: Bytes::from_static(&[0xff]),
        };
        assert!(matches!(
            s.as_str(),
            Err(WireError::InvalidUtf8 { field_id: 1 })
        ));
    }

    #[test]
    fn overruns_are_tlv_errors() {
        let b = Bytes::from_static(&[0, 1, 6, 0, 0, 0, 9, b'x']);
        assert!(matches!(
            decode(&b),
            Err(WireError::ShortFieldValue { declared: 9, .. })
        ));
        let b = Bytes::from_static(&[0, 1, 6]);
        assert!(matches!(
            decode(&b),
            Err(WireError::ShortFieldHeader { remaining: 3, .. })
        ));
        let huge = Bytes::from_static(&[0, 1, 6, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode(&huge).is_err());
    }
}
