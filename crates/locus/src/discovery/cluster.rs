//! `locus serve --kubernetes`: the same resources, watched live from the API server.
//!
//! One kube-runtime watcher per kind (list, then watch; re-list after disconnects and
//! `410 Gone`, with backoff). Objects are kept as JSON and turned into a
//! [`ResourceSet`] by the very parser file mode uses, so both sources feed the same model and
//! the same validation. The first configuration is applied only once every kind has been
//! listed, so a new replica never routes on half a view; afterwards changes are applied
//! after a short debounce. While the API server is unreachable the last view keeps routing,
//! and the gateway says so (log, `locus_discovery_errors_total`, `/debug/config`).
//!
//! Other clusters (`--remote-cluster NAME=KUBECONFIG`, or Secrets labelled
//! `istio/multiCluster: "true"` holding kubeconfigs, as Istio's remote secrets do) are watched
//! for what endpoints need: Services, EndpointSlices, Nodes and WorkloadEntries. Their objects
//! join the view labelled `topology.istio.io/cluster: NAME`, which is how the model tells
//! clusters apart. Readiness waits for the local cluster only; a remote that is down keeps its
//! last view and says so, and never holds back the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};
use serde_json::Value;
use tokio::sync::Notify;

use super::lease;
use crate::gateway::Gateway;
use crate::resources::{parse_value_into, Origin, ResourceSet};

/// A kind to watch: group, version, kind, plural, and whether it is a CRD that may be absent.
const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Service", "services", false),
    ("", "v1", "Node", "nodes", false),
    ("", "v1", "Namespace", "namespaces", false),
    // Only `kubernetes.io/tls` Secrets (a field selector), for HTTPS listeners.
    ("", "v1", "Secret", "secrets", false),
    // CA bundles for upstream TLS (BackendTLSPolicy `caCertificateRefs`).
    ("", "v1", "ConfigMap", "configmaps", false),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        false,
    ),
    (
        "gateway.networking.k8s.io",
        "v1",
        "GatewayClass",
        "gatewayclasses",
        true,
    ),
    (
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
        "gateways",
        true,
    ),
    (
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
        "httproutes",
        true,
    ),
    (
        "gateway.networking.k8s.io",
        "v1",
        "GRPCRoute",
        "grpcroutes",
        true,
    ),
    // v1beta1: the version every Gateway API release since 0.6 serves.
    (
        "gateway.networking.k8s.io",
        "v1beta1",
        "ReferenceGrant",
        "referencegrants",
        true,
    ),
    (
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
        true,
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
        true,
    ),
    (
        "gateway.envoyproxy.io",
        "v1alpha1",
        "BackendTrafficPolicy",
        "backendtrafficpolicies",
        true,
    ),
    (
        "gateway.networking.k8s.io",
        "v1",
        "BackendTLSPolicy",
        "backendtlspolicies",
        true,
    ),
    (
        "multicluster.x-k8s.io",
        "v1alpha1",
        "ServiceImport",
        "serviceimports",
        true,
    ),
    (
        "about.k8s.io",
        "v1alpha1",
        "ClusterProperty",
        "clusterproperties",
        true,
    ),
    (
        "networking.enterprise.mesh.gloo.solo.io",
        "v1beta1",
        "VirtualDestination",
        "virtualdestinations",
        true,
    ),
    (
        "networking.mesh.gloo.solo.io",
        "v1",
        "TrafficPolicy",
        "trafficpolicies",
        true,
    ),
];

/// The kinds read from remote clusters: what their endpoints and localities need.
const REMOTE_KINDS: &[&str] = &[
    "Service",
    "Node",
    "EndpointSlice",
    "WorkloadEntry",
    "Namespace",
];

/// The label Istio puts on remote secrets (`istioctl create-remote-secret`).
pub const MULTICLUSTER_SECRET_LABEL: &str = "istio/multiCluster";
/// The label that says which cluster an object was read from.
use locus_core::policy::CLUSTER_LABEL;

/// How long changes are gathered before one configuration is built from them.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How soon status that could not be written (a conflict, not the leader yet) is tried again.
const STATUS_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub kubeconfig: Option<PathBuf>,
    /// Watch one namespace (cluster-scoped kinds are always watched whole).
    pub namespace: Option<String>,
    /// Write Gateway and HTTPRoute status conditions (off for read-only RBAC).
    pub write_status: bool,
    /// The Service whose load balancer (else cluster IP) is the Gateways' address, for
    /// `status.addresses` when a Gateway names none in `spec.addresses`.
    pub address_service: Option<crate::model::ObjKey>,
    /// The Lease that elects the one replica writing status (`namespace`, `name`).
    pub lease: Option<(String, String)>,
    /// Remote clusters by name and kubeconfig file (`--remote-cluster NAME=PATH`).
    pub remote_clusters: Vec<(String, PathBuf)>,
    /// The one namespace whose `istio/multiCluster` Secrets add remote clusters (the
    /// gateway's own): a Secret anyone could create elsewhere must not add a cluster.
    pub remote_secret_namespace: String,
    /// The gateway's own cluster, never watched as a remote one.
    pub local_cluster: Option<String>,
}

