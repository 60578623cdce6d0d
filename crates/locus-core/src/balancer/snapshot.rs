//! The immutable view of one Service port that request handlers pick from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::balancer::schedule::WeightedSchedule;
use crate::endpoint::{Endpoint, EndpointState};
use crate::health::{self, BucketHealth, EndpointHealth, Spillover};
use crate::ranking::{self, GatewayIdentity, RoutingPolicy, Tier};

/// One priority bucket of a snapshot.
#[derive(Debug)]
pub struct Bucket {
    pub tier: Tier,
    /// Every endpoint ranked into this bucket (indices into [`ServiceSnapshot::endpoints`]).
    pub members: Vec<u32>,
    /// The members that may receive traffic now.
    pub eligible: Vec<u32>,
    /// Members that are ready and healthy (equals `eligible` in normal mode).
    pub healthy: usize,
    /// Share of the Service's traffic this bucket gets now (0..=1).
    pub load: f64,
    schedule: WeightedSchedule,
}

impl Bucket {
    pub fn is_usable(&self) -> bool {
        !self.schedule.is_empty()
    }
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
    /// Nothing routable.
    Empty,
}

impl SnapshotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::Normal => "normal",
            SnapshotMode::Panic => "panic",
            SnapshotMode::LastResort => "last-resort",
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
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            spillover: Spillover::Proportional,
            overprovisioning: health::DEFAULT_OVERPROVISIONING,
            min_health_percent: 0,
            fail_closed: false,
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
    pub options: HealthOptions,
    pub endpoints: Vec<Endpoint>,
    /// Parallel to `endpoints`: shared per-endpoint health.
    pub health: Vec<Arc<EndpointHealth>>,
    pub buckets: Vec<Bucket>,
    pub mode: SnapshotMode,
    /// True when no endpoint was ready and terminating-but-serving ones are used instead.
    pub using_terminating: bool,
    /// Cumulative bucket loads in [`ONE`] units; empty when one bucket takes everything.
    thresholds: Vec<u64>,
    /// The bucket taking all traffic, when there is one.
    single: Option<u32>,
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
            HealthOptions::default(),
            endpoints,
            health,
            0,
        )
    }

    pub fn build_with_health(
        gateway: GatewayIdentity,
        policy: RoutingPolicy,
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
        let ranked = ranking::rank(&gateway, policy, &endpoints);
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
        let (mode, routable): (SnapshotMode, &dyn Fn(u32) -> bool) = if panic {
            (SnapshotMode::Panic, &ready)
        } else if any_healthy {
            (SnapshotMode::Normal, &healthy)
        } else if any_ready_now && !options.fail_closed {
            (SnapshotMode::LastResort, &ready)
        } else {
            (SnapshotMode::Empty, &healthy)
        };
        let loads = health::bucket_loads(
            &bucket_health(routable),
            options.spillover,
            options.overprovisioning,
        );
        let buckets: Vec<Bucket> = ranking::tiers(policy)
            .iter()
            .zip(ranked)
            .zip(&loads)
            .map(|((&tier, members), &load)| {
                let eligible: Vec<u32> = members.iter().copied().filter(|&i| routable(i)).collect();
                let healthy_count = members.iter().filter(|&&i| healthy(i)).count();
                let schedule = if load > 0.0 {
                    WeightedSchedule::new(
                        eligible.iter().map(|&i| (i, endpoints[i as usize].weight)),
                    )
                } else {
                    WeightedSchedule::new(std::iter::empty())
                };
                Bucket {
                    tier,
                    members,
                    eligible,
                    healthy: healthy_count,
                    load,
                    schedule,
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
            options,
            endpoints,
            health,
            buckets,
            mode,
            using_terminating: !any_ready,
            thresholds,
            single,
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
    #[inline]
    fn draw_bucket(&self) -> Option<usize> {
        if let Some(b) = self.single {
            return Some(b as usize);
        }
        if self.thresholds.is_empty() {
            return None;
        }
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let u = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        let b = self.thresholds.iter().position(|&t| u < t);
        // Rounding can leave the top of the range unassigned: it belongs to the last bucket
        // with load.
        b.or_else(|| self.buckets.iter().rposition(|b| b.load > 0.0))
    }

    /// Picks an endpoint: a bucket by the spillover shares, then smooth weighted round robin
    /// inside it. Lock-free: two relaxed atomic increments at most.
    #[inline]
    pub fn pick(&self) -> Result<Pick, NoEndpoint> {
        let b = self.draw_bucket().ok_or_else(|| self.why_empty())?;
        match self.buckets[b].schedule.next() {
            Some(endpoint) => Ok(Pick {
                endpoint,
                bucket: b as u32,
            }),
            None => Err(self.why_empty()),
        }
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
        }
    }

    const PREFER_CLOSE: RoutingPolicy = RoutingPolicy {
        distribution: Distribution::PreferClose,
        strict_local: false,
    };

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

    /// Five local endpoints, two ejected: 1.4 × 3/5 = 84% stays local, 16% spills.
    fn five_local_two_down(options: HealthOptions) -> ServiceSnapshot {
        let mut eps: Vec<Endpoint> = (1..=5).map(|p| ep(p, "region/zone")).collect();
        eps.push(ep(10, "region/other-zone"));
        eps.push(ep(11, "region/other-zone"));
        let health: Vec<Arc<EndpointHealth>> = eps
            .iter()
            .map(|_| Arc::new(EndpointHealth::new()))
            .collect();
        let p = OutlierPolicy::default();
        health[0].eject(&p, 0).unwrap();
        health[1].eject(&p, 0).unwrap();
        ServiceSnapshot::build_with_health(gw(), PREFER_CLOSE, options, eps, health, 1)
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
        let health: Vec<Arc<EndpointHealth>> = eps
            .iter()
            .map(|_| Arc::new(EndpointHealth::new()))
            .collect();
        health[0].eject(&OutlierPolicy::default(), 0).unwrap();
        let s = ServiceSnapshot::build_with_health(
            gw(),
            PREFER_CLOSE,
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
        let s = ServiceSnapshot::build_with_health(gw(), PREFER_CLOSE, closed, eps, health, 1);
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
}
