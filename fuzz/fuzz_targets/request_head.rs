//! Request heads as a client sends them: parsed as the server parses them, then what the
//! gateway does to a head before routing (strict checks, path normalization, host, hop-by-hop
//! headers). Never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| locus::fuzzing::request_head(data));
