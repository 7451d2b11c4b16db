//! Same-host transfers through shared memory: a ring of fixed-size slots in a file under
//! `/dev/shm`, written by one sender and read by one receiver. Each slot has a state word (free or
//! full), a sequence number, the frame's offset and length; the sender fills any free slot and
//! publishes it with a release store, the receiver takes full slots in sequence order. A taken
//! slot stays the receiver's until it is dropped, so a frame can be used where it lies (its body
//! lent out, no copy) while the sender fills other slots; slots freed out of order are fine. The
//! last piece of each frame (the body) starts 64-byte aligned in its slot. The receiver treats
//! slot contents like network input (frames are validated).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use runtime::buffers::LentBytes;

const MAGIC: u64 = u64::from_le_bytes(*b"ARKVSHM2");
const HEADER: usize = 64;
const SLOT_META: usize = 64;
const FREE: u32 = 0;
const FULL: u32 = 1;
/// The sender closed the ring (in the header's `closed` word).
const CLOSED: u32 = 1;
/// Where a slot's last piece starts.
const ALIGN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: not a shared-memory ring (bad magic or sizes)")]
    Format(PathBuf),
    #[error("a frame of {len} bytes does not fit a slot of {slot} bytes")]
    TooLarge { len: usize, slot: usize },
    #[error("the receiver took no slot for {0:?}")]
    Stalled(Duration),
}

/// The mapped ring, as either side sees it. Slot data is reached only through `base` and the
/// slot's own range: a taken slot belongs to whoever holds it, so no reference ever spans
/// several slots.
struct Ring {
    _map: MmapMut,
    base: *mut u8,
    len: usize,
    slots: usize,
    slot_size: usize,
}

// SAFETY: the shared words are atomics; each slot's data is used by one side at a time, handed
// over by its state word (release/acquire).
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

impl Ring {
    fn new(mut map: MmapMut, slots: usize, slot_size: usize) -> Self {
        let (base, len) = (map.as_mut_ptr(), map.len());
        Self { _map: map, base, len, slots, slot_size }
    }

    fn word32(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4) && at + 4 <= HEADER + self.slots * SLOT_META);
        // SAFETY: in bounds and aligned (the map is page-aligned, offsets are multiples of 4);
        // the memory is shared with another process only through atomics.
        unsafe { &*self.base.add(at).cast::<AtomicU32>() }
    }

    fn word64(&self, at: usize) -> &AtomicU64 {
        assert!(at.is_multiple_of(8) && at + 8 <= HEADER + self.slots * SLOT_META);
        // SAFETY: as `word32`.
        unsafe { &*self.base.add(at).cast::<AtomicU64>() }
    }

    fn state(&self, slot: usize) -> &AtomicU32 {
        self.word32(HEADER + slot * SLOT_META)
    }

    fn frame_len(&self, slot: usize) -> &AtomicU64 {
        self.word64(HEADER + slot * SLOT_META + 8)
    }

    fn seq(&self, slot: usize) -> &AtomicU64 {
        self.word64(HEADER + slot * SLOT_META + 16)
    }

    fn offset(&self, slot: usize) -> &AtomicU32 {
        self.word32(HEADER + slot * SLOT_META + 24)
    }

    fn closed(&self) -> &AtomicU32 {
        self.word32(16)
    }

    fn data_at(&self, slot: usize) -> usize {
        HEADER + self.slots * SLOT_META + slot * self.slot_size
    }

    /// `len` bytes at `start` within `slot`'s data.
    ///
    /// # Safety
    /// The caller holds the slot (a sender between finding it free and publishing it, a
    /// receiver between taking it and freeing it), and `start + len <= slot_size`.
    unsafe fn data(&self, slot: usize, start: usize, len: usize) -> *mut u8 {
        debug_assert!(start + len <= self.slot_size && self.data_at(slot) + self.slot_size <= self.len);
        // SAFETY: within the map (the caller's contract).
        unsafe { self.base.add(self.data_at(slot) + start) }
    }

    fn size(slots: usize, slot_size: usize) -> usize {
        HEADER + slots * SLOT_META + slots * slot_size
    }
}

/// Where a frame whose last piece comes after `before` bytes starts in its slot, so that the
/// last piece is aligned.
fn offset_for(before: usize) -> usize {
    (ALIGN - before % ALIGN) % ALIGN
}

/// The writing side; creates (and on drop removes) the file.
pub struct ShmSender {
    ring: Ring,
    path: PathBuf,
    next: usize,
    seq: u64,
}

