//! The Gateway API's HTTPRoute conformance tests (kubernetes-sigs/gateway-api
//! `conformance/tests/httproute-*.go`, and the Gateway tests about route attachment),
//! re-expressed against a real `locus serve` process in file mode and real echo backends.
//!
//! One test per upstream test, named after its ShortName; each keeps the upstream cases and
//! status checks (see docs/conformance.md for the table and what differs). The fixtures are the
//! upstream base manifests: namespaces `gateway-conformance-infra`, `-app-backend` and
//! `-web-backend` (the last two labelled `gateway-conformance: backend`), Gateways
//! `same-namespace`, `all-namespaces`, `backend-namespaces` (and the HTTPS one when a test
//! needs it), and echo backends `infra-backend-v1..v3`, `app-backend-v1/v2`, `web-backend`,
//! each a Service whose endpoint is a WorkloadEntry pointing at an echo process.
//!
//! What file mode changes:
//! - a cluster gives each Gateway its own address; here each Gateway a test talks to is served
//!   by its own `locus serve --gateway NS/NAME` process on the same manifest directory;
//! - listeners bind ephemeral ports; redirects are computed from the *configured* listener
//!   port (80, 8080, 443), so the upstream expectations on `Location` apply unchanged;
//! - the configuration is applied before the gateway reports ready, so each expectation is
//!   checked once instead of being polled until it holds three times in a row;
//! - status comes from the admin API (`/debug/config`: `route_status`, `listener_status`);
//!   observedGeneration is only written in cluster mode and not checked here;
//! - the echo backend reports its name (the upstream `pod`), which is unique across the
//!   namespaces, so it stands for the upstream's pod and namespace checks; it reports the path
//!   and the query apart (joined again here); mirrored copies are counted by the mirror
//!   backend (`/_echo/requests`) instead of read from pod logs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use common::tls::Ca;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

const INFRA: &str = "gateway-conformance-infra";
const APP: &str = "gateway-conformance-app-backend";
const WEB: &str = "gateway-conformance-web-backend";
const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";
const HTTPS_GW: &str = "same-namespace-with-https-listener";
const CERT: &str = "tls-validity-checks-certificate";

/// Request headers of a case.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Every backend of the base manifests: (namespace, Service and echo name).
const BACKENDS: [(&str, &str); 6] = [
    (INFRA, V1),
    (INFRA, V2),
    (INFRA, V3),
    (APP, "app-backend-v1"),
    (APP, "app-backend-v2"),
    (WEB, "web-backend"),
];

/// The base manifests: namespaces, the three HTTP Gateways, the Services of every backend
/// (infra-backend-v1 also with its h2c and WebSocket ports), and endpoints for the backends
/// that run.
fn base(running: &BTreeMap<String, Echo>) -> String {
    let mut m = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {INFRA}}}\n---\n\
apiVersion: v1\nkind: Namespace\nmetadata: {{name: {APP}, labels: {{gateway-conformance: backend}}}}\n---\n\
apiVersion: v1\nkind: Namespace\nmetadata: {{name: {WEB}, labels: {{gateway-conformance: backend}}}}\n---\n"
    );
    for (name, from) in [
        ("same-namespace", "{from: Same}"),
        ("all-namespaces", "{from: All}"),
        (
            "backend-namespaces",
            "{from: Selector, selector: {matchLabels: {gateway-conformance: backend}}}",
        ),
    ] {
        m += &gateway(
            name,
            &format!("  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {from}}}}}\n"),
        );
    }
    for (ns, name) in BACKENDS {
        let extra = if name == V1 {
            "  - {name: h2c, port: 8081, targetPort: 3001, appProtocol: kubernetes.io/h2c}\n  - {name: ws, port: 8082, targetPort: 3000, appProtocol: kubernetes.io/ws}\n"
        } else {
            ""
        };
        m += &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: 8080, targetPort: 3000}}\n{extra}---\n");
        if let Some(e) = running.get(name) {
            m += &format!("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec: {{address: \"{}\", ports: {{http: {p}, h2c: {p}, ws: {p}}}}}\n---\n", e.addr.ip(), p = e.addr.port());
        }
    }
    m
}

/// A Gateway of class locus in the infra namespace with these listeners (YAML list items).
fn gateway(name: &str, listeners: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: locus\n  listeners:\n{listeners}---\n")
}

/// The upstream HTTPS Gateway: four HTTPS listeners on 443 sharing one certificate.
fn https_gateway() -> String {
    let l = |name: &str, host: &str| {
        format!("  - {{name: {name}, port: 443, protocol: HTTPS, {host}tls: {{certificateRefs: [{{name: {CERT}}}]}}, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n")
    };
    gateway(
        HTTPS_GW,
        &[
            l("https", ""),
            l("https-with-hostname", "hostname: second-example.org, "),
            l(
                "https-with-wildcard-hostname",
                "hostname: \"*.wildcard.org\", ",
            ),
            l(
                "https-with-hostname-matching-wildcard",
                "hostname: fourth-example.wildcard.org, ",
            ),
        ]
        .concat(),
    )
}

/// An HTTPRoute `name` in `ns`; `spec` is the rest of its spec (parentRefs, hostnames, rules),
/// indented by two spaces.
fn route_in(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n")
}

/// An HTTPRoute in the infra namespace attached to Gateway `parent`, with these rules.
fn route(name: &str, parent: &str, rules: &str) -> String {
    route_in(
        INFRA,
        name,
        &format!("  parentRefs: [{{name: {parent}}}]\n  rules:\n{rules}"),
    )
}

/// One test's world: a manifest directory, the echo backends its manifests name, and a
/// gateway serving one Gateway.
struct World {
    dir: tempfile::TempDir,
    gw: Gw,
    addr: SocketAddr,
    c: HttpClient,
    echoes: BTreeMap<String, Echo>,
    /// The CA of the HTTPS Gateway's certificate, when the test has that Gateway.
    ca: Option<Ca>,
}

impl World {
    /// Writes the base manifests and `manifests`, starts an echo for each backend
    /// `manifests` names, and a gateway serving Gateway `gateway` (in infra).
    fn start(gateway: &str, manifests: &str) -> World {
        let echoes: BTreeMap<String, Echo> = BACKENDS
            .iter()
            .filter(|(_, name)| manifests.contains(name))
            .map(|(_, name)| (name.to_string(), echo(name)))
            .collect();
        let dir = tempdir();
        let mut all = base(&echoes) + manifests;
        for (name, e) in &echoes {
            all = all.replace(&format!("@port-of-{name}"), &e.addr.port().to_string());
        }
        let mut ca = None;
        if gateway == HTTPS_GW || manifests.contains(HTTPS_GW) {
            let authority = Ca::new();
            let leaf = authority.leaf(&[
                "example.org",
                "second-example.org",
                "unknown-example.org",
                "*.wildcard.org",
            ]);
            all += &https_gateway();
            all += &locus::tls::generate::secret_manifest(INFRA, CERT, &leaf);
            ca = Some(authority);
        }
        write(dir.path(), "all.yaml", &all);
        let gw = Gw::start(dir.path(), &["--gateway", &format!("{INFRA}/{gateway}")]);
        let addr = *gw.listeners.values().next().expect("a listener");
        World {
            dir,
            gw,
            addr,
            c: HttpClient::default(),
            echoes,
            ca,
        }
    }

    /// Another gateway process on the same manifests, serving Gateway `gateway`: the
    /// stand-in for a second Gateway address.
    fn serve(&self, gateway: &str) -> Gw {
        Gw::start(
            self.dir.path(),
            &["--gateway", &format!("{INFRA}/{gateway}")],
        )
    }

    async fn send(&self, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.c
            .request(method, self.addr, host, path, headers, Bytes::new())
            .await
    }

    /// Sends a request and asserts the answer (see [`check`]).
    async fn expect(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        want: &str,
    ) -> Resp {
        let r = self.send(method, host, path, headers).await;
        check(
            &r,
            method,
            path,
            want,
            &format!("{method} {host}{path} {headers:?}"),
        );
        r
    }

    /// GETs of `(host, path)` with their expected answers.
    async fn expect_gets(&self, cases: &[(&str, &str, &str)]) {
        for (host, path, want) in cases {
            self.expect("GET", host, path, &[], want).await;
        }
    }

    /// The admin API's view of the served configuration.
    async fn config(&self) -> Value {
        config(&self.gw).await
    }

    /// How many requests echo backend `name` has answered.
    async fn answered(&self, name: &str) -> u64 {
        let e = &self.echoes[name];
        self.c
            .get(e.addr, "echo", "/_echo/requests")
            .await
            .body
            .parse()
            .unwrap()
    }
}

async fn config(gw: &Gw) -> Value {
    HttpClient::default()
        .get(gw.admin, "admin", "/debug/config")
        .await
        .json()
}

/// `want` is either a status (`"404"`), or a backend name: then a 200 from that backend,
/// which received the same method and the same path and query.
fn check(r: &Resp, method: &str, path: &str, want: &str, what: &str) {
    match want.parse::<u16>() {
        Ok(status) => assert_eq!(r.status, status, "{what}: {}", r.body),
        Err(_) => {
            assert_eq!(r.status, 200, "{what}: {}", r.body);
            let doc = r.json();
            assert_eq!(doc["name"], want, "{what}");
            assert_eq!(doc["method"], method, "{what}");
            assert_eq!(received_path(&doc), path, "{what}");
        }
    }
}

/// The path and query the echo backend received.
fn received_path(doc: &Value) -> String {
    let path = doc["path"].as_str().unwrap();
    match doc["query"].as_str().unwrap_or("") {
        "" => path.to_owned(),
        q => format!("{path}?{q}"),
    }
}

/// A request header as the backend received it, several values comma-joined without spaces
/// (as the upstream compares them).
fn seen_header(doc: &Value, name: &str) -> Option<String> {
    doc["headers"]
        .get(name.to_ascii_lowercase())
        .map(|v| v.as_str().unwrap().replace(", ", ","))
}

/// A response header, several values comma-joined without spaces.
fn resp_header(r: &Resp, name: &str) -> Option<String> {
    let values: Vec<&str> = r
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    (!values.is_empty()).then(|| values.join(",").replace(", ", ","))
}

/// The status entries of route `route` (`ns/name`) for Gateway `gateway` (in infra).
fn parents<'a>(config: &'a Value, route: &str, gateway: &str) -> Vec<&'a Value> {
    let gateway = format!("{INFRA}/{gateway}");
    let found: Vec<&Value> = config["route_status"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["route"] == route && p["gateway"] == gateway.as_str())
        .collect();
    assert!(
        !found.is_empty(),
        "no status of {route} for {gateway}: {:#}",
        config["route_status"]
    );
    found
}

/// Route `route` (a name in infra, or `ns/name`) is Accepted by Gateway `gateway`, and its
/// ResolvedRefs is True (`resolved` None) or False with that reason.
fn assert_accepted(config: &Value, route: &str, gateway: &str, resolved: Option<&str>) {
    let route = qualified(route);
    for p in parents(config, &route, gateway) {
        assert_eq!(p["accepted"]["status"], "True", "{p:#}");
        match resolved {
            None => assert_eq!(p["resolved_refs"]["status"], "True", "{p:#}"),
            Some(reason) => {
                assert_eq!(p["resolved_refs"]["status"], "False", "{p:#}");
                assert_eq!(p["resolved_refs"]["reason"], reason, "{p:#}");
            }
        }
    }
}

/// Route `route` is not Accepted by Gateway `gateway`, for that reason.
fn assert_not_accepted(config: &Value, route: &str, gateway: &str, reason: &str) {
    let route = qualified(route);
    for p in parents(config, &route, gateway) {
        assert_eq!(p["accepted"]["status"], "False", "{p:#}");
        assert_eq!(p["accepted"]["reason"], reason, "{p:#}");
    }
}

fn qualified(route: &str) -> String {
    if route.contains('/') {
        route.to_owned()
    } else {
        format!("{INFRA}/{route}")
    }
}

