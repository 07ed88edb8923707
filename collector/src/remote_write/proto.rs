//! Prometheus remote write 1.0 messages (`prometheus.WriteRequest`), derived
//! with prost. Only the fields a 1.0 sender fills are declared; encoded
//! requests concatenate into one request (repeated fields merge), which is
//! how queued rows are packed into one send.

use tierwatch_protocol::Batch;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, samples by time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: value and timestamp in ms.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The samples of a validated batch as a write request: `__name__`, the
/// series' labels and the node's identity labels (empty ones left out, as
/// Prometheus treats an empty label as absent), with the agent's timestamps.
/// Returns the request and its sample count.
pub fn from_batch(batch: &Batch, identity: &[(&str, &str)]) -> (WriteRequest, u64) {
    let mut samples_total = 0u64;
    let mut timeseries = Vec::with_capacity(batch.series.len());
    for s in &batch.series {
        if s.points.is_empty() {
            continue;
        }
        let mut labels = Vec::with_capacity(s.labels.len() + identity.len() + 1);
        labels.push(Label { name: "__name__".into(), value: s.name.clone() });
        labels.extend(
            s.labels
                .iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| Label { name: l.name.clone(), value: l.value.clone() }),
        );
        labels.extend(
            identity
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }),
        );
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut samples: Vec<Sample> =
            s.points.iter().map(|p| Sample { value: p.value, timestamp: p.timestamp_ms }).collect();
        samples.sort_by_key(|p| p.timestamp);
        samples_total += samples.len() as u64;
        timeseries.push(TimeSeries { labels, samples });
    }
    (WriteRequest { timeseries }, samples_total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tierwatch_protocol::{Label as WLabel, MetricKind, Point, Series};

    #[test]
    fn labels_sorted_identity_added_and_requests_concatenate() {
        let batch = Batch {
            series: vec![Series {
                name: "tierwatch_probe_success".into(),
                kind: MetricKind::Gauge as i32,
                labels: vec![WLabel::new("probe", "icmp"), WLabel::new("target", "gw")],
                points: vec![Point { timestamp_ms: 2000, value: 1.0 }, Point { timestamp_ms: 1000, value: 0.0 }],
            }],
            ..Default::default()
        };
        let (req, n) = from_batch(&batch, &[("node", "c1"), ("tier", "commune"), ("province", "p"), ("parent", "")]);
        assert_eq!(n, 2);
        let names: Vec<&str> = req.timeseries[0].labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "node", "probe", "province", "target", "tier"]);
        assert_eq!(req.timeseries[0].samples[0].timestamp, 1000);
        let mut both = req.encode_to_vec();
        both.extend(req.encode_to_vec());
        assert_eq!(WriteRequest::decode(both.as_slice()).unwrap().timeseries.len(), 2);
    }
}
