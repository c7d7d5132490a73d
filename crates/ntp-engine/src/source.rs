//! One time source: its requests, what its replies must pass, and its clock
//! filter (RFC 5905 sections 8, 9, 10 and 13).
//!
//! A reply changes nothing unless it answers the source's last request: it
//! comes from the address and port asked (checked by the caller, which
//! finds the source by address) and echoes, as its origin timestamp, the
//! random transmit timestamp we sent. Only then is the request used up (a
//! second copy is `NotAwaited`) and the reply's content looked at, Kiss-o'-
//! Death codes included, so a blind attacker can neither feed samples nor
//! slow or stop polling (CVE-2015-8138, CVE-2016-9042, CVE-2020-11868; field
//! notes items 16 and 17).

use mirage_engine::Instant;
use serde::{Deserialize, Serialize};

use crate::wire::{Kiss, Leap, Mode, NtpTimestamp, Repr};
use crate::{Config, Refusal, SourceOrigin, SourceState};
use core::net::SocketAddr;

/// Clock filter stages (RFC 5905 section 10, NSTAGE).
pub const FILTER_LEN: usize = 8;
/// Frequency tolerance, parts per million (RFC 5905 section 7.2, PHI):
/// how fast an unread clock's error is assumed to grow.
pub const PHI_PPM: i64 = 15;
/// Spacing of the start-up burst's requests (RFC 5905 iburst spacing).
pub const BURST_INTERVAL_MS: u64 = 2_000;
/// A RATE kiss raises a source's poll by one step, at most to this (2^13 s,
/// about 2.3 h). RFC 8633 section 5.4: a client "MUST NOT simply accept any
/// value" for the poll a RATE packet asks for.
pub const RATE_MAX_POLL: u8 = 13;
/// Unanswered polls in a row after which the interval starts doubling.
pub const SILENT_POLLS_BEFORE_BACKOFF: u8 = 2;
/// The local clock's read precision assumed for dispersion (2^-20 s, about
/// 1 us: the network role's kernel timestamps are finer).
pub const LOCAL_PRECISION_LOG2: i8 = -20;

/// 2^`log2` seconds in nanoseconds, for precision fields (bounded so a
/// hostile value cannot overflow).
pub fn precision_ns(log2: i8) -> i64 {
    if log2 >= 0 {
        1_000_000_000 << log2.min(8)
    } else {
        1_000_000_000 >> log2.unsigned_abs().min(40)
    }
}

/// How much an error bound grows in `ms` at [`PHI_PPM`] (RFC 5905 section
/// 10: dispersion grows at PHI with age).
pub const fn phi_ns(ms: u64) -> i64 {
    let ms = if ms > i64::MAX as u64 / 1_000 {
        i64::MAX as u64 / 1_000
    } else {
        ms
    };
    ms as i64 * PHI_PPM
}

/// One measurement (RFC 5905 section 8).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Local clock minus the server's: the opposite sign of RFC 5905's
    /// theta, so that a positive value means we are ahead.
    pub offset_ns: i64,
    /// Round trip minus the server's own processing (delta).
    pub delay_ns: i64,
    /// Error bound at the time of measurement (epsilon).
    pub dispersion_ns: i64,
    pub at: Instant,
    /// The engine's correction ledger when it was taken
    /// ([`Projection`]).
    pub ledger_ns: i64,
}

/// How to read an old sample against the clock as it is now. The engine
/// keeps moving the clock (slews, steps, frequency changes), so a sample's
/// offset is stale by what was applied since it was taken; the lowest-delay
/// sample of the filter is often minutes old, and without this the filter
/// would keep reporting offsets that were corrected long ago. The ledger is
/// the sum of corrections applied up to a time (slews as far as they have
/// progressed, steps, and the frequency correction integrated); a sample's
/// offset now is its offset then, plus the ledger's growth since, minus
/// what the current frequency correction alone would have applied (the
/// current frequency is taken to cancel the oscillator's own drift). What
/// this cannot know, the drift left over, is what PHI's dispersion growth
/// covers (RFC 5905 section 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Projection {
    pub now: Instant,
    pub ledger_ns: i64,
    /// The frequency correction in force, scaled ppm.
    pub freq: i64,
    /// How fast an old sample's error may grow, ppm: [`PHI_PPM`] once the
    /// frequency is known, up to the largest drift before (a 200 ppm
    /// oscillator makes a minute-old sample 12 ms wrong).
    pub wander_ppm: i64,
}

