//! The request path: accept, route, pick, forward. It reads the current route table and
//! Service snapshots through `ArcSwap` and takes no lock.

mod body;
mod error;
mod forward;
mod mirror;
mod outcome;
mod pool;
mod request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub use body::ProxyBody;
pub use error::ProxyError;

use crate::routing::RouteTable;

/// How long an upstream connection attempt may take (Envoy's default `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one client may hold, whatever it sends.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// A request head must arrive whole within this time, else the connection is closed
    /// (slowloris). `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// Largest request head (request line and headers) read; larger gets 431 (Envoy's default
    /// is 60 KiB, nginx's 8 KiB per buffer, HAProxy's 16 KiB).
    pub max_request_head: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_read_timeout: Some(Duration::from_secs(30)),
            max_request_head: 64 * 1024,
        }
    }
}

/// State shared by every connection of every listener.
pub struct Shared {
    pub limits: ClientLimits,
    /// The route table in force, published by the snapshot writer.
    pub table: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Cleartext HTTP/2 upstreams (multiplexed; HTTP/1.1 goes through the per-thread pool).
    h2c_client: Client<HttpConnector, ProxyBody>,
}

impl Shared {
    pub fn new(
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<crate::metrics::Metrics>,
        limits: ClientLimits,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let h2c_client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Shared {
            limits,
            table,
            metrics,
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
}

/// Accepts connections on `listener` until the task is aborted. Connections already accepted
/// live on in their own tasks, so removing a listener never cuts a request short.
pub async fn serve(listener: TcpListener, port: u16, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = shared.limits;
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_request_head);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let peer_ip = http::HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(http::HeaderValue::from_static("unknown"));
        let info = Arc::new(ConnInfo {
            port,
            peer,
            peer_ip,
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                let info = info.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &info, req).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Access log switch (`--access-log`): off by default, checked once per request.
pub static ACCESS_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn handle(shared: &Shared, info: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let access = ACCESS_LOG
        .load(std::sync::atomic::Ordering::Relaxed)
        .then(|| {
            (
                std::time::Instant::now(),
                req.method().clone(),
                req.uri().clone(),
                req.version(),
                req.headers().get(http::header::HOST).cloned(),
            )
        });
    let resp = match forward::forward(shared, info, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "request failed in the gateway");
            e.into_response()
        }
    };
    if let Some((start, method, uri, version, host)) = access {
        // Common Log Format plus the host and the time to response headers.
        tracing::info!(
            target: "locus::access",
            "{} - - \"{} {} {:?}\" {} - host={} duration_ms={:.3}",
            info.peer.ip(),
            method,
            uri,
            version,
            resp.status().as_u16(),
            host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
    resp
}