/// The listeners of Gateway `gateway` with their attached routes, in order.
fn attached(config: &Value, gateway: &str) -> Vec<(String, u64)> {
    let gateway = format!("{INFRA}/{gateway}");
    config["listener_status"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["gateway"] == gateway.as_str())
        .map(|l| {
            (
                l["listener"].as_str().unwrap().to_owned(),
                l["attached_routes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn listeners(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// Asserts a redirect: its status and `Location`. An expected host of None accepts any host;
/// an expected port of None accepts no port or the default port of the expected scheme.
fn assert_redirect(
    r: &Resp,
    status: u16,
    scheme: &str,
    host: Option<&str>,
    port: Option<u16>,
    path: &str,
    what: &str,
) {
    assert_eq!(r.status, status, "{what}: {:?}", r.headers);
    let location = r.headers["location"].to_str().unwrap();
    let uri: http::Uri = location.parse().unwrap();
    assert_eq!(uri.scheme_str(), Some(scheme), "{what}: {location}");
    if let Some(host) = host {
        assert_eq!(uri.host(), Some(host), "{what}: {location}");
    }
    let default = if scheme == "https" { 443 } else { 80 };
    match port {
        Some(p) => assert_eq!(uri.port_u16(), Some(p), "{what}: {location}"),
        None => assert!(
            uri.port_u16().is_none_or(|p| p == default),
            "{what}: {location}"
        ),
    }
    assert_eq!(uri.path(), path, "{what}: {location}");
}

/// One request over a new TLS connection (SNI `sni`, Host or `:authority` `host`), HTTP/2 when
/// `h2`.
async fn tls_request(
    ca: &Ca,
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    h2: bool,
) -> Resp {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let (tls, _) = common::tls::connect(ca, addr, sni, alpn).await.unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let mut send = common::tls::http1(tls).await;
        let req = http::Request::builder()
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A rule: PathPrefix `prefix` to `backend` port 8080.
fn prefix_rule(prefix: &str, backend: &str) -> String {
    format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
}

fn exact_rule(path: &str, backend: &str) -> String {
    format!("  - matches: [{{path: {{type: Exact, value: {path}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
}

/// A rule: PathPrefix `prefix` answered by a RequestRedirect with these fields (YAML flow).
fn redirect_rule(prefix: &str, redirect: &str) -> String {
    format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{{redirect}}}}}]\n")
}

// ───────────────────────────── core ─────────────────────────────

/// HTTPRouteCrossNamespace: a route in the web-backend namespace attaches to a Gateway whose
/// listener admits routes from namespaces labelled `gateway-conformance: backend`, and
/// reaches the web-backend Service of its own namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_cross_namespace() {
    let w = World::start(
        "backend-namespaces",
        &route_in(
            WEB,
            "cross-namespace",
            &format!("  parentRefs: [{{name: backend-namespaces, namespace: {INFRA}}}]\n  rules: [{{backendRefs: [{{name: web-backend, port: 8080}}]}}]\n"),
        ),
    );
    let cfg = w.config().await;
    assert_accepted(
        &cfg,
        &format!("{WEB}/cross-namespace"),
        "backend-namespaces",
        None,
    );
    w.expect_gets(&[("example.com", "/", "web-backend")]).await;
}

/// HTTPRouteExactPathMatching: Exact matches the whole path, case-sensitively, trailing slash
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_exact_path_matching() {
    let w = World::start(
        "same-namespace",
        &route(
            "exact-matching",
            "same-namespace",
            &(exact_rule("/one", V1) + &exact_rule("/two", V2)),
        ),
    );
    assert_accepted(&w.config().await, "exact-matching", "same-namespace", None);
    w.expect_gets(&[
        ("example.com", "/one", V1),
        ("example.com", "/two", V2),
        ("example.com", "/", "404"),
        ("example.com", "/one/example", "404"),
        ("example.com", "/two/", "404"),
        ("example.com", "/Two", "404"),
    ])
    .await;
}

/// HTTPRouteHTTPSListener: four HTTPS listeners on one port; a route with hostname
/// example.org on all of them, a route without hostnames on the `second-example.org`
/// listener; SNI equals Host. An unknown name is served by the listener without hostname
/// (TLS succeeds) and finds no route: 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_https_listener() {
    let routes = route_in(
        INFRA,
        "httproute-https-test",
        &format!("  parentRefs: [{{name: {HTTPS_GW}}}]\n  hostnames: [example.org]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n"),
    ) + &route_in(
        INFRA,
        "httproute-https-test-no-hostname",
        &format!("  parentRefs: [{{name: {HTTPS_GW}, sectionName: https-with-hostname}}]\n  rules: [{{backendRefs: [{{name: {V2}, port: 8080}}]}}]\n"),
    );
    let w = World::start(HTTPS_GW, &routes);
    let cfg = w.config().await;
    assert_accepted(&cfg, "httproute-https-test", HTTPS_GW, None);
    assert_accepted(&cfg, "httproute-https-test-no-hostname", HTTPS_GW, None);
    let ca = w.ca.as_ref().unwrap();
    for (host, want) in [
        ("example.org", V1),
        ("unknown-example.org", "404"),
        ("second-example.org", V2),
    ] {
        let r = tls_request(ca, w.addr, host, host, "/", false).await;
        check(&r, "GET", "/", want, host);
    }
}

/// HTTPRouteHeaderMatching: header names match case-insensitively; more header matches win
/// over fewer; on a tie the earlier rule wins; several matches of a rule are ORed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_header_matching() {
    let h = |pairs: &str| format!("{{headers: [{pairs}]}}");
    let rule = |matches: &[String], backend: &str| {
        format!(
            "  - matches: [{}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n",
            matches.join(", ")
        )
    };
    let rules = [
        rule(&[h("{name: version, value: one}")], V1),
        rule(&[h("{name: version, value: two}")], V2),
        rule(
            &[h(
                "{name: version, value: two}, {name: color, value: orange}",
            )],
            V1,
        ),
        rule(
            &[
                h("{name: color, value: blue}"),
                h("{name: color, value: green}"),
            ],
            V1,
        ),
        rule(
            &[
                h("{name: color, value: red}"),
                h("{name: color, value: yellow}"),
            ],
            V2,
        ),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("header-matching", "same-namespace", &rules),
    );
    assert_accepted(&w.config().await, "header-matching", "same-namespace", None);
    let cases: &[(Headers, &str)] = &[
        (&[("Version", "one")], V1),
        (&[("Version", "two")], V2),
        (&[("Version", "two"), ("Color", "orange")], V1),
        (&[("Version", "two"), ("Color", "blue")], V2),
        (&[("Color", "orange")], "404"),
        (&[("Some-Other-Header", "one")], "404"),
        (&[("Color", "blue")], V1),
        (&[("Color", "green")], V1),
        (&[("Color", "red")], V2),
        (&[("Color", "yellow")], V2),
        (&[("Color", "purple")], "404"),
    ];
    for (headers, want) in cases {
        w.expect("GET", "example.com", "/", headers, want).await;
    }
}

/// HTTPRouteHostnameIntersection: a route serves only the hostnames it shares with the
/// listeners (specific and wildcard on either side); a route sharing none is not Accepted
/// (NoMatchingListenerHostname) and counts on no listener; the port in Host is ignored. On a
/// Gateway whose listener has no hostname, the route's own hostnames decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_hostname_intersection() {
    let gw = "httproute-hostname-intersection";
    let all_gw = "httproute-hostname-intersection-all";
    let l = |name: &str, host: &str| {
        format!("  - {{name: {name}, port: 80, protocol: HTTP, hostname: \"{host}\", allowedRoutes: {{namespaces: {{from: Same}}}}}}\n")
    };
    let r = |name: &str, hosts: &str, prefix: &str, backend: &str| {
        route_in(
            INFRA,
            name,
            &format!(
                "  parentRefs: [{{name: {gw}}}]\n  hostnames: [{hosts}]\n  rules:\n{}",
                prefix_rule(prefix, backend)
            ),
        )
    };
    let m = [
        gateway(gw, &[l("listener-1", "very.specific.com"), l("listener-2", "*.wildcard.io"), l("listener-3", "*.anotherwildcard.io")].concat()),
        gateway(all_gw, "  - {name: listener-1, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}\n"),
        r("specific-host-matches-listener-specific-host", "non.matching.com, \"*.nonmatchingwildcard.io\", very.specific.com", "/s1", V1),
        r("specific-host-matches-listener-wildcard-host", "non.matching.com, wildcard.io, foo.wildcard.io, bar.wildcard.io, foo.bar.wildcard.io", "/s2", V2),
        r("wildcard-host-matches-listener-specific-host", "non.matching.com, \"*.specific.com\"", "/s3", V3),
        r("wildcard-host-matches-listener-wildcard-host", "\"*.anotherwildcard.io\"", "/s4", V1),
        r("no-intersecting-hosts", "specific.but.wrong.com, wildcard.io", "/s5", V2),
        route_in(INFRA, all_gw, &format!("  parentRefs: [{{name: {all_gw}}}]\n  hostnames: [first.com, sub.first.com, second.com, sub.second.com]\n  rules: [{{backendRefs: [{{name: {V2}, port: 8080}}]}}]\n")),
    ]
    .concat();
    let w = World::start(gw, &m);
    let cfg = w.config().await;
    for name in [
        "specific-host-matches-listener-specific-host",
        "specific-host-matches-listener-wildcard-host",
        "wildcard-host-matches-listener-specific-host",
        "wildcard-host-matches-listener-wildcard-host",
    ] {
        assert_accepted(&cfg, name, gw, None);
    }
    assert_not_accepted(
        &cfg,
        "no-intersecting-hosts",
        gw,
        "NoMatchingListenerHostname",
    );
    // attachedRoutes counts the routes sharing a hostname with the listener.
    assert_eq!(
        attached(&cfg, gw),
        listeners(&[("listener-1", 2), ("listener-2", 1), ("listener-3", 1)])
    );
    let mut cases = vec![
        ("very.specific.com", "/s1", V1),
        ("very.specific.com:1234", "/s1", V1),
        ("very.specific.com", "/non-matching-prefix", "404"),
        ("foo.wildcard.io", "/s2", V2),
        ("bar.wildcard.io", "/s2", V2),
        ("foo.bar.wildcard.io", "/s2", V2),
        ("foo.wildcard.io", "/non-matching-prefix", "404"),
        ("very.specific.com", "/s3", V3),
        ("foo.anotherwildcard.io", "/s4", V1),
        ("bar.anotherwildcard.io", "/s4", V1),
        ("foo.bar.anotherwildcard.io", "/s4", V1),
        ("foo.anotherwildcard.io", "/non-matching-prefix", "404"),
        ("specific.but.wrong.com", "/s5", "404"),
        ("wildcard.io", "/s5", "404"),
    ];
    for (path, hosts) in [
        (
            "/s1",
            &[
                "non.matching.com",
                "foo.nonmatchingwildcard.io",
                "foo.wildcard.io",
            ][..],
        ),
        (
            "/s2",
            &["non.matching.com", "wildcard.io", "very.specific.com"],
        ),
        (
            "/s3",
            &["non.matching.com", "foo.specific.com", "foo.wildcard.io"],
        ),
        (
            "/s4",
            &["anotherwildcard.io", "foo.wildcard.io", "very.specific.com"],
        ),
    ] {
        cases.extend(hosts.iter().map(|h| (*h, path, "404")));
    }
    w.expect_gets(&cases).await;

    // The second Gateway (its own address in a cluster: its own process here).
    let second = w.serve(all_gw);
    for (host, want) in [
        ("first.com", V2),
        ("sub.first.com", V2),
        ("second.com", V2),
        ("sub.second.com", V2),
        ("third.com", "404"),
        ("sub.third.com", "404"),
    ] {
        let r = w.c.get(second.addr(80), host, "/").await;
        check(&r, "GET", "/", want, host);
    }
}

/// HTTPRouteInvalidBackendRefUnknownKind: a backendRef of an unknown group and kind leaves the
/// route Accepted, ResolvedRefs=False (InvalidKind), and its requests answered 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_backend_ref_unknown_kind() {
    let w = World::start(
        "same-namespace",
        &route(
            "invalid-backend-ref-unknown-kind",
            "same-namespace",
            &format!("  - backendRefs: [{{group: unknownkind.example.com, kind: NonExistent, name: {V1}, port: 8080}}]\n"),
        ),
    );
    assert_accepted(
        &w.config().await,
        "invalid-backend-ref-unknown-kind",
        "same-namespace",
        Some("InvalidKind"),
    );
    w.expect_gets(&[("example.com", "/v2", "500")]).await;
}

/// HTTPRouteInvalidCrossNamespaceBackendRef: a backendRef to another namespace without a
/// ReferenceGrant: Accepted, ResolvedRefs=False (RefNotPermitted), 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_cross_namespace_backend_ref() {
    let w = World::start(
        "same-namespace",
        &route(
            "invalid-cross-namespace-backend-ref",
            "same-namespace",
            &format!("  - backendRefs: [{{name: web-backend, namespace: {WEB}, port: 8080}}]\n"),
        ),
    );
    assert_accepted(
        &w.config().await,
        "invalid-cross-namespace-backend-ref",
        "same-namespace",
        Some("RefNotPermitted"),
    );
    w.expect_gets(&[("example.com", "/", "500")]).await;
}

/// HTTPRouteInvalidCrossNamespaceParentRef: a route of another namespace on a listener that
/// admits only its own: not Accepted (NotAllowedByListeners), its refs resolved, and the
/// Gateway counts no attached route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_cross_namespace_parent_ref() {
    let w = World::start(
        "same-namespace",
        &route_in(
            WEB,
            "invalid-cross-namespace-parent-ref",
            &format!("  parentRefs: [{{name: same-namespace, namespace: {INFRA}}}]\n  rules: [{{backendRefs: [{{name: web-backend, port: 8080}}]}}]\n"),
        ),
    );
    let cfg = w.config().await;
    let route = format!("{WEB}/invalid-cross-namespace-parent-ref");
    assert_not_accepted(&cfg, &route, "same-namespace", "NotAllowedByListeners");
    for p in parents(&cfg, &route, "same-namespace") {
        assert_eq!(p["resolved_refs"]["status"], "True", "{p:#}");
    }
    assert_eq!(attached(&cfg, "same-namespace"), listeners(&[("http", 0)]));
}

/// HTTPRouteInvalidNonExistentBackendRef: a backendRef to a Service that does not exist:
/// Accepted, ResolvedRefs=False (BackendNotFound), 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_non_existent_backend_ref() {
    let w = World::start(
        "same-namespace",
        &route(
            "invalid-nonexistent-backend-ref",
            "same-namespace",
            &format!("  - backendRefs: [{{name: nonexistent, namespace: {INFRA}, port: 8080}}]\n"),
        ),
    );
    assert_accepted(
        &w.config().await,
        "invalid-nonexistent-backend-ref",
        "same-namespace",
        Some("BackendNotFound"),
    );
    w.expect_gets(&[("example.com", "/", "500")]).await;
}

/// HTTPRouteInvalidParentRefNotMatchingSectionName: a parentRef naming a listener the Gateway
/// does not have: not Accepted (NoMatchingParent), nothing attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_parent_ref_not_matching_section_name() {
    let w = World::start(
        "same-namespace",
        &route_in(
            INFRA,
            "httproute-listener-not-matching-section-name",
            &format!("  parentRefs: [{{name: same-namespace, port: 80, sectionName: http1}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n"),
        ),
    );
    let cfg = w.config().await;
    assert_not_accepted(
        &cfg,
        "httproute-listener-not-matching-section-name",
        "same-namespace",
        "NoMatchingParent",
    );
    assert_eq!(attached(&cfg, "same-namespace"), listeners(&[("http", 0)]));
}

/// HTTPRouteInvalidReferenceGrant: seven ReferenceGrants each wrong in one way (namespace,
/// from group/kind/namespace, to group/kind/name) permit nothing: Accepted,
/// ResolvedRefs=False (RefNotPermitted), 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_reference_grant() {
    let grant = |name: &str, ns: &str, from: &str, to: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n---\n")
    };
    let from = format!("{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}");
    let to = "{group: \"\", kind: Service, name: web-backend}";
    let m = [
        route(
            "reference-grant",
            "same-namespace",
            &format!("  - backendRefs: [{{name: web-backend, namespace: {WEB}, port: 8080}}]\n"),
        ),
        grant("wrong-namespace", INFRA, &from, to),
        grant(
            "wrong-from-group",
            WEB,
            &from.replace("gateway.networking.k8s.io", "not-the-group.example.com"),
            to,
        ),
        grant(
            "wrong-from-kind",
            WEB,
            &from.replace("HTTPRoute", "Gateway"),
            to,
        ),
        grant(
            "wrong-from-namespace",
            WEB,
            &from.replace(INFRA, "not-the-namespace"),
            to,
        ),
        grant(
            "wrong-to-group",
            WEB,
            &from,
            &to.replace("\"\"", "not-the-group.example.com"),
        ),
        grant(
            "wrong-to-kind",
            WEB,
            &from,
            &to.replace("Service", "Secret"),
        ),
        grant(
            "wrong-to-kind-and-name",
            WEB,
            &from,
            "{group: \"\", kind: Secret, name: not-the-service-youre-looking-for}",
        ),
    ]
    .concat();
    let w = World::start("same-namespace", &m);
    assert_accepted(
        &w.config().await,
        "reference-grant",
        "same-namespace",
        Some("RefNotPermitted"),
    );
    w.expect_gets(&[("example.com", "/", "500")]).await;
}

