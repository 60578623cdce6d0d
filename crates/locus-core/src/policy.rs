//! Policies beyond "nearest first": Istio's `localityLbSetting` (distribute, failover,
//! failoverPriority), Kubernetes topology hints, and the balancing algorithm used inside a
//! bucket. [`rank_buckets`] turns them, with the Kubernetes fields of [`RoutingPolicy`], into
//! the buckets a snapshot routes over.

use std::collections::BTreeMap;
use std::fmt;

use crate::endpoint::Endpoint;
use crate::locality::Locality;
use crate::ranking::{self, GatewayIdentity, RoutingPolicy, Tier};

/// A locality with `*` wildcards at any level (`us-central1/*`, `*`, `r/z/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityPattern {
    parts: Vec<String>,
}

impl LocalityPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty locality".into());
        }
        let parts: Vec<String> = s.split('/').map(str::to_owned).collect();
        if parts.len() > 3 || parts.iter().any(String::is_empty) {
            return Err(format!(
                "{s:?} is not region/zone/subzone (with * wildcards)"
            ));
        }
        Ok(LocalityPattern { parts })
    }

    /// Whether `l` matches: each given level equal or `*`; a trailing `*` matches the rest.
    pub fn matches(&self, l: &Locality) -> bool {
        let levels = [l.region.as_str(), l.zone.as_str(), l.subzone.as_str()];
        for (i, p) in self.parts.iter().enumerate() {
            if p == "*" {
                if i == self.parts.len() - 1 {
                    return true;
                }
                continue;
            }
            if levels[i] != p {
                return false;
            }
        }
        true
    }
}

impl fmt::Display for LocalityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("/"))
    }
}

/// One `distribute` rule: traffic from `from` split by weight over `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributeRule {
    pub from: LocalityPattern,
    pub to: Vec<(LocalityPattern, u32)>,
}

/// One `failoverPriority` entry: a label key (compared with the gateway's own value) or
/// `key=value` (endpoints carrying that value match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriorityLabel {
    Key(String),
    KeyValue(String, String),
}

pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Istio's cluster label: a `failoverPriority` key, compared with the gateway's cluster.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";

impl PriorityLabel {
    pub fn parse(s: &str) -> Self {
        match s.split_once('=') {
            Some((k, v)) => PriorityLabel::KeyValue(k.trim().to_owned(), v.trim().to_owned()),
            None => PriorityLabel::Key(s.trim().to_owned()),
        }
    }
}

/// Istio `localityLbSetting`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityLbSetting {
    pub enabled: bool,
    pub distribute: Vec<DistributeRule>,
    /// `(from region, to region)`.
    pub failover: Vec<(String, String)>,
    pub failover_priority: Vec<PriorityLabel>,
}

impl Default for LocalityLbSetting {
    fn default() -> Self {
        LocalityLbSetting {
            enabled: true,
            distribute: Vec::new(),
            failover: Vec::new(),
            failover_priority: Vec::new(),
        }
    }
}

/// What a consistent hash is computed from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashOn {
    Header(String),
    /// Cookie name and, when set, the TTL of the cookie Locus creates if the client has none.
    Cookie {
        name: String,
        ttl_secs: Option<u64>,
    },
    SourceIp,
    QueryParameter(String),
}

/// `loadBalancer.simple` / `consistentHash`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests per unit of weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Ring hash on a request attribute, within the best healthy bucket.
    ConsistentHash(HashOn),
}

impl Algorithm {
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "ROUND_ROBIN",
            Algorithm::LeastRequest => "LEAST_REQUEST",
            Algorithm::Random => "RANDOM",
            Algorithm::ConsistentHash(_) => "consistentHash",
        }
    }
}

/// Everything besides the Kubernetes fields that shapes a Service's balancing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BalancerConfig {
    /// From a DestinationRule; overrides `trafficDistribution` (Istio's precedence) but never
    /// `internalTrafficPolicy: Local`.
    pub locality: Option<LocalityLbSetting>,
    pub algorithm: Algorithm,
    /// `service.kubernetes.io/topology-mode: Auto`.
    pub topology_hints: bool,
    /// `locus.io/zone-balance: capacity`: the fleet's share per zone (gateway replicas or
    /// traffic), for capacity-aware zone routing.
    pub fleet: Option<BTreeMap<String, f64>>,
}

