//! The one definition of every type, map name and program name that crosses the
//! kernel/user boundary. Used by the eBPF probes (no_std) and by the agent (`user`
//! feature, which adds `aya::Pod`).
#![no_std]

pub mod dns;
pub mod stats;
pub mod syscalls;
pub mod tcp;
pub mod tls;

/// Length of `task_struct.comm`.
pub const TASK_COMM_LEN: usize = 16;

/// `BPF_RB_NO_WAKEUP` / `BPF_RB_FORCE_WAKEUP` flags of `bpf_ringbuf_output`.
pub const RB_NO_WAKEUP: u64 = 1;
pub const RB_FORCE_WAKEUP: u64 = 2;
/// `BPF_RB_AVAIL_DATA` flag of `bpf_ringbuf_query`.
pub const RB_AVAIL_DATA: u64 = 0;

/// Ring-buffer wakeup policy shared by every producer; part of each family's runtime
/// config (tier two of the probe configuration: a single-slot array map, changed
/// without reloading).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Wake the consumer only once this many bytes are pending; below it the
    /// consumer drains on its own timer. 0 wakes on every event.
    pub wakeup_bytes: u64,
}

impl RingConfig {
    pub const DEFAULT: RingConfig = RingConfig {
        wakeup_bytes: 64 * 1024,
    };
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RingConfig {}
