//! The report: a human table on stdout, a JSON object for machines
//! (AGENT.md lists its keys) and an HdrHistogram percentile file.

use std::io::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::{ConnReport, RunResult};

/// CPU time of a process, all its threads: in user space (`utime`) and in
/// the kernel on its behalf (`stime`), seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTimes {
    /// User plus kernel seconds.
    pub fn total_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    /// The time spent between `start` and `self`, two samples of one process.
    pub fn since(&self, start: CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - start.user_s,
            sys_s: self.sys_s - start.sys_s,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The machine-readable report (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub runtime: Option<String>,
    /// `tcp`, `unix`, `tls` or `tls+mtls` (client certificates required).
    pub transport: String,
    pub sessions: u32,
    pub handler: String,
    pub payload: String,
    pub pacing: String,
    /// The measured window, seconds: from the end of the warm-up until
    /// sending stopped. Every rate is over this window.
    pub duration_s: f64,
    /// The warm-up before it, seconds (excluded from rates and latency).
    pub warmup_s: f64,
    /// Tasks sent inside the measured window whose results came back (ok,
    /// failed or wrong): `tasks_per_sec` is this over `duration_s`.
    pub tasks_measured: u64,
    /// Results of the tasks sent during the warm-up, excluded from the
    /// rates and latency.
    pub tasks_warmup: u64,
    /// `tasks_ok`, `tasks_failed`, `tasks_wrong` and `tasks_lost` count
    /// the whole run, warm-up included.
    pub tasks_ok: u64,
    pub tasks_failed: u64,
    pub tasks_wrong: u64,
    pub tasks_lost: u64,
    /// Sent before the agent's DRAIN was seen, and never read by the agent
    /// (they arrived after its GOODBYE); neither lost nor answered.
    pub tasks_unread: u64,
    pub tasks_per_sec: f64,
    pub payload_mib_per_sec: f64,
    pub wire_mib_per_sec: f64,
    pub latency_us: Latency,
    pub accounting_mismatches: u64,
    /// CPU seconds over the measured window (the whole run with `--tasks`),
    /// user plus kernel: always `*_cpu_user_s + *_cpu_sys_s`. The agent's
    /// are null when it was not spawned by the loadgen.
    pub loadgen_cpu_s: f64,
    pub agent_cpu_s: Option<f64>,
    pub loadgen_cpu_us_per_task: f64,
    pub agent_cpu_us_per_task: Option<f64>,
    /// The same apart: time in user space (`utime` of /proc/PID/stat) and
    /// in the kernel on the process's behalf (`stime`), all threads.
    pub loadgen_cpu_user_s: f64,
    pub loadgen_cpu_sys_s: f64,
    pub agent_cpu_user_s: Option<f64>,
    pub agent_cpu_sys_s: Option<f64>,
    pub loadgen_cpu_user_us_per_task: f64,
    pub loadgen_cpu_sys_us_per_task: f64,
    pub agent_cpu_user_us_per_task: Option<f64>,
    pub agent_cpu_sys_us_per_task: Option<f64>,
    /// Seconds from listening until every session had completed its handshake.
    pub connect_s: Option<f64>,
    /// A spawned agent's resident memory once every session was connected.
    pub agent_rss_kib_connected: Option<u64>,
    /// A spawned agent's resident memory at the end of the run, before the
    /// drain: with a low `--rate`, what its idle sessions hold once settled.
    pub agent_rss_kib_end: Option<u64>,
    pub per_session_tasks_min: u64,
    pub per_session_tasks_max: u64,
    pub failure_codes: std::collections::BTreeMap<String, u64>,
    /// TLS handshakes that failed (not counted as sessions), and the first
    /// one's description.
    pub tls_handshake_failures: u64,
    pub tls_handshake_error: Option<String>,
    pub connections: Vec<ConnReport>,
}

/// What the run was, for the report header.
#[derive(Debug, Clone)]
pub struct Describe {
    pub runtime: Option<String>,
    pub sessions: u32,
    pub handler: String,
    pub payload: String,
    pub pacing: String,
    pub transport: String,
}

impl Report {
    pub fn new(
        result: &RunResult,
        describe: Describe,
        loadgen_cpu: CpuTimes,
        agent_cpu: Option<CpuTimes>,
    ) -> Report {
        let sum = |f: fn(&ConnReport) -> u64| result.conns.iter().map(f).sum::<u64>();
        let secs = result.measured.as_secs_f64().max(1e-9);
        let h = &result.histogram;
        let q = |quantile: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(quantile)
            }
        };
        let tasks = result.measured_tasks;
        let per_task = |cpu: f64| {
            if tasks == 0 {
                0.0
            } else {
                cpu * 1e6 / tasks as f64
            }
        };
        let per_session: Vec<u64> = result.conns.iter().map(|c| c.tasks_ok).collect();
        Report {
            runtime: describe.runtime,
            transport: describe.transport,
            sessions: describe.sessions,
            handler: describe.handler,
            payload: describe.payload,
            pacing: describe.pacing,
            duration_s: secs,
            warmup_s: result.warmup.as_secs_f64(),
            tasks_measured: tasks,
            tasks_warmup: result.warmup_tasks,
            tasks_ok: sum(|c| c.tasks_ok),
            tasks_failed: sum(|c| c.tasks_failed),
            tasks_wrong: sum(|c| c.tasks_wrong),
            tasks_lost: sum(|c| c.tasks_lost),
            tasks_unread: sum(|c| c.tasks_unread),
            tasks_per_sec: tasks as f64 / secs,
            payload_mib_per_sec: result.measured_payload_bytes as f64 / secs / (1024.0 * 1024.0),
            wire_mib_per_sec: result.measured_wire_bytes as f64 / secs / (1024.0 * 1024.0),
            latency_us: Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: if h.is_empty() { 0 } else { h.max() },
            },
            accounting_mismatches: result.conns.iter().filter(|c| !c.accounting_exact).count()
                as u64,
            loadgen_cpu_s: loadgen_cpu.total_s(),
            agent_cpu_s: agent_cpu.map(|c| c.total_s()),
            loadgen_cpu_us_per_task: per_task(loadgen_cpu.total_s()),
            agent_cpu_us_per_task: agent_cpu.map(|c| per_task(c.total_s())),
            loadgen_cpu_user_s: loadgen_cpu.user_s,
            loadgen_cpu_sys_s: loadgen_cpu.sys_s,
            agent_cpu_user_s: agent_cpu.map(|c| c.user_s),
            agent_cpu_sys_s: agent_cpu.map(|c| c.sys_s),
            loadgen_cpu_user_us_per_task: per_task(loadgen_cpu.user_s),
            loadgen_cpu_sys_us_per_task: per_task(loadgen_cpu.sys_s),
            agent_cpu_user_us_per_task: agent_cpu.map(|c| per_task(c.user_s)),
            agent_cpu_sys_us_per_task: agent_cpu.map(|c| per_task(c.sys_s)),
            connect_s: None,
            agent_rss_kib_connected: None,
            agent_rss_kib_end: None,
            per_session_tasks_min: per_session.iter().copied().min().unwrap_or(0),
            per_session_tasks_max: per_session.iter().copied().max().unwrap_or(0),
            failure_codes: result.failure_codes.clone(),
            tls_handshake_failures: result.tls_handshake_failures,
            tls_handshake_error: result.tls_handshake_error.clone(),
            connections: result.conns.clone(),
        }
    }

    /// Exit status rule: clean only with nothing wrong, lost or mismatched,
    /// and at least one task verified (a run whose every task failed, say
    /// with `unknown_handler`, has checked nothing).
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// Why the run did not pass; empty when it did.
    pub fn failures(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.tasks_wrong > 0 {
            why.push(format!("{} wrong results", self.tasks_wrong));
        }
        if self.tasks_lost > 0 {
            why.push(format!("{} tasks lost", self.tasks_lost));
        }
        if self.accounting_mismatches > 0 {
            why.push(format!(
                "byte totals differ on {} connections",
                self.accounting_mismatches
            ));
        }
        if self.tasks_ok == 0 {
            why.push(if self.tasks_failed > 0 {
                let codes: Vec<String> = self
                    .failure_codes
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect();
                format!("no task succeeded (failed: {})", codes.join(", "))
            } else {
                "no task completed".to_owned()
            });
        }
        why
    }

    /// The human table.
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "ringworker-loadgen report")?;
        writeln!(
            out,
            "  agent runtime {}  transport {}  sessions {}  handler {}  payload {}  {}",
            self.runtime.as_deref().unwrap_or("(external)"),
            self.transport,
            self.sessions,
            self.handler,
            self.payload,
            self.pacing
        )?;
        writeln!(
            out,
            "  warm-up         {:.2} s, {} tasks excluded from the rates and latency",
            self.warmup_s,
            grouped(self.tasks_warmup)
        )?;
        writeln!(
            out,
            "  measured        {:.2} s, {} tasks (the rates and latency below)",
            self.duration_s,
            grouped(self.tasks_measured)
        )?;
        writeln!(
            out,
            "  tasks           ok {}  failed {}  wrong {}  lost {}  (whole run, warm-up included)",
            self.tasks_ok, self.tasks_failed, self.tasks_wrong, self.tasks_lost
        )?;
        if self.tasks_unread > 0 {
            writeln!(
                out,
                "    unread {}: sent before the agent's DRAIN arrived, reached it after its GOODBYE",
                self.tasks_unread
            )?;
        }
        for (code, count) in &self.failure_codes {
            writeln!(out, "    failed {code}: {count}")?;
        }
        writeln!(out, "  throughput      {:.0} tasks/s", self.tasks_per_sec)?;
        writeln!(
            out,
            "  bandwidth       payload {:.1} MiB/s  wire {:.1} MiB/s",
            self.payload_mib_per_sec, self.wire_mib_per_sec
        )?;
        let l = &self.latency_us;
        writeln!(
            out,
            "  latency (us)    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        writeln!(
            out,
            "  per session     tasks min {}  max {}",
            self.per_session_tasks_min, self.per_session_tasks_max
        )?;
        match (self.agent_cpu_s, self.agent_cpu_us_per_task) {
            (Some(agent), Some(per_task)) => writeln!(
                out,
                "  cpu             loadgen {:.2} s ({:.3} us/task)  agent {:.2} s ({:.3} us/task)",
                self.loadgen_cpu_s, self.loadgen_cpu_us_per_task, agent, per_task
            )?,
            _ => writeln!(
                out,
                "  cpu             loadgen {:.2} s ({:.3} us/task)  agent n/a (not spawned)",
                self.loadgen_cpu_s, self.loadgen_cpu_us_per_task
            )?,
        }
        let mut split = format!(
            "    user/kernel   loadgen {:.3} / {:.3} us/task",
            self.loadgen_cpu_user_us_per_task, self.loadgen_cpu_sys_us_per_task
        );
        if let (Some(user), Some(sys)) = (
            self.agent_cpu_user_us_per_task,
            self.agent_cpu_sys_us_per_task,
        ) {
            split += &format!("  agent {user:.3} / {sys:.3} us/task");
        }
        writeln!(out, "{split}")?;
        if self.transport.starts_with("tls") || self.tls_handshake_failures > 0 {
            match &self.tls_handshake_error {
                Some(first) => writeln!(
                    out,
                    "  tls             handshakes failed {} (first: {first})",
                    self.tls_handshake_failures
                )?,
                None => writeln!(out, "  tls             handshakes failed 0")?,
            }
        }
        writeln!(out, "  byte accounting (agent vs loadgen, per connection):")?;
        let mut conns: Vec<&ConnReport> = self.connections.iter().collect();
        conns.sort_by_key(|c| c.session);
        let shown = conns.len().min(16);
        for c in &conns[..shown] {
            writeln!(
                out,
                "    session {:>5}  agent sent {:>14} / loadgen received {:>14}  agent received {:>14} / loadgen sent {:>14}  {}",
                c.session.map_or("?".to_owned(), |s| s.to_string()),
                c.agent_bytes_sent.map_or("-".to_owned(), |b| b.to_string()),
                c.bytes_received,
                c.agent_bytes_received.map_or("-".to_owned(), |b| b.to_string()),
                c.bytes_sent,
                accounting_verdict(c)
            )?;
            if let (Some(after), Some(sent)) = (c.tls_after_goodbye, c.agent_bytes_sent) {
                writeln!(
                    out,
                    "                   over TLS: GOODBYE reported {} sent, its record began at {}; {after} bytes of records and alert followed",
                    sent - after,
                    c.bytes_received - after
                )?;
            }
        }
        if conns.len() > shown {
            let exact = conns[shown..].iter().filter(|c| c.accounting_exact).count();
            writeln!(
                out,
                "    ... {} more connections, {} exact",
                conns.len() - shown,
                exact
            )?;
        }
        writeln!(
            out,
            "  result          {}",
            if self.passed() {
                "PASS: every result verified, byte totals exact".to_owned()
            } else {
                format!("FAIL: {}", self.failures().join("; "))
            }
        )?;
        Ok(())
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The last column of a connection's byte-accounting line. Exact with two
/// different "received / sent" numbers says why: the TASKs that reached the
/// agent after its GOODBYE, which it never read.
fn accounting_verdict(c: &ConnReport) -> String {
    if !c.accounting_exact {
        return c.error.clone().unwrap_or_else(|| "MISMATCH".to_owned());
    }
    if c.tasks_unread == 0 {
        return "exact".to_owned();
    }
    format!(
        "exact ({} bytes in {} TASK{} the agent never read)",
        c.bytes_unread,
        c.tasks_unread,
        if c.tasks_unread == 1 { "" } else { "s" }
    )
}

