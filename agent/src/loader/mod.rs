//! Loads the embedded eBPF object and attaches each probe family independently: a
//! family (or one of its programs) that the running kernel cannot take is reported as
//! not attached, with the reason, and never stops the others.

pub mod dns;
pub mod pin;
pub mod privilege;
pub mod syscalls;
pub mod tcp;
pub mod tls;
pub mod watch_paths;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use serde::Serialize;

use crate::{
    family::{Family, KernelView},
    kernel::{btf::KernelBtf, mounts, tracefs::Tracefs},
};

/// The probes, built by build.rs.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hostscope-probes"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `needs`: the missing capability when the kernel refused (see [`privilege`]).
    #[error("the eBPF object could not be loaded: {needs}: {source}")]
    Object {
        needs: String,
        /// Boxed: the error is large and every attach result carries this type.
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("tracefs is not available: {0}")]
    Tracefs(#[source] mounts::MountError),
    #[error("map {name} missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The cause is in the message, not a `source`: `main` prints chains with `{:#}`,
    /// which printed it twice ("`BPF_OBJ_PIN` failed: `BPF_OBJ_PIN` failed").
    #[error("pinning map {name} at {path}: {error}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    PinDir(#[from] pin::PinDirError),
    #[error("syscalls options: {0}")]
    SyscallOptions(#[source] syscalls::OptionError),
}

/// Whether one program is attached, attached with reduced data, not at all (and why), or
/// off because the configuration turned it off (which is no fault: readiness ignores it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum AttachState {
    Attached,
    Degraded(String),
    NotAttached(String),
    /// The reason names the configuration key that turned it off.
    Off(String),
}

impl AttachState {
    /// Attached, possibly with reduced data.
    pub fn is_up(&self) -> bool {
        matches!(self, AttachState::Attached | AttachState::Degraded(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeStatus {
    pub family: &'static str,
    pub program: &'static str,
    pub hook: String,
    #[serde(flatten)]
    pub state: AttachState,
}

impl std::fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (word, why) = match &self.state {
            AttachState::Attached => ("attached", None),
            AttachState::Degraded(w) => ("attached, degraded", Some(w)),
            AttachState::NotAttached(w) => ("NOT attached", Some(w)),
            AttachState::Off(w) => ("off", Some(w)),
        };
        write!(
            f,
            "{:<4} {:<20} {:<34} {word}",
            self.family, self.program, self.hook
        )?;
        if let Some(w) = why {
            write!(f, ": {w}")?;
        }
        Ok(())
    }
}

/// One family's programs summed up, from the report (`/readyz`, `hostscope status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyHealth {
    /// Programs attached, degraded ones included.
    pub up: usize,
    /// `program: reason` of each degraded, not attached and off program; programs left
    /// out because an alternative hook attached ("not needed: …") are not listed.
    pub degraded: Vec<String>,
    pub down: Vec<String>,
    pub off: Vec<String>,
}

impl FamilyHealth {
    /// Each family in the report, by its report name.
    pub fn of(probes: &[ProbeStatus]) -> std::collections::BTreeMap<&'static str, FamilyHealth> {
        let mut families = std::collections::BTreeMap::<_, FamilyHealth>::new();
        for p in probes {
            let f = families.entry(p.family).or_default();
            match &p.state {
                AttachState::Attached => f.up += 1,
                AttachState::Degraded(why) => {
                    f.up += 1;
                    f.degraded.push(format!("{}: {why}", p.program));
                }
                AttachState::NotAttached(why) if why.starts_with("not needed") => {}
                AttachState::NotAttached(why) => f.down.push(format!("{}: {why}", p.program)),
                AttachState::Off(why) => f.off.push(format!("{}: {why}", p.program)),
            }
        }
        families
    }

    /// Every program the family has is off by configuration.
    pub fn is_off(&self) -> bool {
        self.up == 0 && self.down.is_empty() && !self.off.is_empty()
    }

