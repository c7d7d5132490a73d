//! The actuator's clock policy: fixed at start from the supervisor's
//! settings (never from the engine), checked against every clock intent
//! before anything touches the kernel. A compromised engine can ask for
//! anything; what passes is bounded here.
//!
//! Defaults (ntpd-rs's step limits, field notes items 9, 10, 12):
//! - before the first clock change of this run (start-up): any step
//!   forward, at most a day back (a clock from the factory or from 1970
//!   is fixed at once; a clock ahead by days needs an operator);
//! - afterwards: steps of at most 1000 s either way;
//! - a step budget of 3 that refills by one an hour, so a source that asks
//!   for the largest allowed step every poll moves the clock three times,
//!   then once an hour (field notes item 10's "9999 s every 16 s");
//! - slews of at most 0.5 s (the engine slews below its 128 ms step
//!   threshold; 0.5 s at the kernel's 500 ppm takes 17 minutes);
//! - frequency and stored drift within +-500 ppm;
//! - the kernel told "synchronised" only once a clock change was applied
//!   in this run, error bounds within 0..16 s (the kernel's own limit),
//!   and a leap armed only on the last day of a month (UTC, by the
//!   actuator's own clock: field notes item 8).
//!
//! Above a limit the intent is refused and counted; the engine holds
//! (`held` in status) and keeps measuring. The service never exits on a
//! refusal (field notes item 10).
//!
//! An operator accepts a held step with `mirage-ntp accept-step`
//! ([`StepAcceptance`]): one step of at most the size it names, within
//! the time it is valid for, passes the size limits and the budget (it
//! still spends a step of the budget). It is checked here like any other
//! setting: a size of zero or an unbounded validity is refused.

use ntp_engine::{KernelStatus, Leap};
use serde::{Deserialize, Serialize};

/// Largest frequency correction, scaled ppm (500 ppm, the kernel's own
/// bound).
pub const MAX_FREQ_SCALED: i64 = 500 << 16;
/// Largest error bound the kernel keeps (it marks the clock unsynchronised
/// at 16 s).
pub const MAX_ERROR_NS: i64 = 16_000_000_000;
const NS: i64 = 1_000_000_000;
/// Longest an operator's step acceptance stays valid (`--valid-s`).
pub const MAX_ACCEPTANCE_VALID_MS: u64 = 3_600_000;

/// The limits, as the config file's `[policy]` table gives them (a key
/// left out keeps its default) and the supervisor hands them to the
/// actuator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClockPolicy {
    /// Largest forward step at start-up, seconds; `None`: any.
    pub startup_forward_max_s: Option<u64>,
    /// Largest backward step at start-up, seconds.
    pub startup_back_max_s: u64,
    /// Largest step either way after start-up, seconds.
    pub step_max_s: u64,
    /// Largest slew either way, milliseconds.
    pub slew_max_ms: u64,
    /// Steps allowed at once; the budget refills by one every
    /// `step_refill_s`.
    pub step_burst: u32,
    pub step_refill_s: u64,
}

impl Default for ClockPolicy {
    fn default() -> ClockPolicy {
        ClockPolicy {
            startup_forward_max_s: None,
            startup_back_max_s: 86_400,
            step_max_s: 1000,
            slew_max_ms: 500,
            step_burst: 3,
            step_refill_s: 3600,
        }
    }
}

/// A clock intent as the actuator receives it (the engine's clock
/// actions, typed).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockIntent {
    /// Add `delta_ns` gradually (the kernel's 500 ppm single-shot slew).
    Slew { delta_ns: i64 },
    /// Set the frequency correction, ppm scaled by 2^16.
    SetFrequency { scaled_ppm: i64 },
    /// Add `delta_ns` at once.
    Step { delta_ns: i64 },
    /// The kernel's clock status, error bounds and leap.
    SetStatus(KernelStatus),
    /// Store the frequency for the next start.
    SaveDrift { scaled_ppm: i64 },
}

