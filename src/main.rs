//! The `ringworker` command line: parse, build the configuration, start the
//! agent. All behaviour lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringworker::agent::{catch_signals, spawn_signal_thread, Agent};
use std::sync::Arc;

use ringworker::config::{self, Config, LogFormat, MetricsAddr, Settings};
use ringworker::demo::{self, DemoArgs};
use ringworker::handlers::HandlerRegistry;
use ringworker::http::HttpServer;
use ringworker::logging::{self, init_logging};
use ringworker::metrics::Telemetry;
use ringworker::notify::Notifier;
use ringworker::reload::Reloader;

/// A Linux worker agent: dials a manager, runs the tasks it sends, answers
/// with every byte counted.
#[derive(Debug, Parser)]
#[command(name = "ringworker", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: dial the manager and serve tasks until SIGTERM / SIGINT
    #[command(after_long_help = RUN_AFTER_HELP)]
    Run(Box<Settings>),
    /// Zero-setup tour: an embedded manager on loopback drives an agent with a verified workload
    Demo(DemoArgs),
    /// Validate a config file and print the effective configuration (secrets redacted): the
    /// file under the RINGWORKER_* environment and any `run` flags given, as `run` would see it
    CheckConfig(Box<Settings>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of ringworker(1), or of one subcommand: ringworker-run(1), ...
    Manpage {
        /// The subcommand whose page to print (run, demo, check-config, completions)
        #[arg(value_name = "SUBCOMMAND")]
        subcommand: Option<String>,
    },
}

/// The end of `run --help` and of ringworker-run(1).
const RUN_AFTER_HELP: &str = "\
Environment: every option can also be set with RINGWORKER_<OPTION> (RINGWORKER_MANAGER, \
RINGWORKER_SESSIONS, ...); precedence is flags, environment, config file, defaults. \
RINGWORKER_LOG=debug (an EnvFilter) raises the log level.

Signals: SIGTERM or SIGINT drains every session (DRAIN, the tasks in flight finished, \
GOODBYE) and exits; a second signal exits at once (one within 250 ms of the first is the \
same request: `timeout` signals the agent and then its process group). SIGHUP re-reads the \
--config file (flags and RINGWORKER_* still win over it) and never stops the agent: \
log_format and log_level apply at once (the level unless RINGWORKER_LOG is set); every \
other key that changed is named in one log line as \
taking effect only after a restart, and keeps its running value; a file that no longer \
parses is logged as an error and the running configuration stays.

systemd (Type=notify, NOTIFY_SOCKET set): READY=1 once the first session has completed \
its handshake; STATUS= with the sessions connected and the tasks done; WATCHDOG=1 every \
half WATCHDOG_USEC while every runtime loop turns (a wedged loop stops the pings and \
systemd restarts the agent); STOPPING=1 when the drain starts; RELOADING=1 then READY=1 \
around a SIGHUP reload.

