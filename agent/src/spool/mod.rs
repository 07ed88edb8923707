//! The on-disk spool: every sealed batch is written here before it is sent,
//! and stays until each destination has acknowledged it (or a bound drops it).
//!
//! Layout of the spool directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files of framed records ([`segment`]),
//!   named by their first record id; only the newest is appended to.
//! - `acks`: which destination took which record ([`acks`]).
//!
//! - `open-NNNNNNNNNNNNNNNNNNNN.jnl`: the batch being filled, measurement by
//!   measurement ([`journal`]), written by the [`writer`] thread.
//!
//! Durability: a record is written with one `write` before
//! [`Spool::append`] returns, so it survives a crash of the agent; with
//! `fsync: always` the [`writer`]'s committer `fdatasync`s the segment and
//! the journal at most `commit_interval` later, so it survives power loss
//! too; with `never` that is left to the kernel.
//! Acknowledgements are never fsynced: losing one sends a batch again, and
//! the collector stores each batch once.
//!
//! All methods block (file I/O, fsync): async callers use `spawn_blocking`.
//! The in-memory index holds a few dozen bytes per unsent batch.

pub mod acks;
mod index;
pub mod journal;
pub mod segment;
pub mod writer;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::events::{BatchesDropped, InternalEvent, SpoolWriteFailed};
use crate::metrics::{DropReason, Metrics};
use acks::{AckLog, DROPPED};
use index::{all_bits, Active, Entry, Inner, Loc, Segment};
use segment::Tail;

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// `fdatasync` within `commit_interval` of every record: survives power loss.
    Always,
    /// Leave it to the kernel's writeback: survives agent crashes only.
    Never,
}

/// Bounds and placement of the spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Disk bytes of all segments; the oldest segment is dropped beyond.
    pub max_bytes: u64,
    /// Unsent batches older than this are dropped.
    pub max_age: Duration,
    /// A new segment is started when the current one would pass this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// With `fsync: always`: the longest a written record waits for its `fdatasync`.
    pub commit_interval: Duration,
    /// Batches kept in memory when the disk refuses writes (full, read-only).
    pub memory_batches: usize,
}

/// Errors opening the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("spool file {}: {source}", file.display())]
    File { file: PathBuf, source: io::Error },
}

/// A batch just appended, handed to the senders so the newest goes first.
#[derive(Debug, Clone)]
pub struct Live {
    pub id: u64,
    pub body: Bytes,
}

/// Where [`Spool::append`] put a batch.
#[derive(Debug)]
pub enum Stored {
    /// Written to a segment (synced by the next commit, with `fsync: always`).
    Disk(u64),
    /// The disk refused it; held in memory (lost if the agent stops).
    Memory { id: u64, error: io::Error },
}

impl Stored {
    /// The record id.
    pub fn id(&self) -> u64 {
        match self {
            Stored::Disk(id) | Stored::Memory { id, .. } => *id,
        }
    }
}

/// What opening found.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Batches still to be sent to at least one destination.
    pub pending: usize,
    /// Segments whose tail was cut off, with the bytes removed.
    pub truncated: Vec<(PathBuf, u64)>,
}

/// The spool. Cheap to share behind an `Arc`.
pub struct Spool {
    /// Never held across `fdatasync` of a record (the committer syncs a
    /// clone); only the writer, the senders and the watchdog's check take
    /// it, never `/healthz` or shutdown.
    inner: Mutex<Inner>,
    /// Published after every change, for readers that must not wait on the disk.
    oldest_ms: AtomicI64,
    entries: AtomicUsize,
    live: watch::Sender<Option<Live>>,
    metrics: Metrics,
}

