//! The latest records the agent decoded, for clients that ask what happened before they
//! connected (`--last N`). Bounded by a count and by the bytes the records take in memory
//! (`Entry::bytes`): the oldest go first.

use std::{collections::VecDeque, sync::Arc};

use super::{filter::Filter, hub::Entry};

pub struct History {
    /// Each entry with its size as counted at push, so eviction does not measure again.
    entries: VecDeque<(Arc<Entry>, usize)>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl History {
    pub fn new(max_records: usize, max_bytes: usize) -> History {
        History {
            entries: VecDeque::new(),
            bytes: 0,
            max_records,
            max_bytes,
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_records > 0 && self.max_bytes > 0
    }

    pub fn push(&mut self, entry: Arc<Entry>) {
        if !self.enabled() {
            return;
        }
        let size = entry.bytes();
        if size > self.max_bytes {
            // One record larger than the whole history: keeping it would evict everything.
            return;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > self.max_records || self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some((_, old)) => self.bytes -= old,
                None => break,
            }
        }
    }

    /// The latest `n` records that match, oldest first.
    pub fn last(&self, n: usize, filter: &Filter) -> VecDeque<Arc<Entry>> {
        let mut out = VecDeque::with_capacity(n.min(self.entries.len()));
        for (e, _) in self.entries.iter().rev() {
            if out.len() >= n {
                break;
            }
            if filter.matches(&**e) {
                out.push_front(e.clone());
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::EventsRequest;

    fn entry(json: &str) -> Arc<Entry> {
        Arc::new(Entry::from_json(json.to_string()))
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let all = Filter::parse(&EventsRequest::default()).unwrap();
        let mut h = History::new(3, 1 << 20);
        for i in 0..5 {
            h.push(entry(&format!(r#"{{"type":"tcp","pid":{i}}}"#)));
        }
        assert_eq!(h.len(), 3);
        let pids: Vec<String> = h
            .last(10, &all)
            .iter()
            .map(|e| e.json().to_string())
            .collect();
        assert_eq!(
            pids,
            [
                r#"{"type":"tcp","pid":2}"#,
                r#"{"type":"tcp","pid":3}"#,
                r#"{"type":"tcp","pid":4}"#
            ]
        );
        let one = entry(r#"{"type":"tcp","pid":0}"#).bytes();
        let mut small = History::new(100, one * 3 + one / 2);
        for i in 0..10 {
            small.push(entry(&format!(r#"{{"type":"tcp","pid":{i}}}"#)));
        }
        assert!(small.bytes() <= one * 3 + one / 2, "{}", small.bytes());
        assert_eq!(small.len(), 3);
        // Too large for the whole history: not kept, nothing evicted.
        small.push(entry(&"x".repeat(one * 4)));
        assert_eq!(small.len(), 3);
        assert!(History::new(0, 100).last(5, &all).is_empty());
    }

    #[test]
    fn last_filters_and_keeps_order() {
        let mut h = History::new(100, 1 << 20);
        for i in 0..10 {
            let t = if i % 2 == 0 { "tcp" } else { "security" };
            h.push(entry(&format!(r#"{{"type":"{t}","pid":{i}}}"#)));
        }
        let tcp = Filter::parse(&EventsRequest {
            types: vec!["tcp".into()],
            ..Default::default()
        })
        .unwrap();
        let got: Vec<String> = h
            .last(2, &tcp)
            .iter()
            .map(|e| e.json().to_string())
            .collect();
        assert_eq!(
            got,
            [r#"{"type":"tcp","pid":6}"#, r#"{"type":"tcp","pid":8}"#]
        );
    }
}
