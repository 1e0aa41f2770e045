//! A child process a test started, with its stderr collected.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A child process this test started. Its stderr is collected line by line
/// on a thread; if it is still running when dropped (a failed assertion),
/// it is killed by its own PID and reaped, so nothing leaks.
pub struct Spawned {
    child: Child,
    log: Arc<Mutex<String>>,
    collector: Option<JoinHandle<()>>,
    /// How many stderr lines [`Spawned::next_line`] has passed over.
    taken: usize,
}

impl Spawned {
    pub fn new(mut command: Command) -> Spawned {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let collector = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Spawned {
            child,
            log,
            collector: Some(collector),
            taken: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .matches(needle)
            .count()
    }

    pub fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Send a signal to this child, by its PID.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {} failed", self.pid());
    }

    /// Wait for the exit, up to `limit`; `None` if it is still running.
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the exit, up to `limit`; panic with its stderr if it is
    /// still running then (the drop kills it).
    pub fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        self.wait_within(limit)
            .unwrap_or_else(|| panic!("did not exit within {limit:?}; stderr:\n{}", self.log()))
    }

    /// The next stderr line, after those already passed over, that `wanted`
    /// accepts (`what` says what it is for the failure message); panics if
    /// none comes within `limit`.
    pub fn next_line(
        &mut self,
        what: &str,
        limit: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            for line in log.lines().skip(self.taken) {
                self.taken += 1;
                if wanted(line) {
                    return line.to_owned();
                }
            }
            if Instant::now() >= deadline {
                panic!("no line {what} within {limit:?}; stderr so far:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The stderr lines [`Spawned::next_line`] has not passed over, once the
    /// process has exited.
    pub fn rest(&mut self) -> Vec<String> {
        let taken = self.taken;
        self.final_log()
            .lines()
            .skip(taken)
            .map(str::to_owned)
            .collect()
    }

    /// The whole stderr, once the process has exited (the pipe is closed).
    pub fn final_log(&mut self) -> String {
        if let Some(collector) = self.collector.take() {
            let _ = collector.join();
        }
        self.log()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(collector) = self.collector.take() {
            let _ = collector.join();
        }
    }
}

/// A process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub pid: u32,
    /// Its state letter (`Z`: a zombie, dead but not yet reaped).
    pub state: char,
    pub pgrp: u32,
}

/// Every process on the machine now (one that ends meanwhile is skipped).
pub fn all_processes() -> Vec<ProcStat> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // it ended meanwhile
        };
        // After the command name in parentheses: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (
            fields.first().and_then(|s| s.chars().next()),
            fields.get(2).and_then(|f| f.parse().ok()),
        ) else {
            continue;
        };
        all.push(ProcStat { pid, state, pgrp });
    }
    all
}

/// Processes of group `pgid` still alive (a zombie is dead: it holds no
/// descriptor and runs nothing, and whether it is reaped is up to
/// whichever process adopted it).
pub fn live_members(pgid: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid && p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}