impl Spool {
    /// Opens or creates the spool for destinations `dests` (at most 32 keys;
    /// acknowledgements by keys not listed are ignored, so a new destination
    /// receives everything unsent).
    pub fn open(cfg: SpoolConfig, dests: Vec<u32>, metrics: Metrics) -> Result<(Spool, OpenReport), SpoolError> {
        let dir = cfg.dir.clone();
        let dir_err = |source| SpoolError::Dir { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let _ = std::fs::remove_file(dir.join(acks::NAME).with_extension("tmp"));
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            if let Some(first) = entry.file_name().to_str().and_then(segment::parse_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let (ack_log, ack_list) =
            AckLog::open(&dir).map_err(|source| SpoolError::File { file: dir.join(acks::NAME), source })?;

        let mut report = OpenReport::default();
        let mut entries = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut next_id = 1u64;
        let everyone = all_bits(dests.len());
        for &first in &firsts {
            let path = segment::path(&dir, first);
            let file_err = |source| SpoolError::File { file: path.clone(), source };
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(file_err)?;
            let scan = segment::scan(&file, first.max(next_id)).map_err(file_err)?;
            if scan.tail != Tail::Clean {
                let cut = scan.file_len - scan.valid_len;
                file.set_len(scan.valid_len).map_err(file_err)?;
                file.sync_all().map_err(file_err)?;
                tracing::warn!(file = %path.display(), bytes = cut, kind = ?scan.tail, records_kept = scan.records.len(), "spool: cut a damaged segment tail");
                metrics.spool_truncations.inc();
                report.truncated.push((path.clone(), cut));
            }
            for r in &scan.records {
                entries.insert(
                    r.id,
                    Entry { created_ms: r.created_ms, pending: everyone, loc: Loc::Disk { seg: first, meta: *r } },
                );
            }
            next_id = next_id.max(first).max(scan.records.last().map_or(0, |r| r.id + 1));
            segments.insert(first, Segment { bytes: scan.valid_len, live: scan.records.len(), reader: None });
        }
        // Records are acknowledged before their group commit: after a power
        // loss an acknowledgement may outlive its record. Ids are never
        // handed out again, so such an acknowledgement can never apply to
        // another batch.
        next_id = next_id.max(ack_list.iter().map(|a| a.id.saturating_add(1)).max().unwrap_or(0));
        for a in &ack_list {
            let Some(e) = entries.get_mut(&a.id) else { continue };
            if a.dest == DROPPED {
                e.pending = 0;
            } else if let Some(i) = dests.iter().position(|&d| d == a.dest) {
                e.pending &= !(1 << i);
            }
        }
        let mut inner = Inner {
            cursors: vec![0; dests.len()],
            cfg,
            dests,
            entries,
            segments,
            active: None,
            next_id,
            acks: ack_log,
            disk_bytes: 0,
            memory: 0,
            ack_error_logged: false,
            unsynced: Vec::new(),
            dir_dirty: false,
        };
        let done: Vec<u64> = inner.entries.iter().filter(|(_, e)| e.pending == 0).map(|(&id, _)| id).collect();
        for id in done {
            inner.forget(id);
        }
        // The newest segment stays, even if empty: its name carries next_id.
        let newest = inner.segments.keys().next_back().copied();
        let idle: Vec<u64> =
            inner.segments.iter().filter(|(&f, s)| s.live == 0 && Some(f) != newest).map(|(&f, _)| f).collect();
        for first in idle {
            inner.delete_segment(first);
        }
        if let Some(first) = newest {
            let path = segment::path(&inner.cfg.dir, first);
            let bytes = inner.segments.get(&first).map_or(0, |s| s.bytes);
            if bytes < inner.cfg.segment_bytes {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|source| SpoolError::File { file: path, source })?;
                inner.active = Some(Active { first_id: first, file, len: bytes });
            }
        }
        inner.disk_bytes = inner.segments.values().map(|s| s.bytes).sum();
        inner.compact_acks().map_err(|source| SpoolError::File { file: inner.cfg.dir.join(acks::NAME), source })?;
        inner.expire(tierwatch_protocol::now_ms(), &metrics);
        report.pending = inner.entries.len();
        let (live, _) = watch::channel(None);
        let spool = Spool {
            inner: Mutex::new(inner),
            oldest_ms: AtomicI64::new(0),
            entries: AtomicUsize::new(0),
            live,
            metrics,
        };
        spool.publish(&spool.lock());
        Ok((spool, report))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The index is plain data; after a panic elsewhere it is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.metrics.spool_bytes.set(inner.disk_bytes as i64);
        self.metrics.spool_batches.set(inner.entries.len() as i64);
        self.metrics.spool_memory_batches.set(inner.memory as i64);
        self.oldest_ms.store(inner.entries.values().next().map_or(0, |e| e.created_ms), Ordering::Relaxed);
        self.entries.store(inner.entries.len(), Ordering::Relaxed);
    }

    /// Takes and releases the lock: the watchdog's check that no write is
    /// stuck on a dead disk (which holds it).
    pub fn check_lock(&self) {
        drop(self.lock());
    }

    /// Creation time of the oldest unsent batch, ms since the epoch; 0 when none.
    pub fn oldest_unsent_ms(&self) -> i64 {
        self.oldest_ms.load(Ordering::Relaxed)
    }

    /// Receives every appended batch, newest only, for live-first sending.
    pub fn subscribe(&self) -> watch::Receiver<Option<Live>> {
        self.live.subscribe()
    }

    /// Stores a sealed batch and announces it to the senders. When the disk
    /// fails, the batch is kept in memory (bounded) and the error returned
    /// inside [`Stored::Memory`].
    pub fn append(&self, body: Bytes, created_ms: i64) -> Stored {
        let stored = {
            let mut inner = self.lock();
            inner.expire(tierwatch_protocol::now_ms(), &self.metrics);
            let id = inner.next_id;
            inner.next_id += 1;
            let everyone = all_bits(inner.dests.len());
            let stored = match inner.write(id, created_ms, &body, &self.metrics) {
                Ok((seg, meta)) => {
                    inner.entries.insert(id, Entry { created_ms, pending: everyone, loc: Loc::Disk { seg, meta } });
                    Stored::Disk(id)
                }
                Err(error) => {
                    SpoolWriteFailed { id, error: &error }.emit(&self.metrics);
                    if inner.memory >= inner.cfg.memory_batches.max(1) {
                        let oldest =
                            inner.entries.iter().find(|(_, e)| matches!(e.loc, Loc::Memory(_))).map(|(&i, _)| i);
                        if let Some(old) = oldest {
                            inner.forget(old);
                            BatchesDropped { reason: DropReason::Memory, count: 1, first: old, file: None }
                                .emit(&self.metrics);
                        }
                    }
                    inner.memory += 1;
                    inner.entries.insert(id, Entry { created_ms, pending: everyone, loc: Loc::Memory(body.clone()) });
                    Stored::Memory { id, error }
                }
            };
            self.publish(&inner);
            stored
        };
        self.live.send_replace(Some(Live { id: stored.id(), body }));
        stored
    }

    /// The oldest batch destination `dest` has not acknowledged, with its size.
    pub fn next_backlog(&self, dest: usize) -> Option<(u64, u64)> {
        let mut inner = self.lock();
        let bit = 1u32 << dest;
        let from = inner.cursors[dest];
        let found = inner.entries.range(from..).find(|(_, e)| e.pending & bit != 0).map(|(&id, e)| (id, e.size()));
        inner.cursors[dest] = found.map_or(inner.next_id, |(id, _)| id);
        found
    }

    /// True while `dest` still has to receive batch `id`.
    pub fn is_pending(&self, dest: usize, id: u64) -> bool {
        self.lock().entries.get(&id).is_some_and(|e| e.pending & (1 << dest) != 0)
    }

    /// The body of batch `id`, read back and checked; `None` when it is gone
    /// (acknowledged, dropped, or found damaged, which is counted and dropped).
    pub fn read(&self, id: u64) -> io::Result<Option<Bytes>> {
        let mut inner = self.lock();
        let (seg, meta) = match inner.entries.get(&id).map(|e| &e.loc) {
            None => return Ok(None),
            Some(Loc::Memory(b)) => return Ok(Some(b.clone())),
            Some(Loc::Disk { seg, meta }) => (*seg, *meta),
        };
        let path = segment::path(&inner.cfg.dir, seg);
        let Some(s) = inner.segments.get_mut(&seg) else { return Ok(None) };
        if s.reader.is_none() {
            s.reader = Some(File::open(&path)?);
        }
        let Some(file) = s.reader.as_ref() else { return Ok(None) };
        match segment::read_payload(file, &meta) {
            Ok(p) => Ok(Some(Bytes::from(p))),
            Err(segment::ReadError::Io(e)) => Err(e),
            Err(e @ segment::ReadError::Checksum { .. }) => {
                tracing::debug!(file = %path.display(), error = %e, "spool: checksum mismatch");
                if inner.drop_entry(id) {
                    BatchesDropped { reason: DropReason::Corrupt, count: 1, first: id, file: Some(&path) }
                        .emit(&self.metrics);
                }
                self.publish(&inner);
                Ok(None)
            }
        }
    }

    /// Records that `dest` has batch `id`; the batch goes once every destination has it.
    pub fn ack(&self, dest: usize, id: u64) {
        let mut inner = self.lock();
        inner.ack(dest, id);
        self.publish(&inner);
    }

    /// Drops batch `id` for `dest` because the collector refused it (4xx;
    /// the sender emits [`crate::events::PushRefused`], which counts it).
    pub fn refuse(&self, dest: usize, id: u64) {
        self.ack(dest, id);
    }

    /// Batches not yet acknowledged by every destination, as last published
    /// (no lock: `/healthz` and shutdown never wait on a write).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// True when everything was delivered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every record appended so far durable (`fdatasync`) without
    /// holding the index meanwhile: appends, reads and acknowledgements go
    /// on while the disk works. Segments closed since the last commit and a
    /// new segment's directory entry are synced first; what fails is kept
    /// for the next commit.
    pub fn commit(&self) -> io::Result<()> {
        let (active, closed, dir) = {
            let mut inner = self.lock();
            let active = match &inner.active {
                Some(a) => Some(a.file.try_clone()?),
                None => None,
            };
            let dir = std::mem::take(&mut inner.dir_dirty).then(|| inner.cfg.dir.clone());
            (active, std::mem::take(&mut inner.unsynced), dir)
        };
        let synced =
            closed.iter().try_for_each(File::sync_data).and_then(|()| dir.as_deref().map_or(Ok(()), index::sync_dir));
        if let Err(e) = synced {
            // Still to do: the next commit tries again.
            let mut inner = self.lock();
            inner.unsynced.extend(closed);
            inner.dir_dirty |= dir.is_some();
            return Err(e);
        }
        match active {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// True when closed segments or a new directory entry wait for a commit.
    pub fn needs_commit(&self) -> bool {
        let inner = self.lock();
        !inner.unsynced.is_empty() || inner.dir_dirty
    }

    /// Counts a commit that took `took`.
    pub fn commit_done(&self, took: Duration) {
        self.metrics.spool_commits.inc();
        self.metrics.spool_commit_seconds.inc_by(took.as_secs_f64());
    }

    /// When records reach the disk.
    pub fn fsync(&self) -> FsyncPolicy {
        self.lock().cfg.fsync
    }

    /// The longest a record waits for its commit.
    pub fn commit_interval(&self) -> Duration {
        self.lock().cfg.commit_interval
    }

    /// The spool's directory.
    pub fn dir(&self) -> PathBuf {
        self.lock().cfg.dir.clone()
    }

    /// Flushes the current segment to disk (on shutdown).
    pub fn close(&self) -> io::Result<()> {
        self.commit()
    }
}

#[cfg(test)]
mod tests;
