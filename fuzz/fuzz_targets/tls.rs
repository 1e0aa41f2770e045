//! A `Connection` over TLS against an in-memory rustls server, its record
//! stream split, corrupted and cut in both directions.
#![no_main]

use std::sync::OnceLock;

use ringworker::fuzzing::TlsPeers;

fn peers() -> &'static TlsPeers {
    static PEERS: OnceLock<TlsPeers> = OnceLock::new();
    PEERS.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .and_then(|params| params.self_signed(&key))
            .expect("a self-signed certificate");
        TlsPeers::new(cert.der().to_vec(), key.serialize_der()).expect("TLS configurations")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringworker::fuzzing::tls(peers(), data));
