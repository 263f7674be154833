#![no_main]
//! cargo fuzz run label_value (see docs/fuzzing.md)

#[allow(dead_code)] // each target uses one of the shared checks
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::label_value(data));
