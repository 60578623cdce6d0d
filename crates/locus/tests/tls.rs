//! HTTPS listeners: certificates from `kubernetes.io/tls` Secrets chosen by SNI, HTTP/2 by
//! ALPN, 421 for a Host of another listener, rotation without dropping a connection, and the
//! last good certificate kept when a Secret goes bad. Real gateway processes, real TLS.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::tls::*;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A Gateway with HTTPS listeners `a` (a.test, Secret `a`) and `b` (*.b.test, Secret `b`) on
/// port 8443, one HTTPRoute for every host to Service `apps/svc`, whose endpoint is `backend`.
fn manifest(backend: SocketAddr, secrets: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: apps}}\nspec:\n  gatewayClassName: locus\n  listeners:\n  - {{name: a, protocol: HTTPS, port: 8443, hostname: a.test, tls: {{certificateRefs: [{{name: a}}]}}}}\n  - {{name: b, protocol: HTTPS, port: 8443, hostname: \"*.b.test\", tls: {{certificateRefs: [{{name: b}}]}}}}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: apps}}\nspec:\n  selector: {{app: svc}}\n  ports: [{{name: http, port: 80}}]\n---\n\
{}{secrets}",
        entry("we", "r/z", backend)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listeners_pick_certificates_by_sni_speak_h2_and_refuse_misdirected_requests() {
    let backend = echo("a");
    let ca = Ca::new();
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["*.b.test"]));
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &manifest(backend.addr, &(secret("a", &a) + &secret("b", &b))),
    );
    let gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8443);

    // SNI picks the certificate; the request is answered, and told it came over HTTPS.
    let (tls, shown) = connect(&ca, addr, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(shown, a.der);
    let mut send = http1(tls).await;
    let (status, body) = get(&mut send, "a.test", "/echo").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["headers"]["x-forwarded-proto"], "https");
    // A Host that belongs to the other listener, on this connection: 421.
    let (status, body) = get(&mut send, "x.b.test", "/echo").await;
    assert_eq!(status, 421, "{body}");
    // The connection still serves its own host.
    assert_eq!(
        get(&mut send, "a.test", "/hostname").await,
        (200, "a".into())
    );

    // The wildcard listener's certificate for names under it.
    let (tls, shown) = connect(&ca, addr, "x.b.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(shown, b.der);
    assert_eq!(
        get(&mut http1(tls).await, "x.b.test", "/hostname").await.0,
        200
    );

    // A name no listener serves gets no certificate at all.
    assert!(connect(&ca, addr, "c.test", &[b"http/1.1"]).await.is_err());

    // ALPN: a client offering h2 gets HTTP/2.
    let (tls, _) = connect(&ca, addr, "a.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("https://a.test/echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["headers"]["x-forwarded-proto"], "https");
    // h2 connection reuse across names is where 421 matters most.
    let req = http::Request::builder()
        .uri("https://y.b.test/echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 421);

    // Plain HTTP on the HTTPS port is never answered in clear text.
    let c = HttpClient::default();
    assert!(c.try_get(addr, "a.test", "/hostname").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_apply_to_new_handshakes_and_bad_ones_keep_the_last_good() {
    let backend = echo("a");
    let ca = Ca::new();
    let (a1, a2, b) = (
        ca.leaf(&["a.test"]),
        ca.leaf(&["a.test"]),
        ca.leaf(&["*.b.test"]),
    );
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &manifest(backend.addr, &(secret("a", &a1) + &secret("b", &b))),
    );
    let mut gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8443);
    let (tls, shown) = connect(&ca, addr, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(shown, a1.der);
    let mut before = http1(tls).await;
    assert_eq!(get(&mut before, "a.test", "/hostname").await.0, 200);

    // Rotation: new handshakes get the new certificate; the open connection keeps serving.
    gw.apply(
        "all.yaml",
        &manifest(backend.addr, &(secret("a", &a2) + &secret("b", &b))),
    );
    let (_, shown) = connect(&ca, addr, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(shown, a2.der);
    assert_eq!(get(&mut before, "a.test", "/hostname").await.0, 200);

    // A Secret that goes bad (a key that is not a key) is reported, and its last good
    // certificate keeps serving; the other listener is untouched.
    let broken = Leaf {
        cert_pem: a1.cert_pem.clone(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n".into(),
        der: a1.der.clone(),
    };
    gw.apply(
        "all.yaml",
        &manifest(backend.addr, &(secret("a", &broken) + &secret("b", &b))),
    );
    let (tls, shown) = connect(&ca, addr, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(shown, a2.der, "the last good certificate");
    assert_eq!(
        get(&mut http1(tls).await, "a.test", "/hostname").await.0,
        200
    );
    let (_, shown) = connect(&ca, addr, "x.b.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(shown, b.der);
    let c = HttpClient::default();
    let config = c.get(gw.admin, "admin", "/debug/config").await.json();
    let warnings = config["warnings"].to_string();
    assert!(
        warnings.contains("Secret apps/a") && warnings.contains("last good certificate"),
        "{warnings}"
    );
    let problems = config["listener_problems"].to_string();
    assert!(problems.contains("InvalidCertificateRef"), "{problems}");
    assert_eq!(config["listeners"][0]["protocol"], "HTTPS");
    assert!(!config.to_string().contains("PRIVATE KEY"));

    // A Secret that disappears: the same.
    gw.apply("all.yaml", &manifest(backend.addr, &secret("b", &b)));
    let (_, shown) = connect(&ca, addr, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(shown, a2.der);
}

/// An HTTPS listener on a port that also has an HTTP listener is not served, and its routes
/// are not answered in plain text there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_routes_never_leak_onto_a_plain_port() {
    let backend = echo("a");
    let ca = Ca::new();
    let a = ca.leaf(&["a.test"]);
    let text = manifest(backend.addr, &secret("a", &a))
        .replace(
            "  - {name: b, protocol: HTTPS",
            "  - {name: plain, protocol: HTTP, port: 8443}\n  - {name: b, protocol: HTTPS",
        )
        .replace(
            "parentRefs: [{name: gw}]",
            "parentRefs: [{name: gw, sectionName: a}]",
        );
    let dir = tempdir();
    write(dir.path(), "all.yaml", &text);
    let gw = Gw::start(dir.path(), &[]);
    let c = HttpClient::default();
    let r = c.get(gw.addr(8443), "a.test", "/hostname").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let config = c.get(gw.admin, "admin", "/debug/config").await.json();
    assert!(config["listener_problems"]
        .to_string()
        .contains("ProtocolConflict"));
}

/// Client certificates (Gateway `spec.tls.frontend`, mTLS): with `AllowValidOnly` a client
/// without a certificate, or with one of another CA, gets no connection, one with a
/// certificate of the ConfigMap's CA is served; a port in `perPort` with
/// `AllowInsecureFallback` serves clients without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_validated_against_the_gateway_ca() {
    let backend = echo("a");
    let (server_ca, client_ca, stranger) = (Ca::new(), Ca::new(), Ca::new());
    let a = server_ca.leaf(&["a.test"]);
    let indented: String = client_ca
        .cert_pem()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let m = manifest(backend.addr, &secret("a", &a))
        .replace(
            "  listeners:\n  - {name: a, protocol: HTTPS, port: 8443, hostname: a.test, tls: {certificateRefs: [{name: a}]}}\n  - {name: b, protocol: HTTPS, port: 8443, hostname: \"*.b.test\", tls: {certificateRefs: [{name: b}]}}\n",
            "  listeners:\n  - {name: a, protocol: HTTPS, port: 8443, hostname: a.test, tls: {certificateRefs: [{name: a}]}}\n  - {name: lax, protocol: HTTPS, port: 9443, hostname: a.test, tls: {certificateRefs: [{name: a}]}}\n  tls:\n    frontend:\n      default:\n        validation: {caCertificateRefs: [{group: \"\", kind: ConfigMap, name: client-ca}]}\n      perPort:\n      - {port: 9443, tls: {validation: {caCertificateRefs: [{group: \"\", kind: ConfigMap, name: client-ca}], mode: AllowInsecureFallback}}}\n",
        )
        + &format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: client-ca, namespace: apps}}\ndata:\n  ca.crt: |\n{indented}");
    assert!(m.contains("frontend"), "the listeners were replaced");
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let gw = Gw::start(dir.path(), &[]);
    let connect_with = |port: u16, client: Option<&Leaf>| {
        let connector = match client {
            Some(c) => server_ca.connector_with_client_cert(&[b"http/1.1"], c),
            None => server_ca.connector(&[b"http/1.1"]),
        };
        let addr = gw.addr(port);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector
                .connect(
                    rustls::pki_types::ServerName::try_from("a.test").unwrap(),
                    tcp,
                )
                .await?;
            let mut send = http1(tls).await;
            send.ready().await.map_err(std::io::Error::other)?;
            let req = http::Request::builder()
                .uri("/hostname")
                .header("host", "a.test")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = send
                .send_request(req)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<u16, std::io::Error>(resp.status().as_u16())
        }
    };
    let trusted = client_ca.leaf(&["client.test"]);
    let untrusted = stranger.leaf(&["client.test"]);
    assert_eq!(connect_with(8443, Some(&trusted)).await.unwrap(), 200);
    assert!(
        connect_with(8443, None).await.is_err(),
        "no certificate, no service"
    );
    assert!(
        connect_with(8443, Some(&untrusted)).await.is_err(),
        "another CA's certificate"
    );
    // The lax port: served without a certificate, and with a valid one.
    assert_eq!(connect_with(9443, None).await.unwrap(), 200);
    assert_eq!(connect_with(9443, Some(&trusted)).await.unwrap(), 200);
}
