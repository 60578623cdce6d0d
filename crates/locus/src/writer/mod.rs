//! The snapshot writer: the one owner of every Service port's changing state — health records
//! (by endpoint address), the load-aware spill controller and the spill in force — and the
//! only code that builds and publishes route tables and Service snapshots.
//!
//! It is one task, fed by messages: reloads (a validated model to build a table from), health
//! events (ejections from the request path, active-check verdicts, ejections ending) and its
//! own load ticks. It handles one message at a time, so no two writers ever race and no lock
//! is taken between them; heavy builds run on a blocking thread while it waits, and it runs
//! on the control runtime, never on the threads that serve requests. Data flows one way:
//! model → this writer → `ArcSwap`s → the proxy, which only loads them.

mod load;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use locus_core::balancer::ServiceSnapshot;
use locus_core::load::SpillController;
use tokio::sync::{mpsc, oneshot};

use crate::health::{now_ms, HealthEvent, HealthRegistry, HealthTx};
use crate::identity::ResolvedIdentity;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::routing::{GatewaySelector, Live, RouteTable, ServiceTarget};

/// Default interval between two load-aware spill steps.
pub const DEFAULT_LOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A validated configuration to build and publish.
struct Reload {
    model: Arc<Model>,
    identity: ResolvedIdentity,
    selector: GatewaySelector,
    generation: u64,
    done: oneshot::Sender<Arc<RouteTable>>,
}

/// The way to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    reloads: mpsc::UnboundedSender<Reload>,
    events: HealthTx,
}

impl WriterHandle {
    /// Starts the writer on the current runtime, publishing into `table`.
    pub fn spawn(
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
        load_interval: Duration,
    ) -> Self {
        let (reloads, reload_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let writer = Writer::new(table, metrics, events.clone());
        tokio::spawn(writer.run(reload_rx, event_rx, load_interval));
        WriterHandle { reloads, events }
    }

    /// Where health changes are reported (the active prober).
    pub fn events(&self) -> HealthTx {
        self.events.clone()
    }

    /// Builds the table for `model` and publishes it; returns it once it is in force.
    pub async fn apply(
        &self,
        model: Arc<Model>,
        identity: ResolvedIdentity,
        selector: GatewaySelector,
        generation: u64,
    ) -> Option<Arc<RouteTable>> {
        let (done, rx) = oneshot::channel();
        self.reloads
            .send(Reload {
                model,
                identity,
                selector,
                generation,
                done,
            })
            .ok()?;
        rx.await.ok()
    }
}

/// One Service port's state that outlives reloads.
struct ServiceState {
    /// The target of the table in force (its snapshot cell is where this Service publishes).
    target: Arc<ServiceTarget>,
    controller: SpillController,
}

/// A table swapped out, kept until no request holds it so that dropping it (and the Service
/// targets only it and in-flight requests reference) happens here, not on a serving thread.
struct Retired {
    table: Option<Arc<RouteTable>>,
    targets: Vec<Arc<ServiceTarget>>,
}

pub(crate) struct Writer {
    table: Arc<ArcSwap<RouteTable>>,
    registry: Arc<HealthRegistry>,
    metrics: Arc<Metrics>,
    events: HealthTx,
    services: HashMap<Arc<str>, ServiceState>,
    /// Which Service ports each endpoint address belongs to (health changes rebuild these).
    by_endpoint: HashMap<SocketAddr, Vec<Arc<str>>>,
    retired: Vec<Retired>,
}

impl Writer {
    pub(crate) fn new(
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
        events: HealthTx,
    ) -> Self {
        Writer {
            table,
            registry: Arc::default(),
            metrics,
            events,
            services: HashMap::new(),
            by_endpoint: HashMap::new(),
            retired: Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut reloads: mpsc::UnboundedReceiver<Reload>,
        mut events: mpsc::UnboundedReceiver<HealthEvent>,
        load_interval: Duration,
    ) {
        let mut ticker = tokio::time::interval(load_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                reload = reloads.recv() => {
                    let Some(r) = reload else { return };
                    let table = self.reload(r.model, r.identity, r.selector, r.generation).await;
                    let _ = r.done.send(table);
                }
                Some(event) = events.recv() => self.health(event),
                _ = ticker.tick() => {
                    self.load_step();
                    self.sweep();
                }
            }
        }
    }

