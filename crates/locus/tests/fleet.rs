//! Live proof of capacity-aware zone routing: a fleet of gateway processes in two zones with
//! real backends reproduces the blog's scenarios A and B, and the measured per-endpoint shares
//! match what `locus plan` predicts.

mod common;

use std::collections::BTreeMap;

use common::*;
use locus_core::capacity::{plan, PlanPolicy, ZoneSpec};

fn manifests(fleet: &str, zone_balance: bool, entries: &str) -> String {
    let annotations = if zone_balance {
        "{locus.io/zone-balance: capacity}"
    } else {
        "{}"
    };
    let gateway_annotations = if fleet.is_empty() {
        "{}".to_owned()
    } else {
        format!("{{locus.io/fleet: \"{fleet}\"}}")
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: apps\n  annotations: {gateway_annotations}\nspec:\n  gatewayClassName: locus\n  listeners: [{{name: http, protocol: HTTP, port: 8080}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: apps\n  annotations: {annotations}\nspec:\n  selector: {{app: svc}}\n  trafficDistribution: PreferClose\n  ports: [{{name: http, port: 80}}]\n---\n{entries}"
    )
}

/// Sends `per_gateway` requests through each gateway (the same load per replica) and returns
/// each backend's share of the total.
async fn shares(gateways: &[Gw], per_gateway: usize) -> BTreeMap<String, f64> {
    let c = HttpClient::default();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for gw in gateways {
        for (who, n) in c
            .count(gw.addr(8080), "svc.test", "/hostname", per_gateway)
            .await
        {
            *counts.entry(who).or_default() += n;
        }
    }
    let total = (gateways.len() * per_gateway) as f64;
    counts
        .into_iter()
        .map(|(k, v)| (k, v as f64 / total))
        .collect()
}

/// One gateway process per entry, in that zone.
fn start_fleet(dir: &std::path::Path, zones: &[&str]) -> Vec<Gw> {
    zones
        .iter()
        .map(|z| Gw::start(dir, &["--locality", &format!("r/{z}")]))
        .collect()
}

/// Each endpoint's measured share within 5 points of `locus plan`'s capacity-aware
/// prediction, and max/mean at most 1.05.
fn assert_as_planned(measured: &BTreeMap<String, f64>, zones: &[ZoneSpec]) {
    for (zone, i, share) in &plan(zones, PlanPolicy::CapacityAware).shares {
        let name = format!("{zone}-{}", i + 1);
        let got = measured[&name];
        assert!(
            (got - share).abs() <= 0.05,
            "{name}: measured {got}, predicted {share}; {measured:?}"
        );
    }
    assert!(max_over_mean(measured) <= 1.05, "{measured:?}");
}

fn max_over_mean(s: &BTreeMap<String, f64>) -> f64 {
    let max = s.values().cloned().fold(0.0, f64::max);
    max * s.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_a_two_gateways_in_one_zone_one_in_the_other() {
    let a = echo("zone-a-1");
    let b = echo("zone-b-1");
    let entries = entry("a", "r/zone-a", a.addr) + &entry("b", "r/zone-b", b.addr);
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &manifests("zone-a=2,zone-b=1", true, &entries),
    );
    let fleet = start_fleet(dir.path(), &["zone-a", "zone-a", "zone-b"]);
    let measured = shares(&fleet, 1_200).await;
    assert_as_planned(
        &measured,
        &[
            ZoneSpec::new("zone-a", 2.0, 1, 1),
            ZoneSpec::new("zone-b", 1.0, 1, 1),
        ],
    );

    // Without capacity-aware routing, priority locality skews to 2/3 : 1/3 (the blog's
    // complaint), which `locus plan` predicts too.
    drop(fleet);
    write(
        dir.path(),
        "all.yaml",
        &manifests("zone-a=2,zone-b=1", false, &entries),
    );
    let fleet = start_fleet(dir.path(), &["zone-a", "zone-a", "zone-b"]);
    let measured = shares(&fleet, 600).await;
    assert!(
        (measured["zone-a-1"] - 2.0 / 3.0).abs() <= 0.05,
        "{measured:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_b_one_endpoint_of_zone_a_lost() {
    let a1 = echo("zone-a-1");
    let b1 = echo("zone-b-1");
    let b2 = echo("zone-b-2");
    // zone-a-2 is lost: its WorkloadEntry is gone.
    let entries = entry("a1", "r/zone-a", a1.addr)
        + &entry("b1", "r/zone-b", b1.addr)
        + &entry("b2", "r/zone-b", b2.addr);
    let dir = tempdir();
    write(
        dir.path(),
        "all.yaml",
        &manifests("zone-a=2,zone-b=2", true, &entries),
    );
    let fleet = start_fleet(dir.path(), &["zone-a", "zone-a", "zone-b", "zone-b"]);
    let measured = shares(&fleet, 900).await;
    assert_as_planned(
        &measured,
        &[
            ZoneSpec::new("zone-a", 2.0, 2, 1),
            ZoneSpec::new("zone-b", 2.0, 2, 2),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_can_come_from_the_gateways_own_service() {
    let a = echo("zone-a-1");
    let b = echo("zone-b-1");
    // No locus.io/fleet: the gateway replicas are the ready endpoints of locus-system/locus,
    // two in zone-a and one in zone-b, as the EndpointSlice controller would publish them.
    let gateway_pods = "apiVersion: v1\nkind: Service\nmetadata: {name: locus, namespace: locus-system}\nspec:\n  ports: [{name: http, port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: locus-1\n  namespace: locus-system\n  labels: {kubernetes.io/service-name: locus}\naddressType: IPv4\nports: [{name: http, port: 80}]\nendpoints:\n- {addresses: [10.0.0.1], zone: zone-a}\n- {addresses: [10.0.0.2], zone: zone-a}\n- {addresses: [10.0.1.1], zone: zone-b}\n- {addresses: [10.0.1.2], zone: zone-b, conditions: {ready: false}}\n---\n";
    let entries = entry("a", "r/zone-a", a.addr) + &entry("b", "r/zone-b", b.addr) + gateway_pods;
    let dir = tempdir();
    write(dir.path(), "all.yaml", &manifests("", true, &entries));
    let args = |zone: &'static str| ["--locality", zone, "--fleet-service", "locus-system/locus"];
    let fleet = [
        Gw::start(dir.path(), &args("r/zone-a")),
        Gw::start(dir.path(), &args("r/zone-a")),
        Gw::start(dir.path(), &args("r/zone-b")),
    ];
    let measured = shares(&fleet, 600).await;
    assert!((measured["zone-a-1"] - 0.5).abs() <= 0.05, "{measured:?}");
    assert!(max_over_mean(&measured) <= 1.05, "{measured:?}");
}

#[test]
fn plan_reads_the_topology_from_manifests() {
    // Scenario B as manifests: the fleet on the Gateway, one zone-a endpoint not ready.
    let slice = |name: &str, zone: &str, ready: bool| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: apps\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- {{addresses: [\"10.0.0.{}\"], zone: {zone}, conditions: {{ready: {ready}}}}}\n---\n",
            name.len()
        )
    };
    let m = manifests("zone-a=2,zone-b=2", true, "")
        + &slice("a1", "zone-a", true)
        + &slice("a22", "zone-a", false)
        + &slice("b333", "zone-b", true)
        + &slice("b4444", "zone-b", true);
    let dir = tempdir();
    write(dir.path(), "all.yaml", &m);
    let out = run_ok(&[
        "plan",
        "-f",
        dir.path().to_str().unwrap(),
        "--service",
        "apps/svc",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let zones = v["zones"].as_array().unwrap();
    assert_eq!(zones[0]["zone"], "zone-a");
    assert_eq!(
        (zones[0]["endpoints"].as_u64(), zones[0]["healthy"].as_u64()),
        (Some(2), Some(1))
    );
    let capacity = &v["policies"][3];
    assert!(
        (capacity["max_over_mean"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{capacity}"
    );
    let priority = &v["policies"][1];
    assert!(
        (priority["max_over_mean"].as_f64().unwrap() - 1.5).abs() < 1e-9,
        "{priority}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_is_in_the_log_the_admin_api_and_a_metric() {
    let a = echo("zone-a-1");
    let entries = entry("a", "r/zone-a", a.addr);
    let dir = tempdir();
    // Capacity-aware routing asked for, but no fleet anywhere.
    write(dir.path(), "all.yaml", &manifests("", true, &entries));
    let gw = Gw::start(dir.path(), &["--locality", "r/zone-a"]);
    let c = HttpClient::default();
    assert_eq!(
        c.get(gw.addr(8080), "svc.test", "/hostname").await.status,
        200
    );
    let metrics = c.get(gw.admin, "admin", "/metrics").await.body;
    assert!(
        metrics
            .contains("locus_zone_balance_fallback{service=\"apps/svc:80\",reason=\"no-fleet\"} 1"),
        "{metrics}"
    );
    let doc = c.get(gw.admin, "admin", "/debug/endpoints").await.json();
    assert_eq!(doc["services"][0]["zone_balance_fallback"], "no-fleet");
    // Without a fleet, the measured load balances zones instead.
    assert_eq!(doc["services"][0]["load_spill"]["band"]["high"], 1.25);
    assert_eq!(doc["services"][0]["ranking"], "Service trafficDistribution");
    let config = c.get(gw.admin, "admin", "/debug/config").await.json();
    assert!(
        config["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("needs the fleet")),
        "{config}"
    );
}
