//! Decoding of ring-buffer records into the agent's records, one module per family.
pub mod dns;
pub mod syscalls;
pub mod tcp;
pub mod tls;
pub mod view;

pub use view::RecordView;

use serde::Serialize;

/// Everything the agent emits, tagged by family in JSON (`{"type":"tcp",…}`).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Tcp(tcp::TcpRecord),
    Tls(tls::TlsRecord),
    TlsCertificate(tls::TlsCertificateRecord),
    /// One lookup: question, answer or timeout (`"type":"dns"`).
    Dns(dns::DnsRecord),
    // -- syscalls family
    /// Per-interval syscall aggregation (`"type":"syscalls"`).
    Syscalls(syscalls::SyscallsRecord),
    /// Error burst or slow calls detected over an interval.
    SyscallAlert(syscalls::SyscallAlert),
    /// One call over the slow threshold (detailed event from the kernel).
    SyscallSlow(syscalls::SlowSyscallRecord),
    /// Access to a watched path (`"type":"security"`).
    Security(syscalls::SecurityRecord),
    /// An incident: failures of one cause folded by the RCA sink (`"type":"rca"`).
    Rca(crate::rca::RcaRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{family} record of {len} bytes, expected {expected}")]
    Size {
        family: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{family} record with unknown kind {kind}")]
    Kind { family: &'static str, kind: u32 },
}

/// One plain-old-data record of `family` read from ring bytes, checked for size.
pub fn read_record<T: aya::Pod>(bytes: &[u8], family: &'static str) -> Result<T, DecodeError> {
    let expected = std::mem::size_of::<T>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            family,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked and T is plain old data (aya::Pod); read unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Converts the probes' CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let read = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid pointer; these clocks always exist on Linux.
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let mono = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        Clock {
            realtime_minus_monotonic_ns: real - mono,
        }
    }

    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.realtime_minus_monotonic_ns).max(0) as u64
    }
}

/// CLOCK_MONOTONIC now, in the probes' time base (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer, CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `HH:MM:SS.uuuuuu` (UTC) for text output.
pub fn format_time_of_day(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        day / 3600,
        (day / 60) % 60,
        day % 60,
        micros
    )
}

/// An address of the probes' 16-byte form (IPv4 in the first 4 bytes).
pub fn ip_of(family: u16, raw: &[u8; 16]) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if family == hostscope_common::tcp::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// `comm` bytes up to the first NUL.
pub fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