impl ShmSender {
    /// Create a ring of `slots` slots of `slot_size` bytes at `path`.
    pub fn create(path: &Path, slots: usize, slot_size: usize) -> Result<Self, ShmError> {
        let io = |source| ShmError::Io { path: path.into(), source };
        let slot_size = slot_size.next_multiple_of(ALIGN);
        // Only this user may map the ring: its slots hold KV blocks of other users' prompts.
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        let size = Ring::size(slots, slot_size);
        file.set_len(size as u64).map_err(io)?;
        // Take the memory now: a full tmpfs then fails here instead of killing the process with
        // SIGBUS on a later write.
        // SAFETY: a plain call on an open descriptor.
        let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, size as libc::off_t) };
        if rc != 0 {
            let _ = std::fs::remove_file(path);
            return Err(io(std::io::Error::from_raw_os_error(rc)));
        }
        // SAFETY: the file is ours and sized above; the peer touches it only through this layout.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
        map[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        map[8..12].copy_from_slice(&(slots as u32).to_le_bytes());
        map[12..16].copy_from_slice(&(slot_size as u32).to_le_bytes());
        Ok(Self { ring: Ring::new(map, slots, slot_size), path: path.into(), next: 0, seq: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn slot_size(&self) -> usize {
        self.ring.slot_size
    }

    /// Whether a frame of `len` bytes fits a slot (with room to align its body).
    pub fn fits(&self, len: usize) -> bool {
        len + ALIGN <= self.ring.slot_size
    }

    /// Copy one frame (given in pieces) into a slot the receiver has freed; false if none is
    /// free (the caller waits and tries again: backpressure).
    pub fn try_send(&mut self, pieces: &[&[u8]]) -> Result<bool, ShmError> {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let before = len - pieces.last().map_or(0, |p| p.len());
        let offset = offset_for(before);
        if offset + len > self.ring.slot_size {
            return Err(ShmError::TooLarge { len, slot: self.ring.slot_size });
        }
        let n = self.ring.slots;
        let Some(slot) =
            (0..n).map(|i| (self.next + i) % n).find(|&s| self.ring.state(s).load(Ordering::Acquire) == FREE)
        else {
            return Ok(false);
        };
        let mut at = offset;
        for p in pieces {
            // SAFETY: the slot is free (the receiver is off it until it is published below) and
            // `offset + len` fits the slot (checked above).
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), self.ring.data(slot, at, p.len()), p.len()) };
            at += p.len();
        }
        self.ring.frame_len(slot).store(len as u64, Ordering::Relaxed);
        self.ring.offset(slot).store(offset as u32, Ordering::Relaxed);
        self.ring.seq(slot).store(self.seq, Ordering::Relaxed);
        self.ring.state(slot).store(FULL, Ordering::Release);
        self.seq += 1;
        self.next = (slot + 1) % n;
        Ok(true)
    }

    /// Copy one frame (given in pieces) into a slot, waiting up to `patience` for the receiver
    /// to free one (backpressure).
    pub fn send(&mut self, pieces: &[&[u8]], patience: Duration) -> Result<(), ShmError> {
        let start = Instant::now();
        let mut spins = 0u32;
        while !self.try_send(pieces)? {
            if start.elapsed() > patience {
                return Err(ShmError::Stalled(patience));
            }
            backoff(&mut spins);
        }
        Ok(())
    }
}

