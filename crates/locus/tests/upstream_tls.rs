//! TLS to endpoints: a BackendTLSPolicy verifying with a private CA from a ConfigMap and
//! sending its hostname as SNI, an endpoint that fails verification ejected (its requests
//! retried elsewhere, or 502 when it is alone), an unresolved CA reference answering 503 while
//! other routes serve, Istio DestinationRule `tls` (SIMPLE, credentialName, sni,
//! subjectAltNames), and gRPC over TLS (ALPN h2). Real gateway processes, real TLS backends.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::tls::*;
use common::*;

/// Service `name` (port 80, `appProtocol` if given) with one WorkloadEntry per address.
fn service(name: &str, app_protocol: &str, addrs: &[SocketAddr]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80{app_protocol}}}]\n---\n"
    );
    for (i, a) in addrs.iter().enumerate() {
        out += &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}-{i}, namespace: apps, labels: {{app: {name}}}}}\nspec: {{address: 127.0.0.1, locality: r/z, ports: {{http: {}}}}}\n---\n",
            a.port()
        );
    }
    out
}

fn route(name: &str, host: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{host}]\n  rules: [{{backendRefs: [{{name: {service}, port: 80}}]}}]\n---\n"
    )
}

fn backend_tls_policy(name: &str, service: &str, config_map: &str, hostname: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n  validation:\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: {config_map}}}]\n    hostname: {hostname}\n---\n"
    )
}

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_policy_verifies_endpoints_and_ejects_those_that_fail() {
    let dir = tempdir();
    let (ca, stranger) = (Ca::new(), Ca::new());
    let good = tls_echo("good", &ca.leaf(&["backend.internal"]), dir.path());
    // A certificate for the right name from a CA the policy does not trust.
    let bad = tls_echo("bad", &stranger.leaf(&["backend.internal"]), dir.path());
    let plain = echo("plain");
    let m = [
        GATEWAY.to_owned(),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: apps}}\ndata:\n  ca.crt: |\n{}---\n",
            indent_pem(&ca.cert_pem(), 4)
        ),
        route("r", "tls.test", "svc"),
        service("svc", "", &[good.addr, bad.addr]),
        backend_tls_policy("svc", "svc", "ca", "backend.internal"),
        route("lone", "lone.test", "lone"),
        service("lone", "", &[bad.addr]),
        backend_tls_policy("lone", "lone", "ca", "backend.internal"),
        // A CA reference that resolves to nothing: 503, never plain text.
        route("broken", "broken.test", "broken"),
        service("broken", "", &[plain.addr]),
        backend_tls_policy("broken", "broken", "missing", "backend.internal"),
        route("plain", "plain.test", "plain"),
        service("plain", "", &[plain.addr]),
        // A sectionName that is no port of the Service: reported, applied nowhere.
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: typo, namespace: apps}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: plain, sectionName: https}]\n  validation: {wellKnownCACertificates: System, hostname: plain.internal}\n---\n".to_owned(),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();

    // Every request is answered by the verified endpoint, over TLS with the policy's SNI: a
    // failed handshake is a connect failure, retried on the other endpoint.
    for _ in 0..40 {
        let r = c.get(addr, "tls.test", "/echo").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        assert_eq!(doc["name"], "good");
        assert_eq!(doc["sni"], "backend.internal");
    }
    // ... and the endpoint that failed verification is ejected.
    let eps = c.get(gw.admin, "admin", "/debug/endpoints").await.json();
    let svc = eps["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"].as_str().unwrap().starts_with("apps/svc"))
        .unwrap_or_else(|| panic!("{eps:#}"));
    let bad_ep = svc["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["endpoints"].as_array().unwrap())
        .find(|e| e["address"] == bad.addr.to_string())
        .unwrap_or_else(|| panic!("{svc:#}"));
    assert!(bad_ep["times_ejected"].as_u64().unwrap() >= 1, "{bad_ep:#}");

    // Alone, it answers 502: the gateway's connect error, not the endpoint's.
    let r = c.get(addr, "lone.test", "/echo").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.headers["x-locus-error"], "upstream-connect");

    // An unresolved CA reference: 503 naming the misconfiguration; the other routes serve.
    let r = c.get(addr, "broken.test", "/echo").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers["x-locus-error"], "upstream-tls-config");
    assert_eq!(c.get(addr, "plain.test", "/hostname").await.body, "plain");

    // `locus check` says what each port does.
    let out = run_ok(&["check", "-f", dir.path().to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("TLS to endpoints: SNI backend.internal, CA from ConfigMap apps/ca"),
        "{text}"
    );
    assert!(text.contains("ConfigMap apps/missing not found"), "{text}");
    assert!(
        text.contains("targetRef Service apps/plain sectionName \"https\": no such port name"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rule_tls_and_grpc_over_tls() {
    let dir = tempdir();
    let ca = Ca::new();
    let backend = tls_echo("dr", &ca.leaf(&["dr.internal"]), dir.path());
    let grpc = tls_echo("grpc", &ca.leaf(&["grpc.internal"]), dir.path());
    let m = [
        GATEWAY.to_owned(),
        // The CA in a Secret named by credentialName; the SNI and the name verified are set
        // apart (sni, subjectAltNames).
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: dr-ca, namespace: apps}}\nstringData:\n  ca.crt: |\n{}---\n",
            indent_pem(&ca.cert_pem(), 4)
        ),
        route("dr", "dr.test", "drsvc"),
        service("drsvc", "", &[backend.addr]),
        // Active checks reach the endpoint the way requests do: over the same TLS.
        "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: hc, namespace: apps}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: drsvc}]\n  healthCheck:\n    active: {type: HTTP, interval: 50ms, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1, http: {path: /hostname, expectedStatuses: [200]}}\n---\n".to_owned(),
        // One request per connection: every request makes a handshake, which resumes the
        // session of an earlier one.
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: drsvc, namespace: apps}\nspec:\n  host: drsvc.apps.svc.cluster.local\n  trafficPolicy:\n    connectionPool: {http: {maxRequestsPerConnection: 1}}\n    tls: {mode: SIMPLE, credentialName: dr-ca, sni: front.example, subjectAltNames: [dr.internal]}\n---\n".to_owned(),
        // A DestinationRule that asks for Istio's mesh certificates: refused, 503.
        route("mesh", "mesh.test", "mesh"),
        service("mesh", "", &[backend.addr]),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: mesh, namespace: apps}\nspec:\n  host: mesh\n  trafficPolicy:\n    portLevelSettings: [{port: {number: 80}, tls: {mode: ISTIO_MUTUAL}}]\n---\n".to_owned(),
        // gRPC to a TLS endpoint: HTTP/2 negotiated by ALPN.
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [grpc.test]\n  rules: [{backendRefs: [{name: grpcsvc, port: 80}]}]\n---\n".to_owned(),
        service("grpcsvc", "", &[grpc.addr]),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: apps}}\ndata:\n  ca.crt: |\n{}---\n",
            indent_pem(&ca.cert_pem(), 4)
        ),
        backend_tls_policy("grpcsvc", "grpcsvc", "ca", "grpc.internal"),
    ]
    .concat();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();

    let mut resumed = 0;
    for _ in 0..6 {
        let r = c.get(addr, "dr.test", "/echo").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        assert_eq!(doc["name"], "dr");
        assert_eq!(doc["sni"], "front.example");
        assert_eq!(doc["version"], "HTTP/1.1");
        resumed += usize::from(doc["tls_resumed"] == true);
    }
    // Every handshake after the first resumes (the session cache belongs to the TLS settings,
    // shared by every worker and kept across reloads); the first too when an earlier
    // connection (an active check) already left a session.
    assert!(resumed >= 5, "{resumed} of 6 handshakes resumed");
    // The backend counts what it answered: wait for a few checks, then they must all have
    // passed (one failure marks the endpoint).
    let answered = || async {
        c.get(addr, "dr.test", "/_echo/requests")
            .await
            .body
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = answered().await;
    for _ in 0..250 {
        if answered().await >= before + 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let eps = c.get(gw.admin, "admin", "/debug/endpoints").await.json();
    let failing: Vec<_> = eps["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["buckets"].as_array().unwrap())
        .flat_map(|b| b["endpoints"].as_array().unwrap())
        .filter(|e| e["active_check_failing"] == true)
        .collect();
    assert!(failing.is_empty(), "{eps:#}");

    let r = c.get(addr, "mesh.test", "/echo").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers["x-locus-error"], "upstream-tls-config");

    let h2 = HttpClient::new(true);
    for _ in 0..5 {
        let r = h2
            .request(
                "POST",
                addr,
                "grpc.test",
                "/echo.Echo/Say",
                &[("content-type", "application/grpc"), ("te", "trailers")],
                Bytes::from_static(b"\0\0\0\0\0"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        assert_eq!(doc["name"], "grpc");
        assert_eq!(doc["version"], "HTTP/2.0");
        assert_eq!(doc["sni"], "grpc.internal");
    }
    assert_no_upstream_errors(gw.admin).await;
}
