//! The validated model: what the resources mean, independent of where they came from.
//!
//! Sources (files now, the cluster later) produce a [`ResourceSet`]; [`Model::build`] checks it
//! and resolves it — Services to their endpoints with localities, HTTPRoutes to the Gateways
//! they attach to — into plain domain types the routing layer consumes. Anything Locus cannot
//! honour becomes a warning here, so `check`, the log and the admin API all say the same.

pub mod filters;
mod gateways;
pub mod multicluster;
pub mod policies;
pub mod routes;
mod services;
pub mod upstream_tls;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use locus_core::Locality;

use crate::resources::multicluster as multicluster_res;
use crate::resources::{ConfigError, Document, Resource, ResourceSet};

pub use filters::{Filters, HeaderEdits, Mirror, PathEdit, Redirect, Rewrite};
pub use gateways::{
    AllowedRoutes, ClientCa, ClientValidation, GatewayModel, ListenerModel, CONTROLLER_NAME,
};
pub use policies::{ActiveCheck, Backoff, HealthConfig, RetryPolicy, UpstreamPolicy};
pub use routes::{
    BackendRefModel, MatchModel, ParentRefModel, PathMatch, RouteKind, RouteModel, RuleModel,
    SessionModel, ValueMatch,
};
pub use services::{ServiceModel, ServicePortModel};

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes Node as far as locality goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeModel {
    pub name: String,
    pub locality: Locality,
    pub labels: BTreeMap<String, String>,
}

pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";

/// Everything Locus routes by, validated.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub gateways: Vec<GatewayModel>,
    /// GatewayClass name → its `spec.controllerName`.
    pub gateway_classes: BTreeMap<String, String>,
    pub routes: Vec<RouteModel>,
    pub services: BTreeMap<ObjKey, ServiceModel>,
    pub nodes: BTreeMap<String, NodeModel>,
    /// Nodes read from other clusters, by (cluster, node name).
    pub remote_nodes: BTreeMap<(String, String), NodeModel>,
    /// The gateway's own cluster as the resources name it (`--cluster` given to the source,
    /// else the MCS ClusterProperty `cluster.clusterset.k8s.io`), and where that came from.
    pub cluster: Option<(String, String)>,
    /// The gateway's own network (`--network`, else the `topology.istio.io/network` label of
    /// its cluster's `istio-system` Namespace): endpoints of other networks are reached
    /// through their east-west gateways.
    pub network: Option<String>,
    /// The port this gateway accepts other networks' east-west traffic on (`--east-west-port`).
    pub east_west_port: Option<u16>,
    /// Services that are a network's east-west gateway (labelled `topology.istio.io/network`):
    /// never destinations of east-west traffic.
    pub network_gateway_services: std::collections::BTreeSet<ObjKey>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// ReferenceGrants, which let HTTPRoutes reference Services in other namespaces.
    pub grants: Vec<GrantModel>,
    /// TLS Secrets (`type: kubernetes.io/tls`); `Err` says what is wrong with one.
    pub secrets: BTreeMap<ObjKey, Result<TlsSecret, String>>,
    /// ConfigMaps' data (CA bundles for client certificate validation).
    pub config_maps: BTreeMap<ObjKey, BTreeMap<String, String>>,
    /// Settings Locus read but cannot honour, skipped kinds, unresolved references.
    pub warnings: Vec<String>,
    /// Routes refused for an invalid field: not served (the others are); `locus check` fails
    /// on them.
    pub route_errors: Vec<ConfigError>,
}

/// One ReferenceGrant: in `namespace`, objects of `to` (group, kind, optional name) may be
/// referenced from objects of `from` (group, kind, namespace).
#[derive(Clone, Debug, PartialEq)]
pub struct GrantModel {
    pub namespace: String,
    pub from: Vec<(String, String, String)>,
    pub to: Vec<(String, String, Option<String>)>,
}

