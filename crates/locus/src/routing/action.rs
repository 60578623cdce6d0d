//! What a matched rule does: its backends (split by weight), filters, mirrors and timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use locus_core::balancer::WeightedSchedule;

use crate::model::ObjKey;

use super::build::BuildCtx;
use super::target::{service_target, ServiceTarget};

#[derive(Debug)]
pub enum Backend {
    /// A Service port, and the backendRef's own filters (header edits, URL rewrite).
    Service(Arc<ServiceTarget>, Option<Arc<crate::model::Filters>>),
    /// A backendRef that cannot be honoured; its share of requests gets a 500 saying why.
    Invalid(Arc<str>),
}

/// What a matched rule does.
#[derive(Debug)]
pub struct RuleAction {
    /// `namespace/name` of the HTTPRoute and the rule index, for logs.
    pub route: Arc<str>,
    pub backends: Vec<Backend>,
    /// Each backend's weight (parallel to `backends`): a session never goes to one at 0.
    pub weights: Vec<u32>,
    schedule: WeightedSchedule,
    /// HTTPRoute `timeouts.request` (`None`: the gateway's default; zero: none).
    pub timeout: Option<Duration>,
    /// HTTPRoute `timeouts.backendRequest`, per attempt (zero: none).
    pub backend_timeout: Option<Duration>,
    /// HTTPRoute `retry`: in place of the Service's retry policy.
    pub retry: Option<crate::model::RetryPolicy>,
    /// HTTPRoute `sessionPersistence`.
    pub session: Option<Arc<crate::model::SessionModel>>,
    /// Set when the rule uses filters Locus cannot apply (requests get a 500).
    pub unsupported: Option<Arc<str>>,
    /// Header edits, redirect, rewrite.
    pub filters: crate::model::Filters,
    /// A filter replaces the matched path prefix, so requests need to know it.
    pub needs_prefix: bool,
    /// `RequestMirror` targets and the share of requests each gets.
    pub mirrors: Vec<(Arc<ServiceTarget>, f64)>,
    /// A GRPCRoute rule: backends are spoken to over HTTP/2 (cleartext), whatever the
    /// Service port's `appProtocol`.
    pub grpc: bool,
    mirror_draws: std::sync::atomic::AtomicU64,
}

impl RuleAction {
    /// Every request to one Service target, as it comes: other networks' east-west traffic.
    pub(super) fn to_target(route: Arc<str>, target: Arc<ServiceTarget>) -> RuleAction {
        RuleAction {
            route,
            backends: vec![Backend::Service(target, None)],
            weights: vec![1],
            schedule: WeightedSchedule::new([(0, 1)]),
            timeout: None,
            backend_timeout: None,
            retry: None,
            session: None,
            unsupported: None,
            filters: Default::default(),
            needs_prefix: false,
            mirrors: Vec::new(),
            grpc: false,
            mirror_draws: Default::default(),
        }
    }

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
        self.pick_backend_index().map(|i| &self.backends[i])
    }

    /// [`RuleAction::pick_backend`]'s choice as an index into `backends`.
    #[inline]
    pub fn pick_backend_index(&self) -> Option<usize> {
        self.schedule.next().map(|i| i as usize)
    }
}

pub(super) fn build_action(
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
                        Backend::Service(target, b.filters.clone().map(Arc::new))
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
        weights: rule.backends.iter().map(|b| b.weight).collect(),
        schedule: WeightedSchedule::new(weights),
        timeout: rule.request_timeout,
        backend_timeout: rule.backend_request_timeout,
        retry: rule.retry.clone(),
        session: rule.session.clone(),
        needs_prefix: rule
            .filters
            .redirect
            .as_ref()
            .is_some_and(|x| prefix_edit(&x.path))
            || rule
                .filters
                .rewrite
                .as_ref()
                .is_some_and(|x| prefix_edit(&x.path))
            || rule.backends.iter().any(|b| {
                b.filters
                    .as_ref()
                    .and_then(|f| f.rewrite.as_ref())
                    .is_some_and(|x| prefix_edit(&x.path))
            }),
        filters: rule.filters.clone(),
        mirrors,
        grpc: route.kind == crate::model::RouteKind::Grpc,
        mirror_draws: Default::default(),
        unsupported: (!rule.unsupported_filters.is_empty()).then(|| {
            Arc::from(format!(
                "filters not supported by Locus yet: {}",
                rule.unsupported_filters.join(", ")
            ))
        }),
    }
}
