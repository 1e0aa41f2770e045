//! `ringworker-loadgen`: a manager that drives ringworker agents with a
//! workload, verifies every result, drains the agents and reports.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{CommandFactory, Parser, Subcommand};
use ringworker::manager::ManagerConfig;
use ringworker::transport::Endpoint;
use ringworker_loadgen::duration;
use ringworker_loadgen::engine::{Engine, Listener, Pacing, RunResult, RunSpec};
use ringworker_loadgen::handlers::Registry;
use ringworker_loadgen::output::OutputFile;
use ringworker_loadgen::pki::Throwaway;
use ringworker_loadgen::progress::{self, Progress};
use ringworker_loadgen::report::{write_hgrm, Describe, Report};
use ringworker_loadgen::workload::{Mix, PayloadSpec, Pool};

/// A manager that drives ringworker agents with a workload, verifies every
/// result (echo, crc32c, sha256 exactly; sink and sleep empty), drains the
/// agents and reports tasks/s, bandwidth, latency percentiles, CPU per task
/// and the byte accounting of every connection. Exit status 0 only when no
/// task was wrong or lost, at least one succeeded, and every connection's
/// byte totals match; 1 otherwise; 2 for a usage error or a run that could
/// not start.
///
/// TLS: `--listen tls://HOST:PORT` serves TLS 1.3 with `--tls-cert` and
/// `--tls-key` (and `--tls-client-ca` to require client certificates). With
/// `--spawn` and no `--tls-cert`, throwaway certificates are made for the run
/// (`--tls-mutual` adds a client certificate for the agent) and removed at exit.
///
/// Counts: `tasks_ok`, `tasks_failed`, `tasks_wrong` and `tasks_lost` cover
/// the whole run, warm-up included; tasks/s, MiB/s, latency and CPU per task
/// cover the measured window only (`tasks_measured` tasks in `duration_s`);
/// the warm-up's tasks are reported apart (`tasks_warmup`, `warmup_s`).
#[derive(Debug, Parser)]
#[command(
    name = "ringworker-loadgen",
    version,
    about,
    long_about,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = true,
    after_long_help = AFTER_HELP
)]
struct Args {
    #[command(subcommand)]
    tool: Option<Tool>,
    /// Endpoint to listen on: tcp://HOST:PORT (port 0 picks a free one), tls://HOST:PORT or unix:///path
    #[arg(long, value_name = "ENDPOINT", required = true)]
    listen: Option<String>,
    /// TLS: the manager's certificate chain (PEM) [default with --spawn: a throwaway one]
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert (PEM)
    #[arg(long, value_name = "PATH")]
    tls_key: Option<PathBuf>,
    /// TLS: require client certificates signed by this CA (mutual TLS)
    #[arg(long, value_name = "PATH")]
    tls_client_ca: Option<PathBuf>,
    /// TLS with throwaway certificates: require a client certificate too, and give the spawned agent one
    #[arg(long)]
    tls_mutual: bool,
    /// Spawn a local agent with this runtime, dialling the listener
    #[arg(long, value_name = "uring|blocking|auto")]
    spawn: Option<String>,
    /// The agent binary for --spawn [default: `ringworker` next to this binary]
    #[arg(long, value_name = "PATH")]
    agent_bin: Option<PathBuf>,
    /// Extra argument for the spawned agent (repeatable), e.g. --agent-arg=--threads=1
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Worker sessions to wait for
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    sessions: u32,
    /// Handler, or a weighted mix such as echo:8,crc32c:1,sha256:1. Known and checked
    /// exactly: echo, crc32c, sha256, sink, sleep; others need --handler-unverified
    #[arg(long, default_value = "echo")]
    handler: Mix,
    /// A handler of the agent's own that the loadgen cannot check (repeatable or
    /// comma-separated): its tasks carry random --payload bytes, any successful result is ok
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    handler_unverified: Vec<String>,
    /// Payload bytes: a size (64, 4KiB, 1MiB) or a range 16..4096 drawn with --seed
    #[arg(long, default_value = "64")]
    payload: PayloadSpec,
    /// Time of the `sleep` handler's tasks: milliseconds or with units (50, 2s), or a
    /// range (1..10, 5ms..2s) [default: --payload, as milliseconds]
    #[arg(long, value_name = "MS", value_parser = duration::millis_range)]
    sleep_ms: Option<PayloadSpec>,
    /// Seed of the payload pool
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Closed loop: tasks in flight per session
    #[arg(
        long,
        default_value_t = 32,
        conflicts_with = "rate",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    concurrency: u32,
    /// Open loop: tasks per second in all; latency counts from each task's intended send time
    #[arg(long)]
    rate: Option<f64>,
    /// Measured load after the warm-up: seconds (2.5) or with units (500ms, 10s, 2m)
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = duration::positive_seconds)]
    duration: Duration,
    /// Stop after sending this many tasks (instead of --duration)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    tasks: Option<u64>,
    /// Load before measuring starts (seconds or with units); its tasks count in tasks_ok
    /// but not in the rates, latency or tasks_measured
    #[arg(long, value_name = "TIME", default_value = "0s", value_parser = duration::seconds)]
    warmup: Duration,
    /// Request an ACK for every task
    #[arg(long)]
    ack: bool,
    /// Largest frame body the agent may send back (the manager's max_body, announced in
    /// WELCOME); the agent's own limit on TASKs is its --max-body
    #[arg(long, default_value = "16MiB")]
    max_body: ringworker::config::ByteSize,
    /// Heartbeat interval announced in WELCOME: milliseconds or with units (5s); 0: none
    #[arg(long, value_name = "MS", default_value = "0", value_parser = duration::millis_u32)]
    heartbeat_ms: u32,
    /// Require this token in HELLO (read from a file)
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Write the report as JSON here (opened before the run starts)
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm) here (opened before
    /// the run starts)
    #[arg(long, value_name = "PATH")]
    hgrm: Option<PathBuf>,
    /// How long to wait for the sessions to connect (seconds or with units)
    #[arg(long, value_name = "TIME", default_value = "30s", value_parser = duration::positive_seconds)]
    connect_timeout: Duration,
    /// Progress on stderr: auto (a live line on a terminal, plain lines otherwise),
    /// plain, never
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = progress::Mode::Auto)]
    progress: progress::Mode,
    /// Time between plain progress lines (one is also printed at each change of phase)
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = duration::positive_seconds)]
    progress_interval: Duration,
}

