//! The onboarding cost: whether moving a prompt's leading blocks from a cache tier beats computing
//! them again. The worker asks it before it reads a tier; the simulator asks it the same way.

use std::time::Duration;

use vocab::config::TierLink;

/// Whether moving `blocks` blocks of `block_bytes` bytes over `link` takes less time than
/// prefilling their `block_size` tokens each at `prefill_tokens_per_s`.
pub fn onboard_pays(
    blocks: usize,
    block_bytes: usize,
    block_size: usize,
    link: &TierLink,
    prefill_tokens_per_s: f64,
) -> bool {
    blocks > 0
        && transfer_time(blocks, block_bytes, link)
            < Duration::from_secs_f64((blocks * block_size) as f64 / prefill_tokens_per_s)
}

/// How long moving `blocks` blocks over `link` takes.
pub fn transfer_time(blocks: usize, block_bytes: usize, link: &TierLink) -> Duration {
    link.latency.get() + Duration::from_secs_f64((blocks * block_bytes) as f64 / link.bytes_per_s.bytes() as f64)
}
