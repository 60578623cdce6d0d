//! Routing one request and streaming it to the chosen endpoint and back, in the order the data
//! flows: route → upstream head → body (buffered for retries, or streamed) → mirrors → attempts.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use locus_core::balancer::SnapshotMode;
use locus_core::health::Fault;
use locus_core::{Algorithm, EndpointHealth, Tier};

use super::body::{ClientIn, ProxyBody, UpstreamBody};
use super::error::ProxyError;
use super::h1::ExchangeError;
use super::outcome::{Attempt, ClientBody, ClientBodyState};
use super::pool::{self, SendError};
use super::request::{
    check_head, hash_key, idempotent, request_host, strip_hop_by_hop, upstream_uri, Added,
    HeadFacts, X_FORWARDED_FOR, X_FORWARDED_PROTO,
};
use super::session::{self, Session};
use super::upstream_tls;
use super::{mirror, ConnInfo, Shared};
use crate::health::ms_at;
use crate::model::RetryPolicy;
use crate::routing::{Backend, RuleAction, ServiceTarget, EAST_WEST_HEADER};

/// Bodies up to this size are buffered so a request can be retried on another endpoint.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// The request's head is borrowed, not moved: it stays in the caller's future for the whole
/// exchange (each move of it into a step's future and out again was a copy of its 200 bytes).
pub(super) async fn forward(
    shared: &Shared,
    info: &ConnInfo,
    parts: &mut http::request::Parts,
    body: ClientIn,
    facts: &HeadFacts,
    made_id: Option<&[u8; 36]>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if parts.uri.path_and_query().map_or(0, |p| p.as_str().len()) > shared.limits.max_uri {
        return Err(ProxyError::UriTooLong);
    }
    check_head(parts, facts)?;
    if shared.limits.normalize_paths {
        normalize_path(&mut parts.uri, shared.limits.escaped_slashes)?;
    }
    let host = request_host(parts, facts);
    if let Some(tls) = &info.tls {
        // A connection is for the listener its SNI chose: a Host of another listener's (HTTP/2
        // connection reuse across names, or a forged Host) is misdirected (RFC 9110 §15.5.20).
        if tls.sni && tls.port.sni.listener_for(Some(&host)) != tls.listener {
            return Err(ProxyError::Misdirected {
                host: host.into_owned(),
                listener: tls
                    .listener
                    .map_or("none", |i| tls.port.sni.listener_name(i))
                    .to_owned(),
            });
        }
    }
    let Forward {
        action,
        target,
        backend_filters,
        prefix,
        cors_origin,
        session,
    } = match route(shared, info, &host, parts)? {
        Routed::Answer(resp) => return Ok(*resp),
        Routed::Forward(forward) => forward,
    };
    // An HTTP/1.1 upgrade (WebSocket): the upgrade headers are hop-by-hop, so they are put back
    // after the head is made, and the client's side of the switch is kept for the tunnel.
    let upgrade = upgrade_request(parts, facts, target.h2c || action.grpc);
    let mut added = Added {
        request_id: made_id,
        ..Added::default()
    };
    let mut path_and_query = upstream_head(
        parts,
        info,
        facts,
        &mut added,
        &action.filters,
        prefix.as_deref(),
    )?;
    if let Some(filters) = &backend_filters {
        // The backendRef's edits come after the rule's (the Gateway API's order).
        path_and_query = apply_edits(
            parts,
            &mut added,
            filters,
            path_and_query,
            prefix.as_deref(),
        )?;
    }
    if !action.mirrors.is_empty() {
        // A mirror gets a copy of the head as it goes upstream, added fields and all.
        added.merge_into(&mut parts.headers);
    }
    if let Some(u) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.protocol.clone());
    }
    // Most requests have no body: they skip making and polling `read`'s future.
    let mut body = if body.is_end_stream() {
        RequestBody::Replay(Bytes::new())
    } else {
        RequestBody::read(body, &target, &action, shared.limits.body_idle_timeout).await?
    };
    // A WebSocket handshake is not mirrored: a copy could switch a mirror's connection too.
    for (mirror, fraction) in action.mirrors.iter().filter(|_| upgrade.is_none()) {
        if action.mirror_this(*fraction) {
            mirror::send_mirror(shared, mirror, parts, &path_and_query, body.replay());
        }
    }
    let backend_edits = backend_filters
        .as_ref()
        .and_then(|f| f.response_headers.as_ref());
    let cors = action.filters.cors.as_ref().zip(cors_origin.as_ref());
    let exchange = Exchange {
        shared,
        info,
        action: &action,
        target: &target,
        path_and_query,
        added,
        edits_response: action.filters.response_headers.is_some()
            || backend_edits.is_some()
            || cors.is_some(),
        session,
    };
    let mut resp = exchange.run(parts, &mut body, upgrade).await?;
    if let Some(edits) = backend_edits {
        edits.apply(resp.headers_mut());
    }
    if let Some((cors, origin)) = cors {
        cors.decorate(resp.headers_mut(), origin);
    }
    Ok(resp)
}

