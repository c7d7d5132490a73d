//! The system process: sources, selection and discipline tied together,
//! and the engine contract ([`mirage_engine::Engine`]) on top.
//!
//! `handle` takes the event first, then runs due polls, so that a reply
//! arriving at the instant of the next poll still answers the request it
//! was sent for.

use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

use mirage_engine::{Engine, Instant};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::discipline::{Discipline, Outcome};
use crate::names::{DROP_AFTER_POLLS, Resolution};
use crate::select::{Candidate, select};
use crate::source::{Answer, MIN_DISPERSION_NS, Projection, Source};
use crate::wire::{Kiss, Leap, NtpTimestamp, Packet, Repr};
use crate::{
    Action, Config, Counters, Event, IntentKind, KernelStatus, MAX_SOURCES, NTP_PORT, Refusal, SourceOrigin,
    SourceState, SourceStatus, Start, Status, SyncState,
};

/// How long a step may wait for the actuator's answer before it counts as
/// refused (the actuator answers in milliseconds; a lost answer must not
/// stop the discipline for good).
const STEP_ANSWER_TIMEOUT_MS: u64 = 30_000;

/// The last estimate, as status and the kernel see it.
#[derive(Clone, Copy, Debug, Default)]
struct Estimate {
    offset_ns: i64,
    jitter_ns: i64,
    root_delay_ns: i64,
    root_dispersion_ns: i64,
    stratum: u8,
    leap: Leap,
}

/// Where a step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepState {
    None,
    /// Asked at this time; no answer yet.
    Asked(Instant),
    /// The actuator refused the last one.
    Held,
}

/// The NTP client engine.
pub struct Ntp {
    config: Config,
    sources: Vec<Source>,
    rng: ChaCha8Rng,
    discipline: Discipline,
    estimate: Option<Estimate>,
    state: SyncState,
    step: StepState,
    agreeing: usize,
    counters: Counters,
    /// The latest time the engine was run at (for status, which ages
    /// dispersion).
    now: Instant,
    /// The configured names, resolved by the engine ([`crate::names`]).
    resolutions: Vec<Resolution>,
    /// The last DNS query handle given out.
    last_query: u64,
}

impl Ntp {
    /// An engine at `now` that has sent nothing yet (its first requests go
    /// out at its first timer run).
    pub fn new(start: Start, now: Instant, seed: [u8; 32]) -> Ntp {
        let config = start.config.sanitized();
        let sources = config
            .servers
            .iter()
            .map(|&addr| Source::new(addr, SourceOrigin::Configured, now, &config))
            .collect();
        let discipline = Discipline::new(&config, start.drift);
        let resolutions = config
            .names
            .iter()
            .filter_map(|n| {
                let name = dns_wire::Name::from_ascii(&n.name).ok()?;
                Some(Resolution::new(name, n.name.clone(), n.port, n.pool, now))
            })
            .collect();
        Ntp {
            resolutions,
            last_query: 0,
            sources,
            rng: ChaCha8Rng::from_seed(seed),
            discipline,
            estimate: None,
            state: SyncState::Starting,
            step: StepState::None,
            agreeing: 0,
            counters: Counters::default(),
            now,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }
    pub fn state(&self) -> SyncState {
        self.state
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// The discipline's frequency, scaled ppm.
    pub fn frequency(&self) -> i64 {
        self.discipline.freq
    }
    /// The last estimate's offset (local minus reference).
    pub fn offset_ns(&self) -> Option<i64> {
        self.estimate.map(|e| e.offset_ns)
    }

    /// One event at `now`.
    pub fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) -> Result<(), Refusal> {
        // Time never runs backwards for the engine, whatever it is told.
        let now = now.max(self.now);
        self.now = now;
        let result = match event {
            Event::Received { from, data, at } => self.received(now, from, &data, at, out),
            Event::Sent { to, transmit, at } => self
                .sources
                .iter_mut()
                .find(|s| s.addr == to)
                .ok_or(Refusal::UnknownTransmit)
                .and_then(|s| s.sent(transmit, at)),
            Event::IntentResult { kind, ok } => {
                self.intent_result(now, kind, ok, out);
                Ok(())
            }
            Event::DhcpServers(list) => self.dhcp_servers(now, &list, out),
            Event::Resolved { query, from, data } => self.resolved(now, query, from, &data, out),
            Event::Tick => Ok(()),
            Event::RouteUp(addr) => {
                for s in self.sources.iter_mut().filter(|s| s.addr == addr) {
                    s.route_up(now, &self.config);
                }
                Ok(())
            }
            Event::StepAccepted => {
                if self.step == StepState::Held {
                    self.discipline.step_at_next_estimate();
                    for s in self.sources.iter_mut().filter(|s| s.reach != 0) {
                        s.next_poll = s.next_poll.min(now);
                    }
                }
                Ok(())
            }
        };
        self.on_timer(now, out);
        result
    }

    /// Send the requests that are due.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        let now = now.max(self.now);
        self.now = now;
        if let StepState::Asked(at) = self.step
            && now.since(at) >= STEP_ANSWER_TIMEOUT_MS
        {
            self.step_refused();
        }
        self.names_due(now, out);
        let system_poll = self.discipline.poll;
        for source in self.sources.iter_mut().filter(|s| s.due(now)) {
            // Never zero: a zero origin is what forged replies carry.
            let cookie = NtpTimestamp(self.rng.next_u64().max(1));
            let spread_ms = self.rng.next_u64() % ((1000u64 << system_poll) / 16 + 1);
            source.transmit(now, cookie, system_poll, &self.config, spread_ms);
            self.counters.requests += 1;
            out.push(Action::Send {
                to: source.addr,
                transmit: cookie,
                data: Repr::client_request(cookie).to_bytes().to_vec(),
            });
        }
    }

