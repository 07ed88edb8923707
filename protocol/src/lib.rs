//! Wire format shared by `tierwatch-agent` and `tierwatch-collector`.
//!
//! A push is one protobuf-encoded [`wire::Batch`] in an HTTP `POST` to
//! [`PUSH_PATH`] over mutually authenticated TLS; the collector answers with a
//! protobuf [`wire::Ack`] (2xx) or a plain-text reason (4xx). See
//! `docs/protocol.md` for the rationale of the encoding.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod catalogue;
pub mod ids;
pub mod shape;
pub mod testing;
pub mod validate;
pub mod wire;

pub use ids::{NodeId, NodeIdError};
pub use shape::{Shape, ShapeError};
pub use validate::{BatchError, Limits, Rejection, ValidationReport};
pub use wire::{Ack, Batch, Event, Label, MetricKind, Point, Series, Severity};

/// Version of the batch format this build speaks; carried in every batch.
pub const PROTOCOL_VERSION: u32 = 1;
/// HTTP path the collector's ingest listener serves pushes on.
pub const PUSH_PATH: &str = "/api/v1/push";
/// Request header with the agent's clock (Unix ms) when it sent the push:
/// batches may be hours old, so only this shows a clock running behind.
pub const SENT_AT_HEADER: &str = "x-tierwatch-sent-ms";
/// Content type of a pushed batch and of the collector's acknowledgement.
pub const CONTENT_TYPE: &str = "application/x-protobuf; proto=tierwatch.v1.Batch";
/// Label names the collector sets from certificate and topology; a payload may not carry them.
pub const IDENTITY_LABELS: [&str; 4] = ["node", "tier", "province", "parent"];
/// Prefix of every metric name tierwatch exports.
pub const METRIC_PREFIX: &str = "tierwatch_";

/// Milliseconds since the Unix epoch, the time base of every timestamp on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
