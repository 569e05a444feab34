#![no_main]
//! Fuzz target: the `index_file` parser of stored bytes, as `cairn_repo::fuzzing::index_file` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::index_file(data));
