//! Bytes out: what the runtime takes to write, how much of it was written,
//! and GOODBYE, written once everything before it is on the wire so that its
//! counters are exact.
//!
//! It never writes to a socket itself; the runtime does, and reports back.

use std::time::Instant;

use crate::protocol::Phase;

use super::WorkerSession;

impl WorkerSession {
    /// Whether bytes wait to be written.
    pub fn has_output(&self) -> bool {
        self.machine.has_output()
    }

    /// The bytes to write next; `spare` becomes the new (empty) output buffer.
    pub fn take_output(&mut self, spare: Vec<u8>) -> Vec<u8> {
        self.machine.take_output(spare)
    }

    /// The output taken last has been written in full (see
    /// [`WorkerSession::results_unwritten`]).
    pub fn output_written(&mut self) {
        self.machine.output_written();
    }

    /// RESULTs queued or under way and not yet known to be written.
    pub fn results_unwritten(&self) -> u64 {
        self.machine.results_unwritten()
    }

    /// The bytes to write next, for runtimes that write in place.
    pub fn pending_output(&self) -> &[u8] {
        self.machine.pending_output()
    }

    /// `n` bytes of [`WorkerSession::pending_output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.machine.consume_output(n);
    }

    /// Everything handed out so far is on the wire. This is when GOODBYE is
    /// written, so its counters are exact.
    pub fn on_flushed(&mut self, now: Instant) {
        self.machine.output_written();
        if self.machine.phase() == Phase::GoodbyeDue && !self.machine.has_output() {
            let received = self
                .bytes_fed
                .unwrap_or_else(|| self.stats.bytes_received());
            self.machine
                .write_goodbye(self.stats.bytes_sent(), received);
            self.process(now);
        }
    }

    /// For a driver whose reads are counted on another thread before they
    /// reach the session: the bytes handed over so far on this connection.
    /// GOODBYE's `bytes_received` is then this count, so it never includes
    /// bytes read after the session decided to say GOODBYE.
    pub fn set_bytes_fed(&mut self, fed: u64) {
        self.bytes_fed = Some(fed);
    }
}
