//! An upstream's answer is a success exactly when README says (`fanout::fuzzing::upstream_answer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fanout::fuzzing::upstream_answer(data));
