//! Fuzz harness bodies, shared by the libFuzzer targets (`fuzz_targets/`)
//! and the AFL targets (`afl/`), so both fuzzers check the same invariants.
//!
//! Every entry point takes raw bytes and must accept any of them. The
//! structured target (`engine_events`) reads its bytes with a small total
//! decoder ([`EngineInput::from_bytes`]) that has an exact inverse
//! ([`EngineInput::to_bytes`]), so that checked-in seeds can be written as
//! readable scenarios (see `tests/seeds.rs`) and stay valid when the harness
//! changes. `engine_contract` hands its bytes to the SDK's generic engine
//! fuzz runner ([`mirage_engine::fuzz::drive`]) after a small header of the
//! same kind ([`ContractStart`]).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use dhcp_engine::Client;
use dhcp_engine::lease::lease_from_reply;
use dhcp_engine::wire::dhcp::Message;
use dhcp_engine::wire::frame::{BROADCAST_MAC, Inbound, build_arp_frame, build_udp_frame, parse_frame};
use mirage_ipc::{
    ClientIdKind, ClientState, Counters, EngineAction, EngineConfig, EngineEvent, EngineStart, FromActuator,
    FromEngine, FromNetwork, INFINITE_LEASE, Instant, IntentKind, Lease, Limits, MAX_FRAME_LEN, ToActuator,
    ToEngine, ToNetwork, decode, encode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---- frame_parse -----------------------------------------------------------

/// Whole inbound frames, exactly as the engine sees them: the first input
/// byte is the checksum-offload flag (bit 0, TP_STATUS_CSUMNOTREADY as the
/// network role forwards it), the rest is the Ethernet frame. Framing, then
/// the DHCP message, then the lease builder.
///
/// Invariants: no panic; the frame builders and the parser agree (what
/// parses, rebuilt from its fields, parses to the same fields with the
/// checksum verified); whatever lease the builder returns passes the policy
/// the actuator enforces.
pub fn frame_parse(data: &[u8]) {
    let Some((&flag, frame)) = data.split_first() else {
        return;
    };
    match parse_frame(frame, flag & 1 == 1) {
        Ok(Inbound::Dhcp(udp)) => {
            let rebuilt = build_udp_frame(
                udp.src_mac,
                udp.dst_mac,
                udp.src_ip,
                udp.dst_ip,
                udp.src_port,
                udp.dst_port,
                udp.payload,
            );
            assert_eq!(
                parse_frame(&rebuilt, false),
                Ok(Inbound::Dhcp(udp)),
                "a rebuilt UDP frame does not parse back"
            );
            let Ok(msg) = Message::parse(udp.payload) else {
                return;
            };
            if let Ok(lease) = lease_from_reply(&msg, udp.src_ip, Instant(1000), &Limits::default()) {
                // Whatever the builder accepts, the policy accepts.
                assert_eq!(lease.check(&Limits::default()), Ok(()));
                assert_eq!(
                    lease.address, msg.yiaddr,
                    "the lease is not for the offered address"
                );
            }
        }
        Ok(Inbound::Arp(arp)) => {
            let rebuilt = build_arp_frame(&arp, BROADCAST_MAC);
            assert_eq!(
                parse_frame(&rebuilt, false),
                Ok(Inbound::Arp(arp)),
                "a rebuilt ARP frame does not parse back"
            );
        }
        Err(_) => {}
    }
}

// ---- dhcp_roundtrip --------------------------------------------------------

/// DHCP payloads. Invariants: decode -> encode -> decode -> encode gives the
/// same bytes twice (whatever we parse we can write back, and a second pass
/// changes nothing), and the fixed header survives the first pass unchanged
/// (only option values may be normalized, e.g. invalid names dropped).
pub fn dhcp_roundtrip(data: &[u8]) {
    let Ok(first) = Message::parse(data) else {
        return;
    };
    let mut bytes = Vec::new();
    first.encode(&mut bytes);
    let second = Message::parse(&bytes).expect("our own encoding parses");
    let mut again = Vec::new();
    second.encode(&mut again);
    assert_eq!(bytes, again, "encoding is not stable");
    let header = |m: &Message| {
        (
            (m.op, m.htype, m.hlen, m.hops, m.xid, m.secs, m.broadcast),
            (m.ciaddr, m.yiaddr, m.siaddr, m.giaddr, m.chaddr),
            m.options.message_type,
        )
    };
    assert_eq!(header(&first), header(&second), "the fixed header changed");
}

// ---- engine_events ---------------------------------------------------------

/// The client's MAC in `engine_events` (locally administered).
pub const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
/// The server's MAC in `engine_events`.
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
/// At most this many steps of one input are run (keeps every input fast).
pub const MAX_STEPS: usize = 256;
/// Option bytes of one reply are cut to this (the reply then fits one
/// Ethernet frame, as it would on the wire).
pub const MAX_REPLY_OPTIONS: usize = 1200;
/// Time advance per step is taken modulo this (ms, about 66 minutes), so
/// that a few hundred steps span a day of lease life.
pub const MAX_ADVANCE_MS: u32 = 4_000_000;
/// Actions one step may produce before we call the output unbounded.
pub const MAX_ACTIONS_PER_STEP: usize = 64;

/// A lease stored by a previous run, handed to `Client::new`:
/// 10.0.0.`host`/24 from server 10.0.0.1, acquired at time 0, `secs` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredLease {
    pub host: u8,
    pub secs: u16,
}

impl StoredLease {
    pub fn lease(self) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 0, self.host.clamp(2, 254)),
            prefix_len: 24,
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            routes: vec![],
            dns_servers: vec![],
            ntp_servers: vec![],
            domain_name: None,
            search: vec![],
            hostname: None,
            mtu: None,
            lease_secs: u32::from(self.secs).max(1),
            renew_secs: u32::from(self.secs) / 2,
            rebind_secs: u32::from(self.secs) * 7 / 8,
            acquired_at: Instant(0),
        }
    }
}

