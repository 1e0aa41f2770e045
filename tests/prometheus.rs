//! The agent's metrics through a real Prometheus (Debian's `prometheus`
//! package, which `.ci/run` installs): scraped totals equal the agent's own,
//! rates move under load, `up` is 1, `promtool check metrics` is clean, and
//! a token never shows in metrics, status or logs. Every query of the Grafana
//! dashboard runs against what Prometheus scraped, with the per-session
//! series on and off. (Prometheus asks for gzip: these scrapes are gzipped.)

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::loadgen_bin;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, http_get, url_encode, wait_until};
use ringworker::runtime::RuntimeKind;
use ringworker::transport::Endpoint;

/// A child process killed (by its own PID) when the test ends, pass or fail.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("`{name}` is not installed: apt-get install prometheus (.ci/run does this)");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringworker-prom-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One instant-query value from Prometheus, if the query has a result.
fn query(prometheus: &str, expr: &str) -> Option<f64> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(expr)),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// An instant query's result series, or Prometheus' error.
fn query_all(prometheus: &str, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(expr)),
    )
    .map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if status != 200 || json["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Every panel query of the Grafana dashboard, with its variables filled:
/// (panel title, needs per-session series, expression).
fn dashboard_queries() -> Vec<(String, bool, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/grafana-ringworker.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_owned();
        let per_session = panel["description"]
            .as_str()
            .unwrap()
            .contains("Needs session_metrics on");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$__rate_interval", "15s");
            queries.push((title.clone(), per_session, expr));
        }
    }
    queries
}

fn start_prometheus(dir: &Path, targets: &str) -> (Reaped, String) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ringworker\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{targets}']\n"
        ),
    )
    .unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(30), || http_get(&addr, "/-/ready")
            .is_ok_and(|(s, _)| s == 200)),
        "prometheus did not become ready"
    );
    (Reaped(child), addr)
}

