//! Across clusters: MCS `ServiceImport`s, Gloo Mesh `VirtualDestination`s and the
//! `TrafficPolicy` traffic shifts that send a Service's requests to one, mapped onto the one
//! model. Each import or virtual destination becomes a [`ServiceModel`] whose endpoints carry
//! the cluster they run in; ranking (`locus_core::policy`) does the rest.
//!
//! Their keys live beside Services' without colliding: Service names are DNS labels (no
//! dots), so `reviews.clusterset` and `bookinfo-global.virtualdestination` name no Service.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use locus_core::{BalancerConfig, Distribution, LocalityLbSetting, RoutingPolicy};

use super::policies::{outlier_from_istio, Policies};
use super::services::{
    EndpointSources, Pick, DEFAULT_GATEWAY_PORT, GATEWAY_PORT_LABEL, NETWORK_LABEL,
};
use super::{name_of, namespace_of, DocCtx, Model, ObjKey, ServiceModel, ServicePortModel};
use crate::resources::istio::OutlierDetection;
use crate::resources::multicluster::{DestinationSelector, TrafficPolicy, VirtualDestination};
use crate::resources::{ConfigError, Document, ServiceImport};

/// What an import's key adds to its name (the MCS DNS name is `name.ns.svc.clusterset.local`).
pub const IMPORT_SUFFIX: &str = ".clusterset";
pub const VIRTUAL_DESTINATION_SUFFIX: &str = ".virtualdestination";

pub fn import_key(namespace: &str, name: &str) -> ObjKey {
    ObjKey::new(namespace, &format!("{name}{IMPORT_SUFFIX}"))
}

pub fn virtual_destination_key(namespace: &str, name: &str) -> ObjKey {
    ObjKey::new(namespace, &format!("{name}{VIRTUAL_DESTINATION_SUFFIX}"))
}

/// One Service as one cluster defines it: VirtualDestinations select Services per cluster.
pub(super) struct ClusterService<'a> {
    pub svc: &'a Service,
    pub key: ObjKey,
    /// `None`: the gateway's own cluster.
    pub cluster: Option<Arc<str>>,
}

impl ClusterService<'_> {
    fn labels(&self) -> BTreeMap<String, String> {
        self.svc.metadata.labels.clone().unwrap_or_default()
    }

    /// The cluster's name as selectors write it (the gateway's own may be unnamed).
    fn cluster_name<'a>(&'a self, local: Option<&'a str>) -> Option<&'a str> {
        self.cluster.as_deref().or(local)
    }

    /// Whether a Gloo Mesh selector picks this Service. `default_ns` is the namespace a
    /// reference without one means.
    fn selected_by(
        &self,
        sel: &DestinationSelector,
        local: Option<&str>,
        default_ns: &str,
    ) -> bool {
        let cluster = self.cluster_name(local);
        let by_matcher = sel.kube_service_matcher.as_ref().is_some_and(|m| {
            let labels = self.labels();
            m.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                && (m.namespaces.is_empty() || m.namespaces.contains(&self.key.namespace))
                && (m.clusters.is_empty()
                    || cluster.is_some_and(|c| m.clusters.iter().any(|x| x == c)))
        });
        let by_ref = sel.kube_service_refs.as_ref().is_some_and(|r| {
            r.services.iter().any(|s| {
                s.name == self.key.name
                    && s.namespace.as_deref().unwrap_or(default_ns) == self.key.namespace
                    && s.cluster_name
                        .as_deref()
                        .is_none_or(|want| cluster == Some(want))
            })
        });
        by_matcher || by_ref
    }
}

