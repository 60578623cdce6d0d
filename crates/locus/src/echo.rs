//! `locus echo`: a tiny test backend in the spirit of agnhost netexec.
//!
//! - `GET /hostname` → the backend's name;
//! - `/status/NNN` → that status, with the name as body;
//! - `/size/N` → N bytes of body (benchmarks of body sizes);
//! - anything else → a JSON echo of the request (name, method, path, query, host, headers).
//!
//! - `/_echo/fail/NNN` → from now on every other request is answered with status NNN
//!   (`/_echo/fail/0` restores normal answers): how tests and benchmarks make a backend fail
//!   without killing it;
//! - `/_echo/requests` → how many requests (other than `/_echo/…`) it has answered.
//!
//! Every response carries `x-backend: NAME`.
//!
//! As the Gateway API conformance suite's echo backend does:
//! - a request header `X-Echo-Set-Header: Name:value,Name2:value2` makes the response carry
//!   those headers (how response header filters are tested);
//! - a query parameter `delay=DURATION` (`500ms`, `1s`) delays the answer (how timeouts are
//!   tested);
//! - query parameters `uuid=ID&responseCode=NNN&succeedAfter=N[&delayRetry=DURATION]` make
//!   the first N requests carrying that ID fail with NNN (each after the delay) and the ones
//!   after it succeed (how retries are tested).
//!
//! With `--tls-cert` and `--tls-key` it serves HTTPS (HTTP/1.1, and HTTP/2 by ALPN), and the
//! JSON echo says which server name (SNI) the client asked for.
//!
//! With `--work-ms W`, each request is answered after W × the number of requests in progress
//! when it arrived (itself included), as if they shared one CPU: latency grows with load
//! (W / (1 − ρ) on average at utilisation ρ = rate × W), which is what load-aware tests and
//! benchmarks need from a backend.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves the echo backend on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: Arc<str>) {
    serve_with_status(listener, name, 0).await
}

/// Like [`serve`], answering every request with `fail_status` when it is not 0.
pub async fn serve_with_status(listener: TcpListener, name: Arc<str>, fail_status: u16) {
    serve_with(listener, name, fail_status, None, None).await
}

/// Like [`serve_with_status`], with the simulated work per request (`--work-ms`), over TLS
/// when `tls` is given.
pub async fn serve_with(
    listener: TcpListener,
    name: Arc<str>,
    fail_status: u16,
    work: Option<Duration>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let state = Arc::new(State {
        fail: AtomicU16::new(fail_status),
        busy: AtomicU32::new(0),
        answered: AtomicU64::new(0),
        work,
        retries: Default::default(),
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let state = state.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let serve = |tls: Option<Arc<TlsFacts>>| {
                service_fn(move |req| {
                    let name = name.clone();
                    let state = state.clone();
                    let tls = tls.clone();
                    async move { Ok::<_, Infallible>(respond(&name, &state, tls, req).await) }
                })
            };
            match acceptor {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), serve(None))
                        .await;
                }
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    let facts = TlsFacts {
                        sni: conn.server_name().map(str::to_owned),
                        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                    };
                    let _ = builder
                        .serve_connection(TokioIo::new(tls), serve(Some(Arc::new(facts))))
                        .await;
                }
            }
        });
    }
}

struct State {
    fail: AtomicU16,
    /// Requests in progress (for the simulated work).
    busy: AtomicU32,
    /// Requests answered, `/_echo/…` ones aside.
    answered: AtomicU64,
    work: Option<Duration>,
    /// Requests seen per retry-simulation ID. A test backend's bookkeeping: a lock is fine.
    retries: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// A TLS server configuration for the echo backend from PEM files (HTTP/2 and HTTP/1.1 by
/// ALPN).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Counts a request in progress for as long as it lives (also when the client goes away).
struct Busy<'a>(&'a AtomicU32);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a TLS connection's handshake was: the server name asked for, and whether an earlier
/// session was resumed.
struct TlsFacts {
    sni: Option<String>,
    resumed: bool,
}

