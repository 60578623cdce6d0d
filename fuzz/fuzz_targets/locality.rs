//! Locality strings (`region/zone/subzone`, from LOCALITY, labels, WorkloadEntries): parsing
//! never panics, and a known locality prints back to a string that parses to itself (the
//! unknown one prints `<unknown>`, for logs: see the unit test it led to).
#![no_main]
use locus_core::Locality;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(l) = Locality::parse(s) else {
        return;
    };
    if l.is_unknown() {
        return;
    }
    let again = Locality::parse(&l.to_string()).expect("a printed locality parses");
    assert_eq!(l, again, "{s:?}");
});
