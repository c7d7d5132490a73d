//! The host clock as tests see it: how far CLOCK_REALTIME stands from
//! CLOCK_MONOTONIC, which only a step or a slew changes. A test that runs
//! a service able to steer the clock reads it before and after, and
//! asserts that it did not move (no test may leave the clock moved).

use rustix::time::{ClockId, clock_gettime};

/// Clock `id` now, in nanoseconds.
pub fn nanos(id: ClockId) -> i64 {
    let t = clock_gettime(id);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// `a - b` for two clocks, read as close together as the machine allows
/// (the pair with the shortest bracket of five).
pub fn clock_diff(a: ClockId, b: ClockId) -> i64 {
    (0..5)
        .map(|_| {
            let b0 = nanos(b);
            let a1 = nanos(a);
            let b2 = nanos(b);
            (b2 - b0, a1 - (b0 + (b2 - b0) / 2))
        })
        .min_by_key(|&(bracket, _)| bracket)
        .map(|(_, d)| d)
        .unwrap()
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds: what a step moves.
pub fn real_minus_mono() -> i64 {
    clock_diff(ClockId::Realtime, ClockId::Monotonic)
}

/// CLOCK_MONOTONIC minus CLOCK_MONOTONIC_RAW: what slews and the frequency
/// change (the raw clock is the hardware's).
pub fn mono_minus_raw() -> i64 {
    clock_diff(ClockId::Monotonic, ClockId::MonotonicRaw)
}
