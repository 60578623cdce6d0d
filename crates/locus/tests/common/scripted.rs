//! Endpoints written by hand: each request gets the bytes a script says, so tests can send
//! what no real server would (bad framing, a body in pieces, a failure on the nth request).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted endpoint does after reading request number `n` (from 0, over all its
/// connections): write these bytes, then maybe close.
#[derive(Default)]
pub struct Answer {
    pub bytes: Vec<u8>,
    pub close: bool,
    /// How long to wait before writing.
    pub delay: Duration,
    /// More bytes written after a pause, in a later segment than `bytes`.
    pub more: Option<(Duration, Vec<u8>)>,
}

pub fn answer(bytes: impl Into<Vec<u8>>) -> Answer {
    Answer {
        bytes: bytes.into(),
        ..Answer::default()
    }
}

/// An endpoint that reads each request head (and its Content-Length body) and writes what
/// `script` says. Returns its port and the number of requests it has read.
pub async fn scripted(
    script: impl Fn(usize, &str) -> Answer + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, script.clone(), counter.clone()));
        }
    });
    (port, seen)
}

async fn serve(
    mut s: TcpStream,
    script: Arc<impl Fn(usize, &str) -> Answer>,
    seen: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let a = script(n, &head);
        tokio::time::sleep(a.delay).await;
        if s.write_all(&a.bytes).await.is_err() {
            return;
        }
        if let Some((pause, more)) = &a.more {
            tokio::time::sleep(*pause).await;
            if s.write_all(more).await.is_err() {
                return;
            }
        }
        if a.close {
            return;
        }
    }
}