pub use crate::model::CONTROLLER_NAME;

/// What one cluster's watchers have seen.
struct View {
    /// Kind index → `namespace/name` → object.
    objects: Vec<BTreeMap<String, Value>>,
    /// Kinds listed at least once (or absent from the cluster, or not watched there).
    synced: Vec<bool>,
    /// Kind index → the last watch error, cleared when the watch works again.
    errors: BTreeMap<usize, String>,
}

impl View {
    fn new(watched: impl Fn(&str) -> bool) -> Self {
        View {
            objects: vec![BTreeMap::new(); KINDS.len()],
            synced: KINDS.iter().map(|k| !watched(k.2)).collect(),
            errors: BTreeMap::new(),
        }
    }
}

/// A remote cluster's view and where its kubeconfig came from.
struct RemoteView {
    view: View,
    source: String,
    /// Why it cannot be watched at all (a kubeconfig that does not load).
    broken: Option<String>,
}

struct Store {
    local: View,
    remotes: BTreeMap<Arc<str>, RemoteView>,
    /// Bumped by every change, so the applier skips wake-ups that bring nothing new.
    version: u64,
}

/// Whose view a watcher writes.
#[derive(Clone)]
enum Slot {
    Local,
    Remote(Arc<str>),
}

impl Store {
    fn view_mut(&mut self, slot: &Slot) -> Option<&mut View> {
        match slot {
            Slot::Local => Some(&mut self.local),
            Slot::Remote(name) => self.remotes.get_mut(name).map(|r| &mut r.view),
        }
    }
}

async fn client(opts: &ClusterOptions) -> anyhow::Result<Client> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

async fn client_from(kubeconfig: kube::config::Kubeconfig) -> anyhow::Result<Client> {
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

fn key(obj: &DynamicObject) -> String {
    format!(
        "{}/{}",
        obj.metadata.namespace.as_deref().unwrap_or(""),
        obj.metadata.name.as_deref().unwrap_or("")
    )
}

/// A watched object as the JSON a manifest would hold (list items carry no kind).
fn to_value(obj: DynamicObject, ar: &ApiResource) -> Value {
    let mut v = serde_json::to_value(&obj).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
        m.insert("kind".into(), Value::String(ar.kind.clone()));
    }
    v
}

/// Whether the first list of a kind failed with this HTTP status (403: RBAC, 404: no CRD).
fn list_refused(e: &watcher::Error, code: u16) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == code
    )
}

/// What status writing reads of the objects it writes: their metadata (generation,
/// resourceVersion), spec and current status, keyed `Kind/ns/name` (`Kind//name` when
/// cluster-scoped); and the Gateways' address.
struct StatusView {
    objects: BTreeMap<String, Value>,
    addresses: Vec<Value>,
}

impl StatusView {
    fn of(s: &Store, address_service: Option<&crate::model::ObjKey>) -> Self {
        let mut objects = BTreeMap::new();
        for (k, list) in s.local.objects.iter().enumerate() {
            if !matches!(
                KINDS[k].2,
                "Gateway" | "HTTPRoute" | "GRPCRoute" | "GatewayClass"
            ) {
                continue;
            }
            for (key, v) in list {
                objects.insert(format!("{}/{key}", KINDS[k].2), v.clone());
            }
        }
        let services = KINDS.iter().position(|k| k.2 == "Service");
        let addresses = address_service
            .zip(services)
            .and_then(|(svc, k)| s.local.objects[k].get(&svc.to_string()))
            .map(service_addresses)
            .unwrap_or_default();
        StatusView { objects, addresses }
    }

    fn generation(&self, key: &str) -> i64 {
        self.objects
            .get(key)
            .and_then(|v| v["metadata"]["generation"].as_i64())
            .unwrap_or(0)
    }
}

