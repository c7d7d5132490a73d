//! Virtual-time harness: the SDK's generic simulation
//! ([`mirage_engine::sim::Sim`]) of one NTP client in an [`NtpWorld`]: a
//! local clock that drifts and obeys the engine's intents as an actuator
//! would, simulated servers with their own clocks, paths with asymmetric
//! and noisy delays, and the network role stamping T1 and T4 from the
//! local clock.
//!
//! True time is the simulation's `Instant` (ms since start, nanoseconds
//! inside the world) plus [`EPOCH_UNIX_SECS`]. The local clock is true
//! time plus a phase that moves with the drift, the engine's frequency
//! correction and its slews (500 ppm until done, as adjtime(3)).
//! A reply's T4 is read when the reply is scheduled, from the clock as it
//! is then: a slew asked for while the reply is in flight is not seen by
//! it (at most 500 ppm of a few milliseconds).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use dns_wire::{Class, Message, Name, RData, Record, Type};

use mirage_engine::sim::{Schedule, World};
use ntp_engine::wire::{Leap, Mode, NtpShort, NtpTimestamp, Packet, Repr};
use ntp_engine::{Action, Config, Event, Instant, IntentKind, Ntp, SourceState, Start, Status};

/// True time at the simulation's Instant(0): 2027-03-01T00:00:00Z.
pub const EPOCH_UNIX_SECS: i128 = 1_803_859_200;

/// A small deterministic generator for noise (SplitMix64).
#[derive(Clone, Debug)]
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Normal with standard deviation `sigma` (Box-Muller).
    pub fn gauss(&mut self, sigma: f64) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        sigma * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// Exponential with mean `mean` (queueing delay: mostly small, a long
    /// tail).
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// The host's realtime clock, steered by the engine's intents.
#[derive(Clone, Debug)]
pub struct Clock {
    /// Local minus true time, seconds, as of `at_ns` (true ns).
    phase: f64,
    at_ns: i128,
    /// The oscillator's own error (positive: runs fast).
    pub drift_ppm: f64,
    /// The correction set by `SetFrequency`.
    pub freq_ppm: f64,
    /// What is left of the last slew, seconds.
    slew_left: f64,
    /// Standard deviation of reading the clock (timestamping noise), s.
    pub read_noise: f64,
}

impl Clock {
    pub fn new(phase: f64, drift_ppm: f64) -> Clock {
        Clock {
            phase,
            at_ns: 0,
            drift_ppm,
            freq_ppm: 0.0,
            slew_left: 0.0,
            read_noise: 0.0,
        }
    }

    /// The phase at true time `t_ns` (not before the last change).
    pub fn phase_at(&self, t_ns: i128) -> f64 {
        let dt = (t_ns - self.at_ns).max(0) as f64 / 1e9;
        let base = (self.drift_ppm + self.freq_ppm) * 1e-6 * dt;
        let slew_secs = (self.slew_left.abs() / 500e-6).min(dt);
        base + self.phase + self.slew_left.signum() * 500e-6 * slew_secs
    }

    fn advance(&mut self, t_ns: i128) {
        if t_ns <= self.at_ns {
            return;
        }
        let dt = (t_ns - self.at_ns) as f64 / 1e9;
        let slewed = self.slew_left.signum() * 500e-6 * (self.slew_left.abs() / 500e-6).min(dt);
        self.phase = self.phase_at(t_ns);
        self.slew_left -= slewed;
        self.at_ns = t_ns;
    }

    /// The clock read at true `t_ns`, as an NTP timestamp.
    pub fn read(&self, t_ns: i128, noise: &mut Noise) -> NtpTimestamp {
        let phase = self.phase_at(t_ns) + noise.gauss(self.read_noise);
        NtpTimestamp::from_unix_nanos(EPOCH_UNIX_SECS * 1_000_000_000 + t_ns + (phase * 1e9).round() as i128)
    }

