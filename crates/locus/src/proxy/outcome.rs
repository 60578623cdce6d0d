//! The outcome guard: every attempt to send a request to an endpoint is one [`Attempt`], which
//! counts the request in flight on the endpoint and, when the attempt ends (answered, failed or
//! dropped because the client went away), records outcome, latency and bytes, feeds outlier
//! detection and load-aware spill, and reports ejections — once, here, and nowhere else.
//!
//! It also decides whose fault a failure is. Connect failures, upstream resets, upstream
//! timeouts and malformed upstream responses count against the endpoint; a client that aborts
//! its upload, sends a malformed or truncated body, is too slow to send it, or goes away never
//! does (one such client must not eject a healthy endpoint and send every other client
//! cross-region). The client body is read through [`ClientBody`], which notes how it ended, so
//! an upstream error caused by it is told apart from one the endpoint caused.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use locus_core::health::Fault;
use locus_core::{EndpointHealth, Outcome};

use super::body::ClientIn;
use crate::health::{ms_at, HealthEvent};
use crate::routing::ServiceTarget;

/// How a streamed client body has gone so far (shared with the upstream connection that reads
/// it, which may live on another task).
const STARTED: u8 = 0;
/// The last read found no data from the client yet: the exchange is waiting on the client.
const WAITING: u8 = 1;
const DONE: u8 = 2;
const ABORTED: u8 = 3;
const MALFORMED: u8 = 4;
/// Nothing arrived for `--body-idle-timeout-ms`: the gateway gave up on the client.
const TIMED_OUT: u8 = 5;

/// The error a stalled client body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no body data for {0:?}")]
pub struct BodyIdle(std::time::Duration);

/// A client's request body on its way upstream, noting how it ended.
#[derive(Debug)]
pub struct ClientBody {
    inner: ClientIn,
    state: Arc<AtomicU8>,
    /// How long the client may send nothing; the timer is made only when a read finds
    /// nothing (most bodies arrive with their head and never need one).
    idle: Option<std::time::Duration>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Data arrived since the timer was last set.
    progressed: bool,
}

/// The sending side's view of a [`ClientBody`]: whose fault a failed send was.
#[derive(Clone, Debug)]
pub struct ClientBodyState(Arc<AtomicU8>);

impl ClientBody {
    pub fn new(inner: ClientIn, idle: Option<std::time::Duration>) -> (Self, ClientBodyState) {
        let state = Arc::new(AtomicU8::new(STARTED));
        (
            ClientBody {
                inner,
                state: state.clone(),
                idle,
                timer: None,
                progressed: false,
            },
            ClientBodyState(state),
        )
    }
}

impl ClientBodyState {
    /// The client-side fault behind a failed send, if the client body caused it.
    pub fn fault(&self) -> Option<Fault> {
        match self.0.load(Ordering::Acquire) {
            ABORTED => Some(Fault::ClientAborted),
            MALFORMED => Some(Fault::ClientBody),
            TIMED_OUT => Some(Fault::ClientTimeout),
            _ => None,
        }
    }

    /// Whether the exchange is waiting on the client: the last read of its body found nothing
    /// yet. (A body never read, because the endpoint does not read it or the connection is
    /// still being made, is the endpoint's matter.)
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(Ordering::Acquire) == WAITING
    }
}

impl ClientBody {
    /// Whether the client has sent nothing for `idle`: (re)arms the timer from now when data
    /// came since it was set, and polls it.
    fn stalled(&mut self, idle: std::time::Duration, cx: &mut Context<'_>) -> bool {
        let timer = match &mut self.timer {
            Some(t) if !self.progressed => t,
            Some(t) => {
                t.as_mut().reset(tokio::time::Instant::now() + idle);
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(idle))),
        };
        self.progressed = false;
        timer.as_mut().poll(cx).is_ready()
    }
}

/// The error type of bodies the proxy makes or wraps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a body error is a malformed body: an `InvalidData`/`InvalidInput` I/O error at its
/// root (how hyper reports a bad chunk or a length mismatch, and how Locus's own server reports
/// a bad chunk), or a hyper parse error.
fn malformed(e: &BoxError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ) {
                return true;
            }
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let state = match &polled {
            Poll::Pending => WAITING,
            Poll::Ready(None) => DONE,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => DONE,
            Poll::Ready(Some(Ok(_))) => STARTED,
            Poll::Ready(Some(Err(e))) if malformed(e) => MALFORMED,
            // Closed, incomplete, I/O: a client that went away mid-body.
            Poll::Ready(Some(Err(_))) => ABORTED,
        };
        if state == WAITING {
            if let Some(idle) = this.idle {
                if this.stalled(idle, cx) {
                    this.state.store(TIMED_OUT, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(BodyIdle(idle)))));
                }
            }
        } else {
            this.progressed = true;
        }
        this.state.store(state, Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    Answered,
    Failed,
}

