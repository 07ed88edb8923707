//! The spool's two threads: the writer, the one place that writes the open
//! batch's journal and seals batches into the spool, and the committer, the
//! one place that waits for `fdatasync`.
//!
//! The batcher hands each measurement to the writer as it takes it, so what
//! was measured is in the kernel's hands within moments, and a `kill -9`
//! loses none of it. The writer never syncs: an urgent batch (a failing
//! probe) goes to the senders as soon as it is written, never behind another
//! batch's `fdatasync`. With `fsync: always` the committer syncs the segment
//! and the journal at most every `commit_interval`, then removes the
//! journals of batches sealed before that sync.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;

use super::journal::{self, Journal};
use super::{FsyncPolicy, Spool, Stored};
use crate::events::{InternalEvent, JournalWriteFailed};
use crate::metrics::Metrics;

/// What the batcher asks of the writer, in order.
#[derive(Debug)]
pub enum Command {
    /// One measurement of the open batch ([`journal::fragment`]).
    Add { fragment: Vec<u8>, at_ms: i64 },
    /// The open batch, sealed as `body`; `next` is the envelope of the batch opened after it.
    Seal { body: Bytes, created_ms: i64, sequence: u64, next: Vec<u8> },
}

/// How many commands may wait for the disk before the batcher waits too.
pub const QUEUE: usize = 4096;

#[derive(Default)]
struct Pending {
    /// The journal being written, for the committer's sync.
    journal: Option<File>,
    /// Journals whose batch was sealed: removed once the next commit is done.
    retired: Vec<PathBuf>,
    dirty: bool,
    /// A journal was created since the last commit: the directory needs a sync.
    created: bool,
    stop: bool,
}

struct Committer {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Committer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running threads; [`Threads::finish`] waits for them once the batcher dropped its sender.
pub struct Threads {
    writer: JoinHandle<()>,
}

impl Threads {
    /// Blocks until every command was written and the last commit done.
    pub fn finish(self) {
        let _ = self.writer.join();
    }
}

/// Reseals the journals an earlier run left open (each under its own boot
/// id and sequence) into `spool`, and returns the next free journal
/// generation. Blocks on the disk.
pub fn recover(spool: &Spool, metrics: &Metrics) -> io::Result<u64> {
    let dir = spool.dir();
    let (found, next) = journal::recover(&dir)?;
    let mut resealed = Vec::new();
    for r in found {
        if r.undecodable {
            // Kept aside for a look, out of the way of the next start.
            let aside = r.path.with_extension("jnl.damaged");
            tracing::error!(file = %r.path.display(), moved_to = %aside.display(), measurements = r.measurements, "spool: a journal left open does not decode; its measurements are lost");
            let _ = std::fs::rename(&r.path, &aside);
            continue;
        }
        if let Some(batch) = &r.batch {
            let body = Bytes::from(batch.encode_to_vec());
            let stored = spool.append(body, batch.created_ms);
            let boot = tierwatch_protocol::ids::hex(&batch.boot_id);
            if let Stored::Memory { .. } = stored {
                // The disk refuses writes: keep the journal for a later start.
                continue;
            }
            tracing::debug!(sequence = batch.sequence, id = stored.id(), boot_id = %boot, resealed = true, "batch spooled");
            tracing::info!(
                file = %r.path.display(),
                measurements = r.measurements,
                sequence = batch.sequence,
                boot_id = %boot,
                cut_bytes = r.cut,
                "spool: resealed the batch an earlier run left open"
            );
            metrics.spool_resealed.inc();
        }
        resealed.push(r.path);
    }
    if spool.fsync() == FsyncPolicy::Always {
        if let Err(e) = spool.commit() {
            // The journals stay: resealed (and recognised as copies) next time.
            tracing::error!(error = %e, "spool: fdatasync of resealed batches failed");
            return Ok(next);
        }
    }
    for p in resealed {
        remove(&p);
    }
    Ok(next)
}

fn remove(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %e, "spool: could not remove a sealed batch's journal");
        }
    }
}

