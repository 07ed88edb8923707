//! `/metrics`: the collector's own registry plus every node's series, with
//! identity labels from the topology, encoded by the prometheus crate.

use std::collections::BTreeMap;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use tierwatch_protocol::{catalogue, MetricKind};

use crate::metrics::Metrics;
use crate::store::Store;
use crate::topology::Node;

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn metric(labels: Vec<LabelPair>, kind: MetricKind, value: f64) -> Metric {
    let mut m = Metric::default();
    let mut labels = labels;
    labels.sort_by(|a, b| a.get_name().cmp(b.get_name()));
    m.set_label(labels);
    match kind {
        MetricKind::Counter => {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    m
}

fn identity(node: &Node) -> Vec<LabelPair> {
    node.identity_labels().iter().map(|(n, v)| label(n, v)).collect()
}

struct Families(BTreeMap<String, MetricFamily>);

impl Families {
    /// Adds a series; its type is the family's (the first seen), so a name
    /// sent as gauge by one agent and counter by another still encodes.
    fn push(&mut self, name: &str, kind: MetricKind, help: &str, labels: Vec<LabelPair>, value: f64) {
        let mf = self.0.entry(name.to_string()).or_insert_with(|| {
            let mut mf = MetricFamily::default();
            mf.set_name(name.to_string());
            mf.set_help(help.to_string());
            mf.set_field_type(if kind == MetricKind::Counter { MetricType::COUNTER } else { MetricType::GAUGE });
            mf
        });
        let kind = if mf.get_field_type() == MetricType::COUNTER { MetricKind::Counter } else { MetricKind::Gauge };
        mf.mut_metric().push(metric(labels, kind, value));
    }
}

use tierwatch_protocol::catalogue::{NODE_ALERTS, NODE_INFO, NODE_LAST_PUSH, NODE_UP};

/// Per-node figures that come from the alert engine and the state database.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// Firing alerts per node id; none when alerting is off (no alert series then).
    pub alerts: Option<std::collections::HashMap<String, usize>>,
    /// Security events of the last 24 h per node, kind, severity and source.
    pub recent_events: Vec<crate::security::Recent>,
}

/// Recent security events per group, and when the last one happened.
pub(crate) const SECURITY_RECENT: &str = "tierwatch_security_recent_events";
pub(crate) const SECURITY_LAST: &str = "tierwatch_security_last_event_timestamp_seconds";

/// Renders the text exposition at `now_ms`.
pub(crate) fn render(store: &Store, metrics: &Metrics, derived: &Derived, now_ms: i64, down_after_ms: i64) -> Vec<u8> {
    let mut fams = Families(BTreeMap::new());
    let mut series = 0i64;
    let stale_before = store.stale_before(now_ms);
    store.for_each_node(|node, state| {
        let id = identity(node);
        if let Some(alerts) = &derived.alerts {
            fams.push(
                NODE_ALERTS,
                MetricKind::Gauge,
                "Firing alerts about the node, whether paged on their own or grouped under a parent's incident.",
                id.clone(),
                alerts.get(node.id.as_str()).copied().unwrap_or(0) as f64,
            );
        }
        for r in derived.recent_events.iter().filter(|r| r.node == node.id.as_str()) {
            let mut ls = id.clone();
            ls.push(label("kind", &r.kind));
            ls.push(label("severity", &r.severity));
            ls.push(label("source", &r.source));
            fams.push(
                SECURITY_RECENT,
                MetricKind::Gauge,
                "Security events of the last 24 hours per node, kind, severity and source address (each node's 20 most recent groups; kinds outside the catalogue count as kind=\"other\").",
                ls.clone(),
                r.count as f64,
            );
            fams.push(
                SECURITY_LAST,
                MetricKind::Gauge,
                "Unix time of the group's latest security event (same groups as tierwatch_security_recent_events).",
                ls,
                r.last_ms as f64 / 1000.0,
            );
        }
        let up = state.last_push_ms.is_some_and(|t| now_ms - t <= down_after_ms);
        fams.push(
            NODE_UP,
            MetricKind::Gauge,
            "1 if the node pushed within node_down_after, else 0 (from the collector's view).",
            id.clone(),
            if up { 1.0 } else { 0.0 },
        );
        if let Some(t) = state.last_push_ms {
            fams.push(
                NODE_LAST_PUSH,
                MetricKind::Gauge,
                "Unix time of the node's last accepted push.",
                id.clone(),
                t as f64 / 1000.0,
            );
        }
        let mut info = id.clone();
        info.push(label("name", &node.name));
        info.push(label("agent_version", &state.agent_version));
        fams.push(
            NODE_INFO,
            MetricKind::Gauge,
            "Always 1; the node's display name and agent version as labels.",
            info,
            1.0,
        );
        for ((kind, severity), n) in &state.security_counts {
            let mut ls = id.clone();
            ls.push(label("kind", kind));
            ls.push(label("severity", severity));
            fams.push(
                crate::security::EVENTS_TOTAL,
                MetricKind::Counter,
                "Security events the node's sensors reported, by kind and severity (stored ones, exactly once).",
                ls,
                *n as f64,
            );
        }
        for ((name, labels), v) in state.fresh_series(stale_before) {
            let help = catalogue::find(name)
                .map(|d| d.help)
                .unwrap_or("Agent metric not in this collector's catalogue (newer agent?).");
            let mut ls = id.clone();
            ls.extend(labels.iter().map(|l| label(&l.name, &l.value)));
            fams.push(name, v.kind, help, ls, v.value);
            series += 1;
        }
    });
    metrics.series.set(series);
    let mut all = metrics.registry.gather();
    all.extend(fams.0.into_values());
    all.sort_by(|a, b| a.get_name().cmp(b.get_name()));
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a malformed family would be our bug.
    if let Err(e) = TextEncoder::new().encode(&all, &mut buf) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    buf
}
