#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: failing loudly is the point
//! Codec throughput: a heartbeat-sized event frame (full pipeline and frame only) and a frame
//! carrying a 64 KiB bytes field, against a 64 KiB memcpy baseline.
//!
//!   cargo bench -p shared --bench codec -- --warm-up-time 1 --measurement-time 3
//!
//! Results and goals: BENCHMARKS.md at the repo root.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shared::envelope::{mt, Envelope, Event, Outcome};
use shared::wire::tlv::{self, id, Field, Fields};
use shared::wire::{Frame, FrameCodec, Limits, HEADER_LEN};
use tokio_util::codec::{Decoder, Encoder};

const LARGE: usize = 64 * 1024;

fn heartbeat_event() -> Envelope {
    let mut ev = Event::new(
        "evt.session.ghost.alpha.1",
        "cmd.session.heartbeat.1",
        "intent.session.heartbeat",
        "ghost.alpha",
        "seed.session",
        Outcome::Success,
    );
    ev.timestamp_ms = Some(1_700_000_000_000);
    Envelope::Event(ev)
}

/// A frame whose payload is one bytes field with a 64 KiB value.
fn large_frame() -> Frame {
    let value = Bytes::from((0..LARGE).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let fields = Fields(vec![Field::bytes(id::STDOUT, value)]);
    Frame::new(42, mt::SEED_RESULT, 0, fields.to_bytes().unwrap())
}

fn decode(c: &mut Criterion) {
    let small = heartbeat_event().to_frame(1).unwrap().to_bytes().unwrap();
    let large = large_frame().to_bytes().unwrap();
    let mut g = c.benchmark_group("decode");

    g.throughput(Throughput::Elements(1));
    // Steady state of a session's read loop: the frame's bytes land in the reused receive
    // buffer (the copy a socket read does anyway), then codec + TLV + schema + typed decode
    // into an owned Envelope, which is dropped again.
    g.bench_function("small_pipeline", |b| {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.extend_from_slice(black_box(&small[..]));
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            black_box(Envelope::from_frame(&frame).unwrap())
        })
    });
    g.bench_function("small_frame", |b| {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.extend_from_slice(black_box(&small[..]));
            black_box(codec.decode(&mut buf).unwrap().unwrap())
        })
    });
    // The typed layer alone, over already TLV-decoded fields.
    g.bench_function("small_typed_only", |b| {
        let fields = tlv::decode(&black_box(small.slice(HEADER_LEN..))).unwrap();
        b.iter(|| Envelope::decode(mt::EVENT, black_box(&fields)).unwrap())
    });

    g.throughput(Throughput::Bytes(large.len() as u64));
    // Zero-copy: the frame and its field are slices of the receive buffer.
    g.bench_function("large_64k_frame_tlv", |b| {
        let mut codec = FrameCodec::default();
        b.iter_batched_ref(
            || BytesMut::from(&large[..]),
            |buf| {
                let frame = codec.decode(black_box(buf)).unwrap().unwrap();
                tlv::decode(&frame.payload).unwrap()
            },
            // Few inputs per batch: each one is 64 KiB.
            BatchSize::NumIterations(64),
        )
    });
    // As a stream sees it: the bytes are copied into a reused receive buffer (what a socket
    // read costs at best), then frame + TLV decode.
    g.bench_function("large_64k_copy_in_frame_tlv", |b| {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(large.len());
        b.iter(|| {
            buf.extend_from_slice(black_box(&large[..]));
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            let fields = tlv::decode(&frame.payload).unwrap();
            black_box(fields.len())
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let env = heartbeat_event();
    let frame = env.to_frame(1).unwrap();
    let large = large_frame();
    let large_value = tlv::decode(&large.payload).unwrap().0.pop().unwrap().value;
    let mut g = c.benchmark_group("encode");

    g.throughput(Throughput::Elements(1));
    // Envelope -> fields -> payload -> framed into the send buffer.
    g.bench_function("small_pipeline", |b| {
        let mut codec = FrameCodec::default();
        let mut dst = BytesMut::with_capacity(4096);
        b.iter(|| {
            dst.clear();
            let f = black_box(&env).to_frame(1).unwrap();
            codec.encode(f, &mut dst).unwrap();
            black_box(dst.len())
        })
    });
    g.bench_function("small_frame", |b| {
        let mut codec = FrameCodec::default();
        let mut dst = BytesMut::with_capacity(4096);
        b.iter(|| {
            dst.clear();
            codec.encode(black_box(&frame), &mut dst).unwrap();
            black_box(dst.len())
        })
    });

    g.throughput(Throughput::Bytes(large.encoded_len() as u64));
    // One bytes field -> payload -> framed into the send buffer.
    g.bench_function("large_64k_tlv_frame", |b| {
        let mut dst = BytesMut::with_capacity(large.encoded_len());
        b.iter(|| {
            dst.clear();
            let fields = Fields(vec![Field::bytes(
                id::STDOUT,
                black_box(&large_value).clone(),
            )]);
            let f = Frame::new(42, large.message_type, 0, fields.to_bytes().unwrap());
            f.encode_into(&Limits::default(), &mut dst).unwrap();
            black_box(dst.len())
        })
    });
    g.bench_function("large_64k_frame", |b| {
        let mut codec = FrameCodec::default();
        let mut dst = BytesMut::with_capacity(large.encoded_len());
        b.iter(|| {
            dst.clear();
            codec.encode(black_box(&large), &mut dst).unwrap();
            black_box(dst.len())
        })
    });
    g.finish();
}

fn baseline(c: &mut Criterion) {
    let src = vec![7u8; LARGE];
    let mut dst = vec![0u8; LARGE];
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes(LARGE as u64));
    g.bench_function("memcpy_64k", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src[..]));
            black_box(dst.as_ptr());
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode, baseline);
criterion_main!(benches);
