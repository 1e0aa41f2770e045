//! One worker connection as the engine keeps it: its socket, its manager
//! state machine, its task slots and the output queued behind large
//! payloads, and the plaintext read and write paths.
//!
//! Socket bytes are counted here and in [`super::tls`] only, where they are
//! read and written, exactly as they cross the socket. Nothing here decides
//! what to send (that is [`super::pacing`]) or judges a result (that is
//! [`super::verify`]).

use std::collections::VecDeque;
use std::io;

use ringworker::manager::ManagerMachine;
use ringworker::protocol::GoodbyeBody;

use super::accounting::ConnReport;
use super::socket::Stream;
use super::tls::TlsConn;
use super::READ_CHUNK;
use crate::workload::Pool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnPhase {
    Handshake,
    Running,
    Closed,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TaskSlot {
    pub(super) generation: u32,
    pub(super) task: u32,
    /// Nanoseconds since the run's epoch when the task was (meant to be) sent.
    pub(super) sent_ns: u64,
    pub(super) measured: bool,
}

/// Output queued behind a large payload, in order.
pub(super) enum Segment {
    /// Bytes taken from the machine's output buffer, and how many are written.
    Bytes(Vec<u8>, usize),
    /// A pool task's payload, and how many bytes of it are written.
    Payload(u32, usize),
}

impl Segment {
    /// What is left to write of this segment.
    pub(super) fn rest<'a>(&'a self, pool: &'a Pool) -> &'a [u8] {
        match self {
            Segment::Bytes(bytes, off) => &bytes[*off..],
            Segment::Payload(task, off) => &pool.tasks[*task as usize].payload[*off..],
        }
    }
}

/// What one read of a connection gave.
pub(super) enum ReadOutcome {
    /// Input may have reached the machine.
    Input,
    /// Interrupted: read again.
    Again,
    /// Nothing more to read now, or the connection is over.
    Stop,
}

pub(super) struct Conn {
    pub(super) segments: VecDeque<Segment>,
    pub(super) stream: Stream,
    pub(super) tls: Option<Box<TlsConn>>,
    pub(super) machine: ManagerMachine,
    pub(super) phase: ConnPhase,
    pub(super) slots: Vec<TaskSlot>,
    pub(super) free: Vec<u32>,
    pub(super) in_flight: u32,
    pub(super) report: ConnReport,
    pub(super) goodbye: Option<(GoodbyeBody, usize)>,
    pub(super) next_intended_ns: u64,
    pub(super) eof: bool,
    /// The workload stops sending on this connection.
    pub(super) sending: bool,
}

impl Conn {
    /// A connection just accepted, before the agent's HELLO.
    pub(super) fn new(stream: Stream, tls: Option<Box<TlsConn>>, machine: ManagerMachine) -> Conn {
        Conn {
            segments: VecDeque::new(),
            stream,
            tls,
            machine,
            phase: ConnPhase::Handshake,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            report: ConnReport::default(),
            goodbye: None,
            next_intended_ns: 0,
            eof: false,
            sending: true,
        }
    }

    /// Bytes queued for this connection's socket and never written: the
    /// machine's output and what is left of each segment.
    pub(super) fn unwritten(&self, pool: &Pool) -> u64 {
        let segments: usize = self
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Bytes(bytes, written) => bytes.len() - written,
                Segment::Payload(task, written) => pool
                    .tasks
                    .get(*task as usize)
                    .map_or(0, |t| t.payload.len() - written),
            })
            .sum();
        (segments + self.machine.pending_output().len()) as u64
    }

    /// Drop `n` written bytes from the front of the segment queue.
    fn advance_segments(&mut self, mut n: usize, pool: &Pool) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            let (len, off) = match front {
                Segment::Bytes(bytes, off) => (bytes.len(), off),
                Segment::Payload(task, off) => (pool.tasks[*task as usize].payload.len(), off),
            };
            let left = len - *off;
            if n >= left {
                n -= left;
                self.segments.pop_front();
            } else {
                *off += n;
                n = 0;
            }
        }
    }

    /// One read of a plaintext connection, straight into the machine's
    /// buffer, counting the socket bytes.
    pub(super) fn read_plain(&mut self) -> ReadOutcome {
        let space = self.machine.recv_space(READ_CHUNK);
        let n = match self.stream.read(space) {
            Ok(0) => {
                self.machine.commit(0);
                self.peer_closed();
                return ReadOutcome::Stop;
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.machine.commit(0);
                return ReadOutcome::Stop;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                self.machine.commit(0);
                return ReadOutcome::Again;
            }
            Err(err) => {
                self.machine.commit(0);
                self.fail(&format!("read failed: {err}"));
                return ReadOutcome::Stop;
            }
        };
        self.machine.commit(n);
        self.report.bytes_received += n as u64;
        ReadOutcome::Input
    }

    /// Write what a plaintext connection has queued, as far as the socket
    /// takes it, counting the socket bytes.
    pub(super) fn flush_plain(&mut self, pool: &Pool) {
        // Whatever the machine queued after the last segment goes behind it.
        if !self.segments.is_empty() && !self.machine.pending_output().is_empty() {
            let bytes = self.machine.take_output(Vec::new());
            self.segments.push_back(Segment::Bytes(bytes, 0));
        }
        while self.phase != ConnPhase::Closed {
            let result = if self.segments.is_empty() {
                if self.machine.pending_output().is_empty() {
                    return;
                }
                self.stream.write(self.machine.pending_output())
            } else {
                let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(16);
                for segment in self.segments.iter().take(16) {
                    slices.push(io::IoSlice::new(segment.rest(pool)));
                }
                self.stream.write_vectored(&slices)
            };
            match result {
                Ok(0) => {
                    self.fail("write returned 0");
                    return;
                }
                Ok(n) => {
                    self.report.bytes_sent += n as u64;
                    if self.segments.is_empty() {
                        self.machine.consume_output(n);
                    } else {
                        self.advance_segments(n, pool);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.fail(&format!("write failed: {err}"));
                    return;
                }
            }
        }
    }

    /// The agent closed its side (after its GOODBYE, or it went away):
    /// nothing more will be read, so close ours at once. An agent waits for
    /// the manager to close after GOODBYE (up to 2 s); holding the socket
    /// until the run ends would make every agent-initiated drain that long.
    /// Nothing is written after this, so the byte totals stand.
    pub(super) fn peer_closed(&mut self) {
        self.eof = true;
        self.phase = ConnPhase::Closed;
        self.stream.shutdown(std::net::Shutdown::Both);
    }

    pub(super) fn fail(&mut self, why: &str) {
        self.report.error.get_or_insert_with(|| why.to_owned());
        self.phase = ConnPhase::Closed;
    }
}
