//! Sans-IO NTPv4 client engine (RFC 5905), for mirage-ntp.
//!
//! The engine is a deterministic state machine behind the MirageSDK engine
//! contract ([`mirage_engine::Engine`], implemented by [`Ntp`]): datagrams
//! and timestamps in, requests to send and typed clock intents out. It makes
//! no syscall and holds no clock: the boot clock comes with each call as an
//! [`Instant`] (ms of `CLOCK_BOOTTIME`, for its timers), and realtime comes
//! only as [`NtpTimestamp`]s stamped by the network role (for measurements).
//! The same code runs in a sandboxed process, in a KVM guest, under a
//! fuzzer, and in the virtual-time simulations of `tests/simulation.rs`.
//!
//! # One exchange
//! 1. The engine asks for [`Action::Send`]: 48 bytes to a source's address
//!    and port, whose transmit timestamp is 64 random bits (not the time:
//!    nothing leaks, and only someone who saw the request can answer it).
//! 2. The network role sends it, reads `CLOCK_REALTIME` as late as it can
//!    (or takes the kernel's transmit timestamp) and reports it:
//!    [`Event::Sent`] carries T1.
//! 3. A datagram comes back: [`Event::Received`] carries the bytes, the
//!    source address and port, and the kernel's receive timestamp T4
//!    (`SO_TIMESTAMPNS` or better).
//! 4. The engine checks it ([`source`]), files the sample in that source's
//!    clock filter, runs selection ([`select`]) and, with an estimate, the
//!    discipline ([`discipline`]), which asks for [`Action::Slew`],
//!    [`Action::SetFrequency`], [`Action::Step`], [`Action::SetStatus`] and
//!    [`Action::SaveDrift`]. The actuator checks each against its own policy
//!    and answers with [`Event::IntentResult`].
//!
//! # Sign conventions
//! Offsets (`offset_ns` in samples, estimates and [`Status`]) are the local
//! clock minus the reference: positive means the local clock is ahead. That
//! is the opposite sign of RFC 5905's theta. Intents carry `delta_ns`, what
//! to add to the clock, so a clock 5 ms ahead gets `Slew { delta_ns: -5 ms }`.
//!
//! # How many sources must agree
//! An estimate needs `min_agreeing` sources in the intersection's majority
//! (truechimers). The default ([`Config::quorum`]) is half the usable
//! sources plus one, at most 3: one source alone (the usual cloud set-up,
//! a link-local server) synchronises; two must agree with each other (two
//! that disagree give the status `not-enough-sources`, never a flip-flop
//! between them); three need two; four or more need three. So a network
//! attacker who silences some sources can never let a minority of the
//! configured ones steer the clock, while one- and two-server hosts still
//! synchronise. ntpd-rs's fixed 3 leaves one-server hosts unsynchronised;
//! chrony's 1 lets any single surviving source steer. `Config::min_agreeing`
//! overrides it.
//!
//! # Names
//! Sources are addresses: configured ([`Config::servers`]), learned from
//! DHCP option 42 ([`Event::DhcpServers`]), or resolved by the engine
//! itself from host names and pools ([`Config::names`], see [`names`]): it
//! builds the DNS queries, the network role only carries them to the
//! resolvers ([`Action::Resolve`], [`Event::Resolved`]), so no privileged
//! or unfiltered role ever parses DNS.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod discipline;
mod engine;
pub mod names;
pub mod select;
pub mod source;
pub mod wire;

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use engine::{Ntp, armed_leap, civil_from_days};
pub use mirage_engine::Instant;
use serde::{Deserialize, Serialize};
pub use wire::{Kiss, Leap, NtpTimestamp, WireError};

/// Servers known to smear leap seconds instead of announcing them (field
/// notes item 1): the Amazon Time Sync Service (169.254.169.123 and
/// fd00:ec2::123, docs.aws.amazon.com "configure-ec2-ntp") and Google's
/// metadata server (169.254.169.254, cloud.google.com "configure-ntp").
/// Around a leap they are up to 0.5 s away from non-smearing servers, by
/// design. (time.google.com and time.aws.com smear too; the table holds
/// addresses, so a source resolved from those names is not tagged.)
pub const SMEARING_SERVERS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 123)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x123)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
];

/// Whether `ip` is a server known to smear leap seconds.
pub fn smears(ip: IpAddr) -> bool {
    SMEARING_SERVERS.contains(&ip)
}