/// Tools beside a run. They take no run options.
#[derive(Debug, Subcommand)]
enum Tool {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, ringworker-loadgen(1), as roff
    Manpage,
}

/// The end of `--help` and of the man page.
const AFTER_HELP: &str = "\
Time values (--duration, --warmup, --connect-timeout, --progress-interval) are seconds \
(2.5) or take units: 500ms, 10s, 2m, 1h30m. --heartbeat-ms and --sleep-ms take \
milliseconds or units.

Progress goes to stderr: on a terminal a live line with the phase (connecting, warm-up, \
measuring, draining), elapsed time, time left, current rate and tasks done; otherwise \
(a CI log) the same as plain lines at each change of phase and every --progress-interval. \
The report goes to stdout.

Handlers: echo, crc32c, sha256, sink and sleep are known and every result is checked. \
Any other name is refused at start unless given with --handler-unverified NAME (a \
handler of the agent's own: random payloads, any successful result counts as ok).

Exit status: 0 when every result verified and every connection's byte totals match; 1 \
when a task was wrong or lost, none succeeded, or byte totals differ; 2 for bad options, \
an output file that cannot be written, or a run that could not start.

Shell completions and the man page: `ringworker-loadgen completions bash|zsh|fish` and \
`ringworker-loadgen manpage`.";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            ringworker::tell!("ringworker-loadgen: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn agent_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.agent_bin {
        return Ok(path.clone());
    }
    let me = std::env::current_exe().context("cannot locate this binary")?;
    let sibling = me.with_file_name("ringworker");
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "no `ringworker` binary next to {}; pass --agent-bin",
        me.display()
    )
}

/// CPU seconds (user + system) of a process, from /proc. USER_HZ is 100 on
/// every Linux architecture this runs on.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Spawned {
    child: Child,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the run was, for the report.
