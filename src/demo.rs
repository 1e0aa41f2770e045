//! `ringworker demo`: a zero-setup tour. An embedded manager listens on
//! loopback, an agent (runtime `auto`) dials it, a mixed workload runs for a
//! while with every RESULT verified, then the agent drains and the report
//! shows the per-session totals and the byte-accounting check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::agent::Agent;
use crate::config::{Config, LogFormat, MetricsAddr, RuntimeChoice};
use crate::format::format_bytes;
use crate::handlers::HandlerRegistry;
use crate::http::HttpServer;
use crate::manager::{verify::verify, ManagerConfig, ManagerConn, ManagerError, ManagerEvent};
use crate::metrics::Telemetry;
use crate::transport::{BlockingListener, Endpoint};

/// Options of `ringworker demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to run the workload, seconds
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Sessions the agent opens
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sessions: u32,
    /// Tasks in flight per session
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// I/O engine of the agent
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
}

/// Per-connection totals the demo checks.
#[derive(Debug, Default)]
struct DriverReport {
    ok: u64,
    failed: u64,
    wrong: u64,
    lost: u64,
    manager_sent: u64,
    manager_received: u64,
    worker_reported: Option<(u64, u64, usize)>,
}

/// The mix: handler and payload size range.
const MIX: [(&str, usize, usize); 4] = [
    ("echo", 16, 4096),
    ("crc32c", 64, 16384),
    ("sha256", 64, 8192),
    ("sink", 16, 1024),
];

/// Run the demo; returns whether every check passed.
pub fn run(args: &DemoArgs) -> anyhow::Result<bool> {
    let listener = BlockingListener::bind(&Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    })?;
    let endpoint = listener.local_endpoint()?;
    crate::say!(
        "ringworker demo: embedded manager on {endpoint}, {} session{}, {} s of echo / crc32c / sha256 / sink",
        args.sessions,
        if args.sessions == 1 { "" } else { "s" },
        args.duration
    );
    let config = Config {
        manager: endpoint,
        runtime: args.runtime,
        sessions: args.sessions,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        loop_balance: Default::default(),
        max_in_flight: args.concurrency.max(1),
        max_body: 16 * 1024 * 1024,
        worker_id: "demo-agent".into(),
        token_file: None,
        token: None,
        token_file_insecure: false,
        metrics_addr: MetricsAddr::Off,
        session_metrics: true,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(2),
        tcp: Default::default(),
        log_level: crate::logging::DEFAULT_FILTER.to_owned(),
        log_format: LogFormat::Text,
        drain_timeout: Duration::from_secs(10),
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        tls_server_name: None,
        tls: None,
        handlers: Default::default(),
    };
    let mut agent = Agent::new(&config, HandlerRegistry::with_builtins())?;
    let stats = agent.stats();
    // The agent's HTTP listener, on the default port when it is free.
    let telemetry = Arc::new(Telemetry::new(stats.clone()));
    let default_addr: std::net::SocketAddr = crate::config::DEFAULT_METRICS_ADDR.parse()?;
    let http = HttpServer::start(default_addr, telemetry.clone())
        .or_else(|_| HttpServer::start(([127, 0, 0, 1], 0).into(), telemetry))?;
    agent.run(&config)?;
    crate::say!(
        "agent runtime: {}; while it runs: curl http://{addr}/metrics  (also /status /healthz /readyz)",
        agent.runtime().kind().as_str(),
        addr = http.addr()
    );

    let sending = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicU64::new(0));
    let mut drivers = Vec::new();
    for session in 0..args.sessions {
        let (conn, hello) =
            ManagerConn::accept(&listener, ManagerConfig::default(), Duration::from_secs(10))?;
        let sending = sending.clone();
        let done = done.clone();
        let concurrency = args.concurrency.max(1);
        let index = hello.session;
        drivers.push((
            index,
            thread::spawn(move || drive(conn, u64::from(session), concurrency, &sending, &done)),
        ));
    }

    let start = Instant::now();
    let duration = Duration::from_secs(args.duration);
    let mut last = 0;
    while start.elapsed() < duration {
        thread::sleep(Duration::from_secs(1).min(duration.saturating_sub(start.elapsed())));
        let now_done = done.load(Relaxed);
        crate::say!(
            "  {:>4.1} s  {:>9} tasks  {:>9} tasks/s  agent sent {}  received {}",
            start.elapsed().as_secs_f64(),
            now_done,
            now_done - last,
            format_bytes(stats.bytes_sent_total()),
            format_bytes(stats.bytes_received_total()),
        );
        last = now_done;
    }
    let elapsed = start.elapsed();
    sending.store(false, Relaxed);
    // Let the drivers collect their outstanding results, then drain the agent.
    while drivers.iter().any(|(_, d)| !d.is_finished())
        && !stats.sessions.iter().all(|s| s.in_flight() == 0)
    {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100));
    let stop = agent.stop_handle();
    stop.request_stop();
    let run_report = agent.wait();

    let mut all_ok = run_report.is_clean();
    let mut total = DriverReport::default();
    crate::say!(
        "\n{:>7}  {:>8}  {:>6}  {:>5}  {:>4}  {:<26}  {:<26}  accounting",
        "session",
        "tasks ok",
        "failed",
        "wrong",
        "lost",
        "agent sent",
        "agent received"
    );
    drivers.sort_by_key(|(index, _)| *index);
    for (session, driver) in drivers {
        let report = driver
            .join()
            .map_err(|_| anyhow::anyhow!("driver thread panicked"))?;
        let exact = match report.worker_reported {
            Some((sent, received, goodbye_len)) => {
                sent + goodbye_len as u64 == report.manager_received
                    && received == report.manager_sent
            }
            None => false,
        };
        all_ok &= exact && report.wrong == 0 && report.lost == 0;
        let Some(s) = stats.sessions.get(session as usize) else {
            anyhow::bail!("the agent reported session {session}, which it does not have");
        };
        crate::say!(
            "{:>7}  {:>8}  {:>6}  {:>5}  {:>4}  {:<26}  {:<26}  {}",
            session,
            report.ok,
            report.failed,
            report.wrong,
            report.lost,
            format!("{} ({} B)", format_bytes(s.bytes_sent()), s.bytes_sent()),
            format!(
                "{} ({} B)",
                format_bytes(s.bytes_received()),
                s.bytes_received()
            ),
            if exact { "exact" } else { "MISMATCH" }
        );
        total.ok += report.ok;
        total.failed += report.failed;
        total.wrong += report.wrong;
        total.lost += report.lost;
    }
    crate::say!(
        "\n{} tasks verified in {:.1} s ({:.0} tasks/s); failed {}, wrong {}, lost {}; agent moved {} out, {} in",
        total.ok,
        elapsed.as_secs_f64(),
        total.ok as f64 / elapsed.as_secs_f64(),
        total.failed,
        total.wrong,
        total.lost,
        format_bytes(stats.bytes_sent_total()),
        format_bytes(stats.bytes_received_total()),
    );
    crate::say!(
        "{}",
        if all_ok {
            "demo passed: every result verified, byte totals equal to the byte"
        } else {
            "demo FAILED"
        }
    );
    Ok(all_ok)
}

