//! The cost of byte counting: a session's hot path (decode a batch of TASKs,
//! run `echo`, encode the RESULTs) with and without the `ByteCounters` calls
//! a runtime makes per read and per write. The README's claim (< 1 %) comes
//! from the ratio of these two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringworker::handlers::HandlerRegistry;
use ringworker::protocol::frame::{encode_frame, FrameKind};
use ringworker::protocol::machine::encode_task_body;
use ringworker::runtime::ByteCounters;
use ringworker::session::{SessionConfig, WorkerSession};
use ringworker::stats::SessionStats;

const TASKS: usize = 32;

fn session() -> WorkerSession {
    let config = SessionConfig {
        worker_id: "bench".into(),
        runtime: "bench",
        max_body: 1 << 20,
        max_in_flight: 1024,
        token: None,
        handshake_timeout: Duration::from_secs(3600),
    };
    let now = Instant::now();
    let mut session = WorkerSession::new(
        0,
        &config,
        HandlerRegistry::with_builtins(),
        Arc::new(SessionStats::new(0)),
        now,
    );
    let mut welcome = Vec::new();
    encode_frame(
        &mut welcome,
        FrameKind::Welcome,
        0,
        0,
        br#"{"protocol":1,"manager":"m","max_body":1048576,"heartbeat_ms":0}"#,
    );
    session.on_input(&welcome, now);
    session.take_output(Vec::new());
    session
}

fn batch() -> Vec<u8> {
    let mut body = Vec::new();
    encode_task_body(&mut body, "echo", &[7u8; 64]);
    let mut stream = Vec::new();
    for id in 0..TASKS as u64 {
        encode_frame(&mut stream, FrameKind::Task, 0, id, &body);
    }
    stream
}

fn counting(c: &mut Criterion) {
    let input = batch();
    let mut group = c.benchmark_group("session_batch_of_32_echo");
    group.throughput(Throughput::Elements(TASKS as u64));
    for counted in [false, true] {
        let mut s = session();
        let counters = ByteCounters::new(s.stats().clone());
        let mut spare = Vec::new();
        let name = if counted {
            "with_byte_counting"
        } else {
            "without_byte_counting"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let now = Instant::now();
                if counted {
                    counters.received(input.len());
                }
                s.on_input(black_box(&input), now);
                let out = s.take_output(std::mem::take(&mut spare));
                if counted {
                    counters.sent(out.len());
                }
                black_box(out.len());
                spare = out;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, counting);
criterion_main!(benches);
