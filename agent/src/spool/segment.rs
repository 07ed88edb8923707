//! Segment files: append-only sequences of framed records.
//!
//! A record is a 24-byte header followed by the payload (an encoded batch):
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 (IEEE) of the next 16 bytes and the payload
//! u64 LE  record id (increases by one per record over the spool's life)
//! i64 LE  creation time, ms since the epoch
//! payload
//! ```
//!
//! A record is written with one `write` call, so a killed process leaves
//! whole records; power loss can leave a partial or garbled last record,
//! which the scan finds (short read or checksum mismatch) and cuts off.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes before the payload.
pub const HEADER: usize = 24;
/// Largest payload accepted when reading; a larger length is corruption.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Extension of segment files; the stem is the first record id, zero-padded.
pub const EXT: &str = "seg";

/// Where a record sits in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub id: u64,
    pub created_ms: i64,
    /// Offset of the header in the file.
    pub offset: u64,
    pub payload_len: u32,
}

impl RecordMeta {
    /// Header plus payload.
    pub fn size(&self) -> u64 {
        HEADER as u64 + self.payload_len as u64
    }
}

fn checksum(id: u64, created_ms: i64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&created_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The framed bytes of one record.
pub fn encode(id: u64, created_ms: i64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(id, created_ms, payload).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

struct Header {
    len: u32,
    crc: u32,
    id: u64,
    created_ms: i64,
}

fn parse_header(h: &[u8; HEADER]) -> Header {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        b
    };
    Header {
        len: u32_at(0),
        crc: u32_at(4),
        id: u64::from_le_bytes(u64_at(8)),
        created_ms: i64::from_le_bytes(u64_at(16)),
    }
}

/// What a scan found after the last good record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after a record.
    Clean,
    /// The file ends inside a record (a write cut short).
    Torn,
    /// A complete-looking record fails its checksum, has an impossible
    /// length or an id out of order; nothing after it can be trusted.
    Corrupt,
}

/// The good records of a segment and where they end.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<RecordMeta>,
    /// Length of the file up to the end of the last good record.
    pub valid_len: u64,
    /// Length of the file as found.
    pub file_len: u64,
    pub tail: Tail,
}

/// Reads `file` from the start and returns its good records. Ids must
/// increase; `min_id` is the smallest acceptable first id.
pub fn scan(file: &File, min_id: u64) -> io::Result<Scan> {
    let file_len = file.metadata()?.len();
    let mut handle = file;
    handle.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(256 * 1024, handle);
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut next_min = min_id;
    let mut payload = Vec::new();
    let tail = loop {
        let mut h = [0u8; HEADER];
        match read_full(&mut r, &mut h)? {
            0 => break Tail::Clean,
            n if n < HEADER => break Tail::Torn,
            _ => {}
        }
        let hdr = parse_header(&h);
        if hdr.len > MAX_PAYLOAD || hdr.id < next_min {
            break Tail::Corrupt;
        }
        payload.resize(hdr.len as usize, 0);
        if read_full(&mut r, &mut payload)? < payload.len() {
            break Tail::Torn;
        }
        if checksum(hdr.id, hdr.created_ms, &payload) != hdr.crc {
            // A garbled last record is a torn write; anything earlier is damage.
            let end = offset + HEADER as u64 + hdr.len as u64;
            break if end == file_len { Tail::Torn } else { Tail::Corrupt };
        }
        records.push(RecordMeta { id: hdr.id, created_ms: hdr.created_ms, offset, payload_len: hdr.len });
        offset += HEADER as u64 + hdr.len as u64;
        next_min = hdr.id + 1;
    };
    Ok(Scan { records, valid_len: offset, file_len, tail })
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Why a stored record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    #[error("record {id} at offset {offset} fails its checksum")]
    Checksum { id: u64, offset: u64 },
}

/// Reads the payload of `meta` from `file` and checks it.
pub fn read_payload(file: &File, meta: &RecordMeta) -> Result<Vec<u8>, ReadError> {
    let mut buf = vec![0u8; meta.size() as usize];
    file.read_exact_at(&mut buf, meta.offset)?;
    let mut h = [0u8; HEADER];
    h.copy_from_slice(&buf[..HEADER]);
    let hdr = parse_header(&h);
    let payload = buf.split_off(HEADER);
    if hdr.id != meta.id || hdr.len != meta.payload_len || checksum(hdr.id, hdr.created_ms, &payload) != hdr.crc {
        return Err(ReadError::Checksum { id: meta.id, offset: meta.offset });
    }
    Ok(payload)
}

/// The file name of the segment whose first record id is `first_id`.
pub fn path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(format!("{first_id:020}.{EXT}"))
}

/// The first record id encoded in a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(EXT)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn names_round_trip() {
        let p = path(Path::new("/s"), 42);
        assert_eq!(p.to_str(), Some("/s/00000000000000000042.seg"));
        assert_eq!(parse_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn scan_reads_back_and_cuts_a_torn_tail() {
        let mut bytes = encode(1, 10, b"one");
        bytes.extend(encode(2, 20, b"second"));
        let full = bytes.len();
        bytes.extend(&encode(3, 30, b"third")[..10]);
        let f = file_with(&bytes);
        let s = scan(&f, 0).unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.valid_len, full as u64);
        assert_eq!(s.tail, Tail::Torn);
        assert_eq!(read_payload(&f, &s.records[1]).unwrap(), b"second");
    }

    #[test]
    fn garbled_middle_record_is_corruption() {
        let mut bytes = encode(1, 10, b"one");
        let first = bytes.len();
        bytes.extend(encode(2, 20, b"two"));
        bytes[first + HEADER] ^= 0xff;
        bytes.extend(encode(3, 30, b"three"));
        let s = scan(&file_with(&bytes), 0).unwrap();
        assert_eq!((s.records.len(), s.tail), (1, Tail::Corrupt));
    }

    proptest! {
        /// Whatever is cut off or flipped, the scan returns a prefix of what
        /// was written, never a damaged record.
        #[test]
        fn damage_never_yields_bad_records(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut in any::<prop::sample::Index>(),
            flip in proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
        ) {
            let mut bytes = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                bytes.extend(encode(i as u64 + 1, i as i64, p));
            }
            let cut = cut.index(bytes.len() + 1);
            bytes.truncate(cut);
            if let (Some((at, x)), false) = (flip, bytes.is_empty()) {
                let at = at.index(bytes.len());
                bytes[at] ^= x;
            }
            let f = file_with(&bytes);
            let s = scan(&f, 0).unwrap();
            prop_assert!(s.valid_len <= bytes.len() as u64);
            for (i, r) in s.records.iter().enumerate() {
                prop_assert_eq!(r.id, i as u64 + 1);
                prop_assert_eq!(read_payload(&f, r).unwrap(), payloads[i].clone());
            }
        }
    }
}
