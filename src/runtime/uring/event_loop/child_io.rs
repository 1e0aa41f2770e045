//! The ring operations of declared handlers' children: reading their
//! output, writing their input, watching their exit, and releasing them
//! once every operation has completed. See the parent module for the
//! rules; every method here keeps a child's entry, and the memory its
//! operations point into, alive until their completions are in.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, types};

use super::super::{user_data, EventLoop, Op};
use super::{stream_op, RawFdOwner, PROTOCOL_LINGER};
use crate::exec::{ExitStatus, Stream};

impl EventLoop {
    pub(super) fn submit_child_read(&mut self, index: u32, stream: Stream) {
        let p = self.proc_mut(index);
        let pipe = &mut p.outputs[stream_index(stream)];
        let Some(fd) = &pipe.fd else { return };
        if pipe.reading || p.released {
            return;
        }
        let (fd, socket) = (fd.raw(), matches!(fd, RawFdOwner::Socket(_)));
        let (ptr, len) = (pipe.buf.as_mut_ptr(), pipe.buf.len() as u32);
        let entry = if socket {
            opcode::Recv::new(types::Fd(fd), ptr, len).build()
        } else {
            opcode::Read::new(types::Fd(fd), ptr, len)
                .offset(u64::MAX)
                .build()
        }
        .user_data(user_data(stream_op(stream), 0, index));
        pipe.reading = true;
        p.inflight += 1;
        self.push(entry);
    }

    pub(super) fn submit_child_write(&mut self, index: u32) {
        let p = self.proc_mut(index);
        let Some(fd) = p.input_fd() else {
            // Nowhere to write: the input is closed. The service learns it
            // as a broken input.
            p.writing = Vec::new();
            p.queued = Vec::new();
            let id = p.id;
            if let Some(children) = self.children.as_mut() {
                children.service.on_input_broken(id, Instant::now());
            }
            return;
        };
        let rest = &p.writing[p.written..];
        let (ptr, len) = (rest.as_ptr(), rest.len().min(u32::MAX as usize) as u32);
        let entry = if p.stdin.is_some() {
            opcode::Write::new(types::Fd(fd), ptr, len)
                .offset(u64::MAX)
                .build()
        } else {
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        }
        .user_data(user_data(Op::ChildWrite, 0, index));
        p.inflight += 1;
        self.push(entry);
    }

    pub(super) fn watch_exit(&mut self, index: u32) {
        let p = self.proc_mut(index);
        if p.watching_exit || p.released || p.exit.is_some() {
            return;
        }
        let pidfd = p.child.pidfd().as_raw_fd();
        let entry = opcode::PollAdd::new(types::Fd(pidfd), libc::POLLIN as u32)
            .build()
            .user_data(user_data(Op::ChildExit, 0, index));
        p.watching_exit = true;
        p.inflight += 1;
        self.push(entry);
    }

    /// A completion of a child's operation.
    pub(in super::super) fn on_child(&mut self, op: u8, index: u32, result: i32, now: Instant) {
        let live = self
            .children
            .as_ref()
            .and_then(|c| c.procs.get(index as usize))
            .is_some_and(Option::is_some);
        if !live {
            return;
        }
        {
            let p = self.proc_mut(index);
            p.inflight = p.inflight.saturating_sub(1);
        }
        match op {
            x if x == Op::ChildStdout as u8 => {
                self.on_child_read(index, Stream::Stdout, result, now)
            }
            x if x == Op::ChildStderr as u8 => {
                self.on_child_read(index, Stream::Stderr, result, now)
            }
            x if x == Op::ChildProtocol as u8 => {
                self.on_child_read(index, Stream::Protocol, result, now);
            }
            x if x == Op::ChildWrite as u8 => self.on_child_written(index, result, now),
            x if x == Op::ChildExit as u8 => self.on_child_exit(index, result, now),
            _ => {} // a cancel's own completion
        }
        self.finish_released(index);
        self.drive_children(now);
    }

    fn on_child_read(&mut self, index: u32, stream: Stream, result: i32, now: Instant) {
        let p = self.proc_mut(index);
        let at = stream_index(stream);
        p.outputs[at].reading = false;
        if p.released {
            return;
        }
        let id = p.id;
        if result > 0 {
            let children = self.children.as_mut().expect("children exist");
            let p = children.procs[index as usize].as_mut().expect("live");
            let bytes = &p.outputs[at].buf[..result as usize];
            children.service.on_output(id, stream, bytes, now);
            self.submit_child_read(index, stream);
            return;
        }
        if matches!(-result, libc::EINTR | libc::EAGAIN) {
            self.submit_child_read(index, stream);
            return;
        }
        // End of file, or an error: the stream is over.
        p.outputs[at].fd = None;
        p.outputs[at].buf = Box::default();
        if let Some(children) = self.children.as_mut() {
            children.service.on_output_end(id, stream, now);
        }
        if stream == Stream::Protocol && self.proc_mut(index).exit.is_some() {
            self.hand_over_exit(index, now);
        }
    }

