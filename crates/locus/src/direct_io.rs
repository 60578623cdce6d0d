//! `send` and `recv` on a TCP socket as system calls made directly (rustix), not through
//! glibc's wrappers.
//!
//! glibc's `send` and `recv` are thread cancellation points: in a process with more than one
//! thread, each marks the thread cancellable before the system call and not after, two locked
//! instructions (about 5 ns each on this machine) around every read and write. The gateway
//! makes four of them per proxied request, so that was 8 of its 78 locked instructions per
//! request (single-threaded nginx pays none of it). Locus never cancels threads.
//!
//! Readiness is kept as tokio keeps it for its own reads and writes: a short read or write
//! clears the readiness seen before it (race-free: one that arrived meanwhile is kept), so the
//! next call waits for the reactor instead of making a system call that would only say
//! `EAGAIN`.
//!
//! A read lands in a scratch buffer of the thread's and is copied out: reading into a
//! buffer's spare capacity without the copy would need `unsafe`. Heads are a few hundred
//! bytes, so the copy costs far less than what it saves; bodies are read the usual way.

use std::cell::RefCell;
use std::io;
use std::task::{ready, Context, Poll};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Most bytes one direct read takes.
pub const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Sends as much of `buf` as the socket takes now, once it is writable.
pub fn poll_send(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        let mut sent = 0;
        let r = tcp.try_io(Interest::WRITABLE, || {
            sent = rustix::net::send(tcp, buf, SendFlags::NOSIGNAL)?;
            short(sent, buf.len())
        });
        if let Some(done) = settle(r, sent) {
            return Poll::Ready(done);
        }
    }
}

/// Reads what the socket has (up to `max` bytes, and [`SCRATCH`]) once it is readable, and
/// hands it to `take`. `Ok(0)`: the peer closed.
pub fn poll_recv(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    max: usize,
    mut take: impl FnMut(&[u8]),
) -> Poll<io::Result<usize>> {
    let want = max.min(SCRATCH);
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        let mut got = 0;
        let r = tcp.try_io(Interest::READABLE, || {
            SCRATCH_BUF.with_borrow_mut(|scratch| {
                let (n, _) = rustix::net::recv(tcp, &mut scratch[..want], RecvFlags::empty())?;
                got = n;
                take(&scratch[..n]);
                if n == 0 {
                    return Ok(());
                }
                short(n, want)
            })
        });
        if let Some(done) = settle(r, got) {
            return Poll::Ready(done);
        }
    }
}

/// What one attempt comes to: the bytes it moved (a short transfer's too, its readiness now
/// cleared), or `None` when the socket refused before moving any: wait for the reactor.
fn settle(r: io::Result<()>, moved: usize) -> Option<io::Result<usize>> {
    match r {
        Ok(()) => Some(Ok(moved)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => (moved > 0).then_some(Ok(moved)),
        Err(e) => Some(Err(e)),
    }
}

/// A transfer shorter than asked for drained the socket (or filled it): reported to tokio as
/// `WouldBlock`, which clears the readiness it saw; the caller still returns the bytes moved.
fn short(done: usize, asked: usize) -> io::Result<()> {
    if done < asked {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Waker;
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    async fn recv(tcp: &TcpStream, max: usize, into: &mut Vec<u8>) -> usize {
        let read = poll_fn(|cx| poll_recv(tcp, cx, max, |data| into.extend_from_slice(data)));
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("a read that should complete waited")
            .unwrap()
    }

    #[tokio::test]
    async fn reads_keep_readiness_as_tokio_does() {
        let (a, b) = pair().await;
        assert_eq!(poll_fn(|cx| poll_send(&a, cx, b"hello")).await.unwrap(), 5);
        // A full read leaves readiness set: the rest is read without a wake-up.
        let mut got = Vec::new();
        assert_eq!(recv(&b, 3, &mut got).await, 3);
        assert_eq!(recv(&b, 1024, &mut got).await, 2);
        assert_eq!(got, b"hello");
        // That short read cleared it: nothing more is there, and no bytes are taken.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(poll_recv(&b, &mut cx, 1024, |_| panic!("no bytes")).is_pending());
        // Bytes sent later wake the reader.
        poll_fn(|cx| poll_send(&a, cx, b" again")).await.unwrap();
        assert_eq!(recv(&b, 1024, &mut got).await, 6);
        assert_eq!(got, b"hello again");
        // The peer's close reads as 0.
        drop(a);
        assert_eq!(recv(&b, 1024, &mut got).await, 0);
    }

    #[tokio::test]
    async fn a_full_send_buffer_waits_and_resumes() {
        let (a, b) = pair().await;
        // Far more than the socket buffers hold: sends go short, then wait for the reader.
        let data = vec![7u8; 8 << 20];
        let writer = async {
            let mut left = &data[..];
            while !left.is_empty() {
                let n = poll_fn(|cx| poll_send(&a, cx, left)).await.unwrap();
                left = &left[n..];
            }
            drop(a);
        };
        let reader = async {
            let mut got = Vec::new();
            while recv(&b, SCRATCH, &mut got).await > 0 {}
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert_eq!(got.len(), data.len());
        assert!(got.iter().all(|&b| b == 7));
    }
}
