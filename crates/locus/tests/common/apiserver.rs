//! A stand-in Kubernetes API server for tests: the real list/watch protocol over HTTP/1.1
//! (JSON lists with `resourceVersion`, watch streams of `ADDED`/`MODIFIED`/`DELETED` events,
//! bookmarks, `410 Gone` for compacted versions), fed from the same YAML fixtures as file mode.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Kind → (API path prefix, list kind).
fn path_of(api_version: &str, kind: &str) -> Option<String> {
    let plural = match kind {
        "Service" => "services",
        "Node" => "nodes",
        "Namespace" => "namespaces",
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "BackendTLSPolicy" => "backendtlspolicies",
        "EndpointSlice" => "endpointslices",
        "Gateway" => "gateways",
        "HTTPRoute" => "httproutes",
        "ReferenceGrant" => "referencegrants",
        "WorkloadEntry" => "workloadentries",
        "DestinationRule" => "destinationrules",
        "BackendTrafficPolicy" => "backendtrafficpolicies",
        "GatewayClass" => "gatewayclasses",
        "GRPCRoute" => "grpcroutes",
        "Lease" => "leases",
        _ => return None,
    };
    Some(if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    })
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches asking for a version older than this get 410 Gone.
    compacted: u64,
    /// path → "ns/name" → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every event: (resourceVersion, path, event JSON).
    history: Vec<(u64, String, Value)>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(u64, String, Value)>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ApiServer {
    /// Starts on a free port.
    pub async fn start() -> ApiServer {
        Self::start_on(0).await
    }

    /// Starts on the given port of 127.0.0.1 (0: any free one).
    pub async fn start_on(port: u16) -> ApiServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (events, _) = broadcast::channel(10_000);
        let server = ApiServer {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            events,
            tasks: Arc::default(),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let events = self.events.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let events = events.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        let events = events.clone();
                        async move {
                            if req.method() == hyper::Method::PATCH {
                                return Ok::<_, Infallible>(
                                    patch_status(req, &state, &events).await,
                                );
                            }
                            if matches!(*req.method(), hyper::Method::POST | hyper::Method::PUT)
                                || (req.method() == hyper::Method::GET
                                    && single_object(req.uri().path()).is_some())
                            {
                                return Ok::<_, Infallible>(
                                    object_call(req, &state, &events).await,
                                );
                            }
                            Ok::<_, Infallible>(handle(req, &state, &events))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Stops answering: the listener and every connection (watches included) go away.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Serves again on the same address, with the same objects.
    pub async fn restart(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                // The aborted listener's socket may take a moment to close.
                Err(_) => tokio::task::yield_now().await,
            }
        };
        self.serve(listener);
    }

    /// Forgets history: watches from before now get `410 Gone` and must re-list.
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted = s.rv;
        s.history.clear();
    }

    /// Creates or replaces an object (`kubectl apply`).
    pub fn apply(&self, mut obj: Value) {
        let api_version = obj["apiVersion"].as_str().unwrap().to_owned();
        let kind = obj["kind"].as_str().unwrap().to_owned();
        let Some(path) = path_of(&api_version, &kind) else {
            return;
        };
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let key = format!("{ns}/{}", obj["metadata"]["name"].as_str().unwrap());
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind_of_event = if s
            .objects
            .entry(path.clone())
            .or_default()
            .insert(key, obj.clone())
            .is_some()
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let event = json!({"type": kind_of_event, "object": obj});
        s.history.push((rv, path.clone(), event.clone()));
        let _ = self.events.send((rv, path, event));
    }

    /// Applies every document of a YAML text.
    pub fn apply_yaml(&self, text: &str) {
        for de in serde_yaml_ng::Deserializer::from_str(text) {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(de).unwrap();
            if !v.is_null() {
                self.apply(serde_json::to_value(v).unwrap());
            }
        }
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let path = path_of(api_version, kind).unwrap();
        let mut s = self.state.lock().unwrap();
        let Some(mut obj) = s
            .objects
            .entry(path.clone())
            .or_default()
            .remove(&format!("{namespace}/{name}"))
        else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": "DELETED", "object": obj});
        s.history.push((rv, path.clone(), event.clone()));
        let _ = self.events.send((rv, path, event));
    }
}

/// RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`:
/// objects merge key by key, `null` deletes, anything else (lists included) replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (_, Some(p)) => {
            *target = json!({});
            merge_patch(target, &Value::Object(p.clone()));
        }
        _ => *target = patch.clone(),
    }
}

fn conflict() -> Response<Body> {
    full(
        409,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "the object has been modified; please apply your changes to the latest version and try again"}),
    )
}

/// `apis/G/V/namespaces/NS/PLURAL/NAME` → (list path, `ns/name`): one namespaced object.
fn single_object(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["apis", g, v, "namespaces", ns, plural, name] => {
            Some((format!("/apis/{g}/{v}/{plural}"), format!("{ns}/{name}")))
        }
        _ => None,
    }
}

/// GET, POST (create) and PUT (replace, with the resourceVersion precondition) of one
/// namespaced object: what a client of Leases needs.
async fn object_call(
    req: Request<hyper::body::Incoming>,
    state: &Arc<Mutex<State>>,
    events: &broadcast::Sender<(u64, String, Value)>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = state.lock().unwrap();
    let (prefix, key) = if method == hyper::Method::POST {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ["apis", g, v, "namespaces", ns, plural] = parts.as_slice() else {
            return full(404, json!({"kind": "Status", "code": 404}));
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        (format!("/apis/{g}/{v}/{plural}"), format!("{ns}/{name}"))
    } else {
        match single_object(&path) {
            Some(k) => k,
            None => return full(404, json!({"kind": "Status", "code": 404})),
        }
    };
    let current = s.objects.get(&prefix).and_then(|m| m.get(&key)).cloned();
    match (&method, &current) {
        (&hyper::Method::GET, Some(c)) => return full(200, c.clone()),
        (&hyper::Method::GET, None) | (&hyper::Method::PUT, None) => {
            return full(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
            )
        }
        (&hyper::Method::POST, Some(_)) => {
            return full(
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "AlreadyExists"}),
            )
        }
        (&hyper::Method::PUT, Some(c))
            if obj["metadata"]["resourceVersion"] != c["metadata"]["resourceVersion"] =>
        {
            return conflict()
        }
        _ => {}
    }
    s.rv += 1;
    let rv = s.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    s.objects
        .entry(prefix.clone())
        .or_default()
        .insert(key, obj.clone());
    let event =
        json!({"type": if current.is_some() { "MODIFIED" } else { "ADDED" }, "object": obj});
    s.history.push((rv, prefix.clone(), event.clone()));
    let _ = events.send((rv, prefix, event));
    full(if current.is_some() { 200 } else { 201 }, obj)
}

/// `PATCH …/PLURAL/NAME/status` (namespaced or cluster-scoped) with a JSON merge patch,
/// applied as the API server does: merged into the object (lists replaced whole), refused with
/// 409 when it carries a `metadata.resourceVersion` that is not the object's.
async fn patch_status(
    req: Request<hyper::body::Incoming>,
    state: &Arc<Mutex<State>>,
    events: &broadcast::Sender<(u64, String, Value)>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // apis / group / version / namespaces / ns / plural / name / status
    let (prefix, ns, name) = match parts.as_slice() {
        ["apis", g, v, "namespaces", ns, plural, name, "status"] => (
            format!("/apis/{g}/{v}/{plural}"),
            ns.to_string(),
            name.to_string(),
        ),
        ["apis", g, v, plural, name, "status"] => (
            format!("/apis/{g}/{v}/{plural}"),
            String::new(),
            name.to_string(),
        ),
        _ => return full(404, json!({"kind": "Status", "code": 404})),
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = state.lock().unwrap();
    let next = s.rv + 1;
    let Some(obj) = s
        .objects
        .get_mut(&prefix)
        .and_then(|m| m.get_mut(&format!("{ns}/{name}")))
    else {
        return full(404, json!({"kind": "Status", "code": 404}));
    };
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str() {
        if obj["metadata"]["resourceVersion"].as_str() != Some(want) {
            return conflict();
        }
    }
    // The status subresource changes status only.
    merge_patch(&mut obj["status"], &patch["status"]);
    obj["metadata"]["resourceVersion"] = json!(next.to_string());
    s.rv = next;
    let rv = next;
    let obj = s.objects[&prefix][&format!("{ns}/{name}")].clone();
    let event = json!({"type": "MODIFIED", "object": obj});
    s.history.push((rv, prefix.clone(), event.clone()));
    let _ = events.send((rv, prefix, event));
    full(200, obj)
}

impl ApiServer {
    /// An object as the server holds it now.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let path = path_of(api_version, kind)?;
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&path)?
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }
}

