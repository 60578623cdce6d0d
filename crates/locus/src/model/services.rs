//! Service → ports → endpoints with their localities (from EndpointSlices, WorkloadEntries and
//! Nodes).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use locus_core::{Distribution, Endpoint, EndpointState, Locality, RoutingPolicy};

use super::policies::{HealthConfig, Policies};
use super::{name_of, namespace_of, DocCtx, NodeModel, ObjKey};
use crate::resources::{ConfigError, Document, Origin, WorkloadEntry};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// An MCS EndpointSlice's import (KEP-1645): its endpoints belong to that ServiceImport.
pub const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// The cluster an MCS EndpointSlice's endpoints run in.
pub const MCS_SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";
/// Istio's cluster label: on a WorkloadEntry, the cluster it runs in; on any object of a
/// manifest set, the cluster that object was read from (unlabelled: the gateway's own).
pub use locus_core::policy::CLUSTER_LABEL;
/// Istio's network label: on an EndpointSlice, a WorkloadEntry or a Namespace (of its
/// cluster), the network its endpoints are in; on a Service, that Service is the network's
/// east-west gateway.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Istio's label for an east-west gateway Service's port (default 15443).
pub const GATEWAY_PORT_LABEL: &str = "networking.istio.io/gatewayPort";
pub const DEFAULT_GATEWAY_PORT: u16 = 15443;

/// Which network each endpoint is in, and how other networks are reached.
#[derive(Default)]
pub(super) struct Networks {
    /// The gateway's own network (`None`: unknown, so every endpoint is dialled directly).
    pub local: Option<String>,
    /// (cluster, namespace) → network, from Namespace labels (`None`: the gateway's cluster).
    pub namespaces: BTreeMap<(Option<Arc<str>>, String), String>,
    /// Network → the addresses of its east-west gateway. Set once they are known: before,
    /// endpoints are taken as they are (the gateways' own endpoints are found that way).
    pub gateways: Option<BTreeMap<String, Vec<SocketAddr>>>,
}

impl Networks {
    /// A namespace's network in a cluster: its own label, else, in another cluster, that
    /// cluster's (Istio labels `istio-system` with it). The gateway's own cluster's
    /// unlabelled endpoints are in the gateway's network.
    fn of_namespace(&self, cluster: &Option<Arc<str>>, namespace: &str) -> Option<&String> {
        self.namespaces
            .get(&(cluster.clone(), namespace.to_owned()))
            .or_else(|| {
                cluster.as_ref()?;
                self.namespaces
                    .get(&(cluster.clone(), "istio-system".to_owned()))
            })
    }
}
/// The cluster an object belongs to by its labels: `None` for the gateway's own (unlabelled,
/// or labelled with the gateway's own cluster name).
pub(super) fn cluster_of(
    labels: Option<&BTreeMap<String, String>>,
    key: &str,
    local: Option<&str>,
) -> Option<Arc<str>> {
    labels
        .and_then(|l| l.get(key))
        .map(|c| c.trim())
        .filter(|c| !c.is_empty() && Some(*c) != local)
        .map(Arc::from)
}

#[derive(Clone, Debug)]
pub struct ServicePortModel {
    pub name: String,
    pub port: u16,
    /// `appProtocol`, e.g. `kubernetes.io/h2c` for cleartext HTTP/2 upstreams.
    pub app_protocol: Option<String>,
    /// Resolved endpoints for this port.
    pub endpoints: Vec<Endpoint>,
    /// Outlier detection, active checks, retries and spillover for this port.
    pub health: HealthConfig,
    /// Locality load-balancing settings and the algorithm for this port.
    pub balancer: std::sync::Arc<locus_core::BalancerConfig>,
}

#[derive(Clone, Debug)]
pub struct ServiceModel {
    pub key: ObjKey,
    /// `Service`, `ServiceImport` or `VirtualDestination`.
    pub kind: &'static str,
    pub policy: RoutingPolicy,
    pub ports: Vec<ServicePortModel>,
    pub annotations: BTreeMap<String, String>,
    pub origin: Origin,
}

