//! The manager side of the protocol, for the loadgen and the tests.
//!
//! [`machine::ManagerMachine`] is the sans-IO half. [`ManagerConn`] wraps it
//! around one blocking socket, counts the bytes it moves (so the worker's
//! totals can be checked against an independent count) and offers raw writes
//! for tests that play a hostile peer.

pub mod machine;
pub mod verify;

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use machine::{
    ManagerConfig, ManagerEvent, ManagerEventRef, ManagerMachine, ManagerPhase, SendError,
};

use crate::protocol::Hello;
use crate::transport::tls::ServerTls;
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
    #[error("TLS: {0}")]
    Tls(String),
}

/// One accepted worker connection, driven with blocking I/O.
#[derive(Debug)]
pub struct ManagerConn {
    stream: BlockingStream,
    machine: ManagerMachine,
    bytes_sent: u64,
    bytes_received: u64,
    eof: bool,
    tls: Option<Box<ServerTls>>,
    /// Over TLS: the socket offset of the record that carried the latest
    /// plaintext (GOODBYE's record, once GOODBYE has arrived).
    last_record_offset: u64,
    read_buf: Vec<u8>,
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
            tls: None,
            last_record_offset: 0,
            read_buf: Vec::new(),
        }
    }

    /// Wrap an accepted stream and serve TLS on it (the handshake runs with
    /// the first reads). Its bytes are counted on the socket.
    pub fn new_tls(
        stream: BlockingStream,
        config: ManagerConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Self, ManagerError> {
        let mut conn = ManagerConn::new(stream, config);
        conn.tls = Some(Box::new(
            ServerTls::new(tls).map_err(|e| ManagerError::Tls(e.to_string()))?,
        ));
        conn.read_buf = vec![0; 64 * 1024];
        Ok(conn)
    }

    /// Accept the next worker over TLS and complete its handshake.
    pub fn accept_tls(
        listener: &BlockingListener,
        config: ManagerConfig,
        tls: Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<(ManagerConn, Hello), ManagerError> {
        let stream = listener.accept()?;
        let mut conn = ManagerConn::new_tls(stream, config, tls)?;
        let hello = conn.handshake(timeout)?;
        Ok((conn, hello))
    }

    /// What the worker's GOODBYE must report as `bytes_sent` when it was
    /// the last frame read, whose encoded length is `goodbye_len`: plaintext,
    /// everything received before the frame; over TLS, everything received
    /// before the record that carried it (PROTOCOL.md, "Byte accounting").
    pub fn expected_goodbye_bytes_sent(&self, goodbye_len: usize) -> u64 {
        if self.tls.is_some() {
            self.last_record_offset
        } else {
            self.bytes_received.saturating_sub(goodbye_len as u64)
        }
    }

    /// Whether this connection runs TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The client certificate chain the worker presented (mutual TLS).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls.as_ref().and_then(|t| t.peer_certificates())
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
        match self.tls.as_mut() {
            None => self.write_counted(&out)?,
            Some(tls) => {
                tls.write_plain(&out);
                self.flush_records()?;
            }
        }
        Ok(())
    }

    fn flush_records(&mut self) -> io::Result<()> {
        let mut records = Vec::new();
        if let Some(tls) = self.tls.as_mut() {
            tls.write_records(&mut records);
        }
        self.write_counted(&records)
    }

    /// One read of TLS records: decrypt, feed the machine, answer the
    /// handshake.
    fn read_tls(&mut self) -> Result<(), ManagerError> {
        let mut buf = std::mem::take(&mut self.read_buf);
        let result = self.stream.read(&mut buf);
        let outcome = match result {
            Ok(0) => {
                self.eof = true;
                self.machine.commit(0);
                Ok(())
            }
            Ok(n) => {
                self.bytes_received += n as u64;
                let (machine, last) = (&mut self.machine, &mut self.last_record_offset);
                let fed = self.tls.as_mut().map(|tls| {
                    tls.feed(&buf[..n], &mut |plain, offset| {
                        *last = offset;
                        machine.handle_input(plain);
                    })
                });
                match fed {
                    Some(Err(err)) => {
                        // Send the alert rustls queued, then give up.
                        let _ = self.flush_records();
                        Err(ManagerError::Tls(crate::transport::tls::describe_server(
                            &err,
                        )))
                    }
                    _ => self.flush_records().map_err(ManagerError::from),
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ManagerError::Timeout)
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(err) => Err(err.into()),
        };
        self.read_buf = buf;
        outcome
    }

    /// Over TLS: send close_notify (before shutting the socket).
    pub fn close_tls(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            tls.close();
        }
        self.flush_records()
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
            if self.tls.is_some() {
                self.read_tls()?;
                continue;
            }
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
