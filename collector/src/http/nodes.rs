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

/// The last result of one probe of a node.
#[derive(Debug, Serialize)]
pub(crate) struct ProbeStatus {
    pub probe: String,
    pub target: String,
    pub success: bool,
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
    let mut probes: Vec<ProbeStatus> = st
        .fresh_series(stale_before)
        .filter(|((name, _), _)| name == tierwatch_protocol::catalogue::PROBE_SUCCESS.name)
        .map(|((_, labels), v)| {
            let get = |n: &str| labels.iter().find(|l| l.name == n).map(|l| l.value.clone()).unwrap_or_default();
            ProbeStatus { probe: get("probe"), target: get("target"), success: v.value >= 1.0 }
        })
        .collect();
    probes.sort_by(|a, b| a.target.cmp(&b.target));
    probes
}

/// `GET /api/v1/nodes`.
pub(super) async fn list(State(s): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "nodes": node_statuses(&s, tierwatch_protocol::now_ms()) }))
}
