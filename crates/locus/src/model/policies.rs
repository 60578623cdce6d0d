//! Health and retry policies of a Service port: Istio DestinationRule `outlierDetection`,
//! Envoy Gateway BackendTrafficPolicy `healthCheck` and `retry`, and Locus's annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use locus_core::balancer::HealthOptions;
use locus_core::policy::{DistributeRule, LocalityPattern, PriorityLabel};
use locus_core::{Algorithm, BalancerConfig, HashOn, LocalityLbSetting, OutlierPolicy, Spillover};

use super::routes::parse_duration;
use super::upstream_tls::{self, TlsSources, UpstreamTls};
use super::{name_of, namespace_of, DocCtx, ObjKey};
use crate::resources::envoy_gateway::{
    ActiveHealthCheck, BackendTrafficPolicy, PassiveHealthCheck, Retry,
};
use crate::resources::istio::{
    ConnectionPool, DestinationRule, LoadBalancerSettings, OutlierDetection,
};
use crate::resources::{ConfigError, Document};
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;

pub const ANNOTATION_SPILLOVER: &str = "locus.io/spillover";
pub const ANNOTATION_OVERPROVISIONING: &str = "locus.io/overprovisioning-factor";
pub const ANNOTATION_FAIL_CLOSED: &str = "locus.io/fail-closed";
pub const ANNOTATION_ON_DEGRADED: &str = "locus.io/on-degraded";
pub const ANNOTATION_DEGRADED_THRESHOLD: &str = "locus.io/degraded-threshold";
pub const ANNOTATION_ZONE_BALANCE: &str = "locus.io/zone-balance";
pub const ANNOTATION_LOAD_SPILL: &str = "locus.io/load-spill";
pub const ANNOTATION_LOAD_SPILL_HIGH: &str = "locus.io/load-spill-high";
pub const ANNOTATION_LOAD_SPILL_LOW: &str = "locus.io/load-spill-low";
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
pub const ANNOTATION_TOPOLOGY_HINTS: &str = "service.kubernetes.io/topology-aware-hints";

/// An active HTTP health check (BackendTrafficPolicy `healthCheck.active`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActiveCheck {
    pub path: String,
    pub method: http::Method,
    pub expected_statuses: Vec<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// Retries. Requests that never reached an endpoint are always retried (up to `attempts`);
/// responses with one of `statuses` are retried when the request body can be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after the first (Envoy Gateway's `numRetries`; default 2).
    pub attempts: u32,
    pub statuses: Vec<u16>,
    pub per_try_timeout: Option<Duration>,
    /// The wait before each retry.
    pub backoff: Option<Backoff>,
    /// An HTTPRoute rule's `retry` (GEP-1731), which asks more than a Service's policy: every
    /// connection error (a reset of a request that is not idempotent too) and an attempt's own
    /// timeout (`timeouts.backendRequest`) are retried, and once every endpoint has been tried
    /// the next attempt goes back to them rather than giving up (a one-endpoint Service still
    /// gets its retries).
    pub route_rule: bool,
}

/// How long a retry waits before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// HTTPRoute `retry.backoff`: at least this long between two attempts.
    Fixed(Duration),
    /// Envoy's back-off (BackendTrafficPolicy `perRetry.backOff`): retry N waits a random time
    /// up to (2^N − 1) × `base`, never over `max`, so retries of many requests spread out
    /// instead of arriving together.
    Jittered { base: Duration, max: Duration },
}

impl Backoff {
    /// Envoy's default base interval.
    pub const ENVOY_BASE: Duration = Duration::from_millis(25);
    /// Envoy's default back-off: from [`Backoff::ENVOY_BASE`], at most ten times that.
    pub const ENVOY: Backoff = Backoff::Jittered {
        base: Backoff::ENVOY_BASE,
        max: Duration::from_millis(250),
    };

    /// The wait before retry number `retry` (from 1), `random` a uniformly random number.
    pub fn wait(self, retry: u32, random: u64) -> Duration {
        match self {
            Backoff::Fixed(d) => d,
            Backoff::Jittered { base, max } => {
                let factor = (1u64 << retry.clamp(1, 32)) - 1;
                let ceiling = base
                    .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
                    .min(max);
                let nanos = ceiling.as_nanos() as u64;
                if nanos == 0 {
                    return Duration::ZERO;
                }
                Duration::from_nanos(random % (nanos + 1))
            }
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            statuses: Vec::new(),
            per_try_timeout: None,
            backoff: None,
            route_rule: false,
        }
    }
}

/// Everything about health for one Service port.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    pub outlier: OutlierPolicy,
    /// Where the outlier policy came from, for `check` and the admin API.
    pub outlier_source: String,
    pub options: HealthOptions,
    pub active: Option<ActiveCheck>,
    pub retry: RetryPolicy,
    /// `locus.io/load-spill: "on"`: the band of the load-aware spill controller.
    pub load_spill: Option<locus_core::load::Band>,
    /// Circuit breaking and upstream connection settings.
    pub upstream: UpstreamPolicy,
}

