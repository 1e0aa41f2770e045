//! [`ClientTls`]: what a worker needs to open TLS sessions to one manager,
//! and the reload of its files when they change on disk.
//!
//! A reload happens only at a dial, never in the middle of a connection, and
//! a file that no longer loads never replaces a configuration that works.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::config::{build_client_config, TlsOptions, TlsSetupError};
use crate::transport::Endpoint;

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

    /// A configuration built in memory rather than loaded from files (the
    /// fuzz targets' in-memory peers): `server_name` is what the manager's
    /// certificate must carry, and nothing is ever reloaded.
    pub fn from_config(config: Arc<ClientConfig>, server_name: ServerName<'static>) -> ClientTls {
        let options = TlsOptions::default();
        ClientTls {
            inner: Arc::new(std::sync::Mutex::new(Loaded {
                config,
                stamp: stamp(&options),
            })),
            options: Arc::new(options),
            server_name,
        }
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

/// The modification times of the TLS files (a change means: reload).
fn stamp(options: &TlsOptions) -> Vec<Option<std::time::SystemTime>> {
    [&options.ca, &options.cert, &options.key]
        .into_iter()
        .flatten()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}
