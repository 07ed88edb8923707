//! The metrics agents send: one definition each, used by the agent to emit,
//! by the collector for `# HELP` lines, and by tests to hold `docs/metrics.md` true.

use crate::wire::MetricKind;

/// Definition of one agent metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    /// Base unit: `seconds`, `ratio`, `bytes`, or `""` for plain numbers.
    pub unit: &'static str,
    /// Label names the agent sets (identity labels come on top).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! defs {
    ($($id:ident: $name:literal, $kind:ident, $unit:literal, [$($l:literal),*], $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $id: MetricDef = MetricDef {
                name: $name, kind: MetricKind::$kind, unit: $unit, labels: &[$($l),*], help: $help,
            };
        )*
        /// Every metric an agent may send.
        pub const AGENT_METRICS: &[MetricDef] = &[$($id),*];
    };
}

defs! {
    PROBE_SUCCESS: "tierwatch_probe_success", Gauge, "", ["probe", "target"],
        "1 if the last probe of the target succeeded, 0 if it failed.";
    PROBE_DURATION: "tierwatch_probe_duration_seconds", Gauge, "seconds", ["probe", "target"],
        "Wall-clock time the last probe took.";
    ICMP_SENT: "tierwatch_icmp_packets_sent", Gauge, "", ["target"],
        "Echo requests of the last ICMP round's own (the loss ratio's denominator).";
    ICMP_WATCH_SENT: "tierwatch_icmp_watch_packets_sent", Gauge, "", ["target", "purpose"],
        "Echo requests the fast-down watch added to the last ICMP round: confirm (an overdue reply) or keepalive (none sent for the keepalive gap); outside the loss ratio.";
    ICMP_RECEIVED: "tierwatch_icmp_packets_received", Gauge, "", ["target"],
        "Echo replies received in time in the last ICMP round.";
    ICMP_DUPLICATE: "tierwatch_icmp_packets_duplicate", Gauge, "", ["target"],
        "Extra replies to requests of the last round that were already answered (duplicates are never counted as received).";
    ICMP_LATE: "tierwatch_icmp_packets_late", Gauge, "", ["target"],
        "Replies of the last round that arrived after their request's timeout (counted as lost).";
    ICMP_LOSS: "tierwatch_icmp_loss_ratio", Gauge, "ratio", ["target"],
        "Share of echo requests of the last round that got no reply in time (0..1).";
    ICMP_RTT_MIN: "tierwatch_icmp_rtt_min_seconds", Gauge, "seconds", ["target"],
        "Shortest round-trip time of the last ICMP round.";
    ICMP_RTT_MEDIAN: "tierwatch_icmp_rtt_median_seconds", Gauge, "seconds", ["target"],
        "Median round-trip time of the last ICMP round.";
    ICMP_RTT_P90: "tierwatch_icmp_rtt_p90_seconds", Gauge, "seconds", ["target"],
        "90th percentile of the round-trip times of the last ICMP round.";
    ICMP_RTT_MAX: "tierwatch_icmp_rtt_max_seconds", Gauge, "seconds", ["target"],
        "Longest round-trip time of the last ICMP round.";
    ICMP_RTT_MEAN: "tierwatch_icmp_rtt_mean_seconds", Gauge, "seconds", ["target"],
        "Mean round-trip time of the last ICMP round.";
    ICMP_RTT_STDDEV: "tierwatch_icmp_rtt_stddev_seconds", Gauge, "seconds", ["target"],
        "Standard deviation of the round-trip times of the last ICMP round.";
    ICMP_JITTER: "tierwatch_icmp_jitter_seconds", Gauge, "seconds", ["target"],
        "Mean absolute difference of consecutive round-trip times in the last ICMP round.";
    TCP_CONNECT: "tierwatch_tcp_connect_seconds", Gauge, "seconds", ["target"],
        "Time to complete the TCP handshake of the last probe (only when it succeeded).";
    TCP_RESULT: "tierwatch_tcp_connect_result", Gauge, "", ["target", "result"],
        "1 for the outcome of the last TCP connect (ok, refused, timeout, unreachable, error), 0 for the others.";
    HTTP_STATUS: "tierwatch_http_status_code", Gauge, "", ["target"],
        "HTTP status of the last response (after redirects).";
    HTTP_PHASE: "tierwatch_http_phase_seconds", Gauge, "seconds", ["target", "phase"],
        "Time of each phase of the last HTTP probe: resolve, connect, tls, processing (request to first byte), transfer.";
    HTTP_REDIRECTS: "tierwatch_http_redirects", Gauge, "", ["target"],
        "Redirects followed by the last HTTP probe.";
    HTTP_BODY_BYTES: "tierwatch_http_body_bytes", Gauge, "bytes", ["target"],
        "Body bytes read by the last HTTP probe (at most max_body_bytes).";
    HTTP_BODY_MATCH: "tierwatch_http_body_match", Gauge, "", ["target"],
        "1 if the body met body_contains and body_not_contains, else 0.";
    HTTP_FINGERPRINT: "tierwatch_http_content_fingerprint", Gauge, "", ["target"],
        "48-bit fingerprint of the normalised body (digits removed, whitespace collapsed); changes() over it shows content changes.";
    HTTP_CHANGED: "tierwatch_http_content_changed", Gauge, "", ["target"],
        "1 if the body's fingerprint differs from the previous round's, else 0.";
    TLS_VERIFIED: "tierwatch_tls_verified", Gauge, "", ["target"],
        "1 if the server's certificate chain verified for the name, else 0.";
    TLS_VERIFY_RESULT: "tierwatch_tls_verify_result", Gauge, "", ["target", "result"],
        "1 for the outcome of chain verification (ok, expired, not_yet_valid, wrong_host, unknown_issuer, revoked, other), 0 for the others.";
    TLS_HOST_MATCH: "tierwatch_tls_host_match", Gauge, "", ["target"],
        "1 if the leaf certificate is valid for the requested name (checked even when the chain fails), else 0.";
    TLS_LEAF_EXPIRY: "tierwatch_tls_leaf_expiry_timestamp_seconds", Gauge, "seconds", ["target"],
        "Unix time at which the leaf certificate expires.";
    TLS_CHAIN_EXPIRY: "tierwatch_tls_chain_expiry_timestamp_seconds", Gauge, "seconds", ["target"],
        "Unix time at which the first certificate of the presented chain expires.";
    TLS_VERSION: "tierwatch_tls_version_info", Gauge, "", ["target", "version"],
        "Always 1; the negotiated TLS version as a label.";
    TLS_HANDSHAKE: "tierwatch_tls_handshake_seconds", Gauge, "seconds", ["target"],
        "Time of the TLS handshake.";
    NODE_CPU: "tierwatch_node_cpu_seconds_total", Counter, "seconds", ["mode"],
        "CPU time spent in each mode since boot, over all CPUs (from /proc/stat).";
    NODE_MEM_TOTAL: "tierwatch_node_memory_total_bytes", Gauge, "bytes", [],
        "Physical memory (MemTotal).";
    NODE_MEM_AVAILABLE: "tierwatch_node_memory_available_bytes", Gauge, "bytes", [],
        "Memory available for new work without swapping (MemAvailable).";
    NODE_FS_SIZE: "tierwatch_node_filesystem_size_bytes", Gauge, "bytes", ["mountpoint"],
        "Size of the filesystem.";
    NODE_FS_AVAIL: "tierwatch_node_filesystem_avail_bytes", Gauge, "bytes", ["mountpoint"],
        "Space available to unprivileged users on the filesystem.";
    NODE_LOAD1: "tierwatch_node_load1", Gauge, "", [],
        "1-minute load average.";
    NODE_LOAD5: "tierwatch_node_load5", Gauge, "", [],
        "5-minute load average.";
    NODE_LOAD15: "tierwatch_node_load15", Gauge, "", [],
        "15-minute load average.";
    NODE_UPTIME: "tierwatch_node_uptime_seconds", Gauge, "seconds", [],
        "Time since the node booted.";
    NODE_NET_RX_BYTES: "tierwatch_node_network_receive_bytes_total", Counter, "bytes", ["interface"],
        "Bytes received on the WAN interface.";
    NODE_NET_TX_BYTES: "tierwatch_node_network_transmit_bytes_total", Counter, "bytes", ["interface"],
        "Bytes sent on the WAN interface.";
    NODE_NET_RX_PACKETS: "tierwatch_node_network_receive_packets_total", Counter, "", ["interface"],
        "Packets received on the WAN interface.";
    NODE_NET_TX_PACKETS: "tierwatch_node_network_transmit_packets_total", Counter, "", ["interface"],
        "Packets sent on the WAN interface.";
    NODE_NET_RX_ERRORS: "tierwatch_node_network_receive_errors_total", Counter, "", ["interface"],
        "Receive errors on the WAN interface.";
    NODE_NET_TX_ERRORS: "tierwatch_node_network_transmit_errors_total", Counter, "", ["interface"],
        "Transmit errors on the WAN interface.";
    NODE_NET_RX_DROPS: "tierwatch_node_network_receive_drop_total", Counter, "", ["interface"],
        "Received packets dropped on the WAN interface.";
    NODE_NET_TX_DROPS: "tierwatch_node_network_transmit_drop_total", Counter, "", ["interface"],
        "Packets dropped before sending on the WAN interface.";
    DNS_LOOKUP: "tierwatch_dns_lookup_seconds", Gauge, "seconds", ["target"],
        "Time from query to answer of the last DNS probe.";
    DNS_RCODE: "tierwatch_dns_rcode", Gauge, "", ["target", "rcode"],
        "1 for the response code of the last answer (NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, OTHER), 0 for the others.";
    DNS_ANSWERS: "tierwatch_dns_answers", Gauge, "", ["target"],
        "Records of the asked type in the last answer.";
    DNS_MATCH: "tierwatch_dns_answer_match", Gauge, "", ["target"],
        "1 if the answer set equals the expected set, else 0 (only for targets with expect).";
    AGENT_PROBES: "tierwatch_agent_probes_total", Counter, "", ["probe", "result"],
        "Probe runs of this agent, by probe kind and result (success, failure).";
    AGENT_PUSHES: "tierwatch_agent_pushes_total", Counter, "", ["destination", "kind", "result"],
        "Push attempts by destination (collector URL, or any in failover mode), kind (live, backlog) and result (ok, failed, refused).";
    AGENT_LAST_PUSH: "tierwatch_agent_last_push_success_timestamp_seconds", Gauge, "seconds", ["destination"],
        "Unix time of the last push the destination acknowledged.";
    AGENT_SPOOL_BYTES: "tierwatch_agent_spool_bytes", Gauge, "bytes", [],
        "Disk bytes of the spool's segment files.";
    AGENT_SPOOL_BATCHES: "tierwatch_agent_spool_batches", Gauge, "", [],
        "Batches in the spool not yet acknowledged by every destination.";
    AGENT_SPOOL_MEMORY: "tierwatch_agent_spool_memory_batches", Gauge, "", [],
        "Unsent batches held in memory because the spool disk refused them (lost if the agent stops).";
    AGENT_SPOOL_OLDEST: "tierwatch_agent_spool_oldest_unsent_age_seconds", Gauge, "seconds", [],
        "Age of the oldest unsent batch; 0 when nothing waits.";
    AGENT_SPOOL_WRITE_ERRORS: "tierwatch_agent_spool_write_errors_total", Counter, "", [],
        "Batches the spool could not write to disk (disk full, read-only, I/O error).";
    AGENT_SPOOL_TRUNCATIONS: "tierwatch_agent_spool_truncations_total", Counter, "", [],
        "Damaged segment tails cut off when the spool was opened (a write cut short by power loss).";
    AGENT_SPOOL_RESEALED: "tierwatch_agent_spool_resealed_batches_total", Counter, "", [],
        "Batches an earlier run left open (measurements journaled, not yet sealed: a crash) sealed at start.";
    AGENT_JOURNAL_WRITE_ERRORS: "tierwatch_agent_spool_journal_write_errors_total", Counter, "", [],
        "Measurements (or journal starts) the spool could not write to the open batch's journal; they are still sealed and sent, but a crash before then loses them.";
    AGENT_SPOOL_COMMITS: "tierwatch_agent_spool_commits_total", Counter, "", [],
        "Group commits (fdatasync of the segment and the journal) with fsync: always.";
    AGENT_SPOOL_COMMIT_SECONDS: "tierwatch_agent_spool_commit_seconds_total", Counter, "seconds", [],
        "Time spent in group commits; divided by the commits, the mean fdatasync time.";
    AGENT_DROPPED: "tierwatch_agent_dropped_batches_total", Counter, "", ["reason"],
        "Batches given up, by reason: size (spool max_bytes), age (spool max_age), refused (collector 4xx), corrupt (failed its checksum), memory (in-memory fallback full).";
    AGENT_COLLECTOR_REJECTED: "tierwatch_agent_collector_rejected_total", Counter, "", ["what"],
        "What the collector took out of batches it accepted, by what: sample, event (evidence lost, logged at error level), truncated_attribute (an event attribute cut to the collector's limit; the event was kept).";
    AGENT_ICMP_STRAY: "tierwatch_agent_icmp_stray_replies_total", Counter, "", [],
        "Echo replies carrying this agent's cookie that matched no open request: after their round ended, from another address than the one asked, or for a sequence never sent (spoofed replies among them).";
    AGENT_BUILD_INFO: "tierwatch_agent_build_info", Gauge, "", ["version"],
        "Always 1; the agent's version as a label.";
}

