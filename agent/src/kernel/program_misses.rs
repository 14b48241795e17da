//! Runs the kernel skipped: a tracepoint or kprobe program that fires while another
//! BPF program runs on the same CPU (a softirq that interrupted one, say) is not run,
//! and the kernel counts it in the program's `recursion_misses` (5.12+). Whatever that
//! run would have recorded is unknown, so the count is reported next to the losses.
//! aya 0.14's `ProgramInfo` does not expose the field; it is read with
//! BPF_OBJ_GET_INFO_BY_FD into the kernel's own `bpf_prog_info` layout.

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::Program;

/// The program's skipped runs; `None` where the kernel does not report them.
pub fn recursion_misses(program: &Program) -> Option<u64> {
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
    // The kernel writes back how much it filled: an older kernel stops short of the
    // field, and then reports nothing rather than a zero.
    let filled = attr.info_len as usize;
    let needed = std::mem::offset_of!(aya_obj::generated::bpf_prog_info, recursion_misses)
        + std::mem::size_of::<u64>();
    (r == 0 && filled >= needed).then_some(info.recursion_misses)
}
