//! deploy/: the systemd unit passes `systemd-analyze verify`, the Kubernetes
//! manifests pass an offline OpenAPI validation (`kubernetes-validate`,
//! installed by `.ci/run`), the PodMonitor has what the operator requires,
//! the shipped configs pass `check-config`, and completions and the man page
//! are generated from the CLI definition.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringworker-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| {
            panic!("{program} is not installed ({err}); scripts/test installs it")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn systemd_unit_verifies_and_is_hardened_with_io_uring_allowed() {
    let unit = std::fs::read_to_string(deploy().join("systemd/ringworker.service")).unwrap();
    // Verify a copy whose ExecStart names the binary just built.
    let dir = temp_dir("systemd");
    let copy = dir.join("ringworker.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/ringworker",
            env!("CARGO_BIN_EXE_ringworker"),
        ),
    )
    .unwrap();
    let (ok, output) = run("systemd-analyze", &["verify", copy.to_str().unwrap()], &dir);
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify:\n{output}"
    );
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "LoadCredential=token:/etc/ringworker/token",
        "Environment=RINGWORKER_TOKEN_FILE=%d/token",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ConfigurationDirectoryMode=0755",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "{line} missing");
    }
    let filter = unit
        .lines()
        .find(|l| l.starts_with("SystemCallFilter=@system-service"))
        .unwrap();
    for syscall in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(filter.contains(syscall), "the filter must allow {syscall}");
    }
    // A config or permission error (exit 2) and a refused token (exit 1)
    // are retried, not left failed for good.
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("RestartPreventExitStatus=")),
        "every failure restarts"
    );
    let seconds = |key: &str| -> u64 {
        let value = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing"));
        match value.strip_suffix("min") {
            Some(minutes) => minutes.parse::<u64>().unwrap() * 60,
            None => value.trim_end_matches('s').parse().unwrap(),
        }
    };
    // READY=1 waits for the first handshake: long enough for a manager
    // that starts late, never for ever (the boot waits for this unit).
    assert!((60..=600).contains(&seconds("TimeoutStartSec=")));
    // The loops beat every second and the agent pings at half the period.
    assert!((10..=120).contains(&seconds("WatchdogSec=")));
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap();
    assert!(
        stop > 30,
        "TimeoutStopSec {stop} s must exceed the 30 s drain timeout"
    );
    // The TLS drop-in, applied on top of the unit, verifies too and hands
    // the files over as credentials.
    let dropin =
        std::fs::read_to_string(deploy().join("systemd/ringworker.service.d/tls.conf")).unwrap();
    let with_tls = dir.join("ringworker-tls.service");
    std::fs::write(
        &with_tls,
        format!(
            "{}\n{dropin}",
            unit.replace(
                "/usr/local/bin/ringworker",
                env!("CARGO_BIN_EXE_ringworker"),
            )
        ),
    )
    .unwrap();
    let (ok, output) = run(
        "systemd-analyze",
        &["verify", with_tls.to_str().unwrap()],
        &dir,
    );
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify (with tls.conf):\n{output}"
    );
    for name in ["ca", "cert", "key"] {
        assert!(
            dropin.contains(&format!("LoadCredential=tls-{name}:"))
                && dropin.contains(&format!("=%d/tls-{name}")),
            "tls.conf must load and point at tls-{name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kubernetes_manifests_validate_against_the_openapi_schemas() {
    let dir = deploy().join("kubernetes");
    let files = [
        "namespace.yaml",
        "configmap.yaml",
        "secret.yaml",
        "daemonset.yaml",
        "deployment.yaml",
    ];
    let mut args = vec!["--strict"];
    args.extend(files);
    let (ok, output) = run("kubernetes-validate", &args, &dir);
    assert!(ok, "kubernetes-validate:\n{output}");
    for file in files {
        assert!(
            output.contains(&format!("{file} passed")),
            "{file} not validated:\n{output}"
        );
    }
    for workload in ["daemonset.yaml", "deployment.yaml"] {
        let text = std::fs::read_to_string(dir.join(workload)).unwrap();
        let grace: u64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        assert!(
            grace > 30,
            "{workload}: grace period {grace} s must exceed the drain timeout"
        );
        for needle in [
            "path: /healthz",
            "path: /readyz",
            "secretName: ringworker-token",
            "secretName: ringworker-tls",
            "mountPath: /var/run/secrets/ringworker-tls",
            "seccompProfile:",
        ] {
            assert!(text.contains(needle), "{workload} lacks {needle}");
        }
    }
}

#[test]
fn pod_monitor_has_the_fields_the_prometheus_operator_requires() {
    // A CRD: no OpenAPI schema ships with kubernetes-validate, so check it as
    // strict YAML with the operator's required fields.
    let script = r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
assert doc["kind"] == "PodMonitor"
assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
spec = doc["spec"]
assert spec["selector"]["matchLabels"], "selector"
endpoints = spec["podMetricsEndpoints"]
assert endpoints and all(e.get("port") or e.get("targetPort") for e in endpoints), "endpoints need a port"
allowed = {"port", "targetPort", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"}
assert all(set(e) <= allowed for e in endpoints), "unknown endpoint fields"
print("ok")
"#;
    let path = deploy().join("kubernetes/podmonitor.yaml");
    let (ok, output) = run(
        "python3",
        &["-c", script, path.to_str().unwrap()],
        &deploy(),
    );
    assert!(ok && output.trim() == "ok", "{output}");
}

#[test]
fn shipped_configs_pass_check_config() {
    let dir = temp_dir("config");
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let example = std::fs::read_to_string(deploy().join("config/agent.toml")).unwrap();
    let configmap = std::fs::read_to_string(deploy().join("kubernetes/configmap.yaml")).unwrap();
    let embedded: String = configmap
        .split("agent.toml: |")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    // TLS material where the examples expect it (the paths are rewritten).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let worker_key = rcgen::KeyPair::generate().unwrap();
    let worker = rcgen::CertificateParams::new(vec!["worker.example".to_owned()])
        .unwrap()
        .signed_by(&worker_key, &ca, &ca_key)
        .unwrap();
    let tls_files = [
        ("ca.pem", ca.pem()),
        ("worker.pem", worker.pem()),
        ("worker.key", worker_key.serialize_pem()),
    ];
    for (file, text) in &tls_files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let tls_paths = |text: String, prefix: &str, names: [&str; 3]| {
        let mut text = text;
        for (name, (file, _)) in names.iter().zip(&tls_files) {
            text = text.replace(
                &format!("{prefix}/{name}"),
                dir.join(file).to_str().unwrap(),
            );
        }
        text
    };
    let example = tls_paths(
        example,
        "/etc/ringworker/tls",
        ["ca.pem", "worker.pem", "worker.key"],
    );
    let embedded = tls_paths(
        embedded,
        "/var/run/secrets/ringworker-tls",
        ["ca.crt", "tls.crt", "tls.key"],
    );
    for (name, text, token_path) in [
        ("example", example, "/etc/ringworker/token"),
        ("configmap", embedded, "/var/run/secrets/ringworker/token"),
    ] {
        assert!(
            text.contains("manager = \"tls://")
                && !text.contains("\"/etc/ringworker/tls/")
                && !text.contains("\"/var/run/secrets/ringworker-tls/"),
            "{name}: the example dials TLS with the test's files:\n{text}"
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text.replace(token_path, token.to_str().unwrap())).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
            .args(["check-config", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("token = \"<redacted>\"") && !stdout.contains("t0ken"),
            "{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success()
                && text.contains("check-config")
                && text.contains("max-in-flight"),
            "{shell}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .arg("manpage")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.starts_with(".ie") && text.contains(".TH ringworker 1"),
        "{text}"
    );
    // The pages the top one refers to exist, with every option of `run`, its
    // environment variables, signals and exit status.
    for sub in ["run", "demo", "check-config", "completions", "manpage"] {
        let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
            .args(["manpage", sub])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains(&format!(".TH ringworker-{sub} 1")),
            "{sub}: {text}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["manpage", "run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "max\\-in\\-flight",
        "RINGWORKER_DRAIN_TIMEOUT",
        "Exit status: 0 after a clean drain",
        "SIGTERM",
        "SIGHUP re\\-reads",
        "READY=1",
    ] {
        assert!(text.contains(needle), "ringworker-run(1) lacks {needle}");
    }
}
