//! What the alert engine hands on: alerts, incidents, their changes and
//! acknowledgements, and the severity scale. The bottom of `alert`: it
//! imports nothing of the crate, so the notifiers, the HTTP API, the
//! status page and the texts can use these types without reaching into
//! evaluation.

use std::collections::BTreeMap;

/// How urgent an alert is; routes choose receivers by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What an incident covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The node itself (and, for unreachable, everything behind it).
    Node,
    /// Several children of the node, the node itself fine.
    Children,
    /// A service probed from several nodes, failing from enough of them
    /// (the node is the nearest common ancestor of those failing).
    Service,
}

impl Scope {
    /// The label and JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Node => "node",
            Scope::Children => "children",
            Scope::Service => "service",
        }
    }
}

/// An alert as reported in incidents and the API.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertView {
    pub rule: String,
    pub node: String,
    pub subject: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub severity: Severity,
    pub since_ms: i64,
    pub summary: String,
}

/// An incident as notified: everything a page needs, names as in the topology.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IncidentView {
    pub key: String,
    pub node: String,
    pub node_name: String,
    pub problem: String,
    /// The node itself, or several of its children (the parent's side).
    pub scope: Scope,
    pub severity: Severity,
    pub since_ms: i64,
    pub summary: String,
    /// Nodes behind the root cause, the children grouped or the vantage
    /// points failing a service, with their names.
    pub affected: Vec<(String, String)>,
    /// The service a service incident is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub alerts: Vec<AlertView>,
    /// Set while a maintenance window keeps it from paging: which and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted: Option<String>,
    /// Set once someone took it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
}

/// An acknowledgement: someone is on it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    pub by: String,
    #[serde(default)]
    pub comment: String,
    pub at_ms: i64,
}

/// What changed in one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Opened(IncidentView),
    /// The affected nodes or alerts changed.
    Updated(IncidentView),
    /// Over; carries the last view and when it ended.
    Resolved {
        incident: IncidentView,
        ended_ms: i64,
    },
    /// Someone acknowledged it (through the API).
    Acknowledged(IncidentView),
    /// It began inside a maintenance window: kept in the history, not paged.
    Muted(IncidentView),
    /// Over while still muted: in the history, not paged.
    MutedResolved {
        incident: IncidentView,
        ended_ms: i64,
    },
}

impl Change {
    /// True for the changes that are paged (not those of muted incidents).
    pub fn notifies(&self) -> bool {
        !matches!(self, Change::Muted(_) | Change::MutedResolved { .. })
    }

    /// The history and notification event name.
    pub fn event(&self) -> &'static str {
        match self {
            Change::Opened(_) => "opened",
            Change::Updated(_) => "updated",
            Change::Resolved { .. } => "resolved",
            Change::Acknowledged(_) => "acknowledged",
            Change::Muted(_) => "muted",
            Change::MutedResolved { .. } => "muted_resolved",
        }
    }

    /// The incident as it stands after the change.
    pub fn view(&self) -> &IncidentView {
        match self {
            Change::Opened(v) | Change::Updated(v) | Change::Acknowledged(v) | Change::Muted(v) => v,
            Change::Resolved { incident, .. } | Change::MutedResolved { incident, .. } => incident,
        }
    }
}
