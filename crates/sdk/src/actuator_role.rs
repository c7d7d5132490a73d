//! The actuator role's loop, written once: every service's actuator is its
//! intents, its policy and the code that applies them ([`Actuator`]).
//!
//! The loop receives typed intents on the channel, checks each with the
//! service's policy ([`Actuator::check`], fixed at the role's start: the
//! engine that asked may be compromised), applies what passes and answers
//! every intent with an [`Outcome`], in the order they came. Slow writes
//! nobody waits for (status files, a first start's identity) can be held
//! back ([`HeldWrites`]) so that they never delay an intent on the path to
//! service, and a newer one replaces an older one unwritten. With a
//! [`LinkMonitor`] the loop also forwards the link's carrier changes.

use std::fmt;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::{Channel, wait_readable};
use crate::netlink::{LinkEvent, LinkMonitor};

/// What became of one intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    Done,
    /// The policy refused it: nothing was changed.
    Refused(R),
    /// Allowed, but applying it failed (perhaps in part).
    Failed(String),
}

/// Writes nobody waits for, held back for a short delay and then done
/// together. The first write held sets when they are due, so no stream of
/// newer ones can postpone them for ever; what the service keeps in `T`
/// (the newest status only, say) is its own choice.
#[derive(Debug)]
pub struct HeldWrites<T> {
    writes: T,
    delay: Duration,
    due: Option<Instant>,
}

impl<T: Default> HeldWrites<T> {
    /// Nothing held; writes held later are due `delay` after the first.
    pub fn new(delay: Duration) -> Self {
        HeldWrites {
            writes: T::default(),
            delay,
            due: None,
        }
    }

    /// The held writes, to add one to at `now`.
    pub fn hold(&mut self, now: Instant) -> &mut T {
        self.due.get_or_insert(now + self.delay);
        &mut self.writes
    }

    /// Milliseconds until the writes are due (rounded up, so the wake-up is
    /// never early), or `None` with nothing held back.
    pub fn timeout_ms(&self, now: Instant) -> Option<u64> {
        self.due
            .map(|d| d.saturating_duration_since(now).as_micros().div_ceil(1000) as u64)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|d| now >= d)
    }

    /// What is held, for the service to write now.
    pub fn take(&mut self) -> T {
        self.due = None;
        std::mem::take(&mut self.writes)
    }
}

/// A service's actuator: its intents, policy and the code that applies
/// them, run by [`run`].
pub trait Actuator {
    /// What the supervisor forwards (the engine's intents, a status).
    type Intent: DeserializeOwned;
    /// An intent's name, in answers and log lines.
    type Kind: fmt::Debug + Copy;
    /// Why the policy refused an intent.
    type Refusal: fmt::Display;
    /// What the actuator sends the supervisor: answers, link events.
    type Reply: Serialize;
    /// Writes held back ([`HeldWrites`]).
    type Held: Default;

    fn kind(intent: &Self::Intent) -> Self::Kind;

    /// The policy, without side effects: whether `intent` may be applied.
    fn check(&self, intent: &Self::Intent) -> Result<(), Self::Refusal>;

    /// Apply an intent the policy allowed, answering it (an outcome the
    /// policy could only decide on applying is `Refused` too), or hold it
    /// back in `held` and answer `None`: [`Actuator::write_held`] answers
    /// it later.
    fn apply(
        &mut self,
        intent: Self::Intent,
        held: &mut HeldWrites<Self::Held>,
    ) -> Option<Outcome<Self::Refusal>>;

    /// Do the held-back writes; the answers to the intents among them.
    fn write_held(&mut self, held: Self::Held) -> Vec<(Self::Kind, Outcome<Self::Refusal>)>;

    /// The answer to an intent, as the supervisor reads it.
    fn answer(kind: Self::Kind, outcome: Outcome<Self::Refusal>) -> Self::Reply;

    /// What to tell the supervisor about a carrier change (only with a
    /// [`LinkMonitor`]).
    fn link_event(&mut self, _event: LinkEvent) -> Option<Self::Reply> {
        None
    }
}

