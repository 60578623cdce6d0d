//! One Service port as routes see it: its snapshot cell (written only by the snapshot writer),
//! metric handles, and the gauges that describe its snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use locus_core::balancer::{ServiceSnapshot, SnapshotMode};

use crate::metrics::{EndpointCountLabels, EndpointMetrics, Metrics, ServiceLabels, ServiceTotals};
use crate::model::{HealthConfig, ObjKey};

use super::build::BuildCtx;

/// What the load-aware spill controller saw and did in its last step, for `/debug/endpoints`
/// (the spill in force and its buckets are the snapshot's).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadView {
    /// Smoothed loads of the closest bucket and of the receiving buckets.
    pub closest: Option<f64>,
    pub next: Option<f64>,
    pub decision: &'static str,
}

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
    /// The load-aware spill controller's last view (written by the snapshot writer).
    pub load_view: arc_swap::ArcSwapOption<LoadView>,
    /// `locus_request_errors_total`, by fault.
    pub errors: crate::metrics::ErrorCounters,
    /// `locus_retries_total`, by reason.
    pub retries: crate::metrics::RetryCounters,
    /// Circuit breaking: requests and retries in flight (counted only when the Service has
    /// such a limit), and the overflow counters (when it has any).
    pub in_flight: std::sync::atomic::AtomicU32,
    pub retries_in_flight: std::sync::atomic::AtomicU32,
    pub overflows: Option<crate::metrics::OverflowCounters>,
    /// Where the request path reports ejections.
    events: crate::health::HealthTx,
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
            for (state, n) in [("healthy", healthy), ("unhealthy", total - healthy)] {
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
pub(super) fn service_target(
    ctx: &BuildCtx<'_>,
    svc: &crate::model::ServiceModel,
    sp: &crate::model::ServicePortModel,
    port: u16,
    services: &mut BTreeMap<(ObjKey, u16), Arc<ServiceTarget>>,
    warnings: &mut Vec<String>,
) -> Arc<ServiceTarget> {
    let key = (svc.key.clone(), port);
    if let Some(t) = services.get(&key) {
        return t.clone();
    }
    let target = Arc::new(new_target(ctx, svc, sp, port, warnings));
    services.insert(key, target.clone());
    target
}

fn new_target(
    ctx: &BuildCtx<'_>,
    svc: &crate::model::ServiceModel,
    sp: &crate::model::ServicePortModel,
    port: u16,
    warnings: &mut Vec<String>,
) -> ServiceTarget {
    let live = ctx.live;
    let health = sp
        .endpoints
        .iter()
        .map(|e| live.registry.get(e.addr))
        .collect();
    let name = format!("{}:{port}", svc.key);
    let (balancer, zone_balance_fallback) = balancer_with_fleet(&sp.balancer, ctx, &name, warnings);
    let mut health_config = sp.health.clone();
    if zone_balance_fallback == Some("no-fleet") && health_config.load_spill.is_none() {
        // Without a fleet, the measured load stands in for it: unequal traffic per gateway is
        // what capacity maths would have corrected, and load-aware spill corrects it too.
        health_config.load_spill = Some(Default::default());
    }
    let mut options = sp.health.options;
    if health_config.load_spill.is_some() {
        // Carried across reloads: a reload must not undo spill that the load still calls for.
        options.load_spill = live.spill.get(name.as_str()).copied().unwrap_or(0.0);
    }
    let snapshot = ServiceSnapshot::build_with_health(
        ctx.identity.identity.clone(),
        svc.policy,
        balancer,
        options,
        sp.endpoints.clone(),
        health,
        live.now_ms,
    );
    if health_config.load_spill.is_some() {
        if snapshot.buckets.len() < 2 {
            warnings.push(format!(
                "Service {name}: locus.io/load-spill has no effect: the Service routes over one bucket ({}), so there is no closer and farther bucket to balance",
                snapshot.rule
            ));
        } else if matches!(
            snapshot.balancer.algorithm,
            locus_core::Algorithm::ConsistentHash(_)
        ) {
            warnings.push(format!(
                "Service {name}: locus.io/load-spill has no effect with consistentHash: hashed requests stay in the best healthy bucket"
            ));
        }
    }
    let endpoint_metrics = snapshot
        .endpoints
        .iter()
        .map(|e| live.metrics.endpoint(&name, &ctx.identity.identity, e))
        .collect();
    let errors = crate::metrics::ErrorCounters::new(live.metrics, &name);
    let retries = crate::metrics::RetryCounters::new(live.metrics, &name);
    let up = &health_config.upstream;
    let overflows =
        (up.max_requests.is_some() || up.max_per_endpoint.is_some() || up.max_retries.is_some())
            .then(|| crate::metrics::OverflowCounters::new(live.metrics, &name));
    let target = ServiceTarget {
        key: svc.key.clone(),
        port,
        name: Arc::from(name),
        h2c: sp.app_protocol.as_deref() == Some("kubernetes.io/h2c"),
        health: health_config,
        snapshot: ArcSwap::from_pointee(snapshot),
        endpoint_metrics,
        totals: Arc::default(),
        zone_balance_fallback,
        load_view: Default::default(),
        errors,
        retries,
        in_flight: Default::default(),
        retries_in_flight: Default::default(),
        overflows,
        events: live.events.clone(),
        metrics: live.metrics.clone(),
    };
    target.publish_gauges(&target.snapshot.load());
    target
}
