//! Routing one request and streaming it to the chosen endpoint and back.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use locus_core::balancer::hash_bytes;
use locus_core::balancer::SnapshotMode;
use locus_core::{Algorithm, EndpointHealth, HashOn, Outcome, Tier};

use super::body::ProxyBody;
use super::error::ProxyError;
use super::pool::{self, Meter, SendError};
use super::{ConnInfo, Shared, CONNECT_TIMEOUT};
use crate::health::{now_ms, HealthEvent};
use crate::routing::{Backend, ServiceTarget};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The request's host without port, lower-cased (Host header for HTTP/1, `:authority` for h2).
/// Borrowed when the host is already lower case (nearly always): no allocation per request.
fn request_host(parts: &http::request::Parts) -> std::borrow::Cow<'_, str> {
    let raw = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("");
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(without_port)
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named by `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let keep_te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn io_detail(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = cur {
        last = e.to_string();
        cur = e.source();
    }
    last
}

/// What the first attempt's pick is replaced by on retries: everything tried is avoided.
fn pick_endpoint(
    target: &ServiceTarget,
    tried: &[SocketAddr],
    now: u64,
    first: Option<(&http::request::Parts, &ConnInfo, &mut Option<HeaderValue>)>,
) -> Result<(SocketAddr, Arc<EndpointHealth>, Tier, u32), ProxyError> {
    let snap = target.snapshot.load();
    // The consistent-hash key is read from the request on the first attempt only, against the
    // snapshot already loaded for the pick (retries avoid tried endpoints instead).
    let key = match (first, &snap.balancer.algorithm) {
        (Some((parts, info, cookie)), Algorithm::ConsistentHash(on)) => {
            let (key, set) = hash_key(on, parts, info);
            *cookie = set;
            key
        }
        _ => None,
    };
    let no_endpoint = |reason| ProxyError::NoEndpoint {
        service: target.name.clone(),
        reason,
    };
    let mut pick = if tried.is_empty() {
        snap.pick_for(key).map_err(no_endpoint)?
    } else {
        let idx = tried_indices(&snap.endpoints, tried);
        snap.pick_excluding(&idx).map_err(no_endpoint)?
    };
    // An endpoint ejected by a request a moment ago may still be in this snapshot until the
    // health monitor publishes the next one: step over it rather than send it traffic.
    if snap.mode == SnapshotMode::Normal && snap.endpoint_health(pick).is_ejected(now) {
        let mut idx = tried_indices(&snap.endpoints, tried);
        idx.push(pick.endpoint);
        match snap.pick_excluding(&idx) {
            Ok(p) => pick = p,
            // Nothing else left: a fail-closed Service answers now as its next snapshot will.
            Err(_) if snap.options.fail_closed => {
                return Err(no_endpoint(locus_core::balancer::NoEndpoint::NoneHealthy(
                    snap.endpoints.len(),
                )))
            }
            Err(_) => {}
        }
    }
    Ok((
        snap.endpoint(pick).addr,
        snap.endpoint_health(pick).clone(),
        snap.buckets[pick.bucket as usize].tier,
        pick.endpoint,
    ))
}

fn tried_indices(endpoints: &[locus_core::Endpoint], tried: &[SocketAddr]) -> Vec<u32> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| tried.contains(&e.addr))
        .map(|(i, _)| i as u32)
        .collect()
}

/// Feeds an outcome to outlier detection and ejects the endpoint when a threshold is crossed
/// and `maxEjectionPercent` allows it (at least one endpoint always may be, as in Envoy).
fn note_outcome(
    shared: &Shared,
    target: &ServiceTarget,
    addr: SocketAddr,
    health: &EndpointHealth,
    outcome: Outcome,
) {
    let policy = &target.health.outlier;
    let now = now_ms();
    let Some(reason) = health.record(outcome, policy, now) else {
        return;
    };
    let snap = target.snapshot.load();
    let ejected = snap.health.iter().filter(|h| h.is_ejected(now)).count();
    let allowed = (snap.health.len() * policy.max_ejection_percent as usize / 100).max(1);
    if ejected >= allowed {
        tracing::info!(service = %target.name, endpoint = %addr, reason = reason.as_str(), ejected, allowed,
            "not ejecting: maxEjectionPercent reached");
        return;
    }
    if let Some(until) = health.eject(policy, now) {
        shared
            .metrics
            .ejections
            .get_or_create(&crate::metrics::ReasonLabels {
                service: target.name.to_string(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
        tracing::warn!(
            service = %target.name,
            endpoint = %addr,
            reason = reason.as_str(),
            times = health.ejection_count(),
            for_ms = until - now,
            "endpoint ejected"
        );
        let _ = shared.health_tx.send(HealthEvent::Ejected {
            addr,
            until_ms: until,
        });
    }
}

/// The request URI for an endpoint: absolute for HTTP/2 (hyper needs the authority there),
/// origin-form for HTTP/1.1, as it is sent to an origin server.
fn upstream_uri(h2c: bool, addr: SocketAddr, path_and_query: &PathAndQuery) -> Uri {
    if h2c {
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is an authority");
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path_and_query.clone())
            .build()
            .expect("valid parts make a valid URI")
    } else {
        Uri::from(path_and_query.clone())
    }
}

/// Sends a copy of the request to one endpoint of `mirror`, in the background; its response
/// is read and dropped. A body that is streamed rather than buffered (larger than the replay
/// limit) is not mirrored: that would mean holding the client's upload for the mirror.
fn send_mirror(
    shared: &Shared,
    mirror: &Arc<ServiceTarget>,
    parts: &http::request::Parts,
    path_and_query: &PathAndQuery,
    body: Option<&Bytes>,
) {
    let Some(body) = body else {
        tracing::debug!(service = %mirror.name, "request body streamed; not mirrored");
        return;
    };
    let snap = mirror.snapshot.load();
    let Ok(pick) = snap.pick() else {
        tracing::debug!(service = %mirror.name, "no endpoint to mirror to");
        return;
    };
    let addr = snap.endpoint(pick).addr;
    // A slow or stuck mirror must not pile up copies: beyond the cap, copies are dropped.
    if MIRRORS_IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_MIRRORS_IN_FLIGHT
    {
        MIRRORS_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(service = %mirror.name, "too many mirrored requests in flight; copy dropped");
        return;
    }
    let mut req = Request::new(ProxyBody::text(body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    let h2c = mirror.h2c.then(|| shared.h2c_client.clone());
    if h2c.is_some() {
        *req.version_mut() = Version::HTTP_2;
    }
    *req.uri_mut() = upstream_uri(h2c.is_some(), addr, path_and_query);
    let name = mirror.name.clone();
    tokio::spawn(async move {
        let copy = async move {
            match h2c {
                Some(client) => match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        Ok(status)
                    }
                    Err(e) => Err(e.to_string()),
                },
                None => match pool::send(addr, req, CONNECT_TIMEOUT).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        Ok(status)
                    }
                    Err(_) => Err("connection failed".to_owned()),
                },
            }
        };
        let status = tokio::time::timeout(MIRROR_TIMEOUT, copy).await;
        MIRRORS_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(service = %name, endpoint = %addr, ?status, "mirrored");
    });
}

/// Mirrored requests in flight, process-wide, and the cap beyond which copies are dropped.
static MIRRORS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_MIRRORS_IN_FLIGHT: usize = 1024;
/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts a request in flight on an endpoint for as long as it lives.
struct InFlight(Arc<EndpointHealth>);

impl InFlight {
    fn new(h: Arc<EndpointHealth>) -> Self {
        h.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(h)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The consistent-hash key of a request, and the cookie to set when the policy hashes on a
/// cookie with a TTL and the client has none yet (Envoy's and Istio's behaviour).
fn hash_key(
    on: &HashOn,
    parts: &http::request::Parts,
    info: &ConnInfo,
) -> (Option<u64>, Option<HeaderValue>) {
    match on {
        HashOn::Header(name) => (
            parts
                .headers
                .get(name.as_str())
                .map(|v| hash_bytes(v.as_bytes())),
            None,
        ),
        HashOn::SourceIp => (
            Some(hash_bytes(info.peer.ip().to_string().as_bytes())),
            None,
        ),
        HashOn::QueryParameter(name) => {
            let v = parts.uri.query().and_then(|q| {
                q.split('&')
                    .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.to_owned())
            });
            (v.map(|v| hash_bytes(v.as_bytes())), None)
        }
        HashOn::Cookie { name, ttl_secs } => {
            let found = parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_owned());
            match (found, ttl_secs) {
                (Some(v), _) => (Some(hash_bytes(v.as_bytes())), None),
                (None, Some(ttl)) => {
                    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let seed = format!(
                        "{}-{}-{}",
                        info.peer,
                        now_ms(),
                        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    );
                    let value = format!("{:016x}", hash_bytes(seed.as_bytes()));
                    let cookie = HeaderValue::from_str(&format!(
                        "{name}={value}; Max-Age={ttl}; Path=/; HttpOnly"
                    ))
                    .ok();
                    (Some(hash_bytes(value.as_bytes())), cookie)
                }
                (None, None) => (None, None),
            }
        }
    }
}

fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// Bodies up to this size are buffered so a request can be retried on another endpoint.
const REPLAY_LIMIT: u64 = 64 * 1024;

pub(super) async fn forward(
    shared: &Shared,
    info: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let host = request_host(&parts).into_owned();

    // Everything read from the route table is cloned out (a few Arcs) so no guard is held
    // across the upstream await.
    let (action, target, prefix) = {
        let table = shared.table.load();
        let (action, prefix) = table
            .ports
            .get(&info.port)
            .and_then(|t| t.route(&host, &parts))
            .ok_or_else(|| ProxyError::NoRoute {
                host: host.clone(),
                path: parts.uri.path().to_owned(),
            })?;
        let action = action.clone();
        // Copied only for the rules whose filters replace it.
        let prefix = if action.needs_prefix {
            prefix.map(str::to_owned)
        } else {
            None
        };
        if let Some(why) = &action.unsupported {
            return Err(ProxyError::UnsupportedFilter {
                route: action.route.clone(),
                why: why.clone(),
            });
        }
        if let Some(redirect) = &action.filters.redirect {
            let location = redirect.location(
                &host,
                info.port,
                parts.uri.path(),
                parts.uri.query(),
                prefix.as_deref(),
            );
            let mut resp = Response::new(ProxyBody::empty());
            *resp.status_mut() = redirect.status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            if let Some(edits) = &action.filters.response_headers {
                edits.apply(resp.headers_mut());
            }
            return Ok(resp);
        }
        let target = match action.pick_backend() {
            None => return Err(ProxyError::NoBackendWeight(action.route.clone())),
            Some(Backend::Invalid(why)) => return Err(ProxyError::InvalidBackend(why.clone())),
            Some(Backend::Service(t)) => t.clone(),
        };
        (action, target, prefix)
    };

    // The request as it goes upstream, minus URI and body (set per attempt).
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if let Some(rewrite) = &action.filters.rewrite {
        if let Some(edit) = &rewrite.path {
            let path = edit.apply(path_and_query.path(), prefix.as_deref());
            let full = match path_and_query.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            path_and_query = PathAndQuery::try_from(full).map_err(|e| {
                ProxyError::BadRequest(format!("the rewritten path is not valid: {e}"))
            })?;
        }
        if let Some(h) = &rewrite.hostname {
            parts.headers.insert(header::HOST, h.clone());
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) && !host.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // The peer's address is formatted once per connection; appended to a client's own list.
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", info.peer.ip())).ok(),
        None => Some(info.peer_ip.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    // The route's edits come last, so they can override what the gateway adds.
    if let Some(edits) = &action.filters.request_headers {
        edits.apply(&mut parts.headers);
    }
    let version = if target.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    // A body that can be sent again makes the request retryable on another endpoint.
    let retry = &target.health.retry;
    let mut streaming = None;
    let replay: Option<Bytes> = if body.is_end_stream() {
        Some(Bytes::new())
    } else {
        let small = body.size_hint().upper().is_some_and(|n| n <= REPLAY_LIMIT);
        if (retry.attempts > 0 || !action.mirrors.is_empty()) && small {
            Some(
                body.collect()
                    .await
                    .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?
                    .to_bytes(),
            )
        } else {
            streaming = Some(body);
            None
        }
    };
    let request_bytes = match (&replay, &streaming) {
        (Some(b), _) => b.len() as u64,
        (None, Some(body)) => body.size_hint().lower(),
        (None, None) => 0,
    };
    let max_attempts = if replay.is_some() {
        retry.attempts + 1
    } else {
        1
    };
    for (mirror, fraction) in &action.mirrors {
        if action.mirror_this(*fraction) {
            send_mirror(shared, mirror, &parts, &path_and_query, replay.as_ref());
        }
    }
    let deadline = action.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut set_cookie = None;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error = None;
    // A request handed back by an attempt that could not send it, reused as is.
    let mut pending: Option<Request<ProxyBody>> = None;

    for attempt in 1..=max_attempts {
        let (addr, health, tier, idx) = match pick_endpoint(
            &target,
            &tried,
            now_ms(),
            tried.is_empty().then_some((&parts, info, &mut set_cookie)),
        ) {
            Ok(p) => p,
            // Nothing left to retry on: the client gets the error that made us retry.
            Err(e) => return Err(last_error.unwrap_or(e)),
        };
        tracing::debug!(service = %target.name, endpoint = %addr, bucket = %tier, attempt, route = %action.route, "forwarding");
        let last = attempt == max_attempts;
        let mut upstream = match pending.take() {
            Some(r) => r,
            None => {
                let mut r = Request::new(match (&replay, streaming.take()) {
                    (Some(bytes), _) => ProxyBody::text(bytes.clone()),
                    (None, Some(body)) => ProxyBody::Incoming(body),
                    (None, None) => ProxyBody::empty(),
                });
                *r.method_mut() = parts.method.clone();
                *r.version_mut() = version;
                // Kept for a retry that has to rebuild the request; the last attempt takes them.
                *r.headers_mut() = if last {
                    std::mem::take(&mut parts.headers)
                } else {
                    parts.headers.clone()
                };
                r
            }
        };
        *upstream.uri_mut() = upstream_uri(target.h2c, addr, &path_and_query);

        let _in_flight = InFlight::new(health.clone());
        let em = &target.endpoint_metrics[idx as usize];
        let started = std::time::Instant::now();
        let per_try = retry
            .per_try_timeout
            .map(|t| tokio::time::Instant::now() + t);
        let until = match (deadline, per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Err: (detail, never reached the endpoint, the request if it is handed back).
        let call = async {
            if target.h2c {
                shared
                    .h2c_client
                    .request(upstream)
                    .await
                    .map(|r| r.map(ProxyBody::Incoming))
                    .map_err(|e| (io_detail(&e), e.is_connect(), None))
            } else {
                pool::send(addr, upstream, CONNECT_TIMEOUT)
                    .await
                    .map(|r| {
                        r.map(|mut body| {
                            body.set_meter(Meter {
                                metrics: em.clone(),
                                totals: target.totals.clone(),
                                request_bytes,
                                response_bytes: 0,
                            });
                            ProxyBody::Pooled(body)
                        })
                    })
                    .map_err(|e| match e {
                        SendError::Connect(io, req) => (io.to_string(), true, Some(req)),
                        SendError::Request(err, req) => (io_detail(&err), req.is_some(), req),
                    })
            }
        };
        let result = match until {
            Some(at) => match tokio::time::timeout_at(at, call).await {
                Ok(r) => r,
                Err(_) => {
                    note_outcome(shared, &target, addr, &health, Outcome::LocalOriginFailure);
                    if target.health.load_spill.is_some() {
                        // A timeout is the slowest answer there is: it counts as load.
                        health.load.record(started.elapsed().as_micros() as u64);
                    }
                    return Err(ProxyError::Timeout {
                        service: target.name.clone(),
                        addr,
                        timeout: action.timeout.or(retry.per_try_timeout).unwrap_or_default(),
                    });
                }
            },
            None => call.await,
        };
        match result {
            Err((detail, unsent, back)) => {
                note_outcome(shared, &target, addr, &health, Outcome::LocalOriginFailure);
                if unsent {
                    em.connect_failures.inc();
                }
                let error = if unsent {
                    ProxyError::UpstreamConnect {
                        service: target.name.clone(),
                        addr,
                        detail,
                    }
                } else {
                    ProxyError::Upstream {
                        service: target.name.clone(),
                        addr,
                        detail,
                    }
                };
                // A request that never reached the endpoint is retried: it cannot have had an
                // effect there. So is an idempotent one whose connection broke (an endpoint
                // killed mid-request), as RFC 9110 §9.2.2 allows.
                if (unsent || idempotent(&parts.method)) && !last {
                    tracing::debug!(service = %target.name, endpoint = %addr, error = %error, "retrying on another endpoint");
                    tried.push(addr);
                    pending = back;
                    last_error = Some(error);
                    continue;
                }
                return Err(error);
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                note_outcome(shared, &target, addr, &health, Outcome::Status(status));
                let elapsed = started.elapsed();
                em.response(status, elapsed.as_secs_f64());
                // A fast 5xx (an endpoint shedding load) must not read as an idle endpoint;
                // refused connections are outlier detection's business, not load.
                if target.health.load_spill.is_some() && status < 500 {
                    health.load.record(elapsed.as_micros() as u64);
                }
                if target.h2c {
                    em.bytes(
                        request_bytes,
                        resp.body().size_hint().exact().unwrap_or(0),
                        &target.totals,
                    );
                }
                if !last && retry.statuses.contains(&status) {
                    // Try another endpoint; if none is left, this response goes back as is.
                    let snap = target.snapshot.load();
                    let mut idx = tried_indices(&snap.endpoints, &tried);
                    idx.extend(tried_indices(&snap.endpoints, &[addr]));
                    if snap.pick_excluding(&idx).is_ok() {
                        tracing::debug!(service = %target.name, endpoint = %addr, status, "retrying on another endpoint");
                        tried.push(addr);
                        continue;
                    }
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if let Some(edits) = &action.filters.response_headers {
                    edits.apply(&mut parts.headers);
                }
                if let Some(cookie) = set_cookie.take() {
                    parts.headers.append(header::SET_COOKIE, cookie);
                }
                return Ok(Response::from_parts(parts, body));
            }
        }
    }
    unreachable!("the last attempt always returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-kept").is_some());
    }
}
