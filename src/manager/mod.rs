//! The manager side of the protocol, for the loadgen and the tests.
//!
//! [`machine::ManagerMachine`] is the sans-IO half. [`ManagerConn`] wraps it
//! around one blocking socket, counts the bytes it moves (so the worker's
//! totals can be checked against an independent count) and offers raw writes
//! for tests that play a hostile peer.

pub mod machine;
pub mod verify;

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

pub use machine::{
    ManagerConfig, ManagerEvent, ManagerEventRef, ManagerMachine, ManagerPhase, SendError,
};

use crate::protocol::Hello;
use crate::transport::{BlockingListener, BlockingStream};

/// Errors of a blocking manager connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("timed out waiting for the worker")]
    Timeout,
    #[error("the worker closed the connection")]
    Closed,
    #[error("cannot send: {0}")]
    Send(#[from] SendError),
    #[error("handshake failed: {0:?}")]
    Handshake(Box<ManagerEvent>),
}

/// One accepted worker connection, driven with blocking I/O.
#[derive(Debug)]
pub struct ManagerConn {
    stream: BlockingStream,
    machine: ManagerMachine,
    bytes_sent: u64,
    bytes_received: u64,
    eof: bool,
}

impl ManagerConn {
    /// Wrap an accepted stream.
    pub fn new(stream: BlockingStream, config: ManagerConfig) -> Self {
        ManagerConn {
            stream,
            machine: ManagerMachine::new(config),
            bytes_sent: 0,
            bytes_received: 0,
            eof: false,
        }
    }

    /// Accept the next worker and complete its handshake.
    pub fn accept(
        listener: &BlockingListener,
        config: ManagerConfig,
        timeout: Duration,
    ) -> Result<(ManagerConn, Hello), ManagerError> {
        let stream = listener.accept()?;
        let mut conn = ManagerConn::new(stream, config);
        let hello = conn.handshake(timeout)?;
        Ok((conn, hello))
    }

    /// Read HELLO and answer it.
    pub fn handshake(&mut self, timeout: Duration) -> Result<Hello, ManagerError> {
        match self.next_event(timeout)? {
            ManagerEvent::Hello(hello) => {
                self.flush()?;
                Ok(hello)
            }
            other => {
                let _ = self.flush();
                Err(ManagerError::Handshake(Box::new(other)))
            }
        }
    }

    pub fn machine(&mut self) -> &mut ManagerMachine {
        &mut self.machine
    }

    /// Queue and write a TASK.
    pub fn send_task(
        &mut self,
        id: u64,
        handler: &str,
        payload: &[u8],
        ack: bool,
    ) -> Result<(), ManagerError> {
        self.machine.send_task(id, handler, payload, ack)?;
        self.flush()
    }

    /// Queue a TASK without writing it yet (see [`ManagerConn::flush`]).
    pub fn queue_task(
        &mut self,
        id: u64,
        handler: &str,
        payload: &[u8],
        ack: bool,
    ) -> Result<(), ManagerError> {
        Ok(self.machine.send_task(id, handler, payload, ack)?)
    }

    pub fn send_drain(&mut self) -> Result<(), ManagerError> {
        self.machine.send_drain();
        self.flush()
    }

    pub fn send_ping(&mut self, nonce: u64) -> Result<(), ManagerError> {
        self.machine.send_ping(nonce);
        self.flush()
    }

    /// Write arbitrary bytes, bypassing the machine (hostile-peer tests).
    pub fn send_raw_bytes(&mut self, bytes: &[u8]) -> Result<(), ManagerError> {
        self.write_counted(bytes)?;
        Ok(())
    }

    /// Write everything queued.
    pub fn flush(&mut self) -> Result<(), ManagerError> {
        let out = self.machine.take_output(Vec::new());
        self.write_counted(&out)?;
        Ok(())
    }

    /// Wait for the next event from the worker, up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<ManagerEvent, ManagerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.machine.poll_event() {
                // Answer PINGs and refusals right away.
                if !self.machine.pending_output().is_empty() {
                    let _ = self.flush();
                }
                return Ok(event);
            }
            if self.eof {
                return Err(ManagerError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ManagerError::Timeout);
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            let space = self.machine.recv_space(64 * 1024);
            match self.stream.read(space) {
                Ok(0) => {
                    self.eof = true;
                    self.machine.commit(0);
                }
                Ok(n) => {
                    self.bytes_received += n as u64;
                    self.machine.commit(n);
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ManagerError::Timeout)
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Read until the worker closes, counting the bytes; returns them.
    pub fn read_to_end(&mut self, timeout: Duration) -> Result<Vec<ManagerEvent>, ManagerError> {
        let mut events = Vec::new();
        loop {
            match self.next_event(timeout) {
                Ok(event) => events.push(event),
                Err(ManagerError::Closed) => return Ok(events),
                Err(err) => return Err(err),
            }
        }
    }

    /// Close our write side (the worker sees EOF).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// Bytes this side wrote to the socket.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes this side read from the socket.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    pub fn stream(&self) -> &BlockingStream {
        &self.stream
    }

    fn write_counted(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.bytes_sent += n as u64;
                    bytes = &bytes[n..];
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}