/// HTTPRouteListenerHostnameMatching: routes without hostnames take their listeners'
/// hostnames; a request goes to the listener whose hostname matches most specifically
/// (foo.bar.com beats *.bar.com); a wildcard does not cover its bare domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_listener_hostname_matching() {
    let gw = "httproute-listener-hostname-matching";
    let l = |name: &str, host: &str| {
        format!("  - {{name: {name}, port: 80, protocol: HTTP, hostname: \"{host}\", allowedRoutes: {{namespaces: {{from: Same}}}}}}\n")
    };
    let r = |name: &str, sections: &[&str], backend: &str| {
        let parents: Vec<String> = sections
            .iter()
            .map(|s| format!("{{name: {gw}, sectionName: {s}}}"))
            .collect();
        route_in(INFRA, name, &format!("  parentRefs: [{}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n", parents.join(", ")))
    };
    let m = [
        gateway(
            gw,
            &[
                l("listener-1", "bar.com"),
                l("listener-2", "foo.bar.com"),
                l("listener-3", "*.bar.com"),
                l("listener-4", "*.foo.com"),
            ]
            .concat(),
        ),
        r("backend-v1", &["listener-1"], V1),
        r("backend-v2", &["listener-2"], V2),
        r("backend-v3", &["listener-3", "listener-4"], V3),
    ]
    .concat();
    let w = World::start(gw, &m);
    let cfg = w.config().await;
    for name in ["backend-v1", "backend-v2", "backend-v3"] {
        assert_accepted(&cfg, name, gw, None);
    }
    w.expect_gets(&[
        ("bar.com", "/", V1),
        ("foo.bar.com", "/", V2),
        ("baz.bar.com", "/", V3),
        ("boo.bar.com", "/", V3),
        ("multiple.prefixes.bar.com", "/", V3),
        ("multiple.prefixes.foo.com", "/", V3),
        ("foo.com", "/", "404"),
        ("no.matching.host", "/", "404"),
    ])
    .await;
}

/// The rules of HTTPRouteMatching and HTTPRouteMatchingAcrossRoutes: PathPrefix `/` or header
/// version=one → v1; PathPrefix `/v2` or header version=two → v2.
fn matching_rule(prefix: &str, version: &str, backend: &str) -> String {
    format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}, {{headers: [{{name: version, value: {version}}}]}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
}

/// HTTPRouteMatching: matches of a rule are ORed; a header match beats a bare `/` prefix;
/// prefixes match whole path segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching() {
    let rules = matching_rule("/", "one", V1) + &matching_rule("/v2", "two", V2);
    let w = World::start(
        "same-namespace",
        &route("matching", "same-namespace", &rules),
    );
    assert_accepted(&w.config().await, "matching", "same-namespace", None);
    let cases: &[(&str, Headers, &str)] = &[
        ("/", &[], V1),
        ("/example", &[], V1),
        ("/", &[("Version", "one")], V1),
        ("/v2", &[], V2),
        ("/v2/example", &[], V2),
        ("/", &[("Version", "two")], V2),
        ("/v2/", &[], V2),
        ("/v2example", &[], V1),
        ("/foo/v2/example", &[], V1),
    ];
    for (path, headers, want) in cases {
        w.expect("GET", "example.com", path, headers, want).await;
    }
}

/// HTTPRouteMatchingAcrossRoutes: the rules of two routes sharing a hostname are merged and
/// ordered by precedence; the second route only covers its own hostname.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching_across_routes() {
    let r = |name: &str, hosts: &str, rules: &str| {
        route_in(INFRA, name, &format!("  parentRefs: [{{name: same-namespace}}]\n  hostnames: [{hosts}]\n  rules:\n{rules}"))
    };
    let m = r(
        "matching-part1",
        "example.com, example.net",
        &matching_rule("/", "one", V1),
    ) + &r(
        "matching-part2",
        "example.com",
        &matching_rule("/v2", "two", V2),
    );
    let w = World::start("same-namespace", &m);
    let cfg = w.config().await;
    assert_accepted(&cfg, "matching-part1", "same-namespace", None);
    assert_accepted(&cfg, "matching-part2", "same-namespace", None);
    let cases: &[(&str, &str, Headers, &str)] = &[
        ("example.com", "/", &[], V1),
        ("example.com", "/example", &[], V1),
        ("example.net", "/example", &[], V1),
        ("example.com", "/example", &[("Version", "one")], V1),
        ("example.com", "/v2", &[], V2),
        ("example.net", "/v2", &[], V1),
        ("example.com", "/v2/example", &[], V2),
        ("example.com", "/", &[("Version", "two")], V2),
    ];
    for (host, path, headers, want) in cases {
        w.expect("GET", host, path, headers, want).await;
    }
}

/// HTTPRouteMultipleGateways: a route shared by two Gateways and one dedicated route on each;
/// each Gateway (its own address) routes only its own routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_multiple_gateways() {
    let m = [
        route_in(
            INFRA,
            "multiple-gateways-shared-route",
            &format!(
                "  parentRefs: [{{name: same-namespace}}, {{name: all-namespaces}}]\n  rules:\n{}",
                prefix_rule("/shared", V1)
            ),
        ),
        route(
            "same-namespace-dedicated-route",
            "same-namespace",
            &prefix_rule("/", V2),
        ),
        route(
            "all-namespaces-dedicated-route",
            "all-namespaces",
            &prefix_rule("/", V3),
        ),
    ]
    .concat();
    let w = World::start("same-namespace", &m);
    let other = w.serve("all-namespaces");
    let (cfg, other_cfg) = (w.config().await, config(&other).await);
    assert_accepted(
        &cfg,
        "multiple-gateways-shared-route",
        "same-namespace",
        None,
    );
    assert_accepted(
        &cfg,
        "same-namespace-dedicated-route",
        "same-namespace",
        None,
    );
    assert_accepted(
        &other_cfg,
        "multiple-gateways-shared-route",
        "all-namespaces",
        None,
    );
    assert_accepted(
        &other_cfg,
        "all-namespaces-dedicated-route",
        "all-namespaces",
        None,
    );
    for (addr, dedicated) in [(w.addr, V2), (other.addr(80), V3)] {
        for (path, want) in [("/shared", V1), ("/", dedicated)] {
            let r = w.c.get(addr, "example.com", path).await;
            check(&r, "GET", path, want, &format!("{addr}{path}"));
        }
    }
}

/// HTTPRouteNoBackendRefs: rules with no backendRefs (omitted or empty) answer 500; that is
/// not a reference error (ResolvedRefs=True); the catch-all rule still forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_no_backend_refs() {
    let rules = "  - matches: [{path: {type: Exact, value: /omitted-no-forward}}]\n  - matches: [{path: {type: Exact, value: /empty-no-forward}}]\n    backendRefs: []\n".to_owned()
        + &prefix_rule("/", V1);
    let w = World::start(
        "same-namespace",
        &route("omitted-backendrefs", "same-namespace", &rules),
    );
    assert_accepted(
        &w.config().await,
        "omitted-backendrefs",
        "same-namespace",
        None,
    );
    w.expect_gets(&[
        ("example.com", "/forward", V1),
        ("example.com", "/omitted-no-forward", "500"),
        ("example.com", "/empty-no-forward", "500"),
    ])
    .await;
}

/// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: a grant for app-backend-v1 only; the
/// rule to app-backend-v2 answers 500 (ResolvedRefs=False, RefNotPermitted) while its sibling
/// rule to app-backend-v1 serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_partially_invalid_via_invalid_reference_grant() {
    let m = format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: reference-grant, namespace: {APP}}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}]\n  to: [{{group: \"\", kind: Service, name: app-backend-v1}}]\n---\n")
        + &route(
            "invalid-reference-grant",
            "same-namespace",
            &format!("  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    backendRefs: [{{name: app-backend-v2, namespace: {APP}, port: 8080}}]\n  - backendRefs: [{{name: app-backend-v1, namespace: {APP}, port: 8080}}]\n"),
        );
    let w = World::start("same-namespace", &m);
    assert_accepted(
        &w.config().await,
        "invalid-reference-grant",
        "same-namespace",
        Some("RefNotPermitted"),
    );
    w.expect_gets(&[
        ("example.com", "/v2", "500"),
        ("example.com", "/", "app-backend-v1"),
    ])
    .await;
}

/// HTTPRoutePathMatchOrder: Exact matches first, then the longest prefix, whatever the order
/// of the rules; prefixes may end with a slash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_path_match_order() {
    let rules = [
        exact_rule("/match", V1),
        exact_rule("/match/exact", V2),
        exact_rule("/match/exact/one", V3),
        prefix_rule("/match/", V3),
        prefix_rule("/match/prefix/", V1),
        prefix_rule("/match/prefix/one", V2),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("path-matching-order", "same-namespace", &rules),
    );
    assert_accepted(
        &w.config().await,
        "path-matching-order",
        "same-namespace",
        None,
    );
    w.expect_gets(&[
        ("example.com", "/match/exact/one", V3),
        ("example.com", "/match/exact", V2),
        ("example.com", "/match", V1),
        ("example.com", "/match/prefix/one/any", V2),
        ("example.com", "/match/prefix/any", V1),
        ("example.com", "/match/any", V3),
    ])
    .await;
}

/// HTTPRouteRedirectHostAndStatus: a hostname redirect answers 302 by default, or the
/// configured 301; scheme, port and path are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_host_and_status() {
    let rules = redirect_rule("/hostname-redirect", "hostname: example.org")
        + &redirect_rule("/host-and-status", "hostname: example.org, statusCode: 301");
    let w = World::start(
        "same-namespace",
        &route("redirect-host-and-status", "same-namespace", &rules),
    );
    for (path, status) in [("/hostname-redirect", 302), ("/host-and-status", 301)] {
        let r = w.send("GET", "example.com", path, &[]).await;
        assert_redirect(&r, status, "http", Some("example.org"), None, path, path);
    }
}

/// HTTPRouteReferenceGrant: a ReferenceGrant lets the route reach a Service of another
/// namespace; once the grant is deleted, the route's requests answer 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_reference_grant() {
    let mut w = World::start(
        "same-namespace",
        &route(
            "reference-grant",
            "same-namespace",
            &format!("  - backendRefs: [{{name: web-backend, namespace: {WEB}, port: 8080}}]\n"),
        ),
    );
    w.gw.apply(
        "grant.yaml",
        &format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: reference-grant, namespace: {WEB}}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}]\n  to: [{{group: \"\", kind: Service, name: web-backend}}]\n"),
    );
    assert_accepted(&w.config().await, "reference-grant", "same-namespace", None);
    w.expect_gets(&[("example.com", "/", "web-backend")]).await;
    w.gw.delete("grant.yaml");
    w.expect_gets(&[("example.com", "/", "500")]).await;
    assert_accepted(
        &w.config().await,
        "reference-grant",
        "same-namespace",
        Some("RefNotPermitted"),
    );
}

/// The header edits of HTTPRouteRequestHeaderModifier (and its backendRef and response
/// variants): (path, set, add, remove), as YAML flow lists.
const HEADER_EDITS: [(&str, &str, &str, &str); 5] = [
    ("/set", "[{name: X-Header-Set, value: set-overwrites-values}]", "[]", "[]"),
    ("/add", "[]", "[{name: X-Header-Add, value: add-appends-values}]", "[]"),
    ("/remove", "[]", "[]", "[X-Header-Remove]"),
    (
        "/multiple",
        "[{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}]",
        "[{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}]",
        "[X-Header-Remove-1, X-Header-Remove-2]",
    ),
    (
        "/case-insensitivity",
        "[{name: X-Header-Set, value: header-set}]",
        "[{name: X-Header-Add, value: header-add}]",
        "[X-Header-Remove]",
    ),
];

/// Rules to v1 editing request headers (`filter` RequestHeaderModifier or
/// ResponseHeaderModifier), on the rule or (`on_backend`) on its backendRef.
fn header_rules(filter: &str, on_backend: bool, edits: &[(&str, &str, &str, &str)]) -> String {
    let key = if filter == "RequestHeaderModifier" {
        "requestHeaderModifier"
    } else {
        "responseHeaderModifier"
    };
    edits
        .iter()
        .map(|(path, set, add, remove)| {
            let f = format!("[{{type: {filter}, {key}: {{set: {set}, add: {add}, remove: {remove}}}}}]");
            if on_backend {
                format!("  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: {V1}, port: 8080, filters: {f}}}]\n")
            } else {
                format!("  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: {f}\n    backendRefs: [{{name: {V1}, port: 8080}}]\n")
            }
        })
        .collect()
}

/// One header case: the request's path and headers, what must be present (exact
/// comma-joined value) and what must be absent.
type HeaderCase<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [(&'a str, &'a str)],
    &'a [&'a str],
);

/// The seven request-header cases, shared by the rule and backendRef variants.
const REQUEST_HEADER_CASES: [HeaderCase; 7] = [
    (
        "/set",
        &[("Some-Other-Header", "val")],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    (
        "/set",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    (
        "/add",
        &[("Some-Other-Header", "val")],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "add-appends-values"),
        ],
        &[],
    ),
    (
        "/add",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value"),
        ],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value,add-appends-values"),
        ],
        &[],
    ),
    (
        "/remove",
        &[("X-Header-Remove", "val")],
        &[],
        &["X-Header-Remove"],
    ),
    (
        "/multiple",
        &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
        ],
        &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        &["X-Header-Remove-1", "X-Header-Remove-2"],
    ),
    (
        "/case-insensitivity",
        &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
            ("Another-Header", "another-header-val"),
        ],
        &[
            ("X-Header-Set", "header-set"),
            ("X-Header-Add", "original-val-add,header-add"),
            ("Another-Header", "another-header-val"),
        ],
        &["x-header-remove"],
    ),
];

/// Sends the request-header cases: each answered by v1, which saw the edited headers.
async fn request_header_cases(w: &World) {
    for (path, sent, present, absent) in REQUEST_HEADER_CASES {
        let r = w.expect("GET", "example.com", path, sent, V1).await;
        let doc = r.json();
        for (name, value) in present {
            assert_eq!(
                seen_header(&doc, name).as_deref(),
                Some(*value),
                "{path} {sent:?}: {name}"
            );
        }
        for name in absent {
            assert_eq!(seen_header(&doc, name), None, "{path} {sent:?}: {name}");
        }
    }
}

/// HTTPRouteRequestHeaderModifier: a rule's RequestHeaderModifier sets (replacing), adds
/// (appending to what the client sent) and removes request headers, names compared
/// case-insensitively.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_header_modifier() {
    let rules = header_rules("RequestHeaderModifier", false, &HEADER_EDITS);
    let w = World::start(
        "same-namespace",
        &route("request-header-modifier", "same-namespace", &rules),
    );
    assert_accepted(
        &w.config().await,
        "request-header-modifier",
        "same-namespace",
        None,
    );
    request_header_cases(&w).await;
}