#[test]
fn prometheus_scrapes_exact_totals_and_live_rates() {
    let dir = temp_dir("scrape");
    let socket = dir.join("manager.sock");
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let token = dir.join("token");
    std::fs::write(&token, "s3cr3t-t0ken-value\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (_prometheus, prom) = start_prometheus(&dir, &metrics_addr);
    let log_path = dir.join("agent.log");
    let agent = Reaped(
        Command::new(env!("CARGO_BIN_EXE_ringworker"))
            .args(["run", "--runtime", "auto", "--sessions", "4"])
            .arg(format!("--manager=unix://{}", socket.display()))
            .arg(format!("--metrics-addr={metrics_addr}"))
            .arg(format!("--token-file={}", token.display()))
            .args(["--reconnect-min", "500", "--reconnect-max", "2000"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || http_get(
        &metrics_addr,
        "/healthz"
    )
    .is_ok()));
    // The loadgen is the manager; it drains the sessions (DRAIN) at the end,
    // after which the agent's totals stand still.
    let loadgen = Command::new(loadgen_bin())
        .arg(format!("--listen=unix://{}", socket.display()))
        .args([
            "--sessions",
            "4",
            "--handler",
            "echo:3,sha256:1",
            "--payload",
            "16..512",
        ])
        .args(["--concurrency", "8", "--duration", "6"])
        .arg(format!("--token-file={}", token.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut loadgen = Reaped(loadgen);
    // While traffic flows: up is 1 and the byte rate is above zero.
    assert!(
        wait_until(Duration::from_secs(20), || query(
            &prom,
            "up{job=\"ringworker\"}"
        ) == Some(1.0)),
        "up == 1"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            query(&prom, "rate(ringworker_bytes_sent_total[5s])").is_some_and(|r| r > 0.0)
        }),
        "rate(ringworker_bytes_sent_total) > 0 during the run"
    );
    // promtool on a live scrape: no problems, no warnings.
    let (_, scrape) = http_get(&metrics_addr, "/metrics").unwrap();
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && complaints.trim().is_empty(),
        "promtool: {complaints}"
    );

    // Every dashboard query is valid PromQL over what was scraped; with the
    // per-session series on, the per-session panel has data too.
    for (title, per_session, expr) in dashboard_queries() {
        let result = query_all(&prom, &expr);
        assert!(result.is_ok(), "{title}: {expr}: {result:?}");
        if per_session && expr.contains("topk") {
            assert!(
                wait_until(Duration::from_secs(10), || query_all(&prom, &expr)
                    .is_ok_and(|r| !r.is_empty())),
                "{title}: no data for {expr}"
            );
        }
    }

    let status = loadgen.0.wait().unwrap();
    assert!(
        status.success(),
        "the loadgen verified every task and the byte totals"
    );
    // After the sessions end: the agent's /status totals, then Prometheus'
    // last scrape of the counter, equal to the byte.
    let status_total = || -> u64 {
        let (_, body) = http_get(&metrics_addr, "/status").unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["bytes_sent_total"].as_u64().unwrap()
    };
    let total = status_total();
    assert!(total > 0);
    assert!(
        wait_until(Duration::from_secs(15), || query(
            &prom,
            "ringworker_bytes_sent_total"
        ) == Some(total as f64)),
        "Prometheus' last scrape of ringworker_bytes_sent_total = {:?}, /status says {total}",
        query(&prom, "ringworker_bytes_sent_total")
    );
    assert_eq!(
        status_total(),
        total,
        "no bytes moved after the sessions ended"
    );

    // The token never appears in metrics, status or logs.
    let (_, metrics) = http_get(&metrics_addr, "/metrics").unwrap();
    let (_, status_json) = http_get(&metrics_addr, "/status").unwrap();
    drop(agent);
    let mut logs = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains("connected: WELCOME"),
        "the agent logged its sessions:\n{logs}"
    );
    for (what, text) in [
        ("/metrics", &metrics),
        ("/status", &status_json),
        ("logs", &logs),
    ] {
        assert!(
            !text.contains("s3cr3t-t0ken-value"),
            "the token leaked into {what}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `session_metrics = false`, every dashboard panel that does not say it
/// needs the per-session series shows data, and those that do show nothing.
#[test]
fn dashboard_panels_show_data_with_session_metrics_off() {
    let dir = temp_dir("sessions-off");
    let socket = dir.join("manager.sock");
    // The loadgen is the manager; the agent runs in this process, its
    // telemetry with the per-session series off.
    let mut loadgen = Reaped(
        Command::new(loadgen_bin())
            .arg(format!("--listen=unix://{}", socket.display()))
            .args(["--sessions", "3", "--handler", "echo:3,sha256:1"])
            .args(["--payload", "16..512", "--concurrency", "4"])
            .args(["--duration", "40", "--warmup", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || socket.exists()),
        "the loadgen listens"
    );
    ringworker::metrics::recorder();
    let mut agent = common::start(
        RuntimeKind::Blocking,
        common::plan(Endpoint::Unix(socket.clone()), 3, 8),
    );
    let server = common::http_without_session_metrics(&*agent);
    let metrics_addr = server.addr().to_string();
    let (_prometheus, prom) = start_prometheus(&dir, &metrics_addr);
    assert!(
        wait_until(Duration::from_secs(30), || query(
            &prom,
            "rate(ringworker_bytes_sent_total[15s])"
        )
        .is_some_and(|r| r > 0.0)),
        "traffic is scraped"
    );
    let (_, scrape) = http_get(&metrics_addr, "/metrics").unwrap();
    assert!(!scrape.contains("session=\""), "{scrape}");
    for (title, per_session, expr) in dashboard_queries() {
        if per_session {
            let result = query_all(&prom, &expr);
            assert!(
                result.as_ref().is_ok_and(Vec::is_empty),
                "{title}: {expr}: {result:?} with session_metrics off"
            );
        } else {
            assert!(
                wait_until(Duration::from_secs(15), || query_all(&prom, &expr)
                    .is_ok_and(|r| !r.is_empty())),
                "{title}: no data for {expr}: {:?}",
                query_all(&prom, &expr)
            );
        }
    }
    // The alerts' process-wide series are there too.
    assert_eq!(query(&prom, "ringworker_sessions_connected"), Some(3.0));
    assert_eq!(
        query(
            &prom,
            "ringworker_runtime_info{runtime=\"blocking\",requested=\"blocking\"}"
        ),
        Some(1.0)
    );
    drop(server);
    let _ = loadgen.0.kill();
    let _ = loadgen.0.wait();
    agent.request_stop();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
