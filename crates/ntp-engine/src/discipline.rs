//! The clock discipline: from each new system offset, decide step or slew,
//! and keep a frequency estimate (RFC 5905 section 11.3 describes ntpd's
//! hybrid PLL/FLL; this loop is our own, simpler one, with the same
//! start-up and step rules).
//!
//! - **Step or slew.** The first estimate steps when it is over the step
//!   threshold (start-up: nothing depends on monotonic time yet), else
//!   slews. Later, an offset over the threshold is a spike and is ignored
//!   until over-threshold offsets have persisted for the stepout interval
//!   (RFC 5905 STEPT and WATCH); then it is stepped. After a gap of three
//!   maximum polls without an estimate (a suspended host, silent sources)
//!   the clock may have jumped: the first estimate is treated as at
//!   start-up. The actuator applies its own step policy on top.
//! - **Phase.** Every other update asks for the whole offset to be slewed
//!   out (`Slew` replaces any slew in progress; the actuator slews at
//!   [`SLEW_RATE_PPM`], as adjtime(3) does). The loop knows how much of its
//!   last slew is still pending, so what it measures beyond that is the
//!   clock's own wander.
//! - **Frequency.** That wander, summed over at least
//!   [`FREQ_WINDOW_MS`] and divided by the time, is a measurement of the
//!   frequency error, with an uncertainty of about two jitters over the
//!   span. The estimate moves towards it by the weight a scalar Kalman
//!   filter gives: its own variance against the measurement's. So the
//!   first measurement is taken nearly whole, later ones are averaged, and
//!   on a noisy path (tens of milliseconds of queueing) a single update
//!   moves the frequency little, where a fixed gain would turn the noise
//!   into ppm and the ppm into a wandering clock. The variance grows slowly
//!   between updates ([`FREQ_PROCESS_VAR_PER_S`]). A stored frequency starts with a variance of 1 ppm^2.
//!   It stays within +-[`MAX_FREQ_PPM`].
//! - **Poll.** The system poll climbs from the minimum to the maximum while
//!   offsets stay within a few jitters, and falls back when they do not
//!   (RFC 5905 section 11.3, the poll-adjust rule with its counter).
//!   Observing (nothing moves the clock, [`Discipline::observe`]), the same
//!   rule runs on how far the offset moved since the previous estimate, so
//!   that an observer of a well-kept clock is as polite as a client.
//!
//! Frequencies are in the kernel's unit, ppm scaled by 2^16 (`struct
//! timex.freq`), so the actuator passes them on unchanged.

use alloc::vec::Vec;

use mirage_engine::Instant;

use crate::source::Projection;
use crate::{Action, Config};

/// Largest frequency correction, either way (RFC 5905 section 11.3 and the
/// Linux kernel's own limit, MAXFREQ).
pub const MAX_FREQ_PPM: i64 = 500;
/// ppm scaled by 2^16: the kernel's frequency unit.
pub const SCALED_PPM: i64 = 1 << 16;
pub const MAX_FREQ_SCALED: i64 = MAX_FREQ_PPM * SCALED_PPM;
/// The slew rate the actuator is asked for (adjtime(3)'s fixed rate on
/// Linux): 500 us per second.
pub const SLEW_RATE_PPM: i64 = 500;
/// Shortest span over which a frequency error is measured: shorter spans
/// (the start-up burst's 2 s) would turn timestamp noise into ppm.
pub const FREQ_WINDOW_MS: u64 = 60_000;
/// How fast the frequency estimate's variance grows, (scaled ppm)^2 per
/// second: (1 ppm)^2 in four hours. More than a quiet oscillator wanders: it
/// stands for what the model misses too (temperature, a start-up slew
/// still running), so that an estimate is never trusted so much that a
/// real change takes hours to follow.
pub const FREQ_PROCESS_VAR_PER_S: u128 = (1 << 32) / 14_400;
/// The estimate counts as settled (it is saved) once its standard
/// deviation is under 2 ppm.
pub const SETTLED_FREQ_SD: i64 = 2 * SCALED_PPM;
/// RFC 5905 PGATE: an offset within this many jitters is "in the noise".
const POLL_GATE: i64 = 4;
/// RFC 5905 LIMIT: the poll-adjust counter's bound.
const POLL_LIMIT: i32 = 30;

