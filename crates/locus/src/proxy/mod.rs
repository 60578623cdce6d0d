//! The request path: accept, route, pick, forward. It reads the current route table and
//! Service snapshots through `ArcSwap` and takes no lock.

mod body;
mod connections;
mod error;
mod forward;
mod h1;
mod limits;
mod mirror;
mod outcome;
mod pool;
mod request;
mod session;
mod tunnel;
mod upstream_tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use body::ClientIn;
pub use body::ProxyBody;
pub use connections::{Connections, PortConnections};
pub use error::ProxyError;
pub use limits::Limits;

use crate::routing::RouteTable;
use crate::tls::PortTls;

/// How the gateway answers requests, beyond the limits.
#[derive(Clone, Copy, Debug)]
pub struct Answers {
    /// `--request-id on`: a request that comes without an `x-request-id` gets one (about 1,400
    /// instructions per request, `docs/performance.md`); a client's own is kept either way.
    pub request_ids: bool,
    /// `--verbose-errors`: error bodies tell the whole story (addresses, Services, nodes), for
    /// development; at the edge clients only get what went wrong.
    pub verbose_errors: bool,
    /// `--http1-server locus` (the default): plain-text HTTP/1.1 clients are served by
    /// Locus's own codec (`h1::server`); `hyper` serves them with hyper's, as TLS and HTTP/2
    /// clients always are.
    pub own_http1: bool,
}

impl Default for Answers {
    fn default() -> Self {
        Answers {
            request_ids: true,
            verbose_errors: false,
            own_http1: true,
        }
    }
}

/// State shared by every connection of every listener.
pub struct Shared {
    pub limits: Limits,
    pub answers: Answers,
    /// The route table in force, published by the snapshot writer.
    pub table: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Every client connection, for `--max-connections` and the drain.
    pub connections: Arc<Connections>,
    /// Cleartext HTTP/2 upstreams (multiplexed; HTTP/1.1 goes through the per-thread pool).
    h2c_client: Client<HttpConnector, ProxyBody>,
}

impl Shared {
    pub fn new(
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<crate::metrics::Metrics>,
        limits: Limits,
        answers: Answers,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(limits.connect_timeout));
        let h2c_client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Shared {
            limits,
            answers,
            table,
            metrics,
            connections: Arc::default(),
            h2c_client,
        }
    }
}

/// Per-connection facts a request needs.
struct ConnInfo {
    /// The configured listener port this connection came in on (routes are keyed by it, even
    /// when the socket is bound elsewhere with `--ephemeral-ports`).
    port: u16,
    peer: SocketAddr,
    /// The peer's IP as a header value, for `x-forwarded-for`.
    peer_ip: http::HeaderValue,
    /// When the last request on this connection started (`health::now_ms`), for the idle
    /// timeout.
    last_request_ms: std::sync::atomic::AtomicU64,
    /// `Some` on an HTTPS listener.
    tls: Option<ConnTls>,
    /// The connection's place under `--max-connections`: held as long as the connection, and
    /// handed to the tunnel when the connection is upgraded (WebSocket).
    ticket: std::sync::Mutex<Option<connections::Ticket>>,
}

impl ConnInfo {
    /// The scheme requests on this connection came with.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Resolves when `info`'s connection has started no request for `idle`. One timer per
/// connection, re-armed from the last request's start; requests only store a timestamp.
async fn idle_for(info: &ConnInfo, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let last = info
            .last_request_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let now = crate::health::now_ms();
        let quiet = now.saturating_sub(last);
        if quiet >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
    }
}

/// How long a TLS handshake may take when the header read timeout is off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// One listener port as its accept loops see it.
pub struct Port {
    /// The configured port (routes are keyed by it).
    pub number: u16,
    pub connections: Arc<PortConnections>,
    /// The port's TLS configuration, read at each accept (`None`: plain HTTP).
    pub tls: Arc<ArcSwapOption<PortTls>>,
}

/// A TLS connection's facts: the port's TLS configuration it was made with, and the listener
/// its server name (SNI) chose.
struct ConnTls {
    port: Arc<PortTls>,
    listener: Option<usize>,
    /// The client sent a server name: its requests' hosts must belong to that listener.
    sni: bool,
}

