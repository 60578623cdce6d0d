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
];

/// How long changes are gathered before one configuration is built from them.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub kubeconfig: Option<PathBuf>,
    /// Watch one namespace (cluster-scoped kinds are always watched whole).
    pub namespace: Option<String>,
}

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

fn is_not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404
    )
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
            let mut stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
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
                        s.objects[k].insert(key(&obj), to_value(obj, &ar));
                    }
                    Ok(Event::Delete(obj)) => {
                        s.objects[k].remove(&key(&obj));
                    }
                    Err(e) if optional && is_not_found(&e) => {
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
        let set = {
            let s = store.lock().expect("cluster store lock");
            if !s.synced.iter().all(|x| *x) || applied_version == Some(s.version) {
                continue;
            }
            applied_version = Some(s.version);
            resource_set(&s)
        };
        let _ = gateway.apply(&set).await;
    }
}