impl GrantModel {
    /// Whether an HTTPRoute in `route_ns` may reference Service `name` in this namespace.
    pub fn allows_route_to_service(&self, route_ns: &str, name: &str) -> bool {
        self.allows_route_to(route_ns, "", "Service", name)
    }

    /// Whether an HTTPRoute in `route_ns` may reference the `group`/`kind` object `name` in
    /// this namespace.
    pub fn allows_route_to(&self, route_ns: &str, group: &str, kind: &str, name: &str) -> bool {
        let core = |g: &str| g.is_empty() || g == "core";
        self.from.iter().any(|(g, k, ns)| {
            g == "gateway.networking.k8s.io" && k == "HTTPRoute" && ns == route_ns
        }) && self.to.iter().any(|(g, k, n)| {
            (g == group || core(g) && core(group))
                && k == kind
                && n.as_ref().is_none_or(|n| n == name)
        })
    }

    /// Whether a Gateway in `gateway_ns` may use Secret `name` in this namespace.
    pub fn allows_gateway_to_secret(&self, gateway_ns: &str, name: &str) -> bool {
        self.from.iter().any(|(g, k, ns)| {
            g == "gateway.networking.k8s.io" && k == "Gateway" && ns == gateway_ns
        }) && self.to.iter().any(|(g, k, n)| {
            (g.is_empty() || g == "core") && k == "Secret" && n.as_ref().is_none_or(|n| n == name)
        })
    }
}

/// A `kubernetes.io/tls` Secret: a certificate chain and its private key, as PEM.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TlsSecret {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsSecret {
    // Never print a private key, not even in a debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsSecret({} bytes of certificate)", self.cert_pem.len())
    }
}

/// Context for errors about one document.
pub(crate) struct DocCtx<'a> {
    pub doc: &'a Document,
}

impl DocCtx<'_> {
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.doc.origin.file, self.doc.doc.clone(), field, message)
    }

    /// An optional port field (`i32` in the API types): 1–65535, or an error naming `field`.
    pub fn port(&self, field: &str, n: Option<i32>) -> Result<Option<u16>, ConfigError> {
        n.map(|n| {
            u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| self.error(field, format!("{n} is not a port")))
        })
        .transpose()
    }

    /// `file: document N (Kind ns/name)`, to prefix warnings.
    pub fn place(&self) -> String {
        format!("{}: {}", self.doc.origin.file.display(), self.doc.doc)
    }
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn name_of(
    ctx: &DocCtx<'_>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<String, ConfigError> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_owned()),
        _ => Err(ctx.error("metadata.name", "missing")),
    }
}

/// Reads the locality labels of a Node (or of anything labelled like one).
pub fn locality_from_labels(labels: &BTreeMap<String, String>) -> Locality {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Locality {
        region: get(LABEL_REGION),
        zone: get(LABEL_ZONE),
        subzone: get(LABEL_SUBZONE),
    }
}

