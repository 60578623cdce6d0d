//! Path normalization: never panics; a normalized path starts with `/`, has no empty, `.` or
//! `..` segment, and normalizing it again changes nothing.
#![no_main]
use locus_core::path::{normalize, EscapedSlashes};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for escaped in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
        if let Ok(Some(p)) = normalize(s, escaped) {
            assert!(p.starts_with('/'), "{s:?} → {p:?}");
            let inner = p.trim_end_matches('/');
            assert!(
                !inner
                    .split('/')
                    .skip(1)
                    .any(|seg| seg.is_empty() || seg == "." || seg == ".."),
                "{s:?} → {p:?}"
            );
            assert_eq!(normalize(&p, escaped), Ok(None), "{s:?} → {p:?}");
        }
    }
});