/// The label of a capacity-aware zone bucket; the snapshot keys the fleet by it.
pub fn zone_label(zone: &str) -> String {
    format!("zone {zone}")
}

/// One bucket as ranked.
#[derive(Clone, Debug, PartialEq)]
pub struct RankedBucket {
    pub tier: Tier,
    /// Human description (`same-zone`, `distribute us-central1/* 80%`, `priority 2/3`).
    pub label: String,
    pub members: Vec<u32>,
    /// Set for `distribute` targets: a fixed share (percent) instead of a priority.
    pub weight: Option<u32>,
}

/// Which rule decided the buckets, for `check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RankingRule {
    Strict,
    TopologyHints {
        zone: String,
    },
    TopologyHintsIgnored(String),
    LocalityLbDisabled,
    Distribute(String),
    FailoverPriority,
    IstioLocality,
    TrafficDistribution,
    /// Capacity-aware zone routing; buckets are the zones of the gateway's region, then
    /// everything else.
    CapacityAware,
}

impl fmt::Display for RankingRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankingRule::Strict => {
                f.write_str("internalTrafficPolicy Local (strict, same node only)")
            }
            RankingRule::TopologyHints { zone } => {
                write!(f, "topology hints: endpoints hinted for zone {zone} only")
            }
            RankingRule::TopologyHintsIgnored(why) => {
                write!(f, "topology hints not used ({why}); routing cluster-wide")
            }
            RankingRule::LocalityLbDisabled => {
                f.write_str("DestinationRule localityLbSetting disabled: locality-blind")
            }
            RankingRule::Distribute(from) => write!(f, "DestinationRule distribute from {from}"),
            RankingRule::FailoverPriority => f.write_str("DestinationRule failoverPriority"),
            RankingRule::IstioLocality => {
                f.write_str("DestinationRule localityLbSetting (Istio priorities)")
            }
            RankingRule::TrafficDistribution => f.write_str("Service trafficDistribution"),
            RankingRule::CapacityAware => {
                f.write_str("capacity-aware zone routing (locus.io/zone-balance: capacity)")
            }
        }
    }
}

fn from_tiers(
    gw: &GatewayIdentity,
    policy: RoutingPolicy,
    endpoints: &[Endpoint],
    only: Option<&[u32]>,
) -> Vec<RankedBucket> {
    let ranked = ranking::rank(gw, policy, endpoints);
    ranking::tiers(policy)
        .iter()
        .zip(ranked)
        .map(|(&tier, members)| RankedBucket {
            tier,
            label: tier.as_str().to_owned(),
            members: match only {
                Some(keep) => members.into_iter().filter(|m| keep.contains(m)).collect(),
                None => members,
            },
            weight: None,
        })
        .collect()
}

/// An endpoint's value for a `failoverPriority` key. One without a cluster of its own is in
/// the gateway's (`gw_cluster`).
fn label_value<'a>(ep: &'a Endpoint, gw_cluster: Option<&'a str>, key: &str) -> Option<&'a str> {
    match key {
        REGION_LABEL => Some(ep.locality.region.as_str()).filter(|s| !s.is_empty()),
        ZONE_LABEL => Some(ep.locality.zone.as_str()).filter(|s| !s.is_empty()),
        SUBZONE_LABEL => Some(ep.locality.subzone.as_str()).filter(|s| !s.is_empty()),
        CLUSTER_LABEL => ep.cluster.as_deref().or(gw_cluster),
        _ => ep
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str),
    }
}

fn gateway_value<'a>(
    gw: &'a GatewayIdentity,
    labels: &'a BTreeMap<String, String>,
    key: &str,
) -> Option<&'a str> {
    match key {
        REGION_LABEL => Some(gw.locality.region.as_str()).filter(|s| !s.is_empty()),
        ZONE_LABEL => Some(gw.locality.zone.as_str()).filter(|s| !s.is_empty()),
        SUBZONE_LABEL => Some(gw.locality.subzone.as_str()).filter(|s| !s.is_empty()),
        CLUSTER_LABEL => gw.cluster.as_deref(),
        _ => labels.get(key).map(String::as_str),
    }
}

