//! Typed messages that cross MirageSDK process boundaries.
//!
//! Every role of a service (supervisor, network, engine, actuator) talks to the
//! others only with these types, one postcard-encoded value per
//! `SOCK_SEQPACKET` datagram of at most [`MAX_MESSAGE_LEN`] bytes. The same
//! types are the engine's sans-IO interface ([`EngineEvent`] in,
//! [`EngineAction`] out), so the engine does not know whether it runs in a
//! process, in a KVM guest, under a fuzzer or in a simulation.
//!
//! The lease policy ([`Lease::check`]) lives here too: the engine runs it
//! before it asks for anything, and the actuator runs the very same code again
//! on every request it gets, because it must assume the engine is compromised.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod policy;

use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use serde::{Deserialize, Serialize};

pub use policy::{Limits, Refusal, is_valid_domain_name};
pub use policy::{server_refusal, unicast_refusal};

/// Time for every engine: the contract's boot-clock milliseconds.
pub use mirage_engine::Instant;
pub use mirage_engine::codec::{CodecError, MAX_MESSAGE_LEN, decode, encode};

/// Largest Ethernet frame carried between the network role and the engine
/// (1500-byte payload, 14-byte header, one VLAN tag, slack for jumbo-less NICs
/// that hand us a few trailing bytes).
pub const MAX_FRAME_LEN: usize = 1536;

/// Lease time value meaning "infinite" (RFC 2131 section 3.3).
pub const INFINITE_LEASE: u32 = 0xffff_ffff;

/// One IPv4 route. `gateway == 0.0.0.0` means on-link (RFC 3442 section 3).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// What a DHCP server granted us, already decoded and sanity-checked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    /// 0..=32; from option 1, else the classful default.
    pub prefix_len: u8,
    /// Server identifier (option 54, else the reply's source address).
    pub server_id: Ipv4Addr,
    /// Routes to install, in order. Built from option 121 when present
    /// (option 3 then ignored, RFC 3442), else a default route via the first
    /// router of option 3. Host routes to gateways come first.
    pub routes: Vec<Route>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub ntp_servers: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
    /// Interface MTU (option 26), already clamped to 576..=65535.
    pub mtu: Option<u16>,
    /// Seconds; [`INFINITE_LEASE`] for infinite.
    pub lease_secs: u32,
    /// Renewal time T1, seconds after `acquired_at`.
    pub renew_secs: u32,
    /// Rebinding time T2, seconds after `acquired_at`.
    pub rebind_secs: u32,
    /// When the REQUEST that obtained this lease was sent (RFC 2131 4.4.1:
    /// the lease starts then, not when the ACK arrived).
    pub acquired_at: Instant,
}

impl Lease {
    /// When the lease expires, or [`Instant::NEVER`] for an infinite lease.
    pub fn expires_at(&self) -> Instant {
        if self.lease_secs == INFINITE_LEASE {
            Instant::NEVER
        } else {
            self.acquired_at.add_secs(u64::from(self.lease_secs))
        }
    }
    pub fn renew_at(&self) -> Instant {
        self.acquired_at.add_secs(u64::from(self.renew_secs))
    }
    pub fn rebind_at(&self) -> Instant {
        self.acquired_at.add_secs(u64::from(self.rebind_secs))
    }
    /// Whole seconds of validity left at `now` ([`INFINITE_LEASE`] if infinite).
    pub fn remaining_secs(&self, now: Instant) -> u32 {
        if self.lease_secs == INFINITE_LEASE {
            return INFINITE_LEASE;
        }
        let left_ms = self.expires_at().since(now);
        u32::try_from(left_ms / 1000).unwrap_or(INFINITE_LEASE - 1)
    }
    /// Network address of the leased prefix.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & prefix_mask(self.prefix_len))
    }
    /// Directed broadcast address of the leased prefix.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) | !prefix_mask(self.prefix_len))
    }
}

/// Netmask bits for a prefix length (values over 32 are treated as 32).
pub const fn prefix_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix_len)
    }
}

/// RFC 2131 section 4.4 client states, plus the conflict-detection step of
/// RFC 5227 between the ACK and BOUND.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientState {
    #[default]
    Init,
    Selecting,
    Requesting,
    /// RFC 5227 probing of the offered address before it is used.
    Probing,
    Bound,
    Renewing,
    Rebinding,
    InitReboot,
    Rebooting,
    /// Link carrier is down; the lease (if any) is kept.
    LinkDown,
    /// RELEASE sent or stop requested; the engine does nothing more.
    Stopped,
}

impl ClientState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientState::Init => "init",
            ClientState::Selecting => "selecting",
            ClientState::Requesting => "requesting",
            ClientState::Probing => "probing",
            ClientState::Bound => "bound",
            ClientState::Renewing => "renewing",
            ClientState::Rebinding => "rebinding",
            ClientState::InitReboot => "init-reboot",
            ClientState::Rebooting => "rebooting",
            ClientState::LinkDown => "link-down",
            ClientState::Stopped => "stopped",
        }
    }
}

