//! The watched-path LPM trie of the running agent (`WATCHED_PATHS`, filled at start by
//! `syscalls::attach`), changed live: the security tracepoints stay attached and read
//! the trie on every open/exec, so an update is seen by the next call.
//!
//! New prefixes go in before stale ones come out, so a path wanted both before and
//! after (or covered by an old and a new prefix, `/etc/shadow` → `/etc/`) is never
//! unwatched, not even for an instant.

use std::collections::BTreeSet;

use aya::{
    maps::{LpmTrie, MapData, MapError},
    Ebpf,
};
use hostscope_common::syscalls::{PATH_MAX_BYTES, WATCHED_PATHS_MAP, WATCHED_PATHS_MAX};

use super::syscalls::{check_watch_path, path_key, OptionError};

/// The cause is part of each message rather than a `source`, so chained printers
/// (`{:#}`) do not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum WatchPathError {
    #[error("{0}")]
    Option(OptionError),
    #[error("map {WATCHED_PATHS_MAP} missing from the eBPF object")]
    MissingMap,
    #[error("map {WATCHED_PATHS_MAP}: {what} {path:?}: {error}")]
    Update {
        what: &'static str,
        path: String,
        error: MapError,
    },
    #[error("map {WATCHED_PATHS_MAP}: {0}")]
    Map(MapError),
}

/// The trie and what it holds now.
pub struct WatchedPaths {
    trie: LpmTrie<MapData, [u8; PATH_MAX_BYTES], u32>,
    current: BTreeSet<String>,
}

impl WatchedPaths {
    /// Takes the trie out of the loaded object; `current` is what `attach` put in it.
    pub fn take(ebpf: &mut Ebpf, current: &[String]) -> Result<WatchedPaths, WatchPathError> {
        let map = ebpf
            .take_map(WATCHED_PATHS_MAP)
            .ok_or(WatchPathError::MissingMap)?;
        Ok(WatchedPaths {
            trie: LpmTrie::try_from(map).map_err(WatchPathError::Map)?,
            current: current.iter().cloned().collect(),
        })
    }

    /// The prefixes watched now, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.current.iter().cloned().collect()
    }

    /// Makes the trie hold exactly `paths` (duplicates ignored). Everything is checked
    /// before the trie is touched; if the kernel refuses an update midway, the trie
    /// holds the old set plus the new prefixes inserted so far (never less than the
    /// old set) and [`Self::paths`] says what it holds.
    pub fn set(&mut self, paths: &[String]) -> Result<(), WatchPathError> {
        for p in paths {
            check_watch_path(p).map_err(WatchPathError::Option)?;
        }
        let wanted: BTreeSet<String> = paths.iter().cloned().collect();
        if wanted.len() > WATCHED_PATHS_MAX as usize {
            return Err(WatchPathError::Option(OptionError::TooMany {
                n: wanted.len(),
                max: WATCHED_PATHS_MAX,
            }));
        }
        let stale: Vec<String> = self.current.difference(&wanted).cloned().collect();
        let fresh: Vec<String> = wanted.difference(&self.current).cloned().collect();
        // Both sets at once may not fit: make just enough room first, from prefixes
        // that are going anyway.
        let over = (self.current.len() + fresh.len()).saturating_sub(WATCHED_PATHS_MAX as usize);
        let (early, late) = stale.split_at(over.min(stale.len()));
        for p in early {
            self.remove(p)?;
        }
        for p in &fresh {
            // The value is unused by the probe (a hit is a hit): a running number.
            let n = self.current.len() as u32;
            self.trie
                .insert(&path_key(p), n, 0)
                .map_err(|error| WatchPathError::Update {
                    what: "inserting",
                    path: p.clone(),
                    error,
                })?;
            self.current.insert(p.clone());
        }
        for p in late {
            self.remove(p)?;
        }
        Ok(())
    }

    fn remove(&mut self, p: &str) -> Result<(), WatchPathError> {
        match self.trie.remove(&path_key(p)) {
            Ok(()) => {}
            // Absent already is the wanted state.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => {
                return Err(WatchPathError::Update {
                    what: "removing",
                    path: p.to_string(),
                    error,
                })
            }
        }
        self.current.remove(p);
        Ok(())
    }
}
