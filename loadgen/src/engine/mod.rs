//! The loadgen's event loop: one thread, epoll through mio, every worker
//! connection non-blocking. Per loop turn each readable connection is read
//! once (64 KiB at a time) and every RESULT in it checked; each connection's
//! new TASKs are written in one write. Nothing is allocated per task: task
//! slots are recycled, payloads and expected results come from the [`Pool`].
//!
//! Over TLS (`tls://`) each connection wraps a
//! [`ServerTls`](ringworker::transport::tls::ServerTls): the socket is
//! read and written exactly as for plain TCP and its bytes are counted there
//! (records, handshake and alerts), while plaintext goes through rustls. The
//! only cost to plaintext connections is one `Option` check per read and
//! per flush.
//!
//! The parts: [`socket`] (listener and streams), `conn` (one connection and
//! its plaintext I/O), `tls` (its TLS half), `pacing` (what to send and
//! when), `verify` (what each frame from the agent means), `accounting`
//! (byte totals against GOODBYE, and the run's totals) and `phases`
//! (connect, load, drain). This file holds the [`Engine`] and the dispatch
//! of reads and flushes to the plaintext or TLS path.

mod accounting;
mod conn;
mod pacing;
mod phases;
pub mod socket;
mod tls;
mod verify;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Poll, Token};
use ringworker::manager::ManagerConfig;

pub use accounting::{ConnReport, RunResult};
pub use pacing::Pacing;
pub use socket::Listener;

use crate::progress::Progress;
use crate::workload::Pool;
use conn::{Conn, ConnPhase, ReadOutcome};
use tls::HandshakeFailures;
use verify::Tally;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub sessions: u32,
    pub pacing: Pacing,
    pub duration: Option<Duration>,
    pub tasks: Option<u64>,
    pub warmup: Duration,
    pub ack: bool,
    pub manager: ManagerConfig,
    /// Longest wait for outstanding results after sending stops.
    pub grace: Duration,
    /// Where progress goes (phase, elapsed, time left, rate).
    pub progress: Progress,
    /// Serve TLS with this configuration on every accepted connection.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

const LISTENER: Token = Token(usize::MAX);
const READ_CHUNK: usize = 64 * 1024;

/// Drive a workload over `listener` until done, then stop sending and wait
/// for outstanding results. The connections stay open for the drain
/// ([`Engine::drain`]).
pub struct Engine {
    poll: Poll,
    listener: Listener,
    conns: Vec<Conn>,
    pool: Pool,
    spec: RunSpec,
    epoch: Instant,
    tally: Tally,
    sent_total: u64,
    wire_at_start: Option<u64>,
    wire_at_end: Option<u64>,
    measured: Duration,
    warmup: Duration,
    /// When progress was last shown.
    progress_at: Option<Instant>,
    /// Raw socket bytes of TLS connections land here before decryption.
    tls_read_buf: Vec<u8>,
    tls_failures: HandshakeFailures,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connections", &self.conns.len())
            .field("sent_total", &self.sent_total)
            .finish()
    }
}

impl Engine {
    pub fn new(mut listener: Listener, pool: Pool, spec: RunSpec) -> io::Result<Engine> {
        let poll = Poll::new()?;
        listener.register(poll.registry(), LISTENER)?;
        let tls_read_buf = if spec.tls.is_some() {
            vec![0; READ_CHUNK]
        } else {
            Vec::new()
        };
        Ok(Engine {
            poll,
            listener,
            conns: Vec::new(),
            pool,
            spec,
            epoch: Instant::now(),
            tally: Tally::new().map_err(|e| io::Error::other(e.to_string()))?,
            sent_total: 0,
            wire_at_start: None,
            wire_at_end: None,
            measured: Duration::ZERO,
            warmup: Duration::ZERO,
            progress_at: None,
            tls_read_buf,
            tls_failures: HandshakeFailures::default(),
        })
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Write what connection `index` has queued, as far as the socket takes it.
    fn flush(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        if conn.tls.is_some() {
            conn.flush_tls(&self.pool);
        } else {
            conn.flush_plain(&self.pool);
        }
    }

    /// Read connection `index` until the socket has nothing more, handing
    /// every event to the verification.
    fn on_readable(&mut self, index: usize, now: Instant) {
        let now_ns = self.ns(now);
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        loop {
            if conn.phase == ConnPhase::Closed {
                return;
            }
            let read = if conn.tls.is_some() {
                conn.read_tls(&mut self.tls_read_buf, &mut self.tls_failures)
            } else {
                conn.read_plain()
            };
            match read {
                ReadOutcome::Input => {}
                ReadOutcome::Again => continue,
                ReadOutcome::Stop => return,
            }
            conn.handle_events(&self.pool, &mut self.tally, now_ns);
        }
    }

    /// Send DRAIN on every connection (when the agent was not spawned).
    pub fn send_drain(&mut self) {
        for index in 0..self.conns.len() {
            if self.conns[index].phase == ConnPhase::Running {
                self.conns[index].machine.send_drain();
                self.flush(index);
            }
        }
    }
}
