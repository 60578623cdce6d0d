//! Ranking endpoints into ordered priority buckets against the gateway's own locality.
//!
//! The tiers mean what they mean in agentgateway and Istio ambient: for `PreferClose` /
//! `PreferSameZone`, same zone → same region → elsewhere; for `PreferSameNode`, same node →
//! same subzone → same zone → same region → elsewhere. Without a `trafficDistribution`, every
//! endpoint is in a single bucket. `internalTrafficPolicy: Local` is strict: one bucket holding
//! only the endpoints on the gateway's node, and nothing else is ever used.

use std::fmt;

use crate::endpoint::Endpoint;
use crate::locality::{Locality, Relation};

/// Where the gateway itself runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayIdentity {
    pub locality: Locality,
    pub node: Option<String>,
    /// The gateway's own labels, for `failoverPriority` keys other than the topology ones.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The cluster the gateway runs in (`--cluster`, `CLUSTER_NAME`, or the MCS
    /// ClusterProperty `cluster.clusterset.k8s.io`).
    pub cluster: Option<String>,
}

impl GatewayIdentity {
    /// How an endpoint relates to this gateway, node included. Node names are unique only
    /// within a cluster: an endpoint in another cluster is never on the gateway's node.
    pub fn relation(&self, ep: &Endpoint) -> Relation {
        match (&self.node, &ep.node) {
            // Another cluster's node may share the name: only a known-local endpoint counts.
            (Some(mine), Some(theirs))
                if mine.as_str() == &**theirs
                    && (ep.cluster.is_none()
                        || self.cluster.is_some() && self.in_own_cluster(ep)) =>
            {
                Relation::SameNode
            }
            _ => self.locality.relation(&ep.locality),
        }
    }

    /// Whether `ep` runs in the gateway's own cluster. An endpoint without a cluster is
    /// local (it came from the gateway's own API server or manifests); one naming a cluster
    /// is local when that is the gateway's, or when the gateway's own cluster is unknown
    /// (then nothing can be preferred, and `locus check` says so).
    pub fn in_own_cluster(&self, ep: &Endpoint) -> bool {
        match (&ep.cluster, &self.cluster) {
            (None, _) | (_, None) => true,
            (Some(theirs), Some(mine)) => &**theirs == mine.as_str(),
        }
    }

    /// The cluster `ep` runs in, by name (`""` when neither side knows).
    pub fn cluster_of<'a>(&'a self, ep: &'a Endpoint) -> &'a str {
        ep.cluster
            .as_deref()
            .or(self.cluster.as_deref())
            .unwrap_or("")
    }
}

/// `spec.trafficDistribution` of a Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Not set: locality-blind.
    #[default]
    Any,
    /// `PreferClose`, the older name of `PreferSameZone`.
    PreferClose,
    PreferSameZone,
    PreferSameNode,
}

impl Distribution {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "PreferClose" => Some(Distribution::PreferClose),
            "PreferSameZone" => Some(Distribution::PreferSameZone),
            "PreferSameNode" => Some(Distribution::PreferSameNode),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Any => "none",
            Distribution::PreferClose => "PreferClose",
            Distribution::PreferSameZone => "PreferSameZone",
            Distribution::PreferSameNode => "PreferSameNode",
        }
    }

    /// Whether this distribution needs the gateway's locality to mean anything.
    pub fn uses_locality(self) -> bool {
        !matches!(self, Distribution::Any)
    }
}

/// How a Service's endpoints are ranked and how far traffic may go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RoutingPolicy {
    pub distribution: Distribution,
    /// `internalTrafficPolicy: Local`: only same-node endpoints, never spill (takes precedence
    /// over `distribution`, as in Kubernetes).
    pub strict_local: bool,
}

