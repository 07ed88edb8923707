//! What the collector's ingest does with a request body: count it on the
//! wire, decode, then validate. What the count admits the decoder reads as
//! the same counts; whatever validation keeps passes a second validation untouched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tierwatch_protocol::{validate, Batch, Limits, Shape};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(shape) = Shape::measure(data, &limits) else { return };
    let Ok(mut batch) = Batch::decode(data) else { return };
    assert_eq!(shape.series, batch.series.len());
    assert_eq!(shape.events, batch.events.len());
    assert_eq!(shape.points, batch.series.iter().map(|s| s.points.len()).sum::<usize>());
    let now = 1_800_000_000_000;
    if let Ok(report) = validate::validate(&mut batch, now, &limits) {
        let kept: usize = batch.series.iter().map(|s| s.points.len()).sum();
        assert_eq!(kept, report.accepted_points);
        let again = validate::validate(&mut batch.clone(), now, &limits).expect("a validated batch stays valid");
        assert!(again.rejected.is_empty(), "{:?}", again.rejected);
    }
});