/// RFC 5227 conflict-detection timings (milliseconds). The RFC's own values
/// (PROBE_WAIT 1 s, 3 probes 1-2 s apart, ANNOUNCE_WAIT 2 s) cost seconds at
/// boot; the defaults here keep the whole check under 300 ms, which still
/// catches any host that answers ARP on a LAN.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
// Also the `[acd]` table of configuration files: missing keys keep their
// defaults, unknown keys are errors.
#[serde(default, deny_unknown_fields)]
pub struct AcdConfig {
    pub enabled: bool,
    /// Random delay before the first probe: 0..=probe_wait_ms.
    pub probe_wait_ms: u32,
    pub probe_count: u8,
    /// Interval between probes: probe_min_ms..=probe_max_ms.
    pub probe_min_ms: u32,
    pub probe_max_ms: u32,
    /// Wait after the last probe before the address is taken.
    pub announce_wait_ms: u32,
    /// Gratuitous ARP announcements once bound (RFC 5227 2.3).
    pub announce_count: u8,
    pub announce_interval_ms: u32,
}

impl Default for AcdConfig {
    fn default() -> Self {
        AcdConfig {
            enabled: true,
            probe_wait_ms: 20,
            probe_count: 2,
            probe_min_ms: 50,
            probe_max_ms: 70,
            announce_wait_ms: 100,
            announce_count: 2,
            announce_interval_ms: 1000,
        }
    }
}

/// How the client identifies itself (option 61).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ClientIdKind {
    /// RFC 4361: type 255, IAID, DUID (the default).
    Duid { iaid: u32, duid: Vec<u8> },
    /// Type 1 (Ethernet) + MAC, for networks with MAC-based reservations.
    Mac,
}

/// Everything the engine is told once at start. Fixed for the engine's life.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    pub mac: [u8; 6],
    pub client_id: ClientIdKind,
    /// Option 12 (validated as a DNS label by the supervisor).
    pub hostname: Option<String>,
    /// Option 60, if configured.
    pub vendor_class: Option<String>,
    /// First retransmission timeout for DISCOVER/REQUEST (RFC 2131 4.1 says
    /// 4 s; fast LANs and clouds answer in milliseconds).
    pub first_retransmit_ms: u32,
    /// Cap of the exponential back-off (RFC 2131: 64 s).
    pub max_retransmit_ms: u32,
    /// Time spent trying to verify a stored lease (INIT-REBOOT) before DISCOVER.
    pub init_reboot_budget_ms: u32,
    pub acd: AcdConfig,
    pub limits: Limits,
    /// Send RELEASE when told to stop (default: keep the address).
    pub release_on_stop: bool,
    /// Shortest lease the client uses: a shorter one is taken as this long,
    /// and T1 / T2 are kept at or above half and 7/8 of it (dhcpcd's floor
    /// is 20 s). Bounds the renewal rate a server can impose.
    pub min_lease_secs: u32,
}

impl EngineConfig {
    /// A config with the documented defaults for an interface MAC.
    pub fn new(mac: [u8; 6], client_id: ClientIdKind) -> Self {
        EngineConfig {
            mac,
            client_id,
            hostname: None,
            vendor_class: None,
            first_retransmit_ms: 4000,
            max_retransmit_ms: 64_000,
            init_reboot_budget_ms: 2000,
            acd: AcdConfig::default(),
            limits: Limits::default(),
            release_on_stop: false,
            min_lease_secs: 20,
        }
    }
}

/// An input to the engine. Time comes with it (see [`ToEngine`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// A whole Ethernet frame from the wire. `checksum_offloaded` is set when
    /// the kernel marked it TP_STATUS_CSUMNOTREADY: its UDP checksum is not
    /// filled in yet and must not be verified.
    Frame {
        data: Vec<u8>,
        checksum_offloaded: bool,
    },
    /// Nothing happened; time moved on.
    Tick,
    LinkUp,
    LinkDown,
    /// The actuator's answer to the last intent of `kind`.
    IntentResult {
        kind: IntentKind,
        ok: bool,
    },
    /// Operator asked for a renewal now.
    Renew,
    /// Stop: RELEASE if configured (or `force_release`), then do nothing.
    Stop {
        force_release: bool,
    },
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntentKind {
    ApplyLease,
    RemoveLease,
    PersistLease,
    PublishStatus,
}

