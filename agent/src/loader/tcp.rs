//! TCP family: resolves the kernel offsets the probes need, attaches the tracepoints of
//! `probes/src/tcp.rs`, and sets its runtime configuration.

use aya::{
    programs::{ProgramError, TracePoint},
    Ebpf,
};
use hostscope_common::{tcp::*, RingConfig};

use super::{AttachState, LoadError, LoaderConfig, ProbeStatus};
use crate::kernel::{
    btf::{BtfError, KernelBtf},
    tracefs::{Format, Tracefs},
};

/// `tcp:` in the configuration. Both sizes are fixed when the probes load.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpSection {
    pub ring_bytes: u32,
    pub max_connections: u32,
}

impl Default for TcpSection {
    fn default() -> Self {
        TcpSection {
            ring_bytes: TCP_EVENTS_RING_BYTES,
            max_connections: TCP_CONNS_MAX,
        }
    }
}

impl TcpSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "TCP connections: latency, failures, retransmits, resets, close summaries.",
        ),
        (
            "ring_bytes",
            "Size of the TCP event ring in bytes (a power of two, at least 4096).",
        ),
        (
            "max_connections",
            "Connections tracked at once; beyond it new ones are counted, not tracked.",
        ),
    ];

    pub fn validate(&self, at: &str, p: &mut crate::config::Problems) {
        if let Err(e) = check_ring_bytes(self.ring_bytes) {
            p.push(format!("{at}.ring_bytes"), e);
        }
        if self.max_connections == 0 {
            p.push(format!("{at}.max_connections"), "must be at least 1");
        }
    }
}

/// A ring's size: the kernel wants a power-of-two number of pages.
pub fn check_ring_bytes(v: u32) -> Result<(), String> {
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two of at least 4096"));
    }
    Ok(())
}

