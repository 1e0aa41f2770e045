//! Frame encode and decode: bytes/s and frames/s for small and large frames;
//! and a session's whole per-task path (decode, handler, RESULT), sans I/O.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringworker::protocol::frame::{encode_frame, FrameBuffer, FrameKind};

#[path = "fixtures/session.rs"]
mod fixture;
use fixture::{task_stream, welcomed_session};

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for payload in [64usize, 4096, 1 << 20] {
        let body = vec![0x5a; payload];
        let frames = (4 << 20) / (payload + 16);
        group.throughput(Throughput::Bytes(((payload + 16) * frames.max(1)) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(payload), &payload, |b, _| {
            let mut out = Vec::with_capacity((payload + 16) * frames.max(1));
            b.iter(|| {
                out.clear();
                for id in 0..frames.max(1) as u64 {
                    encode_frame(&mut out, FrameKind::Result, 0, id, black_box(&body));
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for payload in [64usize, 4096, 1 << 20] {
        let frames = ((4 << 20) / (payload + 22)).max(1);
        let stream = task_stream(payload, frames);
        group.throughput(Throughput::Elements(frames as u64));
        group.bench_with_input(BenchmarkId::new("frames", payload), &stream, |b, stream| {
            let mut buffer = FrameBuffer::new(2 << 20);
            b.iter(|| {
                // Arrive in 64 KiB reads, as a socket would deliver them.
                let mut count = 0;
                for chunk in stream.chunks(64 * 1024) {
                    buffer.extend(chunk);
                    while let Ok(Some(frame)) = buffer.next_frame() {
                        black_box(frame.body.len());
                        count += 1;
                    }
                }
                assert_eq!(count, frames);
            })
        });
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_with_input(BenchmarkId::new("bytes", payload), &stream, |b, stream| {
            let mut buffer = FrameBuffer::new(2 << 20);
            b.iter(|| {
                for chunk in stream.chunks(64 * 1024) {
                    buffer.extend(chunk);
                    while let Ok(Some(frame)) = buffer.next_frame() {
                        black_box(frame.body.len());
                    }
                }
            })
        });
    }
    group.finish();
}

/// 64 B echo tasks through `on_input` in reads of 16 KiB (as the uring
/// runtime's provided buffers deliver them, so frames straddle reads), and
/// the RESULTs taken as the runtime does.
fn session(c: &mut Criterion) {
    let mut group = c.benchmark_group("session");
    for payload in [64usize, 4096] {
        let frames = ((1 << 20) / (payload + 22)).max(1);
        let stream = task_stream(payload, frames);
        group.throughput(Throughput::Elements(frames as u64));
        group.bench_with_input(BenchmarkId::new("echo", payload), &stream, |b, stream| {
            let now = Instant::now();
            let mut session = welcomed_session(now);
            let mut spare = Vec::new();
            b.iter(|| {
                for chunk in stream.chunks(16 * 1024) {
                    session.on_input(chunk, now);
                    spare = session.take_output(std::mem::take(&mut spare));
                    black_box(spare.len());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode, session);
criterion_main!(benches);
