//! The data path: HTTP/1.1 and h2c downstream, forwarding headers, streamed bodies, upstream
//! failures, and connections that survive reloads.

mod common;

use bytes::Bytes;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_headers_and_streams_bodies_over_http1_and_h2c() {
    let e = echo("echo");
    let dir = tempdir();
    write(dir.path(), "all.yaml", &one_backend(e.addr.port(), ""));
    let gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);

    for h2 in [false, true] {
        let c = HttpClient::new(h2);
        let body = Bytes::from(vec![b'a'; 1 << 20]);
        let r = c
            .request(
                "POST",
                addr,
                "svc.test",
                "/upload?x=1",
                &[
                    ("connection", "x-drop-me"),
                    ("x-drop-me", "secret"),
                    ("x-forwarded-for", "10.1.2.3"),
                ],
                body,
            )
            .await;
        assert_eq!(r.status, 200, "h2={h2}: {}", r.body);
        let j = r.json();
        assert_eq!(j["bodyBytes"], 1 << 20, "h2={h2}");
        assert_eq!(j["path"], "/upload");
        assert_eq!(j["query"], "x=1");
        assert_eq!(j["method"], "POST");
        let h = &j["headers"];
        assert_eq!(h["host"], "svc.test", "h2={h2}: {h}");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(
            h.get("x-drop-me").is_none(),
            "hop-by-hop header forwarded: {h}"
        );
        assert!(h.get("connection").is_none() || h["connection"] != "x-drop-me");

        // No list from the client: the peer alone. A client's own `x-forwarded-proto` is
        // replaced, not passed on beside the gateway's; a request id is made.
        let r = c
            .request(
                "GET",
                addr,
                "svc.test",
                "/",
                &[("x-forwarded-proto", "https")],
                Bytes::new(),
            )
            .await;
        let h = &r.json()["headers"];
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "h2={h2}: {h}");
        assert_eq!(h["x-forwarded-proto"], "http", "h2={h2}: {h}");
        assert_eq!(h["x-request-id"].as_str().map(str::len), Some(36), "{h}");

        // Large response bodies stream back.
        let r = c.get(addr, "svc.test", "/size/3000000").await;
        assert_eq!(r.body.len(), 3_000_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_is_a_clear_502() {
    // A port nothing listens on: bind, note the port, close.
    let port = dead_addr().port();
    let dir = tempdir();
    write(dir.path(), "all.yaml", &one_backend(port, ""));
    let gw = Gw::start(dir.path(), &["--verbose-errors"]);
    let r = HttpClient::default()
        .get(gw.addr(8080), "svc.test", "/")
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["x-locus-error"], "upstream-connect");
    assert!(
        r.body.contains(&format!(
            "upstream connect error to 127.0.0.1:{port} (service apps/svc:80)"
        )),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_survive_reloads() {
    let a = echo("a");
    let b = echo("b");
    let dir = tempdir();
    write(dir.path(), "all.yaml", &one_backend(a.addr.port(), ""));
    let mut gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    // One raw keep-alive connection used before and after the reload.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = async |conn: &mut tokio::net::TcpStream| {
        conn.write_all(b"GET /hostname HTTP/1.1\r\nhost: svc.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if body.len() >= len {
                    return body[..len].to_owned();
                }
            }
        }
    };
    assert_eq!(ask(&mut conn).await, "a");
    gw.apply("all.yaml", &one_backend(b.addr.port(), ""));
    assert_eq!(ask(&mut conn).await, "b");
}

/// A backend that accepts (in the kernel) but never answers, behind a route with a 300 ms
/// request timeout.
fn silent_backend_with_300ms_timeout() -> (std::net::TcpListener, tempfile::TempDir, Gw) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempdir();
    let m = one_backend(port, "").replace(
        "rules: [{backendRefs: [{name: svc, port: 80}]}]",
        "rules: [{timeouts: {request: 300ms}, backendRefs: [{name: svc, port: 80}]}]",
    );
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &[]);
    (silent, dir, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_gives_504() {
    let (silent, _dir, gw) = silent_backend_with_300ms_timeout();
    let r = HttpClient::default()
        .get(gw.addr(8080), "svc.test", "/")
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.headers["x-locus-error"], "upstream-timeout");
    drop(silent);
}

