//! A lean HTTP/1.1 server for plain-text client connections, driven in the connection's own
//! task: the head is read with `httparse` out of one buffer, the request is handled in place,
//! and the response head and a small body go out in one `write`.
//!
//! hyper's server dispatcher, its body channel and its per-request timer cost more user CPU
//! than routing and picking together (`docs/performance.md`). The framing rules live in
//! [`super::server_codec`], as pure functions with their own tests. What this codec does not
//! speak — a request to switch protocols (WebSocket) and HTTP/2's prior-knowledge preface — is
//! handed to hyper with the bytes already read, at a request boundary, for the rest of the
//! connection; TLS connections are served by hyper too.
//!
//! Bounds, as with hyper: a head must arrive whole within the header read timeout (one timer
//! per connection, re-armed only when it fires, since each request only moves a deadline), at
//! most `--max-request-head-bytes` and `--max-request-headers` (431); a client that closes
//! while its request is in flight cancels it; a drain answers the request in flight with
//! `connection: close` and closes an idle connection at once.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::codec::{self, ChunkedDecoder, RequestFraming};
use super::server_codec::{
    encode_refusal, encode_response_head, parse_request_head, HeadError, Parsed, Persistence,
    RequestHead, ResponseFraming,
};
use super::{make_room, BodyState, Deadline};
use crate::direct_io;
use crate::proxy::body::{ClientIn, ProxyBody};
use crate::proxy::outcome::BoxError;
use crate::proxy::{ConnInfo, Shared};

/// Spare room kept in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;
/// Response data up to this size is copied beside its head into one write.
const COPY_LIMIT: usize = 16 * 1024;
/// Buffers larger than this are not kept between requests.
const KEEP_BUFFER: usize = 64 * 1024;

/// How a connection served here ended.
pub enum Ended {
    Closed,
    /// The client asked for what hyper speaks (an upgrade, HTTP/2): the connection, with what
    /// was read of it, goes on there.
    HandOff(Rewind),
}

struct Conn {
    /// `None` while a request body holds it.
    read: Option<OwnedReadHalf>,
    write: ClientWrite,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    spans: Vec<[usize; 4]>,
}