    /// Builds a table on a blocking thread (a 20,000-endpoint model takes most of a second),
    /// carries every Service's state over to it, and publishes it.
    pub(crate) async fn reload(
        &mut self,
        model: Arc<Model>,
        identity: ResolvedIdentity,
        selector: GatewaySelector,
        generation: u64,
    ) -> Arc<RouteTable> {
        let spill: HashMap<Arc<str>, f64> = self
            .services
            .iter()
            .map(|(name, s)| (name.clone(), s.target.snapshot.load().options.load_spill))
            .collect();
        let (registry, events, metrics) = (
            self.registry.clone(),
            self.events.clone(),
            self.metrics.clone(),
        );
        let build = move || {
            RouteTable::build(
                &model,
                identity,
                &selector,
                generation,
                &Live {
                    registry: &registry,
                    spill: &spill,
                    events: &events,
                    metrics: &metrics,
                    now_ms: now_ms(),
                },
            )
        };
        let table = match tokio::task::spawn_blocking(build).await {
            Ok(t) => Arc::new(t),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.install(table.clone());
        table
    }

    /// Makes `table` the one in force: Services keep their controllers, health records of
    /// endpoints gone from every Service are forgotten.
    fn install(&mut self, table: Arc<RouteTable>) {
        let mut services = HashMap::with_capacity(table.services.len());
        let mut by_endpoint: HashMap<SocketAddr, Vec<Arc<str>>> = HashMap::new();
        for target in table.services.values() {
            for ep in &target.snapshot.load().endpoints {
                by_endpoint
                    .entry(ep.addr)
                    .or_default()
                    .push(target.name.clone());
            }
            let controller = self
                .services
                .remove(&target.name)
                .map(|s| s.controller)
                .unwrap_or_default();
            services.insert(
                target.name.clone(),
                ServiceState {
                    target: target.clone(),
                    controller,
                },
            );
        }
        self.registry.retain(&by_endpoint.keys().copied().collect());
        let old_targets: Vec<Arc<ServiceTarget>> = std::mem::replace(&mut self.services, services)
            .into_values()
            .map(|s| s.target)
            .collect();
        self.by_endpoint = by_endpoint;
        let old = self.table.swap(table);
        self.retired.push(Retired {
            table: Some(old),
            targets: old_targets,
        });
        self.sweep();
    }

    /// Drops retired tables and targets that nothing else holds any more.
    fn sweep(&mut self) {
        for r in &mut self.retired {
            if r.table.as_ref().is_some_and(|t| Arc::strong_count(t) == 1) {
                r.table = None;
            }
            if r.table.is_none() {
                r.targets.retain(|t| Arc::strong_count(t) > 1);
            }
        }
        self.retired
            .retain(|r| r.table.is_some() || !r.targets.is_empty());
    }

    /// An endpoint's health changed: every Service it belongs to is rebuilt.
    fn health(&mut self, event: HealthEvent) {
        if let HealthEvent::Ejected { addr, until_ms } = event {
            let events = self.events.clone();
            tokio::spawn(async move {
                let wait = until_ms.saturating_sub(now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                tracing::info!(endpoint = %addr, "ejection ended; endpoint back in rotation");
                let _ = events.send(HealthEvent::Returned { addr });
            });
        }
        let Some(names) = self.by_endpoint.get(&event.addr()) else {
            return;
        };
        for name in names {
            if let Some(s) = self.services.get(name) {
                republish(&s.target, None);
            }
        }
    }
}

/// Rebuilds a Service's snapshot from the same endpoints with their current health (and a new
/// load-aware spill, when given) and publishes it.
fn republish(target: &ServiceTarget, load_spill: Option<f64>) {
    let old = target.snapshot.load();
    let mut options = old.options;
    if let Some(s) = load_spill {
        options.load_spill = s;
    }
    let new = ServiceSnapshot::build_with_health(
        old.gateway.clone(),
        old.policy,
        old.balancer.clone(),
        options,
        old.endpoints.clone(),
        old.health.clone(),
        now_ms(),
    );
    let (before, after) = (old.spilled_fraction(), new.spilled_fraction());
    if (before == 0.0) != (after == 0.0) || old.mode != new.mode {
        tracing::info!(
            service = %target.name,
            spilled = format!("{:.1}%", after * 100.0),
            mode = new.mode.as_str(),
            cause = if load_spill.is_some() { "load" } else { "health" },
            "{}",
            if after > 0.0 { "spilling over to farther buckets" } else { "all traffic back in the best bucket" }
        );
    }
    target.publish_gauges(&new);
    target.snapshot.store(Arc::new(new));
}
