//! A provided-buffer ring: buffers the kernel picks from for multishot
//! receives, so an idle session holds no receive buffer at all.
//!
//! Where the buffers lie matters (see [`crate::runtime::RecvChunk`]): every
//! buffer starts [`RECV_PAGE_OFFSET`] bytes into a page, since `buf_len` is a
//! multiple of the page size.
//!
//! The buffers are one raw allocation, never behind a Rust reference as a
//! whole: the kernel writes into some buffers while the loop reads others,
//! so only the bytes of one buffer whose completion was reaped are ever
//! borrowed, and only until that buffer is given back.
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

use crate::runtime::RECV_PAGE_OFFSET;

/// The buffer ring of one event loop.
#[derive(Debug)]
pub struct BufRing {
    entries_ptr: *mut BufRingEntry,
    entries_layout: Layout,
    /// Start of the buffers' anonymous mapping of `buffers_len` bytes;
    /// buffer 0 starts [`RECV_PAGE_OFFSET`] bytes in.
    buffers_ptr: *mut u8,
    buffers_len: usize,
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
        let buffers_len = usize::from(entries)
            .checked_mul(buf_len)
            .and_then(|len| len.checked_add(RECV_PAGE_OFFSET))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large"))?;
        // An anonymous mapping: page-aligned, zero, and backed by memory
        // only where the kernel writes (an aligned allocation from the heap
        // would be zeroed by hand, committing every page at start).
        // SAFETY: a new private anonymous mapping with no address hint and
        // no file; the result is checked before use.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                buffers_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // SAFETY: allocated above with this layout, not registered.
            unsafe { dealloc(entries_ptr.cast(), entries_layout) };
            return Err(io::Error::new(
                err.kind(),
                format!("cannot map the receive buffers: {err}"),
            ));
        }
        let buffers_ptr = mapped.cast::<u8>();
        let mut this = BufRing {
            entries_ptr,
            entries_layout,
            buffers_ptr,
            buffers_len,
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

    /// Give the buffers' memory back to the system: their pages are dropped
    /// and come back zeroed when the kernel next writes to them. A loop that
    /// went quiet after a burst (10,000 handshakes, a spike of traffic) so
    /// stops holding the pages the burst touched.
    ///
    /// Only between two `io_uring_enter` calls of the ring's thread, with
    /// every buffer given back: the contents of a buffer in the ring do not
    /// matter, and with `DEFER_TASKRUN` the kernel copies received bytes into
    /// the buffers only inside that thread's `io_uring_enter`, never while
    /// this runs.
    pub fn trim(&self) {
        // SAFETY: MADV_DONTNEED on our own private anonymous mapping, whole
        // and page-aligned as `mmap` returned it: the only effect is that
        // its pages read as zero again; no Rust reference covers them (see
        // the module documentation) and no buffer is lent out (above).
        unsafe {
            libc::madvise(
                self.buffers_ptr.cast(),
                self.buffers_len,
                libc::MADV_DONTNEED,
            );
        }
    }

    /// The address of the first byte of buffer `bid`.
    fn buffer(&self, bid: u16) -> *mut u8 {
        let offset = RECV_PAGE_OFFSET + usize::from(bid & self.mask) * self.buf_len;
        // `wrapping_add` stays in bounds here (bid is masked), without
        // claiming anything about the memory.
        self.buffers_ptr.wrapping_add(offset)
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    ///
    /// Only for a buffer whose receive completion was reaped and which has
    /// not been given back ([`BufRing::push`]) since: the kernel does not
    /// touch it until then, and the borrow of `self` ends before any push.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        // SAFETY: the buffer lies inside our live allocation (bid masked,
        // len capped at buf_len); the kernel has finished writing it and
        // selects it again only after `push` (which needs `&mut self`, so
        // this borrow has ended); the bytes were zeroed at allocation, so
        // they are initialised whatever the kernel wrote.
        unsafe { std::slice::from_raw_parts(self.buffer(bid), len.min(self.buf_len)) }
    }

    /// Give buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub fn push(&mut self, bid: u16) {
        let bid = bid & self.mask;
        let addr = self.buffer(bid) as u64;
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
            return;
        }
        // SAFETY: both made in `new` (the entries allocated with this
        // layout, the buffers mapped with this length), no longer registered
        // (the kernel selects from them no more), released once.
        unsafe {
            dealloc(self.entries_ptr.cast(), self.entries_layout);
            libc::munmap(self.buffers_ptr.cast(), self.buffers_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_lie_apart_at_the_page_offset_and_reads_stay_inside_one() {
        let ring = crate::runtime::uring::event_loop::build_ring().expect("io_uring");
        let mut buffers = BufRing::new(&ring, 3, 4, 8192).expect("buffer ring");
        let first = buffers.data(0, 10).as_ptr() as usize;
        assert_eq!(first % 4096, RECV_PAGE_OFFSET);
        for bid in 0..4u16 {
            let data = buffers.data(bid, 100_000);
            assert_eq!(data.len(), 8192, "capped at the buffer's length");
            assert_eq!(data.as_ptr() as usize, first + usize::from(bid) * 8192);
            assert!(data.iter().all(|&b| b == 0), "zeroed at allocation");
        }
        // Ids wrap at the ring's size, as the kernel's do.
        assert_eq!(buffers.data(5, 1).as_ptr(), buffers.data(1, 1).as_ptr());
        buffers.unregister(&ring);
    }

    /// How many KiB of `[addr, addr + len)` are resident, from
    /// /proc/self/pagemap (bit 63 of each page's entry). Counted page by
    /// page, so memory the kernel merged into the same mapping (another
    /// thread's allocations next to it) does not count.
    fn resident_kib(addr: usize, len: usize) -> u64 {
        use std::io::{Read, Seek, SeekFrom};
        let page = 4096;
        let pages = len.div_ceil(page);
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        pagemap
            .seek(SeekFrom::Start((addr / page * 8) as u64))
            .unwrap();
        let mut entries = vec![0u8; pages * 8];
        pagemap.read_exact(&mut entries).unwrap();
        let present = entries
            .chunks_exact(8)
            .filter(|entry| entry[7] & 0x80 != 0)
            .count();
        present as u64 * 4
    }

    #[test]
    fn the_buffers_commit_no_memory_until_the_kernel_writes_them() {
        // 10,000 idle sessions share these: 16 MiB per event loop, of which
        // nothing may be resident before a receive lands.
        let ring = crate::runtime::uring::event_loop::build_ring().expect("io_uring");
        let mut buffers = BufRing::new(&ring, 4, 256, 64 * 1024).expect("buffer ring");
        let rss = resident_kib(buffers.buffers_ptr as usize, 256 * 64 * 1024);
        assert!(rss <= 8, "{rss} KiB resident before any receive");
        buffers.unregister(&ring);
    }
}
