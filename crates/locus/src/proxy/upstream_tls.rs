//! HTTP/2 over TLS (ALPN `h2`) to endpoints, for gRPC and HTTP/2 Service ports with
//! BackendTLSPolicy or DestinationRule `tls`: hyper-util's client over [`crate::connect`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::body::ProxyBody;
use crate::connect::{connect, Stream};
use crate::model::upstream_tls::TlsClient;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// HTTP/2 over TLS: what hyper-util's client reads and writes.
pub struct H2Io(TokioIo<Stream>);

impl Connection for H2Io {
    fn connected(&self) -> Connected {
        Connected::new().negotiated_h2()
    }
}

impl hyper::rt::Read for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Makes HTTP/2 connections over TLS for hyper-util's client (the request URI carries the
/// endpoint's address).
#[derive(Clone)]
pub struct H2Connector {
    tls: Arc<TlsClient>,
    timeout: Duration,
}

impl tower_service::Service<http::Uri> for H2Connector {
    type Response = H2Io;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<H2Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "endpoint address expected")
                })?;
            let stream = connect(addr, Some((&this.tls, true)), this.timeout).await?;
            if let Stream::Tls(s) = &stream {
                if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the endpoint did not agree to HTTP/2 (ALPN h2)",
                    ));
                }
            }
            Ok(H2Io(TokioIo::new(stream)))
        })
    }
}

pub type H2Client = Client<H2Connector, ProxyBody>;

thread_local! {
    /// HTTP/2-over-TLS clients of this worker, by TLS settings (each multiplexes its
    /// connections per endpoint).
    static H2_CLIENTS: RefCell<HashMap<u64, (std::sync::Weak<TlsClient>, H2Client)>> =
        RefCell::default();
}

/// This worker's HTTP/2 client for `tls` (made on first use; clients of settings no longer in
/// use are dropped then).
pub fn h2_client(tls: &Arc<TlsClient>, timeout: Duration) -> H2Client {
    H2_CLIENTS.with(|clients| {
        let mut clients = clients.borrow_mut();
        if let Some((_, c)) = clients.get(&tls.id) {
            return c.clone();
        }
        clients.retain(|_, (w, _)| w.strong_count() > 0);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(H2Connector {
                tls: tls.clone(),
                timeout,
            });
        clients.insert(tls.id, (Arc::downgrade(tls), client.clone()));
        client
    })
}
