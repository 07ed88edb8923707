//! The open batch's journal: every measurement the batcher takes is written
//! here at once, so a crash loses nothing that was measured, and a restart
//! reseals what the last run left open.
//!
//! One file per open batch, `open-NNNNNNNNNNNNNNNNNNNN.jnl` (a generation
//! number rising over the spool's life), framed like segment records
//! ([`super::segment`]): record 0 is the batch's envelope (node, boot id,
//! sequence: an encoded [`Batch`] without samples), each further record one
//! measurement (an encoded `Batch` holding only its series and events). Two
//! encodings of one protobuf message concatenated are their merge, so the
//! journal read back in order is the batch.
//!
//! When the batch is sealed into a segment, the next batch's journal is
//! started and the old one removed once the sealed record is on disk. A
//! crash in between leaves both: the journal is resealed under the same
//! boot id and sequence, which the collector recognises as a copy.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use tierwatch_protocol::Batch;

use super::segment;

const PREFIX: &str = "open-";
const EXT: &str = "jnl";

/// The path of journal generation `generation` in `dir`.
pub fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{generation:020}.{EXT}"))
}

fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_prefix(PREFIX)?.strip_suffix(EXT)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

/// The journal of the batch being filled.
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    next_index: u64,
}

impl Journal {
    /// Starts generation `generation` with the batch's envelope `header`.
    pub fn create(dir: &Path, generation: u64, header: &[u8], now_ms: i64) -> io::Result<Journal> {
        let path = path(dir, generation);
        // Append mode: after a failed write is cut back, the next one still
        // lands at the end, leaving no hole for the scan to stop at.
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(0)?;
        let mut j = Journal { path, file, len: 0, next_index: 0 };
        j.add(header, now_ms)?;
        Ok(j)
    }

    /// Appends one record with one `write`, so a killed process leaves whole records.
    pub fn add(&mut self, payload: &[u8], at_ms: i64) -> io::Result<()> {
        let record = segment::encode(self.next_index, at_ms, payload);
        if let Err(e) = self.file.write_all(&record) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += record.len() as u64;
        self.next_index += 1;
        Ok(())
    }

    /// Measurements written after the envelope.
    pub fn measurements(&self) -> u64 {
        self.next_index.saturating_sub(1)
    }

    /// A second handle on the file, for the committer's `fdatasync`.
    pub fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A journal left by an earlier run.
#[derive(Debug)]
pub struct Recovered {
    pub path: PathBuf,
    /// The batch it holds: the envelope merged with every measurement;
    /// `None` when there is no measurement, or no envelope (nothing to seal).
    pub batch: Option<Batch>,
    /// Measurements were there but did not decode into a batch.
    pub undecodable: bool,
    /// Measurements found (records after the envelope).
    pub measurements: usize,
    /// Bytes of a torn or damaged tail left out.
    pub cut: u64,
}

/// Every journal in `dir`, oldest first, and the next free generation.
pub fn recover(dir: &Path) -> io::Result<(Vec<Recovered>, u64)> {
    let mut generations = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(g) = entry?.file_name().to_str().and_then(parse_name) {
            generations.push(g);
        }
    }
    generations.sort_unstable();
    let next = generations.last().map_or(1, |g| g + 1);
    let mut found = Vec::new();
    for g in generations {
        let path = path(dir, g);
        // One unreadable journal must not keep the agent from starting.
        let scanned = File::open(&path).and_then(|file| segment::scan(&file, 0).map(|scan| (file, scan)));
        let (file, scan) = match scanned {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "spool: a journal left open cannot be read; left in place");
                continue;
            }
        };
        let cut = scan.file_len - scan.valid_len;
        let mut bytes = Vec::new();
        let mut latest = i64::MIN;
        for r in &scan.records {
            match segment::read_payload(&file, r) {
                Ok(p) => bytes.extend_from_slice(&p),
                Err(_) => break,
            }
            latest = latest.max(r.created_ms);
        }
        let measurements = scan.records.len().saturating_sub(1);
        // Without its envelope a journal cannot be attributed; it has no measurement either way.
        let enveloped = scan.records.first().is_some_and(|r| r.id == 0) && measurements > 0;
        let batch = if enveloped {
            Batch::decode(bytes.as_slice()).ok().map(|mut b| {
                b.created_ms = latest;
                b
            })
        } else {
            None
        };
        let undecodable = enveloped && batch.is_none();
        found.push(Recovered { path, batch, undecodable, measurements, cut });
    }
    Ok((found, next))
}

/// A measurement's journal record: its series and events as fields of a `Batch`.
pub fn fragment(series: &[tierwatch_protocol::Series], events: &[tierwatch_protocol::Event]) -> Vec<u8> {
    let mut buf = Vec::new();
    for s in series {
        prost::encoding::message::encode(8, s, &mut buf);
    }
    for e in events {
        prost::encoding::message::encode(9, e, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use tierwatch_protocol::{Event, Point, Series};

    fn series(name: &str, v: f64, t: i64) -> Series {
        Series { name: name.into(), points: vec![Point { timestamp_ms: t, value: v }], ..Default::default() }
    }

    #[test]
    fn a_journal_read_back_is_its_batch_and_a_torn_tail_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let header = Batch { node_id: "nui-cam".into(), boot_id: vec![7; 16], sequence: 42, ..Default::default() };
        let mut j = Journal::create(dir.path(), 5, &header.encode_to_vec(), 1_000).unwrap();
        j.add(&fragment(&[series("tierwatch_probe_success", 1.0, 1_100)], &[]), 1_100).unwrap();
        let ev = Event { kind: "port_scan".into(), ..Default::default() };
        j.add(&fragment(&[series("tierwatch_probe_success", 0.0, 1_200)], &[ev]), 1_200).unwrap();
        assert_eq!(j.measurements(), 2);
        // A write cut short by a kill: half a record.
        let half = segment::encode(3, 1_300, &fragment(&[series("x", 1.0, 1)], &[]));
        j.file.write_all(&half[..half.len() / 2]).unwrap();
        drop(j);
        let (found, next) = recover(dir.path()).unwrap();
        assert_eq!(next, 6);
        assert_eq!(found.len(), 1);
        let b = found[0].batch.clone().unwrap();
        assert_eq!((b.node_id.as_str(), b.sequence, b.boot_id.clone()), ("nui-cam", 42, vec![7; 16]));
        assert_eq!(b.series.len(), 2);
        assert_eq!(b.series[1].points[0].value, 0.0);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.created_ms, 1_200, "sealed at its newest measurement");
        assert!(found[0].cut > 0);
    }

    #[test]
    fn an_envelope_alone_is_no_batch_and_names_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        Journal::create(dir.path(), 1, &Batch::default().encode_to_vec(), 0).unwrap();
        std::fs::write(dir.path().join("open-7.jnl"), b"junk").unwrap();
        let (found, next) = recover(dir.path()).unwrap();
        assert_eq!((found.len(), next), (1, 2));
        assert!(found[0].batch.is_none());
        assert_eq!(parse_name("open-00000000000000000003.jnl"), Some(3));
        assert_eq!(parse_name("00000000000000000003.seg"), None);
    }
}
