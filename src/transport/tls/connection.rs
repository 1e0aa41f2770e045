//! One end of one TLS connection: raw socket bytes in, plaintext out, and
//! the other way round. [`TlsLayer`] is the worker's end (owned by
//! [`crate::connection::Link`]), [`ServerTls`] the manager's; both are one
//! [`TlsConnection`], so handshake state, encryption, close_notify and the
//! draining of plaintext are written once.
//!
//! Nothing here touches a socket or a clock: the caller reads and writes the
//! socket (and counts the bytes), hands what it read to `feed`, and writes
//! what `write_records` appends. No buffer limit is set on rustls: what is
//! queued is bounded by the session above (its window and frame sizes).

use std::io::Write;
use std::ops::DerefMut;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

use super::record::RecordSplitter;

/// One end of one TLS connection over rustls's connection `C`, with the
/// framing state `F` its side feeds bytes through (none for the worker, a
/// [`RecordSplitter`] for the manager).
#[derive(Debug)]
pub struct TlsConnection<C, F> {
    conn: C,
    framing: F,
    close_sent: bool,
    peer_closed: bool,
    /// The error that ended the connection: rustls has queued its alert,
    /// and is never fed again (a second fatal alert is a rustls invariant
    /// violation; found by the `tls` fuzz target).
    failed: Option<rustls::Error>,
}

/// The worker's side of one TLS connection.
pub type TlsLayer = TlsConnection<ClientConnection, ()>;

/// The manager's side of one TLS connection, fed one record at a time.
///
/// [`ServerTls::feed`] reports each piece of plaintext with the socket offset
/// at which the record that carried it began. Over TLS the worker's GOODBYE
/// reports the bytes it had written before the records carrying GOODBYE, so a
/// manager checks `goodbye.bytes_sent == record_offset` of GOODBYE's record.
pub type ServerTls = TlsConnection<ServerConnection, RecordSplitter>;

impl<C, D, F> TlsConnection<C, F>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
{
    fn with(conn: C, framing: F) -> TlsConnection<C, F> {
        TlsConnection {
            conn,
            framing,
            close_sent: false,
            peer_closed: false,
            failed: None,
        }
    }

    /// Run one feed unless the connection has failed already; remember the
    /// error that ends it. Once close_notify is queued the bytes that still
    /// arrive are not decrypted (nothing reads them any more; the caller has
    /// counted them): rustls counts its close_notify as the one alert it
    /// may send, so an error in them would be a second.
    fn feed_with(
        &mut self,
        feed: impl FnOnce(&mut C, &mut F, &mut bool) -> Result<(), rustls::Error>,
    ) -> Result<(), rustls::Error> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.close_sent {
            return Ok(());
        }
        let result = feed(&mut self.conn, &mut self.framing, &mut self.peer_closed);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Encrypt `plain` (buffered until the handshake completes).
    pub fn write_plain(&mut self, plain: &[u8]) {
        // With no buffer limit the writer takes everything.
        let _ = self.conn.writer().write_all(plain);
    }

    /// Whether records are waiting to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Append every queued record to `out`.
    pub fn write_records(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Queue close_notify (once).
    pub fn close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.conn.send_close_notify();
        }
    }

    /// Whether close_notify was queued.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }
}

/// Hand `raw` to rustls; every piece of plaintext it completes goes to
/// `deliver`, in rustls's own buffers (no copy). Sets `peer_closed` when the
/// peer sent close_notify. An error is the connection's end (an alert is
/// queued).
fn absorb<D>(
    conn: &mut ConnectionCommon<D>,
    peer_closed: &mut bool,
    mut raw: &[u8],
    deliver: &mut dyn FnMut(&[u8]),
) -> Result<(), rustls::Error> {
    use std::io::BufRead;
    while !raw.is_empty() {
        match conn.read_tls(&mut raw) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => return Err(rustls::Error::General(err.to_string())),
        }
        conn.process_new_packets()?;
        let mut reader = conn.reader();
        loop {
            match reader.fill_buf() {
                Ok([]) => {
                    *peer_closed = true;
                    break;
                }
                Ok(plain) => {
                    let n = plain.len();
                    deliver(plain);
                    reader.consume(n);
                }
                // WouldBlock: no more plaintext for now. UnexpectedEof cannot
                // happen before the socket's EOF, which is handled apart.
                Err(_) => break,
            }
        }
    }
    Ok(())
}

impl TlsConnection<ClientConnection, ()> {
    pub fn new(conn: ClientConnection) -> TlsLayer {
        TlsConnection::with(conn, ())
    }

    /// Feed socket bytes; every piece of plaintext they complete goes to
    /// `deliver`. An error is the connection's end (an alert is queued).
    pub fn feed(
        &mut self,
        raw: &[u8],
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<(), rustls::Error> {
        self.feed_with(|conn, _, peer_closed| absorb(conn, peer_closed, raw, deliver))
    }
}

impl TlsConnection<ServerConnection, RecordSplitter> {
    pub fn new(config: Arc<ServerConfig>) -> Result<ServerTls, String> {
        let mut conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
        conn.set_buffer_limit(None);
        Ok(TlsConnection::with(conn, RecordSplitter::default()))
    }

    /// Feed socket bytes. `deliver(plaintext, record_offset)`.
    pub fn feed(
        &mut self,
        raw: &[u8],
        deliver: &mut dyn FnMut(&[u8], u64),
    ) -> Result<(), rustls::Error> {
        self.feed_with(|conn, framing, peer_closed| {
            framing.split(raw, |record, offset| {
                absorb(conn, peer_closed, record, &mut |plain| {
                    deliver(plain, offset)
                })
            })
        })
    }

    /// The client certificate chain, when one was presented (mTLS).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }
}
