#![no_main]
//! Fuzz target: the `envelope` parser of stored bytes, as `cairn_repo::fuzzing::envelope` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::envelope(data));