impl Model {
    /// Validates and resolves a set of resources.
    pub fn build(set: &ResourceSet) -> Result<Model, ConfigError> {
        let mut model = Model {
            warnings: set.warnings.clone(),
            ..Model::default()
        };
        check_duplicates(&set.documents)?;
        model.cluster = set
            .local_cluster
            .clone()
            .filter(|c| !c.is_empty())
            .map(|c| (c, "--cluster / CLUSTER_NAME".to_owned()))
            .or_else(|| {
                set.documents.iter().find_map(|d| match &d.resource {
                    Resource::ClusterProperty(p)
                        if p.metadata.name.as_deref()
                            == Some(multicluster_res::CLUSTER_ID_PROPERTY)
                            && !p.spec.value.is_empty() =>
                    {
                        Some((
                            p.spec.value.clone(),
                            format!("ClusterProperty {}", multicluster_res::CLUSTER_ID_PROPERTY),
                        ))
                    }
                    _ => None,
                })
            });
        let local_cluster = model.cluster.as_ref().map(|(c, _)| c.clone());
        let local_cluster = local_cluster.as_deref();
        model.east_west_port = set.east_west_port;
        let mut networks = services::Networks::default();

        // Nodes and namespaces first: endpoints and routes refer to them.
        for doc in &set.documents {
            let ctx = DocCtx { doc };
            match &doc.resource {
                Resource::Node(node) => {
                    let name = name_of(&ctx, &node.metadata)?;
                    let labels = node.metadata.labels.clone().unwrap_or_default();
                    let cluster =
                        services::cluster_of(Some(&labels), services::CLUSTER_LABEL, local_cluster);
                    let node = NodeModel {
                        name: name.clone(),
                        locality: locality_from_labels(&labels),
                        labels,
                    };
                    match cluster {
                        None => model.nodes.insert(name, node),
                        Some(c) => model.remote_nodes.insert((c.to_string(), name), node),
                    };
                }
                Resource::Namespace(ns) => {
                    let name = name_of(&ctx, &ns.metadata)?;
                    let cluster = services::cluster_of(
                        ns.metadata.labels.as_ref(),
                        services::CLUSTER_LABEL,
                        local_cluster,
                    );
                    if let Some(net) = ns
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(services::NETWORK_LABEL))
                    {
                        networks
                            .namespaces
                            .insert((cluster.clone(), name.clone()), net.clone());
                    }
                    if cluster.is_some() {
                        continue; // another cluster's: only its network matters here
                    }
                    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
                    labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                    model.namespaces.insert(name, labels);
                }
                Resource::GatewayClass(c) => {
                    let name = name_of(&ctx, &c.metadata)?;
                    model
                        .gateway_classes
                        .insert(name, c.spec.controller_name.clone());
                }
                Resource::ReferenceGrant(g) => {
                    name_of(&ctx, &g.metadata)?;
                    model.grants.push(GrantModel {
                        namespace: namespace_of(&g.metadata),
                        from: g
                            .spec
                            .from
                            .iter()
                            .map(|f| (f.group.clone(), f.kind.clone(), f.namespace.clone()))
                            .collect(),
                        to: g
                            .spec
                            .to
                            .iter()
                            .map(|t| (t.group.clone(), t.kind.clone(), t.name.clone()))
                            .collect(),
                    });
                }
                _ => {}
            }
        }
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut entries = Vec::new();
        let mut rules = Vec::new();
        let mut traffic = Vec::new();
        let mut backend_tls = Vec::new();
        let mut tls_sources = upstream_tls::TlsSources::default();
        let mut imports = Vec::new();
        let mut virtual_destinations = Vec::new();
        let mut shifts = Vec::new();
        for doc in &set.documents {
            let ctx = DocCtx { doc };
            match &doc.resource {
                Resource::Gateway(gw) => {
                    let mut g = gateways::build(&ctx, gw, &model.grants, &mut model.warnings)?;
                    g.controller = model.gateway_classes.get(&g.class).cloned();
                    model.gateways.push(g);
                }
                Resource::HttpRoute(route, extras) => {
                    let built =
                        routes::build(&ctx, route, extras, &model.grants, &mut model.warnings);
                    model.add_route(&ctx, &**route, RouteKind::Http, built)?;
                }
                Resource::GrpcRoute(route) => {
                    let built = routes::build_grpc(&ctx, route, &model.grants, &mut model.warnings);
                    model.add_route(&ctx, &**route, RouteKind::Grpc, built)?;
                }
                Resource::Service(svc) => services.push((doc, &**svc)),
                Resource::EndpointSlice(slice) => slices.push((doc, &**slice)),
                Resource::WorkloadEntry(we) => entries.push((doc, &**we)),
                Resource::DestinationRule(dr) => rules.push((doc, &**dr)),
                Resource::BackendTrafficPolicy(btp) => traffic.push((doc, &**btp)),
                Resource::Secret(secret) => {
                    let key = ObjKey {
                        namespace: namespace_of(&secret.metadata),
                        name: name_of(&ctx, &secret.metadata)?,
                    };
                    tls_sources.secrets.insert(key.clone(), secret_data(secret));
                    model.secrets.insert(key, tls_secret(secret));
                }
                Resource::ConfigMap(cm) => {
                    let key = ObjKey {
                        namespace: namespace_of(&cm.metadata),
                        name: name_of(&ctx, &cm.metadata)?,
                    };
                    let data = cm.data.clone().unwrap_or_default();
                    model.config_maps.insert(key.clone(), data.clone());
                    tls_sources.config_maps.insert(key, data);
                }
                Resource::BackendTlsPolicy(p) => {
                    name_of(&ctx, &p.metadata)?;
                    backend_tls.push((doc, &**p));
                }
                Resource::ServiceImport(i) => imports.push((doc, &**i)),
                Resource::VirtualDestination(vd) => virtual_destinations.push((doc, &**vd)),
                Resource::GlooTrafficPolicy(tp) => shifts.push((doc, &**tp)),
                Resource::Node(_)
                | Resource::Namespace(_)
                | Resource::ReferenceGrant(_)
                | Resource::GatewayClass(_)
                | Resource::ClusterProperty(_) => {}
            }
        }
        networks.local = set
            .local_network
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                networks
                    .namespaces
                    .get(&(None, "istio-system".into()))
                    .cloned()
            });
        model.network = networks.local.clone();
        let mut endpoint_sources = services::EndpointSources::build(
            &slices,
            &entries,
            &services::NodeViews {
                local: &model.nodes,
                remote: &model.remote_nodes,
            },
            local_cluster,
            networks,
            &mut model.warnings,
        )?;
        let policies = policies::Policies::build(
            &rules,
            &traffic,
            &backend_tls,
            tls_sources,
            &mut model.warnings,
        )?;
        // Every Service as each cluster defines it. One name in one namespace is one Service
        // across clusters (Istio's namespace sameness): the gateway's own cluster's definition
        // wins, and its endpoints are those of every cluster.
        let mut catalog = Vec::new();
        for &(doc, svc) in &services {
            let ctx = DocCtx { doc };
            let key = ObjKey::new(&namespace_of(&svc.metadata), &name_of(&ctx, &svc.metadata)?);
            let cluster = services::cluster_of(
                svc.metadata.labels.as_ref(),
                services::CLUSTER_LABEL,
                local_cluster,
            );
            if svc
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(services::NETWORK_LABEL))
            {
                model.network_gateway_services.insert(key.clone());
            }
            catalog.push(multicluster::ClusterService { svc, key, cluster });
        }
        multicluster::find_network_gateways(&mut endpoint_sources, &catalog, &mut model.warnings);
        let mut order: Vec<usize> = (0..services.len()).collect();
        order.sort_by_key(|&i| catalog[i].cluster.is_some());
        for i in order {
            let (doc, svc) = services[i];
            if model.services.contains_key(&catalog[i].key) {
                continue;
            }
            let ctx = DocCtx { doc };
            let built =
                services::build(&ctx, svc, &endpoint_sources, &policies, &mut model.warnings);
            let s = match (built, &catalog[i].cluster) {
                (Ok(s), _) => s,
                // Another cluster's Service that does not validate is skipped, never the whole
                // view: one remote must not hold back every other change.
                (Err(e), Some(cluster)) => {
                    model
                        .warnings
                        .push(format!("{e}; this Service of cluster {cluster} is skipped"));
                    continue;
                }
                (Err(e), None) => return Err(e),
            };
            model.services.insert(s.key.clone(), s);
        }
        let service_keys: std::collections::BTreeSet<ObjKey> =
            model.services.keys().cloned().collect();
        let mut import_keys = std::collections::BTreeSet::new();
        for (doc, import) in imports {
            let ctx = DocCtx { doc };
            // The Service it imports: its name and namespace.
            let exported_key = ObjKey::new(
                &namespace_of(&import.metadata),
                &name_of(&ctx, &import.metadata)?,
            );
            let exported = catalog
                .iter()
                .find(|cs| cs.cluster.is_none() && cs.key == exported_key)
                .map(|cs| cs.svc);
            let s = multicluster::build_import(
                &ctx,
                import,
                exported,
                &endpoint_sources,
                &policies,
                &mut model.warnings,
            )?;
            import_keys.insert(exported_key);
            model.services.insert(s.key.clone(), s);
        }
        for (doc, vd) in virtual_destinations {
            let ctx = DocCtx { doc };
            let s = multicluster::build_virtual_destination(
                &ctx,
                vd,
                &catalog,
                &endpoint_sources,
                &policies,
                local_cluster,
                &mut model.warnings,
            )?;
            model.services.insert(s.key.clone(), s);
        }
        multicluster::apply_traffic_shifts(&mut model, &shifts, &catalog, local_cluster);
        endpoint_sources.warn_orphans(&service_keys, &import_keys, &mut model.warnings);
        policies.warn_unmatched_tls_sections(&model.services, &mut model.warnings);
        Ok(model)
    }
}

