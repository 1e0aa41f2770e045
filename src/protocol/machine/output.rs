//! The output buffer the driver writes from: handed over whole
//! ([`WorkerMachine::take_output`]) so buffers cycle without allocation, or
//! written in place and consumed, and the count of RESULTs not yet known
//! to be written.
//!
//! It never encodes a frame; it only hands over what the rest of the
//! machine queued, in order.

use super::WorkerMachine;

impl WorkerMachine {
    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Hand the queued output to the driver, taking `spare` (cleared) as the
    /// new output buffer, so buffers cycle without allocation.
    ///
    /// Call order: the driver takes output again only once what it took
    /// before was written in full (one send at a time), so the RESULTs taken
    /// before count as written from here on.
    pub fn take_output(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        self.results_taken = std::mem::take(&mut self.results_queued);
        std::mem::replace(&mut self.out, spare)
    }

    /// The output taken last has been written in full.
    pub fn output_written(&mut self) {
        self.results_taken = 0;
    }

    /// RESULT frames queued or taken and not yet known to be written: what
    /// a drain that runs out of time reports as undelivered. A RESULT in a
    /// send that was under way counts as undelivered, whatever part of it
    /// the socket took.
    pub fn results_unwritten(&self) -> u64 {
        self.results_queued + self.results_taken
    }

    /// Drop the first `n` bytes of the output after a driver wrote them in place.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }
}