impl ServiceModel {
    pub fn port(&self, port: u16) -> Option<&ServicePortModel> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// One endpoint of an EndpointSlice before it is matched to a Service port.
struct SliceEndpoint {
    ip: IpAddr,
    network: Option<Arc<str>>,
    zone_hints: Option<Arc<[String]>>,
    locality: Locality,
    node: Option<Arc<str>>,
    state: EndpointState,
}

struct Slice {
    /// The Service it belongs to, or the ServiceImport when `import` is set.
    service: ObjKey,
    import: bool,
    /// The cluster its endpoints run in (`None`: the gateway's own).
    cluster: Option<Arc<str>>,
    /// (port name, port number).
    ports: Vec<(String, u16)>,
    endpoints: Vec<SliceEndpoint>,
    origin: Arc<str>,
}

struct Entry {
    key: ObjKey,
    labels: Arc<BTreeMap<String, String>>,
    ip: IpAddr,
    ports: BTreeMap<String, u32>,
    locality: Locality,
    weight: u32,
    origin: Arc<str>,
    cluster: Option<Arc<str>>,
    network: Option<Arc<str>>,
}

/// Which endpoints of a Service port to take.
#[derive(Clone, Copy)]
pub(super) struct Pick<'a> {
    /// The MCS EndpointSlices of a ServiceImport instead of a Service's own.
    pub import: bool,
    /// Only those of this cluster (`Some(None)`: the gateway's own); `None`: every cluster.
    pub cluster: Option<Option<&'a str>>,
}

impl Pick<'_> {
    pub const SERVICE: Pick<'static> = Pick {
        import: false,
        cluster: None,
    };

    fn takes(&self, cluster: Option<&Arc<str>>) -> bool {
        self.cluster
            .is_none_or(|want| want == cluster.map(|c| &**c))
    }
}

/// Nodes by cluster: the gateway's own, and those read from other clusters (node names are
/// unique only within a cluster).
pub(super) struct NodeViews<'a> {
    pub local: &'a BTreeMap<String, NodeModel>,
    pub remote: &'a BTreeMap<(String, String), NodeModel>,
}

impl NodeViews<'_> {
    fn get(&self, cluster: Option<&Arc<str>>, name: &str) -> Option<&NodeModel> {
        match cluster {
            None => self.local.get(name),
            Some(c) => self.remote.get(&(c.to_string(), name.to_owned())),
        }
    }

    fn all(&self) -> impl Iterator<Item = &NodeModel> {
        self.local.values().chain(self.remote.values())
    }
}

/// EndpointSlices and WorkloadEntries, validated, ready to be matched to Services.
pub(super) struct EndpointSources {
    slices: Vec<Slice>,
    entries: Vec<Entry>,
    pub networks: Networks,
}

fn parse_ip(ctx: &DocCtx<'_>, field: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse()
        .map_err(|_| ctx.error(field, format!("{s:?} is not an IP address")))
}

