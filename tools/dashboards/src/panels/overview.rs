//! The province overview: every node, its link and its alerts.

use serde_json::json;

use crate::{names, node_link, panel, q, rename, table, unit_override, Panel, Texts, SEL};

pub(crate) fn overview(t: &Texts) -> Vec<Panel> {
    let thresholds_bad_at = |n: f64| json!({ "mode": "absolute", "steps": [{ "color": "green", "value": null }, { "color": "red", "value": n }] });
    vec![
        panel("overview.up", "stat", 6, "none", vec![table(format!("sum(tierwatch_node_up{{{SEL}}})"))]),
        panel(
            "overview.down",
            "stat",
            6,
            "none",
            vec![table(format!(
                "count(tierwatch_node_up{{{SEL}}} == 0 and on(node) tierwatch_node_last_push_timestamp_seconds) or vector(0)"
            ))],
        )
        .with(json!({ "fieldConfig": { "defaults": { "thresholds": thresholds_bad_at(1.0) } },
                      "options": { "colorMode": "background" } })),
        panel("overview.incidents", "stat", 6, "none", vec![table("tierwatch_collector_incidents_open")])
            .with(json!({ "fieldConfig": { "defaults": { "thresholds": thresholds_bad_at(1.0) } },
                          "options": { "colorMode": "background" } })),
        panel(
            "overview.security_today",
            "stat",
            6,
            "none",
            vec![table(format!("sum(tierwatch_security_recent_events{{{SEL}}}) or vector(0)"))],
        ),
        panel(
            "overview.nodes",
            "table",
            24,
            "none",
            vec![
                table(names(&format!("tierwatch_node_up{{{SEL}}}"))),
                table(format!("max by (node) (tierwatch_icmp_loss_ratio{{{SEL}}})")),
                table(format!("max by (node) (tierwatch_icmp_rtt_median_seconds{{{SEL}}})")),
                table(format!("sum by (node) (tierwatch_node_alerts{{{SEL}}})")),
                table(format!(
                    "sum by (node) (tierwatch_security_recent_events{{{SEL}}}) or sum by (node) (0 * tierwatch_node_up{{{SEL}}})"
                )),
            ],
        )
        .tall(12)
        .with(json!({
            "options": { "showHeader": true, "sortBy": [{ "displayName": t.dashboard("col.up").0, "desc": false }] },
            "transformations": [
                { "id": "merge", "options": {} },
                { "id": "organize", "options": {
                    "excludeByName": { "Time": true, "province": true, "parent": true, "__name__": true },
                    "indexByName": { "name": 0, "node": 1, "tier": 2, "Value #A": 3, "Value #B": 4, "Value #C": 5,
                                     "Value #D": 6, "Value #E": 7 },
                    "renameByName": rename(t, &[("name", "col.name"), ("tier", "col.tier"), ("Value #A", "col.up"),
                        ("Value #B", "col.loss"), ("Value #C", "col.latency"), ("Value #D", "col.alerts"),
                        ("Value #E", "col.security")]),
                }},
            ],
            "fieldConfig": { "overrides": [
                node_link(t),
                unit_override("Value #B", "percentunit"),
                unit_override("Value #C", "s"),
                { "matcher": { "id": "byName", "options": "Value #A" }, "properties": [
                    { "id": "mappings", "value": [{ "type": "value", "options": {
                        "0": { "text": t.status_words[1], "color": "red" },
                        "1": { "text": t.status_words[0], "color": "green" } } }] },
                    { "id": "custom.cellOptions", "value": { "type": "color-background" } } ] },
            ]},
        })),
        panel(
            "overview.loss",
            "timeseries",
            12,
            "percentunit",
            vec![q(names(&format!("max by (node) (tierwatch_icmp_loss_ratio{{{SEL}}})")), "{{name}}")],
        ),
        panel(
            "overview.latency",
            "timeseries",
            12,
            "s",
            vec![q(names(&format!("max by (node) (tierwatch_icmp_rtt_median_seconds{{{SEL}}})")), "{{name}}")],
        ),
    ]
}
