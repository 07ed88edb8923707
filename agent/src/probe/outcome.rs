//! What one probe run measured, as the batcher takes it: the series (one
//! constructor for every kind), security events, and the error.

use std::sync::Arc;
use std::time::Duration;

use tierwatch_protocol::catalogue::MetricDef;
use tierwatch_protocol::{Label, Series};

use super::ProbeKind;

/// Where a prober reports a failure found before its round ends (the
/// scheduler hands the batcher's inbox in as this): it must not block, and
/// says whether the report was taken.
pub type EarlyReport = Arc<dyn Fn(Outcome) -> bool + Send + Sync>;

/// What one probe run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: String,
    pub kind: ProbeKind,
    pub success: bool,
    pub duration: Duration,
    /// The series to push, stamped with the probe's start time.
    pub series: Vec<Series>,
    /// Human-readable lines for `tierwatch-agent probe`.
    pub detail: Vec<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Whether `detail` is filled (the `probe` command) or skipped (the agent).
    pub verbose: bool,
    /// Security events the probe found (a defaced page).
    pub events: Vec<tierwatch_protocol::Event>,
    /// A failure reported before its round ended; the round's own outcome follows.
    pub early: bool,
    /// Up turned down or back since the target's last report (the prober
    /// decides it, once; the batcher seals such news at once).
    pub flipped: bool,
}

impl Outcome {
    /// A failed run of `target` with nothing measured yet.
    pub fn new(target: String, kind: ProbeKind, verbose: bool) -> Outcome {
        Outcome {
            target,
            kind,
            success: false,
            duration: Duration::ZERO,
            series: Vec::new(),
            detail: Vec::new(),
            error: None,
            verbose,
            events: Vec::new(),
            early: false,
            flipped: false,
        }
    }

    /// Adds a security event the probe found, and says so in the detail.
    pub(super) fn event(&mut self, e: tierwatch_protocol::Event) {
        self.note(|| {
            let why = e.attributes.get("why").map(String::as_str).unwrap_or("");
            format!("security event {}: {why}", e.kind)
        });
        self.events.push(e);
    }

    /// Adds a detail line; built only when someone will read it.
    pub(super) fn note(&mut self, line: impl FnOnce() -> String) {
        if self.verbose {
            self.detail.push(line());
        }
    }

    pub(super) fn push(&mut self, def: &MetricDef, extra: &[(&str, &str)], value: f64, ts: i64) {
        let mut labels = vec![Label::new("target", self.target.clone())];
        labels.extend(extra.iter().map(|(n, v)| Label::new(*n, *v)));
        debug_assert_eq!(def.labels.len(), labels.len(), "{} labels", def.name);
        self.series.push(Series::point(def.name, def.kind, labels, ts, value));
    }

    /// A state set: 1 for `current`, 0 for every other of `all`.
    pub(super) fn push_state(&mut self, def: &MetricDef, label: &str, all: &[&str], current: &str, ts: i64) {
        for v in all {
            self.push(def, &[(label, v)], (*v == current) as u8 as f64, ts);
        }
    }
}
