//! Internal events: what is both logged and counted is one value with one
//! `emit`, which writes the log line and moves the counter together, so the
//! two cannot disagree (vector's internal events are the model). A refusal
//! or a drop is never only counted or only logged.

use std::path::Path;
use std::time::Duration;

use crate::metrics::{DropReason, Metrics, PushResult};

/// Something the agent logs and counts.
pub(crate) trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// The spool's disk refused a batch: it is kept in memory only.
pub(crate) struct SpoolWriteFailed<'a> {
    pub id: u64,
    pub error: &'a std::io::Error,
}

impl InternalEvent for SpoolWriteFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::error!(id = self.id, error = %self.error, "spool write failed: batch kept in memory only");
        metrics.spool_write_errors.inc();
    }
}

/// A measurement (or a new journal) could not be written to the open
/// batch's journal: it is still sealed and sent, but a crash before that
/// loses it. Logged at the first failure of a spell, counted every time.
pub(crate) struct JournalWriteFailed<'a> {
    pub error: &'a std::io::Error,
    /// "appending to" or "starting".
    pub what: &'static str,
    pub first: bool,
}

impl InternalEvent for JournalWriteFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        if self.first {
            tracing::error!(error = %self.error, "spool: {} the open batch's journal failed; a crash now loses what was measured since the last batch", self.what);
        }
        metrics.journal_write_errors.inc();
    }
}

/// Batches given up before every destination had them.
pub(crate) struct BatchesDropped<'a> {
    pub reason: DropReason,
    pub count: u64,
    /// The first (oldest) spool id dropped.
    pub first: u64,
    /// The segment file, for a damaged record.
    pub file: Option<&'a Path>,
}

impl InternalEvent for BatchesDropped<'_> {
    fn emit(self, metrics: &Metrics) {
        if self.count == 0 {
            return;
        }
        let (batches, first) = (self.count, self.first);
        match self.reason {
            DropReason::Size => tracing::warn!(batches, first, "spool full (max_bytes): dropped the oldest segment"),
            DropReason::Age => tracing::warn!(batches, first, "spool: dropped batches older than max_age"),
            DropReason::Memory => {
                tracing::error!(
                    batches,
                    first,
                    "spool disk failing and memory_batches full: dropped the oldest batch kept in memory"
                )
            }
            DropReason::Corrupt => {
                let file = self.file.map(|f| f.display().to_string()).unwrap_or_default();
                tracing::error!(batches, first, file = %file, "spool: damaged batch dropped")
            }
            DropReason::Refused => tracing::error!(batches, first, "batch refused by the collector: dropped"),
        }
        metrics.dropped(self.reason, self.count);
    }
}

/// A push the collector acknowledged.
pub(crate) struct PushAccepted<'a> {
    pub destination: &'a str,
    pub id: u64,
    pub backlog: bool,
    pub duplicate: bool,
}

impl InternalEvent for PushAccepted<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::debug!(destination = %self.destination, id = self.id, backlog = self.backlog, duplicate = self.duplicate, "batch delivered");
        metrics.push(self.destination, self.backlog, PushResult::Ok);
    }
}

/// The collector accepted a batch but took samples or events out of it, or
/// cut event attributes to its limits. Lost evidence is an error: the
/// node's security events are what the province relies on.
pub(crate) struct CollectorRejected<'a> {
    pub destination: &'a str,
    pub id: u64,
    pub ack: &'a tierwatch_protocol::Ack,
}

impl InternalEvent for CollectorRejected<'_> {
    fn emit(self, metrics: &Metrics) {
        let (events, samples): (Vec<_>, Vec<_>) = self.ack.rejected.iter().partition(|r| r.event);
        if let Some(first) = events.first() {
            tracing::error!(destination = %self.destination, id = self.id, refused = events.len(), first = %first.reason, "collector refused security events; their evidence is lost");
            metrics.collector_rejected("event", events.len() as u64);
        }
        if let Some(first) = samples.first() {
            tracing::warn!(destination = %self.destination, id = self.id, rejected = samples.len(), first = %first.reason, "collector refused some samples");
            metrics.collector_rejected("sample", samples.len() as u64);
        }
        if self.ack.truncated_attributes > 0 {
            tracing::warn!(destination = %self.destination, id = self.id, truncated = self.ack.truncated_attributes, "collector cut event attributes to its limits; the events were kept");
            metrics.collector_rejected("truncated_attribute", u64::from(self.ack.truncated_attributes));
        }
    }
}

/// The collector refused a batch (4xx): sending it again cannot help, so it
/// is dropped for this destination.
pub(crate) struct PushRefused<'a> {
    pub destination: &'a str,
    pub id: u64,
    pub backlog: bool,
    pub endpoint: &'a str,
    pub status: u16,
    pub reason: &'a str,
}

impl InternalEvent for PushRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::error!(destination = %self.destination, id = self.id, endpoint = %self.endpoint, status = self.status, reason = %self.reason, "collector refused the batch; dropped");
        metrics.push(self.destination, self.backlog, PushResult::Refused);
        metrics.dropped(DropReason::Refused, 1);
    }
}

/// A push that failed in a way worth retrying.
pub(crate) struct PushFailed<'a> {
    pub destination: &'a str,
    pub id: u64,
    pub backlog: bool,
    pub error: &'a dyn std::fmt::Display,
    pub retry_in: Duration,
}

impl InternalEvent for PushFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(destination = %self.destination, id = self.id, error = %self.error, retry_in_ms = self.retry_in.as_millis() as u64, "push failed");
        metrics.push(self.destination, self.backlog, PushResult::Failed);
    }
}