/// HTTPRouteServiceTypes: backends found through EndpointSlices of a Service without a
/// selector (target port by port name), of a headless Service with a selector, and of a
/// headless Service without one; never through a cluster IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_service_types() {
    let svc = |name: &str, extra: &str, port_name: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n{extra}  ports: [{{name: {port_name}, port: 8080, targetPort: 3000}}]\n---\n")
    };
    // The slices point at infra-backend-v1's echo (its port filled in by World::start).
    let slices = |svc: &str| {
        format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-ip4, namespace: {INFRA}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{name: first-port, port: @port-of-{V1}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-ip6, namespace: {INFRA}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv6\nports: [{{name: first-port, port: @port-of-{V1}}}]\nendpoints: []\n---\n")
    };
    let m = [
        svc("manual-endpointslices", "", "first-port"),
        slices("manual-endpointslices"),
        // The selected endpoint is a WorkloadEntry, whose ports go by name: `http`.
        svc(
            "headless",
            &format!("  clusterIP: None\n  selector: {{app: {V1}}}\n"),
            "http",
        ),
        svc(
            "headless-manual-endpointslices",
            "  clusterIP: None\n",
            "first-port",
        ),
        slices("headless-manual-endpointslices"),
        route(
            "service-types",
            "same-namespace",
            &[
                exact_rule("/manual-endpointslices", "manual-endpointslices"),
                exact_rule("/headless", "headless"),
                exact_rule(
                    "/headless-manual-endpointslices",
                    "headless-manual-endpointslices",
                ),
            ]
            .concat(),
        ),
    ]
    .concat();
    // The headless Service selects infra-backend-v1's WorkloadEntry (of the base manifests).
    let w = World::start("same-namespace", &m);
    assert_accepted(&w.config().await, "service-types", "same-namespace", None);
    w.expect_gets(&[
        ("example.com", "/manual-endpointslices", V1),
        ("example.com", "/headless", V1),
        ("example.com", "/headless-manual-endpointslices", V1),
    ])
    .await;
}

/// HTTPRouteSimpleSameNamespace: a route in the Gateway's namespace reaches its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_simple_same_namespace() {
    let w = World::start(
        "same-namespace",
        &route(
            "gateway-conformance-infra-test",
            "same-namespace",
            &format!("  - backendRefs: [{{name: {V1}, port: 8080}}]\n"),
        ),
    );
    assert_accepted(
        &w.config().await,
        "gateway-conformance-infra-test",
        "same-namespace",
        None,
    );
    w.expect_gets(&[("example.com", "/", V1)]).await;
}

/// HTTPRouteWeight: weights 70/30/0 split 500 requests (sent 10 at a time, half with a random
/// X-Jitter header) within ±0.05 of 0.7 and 0.3; the weight-0 backend gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_weight() {
    let w = World::start(
        "same-namespace",
        &route(
            "weighted-backends",
            "same-namespace",
            &format!("  - backendRefs:\n    - {{name: {V1}, port: 8080, weight: 70}}\n    - {{name: {V2}, port: 8080, weight: 30}}\n    - {{name: {V3}, port: 8080, weight: 0}}\n"),
        ),
    );
    assert_accepted(
        &w.config().await,
        "weighted-backends",
        "same-namespace",
        None,
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for batch in 0..50 {
        let requests = (0..10).map(|i| {
            let jitter = format!("{}", batch * 7919 + i * 104_729);
            let w = &w;
            async move {
                let headers: Vec<(&str, &str)> = if i % 2 == 0 {
                    vec![("X-Jitter", jitter.as_str())]
                } else {
                    vec![]
                };
                w.send("GET", "example.com", "/", &headers).await.who()
            }
        });
        for who in futures::future::join_all(requests).await {
            *seen.entry(who).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (backend, share) in [(V1, 0.7), (V2, 0.3)] {
        let got = seen.get(backend).copied().unwrap_or(0) as f64 / 500.0;
        assert!(
            (got - share).abs() <= 0.05,
            "{backend}: {got} of the traffic, {seen:?}"
        );
    }
}

// ───────────────────────────── extended ─────────────────────────────

/// HTTPRoute303Redirect, HTTPRoute307Redirect, HTTPRoute308Redirect: a redirect answers the
/// configured status code, keeping scheme, port and path.
async fn redirect_code(prefix: &str, code: u16, method: &str) {
    let w = World::start(
        "same-namespace",
        &route(
            &format!("{code}-redirect"),
            "same-namespace",
            &redirect_rule(prefix, &format!("statusCode: {code}")),
        ),
    );
    let r = w.send(method, "example.com", prefix, &[]).await;
    assert_redirect(&r, code, "http", None, None, prefix, prefix);
}

/// HTTPRoute303Redirect: a POST redirected with 303 See Other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_303_redirect() {
    redirect_code("/see-other", 303, "POST").await;
}

/// HTTPRoute307Redirect: 307 Temporary Redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_307_redirect() {
    redirect_code("/temporary", 307, "GET").await;
}

/// HTTPRoute308Redirect: 308 Permanent Redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_308_redirect() {
    redirect_code("/permanent", 308, "GET").await;
}

/// HTTPRouteBackendProtocolH2C: a client speaking HTTP/2 with prior knowledge in clear text
/// to the HTTP listener reaches a Service port of `appProtocol: kubernetes.io/h2c` over h2c.
/// (The upstream backend refuses anything but HTTP/2 there; the echo here reports the version
/// it received instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_protocol_h2c() {
    let w = World::start(
        "same-namespace",
        &route(
            "backend-protocol-h2c",
            "same-namespace",
            &format!("  - backendRefs: [{{name: {V1}, port: 8081}}]\n"),
        ),
    );
    let cfg = w.config().await;
    assert_eq!(
        parents(&cfg, &qualified("backend-protocol-h2c"), "same-namespace")[0]["accepted"]
            ["status"],
        "True"
    );
    let r = HttpClient::new(true)
        .request("GET", w.addr, "example.com", "/", &[], Bytes::new())
        .await;
    check(&r, "GET", "/", V1, "h2c");
    assert_eq!(r.json()["version"], "HTTP/2.0");
}

/// HTTPRouteBackendProtocolWebSocket: a WebSocket opened through the gateway to a Service
/// port of `appProtocol: kubernetes.io/ws` echoes a text and a binary message, three times
/// over. (The upstream echo serves WebSocket at `/ws`; here a WebSocket echo of its own, in
/// the test, stands behind the Service.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_protocol_websocket() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let m = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ws-backend, namespace: {INFRA}}}\nspec:\n  selector: {{app: ws-backend}}\n  ports: [{{name: ws, port: 8082, appProtocol: kubernetes.io/ws}}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ws-backend, namespace: {INFRA}, labels: {{app: ws-backend}}}}\nspec: {{address: 127.0.0.1, ports: {{ws: {port}}}}}\n---\n"
    ) + &route(
        "backend-protocol-ws",
        "same-namespace",
        "  - backendRefs: [{name: ws-backend, port: 8082}]\n",
    );
    let w = World::start("same-namespace", &m);
    assert_accepted(
        &w.config().await,
        "backend-protocol-ws",
        "same-namespace",
        None,
    );
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        let req = http::Request::builder()
            .uri(format!("ws://{}/ws", w.addr))
            .header("host", "example.com")
            .header(
                "origin",
                "ws://gateway/httproute-backend-protocol-websocket",
            )
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header(
                "sec-websocket-key",
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("Websocket Support!")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("Websocket Support!")
        );
        let bytes = vec![1u8, 2, 3, 4, 5, 6, 7];
        ws.send(Message::binary(bytes.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(bytes));
        ws.close(None).await.unwrap();
    }
}

/// HTTPRouteBackendRequestHeaderModifier: the same seven cases as
/// HTTPRouteRequestHeaderModifier, with each RequestHeaderModifier on the backendRef.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_request_header_modifier() {
    let rules = header_rules("RequestHeaderModifier", true, &HEADER_EDITS);
    let w = World::start(
        "same-namespace",
        &route("request-header-modifier", "same-namespace", &rules),
    );
    assert_accepted(
        &w.config().await,
        "request-header-modifier",
        "same-namespace",
        None,
    );
    request_header_cases(&w).await;
}

/// HTTPRouteBackendURLRewrite: a URLRewrite on the backendRef replaces the full path or the
/// matched prefix before the backend sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_url_rewrite() {
    let rule = |prefix: &str, path: &str| {
        format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs: [{{name: {V1}, port: 8080, filters: [{{type: URLRewrite, urlRewrite: {{path: {path}}}}}]}}]\n")
    };
    let rules = rule(
        "/full",
        "{type: ReplaceFullPath, replaceFullPath: /rewritten-full}",
    ) + &rule(
        "/prefix",
        "{type: ReplacePrefixMatch, replacePrefixMatch: /rewritten-prefix}",
    );
    let w = World::start(
        "same-namespace",
        &route("backend-url-rewrite", "same-namespace", &rules),
    );
    for (path, seen) in [
        ("/full/original", "/rewritten-full"),
        ("/prefix/original", "/rewritten-prefix/original"),
    ] {
        let r = w.send("GET", "example.com", path, &[]).await;
        check(&r, "GET", seen, V1, path);
    }
}

/// Comma-separated lists equal as sets, whitespace ignored.
fn same_list(value: Option<String>, want: &[&str]) -> bool {
    let Some(value) = value else { return false };
    let mut got: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    got.sort();
    want.sort();
    got == want
}

