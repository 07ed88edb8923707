//! The spool's index and its files: which batch lives where (segment and
//! offset, or memory), which destination still lacks it, the segment being
//! appended to, and the bounds (size, age) that drop the oldest. Only
//! [`super::Spool`] touches it, under its lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;

use super::acks::{Ack, AckLog, DROPPED};
use super::segment::{self, RecordMeta};
use super::{FsyncPolicy, SpoolConfig};
use crate::events::{BatchesDropped, InternalEvent};
use crate::metrics::{DropReason, Metrics};

#[derive(Debug)]
pub(super) enum Loc {
    Disk { seg: u64, meta: RecordMeta },
    Memory(Bytes),
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) created_ms: i64,
    /// Bit i set: destination i has not acknowledged it yet.
    pub(super) pending: u32,
    pub(super) loc: Loc,
}

impl Entry {
    pub(super) fn size(&self) -> u64 {
        match &self.loc {
            Loc::Disk { meta, .. } => meta.payload_len as u64,
            Loc::Memory(b) => b.len() as u64,
        }
    }
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) bytes: u64,
    /// Records of this segment still in the index.
    pub(super) live: usize,
    pub(super) reader: Option<File>,
}

pub(super) struct Active {
    pub(super) first_id: u64,
    pub(super) file: File,
    pub(super) len: u64,
}

pub(super) struct Inner {
    pub(super) cfg: SpoolConfig,
    /// Destination keys; index i is bit i of `Entry::pending`.
    pub(super) dests: Vec<u32>,
    pub(super) entries: BTreeMap<u64, Entry>,
    pub(super) segments: BTreeMap<u64, Segment>,
    pub(super) active: Option<Active>,
    pub(super) next_id: u64,
    pub(super) acks: AckLog,
    pub(super) disk_bytes: u64,
    pub(super) memory: usize,
    /// Per destination: no entry below this id is pending for it.
    pub(super) cursors: Vec<u64>,
    pub(super) ack_error_logged: bool,
    /// Segments closed since the last commit, still to be synced (`fsync: always`).
    pub(super) unsynced: Vec<File>,
    /// A segment file was created since the last commit: the directory needs a sync.
    pub(super) dir_dirty: bool,
}

