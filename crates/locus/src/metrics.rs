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
    pub source_cluster: String,
    pub destination_cluster: String,
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
    pub source_cluster: String,
    pub destination_cluster: String,
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

/// The transfer cost estimate, by locality and by the cluster the bytes went to (what leaves
/// the gateway's cluster usually costs more than its locality says: a VPC or network gateway).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub service: String,
    pub locality_relation: String,
    pub destination_cluster: String,
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
pub struct RetryLabels {
    pub service: String,
    /// `status`, `connection` or `timeout`: what made the gateway send the request again.
    pub reason: String,
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
    pub retries: Family<RetryLabels, Counter>,
    pub ejections: Family<ReasonLabels, Counter>,
    pub active_transitions: Family<ReasonLabels, Counter>,
    pub bucket_in_use: Family<ServiceLabels, Gauge>,
    pub spilled: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    pub endpoints: Family<EndpointCountLabels, Gauge>,
    pub reloads: Family<ResultLabels, Counter>,
    pub discovery_errors: Family<KindLabels, Counter>,
    pub connections_refused: Family<PortLabels, Counter>,
    pub overflows: Family<OverflowLabels, Counter>,
    pub cost: Family<CostLabels, Counter<f64, AtomicU64>>,
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
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BOUNDS.partition_point(|b| *b < seconds);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
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
            .chain([f64::INFINITY])
            .zip(self.inner.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the `+Inf` bucket, as Prometheus requires: summed from the buckets read
        // here, not loaded apart (an observation landing between two loads would split them).
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(
            self.inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count,
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
        // `locus_*` for the gateway's own metrics; the standard `process_*` ones beside them.
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector::new()));
        let locus = registry.sub_registry_with_prefix("locus");
        let m = Metrics {
            requests: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            duration: Family::default(),
            connect_failures: Family::default(),
            request_errors: Family::default(),
            retries: Family::default(),
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
        locus.register(
            "requests",
            "Requests forwarded, by source and destination locality and response class",
            m.requests.clone(),
        );
        locus.register(
            "request_bytes",
            "Request body bytes sent upstream",
            m.request_bytes.clone(),
        );
        locus.register(
            "response_bytes",
            "Response body bytes received from upstream",
            m.response_bytes.clone(),
        );
        locus.register(
            "request_duration_seconds",
            "Time from picking an endpoint to its response headers",
            m.duration.clone(),
        );
        locus.register(
            "upstream_connect_failures",
            "Upstream connections that could not be established",
            m.connect_failures.clone(),
        );
        locus.register(
            "request_errors",
            "Attempts that got no response, by side (upstream: counted against the endpoint; client: the client's fault, never counted against it) and kind",
            m.request_errors.clone(),
        );
        locus.register(
            "retries",
            "Requests sent again to the Service after an attempt failed, by reason (status: a retriable response code; connection: a connect failure or a broken connection; timeout: an attempt's own timeout)",
            m.retries.clone(),
        );
        locus.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        locus.register(
            "active_check_transitions",
            "Active health check verdict changes",
            m.active_transitions.clone(),
        );
        locus.register(
            "bucket_in_use",
            "Index of the bucket taking most of a Service's traffic (0: the closest)",
            m.bucket_in_use.clone(),
        );
        locus.register(
            "spilled_ratio",
            "Share of a Service's traffic leaving its closest bucket",
            m.spilled.clone(),
        );
        locus.register(
            "endpoints",
            "Endpoints per Service and zone, by state (healthy: eligible for traffic; unhealthy: ejected, failing, not ready or draining); sum over state for the total",
            m.endpoints.clone(),
        );
        locus.register(
            "config_reloads",
            "Configuration loads, by result",
            m.reloads.clone(),
        );
        locus.register(
            "overflows",
            "Circuit breaking: requests refused (limit=requests: 503 overflow; limit=retries: not retried) or stepped over to another endpoint (limit=endpoint)",
            m.overflows.clone(),
        );
        locus.register(
            "connections_refused",
            "Client connections closed at once because the listener port held --max-connections, or the gateway was draining",
            m.connections_refused.clone(),
        );
        locus.register(
            "discovery_errors",
            "Failed list or watch calls to the Kubernetes API server, by kind",
            m.discovery_errors.clone(),
        );
        locus.register(
            "estimated_transfer_cost_dollars",
            "Estimated cost of response and request bytes crossing zones and regions, at the configured prices",
            m.cost.clone(),
        );
        locus.register(
            "zone_imbalance_ratio",
            "Max over mean of the load an endpoint is expected to get, given how endpoints are spread over zones",
            m.imbalance.clone(),
        );
        locus.register(
            "load_spill_ratio",
            "Share of the closest bucket's traffic the load-aware controller sends to the next bucket (locus.io/load-spill)",
            m.load_spill.clone(),
        );
        locus.register(
            "bucket_load",
            "Measured load of the closest and next buckets (mean latency over unloaded latency, minus one), smoothed",
            m.bucket_load.clone(),
        );
        locus.register(
            "zone_balance_fallback",
            "1 while a Service asking for locus.io/zone-balance: capacity routes by its other settings, by reason",
            m.zone_balance_fallback.clone(),
        );
        locus.register(
            "build",
            "The running build: Locus's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
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
            source_cluster: gw.cluster.clone().unwrap_or_default(),
            destination_cluster: gw.cluster_of(ep).to_owned(),
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
                    source_cluster: traffic.source_cluster.clone(),
                    destination_cluster: traffic.destination_cluster.clone(),
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
            cost: (price > 0.0).then(|| {
                self.cost
                    .get_or_create(&CostLabels {
                        service: service.to_owned(),
                        locality_relation: rel.clone(),
                        destination_cluster: traffic.destination_cluster.clone(),
                    })
                    .clone()
            }),
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

/// `locus_retries_total` handles of one Service port.
#[derive(Debug)]
pub struct RetryCounters {
    pub status: Counter,
    pub connection: Counter,
    pub timeout: Counter,
}

impl RetryCounters {
    pub fn new(metrics: &Metrics, service: &str) -> Self {
        let one = |reason: &str| {
            metrics
                .retries
                .get_or_create(&RetryLabels {
                    service: service.to_owned(),
                    reason: reason.to_owned(),
                })
                .clone()
        };
        RetryCounters {
            status: one("status"),
            connection: one("connection"),
            timeout: one("timeout"),
        }
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

/// The standard `process_*` metrics, read from `/proc` at each scrape (Linux; elsewhere none).
#[derive(Debug)]
struct ProcessCollector {
    /// Seconds since the epoch at which the process started.
    start_time: f64,
}

impl ProcessCollector {
    fn new() -> Self {
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - process_uptime().unwrap_or(0.0);
        ProcessCollector { start_time }
    }
}

/// `/proc/self/stat` fields after the command name (which may hold spaces).
fn proc_stat() -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Linux reports process times in `USER_HZ` ticks, 100 per second on every architecture
/// Locus builds for.
const TICKS_PER_SECOND: f64 = 100.0;

/// Seconds since the process started (`starttime` against the system's uptime).
fn process_uptime() -> Option<f64> {
    let started = proc_stat()?.get(19)?.parse::<f64>().ok()? / TICKS_PER_SECOND;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(uptime - started)
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(stat) = proc_stat() else {
            return Ok(());
        };
        let field = |i: usize| stat.get(i).and_then(|v| v.parse::<f64>().ok());
        // utime and stime (fields 14 and 15 of the full line).
        if let (Some(user), Some(system)) = (field(11), field(12)) {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new((user + system) / TICKS_PER_SECOND).encode(m)?;
        }
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            });
        if let Some(kib) = rss_kib {
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(kib * 1024.0).encode(m)?;
        }
        if let Some(vsize) = field(20) {
            let m = encoder.encode_descriptor(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(vsize).encode(m)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(fds.count() as i64).encode(m)?;
        }
        let m = encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.start_time.round()).encode(m)?;
        Ok(())
    }
}