/// A client's request to switch protocols: what it asked for, and its side of the connection
/// once the switch is made.
struct Upgrade {
    protocol: HeaderValue,
    client: hyper::upgrade::OnUpgrade,
}

/// `Connection: upgrade` with `Upgrade: websocket` on HTTP/1.1 (an HTTP/2 upstream cannot take
/// one: the request then goes as a plain request, its upgrade headers removed as hop-by-hop).
fn upgrade_request(
    parts: &mut http::request::Parts,
    facts: &HeadFacts,
    h2c_upstream: bool,
) -> Option<Upgrade> {
    // No `Upgrade` field on nearly every request: nothing to look up.
    if !facts.upgrade {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?.clone();
    if parts.version != Version::HTTP_11 || h2c_upstream {
        return None;
    }
    let asked = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // WebSocket only: a switch to anything else (`h2c` above all) would hand the client a
    // connection to the endpoint past every route and filter of the gateway.
    if !asked || !protocol.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    Some(Upgrade { protocol, client })
}

/// Puts the request's path in normal form (`locus_core::path`) before anything reads it:
/// matching, rewrites and the upstream request all see the same path.
pub(super) fn normalize_path(
    uri: &mut http::Uri,
    escaped: locus_core::path::EscapedSlashes,
) -> Result<(), ProxyError> {
    let normal = locus_core::path::normalize(uri.path(), escaped).map_err(ProxyError::BadPath)?;
    let Some(path) = normal else {
        return Ok(());
    };
    let full = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(full)
            .map_err(|e| ProxyError::BadRequest(format!("the normalized path: {e}")))?,
    );
    *uri = http::Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("the normalized path: {e}")))?;
    Ok(())
}

/// What the route table says to do with a request.
enum Routed {
    /// The gateway answers itself (a redirect; rare, so boxed).
    Answer(Box<Response<ProxyBody>>),
    Forward(Forward),
}

/// Where a routed request goes, and what its rule asks on the way.
struct Forward {
    action: Arc<RuleAction>,
    target: Arc<ServiceTarget>,
    /// The backendRef's own filters.
    backend_filters: Option<Arc<crate::model::Filters>>,
    /// The matched `PathPrefix`, kept only for the rules whose filters replace it.
    prefix: Option<String>,
    /// The request's `Origin`, when the rule's CORS filter allows it.
    cors_origin: Option<HeaderValue>,
    /// Its session, on a rule with `sessionPersistence`.
    session: Option<Session>,
}

