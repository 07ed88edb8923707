//! Fleet health: agents, pushes, spools, the collector itself.

use serde_json::json;

use crate::{names, node_link, panel, q, rename, table, unit_override, Panel, Texts, SEL};

pub(crate) fn fleet(t: &Texts) -> Vec<Panel> {
    vec![
        panel(
            "fleet.versions",
            "table",
            16,
            "none",
            vec![
                table(format!("max by (node, name, agent_version) (tierwatch_node_info{{{SEL}}})")),
                table(format!("time() - tierwatch_node_last_push_timestamp_seconds{{{SEL}}}")),
            ],
        )
        .tall(10)
        .with(json!({
            "transformations": [
                { "id": "merge", "options": {} },
                { "id": "organize", "options": {
                    "excludeByName": { "Time": true, "Value #A": true, "province": true, "parent": true, "tier": true },
                    "renameByName": rename(t, &[("name", "col.name"), ("agent_version", "col.version"),
                        ("Value #B", "col.last_push")]),
                }},
            ],
            "fieldConfig": { "overrides": [unit_override("Value #B", "s"), node_link(t)] },
        })),
        panel(
            "fleet.version_count",
            "piechart",
            8,
            "none",
            vec![table(format!(r#"count by (agent_version) (tierwatch_node_info{{{SEL},agent_version!=""}})"#))],
        )
        .tall(10)
        .with(json!({ "options": { "reduceOptions": { "calcs": ["lastNotNull"], "values": true },
                                   "legend": { "displayMode": "table", "placement": "right", "values": ["value"] } },
                      "fieldConfig": { "defaults": { "displayName": "${__field.labels.agent_version}" } } })),
        panel(
            "fleet.spool_batches",
            "timeseries",
            12,
            "none",
            vec![q(names(&format!("tierwatch_agent_spool_batches{{{SEL}}}")), "{{name}}")],
        ),
        panel(
            "fleet.spool_age",
            "timeseries",
            12,
            "s",
            vec![q(names(&format!("tierwatch_agent_spool_oldest_unsent_age_seconds{{{SEL}}}")), "{{name}}")],
        ),
        panel(
            "fleet.drops",
            "timeseries",
            12,
            "none",
            vec![q(
                format!("sum by (node, reason) (increase(tierwatch_agent_dropped_batches_total{{{SEL}}}[1h]))"),
                "{{node}} {{reason}}",
            )],
        ),
        panel(
            "fleet.ingest",
            "timeseries",
            12,
            "reqps",
            vec![q("sum by (result) (rate(tierwatch_collector_batches_total[$__rate_interval]))", "{{result}}")],
        ),
        panel(
            "fleet.rejected",
            "timeseries",
            8,
            "reqps",
            vec![
                q(
                    r#"sum(rate(tierwatch_collector_batches_total{result!~"accepted|duplicate"}[$__rate_interval]))"#,
                    "pushes",
                ),
                q(r#"sum(rate(tierwatch_collector_samples_total{result="rejected"}[$__rate_interval]))"#, "samples"),
            ],
        ),
        panel(
            "fleet.notify_queue",
            "timeseries",
            8,
            "none",
            vec![q("sum by (receiver) (tierwatch_collector_notifications_queued)", "{{receiver}}")],
        ),
        panel(
            "fleet.notifications",
            "timeseries",
            8,
            "reqps",
            vec![q(
                "sum by (receiver, result) (rate(tierwatch_collector_notifications_total[$__rate_interval]))",
                "{{receiver}} {{result}}",
            )],
        ),
        panel(
            "fleet.handshakes",
            "timeseries",
            8,
            "reqps",
            vec![q("rate(tierwatch_collector_tls_handshake_failures_total[$__rate_interval])", "handshake failures")],
        ),
    ]
}
