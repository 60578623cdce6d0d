//! HTTPRoute → attachment, matches and weighted backends.

use std::sync::Arc;
use std::time::Duration;

use gateway_api::apis::standard::httproutes::{
    HttpRoute, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType as HeaderType,
    HttpRouteRulesMatchesMethod as Method, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType,
};
use regex::Regex;

use super::multicluster::{import_key, virtual_destination_key};
use super::{name_of, namespace_of, DocCtx, GrantModel, ObjKey};
use crate::resources::experimental::{HttpRouteRetry, RuleExtras, SessionPersistence};
use crate::resources::multicluster::{GLOO_GROUP, MCS_GROUP};
use crate::resources::{ConfigError, Origin};

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Matches whole path segments: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// One `matches[]` entry; all its conditions must hold.
#[derive(Clone, Debug)]
pub struct MatchModel {
    pub path: PathMatch,
    /// Lower-cased header names.
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<http::Method>,
}

impl Default for MatchModel {
    fn default() -> Self {
        MatchModel {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BackendRefModel {
    pub service: ObjKey,
    pub port: Option<u16>,
    pub weight: u32,
    /// Set when the reference cannot be honoured whatever exists (wrong kind, cross-namespace):
    /// requests sent to its share get a 500, as the Gateway API requires.
    pub invalid: Option<String>,
    /// The backendRef's own filters (header edits and URL rewrite), applied after the rule's
    /// to the requests sent to it.
    pub filters: Option<super::Filters>,
}

#[derive(Clone, Debug)]
pub struct RuleModel {
    pub matches: Vec<MatchModel>,
    pub backends: Vec<BackendRefModel>,
    /// Filters Locus cannot apply. Per the Gateway API, requests that would have been
    /// processed by a filter that cannot be honoured get an error, never a silent skip.
    pub unsupported_filters: Vec<String>,
    /// The filters it applies.
    pub filters: super::Filters,
    /// `timeouts.request`: the whole exchange, retries included. `None`: the gateway's
    /// default; zero: no timeout (as the Gateway API says of "0s").
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`: each attempt. Zero: none.
    pub backend_request_timeout: Option<Duration>,
    /// `retry` (experimental channel): in place of the Service's retry policy.
    pub retry: Option<super::RetryPolicy>,
    /// `sessionPersistence` (experimental channel).
    pub session: Option<Arc<SessionModel>>,
}

/// An HTTPRoute rule's `sessionPersistence`: requests carrying the session's cookie (or header)
/// go to the backend and endpoint that answered the first, while it can take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionModel {
    pub name: String,
    /// The header the session travels in (`type: Header`) instead of a cookie named `name`.
    pub header: Option<http::HeaderName>,
    /// The cookie's `Max-Age` (`cookieConfig.lifetimeType: Permanent`).
    pub max_age: Option<Duration>,
    /// `absoluteTimeout`: a session older than this starts again (kept in its value, so it
    /// holds for session cookies and headers too).
    pub absolute_timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct ParentRefModel {
    pub gateway: ObjKey,
    pub section: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct RouteModel {
    pub key: ObjKey,
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    pub parents: Vec<ParentRefModel>,
    /// Lower-cased; may start with `*.`.
    pub hostnames: Vec<String>,
    pub rules: Vec<RuleModel>,
    /// RFC 3339 creation time, for the Gateway API's tie-break (oldest wins).
    pub created: Option<String>,
    pub origin: Origin,
    /// Why the route is not served (a field Locus cannot read or honour): it attaches to
    /// nothing, its parents report `Accepted=False`, every other route keeps serving.
    pub refused: Option<String>,
}

/// The kind of a route: what its requests are, and how the gateway speaks to its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Http,
    /// GRPCRoute: backends are spoken to over HTTP/2, and the gateway's own errors are gRPC
    /// errors.
    Grpc,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// Parses a Gateway API duration (`1h`, `10s`, `500ms`, combinations like `1m30s`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        total += unit * u32::try_from(n).ok()?;
        rest = &rest[len..];
    }
    Some(total)
}

fn method(m: &Method) -> http::Method {
    match m {
        Method::Get => http::Method::GET,
        Method::Head => http::Method::HEAD,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Delete => http::Method::DELETE,
        Method::Connect => http::Method::CONNECT,
        Method::Options => http::Method::OPTIONS,
        Method::Trace => http::Method::TRACE,
        Method::Patch => http::Method::PATCH,
    }
}

fn build_match(
    ctx: &DocCtx<'_>,
    field: &str,
    m: &HttpRouteRulesMatches,
) -> Result<MatchModel, ConfigError> {
    let regex = |f: &str, v: &str| {
        Regex::new(v).map_err(|e| ctx.error(f, format!("invalid regular expression: {e}")))
    };
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let f = format!("{field}.path.value");
            match p.r#type.clone().unwrap_or(PathType::PathPrefix) {
                PathType::RegularExpression => {
                    PathMatch::Regex(regex(&f, &format!("^(?:{value})$"))?)
                }
                kind => {
                    if !value.starts_with('/') {
                        return Err(ctx.error(&f, format!("{value:?} must start with '/'")));
                    }
                    if matches!(kind, PathType::Exact) {
                        PathMatch::Exact(value)
                    } else {
                        // A trailing slash in a prefix is ignored (`/foo/` ≡ `/foo`).
                        let trimmed = value.trim_end_matches('/');
                        PathMatch::Prefix(if trimmed.is_empty() {
                            "/".into()
                        } else {
                            trimmed.into()
                        })
                    }
                }
            }
        }
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().flatten().enumerate() {
        let f = format!("{field}.headers[{i}]");
        let name =
            http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ctx.error(
                    &format!("{f}.name"),
                    format!("{:?} is not a header name", h.name),
                )
            })?;
        let value = match h.r#type.clone().unwrap_or(HeaderType::Exact) {
            HeaderType::Exact => ValueMatch::Exact(h.value.clone()),
            HeaderType::RegularExpression => {
                ValueMatch::Regex(regex(&format!("{f}.value"), &format!("^(?:{})$", h.value))?)
            }
        };
        headers.push((name, value));
    }
    let mut query = Vec::new();
    for (i, q) in m.query_params.iter().flatten().enumerate() {
        let f = format!("{field}.queryParams[{i}].value");
        let value = match q.r#type.clone().unwrap_or(QueryType::Exact) {
            QueryType::Exact => ValueMatch::Exact(q.value.clone()),
            QueryType::RegularExpression => {
                ValueMatch::Regex(regex(&f, &format!("^(?:{})$", q.value))?)
            }
        };
        query.push((q.name.clone(), value));
    }
    Ok(MatchModel {
        path,
        headers,
        query,
        method: m.method.as_ref().map(method),
    })
}

pub(super) fn build(
    ctx: &DocCtx<'_>,
    route: &HttpRoute,
    extras: &[RuleExtras],
    grants: &[super::GrantModel],
    warnings: &mut Vec<String>,
) -> Result<RouteModel, ConfigError> {
    let key = ObjKey {
        namespace: namespace_of(&route.metadata),
        name: name_of(ctx, &route.metadata)?,
    };
    let mut parents = Vec::new();
    for (i, p) in route.spec.parent_refs.iter().flatten().enumerate() {
        let group = p.group.as_deref().unwrap_or("gateway.networking.k8s.io");
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if group != "gateway.networking.k8s.io" || kind != "Gateway" {
            warnings.push(format!(
                "{}: spec.parentRefs[{i}] refers to {group}/{kind}, which Locus does not serve; ignored",
                ctx.place()
            ));
            continue;
        }
        let port = ctx.port(&format!("spec.parentRefs[{i}].port"), p.port)?;
        parents.push(ParentRefModel {
            gateway: ObjKey {
                namespace: p.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                name: p.name.clone(),
            },
            section: p.section_name.clone(),
            port,
        });
    }
    let hostnames = route
        .spec
        .hostnames
        .iter()
        .flatten()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let mut rules = Vec::new();
    for (r, rule) in route.spec.rules.iter().flatten().enumerate() {
        let field = format!("spec.rules[{r}]");
        let mut matches = Vec::new();
        for (m, mm) in rule.matches.iter().flatten().enumerate() {
            matches.push(build_match(ctx, &format!("{field}.matches[{m}]"), mm)?);
        }
        if matches.is_empty() {
            matches.push(MatchModel::default());
        }
        let mut backends = Vec::new();
        for (b, br) in rule.backend_refs.iter().flatten().enumerate() {
            let f = format!("{field}.backendRefs[{b}]");
            let weight = br.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                return Err(ctx.error(
                    &format!("{f}.weight"),
                    format!("{weight} is outside 0..=1000000"),
                ));
            }
            let group = br.group.as_deref().unwrap_or("");
            let kind = br.kind.as_deref().unwrap_or("Service");
            let namespace = br
                .namespace
                .clone()
                .unwrap_or_else(|| key.namespace.clone());
            // A ServiceImport (GEP-1748) or a Gloo Mesh VirtualDestination is modelled as a
            // Service under its own key.
            let target = match (group, kind) {
                ("" | "core", "Service") => Some(ObjKey::new(&namespace, &br.name)),
                (MCS_GROUP, "ServiceImport") => Some(import_key(&namespace, &br.name)),
                (GLOO_GROUP, "VirtualDestination") => {
                    Some(virtual_destination_key(&namespace, &br.name))
                }
                _ => None,
            };
            let invalid = if target.is_none() {
                Some(format!(
                    "backendRef kind {group}/{kind} is not supported (Service, {MCS_GROUP}/ServiceImport, {GLOO_GROUP}/VirtualDestination)"
                ))
            } else if namespace != key.namespace
                && !grants.iter().any(|g| {
                    g.namespace == namespace
                        && g.allows_route_to(&key.namespace, group, kind, &br.name)
                })
            {
                Some(format!(
                    "backendRef to {kind} {namespace}/{} needs a ReferenceGrant in namespace {namespace} allowing HTTPRoutes from namespace {}",
                    br.name, key.namespace
                ))
            } else if br.port.is_none() {
                Some(format!("backendRef to a {kind} needs a port"))
            } else {
                None
            };
            if let Some(why) = &invalid {
                warnings.push(format!(
                    "{}: {f}: {why}; its share of requests gets 500",
                    ctx.place()
                ));
            }
            let port = ctx.port(&format!("{f}.port"), br.port)?;
            let (filters, invalid) = match br.filters.as_deref() {
                None | Some([]) => (None, invalid),
                Some(list) => {
                    match backend_filters(
                        ctx,
                        &f,
                        list,
                        &matches,
                        &key.namespace,
                        grants,
                        warnings,
                    )? {
                        Ok(filters) => (Some(filters), invalid),
                        Err(why) => {
                            warnings.push(format!(
                                "{}: {f}.filters: {why}; its share of requests gets 500",
                                ctx.place()
                            ));
                            (None, invalid.or(Some(why)))
                        }
                    }
                }
            };
            backends.push(BackendRefModel {
                service: target.unwrap_or_else(|| ObjKey::new(&namespace, &br.name)),
                port,
                weight: weight as u32,
                invalid,
                filters,
            });
        }
        let mut unsupported_filters = Vec::new();
        let filters = super::filters::parse(
            ctx,
            &super::filters::RuleCtx {
                field: &field,
                matches: &matches,
                route_ns: &key.namespace,
                grants,
            },
            rule.filters.as_deref().unwrap_or_default(),
            warnings,
            &mut unsupported_filters,
        )?;
        let timeout = |which: &str, value: Option<&str>| {
            duration_at(ctx, &format!("{field}.timeouts.{which}"), value)
        };
        let timeouts = rule.timeouts.as_ref();
        let request_timeout = timeout("request", timeouts.and_then(|t| t.request.as_deref()))?;
        let backend_request_timeout = timeout(
            "backendRequest",
            timeouts.and_then(|t| t.backend_request.as_deref()),
        )?;
        if let (Some(req), Some(backend)) = (request_timeout, backend_request_timeout) {
            // The Gateway API's validation refuses this; the overall deadline wins anyway.
            if !req.is_zero() && (backend.is_zero() || backend > req) {
                warnings.push(format!(
                    "{}: {field}.timeouts.backendRequest ({backend:?}) exceeds timeouts.request ({req:?}); each attempt ends with the request",
                    ctx.place()
                ));
            }
        }
        let extra = extras.get(r);
        let retry = match extra.and_then(|e| e.retry.as_ref()) {
            Some(retry) => Some(route_retry(ctx, &field, retry)?),
            None => None,
        };
        let session = match extra.and_then(|e| e.session_persistence.as_ref()) {
            Some(s) => Some(Arc::new(session(ctx, &field, s, warnings)?)),
            None => None,
        };
        rules.push(RuleModel {
            matches,
            backends,
            unsupported_filters,
            filters,
            request_timeout,
            backend_request_timeout,
            retry,
            session,
        });
    }
    Ok(RouteModel {
        key,
        kind: RouteKind::Http,
        parents,
        hostnames,
        rules,
        created: route
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_owned)),
        origin: ctx.doc.origin.clone(),
        refused: None,
    })
}

/// A route that cannot be built: kept with its parents only (read leniently from the route
/// as JSON), so its status can say why while the other routes serve. A route without a name
/// cannot be told apart at all: that stays an error of the whole configuration.
pub(super) fn refused(
    ctx: &DocCtx<'_>,
    route: serde_json::Value,
    kind: RouteKind,
    error: ConfigError,
) -> Result<RouteModel, ConfigError> {
    let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
        serde_json::from_value(route["metadata"].clone()).unwrap_or_default();
    let key = ObjKey {
        namespace: namespace_of(&meta),
        name: name_of(ctx, &meta)?,
    };
    let parents = route["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["group"].as_str().unwrap_or("gateway.networking.k8s.io")
                == "gateway.networking.k8s.io"
                && p["kind"].as_str().unwrap_or("Gateway") == "Gateway"
        })
        .filter_map(|p| {
            Some(ParentRefModel {
                gateway: ObjKey {
                    namespace: p["namespace"].as_str().unwrap_or(&key.namespace).to_owned(),
                    name: p["name"].as_str()?.to_owned(),
                },
                section: p["sectionName"].as_str().map(str::to_owned),
                port: p["port"].as_u64().and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect();
    Ok(RouteModel {
        key,
        kind,
        parents,
        hostnames: Vec::new(),
        rules: Vec::new(),
        created: None,
        origin: ctx.doc.origin.clone(),
        refused: Some(error.to_string()),
    })
}

/// A backendRef's filters: the rule's filter types, read with the same rules. Header edits and
/// `URLRewrite` apply per backend; the others (`Err`: why) make the backend invalid.
fn backend_filters(
    ctx: &DocCtx<'_>,
    field: &str,
    list: &[gateway_api::apis::standard::httproutes::HttpRouteRulesBackendRefsFilters],
    matches: &[MatchModel],
    route_ns: &str,
    grants: &[GrantModel],
    warnings: &mut Vec<String>,
) -> Result<Result<super::Filters, String>, ConfigError> {
    // The backendRef filter types are the rule's, generated twice: read through JSON.
    let as_rule: Vec<gateway_api::apis::standard::httproutes::HttpRouteRulesFilters> =
        serde_json::to_value(list)
            .and_then(serde_json::from_value)
            .map_err(|e| ctx.error(&format!("{field}.filters"), format!("cannot be read: {e}")))?;
    let mut unsupported = Vec::new();
    let filters = super::filters::parse(
        ctx,
        &super::filters::RuleCtx {
            field,
            matches,
            route_ns,
            grants,
        },
        &as_rule,
        warnings,
        &mut unsupported,
    )?;
    let per_backend = super::Filters {
        request_headers: filters.request_headers.clone(),
        response_headers: filters.response_headers.clone(),
        rewrite: filters.rewrite.clone(),
        ..Default::default()
    };
    if !unsupported.is_empty() {
        return Ok(Err(format!(
            "filters not supported: {}",
            unsupported.join(", ")
        )));
    }
    if per_backend != filters {
        return Ok(Err(
            "on a backendRef Locus applies RequestHeaderModifier, ResponseHeaderModifier and URLRewrite only".to_owned(),
        ));
    }
    Ok(Ok(per_backend))
}

/// A GRPCRoute, read as the HTTPRoute it is on the wire: gRPC calls are HTTP/2 POSTs to
/// `/{service}/{method}`, so a method match is a path match, and parentRefs, hostnames, header
/// matches, filters and backendRefs have the same shape. The rest of the model (attachment,
/// status, locality routing) is then the same for both.
pub(super) fn build_grpc(
    ctx: &DocCtx<'_>,
    route: &gateway_api::apis::standard::grpcroutes::GrpcRoute,
    grants: &[super::GrantModel],
    warnings: &mut Vec<String>,
) -> Result<RouteModel, ConfigError> {
    let mut value = serde_json::to_value(route)
        .map_err(|e| ctx.error("spec", format!("cannot be read: {e}")))?;
    let rules = value
        .pointer_mut("/spec/rules")
        .and_then(|r| r.as_array_mut())
        .map(std::mem::take)
        .unwrap_or_default();
    let mut converted = Vec::new();
    for (i, mut rule) in rules.into_iter().enumerate() {
        if let Some(matches) = rule.get_mut("matches").and_then(|m| m.as_array_mut()) {
            for (j, m) in matches.iter_mut().enumerate() {
                let Some(obj) = m.as_object_mut() else {
                    continue;
                };
                if let Some(method) = obj.remove("method") {
                    let field = format!("spec.rules[{i}].matches[{j}].method");
                    obj.insert("path".into(), grpc_path(ctx, &field, &method)?);
                }
            }
        }
        converted.push(rule);
    }
    value["spec"]["rules"] = serde_json::Value::Array(converted);
    value["kind"] = "HTTPRoute".into();
    let http: HttpRoute = serde_json::from_value(value)
        .map_err(|e| ctx.error("spec", format!("cannot be read as a route: {e}")))?;
    let mut model = build(ctx, &http, &[], grants, warnings)?;
    model.kind = RouteKind::Grpc;
    Ok(model)
}

/// An optional Gateway API duration at `field`.
fn duration_at(
    ctx: &DocCtx<'_>,
    field: &str,
    value: Option<&str>,
) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|s| {
            parse_duration(s).ok_or_else(|| {
                ctx.error(field, format!("{s:?} is not a duration (e.g. 10s, 500ms)"))
            })
        })
        .transpose()
}

/// An HTTPRoute rule's `retry`: codes 400–599 (as the API's validation allows), attempts
/// (default 2, as a Service's policy), the backoff a duration.
fn route_retry(
    ctx: &DocCtx<'_>,
    field: &str,
    retry: &HttpRouteRetry,
) -> Result<super::RetryPolicy, ConfigError> {
    for (i, code) in retry.codes.iter().enumerate() {
        if !(400..=599).contains(code) {
            return Err(ctx.error(
                &format!("{field}.retry.codes[{i}]"),
                format!("{code} is outside 400..=599"),
            ));
        }
    }
    let backoff = duration_at(
        ctx,
        &format!("{field}.retry.backoff"),
        retry.backoff.as_deref(),
    )?;
    let mut statuses = retry.codes.clone();
    statuses.sort_unstable();
    statuses.dedup();
    Ok(super::RetryPolicy {
        attempts: retry.attempts.unwrap_or(2),
        statuses,
        per_try_timeout: None,
        // Unset: Envoy's jittered back-off (as Envoy Gateway does), so that a large `attempts`
        // against an endpoint refusing connections is not a tight loop; `0s`: none.
        backoff: match backoff {
            None => Some(super::Backoff::ENVOY),
            Some(b) if b.is_zero() => None,
            Some(b) => Some(super::Backoff::Fixed(b)),
        },
        route_rule: true,
    })
}

/// An HTTPRoute rule's `sessionPersistence`.
fn session(
    ctx: &DocCtx<'_>,
    field: &str,
    s: &SessionPersistence,
    warnings: &mut Vec<String>,
) -> Result<SessionModel, ConfigError> {
    let at = |f: &str| format!("{field}.sessionPersistence.{f}");
    let header = match s.kind.as_deref().unwrap_or("Cookie") {
        "Cookie" => false,
        "Header" => true,
        other => {
            return Err(ctx.error(
                &at("type"),
                format!("{other:?} is not a session persistence type (Cookie, Header)"),
            ))
        }
    };
    let name = s
        .session_name
        .clone()
        .unwrap_or_else(|| "locus-session".to_owned());
    // A cookie name and a header name are both RFC 9110 tokens.
    let token = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ctx.error(&at("sessionName"), format!("{name:?} is not a valid token")))?;
    let time = |f: &str, v: Option<&String>| match duration_at(ctx, &at(f), v.map(String::as_str))?
    {
        Some(d) if d.is_zero() => Err(ctx.error(&at(f), "must be more than 0s".to_owned())),
        d => Ok(d),
    };
    let absolute_timeout = time("absoluteTimeout", s.absolute_timeout.as_ref())?;
    if time("idleTimeout", s.idle_timeout.as_ref())?.is_some() {
        warnings.push(format!(
            "{}: {}: not supported; sessions end with absoluteTimeout or the cookie's lifetime only",
            ctx.place(),
            at("idleTimeout")
        ));
    }
    let permanent = match s
        .cookie_config
        .as_ref()
        .and_then(|c| c.lifetime_type.as_deref())
    {
        None | Some("Session") => false,
        Some("Permanent") => true,
        Some(other) => {
            return Err(ctx.error(
                &at("cookieConfig.lifetimeType"),
                format!("{other:?} is not a lifetime type (Session, Permanent)"),
            ))
        }
    };
    if permanent && absolute_timeout.is_none() {
        return Err(ctx.error(
            &at("absoluteTimeout"),
            "a Permanent cookie needs absoluteTimeout (its Max-Age)".to_owned(),
        ));
    }
    Ok(SessionModel {
        name,
        header: header.then_some(token),
        max_age: absolute_timeout.filter(|_| permanent && !header),
        absolute_timeout,
    })
}

/// A GRPCRoute method match as an HTTPRoute path match.
fn grpc_path(
    ctx: &DocCtx<'_>,
    field: &str,
    method: &serde_json::Value,
) -> Result<serde_json::Value, ConfigError> {
    let service = method.get("service").and_then(|s| s.as_str());
    let name = method.get("method").and_then(|s| s.as_str());
    let regex = method.get("type").and_then(|t| t.as_str()) == Some("RegularExpression");
    let bad = |what: &str| ctx.error(field, what.to_owned());
    for part in [service, name].into_iter().flatten() {
        if part.is_empty() || (!regex && part.contains('/')) {
            return Err(bad(
                "service and method must be non-empty and contain no '/'",
            ));
        }
    }
    let path = match (regex, service, name) {
        (_, None, None) => return Err(bad("needs a service, a method or both")),
        (false, Some(s), Some(m)) => {
            serde_json::json!({"type": "Exact", "value": format!("/{s}/{m}")})
        }
        (false, Some(s), None) => {
            serde_json::json!({"type": "PathPrefix", "value": format!("/{s}")})
        }
        (false, None, Some(m)) => serde_json::json!({
            "type": "RegularExpression",
            "value": format!("/[^/]+/{}", regex::escape(m)),
        }),
        (true, s, m) => serde_json::json!({
            "type": "RegularExpression",
            "value": format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
        }),
    };
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration(""), None);
    }
}
