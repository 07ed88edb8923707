//! `/metrics`: the collector's own registry plus every node's series, with
//! identity labels from the topology.
//!
//! At national scale this is 680k series (95 MB of text): building objects
//! for an encoder took seconds, hundreds of MB and a lock alerting shares.
//! Instead each series' label set is rendered once, when it first arrives
//! (store.rs), and a scrape writes family by family, node by node, copying
//! those texts and formatting only the values, into a writer that streams
//! (and gzips) chunks as they fill. It holds one node's lock at a time, and
//! that only while copying one family's lines of that node; the alert
//! figures come from a snapshot the engine publishes, not from the engine.

use std::collections::BTreeMap;
use std::io::{self, Write};

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};
use tierwatch_protocol::{catalogue, MetricKind};

use crate::metrics::Metrics;
use crate::store::{NodeState, Store};
use crate::textfmt::{header, label_set, sample};
use crate::topology::Node;

use tierwatch_protocol::catalogue::{NODE_ALERTS, NODE_INFO, NODE_LAST_PUSH, NODE_UP};

/// Per-node figures that come from the alert engine and the state database.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// Firing alerts per node id; none when alerting is off (no alert series then).
    pub alerts: Option<std::sync::Arc<std::collections::HashMap<String, usize>>>,
    /// Security events of the last 24 h per node, kind, severity and source.
    pub recent_events: Vec<crate::security::Recent>,
}

/// Recent security events per group, and when the last one happened.
pub(crate) const SECURITY_RECENT: &str = "tierwatch_security_recent_events";
pub(crate) const SECURITY_LAST: &str = "tierwatch_security_last_event_timestamp_seconds";

/// The families the collector derives per node (not sent by agents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    Alerts,
    Recent,
    Last,
    Up,
    LastPush,
    Info,
    Events,
}

impl Own {
    const ALL: [Own; 7] = [Own::Alerts, Own::Recent, Own::Last, Own::Up, Own::LastPush, Own::Info, Own::Events];

    fn name(self) -> &'static str {
        match self {
            Own::Alerts => NODE_ALERTS,
            Own::Recent => SECURITY_RECENT,
            Own::Last => SECURITY_LAST,
            Own::Up => NODE_UP,
            Own::LastPush => NODE_LAST_PUSH,
            Own::Info => NODE_INFO,
            Own::Events => crate::security::EVENTS_TOTAL,
        }
    }

    fn help(self) -> &'static str {
        match self {
            Own::Alerts => "Firing alerts about the node, whether paged on their own or grouped under a parent's incident.",
            Own::Recent => "Security events of the last 24 hours per node, kind, severity and source address (each node's 20 most recent groups; kinds outside the catalogue count as kind=\"other\").",
            Own::Last => "Unix time of the group's latest security event (same groups as tierwatch_security_recent_events).",
            Own::Up => "1 if the node pushed within node_down_after, else 0 (from the collector's view).",
            Own::LastPush => "Unix time of the node's last accepted push.",
            Own::Info => "Always 1; the node's display name and agent version as labels.",
            Own::Events => "Security events the node's sensors reported, by kind and severity (stored ones, exactly once).",
        }
    }
}

/// One family of the exposition and where its lines come from.
#[derive(Default)]
struct Family {
    /// The collector's own metrics (written by the prometheus encoder).
    registry: Option<MetricFamily>,
    own: Option<Own>,
    /// Agents send it: the type of the first series seen (a name sent as
    /// gauge by one agent and counter by another still encodes as one).
    agents: Option<MetricKind>,
}

/// What a scrape writes at `now_ms`.
pub(crate) struct Scrape<'a> {
    pub store: &'a Store,
    pub metrics: &'a Metrics,
    pub derived: &'a Derived,
    pub now_ms: i64,
    pub down_after_ms: i64,
}

