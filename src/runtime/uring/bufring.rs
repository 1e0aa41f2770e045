//! A provided-buffer ring: buffers the kernel picks from for multishot
//! receives, so an idle session holds no receive buffer at all.
//!
//! Where the buffers lie matters (see [`RecvChunk`]): every buffer starts
//! [`crate::runtime::RECV_PAGE_OFFSET`] bytes into a page, since `buf_len` is
//! a multiple of the page size.
//!
//! Memory: `entries * buf_len` bytes of buffers plus 16 bytes per ring entry,
//! allocated zeroed (the pages are faulted in only when the kernel writes to
//! them). The ring must outlive every operation that may select from it; the
//! event loop unregisters it only after all of its operations completed, and
//! leaks it if they never do.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use crate::runtime::RecvChunk;

/// The buffer ring of one event loop.
#[derive(Debug)]
pub struct BufRing {
    entries_ptr: *mut BufRingEntry,
    entries_layout: Layout,
    buffers: RecvChunk,
    buf_len: usize,
    mask: u16,
    tail: u16,
    group: u16,
    registered: bool,
}

impl BufRing {
    /// Allocate `entries` (a power of two, at most 32768) buffers of
    /// `buf_len` bytes and register them with `ring` as group `group`.
    pub fn new(ring: &IoUring, group: u16, entries: u16, buf_len: usize) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring entries must be a power of two",
            ));
        }
        let entries_layout = Layout::from_size_align(
            usize::from(entries) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: the layout has a non-zero size (entries >= 1) and a valid
        // power-of-two alignment.
        let entries_ptr = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries_ptr.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "cannot allocate the buffer ring",
            ));
        }
        let buffers = RecvChunk::new(usize::from(entries) * buf_len);
        let mut this = BufRing {
            entries_ptr,
            entries_layout,
            buffers,
            buf_len,
            mask: entries - 1,
            tail: 0,
            group,
            registered: false,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        // SAFETY: `entries_ptr` is page-aligned, zero-initialised memory for
        // `entries` ring entries that lives until `Drop`, which unregisters
        // the ring before freeing it (or leaks it, see `leak`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries_ptr as u64, entries, group, 0)?;
        }
        this.registered = true;
        Ok(this)
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid & self.mask) * self.buf_len;
        &self.buffers.data(start + len.min(self.buf_len))[start..]
    }

    /// Give buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub fn push(&mut self, bid: u16) {
        let bid = bid & self.mask;
        let addr = self.buffers.addr(usize::from(bid) * self.buf_len) as u64;
        // SAFETY: the index is masked into the ring's `mask + 1` entries; we
        // write through the setters only, which leave entry 0's `resv` (the
        // kernel-shared tail) alone.
        let entry = unsafe { &mut *self.entries_ptr.add(usize::from(self.tail & self.mask)) };
        entry.set_addr(addr);
        entry.set_len(self.buf_len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every pushed buffer visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: `tail` points into entry 0 of our live ring allocation, at
        // the u16 the kernel reads as the ring tail; it is suitably aligned.
        let tail = unsafe { BufRingEntry::tail(self.entries_ptr).cast_mut() };
        // SAFETY: AtomicU16 has the same layout as u16; the kernel reads it
        // concurrently, so the store must be atomic with release ordering.
        unsafe { (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release) };
    }

    /// Unregister from `ring`; after this the kernel no longer selects from it.
    pub fn unregister(&mut self, ring: &IoUring) {
        if self.registered && ring.submitter().unregister_buf_ring(self.group).is_ok() {
            self.registered = false;
        }
    }

    /// Keep the memory alive forever: used when operations that may still
    /// write into it could not be reaped.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            // Still registered: the kernel may write here. Never free it.
            let buffers = std::mem::take(&mut self.buffers);
            std::mem::forget(buffers);
            return;
        }
        // SAFETY: allocated in `new` with this layout, unregistered, freed once.
        unsafe { dealloc(self.entries_ptr.cast(), self.entries_layout) };
    }
}