/// Ranks endpoints into buckets under every policy in force, and says which rule decided.
/// The rules, in the order they take precedence: `internalTrafficPolicy: Local` (strict),
/// Kubernetes topology hints, capacity-aware zones, then an Istio `localityLbSetting`
/// (disabled, `distribute`, `failoverPriority`, or Istio's default priorities), and otherwise
/// `trafficDistribution` tiers.
pub fn rank_buckets(
    gw: &GatewayIdentity,
    policy: RoutingPolicy,
    cfg: &BalancerConfig,
    endpoints: &[Endpoint],
) -> (Vec<RankedBucket>, RankingRule) {
    if policy.strict_local {
        return (from_tiers(gw, policy, endpoints, None), RankingRule::Strict);
    }
    let mut hints_note = None;
    if cfg.topology_hints {
        match topology_hints(gw, endpoints) {
            Ok(ranked) => return ranked,
            Err(why) => hints_note = Some(RankingRule::TopologyHintsIgnored(why)),
        }
    }
    if cfg.fleet.is_some() && cfg.locality.is_none() && !gw.locality.zone.is_empty() {
        return (capacity_zones(gw, endpoints), RankingRule::CapacityAware);
    }
    let Some(lb) = &cfg.locality else {
        if let Some(note) = hints_note {
            return (vec![one_bucket("all", all(endpoints))], note);
        }
        let tiers = from_tiers(gw, policy, endpoints, None);
        let tiers = if policy.distribution.uses_locality() {
            prefer_own_cluster(gw, endpoints, tiers)
        } else {
            tiers
        };
        return (tiers, RankingRule::TrafficDistribution);
    };
    if !lb.enabled {
        return (
            vec![one_bucket("all", all(endpoints))],
            RankingRule::LocalityLbDisabled,
        );
    }
    if let Some(rule) = lb.distribute.iter().find(|d| d.from.matches(&gw.locality)) {
        return (
            distribute(rule, endpoints),
            RankingRule::Distribute(rule.from.to_string()),
        );
    }
    let failover_to = lb
        .failover
        .iter()
        .find(|(from, _)| *from == gw.locality.region)
        .map(|(_, to)| to.as_str());
    if !lb.failover_priority.is_empty() {
        return (
            failover_priority(gw, &lb.failover_priority, failover_to, endpoints),
            RankingRule::FailoverPriority,
        );
    }
    (
        prefer_own_cluster(gw, endpoints, istio_priorities(gw, failover_to, endpoints)),
        RankingRule::IstioLocality,
    )
}

/// Cluster is part of locality: within each locality bucket, endpoints in the gateway's own
/// cluster come first, then those of other clusters. So a remote cluster in the gateway's
/// zone (clusters can share zones) still ranks ahead of the gateway's own cluster in a far
/// region, and traffic only leaves the cluster when its own bucket has nothing healthy.
/// Locality-blind rankings, `distribute` shares and `failoverPriority` (which can name
/// `topology.istio.io/cluster` itself) are left as they are.
fn prefer_own_cluster(
    gw: &GatewayIdentity,
    endpoints: &[Endpoint],
    buckets: Vec<RankedBucket>,
) -> Vec<RankedBucket> {
    if endpoints.iter().all(|e| gw.in_own_cluster(e)) {
        return buckets;
    }
    let mut out = Vec::with_capacity(buckets.len() * 2);
    for mut b in buckets {
        let (own, other): (Vec<u32>, Vec<u32>) = std::mem::take(&mut b.members)
            .into_iter()
            .partition(|&i| gw.in_own_cluster(&endpoints[i as usize]));
        let other_label = format!("{}, other clusters", b.label);
        let (tier, weight) = (b.tier, b.weight);
        out.push(RankedBucket { members: own, ..b });
        if !other.is_empty() {
            out.push(RankedBucket {
                tier,
                label: other_label,
                members: other,
                weight,
            });
        }
    }
    out
}