/// The meaning of one priority bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Locality-blind: every endpoint.
    All,
    /// Strict: endpoints on the gateway's node, nothing else allowed.
    LocalNodeOnly,
    SameNode,
    SameSubzone,
    SameZone,
    SameRegion,
    /// The region named by a `failover` rule.
    FailoverRegion,
    /// `failoverPriority`: this many leading labels match.
    Priority(u8),
    Elsewhere,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::All => "all",
            Tier::LocalNodeOnly => "same-node (strict)",
            Tier::SameNode => "same-node",
            Tier::SameSubzone => "same-subzone",
            Tier::SameZone => "same-zone",
            Tier::SameRegion => "same-region",
            Tier::FailoverRegion => "failover-region",
            Tier::Priority(_) => "priority",
            Tier::Elsewhere => "elsewhere",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tiers a policy ranks into, best first.
pub fn tiers(policy: RoutingPolicy) -> &'static [Tier] {
    if policy.strict_local {
        return &[Tier::LocalNodeOnly];
    }
    match policy.distribution {
        Distribution::Any => &[Tier::All],
        Distribution::PreferClose | Distribution::PreferSameZone => {
            &[Tier::SameZone, Tier::SameRegion, Tier::Elsewhere]
        }
        Distribution::PreferSameNode => &[
            Tier::SameNode,
            Tier::SameSubzone,
            Tier::SameZone,
            Tier::SameRegion,
            Tier::Elsewhere,
        ],
    }
}

/// The tier an endpoint falls in under `policy`, or `None` when the policy excludes it
/// (strict mode, other node).
pub fn tier_of(gw: &GatewayIdentity, policy: RoutingPolicy, ep: &Endpoint) -> Option<Tier> {
    let relation = gw.relation(ep);
    if policy.strict_local {
        return (relation == Relation::SameNode).then_some(Tier::LocalNodeOnly);
    }
    Some(match policy.distribution {
        Distribution::Any => Tier::All,
        Distribution::PreferClose | Distribution::PreferSameZone => match relation {
            // Subzones are ignored by the zone preferences: a same-node or same-subzone
            // endpoint is simply in the gateway's zone (when it is: an endpoint on the same
            // node with no locality of its own still inherits the node's).
            Relation::SameNode if ep.locality.is_unknown() => Tier::SameZone,
            Relation::SameNode => bucket_by_locality(gw.locality.relation(&ep.locality)),
            other => bucket_by_locality(other),
        },
        Distribution::PreferSameNode => match relation {
            Relation::SameNode => Tier::SameNode,
            Relation::SameSubzone => Tier::SameSubzone,
            Relation::SameZone => Tier::SameZone,
            Relation::SameRegion => Tier::SameRegion,
            Relation::CrossRegion => Tier::Elsewhere,
        },
    })
}

fn bucket_by_locality(relation: Relation) -> Tier {
    match relation {
        Relation::SameNode | Relation::SameSubzone | Relation::SameZone => Tier::SameZone,
        Relation::SameRegion => Tier::SameRegion,
        Relation::CrossRegion => Tier::Elsewhere,
    }
}

