//! `BufferPool`: reused, 16-byte aligned byte buffers for frame bodies. Fresh memory costs a page
//! fault per 4 KiB on these machines (far more than the copy), so buffers go back to the pool
//! when dropped and keep their pages. A `Buffer` may also hold bytes that live elsewhere: lent
//! (a shared-memory slot, given back when the buffer drops) or shared (one body sent many times,
//! copied only if someone writes to it).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// 16-byte units, so a buffer's bytes are aligned for any primitive type.
type Unit = u128;
const UNIT: usize = std::mem::size_of::<Unit>();

#[derive(Debug, Default)]
struct Shelf {
    free: Vec<Vec<Unit>>,
}

/// A pool of buffers; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct BufferPool {
    shelf: Arc<Mutex<Shelf>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` idle buffers.
    pub fn new(keep: usize) -> Self {
        Self { shelf: Arc::default(), keep }
    }

    /// A buffer of `len` bytes (contents unspecified: the caller overwrites them).
    pub fn take(&self, len: usize) -> Buffer {
        let units = len.div_ceil(UNIT);
        let reused = {
            let mut shelf = self.shelf.lock().unwrap_or_else(|p| p.into_inner());
            // The smallest idle buffer that fits, else the largest (it grows).
            let fit = (0..shelf.free.len())
                .filter(|&i| shelf.free[i].capacity() >= units)
                .min_by_key(|&i| shelf.free[i].capacity());
            let pick = fit.or_else(|| (0..shelf.free.len()).max_by_key(|&i| shelf.free[i].capacity()));
            pick.map(|i| shelf.free.swap_remove(i))
        };
        let mut data = reused.unwrap_or_default();
        data.resize(units, 0);
        Buffer { data, len, pool: Some(self.clone()), lent: None }
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_of(&self, bytes: &[u8]) -> Buffer {
        let mut b = self.take(bytes.len());
        b.copy_from_slice(bytes);
        b
    }

    /// Idle buffers held.
    pub fn idle(&self) -> usize {
        self.shelf.lock().unwrap_or_else(|p| p.into_inner()).free.len()
    }

    fn put(&self, data: Vec<Unit>) {
        let mut shelf = self.shelf.lock().unwrap_or_else(|p| p.into_inner());
        if shelf.free.len() < self.keep {
            shelf.free.push(data);
        }
    }
}

/// Bytes a `Buffer` borrows from somewhere else, exclusively, until it drops (which gives them
/// back): a shared-memory slot, for instance.
pub trait LentBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// One body shared by several buffers; a buffer that is written to first copies it.
struct SharedBytes(Arc<Vec<u8>>);

impl LentBytes for SharedBytes {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        Arc::make_mut(&mut self.0).as_mut_slice()
    }
}

/// A byte buffer that returns to its pool when dropped (or gives back what it was lent).
pub struct Buffer {
    data: Vec<Unit>,
    len: usize,
    pool: Option<BufferPool>,
    lent: Option<Box<dyn LentBytes>>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("len", &self.len()).field("lent", &self.lent.is_some()).finish()
    }
}

impl Buffer {
    /// A buffer that belongs to no pool.
    pub fn unpooled(bytes: &[u8]) -> Self {
        let mut b = Buffer { data: vec![0; bytes.len().div_ceil(UNIT)], len: bytes.len(), pool: None, lent: None };
        b.copy_from_slice(bytes);
        b
    }

    /// A buffer over bytes that live elsewhere, given back when it drops.
    pub fn lent(bytes: Box<dyn LentBytes>) -> Self {
        Buffer { data: Vec::new(), len: 0, pool: None, lent: Some(bytes) }
    }

    /// A buffer over a body shared with other buffers (no copy unless written to).
    pub fn shared(bytes: Arc<Vec<u8>>) -> Self {
        Self::lent(Box::new(SharedBytes(bytes)))
    }

    /// Whether the bytes are lent from elsewhere (not this process's heap).
    pub fn is_lent(&self) -> bool {
        self.lent.is_some()
    }

    /// Keep only the first `len` bytes (a buffer taken larger than its final contents, such as
    /// one that also held the records its contents were opened from). No effect on lent bytes
    /// or where `len` is not shorter.
    pub fn truncate(&mut self, len: usize) {
        if self.lent.is_none() {
            self.len = self.len.min(len);
        }
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if let Some(l) = &self.lent {
            return l.bytes();
        }
        // SAFETY: `data` holds at least `len` initialised bytes (u128s are plain bytes).
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), self.len) }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        if let Some(l) = &mut self.lent {
            return l.bytes_mut();
        }
        // SAFETY: as above, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::take(&mut self.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_reused_and_bounded() {
        let pool = BufferPool::new(2);
        let mut a = pool.take(1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(a.as_ptr() as usize % 16, 0);
        a[999] = 7;
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.idle(), 1);
        let b = pool.take(800);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 800), "the idle buffer is reused");
        let (c, d, e) = (pool.take(10), pool.take(10), pool.take(10));
        drop((b, c, d, e));
        assert_eq!(pool.idle(), 2, "at most `keep` idle buffers");
        assert_eq!(&Buffer::unpooled(b"abc")[..], b"abc");
    }

    #[test]
    fn shared_bodies_are_copied_only_when_written() {
        let body = Arc::new(vec![1u8, 2, 3]);
        let a = Buffer::shared(body.clone());
        let mut b = Buffer::shared(body.clone());
        assert!(a.is_lent() && std::ptr::eq(a.as_ptr(), body.as_ptr()));
        b[0] = 9;
        assert_eq!((&a[..], &b[..], &body[..]), (&[1u8, 2, 3][..], &[9u8, 2, 3][..], &[1u8, 2, 3][..]));
        drop((a, b));
        assert_eq!(Arc::strong_count(&body), 1, "given back on drop");
    }
}
