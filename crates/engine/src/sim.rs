//! Virtual time: one engine, a world that answers its actions, and a clock
//! that only moves when the simulation moves it, straight to the next thing
//! due (a change of the world, an event, or the engine's wake-up). A day of
//! protocol life runs in milliseconds and every instant is exact.
//!
//! At one instant, due changes of the world run first, then due events in
//! the order they were scheduled, then the engine's timers.

use alloc::boxed::Box;
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

    /// When the earliest waiting event is due.
    pub fn next_time(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(t, _)| *t)
    }

    /// Take the earliest waiting event out, whenever it is due (a test that
    /// delivers it itself, damaged or early).
    pub fn pop_next(&mut self) -> Option<(Instant, Ev)> {
        self.queue.pop_first().map(|((t, _), ev)| (t, ev))
    }

    fn pop_due(&mut self, now: Instant) -> Option<Ev> {
        let key = *self.queue.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    /// The waiting events, in the order they will be delivered.
    pub fn iter(&self) -> impl Iterator<Item = (Instant, &Ev)> {
        self.queue.iter().map(|((t, _), ev)| (*t, ev))
    }

    /// Keep only the events `keep` says yes to (frames lost in flight).
    pub fn retain(&mut self, mut keep: impl FnMut(Instant, &Ev) -> bool) {
        self.queue.retain(|(t, _), ev| keep(*t, ev));
    }

    /// Lose every waiting event.
    pub fn clear(&mut self) {
        self.queue.clear();
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

/// A change of the world at a set time (a server going silent, a cable
/// pulled), which may schedule events for the engine too.
type Change<E, W> = Box<dyn FnOnce(Instant, &mut W, &mut Schedule<<E as Engine>::Event>)>;

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
    changes: BTreeMap<(Instant, u64), Change<E, W>>,
    next_change: u64,
    /// Timer runs at `now` in a row.
    spins: u32,
}

impl<E: Engine, W: World<E>> Sim<E, W> {
    /// Start the engine at `now` ([`Engine::start`]); the world sees what it
    /// asks for at once.
    pub fn start(start: E::Start, now: Instant, seed: [u8; 32], world: W) -> Self {
        let mut out = Vec::new();
        let engine = E::start(start, now, seed, &mut out);
        let mut sim = Sim::from_engine(engine, now, world);
        sim.record(out);
        sim
    }

    /// Simulate an engine built some other way (its own constructor, or a
    /// state a test reached by hand), from `now`.
    pub fn from_engine(engine: E, now: Instant, world: W) -> Self {
        Sim {
            engine,
            world,
            now,
            log: Vec::new(),
            refusals: Vec::new(),
            schedule: Schedule::default(),
            changes: BTreeMap::new(),
            next_change: 0,
            spins: 0,
        }
    }

    /// Hand `event` to the engine now, outside the schedule. A refusal is
    /// recorded and returned; the world's answers wait in the schedule.
    pub fn handle(&mut self, event: E::Event) -> Result<(), E::Refusal>
    where
        E::Refusal: Clone,
    {
        let mut out = Vec::new();
        let result = self.engine.handle(self.now, event, &mut out);
        if let Err(r) = &result {
            self.refusals.push((self.now, r.clone()));
        }
        self.record(out);
        result
    }

    /// Deliver `event` at `at` (not before the current time).
    pub fn inject(&mut self, at: Instant, event: E::Event) {
        self.schedule.at(at.max(self.now), event);
    }

    /// Change the world at `at` (not before the current time), before any
    /// event due then.
    pub fn change_at(
        &mut self,
        at: Instant,
        change: impl FnOnce(Instant, &mut W, &mut Schedule<E::Event>) + 'static,
    ) {
        self.changes
            .insert((at.max(self.now), self.next_change), Box::new(change));
        self.next_change += 1;
    }

    /// Run the one next thing due at or before `until` (a change of the
    /// world, an event, or the engine's timers), moving the clock to it.
    /// False when nothing is due by then; the clock stays. Panics if the
    /// engine spins at one instant.
    pub fn step(&mut self, until: Instant) -> bool {
        let wake = self.engine.poll_at();
        let event_at = self.schedule.next_time().unwrap_or(Instant::NEVER);
        let change_at = self.changes.keys().next().map_or(Instant::NEVER, |(t, _)| *t);
        let next = wake.min(event_at).min(change_at);
        if next > until || next == Instant::NEVER {
            return false;
        }
        if next > self.now {
            self.now = next;
            self.spins = 0;
        }
        if change_at <= self.now
            && let Some((_, change)) = self.changes.pop_first()
        {
            change(self.now, &mut self.world, &mut self.schedule);
            return true;
        }
        let mut out = Vec::new();
        if let Some(event) = self.schedule.pop_due(self.now) {
            if let Err(r) = self.engine.handle(self.now, event, &mut out) {
                self.refusals.push((self.now, r));
            }
        } else {
            self.engine.on_timer(self.now, &mut out);
            self.spins += 1;
            assert!(
                self.spins < SPIN_LIMIT,
                "the engine keeps asking to be woken at {} ms",
                self.now.0
            );
        }
        self.record(out);
        true
    }

    /// Run everything due up to and including `until`, then set the clock
    /// to `until`.
    pub fn run_until(&mut self, until: Instant) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    /// [`Sim::run_until`] `ms` from now.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now.add_millis(ms));
    }

    /// Run until `done` holds (checked now and after every step; the clock
    /// stays where it became true) or until `deadline` (the clock is then
    /// `deadline`). Returns whether `done` held.
    pub fn run_until_true(&mut self, deadline: Instant, mut done: impl FnMut(&Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if !self.step(deadline) {
                self.now = self.now.max(deadline);
                return done(self);
            }
        }
    }

    /// How many logged actions `is` says yes to.
    pub fn count(&self, mut is: impl FnMut(&E::Action) -> bool) -> usize {
        self.log.iter().filter(|(_, a)| is(a)).count()
    }

    /// What `pick` takes out of each logged action it matches, with the
    /// action's time: `sim.pick(|a| match a { Action::Send(m) => Some(m.clone()), _ => None })`.
    pub fn pick<T>(&self, mut pick: impl FnMut(&E::Action) -> Option<T>) -> Vec<(Instant, T)> {
        self.log
            .iter()
            .filter_map(|(t, a)| Some((*t, pick(a)?)))
            .collect()
    }

    /// The actions logged at or after `t`.
    pub fn since(&self, t: Instant) -> &[(Instant, E::Action)] {
        let from = self.log.partition_point(|(at, _)| *at < t);
        &self.log[from..]
    }

    /// Empty the log and return what it held (a test that checks each phase
    /// on its own).
    pub fn take_log(&mut self) -> Vec<(Instant, E::Action)> {
        core::mem::take(&mut self.log)
    }

    fn record(&mut self, out: Vec<E::Action>) {
        for action in out {
            self.world.on_action(self.now, &action, &mut self.schedule);
            self.log.push((self.now, action));
        }
    }
}
