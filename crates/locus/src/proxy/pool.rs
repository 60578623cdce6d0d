//! Upstream HTTP/1.1 connections, pooled per worker thread.
//!
//! Each worker thread keeps its own idle connections per endpoint in a thread-local map, so
//! taking and returning a connection never locks (hyper-util's shared pool takes a mutex on
//! both). A connection goes back to the pool when its response body has been read to the end.
//! Requests are sent with `try_send_request`, which hands the request back when it could not
//! be written: a connection that died while idle costs a reconnect, never the request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ProxyBody;
use super::Limits;

/// Idle connections kept per endpoint and worker; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// Idle connections older than this are not reused (backends commonly close at 60–75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
    /// Requests the connection has carried.
    uses: u32,
}

/// How one Service's upstream connections are made and reused.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    pub connect_timeout: Duration,
    pub max_response_head: usize,
    /// Idle connections older than this are not reused.
    pub idle_timeout: Duration,
    /// A connection is closed after this many requests.
    pub max_uses: Option<u32>,
}

impl PoolOptions {
    /// The gateway's limits, with a Service's own settings where it has them.
    pub fn new(limits: &Limits, up: &crate::model::UpstreamPolicy) -> Self {
        PoolOptions {
            connect_timeout: up.connect_timeout.unwrap_or(limits.connect_timeout),
            max_response_head: limits.max_response_head,
            idle_timeout: up
                .idle_timeout
                .map_or(IDLE_TIMEOUT, |t| t.min(IDLE_TIMEOUT)),
            max_uses: up.max_requests_per_connection,
        }
    }
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// Why a request could not be sent.
pub enum SendError {
    /// No connection could be made; the request was not sent and is handed back.
    Connect(std::io::Error, Request<ProxyBody>),
    /// The exchange failed; `Some(request)` when it was never written.
    Request(hyper::Error, Option<Request<ProxyBody>>),
}

fn take_idle(
    addr: SocketAddr,
    idle_timeout: Duration,
) -> Option<(http1::SendRequest<ProxyBody>, u32)> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < idle_timeout {
                return Some((c.sender, c.uses));
            }
        }
        None
    })
}

fn put_idle(
    addr: SocketAddr,
    sender: http1::SendRequest<ProxyBody>,
    uses: u32,
    max_uses: Option<u32>,
) {
    if sender.is_closed() || max_uses.is_some_and(|m| uses >= m) {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                sender,
                since: Instant::now(),
                uses,
            });
        }
    });
}

async fn connect(
    addr: SocketAddr,
    opts: &PoolOptions,
) -> std::io::Result<http1::SendRequest<ProxyBody>> {
    let timeout = opts.connect_timeout;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(s) => s?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        // An endpoint's response head is bounded as a client's request head is.
        .max_header_size(opts.max_response_head)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `req` to `addr` over a pooled or new connection.
pub async fn send(
    addr: SocketAddr,
    mut req: Request<ProxyBody>,
    opts: &PoolOptions,
) -> Result<Response<PooledBody>, SendError> {
    // Pooled connections first; one that turns out dead hands the request back.
    while let Some((mut sender, uses)) = take_idle(addr, opts.idle_timeout) {
        // Returned at the end of its last response body; ready again at once in practice.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(wrap(addr, sender, resp, uses + 1, opts.max_uses)),
            Err(mut e) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(SendError::Request(e.into_error(), None)),
            },
        }
    }
    // Connecting is per connection, not per request: boxed, so the request's future does not
    // carry (and move) the connect and handshake state every time.
    let mut sender = match Box::pin(connect(addr, opts)).await {
        Ok(s) => s,
        Err(e) => return Err(SendError::Connect(e, req)),
    };
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(wrap(addr, sender, resp, 1, opts.max_uses)),
        Err(mut e) => {
            let back = e.take_message();
            Err(SendError::Request(e.into_error(), back))
        }
    }
}

fn wrap(
    addr: SocketAddr,
    sender: http1::SendRequest<ProxyBody>,
    resp: Response<Incoming>,
    uses: u32,
    max_uses: Option<u32>,
) -> Response<PooledBody> {
    resp.map(|body| {
        let done = body.is_end_stream();
        let mut pooled = PooledBody {
            body,
            ret: Some(Return {
                addr,
                sender,
                uses,
                max_uses,
            }),
        };
        if done {
            pooled.release();
        }
        pooled
    })
}

/// A response body that returns its connection to the pool once read to the end (when it
/// came over a pooled connection).
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    ret: Option<Return>,
}

/// Where a connection goes back when its response body ends.
#[derive(Debug)]
struct Return {
    addr: SocketAddr,
    sender: http1::SendRequest<ProxyBody>,
    uses: u32,
    max_uses: Option<u32>,
}

impl PooledBody {
    /// A body with no connection of this pool behind it (HTTP/2, multiplexed by hyper-util).
    pub fn unpooled(body: Incoming) -> Self {
        PooledBody { body, ret: None }
    }

    fn release(&mut self) {
        if let Some(r) = self.ret.take() {
            put_idle(r.addr, r.sender, r.uses, r.max_uses);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.ret = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