    /// The next due poll, [`Instant::NEVER`] when no source is polled.
    pub fn poll_at(&self) -> Instant {
        let polls = self
            .sources
            .iter()
            .filter(|s| s.denied.is_none())
            .map(|s| s.next_poll);
        let step = match self.step {
            StepState::Asked(at) => at.add_millis(STEP_ANSWER_TIMEOUT_MS),
            _ => Instant::NEVER,
        };
        // Without a resolver no lookup can be sent: nothing to wake for.
        let lookups = self
            .resolutions
            .iter()
            .filter(|_| !self.config.resolvers.is_empty())
            .map(Resolution::wake_at);
        polls.chain(lookups).fold(step, Instant::min)
    }

    /// Drop the named sources that no longer serve, finish the lookups
    /// whose time is up, send the lookups that are due.
    fn names_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.resolutions.is_empty() {
            return;
        }
        let mut changed = false;
        let mut i = 0;
        while i < self.sources.len() {
            let s = &self.sources[i];
            // Unreachable: at the next poll, the whole reach register (the
            // last eight requests) is empty.
            let unreachable = s.reach == 0 && s.requests >= u64::from(DROP_AFTER_POLLS) && s.due(now);
            let serves = s.denied.is_none() && !unreachable && s.falseticker_runs < DROP_AFTER_POLLS;
            if s.origin.name().is_none() || serves {
                i += 1;
                continue;
            }
            let dropped = self.sources.remove(i);
            changed = true;
            if let Some(r) = self.resolutions.iter_mut().find(|r| r.origin() == dropped.origin) {
                r.dropped(dropped.addr.ip(), dropped.denied.is_some(), now);
            }
        }
        for i in 0..self.resolutions.len() {
            if self.resolutions[i].timed_out(now) {
                self.finish_lookup(i, now);
                changed = true;
            }
            self.resolutions[i].start_lookup(
                now,
                &self.config.resolvers,
                self.config.dns_randomize_case,
                &mut self.rng,
                &mut self.last_query,
                out,
            );
        }
        if changed {
            out.push(Action::PublishStatus(self.status()));
        }
    }

    /// An answer to DNS query `query`.
    fn resolved(
        &mut self,
        now: Instant,
        query: u64,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let i = self
            .resolutions
            .iter()
            .position(|r| r.owns(query))
            .ok_or(Refusal::DnsNotAwaited)?;
        if self.resolutions[i].answer(query, from, data)? {
            self.finish_lookup(i, now);
            out.push(Action::PublishStatus(self.status()));
        }
        Ok(())
    }

    /// End lookup `i`: its new addresses become sources, polled at once.
    fn finish_lookup(&mut self, i: usize, now: Instant) {
        let present: Vec<SocketAddr> = self.sources.iter().map(|s| s.addr).collect();
        let origin = self.resolutions[i].origin();
        let live = self.sources.iter().filter(|s| s.origin == origin).count();
        let room = MAX_SOURCES.saturating_sub(self.sources.len());
        let found = self.resolutions[i].finish(now, &present, live, room, &self.config);
        for addr in found.addrs {
            self.sources
                .push(Source::new(addr, found.origin.clone(), now, &self.config));
        }
        if self.state == SyncState::NoSources && !self.sources.is_empty() {
            self.state = SyncState::Starting;
        }
    }

    fn received(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        t4: NtpTimestamp,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let packet = Packet::new_checked(data).map_err(Refusal::Malformed)?;
        let repr = Repr::parse(&packet).map_err(Refusal::Malformed)?;
        let projection = self.projection(now);
        let source = self
            .sources
            .iter_mut()
            .find(|s| s.addr == from)
            .ok_or(Refusal::UnknownSource)?;
        let before = (source.reach, source.unsynchronised);
        let answer = source.receive(&repr, t4, projection, &self.config);
        let changed = (source.reach, source.unsynchronised) != before;
        let answer = answer.inspect_err(|_| {
            // A refused reply that still answered our request changed what
            // status shows of its source (reachable, unsynchronised): say
            // so now, not at the next accepted reply, which may never come.
            if changed {
                out.push(Action::PublishStatus(self.status()));
            }
        })?;
        match answer {
            Answer::Sample(_) => {
                self.counters.samples += 1;
                self.update(now, t4, out);
            }
            Answer::Kiss(kiss) => {
                match kiss {
                    Kiss::Rate => self.counters.kiss_rate += 1,
                    _ => self.counters.kiss_deny += 1,
                }
                self.update(now, t4, out);
            }
        }
        Ok(())
    }

    /// Run selection over the sources and, with a new estimate, the
    /// discipline; publish status.
    /// How old samples read against the clock now: through the
    /// discipline's ledger, or as they are when nothing moves the clock.
    fn projection(&self, now: Instant) -> Projection {
        if self.config.observe {
            Projection::none(now)
        } else {
            self.discipline.projection(now)
        }
    }

    fn update(&mut self, now: Instant, t4: NtpTimestamp, out: &mut Vec<Action>) {
        let projection = self.projection(now);
        let mut candidates = Vec::new();
        let mut index = Vec::new();
        for (i, s) in self.sources.iter_mut().enumerate() {
            s.selection = SourceState::Unreachable;
            if s.denied.is_some() || s.unsynchronised || s.reach == 0 {
                continue;
            }
            let (Some((f, distance)), Some(info)) = (s.root_distance(projection), s.server) else {
                continue;
            };
            if distance > self.config.max_distance_ns {
                continue;
            }
            s.selection = SourceState::Candidate;
            candidates.push(Candidate {
                offset_ns: f.offset_ns,
                distance_ns: distance,
                jitter_ns: f.jitter_ns,
                stratum: info.stratum,
            });
            index.push(i);
        }
        let usable = self.sources.iter().filter(|s| s.denied.is_none()).count();
        let selection = select(&candidates, self.config.quorum(usable));
        for (k, &i) in index.iter().enumerate() {
            let s = &mut self.sources[i];
            if !selection.truechimers.is_empty() && !selection.truechimers.contains(&k) {
                s.selection = SourceState::Falseticker;
                s.falseticker_runs = s.falseticker_runs.saturating_add(1);
            } else if selection.estimate.is_some() && selection.survivors.contains(&k) {
                s.selection = SourceState::Selected;
            }
        }
        for s in &mut self.sources {
            if s.selection != SourceState::Falseticker {
                s.falseticker_runs = 0;
            }
        }
        self.agreeing = selection.truechimers.len();
        let fresh = selection.survivors.iter().any(|&k| self.sources[index[k]].fresh);
        match selection.estimate {
            Some(e) if fresh => {
                for s in &mut self.sources {
                    s.fresh = false;
                }
                let peer = &self.sources[index[selection.survivors[0]]];
                // A survivor was a candidate: it has both.
                let (Some((f, distance)), Some(info)) = (peer.root_distance(projection), peer.server) else {
                    return;
                };
                // A smearing server spreads the leap over hours itself: its
                // announcement must never arm the kernel's (field notes
                // item 1).
                let leaps = selection
                    .survivors
                    .iter()
                    .map(|&k| &self.sources[index[k]])
                    .filter(|s| !crate::smears(s.addr.ip()))
                    .map(|s| s.server.map_or(Leap::None, |i| i.leap));
                let reference = t4.add_nanos(e.offset_ns.saturating_neg());
                let leap = armed_leap(leaps, reference, self.config.era_pivot_unix_secs);
                let estimate = Estimate {
                    offset_ns: e.offset_ns,
                    jitter_ns: e.jitter_ns,
                    root_delay_ns: info.root_delay_ns.saturating_add(f.delay_ns),
                    root_dispersion_ns: info
                        .root_dispersion_ns
                        .saturating_add(f.dispersion_ns)
                        .saturating_add(e.jitter_ns)
                        .saturating_add(e.offset_ns.saturating_abs()),
                    stratum: info.stratum.saturating_add(1).min(16),
                    leap,
                };
                self.estimate = Some(estimate);
                // The noise of the estimate, for the frequency loop: twice
                // the system peer's queueing noise (FilterOutput::noise_ns;
                // the margin covers timestamping noise it cannot see). The
                // jitter would also count what a wrong frequency does to old
                // samples, and so slow down the very correction needed.
                let noise = f.noise_ns.saturating_mul(2).max(1);
                self.discipline_update(now, estimate, noise, distance.max(MIN_DISPERSION_NS), out);
            }
            Some(_) => {}
            None => {
                if self.state != SyncState::Held {
                    self.state = if candidates.is_empty() {
                        SyncState::Starting
                    } else {
                        SyncState::NotEnoughSources
                    };
                }
            }
        }
        if usable == 0 {
            self.state = SyncState::NoSources;
        }
        out.push(Action::PublishStatus(self.status()));
    }

    fn discipline_update(
        &mut self,
        now: Instant,
        e: Estimate,
        noise: i64,
        distance: i64,
        out: &mut Vec<Action>,
    ) {
        if self.config.observe {
            self.state = SyncState::Observing;
            self.discipline.observe(now, e.offset_ns, noise);
            return;
        }
        if matches!(self.step, StepState::Asked(_)) {
            return;
        }
        match self.discipline.update(now, e.offset_ns, noise, out) {
            Outcome::Stepped(_) => {
                self.counters.steps_asked += 1;
                self.step = StepState::Asked(now);
                // Replies in flight straddle the step: their T1 and T4 come
                // from different clocks.
                for s in &mut self.sources {
                    s.forget_request();
                }
            }
            Outcome::Slewed => {
                self.state = SyncState::Synchronized;
                self.step = StepState::None;
                out.push(Action::SetStatus(kernel_status(&e, distance)));
            }
            Outcome::Spike => {}
        }
    }

    fn intent_result(&mut self, now: Instant, kind: IntentKind, ok: bool, out: &mut Vec<Action>) {
        if !ok {
            self.counters.intents_failed += 1;
        }
        if kind != IntentKind::Step || !matches!(self.step, StepState::Asked(_)) {
            return;
        }
        if ok {
            self.step = StepState::None;
            self.discipline.stepped(now);
            self.state = SyncState::Synchronized;
            // Every sample was taken against the old clock: start over,
            // quickly, and tell the kernel the clock is good now (a step
            // otherwise leaves it marked unsynchronised).
            for s in &mut self.sources {
                s.restart(now, &self.config);
            }
            if let Some(e) = &mut self.estimate {
                e.offset_ns = 0;
                out.push(Action::SetStatus(kernel_status(e, MIN_DISPERSION_NS)));
            }
            out.push(Action::PublishStatus(self.status()));
        } else {
            self.step_refused();
            out.push(Action::PublishStatus(self.status()));
        }
    }

    fn step_refused(&mut self) {
        self.discipline.step_refused();
        self.counters.steps_refused += 1;
        self.step = StepState::Held;
        self.state = SyncState::Held;
    }

    /// Replace the DHCP-learned sources with `list` (port 123), keeping the
    /// state of those that stay.
    fn dhcp_servers(&mut self, now: Instant, list: &[IpAddr], out: &mut Vec<Action>) -> Result<(), Refusal> {
        if !self.config.use_dhcp_servers {
            return Err(Refusal::DhcpServersNotUsed);
        }
        let wanted: Vec<SocketAddr> = list.iter().map(|&ip| SocketAddr::new(ip, NTP_PORT)).collect();
        self.sources
            .retain(|s| s.origin != SourceOrigin::Dhcp || wanted.contains(&s.addr));
        for addr in wanted {
            if self.sources.len() >= MAX_SOURCES {
                break;
            }
            if !self.sources.iter().any(|s| s.addr == addr) {
                self.sources
                    .push(Source::new(addr, SourceOrigin::Dhcp, now, &self.config));
            }
        }
        // Nothing left to ask (the lease went), or something again.
        if !self.sources.iter().any(|s| s.denied.is_none()) {
            self.state = SyncState::NoSources;
        } else if self.state == SyncState::NoSources {
            self.state = SyncState::Starting;
        }
        out.push(Action::PublishStatus(self.status()));
        Ok(())
    }

    /// The status as published.
    pub fn status(&self) -> Status {
        let e = self.estimate.unwrap_or_default();
        let usable = self.sources.iter().filter(|s| s.denied.is_none()).count();
        Status {
            state: self.state,
            synchronized: self.state == SyncState::Synchronized,
            offset_ns: e.offset_ns,
            jitter_ns: e.jitter_ns,
            root_delay_ns: e.root_delay_ns,
            root_dispersion_ns: e.root_dispersion_ns,
            frequency_scaled_ppm: self.discipline.freq,
            stratum: if self.estimate.is_some() { e.stratum } else { 16 },
            leap: e.leap,
            poll: self.discipline.poll,
            agreeing: u8::try_from(self.agreeing).unwrap_or(u8::MAX),
            quorum: u8::try_from(self.config.quorum(usable)).unwrap_or(u8::MAX),
            sources: self
                .sources
                .iter()
                .map(|s| {
                    let f = s.filter.output(self.projection(self.now));
                    SourceStatus {
                        address: s.addr,
                        origin: s.origin.clone(),
                        state: s.state(),
                        offset_ns: f.map_or(0, |f| f.offset_ns),
                        delay_ns: f.map_or(0, |f| f.delay_ns),
                        jitter_ns: f.map_or(0, |f| f.jitter_ns),
                        stratum: s.server.map_or(16, |i| i.stratum),
                        reach: s.reach,
                        poll: s.poll,
                        requests: s.requests,
                        smearing: crate::smears(s.addr.ip()),
                    }
                })
                .collect(),
            names: self
                .resolutions
                .iter()
                .map(|r| {
                    let origin = r.origin();
                    let n = self.sources.iter().filter(|s| s.origin == origin).count();
                    r.status(u8::try_from(n).unwrap_or(u8::MAX))
                })
                .collect(),
            counters: self.counters,
        }
    }
}

