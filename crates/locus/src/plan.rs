//! `locus plan`: what each routing policy would do to a topology, before anyone deploys it.
//!
//! Input: zones with gateway replicas (or traffic share) and endpoints, optionally some
//! endpoints lost. Output, per policy: each endpoint's expected share of the load, max/mean,
//! the share of requests crossing zones and what that costs a month.

use std::fmt::Write as _;

use locus_core::capacity::{plan, PlanOutcome, PlanPolicy, ZoneSpec};

/// Seconds in an average month (365.25 / 12 days).
const MONTH_SECONDS: f64 = 2_629_800.0;

pub struct PlanInput {
    pub zones: Vec<ZoneSpec>,
    pub requests_per_second: f64,
    /// Bytes per request crossing a zone boundary (request + response).
    pub bytes_per_request: f64,
    pub cost_per_gb: f64,
}

/// `NAME:GATEWAYS:ENDPOINTS[:LOST]`, e.g. `zone-a:2:2:1`.
pub fn parse_zone(s: &str) -> Result<ZoneSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(3..=4).contains(&parts.len()) || parts[0].is_empty() {
        return Err(format!(
            "{s:?}: expected NAME:GATEWAYS:ENDPOINTS[:LOST], e.g. zone-a:2:2:1"
        ));
    }
    let gateways: f64 = parts[1]
        .parse()
        .ok()
        .filter(|g: &f64| g.is_finite() && *g >= 0.0)
        .ok_or_else(|| format!("{s:?}: GATEWAYS must be a number ≥ 0"))?;
    let endpoints: u32 = parts[2]
        .parse()
        .map_err(|_| format!("{s:?}: ENDPOINTS must be a whole number"))?;
    let lost: u32 = match parts.get(3) {
        Some(l) => l
            .parse()
            .map_err(|_| format!("{s:?}: LOST must be a whole number"))?,
        None => 0,
    };
    if lost > endpoints {
        return Err(format!("{s:?}: cannot lose more endpoints than there are"));
    }
    Ok(ZoneSpec::new(
        parts[0],
        gateways,
        endpoints,
        endpoints - lost,
    ))
}

/// A Service, else the ServiceImport or VirtualDestination of that name: the first that has
/// endpoints (an exported Service may have none here while its import has every cluster's),
/// else the first that exists.
fn find_service<'a>(
    model: &'a crate::model::Model,
    key: &crate::model::ObjKey,
) -> Result<&'a crate::model::ServiceModel, String> {
    use crate::model::multicluster::{import_key, virtual_destination_key};
    let found: Vec<&crate::model::ServiceModel> = [
        key.clone(),
        import_key(&key.namespace, &key.name),
        virtual_destination_key(&key.namespace, &key.name),
    ]
    .iter()
    .filter_map(|k| model.services.get(k))
    .collect();
    found
        .iter()
        .find(|s| s.ports.iter().any(|p| !p.endpoints.is_empty()))
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("Service {key} is not among the resources"))
}

/// Which clusters a Service's endpoints run in, per zone (`zone-b: remote-1 2`), when they
/// run in more than one: the plan's zones count them together.
pub fn clusters_by_zone(
    paths: &[std::path::PathBuf],
    service: &crate::model::ObjKey,
    cluster: Option<&str>,
) -> Option<String> {
    use std::collections::BTreeMap;
    let mut set = crate::resources::load_paths(paths).ok()?;
    set.local_cluster = cluster.map(str::to_owned);
    let model = crate::model::Model::build(&set).ok()?;
    let svc = find_service(&model, service).ok()?;
    let own = model
        .cluster
        .as_ref()
        .map(|(c, _)| c.as_str())
        .unwrap_or("this cluster");
    let mut zones: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for ep in svc
        .ports
        .first()
        .map(|p| p.endpoints.as_slice())
        .unwrap_or_default()
    {
        let c = ep.cluster.as_deref().unwrap_or(own);
        *zones
            .entry(&ep.locality.zone)
            .or_default()
            .entry(c)
            .or_default() += 1;
    }
    let clusters: std::collections::BTreeSet<&str> =
        zones.values().flat_map(|c| c.keys().copied()).collect();
    (clusters.len() > 1).then(|| {
        let per_zone: Vec<String> = zones
            .iter()
            .map(|(z, c)| {
                let list: Vec<String> = c.iter().map(|(c, n)| format!("{c} {n}")).collect();
                format!("{z}: {}", list.join(", "))
            })
            .collect();
        format!("endpoints by zone and cluster: {}\n", per_zone.join("; "))
    })
}

