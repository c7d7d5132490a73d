//! The fuzz harness, written once: a fuzzer's bytes become a sequence of
//! time steps and events for any engine, and the contract's invariants are
//! checked after every step (a violation panics, which the fuzzer reports).

use alloc::vec::Vec;

use crate::{Engine, Instant, codec};

/// Invariants every engine keeps, whatever its input:
/// - every action encodes within the message cap (a supervisor could not
///   forward it otherwise);
/// - after running its timers at `now`, the engine does not ask to be woken
///   at or before `now` again (a runner would spin).
pub fn check_actions<E: Engine>(actions: &[E::Action]) {
    for a in actions {
        if let Err(e) = codec::encode(a) {
            panic!("an action does not encode: {e}");
        }
    }
}

/// Drive engine `E` from `data`: each step is a little-endian u16 of
/// milliseconds to advance, then one postcard-encoded event (or, where the
/// bytes do not decode as one, a timer run and the next byte skipped).
/// Returns the number of actions the engine asked for.
pub fn drive<E: Engine>(start: E::Start, seed: [u8; 32], mut data: &[u8]) -> usize {
    let mut now = Instant(1_000);
    let mut out = Vec::new();
    let mut engine = E::start(start, now, seed, &mut out);
    check_actions::<E>(&out);
    let mut total = out.len();
    while data.len() >= 2 {
        let step = u16::from_le_bytes([data[0], data[1]]);
        data = &data[2..];
        now = now.add_millis(u64::from(step));
        out.clear();
        match postcard::take_from_bytes::<E::Event>(data) {
            Ok((event, rest)) if rest.len() < data.len() => {
                data = rest;
                let _ = engine.handle(now, event, &mut out);
            }
            _ => {
                data = data.get(1..).unwrap_or_default();
                engine.on_timer(now, &mut out);
                let wake = engine.poll_at();
                assert!(
                    wake > now,
                    "the engine asks to be woken at {} ms, not after now ({} ms)",
                    wake.0,
                    now.0
                );
            }
        }
        check_actions::<E>(&out);
        total += out.len();
    }
    total
}