/// Serves `stream` until the client closes, a request asks to close, the gateway drains
/// (`finish`), or it sits idle past the header read timeout.
pub async fn serve(
    stream: TcpStream,
    info: &ConnInfo,
    shared: &Shared,
    finish: &mut oneshot::Receiver<()>,
) -> Result<Ended, BoxError> {
    let (read, write) = stream.into_split();
    let mut conn = Conn {
        read: Some(read),
        write: ClientWrite(write),
        rbuf: BytesMut::new(),
        wbuf: Vec::new(),
        spans: Vec::new(),
    };
    let limits = shared.limits;
    let wait_limit = match (limits.header_read_timeout, limits.idle_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut deadline = Deadline::default();
    let mut draining = false;
    loop {
        deadline.set(wait_limit.map(|w| Instant::now() + w));
        let head = match conn
            .next_head(&mut deadline, finish, &mut draining, shared)
            .await?
        {
            NextHead::Head(h) => h,
            NextHead::Closed => return Ok(conn.close()),
            NextHead::Switch => {
                let (io, pre) = conn.into_whole();
                let io = io.ok_or("the read half is held by a request body")?;
                return Ok(Ended::HandOff(Rewind {
                    pre: pre.freeze(),
                    io,
                }));
            }
            NextHead::Refused(e) => {
                conn.wbuf.clear();
                encode_refusal(e.status(), &mut conn.wbuf);
                conn.write.write_all(&conn.wbuf).await?;
                return Ok(conn.close());
            }
        };
        let RequestHead {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive,
            expect_continue,
            trailers,
            facts,
        } = *head;
        let mut continue_rx = None;
        let mut body_back = None;
        let body = match framing {
            RequestFraming::None | RequestFraming::Length(0) => ClientIn::Empty,
            framing => {
                let (back_tx, back_rx) = oneshot::channel();
                body_back = Some(back_rx);
                let continue_tx = expect_continue.then(|| {
                    let (tx, rx) = oneshot::channel();
                    continue_rx = Some(rx);
                    tx
                });
                ClientIn::H1(RequestBody(Some(Box::new(Reader {
                    read: conn.read.take().expect("held between requests"),
                    buf: std::mem::take(&mut conn.rbuf),
                    left: match framing {
                        RequestFraming::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
                        RequestFraming::Length(n) => BodyState::Length(n),
                        RequestFraming::None => BodyState::Done,
                    },
                    continue_tx,
                    back: Some(back_tx),
                }))))
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        // Made in place and polled where it lies: the request's future is the largest state
        // on the path, and moving it costs a copy of all of it.
        let mut handling = std::pin::pin!(crate::proxy::handle(shared, info, req, facts));
        let mut watch = true;
        let Some(resp) =
            poll_fn(|cx| conn.poll_run(handling.as_mut(), &mut continue_rx, &mut watch, cx)).await
        else {
            // The client closed with its request in flight: cancelled.
            return Ok(conn.close());
        };
        draining = draining || shared.connections.draining();
        let keep = keep_alive && !draining && !closes(&resp);
        let persistence = match (keep, version) {
            (false, _) => Persistence::Close,
            (true, Version::HTTP_10) => Persistence::KeepAlive,
            (true, _) => Persistence::Default,
        };
        let wrote = conn
            .write_response(resp, &method, version, persistence, trailers)
            .await?;
        if !(keep && wrote) {
            return Ok(conn.close());
        }
        // The request's body, with the read half and what was read past it, comes back.
        if let Some(mut back) = body_back {
            let Ok(returned) = back.try_recv() else {
                return Ok(conn.close());
            };
            if !conn.take_back(returned) {
                return Ok(conn.close());
            }
        }
        if conn.rbuf.capacity() > KEEP_BUFFER && conn.rbuf.is_empty() {
            conn.rbuf = BytesMut::new();
        }
        if conn.wbuf.capacity() > KEEP_BUFFER {
            conn.wbuf = Vec::new();
        }
    }
}

/// A response that asks to close the connection (a local answer may).
fn closes(resp: &Response<ProxyBody>) -> bool {
    resp.headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

enum NextHead {
    Head(Box<RequestHead>),
    Closed,
    Switch,
    Refused(HeadError),
}

impl Conn {
    /// The socket whole again (`None` while a request body holds the read half), and what
    /// was read past the last request.
    fn into_whole(self) -> (Option<TcpStream>, BytesMut) {
        let io = self.read.and_then(|read| read.reunite(self.write.0).ok());
        (io, self.rbuf)
    }

    /// Closes the connection whole: a write half dropped alone sends a `shutdown(SHUT_WR)`
    /// before the close, one syscall more per connection for what `close` does anyway.
    fn close(self) -> Ended {
        drop(self.into_whole());
        Ended::Closed
    }

    /// Reads until a whole head is in the buffer (or the connection ends).
    async fn next_head(
        &mut self,
        deadline: &mut Deadline,
        finish: &mut oneshot::Receiver<()>,
        draining: &mut bool,
        shared: &Shared,
    ) -> Result<NextHead, BoxError> {
        let limits = &shared.limits;
        loop {
            if !self.rbuf.is_empty() {
                match parse_request_head(
                    &mut self.rbuf,
                    limits.max_request_head,
                    limits.max_headers,
                    &mut self.spans,
                ) {
                    Ok(Parsed::Head(h)) => return Ok(NextHead::Head(h)),
                    Ok(Parsed::Switch) => return Ok(NextHead::Switch),
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Ok(NextHead::Refused(e)),
                }
            }
            if *draining {
                // Between requests while draining: nothing is cut short by closing now.
                return Ok(NextHead::Closed);
            }
            let read = self.read.as_mut().expect("held between requests");
            let rbuf = &mut self.rbuf;
            let got = poll_fn(|cx| {
                if let Poll::Ready(n) = poll_fill(read, rbuf, cx) {
                    return Poll::Ready(Some(n));
                }
                // Ready means the drain: the registry keeps the sender for as long as the
                // connection lives, and a closed connection is never handed on.
                if Pin::new(&mut *finish).poll(cx).is_ready() {
                    *draining = true;
                    return Poll::Ready(None);
                }
                if deadline.passed(cx) {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no whole request head within the header read timeout",
                    ))));
                }
                Poll::Pending
            })
            .await;
            match got {
                None => continue,
                Some(Ok(0)) => return Ok(NextHead::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    tracing::debug!(error = %e, "closing the connection");
                    return Ok(NextHead::Closed);
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Polls the request's handling; meanwhile sends `100 Continue` when its body is first
    /// read, and notices a client that closes (while no body holds the read half; `watch`
    /// ends at the first bytes of a pipelined request). `None`: the client went away.
    fn poll_run<F>(
        &mut self,
        handling: Pin<&mut F>,
        continue_rx: &mut Option<oneshot::Receiver<()>>,
        watch: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Response<ProxyBody>>>
    where
        F: Future<Output = Response<ProxyBody>>,
    {
        if let Poll::Ready(resp) = handling.poll(cx) {
            return Poll::Ready(Some(resp));
        }
        if let Some(rx) = continue_rx {
            if Pin::new(rx).poll(cx).is_ready() {
                *continue_rx = None;
                // A fresh connection's send buffer takes these 25 bytes whole.
                const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
                if !matches!(self.write.try_write(CONTINUE), Ok(n) if n == CONTINUE.len()) {
                    return Poll::Ready(None);
                }
            }
        }
        if let (true, Some(read)) = (*watch, self.read.as_mut()) {
            match poll_fill(read, &mut self.rbuf, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                // Not grown further for a client that keeps sending.
                Poll::Ready(Ok(_)) => *watch = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Writes the response; `false` when the connection cannot carry another request (the
    /// body ended early or failed).
    async fn write_response(
        &mut self,
        resp: Response<ProxyBody>,
        method: &Method,
        version: Version,
        persistence: Persistence,
        trailers: bool,
    ) -> Result<bool, BoxError> {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        let framing = if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            ResponseFraming::Bodiless
        } else if let Some(n) = body.size_hint().exact() {
            ResponseFraming::Length(n)
        } else if version == Version::HTTP_11 {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        };
        let persistence = if framing == ResponseFraming::UntilClose {
            Persistence::Close
        } else {
            persistence
        };
        self.wbuf.clear();
        let fields = body.take_fields();
        encode_response_head(
            status,
            fields.as_deref(),
            &parts.headers,
            framing,
            persistence,
            &mut self.wbuf,
        );
        if let Some(fields) = fields {
            fields.recycle();
        }
        // No body to send, or all of it at hand (the usual small response, copied in after the
        // head): one write. The body is done with before the bytes go out, as at `Step::End`.
        let whole = match framing {
            ResponseFraming::Bodiless => true,
            ResponseFraming::Length(_) => body.copy_buffered(&mut self.wbuf, COPY_LIMIT as u64),
            _ => false,
        };
        if whole {
            drop(body);
            self.write.write_all(&self.wbuf).await?;
            return Ok(persistence != Persistence::Close);
        }
        let mut left = match framing {
            ResponseFraming::Length(n) => Some(n),
            _ => None,
        };
        loop {
            let wbuf = &mut self.wbuf;
            let step = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending if !wbuf.is_empty() => Poll::Ready(Step::Flush),
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(Step::End),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Step::Frame(frame)),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Step::Failed(e)),
            })
            .await;
            match step {
                Step::Flush => {
                    self.write.write_all(&self.wbuf).await?;
                    self.wbuf.clear();
                }
                Step::Frame(frame) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(mut data) => {
                        if let Some(n) = &mut left {
                            // Never more than the length said: the rest would be read as
                            // another response.
                            if data.len() as u64 > *n {
                                data.truncate(*n as usize);
                            }
                            *n -= data.len() as u64;
                        }
                        self.put_data(data, framing == ResponseFraming::Chunked)
                            .await?;
                    }
                    Err(frame) => {
                        if let (Ok(map), true, ResponseFraming::Chunked) =
                            (frame.into_trailers(), trailers, framing)
                        {
                            self.wbuf.extend_from_slice(b"0\r\n");
                            for (name, value) in &map {
                                self.wbuf.extend_from_slice(name.as_str().as_bytes());
                                self.wbuf.extend_from_slice(b": ");
                                self.wbuf.extend_from_slice(value.as_bytes());
                                self.wbuf.extend_from_slice(b"\r\n");
                            }
                            self.wbuf.extend_from_slice(b"\r\n");
                            drop(body);
                            self.write.write_all(&self.wbuf).await?;
                            return Ok(persistence != Persistence::Close);
                        }
                    }
                },
                Step::End => {
                    // Done with before the last bytes go out: the endpoint's connection is back
                    // in the pool and the attempt recorded by the time the client can send its
                    // next request (a per-endpoint connection cap must see it free).
                    drop(body);
                    if framing == ResponseFraming::Chunked {
                        self.wbuf.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.write.write_all(&self.wbuf).await?;
                    // A body shorter than its length leaves the client waiting: close.
                    return Ok(persistence != Persistence::Close && left.unwrap_or(0) == 0);
                }
                Step::Failed(e) => {
                    // Cut short: what was written goes out, then the close tells the client
                    // the body is incomplete (no last chunk, or fewer bytes than said).
                    tracing::debug!(error = %e, "response body failed; closing the connection");
                    drop(body);
                    let _ = self.write.write_all(&self.wbuf).await;
                    return Ok(false);
                }
            }
        }
    }

    /// Queues one piece of body data, chunk-framed if `chunked`; large pieces are written
    /// straight from their buffer.
    async fn put_data(&mut self, data: Bytes, chunked: bool) -> io::Result<()> {
        if chunked {
            codec::encode_chunk_size(data.len(), &mut self.wbuf);
        }
        if data.len() <= COPY_LIMIT {
            self.wbuf.extend_from_slice(&data);
        } else {
            self.write.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.write.write_all(&data).await?;
        }
        if chunked {
            self.wbuf.extend_from_slice(b"\r\n");
        }
        if self.wbuf.len() > KEEP_BUFFER {
            self.write.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Takes back the read half from a finished request body. `false`: the body was not read
    /// to its end and what is left of it has not all arrived, so the connection cannot be
    /// read for another request.
    fn take_back(&mut self, back: Returned) -> bool {
        let Returned {
            read,
            mut buf,
            left,
        } = back;
        match left {
            BodyState::Done | BodyState::Length(0) => {}
            // Unread, but already here whole (an answer that did not need the body): skipped.
            BodyState::Length(n) if (buf.len() as u64) >= n => {
                let _ = buf.split_to(n as usize);
            }
            _ => return false,
        }
        self.read = Some(read);
        self.rbuf = buf;
        true
    }
}

enum Step {
    Flush,
    Frame(Frame<Bytes>),
    End,
    Failed(BoxError),
}

/// Reads what the socket has into `buf`; `0` is the end of the stream. `poll_read` clears the
/// reactor's readiness on a short read, so an idle connection costs no further syscall.
fn poll_fill(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let room = make_room(buf, READ_SIZE);
    direct_io::poll_recv(read.as_ref(), cx, room, |data| buf.extend_from_slice(data))
}

/// Reads more of a request body into `buf`, straight into its spare room.
fn poll_fill_body(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    make_room(buf, READ_SIZE);
    tokio_util::io::poll_read_buf(Pin::new(read), cx, buf)
}

/// The client connection's write half, written with direct `send`s ([`direct_io`]).
struct ClientWrite(OwnedWriteHalf);

impl ClientWrite {
    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        self.0.try_write(data)
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        direct_io::poll_send(self.0.as_ref(), cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A request body read off the client connection by whoever sends it upstream. When it is
/// dropped (read or not) it gives the read half back to the connection.
#[derive(Debug)]
pub struct RequestBody(Option<Box<Reader>>);

#[derive(Debug)]
struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    /// How much is left to read, as an upstream response body counts it.
    left: BodyState,
    /// Fired at the first read when the client waits for `100 Continue`.
    continue_tx: Option<oneshot::Sender<()>>,
    back: Option<oneshot::Sender<Returned>>,
}

/// What a request body gives back to its connection.
#[derive(Debug)]
struct Returned {
    read: OwnedReadHalf,
    buf: BytesMut,
    left: BodyState,
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let Reader {
                read,
                buf,
                left,
                back,
                ..
            } = *r;
            if let Some(back) = back {
                let _ = back.send(Returned { read, buf, left });
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(r) = self.0.as_deref_mut() else {
            return Poll::Ready(None);
        };
        if let Some(tx) = r.continue_tx.take() {
            let _ = tx.send(());
        }
        loop {
            match r.left.next_frame(&mut r.buf) {
                Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                Ok(None) => {}
                // The client's malformed body (`InvalidData`: not the endpoint's).
                Err(e) => {
                    return Poll::Ready(Some(Err(Box::new(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e,
                    )))))
                }
            }
            let n = match ready!(poll_fill_body(&mut r.read, &mut r.buf, cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            };
            if n == 0 {
                return Poll::Ready(Some(Err(Box::new(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection mid-body",
                )))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|r| r.left.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_ref().map(|r| &r.left) {
            Some(BodyState::Length(n)) => SizeHint::with_exact(*n),
            Some(BodyState::Chunked(_) | BodyState::UntilClose) => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }
}

/// A client connection handed to hyper, with the bytes this codec had already read of it.
pub struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
