//! The `ringworker` binary as an operator runs it: signals, exit codes and
//! one-line errors.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Spawned;
use common::{accept_with, tcp_listener, TIMEOUT};
use ringworker::manager::{ManagerConfig, ManagerEvent};
use ringworker::runtime::RuntimeKind;

for_each_runtime!(
    sigterm_drains_in_flight_tasks_then_exits_zero,
    refused_hello_exits_non_zero_with_the_reason,
);

fn agent_command(manager: &str, runtime: RuntimeKind) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args([
            "run",
            "--manager",
            manager,
            "--runtime",
            runtime.as_str(),
            "--metrics-addr",
            "off",
        ])
        .args(["--reconnect-min", "20", "--reconnect-max", "200"]);
    command
}

fn sigterm_drains_in_flight_tasks_then_exits_zero(runtime: RuntimeKind) {
    let (mut child, mut conn) = agent_with_sleeping_tasks(runtime, 8, 300);
    let mut pending: HashSet<u64> = (1..=8).collect();
    child.signal("TERM");
    let mut saw_drain = false;
    let (counts, goodbye_len) = loop {
        let event = match conn.next_event(TIMEOUT) {
            Ok(event) => event,
            Err(err) => {
                let status = child.exit_within(TIMEOUT);
                panic!(
                    "drain did not complete ({err}); agent {status}:\n{}",
                    child.final_log()
                );
            }
        };
        match event {
            ManagerEvent::Drain => saw_drain = true,
            ManagerEvent::Result { id, failed, .. } => {
                assert!(!failed, "task {id} must finish");
                assert!(pending.remove(&id));
            }
            ManagerEvent::Goodbye { counts, frame_len } => {
                break (counts.expect("counts"), frame_len)
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_drain, "DRAIN precedes the GOODBYE");
    assert!(
        pending.is_empty(),
        "every accepted task answered: {pending:?}"
    );
    conn.read_to_end(TIMEOUT).expect("agent closes");
    assert_eq!(counts.bytes_received, conn.bytes_sent());
    assert_eq!(
        counts.bytes_sent + goodbye_len as u64,
        conn.bytes_received()
    );
    drop(conn);
    let status = child.exit_within(TIMEOUT);
    let stderr = child.final_log();
    assert!(status.success(), "exit {status}, stderr:\n{stderr}");
    // The line ends as AGENT.md shows it, so a pattern anchored at its end
    // (`... 812345 tasks$`) matches.
    let summary = stderr
        .lines()
        .find(|line| line.contains("session 0 closed: sent "))
        .unwrap_or_else(|| panic!("summary line logged:\n{stderr}"));
    assert!(summary.ends_with(" tasks"), "{summary}");
}

/// Start an agent, give it `count` `sleep` tasks of `ms` each and wait for
/// their ACKs: a drain then has work to finish.
fn agent_with_sleeping_tasks(
    runtime: RuntimeKind,
    count: u64,
    ms: u32,
) -> (Spawned, ringworker::manager::ManagerConn) {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let child = Spawned::new(agent_command(&endpoint, runtime));
    let (mut conn, _) = accept_with(&listener, ManagerConfig::default());
    for id in 1..=count {
        conn.send_task(id, "sleep", &ms.to_be_bytes(), true)
            .unwrap();
    }
    let mut acks = 0;
    while acks < count {
        if let ManagerEvent::Ack { .. } = conn.next_event(TIMEOUT).unwrap() {
            acks += 1;
        }
    }
    (child, conn)
}

#[test]
fn a_repeated_sigterm_within_250_ms_is_the_same_request() {
    // `timeout 60 ringworker run ...` signals the agent and then its process
    // group: two SIGTERMs microseconds apart. Here: two at once, a third
    // 50 ms later, all within 250 ms of the first.
    let (mut child, mut conn) = agent_with_sleeping_tasks(RuntimeKind::Blocking, 4, 400);
    let pid = child.pid().to_string();
    let status = Command::new("kill")
        .args(["-s", "TERM", &pid, &pid])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(50));
    child.signal("TERM");
    let mut results = 0;
    loop {
        let event = match conn.next_event(TIMEOUT) {
            Ok(event) => event,
            Err(err) => {
                let status = child.exit_within(TIMEOUT);
                panic!(
                    "no clean drain ({err}); agent {status}:\n{}",
                    child.final_log()
                );
            }
        };
        match event {
            ManagerEvent::Result { id, failed, .. } => {
                assert!(!failed, "task {id} finishes");
                results += 1;
            }
            ManagerEvent::Goodbye { .. } => break,
            _ => {}
        }
    }
    assert_eq!(results, 4, "every accepted task answered before GOODBYE");
    conn.read_to_end(TIMEOUT).expect("agent closes");
    drop(conn);
    let status = child.exit_within(TIMEOUT);
    let stderr = child.final_log();
    assert_eq!(status.code(), Some(0), "drained and exited 0:\n{stderr}");
    assert!(!stderr.contains("second signal"), "{stderr}");
}

#[test]
fn a_second_sigterm_after_250_ms_exits_at_once_with_130() {
    let (mut child, _conn) = agent_with_sleeping_tasks(RuntimeKind::Blocking, 2, 10_000);
    child.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.running(), "still draining its 10 s tasks");
    let sent = Instant::now();
    child.signal("TERM");
    let status = child.exit_within(TIMEOUT);
    let stderr = child.final_log();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "exits at once, not after the drain: {:?}",
        sent.elapsed()
    );
    assert!(stderr.contains("second signal"), "{stderr}");
}

