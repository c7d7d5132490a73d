//! The fuzz harness, written once: a fuzzer's bytes become a sequence of
//! time steps and events for any engine, and the contract's invariants are
//! checked after every step (a violation panics, which the fuzzer reports).

use alloc::vec::Vec;
use serde::Serialize;

use crate::{Engine, Instant, codec};

/// Where [`drive`]'s clock starts.
pub const START: Instant = Instant(1_000);

/// Bit 15 of a step's header: a timer run, no event.
const TIMER_FLAG: u16 = 0x8000;

/// The longest time step one step header holds (ms).
pub const MAX_STEP_MS: u16 = TIMER_FLAG - 1;

/// Invariant every engine keeps, whatever its input: every action encodes
/// within the message cap (a supervisor could not forward it otherwise).
pub fn check_actions<E: Engine>(actions: &[E::Action]) {
    for a in actions {
        if let Err(e) = codec::encode(a) {
            panic!("an action does not encode: {e}");
        }
    }
}

/// Invariant every engine keeps after running its timers at `now`: it does
/// not ask to be woken at or before `now` again (a runner would spin).
pub fn check_wake<E: Engine>(engine: &E, now: Instant) {
    let wake = engine.poll_at();
    assert!(
        wake > now,
        "the engine asks to be woken at {} ms, not after now ({} ms)",
        wake.0,
        now.0
    );
}

/// Drive engine `E` from `data`, started at [`START`]. Each step is a
/// little-endian u16 header, then:
/// - header bit 15 set: a timer run, after the low 15 bits of milliseconds,
///   or, when they are 0, at the engine's own wake-up (a long wait in two
///   bytes, as a real runner sleeps);
/// - bit 15 clear: the header's milliseconds, then one postcard-encoded
///   event (where the bytes do not decode as one: a timer run, and the next
///   byte skipped).
///
/// Returns the number of actions the engine asked for.
pub fn drive<E: Engine>(start: E::Start, seed: [u8; 32], mut data: &[u8]) -> usize {
    let mut now = START;
    let mut out = Vec::new();
    let mut engine = E::start(start, now, seed, &mut out);
    check_actions::<E>(&out);
    let mut total = out.len();
    while data.len() >= 2 {
        let header = u16::from_le_bytes([data[0], data[1]]);
        data = &data[2..];
        out.clear();
        if header & TIMER_FLAG != 0 {
            let ms = header & !TIMER_FLAG;
            now = if ms == 0 {
                let wake = engine.poll_at();
                if wake == Instant::NEVER {
                    now
                } else {
                    now.max(wake)
                }
            } else {
                now.add_millis(u64::from(ms))
            };
            engine.on_timer(now, &mut out);
            check_wake(&engine, now);
        } else {
            now = now.add_millis(u64::from(header));
            match postcard::take_from_bytes::<E::Event>(data) {
                Ok((event, rest)) if rest.len() < data.len() => {
                    data = rest;
                    let _ = engine.handle(now, event, &mut out);
                }
                _ => {
                    data = data.get(1..).unwrap_or_default();
                    engine.on_timer(now, &mut out);
                    check_wake(&engine, now);
                }
            }
        }
        check_actions::<E>(&out);
        total += out.len();
    }
    total
}

/// One step of [`drive`]'s input, for writing seeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<Ev> {
    /// After this many ms (at most [`MAX_STEP_MS`]), this event.
    Event(u16, Ev),
    /// After this many ms (at most [`MAX_STEP_MS`]), a timer run; 0: at the
    /// engine's own wake-up.
    Timer(u16),
}

/// The bytes [`drive`] reads as `steps`. Panics on a time step over
/// [`MAX_STEP_MS`] or an event that does not encode.
pub fn encode_steps<Ev: Serialize>(steps: &[Step<Ev>]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        let (ms, event) = match step {
            Step::Event(ms, ev) => (*ms, Some(ev)),
            Step::Timer(ms) => (*ms, None),
        };
        assert!(ms <= MAX_STEP_MS, "a step of {ms} ms is over {MAX_STEP_MS}");
        match event {
            Some(ev) => {
                out.extend_from_slice(&ms.to_le_bytes());
                out.extend(postcard::to_allocvec(ev).expect("the event encodes"));
            }
            None => out.extend_from_slice(&(ms | TIMER_FLAG).to_le_bytes()),
        }
    }
    out
}
