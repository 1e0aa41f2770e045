//! Shared helpers for the integration tests: start an agent of a given
//! runtime against a manager listening on loopback or a Unix socket.
#![allow(dead_code)]

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