/// What the engine wants done. The engine never does anything itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EngineAction {
    /// Send this whole Ethernet frame (DHCP over UDP/IPv4, or ARP).
    Transmit(Vec<u8>),
    /// Configure the interface from this lease (address with kernel lifetimes
    /// of `valid_secs`, routes, MTU, resolv.conf). Idempotent: re-applying the
    /// same address must not remove it even briefly.
    ApplyLease { lease: Lease, valid_secs: u32 },
    /// Remove this lease's address and routes from the interface.
    RemoveLease { lease: Lease },
    /// Store this lease (or forget the stored one) for the next start.
    PersistLease(Option<Lease>),
    /// New state for status.json / metrics.
    PublishStatus(Status),
}

/// Monotonic counters kept by the engine (exported as metrics).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub frames_received: u64,
    pub frames_dropped: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub leases_refused: u64,
    pub renewals: u64,
    pub rebinds: u64,
    pub declines: u64,
    pub expiries: u64,
    pub transmitted: u64,
    pub conflicts: u64,
    /// Routes dropped from offers and ACKs by the lease policy (too short,
    /// into a reserved range, off-link, option 121 ignored...).
    pub routes_dropped: u64,
    /// Frames not sent because the engine's own rate bound was reached.
    pub transmits_limited: u64,
}

/// The engine's view, published whenever it changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub state: ClientState,
    pub lease: Option<Lease>,
    pub counters: Counters,
}

/// Why a frame was dropped; reported by the engine, logged and counted by the
/// caller. Bad input never panics.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not Ethernet/IPv4/UDP to port 68 (or ARP), or malformed framing.
    BadFrame,
    BadChecksum,
    /// A DHCP message that does not parse (truncated, option past the end...).
    BadDhcp,
    /// Not a reply to our transaction (xid, chaddr, client id, op).
    NotForUs,
    /// Valid, but not expected in the current state.
    Unexpected,
    /// A lease that fails the policy.
    Refused(Refusal),
}

/// What the DHCP engine is told once, at start (the contract's `Start`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EngineStart {
    pub config: EngineConfig,
    /// The lease read from the state directory, re-based onto this boot's
    /// clock by the supervisor.
    pub stored: Option<Lease>,
    /// Carrier at start; without it the engine waits for `LinkUp`.
    pub link_up: bool,
}

/// Supervisor -> engine role (the engine contract's envelope).
pub type ToEngine = mirage_engine::ToEngine<EngineStart, EngineEvent>;

/// Engine role -> supervisor: an action, or why an event was dropped.
pub type FromEngine = mirage_engine::FromEngine<EngineAction, DropReason>;

/// Supervisor -> network role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToNetwork {
    Transmit(Vec<u8>),
    /// What the actuator applied: the network role's only state from
    /// outside. Each one replaces the last.
    Binding(NetworkBinding),
}

/// An address of ours and the server that granted it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddress {
    pub address: Ipv4Addr,
    pub server: Ipv4Addr,
}

/// The network role's view of our address, kept by the supervisor from the
/// intents it forwards and the actuator's answers, never from the engine's
/// word alone.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetworkBinding {
    /// The address the actuator applied (ours until removed).
    pub bound: Option<BoundAddress>,
    /// An address the actuator is applying now: frames only it would allow
    /// (the RFC 5227 announcement that follows a bind) wait for the answer.
    pub applying: Option<BoundAddress>,
}

/// Network role -> supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FromNetwork {
    Frame {
        data: Vec<u8>,
        checksum_offloaded: bool,
    },
    /// An outbound frame failed the network role's check and was not sent.
    Refused {
        reason: String,
    },
    /// Outbound frames dropped by the network role's rate cap since its last
    /// report (at most one report a second).
    Capped {
        frames: u64,
    },
}

/// Supervisor -> actuator role: the engine's intents, forwarded unchanged.
/// The actuator re-checks every one against its own policy.
// A message lives only between its decode and its handling, one at a time:
// boxing the large variant would cost an allocation per status for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToActuator {
    Apply { lease: Lease, valid_secs: u32 },
    Remove { lease: Lease },
    Persist(Option<Lease>),
    Publish(PublishedStatus),
}

/// Status as the supervisor publishes it: the engine's view plus what only
/// the supervisor knows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishedStatus {
    pub status: Status,
    pub interface: String,
    /// "seccomp", "kvm" or "none": what is in force.
    pub sandbox: String,
    /// Why: what was asked for and, for `auto`, what decided.
    pub sandbox_reason: String,
    pub engine_restarts: u32,
    pub frames_refused: u64,
    pub intents_refused: u64,
    /// CLOCK_BOOTTIME now, to compute remaining lease time.
    pub now: Instant,
}

/// Actuator role -> supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FromActuator {
    Result { kind: IntentKind, outcome: Outcome },
    LinkUp,
    LinkDown,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The intent broke the policy; nothing was changed.
    Refused(Refusal),
    /// The kernel or file system said no (errno-like text).
    Failed(String),
}
