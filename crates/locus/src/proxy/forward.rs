//! Routing one request and streaming it to the chosen endpoint and back.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::{ConnInfo, Shared};
use crate::routing::Backend;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The request's host without port, lower-cased (Host header for HTTP/1, `:authority` for h2).
fn request_host(req: &Request<Incoming>) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    without_port.to_ascii_lowercase()
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

pub(super) async fn forward(
    shared: &Shared,
    info: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let host = request_host(&req);
    let (mut parts, body) = req.into_parts();

    // Everything read from the route table is cloned out (a few Arcs) so no guard is held
    // across the upstream await.
    let (action, target) = {
        let table = shared.table.load();
        let action = table
            .ports
            .get(&info.port)
            .and_then(|t| t.route(&host, &parts))
            .ok_or_else(|| ProxyError::NoRoute {
                host: host.clone(),
                path: parts.uri.path().to_owned(),
            })?
            .clone();
        if let Some(why) = &action.unsupported {
            return Err(ProxyError::UnsupportedFilter {
                route: action.route.clone(),
                why: why.clone(),
            });
        }
        let target = match action.pick_backend() {
            None => return Err(ProxyError::NoBackendWeight(action.route.clone())),
            Some(Backend::Invalid(why)) => return Err(ProxyError::InvalidBackend(why.clone())),
            Some(Backend::Service(t)) => t.clone(),
        };
        (action, target)
    };
    let (addr, bucket) = {
        let snap = target.snapshot.load();
        let pick = snap.pick().map_err(|reason| ProxyError::NoEndpoint {
            service: target.name.clone(),
            reason,
        })?;
        let ep = snap.endpoint(pick);
        (ep.addr, snap.buckets[pick.bucket as usize].tier)
    };
    tracing::debug!(service = %target.name, endpoint = %addr, bucket = %bucket, route = %action.route, "forwarding");

    // Upstream request: same method, path and headers, to the endpoint.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let authority =
        Authority::try_from(addr.to_string()).expect("a socket address is an authority");
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .expect("valid parts make a valid URI");
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) && !host.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let peer_ip = info.peer.ip().to_string();
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {peer_ip}"),
        None => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts.headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    parts.version = if target.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let upstream_req = Request::from_parts(parts, ProxyBody::Incoming(body));

    let client = if target.h2c {
        &shared.h2c_client
    } else {
        &shared.client
    };
    let call = client.request(upstream_req);
    let result = match action.timeout {
        Some(timeout) => match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => {
                return Err(ProxyError::Timeout {
                    service: target.name.clone(),
                    addr,
                    timeout,
                })
            }
        },
        None => call.await,
    };
    let resp = result.map_err(|e| {
        let detail = io_detail(&e);
        if e.is_connect() {
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
        }
    })?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, ProxyBody::Incoming(body)))
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
