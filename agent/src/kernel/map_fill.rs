//! How full the agent's hash maps are (`hostscope status`): a map at its bound loses
//! updates (counted by the probes as `map_full`), so fill is the early warning.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{MapInfo, MapType},
    Ebpf,
};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapFill {
    pub name: String,
    pub map_type: &'static str,
    pub entries: u32,
    pub max_entries: u32,
}

impl MapFill {
    pub fn percent(&self) -> f64 {
        100.0 * self.entries as f64 / self.max_entries.max(1) as f64
    }
}

/// Every hash-like map the loaded programs use, with its entry count. Maps whose count
/// means nothing (arrays are always full, rings are measured by their loss counters) are
/// left out. A map that cannot be read is left out too: status is best effort.
pub fn read(ebpf: &Ebpf) -> Vec<MapFill> {
    let ids: BTreeSet<u32> = ebpf
        .programs()
        .filter_map(|(_, p)| p.info().ok()?.map_ids().ok().flatten())
        .flatten()
        .collect();
    let mut out: Vec<MapFill> = ids
        .into_iter()
        .filter_map(|id| {
            let info = MapInfo::from_id(id).ok()?;
            let map_type = match info.map_type().ok()? {
                MapType::Hash => "hash",
                MapType::LruHash => "lru_hash",
                MapType::PerCpuHash => "percpu_hash",
                MapType::LruPerCpuHash => "lru_percpu_hash",
                MapType::LpmTrie => "lpm_trie",
                _ => return None,
            };
            let fd = info.fd().ok()?;
            Some(MapFill {
                name: info.name_as_str().unwrap_or("?").to_string(),
                map_type,
                entries: count_keys(fd.as_fd().as_raw_fd(), info.key_size(), info.max_entries()),
                max_entries: info.max_entries(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Walks the keys with BPF_MAP_GET_NEXT_KEY (one syscall per entry, at most `max` of
/// them). Entries added or removed during the walk make the count approximate, which a
/// fill gauge tolerates.
fn count_keys(fd: i32, key_size: u32, max: u32) -> u32 {
    #[repr(C)]
    struct NextKeyAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut count = 0;
    let mut first = true;
    while count < max {
        let attr = NextKeyAttr {
            map_fd: fd as u32,
            _pad: 0,
            // A null key asks for the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: attr points at buffers of the map's key size that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if r != 0 {
            break;
        }
        std::mem::swap(&mut key, &mut next);
        first = false;
        count += 1;
    }
    count
}