/// A `ServiceImport`: the MCS EndpointSlices of every cluster that exports the Service. The
/// exported Service, when this cluster has it, lends its policies (DestinationRule,
/// BackendTrafficPolicy, BackendTLSPolicy, `locus.io/` annotations) and its
/// `trafficDistribution`; an import without one prefers its own cluster, then its zone
/// (PreferClose): what reaching across clusters is for is failover, not spreading.
pub(super) fn build_import(
    ctx: &DocCtx<'_>,
    import: &ServiceImport,
    exported: Option<&Service>,
    sources: &EndpointSources,
    policies: &Policies<'_>,
    warnings: &mut Vec<String>,
) -> Result<ServiceModel, ConfigError> {
    let namespace = namespace_of(&import.metadata);
    let name = name_of(ctx, &import.metadata)?;
    let service_key = ObjKey::new(&namespace, &name);
    let spec = &import.spec;
    match spec.type_.as_deref() {
        None | Some("ClusterSetIP" | "Headless" | "") => {}
        Some(other) => {
            return Err(ctx.error(
                "spec.type",
                format!("{other:?} is not one of ClusterSetIP, Headless"),
            ))
        }
    }
    if spec
        .session_affinity
        .as_deref()
        .is_some_and(|a| a != "None")
    {
        warnings.push(format!(
            "{}: spec.sessionAffinity is not honoured (use a DestinationRule consistentHash); ignored",
            ctx.place()
        ));
    }
    let distribution = exported
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.traffic_distribution.as_deref())
        .and_then(Distribution::parse)
        .unwrap_or(Distribution::PreferClose);
    let mut annotations = exported
        .and_then(|s| s.metadata.annotations.clone())
        .unwrap_or_default();
    annotations.extend(import.metadata.annotations.clone().unwrap_or_default());
    let single_port = spec.ports.len() == 1;
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let port = ctx
            .port(&format!("spec.ports[{i}].port"), Some(p.port))?
            .unwrap_or(0);
        let port_name = p.name.clone().unwrap_or_default();
        let mut model = ServicePortModel {
            name: port_name.clone(),
            port,
            app_protocol: p.app_protocol.clone(),
            endpoints: Vec::new(),
            health: policies.for_port(&service_key, port, &annotations, ctx, warnings)?,
            balancer: Arc::new(policies.balancer_for_port(
                &service_key,
                port,
                &annotations,
                ctx,
                warnings,
            )?),
        };
        model.health.upstream.tls = policies.tls_for_port(&service_key, port, &port_name, warnings);
        model.endpoints = sources.endpoints_for(
            &service_key,
            &BTreeMap::new(),
            &model,
            None,
            single_port,
            Pick {
                import: true,
                cluster: None,
            },
        );
        ports.push(model);
    }
    Ok(ServiceModel {
        key: import_key(&namespace, &name),
        kind: "ServiceImport",
        policy: RoutingPolicy {
            distribution,
            strict_local: false,
        },
        ports,
        annotations,
        origin: ctx.doc.origin.clone(),
    })
}

