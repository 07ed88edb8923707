//! Collects probe outcomes and seals them into batches every push interval.
//! It owns the boot id and the sequence numbers. Every measurement goes to
//! the spool's journal as it is taken, so none is lost to a crash. An empty batch is still
//! sealed: it is the node's heartbeat. A probe whose result flips (up to
//! down, or back) is sealed at once, so the collector can page within the
//! round trip, not a push interval later.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tierwatch_protocol::{Batch, Event, Series, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::probe::Outcome;
use crate::spool::journal;
use crate::spool::writer::Command;
use crate::spool::Spool;

/// What flows from the measuring tasks to the batcher: its inbox.
#[derive(Debug, Clone)]
pub enum Measurement {
    /// One probe run of a target.
    Probe(Outcome),
    /// One sample of the node's health.
    Node(Vec<Series>),
    /// A security event from a sensor.
    Event(tierwatch_protocol::Event),
}

/// Identity stamped on every batch of this agent process.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub node_id: String,
    pub boot_id: [u8; 16],
    pub config_hash: [u8; 32],
    /// Announced in every batch, for the collector's heartbeat.
    pub push_interval: Duration,
}

/// The envelope of batch `sequence`: everything but its content.
pub fn envelope(stamp: &Stamp, sequence: u64) -> Batch {
    Batch {
        version: PROTOCOL_VERSION,
        node_id: stamp.node_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_id: stamp.boot_id.to_vec(),
        sequence,
        config_hash: stamp.config_hash.to_vec(),
        created_ms: 0,
        series: Vec::new(),
        events: Vec::new(),
        push_interval_ms: stamp.push_interval.as_millis().min(u32::MAX as u128) as u32,
    }
}

