//! The chunked decoder decodes the same whole and in pieces (`fanout::fuzzing::chunked`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fanout::fuzzing::chunked(data));
