//! DNS messages as they cross the wire (RFC 1035; EDNS(0), RFC 6891), parsed from the
//! bounded copy the probe takes of a packet to or from a DNS port: the header, the
//! question, the answer and authority records, and the OPT record for the extended
//! rcode. Names with compression pointers are followed only backwards, so a loop cannot
//! exist; a pointer forward or outside the message, a reserved label type or a name
//! over 255 bytes rejects the message. A copy that ends early yields what it holds,
//! marked `incomplete`. DNS over TCP is framed by `TcpFraming`.
//!
//! Pure and std-only: the fuzz target (fuzz/fuzz_targets/dns_wire.rs) compiles this file
//! on its own.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 12;
/// RFC 1035 §3.1: a name is at most 255 bytes on the wire, a label at most 63.
const MAX_NAME_WIRE: usize = 255;
/// Resolvers send one question; a few are tolerated, more is not DNS as users make it.
const MAX_QUESTIONS: u16 = 4;
/// Records read per section: bounds the work a hostile count can ask for.
pub const MAX_RECORDS: usize = 64;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer than the 12 bytes of the header.
    ShortHeader,
    /// No question, or more than a resolver sends: nothing to join a response to.
    QuestionCount(u16),
    /// The copy ends inside the question.
    TruncatedQuestion,
    /// A compression pointer to itself, forward, or outside the message.
    BadPointer,
    /// A label type other than a length or a pointer (0x40 and 0x80 are reserved).
    BadLabel,
    /// A name longer than 255 bytes on the wire.
    NameTooLong,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::ShortHeader => write!(f, "shorter than a DNS header"),
            ParseError::QuestionCount(n) => write!(f, "{n} questions"),
            ParseError::TruncatedQuestion => write!(f, "ends inside the question"),
            ParseError::BadPointer => write!(f, "bad compression pointer"),
            ParseError::BadLabel => write!(f, "reserved label type"),
            ParseError::NameTooLong => write!(f, "name longer than 255 bytes"),
        }
    }
}

impl std::error::Error for ParseError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// A response (QR set).
    pub response: bool,
    pub opcode: u8,
    pub authoritative: bool,
    /// TC: the answer did not fit (over UDP, the client retries over TCP).
    pub truncated: bool,
    pub recursion_desired: bool,
    pub recursion_available: bool,
    /// The header's 4 bits; `Message::rcode` adds the EDNS extension.
    pub rcode: u8,
    pub questions: u16,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Presentation form without the final dot ("" for the root); bytes outside
    /// printable ASCII, dots and backslashes inside a label are escaped as `\DDD`.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    /// Any other type, or an A/AAAA/CNAME whose data has the wrong length.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RecordData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The sender's UDP payload size.
    pub udp_payload: u16,
    /// The upper 8 bits of the 12-bit rcode.
    pub extended_rcode: u8,
    pub version: u8,
    pub dnssec_ok: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub edns: Option<Edns>,
    /// The copy ended (or a section exceeded `MAX_RECORDS`) before every record the
    /// header counts was read.
    pub incomplete: bool,
}

impl Message {
    /// The full rcode: the header's 4 bits under EDNS's upper 8.
    pub fn rcode(&self) -> u16 {
        let high = self.edns.map_or(0, |e| e.extended_rcode) as u16;
        (high << 4) | self.header.rcode as u16
    }

    /// The A and AAAA addresses of the answer section.
    pub fn addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.answers.iter().filter_map(|r| match r.data {
            RecordData::A(a) => Some(a.into()),
            RecordData::Aaaa(a) => Some(a.into()),
            _ => None,
        })
    }
}