impl ClockIntent {
    /// The engine's action as an intent (`None`: not a clock action).
    pub fn of(action: &ntp_engine::Action) -> Option<ClockIntent> {
        use ntp_engine::Action as A;
        Some(match *action {
            A::Slew { delta_ns } => ClockIntent::Slew { delta_ns },
            A::SetFrequency { scaled_ppm } => ClockIntent::SetFrequency { scaled_ppm },
            A::Step { delta_ns } => ClockIntent::Step { delta_ns },
            A::SetStatus(s) => ClockIntent::SetStatus(s),
            A::SaveDrift { scaled_ppm } => ClockIntent::SaveDrift { scaled_ppm },
            A::Send { .. } | A::PublishStatus(_) | A::Resolve { .. } => return None,
        })
    }

    /// The engine's name for this kind of intent (its answer's key).
    pub fn kind(&self) -> ntp_engine::IntentKind {
        use ntp_engine::IntentKind as K;
        match self {
            ClockIntent::Slew { .. } => K::Slew,
            ClockIntent::SetFrequency { .. } => K::SetFrequency,
            ClockIntent::Step { .. } => K::Step,
            ClockIntent::SetStatus(_) => K::SetStatus,
            ClockIntent::SaveDrift { .. } => K::SaveDrift,
        }
    }
}

/// Why an intent was refused: one reason per check.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClockRefusal {
    /// A slew larger than `slew_max_ms`.
    SlewTooLarge,
    /// A step forward larger than the start-up limit.
    StartupStepForwardTooLarge,
    /// A step back larger than the start-up limit.
    StartupStepBackTooLarge,
    /// A step after start-up larger than `step_max_s`.
    StepTooLarge,
    /// The step budget is spent (steps in a loop).
    StepBudgetSpent,
    /// A frequency beyond +-500 ppm.
    FrequencyOutOfRange,
    /// A drift to store beyond +-500 ppm.
    DriftOutOfRange,
    /// A drift to store less than [`MIN_DRIFT_SAVE_MS`] after the last
    /// one: each is a synced file write, which an engine must not be able
    /// to repeat at will.
    DriftSavedTooSoon,
    /// Error bounds negative or beyond 16 s.
    ErrorOutOfRange,
    /// "Synchronised" before any clock change was applied in this run.
    SynchronizedBeforeApplied,
    /// A leap armed on a day that is not the last of its month.
    LeapNotLastDayOfMonth,
    /// The "unknown" leap indicator is no leap to arm.
    LeapUnknown,
    /// The kernel does not let this process steer the clock (no
    /// `CAP_SYS_TIME` in the initial user namespace).
    NotSteerable,
    /// An operator's step acceptance of size zero or valid for zero or
    /// more than [`MAX_ACCEPTANCE_VALID_MS`].
    AcceptanceOutOfRange,
}

impl ClockRefusal {
    /// Every reason, for metrics.
    pub const ALL: [ClockRefusal; 14] = [
        ClockRefusal::SlewTooLarge,
        ClockRefusal::StartupStepForwardTooLarge,
        ClockRefusal::StartupStepBackTooLarge,
        ClockRefusal::StepTooLarge,
        ClockRefusal::StepBudgetSpent,
        ClockRefusal::FrequencyOutOfRange,
        ClockRefusal::DriftOutOfRange,
        ClockRefusal::DriftSavedTooSoon,
        ClockRefusal::ErrorOutOfRange,
        ClockRefusal::SynchronizedBeforeApplied,
        ClockRefusal::LeapNotLastDayOfMonth,
        ClockRefusal::LeapUnknown,
        ClockRefusal::NotSteerable,
        ClockRefusal::AcceptanceOutOfRange,
    ];

    /// A stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClockRefusal::SlewTooLarge => "slew-too-large",
            ClockRefusal::StartupStepForwardTooLarge => "startup-step-forward-too-large",
            ClockRefusal::StartupStepBackTooLarge => "startup-step-back-too-large",
            ClockRefusal::StepTooLarge => "step-too-large",
            ClockRefusal::StepBudgetSpent => "step-budget-spent",
            ClockRefusal::FrequencyOutOfRange => "frequency-out-of-range",
            ClockRefusal::DriftOutOfRange => "drift-out-of-range",
            ClockRefusal::DriftSavedTooSoon => "drift-saved-too-soon",
            ClockRefusal::ErrorOutOfRange => "error-out-of-range",
            ClockRefusal::SynchronizedBeforeApplied => "synchronized-before-applied",
            ClockRefusal::LeapNotLastDayOfMonth => "leap-not-last-day-of-month",
            ClockRefusal::LeapUnknown => "leap-unknown",
            ClockRefusal::NotSteerable => "not-steerable",
            ClockRefusal::AcceptanceOutOfRange => "acceptance-out-of-range",
        }
    }
}

