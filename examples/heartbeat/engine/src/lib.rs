//! mirage-heartbeat's engine: the engine of the smallest service worth
//! writing on MirageSDK, the worked example of docs/sdk.md.
//!
//! The engine sends a ping every period and accepts only the pong that
//! echoes its last ping, byte for byte, once. It is `no_std`, holds no
//! clock and no socket: time comes with each call, datagrams come and go as
//! events and actions ([`mirage_engine::Engine`]).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

use mirage_engine::{Engine, Instant};
use serde::{Deserialize, Serialize};

/// A ping on the wire: this tag, then the ping's id (u64, big-endian). The
/// peer echoes it unchanged.
pub const TAG: &[u8; 2] = b"HB";
pub const PING_LEN: usize = 10;
/// Shortest and longest ping period accepted at start.
pub const MIN_PERIOD_MS: u64 = 50;
pub const MAX_PERIOD_MS: u64 = 3_600_000;

/// Told once, at start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub period_ms: u64,
}

/// What the engine is handed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A datagram from the peer, as received (untrusted).
    Datagram(Vec<u8>),
}

/// What the engine asks for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this ping to the peer.
    Send(Vec<u8>),
    /// The pong of the last ping came back after this many milliseconds.
    Pong { rtt_ms: u64 },
}

/// Why a datagram was refused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a ping's shape (length or tag).
    Malformed,
    /// A ping, but not the last one we sent.
    WrongId,
    /// No ping is waiting for its pong (a duplicate, or unsolicited).
    NotAwaited,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::WrongId => "wrong-id",
            Refusal::NotAwaited => "not-awaited",
        }
    }
}

/// The heartbeat engine.
#[derive(Debug)]
pub struct Heartbeat {
    period_ms: u64,
    /// The next ping's id; the first one comes from the seed, so an
    /// off-path peer cannot guess it.
    next_id: u64,
    /// The ping waiting for its pong, and when it was sent.
    awaited: Option<(u64, Instant)>,
    next_ping: Instant,
}

/// The wire form of ping `id`.
pub fn ping(id: u64) -> [u8; PING_LEN] {
    let mut b = [0u8; PING_LEN];
    b[..2].copy_from_slice(TAG);
    b[2..].copy_from_slice(&id.to_be_bytes());
    b
}

/// The id of a datagram shaped like a ping.
pub fn ping_id(bytes: &[u8]) -> Option<u64> {
    let (tag, id) = bytes.split_first_chunk::<2>()?;
    let id: [u8; 8] = id.try_into().ok()?;
    (tag == TAG).then(|| u64::from_be_bytes(id))
}

impl Heartbeat {
    fn send_ping(&mut self, now: Instant, out: &mut Vec<Action>) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        // A ping that is not answered before the next one is lost: only the
        // last one is awaited.
        self.awaited = Some((id, now));
        out.push(Action::Send(ping(id).to_vec()));
        self.next_ping = now.add_millis(self.period_ms);
    }
}

impl Engine for Heartbeat {
    type Start = Start;
    type Event = Event;
    type Action = Action;
    type Refusal = Refusal;

    fn start(start: Start, now: Instant, seed: [u8; 32], out: &mut Vec<Action>) -> Self {
        let mut first = [0u8; 8];
        first.copy_from_slice(&seed[..8]);
        let mut hb = Heartbeat {
            // Checked by the supervisor too; an engine never trusts that.
            period_ms: start.period_ms.clamp(MIN_PERIOD_MS, MAX_PERIOD_MS),
            next_id: u64::from_be_bytes(first),
            awaited: None,
            next_ping: now,
        };
        hb.send_ping(now, out);
        hb
    }

    fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) -> Result<(), Refusal> {
        self.on_timer(now, out);
        let Event::Datagram(bytes) = event;
        let id = ping_id(&bytes).ok_or(Refusal::Malformed)?;
        let (awaited, sent) = self.awaited.ok_or(Refusal::NotAwaited)?;
        if id != awaited {
            return Err(Refusal::WrongId);
        }
        self.awaited = None;
        out.push(Action::Pong {
            rtt_ms: now.since(sent),
        });
        Ok(())
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now >= self.next_ping {
            self.send_ping(now, out);
        }
    }

    fn poll_at(&self) -> Instant {
        self.next_ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_engine::sim::{Schedule, Sim, World};

    /// A peer `delay_ms` away that echoes every ping, changed by `answer`.
    struct Peer {
        delay_ms: u64,
        answer: fn(Vec<u8>) -> Vec<u8>,
    }

    impl World<Heartbeat> for Peer {
        fn on_action(&mut self, now: Instant, action: &Action, schedule: &mut Schedule<Event>) {
            if let Action::Send(p) = action {
                let reply = (self.answer)(p.clone());
                schedule.at(now.add_millis(self.delay_ms), Event::Datagram(reply));
            }
        }
    }

    fn sim(answer: fn(Vec<u8>) -> Vec<u8>) -> Sim<Heartbeat, Peer> {
        let peer = Peer { delay_ms: 7, answer };
        Sim::start(Start { period_ms: 1000 }, Instant(5_000), [3; 32], peer)
    }

    #[test]
    fn every_echoed_ping_is_a_pong_with_its_round_trip_time() {
        let mut s = sim(|p| p);
        s.run_for(10_000);
        assert_eq!(s.count(|a| matches!(a, Action::Send(_))), 11);
        let rtts = s.pick(|a| match a {
            Action::Pong { rtt_ms } => Some(*rtt_ms),
            _ => None,
        });
        // The last ping's pong is still in flight at the window's end.
        assert_eq!(rtts.len(), 10);
        assert!(rtts.iter().all(|(_, r)| *r == 7), "{rtts:?}");
        assert!(s.refusals.is_empty());
    }

    #[test]
    fn a_pong_with_another_id_a_duplicate_or_junk_is_refused() {
        let mut s = sim(|mut p| {
            p[PING_LEN - 1] ^= 1;
            p
        });
        s.run_for(3_000);
        assert_eq!(s.count(|a| matches!(a, Action::Send(_))), 4);
        assert_eq!(s.count(|a| matches!(a, Action::Pong { .. })), 0);
        assert_eq!(s.refusals.len(), 3);
        assert!(s.refusals.iter().all(|(_, r)| *r == Refusal::WrongId));

        let mut s = sim(|p| p);
        s.run_for(100);
        let last = s.pick(|a| match a {
            Action::Send(p) => Some(p.clone()),
            _ => None,
        });
        let echo = last.last().unwrap().1.clone();
        assert_eq!(s.handle(Event::Datagram(echo)), Err(Refusal::NotAwaited));
        assert_eq!(s.handle(Event::Datagram(b"HB".to_vec())), Err(Refusal::Malformed));
        assert_eq!(
            s.handle(Event::Datagram(b"XX12345678".to_vec())),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn ids_come_from_the_seed_and_the_period_is_bounded() {
        let mut out = Vec::new();
        let a = Heartbeat::start(Start { period_ms: 0 }, Instant(0), [1; 32], &mut out);
        let b = Heartbeat::start(Start { period_ms: u64::MAX }, Instant(0), [2; 32], &mut out);
        assert_ne!(a.awaited.unwrap().0, b.awaited.unwrap().0);
        assert_eq!(a.poll_at(), Instant(MIN_PERIOD_MS));
        assert_eq!(b.poll_at(), Instant(MAX_PERIOD_MS));
        assert_eq!(ping_id(&ping(42)), Some(42));
    }

    #[test]
    fn the_contract_holds_under_the_generic_fuzz_driver() {
        use mirage_engine::fuzz::{Step, drive, encode_steps};
        let steps = [
            Step::Timer(0),
            Step::Event(3, Event::Datagram(ping(9).to_vec())),
            Step::Event(1, Event::Datagram(Vec::new())),
            Step::Timer(900),
            Step::Timer(0),
        ];
        let n = drive::<Heartbeat>(Start { period_ms: 100 }, [0; 32], &encode_steps(&steps));
        assert!(n >= 3, "{n} actions");
        // Arbitrary bytes: no panic, invariants checked by the driver.
        let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        drive::<Heartbeat>(Start { period_ms: 50 }, [7; 32], &junk);
    }
}
