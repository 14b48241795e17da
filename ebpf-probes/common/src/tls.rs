//! TLS handshakes: types shared by `probes/src/tls.rs` and the agent's `loader/tls.rs` /
//! `events/tls.rs`. Two sources: the wire (cgroup_skb, any TLS library) and OpenSSL
//! (uprobes, precise verification errors).

use crate::{RingConfig, TASK_COMM_LEN};

pub const TLS_WIRE_EVENTS_MAP: &str = "TLS_WIRE_EVENTS";
pub const TLS_LIB_EVENTS_MAP: &str = "TLS_LIB_EVENTS";
pub const TLS_FLOWS_MAP: &str = "TLS_FLOWS";
pub const TLS_STATS_MAP: &str = "TLS_STATS";
pub const TLS_CONFIG_MAP: &str = "TLS_CONFIG";
pub const TLS_SSL_MAP: &str = "TLS_SSL";
pub const TLS_CALLS_MAP: &str = "TLS_CALLS";
/// Written by the agent (not the probes): the most recent handshake failures, pinned so
/// that `hostscope dump` shows them during and after a run.
pub const TLS_FAILURES_MAP: &str = "TLS_FAILURES";

pub const TLS_WIRE_EGRESS_PROGRAM: &str = "tls_wire_egress";
pub const TLS_WIRE_INGRESS_PROGRAM: &str = "tls_wire_ingress";
pub const TLS_SSL_CALL_PROGRAM: &str = "tls_ssl_call";
pub const TLS_SSL_CALL_RETURN_PROGRAM: &str = "tls_ssl_call_return";
pub const TLS_VERIFY_ERROR_RETURN_PROGRAM: &str = "tls_verify_error_return";
pub const TLS_SSL_FREE_PROGRAM: &str = "tls_ssl_free";

/// libssl entry points that run a handshake explicitly (called once per connection).
pub const SSL_HANDSHAKE_SYMBOLS: [&str; 3] = ["SSL_do_handshake", "SSL_connect", "SSL_accept"];
/// Entry points that run the implicit handshake of the first read or write. Every read
/// and write traps into the kernel when probed (~8 µs per call measured here), so they
/// are probed only on request (`--tls-uprobe-io`).
pub const SSL_IO_SYMBOLS: [&str; 4] = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"];
/// libcrypto: the verification result libssl stores in `SSL.verify_result`.
pub const VERIFY_ERROR_SYMBOL: &str = "X509_STORE_CTX_get_error";
pub const SSL_FREE_SYMBOL: &str = "SSL_free";

pub const TLS_FLOWS_MAX: u32 = 16_384;
pub const TLS_SSL_MAX: u32 = 65_536;
pub const TLS_WIRE_RING_BYTES: u32 = 2 * 1024 * 1024;
pub const TLS_LIB_RING_BYTES: u32 = 256 * 1024;

/// Bytes of handshake/alert records copied per wire event; a longer flight takes several
/// events (up to `TLS_CAPTURE_CHUNKS`).
pub const TLS_CAPTURE_MAX: usize = 4096;
pub const TLS_CAPTURE_CHUNKS: u32 = 4;
/// Records walked per segment.
pub const TLS_MAX_RECORDS_PER_SEGMENT: u32 = 8;

/// TLS record content types (RFC 8446 §5.1).
pub const TLS_CHANGE_CIPHER_SPEC: u8 = 20;
pub const TLS_ALERT: u8 = 21;
pub const TLS_HANDSHAKE: u8 = 22;
pub const TLS_APPLICATION_DATA: u8 = 23;
/// Handshake message type of a ClientHello.
pub const TLS_CLIENT_HELLO: u8 = 1;

pub const DIR_EGRESS: u16 = 1;
pub const DIR_INGRESS: u16 = 2;

/// What a wire event carries.
/// Bytes of handshake / alert / change-cipher-spec records (`data[..len]`).
pub const WIRE_RECORDS: u32 = 1;
/// The 5-byte header of an application-data record (never its content).
pub const WIRE_APP_DATA_HEADER: u32 = 2;
/// The peer of a tracked flow sent bytes that are not a TLS record.
pub const WIRE_NOT_TLS: u32 = 3;

