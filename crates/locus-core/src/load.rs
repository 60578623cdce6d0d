//! Load-aware spill: how busy each endpoint is, measured from the latency this gateway sees,
//! and the controller that moves a share of the closest bucket's traffic to the next bucket
//! when the closest one is busier by a band, and brings it back as load falls.
//!
//! Why latency and not this gateway's in-flight count: a gateway sees only its own requests,
//! so its in-flight count to an endpoint says how much *it* sends there (Little's law: rate ×
//! latency), not how loaded the endpoint is. Comparing in-flight counts would make every
//! gateway even out its own traffic, which is locality-blind routing again. Latency is what
//! all clients of an endpoint share: a request queued behind other gateways' requests takes
//! longer. Latencies are divided by the Service's unloaded latency (the fastest recent response
//! of any of its endpoints), which leaves queueing:
//!
//! `load = mean latency / unloaded latency − 1`
//!
//! 0 when idle, 1 when requests wait as long as they are served; for a server sharing its CPU
//! among requests at utilisation ρ it is ρ / (1 − ρ), so it grows faster than utilisation and
//! a band on it is a tighter band on utilisation.
//!
//! One unloaded latency per Service, not one per endpoint: the fastest of a few responses is
//! slower than the fastest of many, so a per-endpoint floor would make the endpoints this
//! gateway sends little to (the next zone's) look less loaded than they are — and every
//! gateway would spill into every other zone. With a shared floor, a farther zone's extra
//! round trip counts as load, which only makes spill more reluctant.
//!
//! Everything here is pure: the meter is a handful of relaxed atomics written on the request
//! path, the estimator and controller run once per interval in the gateway's load task.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-endpoint latency counters: written on the request path (two adds and a max), read
/// once per interval by the load task, which is their only reader.
#[derive(Debug, Default)]
pub struct LoadMeter {
    completed: AtomicU64,
    latency_us: AtomicU64,
    /// `u64::MAX − fastest latency` since the last read, so the default (0) means "none" and
    /// the request path keeps the minimum with one `fetch_max`.
    fastest_inv: AtomicU64,
    /// The estimator's view, written by the load task for the admin API (f64 bits).
    smoothed_latency_us: AtomicU64,
    unloaded_us: AtomicU64,
}

/// What one endpoint did during one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IntervalLoad {
    /// Responses received.
    pub completed: u64,
    /// Sum of their latencies, µs.
    pub latency_us: f64,
    /// The endpoint's unloaded latency, µs (0 when never measured).
    pub unloaded_us: f64,
}

impl IntervalLoad {
    /// Mean latency over unloaded latency, minus one (0 without samples).
    pub fn load(&self) -> f64 {
        if self.completed == 0 || self.unloaded_us <= 0.0 {
            return 0.0;
        }
        (self.latency_us / self.completed as f64 / self.unloaded_us - 1.0).max(0.0)
    }
}

/// How fast the unloaded latency may rise per interval: a permanently slower endpoint (a new
/// version, a bigger payload) is re-learnt within about a minute at one interval per second,
/// while a burst of queueing lasting a few intervals barely moves it.
const UNLOADED_RELAX: f64 = 1.01;

/// Weight of the newest interval in the smoothed figures.
pub const SMOOTHING: f64 = 0.25;

