//! HTTP/1.1 as clients speak it, through both codecs that serve plain-text clients: Locus's own
//! (`--http1-server locus`, the default) and hyper's (`--http1-server hyper`). Every case runs
//! against both, so the lean codec is held to what hyper does. Raw sockets, real gateway
//! processes, the echo backend.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CODECS: [&str; 2] = ["locus", "hyper"];

fn gateway(backend: &Echo, codec: &str) -> (tempfile::TempDir, Gw) {
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &one_backend(backend.addr.port(), ""),
    );
    let gw = Gw::start(dir.path(), &["--http1-server", codec]);
    (dir, gw)
}

/// Everything the gateway sends until it closes the connection.
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `buf` holds `marker`, returning what came.
async fn read_until(s: &mut TcpStream, marker: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(marker) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the gateway answers")
            .expect("read");
        assert!(
            n > 0,
            "closed before {marker:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

/// Four requests in one write — two GETs, a POST with a body, a chunked POST — are answered
/// in order on the one connection, and the last one's `Connection: close` closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let a = echo("a");
    for codec in CODECS {
        let (_dir, gw) = gateway(&a, codec);
        let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
        s.write_all(
            b"GET /status/201 HTTP/1.1\r\nHost: svc.test\r\n\r\n\
              GET /status/202 HTTP/1.1\r\nHost: svc.test\r\n\r\n\
              POST /post HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhello\
              POST /chunked HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let text = read_all(&mut s).await;
        assert_eq!(
            statuses(&text),
            ["201", "202", "200", "200"],
            "{codec}: {text}"
        );
        assert!(text.contains("\"bodyBytes\":5"), "{codec}: {text}");
        assert!(text.contains("\"bodyBytes\":7"), "{codec}: {text}");
        assert!(text.contains("connection: close"), "{codec}: {text}");
    }
}

/// `Expect: 100-continue`: the gateway says `100 Continue` once the body is wanted, and the
/// body then sent reaches the endpoint whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_gets_100_then_the_answer() {
    let a = echo("a");
    for codec in CODECS {
        let (_dir, gw) = gateway(&a, codec);
        let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
        s.write_all(
            b"PUT /upload HTTP/1.1\r\nHost: svc.test\r\nExpect: 100-continue\r\nContent-Length: 70000\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let interim = read_until(&mut s, "\r\n\r\n").await;
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{codec}: {interim}"
        );
        s.write_all(&vec![b'x'; 70000]).await.unwrap();
        let text = read_all(&mut s).await;
        assert_eq!(statuses(&text), ["200"], "{codec}: {text}");
        assert!(text.contains("\"bodyBytes\":70000"), "{codec}: {text}");
    }
}

/// HTTP/1.0: kept alive only when the client asks (and told so), closed otherwise; a response
/// of unknown length to a 1.0 client is delimited by the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keep_alive_only_when_asked() {
    let a = echo("a");
    for codec in CODECS {
        let (_dir, gw) = gateway(&a, codec);
        let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
        s.write_all(b"GET /hostname HTTP/1.0\r\nHost: svc.test\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let first = read_until(&mut s, "\r\n\r\na").await;
        assert!(
            first
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{codec}: {first}"
        );
        s.write_all(b"GET /hostname HTTP/1.0\r\nHost: svc.test\r\n\r\n")
            .await
            .unwrap();
        let second = read_all(&mut s).await;
        assert!(second.starts_with("HTTP/1."), "{codec}: {second}");
        assert!(second.contains(" 200 "), "{codec}: {second}");
        assert!(second.ends_with("\r\n\r\na"), "{codec}: {second}");
    }
}

/// A large response streams through whole, and a HEAD gets the length without the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_and_head_has_none() {
    let a = echo("a");
    for codec in CODECS {
        let (_dir, gw) = gateway(&a, codec);
        let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
        s.write_all(
            b"HEAD /size/300000 HTTP/1.1\r\nHost: svc.test\r\n\r\n\
              GET /size/300000 HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let text = read_all(&mut s).await;
        assert_eq!(statuses(&text), ["200", "200"], "{codec}");
        assert_eq!(
            text.matches("content-length: 300000").count(),
            2,
            "{codec}: {}",
            &text[..text.len().min(600)]
        );
        let body_start = text.rfind("\r\n\r\n").unwrap() + 4;
        assert_eq!(text.len() - body_start, 300000, "{codec}");
    }
}

/// A client that closes with its request in flight cancels it: the endpoint's side is closed
/// too, long before the endpoint would have answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_its_request() {
    let a = echo("a");
    let c = HttpClient::default();
    for codec in CODECS {
        let (_dir, gw) = gateway(&a, codec);
        let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
        s.write_all(b"GET /delay/20000 HTTP/1.1\r\nHost: svc.test\r\n\r\n")
            .await
            .unwrap();
        assert!(
            echo_count_until(&c, &a, "/_echo/busy", |n| n == 1).await,
            "{codec}: the request reached the endpoint"
        );
        drop(s);
        assert!(
            echo_count_until(&c, &a, "/_echo/busy", |n| n == 0).await,
            "{codec}: the endpoint's request was not cancelled"
        );
    }
}