/// A Service's addresses as Gateway `status.addresses`: its load balancer's ingress, else its
/// cluster IP.
fn service_addresses(svc: &Value) -> Vec<Value> {
    let ingress: Vec<Value> = svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| match (i["ip"].as_str(), i["hostname"].as_str()) {
            (Some(ip), _) => Some(serde_json::json!({"type": "IPAddress", "value": ip})),
            (None, Some(h)) => Some(serde_json::json!({"type": "Hostname", "value": h})),
            _ => None,
        })
        .collect();
    if !ingress.is_empty() {
        return ingress;
    }
    svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .map(|ip| vec![serde_json::json!({"type": "IPAddress", "value": ip})])
        .unwrap_or_default()
}

fn condition(
    kind: &str,
    outcome: &Result<(), (&'static str, String)>,
    ok_reason: &str,
    generation: i64,
    now: &str,
) -> Value {
    let (status, reason, message) = match outcome {
        Ok(()) => ("True", ok_reason.to_owned(), String::new()),
        Err((reason, message)) => ("False", (*reason).to_owned(), message.clone()),
    };
    serde_json::json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now,
    })
}

/// Writes `Accepted` on Locus's GatewayClasses, `Accepted`/`Programmed` and addresses on the
/// Gateways served and `Accepted`/`ResolvedRefs` on each route parentRef, as merge patches of
/// the status subresource, only when they change. A route's `status.parents` entries of other
/// controllers are kept (the list is written whole, so it is rebuilt from the current object,
/// under its resourceVersion: a concurrent change makes the write fail and retry, never
/// clobber). `false` when a write failed (retried soon).
async fn write_status(
    client: &Client,
    table: &crate::routing::RouteTable,
    view: &StatusView,
    written: &mut std::collections::HashMap<String, String>,
) -> bool {
    let now = jiff_now();
    let gvk = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind),
            plural,
        )
    };
    let mut patches: Vec<(ApiResource, String, String, Value, String)> = Vec::new();
    for (key, class) in &view.objects {
        let Some(name) = key.strip_prefix("GatewayClass//") else {
            continue;
        };
        if class["spec"]["controllerName"].as_str() != Some(CONTROLLER_NAME) {
            continue;
        }
        let generation = view.generation(key);
        patches.push((
            gvk("GatewayClass", "gatewayclasses"),
            String::new(),
            name.to_owned(),
            serde_json::json!({"status": {"conditions": [
                condition("Accepted", &Ok(()), "Accepted", generation, &now),
            ]}}),
            format!("{generation}"),
        ));
    }
    for gw in &table.gateways {
        let gw_key = format!("Gateway/{gw}");
        let generation = view.generation(&gw_key);
        // `spec.addresses` when the Gateway asks for some, else the gateway Service's.
        let addresses: Vec<Value> = match view.objects.get(&gw_key).and_then(|g| g["spec"]["addresses"].as_array()) {
            Some(asked) if !asked.is_empty() => asked
                .iter()
                .map(|a| serde_json::json!({"type": a["type"].as_str().unwrap_or("IPAddress"), "value": a["value"]}))
                .collect(),
            _ => view.addresses.clone(),
        };
        let conditions = vec![
            condition("Accepted", &Ok(()), "Accepted", generation, &now),
            condition("Programmed", &Ok(()), "Programmed", generation, &now),
        ];
        let mut fingerprint = format!("{generation}|{addresses:?}");
        let listeners: Vec<Value> = table
            .listener_status
            .iter()
            .filter(|l| l.gateway == *gw)
            .map(|l| {
                fingerprint.push_str(&format!(
                    "|{}:{}:{:?}:{:?}",
                    l.name, l.attached_routes, l.unsupported_protocol, l.refused_refs
                ));
                // The first refused certificate reference is the listener's ResolvedRefs; a
                // protocol conflict also makes it Conflicted and not Programmed.
                let resolved =
                    match l.refused_refs.iter().find(|(reason, _)| {
                        !matches!(*reason, "ProtocolConflict" | "PortUnavailable")
                    }) {
                        Some((reason, why)) => Err((*reason, why.clone())),
                        None => Ok(()),
                    };
                // Another Gateway of this process holds the port: not accepted.
                let port_taken = l
                    .refused_refs
                    .iter()
                    .find(|(reason, _)| *reason == "PortUnavailable")
                    .map(|(_, why)| why.clone());
                let conflict = l
                    .refused_refs
                    .iter()
                    .find(|(reason, _)| *reason == "ProtocolConflict")
                    .map(|(_, why)| why.clone());
                let (kinds, accepted, programmed) = match &l.unsupported_protocol {
                    None => (
                        serde_json::json!(l
                            .supported_kinds
                            .iter()
                            .map(|k| serde_json::json!({"group": "gateway.networking.k8s.io", "kind": k}))
                            .collect::<Vec<_>>()),
                        Ok(()),
                        Ok(()),
                    ),
                    Some(protocol) => {
                        let why = format!(
                            "protocol {protocol} is not served by Locus yet (HTTP and HTTPS only)"
                        );
                        (
                            serde_json::json!([]),
                            Err(("UnsupportedProtocol", why.clone())),
                            Err(("Invalid", why)),
                        )
                    }
                };
                let (accepted, programmed) = match (&conflict, &port_taken) {
                    (_, Some(why)) => (
                        Err(("PortUnavailable", why.clone())),
                        Err(("Invalid", why.clone())),
                    ),
                    (Some(why), None) => (accepted, Err(("Invalid", why.clone()))),
                    (None, None) => (accepted, programmed),
                };
                let mut conditions = vec![
                    condition("Accepted", &accepted, "Accepted", generation, &now),
                    condition("Programmed", &programmed, "Programmed", generation, &now),
                    condition("ResolvedRefs", &resolved, "ResolvedRefs", generation, &now),
                ];
                if let Some(why) = conflict {
                    // `Conflicted` is True when there is a conflict (a negative-polarity
                    // condition), so it is written by hand.
                    conditions.push(serde_json::json!({
                        "type": "Conflicted",
                        "status": "True",
                        "reason": "ProtocolConflict",
                        "message": why,
                        "observedGeneration": generation,
                        "lastTransitionTime": now,
                    }));
                }
                serde_json::json!({
                    "name": l.name,
                    "supportedKinds": kinds,
                    "attachedRoutes": l.attached_routes,
                    "conditions": conditions,
                })
            })
            .collect();
        patches.push((
            gvk("Gateway", "gateways"),
            gw.namespace.clone(),
            gw.name.clone(),
            serde_json::json!({"status": {"conditions": conditions, "listeners": listeners, "addresses": addresses}}),
            fingerprint,
        ));
    }
    let mut by_route: BTreeMap<
        (&'static str, &crate::model::ObjKey),
        Vec<&crate::routing::RouteParentStatus>,
    > = BTreeMap::new();
    for s in &table.route_status {
        by_route.entry((s.kind, &s.route)).or_default().push(s);
    }
    for ((kind, route), parents) in by_route {
        let route_key = format!("{kind}/{route}");
        let generation = view.generation(&route_key);
        let mut fingerprint = format!("{generation}");
        let parents: Vec<Value> = parents
            .iter()
            .map(|p| {
                fingerprint.push_str(&format!("|{}:{:?}:{:?}", p.gateway, p.accepted, p.resolved));
                let mut parent_ref = serde_json::json!({
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": p.gateway.namespace,
                    "name": p.gateway.name,
                });
                if let Some(s) = &p.section {
                    parent_ref["sectionName"] = Value::String(s.clone());
                }
                if let Some(port) = p.port {
                    parent_ref["port"] = Value::from(port);
                }
                serde_json::json!({
                    "parentRef": parent_ref,
                    "controllerName": CONTROLLER_NAME,
                    "conditions": [
                        condition("Accepted", &p.accepted, "Accepted", generation, &now),
                        condition("ResolvedRefs", &p.resolved, "ResolvedRefs", generation, &now),
                    ],
                })
            })
            .collect();
        let ar = if kind == "GRPCRoute" {
            gvk("GRPCRoute", "grpcroutes")
        } else {
            gvk("HTTPRoute", "httproutes")
        };
        // Other controllers' entries stay as they are.
        let current = view.objects.get(&route_key);
        let mut all: Vec<Value> = current
            .and_then(|r| r["status"]["parents"].as_array())
            .into_iter()
            .flatten()
            .filter(|p| p["controllerName"].as_str() != Some(CONTROLLER_NAME))
            .cloned()
            .collect();
        all.extend(parents);
        let mut body = serde_json::json!({"status": {"parents": all}});
        if let Some(rv) = current.and_then(|r| r["metadata"]["resourceVersion"].as_str()) {
            body["metadata"] = serde_json::json!({"resourceVersion": rv});
        }
        patches.push((
            ar,
            route.namespace.clone(),
            route.name.clone(),
            body,
            fingerprint,
        ));
    }
    let mut all_written = true;
    for (ar, ns, name, body, fingerprint) in patches {
        let key = format!("{}/{ns}/{name}", ar.kind);
        if written.get(&key) == Some(&fingerprint) {
            continue;
        }
        let api: Api<DynamicObject> = if ns.is_empty() {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), &ns, &ar)
        };
        match api
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => {
                written.insert(key, fingerprint);
            }
            // Changed since it was read (another controller wrote its entries): read again.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(object = %key, "status changed meanwhile; writing again after the next read");
                all_written = false;
            }
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "could not write status (use --no-status with read-only RBAC)");
                all_written = false;
            }
        }
    }
    all_written
}

