//! Locality ranking with EndpointSlices and Nodes, strict mode, HTTPRoute matching and
//! backendRef weights — through a real gateway process and real backends.

mod common;

use std::net::SocketAddr;

use common::*;

fn node(name: &str, region: &str, zone: &str, subzone: &str) -> String {
    let mut labels = format!(
        "    topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: {zone}\n"
    );
    if !subzone.is_empty() {
        labels.push_str(&format!("    topology.istio.io/subzone: {subzone}\n"));
    }
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n{labels}---\n")
}

fn service(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  {extra}\n  ports:\n  - name: http\n    port: 80\n---\n"
    )
}

/// One EndpointSlice holding one endpoint (each backend has its own port on 127.0.0.1).
fn slice(service: &str, name: &str, addr: SocketAddr, node: &str, ready: bool) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: apps\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- name: http\n  port: {port}\nendpoints:\n- addresses: [\"{ip}\"]\n  nodeName: {node}\n  conditions:\n    ready: {ready}\n---\n",
        port = addr.port(),
        ip = addr.ip(),
    )
}

fn gateway_and_route(host: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: apps}}\nspec:\n  gatewayClassName: locus\n  listeners: [{{name: http, protocol: HTTP, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{host}]\n  rules: [{{backendRefs: [{{name: {service}, port: 80}}]}}]\n---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_same_node_with_endpoint_slices_on_several_nodes() {
    let e1 = echo("on-n1");
    let e2 = echo("on-n2-same-subzone");
    let e3 = echo("on-n3-same-zone");
    let e4 = echo("on-n4-other-zone");
    let dir = tempdir();
    let nodes = [
        node("n1", "r", "z1", "s1"),
        node("n2", "r", "z1", "s1"),
        node("n3", "r", "z1", "s2"),
        node("n4", "r", "z2", ""),
    ]
    .concat();
    write(dir.path(), "nodes.yaml", &nodes);
    write(dir.path(), "gw.yaml", &gateway_and_route("svc.test", "svc"));
    write(
        dir.path(),
        "svc.yaml",
        &service("svc", "trafficDistribution: PreferSameNode"),
    );
    let slices = |ready1: bool, with2: bool| {
        let mut s = slice("svc", "s1", e1.addr, "n1", ready1);
        if with2 {
            s += &slice("svc", "s2", e2.addr, "n2", true);
        }
        s += &slice("svc", "s3", e3.addr, "n3", true);
        s += &slice("svc", "s4", e4.addr, "n4", true);
        s
    };
    write(dir.path(), "slices.yaml", &slices(true, true));
    // The gateway's locality comes from its Node's labels (no --locality).
    let mut gw = Gw::start(dir.path(), &["--node", "n1"]);
    let addr = gw.addr(8080);
    let client = HttpClient::default();
    assert_eq!(
        client.count(addr, "svc.test", "/", 20).await,
        counts(&[("on-n1", 20)])
    );

    // The same-node endpoint goes not-ready: same subzone next.
    gw.apply("slices.yaml", &slices(false, true));
    assert_eq!(
        client.count(addr, "svc.test", "/", 20).await,
        counts(&[("on-n2-same-subzone", 20)])
    );

    // And without it: same zone, other subzone.
    gw.apply("slices.yaml", &slices(false, false));
    assert_eq!(
        client.count(addr, "svc.test", "/", 20).await,
        counts(&[("on-n3-same-zone", 20)])
    );

    // PreferClose ignores nodes and subzones: n1 (not ready) aside, n3 is the only same-zone one.
    gw.apply(
        "svc.yaml",
        &service("svc", "trafficDistribution: PreferClose"),
    );
    gw.apply("slices.yaml", &slices(true, true));
    assert_eq!(
        client.count(addr, "svc.test", "/", 30).await,
        counts(&[
            ("on-n1", 10),
            ("on-n2-same-subzone", 10),
            ("on-n3-same-zone", 10)
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_traffic_policy_local_with_and_without_a_same_node_endpoint() {
    let e1 = echo("local");
    let e2 = echo("remote");
    let dir = tempdir();
    write(
        dir.path(),
        "nodes.yaml",
        &[node("n1", "r", "z1", ""), node("n2", "r", "z1", "")].concat(),
    );
    write(dir.path(), "gw.yaml", &gateway_and_route("svc.test", "svc"));
    write(
        dir.path(),
        "svc.yaml",
        &service("svc", "internalTrafficPolicy: Local"),
    );
    write(
        dir.path(),
        "slices.yaml",
        &(slice("svc", "a", e1.addr, "n1", true) + &slice("svc", "b", e2.addr, "n2", true)),
    );
    let mut gw = Gw::start(dir.path(), &["--node", "n1", "--verbose-errors"]);
    let addr = gw.addr(8080);
    let client = HttpClient::default();
    assert_eq!(
        client.count(addr, "svc.test", "/", 20).await,
        counts(&[("local", 20)])
    );

    // The local endpoint goes away: strict never spills, it answers 503.
    gw.apply("slices.yaml", &slice("svc", "b", e2.addr, "n2", true));
    let resp = client.get(addr, "svc.test", "/").await;
    assert_eq!(resp.status, 503);
    assert!(
        resp.body.contains("no ready endpoint runs on node n1"),
        "{}",
        resp.body
    );
    assert_eq!(
        client.count(addr, "svc.test", "/", 20).await,
        counts(&[("status 503", 20)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_host_path_header_and_method_matching() {
    let names = [
        "exact",
        "prefix-api",
        "prefix-api-v2",
        "header",
        "method",
        "wild",
        "catch-all",
        "other-host",
    ];
    let backends: Vec<Echo> = names.iter().map(|n| echo(n)).collect();
    let mut m = String::new();
    m += "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\n";
    for (n, e) in names.iter().zip(&backends) {
        m += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: apps}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n{}",
            slice(n, n, e.addr, "n1", true)
        );
    }
    m += r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: main, namespace: apps}
spec:
  parentRefs: [{name: gw}]
  hostnames: [app.test]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: exact, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: prefix-api, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api/v2/}}]
    backendRefs: [{name: prefix-api-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: X-Canary, value: "yes"}]}]
    backendRefs: [{name: header, port: 80}]
  - matches: [{method: DELETE}]
    backendRefs: [{name: method, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wild, namespace: apps}
spec:
  parentRefs: [{name: gw}]
  hostnames: ["*.wild.test"]
  rules: [{backendRefs: [{name: wild, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other, namespace: apps}
spec:
  parentRefs: [{name: gw}]
  hostnames: [other.test]
  rules: [{matches: [{path: {type: PathPrefix, value: /only}}], backendRefs: [{name: other-host, port: 80}]}]
"#;
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let mut gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    let who = |r: Resp| r.who();
    assert_eq!(who(c.get(addr, "app.test", "/exact").await), "exact");
    // Exact is exact; the rest of the path goes by prefix, by whole segments, longest first.
    assert_eq!(
        who(c.get(addr, "app.test", "/exact/more").await),
        "status 404"
    );
    assert_eq!(who(c.get(addr, "app.test", "/api").await), "prefix-api");
    assert_eq!(
        who(c.get(addr, "app.test", "/api/v1/users").await),
        "prefix-api"
    );
    assert_eq!(
        who(c.get(addr, "app.test", "/api/v2/users").await),
        "prefix-api-v2"
    );
    assert_eq!(who(c.get(addr, "app.test", "/apiary").await), "status 404");
    assert_eq!(
        who(c
            .request(
                "GET",
                addr,
                "app.test",
                "/anything",
                &[("x-canary", "yes")],
                Default::default()
            )
            .await),
        "header"
    );
    assert_eq!(
        who(c
            .request("DELETE", addr, "app.test", "/x", &[], Default::default())
            .await),
        "method"
    );
    // Host matching ignores the port and case; wildcards cover subdomains only.
    assert_eq!(who(c.get(addr, "APP.test:8080", "/exact").await), "exact");
    assert_eq!(who(c.get(addr, "a.wild.test", "/").await), "wild");
    assert_eq!(who(c.get(addr, "a.b.wild.test", "/").await), "wild");
    assert_eq!(who(c.get(addr, "wild.test", "/").await), "status 404");
    assert_eq!(
        who(c.get(addr, "other.test", "/only/x").await),
        "other-host"
    );
    let missing = c.get(addr, "other.test", "/elsewhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.headers["x-locus-error"], "no-route");

    // A catch-all route (no hostnames) serves hosts nothing else claims.
    let catch_all = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: catch, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: catch-all, port: 80}]}]\n";
    gw.apply("catch.yaml", catch_all);
    assert_eq!(who(c.get(addr, "unknown.test", "/").await), "catch-all");
    assert_eq!(who(c.get(addr, "app.test", "/api").await), "prefix-api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_ref_weights_split_traffic() {
    let v1 = echo("v1");
    let v2 = echo("v2");
    let mut m = String::new();
    m += "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\n";
    for (n, e) in [("v1", &v1), ("v2", &v2)] {
        m += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: apps}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n{}",
            slice(n, n, e.addr, "n1", true)
        );
    }
    m += "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs:\n    - {name: v1, port: 80, weight: 3}\n    - {name: v2, port: 80, weight: 1}\n    - {name: missing, port: 80, weight: 0}\n";
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let mut gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();
    // Smooth weighted round robin is exact over whole periods.
    assert_eq!(
        c.count(addr, "any", "/", 400).await,
        counts(&[("v1", 300), ("v2", 100)])
    );

    // A backendRef to a Service that does not exist gets its share as 500s (Gateway API).
    gw.apply(
        "all.yaml",
        &m.replace(
            "{name: missing, port: 80, weight: 0}",
            "{name: missing, port: 80, weight: 4}",
        ),
    );
    let c2 = c.count(addr, "any", "/", 80).await;
    assert_eq!(c2, counts(&[("v1", 30), ("v2", 10), ("status 500", 40)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_namespace_backend_refs_need_a_reference_grant() {
    let b = echo("in-backend-ns");
    let dir = tempdir();
    let manifests = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: apps}}\nspec:\n  gatewayClassName: locus\n  listeners: [{{name: http, protocol: HTTP, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: svc, namespace: backend, port: 80}}]}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: backend}}\nspec:\n  selector: {{app: svc}}\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: e, namespace: backend, labels: {{app: svc}}}}\nspec: {{address: \"{}\", ports: {{http: {}}}}}\n",
        b.addr.ip(),
        b.addr.port()
    );
    write(dir.path(), "all.yaml", &manifests);
    let mut gw = Gw::start(dir.path(), &["--verbose-errors"]);
    let c = HttpClient::default();
    let r = c.get(gw.addr(8080), "svc.test", "/hostname").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.headers["x-locus-error"], "invalid-backend");
    assert!(
        r.body.contains(
            "needs a ReferenceGrant in namespace backend allowing HTTPRoutes from namespace apps"
        ),
        "{}",
        r.body
    );

    // A grant from another namespace does not help; the right one does (v1beta1, as most
    // clusters serve it).
    let grant = |from_ns: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: allow, namespace: backend}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {from_ns}}}]\n  to: [{{group: \"\", kind: Service}}]\n")
    };
    gw.apply("grant.yaml", &grant("elsewhere"));
    assert_eq!(
        c.get(gw.addr(8080), "svc.test", "/hostname").await.status,
        500
    );
    gw.apply("grant.yaml", &grant("apps"));
    let r = c.get(gw.addr(8080), "svc.test", "/hostname").await;
    assert_eq!((r.status, r.body.as_str()), (200, "in-backend-ns"));
}

