//! The HTTP/1.1 wire format of a client exchange, as pure functions over buffers: the request
//! head a client sends and the response head Locus writes back (RFC 9112). No I/O here, so
//! every rule is a unit test.
//!
//! A request whose body length is ambiguous (Transfer-Encoding with Content-Length, differing
//! or malformed lengths, a final coding other than `chunked`, Transfer-Encoding on HTTP/1.0) is
//! refused with 400 and the connection closed, so no second request can hide in a first one's
//! body. Heads are parsed into fields and written anew upstream, never passed on as bytes.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::SystemTime;

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Uri, Version};

use crate::proxy::request::HeadFacts;

use super::codec::{
    field, push_decimal, push_field, record_spans, Lengths, RawFields, RequestFraming,
};

/// Most header fields a request may carry (`--max-request-headers` is bounded by it).
pub const MAX_HEADER_SLOTS: usize = 1024;

/// Fields the proxy may still put in a request's map: the gateway's own fields (`Added`) when a
/// header filter, a mirror or an HTTP/2 upstream needs them there, a hop header to another
/// network, an upgrade's fields.
const EXTRA_HEADERS: usize = 4;

thread_local! {
    /// Field maps kept for reuse by this thread's next requests: a map is two allocations
    /// (its index and its entries), and with their frees they were 2% of the gateway's
    /// instructions per request. The proxy hands a request's map back ([`recycle_fields`])
    /// once the exchange is done with it; only maps of an ordinary size are kept, and few.
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}
const SPARE_MAPS_KEPT: usize = 64;
const SPARE_MAP_CAPACITY: usize = 64;

/// An empty field map with room for `n` fields, reused when this thread has one spare.
fn fields_map(n: usize) -> HeaderMap {
    match SPARE_MAPS.with(|s| s.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Gives a request's field map back for reuse, emptied (its values, slices of the request's
/// head, are dropped now).
pub fn recycle_fields(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_CAPACITY {
        return;
    }
    map.clear();
    SPARE_MAPS.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_MAPS_KEPT {
            spare.push(map);
        }
    });
}

/// Why a request head is refused: the status the client gets before the connection closes.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The head outgrew `--max-request-head-bytes`, or has more than `--max-request-headers`
    /// fields: 431.
    TooLarge,
    /// Malformed, or its body length is ambiguous: 400.
    Malformed(&'static str),
}

impl HeadError {
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: RequestFraming,
    /// The client lets the connection carry another request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body: the client waits for a `100 Continue`.
    pub expect_continue: bool,
    /// The client accepts trailers in a chunked response (`TE: trailers`).
    pub trailers: bool,
    /// What the proxy reads from the fields, noted as they went by.
    pub facts: HeadFacts,
}

/// What the front of the read buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not all of a head has arrived yet.
    Partial,
    Head(Box<RequestHead>),
    /// A request to switch protocols (`Upgrade`), or HTTP/2's connection preface: left in the
    /// buffer, for a codec that speaks them.
    Switch,
}

/// Reads one request head from the front of `buf`, splitting it off (the body and any
/// pipelined request stay). `spans` is scratch space kept with the connection, as in
/// [`super::codec::parse_response_head`].
pub fn parse_request_head(
    buf: &mut BytesMut,
    max_head: usize,
    max_headers: usize,
    spans: &mut Vec<[usize; 4]>,
) -> Result<Parsed, HeadError> {
    if buf.starts_with(b"PRI ") {
        return Ok(Parsed::Switch);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADER_SLOTS];
    let slots = &mut slots[..max_headers.clamp(1, MAX_HEADER_SLOTS)];
    let mut parsed = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    spans.clear();
    let (len, method, target, minor) = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut parsed, buf, slots)
    {
        Ok(httparse::Status::Complete(len)) => {
            record_spans(parsed.headers, base, spans);
            let path = parsed.path.unwrap_or("/");
            let target = path.as_ptr() as usize - base;
            (
                len,
                parsed.method.unwrap_or("GET"),
                [target, target + path.len()],
                parsed.version.unwrap_or(1),
            )
        }
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("unsupported HTTP version"))
        }
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("bad method"))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // A switch of protocols is left whole in the buffer for the codec that speaks it.
    if spans
        .iter()
        .any(|&[ns, ne, ..]| buf[ns..ne].eq_ignore_ascii_case(b"upgrade"))
    {
        return Ok(Parsed::Switch);
    }
    // Names and values are sliced out of the one frozen head, not copied one by one.
    let head = buf.split_to(len).freeze();
    // Room for what the proxy may add (a map grown on the way reallocates).
    let mut headers = fields_map(spans.len() + EXTRA_HEADERS);
    let mut lengths = Lengths::default();
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut trailers = false;
    let mut facts = HeadFacts::default();
    for &span in spans.iter() {
        let (name, value) = field(&head, span).map_err(HeadError::Malformed)?;
        if name == header::CONTENT_LENGTH {
            lengths
                .content_length(value.as_bytes())
                .map_err(|_| HeadError::Malformed("invalid Content-Length"))?;
        } else if name == header::TRANSFER_ENCODING {
            lengths
                .transfer_encoding(value.as_bytes())
                .map_err(|_| HeadError::Malformed("invalid Transfer-Encoding"))?;
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            trailers = value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        facts.note(&name, &value);
        headers.append(name, value);
    }
    let framing = match (lengths.chunked_last, lengths.content_length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (Some(_), None) if version != Version::HTTP_11 => {
            return Err(HeadError::Malformed("Transfer-Encoding on HTTP/1.0"))
        }
        (Some(true), None) => RequestFraming::Chunked,
        // A request's length cannot be read to the close (RFC 9112 §6.3).
        (Some(false), None) => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding without final chunked",
            ))
        }
        (None, Some(n)) => RequestFraming::Length(n),
        (None, None) => RequestFraming::None,
    };
    let uri = Uri::from_maybe_shared(head.slice(target[0]..target[1]))
        .map_err(|_| HeadError::Malformed("bad target"))?;
    let has_body = !matches!(framing, RequestFraming::None | RequestFraming::Length(0));
    Ok(Parsed::Head(Box::new(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive: !close && (version == Version::HTTP_11 || keep_alive_token),
        expect_continue: expect_continue && has_body && version == Version::HTTP_11,
        trailers,
        facts,
    })))
}