/// Most sources the engine keeps (configured first, then DHCP's and
/// those resolved from names, in the order they come).
pub const MAX_SOURCES: usize = 16;
/// The NTP port, for sources learned without one (DHCP option 42).
pub const NTP_PORT: u16 = 123;
/// Most names ([`Config::names`]) the engine resolves.
pub const MAX_NAMES: usize = 8;
/// Most resolvers the engine asks (resolv.conf's MAXNS).
pub const MAX_RESOLVERS: usize = 3;
/// Poll bounds the configuration may use (RFC 5905 MINPOLL 4, MAXPOLL 17).
pub const POLL_RANGE: core::ops::RangeInclusive<u8> = 4..=17;

/// The engine's configuration. Every field has a safe default; values out
/// of range are clamped at start ([`Config::sanitized`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub servers: Vec<SocketAddr>,
    /// Host names and pools the engine resolves itself (see [`names`]).
    pub names: Vec<NameConfig>,
    /// The resolvers asked for `names` (port 53, from resolv.conf).
    pub resolvers: Vec<SocketAddr>,
    /// Sources a pool gives, at most (default 4, 1 to 8).
    pub pool_sources: u8,
    /// Ask each query with its name's letters in random case and require
    /// the answer to echo them (0x20, draft-vixie-dnsext-dns0x20).
    pub dns_randomize_case: bool,
    /// Use the servers DHCP learned ([`Event::DhcpServers`]).
    pub use_dhcp_servers: bool,
    /// log2 s; default 6 (64 s), the least public servers expect (chrony's
    /// and the NTP pool's advice; field notes item 23).
    pub min_poll: u8,
    /// log2 s; default 10 (1024 s).
    pub max_poll: u8,
    /// Requests in a source's start-up burst, 2 s apart; default 4
    /// (0 or 1: no burst).
    pub burst: u8,
    /// Truechimers needed for an estimate; `None`: [`Config::quorum`].
    pub min_agreeing: Option<u8>,
    /// Largest root distance a reply or a source may have (RFC 5905
    /// MAXDIST, 1.5 s).
    pub max_distance_ns: i64,
    /// Offsets above this are stepped, not slewed (RFC 5905 STEPT, 128 ms:
    /// below it a 500 ppm slew takes at most 256 s).
    pub step_threshold_ns: u64,
    /// A later offset above the threshold is stepped only after no estimate
    /// has been taken for this long (RFC 5905 WATCH, 900 s).
    pub stepout_secs: u32,
    /// The frequency is saved at most this often (1 h).
    pub drift_save_secs: u32,
    /// Full dates (leap seconds) resolve to within 68 years of this
    /// ([`wire::DEFAULT_ERA_PIVOT_UNIX_SECS`]).
    pub era_pivot_unix_secs: i64,
    /// The last known good time (Unix seconds): a reply whose transmit
    /// time is before it is refused ([`Refusal::BeforeFloor`]), so no
    /// server can set the clock back past it (field notes item 13: the
    /// Oxide servers that served 1986). The service gives the later of its
    /// build floor and the time its state file was last saved.
    pub time_floor_unix_secs: Option<i64>,
    /// Measure and publish, never ask for a clock change.
    pub observe: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            servers: Vec::new(),
            names: Vec::new(),
            resolvers: Vec::new(),
            pool_sources: 4,
            dns_randomize_case: true,
            use_dhcp_servers: true,
            min_poll: 6,
            max_poll: 10,
            burst: 4,
            min_agreeing: None,
            max_distance_ns: 1_500_000_000,
            step_threshold_ns: 128_000_000,
            stepout_secs: 900,
            drift_save_secs: 3600,
            era_pivot_unix_secs: wire::DEFAULT_ERA_PIVOT_UNIX_SECS,
            time_floor_unix_secs: None,
            observe: false,
        }
    }
}

impl Config {
    /// The configuration with every value brought into range: polls within
    /// [`POLL_RANGE`] and ordered, at most [`MAX_SOURCES`] distinct servers,
    /// a burst of at most 8, distances and intervals positive.
    pub fn sanitized(mut self) -> Config {
        self.min_poll = self.min_poll.clamp(*POLL_RANGE.start(), *POLL_RANGE.end());
        self.max_poll = self.max_poll.clamp(self.min_poll, *POLL_RANGE.end());
        self.burst = self.burst.min(8);
        let mut seen = Vec::new();
        self.servers.retain(|s| {
            let new = !seen.contains(s);
            seen.push(*s);
            new
        });
        self.servers.truncate(MAX_SOURCES);
        let mut seen = Vec::new();
        self.names.retain(|n| {
            let key = (n.name.to_ascii_lowercase(), n.port, n.pool);
            let new = !seen.contains(&key) && dns_wire::Name::from_ascii(&n.name).is_ok();
            seen.push(key);
            new
        });
        self.names.truncate(MAX_NAMES);
        let mut seen = Vec::new();
        self.resolvers.retain(|r| {
            let new = !seen.contains(r);
            seen.push(*r);
            new
        });
        self.resolvers.truncate(MAX_RESOLVERS);
        self.pool_sources = self.pool_sources.clamp(1, 8);
        self.max_distance_ns = self.max_distance_ns.clamp(1_000_000, 16_000_000_000);
        self.step_threshold_ns = self.step_threshold_ns.max(1_000_000);
        self.stepout_secs = self.stepout_secs.max(16);
        self.drift_save_secs = self.drift_save_secs.max(60);
        self
    }