/// Per-socket tracking of a handshake in progress ([`TLS_FLOWS_MAP`], key: socket cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsFlow {
    /// Sequence number where the next record header is expected, per direction
    /// (index 0: egress, 1: ingress); valid when the matching bit of `synced` is set.
    pub next_record_seq: [u32; 2],
    /// End (sequence number) of the furthest data seen per direction, to tell a
    /// retransmission from new data.
    pub high_seq: [u32; 2],
    /// Bit `1 << dir_index` set while `next_record_seq[dir_index]` is known.
    pub synced: u32,
    /// Direction that sent the ClientHello.
    pub client_dir: u16,
    pub _pad: u16,
    /// Application-data records seen from the client.
    pub client_app_records: u32,
    pub _pad2: u32,
}

/// One wire event ([`TLS_WIRE_EVENTS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsWireEvent {
    pub ts_ns: u64,
    pub cookie: u64,
    pub kind: u32,
    /// TCP sequence number of `data[0]`.
    pub seq: u32,
    pub len: u32,
    pub direction: u16,
    pub family: u16,
    /// Packet source and destination (not local/remote: that depends on `direction`).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Set when the capture of this segment was cut at `TLS_CAPTURE_CHUNKS` events.
    pub truncated: u32,
    pub data: [u8; TLS_CAPTURE_MAX],
}

pub const TLS_WIRE_HEADER_BYTES: usize = 72;

/// OpenSSL-side state of one `SSL*` ([`TLS_SSL_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsSslState {
    pub start_ns: u64,
    /// X.509 verification error seen during the handshake (`X509_V_ERR_*`), 0 if none.
    pub verify_error: u32,
    /// 1 once the handshake outcome was reported.
    pub done: u32,
}

/// What a library event reports.
pub const LIB_HANDSHAKE_DONE: u32 = 1;
pub const LIB_HANDSHAKE_FAILED: u32 = 2;
/// `SSL_free` of a connection whose handshake never completed.
pub const LIB_HANDSHAKE_ABANDONED: u32 = 3;
/// Certificate verification failed on this thread (whatever the entry point); the
/// handshake may still go on (e.g. `curl -k`), so this only annotates.
pub const LIB_VERIFY_ERROR: u32 = 4;

/// One OpenSSL event ([`TLS_LIB_EVENTS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsLibEvent {
    pub ts_ns: u64,
    pub start_ns: u64,
    pub ssl: u64,
    pub cgroup_id: u64,
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub verify_error: u32,
    /// Return value of the libssl call that ended the handshake.
    pub ret: i32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Runtime configuration ([`TLS_CONFIG_MAP`], slot 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub ring: RingConfig,
}

/// One slot of [`TLS_FAILURES_MAP`] (an array used as a ring by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsFailureSlot {
    pub unix_ns: u64,
    pub cert_not_after_unix: i64,
    pub pid: u32,
    /// Raw alert description (or 256 + X509_V_ERR code; 0: none).
    pub raw_code: u32,
    pub remote: [u8; 16],
    pub remote_port: u16,
    pub family: u16,
    pub version: u16,
    pub _pad: u16,
    /// Normalised reason, NUL-padded ASCII.
    pub reason: [u8; 32],
    pub sni: [u8; 64],
    pub comm: [u8; TASK_COMM_LEN],
}

pub const TLS_FAILURES_SLOTS: u32 = 64;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::TlsFlow {}
    unsafe impl aya::Pod for super::TlsWireEvent {}
    unsafe impl aya::Pod for super::TlsSslState {}
    unsafe impl aya::Pod for super::TlsLibEvent {}
    unsafe impl aya::Pod for super::TlsConfig {}
    unsafe impl aya::Pod for super::TlsFailureSlot {}
}

const _: () = assert!(core::mem::size_of::<TlsFlow>() == 32);
const _: () =
    assert!(core::mem::size_of::<TlsWireEvent>() == TLS_WIRE_HEADER_BYTES + TLS_CAPTURE_MAX);
const _: () = assert!(core::mem::size_of::<TlsLibEvent>() == 72);
const _: () = assert!(core::mem::size_of::<TlsFailureSlot>() == 160);
