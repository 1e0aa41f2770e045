//! TLS 1.3 for `tls://` endpoints, on rustls's sans-IO connection API.
//!
//! rustls never touches a socket: the engines keep reading and writing raw
//! bytes (and counting them) exactly as for plain TCP, and hand those bytes to
//! the [`ClientTls`] layer in [`crate::link::Link`]. That is what lets the
//! io_uring engine keep owning its buffers and completions.
//!
//! This module holds the configuration (trust anchors, client certificates,
//! server name), the one-line descriptions of handshake failures, and the
//! manager side ([`ServerTls`]) used by the bundled manager and load generator:
//! it feeds rustls one record at a time so that it knows at which socket offset
//! each piece of plaintext arrived, which is what the byte-accounting check of
//! PROTOCOL.md needs over TLS.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ServerConfig};

use super::Endpoint;

/// The only protocol version spoken: PROTOCOL.md names TLS 1.3.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS setting that cannot be used: a file that is missing or holds no
/// usable PEM item, or a server name that is not a name.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{flag} {path}: {message}")]
    File {
        flag: &'static str,
        path: String,
        message: String,
    },
    #[error("invalid TLS server name {0:?}: use a DNS name or an IP address")]
    ServerName(String),
    #[error("{0}")]
    Other(String),
}

fn file_error(flag: &'static str, path: &Path, message: impl fmt::Display) -> TlsSetupError {
    TlsSetupError::File {
        flag,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn pem_error(err: rustls::pki_types::pem::Error) -> String {
    match err {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM: {other}"),
    }
}

/// All certificates in a PEM file; at least one.
pub fn load_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let iter =
        CertificateDer::pem_file_iter(path).map_err(|e| file_error(flag, path, pem_error(e)))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, pem_error(e)))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error(flag, path, "no PEM private key in the file")
        }
        other => file_error(flag, path, pem_error(other)),
    })
}

fn root_store(
    flag: &'static str,
    ca: Option<&Path>,
) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs(flag, path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(flag, path, format!("unusable CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), |e| e.to_string());
                return Err(TlsSetupError::Other(format!(
                    "no trusted CA certificates: the system store has none usable ({why}); \
                     pass --tls-ca PATH"
                )));
            }
        }
    }
    Ok(roots)
}

/// The agent's TLS settings (`--tls-ca`, `--tls-cert`, `--tls-key`,
/// `--tls-server-name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Whether any option is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some() || self.server_name.is_some()
    }
}

/// What a worker needs to open TLS sessions to one manager: the rustls
/// configuration and the name the manager's certificate must carry.
///
/// The files are watched: a dial after any of them changed (a renewed
/// certificate, a rotated Kubernetes Secret) loads them again, so long-lived
/// agents pick up new certificates without a restart. A file that no longer
/// loads keeps the previous configuration, with one warning per change.
#[derive(Clone)]
pub struct ClientTls {
    inner: Arc<std::sync::Mutex<Loaded>>,
    options: Arc<TlsOptions>,
    server_name: ServerName<'static>,
}

struct Loaded {
    config: Arc<ClientConfig>,
    stamp: Vec<Option<std::time::SystemTime>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Load the files named in `options` for a `tls://` `endpoint`.
    pub fn new(endpoint: &Endpoint, options: &TlsOptions) -> Result<ClientTls, TlsSetupError> {
        let host = match endpoint {
            Endpoint::Tls { host, .. } => host.clone(),
            other => {
                return Err(TlsSetupError::Other(format!(
                    "TLS options are set but the manager endpoint {other} is not tls://"
                )))
            }
        };
        let name = options.server_name.clone().unwrap_or(host);
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsSetupError::ServerName(name))?;
        let stamp = stamp(options);
        let config = build_client_config(options)?;
        Ok(ClientTls {
            inner: Arc::new(std::sync::Mutex::new(Loaded { config, stamp })),
            options: Arc::new(options.clone()),
            server_name,
        })
    }

    /// The configuration for the next dial, reloaded if a file changed.
    fn current(&self) -> Arc<ClientConfig> {
        let mut loaded = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = stamp(&self.options);
        if now != loaded.stamp {
            loaded.stamp = now;
            match build_client_config(&self.options) {
                Ok(config) => {
                    tracing::info!("TLS files changed: certificates reloaded for new connections");
                    loaded.config = config;
                }
                Err(err) => tracing::warn!(
                    "TLS files changed but cannot be loaded ({err}); keeping the previous certificates"
                ),
            }
        }
        loaded.config.clone()
    }

    /// A fresh client connection; its ClientHello is queued for writing.
    pub fn connect(&self) -> Result<rustls::ClientConnection, String> {
        let mut conn = rustls::ClientConnection::new(self.current(), self.server_name.clone())
            .map_err(|e| format!("cannot start TLS: {e}"))?;
        // Output is bounded by the session (its window and frame sizes), not here.
        conn.set_buffer_limit(None);
        Ok(conn)
    }
}