impl LoadMeter {
    /// Records one response received `latency_us` after the request was sent.
    #[inline]
    pub fn record(&self, latency_us: u64) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.latency_us.fetch_add(latency_us, Ordering::Relaxed);
        self.fastest_inv
            .fetch_max(u64::MAX - latency_us, Ordering::Relaxed);
    }

    /// Closes an interval: what was recorded since the last call, with the updated unloaded
    /// latency. The counters are taken (swapped to zero), so a meter created afresh for an
    /// address that left and came back starts clean.
    pub fn close_interval(&self) -> IntervalLoad {
        let completed = self.completed.swap(0, Ordering::Relaxed);
        let latency = self.latency_us.swap(0, Ordering::Relaxed);
        let fastest_inv = self.fastest_inv.swap(0, Ordering::Relaxed);
        let unloaded = f64::from_bits(self.unloaded_us.load(Ordering::Relaxed));
        let unloaded = if fastest_inv == 0 {
            unloaded
        } else {
            // At least 1 µs so the ratio stays finite.
            let fastest = (u64::MAX - fastest_inv).max(1) as f64;
            if unloaded <= 0.0 {
                fastest
            } else {
                fastest.min(unloaded * UNLOADED_RELAX)
            }
        };
        self.unloaded_us
            .store(unloaded.to_bits(), Ordering::Relaxed);
        let interval = IntervalLoad {
            completed,
            latency_us: latency as f64,
            unloaded_us: unloaded,
        };
        if interval.completed > 0 {
            let mean = interval.latency_us / interval.completed as f64;
            let old = f64::from_bits(self.smoothed_latency_us.load(Ordering::Relaxed));
            let new = if old > 0.0 {
                old + SMOOTHING * (mean - old)
            } else {
                mean
            };
            self.smoothed_latency_us
                .store(new.to_bits(), Ordering::Relaxed);
        }
        interval
    }

    /// Smoothed mean latency and unloaded latency in ms, for the admin API (`None` before any
    /// response).
    pub fn view_ms(&self) -> Option<(f64, f64)> {
        let smoothed = f64::from_bits(self.smoothed_latency_us.load(Ordering::Relaxed));
        let unloaded = f64::from_bits(self.unloaded_us.load(Ordering::Relaxed));
        (smoothed > 0.0).then(|| (smoothed / 1000.0, unloaded / 1000.0))
    }
}

/// The load of a group of endpoints over one interval, and how many responses it rests on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub load: f64,
    pub samples: u64,
}

/// The Service's unloaded latency: the lowest of its endpoints' (`None` before any response).
pub fn unloaded_latency(intervals: impl IntoIterator<Item = IntervalLoad>) -> Option<f64> {
    intervals
        .into_iter()
        .map(|i| i.unloaded_us)
        .filter(|u| *u > 0.0)
        .min_by(f64::total_cmp)
}

/// The load of a group of endpoints over one interval: their mean latency over the Service's
/// unloaded latency, minus one. `None` without samples.
pub fn group_load(
    intervals: impl IntoIterator<Item = IntervalLoad>,
    unloaded_us: f64,
) -> Option<Measured> {
    let (mut busy, mut samples) = (0.0, 0);
    for i in intervals {
        busy += i.latency_us;
        samples += i.completed;
    }
    (samples > 0 && unloaded_us > 0.0).then(|| Measured {
        load: (busy / (samples as f64 * unloaded_us) - 1.0).max(0.0),
        samples,
    })
}

/// Responses an interval needs for its load to count fully; fewer count in proportion. A
/// small spill sends few requests to the next bucket, and two slow responses must not read
/// as a busy zone.
pub const CONFIDENT_SAMPLES: u64 = 20;

/// The band of the spill controller (`locus.io/load-spill-high`, `-low`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Band {
    /// Spill more while the closest bucket's load exceeds the next one's by this factor.
    pub high: f64,
    /// Spill less once it is below this factor of the next one's: with 1.0, as soon as the
    /// receiving bucket is the busier one (never spill into a hotter bucket).
    pub low: f64,
}

impl Default for Band {
    fn default() -> Self {
        Band {
            high: 1.25,
            low: 1.0,
        }
    }
}

/// Below this load the closest bucket is not busy (requests queue for less than a fifth of
/// their unloaded latency): no reason to pay for another zone.
pub const SPILL_FLOOR: f64 = 0.2;
/// Below this load spill is taken back whatever the other bucket does: load has fallen.
pub const RETURN_FLOOR: f64 = 0.1;
/// How much of the closest bucket's traffic one interval may move, either way. Small steps:
/// every other gateway reacts to the same signal, and the loads need an interval to show the
/// effect of a step.
pub const STEP: f64 = 0.05;
/// Spill starts only when the closest bucket has been busier than the band for this many
/// intervals in a row. Near balance, latency over an interval swings by more than the band;
/// without this, the gateways of the less busy zone would now and then spill into the busier
/// one, and traffic would cross zones both ways for nothing.
pub const CONFIRM_INTERVALS: u32 = 3;
/// At most this share of the closest bucket's traffic is moved: the rest keeps measuring it,
/// so the controller can see it recover. (Health, not load, empties a bucket.)
pub const MAX_SPILL: f64 = 0.9;
/// Responses this interval's figure for the closest bucket needs to overrule the smoothed one.
pub const LATEST_SAMPLES: u64 = 5;
/// A figure for the next bucket older than this many intervals is not acted on.
pub const FRESH_INTERVALS: u32 = 2;
/// Responses that replace a stale figure for the next bucket (and judge a probe).
pub const FRESH_SAMPLES: u64 = 10;
/// After this many intervals without a response from the next bucket (nothing is sent there,
/// so nothing is learnt), its load is forgotten: a busy closest bucket probes it again with
/// one step, kept only if the measurement confirms the next bucket is less busy by the band.
pub const STALE_INTERVALS: u32 = 30;

