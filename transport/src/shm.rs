//! Same-host transfers through shared memory: a ring of fixed-size slots in a file under
//! `/dev/shm`, written by one sender and read by one receiver. Each slot has a state word (free or
//! full) and a length; the sender fills free slots in ring order and publishes them with a
//! release store, the receiver takes full slots in the same order and frees them after copying
//! the frame out. The receiver treats slot contents like network input (frames are validated).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

const MAGIC: u64 = u64::from_le_bytes(*b"ARKVSHM1");
const HEADER: usize = 64;
const SLOT_META: usize = 64;
const FREE: u32 = 0;
const FULL: u32 = 1;
/// The sender closed the ring (in the header's `closed` word).
const CLOSED: u32 = 1;

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

/// The mapped ring, as either side sees it.
struct Ring {
    map: MmapMut,
    slots: usize,
    slot_size: usize,
}

impl Ring {
    fn word32(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at.is_multiple_of(4) && at + 4 <= self.map.len());
        // SAFETY: in bounds and aligned (the map is page-aligned, offsets are multiples of 4);
        // the memory is shared with another process only through atomics.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU32>() }
    }

    fn word64(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at.is_multiple_of(8) && at + 8 <= self.map.len());
        // SAFETY: as `word32`.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn state(&self, slot: usize) -> &AtomicU32 {
        self.word32(HEADER + slot * SLOT_META)
    }

    fn len(&self, slot: usize) -> &AtomicU64 {
        self.word64(HEADER + slot * SLOT_META + 8)
    }

    fn closed(&self) -> &AtomicU32 {
        self.word32(16)
    }

    fn data_at(&self, slot: usize) -> usize {
        HEADER + self.slots * SLOT_META + slot * self.slot_size
    }

    fn size(slots: usize, slot_size: usize) -> usize {
        HEADER + slots * SLOT_META + slots * slot_size
    }
}

/// The writing side; creates (and on drop removes) the file.
pub struct ShmSender {
    ring: Ring,
    path: PathBuf,
    next: usize,
}

impl ShmSender {
    /// Create a ring of `slots` slots of `slot_size` bytes at `path`.
    pub fn create(path: &Path, slots: usize, slot_size: usize) -> Result<Self, ShmError> {
        let io = |source| ShmError::Io { path: path.into(), source };
        let slot_size = slot_size.next_multiple_of(64);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(io)?;
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
        Ok(Self { ring: Ring { map, slots, slot_size }, path: path.into(), next: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn slot_size(&self) -> usize {
        self.ring.slot_size
    }

    /// Copy one frame (given in pieces) into the next slot if the receiver has freed it; false
    /// if it has not (the caller waits and tries again: backpressure).
    pub fn try_send(&mut self, pieces: &[&[u8]]) -> Result<bool, ShmError> {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if len > self.ring.slot_size {
            return Err(ShmError::TooLarge { len, slot: self.ring.slot_size });
        }
        let slot = self.next;
        if self.ring.state(slot).load(Ordering::Acquire) != FREE {
            return Ok(false);
        }
        let mut at = self.ring.data_at(slot);
        for p in pieces {
            self.ring.map[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.ring.len(slot).store(len as u64, Ordering::Relaxed);
        self.ring.state(slot).store(FULL, Ordering::Release);
        self.next = (slot + 1) % self.ring.slots;
        Ok(true)
    }

    /// Copy one frame (given in pieces) into the next slot, waiting up to `patience` for the
    /// receiver to free it (backpressure).
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
    ring: Ring,
    next: usize,
}

/// A full slot taken from the ring: its bytes stay put (and the sender stays off it) until the
/// slot is dropped.
pub struct Slot<'a> {
    ring: &'a Ring,
    slot: usize,
    len: usize,
}

impl Slot<'_> {
    pub fn bytes(&self) -> &[u8] {
        let at = self.ring.data_at(self.slot);
        &self.ring.map[at..at + self.len]
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.ring.state(self.slot).store(FREE, Ordering::Release);
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
        if slots == 0 || !slot_size.is_multiple_of(64) || Ring::size(slots, slot_size) != map.len() {
            return Err(bad());
        }
        // The mapping outlives the name: unlink it now so that a crash on either side leaves
        // nothing behind in /dev/shm.
        let _ = std::fs::remove_file(path);
        Ok(Self { ring: Ring { map, slots, slot_size }, next: 0 })
    }

    /// Wait up to `patience` for the next frame and pass its bytes to `f`; the slot is freed
    /// when `f` returns. None if nothing came (or the sender closed the ring).
    pub fn recv<T>(&mut self, patience: Duration, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let slot = self.take(patience)?;
        Some(f(slot.bytes()))
    }

    /// Wait up to `patience` for the next full slot and take it (see `Slot`).
    pub fn take(&mut self, patience: Duration) -> Option<Slot<'_>> {
        let slot = self.next;
        let start = Instant::now();
        let mut spins = 0u32;
        while self.ring.state(slot).load(Ordering::Acquire) != FULL {
            if self.ring.closed().load(Ordering::Acquire) == CLOSED || start.elapsed() > patience {
                return None;
            }
            backoff(&mut spins);
        }
        // A length beyond the slot is the sender's bug or tampering: hand over the slot as is.
        let len = (self.ring.len(slot).load(Ordering::Relaxed) as usize).min(self.ring.slot_size);
        self.next = (slot + 1) % self.ring.slots;
        Some(Slot { ring: &self.ring, slot, len })
    }

    /// The sender closed the ring.
    pub fn is_closed(&self) -> bool {
        self.ring.closed().load(Ordering::Acquire) == CLOSED
    }
}

/// Spin briefly, then yield, then sleep in short steps.
fn backoff(spins: &mut u32) {
    *spins += 1;
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
