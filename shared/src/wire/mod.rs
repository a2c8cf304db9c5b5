//! The binary frame (PROTOCOL.md §3): a fixed 32-byte big-endian header, an optional auth
//! block, and a flat TLV payload. Pure: no I/O here; the codec plugs into tokio-util framing.

pub mod auth;
pub mod tlv;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::WireError;
pub use tlv::{Field, Fields};

pub const MAGIC: u32 = 0xEDCE_1001;
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;

pub mod flags {
    pub const HAS_AUTH: u32 = 0x01;
    pub const IS_RESPONSE: u32 = 0x02;
    pub const IS_ERROR: u32 = 0x04;
    pub const SUPPORTED: u32 = HAS_AUTH | IS_RESPONSE | IS_ERROR;
}

/// Default payload limit: 8 MiB, as edgectl.
pub const DEFAULT_MAX_PAYLOAD: u64 = 8 * 1024 * 1024;
/// The auth block is bounded by `header_len: u16`; anything above this cannot be expressed.
pub const MAX_AUTH_REPRESENTABLE: usize = u16::MAX as usize - HEADER_LEN;

/// Decoder limits. Both are checked from the header alone, before any buffer grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_payload: u64,
    pub max_auth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_auth: 64 * 1024,
        }
    }
}

/// The fixed header exactly as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub version: u16,
    pub header_len: u16,
    pub message_id: u64,
    pub message_type: u32,
    pub flags: u32,
    pub payload_len: u64,
}

impl Header {
    /// Reads the 32 header bytes without validating anything.
    pub fn parse(b: &[u8]) -> Result<Header, WireError> {
        if b.len() < HEADER_LEN {
            return Err(WireError::ShortHeader { got: b.len() });
        }
        let mut b = &b[..HEADER_LEN];
        Ok(Header {
            magic: b.get_u32(),
            version: b.get_u16(),
            header_len: b.get_u16(),
            message_id: b.get_u64(),
            message_type: b.get_u32(),
            flags: b.get_u32(),
            payload_len: b.get_u64(),
        })
    }

    /// Validation in PROTOCOL.md §3 order: magic, version, flags, header_len ≥ 32,
    /// has_auth ⇔ auth bytes, auth limit, payload limit. Returns the auth length.
    pub fn validate(&self, limits: &Limits) -> Result<usize, WireError> {
        if self.magic != MAGIC {
            return Err(WireError::BadMagic(self.magic));
        }
        if self.version != VERSION {
            return Err(WireError::BadVersion(self.version));
        }
        if self.flags & !flags::SUPPORTED != 0 {
            return Err(WireError::BadFlags(self.flags));
        }
        if (self.header_len as usize) < HEADER_LEN {
            return Err(WireError::HeaderLenTooSmall(self.header_len));
        }
        let auth_len = self.header_len as usize - HEADER_LEN;
        let has_auth = self.flags & flags::HAS_AUTH != 0;
        // edgectl accepts auth bytes without the flag; we do not (they would be unauthenticated
        // bytes that nobody checks).
        if has_auth != (auth_len > 0) {
            return Err(WireError::AuthFlagMismatch { has_auth, auth_len });
        }
        if auth_len > limits.max_auth {
            return Err(WireError::AuthTooLarge {
                len: auth_len,
                max: limits.max_auth,
            });
        }
        if self.payload_len > limits.max_payload {
            return Err(WireError::PayloadTooLarge {
                len: self.payload_len,
                max: limits.max_payload,
            });
        }
        Ok(auth_len)
    }

    pub fn write(&self, dst: &mut BytesMut) {
        dst.put_u32(self.magic);
        dst.put_u16(self.version);
        dst.put_u16(self.header_len);
        dst.put_u64(self.message_id);
        dst.put_u32(self.message_type);
        dst.put_u32(self.flags);
        dst.put_u64(self.payload_len);
    }
}

/// One decoded frame. `auth` and `payload` are zero-copy slices of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub message_id: u64,
    pub message_type: u32,
    /// Flags as sent; `has_auth` is derived from `auth` when encoding.
    pub flags: u32,
    pub auth: Bytes,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(message_id: u64, message_type: u32, flags: u32, payload: Bytes) -> Frame {
        Frame {
            message_id,
            message_type,
            flags,
            auth: Bytes::new(),
            payload,
        }
    }

    /// The header this frame encodes to.
    pub fn header(&self) -> Header {
        let mut flags = self.flags & !flags::HAS_AUTH;
        if !self.auth.is_empty() {
            flags |= flags::HAS_AUTH;
        }
        Header {
            magic: MAGIC,
            version: VERSION,
            header_len: (HEADER_LEN + self.auth.len()).min(u16::MAX as usize) as u16,
            message_id: self.message_id,
            message_type: self.message_type,
            flags,
            payload_len: self.payload.len() as u64,
        }
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.auth.len() + self.payload.len()
    }

    /// Appends the frame to `dst`, refusing what a strict receiver would reject.
    pub fn encode_into(&self, limits: &Limits, dst: &mut BytesMut) -> Result<(), WireError> {
        if self.flags & !flags::SUPPORTED != 0 {
            return Err(WireError::BadFlags(self.flags));
        }
        // Fixes edgectl's u16 wrap of header_len for auth near 64 KiB.
        let max_auth = limits.max_auth.min(MAX_AUTH_REPRESENTABLE);
        if self.auth.len() > max_auth {
            return Err(WireError::AuthTooLarge {
                len: self.auth.len(),
                max: max_auth,
            });
        }
        if self.payload.len() as u64 > limits.max_payload {
            return Err(WireError::PayloadTooLarge {
                len: self.payload.len() as u64,
                max: limits.max_payload,
            });
        }
        dst.reserve(self.encoded_len());
        self.header().write(dst);
        dst.extend_from_slice(&self.auth);
        dst.extend_from_slice(&self.payload);
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&Limits::default(), &mut b)?;
        Ok(b.freeze())
    }

    pub fn is_response(&self) -> bool {
        self.flags & flags::IS_RESPONSE != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags & flags::IS_ERROR != 0
    }

    /// TLV-decodes the payload (zero-copy).
    pub fn fields(&self) -> Result<Fields, WireError> {
        tlv::decode(&self.payload)
    }
}