/// One event of an `engine_events` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A BOOTREPLY shaped to the engine's current transaction (its last xid,
    /// our chaddr), option 53 = `msg_type` first, then `options`, then END;
    /// sent from `server` (IP) and [`SERVER_MAC`] to our MAC, UDP 67 -> 68.
    Reply {
        msg_type: u8,
        yiaddr: [u8; 4],
        server: [u8; 4],
        offloaded: bool,
        options: Vec<u8>,
    },
    /// Any bytes, as a frame.
    RawFrame(Vec<u8>),
    /// An ARP packet from [`SERVER_MAC`] (conflict detection and defence).
    Arp {
        request: bool,
        sender_ip: [u8; 4],
        target_ip: [u8; 4],
    },
    Tick,
    LinkUp,
    LinkDown,
    /// The actuator's answer to an intent.
    Intent {
        kind: IntentKind,
        ok: bool,
    },
    Renew,
    Stop {
        release: bool,
    },
}

/// A whole `engine_events` input: the engine's start, then timed steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInput {
    pub seed: [u8; 32],
    /// RFC 5227 conflict detection on (with the default short timings).
    pub acd: bool,
    pub stored: Option<StoredLease>,
    /// (milliseconds to advance before the step, step).
    pub steps: Vec<(u32, Step)>,
}

/// Reads bytes front to back; past the end every read yields zeros, so any
/// byte string decodes to some input (libFuzzer's mutations never waste an
/// execution on a parse error).
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        core::array::from_fn(|_| self.u8())
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    /// A length-prefixed (u16 LE) byte string, cut at the end of the data.
    fn bytes(&mut self) -> Vec<u8> {
        let len = usize::from(self.u16()).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken.to_vec()
    }
}

// Step opcodes of the byte format (an opcode is read modulo STEP_KINDS).
const OP_REPLY: u8 = 0;
const OP_RAW: u8 = 1;
const OP_ARP: u8 = 2;
const OP_TICK: u8 = 3;
const OP_LINK_UP: u8 = 4;
const OP_LINK_DOWN: u8 = 5;
const OP_INTENT: u8 = 6;
const OP_RENEW: u8 = 7;
const OP_STOP: u8 = 8;
const STEP_KINDS: u8 = 9;

const INTENT_KINDS: [IntentKind; 4] = [
    IntentKind::ApplyLease,
    IntentKind::RemoveLease,
    IntentKind::PersistLease,
    IntentKind::PublishStatus,
];

impl EngineInput {
    /// Decode the byte format:
    /// `seed[32] flags(bit0 acd, bit1 stored) host secs:u16le`, then steps
    /// `op advance:u32le` followed by the step's fields (lengths u16le).
    /// Total: every byte string is some input.
    pub fn from_bytes(data: &[u8]) -> EngineInput {
        let mut r = Reader { data };
        let seed = r.array();
        let flags = r.u8();
        let host = r.u8();
        let secs = r.u16();
        let stored = (flags & 2 != 0).then_some(StoredLease { host, secs });
        let mut steps = Vec::new();
        while !r.data.is_empty() && steps.len() < MAX_STEPS {
            let op = r.u8() % STEP_KINDS;
            let advance = r.u32();
            let step = match op {
                OP_REPLY => {
                    let msg_type = r.u8();
                    let yiaddr = r.array();
                    let server = r.array();
                    let offloaded = r.u8() & 1 != 0;
                    Step::Reply {
                        msg_type,
                        yiaddr,
                        server,
                        offloaded,
                        options: r.bytes(),
                    }
                }
                OP_RAW => Step::RawFrame(r.bytes()),
                OP_ARP => Step::Arp {
                    request: r.u8() & 1 != 0,
                    sender_ip: r.array(),
                    target_ip: r.array(),
                },
                OP_TICK => Step::Tick,
                OP_LINK_UP => Step::LinkUp,
                OP_LINK_DOWN => Step::LinkDown,
                OP_INTENT => Step::Intent {
                    kind: INTENT_KINDS[usize::from(r.u8() % 4)],
                    ok: r.u8() & 1 != 0,
                },
                OP_RENEW => Step::Renew,
                _ => Step::Stop {
                    release: r.u8() & 1 != 0,
                },
            };
            steps.push((advance, step));
        }
        EngineInput {
            seed,
            acd: flags & 1 != 0,
            stored,
            steps,
        }
    }

    /// The exact inverse of [`EngineInput::from_bytes`] for inputs of at
    /// most [`MAX_STEPS`] steps whose byte strings fit a u16 length.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
            let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&b[..usize::from(len)]);
        }
        let mut out = self.seed.to_vec();
        let stored = self.stored.unwrap_or(StoredLease { host: 0, secs: 0 });
        out.push(u8::from(self.acd) | (u8::from(self.stored.is_some()) << 1));
        out.push(stored.host);
        out.extend_from_slice(&stored.secs.to_le_bytes());
        for (advance, step) in &self.steps {
            let op = match step {
                Step::Reply { .. } => OP_REPLY,
                Step::RawFrame(_) => OP_RAW,
                Step::Arp { .. } => OP_ARP,
                Step::Tick => OP_TICK,
                Step::LinkUp => OP_LINK_UP,
                Step::LinkDown => OP_LINK_DOWN,
                Step::Intent { .. } => OP_INTENT,
                Step::Renew => OP_RENEW,
                Step::Stop { .. } => OP_STOP,
            };
            out.push(op);
            out.extend_from_slice(&advance.to_le_bytes());
            match step {
                Step::Reply {
                    msg_type,
                    yiaddr,
                    server,
                    offloaded,
                    options,
                } => {
                    out.push(*msg_type);
                    out.extend_from_slice(yiaddr);
                    out.extend_from_slice(server);
                    out.push(u8::from(*offloaded));
                    put_bytes(&mut out, options);
                }
                Step::RawFrame(data) => put_bytes(&mut out, data),
                Step::Arp {
                    request,
                    sender_ip,
                    target_ip,
                } => {
                    out.push(u8::from(*request));
                    out.extend_from_slice(sender_ip);
                    out.extend_from_slice(target_ip);
                }
                Step::Intent { kind, ok } => {
                    let k = INTENT_KINDS.iter().position(|x| x == kind).unwrap_or(0);
                    out.push(k as u8);
                    out.push(u8::from(*ok));
                }
                Step::Stop { release } => out.push(u8::from(*release)),
                Step::Tick | Step::LinkUp | Step::LinkDown | Step::Renew => {}
            }
        }
        out
    }
}