impl Projection {
    /// No corrections (observe mode, tests).
    pub const fn none(now: Instant) -> Projection {
        Projection {
            now,
            ledger_ns: 0,
            freq: 0,
            wander_ppm: PHI_PPM,
        }
    }

    /// What `ms` of age adds to a sample's error bound.
    pub fn aging_ns(&self, ms: u64) -> i64 {
        phi_ns(ms).saturating_mul(self.wander_ppm.max(PHI_PPM)) / PHI_PPM
    }

    /// `sample`'s offset as if measured `now`.
    pub fn offset(&self, sample: &Sample) -> i64 {
        let age_ms = i128::from(self.now.since(sample.at));
        let by_freq = i128::from(self.freq) * age_ms / (1 << 16);
        let shift = i128::from(self.ledger_ns) - i128::from(sample.ledger_ns) - by_freq;
        let v = i128::from(sample.offset_ns) + shift;
        v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

impl Sample {
    /// The measurement of one exchange: `t1` our transmit time, `t2` the
    /// server's receive time, `t3` its transmit time, `t4` our receive time
    /// (RFC 5905 section 8). `None` when the stamps are not causal (the
    /// server answered before it was asked, or took longer than the round
    /// trip).
    pub fn from_exchange(
        t1: NtpTimestamp,
        t2: NtpTimestamp,
        t3: NtpTimestamp,
        t4: NtpTimestamp,
        server_precision: i8,
        at: Instant,
    ) -> Option<Sample> {
        let round_trip = t4.diff_nanos(t1);
        let held = t3.diff_nanos(t2);
        let delay = round_trip.checked_sub(held)?;
        if round_trip < 0 || held < 0 || delay < 0 {
            return None;
        }
        // ((T1 - T2) + (T4 - T3)) / 2, each difference within 68 years.
        let offset = (t1.diff_nanos(t2) / 2).saturating_add(t4.diff_nanos(t3) / 2);
        let dispersion = precision_ns(server_precision)
            .saturating_add(precision_ns(LOCAL_PRECISION_LOG2))
            .saturating_add(round_trip / 1_000_000 * PHI_PPM);
        Some(Sample {
            offset_ns: offset,
            delay_ns: delay,
            dispersion_ns: dispersion,
            at,
            ledger_ns: 0,
        })
    }
}

/// What the clock filter makes of the last samples (RFC 5905 section 10).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterOutput {
    pub offset_ns: i64,
    pub delay_ns: i64,
    /// Weighted sum of the samples' aged error bounds.
    pub dispersion_ns: i64,
    /// RMS of the other samples' offsets around the chosen one.
    pub jitter_ns: i64,
    /// How far queueing can have moved the chosen offset: half of its
    /// delay above the least delay held, and at least an eighth of the
    /// delays' spread (the least one had some queueing too). Unlike the
    /// jitter it does not grow when old samples are projected with a wrong
    /// frequency, so the frequency loop can weigh measurements by it.
    pub noise_ns: i64,
    /// When the chosen sample was taken.
    pub at: Instant,
}

/// The last [`FILTER_LEN`] samples, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockFilter {
    samples: [Option<Sample>; FILTER_LEN],
}

impl ClockFilter {
    pub fn push(&mut self, sample: Sample) {
        self.samples.rotate_right(1);
        self.samples[0] = Some(sample);
    }

    pub fn clear(&mut self) {
        self.samples = [None; FILTER_LEN];
    }

    pub fn len(&self) -> usize {
        self.samples.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.samples[0].is_none()
    }

    /// The newest sample.
    pub fn newest(&self) -> Option<&Sample> {
        self.samples[0].as_ref()
    }

