//! Connections to endpoints: plain TCP, or TLS over it (BackendTLSPolicy, DestinationRule
//! `tls`). The proxy's HTTP/1.1 and HTTP/2 clients and the active health checks all connect
//! here, so a check sees the endpoint exactly as requests do.
//!
//! A handshake is part of connecting: it runs under the connect timeout, and its failure
//! (an unknown CA, a name the certificate does not carry) is a connect failure, counted
//! against the endpoint and retried elsewhere like a refused connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::model::upstream_tls::TlsClient;

/// An upstream connection's byte stream: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath, for readiness.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            // A direct `send`, without glibc's cancellation-point bookkeeping.
            Stream::Plain(s) => crate::direct_io::poll_send(s, cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Connects to `addr` and, with `tls`, completes a handshake, all within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<(&TlsClient, bool)>,
    timeout: Duration,
) -> io::Result<Stream> {
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let Some((client, h2)) = tls else {
            return Ok(Stream::Plain(tcp));
        };
        let config = if h2 { &client.h2 } else { &client.h1 };
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(client.server_name.clone(), tcp)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
        Ok(Stream::Tls(Box::new(tls)))
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}
