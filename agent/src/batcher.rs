//! Collects probe outcomes and seals them into batches every push interval.
//! It owns the boot id and the sequence numbers. An empty batch is still
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
use crate::spool::{Spool, Stored};

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

/// Seals batches from `results` into `spool` until `token` is cancelled and
/// the results channel is drained; the last partial batch is sealed too.
/// Each batch also carries the agent's own metrics at sealing time.
pub async fn run(
    stamp: Stamp,
    push_interval: Duration,
    mut results: mpsc::Receiver<Measurement>,
    spool: Arc<Spool>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let mut sequence = 0u64;
    let mut pending: Vec<Series> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
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
                    take(m, &mut pending, &mut events, &metrics);
                    if urgent {
                        sequence += 1;
                        seal(&stamp, sequence, &mut pending, &mut events, &spool, &metrics).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                sequence += 1;
                seal(&stamp, sequence, &mut pending, &mut events, &spool, &metrics).await;
            }
            _ = token.cancelled() => {
                // Probes finishing their round still deliver; then seal what is left.
                results.close();
                while let Some(m) = results.recv().await {
                    take(m, &mut pending, &mut events, &metrics);
                }
                break;
            }
        }
    }
    if !pending.is_empty() || !events.is_empty() {
        sequence += 1;
        seal(&stamp, sequence, &mut pending, &mut events, &spool, &metrics).await;
    }
}

fn take(m: Measurement, pending: &mut Vec<Series>, events: &mut Vec<Event>, metrics: &Metrics) {
    match m {
        Measurement::Probe(outcome) => {
            // An early report is news of a run still going, not a run.
            if !outcome.early {
                metrics.probe(outcome.kind.as_str(), outcome.success);
            }
            pending.extend(outcome.series);
            events.extend(outcome.events);
        }
        Measurement::Node(series) => pending.extend(series),
        Measurement::Event(e) => events.push(e),
    }
}

/// Builds batch `sequence` from `pending` and writes it to the spool.
async fn seal(
    stamp: &Stamp,
    sequence: u64,
    pending: &mut Vec<Series>,
    events: &mut Vec<Event>,
    spool: &Arc<Spool>,
    metrics: &Metrics,
) {
    let now = tierwatch_protocol::now_ms();
    metrics.refresh(spool.oldest_unsent_ms(), now);
    let mut series = std::mem::take(pending);
    series.extend(metrics.snapshot(now));
    let batch = Batch {
        version: PROTOCOL_VERSION,
        node_id: stamp.node_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_id: stamp.boot_id.to_vec(),
        sequence,
        config_hash: stamp.config_hash.to_vec(),
        created_ms: now,
        series,
        events: std::mem::take(events),
        push_interval_ms: stamp.push_interval.as_millis().min(u32::MAX as u128) as u32,
    };
    let body = Bytes::from(batch.encode_to_vec());
    let s = spool.clone();
    let stored = match tokio::task::spawn_blocking(move || s.append(body, now)).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(sequence, error = %e, "spool task failed; batch lost");
            return;
        }
    };
    match stored {
        Stored::Disk(id) => {
            tracing::debug!(sequence, id, boot_id = %tierwatch_protocol::ids::hex(&stamp.boot_id), "batch spooled")
        }
        // The spool logged and counted the failure.
        Stored::Memory { id, .. } => tracing::debug!(sequence, id, "batch kept in memory"),
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

    #[test]
    fn an_early_report_is_not_counted_as_a_run() {
        let metrics = Metrics::new(&[]).unwrap();
        let (mut pending, mut events) = (Vec::new(), Vec::new());
        take(Measurement::Probe(outcome(true)), &mut pending, &mut events, &metrics);
        take(Measurement::Probe(outcome(false)), &mut pending, &mut events, &metrics);
        let runs: f64 = metrics
            .snapshot(0)
            .iter()
            .filter(|s| s.name == "tierwatch_agent_probes_total")
            .filter(|s| s.labels.iter().any(|l| l.name == "result" && l.value == "failure"))
            .flat_map(|s| s.points.iter().map(|p| p.value))
            .sum();
        assert_eq!(runs, 1.0);
    }
}
