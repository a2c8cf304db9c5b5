#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point
//! Property tests for the wire contract: typed round trips for all eight envelopes, no panics
//! on arbitrary input at every decode stage, stream decoding independent of how the bytes are
//! chunked, and single-byte mutations / oversize headers handled from the header alone.
//!
//! Kept under ~20 s in a debug build; crash inputs found by `fuzz/` are pinned at the bottom.

use bytes::{Bytes, BytesMut};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::Value;
use shared::envelope::{
    mt, schema, AckStatus, Args, Command, CompletionState, Envelope, ErrorEnvelope, Event,
    EventAck, Issue, Outcome, Phase, Report, SeedExecute, SeedResult,
};
use shared::error::{Stage, WireError};
use shared::handshake;
use shared::wire::tlv::{self, id, ty, Field, Fields};
use shared::wire::{decode_one, Frame, FrameCodec, Header, Limits, HEADER_LEN, MAGIC, VERSION};
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Required strings: typed decode rejects blank (whitespace-only) values.
fn non_blank() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9._-]{0,24}",
        1 => any::<String>().prop_filter("blank", |s| !s.trim().is_empty()),
    ]
}

/// Optional strings may be anything, blank included.
fn any_str() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[ -~]{0,16}", 1 => any::<String>()]
}

fn bytes_up_to(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn args() -> impl Strategy<Value = Args> {
    btree_map(any_str(), any_str(), 0..4)
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Success), Just(Outcome::Error)]
}

/// A field id no message type knows (so it always travels as an extra).
fn unknown_id() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("known id", |i| id::describe(*i).is_none())
}

fn unknown_field() -> impl Strategy<Value = Field> {
    (unknown_id(), any::<u8>(), bytes_up_to(24)).prop_map(|(id, ty, value)| Field { id, ty, value })
}

fn extras() -> impl Strategy<Value = Vec<Field>> {
    vec(unknown_field(), 0..4)
}

fn issue() -> BoxedStrategy<Envelope> {
    (
        non_blank(),
        non_blank(),
        non_blank(),
        non_blank(),
        option::of(any::<u64>()),
        extras(),
    )
        .prop_map(|(intent_id, actor, target_scope, objective, ts, extra)| {
            Envelope::Issue(Issue {
                intent_id,
                actor,
                target_scope,
                objective,
                timestamp_ms: ts,
                extra,
            })
        })
        .boxed()
}

fn command() -> BoxedStrategy<Envelope> {
    (
        (
            non_blank(),
            non_blank(),
            non_blank(),
            non_blank(),
            non_blank(),
        ),
        args(),
        (
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(any::<u32>()),
            option::of(any::<u64>()),
        ),
        extras(),
    )
        .prop_map(
            |(
                (command_id, intent_id, ghost_id, seed_selector, operation),
                args,
                (lock_token, deadline_ms, attempt, timestamp_ms),
                extra,
            )| {
                Envelope::Command(Command {
                    command_id,
                    intent_id,
                    ghost_id,
                    seed_selector,
                    operation,
                    args,
                    lock_token,
                    deadline_ms,
                    attempt,
                    timestamp_ms,
                    extra,
                })
            },
        )
        .boxed()
}

fn seed_execute() -> BoxedStrategy<Envelope> {
    (
        non_blank(),
        non_blank(),
        non_blank(),
        non_blank(),
        args(),
        extras(),
    )
        .prop_map(
            |(execution_id, command_id, seed_id, operation, args, extra)| {
                Envelope::SeedExecute(SeedExecute {
                    execution_id,
                    command_id,
                    seed_id,
                    operation,
                    args,
                    extra,
                })
            },
        )
        .boxed()
}

fn seed_result() -> BoxedStrategy<Envelope> {
    (
        non_blank(),
        non_blank(),
        non_blank(),
        bytes_up_to(96),
        bytes_up_to(32),
        any::<u32>(),
        extras(),
    )
        .prop_map(
            |(execution_id, seed_id, status, stdout, stderr, exit_code, extra)| {
                Envelope::SeedResult(SeedResult {
                    execution_id,
                    seed_id,
                    status,
                    stdout,
                    stderr,
                    exit_code,
                    extra,
                })
            },
        )
        .boxed()
}

