//! The agent as the shipped systemd unit runs it: the files laid out by
//! `scripts/install.sh` and the unit (credential copy included), the agent
//! running as an unprivileged user; and the notifications it sends on
//! `NOTIFY_SOCKET` (READY, STATUS, WATCHDOG, RELOADING, STOPPING).

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::manager::{echo, stop, until_goodbye};
use common::process::Spawned;
use common::{tcp_listener, TIMEOUT};
use ringworker::manager::{ManagerConfig, ManagerConn};
use ringworker::protocol::Hello;
use ringworker::transport::BlockingListener;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("ringworker-systemd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A user and group id no account has, in the range systemd gives dynamic
/// users (61184-65519), so the agent owns nothing but what is handed to it.
fn service_uid() -> u32 {
    61184 + std::process::id() % 4000
}

/// Accept the agent's connection and complete its handshake; if the agent
/// exits first, fail with what it said.
fn accept_from(
    listener: &BlockingListener,
    child: &mut Spawned,
    config: ManagerConfig,
) -> (ManagerConn, Hello) {
    accept_maybe_tls(listener, child, config, None)
}

/// [`accept_from`], serving TLS when `tls` is given.
fn accept_maybe_tls(
    listener: &BlockingListener,
    child: &mut Spawned,
    config: ManagerConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (ManagerConn, Hello) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok(stream) => break stream,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.exited() {
                    panic!(
                        "the agent exited ({status}) before connecting:\n{}",
                        child.final_log()
                    );
                }
                if Instant::now() >= deadline {
                    panic!("the agent did not connect:\n{}", child.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("accept: {err}"),
        }
    };
    listener.set_nonblocking(false).unwrap();
    let mut conn = match tls {
        Some(tls) => ManagerConn::new_tls(stream, config, tls).unwrap(),
        None => ManagerConn::new(stream, config),
    };
    let hello = conn.handshake(TIMEOUT).expect("the agent says HELLO");
    (conn, hello)
}

/// The `[Service]` settings of a unit file, in order (`Key`, `value`).
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((key, value)) = line.split_once('=') {
                settings.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    settings
}

fn assert_mode_and_owner(path: &Path, mode: u32, uid: u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid()),
        (mode, uid),
        "{} mode {:o} owner {}",
        path.display(),
        meta.mode() & 0o7777,
        meta.uid()
    );
}