/// What the controller did in an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The closest bucket is busier than the next by more than the band.
    Spill,
    /// The next bucket is as busy (or busier), or load fell: traffic comes back.
    Return,
    /// Within the band, or not enough signal.
    Hold,
    /// The closest bucket is busy and nothing is known of the next one: one step to measure it.
    Probe,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Spill => "spill more",
            Decision::Return => "bring back",
            Decision::Hold => "hold",
            Decision::Probe => "probe the next bucket",
        }
    }
}

/// The spill controller of one Service in one gateway.
#[derive(Clone, Debug, Default)]
pub struct SpillController {
    /// Share of the closest bucket's traffic moved to the next bucket (0..=1).
    pub spill: f64,
    /// Smoothed load of the closest bucket and of the receiving buckets (`None` until seen).
    pub local: Option<f64>,
    pub remote: Option<f64>,
    pub last: Option<Decision>,
    /// Intervals since the figure for the next bucket was last updated.
    pub remote_age: u32,
    /// Responses gathered from the next bucket while its figure is stale: (Σ load × n, n).
    /// A stale figure is replaced only once enough have come in.
    gathered: (f64, u64),
    /// Intervals since a probe was sent, until the next bucket's fresh figure judges it.
    pub probe: Option<u32>,
    /// Consecutive intervals the closest bucket has been busier than the band while nothing
    /// spills.
    pub confirming: u32,
}

