//! Incidents as people and receivers see them: names from the topology,
//! rule summaries and incident texts filled in, in the rules' language.

use tierwatch_protocol::{Label, NodeId};

use super::incident::{Active, Incident};
use super::model::{AlertView, IncidentView, Scope};
use super::readings::AlertKey;
use super::rules::{Rule, Rules};
use super::state::Instance;
use crate::template::render_in;
use crate::topology::{Node, Topology};

/// The view of incident `inc`: its alerts (indexes into `firing` and
/// `active`) with their summaries filled in, the nodes it covers by name,
/// and its own summary in the rules' language.
pub fn incident(
    rules: &Rules,
    topo: &Topology,
    inc: &Incident,
    firing: &[(&AlertKey, &Instance)],
    active: &[Active],
) -> IncidentView {
    let name = |id: &NodeId| topo.get(id).map_or_else(|| id.to_string(), |n| n.name.clone());
    let t = rules.locale.texts();
    let alerts: Vec<AlertView> = inc
        .alerts
        .iter()
        .map(|&i| {
            let (k, inst) = firing[i];
            let rule: &Rule = &rules.rules[k.rule];
            let summary = match topo.get(&k.node) {
                Some(node) => render_in(&rule.summary, &vars(node, &k.labels, inst.value), t.days),
                None => rule.summary.clone(),
            };
            AlertView {
                rule: rule.name.clone(),
                node: k.node.to_string(),
                subject: inst.subject.to_string(),
                labels: k.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                value: inst.value,
                severity: rule.severity,
                since_ms: active[i].since_ms,
                summary,
            }
        })
        .collect();
    let affected: Vec<(String, String)> = inc.affected.iter().map(|n| (n.to_string(), name(n))).collect();
    let names = affected.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ");
    let node_name = name(&inc.node);
    let count = affected.len().to_string();
    let (service, total) =
        inc.service.as_ref().map_or((String::new(), String::new()), |(s, n)| (s.clone(), n.to_string()));
    let vars = [
        ("node", node_name.as_str()),
        ("problem", t.problem(&inc.problem)),
        ("count", &count),
        ("names", &names),
        ("service", &service),
        ("total", &total),
    ];
    let summary = match (inc.scope, affected.is_empty()) {
        (Scope::Children, _) => t.fill(t.incident_children, &vars),
        (Scope::Service, _) => t.fill(t.incident_service, &vars),
        (Scope::Node, false) => t.fill(t.incident_cut_off, &vars),
        (Scope::Node, true) => alerts
            .iter()
            .find(|a| a.subject == inc.node.as_str())
            .or(alerts.first())
            .map_or_else(|| t.fill(t.incident_plain, &vars), |a| a.summary.clone()),
    };
    IncidentView {
        key: inc.key(),
        node: inc.node.to_string(),
        node_name: name(&inc.node),
        problem: inc.problem.clone(),
        scope: inc.scope,
        severity: inc.severity,
        since_ms: inc.since_ms,
        summary,
        affected,
        service: inc.service.as_ref().map(|(s, _)| s.clone()),
        alerts,
        muted: None,
        ack: None,
    }
}

/// What a rule summary's `{{ key }}` can name: the value, the node's name
/// and identity labels, the series' labels.
fn vars<'a>(node: &'a Node, labels: &'a [Label], value: f64) -> impl Fn(&str) -> Option<String> + 'a {
    move |k: &str| match k {
        "value" => Some(value.to_string()),
        "node_name" => Some(node.name.clone()),
        _ => node
            .identity_labels()
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
            .or_else(|| labels.iter().find(|l| l.name == k).map(|l| l.value.clone())),
    }
}