    /// A pause longer than this (ms) between a source's samples, or
    /// between estimates, is a gap: three maximum polls, at least the
    /// stepout. The host may have been suspended and its clock moved.
    pub fn gap_ms(&self) -> u64 {
        (3000u64 << self.max_poll).max(u64::from(self.stepout_secs) * 1000)
    }

    /// Whether the servers mix leap-smearing ones ([`smears`]) with others:
    /// around a leap the two groups disagree by up to 0.5 s and one looks
    /// like falsetickers (Google and GCP advise against it; field notes
    /// item 1). The service warns at start.
    pub fn mixes_smearing(&self) -> bool {
        let smearing = self.servers.iter().filter(|s| smears(s.ip())).count();
        smearing > 0 && smearing < self.servers.len()
    }

    /// Truechimers needed for an estimate among `usable` sources: the
    /// configured `min_agreeing`, else `min(3, usable / 2 + 1)` (see the
    /// crate docs), never 0.
    pub fn quorum(&self, usable: usize) -> usize {
        match self.min_agreeing {
            Some(n) => usize::from(n).max(1),
            None => (usable / 2 + 1).min(3),
        }
    }
}

/// A host name or pool to resolve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NameConfig {
    /// A domain name in text form (`pool.ntp.org`); names that do not
    /// parse ([`dns_wire::Name::from_ascii`]) are dropped at start.
    pub name: String,
    /// The NTP port of its servers.
    pub port: u16,
    /// A pool: up to [`Config::pool_sources`] of its addresses become
    /// sources. Otherwise one.
    pub pool: bool,
}

/// What the engine is told once, at start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Start {
    pub config: Config,
    /// The frequency saved by a previous run ([`Action::SaveDrift`]), in
    /// scaled ppm; set at once so a restart does not relearn it.
    pub drift: Option<i64>,
}

/// An intent the actuator answers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntentKind {
    Slew,
    SetFrequency,
    Step,
    SetStatus,
    SaveDrift,
}

/// What the engine is handed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A datagram from `from`, received when the realtime clock read `at`
    /// (T4, the kernel's receive timestamp).
    Received {
        from: SocketAddr,
        data: Vec<u8>,
        at: NtpTimestamp,
    },
    /// The request to `to` whose transmit timestamp is `transmit` left when
    /// the realtime clock read `at` (T1).
    Sent {
        to: SocketAddr,
        transmit: NtpTimestamp,
        at: NtpTimestamp,
    },
    /// The actuator's answer to an intent: applied, or refused / failed.
    IntentResult { kind: IntentKind, ok: bool },
    /// The NTP servers DHCP learned (option 42), the whole list each time.
    DhcpServers(Vec<IpAddr>),
    /// A datagram from `from` on the socket of DNS query `query` (see
    /// [`Action::Resolve`]).
    Resolved {
        query: u64,
        from: SocketAddr,
        data: Vec<u8>,
    },
    /// Nothing happened; due timers run.
    Tick,
    /// An operator accepted the held step (the actuator holds the
    /// acceptance and checks the step against it): when held, poll every
    /// source now and ask for the step at the next estimate instead of
    /// after the stepout. Otherwise nothing.
    StepAccepted,
    /// The network reaches `addr` again: it had no route to it (a host at
    /// boot before DHCP), so its requests went nowhere and its polls backed
    /// off. A new start-up burst for that source, now; an unknown address
    /// is ignored.
    RouteUp(SocketAddr),
}

/// What the kernel's clock status should say (adjtimex `status`,
/// `maxerror`, `esterror`): synchronised clears `STA_UNSYNC` so the
/// kernel's 11-minute RTC sync runs (field notes item 7).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelStatus {
    pub synchronized: bool,
    pub max_error_ns: i64,
    pub est_error_ns: i64,
    /// Armed only on the last day of a month (field notes item 8).
    pub leap: Leap,
}

