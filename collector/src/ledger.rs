//! The exactly-once ledger: which batches of which agent boot were stored.
//!
//! A batch is identified by (node, boot id, sequence). The ledger keeps,
//! per node and boot, the set of sequences stored ([`SeqSet`]: a high-water
//! mark with the gaps a live-first replay leaves below it). A batch already
//! in the set is acknowledged as a duplicate and stored nothing.
//!
//! One thread owns the database connection. Pushes queue jobs to it (a
//! bounded tokio channel: a push waits for room without leaving the
//! runtime); it takes every job waiting, checks each against the ledger,
//! and commits the ledger rows and the remote_write queue rows of the new
//! batches in one transaction (group commit): a batch counts as stored only
//! once both are durable, and only then is the agent acknowledged. The
//! collector's own detections are stored in the same group commits, so
//! the security events table has one writer.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{params, Connection};
use tierwatch_protocol::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::db::{self, DbError};
use crate::metrics::Metrics;
use crate::remote_write::queue::{self, QueueState};
use crate::seqset::SeqSet;

/// Boots remembered per node; the least recent go first beyond this.
pub(crate) const MAX_BOOTS_PER_NODE: usize = 256;
/// Jobs committed together at most.
const MAX_GROUP: usize = 256;

/// A batch to record.
pub(crate) struct Job {
    pub node: NodeId,
    pub boot: Vec<u8>,
    pub sequence: u64,
    pub created_ms: i64,
    /// Encoded remote_write request and its sample count, when receivers are configured.
    pub write: Option<(Vec<u8>, u64)>,
    /// Its security events, stored with it.
    pub events: Vec<tierwatch_protocol::Event>,
}

/// What the ledger decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// New: recorded and queued.
    Stored,
    /// Seen before: nothing done.
    Duplicate,
}

/// Why a batch could not be recorded (the push gets a 503 and is retried).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error("state database: {0}")]
    Db(String),
    #[error("the ledger has stopped")]
    Stopped,
}

/// A remote_write queue the ledger fills.
#[derive(Clone)]
pub(crate) struct QueueSpec {
    pub name: String,
    pub max_bytes: u64,
    pub state: Arc<QueueState>,
}

struct Boot {
    seen: SeqSet,
    max_created_ms: i64,
}

type Reply = oneshot::Sender<Result<Outcome, LedgerError>>;

/// What the ledger thread is asked to store.
enum Work {
    /// An agent's batch, answered once durable.
    Batch(Job, Reply),
    /// Security events the collector found itself, about `node`.
    Events(NodeId, Vec<tierwatch_protocol::Event>),
}
/// (node, boot id).
type BootKey = (String, Vec<u8>);

/// Handle to the ledger thread.
#[derive(Clone)]
pub(crate) struct Ledger {
    tx: mpsc::Sender<Work>,
}

/// The thread itself, joined on shutdown.
pub(crate) struct LedgerThread(JoinHandle<()>);

impl LedgerThread {
    /// Waits until the thread has committed its last group and closed the database.
    pub(crate) fn join(self) {
        let _ = self.0.join();
    }
}

