//! TLS 1.3 and mutual TLS to the manager, on both runtimes, with
//! certificates made inside the test (rcgen): tasks and exact byte accounting
//! over TLS, and each way a handshake can be refused, reported in one line.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use ringworker::manager::{ManagerConfig, ManagerConn, ManagerError, ManagerEvent};
use ringworker::runtime::{AgentPlan, RuntimeKind, RuntimeMode};
use ringworker::transport::tls::{server_config, ClientTls, TlsOptions};
use ringworker::transport::{BlockingListener, Endpoint};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A private directory of PEM files, removed on drop.
struct Pki {
    dir: PathBuf,
}

struct Authority {
    cert: Certificate,
    key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringworker-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .unwrap();
        path
    }

    /// A CA; its certificate is written to `NAME.pem`.
    fn authority(&self, name: &str) -> (Authority, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = self.write(&format!("{name}.pem"), &cert.pem());
        (Authority { cert, key }, path)
    }

    /// A leaf certificate for `names`, signed by `ca`, valid from
    /// `not_before` to `not_after` (relative to now); returns (cert, key).
    fn leaf(
        &self,
        file: &str,
        ca: &Authority,
        names: &[&str],
        valid: (time::Duration, time::Duration),
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + valid.0;
        params.not_after = now + valid.1;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (
            self.write(&format!("{file}.pem"), &cert.pem()),
            self.write(&format!("{file}.key"), &key.serialize_pem()),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const VALID: (time::Duration, time::Duration) =
    (time::Duration::hours(-1), time::Duration::days(1));
const EXPIRED: (time::Duration, time::Duration) =
    (time::Duration::days(-10), time::Duration::days(-1));

/// The usual test setup: a CA, a manager certificate for 127.0.0.1 and
/// `localhost`, and a client certificate.
struct Setup {
    pki: Pki,
    ca: Authority,
    ca_path: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn setup() -> Setup {
    let pki = Pki::new();
    let (ca, ca_path) = pki.authority("fleet");
    let server = pki.leaf("manager", &ca, &["127.0.0.1", "localhost"], VALID);
    let client = pki.leaf("worker", &ca, &["worker-1.fleet.example"], VALID);
    Setup {
        pki,
        ca,
        ca_path,
        server,
        client,
    }
}

fn tls_listener() -> (BlockingListener, Endpoint) {
    let listener = tcp_listener();
    let port = match listener.local_endpoint().unwrap() {
        Endpoint::Tcp { port, .. } => port,
        other => panic!("unexpected {other}"),
    };
    let endpoint = Endpoint::Tls {
        host: "127.0.0.1".into(),
        port,
    };
    (listener, endpoint)
}

fn tls_plan(endpoint: Endpoint, options: &TlsOptions) -> AgentPlan {
    let mut plan = plan(endpoint.clone(), 1, 64);
    plan.tls = Some(ClientTls::new(&endpoint, options).expect("TLS options load"));
    plan
}

fn manager_tls(s: &Setup, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    server_config(&s.server.0, &s.server.1, client_ca).expect("manager TLS config")
}

/// Tasks with exact results, then a drain with exact byte accounting over
/// TLS (PROTOCOL.md "Byte accounting").
fn run_tasks_and_drain(conn: &mut ManagerConn, agent: &mut Box<dyn RuntimeMode>) {
    let mut expect = HashSet::new();
    for id in 1..=200u64 {
        let payload = vec![(id % 251) as u8; (id as usize * 97) % 5000];
        conn.queue_task(id, "echo", &payload, id % 3 == 0).unwrap();
        expect.insert(id);
    }
    conn.flush().unwrap();
    // A large frame crosses many TLS records.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    conn.send_task(1000, "crc32c", &big, false).unwrap();
    expect.insert(1000);
    let deadline = Instant::now() + TIMEOUT;
    while !expect.is_empty() && Instant::now() < deadline {
        match conn.next_event(TIMEOUT).expect("results arrive") {
            ManagerEvent::Result {
                id, failed, body, ..
            } => {
                assert!(!failed, "task {id} failed: {body:?}");
                if id == 1000 {
                    assert_eq!(body, crc32c::crc32c(&big).to_be_bytes());
                } else {
                    assert_eq!(body.len(), (id as usize * 97) % 5000, "echo of task {id}");
                    assert!(body.iter().all(|&b| b == (id % 251) as u8));
                }
                assert!(expect.remove(&id), "RESULT {id} twice");
            }
            ManagerEvent::Ack { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(expect.is_empty(), "missing results: {expect:?}");

    agent.request_stop();
    let (counts, goodbye_len) = loop {
        match conn.next_event(TIMEOUT).expect("drain completes") {
            ManagerEvent::Goodbye { counts, frame_len } => {
                break (counts.expect("GOODBYE has counts"), frame_len)
            }
            ManagerEvent::Drain | ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        counts.bytes_received,
        conn.bytes_sent(),
        "worker received == manager sent (socket bytes)"
    );
    assert_eq!(
        counts.bytes_sent,
        conn.expected_goodbye_bytes_sent(goodbye_len),
        "worker sent == manager received before GOODBYE's record"
    );
    let before_goodbye = conn.bytes_received();
    let rest = conn.read_to_end(TIMEOUT).expect("worker closes");
    assert!(rest.is_empty(), "nothing after GOODBYE: {rest:?}");
    // GOODBYE's record and close_notify (at least 16 + 22 bytes each way of
    // framing) followed; nothing else.
    let excess = conn.bytes_received() - counts.bytes_sent;
    assert!(
        excess >= goodbye_len as u64 + 2 * 22 && excess < 512,
        "TLS bytes after the worker's count: {excess} (received {before_goodbye} at GOODBYE)"
    );
    let _ = conn.close_tls();
    let report = agent.wait();
    assert!(report.is_clean(), "{report:?}");
    // The agent's own totals are socket bytes too, to the byte.
    let stats = agent.stats();
    assert_eq!(stats.bytes_sent_total(), conn.bytes_received());
    assert!(stats.bytes_received_total() <= conn.bytes_sent());
    assert!(stats.bytes_received_total() >= counts.bytes_received);
}

fn tasks_over_tls(kind: RuntimeKind) {
    let s = setup();
    let (listener, endpoint) = tls_listener();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        ..TlsOptions::default()
    };
    let mut agent = start(kind, tls_plan(endpoint, &options));
    let (mut conn, hello) = ManagerConn::accept_tls(
        &listener,
        ManagerConfig::default(),
        manager_tls(&s, None),
        TIMEOUT,
    )
    .expect("TLS handshake and HELLO");
    assert_eq!(hello.session, 0);
    assert!(conn.peer_certificates().is_none(), "no client certificate");
    run_tasks_and_drain(&mut conn, &mut agent);
}

/// TLS sessions handed between the uring runtime's event loops every few
/// milliseconds keep their streams: the records, the session state and the
/// byte accounting travel with them.
#[test]
fn tls_sessions_moving_between_event_loops_keep_their_streams() {
    let s = setup();
    let (listener, endpoint) = tls_listener();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        ..TlsOptions::default()
    };
    let mut moving = tls_plan(endpoint, &options);
    moving.sessions = 2;
    moving.threads = 2;
    moving.loop_balance = ringworker::runtime::LoopBalance::Churn;
    let mut agent = start(RuntimeKind::Uring, moving);
    let mut conns: Vec<ManagerConn> = (0..2)
        .map(|_| {
            let tls = manager_tls(&s, None);
            ManagerConn::accept_tls(&listener, ManagerConfig::default(), tls, TIMEOUT)
                .expect("TLS handshake and HELLO")
                .0
        })
        .collect();
    // Tasks keep the loops turning; each turn may move a session.
    let mut id = 0;
    assert!(wait_until(Duration::from_secs(10), || {
        for conn in &mut conns {
            for _ in 0..20 {
                let payload = vec![(id % 251) as u8; (id as usize * 97) % 5000];
                conn.send_task(id, "echo", &payload, false).unwrap();
                match conn.next_event(TIMEOUT).unwrap() {
                    ManagerEvent::Result { id: got, body, .. } => {
                        assert_eq!((got, body), (id, payload));
                    }
                    other => panic!("unexpected {other:?}"),
                }
                id += 1;
            }
        }
        agent.stats().sessions_moved_total() >= 20
    }));
    agent.request_stop();
    for conn in &mut conns {
        manager::expect_exact_goodbye(conn);
        let _ = conn.close_tls();
    }
    let report = agent.wait();
    assert!(report.is_clean(), "{report:?}");
    let sent: u64 = conns.iter().map(ManagerConn::bytes_received).sum();
    assert_eq!(agent.stats().bytes_sent_total(), sent);
}

/// The manager stops reading while a 12 MiB RESULT is on its way (the
/// worker's send is stuck on full socket buffers), then sends a corrupt
/// record: the worker cannot even write its alert. A stop must still end the
/// agent, after at most the linger for a last write.
fn a_broken_record_while_a_send_is_stuck_does_not_hang_a_stop(kind: RuntimeKind) {
    let s = setup();
    let (listener, endpoint) = tls_listener();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        ..TlsOptions::default()
    };
    let mut plan = tls_plan(endpoint, &options);
    plan.drain_timeout = Duration::from_secs(1);
    let mut agent = start(kind, plan);
    let (mut conn, _) = ManagerConn::accept_tls(
        &listener,
        ManagerConfig::default(),
        manager_tls(&s, None),
        TIMEOUT,
    )
    .expect("TLS handshake and HELLO");
    conn.send_task(1, "echo", &vec![5u8; 12 << 20], false)
        .unwrap();
    // Time for the worker to fill the socket buffers with the RESULT.
    std::thread::sleep(Duration::from_millis(1500));
    // A corrupt application-data record: bad_record_mac at the worker.
    let mut garbage = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    garbage.extend_from_slice(&[0xAB; 0x40]);
    conn.send_raw_bytes(&garbage).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    agent.request_stop();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = agent.wait();
        let _ = tx.send(());
    });
    let stopped = rx.recv_timeout(Duration::from_secs(15));
    drop(conn);
    assert!(
        stopped.is_ok(),
        "{}: the agent did not stop within 15 s",
        kind.as_str()
    );
    waiter.join().unwrap();
}

fn tasks_over_mutual_tls(kind: RuntimeKind) {
    let s = setup();
    let (listener, endpoint) = tls_listener();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        cert: Some(s.client.0.clone()),
        key: Some(s.client.1.clone()),
        // The name on the manager's certificate, not the dialled address.
        server_name: Some("localhost".into()),
    };
    let mut agent = start(kind, tls_plan(endpoint, &options));
    let (mut conn, _) = ManagerConn::accept_tls(
        &listener,
        ManagerConfig::default(),
        manager_tls(&s, Some(&s.ca_path)),
        TIMEOUT,
    )
    .expect("mutual TLS handshake and HELLO");
    let chain = conn
        .peer_certificates()
        .expect("client certificate presented");
    let client_der = CertificateDer::from_pem_file(&s.client.0).unwrap();
    assert_eq!(chain[0], client_der);
    run_tasks_and_drain(&mut conn, &mut agent);
}

/// Dial with `options`, let the manager side (`server`) run its handshake
/// attempts, and return the agent's recorded error and the manager's.
fn refused(
    kind: RuntimeKind,
    options: &TlsOptions,
    server: Arc<rustls::ServerConfig>,
    endpoint_host: &str,
) -> (String, String) {
    let listener = tcp_listener();
    let port = match listener.local_endpoint().unwrap() {
        Endpoint::Tcp { port, .. } => port,
        other => panic!("unexpected {other}"),
    };
    let endpoint = Endpoint::Tls {
        host: endpoint_host.into(),
        port,
    };
    let metrics = ringworker::metrics::recorder();
    let mut agent = start(kind, tls_plan(endpoint, options));
    let mut manager_errors = Vec::new();
    // Two attempts: a refused handshake is a failed dial, redialled after
    // back-off, not the end of the agent.
    for _ in 0..2 {
        let stream = listener.accept().expect("the agent dials (again)");
        let mut conn = ManagerConn::new_tls(stream, ManagerConfig::default(), server.clone())
            .expect("server TLS");
        match conn.handshake(TIMEOUT) {
            Err(ManagerError::Tls(why)) => manager_errors.push(why),
            Err(ManagerError::Closed) => manager_errors.push("closed".into()),
            Err(other) => manager_errors.push(other.to_string()),
            Ok(hello) => panic!("handshake must fail, got {hello:?}"),
        }
    }
    let stats = agent.stats();
    // Counted for alerting (process-wide: other tests may add theirs). The
    // agent reads the manager's alert of the second attempt a moment after
    // the manager has sent it: wait for it.
    let failures = || -> f64 {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("ringworker_tls_handshake_failures_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || failures() >= 2.0),
        "handshake failures counted: {}",
        failures()
    );
    let last = stats.sessions[0].last_error().unwrap_or_default();
    assert!(!last.is_empty(), "the session records why");
    agent.request_stop();
    let report = agent.wait();
    assert_eq!(report.abandoned_tasks, 0);
    assert!(stats.reconnects_total() >= 1, "failed dials are retried");
    (last, manager_errors.join(" | "))
}

fn unknown_ca_is_refused(kind: RuntimeKind) {
    let s = setup();
    let other = Pki::new();
    let (_, other_ca) = other.authority("elsewhere");
    let options = TlsOptions {
        ca: Some(other_ca),
        ..TlsOptions::default()
    };
    let (agent, manager) = refused(kind, &options, manager_tls(&s, None), "127.0.0.1");
    assert!(
        agent.contains("TLS handshake failed")
            && agent.contains("not signed by a trusted CA (check --tls-ca)"),
        "{agent}"
    );
    // The agent's alert reaches the manager.
    assert!(
        manager.contains("the worker does not trust the manager's certificate"),
        "{manager}"
    );
}

fn wrong_server_name_is_refused(kind: RuntimeKind) {
    let s = setup();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        server_name: Some("manager.other.example".into()),
        ..TlsOptions::default()
    };
    let (agent, _) = refused(kind, &options, manager_tls(&s, None), "127.0.0.1");
    assert!(
        agent.contains("does not match the server name") && agent.contains("--tls-server-name"),
        "{agent}"
    );
}

fn expired_certificate_is_refused(kind: RuntimeKind) {
    let s = setup();
    let expired = s
        .pki
        .leaf("expired", &s.ca, &["127.0.0.1", "localhost"], EXPIRED);
    let server = server_config(&expired.0, &expired.1, None).unwrap();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        ..TlsOptions::default()
    };
    let (agent, _) = refused(kind, &options, server, "127.0.0.1");
    assert!(agent.contains("certificate has expired"), "{agent}");
}