fn event() -> BoxedStrategy<Envelope> {
    (
        (
            non_blank(),
            non_blank(),
            non_blank(),
            non_blank(),
            non_blank(),
        ),
        outcome(),
        option::of(any::<u64>()),
        (
            option::of(any_str()),
            option::of(any_str()),
            option::of(bytes_up_to(96)),
            option::of(bytes_up_to(32)),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            option::of(any_str()),
        ),
        extras(),
    )
        .prop_map(
            |(
                (event_id, command_id, intent_id, ghost_id, seed_id),
                outcome,
                timestamp_ms,
                (execution_id, status, stdout, stderr, exit_code, error_code, error_reason),
                extra,
            )| {
                Envelope::Event(Event {
                    event_id,
                    command_id,
                    intent_id,
                    ghost_id,
                    seed_id,
                    outcome,
                    timestamp_ms,
                    execution_id,
                    status,
                    stdout,
                    stderr,
                    exit_code,
                    error_code,
                    error_reason,
                    extra,
                })
            },
        )
        .boxed()
}

fn report() -> BoxedStrategy<Envelope> {
    (
        (
            non_blank(),
            prop_oneof![Just(Phase::InProgress), Just(Phase::Complete)],
            non_blank(),
            prop_oneof![
                Just(CompletionState::InProgress),
                Just(CompletionState::Satisfied),
                Just(CompletionState::Failed),
                Just(CompletionState::Corrective),
            ],
        ),
        (
            option::of(any_str()),
            option::of(any_str()),
            option::of(any_str()),
            option::of(outcome()),
            option::of(any::<u64>()),
            option::of(any_str()),
        ),
        extras(),
    )
        .prop_map(
            |(
                (intent_id, phase, summary, completion_state),
                (command_id, execution_id, event_id, outcome, timestamp_ms, ghost_id),
                extra,
            )| {
                Envelope::Report(Report {
                    intent_id,
                    phase,
                    summary,
                    completion_state,
                    command_id,
                    execution_id,
                    event_id,
                    outcome,
                    timestamp_ms,
                    ghost_id,
                    extra,
                })
            },
        )
        .boxed()
}

fn error_envelope() -> BoxedStrategy<Envelope> {
    (
        any::<u32>(),
        any_str(),
        option::of(any::<u64>()),
        option::of(any_str()),
        option::of(any_str()),
        option::of(any::<u64>()),
        extras(),
    )
        .prop_map(
            |(error_code, error_reason, ref_message_id, command_id, event_id, ts, extra)| {
                Envelope::Error(ErrorEnvelope {
                    error_code,
                    error_reason,
                    ref_message_id,
                    command_id,
                    event_id,
                    timestamp_ms: ts,
                    extra,
                })
            },
        )
        .boxed()
}

fn event_ack() -> BoxedStrategy<Envelope> {
    (
        non_blank(),
        non_blank(),
        non_blank(),
        prop_oneof![Just(AckStatus::Accepted), Just(AckStatus::Rejected)],
        any::<u32>(),
        any::<u64>(),
        extras(),
    )
        .prop_map(
            |(event_id, command_id, ghost_id, ack_status, ack_code, timestamp_ms, extra)| {
                Envelope::EventAck(EventAck {
                    event_id,
                    command_id,
                    ghost_id,
                    ack_status,
                    ack_code,
                    timestamp_ms,
                    extra,
                })
            },
        )
        .boxed()
}

fn extra_mut(env: &mut Envelope) -> &mut Vec<Field> {
    match env {
        Envelope::Issue(m) => &mut m.extra,
        Envelope::Command(m) => &mut m.extra,
        Envelope::SeedExecute(m) => &mut m.extra,
        Envelope::SeedResult(m) => &mut m.extra,
        Envelope::Event(m) => &mut m.extra,
        Envelope::Report(m) => &mut m.extra,
        Envelope::Error(m) => &mut m.extra,
        Envelope::EventAck(m) => &mut m.extra,
    }
}

