//! Fuzz target: a script of MQTT packets (3.1, 3.1.1, 5.0; some corrupted, some raw bytes) from
//! up to three clients against an in-process broker over in-memory streams, checking the
//! broker's answers, that it never hangs, and that a well-behaved client still gets through
//! afterwards. The property lives in `src/connection_check.rs`, which the replay test in
//! `crates/broker/tests/fuzz_connection.rs` runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The replay test and seed generator use the script builder; the fuzz target does not.
#[allow(dead_code)]
#[path = "../src/connection_check.rs"]
mod connection_check;

fuzz_target!(|data: &[u8]| {
    connection_check::check(data);
});