/// A private key readable by group or others is worth a warning (not an
/// error: a Kubernetes Secret mounted through a group may need it).
pub fn warn_if_exposed(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "--tls-key {}: readable by group or others (mode {mode:o}); chmod 600 it",
                key.display()
            );
        }
    }
}

/// The modification times of the TLS files (a change means: reload).
fn stamp(options: &TlsOptions) -> Vec<Option<std::time::SystemTime>> {
    [&options.ca, &options.cert, &options.key]
        .into_iter()
        .flatten()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn build_client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = root_store("--tls-ca", options.ca.as_deref())?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsSetupError::Other(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("--tls-cert", cert)?;
            let key_der = load_key("--tls-key", key)?;
            warn_if_exposed(key);
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                file_error("--tls-key", key, format!("does not fit --tls-cert: {e}"))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(TlsSetupError::Other(
                "--tls-cert needs --tls-key (the client certificate's private key)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(TlsSetupError::Other(
                "--tls-key needs --tls-cert (the client certificate)".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

/// A handshake or record failure in one line an operator can act on.
pub fn describe(err: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "the manager's certificate is not signed by a trusted CA (check --tls-ca)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the manager's certificate does not match the server name ({cert}); check the endpoint's host or --tls-server-name")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the manager's certificate has expired ({cert})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the manager's certificate is not valid yet ({cert})")
            }
            other => format!("the manager's certificate was rejected: {other}"),
        },
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the manager requires a client certificate (set --tls-cert and --tls-key)".into()
        }
        rustls::Error::AlertReceived(A::UnknownCA) => {
            "the manager does not trust our client certificate (alert unknown_ca)".into()
        }
        rustls::Error::AlertReceived(A::BadCertificate | A::CertificateUnknown) => {
            "the manager rejected our client certificate".into()
        }
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            "the manager rejected our client certificate as expired".into()
        }
        rustls::Error::AlertReceived(A::ProtocolVersion) => {
            "the manager does not speak TLS 1.3".into()
        }
        rustls::Error::AlertReceived(alert) => format!("the manager sent the alert {alert:?}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the manager does not speak TLS here ({err})")
        }
        other => other.to_string(),
    }
}

/// The worker's side of one TLS connection: raw socket bytes in, plaintext out
/// and the other way round. Owned by [`crate::link::Link`].
#[derive(Debug)]
pub struct TlsLayer {
    conn: rustls::ClientConnection,
    close_sent: bool,
    peer_closed: bool,
}

/// Encrypt `plain` into the connection's queue (no buffer limit is set, so
/// the writer takes everything).
fn write_plain<D>(conn: &mut rustls::ConnectionCommon<D>, plain: &[u8]) {
    let _ = conn.writer().write_all(plain);
}

