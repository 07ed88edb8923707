//! The DNS probe's answer parser on arbitrary datagrams (a hostile or broken
//! server): it must return, never panic or loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tierwatch_agent::probe::dns::parse_response;

fuzz_target!(|data: &[u8]| {
    let Some((&t, rest)) = data.split_first() else { return };
    let qtype = [1u16, 2, 5, 15, 16, 28][t as usize % 6];
    let _ = parse_response(rest, qtype);
});
