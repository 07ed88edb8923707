//! `/api/v1/nodes`: every node of the topology with its status, last push
//! and the last result of each of its probes (also what the status page
//! and the `status` command show).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::Http;

/// A node as `/api/v1/nodes` reports it.
#[derive(Debug, Serialize)]
pub(crate) struct NodeStatus {
    pub id: String,
    pub name: String,
    pub tier: &'static str,
    pub parent: Option<String>,
    pub province: Option<String>,
    /// `up` (pushed within node_down_after), `down` (pushed before, not since), `unknown` (never pushed).
    pub status: &'static str,
    /// RFC 3339 time of the last accepted push.
    pub last_seen: Option<String>,
    pub last_seen_age_seconds: Option<f64>,
    pub agent_version: Option<String>,
    pub last_sequence: Option<u64>,
    pub series: usize,
    /// The last result of each probe the node runs.
    pub probes: Vec<ProbeStatus>,
}

/// The last result of one probe of a node; for ICMP with the link's
/// figures of its last round (what a dashboard shows next to up or down).
#[derive(Debug, Serialize)]
pub(crate) struct ProbeStatus {
    pub probe: String,
    pub target: String,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_median_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_seconds: Option<f64>,
}

/// Snapshot of every node's status at `now_ms`.
pub(crate) fn node_statuses(s: &Http, now_ms: i64) -> Vec<NodeStatus> {
    let stale_before = s.store.stale_before(now_ms);
    let down_after = s.node_down_after.as_millis() as i64;
    let mut out = Vec::new();
    s.store.for_each_node(|node, st| {
        let status = match st.last_push_ms {
            None => "unknown",
            Some(t) if now_ms - t <= down_after => "up",
            Some(_) => "down",
        };
        out.push(NodeStatus {
            id: node.id.to_string(),
            name: node.name.clone(),
            tier: node.tier.as_str(),
            parent: node.parent.as_ref().map(|p| p.to_string()),
            province: node.province.as_ref().map(|p| p.to_string()),
            status,
            last_seen: st.last_push_ms.and_then(crate::timestamp::rfc3339),
            last_seen_age_seconds: st.last_push_ms.map(|t| (now_ms - t) as f64 / 1000.0),
            agent_version: st.last_push_ms.map(|_| st.agent_version.clone()),
            last_sequence: st.last_push_ms.map(|_| st.last_sequence),
            series: st.fresh_series(stale_before).count(),
            probes: probe_statuses(st, stale_before),
        });
    });
    out
}

fn probe_statuses(st: &crate::store::NodeState, stale_before: i64) -> Vec<ProbeStatus> {
    use tierwatch_protocol::catalogue::{ICMP_JITTER, ICMP_LOSS, ICMP_RTT_MEDIAN, PROBE_SUCCESS};
    let label = |labels: &[tierwatch_protocol::Label], n: &str| {
        labels.iter().find(|l| l.name == n).map(|l| l.value.clone()).unwrap_or_default()
    };
    // Per target: (median RTT, loss, jitter) of its last ICMP round.
    let mut link: std::collections::HashMap<String, [Option<f64>; 3]> = std::collections::HashMap::new();
    for (name, labels, v) in st.fresh_series(stale_before) {
        let slot = match name {
            n if n == ICMP_RTT_MEDIAN.name => 0,
            n if n == ICMP_LOSS.name => 1,
            n if n == ICMP_JITTER.name => 2,
            _ => continue,
        };
        link.entry(label(labels, "target")).or_default()[slot] = Some(v.value);
    }
    let mut probes: Vec<ProbeStatus> = st
        .fresh_family(PROBE_SUCCESS.name, stale_before)
        .map(|(labels, stored)| {
            let v = &stored.value;
            let (probe, target) = (label(labels, "probe"), label(labels, "target"));
            let [rtt, loss, jitter] =
                if probe == "icmp" { link.get(&target).copied().unwrap_or_default() } else { [None; 3] };
            ProbeStatus {
                probe,
                target,
                success: v.value >= 1.0,
                rtt_median_seconds: rtt,
                loss_ratio: loss,
                jitter_seconds: jitter,
            }
        })
        .collect();
    probes.sort_by(|a, b| a.target.cmp(&b.target));
    probes
}

/// `GET /api/v1/nodes`.
pub(super) async fn list(State(s): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "nodes": node_statuses(&s, tierwatch_protocol::now_ms()) }))
}
