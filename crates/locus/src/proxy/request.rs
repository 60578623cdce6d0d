//! What the gateway reads from a request and changes in its head before sending it on: the
//! host, hop-by-hop headers, the consistent-hash key, the upstream URI.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;
use std::net::SocketAddr;

use locus_core::balancer::hash_bytes;
use locus_core::HashOn;

use super::ConnInfo;
use crate::health::now_ms;

/// What the proxy reads from a request's head fields, read once: by Locus's own HTTP/1.1
/// parser as the fields go by, or from the map ([`HeadFacts::read`]) for hyper's servers (TLS,
/// HTTP/2). Each step after that asks these instead of looking the field up again (five to
/// eight map lookups per request were 5% of the gateway's instructions). True of the client's
/// head as it came: the steps that edit fields come after the last step that reads these.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeadFacts {
    /// The first `Host` field, and how many there were (two is as bad as any more).
    pub host: Option<HeaderValue>,
    pub hosts: u8,
    /// The first `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// A `Content-Type` says gRPC: errors go back as `grpc-status`.
    pub grpc: bool,
    /// A hop-by-hop field ([`is_hop_by_hop_name`]) is there: the strip has work to do.
    pub hop_by_hop: bool,
    pub transfer_encoding: bool,
    pub upgrade: bool,
    pub forwarded_for: bool,
    pub forwarded_proto: bool,
}

impl HeadFacts {
    /// Notes one field; the parser calls it for each, in order.
    pub fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::HOST {
            if self.host.is_none() {
                self.host = Some(value.clone());
            }
            self.hosts = self.hosts.saturating_add(1);
        } else if *name == header::CONTENT_TYPE {
            self.grpc |= value.as_bytes().starts_with(b"application/grpc");
        } else if *name == X_REQUEST_ID {
            if self.request_id.is_none() {
                self.request_id = Some(value.clone());
            }
        } else if *name == X_FORWARDED_FOR {
            self.forwarded_for = true;
        } else if *name == X_FORWARDED_PROTO {
            self.forwarded_proto = true;
        } else if is_hop_by_hop_name(name.as_str().as_bytes()) {
            self.hop_by_hop = true;
            self.transfer_encoding |= *name == header::TRANSFER_ENCODING;
            self.upgrade |= *name == header::UPGRADE;
        }
    }

    /// The same facts, read from a map.
    pub fn read(headers: &HeaderMap) -> HeadFacts {
        let mut facts = HeadFacts::default();
        for (name, value) in headers {
            facts.note(name, value);
        }
        facts
    }
}

