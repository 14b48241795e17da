//! Shared helpers of every producer: per-CPU stats and the ring-buffer wakeup policy.
//!
//! Why adaptive wakeups: measured here, `bpf_ringbuf_output` with the default policy costs
//! ~5 µs per event (the consumer is woken through irq_work nearly every time during a
//! burst), with `BPF_RB_NO_WAKEUP` ~0.8 µs. We stay silent until the pending data
//! crosses `wakeup_bytes` and force one wakeup at that crossing only; the agent also
//! drains on a short timer, so a lone event is never stranded.

use aya_ebpf::maps::{ring_buf::RingBufEntry, PerCpuArray, RingBuf};
use hostscope_common::{stats::Stat, RingConfig, RB_AVAIL_DATA, RB_FORCE_WAKEUP, RB_NO_WAKEUP};

#[inline(always)]
pub fn bump(stats: &PerCpuArray<u64>, stat: Stat) {
    if let Some(counter) = stats.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other CPU writes it, and BPF programs do not nest on one CPU
        // for the same hook, so a plain increment is exact.
        unsafe { *counter += 1 };
    }
}

/// Submits a reserved record under the family's wakeup policy and counts it.
#[inline(always)]
pub fn submit<T: 'static>(
    ring: &RingBuf,
    entry: RingBufEntry<T>,
    config: Option<&RingConfig>,
    stats: &PerCpuArray<u64>,
) {
    let flags = wakeup_flags(ring, config, stats, core::mem::size_of::<T>() as u64);
    entry.submit(flags);
    bump(stats, Stat::EventsEmitted);
}

/// Submits a record that its reader must see at once, waking it whatever is pending
/// (the kernel's own policy wakes only a reader that has read everything before this
/// record, which one asleep until its timer has not). For rare records only: each costs
/// a wakeup.
#[inline(always)]
pub fn submit_now<T: 'static>(entry: RingBufEntry<T>, stats: &PerCpuArray<u64>) {
    entry.submit(RB_FORCE_WAKEUP);
    bump(stats, Stat::Wakeups);
    bump(stats, Stat::EventsEmitted);
}

/// Flags for `submit` of a record of `size` bytes already reserved in `ring`, under
/// `config`'s policy.
#[inline(always)]
fn wakeup_flags(
    ring: &RingBuf,
    config: Option<&RingConfig>,
    stats: &PerCpuArray<u64>,
    size: u64,
) -> u64 {
    let threshold = match config {
        Some(c) => c.wakeup_bytes,
        None => RingConfig::DEFAULT.wakeup_bytes,
    };
    if threshold == 0 {
        return 0;
    }
    // The reservation already counts in the pending data.
    let pending = ring.query(RB_AVAIL_DATA);
    if pending >= threshold && pending < threshold + size {
        bump(stats, Stat::Wakeups);
        RB_FORCE_WAKEUP
    } else {
        RB_NO_WAKEUP
    }
}
