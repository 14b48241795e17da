//! Records -> OTLP log records: security events (watched-path access), RCA incidents
//! (`hostscope.rca.incident`), slow syscalls and, with `export.failure_logs`, one log record
//! per failure (refused / timed-out / unreachable connects, failed TLS handshakes, failed
//! or unanswered DNS lookups, syscall error bursts), with a severity and structured
//! attributes. Each record type says what its log is ([`Logged`], next to its family's
//! code). Only metadata is exported: never TLS application data nor file contents (the
//! probes capture neither).

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue},
    logs::v1::{LogRecord, SeverityNumber},
};

use super::resource::str_value;
use crate::events::Record;

/// One record's log, before the exporter stamps it.
pub struct LogEntry {
    pub time_unix_ns: u64,
    pub severity: SeverityNumber,
    /// `event_name`: `hostscope.<family>.<what>`.
    pub event: &'static str,
    pub body: String,
    pub attributes: Vec<KeyValue>,
}

/// How a record type is exported as a log record, if it is.
pub trait Logged {
    fn log_entry(&self) -> Option<LogEntry> {
        None
    }

    /// Its log is one of the failures that RCA incidents summarise: made and exported
    /// one by one only with `export.failure_logs`.
    fn failure_log(&self) -> bool {
        false
    }
}

pub fn log(record: &Record, observed_ns: u64, failure_logs: bool) -> Option<LogRecord> {
    let view = record.view();
    if !failure_logs && view.failure_log() {
        return None;
    }
    let e = view.log_entry()?;
    Some(LogRecord {
        time_unix_nano: e.time_unix_ns,
        observed_time_unix_nano: observed_ns,
        severity_number: e.severity as i32,
        severity_text: match e.severity {
            SeverityNumber::Warn => "WARN",
            _ => "INFO",
        }
        .into(),
        event_name: e.event.into(),
        body: Some(AnyValue {
            value: Some(str_value(e.body)),
        }),
        attributes: e.attributes,
        ..Default::default()
    })
}