fn missing_client_certificate_is_refused(kind: RuntimeKind) {
    let s = setup();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        ..TlsOptions::default()
    };
    let (agent, manager) = refused(
        kind,
        &options,
        manager_tls(&s, Some(&s.ca_path)),
        "127.0.0.1",
    );
    assert!(
        agent.contains("requires a client certificate (set --tls-cert and --tls-key)"),
        "{agent}"
    );
    assert!(
        manager.contains("presented no client certificate"),
        "{manager}"
    );
}

fn client_certificate_from_another_ca_is_refused(kind: RuntimeKind) {
    let s = setup();
    let other = Pki::new();
    let (other_ca, _) = other.authority("elsewhere");
    let stranger = other.leaf("stranger", &other_ca, &["stranger.example"], VALID);
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        cert: Some(stranger.0),
        key: Some(stranger.1),
        server_name: None,
    };
    let (agent, manager) = refused(
        kind,
        &options,
        manager_tls(&s, Some(&s.ca_path)),
        "127.0.0.1",
    );
    assert!(
        agent.contains("TLS handshake failed: the manager does not trust our client certificate"),
        "{agent}"
    );
    assert!(
        manager.contains("not signed by --tls-client-ca"),
        "{manager}"
    );
}

/// A "manager" that answers the ClientHello with garbage: one clear line,
/// no panic, and the agent redials.
fn garbage_instead_of_server_hello(kind: RuntimeKind) {
    let s = setup();
    let (listener, endpoint) = tls_listener();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        ..TlsOptions::default()
    };
    let mut agent = start(kind, tls_plan(endpoint, &options));
    for garbage in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        &[0x16, 0x03, 0x03, 0xff, 0xff, 1, 2, 3][..],
        &[0u8; 4096][..],
    ] {
        let stream = listener.accept().expect("the agent dials");
        let mut conn = ManagerConn::new(stream, ManagerConfig::default());
        conn.send_raw_bytes(garbage).unwrap();
        // The agent gives up on this connection by itself.
        let _ = conn.read_to_end(TIMEOUT);
    }
    let stats = agent.stats();
    let last = stats.sessions[0]
        .last_error()
        .expect("an error is recorded");
    assert!(last.starts_with("TLS handshake failed"), "{last}");
    agent.request_stop();
    assert_eq!(agent.wait().abandoned_tasks, 0);
}

