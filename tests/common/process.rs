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
        let stderr = child.stderr.take().unwrap();
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
