//! The immutable view of one Service port that request handlers pick from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::balancer::schedule::{step, WeightedSchedule};
use crate::endpoint::{Endpoint, EndpointState};
use crate::health::{self, BucketHealth, EndpointHealth, Spillover};
use crate::policy::{self, Algorithm, BalancerConfig, RankingRule};
use crate::ranking::{GatewayIdentity, RoutingPolicy, Tier};

/// One priority bucket of a snapshot.
#[derive(Debug)]
pub struct Bucket {
    pub tier: Tier,
    /// What the bucket is (`same-zone`, `distribute us-east/* 20%`, …).
    pub label: String,
    /// Every endpoint ranked into this bucket (indices into [`ServiceSnapshot::endpoints`]).
    pub members: Vec<u32>,
    /// The members that may receive traffic now.
    pub eligible: Vec<u32>,
    /// Members that are ready and healthy (equals `eligible` in normal mode).
    pub healthy: usize,
    /// Share of the Service's traffic this bucket gets now (0..=1).
    pub load: f64,
    schedule: WeightedSchedule,
    /// Consistent-hash ring (only on the bucket a hash policy routes to).
    ring: Option<Ring>,
}

/// A ring hash (ketama): each endpoint owns points on a 64-bit circle in proportion to its
/// weight; a key goes to the first point at or after its hash. Removing one of N endpoints
/// moves only the keys it owned (~1/N).
#[derive(Debug)]
struct Ring {
    points: Vec<(u64, u32)>,
}

/// Points per unit of weight (ketama's 160): fixed, so an endpoint's points do not move when
/// others come and go. Scaled down only for Services so large the ring would pass 2^20 points.
const POINTS_PER_WEIGHT: u64 = 160;
const MAX_RING_POINTS: u64 = 1 << 20;

impl Ring {
    fn new(members: &[u32], endpoints: &[Endpoint]) -> Option<Ring> {
        if members.is_empty() {
            return None;
        }
        let total: u64 = members
            .iter()
            .map(|&i| u64::from(endpoints[i as usize].weight))
            .sum();
        let per_weight = POINTS_PER_WEIGHT.min((MAX_RING_POINTS / total.max(1)).max(1));
        let mut points = Vec::with_capacity((total * per_weight) as usize);
        for &i in members {
            let ep = &endpoints[i as usize];
            let n = per_weight * u64::from(ep.weight);
            // Points are derived from the address, not the index, so they stay put when
            // other endpoints come and go.
            let base = hash_bytes(ep.addr.to_string().as_bytes());
            for k in 0..n {
                points.push((mix(base ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)), i));
            }
        }
        points.sort_unstable();
        Some(Ring { points })
    }

    fn lookup(&self, key: u64) -> u32 {
        let i = self.points.partition_point(|(h, _)| *h < key);
        self.points[if i == self.points.len() { 0 } else { i }].1
    }
}

/// FNV-1a, stable across processes and versions so every gateway replica maps a key the same.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: spreads bits so nearby inputs land far apart.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A successful pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index into [`ServiceSnapshot::endpoints`].
    pub endpoint: u32,
    /// Index into [`ServiceSnapshot::buckets`].
    pub bucket: u32,
}

/// Why no endpoint could be picked; each maps to a 503 with a body that says so.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoEndpoint {
    #[error("internalTrafficPolicy is Local but the gateway's node is not known (set --node or NODE_NAME)")]
    StrictNodeUnknown,
    #[error("internalTrafficPolicy is Local and no ready endpoint runs on node {0}")]
    StrictNoLocalEndpoint(String),
    #[error("the service has no endpoints")]
    NoEndpoints,
    #[error("none of the service's {0} endpoints is ready")]
    NoneReady(usize),
    #[error("none of the service's {0} endpoints is healthy, and the service fails closed")]
    NoneHealthy(usize),
}

/// How a snapshot routes, given the health it was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Healthy endpoints only, shared among buckets by the spillover rule.
    Normal,
    /// Fewer healthy endpoints than `minHealthPercent`: every ready endpoint is used.
    Panic,
    /// Nothing healthy: ejected (but ready) endpoints are tried as a last resort.
    LastResort,
    /// The closest bucket lost more than its `on-degraded` threshold: locality-blind spread.
    DegradedSpread,
    /// Nothing routable.
    Empty,
}

impl SnapshotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::Normal => "normal",
            SnapshotMode::Panic => "panic",
            SnapshotMode::LastResort => "last-resort",
            SnapshotMode::DegradedSpread => "degraded-spread",
            SnapshotMode::Empty => "empty",
        }
    }
}

/// Health-related settings of a Service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthOptions {
    pub spillover: Spillover,
    pub overprovisioning: f64,
    /// `minHealthPercent` (0: no panic mode).
    pub min_health_percent: u32,
    /// With nothing healthy, answer 503 instead of trying ejected endpoints.
    pub fail_closed: bool,
    /// `locus.io/on-degraded: spread`: when the closest bucket has lost more than this share
    /// of its capacity, route over every allowed endpoint (locality-blind) until it recovers —
    /// the blog's wish, instead of loading the survivors of a degraded zone.
    pub degraded_spread: Option<f64>,
    /// Share of the closest bucket's traffic the load-aware controller moves to the next
    /// bucket(s) now (0 without `locus.io/load-spill`). State, not a setting: it is carried
    /// here so every rebuild of the snapshot keeps it.
    pub load_spill: f64,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            spillover: Spillover::Proportional,
            overprovisioning: health::DEFAULT_OVERPROVISIONING,
            min_health_percent: 0,
            fail_closed: false,
            degraded_spread: None,
            load_spill: 0.0,
        }
    }
}