/// Run actuator `act` on `chan` until the supervisor closes it (then the
/// held writes are done: nothing held is lost on a stop). `links`, if
/// given, is watched and its events forwarded; `held` may hold writes
/// already (a first start's identity).
pub fn run<A: Actuator>(
    act: &mut A,
    chan: &Channel,
    mut links: Option<LinkMonitor>,
    mut held: HeldWrites<A::Held>,
) -> Result<(), String> {
    loop {
        let timeout = held.timeout_ms(Instant::now());
        let ready = match &links {
            Some(m) => wait_readable(&[chan.as_fd(), m.as_fd()], timeout),
            None => wait_readable(&[chan.as_fd()], timeout),
        }
        .map_err(|e| format!("poll: {e}"))?;
        if let Some(monitor) = links.as_mut().filter(|_| ready[1]) {
            match monitor.read_events() {
                Ok(events) => {
                    for msg in events.into_iter().filter_map(|ev| act.link_event(ev)) {
                        chan.send(&msg).map_err(|e| format!("send: {e}"))?;
                    }
                }
                Err(e) => log::warn!("link events: {e}"),
            }
        }
        if ready[0] {
            let intent = match chan.recv::<A::Intent>() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    // The supervisor is stopping: nothing held is lost.
                    write_held(act, &mut held, chan)?;
                    return Ok(());
                }
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            };
            let kind = A::kind(&intent);
            let outcome = match act.check(&intent) {
                Err(r) => Some(Outcome::Refused(r)),
                Ok(()) => act.apply(intent, &mut held),
            };
            if let Some(outcome) = outcome {
                answer::<A>(chan, kind, outcome)?;
            }
        }
        if held.is_due(Instant::now()) {
            write_held(act, &mut held, chan)?;
        }
    }
}

fn write_held<A: Actuator>(
    act: &mut A,
    held: &mut HeldWrites<A::Held>,
    chan: &Channel,
) -> Result<(), String> {
    for (kind, outcome) in act.write_held(held.take()) {
        answer::<A>(chan, kind, outcome)?;
    }
    Ok(())
}