/// What one `engine_events` run went through; tests use it to show that the
/// seeds reach the states they were written for.
#[derive(Clone, Debug, Default)]
pub struct EngineTrace {
    /// States seen after each step, each listed once, in order of first visit.
    pub states: Vec<ClientState>,
    pub applied: usize,
    pub removed: usize,
    pub transmitted: usize,
    pub counters: Counters,
}

/// The BOOTREPLY payload of a [`Step::Reply`].
pub fn reply_payload(xid: [u8; 4], msg_type: u8, yiaddr: [u8; 4], options: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 2; // BOOTREPLY
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid);
    p[16..20].copy_from_slice(&yiaddr);
    p[28..34].copy_from_slice(&MAC);
    p.extend_from_slice(&[99, 130, 83, 99, 53, 1, msg_type]);
    p.extend_from_slice(&options[..options.len().min(MAX_REPLY_OPTIONS)]);
    p.push(255);
    p
}

/// An Ethernet ARP frame from [`SERVER_MAC`], broadcast.
pub fn arp_frame(request: bool, sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, if request { 1 } else { 2 }]);
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

/// Checks on every frame the engine asks to send: the shapes the network
/// role lets through (DESIGN.md section 3: our MAC, UDP 68 -> 67 or ARP as
/// us, size bound). A frame outside them would be refused on the way out,
/// i.e. an engine bug. Returns the xid of a DHCP frame; panics on a frame
/// outside those shapes.
pub fn check_transmit(f: &[u8]) -> Option<[u8; 4]> {
    assert!(
        (42..=MAX_FRAME_LEN).contains(&f.len()),
        "transmit of {} bytes",
        f.len()
    );
    assert_eq!(f[6..12], MAC, "transmit from a foreign MAC");
    match [f[12], f[13]] {
        // RFC 826 Ethernet/IPv4 ARP, request or reply, sent as us.
        [8, 6] => {
            assert_eq!(f[14..20], [0, 1, 8, 0, 6, 4], "ARP not Ethernet/IPv4");
            assert!(matches!(f[20..22], [0, 1] | [0, 2]), "ARP opcode");
            assert_eq!(f[22..28], MAC, "ARP sender is not us");
            None
        }
        [8, 0] => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let udp = 14 + ihl;
            let dhcp = udp + 8;
            assert!(f[14] >> 4 == 4 && ihl >= 20, "bad IPv4 header");
            assert_eq!(f[23], 17, "IPv4 but not UDP");
            assert!(f.len() >= dhcp + 240, "DHCP message too short");
            assert_eq!(f[udp..udp + 4], [0, 68, 0, 67], "not UDP 68 -> 67");
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            assert_eq!(14 + total, f.len(), "IPv4 length disagrees with the frame");
            // BOOTREQUEST with our chaddr (RFC 2131 section 2).
            assert_eq!(f[dhcp], 1, "client sent a BOOTREPLY");
            assert_eq!(f[dhcp + 28..dhcp + 34], MAC, "chaddr is not ours");
            Some([f[dhcp + 4], f[dhcp + 5], f[dhcp + 6], f[dhcp + 7]])
        }
        other => panic!("transmit of ethertype {other:02x?}"),
    }
}

