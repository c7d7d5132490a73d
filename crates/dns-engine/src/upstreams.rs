//! Which upstream a question goes to (docs/dns.md, "Upstream choice"):
//! the one that answers fastest, by a smoothed round-trip time kept per
//! upstream, with a penalty per failure in a row, so a failing upstream
//! loses its place until it answers again.
//!
//! - An upstream not measured yet counts as [`UNKNOWN_RTT_MS`]: behind any
//!   upstream that answers faster, so the configured order holds until a
//!   measurement says otherwise, and the next is tried when the first is
//!   slow or failing.
//! - Each failure in a row (a timeout, an ICMP error, REFUSED) adds
//!   [`FAILURE_PENALTY_MS`]; an answer clears them.
//! - A failing upstream gets one question every [`PROBE_AFTER_MS`] (a
//!   client's first attempt) to find out whether it is back.
//! - What is known of an upstream not asked for [`FORGET_AFTER_MS`] is
//!   forgotten: the network may have changed since.
//!
//! The retries of one question go to the best upstream it has not tried
//! yet, and to the best of all once it has tried every one.

use alloc::vec::Vec;

use mirage_engine::Instant;
use serde::{Deserialize, Serialize};

/// What an upstream not measured yet counts as (milliseconds).
pub const UNKNOWN_RTT_MS: u32 = 375;
/// Added to an upstream's time per failure in a row (milliseconds).
pub const FAILURE_PENALTY_MS: u32 = 1500;
/// A failing upstream is asked again after this long (milliseconds).
pub const PROBE_AFTER_MS: u64 = 60_000;
/// What is known of an upstream not asked for this long is forgotten.
pub const FORGET_AFTER_MS: u64 = 900_000;
/// The smoothing of the round-trip time: each answer moves it by 1/8 of
/// the difference (RFC 6298's alpha).
const GAIN_SHIFT: u32 = 3;

/// One upstream as the engine knows it, as published in its status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The smoothed round-trip time of its UDP answers, in 1/8
    /// milliseconds (the engine's clock counts milliseconds); `None`
    /// before its first answer, or once forgotten.
    pub rtt_eighths_ms: Option<u32>,
    /// Failures since its last answer.
    pub failures_in_a_row: u32,
    /// Answers accepted from it, and failures (timeouts, ICMP errors,
    /// REFUSED, SERVFAIL) since the engine started.
    pub answers: u64,
    pub failures: u64,
    /// Whether the next question goes to it.
    pub preferred: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Known {
    /// The smoothed time, in 1/8 ms.
    rtt8: Option<u32>,
    failures_in_a_row: u32,
    last_asked: Option<Instant>,
    answers: u64,
    failures: u64,
}

/// The upstreams' times and failures.
#[derive(Clone, Debug, Default)]
pub struct Upstreams {
    known: Vec<Known>,
}

impl Upstreams {
    pub fn new(count: usize) -> Upstreams {
        Upstreams {
            known: alloc::vec![Known::default(); count],
        }
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Forget what has grown old (lazily, on each choice).
    fn forget_old(&mut self, now: Instant) {
        for k in &mut self.known {
            if k.last_asked.is_some_and(|t| now.since(t) >= FORGET_AFTER_MS) {
                k.rtt8 = None;
                k.failures_in_a_row = 0;
                k.last_asked = None;
            }
        }
    }

    /// The rank of upstream `i`: lower is better.
    fn score(&self, i: usize) -> u64 {
        let k = &self.known[i];
        let rtt8 = k.rtt8.unwrap_or(UNKNOWN_RTT_MS << GAIN_SHIFT);
        u64::from(rtt8) + (u64::from(k.failures_in_a_row) * u64::from(FAILURE_PENALTY_MS << GAIN_SHIFT))
    }

    /// The best upstream among those `allowed` says yes to (the first in
    /// the configured order on a tie).
    fn best(&self, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.known.len())
            .filter(|&i| allowed(i))
            .min_by_key(|&i| (self.score(i), i))
    }

    /// The upstream for a question's first attempt: a failing one whose
    /// probe is due, else the best.
    pub fn first(&mut self, now: Instant) -> u8 {
        self.forget_old(now);
        let best = self.best(|_| true).unwrap_or(0);
        let probe = (0..self.known.len()).find(|&i| {
            let k = &self.known[i];
            i != best
                && k.failures_in_a_row > 0
                && k.last_asked.is_some_and(|t| now.since(t) >= PROBE_AFTER_MS)
        });
        probe.unwrap_or(best) as u8
    }

    /// The upstream for a retry, given those the question has `tried`
    /// (bit `i` for upstream `i`): the best one not tried yet, else the
    /// best of all.
    pub fn next(&self, tried: u64) -> u8 {
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        self.best(untried).or_else(|| self.best(|_| true)).unwrap_or(0) as u8
    }

    /// Whether some upstream is not in `tried`.
    pub fn any_untried(&self, tried: u64) -> bool {
        (0..self.known.len()).any(|i| i >= 64 || tried & (1 << i) == 0)
    }

    /// A question went to upstream `i`.
    pub fn asked(&mut self, i: u8, now: Instant) {
        if let Some(k) = self.known.get_mut(usize::from(i)) {
            k.last_asked = Some(now);
        }
    }