/// Finds the rule and backend for a request. Everything read from the route table is cloned
/// out (a few Arcs), so no guard is held across the upstream await.
fn route(
    shared: &Shared,
    info: &ConnInfo,
    host: &str,
    parts: &http::request::Parts,
) -> Result<Routed, ProxyError> {
    let table = shared.table.load();
    if let Some(ew) = table.east_west.as_ref().filter(|e| e.port == info.port) {
        return east_west_route(ew, host, parts);
    }
    let (action, prefix) = table
        .ports
        .get(&info.port)
        .and_then(|t| t.route(host, parts))
        .ok_or_else(|| ProxyError::NoRoute {
            host: host.to_owned(),
            path: parts.uri.path().to_owned(),
        })?;
    let prefix = prefix.filter(|_| action.needs_prefix).map(str::to_owned);
    if let Some(why) = &action.unsupported {
        return Err(ProxyError::UnsupportedFilter {
            route: action.route.clone(),
            why: why.clone(),
        });
    }
    // CORS: an allowed origin's preflight is answered here; its actual requests go on, their
    // responses marked as shareable with it.
    let cors_origin = action.filters.cors.as_ref().and_then(|cors| {
        let origin = parts.headers.get(header::ORIGIN)?;
        cors.allows(origin.to_str().ok()?).then(|| origin.clone())
    });
    if let Some(cors) = &action.filters.cors {
        if parts.method == http::Method::OPTIONS
            && parts.headers.contains_key(header::ORIGIN)
            && parts.headers.contains_key("access-control-request-method")
        {
            // A preflight is the gateway's to answer: with the CORS headers for an allowed
            // origin, without them (so the browser refuses) for another.
            let mut resp = Response::new(ProxyBody::empty());
            if let Some(origin) = &cors_origin {
                *resp.headers_mut() = cors.preflight(origin, &parts.headers);
            }
            return Ok(Routed::Answer(Box::new(resp)));
        }
    }
    if let Some(redirect) = &action.filters.redirect {
        let location = redirect.location(
            info.scheme(),
            host,
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
        return Ok(Routed::Answer(Box::new(resp)));
    }
    // A request of a session goes to the session's backendRef; any other is split by weight.
    let (backend, session) = match &action.session {
        None => (action.pick_backend(), None),
        Some(model) => {
            let session = session::read(model, &parts.headers, &action.weights)
                .or_else(|| action.pick_backend_index().map(session::start));
            (session.map(|s| &action.backends[s.backend]), session)
        }
    };
    let (target, backend_filters) = match backend {
        None => return Err(ProxyError::NoBackendWeight(action.route.clone())),
        Some(Backend::Invalid(why)) => return Err(ProxyError::InvalidBackend(why.clone())),
        Some(Backend::Service(t, f)) => (t.clone(), f.clone()),
    };
    Ok(Routed::Forward(Forward {
        action: action.clone(),
        target,
        backend_filters,
        prefix,
        cors_origin,
        session,
    }))
}

/// The east-west listener routes by the hop header alone: to the named Service's endpoints in
/// this cluster, with none of the routes' filters (the sending gateway applied them).
fn east_west_route(
    ew: &crate::routing::EastWest,
    host: &str,
    parts: &http::request::Parts,
) -> Result<Routed, ProxyError> {
    let found = parts
        .headers
        .get(EAST_WEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|d| ew.by_destination.get(d));
    let Some((action, Backend::Service(target, _))) =
        found.and_then(|a| Some((a, a.backends.first()?)))
    else {
        return Err(ProxyError::NoRoute {
            host: host.to_owned(),
            path: parts.uri.path().to_owned(),
        });
    };
    Ok(Routed::Forward(Forward {
        action: action.clone(),
        target: target.clone(),
        backend_filters: None,
        prefix: None,
        cors_origin: None,
        session: None,
    }))
}

/// Turns the client's request head into the upstream one (URL rewrite, hop-by-hop headers,
/// `x-forwarded-*`, the route's header edits) and returns the path to send. The
/// `x-forwarded-*` fields the client did not send go into `added`.
fn upstream_head<'a>(
    parts: &mut http::request::Parts,
    info: &'a ConnInfo,
    facts: &HeadFacts,
    added: &mut Added<'a>,
    filters: &crate::model::Filters,
    prefix: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
    // The target's authority (h2's `:authority`, an absolute-form HTTP/1 target) is the host
    // the request was routed by: the upstream gets it as `Host`, whatever `Host` said.
    if let Some(authority) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path_and_query = rewrite(parts, filters, path_and_query, prefix)?;
    let headers = &mut parts.headers;
    if facts.hop_by_hop {
        strip_hop_by_hop(headers);
    }
    // The peer's address is formatted once per connection; appended to a client's own list.
    if facts.forwarded_for {
        // A list that is not text is replaced by the one hop the gateway knows.
        let v = headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .and_then(|prev| HeaderValue::from_str(&format!("{prev}, {}", info.peer.ip())).ok())
            .unwrap_or_else(|| info.peer_ip.clone());
        headers.insert(X_FORWARDED_FOR.clone(), v);
    } else {
        added.forwarded_for = Some(&info.peer_ip);
    }
    if facts.forwarded_proto {
        // The client's own claim is replaced, not passed on beside the gateway's.
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(info.scheme()),
        );
    } else {
        added.forwarded_proto = Some(info.scheme());
    }
    // The route's edits come last, so they can override what the gateway adds.
    if let Some(edits) = &filters.request_headers {
        added.merge_into(headers);
        edits.apply(headers);
    }
    Ok(path_and_query)
}

/// A backendRef's own URL rewrite and request header edits, after the rule's.
fn apply_edits(
    parts: &mut http::request::Parts,
    added: &mut Added<'_>,
    filters: &crate::model::Filters,
    path_and_query: PathAndQuery,
    prefix: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
    let path_and_query = rewrite(parts, filters, path_and_query, prefix)?;
    if let Some(edits) = &filters.request_headers {
        added.merge_into(&mut parts.headers);
        edits.apply(&mut parts.headers);
    }
    Ok(path_and_query)
}

