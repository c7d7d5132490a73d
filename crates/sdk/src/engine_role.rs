//! The engine role as a process: the contract's runner
//! ([`mirage_engine::run`]) over the role's channel and the boot clock.
//! Every service's engine role is this plus its sandbox, or, with
//! `--sandbox kvm`, the same runner inside a guest ([`run_sandboxed`],
//! [`crate::kvm`]) whose messages [`ChannelHost`] relays.

use std::os::fd::AsFd;

use mirage_engine::{Engine, Host, Instant, Received, Route};

use crate::channel::{Channel, ChannelError, wait_readable};
use crate::clock::boottime;
use crate::role::Starting;
use crate::service::SandboxKind;

/// Longest single sleep: poll's timeout runs on CLOCK_MONOTONIC, which
/// stops during suspend; waking at least this often and re-reading
/// CLOCK_BOOTTIME notices a lease or poll interval that ran out meanwhile.
const MAX_SLEEP_MS: u64 = 5_000;

/// A sandboxed process's [`Host`]: its channel to the supervisor, and the
/// direct channel to a peer role if the service declared one.
pub struct ChannelHost {
    chan: Channel,
    peer: Option<Channel>,
}

impl ChannelHost {
    pub fn new(chan: Channel) -> Self {
        ChannelHost { chan, peer: None }
    }

    /// With a direct channel to a peer role ([`crate::runtime::Runtime::link`]).
    pub fn with_peer(chan: Channel, peer: Channel) -> Self {
        ChannelHost {
            chan,
            peer: Some(peer),
        }
    }
}

impl Host for ChannelHost {
    type Error = ChannelError;

    fn now(&mut self) -> Instant {
        boottime()
    }

    /// The supervisor's messages first when both channels have one: its
    /// `Start` is in the channel before the role runs, so it is always the
    /// first message read, whatever the peer sends. Either channel's end is
    /// the engine's end (linked roles live and die together).
    fn recv(&mut self, deadline: Instant, buf: &mut [u8]) -> Result<Received, ChannelError> {
        let timeout = if deadline == Instant::NEVER {
            None
        } else {
            Some(deadline.since(boottime()).min(MAX_SLEEP_MS))
        };
        let ready = match &self.peer {
            Some(peer) => wait_readable(&[self.chan.as_fd(), peer.as_fd()], timeout)?,
            None => wait_readable(&[self.chan.as_fd()], timeout)?,
        };
        let from = match (ready[0], ready.get(1).copied().unwrap_or(false), &self.peer) {
            (true, _, _) => &self.chan,
            (false, true, Some(peer)) => peer,
            _ => return Ok(Received::Timeout),
        };
        Ok(match from.recv_into(buf)? {
            Some(n) => Received::Message(n),
            None => Received::Closed,
        })
    }

    fn send(&mut self, to: Route, message: &[u8]) -> Result<(), ChannelError> {
        let chan = match (to, &self.peer) {
            (Route::Peer, Some(peer)) => peer,
            (Route::Peer, None) => {
                let why = "an action routed to a peer, but the engine has no direct channel";
                return Err(ChannelError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    why,
                )));
            }
            (Route::Supervisor, _) => &self.chan,
        };
        Ok(chan.send_raw(message)?)
    }
}

/// Run engine `E` in this process on `chan` until the supervisor closes it.
/// Call it once the role's sandbox is in force.
pub fn run<E: Engine>(chan: Channel) -> Result<(), String> {
    mirage_engine::run::<E, _>(&mut ChannelHost::new(chan)).map_err(|e| e.to_string())
}

/// The engine role of a service whose engine `E` is also built as the guest
/// `image` (`None`: no guest image): enter the sandbox the hello names and
/// run `E` as a process, or, with `kvm`, run `image` as a guest over the
/// same channel ([`crate::kvm`]). A service's whole engine role:
///
/// ```no_run
/// # struct E;
/// # impl mirage_engine::Engine for E {
/// #     type Start = (); type Event = (); type Action = (); type Refusal = ();
/// #     fn start(_: (), _: mirage_engine::Instant, _: [u8; 32], _: &mut Vec<()>) -> Self { E }
/// #     fn handle(&mut self, _: mirage_engine::Instant, _: (), _: &mut Vec<()>) -> Result<(), ()> { Ok(()) }
/// #     fn on_timer(&mut self, _: mirage_engine::Instant, _: &mut Vec<()>) {}
/// #     fn poll_at(&self) -> mirage_engine::Instant { mirage_engine::Instant::NEVER }
/// # }
/// // build.rs: mirage_kvm_build::build_image("guest-my-engine", &[]);
/// # const GUEST: &[u8] = &[];
/// // const GUEST: &[u8] = mirage_sdk::guest_image!(concat!(env!("OUT_DIR"), "/guest-my-engine.elf"));
/// fn engine(role: mirage_sdk::role::Starting) -> Result<(), String> {
///     mirage_sdk::engine_role::run_sandboxed::<E>(role, Some(GUEST))
/// }
/// ```
pub fn run_sandboxed<E: Engine>(role: Starting, image: Option<&[u8]>) -> Result<(), String> {
    match (role.sandbox(), image) {
        (SandboxKind::Kvm, Some(image)) => crate::kvm::run_guest(role, image, None),
        (SandboxKind::Kvm, None) => {
            Err("told to run as a KVM guest, but this service has no guest image".into())
        }
        _ => run::<E>(role.enter()?.channel),
    }
}