/// Circuit breaking and upstream connections for one Service port: Istio's
/// `trafficPolicy.connectionPool`, Envoy Gateway's `circuitBreaker` and `timeout`.
///
/// Locus does not queue a request waiting for a connection (HTTP/1.1 upstreams carry one
/// request per connection, opened as needed), so connections in use are requests in flight and
/// one cap serves `maxConnections`, `http2MaxRequests` and `maxParallelRequests`. Past it the
/// Service answers 503 `overflow` at once: the whole Service is full, there is nowhere better
/// to send the request. An endpoint at its own cap (`perEndpoint.maxConnections`) is stepped
/// over instead: the request goes to the next endpoint, spilling to the next zone when every
/// local one is full, which is what keeps one zone from drowning.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpstreamPolicy {
    /// Requests in flight to the Service, over every endpoint.
    pub max_requests: Option<u32>,
    /// Requests in flight to one endpoint.
    pub max_per_endpoint: Option<u32>,
    /// Retries in flight to the Service; past it a failed request is not retried.
    pub max_retries: Option<u32>,
    /// An upstream connection is closed after this many requests.
    pub max_requests_per_connection: Option<u32>,
    pub connect_timeout: Option<Duration>,
    /// Idle upstream connections older than this are not reused.
    pub idle_timeout: Option<Duration>,
    /// The Service's default request timeout (routes' `timeouts` win).
    pub request_timeout: Option<Duration>,
    /// Where the settings came from, for `locus check`.
    pub source: Option<String>,
    /// TLS to the endpoints (BackendTLSPolicy, DestinationRule `tls`).
    pub tls: Option<super::upstream_tls::UpstreamTls>,
}

impl UpstreamPolicy {
    fn cap_requests(&mut self, v: u32) {
        lower(&mut self.max_requests, v);
    }

    /// One line for `locus check`, `None` when nothing is set.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        let mut num = |name: &str, v: Option<u32>| {
            if let Some(v) = v {
                parts.push(format!("{name} {v}"));
            }
        };
        num("max requests", self.max_requests);
        num("max per endpoint", self.max_per_endpoint);
        num("max retries", self.max_retries);
        num(
            "max requests per connection",
            self.max_requests_per_connection,
        );
        for (name, v) in [
            ("connect timeout", self.connect_timeout),
            ("idle timeout", self.idle_timeout),
            ("request timeout", self.request_timeout),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name} {v:?}"));
            }
        }
        if let Some(tls) = &self.tls {
            // TLS names its own source.
            return Some(if parts.is_empty() {
                tls.describe()
            } else {
                format!(
                    "{} (from {}); {}",
                    parts.join(", "),
                    self.source.as_deref().unwrap_or("?"),
                    tls.describe()
                )
            });
        }
        (!parts.is_empty()).then(|| {
            format!(
                "{} (from {})",
                parts.join(", "),
                self.source.as_deref().unwrap_or("?")
            )
        })
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            outlier: OutlierPolicy::default(),
            outlier_source:
                "Locus defaults (no outlierDetection or passive health check configured)".into(),
            options: HealthOptions::default(),
            active: None,
            retry: RetryPolicy::default(),
            load_spill: None,
            upstream: UpstreamPolicy::default(),
        }
    }
}

/// DestinationRules and BackendTrafficPolicies, indexed by the Service they target.
#[derive(Default)]
pub(super) struct Policies<'a> {
    rules: BTreeMap<ObjKey, (&'a Document, &'a DestinationRule)>,
    traffic: BTreeMap<ObjKey, (&'a Document, &'a BackendTrafficPolicy)>,
    /// BackendTLSPolicies, oldest first (the oldest wins a conflict, as the Gateway API says).
    backend_tls: Vec<(&'a Document, &'a BackendTlsPolicy)>,
    tls_sources: TlsSources,
}

/// The Service a DestinationRule `host` names: `name`, `name.ns`, `name.ns.svc` or
/// `name.ns.svc.<cluster domain>`.
fn host_to_service(host: &str, rule_namespace: &str) -> Option<ObjKey> {
    if host.contains('*') {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name] => Some(ObjKey::new(rule_namespace, name)),
        [name, ns] => Some(ObjKey::new(ns, name)),
        [name, ns, "svc", ..] => Some(ObjKey::new(ns, name)),
        _ => None,
    }
}

fn warn_extra(
    ctx: &DocCtx<'_>,
    field: &str,
    extra: &BTreeMap<String, serde_json::Value>,
    warnings: &mut Vec<String>,
) {
    for key in extra.keys() {
        warnings.push(format!(
            "{}: {field}{key} is not supported by Locus; ignored",
            ctx.place()
        ));
    }
}