/// An operator's acceptance of a held step (`mirage-ntp accept-step`), as
/// the supervisor relays it: one step of at most `max_ns`, forward only,
/// back only or either way (`forward`: `Some(true)`, `Some(false)`,
/// `None`), within `valid_ms` of its arrival at the actuator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepAcceptance {
    pub max_ns: u64,
    pub valid_ms: u64,
    pub forward: Option<bool>,
}

/// The policy and what it has let through so far.
#[derive(Clone, Debug)]
pub struct PolicyState {
    policy: ClockPolicy,
    /// A slew or step has been applied in this run: start-up is over.
    changed: bool,
    /// Steps left, and when the budget last refilled (boot clock, ms).
    steps_left: u32,
    refilled_at_ms: u64,
    /// An operator's acceptance not used yet, and until when (boot clock,
    /// ms).
    accepted: Option<(StepAcceptance, u64)>,
    /// When the drift file was last written (boot clock, ms).
    drift_saved_at_ms: Option<u64>,
}

/// The shortest time between two drift saves the actuator carries out
/// (the engine saves once an hour, `drift_save_secs`).
pub const MIN_DRIFT_SAVE_MS: u64 = 60_000;

impl PolicyState {
    pub fn new(policy: ClockPolicy, now_boot_ms: u64) -> PolicyState {
        PolicyState {
            policy,
            changed: false,
            steps_left: policy.step_burst,
            refilled_at_ms: now_boot_ms,
            accepted: None,
            drift_saved_at_ms: None,
        }
    }

    /// Record an operator's acceptance (replacing an earlier one), valid
    /// from `now_boot_ms`.
    pub fn accept_step(&mut self, a: StepAcceptance, now_boot_ms: u64) -> Result<(), ClockRefusal> {
        if a.max_ns == 0 || a.valid_ms == 0 || a.valid_ms > MAX_ACCEPTANCE_VALID_MS {
            return Err(ClockRefusal::AcceptanceOutOfRange);
        }
        self.accepted = Some((a, now_boot_ms.saturating_add(a.valid_ms)));
        Ok(())
    }

    /// The acceptance still waiting: its largest step and its milliseconds
    /// left.
    pub fn acceptance(&self, now_boot_ms: u64) -> Option<(u64, u64)> {
        self.accepted
            .filter(|&(_, until)| until > now_boot_ms)
            .map(|(a, until)| (a.max_ns, until - now_boot_ms))
    }

    pub fn policy(&self) -> &ClockPolicy {
        &self.policy
    }

    /// Still at start-up: no clock change applied yet.
    pub fn starting(&self) -> bool {
        !self.changed
    }

    /// Steps the budget allows now.
    pub fn steps_left(&mut self, now_boot_ms: u64) -> u32 {
        self.refill(now_boot_ms);
        self.steps_left
    }

    fn refill(&mut self, now_ms: u64) {
        let every_ms = self.policy.step_refill_s.max(1).saturating_mul(1000);
        let earned = now_ms.saturating_sub(self.refilled_at_ms) / every_ms;
        if earned > 0 {
            let left = u64::from(self.steps_left).saturating_add(earned);
            self.steps_left = u32::try_from(left.min(u64::from(self.policy.step_burst))).unwrap_or(u32::MAX);
            self.refilled_at_ms = self
                .refilled_at_ms
                .saturating_add(earned.saturating_mul(every_ms));
        }
        if self.steps_left >= self.policy.step_burst {
            self.refilled_at_ms = now_ms;
        }
    }

