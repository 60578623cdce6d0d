//! The immutable view of one Service port that request handlers pick from.

use crate::balancer::schedule::WeightedSchedule;
use crate::endpoint::{Endpoint, EndpointState};
use crate::ranking::{self, GatewayIdentity, RoutingPolicy, Tier};

/// One priority bucket of a snapshot.
#[derive(Debug)]
pub struct Bucket {
    pub tier: Tier,
    /// Every endpoint ranked into this bucket (indices into [`ServiceSnapshot::endpoints`]).
    pub members: Vec<u32>,
    /// The members that may receive traffic now.
    pub eligible: Vec<u32>,
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
}

/// Endpoints of one Service port ranked against the gateway's locality, ready to pick from.
///
/// Built by a single writer whenever the inputs change and published whole, so a request sees
/// the buckets, their members and their schedules from one consistent moment.
#[derive(Debug)]
pub struct ServiceSnapshot {
    pub gateway: GatewayIdentity,
    pub policy: RoutingPolicy,
    pub endpoints: Vec<Endpoint>,
    pub buckets: Vec<Bucket>,
    /// True when no endpoint was ready and terminating-but-serving ones are used instead.
    pub using_terminating: bool,
}

impl ServiceSnapshot {
    pub fn build(
        gateway: GatewayIdentity,
        policy: RoutingPolicy,
        endpoints: Vec<Endpoint>,
    ) -> Self {
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
        let buckets = ranking::tiers(policy)
            .iter()
            .zip(ranked)
            .map(|(&tier, members)| {
                let eligible: Vec<u32> = members
                    .iter()
                    .copied()
                    .filter(|&i| endpoints[i as usize].state == wanted)
                    .collect();
                let schedule = WeightedSchedule::new(
                    eligible.iter().map(|&i| (i, endpoints[i as usize].weight)),
                );
                Bucket {
                    tier,
                    members,
                    eligible,
                    schedule,
                }
            })
            .collect();
        ServiceSnapshot {
            gateway,
            policy,
            endpoints,
            buckets,
            using_terminating: !any_ready,
        }
    }

    /// The bucket traffic goes to now: the best one with an eligible endpoint.
    pub fn active_bucket(&self) -> Option<usize> {
        self.buckets.iter().position(Bucket::is_usable)
    }

    /// Picks an endpoint: failover to the best usable bucket, smooth weighted round robin
    /// inside it. Lock-free: one atomic increment.
    #[inline]
    pub fn pick(&self) -> Result<Pick, NoEndpoint> {
        for (b, bucket) in self.buckets.iter().enumerate() {
            if let Some(endpoint) = bucket.schedule.next() {
                return Ok(Pick {
                    endpoint,
                    bucket: b as u32,
                });
            }
        }
        Err(self.why_empty())
    }

    pub fn endpoint(&self, pick: Pick) -> &Endpoint {
        &self.endpoints[pick.endpoint as usize]
    }

    fn why_empty(&self) -> NoEndpoint {
        if self.policy.strict_local {
            return match &self.gateway.node {
                None => NoEndpoint::StrictNodeUnknown,
                Some(node) => NoEndpoint::StrictNoLocalEndpoint(node.clone()),
            };
        }
        if self.endpoints.is_empty() {
            NoEndpoint::NoEndpoints
        } else {
            NoEndpoint::NoneReady(self.endpoints.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
