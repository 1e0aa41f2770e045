//! The [`tls`] target: a TLS [`Link`] against an in-memory rustls server
//! with a [`ManagerMachine`] behind it, the record stream split, damaged and
//! cut in both directions. It owns [`TlsPeers`] (the two configurations,
//! from a certificate the caller makes) and the record damage; it must
//! never build a key or certificate itself or open a socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{chunk_plan, Input};
use crate::connection::Link;
use crate::handlers::HandlerRegistry;
use crate::manager::{ManagerConfig, ManagerEvent, ManagerMachine};
use crate::session::{SessionConfig, WorkerSession};
use crate::stats::SessionStats;

/// The two ends of the [`tls`] target: a client configuration that trusts
/// one self-signed certificate for `localhost`, and a manager configuration
/// that serves it (TLS 1.3, no tickets, as [`crate::transport::tls`] sets
/// them). The certificate is made by the caller (the fuzz crate and the
/// tests use rcgen), so no key is built into the library.
#[derive(Clone)]
pub struct TlsPeers {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPeers").finish_non_exhaustive()
    }
}

impl TlsPeers {
    /// Peers for a DER certificate for `localhost` and its PKCS#8 key.
    pub fn new(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<TlsPeers, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let cert = CertificateDer::from(cert_der);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .map_err(|e| e.to_string())?;
        server.send_tls13_tickets = 0;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).map_err(|e| e.to_string())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsPeers {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// Damage done to a piece of a record stream.
fn damage(input: &mut Input<'_>, chunk: &mut Vec<u8>) -> bool {
    let at = usize::from(input.u16()) % chunk.len().max(1);
    match input.byte() % 12 {
        0 if !chunk.is_empty() => chunk[at] ^= 1 << (input.byte() % 8),
        1 => chunk.insert(at.min(chunk.len()), input.byte()),
        2 if !chunk.is_empty() => {
            let end = (at + 1 + usize::from(input.byte())).min(chunk.len());
            chunk.drain(at..end);
        }
        3 => {
            let copy = chunk.clone();
            chunk.extend_from_slice(&copy);
        }
        4 => chunk.truncate(at),
        _ => return false,
    }
    true
}

/// A TLS [`Link`] against an in-memory rustls server and a
/// [`ManagerMachine`] behind it: the input interleaves the two sides'
/// writes, manager tasks, clock steps and EOF, and splits, corrupts, cuts or
/// injects the record stream in either direction. Corrupted records never
/// reach the session as plaintext (every echo RESULT the manager reads is
/// the payload it sent), a failed link reads nothing more and writes at
/// most its alert, and after EOF and the timeouts the link has failed
/// ([`Link::failure`]) or its session has closed: nothing hangs.
pub fn tls(peers: &TlsPeers, data: &[u8]) {
    use crate::transport::tls::ServerTls;

    let mut input = Input::new(data);
    let mut now = Instant::now();
    let handlers = HandlerRegistry::with_builtins();
    let stats = Arc::new(SessionStats::with_handlers(0, handlers.names().len()));
    let config = SessionConfig {
        worker_id: "fuzz".into(),
        runtime: "fuzz",
        max_body: 65536,
        max_in_flight: 4,
        token: None,
        handshake_timeout: Duration::from_secs(10),
    };
    let session = WorkerSession::new(0, &config, handlers, stats, now);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    let mut conn =
        rustls::ClientConnection::new(peers.client.clone(), name).expect("a client connection");
    conn.set_buffer_limit(None);
    let mut link = Link::tls(session, conn);
    let mut server = ServerTls::new(peers.server.clone()).expect("a server connection");
    let mut manager = ManagerMachine::new(ManagerConfig {
        max_body: 65536,
        heartbeat_ms: u32::from(input.byte() % 2) * 100,
        ..ManagerConfig::default()
    });
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_worker: Vec<u8> = Vec::new();
    let mut expected: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut next_id = 1u64;
    let mut server_failed = false;
    let mut eof = false;
    let mut failed_and_flushed = false;

    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        ops += 1;
        match input.byte() % 10 {
            // The worker writes; the manager reads (maybe damaged records).
            0 | 1 => {
                let out = take_checked(&mut link, &mut failed_and_flushed);
                to_server.extend_from_slice(&out);
                link.on_flushed(now);
                if input.byte() % 4 == 0 {
                    damage(&mut input, &mut to_server);
                }
                if !server_failed {
                    let fed = server.feed(&to_server, &mut |plain, _| manager.handle_input(plain));
                    server_failed = fed.is_err();
                }
                to_server.clear();
                while let Some(event) = manager.poll_event() {
                    if let ManagerEvent::Result {
                        id,
                        failed: false,
                        body,
                    } = event
                    {
                        let sent = expected.get(&id).expect("a RESULT for a task sent");
                        assert_eq!(&body, sent, "echo of task {id}");
                    }
                }
                server.write_plain(&manager.take_output(Vec::new()));
                server.write_records(&mut to_worker);
            }
            // The manager sends tasks.
            2 | 3 => {
                for _ in 0..1 + input.byte() % 4 {
                    let len = usize::from(input.u16() % 2000);
                    let fill = input.byte();
                    let payload: Vec<u8> = (0..len).map(|i| fill ^ i as u8).collect();
                    if manager
                        .send_task(next_id, "echo", &payload, fill & 1 == 1)
                        .is_ok()
                    {
                        expected.insert(next_id, payload);
                        next_id += 1;
                    }
                }
                server.write_plain(&manager.take_output(Vec::new()));
                server.write_records(&mut to_worker);
            }
            // The worker reads what the manager sent, in pieces, some damaged.
            4..=6 => {
                let seed = input.byte();
                let mut at = 0;
                let mut n = 0u8;
                while at < to_worker.len() && !eof {
                    let (size, _) = chunk_plan(seed.wrapping_add(n), to_worker.len() - at);
                    n = n.wrapping_add(29);
                    let mut chunk = to_worker[at..at + size].to_vec();
                    at += size;
                    if input.byte() % 8 == 0 {
                        damage(&mut input, &mut chunk);
                    }
                    link.on_input(&chunk, now);
                }
                to_worker.clear();
            }
            7 => {
                now += Duration::from_millis(u64::from(input.byte()) * 4);
                link.session_mut().handle_timeout(now);
            }
            // Bytes from nowhere, or the manager closes.
            8 => {
                let n = usize::from(input.byte() % 64);
                let junk = input.bytes(n).to_vec();
                if !eof {
                    link.on_input(&junk, now);
                }
            }
            _ => {
                if input.byte() % 2 == 0 {
                    server.close();
                    server.write_records(&mut to_worker);
                } else if !eof {
                    link.on_input(&to_worker, now);
                    to_worker.clear();
                    eof = true;
                    link.on_eof(now);
                }
            }
        }
        assert!(link.session().in_flight() <= 4);
        if link.failure().is_some() {
            assert!(!link.wants_read(), "a failed link still wants to read");
        }
    }

    // The end: what is left arrives, then EOF, then time passes.
    if !eof {
        link.on_input(&to_worker, now);
        link.on_eof(now);
    }
    for _ in 0..4 {
        now += Duration::from_secs(11);
        link.session_mut().handle_timeout(now);
        let _ = take_checked(&mut link, &mut failed_and_flushed);
        link.on_flushed(now);
    }
    assert!(
        link.failure().is_some() || link.session().closed().is_some(),
        "after EOF and the timeouts the link neither failed nor closed (handshaking {})",
        link.session().welcomed_at().is_none()
    );
}

/// The link's output, checked: nothing may be written after the output that
/// followed its failure (its alert) was taken.
fn take_checked(link: &mut Link, failed_and_flushed: &mut bool) -> Vec<u8> {
    let out = link.take_output(Vec::new());
    if *failed_and_flushed {
        assert!(
            out.is_empty(),
            "{} bytes written after the link failed",
            out.len()
        );
    }
    if link.failure().is_some() {
        *failed_and_flushed = true;
    }
    out
}