impl Model {
    /// Adds a built route, or the refusal of one that could not be built: one bad route never
    /// takes the others down.
    fn add_route(
        &mut self,
        ctx: &DocCtx<'_>,
        route: &impl serde::Serialize,
        kind: RouteKind,
        built: Result<RouteModel, ConfigError>,
    ) -> Result<(), ConfigError> {
        let route = match built {
            Ok(r) => r,
            Err(error) => {
                let value = serde_json::to_value(route).unwrap_or_default();
                let r = routes::refused(ctx, value, kind, error.clone())?;
                self.warnings.push(format!(
                    "{error}; {} {} is not served (Accepted=False), the other routes are",
                    kind.as_str(),
                    r.key
                ));
                self.route_errors.push(error);
                r
            }
        };
        self.routes.push(route);
        Ok(())
    }
}

/// The certificate and key of a `kubernetes.io/tls` Secret (`data`, base64 as the API has it,
/// or `stringData`), or what is missing.
fn tls_secret(secret: &k8s_openapi::api::core::v1::Secret) -> Result<TlsSecret, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != "kubernetes.io/tls" {
        return Err(format!("has type {kind}, not kubernetes.io/tls"));
    }
    let field = |name: &str| -> Result<Vec<u8>, String> {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(name))
                    .map(|b| b.0.clone())
            })
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("has no {name}"))
    };
    Ok(TlsSecret {
        cert_pem: field("tls.crt")?,
        key_pem: field("tls.key")?,
    })
}

/// Every key of a Secret (`stringData` over `data`), for CA bundles and client certificates.
fn secret_data(secret: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.as_bytes().to_vec());
    }
    out
}

/// Two documents defining the same object is almost always a mistake (an old copy of a file
/// left in the directory): refuse it instead of silently letting one win.
fn check_duplicates(documents: &[Document]) -> Result<(), ConfigError> {
    // The same object may come from several clusters (`topology.istio.io/cluster`).
    let mut seen: HashMap<(&'static str, String, Option<String>), &Document> = HashMap::new();
    for doc in documents {
        if doc.doc.name.is_none() {
            continue;
        }
        let key = (
            doc.resource.kind(),
            doc.doc.name_or_index(),
            doc.resource.cluster_label().map(str::to_owned),
        );
        if let Some(first) = seen.get(&key) {
            return Err(ConfigError::new(
                &doc.origin.file,
                doc.doc.clone(),
                "metadata.name",
                format!(
                    "{} {} is already defined in {} document {}",
                    key.0,
                    key.1,
                    first.origin.file.display(),
                    first.origin.index
                ),
            ));
        }
        seen.insert(key, doc);
    }
    Ok(())
}
