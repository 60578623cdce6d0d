//! The HTTP/1.1 wire format of an upstream exchange, as pure functions over buffers: the
//! request head Locus writes, the response head it reads, and how the response body is framed
//! (RFC 9112 §6). No I/O here, so every framing rule is a unit test.
//!
//! Strict where a proxy must be: a response whose length is ambiguous (Transfer-Encoding with
//! Content-Length, differing or malformed lengths, a bad chunk size or a bare LF in chunk
//! framing, obs-fold, a space before a header's colon) is the endpoint's fault and never
//! forwarded, so a desynchronised connection cannot smuggle one response into another
//! client's. (httparse takes a bare LF as a line end in a head; heads are parsed into fields
//! and written anew, never passed on as bytes, so that leniency cannot desynchronise anyone.)

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use crate::proxy::request::is_hop_by_hop_name;

/// Headers read from one response head (hyper's default, as for client heads).
pub const MAX_HEADERS: usize = 100;
/// A chunk-size line (with its extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// What is wrong with an endpoint's response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("the response head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("malformed response head: {0}")]
    Head(&'static str),
    #[error("the response has both Transfer-Encoding and Content-Length")]
    LengthAndChunked,
    #[error("the response's Content-Length is not one valid number")]
    BadLength,
    #[error("the response's Transfer-Encoding is not understood")]
    BadTransferEncoding,
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
    #[error("the endpoint answered 101 Switching Protocols unasked")]
    UnaskedUpgrade,
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body, and no length said.
    None,
    Length(u64),
    Chunked,
}

/// Appends the request head to `out`: the request line, the headers as they are (minus any
/// framing header, which Locus writes itself from the body it actually sends; a request
/// without a body whose client said a length says `0`), then the `added` fields the gateway
/// kept beside the map. Returns whether the request asks to switch protocols (`Upgrade`),
/// read on the way.
pub fn encode_request_head<'a>(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut said_length = false;
    let mut upgrade = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            said_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        upgrade |= name == header::UPGRADE;
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in added {
        push_field(out, name, value);
    }
    match framing {
        RequestFraming::None if said_length => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    upgrade
}

/// One field line: `name: value` and CRLF.
pub(super) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends one chunk's size line; the data and its CRLF follow.
pub fn encode_chunk_size(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD request, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Read until the endpoint closes (no length given); the connection is not reused.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub fields: Fields,
    pub framing: Framing,
    /// The endpoint lets the connection carry another request.
    pub keep_alive: bool,
}

/// An endpoint's header fields (those the codec did not consume).
#[derive(Debug)]
pub enum Fields {
    /// As the bytes they came in: the usual case.
    Raw(Box<RawFields>),
    /// In a map: a hop-by-hop field is there for the gateway's strip, or there are too many
    /// to index.
    Map(HeaderMap),
}

#[cfg(test)]
impl Fields {
    fn raw(&self) -> Option<&RawFields> {
        match self {
            Fields::Raw(r) => Some(r),
            Fields::Map(_) => None,
        }
    }

    fn map(&self) -> Option<&HeaderMap> {
        match self {
            Fields::Map(m) => Some(m),
            Fields::Raw(_) => None,
        }
    }
}

/// An endpoint's header fields kept as the bytes they arrived in: the head, and where each
/// name and value sit in it (the framing and connection fields the codec consumed are left
/// out). Most responses go to the client untouched, and reading every field into a `HeaderMap`
/// (names matched, values checked again, two allocations, the hashing) and writing them out of
/// it again was a fifth of the gateway's instructions per request. A map is made only when
/// something reads or edits the fields ([`RawFields::into_map`]).
///
/// Each field is written anew from its name and value, never passed on as its line, so
/// httparse's leniencies (a bare LF) never reach the client.
///
/// Boxed, with the positions in an array inside, so the response that carries it stays small
/// to move. The head is copied out of the connection's read buffer, not split off it: a split
/// shares the buffer, and taking and dropping that share are two locked instructions per
/// response, where copying a head of a few hundred bytes is cheaper. The box, and the room in
/// it, is reused ([`RawFields::recycle`]).
#[derive(Debug, Clone)]
pub struct RawFields {
    head: Vec<u8>,
    len: usize,
    spans: [[u16; 4]; MAX_RAW_FIELDS],
}

