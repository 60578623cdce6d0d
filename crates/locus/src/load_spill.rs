//! Load-aware spill in the running gateway: once per interval, close each endpoint's latency
//! interval, measure the load of every Service's closest bucket and of the buckets it would
//! spill to, step each Service's [`SpillController`], and republish the snapshots whose spill
//! changed. The request path only adds to the endpoints' [`locus_core::load::LoadMeter`].
//!
//! The maths and the controller are in `locus_core::load`; this task owns their state, so none
//! of it needs a lock. What a reload must keep (the spill in force) goes to the registry.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use locus_core::load::{group_load, unloaded_latency, Decision, IntervalLoad, SpillController};

use crate::health::HealthRegistry;
use crate::metrics::SideLabels;
use crate::proxy::Shared;
use crate::routing::ServiceTarget;

/// Default interval between two controller steps.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// What the controller saw and did in its last step, for `/debug/endpoints` (the spill in
/// force and its buckets are the snapshot's).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadView {
    /// Smoothed loads of the closest bucket and of the receiving buckets.
    pub closest: Option<f64>,
    pub next: Option<f64>,
    pub decision: &'static str,
}

/// Runs the controller every `interval` until the runtime stops.
pub async fn run(shared: Arc<Shared>, registry: Arc<HealthRegistry>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = State::default();
    loop {
        ticker.tick().await;
        state.step(&shared, &registry);
    }
}

#[derive(Default)]
struct State {
    controllers: HashMap<Arc<str>, SpillController>,
}

impl State {
    fn step(&mut self, shared: &Shared, registry: &HealthRegistry) {
        let table = shared.table.load_full();
        let targets: Vec<&Arc<ServiceTarget>> = table
            .services
            .values()
            .filter(|t| t.health.load_spill.is_some())
            .collect();
        // Close every measured endpoint's interval once, even when it serves several Services
        // (they share its meter).
        let mut intervals: HashMap<SocketAddr, IntervalLoad> = HashMap::new();
        for target in &targets {
            let snap = target.snapshot.load();
            for (ep, health) in snap.endpoints.iter().zip(&snap.health) {
                if intervals.contains_key(&ep.addr) {
                    continue;
                }
                intervals.insert(ep.addr, health.load.close_interval());
            }
        }
        let present: HashSet<Arc<str>> = targets.iter().map(|t| t.name.clone()).collect();
        self.controllers.retain(|name, _| present.contains(name));

        let mut in_force = HashMap::new();
        for target in targets {
            let band = target.health.load_spill.expect("filtered on load_spill");
            let snap = target.snapshot.load();
            let controller = self.controllers.entry(target.name.clone()).or_default();
            let Some(route) = snap.spill_route.clone() else {
                // Nowhere to spill (one bucket, consistent hashing, or panic/degraded modes
                // that already spread): keep the controller as it is until there is.
                target.load_view.store(Some(Arc::new(LoadView {
                    closest: controller.local,
                    next: controller.remote,
                    decision: "inactive: no bucket to spill to",
                })));
                in_force.insert(target.name.to_string(), snap.options.load_spill);
                continue;
            };
            let interval_of = |i: usize| {
                let addr = snap.endpoints[i].addr;
                intervals.get(&addr).copied().unwrap_or_default()
            };
            let unloaded = unloaded_latency((0..snap.endpoints.len()).map(interval_of));
            let measured = |buckets: &mut dyn Iterator<Item = usize>| {
                let members = buckets.flat_map(|b| snap.buckets[b].eligible.iter());
                group_load(
                    members.map(|&i| interval_of(i as usize)),
                    unloaded.unwrap_or_default(),
                )
            };
            let closest = measured(&mut std::iter::once(route.from));
            let next = measured(&mut route.to.iter().map(|(b, _)| *b));
            let before = controller.spill;
            let spill = controller.tick(band, closest, next);
            tracing::debug!(
                service = %target.name,
                closest = ?closest,
                next = ?next,
                unloaded_us = unloaded.unwrap_or_default(),
                smoothed_closest = controller.local.unwrap_or_default(),
                smoothed_next = controller.remote.unwrap_or_default(),
                decision = controller.last.map_or("hold", Decision::as_str),
                spill,
                "load-aware spill step"
            );
            if spill > 0.0 && before == 0.0 {
                tracing::info!(
                    service = %target.name,
                    closest = format!("{:.2}", controller.local.unwrap_or_default()),
                    next = format!("{:.2}", controller.remote.unwrap_or_default()),
                    "load-aware spill: the closest bucket is busier than the next; moving part of its traffic"
                );
            } else if spill == 0.0 && before > 0.0 {
                tracing::info!(service = %target.name, "load-aware spill: all traffic back in the closest bucket");
            }
            // Also when a health rebuild raced with the last step and published a stale spill.
            if (snap.options.load_spill - spill).abs() > 1e-9 {
                target.set_load_spill(spill);
            }
            in_force.insert(target.name.to_string(), spill);
            for (side, load) in [("closest", controller.local), ("next", controller.remote)] {
                let labels = SideLabels {
                    service: target.name.to_string(),
                    side: side.to_owned(),
                };
                // Unknown is no series rather than 0, which would read as idle.
                match load {
                    Some(l) => {
                        shared.metrics.bucket_load.get_or_create(&labels).set(l);
                    }
                    None => {
                        shared.metrics.bucket_load.remove(&labels);
                    }
                }
            }
            target.load_view.store(Some(Arc::new(LoadView {
                closest: controller.local,
                next: controller.remote,
                decision: controller.last.map_or("hold", Decision::as_str),
            })));
        }
        registry.set_load_spill(in_force);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityConfig, ResolvedIdentity};
    use crate::resources::{parse_text, ResourceSet};
    use crate::routing::{GatewaySelector, RouteTable};