/// HTTPRouteCORS: the gateway answers preflights itself (allowed origin, exact or by a
/// wildcard over several labels, echoed back; methods, headers, exposed headers, max age,
/// credentials as configured; `*` lists; no origin echo for disallowed origins) and adds the
/// CORS response headers to forwarded requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_cors() {
    let r = |name: &str, rules: &[(&str, &str)]| {
        let rules: String = rules
            .iter()
            .map(|(prefix, cors)| format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: CORS, cors: {cors}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n"))
            .collect();
        route(name, "same-namespace", &rules)
    };
    let m = [
        r("cors-multiple-origins-methods-headers", &[("/cors-1", r#"{allowOrigins: ["https://www.foo.com", "https://*.bar.com"], allowMethods: [GET, OPTIONS], allowHeaders: [x-header-1, x-header-2], exposeHeaders: [x-header-3, x-header-4], allowCredentials: true, maxAge: 3600}"#)]),
        r("cors-wildcard-methods", &[("/cors-2", r#"{allowOrigins: ["https://www.foo.com"], allowMethods: ["*"]}"#)]),
        r("cors-wildcard-origin", &[("/cors-wildcard-origin", r#"{allowOrigins: ["*"], allowMethods: [PUT], allowCredentials: false}"#)]),
        r("cors-wildcard-methods-headers", &[
            ("/cors-wildcard-methods-headers", r#"{allowOrigins: ["*"], allowMethods: ["*"], allowHeaders: ["*"], allowCredentials: true}"#),
            ("/cors-wildcard-methods-headers-unauth", r#"{allowOrigins: ["*"], allowMethods: ["*"], allowHeaders: ["*"], allowCredentials: false}"#),
        ]),
    ]
    .concat();
    let w = World::start("same-namespace", &m);
    let cfg = w.config().await;
    for name in [
        "cors-multiple-origins-methods-headers",
        "cors-wildcard-methods",
        "cors-wildcard-origin",
        "cors-wildcard-methods-headers",
    ] {
        assert_accepted(&cfg, name, "same-namespace", None);
    }
    let h = |r: &Resp, n: &str| resp_header(r, n);
    let preflight = |r: &Resp, what: &str| {
        assert!(matches!(r.status, 200 | 204), "{what}: {}", r.status);
        assert!(!r.headers.contains_key("x-backend"), "{what}: forwarded");
    };
    // Cases 1-3: allowed origins, exact and by wildcard.
    for origin in [
        "https://www.foo.com",
        "https://www.bar.com",
        "https://xpto.www.bar.com",
    ] {
        let r = w
            .send(
                "OPTIONS",
                "example.com",
                "/cors-1",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "GET"),
                    ("Access-Control-Request-Headers", "x-header-1, x-header-2"),
                ],
            )
            .await;
        preflight(&r, origin);
        assert_eq!(
            h(&r, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        assert!(
            same_list(h(&r, "access-control-allow-methods"), &["GET", "OPTIONS"]),
            "{r:?}"
        );
        assert!(
            same_list(
                h(&r, "access-control-allow-headers"),
                &["x-header-1", "x-header-2"]
            ),
            "{r:?}"
        );
        assert!(
            same_list(
                h(&r, "access-control-expose-headers"),
                &["x-header-3", "x-header-4"]
            ),
            "{r:?}"
        );
        assert_eq!(h(&r, "access-control-max-age").as_deref(), Some("3600"));
        assert_eq!(
            h(&r, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
    }
    // Case 4: a disallowed origin's preflight: refused, or answered without an origin.
    let r = w
        .send(
            "OPTIONS",
            "example.com",
            "/cors-1",
            &[
                ("Origin", "https://foobar.com"),
                ("Access-Control-Request-Method", "GET"),
            ],
        )
        .await;
    assert!(matches!(r.status, 200 | 204 | 403), "{}", r.status);
    assert_eq!(h(&r, "access-control-allow-origin"), None);
    // Answered by the gateway, not forwarded.
    assert_eq!(h(&r, "x-backend"), None);
    // Cases 5-7: actual requests are forwarded; only allowed origins are echoed.
    for (origin, allowed) in [
        ("https://www.foo.com", true),
        ("https://www.bar.com", true),
        ("https://foobar.com", false),
    ] {
        let r = w
            .expect(
                "GET",
                "example.com",
                "/cors-1",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "GET"),
                    ("Access-Control-Request-Headers", "x-header-1, x-header-2"),
                ],
                V1,
            )
            .await;
        assert_eq!(
            h(&r, "access-control-allow-origin").as_deref(),
            allowed.then_some(origin),
            "{origin}"
        );
    }
    // Cases 8-9: any method; no credentials header.
    for _ in 0..2 {
        let r = w
            .send(
                "OPTIONS",
                "example.com",
                "/cors-2",
                &[
                    ("Origin", "https://www.foo.com"),
                    ("Access-Control-Request-Method", "POST"),
                ],
            )
            .await;
        preflight(&r, "/cors-2");
        assert!(
            matches!(
                h(&r, "access-control-allow-methods").as_deref(),
                Some("POST" | "*")
            ),
            "{r:?}"
        );
        assert_eq!(
            h(&r, "access-control-allow-origin").as_deref(),
            Some("https://www.foo.com")
        );
        assert_eq!(h(&r, "access-control-allow-credentials"), None);
    }
    // Cases 10-13: any origin (with a port too).
    for origin in ["https://foobar.com", "https://foobar.com:12345"] {
        let r = w
            .send(
                "OPTIONS",
                "example.com",
                "/cors-wildcard-origin",
                &[("Origin", origin), ("Access-Control-Request-Method", "PUT")],
            )
            .await;
        preflight(&r, origin);
        let acao = h(&r, "access-control-allow-origin");
        assert!(
            acao.as_deref() == Some(origin) || acao.as_deref() == Some("*"),
            "{r:?}"
        );
        assert_eq!(
            h(&r, "access-control-allow-methods").as_deref(),
            Some("PUT")
        );
        assert_eq!(h(&r, "access-control-allow-credentials"), None);
        let r = w
            .expect(
                "PUT",
                "example.com",
                "/cors-wildcard-origin",
                &[("Origin", origin)],
                V1,
            )
            .await;
        let acao = h(&r, "access-control-allow-origin");
        assert!(
            acao.as_deref() == Some(origin) || acao.as_deref() == Some("*"),
            "{r:?}"
        );
        assert_eq!(h(&r, "access-control-allow-credentials"), None);
    }
    // Cases 14-15: wildcards with credentials echo the exact origin, method and headers.
    let ask = [
        ("Origin", "https://other.foo.com"),
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "x-header-1, x-header-2"),
    ];
    let r = w
        .send(
            "OPTIONS",
            "example.com",
            "/cors-wildcard-methods-headers",
            &ask,
        )
        .await;
    preflight(&r, "credentials");
    assert_eq!(
        h(&r, "access-control-allow-origin").as_deref(),
        Some("https://other.foo.com")
    );
    assert_eq!(
        h(&r, "access-control-allow-methods").as_deref(),
        Some("PUT")
    );
    assert!(
        same_list(
            h(&r, "access-control-allow-headers"),
            &["x-header-1", "x-header-2"]
        ),
        "{r:?}"
    );
    assert_eq!(
        h(&r, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let r = w
        .send(
            "OPTIONS",
            "example.com",
            "/cors-wildcard-methods-headers-unauth",
            &ask,
        )
        .await;
    preflight(&r, "no credentials");
    assert!(
        matches!(
            h(&r, "access-control-allow-origin").as_deref(),
            Some("https://other.foo.com" | "*")
        ),
        "{r:?}"
    );
    assert!(
        matches!(
            h(&r, "access-control-allow-methods").as_deref(),
            Some("PUT" | "*")
        ),
        "{r:?}"
    );
    let acah = h(&r, "access-control-allow-headers");
    assert!(
        acah.as_deref() == Some("*") || same_list(acah.clone(), &["x-header-1", "x-header-2"]),
        "{r:?}"
    );
    assert_eq!(h(&r, "access-control-allow-credentials"), None);
    // Cases 16-17: actual requests.
    let r = w
        .expect(
            "GET",
            "example.com",
            "/cors-wildcard-methods-headers",
            &[("Origin", "https://other.foo.com")],
            V1,
        )
        .await;
    assert_eq!(
        h(&r, "access-control-allow-origin").as_deref(),
        Some("https://other.foo.com")
    );
    assert_eq!(
        h(&r, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let r = w
        .expect(
            "GET",
            "example.com",
            "/cors-wildcard-methods-headers-unauth",
            &[("Origin", "https://other.foo.com")],
            V1,
        )
        .await;
    assert!(
        matches!(
            h(&r, "access-control-allow-origin").as_deref(),
            Some("https://other.foo.com" | "*")
        ),
        "{r:?}"
    );
    assert_eq!(h(&r, "access-control-allow-credentials"), None);
}

/// HTTPRouteHTTPSListenerDetectMisdirectedRequests: over HTTP/2 and TLS, a request whose Host
/// belongs to another listener than the one its SNI chose is answered 421; a Host no more
/// specific listener claims is routed normally on the listener without hostname.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_https_listener_detect_misdirected_requests() {
    let r = |name: &str, section: &str, hosts: &str, backend: &str| {
        route_in(
            INFRA,
            name,
            &format!(
                "  parentRefs: [{{name: {HTTPS_GW}, sectionName: {section}}}]\n{hosts}  rules:\n{}",
                prefix_rule("/detect-misdirected-requests", backend)
            ),
        )
    };
    let m = [
        r("test-1", "https", "  hostnames: [example.org]\n", V1),
        r("test-2", "https-with-hostname", "", V2),
        r("test-3", "https-with-wildcard-hostname", "", V3),
        r("test-4", "https-with-hostname-matching-wildcard", "", V1),
    ]
    .concat();
    let w = World::start(HTTPS_GW, &m);
    let cfg = w.config().await;
    for name in ["test-1", "test-2", "test-3", "test-4"] {
        assert_accepted(&cfg, name, HTTPS_GW, None);
    }
    let ca = w.ca.as_ref().unwrap();
    for (sni, host, want) in [
        ("example.org", "example.org", V1),
        ("example.org", "second-example.org", "421"),
        ("example.org", "unknown-example.org", "404"),
        ("second-example.org", "second-example.org", V2),
        ("second-example.org", "example.org", "421"),
        ("second-example.org", "unknown-example.org", "421"),
        (
            "third-example.wildcard.org",
            "third-example.wildcard.org",
            V3,
        ),
        (
            "third-example.wildcard.org",
            "fith-example.wildcard.org",
            V3,
        ),
        (
            "third-example.wildcard.org",
            "fourth-example.wildcard.org",
            "421",
        ),
        ("third-example.wildcard.org", "second-example.org", "421"),
        ("third-example.wildcard.org", "unknown-example.org", "421"),
        (
            "fourth-example.wildcard.org",
            "fourth-example.wildcard.org",
            V1,
        ),
        (
            "fourth-example.wildcard.org",
            "fith-example.wildcard.org",
            "421",
        ),
        ("unknown-example.org", "example.org", V1),
        ("unknown-example.org", "unknown-example.org", "404"),
    ] {
        let path = "/detect-misdirected-requests";
        let r = tls_request(ca, w.addr, sni, host, path, true).await;
        check(&r, "GET", path, want, &format!("SNI {sni}, Host {host}"));
    }
}

/// HTTPRouteInvalidParentRefNotMatchingListenerPort: a parentRef port no listener has: not
/// Accepted (NoMatchingParent), refs resolved, nothing attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_parent_ref_not_matching_listener_port() {
    let w = World::start(
        "same-namespace",
        &route_in(INFRA, "httproute-listener-not-matching-route-port", &format!("  parentRefs: [{{name: same-namespace, port: 81}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n")),
    );
    let cfg = w.config().await;
    assert_not_accepted(
        &cfg,
        "httproute-listener-not-matching-route-port",
        "same-namespace",
        "NoMatchingParent",
    );
    for p in parents(
        &cfg,
        &qualified("httproute-listener-not-matching-route-port"),
        "same-namespace",
    ) {
        assert_eq!(p["resolved_refs"]["status"], "True", "{p:#}");
    }
    assert_eq!(attached(&cfg, "same-namespace"), listeners(&[("http", 0)]));
}

/// HTTPRouteInvalidParentRefSectionNameNotMatchingPort: the section exists but not on the
/// parentRef's port: not Accepted (NoMatchingParent), nothing attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_parent_ref_section_name_not_matching_port() {
    let gw = "gateway-with-one-not-matching-port-and-section-name-route";
    let m = gateway(gw, "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: All}}}\n")
        + &route_in(INFRA, "httproute-listener-section-name-not-matching-port", &format!("  parentRefs: [{{name: {gw}, sectionName: http, port: 81}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n"));
    let w = World::start(gw, &m);
    let cfg = w.config().await;
    assert_not_accepted(
        &cfg,
        "httproute-listener-section-name-not-matching-port",
        gw,
        "NoMatchingParent",
    );
    assert_eq!(attached(&cfg, gw), listeners(&[("http", 0)]));
}

/// HTTPRouteListenerPortMatching: a parentRef port attaches a route to every listener on that
/// port (and, with a sectionName, to that one only); Host is matched without its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_listener_port_matching() {
    let gw = "httproute-listener-port-matching";
    let l = |name: &str, port: u16, host: &str| {
        format!("  - {{name: {name}, port: {port}, protocol: HTTP, hostname: {host}, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n")
    };
    let r = |name: &str, parent: &str, backend: &str| {
        route_in(INFRA, name, &format!("  parentRefs: [{{name: {gw}, {parent}}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"))
    };
    let m = [
        gateway(
            gw,
            &[
                l("listener-1", 80, "foo.com"),
                l("listener-2", 8080, "foo.com"),
                l("listener-3", 8080, "bar.com"),
                l("listener-4", 8090, "foo.com"),
                l("listener-5", 8090, "bar.com"),
            ]
            .concat(),
        ),
        r("backend-v1", "port: 80", V1),
        r("backend-v2", "port: 8080", V2),
        r("backend-v3", "port: 8090, sectionName: listener-4", V3),
    ]
    .concat();
    let w = World::start(gw, &m);
    let cfg = w.config().await;
    for name in ["backend-v1", "backend-v2", "backend-v3"] {
        assert_accepted(&cfg, name, gw, None);
    }
    for (port, host, want) in [
        (80, "foo.com", V1),
        (8080, "foo.com:8080", V2),
        (8080, "bar.com:8080", V2),
        (8090, "foo.com:8090", V3),
        (8090, "bar.com:8090", "404"),
    ] {
        let r = w.c.get(w.gw.addr(port), host, "/").await;
        check(&r, "GET", "/", want, host);
    }
}

/// HTTPRouteMethodMatching: method matches (HEAD is not GET); path beats method, method beats
/// headers; the backend receives the same method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_method_matching() {
    let rule = |matches: &str, backend: &str| {
        format!("  - matches: [{matches}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
    };
    let rules = [
        rule("{method: POST}", V1),
        rule("{method: GET}", V2),
        rule("{path: {type: PathPrefix, value: /path1}, method: GET}", V1),
        rule("{headers: [{name: version, value: one}], method: PUT}", V2),
        rule("{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], method: POST}", V3),
        rule("{path: {type: PathPrefix, value: /path3}, method: PATCH}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], method: DELETE}", V1),
        rule("{path: {type: PathPrefix, value: /path5}}", V1),
        rule("{method: PATCH}", V2),
        rule("{headers: [{name: version, value: four}]}", V3),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("method-matching", "same-namespace", &rules),
    );
    assert_accepted(&w.config().await, "method-matching", "same-namespace", None);
    let cases: &[(&str, &str, Headers, &str)] = &[
        ("POST", "/", &[], V1),
        ("GET", "/", &[], V2),
        ("HEAD", "/", &[], "404"),
        ("GET", "/path1", &[], V1),
        ("PUT", "/", &[("version", "one")], V2),
        ("POST", "/path2", &[("version", "two")], V3),
        ("PATCH", "/path3", &[], V1),
        ("DELETE", "/path4", &[("version", "three")], V1),
        ("PUT", "/", &[], "404"),
        ("DELETE", "/path4", &[], "404"),
        ("PATCH", "/path5", &[], V1),
        ("PATCH", "/", &[("version", "four")], V2),
    ];
    for (method, path, headers, want) in cases {
        w.expect(method, "example.com", path, headers, want).await;
    }
}

/// HTTPRouteNamedRule: a rule may have a `name`; named and unnamed rules both serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_named_rule() {
    let rules = format!("  - name: named-rule\n    matches: [{{path: {{type: PathPrefix, value: /named}}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n") + &prefix_rule("/unnamed", V2);
    let w = World::start(
        "same-namespace",
        &route("http-named-rules", "same-namespace", &rules),
    );
    let cfg = w.config().await;
    assert_accepted(&cfg, "http-named-rules", "same-namespace", None);
    assert!(
        !cfg["warnings"].to_string().contains("name"),
        "{}",
        cfg["warnings"]
    );
    w.expect_gets(&[
        ("example.com", "/named", V1),
        ("example.com", "/unnamed", V2),
    ])
    .await;
}

/// HTTPRouteQueryParamMatching: query parameter matches are exact and case-sensitive, ANDed
/// within a match, ORed across matches; path beats query, header beats query; the backend
/// receives the query unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_query_param_matching() {
    let q = |pairs: &str| format!("queryParams: [{pairs}]");
    let rule = |matches: &str, backend: &str| {
        format!("  - matches: [{matches}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
    };
    let rules = [
        rule(&format!("{{{}}}", q("{name: animal, value: whale}")), V1),
        rule(&format!("{{{}}}", q("{name: animal, value: dolphin}")), V2),
        rule(&format!("{{{}}}, {{{}}}", q("{name: animal, value: dolphin}, {name: color, value: blue}"), q("{name: ANIMAL, value: Whale}")), V3),
        rule(&format!("{{path: {{type: PathPrefix, value: /path1}}, {}}}", q("{name: animal, value: whale}")), V1),
        rule(&format!("{{headers: [{{name: version, value: one}}], {}}}", q("{name: animal, value: whale}")), V2),
        rule(&format!("{{path: {{type: PathPrefix, value: /path2}}, headers: [{{name: version, value: two}}], {}}}", q("{name: animal, value: whale}")), V3),
        rule(&format!("{{path: {{type: PathPrefix, value: /path3}}, {}}}, {{path: {{type: PathPrefix, value: /path4}}, headers: [{{name: version, value: three}}], {}}}", q("{name: animal, value: shark}"), q("{name: animal, value: kraken}")), V1),
        rule("{path: {type: PathPrefix, value: /path5}}", V1),
        rule(&format!("{{{}}}", q("{name: animal, value: hydra}")), V2),
        rule("{headers: [{name: version, value: four}]}", V3),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("query-param-matching", "same-namespace", &rules),
    );
    assert_accepted(
        &w.config().await,
        "query-param-matching",
        "same-namespace",
        None,
    );
    let cases: &[(&str, Headers, &str)] = &[
        ("/?animal=whale", &[], V1),
        ("/?animal=dolphin", &[], V2),
        ("/?animal=dolphin&color=blue", &[], V3),
        ("/?ANIMAL=Whale", &[], V3),
        ("/?animal=whale&otherparam=irrelevant", &[], V1),
        ("/?animal=dolphin&color=yellow", &[], V2),
        ("/?color=blue", &[], "404"),
        ("/?animal=dog", &[], "404"),
        ("/?animal=whaledolphin", &[], "404"),
        ("/", &[], "404"),
        ("/path1?animal=whale", &[], V1),
        ("/?animal=whale", &[("version", "one")], V2),
        ("/path2?animal=whale", &[("version", "two")], V3),
        ("/path3?animal=shark", &[], V1),
        ("/path4?animal=kraken", &[("version", "three")], V1),
        ("/?animal=shark", &[], "404"),
        ("/path4?animal=kraken", &[], "404"),
        ("/path5?animal=hydra", &[], V1),
        ("/?animal=hydra", &[("version", "four")], V3),
    ];
    for (path, headers, want) in cases {
        w.expect("GET", "example.com", path, headers, want).await;
    }
}

/// HTTPRouteRedirectPath: redirects replacing the matched prefix or the full path, alone or
/// with a hostname or a status code; prefixes match whole segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_path() {
    let prefix = "path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}";
    let full = "path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}";
    let rules = [
        redirect_rule(
            "/original-prefix",
            "path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}",
        ),
        redirect_rule(
            "/full",
            "path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}",
        ),
        redirect_rule(
            "/path-and-host",
            &format!("hostname: example.org, {prefix}"),
        ),
        redirect_rule("/path-and-status", &format!("{prefix}, statusCode: 301")),
        redirect_rule(
            "/full-path-and-host",
            &format!("hostname: example.org, {full}"),
        ),
        redirect_rule("/full-path-and-status", &format!("{full}, statusCode: 301")),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("redirect-path", "same-namespace", &rules),
    );
    for (path, status, host, location) in [
        (
            "/original-prefix/lemon",
            302,
            None,
            "/replacement-prefix/lemon",
        ),
        ("/full/path/original", 302, None, "/full-path-replacement"),
        (
            "/path-and-host",
            302,
            Some("example.org"),
            "/replacement-prefix",
        ),
        ("/path-and-status", 301, None, "/replacement-prefix"),
        (
            "/full-path-and-host",
            302,
            Some("example.org"),
            "/replacement-full",
        ),
        ("/full-path-and-status", 301, None, "/replacement-full"),
    ] {
        let r = w.send("GET", "example.com", path, &[]).await;
        assert_redirect(&r, status, "http", host, None, location, path);
    }
}

/// HTTPRouteRedirectPort: redirects to another port, alone or with a hostname and a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_port() {
    let rules = [
        redirect_rule("/port", "port: 8083"),
        redirect_rule("/port-and-host", "hostname: example.org, port: 8083"),
        redirect_rule("/port-and-status", "port: 8083, statusCode: 301"),
        redirect_rule(
            "/port-and-host-and-status",
            "port: 8083, hostname: example.org, statusCode: 302",
        ),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("redirect-port", "same-namespace", &rules),
    );
    for (path, status, host) in [
        ("/port", 302, None),
        ("/port-and-host", 302, Some("example.org")),
        ("/port-and-status", 301, None),
        ("/port-and-host-and-status", 302, Some("example.org")),
    ] {
        let r = w.send("GET", "example.com", path, &[]).await;
        assert_redirect(&r, status, "http", host, Some(8083), path, path);
    }
}

/// Redirect rules to example.org whose scheme and port are spelled in the path:
/// `/scheme-{nil|http|https}-and-port-{nil|N}`.
fn scheme_port_rules(paths: &[&str]) -> String {
    paths
        .iter()
        .map(|path| {
            let rest = path.strip_prefix("/scheme-").unwrap();
            let (scheme, port) = rest.split_once("-and-port-").unwrap();
            let mut fields = "hostname: example.org".to_owned();
            if scheme != "nil" {
                fields += &format!(", scheme: {scheme}");
            }
            if port != "nil" {
                fields += &format!(", port: {port}");
            }
            redirect_rule(path, &fields)
        })
        .collect()
}

/// HTTPRouteRedirectPortAndScheme: with no port given, a redirect keeps the listener's port
/// when the scheme stays, and takes the new scheme's default port when it changes; a
/// default port is left out. On HTTP listeners on 80 and 8080 and an HTTPS listener on 443.
/// (The listeners bind ephemeral ports here; redirects go by the configured ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_port_and_scheme() {
    let on_80 = [
        "/scheme-nil-and-port-nil",
        "/scheme-nil-and-port-80",
        "/scheme-nil-and-port-8080",
        "/scheme-https-and-port-nil",
        "/scheme-https-and-port-443",
        "/scheme-https-and-port-8443",
    ];
    let on_8080 = [
        "/scheme-nil-and-port-nil",
        "/scheme-nil-and-port-80",
        "/scheme-https-and-port-nil",
    ];
    let on_443 = [
        "/scheme-nil-and-port-nil",
        "/scheme-nil-and-port-443",
        "/scheme-nil-and-port-8443",
        "/scheme-http-and-port-nil",
        "/scheme-http-and-port-80",
        "/scheme-http-and-port-8080",
    ];
    let gw_8080 = "same-namespace-with-http-listener-on-8080";
    let m = [
        gateway(gw_8080, "  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}\n"),
        route("http-route-for-listener-on-port-80", "same-namespace", &scheme_port_rules(&on_80)),
        route("http-route-for-listener-on-port-8080", gw_8080, &scheme_port_rules(&on_8080)),
        route("http-route-for-listener-on-port-443", HTTPS_GW, &scheme_port_rules(&on_443)),
    ]
    .concat();
    let w = World::start("same-namespace", &m);
    let g8080 = w.serve(gw_8080);
    let g443 = w.serve(HTTPS_GW);
    let cases: &[(&str, &str, Option<u16>)] = &[
        ("/scheme-nil-and-port-nil", "http", None),
        ("/scheme-nil-and-port-80", "http", None),
        ("/scheme-nil-and-port-8080", "http", Some(8080)),
        ("/scheme-https-and-port-nil", "https", None),
        ("/scheme-https-and-port-443", "https", None),
        ("/scheme-https-and-port-8443", "https", Some(8443)),
    ];
    for (path, scheme, port) in cases {
        let r = w.send("GET", "example.org", path, &[]).await;
        assert_redirect(
            &r,
            302,
            scheme,
            Some("example.org"),
            *port,
            path,
            &format!(":80{path}"),
        );
    }
    for (path, scheme, port) in [
        ("/scheme-nil-and-port-nil", "http", Some(8080)),
        ("/scheme-nil-and-port-80", "http", None),
        ("/scheme-https-and-port-nil", "https", None),
    ] {
        let r = w.c.get(g8080.addr(8080), "example.org", path).await;
        assert_redirect(
            &r,
            302,
            scheme,
            Some("example.org"),
            port,
            path,
            &format!(":8080{path}"),
        );
    }
    let ca = w.ca.as_ref().unwrap();
    for (path, scheme, port) in [
        ("/scheme-nil-and-port-nil", "https", None),
        ("/scheme-nil-and-port-443", "https", None),
        ("/scheme-nil-and-port-8443", "https", Some(8443)),
        ("/scheme-http-and-port-nil", "http", None),
        ("/scheme-http-and-port-80", "http", None),
        ("/scheme-http-and-port-8080", "http", Some(8080)),
    ] {
        let r = tls_request(
            ca,
            g443.addr(443),
            "example.org",
            "example.org",
            path,
            false,
        )
        .await;
        assert_redirect(
            &r,
            302,
            scheme,
            Some("example.org"),
            port,
            path,
            &format!(":443{path}"),
        );
    }
}

/// HTTPRouteRedirectScheme: a scheme redirect to https takes https's default port (left out),
/// alone or with a hostname and a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_scheme() {
    let rules = [
        redirect_rule("/scheme", "scheme: https"),
        redirect_rule("/scheme-and-host", "scheme: https, hostname: example.org"),
        redirect_rule("/scheme-and-status", "scheme: https, statusCode: 301"),
        redirect_rule(
            "/scheme-and-host-and-status",
            "scheme: https, statusCode: 302, hostname: example.org",
        ),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("redirect-scheme", "same-namespace", &rules),
    );
    for (path, status, host) in [
        ("/scheme", 302, None),
        ("/scheme-and-host", 302, Some("example.org")),
        ("/scheme-and-status", 301, None),
        ("/scheme-and-host-and-status", 302, Some("example.org")),
    ] {
        let r = w.send("GET", "example.com", path, &[]).await;
        assert_redirect(&r, status, "https", host, None, path, path);
    }
}

/// HTTPRouteRequestHeaderModifierBackendWeights: of two weighted backendRefs each setting a
/// `Backend` header, only the chosen one's filter applies: every request reaches the backend
/// its one `Backend` header names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_header_modifier_backend_weights() {
    let b = |name: &str| {
        format!("    - {{name: {name}, port: 8080, weight: 10, filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: Backend, value: {name}}}]}}}}]}}\n")
    };
    let w = World::start(
        "same-namespace",
        &route(
            "request-header-modifier-backend-weights",
            "same-namespace",
            &format!("  - backendRefs:\n{}{}", b(V1), b(V2)),
        ),
    );
    assert_accepted(
        &w.config().await,
        "request-header-modifier-backend-weights",
        "same-namespace",
        None,
    );
    let mut seen = BTreeMap::new();
    for _ in 0..100 {
        let r = w.send("GET", "example.com", "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        let name = doc["name"].as_str().unwrap().to_owned();
        assert_eq!(
            seen_header(&doc, "Backend").as_deref(),
            Some(name.as_str()),
            "{doc}"
        );
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// The header modifier of the mirror and rewrite tests, as a filter (YAML flow).
const MODIFY: &str = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";

/// The request headers sent to the [`MODIFY`] rules.
const MODIFY_SENT: [(&str, &str); 2] = [
    ("X-Header-Remove", "remove-val"),
    ("X-Header-Add-Append", "append-val-1"),
];

/// Asserts the backend saw the [`MODIFY`] edits.
fn assert_modified(doc: &Value) {
    assert_eq!(
        seen_header(doc, "X-Header-Add").as_deref(),
        Some("header-val-1"),
        "{doc}"
    );
    assert_eq!(
        seen_header(doc, "X-Header-Add-Append").as_deref(),
        Some("append-val-1,header-val-2"),
        "{doc}"
    );
    assert_eq!(
        seen_header(doc, "X-Header-Set").as_deref(),
        Some("set-overwrites-values"),
        "{doc}"
    );
    assert_eq!(seen_header(doc, "X-Header-Remove"), None, "{doc}");
}

/// A RequestMirror filter to `backend` (YAML flow), with `extra` fields (percent, fraction).
fn mirror(backend: &str, extra: &str) -> String {
    format!("{{type: RequestMirror, requestMirror: {{backendRef: {{name: {backend}, namespace: {INFRA}, port: 8080}}{extra}}}}}")
}

fn filtered_rule(prefix: &str, filters: &[&str]) -> String {
    format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n", filters.join(", "))
}

/// Waits until echo `name` has answered `total` requests (copies are sent in the background
/// and nothing signals their arrival: polled, with a deadline).
async fn wait_answered(w: &World, name: &str, total: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = w.answered(name).await;
        if n == total {
            return;
        }
        assert!(
            n < total && std::time::Instant::now() < deadline,
            "{name} answered {n}, not {total}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends the mirror tests' two requests (each with a request id in the query), checks v1's
/// answers, and that every mirror backend got one copy of each.
async fn mirror_cases(w: &World, plain: &str, modified: &str, mirrors: &[&str]) {
    let r = w
        .expect(
            "GET",
            "example.com",
            &format!("{plain}?gateway-api-conformance-request-id=1"),
            &[],
            V1,
        )
        .await;
    drop(r);
    let r = w
        .expect(
            "GET",
            "example.com",
            &format!("{modified}?gateway-api-conformance-request-id=2"),
            &MODIFY_SENT,
            V1,
        )
        .await;
    assert_modified(&r.json());
    for m in mirrors {
        wait_answered(w, m, 2).await;
    }
}

/// HTTPRouteRequestMirror: requests are answered by the backend and copied to the mirror,
/// also after a header modifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_mirror() {
    let m2 = mirror(V2, "");
    let rules = filtered_rule("/mirror", &[&m2])
        + &filtered_rule("/mirror-and-modify-headers", &[MODIFY, &m2]);
    let w = World::start(
        "same-namespace",
        &route("request-mirror", "same-namespace", &rules),
    );
    assert_eq!(
        parents(
            &w.config().await,
            &qualified("request-mirror"),
            "same-namespace"
        )[0]["accepted"]["status"],
        "True"
    );
    mirror_cases(&w, "/mirror", "/mirror-and-modify-headers", &[V2]).await;
}

/// HTTPRouteRequestMultipleMirrors: two mirror filters on one rule: both get a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_multiple_mirrors() {
    let (m2, m3) = (mirror(V2, ""), mirror(V3, ""));
    let rules = filtered_rule("/multi-mirror", &[&m2, &m3])
        + &filtered_rule(
            "/multi-mirror-and-modify-request-headers",
            &[MODIFY, &m2, &m3],
        );
    let w = World::start(
        "same-namespace",
        &route("request-multiple-mirrors", "same-namespace", &rules),
    );
    assert_eq!(
        parents(
            &w.config().await,
            &qualified("request-multiple-mirrors"),
            "same-namespace"
        )[0]["accepted"]["status"],
        "True"
    );
    mirror_cases(
        &w,
        "/multi-mirror",
        "/multi-mirror-and-modify-request-headers",
        &[V2, V3],
    )
    .await;
}

/// HTTPRouteRequestPercentageMirror: a mirror with `percent` or `fraction` copies that share
/// of 500 requests, within three standard deviations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_percentage_mirror() {
    let rules = filtered_rule("/percent-mirror", &[&mirror(V2, ", percent: 20")])
        + &filtered_rule(
            "/percent-mirror-fraction",
            &[&mirror(V2, ", fraction: {numerator: 25, denominator: 50}")],
        )
        + &filtered_rule(
            "/percent-mirror-and-modify-headers",
            &[MODIFY, &mirror(V2, ", percent: 35")],
        );
    let w = World::start(
        "same-namespace",
        &route("request-percentage-mirror", "same-namespace", &rules),
    );
    assert_accepted(
        &w.config().await,
        "request-percentage-mirror",
        "same-namespace",
        None,
    );
    let w = &w;
    let mut before = 0;
    for (path, p) in [
        ("/percent-mirror", 0.2),
        ("/percent-mirror-fraction", 0.5),
        ("/percent-mirror-and-modify-headers", 0.35),
    ] {
        let modify = path.ends_with("headers");
        let sent: &[(&str, &str)] = if modify { &MODIFY_SENT } else { &[] };
        for batch in 0..50 {
            let requests = (0..10).map(|i| {
                let path = format!("{path}?gateway-api-conformance-request-id={batch}-{i}");
                async move {
                    let r = w.expect("GET", "example.com", &path, sent, V1).await;
                    if modify {
                        assert_modified(&r.json());
                    }
                }
            });
            futures::future::join_all(requests).await;
        }
        // Copies arrive in the background: wait until the count holds still for 300 ms.
        let mut last = w.answered(V2).await;
        let mut still = std::time::Instant::now();
        let deadline = still + std::time::Duration::from_secs(10);
        while still.elapsed() < std::time::Duration::from_millis(300)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let now = w.answered(V2).await;
            if now != last {
                (last, still) = (now, std::time::Instant::now());
            }
        }
        let copies = (last - before) as f64;
        before = last;
        let (expected, sigma) = (500.0 * p, (500.0_f64 * p * (1.0 - p)).sqrt());
        assert!(
            (copies - expected).abs() <= 3.0 * sigma,
            "{path}: {copies} copies of 500, expected {expected} ± {}",
            3.0 * sigma
        );
    }
}

/// HTTPRouteResponseHeaderModifier: a ResponseHeaderModifier sets, adds and removes headers
/// of the backend's answer (set with the echo's X-Echo-Set-Header), names case-insensitive,
/// and works next to a RequestHeaderModifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_response_header_modifier() {
    let mut edits = HEADER_EDITS.to_vec();
    edits[4].2 = "[{name: X-Header-Add, value: header-add}, {name: x-lowercase-add, value: lowercase-add}, {name: x-Mixedcase-ADD-1, value: mixedcase-add-1}, {name: X-mixeDcase-add-2, value: mixedcase-add-2}, {name: X-UPPERCASE-ADD, value: uppercase-add}]";
    let both = format!("  - matches: [{{path: {{type: PathPrefix, value: /response-and-request-header-modifiers}}}}]\n    filters:\n    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: {}, add: {}, remove: {}}}}}\n    - {MODIFY}\n    backendRefs: [{{name: {V1}, port: 8080}}]\n", HEADER_EDITS[3].1, "[{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}]", HEADER_EDITS[3].3);
    let rules = header_rules("ResponseHeaderModifier", false, &edits) + &both;
    let w = World::start(
        "same-namespace",
        &route("response-header-modifier", "same-namespace", &rules),
    );
    assert_accepted(
        &w.config().await,
        "response-header-modifier",
        "same-namespace",
        None,
    );
    let cases: &[(&str, &str, Headers, &[&str])] = &[
        ("/set", "Some-Other-Header:val", &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")], &[]),
        ("/set", "X-Header-Set:some-other-value", &[("X-Header-Set", "set-overwrites-values")], &[]),
        ("/add", "Some-Other-Header:val", &[("X-Header-Add", "add-appends-values")], &[]),
        ("/add", "X-Header-Add:some-other-value", &[("X-Header-Add", "some-other-value,add-appends-values")], &[]),
        ("/remove", "X-Header-Remove:val", &[], &["X-Header-Remove"]),
        (
            "/multiple",
            "X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,X-Header-Remove-2:remove-val-2,Another-Header:another-header-val,X-Header-Remove-1:remove-val-1",
            &[("X-Header-Set-1", "header-set-1"), ("X-Header-Set-2", "header-set-2"), ("X-Header-Add-1", "header-add-1"), ("X-Header-Add-2", "add-val-2,header-add-2"), ("X-Header-Add-3", "header-add-3"), ("Another-Header", "another-header-val")],
            &["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
        (
            "/case-insensitivity",
            "x-header-set:original-val-set,x-header-add:original-val-add,x-header-remove:original-val-remove,Another-Header:another-header-val",
            &[("X-Header-Set", "header-set"), ("X-Header-Add", "original-val-add,header-add"), ("X-Lowercase-Add", "lowercase-add"), ("X-Mixedcase-Add-1", "mixedcase-add-1"), ("X-Mixedcase-Add-2", "mixedcase-add-2"), ("X-Uppercase-Add", "uppercase-add"), ("Another-Header", "another-header-val")],
            &["x-header-remove"],
        ),
        (
            "/response-and-request-header-modifiers",
            "X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,X-Header-Remove-2:remove-val-2,Another-Header:another-header-val,X-Header-Remove-1:remove-val-1,X-Header-Echo:echo",
            &[("X-Header-Set-1", "header-set-1"), ("X-Header-Set-2", "header-set-2"), ("X-Header-Add-1", "header-add-1"), ("X-Header-Add-2", "add-val-2,header-add-2"), ("Another-Header", "another-header-val"), ("X-Header-Echo", "echo")],
            &["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
    ];
    for (path, set, present, absent) in cases {
        let both = path.starts_with("/response-and-request");
        let mut sent = vec![("X-Echo-Set-Header", *set)];
        if both {
            sent.extend_from_slice(&MODIFY_SENT);
            sent.push(("X-Header-Echo", "echo"));
        }
        let r = w.expect("GET", "example.com", path, &sent, V1).await;
        for (name, value) in *present {
            assert_eq!(
                resp_header(&r, name).as_deref(),
                Some(*value),
                "{path}: {name} in {:?}",
                r.headers
            );
        }
        for name in *absent {
            assert_eq!(
                resp_header(&r, name),
                None,
                "{path}: {name} in {:?}",
                r.headers
            );
        }
        if both {
            let doc = r.json();
            assert_modified(&doc);
            assert_eq!(seen_header(&doc, "X-Header-Echo").as_deref(), Some("echo"));
        }
    }
}

/// HTTPRouteRewriteHost: a URLRewrite hostname replaces the Host the backend sees, also next
/// to a header modifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_rewrite_host() {
    let rewrite = |host: &str| format!("{{type: URLRewrite, urlRewrite: {{hostname: {host}}}}}");
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /one}}}}]\n    filters: [{}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n  - filters: [{}]\n    backendRefs: [{{name: {V2}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /rewrite-host-and-modify-headers}}}}]\n    filters: [{}, {MODIFY}]\n    backendRefs: [{{name: {V2}, port: 8080}}]\n",
        rewrite("one.example.org"),
        rewrite("example.org"),
        rewrite("test.example.org")
    );
    let w = World::start(
        "same-namespace",
        &route_in(INFRA, "rewrite-host", &format!("  parentRefs: [{{name: same-namespace}}]\n  hostnames: [rewrite.example]\n  rules:\n{rules}")),
    );
    let r = w.expect("GET", "rewrite.example", "/one", &[], V1).await;
    assert_eq!(
        seen_header(&r.json(), "host").as_deref(),
        Some("one.example.org")
    );
    let r = w.expect("GET", "rewrite.example", "/two", &[], V2).await;
    assert_eq!(
        seen_header(&r.json(), "host").as_deref(),
        Some("example.org")
    );
    let r = w
        .expect(
            "GET",
            "rewrite.example",
            "/rewrite-host-and-modify-headers",
            &MODIFY_SENT,
            V2,
        )
        .await;
    let doc = r.json();
    assert_eq!(
        seen_header(&doc, "host").as_deref(),
        Some("test.example.org")
    );
    assert_modified(&doc);
}

/// HTTPRouteRewritePath: a URLRewrite replaces the matched prefix (down to `/`) or the full
/// path, also next to a header modifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_rewrite_path() {
    let prefix = |p: &str| {
        format!("{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: {p}}}}}}}")
    };
    let full = |p: &str| {
        format!("{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: {p}}}}}}}")
    };
    let rules = [
        filtered_rule("/prefix/one", &[&prefix("/one")]),
        filtered_rule("/strip-prefix", &[&prefix("/")]),
        filtered_rule("/full/one", &[&full("/one")]),
        filtered_rule(
            "/full/rewrite-path-and-modify-headers",
            &[&full("/test"), MODIFY],
        ),
        filtered_rule(
            "/prefix/rewrite-path-and-modify-headers",
            &[&prefix("/prefix"), MODIFY],
        ),
    ]
    .concat();
    let w = World::start(
        "same-namespace",
        &route("rewrite-path", "same-namespace", &rules),
    );
    for (path, seen, modified) in [
        ("/prefix/one/two", "/one/two", false),
        ("/strip-prefix/three", "/three", false),
        ("/strip-prefix", "/", false),
        ("/full/one/two", "/one", false),
        ("/full/rewrite-path-and-modify-headers/test", "/test", true),
        (
            "/prefix/rewrite-path-and-modify-headers/one",
            "/prefix/one",
            true,
        ),
    ] {
        let sent: &[(&str, &str)] = if modified { &MODIFY_SENT } else { &[] };
        let r = w.send("GET", "example.com", path, sent).await;
        check(&r, "GET", seen, V1, path);
        if modified {
            assert_modified(&r.json());
        }
    }
}

