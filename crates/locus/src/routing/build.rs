//! Building the route table from a model: Gateways' listeners, HTTPRoutes attached to them
//! (parentRefs, allowedRoutes, hostnames), one target per Service port.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::health::HealthRegistry;
use crate::identity::ResolvedIdentity;
use crate::metrics::Metrics;
use crate::model::{GatewayModel, ListenerModel, Model, ObjKey, RouteModel};

use super::action::build_action;
use super::matching::{intersect, HostKey, Precedence};
use super::status::{listener_status, resolved_refs, RouteParentStatus};
use super::table::{namespace_allowed, Entry, GatewaySelector, PortTable, RouteTable};
use super::target::ServiceTarget;

impl RouteTable {
    /// The table for `model` as this gateway (`identity`, `selector`) serves it.
    pub fn build(
        model: &Model,
        identity: ResolvedIdentity,
        selector: &GatewaySelector,
        generation: u64,
        live: &Live<'_>,
    ) -> RouteTable {
        let mut warnings = model.warnings.clone();
        warnings.extend(identity.warnings.iter().cloned());
        let gateways: Vec<&GatewayModel> = model
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
        let ctx = BuildCtx {
            model,
            identity: &identity,
            live,
            fleet: gateways
                .iter()
                .find_map(|g| g.fleet.as_ref())
                .or(identity.fleet.as_ref()),
        };
        let mut b = Builder {
            ctx: &ctx,
            gateways: &gateways,
            warnings,
            services: BTreeMap::new(),
            ports: BTreeMap::new(),
            seen: HashSet::new(),
            attachments: HashSet::new(),
            route_status: Vec::new(),
            port_conflicts: HashMap::new(),
        };
        b.port_conflicts = port_conflicts(&gateways, &mut b.warnings);
        for gw in &gateways {
            let served: Vec<&ListenerModel> =
                gw.listeners.iter().filter(|l| b.serves(gw, l)).collect();
            for l in served {
                let port = b.ports.entry(l.port).or_default();
                port.listeners.push(format!("{}/{}", gw.key, l.name));
                // Every listener claims its hostnames, routes or not (listener isolation).
                port.listener_index(l.hostname.as_deref());
            }
        }
        for route in &model.routes {
            b.attach(route);
        }
        for table in b.ports.values_mut() {
            table.finish();
        }
        let east_west = model.east_west_port.map(|port| b.east_west(port));
        let listener_status = listener_status(&gateways, &b.attachments, &b.port_conflicts);
        RouteTable {
            generation,
            ports: b.ports,
            services: b.services,
            gateways: gateways.iter().map(|g| g.key.clone()).collect(),
            listener_status,
            route_status: b.route_status,
            warnings: b.warnings,
            identity,
            east_west,
        }
    }
}

impl Builder<'_> {
    /// The east-west listener: for each Service port with endpoints in this cluster, a target
    /// holding only those (dialled directly: never another cluster's, never another network's
    /// gateway), keyed by the hop header's value.
    fn east_west(&mut self, port: u16) -> super::table::EastWest {
        let mut by_destination = HashMap::new();
        // Never a network's east-west gateway itself (that could only send a hop back to an
        // east-west port).
        let gateways = &self.ctx.model.network_gateway_services;
        for svc in self
            .ctx
            .model
            .services
            .values()
            .filter(|s| s.kind == "Service" && !gateways.contains(&s.key))
        {
            for sp in &svc.ports {
                let local: Vec<locus_core::Endpoint> = sp
                    .endpoints
                    .iter()
                    .filter(|e| e.cluster.is_none() && e.via.is_none())
                    .cloned()
                    .collect();
                if local.is_empty() {
                    continue;
                }
                let here = crate::model::ServiceModel {
                    key: ObjKey::new(&svc.key.namespace, &format!("{}.east-west", svc.key.name)),
                    kind: "Service (east-west)",
                    policy: svc.policy,
                    ports: vec![crate::model::ServicePortModel {
                        endpoints: local,
                        ..sp.clone()
                    }],
                    annotations: svc.annotations.clone(),
                    origin: svc.origin.clone(),
                };
                let target = super::target::service_target(
                    self.ctx,
                    &here,
                    &here.ports[0],
                    sp.port,
                    &mut self.services,
                    &mut self.warnings,
                );
                let destination = format!("{}:{}", svc.key, sp.port);
                let action = super::action::RuleAction::to_target(
                    Arc::from(format!("east-west {destination}")),
                    target,
                );
                by_destination.insert(destination, Arc::new(action));
            }
        }
        super::table::EastWest {
            port,
            by_destination,
        }
    }
}

