//! Batch encode and decode(+validate) cost per sample, against JSON of the
//! same data as the in-session reference. Run: `cargo bench -p tierwatch-protocol`.
//!
//! The batch is what an agent with 10 targets (5 ICMP, 5 TCP) pushes after
//! `rounds` probe rounds: one point per series and round.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use prost::Message;
use tierwatch_protocol::testing::typical_batch as batch;
use tierwatch_protocol::{validate, Batch, Limits};

fn to_json(b: &Batch) -> serde_json::Value {
    serde_json::json!({
        "version": b.version, "node_id": b.node_id, "agent_version": b.agent_version,
        "boot_id": b.boot_id, "sequence": b.sequence, "config_hash": b.config_hash, "created_ms": b.created_ms,
        "series": b.series.iter().map(|s| serde_json::json!({
            "name": s.name, "kind": s.kind,
            "labels": s.labels.iter().map(|l| (l.name.clone(), serde_json::Value::from(l.value.clone()))).collect::<serde_json::Map<_, _>>(),
            "points": s.points.iter().map(|p| [serde_json::Value::from(p.timestamp_ms), serde_json::Value::from(p.value)]).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Median over 7 runs of the time per call, each run about 150 ms.
fn time(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_millis(50) {
        f();
        calls += 1;
    }
    let per_run = (calls * 3).max(1);
    let mut runs: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_run {
                f();
            }
            t.elapsed() / per_run
        })
        .collect();
    runs.sort();
    runs[3]
}

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    if filter.as_deref().is_some_and(|f| !"codec".contains(f)) {
        return;
    }
    println!(
        "{:<36} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "batch", "samples", "proto B/smp", "enc ns/smp", "dec+val ns/smp", "json enc ns", "json dec ns"
    );
    for rounds in [1usize, 10, 100] {
        let b = batch(rounds);
        let samples: usize = b.series.iter().map(|s| s.points.len()).sum();
        let bytes = b.encode_to_vec();
        let json = serde_json::to_vec(&to_json(&b)).unwrap_or_default();
        let now = tierwatch_protocol::now_ms();
        let limits = Limits::default();
        let enc = time(|| {
            black_box(black_box(&b).encode_to_vec());
        });
        let dec = time(|| {
            let mut d = Batch::decode(black_box(bytes.as_slice())).unwrap_or_default();
            black_box(validate::validate(&mut d, now, &limits).ok());
        });
        let jenc = time(|| {
            black_box(serde_json::to_vec(&to_json(black_box(&b))).ok());
        });
        let jdec = time(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&json)).ok());
        });
        let per = |d: Duration| d.as_nanos() as f64 / samples as f64;
        println!(
            "{:<36} {:>8} {:>12.1} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
            format!("10 targets x {rounds} round(s)"),
            samples,
            bytes.len() as f64 / samples as f64,
            per(enc),
            per(dec),
            per(jenc),
            per(jdec)
        );
        println!(
            "{:<36} json {:.1} B/sample; protobuf decode+validate is {:.1}x cheaper than JSON decode alone",
            "",
            json.len() as f64 / samples as f64,
            per(jdec) / per(dec)
        );
    }
}
