//! `locus serve --kubernetes`: the same resources, watched live from the API server.
//!
//! One kube-runtime watcher per kind (list, then watch; re-list after disconnects and
//! `410 Gone`, with backoff). Objects are kept as JSON and turned into a
//! [`ResourceSet`] by the very parser file mode uses, so both sources feed the same model and
//! the same validation. The first configuration is applied only once every kind has been
//! listed, so a new replica never routes on half a view; afterwards changes are applied
//! after a short debounce. While the API server is unreachable the last view keeps routing,
//! and the gateway says so (log, `locus_discovery_errors_total`, `/debug/config`).

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
];

/// How long changes are gathered before one configuration is built from them.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub kubeconfig: Option<PathBuf>,
    /// Watch one namespace (cluster-scoped kinds are always watched whole).
    pub namespace: Option<String>,
    /// Write Gateway and HTTPRoute status conditions (off for read-only RBAC).
    pub write_status: bool,
}

/// The `controllerName` of the GatewayClass Locus implements.
pub const CONTROLLER_NAME: &str = "locus.io/gateway";

#[derive(Default)]
struct Store {
    /// Kind index → `namespace/name` → object.
    objects: Vec<BTreeMap<String, Value>>,
    /// Kinds listed at least once (or absent from the cluster).
    synced: Vec<bool>,
    /// Kind index → the last watch error, cleared when the watch works again.
    errors: BTreeMap<usize, String>,
    /// Bumped by every change, so the applier skips wake-ups that bring nothing new.
    version: u64,
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

/// `metadata.generation` of Gateways and HTTPRoutes, keyed `Kind/ns/name`.
fn generations(s: &Store) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (k, objects) in s.objects.iter().enumerate() {
        if !matches!(KINDS[k].2, "Gateway" | "HTTPRoute" | "GRPCRoute") {
            continue;
        }
        for (key, v) in objects {
            out.insert(
                format!("{}/{key}", KINDS[k].2),
                v["metadata"]["generation"].as_i64().unwrap_or(0),
            );
        }
    }
    out
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

/// Writes `Accepted`/`Programmed` on the Gateways served and `Accepted`/`ResolvedRefs` on each
/// HTTPRoute parentRef, as merge patches of the status subresource, only when they change.
async fn write_status(
    client: &Client,
    table: &crate::routing::RouteTable,
    generations: &BTreeMap<String, i64>,
    written: &mut std::collections::HashMap<String, String>,
) {
    let now = jiff_now();
    let gvk = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind),
            plural,
        )
    };
    let mut patches: Vec<(ApiResource, String, String, Value, String)> = Vec::new();
    for gw in &table.gateways {
        let generation = generations
            .get(&format!("Gateway/{gw}"))
            .copied()
            .unwrap_or(0);
        let conditions = vec![
            condition("Accepted", &Ok(()), "Accepted", generation, &now),
            condition("Programmed", &Ok(()), "Programmed", generation, &now),
        ];
        let mut fingerprint = format!("{generation}");
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
                        serde_json::json!([
                            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
                            {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}
                        ]),
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
            serde_json::json!({"status": {"conditions": conditions, "listeners": listeners}}),
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
        let generation = generations
            .get(&format!("{kind}/{route}"))
            .copied()
            .unwrap_or(0);
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
        patches.push((
            ar,
            route.namespace.clone(),
            route.name.clone(),
            serde_json::json!({"status": {"parents": parents}}),
            fingerprint,
        ));
    }
    for (ar, ns, name, body, fingerprint) in patches {
        let key = format!("{}/{ns}/{name}", ar.kind);
        if written.get(&key) == Some(&fingerprint) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
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
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "could not write status (use --no-status with read-only RBAC)")
            }
        }
    }
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

/// The watches' errors, for `/debug/config`; `None` when every watch works.
fn status(s: &Store) -> Option<String> {
    (!s.errors.is_empty()).then(|| {
        s.errors
            .iter()
            .map(|(k, e)| format!("{}: {e}", KINDS[*k].2))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Builds a resource set from everything watched. Objects the parser refuses are skipped
/// with a warning: the API server already validated them once, and one bad object must not
/// freeze every other change.
fn resource_set(store: &Store) -> ResourceSet {
    let mut set = ResourceSet::default();
    for (k, objects) in store.objects.iter().enumerate() {
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
    set.files = vec![PathBuf::from("cluster")];
    set
}

/// Runs the watchers and applies every change to `gateway` until the process ends.
pub async fn run(gateway: Arc<Gateway>, opts: ClusterOptions) -> anyhow::Result<()> {
    let client = client(&opts).await?;
    let store = Arc::new(Mutex::new(Store {
        objects: vec![BTreeMap::new(); KINDS.len()],
        synced: vec![false; KINDS.len()],
        errors: BTreeMap::new(),
        version: 0,
    }));
    let mut applied_version = None;
    let mut written: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let changed = Arc::new(Notify::new());
    for (k, &(group, version, kind, plural, optional)) in KINDS.iter().enumerate() {
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let cluster_scoped = matches!(kind, "Node" | "Namespace");
        let api: Api<DynamicObject> = match (&opts.namespace, cluster_scoped) {
            (Some(ns), false) => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let store = store.clone();
        let changed = changed.clone();
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let config = if kind == "Secret" {
                watcher::Config::default().fields("type=kubernetes.io/tls")
            } else {
                watcher::Config::default()
            };
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            let mut buffer: BTreeMap<String, Value> = BTreeMap::new();
            while let Some(event) = stream.next().await {
                let mut s = store.lock().expect("cluster store lock");
                match event {
                    Ok(Event::Init) => buffer.clear(),
                    Ok(Event::InitApply(obj)) => {
                        buffer.insert(key(&obj), to_value(obj, &ar));
                    }
                    Ok(Event::InitDone) => {
                        s.objects[k] = std::mem::take(&mut buffer);
                        s.synced[k] = true;
                        if s.errors.remove(&k).is_some() {
                            tracing::info!(kind, "watch restored; re-listed");
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
                                kind,
                                "not served by this cluster (CRD not installed); treated as empty"
                            );
                            s.synced[k] = true;
                        }
                        continue;
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if s.errors.insert(k, text.clone()).is_none() {
                            tracing::warn!(kind, error = %text, "watch failed; routing on the last good view and retrying with backoff");
                        }
                        gateway.note_discovery_error(kind);
                        gateway.set_discovery_status(status(&s));
                        continue;
                    }
                }
                gateway.set_discovery_status(status(&s));
                s.version += 1;
                drop(s);
                changed.notify_one();
            }
        });
    }
    // The applier: waits for every kind's first list, then applies debounced changes.
    loop {
        changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        let (set, generations) = {
            let s = store.lock().expect("cluster store lock");
            if !s.synced.iter().all(|x| *x) || applied_version == Some(s.version) {
                continue;
            }
            applied_version = Some(s.version);
            (resource_set(&s), generations(&s))
        };
        if gateway.apply(set).await.is_ok() && opts.write_status {
            write_status(&client, &gateway.table(), &generations, &mut written).await;
        }
    }
}