Exit status: 0 after a clean drain (every accepted task's RESULT written); 1 when the \
manager refused the agent (unauthorized, unsupported_version), when the drain timed out \
with tasks abandoned or RESULTs undelivered (--drain-timeout bounds the whole drain), or \
when the metrics address cannot be bound; 2 for bad options or configuration; 130 on a second signal.

Endpoints (--metrics-addr): /metrics (Prometheus), /healthz, /readyz, /status (JSON).";

fn main() -> ExitCode {
    let cli: Cli = config::parse_args_or_exit("ringworker");
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Demo(args) => {
            init_logging(LogFormat::Text, &logging::filter_from_env());
            match demo::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    ringworker::tell!("ringworker demo: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig(args) => check_config(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "ringworker", &mut script);
            write_stdout(&script)
        }
        Command::Manpage { subcommand } => {
            let command = <Cli as clap::CommandFactory>::command();
            let man = match subcommand {
                None => clap_mangen::Man::new(command),
                Some(name) => match command.find_subcommand(&name) {
                    Some(sub) => {
                        // clap names are 'static; this process prints one page and exits.
                        let page_name: &'static str =
                            Box::leak(format!("ringworker-{name}").into_boxed_str());
                        clap_mangen::Man::new(
                            sub.clone()
                                .name(page_name)
                                .bin_name(format!("ringworker {name}")),
                        )
                    }
                    None => {
                        ringworker::tell!(
                            "ringworker: no subcommand {name:?} (run, demo, check-config, completions, manpage)"
                        );
                        return ExitCode::from(2);
                    }
                },
            };
            let mut page = Vec::new();
            match man.render(&mut page) {
                Ok(()) => write_stdout(&page),
                Err(err) => {
                    ringworker::tell!("ringworker: cannot write the man page: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Write generated text to stdout; a reader that closed it early
/// (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            ringworker::tell!("ringworker: cannot write to stdout: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Settings) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(err) => {
            ringworker::tell!("ringworker: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format, &config.log_level);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if let Some(key) = config.tls.as_ref().and(config.tls_key.as_deref()) {
        ringworker::transport::tls::warn_if_exposed(key);
    }
    // Signals first: a SIGTERM that arrives while the sessions start must
    // drain them, and a SIGHUP must not end the process (its default).
    let signals = match catch_signals() {
        Ok(signals) => signals,
        Err(err) => {
            fatal(
                &config,
                &Notifier::default(),
                format_args!("cannot install signal handlers: {err}"),
            );
            return ExitCode::from(1);
        }
    };
    // Each session is a socket: allow as many as the hard limit permits.
    if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(limit, "open-file limit raised to the hard limit");
        // A socket per session, plus the listener, the rings and the logs.
        let needed = u64::from(config.sessions) + 64;
        if needed > limit {
            tracing::warn!(
                "{} sessions need about {needed} open files but the limit is {limit}: the sessions \
                 beyond it will fail to dial (raise LimitNOFILE or `ulimit -n`)",
                config.sessions
            );
        }
    }
    let mut agent = match Agent::new(&config, HandlerRegistry::with_builtins()) {
        Ok(agent) => agent,
        Err(err) => {
            fatal(&config, &Notifier::default(), format_args!("{err}"));
            return ExitCode::from(1);
        }
    };
    let notifier = Notifier::from_env(agent.stats(), &config.manager);
    let _http = match config.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::Listen(addr) => {
            // Built before the sessions start: the recorder must be
            // installed before they register their series.
            let telemetry = Arc::new(Telemetry::with_options(
                agent.stats(),
                ringworker::metrics::TelemetryOptions {
                    session_metrics: config.session_metrics,
                    requested_runtime: config.runtime.as_str(),
                },
            ));
            match HttpServer::start(addr, telemetry) {
                Ok(server) => {
                    tracing::info!("metrics and status on http://{}/metrics", server.addr());
                    Some(server)
                }
                Err(err) => {
                    fatal(
                        &config,
                        &notifier,
                        format_args!(
                            "cannot listen on {addr} for metrics: {err} (choose another --metrics-addr, or `off`)"
                        ),
                    );
                    return ExitCode::from(1);
                }
            }
        }
    };
    let mut reloader = Reloader::new(args.clone(), config.clone(), notifier.clone());
    if let Err(err) = spawn_signal_thread(signals, agent.stop_handle(), move || reloader.reload()) {
        fatal(
            &config,
            &notifier,
            format_args!("cannot start the signal thread: {err}"),
        );
        return ExitCode::from(1);
    }
    if let Err(err) = notifier.start(&agent.stop_handle()) {
        fatal(
            &config,
            &notifier,
            format_args!("cannot start the systemd notifier: {err}"),
        );
        return ExitCode::from(1);
    }
    if let Err(err) = agent.run(&config) {
        fatal(&config, &notifier, format_args!("{err}"));
        return ExitCode::from(1);
    }
    // After the start, so that a start that fails stays one line.
    tracing::info!(
        "memory bound: {} sessions x {}",
        config.sessions,
        config.memory_bound()
    );
    let report = agent.wait();
    if let Some(reason) = &report.fatal {
        fatal(&config, &notifier, format_args!("{reason}"));
        return ExitCode::from(1);
    }
    if report.abandoned_tasks > 0 || report.undelivered_results > 0 {
        fatal(
            &config,
            &notifier,
            format_args!(
                "drain incomplete: {} task(s) abandoned, {} RESULT(s) undelivered",
                report.abandoned_tasks, report.undelivered_results
            ),
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// The last line of a run that ends in failure, on stderr: `ringworker: why`,
/// or with JSON logs (as configured, or switched to by a reload) a JSON log
/// line like every other. Under systemd it is the unit's status too.
fn fatal(config: &Config, notifier: &Notifier, why: std::fmt::Arguments<'_>) {
    notifier.status(&format!("failed: {why}"));
    match logging::current_format(config.log_format) {
        LogFormat::Text => ringworker::tell!("ringworker: {why}"),
        LogFormat::Json => tracing::error!(fatal = true, "{why}"),
    }
}

fn check_config(args: &Settings) -> ExitCode {
    let Some(path) = args.config.as_deref() else {
        ringworker::tell!("ringworker: check-config needs --config PATH (or RINGWORKER_CONFIG)");
        return ExitCode::from(2);
    };
    let file = match config::load_file(path) {
        Ok(file) => file,
        Err(err) => {
            ringworker::tell!("ringworker: {err}");
            return ExitCode::from(2);
        }
    };
    let allow_insecure_token_file = args
        .allow_insecure_token_file
        .or(file.allow_insecure_token_file);
    match Config::merge(args, file) {
        Ok(config) => {
            ringworker::say!("# effective configuration of {}", path.display());
            ringworker::say!("{}", config.effective_toml().trim_end());
            // Part of what made the token file acceptable: the output is a
            // config file that check-config accepts again.
            if let (Some(_), Some(allow)) = (&config.token_file, allow_insecure_token_file) {
                ringworker::say!("allow_insecure_token_file = {allow}");
            }
            // Tables last: a top-level key may not follow one.
            if !config.handlers.handlers.is_empty() {
                ringworker::say!("{}", config.handlers.to_toml().trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            ringworker::tell!("ringworker: {}: {err}", path.display());
            ExitCode::from(2)
        }
    }
}
