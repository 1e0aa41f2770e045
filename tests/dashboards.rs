//! dashboards/: the alert rules pass `promtool check rules` and their unit
//! tests, the scrape example is a valid config, and the Grafana dashboard is
//! provisionable and only asks for metrics the agent exports.

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

/// Every `ringworker_*` metric name the agent exports.
fn exported() -> BTreeSet<String> {
    use ringworker::metrics::*;
    let mut names: BTreeSet<String> = [
        SESSION_BYTES_SENT,
        SESSION_BYTES_RECEIVED,
        BYTES_SENT_TOTAL,
        BYTES_RECEIVED_TOTAL,
        SESSION_CONNECTED,
        TASKS_IN_FLIGHT,
        TASKS_TOTAL,
        RECONNECTS_TOTAL,
        BUILD_INFO,
        TLS_HANDSHAKE_FAILURES_TOTAL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for suffix in ["_bucket", "_sum", "_count"] {
        names.insert(format!("{TASK_DURATION}{suffix}"));
    }
    names
}

fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ringworker_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = std::fs::read_to_string(dashboards().join("alerts.yml")).unwrap();
    for alert in [
        "RingworkerAgentDown",
        "RingworkerNoSessionConnected",
        "RingworkerTaskFailureRatioHigh",
        "RingworkerReconnectStorm",
        "RingworkerBytesFlat",
        "RingworkerTlsHandshakesFailing",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
    }
    let unknown: Vec<_> = referenced(&rules)
        .difference(&exported())
        .cloned()
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts use metrics the agent does not export: {unknown:?}"
    );
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
        "Bytes/s per instance",
        "Bytes/s per session",
        "Session byte totals (current connection)",
        "Connected sessions",
        "Tasks/s by handler and outcome",
        "Task latency p50 / p99 (handler time)",
        "Tasks in flight",
        "Reconnects",
    ] {
        assert!(
            titles.contains(&wanted),
            "panel {wanted:?} missing from {titles:?}"
        );
    }
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "filtered by instance: {expr}"
            );
            let unknown: Vec<_> = referenced(expr).difference(&exported()).cloned().collect();
            assert!(unknown.is_empty(), "{expr} uses {unknown:?}");
        }
    }
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
