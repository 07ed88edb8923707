//! The agent's own metrics, served on its local endpoint.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Handles to every agent self-metric.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    probes: IntCounterVec,
    pushes: IntCounterVec,
    pub queued_batches: IntGauge,
    pub dropped_batches: IntCounter,
    pub last_push_success: Gauge,
}

/// Outcome of one push attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Acknowledged.
    Ok,
    /// Network, TLS or server error: retried.
    Failed,
    /// The collector refused the batch (4xx): dropped, retrying cannot help.
    Refused,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let probes = IntCounterVec::new(
            Opts::new("tierwatch_agent_probes_total", "Probe runs, by probe kind and whether they succeeded."),
            &["probe", "result"],
        )?;
        let pushes = IntCounterVec::new(
            Opts::new(
                "tierwatch_agent_pushes_total",
                "Push attempts to the collector, by outcome (ok, failed, refused).",
            ),
            &["result"],
        )?;
        let queued_batches = IntGauge::new("tierwatch_agent_queued_batches", "Sealed batches waiting to be pushed.")?;
        let dropped_batches = IntCounter::new(
            "tierwatch_agent_dropped_batches_total",
            "Batches dropped: queue full (oldest first) or refused by the collector.",
        )?;
        let last_push_success = Gauge::new(
            "tierwatch_agent_last_push_success_timestamp_seconds",
            "Unix time of the last push the collector acknowledged.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("tierwatch_agent_build_info", "Always 1; the agent's version as a label."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [&probes, &pushes] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(queued_batches.clone()))?;
        registry.register(Box::new(dropped_batches.clone()))?;
        registry.register(Box::new(last_push_success.clone()))?;
        registry.register(Box::new(build_info))?;
        for r in ["ok", "failed", "refused"] {
            pushes.with_label_values(&[r]);
        }
        Ok(Metrics { registry, probes, pushes, queued_batches, dropped_batches, last_push_success })
    }

    /// Counts a probe run.
    pub fn probe(&self, probe: &str, success: bool) {
        self.probes.with_label_values(&[probe, if success { "success" } else { "failure" }]).inc();
    }

    /// Counts a push attempt.
    pub fn push(&self, r: PushResult) {
        let label = match r {
            PushResult::Ok => "ok",
            PushResult::Failed => "failed",
            PushResult::Refused => "refused",
        };
        self.pushes.with_label_values(&[label]).inc();
    }
}