impl EndpointSources {
    pub(super) fn build(
        slices: &[(&Document, &EndpointSlice)],
        entries: &[(&Document, &WorkloadEntry)],
        nodes: &NodeViews<'_>,
        local_cluster: Option<&str>,
        networks: Networks,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        // A zone seen on some Node tells the region of endpoints that only carry a zone.
        let region_of_zone = |zone: &str| {
            nodes
                .all()
                .find(|n| n.locality.zone == zone && !n.locality.region.is_empty())
                .map(|n| n.locality.region.clone())
                .unwrap_or_default()
        };
        let mut out = EndpointSources {
            slices: Vec::new(),
            entries: Vec::new(),
            networks,
        };
        for (doc, slice) in slices {
            let ctx = DocCtx { doc };
            let namespace = namespace_of(&slice.metadata);
            let name = name_of(&ctx, &slice.metadata)?;
            let labels = slice.metadata.labels.clone().unwrap_or_default();
            // An imported slice may carry both labels (MCS implementations that derive a
            // Service from the import): it is the import's.
            let (service, import) = match (
                labels.get(SERVICE_NAME_LABEL),
                labels.get(MCS_SERVICE_NAME_LABEL),
            ) {
                (_, Some(s)) => (s, true),
                (Some(s), None) => (s, false),
                (None, None) => {
                    warnings.push(format!(
                        "{}: has no {SERVICE_NAME_LABEL} (or {MCS_SERVICE_NAME_LABEL}) label, so it belongs to no Service; skipped",
                        ctx.place()
                    ));
                    continue;
                }
            };
            let cluster = if import {
                cluster_of(Some(&labels), MCS_SOURCE_CLUSTER_LABEL, local_cluster)
                    .or_else(|| cluster_of(Some(&labels), CLUSTER_LABEL, local_cluster))
            } else {
                cluster_of(Some(&labels), CLUSTER_LABEL, local_cluster)
            };
            let network: Option<Arc<str>> = labels
                .get(NETWORK_LABEL)
                .or_else(|| out.networks.of_namespace(&cluster, &namespace))
                .filter(|n| !n.is_empty())
                .map(|n| Arc::from(n.as_str()));
            if slice.address_type == "FQDN" {
                warnings.push(format!(
                    "{}: addressType FQDN is not supported (IPv4 and IPv6 only); skipped",
                    ctx.place()
                ));
                continue;
            }
            let mut ports = Vec::new();
            for (i, p) in slice.ports.iter().flatten().enumerate() {
                let Some(n) = p.port else { continue };
                let port = u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
                    ctx.error(&format!("ports[{i}].port"), format!("{n} is not a port"))
                })?;
                ports.push((p.name.clone().unwrap_or_default(), port));
            }
            let mut endpoints = Vec::new();
            for (i, ep) in slice.endpoints.iter().enumerate() {
                let field = format!("endpoints[{i}].addresses");
                let Some(first) = ep.addresses.first() else {
                    return Err(ctx.error(&field, "must hold at least one address"));
                };
                let ip = parse_ip(&ctx, &format!("{field}[0]"), first)?;
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready);
                let serving = cond.and_then(|c| c.serving).or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let state = match ready {
                    Some(false) if terminating && serving == Some(true) => {
                        EndpointState::TerminatingServing
                    }
                    Some(false) => EndpointState::NotReady,
                    _ => EndpointState::Ready,
                };
                let node = ep.node_name.clone().filter(|n| !n.is_empty());
                let mut locality = node
                    .as_ref()
                    .and_then(|n| nodes.get(cluster.as_ref(), n))
                    .map(|n| n.locality.clone())
                    .unwrap_or_default();
                if let Some(zone) = ep.zone.as_ref().filter(|z| !z.is_empty()) {
                    if locality.zone.is_empty() {
                        locality.zone = zone.clone();
                    }
                    if locality.region.is_empty() {
                        locality.region = region_of_zone(zone);
                    }
                }
                let zone_hints = ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect::<Vec<_>>().into());
                endpoints.push(SliceEndpoint {
                    ip,
                    network: network.clone(),
                    zone_hints,
                    locality,
                    node: node.map(Arc::from),
                    state,
                });
            }
            out.slices.push(Slice {
                service: ObjKey::new(&namespace, service),
                import,
                cluster,
                ports,
                endpoints,
                origin: Arc::from(format!("EndpointSlice {namespace}/{name}")),
            });
        }
        for (doc, we) in entries {
            let ctx = DocCtx { doc };
            let namespace = namespace_of(&we.metadata);
            let name = name_of(&ctx, &we.metadata)?;
            let Some(address) = we.spec.address.as_deref().filter(|a| !a.is_empty()) else {
                warnings.push(format!(
                    "{}: spec.address is empty; Locus does not resolve workloads without an address; skipped",
                    ctx.place()
                ));
                continue;
            };
            let Ok(ip) = address.parse::<IpAddr>() else {
                warnings.push(format!(
                    "{}: spec.address {address:?} is a DNS name, which Locus does not resolve yet; skipped",
                    ctx.place()
                ));
                continue;
            };
            let locality = Locality::parse(we.spec.locality.as_deref().unwrap_or(""))
                .map_err(|e| ctx.error("spec.locality", e.to_string()))?;
            for (port_name, port) in &we.spec.ports {
                if *port == 0 || *port > 65535 {
                    return Err(ctx.error(
                        &format!("spec.ports.{port_name}"),
                        format!("{port} is not a port"),
                    ));
                }
            }
            let mut labels = we.metadata.labels.clone().unwrap_or_default();
            labels.extend(we.spec.labels.clone());
            let cluster = cluster_of(Some(&labels), CLUSTER_LABEL, local_cluster);
            let network: Option<Arc<str>> = we
                .spec
                .network
                .as_ref()
                .or_else(|| labels.get(NETWORK_LABEL))
                .or_else(|| out.networks.of_namespace(&cluster, &namespace))
                .filter(|n| !n.is_empty())
                .map(|n| Arc::from(n.as_str()));
            out.entries.push(Entry {
                key: ObjKey::new(&namespace, &name),
                labels: Arc::new(labels),
                ip,
                ports: we.spec.ports.clone(),
                locality,
                weight: we.spec.weight.unwrap_or(1).max(1),
                origin: Arc::from(format!("WorkloadEntry {namespace}/{name}")),
                cluster,
                network,
            });
        }
        Ok(out)
    }

    /// Endpoints of one Service port, deduplicated by address (first source wins).
    pub(super) fn endpoints_for(
        &self,
        service: &ObjKey,
        selector: &BTreeMap<String, String>,
        port: &ServicePortModel,
        target_port: Option<&IntOrString>,
        single_port: bool,
        pick: Pick<'_>,
    ) -> Vec<Endpoint> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut nets: Vec<Option<Arc<str>>> = Vec::new();
        for slice in self.slices.iter().filter(|s| {
            &s.service == service && s.import == pick.import && pick.takes(s.cluster.as_ref())
        }) {
            let found = slice.ports.iter().find(|(name, _)| {
                name == &port.name || (single_port && slice.ports.len() == 1 && name.is_empty())
            });
            let Some(&(_, number)) = found else { continue };
            for ep in &slice.endpoints {
                let addr = SocketAddr::new(ep.ip, number);
                if seen.insert(addr) {
                    out.push(Endpoint {
                        addr,
                        locality: ep.locality.clone(),
                        node: ep.node.clone(),
                        weight: 1,
                        state: ep.state,
                        origin: slice.origin.clone(),
                        labels: None,
                        zone_hints: ep.zone_hints.clone(),
                        cluster: slice.cluster.clone(),
                        via: None,
                    });
                    nets.push(ep.network.clone());
                }
            }
        }
        if !selector.is_empty() && !pick.import {
            for entry in self.entries.iter().filter(|e| {
                pick.takes(e.cluster.as_ref())
                    && e.key.namespace == service.namespace
                    && selector.iter().all(|(k, v)| e.labels.get(k) == Some(v))
            }) {
                // Istio: the entry's port for the Service port's name, else the target port.
                let number = entry
                    .ports
                    .get(&port.name)
                    .map(|p| *p as u16)
                    .or_else(|| match target_port {
                        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                        Some(IntOrString::String(name)) => entry.ports.get(name).map(|p| *p as u16),
                        None => Some(port.port),
                    })
                    .unwrap_or(port.port);
                let addr = SocketAddr::new(entry.ip, number);
                if seen.insert(addr) {
                    out.push(Endpoint {
                        addr,
                        locality: entry.locality.clone(),
                        node: None,
                        weight: entry.weight,
                        state: EndpointState::Ready,
                        origin: entry.origin.clone(),
                        labels: Some(entry.labels.clone()),
                        zone_hints: None,
                        cluster: entry.cluster.clone(),
                        via: None,
                    });
                    nets.push(entry.network.clone());
                }
            }
        }
        self.across_networks(service, port.port, out, nets)
    }

    /// Endpoints in another network than the gateway's are not dialled: they are reached
    /// through that network's east-west gateway (Istio's multi-network model), which sends the
    /// request to its own endpoints. Each (network, cluster, locality) of them becomes one
    /// endpoint per gateway address, weighted by how many ready endpoints it stands for, so
    /// ranking and balancing treat a remote locality as the capacity it has.
    fn across_networks(
        &self,
        service: &ObjKey,
        port: u16,
        endpoints: Vec<Endpoint>,
        nets: Vec<Option<Arc<str>>>,
    ) -> Vec<Endpoint> {
        let (Some(local), Some(gateways)) = (&self.networks.local, &self.networks.gateways) else {
            return endpoints;
        };
        let mut out = Vec::with_capacity(endpoints.len());
        // (network, cluster, locality) → ready weight and endpoint count, in first-seen order.
        type Place = (Arc<str>, Option<Arc<str>>, Locality);
        let mut groups: Vec<(Place, u32, usize)> = Vec::new();
        for (ep, net) in endpoints.into_iter().zip(nets) {
            match net {
                Some(n) if *n != **local => {
                    let key = (n, ep.cluster.clone(), ep.locality.clone());
                    let ready = u32::from(ep.state == EndpointState::Ready) * ep.weight;
                    match groups.iter_mut().find(|g| g.0 == key) {
                        Some(g) => {
                            g.1 += ready;
                            g.2 += 1;
                        }
                        None => groups.push((key, ready, 1)),
                    }
                }
                _ => out.push(ep),
            }
        }
        let via: Arc<str> = Arc::from(format!("{service}:{port}"));
        for ((network, cluster, locality), ready, count) in groups {
            // No gateway for that network: unreachable, and `locus check` says so through the
            // endpoint count (the warning is the model's).
            for addr in gateways.get(&*network).into_iter().flatten() {
                out.push(Endpoint {
                    addr: *addr,
                    locality: locality.clone(),
                    node: None,
                    weight: ready.max(1),
                    state: if ready > 0 {
                        EndpointState::Ready
                    } else {
                        EndpointState::NotReady
                    },
                    origin: Arc::from(format!(
                        "east-west gateway of network {network} ({count} endpoints)"
                    )),
                    labels: None,
                    zone_hints: None,
                    cluster: cluster.clone(),
                    via: Some(via.clone()),
                });
            }
        }
        out
    }

    /// The networks that endpoints are in, other than the gateway's.
    pub(super) fn other_networks(&self) -> std::collections::BTreeSet<Arc<str>> {
        let local = self.networks.local.as_deref();
        self.slices
            .iter()
            .flat_map(|s| s.endpoints.iter().filter_map(|e| e.network.clone()))
            .chain(self.entries.iter().filter_map(|e| e.network.clone()))
            .filter(|n| Some(&**n) != local)
            .collect()
    }

    /// Says so when an EndpointSlice names a Service (or ServiceImport) that does not exist.
    pub(super) fn warn_orphans(
        &self,
        services: &std::collections::BTreeSet<ObjKey>,
        imports: &std::collections::BTreeSet<ObjKey>,
        warnings: &mut Vec<String>,
    ) {
        for slice in &self.slices {
            let (known, kind) = if slice.import {
                (imports, "ServiceImport")
            } else {
                (services, "Service")
            };
            if !known.contains(&slice.service) {
                warnings.push(format!(
                    "{} belongs to {kind} {}, which is not defined; its endpoints are unused",
                    slice.origin, slice.service
                ));
            }
        }
    }
}

