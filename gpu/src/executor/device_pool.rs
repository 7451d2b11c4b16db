//! KV pools that another engine of the same process writes blocks into directly, device to
//! device: a prefill worker's blocks reach a decode worker's pool with one copy (a CUDA peer copy
//! between two devices, or a device-to-device copy on one), never staged in host memory, and no
//! frame is built.
//!
//! The order of a transfer, which the types enforce:
//! 1. The decode side reserves blocks and makes a `DeviceSink` over them (its pool, the blocks).
//! 2. The prefill side's engine thread, after each step that completes blocks, copies them into
//!    the sink (`DeviceSink::copy`), which returns once the copy is complete and then advances
//!    the sink's progress.
//! 3. The decode side closes the sink (`DeviceSink::close`) before it commits or gives back the
//!    reservation: once `close` returns, no copy into those blocks is running or will start, so
//!    blocks given back cannot be written after another sequence took them.

use std::any::Any;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::ExecutorError;
use crate::pool::BlockId;

/// A KV pool that other engines of this process may copy blocks into.
pub trait DevicePool: Send + Sync + std::fmt::Debug {
    /// Where the pool's memory lives, for logs: "cuda:1", "test".
    fn place(&self) -> String;

    /// Whether `copy_to` can write into `to` without staging in host memory (the same device, or
    /// two devices with peer access).
    fn reaches(&self, to: &dyn DevicePool) -> bool;

    /// Copy blocks `src` of this pool into blocks `dst` of `to`, pairwise, and return once the
    /// copy is complete. Called on the thread of the engine that owns this pool, between its
    /// steps, so the blocks' KV is written; `to`'s owner is running meanwhile, and `dst` are
    /// blocks no sequence of it uses.
    fn copy_to(&self, src: &[BlockId], to: &dyn DevicePool, dst: &[BlockId]) -> Result<(), ExecutorError>;

    fn as_any(&self) -> &dyn Any;
}

/// Reserved blocks of a decode worker's pool, for a prefill worker of the same process to fill.
#[derive(Debug)]
pub struct DeviceSink {
    pool: Arc<dyn DevicePool>,
    /// The destination of each block of the prefill, from its first skipped block on.
    blocks: Vec<BlockId>,
    /// The index in the sequence of `blocks[0]` (the prefill reports blocks by their index in
    /// the sequence).
    first: usize,
    /// False once the decode side closed the sink; held through every copy.
    open: Mutex<bool>,
    /// Blocks copied, in order of the sequence (a prefill completes its blocks in order).
    progress: watch::Sender<usize>,
}

/// Why a copy into a sink did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the decode side closed the transfer")]
    Closed,
    #[error("blocks {first}..{end} are outside the transfer's {len}")]
    Outside { first: usize, end: usize, len: usize },
    #[error(transparent)]
    Copy(#[from] ExecutorError),
}

impl DeviceSink {
    /// A sink over `blocks` of `pool`, for the sequence's blocks `first..first + blocks.len()`.
    pub fn new(pool: Arc<dyn DevicePool>, first: usize, blocks: Vec<BlockId>) -> Arc<Self> {
        let (progress, _) = watch::channel(0);
        Arc::new(Self { pool, blocks, first, open: Mutex::new(true), progress })
    }

    pub fn pool(&self) -> &Arc<dyn DevicePool> {
        &self.pool
    }

    /// How many blocks the sink takes.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks copied so far, and their changes.
    pub fn progress(&self) -> watch::Receiver<usize> {
        self.progress.subscribe()
    }

    /// Copy `src` (blocks of `from`, the sequence's blocks `first..`) into their places; once it
    /// returns Ok the bytes are there and `progress` counts them.
    pub fn copy(&self, from: &dyn DevicePool, first: usize, src: &[BlockId]) -> Result<(), SinkError> {
        let outside = || SinkError::Outside { first, end: first + src.len(), len: self.blocks.len() };
        let at = first.checked_sub(self.first).ok_or_else(outside)?;
        let dst = self.blocks.get(at..at + src.len()).ok_or_else(outside)?;
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !*open {
            return Err(SinkError::Closed);
        }
        from.copy_to(src, &*self.pool, dst)?;
        drop(open);
        self.progress.send_modify(|n| *n = (*n).max(at + src.len()));
        Ok(())
    }

    /// No copy into the sink's blocks is running once this returns, and none starts after.
    pub fn close(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}
