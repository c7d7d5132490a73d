//! The engine contract of MirageSDK.
//!
//! Every service's engine (DHCP, NTP, DNS...) is a sans-IO state machine:
//! it is started once, then fed events stamped with the boot clock, and it
//! answers with actions and the time it next wants to run. It never calls the
//! system: time and randomness are inputs. [`Engine`] is that contract, and
//! each place an engine runs has one runner written once, generic over it:
//!
//! - [`run`]: the engine role's loop, over a [`Host`] that moves bytes and
//!   tells the time: a sandboxed process (the SDK's channel and clock), or a
//!   KVM guest whose host is a handful of hypercalls;
//! - [`sim::Sim`]: virtual time, for tests that cover days in milliseconds;
//! - [`fuzz::drive`]: arbitrary event sequences from a fuzzer's bytes.
//!
//! The runners speak [`ToEngine`] and [`FromEngine`], postcard-encoded, one
//! message per datagram: the supervisor decodes them the same way wherever
//! the engine runs.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod codec;
pub mod fuzz;
mod runner;
pub mod sim;

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub use runner::{Host, Received, Route, RunError, run};

/// A point in time: milliseconds of `CLOCK_BOOTTIME`, which counts through
/// suspend (a lease or a poll interval must not stop while the host sleeps).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// Far future: "no wake-up needed".
    pub const NEVER: Instant = Instant(u64::MAX);

    pub const fn from_secs(secs: u64) -> Self {
        Instant(secs.saturating_mul(1000))
    }
    pub const fn millis(self) -> u64 {
        self.0
    }
    pub const fn add_millis(self, ms: u64) -> Self {
        Instant(self.0.saturating_add(ms))
    }
    pub const fn add_secs(self, secs: u64) -> Self {
        Instant(self.0.saturating_add(secs.saturating_mul(1000)))
    }
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A sans-IO engine. Implementations are `no_std` + `alloc`, deterministic
/// for a given seed and inputs, and never panic on any input: a refusal is
/// an `Err`, reported and counted by the caller.
pub trait Engine: Sized {
    /// Everything the engine is told once, at start (its configuration and
    /// any stored state).
    type Start: Serialize + for<'de> Deserialize<'de>;
    /// An input: bytes from the network, an answer to an earlier action...
    type Event: Serialize + for<'de> Deserialize<'de>;
    /// A request for the outside world to carry out (send, apply, persist,
    /// publish). The engine never does anything itself.
    type Action: Serialize + for<'de> Deserialize<'de>;
    /// Why an event was refused (dropped and counted, never fatal).
    type Refusal: Serialize + for<'de> Deserialize<'de>;

    /// Start at `now` with 32 bytes of randomness from the host.
    fn start(start: Self::Start, now: Instant, seed: [u8; 32], out: &mut Vec<Self::Action>) -> Self;

    /// One event at `now`. Due timers run too.
    fn handle(
        &mut self,
        now: Instant,
        event: Self::Event,
        out: &mut Vec<Self::Action>,
    ) -> Result<(), Self::Refusal>;

    /// Time moved on to `now` with no event: run what is due.
    fn on_timer(&mut self, now: Instant, out: &mut Vec<Self::Action>);

    /// When the engine next wants [`Engine::on_timer`]; [`Instant::NEVER`]
    /// when it waits for events only (or has stopped).
    fn poll_at(&self) -> Instant;

    /// Where `action` goes: to the supervisor (the default, for every
    /// action of an engine without a direct channel), or straight to the
    /// role at the other end of its direct channel (a DNS forwarder's
    /// queries and answers, which would cost a hop each through the
    /// supervisor). Refusals always go to the supervisor, which counts them.
    fn route(_action: &Self::Action) -> Route {
        Route::Supervisor
    }
}

/// Supervisor -> engine, wherever the engine runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToEngine<S, E> {
    /// The first message, and only the first.
    Start {
        start: S,
        seed: [u8; 32],
    },
    Event(E),
}

/// Engine -> supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FromEngine<A, R> {
    Action(A),
    /// An event was refused; the reason is counted and logged (rate-limited)
    /// by the supervisor.
    Refused(R),
}

/// What an engine's supervisor sends it, for engine `E`.
pub type ToEngineOf<E> = ToEngine<<E as Engine>::Start, <E as Engine>::Event>;
/// What engine `E` sends its supervisor.
pub type FromEngineOf<E> = FromEngine<<E as Engine>::Action, <E as Engine>::Refusal>;