/// Where load-aware spill takes traffic from and where it sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpillRoute {
    /// The closest bucket with traffic.
    pub from: usize,
    /// The buckets receiving it, with their share of what is moved: those already getting
    /// traffic (by their share), else the next bucket with a healthy endpoint.
    pub to: Vec<(usize, f64)>,
}

impl SpillRoute {
    /// The route for bucket loads `loads` over buckets whose healthy capacity is `healthy`.
    fn new(loads: &[f64], healthy: &[u64]) -> Option<SpillRoute> {
        let from = loads.iter().position(|l| *l > 0.0)?;
        let after: f64 = loads[from + 1..].iter().sum();
        let to: Vec<(usize, f64)> = if after > 0.0 {
            (from + 1..loads.len())
                .filter(|&b| loads[b] > 0.0)
                .map(|b| (b, loads[b] / after))
                .collect()
        } else {
            let next = (from + 1..loads.len()).find(|&b| healthy[b] > 0)?;
            vec![(next, 1.0)]
        };
        Some(SpillRoute { from, to })
    }

    /// Moves `spill` of the closest bucket's load to the receivers.
    fn apply(&self, loads: &mut [f64], spill: f64) {
        let moved = loads[self.from] * spill.clamp(0.0, 1.0);
        loads[self.from] -= moved;
        for &(b, share) in &self.to {
            loads[b] += moved * share;
        }
    }
}

/// Bucket draws use 53-bit fixed point so shares are exact to ~1e-16.
const ONE: u64 = 1 << 53;

/// Endpoints of one Service port ranked against the gateway's locality, ready to pick from.
///
/// Built by a single writer whenever the inputs or the health of an endpoint change and
/// published whole, so a request sees the buckets, their loads, members and schedules from
/// one consistent moment.
#[derive(Debug)]
pub struct ServiceSnapshot {
    pub gateway: GatewayIdentity,
    pub policy: RoutingPolicy,
    pub balancer: Arc<BalancerConfig>,
    /// Which rule ranked the buckets.
    pub rule: RankingRule,
    pub options: HealthOptions,
    pub endpoints: Vec<Endpoint>,
    /// Parallel to `endpoints`: shared per-endpoint health.
    pub health: Vec<Arc<EndpointHealth>>,
    pub buckets: Vec<Bucket>,
    pub mode: SnapshotMode,
    /// True when no endpoint was ready and terminating-but-serving ones are used instead.
    pub using_terminating: bool,
    /// Where load-aware spill moves traffic from and to (`None` when there is nowhere to go,
    /// or the mode is not normal).
    pub spill_route: Option<SpillRoute>,
    /// Cumulative bucket loads in [`ONE`] units; empty when one bucket takes everything.
    thresholds: Vec<u64>,
    /// The bucket taking all traffic, when there is one.
    single: Option<u32>,
    /// Draw buckets at random instead of from the low-discrepancy sequence (see
    /// [`ServiceSnapshot::draw_bucket`]).
    random_draw: bool,
    draws: AtomicU64,
}

impl ServiceSnapshot {
    /// A snapshot with every endpoint healthy and default options (tests, `check`).
    pub fn build(
        gateway: GatewayIdentity,
        policy: RoutingPolicy,
        endpoints: Vec<Endpoint>,
    ) -> Self {
        let health = endpoints
            .iter()
            .map(|_| Arc::new(EndpointHealth::new()))
            .collect();
        Self::build_with_health(
            gateway,
            policy,
            Arc::new(BalancerConfig::default()),
            HealthOptions::default(),
            endpoints,
            health,
            0,
        )
    }

