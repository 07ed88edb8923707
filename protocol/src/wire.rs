//! The protobuf messages on the wire, derived with prost (no `protoc` at build time).
//! `docs/protocol.md` holds the equivalent `.proto` text for other implementations.

use std::collections::BTreeMap;

/// One push from an agent: everything it measured since its previous batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Batch {
    /// Format version, [`crate::PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The sending node; must equal the identity in the client certificate.
    #[prost(string, tag = "2")]
    pub node_id: String,
    /// The agent's version string (`CARGO_PKG_VERSION`).
    #[prost(string, tag = "3")]
    pub agent_version: String,
    /// 16 random bytes drawn when the agent process starts.
    #[prost(bytes = "vec", tag = "4")]
    pub boot_id: Vec<u8>,
    /// Increases by one per batch within a boot, starting at 1.
    #[prost(uint64, tag = "5")]
    pub sequence: u64,
    /// SHA-256 of the agent's effective configuration.
    #[prost(bytes = "vec", tag = "6")]
    pub config_hash: Vec<u8>,
    /// When the agent sealed the batch (ms since the epoch).
    #[prost(int64, tag = "7")]
    pub created_ms: i64,
    /// Measured samples, grouped by series.
    #[prost(message, repeated, tag = "8")]
    pub series: Vec<Series>,
    /// Discrete events (security findings and the like).
    #[prost(message, repeated, tag = "9")]
    pub events: Vec<Event>,
    /// The agent's push interval, so the collector knows when it is late (0: unknown).
    #[prost(uint32, tag = "10")]
    pub push_interval_ms: u32,
}

/// Samples of one series: a metric name and label set with one or more points.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Series {
    /// Metric name, `tierwatch_` prefixed, Prometheus syntax.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Gauge or counter.
    #[prost(enumeration = "MetricKind", tag = "2")]
    pub kind: i32,
    /// Labels other than the identity labels, which the collector adds.
    #[prost(message, repeated, tag = "3")]
    pub labels: Vec<Label>,
    /// Values with their measurement time.
    #[prost(message, repeated, tag = "4")]
    pub points: Vec<Point>,
}

/// A label pair.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// One measured value.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Point {
    /// Measurement time, ms since the epoch.
    #[prost(int64, tag = "1")]
    pub timestamp_ms: i64,
    #[prost(double, tag = "2")]
    pub value: f64,
}

/// Prometheus metric type of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricKind {
    Unspecified = 0,
    Gauge = 1,
    Counter = 2,
}

/// A discrete event, for example a detected port scan.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Machine name of the event kind, for example `port_scan`.
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(enumeration = "Severity", tag = "2")]
    pub severity: i32,
    /// When it happened, ms since the epoch.
    #[prost(int64, tag = "3")]
    pub timestamp_ms: i64,
    /// Evidence: source address, counts, window, and so on.
    #[prost(btree_map = "string, string", tag = "4")]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    /// An event of `kind` at `timestamp_ms` (ms since the epoch) with its evidence.
    pub fn new<K: Into<String>, V: Into<String>>(
        kind: &str,
        severity: Severity,
        timestamp_ms: i64,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Event {
        Event {
            kind: kind.to_string(),
            severity: severity as i32,
            timestamp_ms,
            attributes: attributes.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }
}

/// How urgent an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Severity {
    Unspecified = 0,
    Info = 1,
    Warning = 2,
    Critical = 3,
}

/// The collector's answer to an accepted batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// Sequence number of the batch this acknowledges.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// Points stored.
    #[prost(uint32, tag = "2")]
    pub accepted_points: u32,
    /// Events stored.
    #[prost(uint32, tag = "3")]
    pub accepted_events: u32,
    /// Samples and events refused, each with the reason.
    #[prost(message, repeated, tag = "4")]
    pub rejected: Vec<WireRejection>,
    /// True when this batch (node, boot id, sequence) had been stored before:
    /// nothing was stored again, and the agent can forget it.
    #[prost(bool, tag = "5")]
    pub duplicate: bool,
    /// Event attributes cut to the collector's length limit (or left out
    /// over its count limit); their events were stored, marked.
    #[prost(uint32, tag = "6")]
    pub truncated_attributes: u32,
}

/// A refused sample or event, as carried in an [`Ack`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireRejection {
    /// Human-readable location and reason, for example
    /// `series 3 (tierwatch_x{target="a"}) point 0: value is NaN`.
    #[prost(string, tag = "1")]
    pub reason: String,
    /// True when an event (evidence) was refused, not a sample.
    #[prost(bool, tag = "2")]
    pub event: bool,
}

impl Series {
    /// `name{a="b",...}` for messages.
    pub fn display_name(&self) -> String {
        let mut s = self.name.clone();
        if !self.labels.is_empty() {
            s.push('{');
            for (i, l) in self.labels.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&l.name);
                s.push_str("=\"");
                s.push_str(&l.value.escape_debug().to_string());
                s.push('"');
            }
            s.push('}');
        }
        s
    }
}

impl Series {
    /// A series of one point: `value` measured at `timestamp_ms`.
    pub fn point(name: impl Into<String>, kind: MetricKind, labels: Vec<Label>, timestamp_ms: i64, value: f64) -> Self {
        Series { name: name.into(), kind: kind as i32, labels, points: vec![Point { timestamp_ms, value }] }
    }
}

impl Label {
    /// Builds a label pair.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label { name: name.into(), value: value.into() }
    }
}
