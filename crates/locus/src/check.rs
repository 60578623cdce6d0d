//! `locus check`: validate manifests and say, per Service, where traffic will go and why.

use std::fmt::Write as _;
use std::path::PathBuf;

use locus_core::balancer::ServiceSnapshot;

use crate::identity::{self, IdentityConfig};
use crate::model::Model;
use crate::resources::load_paths;
use crate::routing::{GatewaySelector, RouteTable};

/// How `locus check` prints what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A report for people.
    #[default]
    Text,
    /// One JSON document (`valid`, `errors`, `warnings`, listeners, services), for tools.
    Json,
    /// The JSON document as YAML.
    Yaml,
}

/// What `locus check` prints and whether it passes.
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    /// `false`: exit 1 (an error; with `strict`, any warning).
    pub ok: bool,
}

/// Loads, validates and explains. Errors fail the check; with `strict`, so do warnings (for
/// CI gates: `helm template … | locus check -f - --strict`).
pub fn run(paths: &[PathBuf], cfg: &IdentityConfig, format: Format, strict: bool) -> Outcome {
    let fail = |errors: Vec<String>| {
        let (stdout, stderr) = match format {
            Format::Text => (
                String::new(),
                errors.iter().map(|e| format!("error: {e}\n")).collect(),
            ),
            _ => (
                render(
                    format,
                    &serde_json::json!({"valid": false, "errors": errors, "warnings": []}),
                ),
                String::new(),
            ),
        };
        Outcome {
            stdout,
            stderr,
            ok: false,
        }
    };
    let mut set = match load_paths(paths) {
        Ok(s) => s,
        Err(e) => return fail(vec![e.to_string()]),
    };
    set.local_cluster = cfg.cluster.clone();
    set.local_network = cfg.network.clone();
    let mut model = match Model::build(&set) {
        Ok(m) => m,
        Err(e) => return fail(vec![e.to_string()]),
    };
    // Certificates are parsed as `serve` would: a bad Secret is a warning here too.
    let tls = crate::tls::CertStore::default().resolve(&mut model, &GatewaySelector::All);
    let resolved = identity::resolve(cfg, &model);
    let registry = crate::health::HealthRegistry::default();
    let table = RouteTable::build(
        &model,
        resolved,
        &GatewaySelector::All,
        0,
        &crate::routing::Live {
            registry: &registry,
            spill: &Default::default(),
            events: &tokio::sync::mpsc::unbounded_channel().0,
            metrics: &std::sync::Arc::new(crate::metrics::Metrics::new(0.0, 0.0, f64::INFINITY)),
            now_ms: crate::health::now_ms(),
        },
    );
    // Routes refused alone: `serve` would serve the others, a pipeline gate must still fail.
    let errors: Vec<String> = model.route_errors.iter().map(|e| e.to_string()).collect();
    let ok = errors.is_empty() && (!strict || table.warnings.is_empty());
    let mut stderr = String::new();
    for e in &errors {
        stderr.push_str(&format!("error: {e}\n"));
    }
    if !errors.is_empty() {
        stderr.push_str(
            "(those routes would not be served; the rest of the configuration is valid)\n",
        );
    }
    if strict && !table.warnings.is_empty() {
        stderr.push_str(&format!(
            "error: {} warning(s), and --strict fails on warnings\n",
            table.warnings.len()
        ));
    }
    let stdout = match format {
        Format::Text => {
            let mut out = report(&model, &table);
            if !tls.is_empty() {
                let ports: Vec<String> = tls.keys().map(u16::to_string).collect();
                out.push_str(&format!(
                    "\nHTTPS (TLS terminated, certificates from Secrets) on port {}\n",
                    ports.join(", ")
                ));
            }
            out
        }
        _ => {
            let mut doc = document(&model, &table);
            doc["valid"] = ok.into();
            doc["errors"] = errors.into();
            render(format, &doc)
        }
    };
    Outcome { stdout, stderr, ok }
}

fn render(format: Format, doc: &serde_json::Value) -> String {
    match format {
        Format::Yaml => serde_yaml_ng::to_string(doc).unwrap_or_default(),
        _ => format!("{doc:#}\n"),
    }
}