/// The table under construction.
struct Builder<'a> {
    ctx: &'a BuildCtx<'a>,
    gateways: &'a [&'a GatewayModel],
    warnings: Vec<String>,
    services: BTreeMap<(ObjKey, u16), Arc<ServiceTarget>>,
    ports: BTreeMap<u16, PortTable>,
    /// (port, host, route, rule, match) already inserted: a route attached to two listeners
    /// of one port is matched once.
    seen: HashSet<(u16, u16, HostKey, String, usize, usize)>,
    /// (Gateway, listener, HTTPRoute) attachments, counted once each for status.
    attachments: HashSet<(ObjKey, String, ObjKey)>,
    route_status: Vec<RouteParentStatus>,
    /// Listeners refused because another Gateway holds their port: (Gateway, listener) → why.
    port_conflicts: HashMap<(ObjKey, String), String>,
}

/// One process serves every selected Gateway on one address, so a port belongs to one
/// Gateway: the oldest (then the first by namespace/name, the Gateway API's tie-break) keeps
/// it, and the other Gateways' listeners on it are refused (`Accepted=False`,
/// `PortUnavailable`) instead of their routes being merged into it.
fn port_conflicts(
    gateways: &[&GatewayModel],
    warnings: &mut Vec<String>,
) -> HashMap<(ObjKey, String), String> {
    let mut by_age: Vec<&GatewayModel> = gateways.to_vec();
    by_age.sort_by(|a, b| {
        (a.created.is_none(), &a.created, &a.key).cmp(&(b.created.is_none(), &b.created, &b.key))
    });
    let mut owner: BTreeMap<u16, &ObjKey> = BTreeMap::new();
    let mut out = HashMap::new();
    for gw in by_age {
        for l in gw.listeners.iter().filter(|l| l.served()) {
            match owner.get(&l.port) {
                Some(other) if **other != gw.key => {
                    let why = format!(
                        "port {} is held by Gateway {other} in this gateway process; listeners of two Gateways are never merged",
                        l.port
                    );
                    warnings.push(format!(
                        "Gateway {} listener {}: {why} (PortUnavailable); its routes are not served there",
                        gw.key, l.name
                    ));
                    out.insert((gw.key.clone(), l.name.clone()), why);
                }
                _ => {
                    owner.insert(l.port, &gw.key);
                }
            }
        }
    }
    out
}

impl Builder<'_> {
    /// Whether a listener takes traffic: served by Locus, and its port not held by another
    /// Gateway.
    fn serves(&self, gw: &GatewayModel, l: &ListenerModel) -> bool {
        l.served()
            && !self
                .port_conflicts
                .contains_key(&(gw.key.clone(), l.name.clone()))
    }
}

