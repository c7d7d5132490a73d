//! The engine role's loop, written once for every engine and every place it
//! runs: a sandboxed process and a KVM guest differ only in their [`Host`].

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::codec::{self, CodecError, MAX_MESSAGE_LEN};
use crate::{Engine, FromEngine, Instant, ToEngine};

/// What [`Host::recv`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A message of this many bytes is at the start of the buffer.
    Message(usize),
    /// Nothing came before the deadline, or the host woke early: the runner
    /// reads the clock again and decides (a host may wake every few seconds
    /// to notice time that passed during a suspend).
    Timeout,
    /// The supervisor is gone: the engine's work is over.
    Closed,
}

/// Where a message from the engine goes ([`crate::Engine::route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Supervisor,
    /// The role at the other end of the engine's direct channel.
    Peer,
}

/// Where an engine runs: a channel to its supervisor (and, for some
/// services, a direct channel to one other role) and a boot clock.
pub trait Host {
    type Error: fmt::Display;
    /// The boot clock (`CLOCK_BOOTTIME` milliseconds).
    fn now(&mut self) -> Instant;
    /// Wait for the next message, from the supervisor or the direct peer,
    /// until `deadline` ([`Instant::NEVER`]: no deadline), and put it into
    /// `buf` (whose length is the message cap). Both send the same
    /// [`ToEngine`] messages; only the supervisor's first is `Start`.
    fn recv(&mut self, deadline: Instant, buf: &mut [u8]) -> Result<Received, Self::Error>;
    /// Send one encoded message to `to`. A host without a direct channel
    /// gets only [`Route::Supervisor`] from engines that have none.
    fn send(&mut self, to: Route, message: &[u8]) -> Result<(), Self::Error>;
}

/// Why [`run`] ended other than by the supervisor closing the channel.
#[derive(Debug)]
pub enum RunError<E> {
    Host(E),
    /// A message from the supervisor that does not decode, or an action that
    /// does not encode within the cap.
    Codec(CodecError),
    /// The first message was not `Start`, or a second `Start` came.
    Protocol(&'static str),
}

impl<E: fmt::Display> fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Host(e) => write!(f, "{e}"),
            RunError::Codec(e) => write!(f, "{e}"),
            RunError::Protocol(e) => f.write_str(e),
        }
    }
}

/// Run engine `E` on `host` until the supervisor closes the channel: read
/// `Start`, then hand every event to the engine, run its timers when they
/// are due, and send every action and refusal back, one message each.
pub fn run<E: Engine, H: Host>(host: &mut H) -> Result<(), RunError<H::Error>> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let (start, seed) = match host.recv(Instant::NEVER, &mut buf).map_err(RunError::Host)? {
        Received::Closed => return Ok(()),
        Received::Timeout => return Err(RunError::Protocol("no Start message")),
        Received::Message(n) => match codec::decode::<ToEngine<E::Start, E::Event>>(&buf[..n]) {
            Ok(ToEngine::Start { start, seed }) => (start, seed),
            Ok(ToEngine::Event(_)) => return Err(RunError::Protocol("the first message was not Start")),
            Err(e) => return Err(RunError::Codec(e)),
        },
    };
    let mut actions: Vec<E::Action> = Vec::new();
    let mut out = vec![0u8; MAX_MESSAGE_LEN];
    let now = host.now();
    let mut engine = E::start(start, now, seed, &mut actions);
    loop {
        for action in actions.drain(..) {
            send_action::<E, H>(host, action, &mut out)?;
        }
        let due = engine.poll_at();
        match host.recv(due, &mut buf).map_err(RunError::Host)? {
            Received::Closed => return Ok(()),
            Received::Timeout => {
                let now = host.now();
                if now >= due {
                    engine.on_timer(now, &mut actions);
                }
            }
            Received::Message(n) => {
                let event = match codec::decode::<ToEngine<E::Start, E::Event>>(&buf[..n]) {
                    Ok(ToEngine::Event(e)) => e,
                    Ok(ToEngine::Start { .. }) => return Err(RunError::Protocol("a second Start message")),
                    Err(e) => return Err(RunError::Codec(e)),
                };
                let now = host.now();
                if let Err(refusal) = engine.handle(now, event, &mut actions) {
                    // What the engine asked for before refusing still goes out first.
                    for action in actions.drain(..) {
                        send_action::<E, H>(host, action, &mut out)?;
                    }
                    send(
                        host,
                        &mut out,
                        Route::Supervisor,
                        &FromEngine::<E::Action, E::Refusal>::Refused(refusal),
                    )?;
                }
            }
        }
    }
}

fn send_action<E: Engine, H: Host>(
    host: &mut H,
    action: E::Action,
    out: &mut [u8],
) -> Result<(), RunError<H::Error>> {
    let to = E::route(&action);
    send(
        host,
        out,
        to,
        &FromEngine::<E::Action, E::Refusal>::Action(action),
    )
}

/// Encode into `out` (the loop's one send buffer) and send.
fn send<H: Host, T: serde::Serialize>(
    host: &mut H,
    out: &mut [u8],
    to: Route,
    msg: &T,
) -> Result<(), RunError<H::Error>> {
    let bytes = codec::encode_into(msg, out).map_err(RunError::Codec)?;
    host.send(to, bytes).map_err(RunError::Host)
}