/// tokio-util codec for a stream of frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec {
    limits: Limits,
}

impl FrameCodec {
    pub fn new(limits: Limits) -> FrameCodec {
        FrameCodec { limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = Header::parse(src)?;
        let auth_len = header.validate(&self.limits)?;
        // Both lengths are bounded by the limits now, so this cannot overflow or over-allocate.
        let total = HEADER_LEN + auth_len + header.payload_len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut whole = src.split_to(total).freeze();
        whole.advance(HEADER_LEN);
        let auth = whole.split_to(auth_len);
        Ok(Some(Frame {
            message_id: header.message_id,
            message_type: header.message_type,
            flags: header.flags,
            auth,
            payload: whole,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None if src.len() < HEADER_LEN => Err(WireError::ShortHeader { got: src.len() }),
            None => {
                let header = Header::parse(src)?;
                Err(WireError::Truncated {
                    need: header.header_len as u64 + header.payload_len,
                    got: src.len(),
                })
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        frame.encode_into(&self.limits, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        frame.encode_into(&self.limits, dst)
    }
}

/// Decodes exactly one frame from a complete byte string (tools, admin `execute_envelope`,
/// tests). An empty or short input is a short header; bytes past the frame are an error.
pub fn decode_one(bytes: &[u8], limits: &Limits) -> Result<Frame, WireError> {
    let header = Header::parse(bytes)?;
    let auth_len = header.validate(limits)?;
    let total = HEADER_LEN as u64 + auth_len as u64 + header.payload_len;
    if (bytes.len() as u64) < total {
        return Err(WireError::Truncated {
            need: total,
            got: bytes.len(),
        });
    }
    if (bytes.len() as u64) > total {
        return Err(WireError::TrailingBytes {
            extra: bytes.len() - total as usize,
        });
    }
    let mut buf = BytesMut::from(bytes);
    FrameCodec::new(*limits)
        .decode(&mut buf)?
        .ok_or(WireError::Truncated {
            need: total,
            got: bytes.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame::new(
            7,
            5,
            0,
            Bytes::from_static(b"\x00\x04\x06\x00\x00\x00\x01x"),
        )
    }

    #[test]
    fn round_trip_and_header() {
        let f = sample();
        let b = f.to_bytes().unwrap();
        assert_eq!(b.len(), 40);
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.payload_len, 8);
        assert_eq!(decode_one(&b, &Limits::default()).unwrap(), f);
    }

    #[test]
    fn oversize_is_rejected_from_the_header_alone() {
        let mut codec = FrameCodec::new(Limits {
            max_payload: 16,
            max_auth: 0,
        });
        let mut b = BytesMut::new();
        Header {
            magic: MAGIC,
            version: 1,
            header_len: 32,
            message_id: 1,
            message_type: 5,
            flags: 0,
            payload_len: 8 << 30,
        }
        .write(&mut b);
        let cap_before = b.capacity();
        let err = codec.decode(&mut b).unwrap_err();
        assert!(matches!(err, WireError::PayloadTooLarge { .. }));
        assert_eq!(err.code(), crate::error::code::OVERSIZE);
        assert_eq!(
            b.capacity(),
            cap_before,
            "no allocation for a rejected header"
        );
    }

    #[test]
    fn auth_without_flag_is_rejected() {
        let mut f = sample();
        f.auth = Bytes::from_static(b"abc");
        let mut b = BytesMut::from(&f.to_bytes().unwrap()[..]);
        b[23] = 0; // clear has_auth in the flags word
        let err = decode_one(&b, &Limits::default()).unwrap_err();
        assert!(matches!(
            err,
            WireError::AuthFlagMismatch {
                has_auth: false,
                auth_len: 3
            }
        ));
    }

    #[test]
    fn encoder_refuses_unknown_flags_and_unrepresentable_auth() {
        let mut f = sample();
        f.flags = 0x10;
        assert!(matches!(f.to_bytes(), Err(WireError::BadFlags(0x10))));
        let mut f = sample();
        f.auth = Bytes::from(vec![0u8; MAX_AUTH_REPRESENTABLE + 1]);
        let limits = Limits {
            max_auth: 1 << 20,
            ..Limits::default()
        };
        let mut out = BytesMut::new();
        assert!(matches!(
            f.encode_into(&limits, &mut out),
            Err(WireError::AuthTooLarge { .. })
        ));
    }

    #[test]
    fn eof_mid_frame_is_an_error() {
        let b = sample().to_bytes().unwrap();
        let mut codec = FrameCodec::default();
        let mut part = BytesMut::from(&b[..b.len() - 1]);
        assert_eq!(codec.decode(&mut part).unwrap(), None);
        assert!(matches!(
            codec.decode_eof(&mut part),
            Err(WireError::Truncated { .. })
        ));
        let mut short = BytesMut::from(&b[..10]);
        assert!(matches!(
            codec.decode_eof(&mut short),
            Err(WireError::ShortHeader { got: 10 })
        ));
        assert_eq!(codec.decode_eof(&mut BytesMut::new()).unwrap(), None);
    }
}
