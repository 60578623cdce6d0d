//! Locus's own HTTP/1.1 upstream client against endpoints written by hand: responses framed
//! badly or ambiguously are never forwarded (RFC 9112 §6.3), a response cannot leak into the
//! next request's, an endpoint closing idle connections costs no request, and an endpoint may
//! answer before an upload ends. Real gateway processes, real sockets.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::scripted::{answer, scripted, Answer};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn gateway(port: u16) -> (tempfile::TempDir, Gw) {
    let dir = tempdir();
    write(dir.path(), "all.yaml", &one_backend(port, ""));
    let gw = Gw::start(dir.path(), &[]);
    (dir, gw)
}

/// Sends one GET on a new connection and reads until the gateway closes it or 5 s pass.
async fn raw_get(gw: &Gw) -> String {
    let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: svc.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Heads whose body length is ambiguous, and bodies that break their framing: the client never
/// gets the endpoint's bytes past the point where they stop making sense. A bad head is a 502;
/// a bad chunk after a good head cuts the response short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_responses_are_never_forwarded() {
    let smuggled = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
    let bad_heads = [
        format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\ncontent-length: 48\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\ncontent-length: 0, 48\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\nx-folded: a\r\n content-length: 0\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\ncontent-length : 0\r\n\r\n{smuggled}"),
        format!("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n{smuggled}"),
    ];
    let bad_bodies = [
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\nzz\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nfirst\r\n0\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirstXX0\r\n\r\n{smuggled}"),
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000005\r\nfirst\r\n{smuggled}"),
    ];
    let cases: Vec<(String, bool)> = bad_heads
        .iter()
        .map(|r| (r.clone(), true))
        .chain(bad_bodies.iter().map(|r| (r.clone(), false)))
        .collect();
    let script_cases = cases.clone();
    let (port, _) =
        scripted(move |n, _| answer(script_cases[n % script_cases.len()].0.clone())).await;
    let (_dir, gw) = gateway(port);
    for (response, bad_head) in &cases {
        let got = raw_get(&gw).await;
        assert!(!got.contains("smuggled"), "{response:?} → {got:?}");
        if *bad_head {
            assert!(got.starts_with("HTTP/1.1 502"), "{response:?} → {got:?}");
        } else {
            // The head may have gone out before the body broke: the response is cut short
            // (or never started), never completed with a last chunk.
            assert!(
                got.is_empty() || got.starts_with("HTTP/1.1 200"),
                "{response:?} → {got:?}"
            );
            assert!(!got.ends_with("0\r\n\r\n"), "{response:?} → {got:?}");
        }
    }
}

/// A response followed by more bytes than its framing says (at once, or a moment later while
/// the connection is idle) never answers another request: that connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_response_never_answer_the_next_request() {
    let (late_tx, mut late_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let late_tx = late_tx.clone();
            let n = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(len) = s.read(&mut buf).await {
                    if len == 0 {
                        return;
                    }
                    match n.fetch_add(1, Ordering::SeqCst) {
                        // Extra bytes in the same write as the response.
                        0 => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled")
                                .await;
                        }
                        // Extra bytes written once the response is done and the connection idle.
                        1 => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond")
                                .await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled")
                                .await;
                            let _ = late_tx.send(());
                        }
                        _ => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
                                .await;
                        }
                    }
                }
            });
        }
    });
    let (_dir, gw) = gateway(port);
    let c = HttpClient::default();
    let addr = gw.addr(8080);
    assert_eq!(c.get(addr, "svc.test", "/").await.body, "first");
    assert_eq!(c.get(addr, "svc.test", "/").await.body, "second");
    late_rx.recv().await.unwrap();
    for _ in 0..20 {
        assert_eq!(c.get(addr, "svc.test", "/").await.body, "fresh");
    }
    assert_eq!(served.load(Ordering::SeqCst), 22);
}

/// An endpoint that closes every connection after answering, without saying so: each next
/// request finds its pooled connection gone and is sent on a new one. No client sees an error
/// and the endpoint stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_closing_idle_connections_cost_no_request() {
    let (port, seen) = scripted(|_, _| Answer {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        close: true,
        ..Answer::default()
    })
    .await;
    let (_dir, gw) = gateway(port);
    let c = HttpClient::default();
    for i in 0..200 {
        let r = c.get(gw.addr(8080), "svc.test", "/").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 200);
    let metrics = c.get(gw.admin, "admin", "/metrics").await.body;
    assert_eq!(request_errors(&metrics, &[]), 0.0, "{metrics}");
}

