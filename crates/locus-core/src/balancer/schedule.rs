//! Smooth weighted round robin without locks.
//!
//! nginx's smooth weighted round robin mutates per-peer counters on every pick, which needs a
//! lock. Instead we precompute one period of the same kind of smooth sequence with an
//! earliest-deadline-first scan (the scheduler Envoy uses for weighted hosts) and let requests
//! walk it with a relaxed atomic cursor ([`step`]): a pick is O(1) whatever the endpoint count, and
//! concurrent picks never wait on each other.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// A period longer than this is scaled down (weights kept in proportion, each at least 1) so a
/// snapshot of many heavily weighted endpoints stays a few hundred KiB at most.
const MAX_PERIOD: u64 = 1 << 16;

/// Up to this much work (period × endpoints) the schedule is nginx's smooth weighted round
/// robin exactly; beyond it an O(period · log n) earliest-deadline-first scan is used instead.
const EXACT_SWRR_WORK: u64 = 1 << 22;

/// The counter's value, and one more for the next pick or draw: a load and a store, not a
/// locked `fetch_add` (about 5 ns on the request path). Workers stepping at the same instant
/// may take the same value, which only repeats one item of a rotation (or of a spread or random
/// sequence); one worker's steps follow the sequence exactly.
#[inline]
pub(crate) fn step(counter: &AtomicU64) -> u64 {
    let n = counter.load(AtomicOrdering::Relaxed);
    counter.store(n.wrapping_add(1), AtomicOrdering::Relaxed);
    n
}

/// One period of a smooth weighted sequence over `items`, walked by an atomic cursor.
#[derive(Debug)]
pub struct WeightedSchedule {
    sequence: Box<[u32]>,
    cursor: AtomicU64,
}

#[derive(PartialEq, Eq)]
struct Slot {
    /// Next deadline is `(2·picked + 1) / (2·weight)`; compared as fractions without division.
    picked: u64,
    weight: u64,
    item: u32,
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the smallest deadline must compare greatest.
        let mine = (2 * self.picked + 1) * other.weight;
        let theirs = (2 * other.picked + 1) * self.weight;
        theirs.cmp(&mine).then_with(|| other.item.cmp(&self.item))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, run for one period: every step each entry gains its
/// weight, the richest is picked and pays the total. Spreads picks of a heavy entry evenly
/// (weights 5,1,1 give a a b a c a a).
fn nginx_smooth(entries: &[(u32, u64)], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; entries.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, (_, w)) in entries.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        sequence.push(entries[best].0);
    }
    sequence
}

/// Earliest deadline first with deadlines at the middle of each entry's slots
/// (`(picked + ½) / weight`), so heavy entries start early and light ones are not all pushed
/// to the end of the period.
fn midpoint_edf(entries: &[(u32, u64)], total: u64) -> Vec<u32> {
    let mut heap: BinaryHeap<Slot> = entries
        .iter()
        .map(|&(item, weight)| Slot {
            picked: 0,
            weight,
            item,
        })
        .collect();
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut slot = heap.pop().expect("non-empty heap");
        sequence.push(slot.item);
        slot.picked += 1;
        heap.push(slot);
    }
    sequence
}

impl WeightedSchedule {
    /// Builds the schedule for `(item, weight)` pairs. Weights of 0 are treated as 1: a present
    /// endpoint always gets some traffic, as in Envoy.
    pub fn new(items: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut entries: Vec<(u32, u64)> = items
            .into_iter()
            .map(|(item, w)| (item, u64::from(w.max(1))))
            .collect();
        if entries.is_empty() {
            return WeightedSchedule {
                sequence: Box::new([]),
                cursor: AtomicU64::new(0),
            };
        }
        let divisor = entries.iter().fold(0, |g, (_, w)| gcd(g, *w));
        for (_, w) in &mut entries {
            *w /= divisor;
        }
        let mut total: u64 = entries.iter().map(|(_, w)| *w).sum();
        let cap = MAX_PERIOD.max(entries.len() as u64);
        if total > cap {
            for (_, w) in &mut entries {
                *w = (*w * cap / total).max(1);
            }
            total = entries.iter().map(|(_, w)| *w).sum();
        }
        if entries.iter().all(|(_, w)| *w == 1) {
            // Equal weights: the sequence is the items in order.
            return WeightedSchedule {
                sequence: entries.iter().map(|(i, _)| *i).collect(),
                cursor: AtomicU64::new(0),
            };
        }
        let sequence = if total.saturating_mul(entries.len() as u64) <= EXACT_SWRR_WORK {
            nginx_smooth(&entries, total)
        } else {
            midpoint_edf(&entries, total)
        };
        WeightedSchedule {
            sequence: sequence.into_boxed_slice(),
            cursor: AtomicU64::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sequence.is_empty()
    }

    /// The length of one period.
    pub fn period(&self) -> usize {
        self.sequence.len()
    }

    /// The next item, or `None` for an empty schedule.
    #[inline]
    pub fn next(&self) -> Option<u32> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        Some(self.sequence[(step(&self.cursor) % len as u64) as usize])
    }

    /// The item at position `r` (mod the period): a weighted random pick for a random `r`.
    #[inline]
    pub fn at(&self, r: u64) -> Option<u32> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        Some(self.sequence[(r % len as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn take(s: &WeightedSchedule, n: usize) -> Vec<u32> {
        (0..n).map(|_| s.next().unwrap()).collect()
    }

    #[test]
    fn equal_weights_rotate_in_order() {
        let s = WeightedSchedule::new([(7, 1), (8, 1), (9, 1)]);
        assert_eq!(take(&s, 7), vec![7, 8, 9, 7, 8, 9, 7]);
    }

    #[test]
    fn weights_are_smooth() {
        // nginx's example: weights 5,1,1 give a a b a c a a — never five a's in a row.
        let s = WeightedSchedule::new([(0, 5), (1, 1), (2, 1)]);
        let seq = take(&s, 7);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5);
        let longest_run = seq.windows(4).filter(|w| w.iter().all(|&i| i == 0)).count();
        assert_eq!(longest_run, 0, "{seq:?}");
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn empty_schedule_picks_nothing() {
        let s = WeightedSchedule::new(std::iter::empty());
        assert!(s.is_empty());
        assert_eq!(s.next(), None);
    }

    #[test]
    fn huge_weights_are_scaled_not_dropped() {
        let s = WeightedSchedule::new([(0, 1_000_000), (1, 1)]);
        assert!(s.period() as u64 <= MAX_PERIOD + 2);
        let seq = take(&s, s.period());
        assert!(seq.contains(&1));
    }

    #[test]
    fn midpoint_edf_is_exact_over_a_period() {
        let entries = [(0u32, 5u64), (1, 1), (2, 1)];
        let seq = midpoint_edf(&entries, 7);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 1);
    }

    proptest! {
        #[test]
        fn one_period_honours_weights_exactly(weights in proptest::collection::vec(1u32..20, 1..30)) {
            let s = WeightedSchedule::new(weights.iter().enumerate().map(|(i, w)| (i as u32, *w)));
            let g = weights.iter().fold(0u64, |g, w| gcd(g, u64::from(*w)));
            let period: u64 = weights.iter().map(|w| u64::from(*w) / g).sum();
            prop_assert_eq!(s.period() as u64, period);
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..period {
                counts[s.next().unwrap() as usize] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                prop_assert_eq!(counts[i], u64::from(*w) / g);
            }
        }
    }
}
