//! Validation of a received batch. Structural faults refuse the whole batch
//! ([`BatchError`]); a bad sample or event is removed alone and reported
//! ([`Rejection`]) so that nothing valid in the same batch is lost.

use std::collections::HashMap;
use std::fmt;

use crate::wire::{Batch, Event, MetricKind, Series, Severity};
use crate::{NodeId, NodeIdError, IDENTITY_LABELS, METRIC_PREFIX, PROTOCOL_VERSION};

/// Bounds a batch must stay within. Defaults suit a push every few seconds
/// from a node with hundreds of targets, with room for a spooled backlog.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Series per batch.
    pub max_series: usize,
    /// Points per batch, over all series.
    pub max_points: usize,
    /// Labels per series (identity labels not counted).
    pub max_labels: usize,
    /// Bytes in a metric or label name.
    pub max_name_len: usize,
    /// Bytes in a label value.
    pub max_label_value_len: usize,
    /// Events per batch.
    pub max_events: usize,
    /// Attributes per event.
    pub max_event_attributes: usize,
    /// Bytes in an event attribute value.
    pub max_attribute_len: usize,
    /// How far in the future a timestamp may be, in ms (agent clock skew).
    pub max_future_skew_ms: i64,
    /// How old a timestamp may be, in ms (a spooled backlog after an outage).
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_series: 20_000,
            max_points: 200_000,
            max_labels: 16,
            max_name_len: 128,
            max_label_value_len: 512,
            max_events: 5_000,
            max_event_attributes: 32,
            max_attribute_len: 1024,
            max_future_skew_ms: 5 * 60 * 1000,
            max_age_ms: 14 * 24 * 3600 * 1000,
        }
    }
}

/// The latest time any field of the protocol may carry (ms since the
/// epoch, 2^53: the year 2255, and exact as an `f64`).
pub const MAX_TIMESTAMP_MS: i64 = 1 << 53;
/// Bytes in a batch's `agent_version` (a version string is a few dozen).
pub const MAX_AGENT_VERSION_LEN: usize = 64;
/// Bytes in a batch's `config_hash` (a SHA-256 is 32).
pub const MAX_CONFIG_HASH_LEN: usize = 64;

/// A fault that refuses the whole batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("unsupported protocol version {got} (this collector speaks {supported})")]
    UnsupportedVersion { got: u32, supported: u32 },
    #[error("bad node_id: {0}")]
    BadNodeId(#[from] NodeIdError),
    #[error("boot_id must be 16 bytes, got {0}")]
    BadBootId(usize),
    #[error("sequence must start at 1, got 0")]
    ZeroSequence,
    #[error("{got} series in one batch exceeds the limit of {max}")]
    TooManySeries { got: usize, max: usize },
    #[error("{got} points in one batch exceeds the limit of {max}")]
    TooManyPoints { got: usize, max: usize },
    #[error("{got} events in one batch exceeds the limit of {max}")]
    TooManyEvents { got: usize, max: usize },
    #[error("{got} labels in one batch exceeds the limit of {max}")]
    TooManyLabels { got: usize, max: usize },
    #[error("{got} event attributes in one batch exceeds the limit of {max}")]
    TooManyAttributes { got: usize, max: usize },
    #[error("{field} is {got} bytes, over the limit of {max}")]
    FieldTooLong { field: &'static str, got: usize, max: usize },
    #[error("created_ms {0} is not a time in ms since the epoch")]
    BadCreated(i64),
}

/// Where in the batch a rejected item stood.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// A whole series (name or labels are bad); carries its display name.
    Series { index: usize, name: String },
    /// One point of a series.
    Point { series: usize, name: String, point: usize },
    /// One event; carries its kind.
    Event { index: usize, kind: String },
}

/// A sample or event removed from a batch, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub location: Location,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Series { index, name } => write!(f, "series {index} ({name})")?,
            Location::Point { series, name, point } => write!(f, "series {series} ({name}) point {point}")?,
            Location::Event { index, kind } => write!(f, "event {index} ({kind:?})")?,
        }
        write!(f, ": {}", self.reason)
    }
}