/// Any of the eight envelopes. Besides unknown ids, the extras may carry later duplicates of
/// the ids the envelope writes (any type byte, any value): the first occurrence wins, the rest
/// travel along unchanged.
fn envelope() -> BoxedStrategy<Envelope> {
    let base = prop_oneof![
        issue(),
        command(),
        seed_execute(),
        seed_result(),
        event(),
        report(),
        error_envelope(),
        event_ack(),
    ];
    (
        base,
        vec(
            (
                any::<Index>(),
                any::<Index>(),
                any::<u8>(),
                interesting_value(),
            ),
            0..3,
        ),
    )
        .prop_map(|(mut env, dups)| {
            // Ids the encoder writes anyway (a later copy cannot become the first), and 203 on
            // a command, which must then be written even when the args are empty.
            let schema = schema::schema(env.message_type()).unwrap();
            let mut ids: Vec<u16> = env
                .to_fields()
                .iter()
                .map(|f| f.id)
                .filter(|i| schema.knows(*i))
                .collect();
            if env.message_type() == mt::COMMAND {
                ids.push(id::ARGS);
            }
            let extra = extra_mut(&mut env);
            for (which, at, ty, value) in dups {
                let id = ids[which.index(ids.len())];
                let at = at.index(extra.len() + 1);
                extra.insert(at, Field { id, ty, value });
            }
            env
        })
        .boxed()
}

/// Every id some message type knows.
fn known_ids() -> Vec<u16> {
    (0..=1000u16)
        .filter(|i| id::describe(*i).is_some())
        .collect()
}

/// Values that make typed decode get further than random bytes would.
fn interesting_value() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        select(vec![
            "success",
            "error",
            "accepted",
            "rejected",
            "in_progress",
            "complete",
            "satisfied",
            "failed",
            "corrective",
            "{}",
            "null",
            "[]",
            r#"{"a":"b"}"#,
            r#"{"a":1}"#,
            " ",
            "",
            "\u{3000}",
        ])
        .prop_map(|s| Bytes::from_static(s.as_bytes())),
        any::<u32>().prop_map(|v| Bytes::copy_from_slice(&v.to_be_bytes())),
        any::<u64>().prop_map(|v| Bytes::copy_from_slice(&v.to_be_bytes())),
        bytes_up_to(10),
        non_blank().prop_map(Bytes::from),
    ]
}

fn any_field() -> impl Strategy<Value = Field> {
    (
        prop_oneof![3 => select(known_ids()), 1 => any::<u16>()],
        prop_oneof![4 => 1u8..=7, 1 => any::<u8>()],
        interesting_value(),
    )
        .prop_map(|(id, ty, value)| Field { id, ty, value })
}

#[derive(Debug, Clone)]
enum Op {
    Remove(Index),
    Dup(Index, Index),
    Swap(Index, Index),
    SetTy(Index, u8),
    SetValue(Index, Bytes),
    Insert(Index, Field),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<Index>().prop_map(Op::Remove),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Op::Dup(a, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Op::Swap(a, b)),
        (any::<Index>(), prop_oneof![1u8..=7, any::<u8>()]).prop_map(|(a, t)| Op::SetTy(a, t)),
        (any::<Index>(), interesting_value()).prop_map(|(a, v)| Op::SetValue(a, v)),
        (any::<Index>(), any_field()).prop_map(|(a, f)| Op::Insert(a, f)),
    ]
}

fn apply(fields: &mut Vec<Field>, op: Op) {
    let n = fields.len();
    match op {
        Op::Insert(at, f) => fields.insert(at.index(n + 1), f),
        _ if n == 0 => {}
        Op::Remove(i) => {
            fields.remove(i.index(n));
        }
        Op::Dup(i, at) => {
            let f = fields[i.index(n)].clone();
            fields.insert(at.index(n + 1), f);
        }
        Op::Swap(a, b) => fields.swap(a.index(n), b.index(n)),
        Op::SetTy(i, t) => fields[i.index(n)].ty = t,
        Op::SetValue(i, v) => fields[i.index(n)].value = v,
    }
}

