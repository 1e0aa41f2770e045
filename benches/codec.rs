//! Frame encode and decode: bytes/s and frames/s for small and large frames.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringworker::protocol::frame::{encode_frame, FrameBuffer, FrameKind};
use ringworker::protocol::machine::encode_task_body;

fn task_stream(payload: usize, frames: usize) -> Vec<u8> {
    let mut body = Vec::new();
    encode_task_body(&mut body, "echo", &vec![0x5a; payload]);
    let mut stream = Vec::new();
    for id in 0..frames as u64 {
        encode_frame(&mut stream, FrameKind::Task, 0, id, &body);
    }
    stream
}

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

criterion_group!(benches, encode, decode);
criterion_main!(benches);