/// What validation kept and removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationReport {
    pub accepted_points: usize,
    pub accepted_events: usize,
    pub rejected: Vec<Rejection>,
    /// Event attributes cut to `max_attribute_len` (and attributes over
    /// `max_event_attributes` left out): the events were kept, marked.
    pub truncated_attributes: usize,
}

/// Ends an attribute value cut to the limit; the original length follows.
pub const TRUNCATED_MARKER: &str = "…[truncated, ";
/// The attribute listing how many attributes an event had over the limit.
pub const DROPPED_ATTRIBUTES: &str = "attributes_dropped";

/// Checks `batch` against the protocol rules and `limits` at time `now_ms`.
///
/// On success the batch holds only valid series, points and events, with each
/// series' labels sorted by name (the canonical form stores key on), and the
/// report lists what was removed.
pub fn validate(batch: &mut Batch, now_ms: i64, limits: &Limits) -> Result<ValidationReport, BatchError> {
    if batch.version != PROTOCOL_VERSION {
        return Err(BatchError::UnsupportedVersion { got: batch.version, supported: PROTOCOL_VERSION });
    }
    NodeId::new(&batch.node_id)?;
    if batch.boot_id.len() != 16 {
        return Err(BatchError::BadBootId(batch.boot_id.len()));
    }
    if batch.sequence == 0 {
        return Err(BatchError::ZeroSequence);
    }
    if batch.agent_version.len() > MAX_AGENT_VERSION_LEN {
        let (got, max) = (batch.agent_version.len(), MAX_AGENT_VERSION_LEN);
        return Err(BatchError::FieldTooLong { field: "agent_version", got, max });
    }
    if batch.config_hash.len() > MAX_CONFIG_HASH_LEN {
        let (got, max) = (batch.config_hash.len(), MAX_CONFIG_HASH_LEN);
        return Err(BatchError::FieldTooLong { field: "config_hash", got, max });
    }
    // Loosely: a clock far ahead is reported (clock_skew) from this very
    // field; only values no clock shows, which arithmetic on them could
    // overflow, are refused.
    if !(1..=MAX_TIMESTAMP_MS).contains(&batch.created_ms) {
        return Err(BatchError::BadCreated(batch.created_ms));
    }
    if batch.series.len() > limits.max_series {
        return Err(BatchError::TooManySeries { got: batch.series.len(), max: limits.max_series });
    }
    let points: usize = batch.series.iter().map(|s| s.points.len()).sum();
    if points > limits.max_points {
        return Err(BatchError::TooManyPoints { got: points, max: limits.max_points });
    }
    if batch.events.len() > limits.max_events {
        return Err(BatchError::TooManyEvents { got: batch.events.len(), max: limits.max_events });
    }

    let mut report = ValidationReport::default();
    let mut kinds: HashMap<String, i32> = HashMap::new();
    let series = std::mem::take(&mut batch.series);
    for (index, mut s) in series.into_iter().enumerate() {
        if let Err(reason) = check_series(&mut s, limits, &mut kinds) {
            report.rejected.push(Rejection { location: Location::Series { index, name: s.display_name() }, reason });
            continue;
        }
        let points = std::mem::take(&mut s.points);
        for (point, p) in points.into_iter().enumerate() {
            match check_point(p.timestamp_ms, p.value, now_ms, limits) {
                Ok(()) => s.points.push(p),
                Err(reason) => report.rejected.push(Rejection {
                    location: Location::Point { series: index, name: s.display_name(), point },
                    reason,
                }),
            }
        }
        if !s.points.is_empty() {
            report.accepted_points += s.points.len();
            batch.series.push(s);
        }
    }
    let events = std::mem::take(&mut batch.events);
    for (index, mut e) in events.into_iter().enumerate() {
        // Evidence is cut, not thrown away: a defaced page behind a long
        // redirect is still an event.
        report.truncated_attributes += truncate_attributes(&mut e, limits);
        match check_event(&e, now_ms, limits) {
            Ok(()) => batch.events.push(e),
            Err(reason) => {
                report.rejected.push(Rejection { location: Location::Event { index, kind: e.kind.clone() }, reason })
            }
        }
    }
    report.accepted_events = batch.events.len();
    Ok(report)
}

