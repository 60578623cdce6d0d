//! Locality policies with real backends: DestinationRule distribute (80/20), region failover
//! constraints, consistent hashing by header and cookie, Kubernetes topology hints.

mod common;

use std::net::SocketAddr;

use common::*;

const GATEWAY: &str = GATEWAY_AND_ROUTE;

fn service(extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: apps\n{extra}spec:\n  selector: {{app: svc}}\n  trafficDistribution: PreferClose\n  ports: [{{name: http, port: 80}}]\n---\n"
    )
}

fn rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: apps}}\nspec:\n  host: svc.apps.svc.cluster.local\n  trafficPolicy:\n{traffic_policy}---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_keeps_80_percent_in_region_and_sends_20_out() {
    let a = echo("us-central1-a");
    let b = echo("us-central1-b");
    let c = echo("us-central2-a");
    let m = [
        GATEWAY.to_owned(),
        service(""),
        entry("a", "us-central1/us-central1-a", a.addr),
        entry("b", "us-central1/us-central1-b", b.addr),
        entry("c", "us-central2/us-central2-a", c.addr),
        rule("    loadBalancer:\n      localityLbSetting:\n        enabled: true\n        distribute:\n        - from: \"us-central1/*\"\n          to: {\"us-central1/*\": 80, \"us-central2/*\": 20}\n"),
    ]
    .concat();
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &["--locality", "us-central1/us-central1-a"]);
    let n = 2_000;
    let seen = HttpClient::default()
        .count(gw.addr(8080), "svc.test", "/hostname", n)
        .await;
    let out = seen.get("us-central2-a").copied().unwrap_or(0) as f64 / n as f64;
    assert!((0.18..=0.22).contains(&out), "{seen:?}");
    // Within the 80% the two zones share evenly (DestinationRule overrides PreferClose).
    let (ia, ib) = (seen["us-central1-a"] as i64, seen["us-central1-b"] as i64);
    assert!((ia - ib).abs() <= 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_to_the_named_region_first() {
    let local = echo("us-west-1");
    let east = echo("us-east-1");
    let eu = echo("eu-west-1");
    let mut m = [
        GATEWAY.to_owned(),
        service(""),
        entry("local", "us-west/zone1", local.addr),
        entry("east", "us-east/zone1", east.addr),
        entry("eu", "eu-west/zone1", eu.addr),
    ]
    .concat();
    let dir = tempdir();
    let policy = rule("    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-west, to: eu-west}]\n");
    write(dir.path(), "all.yaml", &(m.clone() + &policy));
    let mut gw = Gw::start(dir.path(), &["--locality", "us-west/zone1"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    assert_eq!(
        c.count(addr, "svc.test", "/hostname", 10).await,
        counts(&[("us-west-1", 10)])
    );
    // The local endpoint goes away: failover to eu-west, not us-east, as the rule says.
    m = m.replace(&entry("local", "us-west/zone1", local.addr), "");
    gw.apply("all.yaml", &(m.clone() + &policy));
    assert_eq!(
        c.count(addr, "svc.test", "/hostname", 10).await,
        counts(&[("eu-west-1", 10)])
    );
    // Without the rule, the other regions share the last bucket.
    gw.apply(
        "all.yaml",
        &(m + &rule("    loadBalancer:\n      localityLbSetting: {enabled: true}\n")),
    );
    assert_eq!(
        c.count(addr, "svc.test", "/hostname", 10).await,
        counts(&[("eu-west-1", 5), ("us-east-1", 5)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_sticks_by_header_and_by_cookie() {
    let backends: Vec<Echo> = (1..=4).map(|i| echo(&format!("b{i}"))).collect();
    let mut m = GATEWAY.to_owned() + &service("");
    for (i, b) in backends.iter().enumerate() {
        m += &entry(&format!("b{i}"), "r/za", b.addr);
    }
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &(m.clone() + &rule("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n")),
    );
    let mut gw = Gw::start(dir.path(), &["--locality", "r/za"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let r = c
                .request(
                    "GET",
                    addr,
                    "svc.test",
                    "/hostname",
                    &[("x-user", &user)],
                    Default::default(),
                )
                .await;
            seen.insert(r.who());
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        owners.extend(seen);
    }
    assert!(owners.len() >= 3, "keys spread over endpoints: {owners:?}");

    // Cookie with a TTL: the gateway sets it on the first response, then the client sticks.
    gw.apply(
        "all.yaml",
        &(m + &rule("    loadBalancer:\n      consistentHash:\n        httpCookie: {name: locus-affinity, ttl: 60s}\n")),
    );
    let first = c.get(addr, "svc.test", "/hostname").await;
    let set = first
        .headers
        .get("set-cookie")
        .expect("a cookie is set")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.starts_with("locus-affinity=") && set.contains("Max-Age=60"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let r = c
            .request(
                "GET",
                addr,
                "svc.test",
                "/hostname",
                &[("cookie", &cookie)],
                Default::default(),
            )
            .await;
        assert!(r.headers.get("set-cookie").is_none());
        seen.insert(r.who());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_hints_follow_kube_proxy() {
    let a = echo("in-za");
    let b = echo("in-zb-hinted-za");
    let c = echo("in-zb");
    let slice = |name: &str, addr: SocketAddr, zone: &str, hint: Option<&str>| {
        let hints = hint
            .map(|h| format!(", hints: {{forZones: [{{name: {h}}}]}}"))
            .unwrap_or_default();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: apps\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- {{addresses: [\"{}\"], zone: {zone}{hints}}}\n---\n",
            addr.port(),
            addr.ip()
        )
    };
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: apps\n  annotations: {service.kubernetes.io/topology-mode: Auto}\nspec:\n  ports: [{name: http, port: 80}]\n---\n";
    let hinted = [
        GATEWAY.to_owned(),
        svc.to_owned(),
        slice("a", a.addr, "za", Some("za")),
        slice("b", b.addr, "zb", Some("za")),
        slice("c", c.addr, "zb", Some("zb")),
    ]
    .concat();
    let dir = tempdir();
    write(dir.path(), "all.yaml", &hinted);
    let mut gw = Gw::start(dir.path(), &["--locality", "r/za"]);
    let addr = gw.addr(8080);
    let cl = HttpClient::default();
    // Hints for za: the za endpoint and the zb endpoint the controller lent to za.
    assert_eq!(
        cl.count(addr, "svc.test", "/hostname", 20).await,
        counts(&[("in-za", 10), ("in-zb-hinted-za", 10)])
    );
    // One endpoint without hints: kube-proxy ignores hints and routes cluster-wide.
    gw.apply(
        "all.yaml",
        &hinted.replace(
            &slice("c", c.addr, "zb", Some("zb")),
            &slice("c", c.addr, "zb", None),
        ),
    );
    assert_eq!(
        cl.count(addr, "svc.test", "/hostname", 30).await,
        counts(&[("in-za", 10), ("in-zb-hinted-za", 10), ("in-zb", 10)])
    );
    let out = std::process::Command::new(BIN)
        .args([
            "check",
            "-f",
            dir.path().to_str().unwrap(),
            "--locality",
            "r/za",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("topology hints not used (not every ready endpoint has a zone hint)"),
        "{text}"
    );
}
