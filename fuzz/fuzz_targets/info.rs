#![no_main]
//! cargo fuzz run info (see docs/fuzzing.md)

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::info(data));
