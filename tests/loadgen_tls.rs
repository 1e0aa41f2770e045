//! ringworker-loadgen serving TLS 1.3: spawned agents of both runtimes with
//! throwaway certificates (server-only and mutual), exact byte accounting
//! over TLS, refused handshakes reported on both sides, the loadgen's DRAIN
//! and its close_notify when it closes first, and the `--tls-*` usage errors.
//! Loopback only; every run is bounded by `--tasks` and a timeout.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::{free_port, loadgen_bin};

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use ringworker::protocol::frame::encode_frame;
use ringworker::protocol::FrameKind;
use ringworker::runtime::RuntimeKind;
use ringworker::transport::tls::{ClientTls, TlsOptions};
use ringworker::transport::Endpoint;

/// Longest any one loadgen run may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "ringworker-loadgen-tls-test-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

struct Finished {
    status: ExitStatus,
    pid: u32,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn both(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Run a command to its end, killing it (and failing) after `limit`.
fn run(command: &mut Command, limit: Duration) -> Finished {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {limit:?}:\n{}\n{}",
                stdout.join().unwrap(),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        pid,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn loadgen() -> Command {
    let mut command = Command::new(loadgen_bin());
    command.arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")));
    command
}

/// A CA, a manager certificate for 127.0.0.1 and localhost, and no client
/// certificate: made by the test, removed on drop.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_path("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "loadgen test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca: Certificate = params.self_signed(&ca_key).unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "loadgen test manager");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            cert: write("manager.pem", cert.pem()),
            key: write("manager.key", key.serialize_pem()),
            dir,
        }
    }

