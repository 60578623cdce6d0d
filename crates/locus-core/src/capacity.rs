//! Locality without overload: how much traffic a gateway can keep in its zone given where the
//! fleet of gateways (or the incoming traffic) is and where the healthy capacity is, and the
//! what-if maths behind `locus plan`.
//!
//! Envoy's zone-aware routing computes the same split, but only from a hand-written list of
//! every proxy, only above `min_cluster_size` endpoints, and silently falls back otherwise.
//! Here the fleet comes from the resources (or measured load), any number of endpoints works,
//! and every fallback is explicit.

use std::collections::BTreeMap;

/// Share of traffic a gateway in `zone` keeps local, and what it sends to each other zone,
/// given the fleet's traffic share per zone (`fleet`, any non-negative numbers) and the healthy
/// capacity per zone (`capacity`, endpoints × weight). Zones are keys of `capacity`.
///
/// A gateway keeps `min(1, u_z / f_z)` local, where `u` and `f` are the normalised capacity and
/// fleet shares, and sends the rest to zones with spare capacity (`u_k − f_k > 0`) in
/// proportion to that spare. When the whole fleet follows this rule every endpoint gets the
/// same load per unit of capacity, with the least traffic crossing zones.
pub fn zone_split(
    zone: &str,
    fleet: &BTreeMap<String, f64>,
    capacity: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let total_u: f64 = capacity.values().sum();
    if total_u <= 0.0 {
        return out;
    }
    // Only zones that have capacity count for the fleet: gateways elsewhere still send their
    // traffic, spread like everyone else's spill.
    let total_f: f64 = fleet.values().sum();
    let u = |z: &str| capacity.get(z).copied().unwrap_or(0.0) / total_u;
    let f = |z: &str| {
        if total_f > 0.0 {
            fleet.get(z).copied().unwrap_or(0.0) / total_f
        } else {
            0.0
        }
    };
    let (uz, fz) = (u(zone), f(zone));
    let local = if fz <= 0.0 {
        if uz > 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        (uz / fz).min(1.0)
    };
    if local > 0.0 {
        out.insert(zone.to_owned(), local);
    }
    let residual = 1.0 - local;
    if residual <= 1e-12 {
        return out;
    }
    let spare: BTreeMap<&str, f64> = capacity
        .keys()
        .filter(|k| k.as_str() != zone)
        .map(|k| (k.as_str(), (u(k) - f(k)).max(0.0)))
        .filter(|(_, s)| *s > 0.0)
        .collect();
    let total_spare: f64 = spare.values().sum();
    if total_spare > 0.0 {
        for (k, s) in spare {
            out.insert(k.to_owned(), residual * s / total_spare);
        }
    } else {
        // No zone has spare capacity (rounding, or a fleet larger where capacity is larger):
        // spread the rest by capacity.
        let others: f64 = capacity
            .iter()
            .filter(|(k, _)| k.as_str() != zone)
            .map(|(_, c)| *c)
            .sum();
        for (k, c) in capacity.iter().filter(|(k, _)| k.as_str() != zone) {
            if others > 0.0 {
                out.insert(k.clone(), residual * c / others);
            }
        }
    }
    out
}

/// Parses a fleet annotation: `zone-a=2,zone-b=1`.
pub fn parse_fleet(s: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (zone, n) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not zone=count"))?;
        let n: f64 = n
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("{part:?}: the count must be a number ≥ 0"))?;
        out.insert(zone.trim().to_owned(), n);
    }
    if out.is_empty() || out.values().all(|v| *v == 0.0) {
        return Err("the fleet must name at least one zone with a count above 0".into());
    }
    Ok(out)
}

/// One zone of a what-if topology.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneSpec {
    pub name: String,
    /// Gateway replicas (or traffic share) in the zone.
    pub gateways: f64,
    /// Endpoints in the zone, and how many of them are healthy.
    pub endpoints: u32,
    pub healthy: u32,
    /// The zone's share of the incoming traffic, in any unit, when it is not in proportion to
    /// its gateway replicas (`None`: it is).
    pub traffic: Option<f64>,
}