impl<'a> Policies<'a> {
    pub(super) fn build(
        rules: &[(&'a Document, &'a DestinationRule)],
        traffic: &[(&'a Document, &'a BackendTrafficPolicy)],
        backend_tls: &[(&'a Document, &'a BackendTlsPolicy)],
        tls_sources: TlsSources,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        let mut out = Policies {
            tls_sources,
            ..Policies::default()
        };
        out.backend_tls = backend_tls.to_vec();
        out.backend_tls.sort_by_key(|(_, p)| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                namespace_of(&p.metadata),
                p.metadata.name.clone(),
            )
        });
        for (doc, p) in &out.backend_tls {
            let ctx = DocCtx { doc };
            for r in &p.spec.target_refs {
                if !((r.group.is_empty() || r.group == "core") && r.kind == "Service") {
                    warnings.push(format!(
                        "{}: targetRef {}/{} {} is not supported (Locus applies BackendTLSPolicy to Services); ignored",
                        ctx.place(),
                        r.group,
                        r.kind,
                        r.name
                    ));
                }
            }
        }
        for &(doc, dr) in rules {
            let ctx = DocCtx { doc };
            let ns = namespace_of(&dr.metadata);
            name_of(&ctx, &dr.metadata)?;
            let Some(target) = host_to_service(&dr.spec.host, &ns) else {
                warnings.push(format!(
                    "{}: spec.host {:?} is not a Kubernetes Service name (wildcards and external hosts are not supported); ignored",
                    ctx.place(),
                    dr.spec.host
                ));
                continue;
            };
            if !dr.spec.subsets.is_empty() {
                warnings.push(format!(
                    "{}: spec.subsets are not supported by Locus yet; ignored",
                    ctx.place()
                ));
            }
            if dr.spec.workload_selector.is_some() {
                warnings.push(format!(
                    "{}: spec.workloadSelector does not apply to a gateway; ignored",
                    ctx.place()
                ));
            }
            warn_extra(&ctx, "spec.", &dr.spec.extra, warnings);
            if let Some(tp) = &dr.spec.traffic_policy {
                warn_extra(&ctx, "spec.trafficPolicy.", &tp.extra, warnings);
            }
            if let Some((first, _)) = out.rules.insert(target.clone(), (doc, dr)) {
                warnings.push(format!(
                    "{}: another DestinationRule ({}) targets Service {target}; this one wins",
                    ctx.place(),
                    first.doc.name_or_index()
                ));
            }
        }
        for &(doc, btp) in traffic {
            let ctx = DocCtx { doc };
            let ns = namespace_of(&btp.metadata);
            name_of(&ctx, &btp.metadata)?;
            warn_extra(&ctx, "spec.", &btp.spec.extra, warnings);
            let refs = btp
                .spec
                .target_refs
                .iter()
                .chain(btp.spec.target_ref.as_ref());
            for r in refs {
                if (r.group.is_empty() || r.group == "core")
                    && (r.kind == "Service" || r.kind.is_empty())
                {
                    out.traffic.insert(ObjKey::new(&ns, &r.name), (doc, btp));
                } else {
                    warnings.push(format!(
                        "{}: targetRef {}/{} {} is not supported (Locus applies BackendTrafficPolicy to Services); ignored",
                        ctx.place(),
                        r.group,
                        r.kind,
                        r.name
                    ));
                }
            }
        }
        Ok(out)
    }

    /// BackendTLSPolicy targetRefs whose `sectionName` is no port of the Service: the policy
    /// does not attach there, and says so (as the Gateway API asks).
    pub(super) fn warn_unmatched_tls_sections(
        &self,
        services: &BTreeMap<ObjKey, super::ServiceModel>,
        warnings: &mut Vec<String>,
    ) {
        for (doc, p) in &self.backend_tls {
            let ns = namespace_of(&p.metadata);
            for r in &p.spec.target_refs {
                let Some(section) = &r.section_name else {
                    continue;
                };
                let found = services
                    .get(&ObjKey::new(&ns, &r.name))
                    .is_some_and(|s| s.ports.iter().any(|port| port.name == *section));
                if !found {
                    warnings.push(format!(
                        "{}: targetRef Service {ns}/{} sectionName {section:?}: no such port name; the policy does not apply there",
                        DocCtx { doc }.place(),
                        r.name
                    ));
                }
            }
        }
    }

    /// TLS to the endpoints of one Service port: the BackendTLSPolicy naming the port (or the
    /// whole Service) that is oldest, else the DestinationRule's `tls` (port-level first).
    pub(super) fn tls_for_port(
        &self,
        service: &ObjKey,
        port: u16,
        port_name: &str,
        warnings: &mut Vec<String>,
    ) -> Option<UpstreamTls> {
        let targets = |p: &BackendTlsPolicy, section: bool| {
            namespace_of(&p.metadata) == service.namespace
                && p.spec.target_refs.iter().any(|r| {
                    (r.group.is_empty() || r.group == "core")
                        && r.kind == "Service"
                        && r.name == service.name
                        && match (&r.section_name, section) {
                            (Some(s), true) => s == port_name,
                            (None, false) => true,
                            _ => false,
                        }
                })
        };
        // A policy naming the port is more specific than one for the whole Service.
        let mut chosen = self
            .backend_tls
            .iter()
            .filter(|(_, p)| targets(p, true))
            .chain(self.backend_tls.iter().filter(|(_, p)| targets(p, false)));
        let from_policy = chosen.next().map(|&(doc, p)| {
            let ctx = DocCtx { doc };
            for &(other, _) in chosen {
                warnings.push(format!(
                    "{}: BackendTLSPolicy {} also targets Service {service} port {port}; the older policy ({}) wins (Conflicted)",
                    DocCtx { doc: other }.place(),
                    other.doc.name_or_index(),
                    doc.doc.name_or_index(),
                ));
            }
            upstream_tls::from_backend_tls_policy(
                p,
                p.metadata.name.as_deref().unwrap_or_default(),
                &self.tls_sources,
                &ctx.place(),
                warnings,
            )
        });
        let Some(&(doc, dr)) = self.rules.get(service) else {
            return from_policy;
        };
        let Some(tp) = dr.spec.traffic_policy.as_ref() else {
            return from_policy;
        };
        let (field, tls) = tp
            .port_level_settings
            .iter()
            .enumerate()
            .find(|(_, p)| {
                p.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)) && p.tls.is_some()
            })
            .map(|(i, p)| {
                (
                    format!("spec.trafficPolicy.portLevelSettings[{i}].tls"),
                    p.tls.as_ref(),
                )
            })
            .unwrap_or(("spec.trafficPolicy.tls".to_owned(), tp.tls.as_ref()));
        let Some(tls) = tls else {
            return from_policy;
        };
        let ctx = DocCtx { doc };
        if let Some(p) = from_policy {
            warnings.push(format!(
                "{}: {field} is overridden for Service {service} port {port} by {}",
                ctx.place(),
                p.source
            ));
            return Some(p);
        }
        upstream_tls::from_istio(tls, &field, dr, &self.tls_sources, &ctx.place(), warnings)
    }

    /// Locality and balancing settings of one Service port: the DestinationRule's
    /// `loadBalancer` (port-level first) and the topology-mode annotation.
    pub(super) fn balancer_for_port(
        &self,
        service: &ObjKey,
        port: u16,
        annotations: &BTreeMap<String, String>,
        svc_ctx: &DocCtx<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<BalancerConfig, ConfigError> {
        let mut cfg = BalancerConfig::default();
        match annotations.get(ANNOTATION_ZONE_BALANCE).map(String::as_str) {
            None | Some("none") => {}
            // The fleet comes from the Gateway serving the Service; the route table fills it.
            Some("capacity") => cfg.fleet = Some(BTreeMap::new()),
            Some(other) => {
                return Err(svc_ctx.error(
                    &format!("metadata.annotations.{ANNOTATION_ZONE_BALANCE}"),
                    format!("{other:?} is not one of capacity, none"),
                ))
            }
        }
        let mode = annotations
            .get(ANNOTATION_TOPOLOGY_MODE)
            .or_else(|| annotations.get(ANNOTATION_TOPOLOGY_HINTS));
        match mode.map(|m| m.to_ascii_lowercase()) {
            None => {}
            Some(m) if m == "auto" => cfg.topology_hints = true,
            Some(m) if m == "disabled" || m.is_empty() => {}
            Some(m) => warnings.push(format!(
                "{}: {ANNOTATION_TOPOLOGY_MODE} {m:?} is not supported (Auto or Disabled); ignored",
                svc_ctx.place()
            )),
        }
        let Some(&(doc, dr)) = self.rules.get(service) else {
            return Ok(cfg);
        };
        let ctx = DocCtx { doc };
        let tp = dr.spec.traffic_policy.as_ref();
        let port_level = tp.and_then(|tp| {
            tp.port_level_settings.iter().enumerate().find(|(_, p)| {
                p.port.as_ref().and_then(|p| p.number) == Some(u32::from(port))
                    && p.load_balancer.is_some()
            })
        });
        let (field, lb) = match port_level {
            Some((i, p)) => (
                format!("spec.trafficPolicy.portLevelSettings[{i}].loadBalancer"),
                p.load_balancer.as_ref(),
            ),
            None => (
                "spec.trafficPolicy.loadBalancer".to_owned(),
                tp.and_then(|t| t.load_balancer.as_ref()),
            ),
        };
        if let Some(lb) = lb {
            load_balancer(&ctx, &field, lb, &mut cfg, warnings)?;
        }
        Ok(cfg)
    }

    /// The health configuration of one Service port.
    pub(super) fn for_port(
        &self,
        service: &ObjKey,
        port: u16,
        annotations: &BTreeMap<String, String>,
        svc_ctx: &DocCtx<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<HealthConfig, ConfigError> {
        let mut cfg = HealthConfig::default();
        if let Some(&(doc, dr)) = self.rules.get(service) {
            let ctx = DocCtx { doc };
            let tp = dr.spec.traffic_policy.as_ref();
            let port_level = tp.and_then(|tp| {
                tp.port_level_settings
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)))
            });
            let (field, od) =
                match port_level.and_then(|(i, p)| p.outlier_detection.as_ref().map(|o| (i, o))) {
                    Some((i, od)) => (
                        format!("spec.trafficPolicy.portLevelSettings[{i}].outlierDetection"),
                        Some(od),
                    ),
                    None => (
                        "spec.trafficPolicy.outlierDetection".to_owned(),
                        tp.and_then(|t| t.outlier_detection.as_ref()),
                    ),
                };
            if let Some(od) = od {
                cfg.outlier = outlier_from_istio(&ctx, &field, od, warnings)?;
                cfg.outlier_source =
                    format!("DestinationRule {} ({field})", doc.doc.name_or_index());
            }
            let pool =
                match port_level.and_then(|(i, p)| p.connection_pool.as_ref().map(|c| (i, c))) {
                    Some((i, c)) => Some((
                        format!("spec.trafficPolicy.portLevelSettings[{i}].connectionPool"),
                        c,
                    )),
                    None => tp
                        .and_then(|t| t.connection_pool.as_ref())
                        .map(|c| ("spec.trafficPolicy.connectionPool".to_owned(), c)),
                };
            if let Some((field, pool)) = pool {
                upstream_from_istio(&ctx, &field, pool, &mut cfg.upstream, warnings)?;
                cfg.upstream.source = Some(format!(
                    "DestinationRule {} ({field})",
                    doc.doc.name_or_index()
                ));
            }
        }
        if let Some(&(doc, btp)) = self.traffic.get(service) {
            let ctx = DocCtx { doc };
            if let Some(hc) = &btp.spec.health_check {
                warn_extra(&ctx, "spec.healthCheck.", &hc.extra, warnings);
                if let Some(p) = &hc.passive {
                    if cfg.outlier_source.starts_with("DestinationRule") {
                        warnings.push(format!(
                            "{}: both a DestinationRule and this BackendTrafficPolicy set passive health for Service {service}; the BackendTrafficPolicy wins",
                            ctx.place()
                        ));
                    }
                    cfg.outlier = outlier_from_envoy_gateway(&ctx, p, warnings)?;
                    cfg.outlier_source = format!(
                        "BackendTrafficPolicy {} (spec.healthCheck.passive)",
                        doc.doc.name_or_index()
                    );
                }
                if let Some(a) = &hc.active {
                    cfg.active = Some(active_from_envoy_gateway(&ctx, a, warnings)?);
                }
            }
            if let Some(r) = &btp.spec.retry {
                cfg.retry = retry_from_envoy_gateway(&ctx, r, warnings)?;
            }
            if btp.spec.circuit_breaker.is_some() || btp.spec.timeout.is_some() {
                if cfg.upstream.source.is_some() {
                    warnings.push(format!(
                        "{}: both a DestinationRule connectionPool and this BackendTrafficPolicy limit Service {service}; the lower of each limit applies",
                        ctx.place()
                    ));
                }
                upstream_from_envoy_gateway(&ctx, &btp.spec, &mut cfg.upstream, warnings)?;
                let from = format!("BackendTrafficPolicy {}", doc.doc.name_or_index());
                cfg.upstream.source = Some(match cfg.upstream.source.take() {
                    Some(dr) => format!("{dr}, {from}"),
                    None => from,
                });
            }
        }
        apply_annotations(&mut cfg, annotations, svc_ctx, warnings)?;
        Ok(cfg)
    }
}

