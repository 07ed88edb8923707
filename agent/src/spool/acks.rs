//! The acknowledgement log: which destination has taken which record.
//!
//! Entries are 16 bytes: record id (u64 LE), destination key (u32 LE),
//! CRC-32 of those 12 bytes. The log is appended without fsync: losing its
//! tail in a power cut only means a batch is sent again, and the collector
//! stores a batch once however often it arrives. A partial or damaged entry
//! is skipped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Size of one entry.
pub const ENTRY: usize = 16;
/// Destination key meaning "dropped for every destination" (age or size bound).
pub const DROPPED: u32 = u32::MAX;

/// File name inside the spool directory.
pub const NAME: &str = "acks";

/// One entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    pub dest: u32,
}

fn encode(a: Ack) -> [u8; ENTRY] {
    let mut b = [0u8; ENTRY];
    b[..8].copy_from_slice(&a.id.to_le_bytes());
    b[8..12].copy_from_slice(&a.dest.to_le_bytes());
    let crc = crc32fast::hash(&b[..12]);
    b[12..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Ack> {
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[..8]);
    let mut dest = [0u8; 4];
    dest.copy_from_slice(&b[8..12]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[12..16]);
    (crc32fast::hash(&b[..12]) == u32::from_le_bytes(crc))
        .then(|| Ack { id: u64::from_le_bytes(id), dest: u32::from_le_bytes(dest) })
}

/// The open log.
pub struct AckLog {
    path: PathBuf,
    file: File,
    /// Entries in the file.
    pub entries: u64,
    /// Entries the last rewrite kept.
    pub kept: u64,
}

impl AckLog {
    /// Opens (creating) the log in `dir` and returns it with the entries it holds.
    pub fn open(dir: &Path) -> io::Result<(AckLog, Vec<Ack>)> {
        let path = dir.join(NAME);
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let acks: Vec<Ack> = bytes.chunks_exact(ENTRY).filter_map(decode).collect();
        let aligned = (bytes.len() - bytes.len() % ENTRY) as u64;
        if aligned != bytes.len() as u64 {
            // Later entries must start on an entry boundary.
            file.set_len(aligned)?;
        }
        let entries = acks.len() as u64;
        Ok((AckLog { path, file, entries, kept: entries }, acks))
    }

    /// True when the log has grown well past what the last rewrite kept.
    pub fn wants_compaction(&self) -> bool {
        self.entries > 2 * self.kept + 4096
    }

    /// Appends one entry (no fsync, see the module comment).
    pub fn append(&mut self, a: Ack) -> io::Result<()> {
        self.entries += 1;
        self.file.write_all(&encode(a))
    }

    /// Replaces the log by `keep`, atomically (write, fsync, rename).
    pub fn rewrite(&mut self, keep: impl IntoIterator<Item = Ack>) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        let mut buf = Vec::new();
        let mut n = 0u64;
        for a in keep {
            buf.extend_from_slice(&encode(a));
            n += 1;
        }
        f.write_all(&buf)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.entries = n;
        self.kept = n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_a_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, got) = AckLog::open(dir.path()).unwrap();
            assert!(got.is_empty());
            log.append(Ack { id: 7, dest: 0 }).unwrap();
            log.append(Ack { id: 8, dest: DROPPED }).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(dir.path().join(NAME)).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let (mut log, got) = AckLog::open(dir.path()).unwrap();
        assert_eq!(got, vec![Ack { id: 7, dest: 0 }, Ack { id: 8, dest: DROPPED }]);
        log.rewrite([Ack { id: 8, dest: DROPPED }]).unwrap();
        let (_, got) = AckLog::open(dir.path()).unwrap();
        assert_eq!(got, vec![Ack { id: 8, dest: DROPPED }]);
    }

    #[test]
    fn damaged_entry_is_ignored() {
        let mut b = encode(Ack { id: 1, dest: 2 });
        b[3] ^= 1;
        assert_eq!(decode(&b), None);
    }
}