/// Field lists near a valid envelope's, or random ones: what typed decode must survive.
fn near_valid_fields() -> impl Strategy<Value = Fields> {
    prop_oneof![
        3 => (envelope(), vec(op(), 0..4)).prop_map(|(env, ops)| {
            let mut f = env.to_fields().0;
            for op in ops {
                apply(&mut f, op);
            }
            Fields(f)
        }),
        1 => vec(any_field(), 0..12).prop_map(Fields),
    ]
}

/// Bytes that start like a frame header (right magic and version most of the time), so the
/// decoder gets past the magic check; or plain random bytes.
fn frameish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let headerish = (
        prop_oneof![8 => Just(MAGIC), 1 => any::<u32>()],
        prop_oneof![8 => Just(VERSION), 1 => any::<u16>()],
        prop_oneof![4 => 32u16..48, 1 => any::<u16>()],
        any::<u64>(),
        0u32..12,
        prop_oneof![4 => 0u32..8, 1 => any::<u32>()],
        prop_oneof![4 => 0u64..160, 1 => any::<u64>()],
        vec(any::<u8>(), 0..192),
    )
        .prop_map(
            |(magic, version, header_len, message_id, message_type, flags, payload_len, body)| {
                let mut b = BytesMut::new();
                Header {
                    magic,
                    version,
                    header_len,
                    message_id,
                    message_type,
                    flags,
                    payload_len,
                }
                .write(&mut b);
                b.extend_from_slice(&body);
                b.to_vec()
            },
        );
    prop_oneof![
        2 => headerish,
        1 => vec(any::<u8>(), 0..256),
    ]
}

/// Small limits so the limit checks fire on small inputs too.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0u64..128, 0usize..16).prop_map(|(max_payload, max_auth)| Limits {
            max_payload,
            max_auth
        }),
    ]
}

/// JSON shaped like handshake lines: known keys, known values, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => select(vec![
            "type",
            "registration",
            "registration_ack",
            "ghost_id",
            "Ghost_ID",
            "peer_identity",
            "seed_list",
            "Seed_List",
            "id",
            "name",
            "description",
            "operations",
            "idempotent",
            "args",
            "capabilities",
            "labels",
            "admin_addr",
            "version",
            "status",
            "code",
            "message",
            "timestamp_ms",
            "session_id",
            "heartbeat_interval_ms",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(vec![
            "seed.register",
            "seed.register.ack",
            "accepted",
            "rejected",
            "ghost.alpha",
            "seed.flow",
            "Flow",
            "",
            " ",
            "a b",
            "A..b",
        ])
        .prop_map(Value::from),
        any_str().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key.clone(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn handshake_line() -> impl Strategy<Value = Vec<u8>> {
    let framed = (
        select(vec!["seed.register", "seed.register.ack", "other"]),
        select(vec!["registration", "registration_ack", "Registration"]),
        json_value(),
        select(vec!["", "\n", "\r\n"]),
    )
        .prop_map(|(t, body_key, body, end)| {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), Value::from(t));
            m.insert(body_key.into(), body);
            let mut v = serde_json::to_vec(&Value::Object(m)).unwrap();
            v.extend_from_slice(end.as_bytes());
            v
        })
        .boxed();
    prop_oneof![
        3 => framed.clone(),
        1 => (framed, any::<Index>()).prop_map(|(v, cut)| v[..cut.index(v.len() + 1)].to_vec()),
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => vec(any::<u8>(), 0..128),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Decodes the chunks as one stream: `decode` after each chunk, `decode_eof` at the end.
fn decode_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    limits: Limits,
) -> Result<Vec<Frame>, WireError> {
    let mut codec = FrameCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some(f) = codec.decode(&mut buf)? {
            out.push(f);
        }
    }
    while let Some(f) = codec.decode_eof(&mut buf)? {
        out.push(f);
    }
    Ok(out)
}

fn frame_bytes(env: &Envelope, message_id: u64) -> Bytes {
    env.to_frame(message_id).unwrap().to_bytes().unwrap()
}

/// Runs the whole receive pipeline over arbitrary bytes; only errors of the right stage may
/// come out.
fn survive_stream(bytes: &[u8], limits: Limits) {
    let mut codec = FrameCodec::new(limits);
    let mut buf = BytesMut::from(bytes);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(f)) => survive_frame(&f),
            Ok(None) => break,
            Err(e) => {
                assert_eq!(e.stage(), Stage::Frame, "{e}");
                return;
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => survive_frame(&f),
            Ok(None) => break,
            Err(e) => {
                assert_eq!(e.stage(), Stage::Frame, "{e}");
                break;
            }
        }
    }
}

