//! [`WaitQueue`]: tasks waiting for a free child or worker, first come
//! first served, never more than a fixed number.

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
}