pub(super) fn all_bits(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Inner {
    /// Appends one framed record, keeping the size bound and rotating segments.
    pub(super) fn write(
        &mut self,
        id: u64,
        created_ms: i64,
        body: &[u8],
        metrics: &Metrics,
    ) -> io::Result<(u64, RecordMeta)> {
        let record = segment::encode(id, created_ms, body);
        let size = record.len() as u64;
        if size > self.cfg.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("batch of {size} bytes exceeds spool.max_bytes"),
            ));
        }
        if self.active.as_ref().is_some_and(|a| a.len > 0 && a.len + size > self.cfg.segment_bytes) {
            self.rotate()?;
        }
        // Make room: drop whole segments, oldest first; never the one being written.
        while self.disk_bytes + size > self.cfg.max_bytes {
            let active = self.active.as_ref().map(|a| a.first_id);
            let Some(oldest) = self.segments.keys().copied().find(|&f| Some(f) != active) else {
                if self.active.as_ref().is_some_and(|a| a.len > 0) {
                    self.rotate()?;
                    continue;
                }
                break;
            };
            let ids: Vec<u64> = self.ids_of(oldest);
            let first = ids.first().copied().unwrap_or(0);
            for i in &ids {
                self.entries.remove(i);
            }
            BatchesDropped { reason: DropReason::Size, count: ids.len() as u64, first, file: None }.emit(metrics);
            self.delete_segment(oldest);
        }
        if self.active.is_none() {
            let path = segment::path(&self.cfg.dir, id);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let len = file.metadata()?.len();
            // Its directory entry is synced by the next commit.
            self.dir_dirty = true;
            self.segments.entry(id).or_insert(Segment { bytes: len, live: 0, reader: None });
            self.active = Some(Active { first_id: id, file, len });
        }
        let Some(active) = self.active.as_mut() else { return Err(io::Error::other("no active segment")) };
        let offset = active.len;
        if let Err(e) = active.file.write_all(&record) {
            // Leave no partial record behind for the next append to follow.
            let _ = active.file.set_len(offset);
            return Err(e);
        }
        // No fdatasync here: the committer makes records durable in groups
        // ([`super::Spool::commit`]), so an urgent batch never waits for one.
        active.len += size;
        let first = active.first_id;
        if let Some(s) = self.segments.get_mut(&first) {
            s.bytes += size;
            s.live += 1;
        }
        self.disk_bytes += size;
        Ok((first, RecordMeta { id, created_ms, offset, payload_len: body.len() as u32 }))
    }

    /// Closes the current segment; the next append starts a new one.
    pub(super) fn rotate(&mut self) -> io::Result<()> {
        if let Some(a) = self.active.take() {
            // Synced by the next commit, off this (the writer's) path.
            if self.cfg.fsync == FsyncPolicy::Always {
                self.unsynced.push(a.file);
            }
            if self.segments.get(&a.first_id).is_some_and(|s| s.live == 0) {
                self.delete_segment(a.first_id);
            }
        }
        Ok(())
    }

    pub(super) fn ids_of(&self, seg: u64) -> Vec<u64> {
        let end = self.segments.range(seg + 1..).next().map_or(u64::MAX, |(&f, _)| f);
        self.entries
            .range(seg..end)
            .filter(|(_, e)| matches!(e.loc, Loc::Disk { seg: s, .. } if s == seg))
            .map(|(&i, _)| i)
            .collect()
    }

    pub(super) fn delete_segment(&mut self, first: u64) {
        if let Some(s) = self.segments.remove(&first) {
            self.disk_bytes = self.disk_bytes.saturating_sub(s.bytes);
        }
        let path = segment::path(&self.cfg.dir, first);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "spool: could not delete a delivered segment");
            }
        }
    }

    /// Removes an entry from the index; deletes its segment when that was the last one.
    pub(super) fn forget(&mut self, id: u64) {
        let Some(e) = self.entries.remove(&id) else { return };
        match e.loc {
            Loc::Memory(_) => self.memory = self.memory.saturating_sub(1),
            Loc::Disk { seg, .. } => {
                let active = self.active.as_ref().map(|a| a.first_id);
                let empty = self.segments.get_mut(&seg).map(|s| {
                    s.live = s.live.saturating_sub(1);
                    s.live == 0
                });
                if empty == Some(true) && Some(seg) != active {
                    self.delete_segment(seg);
                }
            }
        }
    }

    pub(super) fn log_ack(&mut self, a: Ack) {
        if let Err(e) = self.acks.append(a) {
            if !self.ack_error_logged {
                self.ack_error_logged = true;
                tracing::warn!(error = %e, "spool: cannot record acknowledgements; delivered batches may be sent again after a restart");
            }
        }
    }

    pub(super) fn ack(&mut self, dest: usize, id: u64) {
        let Some(e) = self.entries.get_mut(&id) else { return };
        let bit = 1u32 << dest;
        if e.pending & bit == 0 {
            return;
        }
        e.pending &= !bit;
        let done = e.pending == 0;
        if matches!(e.loc, Loc::Disk { .. }) {
            let key = self.dests[dest];
            self.log_ack(Ack { id, dest: key });
        }
        if done {
            self.forget(id);
        }
        if self.acks.wants_compaction() {
            if let Err(e) = self.compact_acks() {
                tracing::warn!(error = %e, "spool: compacting the acknowledgement log failed");
            }
        }
    }

    /// Gives up batch `id` for every destination; false if it was not there.
    pub(super) fn drop_entry(&mut self, id: u64) -> bool {
        let Some(e) = self.entries.get(&id) else { return false };
        if matches!(e.loc, Loc::Disk { .. }) {
            self.log_ack(Ack { id, dest: DROPPED });
        }
        self.forget(id);
        true
    }

    /// Drops unsent batches older than `max_age`, oldest first.
    pub(super) fn expire(&mut self, now_ms: i64, metrics: &Metrics) {
        let cutoff = now_ms.saturating_sub(self.cfg.max_age.as_millis() as i64);
        let old: Vec<u64> = self.entries.iter().take_while(|(_, e)| e.created_ms < cutoff).map(|(&i, _)| i).collect();
        let dropped = old.iter().filter(|&&id| self.drop_entry(id)).count() as u64;
        let first = old.first().copied().unwrap_or(0);
        BatchesDropped { reason: DropReason::Age, count: dropped, first, file: None }.emit(metrics);
    }

    /// Rewrites the acknowledgement log with only what the index still needs:
    /// per-destination acks of unsent batches, and a "done" mark for every
    /// other record still inside a segment file.
    pub(super) fn compact_acks(&mut self) -> io::Result<()> {
        let mut keep = Vec::new();
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for (i, &first) in firsts.iter().enumerate() {
            let end = firsts.get(i + 1).copied().unwrap_or(self.next_id);
            for id in first..end {
                match self.entries.get(&id) {
                    None => keep.push(Ack { id, dest: DROPPED }),
                    Some(e) if matches!(e.loc, Loc::Disk { .. }) => {
                        for (bit, &key) in self.dests.iter().enumerate() {
                            if e.pending & (1 << bit) == 0 {
                                keep.push(Ack { id, dest: key });
                            }
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        self.acks.rewrite(keep)
    }
}