/// A "worker" that sends garbage instead of a ClientHello: the manager side
/// reports it and nothing panics.
#[test]
fn garbage_instead_of_client_hello() {
    let s = setup();
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap();
    let config = manager_tls(&s, None);
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 9, 9, 9, 9, 9][..],
        &[0x17; 70_000][..],
    ] {
        let mut client =
            ringworker::transport::BlockingStream::connect(&endpoint, TIMEOUT, &Default::default())
                .unwrap();
        let mut conn = ManagerConn::new_tls(
            listener.accept().unwrap(),
            ManagerConfig::default(),
            config.clone(),
        )
        .unwrap();
        std::io::Write::write_all(&mut client, garbage).unwrap();
        match conn.handshake(TIMEOUT) {
            Err(ManagerError::Tls(why)) => {
                assert!(why.contains("does not speak TLS"), "{why}")
            }
            other => panic!("garbage must be refused: {other:?}"),
        }
    }
}

/// TLS settings are checked when the configuration loads, with the file
/// and flag named.
#[test]
fn tls_settings_errors_name_the_file() {
    let s = setup();
    let endpoint: Endpoint = "tls://127.0.0.1:4433".parse().unwrap();
    let missing = TlsOptions {
        ca: Some(s.pki.dir.join("nope.pem")),
        ..TlsOptions::default()
    };
    let err = ClientTls::new(&endpoint, &missing).unwrap_err().to_string();
    assert!(
        err.starts_with("--tls-ca ") && err.contains("nope.pem"),
        "{err}"
    );
    let not_pem = TlsOptions {
        ca: Some(s.pki.write("junk.pem", "hello")),
        ..TlsOptions::default()
    };
    let err = ClientTls::new(&endpoint, &not_pem).unwrap_err().to_string();
    assert!(err.contains("no PEM"), "{err}");
    let half = TlsOptions {
        ca: Some(s.ca_path.clone()),
        cert: Some(s.client.0.clone()),
        ..TlsOptions::default()
    };
    let err = ClientTls::new(&endpoint, &half).unwrap_err().to_string();
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let mismatched = TlsOptions {
        ca: Some(s.ca_path.clone()),
        cert: Some(s.client.0.clone()),
        key: Some(s.server.1.clone()),
        ..TlsOptions::default()
    };
    let err = ClientTls::new(&endpoint, &mismatched)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit --tls-cert"), "{err}");
    let bad_name = TlsOptions {
        ca: Some(s.ca_path.clone()),
        server_name: Some("not a name!".into()),
        ..TlsOptions::default()
    };
    let err = ClientTls::new(&endpoint, &bad_name)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid TLS server name"), "{err}");
}