/// Run one input, asserting the invariants at every step:
/// - no panic; at most [`MAX_ACTIONS_PER_STEP`] actions per step;
/// - every transmitted frame is one the network role would pass, and none
///   once stopped;
/// - no ApplyLease / PersistLease / PublishStatus of a lease the policy
///   refuses, no lease that starts in the future, no kernel lifetime longer
///   than the lease;
/// - RemoveLease only of an address that was applied (or stored);
/// - after each step (and the wake-up it asked for, handled as a real loop
///   would), the next wake-up is finite and in the future unless stopped,
///   and `Instant::NEVER` once stopped.
pub fn run_engine_events(input: &EngineInput) -> EngineTrace {
    let mut config = EngineConfig::new(MAC, ClientIdKind::Mac);
    config.acd.enabled = input.acd;
    let limits = config.limits;
    let stored = input.stored.map(StoredLease::lease);
    // Addresses the engine may legitimately ask to remove.
    let mut applied: HashSet<Ipv4Addr> = stored.iter().map(|l| l.address).collect();
    let mut now = Instant(1_000);
    let mut client = Client::new(config, stored, now, input.seed);
    let mut trace = EngineTrace::default();
    let mut out = Vec::new();
    let mut xid = [0u8; 4];
    let mut stopped = false;

    let mut check = |out: &mut Vec<EngineAction>,
                     now: Instant,
                     stopped_before: bool,
                     xid: &mut [u8; 4],
                     trace: &mut EngineTrace| {
        assert!(
            out.len() <= MAX_ACTIONS_PER_STEP,
            "unbounded output: {} actions",
            out.len()
        );
        mirage_engine::fuzz::check_actions::<Client>(out);
        for a in out.drain(..) {
            match a {
                EngineAction::Transmit(f) => {
                    assert!(!stopped_before, "transmit after stop");
                    trace.transmitted += 1;
                    if let Some(x) = check_transmit(&f) {
                        *xid = x;
                    }
                }
                EngineAction::ApplyLease { lease, valid_secs } => {
                    assert_eq!(lease.check(&limits), Ok(()), "applied a refused lease");
                    assert!(lease.acquired_at <= now, "lease starts in the future");
                    assert!(lease.lease_secs == INFINITE_LEASE || valid_secs <= lease.lease_secs);
                    applied.insert(lease.address);
                    trace.applied += 1;
                }
                EngineAction::RemoveLease { lease } => {
                    assert!(
                        applied.contains(&lease.address),
                        "removed an address never applied"
                    );
                    trace.removed += 1;
                }
                EngineAction::PersistLease(Some(lease)) => {
                    assert_eq!(lease.check(&limits), Ok(()), "persisted a refused lease");
                }
                EngineAction::PublishStatus(status) => {
                    if let Some(lease) = status.lease {
                        assert_eq!(lease.check(&limits), Ok(()), "published a refused lease");
                    }
                }
                EngineAction::PersistLease(None) => {}
            }
        }
    };

    let _ = client.handle(now, EngineEvent::Tick, &mut out);
    check(&mut out, now, false, &mut xid, &mut trace);
    for (advance, step) in &input.steps {
        now = now.add_millis(u64::from(advance % MAX_ADVANCE_MS));
        let stopped_before = stopped;
        let event = match step {
            Step::Reply {
                msg_type,
                yiaddr,
                server,
                offloaded,
                options,
            } => EngineEvent::Frame {
                data: build_udp_frame(
                    SERVER_MAC,
                    MAC,
                    Ipv4Addr::from(*server),
                    Ipv4Addr::BROADCAST,
                    67,
                    68,
                    &reply_payload(xid, *msg_type, *yiaddr, options),
                ),
                checksum_offloaded: *offloaded,
            },
            Step::RawFrame(data) => EngineEvent::Frame {
                data: data.clone(),
                checksum_offloaded: false,
            },
            Step::Arp {
                request,
                sender_ip,
                target_ip,
            } => EngineEvent::Frame {
                data: arp_frame(*request, *sender_ip, *target_ip),
                checksum_offloaded: false,
            },
            Step::Tick => EngineEvent::Tick,
            Step::LinkUp => EngineEvent::LinkUp,
            Step::LinkDown => EngineEvent::LinkDown,
            Step::Intent { kind, ok } => EngineEvent::IntentResult { kind: *kind, ok: *ok },
            Step::Renew => EngineEvent::Renew,
            Step::Stop { release } => {
                stopped = true;
                EngineEvent::Stop {
                    force_release: *release,
                }
            }
        };
        let _ = client.handle(now, event, &mut out);
        // Honour the wake-up the engine asked for, as a real loop would.
        if client.poll_at() <= now {
            let _ = client.handle(now, EngineEvent::Tick, &mut out);
        }
        check(&mut out, now, stopped_before, &mut xid, &mut trace);
        let due = client.poll_at();
        if stopped {
            assert_eq!(client.state(), ClientState::Stopped, "not stopped after Stop");
            assert_eq!(due, Instant::NEVER, "a stopped engine asks to wake up");
        } else {
            assert!(due != Instant::NEVER, "no wake-up while running");
            mirage_engine::fuzz::check_wake(&client, now);
        }
        if !trace.states.contains(&client.state()) {
            trace.states.push(client.state());
        }
    }
    trace.counters = client.counters();
    trace
}

/// The engine fed event sequences, with replies shaped to match its last
/// transaction (right xid and chaddr) so that the fuzzer reaches every state,
/// not only the drop paths. See [`run_engine_events`] for the invariants.
pub fn engine_events(data: &[u8]) {
    run_engine_events(&EngineInput::from_bytes(data));
}

// ---- engine_contract ---------------------------------------------------------

/// Length of the header [`ContractStart::from_bytes`] reads.
pub const CONTRACT_HEADER_LEN: usize = 38;

/// The start of an `engine_contract` input: what the supervisor would send
/// the engine (`EngineStart` and the seed), within the ranges the config
/// loader accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContractStart {
    pub seed: [u8; 32],
    /// RFC 5227 conflict detection on (with the default short timings).
    pub acd: bool,
    /// Carrier at start; without it the engine waits for `LinkUp`.
    pub link_up: bool,
    /// RFC 4361 DUID client id (else the MAC, type 1).
    pub duid: bool,
    /// Option 12 sent.
    pub hostname: bool,
    pub release_on_stop: bool,
    pub stored: Option<StoredLease>,
    /// First retransmission timeout: 10 + this modulo 63,991 ms (the
    /// config's range is 10..=64000).
    pub retransmit: u16,
}

impl ContractStart {
    /// Decode the header, `seed[32] flags host secs:u16le retransmit:u16le`
    /// (flags: bit 0 ACD, 1 stored lease, 2 carrier, 3 DUID, 4 hostname,
    /// 5 release on stop), and return the rest: the steps for
    /// [`mirage_engine::fuzz::drive`]. Total, like [`EngineInput::from_bytes`].
    pub fn from_bytes(data: &[u8]) -> (ContractStart, &[u8]) {
        let mut r = Reader { data };
        let seed = r.array();
        let flags = r.u8();
        let host = r.u8();
        let secs = r.u16();
        let retransmit = r.u16();
        let start = ContractStart {
            seed,
            acd: flags & 1 != 0,
            stored: (flags & 2 != 0).then_some(StoredLease { host, secs }),
            link_up: flags & 4 != 0,
            duid: flags & 8 != 0,
            hostname: flags & 16 != 0,
            release_on_stop: flags & 32 != 0,
            retransmit,
        };
        (start, r.data)
    }

    /// The exact inverse of [`ContractStart::from_bytes`]'s header.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.seed.to_vec();
        let stored = self.stored.unwrap_or(StoredLease { host: 0, secs: 0 });
        let flags = [
            self.acd,
            self.stored.is_some(),
            self.link_up,
            self.duid,
            self.hostname,
            self.release_on_stop,
        ]
        .iter()
        .enumerate()
        .fold(0u8, |f, (bit, on)| f | (u8::from(*on) << bit));
        out.push(flags);
        out.push(stored.host);
        out.extend_from_slice(&stored.secs.to_le_bytes());
        out.extend_from_slice(&self.retransmit.to_le_bytes());
        out
    }

    pub fn engine_start(&self) -> EngineStart {
        let client_id = if self.duid {
            ClientIdKind::Duid {
                iaid: 7,
                duid: vec![0, 4, 1, 2, 3, 4, 5, 6, 7, 8],
            }
        } else {
            ClientIdKind::Mac
        };
        let mut config = EngineConfig::new(MAC, client_id);
        config.acd.enabled = self.acd;
        config.hostname = self.hostname.then(|| "node-1".into());
        config.release_on_stop = self.release_on_stop;
        config.first_retransmit_ms = 10 + u32::from(self.retransmit) % 63_991;
        EngineStart {
            config,
            stored: self.stored.map(StoredLease::lease),
            link_up: self.link_up,
        }
    }
}