/// The timeout tests: a rule with `timeouts.{field}: 500ms`, one with it `0s` (disabled); a
/// backend answering after 1 s is cut off (504, or 408) by the first only.
async fn timeout_cases(name: &str, field: &str, limited: &str, unlimited: &str) {
    let rule = |prefix: &str, value: &str| {
        format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    timeouts: {{{field}: {value}}}\n    backendRefs: [{{name: {V1}, port: 8080}}]\n")
    };
    let w = World::start(
        "same-namespace",
        &route(
            name,
            "same-namespace",
            &(rule(limited, "500ms") + &rule(unlimited, "\"0s\"")),
        ),
    );
    assert_accepted(&w.config().await, name, "same-namespace", None);
    w.expect_gets(&[("example.com", limited, V1)]).await;
    let r = w
        .send("GET", "example.com", &format!("{limited}?delay=1s"), &[])
        .await;
    assert!(matches!(r.status, 504 | 408), "{}: {}", r.status, r.body);
    w.expect_gets(&[("example.com", &format!("{unlimited}?delay=1s"), V1)])
        .await;
}

/// HTTPRouteTimeoutBackendRequest: `timeouts.backendRequest` bounds the wait for the backend;
/// `0s` disables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_timeout_backend_request() {
    timeout_cases(
        "backend-request-timeout",
        "backendRequest",
        "/backend-timeout",
        "/disable-backend-timeout",
    )
    .await;
}

