//! Which way a prompt's KV goes from a prefill worker to a decode worker: device to device when
//! both are in this process and the prefill worker's pool reaches the decode worker's (two CUDA
//! devices with peer access, or one device), else as frames over the data plane.
//!
//! The order, for one transfer:
//! 1. The decode worker, when `transport.device_copies` is on and its engine has a device pool,
//!    offers its reserved blocks under the transfer id (`offer`) before it asks for the prefill.
//! 2. The prefill worker claims the offer (`claim`, found only in the same process) and chooses
//!    (`choose`): device copies if its own pool reaches the offered one, else frames.
//! 3. The decode worker waits for frames or for the sink's progress, whichever comes, and drops
//!    the `Offer` before it commits or gives back the blocks; dropping it closes the sink, which
//!    waits for a copy in flight.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use gpu::executor::{DevicePool, DeviceSink};
use gpu::pool::BlockId;

/// Offers of this process's decode workers, by transfer id.
static OFFERS: LazyLock<Mutex<HashMap<u64, Weak<DeviceSink>>>> = LazyLock::new(Default::default);

/// A decode worker's offer of reserved blocks for device copies; dropping it withdraws the offer
/// and closes the sink.
#[derive(Debug)]
pub struct Offer {
    transfer: u64,
    sink: Arc<DeviceSink>,
}

impl Offer {
    pub fn sink(&self) -> &Arc<DeviceSink> {
        &self.sink
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        OFFERS.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.transfer);
        self.sink.close();
    }
}

/// Offer `blocks` of `pool` (the sequence's blocks from `first` on) for transfer `transfer`.
pub fn offer(transfer: u64, pool: Arc<dyn DevicePool>, first: usize, blocks: Vec<BlockId>) -> Offer {
    let sink = DeviceSink::new(pool, first, blocks);
    OFFERS.lock().unwrap_or_else(|p| p.into_inner()).insert(transfer, Arc::downgrade(&sink));
    Offer { transfer, sink }
}

/// The offer for `transfer`, if a decode worker of this process made one and still waits.
pub fn claim(transfer: u64) -> Option<Arc<DeviceSink>> {
    OFFERS.lock().unwrap_or_else(|p| p.into_inner()).remove(&transfer)?.upgrade()
}

/// How a prefill worker sends a transfer's blocks.
#[derive(Debug)]
pub enum KvRoute {
    /// Frames over the data plane (the in-process hand-off, shared memory, TLS or QUIC).
    Frames,
    /// Copies from this worker's pool into the decode worker's.
    Device(Arc<DeviceSink>),
}

/// The route for a transfer: device copies when the decode worker offered its blocks and this
/// worker's pool (`own`) reaches its pool, else frames.
pub fn choose(own: Option<&Arc<dyn DevicePool>>, offered: Option<Arc<DeviceSink>>) -> KvRoute {
    match (own, offered) {
        (Some(own), Some(sink)) if own.reaches(&**sink.pool()) => KvRoute::Device(sink),
        _ => KvRoute::Frames,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu::Executor;
    use gpu::executor::TestExecutor;
    use std::time::Duration;

    fn pool(blocks: usize, block_size: usize) -> Arc<dyn DevicePool> {
        TestExecutor::new(Duration::ZERO, 256).with_kv(blocks, block_size).device_pool().unwrap()
    }

    /// A pool of another kind, that nothing reaches and that reaches nothing.
    #[derive(Debug)]
    struct Elsewhere;

    impl DevicePool for Elsewhere {
        fn place(&self) -> String {
            "elsewhere".into()
        }
        fn reaches(&self, _: &dyn DevicePool) -> bool {
            false
        }
        fn copy_to(&self, _: &[BlockId], _: &dyn DevicePool, _: &[BlockId]) -> Result<(), gpu::ExecutorError> {
            Err(gpu::ExecutorError::Blocks("unreachable".into()))
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn blocks(n: u32) -> Vec<BlockId> {
        (0..n).map(BlockId).collect()
    }

    #[test]
    fn device_copies_only_where_the_pools_reach_each_other() {
        let (ours, theirs) = (pool(8, 4), pool(8, 4));
        let sink = || DeviceSink::new(theirs.clone(), 0, blocks(2));
        assert!(matches!(choose(Some(&ours), Some(sink())), KvRoute::Device(_)));
        // Nothing offered (another process, or device copies off on the decode side).
        assert!(matches!(choose(Some(&ours), None), KvRoute::Frames));
        // This worker's blocks move only as bytes (the CPU backend).
        assert!(matches!(choose(None, Some(sink())), KvRoute::Frames));
        // Pools that do not reach each other: another kind, or another block size.
        let other: Arc<dyn DevicePool> = Arc::new(Elsewhere);
        assert!(matches!(choose(Some(&other), Some(sink())), KvRoute::Frames));
        assert!(matches!(choose(Some(&pool(8, 8)), Some(sink())), KvRoute::Frames));
    }

    #[test]
    fn an_offer_is_claimed_once_and_withdrawn_when_dropped() {
        let offered = offer(0xfeed_0001, pool(8, 4), 1, blocks(3));
        assert!(claim(0xfeed_0002).is_none(), "another transfer");
        let sink = claim(0xfeed_0001).expect("offered in this process");
        assert_eq!(sink.len(), 3);
        assert!(claim(0xfeed_0001).is_none(), "claimed once");
        drop(offered);
        let late = offer(0xfeed_0003, pool(8, 4), 0, blocks(1));
        drop(late);
        assert!(claim(0xfeed_0003).is_none(), "withdrawn");
    }

    #[test]
    fn a_closed_sink_takes_no_more_copies_and_progress_counts_blocks_in_place() {
        let (ours, theirs) = (pool(8, 4), pool(8, 4));
        // The decode worker holds the sequence's blocks 0..2 and reserved 5, 6, 7 for blocks 2..5.
        let offered = offer(0xfeed_0004, theirs, 2, vec![BlockId(5), BlockId(6), BlockId(7)]);
        let sink = claim(0xfeed_0004).unwrap();
        let progress = sink.progress();
        sink.copy(&*ours, 2, &[BlockId(0), BlockId(1)]).unwrap();
        assert_eq!(*progress.borrow(), 2);
        assert!(sink.copy(&*ours, 1, &[BlockId(0)]).is_err(), "before the transfer's first block");
        assert!(sink.copy(&*ours, 4, &[BlockId(2), BlockId(3)]).is_err(), "past its last");
        drop(offered);
        assert!(matches!(sink.copy(&*ours, 4, &[BlockId(2)]), Err(gpu::executor::SinkError::Closed)));
        assert_eq!(*progress.borrow(), 2);
    }
}
