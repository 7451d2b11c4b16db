//! A CUDA executor's KV pool as a `DevicePool`: another CUDA engine of this process copies blocks
//! into it device to device (`cuMemcpyPeerAsync` between two devices, with peer access enabled;
//! `cuMemcpyDtoDAsync` on one), so disaggregated prefill between two CUDA workers of one process
//! never stages blocks in host memory.
//!
//! The pool knows its memory only by address: the executor that owns the allocation retires the
//! pool (`CudaPool::retire`) before freeing it, and every copy holds both pools' `live` locks, so
//! no copy touches a freed allocation.

use std::any::Any;
use std::sync::{Arc, Mutex, RwLock};

use cudarc::driver::{CudaContext, CudaStream};

use crate::executor::{DevicePool, ExecutorError};
use crate::pool::BlockId;

#[derive(Debug)]
pub struct CudaPool {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    /// The owning executor's stream: copies out of this pool queue behind its forward passes.
    stream: Arc<CudaStream>,
    /// Device address of block 0; blocks are `block_bytes` apart.
    base: u64,
    blocks: usize,
    block_bytes: usize,
    /// False once the owning executor is freeing the allocation.
    live: RwLock<bool>,
    /// Devices whose memory this pool's context has been given access to.
    peers: Mutex<Vec<usize>>,
}

fn blocks_error(e: cudarc::driver::DriverError) -> ExecutorError {
    ExecutorError::Blocks(format!("CUDA copy: {e}"))
}

impl CudaPool {
    /// A pool of `blocks` blocks of `block_bytes` at `base` on device `ordinal`, owned by the
    /// executor whose context and stream these are.
    pub(crate) fn new(
        ordinal: usize,
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        base: u64,
        blocks: usize,
        block_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            ordinal,
            ctx,
            stream,
            base,
            blocks,
            block_bytes,
            live: RwLock::new(true),
            peers: Mutex::default(),
        })
    }

    /// The allocation is about to be freed: waits for copies in flight; none starts after.
    pub(crate) fn retire(&self) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = false;
    }

    fn address(&self, block: BlockId) -> Result<u64, ExecutorError> {
        if block.0 as usize >= self.blocks {
            return Err(ExecutorError::Blocks(format!(
                "block {} is outside the pool on cuda:{}",
                block.0, self.ordinal
            )));
        }
        Ok(self.base + block.0 as u64 * self.block_bytes as u64)
    }

    /// Whether this device can read and write `other`'s memory directly.
    fn can_access(&self, other: &CudaPool) -> bool {
        if other.ordinal == self.ordinal {
            return true;
        }
        let mut can = 0i32;
        // SAFETY: a plain query on two live devices.
        let asked = unsafe {
            cudarc::driver::sys::cuDeviceCanAccessPeer(&mut can, self.ctx.cu_device(), other.ctx.cu_device())
        };
        asked.result().is_ok() && can == 1
    }

    /// Give this context access to `other`'s memory, once (the driver then copies between the two
    /// over NVLink or PCIe without staging in host memory).
    fn enable_access(&self, other: &CudaPool) -> Result<(), ExecutorError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if other.ordinal == self.ordinal || peers.contains(&other.ordinal) {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(blocks_error)?;
        // SAFETY: both contexts are live; enabling twice is reported, not undefined.
        let enabled = unsafe { cudarc::driver::sys::cuCtxEnablePeerAccess(other.ctx.cu_ctx(), 0) };
        match enabled {
            cudarc::driver::sys::CUresult::CUDA_SUCCESS
            | cudarc::driver::sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {}
            e => return Err(blocks_error(cudarc::driver::DriverError(e))),
        }
        peers.push(other.ordinal);
        Ok(())
    }
}

/// Runs of consecutive pairs: (first source, first destination, blocks), so that blocks that lie
/// together in both pools move in one copy.
fn runs(src: &[BlockId], dst: &[BlockId]) -> Vec<(BlockId, BlockId, usize)> {
    let mut out: Vec<(BlockId, BlockId, usize)> = Vec::new();
    for (&s, &d) in src.iter().zip(dst) {
        match out.last_mut() {
            Some((s0, d0, n)) if s0.0 as usize + *n == s.0 as usize && d0.0 as usize + *n == d.0 as usize => *n += 1,
            _ => out.push((s, d, 1)),
        }
    }
    out
}

impl DevicePool for CudaPool {
    fn place(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    fn reaches(&self, to: &dyn DevicePool) -> bool {
        to.as_any().downcast_ref::<CudaPool>().is_some_and(|t| t.block_bytes == self.block_bytes && self.can_access(t))
    }

    fn copy_to(&self, src: &[BlockId], to: &dyn DevicePool, dst: &[BlockId]) -> Result<(), ExecutorError> {
        let to =
            to.as_any().downcast_ref::<CudaPool>().filter(|t| t.block_bytes == self.block_bytes).ok_or_else(|| {
                ExecutorError::Blocks(format!("cuda:{} cannot copy blocks into {}", self.ordinal, to.place()))
            })?;
        if src.len() != dst.len() {
            return Err(ExecutorError::Blocks(format!("{} blocks into {}", src.len(), dst.len())));
        }
        let (ours, theirs) =
            (self.live.read().unwrap_or_else(|p| p.into_inner()), to.live.read().unwrap_or_else(|p| p.into_inner()));
        if !*ours || !*theirs {
            return Err(ExecutorError::Blocks("a KV pool of the copy is being freed".into()));
        }
        self.enable_access(to)?;
        self.ctx.bind_to_thread().map_err(blocks_error)?;
        for (s, d, n) in runs(src, dst) {
            let (from, into) = (self.address(s)?, to.address(d)?);
            // Checked above for the first block of the run; the last must be inside too.
            self.address(BlockId(s.0 + n as u32 - 1))?;
            to.address(BlockId(d.0 + n as u32 - 1))?;
            let bytes = n * self.block_bytes;
            // SAFETY: both ranges lie inside live allocations (checked, and held live by the
            // locks above until the copy completes: the synchronize below); the destination
            // blocks are reserved, so no kernel of their owner reads or writes them meanwhile.
            unsafe {
                if to.ordinal == self.ordinal {
                    cudarc::driver::result::memcpy_dtod_async(into, from, bytes, self.stream.cu_stream())
                } else {
                    cudarc::driver::result::memcpy_peer_async(
                        to.ctx.cu_ctx(),
                        into,
                        self.ctx.cu_ctx(),
                        from,
                        bytes,
                        self.stream.cu_stream(),
                    )
                }
            }
            .map_err(blocks_error)?;
        }
        self.stream.synchronize().map_err(blocks_error)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_blocks_move_in_one_copy() {
        let b = |v: &[u32]| v.iter().map(|&i| BlockId(i)).collect::<Vec<_>>();
        assert_eq!(
            runs(&b(&[3, 4, 5, 9]), &b(&[10, 11, 12, 13])),
            vec![(BlockId(3), BlockId(10), 3), (BlockId(9), BlockId(13), 1)]
        );
        // Consecutive on one side only: separate copies.
        assert_eq!(runs(&b(&[1, 2]), &b(&[7, 5])), vec![(BlockId(1), BlockId(7), 1), (BlockId(2), BlockId(5), 1)]);
        assert!(runs(&[], &[]).is_empty());
    }
}