/// Collector-derived per-node metric: 1 if the node pushed recently.
pub const NODE_UP: &str = "tierwatch_node_up";
/// Collector-derived per-node metric: time of the last accepted push.
pub const NODE_LAST_PUSH: &str = "tierwatch_node_last_push_timestamp_seconds";
/// Collector-derived per-node metric: display name and agent version as labels.
pub const NODE_INFO: &str = "tierwatch_node_info";
/// Collector-derived per-node metric: firing alerts about the node.
pub const NODE_ALERTS: &str = "tierwatch_node_alerts";
/// Prefix of the collector's own metrics.
pub const COLLECTOR_PREFIX: &str = "tierwatch_collector_";
/// Prefix of the security metrics the collector derives from stored events.
pub const SECURITY_PREFIX: &str = "tierwatch_security_";

/// True for names only the collector may produce; an agent sending one is refused.
pub fn is_collector_owned(name: &str) -> bool {
    name.starts_with(COLLECTOR_PREFIX)
        || name.starts_with(SECURITY_PREFIX)
        || [NODE_UP, NODE_LAST_PUSH, NODE_INFO, NODE_ALERTS].contains(&name)
}

/// Every kind of security event tierwatch makes: the agent's sensors and
/// probes, then the collector's own findings. A kind not listed is still
/// stored with its evidence, but counted in metrics as [`OTHER_EVENT_KIND`]:
/// an agent cannot add series by inventing kinds.
pub const EVENT_KINDS: &[&str] = &[
    // LAN sensor
    "arp_spoof",
    "arp_change",
    "arp_flipflop",
    "arp_mismatch",
    "arp_new_stations",
    "rogue_dhcp",
    "dhcp_server",
    "rogue_router_advert",
    "port_scan",
    "host_sweep",
    "syn_flood",
    "arp_flood",
    "mac_flood",
    "dhcp_starvation",
    "nd_spoof",
    "nd_change",
    "nd_flipflop",
    "nd_mismatch",
    "ip_mac_mismatch",
    "events_suppressed",
    // host sensors
    "ssh_bruteforce",
    "ssh_success_after_failures",
    "new_listener",
    "listener_owner_changed",
    "file_added",
    "file_changed",
    "file_removed",
    "files_changed",
    // probes: tampering with public services
    "defacement",
    "content_changed",
    "title_changed",
    "certificate_invalid",
    "certificate_changed",
    "certificate_renewed",
    "dns_mismatch",
    // the collector
    "tls_handshake_failures",
    "node_impersonation",
    "revoked_certificate",
    "config_changed",
    "clock_skew",
    "sequence_rewound",
    "events_refused",
];

/// The `kind` label of events whose kind is not in [`EVENT_KINDS`].
pub const OTHER_EVENT_KIND: &str = "other";

/// The `kind` label value for an event of `kind`: itself when known.
pub fn event_kind_label(kind: &str) -> &str {
    if EVENT_KINDS.contains(&kind) {
        kind
    } else {
        OTHER_EVENT_KIND
    }
}

/// Looks up a definition by metric name.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    AGENT_METRICS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{check_label_name, check_metric_name};

    #[test]
    fn definitions_are_valid_and_unique() {
        let mut names = std::collections::HashSet::new();
        for d in AGENT_METRICS {
            check_metric_name(d.name, 128).unwrap();
            assert!(names.insert(d.name), "{} defined twice", d.name);
            assert_eq!(d.kind == MetricKind::Counter, d.name.ends_with("_total"), "{}", d.name);
            if !d.unit.is_empty() && d.unit != "ratio" {
                assert!(d.name.contains(d.unit), "{} lacks its unit {}", d.name, d.unit);
            }
            for l in d.labels {
                check_label_name(l, 128).unwrap();
            }
        }
    }
}