/// More fields than this (or a head past 64 KiB) go to a map.
const MAX_RAW_FIELDS: usize = 32;

thread_local! {
    /// Boxes of fields kept for this thread's next responses (as `SPARE_MAPS` for requests):
    /// the boxes themselves are what is reused, so the list holds boxes.
    #[allow(clippy::vec_box)]
    static SPARE_FIELDS: std::cell::RefCell<Vec<Box<RawFields>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}
const SPARE_FIELDS_KEPT: usize = 64;
/// A spare keeps a head's room up to this size.
const SPARE_HEAD_CAPACITY: usize = 4096;

impl RawFields {
    /// An empty box, reused when this thread has one spare.
    fn spare() -> Box<RawFields> {
        SPARE_FIELDS
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| {
                Box::new(RawFields {
                    head: Vec::new(),
                    len: 0,
                    spans: [[0; 4]; MAX_RAW_FIELDS],
                })
            })
    }

    /// Gives the box back for reuse once its fields are written.
    pub fn recycle(self: Box<Self>) {
        if self.head.capacity() > SPARE_HEAD_CAPACITY {
            return;
        }
        SPARE_FIELDS.with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARE_FIELDS_KEPT {
                spare.push(self);
            }
        });
    }

    fn spans(&self) -> impl Iterator<Item = [usize; 4]> + '_ {
        self.spans[..self.len].iter().map(|s| s.map(usize::from))
    }

    /// Names and values, in the order they came.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans()
            .map(|[ns, ne, vs, ve]| (&self.head[ns..ne], &self.head[vs..ve]))
    }

    /// Puts the fields into `headers`, ahead of those the gateway has added there since.
    pub fn merge_into(self, headers: &mut HeaderMap) {
        let added = std::mem::take(headers);
        *headers = self.into_map(added);
    }

    /// The fields in a map, followed by those the gateway has `added` since (appended: a
    /// `Set-Cookie` of the gateway's goes beside the endpoint's, where `HeaderMap`'s `extend`
    /// would replace it).
    pub fn into_map(mut self, added: HeaderMap) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len + added.len());
        // The values become slices of one buffer, the head's.
        let head = Bytes::from(std::mem::take(&mut self.head));
        for span in self.spans() {
            // httparse checked names and values by the same rules `http` does, so none fails.
            if let Ok((name, value)) = field(&head, span) {
                map.append(name, value);
            }
        }
        let mut last = None;
        for (name, value) in added {
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                map.append(name.clone(), value);
            }
        }
        map
    }
}