/// What the engine asks for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `data` (one NTP request) to `to`; its transmit timestamp is
    /// `transmit`, to be echoed in [`Event::Sent`].
    Send {
        to: SocketAddr,
        transmit: NtpTimestamp,
        data: Vec<u8>,
    },
    /// Add `delta_ns` to the clock gradually, at
    /// [`discipline::SLEW_RATE_PPM`], replacing any slew in progress.
    Slew {
        delta_ns: i64,
    },
    /// Set the clock's frequency correction (ppm scaled by 2^16, within
    /// +-500 ppm).
    SetFrequency {
        scaled_ppm: i64,
    },
    /// Add `delta_ns` to the clock at once.
    Step {
        delta_ns: i64,
    },
    SetStatus(KernelStatus),
    /// Store the frequency for the next start.
    SaveDrift {
        scaled_ppm: i64,
    },
    PublishStatus(Status),
    /// Send `data` (one DNS query) to the resolver `to` from a fresh
    /// socket connected to it, and hand back what comes from it as
    /// [`Event::Resolved`] with the same `query`.
    Resolve {
        query: u64,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

/// Why an event was dropped (counted by the supervisor, never fatal).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not an NTP packet we accept (see [`wire`]).
    Malformed(WireError),
    /// From an address and port we sent no request to.
    UnknownSource,
    /// No request is waiting for a reply: a duplicate, a replay, a late
    /// reply to a superseded request.
    NotAwaited,
    /// Origin timestamp zero (the CVE-2015-8138 shape).
    ZeroOrigin,
    /// Origin timestamp is not the transmit timestamp we sent.
    WrongOrigin,
    /// Not mode 4 (server).
    WrongMode,
    /// Not version 3 or 4.
    WrongVersion,
    /// LI = 3 or stratum 16 and above: the server has no time to give.
    Unsynchronised,
    /// Stratum 0 with a kiss code we do not act on.
    UnknownKiss,
    /// Receive or transmit timestamp zero.
    ZeroTimestamp,
    /// T4 before T1, T3 before T2, or the server held it longer than the
    /// round trip.
    BadTimestamps,
    /// The network role never reported when the request left.
    NoTransmitTime,
    /// Root distance over [`Config::max_distance_ns`].
    RootDistance,
    /// Transmit time before [`Config::time_floor_unix_secs`].
    BeforeFloor,
    /// A [`Event::Sent`] for no request of ours.
    UnknownTransmit,
    /// [`Event::DhcpServers`] while [`Config::use_dhcp_servers`] is off.
    DhcpServersNotUsed,
    /// A DNS answer for no query in flight (late, duplicate, unknown).
    DnsNotAwaited,
    /// A DNS answer from another address or port than the query's resolver.
    DnsWrongSource,
    /// Not a DNS message [`dns_wire`] accepts.
    DnsMalformed,
    /// Not a response to the query: id, opcode or question (case
    /// included) differ.
    DnsMismatch,
}

impl Refusal {
    /// A stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed(WireError::Truncated) => "truncated",
            Refusal::Malformed(WireError::TooLong) => "too-long",
            Refusal::Malformed(WireError::BadTrailer) => "bad-trailer",
            Refusal::UnknownSource => "unknown-source",
            Refusal::NotAwaited => "not-awaited",
            Refusal::ZeroOrigin => "zero-origin",
            Refusal::WrongOrigin => "wrong-origin",
            Refusal::WrongMode => "wrong-mode",
            Refusal::WrongVersion => "wrong-version",
            Refusal::Unsynchronised => "unsynchronised",
            Refusal::UnknownKiss => "unknown-kiss",
            Refusal::ZeroTimestamp => "zero-timestamp",
            Refusal::BadTimestamps => "bad-timestamps",
            Refusal::NoTransmitTime => "no-transmit-time",
            Refusal::RootDistance => "root-distance",
            Refusal::BeforeFloor => "before-floor",
            Refusal::UnknownTransmit => "unknown-transmit",
            Refusal::DhcpServersNotUsed => "dhcp-servers-not-used",
            Refusal::DnsNotAwaited => "dns-not-awaited",
            Refusal::DnsWrongSource => "dns-wrong-source",
            Refusal::DnsMalformed => "dns-malformed",
            Refusal::DnsMismatch => "dns-mismatch",
        }
    }
}

/// Where a source came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SourceOrigin {
    Configured,
    Dhcp,
    /// Resolved from this configured host name.
    Server(String),
    /// Resolved from this configured pool.
    Pool(String),
}

