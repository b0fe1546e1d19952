//! A request head, from raw bytes to the server's answer or call (`fanout::fuzzing::request_head`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fanout::fuzzing::request_head(data));