fn check_series(s: &mut Series, limits: &Limits, kinds: &mut HashMap<String, i32>) -> Result<(), String> {
    check_metric_name(&s.name, limits.max_name_len)?;
    let kind = MetricKind::try_from(s.kind).map_err(|_| format!("unknown metric kind {}", s.kind))?;
    match kind {
        MetricKind::Unspecified => return Err("metric kind is unspecified".into()),
        MetricKind::Counter if !s.name.ends_with("_total") => return Err("a counter's name must end in _total".into()),
        MetricKind::Gauge if s.name.ends_with("_total") => return Err("a gauge's name must not end in _total".into()),
        _ => {}
    }
    match kinds.get(&s.name) {
        Some(k) if *k != s.kind => {
            return Err(format!("metric kind {kind:?} conflicts with an earlier series of the same name"))
        }
        Some(_) => {}
        None => {
            kinds.insert(s.name.clone(), s.kind);
        }
    }
    if s.labels.len() > limits.max_labels {
        return Err(format!("{} labels exceed the limit of {}", s.labels.len(), limits.max_labels));
    }
    for l in &s.labels {
        check_label_name(&l.name, limits.max_name_len)?;
        if l.value.len() > limits.max_label_value_len {
            return Err(format!(
                "label {} value is {} bytes, over the limit of {}",
                l.name,
                l.value.len(),
                limits.max_label_value_len
            ));
        }
    }
    s.labels.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = s.labels.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(format!("label {} appears twice", w[0].name));
    }
    if s.points.is_empty() {
        return Err("series has no points".into());
    }
    Ok(())
}

/// Checks a metric name: Prometheus syntax, the `tierwatch_` prefix, length.
pub fn check_metric_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.len() > max_len {
        return Err(format!("metric name is {} bytes, over the limit of {max_len}", name.len()));
    }
    let valid = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit()));
    if name.is_empty() || !valid {
        return Err(format!("metric name {name:?} is not valid Prometheus syntax [a-zA-Z_:][a-zA-Z0-9_:]*"));
    }
    if !name.starts_with(METRIC_PREFIX) || name.len() == METRIC_PREFIX.len() {
        return Err(format!("metric name {name:?} must start with {METRIC_PREFIX}"));
    }
    if crate::catalogue::is_collector_owned(name) {
        return Err(format!("metric name {name:?} is reserved for the collector"));
    }
    Ok(())
}

/// Checks a label name: Prometheus syntax, not reserved, not an identity label.
pub fn check_label_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.len() > max_len {
        return Err(format!("label name is {} bytes, over the limit of {max_len}", name.len()));
    }
    let valid =
        name.bytes().enumerate().all(|(i, b)| b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit()));
    if name.is_empty() || !valid {
        return Err(format!("label name {name:?} is not valid Prometheus syntax [a-zA-Z_][a-zA-Z0-9_]*"));
    }
    if name.starts_with("__") {
        return Err(format!("label name {name:?} is reserved (starts with __)"));
    }
    if IDENTITY_LABELS.contains(&name) {
        return Err(format!("label {name:?} is an identity label, set by the collector, not the agent"));
    }
    Ok(())
}

fn check_timestamp(ts: i64, now_ms: i64, limits: &Limits) -> Result<(), String> {
    if ts <= 0 {
        return Err(format!("timestamp {ts} is not a positive time in ms since the epoch"));
    }
    if ts > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(format!(
            "timestamp is {} ms in the future (max skew {} ms): is the agent's clock right?",
            ts - now_ms,
            limits.max_future_skew_ms
        ));
    }
    if ts < now_ms.saturating_sub(limits.max_age_ms) {
        return Err(format!("timestamp is {} ms old (max age {} ms)", now_ms - ts, limits.max_age_ms));
    }
    Ok(())
}

fn check_point(ts: i64, value: f64, now_ms: i64, limits: &Limits) -> Result<(), String> {
    if !value.is_finite() {
        return Err(format!("value {value} is not finite"));
    }
    check_timestamp(ts, now_ms, limits)
}