    pub fn slew(&mut self, t_ns: i128, delta_ns: i64) {
        self.advance(t_ns);
        self.slew_left = delta_ns as f64 / 1e9;
    }
    pub fn step(&mut self, t_ns: i128, delta_ns: i64) {
        self.advance(t_ns);
        self.phase += delta_ns as f64 / 1e9;
    }
    pub fn set_freq(&mut self, t_ns: i128, scaled_ppm: i64) {
        self.advance(t_ns);
        self.freq_ppm = scaled_ppm as f64 / 65536.0;
    }
    /// Move the phase by `secs` with no intent (a suspend's RTC error).
    pub fn jump(&mut self, t_ns: i128, secs: f64) {
        self.advance(t_ns);
        self.phase += secs;
    }
}

/// How a simulated server answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    Normal,
    /// Receives, never answers (an outage or a firewall).
    Silent,
    /// Answers every request with this kiss code (stratum 0, LI 3).
    Kiss([u8; 4]),
    /// Answers normally `n` times, then with this kiss code.
    KissAfter(u32, [u8; 4]),
    /// LI = 3, stratum 16: has no time to give.
    Unsynchronised,
}

#[derive(Clone, Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// Its clock minus true time, seconds.
    pub offset: f64,
    pub stratum: u8,
    pub leap: Leap,
    pub root_delay: f64,
    pub root_dispersion: f64,
    /// One-way base delays, seconds.
    pub out_delay: f64,
    pub back_delay: f64,
    /// Mean of the exponential queueing delay added each way, seconds.
    pub queueing: f64,
    pub behaviour: Behaviour,
    /// When each request reached it.
    pub requests: Vec<Instant>,
}

impl Server {
    /// A stratum-1 server on a LAN (0.2 ms each way, 20 us of queueing).
    pub fn lan(i: u8) -> Server {
        Server {
            addr: SocketAddr::new([192, 0, 2, i].into(), 123),
            offset: 0.0,
            stratum: 1,
            leap: Leap::None,
            root_delay: 0.0,
            root_dispersion: 0.000_1,
            out_delay: 0.000_2,
            back_delay: 0.000_2,
            queueing: 0.000_02,
            behaviour: Behaviour::Normal,
            requests: Vec::new(),
        }
    }

    /// A stratum-2 server across the Internet: 15 ms out, 10 ms back (the
    /// 5 ms asymmetry puts a 2.5 ms bias no client can see), 1 ms queueing.
    pub fn wan(i: u8) -> Server {
        Server {
            stratum: 2,
            root_delay: 0.010,
            root_dispersion: 0.001,
            out_delay: 0.015,
            back_delay: 0.010,
            queueing: 0.001,
            ..Server::lan(i)
        }
    }

    /// Requests that reached it in [from, to).
    pub fn requests_between(&self, from: Instant, to: Instant) -> usize {
        self.requests.iter().filter(|t| **t >= from && **t < to).count()
    }

    fn answer(&mut self, request: &Repr, t2: NtpTimestamp, t3: NtpTimestamp) -> Option<Vec<u8>> {
        let kiss = match &self.behaviour {
            Behaviour::Normal => None,
            Behaviour::Silent => return None,
            Behaviour::Kiss(code) => Some(*code),
            Behaviour::KissAfter(n, code) => (self.requests.len() as u32 > *n).then_some(*code),
            Behaviour::Unsynchronised => {
                let mut r = self.reply(request, t2, t3);
                r.leap = Leap::Unknown;
                r.stratum = 16;
                return Some(r.to_bytes().to_vec());
            }
        };
        let mut r = self.reply(request, t2, t3);
        if let Some(code) = kiss {
            r.stratum = 0;
            r.leap = Leap::Unknown;
            r.reference_id = code;
        }
        Some(r.to_bytes().to_vec())
    }

    fn reply(&self, request: &Repr, t2: NtpTimestamp, t3: NtpTimestamp) -> Repr {
        Repr {
            leap: self.leap,
            version: 4,
            mode: Mode::Server,
            stratum: self.stratum,
            poll: 6,
            precision: -24,
            root_delay: NtpShort::from_nanos((self.root_delay * 1e9) as i64),
            root_dispersion: NtpShort::from_nanos((self.root_dispersion * 1e9) as i64),
            reference_id: if self.stratum == 1 {
                *b"GPS\0"
            } else {
                [192, 0, 2, 200]
            },
            reference: t2,
            origin: request.transmit,
            receive: t2,
            transmit: t3,
        }
    }
}

