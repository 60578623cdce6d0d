//! Prometheus metrics. Families are registered once; the request path uses handles resolved
//! per endpoint when a route table is built ([`EndpointMetrics`]), so recording a request is a
//! few relaxed atomic adds, never a label lookup or a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use locus_core::{Endpoint, GatewayIdentity, Relation};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Public-cloud list prices for data crossing zones and regions, per GB (AWS and GCP charge
/// about $0.01/GB between zones of a region and $0.02/GB between nearby regions). Estimates
/// only: set `--cost-per-gb-cross-zone` / `--cost-per-gb-cross-region` to your own prices.
pub const DEFAULT_COST_CROSS_ZONE: f64 = 0.01;
pub const DEFAULT_COST_CROSS_REGION: f64 = 0.02;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub service: String,
    pub source_zone: String,
    pub source_region: String,
    pub destination_zone: String,
    pub destination_region: String,
    pub locality_relation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub source_zone: String,
    pub source_region: String,
    pub destination_zone: String,
    pub destination_region: String,
    pub locality_relation: String,
    pub code_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelationLabels {
    pub service: String,
    pub locality_relation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub service: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointCountLabels {
    pub service: String,
    pub zone: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabels {
    pub service: String,
    /// `closest` (the bucket spill takes from) or `next` (the buckets receiving it).
    pub side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub service: String,
    /// `upstream` (counted against the endpoint) or `client`.
    pub side: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub service: String,
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Every metric family of the gateway.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_bytes: Family<TrafficLabels, Counter>,
    pub response_bytes: Family<TrafficLabels, Counter>,
    pub duration: Family<RelationLabels, Histogram>,
    pub connect_failures: Family<ServiceLabels, Counter>,
    pub request_errors: Family<ErrorLabels, Counter>,
    pub ejections: Family<ReasonLabels, Counter>,
    pub active_transitions: Family<ReasonLabels, Counter>,
    pub bucket_in_use: Family<ServiceLabels, Gauge>,
    pub spilled: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    pub endpoints: Family<EndpointCountLabels, Gauge>,
    pub reloads: Family<ResultLabels, Counter>,
    pub discovery_errors: Family<KindLabels, Counter>,
    pub connections_refused: Family<PortLabels, Counter>,
    pub overflows: Family<OverflowLabels, Counter>,
    pub cost: Family<RelationLabels, Counter<f64, AtomicU64>>,
    pub imbalance: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    pub load_spill: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    pub bucket_load: Family<SideLabels, Gauge<f64, AtomicU64>>,
    pub zone_balance_fallback: Family<ReasonLabels, Gauge>,
    pub cost_cross_zone: f64,
    pub cost_cross_region: f64,
    /// `zone_imbalance_ratio` above this logs a warning.
    pub imbalance_warn: f64,
}

/// Bucket bounds of the latency histogram, in seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram made of atomics. prometheus-client's own `Histogram` takes a mutex on
/// every observation, which the request path must not; this one is a relaxed add per bucket,
/// count and sum (kept in microseconds).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// One more than the bounds: the last counts observations above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BOUNDS.partition_point(|b| *b < seconds);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            self.inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.inner.count.load(Ordering::Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Metrics {
    pub fn new(cost_cross_zone: f64, cost_cross_region: f64, imbalance_warn: f64) -> Self {
        let mut registry = Registry::with_prefix("locus");
        let m = Metrics {
            requests: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            duration: Family::default(),
            connect_failures: Family::default(),
            request_errors: Family::default(),
            ejections: Family::default(),
            active_transitions: Family::default(),
            bucket_in_use: Family::default(),
            spilled: Family::default(),
            endpoints: Family::default(),
            reloads: Family::default(),
            discovery_errors: Family::default(),
            connections_refused: Family::default(),
            overflows: Family::default(),
            cost: Family::default(),
            imbalance: Family::default(),
            load_spill: Family::default(),
            bucket_load: Family::default(),
            zone_balance_fallback: Family::default(),
            cost_cross_zone,
            cost_cross_region,
            imbalance_warn,
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests forwarded, by source and destination locality and response class",
            m.requests.clone(),
        );
        registry.register(
            "request_bytes",
            "Request body bytes sent upstream",
            m.request_bytes.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes received from upstream",
            m.response_bytes.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from picking an endpoint to its response headers",
            m.duration.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Upstream connections that could not be established",
            m.connect_failures.clone(),
        );
        registry.register(
            "request_errors",
            "Attempts that got no response, by side (upstream: counted against the endpoint; client: the client's fault, never counted against it) and kind",
            m.request_errors.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        registry.register(
            "active_check_transitions",
            "Active health check verdict changes",
            m.active_transitions.clone(),
        );
        registry.register(
            "bucket_in_use",
            "Index of the bucket taking most of a Service's traffic (0: the closest)",
            m.bucket_in_use.clone(),
        );
        registry.register(
            "spilled_fraction",
            "Share of a Service's traffic leaving its closest bucket",
            m.spilled.clone(),
        );
        registry.register(
            "endpoints",
            "Endpoints per Service and zone, by state (healthy, total)",
            m.endpoints.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration loads, by result",
            m.reloads.clone(),
        );
        registry.register(
            "overflows",
            "Circuit breaking: requests refused (limit=requests: 503 overflow; limit=retries: not retried) or stepped over to another endpoint (limit=endpoint)",
            m.overflows.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because the listener port held --max-connections, or the gateway was draining",
            m.connections_refused.clone(),
        );
        registry.register(
            "discovery_errors",
            "Failed list or watch calls to the Kubernetes API server, by kind",
            m.discovery_errors.clone(),
        );
        registry.register(
            "estimated_transfer_cost_dollars",
            "Estimated cost of response and request bytes crossing zones and regions, at the configured prices",
            m.cost.clone(),
        );
        registry.register(
            "zone_imbalance_ratio",
            "Max over mean of the load an endpoint is expected to get, given how endpoints are spread over zones",
            m.imbalance.clone(),
        );
        registry.register(
            "load_spill_fraction",
            "Share of the closest bucket's traffic the load-aware controller sends to the next bucket (locus.io/load-spill)",
            m.load_spill.clone(),
        );
        registry.register(
            "bucket_load",
            "Measured load of the closest and next buckets (mean latency over unloaded latency, minus one), smoothed",
            m.bucket_load.clone(),
        );
        registry.register(
            "zone_balance_fallback",
            "1 while a Service asking for locus.io/zone-balance: capacity routes by its other settings, by reason",
            m.zone_balance_fallback.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one endpoint of one Service, resolved once per table build.
    pub fn endpoint(
        &self,
        service: &str,
        gw: &GatewayIdentity,
        ep: &Endpoint,
    ) -> Arc<EndpointMetrics> {
        let relation = gw.relation(ep);
        let rel = relation.as_str().to_owned();
        let traffic = TrafficLabels {
            service: service.to_owned(),
            source_zone: gw.locality.zone.clone(),
            source_region: gw.locality.region.clone(),
            destination_zone: ep.locality.zone.clone(),
            destination_region: ep.locality.region.clone(),
            locality_relation: rel.clone(),
        };
        let class = |c: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    service: traffic.service.clone(),
                    source_zone: traffic.source_zone.clone(),
                    source_region: traffic.source_region.clone(),
                    destination_zone: traffic.destination_zone.clone(),
                    destination_region: traffic.destination_region.clone(),
                    locality_relation: rel.clone(),
                    code_class: c.to_owned(),
                })
                .clone()
        };
        let price = match relation {
            Relation::SameNode | Relation::SameSubzone | Relation::SameZone => 0.0,
            Relation::SameRegion => self.cost_cross_zone,
            Relation::CrossRegion => self.cost_cross_region,
        };
        let rl = RelationLabels {
            service: service.to_owned(),
            locality_relation: rel.clone(),
        };
        Arc::new(EndpointMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            request_bytes: self.request_bytes.get_or_create(&traffic).clone(),
            response_bytes: self.response_bytes.get_or_create(&traffic).clone(),
            duration: self.duration.get_or_create(&rl).clone(),
            cost: (price > 0.0).then(|| self.cost.get_or_create(&rl).clone()),
            price_per_byte: price / 1e9,
            connect_failures: self
                .connect_failures
                .get_or_create(&ServiceLabels {
                    service: service.to_owned(),
                })
                .clone(),
            crosses_zone: matches!(relation, Relation::SameRegion | Relation::CrossRegion),
        })
    }
}