    pub fn build_with_health(
        gateway: GatewayIdentity,
        policy: RoutingPolicy,
        balancer: Arc<BalancerConfig>,
        options: HealthOptions,
        endpoints: Vec<Endpoint>,
        health: Vec<Arc<EndpointHealth>>,
        now_ms: u64,
    ) -> Self {
        assert_eq!(
            endpoints.len(),
            health.len(),
            "one health record per endpoint"
        );
        let (ranked_buckets, rule) = policy::rank_buckets(&gateway, policy, &balancer, &endpoints);
        let fixed_weights: Vec<Option<u32>> = ranked_buckets.iter().map(|b| b.weight).collect();
        let labels: Vec<String> = ranked_buckets.iter().map(|b| b.label.clone()).collect();
        let tiers: Vec<Tier> = ranked_buckets.iter().map(|b| b.tier).collect();
        let ranked: Vec<Vec<u32>> = ranked_buckets.into_iter().map(|b| b.members).collect();
        let any_ready = ranked
            .iter()
            .flatten()
            .any(|&i| endpoints[i as usize].state == EndpointState::Ready);
        // Kubernetes semantics: terminating endpoints that still serve are used only when the
        // allowed set has no ready endpoint at all.
        let wanted = if any_ready {
            EndpointState::Ready
        } else {
            EndpointState::TerminatingServing
        };
        let ready = |i: u32| endpoints[i as usize].state == wanted;
        let healthy = |i: u32| ready(i) && health[i as usize].is_healthy(now_ms);
        let weight = |i: u32| u64::from(endpoints[i as usize].weight);

        let bucket_health = |filter: &dyn Fn(u32) -> bool| -> Vec<BucketHealth> {
            ranked
                .iter()
                .map(|m| BucketHealth {
                    healthy: m.iter().copied().filter(|&i| filter(i)).map(weight).sum(),
                    total: m.iter().copied().map(weight).sum(),
                })
                .collect()
        };
        let by_health = bucket_health(&healthy);
        let any_healthy = by_health.iter().any(|b| b.healthy > 0);
        let any_ready_now = ranked.iter().flatten().any(|&i| ready(i));
        let panic = options.min_health_percent > 0
            && any_ready_now
            && health::healthy_fraction(&by_health) * 100.0 < f64::from(options.min_health_percent);
        let (mut mode, routable): (SnapshotMode, &dyn Fn(u32) -> bool) = if panic {
            (SnapshotMode::Panic, &ready)
        } else if any_healthy {
            (SnapshotMode::Normal, &healthy)
        } else if any_ready_now && !options.fail_closed {
            (SnapshotMode::LastResort, &ready)
        } else {
            (SnapshotMode::Empty, &healthy)
        };
        let routable_health = bucket_health(routable);
        let loads = if let (RankingRule::CapacityAware, Some(fleet)) = (&rule, &balancer.fleet) {
            // Zone buckets share by the fleet and healthy capacity; the last bucket (other
            // regions) only when the region has nothing healthy.
            let zones = routable_health.len() - 1;
            let capacity: std::collections::BTreeMap<String, f64> = (0..zones)
                .map(|b| (labels[b].clone(), routable_health[b].healthy as f64))
                .collect();
            let own = labels[0].clone();
            let mut fleet: std::collections::BTreeMap<String, f64> = fleet
                .iter()
                .map(|(z, n)| (policy::zone_label(z), *n))
                .collect();
            fleet.entry(own.clone()).or_insert(1.0);
            let split = crate::capacity::zone_split(&own, &fleet, &capacity);
            let mut loads: Vec<f64> = (0..zones)
                .map(|b| split.get(&labels[b]).copied().unwrap_or(0.0))
                .collect();
            let region_total: f64 = loads.iter().sum();
            loads.push(if region_total > 0.0 {
                0.0
            } else if routable_health[zones].healthy > 0 {
                1.0
            } else {
                0.0
            });
            loads
        } else if fixed_weights.iter().any(Option::is_some) {
            // `distribute`: fixed shares, each scaled by its target's health so a target with
            // nothing healthy gives its share to the others (Istio does not; see #33470).
            let eff: Vec<f64> = fixed_weights
                .iter()
                .zip(&routable_health)
                .map(|(w, h)| {
                    let w = f64::from(w.unwrap_or(0));
                    if h.total == 0 {
                        0.0
                    } else {
                        w * (options.overprovisioning * h.healthy as f64 / h.total as f64).min(1.0)
                    }
                })
                .collect();
            let sum: f64 = eff.iter().sum();
            eff.iter()
                .map(|e| if sum > 0.0 { e / sum } else { 0.0 })
                .collect()
        } else {
            health::bucket_loads(
                &routable_health,
                options.spillover,
                options.overprovisioning,
            )
        };
        // on-degraded spread: only for priority rankings (distribute and capacity-aware already
        // set shares by health).
        let mut loads = loads;
        if let (Some(threshold), SnapshotMode::Normal) = (options.degraded_spread, mode) {
            let priority = !fixed_weights.iter().any(Option::is_some)
                && !matches!(rule, RankingRule::CapacityAware);
            let first = by_health.iter().find(|b| b.total > 0);
            if let (true, Some(first)) = (priority, first) {
                let lost = 1.0 - first.healthy as f64 / first.total as f64;
                if lost > threshold {
                    let total: u64 = routable_health.iter().map(|b| b.healthy).sum();
                    loads = routable_health
                        .iter()
                        .map(|b| {
                            if total > 0 {
                                b.healthy as f64 / total as f64
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    mode = SnapshotMode::DegradedSpread;
                }
            }
        }
        // Load-aware spill, on top of whatever the health and policy decided; not in panic or
        // degraded modes, which already spread, nor with consistent hashing, which keeps every
        // keyed request in the best bucket.
        let uses_ring = matches!(balancer.algorithm, Algorithm::ConsistentHash(_));
        let spill_route = (mode == SnapshotMode::Normal && !uses_ring)
            .then(|| {
                let healthy: Vec<u64> = routable_health.iter().map(|b| b.healthy).collect();
                SpillRoute::new(&loads, &healthy)
            })
            .flatten();
        if let Some(route) = &spill_route {
            if options.load_spill > 0.0 {
                route.apply(&mut loads, options.load_spill);
            }
        }
        let hash_bucket = loads.iter().position(|l| *l > 0.0);
        let buckets: Vec<Bucket> = tiers
            .into_iter()
            .zip(labels)
            .zip(ranked)
            .zip(&loads)
            .enumerate()
            .map(|(b, (((tier, label), members), &load))| {
                let eligible: Vec<u32> = members.iter().copied().filter(|&i| routable(i)).collect();
                let healthy_count = members.iter().filter(|&&i| healthy(i)).count();
                let schedule = if load > 0.0 {
                    WeightedSchedule::new(
                        eligible.iter().map(|&i| (i, endpoints[i as usize].weight)),
                    )
                } else {
                    WeightedSchedule::new(std::iter::empty())
                };
                let ring = if uses_ring && hash_bucket == Some(b) {
                    Ring::new(&eligible, &endpoints)
                } else {
                    None
                };
                Bucket {
                    tier,
                    label,
                    members,
                    eligible,
                    healthy: healthy_count,
                    load,
                    schedule,
                    ring,
                }
            })
            .collect();
        let used: Vec<usize> = (0..buckets.len())
            .filter(|&b| buckets[b].load > 0.0)
            .collect();
        let single = (used.len() == 1).then(|| used[0] as u32);
        let mut acc = 0.0;
        let thresholds = if used.len() > 1 {
            loads
                .iter()
                .map(|l| {
                    acc += l;
                    ((acc.min(1.0)) * ONE as f64) as u64
                })
                .collect()
        } else {
            Vec::new()
        };
        ServiceSnapshot {
            gateway,
            policy,
            balancer,
            rule,
            options,
            endpoints,
            health,
            buckets,
            mode,
            using_terminating: !any_ready,
            spill_route,
            thresholds,
            single,
            random_draw: options.load_spill > 0.0,
            draws: AtomicU64::new(0),
        }
    }

    /// The bucket most traffic goes to now.
    pub fn active_bucket(&self) -> Option<usize> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.load > 0.0)
            .max_by(|a, b| a.1.load.total_cmp(&b.1.load).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
    }

    /// The load-aware spill actually moving traffic (0 when there is nowhere to spill).
    pub fn load_spill_in_force(&self) -> f64 {
        if self.spill_route.is_some() {
            self.options.load_spill
        } else {
            0.0
        }
    }

    /// Share of traffic leaving the best bucket that has any endpoint (0 when all stays there).
    pub fn spilled_fraction(&self) -> f64 {
        match self.buckets.iter().position(|b| !b.members.is_empty()) {
            Some(first) => 1.0 - self.buckets[first].load,
            None => 0.0,
        }
    }

    /// The bucket for the next request: by load, drawn from a low-discrepancy sequence (a
    /// Weyl sequence on the golden ratio) rather than a random number, so shares hold exactly
    /// over short runs and no RNG state is shared between threads.
    ///
    /// Under load-aware spill the draw is random instead (the same counter, hashed): the
    /// controller compares the latency of the requests each bucket gets, and a low-discrepancy
    /// draw makes a small share evenly spaced — requests that never queue behind each other
    /// and so read as a less busy bucket than the one getting the bursty rest. Random thinning
    /// keeps both shares as bursty as the traffic itself.
    #[inline]
    fn draw_bucket(&self) -> Option<usize> {
        if let Some(b) = self.single {
            return Some(b as usize);
        }
        if self.thresholds.is_empty() {
            return None;
        }
        let n = step(&self.draws);
        let u = if self.random_draw {
            mix(n) >> 11
        } else {
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11
        };
        let b = self.thresholds.iter().position(|&t| u < t);
        // Rounding can leave the top of the range unassigned: it belongs to the last bucket
        // with load.
        b.or_else(|| self.buckets.iter().rposition(|b| b.load > 0.0))
    }

    /// Picks an endpoint: a bucket by the spillover shares, then the Service's algorithm
    /// inside it (smooth weighted round robin by default). Lock-free: relaxed atomics only.
    #[inline]
    pub fn pick(&self) -> Result<Pick, NoEndpoint> {
        self.pick_for(None)
    }

    /// Like [`ServiceSnapshot::pick`], with the request's hash key for consistent hashing.
    /// Hashed requests always go to the best healthy bucket (the first with traffic), so
    /// stickiness never pulls traffic farther than it has to go.
    #[inline]
    pub fn pick_for(&self, key: Option<u64>) -> Result<Pick, NoEndpoint> {
        if let Some(key) = key {
            if let Some((b, bucket)) = self
                .buckets
                .iter()
                .enumerate()
                .find(|(_, b)| b.ring.is_some())
            {
                let ring = bucket.ring.as_ref().expect("found a ring");
                return Ok(Pick {
                    endpoint: ring.lookup(key),
                    bucket: b as u32,
                });
            }
        }
        let b = self.draw_bucket().ok_or_else(|| self.why_empty())?;
        let bucket = &self.buckets[b];
        let endpoint = match self.balancer.algorithm {
            Algorithm::RoundRobin | Algorithm::ConsistentHash(_) => bucket.schedule.next(),
            Algorithm::Random => {
                let r = mix(step(&self.draws) ^ 0x5bd1_e995);
                bucket.schedule.at(r)
            }
            Algorithm::LeastRequest => {
                // Power of two choices, weighted: two weighted-random candidates, the one with
                // fewer requests in flight per unit of weight wins.
                let r = mix(step(&self.draws) ^ 0x2545_f491);
                match (bucket.schedule.at(r), bucket.schedule.at(r.rotate_left(32))) {
                    (Some(a), Some(c)) => {
                        let load = |i: u32| {
                            u64::from(self.health[i as usize].in_flight.load(Ordering::Relaxed))
                                * 1_000_000
                                / u64::from(self.endpoints[i as usize].weight.max(1))
                        };
                        Some(if load(c) < load(a) { c } else { a })
                    }
                    (a, _) => a,
                }
            }
        };
        match endpoint {
            Some(endpoint) => Ok(Pick {
                endpoint,
                bucket: b as u32,
            }),
            None => Err(self.why_empty()),
        }
    }

    /// The endpoint at `addr`, when it may take traffic now (eligible in a bucket that takes
    /// traffic now): how a session sticks to the endpoint that served it, as long as locality
    /// and health would still send requests there. Linear in the endpoints, and only asked
    /// for requests that carry a session.
    pub fn pick_address(&self, addr: std::net::SocketAddr) -> Option<Pick> {
        let endpoint = self.endpoints.iter().position(|e| e.addr == addr)? as u32;
        let bucket = self
            .buckets
            .iter()
            .position(|b| !b.schedule.is_empty() && b.eligible.contains(&endpoint))?;
        Some(Pick {
            endpoint,
            bucket: bucket as u32,
        })
    }

    /// A pick avoiding endpoints already tried (retries): another endpoint of the drawn
    /// bucket, else of the next buckets in order, else of the earlier ones.
    pub fn pick_excluding(&self, tried: &[u32]) -> Result<Pick, NoEndpoint> {
        let first = self.draw_bucket().ok_or_else(|| self.why_empty())?;
        let order = (first..self.buckets.len()).chain(0..first);
        for b in order {
            let bucket = &self.buckets[b];
            if bucket.schedule.is_empty() {
                continue;
            }
            if bucket.eligible.iter().all(|i| tried.contains(i)) {
                continue;
            }
            for _ in 0..bucket.schedule.period() {
                let e = bucket.schedule.next().expect("non-empty schedule");
                if !tried.contains(&e) {
                    return Ok(Pick {
                        endpoint: e,
                        bucket: b as u32,
                    });
                }
            }
        }
        // Only tried endpoints are left in the buckets with load: try the others, if any.
        for (b, bucket) in self.buckets.iter().enumerate() {
            if let Some(&e) = bucket.eligible.iter().find(|i| !tried.contains(i)) {
                return Ok(Pick {
                    endpoint: e,
                    bucket: b as u32,
                });
            }
        }
        Err(self.why_empty())
    }

    pub fn endpoint(&self, pick: Pick) -> &Endpoint {
        &self.endpoints[pick.endpoint as usize]
    }

    pub fn endpoint_health(&self, pick: Pick) -> &Arc<EndpointHealth> {
        &self.health[pick.endpoint as usize]
    }

    fn why_empty(&self) -> NoEndpoint {
        if self.policy.strict_local && self.buckets.iter().all(|b| b.members.is_empty()) {
            return match &self.gateway.node {
                None => NoEndpoint::StrictNodeUnknown,
                Some(node) => NoEndpoint::StrictNoLocalEndpoint(node.clone()),
            };
        }
        if self.endpoints.is_empty() {
            NoEndpoint::NoEndpoints
        } else if self.options.fail_closed
            && self
                .buckets
                .iter()
                .flat_map(|b| &b.members)
                .any(|&i| self.endpoints[i as usize].state == EndpointState::Ready)
        {
            NoEndpoint::NoneHealthy(self.endpoints.len())
        } else if self.policy.strict_local {
            match &self.gateway.node {
                None => NoEndpoint::StrictNodeUnknown,
                Some(node) => NoEndpoint::StrictNoLocalEndpoint(node.clone()),
            }
        } else {
            NoEndpoint::NoneReady(self.endpoints.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::OutlierPolicy;
    use crate::locality::Locality;
    use crate::ranking::Distribution;
    use std::collections::HashMap;

    fn ep(port: u16, locality: &str) -> Endpoint {
        Endpoint::new(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Locality::parse(locality).unwrap(),
        )
    }

    fn gw() -> GatewayIdentity {
        GatewayIdentity {
            locality: Locality::parse("region/zone").unwrap(),
            node: Some("n1".into()),
            labels: Default::default(),
            cluster: None,
        }
    }

    const PREFER_CLOSE: RoutingPolicy = RoutingPolicy {
        distribution: Distribution::PreferClose,
        strict_local: false,
    };

    fn fresh(eps: &[Endpoint]) -> Vec<Arc<EndpointHealth>> {
        eps.iter()
            .map(|_| Arc::new(EndpointHealth::new()))
            .collect()
    }

    /// `local` endpoints in the gateway's zone (ports 1..), two in the next zone (10, 11).
    fn local_and_two_remote(local: u16) -> Vec<Endpoint> {
        let mut eps: Vec<Endpoint> = (1..=local).map(|p| ep(p, "region/zone")).collect();
        eps.push(ep(10, "region/other-zone"));
        eps.push(ep(11, "region/other-zone"));
        eps
    }

    fn counts(s: &ServiceSnapshot, n: usize) -> HashMap<u16, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let p = s.pick().unwrap();
            *m.entry(s.endpoint(p).addr.port()).or_default() += 1;
        }
        m
    }

    /// The seed walkthrough, step by step, as a table of (endpoints present, expected winner).
    #[test]
    fn seed_walkthrough_steps() {
        let all = vec![
            ep(1, "region/zone"),
            ep(2, "region/other-zone"),
            ep(3, "other-region/zone"),
        ];
        let baseline = ServiceSnapshot::build(gw(), RoutingPolicy::default(), all.clone());
        let c = counts(&baseline, 30);
        assert_eq!((c[&1], c[&2], c[&3]), (10, 10, 10));

        let steps: [(&[usize], u16); 3] = [(&[0, 1, 2], 1), (&[1, 2], 2), (&[2], 3)];
        for (present, winner) in steps {
            let eps = present.iter().map(|&i| all[i].clone()).collect();
            let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, eps);
            assert_eq!(counts(&s, 20), HashMap::from([(winner, 20)]));
        }

        let strict = RoutingPolicy {
            distribution: Distribution::Any,
            strict_local: true,
        };
        let s = ServiceSnapshot::build(gw(), strict, all);
        assert_eq!(
            s.pick(),
            Err(NoEndpoint::StrictNoLocalEndpoint("n1".into()))
        );
    }

    /// A session's endpoint is found while it may take traffic (its bucket in use, itself
    /// ready), and not once it is gone, not ready, or its bucket has no traffic.
    #[test]
    fn an_address_is_picked_while_it_is_eligible() {
        let eps = local_and_two_remote(2);
        let remote: std::net::SocketAddr = "127.0.0.1:11".parse().unwrap();
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, eps.clone());
        let local = s.pick_address(eps[0].addr).unwrap();
        assert_eq!(s.endpoint(local).addr, eps[0].addr);
        assert_eq!(s.pick_address(remote), None, "the local zone takes all");
        assert_eq!(s.pick_address("127.0.0.1:99".parse().unwrap()), None);
        let mut not_ready = eps.clone();
        not_ready[0].state = EndpointState::NotReady;
        not_ready[1].state = EndpointState::NotReady;
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, not_ready);
        assert_eq!(s.pick_address(eps[0].addr), None);
        let p = s.pick_address(remote).unwrap();
        assert_eq!(s.endpoint(p).addr, remote);
    }