fn kernel_status(e: &Estimate, distance: i64) -> KernelStatus {
    KernelStatus {
        synchronized: true,
        max_error_ns: distance.saturating_add(e.offset_ns.saturating_abs()),
        est_error_ns: e.jitter_ns,
        leap: e.leap,
    }
}

/// The leap the kernel should arm: the one announced by more than half of
/// `leaps` (the survivors'), and only on the last day of a month by the
/// reference's UTC date, since the kernel inserts at the end of whatever
/// day the flag is set (adjtimex(2); field notes item 8) and servers
/// announce up to months ahead. ITU-R TF.460 allows any month's end.
pub fn armed_leap(leaps: impl Iterator<Item = Leap>, reference: NtpTimestamp, pivot_unix_secs: i64) -> Leap {
    let (mut n, mut insert, mut delete) = (0usize, 0usize, 0usize);
    for l in leaps {
        n += 1;
        insert += usize::from(l == Leap::Insert);
        delete += usize::from(l == Leap::Delete);
    }
    let announced = if 2 * insert > n {
        Leap::Insert
    } else if 2 * delete > n {
        Leap::Delete
    } else {
        return Leap::None;
    };
    let unix_secs = reference.to_unix_nanos(pivot_unix_secs).div_euclid(1_000_000_000);
    let days = i64::try_from(unix_secs.div_euclid(86_400)).unwrap_or(0);
    if civil_from_days(days.saturating_add(1)).2 == 1 {
        announced
    } else {
        Leap::None
    }
}

