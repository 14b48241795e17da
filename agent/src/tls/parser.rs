//! TLS wire parsing: record reassembly from captured TCP bytes, and the handshake
//! messages that travel in clear (ClientHello, ServerHello, TLS ≤ 1.2 Certificate) and
//! alerts. Pure functions over bytes: robust to records split across segments, to
//! overlaps, gaps and garbage (never panics; fuzzed by `fuzz/fuzz_targets/tls_wire.rs`).

/// Largest record a peer may send (RFC 8446 §5.2: 2^14 + 256; TLS 1.2 allows 2^14 + 2048).
pub const MAX_RECORD_LEN: usize = 16_384 + 2_048;
/// Largest handshake message we reassemble (a certificate chain fits comfortably).
pub const MAX_HANDSHAKE_LEN: usize = 256 * 1024;

pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;

pub const HS_CLIENT_HELLO: u8 = 1;
pub const HS_SERVER_HELLO: u8 = 2;
pub const HS_CERTIFICATE: u8 = 11;

pub const TLS1_0: u16 = 0x0301;
pub const TLS1_1: u16 = 0x0302;
pub const TLS1_2: u16 = 0x0303;
pub const TLS1_3: u16 = 0x0304;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// `ServerHello.random` of a HelloRetryRequest (RFC 8446 §4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub content_type: u8,
    pub version: u16,
    pub length: u16,
}

/// A 5-byte record header, if it looks like TLS.
pub fn record_header(b: &[u8]) -> Option<RecordHeader> {
    let h = b.get(..5)?;
    let header = RecordHeader {
        content_type: h[0],
        version: u16::from_be_bytes([h[1], h[2]]),
        length: u16::from_be_bytes([h[3], h[4]]),
    };
    let plausible = (CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_APPLICATION_DATA)
        .contains(&header.content_type)
        && (0x0300..=TLS1_3).contains(&header.version)
        && (header.length as usize) <= MAX_RECORD_LEN;
    plausible.then_some(header)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub content_type: u8,
    pub version: u16,
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bytes that are not a TLS record header")]
    NotTls,
    #[error("bytes were missing in the captured stream; resynchronised")]
    Gap,
}

/// Reassembles the records of one direction of a connection from captured chunks that
/// carry their TCP sequence number.
#[derive(Debug, Default)]
pub struct RecordReader {
    next_seq: Option<u32>,
    buf: Vec<u8>,
}

impl RecordReader {
    /// Adds bytes starting at sequence number `seq`; returns the records completed.
    /// Overlapping bytes (retransmissions) are skipped; after a gap the reader restarts
    /// at `seq`, which the probe only sends from a record boundary.
    pub fn push(&mut self, seq: u32, data: &[u8], out: &mut Vec<Record>) -> Result<(), WireError> {
        let mut data = data;
        let mut gap = false;
        if let Some(next) = self.next_seq {
            let delta = seq.wrapping_sub(next) as i32;
            if delta < 0 {
                let skip = delta.unsigned_abs() as usize;
                if skip >= data.len() {
                    return Ok(());
                }
                data = &data[skip..];
            } else if delta > 0 {
                self.buf.clear();
                gap = true;
            }
        }
        let start = if gap || self.next_seq.is_none() {
            seq
        } else {
            self.next_seq.unwrap_or(seq)
        };
        self.next_seq = Some(start.wrapping_add(data.len() as u32));
        self.buf.extend_from_slice(data);
        let result = self.drain(out);
        match (result, gap) {
            (Err(e), _) => Err(e),
            (Ok(()), true) => Err(WireError::Gap),
            (Ok(()), false) => Ok(()),
        }
    }

    fn drain(&mut self, out: &mut Vec<Record>) -> Result<(), WireError> {
        let mut at = 0;
        let result = loop {
            let rest = &self.buf[at..];
            if rest.len() < 5 {
                break Ok(());
            }
            let Some(h) = record_header(rest) else {
                at = self.buf.len();
                break Err(WireError::NotTls);
            };
            let end = 5 + h.length as usize;
            if rest.len() < end {
                break Ok(());
            }
            out.push(Record {
                content_type: h.content_type,
                version: h.version,
                payload: rest[5..end].to_vec(),
            });
            at += end;
        };
        self.buf.drain(..at);
        result
    }
}