    const MANIFESTS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps, annotations: {locus.io/load-spill: \"on\"}}\nspec: {selector: {app: svc}, trafficDistribution: PreferClose, ports: [{name: http, port: 80}]}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a, namespace: apps, labels: {app: svc}}\nspec: {address: 127.0.0.1, locality: r/zone-a, ports: {http: 9101}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b, namespace: apps, labels: {app: svc}}\nspec: {address: 127.0.0.2, locality: r/zone-b, ports: {http: 9101}}\n";

    fn table(registry: &HealthRegistry) -> RouteTable {
        let mut set = ResourceSet::default();
        parse_text(std::path::Path::new("test.yaml"), MANIFESTS, &mut set).unwrap();
        let model = crate::model::Model::build(&set).unwrap();
        let identity: ResolvedIdentity = crate::identity::resolve(
            &IdentityConfig {
                locality: Some(locus_core::Locality::parse("r/zone-a").unwrap()),
                ..Default::default()
            },
            &model,
        );
        RouteTable::build(
            &model,
            identity,
            &GatewaySelector::All,
            1,
            &crate::routing::Live {
                registry,
                events: &tokio::sync::mpsc::unbounded_channel().0,
                metrics: &Arc::new(crate::metrics::Metrics::new(0.0, 0.0, f64::INFINITY)),
                now_ms: crate::health::now_ms(),
            },
        )
    }

    #[test]
    fn a_reload_keeps_the_spill_in_force() {
        let registry = HealthRegistry::default();
        let fresh = table(&registry);
        let svc = fresh.services.values().next().unwrap();
        assert_eq!(svc.snapshot.load().options.load_spill, 0.0);
        registry.set_load_spill(HashMap::from([(svc.name.to_string(), 0.3)]));
        let reloaded = table(&registry);
        let snap = reloaded.services.values().next().unwrap().snapshot.load();
        assert_eq!(snap.options.load_spill, 0.3);
        assert!((snap.spilled_fraction() - 0.3).abs() < 1e-9);
    }
}
