//! Reloads of a 20,000-endpoint configuration while requests flow: the table is built off the
//! threads that serve requests, so every request is answered through every reload.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

/// A Service of `n` endpoints (loopback addresses no request is sent to) in 100 zones, as
/// EndpointSlices of 100, with a route (host `big.test`) so the table builds its snapshot, and
/// a `generation` annotation that each reload changes.
fn big_service(n: usize, generation: u64) -> String {
    let mut m = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: big, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [big.test]\n  rules: [{{backendRefs: [{{name: big, port: 80}}]}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: apps, annotations: {{gen: \"{generation}\"}}}}\nspec:\n  trafficDistribution: PreferClose\n  ports: [{{name: http, port: 80}}]\n"
    );
    for s in 0..n.div_ceil(100) {
        m.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-{s}, namespace: apps, labels: {{kubernetes.io/service-name: big}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        ));
        for e in 0..100.min(n - s * 100) {
            let i = s * 100 + e;
            m.push_str(&format!(
                "- {{addresses: [\"127.1.{}.{}\"], zone: zone-{}}}\n",
                i / 250,
                i % 250 + 1,
                s % 100
            ));
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_through_reloads_of_20k_endpoints() {
    let a = echo("a");
    let dir = tempdir();
    let small = [
        GATEWAY_AND_ROUTE.to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps}\nspec:\n  selector: {app: svc}\n  ports: [{name: http, port: 80}]\n---\n".to_owned(),
        entry("a", "r/za", a.addr),
    ]
    .concat();
    write(dir.path(), "all.yaml", &small);
    write(dir.path(), "big.yaml", &big_service(20_000, 0));
    let mut gw = Gw::start(dir.path(), &["--locality", "r/za", "--workers", "1"]);
    let addr = gw.addr(8080);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let c = HttpClient::default();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(c.get(addr, "svc.test", "/hostname").await.who());
            }
            seen
        }));
    }
    for generation in 1..=3 {
        write(dir.path(), "big.yaml", &big_service(20_000, generation));
        gw.wait_applied();
    }
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for c in clients {
        let seen = c.await.unwrap();
        let errors: Vec<&String> = seen.iter().filter(|w| *w != "a").collect();
        assert!(errors.is_empty(), "errors during reloads: {errors:?}");
        answered += seen.len();
    }
    // Requests kept flowing during the reloads, not just before and after.
    assert!(answered >= 100, "only {answered} requests answered");
}