/// What systemd does (for the unit and its drop-ins) before it starts the unit's ExecStart under
/// `DynamicUser=yes`: copy each `LoadCredential=` file into the
/// credentials directory (0500, files 0400, owned by the service user), and
/// build the environment from `Environment=` with `%d` expanded.
/// Returns the command ExecStart names, with `/` mapped to `root`.
fn command_as_the_unit_starts_it(root: &Path, uid: u32) -> Command {
    let system = root.join("etc/systemd/system");
    let unit = std::fs::read_to_string(system.join("ringworker.service")).unwrap();
    let mut settings = service_settings(&unit);
    // Drop-ins add to the unit, in the order of their names.
    if let Ok(dir) = std::fs::read_dir(system.join("ringworker.service.d")) {
        let mut dropins: Vec<PathBuf> = dir.map(|entry| entry.unwrap().path()).collect();
        dropins.sort();
        for dropin in dropins {
            settings.extend(service_settings(&std::fs::read_to_string(dropin).unwrap()));
        }
    }
    let setting = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(setting("DynamicUser"), ["yes"]);
    let credentials = root.join("run/credentials/ringworker.service");
    std::fs::create_dir_all(&credentials).unwrap();
    for load in setting("LoadCredential") {
        let (id, source) = load.split_once(':').unwrap();
        let copy = credentials.join(id);
        std::fs::copy(root.join(source.trim_start_matches('/')), &copy).unwrap();
        std::os::unix::fs::chown(&copy, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    std::os::unix::fs::chown(&credentials, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o500)).unwrap();
    let exec: Vec<&str> = setting("ExecStart")[0].split_whitespace().collect();
    let in_root = |arg: &str| {
        if arg.starts_with('/') {
            root.join(arg.trim_start_matches('/'))
                .to_string_lossy()
                .into_owned()
        } else {
            arg.to_owned()
        }
    };
    let mut command = Command::new(in_root(exec[0]));
    command
        .args(exec[1..].iter().map(|arg| in_root(arg)))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CREDENTIALS_DIRECTORY", &credentials);
    for assignment in setting("Environment") {
        let (name, value) = assignment.split_once('=').unwrap();
        command.env(name, value.replace("%d", credentials.to_str().unwrap()));
    }
    command.uid(uid).gid(uid);
    command
}

/// `DESTDIR=root scripts/install.sh` with the binary under test; returns
/// what it printed.
fn install_into(root: &Path) -> String {
    let output = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("DESTDIR", root)
        .env("RINGWORKER_BIN", env!("CARGO_BIN_EXE_ringworker"))
        .env("RINGWORKER_LOADGEN_BIN", common::loadgen_bin())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `install -m 0600 /dev/stdin PATH`, the token on its standard input.
fn install_secret(path: &Path, secret: &[u8]) {
    let mut install = Command::new("install")
        .args(["-m", "0600", "/dev/stdin"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    install.stdin.take().unwrap().write_all(secret).unwrap();
    assert!(install.wait().unwrap().success());
    assert_mode_and_owner(path, 0o600, 0);
}

#[test]
fn the_installed_unit_runs_the_agent_unprivileged_with_the_token_as_a_credential() {
    let root = temp_dir("installed");
    let stdout = install_into(&root);
    assert!(
        stdout.contains("install -m 0600 /dev/stdin /etc/ringworker/token"),
        "install.sh says how to place the token:\n{stdout}"
    );
    for (path, mode) in [
        ("usr/local/bin/ringworker", 0o755),
        ("usr/local/share/man/man1/ringworker-run.1", 0o644),
        ("usr/local/bin/ringworker-loadgen", 0o755),
        ("usr/local/share/man/man1/ringworker-loadgen.1", 0o644),
        (
            "usr/local/share/bash-completion/completions/ringworker-loadgen",
            0o644,
        ),
        ("etc/systemd/system/ringworker.service", 0o644),
        ("etc/default/ringworker", 0o644),
        ("etc/ringworker", 0o755),
        ("etc/ringworker/agent.toml", 0o644),
    ] {
        assert_mode_and_owner(&root.join(path), mode, 0);
    }

    // The operator's steps: the manager in agent.toml (plaintext here, so
    // the tls_* keys go, as its comment says; the metrics port is the
    // kernel's choice), and the token as install.sh says.
    let listener = tcp_listener();
    let config = root.join("etc/ringworker/agent.toml");
    let edited: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("tls_"))
        .map(|line| {
            if line.starts_with("manager = ") {
                format!("manager = \"{}\"\n", listener.local_endpoint().unwrap())
            } else if line.starts_with("metrics_addr = ") {
                "metrics_addr = \"127.0.0.1:0\"\n".to_owned()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&config, edited).unwrap();
    assert_mode_and_owner(&config, 0o644, 0);
    let token = root.join("etc/ringworker/token");
    install_secret(&token, b"s3cret-token\n");

    let uid = service_uid();
    // Control: the service user cannot read the token file itself, so the
    // credential is what lets the agent in (and this really runs
    // unprivileged).
    let output = command_as_the_unit_starts_it(&root, uid)
        .env("RINGWORKER_TOKEN_FILE", &token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read token file") && stderr.contains("Permission denied"),
        "{stderr}"
    );

    let mut child = Spawned::new(command_as_the_unit_starts_it(&root, uid));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![uid.to_string(); 4],
        "{uids}"
    );
    let manager = ManagerConfig {
        token: Some("s3cret-token".into()),
        ..ManagerConfig::default()
    };
    let (mut conn, hello) = accept_from(&listener, &mut child, manager);
    assert_eq!(hello.token.as_deref(), Some("s3cret-token"));
    echo(&mut conn, 1);
    let status = stop(&mut child, conn);
    let stderr = child.final_log();
    assert!(status.success(), "exit {status}:\n{stderr}");
    // The config asks for JSON logs: every line is JSON.
    for line in stderr.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_tls_drop_in_hands_root_only_certificates_to_the_unprivileged_agent() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let root = temp_dir("tls");
    install_into(&root);
    install_secret(&root.join("etc/ringworker/token"), b"tls-token\n");
    // A fleet CA, the manager's certificate and the worker's.
    let pki = temp_dir("tls-pki");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (manager_cert, manager_key) = leaf("127.0.0.1");
    let (worker_cert, worker_key) = leaf("worker-1.fleet.example");
    for (name, text) in [
        ("ca.pem", ca.pem()),
        ("manager.pem", manager_cert),
        ("manager.key", manager_key),
        ("worker.pem", worker_cert),
        ("worker.key", worker_key),
    ] {
        std::fs::write(pki.join(name), text).unwrap();
    }
    // The steps tls.conf gives: root-only files, and the drop-in.
    let tls = root.join("etc/ringworker/tls");
    let run = |args: &[&std::ffi::OsStr]| {
        let status = Command::new("install").args(args).status().unwrap();
        assert!(status.success(), "install {args:?}");
    };
    run(&[
        "-d".as_ref(),
        "-m".as_ref(),
        "0700".as_ref(),
        tls.as_os_str(),
    ]);
    run(&[
        "-m".as_ref(),
        "0600".as_ref(),
        pki.join("ca.pem").as_os_str(),
        pki.join("worker.pem").as_os_str(),
        pki.join("worker.key").as_os_str(),
        tls.as_os_str(),
    ]);
    let dropin = root.join("etc/systemd/system/ringworker.service.d/tls.conf");
    run(&[
        "-D".as_ref(),
        "-m".as_ref(),
        "0644".as_ref(),
        repo()
            .join("deploy/systemd/ringworker.service.d/tls.conf")
            .as_os_str(),
        dropin.as_os_str(),
    ]);
    assert_mode_and_owner(&tls, 0o700, 0);
    assert_mode_and_owner(&tls.join("worker.key"), 0o600, 0);
    // agent.toml as shipped, but for the manager's address: its tls_* paths
    // name files the service user cannot read; the drop-in's environment
    // points at the credentials instead.
    let listener = tcp_listener();
    let port = listener.local_endpoint().unwrap().to_string();
    let port = port.rsplit(':').next().unwrap();
    let config = root.join("etc/ringworker/agent.toml");
    let edited: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(|line| {
            if line.starts_with("manager = ") {
                format!("manager = \"tls://127.0.0.1:{port}\"\n")
            } else if line.starts_with("metrics_addr = ") {
                "metrics_addr = \"127.0.0.1:0\"\n".to_owned()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(edited.contains("tls_key = \"/etc/ringworker/tls/worker.key\""));
    std::fs::write(&config, edited).unwrap();
    let server = ringworker::transport::tls::server_config(
        &pki.join("manager.pem"),
        &pki.join("manager.key"),
        Some(&pki.join("ca.pem")),
    )
    .unwrap();
    let mut child = Spawned::new(command_as_the_unit_starts_it(&root, service_uid()));
    let manager = ManagerConfig {
        token: Some("tls-token".into()),
        ..ManagerConfig::default()
    };
    let (mut conn, hello) = accept_maybe_tls(&listener, &mut child, manager, Some(server));
    assert_eq!(hello.token.as_deref(), Some("tls-token"));
    assert!(conn.is_tls());
    assert_eq!(
        conn.peer_certificates().map(<[_]>::len),
        Some(1),
        "the worker presents its certificate (mutual TLS)"
    );
    echo(&mut conn, 1);
    let status = stop(&mut child, conn);
    assert!(status.success(), "exit {status}:\n{}", child.final_log());
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&pki);
}

/// Datagrams arriving on a test `NOTIFY_SOCKET`, each with its arrival time.
struct NotifySocket {
    path: PathBuf,
    messages: mpsc::Receiver<(Instant, String)>,
}

impl NotifySocket {
    fn bind(name: &str) -> NotifySocket {
        let path = std::env::temp_dir().join(format!(
            "ringworker-notify-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), text)).is_err() {
                    break;
                }
            }
        });
        NotifySocket { path, messages }
    }

    /// Every message until one has a line that `wanted` accepts (that one
    /// included), or panic after `limit`.
    fn until(
        &self,
        what: &str,
        limit: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) => {
                    let done = message.1.lines().any(&wanted);
                    seen.push(message);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no {what} within {limit:?}; got {seen:#?}"),
            }
        }
    }

    /// Every message that arrives within `limit`.
    fn during(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while let Ok((_, text)) = self
            .messages
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            seen.push(text);
        }
        seen
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn has_line(messages: &[String], prefix: &str) -> bool {
    messages
        .iter()
        .any(|m| m.lines().any(|l| l.starts_with(prefix)))
}

fn notify_agent(listener: &BlockingListener, socket: &NotifySocket, config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args(["run", "--config"])
        .arg(config)
        .args(["--manager", &listener.local_endpoint().unwrap().to_string()])
        .args([
            "--metrics-addr",
            "off",
            "--reconnect-min",
            "20",
            "--reconnect-max",
            "200",
        ])
        .env("NOTIFY_SOCKET", &socket.path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    command
}

fn lines_of(messages: &[(Instant, String)]) -> Vec<String> {
    messages.iter().map(|(_, m)| m.clone()).collect()
}

#[test]
fn notify_socket_hears_ready_after_the_handshake_status_watchdog_reload_and_stopping() {
    let dir = temp_dir("notify");
    let config = dir.join("agent.toml");
    std::fs::write(&config, "sessions = 1\nlog_format = \"text\"\n").unwrap();
    let socket = NotifySocket::bind("watchdog");
    let listener = tcp_listener();
    let started = Instant::now();
    let mut command = notify_agent(&listener, &socket, &config);
    command.env("WATCHDOG_USEC", "2000000");
    let mut child = Spawned::new(command);
    // The agent dials at once, but the manager has not answered HELLO:
    // status and watchdog pings, no readiness.
    let mut all: Vec<String> = socket.during(Duration::from_millis(2500));
    assert!(
        !has_line(&all, "READY=1"),
        "READY=1 before the handshake: {all:#?}"
    );
    assert!(
        has_line(&all, "STATUS=connecting to tcp://127.0.0.1:"),
        "{all:#?}"
    );
    let handshake = Instant::now();
    let (mut conn, _) = accept_from(&listener, &mut child, ManagerConfig::default());
    let ready = socket.until("READY=1", Duration::from_secs(10), |l| l == "READY=1");
    let (at, message) = ready.last().unwrap();
    assert!(*at >= handshake, "READY=1 arrived before the handshake");
    assert!(
        message
            .lines()
            .any(|l| l.starts_with("STATUS=1/1 sessions connected to tcp://127.0.0.1:")),
        "{message}"
    );
    all.extend(lines_of(&ready));
    for id in 1..=3 {
        echo(&mut conn, id);
    }
    let status = socket.until("a STATUS with 3 tasks", Duration::from_secs(10), |l| {
        l.starts_with("STATUS=1/1 sessions connected to ") && l.ends_with(", 3 tasks done")
    });
    all.extend(lines_of(&status));
    // WATCHDOG_USEC=2 s: a ping every second or so, whatever else happens.
    let pings = |all: &[String]| {
        all.iter()
            .flat_map(|m| m.lines())
            .filter(|l| *l == "WATCHDOG=1")
            .count()
    };
    while pings(&all) < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "fewer than 4 WATCHDOG=1 in 30 s: {all:#?}"
        );
        all.extend(socket.during(Duration::from_millis(500)));
    }
    // SIGHUP: RELOADING=1 with its time, then READY=1.
    child.signal("HUP");
    let reload = socket.until("READY=1 after RELOADING=1", Duration::from_secs(10), |l| {
        l == "READY=1"
    });
    let reloading = reload
        .iter()
        .position(|(_, m)| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {reload:#?}"));
    assert!(
        reload[reloading].1.contains("MONOTONIC_USEC="),
        "{reload:#?}"
    );
    assert!(reloading < reload.len() - 1, "{reload:#?}");
    // SIGTERM: STOPPING=1, then the drain.
    child.signal("TERM");
    socket.until("STOPPING=1", Duration::from_secs(10), |l| l == "STOPPING=1");
    until_goodbye(conn);
    let status = child.exit_within(TIMEOUT);
    let stderr = child.final_log();
    assert!(status.success(), "exit {status}:\n{stderr}");
    assert!(
        stderr.contains("systemd watchdog: WATCHDOG=1 every 1s"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_watchdog_usec_no_watchdog_ping_is_sent() {
    let dir = temp_dir("no-watchdog");
    let config = dir.join("agent.toml");
    std::fs::write(&config, "sessions = 1\n").unwrap();
    let socket = NotifySocket::bind("no-watchdog");
    let listener = tcp_listener();
    let mut child = Spawned::new(notify_agent(&listener, &socket, &config));
    let (conn, _) = accept_from(&listener, &mut child, ManagerConfig::default());
    let mut all = lines_of(&socket.until("READY=1", Duration::from_secs(10), |l| l == "READY=1"));
    all.extend(socket.during(Duration::from_secs(3)));
    let status = stop(&mut child, conn);
    assert!(status.success(), "exit {status}:\n{}", child.final_log());
    all.extend(socket.during(Duration::from_millis(200)));
    assert!(!has_line(&all, "WATCHDOG=1"), "{all:#?}");
    assert!(has_line(&all, "STOPPING=1"), "{all:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
