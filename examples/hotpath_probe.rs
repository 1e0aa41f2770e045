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

use std::time::Instant;

#[path = "../benches/fixtures/session.rs"]
mod fixture;

fn main() {
    let now = Instant::now();
    let mut session = fixture::welcomed_session(now);
    let stream = fixture::task_stream(64, 32);
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
