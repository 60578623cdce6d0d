//! Upstream HTTP/1.1 connections, pooled per worker thread.
//!
//! Each worker thread keeps its own idle connections per endpoint in a thread-local map, so
//! taking and returning a connection never locks (hyper-util's shared pool takes a mutex on
//! both). A connection goes back to the pool when its response body has been read to the end
//! and nothing followed it. A connection the endpoint closed while idle costs a reconnect,
//! never the request: it is sent again on another connection when it was not written, or
//! when sending it twice is harmless (RFC 9110 §9.2.2).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};

use super::body::ProxyBody;
use super::h1::codec::{Fields, RawFields, ResponseHead};
use super::h1::{BodyState, Conn, ExchangeError};
use super::outcome::BoxError;
use super::Limits;
use crate::connect::{self, Stream};
use crate::model::upstream_tls::TlsClient;

/// Idle connections kept per endpoint and worker; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// Idle connections older than this are not reused (backends commonly close at 60–75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// How one Service's upstream connections are made and reused.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions<'a> {
    pub connect_timeout: Duration,
    pub max_response_head: usize,
    /// Idle connections older than this are not reused.
    pub idle_timeout: Duration,
    /// A connection is closed after this many requests.
    pub max_uses: Option<u32>,
    /// TLS to the endpoints (a port whose TLS was refused never gets here).
    pub tls: Option<&'a TlsClient>,
}

impl<'a> PoolOptions<'a> {
    /// The gateway's limits, with a Service's own settings where it has them.
    pub fn new(limits: &Limits, up: &'a crate::model::UpstreamPolicy) -> Self {
        PoolOptions {
            tls: up
                .tls
                .as_ref()
                .and_then(|t| t.client.as_ref().ok())
                .map(|c| &**c),
            connect_timeout: up.connect_timeout.unwrap_or(limits.connect_timeout),
            max_response_head: limits.max_response_head,
            idle_timeout: up
                .idle_timeout
                .map_or(IDLE_TIMEOUT, |t| t.min(IDLE_TIMEOUT)),
            max_uses: up.max_requests_per_connection,
        }
    }
}

/// A worker's idle connections: per endpoint, oldest first (taken from the back, so the
/// warmest is reused), and when the whole map was last swept.
#[derive(Default)]
struct IdleConns {
    by_endpoint: HashMap<PoolKey, VecDeque<Idle>, BuildPoolHasher>,
    swept: Option<Instant>,
}

/// How often a worker's idle connections are swept (closed by the endpoint, too old, or of
/// endpoints no longer used): without a task per connection, nothing else closes them.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl IdleConns {
    fn sweep(&mut self, now: Instant) {
        self.by_endpoint.retain(|_, list| {
            list.retain(|c| {
                now.saturating_duration_since(c.since) < IDLE_TIMEOUT && c.conn.idle_ok()
            });
            !list.is_empty()
        });
        self.swept = Some(now);
    }
}

/// An endpoint and the TLS settings its connections were made with (0: plain): a connection
/// is reused only for requests that would have made the same one.
type PoolKey = (SocketAddr, u64);

/// The pool's keys are the gateway's own endpoint addresses, looked up twice per request
/// (take and return), never chosen by a client: a multiply-rotate hash (FxHash's) instead of
/// SipHash, whose flooding resistance buys nothing here.
#[derive(Clone, Copy, Default)]
struct BuildPoolHasher;

#[derive(Default)]
struct PoolHasher(u64);

impl std::hash::BuildHasher for BuildPoolHasher {
    type Hasher = PoolHasher;
    fn build_hasher(&self) -> PoolHasher {
        PoolHasher::default()
    }
}

impl std::hash::Hasher for PoolHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn pool_key(addr: SocketAddr, opts: &PoolOptions<'_>) -> PoolKey {
    (addr, opts.tls.map_or(0, |t| t.id))
}

thread_local! {
    static IDLE: RefCell<IdleConns> = RefCell::default();
}

/// Why a request could not be sent. Either way the caller still holds the request, for a
/// retry (its body too, unless it was streamed).
pub enum SendError {
    /// No connection could be made; the request was not sent.
    Connect(std::io::Error),
    /// The exchange failed after the request (or part of it) went out.
    Exchange(ExchangeError),
}

fn take_idle(addr: PoolKey, idle_timeout: Duration, now: Instant) -> Option<Box<Conn>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.by_endpoint.get_mut(&addr)?;
        while let Some(mut c) = list.pop_back() {
            if c.conn.idle_ok() && now.saturating_duration_since(c.since) < idle_timeout {
                c.conn.began = now;
                return Some(c.conn);
            }
        }
        None
    })
}

/// The connection's age counts from when its last request began ([`Conn::began`]).
fn put_idle(addr: PoolKey, mut conn: Box<Conn>, max_uses: Option<u32>) {
    let now = conn.began;
    if max_uses.is_some_and(|m| conn.uses >= m) || !conn.reusable() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let age = |t: Instant| now.saturating_duration_since(t);
        if idle.swept.is_none_or(|t| age(t) >= SWEEP_EVERY) {
            idle.sweep(now);
        }
        let list = idle.by_endpoint.entry(addr).or_default();
        // The oldest is checked on every return, by age only: expired ones do not pile up.
        // One the endpoint closed waits for the next sweep (within `SWEEP_EVERY`) unless a
        // request takes it first, which looks at it anyway (asking the reactor here on every
        // return was 2% of the gateway's instructions per request).
        if list.front().is_some_and(|c| age(c.since) >= IDLE_TIMEOUT) {
            list.pop_front();
        }
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push_back(Idle { conn, since: now });
        }
    });
}