/// A Gloo Mesh `VirtualDestination`: the endpoints, on its port, of every selected Service in
/// every known cluster, with its outlier detection; `localized` ranks them nearest first as
/// Gloo Mesh does (through Istio's locality priorities, the cluster part of locality),
/// `static` spreads over them all.
pub(super) fn build_virtual_destination(
    ctx: &DocCtx<'_>,
    vd: &VirtualDestination,
    catalog: &[ClusterService<'_>],
    sources: &EndpointSources,
    policies: &Policies<'_>,
    local_cluster: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<ServiceModel, ConfigError> {
    let namespace = namespace_of(&vd.metadata);
    let name = name_of(ctx, &vd.metadata)?;
    let key = virtual_destination_key(&namespace, &name);
    let spec = &vd.spec;
    let vport = spec
        .port
        .as_ref()
        .ok_or_else(|| ctx.error("spec.port", "missing (number and protocol)"))?;
    let number = ctx
        .port("spec.port.number", Some(vport.number as i32))?
        .unwrap_or(0);
    let app_protocol = match vport.protocol.as_deref().map(str::to_ascii_lowercase) {
        None => None,
        Some(p) if p == "http" || p == "http1" => None,
        Some(p) if p == "http2" || p == "grpc" => Some("kubernetes.io/h2c".to_owned()),
        Some(other) => {
            return Err(ctx.error(
                "spec.port.protocol",
                format!("{other:?} is not one Locus routes (http, http2, grpc)"),
            ))
        }
    };
    let (selectors, localized, outlier) = match (&spec.localized, &spec.static_) {
        (Some(l), None) => {
            if l.enforce_tiers == Some(true) {
                warnings.push(format!(
                    "{}: spec.localized.enforceTiers is not supported: traffic fails over across localities; ignored",
                    ctx.place()
                ));
            }
            (&l.destination_selectors, true, l.outlier_detection.as_ref())
        }
        (None, Some(s)) => (&s.destinations, false, None),
        (Some(_), Some(_)) => {
            return Err(ctx.error("spec", "localized and static cannot both be set"))
        }
        (None, None) => {
            return Err(ctx.error(
                "spec.localized",
                "missing: one of localized or static says which Services make the destination",
            ))
        }
    };
    let target_number = match vport.target_number {
        Some(n) => ctx.port("spec.port.targetNumber", Some(n as i32))?,
        None => None,
    }
    .unwrap_or(number);
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    let mut selected = 0;
    for cs in catalog.iter().filter(|cs| {
        selectors
            .iter()
            .any(|s| cs.selected_by(s, local_cluster, &namespace))
    }) {
        selected += 1;
        let svc_spec = cs.svc.spec.clone().unwrap_or_default();
        let svc_ports = svc_spec.ports.clone().unwrap_or_default();
        let found = svc_ports.iter().find(|p| match &vport.target_name {
            Some(n) => p.name.as_deref() == Some(n.as_str()),
            None => p.port == i32::from(target_number),
        });
        let Some(p) = found else {
            warnings.push(format!(
                "{}: Service {} in cluster {} has no port {}; it adds no endpoint",
                ctx.place(),
                cs.key,
                cs.cluster_name(local_cluster).unwrap_or("<this cluster>"),
                vport
                    .target_name
                    .clone()
                    .unwrap_or(target_number.to_string()),
            ));
            continue;
        };
        let port_model = ServicePortModel {
            name: p.name.clone().unwrap_or_default(),
            port: u16::try_from(p.port).unwrap_or(0),
            app_protocol: None,
            endpoints: Vec::new(),
            health: Default::default(),
            balancer: Default::default(),
        };
        let found = sources.endpoints_for(
            &cs.key,
            &svc_spec.selector.clone().unwrap_or_default(),
            &port_model,
            p.target_port.as_ref(),
            svc_ports.len() == 1,
            Pick {
                import: false,
                cluster: Some(cs.cluster.as_deref()),
            },
        );
        // Another network's endpoints all stand behind its gateway's address: they differ by
        // what the hop names.
        for ep in found {
            if seen.insert((ep.addr, ep.via.clone())) {
                endpoints.push(ep);
            }
        }
    }
    if selected == 0 {
        warnings.push(format!(
            "{}: its selectors match no Service in any known cluster; it has no endpoints",
            ctx.place()
        ));
    }
    let annotations = vd.metadata.annotations.clone().unwrap_or_default();
    let mut health = policies.for_port(&key, number, &annotations, ctx, warnings)?;
    if let Some(od) = outlier {
        let istio = OutlierDetection {
            consecutive_errors: od.consecutive_errors,
            interval: od.interval.clone(),
            base_ejection_time: od.base_ejection_time.clone(),
            max_ejection_percent: od.max_ejection_percent,
            ..Default::default()
        };
        health.outlier =
            outlier_from_istio(ctx, "spec.localized.outlierDetection", &istio, warnings)?;
        health.outlier_source =
            format!("VirtualDestination {namespace}/{name} (spec.localized.outlierDetection)");
    }
    let mut balancer: BalancerConfig =
        policies.balancer_for_port(&key, number, &annotations, ctx, warnings)?;
    if localized {
        balancer.locality = Some(LocalityLbSetting::default());
    }
    Ok(ServiceModel {
        key,
        kind: "VirtualDestination",
        policy: RoutingPolicy::default(),
        ports: vec![ServicePortModel {
            name: String::new(),
            port: number,
            app_protocol,
            endpoints,
            health,
            balancer: Arc::new(balancer),
        }],
        annotations,
        origin: ctx.doc.origin.clone(),
    })
}

/// Gloo Mesh `TrafficPolicy` `trafficShift` to VirtualDestinations: the backendRefs of every
/// route that send to a selected Service of this cluster send to the destinations instead
/// (weights multiply), as the mesh would shift that Service's traffic.
pub(super) fn apply_traffic_shifts(
    model: &mut Model,
    shifts: &[(&Document, &TrafficPolicy)],
    catalog: &[ClusterService<'_>],
    local_cluster: Option<&str>,
) {
    for &(doc, tp) in shifts {
        let ctx = DocCtx { doc };
        let ns = namespace_of(&tp.metadata);
        let spec = &tp.spec;
        let place = ctx.place();
        let Some(policy) = &spec.policy else {
            model
                .warnings
                .push(format!("{place}: has no spec.policy; nothing to apply"));
            continue;
        };
        for field in policy.extra.keys() {
            model.warnings.push(format!(
                "{place}: spec.policy.{field} is not applied by Locus (only trafficShift is)"
            ));
        }
        let Some(shift) = &policy.traffic_shift else {
            continue;
        };
        if !spec.http_request_matchers.is_empty() {
            model.warnings.push(format!(
                "{place}: spec.httpRequestMatchers is not supported, and shifting every request instead would be wrong; the traffic shift is not applied"
            ));
            continue;
        }
        if !spec.source_selector.is_empty() {
            model.warnings.push(format!(
                "{place}: spec.sourceSelector selects mesh workloads; Locus applies the shift to the requests it routes"
            ));
        }
        let mut targets = Vec::new();
        for (i, d) in shift.destinations.iter().enumerate() {
            let Some(r) = &d.virtual_destination else {
                model.warnings.push(format!(
                    "{place}: spec.policy.trafficShift.destinations[{i}]: only virtualDestination destinations are supported; the traffic shift is not applied"
                ));
                targets.clear();
                break;
            };
            let key = virtual_destination_key(r.namespace.as_deref().unwrap_or(&ns), &r.name);
            match model.services.get(&key).and_then(|s| s.ports.first()) {
                Some(p) => targets.push((key, p.port, d.weight.unwrap_or(1))),
                None => {
                    model.warnings.push(format!(
                        "{place}: spec.policy.trafficShift.destinations[{i}]: VirtualDestination {}/{} not found; the traffic shift is not applied",
                        r.namespace.as_deref().unwrap_or(&ns),
                        r.name
                    ));
                    targets.clear();
                    break;
                }
            }
        }
        if targets.is_empty() {
            continue;
        }
        let shifted: HashSet<ObjKey> = catalog
            .iter()
            .filter(|cs| cs.cluster.is_none())
            .filter(|cs| {
                spec.destination_selector
                    .iter()
                    .any(|s| cs.selected_by(s, local_cluster, &ns))
            })
            .map(|cs| cs.key.clone())
            .collect();
        for rule in model.routes.iter_mut().flat_map(|r| r.rules.iter_mut()) {
            let mut out = Vec::with_capacity(rule.backends.len());
            for b in rule.backends.drain(..) {
                if b.invalid.is_some() || !shifted.contains(&b.service) {
                    out.push(b);
                    continue;
                }
                for (key, port, w) in &targets {
                    let mut to = b.clone();
                    to.service = key.clone();
                    to.port = Some(*port);
                    to.weight = b.weight.saturating_mul(*w);
                    out.push(to);
                }
            }
            rule.backends = out;
        }
    }
}

/// East-west gateways: a Service labelled `topology.istio.io/network: NET` (in any cluster) is
/// that network's gateway, on its port `networking.istio.io/gatewayPort` (default 15443), at
/// its load balancer's addresses, else its endpoints'. Once they are known, endpoints of other
/// networks are reached through them (see `EndpointSources::endpoints_for`).
pub(super) fn find_network_gateways(
    sources: &mut EndpointSources,
    catalog: &[ClusterService<'_>],
    warnings: &mut Vec<String>,
) {
    let others = sources.other_networks();
    if sources.networks.local.is_none() {
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|n| &**n).collect();
            warnings.push(format!(
                "endpoints are in networks {}, but the gateway's own network is unknown (--network, or the topology.istio.io/network label of Namespace istio-system); every endpoint is dialled directly",
                names.join(", ")
            ));
        }
        return;
    }
    let mut gateways: BTreeMap<String, Vec<std::net::SocketAddr>> = BTreeMap::new();
    for cs in catalog {
        let labels = cs.labels();
        let Some(network) = labels.get(NETWORK_LABEL) else {
            continue;
        };
        let port = labels
            .get(GATEWAY_PORT_LABEL)
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(DEFAULT_GATEWAY_PORT);
        let spec = cs.svc.spec.clone().unwrap_or_default();
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(p) = ports.iter().find(|p| p.port == i32::from(port)) else {
            warnings.push(format!(
                "Service {} is labelled {NETWORK_LABEL}: {network} but has no port {port} ({GATEWAY_PORT_LABEL}); not used as its east-west gateway",
                cs.key
            ));
            continue;
        };
        let balancer: Vec<std::net::SocketAddr> = cs
            .svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_ref()?.parse().ok())
            .map(|ip| std::net::SocketAddr::new(ip, port))
            .collect();
        let addrs = if balancer.is_empty() {
            let port_model = ServicePortModel {
                name: p.name.clone().unwrap_or_default(),
                port,
                app_protocol: None,
                endpoints: Vec::new(),
                health: Default::default(),
                balancer: Default::default(),
            };
            sources
                .endpoints_for(
                    &cs.key,
                    &spec.selector.clone().unwrap_or_default(),
                    &port_model,
                    p.target_port.as_ref(),
                    ports.len() == 1,
                    Pick {
                        import: false,
                        cluster: Some(cs.cluster.as_deref()),
                    },
                )
                .into_iter()
                .filter(|e| e.state == locus_core::EndpointState::Ready)
                .map(|e| e.addr)
                .collect()
        } else {
            balancer
        };
        gateways.entry(network.clone()).or_default().extend(addrs);
    }
    for net in &others {
        if gateways.get(&**net).is_none_or(|g| g.is_empty()) {
            warnings.push(format!(
                "endpoints in network {net} cannot be reached: no Service labelled {NETWORK_LABEL}: {net} (its east-west gateway) has an address"
            ));
        }
    }
    sources.networks.gateways = Some(gateways);
}
