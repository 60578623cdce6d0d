//! HTTPRoute rule filters Locus applies: request and response header edits
//! (`RequestHeaderModifier`, `ResponseHeaderModifier`), `RequestRedirect`, `URLRewrite`,
//! `RequestMirror` and `CORS`. `ExtensionRef` is not applied: a rule using it answers 500 (the
//! Gateway API forbids skipping a filter silently) and the configuration says why.

use gateway_api::apis::standard::httproutes::{
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType,
};
use http::{HeaderName, HeaderValue, StatusCode};

use super::routes::{MatchModel, PathMatch};
use super::{DocCtx, GrantModel, ObjKey};
use crate::resources::ConfigError;

/// `set`, `add` and `remove` of a header modifier, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies the edits in the Gateway API's order: set replaces, add appends, remove drops.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq)]
pub enum PathEdit {
    Full(String),
    /// Replaces the part of the path the rule's `PathPrefix` match matched.
    Prefix(String),
}

impl PathEdit {
    /// The new path for `path`, which matched `prefix` (a `PathPrefix` match, segment-wise).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathEdit::Full(p) => p.clone(),
            PathEdit::Prefix(with) => {
                let prefix = prefix.unwrap_or("/").trim_end_matches('/');
                let rest = path.get(prefix.len()..).unwrap_or("");
                let joined = format!("{}{rest}", with.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".to_owned()
                } else if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
        }
    }
}

/// `RequestRedirect`: answered by the gateway, no backend involved.
#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    pub scheme: Option<&'static str>,
    pub hostname: Option<String>,
    pub path: Option<PathEdit>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

impl Redirect {
    /// The `Location` for a request to `host` (without port) on a listener on `listener_port`,
    /// with path and query `path` / `query`, that matched `prefix`. Ports follow the Gateway
    /// API: the given one, else the scheme's well-known port when the scheme changes, else the
    /// listener's; the well-known port of the scheme is left out.
    /// `request_scheme` is the scheme the request came in with (`https` on an HTTPS listener):
    /// the redirect keeps it unless the filter names one.
    pub fn location(
        &self,
        request_scheme: &'static str,
        host: &str,
        listener_port: u16,
        path: &str,
        query: Option<&str>,
        prefix: Option<&str>,
    ) -> String {
        let scheme = self.scheme.unwrap_or(request_scheme);
        let well_known = if scheme == "https" { 443 } else { 80 };
        let port = match (self.port, self.scheme) {
            (Some(p), _) => p,
            (None, Some(_)) => well_known,
            (None, None) => listener_port,
        };
        let host = self.hostname.as_deref().unwrap_or(host);
        let path = match &self.path {
            Some(edit) => edit.apply(path, prefix),
            None => path.to_owned(),
        };
        let mut out = format!("{scheme}://{host}");
        if port != well_known {
            out.push_str(&format!(":{port}"));
        }
        out.push_str(&path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// `URLRewrite`: the request goes upstream with another host and/or path.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite {
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathEdit>,
}

/// `RequestMirror`: a copy of each request (or of `fraction` of them) to one endpoint of
/// another Service, its response discarded.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub service: ObjKey,
    pub port: u16,
    pub fraction: f64,
}

/// `CORS`: the gateway answers preflight requests from allowed origins itself, and marks the
/// responses to their actual requests as shareable with them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cors {
    /// `*`, or `scheme://host[:port]` where `*` in the host matches any run of characters.
    pub allow_origins: Vec<String>,
    /// Method names, or `*` (the preflight's requested method is echoed).
    pub allow_methods: Vec<String>,
    /// Header names, or `*` (the preflight's requested headers are echoed).
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<u32>,
    pub allow_credentials: bool,
}

