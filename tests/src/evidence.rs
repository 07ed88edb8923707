//! What the processes did, read from their JSON logs: the agent logs each
//! batch once its spool append returned ("batch spooled"), the collector each
//! batch it stored ("batch stored") or recognised as a copy ("duplicate ...").

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Agent: a batch is in the spool.
pub const SPOOLED: &str = "batch spooled";
/// Collector: a batch was stored.
pub const STORED: &str = "batch stored";
/// Collector: a copy of a stored batch was acknowledged and ignored.
pub const DUPLICATE: &str = "duplicate batch acknowledged, not stored again";

/// The JSON log events of a process whose message is `message` (lines cut
/// short by a kill are skipped).
pub fn events(log: &Path, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// (boot id, sequence) of each event, as logged by the agent's batcher and the collector's ingest.
pub fn batch_keys(events: &[serde_json::Value]) -> Vec<(String, u64)> {
    events.iter().filter_map(|v| Some((v["boot_id"].as_str()?.to_string(), v["sequence"].as_u64()?))).collect()
}

/// How often each key occurs.
pub fn counts(keys: &[(String, u64)]) -> HashMap<(String, u64), usize> {
    let mut m = HashMap::new();
    for k in keys {
        *m.entry(k.clone()).or_insert(0) += 1;
    }
    m
}

/// The value of sample line `series` in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// Checks exactly-once delivery: every batch the agents spooled reached the
/// collector, and none was stored twice. Returns (batches spooled, copies refused).
pub fn exactly_once(agent_logs: &[PathBuf], collector_logs: &[PathBuf]) -> anyhow::Result<(usize, usize)> {
    let spooled: Vec<(String, u64)> = agent_logs.iter().flat_map(|l| batch_keys(&events(l, SPOOLED))).collect();
    let stored: Vec<(String, u64)> = collector_logs.iter().flat_map(|l| batch_keys(&events(l, STORED))).collect();
    let dups: Vec<(String, u64)> = collector_logs.iter().flat_map(|l| batch_keys(&events(l, DUPLICATE))).collect();
    let twice: Vec<_> = counts(&stored).into_iter().filter(|(_, n)| *n > 1).collect();
    anyhow::ensure!(twice.is_empty(), "stored more than once: {twice:?}");
    let seen: HashSet<&(String, u64)> = stored.iter().chain(dups.iter()).collect();
    let lost: Vec<_> = spooled.iter().filter(|k| !seen.contains(k)).collect();
    anyhow::ensure!(
        lost.is_empty(),
        "{} of {} spooled batches never reached the collector: {:?}",
        lost.len(),
        spooled.len(),
        &lost[..lost.len().min(10)]
    );
    anyhow::ensure!(!spooled.is_empty(), "the agent logged no spooled batch");
    Ok((spooled.len(), dups.len()))
}
