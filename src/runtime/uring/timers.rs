//! The deadlines of one event loop's slots: when each slot must next be
//! driven (a heartbeat, a drain deadline, a redial).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of `(deadline, slot)` in which only each slot's earliest
/// deadline counts. A slot re-declares the deadline it needs every time it is
/// driven, so once its earliest entry fires, later ones are not needed: they
/// are skipped when they come up, and dropped in bulk when they pile up, so a
/// stream of short deadlines under one long one cannot grow the heap.
#[derive(Debug)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u32)>>,
    earliest: Vec<Option<Instant>>,
}

impl Timers {
    pub(super) fn new(slots: usize) -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            earliest: vec![None; slots],
        }
    }

    /// Drive `slot` at `at` (or earlier, if it already has an earlier
    /// deadline).
    pub(super) fn schedule(&mut self, slot: u32, at: Instant) {
        let earliest = &mut self.earliest[slot as usize];
        if earliest.is_some_and(|current| current <= at) {
            return;
        }
        *earliest = Some(at);
        self.heap.push(Reverse((at, slot)));
        if self.heap.len() > 2 * self.earliest.len() + 64 {
            let earliest = &self.earliest;
            self.heap
                .retain(|Reverse((at, slot))| earliest[*slot as usize] == Some(*at));
        }
    }

    /// Room for slots `0..slots` (a loop taking sessions over from another
    /// may need more than it started with).
    pub(super) fn grow(&mut self, slots: usize) {
        if slots > self.earliest.len() {
            self.earliest.resize(slots, None);
        }
    }

    /// Drop `slot`'s deadline: its session has left the loop.
    pub(super) fn forget(&mut self, slot: u32) {
        self.earliest[slot as usize] = None;
    }

    /// The next deadline, if any.
    pub(super) fn next(&mut self) -> Option<Instant> {
        self.discard_stale();
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// A slot whose deadline is at or before `now`, each due slot once.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<u32> {
        self.discard_stale();
        let &Reverse((at, slot)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.earliest[slot as usize] = None;
        Some(slot)
    }

    fn discard_stale(&mut self) {
        while let Some(&Reverse((at, slot))) = self.heap.peek() {
            if self.earliest[slot as usize] == Some(at) {
                return;
            }
            self.heap.pop();
        }
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn due_slots_come_out_in_deadline_order_once_each() {
        let t0 = Instant::now();
        let mut timers = Timers::new(3);
        timers.schedule(2, t0 + ms(30));
        timers.schedule(0, t0 + ms(10));
        timers.schedule(1, t0 + ms(20));
        timers.schedule(1, t0 + ms(25)); // later than its deadline: no change
        assert_eq!(timers.next(), Some(t0 + ms(10)));
        assert_eq!(timers.pop_due(t0 + ms(5)), None);
        assert_eq!(timers.pop_due(t0 + ms(20)), Some(0));
        assert_eq!(timers.pop_due(t0 + ms(20)), Some(1));
        assert_eq!(timers.pop_due(t0 + ms(20)), None);
        assert_eq!(timers.next(), Some(t0 + ms(30)));
        assert_eq!(timers.pop_due(t0 + ms(99)), Some(2));
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn a_superseded_deadline_does_not_drive_the_slot_again() {
        let t0 = Instant::now();
        let mut timers = Timers::new(1);
        timers.schedule(0, t0 + ms(60_000));
        timers.schedule(0, t0 + ms(1));
        assert_eq!(timers.pop_due(t0 + ms(1)), Some(0));
        // The slot, driven, asks for something else; the old 60 s entry
        // is not what wakes it.
        timers.schedule(0, t0 + ms(2));
        assert_eq!(timers.next(), Some(t0 + ms(2)));
        assert_eq!(timers.pop_due(t0 + ms(2)), Some(0));
        assert_eq!(timers.next(), None, "the superseded entry is gone");
        assert_eq!(timers.pop_due(t0 + ms(120_000)), None);
    }

    #[test]
    fn a_forgotten_slot_is_not_due_and_a_grown_table_takes_new_slots() {
        let t0 = Instant::now();
        let mut timers = Timers::new(1);
        timers.schedule(0, t0 + ms(5));
        timers.forget(0);
        assert_eq!(timers.pop_due(t0 + ms(10)), None);
        assert_eq!(timers.next(), None);
        timers.grow(3);
        timers.schedule(2, t0 + ms(7));
        assert_eq!(timers.pop_due(t0 + ms(10)), Some(2));
    }

    #[test]
    fn short_deadlines_under_a_long_one_do_not_grow_the_heap() {
        // A manager keeps a 60 s sleep task running and sends 1 ms ones one
        // after another: each fire re-declares the 60 s deadline.
        let t0 = Instant::now();
        let slots = 4;
        let mut timers = Timers::new(slots);
        let mut now = t0;
        for _ in 0..100_000 {
            timers.schedule(0, t0 + ms(60_000));
            now += ms(1);
            timers.schedule(0, now);
            assert_eq!(timers.pop_due(now), Some(0));
            assert!(timers.entries() <= 2 * slots + 65, "{}", timers.entries());
        }
    }
}
