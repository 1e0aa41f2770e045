//! Throwaway certificates for `--listen tls://` with `--spawn` and no
//! `--tls-cert`: a CA made for this run, a manager certificate it signs (for
//! 127.0.0.1, ::1, localhost and the listen host), and with `--tls-mutual` a
//! client certificate for the spawned agent. The PEM files live in a private
//! directory (mode 0700, keys 0600) that is removed when the [`Throwaway`] is
//! dropped.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files of a throwaway PKI; the directory goes with the value.
#[derive(Debug)]
pub struct Throwaway {
    pub dir: PathBuf,
    /// The CA certificate (what the agent's `--tls-ca` trusts).
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The client certificate and key (mutual TLS only).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Names every throwaway manager certificate carries.
const DEFAULT_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

impl Throwaway {
    /// Make a CA, a server certificate for the default names plus `hosts`,
    /// and a client certificate when `client` is set, in a fresh private
    /// directory under the system's temporary directory.
    pub fn generate(hosts: &[&str], client: bool) -> anyhow::Result<Throwaway> {
        let dir = private_dir()?;
        // From here on the directory is removed on any error (drop).
        let mut pki = Throwaway {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("manager.pem"),
            server_key: dir.join("manager.key"),
            client: None,
            dir,
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ringworker-loadgen throwaway CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        write_file(&pki.ca, &ca_cert.pem())?;

        let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|n| (*n).to_owned()).collect();
        for host in hosts {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if !host.is_empty() && !names.iter().any(|n| n == host) {
                names.push(host.to_owned());
            }
        }
        let server = CertificateParams::new(names)
            .context("the listen host cannot be a certificate name")?;
        let ca = (&ca_cert, &ca_key);
        let (cert, key) = (&pki.server_cert, &pki.server_key);
        issue(
            server,
            "ringworker-loadgen",
            ExtendedKeyUsagePurpose::ServerAuth,
            ca,
            cert,
            key,
        )?;

        if client {
            let params = CertificateParams::new(Vec::<String>::new())?;
            let paths = (pki.dir.join("agent.pem"), pki.dir.join("agent.key"));
            let purpose = ExtendedKeyUsagePurpose::ClientAuth;
            issue(
                params,
                "ringworker-loadgen-spawned",
                purpose,
                ca,
                &paths.0,
                &paths.1,
            )?;
            pki.client = Some(paths);
        }
        Ok(pki)
    }
}

/// Sign a certificate with `params`, named `common_name`, for `purpose`,
/// by the CA, and write it to `cert_path` and its new key to `key_path`.
fn issue(
    mut params: CertificateParams,
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
    (ca_cert, ca_key): (&Certificate, &KeyPair),
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<()> {
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca_cert, ca_key)?;
    write_file(cert_path, &cert.pem())?;
    write_file(key_path, &key.serialize_pem())
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new directory only this user can enter.
fn private_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last_error = None;
    for attempt in 0..16u32 {
        let dir = base.join(format!(
            "ringworker-loadgen-tls-{}-{:08x}",
            std::process::id(),
            nanos.wrapping_add(attempt.wrapping_mul(0x9E37_79B9))
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(err),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot create {}", dir.display()))
            }
        }
    }
    Err(anyhow::anyhow!(
        "cannot create a private directory in {}: {}",
        base.display(),
        last_error.map_or_else(|| "name taken".to_owned(), |e| e.to_string())
    ))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throwaway_certificates_load_and_are_removed() {
        let pki = Throwaway::generate(&["0.0.0.0", "[::1]", "build-host"], true).unwrap();
        let dir = pki.dir.clone();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            let mode = std::fs::metadata(&pki.server_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The manager side loads them, with and without client certificates.
        ringworker::transport::tls::server_config(&pki.server_cert, &pki.server_key, None).unwrap();
        ringworker::transport::tls::server_config(&pki.server_cert, &pki.server_key, Some(&pki.ca))
            .unwrap();
        // An agent with the client certificate completes a handshake for
        // every name the certificate carries, and for no other.
        let (cert, key) = pki.client.clone().unwrap();
        let options = ringworker::transport::tls::TlsOptions {
            ca: Some(pki.ca.clone()),
            cert: Some(cert),
            key: Some(key),
            server_name: None,
        };
        let mutual = ringworker::transport::tls::server_config(
            &pki.server_cert,
            &pki.server_key,
            Some(&pki.ca),
        )
        .unwrap();
        for host in ["127.0.0.1", "localhost", "::1", "build-host", "0.0.0.0"] {
            assert_eq!(handshake(host, &options, mutual.clone()), Ok(()), "{host}");
        }
        let refused = handshake("elsewhere", &options, mutual);
        assert!(refused.is_err(), "{refused:?}");
        drop(pki);
        assert!(!dir.exists(), "the directory goes with the value");
    }

    /// An in-memory TLS handshake between an agent dialling `host` and a
    /// manager with `config`; both must finish it.
    fn handshake(
        host: &str,
        options: &ringworker::transport::tls::TlsOptions,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> Result<(), String> {
        let endpoint = ringworker::transport::Endpoint::Tls {
            host: host.to_owned(),
            port: 1,
        };
        let mut client = ringworker::transport::tls::ClientTls::new(&endpoint, options)
            .map_err(|e| e.to_string())?
            .connect()?;
        let mut server = ringworker::transport::tls::ServerTls::new(config)?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).map_err(|e| e.to_string())?;
            }
            server
                .feed(&wire, &mut |_, _| {})
                .map_err(|e| ringworker::transport::tls::describe_server(&e))?;
            let mut back = Vec::new();
            server.write_records(&mut back);
            let mut slice = &back[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice).map_err(|e| e.to_string())?;
                client
                    .process_new_packets()
                    .map_err(|e| ringworker::transport::tls::describe(&e))?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".to_owned())
    }
}
