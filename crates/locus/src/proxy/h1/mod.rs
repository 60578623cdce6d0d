//! A lean HTTP/1.1 client for upstream exchanges, driven in the request's own task.
//!
//! hyper's client runs each connection as a task of its own and hands every request to it
//! through a channel; on the gateway's hot path that hop, and the codec state around it, cost
//! more user CPU than everything else Locus does per request. Here the request's task writes
//! the head (and a small body) in one `write`, reads the response head with `httparse`, and
//! then reads the body straight off the socket as the client consumes it. The framing rules
//! live in [`codec`], as pure functions with their own tests.
//!
//! A connection carries no task while idle: whether it is still open is read from the
//! reactor's readiness, without a syscall (an endpoint's close or stray bytes make it
//! readable, and a readable idle connection is never reused). Reads go through `poll_read`,
//! whose short reads clear readiness race-free, so nothing that arrives after a response is
//! missed.

pub mod codec;
pub mod server;
pub mod server_codec;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{Method, Request};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use self::codec::{Chunk, ChunkedDecoder, Framing, ProtoError, RequestFraming, ResponseHead};
use super::body::ProxyBody;
use super::outcome::BoxError;
use crate::connect::Stream;
use crate::direct_io;

/// Spare room kept in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// A small request body goes out in the same `write` as its head.
const INLINE_BODY: usize = 16 * 1024;
/// Buffers larger than this are not kept with an idle connection.
const KEEP_BUFFER: usize = 64 * 1024;
/// The trailer section of a chunked response is bounded like a head.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A connection that had carried requests before was found closed before any of the
    /// response arrived: the endpoint closed it while idle. `written`: the request went out
    /// (so only an idempotent one may be sent again).
    #[error("the pooled connection was closed by the endpoint: {error}")]
    Stale { error: io::Error, written: bool },
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtoError),
    /// Reading the request body failed (whose fault it was, the body's state tells).
    #[error("reading the request body: {0}")]
    RequestBody(BoxError),
    /// The exchange's deadline passed before the response head arrived.
    #[error("no response before the deadline")]
    Timeout,
}

/// A connection's deadlines, one after another (each request's head read on the client side,
/// each exchange's response head on the upstream side), kept by one timer.
///
/// A timer per request (`tokio::time::timeout`) puts an entry into the runtime's timer wheel
/// and takes it out again every time: about 800 instructions per request, 3% of the
/// gateway's. This one lives as long as the connection and is moved only when it fires: it
/// stays armed at an earlier deadline, and firing before the current one simply re-arms it
/// there. A connection busy with short requests re-arms it about once per timeout period.
///
/// Nor is it polled again while it waits for the same task: polling a timer registers the
/// task's waker with it again (two locked instructions, and about 120 more), which a connection
/// waiting for its next request did once per request.
#[derive(Debug, Default)]
pub struct Deadline {
    at: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The task the armed timer will wake (its waker's data and vtable addresses), once it has
    /// been polled since it was last armed. While the timer is armed it holds that waker, and
    /// so that task: no other task can take its addresses meanwhile.
    armed_for: Option<(usize, usize)>,
}

impl Deadline {
    /// The next deadline (`None`: none), without touching the timer.
    pub fn set(&mut self, at: Option<tokio::time::Instant>) {
        self.at = at;
    }

    /// Whether the deadline has passed; otherwise the task is woken when it does (or a little
    /// before, to be asked again).
    pub fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.at else {
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if at < timer.deadline() {
            // A shorter timeout than the one armed (another route's per-try timeout).
            timer.as_mut().reset(at);
            self.armed_for = None;
        }
        let task = waker_identity(cx.waker());
        if self.armed_for == Some(task) && !timer.is_elapsed() {
            return false;
        }
        // Unconstrained: a timer polled with the task's budget spent answers Pending without
        // taking the waker, and skipping the next polls would then leave nobody to wake.
        while Pin::new(&mut tokio::task::unconstrained(timer.as_mut()))
            .poll(cx)
            .is_ready()
        {
            if timer.deadline() >= at {
                self.armed_for = None;
                return true;
            }
            timer.as_mut().reset(at);
        }
        self.armed_for = Some(task);
        false
    }

