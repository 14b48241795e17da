//! The floor of the syscall hook pair: two empty BPF programs (`return 0`) on the
//! `sys_enter` and `sys_exit` raw tracepoints, loaded here with bpf(2). Whatever a
//! tracer adds to a syscall beyond the floor is the work its programs do; the floor
//! itself is the price of having any program on the hooks (the trampoline into BPF,
//! and bpf_stats' own timing). hostscope attaches tp_btf programs, which enter through
//! the same `__bpf_trace_run` path as raw_tp ones.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::bail;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `mov64 r0, 0; exit`.
const EMPTY_PROGRAM: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u64; 8],
}

/// `union bpf_attr` for BPF_RAW_TRACEPOINT_OPEN.
#[repr(C)]
#[derive(Default)]
struct RawTracepointOpen {
    name: u64,
    prog_fd: u32,
    pad: u32,
    rest: [u64; 14],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The two programs and their attachments; detached on drop.
pub struct Floor {
    _fds: Vec<OwnedFd>,
}

/// Program names, as bpf_stats lists them.
pub const PROGRAMS: [&str; 2] = ["floor_sys_enter", "floor_sys_exit"];

impl Floor {
    pub fn attach() -> anyhow::Result<Floor> {
        let license = c"GPL";
        let mut fds = Vec::new();
        for (name, tracepoint) in PROGRAMS.iter().zip([c"sys_enter", c"sys_exit"]) {
            let mut load = ProgLoad {
                prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
                insn_cnt: EMPTY_PROGRAM.len() as u32,
                insns: EMPTY_PROGRAM.as_ptr() as u64,
                license: license.as_ptr() as u64,
                ..Default::default()
            };
            load.prog_name[..name.len()].copy_from_slice(name.as_bytes());
            let prog = match bpf(BPF_PROG_LOAD, &mut load) {
                Ok(fd) => fd,
                Err(e) => bail!("loading the empty {name} program: {e}"),
            };
            let mut open = RawTracepointOpen {
                name: tracepoint.as_ptr() as u64,
                prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
                ..Default::default()
            };
            let link = match bpf(BPF_RAW_TRACEPOINT_OPEN, &mut open) {
                Ok(fd) => fd,
                Err(e) => bail!("attaching {name} to raw_tp/{tracepoint:?}: {e}"),
            };
            fds.push(prog);
            fds.push(link);
        }
        Ok(Floor { _fds: fds })
    }
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;

/// `mov64 r0, 1; exit`: a cgroup_skb program that lets every packet pass.
const PASS_PROGRAM: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];

/// `union bpf_attr` for BPF_LINK_CREATE.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    rest: [u64; 12],
}

/// The floor of the packet hooks the TLS wire and DNS probes use: two cgroup_skb
/// programs that only let the packet pass, on the cgroup v2 root's egress and ingress
/// (bpf links: detached when dropped).
pub struct SkbFloor {
    _fds: Vec<OwnedFd>,
}

/// Program names, as bpf_stats lists them.
pub const SKB_PROGRAMS: [&str; 2] = ["floor_skb_egres", "floor_skb_ingre"];

impl SkbFloor {
    pub fn attach(cgroup_root: &std::path::Path) -> anyhow::Result<SkbFloor> {
        let license = c"GPL";
        let root = std::fs::File::open(cgroup_root)?;
        let mut fds = Vec::new();
        for (name, attach_type) in SKB_PROGRAMS
            .iter()
            .zip([BPF_CGROUP_INET_EGRESS, BPF_CGROUP_INET_INGRESS])
        {
            let mut load = ProgLoad {
                prog_type: BPF_PROG_TYPE_CGROUP_SKB,
                insn_cnt: PASS_PROGRAM.len() as u32,
                insns: PASS_PROGRAM.as_ptr() as u64,
                license: license.as_ptr() as u64,
                ..Default::default()
            };
            load.prog_name[..name.len()].copy_from_slice(name.as_bytes());
            // prog_ifindex (0), then expected_attach_type.
            load.rest[0] = (attach_type as u64) << 32;
            let prog = match bpf(BPF_PROG_LOAD, &mut load) {
                Ok(fd) => fd,
                Err(e) => bail!("loading the empty {name} program: {e}"),
            };
            let mut link = LinkCreate {
                prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
                target_fd: std::os::fd::AsRawFd::as_raw_fd(&root) as u32,
                attach_type,
                ..Default::default()
            };
            let link = match bpf(BPF_LINK_CREATE, &mut link) {
                Ok(fd) => fd,
                Err(e) => bail!("attaching {name} to {}: {e}", cgroup_root.display()),
            };
            fds.push(prog);
            fds.push(link);
        }
        Ok(SkbFloor { _fds: fds })
    }
}
