//! Cluster mode against a stand-in API server speaking the real list/watch protocol, with the
//! same YAML fixtures as file mode and real backends: endpoints that come, go and turn
//! not-ready move traffic; a Node label change moves the gateway's locality; the API server
//! going away and coming back (with its history compacted: 410 Gone) loses no traffic.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::apiserver::{kubeconfig, ApiServer};
use common::*;

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps}\nspec:\n  trafficDistribution: PreferClose\n  ports: [{name: http, port: 80}]\n---\n";

fn node(name: &str, zone: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/region: r, topology.kubernetes.io/zone: {zone}}}\n---\n")
}

fn slice(name: &str, addr: SocketAddr, node: &str, ready: bool) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: apps\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- {{addresses: [\"{}\"], nodeName: {node}, conditions: {{ready: {ready}}}}}\n---\n",
        addr.port(),
        addr.ip()
    )
}

async fn all_to(
    c: &HttpClient,
    addr: SocketAddr,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    c.count(addr, "svc.test", "/hostname", n).await
}

/// Two backends, one in each of zones za and zb, behind a stand-in API server.
struct Cluster {
    a: Echo,
    b: Echo,
    api: ApiServer,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

async fn two_zones() -> Cluster {
    let a = echo("in-za");
    let b = echo("in-zb");
    let api = ApiServer::start().await;
    api.apply_yaml(
        &[
            GATEWAY.to_owned(),
            node("gw-node", "za"),
            node("n-a", "za"),
            node("n-b", "zb"),
        ]
        .concat(),
    );
    api.apply_yaml(&(slice("a", a.addr, "n-a", true) + &slice("b", b.addr, "n-b", true)));
    let dir = tempdir();
    let config = kubeconfig(api.addr, dir.path());
    Cluster {
        a,
        b,
        api,
        dir,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_node_labels_move_traffic_live() {
    let Cluster {
        a,
        b,
        api,
        dir: _dir,
        config,
    } = two_zones().await;
    // The gateway's locality comes from its Node, as with NODE_NAME from the downward API.
    let mut gw = Gw::start_cluster(&config, &["--node", "gw-node"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    assert_eq!(all_to(&c, addr, 10).await, counts(&[("in-za", 10)]));
    assert_eq!(c.get(gw.admin, "admin", "/ready").await.status, 200);

    // The local endpoint turns not-ready: failover to zb.
    api.apply_yaml(&slice("a", a.addr, "n-a", false));
    gw.wait_applied();
    assert_eq!(all_to(&c, addr, 10).await, counts(&[("in-zb", 10)]));

    // Ready again, and zb's slice is deleted: everything back to za.
    api.apply_yaml(&slice("a", a.addr, "n-a", true));
    gw.wait_applied();
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "apps", "b");
    gw.wait_applied();
    assert_eq!(all_to(&c, addr, 10).await, counts(&[("in-za", 10)]));

    // A new endpoint in zb, and the gateway's Node relabelled to zb: its traffic follows,
    // without a restart.
    api.apply_yaml(&slice("b", b.addr, "n-b", true));
    gw.wait_applied();
    api.apply_yaml(&node("gw-node", "zb"));
    gw.wait_applied();
    assert_eq!(all_to(&c, addr, 10).await, counts(&[("in-zb", 10)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_keeps_routing_and_converges_after() {
    let Cluster {
        a,
        // Kept alive: the zb backend the traffic converges to.
        b: _b,
        api,
        dir: _dir,
        config,
    } = two_zones().await;
    let mut gw = Gw::start_cluster(&config, &["--node", "gw-node"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();

    api.stop();
    // The last good view keeps routing while the API server is away, and the gateway says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(all_to(&c, addr, 5).await, counts(&[("in-za", 5)]));
        let config = c.get(gw.admin, "admin", "/debug/config").await.json();
        if !config["discovery_error"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage was never reported: {config}"
        );
    }

    // It comes back with its history compacted (watches get 410 Gone and must re-list), and a
    // change made meanwhile.
    api.apply_yaml(&slice("a", a.addr, "n-a", false));
    api.compact();
    api.restart().await;
    // Each kind re-lists on its own backoff schedule: configurations follow until the change
    // made during the outage is in, and every request in between is still answered.
    loop {
        gw.wait_applied();
        let seen = all_to(&c, addr, 10).await;
        assert_eq!(
            seen.keys().filter(|k| k.starts_with("status")).count(),
            0,
            "{seen:?}"
        );
        if seen == counts(&[("in-zb", 10)]) {
            break;
        }
    }
    // And it stops reporting the outage once every watch has re-listed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let config = c.get(gw.admin, "admin", "/debug/config").await.json();
        if config["discovery_error"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "still reporting: {config}");
        // Polling the admin API: the re-lists run on kube-runtime's backoff timers.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_route_status_are_written() {
    let a = echo("in-za");
    let api = ApiServer::start().await;
    let broken_route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [broken.test]\n  rules: [{backendRefs: [{name: missing, port: 80}]}]\n";
    // A listener Locus does not serve is reported as such in status, not dropped silently.
    let gateway = GATEWAY.replace(
        "listeners: [{name: http, protocol: HTTP, port: 8080}]",
        "listeners: [{name: http, protocol: HTTP, port: 8080}, {name: tls, protocol: TLS, port: 8443}]",
    );
    api.apply_yaml(
        &[
            gateway,
            node("gw-node", "za"),
            node("n-a", "za"),
            broken_route.to_owned(),
        ]
        .concat(),
    );
    api.apply_yaml(&slice("a", a.addr, "n-a", true));
    let dir = tempdir();
    let config = kubeconfig(api.addr, dir.path());
    let _gw = Gw::start_cluster(&config, &["--node", "gw-node"]);
    let condition =
        |obj: &serde_json::Value, path: &[&str], kind: &str| -> Option<(String, String)> {
            let mut v = obj;
            for p in path {
                v = if let Ok(i) = p.parse::<usize>() {
                    &v[i]
                } else {
                    &v[*p]
                };
            }
            v.as_array()?.iter().find(|c| c["type"] == kind).map(|c| {
                (
                    c["status"].as_str().unwrap().to_owned(),
                    c["reason"].as_str().unwrap().to_owned(),
                )
            })
        };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gw = api
            .get("gateway.networking.k8s.io/v1", "Gateway", "apps", "gw")
            .unwrap();
        let ok = api
            .get("gateway.networking.k8s.io/v1", "HTTPRoute", "apps", "r")
            .unwrap();
        let broken = api
            .get(
                "gateway.networking.k8s.io/v1",
                "HTTPRoute",
                "apps",
                "broken",
            )
            .unwrap();
        let done = condition(&gw, &["status", "conditions"], "Programmed").is_some()
            && condition(
                &broken,
                &["status", "parents", "0", "conditions"],
                "ResolvedRefs",
            )
            .is_some()
            && condition(
                &ok,
                &["status", "parents", "0", "conditions"],
                "ResolvedRefs",
            )
            .is_some();
        if done {
            assert_eq!(
                condition(&gw, &["status", "conditions"], "Accepted"),
                Some(("True".into(), "Accepted".into()))
            );
            assert_eq!(
                condition(&gw, &["status", "conditions"], "Programmed"),
                Some(("True".into(), "Programmed".into()))
            );
            // Both routes attach to the HTTP listener (one has a missing backend, which is a
            // ResolvedRefs matter, not an attachment one).
            let listeners = gw["status"]["listeners"].as_array().unwrap();
            assert_eq!(listeners.len(), 2, "{gw}");
            assert_eq!(listeners[0]["name"], "http");
            assert_eq!(listeners[0]["attachedRoutes"], 2);
            assert_eq!(listeners[0]["supportedKinds"][0]["kind"], "HTTPRoute");
            assert_eq!(
                condition(
                    &gw,
                    &["status", "listeners", "0", "conditions"],
                    "Programmed"
                ),
                Some(("True".into(), "Programmed".into()))
            );
            assert_eq!(listeners[1]["name"], "tls");
            assert_eq!(listeners[1]["attachedRoutes"], 0);
            assert_eq!(
                condition(&gw, &["status", "listeners", "1", "conditions"], "Accepted"),
                Some(("False".into(), "UnsupportedProtocol".into()))
            );
            let parents = &ok["status"]["parents"];
            assert_eq!(parents[0]["controllerName"], "locus.io/gateway");
            assert_eq!(
                condition(&ok, &["status", "parents", "0", "conditions"], "Accepted"),
                Some(("True".into(), "Accepted".into()))
            );
            assert_eq!(
                condition(
                    &ok,
                    &["status", "parents", "0", "conditions"],
                    "ResolvedRefs"
                ),
                Some(("True".into(), "ResolvedRefs".into()))
            );
            assert_eq!(
                condition(
                    &broken,
                    &["status", "parents", "0", "conditions"],
                    "ResolvedRefs"
                ),
                Some(("False".into(), "BackendNotFound".into()))
            );
            let message = broken["status"]["parents"][0]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "ResolvedRefs")
                .unwrap()["message"]
                .clone();
            assert_eq!(message, "Service apps/missing not found");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status written: {gw} {broken}"
        );
        // Polling the stand-in server's state; the status writes follow the first apply.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_every_kind_is_listed() {
    let a = echo("in-za");
    // An address where no API server listens yet.
    let unused = dead_addr();
    let port = unused.port();
    let dir = tempdir();
    let config = kubeconfig(unused, dir.path());
    let mut proc = Proc::spawn(&[
        "serve",
        "--kubernetes",
        "--kubeconfig",
        config.to_str().unwrap(),
        "--node",
        "gw-node",
        "--bind",
        "127.0.0.1",
        "--ephemeral-ports",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = proc.admin_addr();
    let c = HttpClient::default();
    assert_eq!(c.get(admin, "admin", "/ready").await.status, 503);
    // Now the API server appears on that port; the gateway lists everything and gets ready.
    let listener = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    drop(listener);
    let api = ApiServer::start_on(port).await;
    api.apply_yaml(&[GATEWAY.to_owned(), node("gw-node", "za"), node("n-a", "za")].concat());
    api.apply_yaml(&slice("a", a.addr, "n-a", true));
    proc.wait_line("applied", |l| l.starts_with("applied generation=1"));
    assert_eq!(c.get(admin, "admin", "/ready").await.status, 200);
}

/// The scale scenario of the benchmark suite (not a pass/fail test; run it with
/// `cargo test --release -p locus --test cluster -- --ignored --nocapture`): 10,000 endpoints
/// in 100 EndpointSlices; reports the gateway's memory and the time from a watch event to the
/// new configuration being in force (debounce included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scale_10k_endpoints_in_100_slices() {
    let a = echo("local");
    let api = ApiServer::start().await;
    api.apply_yaml(&[GATEWAY.to_owned(), node("gw-node", "z0"), node("n-a", "z0")].concat());
    api.apply_yaml(&slice("a", a.addr, "n-a", true));
    let big_slice = |z: usize, ready: bool| {
        let mut y = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-{z}\n  namespace: apps\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        );
        for e in 0..100 {
            y += &format!(
                "- {{addresses: [\"10.{z}.{}.{}\"], zone: z{z}, conditions: {{ready: {ready}}}}}\n",
                e / 250,
                e % 250 + 1
            );
        }
        y
    };
    for z in 0..100 {
        api.apply_yaml(&big_slice(z, true));
    }
    let dir = tempdir();
    let config = kubeconfig(api.addr, dir.path());
    let started = Instant::now();
    let mut gw = Gw::start_cluster(&config, &["--node", "gw-node"]);
    let ready_after = started.elapsed();
    let rss = gw.proc.rss_kib();
    let mut latencies = Vec::new();
    for round in 0..10 {
        let t = Instant::now();
        api.apply_yaml(&big_slice(round, round % 2 == 0));
        gw.wait_applied();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "10,000 endpoints in 100 EndpointSlices: ready after {:?}, RSS {:.1} MiB, watch event to configuration in force: median {:?}, max {:?} (debounce {:?} included)",
        ready_after,
        rss as f64 / 1024.0,
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        locus::discovery::cluster::DEBOUNCE
    );
}

/// HTTPS in cluster mode: the certificate comes from a watched `kubernetes.io/tls` Secret, and
/// a change to the Secret applies to the next handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_certificates_come_from_watched_secrets() {
    use common::tls::*;
    let a = echo("in-za");
    let ca = Ca::new();
    let (first, second) = (ca.leaf(&["svc.test"]), ca.leaf(&["svc.test"]));
    let api = ApiServer::start().await;
    let https = GATEWAY.replace(
        "[{name: http, protocol: HTTP, port: 8080}]",
        "[{name: https, protocol: HTTPS, port: 8443, tls: {certificateRefs: [{name: cert}]}}]",
    );
    api.apply_yaml(
        &[
            https,
            node("gw-node", "za"),
            node("n-a", "za"),
            secret("cert", &first),
        ]
        .concat(),
    );
    api.apply_yaml(&slice("a", a.addr, "n-a", true));
    let dir = tempdir();
    let config = kubeconfig(api.addr, dir.path());
    let mut gw = Gw::start_cluster(&config, &["--node", "gw-node"]);
    let addr = gw.addr(8443);
    let (tls, shown) = connect(&ca, addr, "svc.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(shown, first.der);
    assert_eq!(
        get(&mut http1(tls).await, "svc.test", "/hostname").await,
        (200, "in-za".into())
    );
    api.apply_yaml(&secret("cert", &second));
    gw.wait_applied();
    let (_, shown) = connect(&ca, addr, "svc.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(shown, second.der);
}

/// Locus as a well-behaved controller: it serves the Gateways whose GatewayClass names its
/// controller (and accepts that class), writes `status.addresses` from the gateway Service's
/// load balancer, keeps another controller's `status.parents` entry on a shared HTTPRoute
/// (the stand-in applies merge patches as the API server does: lists replaced whole), puts
/// `observedGeneration` on every condition, and of two replicas only the Lease holder writes;
/// when it goes, the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_by_one_replica_and_keeps_other_controllers_entries() {
    let a = echo("in-za");
    let api = ApiServer::start().await;
    let classes = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: locus, generation: 1}\nspec: {controllerName: locus.io/gateway}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: other}\nspec: {controllerName: example.com/other}\n---\n";
    // A Gateway of another controller's class, on the same port: never served by Locus.
    let other_gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: other-gw, namespace: apps}\nspec:\n  gatewayClassName: other\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\n";
    // The route is shared: its other parent belongs to the other controller, which wrote
    // its entry already.
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps, generation: 3}\nspec:\n  parentRefs: [{name: gw}, {name: other-gw}]\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\nstatus:\n  parents:\n  - parentRef: {group: gateway.networking.k8s.io, kind: Gateway, namespace: apps, name: other-gw}\n    controllerName: example.com/other\n    conditions: [{type: Accepted, status: \"True\", reason: Accepted, message: \"\", observedGeneration: 3, lastTransitionTime: \"2026-01-01T00:00:00Z\"}]\n---\n";
    let gateway_svc = "apiVersion: v1\nkind: Service\nmetadata: {name: locus, namespace: locus-system}\nspec: {type: LoadBalancer, clusterIP: 10.0.0.9, ports: [{name: http, port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}\n---\n";
    let gateway = GATEWAY.split("---\n").next().unwrap().to_owned() + "---\n";
    let service = GATEWAY.split("---\n").nth(2).unwrap().to_owned() + "---\n";
    api.apply_yaml(
        &[
            classes,
            &gateway,
            other_gw,
            route,
            &service,
            gateway_svc,
            &node("gw-node", "za"),
            &node("n-a", "za"),
        ]
        .concat(),
    );
    api.apply_yaml(&slice("a", a.addr, "n-a", true));
    let dir = tempdir();
    let config = kubeconfig(api.addr, dir.path());
    let args = ["--node", "gw-node", "--fleet-service", "locus-system/locus"];
    let mut first = Gw::start_cluster(&config, &args);
    let mut second = Gw::start_cluster(&config, &args);

    let get = |kind: &str, ns: &str, name: &str| {
        api.get("gateway.networking.k8s.io/v1", kind, ns, name)
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let route_status = loop {
        let r = get("HTTPRoute", "apps", "r");
        let parents = r["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if parents.len() == 2 {
            break parents;
        }
        assert!(Instant::now() < deadline, "route status: {r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by = |controller: &str| {
        route_status
            .iter()
            .find(|p| p["controllerName"] == controller)
            .unwrap_or_else(|| panic!("no entry of {controller}: {route_status:#?}"))
            .clone()
    };
    assert_eq!(by("example.com/other")["parentRef"]["name"], "other-gw");
    let ours = by("locus.io/gateway");
    assert_eq!(ours["parentRef"]["name"], "gw");
    for c in ours["conditions"].as_array().unwrap() {
        assert_eq!(c["status"], "True", "{c}");
        assert_eq!(c["observedGeneration"], 3, "{c}");
    }
    // The Gateway: accepted, addressed by the gateway Service's load balancer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let gw = loop {
        let gw = get("Gateway", "apps", "gw");
        if gw["status"]["addresses"].is_array() {
            break gw;
        }
        assert!(Instant::now() < deadline, "{gw:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        gw["status"]["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "203.0.113.7"}])
    );
    // Locus's class is accepted; the other controller's class and Gateway are left alone.
    let class = get("GatewayClass", "", "locus");
    assert_eq!(class["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(class["status"]["conditions"][0]["status"], "True");
    assert_eq!(class["status"]["conditions"][0]["observedGeneration"], 1);
    assert!(get("GatewayClass", "", "other")["status"].is_null());
    assert!(get("Gateway", "apps", "other-gw")["status"].is_null());

    // One writer: exactly one replica holds the Lease.
    let lease_line = |g: &mut Gw| g.proc.seen.iter().any(|l| l == "status-lease held=true");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(lease_line(&mut first) || lease_line(&mut second)) {
        for g in [&mut first, &mut second] {
            let _ = g.proc.try_line();
        }
        assert!(Instant::now() < deadline, "no replica took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !(lease_line(&mut first) && lease_line(&mut second)),
        "both replicas hold the lease"
    );
    let (mut leader, mut follower) = if lease_line(&mut first) {
        (first, second)
    } else {
        (second, first)
    };
    // The leader goes; the other takes the Lease once it expires, and writes what changes.
    leader.proc.kill();
    follower
        .proc
        .wait_line_for("the lease", Duration::from_secs(30), |l| {
            l == "status-lease held=true"
        });
    api.apply_yaml(&route.replace("generation: 3", "generation: 4"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get("HTTPRoute", "apps", "r");
        let parents = r["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ours = parents
            .iter()
            .find(|p| p["controllerName"] == "locus.io/gateway");
        if ours.is_some_and(|p| p["conditions"][0]["observedGeneration"] == 4) {
            assert!(parents
                .iter()
                .any(|p| p["controllerName"] == "example.com/other"));
            break;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster with the gateway, its node and one endpoint, `a`, in its zone.
async fn cluster_with_one_endpoint(a: &Echo) -> ApiServer {
    let api = ApiServer::start().await;
    api.apply_yaml(
        &[
            GATEWAY.to_owned(),
            node("gw-node", "za"),
            node("n-a", "za"),
            slice("a", a.addr, "n-a", true),
        ]
        .concat(),
    );
    api
}

/// `apps/svc` as a remote cluster defines it.
const WEST_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps}\nspec:\n  ports: [{name: http, port: 80}]\n---\n";

/// The addresses `/debug/endpoints` routes over, with the cluster of each.
async fn endpoint_clusters(c: &HttpClient, admin: SocketAddr) -> Vec<(String, String)> {
    let doc = c.get(admin, "admin", "/debug/endpoints").await.json();
    let mut out = Vec::new();
    for s in doc["services"].as_array().unwrap() {
        for b in s["buckets"].as_array().unwrap() {
            for e in b["endpoints"].as_array().unwrap() {
                out.push((
                    e["address"].as_str().unwrap().to_owned(),
                    e["cluster"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

/// Waits for configurations until `/debug/endpoints` lists `addr` (in `cluster`).
async fn until_listed(gw: &mut Gw, c: &HttpClient, addr: SocketAddr, cluster: &str) {
    let want = (addr.to_string(), cluster.to_owned());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !endpoint_clusters(c, gw.admin).await.contains(&want) {
        assert!(Instant::now() < deadline, "{want:?} never listed");
        gw.wait_applied();
    }
}

/// Waits until `/debug/config` reports (or stops reporting) a problem with cluster `west`.
async fn until_west_reported(c: &HttpClient, admin: SocketAddr, reported: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let config = c.get(admin, "admin", "/debug/config").await.json();
        let now = config["discovery_error"]
            .as_str()
            .is_some_and(|e| e.contains("remote cluster west"));
        if now == reported {
            return;
        }
        assert!(Instant::now() < deadline, "{config}");
        // Polling the admin API: the watches retry on kube-runtime's backoff timers.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two clusters live, each behind its own stand-in API server: east is the gateway's, west a
/// remote given as a kubeconfig. The gateway is ready with west down; west's endpoints join
/// when it comes up and its changes apply within a second; traffic stays in east until east's
/// endpoint dies; west's outage keeps its last view routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_cluster_endpoints_join_live_and_survive_its_outage() {
    let mut a = echo("east-a");
    let b = echo("west-b");
    let b2 = echo("west-b2");
    let east = cluster_with_one_endpoint(&a).await;
    let west = ApiServer::start().await;
    west.apply_yaml(&[
        WEST_SERVICE,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n-a\n  labels: {topology.kubernetes.io/region: r2, topology.kubernetes.io/zone: w1}\n---\n",
        &slice("b", b.addr, "n-a", true),
    ]
    .concat());
    west.stop();
    let (east_dir, west_dir) = (tempdir(), tempdir());
    let east_config = kubeconfig(east.addr, east_dir.path());
    let west_config = kubeconfig(west.addr, west_dir.path());
    let remote = format!("west={}", west_config.display());
    // West is down: the gateway still becomes ready, on east alone.
    let mut gw = Gw::start_cluster(
        &east_config,
        &[
            "--node",
            "gw-node",
            "--cluster",
            "east",
            "--remote-cluster",
            &remote,
        ],
    );
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    assert_eq!(all_to(&c, addr, 5).await, counts(&[("east-a", 5)]));
    until_west_reported(&c, gw.admin, true).await;

    west.restart().await;
    until_listed(&mut gw, &c, b.addr, "west").await;
    until_west_reported(&c, gw.admin, false).await;
    // West's Node n-a is not east's n-a: its endpoint is in region r2, not in the gateway's
    // zone, and east's endpoint keeps every request.
    assert_eq!(all_to(&c, addr, 10).await, counts(&[("east-a", 10)]));

    let started = Instant::now();
    west.apply_yaml(&slice("b2", b2.addr, "n-a", true));
    until_listed(&mut gw, &c, b2.addr, "west").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a remote change took {:?}",
        started.elapsed()
    );

    a.proc.kill();
    let seen = all_to(&c, addr, 20).await;
    assert_eq!(seen.values().sum::<usize>(), 20);
    assert!(
        seen.keys().all(|k| k == "west-b" || k == "west-b2"),
        "{seen:?}"
    );

    // West goes away: its last view keeps routing, and the gateway says so.
    west.stop();
    until_west_reported(&c, gw.admin, true).await;
    let seen = all_to(&c, addr, 10).await;
    assert!(
        seen.keys().all(|k| k == "west-b" || k == "west-b2"),
        "{seen:?}"
    );
    let metrics = c.get(gw.admin, "admin", "/metrics").await.body;
    assert!(
        metrics.contains("kind=\"EndpointSlice (cluster west)\""),
        "{metrics}"
    );
}

/// Istio's remote secrets: a Secret labelled `istio/multiCluster: "true"` whose key is the
/// cluster's name and value its kubeconfig adds that cluster; deleting it removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_remote_secrets_add_and_remove_clusters() {
    let mut a = echo("east-a");
    let b = echo("west-b");
    let east = cluster_with_one_endpoint(&a).await;
    let west = ApiServer::start().await;
    west.apply_yaml(&[WEST_SERVICE, &slice("b", b.addr, "n-w", true)].concat());
    let (east_dir, west_dir) = (tempdir(), tempdir());
    let east_config = kubeconfig(east.addr, east_dir.path());
    let west_config = std::fs::read_to_string(kubeconfig(west.addr, west_dir.path())).unwrap();
    let mut gw = Gw::start_cluster(
        &east_config,
        &[
            "--node",
            "gw-node",
            "--cluster",
            "east",
            "--remote-secret-namespace",
            "istio-system",
        ],
    );
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    assert_eq!(all_to(&c, addr, 5).await, counts(&[("east-a", 5)]));

    let indented: String = west_config.lines().map(|l| format!("    {l}\n")).collect();
    east.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: istio-remote-secret-west\n  namespace: istio-system\n  labels: {{istio/multiCluster: \"true\"}}\ntype: Opaque\nstringData:\n  west: |\n{indented}"
    ));
    until_listed(&mut gw, &c, b.addr, "west").await;
    a.proc.kill();
    assert_eq!(all_to(&c, addr, 10).await, counts(&[("west-b", 10)]));

    east.delete("v1", "Secret", "istio-system", "istio-remote-secret-west");
    while endpoint_clusters(&c, gw.admin)
        .await
        .contains(&(b.addr.to_string(), "west".to_owned()))
    {
        gw.wait_applied();
    }
}
