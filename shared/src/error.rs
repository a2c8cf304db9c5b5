//! One error type for everything that can go wrong between two peers.
//!
//! Every variant knows its wire code (PROTOCOL.md §6) and the decode stage it belongs to, so
//! logs, `error` frames and the `mirage wire decode` tool all speak the same words.

use std::fmt;

/// Where in the decoder pipeline an input failed. Ordered: a failure at an earlier stage is
/// "earlier" (`Frame < Tlv < Schema < Typed`), which is what the conformance vectors compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Header, lengths, short reads.
    Frame,
    /// A TLV field header or value overruns the payload.
    Tlv,
    /// Unknown message type, missing required field, wrong type byte.
    Schema,
    /// Typed decode: wrong-width number, invalid UTF-8, args not a JSON object, bad vocabulary.
    Typed,
    /// The NDJSON registration lines.
    Handshake,
    /// Sockets, TLS, identity.
    Transport,
    /// A seed or command failed while running.
    Runtime,
    /// Our own bug or resource exhaustion.
    Internal,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Frame => "frame",
            Stage::Tlv => "tlv",
            Stage::Schema => "schema",
            Stage::Typed => "typed",
            Stage::Handshake => "handshake",
            Stage::Transport => "transport",
            Stage::Runtime => "runtime",
            Stage::Internal => "internal",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wire error codes (PROTOCOL.md §6).
pub mod code {
    pub const TRANSPORT: u32 = 1000;
    pub const FRAMING_HEADER: u32 = 1100;
    pub const OVERSIZE: u32 = 1101;
    pub const TLV_DECODE: u32 = 1200;
    pub const SEMANTIC: u32 = 1300;
    pub const RUNTIME: u32 = 1400;
    pub const INTERNAL: u32 = 1500;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    // ---- frame stage ----
    #[error("frame: short fixed header ({got} of 32 bytes)")]
    ShortHeader { got: usize },
    #[error("frame: unsupported magic 0x{0:08X}")]
    BadMagic(u32),
    #[error("frame: unsupported version {0}")]
    BadVersion(u16),
    #[error("frame: unsupported flags 0x{0:08X}")]
    BadFlags(u32),
    #[error("frame: header_len {0} smaller than the fixed header (32)")]
    HeaderLenTooSmall(u16),
    #[error("frame: has_auth is {has_auth} but the header carries {auth_len} auth bytes")]
    AuthFlagMismatch { has_auth: bool, auth_len: usize },
    #[error("frame: auth block of {len} bytes exceeds the limit of {max}")]
    AuthTooLarge { len: usize, max: usize },
    #[error("frame: payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: u64, max: u64 },
    #[error("frame: truncated, {need} bytes declared, {got} available")]
    Truncated { need: u64, got: usize },
    #[error("frame: {extra} trailing bytes after the frame")]
    TrailingBytes { extra: usize },

    // ---- tlv stage ----
    #[error("tlv: short field header at offset {offset} ({remaining} bytes left, 7 needed)")]
    ShortFieldHeader { offset: usize, remaining: usize },
    #[error(
        "tlv: field {field_id} at offset {offset} declares {declared} bytes, {remaining} left"
    )]
    ShortFieldValue {
        offset: usize,
        field_id: u16,
        declared: u32,
        remaining: usize,
    },

    // ---- schema stage ----
    #[error("schema: message_type={0}: unknown message_type")]
    UnknownMessageType(u32),
    #[error(
        "schema: message_type={message_type} ({name}) field={field_id}: missing required field"
    )]
    MissingField {
        message_type: u32,
        name: &'static str,
        field_id: u16,
    },
    #[error("schema: message_type={message_type} ({name}) field={field_id}: type mismatch (want {expected}, got {got})")]
    TypeMismatch {
        message_type: u32,
        name: &'static str,
        field_id: u16,
        expected: u8,
        got: u8,
    },

    // ---- typed stage ----
    #[error("typed: field {field_id}: {ty} needs {want} bytes, got {got}")]
    BadWidth {
        field_id: u16,
        ty: &'static str,
        want: usize,
        got: usize,
    },
    #[error("typed: field {field_id}: invalid UTF-8")]
    InvalidUtf8 { field_id: u16 },
    #[error("typed: field {field_id}: {reason}")]
    BadValue { field_id: u16, reason: String },
    #[error("typed: field {field_id}: args must be a JSON object of string values: {reason}")]
    BadArgs { field_id: u16, reason: String },
    #[error("typed: {0}")]
    Encode(String),

    // ---- handshake stage ----
    #[error("handshake: line exceeds {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("handshake: stream ended before a complete line")]
    LineEof,
    #[error("handshake: {0}")]
    Handshake(String),

    // ---- transport ----
    #[error("transport: {0}")]
    Io(String),
}

impl WireError {
    pub fn stage(&self) -> Stage {
        use WireError::*;
        match self {
            ShortHeader { .. }
            | BadMagic(_)
            | BadVersion(_)
            | BadFlags(_)
            | HeaderLenTooSmall(_)
            | AuthFlagMismatch { .. }
            | AuthTooLarge { .. }
            | PayloadTooLarge { .. }
            | Truncated { .. }
            | TrailingBytes { .. } => Stage::Frame,
            ShortFieldHeader { .. } | ShortFieldValue { .. } => Stage::Tlv,
            UnknownMessageType(_) | MissingField { .. } | TypeMismatch { .. } => Stage::Schema,
            BadWidth { .. } | InvalidUtf8 { .. } | BadValue { .. } | BadArgs { .. } | Encode(_) => {
                Stage::Typed
            }
            LineTooLong { .. } | LineEof | Handshake(_) => Stage::Handshake,
            Io(_) => Stage::Transport,
        }
    }

    /// The wire error code (PROTOCOL.md §6) for this failure.
    pub fn code(&self) -> u32 {
        match self {
            WireError::AuthTooLarge { .. }
            | WireError::PayloadTooLarge { .. }
            | WireError::LineTooLong { .. } => code::OVERSIZE,
            WireError::Io(_) => code::TRANSPORT,
            WireError::Encode(_) => code::INTERNAL,
            other => match other.stage() {
                Stage::Frame => code::FRAMING_HEADER,
                Stage::Tlv => code::TLV_DECODE,
                Stage::Schema | Stage::Typed | Stage::Handshake => code::SEMANTIC,
                Stage::Transport => code::TRANSPORT,
                Stage::Runtime => code::RUNTIME,
                Stage::Internal => code::INTERNAL,
            },
        }
    }

    /// True when the byte stream can no longer be trusted (framing or TLV broke), so the
    /// session must close; schema and typed errors leave the stream in sync.
    pub fn breaks_stream(&self) -> bool {
        matches!(
            self.stage(),
            Stage::Frame | Stage::Tlv | Stage::Handshake | Stage::Transport
        )
    }
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e.to_string())
    }
}
