//! HTTPRoute filters through a real gateway and backend: request and response header edits,
//! redirects (every status code), URL rewrites, CORS, backendRef filters; filters Locus cannot
//! apply answer 500; a route with an invalid one is refused alone, the others serve.

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
        set: [{name: x-set, value: from-route}, {name: x-forwarded-proto, value: from-route}]
        add: [{name: x-add, value: added}]
        remove: [x-drop, x-request-id]
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
    // The fields the gateway adds are there for the route's edits to replace or remove.
    assert_eq!(seen["x-forwarded-proto"], "from-route", "{seen}");
    assert!(seen.get("x-request-id").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
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

    // One invalid route never takes the others down: the route is refused (not served, its
    // status Accepted=False) and says why; every other route keeps serving, and `locus check`
    // still fails on it.
    let bad_route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [bad.test]\n  rules:\n  - matches: [{path: {type: Exact, value: /bad}}]\n    filters:\n    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}\n    backendRefs: [{name: svc, port: 80}]\n---\n";
    gw.apply("bad.yaml", bad_route);
    assert_eq!(c.get(addr, "bad.test", "/bad").await.status, 404);
    assert_eq!(
        c.get(addr, "svc.test", "/api/x").await.json()["path"],
        "/v2/x"
    );
    let config = c.get(gw.admin, "admin", "/debug/config").await.json();
    let warnings = config["warnings"].to_string();
    assert!(
        warnings.contains("spec.rules[0].filters[0].urlRewrite.path.type")
            && warnings.contains(
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"
            )
            && warnings.contains("HTTPRoute apps/bad is not served"),
        "{warnings}"
    );
    let out = run(&["check", "-f", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("urlRewrite.path.type"),
        "{err}"
    );

    // A route may not change how the message is framed, nor rewrite to something that is not a
    // path: those routes are refused the same way.
    for (broken, field, why) in [
        (
            bad_route.replace(
                "- {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}",
                "- {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: content-length, value: \"0\"}]}}",
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.set[0]",
            "content-length frames the message",
        ),
        (
            bad_route
                .replace("type: Exact", "type: PathPrefix")
                .replace("replacePrefixMatch: /v2", "replacePrefixMatch: v2"),
            "urlRewrite.path.replacePrefixMatch",
            "is not an absolute path",
        ),
    ] {
        gw.apply("bad.yaml", &broken);
        let warnings = c.get(gw.admin, "admin", "/debug/config").await.json()["warnings"].to_string();
        assert!(warnings.contains(field) && warnings.contains(why), "{warnings}");
        assert_eq!(c.get(addr, "bad.test", "/bad/x").await.status, 404);
        assert_eq!(c.get(addr, "svc.test", "/headers").await.status, 200);
    }
}

const MORE_RULES: &str = r#"  - matches: [{path: {type: PathPrefix, value: /see-other}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /done}, statusCode: 303}}]
  - matches: [{path: {type: PathPrefix, value: /temporary}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: t.test, statusCode: 307}}]
  - matches: [{path: {type: PathPrefix, value: /permanent}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8443, statusCode: 308}}]
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://www.foo.com", "https://*.bar.com"]
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1, x-header-2]
        exposeHeaders: [x-header-3]
        allowCredentials: true
        maxAge: 3600
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /cors-any}}]
    filters: [{type: CORS, cors: {allowOrigins: ["*"], allowMethods: ["*"], allowHeaders: ["*"]}}]
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - name: svc
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend-ref, value: svc}]}}
      - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-via, value: svc-ref}]}}
      - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /inner}}}
    - name: shadow
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend-ref, value: shadow}]}}
  - matches: [{path: {type: PathPrefix, value: /mirror-ref}}]
    backendRefs:
    - name: svc
      port: 80
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_codes_cors_and_backend_ref_filters() {
    let backend = echo("backend");
    let shadow = echo("shadow");
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &(route(MORE_RULES)
            + SERVICE
            + &entry("e", "r/z", backend.addr)
            + &shadow_entry(shadow.addr)),
    );
    let gw = Gw::start(dir.path(), &[]);
    let addr = gw.addr(8080);
    let c = HttpClient::default();

    // Every redirect code of the Gateway API.
    for (path, status, location) in [
        ("/see-other/x", 303, "http://svc.test:8080/done"),
        ("/temporary/x", 307, "http://t.test:8080/temporary/x"),
        ("/permanent/x", 308, "http://svc.test:8443/permanent/x"),
    ] {
        let r = c.get(addr, "svc.test", path).await;
        assert_eq!(
            (r.status, r.headers["location"].to_str().unwrap()),
            (status, location)
        );
    }

    // CORS preflight from an allowed origin (exact, and a wildcard matching several labels):
    // answered by the gateway with the configured lists.
    for origin in ["https://www.foo.com", "https://xpto.www.bar.com"] {
        let r = c
            .request(
                "OPTIONS",
                addr,
                "svc.test",
                "/cors",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-header-1"),
                ],
                Default::default(),
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty(), "answered by the gateway: {}", r.body);
        let h = |n: &str| r.headers[n].to_str().unwrap().to_owned();
        assert_eq!(h("access-control-allow-origin"), origin);
        assert_eq!(h("access-control-allow-methods"), "GET, OPTIONS");
        assert_eq!(h("access-control-allow-headers"), "x-header-1, x-header-2");
        assert_eq!(h("access-control-expose-headers"), "x-header-3");
        assert_eq!(h("access-control-max-age"), "3600");
        assert_eq!(h("access-control-allow-credentials"), "true");
    }
    // A preflight from another origin gets no CORS headers (the browser then refuses).
    let r = c
        .request(
            "OPTIONS",
            addr,
            "svc.test",
            "/cors",
            &[
                ("origin", "https://foobar.com"),
                ("access-control-request-method", "GET"),
            ],
            Default::default(),
        )
        .await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    // Actual requests reach the backend; an allowed origin may read the answer.
    let r = c
        .request(
            "GET",
            addr,
            "svc.test",
            "/cors",
            &[("origin", "https://www.bar.com")],
            Default::default(),
        )
        .await;
    assert_eq!((r.status, r.who()), (200, "backend".to_owned()));
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://www.bar.com"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let r = c
        .request(
            "GET",
            addr,
            "svc.test",
            "/cors",
            &[("origin", "https://foobar.com")],
            Default::default(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    // Wildcards: any origin; the requested method and headers are echoed; no credentials.
    let r = c
        .request(
            "OPTIONS",
            addr,
            "svc.test",
            "/cors-any",
            &[
                ("origin", "https://foobar.com:12345"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-custom"),
            ],
            Default::default(),
        )
        .await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://foobar.com:12345"
    );
    assert_eq!(r.headers["access-control-allow-methods"], "PUT");
    assert_eq!(r.headers["access-control-allow-headers"], "x-custom");
    assert!(!r.headers.contains_key("access-control-allow-credentials"));

    // backendRef filters: each backend's own edits, after the rule's.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let r = c.get(addr, "svc.test", "/split/page").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        let who = doc["name"].as_str().unwrap().to_owned();
        let set_by = if who == "backend" { "svc" } else { "shadow" };
        assert_eq!(doc["headers"]["x-backend-ref"], set_by);
        if who == "backend" {
            assert_eq!(doc["path"], "/inner/page");
            assert_eq!(r.headers["x-via"], "svc-ref");
        } else {
            assert_eq!(doc["path"], "/split/page");
            assert!(!r.headers.contains_key("x-via"));
        }
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A backendRef filter Locus does not apply per backend: that backend's share gets 500.
    let r = c.get(addr, "svc.test", "/mirror-ref").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.headers["x-locus-error"], "invalid-backend");
}
