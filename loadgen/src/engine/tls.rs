//! The TLS half of a connection: the socket is read and written exactly as
//! for plain TCP and its bytes are counted there (records, handshake and
//! alerts), while plaintext goes through rustls ([`ServerTls`]). It notes
//! the socket offset of the record that carried GOODBYE, which the byte
//! accounting over TLS needs, and counts failed handshakes apart.
//!
//! A failed handshake is never a session: its connection is left out of the
//! per-connection results. Nothing here writes plaintext to the socket.

use std::io;
use std::sync::Arc;

use ringworker::transport::tls::{describe_server, ServerTls};

use super::conn::{Conn, ConnPhase, ReadOutcome};
use super::socket::Stream;
use crate::workload::Pool;

/// The TLS half of one connection.
pub(super) struct TlsConn {
    server: ServerTls,
    /// Records waiting for the socket, and how many of them are written.
    out: Vec<u8>,
    out_at: usize,
    /// Socket offset of the record that carried the latest plaintext.
    pub(super) last_record_offset: u64,
    /// Socket offset of the record that carried GOODBYE.
    pub(super) goodbye_offset: Option<u64>,
    /// The TLS handshake failed: not a session, reported apart.
    pub(super) handshake_failed: bool,
}

impl TlsConn {
    pub(super) fn new(config: Arc<rustls::ServerConfig>) -> io::Result<TlsConn> {
        Ok(TlsConn {
            server: ServerTls::new(config).map_err(io::Error::other)?,
            out: Vec::new(),
            out_at: 0,
            last_record_offset: 0,
            goodbye_offset: None,
            handshake_failed: false,
        })
    }
}

/// Failed TLS handshakes: how many, and what went wrong with the first.
#[derive(Debug, Default)]
pub(super) struct HandshakeFailures {
    pub(super) count: u64,
    pub(super) first: Option<String>,
}

impl HandshakeFailures {
    fn note(&mut self, why: String) {
        self.count += 1;
        self.first.get_or_insert(why);
    }
}

impl Conn {
    /// One read of a TLS connection: count the socket bytes, decrypt, and
    /// hand the plaintext to the machine. A failed handshake sends rustls's
    /// alert, closes the socket and is noted in `failures`.
    pub(super) fn read_tls(
        &mut self,
        buf: &mut [u8],
        failures: &mut HandshakeFailures,
    ) -> ReadOutcome {
        let Some(tls) = self.tls.as_deref_mut() else {
            return ReadOutcome::Stop;
        };
        let n = match self.stream.read(buf) {
            Ok(0) => {
                if tls.server.is_handshaking() {
                    tls.handshake_failed = true;
                    failures.note(
                        "the worker closed the connection during the TLS handshake".to_owned(),
                    );
                }
                self.peer_closed();
                return ReadOutcome::Stop;
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Stop,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return ReadOutcome::Again,
            Err(err) => {
                if tls.server.is_handshaking() {
                    tls.handshake_failed = true;
                    failures.note(format!("read failed during the TLS handshake: {err}"));
                    self.phase = ConnPhase::Closed;
                } else {
                    self.fail(&format!("read failed: {err}"));
                }
                return ReadOutcome::Stop;
            }
        };
        self.report.bytes_received += n as u64;
        let (machine, last) = (&mut self.machine, &mut tls.last_record_offset);
        let fed = tls.server.feed(&buf[..n], &mut |plain, offset| {
            *last = offset;
            machine.handle_input(plain);
        });
        match fed {
            Ok(()) => ReadOutcome::Input,
            Err(err) => {
                let why = describe_server(&err);
                let handshaking = tls.server.is_handshaking();
                // The alert rustls queued goes out before the socket closes.
                let _ = write_records(&mut self.stream, tls, &mut self.report.bytes_sent);
                self.stream.shutdown(std::net::Shutdown::Both);
                if handshaking {
                    tls.handshake_failed = true;
                    failures.note(why);
                    self.phase = ConnPhase::Closed;
                } else {
                    self.fail(&format!("TLS: {why}"));
                }
                ReadOutcome::Stop
            }
        }
    }

    /// Move queued output into rustls and write the records, as far as the
    /// socket takes them.
    pub(super) fn flush_tls(&mut self, pool: &Pool) {
        if self.phase == ConnPhase::Closed {
            return;
        }
        let Some(tls) = self.tls.as_deref_mut() else {
            return;
        };
        // Segments (large payloads) first: the machine's output was queued
        // behind them.
        for segment in self.segments.drain(..) {
            tls.server.write_plain(segment.rest(pool));
        }
        let pending = self.machine.pending_output();
        if !pending.is_empty() {
            let n = pending.len();
            tls.server.write_plain(pending);
            self.machine.consume_output(n);
        }
        if let Err(why) = write_records(&mut self.stream, tls, &mut self.report.bytes_sent) {
            self.fail(&why);
        }
    }

    /// The loadgen closes first (the agent sent no GOODBYE): over TLS, send
    /// close_notify, without waiting for one back.
    pub(super) fn close_tls(&mut self) {
        if self.phase == ConnPhase::Closed || self.goodbye.is_some() {
            return;
        }
        let Some(tls) = self.tls.as_deref_mut() else {
            return;
        };
        if tls.server.is_handshaking() {
            return;
        }
        tls.server.close();
        let _ = write_records(&mut self.stream, tls, &mut self.report.bytes_sent);
        self.stream.shutdown(std::net::Shutdown::Write);
        self.phase = ConnPhase::Closed;
    }
}

/// Write a TLS connection's records (those already taken from rustls first,
/// then whatever rustls has queued) until done or the socket is full,
/// counting the bytes in `sent`.
fn write_records(stream: &mut Stream, tls: &mut TlsConn, sent: &mut u64) -> Result<(), String> {
    loop {
        if tls.out_at == tls.out.len() {
            tls.out.clear();
            tls.out_at = 0;
            if !tls.server.wants_write() {
                return Ok(());
            }
            tls.server.write_records(&mut tls.out);
            if tls.out.is_empty() {
                return Ok(());
            }
        }
        match stream.write(&tls.out[tls.out_at..]) {
            Ok(0) => return Err("write returned 0".to_owned()),
            Ok(n) => {
                *sent += n as u64;
                tls.out_at += n;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("write failed: {err}")),
        }
    }
}