/// Now, RFC 3339 in UTC (condition `lastTransitionTime`).
fn jiff_now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Whether two versions of an object differ only in status and bookkeeping.
fn same_but_status(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.remove("status");
            if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                meta.remove("resourceVersion");
                meta.remove("managedFields");
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// The watches' errors, for `/debug/config`; `None` when every watch works. A remote
/// cluster's are prefixed with its name.
fn status(s: &Store) -> Option<String> {
    let mut all: Vec<String> = s
        .local
        .errors
        .iter()
        .map(|(k, e)| format!("{}: {e}", KINDS[*k].2))
        .collect();
    for (name, r) in &s.remotes {
        if let Some(why) = &r.broken {
            all.push(format!("remote cluster {name} ({}): {why}", r.source));
        }
        for (k, e) in &r.view.errors {
            all.push(format!(
                "remote cluster {name} ({}): {}: {e}; its last view keeps routing",
                r.source, KINDS[*k].2
            ));
        }
    }
    (!all.is_empty()).then(|| all.join("; "))
}

/// Builds a resource set from everything watched. Objects the parser refuses are skipped
/// with a warning: the API server already validated them once, and one bad object must not
/// freeze every other change.
fn resource_set(store: &Store) -> ResourceSet {
    let mut set = ResourceSet::default();
    for (k, objects) in store.local.objects.iter().enumerate() {
        let origin_file: Arc<Path> = Arc::from(PathBuf::from(format!("cluster:{}", KINDS[k].2)));
        for (i, value) in objects.values().enumerate() {
            let origin = Origin {
                file: origin_file.clone(),
                index: i + 1,
            };
            if let Err(e) = parse_value_into(origin, value.clone(), &mut set) {
                set.warnings.push(format!("{e}; object skipped"));
            }
        }
    }
    for (name, remote) in &store.remotes {
        for (k, objects) in remote.view.objects.iter().enumerate() {
            let origin_file: Arc<Path> =
                Arc::from(PathBuf::from(format!("cluster {name}:{}", KINDS[k].2)));
            for (i, value) in objects.values().enumerate() {
                let origin = Origin {
                    file: origin_file.clone(),
                    index: i + 1,
                };
                let mut value = value.clone();
                value["metadata"]["labels"][CLUSTER_LABEL] = Value::String(name.to_string());
                if let Err(e) = parse_value_into(origin, value, &mut set) {
                    set.warnings.push(format!("{e}; object skipped"));
                }
            }
        }
    }
    set.files = vec![PathBuf::from("cluster")];
    set
}

/// Watches one kind of one cluster into the store, forever (list, then watch; re-list with
/// backoff after errors). The future ends only when dropped.
#[allow(clippy::too_many_arguments)]
async fn watch_kind(
    client: Client,
    namespace: Option<String>,
    k: usize,
    slot: Slot,
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    gateway: Arc<Gateway>,
) {
    let (group, version, kind, plural, optional) = KINDS[k];
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let cluster_scoped = matches!(
        kind,
        "Node" | "Namespace" | "GatewayClass" | "ClusterProperty"
    );
    let api: Api<DynamicObject> = match (&namespace, cluster_scoped) {
        (Some(ns), false) => Api::namespaced_with(client, ns, &ar),
        _ => Api::all_with(client, &ar),
    };
    let config = if kind == "Secret" {
        watcher::Config::default().fields("type=kubernetes.io/tls")
    } else {
        watcher::Config::default()
    };
    // Errors and metrics name the cluster when it is not the local one.
    let what = match &slot {
        Slot::Local => kind.to_owned(),
        Slot::Remote(name) => format!("{kind} (cluster {name})"),
    };
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut buffer: BTreeMap<String, Value> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let mut guard = store.lock().expect("cluster store lock");
        let Some(s) = guard.view_mut(&slot) else {
            return; // the remote cluster was removed
        };
        match event {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(obj)) => {
                buffer.insert(key(&obj), to_value(obj, &ar));
            }
            Ok(Event::InitDone) => {
                s.objects[k] = std::mem::take(&mut buffer);
                s.synced[k] = true;
                if s.errors.remove(&k).is_some() {
                    tracing::info!(kind = %what, "watch restored; re-listed");
                }
            }
            Ok(Event::Apply(obj)) => {
                let key = key(&obj);
                let value = to_value(obj, &ar);
                let unchanged = s.objects[k]
                    .get(&key)
                    .is_some_and(|old| same_but_status(old, &value));
                s.objects[k].insert(key, value);
                // Status writes (ours included) change nothing Locus routes by.
                if unchanged {
                    continue;
                }
            }
            Ok(Event::Delete(obj)) => {
                s.objects[k].remove(&key(&obj));
            }
            // Secrets and ConfigMaps hold only certificates: without RBAC for them,
            // the rest of the cluster still routes (HTTPS listeners get no certificate,
            // TLS to endpoints with a CA reference answers 503).
            Err(e) if matches!(kind, "Secret" | "ConfigMap") && list_refused(&e, 403) => {
                if !s.synced[k] {
                    tracing::warn!(
                        kind,
                        error = %e,
                        "cannot list {kind}s (RBAC); certificates they hold cannot be used"
                    );
                    s.synced[k] = true;
                }
                continue;
            }
            Err(e) if optional && list_refused(&e, 404) => {
                if !s.synced[k] {
                    tracing::info!(
                        kind = %what,
                        "not served by this cluster (CRD not installed); treated as empty"
                    );
                    s.synced[k] = true;
                }
                continue;
            }
            Err(e) => {
                let text = e.to_string();
                if s.errors.insert(k, text.clone()).is_none() {
                    tracing::warn!(kind = %what, error = %text, "watch failed; routing on the last good view and retrying with backoff");
                }
                gateway.note_discovery_error(&what);
                gateway.set_discovery_status(status(&guard));
                continue;
            }
        }
        gateway.set_discovery_status(status(&guard));
        guard.version += 1;
        drop(guard);
        changed.notify_one();
    }
}