/// Cuts values over `max_attribute_len` (at a character boundary, ending
/// in the marker and the original length) and leaves out attributes over
/// `max_event_attributes` (the last one says how many); returns how many
/// attributes were cut or left out.
pub fn truncate_attributes(e: &mut Event, limits: &Limits) -> usize {
    let max = limits.max_attribute_len;
    let mut cut = 0;
    for v in e.attributes.values_mut() {
        if v.len() <= max {
            continue;
        }
        let marker = format!("{TRUNCATED_MARKER}{} bytes]", v.len());
        let mut keep = max.saturating_sub(marker.len());
        while keep > 0 && !v.is_char_boundary(keep) {
            keep -= 1;
        }
        v.truncate(keep);
        if v.len() + marker.len() <= max {
            v.push_str(&marker);
        }
        cut += 1;
    }
    let allowed = limits.max_event_attributes;
    if e.attributes.len() > allowed && allowed > 0 {
        // The keys kept are the first in order; the marker takes the last place.
        let over: Vec<String> = e.attributes.keys().skip(allowed - 1).cloned().collect();
        for k in &over {
            e.attributes.remove(k);
        }
        e.attributes.insert(DROPPED_ATTRIBUTES.into(), over.len().to_string());
        cut += over.len();
    }
    cut
}

