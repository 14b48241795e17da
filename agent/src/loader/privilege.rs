//! Naming the capability a refused attach lacks. The kernel answers EPERM/EACCES without
//! saying why; this process's effective set (`CapEff` in /proc/self/status) tells which
//! of the capabilities an operation needs is absent, so the attach report can say
//! "needs CAP_SYS_ADMIN" instead of a bare syscall failure.

use aya::programs::ProgramError;

/// A Linux capability by its number (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u32, pub &'static str);

pub const CAP_DAC_READ_SEARCH: Cap = Cap(2, "CAP_DAC_READ_SEARCH");
pub const CAP_NET_ADMIN: Cap = Cap(12, "CAP_NET_ADMIN");
pub const CAP_SYS_PTRACE: Cap = Cap(19, "CAP_SYS_PTRACE");
pub const CAP_SYS_ADMIN: Cap = Cap(21, "CAP_SYS_ADMIN");
pub const CAP_PERFMON: Cap = Cap(38, "CAP_PERFMON");
pub const CAP_BPF: Cap = Cap(39, "CAP_BPF");

/// The effective capability mask of this process, or None when it cannot be read.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Those of `needed` missing from the effective set (none when it cannot be read).
pub fn missing(needed: &[Cap]) -> Vec<Cap> {
    let Some(mask) = effective() else {
        return Vec::new();
    };
    needed
        .iter()
        .copied()
        .filter(|c| mask & (1u64 << c.0) == 0)
        .collect()
}

/// True when the error, or one of its causes, is EPERM or EACCES.
pub fn is_permission_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// "needs CAP_X (what)" when `e` is a refusal and one of `needed` is absent; else None.
pub fn reason(e: &ProgramError, needed: &[Cap], what: &str) -> Option<String> {
    refusal(e, needed, what)
}

/// [`reason`] for any error (the object load's, a map's).
pub fn refusal(
    e: &(dyn std::error::Error + 'static),
    needed: &[Cap],
    what: &str,
) -> Option<String> {
    if !is_permission_error(e) {
        return None;
    }
    let absent = missing(needed);
    if absent.is_empty() {
        return None;
    }
    let names: Vec<&str> = absent.iter().map(|c| c.1).collect();
    Some(format!("needs {} ({what})", names.join(" and ")))
}

/// The error described for the attach report, led by the missing capability if any.
pub fn describe(e: &ProgramError, needed: &[Cap], what: &str) -> String {
    let text = super::tcp::describe_error(e);
    match reason(e, needed, what) {
        Some(why) => format!("{why}: {text}"),
        None => text,
    }
}

/// What a uprobe's perf_event_open needs here, with the sysctl that decides it.
pub fn uprobe_what() -> String {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("perf_event_open of a uprobe with kernel.perf_event_paranoid={paranoid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_mask() {
        let status = "Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t0000008000001000\n";
        let mask = parse_cap_eff(status).unwrap();
        assert_ne!(mask & (1 << CAP_BPF.0), 0);
        assert_ne!(mask & (1 << CAP_NET_ADMIN.0), 0);
        assert_eq!(mask & (1 << CAP_SYS_ADMIN.0), 0);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn finds_a_refusal_among_the_causes() {
        let refused = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "perf_event_open",
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(is_permission_error(&refused));
        let other = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "perf_event_open",
            io_error: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(!is_permission_error(&other));
        assert_eq!(reason(&other, &[CAP_SYS_ADMIN], "x"), None);
    }
}