/// Watches a remote cluster's endpoint kinds; ends only when dropped. A kubeconfig that does
/// not load is reported (status, log) and the remote stays empty.
async fn watch_remote(
    name: Arc<str>,
    kubeconfig: kube::config::Kubeconfig,
    namespace: Option<String>,
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    gateway: Arc<Gateway>,
) {
    let client = match client_from(kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(cluster = %name, error = %e, "cannot watch remote cluster: its kubeconfig does not load");
            let mut s = store.lock().expect("cluster store lock");
            if let Some(r) = s.remotes.get_mut(&name) {
                r.broken = Some(format!("kubeconfig: {e}"));
            }
            gateway.set_discovery_status(status(&s));
            return;
        }
    };
    let watches = KINDS
        .iter()
        .enumerate()
        .filter(|(_, k)| REMOTE_KINDS.contains(&k.2))
        .map(|(k, _)| {
            watch_kind(
                client.clone(),
                namespace.clone(),
                k,
                Slot::Remote(name.clone()),
                store.clone(),
                changed.clone(),
                gateway.clone(),
            )
        });
    futures::future::join_all(watches).await;
}

/// The remote clusters running, by name: their watch task and what started it.
struct Remotes {
    running: BTreeMap<Arc<str>, (tokio::task::JoinHandle<()>, String)>,
    namespace: Option<String>,
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    gateway: Arc<Gateway>,
}

