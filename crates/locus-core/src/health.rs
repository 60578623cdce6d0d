//! Endpoint health: passive outlier detection with Envoy/Istio semantics, active-check state,
//! and the maths of proportional spillover across priority buckets.
//!
//! Per-endpoint state lives in [`EndpointHealth`] (atomics only), shared by every snapshot
//! that contains the endpoint and kept across configuration reloads by the gateway, so the
//! request path records outcomes without locks. Time is passed in as milliseconds on a
//! monotonic clock, which keeps everything here deterministic and testable.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Outlier detection settings (Istio `DestinationRule.trafficPolicy.outlierDetection`, Envoy
/// `outlier_detection`). A threshold of 0 disables that detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// `consecutive5xxErrors`: any 5xx (and, unless split, local-origin failures).
    pub consecutive_5xx: u32,
    /// `consecutiveGatewayErrors`: 502, 503 and 504 (and, unless split, local-origin failures).
    pub consecutive_gateway: u32,
    /// `consecutiveLocalOriginFailures`: connect refused, reset, timeout; only counted apart
    /// when `split_local_origin` is set.
    pub consecutive_local_origin: u32,
    /// `splitExternalLocalOriginErrors`.
    pub split_local_origin: bool,
    /// `interval`: how often ejection multipliers decay while an endpoint stays healthy.
    pub interval: Duration,
    /// `baseEjectionTime`, multiplied by the number of times the endpoint was ejected.
    pub base_ejection: Duration,
    /// Cap of an ejection (Envoy's `max_ejection_time`, default 300 s).
    pub max_ejection: Duration,
    /// `maxEjectionPercent`: at most this share of a Service's endpoints ejected at once.
    pub max_ejection_percent: u32,
    /// `minHealthPercent`: below this share of healthy endpoints, the panic mode balances over
    /// every endpoint of the allowed buckets, healthy or not. 0 disables it (Istio's default).
    pub min_health_percent: u32,
}

impl Default for OutlierPolicy {
    /// Locus's defaults when no policy is configured. Unlike Istio, where nothing is detected
    /// without an `outlierDetection` block, a connection failure takes an endpoint out of
    /// rotation at once: a refused or timed-out connect is not a matter of opinion, and it is
    /// what makes a dead zone fail over. 5xx responses are left alone until a policy says
    /// otherwise (an application's 500 is not necessarily the endpoint's fault). The base
    /// ejection is short (5 s, growing 5 s per repeat) because real traffic is the only probe
    /// when no active check is configured: a restarted endpoint should not wait 30 s.
    fn default() -> Self {
        OutlierPolicy {
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            consecutive_local_origin: 1,
            split_local_origin: true,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }
}

impl OutlierPolicy {
    /// Envoy's defaults for the fields an Istio `outlierDetection` block leaves out.
    pub fn envoy_defaults() -> Self {
        OutlierPolicy {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            consecutive_local_origin: 5,
            split_local_origin: false,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }

    /// How long the `n`-th ejection (1-based) lasts: base × n, capped.
    pub fn ejection_time(&self, n: u32) -> Duration {
        let cap = self.max_ejection.max(self.base_ejection);
        (self.base_ejection * n.max(1)).min(cap)
    }
}

/// What happened to one request sent to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The request never got a response from the endpoint: connect refused or timed out,
    /// reset, refused stream.
    LocalOriginFailure,
}

/// Why an attempt failed, and on which side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No connection could be made to the endpoint.
    Connect,
    /// The endpoint closed or reset the connection after the request was sent.
    Reset,
    /// The endpoint did not answer in time.
    Timeout,
    /// The endpoint's response could not be parsed.
    Protocol,
    /// The client closed its connection or stopped mid-body.
    ClientAborted,
    /// The client's body was malformed (a bad chunk, a length mismatch).
    ClientBody,
    /// The timeout fired while the client was still sending its body (Envoy starts its route
    /// timeout only once the request is fully received; the endpoint cannot answer earlier).
    ClientTimeout,
    /// The request was dropped before any outcome: the client went away while waiting.
    Cancelled,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::Connect,
        Fault::Reset,
        Fault::Timeout,
        Fault::Protocol,
        Fault::ClientAborted,
        Fault::ClientBody,
        Fault::ClientTimeout,
        Fault::Cancelled,
    ];

    /// Whether the failure counts against the endpoint.
    pub fn is_upstream(self) -> bool {
        matches!(
            self,
            Fault::Connect | Fault::Reset | Fault::Timeout | Fault::Protocol
        )
    }

    /// `upstream` or `client`: the `side` label of `locus_request_errors_total`.
    pub fn side(self) -> &'static str {
        if self.is_upstream() {
            "upstream"
        } else {
            "client"
        }
    }

    /// The `kind` label of `locus_request_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::Connect => "connect",
            Fault::Reset => "reset",
            Fault::Timeout => "timeout",
            Fault::Protocol => "protocol",
            Fault::ClientAborted => "aborted",
            Fault::ClientBody => "bad-body",
            Fault::ClientTimeout => "timeout",
            Fault::Cancelled => "cancelled",
        }
    }

    /// Position in [`Fault::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why an endpoint is being ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectReason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveLocalOriginFailures,
}

