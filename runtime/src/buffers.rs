//! `BufferPool`: reused, 16-byte aligned byte buffers for frame bodies. Fresh memory costs a page
//! fault per 4 KiB on these machines (far more than the copy), so buffers go back to the pool
//! when dropped and keep their pages.

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
        Buffer { data, len, pool: Some(self.clone()) }
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

/// A byte buffer that returns to its pool when dropped.
#[derive(Debug)]
pub struct Buffer {
    data: Vec<Unit>,
    len: usize,
    pool: Option<BufferPool>,
}

impl Buffer {
    /// A buffer that belongs to no pool.
    pub fn unpooled(bytes: &[u8]) -> Self {
        let mut b = Buffer { data: vec![0; bytes.len().div_ceil(UNIT)], len: bytes.len(), pool: None };
        b.copy_from_slice(bytes);
        b
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `data` holds at least `len` initialised bytes (u128s are plain bytes).
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), self.len) }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
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
}