/// Seals batches from `results` into the spool through its `writer`, which
/// journals every measurement as it is taken (batch 1's journal was opened
/// on [`envelope`]`(stamp, 1)`), until `token` is cancelled and the results
/// channel is drained; the last partial batch is sealed too. Each batch also
/// carries the agent's own metrics at sealing time. Never waits on the disk
/// itself: only when the writer's queue is full.
pub async fn run(
    stamp: Stamp,
    push_interval: Duration,
    mut results: mpsc::Receiver<Measurement>,
    writer: mpsc::Sender<Command>,
    spool: Arc<Spool>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let mut b = Open { stamp, sequence: 1, pending: Vec::new(), events: Vec::new(), writer, spool, metrics };
    let mut tick = tokio::time::interval(push_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick fires at once
    loop {
        tokio::select! {
            r = results.recv() => match r {
                Some(m) => {
                    // A flipped probe or a security event worth an alert goes out at once.
                    let urgent = match &m {
                        Measurement::Probe(o) => {
                            o.flipped
                                || o.events.iter().any(|e| e.severity > tierwatch_protocol::Severity::Info as i32)
                        }
                        Measurement::Node(_) => false,
                        Measurement::Event(e) => e.severity > tierwatch_protocol::Severity::Info as i32,
                    };
                    b.take(m).await;
                    if urgent {
                        b.seal().await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => b.seal().await,
            _ = token.cancelled() => {
                // Probes finishing their round still deliver; then seal what is left.
                results.close();
                while let Some(m) = results.recv().await {
                    b.take(m).await;
                }
                break;
            }
        }
    }
    if !b.pending.is_empty() || !b.events.is_empty() {
        b.seal().await;
    }
}

/// The batch being filled.
struct Open {
    stamp: Stamp,
    sequence: u64,
    pending: Vec<Series>,
    events: Vec<Event>,
    writer: mpsc::Sender<Command>,
    spool: Arc<Spool>,
    metrics: Metrics,
}

impl Open {
    /// Adds a measurement, journaled before the next one is taken.
    async fn take(&mut self, m: Measurement) {
        let (series, events): (Vec<Series>, Vec<Event>) = match m {
            Measurement::Probe(outcome) => {
                // An early report is news of a run still going, not a run.
                if !outcome.early {
                    self.metrics.probe(outcome.kind.as_str(), outcome.success);
                }
                (outcome.series, outcome.events)
            }
            Measurement::Node(series) => (series, Vec::new()),
            Measurement::Event(e) => (Vec::new(), vec![e]),
        };
        let fragment = journal::fragment(&series, &events);
        let at_ms = tierwatch_protocol::now_ms();
        if self.writer.send(Command::Add { fragment, at_ms }).await.is_err() {
            tracing::error!("spool writer stopped; measurements are kept in memory only");
        }
        self.pending.extend(series);
        self.events.extend(events);
    }

    /// Seals the open batch and hands it to the writer; the next one opens.
    async fn seal(&mut self) {
        let now = tierwatch_protocol::now_ms();
        self.metrics.refresh(self.spool.oldest_unsent_ms(), now);
        let mut batch = envelope(&self.stamp, self.sequence);
        batch.created_ms = now;
        batch.series = std::mem::take(&mut self.pending);
        batch.series.extend(self.metrics.snapshot(now));
        batch.events = std::mem::take(&mut self.events);
        let body = Bytes::from(batch.encode_to_vec());
        let sequence = self.sequence;
        self.sequence += 1;
        let next = envelope(&self.stamp, self.sequence).encode_to_vec();
        if let Err(e) = self.writer.send(Command::Seal { body, created_ms: now, sequence, next }).await {
            // The writer thread is gone (it panicked): append directly, as
            // the spool always can, so no batch is lost; only the journal is.
            let Command::Seal { body, .. } = e.0 else { return };
            let s = self.spool.clone();
            tracing::error!(sequence, "spool writer stopped; batch appended without it");
            if tokio::task::spawn_blocking(move || s.append(body, now)).await.is_err() {
                tracing::error!(sequence, "spool task failed; batch lost");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Outcome;
    use crate::probe::ProbeKind;

    fn outcome(early: bool) -> Outcome {
        let mut o = Outcome::new("provincial-gateway".into(), ProbeKind::Icmp, false);
        (o.error, o.early) = (Some("silent".into()), early);
        o
    }

    #[tokio::test]
    async fn an_early_report_is_not_counted_as_a_run_and_each_measurement_is_journaled() {
        let metrics = Metrics::new(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::spool::SpoolConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            segment_bytes: 1 << 16,
            fsync: crate::spool::FsyncPolicy::Never,
            commit_interval: Duration::from_secs(1),
            memory_batches: 4,
        };
        let (spool, _) = Spool::open(cfg, vec![0], metrics.clone()).unwrap();
        let (writer, mut journaled) = mpsc::channel(16);
        let stamp = Stamp {
            node_id: "n".into(),
            boot_id: [1; 16],
            config_hash: [2; 32],
            push_interval: Duration::from_secs(1),
        };
        let mut b = Open {
            stamp,
            sequence: 1,
            pending: Vec::new(),
            events: Vec::new(),
            writer,
            spool: Arc::new(spool),
            metrics: metrics.clone(),
        };
        b.take(Measurement::Probe(outcome(true))).await;
        b.take(Measurement::Probe(outcome(false))).await;
        let runs: f64 = metrics
            .snapshot(0)
            .iter()
            .filter(|s| s.name == "tierwatch_agent_probes_total")
            .filter(|s| s.labels.iter().any(|l| l.name == "result" && l.value == "failure"))
            .flat_map(|s| s.points.iter().map(|p| p.value))
            .sum();
        assert_eq!(runs, 1.0);
        for _ in 0..2 {
            assert!(
                matches!(journaled.try_recv(), Ok(Command::Add { .. })),
                "each measurement goes to the journal at once"
            );
        }
        b.seal().await;
        match journaled.try_recv() {
            Ok(Command::Seal { sequence: 1, next, .. }) => {
                assert_eq!(Batch::decode(next.as_slice()).unwrap().sequence, 2)
            }
            other => panic!("{other:?}"),
        }
    }
}
