//! The agent: picks the runtime, starts its sessions, turns signals into a
//! graceful drain (SIGTERM, SIGINT) or a reload (SIGHUP), and reports how
//! the run ended.
//!
//! Everything below (dialling, reconnecting, the protocol) happens inside the
//! runtime; this module only wires a [`Config`] to a [`RuntimeMode`].

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, RuntimeChoice};
use crate::handlers::HandlerRegistry;
use crate::runtime::{
    uring, AgentPlan, BlockingRuntime, ReconnectPolicy, RunReport, RuntimeError, RuntimeMode,
    StopHandle, UringRuntime,
};
use crate::session::SessionConfig;
use crate::stats::AgentStats;

pub use crate::connection::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};

/// Build the runtime-independent plan from a configuration.
pub fn plan_from_config(config: &Config, handlers: HandlerRegistry) -> AgentPlan {
    AgentPlan {
        endpoint: config.manager.clone(),
        sessions: config.sessions,
        threads: config.threads,
        session: SessionConfig {
            worker_id: config.worker_id.clone(),
            runtime: "blocking",
            max_body: config.max_body,
            max_in_flight: config.max_in_flight,
            token: config.token.clone(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        },
        handlers,
        reconnect: ReconnectPolicy {
            min: config.reconnect_min,
            max: config.reconnect_max,
            ..ReconnectPolicy::default()
        },
        drain_timeout: config.drain_timeout,
        connect_timeout: CONNECT_TIMEOUT,
        tcp: config.tcp,
        tls: config.tls.clone(),
        loop_balance: config.loop_balance,
    }
}

/// Choose the engine for `choice`. `auto` probes io_uring and falls back to
/// blocking with one log line that says why; `uring` fails with that same
/// reason.
pub fn select_runtime(
    choice: RuntimeChoice,
    plan: AgentPlan,
) -> Result<Box<dyn RuntimeMode>, RuntimeError> {
    match choice {
        RuntimeChoice::Blocking => Ok(Box::new(BlockingRuntime::new(plan))),
        RuntimeChoice::Uring => Ok(Box::new(UringRuntime::new(plan)?)),
        RuntimeChoice::Auto => match uring::probe() {
            Ok(()) => Ok(Box::new(UringRuntime::new(plan)?)),
            Err(reason) => {
                tracing::warn!(
                    "runtime auto: io_uring unavailable, using the blocking runtime: {reason}"
                );
                Ok(Box::new(BlockingRuntime::new(plan)))
            }
        },
    }
}

/// A started agent.
pub struct Agent {
    runtime: Box<dyn RuntimeMode>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("runtime", &self.runtime.kind())
            .finish()
    }
}

impl Agent {
    /// Select the runtime and start every session.
    pub fn start(config: &Config, handlers: HandlerRegistry) -> Result<Agent, RuntimeError> {
        let mut agent = Agent::new(config, handlers)?;
        agent.run(config)?;
        Ok(agent)
    }

    /// Select the runtime without starting it (its stats exist already, so
    /// the HTTP listener can be bound first).
    pub fn new(config: &Config, handlers: HandlerRegistry) -> Result<Agent, RuntimeError> {
        let mut handlers = handlers;
        handlers
            .declare_all(&config.handlers)
            .map_err(|err| RuntimeError::Unsupported(format!("declared handlers: {err}")))?;
        let plan = plan_from_config(config, handlers);
        let runtime = select_runtime(config.runtime, plan)?;
        Ok(Agent { runtime })
    }

    /// Start every session.
    pub fn run(&mut self, config: &Config) -> Result<(), RuntimeError> {
        self.runtime.start()?;
        tracing::info!(
            runtime = self.runtime.kind().as_str(),
            sessions = config.sessions,
            manager = %config.manager,
            "ringworker {} started: {} session(s) to {} on the {} runtime",
            env!("CARGO_PKG_VERSION"),
            config.sessions,
            config.manager,
            self.runtime.kind().as_str()
        );
        Ok(())
    }

    pub fn stats(&self) -> Arc<AgentStats> {
        self.runtime.stats()
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.runtime.stop_handle()
    }

    pub fn runtime(&self) -> &dyn RuntimeMode {
        self.runtime.as_ref()
    }

    /// Block until every session has ended.
    pub fn wait(mut self) -> RunReport {
        self.runtime.wait()
    }
}

/// A SIGTERM / SIGINT this soon after the first is the same request, not the
/// "second signal": `timeout` (coreutils) signals the agent and then its
/// process group, so one stop arrives twice within microseconds.
pub const REPEATED_SIGNAL_WINDOW: Duration = Duration::from_millis(250);

/// The signals the agent handles, caught from the moment this returns: a
/// SIGTERM or SIGHUP that arrives while the agent starts waits for
/// [`spawn_signal_thread`] instead of ending the process.
pub fn catch_signals() -> std::io::Result<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
}

/// SIGTERM / SIGINT: the first starts a drain; one more within
/// [`REPEATED_SIGNAL_WINDOW`] is the same request; a later one exits at once
/// with status 130. Without a configuration to reload, SIGHUP is logged
/// and otherwise ignored.
pub fn install_signal_handlers(stop: StopHandle) -> std::io::Result<()> {
    spawn_signal_thread(catch_signals()?, stop, || {
        tracing::info!("SIGHUP: no configuration to reload; nothing changed");
    })
}

/// Handle the signals [`catch_signals`] caught on a thread of their own:
/// SIGTERM / SIGINT as [`install_signal_handlers`] says, SIGHUP by calling
/// `reload` (on that thread; the agent keeps running whatever it does).
pub fn spawn_signal_thread(
    mut signals: signal_hook::iterator::Signals,
    stop: StopHandle,
    mut reload: impl FnMut() + Send + 'static,
) -> std::io::Result<()> {
    use signal_hook::consts::SIGHUP;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first: Option<std::time::Instant> = None;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload();
                    continue;
                }
                match first {
                    None => {
                        first = Some(std::time::Instant::now());
                        tracing::info!(
                            signal,
                            "signal {signal}: draining (send it again to exit at once)"
                        );
                        stop.request_stop();
                    }
                    Some(at) if at.elapsed() < REPEATED_SIGNAL_WINDOW => {
                        tracing::debug!(
                            signal,
                            "signal {signal} again within {} ms of the first: the same request",
                            REPEATED_SIGNAL_WINDOW.as_millis()
                        );
                    }
                    Some(_) => {
                        crate::tell!(
                            "ringworker: second signal {signal}: exiting without draining"
                        );
                        std::process::exit(130);
                    }
                }
            }
        })?;
    Ok(())
}