/// HTTPRouteTimeoutRequest: `timeouts.request` bounds the whole request; `0s` disables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_timeout_request() {
    timeout_cases(
        "request-timeout",
        "request",
        "/request-timeout",
        "/disable-request-timeout",
    )
    .await;
}

/// Service `svc` (port 8080, in infra) and one WorkloadEntry `svc-NAME` per `(NAME, port)`,
/// the port a number or a `@port-of-` placeholder.
fn service_with_entries(svc: &str, entries: &[(&str, &str)]) -> String {
    let mut m = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {INFRA}}}\nspec:\n  selector: {{app: {svc}}}\n  ports: [{{name: http, port: 8080, targetPort: 3000}}]\n---\n");
    for (name, port) in entries {
        m += &format!("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {svc}-{name}, namespace: {INFRA}, labels: {{app: {svc}}}}}\nspec: {{address: 127.0.0.1, ports: {{http: {port}}}}}\n---\n");
    }
    m
}

/// A rule matching `prefix` with these `retry` and `timeouts` fields (flow mappings' insides),
/// to `infra-backend-v3`.
fn retry_rule(prefix: &str, retry: &str, timeouts: &str) -> String {
    let timeouts = if timeouts.is_empty() {
        String::new()
    } else {
        format!("    timeouts: {{{timeouts}}}\n")
    };
    format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    retry: {{{retry}}}\n{timeouts}    backendRefs: [{{name: {V3}, port: 8080}}]\n")
}

/// Sends each case `(path, responseCode, succeedAfter, delayRetry, expected status)` with its
/// own retry-simulation ID (the echo fails that ID's first `succeedAfter` requests), and
/// returns how many requests the backend answered in all.
async fn retry_cases(w: &World, cases: &[(&str, u16, u32, &str, u16)]) -> u64 {
    static IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let before = w.answered(V3).await;
    for (path, code, fail_first, delay, want) in cases {
        let i = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let delay = if delay.is_empty() {
            String::new()
        } else {
            format!("&delayRetry={delay}")
        };
        let r = w
            .send(
                "GET",
                "example.com",
                &format!(
                    "{path}?uuid=case-{i}&responseCode={code}&succeedAfter={fail_first}{delay}"
                ),
                &[],
            )
            .await;
        assert_eq!(
            r.status, *want,
            "case {i}: {path}, {code} for the first {fail_first}: {}",
            r.body
        );
    }
    w.answered(V3).await - before
}

/// HTTPRouteRetry: a rule's `retry` retries the codes it lists, up to `attempts` more times,
/// on the Service's one endpoint; the backend's error reaches the client when the retries run
/// out, and a code not listed is not retried. The backend's count of requests proves each
/// retry was made, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_retry() {
    let all = "codes: [500, 502, 503, 504]";
    let w = World::start(
        "same-namespace",
        &route(
            "retries",
            "same-namespace",
            &[
                retry_rule(
                    "/retry/code-500-attempts-3",
                    "codes: [500], attempts: 3",
                    "",
                ),
                retry_rule(
                    "/retry/code-all-attempts-2",
                    &format!("{all}, attempts: 2"),
                    "",
                ),
                retry_rule(
                    "/retry/code-all-attempts-0",
                    &format!("{all}, attempts: 0"),
                    "",
                ),
            ]
            .concat(),
        ),
    );
    assert_accepted(&w.config().await, "retries", "same-namespace", None);
    let (three, two) = ("/retry/code-500-attempts-3", "/retry/code-all-attempts-2");
    let sent = retry_cases(
        &w,
        &[
            (three, 500, 2, "", 200),
            (three, 500, 4, "", 500),
            (three, 503, 2, "", 503),
            (two, 500, 1, "", 200),
            (two, 500, 3, "", 500),
            (two, 502, 1, "", 200),
            (two, 502, 3, "", 502),
            (two, 503, 1, "", 200),
            (two, 503, 3, "", 503),
            (two, 504, 1, "", 200),
            (two, 504, 3, "", 504),
            ("/retry/code-all-attempts-0", 500, 1, "", 500),
        ],
    )
    .await;
    assert_eq!(sent, 3 + 4 + 1 + 2 + 3 + 2 + 3 + 2 + 3 + 2 + 3 + 1);
}

