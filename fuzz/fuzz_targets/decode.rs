//! Fuzz target: decode arbitrary bytes with every version and a few packet size limits, and
//! round-trip every packet the decoder accepts. The property lives in `src/decode_check.rs`,
//! which the seed-corpus test in `crates/proto/tests/fuzz_corpus.rs` replays too.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The seed-corpus test reads the outcome and uses the helpers; the fuzz target needs neither.
#[allow(dead_code)]
#[path = "../src/decode_check.rs"]
mod decode_check;

fuzz_target!(|data: &[u8]| {
    decode_check::check(data);
});