/// The DHCP engine under the SDK's generic engine fuzz runner: arbitrary
/// timed events (postcard-encoded `EngineEvent`s, timer runs, jumps to the
/// engine's wake-up) after a start built from the header. Invariants are
/// the contract's (see [`mirage_engine::fuzz::drive`]): every action encodes
/// within the message cap, and after its timers ran the engine does not ask
/// to be woken again at once. Returns the number of actions.
pub fn run_engine_contract(data: &[u8]) -> usize {
    let (start, steps) = ContractStart::from_bytes(data);
    mirage_engine::fuzz::drive::<Client>(start.engine_start(), start.seed, steps)
}

pub fn engine_contract(data: &[u8]) {
    run_engine_contract(data);
}

// ---- ipc_decode ------------------------------------------------------------

/// What decodes must re-encode (within the size cap) and decode to the same
/// value: the supervisor re-encodes what it forwards to the actuator.
fn decodes_stably<T: Serialize + DeserializeOwned + PartialEq + core::fmt::Debug>(data: &[u8]) -> Option<T> {
    let value: T = decode(data).ok()?;
    let bytes = encode(&value).expect("a decoded message re-encodes");
    let again: T = decode(&bytes).expect("our own encoding decodes");
    assert_eq!(again, value, "re-encoding changed the message");
    Some(value)
}

/// Every lease method the supervisor and actuator call on a lease they were
/// sent; none may panic, whatever the fields.
fn exercise_lease(lease: &Lease) {
    let _ = lease.check(&Limits::default());
    let _ = (lease.expires_at(), lease.renew_at(), lease.rebind_at());
    let _ = (
        lease.remaining_secs(Instant(0)),
        lease.remaining_secs(Instant::NEVER),
    );
    let _ = (lease.network(), lease.broadcast());
}

/// Bytes read off an IPC channel. The supervisor and the actuator decode what
/// a compromised engine (or network role) wrote; the engine decodes what the
/// supervisor sent. Invariants: no panic; what decodes re-encodes to the same
/// value; every lease inside is checked by the policy without panicking; an
/// engine started from any decodable `Start` takes its first steps without
/// panicking.
pub fn ipc_decode(data: &[u8]) {
    match decodes_stably::<ToActuator>(data) {
        Some(ToActuator::Apply { lease, .. } | ToActuator::Remove { lease }) => exercise_lease(&lease),
        Some(ToActuator::Persist(Some(lease))) => exercise_lease(&lease),
        Some(ToActuator::Publish(p)) => p.status.lease.iter().for_each(exercise_lease),
        Some(ToActuator::Persist(None)) | None => {}
    }
    match decodes_stably::<FromEngine>(data) {
        Some(FromEngine::Action(
            EngineAction::ApplyLease { lease, .. }
            | EngineAction::RemoveLease { lease }
            | EngineAction::PersistLease(Some(lease)),
        )) => exercise_lease(&lease),
        Some(FromEngine::Action(EngineAction::PublishStatus(s))) => s.lease.iter().for_each(exercise_lease),
        _ => {}
    }
    let _ = decodes_stably::<FromActuator>(data);
    let _ = decodes_stably::<FromNetwork>(data);
    let _ = decodes_stably::<ToNetwork>(data);
    if let Some(ToEngine::Start { start, seed }) = decodes_stably::<ToEngine>(data) {
        use mirage_engine::Engine as _;
        let now = Instant(1_000);
        let mut out = Vec::new();
        let mut client = Client::start(start, now, seed, &mut out);
        let later = client.poll_at().max(now);
        client.on_timer(later, &mut out);
        mirage_engine::fuzz::check_actions::<Client>(&out);
    }
}

// ---- ntp_wire ----------------------------------------------------------------

/// NTP datagrams through the NTP engine's codec. Invariants: no panic;
/// whatever `Packet::new_checked` accepts decodes, and the header emitted
/// from the decoded `Repr` is the input's header byte for byte; timestamp
/// differences and shifts are inverse (within a nanosecond of rounding).
pub fn ntp_wire(data: &[u8]) {
    use ntp_engine::wire::{HEADER_LEN, Packet, Repr};
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let repr = Repr::parse(&packet).expect("a checked packet decodes");
    assert_eq!(
        repr.to_bytes()[..],
        data[..HEADER_LEN],
        "emit is not parse's inverse"
    );
    let d = repr.transmit.diff_nanos(repr.receive);
    let back = repr.receive.add_nanos(d);
    assert!(back.diff_nanos(repr.transmit).abs() <= 1, "diff and add disagree");
    let _ = repr.kiss();
    let _ = repr.root_delay.to_nanos() + repr.root_dispersion.to_nanos();
}

// ---- ntp_engine --------------------------------------------------------------

/// Length of the header [`NtpStart::from_bytes`] reads.
pub const NTP_HEADER_LEN: usize = 37;

/// The start of an `ntp_engine` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NtpStart {
    pub seed: [u8; 32],
    pub observe: bool,
    pub use_dhcp: bool,
    /// 1 to 4 servers, 192.0.2.1:123 on.
    pub servers: u8,
    /// 4 + this modulo 7 (the range the engine clamps to starts at 4).
    pub min_poll: u8,
    /// A stored frequency, ppm (any i16: beyond +-500 it must be refused).
    pub drift_ppm: Option<i16>,
    /// The pool `pool.test` resolved through [`NTP_RESOLVER`].
    pub pool: bool,
}

/// The resolver of an `ntp_engine` input with a pool.
pub const NTP_RESOLVER: ([u8; 4], u16) = ([192, 0, 2, 53], 53);