pub fn parse(msg: &[u8]) -> Result<Message, ParseError> {
    let header = parse_header(msg)?;
    if header.questions == 0 || header.questions > MAX_QUESTIONS {
        return Err(ParseError::QuestionCount(header.questions));
    }
    let mut pos = HEADER_LEN;
    let mut questions = Vec::with_capacity(header.questions as usize);
    for _ in 0..header.questions {
        let (name, next) = read_name(msg, pos).map_err(|e| match e {
            NameError::Bad(e) => e,
            NameError::Short => ParseError::TruncatedQuestion,
        })?;
        let fixed = msg
            .get(next..next + 4)
            .ok_or(ParseError::TruncatedQuestion)?;
        questions.push(Question {
            name,
            qtype: be16(fixed, 0),
            qclass: be16(fixed, 2),
        });
        pos = next + 4;
    }
    let mut incomplete = false;
    let mut answers = Vec::new();
    let mut authority = Vec::new();
    let mut edns = None;
    let sections = [
        (header.answers, Some(&mut answers)),
        (header.authority, Some(&mut authority)),
        (header.additional, None),
    ];
    'sections: for (count, mut into) in sections {
        for i in 0..count as usize {
            if i == MAX_RECORDS {
                incomplete = true;
                break 'sections;
            }
            match read_record(msg, pos)? {
                None => {
                    incomplete = true;
                    break 'sections;
                }
                Some((record, next)) => {
                    pos = next;
                    match into.as_deref_mut() {
                        Some(list) => list.push(record.record),
                        None if record.record.rtype == TYPE_OPT => edns = Some(record.edns()),
                        None => {}
                    }
                }
            }
        }
    }
    Ok(Message {
        header,
        questions,
        answers,
        authority,
        edns,
        incomplete,
    })
}

pub fn parse_header(msg: &[u8]) -> Result<Header, ParseError> {
    let h = msg.get(..HEADER_LEN).ok_or(ParseError::ShortHeader)?;
    let (b2, b3) = (h[2], h[3]);
    Ok(Header {
        id: be16(h, 0),
        response: b2 & 0x80 != 0,
        opcode: (b2 >> 3) & 0x0f,
        authoritative: b2 & 0x04 != 0,
        truncated: b2 & 0x02 != 0,
        recursion_desired: b2 & 0x01 != 0,
        recursion_available: b3 & 0x80 != 0,
        rcode: b3 & 0x0f,
        questions: be16(h, 4),
        answers: be16(h, 6),
        authority: be16(h, 8),
        additional: be16(h, 10),
    })
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

enum NameError {
    /// The copy ends inside the name.
    Short,
    Bad(ParseError),
}

/// Reads the name at `start`; returns it and the offset just past it where it sits (a
/// pointer ends the name in place: two bytes).
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), NameError> {
    let mut name = String::new();
    let mut pos = start;
    // Where the bytes after the name begin: set at the first pointer.
    let mut end = None;
    // Every pointer must go below the start of the labels that led to it, so each jump
    // lowers this bound and the walk ends.
    let mut floor = start;
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(NameError::Short)? as usize;
        match len & 0xc0 {
            0x00 => {}
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(NameError::Short)? as usize;
                let target = ((len & 0x3f) << 8) | low;
                if target >= floor {
                    return Err(NameError::Bad(ParseError::BadPointer));
                }
                end.get_or_insert(pos + 2);
                floor = target;
                pos = target;
                continue;
            }
            _ => return Err(NameError::Bad(ParseError::BadLabel)),
        }
        wire_len += len + 1;
        if wire_len > MAX_NAME_WIRE {
            return Err(NameError::Bad(ParseError::NameTooLong));
        }
        if len == 0 {
            return Ok((name, end.unwrap_or(pos + 1)));
        }
        let label = msg.get(pos + 1..pos + 1 + len).ok_or(NameError::Short)?;
        if !name.is_empty() {
            name.push('.');
        }
        push_label(&mut name, label);
        pos += 1 + len;
    }
}

/// Appends a label in presentation form: what could break a log line or a dotted name
/// is escaped as `\DDD`.
fn push_label(name: &mut String, label: &[u8]) {
    for &b in label {
        if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
            name.push(b as char);
        } else {
            name.push_str(&format!("\\{b:03}"));
        }
    }
}

struct RawRecord {
    record: Record,
    /// The OPT pseudo-record keeps its fields where a record's class and TTL are.
    opt_class: u16,
    opt_ttl: u32,
}