fn all(endpoints: &[Endpoint]) -> Vec<u32> {
    (0..endpoints.len() as u32).collect()
}

fn one_bucket(label: &str, members: Vec<u32>) -> RankedBucket {
    RankedBucket {
        tier: Tier::All,
        label: label.to_owned(),
        members,
        weight: None,
    }
}

/// Kubernetes Topology Aware Routing, with kube-proxy's rules: the endpoints hinted for the
/// gateway's zone, or why the hints cannot be used (then they are ignored, as kube-proxy does).
fn topology_hints(
    gw: &GatewayIdentity,
    endpoints: &[Endpoint],
) -> Result<(Vec<RankedBucket>, RankingRule), String> {
    let zone = &gw.locality.zone;
    let hinted = |e: &Endpoint| {
        e.zone_hints
            .as_ref()
            .is_some_and(|z| z.iter().any(|h| h == zone))
    };
    let ready: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| e.state == crate::endpoint::EndpointState::Ready)
        .collect();
    if zone.is_empty() {
        return Err("the gateway's zone is unknown".to_owned());
    } else if ready.is_empty() {
        return Err("no ready endpoint".to_owned());
    } else if ready.iter().any(|e| e.zone_hints.is_none()) {
        return Err("not every ready endpoint has a zone hint".to_owned());
    } else if !ready.iter().any(|e| hinted(e)) {
        return Err(format!("no endpoint is hinted for zone {zone}"));
    }
    let members = all(endpoints)
        .into_iter()
        .filter(|&i| hinted(&endpoints[i as usize]))
        .collect();
    Ok((
        vec![one_bucket(&format!("hinted for {zone}"), members)],
        RankingRule::TopologyHints { zone: zone.clone() },
    ))
}

/// Capacity-aware routing: one bucket per zone of the gateway's region (its own first), then
/// the rest; the snapshot sets the shares from the fleet and the healthy capacity.
fn capacity_zones(gw: &GatewayIdentity, endpoints: &[Endpoint]) -> Vec<RankedBucket> {
    let mut zones: Vec<String> = vec![gw.locality.zone.clone()];
    for ep in endpoints {
        if ep.locality.region == gw.locality.region
            && !zones.contains(&ep.locality.zone)
            && !ep.locality.zone.is_empty()
        {
            zones.push(ep.locality.zone.clone());
        }
    }
    let members = |keep: &dyn Fn(&crate::locality::Locality) -> bool| -> Vec<u32> {
        all(endpoints)
            .into_iter()
            .filter(|&i| keep(&endpoints[i as usize].locality))
            .collect()
    };
    let mut buckets: Vec<RankedBucket> = zones
        .iter()
        .map(|z| RankedBucket {
            tier: if *z == gw.locality.zone {
                Tier::SameZone
            } else {
                Tier::SameRegion
            },
            label: zone_label(z),
            members: members(&|l| l.region == gw.locality.region && l.zone == *z),
            weight: None,
        })
        .collect();
    buckets.push(RankedBucket {
        tier: Tier::Elsewhere,
        label: "elsewhere".into(),
        members: members(&|l| l.region != gw.locality.region || l.zone.is_empty()),
        weight: None,
    });
    buckets
}

/// Istio `distribute`: one weighted bucket per `to` pattern; an endpoint belongs to the first
/// pattern it matches.
fn distribute(rule: &DistributeRule, endpoints: &[Endpoint]) -> Vec<RankedBucket> {
    let mut taken = vec![false; endpoints.len()];
    rule.to
        .iter()
        .map(|(pattern, weight)| {
            let members: Vec<u32> = all(endpoints)
                .into_iter()
                .filter(|&i| !taken[i as usize] && pattern.matches(&endpoints[i as usize].locality))
                .collect();
            for &m in &members {
                taken[m as usize] = true;
            }
            RankedBucket {
                tier: Tier::All,
                label: format!("distribute {pattern} {weight}%"),
                members,
                weight: Some(*weight),
            }
        })
        .collect()
}