/// How the simulated resolver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolverBehaviour {
    Normal,
    /// Never answers.
    Silent,
    /// Answers SERVFAIL.
    ServFail,
    /// Answers with the question in lower case (breaks 0x20).
    LowerCase,
}

/// A recursive resolver (the one resolv.conf names) that knows one zone:
/// each name has a list of addresses, handed out four at a time in turn as
/// the NTP pool's servers do.
#[derive(Clone, Debug)]
pub struct Resolver {
    pub addr: SocketAddr,
    pub names: Vec<(Name, Vec<IpAddr>)>,
    pub behaviour: ResolverBehaviour,
    /// Every query received, with when.
    pub queries: Vec<(Instant, Message)>,
    /// Round trip, ms.
    pub delay_ms: u64,
    cursor: usize,
}

impl Resolver {
    pub fn new(names: Vec<(&str, Vec<IpAddr>)>) -> Resolver {
        Resolver {
            addr: SocketAddr::new([192, 0, 2, 53].into(), 53),
            names: names
                .into_iter()
                .map(|(n, a)| (Name::from_ascii(n).unwrap(), a))
                .collect(),
            behaviour: ResolverBehaviour::Normal,
            queries: Vec::new(),
            delay_ms: 20,
            cursor: 0,
        }
    }

    /// The answer to `query` (as a resolver builds it: the question
    /// echoed, the addresses of the asked family).
    pub fn answer(&mut self, now: Instant, data: &[u8]) -> Option<Vec<u8>> {
        let query = Message::parse(data).expect("the engine's query parses");
        assert_eq!(query.questions.len(), 1, "one question per query");
        assert!(!query.header.response && query.header.recursion_desired);
        self.queries.push((now, query.clone()));
        let mut reply = query.clone();
        reply.header.response = true;
        reply.header.recursion_available = true;
        let question = &query.questions[0];
        match self.behaviour {
            ResolverBehaviour::Silent => return None,
            ResolverBehaviour::ServFail => {
                reply.header.rcode = 2;
                return Some(reply.to_bytes().unwrap());
            }
            ResolverBehaviour::LowerCase => {
                let lower = question.name.to_string().to_ascii_lowercase();
                reply.questions[0].name = Name::from_ascii(&lower).unwrap();
            }
            ResolverBehaviour::Normal => {}
        }
        match self.names.iter().find(|(n, _)| *n == question.name) {
            None => reply.header.rcode = 3,
            Some((_, addrs)) => {
                let family: Vec<IpAddr> = addrs
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv4() == (question.qtype == Type::A))
                    .collect();
                for k in 0..family.len().min(4) {
                    let addr = family[(self.cursor + k) % family.len()];
                    reply.answers.push(Record {
                        name: question.name.clone(),
                        class: Class::IN,
                        ttl: 150,
                        data: match addr {
                            IpAddr::V4(a) => RData::A(a),
                            IpAddr::V6(a) => RData::Aaaa(a),
                        },
                    });
                }
                if question.qtype == Type::A && !family.is_empty() {
                    self.cursor = (self.cursor + 4) % family.len();
                }
            }
        }
        Some(reply.to_bytes().unwrap())
    }
}

/// Everything around the engine.
pub struct NtpWorld {
    /// The resolver, if the client may look names up.
    pub resolver: Option<Resolver>,
    pub clock: Clock,
    pub servers: Vec<Server>,
    pub noise: Noise,
    /// When set, the actuator refuses every step (its policy: held).
    pub refuse_steps: bool,
    /// Steps applied (time, delta).
    pub steps: Vec<(Instant, i64)>,
    /// Every reply delivered, with when (for replays).
    pub delivered: Vec<(Instant, SocketAddr, Vec<u8>, NtpTimestamp)>,
    /// While false, nothing crosses the network (the host is suspended or
    /// its link is down).
    pub network_up: bool,
}