impl Cors {
    /// Whether `origin` (the request's `Origin`) may share the responses.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.allow_origins.iter().any(|pattern| {
            if pattern == "*" {
                return true;
            }
            match pattern.split_once('*') {
                None => *pattern == origin,
                Some((before, after)) => {
                    origin.len() > before.len() + after.len()
                        && origin.starts_with(before)
                        && origin.ends_with(after)
                }
            }
        })
    }

    /// The answer to a preflight request (`OPTIONS` with `Access-Control-Request-Method`) from
    /// an allowed `origin`.
    pub fn preflight(&self, origin: &HeaderValue, request: &http::HeaderMap) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        self.decorate(&mut h, origin);
        let list = |configured: &[String], requested: Option<&HeaderValue>| {
            if configured.iter().any(|m| m == "*") {
                // The wildcard means "whatever was asked"; echoed, as `*` is not honoured by
                // browsers for credentialed requests.
                requested.cloned()
            } else if configured.is_empty() {
                None
            } else {
                HeaderValue::from_str(&configured.join(", ")).ok()
            }
        };
        let method = request.get("access-control-request-method");
        if let Some(v) = list(&self.allow_methods, method) {
            h.insert("access-control-allow-methods", v);
        }
        let headers = request.get("access-control-request-headers");
        if let Some(v) = list(&self.allow_headers, headers) {
            h.insert("access-control-allow-headers", v);
        }
        if let Some(age) = self.max_age {
            h.insert("access-control-max-age", HeaderValue::from(age));
        }
        h
    }

    /// The headers that let `origin` read a response.
    pub fn decorate(&self, h: &mut http::HeaderMap, origin: &HeaderValue) {
        h.insert("access-control-allow-origin", origin.clone());
        h.append(http::header::VARY, HeaderValue::from_static("origin"));
        if self.allow_credentials {
            h.insert(
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            );
        }
        if !self.expose_headers.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.expose_headers.join(", ")) {
                h.insert("access-control-expose-headers", v);
            }
        }
    }
}

/// The filters of one rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub cors: Option<Cors>,
    pub mirrors: Vec<Mirror>,
    /// Mirrors not allowed (no ReferenceGrant): skipped, and reported as `RefNotPermitted`.
    pub refused_mirrors: Vec<String>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

/// Headers a route may not set or add.
const FRAMING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