/// The farthest group, split into the `failover` region first (when one is set for the
/// gateway's region) and the rest after.
fn split_failover(
    endpoints: &[Endpoint],
    failover_to: Option<&str>,
    members: Vec<u32>,
    tier: Tier,
    label: String,
) -> Vec<RankedBucket> {
    let Some(to) = failover_to else {
        return vec![RankedBucket {
            tier,
            label,
            members,
            weight: None,
        }];
    };
    let (first, rest): (Vec<u32>, Vec<u32>) = members
        .into_iter()
        .partition(|&i| endpoints[i as usize].locality.region == to);
    vec![
        RankedBucket {
            tier: Tier::FailoverRegion,
            label: format!("failover region {to}"),
            members: first,
            weight: None,
        },
        RankedBucket {
            tier,
            label,
            members: rest,
            weight: None,
        },
    ]
}

/// Istio `failoverPriority`: endpoints ranked by how many of the labels, in order, match the
/// gateway's; those matching none go last (split by `failover`).
fn failover_priority(
    gw: &GatewayIdentity,
    priority: &[PriorityLabel],
    failover_to: Option<&str>,
    endpoints: &[Endpoint],
) -> Vec<RankedBucket> {
    let n = priority.len();
    let matched = |ep: &Endpoint| -> usize {
        priority
            .iter()
            .take_while(|p| match p {
                PriorityLabel::KeyValue(k, v) => {
                    label_value(ep, gw.cluster.as_deref(), k) == Some(v.as_str())
                }
                PriorityLabel::Key(k) => {
                    match (
                        label_value(ep, gw.cluster.as_deref(), k),
                        gateway_value(gw, &gw.labels, k),
                    ) {
                        (Some(a), Some(b)) => a == b,
                        _ => false,
                    }
                }
            })
            .count()
    };
    let mut levels: Vec<Vec<u32>> = vec![Vec::new(); n + 1];
    for i in all(endpoints) {
        levels[n - matched(&endpoints[i as usize])].push(i);
    }
    let mut buckets = Vec::new();
    for (rank, members) in levels.into_iter().enumerate() {
        let label = format!("{} of {n} priority labels match", n - rank);
        if rank == n {
            buckets.extend(split_failover(
                endpoints,
                failover_to,
                members,
                Tier::Elsewhere,
                label,
            ));
        } else {
            buckets.push(RankedBucket {
                tier: Tier::Priority((n - rank) as u8),
                label,
                members,
                weight: None,
            });
        }
    }
    buckets
}