pub fn true_ns(now: Instant) -> i128 {
    i128::from(now.0) * 1_000_000
}

impl NtpWorld {
    pub fn new(clock: Clock, servers: Vec<Server>, seed: u64) -> NtpWorld {
        NtpWorld {
            resolver: None,
            clock,
            servers,
            noise: Noise::new(seed),
            refuse_steps: false,
            steps: Vec::new(),
            delivered: Vec::new(),
            network_up: true,
        }
    }

    /// Local minus true time at `now`, seconds.
    pub fn error_at(&self, now: Instant) -> f64 {
        self.clock.phase_at(true_ns(now))
    }

    fn exchange(&mut self, now: Instant, to: SocketAddr, data: &[u8], schedule: &mut Schedule<Event>) {
        let Some(i) = self.servers.iter().position(|s| s.addr == to) else {
            return;
        };
        let request = Repr::parse(&Packet::new_checked(data).expect("a request parses")).expect("a request");
        assert_eq!((request.mode, request.version), (Mode::Client, 4));
        let sent = true_ns(now);
        let noise = &mut self.noise;
        let s = &mut self.servers[i];
        let out = s.out_delay + noise.exp(s.queueing);
        let arrive = sent + (out * 1e9) as i128;
        s.requests.push(now);
        let server_time = |t: i128, off: f64| {
            NtpTimestamp::from_unix_nanos(EPOCH_UNIX_SECS * 1_000_000_000 + t + (off * 1e9) as i128)
        };
        let t2 = server_time(arrive, s.offset);
        let leave = arrive + 20_000;
        let t3 = server_time(leave, s.offset);
        let Some(reply) = s.answer(&request, t2, t3) else {
            return;
        };
        let back = s.back_delay + noise.exp(s.queueing);
        let received = leave + (back * 1e9) as i128;
        let t4 = self.clock.read(received, &mut self.noise);
        let at = Instant(u64::try_from((received + 999_999) / 1_000_000).unwrap());
        schedule.at(
            at,
            Event::Received {
                from: to,
                data: reply.clone(),
                at: t4,
            },
        );
        self.delivered.push((at, to, reply, t4));
    }
}

impl World<Ntp> for NtpWorld {
    fn on_action(&mut self, now: Instant, action: &Action, schedule: &mut Schedule<Event>) {
        let t = true_ns(now);
        match action {
            Action::Send { to, transmit, data } => {
                assert_eq!(data.len(), 48);
                assert_eq!(&data[40..], &transmit.0.to_be_bytes());
                if !self.network_up {
                    return;
                }
                // The network role stamps T1 as the request leaves.
                let t1 = self.clock.read(t, &mut self.noise);
                schedule.at(
                    now,
                    Event::Sent {
                        to: *to,
                        transmit: *transmit,
                        at: t1,
                    },
                );
                self.exchange(now, *to, data, schedule);
            }
            Action::Slew { delta_ns } => self.clock.slew(t, *delta_ns),
            Action::SetFrequency { scaled_ppm } => {
                assert!(scaled_ppm.abs() <= 500 * 65536, "frequency out of bounds");
                self.clock.set_freq(t, *scaled_ppm);
            }
            Action::Step { delta_ns } => {
                let ok = !self.refuse_steps;
                if ok {
                    self.clock.step(t, *delta_ns);
                    self.steps.push((now, *delta_ns));
                }
                schedule.at(
                    now,
                    Event::IntentResult {
                        kind: IntentKind::Step,
                        ok,
                    },
                );
            }
            Action::Resolve { query, to, data } => {
                let Some(resolver) = self
                    .resolver
                    .as_mut()
                    .filter(|r| r.addr == *to && self.network_up)
                else {
                    return;
                };
                if let Some(reply) = resolver.answer(now, data) {
                    let at = now.add_millis(resolver.delay_ms);
                    schedule.at(
                        at,
                        Event::Resolved {
                            query: *query,
                            from: *to,
                            data: reply,
                        },
                    );
                }
            }
            Action::SetStatus(_) | Action::SaveDrift { .. } | Action::PublishStatus(_) => {}
        }
    }
}

