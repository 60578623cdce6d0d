//! The route table: listeners → hosts → ordered matches → weighted backends → one snapshot per
//! Service port.
//!
//! Built whole by one writer from a [`Model`] and the gateway's identity, then published
//! through an `ArcSwap`; requests only read it. Each Service port has its own `ArcSwap` of a
//! [`ServiceSnapshot`] so health changes can swap one Service without rebuilding routes.

pub mod matching;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use arc_swap::ArcSwap;
use http::request::Parts;
use locus_core::balancer::{ServiceSnapshot, WeightedSchedule};

use crate::health::HealthRegistry;
use crate::identity::ResolvedIdentity;
use crate::metrics::{EndpointCountLabels, EndpointMetrics, Metrics, ServiceLabels, ServiceTotals};
use crate::model::{AllowedRoutes, HealthConfig, MatchModel, Model, ObjKey};
use locus_core::balancer::SnapshotMode;
use matching::{intersect, HostKey, Precedence};

/// One Service port that routes send traffic to.
#[derive(Debug)]
pub struct ServiceTarget {
    pub key: ObjKey,
    pub port: u16,
    /// `namespace/name:port`, for logs and error bodies.
    pub name: Arc<str>,
    /// Upstream speaks cleartext HTTP/2 (`appProtocol: kubernetes.io/h2c`).
    pub h2c: bool,
    pub health: HealthConfig,
    pub snapshot: ArcSwap<ServiceSnapshot>,
    /// Metric handles, parallel to the snapshot's endpoints (which refreshes keep in order).
    pub endpoint_metrics: Vec<Arc<EndpointMetrics>>,
    pub totals: Arc<ServiceTotals>,
    /// Why `locus.io/zone-balance: capacity` is not in force, when it was asked for.
    pub zone_balance_fallback: Option<&'static str>,
    /// The load-aware spill controller's last view (written by the load task).
    pub load_view: arc_swap::ArcSwapOption<crate::load_spill::LoadView>,
    /// `locus_request_errors_total`, by fault.
    pub errors: crate::metrics::ErrorCounters,
    /// Where the request path reports ejections.
    events: crate::health::HealthTx,
    /// Serialises snapshot rebuilds: the health monitor and the load task both rebuild, and
    /// each must start from the other's result (never taken on the request path).
    rebuilding: std::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl ServiceTarget {
    /// Reports a health change found on the request path (an ejection).
    pub fn report(&self, event: crate::health::HealthEvent) {
        let _ = self.events.send(event);
    }

    /// Counts an ejection in `locus_outlier_ejections` (rare: the label lookup is fine).
    pub fn count_ejection(&self, reason: &str) {
        self.metrics
            .ejections
            .get_or_create(&crate::metrics::ReasonLabels {
                service: self.name.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Rebuilds the snapshot from the same endpoints with their current health.
    pub fn refresh(&self) {
        self.rebuild(None);
    }

    /// Rebuilds the snapshot with a new load-aware spill.
    pub fn set_load_spill(&self, spill: f64) {
        self.rebuild(Some(spill));
    }

    fn rebuild(&self, load_spill: Option<f64>) {
        let _one_writer = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        // Health is read now, under the lock, so a rebuild never publishes an older view of it
        // than the one before.
        let now_ms = crate::health::now_ms();
        let old = self.snapshot.load();
        let mut options = old.options;
        if let Some(s) = load_spill {
            options.load_spill = s;
        }
        let new = ServiceSnapshot::build_with_health(
            old.gateway.clone(),
            old.policy,
            old.balancer.clone(),
            options,
            old.endpoints.clone(),
            old.health.clone(),
            now_ms,
        );
        let (before, after) = (old.spilled_fraction(), new.spilled_fraction());
        if (before == 0.0) != (after == 0.0) || old.mode != new.mode {
            tracing::info!(
                service = %self.name,
                spilled = format!("{:.1}%", after * 100.0),
                mode = new.mode.as_str(),
                cause = if load_spill.is_some() { "load" } else { "health" },
                "{}",
                if after > 0.0 { "spilling over to farther buckets" } else { "all traffic back in the best bucket" }
            );
        }
        self.publish_gauges(&new);
        self.snapshot.store(Arc::new(new));
    }

    /// Gauges that describe the snapshot: bucket in use, spilled share, endpoints per zone,
    /// and the zone imbalance check (with its warning).
    pub fn publish_gauges(&self, snap: &ServiceSnapshot) {
        let service = ServiceLabels {
            service: self.name.to_string(),
        };
        self.metrics
            .bucket_in_use
            .get_or_create(&service)
            .set(snap.active_bucket().map_or(-1, |b| b as i64));
        self.metrics
            .spilled
            .get_or_create(&service)
            .set(snap.spilled_fraction());
        if self.health.load_spill.is_some() {
            self.metrics
                .load_spill
                .get_or_create(&service)
                .set(snap.load_spill_in_force());
        } else {
            self.metrics.load_spill.remove(&service);
        }
        // Every reason is set or cleared, so a fixed configuration clears its fallback.
        for reason in ZONE_BALANCE_FALLBACKS {
            let labels = crate::metrics::ReasonLabels {
                service: self.name.to_string(),
                reason: reason.to_owned(),
            };
            if self.zone_balance_fallback == Some(reason) {
                self.metrics
                    .zone_balance_fallback
                    .get_or_create(&labels)
                    .set(1);
            } else {
                self.metrics.zone_balance_fallback.remove(&labels);
            }
        }
        let mut per_zone: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (i, ep) in snap.endpoints.iter().enumerate() {
            let e = per_zone.entry(ep.locality.zone.as_str()).or_default();
            e.1 += 1;
            if snap
                .buckets
                .iter()
                .any(|b| b.eligible.contains(&(i as u32)))
                && snap.mode == SnapshotMode::Normal
            {
                e.0 += 1;
            }
        }
        for (zone, (healthy, total)) in per_zone {
            for (state, n) in [("healthy", healthy), ("total", total)] {
                self.metrics
                    .endpoints
                    .get_or_create(&EndpointCountLabels {
                        service: self.name.to_string(),
                        zone: zone.to_owned(),
                        state: state.to_owned(),
                    })
                    .set(n);
            }
        }
        let ratio = if snap.policy.distribution.uses_locality() || snap.balancer.locality.is_some()
        {
            zone_imbalance(snap)
        } else {
            1.0
        };
        let gauge = self.metrics.imbalance.get_or_create(&service);
        let before = gauge.get();
        gauge.set(ratio);
        let limit = self.metrics.imbalance_warn;
        if ratio > limit && (before <= limit || before == 0.0) {
            tracing::warn!(
                service = %self.name,
                ratio = format!("{ratio:.2}"),
                limit,
                "zone imbalance: with traffic kept in its zone, some endpoints expect more than {limit}x the mean load (endpoints are spread unevenly over zones)"
            );
        }
    }
}

/// The reasons capacity-aware routing can fall back (`locus_zone_balance_fallback`).
const ZONE_BALANCE_FALLBACKS: [&str; 3] = ["gateway-zone-unknown", "destination-rule", "no-fleet"];

/// Max over mean of the load each endpoint can expect if every zone holding endpoints sends
/// the same traffic and keeps it in-zone: the blog's "66%/33%" check, computed from where the
/// endpoints are instead of from a recording rule. 1.0 means balanced.
pub fn zone_imbalance(snap: &ServiceSnapshot) -> f64 {
    let healthy: Vec<&locus_core::Endpoint> = snap
        .buckets
        .iter()
        .flat_map(|b| &b.eligible)
        .map(|&i| &snap.endpoints[i as usize])
        .collect();
    if healthy.len() < 2 {
        return 1.0;
    }
    let mut zone_weight: BTreeMap<&str, f64> = BTreeMap::new();
    for ep in &healthy {
        *zone_weight.entry(ep.locality.zone.as_str()).or_default() += f64::from(ep.weight);
    }
    let total: f64 = zone_weight.values().sum();
    let zones = zone_weight.len() as f64;
    healthy
        .iter()
        .map(|ep| {
            let w = f64::from(ep.weight);
            let expected = (1.0 / zones) * w / zone_weight[ep.locality.zone.as_str()];
            expected / (w / total)
        })
        .fold(1.0, f64::max)
}

#[derive(Debug)]
pub enum Backend {
    Service(Arc<ServiceTarget>),
    /// A backendRef that cannot be honoured; its share of requests gets a 500 saying why.
    Invalid(Arc<str>),
}

/// What a matched rule does.
#[derive(Debug)]
pub struct RuleAction {
    /// `namespace/name` of the HTTPRoute and the rule index, for logs.
    pub route: Arc<str>,
    pub backends: Vec<Backend>,
    schedule: WeightedSchedule,
    pub timeout: Option<Duration>,
    /// Set when the rule uses filters Locus cannot apply (requests get a 500).
    pub unsupported: Option<Arc<str>>,
    /// Header edits, redirect, rewrite.
    pub filters: crate::model::Filters,
    /// A filter replaces the matched path prefix, so requests need to know it.
    pub needs_prefix: bool,
    /// `RequestMirror` targets and the share of requests each gets.
    pub mirrors: Vec<(Arc<ServiceTarget>, f64)>,
    mirror_draws: std::sync::atomic::AtomicU64,
}

impl RuleAction {
    /// Whether this request is mirrored to a target that gets `fraction` of them (a hashed
    /// counter: no RNG state shared between threads).
    pub fn mirror_this(&self, fraction: f64) -> bool {
        if fraction >= 1.0 {
            return true;
        }
        let n = self
            .mirror_draws
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let u =
            (locus_core::balancer::hash_bytes(&n.to_le_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
        u < fraction
    }

    /// The backend for this request, split by backendRef weights; `None` when every weight
    /// is 0 (the Gateway API asks for a 500 then).
    #[inline]
    pub fn pick_backend(&self) -> Option<&Backend> {
        self.schedule.next().map(|i| &self.backends[i as usize])
    }
}

#[derive(Debug)]
struct Entry {
    matcher: MatchModel,
    precedence: Precedence,
    action: Arc<RuleAction>,
}

/// Everything served on one port.
#[derive(Debug, Default)]
pub struct PortTable {
    /// `namespace/gateway/listener` names bound to this port.
    pub listeners: Vec<String>,
    exact: HashMap<String, Vec<Entry>>,
    /// Longest suffix first.
    wildcard: Vec<(HostKey, Vec<Entry>)>,
    any: Vec<Entry>,
}

/// A matched rule, and the `PathPrefix` of the match that took the request (when it was one).
pub type Routed<'a> = (&'a Arc<RuleAction>, Option<&'a str>);

fn first<'a>(entries: &'a [Entry], req: &Parts) -> Option<Routed<'a>> {
    entries
        .iter()
        .find(|e| matching::matches(&e.matcher, req))
        .map(|e| {
            let prefix = match &e.matcher.path {
                crate::model::PathMatch::Prefix(p) => Some(p.as_str()),
                _ => None,
            };
            (&e.action, prefix)
        })
}

impl PortTable {
    /// The rule for a request, by host (exact, then wildcard, then catch-all) and then by
    /// match precedence.
    pub fn route(&self, host: &str, req: &Parts) -> Option<Routed<'_>> {
        if let Some(found) = self.exact.get(host).and_then(|e| first(e, req)) {
            return Some(found);
        }
        for (key, entries) in &self.wildcard {
            if key.covers(host) {
                if let Some(found) = first(entries, req) {
                    return Some(found);
                }
            }
        }
        first(&self.any, req)
    }

    fn insert(&mut self, key: HostKey, entry: Entry) {
        let list = match key {
            HostKey::Exact(h) => self.exact.entry(h).or_default(),
            HostKey::Wildcard(_) => match self.wildcard.iter().position(|(k, _)| *k == key) {
                Some(i) => &mut self.wildcard[i].1,
                None => {
                    self.wildcard.push((key, Vec::new()));
                    &mut self.wildcard.last_mut().expect("just pushed").1
                }
            },
            HostKey::Any => &mut self.any,
        };
        list.push(entry);
    }

    fn finish(&mut self) {
        for list in self.exact.values_mut() {
            list.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        }
        self.wildcard.sort_by(|(a, _), (b, _)| match (a, b) {
            (HostKey::Wildcard(x), HostKey::Wildcard(y)) => y.len().cmp(&x.len()).then(x.cmp(y)),
            _ => a.cmp(b),
        });
        for (_, list) in &mut self.wildcard {
            list.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        }
        self.any.sort_by(|a, b| a.precedence.cmp(&b.precedence));
    }

    /// Hosts with routes, for `check` and logs.
    pub fn hosts(&self) -> Vec<String> {
        let mut out: Vec<String> = self.exact.keys().cloned().collect();
        out.sort();
        out.extend(self.wildcard.iter().map(|(k, _)| match k {
            HostKey::Wildcard(s) => format!("*{s}"),
            other => format!("{other:?}"),
        }));
        if !self.any.is_empty() {
            out.push("*".into());
        }
        out
    }
}

/// The whole routing state at one moment.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub generation: u64,
    pub identity: ResolvedIdentity,
    pub ports: BTreeMap<u16, PortTable>,
    pub services: BTreeMap<(ObjKey, u16), Arc<ServiceTarget>>,
    /// Which Service ports each endpoint address belongs to (health changes rebuild these).
    pub by_endpoint: HashMap<SocketAddr, Vec<Arc<ServiceTarget>>>,
    /// The Gateways served, and each HTTPRoute parentRef's outcome (Gateway API status).
    pub gateways: Vec<ObjKey>,
    pub route_status: Vec<RouteParentStatus>,
    /// Each listener of the served Gateways, for `status.listeners`.
    pub listener_status: Vec<ListenerStatus>,
    pub warnings: Vec<String>,
}

/// One listener of a served Gateway: how many HTTPRoutes attach to it, or why it is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    pub gateway: ObjKey,
    pub name: String,
    pub attached_routes: usize,
    /// The protocol, when Locus does not serve it.
    pub unsupported_protocol: Option<String>,
}

/// The Gateway API's view of one parentRef of one HTTPRoute: `Accepted` and `ResolvedRefs`,
/// each `Ok` or `Err((reason, message))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteParentStatus {
    pub route: ObjKey,
    pub gateway: ObjKey,
    pub section: Option<String>,
    pub port: Option<u16>,
    pub accepted: Result<(), (&'static str, String)>,
    pub resolved: Result<(), (&'static str, String)>,
}

/// `ResolvedRefs` of a route: every backendRef must name an existing Service port of a
/// supported kind in the route's namespace.
fn resolved_refs(
    model: &Model,
    route: &crate::model::RouteModel,
) -> Result<(), (&'static str, String)> {
    for rule in &route.rules {
        if let Some(why) = rule.filters.refused_mirrors.first() {
            return Err(("RefNotPermitted", why.clone()));
        }
        for m in &rule.filters.mirrors {
            if model
                .services
                .get(&m.service)
                .and_then(|s| s.port(m.port))
                .is_none()
            {
                return Err((
                    "BackendNotFound",
                    format!(
                        "RequestMirror: Service {} port {} not found",
                        m.service, m.port
                    ),
                ));
            }
        }
    }
    for b in route.rules.iter().flat_map(|r| &r.backends) {
        if let Some(why) = &b.invalid {
            let reason = if why.contains("ReferenceGrant") {
                "RefNotPermitted"
            } else if why.contains("kind") {
                "InvalidKind"
            } else {
                "BackendNotFound"
            };
            return Err((reason, why.clone()));
        }
        let port = b.port.unwrap_or_default();
        match model.services.get(&b.service) {
            None => {
                return Err((
                    "BackendNotFound",
                    format!("Service {} not found", b.service),
                ))
            }
            Some(s) if s.port(port).is_none() => {
                return Err((
                    "BackendNotFound",
                    format!("Service {} has no port {port}", b.service),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Which Gateways this instance serves.
#[derive(Clone, Debug, Default)]
pub enum GatewaySelector {
    /// Every Gateway in the resources (file mode: the user pointed us at them).
    #[default]
    All,
    One(ObjKey),
    /// Gateways of this `gatewayClassName` (cluster mode).
    Class(String),
}

impl GatewaySelector {
    fn selects(&self, gw: &crate::model::GatewayModel) -> bool {
        match self {
            GatewaySelector::All => true,
            GatewaySelector::One(k) => *k == gw.key,
            GatewaySelector::Class(c) => *c == gw.class,
        }
    }
}

fn namespace_allowed(
    model: &Model,
    allowed: &AllowedRoutes,
    gateway_ns: &str,
    route_ns: &str,
) -> bool {
    match allowed {
        AllowedRoutes::Same => gateway_ns == route_ns,
        AllowedRoutes::All => true,
        AllowedRoutes::Selector(want) => {
            let labels = model.namespaces.get(route_ns);
            want.iter().all(|(k, v)| {
                labels.and_then(|l| l.get(k)) == Some(v)
                    || (k == "kubernetes.io/metadata.name" && v == route_ns)
            })
        }
    }
}

impl RouteTable {
    pub fn build(
        model: &Model,
        identity: ResolvedIdentity,
        selector: &GatewaySelector,
        generation: u64,
        live: &Live<'_>,
    ) -> RouteTable {
        let Live {
            registry,
            events,
            metrics,
            now_ms,
        } = *live;
        let mut warnings = model.warnings.clone();
        warnings.extend(identity.warnings.iter().cloned());
        let mut services: BTreeMap<(ObjKey, u16), Arc<ServiceTarget>> = BTreeMap::new();
        let mut ports: BTreeMap<u16, PortTable> = BTreeMap::new();
        let mut seen: HashSet<(u16, HostKey, String, usize, usize)> = HashSet::new();
        // (Gateway, listener, HTTPRoute) attachments, counted once each for status.
        let mut attachments: HashSet<(ObjKey, String, ObjKey)> = HashSet::new();

        let gateways: Vec<_> = model
            .gateways
            .iter()
            .filter(|g| selector.selects(g))
            .collect();
        if let GatewaySelector::One(k) = selector {
            if gateways.is_empty() {
                warnings.push(format!(
                    "Gateway {k} (from --gateway) is not among the resources"
                ));
            }
        }
        for gw in &gateways {
            for l in &gw.listeners {
                ports
                    .entry(l.port)
                    .or_default()
                    .listeners
                    .push(format!("{}/{}", gw.key, l.name));
            }
        }
        let mut route_status = Vec::new();
        for route in &model.routes {
            let mut attached = false;
            let resolved = resolved_refs(model, route);
            for parent in &route.parents {
                let Some(gw) = gateways.iter().find(|g| g.key == parent.gateway) else {
                    continue;
                };
                // Why this parent did not take the route, best reason last seen.
                let mut refusal = (
                    "NoMatchingParent",
                    "no listener matches the parentRef's sectionName/port".to_owned(),
                );
                let mut parent_attached = false;
                for l in &gw.listeners {
                    if parent.section.as_ref().is_some_and(|s| *s != l.name)
                        || parent.port.is_some_and(|p| p != l.port)
                    {
                        continue;
                    }
                    refusal = (
                        "NotAllowedByListeners",
                        format!(
                            "listener {} does not allow routes from namespace {}",
                            l.name, route.key.namespace
                        ),
                    );
                    if !namespace_allowed(
                        model,
                        &l.allowed,
                        &gw.key.namespace,
                        &route.key.namespace,
                    ) {
                        warnings.push(format!(
                            "HTTPRoute {} is not allowed on listener {}/{} (allowedRoutes); not attached there",
                            route.key, gw.key, l.name
                        ));
                        continue;
                    }
                    // attachedRoutes counts what parentRefs and allowedRoutes select, whatever
                    // the hostnames (the Gateway API's definition).
                    attachments.insert((gw.key.clone(), l.name.clone(), route.key.clone()));
                    refusal = (
                        "NoMatchingListenerHostname",
                        format!("no hostname of the route matches listener {}", l.name),
                    );
                    let Some(hosts) = intersect(l.hostname.as_deref(), &route.hostnames) else {
                        warnings.push(format!(
                            "HTTPRoute {}: none of its hostnames matches listener {}/{} hostname {}; not attached there",
                            route.key,
                            gw.key,
                            l.name,
                            l.hostname.as_deref().unwrap_or("*")
                        ));
                        continue;
                    };
                    attached = true;
                    parent_attached = true;
                    for (r, rule) in route.rules.iter().enumerate() {
                        let ctx = BuildCtx {
                            model,
                            identity: &identity,
                            registry,
                            events,
                            metrics,
                            fleet: gateways
                                .iter()
                                .find_map(|g| g.fleet.as_ref())
                                .or(identity.fleet.as_ref()),
                            now_ms,
                        };
                        let action = Arc::new(build_action(
                            &ctx,
                            route,
                            r,
                            rule,
                            &mut services,
                            &mut warnings,
                        ));
                        for host in &hosts {
                            for (i, m) in rule.matches.iter().enumerate() {
                                if !seen.insert((l.port, host.clone(), route.key.to_string(), r, i))
                                {
                                    continue;
                                }
                                let precedence = Precedence::new(
                                    m,
                                    route.created.clone(),
                                    route.key.to_string(),
                                    r,
                                    i,
                                );
                                ports.entry(l.port).or_default().insert(
                                    host.clone(),
                                    Entry {
                                        matcher: m.clone(),
                                        precedence,
                                        action: action.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
                route_status.push(RouteParentStatus {
                    route: route.key.clone(),
                    gateway: gw.key.clone(),
                    section: parent.section.clone(),
                    port: parent.port,
                    accepted: if parent_attached {
                        Ok(())
                    } else {
                        Err((refusal.0, refusal.1.clone()))
                    },
                    resolved: resolved.clone(),
                });
            }
            if !attached && !route.parents.is_empty() {
                warnings.push(format!(
                    "HTTPRoute {} is not attached to any Gateway Locus serves",
                    route.key
                ));
            }
        }
        for table in ports.values_mut() {
            table.finish();
        }
        let mut by_endpoint: HashMap<SocketAddr, Vec<Arc<ServiceTarget>>> = HashMap::new();
        for target in services.values() {
            for ep in &target.snapshot.load().endpoints {
                by_endpoint.entry(ep.addr).or_default().push(target.clone());
            }
        }
        let listener_status = gateways
            .iter()
            .flat_map(|g| {
                let served = g.listeners.iter().map(|l| ListenerStatus {
                    gateway: g.key.clone(),
                    name: l.name.clone(),
                    attached_routes: attachments
                        .iter()
                        .filter(|(gw, name, _)| *gw == g.key && *name == l.name)
                        .count(),
                    unsupported_protocol: None,
                });
                let skipped =
                    g.unsupported_listeners
                        .iter()
                        .map(|(name, protocol)| ListenerStatus {
                            gateway: g.key.clone(),
                            name: name.clone(),
                            attached_routes: 0,
                            unsupported_protocol: Some(protocol.clone()),
                        });
                served.chain(skipped).collect::<Vec<_>>()
            })
            .collect();
        RouteTable {
            generation,
            identity,
            ports,
            services,
            by_endpoint,
            gateways: gateways.iter().map(|g| g.key.clone()).collect(),
            listener_status,
            route_status,
            warnings,
        }
    }
}

/// What a table build reads from the running gateway: health records kept across reloads,
/// where ejections are reported, the metric families, and the clock.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub registry: &'a HealthRegistry,
    pub events: &'a crate::health::HealthTx,
    pub metrics: &'a Arc<Metrics>,
    pub now_ms: u64,
}

struct BuildCtx<'a> {
    model: &'a Model,
    identity: &'a ResolvedIdentity,
    registry: &'a HealthRegistry,
    events: &'a crate::health::HealthTx,
    metrics: &'a Arc<Metrics>,
    /// The served Gateway's `locus.io/fleet`.
    fleet: Option<&'a BTreeMap<String, f64>>,
    now_ms: u64,
}

/// A Service asking for capacity-aware routing gets the served Gateway's fleet; without one
/// (or without a known zone) it falls back to its other settings, says so, and returns why
/// (the reason label of `locus_zone_balance_fallback`).
fn balancer_with_fleet(
    balancer: &Arc<locus_core::BalancerConfig>,
    ctx: &BuildCtx<'_>,
    service: &str,
    warnings: &mut Vec<String>,
) -> (Arc<locus_core::BalancerConfig>, Option<&'static str>) {
    if balancer.fleet.is_none() {
        return (balancer.clone(), None);
    }
    let mut b = (**balancer).clone();
    b.fleet = None;
    let fallback = if ctx.identity.identity.locality.zone.is_empty() {
        warnings.push(format!(
            "Service {service}: locus.io/zone-balance capacity needs the gateway's zone; falling back to trafficDistribution"
        ));
        Some("gateway-zone-unknown")
    } else if balancer.locality.is_some() {
        warnings.push(format!(
            "Service {service}: a DestinationRule localityLbSetting takes precedence over locus.io/zone-balance capacity"
        ));
        Some("destination-rule")
    } else {
        match ctx.fleet {
            Some(f) => {
                b.fleet = Some(f.clone());
                None
            }
            None => {
                warnings.push(format!(
                    "Service {service}: locus.io/zone-balance capacity needs the fleet: set locus.io/fleet (e.g. \"zone-a=2,zone-b=1\") on the Gateway (or --fleet-service); meanwhile zones are balanced by measured load (load-aware spill, default band)"
                ));
                Some("no-fleet")
            }
        }
    };
    (Arc::new(b), fallback)
}

/// The target of one Service port, created once per table (routes and mirrors share it).
fn service_target(
    ctx: &BuildCtx<'_>,
    svc: &crate::model::ServiceModel,
    sp: &crate::model::ServicePortModel,
    port: u16,
    services: &mut BTreeMap<(ObjKey, u16), Arc<ServiceTarget>>,
    warnings: &mut Vec<String>,
) -> Arc<ServiceTarget> {
    services
            .entry((svc.key.clone(), port))
            .or_insert_with(|| {
                let health = sp
                    .endpoints
                    .iter()
                    .map(|e| ctx.registry.get(e.addr))
                    .collect();
                let name = format!("{}:{port}", svc.key);
                let (balancer, zone_balance_fallback) =
                    balancer_with_fleet(&sp.balancer, ctx, &name, warnings);
                let mut health_config = sp.health.clone();
                if zone_balance_fallback == Some("no-fleet")
                    && health_config.load_spill.is_none()
                {
                    // Without a fleet, the measured load stands in for it:
                    // unequal traffic per gateway is what capacity maths would
                    // have corrected, and load-aware spill corrects it too.
                    health_config.load_spill = Some(Default::default());
                }
                let sp_health = &health_config;
                let mut options = sp.health.options;
                if sp_health.load_spill.is_some() {
                    // Carried across reloads: a reload must not undo spill
                    // that the load still calls for.
                    options.load_spill = ctx.registry.load_spill(&name);
                }
                let snapshot = ServiceSnapshot::build_with_health(
                    ctx.identity.identity.clone(),
                    svc.policy,
                    balancer,
                    options,
                    sp.endpoints.clone(),
                    health,
                    ctx.now_ms,
                );
                if sp_health.load_spill.is_some() && snapshot.buckets.len() < 2 {
                    warnings.push(format!(
                        "Service {name}: locus.io/load-spill has no effect: the Service routes over one bucket ({}), so there is no closer and farther bucket to balance",
                        snapshot.rule
                    ));
                } else if sp_health.load_spill.is_some()
                    && matches!(
                        snapshot.balancer.algorithm,
                        locus_core::Algorithm::ConsistentHash(_)
                    )
                {
                    warnings.push(format!(
                        "Service {name}: locus.io/load-spill has no effect with consistentHash: hashed requests stay in the best healthy bucket"
                    ));
                }
                let endpoint_metrics = snapshot
                    .endpoints
                    .iter()
                    .map(|e| ctx.metrics.endpoint(&name, &ctx.identity.identity, e))
                    .collect();
                let errors = crate::metrics::ErrorCounters::new(ctx.metrics, &name);
                let target = ServiceTarget {
                    key: svc.key.clone(),
                    port,
                    name: Arc::from(name),
                    h2c: sp.app_protocol.as_deref() == Some("kubernetes.io/h2c"),
                    health: health_config.clone(),
                    snapshot: ArcSwap::from_pointee(snapshot),
                    endpoint_metrics,
                    totals: Arc::default(),
                    zone_balance_fallback,
                    load_view: Default::default(),
                    errors,
                    events: ctx.events.clone(),
                    rebuilding: Default::default(),
                    metrics: ctx.metrics.clone(),
                };
                target.publish_gauges(&target.snapshot.load());
                Arc::new(target)
            })
            .clone()
}

fn build_action(
    ctx: &BuildCtx<'_>,
    route: &crate::model::RouteModel,
    r: usize,
    rule: &crate::model::RuleModel,
    services: &mut BTreeMap<(ObjKey, u16), Arc<ServiceTarget>>,
    warnings: &mut Vec<String>,
) -> RuleAction {
    let mut backends = Vec::new();
    let mut weights = Vec::new();
    for b in &rule.backends {
        let backend = if let Some(why) = &b.invalid {
            Backend::Invalid(Arc::from(why.as_str()))
        } else {
            let port = b.port.unwrap_or_default();
            match ctx.model.services.get(&b.service) {
                None => {
                    let why = format!("Service {} not found", b.service);
                    warnings.push(format!(
                        "HTTPRoute {} rule {r}: {why}; its share of requests gets 500",
                        route.key
                    ));
                    Backend::Invalid(Arc::from(why))
                }
                Some(svc) => match svc.port(port) {
                    None => {
                        let why = format!("Service {} has no port {port}", b.service);
                        warnings.push(format!(
                            "HTTPRoute {} rule {r}: {why}; its share of requests gets 500",
                            route.key
                        ));
                        Backend::Invalid(Arc::from(why))
                    }
                    Some(sp) => {
                        let target = service_target(ctx, svc, sp, port, services, warnings);
                        Backend::Service(target)
                    }
                },
            }
        };
        if b.weight > 0 {
            weights.push((backends.len() as u32, b.weight));
        }
        backends.push(backend);
    }
    let mut mirrors = Vec::new();
    for m in &rule.filters.mirrors {
        let found = ctx
            .model
            .services
            .get(&m.service)
            .and_then(|svc| svc.port(m.port).map(|sp| (svc, sp)));
        match found {
            Some((svc, sp)) => mirrors.push((
                service_target(ctx, svc, sp, m.port, services, warnings),
                m.fraction,
            )),
            None => warnings.push(format!(
                "HTTPRoute {} rule {r}: RequestMirror to Service {} port {}: no such Service port; requests are not mirrored",
                route.key, m.service, m.port
            )),
        }
    }
    let prefix_edit =
        |p: &Option<crate::model::PathEdit>| matches!(p, Some(crate::model::PathEdit::Prefix(_)));
    RuleAction {
        route: Arc::from(format!("{} rule {r}", route.key)),
        backends,
        schedule: WeightedSchedule::new(weights),
        timeout: rule.request_timeout,
        needs_prefix: rule
            .filters
            .redirect
            .as_ref()
            .is_some_and(|x| prefix_edit(&x.path))
            || rule
                .filters
                .rewrite
                .as_ref()
                .is_some_and(|x| prefix_edit(&x.path)),
        filters: rule.filters.clone(),
        mirrors,
        mirror_draws: Default::default(),
        unsupported: (!rule.unsupported_filters.is_empty()).then(|| {
            Arc::from(format!(
                "filters not supported by Locus yet: {}",
                rule.unsupported_filters.join(", ")
            ))
        }),
    }
}