fn answer<A: Actuator>(chan: &Channel, kind: A::Kind, outcome: Outcome<A::Refusal>) -> Result<(), String> {
    match &outcome {
        Outcome::Done => {}
        Outcome::Refused(r) => log::warn!("refused {kind:?}: {r}"),
        Outcome::Failed(e) => log::warn!("{kind:?} failed: {e}"),
    }
    chan.send(&A::answer(kind, outcome))
        .map_err(|e| format!("send: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A status write held back, and a one-off identity to store.
    type Held = (Option<u32>, Option<String>);

    #[test]
    fn writes_are_held_back_and_only_the_newest_is_kept() {
        let delay = Duration::from_millis(25);
        let t0 = Instant::now();
        let mut h = HeldWrites::<Held>::new(delay);
        assert_eq!(h.timeout_ms(t0), None);
        assert!(!h.is_due(t0));
        assert!(h.hold(t0).0.replace(1).is_none());
        assert_eq!(h.timeout_ms(t0), Some(25));
        // A newer status replaces the held one but does not postpone it.
        assert!(h.hold(t0 + Duration::from_millis(10)).0.replace(2).is_some());
        assert_eq!(h.timeout_ms(t0 + Duration::from_millis(10)), Some(15));
        assert!(!h.is_due(t0 + delay - Duration::from_micros(1)));
        assert!(h.is_due(t0 + delay));
        assert_eq!(h.take(), (Some(2), None));
        assert_eq!(h.timeout_ms(t0 + delay), None);
        assert!(!h.is_due(t0 + delay * 10));
    }

    #[test]
    fn the_wake_up_is_never_early() {
        let delay = Duration::from_millis(25);
        let t0 = Instant::now();
        let mut h = HeldWrites::<Held>::new(delay);
        h.hold(t0).0 = Some(1);
        // 0.5 ms left rounds up to 1 ms, not down to a busy 0.
        assert_eq!(h.timeout_ms(t0 + delay - Duration::from_micros(500)), Some(1));
        assert_eq!(h.timeout_ms(t0 + delay * 2), Some(0));
    }

    #[test]
    fn a_write_held_first_keeps_its_due_time() {
        let delay = Duration::from_millis(25);
        let t0 = Instant::now();
        let mut h = HeldWrites::<Held>::new(delay);
        h.hold(t0).1 = Some("0003000102005e100001".into());
        assert!(!h.is_due(t0));
        assert!(h.is_due(t0 + delay));
        // A status in between keeps the identity's (earlier) due time.
        assert!(h.hold(t0 + Duration::from_millis(5)).0.replace(1).is_none());
        assert!(h.is_due(t0 + delay));
        assert_eq!(h.take(), (Some(1), Some("0003000102005e100001".into())));
    }

    /// A toy clock actuator: slews within a bound, statuses held back.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Intent {
        Slew(i32),
        Status(u32),
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Reply {
        Answer(Kind, Result<(), String>),
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Copy)]
    enum Kind {
        Slew,
        Status,
    }
    #[derive(Default)]
    struct Clock {
        slewed: i32,
        written: Vec<u32>,
    }
    impl Actuator for Clock {
        type Intent = Intent;
        type Kind = Kind;
        type Refusal = String;
        type Reply = Reply;
        type Held = Option<u32>;
        fn kind(i: &Intent) -> Kind {
            match i {
                Intent::Slew(_) => Kind::Slew,
                Intent::Status(_) => Kind::Status,
            }
        }
        fn check(&self, i: &Intent) -> Result<(), String> {
            match i {
                Intent::Slew(ppm) if ppm.abs() > 500 => Err("too fast".into()),
                _ => Ok(()),
            }
        }
        fn apply(&mut self, i: Intent, held: &mut HeldWrites<Option<u32>>) -> Option<Outcome<String>> {
            match i {
                Intent::Slew(ppm) => {
                    self.slewed += ppm;
                    Some(Outcome::Done)
                }
                // A replaced status is answered at once, never written.
                Intent::Status(s) => held.hold(Instant::now()).replace(s).map(|_| Outcome::Done),
            }
        }
        fn write_held(&mut self, held: Option<u32>) -> Vec<(Kind, Outcome<String>)> {
            held.map(|s| {
                self.written.push(s);
                (Kind::Status, Outcome::Done)
            })
            .into_iter()
            .collect()
        }
        fn answer(kind: Kind, outcome: Outcome<String>) -> Reply {
            Reply::Answer(
                kind,
                match outcome {
                    Outcome::Done => Ok(()),
                    Outcome::Refused(r) | Outcome::Failed(r) => Err(r),
                },
            )
        }
    }

    #[test]
    fn intents_are_checked_applied_answered_and_held_writes_coalesce() {
        let (ours, theirs) = Channel::pair().unwrap();
        let role = std::thread::spawn(move || {
            let mut clock = Clock::default();
            // Its last answer may find the channel closed: what counts is
            // what it wrote.
            let _ = run(
                &mut clock,
                &theirs,
                None,
                HeldWrites::new(Duration::from_millis(50)),
            );
            clock
        });
        let recv = || ours.recv::<Reply>().unwrap().unwrap();
        ours.send(&Intent::Slew(600)).unwrap();
        assert_eq!(recv(), Reply::Answer(Kind::Slew, Err("too fast".into())));
        ours.send(&Intent::Slew(-100)).unwrap();
        assert_eq!(recv(), Reply::Answer(Kind::Slew, Ok(())));
        // Two statuses at once: the first is answered unwritten, the
        // second once the hold-back ends.
        ours.send(&Intent::Status(1)).unwrap();
        ours.send(&Intent::Status(2)).unwrap();
        let t0 = Instant::now();
        assert_eq!(recv(), Reply::Answer(Kind::Status, Ok(())));
        assert_eq!(recv(), Reply::Answer(Kind::Status, Ok(())));
        assert!(t0.elapsed() >= Duration::from_millis(40), "not held back");
        // A status held at the stop is written, not lost.
        ours.send(&Intent::Status(3)).unwrap();
        drop(ours);
        let clock = role.join().unwrap();
        assert_eq!((clock.slewed, clock.written), (-100, vec![2, 3]));
    }
}
