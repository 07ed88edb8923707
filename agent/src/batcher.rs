//! Collects probe outcomes and seals them into batches every push interval.
//! It owns the boot id and the sequence numbers. An empty batch is still
//! sealed: it is the node's heartbeat.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tierwatch_protocol::{Batch, Series, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Sealed};
use crate::probe::Measurement;

/// Identity stamped on every batch of this agent process.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub node_id: String,
    pub boot_id: [u8; 16],
    pub config_hash: [u8; 32],
}

/// Seals batches from `results` into `outbox` until `token` is cancelled and
/// the results channel is drained; the last partial batch is sealed too.
pub async fn run(
    stamp: Stamp,
    push_interval: Duration,
    mut results: mpsc::Receiver<Measurement>,
    outbox: Arc<Outbox>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let mut sequence = 0u64;
    let mut pending: Vec<Series> = Vec::new();
    let mut tick = tokio::time::interval(push_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick fires at once
    let mut seal = |pending: &mut Vec<Series>| {
        sequence += 1;
        let batch = Batch {
            version: PROTOCOL_VERSION,
            node_id: stamp.node_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: stamp.boot_id.to_vec(),
            sequence,
            config_hash: stamp.config_hash.to_vec(),
            created_ms: tierwatch_protocol::now_ms(),
            series: std::mem::take(pending),
            events: Vec::new(),
        };
        let sealed = Sealed { sequence, body: Bytes::from(batch.encode_to_vec()) };
        if let Some(dropped) = outbox.push(sealed) {
            metrics.dropped_batches.inc();
            tracing::warn!(sequence = dropped.sequence, "outbox full: dropped the oldest batch");
        }
        metrics.queued_batches.set(outbox.len() as i64);
    };
    loop {
        tokio::select! {
            r = results.recv() => match r {
                Some(Measurement::Probe(outcome)) => {
                    metrics.probe(outcome.kind.as_str(), outcome.success);
                    pending.extend(outcome.series);
                }
                Some(Measurement::Node(series)) => pending.extend(series),
                None => break,
            },
            _ = tick.tick() => seal(&mut pending),
            _ = token.cancelled() => {
                // Probes finishing their round still deliver; then seal what is left.
                results.close();
                while let Some(m) = results.recv().await {
                    match m {
                        Measurement::Probe(outcome) => pending.extend(outcome.series),
                        Measurement::Node(series) => pending.extend(series),
                    }
                }
                break;
            }
        }
    }
    if !pending.is_empty() {
        seal(&mut pending);
    }
}
