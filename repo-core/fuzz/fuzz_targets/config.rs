#![no_main]
//! Fuzz target: the `config` parser of stored bytes, as `cairn_repo::fuzzing::config` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::config(data));