impl Scrape<'_> {
    /// Writes the text exposition to `w`; stops at the first write error
    /// (the scraper went away).
    pub(crate) fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let stale_before = self.store.stale_before(self.now_ms);
        // The families agents sent, with the first type seen, and how many
        // series are fresh (the gauge below is part of this very scrape).
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut series = 0i64;
        self.store.for_each_node(|_, state| {
            for name in state.series.names() {
                let fresh = state.fresh_family(name, stale_before);
                let mut kind = None;
                for (_, s) in fresh {
                    kind.get_or_insert(s.value.kind);
                    series += 1;
                }
                if let Some(kind) = kind {
                    if !families.contains_key(name) {
                        families.insert(name.to_string(), Family::default());
                    }
                    if let Some(f) = families.get_mut(name) {
                        f.agents.get_or_insert(kind);
                    }
                }
            }
        });
        self.metrics.series.set(series);
        for own in Own::ALL {
            if own != Own::Alerts || self.derived.alerts.is_some() {
                families.entry(own.name().to_string()).or_default().own = Some(own);
            }
        }
        for mf in self.metrics.registry.gather() {
            let name = mf.get_name().to_string();
            families.entry(name).or_default().registry = Some(mf);
        }
        for (name, family) in &families {
            if let Some(mf) = &family.registry {
                match TextEncoder::new().encode(std::slice::from_ref(mf), w) {
                    Ok(()) => {}
                    Err(prometheus::Error::Io(e)) => return Err(e),
                    // A malformed family of our own would be our bug: the rest still goes out.
                    Err(e) => tracing::error!(family = %name, error = %e, "encoding a /metrics family failed"),
                }
                continue;
            }
            self.family(w, name, family, stale_before)?;
        }
        Ok(())
    }

    /// Writes one family: its header, then each node's lines of it.
    fn family(&self, w: &mut impl Write, name: &str, family: &Family, stale_before: i64) -> io::Result<()> {
        let (help, counter) = match (family.own, family.agents) {
            (Some(own), _) => (own.help(), own == Own::Events),
            (None, Some(kind)) => (
                catalogue::find(name)
                    .map(|d| d.help)
                    .unwrap_or("Agent metric not in this collector's catalogue (newer agent?)."),
                kind == MetricKind::Counter,
            ),
            (None, None) => return Ok(()),
        };
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut wrote_header = false;
        for node in self.store.topology().nodes() {
            // Lines go to a buffer while the node is locked, to the scraper
            // after: a slow scraper never holds up that node's pushes.
            self.store.read(&node.id, |state| {
                if let Some(own) = family.own {
                    self.own_lines(&mut buf, own, node, state);
                }
                if family.agents.is_some() {
                    for (_, s) in state.fresh_family(name, stale_before) {
                        // Writing to a Vec cannot fail.
                        let _ = sample(&mut buf, name, &s.text, s.value.value);
                    }
                }
            });
            if !buf.is_empty() && !wrote_header {
                wrote_header = true;
                header(w, name, help, counter)?;
            }
            if buf.len() >= 8 * 1024 {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            w.write_all(&buf)?;
        }
        Ok(())
    }

    /// The lines of one of the collector's own families about `node`.
    fn own_lines(&self, buf: &mut Vec<u8>, own: Own, node: &Node, state: &NodeState) {
        let name = own.name();
        let identity = node.identity_labels();
        let labels = |extra: &[(&str, &str)]| {
            let mut pairs: Vec<(&str, &str)> = identity.to_vec();
            pairs.extend_from_slice(extra);
            label_set(&mut pairs)
        };
        // Writing to a Vec cannot fail.
        match own {
            Own::Alerts => {
                if let Some(alerts) = &self.derived.alerts {
                    let n = alerts.get(node.id.as_str()).copied().unwrap_or(0);
                    let _ = sample(buf, name, &labels(&[]), n as f64);
                }
            }
            Own::Recent | Own::Last => {
                for r in self.derived.recent_events.iter().filter(|r| r.node == node.id.as_str()) {
                    let ls = labels(&[("kind", &r.kind), ("severity", &r.severity), ("source", &r.source)]);
                    let v = if own == Own::Recent { r.count as f64 } else { r.last_ms as f64 / 1000.0 };
                    let _ = sample(buf, name, &ls, v);
                }
            }
            Own::Up => {
                let up = state.last_push_ms.is_some_and(|t| self.now_ms - t <= self.down_after_ms);
                let _ = sample(buf, name, &labels(&[]), if up { 1.0 } else { 0.0 });
            }
            Own::LastPush => {
                if let Some(t) = state.last_push_ms {
                    let _ = sample(buf, name, &labels(&[]), t as f64 / 1000.0);
                }
            }
            Own::Info => {
                let ls = labels(&[("name", &node.name), ("agent_version", &state.agent_version)]);
                let _ = sample(buf, name, &ls, 1.0);
            }
            Own::Events => {
                for ((kind, severity), n) in &state.security_counts {
                    let _ = sample(buf, name, &labels(&[("kind", kind), ("severity", severity)]), *n as f64);
                }
            }
        }
    }
}

