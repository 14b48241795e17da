//! Decoding of ring-buffer records into the agent's records, one module per family.
pub mod dns;
pub mod syscalls;
pub mod tcp;
pub mod tls;

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

impl Record {
    /// The process and cgroup the record was observed in, as far as it tells.
    pub fn subject(&self) -> crate::metadata::Subject {
        use crate::metadata::Subject;
        match self {
            Record::Tcp(r) => Subject {
                pid: r.pid,
                cgroup_id: r.cgroup_id,
            },
            Record::Tls(r) => Subject {
                pid: r.pid,
                cgroup_id: r.cgroup_id,
            },
            Record::Dns(r) => Subject {
                pid: r.pid,
                cgroup_id: r.cgroup_id,
            },
            Record::SyscallSlow(r) => Subject {
                pid: Some(r.pid),
                cgroup_id: Some(r.cgroup_id),
            },
            Record::Security(r) => Subject {
                pid: Some(r.pid),
                cgroup_id: Some(r.cgroup_id),
            },
            Record::SyscallAlert(r) => syscalls::row_subject(r.key_by, r.id),
            // The first failing process of the incident.
            Record::Rca(r) => Subject {
                pid: r.pid,
                cgroup_id: r.cgroup_id,
            },
            // Interval aggregates name many processes; each row is resolved on its own
            // (`syscalls::row_subject`).
            Record::TlsCertificate(_) | Record::Syscalls(_) => Subject::default(),
        }
    }

    /// The record's `type` tag in JSON (serde's snake_case of the variant).
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Tcp(_) => "tcp",
            Record::Tls(_) => "tls",
            Record::TlsCertificate(_) => "tls_certificate",
            Record::Dns(_) => "dns",
            Record::Syscalls(_) => "syscalls",
            Record::SyscallAlert(_) => "syscall_alert",
            Record::SyscallSlow(_) => "syscall_slow",
            Record::Security(_) => "security",
            Record::Rca(_) => "rca",
        }
    }

    /// When the record happened (its own timestamp field), in Unix ns.
    pub fn time_unix_ns(&self) -> Option<u64> {
        Some(match self {
            Record::Tcp(r) => r.timestamp_unix_ns,
            Record::Tls(r) => r.timestamp_unix_ns,
            Record::TlsCertificate(r) => r.timestamp_unix_ns,
            Record::Dns(r) => r.timestamp_unix_ns,
            Record::Syscalls(r) => r.ts_unix_ns,
            Record::SyscallAlert(r) => r.ts_unix_ns,
            Record::SyscallSlow(r) => r.ts_unix_ns,
            Record::Security(r) => r.ts_unix_ns,
            Record::Rca(r) => r.timestamp_unix_ns,
        })
    }

    /// Bytes the record holds on the heap (strings, lists), approximately: what a
    /// buffer of records counts against a memory bound without rendering them.
    pub fn heap_bytes(&self) -> usize {
        fn s(v: &Option<String>) -> usize {
            v.as_ref().map_or(0, String::capacity)
        }
        fn list<T>(v: &[T], each: impl Fn(&T) -> usize) -> usize {
            v.iter().map(|x| std::mem::size_of::<T>() + each(x)).sum()
        }
        match self {
            Record::Tcp(r) => s(&r.comm),
            Record::Tls(r) => {
                s(&r.comm)
                    + s(&r.server_name)
                    + s(&r.version)
                    + s(&r.cipher)
                    + s(&r.alpn)
                    + s(&r.cert_subject)
                    + list(&r.offered_versions, String::capacity)
                    + list(&r.alpn_offered, String::capacity)
                    + list(&r.sources, |_| 0)
                    + r.failure.as_ref().map_or(0, |f| f.detail.capacity())
            }
            Record::TlsCertificate(r) => {
                r.server_name.capacity() + r.subject.capacity() + r.issuer.capacity()
            }
            Record::Dns(r) => {
                s(&r.comm)
                    + r.query_name.capacity()
                    + r.query_type.capacity()
                    + s(&r.rcode)
                    + list(&r.addresses, |_| 0)
                    + r.search.as_ref().map_or(0, |x| x.base.capacity())
            }
            Record::Syscalls(r) => list(&r.processes, |p| {
                p.comm.capacity()
                    + list(&p.syscalls, |x| x.syscall.capacity())
                    + list(&p.errnos, |x| {
                        x.syscall.capacity() + x.errno_name.capacity()
                    })
            }),
            Record::SyscallAlert(r) => r.comm.capacity() + r.syscall.capacity() + s(&r.errno_name),
            Record::SyscallSlow(r) => r.comm.capacity() + r.syscall.capacity(),
            Record::Security(r) => {
                r.comm.capacity() + r.syscall.capacity() + r.path.capacity() + s(&r.errno_name)
            }
            Record::Rca(r) => {
                r.sentence.capacity()
                    + r.source.capacity()
                    + r.target.capacity()
                    + s(&r.summary)
                    + list(&r.affected, |a| s(&a.comm) + s(&a.workload))
                    + list(&r.sample_conn_ids, |_| 0)
            }
        }
    }

    /// The remote end of the connection the record is about.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        match self {
            Record::Tcp(r) => Some(r.remote),
            Record::Tls(r) => r.remote,
            Record::TlsCertificate(r) => Some(r.server),
            Record::Dns(r) => Some(r.server),
            Record::Rca(r) => r.target_address,
            _ => None,
        }
    }
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Record::Tcp(r) => r.fmt(f),
            Record::Tls(r) => r.fmt(f),
            Record::TlsCertificate(r) => r.fmt(f),
            Record::Dns(r) => r.fmt(f),
            Record::Syscalls(r) => r.fmt(f),
            Record::SyscallAlert(r) => r.fmt(f),
            Record::SyscallSlow(r) => r.fmt(f),
            Record::Security(r) => r.fmt(f),
            Record::Rca(r) => r.fmt(f),
        }
    }
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
