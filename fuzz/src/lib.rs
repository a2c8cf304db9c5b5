//! Oracles shared by the fuzz targets. Each one panics only when a property of the wire
//! contract is broken; malformed input must come back as an error of the right stage.

pub mod control;

use bytes::{Bytes, BytesMut};
use shared::envelope::Envelope;
use shared::error::{Stage, WireError};
use shared::handshake;
use shared::wire::tlv;
use shared::wire::{decode_one, Frame, FrameCodec, Limits};
use tokio_util::codec::Decoder;

/// Decodes `chunks` as one stream: `decode` after each chunk, `decode_eof` at the end. Returns
/// the frames decoded and the error that stopped the stream, if any.
fn decode_chunks(chunks: &[&[u8]]) -> (Vec<Frame>, Option<WireError>) {
    let mut codec = FrameCodec::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Typed decode succeeded: re-encoding must give the same envelope back, through fields and
/// through a frame, and the re-encoded fields must be a fixpoint.
fn check_envelope(message_type: u32, env: &Envelope) {
    assert_eq!(env.message_type(), message_type);
    let fields = env.to_fields();
    let again = Envelope::decode(message_type, &fields)
        .unwrap_or_else(|e| panic!("re-encoded fields of {env:?} do not decode: {e}"));
    assert_eq!(&again, env, "re-encoded fields decode differently");
    assert_eq!(again.to_fields(), fields, "re-encoding is not a fixpoint");
    let bytes = env
        .to_frame(7)
        .and_then(|f| f.to_bytes())
        .unwrap_or_else(|e| panic!("decoded envelope does not frame: {e}"));
    let frame = decode_one(&bytes, &Limits::default())
        .unwrap_or_else(|e| panic!("our own frame does not decode: {e}"));
    let back = Envelope::from_frame(&frame)
        .unwrap_or_else(|e| panic!("our own frame does not decode as an envelope: {e}"));
    assert_eq!(&back, env, "frame round trip differs");
}

/// `frame_stream`: the first byte picks where the rest is split in two. Decoding whole or in
/// two chunks must agree exactly; decoded frames re-encode to the bytes they came from; every
/// frame goes through the envelope pipeline.
pub fn frame_stream(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let split = (k as usize * rest.len()) / 255;
    let (frames, err) = decode_chunks(&[rest]);
    let parts = decode_chunks(&[&rest[..split], &rest[split..]]);
    assert_eq!(
        (&frames, &err),
        (&parts.0, &parts.1),
        "split at {split} changed the result"
    );
    if let Some(e) = &err {
        assert_eq!(e.stage(), Stage::Frame, "{e}");
    }
    let mut re = BytesMut::new();
    for f in &frames {
        f.encode_into(&Limits::default(), &mut re)
            .unwrap_or_else(|e| panic!("decoded frame does not re-encode: {e}"));
    }
    assert_eq!(&re[..], &rest[..re.len()], "frames re-encode differently");
    if err.is_none() {
        assert_eq!(re.len(), rest.len(), "bytes left over without an error");
    }
    for f in &frames {
        match Envelope::from_frame(f) {
            Ok(env) => check_envelope(f.message_type, &env),
            Err(e) => assert!(
                matches!(e.stage(), Stage::Tlv | Stage::Schema | Stage::Typed),
                "{e}"
            ),
        }
    }
}

/// `tlv`: whatever decodes re-encodes to exactly the input.
pub fn tlv_round_trip(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    match tlv::decode(&payload) {
        Ok(fields) => {
            let re = fields
                .to_bytes()
                .unwrap_or_else(|e| panic!("decoded fields do not re-encode: {e}"));
            assert_eq!(&re[..], data, "TLV re-encoding differs from the input");
        }
        Err(e) => assert_eq!(e.stage(), Stage::Tlv, "{e}"),
    }
}

/// `envelope_<type>`: the input as a TLV payload, typed-decoded as `message_type`.
pub fn envelope_round_trip(message_type: u32, data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let Ok(fields) = tlv::decode(&payload) else {
        return;
    };
    match Envelope::decode(message_type, &fields) {
        Ok(env) => check_envelope(message_type, &env),
        Err(e) => assert!(matches!(e.stage(), Stage::Schema | Stage::Typed), "{e}"),
    }
}

/// `handshake_line`: both parsers; an accepted line re-encodes to one that parses the same.
pub fn handshake_line(data: &[u8]) {
    match handshake::parse_registration(data) {
        Ok(reg) => {
            if let Ok(line) = handshake::registration_line(&reg) {
                let back = handshake::parse_registration(&line)
                    .unwrap_or_else(|e| panic!("our registration line does not parse: {e}"));
                assert_eq!(back, reg, "registration round trip differs");
            }
        }
        Err(e) => assert_eq!(e.stage(), Stage::Handshake, "{e}"),
    }
    match handshake::parse_registration_ack(data) {
        Ok(ack) => {
            let line = handshake::registration_ack_line(&ack)
                .unwrap_or_else(|e| panic!("accepted ack does not encode: {e}"));
            let back = handshake::parse_registration_ack(&line)
                .unwrap_or_else(|e| panic!("our ack line does not parse: {e}"));
            assert_eq!(back, ack, "ack round trip differs");
        }
        Err(e) => assert_eq!(e.stage(), Stage::Handshake, "{e}"),
    }
}