/// A renewed client certificate (files replaced in place, as cert-manager or
/// a rotated Secret do) is presented on the next dial, without a restart.
fn renewed_client_certificate_is_used_on_the_next_dial(kind: RuntimeKind) {
    let s = setup();
    let (listener, endpoint) = tls_listener();
    let options = TlsOptions {
        ca: Some(s.ca_path.clone()),
        cert: Some(s.client.0.clone()),
        key: Some(s.client.1.clone()),
        server_name: None,
    };
    let mut agent = start(kind, tls_plan(endpoint, &options));
    let server = manager_tls(&s, Some(&s.ca_path));
    let (conn, _) =
        ManagerConn::accept_tls(&listener, ManagerConfig::default(), server.clone(), TIMEOUT)
            .unwrap();
    let first = conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(first, CertificateDer::from_pem_file(&s.client.0).unwrap());
    // Renew: same paths, new certificate and key.
    std::thread::sleep(Duration::from_millis(20));
    let renewed = s
        .pki
        .leaf("worker", &s.ca, &["worker-1.fleet.example"], VALID);
    assert_eq!(renewed, s.client);
    let renewed_der = CertificateDer::from_pem_file(&s.client.0).unwrap();
    assert_ne!(first, renewed_der);
    drop(conn);
    let (mut conn, _) =
        ManagerConn::accept_tls(&listener, ManagerConfig::default(), server, TIMEOUT).unwrap();
    assert_eq!(conn.peer_certificates().unwrap()[0], renewed_der);
    conn.send_task(1, "echo", b"renewed", false).unwrap();
    loop {
        match conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Result { id, body, .. } => {
                assert_eq!((id, body.as_slice()), (1, &b"renewed"[..]));
                break;
            }
            ManagerEvent::Ack { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    agent.request_stop();
    let _ = conn.read_to_end(TIMEOUT);
    assert!(agent.wait().is_clean());
}

/// Without --tls-ca the manager is verified against the system's roots; the
/// binary honours SSL_CERT_FILE as OpenSSL does, which lets the test stand in
/// for /etc/ssl/certs. With no usable root at all, startup says so.
#[test]
fn system_roots_verify_the_manager_when_no_ca_is_given() {
    let s = setup();
    let (listener, endpoint) = tls_listener();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args([
            "run",
            "--manager",
            &endpoint.to_string(),
            "--metrics-addr",
            "off",
        ])
        .env("SSL_CERT_FILE", &s.ca_path)
        .env_remove("SSL_CERT_DIR")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let accepted = ManagerConn::accept_tls(
        &listener,
        ManagerConfig::default(),
        manager_tls(&s, None),
        TIMEOUT,
    );
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let output = child.wait_with_output().unwrap();
    let (_, hello) =
        accepted.unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    assert!(!hello.worker.is_empty());

    let empty = s.pki.write("empty.pem", "");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args([
            "run",
            "--manager",
            &endpoint.to_string(),
            "--metrics-addr",
            "off",
        ])
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", s.pki.dir.join("no-such-dir"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no trusted CA certificates") && stderr.contains("--tls-ca"),
        "{stderr}"
    );
}

for_each_runtime!(
    renewed_client_certificate_is_used_on_the_next_dial,
    tasks_over_tls,
    a_broken_record_while_a_send_is_stuck_does_not_hang_a_stop,
    tasks_over_mutual_tls,
    unknown_ca_is_refused,
    wrong_server_name_is_refused,
    expired_certificate_is_refused,
    missing_client_certificate_is_refused,
    client_certificate_from_another_ca_is_refused,
    garbage_instead_of_server_hello,
);