impl ZoneSpec {
    /// A zone whose traffic is in proportion to its gateways.
    pub fn new(name: &str, gateways: f64, endpoints: u32, healthy: u32) -> Self {
        ZoneSpec {
            name: name.to_owned(),
            gateways,
            endpoints,
            healthy,
            traffic: None,
        }
    }
}

/// The routing policies `locus plan` compares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlanPolicy {
    /// Round robin over every healthy endpoint.
    Blind,
    /// Everything to the gateway's zone while it has a healthy endpoint (Istio, agentgateway).
    Priority,
    /// Envoy/Istio priority load with an overprovisioning factor.
    Proportional(f64),
    /// Locus's capacity-aware zone routing.
    CapacityAware,
    /// Locus's load-aware spill where it settles: the capacity-aware split for the traffic each
    /// zone really receives (within the controller's band).
    LoadAware,
}

impl PlanPolicy {
    pub fn name(self) -> String {
        match self {
            PlanPolicy::Blind => "locality-blind round robin".into(),
            PlanPolicy::Priority => "priority, all-or-nothing (Istio / agentgateway)".into(),
            PlanPolicy::Proportional(f) => format!("priority, proportional spill (factor {f})"),
            PlanPolicy::CapacityAware => "capacity-aware (Locus)".into(),
            PlanPolicy::LoadAware => "load-aware spill (Locus, where it converges)".into(),
        }
    }
}

/// Expected outcome of one policy on one topology.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOutcome {
    pub policy: PlanPolicy,
    /// (zone, endpoint index within the zone, share of all traffic) for healthy endpoints.
    pub shares: Vec<(String, u32, f64)>,
    /// Max over mean of the healthy endpoints' shares.
    pub max_over_mean: f64,
    /// Share of requests that cross zones.
    pub cross_zone: f64,
}