/// Reassembles handshake messages, which may span records or share one.
#[derive(Debug, Default)]
pub struct HandshakeReader {
    buf: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeMessage {
    pub msg_type: u8,
    pub body: Vec<u8>,
}

impl HandshakeReader {
    pub fn push(&mut self, payload: &[u8], out: &mut Vec<HandshakeMessage>) {
        self.buf.extend_from_slice(payload);
        let mut at = 0;
        while self.buf.len() - at >= 4 {
            let b = &self.buf[at..];
            let len = u32::from_be_bytes([0, b[1], b[2], b[3]]) as usize;
            if len > MAX_HANDSHAKE_LEN {
                at = self.buf.len();
                break;
            }
            if b.len() < 4 + len {
                break;
            }
            out.push(HandshakeMessage {
                msg_type: b[0],
                body: b[4..4 + len].to_vec(),
            });
            at += 4 + len;
        }
        self.buf.drain(..at);
    }
}

/// A bounds-checked reader: every read returns None past the end.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.b.split_first()?;
        self.b = rest;
        Some(v)
    }
    fn u16(&mut self) -> Option<u16> {
        let v = self.bytes(2)?;
        Some(u16::from_be_bytes([v[0], v[1]]))
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (v, rest) = self.b.split_at(n);
        self.b = rest;
        Some(v)
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.bytes(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    fn vec24(&mut self) -> Option<&'a [u8]> {
        let v = self.bytes(3)?;
        self.bytes(u32::from_be_bytes([0, v[0], v[1], v[2]]) as usize)
    }
}

/// (type, data) of each extension; stops quietly at malformed input.
fn extensions(block: &[u8]) -> Vec<(u16, &[u8])> {
    let mut c = Cursor { b: block };
    let mut out = Vec::new();
    while let (Some(t), Some(d)) = (c.u16(), c.vec16()) {
        out.push((t, d));
    }
    out
}

fn alpn_list(d: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(list) = (Cursor { b: d }).vec16() else {
        return out;
    };
    let mut c = Cursor { b: list };
    while let Some(p) = c.vec8() {
        out.push(String::from_utf8_lossy(p).into_owned());
    }
    out
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub legacy_version: u16,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
    /// From `supported_versions`, GREASE removed; empty when absent (TLS ≤ 1.2 client).
    pub supported_versions: Vec<u16>,
    pub cipher_suites: Vec<u16>,
}

impl ClientHello {
    /// The highest version offered.
    pub fn max_version(&self) -> u16 {
        self.supported_versions
            .iter()
            .copied()
            .max()
            .unwrap_or(self.legacy_version)
    }
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a
}

pub fn parse_client_hello(body: &[u8]) -> Option<ClientHello> {
    let mut c = Cursor { b: body };
    let mut ch = ClientHello {
        legacy_version: c.u16()?,
        ..Default::default()
    };
    c.bytes(32)?;
    c.vec8()?;
    let suites = c.vec16()?;
    ch.cipher_suites = suites
        .chunks_exact(2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .filter(|s| !is_grease(*s))
        .collect();
    c.vec8()?;
    let exts = c.vec16().unwrap_or(&[]);
    for (t, d) in extensions(exts) {
        match t {
            EXT_SERVER_NAME => {
                let mut list = Cursor {
                    b: (Cursor { b: d }).vec16().unwrap_or(&[]),
                };
                while let (Some(kind), Some(name)) = (list.u8(), list.vec16()) {
                    if kind == 0 {
                        ch.server_name = Some(String::from_utf8_lossy(name).into_owned());
                        break;
                    }
                }
            }
            EXT_ALPN => ch.alpn = alpn_list(d),
            EXT_SUPPORTED_VERSIONS => {
                let list = (Cursor { b: d }).vec8().unwrap_or(&[]);
                ch.supported_versions = list
                    .chunks_exact(2)
                    .map(|v| u16::from_be_bytes([v[0], v[1]]))
                    .filter(|v| !is_grease(*v))
                    .collect();
            }
            _ => {}
        }
    }
    Some(ch)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// `supported_versions` when present (TLS 1.3), else the legacy version field.
    pub version: u16,
    pub cipher_suite: u16,
    pub alpn: Option<String>,
    pub hello_retry_request: bool,
}

pub fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let mut c = Cursor { b: body };
    let legacy = c.u16()?;
    let random = c.bytes(32)?;
    c.vec8()?;
    let mut sh = ServerHello {
        version: legacy,
        cipher_suite: c.u16()?,
        alpn: None,
        hello_retry_request: random == HELLO_RETRY_RANDOM,
    };
    c.u8()?;
    for (t, d) in extensions(c.vec16().unwrap_or(&[])) {
        match t {
            EXT_SUPPORTED_VERSIONS if d.len() == 2 => sh.version = u16::from_be_bytes([d[0], d[1]]),
            EXT_ALPN => sh.alpn = alpn_list(d).into_iter().next(),
            _ => {}
        }
    }
    Some(sh)
}