/// HTTPRouteRetryWithTimeouts: an attempt cut off by `timeouts.backendRequest` is retried
/// (with no codes listed), and the client gets 504 when every attempt was; the retries stop,
/// with a 504, when `timeouts.request` runs out. And a rule's `retry.backoff` spaces the
/// attempts, never past the request's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_retry_with_timeouts() {
    let w = World::start(
        "same-namespace",
        &route(
            "retries-with-timeouts",
            "same-namespace",
            &[
                retry_rule(
                    "/retry/backend-request-timeout-200ms",
                    "attempts: 2",
                    "backendRequest: 200ms",
                ),
                retry_rule(
                    "/retry/request-timeout-200ms",
                    "codes: [500], attempts: 5",
                    "backendRequest: 200ms, request: 400ms",
                ),
                retry_rule(
                    "/retry/backoff-300ms",
                    "codes: [500], attempts: 2, backoff: 300ms",
                    "",
                ),
                retry_rule(
                    "/retry/backoff-past-deadline",
                    "codes: [500], attempts: 2, backoff: 1s",
                    "request: 500ms",
                ),
            ]
            .concat(),
        ),
    );
    assert_accepted(
        &w.config().await,
        "retries-with-timeouts",
        "same-namespace",
        None,
    );
    let sent = retry_cases(
        &w,
        &[
            ("/retry/backend-request-timeout-200ms", 500, 2, "300ms", 200),
            ("/retry/backend-request-timeout-200ms", 500, 3, "300ms", 504),
            ("/retry/request-timeout-200ms", 500, 1, "", 200),
            ("/retry/request-timeout-200ms", 500, 4, "100ms", 504),
        ],
    )
    .await;
    // Answered by the backend (an attempt cut off by its timeout is not): 1 of 3, none of 3,
    // 2, and the 100 ms attempts that fit in 400 ms with the default back-off between them.
    assert!((1 + 2 + 2..=1 + 2 + 4).contains(&sent), "{sent} requests");

    let started = std::time::Instant::now();
    let sent = retry_cases(&w, &[("/retry/backoff-300ms", 500, 2, "", 200)]).await;
    assert_eq!(sent, 3);
    assert!(started.elapsed() >= std::time::Duration::from_millis(600));
    let status_retries = || async {
        let metrics = w.c.get(w.gw.admin, "admin", "/metrics").await.body;
        metrics
            .lines()
            .find(|l| l.starts_with("locus_retries_total{") && l.contains("reason=\"status\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = status_retries().await;
    assert!(
        before >= 3.0,
        "the retries on codes above are counted: {before}"
    );
    let started = std::time::Instant::now();
    let sent = retry_cases(&w, &[("/retry/backoff-past-deadline", 500, 1, "", 504)]).await;
    assert_eq!(sent, 1, "no attempt after the deadline");
    assert!(started.elapsed() < std::time::Duration::from_millis(1000));
    assert_eq!(
        status_retries().await,
        before,
        "a retry never sent is not counted"
    );
}

/// HTTPRouteRetryConnectionError: a Service with one endpoint that refuses connections and
/// one that answers; with a rule's `retry` every request is answered 200 by the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_retry_connection_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = "infra-backend-connection-error";
    let manifests = route(
        "retries-connection-error",
        "same-namespace",
        &format!("  - matches: [{{path: {{type: PathPrefix, value: /retry-on-connection-errors}}}}]\n    retry: {{attempts: 100}}\n    backendRefs: [{{name: {svc}, port: 8080}}]\n"),
    // The healthy endpoint is infra-backend-v1's echo, which the route does not name.
    ) + &service_with_entries(
        svc,
        &[
            ("broken", &closed.to_string()),
            ("healthy", &format!("@port-of-{V1}")),
        ],
    ) + &format!("# {V1} runs for the healthy endpoint\n");
    let w = World::start("same-namespace", &manifests);
    assert_accepted(
        &w.config().await,
        "retries-connection-error",
        "same-namespace",
        None,
    );
    for _ in 0..20 {
        w.expect_gets(&[("example.com", "/retry-on-connection-errors", V1)])
            .await;
    }
}

/// HTTPRouteSessionPersistenceCookie (provisional upstream), and the same for a session in a
/// header and a permanent cookie: the first answer sets the session (a cookie with no
/// `Max-Age` or `Expires` unless Permanent), and every request carrying it reaches the same
/// endpoint of a two-endpoint Service, where requests without it are spread over both. A
/// value naming an endpoint the Service does not have starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_session_persistence_cookie() {
    let svc = "session-persistence";
    let rule = |prefix: &str, session: &str| {
        format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    sessionPersistence: {{{session}}}\n    backendRefs: [{{name: {svc}, port: 8080}}]\n")
    };
    let manifests = route(
        "session-persistence-cookie",
        "same-namespace",
        &[
            rule(
                "/session-persistence",
                "sessionName: session-persistence-route",
            ),
            rule("/header-session", "sessionName: x-session, type: Header"),
            rule(
                "/permanent",
                "sessionName: perm, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}",
            ),
        ]
        .concat(),
    ) + &service_with_entries(
        svc,
        &[
            (V1, &format!("@port-of-{V1}")),
            (V2, &format!("@port-of-{V2}")),
        ],
    );
    let w = World::start("same-namespace", &manifests);
    assert_accepted(
        &w.config().await,
        "session-persistence-cookie",
        "same-namespace",
        None,
    );
    let get = |path: &'static str, headers: Vec<(String, String)>| {
        let w = &w;
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = w.send("GET", "example.com", path, &h).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            r
        }
    };
    // Without a session, requests are spread over both endpoints.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(get("/session-persistence", vec![]).await.who());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    for (path, header) in [
        ("/session-persistence", false),
        ("/header-session", true),
        ("/permanent", false),
    ] {
        let first = get(path, vec![]).await;
        let pod = first.who();
        let (name, value) = if header {
            let v = first.headers["x-session"].to_str().unwrap().to_owned();
            ("x-session".to_owned(), v)
        } else {
            let set = first.headers[http::header::SET_COOKIE]
                .to_str()
                .unwrap()
                .to_owned();
            let permanent = path == "/permanent";
            assert_eq!(set.contains("Max-Age=36"), permanent, "{set}");
            assert!(!set.contains("Expires"), "{set}");
            let pair = set.split(';').next().unwrap().to_owned();
            ("cookie".to_owned(), pair)
        };
        for i in 0..10 {
            let r = get(path, vec![(name.clone(), value.clone())]).await;
            assert_eq!(r.who(), pod, "{path}: request {i} with its session");
            assert!(
                !r.headers.contains_key(http::header::SET_COOKIE)
                    && !r.headers.contains_key("x-session"),
                "{path}: the session is unchanged"
            );
        }
    }
    // A session naming an endpoint the Service does not have (127.0.0.1:1) starts again.
    let r = get(
        "/session-persistence",
        vec![(
            "cookie".into(),
            "session-persistence-route=0.1.3132372e302e302e313a31".into(),
        )],
    )
    .await;
    assert!(
        r.headers.contains_key(http::header::SET_COOKIE),
        "a new session"
    );
}

// ───────────────────────── gateway attachment ─────────────────────────

/// GatewayHTTPListenerIsolation: on Gateways with listeners for no hostname, `*.example.com`,
/// `*.foo.example.com` and `abc.foo.example.com`, a request reaches only the routes of the
/// most specific listener matching its Host, never a less specific one; with or without
/// route hostnames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_http_listener_isolation() {
    let names = [
        "empty-hostname",
        "wildcard-example-com",
        "wildcard-foo-example-com",
        "abc-foo-example-com",
    ];
    let hosts = [
        "",
        "*.example.com",
        "*.foo.example.com",
        "abc.foo.example.com",
    ];
    let gws = [
        "http-listener-isolation",
        "http-listener-isolation-with-hostname-intersection",
    ];
    let mut m = String::new();
    for (i, gw) in gws.iter().enumerate() {
        let ls: String = names
            .iter()
            .zip(hosts)
            .map(|(n, h)| {
                let h = if h.is_empty() { String::new() } else { format!("hostname: \"{h}\", ") };
                format!("  - {{name: {n}, port: 80, protocol: HTTP, {h}allowedRoutes: {{namespaces: {{from: All}}}}}}\n")
            })
            .collect();
        m += &gateway(gw, &ls);
        let route_hosts = if i == 1 {
            "  hostnames: [bar.com, \"*.example.com\", \"*.foo.example.com\", abc.foo.example.com]\n"
        } else {
            ""
        };
        for n in names {
            m += &route_in(
                INFRA,
                &format!("{gw}-{n}"),
                &format!(
                    "  parentRefs: [{{name: {gw}, sectionName: {n}}}]\n{route_hosts}  rules:\n{}",
                    prefix_rule(&format!("/{n}"), V1)
                ),
            );
        }
    }
    let w = World::start(gws[0], &m);
    let second = w.serve(gws[1]);
    for (gw, cfg, addr) in [
        (gws[0], w.config().await, w.addr),
        (gws[1], config(&second).await, second.addr(80)),
    ] {
        for n in names {
            assert_accepted(&cfg, &format!("{gw}-{n}"), gw, None);
        }
        for (host, reachable) in [
            ("bar.com", 0),
            ("bar.example.com", 1),
            ("bar.foo.example.com", 2),
            ("abc.foo.example.com", 3),
        ] {
            // Only the most specific listener's route answers; the others' are isolated.
            for (i, n) in names.iter().enumerate() {
                let path = format!("/{n}");
                let r = w.c.get(addr, host, &path).await;
                check(
                    &r,
                    "GET",
                    &path,
                    if i == reachable { V1 } else { "404" },
                    &format!("{gw}: {host}{path}"),
                );
            }
        }
    }
}

/// GatewayInvalidRouteKind: a listener whose `allowedRoutes.kinds` names only kinds Locus does
/// not serve supports none (`supportedKinds` empty) and reports `ResolvedRefs=False`,
/// `InvalidRouteKinds`; with a valid kind beside an invalid one it supports the valid one and
/// still reports the invalid one. Neither takes routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_route_kind() {
    let l = |kinds: &str| {
        format!(
            "  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{kinds: [{kinds}]}}}}\n"
        )
    };
    let m = gateway("gateway-only-invalid-route-kind", &l("{kind: InvalidRoute}"))
        + &gateway(
            "gateway-supported-and-invalid-route-kind",
            &l("{kind: InvalidRoute}, {kind: HTTPRoute}"),
        )
        // A route for either: the first takes it not (no kind), the second would.
        + &route_in(INFRA, "any", &format!("  parentRefs: [{{name: gateway-only-invalid-route-kind}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n"));
    let w = World::start("gateway-only-invalid-route-kind", &m);
    let second = w.serve("gateway-supported-and-invalid-route-kind");
    for (gw, cfg, supported) in [
        ("gateway-only-invalid-route-kind", w.config().await, vec![]),
        (
            "gateway-supported-and-invalid-route-kind",
            config(&second).await,
            vec!["HTTPRoute"],
        ),
    ] {
        let status = cfg["listener_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["gateway"] == format!("{INFRA}/{gw}").as_str())
            .unwrap()
            .clone();
        assert_eq!(
            status["supported_kinds"],
            serde_json::json!(supported),
            "{status}"
        );
        assert_eq!(status["attached_routes"], 0, "{status}");
        assert_eq!(
            status["refused"][0]["reason"], "InvalidRouteKinds",
            "{status}"
        );
    }
    assert_not_accepted(
        &w.config().await,
        "any",
        "gateway-only-invalid-route-kind",
        "NotAllowedByListeners",
    );
}

/// GatewayModifyListeners: a listener added to a Gateway gets the routes attached to the
/// Gateway (attachedRoutes 1); a removed listener's status goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_modify_listeners() {
    let https = format!("  - {{name: https, port: 443, protocol: HTTPS, hostname: secure.test.com, tls: {{certificateRefs: [{{name: {CERT}}}]}}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n");
    let http = "  - {name: http, port: 80, protocol: HTTP, hostname: data.test.com, allowedRoutes: {namespaces: {from: All}}}\n";
    let routes = route_in(INFRA, "http-route-1", &format!("  parentRefs: [{{name: gateway-add-listener}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n"))
        + &route_in(INFRA, "http-route-2", &format!("  parentRefs: [{{name: gateway-remove-listener}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n"));
    // The HTTPS Gateway's certificate Secret comes with it (not served here).
    let m = routes.clone()
        + &gateway("gateway-add-listener", &https)
        + &gateway("gateway-remove-listener", &(https.clone() + http))
        + &format!("# {HTTPS_GW}\n");
    let mut w = World::start("gateway-add-listener", &m);
    assert_eq!(
        attached(&w.config().await, "gateway-add-listener"),
        listeners(&[("https", 1)])
    );
    let path = w.dir.path().join("all.yaml");
    let all = std::fs::read_to_string(&path).unwrap();
    let added = all.replace(
        &gateway("gateway-add-listener", &https),
        &gateway("gateway-add-listener", &(https.clone() + http)),
    );
    assert_ne!(all, added);
    w.gw.apply("all.yaml", &added);
    assert_eq!(
        attached(&w.config().await, "gateway-add-listener"),
        listeners(&[("https", 1), ("http", 1)])
    );

    let mut g = w.serve("gateway-remove-listener");
    assert_eq!(
        attached(&config(&g).await, "gateway-remove-listener"),
        listeners(&[("https", 1), ("http", 1)])
    );
    let removed = added.replace(
        &gateway("gateway-remove-listener", &(https.clone() + http)),
        &gateway("gateway-remove-listener", http),
    );
    assert_ne!(added, removed);
    g.apply("all.yaml", &removed);
    assert_eq!(
        attached(&config(&g).await, "gateway-remove-listener"),
        listeners(&[("http", 1)])
    );
}

/// GatewayWithAttachedRoutes: attachedRoutes counts the routes on a listener (one; two, not
/// the route whose hostname does not match, which is NoMatchingListenerHostname); a listener
/// whose certificate Secret does not exist is refused but still counts its route, whose
/// missing backend leaves ResolvedRefs=False.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_attached_routes() {
    let allowed = format!("allowedRoutes: {{kinds: [{{kind: HTTPRoute}}], namespaces: {{from: Selector, selector: {{matchLabels: {{kubernetes.io/metadata.name: {INFRA}}}}}}}}}");
    let r = |name: &str, gw: &str, extra: &str, backend: &str| {
        route_in(INFRA, name, &format!("  parentRefs: [{{name: {gw}{extra}}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"))
    };
    let m = [
        gateway("gateway-with-one-attached-route", &format!("  - {{name: http, port: 80, protocol: HTTP, {allowed}}}\n")),
        gateway("gateway-with-two-attached-routes", &format!("  - {{name: http, port: 80, protocol: HTTP, hostname: foo.example.com, {allowed}}}\n")),
        gateway("unresolved-gateway-with-one-attached-unresolved-route", "  - {name: tls, port: 443, protocol: HTTPS, tls: {mode: Terminate, certificateRefs: [{name: does-not-exist}]}, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: All}}}\n"),
        r("http-route-1", "gateway-with-one-attached-route", "", V1),
        r("http-route-2", "gateway-with-two-attached-routes", "", V1),
        r("http-route-3", "gateway-with-two-attached-routes", "", V1),
        route_in(INFRA, "http-route-not-accepted", &format!("  parentRefs: [{{name: gateway-with-two-attached-routes}}]\n  hostnames: [not-accepted.test.com]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n")),
        r("http-route-4", "unresolved-gateway-with-one-attached-unresolved-route", ", sectionName: tls", "does-not-exist"),
    ]
    .concat();
    let w = World::start("gateway-with-one-attached-route", &m);
    assert_eq!(
        attached(&w.config().await, "gateway-with-one-attached-route"),
        listeners(&[("http", 1)])
    );
    let two = w.serve("gateway-with-two-attached-routes");
    let cfg = config(&two).await;
    // The route that is not Accepted (no hostname in common) does not count.
    assert_eq!(
        attached(&cfg, "gateway-with-two-attached-routes"),
        listeners(&[("http", 2)])
    );
    assert_not_accepted(
        &cfg,
        "http-route-not-accepted",
        "gateway-with-two-attached-routes",
        "NoMatchingListenerHostname",
    );
    let unresolved = w.serve("unresolved-gateway-with-one-attached-unresolved-route");
    let cfg = config(&unresolved).await;
    let gw = "unresolved-gateway-with-one-attached-unresolved-route";
    assert_eq!(attached(&cfg, gw), listeners(&[("tls", 1)]));
    let listener = cfg["listener_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listener"] == "tls")
        .unwrap();
    assert!(
        !listener["refused"].as_array().unwrap().is_empty(),
        "{listener:#}"
    );
    for p in parents(&cfg, &qualified("http-route-4"), gw) {
        assert_eq!(p["resolved_refs"]["status"], "False", "{p:#}");
    }
}

/// GatewayWithAttachedRoutesWithPort8080: of two listeners (8080 and 80), only the one the
/// route names by sectionName counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_attached_routes_with_port_8080() {
    let gw = "gateway-with-two-listeners-and-one-attached-route";
    let m = gateway(gw, "  - {name: http-unattached, port: 8080, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: All}}}\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: All}}}\n")
        + &route_in(INFRA, "http-route-4-port-8080", &format!("  parentRefs: [{{name: {gw}, sectionName: http}}]\n  rules: [{{backendRefs: [{{name: {V1}, port: 8080}}]}}]\n"));
    let w = World::start(gw, &m);
    let cfg = w.config().await;
    assert_accepted(&cfg, "http-route-4-port-8080", gw, None);
    assert_eq!(
        attached(&cfg, gw),
        listeners(&[("http-unattached", 0), ("http", 1)])
    );
}