impl NtpStart {
    /// Decode `seed[32] flags servers min_poll drift:i16le` (flags: bit 0
    /// observe, 1 DHCP servers used, 2 stored drift, 3 a pool) and return the rest,
    /// the steps for [`mirage_engine::fuzz::drive`]. Total.
    pub fn from_bytes(data: &[u8]) -> (NtpStart, &[u8]) {
        let mut r = Reader { data };
        let seed = r.array();
        let flags = r.u8();
        let servers = r.u8();
        let min_poll = r.u8();
        let drift = r.u16() as i16;
        let start = NtpStart {
            seed,
            observe: flags & 1 != 0,
            use_dhcp: flags & 2 != 0,
            servers,
            min_poll,
            drift_ppm: (flags & 4 != 0).then_some(drift),
            pool: flags & 8 != 0,
        };
        (start, r.data)
    }

    /// The exact inverse of [`NtpStart::from_bytes`]'s header.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.seed.to_vec();
        out.push(
            u8::from(self.observe)
                | u8::from(self.use_dhcp) << 1
                | u8::from(self.drift_ppm.is_some()) << 2
                | u8::from(self.pool) << 3,
        );
        out.push(self.servers);
        out.push(self.min_poll);
        out.extend_from_slice(&self.drift_ppm.unwrap_or(0).to_le_bytes());
        out
    }

    /// The server addresses the engine is configured with.
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        (0..=self.servers % 4)
            .map(|i| std::net::SocketAddr::new([192, 0, 2, i + 1].into(), 123))
            .collect()
    }

    pub fn engine_start(&self) -> ntp_engine::Start {
        let config = ntp_engine::Config {
            servers: self.addresses(),
            use_dhcp_servers: self.use_dhcp,
            min_poll: 4 + self.min_poll % 7,
            observe: self.observe,
            names: if self.pool {
                vec![ntp_engine::NameConfig {
                    name: "pool.test".into(),
                    port: 123,
                    pool: true,
                }]
            } else {
                vec![]
            },
            resolvers: vec![std::net::SocketAddr::from(NTP_RESOLVER)],
            ..ntp_engine::Config::default()
        };
        ntp_engine::Start {
            config,
            drift: self.drift_ppm.map(|p| i64::from(p) * 65536),
        }
    }
}

/// The NTP engine under the generic engine fuzz runner (as
/// `engine_contract` for DHCP): arbitrary timed `Event`s (datagrams from
/// any address, transmit reports, intent results, DHCP server lists, DNS
/// answers) after
/// a start from the header. Invariants: the contract's, plus every action
/// checked by [`check_ntp_action`]. Returns the number of actions.
pub fn run_ntp_engine(data: &[u8]) -> usize {
    let (start, steps) = NtpStart::from_bytes(data);
    let observe = start.observe;
    struct Checked(ntp_engine::Ntp, bool);
    impl mirage_engine::Engine for Checked {
        type Start = (ntp_engine::Start, bool);
        type Event = ntp_engine::Event;
        type Action = ntp_engine::Action;
        type Refusal = ntp_engine::Refusal;
        fn start(
            (start, observe): Self::Start,
            now: Instant,
            seed: [u8; 32],
            out: &mut Vec<ntp_engine::Action>,
        ) -> Self {
            let e = <ntp_engine::Ntp as mirage_engine::Engine>::start(start, now, seed, out);
            out.iter().for_each(|a| check_ntp_action(a, observe));
            Checked(e, observe)
        }
        fn handle(
            &mut self,
            now: Instant,
            event: ntp_engine::Event,
            out: &mut Vec<ntp_engine::Action>,
        ) -> Result<(), ntp_engine::Refusal> {
            let r = self.0.handle(now, event, out);
            out.iter().for_each(|a| check_ntp_action(a, self.1));
            r
        }
        fn on_timer(&mut self, now: Instant, out: &mut Vec<ntp_engine::Action>) {
            self.0.on_timer(now, out);
            out.iter().for_each(|a| check_ntp_action(a, self.1));
        }
        fn poll_at(&self) -> Instant {
            self.0.poll_at()
        }
    }
    mirage_engine::fuzz::drive::<Checked>((start.engine_start(), observe), start.seed, steps)
}

/// What the NTP engine may ask for, whatever it was fed: requests are 48
/// bytes, mode 3 version 4, carrying the random transmit timestamp they
/// announce and nothing else (never zero); frequencies within +-500 ppm;
/// in observe mode no clock intent at all; DNS queries go to the resolver
/// only and are one standard query for A or AAAA of the configured name.
pub fn check_ntp_action(action: &ntp_engine::Action, observe: bool) {
    use ntp_engine::Action;
    match action {
        Action::Send { transmit, data, .. } => {
            assert_eq!(data.len(), 48, "a request is the bare header");
            assert_eq!(data[0], 0x23, "LI 0, VN 4, mode 3");
            assert!(
                data[1..40].iter().all(|&b| b == 0),
                "a request carries nothing but its cookie"
            );
            assert_eq!(
                data[40..],
                transmit.0.to_be_bytes(),
                "the cookie announced is the one sent"
            );
            assert!(!transmit.is_zero(), "a zero cookie would match forged replies");
        }
        Action::SetFrequency { scaled_ppm } | Action::SaveDrift { scaled_ppm } => {
            assert!(!observe, "a clock intent in observe mode");
            assert!(
                scaled_ppm.abs() <= 500 * 65536,
                "frequency {scaled_ppm} out of bounds"
            );
        }
        Action::Slew { .. } | Action::Step { .. } | Action::SetStatus(_) => {
            assert!(!observe, "a clock intent in observe mode");
        }
        Action::PublishStatus(_) => {}
        Action::Resolve { to, data, .. } => {
            assert_eq!(
                *to,
                std::net::SocketAddr::from(NTP_RESOLVER),
                "a query to another than the resolver"
            );
            let query = dns_wire::Message::parse(data).expect("a query parses");
            assert!(!query.header.response && query.header.opcode == 0);
            assert_eq!(query.questions.len(), 1);
            let q = &query.questions[0];
            assert_eq!(q.name, dns_wire::Name::from_ascii("pool.test").unwrap());
            assert!(q.qtype == dns_wire::Type::A || q.qtype == dns_wire::Type::AAAA);
            assert!(query.answers.is_empty() && query.authorities.is_empty() && query.additionals.is_empty());
        }
    }
}

