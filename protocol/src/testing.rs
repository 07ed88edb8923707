//! Realistic batches for benchmarks and tests of every crate.

use crate::{Batch, Label, MetricKind, Point, Series, PROTOCOL_VERSION};

/// What an agent with 10 targets (5 ICMP, 5 TCP) pushes after `rounds`
/// probe rounds: one point per series and round, 75 series.
pub fn typical_batch(rounds: usize) -> Batch {
    let now = crate::now_ms();
    let mut series = Vec::new();
    for t in 0..10 {
        let target = format!("target-{t}");
        let names: &[&str] = if t < 5 {
            &[
                "tierwatch_probe_success",
                "tierwatch_probe_duration_seconds",
                "tierwatch_icmp_packets_sent",
                "tierwatch_icmp_packets_received",
                "tierwatch_icmp_loss_ratio",
                "tierwatch_icmp_rtt_min_seconds",
                "tierwatch_icmp_rtt_median_seconds",
                "tierwatch_icmp_rtt_p90_seconds",
                "tierwatch_icmp_rtt_max_seconds",
                "tierwatch_icmp_rtt_mean_seconds",
                "tierwatch_icmp_rtt_stddev_seconds",
                "tierwatch_icmp_jitter_seconds",
            ]
        } else {
            &["tierwatch_probe_success", "tierwatch_probe_duration_seconds", "tierwatch_tcp_connect_seconds"]
        };
        for n in names {
            series.push(Series {
                name: n.to_string(),
                kind: MetricKind::Gauge as i32,
                labels: vec![
                    Label::new("probe", if t < 5 { "icmp" } else { "tcp" }),
                    Label::new("target", target.clone()),
                ],
                points: (0..rounds)
                    .map(|r| Point { timestamp_ms: now - (r as i64) * 30_000, value: 0.0123 + r as f64 })
                    .collect(),
            });
        }
    }
    Batch {
        version: PROTOCOL_VERSION,
        node_id: "nui-cam".into(),
        agent_version: "0.1.0".into(),
        boot_id: vec![9; 16],
        sequence: 1,
        config_hash: vec![7; 32],
        created_ms: now,
        series,
        events: vec![],
        push_interval_ms: 0,
    }
}