/// [`run_sandboxed`] for an engine with a direct channel to `peer`
/// ([`crate::runtime::Runtime::link`]; the role adopts its end with
/// [`Channel::from_raw_fd`] before this): as a process, [`run_with_peer`];
/// as a KVM guest, the tender relays both channels over the same
/// hypercalls (a send names its route, a receive takes whichever channel
/// has a message, the supervisor's first).
pub fn run_sandboxed_with_peer<E: Engine>(
    role: Starting,
    image: Option<&[u8]>,
    peer: Channel,
) -> Result<(), String> {
    match (role.sandbox(), image) {
        (SandboxKind::Kvm, Some(image)) => crate::kvm::run_guest(role, image, Some(peer)),
        (SandboxKind::Kvm, None) => {
            Err("told to run as a KVM guest, but this service has no guest image".into())
        }
        _ => run_with_peer::<E>(role.enter()?.channel, peer),
    }
}

/// [`run`] for an engine with a direct channel to `peer`: the actions
/// [`Engine::route`] sends to [`Route::Peer`] go there, and the peer's
/// events come in beside the supervisor's.
pub fn run_with_peer<E: Engine>(chan: Channel, peer: Channel) -> Result<(), String> {
    mirage_engine::run::<E, _>(&mut ChannelHost::with_peer(chan, peer)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_engine::{FromEngine, ToEngine};
    use serde::{Deserialize, Serialize};

    /// Echo with a twist: every event's number goes back to the peer, and
    /// an odd number is refused (the refusal goes to the supervisor).
    struct Echo;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Action {
        ToPeer(u32),
        Hello,
    }

    impl Engine for Echo {
        type Start = ();
        type Event = u32;
        type Action = Action;
        type Refusal = u32;

        fn start(_: (), _: Instant, _: [u8; 32], out: &mut Vec<Action>) -> Self {
            out.push(Action::Hello);
            Echo
        }
        fn handle(&mut self, _: Instant, n: u32, out: &mut Vec<Action>) -> Result<(), u32> {
            if n % 2 == 1 {
                return Err(n);
            }
            out.push(Action::ToPeer(n));
            Ok(())
        }
        fn on_timer(&mut self, _: Instant, _: &mut Vec<Action>) {}
        fn poll_at(&self) -> Instant {
            Instant::NEVER
        }
        fn route(action: &Action) -> Route {
            match action {
                Action::ToPeer(_) => Route::Peer,
                Action::Hello => Route::Supervisor,
            }
        }
    }

    type From = FromEngine<Action, u32>;

    #[test]
    fn an_engine_with_a_peer_routes_its_actions_and_reads_start_first() {
        let (sup, sup_far) = Channel::pair().unwrap();
        let (peer, peer_far) = Channel::pair().unwrap();
        // The peer speaks first, before the engine runs: the supervisor's
        // Start must still be what the engine reads first.
        peer.send(&ToEngine::<(), u32>::Event(2)).unwrap();
        sup.send(&ToEngine::<(), u32>::Start {
            start: (),
            seed: [0; 32],
        })
        .unwrap();
        let engine = std::thread::spawn(move || run_with_peer::<Echo>(sup_far, peer_far));
        assert_eq!(
            sup.recv::<From>().unwrap(),
            Some(FromEngine::Action(Action::Hello))
        );
        assert_eq!(
            peer.recv::<From>().unwrap(),
            Some(FromEngine::Action(Action::ToPeer(2)))
        );
        peer.send(&ToEngine::<(), u32>::Event(3)).unwrap();
        assert_eq!(sup.recv::<From>().unwrap(), Some(FromEngine::Refused(3)));
        sup.send(&ToEngine::<(), u32>::Event(4)).unwrap();
        assert_eq!(
            peer.recv::<From>().unwrap(),
            Some(FromEngine::Action(Action::ToPeer(4)))
        );
        // A Start from the peer is a protocol error: the engine stops.
        peer.send(&ToEngine::<(), u32>::Start {
            start: (),
            seed: [1; 32],
        })
        .unwrap();
        let err = engine.join().unwrap().unwrap_err();
        assert!(err.contains("second Start"), "{err}");
    }

    #[test]
    fn an_engine_without_a_peer_cannot_route_to_one() {
        let (sup, far) = Channel::pair().unwrap();
        sup.send(&ToEngine::<(), u32>::Start {
            start: (),
            seed: [0; 32],
        })
        .unwrap();
        sup.send(&ToEngine::<(), u32>::Event(2)).unwrap();
        let err = run::<Echo>(far).unwrap_err();
        assert!(err.contains("no direct channel"), "{err}");
        assert_eq!(
            sup.recv::<From>().unwrap(),
            Some(FromEngine::Action(Action::Hello))
        );
    }
}
