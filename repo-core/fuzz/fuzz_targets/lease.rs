#![no_main]
//! Fuzz target: the `lease` parser of stored bytes, as `cairn_repo::fuzzing::lease` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::lease(data));
