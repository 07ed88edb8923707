//! The agent's own metrics, served on its local endpoint and sent with every
//! batch. Names and help texts come from the protocol catalogue.

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tierwatch_protocol::catalogue::{self as cat, MetricDef};
use tierwatch_protocol::{Label, MetricKind, Series};

/// Handles to every agent self-metric.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    probes: IntCounterVec,
    pushes: IntCounterVec,
    last_push: GaugeVec,
    dropped: IntCounterVec,
    collector_rejected: IntCounterVec,
    pub spool_bytes: IntGauge,
    pub spool_batches: IntGauge,
    pub spool_memory_batches: IntGauge,
    pub spool_oldest_age: Gauge,
    /// Counted by the ICMP engine (it holds a clone).
    pub icmp_stray_replies: IntCounter,
    pub spool_write_errors: IntCounter,
    pub spool_truncations: IntCounter,
    pub spool_resealed: IntCounter,
    pub journal_write_errors: IntCounter,
    pub spool_commits: IntCounter,
    pub spool_commit_seconds: prometheus::Counter,
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

/// Why a batch was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Size,
    Age,
    Refused,
    Corrupt,
    Memory,
}

impl DropReason {
    const ALL: [DropReason; 5] =
        [DropReason::Size, DropReason::Age, DropReason::Refused, DropReason::Corrupt, DropReason::Memory];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::Size => "size",
            DropReason::Age => "age",
            DropReason::Refused => "refused",
            DropReason::Corrupt => "corrupt",
            DropReason::Memory => "memory",
        }
    }
}

