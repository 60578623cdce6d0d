//! HTTP Upgrade (WebSocket): once the endpoint answers `101 Switching Protocols`, the client's
//! connection and the endpoint's are joined byte for byte until both sides close or nothing
//! moves, either way, for the idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Waits for the client's side of the upgrade (hyper hands it over once the 101 is written)
/// and joins it to the endpoint's connection. `early` is what the endpoint sent after its 101
/// in the same read: it goes to the client first. `hold` is kept for as long as the tunnel
/// lives (the client connection's place under `--max-connections`).
pub async fn join<H: Send + 'static>(
    client: OnUpgrade,
    upstream: crate::connect::Stream,
    early: BytesMut,
    idle: Option<Duration>,
    hold: H,
) {
    let mut client = match client.await {
        Ok(c) => TokioIo::new(c),
        Err(e) => {
            tracing::debug!(error = %e, "the client's side of an upgrade never came");
            return;
        }
    };
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    let activity = Arc::new(AtomicU64::new(crate::health::now_ms()));
    let mut a = Active {
        io: client,
        last: activity.clone(),
    };
    let mut b = Active {
        io: upstream,
        last: activity.clone(),
    };
    // Both directions are copied independently (half-close passed on); reads and writes both
    // count as activity, so a peer that stops reading is idle too.
    let copied = tokio::io::copy_bidirectional(&mut a, &mut b);
    let watchdog = async {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        let idle_ms = idle.as_millis() as u64;
        loop {
            let quiet = crate::health::now_ms().saturating_sub(activity.load(Ordering::Relaxed));
            if quiet >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
        }
    };
    tokio::select! {
        done = copied => match done {
            Ok((up, down)) => tracing::debug!(client_to_endpoint = up, endpoint_to_client = down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        },
        () = watchdog => tracing::debug!("upgraded connection idle; closed"),
    }
    drop(hold);
}

/// An I/O object that notes the time of its last read or write.
struct Active<T> {
    io: T,
    last: Arc<AtomicU64>,
}

impl<T> Active<T> {
    fn moved(&self) {
        self.last.store(crate::health::now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