/// The zones of a Service from manifests: its endpoints per zone (healthy = ready), and the
/// fleet from the Gateway's `locus.io/fleet`, else from `fleet_service`'s ready endpoints.
pub fn zones_from_manifests(
    paths: &[std::path::PathBuf],
    service: &crate::model::ObjKey,
    fleet_service: Option<&crate::model::ObjKey>,
) -> Result<Vec<ZoneSpec>, String> {
    use std::collections::BTreeMap;
    let set = crate::resources::load_paths(paths).map_err(|e| e.to_string())?;
    let model = crate::model::Model::build(&set).map_err(|e| e.to_string())?;
    let svc = find_service(&model, service)?;
    let endpoints = svc
        .ports
        .first()
        .map(|p| p.endpoints.as_slice())
        .unwrap_or_default();
    let mut zones: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for ep in endpoints {
        let e = zones.entry(ep.locality.zone.clone()).or_default();
        e.0 += 1;
        if ep.state == locus_core::EndpointState::Ready {
            e.1 += 1;
        }
    }
    let fleet: BTreeMap<String, f64> = match model.gateways.iter().find_map(|g| g.fleet.clone()) {
        Some(f) => f,
        None => {
            let key = fleet_service
                .ok_or("no Gateway has locus.io/fleet: pass --fleet-service ns/name")?;
            let fs = model.services.get(key).ok_or_else(|| {
                format!("Service {key} (--fleet-service) is not among the resources")
            })?;
            let mut f = BTreeMap::new();
            for ep in fs
                .ports
                .first()
                .map(|p| p.endpoints.as_slice())
                .unwrap_or_default()
            {
                if ep.state == locus_core::EndpointState::Ready {
                    *f.entry(ep.locality.zone.clone()).or_insert(0.0) += 1.0;
                }
            }
            f
        }
    };
    for zone in fleet.keys() {
        zones.entry(zone.clone()).or_default();
    }
    Ok(zones
        .into_iter()
        .map(|(name, (endpoints, healthy))| ZoneSpec {
            gateways: fleet.get(&name).copied().unwrap_or(0.0),
            name,
            endpoints,
            healthy,
            traffic: None,
        })
        .collect())
}

/// The policies compared; load-aware spill only when the traffic per zone is given apart from
/// the gateways (otherwise it settles where capacity-aware routing already is).
fn policies(input: &PlanInput) -> Vec<PlanPolicy> {
    let mut out = vec![
        PlanPolicy::Blind,
        PlanPolicy::Priority,
        PlanPolicy::Proportional(locus_core::health::DEFAULT_OVERPROVISIONING),
        PlanPolicy::CapacityAware,
    ];
    if input.zones.iter().any(|z| z.traffic.is_some()) {
        out.push(PlanPolicy::LoadAware);
    }
    out
}

pub fn outcomes(input: &PlanInput) -> Vec<PlanOutcome> {
    policies(input)
        .iter()
        .map(|p| plan(&input.zones, *p))
        .collect()
}

/// `--traffic zone-a=2,zone-b=1`: each zone's share of the incoming traffic (zones left out get
/// none). Every zone named must be in the topology.
pub fn set_traffic(zones: &mut [ZoneSpec], spec: &str) -> Result<(), String> {
    let traffic = locus_core::capacity::parse_fleet(spec).map_err(|e| format!("--traffic: {e}"))?;
    for name in traffic.keys() {
        if !zones.iter().any(|z| &z.name == name) {
            return Err(format!("--traffic: zone {name:?} is not in the topology"));
        }
    }
    for z in zones {
        z.traffic = Some(traffic.get(&z.name).copied().unwrap_or(0.0));
    }
    Ok(())
}

