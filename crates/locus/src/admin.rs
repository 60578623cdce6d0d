//! The admin server: `/metrics`, `/ready`, `/healthz`, `/debug/endpoints`, `/debug/config`.
//!
//! Bound to 127.0.0.1:15000 by default: it shows the whole topology and is never exposed on
//! another address unless `--admin` says so.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::health::now_ms;
use crate::routing::{zone_imbalance, RouteTable};

/// Connections the admin API holds at once (it answers operators and scrapers, not clients).
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    serve_paths(listener, gateway, Exposure::All).await
}

/// Which admin paths an address answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Everything, `/debug` included (loopback by default).
    All,
    /// `/metrics`, `/ready` and `/healthz` only: for kubelet probes and scrapers, on an
    /// address reachable from outside the pod (`--probe-addr`).
    Probes,
}

/// Serves the admin paths `exposure` allows on `listener` until the task is dropped.
pub async fn serve_paths(listener: TcpListener, gateway: Arc<Gateway>, exposure: Exposure) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let open = Arc::new(crate::proxy::PortConnections::default());
    loop {
        let (stream, _) = crate::proxy::accept(&listener, "admin").await;
        let Some(held) = open.hold(MAX_ADMIN_CONNECTIONS) else {
            continue;
        };
        let gateway = gateway.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(respond(&gateway, req, exposure)) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            drop(held);
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_reply(v: Value) -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(&v).unwrap_or_default(),
    )
}

fn respond(gateway: &Gateway, req: Request<Incoming>, exposure: Exposure) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if exposure == Exposure::Probes && !matches!(path, "/metrics" | "/ready" | "/healthz") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "this address serves /metrics, /ready and /healthz only\n",
        );
    }
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            gateway.metrics().encode(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/ready" => {
            if gateway.shutting_down() {
                // Load balancers and EndpointSlices stop sending here while requests drain.
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n",
                )
            } else if gateway.generation() > 0 {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no configuration applied yet\n",
                )
            }
        }
        "/debug/endpoints" => json_reply(endpoints(&gateway.table(), gateway)),
        "/debug/config" => json_reply(config(gateway)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /metrics /ready /healthz /debug/endpoints /debug/config\n",
        ),
    }
}

/// Per Service: buckets, endpoints with health, in-flight requests and their current share,
/// and bytes with the estimated cost saved against locality-blind routing.
pub fn endpoints(table: &RouteTable, gateway: &Gateway) -> Value {
    let now = now_ms();
    let metrics = gateway.metrics();
    let gw = &table.identity.identity;
    let services: Vec<Value> = table
        .services
        .values()
        .map(|target| {
            let snap = target.snapshot.load();
            let buckets: Vec<Value> = snap
                .buckets
                .iter()
                .enumerate()
                .map(|(b, bucket)| {
                    let eligible_weight: f64 = bucket
                        .eligible
                        .iter()
                        .map(|&i| f64::from(snap.endpoints[i as usize].weight))
                        .sum();
                    let endpoints: Vec<Value> = bucket
                        .members
                        .iter()
                        .map(|&i| {
                            let ep = &snap.endpoints[i as usize];
                            let h = &snap.health[i as usize];
                            let share = if bucket.eligible.contains(&i) && eligible_weight > 0.0 {
                                bucket.load * f64::from(ep.weight) / eligible_weight
                            } else {
                                0.0
                            };
                            let latency = h.load.view_ms().map(
                                |(mean, unloaded)| json!({"mean_ms": mean, "fastest_ms": unloaded}),
                            );
                            json!({
                                "latency": latency,
                                "address": ep.addr.to_string(),
                                "locality": ep.locality.to_string(),
                                "cluster": gw.cluster_of(ep),
                                "node": ep.node.as_deref(),
                                "weight": ep.weight,
                                "state": format!("{:?}", ep.state),
                                "healthy": h.is_healthy(now),
                                "ejected": h.is_ejected(now),
                                "ejected_for_ms": h.ejected_until(now).map(|u| u - now),
                                "times_ejected": h.ejection_count(),
                                "active_check_failing": h.is_active_unhealthy(),
                                "in_flight": h.in_flight.load(Ordering::Relaxed),
                                "share": share,
                                "origin": &*ep.origin,
                            })
                        })
                        .collect();
                    json!({
                        "index": b,
                        "bucket": bucket.label,
                        "load": bucket.load,
                        "healthy": bucket.healthy,
                        "total": bucket.members.len(),
                        "endpoints": endpoints,
                    })
                })
                .collect();
            // Locality-blind routing would send each byte to a random endpoint by weight: the
            // share of weight outside the gateway's zone is what it would send across zones.
            let total_weight: f64 = snap.endpoints.iter().map(|e| f64::from(e.weight)).sum();
            let outside: f64 = snap
                .endpoints
                .iter()
                .filter(|e| {
                    !gw.locality.same_zone(&e.locality)
                        && gw.relation(e) != locus_core::Relation::SameNode
                })
                .map(|e| f64::from(e.weight))
                .sum();
            let blind_fraction = if total_weight > 0.0 {
                outside / total_weight
            } else {
                0.0
            };
            let bytes = target.totals.bytes.load(Ordering::Relaxed);
            let cross = target.totals.cross_zone_bytes.load(Ordering::Relaxed);
            let blind_cross = bytes as f64 * blind_fraction;
            let saved_bytes = (blind_cross - cross as f64).max(0.0);
            let load_spill = target.health.load_spill.map(|band| {
                let view = target.load_view.load();
                let label = |b: usize| snap.buckets[b].label.clone();
                let route = snap.spill_route.as_ref();
                json!({
                    "fraction": snap.load_spill_in_force(),
                    "band": {"high": band.high, "low": band.low},
                    "closest_bucket": route.map(|r| label(r.from)),
                    "next_buckets": route.map(|r| r.to.iter().map(|(b, _)| label(*b)).collect::<Vec<_>>()),
                    "closest_load": view.as_ref().and_then(|v| v.closest),
                    "next_load": view.as_ref().and_then(|v| v.next),
                    "last_decision": view.as_ref().map(|v| v.decision),
                })
            });
            json!({
                "service": &*target.name,
                "gateway_locality": gw.locality.to_string(),
                "zone_balance_fallback": target.zone_balance_fallback,
                "load_spill": load_spill,
                "ranking": snap.rule.to_string(),
                "algorithm": snap.balancer.algorithm.as_str(),
                "mode": snap.mode.as_str(),
                "spilled_fraction": snap.spilled_fraction(),
                "zone_imbalance_ratio": zone_imbalance(&snap),
                "outlier_detection": target.health.outlier_source,
                "buckets": buckets,
                "bytes": {
                    "total": bytes,
                    "cross_zone": cross,
                    "locality_blind_cross_zone_estimate": blind_cross.round() as u64,
                    "saved": saved_bytes.round() as u64,
                    "estimated_cost_saved_dollars": saved_bytes / 1e9 * metrics.cost_cross_zone,
                },
            })
        })
        .collect();
    json!({
        "generation": table.generation,
        "gateway": {
            "locality": gw.locality.to_string(),
            "locality_source": table.identity.source,
            "node": gw.node,
            "cluster": gw.cluster,
        },
        "services": services,
    })
}

