//! DNS over TCP: the probe copies each segment's payload (a bounded prefix) with its
//! sequence number; this table puts the segments of each (socket, direction) back in
//! stream order for `parser::TcpFraming`: retransmitted bytes are skipped, missing ones
//! are given to the framing as uncaptured. The table is bounded: a full table evicts
//! the stream idle longest, counted.

use std::collections::HashMap;

use super::parser::{Framed, TcpFraming};

/// Streams followed at once by default.
pub const MAX_STREAMS: usize = 1024;
/// A stream idle this long is forgotten (its connection is gone or done).
pub const IDLE_NS: u64 = 60_000_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Streams forgotten because the table was full.
    pub evicted: u64,
    /// Stream bytes never copied (lost segments) or skipped past.
    pub gaps: u64,
    /// Segments that repeated bytes already seen (retransmissions).
    pub retransmissions: u64,
}

struct Stream {
    framing: TcpFraming,
    /// Sequence number of the next byte expected.
    next_seq: u32,
    last_ns: u64,
}

pub struct Streams {
    max: usize,
    streams: HashMap<(u64, bool), Stream>,
    pub stats: StreamStats,
}

impl Streams {
    pub fn new(max: usize) -> Streams {
        Streams {
            max: max.max(1),
            streams: HashMap::new(),
            stats: StreamStats::default(),
        }
    }

    /// One segment of (cookie, egress): `captured` bytes from `seq`, followed by
    /// `uncaptured` bytes not copied. Returns the messages it completes.
    pub fn segment(
        &mut self,
        key: (u64, bool),
        seq: u32,
        captured: &[u8],
        uncaptured: usize,
        now_ns: u64,
    ) -> Vec<Framed> {
        if !self.streams.contains_key(&key) && self.streams.len() >= self.max {
            self.evict_oldest();
        }
        let stream = self.streams.entry(key).or_insert_with(|| Stream {
            framing: TcpFraming::default(),
            next_seq: seq,
            last_ns: now_ns,
        });
        stream.last_ns = now_ns;
        let total = captured.len() + uncaptured;
        let delta = seq.wrapping_sub(stream.next_seq) as i32;
        let mut out = Vec::new();
        let (mut captured, mut uncaptured) = (captured, uncaptured);
        if delta < 0 {
            // Starts before the next expected byte: skip what was seen already.
            let seen = delta.unsigned_abs() as usize;
            if seen >= total {
                self.stats.retransmissions += 1;
                return out;
            }
            let from_captured = seen.min(captured.len());
            captured = &captured[from_captured..];
            uncaptured -= seen - from_captured;
        } else if delta > 0 {
            // Bytes between never reached us: a hole in the stream.
            self.stats.gaps += delta as u64;
            out.extend(stream.framing.push(&[], delta as usize));
        }
        out.extend(stream.framing.push(captured, uncaptured));
        stream.next_seq = seq.wrapping_add(total as u32);
        out
    }

    /// Forgets streams idle since before `now_ns - IDLE_NS`.
    pub fn expire(&mut self, now_ns: u64) {
        self.streams
            .retain(|_, s| now_ns.saturating_sub(s.last_ns) < IDLE_NS);
    }

    /// Whether the stream lost its message boundaries (nothing more is framed).
    pub fn is_lost(&self, key: &(u64, bool)) -> bool {
        self.streams.get(key).is_some_and(|s| s.framing.is_lost())
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .streams
            .iter()
            .min_by_key(|(_, s)| s.last_ns)
            .map(|(k, _)| *k)
        {
            self.streams.remove(&key);
            self.stats.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `msg` with its 2-byte length prefix.
    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut out = (msg.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(msg);
        out
    }

    #[test]
    fn segments_are_reassembled_and_retransmissions_skipped() {
        let mut s = Streams::new(4);
        let stream = [framed(b"first message"), framed(b"second")].concat();
        let key = (7, false);
        // The first 5 bytes, then the same 5 again (a retransmission), then an
        // overlapping segment, then the rest.
        assert!(s.segment(key, 1000, &stream[..5], 0, 1).is_empty());
        assert!(s.segment(key, 1000, &stream[..5], 0, 2).is_empty());
        assert_eq!(s.stats.retransmissions, 1);
        let out = s.segment(key, 1003, &stream[3..17], 0, 3);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, b"first message");
        assert!(out[0].complete);
        let out = s.segment(key, 1017, &stream[17..], 0, 4);
        assert_eq!(out[0].bytes, b"second");
        assert_eq!(s.stats.gaps, 0);
    }

    #[test]
    fn a_segment_copied_in_part_and_a_lost_one_leave_holes_not_shifts() {
        let mut s = Streams::new(4);
        let msg = framed(&[0xab; 3000]);
        let key = (1, true);
        // 1024 bytes copied of a 1500-byte segment, then a segment lost, then the end.
        assert!(s.segment(key, 0, &msg[..1024], 476, 1).is_empty());
        let out = s.segment(key, 2500, &msg[2500..], 0, 2);
        assert_eq!(s.stats.gaps, 1000);
        assert_eq!(out.len(), 1);
        assert!(!out[0].complete);
        assert_eq!(out[0].bytes.len(), 1022);
        // The next message frames normally.
        let next = framed(b"ok");
        let out = s.segment(key, msg.len() as u32, &next, 0, 3);
        assert_eq!(out[0].bytes, b"ok");
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Streams::new(4);
        let msg = framed(b"wrapping");
        let start = u32::MAX - 3;
        assert!(s.segment((2, true), start, &msg[..4], 0, 1).is_empty());
        let out = s.segment((2, true), start.wrapping_add(4), &msg[4..], 0, 2);
        assert_eq!(out[0].bytes, b"wrapping");
    }

    #[test]
    fn a_full_table_evicts_the_stream_idle_longest_and_counts_it() {
        let mut s = Streams::new(2);
        s.segment((1, true), 0, &[0], 0, 10);
        s.segment((2, true), 0, &[0], 0, 20);
        s.segment((3, true), 0, &[0], 0, 30);
        assert_eq!(s.stats.evicted, 1);
        assert_eq!(s.len(), 2);
        // Stream 1 was evicted: its second byte starts a new stream (no message).
        assert!(s.segment((2, true), 1, &[1, b'x'], 0, 40).len() == 1);
        s.expire(30 + IDLE_NS);
        assert_eq!(s.len(), 1);
    }
}
