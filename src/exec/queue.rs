//! [`WaitQueue`]: tasks waiting for a free child or worker, first come
//! first served, never more than a fixed number; [`ExecGate`]: an `exec`
//! handler's `concurrency` with such a queue in front.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A bounded FIFO of task keys with the time each started waiting. When
/// it is full, [`WaitQueue::push`] gives the key back: the caller stops
/// taking tasks (back-pressure, as `max_in_flight` does) rather than
/// queueing without bound.
#[derive(Debug, Clone)]
pub struct WaitQueue<K> {
    waiting: VecDeque<(K, Instant)>,
    capacity: usize,
}

impl<K: PartialEq> WaitQueue<K> {
    pub fn new(capacity: usize) -> Self {
        WaitQueue {
            waiting: VecDeque::new(),
            capacity,
        }
    }

    /// Add `key`, or give it back when the queue is full.
    pub fn push(&mut self, key: K, now: Instant) -> Result<(), K> {
        if self.waiting.len() >= self.capacity {
            return Err(key);
        }
        self.waiting.push_back((key, now));
        Ok(())
    }

    /// The oldest key and how long it waited.
    pub fn pop(&mut self, now: Instant) -> Option<(K, Duration)> {
        let (key, since) = self.waiting.pop_front()?;
        Some((key, now.saturating_duration_since(since)))
    }

    /// Take `key` out (its task was cancelled or timed out while waiting).
    pub fn remove(&mut self, key: &K) -> bool {
        match self.waiting.iter().position(|(k, _)| k == key) {
            Some(at) => {
                self.waiting.remove(at);
                true
            }
            None => false,
        }
    }

    /// The keys that started waiting at or before `cutoff`, oldest first,
    /// taken out.
    pub fn take_older_than(&mut self, cutoff: Instant) -> Vec<K> {
        let mut taken = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|(_, since)| *since <= cutoff)
        {
            if let Some((key, _)) = self.waiting.pop_front() {
                taken.push(key);
            }
        }
        taken
    }

    /// When the oldest started waiting.
    pub fn oldest(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, since)| *since)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.waiting.len() >= self.capacity
    }
}

/// What [`ExecGate::submit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start its child now.
    Start,
    /// It waits for a running child to end.
    Wait,
}

/// An `exec` handler's concurrency: at most `limit` children at once,
/// the tasks beyond them waiting (bounded) in arrival order.
#[derive(Debug, Clone)]
pub struct ExecGate<K> {
    limit: usize,
    running: usize,
    waiting: WaitQueue<K>,
}

impl<K: PartialEq> ExecGate<K> {
    pub fn new(limit: usize, max_waiting: usize) -> Self {
        ExecGate {
            limit: limit.max(1),
            running: 0,
            waiting: WaitQueue::new(max_waiting),
        }
    }

    /// A task arrives: start it, queue it, or (`Err`, the queue full) give
    /// it back so that the caller takes no more tasks for now.
    pub fn submit(&mut self, key: K, now: Instant) -> Result<Admission, K> {
        if self.running < self.limit && self.waiting.is_empty() {
            self.running += 1;
            return Ok(Admission::Start);
        }
        self.waiting.push(key, now)?;
        Ok(Admission::Wait)
    }

    /// A child ended: the next waiting task to start, with its wait.
    pub fn finished(&mut self, now: Instant) -> Option<(K, Duration)> {
        self.running = self.running.saturating_sub(1);
        let next = self.waiting.pop(now)?;
        self.running += 1;
        Some(next)
    }

    /// Take waiting task `key` out (its connection is gone): `false` when
    /// it is not waiting (running, or unknown).
    pub fn remove(&mut self, key: &K) -> bool {
        self.waiting.remove(key)
    }

    /// Waiting tasks whose `timeout` (from their arrival) has passed,
    /// taken out: answer them FAILED `timeout`.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<K> {
        match now.checked_sub(timeout) {
            Some(cutoff) => self.waiting.take_older_than(cutoff),
            None => Vec::new(),
        }
    }

    /// When the oldest waiting task's `timeout` passes.
    pub fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.waiting.oldest().map(|since| since + timeout)
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_fifo_bounded_and_reports_the_wait() {
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(2);
        assert_eq!(queue.push(1, t0), Ok(()));
        assert_eq!(queue.push(2, t0 + Duration::from_millis(5)), Ok(()));
        assert!(queue.is_full());
        assert_eq!(queue.push(3, t0), Err(3), "full: the key comes back");
        assert_eq!(
            queue.pop(t0 + Duration::from_millis(10)),
            Some((1, Duration::from_millis(10)))
        );
        assert_eq!(queue.push(3, t0 + Duration::from_millis(20)), Ok(()));
        assert!(queue.remove(&2));
        assert!(!queue.remove(&2));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.oldest(), Some(t0 + Duration::from_millis(20)));
        assert_eq!(
            queue.take_older_than(t0 + Duration::from_millis(19)),
            Vec::<i32>::new()
        );
        assert_eq!(
            queue.take_older_than(t0 + Duration::from_millis(20)),
            vec![3]
        );
        assert!(queue.is_empty());
        assert_eq!(queue.pop(t0), None);
    }

    #[test]
    fn the_gate_starts_up_to_its_limit_and_queues_the_rest_in_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut gate = ExecGate::new(2, 2);
        assert_eq!(gate.submit("a", t0), Ok(Admission::Start));
        assert_eq!(gate.submit("b", t0), Ok(Admission::Start));
        assert_eq!(gate.submit("c", t0 + ms), Ok(Admission::Wait));
        assert_eq!(gate.submit("d", t0 + 2 * ms), Ok(Admission::Wait));
        assert_eq!(gate.submit("e", t0), Err("e"), "bounded");
        assert_eq!((gate.running(), gate.waiting()), (2, 2));
        assert_eq!(gate.finished(t0 + 5 * ms), Some(("c", 4 * ms)));
        assert_eq!(gate.running(), 2, "c took a's place");
        assert_eq!(gate.next_deadline(100 * ms), Some(t0 + 102 * ms));
        assert_eq!(gate.expired(t0 + 101 * ms, 100 * ms), Vec::<&str>::new());
        assert_eq!(gate.expired(t0 + 102 * ms, 100 * ms), vec!["d"]);
        assert_eq!(gate.finished(t0), None);
        assert_eq!(gate.finished(t0), None);
        assert_eq!(gate.running(), 0);
        // A free place is not taken ahead of a waiting task.
        let mut gate = ExecGate::new(1, 4);
        assert_eq!(gate.submit(1, t0), Ok(Admission::Start));
        assert_eq!(gate.submit(2, t0), Ok(Admission::Wait));
        assert_eq!(gate.finished(t0), Some((2, Duration::ZERO)));
        assert_eq!(gate.submit(3, t0), Ok(Admission::Wait));
        // A waiting task taken out frees its place in the queue only.
        assert!(gate.remove(&3));
        assert!(!gate.remove(&3));
        assert_eq!((gate.running(), gate.waiting()), (1, 0));
    }
}