impl Remotes {
    /// Starts watching `name` (replacing what watched it before) with `kubeconfig`.
    fn start(
        &mut self,
        name: &str,
        kubeconfig: kube::config::Kubeconfig,
        source: String,
        fingerprint: String,
    ) {
        let name: Arc<str> = Arc::from(name);
        if self
            .running
            .get(&name)
            .is_some_and(|(_, f)| *f == fingerprint)
        {
            return;
        }
        self.stop(&name);
        tracing::info!(cluster = %name, from = %source, "watching remote cluster");
        self.store
            .lock()
            .expect("cluster store lock")
            .remotes
            .insert(
                name.clone(),
                RemoteView {
                    view: View::new(|k| REMOTE_KINDS.contains(&k)),
                    source,
                    broken: None,
                },
            );
        let task = tokio::spawn(watch_remote(
            name.clone(),
            kubeconfig,
            self.namespace.clone(),
            self.store.clone(),
            self.changed.clone(),
            self.gateway.clone(),
        ));
        self.running.insert(name, (task, fingerprint));
    }

    fn stop(&mut self, name: &Arc<str>) {
        if let Some((task, _)) = self.running.remove(name) {
            task.abort();
            let mut s = self.store.lock().expect("cluster store lock");
            s.remotes.remove(name);
            s.version += 1;
            self.gateway.set_discovery_status(status(&s));
            drop(s);
            self.changed.notify_one();
        }
    }
}

