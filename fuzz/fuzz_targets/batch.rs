//! What the collector's ingest does with a request body: decode, then validate.
//! Whatever validation keeps must pass a second validation untouched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tierwatch_protocol::{validate, Batch, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(mut batch) = Batch::decode(data) else { return };
    let now = 1_800_000_000_000;
    let limits = Limits::default();
    if let Ok(report) = validate::validate(&mut batch, now, &limits) {
        let kept: usize = batch.series.iter().map(|s| s.points.len()).sum();
        assert_eq!(kept, report.accepted_points);
        let again = validate::validate(&mut batch.clone(), now, &limits).expect("a validated batch stays valid");
        assert!(again.rejected.is_empty(), "{:?}", again.rejected);
    }
});
