//! OpenSSL handshakes through uprobes on libssl.so.3 / libcrypto.so.3.
//!
//! Why these hooks: the wire shows a TLS 1.3 failure only as an encrypted alert; the
//! precise cause (expired certificate, unknown CA…) is known to the library. libssl
//! stores the chain verification result from libcrypto's `X509_STORE_CTX_get_error`,
//! whose return we read; the handshake outcome is the return of whichever entry point
//! ran it (`SSL_do_handshake`, `SSL_connect`, `SSL_accept`, or, when those are probed,
//! the implicit handshake in `SSL_read`/`SSL_write`/`_ex`), and `SSL_free` closes a
//! handshake that never ended. A verification error is also reported on its own, so
//! that it reaches the agent whichever entry point ran the handshake.
//! Once an `SSL*` has reported its handshake, its later calls cost one map lookup.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use hostscope_common::{stats::Stat, tls::*};

use super::{TLS_CONFIG, TLS_STATS};
use crate::ring::{bump, submit};

#[map(name = "TLS_SSL")]
static TLS_SSL: LruHashMap<u64, TlsSslState> = LruHashMap::with_max_entries(TLS_SSL_MAX, 0);

/// The `SSL*` each thread is inside a libssl call for (key: thread id).
#[map(name = "TLS_CALLS")]
static TLS_CALLS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(TLS_SSL_MAX, 0);

#[map(name = "TLS_LIB_EVENTS")]
static TLS_LIB_EVENTS: RingBuf = RingBuf::with_byte_size(TLS_LIB_RING_BYTES, 0);

#[uprobe]
pub fn tls_ssl_call(ctx: ProbeContext) -> u32 {
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    match TLS_SSL.get_ptr(ssl) {
        Some(state) if unsafe { (*state).done } != 0 => return 0,
        Some(_) => {}
        None => {
            let state = TlsSslState {
                start_ns: unsafe { bpf_ktime_get_ns() },
                verify_error: 0,
                done: 0,
            };
            if TLS_SSL.insert(ssl, state, 0).is_err() {
                bump(&TLS_STATS, Stat::ConnMapFull);
                return 0;
            }
        }
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = TLS_CALLS.insert(tid, ssl, 0);
    0
}

#[uretprobe]
pub fn tls_ssl_call_return(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(&ssl) = (unsafe { TLS_CALLS.get(tid) }) else {
        return 0;
    };
    let _ = TLS_CALLS.remove(tid);
    let Some(state) = TLS_SSL.get_ptr_mut(ssl) else {
        return 0;
    };
    let state = unsafe { &mut *state };
    if state.done != 0 {
        return 0;
    }
    let ret: i64 = ctx.ret();
    let ret = ret as i32;
    if ret > 0 {
        state.done = 1;
        emit(LIB_HANDSHAKE_DONE, ssl, state, ret);
    } else if state.verify_error != 0 {
        state.done = 1;
        emit(LIB_HANDSHAKE_FAILED, ssl, state, ret);
    }
    // Otherwise a non-blocking call to retry, or a failure that SSL_free will report.
    0
}

#[uretprobe]
pub fn tls_verify_error_return(ctx: RetProbeContext) -> u32 {
    let err: i64 = ctx.ret();
    let err = err as i32;
    if err == 0 {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let mut ssl = 0;
    if let Some(&s) = unsafe { TLS_CALLS.get(tid) } {
        ssl = s;
        if let Some(state) = TLS_SSL.get_ptr_mut(s) {
            unsafe { (*state).verify_error = err as u32 };
        }
    }
    // Reported at once too: the handshake may run inside a call that is not probed.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = TlsSslState {
        start_ns: now,
        verify_error: err as u32,
        done: 0,
    };
    emit(LIB_VERIFY_ERROR, ssl, &state, 0);
    0
}

#[uprobe]
pub fn tls_ssl_free(ctx: ProbeContext) -> u32 {
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    if let Some(state) = TLS_SSL.get_ptr(ssl) {
        let state = unsafe { &*state };
        if state.done == 0 {
            emit(LIB_HANDSHAKE_ABANDONED, ssl, state, 0);
        }
        let _ = TLS_SSL.remove(ssl);
    }
    0
}

#[inline(always)]
fn emit(kind: u32, ssl: u64, state: &TlsSslState, ret: i32) {
    let Some(mut entry) = TLS_LIB_EVENTS.reserve::<TlsLibEvent>(0) else {
        bump(&TLS_STATS, Stat::RingFull);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(TlsLibEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        start_ns: state.start_ns,
        ssl,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        kind,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        verify_error: state.verify_error,
        ret,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    submit(
        &TLS_LIB_EVENTS,
        entry,
        TLS_CONFIG.get(0).map(|c| &c.ring),
        &TLS_STATS,
    );
}