fn config(gateway: &Gateway) -> Value {
    let table = gateway.table();
    let tls = gateway.listener_tls();
    let listeners: Vec<Value> = gateway
        .listener_addrs()
        .iter()
        .map(|(port, addr)| {
            // What each HTTPS listener serves: its hostname and how many certificates it has
            // (never the certificates' keys).
            let https = tls.get(port).cloned().flatten().map(|t| {
                t.sni
                    .listeners()
                    .iter()
                    .map(|l| json!({"listener": l.name, "hostname": l.hostname, "certificates": l.certs.len()}))
                    .collect::<Vec<_>>()
            });
            json!({
                "port": port,
                "bound": addr.to_string(),
                "protocol": if https.is_some() { "HTTPS" } else { "HTTP" },
                "tls": https,
                "listeners": table.ports.get(port).map(|p| p.listeners.clone()).unwrap_or_default(),
                "hosts": table.ports.get(port).map(|p| p.hosts()).unwrap_or_default(),
            })
        })
        .collect();
    let refused: Vec<Value> = table
        .listener_status
        .iter()
        .filter(|l| !l.refused_refs.is_empty())
        .map(|l| {
            json!({
                "gateway": l.gateway.to_string(),
                "listener": l.name,
                "refused": l.refused_refs.iter().map(|(reason, why)| json!({"reason": reason, "message": why})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "generation": table.generation,
        "files": gateway.files(),
        "last_reload_error": gateway.last_error(),
        "discovery_error": gateway.discovery_status(),
        "gateway": {
            "locality": table.identity.identity.locality.to_string(),
            "locality_source": table.identity.source,
            "node": table.identity.identity.node,
            "cluster": table.identity.identity.cluster,
            "cluster_source": table.identity.cluster_source,
        },
        "listeners": listeners,
        "listener_problems": refused,
        // The Gateway API status Locus would write (and writes, in cluster mode).
        "listener_status": table.listener_status.iter().map(|l| json!({
            "gateway": l.gateway.to_string(),
            "listener": l.name,
            "attached_routes": l.attached_routes,
            "supported_kinds": l.supported_kinds,
            "unsupported_protocol": l.unsupported_protocol,
            "refused": l.refused_refs.iter().map(|(reason, why)| json!({"reason": reason, "message": why})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "route_status": table.route_status.iter().map(|r| {
            let condition = |c: &Result<(), (&'static str, String)>| match c {
                Ok(()) => json!({"status": "True"}),
                Err((reason, why)) => json!({"status": "False", "reason": reason, "message": why}),
            };
            json!({
                "kind": r.kind,
                "route": r.route.to_string(),
                "gateway": r.gateway.to_string(),
                "section": r.section,
                "port": r.port,
                "accepted": condition(&r.accepted),
                "resolved_refs": condition(&r.resolved),
            })
        }).collect::<Vec<_>>(),
        "limits": limits(&gateway.limits()),
        "services": table.services.values().map(|t| t.name.to_string()).collect::<Vec<_>>(),
        "warnings": table.warnings,
    })
}

/// The client and upstream bounds in force (`docs/edge.md`), milliseconds and bytes; `null`
/// is no limit.
fn limits(l: &crate::proxy::Limits) -> Value {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    json!({
        "header_read_timeout_ms": ms(l.header_read_timeout),
        "idle_timeout_ms": ms(l.idle_timeout),
        "max_request_head_bytes": l.max_request_head,
        "max_request_headers": l.max_headers,
        "max_uri_bytes": l.max_uri,
        "body_idle_timeout_ms": ms(l.body_idle_timeout),
        "max_connections": l.max_connections,
        "h2_max_streams": l.h2_max_streams,
        "connect_timeout_ms": ms(Some(l.connect_timeout)),
        "request_timeout_ms": ms(l.request_timeout),
        "max_response_head_bytes": l.max_response_head,
        "normalize_paths": l.normalize_paths,
        "escaped_slashes": format!("{:?}", l.escaped_slashes).to_lowercase(),
    })
}

/// Binds the admin listener. Returns the bound address.
pub async fn start(
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    exposure: Exposure,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve_paths(listener, gateway, exposure));
    Ok(bound)
}