impl Ledger {
    /// Opens the database in `state_dir`, loads the ledger and starts the thread.
    /// `max_age_ms` is the ingest age limit: a boot whose newest stored batch
    /// is older can send nothing acceptable, so it is forgotten.
    pub(crate) fn open(
        state_dir: &Path,
        queues: Vec<QueueSpec>,
        max_age_ms: i64,
        events_per_node: usize,
        metrics: Metrics,
    ) -> Result<(Ledger, LedgerThread), DbError> {
        let conn = db::open(state_dir)?;
        let file = state_dir.join(db::FILE);
        let err = |source| DbError::Sqlite { file: file.clone(), source };
        let names: Vec<String> = queues.iter().map(|q| q.name.clone()).collect();
        let purged = queue::purge_others(&conn, &names).map_err(err)?;
        if purged > 0 {
            tracing::warn!(rows = purged, "remote_write: dropped queued rows of receivers no longer configured");
        }
        for q in &queues {
            queue::load_totals(&conn, &q.name, &q.state).map_err(err)?;
        }
        let mut boots: HashMap<BootKey, Boot> = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT node, boot, ranges, max_created_ms FROM ledger").map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?))
                })
                .map_err(err)?;
            for row in rows {
                let (node, boot, ranges, max_created_ms) = row.map_err(err)?;
                match SeqSet::decode(&ranges) {
                    Some(seen) => {
                        boots.insert((node, boot), Boot { seen, max_created_ms });
                    }
                    None => {
                        tracing::error!(node = %node, "ledger: undecodable row ignored; that boot's batches may be stored again")
                    }
                }
            }
        }
        let event_rows = crate::security::rows_per_node(&conn).map_err(err)?;
        tracing::info!(boots = boots.len(), file = %file.display(), "ledger loaded");
        metrics.ledger_boots.set(boots.len() as i64);
        let (tx, rx) = mpsc::channel(4096);
        let mut worker = Worker {
            conn,
            boots,
            queues,
            max_age_ms,
            metrics,
            last_prune: Instant::now(),
            events_per_node,
            event_rows,
        };
        let handle = std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || worker.run(rx))
            .map_err(|source| DbError::Dir { dir: state_dir.to_path_buf(), source })?;
        Ok((Ledger { tx }, LedgerThread(handle)))
    }

    /// Records a batch; resolves once the decision is durable.
    pub(crate) async fn record(&self, job: Job) -> Result<Outcome, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Work::Batch(job, reply)).await.map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Stores security events the collector found about `node` with the
    /// next group commit. Never waits: with the queue full the events wait
    /// in a task of their own (on the runtime it is called from).
    pub(crate) fn record_events(
        &self,
        node: NodeId,
        events: Vec<tierwatch_protocol::Event>,
    ) -> Result<(), LedgerError> {
        match self.tx.try_send(Work::Events(node, events)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(LedgerError::Stopped),
            Err(mpsc::error::TrySendError::Full(work)) => {
                let handle = tokio::runtime::Handle::try_current().map_err(|_| LedgerError::Stopped)?;
                let tx = self.tx.clone();
                handle.spawn(async move {
                    if tx.send(work).await.is_err() {
                        tracing::error!("ledger stopped: a collector security event was not stored");
                    }
                });
                Ok(())
            }
        }
    }
}

struct Worker {
    conn: Connection,
    boots: HashMap<BootKey, Boot>,
    queues: Vec<QueueSpec>,
    max_age_ms: i64,
    metrics: Metrics,
    last_prune: Instant,
    /// Security events kept per node.
    events_per_node: usize,
    /// Security events stored per node (rows in the table).
    event_rows: HashMap<String, usize>,
}