    #[test]
    fn not_ready_endpoints_are_skipped_and_bucket_fails_over() {
        let eps = vec![
            ep(1, "region/zone").with_state(EndpointState::NotReady),
            ep(2, "region/other-zone"),
        ];
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, eps);
        assert_eq!(s.active_bucket(), Some(1));
        assert_eq!(counts(&s, 5), HashMap::from([(2, 5)]));
    }

    #[test]
    fn terminating_serving_used_only_when_nothing_is_ready() {
        let eps = vec![
            ep(1, "region/zone").with_state(EndpointState::TerminatingServing),
            ep(2, "other-region/zone"),
        ];
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, eps.clone());
        assert_eq!(counts(&s, 4), HashMap::from([(2, 4)]));
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, eps[..1].to_vec());
        assert!(s.using_terminating);
        assert_eq!(counts(&s, 4), HashMap::from([(1, 4)]));
    }

    #[test]
    fn weights_split_within_a_bucket() {
        let eps = vec![
            ep(1, "region/zone").with_weight(3),
            ep(2, "region/zone").with_weight(1),
            ep(3, "other-region/zone").with_weight(100),
        ];
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, eps);
        assert_eq!(counts(&s, 400), HashMap::from([(1, 300), (2, 100)]));
    }

    #[test]
    fn empty_reasons() {
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, vec![]);
        assert_eq!(s.pick(), Err(NoEndpoint::NoEndpoints));
        let s = ServiceSnapshot::build(
            gw(),
            PREFER_CLOSE,
            vec![ep(1, "region/zone").with_state(EndpointState::NotReady)],
        );
        assert_eq!(s.pick(), Err(NoEndpoint::NoneReady(1)));
        let strict = RoutingPolicy {
            distribution: Distribution::Any,
            strict_local: true,
        };
        let s = ServiceSnapshot::build(GatewayIdentity::default(), strict, vec![ep(1, "r/z")]);
        assert_eq!(s.pick(), Err(NoEndpoint::StrictNodeUnknown));
    }

    #[test]
    fn load_spill_moves_a_share_of_the_closest_bucket_to_the_next() {
        let eps = local_and_two_remote(2);
        let build = |spill: f64, eps: Vec<Endpoint>, health| {
            ServiceSnapshot::build_with_health(
                gw(),
                PREFER_CLOSE,
                Arc::default(),
                HealthOptions {
                    load_spill: spill,
                    ..Default::default()
                },
                eps,
                health,
                0,
            )
        };
        let s = build(0.0, eps.clone(), fresh(&eps));
        let route = s.spill_route.clone().expect("a next bucket exists");
        assert_eq!(route.from, 0);
        assert_eq!(route.to.len(), 1);
        assert_eq!(s.spilled_fraction(), 0.0);
        let s = build(0.25, eps.clone(), fresh(&eps));
        assert!((s.spilled_fraction() - 0.25).abs() < 1e-9);
        let c = counts(&s, 4_000);
        // Under load spill buckets are drawn at random: 1,000 ± 27 (one sd).
        assert!((c[&10] + c[&11]).abs_diff(1_000) <= 100, "{c:?}");
        // On top of health-based spill: the moved share follows the existing receivers.
        let health = fresh(&eps);
        health[0].eject(&OutlierPolicy::default(), 0).unwrap();
        let base = build(0.0, eps.clone(), health.clone());
        let kept = 1.0 - base.spilled_fraction();
        let s = build(0.5, eps.clone(), health);
        assert!((1.0 - s.spilled_fraction() - kept * 0.5).abs() < 1e-9);
        // Nowhere to go: no route, nothing moves.
        let local_only: Vec<Endpoint> = eps[..2].to_vec();
        let s = build(0.5, local_only.clone(), fresh(&local_only));
        assert!(s.spill_route.is_none());
        assert_eq!(s.spilled_fraction(), 0.0);
    }

    /// Five local endpoints, two ejected: 1.4 × 3/5 = 84% stays local, 16% spills.
    fn five_local_two_down(options: HealthOptions) -> ServiceSnapshot {
        let eps = local_and_two_remote(5);
        let health = fresh(&eps);
        let p = OutlierPolicy::default();
        health[0].eject(&p, 0).unwrap();
        health[1].eject(&p, 0).unwrap();
        ServiceSnapshot::build_with_health(
            gw(),
            PREFER_CLOSE,
            Arc::default(),
            options,
            eps,
            health,
            1,
        )
    }

    #[test]
    fn proportional_spillover_sheds_gradually() {
        let s = five_local_two_down(HealthOptions::default());
        assert_eq!(s.mode, SnapshotMode::Normal);
        assert!((s.buckets[0].load - 0.84).abs() < 1e-9);
        let c = counts(&s, 10_000);
        let local: usize = (3..=5).map(|p| c.get(&p).copied().unwrap_or(0)).sum();
        assert!((8_350..=8_450).contains(&local), "{c:?}");
        assert_eq!(c.get(&1), None);
        assert_eq!(c.get(&2), None);
        assert!((s.spilled_fraction() - 0.16).abs() < 1e-9);
    }

    #[test]
    fn all_or_nothing_keeps_everything_local_while_one_is_healthy() {
        let s = five_local_two_down(HealthOptions {
            spillover: Spillover::AllOrNothing,
            ..HealthOptions::default()
        });
        let c = counts(&s, 300);
        assert_eq!(c, HashMap::from([(3, 100), (4, 100), (5, 100)]));
    }

    #[test]
    fn panic_uses_every_ready_endpoint() {
        let s = five_local_two_down(HealthOptions {
            min_health_percent: 80,
            ..HealthOptions::default()
        });
        // 5 healthy of 7 is 71% < 80%: panic, all seven are used with ejected ones included.
        assert_eq!(s.mode, SnapshotMode::Panic);
        let c = counts(&s, 700);
        assert!(c.contains_key(&1) && c.contains_key(&2), "{c:?}");
    }

    #[test]
    fn last_resort_and_fail_closed() {
        let eps = vec![
            ep(1, "region/zone"),
            ep(2, "other-region/zone").with_state(EndpointState::NotReady),
        ];
        let health = fresh(&eps);
        health[0].eject(&OutlierPolicy::default(), 0).unwrap();
        let s = ServiceSnapshot::build_with_health(
            gw(),
            PREFER_CLOSE,
            Arc::default(),
            HealthOptions::default(),
            eps.clone(),
            health.clone(),
            1,
        );
        assert_eq!(s.mode, SnapshotMode::LastResort);
        // The ejected endpoint is tried; the not-ready one never is.
        assert_eq!(counts(&s, 5), HashMap::from([(1, 5)]));
        let closed = HealthOptions {
            fail_closed: true,
            ..HealthOptions::default()
        };
        let s = ServiceSnapshot::build_with_health(
            gw(),
            PREFER_CLOSE,
            Arc::default(),
            closed,
            eps,
            health,
            1,
        );
        assert_eq!(s.mode, SnapshotMode::Empty);
        assert_eq!(s.pick(), Err(NoEndpoint::NoneHealthy(2)));
    }

    #[test]
    fn pick_excluding_moves_to_the_next_bucket_when_its_own_is_exhausted() {
        let eps = vec![
            ep(1, "region/zone"),
            ep(2, "region/zone"),
            ep(3, "region/other-zone"),
        ];
        let s = ServiceSnapshot::build(gw(), PREFER_CLOSE, eps);
        let p = s.pick_excluding(&[0]).unwrap();
        assert_eq!(p.endpoint, 1);
        let p = s.pick_excluding(&[0, 1]).unwrap();
        assert_eq!((p.endpoint, p.bucket), (2, 1));
        assert!(s.pick_excluding(&[0, 1, 2]).is_err());
    }

    fn with_balancer(eps: Vec<Endpoint>, balancer: BalancerConfig) -> ServiceSnapshot {
        let health = fresh(&eps);
        ServiceSnapshot::build_with_health(
            gw(),
            RoutingPolicy::default(),
            Arc::new(balancer),
            HealthOptions::default(),
            eps,
            health,
            1,
        )
    }

    #[test]
    fn distribute_weights_hold_within_two_percent_and_fail_over() {
        use crate::policy::{DistributeRule, LocalityLbSetting, LocalityPattern};
        let p = |s: &str| LocalityPattern::parse(s).unwrap();
        let lb = LocalityLbSetting {
            distribute: vec![DistributeRule {
                from: p("region/*"),
                to: vec![(p("region/*"), 80), (p("other-region/*"), 20)],
            }],
            ..Default::default()
        };
        let balancer = BalancerConfig {
            locality: Some(lb),
            ..Default::default()
        };
        let eps = vec![
            ep(1, "region/zone"),
            ep(2, "region/other-zone"),
            ep(3, "other-region/zone"),
        ];
        let s = with_balancer(eps.clone(), balancer.clone());
        let c = counts(&s, 10_000);
        let local = c[&1] + c[&2];
        assert!((7_800..=8_200).contains(&local), "{c:?}");
        assert!(
            (c[&1] as i64 - c[&2] as i64).abs() <= 1,
            "spread evenly inside a target: {c:?}"
        );
        // The 20% target has nothing healthy: its share goes to the other target.
        let health = fresh(&eps);
        health[2].eject(&OutlierPolicy::default(), 0).unwrap();
        let s = ServiceSnapshot::build_with_health(
            gw(),
            RoutingPolicy::default(),
            Arc::new(balancer),
            HealthOptions::default(),
            eps,
            health,
            1,
        );
        let c = counts(&s, 1_000);
        assert_eq!(c.get(&3), None, "{c:?}");
    }

    #[test]
    fn least_request_prefers_the_less_loaded_endpoint() {
        let eps = vec![ep(1, "region/zone"), ep(2, "region/zone")];
        let s = with_balancer(
            eps,
            BalancerConfig {
                algorithm: Algorithm::LeastRequest,
                ..Default::default()
            },
        );
        s.health[0].in_flight.store(50, Ordering::Relaxed);
        let c = counts(&s, 1_000);
        // Whenever both candidates differ, the idle one wins: endpoint 1 only when drawn twice.
        assert!(c.get(&1).copied().unwrap_or(0) < 350, "{c:?}");
        assert!(c[&2] > 650, "{c:?}");
    }

    #[test]
    fn every_algorithm_honours_weights() {
        let eps = vec![
            ep(1, "region/zone").with_weight(3),
            ep(2, "region/zone").with_weight(1),
        ];
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::LeastRequest,
        ] {
            let s = with_balancer(
                eps.clone(),
                BalancerConfig {
                    algorithm: algorithm.clone(),
                    ..Default::default()
                },
            );
            let c = counts(&s, 8_000);
            let share = c[&1] as f64 / 8_000.0;
            assert!((0.72..=0.78).contains(&share), "{algorithm:?}: {c:?}");
        }
        // Hashing: keys spread over the ring in proportion to weight.
        let s = with_balancer(
            eps,
            BalancerConfig {
                algorithm: Algorithm::ConsistentHash(crate::policy::HashOn::SourceIp),
                ..Default::default()
            },
        );
        let mut c = HashMap::new();
        for k in 0..8_000u64 {
            let p = s.pick_for(Some(hash_bytes(&k.to_le_bytes()))).unwrap();
            *c.entry(s.endpoint(p).addr.port()).or_insert(0usize) += 1;
        }
        let share = c[&1] as f64 / 8_000.0;
        assert!((0.70..=0.80).contains(&share), "{c:?}");
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys_when_an_endpoint_goes() {
        let n = 10;
        let eps: Vec<Endpoint> = (1..=n).map(|p| ep(p, "region/zone")).collect();
        let cfg = BalancerConfig {
            algorithm: Algorithm::ConsistentHash(crate::policy::HashOn::SourceIp),
            ..Default::default()
        };
        let before = with_balancer(eps.clone(), cfg.clone());
        let after = with_balancer(eps[1..].to_vec(), cfg);
        let keys = 20_000u64;
        let mut moved = 0;
        for k in 0..keys {
            let h = hash_bytes(&k.to_le_bytes());
            let a = before.endpoint(before.pick_for(Some(h)).unwrap()).addr;
            let b = after.endpoint(after.pick_for(Some(h)).unwrap()).addr;
            if a != b {
                moved += 1;
                assert_eq!(a.port(), 1, "only keys of the removed endpoint move");
            }
        }
        let frac = moved as f64 / keys as f64;
        assert!(frac < 1.5 / n as f64, "moved {frac}");
    }

    #[test]
    fn hashing_stays_in_the_best_healthy_bucket() {
        let eps = vec![
            ep(1, "region/zone"),
            ep(2, "other-region/zone"),
            ep(3, "other-region/zone"),
        ];
        let s = ServiceSnapshot::build_with_health(
            gw(),
            PREFER_CLOSE,
            Arc::new(BalancerConfig {
                algorithm: Algorithm::ConsistentHash(crate::policy::HashOn::SourceIp),
                ..Default::default()
            }),
            HealthOptions::default(),
            eps.clone(),
            fresh(&eps),
            1,
        );
        for k in 0..100u64 {
            let p = s.pick_for(Some(hash_bytes(&k.to_le_bytes()))).unwrap();
            assert_eq!(s.endpoint(p).addr.port(), 1);
        }
    }

    #[test]
    fn degraded_zone_spreads_over_everything_until_it_recovers() {
        let eps = local_and_two_remote(4);
        let health = fresh(&eps);
        let options = HealthOptions {
            degraded_spread: Some(0.25),
            ..HealthOptions::default()
        };
        let build = |health: &Vec<Arc<EndpointHealth>>| {
            ServiceSnapshot::build_with_health(
                gw(),
                PREFER_CLOSE,
                Arc::default(),
                options,
                eps.clone(),
                health.clone(),
                1,
            )
        };
        // One of four lost (25%): not more than the threshold, all stays local.
        health[0].eject(&OutlierPolicy::default(), 0).unwrap();
        let s = build(&health);
        assert_eq!(s.mode, SnapshotMode::Normal);
        assert_eq!(s.buckets[0].load, 1.0);
        // Two of four lost: spread evenly over the four healthy endpoints.
        health[1].eject(&OutlierPolicy::default(), 0).unwrap();
        let s = build(&health);
        assert_eq!(s.mode, SnapshotMode::DegradedSpread);
        let c = counts(&s, 4_000);
        for port in [3, 4, 10, 11] {
            assert!((950..=1_050).contains(&c[&port]), "{c:?}");
        }
    }
}