fn refused_hello_exits_non_zero_with_the_reason(runtime: RuntimeKind) {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let mut child = Spawned::new(agent_command(&endpoint, runtime));
    let config = ManagerConfig {
        token: Some("the-right-token".into()),
        ..ManagerConfig::default()
    };
    let stream = listener.accept().unwrap();
    let mut conn = ringworker::manager::ManagerConn::new(stream, config);
    assert!(
        conn.handshake(TIMEOUT).is_err(),
        "a HELLO without the token is refused"
    );
    let status = child.exit_within(TIMEOUT);
    let stderr = child.final_log();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("unauthorized"),
        "last line names the reason: {last}"
    );
    assert!(!stderr.contains("the-right-token"));
}

#[test]
fn bad_endpoint_is_one_line_and_exit_two() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args([
            "run",
            "--manager",
            "localhost:7000",
            "--metrics-addr",
            "off",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no scheme"), "{stderr}");
}

#[test]
fn missing_manager_says_how_to_give_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["run", "--metrics-addr", "off"])
        .env_remove("RINGWORKER_MANAGER")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--manager"), "{stderr}");
}

#[test]
fn unreachable_manager_does_not_spin_and_stops_on_sigterm() {
    // Bind then drop: nothing listens on that port.
    let endpoint = tcp_listener().local_endpoint().unwrap().to_string();
    let mut child = Spawned::new(agent_command(&endpoint, RuntimeKind::Blocking));
    std::thread::sleep(Duration::from_millis(800));
    assert!(child.running(), "agent keeps retrying");
    child.signal("TERM");
    let status = child.exit_within(TIMEOUT);
    let stderr = child.final_log();
    assert!(status.success(), "{stderr}");
    let attempts = stderr.matches("cannot reach manager").count();
    assert!(
        (1..=20).contains(&attempts),
        "backs off instead of spinning: {attempts} attempts in 0.8 s\n{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn check_config_redacts_the_token_and_names_unknown_keys() {
    let dir = std::env::temp_dir().join(format!("rw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "very-secret-token\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "manager = \"tcp://127.0.0.1:7000\"\nsessions = 3\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("sessions = 3"), "{stdout}");
    assert!(stdout.contains("token = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains("very-secret-token"));

    std::fs::write(
        &config,
        "manager = \"tcp://127.0.0.1:7000\"\nmax_bodyy = 5\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("max_bodyy")
            && stderr.contains("line 2")
            && stderr.contains("did you mean `max_body`?"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_shows_declared_handlers_with_the_program_found_on_path() {
    let dir = std::env::temp_dir().join(format!("rw-cli-handlers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "manager = \"tcp://127.0.0.1:7000\"\n\n[handlers.upper]\nmode = \"exec\"\n\
         command = [\"tr\", \"a-z\", \"A-Z\"]\ntimeout = \"5s\"\n",
    )
    .unwrap();
    let check = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ringworker"))
            .args(["check-config", "--config"])
            .arg(config)
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let output = check(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tr = ["/usr/bin/tr", "/bin/tr"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("tr is installed");
    assert!(stdout.contains("[handlers.upper]"), "{stdout}");
    assert!(stdout.contains(tr), "the resolved program in:\n{stdout}");
    // What check-config prints is a config file it accepts again.
    let again = dir.join("again.toml");
    std::fs::write(&again, stdout.as_bytes()).unwrap();
    let output = check(&again);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A program that is nowhere on PATH, and a built-in's name: refused.
    for (table, expect) in [
        (
            "[handlers.gone]\nmode = \"exec\"\ncommand = [\"no-such-program-here\"]\n",
            "handlers.gone",
        ),
        (
            "[handlers.echo]\nmode = \"exec\"\ncommand = [\"cat\"]\n",
            "handlers.echo",
        ),
    ] {
        std::fs::write(
            &config,
            format!("manager = \"tcp://127.0.0.1:7000\"\n{table}"),
        )
        .unwrap();
        let output = check(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_applies_the_environment_and_flags_as_run_does() {
    let dir = std::env::temp_dir().join(format!("rw-cli-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "manager = \"tcp://127.0.0.1:7000\"\nsessions = 4\n",
    )
    .unwrap();
    let check = |env: &[(&str, &str)], flags: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
        command
            .args(["check-config", "--config"])
            .arg(&config)
            .args(flags);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let output = check(&[("RINGWORKER_SESSIONS", "8")], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("sessions = 8"),
        "environment beats file: {stdout}"
    );
    let output = check(&[("RINGWORKER_SESSIONS", "8")], &["--sessions", "2"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("sessions = 2"),
        "flag beats environment: {stdout}"
    );
    // What `run` would refuse, check-config refuses too.
    let output = check(&[("RINGWORKER_SESSIONS", "abc")], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = check(
        &[
            ("RINGWORKER_MANAGER", "tls://127.0.0.1:7000"),
            ("RINGWORKER_TLS_CA", "/nonexistent/ca.pem"),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_explains_every_option() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--manager",
        "--runtime",
        "--sessions",
        "--threads",
        "--max-in-flight",
        "--max-body",
        "--worker-id",
        "--token-file",
        "--metrics-addr",
        "--reconnect-min",
        "--reconnect-max",
        "--config",
        "--log-format",
        "--drain-timeout",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--tls-server-name",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
    for topic in ["SIGHUP", "RELOADING=1", "READY=1", "WATCHDOG=1"] {
        assert!(help.contains(topic), "--help lacks {topic}");
    }
}

#[test]
fn demo_runs_a_verified_workload_with_no_setup() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["demo", "--duration", "2", "--sessions", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("demo passed"), "{stdout}");
    assert!(
        stdout.contains("/metrics"),
        "the HTTP listener is announced: {stdout}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("exact"))
        .collect();
    assert_eq!(rows.len(), 2, "one exact row per session:\n{stdout}");
}

#[test]
fn a_closed_stdout_ends_no_command_with_a_panic() {
    let dir = std::env::temp_dir().join(format!("rw-cli-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(&config, "manager = \"tcp://127.0.0.1:7000\"\n").unwrap();
    let config = config.display().to_string();
    for args in [
        vec!["completions", "bash"],
        vec!["manpage"],
        vec!["check-config", "--config", &config],
        vec!["demo", "--duration", "1", "--sessions", "1"],
    ] {
        // Every write to this stdout fails with EPIPE: its reader is gone.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            output.status.success(),
            "{args:?}: {:?} {stderr}",
            output.status
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn with_json_logs_the_fatal_line_is_json_too() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args([
            "run",
            "--manager",
            "tcp://127.0.0.1:1",
            "--log-format",
            "json",
        ])
        .arg(format!("--metrics-addr={}", taken.local_addr().unwrap()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().expect("a reason on stderr");
    let line: serde_json::Value = serde_json::from_str(last).expect("a JSON line");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("cannot listen on"),
        "{line}"
    );
}

/// Run a binary with `args`; its exit code and stderr.
fn run_for_stderr(bin: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(bin)
        .args(args)
        .env_remove("RINGWORKER_MANAGER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_argument_is_one_line_on_stderr_and_exit_two() {
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_ringworker"));
    let loadgen = common::loadgen_bin();
    let cases: &[(&std::path::Path, &[&str], &[&str])] = &[
        (
            agent,
            &["run", "--manager", "tcp://127.0.0.1:1", "--bogus"],
            &[
                "ringworker: unexpected argument '--bogus' found",
                "see 'ringworker run --help'",
            ],
        ),
        (
            agent,
            &["run", "--manager", "tcp://127.0.0.1:1", "--sesions", "3"],
            &[
                "ringworker: unexpected argument '--sesions' found",
                "; a similar argument exists: '--sessions'",
                "see 'ringworker run --help'",
            ],
        ),
        (
            agent,
            &["check-config", "--sessions", "abc"],
            &[
                "ringworker: invalid value 'abc' for '--sessions <N>'",
                "see 'ringworker check-config --help'",
            ],
        ),
        (
            agent,
            &["run", "--runtime", "fast"],
            &["invalid value 'fast'", "auto", "blocking"],
        ),
        (
            agent,
            &["bogus"],
            &[
                "ringworker: unrecognized subcommand 'bogus'",
                "see 'ringworker --help'",
            ],
        ),
        (
            &loadgen,
            &["--listen", "tcp://127.0.0.1:0", "--bogus"],
            &[
                "ringworker-loadgen: unexpected argument '--bogus' found",
                "see 'ringworker-loadgen --help'",
            ],
        ),
        (
            &loadgen,
            &["--sessions", "2"],
            &[
                "ringworker-loadgen: the following required arguments were not provided: --listen <ENDPOINT>",
            ],
        ),
        (
            &loadgen,
            &["--listen", "x", "--concurrency", "1", "--rate", "3"],
            &["ringworker-loadgen: the argument '--concurrency <CONCURRENCY>' cannot be used with '--rate <RATE>'"],
        ),
    ];
    for (bin, args, wanted) in cases {
        let (code, stderr) = run_for_stderr(bin, args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line on stderr:\n{stderr}"
        );
        for part in *wanted {
            assert!(stderr.contains(part), "{args:?}: {part:?} in {stderr}");
        }
        assert!(!stderr.contains("error:"), "{args:?}: {stderr}");
    }
    // Help and version keep clap's own output and status.
    for (bin, args) in [
        (agent, &["run", "--help"][..]),
        (agent, &["--version"][..]),
        (&loadgen, &["--help"][..]),
        (&loadgen, &["--version"][..]),
    ] {
        let output = Command::new(bin).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(output.stderr.is_empty(), "{args:?}");
        assert!(!output.stdout.is_empty(), "{args:?}");
    }
    let (code, stderr) = run_for_stderr(agent, &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("Usage: ringworker <COMMAND>") && stderr.contains("check-config"),
        "no subcommand: the help, as before: {stderr}"
    );
}

#[test]
fn check_config_names_every_unknown_key() {
    let dir = std::env::temp_dir().join(format!("rw-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "manager = \"tcp://127.0.0.1:7000\"\nsesions = 4\nmax_body = 65536\n\
         colour = \"blue\"\nmax-in-fligth = 8\n",
    )
    .unwrap();
    for subcommand in ["check-config", "run"] {
        let output = Command::new(env!("CARGO_BIN_EXE_ringworker"))
            .args([subcommand, "--metrics-addr", "off", "--config"])
            .arg(&config)
            .env_remove("RINGWORKER_MANAGER")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{subcommand}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{subcommand}: {stderr}");
        for part in [
            "3 unknown keys",
            "line 2: `sesions` (did you mean `sessions`?)",
            "line 4: `colour`",
            "line 5: `max-in-fligth` (did you mean `max-in-flight`?)",
        ] {
            assert!(stderr.contains(part), "{subcommand}: {part:?} in {stderr}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_prints_a_config_that_check_config_accepts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("rw-cli-round-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "round-trip-secret\n").unwrap();
    // Readable by others: allowed by the environment only.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "manager = \"tcp://127.0.0.1:7000\"\nsessions = 3\nmax-body = \"1MiB\"\n\
             worker_id = \"node \\\"7\\\" \\\\ caf\\u00e9\\u0301\"\nmetrics_addr = \"localhost:9464\"\n\
             token_file = \"{}\"\n",
            token.display()
        ),
    )
    .unwrap();
    let check = |path: &std::path::Path, env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
        command.args(["check-config", "--config"]).arg(path);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{}: {}\n{stdout}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let first = check(&config, &[("RINGWORKER_ALLOW_INSECURE_TOKEN_FILE", "1")]);
    assert!(!first.contains("round-trip-secret"), "{first}");
    assert!(first.contains("<redacted>"), "{first}");
    let printed = dir.join("effective.toml");
    std::fs::write(&printed, &first).unwrap();
    // The printed configuration is a config file, and the same one.
    let second = check(&printed, &[]);
    let body = |text: &str| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&first), body(&second));
    assert!(second.contains("sessions = 3"), "{second}");
    assert!(second.contains("max_body = 1048576"), "{second}");
    std::fs::remove_dir_all(&dir).unwrap();
}
