//! Entry points for the fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`): what a hostile
//! manifest or client can reach, driven from raw bytes. Not an API.

use std::path::Path;

/// Manifest text → resources → model.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut set = crate::resources::ResourceSet::default();
    if crate::resources::parse_text(Path::new("fuzz.yaml"), text, &mut set).is_ok() {
        let _ = crate::model::Model::build(&set);
    }
}

/// A request head as the server parses it, then what the gateway does to it before routing.
pub fn request_head(data: &[u8]) {
    crate::proxy::inspect_head(data);
}

/// An endpoint's response as Locus's upstream client reads it: the head (after a GET and after
/// a HEAD), then a chunked body from what follows, fed in pieces of every size.
pub fn upstream_response(data: &[u8]) {
    crate::proxy::inspect_response(data);
}
