//! `shared`: everything Mirage and Ghost both speak.
//!
//! - [`wire`]: the 32-byte frame header, TLV fields and the tokio-util codec (pure, no I/O).
//! - [`envelope`]: the eight typed envelopes and their schema.
//! - [`handshake`]: the `seed.register` / `seed.register.ack` NDJSON lines.
//! - [`session`]: timeouts, heartbeat policy and reconnect backoff with jitter.
//! - [`error`]: one error type mapping to wire codes and decode stages.
//! - [`dbguard`]: checks a database's files before SQLite opens them (wiped db, bad WAL).
//! - [`reserve`]: a preallocated file given back to the disk when a store write fails.

pub mod dbguard;
#[cfg(feature = "doctor")]
pub mod doctor;
pub mod envelope;
pub mod error;
pub mod handshake;
pub mod notify;
pub mod observe;
pub mod reserve;
pub mod session;
pub mod wire;

pub use envelope::Envelope;
pub use error::{Stage, WireError};
pub use wire::{Frame, FrameCodec, Limits};

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), coloured only on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lower-case hex, for tools, logs and tests.
pub mod hex {
    pub fn encode(b: &[u8]) -> String {
        const D: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(b.len() * 2);
        for &x in b {
            s.push(D[(x >> 4) as usize] as char);
            s.push(D[(x & 15) as usize] as char);
        }
        s
    }

    /// Decodes hex text, ignoring ASCII whitespace. `None` if anything else is found or the
    /// digit count is odd.
    pub fn decode(s: &[u8]) -> Option<Vec<u8>> {
        let digits: Vec<u8> = s
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        if !digits.len().is_multiple_of(2) {
            return None;
        }
        let val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        digits
            .chunks_exact(2)
            .map(|p| Some(val(p[0])? << 4 | val(p[1])?))
            .collect()
    }
}