fn survive_frame(f: &Frame) {
    match Envelope::from_frame(f) {
        Ok(env) => {
            assert_eq!(env.message_type(), f.message_type);
        }
        Err(e) => assert!(
            matches!(e.stage(), Stage::Tlv | Stage::Schema | Stage::Typed),
            "{e}"
        ),
    }
}

/// Typed decode for every message type 0..=9. When it succeeds, the re-encoded fields must
/// decode to the same envelope.
fn survive_fields(fields: &Fields) {
    for t in 0..=9u32 {
        match Envelope::decode(t, fields) {
            Ok(env) => {
                assert_eq!(env.message_type(), t);
                let again = Envelope::decode(t, &env.to_fields())
                    .unwrap_or_else(|e| panic!("type {t}: re-encoded fields fail: {e}"));
                assert_eq!(again, env, "type {t}: re-decode differs");
            }
            Err(e) => assert!(matches!(e.stage(), Stage::Schema | Stage::Typed), "{e}"),
        }
    }
}

fn survive_handshake(line: &[u8]) {
    if let Err(e) = handshake::parse_registration(line) {
        assert_eq!(e.stage(), Stage::Handshake, "{e}");
    }
    if let Err(e) = handshake::parse_registration_ack(line) {
        assert_eq!(e.stage(), Stage::Handshake, "{e}");
    }
}