/// Istio's default priorities: same locality, same zone, same region, failover region,
/// elsewhere.
fn istio_priorities(
    gw: &GatewayIdentity,
    failover_to: Option<&str>,
    endpoints: &[Endpoint],
) -> Vec<RankedBucket> {
    use crate::locality::Relation;
    let mut groups: [Vec<u32>; 4] = Default::default();
    for i in all(endpoints) {
        let ep = &endpoints[i as usize];
        let slot = match gw.locality.relation(&ep.locality) {
            Relation::SameNode | Relation::SameSubzone => 0,
            Relation::SameZone
                if gw.locality.subzone.is_empty() && ep.locality.subzone.is_empty() =>
            {
                0
            }
            Relation::SameZone => 1,
            Relation::SameRegion => 2,
            Relation::CrossRegion => 3,
        };
        groups[slot].push(i);
    }
    let [exact, zone, region, rest] = groups;
    let bucket = |tier, label: &str, members| RankedBucket {
        tier,
        label: label.to_owned(),
        members,
        weight: None,
    };
    let mut buckets = vec![
        bucket(Tier::SameSubzone, "same locality", exact),
        bucket(Tier::SameZone, "same-zone", zone),
        bucket(Tier::SameRegion, "same-region", region),
    ];
    buckets.extend(split_failover(
        endpoints,
        failover_to,
        rest,
        Tier::Elsewhere,
        "elsewhere".into(),
    ));
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointState;
    use std::sync::Arc;

    fn ep(port: u16, locality: &str) -> Endpoint {
        Endpoint::new(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Locality::parse(locality).unwrap(),
        )
    }

    fn gw(l: &str) -> GatewayIdentity {
        GatewayIdentity {
            locality: Locality::parse(l).unwrap(),
            node: None,
            labels: BTreeMap::new(),
            cluster: None,
        }
    }

    fn members(b: &[RankedBucket]) -> Vec<Vec<u32>> {
        b.iter().map(|b| b.members.clone()).collect()
    }

    #[test]
    fn wildcards() {
        let p = LocalityPattern::parse("us-central1/*").unwrap();
        assert!(p.matches(&Locality::new("us-central1", "a", "")));
        assert!(p.matches(&Locality::new("us-central1", "b", "s")));
        assert!(!p.matches(&Locality::new("us-central2", "a", "")));
        let p = LocalityPattern::parse("*/zone-a").unwrap();
        assert!(p.matches(&Locality::new("r1", "zone-a", "")));
        assert!(!p.matches(&Locality::new("r1", "zone-b", "")));
        assert!(LocalityPattern::parse("*")
            .unwrap()
            .matches(&Locality::default()));
        assert!(LocalityPattern::parse("a//b").is_err());
        let exact = LocalityPattern::parse("r1/z1").unwrap();
        assert!(exact.matches(&Locality::new("r1", "z1", "anything")));
    }

    fn eps() -> Vec<Endpoint> {
        vec![
            ep(1, "us-west/zone1"),
            ep(2, "us-west/zone2"),
            ep(3, "us-east/zone1"),
            ep(4, "eu-west/zone1"),
        ]
    }

    #[test]
    fn failover_orders_the_named_region_first() {
        let lb = LocalityLbSetting {
            failover: vec![("us-west".into(), "eu-west".into())],
            ..Default::default()
        };
        let cfg = BalancerConfig {
            locality: Some(lb),
            ..Default::default()
        };
        let (b, rule) = rank_buckets(&gw("us-west/zone1"), RoutingPolicy::default(), &cfg, &eps());
        assert_eq!(rule, RankingRule::IstioLocality);
        assert_eq!(
            members(&b),
            vec![vec![0], vec![], vec![1], vec![3], vec![2]]
        );
        // Without the rule, other regions share one bucket.
        let cfg = BalancerConfig {
            locality: Some(LocalityLbSetting::default()),
            ..Default::default()
        };
        let (b, _) = rank_buckets(&gw("us-west/zone1"), RoutingPolicy::default(), &cfg, &eps());
        assert_eq!(members(&b), vec![vec![0], vec![], vec![1], vec![2, 3]]);
    }

    #[test]
    fn failover_priority_from_the_istio_doc() {
        // Istio's example: failoverPriority [network, region, zone]: endpoints matching all
        // three first, then network+region, then network, then none.
        let mut eps = vec![
            ep(1, "r1/z1"),
            ep(2, "r1/z2"),
            ep(3, "r2/z1"),
            ep(4, "r1/z1"),
        ];
        for (i, net) in ["n1", "n1", "n1", "n2"].iter().enumerate() {
            eps[i].labels = Some(Arc::new(BTreeMap::from([(
                "topology.istio.io/network".to_owned(),
                net.to_string(),
            )])));
        }
        let lb = LocalityLbSetting {
            failover_priority: vec![
                PriorityLabel::Key("topology.istio.io/network".into()),
                PriorityLabel::Key(REGION_LABEL.into()),
                PriorityLabel::Key(ZONE_LABEL.into()),
            ],
            ..Default::default()
        };
        let cfg = BalancerConfig {
            locality: Some(lb),
            ..Default::default()
        };
        let labels = BTreeMap::from([("topology.istio.io/network".to_owned(), "n1".to_owned())]);
        let mut g = gw("r1/z1");
        g.labels = labels;
        let (b, rule) = rank_buckets(&g, RoutingPolicy::default(), &cfg, &eps);
        assert_eq!(rule, RankingRule::FailoverPriority);
        assert_eq!(members(&b), vec![vec![0], vec![1], vec![2], vec![3]]);
        // key=value form: endpoints with that value first.
        let lb = LocalityLbSetting {
            failover_priority: vec![PriorityLabel::parse("topology.istio.io/network=n2")],
            ..Default::default()
        };
        let cfg = BalancerConfig {
            locality: Some(lb),
            ..Default::default()
        };
        let (b, _) = rank_buckets(&g, RoutingPolicy::default(), &cfg, &eps);
        assert_eq!(members(&b), vec![vec![3], vec![0, 1, 2]]);
    }

    #[test]
    fn distribute_picks_the_rule_for_the_gateway_and_splits_targets() {
        let lb = LocalityLbSetting {
            distribute: vec![
                DistributeRule {
                    from: LocalityPattern::parse("eu-west/*").unwrap(),
                    to: vec![(LocalityPattern::parse("eu-west/*").unwrap(), 100)],
                },
                DistributeRule {
                    from: LocalityPattern::parse("us-west/*").unwrap(),
                    to: vec![
                        (LocalityPattern::parse("us-west/*").unwrap(), 80),
                        (LocalityPattern::parse("us-east/*").unwrap(), 20),
                    ],
                },
            ],
            ..Default::default()
        };
        let cfg = BalancerConfig {
            locality: Some(lb),
            ..Default::default()
        };
        let (b, rule) = rank_buckets(&gw("us-west/zone2"), RoutingPolicy::default(), &cfg, &eps());
        assert_eq!(rule, RankingRule::Distribute("us-west/*".into()));
        assert_eq!(members(&b), vec![vec![0, 1], vec![2]]);
        assert_eq!(
            b.iter().map(|b| b.weight).collect::<Vec<_>>(),
            vec![Some(80), Some(20)]
        );
    }

    #[test]
    fn locality_lb_overrides_traffic_distribution_but_not_strict() {
        let cfg = BalancerConfig {
            locality: Some(LocalityLbSetting {
                enabled: false,
                ..Default::default()
            }),
            ..Default::default()
        };
        let close = RoutingPolicy {
            distribution: crate::ranking::Distribution::PreferClose,
            strict_local: false,
        };
        let (b, rule) = rank_buckets(&gw("us-west/zone1"), close, &cfg, &eps());
        assert_eq!(rule, RankingRule::LocalityLbDisabled);
        assert_eq!(members(&b), vec![vec![0, 1, 2, 3]]);
        let strict = RoutingPolicy {
            strict_local: true,
            ..close
        };
        let (_, rule) = rank_buckets(&gw("us-west/zone1"), strict, &cfg, &eps());
        assert_eq!(rule, RankingRule::Strict);
    }

    #[test]
    fn topology_hints_follow_kube_proxy_rules() {
        let hinted = |port, zone: &str, hint: &str| {
            let mut e = ep(port, &format!("r/{zone}"));
            e.zone_hints = Some(Arc::from(vec![hint.to_owned()]));
            e
        };
        let cfg = BalancerConfig {
            topology_hints: true,
            ..Default::default()
        };
        let eps = vec![
            hinted(1, "za", "za"),
            hinted(2, "zb", "zb"),
            hinted(3, "zc", "za"),
        ];
        let (b, rule) = rank_buckets(&gw("r/za"), RoutingPolicy::default(), &cfg, &eps);
        assert_eq!(rule, RankingRule::TopologyHints { zone: "za".into() });
        assert_eq!(members(&b), vec![vec![0, 2]]);
        // One ready endpoint without hints: cluster-wide.
        let mut partial = eps.clone();
        partial.push(ep(4, "r/zb"));
        let (b, rule) = rank_buckets(&gw("r/za"), RoutingPolicy::default(), &cfg, &partial);
        assert!(
            matches!(rule, RankingRule::TopologyHintsIgnored(_)),
            "{rule:?}"
        );
        assert_eq!(members(&b), vec![vec![0, 1, 2, 3]]);
        // A not-ready endpoint without hints does not count.
        partial[3].state = EndpointState::NotReady;
        let (_, rule) = rank_buckets(&gw("r/za"), RoutingPolicy::default(), &cfg, &partial);
        assert!(matches!(rule, RankingRule::TopologyHints { .. }));
        // No endpoint for the gateway's zone: cluster-wide.
        let (_, rule) = rank_buckets(&gw("r/zq"), RoutingPolicy::default(), &cfg, &eps);
        assert!(matches!(rule, RankingRule::TopologyHintsIgnored(_)));
    }

    fn in_cluster(port: u16, locality: &str, cluster: &str) -> Endpoint {
        ep(port, locality).with_cluster(cluster)
    }

    /// The cluster rule: own cluster before others within each locality level, and a remote
    /// cluster in the gateway's zone ahead of the gateway's own cluster in another region.
    #[test]
    fn own_cluster_first_within_each_locality_level() {
        let mut me = gw("r1/z1");
        me.cluster = Some("local".into());
        let eps = vec![
            in_cluster(1, "r2/z9", "local"),  // own cluster, far region
            in_cluster(2, "r1/z1", "remote"), // other cluster, same zone
            ep(3, "r1/z1"),                   // no cluster: the gateway's own
            in_cluster(4, "r1/z2", "remote"), // other cluster, same region
            in_cluster(5, "r1/z2", "local"),  // own cluster, same region
        ];
        let close = RoutingPolicy {
            distribution: crate::ranking::Distribution::PreferClose,
            strict_local: false,
        };
        let (b, rule) = rank_buckets(&me, close, &BalancerConfig::default(), &eps);
        assert_eq!(rule, RankingRule::TrafficDistribution);
        assert_eq!(
            members(&b),
            vec![vec![2], vec![1], vec![4], vec![3], vec![0]]
        );
        assert_eq!(b[1].label, "same-zone, other clusters");
        assert_eq!(b[1].tier, Tier::SameZone);
        // Istio's priorities split the same way.
        let istio = BalancerConfig {
            locality: Some(LocalityLbSetting::default()),
            ..Default::default()
        };
        let (b, _) = rank_buckets(&me, RoutingPolicy::default(), &istio, &eps);
        assert_eq!(
            members(&b),
            vec![vec![2], vec![1], vec![], vec![4], vec![3], vec![0]]
        );
        // Locality-blind stays one bucket: Istio spreads over clusters without a policy.
        let (b, _) = rank_buckets(&me, RoutingPolicy::default(), &Default::default(), &eps);
        assert_eq!(members(&b), vec![vec![0, 1, 2, 3, 4]]);
        // The gateway's own cluster unknown: nothing to prefer.
        let (b, _) = rank_buckets(&gw("r1/z1"), close, &BalancerConfig::default(), &eps);
        assert_eq!(members(&b), vec![vec![1, 2], vec![3, 4], vec![0]]);
    }

    #[test]
    fn failover_priority_accepts_the_cluster_label() {
        let mut me = gw("r1/z1");
        me.cluster = Some("local".into());
        let eps = vec![
            in_cluster(1, "r1/z1", "remote"),
            in_cluster(2, "r2/z2", "local"),
            ep(3, "r1/z1"),
        ];
        let cfg = BalancerConfig {
            locality: Some(LocalityLbSetting {
                failover_priority: vec![
                    PriorityLabel::parse(CLUSTER_LABEL),
                    PriorityLabel::parse(ZONE_LABEL),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let (b, rule) = rank_buckets(&me, RoutingPolicy::default(), &cfg, &eps);
        assert_eq!(rule, RankingRule::FailoverPriority);
        assert_eq!(members(&b), vec![vec![2], vec![1], vec![0]]);
    }

    #[test]
    fn a_node_name_in_another_cluster_is_not_the_gateway_node() {
        let mut me = gw("r1/z1");
        me.node = Some("node-1".into());
        me.cluster = Some("local".into());
        let here = ep(1, "r1/z1").with_node("node-1");
        let there = in_cluster(2, "r1/z1", "remote").with_node("node-1");
        use crate::locality::Relation;
        assert_eq!(me.relation(&here), Relation::SameNode);
        assert_eq!(me.relation(&there), Relation::SameZone);
    }
}
