//! The optional frame auth block (PROTOCOL.md §6, ext):
//! `scheme:u8 (1 = HMAC-SHA256) | key_id_len:u8 | key_id | mac[32]`, the MAC over
//! message_id (u64 BE), message_type (u32 BE), flags (u32 BE, has_auth set) and the payload,
//! with the key named by key_id. Pure.

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{flags, Frame};
use crate::error::WireError;

pub const SCHEME_HMAC_SHA256: u8 = 1;
const MAC_LEN: usize = 32;

fn mac(key: &[u8], f: &Frame, flags_word: u32) -> Result<Hmac<Sha256>, WireError> {
    let mut m = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| WireError::Io("auth: unusable key".into()))?;
    m.update(&f.message_id.to_be_bytes());
    m.update(&f.message_type.to_be_bytes());
    m.update(&flags_word.to_be_bytes());
    m.update(&f.payload);
    Ok(m)
}

/// Adds an auth block signed with `key` under `key_id` (at most 255 bytes).
pub fn sign(f: &mut Frame, key_id: &str, key: &[u8]) -> Result<(), WireError> {
    let id = key_id.as_bytes();
    if id.is_empty() || id.len() > 255 {
        return Err(WireError::Encode(
            "auth: key_id must be 1..=255 bytes".into(),
        ));
    }
    f.flags |= flags::HAS_AUTH;
    let tag = mac(key, f, f.flags)?.finalize().into_bytes();
    let mut b = BytesMut::with_capacity(2 + id.len() + MAC_LEN);
    b.put_u8(SCHEME_HMAC_SHA256);
    b.put_u8(id.len() as u8);
    b.extend_from_slice(id);
    b.extend_from_slice(&tag);
    f.auth = b.freeze();
    Ok(())
}

/// The key_id an auth block names (without checking the MAC).
pub fn key_id(auth: &Bytes) -> Result<&str, WireError> {
    let bad = |why: &str| WireError::Io(format!("auth: {why}"));
    if auth.is_empty() {
        return Err(bad("frame carries no auth block"));
    }
    if auth[0] != SCHEME_HMAC_SHA256 {
        return Err(bad(&format!("unknown scheme {}", auth[0])));
    }
    let n = *auth.get(1).ok_or_else(|| bad("truncated block"))? as usize;
    if auth.len() != 2 + n + MAC_LEN {
        return Err(bad("block length does not match key_id and MAC"));
    }
    std::str::from_utf8(&auth[2..2 + n]).map_err(|_| bad("key_id is not UTF-8"))
}

/// Checks the block with the key `keys` returns for its key_id; returns the key_id.
pub fn verify<K: AsRef<[u8]>>(
    f: &Frame,
    keys: impl Fn(&str) -> Option<K>,
) -> Result<&str, WireError> {
    let id = key_id(&f.auth)?;
    let key = keys(id).ok_or_else(|| WireError::Io(format!("auth: unknown key_id {id:?}")))?;
    let tag = &f.auth[2 + id.len()..];
    mac(key.as_ref(), f, f.flags)?
        .verify_slice(tag)
        .map_err(|_| WireError::Io(format!("auth: MAC does not verify for key_id {id:?}")))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame::new(9, 5, 0, Bytes::from_static(b"payload"))
    }

    #[test]
    fn sign_verify_and_every_tamper_fails() {
        let mut f = frame();
        sign(&mut f, "g1", b"secret").unwrap();
        assert!(f.flags & flags::HAS_AUTH != 0);
        // Survives the wire.
        let back = crate::wire::decode_one(&f.to_bytes().unwrap(), &Default::default()).unwrap();
        let keys = |id: &str| (id == "g1").then_some(b"secret".to_vec());
        assert_eq!(verify(&back, keys).unwrap(), "g1");
        let mut t = back.clone();
        t.payload = Bytes::from_static(b"pay1oad");
        assert!(verify(&t, keys).is_err(), "payload");
        let mut t = back.clone();
        t.message_id += 1;
        assert!(verify(&t, keys).is_err(), "message_id");
        let mut t = back.clone();
        t.flags |= flags::IS_RESPONSE;
        assert!(verify(&t, keys).is_err(), "flags");
        assert!(
            verify(&back, |_: &str| Some(b"other".to_vec())).is_err(),
            "wrong key"
        );
        assert!(verify(&frame(), keys).is_err(), "no block");
        let mut t = back;
        let mut a = t.auth.to_vec();
        a[0] = 2;
        t.auth = Bytes::from(a);
        assert!(verify(&t, keys).is_err(), "unknown scheme");
    }
}