/// Accepts connections on `listener` until the task is aborted. Connections already accepted
/// live on in their own tasks, so removing a listener never cuts a request short; they end when
/// their client leaves or the gateway drains.
pub async fn serve(listener: TcpListener, port: Port, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = shared.limits;
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_request_head)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        // Pings find h2 clients that vanished without closing (an HTTP/1 connection in that
        // state is closed by the header read timeout).
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(u32::try_from(limits.max_request_head).unwrap_or(u32::MAX))
        // Rapid reset and error floods: hyper's defaults, written down so they are ours.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    loop {
        let (stream, peer) = accept(&listener, port.number).await;
        let Some((ticket, finish)) = shared
            .connections
            .admit(&port.connections, limits.max_connections)
        else {
            shared
                .metrics
                .connections_refused
                .get_or_create(&crate::metrics::PortLabels { port: port.number })
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        let tls = port.tls.load_full();
        let number = port.number;
        tokio::spawn(async move {
            let info = move |tls| {
                Arc::new(ConnInfo {
                    port: number,
                    peer,
                    peer_ip: http::HeaderValue::from_str(&peer.ip().to_string())
                        .unwrap_or(http::HeaderValue::from_static("unknown")),
                    last_request_ms: crate::health::now_ms().into(),
                    tls,
                    ticket: std::sync::Mutex::new(Some(ticket)),
                })
            };
            let ended = match tls {
                None if shared.answers.own_http1 => {
                    let info = info(None);
                    let mut finish = finish;
                    match h1::server::serve(stream, &info, &shared, &mut finish).await {
                        Ok(h1::server::Ended::HandOff(io)) => {
                            serve_connection(io, info, builder, shared, finish).await
                        }
                        Ok(h1::server::Ended::Closed) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                None => serve_connection(stream, info(None), builder, shared, finish).await,
                Some(tls) => {
                    // The handshake is bounded like a request head: a client that opens a
                    // connection and says nothing is closed.
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                    let handshake = acceptor.accept(stream);
                    let bound = limits.header_read_timeout.unwrap_or(HANDSHAKE_TIMEOUT);
                    let stream = match tokio::time::timeout(bound, handshake).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let name = stream.get_ref().1.server_name();
                    let conn_tls = ConnTls {
                        listener: tls.sni.listener_for(name),
                        sni: name.is_some(),
                        port: tls,
                    };
                    serve_connection(stream, info(Some(conn_tls)), builder, shared, finish).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Serves one client connection (plain or TLS) until it ends, the gateway drains or it idles.
async fn serve_connection<I>(
    io: I,
    info: Arc<ConnInfo>,
    builder: auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    finish: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits;
    let conn_info = info.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let info = info.clone();
        async move {
            if shared.limits.idle_timeout.is_some() {
                // For the idle timeout (`idle_for`); Locus's own HTTP/1 server keeps its own.
                info.last_request_ms.store(
                    crate::health::now_ms(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            let facts = request::HeadFacts::read(req.headers());
            let mut resp = handle(&shared, &info, req.map(ClientIn::Hyper), facts).await;
            // hyper writes the head from the map alone.
            body::fields_into_map(&mut resp);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = async {
        match limits.idle_timeout {
            Some(t) => idle_for(&conn_info, t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        ended = conn.as_mut() => ended,
        // Draining, or no request for the idle timeout (an HTTP/1 connection is closed
        // sooner by the header read timeout; this one is for h2): the request in
        // flight is answered with `Connection: close` (HTTP/1), the client gets GOAWAY
        // and its open streams finish (h2); an idle connection closes now.
        Ok(()) = finish => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = idle => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The next connection on `listener` (`what` names it in the log). When accepting fails (out
/// of file descriptors and the like) it backs off, 5 ms doubling to 1 s, instead of spinning on
/// an accept that fails at once.
pub async fn accept(
    listener: &TcpListener,
    what: impl std::fmt::Display,
) -> (tokio::net::TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(listener = %what, error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// For the fuzz target: parses `data` as Locus's own HTTP/1.1 server does and runs the head
/// handling that comes before routing.
#[doc(hidden)]
pub fn inspect_head(data: &[u8]) {
    let mut buf = bytes::BytesMut::from(data);
    let Ok(h1::server_codec::Parsed::Head(head)) =
        h1::server_codec::parse_request_head(&mut buf, 64 * 1024, 100, &mut Vec::new())
    else {
        return;
    };
    // The facts noted while parsing are the ones a map gives.
    assert_eq!(head.facts, request::HeadFacts::read(&head.headers));
    let mut req = Request::new(());
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    let (mut parts, ()) = req.into_parts();
    if request::check_head(&parts, &head.facts).is_err() {
        return;
    }
    for escaped in [
        locus_core::path::EscapedSlashes::Reject,
        locus_core::path::EscapedSlashes::Keep,
    ] {
        let mut uri = parts.uri.clone();
        let _ = forward::normalize_path(&mut uri, escaped);
    }
    let _ = request::request_host(&parts, &head.facts);
    request::strip_hop_by_hop(&mut parts.headers);
}

/// For the fuzz target: an endpoint's response through the upstream client's codec.
#[doc(hidden)]
pub fn inspect_response(data: &[u8]) {
    h1::codec::inspect(data);
}

/// Access log switch (`--access-log`): off by default, checked once per request.
pub static ACCESS_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn handle(
    shared: &Shared,
    info: &ConnInfo,
    req: Request<ClientIn>,
    facts: request::HeadFacts,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let id = match &facts.request_id {
        Some(id) => Some(request::RequestId::Sent(id.clone())),
        None if shared.answers.request_ids => {
            // Sent upstream as an added field (`request::Added`), not put in the map.
            Some(request::RequestId::Made(request::new_request_id()))
        }
        None => None,
    };
    let access = ACCESS_LOG
        .load(std::sync::atomic::Ordering::Relaxed)
        .then(|| {
            (
                std::time::Instant::now(),
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                facts.host.clone(),
            )
        });
    // A gRPC client reads errors from `grpc-status`, not from the HTTP status.
    let grpc = facts.grpc;
    let resp = match forward::forward(
        shared,
        info,
        &mut parts,
        body,
        &facts,
        id.as_ref().and_then(request::RequestId::made),
    )
    .await
    {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "request failed in the gateway");
            if access.is_some() {
                // The whole story for the operator; the client's body says less.
                tracing::info!(target: "locus::access", peer = %info.peer, request_id = id.as_ref().map_or("-", request::RequestId::as_str), error = %e, "gateway error");
            }
            let mut resp = if grpc {
                e.into_grpc_response(shared.answers.verbose_errors)
            } else {
                e.into_response(shared.answers.verbose_errors)
            };
            if let Some(id) = &id {
                resp.headers_mut()
                    .insert(request::X_REQUEST_ID.clone(), id.value());
            }
            resp
        }
    };
    if let Some((start, method, uri, version, host)) = access {
        // Common Log Format plus the host, the request id and the time to response headers.
        tracing::info!(
            target: "locus::access",
            "{} - - \"{} {} {:?}\" {} - host={} request_id={} duration_ms={:.3}",
            info.peer.ip(),
            method,
            uri,
            version,
            resp.status().as_u16(),
            host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            id.as_ref().map_or("-", request::RequestId::as_str),
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
    resp
}
