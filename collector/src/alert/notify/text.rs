//! The human-readable form of a notification, for Telegram and email: a
//! subject line and a few lines of body that a person on call can act on
//! from a phone at 3 a.m.

use super::Message;
use crate::i18n::Locale;

/// Subject and plain-text body of `m`, in the language and local time of `l`.
pub fn render(m: &Message, l: &Locale) -> (String, String) {
    let t = l.texts();
    let i = &m.incident;
    let tag = match (m.event.as_str(), i.problem.as_str()) {
        ("resolved", _) => t.tag_resolved,
        ("acknowledged", _) => t.tag_acknowledged,
        ("repeated", _) => t.tag_repeated,
        (_, super::super::flap::FLAPPING) => t.tag_flapping,
        _ => t.tag_firing,
    };
    let subject = format!("[{tag}] [{}] {}", t.severity(i.severity.as_str()), i.summary);
    let mut body = vec![subject.clone(), String::new()];
    let at = |ms: i64| l.time(ms);
    // Labels padded to one column, whatever their length in the language.
    let width =
        [t.label_incident, t.label_since, t.label_ended].iter().map(|l| l.chars().count()).max().unwrap_or(0) + 1;
    let line = |label: &str, value: String| format!("{:<width$} {value}", format!("{label}:"));
    body.push(line(t.label_incident, format!("{} ({}, {})", i.key, i.node_name, i.node)));
    body.push(line(t.label_since, at(i.since_ms)));
    if m.event == "resolved" {
        let secs = (m.at_ms - i.since_ms).max(0) / 1000;
        let lasted = tierwatch_runtime::duration::format(std::time::Duration::from_secs(secs as u64));
        body.push(line(t.label_ended, format!("{} ({})", at(m.at_ms), t.fill(t.lasted, &[("duration", &lasted)]))));
    }
    if let Some(a) = &i.ack {
        let comment = if a.comment.is_empty() { String::new() } else { format!(": {}", a.comment) };
        body.push(t.fill(t.acknowledged_by, &[("by", &a.by), ("at", &at(a.at_ms)), ("comment", &comment)]));
    }
    if !i.affected.is_empty() {
        let names: Vec<&str> = i.affected.iter().map(|(_, n)| n.as_str()).collect();
        body.push(t.fill(t.affected, &[("count", &names.len().to_string()), ("names", &names.join(", "))]));
    }
    if !i.alerts.is_empty() {
        body.push(String::new());
        for a in i.alerts.iter().take(20) {
            let text = t.fill(t.alert_line, &[("summary", &a.summary), ("rule", &a.rule), ("node", &a.node)]);
            body.push(format!("- {text}"));
        }
        if i.alerts.len() > 20 {
            body.push(format!("- {}", t.fill(t.and_more, &[("count", &(i.alerts.len() - 20).to_string())])));
        }
    }
    body.push(String::new());
    body.push(format!("id {}", m.id));
    (subject, body.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::model::{Ack, AlertView, IncidentView, Severity};

    #[test]
    fn a_resolved_provincial_outage_reads_well() {
        let v = IncidentView {
            key: "p/unreachable".into(),
            node: "p".into(),
            node_name: "Tỉnh An Giang".into(),
            problem: "unreachable".into(),
            scope: crate::alert::model::Scope::Node,
            severity: Severity::Critical,
            since_ms: 1_764_300_000_000,
            summary: "Tỉnh An Giang is unreachable; 2 node(s) behind it are cut off: Xã A, Xã B".into(),
            affected: vec![("a".into(), "Xã A".into()), ("b".into(), "Xã B".into())],
            service: None,
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
        let m = Message::new("resolved", &v, 1_764_300_330_000);
        let (subject, body) = render(&m, &Locale::default());
        assert_eq!(
            subject,
            "[RESOLVED] [critical] Tỉnh An Giang is unreachable; 2 node(s) behind it are cut off: Xã A, Xã B"
        );
        for want in [
            "Incident: p/unreachable (Tỉnh An Giang, p)",
            "Since:    2025-11-28 03:20:00 +00:00",
            "lasted 5m30s",
            "Acknowledged by Lan at 2025-11-28 03:21:00 +00:00: ISP ticket 42",
            "Affected (2): Xã A, Xã B",
            "- Tỉnh An Giang (p) has stopped reporting (node_down on p)",
        ] {
            assert!(body.contains(want), "{want:?} in\n{body}");
        }
        // The same page for a Vietnamese on-call group: every fixed word translated, names as written.
        let vi = Locale {
            language: crate::i18n::Language::Vi,
            utc_offset: crate::i18n::parse_utc_offset("+07:00").unwrap(),
        };
        let (subject, body) = render(&m, &vi);
        assert!(subject.starts_with("[ĐÃ KHẮC PHỤC] [nghiêm trọng] Tỉnh An Giang"), "{subject}");
        for want in [
            "Sự cố:    p/unreachable (Tỉnh An Giang, p)",
            "Bắt đầu:  2025-11-28 10:20:00 +07:00",
            "Kết thúc: 2025-11-28 10:25:30 +07:00 (kéo dài 5m30s)",
            "Lan đã tiếp nhận lúc 2025-11-28 10:21:00 +07:00: ISP ticket 42",
            "Bị ảnh hưởng (2): Xã A, Xã B",
            "(node_down tại p)",
        ] {
            assert!(body.contains(want), "{want:?} in\n{body}");
        }
    }
}
