//! The built-in sink: records printed live, as readable lines or JSON lines.

use std::{
    io::Write,
    sync::{atomic::Ordering, Arc},
};

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::{events::Record, metadata::Resolver, sink::SinkContext};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Text,
    Json,
    /// Print nothing per record (benchmarks, or when only the stats matter): no printer
    /// runs at all.
    None,
}

/// The printer's line buffer keeps at most this much capacity between records.
const LINE_BUFFER_KEPT: usize = 64 * 1024;

/// The printer sink: records on stdout, on a dedicated thread, until the channel closes
/// or stdout goes away (e.g. `| head`). Missed records are counted, never silently
/// skipped. With `identities`, text lines start with `pod <ns>/<name> <container>` (or
/// `container <id>`) when known, and JSON records get an `"identity"` object (and a
/// `"peer_identity"` one when the remote end is a known pod or service).
pub fn spawn_printer(
    sink: SinkContext,
    format: OutputFormat,
    identities: bool,
) -> std::thread::JoinHandle<()> {
    let SinkContext {
        records: mut rx,
        counters,
        resolver,
        ..
    } = sink;
    let resolver = identities.then_some(resolver);
    std::thread::spawn(move || {
        // Not `stdout.lock()` for the thread's life: `run` prints its stats lines on
        // stdout too (JSON), and would block on the lock forever. Whole lines are
        // written at once so the two never interleave within a line.
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let mut line = Vec::with_capacity(512);
        loop {
            let record = match rx.blocking_recv() {
                Ok(r) => r,
                Err(RecvError::Lagged(n)) => {
                    counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            line.clear();
            let formatted = match format {
                OutputFormat::Text => writeln!(line, "{}", text_line(resolver.as_deref(), &record)),
                OutputFormat::Json => json_line(&mut line, resolver.as_deref(), &record)
                    .and_then(|()| line.write_all(b"\n")),
                OutputFormat::None => Ok(()),
            };
            let written = formatted.and_then(|_| out.write_all(&line));
            // One syscall interval record of a process storm is megabytes of JSON: not
            // kept for the agent's life once written.
            line.shrink_to(LINE_BUFFER_KEPT);
            let flushed = if rx.is_empty() { out.flush() } else { Ok(()) };
            if written.and(flushed).is_err() {
                break;
            }
        }
        let _ = out.flush();
    })
}

/// A record's text line (without newline): `[pod ns/name container] <record>` when it
/// belongs to a known container or pod, else the record alone. The local API sends the
/// same line (`hostscope events`).
pub fn text_line(resolver: Option<&Resolver>, record: &Record) -> String {
    match resolver.and_then(|r| text_label(r, record)) {
        Some(label) => format!("[{label}] {record}"),
        None => record.to_string(),
    }
}

/// A record's JSON line (without newline), with its identities when a resolver is given.
pub fn json_line(
    out: &mut impl Write,
    resolver: Option<&Resolver>,
    record: &Record,
) -> std::io::Result<()> {
    match resolver {
        Some(r) => serde_json::to_writer(out, &with_identity(r, record))?,
        None => serde_json::to_writer(out, record)?,
    }
    Ok(())
}

pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// A JSON line with a `type` tag for values that are not records (status, stats).
#[derive(Serialize)]
pub struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(flatten)]
    pub value: &'a T,
}

fn has_subject(record: &Record) -> bool {
    let s = record.subject();
    s.pid.is_some() || s.cgroup_id.is_some()
}

/// The identity label of a record for text output, when it belongs to a container or pod.
pub fn text_label(resolver: &Resolver, record: &Record) -> Option<String> {
    if !has_subject(record) {
        return None;
    }
    resolver.identify(record.subject()).label()
}

/// A record with its identity, serialized as the record's own fields plus `identity`
/// (and `peer_identity`) objects.
#[derive(Serialize)]
pub struct WithIdentity<'a> {
    #[serde(flatten)]
    pub record: &'a Record,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "shared")]
    pub identity: Option<Arc<crate::metadata::Identity>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "shared")]
    pub peer_identity: Option<Arc<crate::metadata::Identity>>,
    /// Syscall aggregates: the identity of each `processes[]` row, in the same order.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "shared_rows")]
    pub process_identities: Vec<Arc<crate::metadata::Identity>>,
}

fn shared_rows<S: serde::Serializer>(
    v: &[Arc<crate::metadata::Identity>],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|i| &**i))
}

fn shared<S: serde::Serializer>(
    v: &Option<Arc<crate::metadata::Identity>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    v.as_deref().serialize(s)
}

pub fn with_identity<'a>(resolver: &Resolver, record: &'a Record) -> WithIdentity<'a> {
    WithIdentity {
        record,
        identity: has_subject(record).then(|| resolver.identify(record.subject())),
        peer_identity: record.peer().and_then(|a| resolver.peer(a.ip())),
        process_identities: record
            .view()
            .row_subjects()
            .into_iter()
            .map(|s| resolver.identify(s))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::syscalls::{ProcessSyscalls, SyscallsRecord};

    fn row(id: u64) -> ProcessSyscalls {
        ProcessSyscalls {
            id,
            comm: "x".into(),
            calls: 1,
            errors: 0,
            syscalls: Vec::new(),
            errnos: Vec::new(),
        }
    }

    #[test]
    fn syscall_rows_carry_their_own_identity() {
        let me = std::process::id();
        let resolver = Resolver::node_local();
        let record = Record::Syscalls(SyscallsRecord {
            ts_unix_ns: 0,
            interval_s: 1.0,
            key_by: "pid",
            calls: 2,
            errors: 0,
            processes: vec![row(me as u64), row(1)],
        });
        let json = serde_json::to_value(with_identity(&resolver, &record)).unwrap();
        let rows = json["process_identities"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["process.pid"], me as i64);
        assert_eq!(rows[1]["process.pid"], 1);
        // The aggregate as a whole has no single subject.
        assert!(json.get("identity").is_none());
    }
}
