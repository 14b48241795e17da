//! Fuzzes the TLS wire parser (agent/src/tls/parser.rs, compiled here as is): record
//! reassembly from arbitrarily split, overlapping and gapped chunks, handshake message
//! reassembly, and every message parser. It must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/tls/parser.rs"]
#[allow(dead_code)]
mod parser;

fuzz_target!(|data: &[u8]| {
    // The first bytes steer how the rest is cut into captured chunks.
    let (plan, bytes) = data.split_at(data.len().min(8));
    let mut reader = parser::RecordReader::default();
    let mut handshake = parser::HandshakeReader::default();
    let mut records = Vec::new();
    let mut seq: u32 = u32::from_le_bytes([
        *plan.first().unwrap_or(&0),
        *plan.get(1).unwrap_or(&0),
        0xff,
        0xff,
    ]);
    let mut at = 0usize;
    let mut step = 0usize;
    while at < bytes.len() {
        let cut = 1 + (*plan.get(2 + step % 6).unwrap_or(&7) as usize % 97);
        let end = (at + cut).min(bytes.len());
        // Every third chunk is replayed from a little earlier (a retransmission).
        let (start, chunk_seq) = if step % 3 == 2 && at >= 3 {
            (at - 3, seq.wrapping_sub(3))
        } else {
            (at, seq)
        };
        let _ = reader.push(chunk_seq, &bytes[start..end], &mut records);
        seq = seq.wrapping_add((end - at) as u32);
        at = end;
        step += 1;
    }
    let mut messages = Vec::new();
    for r in &records {
        if r.content_type == parser::CONTENT_HANDSHAKE {
            handshake.push(&r.payload, &mut messages);
        }
        let _ = parser::parse_alert(&r.payload);
    }
    for m in &messages {
        let _ = parser::parse_client_hello(&m.body);
        let _ = parser::parse_server_hello(&m.body);
        let _ = parser::parse_certificate(&m.body);
    }
    let _ = parser::parse_client_hello(bytes);
    let _ = parser::parse_server_hello(bytes);
    let _ = parser::parse_certificate(bytes);
    let _ = parser::record_header(bytes);
});
