//! What the kernel counts of a program's runs, read with one BPF_OBJ_GET_INFO_BY_FD into
//! the kernel's own `bpf_prog_info` layout (aya-obj's bindings): run count and time
//! (kept only while `kernel.bpf_stats_enabled` is on) and `recursion_misses` (5.12+),
//! which aya 0.14's `ProgramInfo` does not expose. A tracepoint or kprobe program that
//! fires while another BPF program runs on the same CPU (a softirq that interrupted
//! one, say) is not run; the kernel only counts it there. Whatever that run would have
//! recorded is unknown, so the count is reported next to the losses.

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::Program;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped; 0 where the kernel does not report them.
    pub recursion_misses: u64,
}

/// The program's counters; `None` when the kernel refuses the query.
pub fn read(program: &Program) -> Option<ProgramRuns> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let fd = program.fd().ok()?;
    // SAFETY: bpf_prog_info is plain integers; all zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: attr points at `info`, of the length it gives, which outlives the call;
    // the kernel writes the length it filled back into attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r != 0 {
        return None;
    }
    // An older kernel fills less of the struct; what it did not fill stays zero.
    let filled = attr.info_len as usize;
    let misses_end = std::mem::offset_of!(aya_obj::generated::bpf_prog_info, recursion_misses)
        + std::mem::size_of::<u64>();
    Some(ProgramRuns {
        run_count: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: if filled >= misses_end {
            info.recursion_misses
        } else {
            0
        },
    })
}