/// An endpoint refusing an upload (413) after reading only its head: the client gets the 413
/// at once, while its upload is still going, and the endpoint is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_may_answer_before_the_upload_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo much")
                    .await;
                // Keeps the connection open without reading: the upload stalls upstream.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let (_dir, gw) = gateway(port);
    let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
    let size = 64 * 1024 * 1024;
    s.write_all(
        format!("PUT /upload HTTP/1.1\r\nhost: svc.test\r\ncontent-length: {size}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the upload was stalled");
    assert!(
        head.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    upload.abort();
    assert_no_upstream_errors(gw.admin).await;
}

/// Framing the endpoint may choose: chunked (with extensions and trailers, after a
/// `100 Continue`), a length, HTTP/1.0 delimited by the close, no body for HEAD and 204; and
/// request bodies sent with their length or chunked. Every one reaches the client whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_framing_reaches_the_client_whole() {
    let (port, _) = scripted(|_, head| {
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        match path.as_str() {
            "/chunked" => answer(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;a=b\r\nchun\r\n3\r\nked\r\n0\r\nx-checksum: 1\r\n\r\n",
            ),
            "/ten" => Answer {
                bytes: b"HTTP/1.0 200 OK\r\n\r\nuntil close".to_vec(),
                close: true,
                ..Answer::default()
            },
            "/empty" => answer("HTTP/1.1 204 No Content\r\n\r\n"),
            "/head" => answer("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
            _ => {
                // Echoes how the request body was framed.
                let framing = if head.contains("transfer-encoding: chunked") {
                    "chunked".to_owned()
                } else {
                    head.lines()
                        .find(|l| l.starts_with("content-length"))
                        .unwrap_or("none")
                        .to_owned()
                };
                answer(format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{framing}",
                    framing.len()
                ))
            }
        }
    })
    .await;
    let (_dir, gw) = gateway(port);
    let c = HttpClient::default();
    let addr = gw.addr(8080);
    for _ in 0..3 {
        assert_eq!(c.get(addr, "svc.test", "/chunked").await.body, "chunked");
        assert_eq!(c.get(addr, "svc.test", "/ten").await.body, "until close");
        assert_eq!(c.get(addr, "svc.test", "/empty").await.status, 204);
        let r = c
            .request("HEAD", addr, "svc.test", "/head", &[], Bytes::new())
            .await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        let r = c
            .request("POST", addr, "svc.test", "/", &[], Bytes::from("12345"))
            .await;
        assert_eq!(r.body, "content-length: 5");
        let r = c
            .request("POST", addr, "svc.test", "/", &[], Bytes::new())
            .await;
        assert_eq!(r.body, "content-length: 0");
        assert_eq!(c.get(addr, "svc.test", "/").await.body, "none");
    }
}

/// An HTTPRoute rule's `retry` retries a POST whose connection the endpoint closed without
/// answering (GEP-1731: every connection error), on the same endpoint when it is the only
/// one; without it, such a POST is not sent twice (it may have had an effect) and the client
/// gets 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_retry_resends_a_post_whose_connection_broke() {
    // Requests 0 and 2 are read, then their connection is closed without an answer.
    let (port, seen) = scripted(|n, _| {
        if n % 2 == 0 {
            Answer {
                close: true,
                ..Answer::default()
            }
        } else {
            answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let rule = "{backendRefs: [{name: svc, port: 80}]}";
    let manifest = one_backend(port, "").replacen(
        &format!("rules: [{rule}]"),
        &format!("rules: [{{matches: [{{path: {{type: PathPrefix, value: /retried}}}}], retry: {{attempts: 1}}, backendRefs: [{{name: svc, port: 80}}]}}, {rule}]"),
        1,
    );
    assert!(manifest.contains("/retried"));
    let dir = tempdir();
    write(dir.path(), "all.yaml", &manifest);
    let gw = Gw::start(dir.path(), &[]);
    let c = HttpClient::default();
    let post = |path: &'static str| {
        c.request(
            "POST",
            gw.addr(8080),
            "svc.test",
            path,
            &[],
            Bytes::from_static(b"order"),
        )
    };
    let r = post("/retried").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    let r = post("/plain").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(seen.load(Ordering::SeqCst), 3, "the POST was sent once");
    let metrics = c.get(gw.admin, "admin", "/metrics").await.body;
    let retries = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("locus_retries_total{") && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(retries("connection"), Some(1.0), "{metrics}");
    assert_eq!(retries("status"), Some(0.0), "{metrics}");
}

/// A length-delimited response body reaches the client whole however the endpoint's writes
/// split it: with its head in one write (up to 16 KiB it goes out with the head, copied), over
/// that size, or arriving partly or wholly in a later segment than its head (frame by frame).
/// Each case runs three times, so a connection reused after it must not hold its leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_delimited_bodies_arrive_whole_however_they_are_split() {
    fn body(path: &str) -> Vec<u8> {
        let n = match path {
            "/small" | "/split" | "/late" => 9,
            "/limit" => 16 * 1024,
            "/over" => 16 * 1024 + 1,
            _ => 100_000,
        };
        (0..n).map(|i| b'a' + (i % 26) as u8).collect()
    }
    let (port, _) = scripted(|_, head| {
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let body = body(&path);
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        let at = match path.as_str() {
            "/split" => 3,
            "/late" => 0,
            _ => body.len(),
        };
        bytes.extend_from_slice(&body[..at]);
        let rest = body[at..].to_vec();
        Answer {
            bytes,
            more: (!rest.is_empty()).then(|| (Duration::from_millis(30), rest)),
            ..Answer::default()
        }
    })
    .await;
    let (_dir, gw) = gateway(port);
    let c = HttpClient::default();
    let addr = gw.addr(8080);
    for _ in 0..3 {
        for path in ["/small", "/split", "/late", "/limit", "/over", "/big"] {
            let r = c.get(addr, "svc.test", path).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(
                r.body.as_bytes() == body(path),
                "{path}: {} bytes",
                r.body.len()
            );
        }
    }
}