/// (year, month, day) of a count of days since 1970-01-01, proleptic
/// Gregorian (the well-known era/day-of-era algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Engine for Ntp {
    type Start = Start;
    type Event = Event;
    type Action = Action;
    type Refusal = Refusal;

    fn start(start: Start, now: Instant, seed: [u8; 32], out: &mut Vec<Action>) -> Ntp {
        let mut ntp = Ntp::new(start, now, seed);
        if ntp.discipline.freq != 0 && !ntp.config.observe {
            out.push(Action::SetFrequency {
                scaled_ppm: ntp.discipline.freq,
            });
        }
        if ntp.sources.is_empty() && (ntp.resolutions.is_empty() || ntp.config.resolvers.is_empty()) {
            ntp.state = SyncState::NoSources;
        }
        ntp.on_timer(now, out);
        out.push(Action::PublishStatus(ntp.status()));
        ntp
    }

    fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) -> Result<(), Refusal> {
        Ntp::handle(self, now, event, out)
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        Ntp::on_timer(self, now, out);
    }

    fn poll_at(&self) -> Instant {
        Ntp::poll_at(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i64, m: u32, d: u32) -> i64 {
        // Days from 1970-01-01, by counting (test oracle independent of
        // civil_from_days).
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mdays = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut n = 0;
        for yy in 1970..y {
            n += if leap(yy) { 366 } else { 365 };
        }
        for mm in 1..m {
            n += mdays(y, mm);
        }
        n + i64::from(d) - 1
    }

    #[test]
    fn civil_dates_match_a_day_count() {
        for (y, m, d) in [
            (1970, 1, 1),
            (2000, 2, 29),
            (2016, 12, 31),
            (2036, 2, 7),
            (2100, 3, 1),
        ] {
            assert_eq!(civil_from_days(day(y, m, d)), (y, m, d));
        }
    }

    fn at(y: i64, m: u32, d: u32, secs: i64) -> NtpTimestamp {
        NtpTimestamp::from_unix_nanos(i128::from(day(y, m, d) * 86_400 + secs) * 1_000_000_000)
    }

    #[test]
    fn a_leap_is_armed_by_a_majority_and_only_on_the_last_day_of_a_month() {
        let pivot = crate::wire::DEFAULT_ERA_PIVOT_UNIX_SECS;
        let four = |k| (0..4).map(move |i| if i < k { Leap::Insert } else { Leap::None });
        // Announced on 1 May: nothing until 30 June.
        assert_eq!(armed_leap(four(4), at(2027, 5, 1, 0), pivot), Leap::None);
        assert_eq!(armed_leap(four(4), at(2027, 6, 30, 0), pivot), Leap::Insert);
        assert_eq!(armed_leap(four(4), at(2027, 6, 30, 86_399), pivot), Leap::Insert);
        assert_eq!(armed_leap(four(4), at(2027, 7, 1, 0), pivot), Leap::None);
        // One of four, or two of four, is not a majority.
        assert_eq!(armed_leap(four(1), at(2027, 6, 30, 0), pivot), Leap::None);
        assert_eq!(armed_leap(four(2), at(2027, 6, 30, 0), pivot), Leap::None);
        assert_eq!(armed_leap(four(3), at(2027, 12, 31, 0), pivot), Leap::Insert);
        // Deletion, on a 28-day February.
        let del = [Leap::Delete; 3].into_iter();
        assert_eq!(armed_leap(del, at(2027, 2, 28, 0), pivot), Leap::Delete);
    }
}