pub(super) fn build(
    ctx: &DocCtx<'_>,
    svc: &Service,
    sources: &EndpointSources,
    policies: &Policies<'_>,
    warnings: &mut Vec<String>,
) -> Result<ServiceModel, ConfigError> {
    let key = ObjKey {
        namespace: namespace_of(&svc.metadata),
        name: name_of(ctx, &svc.metadata)?,
    };
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        warnings.push(format!(
            "{}: type ExternalName is not supported; the Service has no endpoints",
            ctx.place()
        ));
    }
    let distribution = match spec.traffic_distribution.as_deref() {
        None | Some("") => Distribution::Any,
        Some(v) => Distribution::parse(v).ok_or_else(|| {
            ctx.error(
                "spec.trafficDistribution",
                format!("{v:?} is not one of PreferClose, PreferSameZone, PreferSameNode"),
            )
        })?,
    };
    let strict_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("") | Some("Cluster") => false,
        Some("Local") => true,
        Some(v) => {
            return Err(ctx.error(
                "spec.internalTrafficPolicy",
                format!("{v:?} is not one of Cluster, Local"),
            ))
        }
    };
    if strict_local && distribution.uses_locality() {
        warnings.push(format!(
            "{}: internalTrafficPolicy Local takes precedence; trafficDistribution {} has no effect",
            ctx.place(),
            distribution.as_str()
        ));
    }
    let selector = spec.selector.clone().unwrap_or_default();
    let service_ports = spec.ports.clone().unwrap_or_default();
    let single_port = service_ports.len() == 1;
    let mut ports = Vec::new();
    for (i, p) in service_ports.iter().enumerate() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ctx.error(
                    &format!("spec.ports[{i}].port"),
                    format!("{} is not a port", p.port),
                )
            })?;
        let port_name = p.name.clone().unwrap_or_default();
        let tls = policies.tls_for_port(&key, port, &port_name, warnings);
        // `kubernetes.io/ws` needs nothing more (upgrades pass through); TLS needs a policy
        // that says how to verify the endpoints.
        if let (Some(proto @ ("kubernetes.io/wss" | "https")), None) =
            (p.app_protocol.as_deref(), &tls)
        {
            warnings.push(format!(
                "{}: spec.ports[{i}].appProtocol {proto}: TLS to endpoints needs a BackendTLSPolicy or a DestinationRule tls saying how to verify them; Locus connects in plain text",
                ctx.place()
            ));
        }
        let mut model = ServicePortModel {
            name: p.name.clone().unwrap_or_default(),
            port,
            app_protocol: p.app_protocol.clone(),
            endpoints: Vec::new(),
            health: HealthConfig::default(),
            balancer: Default::default(),
        };
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        model.health = policies.for_port(&key, port, &annotations, ctx, warnings)?;
        model.health.upstream.tls = tls;
        model.balancer = std::sync::Arc::new(policies.balancer_for_port(
            &key,
            port,
            &annotations,
            ctx,
            warnings,
        )?);
        model.endpoints = sources.endpoints_for(
            &key,
            &selector,
            &model,
            p.target_port.as_ref(),
            single_port,
            Pick::SERVICE,
        );
        ports.push(model);
    }
    Ok(ServiceModel {
        key,
        kind: "Service",
        policy: RoutingPolicy {
            distribution,
            strict_local,
        },
        ports,
        annotations: svc.metadata.annotations.clone().unwrap_or_default(),
        origin: ctx.doc.origin.clone(),
    })
}