fn load_balancer(
    ctx: &DocCtx<'_>,
    field: &str,
    lb: &LoadBalancerSettings,
    cfg: &mut BalancerConfig,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    warn_extra(ctx, &format!("{field}."), &lb.extra, warnings);
    if let Some(simple) = &lb.simple {
        cfg.algorithm = match simple.as_str() {
            "ROUND_ROBIN" | "UNSPECIFIED" => Algorithm::RoundRobin,
            "LEAST_REQUEST" | "LEAST_CONN" => Algorithm::LeastRequest,
            "RANDOM" => Algorithm::Random,
            "PASSTHROUGH" => {
                return Err(ctx.error(
                    &format!("{field}.simple"),
                    "PASSTHROUGH is not supported by a gateway",
                ))
            }
            other => {
                return Err(ctx.error(
                    &format!("{field}.simple"),
                    format!("{other:?} is not one of ROUND_ROBIN, LEAST_REQUEST, RANDOM"),
                ))
            }
        };
    }
    if let Some(h) = &lb.consistent_hash {
        if lb.simple.is_some() {
            return Err(ctx.error(
                &format!("{field}.consistentHash"),
                "cannot be set together with simple",
            ));
        }
        warn_extra(ctx, &format!("{field}.consistentHash."), &h.extra, warnings);
        let mut on = Vec::new();
        if let Some(name) = &h.http_header_name {
            on.push(HashOn::Header(name.to_ascii_lowercase()));
        }
        if let Some(c) = &h.http_cookie {
            let ttl_secs = match &c.ttl {
                None => None,
                Some(t) => Some(
                    duration(
                        ctx,
                        &format!("{field}.consistentHash.httpCookie.ttl"),
                        Some(t),
                        Duration::ZERO,
                    )?
                    .as_secs(),
                ),
            };
            on.push(HashOn::Cookie {
                name: c.name.clone(),
                ttl_secs: ttl_secs.filter(|t| *t > 0),
            });
        }
        if h.use_source_ip == Some(true) {
            on.push(HashOn::SourceIp);
        }
        if let Some(q) = &h.http_query_parameter_name {
            on.push(HashOn::QueryParameter(q.clone()));
        }
        if on.len() != 1 {
            return Err(ctx.error(
                &format!("{field}.consistentHash"),
                "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName must be set",
            ));
        }
        if h.maglev.is_some() {
            warnings.push(format!(
                "{}: {field}.consistentHash.maglev: Locus uses a ring hash (same minimal remapping); maglev settings ignored",
                ctx.place()
            ));
        }
        cfg.algorithm = Algorithm::ConsistentHash(on.remove(0));
    }
    if let Some(l) = &lb.locality_lb_setting {
        let f = format!("{field}.localityLbSetting");
        if !l.distribute.is_empty() && !l.failover.is_empty() {
            return Err(ctx.error(
                &f,
                "distribute and failover cannot both be set (Istio rejects it too)",
            ));
        }
        let mut distribute = Vec::new();
        for (i, d) in l.distribute.iter().enumerate() {
            let df = format!("{f}.distribute[{i}]");
            let from =
                LocalityPattern::parse(&d.from).map_err(|e| ctx.error(&format!("{df}.from"), e))?;
            let mut to = Vec::new();
            for (pattern, weight) in &d.to {
                to.push((
                    LocalityPattern::parse(pattern)
                        .map_err(|e| ctx.error(&format!("{df}.to"), e))?,
                    *weight,
                ));
            }
            let sum: u32 = to.iter().map(|(_, w)| *w).sum();
            if sum != 100 {
                return Err(ctx.error(
                    &format!("{df}.to"),
                    format!("weights add up to {sum}, not 100"),
                ));
            }
            distribute.push(DistributeRule { from, to });
        }
        let mut failover = Vec::new();
        for (i, fo) in l.failover.iter().enumerate() {
            if fo.from.is_empty() || fo.to.is_empty() || fo.from == fo.to {
                return Err(ctx.error(
                    &format!("{f}.failover[{i}]"),
                    "from and to must be two different regions",
                ));
            }
            failover.push((fo.from.clone(), fo.to.clone()));
        }
        cfg.locality = Some(LocalityLbSetting {
            enabled: l.enabled.unwrap_or(true),
            distribute,
            failover,
            failover_priority: l
                .failover_priority
                .iter()
                .map(|p| PriorityLabel::parse(p))
                .collect(),
        });
    }
    Ok(())
}