/// What the running kernel offers the TCP family, found before loading.
#[derive(Clone, Debug)]
pub struct TcpPlan {
    pub offsets: TcpOffsets,
    /// Programs that cannot attach, with the reason.
    pub unavailable: Vec<(&'static str, String)>,
    /// Record fields that will be missing (kernel lacks the struct member).
    pub missing_fields: Vec<String>,
}

impl TcpPlan {
    fn unavailable(&self, program: &str) -> Option<&str> {
        self.unavailable
            .iter()
            .find(|(p, _)| *p == program)
            .map(|(_, why)| why.as_str())
    }
}

/// `struct sock` / `struct tcp_sock` members read by the probes: (struct, member, size).
const BTF_FIELDS: [(&str, &str, usize); 6] = [
    ("sock", "sk_err", 4),
    ("sock_common", "skc_state", 1),
    ("tcp_sock", "srtt_us", 4),
    ("tcp_sock", "total_retrans", 4),
    ("tcp_sock", "bytes_acked", 8),
    ("tcp_sock", "bytes_received", 8),
];

pub fn plan(btf: Option<&KernelBtf>, btf_err: Option<&BtfError>, tracefs: &Tracefs) -> TcpPlan {
    let mut offsets = TcpOffsets::ABSENT;
    let mut missing_fields = Vec::new();
    let mut resolved = [OFFSET_ABSENT; BTF_FIELDS.len()];
    for (i, (structure, member, size)) in BTF_FIELDS.iter().enumerate() {
        match btf.map(|b| b.member(structure, member, *size)) {
            Some(Ok(m)) => resolved[i] = m.offset,
            Some(Err(e)) => missing_fields.push(e.to_string()),
            None => missing_fields.push(format!(
                "{structure}.{member}: {}",
                btf_err.map_or("no kernel BTF".to_string(), |e| e.to_string())
            )),
        }
    }
    [
        offsets.sk_err,
        offsets.skc_state,
        offsets.srtt_us,
        offsets.total_retrans,
        offsets.bytes_acked,
        offsets.bytes_received,
    ] = resolved;

    let mut unavailable = Vec::new();
    for hook in TCP_HOOKS {
        let format = match tracefs.format(hook.category, hook.tracepoint) {
            Ok(f) => f,
            Err(e) => {
                unavailable.push((hook.program, e.to_string()));
                continue;
            }
        };
        let field = |name: &str| format.field(name).map_or(OFFSET_ABSENT, |f| f.offset);
        let result = match hook.program {
            "tcp_state_change" => check_state_change_layout(&format),
            "tcp_retransmit" => {
                offsets.retransmit_skaddr = field("skaddr");
                offsets.retransmit_state = field("state");
                offsets.retransmit_err = field("err");
                require(offsets.retransmit_skaddr, "skaddr")
                    .and(require(offsets.retransmit_state, "state"))
            }
            "tcp_reset_sent" => {
                offsets.send_reset_skaddr = field("skaddr");
                require(offsets.send_reset_skaddr, "skaddr")
            }
            "tcp_reset_received" => {
                offsets.receive_reset_skaddr = field("skaddr");
                require(offsets.receive_reset_skaddr, "skaddr")
            }
            "tcp_destroy" => {
                offsets.destroy_skaddr = field("skaddr");
                require(offsets.destroy_skaddr, "skaddr")
            }
            _ => Ok(()),
        };
        if let Err(why) = result {
            unavailable.push((hook.program, why));
        }
    }
    TcpPlan {
        offsets,
        unavailable,
        missing_fields,
    }
}

fn require(offset: u32, name: &str) -> Result<(), String> {
    if offset == OFFSET_ABSENT {
        Err(format!("tracepoint has no `{name}` field on this kernel"))
    } else {
        Ok(())
    }
}

/// The probe reads `sock:inet_sock_set_state` through a fixed struct: refuse to attach
/// if this kernel's record differs from it.
pub fn check_state_change_layout(format: &Format) -> Result<(), String> {
    for (name, offset) in INET_SOCK_SET_STATE_FIELDS {
        match format.field(name) {
            Some(f) if f.offset as usize == offset => {}
            Some(f) => {
                return Err(format!(
                    "record layout differs: `{name}` at offset {} (expected {offset})",
                    f.offset
                ))
            }
            None => return Err(format!("record has no `{name}` field")),
        }
    }
    Ok(())
}

/// Attaches every TCP program; returns whether the family is usable.
pub fn attach(
    ebpf: &mut Ebpf,
    plan: &TcpPlan,
    config: &LoaderConfig,
    report: &mut Vec<ProbeStatus>,
) -> Result<bool, LoadError> {
    let mut family_up = false;
    let mut destroy_attached = false;
    for hook in TCP_HOOKS {
        let state = if !hook.required && !family_up {
            AttachState::NotAttached("tcp_state_change is not attached".to_string())
        } else if let Some(why) = plan.unavailable(hook.program) {
            AttachState::NotAttached(why.to_string())
        } else {
            match attach_tracepoint(ebpf, hook) {
                Ok(()) if hook.required && !plan.missing_fields.is_empty() => {
                    AttachState::Degraded(format!(
                        "records lack some fields: {}",
                        plan.missing_fields.join("; ")
                    ))
                }
                Ok(()) => AttachState::Attached,
                Err(e) => AttachState::NotAttached(super::privilege::describe(
                    &e,
                    &[super::privilege::CAP_BPF, super::privilege::CAP_PERFMON],
                    "tracing programs",
                )),
            }
        };
        let up = state.is_up();
        if hook.required {
            family_up = up;
        }
        if hook.program == "tcp_destroy" {
            destroy_attached = up;
        }
        report.push(ProbeStatus {
            family: "tcp",
            program: hook.program,
            hook: format!("tracepoint/{}/{}", hook.category, hook.tracepoint),
            state,
        });
    }
    if family_up {
        super::set_config(
            ebpf,
            TCP_CONFIG_MAP,
            TcpConfig {
                ring: RingConfig {
                    wakeup_bytes: config.wakeup_bytes,
                },
                keep_until_destroy: destroy_attached as u32,
                _pad: 0,
            },
        )?;
    }
    Ok(family_up)
}

fn attach_tracepoint(ebpf: &mut Ebpf, hook: TcpHook) -> Result<(), ProgramError> {
    let program: &mut TracePoint = ebpf
        .program_mut(hook.program)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    program.load()?;
    program.attach(hook.category, hook.tracepoint)?;
    Ok(())
}

/// One line for the report; the verifier log, when there is one, is cut to its end.
pub(crate) fn describe_error(e: &ProgramError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if std::env::var_os("HOSTSCOPE_VERIFIER_LOG").is_some() {
        return text;
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > 8 {
        format!("{} … {}", lines[0], lines[lines.len() - 7..].join(" | "))
    } else {
        lines.join(" | ")
    }
}
