//! The agent `--spawn` starts: which binary, the command line it is given
//! (the listener's endpoint, the runtime, the sessions, the throwaway TLS
//! files) and the child process, killed when dropped if it still runs.
//!
//! An `--agent-arg` always wins over what is filled in here: a flag the
//! operator passed is never given twice. The spawned agent's stdout is
//! discarded and its stderr is the loadgen's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use ringworker::transport::Endpoint;
use ringworker_loadgen::engine::Pacing;

use crate::cli::Args;
use crate::tls_setup::TlsSetup;

/// The spawned agent's process.
pub struct Spawned {
    pub child: Child,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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

/// Start the agent with `runtime`, dialling `endpoint`.
pub fn spawn(
    args: &Args,
    runtime: &str,
    endpoint: &Endpoint,
    pacing: Pacing,
    tls: Option<&TlsSetup>,
) -> anyhow::Result<Spawned> {
    let bin = agent_binary(args)?;
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
    if let Some(pki) = tls.and_then(|t| t.throwaway.as_ref()) {
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
    Ok(Spawned { child })
}