/// Per-request metrics switch (`--metrics off`, for measuring what they cost). Gauges and
/// reload counters are kept either way: they cost nothing per request.
pub static REQUEST_METRICS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Metric handles of one endpoint of one Service.
#[derive(Debug)]
pub struct EndpointMetrics {
    by_class: [Counter; 5],
    request_bytes: Counter,
    response_bytes: Counter,
    duration: Histogram,
    cost: Option<Counter<f64, AtomicU64>>,
    price_per_byte: f64,
    pub connect_failures: Counter,
    pub crosses_zone: bool,
}

impl EndpointMetrics {
    pub fn response(&self, status: u16, seconds: f64) {
        if !REQUEST_METRICS.load(Ordering::Relaxed) {
            return;
        }
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }

    pub fn bytes(&self, request: u64, response: u64, totals: &ServiceTotals) {
        if !REQUEST_METRICS.load(Ordering::Relaxed) {
            return;
        }
        if request > 0 {
            self.request_bytes.inc_by(request);
        }
        if response > 0 {
            self.response_bytes.inc_by(response);
        }
        let n = request + response;
        if n == 0 {
            return;
        }
        totals.bytes.fetch_add(n, Ordering::Relaxed);
        if self.crosses_zone {
            totals.cross_zone_bytes.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(c) = &self.cost {
            c.inc_by(n as f64 * self.price_per_byte);
        }
    }
}

/// Running totals of one Service port, for the admin API's savings estimate.
#[derive(Debug, Default)]
pub struct ServiceTotals {
    pub bytes: AtomicU64,
    pub cross_zone_bytes: AtomicU64,
}

/// `locus_request_errors_total` handles of one Service port, one per [`locus_core::health::Fault`].
#[derive(Debug)]
pub struct ErrorCounters([prometheus_client::metrics::counter::Counter; 8]);

impl ErrorCounters {
    pub fn new(metrics: &Metrics, service: &str) -> Self {
        ErrorCounters(locus_core::health::Fault::ALL.map(|f| {
            metrics
                .request_errors
                .get_or_create(&ErrorLabels {
                    service: service.to_owned(),
                    side: f.side().to_owned(),
                    kind: f.kind().to_owned(),
                })
                .clone()
        }))
    }

    pub fn count(&self, fault: locus_core::health::Fault) {
        self.0[fault.index()].inc();
    }
}

/// `locus_overflows_total` handles of one Service port with circuit-breaking limits.
#[derive(Debug)]
pub struct OverflowCounters {
    pub requests: Counter,
    pub endpoint: Counter,
    pub retries: Counter,
}

impl OverflowCounters {
    pub fn new(metrics: &Metrics, service: &str) -> Self {
        let one = |limit: &str| {
            metrics
                .overflows
                .get_or_create(&OverflowLabels {
                    service: service.to_owned(),
                    limit: limit.to_owned(),
                })
                .clone()
        };
        OverflowCounters {
            requests: one("requests"),
            endpoint: one("endpoint"),
            retries: one("retries"),
        }
    }
}