    /// The best sample's offset and delay, with dispersion and jitter over
    /// the samples held, aged and projected to `p.now` (RFC 5905 section
    /// 10).
    ///
    /// The best sample is the one with the smallest error bound now: half
    /// its delay plus its aged dispersion. Among samples of about the same
    /// age that is the lowest delay, as in the RFC; but a much older sample
    /// must have had a much better delay to win, by how far the clock may
    /// have wandered since (see [`Projection`]). Choosing by delay alone
    /// keeps a minutes-old sample in charge while the frequency is still
    /// being learnt.
    ///
    /// Unlike the RFC, empty stages do not count as MAXDISP samples: that
    /// padding keeps a new source out of selection until four replies have
    /// come (with iburst, about 6 s). The correctness interval built from one
    /// sample (half the round trip plus the server's root distance) already
    /// holds the true offset by causality, so one reply is enough to take
    /// part, and the first estimate comes after one round trip.
    pub fn output(&self, p: Projection) -> Option<FilterOutput> {
        let mut held: [(i64, i64, i64, Instant); FILTER_LEN] = [(0, 0, 0, Instant(0)); FILTER_LEN];
        let mut n = 0;
        for s in self.samples.iter().flatten() {
            let aged = s.dispersion_ns.saturating_add(p.aging_ns(p.now.since(s.at)));
            held[n] = (s.delay_ns, p.offset(s), aged, s.at);
            n += 1;
        }
        let held = &mut held[..n];
        // Stable: among equal bounds the newer sample stays first.
        held.sort_by_key(|&(delay, _, aged, _)| (delay / 2).saturating_add(aged));
        let &(delay, offset, _, at) = held.first()?;
        let least = held.iter().map(|h| h.0).min().unwrap_or(delay);
        let most = held.iter().map(|h| h.0).max().unwrap_or(delay);
        let dispersion = held
            .iter()
            .enumerate()
            .fold(0i64, |sum, (i, &(_, _, e, _))| sum.saturating_add(e >> (i + 1)));
        let jitter = if n > 1 {
            let sum: u128 = held[1..]
                .iter()
                .map(|&(_, o, ..)| (i128::from(o) - i128::from(offset)).unsigned_abs().pow(2))
                .sum();
            isqrt_i64(sum / (n as u128 - 1))
        } else {
            0
        };
        Some(FilterOutput {
            offset_ns: offset,
            delay_ns: delay,
            dispersion_ns: dispersion,
            jitter_ns: jitter.max(precision_ns(LOCAL_PRECISION_LOG2)),
            noise_ns: ((delay - least) / 2)
                .max((most - least) / 8)
                .max(precision_ns(LOCAL_PRECISION_LOG2)),
            at,
        })
    }
}

/// Integer square root, saturating into an i64.
pub fn isqrt_i64(v: u128) -> i64 {
    i64::try_from(v.isqrt()).unwrap_or(i64::MAX)
}

/// What a server said about itself in its last accepted reply.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub stratum: u8,
    pub leap: Leap,
    pub root_delay_ns: i64,
    pub root_dispersion_ns: i64,
    pub reference_id: [u8; 4],
}

/// The request waiting for its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    /// The random transmit timestamp sent; the reply must echo it.
    cookie: NtpTimestamp,
    /// T1: when the network role says the request left (realtime clock).
    sent: Option<NtpTimestamp>,
}

/// What an answer to our request turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Sample(Sample),
    /// A Kiss-o'-Death the engine acted on.
    Kiss(Kiss),
}

/// One source's state.
#[derive(Clone, Debug)]
pub struct Source {
    pub addr: SocketAddr,
    pub origin: SourceOrigin,
    /// RFC 5905 section 9.1: shifted left at each request, bit 0 set by an
    /// answer.
    pub reach: u8,
    /// log2 s of the interval after the last request.
    pub poll: u8,
    /// Floor on `poll` raised by RATE kisses.
    rate_poll: u8,
    burst_left: u8,
    /// Requests in a row that got no answer.
    unanswered: u8,
    pub next_poll: Instant,
    outstanding: Option<Request>,
    pub filter: ClockFilter,
    pub server: Option<ServerInfo>,
    /// DENY or RSTR received: never polled again.
    pub denied: Option<Kiss>,
    /// The last answer was a RATE kiss.
    pub rate_limited: bool,
    /// The last answer said the server is not synchronised.
    pub unsynchronised: bool,
    /// Set by the system process after each selection.
    pub selection: SourceState,
    /// The newest sample has not been through selection yet.
    pub fresh: bool,
    /// Requests sent to this source (for politeness figures).
    pub requests: u64,
    /// Selections in a row that found it a falseticker.
    pub falseticker_runs: u8,
}

impl Source {
    pub fn new(addr: SocketAddr, origin: SourceOrigin, now: Instant, config: &Config) -> Source {
        Source {
            addr,
            origin,
            reach: 0,
            poll: config.min_poll,
            rate_poll: 0,
            burst_left: config.burst,
            unanswered: 0,
            next_poll: now,
            outstanding: None,
            filter: ClockFilter::default(),
            server: None,
            denied: None,
            rate_limited: false,
            unsynchronised: false,
            selection: SourceState::Unreachable,
            fresh: false,
            requests: 0,
            falseticker_runs: 0,
        }
    }