/// The check as data: the gateway's locality, listeners, each Service port's ranking, buckets
/// and endpoints, and the warnings.
pub fn document(model: &Model, table: &RouteTable) -> serde_json::Value {
    use serde_json::json;
    let id = &table.identity;
    let listeners: Vec<_> = table
        .ports
        .iter()
        .map(|(port, t)| json!({"port": port, "listeners": t.listeners, "hosts": t.hosts()}))
        .collect();
    let mut services = Vec::new();
    for svc in model.services.values() {
        for port in &svc.ports {
            let target = table.services.get(&(svc.key.clone(), port.port));
            let buckets: Vec<_> = target
                .map(|t| {
                    let snap = t.snapshot.load();
                    let active = snap.active_bucket();
                    snap.buckets
                        .iter()
                        .enumerate()
                        .map(|(b, bucket)| {
                            let endpoints: Vec<_> = bucket
                                .members
                                .iter()
                                .map(|&i| {
                                    let ep = &snap.endpoints[i as usize];
                                    json!({
                                        "address": ep.addr.to_string(),
                                        "locality": ep.locality.to_string(),
                                        "cluster": id.identity.cluster_of(ep),
                                        "node": ep.node.as_deref(),
                                        "weight": ep.weight,
                                        "state": format!("{:?}", ep.state).to_lowercase(),
                                    })
                                })
                                .collect();
                            json!({
                                "bucket": bucket.label,
                                "healthy": bucket.healthy,
                                "total": bucket.members.len(),
                                "share": bucket.load,
                                "active": active == Some(b),
                                "endpoints": endpoints,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            services.push(json!({
                "service": svc.key.to_string(),
                "kind": svc.kind,
                "port": port.port,
                "routed": target.is_some(),
                "ranking": target.map(|t| t.snapshot.load().rule.to_string()),
                "upstream": port.health.upstream.describe(),
                "outlier_detection_from": port.health.outlier_source,
                "buckets": buckets,
            }));
        }
    }
    json!({
        "gateway": {
            "locality": id.identity.locality.to_string(),
            "locality_from": id.source.to_string(),
            "node": id.identity.node.as_deref(),
            "cluster": id.identity.cluster.as_deref(),
            "cluster_from": id.cluster_source.as_deref(),
        },
        "listeners": listeners,
        "services": services,
        "warnings": table.warnings,
    })
}

/// The text report for a model and the route table built from it.
pub fn report(model: &Model, table: &RouteTable) -> String {
    let mut out = String::new();
    let id = &table.identity;
    let _ = writeln!(
        out,
        "Gateway locality: {} (from {}); node: {}; cluster: {}",
        id.identity.locality,
        id.source,
        id.identity.node.as_deref().unwrap_or("<unknown>"),
        match (&id.identity.cluster, &id.cluster_source) {
            (Some(c), Some(from)) => format!("{c} (from {from})"),
            (Some(c), None) => c.clone(),
            _ => "<unknown>".to_owned(),
        }
    );
    let _ = writeln!(out, "\nListeners:");
    if table.ports.is_empty() {
        let _ = writeln!(out, "  (none: no Gateway with an HTTP or HTTPS listener)");
    }
    for (port, t) in &table.ports {
        let _ = writeln!(
            out,
            "  port {port}: {}  hosts: {}",
            t.listeners.join(", "),
            if t.hosts().is_empty() {
                "(no routes)".to_owned()
            } else {
                t.hosts().join(", ")
            }
        );
    }
    for svc in model.services.values() {
        for port in &svc.ports {
            let routed = table.services.contains_key(&(svc.key.clone(), port.port));
            let _ = writeln!(
                out,
                "\n{} {} port {}{}{}",
                svc.kind,
                svc.key,
                port.port,
                if port.name.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", port.name)
                },
                if routed {
                    ""
                } else {
                    "  [not referenced by any route]"
                }
            );
            let mode = if svc.kind == "VirtualDestination" {
                if port.balancer.locality.is_some() {
                    "localized VirtualDestination: Istio's locality priorities, the gateway's own cluster first at each level".to_owned()
                } else {
                    "static VirtualDestination: one bucket over every selected Service".to_owned()
                }
            } else if svc.kind == "ServiceImport" {
                format!(
                    "failover across clusters: trafficDistribution {} (the exported Service's, else PreferClose), the gateway's own cluster first at each level",
                    svc.policy.distribution.as_str()
                )
            } else if svc.policy.strict_local {
                "strict: internalTrafficPolicy Local, only endpoints on the gateway's node; never spills (503 when none)".to_owned()
            } else if svc.policy.distribution.uses_locality() {
                format!(
                    "failover: trafficDistribution {}, closest bucket first, spilling to the next as it loses health",
                    svc.policy.distribution.as_str()
                )
            } else {
                "locality-blind: no trafficDistribution, one bucket".to_owned()
            };
            let _ = writeln!(out, "  mode: {mode}");
            let h = &port.health;
            let o = &h.outlier;
            let detectors: Vec<String> = [
                (o.consecutive_5xx, "consecutive 5xx"),
                (o.consecutive_gateway, "consecutive gateway errors"),
                (
                    if o.split_local_origin {
                        o.consecutive_local_origin
                    } else {
                        0
                    },
                    "consecutive local-origin failures",
                ),
            ]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            let _ = writeln!(
                out,
                "  health: outlier detection from {}: eject after {}; {:?} x times ejected (max {:?}); at most {}% ejected{}",
                h.outlier_source,
                if detectors.is_empty() { "never".to_owned() } else { detectors.join(" or ") },
                o.base_ejection,
                o.max_ejection,
                o.max_ejection_percent,
                if o.min_health_percent > 0 {
                    format!("; panic below {}% healthy", o.min_health_percent)
                } else {
                    String::new()
                }
            );
            if let Some(a) = &h.active {
                let _ = writeln!(
                    out,
                    "  active check: {} {} every {:?} (timeout {:?}), expect {:?}, unhealthy after {}, healthy after {}",
                    a.method, a.path, a.interval, a.timeout, a.expected_statuses, a.unhealthy_threshold, a.healthy_threshold
                );
            }
            if let Some(limits) = h.upstream.describe() {
                let _ = writeln!(out, "  circuit breaking: {limits}");
            }
            let spill = match h.options.spillover {
                locus_core::Spillover::Proportional => format!(
                    "proportional (overprovisioning factor {}: a bucket keeps all its traffic while >= {:.0}% of it is healthy)",
                    h.options.overprovisioning,
                    100.0 / h.options.overprovisioning
                ),
                locus_core::Spillover::AllOrNothing => "all-or-nothing (locus.io/spillover)".to_owned(),
            };
            let _ = writeln!(
                out,
                "  spillover: {spill}; retries: {} on connect failure{}{}",
                h.retry.attempts,
                if h.retry.statuses.is_empty() {
                    String::new()
                } else {
                    format!(" and on status {:?}", h.retry.statuses)
                },
                if h.options.fail_closed {
                    "; fails closed (503) when nothing is healthy"
                } else {
                    ""
                }
            );
            if let Some(band) = h.load_spill {
                let _ = writeln!(
                    out,
                    "  load-aware spill: on; moves traffic from the closest bucket to the next in {:.0}% steps while the closest is {}x busier (latency over unloaded latency), brings it back below {}x or as load falls",
                    locus_core::load::STEP * 100.0,
                    band.high,
                    band.low
                );
            }
            // The live snapshot when the Service is routed (its health is the gateway's now);
            // otherwise one built the same way.
            let snap = table
                .services
                .get(&(svc.key.clone(), port.port))
                .map(|t| t.snapshot.load_full())
                .unwrap_or_else(|| {
                    std::sync::Arc::new(ServiceSnapshot::build_with_health(
                        id.identity.clone(),
                        svc.policy,
                        port.balancer.clone(),
                        h.options,
                        port.endpoints.clone(),
                        port.endpoints.iter().map(|_| Default::default()).collect(),
                        crate::health::now_ms(),
                    ))
                });
            let _ = writeln!(
                out,
                "  ranking: {}; balancing within a bucket: {}",
                snap.rule,
                match &snap.balancer.algorithm {
                    locus_core::Algorithm::ConsistentHash(on) => {
                        format!("consistent hash on {on:?} (best healthy bucket only)")
                    }
                    other => other.as_str().to_owned(),
                }
            );
            let active = snap.active_bucket();
            for (b, bucket) in snap.buckets.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  bucket {b} {:<26} {}/{} healthy, {:>5.1}% of traffic{}",
                    bucket.label,
                    bucket.healthy,
                    bucket.members.len(),
                    bucket.load * 100.0,
                    if active == Some(b) {
                        "  <- traffic goes here"
                    } else {
                        ""
                    }
                );
                for &i in &bucket.members {
                    let ep = &snap.endpoints[i as usize];
                    let _ = writeln!(
                        out,
                        "      {:<22} {:<24} {}node {:<12} weight {:<3} {:<10} {}",
                        ep.addr.to_string(),
                        ep.locality.to_string(),
                        match id.identity.cluster_of(ep) {
                            "" => String::new(),
                            c => format!("cluster {c:<14} "),
                        },
                        ep.node.as_deref().unwrap_or("-"),
                        ep.weight,
                        format!("{:?}", ep.state).to_lowercase(),
                        ep.origin
                    );
                }
            }
            let ranked: usize = snap.buckets.iter().map(|b| b.members.len()).sum();
            if ranked < snap.endpoints.len() {
                let _ = writeln!(
                    out,
                    "  excluded: {} endpoint(s) not on the gateway's node",
                    snap.endpoints.len() - ranked
                );
            }
            if let Err(why) = snap.pick() {
                let _ = writeln!(out, "  requests now get 503: {why}");
            }
            // maxEjectionPercent below what a bucket holds means a dead bucket can never be
            // fully ejected, so failover would rely on retries alone.
            let allowed = (snap.endpoints.len() * o.max_ejection_percent as usize / 100).max(1);
            if let Some(first) = snap.buckets.iter().find(|b| !b.members.is_empty()) {
                if allowed < first.members.len() && !svc.policy.strict_local {
                    let _ = writeln!(
                        out,
                        "  warning: maxEjectionPercent {}% allows {allowed} of {} endpoints ejected, fewer than the {} in bucket {}: if that bucket fails, failover relies on retries only",
                        o.max_ejection_percent,
                        snap.endpoints.len(),
                        first.members.len(),
                        first.label
                    );
                }
            }
            if snap.using_terminating {
                let _ = writeln!(
                    out,
                    "  note: no ready endpoint; terminating endpoints that still serve are used"
                );
            }
        }
    }
    if !table.warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for w in &table.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}