/// Starts the writer (and with `fsync: always` the committer) on `spool`,
/// with journal generation `generation` opened on envelope `header`.
/// `boot` is the boot id in hex, for the log.
pub fn start(
    spool: Arc<Spool>,
    generation: u64,
    header: Vec<u8>,
    boot: String,
    metrics: Metrics,
) -> io::Result<(mpsc::Sender<Command>, Threads)> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let committer = Arc::new(Committer { pending: Mutex::new(Pending::default()), wake: Condvar::new() });
    let commit_thread = if spool.fsync() == FsyncPolicy::Always {
        let (c, s, interval) = (committer.clone(), spool.clone(), spool.commit_interval());
        Some(std::thread::Builder::new().name("spool-commit".into()).spawn(move || commit_loop(&c, &s, interval))?)
    } else {
        None
    };
    let writer = std::thread::Builder::new().name("spool-write".into()).spawn(move || {
        let mut w = Writer { spool, generation, journal: None, committer, metrics, boot, failing: false };
        w.open(&header);
        write_loop(&mut w, rx);
        w.close(commit_thread);
    })?;
    Ok((tx, Threads { writer }))
}

struct Writer {
    spool: Arc<Spool>,
    generation: u64,
    journal: Option<Journal>,
    committer: Arc<Committer>,
    metrics: Metrics,
    boot: String,
    /// Logged once per spell of failures.
    failing: bool,
}

impl Writer {
    fn failed(&mut self, error: &io::Error, what: &'static str) {
        JournalWriteFailed { error, what, first: !self.failing }.emit(&self.metrics);
        self.failing = true;
    }

    /// Starts the next journal with `header`.
    fn open(&mut self, header: &[u8]) {
        let now = tierwatch_protocol::now_ms();
        match Journal::create(&self.spool.dir(), self.generation, header, now) {
            Ok(j) => {
                self.generation += 1;
                let handle = j.handle().ok();
                self.journal = Some(j);
                let mut p = self.committer.lock();
                (p.journal, p.dirty, p.created) = (handle, true, true);
            }
            Err(e) => self.failed(&e, "starting"),
        }
    }

    fn add(&mut self, fragment: &[u8], at_ms: i64) {
        // Nothing measured (an empty sample): nothing to keep.
        let Some(j) = self.journal.as_mut().filter(|_| !fragment.is_empty()) else { return };
        match j.add(fragment, at_ms) {
            Ok(()) => {
                self.failing = false;
                self.committer.lock().dirty = true;
            }
            Err(e) => self.failed(&e, "appending to"),
        }
    }

    fn seal(&mut self, body: Bytes, created_ms: i64, sequence: u64, next: &[u8]) {
        let stored = self.spool.append(body, created_ms);
        match &stored {
            Stored::Disk(id) => tracing::debug!(sequence, id, boot_id = %self.boot, "batch spooled"),
            // The spool logged and counted the failure; the journal stays for the next start.
            Stored::Memory { id, .. } => {
                tracing::debug!(sequence, id, "batch kept in memory");
                self.journal = None;
                self.open(next);
                return;
            }
        }
        let old = self.journal.take();
        self.open(next);
        if let Some(old) = old {
            if self.spool.fsync() == FsyncPolicy::Always {
                let mut p = self.committer.lock();
                p.retired.push(old.path().to_path_buf());
                p.dirty = true;
            } else {
                remove(old.path());
            }
        }
    }

    fn close(mut self, commit_thread: Option<JoinHandle<()>>) {
        // The batcher sealed everything before it let go: an envelope alone is nothing to keep.
        if let Some(j) = self.journal.take() {
            if j.measurements() == 0 {
                self.committer.lock().retired.push(j.path().to_path_buf());
            }
        }
        match commit_thread {
            Some(t) => {
                self.committer.lock().stop = true;
                self.committer.wake.notify_all();
                let _ = t.join();
            }
            None => {
                for p in std::mem::take(&mut self.committer.lock().retired) {
                    remove(&p);
                }
            }
        }
    }
}

fn write_loop(w: &mut Writer, mut rx: mpsc::Receiver<Command>) {
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Command::Add { fragment, at_ms } => w.add(&fragment, at_ms),
            Command::Seal { body, created_ms, sequence, next } => w.seal(body, created_ms, sequence, &next),
        }
    }
}

