//! HTTP Upgrade (WebSocket and the like): once the endpoint answers `101 Switching Protocols`,
//! the client's connection and the endpoint's are joined byte for byte until either side
//! closes or nothing moves for the idle timeout.

use std::time::Duration;

use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes moved per read, each way.
const CHUNK: usize = 16 * 1024;

/// Waits for the client's side of the upgrade (hyper hands it over once the 101 is written)
/// and joins it to the endpoint's connection. `early` is what the endpoint sent after its 101
/// in the same read: it goes to the client first.
pub async fn join(client: OnUpgrade, upstream: TcpStream, early: BytesMut, idle: Option<Duration>) {
    let client = match client.await {
        Ok(c) => TokioIo::new(c),
        Err(e) => {
            tracing::debug!(error = %e, "the client's side of an upgrade never came");
            return;
        }
    };
    match splice(client, upstream, &early, idle).await {
        Ok((up, down)) => tracing::debug!(
            client_to_endpoint = up,
            endpoint_to_client = down,
            "upgraded connection closed"
        ),
        Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
    }
}

/// Copies both ways until both sides have closed (a side that closes has its peer's write
/// half shut down, as TCP half-close asks) or nothing moved for `idle`. Returns the bytes
/// moved each way.
async fn splice<A, B>(
    mut a: A,
    mut b: B,
    early: &[u8],
    idle: Option<Duration>,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if !early.is_empty() {
        a.write_all(early).await?;
    }
    let (mut a_open, mut b_open) = (true, true);
    let (mut a_to_b, mut b_to_a) = (0u64, early.len() as u64);
    let mut from_a = vec![0u8; CHUNK];
    let mut from_b = vec![0u8; CHUNK];
    let idle = idle.unwrap_or(Duration::MAX);
    while a_open || b_open {
        tokio::select! {
            n = a.read(&mut from_a), if a_open => {
                let n = n?;
                if n == 0 {
                    a_open = false;
                    b.shutdown().await?;
                } else {
                    b.write_all(&from_a[..n]).await?;
                    a_to_b += n as u64;
                }
            }
            n = b.read(&mut from_b), if b_open => {
                let n = n?;
                if n == 0 {
                    b_open = false;
                    a.shutdown().await?;
                } else {
                    a.write_all(&from_b[..n]).await?;
                    b_to_a += n as u64;
                }
            }
            () = tokio::time::sleep(idle) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"));
            }
        }
    }
    Ok((a_to_b, b_to_a))
}