/// WebSocket (any HTTP/1.1 upgrade): the upgrade headers reach the endpoint, its 101 reaches
/// the client, and then bytes flow both ways — including what the endpoint sent in the same
/// write as its 101 — until the client closes, which closes the endpoint's side too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_join_client_and_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (head_tx, mut head_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let head_tx = head_tx.clone();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = head_tx.send(String::from_utf8_lossy(&got).into_owned());
                // The 101 and the first frame in one write.
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: abc\r\n\r\nwelcome")
                    .await
                    .unwrap();
                // Then echo upper-cased until the client closes.
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap(),
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    let dir = tempdir();
    write(dir.path(), "all.yaml", &one_backend(port, ""));
    let gw = Gw::start(dir.path(), &["--verbose-errors"]);
    let mut s = TcpStream::connect(gw.addr(8080)).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nhost: svc.test\r\nconnection: keep-alive, Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
        .await
        .unwrap();
    let seen = head_rx.recv().await.unwrap();
    assert!(seen.contains("upgrade: websocket\r\n"), "{seen}");
    assert!(seen.contains("connection: upgrade\r\n"), "{seen}");
    assert!(
        seen.contains("sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
        "{seen}"
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("welcome") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("upgrade: websocket"), "{text}");
    assert!(text.contains("sec-websocket-accept: abc"), "{text}");
    for word in ["hello", "locality"] {
        s.write_all(word.as_bytes()).await.unwrap();
        let mut echo = vec![0u8; word.len()];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, word.to_ascii_uppercase().as_bytes());
    }
    s.shutdown().await.unwrap();
    closed_rx.recv().await.unwrap();
    assert_eq!(
        s.read(&mut buf).await.unwrap(),
        0,
        "the gateway closes the client's side too"
    );
}

/// Only WebSocket upgrades pass: an `Upgrade: h2c` (which would hand the client a connection
/// past every route) goes to the endpoint as a plain request, its upgrade headers removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_pass() {
    let backend = echo("a");
    let (_dir, gw) = gateway(backend.addr.port());
    let r = HttpClient::default()
        .request(
            "GET",
            gw.addr(8080),
            "svc.test",
            "/echo",
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let headers = &r.json()["headers"];
    assert!(headers.get("upgrade").is_none(), "{headers}");
    assert!(headers.get("http2-settings").is_none(), "{headers}");
}

/// A full-duplex endpoint answers as soon as the head arrives and then echoes the upload as
/// it reads it: the rest of the upload keeps flowing while the response is read, so the
/// exchange completes instead of each side waiting on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_keep_flowing_to_an_endpoint_that_answers_first() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let end = loop {
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let mut left: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await
                    .unwrap();
                let mut pending = got[end..].to_vec();
                loop {
                    if !pending.is_empty() {
                        left -= pending.len();
                        s.write_all(format!("{:x}\r\n", pending.len()).as_bytes())
                            .await
                            .unwrap();
                        s.write_all(&pending).await.unwrap();
                        s.write_all(b"\r\n").await.unwrap();
                        pending.clear();
                    }
                    if left == 0 {
                        break;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                s.write_all(b"0\r\n\r\n").await.unwrap();
            });
        }
    });
    let (_dir, gw) = gateway(port);
    let size = 4 * 1024 * 1024;
    let upload = Bytes::from(vec![b'u'; size]);
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        HttpClient::default().request("PUT", gw.addr(8080), "svc.test", "/echo", &[], upload),
    )
    .await
    .expect("the exchange completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
}

