//! The per-task path of a session with no I/O, for counting instructions:
//! 32 echo TASKs of 64 B (one receive's worth at 32 in flight) handed to
//! `WorkerSession::on_input`, the RESULTs taken, repeated N times.
//!
//! ```sh
//! cargo build --release --example hotpath_probe
//! valgrind --tool=callgrind target/release/examples/hotpath_probe 20000   # 640,000 tasks
//! ```
//!
//! Instructions per task = the total / (32 × N); unlike a timing, the
//! count is the same on a busy machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringworker::handlers::HandlerRegistry;
use ringworker::protocol::frame::{encode_frame, FrameKind};
use ringworker::protocol::machine::encode_task_body;
use ringworker::session::{SessionConfig, WorkerSession};
use ringworker::stats::SessionStats;

fn main() {
    let now = Instant::now();
    let config = SessionConfig {
        worker_id: "bench".to_owned(),
        runtime: "bench",
        max_body: 16 << 20,
        max_in_flight: 64,
        token: None,
        handshake_timeout: Duration::from_secs(10),
    };
    let mut session = WorkerSession::new(
        0,
        &config,
        HandlerRegistry::with_builtins(),
        Arc::new(SessionStats::new(0)),
        now,
    );
    session.take_output(Vec::new());
    let mut welcome = Vec::new();
    encode_frame(
        &mut welcome,
        FrameKind::Welcome,
        0,
        0,
        br#"{"protocol":1,"manager":"bench","max_body":16777216,"heartbeat_ms":0}"#,
    );
    session.on_input(&welcome, now);
    session.take_output(Vec::new());
    let mut body = Vec::new();
    encode_task_body(&mut body, "echo", &[0x5a; 64]);
    let mut stream = Vec::new();
    for id in 0..32u64 {
        encode_frame(&mut stream, FrameKind::Task, 0, id, &body);
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut spare = Vec::new();
    let mut total = 0usize;
    for _ in 0..rounds {
        session.on_input(&stream, now);
        spare = session.take_output(std::mem::take(&mut spare));
        total += spare.len();
    }
    println!("{total}");
}