    /// Upstream `i` answered; `rtt_ms` is the time a UDP answer took
    /// (`None` for a TCP one, whose time includes the connection).
    pub fn answered(&mut self, i: u8, rtt_ms: Option<u64>) {
        let Some(k) = self.known.get_mut(usize::from(i)) else {
            return;
        };
        k.answers += 1;
        k.failures_in_a_row = 0;
        if let Some(ms) = rtt_ms {
            let sample8 = u32::try_from(ms.min(60_000)).unwrap_or(60_000) << GAIN_SHIFT;
            k.rtt8 = Some(match k.rtt8 {
                None => sample8,
                // srtt += (sample - srtt) / 8, in eighths.
                Some(s) => {
                    let s = i64::from(s);
                    (s + ((i64::from(sample8) - s) >> GAIN_SHIFT)).clamp(0, i64::from(u32::MAX)) as u32
                }
            });
        }
    }

    /// Upstream `i` failed a question: no answer in time, an ICMP error,
    /// REFUSED. `penalize`: false for a SERVFAIL, which says the upstream
    /// is alive (the name may be what fails), so it keeps its place.
    pub fn failed(&mut self, i: u8, penalize: bool) {
        if let Some(k) = self.known.get_mut(usize::from(i)) {
            k.failures += 1;
            if penalize {
                k.failures_in_a_row = k.failures_in_a_row.saturating_add(1);
            }
        }
    }

    /// Each upstream's state, in the configured order.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let best = self.best(|_| true);
        self.known
            .iter()
            .enumerate()
            .map(|(i, k)| UpstreamStatus {
                rtt_eighths_ms: k.rtt8,
                failures_in_a_row: k.failures_in_a_row,
                answers: k.answers,
                failures: k.failures,
                preferred: best == Some(i),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant(1_000_000);

    #[test]
    fn the_configured_order_holds_until_measured_otherwise() {
        let mut u = Upstreams::new(3);
        assert_eq!(u.first(T0), 0);
        u.asked(0, T0);
        u.answered(0, Some(20));
        assert_eq!(u.first(T0), 0, "20 ms beats an upstream not measured");
        // Slower than the unknown: the next is tried, and kept if faster.
        for _ in 0..40 {
            u.answered(0, Some(900));
        }
        assert_eq!(u.first(T0), 1);
        u.asked(1, T0);
        u.answered(1, Some(5));
        assert_eq!(u.first(T0), 1);
        let s = u.status();
        assert!(s[1].preferred && !s[0].preferred && !s[2].preferred);
        assert_eq!(s[1].rtt_eighths_ms, Some(40));
    }

    #[test]
    fn the_time_is_smoothed() {
        let mut u = Upstreams::new(1);
        u.answered(0, Some(8));
        assert_eq!(u.status()[0].rtt_eighths_ms, Some(64));
        // One slow answer moves it an eighth of the way.
        u.answered(0, Some(88));
        assert_eq!(u.status()[0].rtt_eighths_ms, Some(64 + (704 - 64) / 8));
    }

    #[test]
    fn a_failing_upstream_loses_its_place_is_probed_and_comes_back() {
        let mut u = Upstreams::new(2);
        u.asked(0, T0);
        u.answered(0, Some(1));
        u.asked(0, T0);
        u.failed(0, true);
        assert_eq!(u.first(T0), 1, "one failure is worse than unknown");
        u.asked(1, T0);
        u.answered(1, Some(30));
        assert_eq!(u.first(T0.add_millis(1000)), 1);
        // A minute after it was last asked, one question probes it.
        let later = T0.add_millis(PROBE_AFTER_MS);
        assert_eq!(u.first(later), 0);
        u.asked(0, later);
        assert_eq!(u.first(later), 1, "one probe, not every question");
        u.answered(0, Some(1));
        assert_eq!(u.first(later), 0, "back, and faster");
        assert_eq!(u.status()[0].failures_in_a_row, 0);
        assert_eq!((u.status()[0].answers, u.status()[0].failures), (2, 1));
    }

    #[test]
    fn a_servfail_fails_over_but_keeps_the_upstreams_place() {
        let mut u = Upstreams::new(2);
        u.answered(0, Some(1));
        u.failed(0, false);
        assert_eq!(u.first(T0), 0);
        assert_eq!(u.status()[0].failures, 1);
    }

    #[test]
    fn retries_go_to_the_best_untried_then_the_best() {
        let mut u = Upstreams::new(3);
        u.answered(2, Some(1));
        u.answered(0, Some(10));
        assert_eq!(u.next(0b100), 0);
        assert_eq!(u.next(0b101), 1);
        assert!(!u.any_untried(0b111));
        assert_eq!(u.next(0b111), 2);
        let one = Upstreams::new(1);
        assert_eq!(one.next(0b1), 0, "a single upstream is asked again");
    }

    #[test]
    fn old_knowledge_is_forgotten() {
        let mut u = Upstreams::new(2);
        u.asked(0, T0);
        u.failed(0, true);
        u.asked(1, T0);
        u.answered(1, Some(3000));
        let later = T0.add_millis(FORGET_AFTER_MS);
        assert_eq!(u.first(later), 0, "both unknown again: the order holds");
        assert_eq!(u.status()[0].failures_in_a_row, 0);
        assert_eq!(u.status()[1].rtt_eighths_ms, None);
    }
}
