//! What a client, and an endpoint, may hold of the gateway: time, bytes, connections. Every
//! client is hostile until proven otherwise; every endpoint may hang. Defaults follow what a
//! user of Envoy or nginx knows (docs/configuration.md lists them beside those peers').

use std::time::Duration;

/// The bounds in force on every listener and upstream connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request head must arrive whole within this time, else the connection is closed
    /// (slowloris). The clock starts when the connection is ready for a request, so it is also
    /// the idle keep-alive timeout. `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// A connection that starts no request for this long is closed (gracefully: GOAWAY on h2,
    /// open streams finish). What bounds idle h2 connections; HTTP/1 ones are closed sooner by
    /// the header read timeout. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Largest request head (request line and headers) read; larger gets 431 (Envoy's default
    /// is 60 KiB, nginx's 8 KiB per buffer, HAProxy's 16 KiB). Also HTTP/2's header list size.
    pub max_request_head: usize,
    /// Most header fields in a request (Envoy's default: 100); more gets 431.
    pub max_headers: usize,
    /// Longest request target (path and query); longer gets 414.
    pub max_uri: usize,
    /// A request body that sends nothing for this long is abandoned: 408, never the
    /// endpoint's fault (nginx's `client_body_timeout`).
    pub body_idle_timeout: Option<Duration>,
    /// Connections one listener port holds at once (over every worker); beyond it new ones are
    /// closed at once and counted in `locus_connections_refused_total`.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_streams: u32,
    /// How long connecting to an endpoint may take (502 `upstream-connect`, retried elsewhere).
    pub connect_timeout: Duration,
    /// How long an endpoint has to answer (response head) when the HTTPRoute rule sets no
    /// `timeouts` (Envoy's route default: 15 s); 504 `upstream-timeout`. `None`: wait forever.
    pub request_timeout: Option<Duration>,
    /// Largest response head read from an endpoint; larger is the endpoint's fault (502).
    pub max_response_head: usize,
    /// Paths are normalized before matching and forwarding (`locus_core::path`); off only for
    /// backends that need raw paths.
    pub normalize_paths: bool,
    /// What a normalized path does with `%2F` and `%5C`.
    pub escaped_slashes: locus_core::path::EscapedSlashes,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(300)),
            max_request_head: 64 * 1024,
            max_headers: 100,
            max_uri: 16 * 1024,
            body_idle_timeout: Some(Duration::from_secs(60)),
            max_connections: 10_000,
            h2_max_streams: 100,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(15)),
            max_response_head: 64 * 1024,
            normalize_paths: true,
            escaped_slashes: locus_core::path::EscapedSlashes::Reject,
        }
    }
}