    /// `--tls-cert` and `--tls-key` for the loadgen.
    fn manager_args(&self) -> [String; 2] {
        [
            format!("--tls-cert={}", self.cert.display()),
            format!("--tls-key={}", self.key.display()),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Throwaway directories a loadgen process left behind.
fn throwaway_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("ringworker-loadgen-tls-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Every connection's totals agree with the agent's GOODBYE by the TLS rule.
fn assert_exact_over_tls(r: &serde_json::Value, sessions: usize) {
    assert_eq!(r["accounting_mismatches"], 0, "{r}");
    let connections = r["connections"].as_array().unwrap();
    assert_eq!(connections.len(), sessions, "{r}");
    for c in connections {
        assert_eq!(c["accounting_exact"], true, "{c}");
        assert_eq!(c["agent_bytes_received"], c["bytes_sent"], "{c}");
        assert_eq!(c["agent_bytes_sent"], c["bytes_received"], "{c}");
        // GOODBYE's own record(s) and the closing alert follow the offset
        // that GOODBYE reported: more than the frame itself.
        let after = c["tls_after_goodbye"].as_u64().unwrap();
        let goodbye = c["goodbye_len"].as_u64().unwrap();
        assert!(after > goodbye && after < goodbye + 200, "{c}");
    }
}

for_each_runtime!(
    tls_with_throwaway_certificates_is_exact,
    mutual_tls_with_throwaway_certificates_is_exact,
    a_required_client_certificate_that_is_missing_is_reported_on_both_sides,
);

fn throwaway_run(kind: RuntimeKind, mutual: bool) {
    let report = temp_path("report.json");
    let mut command = loadgen();
    command
        .args(["--listen", "tls://127.0.0.1:0", "--spawn", kind.as_str()])
        .args(["--sessions", "2", "--concurrency", "8", "--tasks", "1500"])
        .args([
            "--handler",
            "echo:4,crc32c:1,sha256:1",
            "--payload",
            "1..40000",
        ])
        .arg("--ack")
        .arg(format!("--json={}", report.display()));
    if mutual {
        command.arg("--tls-mutual");
    }
    let done = run(&mut command, RUN_LIMIT);
    assert!(done.status.success(), "{}", done.both());
    let r = json(&report);
    assert_eq!(r["transport"], if mutual { "tls+mtls" } else { "tls" });
    assert_eq!(r["tasks_ok"], 1500, "{r}");
    assert_eq!(r["tasks_wrong"], 0);
    assert_eq!(r["tasks_lost"], 0);
    assert_eq!(r["tasks_failed"], 0);
    assert_eq!(r["tls_handshake_failures"], 0, "{r}");
    assert_exact_over_tls(&r, 2);
    assert!(done.stdout.contains("PASS"), "{}", done.both());
    assert!(
        done.stdout.contains("handshakes failed 0"),
        "{}",
        done.both()
    );
    assert_eq!(
        throwaway_dirs_of(done.pid),
        Vec::<PathBuf>::new(),
        "the throwaway certificates are removed at exit"
    );
    let _ = std::fs::remove_file(report);
}

fn tls_with_throwaway_certificates_is_exact(kind: RuntimeKind) {
    throwaway_run(kind, false);
}

fn mutual_tls_with_throwaway_certificates_is_exact(kind: RuntimeKind) {
    throwaway_run(kind, true);
}

fn a_required_client_certificate_that_is_missing_is_reported_on_both_sides(kind: RuntimeKind) {
    // The loadgen requires client certificates; the spawned agent trusts
    // the manager but has none to show.
    let pki = Pki::new();
    let report = temp_path("refused.json");
    let done = run(
        loadgen()
            .args(["--listen", "tls://127.0.0.1:0", "--spawn", kind.as_str()])
            .args(pki.manager_args())
            .arg(format!("--tls-client-ca={}", pki.ca.display()))
            .arg(format!("--agent-arg=--tls-ca={}", pki.ca.display()))
            .args(["--sessions", "1", "--tasks", "10", "--connect-timeout", "3"])
            .arg(format!("--json={}", report.display())),
        RUN_LIMIT,
    );
    assert_eq!(done.status.code(), Some(2), "{}", done.both());
    let r = json(&report);
    assert!(r["tls_handshake_failures"].as_u64().unwrap() >= 1, "{r}");
    let first = r["tls_handshake_error"].as_str().unwrap();
    assert!(first.contains("no client certificate"), "{first}");
    assert_eq!(r["connections"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["transport"], "tls+mtls");
    // The loadgen's error line counts the failures and names the first...
    assert!(
        done.stderr.contains(
            "TLS handshake(s) failed, the first: the worker presented no client certificate"
        ),
        "{}",
        done.both()
    );
    // ...and the agent (its stderr is the loadgen's) says what it lacks.
    assert!(
        done.stderr
            .lines()
            .any(|l| !l.starts_with("ringworker-loadgen:") && l.contains("client certificate")),
        "{}",
        done.both()
    );
    let _ = std::fs::remove_file(report);
}

/// Dial `port` on loopback until the listener is up.
fn dial(port: u16) -> std::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                return stream;
            }
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("the loadgen never listened on {port}: {err}"),
        }
    }
}

#[test]
fn garbage_instead_of_a_client_hello_is_reported_and_the_run_goes_on() {
    // An external agent (not spawned): the loadgen sends it DRAIN at the
    // end, over TLS, and its GOODBYE must still account exactly. Before it
    // dials, something that does not speak TLS connects.
    let pki = Pki::new();
    let port = free_port();
    let report = temp_path("garbage.json");
    let mut command = loadgen();
    command
        .args(["--listen", &format!("tls://127.0.0.1:{port}")])
        .args(pki.manager_args())
        .args(["--sessions", "1", "--concurrency", "4", "--tasks", "300"])
        .args(["--handler", "sha256", "--payload", "100..30000"])
        .arg(format!("--json={}", report.display()));
    let loadgen = std::thread::spawn(move || run(&mut command, RUN_LIMIT));

    let mut garbage = dial(port);
    garbage
        .write_all(&b"this is not a TLS ClientHello\r\n".repeat(8))
        .unwrap();
    let mut rest = Vec::new();
    let closed = match garbage.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the loadgen closes a connection that is not TLS");

    let mut agent = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["run", "--manager", &format!("tls://127.0.0.1:{port}")])
        .arg(format!("--tls-ca={}", pki.ca.display()))
        .args(["--runtime", "blocking", "--sessions", "1"])
        .args(["--metrics-addr", "off", "--worker-id", "external"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = loadgen.join().unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(done.status.success(), "{}", done.both());
    let r = json(&report);
    assert_eq!(r["tasks_ok"], 300, "{r}");
    assert_eq!(r["tls_handshake_failures"], 1, "{r}");
    let first = r["tls_handshake_error"].as_str().unwrap();
    assert!(first.contains("does not speak TLS"), "{first}");
    assert!(
        done.stdout
            .contains("handshakes failed 1 (first: the worker does not speak TLS"),
        "{}",
        done.both()
    );
    assert_exact_over_tls(&r, 1);
    assert_eq!(r["connections"][0]["worker"], "external");
    let _ = std::fs::remove_file(report);
}

#[test]
fn the_loadgen_sends_close_notify_when_it_closes_first() {
    // One of two sessions connects, says HELLO and waits; when the loadgen
    // gives up waiting for the other, it closes this one with close_notify.
    let pki = Pki::new();
    let port = free_port();
    let mut command = loadgen();
    command
        .args(["--listen", &format!("tls://127.0.0.1:{port}")])
        .args(pki.manager_args())
        .args(["--sessions", "2", "--tasks", "10", "--connect-timeout", "2"]);
    let loadgen = std::thread::spawn(move || run(&mut command, RUN_LIMIT));

    let endpoint = Endpoint::Tls {
        host: "127.0.0.1".into(),
        port,
    };
    let options = TlsOptions {
        ca: Some(pki.ca.clone()),
        ..TlsOptions::default()
    };
    let client = ClientTls::new(&endpoint, &options)
        .unwrap()
        .connect()
        .unwrap();
    let mut tls = rustls::StreamOwned::new(client, dial(port));
    let hello = serde_json::json!({
        "protocol": 1, "worker": "hand-made", "session": 0, "runtime": "blocking",
        "max_body": 1 << 20, "max_in_flight": 8, "handlers": ["echo"],
    });
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameKind::Hello,
        0,
        0,
        &serde_json::to_vec(&hello).unwrap(),
    );
    tls.write_all(&frame).unwrap();
    let mut received = Vec::new();
    // Ok(0) only after close_notify: a bare EOF is an UnexpectedEof error.
    let outcome = tls.read_to_end(&mut received);
    let done = loadgen.join().unwrap();
    assert_eq!(done.status.code(), Some(2), "{}", done.both());
    assert!(
        done.stderr.contains("only 1 of 2 sessions connected"),
        "{}",
        done.both()
    );
    assert!(
        outcome.is_ok(),
        "expected close_notify, got {outcome:?}; {}",
        done.both()
    );
    assert_eq!(received[4], FrameKind::Welcome as u8, "WELCOME came first");
}

#[test]
fn tls_usage_errors_are_one_line_and_exit_2() {
    let pki = Pki::new();
    let cert = format!("--tls-cert={}", pki.cert.display());
    let key = format!("--tls-key={}", pki.key.display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--listen=tcp://127.0.0.1:0".into(),
                cert.clone(),
                key.clone(),
            ],
            "--tls-cert, --tls-key need a tls:// listener",
        ),
        (
            vec!["--listen=unix:///tmp/x.sock".into(), "--tls-mutual".into()],
            "--tls-mutual needs a tls:// listener",
        ),
        (
            vec!["--listen=tls://127.0.0.1:0".into()],
            "needs the manager's certificate: --tls-cert PATH --tls-key PATH (or --spawn",
        ),
        (
            vec!["--listen=tls://127.0.0.1:0".into(), cert.clone()],
            "--tls-cert needs --tls-key",
        ),
        (
            vec![
                "--listen=tls://127.0.0.1:0".into(),
                "--tls-cert=/nonexistent/manager.pem".into(),
                key.clone(),
            ],
            "--tls-cert /nonexistent/manager.pem: ",
        ),
        (
            vec![
                "--listen=tls://127.0.0.1:0".into(),
                cert.clone(),
                format!("--tls-key={}", pki.cert.display()),
            ],
            "--tls-key ",
        ),
        (
            vec![
                "--listen=tls://127.0.0.1:0".into(),
                cert.clone(),
                key.clone(),
                format!("--tls-client-ca={}", pki.key.display()),
            ],
            "--tls-client-ca ",
        ),
    ];
    for (args, expected) in cases {
        let done = run(loadgen().args(&args), Duration::from_secs(20));
        assert_eq!(done.status.code(), Some(2), "{args:?}: {}", done.both());
        let lines: Vec<&str> = done.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", done.both());
        assert!(
            lines[0].starts_with("ringworker-loadgen: ") && lines[0].contains(expected),
            "{args:?}: expected {expected:?} in {:?}",
            lines[0]
        );
    }
}