    /// Whether `intent` may be applied now (`now_boot_ms`: the boot clock;
    /// `unix_secs`: the realtime clock, for the leap's day). Changes
    /// nothing: [`PolicyState::applied`] records what was done.
    pub fn check(
        &mut self,
        intent: &ClockIntent,
        now_boot_ms: u64,
        unix_secs: i64,
    ) -> Result<(), ClockRefusal> {
        let p = self.policy;
        match *intent {
            ClockIntent::Slew { delta_ns } => {
                if delta_ns.unsigned_abs() > p.slew_max_ms.saturating_mul(1_000_000) {
                    return Err(ClockRefusal::SlewTooLarge);
                }
            }
            ClockIntent::Step { delta_ns } => {
                self.step_verdict(delta_ns, now_boot_ms)?;
            }
            ClockIntent::SetFrequency { scaled_ppm } => {
                if scaled_ppm.unsigned_abs() > MAX_FREQ_SCALED.unsigned_abs() {
                    return Err(ClockRefusal::FrequencyOutOfRange);
                }
            }
            ClockIntent::SaveDrift { scaled_ppm } => {
                if scaled_ppm.unsigned_abs() > MAX_FREQ_SCALED.unsigned_abs() {
                    return Err(ClockRefusal::DriftOutOfRange);
                }
                if self
                    .drift_saved_at_ms
                    .is_some_and(|t| now_boot_ms.saturating_sub(t) < MIN_DRIFT_SAVE_MS)
                {
                    return Err(ClockRefusal::DriftSavedTooSoon);
                }
            }
            ClockIntent::SetStatus(s) => check_status(&s, self.changed, unix_secs)?,
        }
        Ok(())
    }

    /// Whether a step of `delta_ns` passes: `Ok(false)` within the
    /// limits, `Ok(true)` only by the operator's acceptance.
    fn step_verdict(&mut self, delta_ns: i64, now_boot_ms: u64) -> Result<bool, ClockRefusal> {
        let p = self.policy;
        let size = delta_ns.unsigned_abs();
        let within = (|| {
            if self.starting() {
                if delta_ns < 0 && size > p.startup_back_max_s.saturating_mul(NS as u64) {
                    return Err(ClockRefusal::StartupStepBackTooLarge);
                }
                if delta_ns > 0
                    && p.startup_forward_max_s
                        .is_some_and(|max| size > max.saturating_mul(NS as u64))
                {
                    return Err(ClockRefusal::StartupStepForwardTooLarge);
                }
            } else if size > p.step_max_s.saturating_mul(NS as u64) {
                return Err(ClockRefusal::StepTooLarge);
            }
            Ok(())
        })();
        let within = within.and_then(|()| match self.steps_left(now_boot_ms) {
            0 => Err(ClockRefusal::StepBudgetSpent),
            _ => Ok(()),
        });
        match within {
            Ok(()) => Ok(false),
            Err(r) => match self.accepted {
                Some((a, until))
                    if until > now_boot_ms
                        && size <= a.max_ns
                        && a.forward.is_none_or(|forward| forward == (delta_ns > 0)) =>
                {
                    Ok(true)
                }
                _ => Err(r),
            },
        }
    }

    /// `intent` was applied (or, observing, would have been).
    pub fn applied(&mut self, intent: &ClockIntent, now_boot_ms: u64) {
        match intent {
            ClockIntent::Slew { .. } => self.changed = true,
            ClockIntent::Step { delta_ns } => {
                // The acceptance is spent by the one step it let through.
                if self.step_verdict(*delta_ns, now_boot_ms) == Ok(true) {
                    self.accepted = None;
                }
                self.refill(now_boot_ms);
                self.steps_left = self.steps_left.saturating_sub(1);
                self.changed = true;
            }
            ClockIntent::SaveDrift { .. } => self.drift_saved_at_ms = Some(now_boot_ms),
            _ => {}
        }
    }
}

fn check_status(s: &KernelStatus, changed: bool, unix_secs: i64) -> Result<(), ClockRefusal> {
    if !(0..=MAX_ERROR_NS).contains(&s.max_error_ns) || !(0..=MAX_ERROR_NS).contains(&s.est_error_ns) {
        return Err(ClockRefusal::ErrorOutOfRange);
    }
    if s.synchronized && !changed {
        return Err(ClockRefusal::SynchronizedBeforeApplied);
    }
    match s.leap {
        Leap::None => Ok(()),
        Leap::Unknown => Err(ClockRefusal::LeapUnknown),
        Leap::Insert | Leap::Delete if is_last_day_of_month(unix_secs) => Ok(()),
        Leap::Insert | Leap::Delete => Err(ClockRefusal::LeapNotLastDayOfMonth),
    }
}

