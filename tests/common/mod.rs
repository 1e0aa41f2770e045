//! Shared helpers for the integration tests: start an agent of a given
//! runtime against a manager listening on loopback or a Unix socket.
#![allow(dead_code)]

pub mod manager;
pub mod process;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringworker::handlers::HandlerRegistry;
use ringworker::manager::{ManagerConfig, ManagerConn};
use ringworker::protocol::Hello;
use ringworker::runtime::{AgentPlan, ReconnectPolicy, RuntimeKind, RuntimeMode};
use ringworker::session::SessionConfig;
use ringworker::transport::{BlockingListener, Endpoint};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A loopback TCP listener on a free port.
pub fn tcp_listener() -> BlockingListener {
    BlockingListener::bind(&Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    })
    .expect("bind loopback")
}

/// A Unix socket listener in a fresh temporary path.
pub fn unix_listener() -> BlockingListener {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path: PathBuf = std::env::temp_dir().join(format!(
        "ringworker-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    BlockingListener::bind(&Endpoint::Unix(path)).expect("bind unix socket")
}

/// A plan with test-friendly timings.
pub fn plan(endpoint: Endpoint, sessions: u32, max_in_flight: u32) -> AgentPlan {
    AgentPlan {
        endpoint,
        sessions,
        threads: 2,
        session: SessionConfig {
            worker_id: "test-agent".into(),
            runtime: "blocking",
            max_body: 16 * 1024 * 1024,
            max_in_flight,
            token: None,
            handshake_timeout: Duration::from_secs(10),
        },
        handlers: HandlerRegistry::with_builtins(),
        reconnect: ReconnectPolicy {
            min: Duration::from_millis(20),
            max: Duration::from_millis(200),
            stable_after: Duration::from_secs(10),
        },
        drain_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        tcp: Default::default(),
        tls: None,
        loop_balance: Default::default(),
    }
}

/// Build and start an agent of `kind`.
pub fn start(kind: RuntimeKind, plan: AgentPlan) -> Box<dyn RuntimeMode> {
    let choice = match kind {
        RuntimeKind::Blocking => ringworker::config::RuntimeChoice::Blocking,
        RuntimeKind::Uring => ringworker::config::RuntimeChoice::Uring,
    };
    let mut runtime = ringworker::agent::select_runtime(choice, plan).expect("runtime available");
    runtime.start().expect("runtime starts");
    runtime
}

/// Accept one worker and complete its handshake.
pub fn accept(listener: &BlockingListener) -> (ManagerConn, Hello) {
    accept_with(listener, ManagerConfig::default())
}

pub fn accept_with(listener: &BlockingListener, config: ManagerConfig) -> (ManagerConn, Hello) {
    ManagerConn::accept(listener, config, TIMEOUT).expect("worker connects and says HELLO")
}

/// Generate one test per runtime from a function `fn(RuntimeKind)`.
#[macro_export]
macro_rules! for_each_runtime {
    ($($name:ident),* $(,)?) => {
        mod blocking {
            $(
                #[test]
                fn $name() {
                    super::$name(ringworker::runtime::RuntimeKind::Blocking);
                }
            )*
        }
        mod uring {
            $(
                #[test]
                fn $name() {
                    super::$name(ringworker::runtime::RuntimeKind::Uring);
                }
            )*
        }
    };
}

/// A free loopback TCP port (bound and released; fine for tests on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The agent's HTTP endpoints on a free loopback port, for a blocking
/// agent, with the per-session series off.
pub fn http_without_session_metrics(agent: &dyn RuntimeMode) -> ringworker::http::HttpServer {
    use ringworker::metrics::{Telemetry, TelemetryOptions};
    let options = TelemetryOptions {
        session_metrics: false,
        requested_runtime: "blocking",
    };
    ringworker::http::HttpServer::start(
        "127.0.0.1:0".parse().expect("a socket address"),
        std::sync::Arc::new(Telemetry::with_options(agent.stats(), options)),
    )
    .expect("the HTTP listener starts")
}

/// Percent-encode a query-string value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Wait until `check` holds, polling; false when `limit` passes first.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// The loadgen binary, next to the agent binary. It belongs to another
/// package of the workspace, so it is brought up to date here once per test
/// binary (a no-op after `cargo test --workspace`).
pub fn loadgen_bin() -> std::path::PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "ringworker-loadgen"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build -p ringworker-loadgen failed");
    });
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_ringworker")).with_file_name("ringworker-loadgen")
}