fn duration(
    ctx: &DocCtx<'_>,
    field: &str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) => parse_duration(s).ok_or_else(|| {
            ctx.error(
                field,
                format!("{s:?} is not a duration (e.g. 10s, 500ms, 1m)"),
            )
        }),
    }
}

fn percent(
    ctx: &DocCtx<'_>,
    field: &str,
    value: Option<u32>,
    default: u32,
) -> Result<u32, ConfigError> {
    match value {
        Some(v) if v > 100 => Err(ctx.error(field, format!("{v} is not a percentage (0-100)"))),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

pub(super) fn outlier_from_istio(
    ctx: &DocCtx<'_>,
    field: &str,
    od: &OutlierDetection,
    warnings: &mut Vec<String>,
) -> Result<OutlierPolicy, ConfigError> {
    warn_extra(ctx, &format!("{field}."), &od.extra, warnings);
    let d = OutlierPolicy::envoy_defaults();
    Ok(OutlierPolicy {
        consecutive_5xx: od
            .consecutive_5xx_errors
            .or(od.consecutive_errors)
            .unwrap_or(d.consecutive_5xx),
        consecutive_gateway: od
            .consecutive_gateway_errors
            .unwrap_or(d.consecutive_gateway),
        consecutive_local_origin: od
            .consecutive_local_origin_failures
            .unwrap_or(d.consecutive_local_origin),
        split_local_origin: od.split_external_local_origin_errors.unwrap_or(false),
        interval: duration(
            ctx,
            &format!("{field}.interval"),
            od.interval.as_ref(),
            d.interval,
        )?,
        base_ejection: duration(
            ctx,
            &format!("{field}.baseEjectionTime"),
            od.base_ejection_time.as_ref(),
            d.base_ejection,
        )?,
        max_ejection: d.max_ejection,
        max_ejection_percent: percent(
            ctx,
            &format!("{field}.maxEjectionPercent"),
            od.max_ejection_percent,
            d.max_ejection_percent,
        )?,
        min_health_percent: percent(
            ctx,
            &format!("{field}.minHealthPercent"),
            od.min_health_percent,
            0,
        )?,
    })
}

fn outlier_from_envoy_gateway(
    ctx: &DocCtx<'_>,
    p: &PassiveHealthCheck,
    warnings: &mut Vec<String>,
) -> Result<OutlierPolicy, ConfigError> {
    let field = "spec.healthCheck.passive";
    warn_extra(ctx, &format!("{field}."), &p.extra, warnings);
    // Envoy Gateway's documented defaults.
    Ok(OutlierPolicy {
        consecutive_5xx: p.consecutive_5xx_errors.unwrap_or(5),
        consecutive_gateway: p.consecutive_gateway_errors.unwrap_or(0),
        consecutive_local_origin: p.consecutive_local_origin_failures.unwrap_or(5),
        split_local_origin: p.split_external_local_origin_errors.unwrap_or(false),
        interval: duration(
            ctx,
            &format!("{field}.interval"),
            p.interval.as_ref(),
            Duration::from_secs(3),
        )?,
        base_ejection: duration(
            ctx,
            &format!("{field}.baseEjectionTime"),
            p.base_ejection_time.as_ref(),
            Duration::from_secs(30),
        )?,
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: percent(
            ctx,
            &format!("{field}.maxEjectionPercent"),
            p.max_ejection_percent,
            10,
        )?,
        min_health_percent: 0,
    })
}

fn active_from_envoy_gateway(
    ctx: &DocCtx<'_>,
    a: &ActiveHealthCheck,
    warnings: &mut Vec<String>,
) -> Result<ActiveCheck, ConfigError> {
    let field = "spec.healthCheck.active";
    warn_extra(ctx, &format!("{field}."), &a.extra, warnings);
    match a.type_.as_deref() {
        None | Some("HTTP") => {}
        Some(other) => {
            return Err(ctx.error(
                &format!("{field}.type"),
                format!("{other:?} is not supported (HTTP only)"),
            ))
        }
    }
    let http = a.http.clone().unwrap_or_default();
    warn_extra(ctx, &format!("{field}.http."), &http.extra, warnings);
    let path = http.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        return Err(ctx.error(
            &format!("{field}.http.path"),
            format!("{path:?} must start with '/'"),
        ));
    }
    let method = http::Method::from_bytes(http.method.as_deref().unwrap_or("GET").as_bytes())
        .map_err(|_| ctx.error(&format!("{field}.http.method"), "not an HTTP method"))?;
    let positive = |f: &str, v: Option<u32>, d: u32| -> Result<u32, ConfigError> {
        match v {
            Some(0) => Err(ctx.error(&format!("{field}.{f}"), "must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(d),
        }
    };
    Ok(ActiveCheck {
        path,
        method,
        expected_statuses: if http.expected_statuses.is_empty() {
            vec![200]
        } else {
            http.expected_statuses
        },
        interval: duration(
            ctx,
            &format!("{field}.interval"),
            a.interval.as_ref(),
            Duration::from_secs(3),
        )?,
        timeout: duration(
            ctx,
            &format!("{field}.timeout"),
            a.timeout.as_ref(),
            Duration::from_secs(1),
        )?,
        healthy_threshold: positive("healthyThreshold", a.healthy_threshold, 1)?,
        unhealthy_threshold: positive("unhealthyThreshold", a.unhealthy_threshold, 3)?,
    })
}

fn retry_from_envoy_gateway(
    ctx: &DocCtx<'_>,
    r: &Retry,
    warnings: &mut Vec<String>,
) -> Result<RetryPolicy, ConfigError> {
    warn_extra(ctx, "spec.retry.", &r.extra, warnings);
    let mut statuses = Vec::new();
    if let Some(on) = &r.retry_on {
        for t in &on.triggers {
            match t.as_str() {
                "5xx" => statuses.extend(500..=599),
                "gateway-error" => statuses.extend(502..=504),
                "retriable-status-codes" => statuses.extend(on.http_status_codes.iter().copied()),
                // Always retried by Locus: the request never reached the endpoint.
                "connect-failure" | "refused-stream" | "reset" => {}
                other => warnings.push(format!(
                    "{}: spec.retry.retryOn.triggers: {other:?} is not supported; ignored",
                    ctx.place()
                )),
            }
        }
        if !on.triggers.iter().any(|t| t == "retriable-status-codes")
            && !on.http_status_codes.is_empty()
        {
            statuses.extend(on.http_status_codes.iter().copied());
        }
    }
    statuses.sort_unstable();
    statuses.dedup();
    let per_try_timeout = match r.per_retry.as_ref().and_then(|p| p.timeout.as_ref()) {
        None => None,
        Some(s) => Some(duration(
            ctx,
            "spec.retry.perRetry.timeout",
            Some(s),
            Duration::ZERO,
        )?),
    };
    let backoff = match r.per_retry.as_ref().and_then(|p| p.back_off.as_ref()) {
        None => None,
        Some(b) => {
            warn_extra(ctx, "spec.retry.perRetry.backOff.", &b.extra, warnings);
            // Envoy's defaults: 25 ms, and ten times the base.
            let base = duration(
                ctx,
                "spec.retry.perRetry.backOff.baseInterval",
                b.base_interval.as_ref(),
                Backoff::ENVOY_BASE,
            )?;
            let max = duration(
                ctx,
                "spec.retry.perRetry.backOff.maxInterval",
                b.max_interval.as_ref(),
                base.saturating_mul(10),
            )?;
            if max < base {
                return Err(ctx.error(
                    "spec.retry.perRetry.backOff.maxInterval",
                    format!("{max:?} is shorter than baseInterval ({base:?})"),
                ));
            }
            Some(Backoff::Jittered { base, max })
        }
    };
    Ok(RetryPolicy {
        attempts: r.num_retries.unwrap_or(2),
        statuses,
        per_try_timeout,
        backoff,
        ..RetryPolicy::default()
    })
}

/// Sets `slot` to `v` unless it holds a lower limit already (two policies: the stricter wins).
fn lower(slot: &mut Option<u32>, v: u32) {
    *slot = Some(slot.map_or(v, |m| m.min(v)));
}

/// An optional duration field; zero means none, as in Istio and Envoy Gateway.
fn optional_duration(
    ctx: &DocCtx<'_>,
    field: &str,
    value: &Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    Ok(value
        .as_ref()
        .map(|s| duration(ctx, field, Some(s), Duration::ZERO))
        .transpose()?
        .filter(|d| !d.is_zero()))
}

const NO_QUEUE: &str = "Locus does not queue requests waiting for a connection: past the request cap they get 503 overflow at once";

fn upstream_from_istio(
    ctx: &DocCtx<'_>,
    field: &str,
    pool: &ConnectionPool,
    up: &mut UpstreamPolicy,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    warn_extra(ctx, &format!("{field}."), &pool.extra, warnings);
    if let Some(tcp) = &pool.tcp {
        warn_extra(ctx, &format!("{field}.tcp."), &tcp.extra, warnings);
        if let Some(v) = tcp.max_connections {
            up.cap_requests(v);
        }
        up.connect_timeout = optional_duration(
            ctx,
            &format!("{field}.tcp.connectTimeout"),
            &tcp.connect_timeout,
        )?
        .or(up.connect_timeout);
    }
    if let Some(http) = &pool.http {
        warn_extra(ctx, &format!("{field}.http."), &http.extra, warnings);
        if let Some(v) = http.http2_max_requests {
            up.cap_requests(v);
        }
        if http.http1_max_pending_requests.is_some() {
            warnings.push(format!(
                "{}: {field}.http.http1MaxPendingRequests: {NO_QUEUE}",
                ctx.place()
            ));
        }
        if let Some(v) = http.max_retries {
            lower(&mut up.max_retries, v);
        }
        // 0 means no limit in Istio.
        up.max_requests_per_connection = http
            .max_requests_per_connection
            .filter(|v| *v > 0)
            .or(up.max_requests_per_connection);
        up.idle_timeout = optional_duration(
            ctx,
            &format!("{field}.http.idleTimeout"),
            &http.idle_timeout,
        )?
        .or(up.idle_timeout);
    }
    Ok(())
}

fn upstream_from_envoy_gateway(
    ctx: &DocCtx<'_>,
    spec: &crate::resources::envoy_gateway::BackendTrafficPolicySpec,
    up: &mut UpstreamPolicy,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    if let Some(cb) = &spec.circuit_breaker {
        warn_extra(ctx, "spec.circuitBreaker.", &cb.extra, warnings);
        for v in [cb.max_connections, cb.max_parallel_requests]
            .into_iter()
            .flatten()
        {
            up.cap_requests(v);
        }
        if cb.max_pending_requests.is_some() {
            warnings.push(format!(
                "{}: spec.circuitBreaker.maxPendingRequests: {NO_QUEUE}",
                ctx.place()
            ));
        }
        if let Some(v) = cb.max_parallel_retries {
            lower(&mut up.max_retries, v);
        }
        if let Some(v) = cb.max_requests_per_connection.filter(|v| *v > 0) {
            up.max_requests_per_connection = Some(v);
        }
        if let Some(pe) = &cb.per_endpoint {
            warn_extra(ctx, "spec.circuitBreaker.perEndpoint.", &pe.extra, warnings);
            up.max_per_endpoint = pe.max_connections.or(up.max_per_endpoint);
        }
    }
    if let Some(t) = &spec.timeout {
        warn_extra(ctx, "spec.timeout.", &t.extra, warnings);
        let dur = |field: &str, v: &Option<String>| optional_duration(ctx, field, v);
        if let Some(tcp) = &t.tcp {
            warn_extra(ctx, "spec.timeout.tcp.", &tcp.extra, warnings);
            up.connect_timeout = dur("spec.timeout.tcp.connectTimeout", &tcp.connect_timeout)?
                .or(up.connect_timeout);
        }
        if let Some(http) = &t.http {
            warn_extra(ctx, "spec.timeout.http.", &http.extra, warnings);
            up.request_timeout = dur("spec.timeout.http.requestTimeout", &http.request_timeout)?;
            up.idle_timeout = dur(
                "spec.timeout.http.connectionIdleTimeout",
                &http.connection_idle_timeout,
            )?
            .or(up.idle_timeout);
        }
    }
    Ok(())
}

fn apply_annotations(
    cfg: &mut HealthConfig,
    annotations: &BTreeMap<String, String>,
    ctx: &DocCtx<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let field = |k: &str| format!("metadata.annotations.{k}");
    if let Some(v) = annotations.get(ANNOTATION_SPILLOVER) {
        cfg.options.spillover = match v.as_str() {
            "proportional" => Spillover::Proportional,
            "all-or-nothing" => Spillover::AllOrNothing,
            _ => {
                return Err(ctx.error(
                    &field(ANNOTATION_SPILLOVER),
                    format!("{v:?} is not one of proportional, all-or-nothing"),
                ))
            }
        };
    }
    if let Some(v) = annotations.get(ANNOTATION_OVERPROVISIONING) {
        cfg.options.overprovisioning = v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 1.0)
            .ok_or_else(|| {
                ctx.error(
                    &field(ANNOTATION_OVERPROVISIONING),
                    format!("{v:?} is not a number ≥ 1 (e.g. 1.4)"),
                )
            })?;
    }
    if let Some(v) = annotations.get(ANNOTATION_FAIL_CLOSED) {
        cfg.options.fail_closed = match v.as_str() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(ctx.error(
                    &field(ANNOTATION_FAIL_CLOSED),
                    format!("{v:?} is not true or false"),
                ))
            }
        };
    }
    let threshold = match annotations.get(ANNOTATION_DEGRADED_THRESHOLD) {
        None => 0.25,
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|t| (0.0..1.0).contains(t))
            .ok_or_else(|| {
                ctx.error(
                    &field(ANNOTATION_DEGRADED_THRESHOLD),
                    format!("{v:?} is not a share of capacity lost, between 0 and 1 (e.g. 0.25)"),
                )
            })?,
    };
    cfg.options.degraded_spread = match annotations.get(ANNOTATION_ON_DEGRADED).map(String::as_str)
    {
        None | Some("keep-local") => None,
        Some("spread") => Some(threshold),
        Some(v) => {
            return Err(ctx.error(
                &field(ANNOTATION_ON_DEGRADED),
                format!("{v:?} is not one of spread, keep-local"),
            ))
        }
    };
    cfg.load_spill = match annotations.get(ANNOTATION_LOAD_SPILL).map(String::as_str) {
        None | Some("off" | "false") => None,
        Some("on" | "true") => {
            let mut band = locus_core::load::Band::default();
            let factor = |key: &str, default: f64| -> Result<f64, ConfigError> {
                match annotations.get(key) {
                    None => Ok(default),
                    Some(v) => v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .ok_or_else(|| {
                            ctx.error(
                                &field(key),
                                format!("{v:?} is not a positive factor (e.g. 1.25)"),
                            )
                        }),
                }
            };
            band.high = factor(ANNOTATION_LOAD_SPILL_HIGH, band.high)?;
            band.low = factor(ANNOTATION_LOAD_SPILL_LOW, band.low)?;
            if band.high < 1.0 {
                return Err(ctx.error(
                    &field(ANNOTATION_LOAD_SPILL_HIGH),
                    format!(
                        "{} is below 1: traffic would spill into a busier bucket",
                        band.high
                    ),
                ));
            }
            if band.low >= band.high {
                return Err(ctx.error(
                    &field(ANNOTATION_LOAD_SPILL_LOW),
                    format!(
                        "{} is above {ANNOTATION_LOAD_SPILL_HIGH} ({}): the band would have no hysteresis",
                        band.low, band.high
                    ),
                ));
            }
            Some(band)
        }
        Some(v) => {
            return Err(ctx.error(
                &field(ANNOTATION_LOAD_SPILL),
                format!("{v:?} is not on or off"),
            ))
        }
    };
    for key in [ANNOTATION_LOAD_SPILL_HIGH, ANNOTATION_LOAD_SPILL_LOW] {
        if cfg.load_spill.is_none() && annotations.contains_key(key) {
            warnings.push(format!(
                "{}: {} has no effect without {ANNOTATION_LOAD_SPILL}: \"on\"; ignored",
                ctx.place(),
                field(key)
            ));
        }
    }
    cfg.options.min_health_percent = cfg.outlier.min_health_percent;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_rule_hosts() {
        assert_eq!(
            host_to_service("reviews", "ns"),
            Some(ObjKey::new("ns", "reviews"))
        );
        assert_eq!(
            host_to_service("reviews.shop", "ns"),
            Some(ObjKey::new("shop", "reviews"))
        );
        assert_eq!(
            host_to_service("reviews.shop.svc.cluster.local", "ns"),
            Some(ObjKey::new("shop", "reviews"))
        );
        assert_eq!(host_to_service("*.shop.svc.cluster.local", "ns"), None);
        assert_eq!(host_to_service("api.example.com", "ns"), None);
    }

    /// Envoy's back-off: retry N waits up to (2^N − 1) × base, capped, spread over that range.
    #[test]
    fn jittered_backoff_grows_to_its_cap_and_spreads() {
        let ms = Duration::from_millis;
        let b = Backoff::Jittered {
            base: ms(25),
            max: ms(250),
        };
        for (retry, ceiling) in [
            (1, ms(25)),
            (2, ms(75)),
            (3, ms(175)),
            (4, ms(250)),
            (40, ms(250)),
        ] {
            assert!(b.wait(retry, u64::MAX) <= ceiling, "retry {retry}");
            let n = ceiling.as_nanos() as u64;
            assert_eq!(b.wait(retry, n), ceiling, "retry {retry}");
            assert_eq!(b.wait(retry, n + 1), Duration::ZERO, "retry {retry}");
        }
        // Spread: 1,000 splitmix draws cover the range's quarters about evenly.
        let mut quarters = [0u32; 4];
        let mut z = 1u64;
        for _ in 0..1000 {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let wait = b.wait(2, x ^ (x >> 31));
            quarters[(wait.as_nanos() * 4 / (ms(75).as_nanos() + 1)) as usize] += 1;
        }
        assert!(
            quarters.iter().all(|q| (200..300).contains(q)),
            "{quarters:?}"
        );
        assert_eq!(Backoff::Fixed(ms(300)).wait(3, 12345), ms(300));
    }
}
