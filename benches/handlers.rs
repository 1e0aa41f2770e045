//! Each built-in handler's throughput over 64 B, 4 KiB and 1 MiB payloads.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringworker::handlers::HandlerRegistry;

fn handlers(c: &mut Criterion) {
    let registry = HandlerRegistry::with_builtins();
    for name in ["echo", "sink", "crc32c", "sha256"] {
        let mut group = c.benchmark_group(name);
        for size in [64usize, 4096, 1 << 20] {
            let payload = vec![0xa5u8; size];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
                let mut out = Vec::with_capacity(size);
                b.iter(|| {
                    out.clear();
                    black_box(registry.call(name, black_box(payload), &mut out)).ok();
                    black_box(out.len())
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, handlers);
criterion_main!(benches);