    /// Runs `io` until it is done or the deadline passes.
    async fn within(
        &mut self,
        io: impl Future<Output = io::Result<()>>,
    ) -> Result<(), ExchangeError> {
        let mut io = std::pin::pin!(io);
        poll_fn(|cx| match io.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(ExchangeError::Io)),
            Poll::Pending if self.passed(cx) => Poll::Ready(Err(ExchangeError::Timeout)),
            Poll::Pending => Poll::Pending,
        })
        .await
    }
}

/// Which task a waker wakes, as two addresses (a `Deadline` moves between threads with its
/// connection, so it keeps no pointers).
fn waker_identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

/// Grows `buf` by `size` when less than a quarter of that is spare, and says how much is.
pub(super) fn make_room(buf: &mut BytesMut, size: usize) -> usize {
    if buf.capacity() - buf.len() < size / 4 {
        buf.reserve(size);
    }
    buf.capacity() - buf.len()
}

/// One upstream connection and its buffers, reused across requests.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Scratch space for parsing response heads.
    spans: Vec<[usize; 4]>,
    /// Requests this connection has carried.
    pub uses: u32,
    /// When the request it carries, or carried last, began: the pool's idle stamp, so a
    /// connection can only look older than it is (closed a little early, never reused late),
    /// and the request path reads the clock once for the attempt instead of again here.
    pub began: std::time::Instant,
    /// The last read returned less than it was offered: the socket had nothing more.
    drained: bool,
    /// The request body was sent in full (an early answer can cut an upload short).
    request_done: bool,
    /// The request in flight asked to switch protocols (`Upgrade`).
    upgrade_asked: bool,
    /// A streamed request body still going out (while the response is read, when the
    /// endpoint answered first).
    upload: Option<Box<Upload>>,
    /// When the exchange in flight must have its response head by.
    deadline: Deadline,
}

/// A request body being written to the endpoint.
#[derive(Debug)]
struct Upload {
    body: ProxyBody,
    chunked: bool,
    /// Bytes to write (the head, first), and how many are written.
    out: Vec<u8>,
    written: usize,
    /// The head has gone out with the body's first piece.
    started: bool,
    /// The body ended; what is in `out` is its last piece.
    done: bool,
}

/// How much of a response body is left to read.
#[derive(Debug)]
pub enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl BodyState {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => BodyState::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyState::Done | BodyState::Length(0))
    }

    /// The next piece of the body out of what `buf` already holds, without I/O (request and
    /// response bodies alike): `None` when more bytes must be read first, `Some(None)` at the
    /// end (trailers, if any, are its last frame).
    pub fn next_frame(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Option<Frame<Bytes>>>, ProtoError> {
        match self {
            BodyState::Done | BodyState::Length(0) => {
                *self = BodyState::Done;
                Ok(Some(None))
            }
            BodyState::Length(left) if !buf.is_empty() => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                Ok(Some(Some(Frame::data(buf.split_to(n as usize).freeze()))))
            }
            BodyState::Chunked(dec) if !buf.is_empty() => match dec.decode(buf, MAX_TRAILERS)? {
                Chunk::Data(d) => Ok(Some(Some(Frame::data(d)))),
                Chunk::End(trailers) => {
                    *self = BodyState::Done;
                    Ok(Some(trailers.map(Frame::trailers)))
                }
                Chunk::More => Ok(None),
            },
            BodyState::UntilClose if !buf.is_empty() => {
                Ok(Some(Some(Frame::data(buf.split().freeze()))))
            }
            _ => Ok(None),
        }
    }
}

