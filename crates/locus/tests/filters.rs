//! HTTPRoute filters through a real gateway and backend: request and response header edits,
//! redirects, URL rewrites; filters Locus cannot apply answer 500; invalid ones are refused.

mod common;

use common::*;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps}\nspec:\n  selector: {app: svc}\n  ports: [{name: http, port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: shadow, namespace: apps}\nspec:\n  selector: {app: shadow}\n  ports: [{name: http, port: 80}]\n---\n";

/// The shadow Service's one endpoint.
fn shadow_entry(addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: shadow, namespace: apps, labels: {{app: shadow}}}}\nspec: {{address: \"{}\", ports: {{http: {}}}}}\n---\n",
        addr.ip(),
        addr.port()
    )
}

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: apps}}\nspec:\n  gatewayClassName: locus\n  listeners: [{{name: http, protocol: HTTP, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}---\n"
    )
}

const RULES: &str = r#"  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: from-route}]
        add: [{name: x-add, value: added}]
        remove: [x-drop]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-served-by, value: locus}]
        remove: [x-backend]
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: new.test
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        statusCode: 301
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: internal.svc
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}}
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /extension}}]
    filters:
    - type: ExtensionRef
      extensionRef: {group: example.io, kind: Thing, name: x}
    backendRefs: [{name: svc, port: 80}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_redirects_and_rewrites() {
    let backend = echo("backend");
    let shadow = echo("shadow");
    let all = |rules: &str| {
        route(rules) + SERVICE + &entry("e", "r/z", backend.addr) + &shadow_entry(shadow.addr)
    };
    let dir = tempdir();
    write(dir.path(), "all.yaml", &all(RULES));
    let mut gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();

    // Request headers set, added and removed before the backend sees them; the response's
    // edited on the way back.
    let r = c
        .request(
            "GET",
            addr,
            "svc.test",
            "/headers",
            &[
                ("x-set", "from-client"),
                ("x-drop", "secret"),
                ("x-add", "mine"),
            ],
            Default::default(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-set"], "from-route");
    assert!(seen.get("x-drop").is_none(), "{seen}");
    assert_eq!(seen["x-add"], "mine, added", "{seen}");
    assert_eq!(r.headers["x-served-by"], "locus");
    assert!(!r.headers.contains_key("x-backend"));

    // A redirect answered by the gateway itself, the matched prefix replaced, query kept.
    let r = c.get(addr, "svc.test", "/old/page?q=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "https://new.test/new/page?q=1");

    // A rewrite: the backend sees the new host and path.
    let r = c.get(addr, "svc.test", "/api/users?id=7").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["path"], "/v2/users");
    assert_eq!(seen["query"], "id=7");
    assert_eq!(seen["headers"]["host"], "internal.svc");

    // Mirrored: the client gets the backend's answer; the shadow gets a copy of each request.
    for _ in 0..20 {
        assert_eq!(c.get(addr, "svc.test", "/mirror").await.who(), "backend");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let copies = c.get(shadow.addr, "shadow", "/_echo/requests").await.body;
        if copies == "20" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shadow saw {copies} of 20"
        );
        // Copies are sent in the background; poll the shadow's own count.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Not applied yet: 500, never a silent skip.
    let r = c.get(addr, "svc.test", "/extension").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.headers["x-locus-error"], "unsupported-filter");

    // ReplacePrefixMatch needs a PathPrefix match: refused, the last good config keeps serving.
    let bad = RULES.replace(
        "{path: {type: PathPrefix, value: /api}}",
        "{path: {type: Exact, value: /api}}",
    );
    write(dir.path(), "all.yaml", &all(&bad));
    let err = gw.wait_rejected();
    assert!(
        err.contains("spec.rules[2].filters[0].urlRewrite.path.type")
            && err.contains(
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"
            ),
        "{err}"
    );
    assert_eq!(
        c.get(addr, "svc.test", "/api/x").await.json()["path"],
        "/v2/x"
    );

    // A route may not change how the message is framed.
    let framing = RULES.replace(
        "{name: x-set, value: from-route}",
        "{name: content-length, value: \"0\"}",
    );
    write(dir.path(), "all.yaml", &all(&framing));
    let err = gw.wait_rejected();
    assert!(
        err.contains("spec.rules[0].filters[0].requestHeaderModifier.set[0]")
            && err.contains("content-length frames the message"),
        "{err}"
    );
    // Nor rewrite to something that is not a path.
    let relative = RULES.replace("replacePrefixMatch: /v2}", "replacePrefixMatch: v2}");
    write(dir.path(), "all.yaml", &all(&relative));
    let err = gw.wait_rejected();
    assert!(
        err.contains("urlRewrite.path.replacePrefixMatch")
            && err.contains("is not an absolute path"),
        "{err}"
    );
}