    /// The distinct reasons the family's programs are off (one per configuration key).
    pub fn off_reasons(&self) -> Vec<&str> {
        let mut why: Vec<&str> = self
            .off
            .iter()
            .map(|o| o.split_once(": ").map_or(o.as_str(), |(_, w)| w))
            .collect();
        why.dedup();
        why
    }
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Where to pin the maps `hostscope dump` reads; None disables pinning.
    pub pin_dir: Option<PathBuf>,
    pub tcp_ring_bytes: u32,
    /// Connections tracked at once; beyond it new ones are counted as `conn_map_full`.
    pub tcp_max_conns: u32,
    pub wakeup_bytes: u64,
    /// Probe SSL_read/SSL_write/_ex too, for the outcome of implicit handshakes.
    pub tls_uprobe_io: bool,
    /// Syscall telemetry and security events.
    pub syscalls: syscalls::SyscallOptions,
    /// DNS lookups: ports and ring (load time), join options (live).
    pub dns: dns::DnsSection,
}

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/hostscope";

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
            tcp_ring_bytes: hostscope_common::tcp::TCP_EVENTS_RING_BYTES,
            tcp_max_conns: hostscope_common::tcp::TCP_CONNS_MAX,
            wakeup_bytes: hostscope_common::RingConfig::DEFAULT.wakeup_bytes,
            tls_uprobe_io: false,
            syscalls: syscalls::SyscallOptions::default(),
            dns: dns::DnsSection::default(),
        }
    }
}

pub struct LoadedProbes {
    pub ebpf: Ebpf,
    pub report: Vec<ProbeStatus>,
    /// Whether any family has a part up.
    pub any_attached: bool,
    /// This agent's claim on the pin directory (None without pinning): keep it for the
    /// agent's whole life.
    pub pin_lock: Option<pin::PinDirLock>,
}

/// Loads the object and attaches every family: each plans (with one parse of the kernel
/// BTF), sets its load-time constants, then attaches; their maps are pinned last.
pub fn load(
    config: &LoaderConfig,
    families: &mut [Box<dyn Family>],
) -> Result<LoadedProbes, LoadError> {
    // Rust eBPF cannot count on locked-memory limits being raisable (EPERM without
    // CAP_SYS_RESOURCE); since 5.11 BPF memory is charged to the memcg instead.
    raise_memlock_best_effort();
    // Before anything is loaded: a pin directory that is not on a bpffs, or that a
    // running agent uses, fails at once rather than after seconds of loading.
    let pin_lock = config.pin_dir.as_deref().map(pin::claim).transpose()?;
    let tracefs = Tracefs::new(mounts::ensure_tracefs().map_err(LoadError::Tracefs)?);
    // The parsed kernel BTF is large (tens of MB); it is dropped before aya parses its
    // own copy, so the two never coexist.
    {
        let btf = KernelBtf::load();
        let kernel = KernelView {
            btf: btf.as_ref(),
            tracefs: &tracefs,
        };
        for f in families.iter_mut() {
            f.plan(&kernel);
        }
    }

    // One parse of the kernel BTF for aya's relocations and every tp_btf attach (each
    // copy is ~10 MB). The loader parses its own in `new()`; it is dropped before ours
    // is made, so two never coexist.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    let kernel_btf = aya::Btf::from_sys_fs().ok();
    loader.btf(kernel_btf.as_ref());
    for f in families.iter() {
        f.configure(&mut loader);
    }
    let mut ebpf = loader
        .load(PROBES_OBJECT)
        .map_err(|source| LoadError::Object {
            needs: privilege::refusal(
                &source,
                &[privilege::CAP_BPF],
                "bpf(): maps, programs and ring buffers",
            )
            .unwrap_or_else(|| "are we root, with CAP_BPF and CAP_PERFMON?".to_string()),
            source: Box::new(source),
        })?;

    drop(loader);

    let mut report = Vec::new();
    let mut any_attached = false;
    for f in families.iter_mut() {
        any_attached |= f.attach(&mut ebpf, kernel_btf.as_ref(), &mut report)?;
    }
    drop(kernel_btf);

    if let Some(dir) = &config.pin_dir {
        pin_maps(&mut ebpf, dir, crate::family::pinned_maps().map(|m| m.name))?;
    }
    // Hand the start-up parsing memory back to the system rather than keep it as heap.
    // SAFETY: malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
    Ok(LoadedProbes {
        ebpf,
        report,
        any_attached,
        pin_lock,
    })
}

/// Detaches and unloads every program at once, one thread each, and drops every link
/// taken from them (`links`: the uprobes', one per library and symbol) on a thread each.
/// Removing a perf-event hook (a tracepoint, a uprobe) waits for an RCU grace period;
/// one after the other they made the agent's stop take 1.5 s on a 2-core VM, while
/// waits that overlap share their grace periods. The maps stay, for the final drain and
/// counters.
pub fn detach_all<L: Send>(ebpf: &mut aya::Ebpf, links: Vec<L>) {
    use aya::programs::Program;
    let programs: Vec<&mut Program> = ebpf.programs_mut().map(|(_, p)| p).collect();
    std::thread::scope(|s| {
        for link in links {
            s.spawn(move || drop(link));
        }
        for p in programs {
            s.spawn(move || {
                // A program that fails to unload is closed with the object anyway.
                let _ = match p {
                    Program::TracePoint(p) => p.unload(),
                    Program::BtfTracePoint(p) => p.unload(),
                    Program::RawTracePoint(p) => p.unload(),
                    Program::UProbe(p) => p.unload(),
                    Program::CgroupSkb(p) => p.unload(),
                    _ => Ok(()),
                };
            });
        }
    });
}

