//! Responses as an endpoint sends them, through Locus's upstream HTTP/1.1 client's codec: the
//! head, and a chunked body fed whole and byte by byte (both must agree). Never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| locus::fuzzing::upstream_response(data));
