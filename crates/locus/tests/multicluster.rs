//! Across clusters, in file mode: an MCS ServiceImport whose EndpointSlices come from two
//! clusters, and the Gloo Mesh locality failover walkthrough with the seed's own
//! VirtualDestination and TrafficPolicy. Real backends, real requests at 50 per second.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use locus::demo::gloo::{cluster_manifests, SEED_MANIFESTS};

/// One MCS EndpointSlice (one endpoint: each backend listens on its own port) of ServiceImport
/// `apps/svc`, exported from `cluster`.
fn mcs_slice(name: &str, cluster: &str, zone: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: apps\n  labels: {{multicluster.kubernetes.io/service-name: svc, multicluster.kubernetes.io/source-cluster: {cluster}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- {{addresses: [\"{}\"], zone: {zone}}}\n---\n",
        addr.port(),
        addr.ip()
    )
}

const IMPORT: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: svc, port: 80}]}]\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: svc, namespace: apps}\nspec:\n  type: ClusterSetIP\n  ports: [{name: http, port: 80, protocol: TCP}]\n---\n# The exported Service of this cluster lends the import its policies: here, active checks.\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps}\nspec:\n  ports: [{name: http, port: 80}]\n---\napiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: hc, namespace: apps}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: svc}]\n  healthCheck:\n    active: {type: HTTP, interval: 100ms, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1, http: {path: /healthz, expectedStatuses: [200]}}\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: west-node\n  labels: {topology.istio.io/cluster: west, topology.kubernetes.io/region: r2, topology.kubernetes.io/zone: r2-a}\n---\n";

/// Sends a request every 20 ms (50 per second) until `n` have been answered; returns who
/// answered each, in order.
async fn at_50_per_second(c: &HttpClient, addr: SocketAddr, host: &str, n: usize) -> Vec<String> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        tick.tick().await;
        seen.push(c.get(addr, host, "/hostname").await.who());
    }
    seen
}

fn errors(seen: &[String]) -> Vec<&String> {
    seen.iter().filter(|w| w.starts_with("status")).collect()
}

