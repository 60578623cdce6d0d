//! The one body type of the proxy: a client's body going upstream, an endpoint's response
//! coming back (carrying its [`Attempt`] guard), or a small local one.
//!
//! An enum rather than a boxed trait object so the request path allocates nothing for bodies.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::h1::codec::RawFields;
use super::h1::server::RequestBody;
use super::outcome::{Attempt, BoxError, ClientBody};
use super::pool::PooledBody;

#[derive(Debug)]
pub enum ProxyBody {
    /// A client's body, streamed upstream.
    Client(ClientBody),
    /// An endpoint's response body.
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// The endpoint's header fields still kept as bytes (see [`RawFields`]), taken out: Locus's
    /// own HTTP/1.1 server writes them as they are.
    pub fn take_fields(&mut self) -> Option<Box<RawFields>> {
        match self {
            ProxyBody::Upstream(b) => b.body.take_fields(),
            _ => None,
        }
    }

    /// The whole rest of the body appended to `out`, when it is at hand (already read from
    /// the endpoint, or the gateway's own) and at most `limit` bytes: a small response goes
    /// out with its head in one write, with no frame made for it. `false`: nothing copied.
    pub fn copy_buffered(&mut self, out: &mut Vec<u8>, limit: u64) -> bool {
        match self {
            ProxyBody::Upstream(b) => match b.body.copy_buffered(out, limit) {
                Some(n) => {
                    b.attempt.add_response_bytes(n);
                    true
                }
                None => false,
            },
            ProxyBody::Full(Some(d)) if d.len() as u64 > limit => false,
            ProxyBody::Full(d) => {
                if let Some(d) = d.take() {
                    out.extend_from_slice(&d);
                }
                true
            }
            ProxyBody::Client(_) => false,
        }
    }

    pub fn text(s: impl Into<Bytes>) -> Self {
        let b: Bytes = s.into();
        if b.is_empty() {
            ProxyBody::Full(None)
        } else {
            ProxyBody::Full(Some(b))
        }
    }
}

/// Makes the response's `HeaderMap` whole for hyper's server, which writes the head from the
/// map alone: the endpoint's fields still kept as bytes go into it, ahead of any the gateway
/// has added.
pub fn fields_into_map(resp: &mut Response<ProxyBody>) {
    if let Some(fields) = resp.body_mut().take_fields() {
        fields.merge_into(resp.headers_mut());
    }
}

/// A client's request body as it arrived: through hyper (HTTP/2, TLS, upgrades) or Locus's own
/// HTTP/1.1 server.
#[derive(Debug)]
pub enum ClientIn {
    Hyper(Incoming),
    H1(RequestBody),
    /// No body (no length, or a length of 0).
    Empty,
}

impl Body for ClientIn {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientIn::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientIn::H1(b) => Pin::new(b).poll_frame(cx),
            ClientIn::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientIn::Hyper(b) => b.is_end_stream(),
            ClientIn::H1(b) => b.is_end_stream(),
            ClientIn::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientIn::Hyper(b) => b.size_hint(),
            ClientIn::H1(b) => b.size_hint(),
            ClientIn::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body from an endpoint, with the attempt it answers: the attempt stays in flight
/// until the body is done and records the bytes it carried when dropped.
#[derive(Debug)]
pub struct UpstreamBody {
    body: PooledBody,
    attempt: Attempt,
}

impl UpstreamBody {
    pub fn new(body: PooledBody, attempt: Attempt) -> Self {
        UpstreamBody { body, attempt }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.attempt.add_response_bytes(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Client(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Client(b) => b.is_end_stream(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Client(b) => b.size_hint(),
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
