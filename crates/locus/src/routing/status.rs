//! The Gateway API's view of what was built: each HTTPRoute parentRef's `Accepted` and
//! `ResolvedRefs`, and each listener's attached routes.

use std::collections::HashSet;

use crate::model::{GatewayModel, Model, ObjKey};

/// One listener of a served Gateway: how many HTTPRoutes attach to it, or why it is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    pub gateway: ObjKey,
    pub name: String,
    pub attached_routes: usize,
    /// The protocol, when Locus does not serve it.
    pub unsupported_protocol: Option<String>,
    /// `ResolvedRefs`: an HTTPS listener's certificate references that cannot be used, as
    /// (reason, message): `InvalidCertificateRef`, `RefNotPermitted`, `ProtocolConflict`,
    /// `InvalidRouteKinds`.
    pub refused_refs: Vec<(&'static str, String)>,
    /// `supportedKinds`: the route kinds it takes.
    pub supported_kinds: Vec<&'static str>,
}

/// The Gateway API's view of one parentRef of one HTTPRoute: `Accepted` and `ResolvedRefs`,
/// each `Ok` or `Err((reason, message))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteParentStatus {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    pub route: ObjKey,
    pub gateway: ObjKey,
    pub section: Option<String>,
    pub port: Option<u16>,
    pub accepted: Result<(), (&'static str, String)>,
    pub resolved: Result<(), (&'static str, String)>,
}

/// `ResolvedRefs` of a route: every backendRef must name an existing Service port of a
/// supported kind in the route's namespace.
pub(super) fn resolved_refs(
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

/// Each listener of the served Gateways with the routes attached to it, and the listeners
/// Locus does not serve (`UnsupportedProtocol`).
pub(super) fn listener_status(
    gateways: &[&GatewayModel],
    attachments: &HashSet<(ObjKey, String, ObjKey)>,
    port_conflicts: &std::collections::HashMap<(ObjKey, String), String>,
) -> Vec<ListenerStatus> {
    let mut out = Vec::new();
    for g in gateways {
        out.extend(g.listeners.iter().map(|l| {
            ListenerStatus {
                gateway: g.key.clone(),
                name: l.name.clone(),
                attached_routes: attachments
                    .iter()
                    .filter(|(gw, name, _)| *gw == g.key && *name == l.name)
                    .count(),
                unsupported_protocol: None,
                refused_refs: port_conflicts
                    .get(&(g.key.clone(), l.name.clone()))
                    .map(|why| ("PortUnavailable", why.clone()))
                    .into_iter()
                    .chain((!l.invalid_kinds.is_empty()).then(|| {
                        (
                            "InvalidRouteKinds",
                            format!(
                                "route kinds {} are not supported",
                                l.invalid_kinds.join(", ")
                            ),
                        )
                    }))
                    .chain(l.tls.iter().flat_map(|t| t.refused.clone()))
                    .collect(),
                supported_kinds: l.kinds.clone(),
            }
        }));
        out.extend(
            g.unsupported_listeners
                .iter()
                .map(|(name, protocol)| ListenerStatus {
                    gateway: g.key.clone(),
                    name: name.clone(),
                    attached_routes: 0,
                    unsupported_protocol: Some(protocol.clone()),
                    refused_refs: Vec::new(),
                    supported_kinds: Vec::new(),
                }),
        );
    }
    out
}
