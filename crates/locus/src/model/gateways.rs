//! Gateway → listeners.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From,
    GatewayListenersTlsMode,
};

use super::{name_of, namespace_of, DocCtx, GrantModel, ObjKey};
use crate::resources::{ConfigError, Origin};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedRoutes {
    Same,
    All,
    /// Namespaces whose labels include all of these.
    Selector(BTreeMap<String, String>),
}

#[derive(Clone, Debug)]
pub struct ListenerModel {
    pub name: String,
    pub port: u16,
    pub hostname: Option<String>,
    pub allowed: AllowedRoutes,
    /// `allowedRoutes.kinds`: the route kinds it takes (`HTTPRoute`, `GRPCRoute`), and the
    /// kinds asked for that Locus does not serve (`InvalidRouteKinds`).
    pub kinds: Vec<&'static str>,
    pub invalid_kinds: Vec<String>,
    /// `Some` for an HTTPS listener (TLS terminated by Locus).
    pub tls: Option<ListenerTls>,
}

impl ListenerModel {
    /// Whether the listener is served: not an HTTPS listener on a port that serves plain HTTP.
    pub fn served(&self) -> bool {
        !self.tls.as_ref().is_some_and(|t| {
            t.refused
                .iter()
                .any(|(reason, _)| *reason == "ProtocolConflict")
        })
    }
}

/// An HTTPS listener's certificates.
#[derive(Clone, Debug, Default)]
pub struct ListenerTls {
    /// The Secrets it may use, in order.
    pub certificates: Vec<ObjKey>,
    /// References that cannot be used, with why (`RefNotPermitted`, `InvalidCertificateRef`).
    pub refused: Vec<(&'static str, String)>,
}

#[derive(Clone, Debug)]
pub struct GatewayModel {
    pub key: ObjKey,
    pub class: String,
    /// The HTTP listeners Locus serves (others are reported and skipped).
    pub listeners: Vec<ListenerModel>,
    /// Listeners not served, as (name, protocol): reported in status, never silently dropped.
    pub unsupported_listeners: Vec<(String, String)>,
    pub annotations: BTreeMap<String, String>,
    /// `locus.io/fleet: "zone-a=2,zone-b=1"`: gateway replicas (or traffic share) per zone,
    /// for capacity-aware zone routing.
    pub fleet: Option<BTreeMap<String, f64>>,
    pub origin: Origin,
    /// `metadata.creationTimestamp` (RFC 3339): the older Gateway keeps a contested port.
    pub created: Option<String>,
    /// The `controllerName` of its GatewayClass, when that GatewayClass is known.
    pub controller: Option<String>,
    /// `spec.tls.frontend`: client certificates asked of HTTPS clients (mTLS), by port.
    pub client_validation: ClientValidation,
}

/// `spec.tls.frontend`: how HTTPS clients' certificates are validated, for every port
/// (`default`) or some (`perPort`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientValidation {
    pub default: Option<ClientCa>,
    pub per_port: BTreeMap<u16, ClientCa>,
}

impl ClientValidation {
    pub fn for_port(&self, port: u16) -> Option<&ClientCa> {
        self.per_port.get(&port).or(self.default.as_ref())
    }
}

/// The CAs client certificates must chain to (ConfigMaps, `ca.crt`), and whether a client
/// without a valid one is still served (`AllowInsecureFallback`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientCa {
    pub config_maps: Vec<ObjKey>,
    pub allow_insecure_fallback: bool,
    /// Where it was set, for messages.
    pub field: String,
}

