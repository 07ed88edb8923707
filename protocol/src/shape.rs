//! What a pushed body holds, counted on its wire bytes before anything is
//! decoded. An empty `Series` is two bytes on the wire and about eighty in
//! memory: a body is measured first, so that a batch over the [`Limits`]
//! is refused without being materialised, and the collector can budget the
//! memory a decode will take before it starts one.

use crate::validate::{BatchError, Limits};

/// Item counts of an encoded [`crate::Batch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Bytes of the body.
    pub bytes: usize,
    pub series: usize,
    pub points: usize,
    /// Labels over all series.
    pub labels: usize,
    pub events: usize,
    /// Event attributes over all events.
    pub attributes: usize,
}

/// Why a body could not be measured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    /// Not protobuf, or not a batch (the decoder would refuse it too).
    #[error("malformed protobuf at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
    /// Over a limit: refused before decoding.
    #[error("{0}")]
    Over(#[from] BatchError),
}

// Field numbers of the messages in `wire.rs` that hold repeated items.
const BATCH_SERIES: u64 = 8;
const BATCH_EVENTS: u64 = 9;
const SERIES_LABELS: u64 = 3;
const SERIES_POINTS: u64 = 4;
const EVENT_ATTRIBUTES: u64 = 4;

impl Shape {
    /// Measures `body`, refusing it as soon as a count passes `limits`
    /// (labels: `max_labels` per series on average; attributes:
    /// `max_event_attributes` per event on average: a single item over its
    /// own limit is validation's to reject, alone).
    pub fn measure(body: &[u8], limits: &Limits) -> Result<Shape, ShapeError> {
        let mut shape = Shape { bytes: body.len(), ..Shape::default() };
        let max_labels = limits.max_series.saturating_mul(limits.max_labels.max(1));
        let max_attributes = limits.max_events.saturating_mul(limits.max_event_attributes.max(1));
        for field in Fields::new(body, 0) {
            let (number, inner) = field?;
            match (number, inner) {
                (BATCH_SERIES, Some((start, bytes))) => {
                    shape.series += 1;
                    if shape.series > limits.max_series {
                        return Err(BatchError::TooManySeries { got: shape.series, max: limits.max_series }.into());
                    }
                    for f in Fields::new(bytes, start) {
                        match f? {
                            (SERIES_LABELS, Some(_)) => shape.labels += 1,
                            (SERIES_POINTS, Some(_)) => shape.points += 1,
                            _ => {}
                        }
                    }
                    if shape.points > limits.max_points {
                        return Err(BatchError::TooManyPoints { got: shape.points, max: limits.max_points }.into());
                    }
                    if shape.labels > max_labels {
                        return Err(BatchError::TooManyLabels { got: shape.labels, max: max_labels }.into());
                    }
                }
                (BATCH_EVENTS, Some((start, bytes))) => {
                    shape.events += 1;
                    if shape.events > limits.max_events {
                        return Err(BatchError::TooManyEvents { got: shape.events, max: limits.max_events }.into());
                    }
                    for f in Fields::new(bytes, start) {
                        if let (EVENT_ATTRIBUTES, Some(_)) = f? {
                            shape.attributes += 1;
                        }
                    }
                    if shape.attributes > max_attributes {
                        return Err(BatchError::TooManyAttributes { got: shape.attributes, max: max_attributes }.into());
                    }
                }
                (BATCH_SERIES | BATCH_EVENTS, None) => {
                    return Err(ShapeError::Malformed { offset: 0, what: "series or event field is not a message" })
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    /// A generous estimate of the memory a decode takes: the body twice
    /// (it stays while its strings are copied out of it) and each item's
    /// fixed size.
    pub fn decoded_bytes(&self) -> usize {
        use std::mem::size_of;
        let per_series = size_of::<crate::Series>();
        let per_point = size_of::<crate::Point>();
        let per_label = size_of::<crate::Label>();
        let per_event = size_of::<crate::Event>();
        // A B-tree map entry: two strings and its share of a node.
        let per_attribute = 2 * size_of::<String>() + 16;
        self.bytes
            .saturating_mul(2)
            .saturating_add(self.series.saturating_mul(per_series))
            .saturating_add(self.points.saturating_mul(per_point))
            .saturating_add(self.labels.saturating_mul(per_label))
            .saturating_add(self.events.saturating_mul(per_event))
            .saturating_add(self.attributes.saturating_mul(per_attribute))
    }
}

/// The top-level fields of one message: field number and, for
/// length-delimited fields, the offset and bytes of the payload.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the whole body, for messages.
    base: usize,
}

type Field<'a> = (u64, Option<(usize, &'a [u8])>);

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Fields { buf, pos: 0, base }
    }

    fn malformed(&mut self, what: &'static str) -> Option<Result<Field<'a>, ShapeError>> {
        let offset = self.base + self.pos;
        self.pos = self.buf.len();
        Some(Err(ShapeError::Malformed { offset, what }))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn skip(&mut self, n: usize) -> Option<usize> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.buf.len())?;
        self.pos = end;
        Some(start)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, ShapeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let Some(tag) = self.varint() else { return self.malformed("truncated field tag") };
        let number = tag >> 3;
        if number == 0 {
            return self.malformed("field number 0");
        }
        match tag & 7 {
            0 => match self.varint() {
                Some(_) => Some(Ok((number, None))),
                None => self.malformed("truncated varint"),
            },
            1 => match self.skip(8) {
                Some(_) => Some(Ok((number, None))),
                None => self.malformed("truncated 64-bit value"),
            },
            5 => match self.skip(4) {
                Some(_) => Some(Ok((number, None))),
                None => self.malformed("truncated 32-bit value"),
            },
            2 => {
                let Some(len) = self.varint() else { return self.malformed("truncated length") };
                let Some(start) = usize::try_from(len).ok().and_then(|n| self.skip(n)) else {
                    return self.malformed("length past the end of the message");
                };
                Some(Ok((number, Some((self.base + start, &self.buf[start..self.pos])))))
            }
            // Groups (3, 4) are not used by this protocol; 6 and 7 do not exist.
            _ => self.malformed("unsupported wire type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use crate::wire::{Batch, Event, Label, MetricKind, Series, Severity};
    use proptest::prelude::*;
    use prost::Message;

    fn batch(series: usize, points: usize, labels: usize, events: usize) -> Batch {
        let mut b = testing::typical_batch(1);
        b.series = (0..series)
            .map(|i| {
                let mut s = Series::point(
                    format!("tierwatch_s{i}"),
                    MetricKind::Gauge,
                    (0..labels).map(|l| Label::new(format!("l{l}"), "v")).collect(),
                    1,
                    1.0,
                );
                s.points = vec![s.points[0]; points];
                s
            })
            .collect();
        b.events = (0..events).map(|_| Event::new("port_scan", Severity::Warning, 1, [("src", "10.0.0.1")])).collect();
        b
    }

    #[test]
    fn counts_match_the_decoded_batch() {
        let b = batch(3, 4, 2, 5);
        let body = b.encode_to_vec();
        let s = Shape::measure(&body, &Limits::default()).unwrap();
        assert_eq!(s, Shape { bytes: body.len(), series: 3, points: 12, labels: 6, events: 5, attributes: 5 }, "{s:?}");
        assert!(s.decoded_bytes() > 2 * body.len());
    }

    #[test]
    fn empty_series_are_refused_before_decoding() {
        // The attack: an 8 MiB body of empty series (`0x42 0x00` repeated).
        let body: Vec<u8> = [0x42u8, 0x00].repeat(4 * 1024 * 1024);
        let err = Shape::measure(&body, &Limits::default()).unwrap_err();
        assert_eq!(err, ShapeError::Over(BatchError::TooManySeries { got: 20_001, max: 20_000 }));
    }

    #[test]
    fn over_limits_name_the_limit() {
        let limits = Limits { max_points: 10, max_events: 2, ..Limits::default() };
        let e = Shape::measure(&batch(3, 4, 0, 0).encode_to_vec(), &limits).unwrap_err();
        assert_eq!(e.to_string(), "12 points in one batch exceeds the limit of 10");
        let e = Shape::measure(&batch(0, 0, 0, 3).encode_to_vec(), &limits).unwrap_err();
        assert_eq!(e.to_string(), "3 events in one batch exceeds the limit of 2");
        let limits = Limits { max_series: 2, max_labels: 2, ..Limits::default() };
        let e = Shape::measure(&batch(2, 1, 3, 0).encode_to_vec(), &limits).unwrap_err();
        assert_eq!(e.to_string(), "6 labels in one batch exceeds the limit of 4");
    }

    #[test]
    fn truncated_bodies_are_malformed() {
        let body = batch(2, 2, 2, 2).encode_to_vec();
        for cut in 1..body.len() {
            if let Ok(s) = Shape::measure(&body[..cut], &Limits::default()) {
                // A cut at a field boundary is a shorter, valid message.
                assert!(Batch::decode(&body[..cut]).is_ok(), "cut {cut}: {s:?}");
            }
        }
    }

    proptest! {
        /// Measuring never panics, and whatever it measures the decoder
        /// reads as the same counts (when the decoder accepts it at all).
        #[test]
        fn measure_agrees_with_decode(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let limits = Limits::default();
            if let (Ok(s), Ok(b)) = (Shape::measure(&bytes, &limits), Batch::decode(bytes.as_slice())) {
                prop_assert_eq!(s.series, b.series.len());
                prop_assert_eq!(s.events, b.events.len());
                prop_assert_eq!(s.points, b.series.iter().map(|x| x.points.len()).sum::<usize>());
                prop_assert_eq!(s.labels, b.series.iter().map(|x| x.labels.len()).sum::<usize>());
            }
        }

        #[test]
        fn measure_agrees_on_real_batches(series in 0usize..20, points in 1usize..5, labels in 0usize..4, events in 0usize..6) {
            let b = batch(series, points, labels, events);
            let s = Shape::measure(&b.encode_to_vec(), &Limits::default()).unwrap();
            prop_assert_eq!((s.series, s.points, s.labels, s.events), (series, series * points, series * labels, events));
        }
    }
}