impl EjectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive-5xx",
            EjectReason::ConsecutiveGatewayErrors => "consecutive-gateway-errors",
            EjectReason::ConsecutiveLocalOriginFailures => "consecutive-local-origin-failures",
        }
    }
}

/// Health of one endpoint, shared by every snapshot containing it.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Monotonic ms until which the endpoint is ejected (0: not ejected).
    ejected_until: AtomicU64,
    /// How many times it was ejected (the multiplier of the next ejection), before decay.
    ejections: AtomicU32,
    /// Monotonic ms when the last ejection ended (for decay).
    last_return: AtomicU64,
    /// Failing active health checks.
    active_unhealthy: AtomicBool,
    /// Requests in flight (least-request balancing, admin API).
    pub in_flight: AtomicU32,
    /// Latency counters for load-aware spill.
    pub load: crate::load::LoadMeter,
}

impl EndpointHealth {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Monotonic ms until which the endpoint is ejected, if it is.
    pub fn ejected_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    pub fn is_active_unhealthy(&self) -> bool {
        self.active_unhealthy.load(Ordering::Relaxed)
    }

    /// Sets the active-check verdict; returns whether it changed.
    pub fn set_active_unhealthy(&self, unhealthy: bool) -> bool {
        self.active_unhealthy.swap(unhealthy, Ordering::Relaxed) != unhealthy
    }

    /// Healthy for routing: neither ejected nor failing active checks.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        !self.is_ejected(now_ms) && !self.is_active_unhealthy()
    }

    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records an outcome. Returns the reason when a threshold is crossed and the endpoint
    /// should be ejected now; the caller checks `maxEjectionPercent` and then calls
    /// [`EndpointHealth::eject`].
    pub fn record(
        &self,
        outcome: Outcome,
        policy: &OutlierPolicy,
        now_ms: u64,
    ) -> Option<EjectReason> {
        if self.is_ejected(now_ms) {
            return None;
        }
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::Relaxed) + 1;
        let crossed = |threshold: u32, n: u32| threshold > 0 && n >= threshold;
        match outcome {
            Outcome::Status(s) if s < 500 => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                self.consecutive_local.store(0, Ordering::Relaxed);
                None
            }
            Outcome::Status(s) => {
                // A response came back: the connection works.
                self.consecutive_local.store(0, Ordering::Relaxed);
                let n5 = bump(&self.consecutive_5xx);
                let gateway = matches!(s, 502..=504);
                let ng = if gateway {
                    bump(&self.consecutive_gateway)
                } else {
                    self.consecutive_gateway.store(0, Ordering::Relaxed);
                    0
                };
                if crossed(policy.consecutive_5xx, n5) {
                    Some(EjectReason::Consecutive5xx)
                } else if gateway && crossed(policy.consecutive_gateway, ng) {
                    Some(EjectReason::ConsecutiveGatewayErrors)
                } else {
                    None
                }
            }
            Outcome::LocalOriginFailure => {
                if policy.split_local_origin {
                    let n = bump(&self.consecutive_local);
                    crossed(policy.consecutive_local_origin, n)
                        .then_some(EjectReason::ConsecutiveLocalOriginFailures)
                } else {
                    // Envoy without the split: a local-origin failure counts as a 503.
                    self.record(Outcome::Status(503), policy, now_ms)
                }
            }
        }
    }

    /// Ejects the endpoint now. Returns the monotonic ms it returns at, or `None` when another
    /// request ejected it first.
    pub fn eject(&self, policy: &OutlierPolicy, now_ms: u64) -> Option<u64> {
        let current = self.ejected_until.load(Ordering::Relaxed);
        if current > now_ms {
            return None;
        }
        // Decay: one ejection forgiven per interval spent healthy since the last return.
        let interval = policy.interval.as_millis().max(1) as u64;
        let healthy_for = now_ms.saturating_sub(self.last_return.load(Ordering::Relaxed));
        let previous = self.ejections.load(Ordering::Relaxed);
        let decayed =
            previous.saturating_sub(u32::try_from(healthy_for / interval).unwrap_or(u32::MAX));
        let n = decayed + 1;
        let until = now_ms + policy.ejection_time(n).as_millis() as u64;
        if self
            .ejected_until
            .compare_exchange(current, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        self.ejections.store(n, Ordering::Relaxed);
        self.last_return.store(until, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
        Some(until)
    }
}

/// Default overprovisioning factor (Envoy's 1.4): a bucket keeps all its traffic while at
/// least 1/1.4 ≈ 71% of its capacity is healthy, and sheds load in proportion below that.
pub const DEFAULT_OVERPROVISIONING: f64 = 1.4;

/// Health of one bucket, as weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketHealth {
    pub healthy: u64,
    pub total: u64,
}