impl RawRecord {
    fn edns(&self) -> Edns {
        Edns {
            udp_payload: self.opt_class,
            extended_rcode: (self.opt_ttl >> 24) as u8,
            version: (self.opt_ttl >> 16) as u8,
            dnssec_ok: self.opt_ttl & 0x8000 != 0,
        }
    }
}

/// One resource record at `pos`; `None` when the copy ends inside it.
fn read_record(msg: &[u8], pos: usize) -> Result<Option<(RawRecord, usize)>, ParseError> {
    let (name, next) = match read_name(msg, pos) {
        Ok(v) => v,
        Err(NameError::Short) => return Ok(None),
        Err(NameError::Bad(e)) => return Err(e),
    };
    let Some(fixed) = msg.get(next..next + 10) else {
        return Ok(None);
    };
    let (rtype, class, ttl) = (be16(fixed, 0), be16(fixed, 2), be32(fixed, 4));
    let rdlen = be16(fixed, 8) as usize;
    let rdata_at = next + 10;
    let Some(rdata) = msg.get(rdata_at..rdata_at + rdlen) else {
        return Ok(None);
    };
    let data = match (rtype, rdlen) {
        (TYPE_A, 4) => RecordData::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
        (TYPE_AAAA, 16) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(rdata);
            RecordData::Aaaa(Ipv6Addr::from(a))
        }
        (TYPE_CNAME, _) => match read_name(msg, rdata_at) {
            // The target must lie within the record's data.
            Ok((target, end)) if end <= rdata_at + rdlen => RecordData::Cname(target),
            Ok(_) | Err(NameError::Short) => RecordData::Other,
            Err(NameError::Bad(e)) => return Err(e),
        },
        _ => RecordData::Other,
    };
    Ok(Some((
        RawRecord {
            record: Record {
                name,
                rtype,
                class,
                ttl,
                data,
            },
            opt_class: class,
            opt_ttl: ttl,
        },
        rdata_at + rdlen,
    )))
}

/// Bytes of one TCP message kept at most: the header, the question and the first answers
/// (what a lookup record needs) fit; a zone transfer's 64 KiB would not be kept per
/// stream.
pub const MAX_FRAMED_BYTES: usize = 4096;

/// A message cut out of a TCP stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framed {
    /// What was captured of it, from its first byte.
    pub bytes: Vec<u8>,
    /// False when part of it was not captured (the probe copies a bounded prefix of
    /// each segment): `bytes` is then a prefix or has a hole, and is parsed as far as
    /// it goes only when the hole is at its end.
    pub complete: bool,
}

/// DNS over TCP (RFC 1035 §4.2.2, RFC 7766): each message follows its 2-byte length; one
/// may span segments and a segment may hold several. Bytes are pushed in stream order,
/// each push saying how many bytes after the captured ones were not captured.
#[derive(Debug, Default)]
pub struct TcpFraming {
    length: [u8; 2],
    length_have: usize,
    /// The current message's length once its prefix is read.
    expected: Option<usize>,
    /// Bytes of the current message seen, captured or not.
    seen: usize,
    bytes: Vec<u8>,
    hole: bool,
    /// A length prefix was not captured: message boundaries are unknown from here on.
    lost: bool,
}

impl TcpFraming {
    /// The messages these bytes complete.
    pub fn push(&mut self, captured: &[u8], uncaptured: usize) -> Vec<Framed> {
        let mut out = Vec::new();
        if self.lost {
            return out;
        }
        let mut rest = captured;
        while !rest.is_empty() {
            match self.expected {
                None => {
                    self.length[self.length_have] = rest[0];
                    self.length_have += 1;
                    rest = &rest[1..];
                    if self.length_have == 2 {
                        self.start_message();
                    }
                }
                Some(len) => {
                    let take = (len - self.seen).min(rest.len());
                    if !self.hole {
                        // Beyond the bound the message is kept as a prefix, like one
                        // whose tail was not captured: a stream holds at most this much.
                        let keep = take.min(MAX_FRAMED_BYTES.saturating_sub(self.bytes.len()));
                        self.bytes.extend_from_slice(&rest[..keep]);
                        self.hole = keep < take;
                    }
                    self.seen += take;
                    rest = &rest[take..];
                }
            }
            self.finish_if_done(&mut out);
        }
        let mut gap = uncaptured;
        while gap > 0 {
            let Some(len) = self.expected else {
                self.lost = true;
                break;
            };
            let take = (len - self.seen).min(gap);
            self.seen += take;
            self.hole = true;
            gap -= take;
            self.finish_if_done(&mut out);
        }
        out
    }

