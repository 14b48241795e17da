//! What every consumer of the record stream asks of a record, as one interface.
//!
//! Each record type implements [`RecordView`] and the sinks' traits next to its family's
//! own code (`tcp::sinks`, `tls::sinks`, `dns::sinks`, `syscalls::sinks`, `rca::record`);
//! the printer, the OTLP encoders, the RCA engine and the API filter only call them.
//! A new record type is registered once, in [`Record::view`].

use std::net::SocketAddr;

use super::Record;
use crate::metadata::Subject;

/// The facts every record has.
#[derive(Clone, Copy, Debug, Default)]
pub struct About {
    /// Its `type` tag in JSON (serde's snake_case of its [`Record`] variant).
    pub kind: &'static str,
    /// When it happened (its own timestamp field), in Unix ns.
    pub time_unix_ns: u64,
    /// The process and cgroup it was observed in, as far as it tells (nothing for an
    /// aggregate of many processes: see [`RecordView::row_subjects`]).
    pub subject: Subject,
}

/// A record as the sinks see it: its own facts, and what each sink makes of it.
pub trait RecordView:
    std::fmt::Display
    + Send
    + Sync
    + crate::export::metrics::Measure
    + crate::export::logs::Logged
    + crate::export::spans::Traced
    + crate::rca::classify::Classify
    + crate::api::filter::Filtered
{
    /// What it is, when it happened and where.
    fn about(&self) -> About;

    /// Bytes it holds on the heap (strings, lists), approximately: what a buffer of
    /// records counts against a memory bound without rendering them.
    fn heap_bytes(&self) -> usize;

    /// The remote end of the connection it is about.
    fn peer(&self) -> Option<SocketAddr> {
        None
    }

    /// The subjects of its rows, for a record that aggregates many processes (each row
    /// gets its own identity, in `process_identities`).
    fn row_subjects(&self) -> Vec<Subject> {
        Vec::new()
    }

    /// The name the remote end was looked up as (`remote_name`), when the DNS family
    /// saw the lookup.
    fn remote_name(&self) -> Option<&str> {
        None
    }
}

impl Record {
    /// The record behind the interface the sinks use: the one place a record type is
    /// registered.
    pub fn view(&self) -> &dyn RecordView {
        match self {
            Record::Tcp(r) => r,
            Record::Tls(r) => r,
            Record::TlsCertificate(r) => r,
            Record::Dns(r) => r,
            Record::Syscalls(r) => r,
            Record::SyscallAlert(r) => r,
            Record::SyscallSlow(r) => r,
            Record::Security(r) => r,
            Record::Rca(r) => r,
        }
    }

    pub fn subject(&self) -> Subject {
        self.view().about().subject
    }

    pub fn kind(&self) -> &'static str {
        self.view().about().kind
    }

    pub fn time_unix_ns(&self) -> Option<u64> {
        Some(self.view().about().time_unix_ns)
    }

    pub fn heap_bytes(&self) -> usize {
        self.view().heap_bytes()
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.view().peer()
    }
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}

/// Heap bytes of an optional string.
pub fn opt_bytes(v: &Option<String>) -> usize {
    v.as_ref().map_or(0, String::capacity)
}

/// Heap bytes of a list: its elements and what each holds.
pub fn list_bytes<T>(v: &[T], each: impl Fn(&T) -> usize) -> usize {
    v.iter().map(|x| std::mem::size_of::<T>() + each(x)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kind` is the serde tag: a family that renamed one without the other would send
    /// filters and JSON different names.
    #[test]
    fn kind_is_the_json_type_tag() {
        let records = [
            Record::Dns(crate::events::dns::sample(Some(3), "x.example.")),
            Record::Dns(crate::events::dns::sample(None, "x.example.")),
        ];
        for r in records {
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["type"], r.kind());
        }
    }
}