fn describe(args: &Args, pacing: Pacing, tls: &Option<TlsSetup>) -> Describe {
    Describe {
        runtime: args.spawn.clone(),
        sessions: args.sessions,
        handler: args
            .handler
            .entries
            .iter()
            .map(|(n, w)| format!("{n}:{w}"))
            .collect::<Vec<_>>()
            .join(","),
        payload: if args.payload.min == args.payload.max {
            args.payload.min.to_string()
        } else {
            format!("{}..{}", args.payload.min, args.payload.max)
        },
        pacing: match pacing {
            Pacing::Closed { concurrency } => {
                format!("closed loop, {concurrency} in flight per session")
            }
            Pacing::Open { rate } => format!("open loop, {rate} tasks/s"),
        },
        transport: match (
            args.listen.as_deref().and_then(|l| l.split_once("://")),
            tls,
        ) {
            (_, Some(tls)) if tls.mutual => "tls+mtls".to_owned(),
            (_, Some(_)) => "tls".to_owned(),
            (Some((scheme, _)), None) => scheme.to_owned(),
            (None, None) => "?".to_owned(),
        },
    }
}

/// The TLS side of a `tls://` listener.
struct TlsSetup {
    config: Arc<rustls::ServerConfig>,
    /// Client certificates are required.
    mutual: bool,
    /// Certificates made for this run (removed when dropped).
    throwaway: Option<Throwaway>,
}

/// Check the `--tls-*` flags against the endpoint and load (or make) the
/// certificates. `None` for a plaintext listener.
fn tls_setup(args: &Args, requested: &Endpoint) -> anyhow::Result<Option<TlsSetup>> {
    let flags: Vec<&str> = [
        ("--tls-cert", args.tls_cert.is_some()),
        ("--tls-key", args.tls_key.is_some()),
        ("--tls-client-ca", args.tls_client_ca.is_some()),
        ("--tls-mutual", args.tls_mutual),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
    .collect();
    let Endpoint::Tls { host, .. } = requested else {
        if !flags.is_empty() {
            bail!(
                "{} {} a tls:// listener, but --listen is {requested}",
                flags.join(", "),
                if flags.len() == 1 { "needs" } else { "need" }
            );
        }
        return Ok(None);
    };
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            if args.tls_mutual {
                bail!(
                    "--tls-mutual is for throwaway certificates; with --tls-cert, \
                     require client certificates with --tls-client-ca PATH"
                );
            }
            let config = ringworker::transport::tls::server_config(
                cert,
                key,
                args.tls_client_ca.as_deref(),
            )?;
            Ok(Some(TlsSetup {
                config,
                mutual: args.tls_client_ca.is_some(),
                throwaway: None,
            }))
        }
        (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert (the manager's certificate)"),
        (None, None) => {
            if args.tls_client_ca.is_some() {
                bail!(
                    "--tls-client-ca needs --tls-cert and --tls-key (with throwaway \
                     certificates, use --tls-mutual)"
                );
            }
            if args.spawn.is_none() {
                bail!(
                    "{requested} needs the manager's certificate: --tls-cert PATH --tls-key PATH \
                     (or --spawn, which makes throwaway certificates for the run)"
                );
            }
            // The agent dials the address the listener is bound to: the
            // certificate names the host as given and what it resolves to.
            let mut names = vec![host.clone()];
            if let Ok(addrs) = requested.socket_addrs() {
                names.extend(addrs.iter().map(|a| a.ip().to_string()));
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let pki = Throwaway::generate(&names, args.tls_mutual)
                .context("cannot make throwaway TLS certificates")?;
            let config = ringworker::transport::tls::server_config(
                &pki.server_cert,
                &pki.server_key,
                args.tls_mutual.then_some(pki.ca.as_path()),
            )?;
            Ok(Some(TlsSetup {
                config,
                mutual: args.tls_mutual,
                throwaway: Some(pki),
            }))
        }
    }
}

/// Write generated text to stdout; a reader that closed it early (`| head`)
/// is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<bool> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(err) => Err(anyhow!("cannot write to stdout: {err}")),
    }
}

