//! The [`tls`] target: a [`Connection`] over TLS against an in-memory
//! rustls server with a [`ManagerMachine`] behind it, the record stream
//! split, damaged and cut in both directions, driven as the runtimes drive
//! it. It owns [`TlsPeers`] (the two configurations, from a certificate the
//! caller makes), the manager end (one per connection: the connection
//! redials after it closes) and the record damage; a [`Driver`] plays the
//! runtime. It must never build a key or certificate itself, open a socket
//! or read a file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::driver::{self, Driver, Lifecycle};
use super::{chunk_plan, Input};
#[cfg(doc)]
use crate::connection::{Connection, Link};
use crate::handlers::HandlerRegistry;
use crate::manager::{ManagerConfig, ManagerEvent, ManagerMachine};
use crate::session::SessionConfig;
use crate::transport::tls::{ClientTls, ServerTls};

/// The two ends of the [`tls`] target: a client configuration that trusts
/// one self-signed certificate for `localhost`, and a manager configuration
/// that serves it (TLS 1.3, no tickets, as [`crate::transport::tls`] sets
/// them). The certificate is made by the caller (the fuzz crate and the
/// tests use rcgen), so no key is built into the library.
#[derive(Clone)]
pub struct TlsPeers {
    client: ClientTls,
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
        let name = rustls::pki_types::ServerName::try_from("localhost")
            .map_err(|e| e.to_string())?
            .to_owned();
        Ok(TlsPeers {
            client: ClientTls::from_config(Arc::new(client), name),
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

/// The manager end of one connection: rustls's server side, the manager's
/// state machine behind it, and the records on their way to the worker.
struct ManagerEnd {
    server: ServerTls,
    manager: ManagerMachine,
    /// Records the worker has not read yet.
    to_worker: Vec<u8>,
    /// The payload of every echo task sent, by id.
    expected: HashMap<u64, Vec<u8>>,
    next_id: u64,
    /// rustls refused what the worker wrote: the manager reads no more.
    failed: bool,
    /// The manager closed its side: what is in `to_worker` is the last.
    eof_sent: bool,
    /// The connection is closed: the worker reads nothing more from it.
    closed: bool,
    /// The connection this end belongs to.
    generation: u32,
}

impl ManagerEnd {
    fn new(peers: &TlsPeers, heartbeat_ms: u32, generation: u32) -> Self {
        ManagerEnd {
            server: ServerTls::new(peers.server.clone()).expect("a server connection"),
            manager: ManagerMachine::new(ManagerConfig {
                max_body: 65536,
                heartbeat_ms,
                ..ManagerConfig::default()
            }),
            to_worker: Vec::new(),
            expected: HashMap::new(),
            next_id: 1,
            failed: false,
            eof_sent: false,
            closed: false,
            generation,
        }
    }

    /// The manager reads what the worker wrote (maybe damaged): corrupted
    /// records never reach it as plaintext, so every echo RESULT it reads
    /// is the payload it sent.
    fn read(&mut self, records: &[u8]) {
        if self.failed {
            return;
        }
        let manager = &mut self.manager;
        let fed = self
            .server
            .feed(records, &mut |plain, _| manager.handle_input(plain));
        self.failed = fed.is_err();
        while let Some(event) = self.manager.poll_event() {
            if let ManagerEvent::Result {
                id,
                failed: false,
                body,
            } = event
            {
                let sent = self.expected.get(&id).expect("a RESULT for a task sent");
                assert_eq!(&body, sent, "echo of task {id}");
            }
        }
        self.write();
    }

    /// The manager's output, sealed into records for the worker.
    fn write(&mut self) {
        self.server
            .write_plain(&self.manager.take_output(Vec::new()));
        self.server.write_records(&mut self.to_worker);
    }
}

/// The worker's side (a [`Driver`] around the connection) and the manager
/// end of its current connection.
struct Rig<'p> {
    peers: &'p TlsPeers,
    heartbeat_ms: u32,
    driver: Driver,
    end: Option<ManagerEnd>,
    /// Connections whose socket closed.
    closed: Vec<u32>,
}

impl Rig<'_> {
    /// The manager side follows what happened to the connection: a new
    /// manager end for each connection.
    fn settle(&mut self) {
        for event in self.driver.take_events() {
            match event {
                Lifecycle::Connected { generation } => {
                    self.end = Some(ManagerEnd::new(self.peers, self.heartbeat_ms, generation));
                }
                Lifecycle::Closed { generation, .. } => {
                    self.closed.push(generation);
                    if let Some(end) = self.end.as_mut() {
                        end.closed = true;
                    }
                }
            }
        }
        if let Some(session) = self.driver.session() {
            assert!(session.in_flight() <= 4, "more than max_in_flight held");
        }
    }

    /// The worker's outstanding write reaches the manager, damaged when
    /// the input says so.
    fn worker_writes(&mut self, input: Option<&mut Input<'_>>) {
        let Some(mut records) = self.driver.take_send() else {
            return;
        };
        if let Some(input) = input {
            if input.byte() % 4 == 0 {
                damage(input, &mut records);
            }
        }
        if let Some(end) = self.end.as_mut() {
            end.read(&records);
        }
        self.driver.pump();
        self.settle();
    }

    /// The worker reads `bytes` (from the current connection) and is polled.
    fn worker_reads(&mut self, bytes: &[u8]) {
        if self.driver.receive(bytes, &mut |left, _| left) {
            self.driver.pump();
            self.settle();
        }
    }

    /// The connection open now, if any.
    fn open(&self) -> Option<u32> {
        self.end
            .as_ref()
            .filter(|end| !end.closed)
            .map(|end| end.generation)
    }

    /// Whether the worker can read from the current connection.
    fn can_read(&self) -> bool {
        self.open().is_some() && self.driver.can_read()
    }

    /// After the manager closed its side: the worker reads the rest, then
    /// the end of stream, once it reads at all.
    fn deliver_eof(&mut self) {
        let pending = self.end.as_ref().is_some_and(|end| end.eof_sent);
        let reading = self.open();
        if !pending || !self.can_read() {
            return;
        }
        let rest = self
            .end
            .as_mut()
            .map(|end| std::mem::take(&mut end.to_worker))
            .unwrap_or_default();
        self.worker_reads(&rest);
        if self.open() == reading && self.can_read() && self.driver.receive_eof() {
            self.driver.pump();
            self.settle();
        }
    }
}

/// A TLS [`Connection`] against an in-memory rustls server and a
/// [`ManagerMachine`] behind it: the input interleaves the two sides'
/// writes, manager tasks, clock steps and EOF, and splits, corrupts, cuts or
/// injects the record stream in either direction. Corrupted records never
/// reach the session as plaintext (every echo RESULT the manager reads is
/// the payload it sent); a failed link reads nothing more and writes at
/// most its alert before the connection closes ([`Connection::failure`]);
/// after EOF and the timeouts the connection has closed (nothing hangs);
/// and a stop ends it by the drain's deadline.
pub fn tls(peers: &TlsPeers, data: &[u8]) {
    let mut input = Input::new(data);
    let heartbeat_ms = u32::from(input.byte() % 2) * 100;
    let config = SessionConfig {
        worker_id: "fuzz".into(),
        runtime: "fuzz",
        max_body: 65536,
        max_in_flight: 4,
        token: None,
        handshake_timeout: Duration::from_secs(10),
    };
    let plan = driver::plan(
        config,
        HandlerRegistry::with_builtins(),
        Some(peers.client.clone()),
    );
    let mut rig = Rig {
        peers,
        heartbeat_ms,
        driver: Driver::new(plan, false, Instant::now()),
        end: None,
        closed: Vec::new(),
    };
    rig.driver.pump();
    rig.settle();
    assert!(rig.end.is_some(), "the connection dials at once");

    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        ops += 1;
        match input.byte() % 10 {
            // The worker writes; the manager reads (maybe damaged records).
            0 | 1 => rig.worker_writes(Some(&mut input)),
            // The manager sends tasks.
            2 | 3 => {
                for _ in 0..1 + input.byte() % 4 {
                    let len = usize::from(input.u16() % 2000);
                    let fill = input.byte();
                    let payload: Vec<u8> = (0..len).map(|i| fill ^ i as u8).collect();
                    if let Some(end) = rig.end.as_mut() {
                        let id = end.next_id;
                        if end
                            .manager
                            .send_task(id, "echo", &payload, fill & 1 == 1)
                            .is_ok()
                        {
                            end.expected.insert(id, payload);
                            end.next_id += 1;
                        }
                    }
                }
                if let Some(end) = rig.end.as_mut() {
                    end.write();
                }
            }
            // The worker reads what the manager sent, in pieces, some damaged.
            4..=6 => {
                let seed = input.byte();
                let reading = rig.open();
                let pending = rig
                    .end
                    .as_mut()
                    .filter(|end| !end.eof_sent)
                    .map(|end| std::mem::take(&mut end.to_worker))
                    .unwrap_or_default();
                let mut at = 0;
                let mut n = 0u8;
                while at < pending.len() && rig.open() == reading && rig.can_read() {
                    let (size, _) = chunk_plan(seed.wrapping_add(n), pending.len() - at);
                    n = n.wrapping_add(29);
                    let mut chunk = pending[at..at + size].to_vec();
                    at += size;
                    if input.byte() % 8 == 0 {
                        damage(&mut input, &mut chunk);
                    }
                    rig.worker_reads(&chunk);
                }
                // What was not read stays in the socket, if it is still open.
                if let Some(end) = rig
                    .end
                    .as_mut()
                    .filter(|end| !end.closed && Some(end.generation) == reading)
                {
                    let mut rest = pending[at..].to_vec();
                    rest.append(&mut end.to_worker);
                    end.to_worker = rest;
                }
            }
            7 => {
                let at = rig.driver.now + Duration::from_millis(u64::from(input.byte()) * 4);
                rig.driver.advance_to(at);
                rig.settle();
            }
            // Bytes from nowhere, or the manager closes.
            8 => {
                let n = usize::from(input.byte() % 64);
                let junk = input.bytes(n).to_vec();
                if rig.can_read() && !rig.end.as_ref().is_some_and(|end| end.eof_sent) {
                    rig.worker_reads(&junk);
                }
            }
            _ => {
                if let Some(end) = rig.end.as_mut() {
                    if input.byte() % 2 == 0 {
                        end.server.close();
                        end.server.write_records(&mut end.to_worker);
                    } else {
                        end.eof_sent = true;
                    }
                }
            }
        }
        rig.deliver_eof();
    }

    // The end: the manager closes its side (the worker reads what is left,
    // then EOF), then time passes, the manager reading what it is sent: the
    // connection open now must close.
    let last = rig.open();
    if let Some(end) = rig.end.as_mut() {
        end.eof_sent = true;
    }
    for _ in 0..4 {
        rig.deliver_eof();
        for _ in 0..8 {
            rig.worker_writes(None);
        }
        let at = rig.driver.now + Duration::from_secs(11);
        rig.driver.advance_to(at);
        rig.settle();
    }
    if let Some(generation) = last {
        assert!(
            rig.closed.contains(&generation),
            "after EOF and the timeouts connection {generation} is still open"
        );
    }

    // A stop ends the connection (a redialled one too) by the drain's deadline.
    rig.driver.request_stop();
    rig.settle();
    for _ in 0..Driver::STOP_STEPS {
        let mut sink = Vec::new();
        rig.driver.deliver_all(&mut sink);
        if let Some(end) = rig.end.as_mut() {
            end.read(&sink);
        }
        rig.settle();
        if rig.driver.stop_step() {
            break;
        }
        rig.settle();
    }
    assert!(rig.driver.is_stopped(), "the connection did not stop");
}
