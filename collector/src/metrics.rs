//! The collector's own metrics, registered by their owner into one registry.
//! Label values are enums, so cardinality is bounded by construction.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Outcome of one push, the `result` label of `tierwatch_collector_batches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    Accepted,
    Malformed,
    TooLarge,
    Forbidden,
    UnknownNode,
    Invalid,
}

impl BatchResult {
    const ALL: [BatchResult; 6] = [
        BatchResult::Accepted,
        BatchResult::Malformed,
        BatchResult::TooLarge,
        BatchResult::Forbidden,
        BatchResult::UnknownNode,
        BatchResult::Invalid,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchResult::Accepted => "accepted",
            BatchResult::Malformed => "malformed",
            BatchResult::TooLarge => "too_large",
            BatchResult::Forbidden => "forbidden",
            BatchResult::UnknownNode => "unknown_node",
            BatchResult::Invalid => "invalid",
        }
    }
}

/// Handles to every collector metric.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    batches: IntCounterVec,
    pub samples_accepted: IntCounter,
    pub samples_rejected: IntCounter,
    pub events_accepted: IntCounter,
    pub tls_handshake_failures: IntCounter,
    pub ingest_seconds: Histogram,
    pub ingest_connections: IntGauge,
    pub series: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let batches = IntCounterVec::new(
            Opts::new("tierwatch_collector_batches_total", "Batches pushed to the collector, by outcome."),
            &["result"],
        )?;
        let samples = IntCounterVec::new(
            Opts::new("tierwatch_collector_samples_total", "Samples (points) received, by whether they were stored."),
            &["result"],
        )?;
        let events = IntCounter::new("tierwatch_collector_events_total", "Events received and stored.")?;
        let tls_handshake_failures = IntCounter::new(
            "tierwatch_collector_tls_handshake_failures_total",
            "TLS handshakes on the ingest port that failed (bad or missing client certificate, protocol errors, timeouts).",
        )?;
        let ingest_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tierwatch_collector_ingest_duration_seconds",
                "Time to decode, verify and store one push.",
            )
            .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]),
        )?;
        let ingest_connections =
            IntGauge::new("tierwatch_collector_ingest_connections", "Open TLS connections on the ingest port.")?;
        let series = IntGauge::new("tierwatch_collector_series", "Agent series currently exposed on /metrics.")?;
        let build_info = IntGaugeVec::new(
            Opts::new("tierwatch_collector_build_info", "Always 1; the collector's version as a label."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(samples.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(ingest_seconds.clone()))?;
        registry.register(Box::new(ingest_connections.clone()))?;
        registry.register(Box::new(series.clone()))?;
        registry.register(Box::new(build_info))?;
        // Every outcome exists from the start, so rate() works before the first failure.
        for r in BatchResult::ALL {
            batches.with_label_values(&[r.as_str()]);
        }
        Ok(Metrics {
            registry,
            samples_accepted: samples.with_label_values(&["accepted"]),
            samples_rejected: samples.with_label_values(&["rejected"]),
            batches,
            events_accepted: events,
            tls_handshake_failures,
            ingest_seconds,
            ingest_connections,
            series,
        })
    }

    /// Counts one push with its outcome.
    pub fn batch(&self, result: BatchResult) {
        self.batches.with_label_values(&[result.as_str()]).inc();
    }
}