fn sq(v: i64) -> u128 {
    let v = u128::from(v.unsigned_abs());
    v * v
}

fn sq_i128(v: i128) -> i128 {
    v.saturating_mul(v)
}

/// What is left at `now` of a slew of `delta` asked at `at`.
fn pending_slew_of(delta: i64, at: Instant, now: Instant) -> i64 {
    // 1 ppm is 1 ns per ms.
    let applied = i64::try_from(now.since(at))
        .unwrap_or(i64::MAX)
        .saturating_mul(SLEW_RATE_PPM);
    let left = delta.unsigned_abs().saturating_sub(applied.unsigned_abs());
    let left = i64::try_from(left).unwrap_or(i64::MAX);
    if delta < 0 { -left } else { left }
}

/// What the discipline did with an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Asked for a step of `delta_ns` (added to the clock).
    Stepped(i64),
    Slewed,
    /// Over the threshold, not yet for the stepout interval: ignored.
    Spike,
}

#[derive(Clone, Debug)]
pub struct Discipline {
    /// Frequency correction in scaled ppm.
    pub freq: i64,
    /// Variance of `freq`, (scaled ppm)^2.
    freq_var: u128,
    started: bool,
    last_update: Option<Instant>,
    /// The first of a run of over-threshold offsets.
    spike_since: Option<Instant>,
    /// The next over-threshold offset is stepped at once (an operator
    /// accepted the held step).
    step_now: bool,
    /// The last slew asked for and when.
    slew: Option<(i64, Instant)>,
    /// Corrections applied by steps and by slews since replaced (ns).
    applied_ns: i128,
    /// The frequency correction integrated up to `freq_since` (scaled
    /// ppm times ms: ns times 2^16).
    freq_integral: i128,
    freq_since: Instant,
    /// The last step asked for (taken back if the actuator refuses it).
    last_step: i64,
    /// Where the frequency window began, and the wander summed since.
    window: Option<(Instant, i64)>,
    last_saved: Option<Instant>,
    /// log2 s, between the configured bounds.
    pub poll: u8,
    poll_counter: i32,
    /// Observing: the previous estimate's offset (see [`Discipline::observe`]).
    observed: Option<i64>,
    step_threshold_ns: i64,
    stepout_ms: u64,
    drift_save_ms: u64,
    gap_ms: u64,
    min_poll: u8,
    max_poll: u8,
}