/// Expected per-endpoint load and cross-zone share of a policy, summing each zone's gateways'
/// split of their traffic. All zones are taken to be in one region.
pub fn plan(zones: &[ZoneSpec], policy: PlanPolicy) -> PlanOutcome {
    let fleet: BTreeMap<String, f64> = zones.iter().map(|z| (z.name.clone(), z.gateways)).collect();
    let incoming: BTreeMap<String, f64> = zones
        .iter()
        .map(|z| (z.name.clone(), z.traffic.unwrap_or(z.gateways)))
        .collect();
    let total_f: f64 = incoming.values().sum();
    let capacity: BTreeMap<String, f64> = zones
        .iter()
        .map(|z| (z.name.clone(), f64::from(z.healthy)))
        .collect();
    let total_healthy: f64 = capacity.values().sum();
    let mut zone_load: BTreeMap<String, f64> = BTreeMap::new();
    let mut cross = 0.0;
    for z in zones {
        let traffic = if total_f > 0.0 {
            incoming[&z.name] / total_f
        } else {
            0.0
        };
        if traffic == 0.0 {
            continue;
        }
        let split: BTreeMap<String, f64> = match policy {
            PlanPolicy::Blind => capacity
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        if total_healthy > 0.0 {
                            c / total_healthy
                        } else {
                            0.0
                        },
                    )
                })
                .collect(),
            PlanPolicy::Priority | PlanPolicy::Proportional(_) => {
                let local_share = match policy {
                    PlanPolicy::Priority if z.healthy > 0 => 1.0,
                    PlanPolicy::Proportional(factor) if z.endpoints > 0 => {
                        (factor * f64::from(z.healthy) / f64::from(z.endpoints)).min(1.0)
                    }
                    _ => 0.0,
                };
                let others: f64 = capacity
                    .iter()
                    .filter(|(k, _)| **k != z.name)
                    .map(|(_, c)| c)
                    .sum();
                let mut m = BTreeMap::new();
                if local_share > 0.0 {
                    m.insert(z.name.clone(), local_share);
                }
                for (k, c) in capacity.iter().filter(|(k, _)| **k != z.name) {
                    if others > 0.0 {
                        m.insert(k.clone(), (1.0 - local_share) * c / others);
                    }
                }
                m
            }
            PlanPolicy::CapacityAware => zone_split(&z.name, &fleet, &capacity),
            PlanPolicy::LoadAware => zone_split(&z.name, &incoming, &capacity),
        };
        for (k, share) in split {
            if k != z.name {
                cross += traffic * share;
            }
            *zone_load.entry(k).or_default() += traffic * share;
        }
    }
    let mut shares = Vec::new();
    for z in zones {
        let load = zone_load.get(&z.name).copied().unwrap_or(0.0);
        for i in 0..z.healthy {
            shares.push((z.name.clone(), i, load / f64::from(z.healthy)));
        }
    }
    let n = shares.len() as f64;
    let max = shares.iter().map(|s| s.2).fold(0.0, f64::max);
    PlanOutcome {
        policy,
        max_over_mean: if n > 0.0 { max * n } else { 0.0 },
        shares,
        cross_zone: cross,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(name: &str, gateways: f64, endpoints: u32, healthy: u32) -> ZoneSpec {
        ZoneSpec::new(name, gateways, endpoints, healthy)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The blog's scenario A: 2 gateways in zone-a, 1 in zone-b, one endpoint per zone.
    #[test]
    fn scenario_a() {
        let zones = [z("zone-a", 2.0, 1, 1), z("zone-b", 1.0, 1, 1)];
        let blind = plan(&zones, PlanPolicy::Blind);
        assert!(close(blind.max_over_mean, 1.0) && close(blind.cross_zone, 0.5));
        let prio = plan(&zones, PlanPolicy::Priority);
        assert!(close(prio.shares[0].2, 2.0 / 3.0) && close(prio.cross_zone, 0.0));
        assert!(close(prio.max_over_mean, 4.0 / 3.0));
        let cap = plan(&zones, PlanPolicy::CapacityAware);
        assert!(close(cap.max_over_mean, 1.0), "{cap:?}");
        // Zone-a's gateways keep 3/4 of their traffic local: 2/3 × 1/4 = 1/6 crosses.
        assert!(close(cap.cross_zone, 1.0 / 6.0), "{cap:?}");
    }

    /// Scenario B: 2+2 gateways, 2 endpoints per zone, one zone-a endpoint lost.
    #[test]
    fn scenario_b() {
        let zones = [z("zone-a", 2.0, 2, 1), z("zone-b", 2.0, 2, 2)];
        let prio = plan(&zones, PlanPolicy::Priority);
        let mut s: Vec<f64> = prio.shares.iter().map(|s| s.2).collect();
        s.sort_by(f64::total_cmp);
        assert!(close(s[2], 0.5) && close(s[0], 0.25));
        assert!(close(prio.max_over_mean, 1.5));
        let cap = plan(&zones, PlanPolicy::CapacityAware);
        assert!(close(cap.max_over_mean, 1.0), "{cap:?}");
        assert!(close(cap.cross_zone, 1.0 / 6.0), "{cap:?}");
        let prop = plan(&zones, PlanPolicy::Proportional(1.4));
        // 1.4 × 1/2 = 70% stays in zone-a: the survivor gets 35%, zone-b's two 32.5% each.
        assert!(close(prop.shares[0].2, 0.35), "{prop:?}");
    }

    #[test]
    fn split_matches_envoy_zone_aware_maths() {
        let fleet = BTreeMap::from([("a".to_owned(), 2.0), ("b".to_owned(), 1.0)]);
        let cap = BTreeMap::from([("a".to_owned(), 1.0), ("b".to_owned(), 1.0)]);
        let a = zone_split("a", &fleet, &cap);
        assert!(close(a["a"], 0.75) && close(a["b"], 0.25));
        let b = zone_split("b", &fleet, &cap);
        assert!(close(b["b"], 1.0) && !b.contains_key("a"));
        // A zone with no capacity sends everything away.
        let cap0 = BTreeMap::from([("a".to_owned(), 0.0), ("b".to_owned(), 2.0)]);
        let a = zone_split("a", &fleet, &cap0);
        assert!(close(a["b"], 1.0) && !a.contains_key("a"));
    }

    #[test]
    fn fleet_annotation() {
        let f = parse_fleet("zone-a=2, zone-b=1").unwrap();
        assert_eq!(f["zone-a"], 2.0);
        assert!(parse_fleet("zone-a").is_err());
        assert!(parse_fleet("zone-a=-1").is_err());
        assert!(parse_fleet("").is_err());
    }
}