impl SourceOrigin {
    /// The configured name, for the origins that have one.
    pub fn name(&self) -> Option<&str> {
        match self {
            SourceOrigin::Server(n) | SourceOrigin::Pool(n) => Some(n),
            SourceOrigin::Configured | SourceOrigin::Dhcp => None,
        }
    }
}

/// A source as status shows it (the states of issue 12's status JSON).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceState {
    /// Contributes to the estimate.
    Selected,
    /// Usable, agrees, but not combined (or no estimate was formed).
    Candidate,
    /// Outside the majority's intersection.
    Falseticker,
    /// No usable reply recently.
    Unreachable,
    /// Its last answer was a RATE kiss: polled less often.
    KodRate,
    /// DENY or RSTR: no longer polled.
    KodDeny,
    /// Answers, but LI = 3 or stratum 16.
    Unsynchronised,
}

impl SourceState {
    pub const fn as_str(self) -> &'static str {
        match self {
            SourceState::Selected => "selected",
            SourceState::Candidate => "candidate",
            SourceState::Falseticker => "falseticker",
            SourceState::Unreachable => "unreachable",
            SourceState::KodRate => "kod-rate",
            SourceState::KodDeny => "kod-deny",
            SourceState::Unsynchronised => "unsynchronised",
        }
    }
}

/// Where the engine stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// No estimate yet.
    Starting,
    /// Estimates are disciplining the clock.
    Synchronized,
    /// Sources answer, but fewer than the quorum agree.
    NotEnoughSources,
    /// A step was refused by the actuator: measuring on, asking again
    /// after the stepout interval.
    Held,
    /// `observe`: estimates are published, the clock is left alone.
    Observing,
    /// No source to ask (none configured, all denied).
    NoSources,
}

/// One source in [`Status`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    pub address: SocketAddr,
    pub origin: SourceOrigin,
    pub state: SourceState,
    pub offset_ns: i64,
    pub delay_ns: i64,
    pub jitter_ns: i64,
    pub stratum: u8,
    pub reach: u8,
    /// log2 s.
    pub poll: u8,
    pub requests: u64,
    /// A leap-smearing server ([`smears`]): its leap announcements are
    /// never armed.
    pub smearing: bool,
}

/// Running totals since start.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub requests: u64,
    pub samples: u64,
    pub kiss_rate: u64,
    pub kiss_deny: u64,
    pub steps_asked: u64,
    pub steps_refused: u64,
    pub intents_failed: u64,
}

/// What the engine publishes (status.json, metrics).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: SyncState,
    pub synchronized: bool,
    /// Local minus reference, at the last estimate.
    pub offset_ns: i64,
    pub jitter_ns: i64,
    pub root_delay_ns: i64,
    pub root_dispersion_ns: i64,
    pub frequency_scaled_ppm: i64,
    /// Ours: the system peer's plus one (16 with no estimate).
    pub stratum: u8,
    pub leap: Leap,
    /// System poll, log2 s.
    pub poll: u8,
    pub agreeing: u8,
    pub quorum: u8,
    pub sources: Vec<SourceStatus>,
    pub names: Vec<NameStatus>,
    pub counters: Counters,
}

/// One configured name in [`Status`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NameStatus {
    pub name: String,
    pub pool: bool,
    /// Its sources now.
    pub sources: u8,
    /// A lookup is in flight.
    pub resolving: bool,
    /// Lookups in a row that gave no address.
    pub failures: u32,
    /// Lookups sent since start.
    pub lookups: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smearing_servers_are_tagged_and_a_mix_is_told() {
        let at = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert!(smears(at("169.254.169.123:123").ip()));
        assert!(smears(at("[fd00:ec2::123]:123").ip()));
        assert!(smears(at("169.254.169.254:123").ip()));
        assert!(!smears(at("192.0.2.1:123").ip()));
        let config = |servers: &[&str]| Config {
            servers: servers.iter().map(|s| at(s)).collect(),
            ..Config::default()
        };
        // AWS's link-local server with a pool server: mixed.
        assert!(config(&["169.254.169.123:123", "192.0.2.1:123"]).mixes_smearing());
        // Both AWS addresses, or none smearing: consistent.
        assert!(!config(&["169.254.169.123:123", "[fd00:ec2::123]:123"]).mixes_smearing());
        assert!(!config(&["192.0.2.1:123", "192.0.2.2:123"]).mixes_smearing());
        assert!(!config(&[]).mixes_smearing());
    }
}