impl Builder<'_> {
    /// Attaches a route to every listener its parentRefs select, and records each parent's
    /// status.
    fn attach(&mut self, route: &RouteModel) {
        if let Some(why) = &route.refused {
            for parent in &route.parents {
                if !self.gateways.iter().any(|g| g.key == parent.gateway) {
                    continue;
                }
                self.route_status.push(RouteParentStatus {
                    kind: route.kind.as_str(),
                    route: route.key.clone(),
                    gateway: parent.gateway.clone(),
                    section: parent.section.clone(),
                    port: parent.port,
                    accepted: Err(("UnsupportedValue", why.clone())),
                    resolved: Ok(()),
                });
            }
            return;
        }
        let mut attached = false;
        let resolved = resolved_refs(self.ctx.model, route);
        for parent in &route.parents {
            let Some(gw) = self.gateways.iter().find(|g| g.key == parent.gateway) else {
                continue;
            };
            // Why this parent did not take the route, best reason last seen.
            let mut refusal = (
                "NoMatchingParent",
                "no listener matches the parentRef's sectionName/port".to_owned(),
            );
            let mut parent_attached = false;
            // A listener that cannot be served takes no route: an HTTPS listener refused for a
            // protocol conflict must not have its routes answered in plain text.
            let served: Vec<&ListenerModel> =
                gw.listeners.iter().filter(|l| self.serves(gw, l)).collect();
            for l in served {
                if parent.section.as_ref().is_some_and(|s| *s != l.name)
                    || parent.port.is_some_and(|p| p != l.port)
                {
                    continue;
                }
                match self.attach_to_listener(route, gw, l) {
                    Ok(()) => parent_attached = true,
                    Err(why) => refusal = why,
                }
            }
            attached |= parent_attached;
            self.route_status.push(RouteParentStatus {
                kind: route.kind.as_str(),
                route: route.key.clone(),
                gateway: gw.key.clone(),
                section: parent.section.clone(),
                port: parent.port,
                accepted: if parent_attached {
                    Ok(())
                } else {
                    Err(refusal)
                },
                resolved: resolved.clone(),
            });
        }
        if !attached && !route.parents.is_empty() {
            self.warnings.push(format!(
                "HTTPRoute {} is not attached to any Gateway Locus serves",
                route.key
            ));
        }
    }

    /// Attaches a route to one listener (allowedRoutes, then hostnames), or says why not.
    fn attach_to_listener(
        &mut self,
        route: &RouteModel,
        gw: &GatewayModel,
        l: &ListenerModel,
    ) -> Result<(), (&'static str, String)> {
        if !l.kinds.contains(&route.kind.as_str()) {
            return Err((
                "NotAllowedByListeners",
                format!(
                    "listener {} does not take {} (allowedRoutes.kinds)",
                    l.name,
                    route.kind.as_str()
                ),
            ));
        }
        if !namespace_allowed(
            self.ctx.model,
            &l.allowed,
            &gw.key.namespace,
            &route.key.namespace,
        ) {
            self.warnings.push(format!(
                "HTTPRoute {} is not allowed on listener {}/{} (allowedRoutes); not attached there",
                route.key, gw.key, l.name
            ));
            return Err((
                "NotAllowedByListeners",
                format!(
                    "listener {} does not allow routes from namespace {}",
                    l.name, route.key.namespace
                ),
            ));
        }
        let Some(hosts) = intersect(l.hostname.as_deref(), &route.hostnames) else {
            self.warnings.push(format!(
                "HTTPRoute {}: none of its hostnames matches listener {}/{} hostname {}; not attached there",
                route.key,
                gw.key,
                l.name,
                l.hostname.as_deref().unwrap_or("*")
            ));
            return Err((
                "NoMatchingListenerHostname",
                format!("no hostname of the route matches listener {}", l.name),
            ));
        };
        // attachedRoutes counts the routes the listener takes: selected by parentRefs and
        // allowedRoutes, with a hostname in common (as the conformance suite checks).
        self.attachments
            .insert((gw.key.clone(), l.name.clone(), route.key.clone()));
        let listener = self
            .ports
            .entry(l.port)
            .or_default()
            .listener_index(l.hostname.as_deref());
        for (r, rule) in route.rules.iter().enumerate() {
            let action = Arc::new(build_action(
                self.ctx,
                route,
                r,
                rule,
                &mut self.services,
                &mut self.warnings,
            ));
            for host in &hosts {
                for (i, m) in rule.matches.iter().enumerate() {
                    if !self.seen.insert((
                        l.port,
                        listener,
                        host.clone(),
                        route.key.to_string(),
                        r,
                        i,
                    )) {
                        continue;
                    }
                    let precedence =
                        Precedence::new(m, route.created.clone(), route.key.to_string(), r, i);
                    self.ports.entry(l.port).or_default().insert(
                        host.clone(),
                        Entry {
                            matcher: m.clone(),
                            precedence,
                            action: action.clone(),
                            listener,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

/// What a table build reads from the running gateway: health records kept across reloads,
/// the load-aware spill in force per Service, where ejections are reported, the metric
/// families, and the clock.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub registry: &'a HealthRegistry,
    pub spill: &'a HashMap<Arc<str>, f64>,
    pub events: &'a crate::health::HealthTx,
    pub metrics: &'a Arc<Metrics>,
    pub now_ms: u64,
}

pub(super) struct BuildCtx<'a> {
    pub model: &'a Model,
    pub identity: &'a ResolvedIdentity,
    pub live: &'a Live<'a>,
    /// The served Gateway's `locus.io/fleet`.
    pub fleet: Option<&'a BTreeMap<String, f64>>,
}