    /// Whether a request is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.denied.is_none() && self.next_poll <= now
    }

    /// Record a request with transmit timestamp `cookie` sent at `now`, and
    /// schedule the next one: the burst spacing while a burst lasts, else
    /// 2^poll s (the system's poll, raised by RATE, backed off after
    /// silence) plus `spread_ms` of random spread so that many clients do
    /// not stay in step. The interval never drops under the poll: that is
    /// the politeness bound.
    pub fn transmit(
        &mut self,
        now: Instant,
        cookie: NtpTimestamp,
        system_poll: u8,
        config: &Config,
        spread_ms: u64,
    ) {
        // Silence within a burst is not yet a reason to back off: the burst
        // is short and its end tells.
        if self.outstanding.is_some() && self.burst_left == 0 {
            self.unanswered = self.unanswered.saturating_add(1);
        }
        self.reach <<= 1;
        self.requests += 1;
        self.outstanding = Some(Request { cookie, sent: None });
        let ceiling = config.max_poll.max(self.rate_poll);
        let backoff = self.unanswered.saturating_sub(SILENT_POLLS_BEFORE_BACKOFF);
        self.poll = system_poll
            .max(self.rate_poll)
            .saturating_add(backoff)
            .clamp(config.min_poll, ceiling);
        let interval_ms = if self.burst_left > 1 {
            self.burst_left -= 1;
            BURST_INTERVAL_MS
        } else {
            self.burst_left = 0;
            (1000u64 << self.poll).saturating_add(spread_ms)
        };
        self.next_poll = now.add_millis(interval_ms);
    }

    /// The network reaches this source again after it had no route: its
    /// silence was the route's, not the server's, so the backoff goes and
    /// a new burst starts at `now`.
    pub fn route_up(&mut self, now: Instant, config: &Config) {
        if self.denied.is_none() {
            self.unanswered = 0;
            self.outstanding = None;
            self.burst_left = config.burst;
            self.next_poll = self.next_poll.min(now);
        }
    }

    /// Start a new burst at `now` (the clock was stepped: every estimate
    /// must be rebuilt, quickly).
    pub fn restart(&mut self, now: Instant, config: &Config) {
        self.filter.clear();
        self.outstanding = None;
        self.fresh = false;
        if self.denied.is_none() {
            self.burst_left = config.burst;
            self.next_poll = self.next_poll.min(now);
        }
    }

    /// Drop the request waiting for its reply: a reply to it will be
    /// `NotAwaited` (it would straddle a clock step).
    pub fn forget_request(&mut self) {
        self.outstanding = None;
    }

    /// The network role's report that the request with `cookie` left at
    /// `at` (T1).
    pub fn sent(&mut self, cookie: NtpTimestamp, at: NtpTimestamp) -> Result<(), Refusal> {
        match &mut self.outstanding {
            Some(r) if r.cookie == cookie && r.sent.is_none() => {
                r.sent = Some(at);
                Ok(())
            }
            _ => Err(Refusal::UnknownTransmit),
        }
    }

    /// A reply from this source's address and port, received at `t4`
    /// (RFC 5905 section 9.2 tests, in the order that keeps state
    /// untouched by anything that does not answer our last request).
    pub fn receive(
        &mut self,
        repr: &Repr,
        t4: NtpTimestamp,
        p: Projection,
        config: &Config,
    ) -> Result<Answer, Refusal> {
        let now = p.now;
        let Some(request) = self.outstanding else {
            return Err(Refusal::NotAwaited);
        };
        // The CVE-2015-8138 shape: a zero origin must never match.
        if repr.origin.is_zero() {
            return Err(Refusal::ZeroOrigin);
        }
        if repr.origin != request.cookie {
            return Err(Refusal::WrongOrigin);
        }
        // It answers our request: whatever it says, it is used once.
        self.outstanding = None;
        if repr.mode != Mode::Server {
            return Err(Refusal::WrongMode);
        }
        if !(3..=4).contains(&repr.version) {
            return Err(Refusal::WrongVersion);
        }
        self.reach |= 1;
        self.unanswered = 0;
        if let Some(kiss) = repr.kiss() {
            return self.kiss(kiss, now);
        }
        if repr.leap == Leap::Unknown || repr.stratum >= 16 {
            self.unsynchronised = true;
            return Err(Refusal::Unsynchronised);
        }
        if repr.receive.is_zero() || repr.transmit.is_zero() {
            return Err(Refusal::ZeroTimestamp);
        }
        if let Some(floor) = config.time_floor_unix_secs
            && repr.transmit.to_unix_nanos(config.era_pivot_unix_secs) < i128::from(floor) * 1_000_000_000
        {
            return Err(Refusal::BeforeFloor);
        }
        let t1 = request.sent.ok_or(Refusal::NoTransmitTime)?;
        let mut sample = Sample::from_exchange(t1, repr.receive, repr.transmit, t4, repr.precision, now)
            .ok_or(Refusal::BadTimestamps)?;
        sample.ledger_ns = p.ledger_ns;
        let info = ServerInfo {
            stratum: repr.stratum,
            leap: repr.leap,
            root_delay_ns: repr.root_delay.to_nanos(),
            root_dispersion_ns: repr.root_dispersion.to_nanos(),
            reference_id: repr.reference_id,
        };
        // RFC 5905 section 9.2: the server's own distance to its reference
        // plus this exchange's, against MAXDIST.
        let distance = (info.root_delay_ns.saturating_add(sample.delay_ns) / 2)
            .saturating_add(info.root_dispersion_ns)
            .saturating_add(sample.dispersion_ns);
        if distance > config.max_distance_ns {
            return Err(Refusal::RootDistance);
        }
        self.unsynchronised = false;
        self.rate_limited = false;
        self.server = Some(info);
        // After a gap the host may have slept and its clock moved: what
        // came before says nothing about the clock now, and mixed in it
        // would make this source's jitter (and so its distance) huge.
        if self
            .filter
            .newest()
            .is_some_and(|s| now.since(s.at) > config.gap_ms())
        {
            self.filter.clear();
        }
        self.filter.push(sample);
        self.fresh = true;
        Ok(Answer::Sample(sample))
    }

    /// RFC 5905 section 7.4: RATE means poll less often, DENY and RSTR
    /// mean stop; other codes are ignored.
    fn kiss(&mut self, kiss: Kiss, now: Instant) -> Result<Answer, Refusal> {
        match kiss {
            Kiss::Rate => {
                self.rate_poll = self.poll.max(self.rate_poll).saturating_add(1).min(RATE_MAX_POLL);
                self.burst_left = 0;
                self.rate_limited = true;
                self.next_poll = self.next_poll.max(now.add_millis(1000u64 << self.rate_poll));
            }
            Kiss::Deny | Kiss::Rstr => {
                self.denied = Some(kiss);
                self.filter.clear();
                self.fresh = false;
                self.next_poll = Instant::NEVER;
            }
            Kiss::Other(_) => return Err(Refusal::UnknownKiss),
        }
        Ok(Answer::Kiss(kiss))
    }

    /// The state shown in status, selection's verdict unless something
    /// more basic rules the source out.
    pub fn state(&self) -> SourceState {
        if self.denied.is_some() {
            SourceState::KodDeny
        } else if self.reach == 0 || self.filter.is_empty() && !self.unsynchronised && !self.rate_limited {
            SourceState::Unreachable
        } else if self.unsynchronised {
            SourceState::Unsynchronised
        } else if self.rate_limited && self.selection != SourceState::Selected {
            SourceState::KodRate
        } else {
            self.selection
        }
    }

    /// Root distance (RFC 5905 appendix A.5.5.2, root_dist): the bound on
    /// this source's error now, `None` when it has no sample.
    pub fn root_distance(&self, p: Projection) -> Option<(FilterOutput, i64)> {
        let f = self.filter.output(p)?;
        let info = self.server?;
        let lambda = (info
            .root_delay_ns
            .saturating_add(f.delay_ns)
            .max(MIN_DISPERSION_NS)
            / 2)
        .saturating_add(info.root_dispersion_ns)
        .saturating_add(f.dispersion_ns)
        .saturating_add(f.jitter_ns);
        Some((f, lambda))
    }
}

