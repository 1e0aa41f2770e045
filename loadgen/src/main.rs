//! `ringworker-loadgen`: a manager that drives ringworker agents with a
//! workload, verifies every result, drains the agents and reports.

mod agent;
mod cli;
mod tls_setup;
mod usage;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ringworker::manager::ManagerConfig;
use ringworker::transport::Endpoint;
use ringworker_loadgen::engine::{Engine, Listener, Pacing, RunResult, RunSpec};
use ringworker_loadgen::handlers::Registry;
use ringworker_loadgen::output::OutputFile;
use ringworker_loadgen::progress::Progress;
use ringworker_loadgen::report::{write_hgrm, Describe, Report};
use ringworker_loadgen::workload::Pool;

use cli::Args;
use tls_setup::{tls_setup, TlsSetup};
use usage::{cpu_times, rss_kib, CpuTimes};

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

fn run() -> anyhow::Result<bool> {
    let args: Args = ringworker::config::parse_args_or_exit("ringworker-loadgen");
    if let Some(which) = &args.tool {
        return cli::tool(which);
    }
    let listen = args
        .listen
        .as_deref()
        .context("--listen ENDPOINT is required")?;
    // Everything that can be refused is, before anything starts: the
    // handlers, then the output files.
    let registry = Registry::for_run(&args.handler_unverified, &args.handler_as)
        .map_err(|why| anyhow!(why))?;
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
    let mut spawned = match &args.spawn {
        Some(runtime) => Some(agent::spawn(
            &args,
            runtime,
            &endpoint,
            pacing,
            tls.as_ref(),
        )?),
        None => None,
    };
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
            let report = Report::new(
                &result,
                describe(&args, pacing, &tls),
                CpuTimes::default(),
                None,
            );
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
        move || -> Option<((CpuTimes, Option<CpuTimes>), Instant)> {
            if tasks_mode {
                return None;
            }
            std::thread::sleep(warmup);
            let at = Instant::now();
            let start = (cpu_times("self")?, agent_pid.as_deref().and_then(cpu_times));
            std::thread::sleep(duration);
            let end = (cpu_times("self")?, agent_pid.as_deref().and_then(cpu_times));
            Some((
                (
                    end.0.since(start.0),
                    end.1.zip(start.1).map(|(e, s)| e.since(s)),
                ),
                at,
            ))
        }
    });
    let loadgen_start = cpu_times("self").unwrap_or_default();
    let agent_start = agent_pid.as_deref().and_then(cpu_times);
    engine.run()?;
    let loadgen_end = cpu_times("self").unwrap_or_default();
    let agent_end = agent_pid.as_deref().and_then(cpu_times);
    let agent_rss_kib_end = agent_pid.as_deref().and_then(rss_kib);
    let (loadgen_cpu, agent_cpu) = match cpu_window.join().ok().flatten() {
        Some(((loadgen, agent), _)) => (loadgen, agent),
        None => (
            loadgen_end.since(loadgen_start),
            agent_end.zip(agent_start).map(|(e, s)| e.since(s)),
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
    report.agent_rss_kib_end = agent_rss_kib_end;
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