/// How a response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body at all (HEAD, 1xx, 204, 304): the head's own length headers pass as they are.
    Bodiless,
    Length(u64),
    Chunked,
    /// Delimited by closing the connection (an HTTP/1.0 client, no length known).
    UntilClose,
}

/// What the response says of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1's default: nothing to say.
    Default,
    KeepAlive,
    Close,
}

/// Appends the response head: status line, the endpoint's fields still kept as bytes, then the
/// headers in the map (minus the framing and connection headers, which Locus writes itself), a
/// `date` when the response has none.
pub fn encode_response_head(
    status: StatusCode,
    fields: Option<&RawFields>,
    headers: &HeaderMap,
    framing: ResponseFraming,
    persistence: Persistence,
    out: &mut Vec<u8>,
) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = framing == ResponseFraming::Bodiless;
    let mut date = false;
    // The codec consumed the endpoint's connection and transfer-coding fields: a length is
    // all that is left to leave out.
    for (name, value) in fields.into_iter().flat_map(RawFields::iter) {
        if name.eq_ignore_ascii_case(b"content-length") && !bodiless {
            continue;
        }
        date |= name.eq_ignore_ascii_case(b"date");
        push_field(out, name, value);
    }
    for (name, value) in headers {
        if (name == header::CONTENT_LENGTH && !bodiless)
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        date |= name == header::DATE;
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::Bodiless | ResponseFraming::UntilClose => {}
    }
    match persistence {
        Persistence::Default => {}
        Persistence::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persistence::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The whole answer to a head refused before routing: status, no body, connection closed.
pub fn encode_refusal(status: StatusCode, out: &mut Vec<u8>) {
    encode_response_head(
        status,
        None,
        &HeaderMap::new(),
        ResponseFraming::Length(0),
        Persistence::Close,
        out,
    );
}

thread_local! {
    /// The IMF-fixdate of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn parse(raw: &str) -> Result<Parsed, HeadError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_request_head(&mut buf, 64 * 1024, 100, &mut Vec::new())
    }

    fn head(raw: &str) -> RequestHead {
        match parse(raw) {
            Ok(Parsed::Head(h)) => *h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn a_recycled_field_map_comes_back_empty() {
        let first = head("GET / HTTP/1.1\r\nHost: a\r\nX-Secret: 1\r\n\r\n");
        recycle_fields(first.headers);
        let second = head("GET / HTTP/1.1\r\nHost: b\r\n\r\n");
        assert_eq!(second.headers.len(), 1);
        assert_eq!(second.headers["host"], "b");
        assert!(second.headers.get("x-secret").is_none());
        // A map too large to keep is dropped, not kept for the next request.
        let mut big = HeaderMap::with_capacity(4 * SPARE_MAP_CAPACITY);
        big.insert("x-big", HeaderValue::from_static("1"));
        recycle_fields(big);
        let third = head("GET / HTTP/1.1\r\nHost: c\r\n\r\n");
        assert!(third.headers.get("x-big").is_none());
        assert!(third.headers.capacity() <= SPARE_MAP_CAPACITY);
    }

    #[test]
    fn what_the_proxy_reads_is_noted_while_parsing() {
        let h = head(
            "GET / HTTP/1.1\r\nHost: a.example\r\nX-Request-Id: r1\r\nhost: b\r\n\
             Content-Type: application/grpc+proto\r\nX-Forwarded-For: 10.0.0.1\r\n\
             x-request-id: r2\r\n\r\n",
        );
        let f = &h.facts;
        assert_eq!(f.host.as_ref().unwrap(), "a.example");
        assert_eq!(f.hosts, 2);
        assert_eq!(f.request_id.as_ref().unwrap(), "r1");
        assert!(f.grpc && f.forwarded_for && !f.hop_by_hop && !f.transfer_encoding);
        assert_eq!(*f, HeadFacts::read(&h.headers));
        let h = head(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: x-secret\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
        );
        assert!(h.facts.hop_by_hop && h.facts.transfer_encoding && !h.facts.upgrade);
        assert!(h.facts.request_id.is_none() && !h.facts.grpc && !h.facts.forwarded_for);
        assert_eq!(h.facts, HeadFacts::read(&h.headers));
        let h = head("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.facts, HeadFacts::default());
    }

    #[test]
    fn request_heads_are_parsed_and_split_off() {
        let mut buf = BytesMut::from(
            &b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /"[..],
        );
        let Parsed::Head(h) = parse_request_head(&mut buf, 1024, 100, &mut Vec::new()).unwrap()
        else {
            panic!("complete")
        };
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.uri, "/a?b=1");
        assert_eq!(h.headers["host"], "x");
        assert_eq!(h.framing, RequestFraming::Length(3));
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(&buf[..], b"abcGET /", "body and the next request stay");
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: x\r\n"),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn ambiguous_lengths_are_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw), Err(HeadError::Malformed(_))),
                "{raw:?}: {:?}",
                parse(raw)
            );
        }
        let same = head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(same.framing, RequestFraming::Length(3));
        let chunked =
            head("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.framing, RequestFraming::Chunked);
    }

    #[test]
    fn limits_give_431() {
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(101));
        assert_eq!(parse(&many).unwrap_err(), HeadError::TooLarge);
        let mut big =
            BytesMut::from(format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(2000)).as_bytes());
        assert_eq!(
            parse_request_head(&mut big, 1024, 100, &mut Vec::new()).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn persistence_upgrades_and_expectations() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            head("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Ok(Parsed::Switch)
        ));
        assert!(matches!(
            parse("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Ok(Parsed::Switch)
        ));
    }

    #[test]
    fn response_heads_say_their_framing_once() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::DATE, HeaderValue::from_static("then"));
        h.insert("x-a", HeaderValue::from_static("b"));
        let mut out = Vec::new();
        encode_response_head(
            StatusCode::NOT_FOUND,
            None,
            &h,
            ResponseFraming::Length(5),
            Persistence::KeepAlive,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\ndate: then\r\nx-a: b\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_response_head(
            StatusCode::OK,
            None,
            &h,
            ResponseFraming::Bodiless,
            Persistence::Default,
            &mut out,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("content-length: 99\r\n"));
        // The endpoint's fields kept as bytes go first, as they came, then what the gateway
        // added; the endpoint's length is left out unless the response is bodiless.
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 5\r\nConnection: keep-alive\r\nDate: d\r\nSet-Cookie: a=1\r\n\r\nhello"[..],
        );
        let head =
            super::super::codec::parse_response_head(&mut buf, &Method::GET, 1024, &mut Vec::new())
                .unwrap()
                .unwrap();
        let super::super::codec::Fields::Raw(fields) = head.fields else {
            panic!("no hop-by-hop field: kept as bytes");
        };
        let mut added = HeaderMap::new();
        added.insert(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        for (framing, expected) in [
            (
                ResponseFraming::Length(5),
                "HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 5\r\n\r\n",
            ),
            (
                ResponseFraming::Bodiless,
                "HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 5\r\nDate: d\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
            ),
        ] {
            let mut out = Vec::new();
            encode_response_head(
                StatusCode::OK,
                Some(&fields),
                &added,
                framing,
                Persistence::Default,
                &mut out,
            );
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        let map = fields.into_map(added);
        assert_eq!(
            map.get_all(header::SET_COOKIE).iter().collect::<Vec<_>>(),
            ["a=1", "b=2"]
        );
        assert_eq!(map["server"], "s");
        assert_eq!(map.len(), 5);

        let mut out = Vec::new();
        encode_refusal(StatusCode::BAD_REQUEST, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\ndate: "),
            "{text}"
        );
        assert!(
            text.ends_with("content-length: 0\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
    }
}