/// Watches Secrets labelled `istio/multiCluster: "true"`: each data key is a cluster name and
/// its value a kubeconfig (Istio's remote secrets). Clusters appear, change and go with them;
/// those given on the command line (`fixed`) take precedence.
async fn watch_remote_secrets(
    client: Client,
    namespace: String,
    fixed: Vec<String>,
    local: Option<String>,
    mut remotes: Remotes,
) {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{MULTICLUSTER_SECRET_LABEL}=true"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut secrets: BTreeMap<String, k8s_openapi::api::core::v1::Secret> = BTreeMap::new();
    let mut buffer = BTreeMap::new();
    let name_of = |s: &k8s_openapi::api::core::v1::Secret| {
        format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or(""),
            s.metadata.name.as_deref().unwrap_or("")
        )
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(s)) => {
                buffer.insert(name_of(&s), s);
            }
            Ok(Event::InitDone) => secrets = std::mem::take(&mut buffer),
            Ok(Event::Apply(s)) => {
                secrets.insert(name_of(&s), s);
            }
            Ok(Event::Delete(s)) => {
                secrets.remove(&name_of(&s));
            }
            Err(e) if list_refused(&e, 403) => {
                tracing::info!(error = %e, "cannot list Secrets for remote clusters (RBAC); only --remote-cluster ones are watched");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch of remote-cluster Secrets failed; retrying");
                continue;
            }
        }
        let mut wanted: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
        for (secret_name, secret) in &secrets {
            // The API server filters by label and namespace; a filter that was not applied
            // must not turn every Secret into a cluster.
            let labelled = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MULTICLUSTER_SECRET_LABEL))
                .is_some_and(|v| v == "true");
            if !labelled || secret.metadata.namespace.as_deref() != Some(namespace.as_str()) {
                continue;
            }
            // `stringData` is what a manifest may hold before the API server folds it into
            // `data`.
            let entries = secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k, v.0.clone()))
                .chain(
                    secret
                        .string_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k, v.clone().into_bytes())),
                );
            for (cluster, data) in entries {
                if !fixed.contains(cluster) && local.as_deref() != Some(cluster.as_str()) {
                    wanted.insert(cluster.clone(), (format!("Secret {secret_name}"), data));
                }
            }
        }
        let gone: Vec<Arc<str>> = remotes
            .running
            .keys()
            .filter(|n| !fixed.iter().any(|f| f.as_str() == &***n) && !wanted.contains_key(&***n))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(cluster = %name, "remote cluster Secret removed; no longer watched");
            remotes.stop(&name);
        }
        for (cluster, (source, bytes)) in wanted {
            let text = String::from_utf8_lossy(&bytes);
            match kube::config::Kubeconfig::from_yaml(&text)
                .map_err(|e| e.to_string())
                .and_then(|kc| inline_only(&kc).map(|()| kc))
            {
                Ok(kc) => {
                    let fingerprint = format!("{:x}", fingerprint(&bytes));
                    remotes.start(&cluster, kc, source, fingerprint);
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster, from = %source, error = %e, "remote cluster kubeconfig does not parse; not watched");
                }
            }
        }
    }
}

/// A kubeconfig from a Secret may only carry its credentials inline: a command to run (`exec`,
/// `auth-provider`) or a file to read (`tokenFile`, certificate and key paths) would let
/// whoever wrote the Secret run code in the gateway or send it the gateway's own token. As
/// Istio does for remote secrets, such kubeconfigs are refused.
fn inline_only(kc: &kube::config::Kubeconfig) -> Result<(), String> {
    for user in &kc.auth_infos {
        let Some(a) = &user.auth_info else { continue };
        let refused = [
            ("exec", a.exec.is_some()),
            ("auth-provider", a.auth_provider.is_some()),
            ("tokenFile", a.token_file.is_some()),
            ("client-certificate", a.client_certificate.is_some()),
            ("client-key", a.client_key.is_some()),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(format!(
                "user {}: {field} is not allowed in a remote secret (credentials must be inline)",
                user.name
            ));
        }
    }
    for c in &kc.clusters {
        if c.cluster
            .as_ref()
            .is_some_and(|c| c.certificate_authority.is_some())
        {
            return Err(format!(
                "cluster {}: certificate-authority (a file) is not allowed in a remote secret; use certificate-authority-data",
                c.name
            ));
        }
    }
    Ok(())
}