/// Renders the whole text exposition into memory (tests).
#[cfg(test)]
pub(crate) fn render(store: &Store, metrics: &Metrics, derived: &Derived, now_ms: i64, down_after_ms: i64) -> Vec<u8> {
    let mut buf = Vec::new();
    let scrape = Scrape { store, metrics, derived, now_ms, down_after_ms };
    scrape.write(&mut buf).expect("writing to memory");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use tierwatch_protocol::{Batch, Label, NodeId, Point, Series};

    fn store() -> Store {
        let t = crate::topology::Topology::parse(
            Path::new("t.yaml"),
            "nodes:\n  - id: p\n    tier: province\n    name: P\n  - id: c\n    tier: commune\n    name: \"Xã \\\"C\\\"\"\n    parent: p\n",
        )
        .unwrap();
        Store::new(Arc::new(t), std::time::Duration::from_secs(60))
    }

    fn series(name: &str, kind: MetricKind, labels: &[(&str, &str)], ts: i64, v: f64) -> Series {
        Series {
            name: name.into(),
            kind: kind as i32,
            labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
            points: vec![Point { timestamp_ms: ts, value: v }],
        }
    }

    fn push(s: &Store, node: &str, series: Vec<Series>, now: i64) {
        let b = Batch {
            version: 1,
            node_id: node.into(),
            sequence: 1,
            boot_id: vec![1; 16],
            agent_version: "1.2".into(),
            series,
            ..Default::default()
        };
        assert!(s.ingest(&NodeId::new(node).unwrap(), b, now));
    }

    /// The lines of family `name` (header and samples), in order.
    fn family<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name} "))
                    || l.starts_with(&format!("# HELP {name} "))
                    || l.starts_with(&format!("# TYPE {name} "))
            })
            .collect()
    }

    #[test]
    fn families_come_once_each_sorted_with_nodes_in_topology_order() {
        let s = store();
        let now = 1_000_000;
        push(
            &s,
            "c",
            vec![
                series(
                    "tierwatch_probe_success",
                    MetricKind::Gauge,
                    &[("probe", "tcp"), ("target", "a\"b\\c")],
                    now,
                    1.0,
                ),
                series("tierwatch_x_total", MetricKind::Counter, &[("target", "gw")], now, 7.0),
            ],
            now,
        );
        push(
            &s,
            "p",
            vec![
                series("tierwatch_probe_success", MetricKind::Gauge, &[("probe", "icmp"), ("target", "c")], now, 0.0),
                // Sent as a gauge here, a counter at c: the family keeps one type.
                series("tierwatch_x_total", MetricKind::Gauge, &[("target", "up")], now, 3.0),
            ],
            now,
        );
        let m = Metrics::new(&[]).unwrap();
        let alerts = Arc::new(std::collections::HashMap::from([("c".to_string(), 2usize)]));
        let derived = Derived { alerts: Some(alerts), recent_events: Vec::new() };
        let text = String::from_utf8(render(&s, &m, &derived, now + 1000, 30_000)).unwrap();

        let helps: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# HELP ")).map(|l| l.split(' ').next().unwrap()).collect();
        let mut sorted = helps.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(helps, sorted, "families sorted, each once");
        assert!(helps.contains(&"tierwatch_collector_series"), "the registry's families are in");

        assert_eq!(family(&text, "tierwatch_probe_success"), [
            format!("# HELP tierwatch_probe_success {}", catalogue::find("tierwatch_probe_success").unwrap().help).as_str(),
            "# TYPE tierwatch_probe_success gauge",
            "tierwatch_probe_success{node=\"p\",parent=\"\",probe=\"icmp\",province=\"p\",target=\"c\",tier=\"province\"} 0",
            "tierwatch_probe_success{node=\"c\",parent=\"p\",probe=\"tcp\",province=\"p\",target=\"a\\\"b\\\\c\",tier=\"commune\"} 1",
        ]);
        let x = family(&text, "tierwatch_x_total");
        assert_eq!(x[1], "# TYPE tierwatch_x_total gauge", "the type of the first node's series: {x:?}");
        assert_eq!(x.len(), 4);
        assert_eq!(
            family(&text, NODE_ALERTS)[2..],
            [
                "tierwatch_node_alerts{node=\"p\",parent=\"\",province=\"p\",tier=\"province\"} 0",
                "tierwatch_node_alerts{node=\"c\",parent=\"p\",province=\"p\",tier=\"commune\"} 2",
            ]
        );
        assert!(family(&text, NODE_INFO).contains(&"tierwatch_node_info{agent_version=\"1.2\",name=\"Xã \\\"C\\\"\",node=\"c\",parent=\"p\",province=\"p\",tier=\"commune\"} 1"), "{text}");
        assert!(text.contains("\ntierwatch_collector_series 4\n"), "counted in this very scrape");

        // Stale series leave; a family with none left has no header either.
        let later = String::from_utf8(render(&s, &m, &derived, now + 61_000, 30_000)).unwrap();
        assert!(family(&later, "tierwatch_probe_success").is_empty(), "{later}");
        assert!(later.contains("\ntierwatch_collector_series 0\n"));
    }
}