/// Pins fresh maps of this run, replacing pins a previous run left behind (this agent
/// holds the directory's claim, so no running agent's pins are replaced), so that
/// `hostscope dump` reads them while we run and after we exit.
fn pin_maps(
    ebpf: &mut Ebpf,
    dir: &Path,
    names: impl Iterator<Item = &'static str>,
) -> Result<(), LoadError> {
    for name in names {
        let path = dir.join(name);
        let pin_err = |error| LoadError::Pin {
            name,
            path: path.clone(),
            error,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err(e)),
        }
        let map = ebpf.map(name).ok_or(LoadError::MissingMap { name })?;
        map.pin(&path).map_err(|e| pin_err(pin_io_error(e)))?;
    }
    Ok(())
}

/// The errno behind a failed pin (e.g. EPERM), not aya's "`BPF_OBJ_PIN` failed" alone.
fn pin_io_error(e: aya::pin::PinError) -> std::io::Error {
    match e {
        aya::pin::PinError::SyscallError(s) => {
            std::io::Error::new(s.io_error.kind(), format!("`{}`: {}", s.call, s.io_error))
        }
        other => std::io::Error::other(other.to_string()),
    }
}

/// Writes a family's runtime configuration (slot 0 of its single-slot array map).
/// Attaches a family's (egress, ingress) cgroup_skb programs to the cgroup v2 root, one
/// report line each; returns how many attached.
pub fn attach_cgroup_skb_pair(
    ebpf: &mut Ebpf,
    family: &'static str,
    [egress, ingress]: [&'static str; 2],
    report: &mut Vec<ProbeStatus>,
) -> usize {
    use aya::programs::CgroupSkbAttachType;
    let cgroup_root = mounts::find("cgroup2").ok().flatten();
    let mut up = 0;
    for (program, kind, direction) in [
        (egress, CgroupSkbAttachType::Egress, "egress"),
        (ingress, CgroupSkbAttachType::Ingress, "ingress"),
    ] {
        let hook = match &cgroup_root {
            Some(root) => format!("cgroup_skb/{direction} on {}", root.display()),
            None => format!("cgroup_skb/{direction}"),
        };
        let result = match &cgroup_root {
            None => Err("no cgroup v2 mount in /proc/self/mountinfo".to_string()),
            Some(root) => attach_cgroup_skb(ebpf, program, root, kind).map_err(|e| {
                // The load needs CAP_PERFMON (the verifier refuses its kernel reads
                // with EACCES), the attach CAP_NET_ADMIN.
                privilege::describe(
                    &e,
                    &[privilege::CAP_PERFMON, privilege::CAP_NET_ADMIN],
                    "cgroup_skb load and attach",
                )
            }),
        };
        if result.is_ok() {
            up += 1;
        }
        report.push(ProbeStatus {
            family,
            program,
            hook,
            state: match result {
                Ok(()) => AttachState::Attached,
                Err(why) => AttachState::NotAttached(why),
            },
        });
    }
    up
}

fn attach_cgroup_skb(
    ebpf: &mut Ebpf,
    program: &str,
    root: &Path,
    kind: aya::programs::CgroupSkbAttachType,
) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::{CgroupAttachMode, CgroupSkb, ProgramError};
    let prog: &mut CgroupSkb = ebpf
        .program_mut(program)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    prog.load()?;
    let cgroup = std::fs::File::open(root).map_err(ProgramError::IOError)?;
    // The default (single) mode: AllowMultiple is refused on some kernels (EINVAL).
    prog.attach(cgroup, kind, CgroupAttachMode::default())?;
    Ok(())
}

pub fn set_config<T: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    value: T,
) -> Result<(), LoadError> {
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap { name })?;
    let mut array: aya::maps::Array<_, T> =
        aya::maps::Array::try_from(map).map_err(|source| LoadError::Map { name, source })?;
    array
        .set(0, value, 0)
        .map_err(|source| LoadError::Map { name, source })
}

fn raise_memlock_best_effort() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure is expected and harmless.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
