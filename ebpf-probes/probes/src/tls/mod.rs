//! TLS handshakes, from two sources joined by the agent:
//! - `wire`: cgroup_skb on the cgroup v2 root copies the handshake, alert and
//!   change-cipher-spec records of every TCP connection (any TLS library);
//! - `openssl`: uprobes on libssl/libcrypto report the outcome of OpenSSL handshakes and
//!   the X.509 verification error, which TLS 1.3 encrypts on the wire.
pub mod openssl;
pub mod wire;

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use hostscope_common::{stats::STAT_COUNT, tls::TlsConfig};

#[map(name = "TLS_STATS")]
pub static TLS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map(name = "TLS_CONFIG")]
pub static TLS_CONFIG: Array<TlsConfig> = Array::with_max_entries(1, 0);

/// Written by the agent, never by a probe: recent handshake failures, pinned for `dump`.
#[map(name = "TLS_FAILURES")]
pub static TLS_FAILURES: Array<hostscope_common::tls::TlsFailureSlot> =
    Array::with_max_entries(hostscope_common::tls::TLS_FAILURES_SLOTS, 0);
