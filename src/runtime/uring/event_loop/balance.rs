//! Sessions moving between event loops.
//!
//! Each loop owns its sessions, but a session at rest (open, nothing of it
//! in flight but its receive, no job out: [`Connection::at_rest`]) can move
//! to another loop: its receive is cancelled, and once that has completed
//! the slot, socket and connection go to the other loop over a channel and
//! its wake socket. There the socket is registered, the receive armed on
//! that loop's buffer ring and the timer scheduled. No byte is lost or read
//! twice: the multishot receive ends before the socket changes rings.
//!
//! Why: a loop per CPU is right when the agent has the machine to itself;
//! on a machine whose CPUs are all busy (with the manager's peer, other
//! services, or each other), loops that each have some work wait for CPUs
//! and switch in and out, which costs more than one loop doing all of it
//! (measured in BENCHMARKS.md: 16 sessions × 32 in flight on 2 CPUs next to
//! the load generator). Tokio's workers share work by stealing; here whole
//! sessions move, seldom, on what each loop measures of itself:
//! - *Concentrate.* A loop that waited for a CPU a tenth of its time or
//!   more (`/proc/thread-self/schedstat`) hands half its sessions to the
//!   lowest-numbered loop whose CPU time and its own add up to at most one
//!   CPU. It goes on doing so, contended or not, for as long as it keeps
//!   finding room within 2 s of its last move: the last few sessions would
//!   otherwise keep a second loop waking up for little work. Sessions only
//!   move down this way, so this never cycles.
//! - *Spread.* A loop busy 90 % of its time or more that does not wait for
//!   CPUs, on a machine with half a CPU or more idle (`/proc/stat`), hands a
//!   quarter of its sessions to the least busy loop under 50 %.
//! - After a loop gives or takes sessions it holds still for two periods,
//!   so that what it measures next reflects the move.
//! - Only a loop with traffic gives: 1,000 receive completions in the
//!   period or more. Quiet sessions cost a loop nothing to keep, and a burst
//!   of connects (10,000 sessions dialling at once keep both loops and
//!   the manager busy) is not a load that lasts. At most 256 sessions move
//!   per period.
//!
//! The two rules cannot both hold: contention and an idle CPU exclude each
//! other. [`LoopBalance::Churn`] moves a session every few milliseconds whatever
//! the load, for the tests of the move itself.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{DialWait, EventLoop, Life, Recv, Slot};
use crate::runtime::LoopBalance;

/// How often a loop measures itself and decides.
const PERIOD: Duration = Duration::from_millis(100);
/// How long a slot told to leave may take to finish its last send.
const LEAVE_PATIENCE: Duration = Duration::from_millis(200);
/// How long a loop that moved sessions down goes on doing so.
const CONCENTRATING: Duration = Duration::from_secs(2);
/// How often a session moves in [`LoopBalance::Churn`].
const CHURN_PERIOD: Duration = Duration::from_millis(5);
/// Receive completions in a period below which a loop gives nothing.
const BUSY_RECEIVES: u64 = 1000;
/// Sessions a loop hands over per period, at most.
const MOVES_PER_PERIOD: usize = 256;
/// Thresholds, in thousandths of one CPU (or of the period).
const CONTENDED: u32 = 100;
const ONE_CPU: u32 = 1000;
const SATURATED: u32 = 900;
const UNCONTENDED: u32 = 50;
const IDLE_SPARE: u32 = 500;
const LIGHT: u32 = 500;

/// A session on its way to another loop.
pub struct Arrival(Box<Slot>);

/// What one loop publishes of itself.
#[derive(Debug, Default)]
struct Share {
    cpu: AtomicU32,
    wait: AtomicU32,
    live: AtomicU32,
}

/// One loop's way in: its inbox and its wake socket.
#[derive(Debug)]
struct Door {
    inbox: Sender<Arrival>,
    wake: UnixStream,
    /// The loop has ended (it panicked): nothing more is sent to it. Held
    /// while sending, so a loop that ends takes in or gives up everything
    /// sent before.
    closed: std::sync::Mutex<bool>,
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Arrival")
            .field(&self.0.conn.index())
            .finish()
    }
}

/// What the runtime's loops share to move sessions among themselves.
#[derive(Debug)]
pub struct Balance {
    mode: LoopBalance,
    doors: Vec<Door>,
    shares: Vec<Share>,
    /// Sessions sent and not yet taken in: no loop ends while any is.
    in_transit: AtomicUsize,
    /// Sessions not yet stopped for good, over all loops: a loop whose own
    /// sessions have all stopped (or left) ends only when this is zero.
    unstopped: AtomicUsize,
}

