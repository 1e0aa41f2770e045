//! TLS 1.3 for `tls://` endpoints, on rustls's sans-IO connection API.
//!
//! rustls never touches a socket: the engines keep reading and writing raw
//! bytes (and counting them) exactly as for plain TCP, and hand those bytes to
//! the [`TlsLayer`] in [`crate::connection::Link`]. That is what lets the io_uring
//! engine keep owning its buffers and completions. Nothing in this module
//! reads or writes a socket, and no protocol version but TLS 1.3 is offered
//! or accepted.
//!
//! The parts, one concern each:
//! - [`config`]: the settings files (trust anchors, certificates, keys), the
//!   rustls configurations built from them and [`TlsSetupError`];
//! - [`client`]: [`ClientTls`], the worker's configuration for one manager,
//!   reloaded when its files change;
//! - [`connection`]: one end of one connection, raw bytes in and plaintext
//!   out: [`TlsLayer`] (the worker's) and [`ServerTls`] (the manager's, used
//!   by the bundled manager and load generator), one implementation for both;
//! - [`record`]: the manager side's record splitter, which feeds rustls one
//!   record at a time so that it knows at which socket offset each piece of
//!   plaintext arrived, which is what the byte-accounting check of
//!   PROTOCOL.md needs over TLS. A record over the TLS 1.3 limit
//!   (2^14 + 256 bytes of ciphertext) is refused before it is buffered;
//! - [`failure`]: handshake and record failures in one line an operator can
//!   act on, from either side.

pub mod client;
pub mod config;
pub mod connection;
pub mod failure;
pub mod record;

pub use client::ClientTls;
pub use config::{load_certs, load_key, server_config, warn_if_exposed, TlsOptions, TlsSetupError};
pub use connection::{ServerTls, TlsConnection, TlsLayer};
pub use failure::{describe, describe_server};
