//! Compressing export requests, once: at enqueue, with the signal's wire compression, so
//! the queue holds (and counts against its bounds) the bytes the transport then sends as
//! they are. With `compression: none` on the wire a request is still stored compressed
//! (zstd at its fastest level) and decompressed just before it is sent: the queue's bound
//! is what an outage can hold, and OTLP protobuf shrinks several times.

use std::io::{Read, Write};

use super::config::Compression;

/// zstd's default level on the wire: about gzip's ratio on OTLP protobuf at a fraction
/// of its CPU.
const WIRE_ZSTD_LEVEL: i32 = 3;

/// zstd's fastest level, for requests stored only to be decompressed before sending.
const STORE_ZSTD_LEVEL: i32 = 1;

/// Largest decompressed request accepted: far above any request the encoder builds
/// (`max_batch` items), low enough that a queue file that inflates without end (damaged,
/// or not written by the agent) is refused instead of exhausting memory.
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;

/// How requests bound for a wire with `wire` compression are stored in the queue.
pub fn stored(wire: Compression) -> Compression {
    match wire {
        Compression::None => Compression::Zstd,
        c => c,
    }
}

/// `plain` compressed as `how`: gzip at its fastest level, zstd at the wire level, or
/// at the fastest level when it is only for storage (`for_storage`). A compressor that
/// fails (only an allocation failure can) leaves the request plain: still sent, stored
/// larger.
pub fn compress(how: Compression, plain: &[u8], for_storage: bool) -> (Compression, Vec<u8>) {
    match how {
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 4 + 64),
                flate2::Compression::fast(),
            );
            match enc.write_all(plain).and_then(|_| enc.finish()) {
                Ok(out) => (Compression::Gzip, out),
                Err(_) => (Compression::None, plain.to_vec()),
            }
        }
        Compression::Zstd => {
            let level = if for_storage {
                STORE_ZSTD_LEVEL
            } else {
                WIRE_ZSTD_LEVEL
            };
            match zstd::bulk::compress(plain, level) {
                Ok(out) => (Compression::Zstd, out),
                Err(_) => (Compression::None, plain.to_vec()),
            }
        }
        Compression::None => (Compression::None, plain.to_vec()),
    }
}

/// The plain request of bytes stored as `how`; an error says why they do not decompress
/// (damaged, truncated, or inflating beyond [`MAX_REQUEST_BYTES`]).
pub fn decompress(how: Compression, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.len() * 4);
    let read = match how {
        Compression::None => return Ok(data.to_vec()),
        Compression::Gzip => flate2::read::GzDecoder::new(data)
            .take(MAX_REQUEST_BYTES + 1)
            .read_to_end(&mut out),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(data)
            .and_then(|d| d.take(MAX_REQUEST_BYTES + 1).read_to_end(&mut out)),
    };
    read.map_err(|e| format!("{} data: {e}", name(how)))?;
    if out.len() as u64 > MAX_REQUEST_BYTES {
        return Err(format!(
            "{} data inflates beyond {MAX_REQUEST_BYTES} bytes",
            name(how)
        ));
    }
    Ok(out)
}

/// The bytes to put on a wire compressed as `wire`, from bytes stored as `stored`: as they
/// are when both match (the common case), else decompressed and compressed again (a
/// request queued before a reconfiguration changed the compression, or stored compressed
/// for an uncompressed wire). Returns the encoding actually used.
pub fn for_wire(
    stored: Compression,
    data: &[u8],
    wire: Compression,
) -> Result<(Compression, std::borrow::Cow<'_, [u8]>), String> {
    if stored == wire {
        return Ok((wire, std::borrow::Cow::Borrowed(data)));
    }
    let plain = decompress(stored, data)?;
    if wire == Compression::None {
        return Ok((Compression::None, plain.into()));
    }
    let (used, out) = compress(wire, &plain, false);
    Ok((used, out.into()))
}

pub fn name(how: Compression) -> &'static str {
    match how {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Vec<u8> {
        // Repetitive like OTLP: the same attribute keys in every item.
        (0..200u32)
            .flat_map(|i| format!("network.peer.port={i};error.type=refused;").into_bytes())
            .collect()
    }

    #[test]
    fn round_trip_per_compression() {
        let plain = request();
        for how in [Compression::Gzip, Compression::Zstd, Compression::None] {
            for storage in [false, true] {
                let (used, packed) = compress(how, &plain, storage);
                assert_eq!(used, how);
                if how != Compression::None {
                    assert!(packed.len() * 4 < plain.len(), "{how:?}: {}", packed.len());
                }
                assert_eq!(decompress(used, &packed).unwrap(), plain, "{how:?}");
            }
        }
    }

    #[test]
    fn for_wire_passes_matching_bytes_and_transcodes_the_rest() {
        let plain = request();
        let (_, gz) = compress(Compression::Gzip, &plain, false);
        let (used, out) = for_wire(Compression::Gzip, &gz, Compression::Gzip).unwrap();
        assert_eq!(used, Compression::Gzip);
        assert!(matches!(out, std::borrow::Cow::Borrowed(_)));
        let (used, out) = for_wire(Compression::Gzip, &gz, Compression::Zstd).unwrap();
        assert_eq!(used, Compression::Zstd);
        assert_eq!(decompress(Compression::Zstd, &out).unwrap(), plain);
        let (_, zs) = compress(stored(Compression::None), &plain, true);
        let (used, out) = for_wire(Compression::Zstd, &zs, Compression::None).unwrap();
        assert_eq!((used, out.as_ref()), (Compression::None, plain.as_slice()));
        let (used, out) = for_wire(Compression::None, &plain, Compression::Gzip).unwrap();
        assert_eq!(used, Compression::Gzip);
        assert_eq!(decompress(Compression::Gzip, &out).unwrap(), plain);
    }

    #[test]
    fn damaged_or_inflating_data_is_an_error_not_a_panic() {
        let (_, gz) = compress(Compression::Gzip, &request(), false);
        assert!(decompress(Compression::Gzip, &gz[..gz.len() / 2]).is_err());
        assert!(decompress(Compression::Zstd, b"not zstd").is_err());
        let mut flipped = gz.clone();
        flipped[gz.len() / 2] ^= 0xff;
        assert!(decompress(Compression::Gzip, &flipped).is_err());
        // 65 MiB of zeros compress to a few KiB and would inflate past the limit.
        let big = vec![0u8; (MAX_REQUEST_BYTES + (1 << 20)) as usize];
        let (_, bomb) = compress(Compression::Zstd, &big, true);
        assert!(bomb.len() < 1 << 20);
        let e = decompress(Compression::Zstd, &bomb).unwrap_err();
        assert!(e.contains("inflates beyond"), "{e}");
    }
}
