#![no_main]
//! Fuzz target: the `tree` parser of stored bytes, as `cairn_repo::fuzzing::tree` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::tree(data));