impl Discipline {
    /// A loop starting from `stored` frequency (scaled ppm), if any.
    pub fn new(config: &Config, stored: Option<i64>) -> Discipline {
        let stored = stored.filter(|f| f.abs() <= MAX_FREQ_SCALED);
        Discipline {
            freq: stored.unwrap_or(0),
            freq_var: if stored.is_some() {
                sq(SCALED_PPM)
            } else {
                sq(MAX_FREQ_SCALED)
            },
            started: false,
            last_update: None,
            spike_since: None,
            step_now: false,
            slew: None,
            applied_ns: 0,
            freq_integral: 0,
            freq_since: Instant(0),
            last_step: 0,
            window: None,
            last_saved: None,
            poll: config.min_poll,
            poll_counter: 0,
            observed: None,
            step_threshold_ns: i64::try_from(config.step_threshold_ns).unwrap_or(i64::MAX),
            stepout_ms: u64::from(config.stepout_secs) * 1000,
            drift_save_ms: u64::from(config.drift_save_secs) * 1000,
            gap_ms: config.gap_ms(),
            min_poll: config.min_poll,
            max_poll: config.max_poll,
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// The part of the last slew not yet applied at `now`, signed as asked.
    pub fn pending_slew(&self, now: Instant) -> i64 {
        match self.slew {
            Some((delta, at)) => pending_slew_of(delta, at, now),
            None => 0,
        }
    }

    /// The correction ledger at `now`, to project old samples onto the
    /// clock as it is (see [`Projection`]).
    pub fn projection(&self, now: Instant) -> Projection {
        let slewed = self.slew.map_or(0, |(delta, _)| delta - self.pending_slew(now));
        let by_freq = self.freq_integral + i128::from(self.freq) * i128::from(now.since(self.freq_since));
        let ledger = self.applied_ns + i128::from(slewed) + by_freq / i128::from(SCALED_PPM);
        Projection {
            now,
            ledger_ns: ledger.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            freq: self.freq,
            wander_ppm: self.wander_ppm(),
        }
    }

    /// How far off the frequency may still be, ppm: two standard
    /// deviations of the estimate, within [PHI, the maximum].
    pub fn wander_ppm(&self) -> i64 {
        let sd = i64::try_from(self.freq_var.isqrt()).unwrap_or(i64::MAX);
        (2 * sd / SCALED_PPM).clamp(crate::source::PHI_PPM, MAX_FREQ_PPM)
    }

    /// Book what the slew in progress applied, and drop the rest (a new
    /// slew or a step replaces it).
    fn retire_slew(&mut self, now: Instant) {
        if let Some((delta, at)) = self.slew.take() {
            self.applied_ns += i128::from(delta - pending_slew_of(delta, at, now));
        }
    }

    fn set_freq(&mut self, now: Instant, freq: i64) {
        self.freq_integral += i128::from(self.freq) * i128::from(now.since(self.freq_since));
        self.freq_since = now;
        self.freq = freq;
    }

    /// One new system estimate at `now`: `offset_ns` local minus
    /// reference, `jitter_ns` its noise (the system jitter, bounded by half
    /// the round trip). Clock intents go to `out`.
    pub fn update(&mut self, now: Instant, offset_ns: i64, jitter_ns: i64, out: &mut Vec<Action>) -> Outcome {
        let over = offset_ns.unsigned_abs() > self.step_threshold_ns.unsigned_abs();
        // No estimate for much longer than any poll: the host was suspended
        // or the sources were silent. The clock may have jumped meanwhile.
        let gap = self.last_update.is_none_or(|t| now.since(t) >= self.gap_ms);
        if over {
            let persisted = self.spike_since.is_some_and(|t| now.since(t) >= self.stepout_ms);
            if !self.started || gap || persisted || self.step_now {
                return self.step(now, offset_ns, out);
            }
            self.spike_since.get_or_insert(now);
            return Outcome::Spike;
        }
        self.spike_since = None;
        self.step_now = false;
        if !self.started || gap {
            // The first estimate (or the first after a gap): no wander is
            // measurable across it.
            self.started = true;
            self.window = Some((now, 0));
        } else {
            self.frequency(
                now,
                offset_ns.saturating_add(self.pending_slew(now)),
                jitter_ns,
                out,
            );
            self.adjust_poll(now, offset_ns, jitter_ns);
        }
        self.retire_slew(now);
        self.slew = Some((-offset_ns, now));
        self.last_update = Some(now);
        out.push(Action::Slew { delta_ns: -offset_ns });
        Outcome::Slewed
    }

    fn step(&mut self, now: Instant, offset_ns: i64, out: &mut Vec<Action>) -> Outcome {
        self.started = true;
        self.spike_since = None;
        self.step_now = false;
        self.retire_slew(now);
        self.applied_ns += i128::from(-offset_ns);
        self.last_step = -offset_ns;
        self.window = None;
        self.last_update = Some(now);
        out.push(Action::Step { delta_ns: -offset_ns });
        Outcome::Stepped(-offset_ns)
    }

    /// The next over-threshold offset is stepped without waiting for the
    /// stepout (an operator accepted the held step); one below the
    /// threshold is slewed as ever and ends it.
    pub fn step_at_next_estimate(&mut self) {
        self.step_now = true;
    }

    /// The actuator refused the last step: the clock did not move.
    pub fn step_refused(&mut self) {
        self.applied_ns -= i128::from(self.last_step);
        self.last_step = 0;
    }

    /// The clock was stepped (by us, once the actuator confirms): phase
    /// history is void, the frequency stands.
    pub fn stepped(&mut self, now: Instant) {
        self.retire_slew(now);
        self.window = None;
        self.spike_since = None;
        self.last_update = Some(now);
    }

    /// Add `wander_ns` (offset grown since the last update beyond the slew
    /// still pending) to the window; once the window is long enough, move
    /// the frequency against the rate it shows.
    fn frequency(&mut self, now: Instant, wander_ns: i64, jitter_ns: i64, out: &mut Vec<Action>) {
        let (since, sum) = self.window.unwrap_or((now, 0));
        let sum = sum.saturating_add(wander_ns);
        let span_ms = now.since(since);
        if span_ms < FREQ_WINDOW_MS {
            self.window = Some((since, sum));
            return;
        }
        self.window = Some((now, 0));
        // ns per ms is ppm; scaled by 2^16. Positive: we run fast.
        let rate = i128::from(sum) * i128::from(SCALED_PPM) / i128::from(span_ms);
        let noise =
            i128::from(jitter_ns.max(1)).saturating_mul(2 * i128::from(SCALED_PPM)) / i128::from(span_ms);
        let measured_var = sq_i128(noise).clamp(1, 1 << 100);
        let prior = self
            .freq_var
            .saturating_add(FREQ_PROCESS_VAR_PER_S.saturating_mul(u128::from(span_ms / 1000)));
        // Kalman gain prior / (prior + measured), in i128 with both sides
        // bounded by (2 * 500 ppm scaled)^2 = 2^51 or so.
        let prior = prior.min(sq(2 * MAX_FREQ_SCALED)) as i128;
        let moved = i128::from(self.freq) - rate.saturating_mul(prior) / (prior + measured_var);
        self.freq_var = (prior.saturating_mul(measured_var) / (prior + measured_var)) as u128;
        let freq = moved.clamp(-i128::from(MAX_FREQ_SCALED), i128::from(MAX_FREQ_SCALED)) as i64;
        self.set_freq(now, freq);
        out.push(Action::SetFrequency {
            scaled_ppm: self.freq,
        });
        let save_due = self.last_saved.is_none_or(|t| now.since(t) >= self.drift_save_ms);
        if self.freq_var <= sq(SETTLED_FREQ_SD) && save_due {
            self.last_saved = Some(now);
            out.push(Action::SaveDrift {
                scaled_ppm: self.freq,
            });
        }
    }

    /// One new system estimate while observing: nothing is corrected, so
    /// the offset itself never comes back into the noise on a clock that
    /// is off. What it moved since the previous estimate is what a loop
    /// would have had to slew out: the poll climbs while that stays in the
    /// noise (a clock someone else keeps, or one with no frequency error)
    /// and stays short while the clock runs away.
    pub fn observe(&mut self, now: Instant, offset_ns: i64, jitter_ns: i64) {
        if let Some(previous) = self.observed {
            self.adjust_poll(now, offset_ns.saturating_sub(previous), jitter_ns);
        }
        self.observed = Some(offset_ns);
        // Only the poll rule reads it while observing (update is never called).
        self.last_update = Some(now);
    }

    /// RFC 5905 section 11.3 poll-adjust: in the noise, count up by the
    /// poll and lengthen it past the limit; out of it, count down twice as
    /// fast and shorten it. Updates much closer together than the poll (a
    /// burst) do not count.
    fn adjust_poll(&mut self, now: Instant, offset_ns: i64, jitter_ns: i64) {
        let half_poll_ms = (1000u64 << self.poll) / 2;
        if self.last_update.is_some_and(|t| now.since(t) < half_poll_ms) {
            return;
        }
        let poll = i32::from(self.poll);
        if offset_ns.unsigned_abs() < jitter_ns.saturating_mul(POLL_GATE).unsigned_abs() {
            self.poll_counter += poll;
            if self.poll_counter > POLL_LIMIT {
                self.poll_counter = 0;
                self.poll = (self.poll + 1).min(self.max_poll);
            }
        } else {
            self.poll_counter -= 2 * poll;
            if self.poll_counter < -POLL_LIMIT {
                self.poll_counter = 0;
                self.poll = self.poll.saturating_sub(1).max(self.min_poll);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const MS: i64 = 1_000_000;

    fn clock_intents(out: &[Action]) -> Vec<Action> {
        out.to_vec()
    }

    #[test]
    fn the_first_estimate_steps_over_the_threshold_and_slews_under_it() {
        let c = Config::default();
        let mut d = Discipline::new(&c, None);
        let mut out = vec![];
        assert_eq!(
            d.update(Instant(0), 200 * MS, MS, &mut out),
            Outcome::Stepped(-200 * MS)
        );
        assert_eq!(clock_intents(&out), vec![Action::Step { delta_ns: -200 * MS }]);
        let mut d = Discipline::new(&c, None);
        out.clear();
        assert_eq!(d.update(Instant(0), 100 * MS, MS, &mut out), Outcome::Slewed);
        assert_eq!(out, vec![Action::Slew { delta_ns: -100 * MS }]);
    }

    #[test]
    fn later_a_large_offset_is_a_spike_until_the_stepout() {
        let c = Config::default();
        let mut d = Discipline::new(&c, None);
        let mut out = vec![];
        d.update(Instant(0), 0, MS, &mut out);
        let mut t = Instant::from_secs(64);
        out.clear();
        while t < Instant::from_secs(64 + u64::from(c.stepout_secs)) {
            assert_eq!(d.update(t, 500 * MS, MS, &mut out), Outcome::Spike);
            t = t.add_secs(64);
        }
        assert!(out.is_empty(), "nothing done while it is a spike");
        assert_eq!(d.update(t, 500 * MS, MS, &mut out), Outcome::Stepped(-500 * MS));
        // A good estimate in between restarts the watch.
        let mut d = Discipline::new(&c, None);
        d.update(Instant(0), 0, MS, &mut out);
        assert_eq!(
            d.update(Instant::from_secs(64), 500 * MS, MS, &mut out),
            Outcome::Spike
        );
        assert_eq!(
            d.update(Instant::from_secs(128), MS, MS, &mut out),
            Outcome::Slewed
        );
        assert_eq!(
            d.update(Instant::from_secs(1000), 500 * MS, MS, &mut out),
            Outcome::Spike
        );
        // At the longest poll, one spike is still only a spike.
        let mut d = Discipline::new(&c, None);
        d.update(Instant(0), 0, MS, &mut out);
        assert_eq!(
            d.update(Instant::from_secs(1024), 500 * MS, MS, &mut out),
            Outcome::Spike
        );
        // After a gap (suspend) a large offset steps at once.
        let mut d = Discipline::new(&c, None);
        d.update(Instant(0), 0, MS, &mut out);
        let after_gap = Instant::from_secs(3 * 1024);
        assert_eq!(
            d.update(after_gap, 3_000 * MS, MS, &mut out),
            Outcome::Stepped(-3_000 * MS)
        );
    }

    #[test]
    fn the_pending_slew_shrinks_at_the_slew_rate() {
        let c = Config::default();
        let mut d = Discipline::new(&c, None);
        let mut out = vec![];
        d.update(Instant(0), 100 * MS, MS, &mut out);
        assert_eq!(d.pending_slew(Instant(0)), -100 * MS);
        // 500 us per second: 50 ms after 100 s, nothing after 200 s.
        assert_eq!(d.pending_slew(Instant::from_secs(100)), -50 * MS);
        assert_eq!(d.pending_slew(Instant::from_secs(300)), 0);
    }

    /// A clock that runs `ppm` fast, measured every 64 s without noise and
    /// corrected by the loop's own intents: the frequency converges to
    /// -ppm and the offset to zero.
    fn converge(ppm: i64, stored: Option<i64>) -> (Discipline, i64, usize) {
        let c = Config::default();
        let mut d = Discipline::new(&c, stored);
        let mut offset = 0i64;
        let mut freq_sets = 0;
        for k in 0..60u64 {
            let now = Instant::from_secs(64 * k);
            let mut out = vec![];
            d.update(now, offset, 10_000, &mut out);
            for a in out {
                match a {
                    Action::Slew { delta_ns } => offset += delta_ns,
                    Action::SetFrequency { .. } => freq_sets += 1,
                    _ => {}
                }
            }
            // 64 s at (ppm + correction): ns = ppm * 64e3 ms.
            let rate = ppm * SCALED_PPM + d.freq;
            offset += (i128::from(rate) * 64_000 / i128::from(SCALED_PPM)) as i64;
        }
        (d, offset, freq_sets)
    }

    #[test]
    fn the_frequency_converges_and_is_clamped() {
        for ppm in [-200, -37, 0, 150] {
            let (d, offset, sets) = converge(ppm, None);
            assert!(
                (d.freq + ppm * SCALED_PPM).abs() < SCALED_PPM / 100,
                "{ppm}: {}",
                d.freq
            );
            assert!(offset.abs() < 50_000, "{ppm}: {offset}");
            assert!(sets > 10);
        }
        let (d, _, _) = converge(900, None);
        assert_eq!(d.freq, -MAX_FREQ_SCALED);
        // A stored frequency already right stays right.
        let (d, offset, _) = converge(100, Some(-100 * SCALED_PPM));
        assert_eq!(d.freq, -100 * SCALED_PPM);
        assert!(offset.abs() < 1_000);
        // An absurd stored frequency is not used.
        assert_eq!(Discipline::new(&Config::default(), Some(i64::MAX)).freq, 0);
    }

    #[test]
    fn the_drift_is_saved_once_settled_then_hourly() {
        let c = Config::default();
        let mut d = Discipline::new(&c, None);
        let mut saves = vec![];
        for k in 0..200u64 {
            let now = Instant::from_secs(64 * k);
            let mut out = vec![];
            d.update(now, 0, 10_000, &mut out);
            if out.iter().any(|a| matches!(a, Action::SaveDrift { .. })) {
                saves.push(now.0 / 1000);
            }
        }
        assert!(saves.len() >= 3, "{saves:?}");
        assert!(
            saves
                .windows(2)
                .all(|w| w[1] - w[0] >= u64::from(c.drift_save_secs)),
            "{saves:?}"
        );
    }

    #[test]
    fn the_poll_climbs_in_the_noise_and_falls_out_of_it() {
        let c = Config::default();
        let mut d = Discipline::new(&c, None);
        let mut out = vec![];
        let mut t = Instant(0);
        for _ in 0..100 {
            d.update(t, 10_000, 100_000, &mut out);
            t = t.add_secs(1 << d.poll);
        }
        assert_eq!(d.poll, c.max_poll);
        for _ in 0..100 {
            d.update(t, 50 * MS, 100_000, &mut out);
            t = t.add_secs(1 << d.poll);
        }
        assert_eq!(d.poll, c.min_poll);
    }

    #[test]
    fn observing_the_poll_follows_how_far_the_offset_moves_not_the_offset() {
        let c = Config::default();
        let mut d = Discipline::new(&c, None);
        let mut t = Instant(0);
        // 2 s off but steady: a loop would have nothing left to slew.
        for k in 0..100 {
            d.observe(t, 2_000 * MS + (k % 3) * 10_000, 100_000);
            t = t.add_secs(1 << d.poll);
        }
        assert_eq!(d.poll, c.max_poll);
        // Running away by 50 ms a poll: back to the minimum.
        for k in 0..100 {
            d.observe(t, 2_000 * MS + k * 50 * MS, 100_000);
            t = t.add_secs(1 << d.poll);
        }
        assert_eq!(d.poll, c.min_poll);
        assert!(!d.started(), "observing never starts the loop");
    }
}
