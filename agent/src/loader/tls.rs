//! TLS family: the wire probes on the cgroup v2 root and the OpenSSL uprobes on every
//! libssl.so.3 / libcrypto.so.3 on the host, including ones that appear later (new
//! containers): `refresh` attaches to libraries not seen before.

use std::{collections::HashSet, os::unix::fs::MetadataExt, path::PathBuf};

use aya::{
    programs::{ProgramError, UProbe},
    Ebpf,
};
use hostscope_common::{tls::*, RingConfig};

use super::{privilege, AttachState, LoadError, LoaderConfig, ProbeStatus};

/// `tls:` in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    pub uprobe_io: bool,
    #[serde(with = "humantime_serde")]
    pub library_rescan_interval: std::time::Duration,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            uprobe_io: false,
            library_rescan_interval: std::time::Duration::from_secs(5),
        }
    }
}

impl TlsSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "TLS handshakes: from the wire for any library, outcome from OpenSSL.",
        ),
        (
            "uprobe_io",
            "Also probe SSL_read/SSL_write[_ex]: the outcome of handshakes run inside\n\
             them, at the cost of a uprobe trap on every TLS read and write.",
        ),
        (
            "library_rescan_interval",
            "How often new OpenSSL copies (new containers, programs) are looked for.",
        ),
    ];

    pub fn validate(&self, at: &str, p: &mut crate::config::Problems) {
        if !(std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(3600))
            .contains(&self.library_rescan_interval)
        {
            p.push(
                format!("{at}.library_rescan_interval"),
                "must be between 100ms and 1h",
            );
        }
    }
}

/// Where distributions put the system OpenSSL; processes' own copies are found in
/// `/proc/<pid>/maps`.
const SYSTEM_LIBSSL: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/aarch64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
    "/lib/x86_64-linux-gnu/libssl.so.3",
];

/// The uprobe programs and where each attaches.
fn uprobe_plan(io: bool) -> Vec<(&'static str, Lib, Vec<&'static str>)> {
    let mut calls = SSL_HANDSHAKE_SYMBOLS.to_vec();
    if io {
        calls.extend_from_slice(&SSL_IO_SYMBOLS);
    }
    vec![
        (TLS_SSL_CALL_PROGRAM, Lib::Ssl, calls.clone()),
        (TLS_SSL_CALL_RETURN_PROGRAM, Lib::Ssl, calls),
        (TLS_SSL_FREE_PROGRAM, Lib::Ssl, vec![SSL_FREE_SYMBOL]),
        (
            TLS_VERIFY_ERROR_RETURN_PROGRAM,
            Lib::Crypto,
            vec![VERIFY_ERROR_SYMBOL],
        ),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lib {
    Ssl,
    Crypto,
}

/// State kept across refreshes: libraries already attached (by device and inode).
#[derive(Default)]
pub struct TlsAttachments {
    pub wire: bool,
    /// Also probe SSL_read/SSL_write/_ex (implicit handshakes; costly on bulk traffic).
    pub io: bool,
    pub uprobes_loaded: bool,
    seen: HashSet<(u64, u64)>,
    pub libraries: Vec<PathBuf>,
    /// The uprobe attachments, owned here so that the agent's stop can detach them all at
    /// once (see `super::detach_all`).
    links: Vec<aya::programs::uprobe::UProbeLink>,
}

impl TlsAttachments {
    /// Every uprobe attachment, for detaching (dropping) them.
    pub fn take_links(&mut self) -> Vec<aya::programs::uprobe::UProbeLink> {
        std::mem::take(&mut self.links)
    }
}

pub fn attach(
    ebpf: &mut Ebpf,
    config: &LoaderConfig,
    report: &mut Vec<ProbeStatus>,
) -> Result<TlsAttachments, LoadError> {
    let mut state = TlsAttachments {
        io: config.tls_uprobe_io,
        ..TlsAttachments::default()
    };
    let wire_up = super::attach_cgroup_skb_pair(
        ebpf,
        "tls",
        [TLS_WIRE_EGRESS_PROGRAM, TLS_WIRE_INGRESS_PROGRAM],
        report,
    );
    state.wire = wire_up == 2;

    // Load the uprobe programs once; attach them per library.
    let mut load_errors = Vec::new();
    for (program, _, _) in uprobe_plan(state.io) {
        let loaded = ebpf
            .program_mut(program)
            .ok_or(ProgramError::UnexpectedProgramType)
            .and_then(<&mut UProbe>::try_from)
            .and_then(|p| p.load());
        if let Err(e) = loaded {
            load_errors.push((
                program,
                privilege::describe(&e, &[privilege::CAP_BPF], "uprobe program load"),
            ));
        }
    }
    state.uprobes_loaded = load_errors.is_empty();
    let attached = if state.uprobes_loaded {
        refresh(ebpf, &mut state)
    } else {
        Vec::new()
    };
    for (program, lib, symbols) in uprobe_plan(state.io) {
        let hook = format!(
            "uprobe {}:{}",
            if lib == Lib::Ssl {
                "libssl.so.3"
            } else {
                "libcrypto.so.3"
            },
            symbols.join(",")
        );
        let state_line = if let Some((_, why)) = load_errors.iter().find(|(p, _)| *p == program) {
            AttachState::NotAttached(why.clone())
        } else if state.libraries.is_empty() {
            AttachState::NotAttached(
                if privilege::missing(&[privilege::CAP_SYS_PTRACE]).is_empty() {
                    "no libssl.so.3 on this host yet; attached when one appears".to_string()
                } else {
                    "no libssl.so.3 found: needs CAP_SYS_PTRACE to search other users' and \
                     containers' processes (/proc/<pid>/maps and /root)"
                        .to_string()
                },
            )
        } else {
            let errors: Vec<&String> = attached
                .iter()
                .filter(|(p, _)| *p == program)
                .map(|(_, e)| e)
                .collect();
            // Every symbol of every library refused: nothing of this program is attached
            // (a capability missing, typically), which readiness must see as such.
            let attempts = state.libraries.len() * symbols.len();
            if errors.is_empty() {
                AttachState::Attached
            } else if errors.len() >= attempts {
                let why = uprobe_errors(&errors);
                AttachState::NotAttached(
                    why.strip_prefix("not attached: ")
                        .unwrap_or(&why)
                        .to_string(),
                )
            } else {
                AttachState::Degraded(uprobe_errors(&errors))
            }
        };
        report.push(ProbeStatus {
            family: "tls",
            program,
            hook: format!("{hook} ({} libraries)", state.libraries.len()),
            state: state_line,
        });
    }
    if state.wire || !state.libraries.is_empty() {
        super::set_config(
            ebpf,
            TLS_CONFIG_MAP,
            TlsConfig {
                ring: RingConfig {
                    wakeup_bytes: config.wakeup_bytes,
                },
            },
        )?;
    }
    Ok(state)
}

/// libssl.so.3 files on the host: the system ones and those mapped by any process
/// (through `/proc/<pid>/root`, so containers' copies are found too).
pub fn discover_libssl() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = SYSTEM_LIBSSL
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
                continue;
            };
            for line in maps.lines() {
                if let Some(path) = line.split_whitespace().nth(5) {
                    if path.ends_with("/libssl.so.3") {
                        found.push(PathBuf::from(format!("/proc/{pid}/root{path}")));
                    }
                }
            }
        }
    }
    found
}