async fn respond(
    name: &str,
    state: &State,
    tls: Option<Arc<TlsFacts>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let fail = &state.fail;
    let path = req.uri().path().to_owned();
    let _busy = match state.work {
        Some(work) if !path.starts_with("/_echo/") => {
            let n = state.busy.fetch_add(1, Ordering::Relaxed) + 1;
            let guard = Busy(&state.busy);
            tokio::time::sleep(work * n).await;
            Some(guard)
        }
        _ => None,
    };
    if let Some(ms) = path.strip_prefix("/delay/") {
        // A slow request, counted in `/_echo/busy` while it waits (tests wait on that).
        state.busy.fetch_add(1, Ordering::Relaxed);
        let _busy = Busy(&state.busy);
        tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Response::new(Full::new(Bytes::from(name.to_owned())));
    }
    if let Some(delay) = query_delay(req.uri().query()) {
        tokio::time::sleep(delay).await;
    }
    let simulated = simulated_failure(state, req.uri().query());
    if let Some((_, Some(delay))) = simulated {
        tokio::time::sleep(delay).await;
    }
    let set_headers = req
        .headers()
        .get("x-echo-set-header")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut status = StatusCode::OK;
    let forced = fail.load(Ordering::Relaxed);
    if !path.starts_with("/_echo/") {
        state.answered.fetch_add(1, Ordering::Relaxed);
    }
    let body: Bytes = if path == "/_echo/requests" {
        Bytes::from(state.answered.load(Ordering::Relaxed).to_string())
    } else if path == "/_echo/busy" {
        Bytes::from(state.busy.load(Ordering::Relaxed).to_string())
    } else if let Some(code) = path.strip_prefix("/_echo/fail/") {
        fail.store(code.parse().unwrap_or(0), Ordering::Relaxed);
        Bytes::from(format!("{name} fail status set to {code}"))
    } else if let Some((code, _)) = simulated {
        status = code;
        Bytes::from(format!("{name} failing as asked"))
    } else if forced != 0 {
        status = StatusCode::from_u16(forced).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Bytes::from(format!("{name} failing on purpose"))
    } else if path == "/hostname" {
        Bytes::from(name.to_owned())
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        Bytes::from(name.to_owned())
    } else if let Some(n) = path.strip_prefix("/size/") {
        let n: usize = n.parse().unwrap_or(0).min(64 << 20);
        Bytes::from(vec![b'x'; n])
    } else {
        let (parts, body) = req.into_parts();
        let received = body
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        // A header sent several times is shown once, its values joined by ", " (RFC 9110 §5.3).
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let values: Vec<String> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            headers.insert(
                name.as_str().to_owned(),
                serde_json::Value::String(values.join(", ")),
            );
        }
        let doc = serde_json::json!({
            "name": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query().unwrap_or(""),
            "version": format!("{:?}", parts.version),
            "sni": tls.as_ref().and_then(|t| t.sni.as_deref()),
            "tls_resumed": tls.as_ref().map(|t| t.resumed),
            "headers": headers,
            "bodyBytes": received,
        });
        Bytes::from(doc.to_string())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("invalid")),
    );
    for pair in set_headers.iter().flat_map(|v| v.split(',')) {
        let Some((k, v)) = pair.split_once(':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.trim().as_bytes()),
            http::HeaderValue::from_str(v.trim()),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// The retry simulation: whether this request of its `uuid` is one of the first
/// `succeedAfter`, to be answered with `responseCode` after `delayRetry`.
fn simulated_failure(state: &State, query: Option<&str>) -> Option<(StatusCode, Option<Duration>)> {
    let param = |name: &str| query_param(query, name);
    let id = param("uuid")?;
    let code = StatusCode::from_u16(param("responseCode")?.parse().ok()?).ok()?;
    let fail_first: u32 = param("succeedAfter")?.parse().ok()?;
    let seen = {
        let mut retries = state.retries.lock().unwrap_or_else(|e| e.into_inner());
        let n = retries.entry(id.to_owned()).or_default();
        *n += 1;
        *n
    };
    (seen <= fail_first).then(|| (code, param("delayRetry").and_then(duration)))
}

/// The `delay` query parameter: `250ms`, `1s` (a bare number is milliseconds).
fn query_delay(query: Option<&str>) -> Option<Duration> {
    duration(query_param(query, "delay")?)
}

/// The value of query parameter `name`.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn duration(value: &str) -> Option<Duration> {
    if let Some(ms) = value.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = value.strip_suffix('s') {
        return s.parse().ok().map(Duration::from_secs_f64);
    }
    value.parse().ok().map(Duration::from_millis)
}
