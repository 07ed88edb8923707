//! The WAN link detail of one node and target, SmokePing-style.

use serde_json::{json, Value};

use crate::{panel, q, Panel, WAN};

pub(crate) fn wan() -> Vec<Panel> {
    let by =
        |field: &str, props: Value| json!({ "matcher": { "id": "byName", "options": field }, "properties": props });
    // SmokePing's picture: min stacked with (max - min) draws the band; median and p90 are lines.
    let band = json!({ "fieldConfig": { "overrides": [
        by("min", json!([{ "id": "custom.stacking", "value": { "group": "band", "mode": "normal" } },
                         { "id": "custom.lineWidth", "value": 0 }, { "id": "custom.fillOpacity", "value": 0 }])),
        by("min–max", json!([{ "id": "custom.stacking", "value": { "group": "band", "mode": "normal" } },
                             { "id": "custom.lineWidth", "value": 0 }, { "id": "custom.fillOpacity", "value": 30 },
                             { "id": "color", "value": { "mode": "fixed", "fixedColor": "green" } }])),
        by("median", json!([{ "id": "custom.lineWidth", "value": 2 },
                            { "id": "color", "value": { "mode": "fixed", "fixedColor": "dark-green" } }])),
        by("p90", json!([{ "id": "custom.lineStyle", "value": { "fill": "dash", "dash": [6, 4] } }])),
    ]}});
    vec![
        panel(
            "wan.latency",
            "timeseries",
            24,
            "s",
            vec![
                q(format!("tierwatch_icmp_rtt_min_seconds{{{WAN}}}"), "min"),
                q(
                    format!(
                        "tierwatch_icmp_rtt_max_seconds{{{WAN}}} - on(node, target) tierwatch_icmp_rtt_min_seconds{{{WAN}}}"
                    ),
                    "min–max",
                ),
                q(format!("tierwatch_icmp_rtt_median_seconds{{{WAN}}}"), "median"),
                q(format!("tierwatch_icmp_rtt_p90_seconds{{{WAN}}}"), "p90"),
            ],
        )
        .tall(10)
        .with(band),
        panel("wan.loss", "timeseries", 8, "percentunit", vec![q(format!("tierwatch_icmp_loss_ratio{{{WAN}}}"), "loss")])
            .with(json!({ "fieldConfig": { "defaults": { "min": 0, "max": 1, "custom": { "fillOpacity": 20 } } } })),
        panel(
            "wan.jitter",
            "timeseries",
            8,
            "s",
            vec![
                q(format!("tierwatch_icmp_jitter_seconds{{{WAN}}}"), "jitter"),
                q(format!("tierwatch_icmp_rtt_stddev_seconds{{{WAN}}}"), "stddev"),
            ],
        ),
        panel(
            "wan.probe_success",
            "timeseries",
            8,
            "none",
            vec![q(format!(r#"tierwatch_probe_success{{probe="icmp",{WAN}}}"#), "success")],
        )
        .with(json!({ "fieldConfig": { "defaults": { "min": 0, "max": 1 } } })),
        panel(
            "wan.throughput",
            "timeseries",
            12,
            "bps",
            vec![
                q(r#"rate(tierwatch_node_network_receive_bytes_total{node=~"$node"}[$__rate_interval]) * 8"#, "{{interface}} in"),
                q(r#"rate(tierwatch_node_network_transmit_bytes_total{node=~"$node"}[$__rate_interval]) * 8"#, "{{interface}} out"),
            ],
        ),
        panel(
            "wan.errors",
            "timeseries",
            12,
            "pps",
            vec![
                q(r#"rate(tierwatch_node_network_receive_errors_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} rx errors"),
                q(r#"rate(tierwatch_node_network_transmit_errors_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} tx errors"),
                q(r#"rate(tierwatch_node_network_receive_drop_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} rx drops"),
                q(r#"rate(tierwatch_node_network_transmit_drop_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} tx drops"),
            ],
        ),
    ]
}