/// `frontend.default.validation` and `frontend.perPort[].tls.validation` (the same shape,
/// generated twice: read through JSON).
fn client_validation(
    ctx: &DocCtx<'_>,
    gw: &Gateway,
    warnings: &mut Vec<String>,
) -> ClientValidation {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Validation {
        #[serde(default)]
        ca_certificate_refs: Vec<Ref>,
        #[serde(default)]
        mode: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Ref {
        #[serde(default)]
        group: String,
        #[serde(default)]
        kind: String,
        name: String,
        #[serde(default)]
        namespace: Option<String>,
    }
    let mut out = ClientValidation::default();
    let Some(frontend) = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return out;
    };
    let gw_ns = super::namespace_of(&gw.metadata);
    let mut read = |field: String, v: serde_json::Value| -> Option<ClientCa> {
        let v: Validation = serde_json::from_value(v).ok()?;
        let mut config_maps = Vec::new();
        for (i, r) in v.ca_certificate_refs.iter().enumerate() {
            let ns = r.namespace.clone().unwrap_or_else(|| gw_ns.clone());
            if !(r.group.is_empty() || r.group == "core") || r.kind != "ConfigMap" || ns != gw_ns {
                warnings.push(format!(
                    "{}: {field}.caCertificateRefs[{i}]: {}/{} {ns}/{} is not supported (a ConfigMap in the Gateway's namespace); client certificates cannot be validated against it",
                    ctx.place(),
                    r.group,
                    r.kind,
                    r.name
                ));
            }
            config_maps.push(ObjKey::new(&ns, &r.name));
        }
        Some(ClientCa {
            config_maps,
            allow_insecure_fallback: v.mode.as_deref() == Some("AllowInsecureFallback"),
            field,
        })
    };
    if let Some(v) = &frontend.default.validation {
        out.default = read(
            "spec.tls.frontend.default.validation".into(),
            serde_json::to_value(v).unwrap_or_default(),
        );
    }
    for (i, p) in frontend.per_port.iter().flatten().enumerate() {
        let (Ok(port), Some(v)) = (u16::try_from(p.port), &p.tls.validation) else {
            continue;
        };
        if let Some(ca) = read(
            format!("spec.tls.frontend.perPort[{i}].tls.validation"),
            serde_json::to_value(v).unwrap_or_default(),
        ) {
            out.per_port.insert(port, ca);
        }
    }
    out
}

/// The `controllerName` of the GatewayClasses Locus implements.
pub const CONTROLLER_NAME: &str = "locus.io/gateway";

pub const ANNOTATION_FLEET: &str = "locus.io/fleet";

pub(super) fn build(
    ctx: &DocCtx<'_>,
    gw: &Gateway,
    grants: &[GrantModel],
    warnings: &mut Vec<String>,
) -> Result<GatewayModel, ConfigError> {
    let key = ObjKey {
        namespace: namespace_of(&gw.metadata),
        name: name_of(ctx, &gw.metadata)?,
    };
    let mut listeners = Vec::new();
    let mut unsupported_listeners = Vec::new();
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        let field = |f: &str| format!("spec.listeners[{i}].{f}");
        let port = u16::try_from(l.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ctx.error(
                    &field("port"),
                    format!("{} is not a port (1-65535)", l.port),
                )
            })?;
        let passthrough = l
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == Some(GatewayListenersTlsMode::Passthrough));
        if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS") || passthrough {
            let what = if passthrough {
                "TLS passthrough (TLSRoute)"
            } else {
                "protocol"
            };
            warnings.push(format!(
                "{}: listener {:?} has {what} {} which Locus does not serve yet (HTTP and HTTPS only); listener skipped",
                ctx.place(),
                l.name,
                l.protocol
            ));
            unsupported_listeners.push((l.name.clone(), l.protocol.clone()));
            continue;
        }
        let tls = (l.protocol == "HTTPS").then(|| listener_tls(ctx, &key, l, i, grants, warnings));
        if l.tls
            .as_ref()
            .is_some_and(|t| t.options.as_ref().is_some_and(|o| !o.is_empty()))
        {
            warnings.push(format!(
                "{}: listener {:?}: tls.options are not supported; the listener serves with Locus's TLS defaults",
                ctx.place(),
                l.name
            ));
        }
        if listeners.iter().any(|x: &ListenerModel| x.name == l.name) {
            return Err(ctx.error(
                &field("name"),
                format!("listener name {:?} is used twice", l.name),
            ));
        }
        let allowed = match l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
        {
            None => AllowedRoutes::Same,
            Some(ns) => match ns.from {
                None | Some(From::Same) => AllowedRoutes::Same,
                Some(From::All) => AllowedRoutes::All,
                Some(From::Selector) => {
                    let sel = ns.selector.as_ref().ok_or_else(|| {
                        ctx.error(
                            &field("allowedRoutes.namespaces.selector"),
                            "required when from is Selector",
                        )
                    })?;
                    if sel
                        .match_expressions
                        .as_ref()
                        .is_some_and(|e| !e.is_empty())
                    {
                        warnings.push(format!(
                            "{}: listener {:?}: allowedRoutes selector matchExpressions are not supported; only matchLabels are used",
                            ctx.place(),
                            l.name
                        ));
                    }
                    AllowedRoutes::Selector(sel.match_labels.clone().unwrap_or_default())
                }
            },
        };
        // Without `kinds`, every route kind the protocol supports.
        let (mut kinds, mut invalid_kinds) = (Vec::new(), Vec::new());
        match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
            None => kinds = vec!["HTTPRoute", "GRPCRoute"],
            Some(asked) => {
                for k in asked {
                    let group = k.group.as_deref().unwrap_or("gateway.networking.k8s.io");
                    match (group, k.kind.as_str()) {
                        ("gateway.networking.k8s.io", "HTTPRoute") => kinds.push("HTTPRoute"),
                        ("gateway.networking.k8s.io", "GRPCRoute") => kinds.push("GRPCRoute"),
                        (g, kind) => invalid_kinds.push(format!("{g}/{kind}")),
                    }
                }
            }
        }
        if !invalid_kinds.is_empty() {
            warnings.push(format!(
                "{}: listener {:?}: allowedRoutes.kinds {} are not route kinds Locus serves (InvalidRouteKinds)",
                ctx.place(),
                l.name,
                invalid_kinds.join(", ")
            ));
        }
        listeners.push(ListenerModel {
            kinds,
            invalid_kinds,
            name: l.name.clone(),
            port,
            hostname: l
                .hostname
                .clone()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase()),
            allowed,
            tls,
        });
    }
    if gw.spec.tls.as_ref().is_some_and(|t| t.backend.is_some()) {
        warnings.push(format!(
            "{}: spec.tls.backend (a client certificate for backends) is not supported yet; use a DestinationRule tls mode MUTUAL",
            ctx.place()
        ));
    }
    let client_validation = client_validation(ctx, gw, warnings);
    Ok(GatewayModel {
        client_validation,
        controller: None,
        created: gw
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_owned)),
        key,
        class: gw.spec.gateway_class_name.clone(),
        listeners,
        unsupported_listeners,
        fleet: match gw
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_FLEET))
        {
            None => None,
            Some(v) => {
                Some(locus_core::capacity::parse_fleet(v).map_err(|e| {
                    ctx.error(&format!("metadata.annotations.{ANNOTATION_FLEET}"), e)
                })?)
            }
        },
        annotations: gw.metadata.annotations.clone().unwrap_or_default(),
        origin: ctx.doc.origin.clone(),
    })
}