/// RFC 5905 MINDISP (0.01 s): the least round trip a distance assumes, so
/// that a LAN server's interval is not narrower than its timestamps are
/// good.
pub const MIN_DISPERSION_NS: i64 = 10_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::NtpShort;
    use alloc::vec;

    fn ts(ms: i64) -> NtpTimestamp {
        NtpTimestamp::from_parts(0xE000_0000, 0).add_nanos(ms * 1_000_000)
    }

    #[test]
    fn offset_and_delay_follow_rfc_5905_section_8() {
        // Server 100 ms ahead, 10 ms each way, 1 ms in the server.
        let s = Sample::from_exchange(ts(0), ts(110), ts(111), ts(21), -20, Instant(5)).unwrap();
        assert_eq!(s.offset_ns, -100_000_000, "we are behind");
        assert_eq!(s.delay_ns, 20_000_000);
        assert_eq!(s.at, Instant(5));
        // Same clocks, 30 ms out and 10 ms back: the 20 ms of asymmetry shows
        // as half its size in the offset.
        let s = Sample::from_exchange(ts(0), ts(30), ts(30), ts(40), -20, Instant(0)).unwrap();
        assert_eq!((s.offset_ns, s.delay_ns), (-10_000_000, 40_000_000));
        // Not causal: T4 before T1, T3 before T2, server slower than the trip.
        assert_eq!(
            Sample::from_exchange(ts(10), ts(5), ts(6), ts(9), -20, Instant(0)),
            None
        );
        assert_eq!(
            Sample::from_exchange(ts(0), ts(6), ts(5), ts(9), -20, Instant(0)),
            None
        );
        assert_eq!(
            Sample::from_exchange(ts(0), ts(0), ts(20), ts(9), -20, Instant(0)),
            None
        );
    }

    fn sample(offset_ms: i64, delay_ms: i64, at: u64) -> Sample {
        Sample {
            offset_ns: offset_ms * 1_000_000,
            delay_ns: delay_ms * 1_000_000,
            dispersion_ns: 1_000,
            at: Instant(at),
            ledger_ns: 0,
        }
    }

    #[test]
    fn the_filter_keeps_eight_and_the_lowest_delay_wins() {
        let mut f = ClockFilter::default();
        assert_eq!(f.output(Projection::none(Instant(0))), None);
        f.push(sample(5, 30, 0));
        f.push(sample(1, 10, 1000));
        f.push(sample(9, 50, 2000));
        let out = f.output(Projection::none(Instant(2000))).unwrap();
        assert_eq!(
            (out.offset_ns, out.delay_ns, out.at),
            (1_000_000, 10_000_000, Instant(1000))
        );
        // Jitter: RMS of (5-1, 9-1) ms = sqrt((16+64)/2) ms.
        assert_eq!(out.jitter_ns, 6_324_555);
        // Dispersion ages at PHI; in order of error bound the chosen sample
        // (1 s old) is weighted 1/2, the next 1/4, the next 1/8.
        let aged = |d: i64, age_ms: u64| d + phi_ns(age_ms);
        assert_eq!(
            out.dispersion_ns,
            aged(1_000, 1000) / 2 + aged(1_000, 2000) / 4 + aged(1_000, 0) / 8
        );
        for i in 0..10 {
            f.push(sample(i, 40, 3000 + i as u64));
        }
        assert_eq!(f.len(), FILTER_LEN, "the oldest fall out");
        assert_eq!(
            f.output(Projection::none(Instant(4000))).unwrap().delay_ns,
            40_000_000
        );
        f.clear();
        assert!(f.is_empty());
    }

    fn config() -> Config {
        Config::default()
    }

    fn reply(origin: NtpTimestamp, t2: NtpTimestamp, t3: NtpTimestamp) -> Repr {
        Repr {
            leap: Leap::None,
            version: 4,
            mode: Mode::Server,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: NtpShort(0x100),
            root_dispersion: NtpShort(0x100),
            reference_id: [192, 0, 2, 1],
            reference: t2,
            origin,
            receive: t2,
            transmit: t3,
        }
    }

    fn polled() -> (Source, NtpTimestamp) {
        let c = config();
        let mut s = Source::new(
            "192.0.2.1:123".parse().unwrap(),
            SourceOrigin::Configured,
            Instant(0),
            &c,
        );
        let cookie = NtpTimestamp(0x1234_5678_9abc_def0);
        s.transmit(Instant(0), cookie, c.min_poll, &c, 0);
        s.sent(cookie, ts(0)).unwrap();
        (s, cookie)
    }

    #[test]
    fn a_route_that_comes_up_ends_the_backoff_with_a_new_burst() {
        let c = config();
        let mut s = Source::new(
            "192.0.2.1:123".parse().unwrap(),
            SourceOrigin::Configured,
            Instant(0),
            &c,
        );
        // Requests that never left (no route): the burst, then backoff.
        let mut now = Instant(0);
        for k in 0..12u64 {
            s.transmit(now, NtpTimestamp(k + 1), c.min_poll, &c, 0);
            now = s.next_poll;
        }
        assert!(s.poll > c.min_poll, "backed off: {}", s.poll);
        let later = Instant(now.0 / 2);
        assert!(!s.due(later));
        s.route_up(later, &c);
        assert!(s.due(later), "asked at once");
        s.transmit(later, NtpTimestamp(99), c.min_poll, &c, 0);
        assert_eq!(s.poll, c.min_poll, "no backoff left");
        assert_eq!(s.next_poll, later.add_millis(BURST_INTERVAL_MS), "a burst again");
    }

    #[test]
    fn a_reply_is_taken_once_and_only_with_our_cookie() {
        let c = config();
        let (mut s, cookie) = polled();
        let r = reply(cookie, ts(5), ts(6));
        let mut forged = r;
        forged.origin = NtpTimestamp(cookie.0 ^ 1);
        assert_eq!(
            s.receive(&forged, ts(10), Projection::none(Instant(10)), &c),
            Err(Refusal::WrongOrigin)
        );
        forged.origin = NtpTimestamp::ZERO;
        assert_eq!(
            s.receive(&forged, ts(10), Projection::none(Instant(10)), &c),
            Err(Refusal::ZeroOrigin)
        );
        assert_eq!(s.reach, 0, "forgeries change nothing");
        assert!(matches!(
            s.receive(&r, ts(10), Projection::none(Instant(10)), &c),
            Ok(Answer::Sample(_))
        ));
        assert_eq!(s.reach, 1);
        assert_eq!(
            s.receive(&r, ts(11), Projection::none(Instant(11)), &c),
            Err(Refusal::NotAwaited),
            "replay"
        );
        assert_eq!(s.filter.len(), 1);
    }

    #[test]
    fn every_reply_check_has_its_own_reason() {
        let c = config();
        type Case = (&'static str, fn(&mut Repr), Refusal);
        let cases: [Case; 9] = [
            ("mode 3", |r| r.mode = Mode::Client, Refusal::WrongMode),
            ("broadcast", |r| r.mode = Mode::Broadcast, Refusal::WrongMode),
            ("version 2", |r| r.version = 2, Refusal::WrongVersion),
            ("version 5", |r| r.version = 5, Refusal::WrongVersion),
            ("LI 3", |r| r.leap = Leap::Unknown, Refusal::Unsynchronised),
            ("stratum 16", |r| r.stratum = 16, Refusal::Unsynchronised),
            (
                "zero T2",
                |r| r.receive = NtpTimestamp::ZERO,
                Refusal::ZeroTimestamp,
            ),
            (
                "T3 < T2",
                |r| r.transmit = r.receive.add_nanos(-1),
                Refusal::BadTimestamps,
            ),
            (
                "root distance",
                |r| r.root_dispersion = NtpShort(2 << 16),
                Refusal::RootDistance,
            ),
        ];
        for (name, damage, reason) in cases {
            let (mut s, cookie) = polled();
            let mut r = reply(cookie, ts(5), ts(6));
            damage(&mut r);
            assert_eq!(
                s.receive(&r, ts(10), Projection::none(Instant(10)), &c),
                Err(reason),
                "{name}"
            );
            assert!(s.filter.is_empty(), "{name}");
            assert_eq!(
                s.receive(
                    &reply(cookie, ts(5), ts(6)),
                    ts(10),
                    Projection::none(Instant(10)),
                    &c
                ),
                Err(Refusal::NotAwaited),
                "{name}: the request is used up"
            );
        }
        // T4 before T1.
        let (mut s, cookie) = polled();
        assert_eq!(
            s.receive(
                &reply(cookie, ts(5), ts(6)),
                ts(-1),
                Projection::none(Instant(10)),
                &c
            ),
            Err(Refusal::BadTimestamps)
        );
        // No T1 reported.
        let mut s = Source::new(
            "192.0.2.1:123".parse().unwrap(),
            SourceOrigin::Configured,
            Instant(0),
            &c,
        );
        s.transmit(Instant(0), NtpTimestamp(7), 6, &c, 0);
        assert_eq!(s.sent(NtpTimestamp(8), ts(0)), Err(Refusal::UnknownTransmit));
        assert_eq!(
            s.receive(
                &reply(NtpTimestamp(7), ts(5), ts(6)),
                ts(10),
                Projection::none(Instant(10)),
                &c
            ),
            Err(Refusal::NoTransmitTime)
        );
    }

    #[test]
    fn a_reply_from_before_the_time_floor_is_refused() {
        // ts(0) is 2019-02-02 (NTP second 0xE0000000).
        let t0 = ts(0).to_unix_nanos(crate::wire::DEFAULT_ERA_PIVOT_UNIX_SECS) / 1_000_000_000;
        let t0 = i64::try_from(t0).unwrap();
        for (floor, ok) in [
            (t0 + 86_400, false),
            (t0 + 1, false),
            (t0 - 86_400, true),
            (t0, true),
        ] {
            let c = Config {
                time_floor_unix_secs: Some(floor),
                ..config()
            };
            let (mut s, cookie) = polled();
            let got = s.receive(
                &reply(cookie, ts(5), ts(6)),
                ts(10),
                Projection::none(Instant(10)),
                &c,
            );
            assert_eq!(got.is_ok(), ok, "floor {floor}: {got:?}");
            if !ok {
                assert_eq!(got, Err(Refusal::BeforeFloor));
                assert!(s.filter.is_empty());
            }
        }
    }

    #[test]
    fn kisses_rate_raise_the_poll_and_deny_stops_polling() {
        let c = config();
        let kod = |cookie, code: &[u8; 4]| {
            let mut r = reply(cookie, ts(5), ts(6));
            r.stratum = 0;
            r.leap = Leap::Unknown;
            r.reference_id = *code;
            r
        };
        let (mut s, cookie) = polled();
        assert_eq!(
            s.receive(&kod(cookie, b"RATE"), ts(10), Projection::none(Instant(10)), &c),
            Ok(Answer::Kiss(Kiss::Rate))
        );
        assert_eq!(s.state(), SourceState::KodRate);
        assert!(s.next_poll >= Instant(10).add_secs(1 << (c.min_poll + 1)));
        let before = s.next_poll;
        s.transmit(before, NtpTimestamp(99), c.min_poll, &c, 0);
        assert_eq!(s.poll, c.min_poll + 1, "the system poll no longer rules");
        // Repeated RATE climbs, capped.
        for _ in 0..20 {
            s.sent(NtpTimestamp(99), ts(0)).unwrap();
            s.receive(
                &kod(NtpTimestamp(99), b"RATE"),
                ts(10),
                Projection::none(Instant(10)),
                &c,
            )
            .unwrap();
            s.transmit(s.next_poll, NtpTimestamp(99), c.min_poll, &c, 0);
        }
        assert_eq!(s.poll, RATE_MAX_POLL);

        for code in [b"DENY", b"RSTR"] {
            let (mut s, cookie) = polled();
            assert!(
                s.receive(&kod(cookie, code), ts(10), Projection::none(Instant(10)), &c)
                    .is_ok()
            );
            assert!(!s.due(Instant::NEVER));
            assert_eq!(s.state(), SourceState::KodDeny);
        }
        let (mut s, cookie) = polled();
        assert_eq!(
            s.receive(&kod(cookie, b"INIT"), ts(10), Projection::none(Instant(10)), &c),
            Err(Refusal::UnknownKiss)
        );
        // A kiss with the wrong origin is not a kiss.
        let (mut s, cookie) = polled();
        assert_eq!(
            s.receive(
                &kod(NtpTimestamp(cookie.0 + 1), b"DENY"),
                ts(10),
                Projection::none(Instant(10)),
                &c
            ),
            Err(Refusal::WrongOrigin)
        );
        assert!(s.denied.is_none());
    }

    #[test]
    fn the_burst_is_spaced_then_the_poll_rules_and_silence_backs_off() {
        let c = config();
        let mut s = Source::new(
            "192.0.2.1:123".parse().unwrap(),
            SourceOrigin::Configured,
            Instant(0),
            &c,
        );
        let mut times = vec![];
        let mut now = Instant(0);
        for i in 0..12u64 {
            assert!(s.due(now));
            times.push(now.0);
            s.transmit(now, NtpTimestamp(i + 1), c.min_poll, &c, 0);
            now = s.next_poll;
        }
        // 4 requests 2 s apart, then 64 s three times, then doubling.
        assert_eq!(&times[..7], &[0, 2_000, 4_000, 6_000, 70_000, 134_000, 198_000]);
        assert_eq!(times[7] - times[6], 128_000);
        assert_eq!(times[8] - times[7], 256_000);
        assert_eq!(s.poll, c.max_poll, "backed off to the ceiling");
        assert_eq!(s.reach, 0);
        assert_eq!(s.state(), SourceState::Unreachable);
    }
}
