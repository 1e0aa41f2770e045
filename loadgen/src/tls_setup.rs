//! The TLS side of a `tls://` listener: the `--tls-*` flags checked against
//! the endpoint and each other, and the manager's configuration loaded
//! from the operator's files or made from throwaway certificates.
//!
//! Throwaway certificates are made only with `--spawn`, and only when no
//! `--tls-cert` was given; they are removed when the setup is dropped.

use std::sync::Arc;

use anyhow::{bail, Context};
use ringworker::transport::Endpoint;
use ringworker_loadgen::pki::Throwaway;

use crate::cli::Args;

/// The TLS side of a `tls://` listener.
pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    /// Client certificates are required.
    pub mutual: bool,
    /// Certificates made for this run (removed when dropped).
    pub throwaway: Option<Throwaway>,
}

/// Check the `--tls-*` flags against the endpoint and load (or make) the
/// certificates. `None` for a plaintext listener.
pub fn tls_setup(args: &Args, requested: &Endpoint) -> anyhow::Result<Option<TlsSetup>> {
    let flags: Vec<&str> = [
        ("--tls-cert", args.tls_cert.is_some()),
        ("--tls-key", args.tls_key.is_some()),
        ("--tls-client-ca", args.tls_client_ca.is_some()),
        ("--tls-mutual", args.tls_mutual),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
    .collect();
    let Endpoint::Tls { host, .. } = requested else {
        if !flags.is_empty() {
            bail!(
                "{} {} a tls:// listener, but --listen is {requested}",
                flags.join(", "),
                if flags.len() == 1 { "needs" } else { "need" }
            );
        }
        return Ok(None);
    };
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            if args.tls_mutual {
                bail!(
                    "--tls-mutual is for throwaway certificates; with --tls-cert, \
                     require client certificates with --tls-client-ca PATH"
                );
            }
            let config = ringworker::transport::tls::server_config(
                cert,
                key,
                args.tls_client_ca.as_deref(),
            )?;
            Ok(Some(TlsSetup {
                config,
                mutual: args.tls_client_ca.is_some(),
                throwaway: None,
            }))
        }
        (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert (the manager's certificate)"),
        (None, None) => {
            if args.tls_client_ca.is_some() {
                bail!(
                    "--tls-client-ca needs --tls-cert and --tls-key (with throwaway \
                     certificates, use --tls-mutual)"
                );
            }
            if args.spawn.is_none() {
                bail!(
                    "{requested} needs the manager's certificate: --tls-cert PATH --tls-key PATH \
                     (or --spawn, which makes throwaway certificates for the run)"
                );
            }
            // The agent dials the address the listener is bound to: the
            // certificate names the host as given and what it resolves to.
            let mut names = vec![host.clone()];
            if let Ok(addrs) = requested.socket_addrs() {
                names.extend(addrs.iter().map(|a| a.ip().to_string()));
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let pki = Throwaway::generate(&names, args.tls_mutual)
                .context("cannot make throwaway TLS certificates")?;
            let config = ringworker::transport::tls::server_config(
                &pki.server_cert,
                &pki.server_key,
                args.tls_mutual.then_some(pki.ca.as_path()),
            )?;
            Ok(Some(TlsSetup {
                config,
                mutual: args.tls_mutual,
                throwaway: Some(pki),
            }))
        }
    }
}