/// Reads one response head from the front of `buf`, splitting it off. `None`: not all of it
/// has arrived yet. Informational (1xx) heads are returned too; the caller skips them.
///
/// `spans` is scratch space kept with the connection: where each header's name and value sit
/// in the head, so they are sliced out of one shared buffer instead of copied one by one (a
/// fixed array would cost a 3 KiB memset per response).
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
    max_head: usize,
    spans: &mut Vec<[usize; 4]>,
) -> Result<Option<ResponseHead>, ProtoError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    spans.clear();
    let (len, code, minor) = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => {
            record_spans(parsed.headers, base, spans);
            (len, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
        }
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(ProtoError::HeadTooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProtoError::Head("too many headers")),
        Err(e) => return Err(ProtoError::Head(parse_error(e))),
    };
    if len > max_head {
        return Err(ProtoError::HeadTooLarge(max_head));
    }
    let head = &buf[..len];
    let status = StatusCode::from_u16(code).map_err(|_| ProtoError::Head("invalid status"))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut lengths = Lengths::default();
    let mut close = false;
    let mut keep_alive_token = false;
    // A hop-by-hop field the codec does not consume here (one `Connection` names, `Upgrade`,
    // `Trailer`, ...) sends the fields to a map, for the gateway's strip to act on.
    let mut to_map = false;
    let mut kept = 0;
    for i in 0..spans.len() {
        let [ns, ne, vs, ve] = spans[i];
        let (name, value) = (&head[ns..ne], &head[vs..ve]);
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.content_length(value)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            lengths.transfer_encoding(value)?;
            // Hop-by-hop, read here for framing: never forwarded, so never kept.
            continue;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let mut others = false;
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                let is_close = token.eq_ignore_ascii_case(b"close");
                let is_keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                close |= is_close;
                keep_alive_token |= is_keep_alive;
                others |= !(is_close || is_keep_alive || token.is_empty());
            }
            // `Connection: keep-alive` (or `close`), the usual case, is consumed here; one that
            // names other headers (or `upgrade`) stays, for the hop-by-hop strip to act on.
            if !others {
                continue;
            }
            to_map = true;
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        } else if is_hop_by_hop_name(name) {
            to_map = true;
        }
        spans[kept] = spans[i];
        kept += 1;
    }
    spans.truncate(kept);
    let fields = if to_map || kept > MAX_RAW_FIELDS || len > usize::from(u16::MAX) {
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for &span in spans.iter() {
            let (name, value) = field(&head, span).map_err(ProtoError::Head)?;
            headers.append(name, value);
        }
        Fields::Map(headers)
    } else {
        let mut raw = RawFields::spare();
        raw.head.clear();
        raw.head.extend_from_slice(head);
        raw.len = kept;
        for (to, from) in raw.spans.iter_mut().zip(spans.iter()) {
            // The head is shorter than 64 KiB: every position fits.
            *to = from.map(|p| p as u16);
        }
        buf.advance(len);
        Fields::Raw(raw)
    };
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || request_method == Method::HEAD
    {
        Framing::Empty
    } else {
        lengths.framing(version)?
    };
    let keep_alive = framing != Framing::UntilClose
        && !close
        && (version == Version::HTTP_11 || keep_alive_token);
    Ok(Some(ResponseHead {
        status,
        fields,
        framing,
        keep_alive,
    }))
}

/// Notes where each parsed header's name and value sit in the buffer that starts at `base`.
pub(super) fn record_spans(
    headers: &[httparse::Header<'_>],
    base: usize,
    spans: &mut Vec<[usize; 4]>,
) {
    spans.extend(headers.iter().map(|h| {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        [name, name + h.name.len(), value, value + h.value.len()]
    }));
}

/// One header field sliced out of the frozen head (the value shares the head's buffer).
pub(super) fn field(
    head: &Bytes,
    [ns, ne, vs, ve]: [usize; 4],
) -> Result<(HeaderName, HeaderValue), &'static str> {
    let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| "invalid header name")?;
    let value =
        HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| "invalid header value")?;
    Ok((name, value))
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value (or obs-fold)",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Version => "invalid version",
        _ => "invalid syntax",
    }
}

/// The length headers of one response, checked as they are read.
#[derive(Default)]
pub(super) struct Lengths {
    pub(super) content_length: Option<u64>,
    /// Transfer-Encoding was present; `Some(true)` when its last coding is `chunked`.
    pub(super) chunked_last: Option<bool>,
}