fn header_edits(
    ctx: &DocCtx<'_>,
    field: &str,
    set: impl Iterator<Item = (String, String)>,
    add: impl Iterator<Item = (String, String)>,
    remove: &[String],
) -> Result<HeaderEdits, ConfigError> {
    let name = |n: &str, f: &str| {
        HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| ctx.error(f, format!("{n:?} is not a valid header name")))
    };
    let pair = |(n, v): (String, String), f: String| -> Result<_, ConfigError> {
        // Any byte but control characters: the CRD allows more than visible ASCII.
        let value = HeaderValue::from_bytes(v.as_bytes())
            .map_err(|_| ctx.error(&f, format!("{v:?} is not a valid header value")))?;
        let name = name(&n, &f)?;
        // These frame the message or belong to the connection: a route must not change them.
        if FRAMING.contains(&name.as_str()) {
            return Err(ctx.error(
                &f,
                format!("{name} frames the message or the connection and cannot be set by a route"),
            ));
        }
        Ok((name, value))
    };
    let mut set_edits: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (i, p) in set.enumerate() {
        let (name, value) = pair(p, format!("{field}.set[{i}]"))?;
        // The Gateway API: the first entry for a name counts, later ones are ignored.
        if !set_edits.iter().any(|(n, _)| *n == name) {
            set_edits.push((name, value));
        }
    }
    Ok(HeaderEdits {
        set: set_edits,
        add: add
            .enumerate()
            .map(|(i, p)| pair(p, format!("{field}.add[{i}]")))
            .collect::<Result<_, _>>()?,
        remove: remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(n, &format!("{field}.remove[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

/// A redirect's or rewrite's `path`: (type is ReplacePrefixMatch, replaceFullPath,
/// replacePrefixMatch).
type PathSpec<'a> = (bool, Option<&'a String>, Option<&'a String>);

fn path_edit(
    ctx: &DocCtx<'_>,
    field: &str,
    spec: Option<PathSpec<'_>>,
    matches: &[MatchModel],
) -> Result<Option<PathEdit>, ConfigError> {
    let Some((prefix_type, full, prefix)) = spec else {
        return Ok(None);
    };
    let valid = |p: &String, what: &str| -> Result<(), ConfigError> {
        if p.starts_with('/')
            && http::uri::PathAndQuery::try_from(p.as_str()).is_ok()
            && !p.contains('?')
        {
            Ok(())
        } else {
            Err(ctx.error(
                &format!("{field}.{what}"),
                format!("{p:?} is not an absolute path"),
            ))
        }
    };
    if let Some(p) = full {
        valid(p, "replaceFullPath")?;
    }
    if let Some(p) = prefix {
        valid(p, "replacePrefixMatch")?;
    }
    if prefix_type {
        let with = prefix.ok_or_else(|| {
            ctx.error(
                &format!("{field}.replacePrefixMatch"),
                "is required with type ReplacePrefixMatch".to_owned(),
            )
        })?;
        // Only a PathPrefix match says which part of the path to replace.
        if matches
            .iter()
            .any(|m| !matches!(m.path, PathMatch::Prefix(_)))
        {
            return Err(ctx.error(
                &format!("{field}.type"),
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"
                    .to_owned(),
            ));
        }
        Ok(Some(PathEdit::Prefix(with.clone())))
    } else {
        let full = full.ok_or_else(|| {
            ctx.error(
                &format!("{field}.replaceFullPath"),
                "is required with type ReplaceFullPath".to_owned(),
            )
        })?;
        Ok(Some(PathEdit::Full(full.clone())))
    }
}

/// Where a rule's filters live: its field, its matches, its route's namespace and the
/// ReferenceGrants a cross-namespace mirror needs.
pub(super) struct RuleCtx<'a> {
    pub field: &'a str,
    pub matches: &'a [MatchModel],
    pub route_ns: &'a str,
    pub grants: &'a [GrantModel],
}

/// The filters of a rule. Filters Locus cannot apply are named in `unsupported` (with a
/// warning); invalid ones are errors.
pub(super) fn parse(
    ctx: &DocCtx<'_>,
    rule: &RuleCtx<'_>,
    filters: &[HttpRouteRulesFilters],
    warnings: &mut Vec<String>,
    unsupported: &mut Vec<String>,
) -> Result<Filters, ConfigError> {
    let (field, matches) = (rule.field, rule.matches);
    let mut out = Filters::default();
    for (i, f) in filters.iter().enumerate() {
        let here = format!("{field}.filters[{i}]");
        let missing = |what: &str| {
            ctx.error(
                &format!("{here}.{what}"),
                format!("is required with type {:?}", f.r#type),
            )
        };
        let twice = || {
            ctx.error(
                &format!("{here}.type"),
                format!("{:?} appears more than once in the rule", f.r#type),
            )
        };
        match f.r#type {
            FilterType::RequestHeaderModifier | FilterType::ResponseHeaderModifier => {
                // The request and response modifiers are twin generated types with the same
                // fields; one body serves both.
                macro_rules! edits_of {
                    ($modifier:ident, $field:literal) => {{
                        let m = f.$modifier.as_ref().ok_or_else(|| missing($field))?;
                        header_edits(
                            ctx,
                            &format!("{here}.{}", $field),
                            m.set
                                .iter()
                                .flatten()
                                .map(|h| (h.name.clone(), h.value.clone())),
                            m.add
                                .iter()
                                .flatten()
                                .map(|h| (h.name.clone(), h.value.clone())),
                            m.remove.as_deref().unwrap_or_default(),
                        )?
                    }};
                }
                let request = f.r#type == FilterType::RequestHeaderModifier;
                let edits = if request {
                    edits_of!(request_header_modifier, "requestHeaderModifier")
                } else {
                    edits_of!(response_header_modifier, "responseHeaderModifier")
                };
                let slot = if request {
                    &mut out.request_headers
                } else {
                    &mut out.response_headers
                };
                if slot.replace(edits).is_some() {
                    return Err(twice());
                }
            }
            FilterType::RequestRedirect => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?;
                let status = match r.status_code.unwrap_or(302) {
                    301 => StatusCode::MOVED_PERMANENTLY,
                    302 => StatusCode::FOUND,
                    303 => StatusCode::SEE_OTHER,
                    307 => StatusCode::TEMPORARY_REDIRECT,
                    308 => StatusCode::PERMANENT_REDIRECT,
                    other => {
                        return Err(ctx.error(
                            &format!("{here}.requestRedirect.statusCode"),
                            format!("{other} is not one of 301, 302, 303, 307, 308"),
                        ))
                    }
                };
                let port = ctx.port(&format!("{here}.requestRedirect.port"), r.port)?;
                let path = path_edit(
                    ctx,
                    &format!("{here}.requestRedirect.path"),
                    r.path.as_ref().map(|p| {
                        (
                            p.r#type == RedirectPathType::ReplacePrefixMatch,
                            p.replace_full_path.as_ref(),
                            p.replace_prefix_match.as_ref(),
                        )
                    }),
                    matches,
                )?;
                let redirect = Redirect {
                    scheme: r.scheme.as_ref().map(|s| match s {
                        Scheme::Http => "http",
                        Scheme::Https => "https",
                    }),
                    hostname: match &r.hostname {
                        Some(h) if http::uri::Authority::try_from(h.as_str()).is_err() => {
                            return Err(ctx.error(
                                &format!("{here}.requestRedirect.hostname"),
                                format!("{h:?} is not a host name"),
                            ))
                        }
                        h => h.clone(),
                    },
                    path,
                    port,
                    status,
                };
                if out.redirect.replace(redirect).is_some() {
                    return Err(twice());
                }
            }
            FilterType::UrlRewrite => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?;
                let hostname = match &r.hostname {
                    None => None,
                    Some(h) => Some(HeaderValue::from_str(h).map_err(|_| {
                        ctx.error(
                            &format!("{here}.urlRewrite.hostname"),
                            format!("{h:?} is not a valid host"),
                        )
                    })?),
                };
                let path = path_edit(
                    ctx,
                    &format!("{here}.urlRewrite.path"),
                    r.path.as_ref().map(|p| {
                        (
                            p.r#type == RewritePathType::ReplacePrefixMatch,
                            p.replace_full_path.as_ref(),
                            p.replace_prefix_match.as_ref(),
                        )
                    }),
                    matches,
                )?;
                if out.rewrite.replace(Rewrite { hostname, path }).is_some() {
                    return Err(twice());
                }
            }
            FilterType::RequestMirror => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("requestMirror"))?;
                let br = &m.backend_ref;
                let here = format!("{here}.requestMirror");
                let group = br.group.as_deref().unwrap_or("");
                let kind = br.kind.as_deref().unwrap_or("Service");
                if !(group.is_empty() || group == "core") || kind != "Service" {
                    return Err(ctx.error(
                        &format!("{here}.backendRef.kind"),
                        format!("{group}/{kind} is not supported (Service only)"),
                    ));
                }
                let field = format!("{here}.backendRef.port");
                let port = ctx.port(&field, br.port)?.ok_or_else(|| {
                    ctx.error(&field, "a port of the Service is required".to_owned())
                })?;
                let fraction = match (&m.percent, &m.fraction) {
                    (Some(p), _) if (0..=100).contains(p) => f64::from(*p) / 100.0,
                    (Some(p), _) => {
                        return Err(ctx.error(
                            &format!("{here}.percent"),
                            format!("{p} is not between 0 and 100"),
                        ))
                    }
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100);
                        if den <= 0 || fr.numerator < 0 || fr.numerator > den {
                            return Err(ctx.error(
                                &format!("{here}.fraction"),
                                format!("{}/{den} is not a fraction in 0..=1", fr.numerator),
                            ));
                        }
                        f64::from(fr.numerator) / f64::from(den)
                    }
                    (None, None) => 1.0,
                };
                let ns = br
                    .namespace
                    .clone()
                    .unwrap_or_else(|| rule.route_ns.to_owned());
                let granted = ns == rule.route_ns
                    || rule.grants.iter().any(|g| {
                        g.namespace == ns && g.allows_route_to_service(rule.route_ns, &br.name)
                    });
                if !granted {
                    let why = format!(
                        "RequestMirror to Service {ns}/{} needs a ReferenceGrant in namespace {ns}",
                        br.name
                    );
                    warnings.push(format!(
                        "{}: {here}: {why}; requests are not mirrored",
                        ctx.place()
                    ));
                    out.refused_mirrors.push(why);
                    continue;
                }
                out.mirrors.push(Mirror {
                    service: ObjKey::new(&ns, &br.name),
                    port,
                    fraction,
                });
            }
            FilterType::Cors => {
                let c = f.cors.as_ref().ok_or_else(|| missing("cors"))?;
                let lower = |v: &Option<Vec<String>>| -> Vec<String> {
                    v.iter().flatten().map(|s| s.to_ascii_lowercase()).collect()
                };
                let cors = Cors {
                    allow_origins: lower(&c.allow_origins),
                    allow_methods: c.allow_methods.clone().unwrap_or_default(),
                    allow_headers: lower(&c.allow_headers),
                    expose_headers: lower(&c.expose_headers),
                    max_age: c.max_age.and_then(|a| u32::try_from(a).ok()),
                    allow_credentials: c.allow_credentials == Some(true),
                };
                for (i, o) in cors.allow_origins.iter().enumerate() {
                    if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                        return Err(ctx.error(
                            &format!("{here}.cors.allowOrigins[{i}]"),
                            format!("{o:?} is not * or an http(s) origin"),
                        ));
                    }
                }
                if out.cors.replace(cors).is_some() {
                    return Err(twice());
                }
            }
            FilterType::ExtensionRef => {
                let name = format!("{:?}", f.r#type);
                warnings.push(format!(
                    "{}: {here}: filter {name} is not supported yet; requests matching this rule get 500",
                    ctx.place()
                ));
                unsupported.push(name);
            }
        }
    }
    if out.redirect.is_some() && out.rewrite.is_some() {
        return Err(ctx.error(
            &format!("{field}.filters"),
            "RequestRedirect and URLRewrite cannot be used on the same rule".to_owned(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_works_on_whole_segments() {
        let edit = PathEdit::Prefix("/v2".into());
        assert_eq!(edit.apply("/v1/users", Some("/v1")), "/v2/users");
        assert_eq!(edit.apply("/v1", Some("/v1")), "/v2");
        assert_eq!(edit.apply("/v1/", Some("/v1/")), "/v2/");
        let root = PathEdit::Prefix("/".into());
        assert_eq!(root.apply("/api/users", Some("/api")), "/users");
        assert_eq!(root.apply("/api", Some("/api")), "/");
        let deeper = PathEdit::Prefix("/new/".into());
        assert_eq!(deeper.apply("/anything", Some("/")), "/new/anything");
        assert_eq!(PathEdit::Full("/x".into()).apply("/a/b", None), "/x");
    }

    #[test]
    fn redirect_ports_follow_the_gateway_api() {
        let r = |scheme: Option<&'static str>, port: Option<u16>| Redirect {
            scheme,
            hostname: None,
            path: None,
            port,
            status: StatusCode::FOUND,
        };
        assert_eq!(
            r(Some("https"), None).location("http", "a.test", 8080, "/p", Some("q=1"), None),
            "https://a.test/p?q=1"
        );
        assert_eq!(
            r(None, None).location("http", "a.test", 8080, "/p", None, None),
            "http://a.test:8080/p"
        );
        assert_eq!(
            r(None, None).location("http", "a.test", 80, "/p", None, None),
            "http://a.test/p"
        );
        assert_eq!(
            r(Some("https"), Some(8443)).location("http", "a.test", 80, "/", None, None),
            "https://a.test:8443/"
        );
    }

    #[test]
    fn header_edits_set_add_remove() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let edits = HeaderEdits {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("2"),
            )],
            add: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("3"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        edits.apply(&mut h);
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["2", "3"]);
        assert!(!h.contains_key("x-gone"));
    }
}