/// Sorted, deduplicated cut positions inside `0..=len`, turned into chunks.
fn chunks_at(bytes: &[u8], cuts: &[Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in at {
        out.push(bytes[prev..c].to_vec());
        prev = c;
    }
    out.push(bytes[prev..].to_vec());
    out
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Envelope -> frame -> bytes -> decode_one -> Envelope is the identity, for all eight
    /// types, with unknown and duplicate fields carried through; the bytes re-encode exactly.
    #[test]
    fn envelopes_round_trip(env in envelope(), message_id in any::<u64>()) {
        let frame = env.to_frame(message_id).unwrap();
        let bytes = frame.to_bytes().unwrap();
        let decoded = decode_one(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(&decoded, &frame);
        let back = Envelope::from_frame(&decoded).unwrap();
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(back.to_frame(message_id).unwrap().to_bytes().unwrap(), bytes);
    }

    /// The TLV layer alone: any field list (any id, type byte, value) round-trips.
    #[test]
    fn tlv_round_trip(fields in vec((any::<u16>(), any::<u8>(), bytes_up_to(40)), 0..12)) {
        let fields: Fields = fields
            .into_iter()
            .map(|(id, ty, value)| Field { id, ty, value })
            .collect();
        let b = fields.to_bytes().unwrap();
        let back = tlv::decode(&b).unwrap();
        prop_assert_eq!(&back, &fields);
        prop_assert_eq!(back.to_bytes().unwrap(), b);
    }

    /// Arbitrary bytes through the frame codec (and every frame through the envelope
    /// pipeline), under default and tiny limits: no panic, errors of the frame stage.
    #[test]
    fn arbitrary_bytes_never_panic_the_codec(bytes in frameish_bytes(), limits in limits()) {
        survive_stream(&bytes, limits);
        match decode_one(&bytes, &limits) {
            Ok(f) => survive_frame(&f),
            Err(e) => prop_assert_eq!(e.stage(), Stage::Frame),
        }
    }

    /// Arbitrary bytes as a TLV payload, then as every message type.
    #[test]
    fn arbitrary_bytes_never_panic_tlv_or_typed(bytes in vec(any::<u8>(), 0..256)) {
        match tlv::decode(&Bytes::from(bytes.clone())) {
            Ok(fields) => {
                prop_assert_eq!(&fields.to_bytes().unwrap()[..], &bytes[..]);
                survive_fields(&fields);
            }
            Err(e) => prop_assert_eq!(e.stage(), Stage::Tlv),
        }
    }

    /// Field lists near valid ones (removed, duplicated, swapped, retyped, revalued, inserted
    /// fields) through typed decode of every message type 0..=9.
    #[test]
    fn mangled_fields_never_panic_typed_decode(fields in near_valid_fields()) {
        survive_fields(&fields);
        // And the same fields as a frame payload of every type, through the full pipeline.
        let payload = fields.to_bytes().unwrap();
        for t in 0..=9u32 {
            survive_frame(&Frame::new(1, t, 0, payload.clone()));
        }
    }

    /// Arbitrary and almost-valid handshake lines: no panic, handshake-stage errors only.
    #[test]
    fn arbitrary_lines_never_panic_the_handshake(line in handshake_line()) {
        survive_handshake(&line);
    }

    /// A stream of several valid frames decodes to the same frames however it is chunked:
    /// one chunk, one byte at a time, or cut at arbitrary points.
    #[test]
    fn stream_decoding_ignores_chunking(
        envs in vec(envelope(), 1..5),
        first_id in any::<u64>(),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let mut all = Vec::new();
        let mut expected = Vec::new();
        for (i, env) in envs.iter().enumerate() {
            let f = env.to_frame(first_id.wrapping_add(i as u64)).unwrap();
            all.extend_from_slice(&f.to_bytes().unwrap());
            expected.push(f);
        }
        let whole = decode_chunks([&all[..]], Limits::default()).unwrap();
        prop_assert_eq!(&whole, &expected);
        let bytewise = decode_chunks(all.chunks(1), Limits::default()).unwrap();
        prop_assert_eq!(&bytewise, &expected);
        let pieces = chunks_at(&all, &cuts);
        let cut = decode_chunks(pieces.iter().map(Vec::as_slice), Limits::default()).unwrap();
        prop_assert_eq!(&cut, &expected);
        for (f, env) in cut.iter().zip(&envs) {
            prop_assert_eq!(&Envelope::from_frame(f).unwrap(), env);
        }
    }

    /// Flipping any one byte of a valid frame: decode succeeds or fails, never panics; a flip
    /// in the magic or version is always caught at the frame stage.
    #[test]
    fn single_byte_flips_never_panic(
        env in envelope(),
        message_id in any::<u64>(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let mut b = frame_bytes(&env, message_id).to_vec();
        let i = at.index(b.len());
        b[i] ^= mask;
        let one = decode_one(&b, &Limits::default());
        if let Ok(f) = &one {
            survive_frame(f);
        }
        if i < 4 {
            prop_assert!(matches!(one, Err(WireError::BadMagic(_))));
        } else if i < 6 {
            prop_assert!(matches!(one, Err(WireError::BadVersion(_))));
        }
        survive_stream(&b, Limits::default());
        for split in [1, i, b.len() - 1] {
            let _ = decode_chunks([&b[..split], &b[split..]], Limits::default());
        }
    }

    /// A header declaring more payload than the limit is rejected with the header alone:
    /// no payload bytes needed, nothing reserved.
    #[test]
    fn oversize_payload_is_rejected_from_the_header(
        limits in limits(),
        excess in prop_oneof![1u64..1024, any::<u64>()],
        message_id in any::<u64>(),
        message_type in 1u32..=8,
        flags in prop_oneof![Just(0u32), Just(2u32), Just(4u32), Just(6u32)],
        trailing in vec(any::<u8>(), 0..16),
    ) {
        let payload_len = limits.max_payload.saturating_add(excess).max(limits.max_payload + 1);
        let mut b = BytesMut::new();
        Header {
            magic: MAGIC,
            version: VERSION,
            header_len: HEADER_LEN as u16,
            message_id,
            message_type,
            flags,
            payload_len,
        }
        .write(&mut b);
        b.extend_from_slice(&trailing);
        let cap = b.capacity();
        let mut codec = FrameCodec::new(limits);
        let err = codec.decode(&mut b).unwrap_err();
        prop_assert!(
            matches!(err, WireError::PayloadTooLarge { len, max } if len == payload_len && max == limits.max_payload),
            "{err}"
        );
        prop_assert_eq!(b.capacity(), cap);
        let err = decode_one(&b, &limits).unwrap_err();
        let is_payload_too_large = matches!(err, WireError::PayloadTooLarge { .. });
        prop_assert!(is_payload_too_large, "{}", err);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases and fuzz regressions
// ---------------------------------------------------------------------------------------------

#[test]
fn every_type_round_trips_once_by_hand() {
    let envs = [
        Envelope::Event(Event::new(
            "evt.1",
            "cmd.1",
            "intent.1",
            "ghost.alpha",
            "seed.flow",
            Outcome::Success,
        )),
        Envelope::Error(ErrorEnvelope {
            error_code: 1300,
            error_reason: String::new(),
            ..Default::default()
        }),
    ];
    for env in envs {
        let b = frame_bytes(&env, 9);
        let f = decode_one(&b, &Limits::default()).unwrap();
        assert_eq!(Envelope::from_frame(&f).unwrap(), env);
    }
}

#[test]
fn empty_and_tiny_inputs() {
    assert!(decode_chunks([&[][..]], Limits::default())
        .unwrap()
        .is_empty());
    for n in 1..HEADER_LEN {
        let b = vec![0xED; n];
        assert!(matches!(
            decode_chunks([&b[..]], Limits::default()),
            Err(WireError::ShortHeader { got }) if got == n
        ));
    }
    survive_handshake(b"");
    survive_handshake(b"\n");
    survive_fields(&Fields::new());
    // A type byte no schema expects on a required id.
    let f = Fields(vec![Field {
        id: id::ERROR_CODE,
        ty: ty::BYTES,
        value: Bytes::new(),
    }]);
    assert!(matches!(
        Envelope::decode(mt::ERROR, &f),
        Err(WireError::TypeMismatch { .. })
    ));
}

/// fuzz `envelope_command` (crash-0703d145...): a command whose first 203 is `{}` and whose
/// second 203 (carried through as an extra) holds other bytes. Re-encoding used to drop the
/// empty first 203, so the duplicate became the first occurrence: the relayed command then
/// carried different args (here: bytes that are not even valid JSON).
#[test]
fn regression_empty_args_with_a_duplicate_args_field() {
    let input = shared::hex::decode(
        b"00cb07000000027b7d00020600000012636d642e696e74656e742e6c61622e302e310001060000000c\
          696e74656e742e6c61622e3100c8060000000c67686f73742e72656d6f746500c90600000009736565\
          642e326c6f7700ca06000000046563686f00cb07000000177b225c22c92231222c200d0067223a2268\
          656c6c6f227d",
    )
    .unwrap();
    let fields = tlv::decode(&Bytes::from(input)).unwrap();
    let env = Envelope::decode(mt::COMMAND, &fields).unwrap();
    match &env {
        Envelope::Command(c) => {
            assert!(c.args.is_empty());
            assert_eq!(c.extra.len(), 1);
        }
        other => panic!("not a command: {other:?}"),
    }
    survive_fields(&fields);

    // The same shape by hand, with a duplicate that is valid args.
    let fields = Fields(vec![
        Field::string(id::COMMAND_ID, "c"),
        Field::string(id::INTENT_ID, "i"),
        Field::string(id::GHOST_ID, "g"),
        Field::string(id::SEED_SELECTOR, "s"),
        Field::string(id::OPERATION, "o"),
        Field::bytes(id::ARGS, Bytes::from_static(b"null")),
        Field::bytes(id::ARGS, Bytes::from_static(br#"{"k":"v"}"#)),
    ]);
    survive_fields(&fields);
    let env = Envelope::decode(mt::COMMAND, &fields).unwrap();
    let b = frame_bytes(&env, 1);
    let back = Envelope::from_frame(&decode_one(&b, &Limits::default()).unwrap()).unwrap();
    assert_eq!(back, env);
    match back {
        Envelope::Command(c) => assert!(c.args.is_empty(), "{:?}", c.args),
        other => panic!("not a command: {other:?}"),
    }
    // Without a duplicate, empty args are still omitted (as edgectl does).
    let mut plain = fields.clone();
    plain.0.truncate(5);
    let env = Envelope::decode(mt::COMMAND, &plain).unwrap();
    assert!(env.to_fields().get(id::ARGS).is_none());
}