/// How traffic is shared among buckets, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Spillover {
    /// Envoy/Istio priority load: a bucket takes `min(1, factor × healthy/total)` of what is
    /// left, so load moves gradually as a bucket degrades.
    #[default]
    Proportional,
    /// agentgateway's: everything to the best bucket with a healthy endpoint.
    AllOrNothing,
}

/// Shares of traffic per bucket (summing to 1 when anything is healthy, else all 0), with
/// Envoy's normalisation: when the buckets' health adds up to less than 100%, loads are scaled
/// so the healthy capacity still takes all traffic.
pub fn bucket_loads(buckets: &[BucketHealth], mode: Spillover, factor: f64) -> Vec<f64> {
    let mut loads = vec![0.0; buckets.len()];
    match mode {
        Spillover::AllOrNothing => {
            if let Some(i) = buckets.iter().position(|b| b.healthy > 0) {
                loads[i] = 1.0;
            }
        }
        Spillover::Proportional => {
            let health: Vec<f64> = buckets
                .iter()
                .map(|b| {
                    if b.total == 0 {
                        0.0
                    } else {
                        (factor * b.healthy as f64 / b.total as f64).min(1.0)
                    }
                })
                .collect();
            let total: f64 = health.iter().sum::<f64>().min(1.0);
            if total <= 0.0 {
                return loads;
            }
            let mut left = 1.0;
            for (i, h) in health.iter().enumerate() {
                let share = (h / total).min(left);
                loads[i] = share;
                left -= share;
                if left <= 1e-12 {
                    break;
                }
            }
        }
    }
    loads
}

