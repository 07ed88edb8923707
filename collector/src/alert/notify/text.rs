//! The human-readable form of a notification, for Telegram and email: a
//! subject line and a few lines of body that a person on call can act on
//! from a phone at 3 a.m.

use super::Message;

/// Subject and plain-text body of `m`.
pub fn render(m: &Message) -> (String, String) {
    let i = &m.incident;
    let tag = match (m.event.as_str(), i.problem.as_str()) {
        ("resolved", _) => "RESOLVED",
        ("acknowledged", _) => "ACKNOWLEDGED",
        ("repeated", _) => "STILL FIRING",
        (_, super::super::flap::FLAPPING) => "FLAPPING",
        _ => "FIRING",
    };
    let subject = format!("[{tag}] [{}] {}", i.severity.as_str(), i.summary);
    let mut body = vec![subject.clone(), String::new()];
    let at = |ms: i64| crate::http::rfc3339(ms).unwrap_or_else(|| ms.to_string());
    body.push(format!("Incident: {} ({}, {})", i.key, i.node_name, i.node));
    body.push(format!("Since:    {}", at(i.since_ms)));
    if m.event == "resolved" {
        let secs = (m.at_ms - i.since_ms).max(0) / 1000;
        body.push(format!(
            "Ended:    {} (lasted {})",
            at(m.at_ms),
            tierwatch_runtime::duration::format(std::time::Duration::from_secs(secs as u64))
        ));
    }
    if let Some(a) = &i.ack {
        let comment = if a.comment.is_empty() { String::new() } else { format!(": {}", a.comment) };
        body.push(format!("Acknowledged by {} at {}{comment}", a.by, at(a.at_ms)));
    }
    if !i.affected.is_empty() {
        let names: Vec<&str> = i.affected.iter().map(|(_, n)| n.as_str()).collect();
        body.push(format!("Affected ({}): {}", names.len(), names.join(", ")));
    }
    if !i.alerts.is_empty() {
        body.push(String::new());
        for a in i.alerts.iter().take(20) {
            body.push(format!("- {} ({} on {})", a.summary, a.rule, a.node));
        }
        if i.alerts.len() > 20 {
            body.push(format!("- and {} more", i.alerts.len() - 20));
        }
    }
    body.push(String::new());
    body.push(format!("id {}", m.id));
    (subject, body.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::engine::{Ack, AlertView, IncidentView};
    use crate::alert::rules::Severity;

    #[test]
    fn a_resolved_provincial_outage_reads_well() {
        let v = IncidentView {
            key: "p/unreachable".into(),
            node: "p".into(),
            node_name: "Tỉnh An Giang".into(),
            problem: "unreachable".into(),
            scope: "node".into(),
            severity: Severity::Critical,
            since_ms: 1_764_300_000_000,
            summary: "Tỉnh An Giang is unreachable; 2 node(s) behind it are cut off: Xã A, Xã B".into(),
            affected: vec![("a".into(), "Xã A".into()), ("b".into(), "Xã B".into())],
            alerts: vec![AlertView {
                rule: "node_down".into(),
                node: "p".into(),
                subject: "p".into(),
                labels: Default::default(),
                value: 31.0,
                severity: Severity::Critical,
                since_ms: 1_764_300_000_000,
                summary: "Tỉnh An Giang (p) has stopped reporting".into(),
            }],
            muted: None,
            ack: Some(Ack { by: "Lan".into(), comment: "ISP ticket 42".into(), at_ms: 1_764_300_060_000 }),
        };
        let (subject, body) = render(&Message::new("resolved", &v, 1_764_300_330_000));
        assert_eq!(
            subject,
            "[RESOLVED] [critical] Tỉnh An Giang is unreachable; 2 node(s) behind it are cut off: Xã A, Xã B"
        );
        for want in [
            "Incident: p/unreachable (Tỉnh An Giang, p)",
            "Since:    2025-11-28T03:20:00Z",
            "lasted 5m30s",
            "Acknowledged by Lan at 2025-11-28T03:21:00Z: ISP ticket 42",
            "Affected (2): Xã A, Xã B",
            "- Tỉnh An Giang (p) has stopped reporting (node_down on p)",
        ] {
            assert!(body.contains(want), "{want:?} in\n{body}");
        }
    }
}
