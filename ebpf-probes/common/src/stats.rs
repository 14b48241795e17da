//! Per-CPU counters every probe family keeps about itself, so that nothing is lost
//! silently: userspace sums them over CPUs and reports them.

/// Index into a family's per-CPU stats array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Records written to the ring buffer.
    EventsEmitted = 0,
    /// Records dropped because the ring buffer was full.
    RingFull = 1,
    /// New connections not tracked because the connection map was full.
    ConnMapFull = 2,
    /// State changes of sockets opened before the probe attached (not tracked).
    Untracked = 3,
    /// Kernel memory reads (`bpf_probe_read_kernel`) that failed.
    ReadFailed = 4,
    /// Ring wakeups forced because the pending data crossed the threshold.
    Wakeups = 5,
    /// Records made at a later transition because the kernel skipped the probe run that
    /// owed them (it does while another BPF program runs on the CPU).
    TransitionsRecovered = 6,
}

pub const STAT_COUNT: u32 = 7;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::EventsEmitted,
        Stat::RingFull,
        Stat::ConnMapFull,
        Stat::Untracked,
        Stat::ReadFailed,
        Stat::Wakeups,
        Stat::TransitionsRecovered,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Stat::EventsEmitted => "events_emitted",
            Stat::RingFull => "events_lost_ring_full",
            Stat::ConnMapFull => "conn_map_full",
            Stat::Untracked => "untracked_sockets",
            Stat::ReadFailed => "kernel_read_failed",
            Stat::Wakeups => "ring_wakeups",
            Stat::TransitionsRecovered => "transitions_recovered",
        }
    }
}