impl Balance {
    /// For `loops` loops whose wake sockets are `wakes`, with `sessions`
    /// sessions in all; returns each loop's inbox.
    pub fn new(
        mode: LoopBalance,
        wakes: Vec<UnixStream>,
        sessions: usize,
    ) -> (Balance, Vec<Receiver<Arrival>>) {
        let mut doors = Vec::new();
        let mut inboxes = Vec::new();
        for wake in wakes {
            let (inbox, rx) = crossbeam_channel::unbounded();
            doors.push(Door {
                inbox,
                wake,
                closed: std::sync::Mutex::new(false),
            });
            inboxes.push(rx);
        }
        let shares = doors.iter().map(|_| Share::default()).collect();
        let balance = Balance {
            mode,
            doors,
            shares,
            in_transit: AtomicUsize::new(0),
            unstopped: AtomicUsize::new(sessions),
        };
        (balance, inboxes)
    }

    pub(super) fn moves(&self) -> bool {
        self.mode != LoopBalance::Off && self.doors.len() > 1
    }

    /// Hand `slot` to loop `to`; it comes back when that loop has ended.
    pub(super) fn send(&self, to: usize, slot: Box<Slot>) -> Result<(), Box<Slot>> {
        let door = &self.doors[to];
        let closed = door.closed.lock().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(slot);
        }
        self.in_transit.fetch_add(1, Ordering::AcqRel);
        // The inbox's receiver lives until the door is closed.
        if let Err(err) = door.inbox.send(Arrival(slot)) {
            self.in_transit.fetch_sub(1, Ordering::AcqRel);
            return Err(err.into_inner().0);
        }
        drop(closed);
        let _ = (&door.wake).write(&[1]);
        Ok(())
    }

    /// Whether loop `to` takes sessions (it has not ended).
    pub(super) fn is_open(&self, to: usize) -> bool {
        !*self.doors[to]
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Loop `part` ends: close its door, then `drain` its inbox (returning
    /// how many sessions were in it), and count those and its `running`
    /// sessions as stopped, so the other loops do not wait for them.
    pub(super) fn close(&self, part: usize, running: usize, drain: impl FnOnce() -> usize) {
        let mut closed = self.doors[part]
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *closed = true;
        let arriving = drain();
        drop(closed);
        self.abandon(running, arriving);
    }

    /// A session was taken in.
    pub(super) fn arrived(&self) {
        self.in_transit.fetch_sub(1, Ordering::AcqRel);
    }

    /// A session stopped for good; the last one wakes every loop, so that
    /// loops without sessions of their own end too.
    pub(super) fn stopped(&self) {
        if self.unstopped.fetch_sub(1, Ordering::AcqRel) == 1 {
            for door in &self.doors {
                let _ = (&door.wake).write(&[1]);
            }
        }
    }

    /// `running` sessions will never stop and `arriving` were never taken
    /// in (a loop panicked, or never started): the other loops stop
    /// waiting for them.
    pub(crate) fn abandon(&self, running: usize, arriving: usize) {
        if running + arriving == 0 {
            return;
        }
        self.in_transit.fetch_sub(arriving, Ordering::AcqRel);
        for _ in 0..running + arriving {
            self.stopped();
        }
    }

    /// Whether nothing more can come to any loop: every session stopped,
    /// none in transit.
    pub(super) fn settled(&self) -> bool {
        self.unstopped.load(Ordering::Acquire) == 0 && self.in_transit.load(Ordering::Acquire) == 0
    }

    fn publish(&self, part: usize, load: Load) {
        let share = &self.shares[part];
        share.cpu.store(load.cpu, Ordering::Relaxed);
        share.wait.store(load.wait, Ordering::Relaxed);
        share.live.store(load.live, Ordering::Relaxed);
    }

    fn loads(&self) -> Vec<Load> {
        self.shares
            .iter()
            .map(|s| Load {
                cpu: s.cpu.load(Ordering::Relaxed),
                wait: s.wait.load(Ordering::Relaxed),
                live: s.live.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// One loop's measure of itself over a period, in thousandths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Load {
    /// On a CPU.
    pub cpu: u32,
    /// Runnable, waiting for a CPU.
    pub wait: u32,
    /// Sessions on the loop.
    pub live: u32,
}

/// Sessions to move: how many, to which loop, and whether to concentrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Move {
    pub to: usize,
    pub count: usize,
    pub concentrate: bool,
}

/// Which loop gets how many sessions of loop `me`, by the rules of the
/// module documentation; `idle` is the machine's idle time in thousandths
/// of a CPU, `concentrating` whether `me` moved sessions down lately.
pub(super) fn decide(me: usize, loads: &[Load], idle: u32, concentrating: bool) -> Option<Move> {
    let mine = loads[me];
    if mine.live == 0 {
        return None;
    }
    if mine.wait >= CONTENDED || concentrating {
        let target = (0..me).find(|&j| loads[j].cpu + mine.cpu <= ONE_CPU);
        if let Some(to) = target {
            let count = mine.live.div_ceil(2) as usize;
            return Some(Move {
                to,
                count,
                concentrate: true,
            });
        }
    }
    if mine.cpu >= SATURATED && mine.wait < UNCONTENDED && idle >= IDLE_SPARE && mine.live > 1 {
        let target = (0..loads.len())
            .filter(|&j| j != me && loads[j].cpu < LIGHT)
            .min_by_key(|&j| loads[j].cpu);
        if let Some(to) = target {
            let count = (mine.live as usize / 4).max(1);
            return Some(Move {
                to,
                count,
                concentrate: false,
            });
        }
    }
    None
}

/// What a loop measures, and when it may next move sessions.
#[derive(Debug)]
pub(super) struct Meter {
    at: Instant,
    thread: Option<(u64, u64)>,
    machine: Option<(u64, u64)>,
    cpus: u32,
    hold_until: Instant,
    concentrating_until: Instant,
    /// The loop's receive completions as of the last period.
    receives: u64,
}

impl Meter {
    pub(super) fn new(now: Instant) -> Meter {
        Meter {
            at: now,
            thread: None,
            machine: None,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            hold_until: now,
            concentrating_until: now,
            receives: 0,
        }
    }

    /// Hold still for two periods (sessions just moved).
    pub(super) fn hold(&mut self, now: Instant) {
        self.hold_until = now + 2 * PERIOD;
    }

    /// Once a period (`mode` permitting): measure, publish, and say which
    /// loop should get how many of this loop's `live` sessions; `receives`
    /// counts the loop's receive completions so far.
    pub(super) fn tick(
        &mut self,
        balance: &Balance,
        part: usize,
        (live, receives): (usize, u64),
        now: Instant,
    ) -> Option<Move> {
        let period = if balance.mode == LoopBalance::Churn {
            CHURN_PERIOD
        } else {
            PERIOD
        };
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed < period {
            return None;
        }
        self.at = now;
        if balance.mode == LoopBalance::Churn {
            let to = (part + 1) % balance.doors.len();
            return (live > 0).then_some(Move {
                to,
                count: 1,
                concentrate: false,
            });
        }
        let thread = thread_schedstat();
        let machine = machine_idle();
        let wall = elapsed.as_nanos().max(1) as u64;
        let (cpu, wait) = match (self.thread, thread) {
            (Some((r0, w0)), Some((r1, w1))) => (
                permille(r1.saturating_sub(r0), wall),
                permille(w1.saturating_sub(w0), wall),
            ),
            _ => (0, 0),
        };
        let idle = match (self.machine, machine) {
            (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                permille(i1.saturating_sub(i0), t1 - t0) * self.cpus
            }
            _ => 0,
        };
        let measured = self.thread.is_some() && thread.is_some();
        let busy = receives - self.receives >= BUSY_RECEIVES;
        self.receives = receives;
        self.thread = thread;
        self.machine = machine;
        let load = Load {
            cpu,
            wait,
            live: live as u32,
        };
        balance.publish(part, load);
        if !measured || !busy || now < self.hold_until {
            return None;
        }
        let concentrating = now < self.concentrating_until;
        let mut next = decide(part, &balance.loads(), idle, concentrating)?;
        next.count = next.count.min(MOVES_PER_PERIOD);
        if next.concentrate {
            self.concentrating_until = now + CONCENTRATING;
        }
        Some(next)
    }
}

impl EventLoop {
    /// Once a period: measure, and start moving the sessions the rules
    /// pick (their receives cancelled; each leaves in [`EventLoop::depart`]
    /// once its receive has ended).
    pub(super) fn rebalance(&mut self, now: Instant) {
        if !self.leaving.is_empty() {
            self.stay_when_stuck(now);
        }
        if !self.balance.moves() || self.stop_seen {
            return;
        }
        let running = self.live - self.stopped;
        let receives = self.receives;
        let Some(Move { to, count, .. }) =
            self.meter
                .tick(&self.balance, self.part, (running, receives), now)
        else {
            return;
        };
        if !self.balance.is_open(to) {
            return;
        }
        let mut picked = 0;
        // From the top, so that the ids in use stay low.
        for id in (0..self.slots.len()).rev() {
            if picked == count {
                break;
            }
            if !self.slots.get(id).is_some_and(may_leave) {
                continue;
            }
            self.slots[id].leaving = Some(to as u16); // at most MAX_THREADS loops
            self.cancel_recv(id as u32);
            self.leaving.push((id as u32, now));
            picked += 1;
        }
        if picked > 0 {
            self.meter.hold(now);
        }
    }

    /// A slot still leaving [`LEAVE_PATIENCE`] after it was told to (its last
    /// send is stuck behind a manager that does not read) stays after all
    /// and receives again: a manager may wait for its own write to go
    /// through before it reads.
    fn stay_when_stuck(&mut self, now: Instant) {
        let mut leaving = std::mem::take(&mut self.leaving);
        leaving.retain(|&(id, since)| {
            let Some(s) = self.slots.get_mut(id as usize) else {
                return false; // it left
            };
            if s.leaving.is_none() {
                return false;
            }
            if now.saturating_duration_since(since) < LEAVE_PATIENCE {
                return true;
            }
            s.leaving = None;
            self.mark_dirty(id);
            false
        });
        self.leaving = leaving;
    }

    /// A leaving slot was driven: send it to its loop once its receive
    /// has ended and its output is written (`true`), or wait for that, or
    /// stay after all when it has more to do than write (a stop, a job, a
    /// large frame, a close): `false`, the caller carries on with it.
    pub(super) fn depart(&mut self, id: u32) -> bool {
        let stop_seen = self.stop_seen;
        let s = &mut self.slots[id as usize];
        let Some(to) = s.leaving else { return false };
        let to = usize::from(to);
        if stop_seen
            || s.life != Life::Running
            || s.dial != DialWait::None
            || !s.conn.settling()
            || !self.balance.is_open(to)
        {
            s.leaving = None;
            return false;
        }
        if s.recv != Recv::None || s.inflight > 0 || !s.send_buf.is_empty() || !s.conn.at_rest() {
            return false; // the cancelled receive or a send is still ending
        }
        let Some(mut slot) = self.slots.take(id) else {
            return false;
        };
        let registered = std::mem::take(&mut slot.registered);
        slot.leaving = None;
        slot.dirty = false;
        let session = slot.conn.index();
        if let Err(mut slot) = self.balance.send(to, Box::new(slot)) {
            // That loop has ended: stay, and receive here again.
            slot.registered = registered;
            self.slots.put_back(id, *slot);
            return false;
        }
        if registered {
            let _ = self.ring.submitter().register_files_update(id, &[-1]);
        }
        self.timers.forget(id);
        self.live -= 1;
        self.agent.record_session_moved();
        tracing::debug!(
            session,
            from = self.part,
            to,
            "session moves to another event loop"
        );
        true
    }

    /// Take in the sessions other loops sent: each gets a vacant id (or a
    /// new one), its socket a place in the file table, its handlers' late
    /// answers this loop's wake-up, and is driven, which arms its receive
    /// here and schedules its timer.
    pub(super) fn take_arrivals(&mut self, now: Instant) {
        if !self.balance.moves() {
            return; // nothing is ever sent
        }
        while let Ok(Arrival(slot)) = self.inbox.try_recv() {
            let id = self.slots.put(*slot);
            self.timers.grow(self.slots.len());
            let file_table = self.file_table;
            let s = &mut self.slots[id as usize];
            if let Some(socket) = &s.socket {
                s.registered = file_table
                    && self
                        .ring
                        .submitter()
                        .register_files_update(id, &[socket.as_raw_fd()])
                        .is_ok();
            }
            let waker = self.late.clone();
            // Nothing is out that answers later (it was at rest), so the
            // new inbox loses nothing.
            let _kept = s.conn.set_waker(Arc::new(move || waker.wake(id)));
            if self.stop_seen {
                s.conn.request_stop(now);
            }
            self.live += 1;
            self.balance.arrived();
            self.mark_dirty(id);
            self.meter.hold(now);
        }
    }
}

/// Whether a slot may start leaving: running, settling, on a multishot
/// receive (which is cancelled; what is in flight besides ends before it
/// leaves).
fn may_leave(s: &Slot) -> bool {
    s.life == Life::Running
        && s.leaving.is_none()
        && s.dial == DialWait::None
        && s.recv == (Recv::Shared { cancelled: false })
        && s.rcvlowat == 1
        && s.socket.is_some()
        && s.conn.settling()
}

fn permille(part: u64, whole: u64) -> u32 {
    (part.saturating_mul(1000) / whole.max(1)).min(u64::from(u32::MAX)) as u32
}

/// This thread's time on a CPU and waiting for one, in nanoseconds.
fn thread_schedstat() -> Option<(u64, u64)> {
    let mut buf = [0u8; 128];
    let text = read_head("/proc/thread-self/schedstat", &mut buf)?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// The machine's idle and total time, in clock ticks.
fn machine_idle() -> Option<(u64, u64)> {
    let mut buf = [0u8; 256];
    let text = read_head("/proc/stat", &mut buf)?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let mut idle = 0;
    let mut total = 0;
    for (i, field) in line.split_whitespace().take(8).enumerate() {
        let ticks: u64 = field.parse().ok()?;
        total += ticks;
        if i == 3 || i == 4 {
            idle += ticks; // idle, iowait
        }
    }
    Some((idle, total))
}

/// The start of a file, read into `buf` (no allocation: the loop reads
/// these every period).
fn read_head<'a>(path: &str, buf: &'a mut [u8]) -> Option<&'a str> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => return None,
        }
    }
    std::str::from_utf8(&buf[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(cpu: u32, wait: u32, live: u32) -> Load {
        Load { cpu, wait, live }
    }

    #[test]
    fn contended_loops_concentrate_downwards_only() {
        // 16 x 32 on two CPUs beside the load generator, measured.
        let loads = [load(490, 300, 8), load(460, 320, 8)];
        let down = |to, count| {
            Some(Move {
                to,
                count,
                concentrate: true,
            })
        };
        assert_eq!(decide(1, &loads, 0, false), down(0, 4));
        assert_eq!(
            decide(0, &loads, 0, false),
            None,
            "loop 0 has no loop below it"
        );
        // Not when the two would not fit in one CPU.
        let busy = [load(700, 300, 8), load(460, 320, 8)];
        assert_eq!(decide(1, &busy, 0, false), None);
        assert_eq!(decide(1, &busy, 0, true), None);
        // Not when the loop gets its CPU, unless it is concentrating.
        let calm = [load(770, 20, 14), load(120, 10, 2)];
        assert_eq!(decide(1, &calm, 0, false), None);
        assert_eq!(decide(1, &calm, 0, true), down(0, 1));
    }

    #[test]
    fn a_saturated_loop_spreads_only_onto_idle_cpus() {
        let loads = [load(960, 10, 16), load(30, 0, 0), load(200, 0, 4)];
        let spread = Some(Move {
            to: 1,
            count: 4,
            concentrate: false,
        });
        assert_eq!(decide(0, &loads, 1500, false), spread);
        assert_eq!(
            decide(0, &loads, 100, false),
            None,
            "no idle CPU to spread onto"
        );
        let waiting = [load(960, 80, 16), load(30, 0, 0)];
        assert_eq!(
            decide(0, &waiting, 1500, false),
            None,
            "it waits: contention"
        );
        let lone = [load(960, 10, 1), load(30, 0, 0)];
        assert_eq!(
            decide(0, &lone, 1500, false),
            None,
            "one session cannot be split"
        );
    }

    #[test]
    fn the_loops_settle_when_the_last_session_stops_or_is_given_up() {
        let pairs: Vec<_> = (0..2).map(|_| UnixStream::pair().unwrap()).collect();
        let wakes = pairs
            .iter()
            .map(|(tx, _)| tx.try_clone().unwrap())
            .collect();
        let (balance, _inboxes) = Balance::new(LoopBalance::Auto, wakes, 3);
        assert!(balance.moves());
        balance.stopped();
        assert!(!balance.settled());
        // A loop that panicked with one session still running and one on
        // its way to it.
        balance.in_transit.fetch_add(1, Ordering::AcqRel);
        assert!(balance.is_open(1));
        balance.close(1, 1, || 1);
        assert!(!balance.is_open(1));
        assert!(balance.is_open(0));
        assert!(balance.settled());
        // Every loop was woken to see it.
        for (_, rx) in &pairs {
            rx.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            assert_eq!(std::io::Read::read(&mut &*rx, &mut byte).unwrap(), 1);
        }
    }

    #[test]
    fn a_loop_without_sessions_gives_nothing() {
        let loads = [load(100, 0, 4), load(0, 500, 0)];
        assert_eq!(decide(1, &loads, 0, true), None);
    }

    #[test]
    fn the_measures_read_this_thread_and_this_machine() {
        let (run, _) = thread_schedstat().expect("schedstat");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        let (later, _) = thread_schedstat().expect("schedstat");
        assert!(later >= run + 10_000_000, "{run} -> {later}");
        let (idle, total) = machine_idle().expect("/proc/stat");
        assert!(idle <= total && total > 0);
    }
}