/// The client in virtual time.
pub type Sim = mirage_engine::sim::Sim<Ntp, NtpWorld>;

/// A client configured with `servers`' addresses, started at 0.
pub fn sim(clock: Clock, servers: Vec<Server>, seed: u8) -> Sim {
    sim_with(clock, servers, seed, |_| {}, None)
}

pub fn sim_with(
    clock: Clock,
    servers: Vec<Server>,
    seed: u8,
    tweak: impl FnOnce(&mut Config),
    drift: Option<i64>,
) -> Sim {
    let mut config = Config {
        servers: servers.iter().map(|s| s.addr).collect(),
        ..Config::default()
    };
    tweak(&mut config);
    let world = NtpWorld::new(clock, servers, u64::from(seed) * 7919);
    Sim::start(Start { config, drift }, Instant(0), [seed; 32], world)
}

/// A client that knows only `names` (pools when `pool`), resolved by
/// `resolver` among `servers`.
pub fn sim_named(
    clock: Clock,
    servers: Vec<Server>,
    resolver: Resolver,
    names: &[(&str, bool)],
    seed: u8,
) -> Sim {
    let mut config = Config {
        names: names
            .iter()
            .map(|&(name, pool)| ntp_engine::NameConfig {
                name: name.into(),
                port: 123,
                pool,
            })
            .collect(),
        resolvers: vec![resolver.addr],
        ..Config::default()
    };
    config.servers.clear();
    let mut world = NtpWorld::new(clock, servers, u64::from(seed) * 7919);
    world.resolver = Some(resolver);
    Sim::start(Start { config, drift: None }, Instant(0), [seed; 32], world)
}

pub const MINUTE: u64 = 60_000;
pub const HOUR: u64 = 3_600_000;

/// Views of the log.
pub trait NtpSim {
    fn statuses(&self) -> Vec<(Instant, Status)>;
    fn last_status(&self) -> Status;
    fn clock_intents(&self) -> Vec<(Instant, Action)>;
    fn steps_asked(&self) -> Vec<(Instant, i64)>;
    /// Worst |local - true| (s) sampled every `every_ms` over [from, to),
    /// running the simulation there.
    fn worst_error(&mut self, to: Instant, every_ms: u64) -> f64;
    /// Worst |local - true - bias| (s): the error beyond a known bias (half
    /// a path's asymmetry, which no NTP client can see).
    fn worst_deviation(&mut self, to: Instant, every_ms: u64, bias: f64) -> f64;
    /// The states `addr` was published with.
    fn source_states(&self, addr: SocketAddr) -> Vec<SourceState>;
}

impl NtpSim for Sim {
    fn statuses(&self) -> Vec<(Instant, Status)> {
        self.pick(|a| match a {
            Action::PublishStatus(s) => Some(s.clone()),
            _ => None,
        })
    }
    fn last_status(&self) -> Status {
        self.engine.status()
    }
    fn clock_intents(&self) -> Vec<(Instant, Action)> {
        self.pick(|a| match a {
            Action::Slew { .. } | Action::Step { .. } | Action::SetFrequency { .. } => Some(a.clone()),
            _ => None,
        })
    }
    fn steps_asked(&self) -> Vec<(Instant, i64)> {
        self.pick(|a| match a {
            Action::Step { delta_ns } => Some(*delta_ns),
            _ => None,
        })
    }
    fn worst_error(&mut self, to: Instant, every_ms: u64) -> f64 {
        self.worst_deviation(to, every_ms, 0.0)
    }
    fn worst_deviation(&mut self, to: Instant, every_ms: u64, bias: f64) -> f64 {
        let mut worst: f64 = 0.0;
        while self.now < to {
            let next = self.now.add_millis(every_ms).min(to);
            self.run_until(next);
            worst = worst.max((self.world.error_at(self.now) - bias).abs());
        }
        worst
    }
    fn source_states(&self, addr: SocketAddr) -> Vec<SourceState> {
        self.statuses()
            .iter()
            .flat_map(|(_, s)| s.sources.iter().filter(|x| x.address == addr).map(|x| x.state))
            .collect()
    }
}