/// Append every queued record to `out`.
fn write_records<D>(conn: &mut rustls::ConnectionCommon<D>, out: &mut Vec<u8>) {
    while conn.wants_write() {
        match conn.write_tls(out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Hand every decrypted byte to `deliver`, in rustls's own buffers (no copy).
/// Returns whether the peer sent close_notify.
fn drain(reader: &mut rustls::Reader<'_>, deliver: &mut dyn FnMut(&[u8])) -> bool {
    use std::io::BufRead;
    loop {
        match reader.fill_buf() {
            Ok([]) => return true,
            Ok(plain) => {
                let n = plain.len();
                deliver(plain);
                reader.consume(n);
            }
            // WouldBlock: no more plaintext for now. UnexpectedEof cannot
            // happen before the socket's EOF, which is handled apart.
            Err(_) => return false,
        }
    }
}

impl TlsLayer {
    pub fn new(conn: rustls::ClientConnection) -> TlsLayer {
        TlsLayer {
            conn,
            close_sent: false,
            peer_closed: false,
        }
    }

    /// Feed socket bytes; every piece of plaintext they complete goes to
    /// `deliver`. An error is the connection's end (an alert is queued).
    pub fn feed(
        &mut self,
        mut raw: &[u8],
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<(), rustls::Error> {
        while !raw.is_empty() {
            let n = match self.conn.read_tls(&mut raw) {
                Ok(n) => n,
                Err(err) => return Err(rustls::Error::General(err.to_string())),
            };
            if n == 0 {
                break;
            }
            self.conn.process_new_packets()?;
            self.drain_plaintext(deliver);
        }
        Ok(())
    }

    fn drain_plaintext(&mut self, deliver: &mut dyn FnMut(&[u8])) {
        self.peer_closed |= drain(&mut self.conn.reader(), &mut |plain| deliver(plain));
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the manager sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Encrypt `plain` (buffered until the handshake completes).
    pub fn write_plain(&mut self, plain: &[u8]) {
        // With no buffer limit the writer takes everything.
        write_plain(&mut self.conn, plain);
    }

    /// Whether records are waiting to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Append the queued records to `out`.
    pub fn write_records(&mut self, out: &mut Vec<u8>) {
        write_records(&mut self.conn, out);
    }

    /// Queue close_notify once.
    pub fn close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.conn.send_close_notify();
        }
    }

    pub fn close_sent(&self) -> bool {
        self.close_sent
    }
}

/// The manager's TLS settings: its certificate chain and key, and optionally
/// the CA that client certificates must chain to (mutual TLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = load_certs("--tls-cert", cert)?;
    let key_der = load_key("--tls-key", key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsSetupError::Other(e.to_string()))?;
    let builder = match client_ca {
        Some(path) => {
            let roots = root_store("--tls-client-ca", Some(path))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| file_error("--tls-client-ca", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| file_error("--tls-key", key, format!("does not fit --tls-cert: {e}")))?;
    // No session tickets: nothing is sent after the handshake that the worker
    // did not ask for, and workers do not resume.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The manager's side of one TLS connection, fed one record at a time.
///
/// [`ServerTls::feed`] reports each piece of plaintext with the socket offset
/// at which the record that carried it began. Over TLS the worker's GOODBYE
/// reports the bytes it had written before the records carrying GOODBYE, so a
/// manager checks `goodbye.bytes_sent == record_offset` of GOODBYE's record.
#[derive(Debug)]
pub struct ServerTls {
    conn: rustls::ServerConnection,
    /// Bytes of an incomplete record.
    pending: Vec<u8>,
    /// Socket bytes fed so far, complete records and `pending` alike.
    fed: u64,
    peer_closed: bool,
    close_sent: bool,
}

/// TLS record header: type, version, 16-bit length.
const RECORD_HEADER: usize = 5;
/// Largest record a peer may send (TLS 1.3: 2^14 + 256 of ciphertext).
const MAX_RECORD: usize = RECORD_HEADER + (1 << 14) + 256;

impl ServerTls {
    pub fn new(config: Arc<ServerConfig>) -> Result<ServerTls, String> {
        let mut conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
        conn.set_buffer_limit(None);
        Ok(ServerTls {
            conn,
            pending: Vec::new(),
            fed: 0,
            peer_closed: false,
            close_sent: false,
        })
    }

    /// Feed socket bytes. `deliver(plaintext, record_offset)`.
    pub fn feed(
        &mut self,
        raw: &[u8],
        deliver: &mut dyn FnMut(&[u8], u64),
    ) -> Result<(), rustls::Error> {
        let start = self.fed - self.pending.len() as u64;
        self.fed += raw.len() as u64;
        // The incomplete record's buffer is kept and reused across reads.
        let mut data = std::mem::take(&mut self.pending);
        let joined = !data.is_empty();
        if joined {
            data.extend_from_slice(raw);
        }
        let bytes: &[u8] = if joined { &data } else { raw };
        let mut at = 0;
        while bytes.len() - at >= RECORD_HEADER {
            // Refuse a header that cannot start a TLS record at once, rather
            // than waiting for the length it claims.
            let (content_type, major) = (bytes[at], bytes[at + 1]);
            if !(20..=23).contains(&content_type) || major != 3 {
                return Err(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                ));
            }
            let len =
                RECORD_HEADER + usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
            if len > MAX_RECORD {
                return Err(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::MessageTooLarge,
                ));
            }
            if bytes.len() - at < len {
                break;
            }
            let offset = start + at as u64;
            let mut record = &bytes[at..at + len];
            while !record.is_empty() {
                match self.conn.read_tls(&mut record) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err) => return Err(rustls::Error::General(err.to_string())),
                }
                self.conn.process_new_packets()?;
            }
            self.peer_closed |= drain(&mut self.conn.reader(), &mut |plain| deliver(plain, offset));
            at += len;
        }
        if joined {
            data.drain(..at);
        } else {
            data.extend_from_slice(&raw[at..]);
        }
        self.pending = data;
        Ok(())
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    pub fn write_plain(&mut self, plain: &[u8]) {
        write_plain(&mut self.conn, plain);
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn write_records(&mut self, out: &mut Vec<u8>) {
        write_records(&mut self.conn, out);
    }

    /// Queue close_notify (once).
    pub fn close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.conn.send_close_notify();
        }
    }

    /// The client certificate's subject, when one was presented (mTLS).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }
}

/// A server-side handshake failure described from the manager's side.
pub fn describe_server(err: &rustls::Error) -> String {
    match err {
        rustls::Error::NoCertificatesPresented => {
            "the worker presented no client certificate".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the worker's client certificate is not signed by --tls-client-ca".into()
        }
        rustls::Error::InvalidCertificate(other) => {
            format!("the worker's client certificate was rejected: {other}")
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA) => {
            "the worker does not trust the manager's certificate (alert unknown_ca)".into()
        }
        rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate | rustls::AlertDescription::CertificateUnknown,
        ) => "the worker rejected the manager's certificate (wrong name?)".into(),
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => {
            "the worker rejected the manager's certificate as expired".into()
        }
        rustls::Error::AlertReceived(alert) => format!("the worker sent the alert {alert:?}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the worker does not speak TLS here ({err})")
        }
        other => other.to_string(),
    }
}

impl From<TlsSetupError> for io::Error {
    fn from(err: TlsSetupError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, err.to_string())
    }
}