fn check_event(e: &Event, now_ms: i64, limits: &Limits) -> Result<(), String> {
    let kind_ok = !e.kind.is_empty()
        && e.kind.len() <= 64
        && e.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !kind_ok {
        return Err("event kind must be 1..=64 bytes of a-z, 0-9 and _".into());
    }
    match Severity::try_from(e.severity) {
        Ok(Severity::Unspecified) | Err(_) => {
            return Err(format!("event severity {} is not info, warning or critical", e.severity))
        }
        Ok(_) => {}
    }
    check_timestamp(e.timestamp_ms, now_ms, limits)?;
    if e.attributes.len() > limits.max_event_attributes {
        return Err(format!("{} attributes exceed the limit of {}", e.attributes.len(), limits.max_event_attributes));
    }
    for (k, v) in &e.attributes {
        check_label_name(k, limits.max_name_len).map_err(|r| format!("attribute: {r}"))?;
        if v.len() > limits.max_attribute_len {
            return Err(format!("attribute {k} is {} bytes, over the limit of {}", v.len(), limits.max_attribute_len));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Label, Point};
    use proptest::prelude::*;
    use prost::Message;

    const NOW: i64 = 1_800_000_000_000;

    fn series(name: &str, kind: MetricKind, labels: &[(&str, &str)], points: &[(i64, f64)]) -> Series {
        Series {
            name: name.into(),
            kind: kind as i32,
            labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
            points: points.iter().map(|&(timestamp_ms, value)| Point { timestamp_ms, value }).collect(),
        }
    }

    fn batch(series: Vec<Series>) -> Batch {
        Batch {
            version: PROTOCOL_VERSION,
            node_id: "nui-cam".into(),
            agent_version: "0.1.0".into(),
            boot_id: vec![7; 16],
            sequence: 1,
            config_hash: vec![0; 32],
            created_ms: NOW,
            series,
            events: vec![],
            push_interval_ms: 0,
        }
    }

    #[test]
    fn keeps_good_and_names_each_bad_sample() {
        let mut b = batch(vec![
            series("tierwatch_probe_success", MetricKind::Gauge, &[("target", "gw"), ("probe", "icmp")], &[(NOW, 1.0)]),
            series("tierwatch_x", MetricKind::Gauge, &[("node", "evil")], &[(NOW, 1.0)]),
            series("tierwatch_y", MetricKind::Gauge, &[], &[(NOW, f64::NAN), (NOW, 2.0), (NOW + 3_600_000, 1.0)]),
            series("up", MetricKind::Gauge, &[], &[(NOW, 1.0)]),
            series("tierwatch_c", MetricKind::Counter, &[], &[(NOW, 1.0)]),
            series("tierwatch_node_up", MetricKind::Gauge, &[], &[(NOW, 1.0)]),
        ]);
        let r = validate(&mut b, NOW, &Limits::default()).unwrap();
        assert_eq!(r.accepted_points, 2);
        let msgs: Vec<String> = r.rejected.iter().map(|r| r.to_string()).collect();
        assert_eq!(msgs.len(), 6, "{msgs:#?}");
        assert!(msgs[5].contains("reserved for the collector"));
        assert!(msgs[0].starts_with("series 1 (tierwatch_x{node=\"evil\"})") && msgs[0].contains("identity label"));
        assert!(msgs[1].starts_with("series 2 (tierwatch_y) point 0") && msgs[1].contains("not finite"));
        assert!(msgs[2].starts_with("series 2 (tierwatch_y) point 2") && msgs[2].contains("future"));
        assert!(msgs[3].contains("must start with tierwatch_"));
        assert!(msgs[4].contains("_total"));
        // Labels are sorted into canonical order.
        assert_eq!(b.series[0].labels[0].name, "probe");
    }

    #[test]
    fn whole_batch_faults() {
        let mut b = batch(vec![]);
        b.version = 9;
        assert!(matches!(
            validate(&mut b, NOW, &Limits::default()),
            Err(BatchError::UnsupportedVersion { got: 9, .. })
        ));
        let mut b = batch(vec![]);
        b.node_id = "Bad Node".into();
        assert!(matches!(validate(&mut b, NOW, &Limits::default()), Err(BatchError::BadNodeId(_))));
        let mut b = batch(vec![]);
        b.sequence = 0;
        assert_eq!(validate(&mut b, NOW, &Limits::default()), Err(BatchError::ZeroSequence));
        for created in [0, -1, i64::MIN, i64::MAX, MAX_TIMESTAMP_MS + 1] {
            let mut b = batch(vec![]);
            b.created_ms = created;
            assert_eq!(validate(&mut b, NOW, &Limits::default()), Err(BatchError::BadCreated(created)));
        }
        let mut b = batch(vec![]);
        b.agent_version = "v".repeat(65);
        assert!(matches!(
            validate(&mut b, NOW, &Limits::default()),
            Err(BatchError::FieldTooLong { field: "agent_version", got: 65, max: 64 })
        ));
        let mut b = batch(vec![]);
        b.config_hash = vec![0; 65];
        assert!(matches!(
            validate(&mut b, NOW, &Limits::default()),
            Err(BatchError::FieldTooLong { field: "config_hash", .. })
        ));
        let limits = Limits { max_series: 1, ..Limits::default() };
        let mut b = batch(vec![
            series("tierwatch_a", MetricKind::Gauge, &[], &[(NOW, 1.0)]),
            series("tierwatch_b", MetricKind::Gauge, &[], &[(NOW, 1.0)]),
        ]);
        assert!(matches!(validate(&mut b, NOW, &limits), Err(BatchError::TooManySeries { got: 2, max: 1 })));
    }

    #[test]
    fn duplicate_labels_and_kind_conflicts_are_rejected() {
        let mut b = batch(vec![
            series("tierwatch_a", MetricKind::Gauge, &[("t", "1"), ("t", "2")], &[(NOW, 1.0)]),
            series("tierwatch_b", MetricKind::Gauge, &[], &[(NOW, 1.0)]),
            series("tierwatch_b_total", MetricKind::Counter, &[], &[(NOW, 1.0)]),
            series("tierwatch_b", MetricKind::Counter, &[], &[(NOW, 1.0)]),
        ]);
        let r = validate(&mut b, NOW, &Limits::default()).unwrap();
        assert_eq!(r.rejected.len(), 2);
        assert!(r.rejected[0].reason.contains("appears twice"));
        assert!(r.rejected[1].reason.contains("_total"));
    }

    #[test]
    fn long_evidence_is_cut_with_a_marker_not_refused() {
        let url = format!("https://xa-nui-cam.gov.vn/{}", "dài/".repeat(400));
        let mut attrs: Vec<(String, String)> =
            vec![("final_url".into(), url.clone()), ("src".into(), "10.0.0.1".into())];
        let limits = Limits { max_event_attributes: 4, ..Limits::default() };
        attrs.extend((0..6).map(|i| (format!("x{i}"), "v".to_string())));
        let mut b = batch(vec![]);
        b.events = vec![Event::new("page_defaced", Severity::Critical, NOW, attrs)];
        let r = validate(&mut b, NOW, &limits).unwrap();
        assert_eq!(r.accepted_events, 1, "{:?}", r.rejected);
        assert_eq!(r.truncated_attributes, 1 + 5);
        let e = &b.events[0];
        let cut = &e.attributes["final_url"];
        assert!(cut.len() <= limits.max_attribute_len, "{}", cut.len());
        assert!(url.starts_with(cut.split(TRUNCATED_MARKER).next().unwrap()));
        assert!(cut.ends_with(&format!("{TRUNCATED_MARKER}{} bytes]", url.len())), "{cut}");
        assert_eq!(e.attributes.len(), 4);
        assert_eq!(e.attributes[DROPPED_ATTRIBUTES], "5");
        // What was kept passes again untouched.
        let again = validate(&mut b.clone(), NOW, &limits).unwrap();
        assert_eq!((again.truncated_attributes, again.rejected.len()), (0, 0));
    }

    #[test]
    fn old_backlog_within_max_age_is_kept() {
        let day = 24 * 3600 * 1000;
        let mut b =
            batch(vec![series("tierwatch_a", MetricKind::Gauge, &[], &[(NOW - day, 1.0), (NOW - 30 * day, 1.0)])]);
        let r = validate(&mut b, NOW, &Limits::default()).unwrap();
        assert_eq!(r.accepted_points, 1);
        assert!(r.rejected[0].reason.contains("old"));
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof!["tierwatch_[a-z_]{1,12}(_total)?", "[ -~]{0,20}", Just("node".to_string()), Just("__x".to_string()),]
    }

    fn arb_series() -> impl Strategy<Value = Series> {
        (
            arb_name(),
            0i32..4,
            prop::collection::vec((arb_name(), "[ -~]{0,8}"), 0..4),
            prop::collection::vec(
                (prop_oneof![Just(NOW), any::<i64>()], prop_oneof![Just(1.0f64), any::<f64>()]),
                0..4,
            ),
        )
            .prop_map(|(name, kind, labels, points)| Series {
                name,
                kind,
                labels: labels.into_iter().map(|(n, v)| Label::new(n, v)).collect(),
                points: points.into_iter().map(|(timestamp_ms, value)| Point { timestamp_ms, value }).collect(),
            })
    }

    proptest! {
        /// Validation never panics; what it keeps passes a second validation
        /// untouched; every removed item is accounted for.
        #[test]
        fn validation_is_total_and_idempotent(series in prop::collection::vec(arb_series(), 0..8)) {
            let total: usize = series.iter().map(|s| s.points.len()).sum();
            let mut b = batch(series);
            let r = validate(&mut b, NOW, &Limits::default()).unwrap();
            let kept: usize = b.series.iter().map(|s| s.points.len()).sum();
            prop_assert_eq!(kept, r.accepted_points);
            prop_assert!(kept <= total);
            let again = validate(&mut b.clone(), NOW, &Limits::default()).unwrap();
            prop_assert!(again.rejected.is_empty(), "{:?}", again.rejected);
        }

        /// Whatever bytes arrive, decoding either fails cleanly or yields a batch
        /// that validation handles without panicking.
        #[test]
        fn decode_of_arbitrary_bytes_is_safe(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(mut b) = Batch::decode(bytes.as_slice()) {
                let _ = validate(&mut b, NOW, &Limits::default());
            }
        }

        #[test]
        fn encode_decode_roundtrip(series in prop::collection::vec(arb_series(), 0..8)) {
            let b = batch(series);
            let back = Batch::decode(b.encode_to_vec().as_slice()).unwrap();
            // NaN != NaN, so compare the encodings.
            prop_assert_eq!(back.encode_to_vec(), b.encode_to_vec());
        }
    }
}