/// Share of healthy capacity over all buckets, for the panic threshold (Envoy's "normalized
/// total health", before overprovisioning).
pub fn healthy_fraction(buckets: &[BucketHealth]) -> f64 {
    let (h, t) = buckets
        .iter()
        .fold((0u64, 0u64), |(h, t), b| (h + b.healthy, t + b.total));
    if t == 0 {
        0.0
    } else {
        h as f64 / t as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bh(healthy: u64, total: u64) -> BucketHealth {
        BucketHealth { healthy, total }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn envoy_documented_priority_loads() {
        // Envoy's priority levels table (overprovisioning 1.4).
        let f = DEFAULT_OVERPROVISIONING;
        let p = Spillover::Proportional;
        assert!(close(
            &bucket_loads(&[bh(100, 100), bh(100, 100)], p, f),
            &[1.0, 0.0]
        ));
        assert!(close(
            &bucket_loads(&[bh(72, 100), bh(100, 100)], p, f),
            &[1.0, 0.0]
        ));
        assert!(close(
            &bucket_loads(&[bh(71, 100), bh(100, 100)], p, f),
            &[0.994, 0.006]
        ));
        assert!(close(
            &bucket_loads(&[bh(50, 100), bh(100, 100)], p, f),
            &[0.70, 0.30]
        ));
        assert!(close(
            &bucket_loads(&[bh(25, 100), bh(100, 100)], p, f),
            &[0.35, 0.65]
        ));
        assert!(close(
            &bucket_loads(&[bh(25, 100), bh(25, 100)], p, f),
            &[0.50, 0.50]
        ));
        assert!(close(
            &bucket_loads(&[bh(0, 100), bh(0, 100)], p, f),
            &[0.0, 0.0]
        ));
        assert!(close(
            &bucket_loads(&[bh(20, 100), bh(20, 100), bh(100, 100)], p, f),
            &[0.28, 0.28, 0.44]
        ));
    }

    #[test]
    fn five_endpoints_two_down_keep_84_percent_local() {
        let l = bucket_loads(&[bh(3, 5), bh(4, 4)], Spillover::Proportional, 1.4);
        assert!(close(&l, &[0.84, 0.16]), "{l:?}");
    }

    #[test]
    fn all_or_nothing_takes_the_first_healthy_bucket() {
        let l = bucket_loads(
            &[bh(0, 2), bh(1, 3), bh(3, 3)],
            Spillover::AllOrNothing,
            1.4,
        );
        assert_eq!(l, vec![0.0, 1.0, 0.0]);
    }

    proptest! {
        #[test]
        fn loads_sum_to_one_and_never_skip_a_healthy_bucket(
            b in proptest::collection::vec((0u64..20, 1u64..20), 1..6),
            factor in 1.0f64..3.0,
        ) {
            let buckets: Vec<BucketHealth> = b.iter().map(|&(h, t)| bh(h.min(t), t)).collect();
            let loads = bucket_loads(&buckets, Spillover::Proportional, factor);
            let sum: f64 = loads.iter().sum();
            if buckets.iter().any(|b| b.healthy > 0) {
                prop_assert!((sum - 1.0).abs() < 1e-9, "{loads:?}");
            } else {
                prop_assert_eq!(sum, 0.0);
            }
            // A bucket with no healthy capacity never gets traffic; the best healthy bucket
            // always does.
            for (l, b) in loads.iter().zip(&buckets) {
                if b.healthy == 0 { prop_assert_eq!(*l, 0.0); }
            }
            if let Some(first) = buckets.iter().position(|b| b.healthy > 0) {
                prop_assert!(loads[first] > 0.0);
            }
        }
    }

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            consecutive_local_origin: 2,
            split_local_origin: true,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    #[test]
    fn consecutive_5xx_ejects_and_success_resets() {
        let h = EndpointHealth::new();
        let p = policy();
        assert_eq!(h.record(Outcome::Status(500), &p, 0), None);
        assert_eq!(h.record(Outcome::Status(500), &p, 0), None);
        assert_eq!(h.record(Outcome::Status(200), &p, 0), None);
        assert_eq!(h.record(Outcome::Status(500), &p, 0), None);
        assert_eq!(h.record(Outcome::Status(503), &p, 0), None);
        assert_eq!(
            h.record(Outcome::Status(500), &p, 0),
            Some(EjectReason::Consecutive5xx)
        );
        assert_eq!(h.eject(&p, 1_000), Some(31_000));
        assert!(h.is_ejected(30_999));
        assert!(!h.is_ejected(31_000));
        // Ejecting twice at once is a no-op.
        assert_eq!(h.eject(&p, 2_000), None);
    }

    #[test]
    fn gateway_errors_counted_apart() {
        let h = EndpointHealth::new();
        let p = OutlierPolicy {
            consecutive_5xx: 0,
            consecutive_gateway: 2,
            ..policy()
        };
        assert_eq!(h.record(Outcome::Status(502), &p, 0), None);
        assert_eq!(h.record(Outcome::Status(500), &p, 0), None); // resets the gateway count
        assert_eq!(h.record(Outcome::Status(504), &p, 0), None);
        assert_eq!(
            h.record(Outcome::Status(503), &p, 0),
            Some(EjectReason::ConsecutiveGatewayErrors)
        );
    }

    #[test]
    fn local_origin_failures_split_or_counted_as_503() {
        let h = EndpointHealth::new();
        let p = policy();
        assert_eq!(h.record(Outcome::LocalOriginFailure, &p, 0), None);
        assert_eq!(
            h.record(Outcome::LocalOriginFailure, &p, 0),
            Some(EjectReason::ConsecutiveLocalOriginFailures)
        );
        let h = EndpointHealth::new();
        let unsplit = OutlierPolicy {
            split_local_origin: false,
            ..policy()
        };
        for _ in 0..2 {
            assert_eq!(h.record(Outcome::LocalOriginFailure, &unsplit, 0), None);
        }
        assert_eq!(
            h.record(Outcome::LocalOriginFailure, &unsplit, 0),
            Some(EjectReason::Consecutive5xx)
        );
    }

    #[test]
    fn ejection_time_grows_caps_and_decays() {
        let h = EndpointHealth::new();
        let p = policy();
        // Back-to-back ejections: 30 s, 60 s, 90 s …
        let mut now = 0;
        for n in 1..=3u64 {
            let until = h.eject(&p, now).unwrap();
            assert_eq!(until - now, 30_000 * n);
            now = until;
        }
        // Capped at 300 s.
        for _ in 0..20 {
            now = h.eject(&p, now).unwrap();
        }
        let until = h.eject(&p, now).unwrap();
        assert_eq!(until - now, 300_000);
        // Healthy for 25 intervals after returning: the multiplier decays back to 1.
        now = until + 250_000;
        let until = h.eject(&p, now).unwrap();
        assert_eq!(until - now, 30_000);
        assert_eq!(h.ejection_count(), 1);
    }

    #[test]
    fn ejected_endpoints_ignore_outcomes() {
        let h = EndpointHealth::new();
        let p = policy();
        h.eject(&p, 0).unwrap();
        for _ in 0..5 {
            assert_eq!(h.record(Outcome::Status(500), &p, 10), None);
        }
    }

    #[test]
    fn active_state() {
        let h = EndpointHealth::new();
        assert!(h.is_healthy(0));
        assert!(h.set_active_unhealthy(true));
        assert!(!h.set_active_unhealthy(true));
        assert!(!h.is_healthy(0));
        assert!(h.set_active_unhealthy(false));
        assert!(h.is_healthy(0));
    }
}