fn monthly_cost(input: &PlanInput, o: &PlanOutcome) -> f64 {
    input.requests_per_second * MONTH_SECONDS * o.cross_zone * input.bytes_per_request / 1e9
        * input.cost_per_gb
}

pub fn table(input: &PlanInput) -> String {
    let mut out = String::new();
    let zones: Vec<String> = input
        .zones
        .iter()
        .map(|z| {
            format!(
                "{}: {} gateway(s){}, {}/{} endpoint(s) healthy",
                z.name,
                z.gateways,
                z.traffic
                    .map(|t| format!(" receiving traffic {t}"))
                    .unwrap_or_default(),
                z.healthy,
                z.endpoints
            )
        })
        .collect();
    let _ = writeln!(out, "Topology: {}", zones.join("; "));
    let _ = writeln!(
        out,
        "Load: {} req/s, {} bytes per request, ${}/GB across zones\n",
        input.requests_per_second, input.bytes_per_request, input.cost_per_gb
    );
    let _ = writeln!(
        out,
        "{:<48} {:<52} {:>8} {:>11} {:>14}",
        "policy", "share per healthy endpoint", "max/mean", "cross-zone", "cost / month"
    );
    for o in outcomes(input) {
        let shares: Vec<String> = o
            .shares
            .iter()
            .map(|(z, i, s)| format!("{z}#{}={:.1}%", i + 1, s * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "{:<48} {:<52} {:>8.2} {:>10.1}% {:>13.2}$",
            o.policy.name(),
            shares.join(" "),
            o.max_over_mean,
            o.cross_zone * 100.0,
            monthly_cost(input, &o)
        );
    }
    out
}

pub fn json(input: &PlanInput) -> String {
    let v: Vec<serde_json::Value> = outcomes(input)
        .iter()
        .map(|o| {
            serde_json::json!({
                "policy": o.policy.name(),
                "shares": o.shares.iter().map(|(z, i, s)| serde_json::json!({"zone": z, "endpoint": i + 1, "share": s})).collect::<Vec<_>>(),
                "max_over_mean": o.max_over_mean,
                "cross_zone": o.cross_zone,
                "monthly_cost": monthly_cost(input, o),
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "zones": input.zones.iter().map(|z| serde_json::json!({"zone": z.name, "gateways": z.gateways, "traffic": z.traffic, "endpoints": z.endpoints, "healthy": z.healthy})).collect::<Vec<_>>(),
        "requests_per_second": input.requests_per_second,
        "bytes_per_request": input.bytes_per_request,
        "cost_per_gb": input.cost_per_gb,
        "policies": v,
    }))
    .unwrap_or_default()
}

/// A grouped bar chart: one group per policy, one bar per healthy endpoint, the mean as a line.
pub fn svg(input: &PlanInput) -> String {
    let outcomes = outcomes(input);
    let n = outcomes.first().map_or(0, |o| o.shares.len()).max(1);
    let (bar, gap, group_gap, top, height, left) = (26.0, 4.0, 40.0, 40.0, 240.0, 50.0);
    // Wide enough for the labels under each group, whatever the endpoint count.
    let group_w = (n as f64 * (bar + gap)).max(215.0);
    let width = left + outcomes.len() as f64 * (group_w + group_gap) + 20.0;
    let max = outcomes
        .iter()
        .flat_map(|o| o.shares.iter().map(|s| s.2))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let colors = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        top + height + 90.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14">Expected share of load per healthy endpoint (dashed: the mean)</text>"#
    );
    let zone_names: Vec<&str> = {
        let mut v: Vec<&str> = input.zones.iter().map(|z| z.name.as_str()).collect();
        v.dedup();
        v
    };
    for (g, o) in outcomes.iter().enumerate() {
        let x0 = left + g as f64 * (group_w + group_gap);
        for (i, (zone, _, share)) in o.shares.iter().enumerate() {
            let h = share / max * height;
            let c = colors[zone_names.iter().position(|z| z == zone).unwrap_or(0) % colors.len()];
            let x = x0 + i as f64 * (bar + gap);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar}" height="{h:.1}" fill="{c}"><title>{zone}: {:.1}%</title></rect>"#,
                top + height - h,
                share * 100.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0}%</text>"#,
                x + bar / 2.0,
                top + height - h - 3.0,
                share * 100.0
            );
        }
        let mean = 1.0 / o.shares.len().max(1) as f64;
        let y = top + height - mean / max * height;
        let _ = writeln!(
            s,
            r#"<line x1="{x0:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="black" stroke-dasharray="4 3"/>"#,
            x0 + o.shares.len() as f64 * (bar + gap) - gap
        );
        let label = o.policy.name();
        let (l1, l2) = label.split_once(", ").unwrap_or((label.as_str(), ""));
        let _ = writeln!(
            s,
            r#"<text x="{x0:.1}" y="{:.1}">{l1}</text>"#,
            top + height + 16.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{x0:.1}" y="{:.1}">{l2}</text>"#,
            top + height + 30.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{x0:.1}" y="{:.1}">max/mean {:.2}, cross-zone {:.0}%</text>"#,
            top + height + 46.0,
            o.max_over_mean,
            o.cross_zone * 100.0
        );
    }
    for (i, z) in zone_names.iter().enumerate() {
        let x = left + i as f64 * 140.0;
        let y = top + height + 68.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{y:.1}">endpoints in {z}</text>"#,
            y - 9.0,
            colors[i % colors.len()],
            x + 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PlanInput {
        PlanInput {
            zones: vec![
                parse_zone("zone-a:2:2:1").unwrap(),
                parse_zone("zone-b:2:2").unwrap(),
            ],
            requests_per_second: 1000.0,
            bytes_per_request: 10_000.0,
            cost_per_gb: 0.01,
        }
    }

    #[test]
    fn zones_parse_with_losses() {
        let z = parse_zone("zone-a:2:3:1").unwrap();
        assert_eq!((z.gateways, z.endpoints, z.healthy), (2.0, 3, 2));
        assert!(parse_zone("zone-a:2").is_err());
        assert!(parse_zone("zone-a:2:1:2").is_err());
        assert!(parse_zone("zone-a:x:1").is_err());
    }

    #[test]
    fn every_format_covers_every_policy() {
        let t = table(&input());
        for p in [
            "locality-blind",
            "all-or-nothing",
            "proportional",
            "capacity-aware",
        ] {
            assert!(t.contains(p), "{t}");
        }
        let j: serde_json::Value = serde_json::from_str(&json(&input())).unwrap();
        assert_eq!(j["policies"].as_array().unwrap().len(), 4);
        // 1000 req/s × a month × 1/6 crossing × 10 kB at $0.01/GB.
        let cost = j["policies"][3]["monthly_cost"].as_f64().unwrap();
        assert!(
            (cost - 1000.0 * MONTH_SECONDS / 6.0 * 10_000.0 / 1e9 * 0.01).abs() < 1e-6,
            "{cost}"
        );
        let s = svg(&input());
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<rect x=").count(), 4 * 3 + 2);
    }

    #[test]
    fn unequal_traffic_adds_the_load_aware_row() {
        // Scenario C: one gateway per zone, zone-a's receiving twice the traffic.
        let mut zones = vec![
            parse_zone("zone-a:1:1").unwrap(),
            parse_zone("zone-b:1:1").unwrap(),
        ];
        assert!(set_traffic(&mut zones, "zone-c=1").is_err());
        set_traffic(&mut zones, "zone-a=2,zone-b=1").unwrap();
        let input = PlanInput { zones, ..input() };
        let o = outcomes(&input);
        assert_eq!(o.len(), 5);
        // Capacity-aware routing sees one replica per zone: all local, 2/3 on zone-a.
        assert!((o[3].max_over_mean - 4.0 / 3.0).abs() < 1e-9, "{:?}", o[3]);
        // Load-aware spill settles at balance, a quarter of zone-a's traffic across.
        assert_eq!(o[4].policy, PlanPolicy::LoadAware);
        assert!((o[4].max_over_mean - 1.0).abs() < 1e-9, "{:?}", o[4]);
        assert!((o[4].cross_zone - 1.0 / 6.0).abs() < 1e-9, "{:?}", o[4]);
        assert!(table(&input).contains("load-aware spill (Locus, where it converges)"));
    }
}
