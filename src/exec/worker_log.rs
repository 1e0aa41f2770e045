//! What a `pool` worker writes on stdout and stderr, made into log lines:
//! each line capped ([`MAX_LINE`] bytes kept, the rest counted), and the
//! lines of one handler rate-limited ([`LogBudget`]: at most
//! [`LINES_PER_WINDOW`] per [`WINDOW`], the swallowed ones counted and
//! reported with the next line let through). Without I/O: the caller
//! logs the lines it is given. [`log_limit`](crate::log_limit) keys on a
//! line's text, which suits a repeated warning but not a worker's varied
//! prints, hence this budget.

use std::time::{Duration, Instant};

/// Bytes of one line kept; the rest of the line is counted and dropped.
pub const MAX_LINE: usize = 1024;
/// Lines of one handler logged per [`WINDOW`].
pub const LINES_PER_WINDOW: u32 = 100;
pub const WINDOW: Duration = Duration::from_secs(10);

/// One complete line (without its newline), lossy UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Bytes of the line beyond [`MAX_LINE`], dropped.
    pub cut: u64,
}

/// Lines out of one stream, in any split, holding at most [`MAX_LINE`]
/// bytes.
#[derive(Debug, Clone, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    cut: u64,
}

impl LineBuffer {
    /// Append the complete lines in `bytes` to `lines`.
    pub fn feed(&mut self, mut bytes: &[u8], lines: &mut Vec<Line>) {
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_LINE - self.buf.len();
            let kept = part.len().min(room);
            self.buf.extend_from_slice(&part[..kept]);
            self.cut += (part.len() - kept) as u64;
            if complete {
                lines.push(self.take());
            }
            bytes = rest;
        }
    }

    /// The stream ended: its last line, if it had no newline.
    pub fn finish(&mut self) -> Option<Line> {
        (!self.buf.is_empty() || self.cut > 0).then(|| self.take())
    }

    fn take(&mut self) -> Line {
        let text = String::from_utf8_lossy(&self.buf)
            .trim_end_matches('\r')
            .to_owned();
        self.buf.clear();
        Line {
            text,
            cut: std::mem::take(&mut self.cut),
        }
    }
}

/// A handler's allowance of log lines.
#[derive(Debug, Clone)]
pub struct LogBudget {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBudget {
    pub fn new() -> Self {
        LogBudget {
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// One line at `now`: `Some(n)` to log it, `n` lines having been
    /// swallowed since the last one logged; `None` to swallow it.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= LINES_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Lines swallowed and not yet reported.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, cut: u64) -> Line {
        Line {
            text: text.to_owned(),
            cut,
        }
    }

    #[test]
    fn lines_come_whole_from_any_split_and_long_ones_are_capped() {
        let mut buffer = LineBuffer::default();
        let mut lines = Vec::new();
        for chunk in b"one\r\ntw".chunks(2).chain([&b"o\nthr"[..]]) {
            buffer.feed(chunk, &mut lines);
        }
        assert_eq!(lines, [line("one", 0), line("two", 0)]);
        lines.clear();
        let long = vec![b'x'; MAX_LINE + 500];
        buffer.feed(b"ee\n", &mut lines);
        buffer.feed(&long, &mut lines);
        buffer.feed(&long, &mut lines);
        buffer.feed(b"\nlast", &mut lines);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], line("three", 0));
        assert_eq!(lines[1].text.len(), MAX_LINE, "held no more than the cap");
        assert_eq!(lines[1].cut, (MAX_LINE + 1000) as u64);
        assert_eq!(buffer.finish(), Some(line("last", 0)));
        assert_eq!(buffer.finish(), None);
    }

    #[test]
    fn the_budget_lets_a_window_of_lines_through_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut budget = LogBudget::new();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(budget.admit(t0), Some(0));
        }
        for i in 0..7 {
            assert_eq!(budget.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(budget.suppressed(), 7);
        // The next window: the first line reports the swallowed ones.
        assert_eq!(budget.admit(t0 + WINDOW), Some(7));
        assert_eq!(budget.admit(t0 + WINDOW), Some(0));
        assert_eq!(budget.suppressed(), 0);
    }
}
