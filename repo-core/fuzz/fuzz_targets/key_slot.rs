#![no_main]
//! Fuzz target: the `key_slot` parser of stored bytes, as `cairn_repo::fuzzing::key_slot` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::key_slot(data));