/// A timeout that fires while Locus waits for the client's body is the client's (408, never
/// counted against the endpoint); one that fires while the endpoint owes the answer is the
/// endpoint's (504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_waiting_on_the_client_is_the_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (silent, _dir, gw) = silent_backend_with_300ms_timeout();

    // A chunked upload (streamed, not buffered) whose client stalls after the first chunk.
    let mut s = tokio::net::TcpStream::connect(gw.addr(8080)).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: svc.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut answer))
        .await
        .expect("an answer to the stalled upload")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("x-locus-error: client-timeout"), "{answer}");

    // A plain GET: the endpoint owes the answer.
    let c = HttpClient::default();
    let r = c.get(gw.addr(8080), "svc.test", "/").await;
    assert_eq!(r.status, 504);

    let metrics = c.get(gw.admin, "admin", "/metrics").await.body;
    assert_eq!(
        request_errors(&metrics, &["side=\"client\"", "kind=\"timeout\""]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        request_errors(&metrics, &["side=\"upstream\"", "kind=\"timeout\""]),
        1.0,
        "{metrics}"
    );
    drop(silent);
}

/// Reads what the gateway sends on `s` until it closes the connection (at most 10 s).
async fn until_closed(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// A request head larger than `--max-request-head-bytes` (64 KiB by default) gets 431; a head
/// that trickles in slower than `--header-read-timeout-ms` has its connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_heads_are_bounded_in_size_and_time() {
    use tokio::io::AsyncWriteExt;
    let a = echo("a");
    let dir = tempdir();
    write(dir.path(), "all.yaml", &one_backend(a.addr.port(), ""));
    let gw = Gw::start(dir.path(), &["--header-read-timeout-ms", "300"]);

    let mut s = tokio::net::TcpStream::connect(gw.addr(8080)).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: svc.test\r\nx-big: {}\r\n\r\n",
        "x".repeat(70 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    // Refused: a 431, or (when the unread rest of the head makes the kernel reset the closed
    // connection first) just the close; never an answer from the backend.
    let answer = until_closed(&mut s).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:.80}"
    );

    // Half a head, then nothing: closed once the header read timeout passes.
    let mut s = tokio::net::TcpStream::connect(gw.addr(8080)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: svc.test\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = until_closed(&mut s).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));

    // A head within the bounds is served.
    let r = HttpClient::default()
        .get(gw.addr(8080), "svc.test", "/hostname")
        .await;
    assert_eq!(r.who(), "a");
}

/// An endpoint that never answers: 504 after the gateway's default request timeout when the
/// rule sets none, after `timeouts.backendRequest` when it sets one, and never with
/// `timeouts.request: 0s` (the Gateway API's "no timeout").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_endpoint_times_out_by_default_and_by_route() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempdir();
    let rule = |path: &str, timeouts: &str| {
        format!("{{matches: [{{path: {{value: {path}}}}}], {timeouts}backendRefs: [{{name: svc, port: 80}}]}}")
    };
    let rules = [
        rule("/default", ""),
        rule(
            "/per-attempt",
            "timeouts: {request: 5s, backendRequest: 300ms}, ",
        ),
        rule("/never", "timeouts: {request: 0s}, "),
    ];
    let m = one_backend(silent.local_addr().unwrap().port(), "").replace(
        "rules: [{backendRefs: [{name: svc, port: 80}]}]",
        &format!("rules: [{}]", rules.join(", ")),
    );
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--request-timeout-ms", "400"]);
    let c = HttpClient::default();

    for (path, within) in [("/default", 400..3_000), ("/per-attempt", 300..3_000)] {
        let started = std::time::Instant::now();
        let r = c.get(gw.addr(8080), "svc.test", path).await;
        let took = started.elapsed().as_millis();
        assert_eq!(r.status, 504, "{path}");
        assert_eq!(r.headers["x-locus-error"], "upstream-timeout", "{path}");
        assert!(within.contains(&took), "{path}: 504 after {took} ms");
    }
    // No timeout: still waiting well past the default.
    let waiting = tokio::time::timeout(
        std::time::Duration::from_millis(1_500),
        c.try_get(gw.addr(8080), "svc.test", "/never"),
    )
    .await;
    assert!(
        waiting.is_err(),
        "answered: {:?}",
        waiting.map(|r| r.map(|r| r.status))
    );
    drop(silent);
}