/// A cheap fingerprint of a kubeconfig, to restart a remote's watch only when it changed.
fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Runs the watchers and applies every change to `gateway` until the process ends.
pub async fn run(gateway: Arc<Gateway>, opts: ClusterOptions) -> anyhow::Result<()> {
    let client = client(&opts).await?;
    let store = Arc::new(Mutex::new(Store {
        local: View::new(|_| true),
        remotes: BTreeMap::new(),
        version: 0,
    }));
    let mut applied_version = None;
    let mut written: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let changed = Arc::new(Notify::new());
    for k in 0..KINDS.len() {
        tokio::spawn(watch_kind(
            client.clone(),
            opts.namespace.clone(),
            k,
            Slot::Local,
            store.clone(),
            changed.clone(),
            gateway.clone(),
        ));
    }
    let mut remotes = Remotes {
        running: BTreeMap::new(),
        namespace: opts.namespace.clone(),
        store: store.clone(),
        changed: changed.clone(),
        gateway: gateway.clone(),
    };
    for (name, path) in &opts.remote_clusters {
        if opts.local_cluster.as_deref() == Some(name.as_str()) {
            anyhow::bail!(
                "--remote-cluster {name}: that is this gateway's own cluster (--cluster)"
            );
        }
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| anyhow::anyhow!("--remote-cluster {name}={}: {e}", path.display()))?;
        remotes.start(name, kc, path.display().to_string(), String::new());
    }
    tokio::spawn(watch_remote_secrets(
        client.clone(),
        opts.remote_secret_namespace.clone(),
        opts.remote_clusters
            .iter()
            .map(|(n, _)| n.clone())
            .collect(),
        opts.local_cluster.clone(),
        remotes,
    ));
    // One replica writes status: the holder of the Lease.
    let leadership = Arc::new(lease::Leadership::default());
    if let (true, Some((ns, name))) = (opts.write_status, opts.lease.clone()) {
        let announce = gateway.clone();
        let wake = changed.clone();
        tokio::spawn(lease::run(
            client.clone(),
            ns,
            name,
            lease::identity(),
            leadership.clone(),
            move |held| {
                announce.note_status_lease(held);
                // A new leader writes the status it has been holding back; one that lost the
                // lease forgets what it wrote (the next holder may write something else).
                wake.notify_one();
            },
        ));
    }
    let may_write = |leadership: &lease::Leadership| {
        opts.write_status && (opts.lease.is_none() || leadership.is_leader())
    };
    // Status still to write: a write that failed (retried every STATUS_RETRY). A replica that
    // is not the leader holds nothing pending: it is woken when it becomes the leader.
    let mut status_pending = false;
    // Status not written since this replica last became the leader (or started).
    let mut status_unwritten = true;
    // The applier: waits for every kind's first list, then applies debounced changes.
    loop {
        if status_pending {
            let _ = tokio::time::timeout(STATUS_RETRY, changed.notified()).await;
        } else {
            changed.notified().await;
        }
        tokio::time::sleep(DEBOUNCE).await;
        if !may_write(&leadership) {
            // Another replica writes; if this one becomes the leader it writes everything then.
            status_pending = false;
            status_unwritten = true;
            written.clear();
        }
        let (set, view) = {
            let s = store.lock().expect("cluster store lock");
            // Readiness needs the local cluster listed; remote clusters join when they can.
            if !s.local.synced.iter().all(|x| *x) {
                continue;
            }
            let set = (applied_version != Some(s.version)).then(|| resource_set(&s));
            let status_due = status_pending || (status_unwritten && may_write(&leadership));
            if set.is_none() && !status_due {
                continue;
            }
            applied_version = Some(s.version);
            (set, StatusView::of(&s, opts.address_service.as_ref()))
        };
        if let Some(set) = set {
            if gateway.apply(set).await.is_err() {
                continue;
            }
        }
        if may_write(&leadership) {
            status_pending = !write_status(&client, &gateway.table(), &view, &mut written).await;
            status_unwritten = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inline_only;

    fn kubeconfig(user: &str) -> kube::config::Kubeconfig {
        kube::config::Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://10.0.0.1\"}}\nusers:\n- name: u\n  user: {user}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ))
        .unwrap()
    }

    /// A remote secret's kubeconfig may not run commands or read files in the gateway.
    #[test]
    fn remote_secrets_carry_credentials_inline_only() {
        assert!(inline_only(&kubeconfig("{token: abc}")).is_ok());
        for refused in [
            "{exec: {apiVersion: client.authentication.k8s.io/v1, command: sh, args: [-c, id]}}",
            "{tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}",
            "{client-certificate: /etc/cert.pem, client-key: /etc/key.pem}",
        ] {
            let err = inline_only(&kubeconfig(refused)).unwrap_err();
            assert!(
                err.contains("not allowed in a remote secret"),
                "{refused}: {err}"
            );
        }
    }
}