async fn connect(
    addr: SocketAddr,
    opts: &PoolOptions<'_>,
    now: Instant,
) -> std::io::Result<Box<Conn>> {
    let tls = opts.tls.map(|t| (t, false));
    let stream = connect::connect(addr, tls, opts.connect_timeout).await?;
    Ok(Box::new(Conn::new(stream, now)))
}

/// Sends `req` to `addr` over a pooled or new connection, with its response head by `until`.
/// The request is borrowed, not moved: it stays where it is (in the caller's future, moved into
/// no other) and is there for a retry with no copy made in advance.
pub async fn send(
    addr: SocketAddr,
    req: &mut Request<ProxyBody>,
    added: super::request::Added<'_>,
    opts: &PoolOptions<'_>,
    until: Option<tokio::time::Instant>,
    now: Instant,
) -> Result<Response<PooledBody>, SendError> {
    let key = pool_key(addr, opts);
    loop {
        // Pooled connections first; a new one when none is left. Connecting is per
        // connection, not per request: boxed, so the request's future does not carry (and
        // move) the connect state every time.
        let mut conn = match take_idle(key, opts.idle_timeout, now) {
            Some(c) => c,
            None => {
                let connecting = Box::pin(connect(addr, opts, now));
                let connected = match until {
                    Some(at) => match tokio::time::timeout_at(at, connecting).await {
                        Ok(c) => c,
                        Err(_) => return Err(SendError::Exchange(ExchangeError::Timeout)),
                    },
                    None => connecting.await,
                };
                match connected {
                    Ok(c) => c,
                    Err(e) => return Err(SendError::Connect(e)),
                }
            }
        };
        conn.uses += 1;
        match conn
            .exchange(req, added, opts.max_response_head, until)
            .await
        {
            Ok(head) => return Ok(respond(key, conn, head, opts.max_uses)),
            // The endpoint had closed this idle connection: another one carries the request
            // (after it was written, only when sending it twice is harmless).
            Err(ExchangeError::Stale { written, error })
                if !written || super::request::idempotent(req.method()) =>
            {
                tracing::debug!(endpoint = %addr, %error, "pooled connection closed by the endpoint; sending again");
            }
            Err(e) => return Err(SendError::Exchange(e)),
        }
    }
}

fn respond(
    addr: PoolKey,
    conn: Box<Conn>,
    head: ResponseHead,
    max_uses: Option<u32>,
) -> Response<PooledBody> {
    let mut resp = Response::new(());
    *resp.status_mut() = head.status;
    let fields = match head.fields {
        Fields::Raw(raw) => Some(raw),
        Fields::Map(map) => {
            *resp.headers_mut() = map;
            None
        }
    };
    let upgraded = head.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let mut body = H1Body {
        fields,
        conn: Some(conn),
        state: BodyState::new(head.framing),
        keep_alive: head.keep_alive && !upgraded,
        addr,
        max_uses,
    };
    // A switched connection stays with its response until the tunnel takes it.
    if body.state.is_done() && !upgraded {
        body.release();
    }
    resp.map(|()| PooledBody::H1(body))
}

/// A response body: read off a pooled HTTP/1.1 connection (which goes back to the pool once
/// the body is read to the end), or an HTTP/2 stream of hyper-util's client.
#[derive(Debug)]
pub enum PooledBody {
    H1(H1Body),
    H2(Incoming),
}

#[derive(Debug)]
pub struct H1Body {
    /// The response's header fields, when they are still the bytes they came in.
    fields: Option<Box<RawFields>>,
    conn: Option<Box<Conn>>,
    state: BodyState,
    keep_alive: bool,
    addr: PoolKey,
    max_uses: Option<u32>,
}

impl H1Body {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                put_idle(self.addr, conn, self.max_uses);
            }
        }
    }
}

impl PooledBody {
    /// A body with no connection of this pool behind it (HTTP/2, multiplexed by hyper-util).
    pub fn unpooled(body: Incoming) -> Self {
        PooledBody::H2(body)
    }

    /// The endpoint's header fields still kept as bytes (see [`RawFields`]), taken out.
    pub fn take_fields(&mut self) -> Option<Box<RawFields>> {
        match self {
            PooledBody::H1(b) => b.fields.take(),
            PooledBody::H2(_) => None,
        }
    }

    /// The rest of the body appended to `out`, when the connection's buffer holds all of it
    /// (at most `limit` bytes; see `Conn::copy_buffered_body`), the connection then back in
    /// the pool. `None`: nothing copied; read it frame by frame.
    pub fn copy_buffered(&mut self, out: &mut Vec<u8>, limit: u64) -> Option<u64> {
        let PooledBody::H1(body) = self else {
            return None;
        };
        let n = body
            .conn
            .as_mut()?
            .copy_buffered_body(&mut body.state, out, limit)?;
        body.release();
        Some(n)
    }

    /// The connection of a `101 Switching Protocols` response: its socket and the bytes the
    /// endpoint sent after the head.
    pub fn take_upgraded(&mut self) -> Option<(Stream, bytes::BytesMut)> {
        match self {
            PooledBody::H1(b) => b.conn.take().map(|c| c.into_upgraded()),
            PooledBody::H2(_) => None,
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let body = match &mut *self {
            PooledBody::H2(b) => {
                return Pin::new(b)
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(Into::into)))
            }
            PooledBody::H1(b) => b,
        };
        let Some(conn) = &mut body.conn else {
            return Poll::Ready(None);
        };
        let polled = conn.poll_body(&mut body.state, cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => body.conn = None,
            Poll::Ready(_) if body.state.is_done() => body.release(),
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::H2(b) => b.is_end_stream(),
            PooledBody::H1(b) => b.state.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PooledBody::H2(b) => b.size_hint(),
            PooledBody::H1(b) => match b.state {
                BodyState::Length(n) => SizeHint::with_exact(n),
                BodyState::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}