/// Two Gateways on one port in one process: never merged. The older (then first by name) keeps
/// the port; the other's listener is refused (`PortUnavailable`) and says so, and a request
/// for a route attached only to it does not reach its backend. On another port it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_port_are_never_merged() {
    let a = echo("a");
    let b = echo("b");
    let gw = |name: &str, port: u16| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  gatewayClassName: locus\n  listeners: [{{name: http, protocol: HTTP, port: {port}}}]\n---\n")
    };
    let route = |name: &str, gw: &str, host: &str, svc: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  parentRefs: [{{name: {gw}}}]\n  hostnames: [{host}]\n  rules: [{{backendRefs: [{{name: {svc}, port: 80}}]}}]\n---\n")
    };
    let svc = |name: &str, addr: SocketAddr| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: apps, labels: {{app: {name}}}}}\nspec: {{address: 127.0.0.1, ports: {{http: {}}}}}\n---\n", addr.port())
    };
    let m = [
        gw("gw-a", 8080),
        gw("gw-b", 8080),
        route("ra", "gw-a", "a.test", "svc-a"),
        route("rb", "gw-b", "b.test", "svc-b"),
        svc("svc-a", a.addr),
        svc("svc-b", b.addr),
    ]
    .concat();
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let mut gateway = Gw::start(dir.path(), &[]);
    let c = HttpClient::default();
    let addr = gateway.addr(8080);
    assert_eq!(c.get(addr, "a.test", "/hostname").await.body, "a");
    assert_eq!(c.get(addr, "b.test", "/hostname").await.status, 404);
    let config = c.get(gateway.admin, "admin", "/debug/config").await.json();
    let problems = config["listener_problems"].to_string();
    assert!(
        problems.contains("apps/gw-b") && problems.contains("PortUnavailable"),
        "{problems}"
    );
    assert!(config["warnings"]
        .to_string()
        .contains("held by Gateway apps/gw-a"));

    // On a port of its own, gw-b serves its route.
    gateway.apply("all.yaml", &m.replace(
        "metadata: {name: gw-b, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]",
        "metadata: {name: gw-b, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8081}]",
    ));
    // Printed before the configuration applied (and read while waiting for it).
    let line = gateway
        .proc
        .seen
        .iter()
        .find(|l| l.starts_with("listening port=8081 "))
        .expect("port 8081 bound")
        .clone();
    let addr_b: SocketAddr = line.rsplit('=').next().unwrap().parse().unwrap();
    assert_eq!(c.get(addr_b, "b.test", "/hostname").await.body, "b");
    assert_eq!(c.get(addr_b, "a.test", "/hostname").await.status, 404);
    assert_eq!(c.get(addr, "a.test", "/hostname").await.body, "a");
}