pub fn ntp_engine(data: &[u8]) {
    run_ntp_engine(data);
}

// ---- dns_wire ------------------------------------------------------------------

/// DNS messages through `dns_wire`, as mirage-ntp's engine and the DNS
/// service's read them. Invariants: no panic; whatever parses with the
/// default budgets re-encodes, the encoding parses (same record and
/// decoded-size budgets) to the same message (names compared octet for
/// octet, case included) and a
/// second encoding is byte-identical; every name prints; the helpers a
/// resolver calls on a reply (`addresses`, `is_response_to`, `rcode`) do
/// not panic and find only addresses that are in the answer section.
pub fn dns_wire(data: &[u8]) {
    use dns_wire::{Message, RData};
    let Ok(first) = Message::parse(data) else {
        return;
    };
    let bytes = first.to_bytes().expect("a parsed message re-encodes");
    // The same record and decoded-size budgets hold (they do not depend on
    // compression); pointer hops may grow (our suffixes point at suffixes).
    let relaxed = dns_wire::Limits {
        max_pointers: u32::MAX,
        ..dns_wire::Limits::default()
    };
    let second = Message::parse_with(&bytes, &relaxed).expect("our own encoding parses");
    assert_eq!(second, first, "re-encoding changed the message");
    let names = |m: &Message| {
        let mut all: Vec<Vec<u8>> = m.questions.iter().map(|q| q.name.as_wire().to_vec()).collect();
        for r in m.answers.iter().chain(&m.authorities).chain(&m.additionals) {
            all.push(r.name.as_wire().to_vec());
        }
        all
    };
    assert_eq!(names(&second), names(&first), "re-encoding changed a name's case");
    assert_eq!(
        second.to_bytes().expect("re-encodes"),
        bytes,
        "encoding is not stable"
    );
    let _ = first.rcode();
    let _ = first.is_response_to(&second);
    for q in &first.questions {
        let _ = q.name.to_string();
        for (address, _) in first.addresses(&q.name) {
            assert!(
                first.answers.iter().any(|r| match r.data {
                    RData::A(a) => std::net::IpAddr::V4(a) == address,
                    RData::Aaaa(a) => std::net::IpAddr::V6(a) == address,
                    _ => false,
                }),
                "an address not in the answers"
            );
        }
    }
}

// ---- dns_engine ------------------------------------------------------------------

/// Length of the header [`DnsStart::from_bytes`] reads.
pub const DNS_HEADER_LEN: usize = 34;

/// The start of a `dns_engine` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsStart {
    pub seed: [u8; 32],
    /// 0x20 case randomisation (bit 0), the cache on (bit 1), a one-second
    /// attempt instead of the default (bit 2), serve-stale (bit 3).
    pub flags: u8,
    /// 1 + this modulo 4 upstreams.
    pub upstreams: u8,
}

impl DnsStart {
    /// Decode `seed[32] flags upstreams` and return the rest, the steps for
    /// [`mirage_engine::fuzz::drive`]. Total: short input is zero-filled.
    pub fn from_bytes(data: &[u8]) -> (DnsStart, &[u8]) {
        let mut r = Reader { data };
        let seed = r.array();
        let flags = r.u8();
        let upstreams = r.u8();
        (
            DnsStart {
                seed,
                flags,
                upstreams,
            },
            r.data,
        )
    }

    /// The exact inverse of [`DnsStart::from_bytes`]'s header.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.seed.to_vec();
        out.push(self.flags);
        out.push(self.upstreams);
        out
    }

    pub fn upstream_count(&self) -> usize {
        1 + usize::from(self.upstreams % 4)
    }

    pub fn engine_start(&self) -> dns_engine::Start {
        dns_engine::Start {
            upstreams: (0..self.upstream_count())
                .map(|i| std::net::SocketAddr::from(([192, 0, 2, 1 + i as u8], 53)))
                .collect(),
            randomize_case: self.flags & 1 != 0,
            cache_bytes: if self.flags & 2 != 0 { 1 << 16 } else { 0 },
            attempt_ms: if self.flags & 4 != 0 { 1000 } else { 1500 },
            serve_stale: self.flags & 8 != 0,
            ..dns_engine::Start::default()
        }
    }
}

/// The DNS engine under `mirage_engine::fuzz::drive`: a start from the
/// header, then timed postcard-encoded `dns_engine::Event` batches (client
/// queries, replies for any query number, failures). Invariants: the
/// contract's, plus every action checked by [`check_dns_action`]. Returns
/// the number of actions.
pub fn run_dns_engine(data: &[u8]) -> usize {
    let (start, steps) = DnsStart::from_bytes(data);
    let upstreams = start.upstream_count();
    struct Checked(dns_engine::Forwarder, usize);
    impl mirage_engine::Engine for Checked {
        type Start = (dns_engine::Start, usize);
        type Event = dns_engine::Event;
        type Action = dns_engine::Action;
        type Refusal = dns_engine::Refusal;
        fn start(
            (start, n): Self::Start,
            now: Instant,
            seed: [u8; 32],
            out: &mut Vec<dns_engine::Action>,
        ) -> Self {
            let e = <dns_engine::Forwarder as mirage_engine::Engine>::start(start, now, seed, out);
            out.iter().for_each(|a| check_dns_action(a, n));
            Checked(e, n)
        }
        fn handle(
            &mut self,
            now: Instant,
            event: dns_engine::Event,
            out: &mut Vec<dns_engine::Action>,
        ) -> Result<(), dns_engine::Refusal> {
            let r = self.0.handle(now, event, out);
            out.iter().for_each(|a| check_dns_action(a, self.1));
            r
        }
        fn on_timer(&mut self, now: Instant, out: &mut Vec<dns_engine::Action>) {
            self.0.on_timer(now, out);
            out.iter().for_each(|a| check_dns_action(a, self.1));
        }
        fn poll_at(&self) -> Instant {
            self.0.poll_at()
        }
        fn route(action: &dns_engine::Action) -> mirage_engine::Route {
            <dns_engine::Forwarder as mirage_engine::Engine>::route(action)
        }
    }
    mirage_engine::fuzz::drive::<Checked>((start.engine_start(), upstreams), start.seed, steps)
}