/// An HTTPS listener's `tls.certificateRefs`: core Secrets, in the Gateway's namespace or in
/// another one that grants it with a ReferenceGrant. A reference that cannot be used is noted
/// for the listener's status and a warning; the listener's other certificates still serve.
fn listener_tls(
    ctx: &DocCtx<'_>,
    gw: &ObjKey,
    l: &GatewayListeners,
    i: usize,
    grants: &[GrantModel],
    warnings: &mut Vec<String>,
) -> ListenerTls {
    let mut tls = ListenerTls::default();
    let refs = l
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.clone())
        .unwrap_or_default();
    if refs.is_empty() {
        tls.refused.push((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".to_owned(),
        ));
    }
    for (j, r) in refs.iter().enumerate() {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let namespace = r.namespace.clone().unwrap_or_else(|| gw.namespace.clone());
        let problem = if !(group.is_empty() || group == "core") || kind != "Secret" {
            Some((
                "InvalidCertificateRef",
                format!(
                    "certificateRefs[{j}] is a {group}/{kind}; only core Secrets are supported"
                ),
            ))
        } else if namespace != gw.namespace
            && !grants.iter().any(|g| {
                g.namespace == namespace && g.allows_gateway_to_secret(&gw.namespace, &r.name)
            })
        {
            Some((
                "RefNotPermitted",
                format!(
                    "certificateRefs[{j}] to Secret {namespace}/{} needs a ReferenceGrant in namespace {namespace} allowing Gateways from namespace {}",
                    r.name, gw.namespace
                ),
            ))
        } else {
            None
        };
        match problem {
            Some((reason, why)) => {
                warnings.push(format!(
                    "{}: listener {:?} (spec.listeners[{i}].tls): {why}; not used",
                    ctx.place(),
                    l.name
                ));
                tls.refused.push((reason, why));
            }
            None => tls.certificates.push(ObjKey {
                namespace,
                name: r.name.clone(),
            }),
        }
    }
    tls
}
