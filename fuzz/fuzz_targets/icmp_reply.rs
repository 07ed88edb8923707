//! The ICMP engine's reply parser on arbitrary packets (raw sockets see every
//! ICMP packet of the host): it must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tierwatch_agent::probe::icmp::parse_reply;

fuzz_target!(|data: &[u8]| {
    let cookie = [7u8; 8];
    let _ = parse_reply(data, false, &cookie);
    let _ = parse_reply(data, true, &cookie);
});