/// What the DNS engine may ask of its network role, whatever it was fed:
/// upstream queries to a configured upstream that pass the role's shape
/// check and parse as one question with EDNS 1232; answers that are
/// responses within the TCP bound (the role refuses more per transport),
/// never with AD set (the engine validates nothing); answer parts only
/// for answers over one part's size, each at most a part.
pub fn check_dns_action(action: &dns_engine::Action, upstreams: usize) {
    use dns_engine::{Action, Outbound};
    let Action::Batch(items) = action else { return };
    assert!(!items.is_empty(), "an empty batch");
    for item in items {
        match item {
            Outbound::Query { upstream, data, .. } | Outbound::TcpQuery { upstream, data, .. } => {
                assert!(
                    usize::from(*upstream) < upstreams,
                    "upstream {upstream} of {upstreams}"
                );
                assert!(
                    (12..=512).contains(&data.len()),
                    "a query of {} octets",
                    data.len()
                );
                let m = dns_wire::Message::parse(data).expect("the engine's query parses");
                assert!(!m.header.response && m.questions.len() == 1);
                assert_eq!(m.edns.map(|e| e.udp_payload_size), Some(1232));
            }
            Outbound::Answer { data, .. } => {
                assert!(data.len() >= 12 && data.len() <= dns_engine::MAX_TCP_ANSWER);
                assert!(data[2] & 0x80 != 0, "an answer is a response");
                assert!(data[3] & 0x20 == 0, "AD set in an answer");
            }
            Outbound::AnswerPart { total, data, .. } => {
                assert!(!data.is_empty() && data.len() <= dns_engine::PART_BYTES);
                assert!(
                    usize::from(*total) > dns_engine::PART_BYTES,
                    "parts of a small answer"
                );
            }
            Outbound::Drop { .. } | Outbound::Close { .. } => {}
        }
    }
}

pub fn dns_engine(data: &[u8]) {
    run_dns_engine(data);
}

// ---- kvm_hypercall -------------------------------------------------------------

/// One hypercall of a KVM guest as the tender handles it
/// (`mirage_kvm::fuzzing`): the guest's registers and memory are the input.
/// Layout: a mode byte, the port (u16le; with mode bit 3 clear it is one
/// of the five hypercall ports, chosen by its low bits), `rdi`, `rsi`, `r8`
/// (u64le each; mode bits 0-2 fold each into twice the guest's memory, so
/// that pointers land in and around it), the memory fill (a length byte,
/// then that many bytes, repeated over the memory), then the message the
/// host has for a receive. Short inputs are zero-padded.
pub struct HypercallInput {
    pub mode: u8,
    pub port: u16,
    pub regs: [u64; 3],
    pub fill: Vec<u8>,
    pub inbox: Vec<u8>,
}

impl HypercallInput {
    pub fn from_bytes(data: &[u8]) -> HypercallInput {
        let mut head = [0u8; 27];
        let n = data.len().min(head.len());
        head[..n].copy_from_slice(&data[..n]);
        let rest = data.get(27..).unwrap_or(&[]);
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap());
        let fill_len = rest.first().copied().unwrap_or(0) as usize;
        let fill = rest.get(1..).unwrap_or(&[]);
        let fill_len = fill_len.min(fill.len());
        HypercallInput {
            mode: head[0],
            port: u16::from_le_bytes([head[1], head[2]]),
            regs: [u64_at(3), u64_at(11), u64_at(19)],
            fill: fill[..fill_len].to_vec(),
            inbox: fill[fill_len..].to_vec(),
        }
    }

    /// The exact inverse of [`HypercallInput::from_bytes`] for a fill of at
    /// most 255 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.mode];
        out.extend_from_slice(&self.port.to_le_bytes());
        for r in self.regs {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.push(self.fill.len() as u8);
        out.extend_from_slice(&self.fill);
        out.extend_from_slice(&self.inbox);
        out
    }
}

pub fn kvm_hypercall(data: &[u8]) {
    use mirage_kvm::fuzzing::{MEMORY, ScriptedHost, hypercall};
    const PORTS: [u16; 5] = [
        mirage_kvm_abi::PORT_RECV,
        mirage_kvm_abi::PORT_SEND,
        mirage_kvm_abi::PORT_LOG,
        mirage_kvm_abi::PORT_SEED,
        mirage_kvm_abi::PORT_EXIT,
    ];
    let input = HypercallInput::from_bytes(data);
    let port = if input.mode & 8 == 0 {
        PORTS[input.port as usize % PORTS.len()]
    } else {
        input.port
    };
    let mut regs = input.regs;
    for (i, r) in regs.iter_mut().enumerate() {
        if input.mode & (1 << i) != 0 {
            *r %= 2 * MEMORY as u64;
        }
    }
    let mut host = ScriptedHost {
        inbox: vec![input.inbox],
        sent: Vec::new(),
    };
    // Errors are the guest's end, which is fine; what matters is checked
    // inside: no panic, no write outside the guest's writable pages, no
    // message over the cap to the host.
    let resumed = hypercall(port, regs[0], regs[1], regs[2], &input.fill, &mut host);
    // And here: a message reaches the host only from a send that resumes
    // the guest, whole, on the channel its route names (supervisor or
    // direct peer); any other route ends the guest with nothing sent.
    if port == mirage_kvm_abi::PORT_SEND && matches!(resumed, Ok(true)) {
        let route = match regs[0] {
            mirage_kvm_abi::ROUTE_SUPERVISOR => mirage_engine::Route::Supervisor,
            mirage_kvm_abi::ROUTE_PEER => mirage_engine::Route::Peer,
            other => panic!("a send with route {other} resumed the guest"),
        };
        assert_eq!(host.sent, [(route, regs[2] as usize)], "what the host got");
    } else {
        assert!(host.sent.is_empty(), "{port:#x} sent {:?}", host.sent);
    }
}
