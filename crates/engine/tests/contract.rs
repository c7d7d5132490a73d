//! The runners of the engine contract, driven with a small engine of the
//! test's own: a heartbeat that sends a ping every period and accepts only
//! the pong that answers its last ping.

use std::collections::VecDeque;

use mirage_engine::codec::{self, CodecError};
use mirage_engine::sim::{Schedule, Sim, World};
use mirage_engine::{Engine, FromEngine, Host, Instant, Received, RunError, ToEngine, fuzz, run};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Heartbeat {
    period_ms: u64,
    next_at: Instant,
    id: u32,
    answered: bool,
    misses: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
enum Event {
    Pong(u32),
    Stop,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
enum Action {
    Ping(u32),
    /// The last ping went unanswered.
    Missed(u32),
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    NotOurPing,
}

impl Engine for Heartbeat {
    type Start = u64;
    type Event = Event;
    type Action = Action;
    type Refusal = Refusal;

    fn start(period_ms: u64, now: Instant, seed: [u8; 32], out: &mut Vec<Action>) -> Self {
        let mut hb = Heartbeat {
            period_ms: period_ms.max(1),
            next_at: now,
            id: u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]),
            answered: true,
            misses: 0,
        };
        hb.on_timer(now, out);
        hb
    }

    fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) -> Result<(), Refusal> {
        self.on_timer(now, out);
        match event {
            Event::Pong(id) if id == self.id && !self.answered => {
                self.answered = true;
                Ok(())
            }
            Event::Pong(_) => Err(Refusal::NotOurPing),
            Event::Stop => {
                self.next_at = Instant::NEVER;
                Ok(())
            }
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if now < self.next_at {
            return;
        }
        if !self.answered {
            self.misses += 1;
            out.push(Action::Missed(self.id));
        }
        self.id = self.id.wrapping_add(1);
        self.answered = false;
        out.push(Action::Ping(self.id));
        self.next_at = now.add_millis(self.period_ms);
    }

    fn poll_at(&self) -> Instant {
        self.next_at
    }
}

type ToHb = ToEngine<u64, Event>;
type FromHb = FromEngine<Action, Refusal>;

/// A host in memory: a queue of (arrival time, message) from the
/// supervisor, a clock that jumps to the next arrival or deadline, and the
/// messages the engine sent.
struct MemoryHost {
    now: Instant,
    inbox: VecDeque<(Instant, Vec<u8>)>,
    sent: Vec<(Instant, FromHb)>,
}

impl Host for MemoryHost {
    type Error = &'static str;
    fn now(&mut self) -> Instant {
        self.now
    }
    fn recv(&mut self, deadline: Instant, buf: &mut [u8]) -> Result<Received, &'static str> {
        match self.inbox.front() {
            Some((at, _)) if *at <= deadline => {
                let (at, msg) = self.inbox.pop_front().unwrap();
                self.now = self.now.max(at);
                buf[..msg.len()].copy_from_slice(&msg);
                Ok(Received::Message(msg.len()))
            }
            _ if deadline == Instant::NEVER => Ok(Received::Closed),
            _ => {
                self.now = deadline;
                Ok(Received::Timeout)
            }
        }
    }
    fn send(&mut self, message: &[u8]) -> Result<(), &'static str> {
        let msg = codec::decode(message).map_err(|_| "the runner sent an undecodable message")?;
        self.sent.push((self.now, msg));
        Ok(())
    }
}

fn host(messages: Vec<(u64, ToHb)>) -> MemoryHost {
    MemoryHost {
        now: Instant(0),
        inbox: messages
            .into_iter()
            .map(|(t, m)| (Instant(t), codec::encode(&m).unwrap()))
            .collect(),
        sent: Vec::new(),
    }
}

