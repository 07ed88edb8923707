//! A probed web page (written by whoever defaced it) through the reader
//! and the defacement judge: never a panic, bounded words.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tierwatch_agent::probe::deface::{page, Vocabulary};
use tierwatch_agent::probe::text;

fuzz_target!(|data: &[u8]| {
    let t = text::read(data);
    assert!(t.folded.len() <= text::MAX_WORDS && t.exact.len() == t.folded.len());
    let _ = page(data, &Vocabulary::shipped());
});