/// Write the HdrHistogram percentile distribution (`.hgrm`), in microseconds.
pub fn write_hgrm(histogram: &Histogram<u64>, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in histogram.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {:>14.2}",
            v.value_iterated_to() as f64,
            q,
            total,
            inverse
        )?;
    }
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean(),
        histogram.stdev()
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64,
        histogram.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-second run of `conns` with nothing measured.
    fn run_result(conns: Vec<ConnReport>) -> RunResult {
        RunResult {
            conns,
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap(),
            measured: std::time::Duration::from_secs(1),
            measured_tasks: 0,
            warmup: std::time::Duration::ZERO,
            warmup_tasks: 0,
            measured_payload_bytes: 0,
            measured_wire_bytes: 0,
            failure_codes: Default::default(),
            tls_handshake_failures: 0,
            tls_handshake_error: None,
        }
    }

    /// An echo run in a closed loop of `sessions` over `transport`.
    fn echo_run(sessions: u32, transport: &str) -> Describe {
        Describe {
            runtime: None,
            sessions,
            handler: "echo:1".to_owned(),
            payload: "64".to_owned(),
            pacing: "closed loop".to_owned(),
            transport: transport.to_owned(),
        }
    }

    fn printed(conns: Vec<ConnReport>) -> String {
        let result = run_result(conns);
        let mut out = Vec::new();
        Report::new(&result, echo_run(2, "unix"), CpuTimes::default(), None)
            .print(&mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(4_207_840), "4,207,840");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn the_report_says_what_the_warm_up_excluded_and_what_was_measured() {
        let result = RunResult {
            conns: vec![ConnReport {
                session: Some(0),
                tasks_ok: 4_207_840,
                ..ConnReport::default()
            }],
            histogram: {
                let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
                h.record_n(50, 2_503_641).unwrap();
                h
            },
            measured: std::time::Duration::from_secs(3),
            measured_tasks: 2_503_641,
            warmup: std::time::Duration::from_secs(2),
            warmup_tasks: 1_704_199,
            ..run_result(Vec::new())
        };
        let report = Report::new(&result, echo_run(1, "tcp"), CpuTimes::default(), None);
        assert_eq!(report.tasks_measured, 2_503_641);
        assert_eq!(report.tasks_warmup, 1_704_199);
        assert_eq!(report.warmup_s, 2.0);
        assert!((report.tasks_per_sec - 2_503_641.0 / 3.0).abs() < 1e-6);
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "  warm-up         2.00 s, 1,704,199 tasks excluded from the rates and latency\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  measured        3.00 s, 2,503,641 tasks (the rates and latency below)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("ok 4207840  failed 0  wrong 0  lost 0  (whole run, warm-up included)"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["tasks_measured"], 2_503_641);
        assert_eq!(json["tasks_warmup"], 1_704_199);
        assert_eq!(json["warmup_s"], 2.0);
    }

    #[test]
    fn cpu_is_reported_as_user_and_kernel_and_their_sum() {
        let result = RunResult {
            measured_tasks: 250_000,
            ..run_result(Vec::new())
        };
        let loadgen = CpuTimes {
            user_s: 0.25,
            sys_s: 0.5,
        };
        let agent = CpuTimes {
            user_s: 0.125,
            sys_s: 1.0,
        };
        let report = Report::new(&result, echo_run(1, "tcp"), loadgen, Some(agent));
        let json = serde_json::to_value(&report).unwrap();
        for (key, value) in [
            ("loadgen_cpu_s", 0.75),
            ("loadgen_cpu_user_s", 0.25),
            ("loadgen_cpu_sys_s", 0.5),
            ("loadgen_cpu_us_per_task", 3.0),
            ("loadgen_cpu_user_us_per_task", 1.0),
            ("loadgen_cpu_sys_us_per_task", 2.0),
            ("agent_cpu_s", 1.125),
            ("agent_cpu_user_s", 0.125),
            ("agent_cpu_sys_s", 1.0),
            ("agent_cpu_us_per_task", 4.5),
            ("agent_cpu_user_us_per_task", 0.5),
            ("agent_cpu_sys_us_per_task", 4.0),
        ] {
            assert_eq!(json[key].as_f64(), Some(value), "{key}: {json}");
        }
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "    user/kernel   loadgen 1.000 / 2.000 us/task  agent 0.500 / 4.000 us/task\n"
            ),
            "{text}"
        );

        // An agent the loadgen did not spawn: its CPU is null, split or not.
        let report = Report::new(&result, echo_run(1, "tcp"), loadgen, None);
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "agent_cpu_s",
            "agent_cpu_user_s",
            "agent_cpu_sys_s",
            "agent_cpu_user_us_per_task",
            "agent_cpu_sys_us_per_task",
        ] {
            assert!(json[key].is_null(), "{key}: {json}");
        }
        assert_eq!(json["loadgen_cpu_sys_s"].as_f64(), Some(0.5));
    }

    #[test]
    fn an_exact_line_with_unread_tasks_says_why_the_numbers_differ() {
        let whole = ConnReport {
            session: Some(0),
            tasks_ok: 10,
            bytes_sent: 1000,
            bytes_received: 900,
            agent_bytes_sent: Some(900),
            agent_bytes_received: Some(1000),
            accounting_exact: true,
            ..ConnReport::default()
        };
        let short = ConnReport {
            session: Some(1),
            tasks_ok: 10,
            tasks_unread: 192,
            bytes_unread: 263_488,
            bytes_sent: 755_708_384,
            bytes_received: 900,
            agent_bytes_sent: Some(900),
            agent_bytes_received: Some(755_444_896),
            accounting_exact: true,
            ..ConnReport::default()
        };
        let text = printed(vec![whole, short]);
        let line = |session: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("session {session:>5}")))
                .unwrap_or_else(|| panic!("no line for session {session}:\n{text}"))
                .to_owned()
        };
        assert!(line("0").ends_with("  exact"), "{text}");
        assert!(
            line("1").ends_with(
                "agent received      755444896 / loadgen sent      755708384  \
                 exact (263488 bytes in 192 TASKs the agent never read)"
            ),
            "{text}"
        );
    }
}