/// Closed loop on one connection: keep `concurrency` tasks in flight while
/// `sending`, verify each RESULT, then read the drain to its end.
fn drive(
    mut conn: ManagerConn,
    seed: u64,
    concurrency: u32,
    sending: &AtomicBool,
    done: &AtomicU64,
) -> DriverReport {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed ^ seed);
    let mut report = DriverReport::default();
    let mut outstanding: std::collections::HashMap<u64, (&'static str, Vec<u8>)> =
        Default::default();
    let mut next_id = 1u64;
    let mut send_one =
        |conn: &mut ManagerConn,
         outstanding: &mut std::collections::HashMap<u64, (&'static str, Vec<u8>)>|
         -> Result<(), ManagerError> {
            let (handler, low, high) = MIX[rng.random_range(0..MIX.len())];
            let len = rng.random_range(low..=high);
            let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            conn.queue_task(next_id, handler, &payload, false)?;
            outstanding.insert(next_id, (handler, payload));
            next_id += 1;
            Ok(())
        };
    for _ in 0..concurrency {
        if send_one(&mut conn, &mut outstanding).is_err() {
            break;
        }
    }
    let _ = conn.flush();
    loop {
        match conn.next_event(Duration::from_secs(30)) {
            Ok(ManagerEvent::Result { id, failed, body }) => {
                if let Some((handler, payload)) = outstanding.remove(&id) {
                    if failed {
                        report.failed += 1;
                    } else if verify(handler, &payload, &body) {
                        report.ok += 1;
                        done.fetch_add(1, Relaxed);
                    } else {
                        report.wrong += 1;
                    }
                }
                if sending.load(Relaxed) && send_one(&mut conn, &mut outstanding).is_ok() {
                    let _ = conn.flush();
                }
            }
            Ok(ManagerEvent::Goodbye { counts, frame_len }) => {
                report.worker_reported =
                    counts.map(|c| (c.bytes_sent, c.bytes_received, frame_len));
                break;
            }
            Ok(ManagerEvent::Error { .. } | ManagerEvent::Refused { .. }) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The worker closes after GOODBYE: read to the end so every byte is counted.
    let _ = conn.read_to_end(Duration::from_secs(5));
    report.lost = outstanding.len() as u64;
    report.manager_sent = conn.bytes_sent();
    report.manager_received = conn.bytes_received();
    report
}
