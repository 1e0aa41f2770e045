//! [`Link`]: a [`WorkerSession`] over its transport, plaintext or TLS.
//!
//! The [`Connection`](super::Connection) owns one `Link` per connection and
//! passes it the raw bytes the runtime reads ([`Link::on_input`]); what
//! [`Link::take_output`] returns is what the runtime writes and counts. Over
//! plain TCP or a Unix socket every call goes straight to the session; over
//! TLS the bytes pass through rustls first ([`TlsLayer`]), so the byte
//! counters see records, handshake and alerts, as PROTOCOL.md asks. The
//! session is reached only through [`Link::session`] and
//! [`Link::session_mut`]: what does not pass the transport says so.
//!
//! Two details make the GOODBYE accounting hold over TLS: the session is told
//! its output is flushed only once every record is on the socket (so the
//! counters it reports include all of them), and GOODBYE is therefore
//! encrypted into records of its own; close_notify follows it.

use std::time::Instant;

use crate::session::WorkerSession;
use crate::transport::tls::{self, TlsLayer};

/// One connection of one session: the session and its transport.
#[derive(Debug)]
pub struct Link {
    session: WorkerSession,
    tls: Option<Box<TlsState>>,
}

#[derive(Debug)]
struct TlsState {
    layer: TlsLayer,
    /// Plaintext taken from the session, recycled.
    plain: Vec<u8>,
    /// The first TLS failure; the connection is over.
    failure: Option<String>,
}

impl Link {
    /// A plaintext link (TCP, Unix socket).
    pub fn plain(session: WorkerSession) -> Link {
        Link { session, tls: None }
    }

    /// A TLS link; the ClientHello is the first output.
    pub fn tls(session: WorkerSession, conn: rustls::ClientConnection) -> Link {
        Link {
            session,
            tls: Some(Box::new(TlsState {
                layer: TlsLayer::new(conn),
                plain: Vec::new(),
                failure: None,
            })),
        }
    }

    /// The session above the transport.
    pub fn session(&self) -> &WorkerSession {
        &self.session
    }

    /// The session, to drive it directly (what does not pass the transport:
    /// timers, the drain, direct receives of plaintext).
    pub fn session_mut(&mut self) -> &mut WorkerSession {
        &mut self.session
    }

    /// Everything taken by [`Link::take_output`] is written. Over TLS the
    /// session learns of it only once no record is left to write.
    pub fn output_written(&mut self) {
        if self.tls.as_ref().is_some_and(|t| t.layer.wants_write()) {
            return;
        }
        self.session.output_written();
    }

    /// Whether this link runs TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A TLS failure that ended the connection (handshake refused, bad
    /// record, alert): one line for the log.
    pub fn failure(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.failure.as_deref())
    }

    /// Bytes the engine may receive straight into the session (plaintext
    /// only: TLS records must be decrypted first).
    pub fn recv_hint(&self, chunk: usize) -> usize {
        if self.tls.is_some() {
            0
        } else {
            self.session.recv_hint(chunk)
        }
    }

    /// Whether the engine should read: the session wants input, or the TLS
    /// handshake does.
    pub fn wants_read(&self) -> bool {
        match &self.tls {
            None => self.session.wants_read(),
            Some(t) => {
                t.failure.is_none() && (self.session.wants_read() || t.layer.is_handshaking())
            }
        }
    }

    /// Bytes read from the socket.
    pub fn on_input(&mut self, bytes: &[u8], now: Instant) {
        let Some(t) = self.tls.as_mut() else {
            self.session.on_input(bytes, now);
            return;
        };
        if t.failure.is_some() {
            return;
        }
        let session = &mut self.session;
        let result = t.layer.feed(bytes, &mut |plain| {
            if session.closed().is_none() {
                session.on_input(plain, now);
            }
        });
        if let Err(err) = result {
            // Before WELCOME counts as the handshake: in TLS 1.3 a client
            // certificate is refused only after the client has finished.
            let text = if t.layer.is_handshaking() || self.session.welcomed_at().is_none() {
                ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                format!("TLS handshake failed: {}", tls::describe(&err))
            } else {
                format!("TLS failed: {}", tls::describe(&err))
            };
            t.failure = Some(text);
        }
    }

    /// The socket reached EOF.
    pub fn on_eof(&mut self, now: Instant) {
        if let Some(t) = self.tls.as_mut() {
            if t.layer.is_handshaking() && t.failure.is_none() {
                ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                t.failure = Some(
                    "TLS handshake failed: the manager closed the connection during the handshake"
                        .into(),
                );
            }
        }
        self.session.on_eof(now);
    }

    /// Whether there are bytes to write.
    pub fn has_output(&self) -> bool {
        match &self.tls {
            None => self.session.has_output(),
            Some(t) => t.layer.wants_write() || (t.failure.is_none() && self.session.has_output()),
        }
    }

    /// Plaintext bytes the session has queued and not handed out yet (over
    /// TLS, records already sealed are not included): a hint for engines
    /// that send early once enough has piled up.
    pub fn queued_output(&self) -> usize {
        if self.tls.as_ref().is_some_and(|t| t.failure.is_some()) {
            0
        } else {
            self.session.pending_output().len()
        }
    }

    /// Take the bytes to write (`spare` is an empty buffer to reuse).
    pub fn take_output(&mut self, spare: Vec<u8>) -> Vec<u8> {
        let Some(t) = self.tls.as_mut() else {
            return self.session.take_output(spare);
        };
        if self.session.has_output() && t.failure.is_none() {
            let plain = self.session.take_output(std::mem::take(&mut t.plain));
            t.layer.write_plain(&plain);
            let mut plain = plain;
            plain.clear();
            t.plain = plain;
        }
        let mut out = spare;
        t.layer.write_records(&mut out);
        out
    }

    /// Everything taken has been written. Over TLS the session learns of it
    /// only when no record is left either; once it has closed, close_notify
    /// is sent.
    pub fn on_flushed(&mut self, now: Instant) {
        match self.tls.as_mut() {
            None => self.session.on_flushed(now),
            Some(t) => {
                if t.layer.wants_write() {
                    return;
                }
                self.session.output_written();
                if self.session.closed().is_some() {
                    if t.failure.is_none() && !t.layer.is_handshaking() {
                        t.layer.close();
                    }
                } else {
                    self.session.on_flushed(now);
                }
            }
        }
    }
}
