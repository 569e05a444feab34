#![no_main]
//! Fuzz target: the `snapshot` parser of stored bytes, as `cairn_repo::fuzzing::snapshot` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::snapshot(data));