impl Worker {
    fn run(&mut self, mut rx: mpsc::Receiver<Work>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => group.push(j),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = self.commit(&group);
            self.metrics.ledger_commit_seconds.observe(started.elapsed().as_secs_f64());
            let replies = group.into_iter().filter_map(|w| match w {
                Work::Batch(_, reply) => Some(reply),
                Work::Events(..) => None,
            });
            match result {
                Ok(outcomes) => {
                    for (reply, o) in replies.zip(outcomes) {
                        let _ = reply.send(Ok(o));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "ledger: commit failed; pushes will be retried, the collector's own events of this group are lost");
                    // The queue counters moved with rows that were rolled back.
                    self.reload_queue_totals();
                    for reply in replies {
                        let _ = reply.send(Err(LedgerError::Db(e.to_string())));
                    }
                }
            }
            if self.last_prune.elapsed().as_secs() >= 60 {
                self.last_prune = Instant::now();
                if let Err(e) = self.prune(tierwatch_protocol::now_ms()) {
                    tracing::warn!(error = %e, "ledger: pruning old boots failed");
                }
            }
        }
        tracing::debug!("ledger thread stopped");
    }

    /// One transaction for the group; memory is updated only after it
    /// commits. The outcomes are the batches', in order.
    fn commit(&mut self, group: &[Work]) -> rusqlite::Result<Vec<Outcome>> {
        let tx = self.conn.transaction()?;
        let now_ms = tierwatch_protocol::now_ms();
        let mut staged: HashMap<BootKey, Boot> = HashMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut added = vec![false; self.queues.len()];
        let mut inserted: Vec<(&str, usize)> = Vec::new();
        for work in group {
            let job = match work {
                Work::Batch(job, _) => job,
                Work::Events(node, events) => {
                    crate::security::insert(&tx, node, events, now_ms)?;
                    inserted.push((node.as_str(), events.len()));
                    continue;
                }
            };
            let key = (job.node.as_str().to_string(), job.boot.clone());
            let boot = staged.entry(key.clone()).or_insert_with(|| match self.boots.get(&key) {
                Some(b) => Boot { seen: b.seen.clone(), max_created_ms: b.max_created_ms },
                None => Boot { seen: SeqSet::default(), max_created_ms: i64::MIN },
            });
            if !boot.seen.insert(job.sequence) {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            boot.max_created_ms = boot.max_created_ms.max(job.created_ms);
            if let Some((body, samples)) = &job.write {
                for (i, q) in self.queues.iter().enumerate() {
                    let (rows, dropped, of) = queue::trim(&tx, &q.name, &q.state, body.len() as u64, q.max_bytes)?;
                    if rows > 0 {
                        self.metrics.remote_write_samples(&q.name, "dropped", dropped);
                        let nodes = of.join(",");
                        tracing::warn!(remote = %q.name, rows, samples = dropped, nodes = %nodes, "remote_write queue full: dropped the oldest of the node holding the most");
                    }
                    queue::push(&tx, &q.name, &q.state, job.node.as_str(), job.created_ms, *samples, body)?;
                    added[i] = true;
                }
            }
            if !job.events.is_empty() {
                crate::security::insert(&tx, &job.node, &job.events, now_ms)?;
                inserted.push((job.node.as_str(), job.events.len()));
            }
            outcomes.push(Outcome::Stored);
        }
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO ledger (node, boot, ranges, max_created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (node, boot) DO UPDATE SET ranges = excluded.ranges, max_created_ms = excluded.max_created_ms",
            )?;
            for ((node, boot), b) in &staged {
                up.execute(params![node, boot, b.seen.encode(), b.max_created_ms])?;
            }
        }
        tx.commit()?;
        for (key, b) in staged {
            self.boots.insert(key, b);
        }
        for (node, n) in inserted {
            let rows = self.event_rows.entry(node.to_string()).or_default();
            *rows += n;
            if *rows > self.events_per_node {
                // Over its share: its own oldest go, right away.
                match crate::security::prune_node(&self.conn, node, self.events_per_node) {
                    Ok(deleted) => {
                        *rows = rows.saturating_sub(deleted);
                        tracing::warn!(
                            node,
                            deleted,
                            keep = self.events_per_node,
                            "security: node over its share of stored events; its oldest deleted"
                        );
                    }
                    Err(e) => tracing::warn!(node, error = %e, "security: pruning a node's events failed"),
                }
            }
        }
        for (q, added) in self.queues.iter().zip(added) {
            if added {
                q.state.added.notify_one();
            }
        }
        self.metrics.ledger_boots.set(self.boots.len() as i64);
        Ok(outcomes)
    }

    /// Reads every queue's totals again from the database: after a group
    /// failed anywhere, the counters raised or lowered for its rows are off.
    fn reload_queue_totals(&self) {
        for q in &self.queues {
            if let Err(e) = queue::load_totals(&self.conn, &q.name, &q.state) {
                tracing::warn!(remote = %q.name, error = %e, "remote_write: re-reading the queue totals failed");
            }
        }
    }

    /// Forgets boots that can send nothing acceptable any more, and the
    /// least recent beyond [`MAX_BOOTS_PER_NODE`] per node.
    fn prune(&mut self, now_ms: i64) -> rusqlite::Result<()> {
        let events = crate::security::prune(&self.conn, now_ms)?;
        if events > 0 {
            tracing::info!(events, "security: deleted events past their retention");
            self.event_rows = crate::security::rows_per_node(&self.conn)?;
        }
        let cutoff = now_ms - self.max_age_ms;
        let mut gone: HashSet<BootKey> =
            self.boots.iter().filter(|(_, b)| b.max_created_ms < cutoff).map(|(k, _)| k.clone()).collect();
        let mut per_node: HashMap<&str, Vec<(i64, &BootKey)>> = HashMap::new();
        for (k, b) in &self.boots {
            per_node.entry(k.0.as_str()).or_default().push((b.max_created_ms, k));
        }
        for (_, mut v) in per_node {
            if v.len() > MAX_BOOTS_PER_NODE {
                v.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
                gone.extend(v.into_iter().skip(MAX_BOOTS_PER_NODE).map(|(_, k)| k.clone()));
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for (node, boot) in &gone {
            tx.execute("DELETE FROM ledger WHERE node = ?1 AND boot = ?2", params![node, boot])?;
        }
        tx.commit()?;
        for k in &gone {
            self.boots.remove(k);
        }
        tracing::info!(boots = gone.len(), "ledger: forgot old agent boots");
        self.metrics.ledger_boots.set(self.boots.len() as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(node: &str, boot: u8, seq: u64) -> Job {
        Job {
            node: NodeId::new(node).unwrap(),
            boot: vec![boot; 16],
            sequence: seq,
            created_ms: tierwatch_protocol::now_ms(),
            write: Some((vec![1, 2, 3], 1)),
            events: Vec::new(),
        }
    }

    #[tokio::test]
    async fn duplicates_are_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let q = || QueueSpec { name: "prom".into(), max_bytes: 1 << 20, state: Arc::new(QueueState::default()) };
        let m = Metrics::new(&["prom".to_string()]).unwrap();
        let (l, t) = Ledger::open(dir.path(), vec![q()], 86_400_000, 10_000, m.clone()).unwrap();
        assert_eq!(l.record(job("c", 1, 5)).await.unwrap(), Outcome::Stored);
        assert_eq!(l.record(job("c", 1, 5)).await.unwrap(), Outcome::Duplicate);
        assert_eq!(l.record(job("c", 2, 5)).await.unwrap(), Outcome::Stored, "another boot");
        assert_eq!(l.record(job("d", 1, 5)).await.unwrap(), Outcome::Stored, "another node");
        drop(l);
        t.join();
        let spec = q();
        let (l, _t) = Ledger::open(dir.path(), vec![spec.clone()], 86_400_000, 10_000, m).unwrap();
        assert_eq!(spec.state.rows.load(std::sync::atomic::Ordering::Relaxed), 3, "queued rows survive");
        assert_eq!(l.record(job("c", 1, 5)).await.unwrap(), Outcome::Duplicate);
        assert_eq!(l.record(job("c", 1, 4)).await.unwrap(), Outcome::Stored);
    }

    #[tokio::test]
    async fn concurrent_copies_of_one_batch_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(&[]).unwrap();
        let (l, _t) = Ledger::open(dir.path(), vec![], 86_400_000, 10_000, m).unwrap();
        let l = Arc::new(l);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move { l.record(job("c", 9, 1)).await.unwrap() }));
        }
        let mut stored = 0;
        for t in tasks {
            if t.await.unwrap() == Outcome::Stored {
                stored += 1;
            }
        }
        assert_eq!(stored, 1);
    }
}
