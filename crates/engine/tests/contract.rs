//! The runners of the engine contract, driven with a small engine of the
//! test's own: a heartbeat that sends a ping every period and accepts only
//! the pong that answers its last ping.

use std::collections::VecDeque;

use mirage_engine::codec::{self, CodecError};
use mirage_engine::sim::{Schedule, Sim, World};
use mirage_engine::{Engine, FromEngine, Host, Instant, Received, Route, RunError, ToEngine, fuzz, run};
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
    fn send(&mut self, to: Route, message: &[u8]) -> Result<(), &'static str> {
        if to != Route::Supervisor {
            return Err("an engine without a direct channel routed to a peer");
        }
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

/// A hand-built engine enters the simulation as it is (no first step), and
/// an event handed over outside the schedule returns its refusal, is
/// recorded, and leaves the world's answers in the schedule.
#[test]
fn an_engine_built_by_hand_is_simulated_and_handed_events_directly() {
    let hb = Heartbeat {
        period_ms: 100,
        next_at: Instant(50),
        id: 7,
        answered: true,
        misses: 0,
    };
    let peer = Peer {
        latency_ms: 3,
        drop_every: 1000,
        seen: 0,
    };
    let mut sim = Sim::from_engine(hb, Instant(50), peer);
    assert!(sim.log.is_empty());
    assert!(sim.schedule.is_empty());
    // Its due timer runs first (ping 8, answered 3 ms later), then the
    // forged pong is refused.
    assert_eq!(sim.handle(Event::Pong(99)), Err(Refusal::NotOurPing));
    assert_eq!(sim.refusals, vec![(Instant(50), Refusal::NotOurPing)]);
    assert_eq!(sim.log, vec![(Instant(50), Action::Ping(8))]);
    assert_eq!(
        sim.schedule.iter().collect::<Vec<_>>(),
        vec![(Instant(53), &Event::Pong(8))]
    );
    sim.run_for(10);
    assert!(sim.engine.answered);
    assert_eq!(sim.handle(Event::Stop), Ok(()));
    assert_eq!(sim.refusals.len(), 1);
    // A stopped engine with nothing scheduled: nothing is due, ever.
    assert!(!sim.step(Instant::NEVER));
}

/// A change of the world runs at its time, before the engine's timers and
/// events at that instant, and may schedule events itself.
#[test]
fn the_world_changes_at_its_time_first() {
    let peer = Peer {
        latency_ms: 3,
        drop_every: 1000,
        seen: 0,
    };
    let mut sim = Sim::<Heartbeat, _>::start(100, Instant(0), [0; 32], peer);
    // From 200 ms on, the peer answers nothing: the ping sent at 200 is
    // already lost.
    sim.change_at(Instant(200), |_, peer: &mut Peer, _| peer.drop_every = 1);
    sim.change_at(Instant(450), |now, _, schedule| schedule.at(now, Event::Stop));
    sim.run_until(Instant(1000));
    assert_eq!(
        sim.log,
        vec![
            (Instant(0), Action::Ping(1)),
            (Instant(100), Action::Ping(2)),
            (Instant(200), Action::Ping(3)),
            (Instant(300), Action::Missed(3)),
            (Instant(300), Action::Ping(4)),
            (Instant(400), Action::Missed(4)),
            (Instant(400), Action::Ping(5)),
        ]
    );
    assert_eq!(sim.engine.next_at, Instant::NEVER);
    assert_eq!(sim.now, Instant(1000));
    // A change asked for in the past runs now.
    sim.change_at(Instant(5), |now, peer: &mut Peer, _| peer.seen = now.0 as u32);
    sim.run_for(0);
    assert_eq!(sim.world.seen, 1000);
}

#[test]
fn running_until_a_condition_stops_where_it_holds() {
    let peer = Peer {
        latency_ms: 3,
        drop_every: 3,
        seen: 0,
    };
    let mut sim = Sim::<Heartbeat, _>::start(100, Instant(0), [0; 32], peer);
    // The third ping (200 ms) is dropped and found missing at 300 ms.
    assert!(sim.run_until_true(Instant(10_000), |s| s.engine.misses == 1));
    assert_eq!(sim.now, Instant(300));
    // Already true: the clock does not move.
    assert!(sim.run_until_true(Instant(10_000), |s| s.engine.misses == 1));
    assert_eq!(sim.now, Instant(300));
    // The next miss is at 600 ms: not by 350, where the clock then stands.
    assert!(!sim.run_until_true(Instant(350), |s| s.engine.misses == 2));
    assert_eq!(sim.now, Instant(350));
}