/// `x-forwarded-for`: the client's list, which the gateway appends the peer to.
pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`: the scheme the client used, set by the gateway.
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The fields the gateway adds to an upstream request when the client sent none of its own
/// (`x-request-id` made here, `x-forwarded-for` with the peer's address, `x-forwarded-proto`),
/// kept beside the request's map and written after its fields by the HTTP/1.1 client instead
/// of inserted: three inserts of custom names and an allocation for the id were 4% of the
/// gateway's instructions per request. Whatever reads or edits the request's fields after
/// they are made (a header filter, a mirror, hyper's HTTP/2 client) gets them in the map
/// first ([`Added::merge_into`]), so no step sees a head without them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Added<'a> {
    pub request_id: Option<&'a [u8; 36]>,
    pub forwarded_for: Option<&'a HeaderValue>,
    pub forwarded_proto: Option<&'static str>,
}

impl Added<'_> {
    /// The fields as name and value bytes, in the order they are written.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let id = self
            .request_id
            .map(|id| (X_REQUEST_ID.as_str().as_bytes(), &id[..]));
        let xff = self
            .forwarded_for
            .map(|v| (X_FORWARDED_FOR.as_str().as_bytes(), v.as_bytes()));
        let xfp = self
            .forwarded_proto
            .map(|p| (X_FORWARDED_PROTO.as_str().as_bytes(), p.as_bytes()));
        id.into_iter().chain(xff).chain(xfp)
    }

    /// Moves the fields into the map (replacing any of the same name); none are left here.
    pub fn merge_into(&mut self, headers: &mut HeaderMap) {
        if let Some(id) = self.request_id.take() {
            let id = HeaderValue::from_bytes(id).expect("hex and dashes are a valid header value");
            headers.insert(X_REQUEST_ID.clone(), id);
        }
        if let Some(v) = self.forwarded_for.take() {
            headers.insert(X_FORWARDED_FOR.clone(), v.clone());
        }
        if let Some(p) = self.forwarded_proto.take() {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(p));
        }
    }
}

/// The request's host without port, lower-cased: the target's authority when it has one
/// (h2's `:authority`, an absolute-form HTTP/1 target: RFC 9112 §3.2.2 says it wins over
/// `Host`), else the `Host` field. Borrowed when the host is already lower case (nearly
/// always): no allocation per request.
pub(super) fn request_host<'a>(
    parts: &'a http::request::Parts,
    facts: &'a HeadFacts,
) -> std::borrow::Cow<'a, str> {
    let raw = parts
        .uri
        .authority()
        .map(Authority::as_str)
        .or_else(|| facts.host.as_ref().and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        // By byte: `rsplit_once`'s char searcher was 14 lines of hot code.
        raw.bytes()
            .rposition(|b| b == b':')
            .map_or(raw, |i| &raw[..i])
    };
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(without_port)
    }
}

/// A random number, not to be a secret (request ids, retries' jitter): a per-thread
/// splitmix64 sequence seeded from std's per-process random hash keys, a few multiplications.
#[inline]
pub(super) fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now_ms());
            h.finish()
        });
    }
    STATE.with(|s| {
        let z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `x-request-id`: kept when the client sent one, else made here, forwarded upstream, written
/// in the access log and on the gateway's own error responses.
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A new request id, shaped as a random (version 4) UUID from [`random_u64`]: random enough to
/// tell requests apart, not to be a secret. Returned as bytes, which cost nothing to keep
/// beside the request for its error answer and its log line.
pub(super) fn new_request_id() -> [u8; 36] {
    let (hi, lo) = (random_u64(), random_u64());
    // Version 4, variant 10xx.
    let hi = (hi & !0xf000) | 0x4000;
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
    let (h, l) = (hex16(hi), hex16(lo));
    // 8-4-4-4-12, the dashes written up front.
    let mut out = *b"00000000-0000-0000-0000-000000000000";
    out[..8].copy_from_slice(&h[..8]);
    out[9..13].copy_from_slice(&h[8..12]);
    out[14..18].copy_from_slice(&h[12..]);
    out[19..23].copy_from_slice(&l[..4]);
    out[24..].copy_from_slice(&l[4..]);
    out
}

/// `x` as sixteen lower-case hex digits, eight at a time in one register: a table lookup per
/// digit, unrolled, was 140 instructions of the request path's hot code.
fn hex16(x: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hex_digits(spread_nibbles(x >> 32)).to_be_bytes());
    out[8..].copy_from_slice(&hex_digits(spread_nibbles(x & 0xffff_ffff)).to_be_bytes());
    out
}

/// The eight nibbles of a 32-bit value one per byte, the most significant in the top byte.
fn spread_nibbles(x: u64) -> u64 {
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
}

/// Each byte (0 to 15) as its hex digit: `'0' + v`, and 39 more (up to `'a'`) where v ≥ 10.
/// No byte carries into the next: each stays below 103.
fn hex_digits(nibbles: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let letters = ((nibbles + 6 * ONES) >> 4) & ONES;
    nibbles + u64::from(b'0') * ONES + letters * 39
}

/// A request's id: the client's own `x-request-id`, or one made here.
pub(super) enum RequestId {
    Sent(HeaderValue),
    Made([u8; 36]),
}

impl RequestId {
    /// The id made here, which the upstream request carries as an added field.
    pub(super) fn made(&self) -> Option<&[u8; 36]> {
        match self {
            RequestId::Made(id) => Some(id),
            RequestId::Sent(_) => None,
        }
    }

    pub(super) fn value(&self) -> HeaderValue {
        match self {
            RequestId::Sent(v) => v.clone(),
            RequestId::Made(id) => {
                HeaderValue::from_bytes(id).expect("hex and dashes are a valid header value")
            }
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            RequestId::Sent(v) => v.to_str().unwrap_or("-"),
            RequestId::Made(id) => std::str::from_utf8(id).unwrap_or("-"),
        }
    }
}

/// Refuses what a gateway must not pass on (RFC 9110, RFC 9112): `CONNECT` (no route asks for
/// tunnels; 405), transfer codings other than `chunked` (501: the gateway would silently drop
/// them), and a missing (HTTP/1.1), repeated or malformed `Host` (400; two hosts could be
/// routed by one and read by the backend as the other).
pub(super) fn check_head(
    parts: &http::request::Parts,
    facts: &HeadFacts,
) -> Result<(), super::ProxyError> {
    use super::ProxyError;
    if parts.method == http::Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    if facts.transfer_encoding {
        for value in parts.headers.get_all(header::TRANSFER_ENCODING) {
            let codings = value.to_str().unwrap_or("?");
            if let Some(other) = codings
                .split(',')
                .map(str::trim)
                .find(|c| !c.eq_ignore_ascii_case("chunked"))
            {
                return Err(ProxyError::TransferCoding(other.to_owned()));
            }
        }
    }
    match (&facts.host, facts.hosts) {
        (Some(_), 2..) => return Err(ProxyError::BadHost("more than one Host header")),
        (Some(host), _) => {
            if !valid_host(host.as_bytes()) {
                return Err(ProxyError::BadHost("not a host[:port]"));
            }
            // RFC 9113 §8.3.1: a Host naming another entity than `:authority` is malformed
            // (absolute-form HTTP/1 targets simply win over Host, RFC 9112 §3.2.2).
            if parts.version == http::Version::HTTP_2
                && parts
                    .uri
                    .authority()
                    .is_some_and(|a| !a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()))
            {
                return Err(ProxyError::BadHost("Host differs from :authority"));
            }
        }
        (None, _) => {
            if parts.version == http::Version::HTTP_11 && parts.uri.authority().is_none() {
                return Err(ProxyError::BadHost("HTTP/1.1 requires a Host header"));
            }
        }
    }
    Ok(())
}

/// `host[:port]` as RFC 3986 spells it: a reg-name or IPv4 address, or an IP literal in
/// brackets, then an optional port of at most five digits. Empty is allowed (RFC 9112 §3.2).
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = if h.first() == Some(&b'[') {
        let Some(end) = h.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &h[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        (&h[..0], &h[end + 1..])
    } else {
        match h.iter().position(|b| *b == b':') {
            Some(i) => (&h[..i], &h[i..]),
            None => (h, &h[h.len()..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok
        && host.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b'%'
                )
        })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1, and the east-west hop header), including those
/// named by `Connection`.
/// One pass over the names finds whether any is there (usually none, or only `connection`), so
/// the common message costs no removal at all, or one, and no list of them.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|name| is_hop_by_hop_name(name.as_str().as_bytes()))
    {
        return;
    }
    let mut present: [Option<HeaderName>; 10] = Default::default();
    let mut n = 0;
    for name in headers.keys() {
        if is_hop_by_hop_name(name.as_str().as_bytes()) && n < present.len() {
            present[n] = Some(name.clone());
            n += 1;
        }
    }
    // Other headers `Connection` names; `keep-alive` and `close`, the usual tokens, are not
    // worth an allocation (a `keep-alive` header is removed anyway).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        // `Connection: host` must not take the request's Host away.
        .filter(|t| !t.eq_ignore_ascii_case("host"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let keep_te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in present.into_iter().flatten() {
        headers.remove(name);
    }
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a field name (any case) is hop-by-hop: RFC 9110 §7.6.1's, `keep-alive` and
/// `proxy-connection`, and the east-west hop header (between two gateways: set by the sending
/// one for the receiving one, which reads it before the strip; never passed on, never taken
/// from a client).
pub(super) fn is_hop_by_hop_name(name: &[u8]) -> bool {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("upgrade") || is("trailer"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding") || is(crate::routing::EAST_WEST_HEADER),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// The request URI for an endpoint: absolute for HTTP/2 (hyper needs the authority there),
/// origin-form for HTTP/1.1, as it is sent to an origin server.
pub(super) fn upstream_uri(
    h2c: bool,
    tls: bool,
    addr: SocketAddr,
    path_and_query: &PathAndQuery,
) -> Uri {
    if h2c {
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is an authority");
        Uri::builder()
            .scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(authority)
            .path_and_query(path_and_query.clone())
            .build()
            .expect("valid parts make a valid URI")
    } else {
        Uri::from(path_and_query.clone())
    }
}

/// The consistent-hash key of a request, and the cookie to set when the policy hashes on a
/// cookie with a TTL and the client has none yet (Envoy's and Istio's behaviour).
pub(super) fn hash_key(
    on: &HashOn,
    parts: &http::request::Parts,
    info: &ConnInfo,
) -> (Option<u64>, Option<HeaderValue>) {
    match on {
        HashOn::Header(name) => (
            parts
                .headers
                .get(name.as_str())
                .map(|v| hash_bytes(v.as_bytes())),
            None,
        ),
        HashOn::SourceIp => (
            Some(hash_bytes(info.peer.ip().to_string().as_bytes())),
            None,
        ),
        HashOn::QueryParameter(name) => {
            let v = parts.uri.query().and_then(|q| {
                q.split('&')
                    .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.to_owned())
            });
            (v.map(|v| hash_bytes(v.as_bytes())), None)
        }
        HashOn::Cookie { name, ttl_secs } => {
            let found = parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_owned());
            match (found, ttl_secs) {
                (Some(v), _) => (Some(hash_bytes(v.as_bytes())), None),
                (None, Some(ttl)) => {
                    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let seed = format!(
                        "{}-{}-{}",
                        info.peer,
                        now_ms(),
                        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    );
                    let value = format!("{:016x}", hash_bytes(seed.as_bytes()));
                    let cookie = HeaderValue::from_str(&format!(
                        "{name}={value}; Max-Age={ttl}; Path=/; HttpOnly"
                    ))
                    .ok();
                    (Some(hash_bytes(value.as_bytes())), cookie)
                }
                (None, None) => (None, None),
            }
        }
    }
}

/// Methods whose requests may be sent again after a broken connection (RFC 9110 §9.2.2).
pub(super) fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids_in_hex() {
        for x in [
            0u64,
            u64::MAX,
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
            0xa0a0_0909_f0f0_1234,
        ] {
            assert_eq!(hex16(x), *format!("{x:016x}").as_bytes());
        }
        let id = new_request_id();
        let id = std::str::from_utf8(&id).unwrap();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(id
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(parts[2].starts_with('4'), "version 4: {id}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "variant: {id}"
        );
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn hop_by_hop_names_are_known_in_any_case() {
        for name in [
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Proxy-Authenticate",
            "proxy-authorization",
            crate::routing::EAST_WEST_HEADER,
        ] {
            assert!(is_hop_by_hop_name(name.as_bytes()), "{name}");
        }
        for name in ["content-length", "date", "x-locus-east", "tea", "upgrades"] {
            assert!(!is_hop_by_hop_name(name.as_bytes()), "{name}");
        }
    }
}