/// Marks an attach error that is a missing capability rather than a missing symbol.
const UPROBE_REFUSED: &str = "refused: ";

/// The degraded reason of one uprobe program from its attach errors: a missing
/// capability once, else the symbols that could not be attached.
fn uprobe_errors(errors: &[&String]) -> String {
    let mut refused: Vec<&str> = errors
        .iter()
        .filter_map(|e| e.strip_prefix(UPROBE_REFUSED))
        .collect();
    refused.dedup();
    let others: Vec<&str> = errors
        .iter()
        .filter(|e| !e.starts_with(UPROBE_REFUSED))
        .map(|e| e.as_str())
        .collect();
    let mut parts = Vec::new();
    if !refused.is_empty() {
        parts.push(format!("not attached: {}", refused.join("; ")));
    }
    if !others.is_empty() {
        parts.push(format!("some symbols not attached: {}", others.join("; ")));
    }
    parts.join("; ")
}

/// Attaches the uprobes to libraries not attached before. Returns (program, error) for
/// symbols that could not be attached.
pub fn refresh(ebpf: &mut Ebpf, state: &mut TlsAttachments) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if !state.uprobes_loaded {
        return errors;
    }
    for libssl in discover_libssl() {
        let Ok(meta) = std::fs::metadata(&libssl) else {
            continue;
        };
        if !state.seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let libcrypto = libssl.with_file_name("libcrypto.so.3");
        for (program, lib, symbols) in uprobe_plan(state.io) {
            let target = if lib == Lib::Ssl { &libssl } else { &libcrypto };
            let Some(prog) = ebpf.program_mut(program) else {
                continue;
            };
            let Ok(prog) = <&mut UProbe>::try_from(prog) else {
                continue;
            };
            for symbol in symbols {
                match prog.attach(
                    symbol,
                    target,
                    aya::programs::uprobe::UProbeScope::AllProcesses,
                ) {
                    Ok(id) => {
                        // A link that cannot be taken stays with the program, which
                        // detaches it when unloaded.
                        if let Ok(link) = prog.take_link(id) {
                            state.links.push(link);
                        }
                    }
                    Err(e) => {
                        // A refusal is the same for every symbol: said once, capability first.
                        let why = match privilege::reason(
                            &e,
                            &[privilege::CAP_SYS_ADMIN],
                            &privilege::uprobe_what(),
                        ) {
                            Some(why) => format!("{UPROBE_REFUSED}{why}"),
                            None => format!(
                                "{symbol} in {}: {}",
                                target.display(),
                                super::tcp::describe_error(&e)
                            ),
                        };
                        errors.push((program, why));
                    }
                }
            }
        }
        state.libraries.push(libssl);
    }
    errors
}