#[test]
fn the_log_is_counted_picked_cut_and_emptied() {
    let peer = Peer {
        latency_ms: 3,
        drop_every: 4,
        seen: 0,
    };
    let mut sim = Sim::<Heartbeat, _>::start(100, Instant(0), [0; 32], peer);
    sim.run_until(Instant(1000));
    // Pings at 0, 100 ... 1000; the 4th and 8th (300, 700 ms) go unanswered.
    assert_eq!(sim.count(|a| matches!(a, Action::Ping(_))), 11);
    let missed = sim.pick(|a| match a {
        Action::Missed(id) => Some(*id),
        _ => None,
    });
    assert_eq!(missed, vec![(Instant(400), 4), (Instant(800), 8)]);
    let tail = sim.since(Instant(800));
    assert_eq!(
        tail,
        &[
            (Instant(800), Action::Missed(8)),
            (Instant(800), Action::Ping(9)),
            (Instant(900), Action::Ping(10)),
            (Instant(1000), Action::Ping(11)),
        ]
    );
    assert!(sim.since(Instant(1001)).is_empty());
    assert_eq!(sim.take_log().len(), 13);
    assert!(sim.log.is_empty());
    sim.run_for(100);
    assert_eq!(sim.log, vec![(Instant(1100), Action::Ping(12))]);
}

#[test]
fn the_schedule_is_ordered_and_can_be_inspected_and_cut() {
    let mut s = Schedule::default();
    s.at(Instant(5), Event::Pong(1));
    s.at(Instant(1), Event::Pong(2));
    s.at(Instant(5), Event::Pong(3));
    s.at(Instant(9), Event::Stop);
    assert_eq!(s.next_time(), Some(Instant(1)));
    let order: Vec<_> = s.iter().map(|(t, e)| (t.0, e.clone())).collect();
    assert_eq!(
        order,
        vec![
            (1, Event::Pong(2)),
            (5, Event::Pong(1)),
            (5, Event::Pong(3)),
            (9, Event::Stop)
        ]
    );
    s.retain(|t, e| t < Instant(9) && *e != Event::Pong(1));
    assert_eq!(s.len(), 2);
    assert_eq!(s.pop_next(), Some((Instant(1), Event::Pong(2))));
    assert_eq!(s.pop_next(), Some((Instant(5), Event::Pong(3))));
    assert_eq!(s.pop_next(), None);
    s.at(Instant(3), Event::Stop);
    s.clear();
    assert!(s.is_empty());
    assert_eq!(s.next_time(), None);
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

/// Seeds written as steps run as written: timer steps jump to the engine's
/// wake-up when they carry no time, and events arrive when they say.
#[test]
fn fuzz_steps_encode_to_what_the_harness_runs() {
    let steps = [
        fuzz::Step::Event(5, Event::Pong(1)),
        // To 50 ms after the start: ping 2.
        fuzz::Step::Timer(0),
        // To 100 ms: ping 2 missed, ping 3.
        fuzz::Step::Timer(0),
        fuzz::Step::Event(3, Event::Pong(3)),
        // Not due yet: nothing.
        fuzz::Step::Timer(10),
        fuzz::Step::Event(0, Event::Stop),
        // Stopped: no wake-up to jump to, and nothing runs.
        fuzz::Step::Timer(0),
    ];
    let data = fuzz::encode_steps(&steps);
    // Ping 1 at the start, ping 2, then a miss and ping 3.
    assert_eq!(fuzz::drive::<Heartbeat>(50, [0; 32], &data), 4);
    // Without the timer steps, only the first ping.
    let events: Vec<_> = steps
        .iter()
        .filter(|s| matches!(s, fuzz::Step::Event(..)))
        .cloned()
        .collect();
    assert_eq!(
        fuzz::drive::<Heartbeat>(50, [0; 32], &fuzz::encode_steps(&events)),
        1
    );
}

#[test]
#[should_panic(expected = "not after now")]
fn the_fuzz_harness_catches_a_wake_up_that_is_not_in_the_future() {
    let hb = Heartbeat {
        period_ms: 1,
        next_at: Instant(5),
        id: 0,
        answered: true,
        misses: 0,
    };
    fuzz::check_wake(&hb, Instant(5));
}
