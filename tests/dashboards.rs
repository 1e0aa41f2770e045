//! dashboards/: the alert rules pass `promtool check rules` and their unit
//! tests (each alert tested under a static scrape's labels and the
//! Prometheus Operator's), carry a runbook link and do not depend on the job
//! name; the scrape example is a valid config; the Grafana dashboard is
//! provisionable, only asks for metrics the agent exports, never takes the
//! rate of a gauge, and works with the per-session series off; the
//! Kubernetes manifests scrape with a job label and mount the token so the
//! agent accepts it.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn dashboards() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards"))
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dashboards())
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "promtool is not installed ({err}): apt-get install prometheus (.ci/run does this)"
            )
        });
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `ringworker_*` and `process_*` series name the agent exports.
fn exported() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = gauges().union(&counters()).cloned().collect();
    names.insert(format!("{}_sum", ringworker::metrics::TASK_DURATION));
    names.insert(format!("{}_count", ringworker::metrics::TASK_DURATION));
    names
}

fn gauges() -> BTreeSet<String> {
    use ringworker::metrics::*;
    series(
        "gauge",
        &[
            SESSION_BYTES_SENT,
            SESSION_BYTES_RECEIVED,
            SESSION_CONNECTED,
            TASKS_IN_FLIGHT,
            BUILD_INFO,
            SESSIONS_CONNECTED,
            SESSIONS_CONFIGURED,
            AGENT_TASKS_IN_FLIGHT,
            RUNTIME_INFO,
        ],
    )
}

/// Series a rate() may take: counters, and the histogram's buckets, sum and
/// count.
fn counters() -> BTreeSet<String> {
    use ringworker::metrics::*;
    let mut names = series(
        "counter",
        &[
            BYTES_SENT_TOTAL,
            BYTES_RECEIVED_TOTAL,
            TASKS_TOTAL,
            RECONNECTS_TOTAL,
            TLS_HANDSHAKE_FAILURES_TOTAL,
        ],
    );
    for suffix in ["_bucket", "_sum", "_count"] {
        names.insert(format!("{TASK_DURATION}{suffix}"));
    }
    names
}

/// `names`, and the `process_*` series of type `kind`.
fn series(kind: &str, names: &[&str]) -> BTreeSet<String> {
    let mut all: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    all.extend(
        ringworker::metrics::PROCESS_METRICS
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(name, _, _)| name.to_string()),
    );
    all
}

/// The `ringworker_*` and `process_*` series names in a text.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["ringworker_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if end > prefix.len() && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                names.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    names
}

/// The series each `rate(`, `irate(`, `increase(` of an expression is taken
/// of.
fn rated(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for function in ["rate(", "increase(", "delta(", "deriv("] {
        let mut rest = expr;
        while let Some(at) = rest.find(function) {
            let tail = rest[at + function.len()..].trim_start();
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_owned());
            rest = &rest[at + function.len()..];
        }
    }
    names
}

#[test]
fn expression_helpers_find_names_and_rated_series() {
    let expr = "sum by (instance) (rate(ringworker_bytes_sent_total{x=\"y\"}[5m])) \
                / irate( process_cpu_seconds_total[1m]) and on (job) ringworker_build_info";
    assert_eq!(
        rated(expr),
        ["ringworker_bytes_sent_total", "process_cpu_seconds_total"]
    );
    let names: Vec<_> = referenced(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "process_cpu_seconds_total",
            "ringworker_build_info",
            "ringworker_bytes_sent_total",
        ]
    );
    assert!(referenced("my_process_thing").is_empty());
}

