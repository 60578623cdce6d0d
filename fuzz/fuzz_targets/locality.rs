//! Locality strings (`region/zone/subzone`, from LOCALITY, labels, WorkloadEntries): parsing
//! never panics, and what parses prints back to a string that parses to the same locality.
#![no_main]
use locus_core::Locality;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(l) = Locality::parse(s) {
        let again = Locality::parse(&l.to_string()).expect("a printed locality parses");
        assert_eq!(l, again, "{s:?}");
    }
});