/// One attempt at one endpoint: counted in flight from the pick to the end of the response
/// body, and recorded exactly once.
#[derive(Debug)]
pub struct Attempt {
    /// Counted in the Service's retries in flight.
    retry: bool,
    target: Arc<ServiceTarget>,
    /// The endpoint's index in the snapshot it was picked from (metric handles are parallel).
    idx: u32,
    health: Arc<EndpointHealth>,
    started: Instant,
    state: State,
    request_bytes: u64,
    response_bytes: u64,
}

impl Attempt {
    /// `retry`: not the request's first attempt (counted against `maxRetries`); `now`: the
    /// clock as the endpoint was picked.
    pub fn start(
        target: Arc<ServiceTarget>,
        idx: u32,
        health: Arc<EndpointHealth>,
        retry: bool,
        now: Instant,
    ) -> Self {
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        // The Service-wide counts cost a shared atomic, paid only where a limit reads them.
        let up = &target.health.upstream;
        if up.max_requests.is_some() {
            target.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        let retry = retry && up.max_retries.is_some();
        if retry {
            target.retries_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Attempt {
            retry,
            target,
            idx,
            health,
            started: now,
            state: State::Open,
            request_bytes: 0,
            response_bytes: 0,
        }
    }

    pub fn set_request_bytes(&mut self, n: u64) {
        self.request_bytes = n;
    }

    pub fn add_response_bytes(&mut self, n: u64) {
        self.response_bytes += n;
    }

    /// The endpoint answered with `status` (its response head).
    pub fn answered(&mut self, status: u16) {
        if self.state != State::Open {
            return;
        }
        self.state = State::Answered;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        self.outlier(Outcome::Status(status), now);
        self.metrics().response(status, elapsed.as_secs_f64());
        // A fast 5xx (an endpoint shedding load) must not read as an idle endpoint.
        if self.target.health.load_spill.is_some() && status < 500 {
            self.health.load.record(elapsed.as_micros() as u64);
        }
    }

    /// The attempt failed for `fault`.
    pub fn failed(&mut self, fault: Fault) {
        if self.state != State::Open {
            return;
        }
        self.state = State::Failed;
        self.target.errors.count(fault);
        if !fault.is_upstream() {
            return;
        }
        if fault == Fault::Connect {
            self.metrics().connect_failures.inc();
        }
        self.outlier(Outcome::LocalOriginFailure, Instant::now());
        if fault == Fault::Timeout && self.target.health.load_spill.is_some() {
            // A timeout is the slowest answer there is: it counts as load.
            self.health
                .load
                .record(self.started.elapsed().as_micros() as u64);
        }
    }

    fn metrics(&self) -> &crate::metrics::EndpointMetrics {
        &self.target.endpoint_metrics[self.idx as usize]
    }

    /// Feeds outlier detection and ejects the endpoint when a threshold is crossed and
    /// `maxEjectionPercent` allows it (at least one endpoint always may be, as in Envoy).
    fn outlier(&self, outcome: Outcome, now: Instant) {
        let target = &self.target;
        let policy = &target.health.outlier;
        let now = ms_at(now);
        let Some(reason) = self.health.record(outcome, policy, now) else {
            return;
        };
        let snap = target.snapshot.load();
        let addr = snap.endpoints[self.idx as usize].addr;
        let ejected = snap.health.iter().filter(|h| h.is_ejected(now)).count();
        let allowed = (snap.health.len() * policy.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            tracing::info!(service = %target.name, endpoint = %addr, reason = reason.as_str(), ejected, allowed,
                "not ejecting: maxEjectionPercent reached");
            return;
        }
        if let Some(until) = self.health.eject(policy, now) {
            target.count_ejection(reason.as_str());
            tracing::warn!(
                service = %target.name,
                endpoint = %addr,
                reason = reason.as_str(),
                times = self.health.ejection_count(),
                for_ms = until - now,
                "endpoint ejected"
            );
            target.report(HealthEvent::Ejected {
                addr,
                until_ms: until,
            });
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.state == State::Open {
            // Dropped with no outcome: the client went away while the endpoint worked.
            self.target.errors.count(Fault::Cancelled);
        }
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.target.health.upstream.max_requests.is_some() {
            self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if self.retry {
            self.target
                .retries_in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics()
            .bytes(self.request_bytes, self.response_bytes, &self.target.totals);
    }
}