/// The endpoint's header fields reach the client as they came (names, values, repeats, its
/// `Date`), minus the hop-by-hop ones: those the framing consumes (`Connection`, `Keep-Alive`),
/// and those a `Connection` names or that are hop-by-hop by definition (`Trailer`). Both of
/// Locus's HTTP/1.1 servers: its own writes the fields from the bytes they came in, hyper's
/// from a map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_fields_reach_the_client_minus_hop_by_hop_ones() {
    let (port, _) = scripted(|_, head| {
        if head.starts_with("GET /hop ") {
            answer("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nTrailer: x-t\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok")
        } else {
            answer("HTTP/1.1 200 OK\r\nServer: s\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nX-Mixed-Case: A  b\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok")
        }
    })
    .await;
    for server in ["locus", "hyper"] {
        let dir = tempdir();
        write(dir.path(), "all.yaml", &one_backend(port, ""));
        let gw = Gw::start(dir.path(), &["--http1-server", server]);
        let ask = |method: &'static str, path: &'static str| {
            let addr = gw.addr(8080);
            async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nhost: svc.test\r\nconnection: close\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
                let text = String::from_utf8_lossy(&out).into_owned();
                let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
                // Field lines, names lower-cased (the two servers differ in case only).
                let fields: Vec<String> = head
                    .lines()
                    .skip(1)
                    .map(|l| match l.split_once(':') {
                        Some((n, v)) => format!("{}:{}", n.to_ascii_lowercase(), v),
                        None => l.to_owned(),
                    })
                    .collect();
                (text, fields)
            }
        };
        let (text, fields) = ask("GET", "/").await;
        assert!(text.ends_with("\r\n\r\nok"), "{server}: {text}");
        let with = |name: &str| {
            fields
                .iter()
                .filter(|f| f.starts_with(&format!("{name}:")))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(with("server"), ["server: s"], "{server}: {text}");
        assert_eq!(
            with("date"),
            ["date: Tue, 01 Dec 2026 00:00:00 GMT"],
            "{server}: {text}"
        );
        assert_eq!(
            with("x-mixed-case"),
            ["x-mixed-case: A  b"],
            "{server}: {text}"
        );
        assert_eq!(
            with("set-cookie"),
            ["set-cookie: a=1", "set-cookie: b=2"],
            "{server}: {text}"
        );
        assert_eq!(
            with("content-length"),
            ["content-length: 2"],
            "{server}: {text}"
        );
        assert!(with("keep-alive").is_empty(), "{server}: {text}");

        let (text, fields) = ask("GET", "/hop").await;
        assert!(text.ends_with("\r\n\r\nok"), "{server}: {text}");
        for f in &fields {
            assert!(
                !f.starts_with("x-secret") && !f.starts_with("trailer"),
                "{server}: hop-by-hop field forwarded: {text}"
            );
            assert!(
                !f.starts_with("connection:") || f == "connection: close",
                "{server}: {text}"
            );
        }
        assert!(fields.iter().any(|f| f == "x-kept: 1"), "{server}: {text}");

        // A HEAD's answer keeps the endpoint's length.
        let (text, fields) = ask("HEAD", "/").await;
        assert!(
            fields.iter().any(|f| f == "content-length: 2"),
            "{server}: {text}"
        );
    }
}

/// Each request on a pooled connection times out at its own deadline: the connection's timer,
/// still armed at an earlier request's deadline, neither cuts a later request short nor lets a
/// shorter timeout (another route's) run long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_pooled_connection_time_out_at_their_own_deadlines() {
    let (port, _) = scripted(|_, head| {
        let slow = head.contains(" /slow") || head.contains(" /short/slow");
        Answer {
            delay: Duration::from_millis(if slow { 3_000 } else { 0 }),
            ..answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let dir = tempdir();
    let m = one_backend(port, "").replace(
        "rules: [{backendRefs: [{name: svc, port: 80}]}]",
        "rules: [{matches: [{path: {value: /short}}], timeouts: {request: 300ms}, backendRefs: [{name: svc, port: 80}]}, {timeouts: {request: 1s}, backendRefs: [{name: svc, port: 80}]}]",
    );
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &[]);
    let c = HttpClient::default();
    let addr = gw.addr(8080);
    let timed = |path: &'static str| {
        let c = &c;
        async move {
            let started = std::time::Instant::now();
            let r = c.get(addr, "svc.test", path).await;
            (r.status, started.elapsed().as_millis())
        }
    };
    // Armed at +1 s by a quick request, then a 300 ms timeout on the same connection.
    assert_eq!(timed("/fast").await.0, 200);
    let (status, took) = timed("/short/slow").await;
    assert_eq!(status, 504);
    assert!((300..950).contains(&took), "300 ms timeout after {took} ms");
    // Armed at +1 s, then half of that waited: the next request still gets its full second.
    assert_eq!(timed("/fast").await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, took) = timed("/slow").await;
    assert_eq!(status, 504);
    assert!((950..2_900).contains(&took), "1 s timeout after {took} ms");
}