#[test]
fn the_runner_starts_delivers_events_runs_timers_and_reports_refusals() {
    let seed = [0u8; 32];
    let mut h = host(vec![
        (0, ToEngine::Start { start: 100, seed }),
        (10, ToEngine::Event(Event::Pong(1))),
        (20, ToEngine::Event(Event::Pong(1))),
        (250, ToEngine::Event(Event::Stop)),
    ]);
    // After Stop the engine wants no timer: the host reports the
    // supervisor gone and the runner returns.
    run::<Heartbeat, _>(&mut h).expect("runs to the end");
    let got: Vec<(u64, FromHb)> = h.sent.into_iter().map(|(t, m)| (t.0, m)).collect();
    assert_eq!(
        got,
        vec![
            (0, FromEngine::Action(Action::Ping(1))),
            (20, FromEngine::Refused(Refusal::NotOurPing)),
            (100, FromEngine::Action(Action::Ping(2))),
            (200, FromEngine::Action(Action::Missed(2))),
            (200, FromEngine::Action(Action::Ping(3))),
        ]
    );
}

#[test]
fn the_runner_refuses_a_broken_supervisor() {
    let seed = [0u8; 32];
    let mut h = host(vec![(0, ToEngine::Event(Event::Stop))]);
    assert!(matches!(run::<Heartbeat, _>(&mut h), Err(RunError::Protocol(_))));
    let mut h = host(vec![
        (0, ToEngine::Start { start: 100, seed }),
        (5, ToEngine::Start { start: 100, seed }),
    ]);
    assert!(matches!(run::<Heartbeat, _>(&mut h), Err(RunError::Protocol(_))));
    let mut h = host(vec![]);
    h.inbox.push_back((Instant(0), vec![0xff; 3]));
    assert!(matches!(
        run::<Heartbeat, _>(&mut h),
        Err(RunError::Codec(CodecError::Decode))
    ));
    // No message at all: the supervisor went away before starting us.
    assert!(run::<Heartbeat, _>(&mut host(vec![])).is_ok());
}

/// A peer that answers each ping after `latency_ms`, except every
/// `drop_every`-th.
struct Peer {
    latency_ms: u64,
    drop_every: u32,
    seen: u32,
}

impl World<Heartbeat> for Peer {
    fn on_action(&mut self, now: Instant, action: &Action, schedule: &mut Schedule<Event>) {
        if let Action::Ping(id) = action {
            self.seen += 1;
            if !self.seen.is_multiple_of(self.drop_every) {
                schedule.at(now.add_millis(self.latency_ms), Event::Pong(*id));
            }
        }
    }
}

#[test]
fn a_day_of_virtual_time_runs_exactly() {
    let peer = Peer {
        latency_ms: 3,
        drop_every: 10,
        seen: 0,
    };
    let mut sim = Sim::<Heartbeat, _>::start(60_000, Instant(0), [0; 32], peer);
    sim.run_until(Instant::from_secs(86_400));
    let pings = sim
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::Ping(_)))
        .count();
    // One at start, then one a minute, the last one exactly at the end.
    assert_eq!(pings, 1 + 24 * 60);
    assert_eq!(sim.engine.misses, (1 + 24 * 60 - 1) / 10);
    assert!(sim.refusals.is_empty());
    assert_eq!(sim.now, Instant::from_secs(86_400));
    // A forged answer is refused and recorded at its time.
    sim.inject(sim.now.add_millis(1), Event::Pong(7));
    sim.run_for(10);
    assert_eq!(sim.refusals, vec![(Instant(86_400_001), Refusal::NotOurPing)]);
}

/// An engine that asks to be woken now for ever: the simulation says so
/// instead of hanging.
#[test]
#[should_panic(expected = "keeps asking to be woken")]
fn a_spinning_engine_is_caught() {
    let mut sim = Sim::<Heartbeat, ()>::start(1, Instant(0), [0; 32], ());
    sim.engine.period_ms = 0;
    sim.run_for(10);
}

#[test]
fn the_fuzz_harness_survives_any_bytes() {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fuzz::drive::<Heartbeat>(50, [1; 32], &bytes);
    }
    // Well-formed steps reach the engine: a pong to the first ping counts.
    let mut data = vec![5, 0];
    data.extend(postcard::to_allocvec(&Event::Pong(1)).unwrap());
    assert!(fuzz::drive::<Heartbeat>(50, [0; 32], &data) >= 1);
}
