//! The collector's own metrics, registered by their owner into one registry.
//! Label values are enums, so cardinality is bounded by construction.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Outcome of one push, the `result` label of `tierwatch_collector_batches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    Accepted,
    Malformed,
    TooLarge,
    Forbidden,
    UnknownNode,
    Invalid,
    /// Stored before (same node, boot id and sequence): acknowledged, not stored again.
    Duplicate,
    /// The state database failed; the agent retries (503).
    Unavailable,
    /// Another push of the node is in flight (429); the agent retries.
    Busy,
    /// The node is over its batch, byte or event rate (429); the agent retries.
    RateLimited,
    /// The decode budget stayed exhausted (503); the agent retries.
    Overloaded,
    /// The body did not arrive within `ingest.request_timeout` (408).
    Timeout,
}

impl BatchResult {
    const ALL: [BatchResult; 12] = [
        BatchResult::Busy,
        BatchResult::RateLimited,
        BatchResult::Overloaded,
        BatchResult::Timeout,
        BatchResult::Duplicate,
        BatchResult::Unavailable,
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
            BatchResult::Duplicate => "duplicate",
            BatchResult::Unavailable => "unavailable",
            BatchResult::Busy => "busy",
            BatchResult::RateLimited => "rate_limited",
            BatchResult::Overloaded => "overloaded",
            BatchResult::Timeout => "timeout",
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
    pub ledger_boots: IntGauge,
    pub ledger_commit_seconds: Histogram,
    rw_samples: IntCounterVec,
    rw_requests: IntCounterVec,
    rw_queue_bytes: IntGaugeVec,
    rw_queue_batches: IntGaugeVec,
    rw_last_success: GaugeVec,
    rw_send_seconds: HistogramVec,
    incidents: IntCounterVec,
    pub incidents_open: IntGauge,
    pub alert_evaluation_seconds: Histogram,
    notifications: IntCounterVec,
    notifications_queued: IntGaugeVec,
    node_refusals: IntCounterVec,
    attributes_truncated: IntCounterVec,
    connections_refused: IntCounterVec,
    connections_closed: IntCounterVec,
    pub http_connections: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric; `remotes` are the remote_write receiver names.
    pub fn new(remotes: &[String]) -> Result<Self, prometheus::Error> {
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
            // Up to 10 s: a stall of seconds (a scrape, a slow disk) must show, not sit in +Inf.
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
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
        let ledger_boots = IntGauge::new(
            "tierwatch_collector_ledger_boots",
            "Agent boots whose stored sequence numbers the exactly-once ledger remembers.",
        )?;
        let ledger_commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tierwatch_collector_ledger_commit_duration_seconds",
                "Time of one group commit of the state database (ledger and remote_write queues, fsynced).",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )?;
        let rw_samples = IntCounterVec::new(
            Opts::new(
                "tierwatch_collector_remote_write_samples_total",
                "Samples handled by remote_write, by receiver and result: sent, retried (a failed attempt, sent again), dropped (refused with 4xx, or the queue was full).",
            ),
            &["remote", "result"],
        )?;
        let rw_requests = IntCounterVec::new(
            Opts::new(
                "tierwatch_collector_remote_write_requests_total",
                "remote_write requests, by receiver and HTTP status code (or error, timeout).",
            ),
            &["remote", "code"],
        )?;
        let rw_queue_bytes = IntGaugeVec::new(
            Opts::new("tierwatch_collector_remote_write_queue_bytes", "Bytes queued on disk for the receiver."),
            &["remote"],
        )?;
        let rw_queue_batches = IntGaugeVec::new(
            Opts::new(
                "tierwatch_collector_remote_write_queue_batches",
                "Agent batches queued on disk for the receiver.",
            ),
            &["remote"],
        )?;
        let rw_last_success = GaugeVec::new(
            Opts::new(
                "tierwatch_collector_remote_write_last_success_timestamp_seconds",
                "Unix time of the receiver's last successful request.",
            ),
            &["remote"],
        )?;
        let rw_send_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tierwatch_collector_remote_write_send_duration_seconds",
                "Time of one remote_write request.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["remote"],
        )?;
        registry.register(Box::new(ledger_boots.clone()))?;
        registry.register(Box::new(ledger_commit_seconds.clone()))?;
        registry.register(Box::new(rw_samples.clone()))?;
        registry.register(Box::new(rw_requests.clone()))?;
        registry.register(Box::new(rw_queue_bytes.clone()))?;
        registry.register(Box::new(rw_queue_batches.clone()))?;
        registry.register(Box::new(rw_last_success.clone()))?;
        registry.register(Box::new(rw_send_seconds.clone()))?;
        let incidents = IntCounterVec::new(
            Opts::new("tierwatch_collector_incidents_total", "Alert incidents by event: opened, updated, resolved."),
            &["event"],
        )?;
        let incidents_open = IntGauge::new("tierwatch_collector_incidents_open", "Alert incidents open now.")?;
        let alert_evaluation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tierwatch_collector_alert_evaluation_seconds",
                "Time one evaluation of the alert rules took (the next waits at least nine times as long).",
            )
            .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "tierwatch_collector_notifications_total",
                "Notification attempts by receiver and result: sent, failed (retried with backoff), refused (dropped), dead_letter (an outbox row that cannot be read, moved to outbox_dead), panicked (the notifier task, restarted).",
            ),
            &["receiver", "result"],
        )?;
        registry.register(Box::new(notifications.clone()))?;
        let notifications_queued = IntGaugeVec::new(
            Opts::new(
                "tierwatch_collector_notifications_queued",
                "Notifications in the outbox not yet delivered, per receiver.",
            ),
            &["receiver"],
        )?;
        registry.register(Box::new(notifications_queued.clone()))?;
        let node_refusals = IntCounterVec::new(
            Opts::new(
                "tierwatch_collector_node_refusals_total",
                "What the collector refused of a node in the topology, by node and reason: whole pushes (the batch outcomes) and single samples or events.",
            ),
            &["node", "reason"],
        )?;
        registry.register(Box::new(node_refusals.clone()))?;
        let attributes_truncated = IntCounterVec::new(
            Opts::new(
                "tierwatch_collector_event_attributes_truncated_total",
                "Event attributes of a node cut to ingest.limits.max_attribute_len (or left out over max_event_attributes); their events were stored, marked.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(attributes_truncated.clone()))?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "tierwatch_collector_connections_refused_total",
                "Connections closed at once because a listener's connection cap was reached, by listener and cap.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "tierwatch_collector_connections_closed_total",
                "Connections the collector closed, by listener and reason: idle (no traffic for the idle timeout), header_timeout (a request head too slow), header_too_large (answered 431).",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(connections_closed.clone()))?;
        let http_connections =
            IntGauge::new("tierwatch_collector_http_connections", "Open connections on the HTTP listener.")?;
        registry.register(Box::new(http_connections.clone()))?;
        for listener in ["ingest", "http"] {
            for reason in [crate::listen::Full::Listener, crate::listen::Full::Source] {
                connections_refused.with_label_values(&[listener, reason.as_str()]);
            }
            for reason in ["idle", "header_timeout", "header_too_large"] {
                connections_closed.with_label_values(&[listener, reason]);
            }
        }
        for event in ["opened", "updated", "resolved"] {
            incidents.with_label_values(&[event]);
        }
        registry.register(Box::new(incidents.clone()))?;
        registry.register(Box::new(incidents_open.clone()))?;
        registry.register(Box::new(alert_evaluation_seconds.clone()))?;
        for e in ["opened", "updated", "resolved"] {
            incidents.with_label_values(&[e]);
        }
        for r in remotes {
            for result in ["sent", "retried", "dropped"] {
                rw_samples.with_label_values(&[r, result]);
            }
            rw_queue_bytes.with_label_values(&[r]);
            rw_queue_batches.with_label_values(&[r]);
        }
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
            ledger_boots,
            ledger_commit_seconds,
            rw_samples,
            rw_requests,
            rw_queue_bytes,
            rw_queue_batches,
            rw_last_success,
            rw_send_seconds,
            incidents,
            incidents_open,
            alert_evaluation_seconds,
            notifications,
            notifications_queued,
            node_refusals,
            attributes_truncated,
            connections_refused,
            connections_closed,
            http_connections,
        })
    }

    /// Makes every outcome of `receiver` exist from the start, so rate() works before the first page.
    pub fn receiver(&self, receiver: &str) {
        for result in ["sent", "failed", "refused", "dead_letter", "panicked"] {
            self.notifications.with_label_values(&[receiver, result]);
        }
        self.notifications_queued.with_label_values(&[receiver]);
    }

    /// Sets how many notifications wait in the outbox for `receiver`.
    pub fn notifications_queued(&self, receiver: &str, n: u64) {
        self.notifications_queued.with_label_values(&[receiver]).set(n as i64);
    }

    /// Counts a notification attempt.
    pub fn notification(&self, receiver: &str, result: &str) {
        self.notifications.with_label_values(&[receiver, result]).inc();
    }

    /// Counts an incident event.
    pub fn incident(&self, event: &str) {
        self.incidents.with_label_values(&[event]).inc();
    }

    /// Counts remote_write samples of `remote` with `result`.
    pub fn remote_write_samples(&self, remote: &str, result: &str, n: u64) {
        self.rw_samples.with_label_values(&[remote, result]).inc_by(n);
    }

    /// Counts one request with its status code (or `error`, `timeout`).
    pub fn remote_write_request(&self, remote: &str, code: &str) {
        self.rw_requests.with_label_values(&[remote, code]).inc();
    }

    /// Records the duration of one request.
    pub fn remote_write_send_seconds(&self, remote: &str, secs: f64) {
        self.rw_send_seconds.with_label_values(&[remote]).observe(secs);
    }

    /// Marks a successful request now.
    pub fn remote_write_success(&self, remote: &str) {
        self.rw_last_success.with_label_values(&[remote]).set(tierwatch_protocol::now_ms() as f64 / 1000.0);
    }

    /// Sets the queue gauges.
    pub fn remote_write_queue(&self, remote: &str, bytes: u64, batches: u64) {
        self.rw_queue_bytes.with_label_values(&[remote]).set(bytes as i64);
        self.rw_queue_batches.with_label_values(&[remote]).set(batches as i64);
    }

    /// Counts something of `node` (a topology node) refused for `reason`.
    pub fn node_refusal(&self, node: &str, reason: &str, n: u64) {
        self.node_refusals.with_label_values(&[node, reason]).inc_by(n);
    }

    /// Counts event attributes of `node` cut or left out to fit the limits.
    pub fn attributes_truncated(&self, node: &str, n: u64) {
        self.attributes_truncated.with_label_values(&[node]).inc_by(n);
    }

    /// Counts a connection closed at accept on `listener` because it was full.
    pub fn connection_refused(&self, listener: &str, why: crate::listen::Full) {
        self.connections_refused.with_label_values(&[listener, why.as_str()]).inc();
    }

    /// Counts a connection `listener` closed for `reason`.
    pub fn connection_closed(&self, listener: &str, reason: &str) {
        self.connections_closed.with_label_values(&[listener, reason]).inc();
    }

    /// Counts one push with its outcome.
    pub fn batch(&self, result: BatchResult) {
        self.batches.with_label_values(&[result.as_str()]).inc();
    }
}