    /// Boundaries were lost to an uncaptured length prefix; nothing more is framed.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    fn start_message(&mut self) {
        let len = u16::from_be_bytes(self.length) as usize;
        self.length_have = 0;
        // A zero length frames nothing; the next two bytes are a length again.
        if len > 0 {
            self.expected = Some(len);
            self.seen = 0;
            self.hole = false;
            self.bytes.clear();
        }
    }

    fn finish_if_done(&mut self, out: &mut Vec<Framed>) {
        if self.expected.is_some_and(|len| self.seen == len) {
            self.expected = None;
            out.push(Framed {
                bytes: std::mem::take(&mut self.bytes),
                complete: !self.hole,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name in wire form, uncompressed.
    fn name(n: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in n.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        for c in counts {
            h.extend_from_slice(&c.to_be_bytes());
        }
        h
    }

    fn query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
        let mut m = header(id, 0x0100, [1, 0, 0, 0]);
        m.extend(name(qname));
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    fn record(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut r = owner.to_vec();
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    /// Pointer to the question's name, which starts right after the header.
    const TO_QNAME: [u8; 2] = [0xc0, 12];

    /// www.example.com: CNAME web.example.com (compressed against the question), whose
    /// A and AAAA follow.
    fn answer() -> Vec<u8> {
        let mut m = header(0xbeef, 0x8180, [1, 3, 0, 0]);
        m.extend(name("www.example.com"));
        m.extend_from_slice(&[0, 1, 0, 1]);
        // "web" + pointer to "example.com" inside the question (offset 12 + 4).
        let cname_at = m.len() + 12;
        m.extend(record(
            &TO_QNAME,
            TYPE_CNAME,
            300,
            &[3, b'w', b'e', b'b', 0xc0, 16],
        ));
        let web = [0xc0, cname_at as u8];
        m.extend(record(&web, TYPE_A, 60, &[10, 0, 3, 7]));
        let v6: Ipv6Addr = "fd00::7".parse().unwrap();
        m.extend(record(&web, TYPE_AAAA, 60, &v6.octets()));
        m
    }

    #[test]
    fn a_query_has_its_question() {
        let m = parse(&query(7, "payments.shop.svc.cluster.local", TYPE_A)).unwrap();
        assert_eq!(m.header.id, 7);
        assert!(!m.header.response && m.header.recursion_desired);
        assert_eq!(m.questions[0].name, "payments.shop.svc.cluster.local");
        assert_eq!(m.questions[0].qtype, TYPE_A);
        assert!(m.answers.is_empty() && !m.incomplete);
    }

    #[test]
    fn answers_follow_compression_pointers() {
        let m = parse(&answer()).unwrap();
        assert!(m.header.response);
        assert_eq!(m.rcode(), 0);
        assert_eq!(m.answers.len(), 3);
        assert_eq!(m.answers[0].name, "www.example.com");
        assert_eq!(
            m.answers[0].data,
            RecordData::Cname("web.example.com".into())
        );
        assert_eq!(m.answers[1].name, "web.example.com");
        assert_eq!(m.answers[1].ttl, 60);
        let addrs: Vec<String> = m.addresses().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.3.7", "fd00::7"]);
        assert!(!m.incomplete);
    }

    #[test]
    fn nxdomain_with_authority() {
        let mut m = header(9, 0x8183, [1, 0, 1, 0]);
        m.extend(name("nope.example"));
        m.extend_from_slice(&[0, 28, 0, 1]);
        m.extend(record(&[0xc0, 17], 6, 900, &[0; 22]));
        let m = parse(&m).unwrap();
        assert_eq!(m.rcode(), 3);
        assert_eq!(m.questions[0].qtype, TYPE_AAAA);
        assert_eq!(m.authority.len(), 1);
        assert_eq!(m.authority[0].name, "example");
        assert_eq!(m.authority[0].data, RecordData::Other);
    }

    #[test]
    fn edns_extends_the_rcode() {
        // BADVERS (16): header rcode 0, OPT's extended rcode 1.
        let mut m = header(3, 0x8100, [1, 0, 0, 1]);
        m.extend(name("example.org"));
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.push(0); // root owner
        m.extend_from_slice(&TYPE_OPT.to_be_bytes());
        m.extend_from_slice(&1232u16.to_be_bytes());
        m.extend_from_slice(&[1, 0, 0x80, 0]);
        m.extend_from_slice(&0u16.to_be_bytes());
        let m = parse(&m).unwrap();
        let edns = m.edns.unwrap();
        assert_eq!(edns.udp_payload, 1232);
        assert!(edns.dnssec_ok);
        assert_eq!(m.rcode(), 16);
    }

    #[test]
    fn a_copy_that_ends_early_keeps_what_it_holds() {
        let full = answer();
        // Cut inside the third answer (the AAAA).
        let m = parse(&full[..full.len() - 5]).unwrap();
        assert!(m.incomplete);
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.questions[0].name, "www.example.com");
        // Inside the question: not a usable message.
        assert_eq!(parse(&full[..20]), Err(ParseError::TruncatedQuestion));
        assert_eq!(parse(&full[..11]), Err(ParseError::ShortHeader));
    }

    #[test]
    fn pointer_loops_and_bad_offsets_are_rejected() {
        let mut m = header(1, 0x8180, [1, 1, 0, 0]);
        m.extend(name("a.example"));
        m.extend_from_slice(&[0, 1, 0, 1]);
        let at = m.len();
        // A pointer to itself.
        let mut looped = m.clone();
        looped.extend(record(&[0xc0, at as u8], TYPE_A, 1, &[1, 2, 3, 4]));
        assert_eq!(parse(&looped), Err(ParseError::BadPointer));
        // Forward, past the end.
        let mut forward = m.clone();
        forward.extend(record(&[0xc0, 0xff], TYPE_A, 1, &[1, 2, 3, 4]));
        assert_eq!(parse(&forward), Err(ParseError::BadPointer));
        // Two pointers into each other: the second must go below the first's target.
        let mut pair = header(1, 0x8180, [1, 0, 0, 0]);
        pair.extend_from_slice(&[0xc0, 14, 0xc0, 12]);
        assert_eq!(parse(&pair), Err(ParseError::BadPointer));
        // A reserved label type.
        let mut reserved = header(1, 0, [1, 0, 0, 0]);
        reserved.extend_from_slice(&[0x41, b'x', 0, 0, 1, 0, 1]);
        assert_eq!(parse(&reserved), Err(ParseError::BadLabel));
    }

    #[test]
    fn long_names_are_rejected() {
        let long = ["abcdefghijklmnopqrstuvwxyz012345678901234567890123456789"; 5].join(".");
        assert_eq!(
            parse(&query(1, &long, TYPE_A)),
            Err(ParseError::NameTooLong)
        );
        let fits = ["abcdefghijklmnopqrstuvwxyz012345678901234567890123456789"; 4].join(".");
        assert!(parse(&query(1, &fits, TYPE_A)).is_ok());
    }

    #[test]
    fn question_counts_a_resolver_never_sends_are_not_dns() {
        assert_eq!(
            parse(&header(1, 0, [0, 0, 0, 0])),
            Err(ParseError::QuestionCount(0))
        );
        assert_eq!(
            parse(&header(1, 0, [500, 0, 0, 0])),
            Err(ParseError::QuestionCount(500))
        );
    }

    #[test]
    fn hostile_counts_stop_at_the_bound() {
        let mut m = header(1, 0x8180, [1, u16::MAX, 0, 0]);
        m.extend(name("x.example"));
        m.extend_from_slice(&[0, 1, 0, 1]);
        for _ in 0..MAX_RECORDS + 5 {
            m.extend(record(&TO_QNAME, TYPE_A, 1, &[1, 1, 1, 1]));
        }
        let m = parse(&m).unwrap();
        assert_eq!(m.answers.len(), MAX_RECORDS);
        assert!(m.incomplete);
    }

    #[test]
    fn odd_bytes_in_labels_are_escaped() {
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(&[4, b'a', b'.', b'\n', b'\\', 0, 0, 1, 0, 1]);
        assert_eq!(parse(&m).unwrap().questions[0].name, "a\\046\\010\\092");
    }

    fn framed(m: &[u8]) -> Vec<u8> {
        let mut f = (m.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(m);
        f
    }

    #[test]
    fn tcp_messages_split_and_joined_across_segments() {
        let (q, a) = (query(5, "example.com", TYPE_A), answer());
        let mut stream = framed(&q);
        stream.extend(framed(&a));
        // Every way of cutting the stream in three gives both messages, whole.
        for i in 0..stream.len() {
            for j in i..stream.len() {
                let mut t = TcpFraming::default();
                let mut got = t.push(&stream[..i], 0);
                got.extend(t.push(&stream[i..j], 0));
                got.extend(t.push(&stream[j..], 0));
                assert_eq!(got.len(), 2, "cut at {i}, {j}");
                assert!(got.iter().all(|f| f.complete));
                assert_eq!(got[0].bytes, q);
                assert_eq!(got[1].bytes, a);
            }
        }
    }

    #[test]
    fn an_uncaptured_tail_gives_a_prefix_marked_incomplete() {
        let a = answer();
        let stream = framed(&a);
        let mut t = TcpFraming::default();
        // The probe copied 40 bytes of the segment.
        let got = t.push(&stream[..40], stream.len() - 40);
        assert_eq!(got.len(), 1);
        assert!(!got[0].complete);
        assert_eq!(got[0].bytes, a[..38]);
        assert_eq!(
            parse(&got[0].bytes).unwrap().questions[0].name,
            "www.example.com"
        );
        // The next message frames normally.
        let q = query(6, "example.net", TYPE_AAAA);
        let got = t.push(&framed(&q), 0);
        assert_eq!(
            got,
            [Framed {
                bytes: q,
                complete: true
            }]
        );
    }

    #[test]
    fn a_long_tcp_message_is_kept_as_a_bounded_prefix() {
        // 600 A records (~16 KiB), in segments of 1,000 bytes all captured.
        let mut m = header(1, 0x8180, [1, 600, 0, 0]);
        m.extend(name("big.example"));
        m.extend_from_slice(&[0, 1, 0, 1]);
        for i in 0..600u16 {
            m.extend(record(
                &[0xc0, 12],
                TYPE_A,
                1,
                &[10, 0, (i >> 8) as u8, i as u8],
            ));
        }
        let stream = framed(&m);
        let mut t = TcpFraming::default();
        let mut got = Vec::new();
        for segment in stream.chunks(1000) {
            got.extend(t.push(segment, 0));
        }
        assert_eq!(got.len(), 1);
        assert!(!got[0].complete);
        assert_eq!(got[0].bytes, m[..MAX_FRAMED_BYTES]);
        let parsed = parse(&got[0].bytes).unwrap();
        assert!(parsed.incomplete);
        assert_eq!(parsed.addresses().count(), MAX_RECORDS);
        // The stream goes on framing.
        let q = query(7, "a.b", TYPE_A);
        assert_eq!(t.push(&framed(&q), 0)[0].bytes, q);
    }

    #[test]
    fn an_uncaptured_length_prefix_loses_the_framing() {
        let mut t = TcpFraming::default();
        assert!(t.push(&[], 1).is_empty());
        assert!(t.is_lost());
        assert!(t.push(&framed(&query(1, "a.b", TYPE_A)), 0).is_empty());
    }
}