/// The local cluster's endpoints take all the traffic; when they die, the remote cluster's
/// take it with no client error; when they come back (active checks), traffic returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_import_keeps_traffic_in_its_cluster_and_fails_over_to_the_other() {
    let mut a1 = echo("a1");
    let mut a2 = echo("a2");
    let b = echo("b");
    let dir = tempdir();
    let m = [
        IMPORT.to_owned(),
        mcs_slice("svc-east-1", "east", "r1-a", a1.addr),
        mcs_slice("svc-east-2", "east", "r1-a", a2.addr),
        mcs_slice("svc-west-1", "west", "r2-a", b.addr),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let out = run_ok(&[
        "check",
        "-f",
        dir.path().to_str().unwrap(),
        "--cluster",
        "east",
        "--locality",
        "r1/r1-a",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cluster: east (from --cluster / CLUSTER_NAME)"),
        "{text}"
    );
    assert!(
        text.contains("ServiceImport apps/svc.clusterset port 80"),
        "{text}"
    );
    assert!(text.contains("cluster west"), "{text}");
    let gw = Gw::start(dir.path(), &["--cluster", "east", "--locality", "r1/r1-a"]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();

    let before = at_50_per_second(&c, addr, "svc.test", 100).await;
    assert_eq!(errors(&before), Vec::<&String>::new());
    assert!(before.iter().all(|w| w == "a1" || w == "a2"), "{before:?}");

    let (p1, p2) = (a1.addr, a2.addr);
    a1.proc.kill();
    a2.proc.kill();
    let during = at_50_per_second(&c, addr, "svc.test", 150).await;
    assert_eq!(errors(&during), Vec::<&String>::new(), "{during:?}");
    assert!(during.iter().all(|w| w == "b"), "{during:?}");

    // The local pods serve again on the same addresses: once their ejection (5 s, Locus's
    // default for refused connections) is over and the active checks pass, traffic is back.
    let _a1 = echo_at("a1", p1);
    let _a2 = echo_at("a2", p2);
    let after = at_50_per_second(&c, addr, "svc.test", 500).await;
    assert_eq!(errors(&after), Vec::<&String>::new(), "{after:?}");
    let back = after
        .iter()
        .position(|w| w != "b")
        .expect("traffic came back");
    assert!(
        after[back..].iter().all(|w| w == "a1" || w == "a2"),
        "{after:?}"
    );
    assert!(after.len() - back >= 100, "back only after {back} requests");

    // The metrics name both clusters.
    let metrics = c.get(gw.admin, "admin", "/metrics").await.body;
    for cluster in ["east", "west"] {
        assert!(
            metrics.contains(&format!(
                "source_cluster=\"east\",destination_cluster=\"{cluster}\""
            )),
            "{metrics}"
        );
    }
    let doc = c.get(gw.admin, "admin", "/debug/endpoints").await.json();
    assert_eq!(doc["gateway"]["cluster"], "east");
    let buckets = doc["services"][0]["buckets"].as_array().unwrap();
    let clusters: Vec<&str> = buckets
        .iter()
        .filter(|b| b["total"].as_u64() > Some(0))
        .map(|b| b["endpoints"][0]["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["east", "west"], "{doc:#}");
}

/// The walkthrough: v1/v2 answer; their pods stop serving (new pods, connection refused) and
/// every request is answered by v3 with no client error; the pods are restored (a rollout with
/// serving pods) and v1/v2 answer again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_destination_plays_the_gloo_mesh_seed() {
    let v1 = echo("reviews-v1");
    let v2 = echo("reviews-v2");
    let v3 = echo("reviews-v3");
    let dir = tempdir();
    write(dir.path(), "seed.yaml", SEED_MANIFESTS);
    write(
        dir.path(),
        "clusters.yaml",
        &cluster_manifests(v1.addr, v2.addr, v3.addr),
    );
    let flags = [
        "--cluster",
        "mgmt-cluster",
        "--node",
        "mgmt-cluster-control-plane",
    ];
    let out = run_ok(&[&["check", "-f", dir.path().to_str().unwrap()], &flags[..]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("VirtualDestination gloo-mesh/bookinfo-global.virtualdestination port 9080"),
        "{text}"
    );
    assert!(!text.contains("not used by Locus"), "{text}");
    assert!(!text.contains("is not one Locus reads"), "{text}");
    let mut gw = Gw::start(dir.path(), &flags);
    let addr = gw.addr(9080);
    let c = HttpClient::default();

    let before = at_50_per_second(&c, addr, "bookinfo", 100).await;
    assert_eq!(errors(&before), Vec::<&String>::new());
    let local = |w: &String| w == "reviews-v1" || w == "reviews-v2";
    assert!(before.iter().all(local), "{before:?}");

    // `sleep 20h`: new pods whose web servers never start. Their addresses refuse connections.
    drop(v1);
    drop(v2);
    gw.apply(
        "clusters.yaml",
        &cluster_manifests(dead_addr(), dead_addr(), v3.addr),
    );
    let during = at_50_per_second(&c, addr, "bookinfo", 150).await;
    assert_eq!(errors(&during), Vec::<&String>::new(), "{during:?}");
    assert!(during.iter().all(|w| w == "reviews-v3"), "{during:?}");
    // consecutiveErrors 1, baseEjectionTime 120s: each dead pod is ejected for two minutes.
    let doc = c.get(gw.admin, "admin", "/debug/endpoints").await.json();
    let ejected: Vec<u64> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["buckets"].as_array().unwrap())
        .flat_map(|b| b["endpoints"].as_array().unwrap())
        .filter_map(|e| e["ejected_for_ms"].as_u64())
        .collect();
    assert_eq!(ejected.len(), 2, "{doc:#}");
    assert!(ejected.iter().all(|ms| *ms > 100_000), "{ejected:?}");

    // Restored: the rollout brings pods that serve.
    let v1 = echo("reviews-v1");
    let v2 = echo("reviews-v2");
    gw.apply(
        "clusters.yaml",
        &cluster_manifests(v1.addr, v2.addr, v3.addr),
    );
    let after = at_50_per_second(&c, addr, "bookinfo", 100).await;
    assert_eq!(errors(&after), Vec::<&String>::new(), "{after:?}");
    assert!(after.iter().all(local), "{after:?}");
}

/// `apps/svc`'s EndpointSlice for one backend, in `cluster` (`None`: the gateway's own) and
/// `network`.
fn net_slice(name: &str, addr: SocketAddr, cluster: Option<&str>, network: &str) -> String {
    let cluster = cluster
        .map(|c| format!(", topology.istio.io/cluster: {c}"))
        .unwrap_or_default();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: apps\n  labels: {{kubernetes.io/service-name: svc, topology.istio.io/network: {network}{cluster}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- {{addresses: [\"{}\"]}}\n---\n",
        addr.port(),
        addr.ip()
    )
}

/// `apps/svc` (PreferClose) as `cluster` defines it.
fn net_service(cluster: Option<&str>) -> String {
    let labels = cluster
        .map(|c| format!("\n  labels: {{topology.istio.io/cluster: {c}}}"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: apps{labels}\nspec:\n  trafficDistribution: PreferClose\n  ports: [{{name: http, port: 80}}]\n---\n")
}

/// The east-west gateway of `network` in `cluster`, listening at `addr`: a Service labelled
/// with the network, on port 15443, and its endpoint.
fn east_west_gateway(cluster: &str, network: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: eastwest\n  namespace: istio-system\n  labels: {{topology.istio.io/cluster: {cluster}, topology.istio.io/network: {network}}}\nspec:\n  ports: [{{name: tls, port: 15443}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: eastwest\n  namespace: istio-system\n  labels: {{kubernetes.io/service-name: eastwest, topology.istio.io/cluster: {cluster}}}\naddressType: IPv4\nports: [{{name: tls, port: {}}}]\nendpoints:\n- {{addresses: [\"{}\"]}}\n---\n",
        addr.port(),
        addr.ip()
    )
}

/// Two networks, a gateway in each. East's endpoint is preferred; when it dies, east sends to
/// west's east-west gateway (never to west's endpoint directly), which answers from its own
/// endpoint. West never passes east-west traffic on: with its own endpoint dead, a hop
/// request gets a 503 even though west could reach east's endpoint through east's gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_networks_are_reached_through_their_east_west_gateway_without_loops() {
    let mut a = echo("east-a");
    let mut b = echo("west-b");
    let west_dir = tempdir();
    write(
        west_dir.path(),
        "west.yaml",
        &[net_service(None), net_slice("b", b.addr, None, "net-west")].concat(),
    );
    let mut west = Gw::start(
        west_dir.path(),
        &[
            "--cluster",
            "west",
            "--network",
            "net-west",
            "--east-west-port",
            "15443",
            "--locality",
            "r2/w1",
        ],
    );
    let west_ew = west.addr(15443);

    let east_dir = tempdir();
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n---\n";
    write(
        east_dir.path(),
        "east.yaml",
        &[
            route.to_owned(),
            net_service(None),
            net_slice("a", a.addr, None, "net-east"),
            net_service(Some("west")),
            net_slice("b", b.addr, Some("west"), "net-west"),
            east_west_gateway("west", "net-west", west_ew),
        ]
        .concat(),
    );
    let east = Gw::start(
        east_dir.path(),
        &[
            "--cluster",
            "east",
            "--network",
            "net-east",
            "--east-west-port",
            "15443",
            "--locality",
            "r1/e1",
        ],
    );
    // West learns of east's endpoint, behind east's gateway.
    west.apply(
        "east.yaml",
        &[
            net_service(Some("east")),
            net_slice("a", a.addr, Some("east"), "net-east"),
            east_west_gateway("east", "net-east", east.addr(15443)),
        ]
        .concat(),
    );

    let c = HttpClient::default();
    // East's table: its own endpoint, and west's gateway standing for west's endpoint.
    let doc = c.get(east.admin, "admin", "/debug/endpoints").await.json();
    let svc = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "apps/svc:80")
        .unwrap();
    let listed: Vec<(String, String)> = svc["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["endpoints"].as_array().unwrap())
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["origin"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 2, "{svc:#}");
    assert_eq!(listed[0].0, a.addr.to_string());
    assert_eq!(listed[1].0, west_ew.to_string());
    assert!(
        listed[1]
            .1
            .contains("east-west gateway of network net-west"),
        "{listed:?}"
    );

    let addr = east.addr(8080);
    let before = at_50_per_second(&c, addr, "svc.test", 50).await;
    assert!(before.iter().all(|w| w == "east-a"), "{before:?}");
    let a_addr = a.addr;
    a.proc.kill();
    let after = at_50_per_second(&c, addr, "svc.test", 100).await;
    assert_eq!(errors(&after), Vec::<&String>::new(), "{after:?}");
    assert!(after.iter().all(|w| w == "west-b"), "{after:?}");

    // No loop: east's endpoint serves again, west's dies. A hop request to west is answered by
    // west's own endpoints only: its one endpoint refuses (502; ejected, it is still the last
    // resort), and no request takes a trip back to east.
    let _a = echo_at("east-a", a_addr);
    b.proc.kill();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let hop = c
            .request(
                "GET",
                west_ew,
                "svc.test",
                "/hostname",
                &[("x-locus-east-west", "apps/svc:80")],
                bytes::Bytes::new(),
            )
            .await;
        statuses.push(hop.status);
    }
    assert_eq!(statuses, [502, 502]);
    // A hop naming a Service west does not have is not routed anywhere.
    let unknown = c
        .request(
            "GET",
            west_ew,
            "svc.test",
            "/hostname",
            &[("x-locus-east-west", "apps/other:80")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
}

/// `locus plan` on a ServiceImport (named as the Service it imports) says which clusters each
/// zone's endpoints run in.
#[test]
fn plan_names_the_clusters_of_each_zone() {
    let dir = tempdir();
    let gateway = IMPORT.replace(
        "metadata: {name: gw, namespace: apps}",
        "metadata: {name: gw, namespace: apps, annotations: {locus.io/fleet: \"r1-a=1\"}}",
    );
    let m = [
        gateway,
        mcs_slice("svc-east-1", "east", "r1-a", "127.0.0.1:9".parse().unwrap()),
        mcs_slice(
            "svc-west-1",
            "west",
            "r2-a",
            "127.0.0.1:10".parse().unwrap(),
        ),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let out = run_ok(&[
        "plan",
        "-f",
        dir.path().to_str().unwrap(),
        "--service",
        "apps/svc",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("endpoints by zone and cluster: r1-a: east 1; r2-a: west 1"),
        "{text}"
    );
}
