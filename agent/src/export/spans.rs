//! Records -> OTLP spans: one span per TLS handshake (error status and reason when it
//! failed) and one per failed TCP connect. Records carry no trace context, so each span
//! is the root of its own trace; the process/pod identity goes on the resource. Each
//! record type says what its span is ([`Traced`], next to its family's code).

use opentelemetry_proto::tonic::trace::v1::Span;

use crate::events::Record;

/// How a record type is exported as a span, if it is.
pub trait Traced {
    fn span(&self) -> Option<Span> {
        None
    }
}

pub fn span(record: &Record) -> Option<Span> {
    record.view().span()
}

/// A random trace id and span id for a span that starts its own trace.
pub fn ids() -> (Vec<u8>, Vec<u8>) {
    let trace: [u8; 16] = rand::random();
    let mut span: [u8; 8] = rand::random();
    // An all-zero id is invalid in OTLP.
    span[0] |= 1;
    (trace.to_vec(), span.to_vec())
}

/// When a span that ended at `end_ns` after `duration_us` began.
pub fn start_of(end_ns: u64, duration_us: Option<f64>) -> u64 {
    let d = duration_us.unwrap_or(0.0).max(0.0) * 1_000.0;
    end_ns.saturating_sub(d as u64)
}