fn full(status: u16, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn handle(
    req: Request<hyper::body::Incoming>,
    state: &Arc<Mutex<State>>,
    events: &broadcast::Sender<(u64, String, Value)>,
) -> Response<Body> {
    // A namespaced list or watch (`.../namespaces/NS/PLURAL`) is the kind's, filtered.
    let (path, only_ns) = {
        let raw = req.uri().path().to_owned();
        let parts: Vec<&str> = raw.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["api", v, "namespaces", ns, plural] => {
                (format!("/api/{v}/{plural}"), Some(ns.to_string()))
            }
            ["apis", g, v, "namespaces", ns, plural] => {
                (format!("/apis/{g}/{v}/{plural}"), Some(ns.to_string()))
            }
            _ => (raw, None),
        }
    };
    let in_ns = move |obj: &Value| {
        only_ns
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
    };

    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let s = state.lock().unwrap();
    if !s.objects.contains_key(&path) && path_of_known(&path).is_none() {
        return full(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
        );
    }
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watch {
        let items: Vec<Value> = s
            .objects
            .get(&path)
            .map(|m| m.values().filter(|o| in_ns(o)).cloned().collect())
            .unwrap_or_default();
        return full(
            200,
            json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, Infallible>>();
    let line = |v: &Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    if from < s.compacted {
        let _ = tx.send(line(&json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}})));
        drop(tx);
    } else {
        for (rv, p, event) in &s.history {
            if *rv > from && *p == path && in_ns(&event["object"]) {
                let _ = tx.send(line(event));
            }
        }
        if query.get("allowWatchBookmarks").map(String::as_str) == Some("true") {
            let (api_version, kind) = kind_of(&path);
            let _ = tx.send(line(&json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": s.rv.to_string()}}})));
        }
        let mut sub = events.subscribe();
        let seen = s.rv;
        tokio::spawn(async move {
            while let Ok((rv, p, event)) = sub.recv().await {
                if rv > seen
                    && p == path
                    && in_ns(&event["object"])
                    && tx.send(line(&event)).is_err()
                {
                    break;
                }
            }
        });
    }
    drop(s);
    let body = StreamBody::new(tokio_stream_from(rx));
    let mut r = Response::new(body.boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// The apiVersion and kind served at a path (for bookmarks, which carry only those).
fn kind_of(path: &str) -> (String, String) {
    let kinds = [
        ("v1", "Service"),
        ("v1", "Node"),
        ("v1", "Namespace"),
        ("v1", "Secret"),
        ("v1", "ConfigMap"),
        ("gateway.networking.k8s.io/v1", "BackendTLSPolicy"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("gateway.networking.k8s.io/v1", "Gateway"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
        ("networking.istio.io/v1", "WorkloadEntry"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"),
        ("gateway.networking.k8s.io/v1", "GatewayClass"),
        ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ];
    kinds
        .iter()
        .find(|(av, k)| path_of(av, k).as_deref() == Some(path))
        .map(|(av, k)| (av.to_string(), k.to_string()))
        .unwrap_or_default()
}

fn path_of_known(path: &str) -> Option<()> {
    let known = [
        "/api/v1/services",
        "/api/v1/nodes",
        "/api/v1/namespaces",
        "/api/v1/secrets",
        "/api/v1/configmaps",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/gateway.networking.k8s.io/v1/gateways",
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
        "/apis/networking.istio.io/v1/workloadentries",
        "/apis/networking.istio.io/v1/destinationrules",
        "/apis/gateway.envoyproxy.io/v1alpha1/backendtrafficpolicies",
    ];
    known.contains(&path).then_some(())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A kubeconfig pointing at the stand-in server.
pub fn kubeconfig(addr: SocketAddr, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{addr}\"}}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n"
        ),
    )
    .unwrap();
    path
}
