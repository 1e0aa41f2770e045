//! The I/O engines behind one API, [`RuntimeMode`], and what they share:
//! the plan they run ([`AgentPlan`]), byte counting ([`ByteCounters`]) and
//! the stop signal ([`StopHandle`]). The lifecycle rules both engines carry
//! out (back-off, the drain deadline, linger, refusal) live in
//! [`crate::connection`].
//!
//! A runtime owns sockets and threads and nothing else: every protocol
//! decision is made by [`crate::session::WorkerSession`], which both engines
//! drive the same way. Bytes are counted in exactly one `send_raw` and one
//! `recv_raw` per runtime, through [`ByteCounters`].

pub mod blocking;
pub mod uring;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::handlers::HandlerRegistry;
use crate::session::SessionConfig;
use crate::stats::{AgentStats, SessionStats};
use crate::transport::Endpoint;

pub use crate::connection::backoff::{Backoff, ReconnectPolicy};
pub use blocking::BlockingRuntime;
pub use uring::UringRuntime;

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// io_uring completions, many sessions per thread.
    Uring,
    /// std::net sockets and threads.
    Blocking,
}

impl RuntimeKind {
    /// The name used in HELLO, `/status` and `ringworker_build_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Uring => "uring",
            RuntimeKind::Blocking => "blocking",
        }
    }
}

/// Everything a runtime needs to run an agent's sessions.
#[derive(Debug, Clone)]
pub struct AgentPlan {
    pub endpoint: Endpoint,
    pub sessions: u32,
    /// Event-loop threads (uring); the blocking runtime uses threads per session.
    pub threads: usize,
    pub session: SessionConfig,
    pub handlers: HandlerRegistry,
    pub reconnect: ReconnectPolicy,
    /// Longest graceful drain after a stop request.
    pub drain_timeout: Duration,
    /// Longest wait for a dial to complete.
    pub connect_timeout: Duration,
    /// Keepalive and `TCP_USER_TIMEOUT` for tcp:// and tls:// managers.
    pub tcp: crate::transport::TcpTuning,
    /// TLS settings for a `tls://` manager (`None` for tcp:// and unix://).
    pub tls: Option<crate::transport::tls::ClientTls>,
    /// Whether the uring runtime moves sessions between its event loops.
    pub loop_balance: LoopBalance,
}

/// `--loop-balance`: whether and how the uring runtime moves sessions
/// between its event loops (docs/ENGINE.md, "Sessions moving between
/// loops").
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LoopBalance {
    /// Concentrate sessions on fewer loops when the loops wait for CPUs,
    /// spread them when one is saturated and CPUs are idle.
    #[default]
    Auto,
    /// Never: each session stays on the loop it started on.
    Off,
    /// One session every few milliseconds, to the next loop, whatever the
    /// load: for testing the move itself.
    #[value(hide = true)]
    Churn,
}

/// How many tasks of one declared handler may wait for a process, for
/// `sessions` sessions of `plan`: every task they can have in flight
/// (`max_in_flight` each). The manager's own limit thus bounds the queue,
/// and a handler slower than the manager slows it through that limit (its
/// tasks wait, the sessions stop reading at `max_in_flight`, TCP pushes
/// back) rather than failing tasks `busy`.
pub(crate) fn handler_queue_bound(sessions: u32, plan: &AgentPlan) -> usize {
    (sessions as usize)
        .saturating_mul(plan.session.max_in_flight as usize)
        .max(1)
}

/// The answer to a job no runner takes (no declared handler is set up).
pub(crate) fn no_runner() -> crate::exec::Outcome {
    crate::exec::Outcome::failed(
        crate::protocol::codes::HANDLER_FAILED,
        "declared handlers are not running in this agent",
    )
}

/// Counts the bytes of one session's socket. Runtimes call it from their one
/// `send_raw` and one `recv_raw` and nowhere else, with the byte counts the
/// kernel reported, so every byte on the socket is counted exactly once.
///
/// Each direction has a single writer (the uring loop thread; the blocking
/// runtime's writer thread for `sent`, reader thread for `received`), so an
/// update is a relaxed load and store, not a locked read-modify-write:
/// readers on other threads still see whole values, and the hot path pays
/// no bus lock.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    session: Arc<SessionStats>,
}

impl ByteCounters {
    /// Counters of one session; the process totals are the sum over sessions
    /// ([`AgentStats::bytes_sent_total`]).
    pub fn new(session: Arc<SessionStats>) -> Self {
        ByteCounters { session }
    }

    #[inline]
    pub fn sent(&self, n: usize) {
        bump(&self.session.bytes_sent, n);
        bump(&self.session.bytes_sent_lifetime, n);
    }

    #[inline]
    pub fn received(&self, n: usize) {
        bump(&self.session.bytes_received, n);
        bump(&self.session.bytes_received_lifetime, n);
    }
}

/// Add `n` to a counter that only the calling thread writes.
#[inline]
fn bump(counter: &std::sync::atomic::AtomicU64, n: usize) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n as u64),
        Ordering::Relaxed,
    );
}