/// The alert rules' blocks in alerts.yml: (name, the rule's text).
fn rules(text: &str) -> Vec<(String, String)> {
    text.split("      - alert: ")
        .skip(1)
        .map(|block| {
            let name = block.lines().next().unwrap_or_default().trim().to_owned();
            (name, block.to_owned())
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    let text = std::fs::read_to_string(dashboards().join("alerts.yml")).unwrap();
    let rules = rules(&text);
    let names: Vec<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    for alert in [
        "RingworkerAgentDown",
        "RingworkerFleetAbsent",
        "RingworkerNoSessionConnected",
        "RingworkerTaskFailureRatioHigh",
        "RingworkerReconnectStorm",
        "RingworkerBytesFlat",
        "RingworkerTlsHandshakesFailing",
        "RingworkerBlockingFallback",
        "RingworkerFileDescriptorsNearLimit",
    ] {
        assert!(names.contains(&alert), "{alert} missing from {names:?}");
    }
    let unknown: Vec<_> = referenced(&text).difference(&exported()).cloned().collect();
    assert!(
        unknown.is_empty(),
        "alerts use metrics the agent does not export: {unknown:?}"
    );
    // The Operator names the job "<namespace>/<podmonitor>" unless jobLabel
    // is set: no rule may pin the job name.
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !code.contains("job=\"") && !code.contains("job!=\""),
        "a rule selects one job name"
    );
    let anchors = [
        "#io_uring-is-blocked",
        "#the-token-file-is-refused",
        "#the-manager-is-unreachable",
        "#observe",
    ];
    for (name, rule) in &rules {
        let url = rule
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"))
            .trim_matches('"');
        let anchor = url
            .strip_prefix("https://example.invalid/ringworker/blob/main/README.md")
            .unwrap_or_else(|| panic!("{name}: {url} is not the README"));
        assert!(anchors.contains(&anchor), "{name}: unknown anchor {anchor}");
        for rated in rated(rule) {
            assert!(
                counters().contains(&rated),
                "{name} takes the rate of {rated}, not a counter"
            );
        }
        // Per-session series are off with session_metrics = false: an alert
        // built on them would go quiet.
        for series in ringworker::metrics::PER_SESSION {
            assert!(
                !referenced(rule).contains(series),
                "{name} depends on the per-session {series}"
            );
        }
    }
    // Each alert's unit tests expect it to fire with the static scrape's
    // labels and with the Operator's (or, for an alert on a vanished fleet,
    // to fire after either kind of series stops).
    let tests = std::fs::read_to_string(dashboards().join("alerts.test.yml")).unwrap();
    let evals: Vec<&str> = tests.split("- eval_time: ").skip(1).collect();
    for (name, _) in &rules {
        let firing: Vec<&&str> = evals
            .iter()
            .filter(|e| e.contains(&format!("alertname: {name}\n")))
            .filter(|e| !e.contains("exp_alerts: []"))
            .collect();
        if name == "RingworkerFleetAbsent" {
            assert!(firing.len() >= 2, "{name}: {} firing tests", firing.len());
            continue;
        }
        for job in ["job: ringworker,", "job: \"ringworker/ringworker\","] {
            assert!(
                firing.iter().any(|e| e.contains(job)),
                "{name} is not tested firing with {job}"
            );
        }
        assert!(
            firing
                .iter()
                .any(|e| e.contains("namespace: ringworker") && e.contains("pod: ")),
            "{name} is not tested with the Operator's namespace and pod labels"
        );
    }
}

#[test]
fn grafana_dashboard_is_provisionable_and_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(dashboards().join("grafana-ringworker.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "ringworker-agents", "a fixed uid");
    assert!(
        dashboard.get("__inputs").is_none() && !text.contains("${DS_"),
        "no import placeholders"
    );
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).cloned();
    assert_eq!(variable("datasource").unwrap()["type"], "datasource");
    assert_eq!(variable("datasource").unwrap()["query"], "prometheus");
    assert!(variable("instance").is_some(), "an instance variable");
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Agents on the blocking fallback",
        "Runtime per agent",
        "Bytes/s per instance",
        "Connected sessions",
        "Tasks/s by handler and outcome",
        "Task latency p50 / p99 (handler time)",
        "Tasks in flight",
        "Reconnects",
        "Resident memory",
        "CPU",
        "Open file descriptors",
        "Largest sessions (bytes on their current connection)",
    ] {
        assert!(
            titles.contains(&wanted),
            "panel {wanted:?} missing from {titles:?}"
        );
    }
    let mut ids = BTreeSet::new();
    let mut runtime_shown = false;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        let needs_sessions = panel["description"]
            .as_str()
            .unwrap()
            .contains("Needs session_metrics on");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "filtered by instance: {expr}"
            );
            let names = referenced(expr);
            let unknown: Vec<_> = names.difference(&exported()).cloned().collect();
            assert!(unknown.is_empty(), "{expr} uses {unknown:?}");
            for rated in rated(expr) {
                assert!(
                    counters().contains(&rated),
                    "{title}: rate of {rated}, which is not a counter"
                );
            }
            // Per-session series: aggregated, and only in panels that say
            // they need them; every other panel works with them off.
            for series in ringworker::metrics::PER_SESSION {
                if names.contains(series) {
                    assert!(needs_sessions, "{title} needs {series} but does not say so");
                    assert!(
                        ["sum", "count", "topk", "max", "min", "avg"]
                            .iter()
                            .any(|f| expr.starts_with(&format!("{f}("))
                                || expr.starts_with(&format!("{f} by"))),
                        "{title}: {series} is not aggregated in {expr}"
                    );
                }
            }
            // process_* series exist in every job: scoped to ringworker's.
            if names.iter().any(|n| n.starts_with("process_")) {
                assert!(
                    expr.contains("and on (job, instance) ringworker_build_info"),
                    "{title}: process series not scoped to agents: {expr}"
                );
            }
            runtime_shown |= names.contains(ringworker::metrics::RUNTIME_INFO);
        }
    }
    assert!(runtime_shown, "a panel shows each agent's runtime");
}

