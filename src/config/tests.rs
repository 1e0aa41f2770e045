//! Resolving [`Config`]: defaults, precedence, the refused values and the
//! effective configuration.

use super::*;

/// Flags naming only the manager (the config tests' starting point).
pub(in crate::config) fn args(manager: Option<&str>) -> Settings {
    Settings {
        manager: manager.map(str::to_owned),
        ..Settings::default()
    }
}

#[test]
fn defaults_follow_the_contract() {
    let config = Config::merge(&args(Some("tcp://127.0.0.1:7000")), Settings::default()).unwrap();
    assert_eq!(config.runtime, RuntimeChoice::Auto);
    assert_eq!(config.sessions, 1);
    assert_eq!(config.max_in_flight, 64);
    assert_eq!(config.max_body, 16_777_216);
    assert_eq!(
        config.metrics_addr,
        MetricsAddr::Listen("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(config.reconnect_min, Duration::from_millis(100));
    assert!(config.session_metrics);
    assert_eq!(config.reconnect_max, Duration::from_secs(30));
    assert_eq!(config.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.log_format, LogFormat::Text);
}

#[test]
fn flags_override_the_file() {
    let file =
        parse_file("manager = \"tcp://10.0.0.1:1\"\nsessions = 4\nmax-body = \"1MiB\"\n").unwrap();
    let mut flags = args(Some("unix:///tmp/m.sock"));
    flags.sessions = Some(8);
    let config = Config::merge(&flags, file).unwrap();
    assert_eq!(config.manager, Endpoint::Unix("/tmp/m.sock".into()));
    assert_eq!(config.sessions, 8);
    assert_eq!(config.max_body, 1 << 20);
}

#[test]
fn sessions_and_worker_id_out_of_range_are_refused() {
    let file = parse_file("manager = \"tcp://10.0.0.1:1\"\n").unwrap();
    let mut flags = args(None);
    for (sessions, ok) in [
        (0, false),
        (1, true),
        (MAX_SESSIONS, true),
        (MAX_SESSIONS + 1, false),
    ] {
        flags.sessions = Some(sessions);
        assert_eq!(
            Config::merge(&flags, file.clone()).is_ok(),
            ok,
            "sessions {sessions}"
        );
    }
    flags.sessions = None;
    for (id, ok) in [
        ("", false),
        ("  ", false),
        ("a\nb", false),
        ("node-7", true),
    ] {
        flags.worker_id = Some(id.to_owned());
        let result = Config::merge(&flags, file.clone());
        assert_eq!(result.is_ok(), ok, "worker_id {id:?}");
    }
}

#[derive(clap::Parser)]
struct TestCli {
    #[command(flatten)]
    run: Settings,
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    use clap::Parser;
    // The only test that touches RINGWORKER_* variables.
    std::env::set_var("RINGWORKER_SESSIONS", "5");
    std::env::set_var("RINGWORKER_WORKER_ID", "from-env");
    let parsed = TestCli::try_parse_from(["ringworker", "--worker-id", "from-flag"]);
    std::env::remove_var("RINGWORKER_SESSIONS");
    std::env::remove_var("RINGWORKER_WORKER_ID");
    let args = parsed.unwrap().run;
    let file = parse_file(
        "manager = \"tcp://127.0.0.1:1\"\nsessions = 9\nworker_id = \"from-file\"\nmax_in_flight = 3\n",
    )
    .unwrap();
    let config = Config::merge(&args, file).unwrap();
    assert_eq!(config.worker_id, "from-flag", "flag beats env and file");
    assert_eq!(config.sessions, 5, "env beats file");
    assert_eq!(config.max_in_flight, 3, "file beats default");
    assert_eq!(config.drain_timeout, Duration::from_secs(30), "default");
}

#[test]
fn missing_manager_and_bad_values_are_clear() {
    let err = Config::merge(&args(None), Settings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--manager"), "{err}");
    let err = Config::merge(&args(Some("tcp://nohost")), Settings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("HOST:PORT"), "{err}");
    let mut flags = args(Some("tcp://h:1"));
    flags.reconnect_min = Some(5000);
    flags.reconnect_max = Some(100);
    assert!(Config::merge(&flags, Settings::default()).is_err());
}

#[test]
fn each_refused_value_is_its_own_error_with_its_message() {
    let refused = |edit: &dyn Fn(&mut Settings)| {
        let mut flags = args(Some("tcp://127.0.0.1:1"));
        edit(&mut flags);
        Config::merge(&flags, Settings::default()).unwrap_err()
    };
    let err = refused(&|s| s.sessions = Some(0));
    assert!(
        matches!(
            err,
            ConfigError::OutOfRange { key: "sessions", value: 0, min: 1, max } if max == u64::from(MAX_SESSIONS)
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "sessions 0 must be between 1 and 100000");
    let err = refused(&|s| s.threads = Some(0));
    assert!(matches!(
        err,
        ConfigError::OutOfRange { key: "threads", .. }
    ));
    assert_eq!(err.to_string(), "threads 0 must be between 1 and 1024");
    let err = refused(&|s| s.max_in_flight = Some(0));
    assert_eq!(
        err.to_string(),
        "max_in_flight 0 must be between 1 and 65536"
    );
    let err = refused(&|s| s.max_body = Some(ByteSize(127)));
    assert!(
        matches!(
            err,
            ConfigError::OutOfRange {
                key: "max_body",
                value: 127,
                min: 128,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "max_body 127 must be between 128 bytes and 1 GiB (1073741824)"
    );
    let err = refused(&|s| s.worker_id = Some(" ".into()));
    assert!(
        matches!(&err, ConfigError::WorkerId(id) if id == " "),
        "{err:?}"
    );
    let err = refused(&|s| s.metrics_addr = Some("nowhere".into()));
    assert!(matches!(&err, ConfigError::MetricsAddr(text) if text == "nowhere"));
    let err = refused(&|s| s.reconnect_min = Some(0));
    assert!(matches!(err, ConfigError::ReconnectRange { .. }));
    assert_eq!(
        err.to_string(),
        "reconnect_min (0 ms) must be at least 1 and at most reconnect_max (30000 ms)"
    );
    let err = refused(&|s| s.tls_server_name = Some("m".into()));
    assert!(matches!(err, ConfigError::TlsOptionsWithoutTls { .. }));
    assert!(err.to_string().ends_with(
        "the manager endpoint tcp://127.0.0.1:1 is not tls://; use tls://HOST:PORT or remove them"
    ), "{err}");
    let err = refused(&|s| s.log_level = Some("a=b=c".into()));
    assert!(matches!(&err, ConfigError::LogLevel { filter, .. } if filter == "a=b=c"));
}

#[test]
fn the_effective_configuration_is_a_file_that_gives_it_again() {
    let file = parse_file(
        "manager = \"unix:///run/m.sock\"\nruntime = \"blocking\"\nsessions = 3\n\
         threads = 2\nloop-balance = \"off\"\nmax-body = \"64KiB\"\nworker_id = \"w\\\"1\"\n\
         metrics_addr = \"off\"\nsession_metrics = false\ntcp_keepalive = 0\n\
         log_format = \"json\"\ndrain_timeout = 9\n",
    )
    .unwrap();
    let config = Config::merge(&Settings::default(), file).unwrap();
    let text = config.effective_toml();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..18],
        [
            "manager = \"unix:///run/m.sock\"",
            "runtime = \"blocking\"",
            "sessions = 3",
            "threads = 2",
            "loop_balance = \"off\"",
            "max_in_flight = 64",
            "max_body = 65536",
            "worker_id = 'w\"1'",
            "# token = none (no token_file)",
            "metrics_addr = \"off\"",
            "session_metrics = false",
            "reconnect_min = 100",
            "reconnect_max = 30000",
            "tcp_keepalive = 0",
            "tcp_user_timeout = 300",
            "log_level = \"info\"",
            "log_format = \"json\"",
            "drain_timeout = 9",
        ]
    );
    assert!(
        lines[18].starts_with("# memory bound: 3 sessions x "),
        "{text}"
    );
    assert_eq!(lines.len(), 19, "{text}");
    let again = Config::merge(&Settings::default(), parse_file(&text).unwrap()).unwrap();
    assert_eq!(again.effective_toml(), text);
}
