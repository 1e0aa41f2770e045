//! The TLS settings files and the rustls configurations built from them:
//! PEM certificates and keys, the trust anchors (a CA file or the system
//! store), the worker's client configuration and the manager's server
//! configuration, and [`TlsSetupError`] for a setting that cannot be used.
//!
//! Only TLS 1.3 is ever configured, and the manager sends no session tickets.
//! This module reads files and builds configurations; it never opens a
//! connection, and a key readable by others is a warning, never an error.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ServerConfig};

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

impl From<TlsSetupError> for io::Error {
    fn from(err: TlsSetupError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, err.to_string())
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

/// The worker's rustls configuration for the files named in `options`.
pub(super) fn build_client_config(
    options: &TlsOptions,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
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
