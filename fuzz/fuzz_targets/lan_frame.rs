//! The LAN sensor on arbitrary frames (it captures everything on the wire,
//! hostile or broken): every detector must return, never panic, and keep
//! its bounds. The first two bytes pick the time step, so sweeps, windows
//! and digests run too.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tierwatch_agent::sensor::arp::ArpPolicy;
use tierwatch_agent::sensor::capture::Sensors;
use tierwatch_agent::sensor::scan::ScanPolicy;

thread_local! {
    static STATE: RefCell<(Sensors, i64)> = RefCell::new((
        Sensors::new(ScanPolicy::default(), ArpPolicy::default(), Vec::new()),
        0,
    ));
}

fuzz_target!(|data: &[u8]| {
    let (step, frame) = match data {
        [a, b, rest @ ..] => (i64::from(u16::from_be_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    STATE.with(|s| {
        let (sensors, now) = &mut *s.borrow_mut();
        *now += step;
        let mut out = Vec::new();
        sensors.frame(frame, *now, &mut out);
    });
});