/// Asks a running runtime to drain and stop; cheap to clone and to hand to a
/// signal thread.
#[derive(Clone, Default)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    requested: AtomicBool,
    fatal: Mutex<Option<String>>,
    wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl StopHandle {
    pub fn new() -> Self {
        StopHandle::default()
    }

    /// Start a graceful drain of every session. Idempotent.
    pub fn request_stop(&self) {
        if !self.inner.requested.swap(true, Ordering::SeqCst) {
            if let Ok(wakers) = self.inner.wakers.lock() {
                for wake in wakers.iter() {
                    wake();
                }
            }
        }
    }

    /// Stop because continuing cannot help (the manager refused the HELLO).
    pub fn fail(&self, reason: String) {
        if let Ok(mut fatal) = self.inner.fatal.lock() {
            fatal.get_or_insert(reason);
        }
        self.request_stop();
    }

    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// The reason given to [`StopHandle::fail`], if any.
    pub fn fatal(&self) -> Option<String> {
        self.inner.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Run `wake` when a stop is requested (at once if it already was).
    pub fn on_stop(&self, wake: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut wakers) = self.inner.wakers.lock() {
            wakers.push(Box::new(wake));
        }
        if self.is_requested() {
            // Requested before we registered: make sure the waker sees it.
            if let Ok(wakers) = self.inner.wakers.lock() {
                if let Some(wake) = wakers.last() {
                    wake();
                }
            }
        }
    }
}

/// Where a receive buffer should start within a page. The kernel copies
/// received bytes with `rep movsb`, whose speed here depends on where the
/// destination lies: a 4 KiB echo cost the uring agent 2.14 µs of CPU per task
/// into buffers 16 bytes past a page boundary (where a large `Vec` lands),
/// 1.66 µs page-aligned and 1.50 µs half a page in (BENCHMARKS.md).
pub const RECV_PAGE_OFFSET: usize = 2048;

const PAGE: usize = 4096;

/// Heap memory for receives whose usable part starts [`RECV_PAGE_OFFSET`]
/// into a page.
#[derive(Debug, Default)]
pub struct RecvChunk {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
}

impl RecvChunk {
    /// `len` usable bytes (zeroed, so untouched pages stay unbacked).
    pub fn new(len: usize) -> RecvChunk {
        let buf = vec![0u8; len + 2 * PAGE].into_boxed_slice();
        // At most PAGE - 1 + RECV_PAGE_OFFSET < 2 * PAGE.
        let start = buf.as_ptr().align_offset(PAGE) + RECV_PAGE_OFFSET;
        RecvChunk { buf, start, len }
    }

    /// The usable bytes.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// The first `n` usable bytes (at most all of them).
    pub fn data(&self, n: usize) -> &[u8] {
        &self.buf[self.start..self.start + n.min(self.len)]
    }

    /// The address of usable byte `offset` (for registering with the kernel).
    pub fn addr(&mut self, offset: usize) -> *mut u8 {
        self.space()[offset..].as_mut_ptr()
    }
}

/// Join an engine's threads, each returning what its drains left
/// unfinished, into the run's report (`what` names the threads in the log if
/// one panicked).
pub(crate) fn join_threads(
    handles: impl IntoIterator<Item = std::thread::JoinHandle<crate::connection::drain::DrainTally>>,
    stop: &StopHandle,
    what: &str,
) -> RunReport {
    let mut report = RunReport::default();
    for handle in handles {
        match handle.join() {
            Ok(tally) => {
                report.abandoned_tasks += tally.abandoned_tasks;
                report.undelivered_results += tally.undelivered_results;
            }
            Err(_) => tracing::error!("a {what} thread panicked"),
        }
    }
    report.fatal = stop.fatal();
    report
}

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Tasks still running when the drain deadline passed.
    pub abandoned_tasks: u64,
    /// RESULTs produced but not known to be written when the drain deadline
    /// passed.
    pub undelivered_results: u64,
    /// Why the agent stopped on its own (the manager refused it).
    pub fatal: Option<String>,
}

impl RunReport {
    /// Exit cleanly only after a clean drain.
    pub fn is_clean(&self) -> bool {
        self.abandoned_tasks == 0 && self.undelivered_results == 0 && self.fatal.is_none()
    }
}

/// Errors starting a runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("io_uring is not available: {0}")]
    UringUnavailable(String),
    #[error("cannot start a thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot start the declared handlers: {0}")]
    Handlers(#[source] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("the runtime was already started")]
    AlreadyStarted,
}

/// A pluggable I/O engine. Both engines drive the same
/// [`crate::session::WorkerSession`]; everything above never branches on which
/// one runs.
pub trait RuntimeMode: Send {
    /// Which engine this is.
    fn kind(&self) -> RuntimeKind;
    /// Spawn the engine's threads and begin dialling; returns at once.
    fn start(&mut self) -> Result<(), RuntimeError>;
    /// Live status of the agent and each session.
    fn stats(&self) -> Arc<AgentStats>;
    /// A handle that stops this runtime from another thread.
    fn stop_handle(&self) -> StopHandle;
    /// Block until every session has ended.
    fn wait(&mut self) -> RunReport;

    /// Begin a graceful drain of every session (see [`StopHandle`]).
    fn request_stop(&self) {
        self.stop_handle().request_stop();
    }
    /// Bytes written to every socket since start.
    fn bytes_sent(&self) -> u64 {
        self.stats().bytes_sent_total()
    }
    /// Bytes read from every socket since start.
    fn bytes_received(&self) -> u64 {
        self.stats().bytes_received_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_chunk_starts_half_a_page_in() {
        for len in [1, 4096, 64 * 1024, 1 << 20] {
            let mut chunk = RecvChunk::new(len);
            assert_eq!(chunk.space().len(), len);
            assert_eq!(chunk.space().as_ptr() as usize % 4096, RECV_PAGE_OFFSET);
            chunk.space()[len - 1] = 7;
            assert_eq!(chunk.data(len)[len - 1], 7);
            assert_eq!(chunk.data(len + 10).len(), len);
        }
    }

    #[test]
    fn stop_handle_wakes_registered_wakers_once() {
        let stop = StopHandle::new();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = hits.clone();
        stop.on_stop(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        stop.request_stop();
        stop.request_stop();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        stop.fail("refused".into());
        assert_eq!(stop.fatal().as_deref(), Some("refused"));
    }
}