impl Drop for ShmSender {
    fn drop(&mut self) {
        self.ring.closed().store(CLOSED, Ordering::Release);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The reading side.
pub struct ShmReceiver {
    ring: Arc<Ring>,
    next: usize,
    seq: u64,
    /// Slots taken and not yet freed.
    held: Arc<AtomicUsize>,
    /// Waits since the last frame: the backoff goes on across `take` calls, so an idle ring's
    /// reader sleeps a millisecond at a time instead of starting over at 50 microseconds every
    /// `patience` (20,000 wake-ups a second, which the other paths on a 2-core machine felt).
    idle_spins: u32,
}

/// A full slot taken from the ring: its bytes stay put (and the sender stays off it) until the
/// slot is dropped. It can be narrowed to the frame's body and lent to a `Buffer`.
pub struct Slot {
    ring: Arc<Ring>,
    held: Arc<AtomicUsize>,
    slot: usize,
    start: usize,
    len: usize,
}

impl Slot {
    /// The same slot, showing only `range` of its bytes (clamped to them).
    pub fn narrow(mut self, range: std::ops::Range<usize>) -> Self {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        (self.start, self.len) = (self.start + start, end - start);
        self
    }
}

impl Slot {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the slot is ours until dropped; start + len fits it (clamped when taken).
        unsafe { std::slice::from_raw_parts(self.ring.data(self.slot, self.start, self.len), self.len) }
    }
}

impl LentBytes for Slot {
    fn bytes(&self) -> &[u8] {
        Slot::bytes(self)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ring.data(self.slot, self.start, self.len), self.len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.ring.state(self.slot).store(FREE, Ordering::Release);
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ShmReceiver {
    /// Map the ring a sender created at `path`, checking its header against the file's size.
    pub fn open(path: &Path) -> Result<Self, ShmError> {
        let io = |source| ShmError::Io { path: path.into(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
        // SAFETY: the layout is validated below before any slot is touched.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
        let bad = || ShmError::Format(path.into());
        if map.len() < HEADER || u64::from_le_bytes(map[0..8].try_into().expect("8 bytes")) != MAGIC {
            return Err(bad());
        }
        let slots = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes")) as usize;
        let slot_size = u32::from_le_bytes(map[12..16].try_into().expect("4 bytes")) as usize;
        if slots == 0 || !slot_size.is_multiple_of(ALIGN) || Ring::size(slots, slot_size) != map.len() {
            return Err(bad());
        }
        // The mapping outlives the name: unlink it now so that a crash on either side leaves
        // nothing behind in /dev/shm.
        let _ = std::fs::remove_file(path);
        Ok(Self {
            ring: Arc::new(Ring::new(map, slots, slot_size)),
            next: 0,
            seq: 0,
            held: Arc::default(),
            idle_spins: 0,
        })
    }

    pub fn slots(&self) -> usize {
        self.ring.slots
    }

    /// Slots taken and not yet freed (frames used where they lie).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Wait up to `patience` for the next frame and pass its bytes to `f`; the slot is freed
    /// when `f` returns. None if nothing came (or the sender closed the ring).
    pub fn recv<T>(&mut self, patience: Duration, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let slot = self.take(patience)?;
        Some(f(slot.bytes()))
    }

    /// The full slot holding the next frame in sequence: usually the one after the last, else
    /// found by its number; if every slot is full and none has it (a sender that skipped one),
    /// the lowest number, so a broken sender cannot wedge the ring.
    fn find_next(&self) -> Option<usize> {
        let ring = &self.ring;
        let full = |s: usize| ring.state(s).load(Ordering::Acquire) == FULL;
        if full(self.next) && ring.seq(self.next).load(Ordering::Relaxed) == self.seq {
            return Some(self.next);
        }
        let mut lowest: Option<(u64, usize)> = None;
        let mut all_full = true;
        for s in 0..ring.slots {
            if !full(s) {
                all_full = false;
                continue;
            }
            let seq = ring.seq(s).load(Ordering::Relaxed);
            if seq == self.seq {
                return Some(s);
            }
            if seq > self.seq && lowest.is_none_or(|(l, _)| seq < l) {
                lowest = Some((seq, s));
            }
        }
        // (Slots we hold are full too, but numbered below `self.seq`.)
        if all_full { lowest.map(|(_, s)| s) } else { None }
    }

    /// Wait up to `patience` for the next full slot and take it (see `Slot`).
    pub fn take(&mut self, patience: Duration) -> Option<Slot> {
        let start = Instant::now();
        let slot = loop {
            if let Some(s) = self.find_next() {
                self.idle_spins = 0;
                break s;
            }
            if self.ring.closed().load(Ordering::Acquire) == CLOSED || start.elapsed() > patience {
                return None;
            }
            backoff(&mut self.idle_spins);
        };
        let ring = &self.ring;
        self.seq = ring.seq(slot).load(Ordering::Relaxed) + 1;
        self.next = (slot + 1) % ring.slots;
        // An offset or length beyond the slot is the sender's bug or tampering: clamp them and
        // let the frame's validation refuse what is there.
        let offset = (ring.offset(slot).load(Ordering::Relaxed) as usize).min(ring.slot_size);
        let len = (ring.frame_len(slot).load(Ordering::Relaxed) as usize).min(ring.slot_size - offset);
        self.held.fetch_add(1, Ordering::Relaxed);
        Some(Slot { ring: ring.clone(), held: self.held.clone(), slot, start: offset, len })
    }

    /// The sender closed the ring.
    pub fn is_closed(&self) -> bool {
        self.ring.closed().load(Ordering::Acquire) == CLOSED
    }
}

/// Spin briefly, then yield, then sleep in short steps.
fn backoff(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    if *spins < 64 {
        std::hint::spin_loop();
    } else if *spins < 256 {
        std::thread::yield_now();
    } else if *spins < 4096 {
        std::thread::sleep(Duration::from_micros(50));
    } else {
        // Idle: do not burn a core waiting.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Where a ring between two nodes lives.
pub fn ring_path(cluster: &str, from: &str, to: &str) -> PathBuf {
    let dir = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("armature-{cluster}-{from}-{to}-{}-{:08x}", std::process::id(), rand_tag()))
}

fn rand_tag() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_the_ring_in_order_with_backpressure() {
        let path = ring_path("test", "a", "b");
        let mut tx = ShmSender::create(&path, 2, 100).unwrap();
        assert_eq!(tx.slot_size(), 128);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "only this user may map the ring");
        let mut rx = ShmReceiver::open(&path).unwrap();
        let quick = Duration::from_millis(20);
        tx.send(&[b"one", b"!"], quick).unwrap();
        tx.send(&[b"two"], quick).unwrap();
        // Both slots are full: the third waits for the receiver, then gives up.
        assert!(matches!(tx.send(&[b"three"], quick), Err(ShmError::Stalled(_))));
        assert!(matches!(tx.send(&[&[0u8; 129]], quick), Err(ShmError::TooLarge { .. })));
        assert_eq!(rx.recv(quick, |b| b.to_vec()).unwrap(), b"one!");
        tx.send(&[b"three"], quick).unwrap();
        assert_eq!(rx.recv(quick, |b| b.to_vec()).unwrap(), b"two");
        assert_eq!(rx.recv(quick, |b| b.to_vec()).unwrap(), b"three");
        assert!(rx.recv(quick, |b| b.to_vec()).is_none(), "nothing more");
        assert!(!path.exists(), "unlinked once both sides hold it");
        drop(tx);
        assert!(rx.is_closed());
        // A file that is not a ring is refused.
        let other = ring_path("test", "x", "y");
        std::fs::write(&other, b"hello").unwrap();
        assert!(matches!(ShmReceiver::open(&other), Err(ShmError::Format(_))));
        std::fs::remove_file(other).unwrap();
    }

    #[test]
    fn held_slots_are_freed_out_of_order_and_bodies_are_aligned() {
        let path = ring_path("test", "e", "f");
        let mut tx = ShmSender::create(&path, 3, 256).unwrap();
        let mut rx = ShmReceiver::open(&path).unwrap();
        let quick = Duration::from_millis(20);
        for body in [b"first", b"secnd", b"third"] {
            tx.send(&[b"head", body], quick).unwrap();
        }
        let (a, b, c) = (rx.take(quick).unwrap(), rx.take(quick).unwrap(), rx.take(quick).unwrap());
        assert_eq!(rx.held(), 3);
        assert_eq!(a.bytes(), b"headfirst");
        // The body (last piece) starts 64-byte aligned in the mapping.
        let body = a.narrow(4..100);
        assert_eq!((body.bytes(), body.bytes().as_ptr() as usize % 64), (&b"first"[..], 0));
        // The middle slot freed first: the sender reuses it while the others are held, and the
        // receiver still sees frames in the order they were sent.
        drop(b);
        tx.send(&[b"fourth"], quick).unwrap();
        assert!(matches!(tx.send(&[b"fifth"], quick), Err(ShmError::Stalled(_))), "two slots still held");
        drop(body);
        tx.send(&[b"fifth"], quick).unwrap();
        assert_eq!(rx.recv(quick, |b| b.to_vec()).unwrap(), b"fourth");
        assert_eq!(rx.recv(quick, |b| b.to_vec()).unwrap(), b"fifth");
        assert_eq!(c.bytes(), b"headthird");
        drop(c);
        assert_eq!(rx.held(), 0);
    }

    #[test]
    fn a_sender_that_skips_a_number_cannot_wedge_the_ring() {
        let path = ring_path("test", "g", "h");
        let mut tx = ShmSender::create(&path, 2, 128).unwrap();
        let mut rx = ShmReceiver::open(&path).unwrap();
        let quick = Duration::from_millis(20);
        tx.seq = 5;
        tx.send(&[b"a"], quick).unwrap();
        assert!(rx.take(quick).is_none(), "waits for number 0 while a slot is free");
        tx.send(&[b"b"], quick).unwrap();
        assert_eq!(rx.recv(quick, |b| b.to_vec()).unwrap(), b"a", "every slot full: the lowest number");
        assert_eq!(rx.recv(quick, |b| b.to_vec()).unwrap(), b"b");
    }

    #[test]
    fn a_thread_streams_many_frames() {
        let path = ring_path("test", "c", "d");
        let mut tx = ShmSender::create(&path, 4, 4096).unwrap();
        let mut rx = ShmReceiver::open(&path).unwrap();
        let reader = std::thread::spawn(move || {
            let mut sum = 0u64;
            for _ in 0..1000 {
                sum += rx.recv(Duration::from_secs(5), |b| b.iter().map(|&x| u64::from(x)).sum::<u64>()).unwrap();
            }
            sum
        });
        let mut want = 0u64;
        for i in 0..1000u64 {
            let frame = vec![(i % 200) as u8; 1000 + (i as usize % 3000)];
            want += frame.iter().map(|&x| u64::from(x)).sum::<u64>();
            tx.send(&[&frame], Duration::from_secs(5)).unwrap();
        }
        assert_eq!(reader.join().unwrap(), want);
    }
}
