//! The command line of `ringworker-loadgen`: the run's options ([`Args`]),
//! the tools beside a run ([`Tool`]: shell completions and the man page)
//! and the text after `--help`.
//!
//! It only declares and prints the interface; it never starts a run, opens
//! a socket or reads a file named on the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{CommandFactory, Parser, Subcommand};
use ringworker_loadgen::duration;
use ringworker_loadgen::handlers::HandlerAs;
use ringworker_loadgen::progress;
use ringworker_loadgen::workload::{Mix, PayloadSpec};

/// A manager that drives ringworker agents with a workload, verifies every
/// result (echo, crc32c, sha256 exactly; sink and sleep empty; an agent's own
/// handler exactly as the built-in it is given with --handler-as), drains the
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
pub struct Args {
    #[command(subcommand)]
    pub tool: Option<Tool>,
    /// Endpoint to listen on: tcp://HOST:PORT (port 0 picks a free one), tls://HOST:PORT or unix:///path
    #[arg(long, value_name = "ENDPOINT", required = true)]
    pub listen: Option<String>,
    /// TLS: the manager's certificate chain (PEM) [default with --spawn: a throwaway one]
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert (PEM)
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// TLS: require client certificates signed by this CA (mutual TLS)
    #[arg(long, value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,
    /// TLS with throwaway certificates: require a client certificate too, and give the spawned agent one
    #[arg(long)]
    pub tls_mutual: bool,
    /// Spawn a local agent with this runtime, dialling the listener
    #[arg(long, value_name = "uring|blocking|auto")]
    pub spawn: Option<String>,
    /// The agent binary for --spawn [default: `ringworker` next to this binary]
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
    /// Extra argument for the spawned agent (repeatable), e.g. --agent-arg=--threads=1
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Worker sessions to wait for
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions: u32,
    /// Handler, or a weighted mix such as echo:8,crc32c:1,sha256:1. Known and checked
    /// exactly: echo, crc32c, sha256, sink, sleep; others need --handler-as or
    /// --handler-unverified
    #[arg(long, default_value = "echo")]
    pub handler: Mix,
    /// A handler of the agent's own that computes what a built-in computes, checked
    /// exactly as that built-in (repeatable or comma-separated): e.g. my-cat=echo for
    /// a declared `cat`, hash=sha256 for a worker returning the SHA-256 digest
    #[arg(long, value_name = "NAME=BUILTIN", value_delimiter = ',')]
    pub handler_as: Vec<HandlerAs>,
    /// A handler of the agent's own that the loadgen cannot check (repeatable or
    /// comma-separated): its tasks carry random --payload bytes, any successful result is ok
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub handler_unverified: Vec<String>,
    /// Payload bytes: a size (64, 4KiB, 1MiB) or a range 16..4096 drawn with --seed
    #[arg(long, default_value = "64")]
    pub payload: PayloadSpec,
    /// Time of the `sleep` handler's tasks: milliseconds or with units (50, 2s), or a
    /// range (1..10, 5ms..2s) [default: --payload, as milliseconds]
    #[arg(long, value_name = "MS", value_parser = duration::millis_range)]
    pub sleep_ms: Option<PayloadSpec>,
    /// Seed of the payload pool
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Closed loop: tasks in flight per session
    #[arg(
        long,
        default_value_t = 32,
        conflicts_with = "rate",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub concurrency: u32,
    /// Open loop: tasks per second in all; latency counts from each task's intended send time
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured load after the warm-up: seconds (2.5) or with units (500ms, 10s, 2m)
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = duration::positive_seconds)]
    pub duration: Duration,
    /// Stop after sending this many tasks (instead of --duration)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub tasks: Option<u64>,
    /// Load before measuring starts (seconds or with units); its tasks count in tasks_ok
    /// but not in the rates, latency or tasks_measured
    #[arg(long, value_name = "TIME", default_value = "0s", value_parser = duration::seconds)]
    pub warmup: Duration,
    /// Request an ACK for every task
    #[arg(long)]
    pub ack: bool,
    /// Largest frame body the agent may send back (the manager's max_body, announced in
    /// WELCOME); the agent's own limit on TASKs is its --max-body
    #[arg(long, default_value = "16MiB")]
    pub max_body: ringworker::config::ByteSize,
    /// Heartbeat interval announced in WELCOME: milliseconds or with units (5s); 0: none
    #[arg(long, value_name = "MS", default_value = "0", value_parser = duration::millis_u32)]
    pub heartbeat_ms: u32,
    /// Require this token in HELLO (read from a file)
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Write the report as JSON here (opened before the run starts)
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm) here (opened before
    /// the run starts)
    #[arg(long, value_name = "PATH")]
    pub hgrm: Option<PathBuf>,
    /// How long to wait for the sessions to connect (seconds or with units)
    #[arg(long, value_name = "TIME", default_value = "30s", value_parser = duration::positive_seconds)]
    pub connect_timeout: Duration,
    /// Progress on stderr: auto (a live line on a terminal, plain lines otherwise),
    /// plain, never
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = progress::Mode::Auto)]
    pub progress: progress::Mode,
    /// Time between plain progress lines (one is also printed at each change of phase)
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = duration::positive_seconds)]
    pub progress_interval: Duration,
}

/// Tools beside a run. They take no run options.
#[derive(Debug, Subcommand)]
pub enum Tool {
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
Any other name is refused at start unless given with --handler-as NAME=BUILTIN (a \
handler of the agent's own that computes what the built-in BUILTIN computes: its tasks \
carry that built-in's payloads and every result is compared byte for byte with the \
built-in's output) or with --handler-unverified NAME (a handler of the agent's own: random \
payloads, any successful result counts as ok). An unknown BUILTIN is a usage error.

Handlers declared in a config file ([handlers.NAME]) with a spawned agent: \
--spawn uring --agent-arg=--config=handlers.toml --handler my-cat \
--handler-as my-cat=echo. The flags the loadgen gives the agent (--manager, --runtime, \
--sessions, and --max-in-flight, --metrics-addr, --worker-id unless an --agent-arg gives \
them) win over the file's keys.

Exit status: 0 when every result verified and every connection's byte totals match; 1 \
when a task was wrong or lost, none succeeded, or byte totals differ; 2 for bad options, \
an output file that cannot be written, or a run that could not start.

Shell completions and the man page: `ringworker-loadgen completions bash|zsh|fish` and \
`ringworker-loadgen manpage`.";

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

/// Run a tool: print what it makes to stdout.
pub fn tool(tool: &Tool) -> anyhow::Result<bool> {
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
