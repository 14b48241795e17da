//! TCP family: resolves the kernel offsets the probes need, attaches the tracepoints of
//! `probes/src/tcp.rs`, and sets its runtime configuration.

use aya::{
    maps::Array,
    programs::{ProgramError, TracePoint},
    Ebpf,
};
use hostscope_common::{tcp::*, RingConfig};

use super::{AttachState, LoadError, LoaderConfig, ProbeStatus};
use crate::kernel::{
    btf::{BtfError, KernelBtf},
    tracefs::{Format, Tracefs},
};

/// Maps `hostscope dump` can read after pinning.
pub const PINNED_MAPS: &[&str] = &[TCP_CONNS_MAP, TCP_STATS_MAP, TCP_CONFIG_MAP];

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
const BTF_FIELDS: [(&str, &str, usize); 5] = [
    ("sock", "sk_err", 4),
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
                Err(e) => AttachState::NotAttached(describe(&e)),
            }
        };
        let up = !matches!(state, AttachState::NotAttached(_));
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
        set_config(
            ebpf,
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
pub(crate) fn describe(e: &ProgramError) -> String {
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

/// Writes the family's runtime configuration (slot 0 of `TCP_CONFIG`).
pub fn set_config(ebpf: &mut Ebpf, config: TcpConfig) -> Result<(), LoadError> {
    let map = ebpf.map_mut(TCP_CONFIG_MAP).ok_or(LoadError::MissingMap {
        name: TCP_CONFIG_MAP,
    })?;
    let mut array: Array<_, TcpConfig> = Array::try_from(map).map_err(|source| LoadError::Map {
        name: TCP_CONFIG_MAP,
        source,
    })?;
    array.set(0, config, 0).map_err(|source| LoadError::Map {
        name: TCP_CONFIG_MAP,
        source,
    })
}
