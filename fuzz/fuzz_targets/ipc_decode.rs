//! The supervisor and the actuator decode messages a compromised engine
//! wrote: decoding arbitrary bytes must never panic, and every lease that
//! decodes is either accepted or refused by the policy without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_ipc::{FromEngine, Limits, ToActuator, ToEngine, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(ToActuator::Apply { lease, .. }) = decode::<ToActuator>(data) {
        let _ = lease.check(&Limits::default());
    }
    let _ = decode::<FromEngine>(data);
    let _ = decode::<ToEngine>(data);
});