fn tool(tool: &Tool) -> anyhow::Result<bool> {
    let mut command = Args::command();
    match tool {
        Tool::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "ringworker-loadgen", &mut script);
            write_stdout(&script)
        }
        Tool::Manpage => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .context("cannot render the man page")?;
            write_stdout(&page)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args: Args = ringworker::config::parse_args_or_exit("ringworker-loadgen");
    if let Some(which) = &args.tool {
        return tool(which);
    }
    let listen = args
        .listen
        .as_deref()
        .context("--listen ENDPOINT is required")?;
    // Everything that can be refused is, before anything starts: the
    // handlers, then the output files.
    let registry = Registry::built_in().with_unverified(&args.handler_unverified);
    registry.check(&args.handler).map_err(|why| anyhow!(why))?;
    let open = |flag: &'static str, path: &Option<PathBuf>| {
        path.as_deref()
            .map(|path| OutputFile::open(flag, path))
            .transpose()
            .map_err(|why| anyhow!(why))
    };
    let mut json_out = open("--json", &args.json)?;
    let mut hgrm_out = open("--hgrm", &args.hgrm)?;
    let progress = Progress::new(args.progress, args.progress_interval);
    // One socket per session: allow as many as the hard limit permits.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let requested: Endpoint = listen.parse()?;
    let tls = tls_setup(&args, &requested)?;
    let listener =
        Listener::bind(&requested).with_context(|| format!("cannot listen on {requested}"))?;
    let endpoint = listener.local_endpoint(&requested)?;
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        None => None,
    };
    let pacing = match args.rate {
        Some(rate) if rate > 0.0 => Pacing::Open { rate },
        Some(_) => bail!("--rate must be positive"),
        None => Pacing::Closed {
            concurrency: args.concurrency.max(1),
        },
    };
    let max_body = u32::try_from(args.max_body.0).context("--max-body is over 4 GiB")?;
    let mut spawned = None;
    if let Some(runtime) = &args.spawn {
        let bin = agent_binary(&args)?;
        let max_in_flight = match pacing {
            Pacing::Closed { concurrency } => concurrency.max(64),
            Pacing::Open { .. } => 1024,
        };
        let given = |flag: &str| {
            args.agent_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut command = Command::new(&bin);
        command
            .args([
                "run",
                "--manager",
                &endpoint.to_string(),
                "--runtime",
                runtime,
            ])
            .args(["--sessions", &args.sessions.to_string()]);
        if !given("--max-in-flight") {
            command.args(["--max-in-flight", &max_in_flight.to_string()]);
        }
        if !given("--metrics-addr") {
            command.args(["--metrics-addr", "off"]);
        }
        if !given("--worker-id") {
            command.args(["--worker-id", "loadgen-spawned"]);
        }
        if let Some(pki) = tls.as_ref().and_then(|t| t.throwaway.as_ref()) {
            if !given("--tls-ca") {
                command.arg("--tls-ca").arg(&pki.ca);
            }
            if let Some((cert, key)) = &pki.client {
                if !given("--tls-cert") && !given("--tls-key") {
                    command.arg("--tls-cert").arg(cert);
                    command.arg("--tls-key").arg(key);
                }
            }
        }
        if std::env::var_os("RINGWORKER_LOG").is_none() {
            // A spawned agent logs warnings and errors only: one line per
            // session would drown the report at thousands of sessions.
            command.env("RINGWORKER_LOG", "warn");
        }
        let child = command
            .args(&args.agent_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        spawned = Some(Spawned { child });
    }
    let spec = RunSpec {
        sessions: args.sessions,
        pacing,
        duration: if args.tasks.is_some() {
            None
        } else {
            Some(args.duration)
        },
        tasks: args.tasks,
        warmup: args.warmup,
        ack: args.ack,
        manager: ManagerConfig {
            manager_id: "ringworker-loadgen".to_owned(),
            max_body,
            heartbeat_ms: args.heartbeat_ms,
            token,
        },
        grace: Duration::from_secs(10),
        progress: progress.clone(),
        tls: tls.as_ref().map(|t| t.config.clone()),
    };
    let pool = Pool::with_registry(
        &registry,
        &args.handler,
        args.payload,
        args.sleep_ms.unwrap_or(args.payload),
        args.seed,
    );
    let mut engine = Engine::new(listener, pool, spec)?;
    progress.println(&format!(
        "ringworker-loadgen: listening on {endpoint}, waiting for {} session(s){}",
        args.sessions,
        if spawned.is_some() {
            " from the spawned agent"
        } else {
            ""
        }
    ));
    let connect_started = Instant::now();
    let mut agent_gone = || {
        let spawned = spawned.as_mut()?;
        let status = spawned.child.try_wait().ok()??;
        Some(format!(
            "the spawned agent exited ({status}) before its sessions connected; its message is above"
        ))
    };
    if let Err(err) = engine.accept_all(args.connect_timeout, &mut agent_gone) {
        progress.finish();
        // Close what did connect (over TLS with close_notify). The JSON
        // report still says what connected and which TLS handshakes failed;
        // the run itself is a usage-level failure.
        let result = engine.finish();
        if let Some(out) = json_out.as_mut() {
            let report = Report::new(&result, describe(&args, pacing, &tls), 0.0, None);
            out.write(&serde_json::to_vec_pretty(&report)?)
                .map_err(|why| anyhow!(why))?;
        }
        return Err(err.into());
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let agent_pid = spawned.as_ref().map(|s| s.child.id().to_string());
    let agent_rss_kib = agent_pid.as_deref().and_then(rss_kib);
    if args.sessions >= 1000 {
        progress.println(&format!(
            "ringworker-loadgen: {} sessions connected in {connect_s:.2} s{}",
            args.sessions,
            agent_rss_kib.map_or(String::new(), |kib| format!(
                "; agent RSS {:.1} MiB",
                kib as f64 / 1024.0
            ))
        ));
    }
    let warmup = args.warmup;
    // CPU is sampled over the measured window: from the end of the warmup to
    // the end of sending (sampled by a helper thread at those instants).
    let cpu_window = std::thread::spawn({
        let agent_pid = agent_pid.clone();
        let tasks_mode = args.tasks.is_some();
        let duration = args.duration;
        move || -> Option<((f64, Option<f64>), Instant)> {
            if tasks_mode {
                return None;
            }
            std::thread::sleep(warmup);
            let at = Instant::now();
            let start = (
                cpu_seconds("self")?,
                agent_pid.as_deref().and_then(cpu_seconds),
            );
            std::thread::sleep(duration);
            let end = (
                cpu_seconds("self")?,
                agent_pid.as_deref().and_then(cpu_seconds),
            );
            Some((
                (end.0 - start.0, end.1.zip(start.1).map(|(e, s)| e - s)),
                at,
            ))
        }
    });
    let loadgen_start = cpu_seconds("self").unwrap_or(0.0);
    let agent_start = agent_pid.as_deref().and_then(cpu_seconds);
    engine.run()?;
    let loadgen_end = cpu_seconds("self").unwrap_or(0.0);
    let agent_end = agent_pid.as_deref().and_then(cpu_seconds);
    let (loadgen_cpu, agent_cpu) = match cpu_window.join().ok().flatten() {
        Some(((loadgen, agent), _)) => (loadgen, agent),
        None => (
            loadgen_end - loadgen_start,
            agent_end.zip(agent_start).map(|(e, s)| e - s),
        ),
    };

    // Drain: a spawned agent is stopped with SIGTERM (it drains itself);
    // an external one is sent DRAIN (it finishes, says GOODBYE, redials later).
    let mut agent_status = None;
    match spawned.as_mut() {
        Some(spawned) => {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &spawned.child.id().to_string()])
                .status();
            engine.drain(Duration::from_secs(30))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = spawned.child.try_wait() {
                    agent_status = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        None => {
            engine.send_drain();
            engine.drain(Duration::from_secs(30))?;
        }
    }
    let result: RunResult = engine.finish();
    progress.finish();
    let mut report = Report::new(
        &result,
        describe(&args, pacing, &tls),
        loadgen_cpu,
        agent_cpu,
    );
    report.connect_s = Some(connect_s);
    report.agent_rss_kib_connected = agent_rss_kib;
    // A reader that went away (`| head`) must not cost the JSON report or
    // the exit status that says whether the run passed.
    if let Err(err) = report.print(&mut std::io::stdout().lock()) {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            ringworker::tell!("ringworker-loadgen: cannot write the report: {err}");
        }
    }
    if let Some(out) = json_out.as_mut() {
        out.write(&serde_json::to_vec_pretty(&report)?)
            .map_err(|why| anyhow!(why))?;
    }
    if let Some(out) = hgrm_out.as_mut() {
        let mut text = Vec::new();
        write_hgrm(&result.histogram, &mut text)?;
        out.write(&text).map_err(|why| anyhow!(why))?;
    }
    if let Endpoint::Unix(path) = &requested {
        let _ = std::fs::remove_file(path);
    }
    let mut passed = report.passed();
    if let Some(status) = agent_status {
        if !status.success() {
            ringworker::tell!("ringworker-loadgen: the agent exited with {status}");
            passed = false;
        }
    } else if spawned.is_some() {
        ringworker::tell!("ringworker-loadgen: the agent did not exit after SIGTERM");
        passed = false;
    }
    Ok(passed)
}