#[test]
fn grafana_provisioning_files_name_the_dashboard_path_and_a_prometheus_source() {
    let dashboards_yml =
        std::fs::read_to_string(dashboards().join("grafana-dashboards.yml")).unwrap();
    assert!(dashboards_yml.contains("type: file") && dashboards_yml.contains("path: "));
    let datasource_yml =
        std::fs::read_to_string(dashboards().join("grafana-datasource.yml")).unwrap();
    assert!(datasource_yml.contains("type: prometheus"));
}

fn yaml_field(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .collect()
}

/// The PodMonitor sets the job from the pod label (static-config-like job
/// names); the pods run with the group the kubelet gives the secret files,
/// so the agent accepts its 0440 token, and no mounted file is readable by
/// others.
#[test]
fn kubernetes_scrape_job_and_secret_modes_fit_the_agent() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes"));
    let monitor = std::fs::read_to_string(dir.join("podmonitor.yaml")).unwrap();
    assert_eq!(yaml_field(&monitor, "jobLabel"), ["app.kubernetes.io/name"]);
    for workload in ["daemonset.yaml", "deployment.yaml"] {
        let text = std::fs::read_to_string(dir.join(workload)).unwrap();
        let group = yaml_field(&text, "runAsGroup");
        let fs_group = yaml_field(&text, "fsGroup");
        assert_eq!(group.len(), 1, "{workload}: one runAsGroup");
        assert_eq!(group, fs_group, "{workload}: runAsGroup == fsGroup");
        let modes = yaml_field(&text, "defaultMode");
        assert_eq!(modes.len(), 3, "{workload}: config, token and tls modes");
        for mode in modes {
            let mode = u32::from_str_radix(&mode, 8).unwrap();
            assert_eq!(mode & 0o007, 0, "{workload}: mode {mode:o} opens to others");
            // fsGroup adds group read: what the agent sees.
            let seen = mode | 0o040;
            assert!(seen & 0o037 == 0, "{workload}: {seen:o} beyond group read");
        }
    }
}
