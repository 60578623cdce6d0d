//! Request path normalization, before matching and forwarding, as Envoy's `normalize_path` and
//! `merge_slashes` (Envoy Gateway's defaults) do, and stricter where backends are known to be
//! fooled:
//!
//! - percent-encoded unreserved characters (RFC 3986 §2.3) are decoded (`/%61pi` is `/api`),
//!   other escapes are kept with upper-case hex (§6.2.2.1);
//! - dot segments are removed (§5.2.4), after decoding, so `/api/%2e%2e/admin` is `/admin`:
//!   `..` can never climb out of a prefix a route matched;
//! - repeated slashes are merged (`//api` is `/api`);
//! - an encoded `/` or `\` is refused (or kept encoded, [`EscapedSlashes::Keep`]): a backend
//!   that decodes it would see a different path than the one matched. An encoded or raw NUL,
//!   a raw `\`, a malformed escape, and a dot segment with parameters (`..;` — Tomcat reads it
//!   as `..`) are always refused.
//!
//! The query is not touched. Already-normal paths, nearly all of them, cost one scan and no
//! allocation.

use std::fmt;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (400).
    #[default]
    Reject,
    /// Keep them encoded: matched and forwarded as `%2F`, never as a separator.
    Keep,
}

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    EscapedSlash,
    Nul,
    Backslash,
    BadEscape,
    DotSegmentWithParams,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::EscapedSlash => "the path has an encoded '/' or '\\'",
            PathError::Nul => "the path has a NUL byte",
            PathError::Backslash => "the path has a '\\'",
            PathError::BadEscape => "the path has a malformed percent-escape",
            PathError::DotSegmentWithParams => "the path has a dot segment with parameters",
        })
    }
}

impl std::error::Error for PathError {}

/// The normal form of `path` (which starts with `/`; anything else, such as `*`, is left as
/// it is): `Ok(None)` when it is normal already.
pub fn normalize(path: &str, escaped: EscapedSlashes) -> Result<Option<String>, PathError> {
    if !path.starts_with('/') || is_normal(path) {
        return Ok(None);
    }
    let decoded = decode(path, escaped)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded[1..].split('/').peekable();
    // A path ending in `/`, `/.` or `/..` names a directory: keep its trailing slash.
    let mut trailing = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        trailing = last;
        match seg {
            "" => continue,
            "." => continue,
            ".." => {
                segments.pop();
                continue;
            }
            s if dot_with_params(s) => return Err(PathError::DotSegmentWithParams),
            s => segments.push(s),
        }
        trailing = false;
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// One scan: no escape, backslash, NUL, empty segment (but a final one) or dot segment.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.iter().any(|b| matches!(b, b'%' | b'\\' | 0)) {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg.starts_with('.') && is_dot(seg) {
            return false;
        }
    }
    true
}

/// `.`, `..`, or either with `;parameters`.
fn is_dot(seg: &str) -> bool {
    matches!(seg, "." | "..") || dot_with_params(seg)
}

fn dot_with_params(seg: &str) -> bool {
    matches!(seg.split_once(';'), Some(("." | "..", _)))
}

fn decode(path: &str, escaped: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = (hi * 16 + lo) as u8;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' if escaped == EscapedSlashes::Reject => {
                        return Err(PathError::EscapedSlash)
                    }
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        out.push(v as char)
                    }
                    _ => {
                        out.push('%');
                        out.push(char::from_digit(hi, 16).unwrap_or('0').to_ascii_uppercase());
                        out.push(char::from_digit(lo, 16).unwrap_or('0').to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => {
                // Copy the run up to the next byte that needs a look (UTF-8 stays whole).
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\' | 0))
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, EscapedSlashes::Reject).map(|n| n.unwrap_or_else(|| p.to_owned()))
    }

    #[test]
    fn normal_paths_are_left_alone() {
        for p in [
            "/",
            "/api",
            "/api/",
            "/api/v1/x.json",
            "/a/.well-known/b",
            "/a/..b/c",
            "*",
        ] {
            assert_eq!(normalize(p, EscapedSlashes::Reject), Ok(None), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        let cases = [
            ("/api/../admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2e/admin", "/admin"),
            ("/api/./x", "/api/x"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("//api/x", "/api/x"),
            ("/api//x///y", "/api/x/y"),
            ("/api/x/..", "/api/"),
            ("/api/x/.", "/api/x/"),
            ("/..", "/"),
            ("//", "/"),
            ("/%61pi/x", "/api/x"),
            ("/a%7eb%2d", "/a~b-"),
            ("/a%3fb%20c", "/a%3Fb%20c"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a/b/../../..//c", "/c"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn what_fools_backends_is_refused() {
        let cases = [
            ("/api%2F..%2Fadmin", PathError::EscapedSlash),
            ("/api%5cadmin", PathError::EscapedSlash),
            ("/api%00", PathError::Nul),
            ("/api\\..\\admin", PathError::Backslash),
            ("/api/%zz", PathError::BadEscape),
            ("/api/%4", PathError::BadEscape),
            ("/api/..;/admin", PathError::DotSegmentWithParams),
            ("/api/.;x/admin", PathError::DotSegmentWithParams),
            (
                "/api/%2e%2e;jsessionid=1/admin",
                PathError::DotSegmentWithParams,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn escaped_slashes_can_be_kept_encoded() {
        assert_eq!(
            normalize("/a%2fb/../c", EscapedSlashes::Keep),
            Ok(Some("/c".to_owned()))
        );
        assert_eq!(
            normalize("/files/a%2fb", EscapedSlashes::Keep),
            Ok(Some("/files/a%2Fb".to_owned()))
        );
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in ["/api/../admin", "//a/./b/", "/%61/%2e/c/..", "/a%3fb"] {
            let once = norm(p).unwrap();
            assert_eq!(
                normalize(&once, EscapedSlashes::Reject),
                Ok(None),
                "{p} → {once}"
            );
        }
    }
}
