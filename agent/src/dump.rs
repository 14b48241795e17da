//! `hostscope dump <map>`: the probes' pinned maps decoded with the shared types, while
//! the agent runs or after it exited. Each family lists its maps and their decoders in
//! its own module here ([`PinnedMap`]); the loader pins the same list.

pub mod dns;
pub mod syscalls;
pub mod tcp;
pub mod tls;

use std::{collections::BTreeMap, io::Write, path::Path};

use aya::maps::{Map, MapData, PerCpuArray};

use crate::output::write_json;

/// A map a family pins, and how `dump` shows it.
pub struct PinnedMap {
    pub name: &'static str,
    /// What it holds, for `hostscope dump --list`.
    pub about: &'static str,
    /// Given the pin directory too, for a decoder that reads a companion map.
    pub decode: fn(&Path, Map, DumpFormat, &mut dyn Write) -> Result<(), DumpError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    Table,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("unknown map {name:?}; known maps: {known}")]
    Unknown { name: String, known: String },
    #[error("no pinned map at {path}: start `hostscope run` (pinning is on by default) first")]
    NotPinned { path: String },
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading {name}: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// The table of one family's recent failures, one row per slot.
pub type FailureTable<R> = fn(&mut dyn Write, &[R]) -> std::io::Result<()>;

/// Writes the written slots of an agent-written array of recent failures
/// (`TLS_FAILURES`, `DNS_FAILURES`; a slot with time 0 was never written), oldest first,
/// as JSON lines of `row` or as the family's `table`.
pub fn write_recent_failures<T: aya::Pod, R: serde::Serialize>(
    map: Map,
    name: &'static str,
    unix_ns: fn(&T) -> u64,
    row: fn(&T) -> R,
    table: FailureTable<R>,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(name);
    let slots: aya::maps::Array<_, T> = aya::maps::Array::try_from(map).map_err(read)?;
    let mut written = Vec::new();
    for slot in slots.iter() {
        let slot = slot.map_err(read)?;
        if unix_ns(&slot) != 0 {
            written.push(slot);
        }
    }
    written.sort_by_key(unix_ns);
    let rows: Vec<R> = written.iter().map(row).collect();
    match format {
        DumpFormat::Json => rows.iter().try_for_each(|r| write_json(&mut out, r))?,
        DumpFormat::Table => table(out, &rows)?,
    }
    Ok(())
}

/// The error of reading map `name`.
pub fn read_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DumpError + Copy {
    move |source| DumpError::Read { name, source }
}

/// Every map `dump` knows how to decode: (name, what it holds).
pub fn dumpable() -> impl Iterator<Item = (&'static str, &'static str)> {
    crate::family::pinned_maps().map(|m| (m.name, m.about))
}

pub fn dump(
    pin_dir: &Path,
    name: &str,
    format: DumpFormat,
    out: &mut impl Write,
) -> Result<(), DumpError> {
    let Some(pinned) = crate::family::pinned_maps().find(|m| m.name.eq_ignore_ascii_case(name))
    else {
        return Err(unknown(name));
    };
    let map = open_pinned(pin_dir, pinned.name)?;
    (pinned.decode)(pin_dir, map, format, out)
}

/// The map pinned as `name` in `pin_dir`.
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map, DumpError> {
    let path = pin_dir.join(name);
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(DumpError::NotPinned { path: shown });
    }
    let data = MapData::from_pin(&path).map_err(|source| DumpError::Open {
        path: shown.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| DumpError::Open {
        path: shown,
        source,
    })
}

/// A family's per-CPU counters array, summed over CPUs: `stats` are (index, name).
pub fn write_counters(
    map: Map,
    name: &'static str,
    stats: impl IntoIterator<Item = (u32, &'static str)>,
    format: DumpFormat,
    mut out: &mut dyn Write,
) -> Result<(), DumpError> {
    let read = read_error(name);
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(read)?;
    let mut values = BTreeMap::new();
    for (index, stat) in stats {
        let v = array.get(&index, 0).map_err(read)?;
        values.insert(stat, v.iter().sum::<u64>());
    }
    match format {
        DumpFormat::Json => write_json(&mut out, &values)?,
        DumpFormat::Table => {
            for (k, v) in values {
                writeln!(out, "{k:<24} {v}")?;
            }
        }
    }
    Ok(())
}

fn unknown(name: &str) -> DumpError {
    DumpError::Unknown {
        name: name.to_string(),
        known: dumpable().map(|(n, _)| n).collect::<Vec<_>>().join(", "),
    }
}