impl SpillController {
    /// One interval: folds in the loads measured (`None` when a side answered nothing) and
    /// returns the new spill.
    pub fn tick(&mut self, band: Band, local: Option<Measured>, remote: Option<Measured>) -> f64 {
        let smooth = |old: Option<f64>, new: Option<Measured>| match (old, new) {
            (Some(o), Some(n)) => {
                let weight = (n.samples as f64 / CONFIDENT_SAMPLES as f64).min(1.0);
                Some(o + SMOOTHING * weight * (n.load - o))
            }
            (None, n) => n.map(|n| n.load),
            (o, None) => o,
        };
        self.local = smooth(self.local, local);
        match remote {
            Some(_) if self.remote.is_some() && self.remote_age <= FRESH_INTERVALS => {
                self.remote = smooth(self.remote, remote);
                self.remote_age = 0;
            }
            Some(n) => {
                // After a silence the old figure is replaced rather than nudged (the next
                // bucket may have changed completely), once enough responses say what it is.
                self.gathered.0 += n.load * n.samples as f64;
                self.gathered.1 += n.samples;
                if self.gathered.1 >= FRESH_SAMPLES {
                    self.remote = Some(self.gathered.0 / self.gathered.1 as f64);
                    self.remote_age = 0;
                    self.gathered = (0.0, 0);
                } else {
                    self.remote_age = self.remote_age.saturating_add(1);
                }
            }
            None => self.remote_age = self.remote_age.saturating_add(1),
        }
        let fresh = self.remote_age <= FRESH_INTERVALS;
        if fresh {
            self.gathered = (0.0, 0);
        }
        // A probe is judged by the first fresh figure of the next bucket, however many
        // intervals that takes (little traffic, or none from the closest bucket); if none comes
        // within STALE_INTERVALS, it is taken back.
        let probing = match self.probe {
            Some(age) if !fresh && age < STALE_INTERVALS => {
                self.probe = Some(age + 1);
                false
            }
            Some(_) => true,
            None => false,
        };
        // No response from the closest bucket this interval (no traffic at all, or too little):
        // nothing new to act on. MAX_SPILL keeps some traffic there so it can be measured.
        let local_now = self.local.filter(|_| local.is_some());
        // This interval's own figure for the closest bucket, when it rests on enough responses.
        // The smoothed figure lags: when load falls it stays high for a while, and must not
        // push more traffic away while the latest interval says the bucket is idle.
        let latest = local
            .filter(|m| m.samples >= LATEST_SAMPLES)
            .map(|m| m.load);
        let decision = match (local_now, self.remote.filter(|_| fresh)) {
            // A probe nothing came back from within STALE_INTERVALS.
            _ if probing && !fresh => Decision::Return,
            (None, _) => Decision::Hold,
            (Some(l), _) if l < RETURN_FLOOR || latest.is_some_and(|x| x < RETURN_FLOOR) => {
                Decision::Return
            }
            (Some(l), None) => {
                // Nothing recent is known of the next bucket (nothing is sent there): an old
                // figure is no reason to spill, only to probe once it is old enough.
                let known = self.remote.is_some() && self.remote_age < STALE_INTERVALS;
                // An interval too quiet for a figure of its own does not hold a probe back.
                let busy = l >= SPILL_FLOOR && latest.is_none_or(|x| x >= SPILL_FLOOR);
                if self.spill == 0.0 && busy && !known && self.probe.is_none() {
                    Decision::Probe
                } else {
                    Decision::Hold
                }
            }
            (Some(l), Some(r)) => {
                // The latest interval only has to agree on the direction: asking it to clear
                // the band too would hold spill back on every noisy interval.
                if l > r * band.high && l >= SPILL_FLOOR && latest.is_none_or(|x| x > r) {
                    Decision::Spill
                } else if l < r * band.low || probing {
                    // A probe that does not find the next bucket less busy by the whole band
                    // is taken back: otherwise every gateway would keep a step of spill into
                    // every other zone, trading traffic across zones for nothing.
                    Decision::Return
                } else {
                    Decision::Hold
                }
            }
        };
        let starting = self.spill == 0.0 && matches!(decision, Decision::Spill | Decision::Probe);
        self.confirming = if starting { self.confirming + 1 } else { 0 };
        let decision = if starting && self.confirming < CONFIRM_INTERVALS {
            Decision::Hold
        } else {
            decision
        };
        if decision == Decision::Probe {
            self.probe = Some(0);
        } else if probing && matches!(decision, Decision::Spill | Decision::Return) {
            self.probe = None;
        }
        self.spill = match decision {
            Decision::Spill | Decision::Probe => (self.spill + STEP).min(MAX_SPILL),
            Decision::Return => (self.spill - STEP).max(0.0),
            Decision::Hold => self.spill,
        };
        // Rounding must not leave a sliver of spill behind.
        if self.spill < 1e-9 {
            self.spill = 0.0;
        }
        self.last = Some(decision);
        self.spill
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(load: f64) -> Option<Measured> {
        Some(Measured {
            load,
            samples: CONFIDENT_SAMPLES,
        })
    }

    fn interval(completed: u64, mean_us: f64, unloaded_us: f64) -> IntervalLoad {
        IntervalLoad {
            completed,
            latency_us: completed as f64 * mean_us,
            unloaded_us,
        }
    }

    #[test]
    fn meter_reports_intervals_and_learns_the_unloaded_latency() {
        let m = LoadMeter::default();
        for l in [1_000, 3_000, 2_000] {
            m.record(l);
        }
        let i = m.close_interval();
        assert_eq!(i.completed, 3);
        assert_eq!(i.latency_us, 6_000.0);
        assert_eq!(i.unloaded_us, 1_000.0);
        assert!((i.load() - 1.0).abs() < 1e-9);
        // Slower responses only: the unloaded latency rises by at most 1% an interval.
        m.record(5_000);
        let i = m.close_interval();
        assert_eq!(i.completed, 1);
        assert!((i.unloaded_us - 1_010.0).abs() < 1e-6);
        assert!(m.view_ms().is_some());
        // An empty interval keeps the unloaded latency.
        let i = m.close_interval();
        assert_eq!(i.completed, 0);
        assert_eq!(i.load(), 0.0);
    }

    #[test]
    fn group_load_weights_by_requests() {
        let intervals = [
            interval(100, 2_000.0, 1_100.0),
            interval(300, 1_000.0, 1_000.0),
        ];
        let unloaded = unloaded_latency(intervals).unwrap();
        assert_eq!(unloaded, 1_000.0);
        let g = group_load(intervals, unloaded).unwrap();
        // Busy 500 ms over unloaded 400 ms.
        assert!((g.load - 0.25).abs() < 1e-9);
        assert_eq!(g.samples, 400);
        assert_eq!(group_load([interval(0, 0.0, 1_000.0)], 1_000.0), None);
        assert_eq!(unloaded_latency([interval(0, 0.0, 0.0)]), None);
    }

    #[test]
    fn spills_in_steps_while_local_is_hotter_and_holds_in_the_band() {
        let mut c = SpillController::default();
        let band = Band::default();
        for _ in 1..CONFIRM_INTERVALS {
            c.tick(band, m(2.0), m(0.5));
            assert_eq!(c.spill, 0.0, "spill starts only once confirmed");
        }
        for n in 1..=4 {
            c.tick(band, m(2.0), m(0.5));
            assert!((c.spill - STEP * f64::from(n)).abs() < 1e-9);
        }
        // Loads converge: within the band nothing moves.
        c.local = Some(1.1);
        c.remote = Some(1.0);
        let before = c.spill;
        c.tick(band, m(1.1), m(1.0));
        assert_eq!(c.spill, before);
        assert_eq!(c.last, Some(Decision::Hold));
    }

    #[test]
    fn a_single_noisy_interval_does_not_start_spill() {
        let mut c = SpillController {
            local: Some(1.0),
            remote: Some(1.0),
            ..Default::default()
        };
        // Noise: two intervals in three look busy, never three in a row.
        for round in 0..10 {
            for busy in [true, true, false] {
                let l = if busy { 9.0 } else { 0.0 };
                c.local = Some(1.0);
                c.tick(Band::default(), m(l), m(1.0));
                assert_eq!(c.spill, 0.0, "round {round}: {c:?}");
            }
        }
    }

    #[test]
    fn never_spills_into_a_hotter_bucket() {
        let mut c = SpillController {
            spill: 0.3,
            ..Default::default()
        };
        c.tick(Band::default(), m(1.0), m(1.5));
        assert_eq!(c.last, Some(Decision::Return));
        assert!((c.spill - 0.25).abs() < 1e-9);
        // Even when the local bucket is busy, a busier remote one gets nothing more.
        let mut c = SpillController::default();
        for _ in 0..20 {
            c.tick(Band::default(), m(3.0), m(4.0));
        }
        assert_eq!(c.spill, 0.0);
    }

    #[test]
    fn no_traffic_changes_nothing_and_some_always_stays() {
        let mut c = SpillController {
            spill: 0.3,
            local: Some(3.0),
            remote: Some(0.5),
            ..Default::default()
        };
        for _ in 0..5 {
            c.tick(Band::default(), None, None);
        }
        assert!((c.spill - 0.3).abs() < 1e-9, "{c:?}");
        for _ in 0..40 {
            c.tick(Band::default(), m(5.0), m(0.1));
        }
        assert!((c.spill - MAX_SPILL).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn a_lagging_figure_never_pushes_more_away_once_load_has_fallen() {
        // Smoothed figures from a busy period; now the closest bucket answers at once.
        let mut c = SpillController {
            spill: 0.2,
            local: Some(1.3),
            remote: Some(1.2),
            ..Default::default()
        };
        let light = |load| {
            Some(Measured {
                load,
                samples: LATEST_SAMPLES,
            })
        };
        // The next bucket's figure drops faster (it was just re-measured) — still no spill.
        c.tick(Band::default(), light(0.05), m(0.05));
        assert_eq!(c.last, Some(Decision::Return), "{c:?}");
        let mut ticks = 1;
        while c.spill > 0.0 {
            c.tick(Band::default(), light(0.05), m(0.05));
            assert_ne!(c.last, Some(Decision::Spill), "{c:?}");
            ticks += 1;
        }
        assert_eq!(ticks, 4);
    }

    #[test]
    fn comes_back_as_load_falls() {
        let mut c = SpillController {
            spill: 0.2,
            local: Some(1.0),
            remote: Some(1.0),
            ..Default::default()
        };
        let mut ticks = 0;
        while c.spill > 0.0 {
            c.tick(Band::default(), m(0.02), m(0.01));
            ticks += 1;
            assert!(ticks < 20, "spill never came back");
        }
    }

    #[test]
    fn an_idle_local_bucket_does_not_spill() {
        let mut c = SpillController::default();
        for _ in 0..10 {
            c.tick(Band::default(), m(0.15), None);
        }
        assert_eq!(c.spill, 0.0);
        // Busy with nothing known about the next bucket: probe with one step, then learn.
        for _ in 0..CONFIRM_INTERVALS {
            c.tick(Band::default(), m(1.0), None);
        }
        assert_eq!(c.last, Some(Decision::Probe));
        assert!(c.spill > 0.0);
        // The next bucket turns out nearly as busy (within the band): the probe is taken back.
        c.tick(Band::default(), m(1.0), m(0.9));
        assert_eq!(c.last, Some(Decision::Return));
        assert_eq!(c.spill, 0.0);
        // Had it been idle, spill would have gone on.
        let mut c = SpillController::default();
        for _ in 0..CONFIRM_INTERVALS {
            c.tick(Band::default(), m(1.0), None);
        }
        c.tick(Band::default(), m(1.0), m(0.1));
        assert_eq!(c.last, Some(Decision::Spill));
        assert!((c.spill - 2.0 * STEP).abs() < 1e-9);
    }

    #[test]
    fn a_probe_waits_for_enough_answers_then_is_judged() {
        let mut c = SpillController::default();
        for _ in 0..CONFIRM_INTERVALS {
            c.tick(Band::default(), m(1.0), None);
        }
        assert_eq!(c.last, Some(Decision::Probe));
        let few = |load| {
            Some(Measured {
                load,
                samples: FRESH_SAMPLES / 2 - 1,
            })
        };
        // Nothing back, no local traffic, then too few answers: the probe stays, unjudged.
        c.tick(Band::default(), m(1.0), None);
        c.tick(Band::default(), None, None);
        c.tick(Band::default(), m(1.0), few(0.9));
        assert!((c.spill - STEP).abs() < 1e-9, "{c:?}");
        assert!(c.probe.is_some());
        // Enough answers (three intervals' worth), within the band: taken back.
        c.tick(Band::default(), m(1.0), few(0.9));
        assert!(c.probe.is_some());
        c.tick(Band::default(), m(1.0), few(0.9));
        assert_eq!(c.last, Some(Decision::Return), "{c:?}");
        assert_eq!((c.spill, c.probe), (0.0, None));
    }

    #[test]
    fn a_probe_nothing_answers_is_taken_back() {
        let mut c = SpillController::default();
        for _ in 0..CONFIRM_INTERVALS {
            c.tick(Band::default(), m(1.0), None);
        }
        for _ in 0..STALE_INTERVALS {
            assert!(c.spill > 0.0);
            c.tick(Band::default(), m(1.0), None);
        }
        c.tick(Band::default(), m(1.0), None);
        assert_eq!((c.spill, c.probe), (0.0, None), "{c:?}");
    }

    #[test]
    fn a_few_slow_responses_barely_move_the_estimate() {
        let mut c = SpillController {
            local: Some(1.0),
            remote: Some(0.5),
            ..Default::default()
        };
        let two = Some(Measured {
            load: 5.0,
            samples: 2,
        });
        c.tick(Band::default(), m(1.0), two);
        // 0.5 + 0.25 × (2/20) × 4.5
        assert!((c.remote.unwrap() - 0.6125).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn a_forgotten_remote_load_is_probed_again() {
        let mut c = SpillController::default();
        // The remote bucket was busy when last measured; nothing is sent there any more.
        c.tick(Band::default(), m(1.0), m(2.0));
        let mut probed_after = None;
        for n in 1..=STALE_INTERVALS + CONFIRM_INTERVALS {
            if c.tick(Band::default(), m(1.0), None) > 0.0 {
                probed_after = Some(n);
                break;
            }
        }
        assert_eq!(
            probed_after,
            Some(STALE_INTERVALS + CONFIRM_INTERVALS - 1),
            "{c:?}"
        );
    }
}
