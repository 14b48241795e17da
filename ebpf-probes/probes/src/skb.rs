//! Packet reads shared by the cgroup_skb families (TLS wire, DNS).

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_load_bytes, programs::SkBuffContext};

/// `N` bytes at `offset`, or None past the end. A constant length keeps the verifier
/// content (aya's `load_bytes` may compute a length of zero).
#[inline(always)]
pub fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const __sk_buff as *const _,
            offset,
            buf.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    (rc == 0).then_some(buf)
}