/// Whether the UTC day of `unix_secs` is the last of its month (the same
/// date code the engine arms leaps with).
pub fn is_last_day_of_month(unix_secs: i64) -> bool {
    let tomorrow = unix_secs.div_euclid(86_400).saturating_add(1);
    ntp_engine::civil_from_days(tomorrow).2 == 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_drift_file_is_written_at_most_once_a_minute() {
        let mut p = PolicyState::new(ClockPolicy::default(), 0);
        let save = ClockIntent::SaveDrift { scaled_ppm: 1 << 16 };
        assert_eq!(p.check(&save, 1000, 0), Ok(()));
        p.applied(&save, 1000);
        for t in [1000, 30_000, 1000 + MIN_DRIFT_SAVE_MS - 1] {
            assert_eq!(p.check(&save, t, 0), Err(ClockRefusal::DriftSavedTooSoon));
        }
        assert_eq!(p.check(&save, 1000 + MIN_DRIFT_SAVE_MS, 0), Ok(()));
        // A refused one does not move the minute on.
        let far = ClockIntent::SaveDrift { scaled_ppm: i64::MAX };
        assert_eq!(p.check(&far, 90_000, 0), Err(ClockRefusal::DriftOutOfRange));
    }

    use super::*;

    const DAY: i64 = 86_400;
    /// 2027-06-15 and 2027-06-30 (UTC midnight), by days since 1970.
    const JUNE_15: i64 = 20_984 * DAY;
    const JUNE_30: i64 = 20_999 * DAY;

    fn status(synchronized: bool, leap: Leap) -> ClockIntent {
        ClockIntent::SetStatus(KernelStatus {
            synchronized,
            max_error_ns: 1_000_000,
            est_error_ns: 1000,
            leap,
        })
    }

    #[test]
    fn the_dates_are_what_the_tests_say() {
        assert_eq!(ntp_engine::civil_from_days(JUNE_15 / DAY), (2027, 6, 15));
        assert_eq!(ntp_engine::civil_from_days(JUNE_30 / DAY), (2027, 6, 30));
        assert!(is_last_day_of_month(JUNE_30 + DAY - 1));
        assert!(!is_last_day_of_month(JUNE_30 + DAY));
        assert!(!is_last_day_of_month(JUNE_15));
    }

    #[test]
    fn start_up_allows_any_step_forward_and_a_day_back() {
        let mut p = PolicyState::new(ClockPolicy::default(), 0);
        let step = |s: i64| ClockIntent::Step { delta_ns: s * NS };
        assert_eq!(p.check(&step(56 * 365 * DAY), 0, 0), Ok(()));
        assert_eq!(p.check(&step(-DAY), 0, 0), Ok(()));
        assert_eq!(
            p.check(&step(-DAY - 1), 0, 0),
            Err(ClockRefusal::StartupStepBackTooLarge)
        );
        let capped = ClockPolicy {
            startup_forward_max_s: Some(60),
            ..ClockPolicy::default()
        };
        let mut q = PolicyState::new(capped, 0);
        assert_eq!(
            q.check(&step(61), 0, 0),
            Err(ClockRefusal::StartupStepForwardTooLarge)
        );
        // After the first change, 1000 s either way.
        p.applied(&step(5), 0);
        assert!(!p.starting());
        assert_eq!(p.check(&step(1000), 0, 0), Ok(()));
        assert_eq!(p.check(&step(-1000), 0, 0), Ok(()));
        assert_eq!(p.check(&step(1001), 0, 0), Err(ClockRefusal::StepTooLarge));
        assert_eq!(p.check(&step(-DAY), 0, 0), Err(ClockRefusal::StepTooLarge));
        // A slew ends start-up too.
        let mut r = PolicyState::new(ClockPolicy::default(), 0);
        r.applied(&ClockIntent::Slew { delta_ns: 1 }, 0);
        assert_eq!(r.check(&step(2000), 0, 0), Err(ClockRefusal::StepTooLarge));
    }

    #[test]
    fn steps_in_a_loop_spend_the_budget_which_refills_by_one_an_hour() {
        let mut p = PolicyState::new(ClockPolicy::default(), 0);
        let step = ClockIntent::Step { delta_ns: 900 * NS };
        let mut t = 0;
        for _ in 0..3 {
            assert_eq!(p.check(&step, t, 0), Ok(()));
            p.applied(&step, t);
            t += 16_000;
        }
        for _ in 0..100 {
            assert_eq!(p.check(&step, t, 0), Err(ClockRefusal::StepBudgetSpent));
            t += 16_000;
        }
        // 3600 s after the budget started to refill: one more.
        let t = 3_600_000 + 16_000;
        assert_eq!(p.check(&step, t, 0), Ok(()));
        p.applied(&step, t);
        assert_eq!(p.check(&step, t + 1, 0), Err(ClockRefusal::StepBudgetSpent));
        // A long quiet spell refills to the burst, no more.
        assert_eq!(p.steps_left(t + 100 * 3_600_000), 3);
    }

    #[test]
    fn slews_frequencies_and_drift_are_bounded() {
        let mut p = PolicyState::new(ClockPolicy::default(), 0);
        assert_eq!(
            p.check(
                &ClockIntent::Slew {
                    delta_ns: -500_000_000
                },
                0,
                0
            ),
            Ok(())
        );
        assert_eq!(
            p.check(
                &ClockIntent::Slew {
                    delta_ns: 500_000_001
                },
                0,
                0
            ),
            Err(ClockRefusal::SlewTooLarge)
        );
        for (ppm, ok) in [
            (0, true),
            (500 << 16, true),
            (-(500 << 16), true),
            ((500 << 16) + 1, false),
            (i64::MIN, false),
            (i64::MAX, false),
        ] {
            let f = p.check(&ClockIntent::SetFrequency { scaled_ppm: ppm }, 0, 0);
            let d = p.check(&ClockIntent::SaveDrift { scaled_ppm: ppm }, 0, 0);
            assert_eq!(f.is_ok(), ok, "{ppm}");
            assert_eq!(d.is_ok(), ok, "{ppm}");
            if !ok {
                assert_eq!(
                    (f, d),
                    (
                        Err(ClockRefusal::FrequencyOutOfRange),
                        Err(ClockRefusal::DriftOutOfRange)
                    )
                );
            }
        }
    }

    #[test]
    fn status_follows_what_was_applied_and_leaps_only_on_the_last_day() {
        let mut p = PolicyState::new(ClockPolicy::default(), 0);
        assert_eq!(p.check(&status(false, Leap::None), 0, JUNE_15), Ok(()));
        assert_eq!(
            p.check(&status(true, Leap::None), 0, JUNE_15),
            Err(ClockRefusal::SynchronizedBeforeApplied)
        );
        p.applied(&ClockIntent::Slew { delta_ns: 1000 }, 0);
        assert_eq!(p.check(&status(true, Leap::None), 0, JUNE_15), Ok(()));
        assert_eq!(
            p.check(&status(true, Leap::Insert), 0, JUNE_15),
            Err(ClockRefusal::LeapNotLastDayOfMonth)
        );
        assert_eq!(p.check(&status(true, Leap::Insert), 0, JUNE_30 + 3600), Ok(()));
        assert_eq!(p.check(&status(true, Leap::Delete), 0, JUNE_30), Ok(()));
        assert_eq!(
            p.check(&status(true, Leap::Unknown), 0, JUNE_30),
            Err(ClockRefusal::LeapUnknown)
        );
        let huge = ClockIntent::SetStatus(KernelStatus {
            synchronized: true,
            max_error_ns: MAX_ERROR_NS + 1,
            est_error_ns: 0,
            leap: Leap::None,
        });
        assert_eq!(p.check(&huge, 0, JUNE_15), Err(ClockRefusal::ErrorOutOfRange));
        let negative = ClockIntent::SetStatus(KernelStatus {
            synchronized: true,
            max_error_ns: 0,
            est_error_ns: -1,
            leap: Leap::None,
        });
        assert_eq!(p.check(&negative, 0, JUNE_15), Err(ClockRefusal::ErrorOutOfRange));
    }

    #[test]
    fn an_accepted_step_passes_once_within_its_size_and_time() {
        let mut p = PolicyState::new(ClockPolicy::default(), 0);
        let step = |s: i64| ClockIntent::Step { delta_ns: s * NS };
        p.applied(&step(1), 0);
        assert_eq!(p.check(&step(2000), 10, 0), Err(ClockRefusal::StepTooLarge));
        let accept = StepAcceptance {
            max_ns: 2500 * NS as u64,
            valid_ms: 600_000,
            forward: None,
        };
        for bad in [
            StepAcceptance { max_ns: 0, ..accept },
            StepAcceptance {
                valid_ms: 0,
                ..accept
            },
            StepAcceptance {
                valid_ms: MAX_ACCEPTANCE_VALID_MS + 1,
                ..accept
            },
        ] {
            assert_eq!(p.accept_step(bad, 10), Err(ClockRefusal::AcceptanceOutOfRange));
        }
        assert_eq!(p.acceptance(10), None);
        p.accept_step(accept, 10).unwrap();
        assert_eq!(p.acceptance(10), Some((2500 * NS as u64, 600_000)));
        // Larger than accepted: still refused, and the acceptance waits.
        assert_eq!(p.check(&step(-2501), 20, 0), Err(ClockRefusal::StepTooLarge));
        // Within the limits: passes without using it.
        assert_eq!(p.check(&step(5), 20, 0), Ok(()));
        p.applied(&step(5), 20);
        assert!(p.acceptance(20).is_some());
        // The held step, either way, passes once.
        assert_eq!(p.check(&step(-2000), 30, 0), Ok(()));
        p.applied(&step(-2000), 30);
        assert_eq!(p.acceptance(30), None);
        assert_eq!(p.check(&step(2000), 40, 0), Err(ClockRefusal::StepTooLarge));
        // It expires.
        p.accept_step(accept, 1000).unwrap();
        assert_eq!(p.check(&step(2000), 601_000, 0), Err(ClockRefusal::StepTooLarge));
        assert_eq!(p.check(&step(2000), 600_999, 0), Ok(()));
        // It also lets a step through a spent budget (which it spends).
        let mut q = PolicyState::new(ClockPolicy::default(), 0);
        for _ in 0..3 {
            q.applied(&step(1), 0);
        }
        assert_eq!(q.check(&step(1), 0, 0), Err(ClockRefusal::StepBudgetSpent));
        q.accept_step(accept, 0).unwrap();
        assert_eq!(q.check(&step(1), 0, 0), Ok(()));
        q.applied(&step(1), 0);
        assert_eq!(q.check(&step(1), 0, 0), Err(ClockRefusal::StepBudgetSpent));
        // Sub-second sizes: 50 ms accepted, 51 ms not.
        let mut r = PolicyState::new(
            ClockPolicy {
                startup_forward_max_s: Some(0),
                startup_back_max_s: 0,
                ..ClockPolicy::default()
            },
            0,
        );
        let ms = |m: i64| ClockIntent::Step {
            delta_ns: m * 1_000_000,
        };
        assert_eq!(
            r.check(&ms(35), 0, 0),
            Err(ClockRefusal::StartupStepForwardTooLarge)
        );
        r.accept_step(
            StepAcceptance {
                max_ns: 50_000_000,
                valid_ms: 1000,
                forward: None,
            },
            0,
        )
        .unwrap();
        assert_eq!(
            r.check(&ms(51), 0, 0),
            Err(ClockRefusal::StartupStepForwardTooLarge)
        );
        assert_eq!(r.check(&ms(-50), 0, 0), Ok(()));
        // One direction only: the held step's, not its mirror image.
        r.accept_step(
            StepAcceptance {
                max_ns: 50_000_000,
                valid_ms: 1000,
                forward: Some(true),
            },
            0,
        )
        .unwrap();
        assert_eq!(
            r.check(&ms(-35), 0, 0),
            Err(ClockRefusal::StartupStepBackTooLarge)
        );
        assert_eq!(r.check(&ms(35), 0, 0), Ok(()));
    }

    #[test]
    fn refusal_names_are_distinct() {
        let mut names: Vec<_> = ClockRefusal::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ClockRefusal::ALL.len());
    }
}