/// The server's (leaf) certificate as far as we need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

/// The leaf of a TLS ≤ 1.2 `Certificate` message.
pub fn parse_certificate(body: &[u8]) -> Option<CertificateInfo> {
    let list = (Cursor { b: body }).vec24()?;
    let der = (Cursor { b: list }).vec24()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = |name: &x509_parser::x509::X509Name| {
        name.iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| name.to_string())
    };
    Some(CertificateInfo {
        subject: cn(cert.subject()),
        issuer: cn(cert.issuer()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// A cleartext alert; None for an encrypted one (its payload is not 2 bytes).
pub fn parse_alert(payload: &[u8]) -> Option<(u8, u8)> {
    match payload {
        [level, description] => Some((*level, *description)),
        _ => None,
    }
}

pub fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSLv3".into(),
        TLS1_0 => "TLSv1.0".into(),
        TLS1_1 => "TLSv1.1".into(),
        TLS1_2 => "TLSv1.2".into(),
        TLS1_3 => "TLSv1.3".into(),
        other => format!("0x{other:04x}"),
    }
}

/// IANA names of the suites a modern stack negotiates; others print as hex.
pub fn cipher_name(suite: u16) -> String {
    let name = match suite {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0x1304 => "TLS_AES_128_CCM_SHA256",
        0x1305 => "TLS_AES_128_CCM_8_SHA256",
        0xc02b => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xc02c => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xc02f => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xc030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xcca8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xcca9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0xc013 => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        0xc014 => "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        0x009c => "TLS_RSA_WITH_AES_128_GCM_SHA256",
        0x009d => "TLS_RSA_WITH_AES_256_GCM_SHA384",
        0x002f => "TLS_RSA_WITH_AES_128_CBC_SHA",
        0x0035 => "TLS_RSA_WITH_AES_256_CBC_SHA",
        0x009e => "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        0x009f => "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        _ => return format!("0x{suite:04x}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::{samples::*, *};

    /// Parses one direction of a captured handshake into its messages.
    fn captured(bytes: &[u8], chunk: usize) -> (Vec<Record>, Vec<HandshakeMessage>) {
        let mut r = RecordReader::default();
        let mut records = Vec::new();
        for (i, c) in bytes.chunks(chunk).enumerate() {
            r.push(5000 + (i * chunk) as u32, c, &mut records).unwrap();
        }
        let mut hs = HandshakeReader::default();
        let mut msgs = Vec::new();
        for rec in records
            .iter()
            .filter(|r| r.content_type == CONTENT_HANDSHAKE)
        {
            hs.push(&rec.payload, &mut msgs);
        }
        (records, msgs)
    }

    /// Bytes captured from OpenSSL 3.0 (Python's ssl with memory BIOs): a TLS 1.2
    /// handshake to `api.test` with a certificate valid until 2026-12-05T10:24:11Z.
    #[test]
    fn captured_openssl_tls12_handshake() {
        // Cut into uneven segments, as TCP would.
        let (_, client) = captured(include_bytes!("testdata/openssl-tls12-client.bin"), 97);
        let ch = parse_client_hello(&client[0].body).unwrap();
        assert_eq!(ch.server_name.as_deref(), Some("api.test"));
        assert_eq!(ch.alpn, vec!["h2", "http/1.1"]);
        assert!(ch.supported_versions.contains(&TLS1_3));
        let (records, server) = captured(include_bytes!("testdata/openssl-tls12-server.bin"), 1000);
        let sh = server
            .iter()
            .find(|m| m.msg_type == HS_SERVER_HELLO)
            .unwrap();
        let sh = parse_server_hello(&sh.body).unwrap();
        assert_eq!(version_name(sh.version), "TLSv1.2");
        assert_eq!(
            cipher_name(sh.cipher_suite),
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        );
        assert_eq!(sh.alpn.as_deref(), Some("http/1.1"));
        let cert = server
            .iter()
            .find(|m| m.msg_type == HS_CERTIFICATE)
            .unwrap();
        let cert = parse_certificate(&cert.body).unwrap();
        assert_eq!(cert.subject, "api.test");
        assert_eq!(cert.issuer, "hostscope test CA");
        assert_eq!(cert.not_after_unix, 1_796_466_251);
        assert!(records
            .iter()
            .any(|r| r.content_type == CONTENT_CHANGE_CIPHER_SPEC));
    }

    /// The same over TLS 1.3: everything after ServerHello is encrypted.
    #[test]
    fn captured_openssl_tls13_handshake() {
        let (records, server) = captured(include_bytes!("testdata/openssl-tls13-server.bin"), 61);
        let sh = parse_server_hello(&server[0].body).unwrap();
        assert_eq!(version_name(sh.version), "TLSv1.3");
        assert_eq!(cipher_name(sh.cipher_suite), "TLS_AES_256_GCM_SHA384");
        assert!(server.iter().all(|m| m.msg_type != HS_CERTIFICATE));
        assert!(records
            .iter()
            .any(|r| r.content_type == CONTENT_APPLICATION_DATA));
        let (client_records, _) =
            captured(include_bytes!("testdata/openssl-tls13-client.bin"), 500);
        // The client's Finished: one encrypted record longer than an encrypted alert.
        let last = client_records.last().unwrap();
        assert_eq!(last.content_type, CONTENT_APPLICATION_DATA);
        assert!(last.payload.len() > 19);
    }

    #[test]
    fn client_hello_fields() {
        let ch = parse_client_hello(&client_hello("api.example.test")).unwrap();
        assert_eq!(ch.server_name.as_deref(), Some("api.example.test"));
        assert_eq!(ch.alpn, vec!["h2", "http/1.1"]);
        assert_eq!(ch.supported_versions, vec![TLS1_3, TLS1_2]);
        assert_eq!(ch.max_version(), TLS1_3);
        assert_eq!(ch.cipher_suites, vec![0x1302, 0x1301]);
    }

    #[test]
    fn records_split_across_segments_and_retransmitted() {
        let rec = wrap(HS_CLIENT_HELLO, &client_hello("a.test"));
        let mut r = RecordReader::default();
        let mut out = Vec::new();
        let (a, b) = rec.split_at(7);
        r.push(1000, a, &mut out).unwrap();
        assert!(out.is_empty());
        // A retransmission of the first part, then the rest.
        r.push(1000, a, &mut out).unwrap();
        r.push(1000 + 7, b, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let mut hs = HandshakeReader::default();
        let mut msgs = Vec::new();
        hs.push(&out[0].payload, &mut msgs);
        assert_eq!(msgs[0].msg_type, HS_CLIENT_HELLO);
    }

    #[test]
    fn handshake_message_spanning_records() {
        let body = client_hello("b.test");
        let mut hs_bytes = vec![HS_CLIENT_HELLO];
        hs_bytes.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs_bytes.extend_from_slice(&body);
        let (x, y) = hs_bytes.split_at(20);
        let mut hs = HandshakeReader::default();
        let mut msgs = Vec::new();
        hs.push(x, &mut msgs);
        assert!(msgs.is_empty());
        hs.push(y, &mut msgs);
        assert_eq!(
            parse_client_hello(&msgs[0].body)
                .unwrap()
                .server_name
                .as_deref(),
            Some("b.test")
        );
    }

    #[test]
    fn garbage_is_not_tls_and_never_panics() {
        let mut r = RecordReader::default();
        let mut out = Vec::new();
        assert_eq!(
            r.push(0, b"GET / HTTP/1.1\r\n\r\n", &mut out),
            Err(WireError::NotTls)
        );
        assert!(out.is_empty());
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_client_hello(&junk);
            let _ = parse_server_hello(&junk);
            let _ = parse_certificate(&junk);
            let _ = parse_alert(&junk);
            HandshakeReader::default().push(&junk, &mut Vec::new());
        }
    }

    #[test]
    fn gap_resynchronises() {
        let rec = wrap(HS_CLIENT_HELLO, &client_hello("c.test"));
        let mut r = RecordReader::default();
        let mut out = Vec::new();
        r.push(0, &rec[..10], &mut out).unwrap();
        assert_eq!(r.push(5000, &rec, &mut out), Err(WireError::Gap));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn server_hello_tls13_and_hrr() {
        let mut body = server_hello_13();
        let sh = parse_server_hello(&body).unwrap();
        assert_eq!((sh.version, sh.cipher_suite), (TLS1_3, 0x1302));
        assert!(!sh.hello_retry_request);
        assert_eq!(cipher_name(sh.cipher_suite), "TLS_AES_256_GCM_SHA384");
        body[2..34].copy_from_slice(&HELLO_RETRY_RANDOM);
        assert!(parse_server_hello(&body).unwrap().hello_retry_request);
    }

    #[test]
    fn alerts_in_clear_only() {
        assert_eq!(parse_alert(&[2, 45]), Some((2, 45)));
        assert_eq!(parse_alert(&[0x17; 26]), None);
    }
}

/// Handshake bytes built field by field, for tests here and in the tracker.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    /// A ClientHello as OpenSSL 3.0 sends it (trimmed extensions), built field by field.
    pub fn client_hello(sni: &str) -> Vec<u8> {
        let mut ext = Vec::new();
        // server_name
        let name = sni.as_bytes();
        let mut sn = vec![0u8];
        sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sn.extend_from_slice(name);
        let mut snl = (sn.len() as u16).to_be_bytes().to_vec();
        snl.extend(sn);
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&(snl.len() as u16).to_be_bytes());
        ext.extend(snl);
        // ALPN h2, http/1.1
        let protos = [b"h2".as_slice(), b"http/1.1".as_slice()];
        let mut pl = Vec::new();
        for p in protos {
            pl.push(p.len() as u8);
            pl.extend_from_slice(p);
        }
        let mut alpn = (pl.len() as u16).to_be_bytes().to_vec();
        alpn.extend(pl);
        ext.extend_from_slice(&16u16.to_be_bytes());
        ext.extend_from_slice(&(alpn.len() as u16).to_be_bytes());
        ext.extend(alpn);
        // supported_versions: GREASE, 1.3, 1.2
        let sv = [6u8, 0x7a, 0x7a, 0x03, 0x04, 0x03, 0x03];
        ext.extend_from_slice(&43u16.to_be_bytes());
        ext.extend_from_slice(&(sv.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sv);

        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x11; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 4, 0x13, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend(ext);
        body
    }

    pub fn wrap(msg_type: u8, body: &[u8]) -> Vec<u8> {
        let mut hs = vec![msg_type];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    /// A TLS 1.3 ServerHello body choosing TLS_AES_256_GCM_SHA384.
    pub fn server_hello_13() -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x22; 32]);
        body.push(0);
        body.extend_from_slice(&[0x13, 0x02, 0]);
        let ext = [0u8, 43, 0, 2, 0x03, 0x04];
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        body
    }
}