/// `URLRewrite`: the path (and query) to send, and the `Host`.
fn rewrite(
    parts: &mut http::request::Parts,
    filters: &crate::model::Filters,
    mut path_and_query: PathAndQuery,
    prefix: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
    if let Some(rewrite) = &filters.rewrite {
        if let Some(edit) = &rewrite.path {
            let path = edit.apply(path_and_query.path(), prefix);
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
    Ok(path_and_query)
}

/// The client's body as it will be sent: buffered (so the request can be retried elsewhere or
/// mirrored), or streamed once.
enum RequestBody {
    Replay(Bytes),
    /// Streamed; taken by the first attempt. The state tells whose fault a failed send was.
    Stream(Option<ClientBody>, ClientBodyState, u64),
}

impl RequestBody {
    /// A body that is not known empty: read whole when a retry or a mirror may replay it and
    /// it is small, else streamed.
    async fn read(
        body: ClientIn,
        target: &ServiceTarget,
        action: &RuleAction,
        idle: Option<std::time::Duration>,
    ) -> Result<Self, ProxyError> {
        let small = body.size_hint().upper().is_some_and(|n| n <= REPLAY_LIMIT);
        let (body, state) = ClientBody::new(body, idle);
        if (retry_policy(action, target).attempts > 0 || !action.mirrors.is_empty()) && small {
            // A client whose body breaks here never reached an endpoint: a plain 400 (408 when
            // it stalled). Boxed: most requests have no body, and need not carry the state.
            let bytes = match Box::pin(body.collect()).await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Err(match state.fault() {
                        Some(f @ Fault::ClientTimeout) => ProxyError::Client(f),
                        _ => ProxyError::BadRequest(format!("reading the request body: {e}")),
                    })
                }
            };
            return Ok(RequestBody::Replay(bytes));
        }
        let expected = body.size_hint().lower();
        Ok(RequestBody::Stream(Some(body), state, expected))
    }

    fn replay(&self) -> Option<&Bytes> {
        match self {
            RequestBody::Replay(b) => Some(b),
            RequestBody::Stream(..) => None,
        }
    }

    fn len(&self) -> u64 {
        match self {
            RequestBody::Replay(b) => b.len() as u64,
            RequestBody::Stream(_, _, n) => *n,
        }
    }

    /// The body for one more attempt (a streamed one only once).
    fn take(&mut self) -> ProxyBody {
        match self {
            RequestBody::Replay(b) => ProxyBody::text(b.clone()),
            RequestBody::Stream(body, ..) => {
                body.take().map_or(ProxyBody::empty(), ProxyBody::Client)
            }
        }
    }

    /// Whose fault a failed send was, as far as the client's body tells.
    fn client_fault(&self, fault: Fault) -> Fault {
        let RequestBody::Stream(_, state, _) = self else {
            return fault;
        };
        match (state.fault(), fault) {
            (Some(client), _) => client,
            (None, Fault::Timeout) if state.waiting_on_client() => Fault::ClientTimeout,
            (None, f) => f,
        }
    }
}

/// The retry policy a request follows: its HTTPRoute rule's, else its Service's.
fn retry_policy<'a>(action: &'a RuleAction, target: &'a ServiceTarget) -> &'a RetryPolicy {
    action.retry.as_ref().unwrap_or(&target.health.retry)
}

/// A failed send: whose fault, and what happened.
struct SendFailure {
    fault: Fault,
    detail: String,
}

/// One request's way through the attempts: pick, send, judge, maybe retry.
struct Exchange<'a> {
    shared: &'a Shared,
    info: &'a ConnInfo,
    action: &'a RuleAction,
    target: &'a Arc<ServiceTarget>,
    path_and_query: PathAndQuery,
    /// The fields the gateway adds that are not in the request's map.
    added: Added<'a>,
    /// A filter (the rule's or the backendRef's) or CORS edits the response's headers: the
    /// endpoint's fields go into the map first.
    edits_response: bool,
    /// The request's session, on a rule with `sessionPersistence`.
    session: Option<Session>,
}

