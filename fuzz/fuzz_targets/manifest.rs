//! Manifests (YAML or JSON, any number of documents) → resources → model: never a panic, a
//! hang or a blow-up, whatever the text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| locus::fuzzing::manifest(data));