fn commit_loop(c: &Committer, spool: &Spool, interval: Duration) {
    loop {
        let (journal, created, retired, stop) = {
            let mut p = c.lock();
            if !p.stop {
                p = c.wake.wait_timeout(p, interval).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
            // Segments rotated by a direct append (no journal) need it too.
            if !p.dirty && !p.stop && !spool.needs_commit() {
                continue;
            }
            p.dirty = false;
            let journal = p.journal.as_ref().and_then(|f| f.try_clone().ok());
            (journal, std::mem::take(&mut p.created), std::mem::take(&mut p.retired), p.stop)
        };
        let started = std::time::Instant::now();
        let done = spool
            .commit()
            .and_then(|()| journal.as_ref().map_or(Ok(()), File::sync_data))
            // A new journal's directory entry, so power loss cannot lose the file itself.
            .and_then(|()| if created { File::open(spool.dir())?.sync_all() } else { Ok(()) });
        match done {
            Ok(()) => {
                spool.commit_done(started.elapsed());
                // Their batches are on disk now.
                for p in &retired {
                    remove(p);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool: fdatasync failed; what was written is in the page cache only");
                // Kept: resealed (and recognised as copies) if the machine loses power.
                let mut p = c.lock();
                p.retired.extend(retired);
                p.created |= created;
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;
    use tierwatch_protocol::{Batch, Point, Series};

    fn spool(dir: &std::path::Path, fsync: FsyncPolicy, metrics: &Metrics) -> Arc<Spool> {
        let cfg = SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            segment_bytes: 1 << 16,
            fsync,
            commit_interval: Duration::from_millis(20),
            memory_batches: 4,
        };
        Arc::new(Spool::open(cfg, vec![0], metrics.clone()).unwrap().0)
    }

    fn envelope(sequence: u64) -> Vec<u8> {
        Batch { node_id: "nui-cam".into(), boot_id: vec![3; 16], sequence, ..Default::default() }.encode_to_vec()
    }

    fn measurement(v: f64) -> Command {
        let s = Series {
            name: "tierwatch_probe_success".into(),
            points: vec![Point { timestamp_ms: 5, value: v }],
            ..Default::default()
        };
        Command::Add { fragment: journal::fragment(&[s], &[]), at_ms: tierwatch_protocol::now_ms() }
    }

    fn journals(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".jnl"))
            .count()
    }

    /// What was measured but not sealed when the writer stopped (as a crash
    /// stops it) is resealed at the next start, under its own identity.
    #[test]
    fn an_open_batch_left_behind_is_resealed_once() {
        for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
            let dir = tempfile::tempdir().unwrap();
            let metrics = Metrics::new(&[]).unwrap();
            let s = spool(dir.path(), fsync, &metrics);
            let (tx, threads) = start(s.clone(), 1, envelope(1), "03".into(), metrics.clone()).unwrap();
            tx.blocking_send(measurement(1.0)).unwrap();
            let sealed = Batch { sequence: 1, ..Default::default() }.encode_to_vec();
            tx.blocking_send(Command::Seal {
                body: sealed.into(),
                created_ms: tierwatch_protocol::now_ms(),
                sequence: 1,
                next: envelope(2),
            })
            .unwrap();
            tx.blocking_send(measurement(0.0)).unwrap();
            tx.blocking_send(measurement(1.0)).unwrap();
            drop(tx);
            threads.finish();
            assert_eq!(s.len(), 1);
            assert_eq!(journals(dir.path()), 1, "{fsync:?}: batch 1's journal is gone, batch 2's is left open");
            drop(s);

            let s = spool(dir.path(), fsync, &metrics);
            let next = recover(&s, &metrics).unwrap();
            assert_eq!(next, 3);
            assert_eq!((s.len(), journals(dir.path())), (2, 0));
            let (id, _) = {
                s.next_backlog(0);
                s.next_backlog(0).unwrap()
            };
            let mut last = None;
            let mut cursor = Some(id);
            while let Some(i) = cursor {
                last = s.read(i).unwrap();
                s.ack(0, i);
                cursor = s.next_backlog(0).map(|(i, _)| i);
            }
            let b = Batch::decode(last.unwrap()).unwrap();
            assert_eq!((b.sequence, b.boot_id.as_slice(), b.series.len()), (2, &[3u8; 16][..], 2));
            assert_eq!(metrics.spool_resealed.get(), 1);
        }
    }

    /// A clean stop leaves no journal: the last batch was sealed.
    #[test]
    fn a_clean_stop_leaves_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new(&[]).unwrap();
        let s = spool(dir.path(), FsyncPolicy::Always, &metrics);
        let (tx, threads) = start(s.clone(), 1, envelope(1), "03".into(), metrics.clone()).unwrap();
        tx.blocking_send(measurement(1.0)).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(metrics.spool_commits.get() >= 1, "a measurement is committed within the interval");
        let body = Batch { sequence: 1, ..Default::default() }.encode_to_vec();
        tx.blocking_send(Command::Seal {
            body: body.into(),
            created_ms: tierwatch_protocol::now_ms(),
            sequence: 1,
            next: envelope(2),
        })
        .unwrap();
        drop(tx);
        threads.finish();
        assert_eq!((s.len(), journals(dir.path())), (1, 0));
    }
}
