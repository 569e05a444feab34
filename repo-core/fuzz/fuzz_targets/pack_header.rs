#![no_main]
//! Fuzz target: the `pack_header` parser of stored bytes, as `cairn_repo::fuzzing::pack_header` runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_repo::fuzzing::pack_header(data));