impl Exchange<'_> {
    async fn run(
        &self,
        parts: &mut http::request::Parts,
        body: &mut RequestBody,
        mut upgrade: Option<Upgrade>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let target = self.target;
        let retry = retry_policy(self.action, target);
        let max_attempts = match *body {
            RequestBody::Replay(_) => retry.attempts.saturating_add(1),
            RequestBody::Stream(..) => 1,
        };
        let version = if self.h2c() {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let start = tokio::time::Instant::now();
        // The rule's `timeouts.request` (zero: none), else the gateway's default.
        let overall = match self.action.timeout {
            Some(t) => Some(t).filter(|t| !t.is_zero()),
            None => target
                .health
                .upstream
                .request_timeout
                .or(self.shared.limits.request_timeout),
        };
        let deadline = overall.map(|t| start + t);
        // Per attempt: the rule's `timeouts.backendRequest`, and the retry policy's per-try
        // timeout (DestinationRule, BackendTrafficPolicy); the shorter wins.
        let per_try = match (
            self.action.backend_timeout.filter(|t| !t.is_zero()),
            retry.per_try_timeout,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let up = &target.health.upstream;
        if let Some(Err(why)) = up.tls.as_ref().map(|t| &t.client) {
            return Err(ProxyError::TlsRefused {
                service: target.name.clone(),
                why: Arc::from(why.as_str()),
            });
        }
        if let Some(max) = up.max_requests {
            if target.in_flight.load(std::sync::atomic::Ordering::Relaxed) >= max {
                return Err(self.overflow("requests"));
            }
        }
        let mut set_cookie = None;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last_error = None;
        // The upstream request, made by the first attempt and reused as it is by a retry (a
        // pooled HTTP/1.1 connection only borrows it; hyper's HTTP/2 client takes it, so a
        // retry there makes it again).
        let mut upstream: Option<Request<ProxyBody>> = None;

        // What the retry decided at the end of an attempt is for (`locus_retries_total`),
        // counted once it is sent.
        let mut retrying: Option<&prometheus_client::metrics::counter::Counter> = None;

        for n in 1..=max_attempts {
            if n > 1 {
                let wait = retry.backoff.map_or(std::time::Duration::ZERO, |b| {
                    b.wait(n - 1, super::request::random_u64())
                });
                // No retry starts past the request's deadline: it would fail at once and
                // count against an endpoint that did nothing wrong.
                let now = tokio::time::Instant::now();
                if !wait.is_zero() || deadline.is_some_and(|d| d <= now) {
                    Box::pin(self.back_off(now + wait, deadline, overall, &tried)).await?;
                }
                if let Some(counter) = retrying.take() {
                    counter.inc();
                }
            }
            let first = (n == 1).then_some((&*parts, &mut set_cookie));
            // One clock read for the pick and the attempt's start (the first attempt's is the
            // request's).
            let now = if n == 1 {
                start.into_std()
            } else {
                std::time::Instant::now()
            };
            // A session's first attempt goes to its endpoint while that may take traffic.
            let pinned = match self.session {
                Some(Session {
                    pinned: Some(addr), ..
                }) if n == 1 => pin_endpoint(target, addr, ms_at(now)),
                _ => None,
            };
            let picked = match pinned {
                Some(p) => Ok(p),
                None => pick_endpoint(target, &tried, ms_at(now), first, self.info),
            };
            let picked = match picked {
                // An HTTPRoute retry goes back to the endpoints already tried once none is
                // left untried.
                Err(_) if retry.route_rule && !tried.is_empty() => {
                    tried.clear();
                    pick_endpoint(target, &tried, ms_at(now), None, self.info)
                }
                picked => picked,
            };
            let (addr, health, tier, idx, via) = match picked {
                Ok(p) => p,
                // Nothing left to retry on: the client gets the error that made us retry.
                Err(e) => return Err(last_error.unwrap_or(e)),
            };
            tracing::debug!(service = %target.name, endpoint = %addr, bucket = %tier, attempt = n, route = %self.action.route, "forwarding");
            let last = n == max_attempts;
            let req = match &mut upstream {
                Some(r) => r,
                None => upstream.insert({
                    let mut r = Request::new(body.take());
                    *r.method_mut() = parts.method.clone();
                    *r.version_mut() = version;
                    // A pooled HTTP/1.1 connection only borrows the request, so its headers
                    // are moved; hyper's HTTP/2 client takes it, so all but the last attempt
                    // send a copy (copying every request's headers was 3% of the gateway's
                    // instructions per request).
                    *r.headers_mut() = if last || !self.h2c() {
                        std::mem::take(&mut parts.headers)
                    } else {
                        parts.headers.clone()
                    };
                    r
                }),
            };
            *req.uri_mut() =
                upstream_uri(self.h2c(), self.tls().is_some(), addr, &self.path_and_query);
            // Another network's gateway takes the request for its own endpoints of the Service
            // the hop header names. A client's (or the one a hop arrived with) was stripped
            // with the hop-by-hop headers; a request handed back by an attempt to a gateway
            // must not carry it elsewhere.
            match via.as_deref().map(HeaderValue::from_str) {
                Some(Ok(v)) => {
                    req.headers_mut().insert(EAST_WEST_HEADER, v);
                }
                _ if n > 1 => {
                    req.headers_mut().remove(EAST_WEST_HEADER);
                }
                _ => {}
            }

            let mut attempt = Attempt::start(target.clone(), idx, health, n > 1, now);
            attempt.set_request_bytes(body.len());
            let this_try = per_try.map(|t| tokio::time::Instant::from_std(now) + t);
            let until = match (deadline, this_try) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sent = self.send(addr, req, until, now).await;
            if self.h2c() {
                // What hyper's HTTP/2 client took is gone; a retry makes the request again.
                upstream = None;
            }
            let resp = match sent {
                Ok(resp) => resp,
                Err(failure) => {
                    let fault = body.client_fault(failure.fault);
                    attempt.failed(fault);
                    // Whether the attempt's own deadline, not the request's, bounded it.
                    let per_try_bound = match (deadline, this_try) {
                        (Some(d), Some(t)) => t < d,
                        (None, Some(_)) => true,
                        (_, None) => false,
                    };
                    let waited = if per_try_bound || deadline.is_none() {
                        per_try
                    } else {
                        overall
                    };
                    let attempt_timed_out = fault == Fault::Timeout && per_try_bound;
                    let error = self.error(fault, addr, failure.detail, waited);
                    // A request that never reached the endpoint is retried: it cannot have had
                    // an effect there. So is an idempotent one whose connection broke (an
                    // endpoint killed mid-request), as RFC 9110 §9.2.2 allows. An HTTPRoute
                    // `retry` asks for every connection error and an attempt's timeout too.
                    let unsent = fault == Fault::Connect;
                    let connection_error = matches!(fault, Fault::Connect | Fault::Reset);
                    let retriable = (fault != Fault::Timeout
                        && (unsent || idempotent(&parts.method)))
                        || (retry.route_rule && (connection_error || attempt_timed_out));
                    if fault.is_upstream() && retriable && !last && self.retry_allowed() {
                        tracing::debug!(service = %target.name, endpoint = %addr, error = %error, "retrying");
                        retrying = Some(if fault == Fault::Timeout {
                            &target.retries.timeout
                        } else {
                            &target.retries.connection
                        });
                        tried.push(addr);
                        last_error = Some(error);
                        continue;
                    }
                    return Err(error);
                }
            };
            let status = resp.status();
            attempt.answered(status.as_u16());
            if !last
                && retry.statuses.contains(&status.as_u16())
                && endpoint_left(target, &tried, addr, retry.route_rule)
                && self.retry_allowed()
            {
                tracing::debug!(service = %target.name, endpoint = %addr, status = status.as_u16(), "retrying");
                retrying = Some(&target.retries.status);
                tried.push(addr);
                continue;
            }
            let (mut head, mut body) = resp.into_parts();
            // The endpoint took the upgrade: its connection and the client's are joined once
            // hyper has written this 101 and handed the client's side over.
            let tunnel = match upgrade.take() {
                Some(u) if status == http::StatusCode::SWITCHING_PROTOCOLS => {
                    body.take_upgraded().map(|io| (u, io))
                }
                _ => None,
            };
            // The endpoint's fields stay bytes unless something here reads or edits them.
            if tunnel.is_some() || self.edits_response {
                if let Some(fields) = body.take_fields() {
                    fields.merge_into(&mut head.headers);
                }
            }
            let protocol = tunnel.as_ref().map(|(u, _)| {
                head.headers
                    .get(header::UPGRADE)
                    .unwrap_or(&u.protocol)
                    .clone()
            });
            strip_hop_by_hop(&mut head.headers);
            if let Some(protocol) = protocol {
                head.headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                head.headers.insert(header::UPGRADE, protocol);
            }
            if let Some(edits) = &self.action.filters.response_headers {
                edits.apply(&mut head.headers);
            }
            if let Some(cookie) = set_cookie.take() {
                head.headers.append(header::SET_COOKIE, cookie);
            }
            if let Some((model, s)) = self.action.session.as_ref().zip(self.session.as_ref()) {
                if let Some((name, value)) = session::answer(model, s, addr) {
                    head.headers.append(name, value);
                }
            }
            if let Some((u, (stream, early))) = tunnel {
                let hold = self.info.ticket.lock().ok().and_then(|mut t| t.take());
                tokio::spawn(super::tunnel::join(
                    u.client,
                    stream,
                    early,
                    self.shared.limits.idle_timeout,
                    hold,
                ));
                return Ok(Response::from_parts(head, ProxyBody::empty()));
            }
            if let Some(mut req) = upstream.take() {
                super::h1::server_codec::recycle_fields(std::mem::take(req.headers_mut()));
            }
            let body = UpstreamBody::new(body, attempt);
            return Ok(Response::from_parts(head, ProxyBody::Upstream(body)));
        }
        unreachable!("the last attempt always returns")
    }

    /// Sends one attempt to `addr`, over HTTP/2 (hyper-util's client) or a pooled HTTP/1.1
    /// connection, with its response head by `until`. A pooled connection borrows the request
    /// (it stays for a retry); hyper's client takes it.
    async fn send(
        &self,
        addr: SocketAddr,
        req: &mut Request<ProxyBody>,
        until: Option<tokio::time::Instant>,
        now: std::time::Instant,
    ) -> Result<Response<pool::PooledBody>, SendFailure> {
        let timed_out = || SendFailure {
            fault: Fault::Timeout,
            detail: String::new(),
        };
        if self.h2c() {
            let mut req = std::mem::replace(req, Request::new(ProxyBody::empty()));
            let mut added = self.added;
            added.merge_into(req.headers_mut());
            // Boxed: the HTTP/1.1 path, by far the common one, need not carry its state.
            let sending = match self.tls() {
                Some(tls) => {
                    let client = upstream_tls::h2_client(tls, self.shared.limits.connect_timeout);
                    Box::pin(async move { client.request(req).await })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
                }
                None => Box::pin(self.shared.h2c_client.request(req)),
            };
            let sent = match until {
                Some(at) => match tokio::time::timeout_at(at, sending).await {
                    Ok(sent) => sent,
                    Err(_) => return Err(timed_out()),
                },
                None => sending.await,
            };
            return sent
                .map(|r| r.map(pool::PooledBody::unpooled))
                .map_err(|e| SendFailure {
                    fault: if e.is_connect() {
                        Fault::Connect
                    } else {
                        Fault::Reset
                    },
                    detail: io_detail(&e),
                });
        }
        let opts = pool::PoolOptions::new(&self.shared.limits, &self.target.health.upstream);
        // The HTTP/1.1 connection keeps its own timer for `until` (see `h1::Deadline`).
        pool::send(addr, req, self.added, &opts, until, now)
            .await
            .map_err(|e| match e {
                SendError::Connect(io) => SendFailure {
                    fault: Fault::Connect,
                    detail: io.to_string(),
                },
                SendError::Exchange(ExchangeError::Timeout) => timed_out(),
                SendError::Exchange(err) => SendFailure {
                    fault: match err {
                        ExchangeError::Protocol(_) => Fault::Protocol,
                        _ => Fault::Reset,
                    },
                    detail: err.to_string(),
                },
            })
    }

    /// Whether this exchange speaks HTTP/2 to the endpoint: the Service port says so
    /// (`appProtocol: kubernetes.io/h2c`), or the route is a GRPCRoute.
    fn h2c(&self) -> bool {
        self.target.h2c || self.action.grpc
    }

    /// TLS to the endpoints, when the Service port has it.
    fn tls(&self) -> Option<&Arc<crate::model::upstream_tls::TlsClient>> {
        let tls = self.target.health.upstream.tls.as_ref()?;
        tls.client.as_ref().ok()
    }

    /// Waits until `wake` (a retry's backoff) before the next attempt; when that is past the
    /// request's deadline, the client gets its timeout (504) at the deadline instead.
    async fn back_off(
        &self,
        wake: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
        overall: Option<std::time::Duration>,
        tried: &[SocketAddr],
    ) -> Result<(), ProxyError> {
        match deadline {
            Some(d) if d <= wake => {
                tokio::time::sleep_until(d).await;
                Err(ProxyError::Timeout {
                    service: self.target.name.clone(),
                    addr: tried
                        .last()
                        .copied()
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    timeout: overall.unwrap_or_default(),
                })
            }
            _ => {
                tokio::time::sleep_until(wake).await;
                Ok(())
            }
        }
    }

    /// Whether the Service's `maxRetries` leaves room for one more retry in flight.
    fn retry_allowed(&self) -> bool {
        let target = self.target;
        let Some(max) = target.health.upstream.max_retries else {
            return true;
        };
        let room = target
            .retries_in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            < max;
        if !room {
            if let Some(o) = &target.overflows {
                o.retries.inc();
            }
        }
        room
    }

    fn overflow(&self, limit: &'static str) -> ProxyError {
        if let Some(o) = &self.target.overflows {
            o.requests.inc();
        }
        ProxyError::Overflow {
            service: self.target.name.clone(),
            limit,
        }
    }

    fn error(
        &self,
        fault: Fault,
        addr: SocketAddr,
        detail: String,
        waited: Option<std::time::Duration>,
    ) -> ProxyError {
        let service = self.target.name.clone();
        match fault {
            Fault::Connect => ProxyError::UpstreamConnect {
                service,
                addr,
                detail,
            },
            Fault::Timeout => ProxyError::Timeout {
                service,
                addr,
                timeout: waited.unwrap_or_default(),
            },
            Fault::Reset | Fault::Protocol => ProxyError::Upstream {
                service,
                addr,
                detail,
            },
            Fault::ClientAborted | Fault::ClientBody | Fault::ClientTimeout | Fault::Cancelled => {
                ProxyError::Client(fault)
            }
        }
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

/// Whether a retry after `addr` answered would find an endpoint: one not tried yet, or any
/// when the retry may go back to those tried (`revisit`: an HTTPRoute `retry`). If none is
/// left, the response goes back as it is.
fn endpoint_left(
    target: &ServiceTarget,
    tried: &[SocketAddr],
    addr: SocketAddr,
    revisit: bool,
) -> bool {
    let snap = target.snapshot.load();
    let mut idx = Vec::new();
    if !revisit {
        idx = tried_indices(&snap.endpoints, tried);
        idx.extend(tried_indices(&snap.endpoints, &[addr]));
    }
    snap.pick_excluding(&idx).is_ok()
}

/// The endpoint for an attempt: the balancer's pick on the first one, anything not tried yet
/// on retries. The consistent-hash key is read from the request on the first attempt only,
/// against the snapshot already loaded for the pick.
#[inline]
fn pick_endpoint(
    target: &ServiceTarget,
    tried: &[SocketAddr],
    now: u64,
    first: Option<(&http::request::Parts, &mut Option<HeaderValue>)>,
    info: &ConnInfo,
) -> Result<Picked, ProxyError> {
    let snap = target.snapshot.load();
    let key = match (first, &snap.balancer.algorithm) {
        (Some((parts, cookie)), Algorithm::ConsistentHash(on)) => {
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
    // An endpoint at its circuit-breaking cap is stepped over: the next endpoint, in the next
    // zone when every local one is full, takes the request.
    if let Some(max) = target.health.upstream.max_per_endpoint {
        let mut idx = tried_indices(&snap.endpoints, tried);
        while snap
            .endpoint_health(pick)
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            >= max
        {
            if let Some(o) = &target.overflows {
                o.endpoint.inc();
            }
            idx.push(pick.endpoint);
            pick = snap
                .pick_excluding(&idx)
                .map_err(|_| ProxyError::Overflow {
                    service: target.name.clone(),
                    limit: "requests per endpoint",
                })?;
        }
    }
    // An endpoint ejected by a request a moment ago may still be in this snapshot until its
    // writer publishes the next one: step over it rather than send it traffic.
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
    Ok(picked(&snap, pick))
}

/// A session's endpoint, when the snapshot would send it traffic and it is not ejected.
fn pin_endpoint(target: &ServiceTarget, addr: SocketAddr, now: u64) -> Option<Picked> {
    let snap = target.snapshot.load();
    let pick = snap.pick_address(addr)?;
    (!snap.endpoint_health(pick).is_ejected(now)).then(|| picked(&snap, pick))
}

#[inline]
fn picked(
    snap: &locus_core::balancer::ServiceSnapshot,
    pick: locus_core::balancer::Pick,
) -> Picked {
    let ep = snap.endpoint(pick);
    (
        ep.addr,
        snap.endpoint_health(pick).clone(),
        snap.buckets[pick.bucket as usize].tier,
        pick.endpoint,
        ep.via.clone(),
    )
}

/// An endpoint picked: its address, health, bucket tier, index in the snapshot, and the hop
/// header's value when it is another network's east-west gateway.
type Picked = (SocketAddr, Arc<EndpointHealth>, Tier, u32, Option<Arc<str>>);

fn tried_indices(endpoints: &[locus_core::Endpoint], tried: &[SocketAddr]) -> Vec<u32> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| tried.contains(&e.addr))
        .map(|(i, _)| i as u32)
        .collect()
}