fn opts(d: &MetricDef) -> Opts {
    Opts::new(d.name, d.help)
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> Result<C, prometheus::Error> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Creates and registers every metric; `destinations` pre-creates their series.
    pub fn new(destinations: &[String]) -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let probes = register(&r, IntCounterVec::new(opts(&cat::AGENT_PROBES), cat::AGENT_PROBES.labels)?)?;
        let pushes = register(&r, IntCounterVec::new(opts(&cat::AGENT_PUSHES), cat::AGENT_PUSHES.labels)?)?;
        let last_push = register(&r, GaugeVec::new(opts(&cat::AGENT_LAST_PUSH), cat::AGENT_LAST_PUSH.labels)?)?;
        let dropped = register(&r, IntCounterVec::new(opts(&cat::AGENT_DROPPED), cat::AGENT_DROPPED.labels)?)?;
        let build = register(&r, IntGaugeVec::new(opts(&cat::AGENT_BUILD_INFO), cat::AGENT_BUILD_INFO.labels)?)?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for d in destinations {
            for kind in ["live", "backlog"] {
                for result in ["ok", "failed", "refused"] {
                    pushes.with_label_values(&[d, kind, result]);
                }
            }
        }
        for reason in DropReason::ALL {
            dropped.with_label_values(&[reason.as_str()]);
        }
        let collector_rejected = register(
            &r,
            IntCounterVec::new(opts(&cat::AGENT_COLLECTOR_REJECTED), cat::AGENT_COLLECTOR_REJECTED.labels)?,
        )?;
        for what in ["sample", "event", "truncated_attribute"] {
            collector_rejected.with_label_values(&[what]);
        }
        Ok(Metrics {
            spool_bytes: register(&r, IntGauge::with_opts(opts(&cat::AGENT_SPOOL_BYTES))?)?,
            spool_batches: register(&r, IntGauge::with_opts(opts(&cat::AGENT_SPOOL_BATCHES))?)?,
            spool_memory_batches: register(&r, IntGauge::with_opts(opts(&cat::AGENT_SPOOL_MEMORY))?)?,
            spool_oldest_age: register(&r, Gauge::with_opts(opts(&cat::AGENT_SPOOL_OLDEST))?)?,
            spool_write_errors: register(&r, IntCounter::with_opts(opts(&cat::AGENT_SPOOL_WRITE_ERRORS))?)?,
            spool_truncations: register(&r, IntCounter::with_opts(opts(&cat::AGENT_SPOOL_TRUNCATIONS))?)?,
            spool_resealed: register(&r, IntCounter::with_opts(opts(&cat::AGENT_SPOOL_RESEALED))?)?,
            journal_write_errors: register(&r, IntCounter::with_opts(opts(&cat::AGENT_JOURNAL_WRITE_ERRORS))?)?,
            spool_commits: register(&r, IntCounter::with_opts(opts(&cat::AGENT_SPOOL_COMMITS))?)?,
            spool_commit_seconds: register(
                &r,
                prometheus::Counter::with_opts(opts(&cat::AGENT_SPOOL_COMMIT_SECONDS))?,
            )?,
            icmp_stray_replies: register(&r, IntCounter::with_opts(opts(&cat::AGENT_ICMP_STRAY))?)?,
            registry: r,
            probes,
            pushes,
            last_push,
            dropped,
            collector_rejected,
        })
    }

    /// Counts a probe run.
    pub fn probe(&self, probe: &str, success: bool) {
        self.probes.with_label_values(&[probe, if success { "success" } else { "failure" }]).inc();
    }

    /// Counts a push attempt to `destination`.
    pub fn push(&self, destination: &str, backlog: bool, r: PushResult) {
        let result = match r {
            PushResult::Ok => "ok",
            PushResult::Failed => "failed",
            PushResult::Refused => "refused",
        };
        self.pushes.with_label_values(&[destination, if backlog { "backlog" } else { "live" }, result]).inc();
        if r == PushResult::Ok {
            self.last_push.with_label_values(&[destination]).set(tierwatch_protocol::now_ms() as f64 / 1000.0);
        }
    }

    /// Unix time of the newest acknowledged push to any destination; 0 if none.
    pub fn last_push_success(&self) -> f64 {
        let mut newest = 0.0f64;
        for mf in self.last_push.collect() {
            for m in mf.get_metric() {
                newest = newest.max(m.get_gauge().get_value());
            }
        }
        newest
    }

    /// Counts `n` items of `what` the collector took out of accepted batches
    /// (through [`crate::events::CollectorRejected`]).
    pub(crate) fn collector_rejected(&self, what: &str, n: u64) {
        self.collector_rejected.with_label_values(&[what]).inc_by(n);
    }

    /// Counts `n` dropped batches (through [`crate::events::BatchesDropped`]).
    pub(crate) fn dropped(&self, why: DropReason, n: u64) {
        self.dropped.with_label_values(&[why.as_str()]).inc_by(n);
    }

    /// Sets the gauges derived from the clock (the age of the oldest unsent batch).
    pub fn refresh(&self, oldest_unsent_ms: i64, now_ms: i64) {
        let age = if oldest_unsent_ms > 0 { (now_ms - oldest_unsent_ms).max(0) as f64 / 1000.0 } else { 0.0 };
        self.spool_oldest_age.set(age);
    }

    /// Every counter and gauge as wire series stamped `now_ms`, for the next batch.
    pub fn snapshot(&self, now_ms: i64) -> Vec<Series> {
        let mut out = Vec::new();
        for mf in self.registry.gather() {
            let kind = match mf.get_field_type() {
                MetricType::COUNTER => MetricKind::Counter,
                MetricType::GAUGE => MetricKind::Gauge,
                _ => continue,
            };
            for m in mf.get_metric() {
                let value =
                    if kind == MetricKind::Counter { m.get_counter().get_value() } else { m.get_gauge().get_value() };
                let labels = m.get_label().iter().map(|l| Label::new(l.get_name(), l.get_value())).collect();
                out.push(Series::point(mf.get_name(), kind, labels, now_ms, value));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_carries_every_self_metric_from_the_catalogue() {
        let m = Metrics::new(&["any".into()]).unwrap();
        m.push("any", false, PushResult::Ok);
        m.dropped(DropReason::Age, 1);
        let snap = m.snapshot(1000);
        for s in &snap {
            let def = cat::find(&s.name).unwrap_or_else(|| panic!("{} not in the catalogue", s.name));
            assert_eq!(def.kind as i32, s.kind, "{}", s.name);
            assert!(s.labels.iter().all(|l| def.labels.contains(&l.name.as_str())), "{}", s.name);
        }
        let dropped_age = snap
            .iter()
            .find(|s| s.name == "tierwatch_agent_dropped_batches_total" && s.labels.iter().any(|l| l.value == "age"));
        assert_eq!(dropped_age.map(|s| s.points[0].value), Some(1.0));
        assert!(m.last_push_success() > 0.0);
    }
}
