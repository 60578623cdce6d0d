//! `RequestMirror`: a copy of a request to one endpoint of another Service, in the background.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Version};
use http_body_util::BodyExt;

use super::body::ProxyBody;
use super::pool;
use super::request::upstream_uri;
use super::Shared;
use crate::routing::ServiceTarget;

/// Sends a copy of the request to one endpoint of `mirror`, in the background; its response
/// is read and dropped. A body that is streamed rather than buffered (larger than the replay
/// limit) is not mirrored: that would mean holding the client's upload for the mirror.
pub(super) fn send_mirror(
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
    let via = snap.endpoint(pick).via.clone();
    // A slow or stuck mirror must not pile up copies: beyond the cap, copies are dropped.
    if MIRRORS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_MIRRORS_IN_FLIGHT {
        MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(service = %mirror.name, "too many mirrored requests in flight; copy dropped");
        return;
    }
    let mut req = Request::new(ProxyBody::text(body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    // The client's hop header went with the hop-by-hop headers; a copy for another network
    // names its destination as any request does.
    if let Some(Ok(v)) = via.as_deref().map(http::HeaderValue::from_str) {
        req.headers_mut()
            .insert(crate::routing::EAST_WEST_HEADER, v);
    }
    let tls = match mirror.health.upstream.tls.as_ref().map(|t| &t.client) {
        Some(Err(_)) => {
            tracing::debug!(service = %mirror.name, "TLS to the mirror refused; not mirrored");
            return;
        }
        Some(Ok(tls)) => Some(tls.clone()),
        None => None,
    };
    if mirror.h2c {
        *req.version_mut() = Version::HTTP_2;
    }
    *req.uri_mut() = upstream_uri(mirror.h2c, tls.is_some(), addr, path_and_query);
    let limits = shared.limits;
    let h2c = mirror.h2c.then(|| shared.h2c_client.clone());
    let mirror = mirror.clone();
    tokio::spawn(async move {
        let name = mirror.name.clone();
        let copy = async move {
            let opts = pool::PoolOptions::new(&limits, &mirror.health.upstream);
            match (h2c, tls) {
                (Some(_), Some(tls)) => {
                    let client = super::upstream_tls::h2_client(&tls, limits.connect_timeout);
                    match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let _ = resp.into_body().collect().await;
                            Ok(status)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                (Some(client), None) => match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        Ok(status)
                    }
                    Err(e) => Err(e.to_string()),
                },
                (None, _) => {
                    match pool::send(
                        addr,
                        &mut req,
                        Default::default(),
                        &opts,
                        None,
                        std::time::Instant::now(),
                    )
                    .await
                    {
                        Ok(resp) => {
                            let status = resp.status();
                            let _ = resp.into_body().collect().await;
                            Ok(status)
                        }
                        Err(_) => Err("connection failed".to_owned()),
                    }
                }
            }
        };
        let status = tokio::time::timeout(MIRROR_TIMEOUT, copy).await;
        MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(service = %name, endpoint = %addr, ?status, "mirrored");
    });
}

/// Mirrored requests in flight, process-wide, and the cap beyond which copies are dropped.
static MIRRORS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
const MAX_MIRRORS_IN_FLIGHT: usize = 1024;
/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