impl Lengths {
    /// Every Content-Length (a list, or repeated) must be the same one decimal number.
    pub(super) fn content_length(&mut self, value: &[u8]) -> Result<(), ProtoError> {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(ProtoError::BadLength);
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match self.content_length {
                Some(m) if m != n => return Err(ProtoError::BadLength),
                _ => self.content_length = Some(n),
            }
        }
        Ok(())
    }

    /// `chunked` may appear once, last; other codings are passed through as they are.
    pub(super) fn transfer_encoding(&mut self, value: &[u8]) -> Result<(), ProtoError> {
        for coding in value.split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if self.chunked_last == Some(true) {
                // A coding after `chunked`: chunked is then not the framing, a smuggling shape.
                return Err(ProtoError::BadTransferEncoding);
            }
            self.chunked_last = Some(coding.eq_ignore_ascii_case(b"chunked"));
        }
        if self.chunked_last.is_none() {
            self.chunked_last = Some(false);
        }
        Ok(())
    }

    fn framing(&self, version: Version) -> Result<Framing, ProtoError> {
        match (self.chunked_last, self.content_length) {
            (Some(_), Some(_)) => Err(ProtoError::LengthAndChunked),
            // HTTP/1.0 has no transfer codings; a 1.0 response using them is malformed.
            (Some(_), None) if version != Version::HTTP_11 => Err(ProtoError::BadTransferEncoding),
            (Some(true), None) => Ok(Framing::Chunked),
            // Another final coding: the body runs to the end of the connection.
            (Some(false), None) => Ok(Framing::UntilClose),
            (None, Some(0)) => Ok(Framing::Empty),
            (None, Some(n)) => Ok(Framing::Length(n)),
            (None, None) => Ok(Framing::UntilClose),
        }
    }
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// Body data (split off the buffer, no copy).
    Data(Bytes),
    /// More bytes are needed.
    More,
    /// The last chunk and the trailer section were read.
    End(Option<HeaderMap>),
}

/// Decodes a chunked body (RFC 9112 §7.1) from the front of a buffer, a piece at a time.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Decodes what it can from the front of `buf`. `max_trailers` bounds the trailer section.
    pub fn decode(&mut self, buf: &mut BytesMut, max_trailers: usize) -> Result<Chunk, ProtoError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Chunk::More);
                    };
                    let size = chunk_size(&buf[..end])?;
                    let _ = buf.split_to(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::More);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtoError::Chunk("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                        let _ = buf.split_to(2);
                        self.state = ChunkState::Done;
                        return Ok(Chunk::End(None));
                    }
                    return match trailers(buf, max_trailers)? {
                        None => Ok(Chunk::More),
                        Some(map) => {
                            self.state = ChunkState::Done;
                            Ok(Chunk::End(Some(map)))
                        }
                    };
                }
                ChunkState::Done => return Ok(Chunk::End(None)),
            }
        }
    }
}

/// The offset of the first CRLF in `buf`; a bare LF, a CR not before LF, or no line end within
/// `max` bytes is an error.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, ProtoError> {
    let window = &buf[..buf.len().min(max)];
    match window.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) if buf[i] == b'\n' => Err(ProtoError::Chunk("bare LF")),
        Some(i) => match buf.get(i + 1) {
            Some(b'\n') => Ok(Some(i)),
            Some(_) => Err(ProtoError::Chunk("CR not followed by LF")),
            None => Ok(None),
        },
        None if buf.len() >= max => Err(ProtoError::Chunk("chunk-size line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, at most 16 of them, then optional extensions.
fn chunk_size(line: &[u8]) -> Result<u64, ProtoError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ProtoError::Chunk("missing chunk size"));
    }
    if digits > 16 {
        return Err(ProtoError::Chunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !ext.is_empty() && ext[0] != b';' {
        return Err(ProtoError::Chunk("invalid chunk size"));
    }
    // Extensions are ignored (RFC 9112 §7.1.1), but must not carry control characters.
    if ext.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
        return Err(ProtoError::Chunk("invalid chunk extension"));
    }
    let size = line[..digits].iter().fold(0u64, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    });
    Ok(size)
}

