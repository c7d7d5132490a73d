//! Virtual time: one engine, a world that answers its actions, and a clock
//! that only moves when the simulation moves it, straight to the next thing
//! due (the engine's wake-up or a scheduled event). A day of protocol life
//! runs in milliseconds and every instant is exact.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::{Engine, Instant};

/// Consecutive timer runs at one instant after which an engine counts as
/// spinning (it keeps asking to be woken now): a bug the real runner would
/// turn into a busy loop.
const SPIN_LIMIT: u32 = 10_000;

/// Events waiting for their time, in time order (ties in insertion order).
pub struct Schedule<Ev> {
    queue: BTreeMap<(Instant, u64), Ev>,
    next_seq: u64,
}

impl<Ev> Default for Schedule<Ev> {
    fn default() -> Self {
        Schedule {
            queue: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<Ev> Schedule<Ev> {
    /// Deliver `event` to the engine at `at`.
    pub fn at(&mut self, at: Instant, event: Ev) {
        self.queue.insert((at, self.next_seq), event);
        self.next_seq += 1;
    }

    fn next_time(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Ev> {
        let key = *self.queue.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Everything outside the engine: servers, peers, the actuator. It sees
/// each action as the engine asks for it and may schedule events in answer.
pub trait World<E: Engine> {
    fn on_action(&mut self, now: Instant, action: &E::Action, schedule: &mut Schedule<E::Event>);
}

/// A world that answers nothing (for tests that inject every event).
impl<E: Engine> World<E> for () {
    fn on_action(&mut self, _: Instant, _: &E::Action, _: &mut Schedule<E::Event>) {}
}

/// An engine in virtual time.
pub struct Sim<E: Engine, W> {
    pub engine: E,
    pub world: W,
    pub now: Instant,
    /// Every action, with the time the engine asked for it.
    pub log: Vec<(Instant, E::Action)>,
    /// Every refused event, with the time and reason.
    pub refusals: Vec<(Instant, E::Refusal)>,
    pub schedule: Schedule<E::Event>,
}

impl<E: Engine, W: World<E>> Sim<E, W> {
    pub fn start(start: E::Start, now: Instant, seed: [u8; 32], world: W) -> Self {
        let mut out = Vec::new();
        let engine = E::start(start, now, seed, &mut out);
        let mut sim = Sim {
            engine,
            world,
            now,
            log: Vec::new(),
            refusals: Vec::new(),
            schedule: Schedule::default(),
        };
        sim.record(out);
        sim
    }

    /// Deliver `event` at `at` (not before the current time).
    pub fn inject(&mut self, at: Instant, event: E::Event) {
        self.schedule.at(at.max(self.now), event);
    }

    /// Run everything due up to and including `until`, then set the clock
    /// to `until`. Panics if the engine spins at one instant.
    pub fn run_until(&mut self, until: Instant) {
        let mut spins = 0u32;
        loop {
            let wake = self.engine.poll_at();
            let next_event = self.schedule.next_time();
            let next = match next_event {
                Some(t) => t.min(wake),
                None => wake,
            };
            if next > until {
                break;
            }
            if next > self.now {
                self.now = next;
                spins = 0;
            }
            let mut out = Vec::new();
            if let Some(event) = self.schedule.pop_due(self.now) {
                if let Err(r) = self.engine.handle(self.now, event, &mut out) {
                    self.refusals.push((self.now, r));
                }
            } else {
                self.engine.on_timer(self.now, &mut out);
                spins += 1;
                assert!(
                    spins < SPIN_LIMIT,
                    "the engine keeps asking to be woken at {} ms",
                    self.now.0
                );
            }
            self.record(out);
        }
        self.now = self.now.max(until);
    }

    /// [`Sim::run_until`] `ms` from now.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now.add_millis(ms));
    }

    fn record(&mut self, out: Vec<E::Action>) {
        for action in out {
            self.world.on_action(self.now, &action, &mut self.schedule);
            self.log.push((self.now, action));
        }
    }
}
