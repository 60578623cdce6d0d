//! Every way a request can fail in the gateway, and the one place each becomes a status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use locus_core::balancer::NoEndpoint;
use locus_core::health::Fault;

use super::body::ProxyBody;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("service {service}: {limit} in flight reached its circuit-breaking limit")]
    Overflow {
        service: Arc<str>,
        limit: &'static str,
    },
    #[error("bad Host header: {0}")]
    BadHost(&'static str),
    #[error("CONNECT is not served")]
    MethodNotAllowed,
    #[error("transfer coding {0:?} is not supported")]
    TransferCoding(String),
    #[error("bad path: {0}")]
    BadPath(locus_core::path::PathError),
    #[error("the request target is longer than the gateway accepts")]
    UriTooLong,
    /// The Host belongs to another HTTPS listener than the one the connection's SNI chose.
    #[error("misdirected request: host {host:?} is not served on this connection (its TLS server name chose listener {listener})")]
    Misdirected { host: String, listener: String },
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("no endpoint available for service {service}: {reason}")]
    NoEndpoint {
        service: Arc<str>,
        reason: NoEndpoint,
    },
    /// The Service port's TLS settings cannot be honoured (an unresolved CA reference, an
    /// unsupported mode): its requests fail rather than go out in plain text.
    #[error("service {service}: {why}")]
    TlsRefused { service: Arc<str>, why: Arc<str> },
    #[error("invalid backend: {0}")]
    InvalidBackend(Arc<str>),
    #[error("every backendRef of route {0} has weight 0")]
    NoBackendWeight(Arc<str>),
    #[error("route {route}: {why}")]
    UnsupportedFilter { route: Arc<str>, why: Arc<str> },
    #[error("upstream connect error to {addr} (service {service}): {detail}")]
    UpstreamConnect {
        service: Arc<str>,
        addr: SocketAddr,
        detail: String,
    },
    #[error("upstream {addr} (service {service}) failed before responding: {detail}")]
    Upstream {
        service: Arc<str>,
        addr: SocketAddr,
        detail: String,
    },
    /// The client broke its own request (never counted against the endpoint).
    #[error("{}", client_fault(*.0))]
    Client(Fault),
    #[error("upstream {addr} (service {service}) did not respond within {timeout:?}")]
    Timeout {
        service: Arc<str>,
        addr: SocketAddr,
        timeout: Duration,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::BadPath(_) | ProxyError::BadHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint { .. }
            | ProxyError::Overflow { .. }
            | ProxyError::TlsRefused { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::InvalidBackend(_)
            | ProxyError::NoBackendWeight(_)
            | ProxyError::UnsupportedFilter { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Client(Fault::ClientTimeout) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Client(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short machine-readable code, sent as `x-locus-error` so clients and tests can tell a
    /// gateway error from an upstream's own error status.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::UriTooLong => "uri-too-long",
            ProxyError::Misdirected { .. } => "misdirected",
            ProxyError::BadPath(_) => "bad-path",
            ProxyError::BadHost(_) => "bad-host",
            ProxyError::MethodNotAllowed => "method-not-allowed",
            ProxyError::TransferCoding(_) => "unsupported-transfer-coding",
            ProxyError::NoRoute { .. } => "no-route",
            ProxyError::NoEndpoint { .. } => "no-endpoint",
            ProxyError::Overflow { .. } => "overflow",
            ProxyError::TlsRefused { .. } => "upstream-tls-config",
            ProxyError::InvalidBackend(_) => "invalid-backend",
            ProxyError::NoBackendWeight(_) => "no-backend-weight",
            ProxyError::UnsupportedFilter { .. } => "unsupported-filter",
            ProxyError::UpstreamConnect { .. } => "upstream-connect",
            ProxyError::Upstream { .. } => "upstream-reset",
            ProxyError::Timeout { .. } => "upstream-timeout",
            ProxyError::Client(Fault::ClientTimeout) => "client-timeout",
            ProxyError::Client(_) => "client-body",
        }
    }

    /// What the client is told: what went wrong, never an upstream address, a namespace, a
    /// Service or a node name (those go to the log, the access log and `/debug`, or to the
    /// client with `verbose`: `--verbose-errors`, for development).
    fn public_message(&self) -> String {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::BadPath(_)
            | ProxyError::UriTooLong
            | ProxyError::Client(_)
            | ProxyError::BadHost(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::TransferCoding(_) => self.to_string(),
            ProxyError::NoRoute { .. } => "no route for this host and path".into(),
            ProxyError::Misdirected { .. } => {
                "misdirected request: this host is not served on this connection".into()
            }
            ProxyError::NoEndpoint { .. } => "no healthy upstream".into(),
            ProxyError::TlsRefused { .. } => {
                "TLS to the upstream is misconfigured; see the gateway's log".into()
            }
            ProxyError::Overflow { .. } => "upstream overflow: too many requests in flight".into(),
            ProxyError::InvalidBackend(_)
            | ProxyError::NoBackendWeight(_)
            | ProxyError::UnsupportedFilter { .. } => {
                "the route cannot be served as configured".into()
            }
            ProxyError::UpstreamConnect { .. } => "upstream connect error".into(),
            ProxyError::Upstream { .. } => "upstream failed before responding".into(),
            ProxyError::Timeout { .. } => "upstream did not respond in time".into(),
        }
    }

    /// The gRPC status a gRPC client gets for this error (gRPC's HTTP mapping, with the
    /// gateway's own knowledge where it has more: a timeout is DEADLINE_EXCEEDED).
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::NoRoute { .. } => 12, // UNIMPLEMENTED
            ProxyError::Timeout { .. } => 4,  // DEADLINE_EXCEEDED
            ProxyError::NoEndpoint { .. }
            | ProxyError::Overflow { .. }
            | ProxyError::TlsRefused { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Misdirected { .. } => 14, // UNAVAILABLE
            ProxyError::Client(Fault::ClientTimeout) => 4,
            _ => 13, // INTERNAL
        }
    }

    /// A gRPC error, as gRPC clients read one: HTTP 200, `grpc-status` and `grpc-message` in a
    /// trailers-only response.
    pub fn into_grpc_response(self, verbose: bool) -> Response<ProxyBody> {
        let text = if verbose {
            self.to_string()
        } else {
            self.public_message()
        };
        let mut resp = Response::new(ProxyBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&text)) {
            h.insert("grpc-message", v);
        }
        h.insert("x-locus-error", HeaderValue::from_static(self.code()));
        resp
    }

    pub fn into_response(self, verbose: bool) -> Response<ProxyBody> {
        let text = if verbose {
            self.to_string()
        } else {
            self.public_message()
        };
        let mut resp = Response::new(ProxyBody::text(format!("{text}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("x-locus-error", HeaderValue::from_static(self.code()));
        resp
    }
}

fn client_fault(fault: Fault) -> &'static str {
    match fault {
        Fault::ClientTimeout => "the request body did not arrive in time",
        Fault::ClientBody => "the request body is malformed",
        _ => "the request body ended early",
    }
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%`.
fn grpc_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
