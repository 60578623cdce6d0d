//! Load-aware spill, one step per interval: close each measured endpoint's latency interval,
//! measure the load of every Service's closest bucket and of the buckets it would spill to,
//! step each Service's [`SpillController`], and republish the snapshots whose spill changed.
//! The request path only adds to the endpoints' [`locus_core::load::LoadMeter`].
//!
//! The maths and the controller are in `locus_core::load`; the writer owns their state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use locus_core::load::{group_load, unloaded_latency, Decision, IntervalLoad, SpillController};

use super::{republish, Writer};
use crate::metrics::{Metrics, SideLabels};
use crate::routing::{LoadView, ServiceTarget};

impl Writer {
    pub(super) fn load_step(&mut self) {
        // Close every measured endpoint's interval once, even when it serves several Services
        // (they share its meter).
        let mut intervals: HashMap<SocketAddr, IntervalLoad> = HashMap::new();
        for s in self.services.values() {
            if s.target.health.load_spill.is_none() {
                continue;
            }
            let snap = s.target.snapshot.load();
            for (ep, health) in snap.endpoints.iter().zip(&snap.health) {
                intervals
                    .entry(ep.addr)
                    .or_insert_with(|| health.load.close_interval());
            }
        }
        for s in self.services.values_mut() {
            if s.target.health.load_spill.is_some() {
                step(&s.target, &mut s.controller, &intervals, &self.metrics);
            }
        }
    }
}

/// One controller step for one Service.
fn step(
    target: &ServiceTarget,
    controller: &mut SpillController,
    intervals: &HashMap<SocketAddr, IntervalLoad>,
    metrics: &Metrics,
) {
    let band = target.health.load_spill.expect("filtered on load_spill");
    let snap = target.snapshot.load();
    let Some(route) = snap.spill_route.clone() else {
        // Nowhere to spill (one bucket, consistent hashing, or panic/degraded modes that
        // already spread): keep the controller as it is until there is.
        target.load_view.store(Some(Arc::new(LoadView {
            closest: controller.local,
            next: controller.remote,
            decision: "inactive: no bucket to spill to",
        })));
        return;
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
    if (snap.options.load_spill - spill).abs() > 1e-9 {
        republish(target, Some(spill));
    }
    for (side, load) in [("closest", controller.local), ("next", controller.remote)] {
        let labels = SideLabels {
            service: target.name.to_string(),
            side: side.to_owned(),
        };
        // Unknown is no series rather than 0, which would read as idle.
        match load {
            Some(l) => {
                metrics.bucket_load.get_or_create(&labels).set(l);
            }
            None => {
                metrics.bucket_load.remove(&labels);
            }
        }
    }
    target.load_view.store(Some(Arc::new(LoadView {
        closest: controller.local,
        next: controller.remote,
        decision: controller.last.map_or("hold", Decision::as_str),
    })));
}

#[cfg(test)]
mod tests {
    use super::super::Writer;
    use crate::identity::{IdentityConfig, ResolvedIdentity};
    use crate::resources::{parse_text, ResourceSet};
    use crate::routing::{GatewaySelector, RouteTable};
    use std::sync::Arc;

    const MANIFESTS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: locus\n  listeners: [{name: http, protocol: HTTP, port: 8080}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: apps, annotations: {locus.io/load-spill: \"on\"}}\nspec: {selector: {app: svc}, trafficDistribution: PreferClose, ports: [{name: http, port: 80}]}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a, namespace: apps, labels: {app: svc}}\nspec: {address: 127.0.0.1, locality: r/zone-a, ports: {http: 9101}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b, namespace: apps, labels: {app: svc}}\nspec: {address: 127.0.0.2, locality: r/zone-b, ports: {http: 9101}}\n";

    async fn reload(writer: &mut Writer, generation: u64) -> Arc<RouteTable> {
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
        writer
            .reload(Arc::new(model), identity, GatewaySelector::All, generation)
            .await
    }

    #[tokio::test]
    async fn a_reload_keeps_the_spill_in_force_and_its_controller() {
        let published = Arc::new(arc_swap::ArcSwap::from_pointee(RouteTable::default()));
        let metrics = Arc::new(crate::metrics::Metrics::new(0.0, 0.0, f64::INFINITY));
        let mut writer = Writer::new(
            published.clone(),
            metrics,
            tokio::sync::mpsc::unbounded_channel().0,
        );
        let fresh = reload(&mut writer, 1).await;
        assert!(Arc::ptr_eq(&fresh, &published.load_full()));
        let svc = fresh.services.values().next().unwrap().clone();
        assert_eq!(svc.snapshot.load().options.load_spill, 0.0);
        super::republish(&svc, Some(0.3));
        writer.services.get_mut(&svc.name).unwrap().controller.spill = 0.3;

        let reloaded = reload(&mut writer, 2).await;
        let target = reloaded.services.values().next().unwrap();
        assert!(!Arc::ptr_eq(target, &svc), "a reload builds new targets");
        let snap = target.snapshot.load();
        assert_eq!(snap.options.load_spill, 0.3);
        assert!((snap.spilled_fraction() - 0.3).abs() < 1e-9);
        assert_eq!(writer.services[&svc.name].controller.spill, 0.3);
        // The old table is dropped here once nothing holds it.
        drop(fresh);
        drop(svc);
        writer.sweep();
        assert!(writer.retired.is_empty());
    }
}