impl Conn {
    /// A new connection, made for a request that began at `began`.
    pub fn new(stream: Stream, began: std::time::Instant) -> Self {
        Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            spans: Vec::new(),
            uses: 0,
            began,
            drained: true,
            request_done: true,
            upgrade_asked: false,
            upload: None,
            deadline: Deadline::default(),
        }
    }

    /// The socket and what was read past the response head, for a connection switched to
    /// another protocol.
    pub fn into_upgraded(self) -> (Stream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// Whether an idle connection can carry another request: nothing arrived on it since its
    /// last response (no close, no stray bytes). Read from the reactor's readiness; no
    /// syscall. `try_io` answers `WouldBlock` without calling its closure when the reactor
    /// has seen nothing, and unlike a poll for readiness it stores no waker, so it takes no
    /// lock (two locked instructions per request) and spends none of the task's budget.
    pub fn idle_ok(&self) -> bool {
        let seen = self
            .stream
            .tcp()
            .try_io(tokio::io::Interest::READABLE, || Ok(()));
        matches!(seen, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether the connection can go back to the pool now that its response is read: the
    /// request went out whole, and nothing beyond the response arrived. Clears the reactor's
    /// readiness so [`Conn::idle_ok`] sees only what arrives from now on.
    pub fn reusable(&mut self) -> bool {
        if !self.request_done || !self.rbuf.is_empty() {
            return false;
        }
        if self.rbuf.capacity() > KEEP_BUFFER {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = Vec::new();
        }
        if self.stream.is_tls() {
            // TLS reads go through rustls's buffers, so a short read says nothing of the
            // socket: look once (nothing there clears the readiness, race-free).
            let mut cx = Context::from_waker(Waker::noop());
            let mut byte = [0u8; 1];
            let mut buf = tokio::io::ReadBuf::new(&mut byte);
            return Pin::new(&mut self.stream)
                .poll_read(&mut cx, &mut buf)
                .is_pending();
        }
        if self.drained {
            // The last read was short: tokio cleared the readiness it had seen before that read
            // (`poll_read` on epoll), so anything that arrived since — a close, stray bytes —
            // is still flagged and `idle_ok` will see it.
            return true;
        }
        // The last read filled its buffer: look once more (a close or extra bytes: not reused).
        matches!(self.stream.tcp().try_read_buf(&mut self.rbuf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `req` and reads the response head, by `until` when there is one. The body stays
    /// in the request unless it is streamed, so a request refused by a stale connection can be
    /// sent again.
    pub async fn exchange(
        &mut self,
        req: &mut Request<ProxyBody>,
        added: super::request::Added<'_>,
        max_head: usize,
        until: Option<tokio::time::Instant>,
    ) -> Result<ResponseHead, ExchangeError> {
        self.deadline.set(until);
        let reused = self.uses > 1;
        let framing = request_framing(req);
        self.wbuf.clear();
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        self.upgrade_asked = codec::encode_request_head(
            req.method(),
            target,
            req.headers(),
            added.fields(),
            framing,
            &mut self.wbuf,
        );
        let mut separate: Option<Bytes> = None;
        let streamed = match req.body() {
            ProxyBody::Full(Some(b)) if b.len() <= INLINE_BODY => {
                self.wbuf.extend_from_slice(b);
                false
            }
            ProxyBody::Full(Some(b)) => {
                separate = Some(b.clone());
                false
            }
            ProxyBody::Full(None) => false,
            _ => true,
        };
        self.request_done = !streamed;
        let stale = |error: io::Error, written| {
            if reused && !streamed && gone(&error) {
                ExchangeError::Stale { error, written }
            } else {
                ExchangeError::Io(error)
            }
        };
        let method = req.method().clone();
        if streamed {
            let body = std::mem::replace(req.body_mut(), ProxyBody::empty());
            return self
                .stream_body(body, framing == RequestFraming::Chunked, &method, max_head)
                .await;
        }
        match self
            .deadline
            .within(self.stream.write_all(&self.wbuf))
            .await
        {
            Err(ExchangeError::Io(e)) => return Err(stale(e, false)),
            other => other?,
        }
        if let Some(b) = separate {
            self.deadline.within(self.stream.write_all(&b)).await?;
        }
        if self.stream.is_tls() {
            self.deadline.within(self.stream.flush()).await?;
        }
        let mut got_any = false;
        poll_fn(|cx| self.poll_head(cx, &method, max_head, &mut got_any))
            .await
            .map_err(|e| match e {
                ExchangeError::Io(error) if !got_any => stale(error, true),
                e => e,
            })
    }

    /// Streams the request body while watching for the response: an endpoint may answer
    /// before the upload ends. The upload then goes on while the response body is read (a
    /// full-duplex endpoint, such as an echo, reads the rest only as it answers), and an
    /// endpoint that stopped reading is never waited on. The head (already in the write
    /// buffer) goes out with the first piece of the body, so a body that is broken from its
    /// first byte never reaches the endpoint at all.
    async fn stream_body(
        &mut self,
        body: ProxyBody,
        chunked: bool,
        method: &Method,
        max_head: usize,
    ) -> Result<ResponseHead, ExchangeError> {
        self.upload = Some(Box::new(Upload {
            body,
            chunked,
            out: std::mem::take(&mut self.wbuf),
            written: 0,
            started: false,
            done: false,
        }));
        let mut got_any = false;
        poll_fn(|cx| {
            if let Poll::Ready(head) = self.poll_head(cx, method, max_head, &mut got_any) {
                return Poll::Ready(head);
            }
            match self.poll_upload(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// Moves the request body along: writes what is buffered, reads the next piece. Ready when
    /// the whole body is written (or there is no upload).
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        let Some(up) = self.upload.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if up.started && up.written < up.out.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &up.out[up.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(ExchangeError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => up.written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if up.started && self.stream.is_tls() {
                // What rustls still holds goes out before the next piece is awaited.
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if up.done {
                // Written whole: the connection may carry another request.
                let mut out = std::mem::take(&mut up.out);
                out.clear();
                self.wbuf = out;
                self.upload = None;
                self.request_done = true;
                return Poll::Ready(Ok(()));
            }
            if up.started {
                up.out.clear();
                up.written = 0;
            }
            let frame = Pin::new(&mut up.body).poll_frame(cx);
            up.started |= frame.is_ready();
            let out = &mut up.out;
            match frame {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    if up.chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    up.done = true;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if up.chunked => {
                        codec::encode_chunk_size(data.len(), out);
                        out.extend_from_slice(&data);
                        out.extend_from_slice(b"\r\n");
                    }
                    Ok(data) => out.extend_from_slice(&data),
                    Err(frame) => {
                        if let (Ok(trailers), true) = (frame.into_trailers(), up.chunked) {
                            out.extend_from_slice(b"0\r\n");
                            for (name, value) in &trailers {
                                out.extend_from_slice(name.as_str().as_bytes());
                                out.extend_from_slice(b": ");
                                out.extend_from_slice(value.as_bytes());
                                out.extend_from_slice(b"\r\n");
                            }
                            out.extend_from_slice(b"\r\n");
                            up.done = true;
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(ExchangeError::RequestBody(e)))
                }
            }
        }
    }

    /// Reads until a final response head is complete, skipping informational ones.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        max_head: usize,
        got_any: &mut bool,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        loop {
            if !self.rbuf.is_empty() {
                match codec::parse_response_head(&mut self.rbuf, method, max_head, &mut self.spans)?
                {
                    // The connection now carries another protocol: only when the request
                    // asked for it (and then it is never pooled again).
                    Some(h) if h.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                        if !self.upgrade_asked {
                            return Poll::Ready(Err(ProtoError::UnaskedUpgrade.into()));
                        }
                        self.request_done = false;
                        return Poll::Ready(Ok(h));
                    }
                    Some(h) if h.status.is_informational() => continue,
                    Some(h) => return Poll::Ready(Ok(h)),
                    None => {}
                }
            }
            let n = match self.poll_fill(cx, true) {
                Poll::Ready(n) => n.map_err(ExchangeError::Io)?,
                Poll::Pending if self.deadline.passed(cx) => {
                    return Poll::Ready(Err(ExchangeError::Timeout))
                }
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                let why = if self.rbuf.is_empty() && !*got_any {
                    "the endpoint closed the connection without answering"
                } else {
                    "the endpoint closed the connection mid-head"
                };
                return Poll::Ready(Err(ExchangeError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    why,
                ))));
            }
            *got_any = true;
        }
    }

    /// Reads what the socket has into the read buffer; `0` is the end of the stream. A
    /// response head (and the small body that usually comes with it) is read with a direct
    /// `recv` ([`direct_io`]), a body's further bytes straight into the buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>, head: bool) -> Poll<io::Result<usize>> {
        let offered = make_room(&mut self.rbuf, READ_SIZE);
        // Either way a short read clears the readiness seen before it, race-free, so bytes
        // arriving later still wake `idle_ok`.
        let (n, asked) = match &self.stream {
            Stream::Plain(tcp) if head => {
                let asked = offered.min(direct_io::SCRATCH);
                let rbuf = &mut self.rbuf;
                let n = ready!(
                    direct_io::poll_recv(tcp, cx, asked, |data| rbuf.extend_from_slice(data))
                )?;
                (n, asked)
            }
            _ => {
                let n = ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut self.stream),
                    cx,
                    &mut self.rbuf
                ))?;
                (n, offered)
            }
        };
        self.drained = n < asked;
        Poll::Ready(Ok(n))
    }

    /// Copies the rest of a length-delimited body into `out` when this connection's buffer
    /// already holds all of it (at most `limit` bytes) and no upload is still going out: the
    /// usual small response, written with its head, with no frame made for it (taking a frame
    /// out of the shared read buffer was two locked instructions). `None`: nothing copied.
    pub fn copy_buffered_body(
        &mut self,
        state: &mut BodyState,
        out: &mut Vec<u8>,
        limit: u64,
    ) -> Option<u64> {
        let n = match *state {
            BodyState::Done => 0,
            BodyState::Length(n) => n,
            _ => return None,
        };
        if n > limit || (self.rbuf.len() as u64) < n || self.upload.is_some() {
            return None;
        }
        out.extend_from_slice(&self.rbuf[..n as usize]);
        bytes::Buf::advance(&mut self.rbuf, n as usize);
        *state = BodyState::Done;
        Some(n)
    }

    /// The next piece of the response body.
    pub fn poll_body(
        &mut self,
        state: &mut BodyState,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        // An upload the endpoint answered early goes on beside its response. When it fails
        // (the endpoint stopped reading and closed, the client went away) it is dropped, and
        // the connection with it once the response is read.
        if self.upload.is_some() {
            if let Poll::Ready(Err(e)) = self.poll_upload(cx) {
                tracing::debug!(error = %e, "the rest of an upload answered early was not sent");
                self.upload = None;
            }
        }
        loop {
            if let Some(frame) = state.next_frame(&mut self.rbuf)? {
                return Poll::Ready(frame.map(Ok));
            }
            let n = ready!(self.poll_fill(cx, false)).map_err(ExchangeError::Io)?;
            if n == 0 {
                if matches!(state, BodyState::UntilClose) {
                    *state = BodyState::Done;
                    // Delimited by the close: this connection is finished.
                    self.request_done = false;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(ExchangeError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the endpoint closed the connection mid-body",
                )))));
            }
        }
    }
}

/// How the request body will be framed: the length when it is known, chunked otherwise.
fn request_framing(req: &Request<ProxyBody>) -> RequestFraming {
    match req.body() {
        ProxyBody::Full(Some(b)) => RequestFraming::Length(b.len() as u64),
        // An empty body is said explicitly where the method normally carries one (servers
        // answer 411 to a bodiless POST without a length), or the client said a length (the
        // head's encoder sees that).
        ProxyBody::Full(None) => {
            let m = req.method();
            if m == Method::POST || m == Method::PUT || m == Method::PATCH {
                RequestFraming::Length(0)
            } else {
                RequestFraming::None
            }
        }
        body => match body.size_hint().exact() {
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        },
    }
}

/// Errors that mean the peer closed or reset the connection.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}