    fn on_child_written(&mut self, index: u32, result: i32, now: Instant) {
        let p = self.proc_mut(index);
        if p.released {
            p.writing = Vec::new();
            return;
        }
        let id = p.id;
        if result <= 0 && !matches!(-result, libc::EINTR | libc::EAGAIN) {
            p.writing = Vec::new();
            p.shut_input();
            if let Some(children) = self.children.as_mut() {
                children.service.on_input_broken(id, now);
            }
            return;
        }
        let n = result.max(0) as usize;
        p.written += n;
        if p.written >= p.writing.len() {
            // The two buffers trade places, keeping their capacity: a busy
            // worker's input is written without an allocation per batch.
            std::mem::swap(&mut p.writing, &mut p.queued);
            p.queued.clear();
            p.written = 0;
        }
        let more = !p.writing.is_empty();
        if !more && p.close_input {
            p.shut_input();
        }
        if n > 0 {
            if let Some(children) = self.children.as_mut() {
                children.service.on_written(id, n);
            }
        }
        if more {
            self.submit_child_write(index);
        }
    }

    fn on_child_exit(&mut self, index: u32, result: i32, now: Instant) {
        let p = self.proc_mut(index);
        p.watching_exit = false;
        if p.released || result == -libc::ECANCELED {
            return;
        }
        let status = match p.child.exit_status() {
            Ok(Some(status)) => status,
            Ok(None) => {
                // Not yet (a spurious wake-up): watch again.
                self.watch_exit(index);
                return;
            }
            Err(err) => {
                tracing::warn!(
                    pid = p.child.pid(),
                    "cannot learn how handler child {} ended: {err}",
                    p.child.pid()
                );
                ExitStatus::Code(-1)
            }
        };
        p.exit = Some((status, now + PROTOCOL_LINGER));
        if p.protocol_open() {
            // A worker's last answers may still be in its socket: read it
            // to its end (or for a bounded time) before the exit fails
            // what it still holds.
            if let Some(children) = self.children.as_mut() {
                children.lingering += 1;
            }
            return;
        }
        self.hand_over_exit_now(index, now);
    }

    /// The service hears of a child's exit, its fd 3 read or the linger over.
    pub(super) fn hand_over_exit(&mut self, index: u32, now: Instant) {
        if let Some(children) = self.children.as_mut() {
            children.lingering = children.lingering.saturating_sub(1);
        }
        self.hand_over_exit_now(index, now);
    }

    fn hand_over_exit_now(&mut self, index: u32, now: Instant) {
        let p = self.proc_mut(index);
        let Some((status, _)) = p.exit.take() else {
            return;
        };
        let id = p.id;
        if let Some(children) = self.children.as_mut() {
            children.service.on_exit(id, status, now);
        }
    }

    /// The service is done with the child: kill what is left of its group,
    /// cancel its operations, and drop it once they have ended.
    pub(super) fn release_child(&mut self, index: u32) {
        let p = self.proc_mut(index);
        if p.released {
            return;
        }
        p.released = true;
        p.child.signal_group(crate::exec::Signal::Kill);
        let lingered = p.exit.take().is_some();
        let mut fds: Vec<RawFd> = Vec::new();
        if p.watching_exit {
            fds.push(p.child.pidfd().as_raw_fd());
        }
        if !p.writing.is_empty() {
            fds.extend(p.input_fd());
        }
        for pipe in &p.outputs {
            if pipe.reading {
                fds.extend(pipe.fd.as_ref().map(RawFdOwner::raw));
            }
        }
        if lingered {
            if let Some(children) = self.children.as_mut() {
                children.lingering = children.lingering.saturating_sub(1);
            }
        }
        for fd in fds {
            self.proc_mut(index).inflight += 1;
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .user_data(user_data(Op::ChildCancel, 0, index));
            self.push(entry);
        }
        self.finish_released(index);
    }

    /// Drop a released child whose operations have all ended: its
    /// descriptors close and it is reaped (it has exited, or was killed).
    fn finish_released(&mut self, index: u32) {
        let Some(children) = self.children.as_mut() else {
            return;
        };
        let done = children.procs[index as usize]
            .as_ref()
            .is_some_and(|p| p.released && p.inflight == 0);
        if !done {
            return;
        }
        if let Some(p) = children.procs[index as usize].take() {
            children.ids.remove(&p.id);
            children.free.push(index);
            drop(p);
        }
    }
}

pub(super) fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
        Stream::Protocol => 2,
    }
}