/// The trailer section after the last chunk, up to its empty line; `None` until all of it
/// has arrived.
fn trailers(buf: &mut BytesMut, max: usize) -> Result<Option<HeaderMap>, ProtoError> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(buf, &mut slots) {
        // Bounded however the bytes arrive: a section that came whole is held to the same
        // limit as one that came in pieces.
        Ok(httparse::Status::Complete((len, _))) if len > max => {
            Err(ProtoError::Chunk("trailer section too large"))
        }
        Ok(httparse::Status::Complete((len, parsed))) => {
            let mut map = HeaderMap::with_capacity(parsed.len());
            for h in parsed {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| ProtoError::Chunk("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| ProtoError::Chunk("invalid trailer value"))?;
                map.append(name, value);
            }
            let _ = buf.split_to(len);
            Ok(Some(map))
        }
        Ok(httparse::Status::Partial) if buf.len() >= max => {
            Err(ProtoError::Chunk("trailer section too large"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(ProtoError::Chunk("invalid trailer section")),
    }
}

/// The fuzz target's path through this module: a head after GET and after HEAD; the bytes
/// after it as a chunked body, whole and one byte at a time (both must agree).
pub fn inspect(data: &[u8]) {
    for method in [Method::GET, Method::HEAD] {
        let mut buf = BytesMut::from(data);
        let _ = parse_response_head(&mut buf, &method, 16 * 1024, &mut Vec::new());
    }
    let whole = decode_in_pieces(data, data.len().max(1));
    let bytewise = decode_in_pieces(data, 1);
    assert_eq!(
        whole, bytewise,
        "chunked decoding depends on how bytes arrive"
    );
}

/// Decodes `data` as a chunked body fed `piece` bytes at a time: the body and whether it ended
/// (`None`: refused).
fn decode_in_pieces(data: &[u8], piece: usize) -> Option<(Vec<u8>, bool)> {
    let mut dec = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    for part in data.chunks(piece) {
        buf.extend_from_slice(part);
        loop {
            match dec.decode(&mut buf, 4096).ok()? {
                Chunk::Data(d) => body.extend_from_slice(&d),
                Chunk::More => break,
                Chunk::End(_) => return Some((body, true)),
            }
        }
    }
    Some((body, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<ResponseHead>, ProtoError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_response_head(&mut buf, &method, 64 * 1024, &mut Vec::new())
    }

    fn framing(raw: &str) -> Result<Framing, ProtoError> {
        head(raw, Method::GET).map(|h| h.expect("complete").framing)
    }

    #[test]
    fn request_heads_carry_the_framing_locus_chose() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let mut out = Vec::new();
        let added: [(&[u8], &[u8]); 1] = [(b"x-forwarded-proto", b"http")];
        encode_request_head(
            &Method::POST,
            "/x?y=1",
            &h,
            added.into_iter(),
            RequestFraming::Length(12),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /x?y=1 HTTP/1.1\r\nhost: a.example\r\nx-forwarded-proto: http\r\n\
             content-length: 12\r\n\r\n"
        );
        // No body, but the client said a length: `0`. An upgrade is noticed on the way.
        let mut out = Vec::new();
        assert!(!encode_request_head(
            &Method::GET,
            "/",
            &h,
            std::iter::empty(),
            RequestFraming::None,
            &mut out
        ));
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("host: a.example\r\ncontent-length: 0\r\n\r\n"));
        let mut up = h.clone();
        up.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(encode_request_head(
            &Method::GET,
            "/",
            &up,
            std::iter::empty(),
            RequestFraming::None,
            &mut Vec::new()
        ));
        let mut out = Vec::new();
        encode_request_head(
            &Method::PUT,
            "/",
            &h,
            std::iter::empty(),
            RequestFraming::Chunked,
            &mut out,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("host: a.example\r\ntransfer-encoding: chunked\r\n\r\n"));
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, b"018446744073709551615");
    }

    #[test]
    fn response_heads_are_parsed_in_one_piece_or_waited_for() {
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
            .unwrap()
            .is_none());
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"[..]);
        let h = parse_response_head(&mut buf, &Method::GET, 1024, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        let fields = h
            .fields
            .raw()
            .cloned()
            .expect("no hop-by-hop field: kept as bytes");
        let kept: Vec<_> = fields.iter().collect();
        assert_eq!(
            kept,
            [
                (&b"Content-Length"[..], &b"5"[..]),
                (&b"X-A"[..], &b"b"[..])
            ]
        );
        assert_eq!(fields.into_map(HeaderMap::new())["x-a"], "b");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");
        // The fields the codec consumes are not kept; a hop-by-hop one it leaves (named by
        // `Connection`, or `Upgrade`) makes a map of them all, for the gateway's strip.
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nX-A: b\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let h = parse_response_head(&mut buf, &Method::GET, 1024, &mut Vec::new())
            .unwrap()
            .unwrap();
        let names: Vec<_> = h
            .fields
            .raw()
            .expect("kept as bytes")
            .iter()
            .map(|(n, _)| n.to_vec())
            .collect();
        assert_eq!(names, [b"X-A".to_vec(), b"Content-Length".to_vec()]);
        for hop in [
            "Connection: x-secret\r\nX-Secret: 1",
            "Upgrade: h2c",
            "Trailer: x",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\n{hop}\r\nX-A: b\r\nContent-Length: 0\r\n\r\n");
            let h = head(&raw, Method::GET).unwrap().unwrap();
            assert!(h.fields.raw().is_none(), "{hop}");
            assert_eq!(h.fields.map().unwrap()["x-a"], "b", "{hop}");
        }
        // More fields than the bytes' index holds: a map.
        let many: String = (0..40).map(|i| format!("x-{i}: {i}\r\n")).collect();
        let h = head(
            &format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n"),
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(h.fields.raw().is_none());
        assert_eq!(h.fields.map().unwrap().len(), 41);
        assert_eq!(h.fields.map().unwrap()["x-39"], "39");
        let big = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(2000));
        let mut buf = BytesMut::from(big.as_bytes());
        assert_eq!(
            parse_response_head(&mut buf, &Method::GET, 1024, &mut Vec::new()).unwrap_err(),
            ProtoError::HeadTooLarge(1024)
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n"),
            Ok(Framing::Length(7))
        );
        // No body, whatever the headers say.
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok(Framing::Empty)
        );
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Method::HEAD).unwrap();
        assert_eq!(h.unwrap().framing, Framing::Empty);
    }

    #[test]
    fn ambiguous_lengths_are_refused() {
        let bad = [
            (
                "content-length: 5\r\ntransfer-encoding: chunked",
                ProtoError::LengthAndChunked,
            ),
            (
                "content-length: 5\r\ncontent-length: 6",
                ProtoError::BadLength,
            ),
            ("content-length: 5, 6", ProtoError::BadLength),
            ("content-length: +5", ProtoError::BadLength),
            ("content-length: 0x5", ProtoError::BadLength),
            ("content-length: 5 5", ProtoError::BadLength),
            ("content-length:", ProtoError::BadLength),
            (
                "content-length: 99999999999999999999",
                ProtoError::BadLength,
            ),
            (
                "transfer-encoding: chunked, gzip",
                ProtoError::BadTransferEncoding,
            ),
            (
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
                ProtoError::BadTransferEncoding,
            ),
        ];
        for (headers, want) in bad {
            let raw = format!("HTTP/1.1 200 OK\r\n{headers}\r\n\r\n");
            assert_eq!(framing(&raw), Err(want), "{headers}");
        }
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(ProtoError::BadTransferEncoding)
        );
        // obs-fold, and a space before the colon.
        assert!(framing("HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\n\r\n").is_err());
        assert!(framing("HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length : 1\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_needs_http_1_1_a_length_and_no_close() {
        let ka = |raw: &str| head(raw, Method::GET).unwrap().unwrap().keep_alive;
        assert!(ka("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nconnection: x, Close\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.1 200 OK\r\n\r\n"));
    }

    fn decode_all(raw: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), ProtoError> {
        // Fed one byte at a time: every state must wait for more rather than misread.
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for &b in raw {
            buf.extend_from_slice(&[b]);
            loop {
                match dec.decode(&mut buf, 1024)? {
                    Chunk::Data(d) => body.extend_from_slice(&d),
                    Chunk::More => break,
                    Chunk::End(t) => return Ok((body, t)),
                }
            }
        }
        Err(ProtoError::Chunk("ended early"))
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte() {
        let (body, t) = decode_all(b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"hello0123456789");
        assert!(t.is_none());
        let (body, t) = decode_all(b"3 ; a=b\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n").unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(t.unwrap()["grpc-status"], "0");
    }

    #[test]
    fn bad_chunks_are_refused() {
        for raw in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5;a\x01\r\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"0\r\nx: a\r\n b\r\n\r\n",
        ] {
            assert!(
                decode_all(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