/// Ranks endpoints into the policy's buckets: `result[i]` lists the indices (into `endpoints`)
/// of the endpoints in the i-th tier of [`tiers`]. Endpoints the policy excludes are in no
/// bucket. Order within a bucket follows `endpoints`.
pub fn rank(gw: &GatewayIdentity, policy: RoutingPolicy, endpoints: &[Endpoint]) -> Vec<Vec<u32>> {
    let tiers = tiers(policy);
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); tiers.len()];
    for (i, ep) in endpoints.iter().enumerate() {
        if let Some(tier) = tier_of(gw, policy, ep) {
            let slot = tiers
                .iter()
                .position(|t| *t == tier)
                .expect("tier_of returns one of tiers()");
            buckets[slot].push(i as u32);
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn ep(port: u16, locality: &str) -> Endpoint {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        Endpoint::new(addr, Locality::parse(locality).unwrap())
    }

    fn gw(locality: &str, node: Option<&str>) -> GatewayIdentity {
        GatewayIdentity {
            locality: Locality::parse(locality).unwrap(),
            node: node.map(str::to_owned),
            labels: Default::default(),
            cluster: None,
        }
    }

    fn seed_endpoints() -> Vec<Endpoint> {
        vec![
            ep(1, "region/zone"),
            ep(2, "region/other-zone"),
            ep(3, "other-region/zone"),
        ]
    }

    #[test]
    fn no_distribution_is_one_bucket() {
        let b = rank(
            &gw("region/zone", None),
            RoutingPolicy::default(),
            &seed_endpoints(),
        );
        assert_eq!(b, vec![vec![0, 1, 2]]);
    }

    #[test]
    fn prefer_close_ranks_zone_region_elsewhere() {
        for d in [Distribution::PreferClose, Distribution::PreferSameZone] {
            let policy = RoutingPolicy {
                distribution: d,
                strict_local: false,
            };
            let b = rank(&gw("region/zone", None), policy, &seed_endpoints());
            assert_eq!(b, vec![vec![0], vec![1], vec![2]], "{d:?}");
        }
    }

    #[test]
    fn prefer_close_ignores_subzone() {
        let policy = RoutingPolicy {
            distribution: Distribution::PreferClose,
            strict_local: false,
        };
        let eps = vec![ep(1, "r/z/s1"), ep(2, "r/z/s2"), ep(3, "r/z")];
        let b = rank(&gw("r/z/s1", None), policy, &eps);
        assert_eq!(b, vec![vec![0, 1, 2], vec![], vec![]]);
    }

    #[test]
    fn prefer_same_node_has_five_tiers() {
        let policy = RoutingPolicy {
            distribution: Distribution::PreferSameNode,
            strict_local: false,
        };
        let eps = vec![
            ep(1, "r/z/s1").with_node("n1"),
            ep(2, "r/z/s1").with_node("n2"),
            ep(3, "r/z/s2").with_node("n3"),
            ep(4, "r/z2").with_node("n4"),
            ep(5, "r2/z").with_node("n5"),
        ];
        let b = rank(&gw("r/z/s1", Some("n1")), policy, &eps);
        assert_eq!(b, vec![vec![0], vec![1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn unknown_gateway_locality_puts_everything_elsewhere() {
        let policy = RoutingPolicy {
            distribution: Distribution::PreferClose,
            strict_local: false,
        };
        let b = rank(&gw("", None), policy, &seed_endpoints());
        assert_eq!(b, vec![vec![], vec![], vec![0, 1, 2]]);
    }

    #[test]
    fn strict_keeps_only_same_node() {
        let policy = RoutingPolicy {
            distribution: Distribution::PreferClose,
            strict_local: true,
        };
        let eps = vec![
            ep(1, "region/zone").with_node("n1"),
            ep(2, "region/zone").with_node("n2"),
            ep(3, "region/zone"),
        ];
        assert_eq!(
            rank(&gw("region/zone", Some("n1")), policy, &eps),
            vec![vec![0]]
        );
        // Gateway node unknown: nothing is local.
        assert_eq!(
            rank(&gw("region/zone", None), policy, &eps),
            vec![Vec::<u32>::new()]
        );
        // WorkloadEntries have no node: the seed's strict step gets nothing.
        assert_eq!(
            rank(&gw("region/zone", Some("n1")), policy, &seed_endpoints()),
            vec![Vec::<u32>::new()]
        );
    }

    #[test]
    fn same_node_endpoint_without_locality_counts_as_same_zone() {
        let policy = RoutingPolicy {
            distribution: Distribution::PreferClose,
            strict_local: false,
        };
        let eps = vec![ep(1, "").with_node("n1")];
        assert_eq!(
            rank(&gw("region/zone", Some("n1")), policy, &eps),
            vec![vec![0], vec![], vec![]]
        );
    }
}
