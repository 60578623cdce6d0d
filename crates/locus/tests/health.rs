//! Health that drives failover, with real backends: killed endpoints, 5xx ejection and return,
//! active checks, proportional spillover, fail-closed.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const GATEWAY: &str = GATEWAY_AND_ROUTE;

fn service(annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: apps\n  annotations: {{{annotations}}}\nspec:\n  selector: {{app: svc}}\n  trafficDistribution: PreferClose\n  ports: [{{name: http, port: 80}}]\n---\n"
    )
}

/// Backends `a` and `b` in the gateway's zone r/za, with `policy` (more manifests) applied.
async fn two_local_backends(policy: &str) -> (Echo, Echo, tempfile::TempDir, Gw) {
    let a = echo("a");
    let b = echo("b");
    let dir = tempdir();
    let m = [
        GATEWAY.to_owned(),
        service(""),
        entry("a", "r/za", a.addr),
        entry("b", "r/za", b.addr),
        policy.to_owned(),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--locality", "r/za"]);
    (a, b, dir, gw)
}

async fn set_fail(addr: SocketAddr, status: u16) {
    let r = HttpClient::default()
        .get(addr, "x", &format!("/_echo/fail/{status}"))
        .await;
    assert_eq!(r.status, 200);
}

/// Sends requests until `done` says stop or the deadline passes; returns the responses.
async fn until(
    c: &HttpClient,
    addr: SocketAddr,
    what: &str,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last responses: {:?}",
            &seen[seen.len().saturating_sub(20)..]
        );
        seen.push(c.get(addr, "svc.test", "/hostname").await.who());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_local_zone_under_load_loses_no_request() {
    let mut a1 = echo("a1");
    let mut a2 = echo("a2");
    let b = echo("b");
    let dir = tempdir();
    let m = [
        GATEWAY.to_owned(),
        service(""),
        entry("a1", "r/za", a1.addr),
        entry("a2", "r/za", a2.addr),
        entry("b", "r/zb", b.addr),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--locality", "r/za"]);
    let addr = gw.addr(8080);

    // Four clients sending back to back, each on its own connection pool.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let tx = tx.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let c = HttpClient::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if tx
                    .send(c.get(addr, "svc.test", "/hostname").await.who())
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    let mut before = Vec::new();
    while before.len() < 300 {
        before.push(rx.recv().await.unwrap());
    }
    a1.proc.kill();
    a2.proc.kill();
    let mut after = Vec::new();
    while after.len() < 600 {
        after.push(rx.recv().await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let errors: Vec<&String> = before
        .iter()
        .chain(&after)
        .filter(|w| w.starts_with("status"))
        .collect();
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(before.iter().all(|w| w == "a1" || w == "a2"), "{before:?}");
    // Requests in flight at the kill may still have been answered by a zone-a backend; after
    // them, everything goes to the next bucket.
    assert!(after[20..].iter().all(|w| w == "b"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answering_500s_is_ejected_and_returns_after_the_ejection_time() {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc, namespace: apps}\nspec:\n  host: svc.apps.svc.cluster.local\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}\n---\n";
    let (_a, b, _dir, gw) = two_local_backends(rule).await;
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    // The n-th ejection lasts n × the base (1 s): b comes back after at least that long.
    for (n, at_least) in [(1, 900), (2, 1_900)] {
        set_fail(b.addr, 500).await;
        let seen = c.count(addr, "svc.test", "/hostname", 40).await;
        // Exactly three 500s reach the client (no retry on status by default), then b is out.
        assert_eq!(
            seen,
            counts(&[("a", 37), ("status 500", 3)]),
            "ejection {n}"
        );
        let ejected_at = Instant::now();
        set_fail(b.addr, 0).await;
        until(&c, addr, "b to return", |s| {
            s.last().is_some_and(|w| w == "b")
        })
        .await;
        assert!(
            ejected_at.elapsed() >= Duration::from_millis(at_least),
            "ejection {n}: returned after {:?}",
            ejected_at.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_an_endpoint_out_and_bring_it_back() {
    let policy = "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: hc, namespace: apps}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: svc}]\n  healthCheck:\n    active: {type: HTTP, interval: 100ms, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2, http: {path: /healthz, expectedStatuses: [200]}}\n---\n";
    let (_a, b, _dir, gw) = two_local_backends(policy).await;
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    assert_eq!(
        c.count(addr, "svc.test", "/hostname", 10).await,
        counts(&[("a", 5), ("b", 5)])
    );
    set_fail(b.addr, 503).await;
    until(&c, addr, "b to be taken out by its checks", |s| {
        s.len() >= 20 && s[s.len() - 20..].iter().all(|w| w == "a")
    })
    .await;
    set_fail(b.addr, 0).await;
    until(&c, addr, "b to be brought back by its checks", |s| {
        s.last().is_some_and(|w| w == "b")
    })
    .await;
}

fn slice(name: &str, zone: &str, addr: SocketAddr, ready: bool) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: apps\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- {{addresses: [\"{}\"], zone: {zone}, conditions: {{ready: {ready}}}}}\n---\n",
        addr.port(),
        addr.ip()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_local_endpoints_with_two_down_keep_84_percent_local() {
    let local: Vec<Echo> = (1..=3).map(|i| echo(&format!("local-{i}"))).collect();
    let remote = echo("remote");
    let down: Vec<SocketAddr> = (0..2).map(|_| dead_addr()).collect();
    let mut m = GATEWAY.to_owned() + &service("");
    for (i, e) in local.iter().enumerate() {
        m += &slice(&format!("l{i}"), "za", e.addr, true);
    }
    for (i, a) in down.iter().enumerate() {
        m += &slice(&format!("d{i}"), "za", *a, false);
    }
    m += &slice("remote", "zb", remote.addr, true);
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let mut gw = Gw::start(dir.path(), &["--locality", "r/za"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    let n = 2_000;
    let seen = c.count(addr, "svc.test", "/hostname", n).await;
    let local_share = (n - seen.get("remote").copied().unwrap_or(0)) as f64 / n as f64;
    assert!(
        (0.82..=0.86).contains(&local_share),
        "local share {local_share}: {seen:?}"
    );
    assert_eq!(
        seen.keys().filter(|k| k.starts_with("status")).count(),
        0,
        "{seen:?}"
    );

    // The agentgateway behaviour on request: all-or-nothing keeps everything local.
    write(
        dir.path(),
        "all.yaml",
        &m.replace(
            "annotations: {}",
            "annotations: {locus.io/spillover: all-or-nothing}",
        ),
    );
    gw.wait_applied();
    let seen = c.count(addr, "svc.test", "/hostname", 300).await;
    assert_eq!(
        seen,
        counts(&[("local-1", 100), ("local-2", 100), ("local-3", 100)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_when_nothing_is_healthy() {
    let mut a = echo("a");
    let dir = tempdir();
    let m = [
        GATEWAY.to_owned(),
        service("locus.io/fail-closed: \"true\""),
        entry("a", "r/za", a.addr),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let mut gw = Gw::start(dir.path(), &["--locality", "r/za", "--verbose-errors"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    assert_eq!(c.get(addr, "svc.test", "/hostname").await.who(), "a");
    a.proc.kill();
    // The first request finds the endpoint dead (502) and ejects it; then the Service fails
    // closed.
    assert_eq!(c.get(addr, "svc.test", "/hostname").await.status, 502);
    let r = c.get(addr, "svc.test", "/hostname").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers["x-locus-error"], "no-endpoint");
    assert!(r.body.contains("fails closed"), "{}", r.body);

    // Without it, the ejected endpoint is still tried as a last resort (502 from the dead
    // backend, not 503).
    write(
        dir.path(),
        "all.yaml",
        &m.replace("locus.io/fail-closed: \"true\"", ""),
    );
    gw.wait_applied();
    assert_eq!(c.get(addr, "svc.test", "/hostname").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_degraded_spread_reverts_to_locality_blind_routing() {
    let local: Vec<Echo> = (1..=2).map(|i| echo(&format!("local-{i}"))).collect();
    let remote: Vec<Echo> = (1..=2).map(|i| echo(&format!("remote-{i}"))).collect();
    let down: Vec<SocketAddr> = (0..2).map(|_| dead_addr()).collect();
    let mut m = GATEWAY.to_owned() + &service("locus.io/on-degraded: spread");
    for (i, e) in local.iter().enumerate() {
        m += &slice(&format!("l{i}"), "za", e.addr, true);
    }
    for (i, a) in down.iter().enumerate() {
        m += &slice(&format!("d{i}"), "za", *a, false);
    }
    for (i, e) in remote.iter().enumerate() {
        m += &slice(&format!("r{i}"), "zb", e.addr, true);
    }
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--locality", "r/za"]);
    // Half of the local zone is gone (more than the default 25% threshold): every healthy
    // endpoint gets the same share instead of the two survivors carrying the zone.
    let seen = HttpClient::default()
        .count(gw.addr(8080), "svc.test", "/hostname", 400)
        .await;
    for name in ["local-1", "local-2", "remote-1", "remote-2"] {
        let n = seen.get(name).copied().unwrap_or(0);
        assert!((90..=110).contains(&n), "{name}: {seen:?}");
    }
}

/// Requests `a` has answered so far (echo's own counter, read straight from it).
async fn answered(c: &HttpClient, backend: SocketAddr) -> u64 {
    c.get(backend, "x", "/_echo/requests")
        .await
        .body
        .parse()
        .unwrap()
}

/// Waits until `backend` has seen more than `before` requests: the gateway forwarded the head.
async fn until_answered(c: &HttpClient, backend: SocketAddr, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(c, backend).await <= before {
        assert!(
            Instant::now() < deadline,
            "the gateway never forwarded the upload to the local endpoint (ejected?)"
        );
        tokio::task::yield_now().await;
    }
}

/// A client that aborts its upload or sends a malformed chunk is the client's fault, never the
/// endpoint's: ten of each in a row, under an outlier policy that ejects on the first failure,
/// leave the local endpoint healthy and local traffic local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_breaking_their_uploads_never_eject_the_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = echo("a");
    let b = echo("b");
    let dir = tempdir();
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc, namespace: apps}\nspec:\n  host: svc.apps.svc.cluster.local\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n---\n";
    let m = [
        GATEWAY.to_owned(),
        service(""),
        entry("a", "r/za", a.addr),
        entry("b", "r/zb", b.addr),
        rule.to_owned(),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--locality", "r/za"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    for _ in 0..10 {
        // An upload of a declared megabyte, abandoned once the endpoint has its head.
        let before = answered(&c, a.addr).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nhost: svc.test\r\ncontent-length: 1000000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
        until_answered(&c, a.addr, before).await;
        drop(s);

        // A chunked upload whose second chunk size is not hex.
        let before = answered(&c, a.addr).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: svc.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        until_answered(&c, a.addr, before).await;
        s.write_all(b"zz\r\nnot a chunk\r\n0\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        // The client hears it was its own fault (or the connection just closes), never a 502.
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "answer to a malformed chunk: {answer:?}"
        );
    }
    // Every failure was counted, and on the client's side.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = c.get(gw.admin, "admin", "/metrics").await.body;
        if request_errors(&text, &["side=\"client\""]) >= 20.0 || Instant::now() > deadline {
            break text;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        request_errors(&metrics, &["side=\"client\""]),
        20.0,
        "{metrics}"
    );
    // The malformed chunks are told apart from the clients that went away.
    assert_eq!(
        request_errors(&metrics, &["kind=\"bad-body\""]),
        10.0,
        "{metrics}"
    );
    assert_eq!(
        request_errors(&metrics, &["side=\"upstream\""]),
        0.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("locus_outlier_ejections_total{"),
        "an endpoint was ejected:\n{metrics}"
    );
    // And the local endpoint still takes all the traffic.
    let seen = c.count(addr, "svc.test", "/hostname", 100).await;
    assert_eq!(seen, counts(&[("a", 100)]));
    drop(b);
}
