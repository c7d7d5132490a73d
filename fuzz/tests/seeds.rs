//! The seed corpora in `seeds/<target>/`, their generator, and checks that
//! every checked-in seed (crash regressions included) passes its harness.
//!
//! Seeds are built from the engine's codec fixtures (the hex files of
//! `crates/dhcp-engine/tests/data`) and from readable scenarios. To rewrite
//! them after a change here or in the fixtures:
//!
//! ```sh
//! cd fuzz && MIRAGE_WRITE_SEEDS=1 cargo test --no-default-features --test seeds seeds_on_disk
//! ```
//!
//! Without the variable, `seeds_on_disk_match_the_generator` fails when a
//! generated seed is missing or stale. Other files in the seed directories
//! (minimized crashes) are kept and run by `every_seed_passes_its_harness`.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use dhcp_engine::Client;
use dhcp_engine::lease::lease_from_reply;
use dhcp_engine::wire::dhcp::Message;
use dhcp_engine::wire::frame::{
    ArpOp, ArpPacket, BROADCAST_MAC, Inbound, build_arp_frame, build_udp_frame, parse_frame,
};
use mirage_engine::Engine as _;
use mirage_engine::fuzz::{self as contract, Step as ContractStep};
use mirage_fuzz::{
    ContractStart, EngineInput, EngineTrace, MAC, NtpStart, SERVER_MAC, Step, StoredLease,
    run_engine_contract, run_engine_events, run_ntp_engine,
};
use mirage_ipc::{
    ClientIdKind, ClientState, Counters, DropReason, EngineAction, EngineConfig, EngineEvent, EngineStart,
    FromActuator, FromEngine, FromNetwork, Instant, IntentKind, Lease, Limits, Outcome, PublishedStatus,
    Refusal, Status, ToActuator, ToEngine, encode,
};
use ntp_engine::wire::{Leap, Mode, NtpShort, NtpTimestamp, Repr as NtpRepr};
use ntp_engine::{Action as NtpAction, Event as NtpEvent, IntentKind as NtpIntentKind, SyncState};

/// libFuzzer runs with `-max_len=4096` (scripts/fuzz.sh): longer seeds would
/// be cut.
const MAX_SEED_LEN: usize = 4096;
const TARGETS: [&str; 9] = [
    "frame_parse",
    "dhcp_roundtrip",
    "engine_events",
    "engine_contract",
    "ipc_decode",
    "ntp_wire",
    "ntp_engine",
    "dns_wire",
    "dns_engine",
];

#[path = "../../crates/dhcp-engine/tests/support/hex.rs"]
mod fixture;
use fixture::hex;

/// The codec fixtures: whole Ethernet frames of real servers' shapes.
fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "dnsmasq-offer",
            hex(include_str!(
                "../../crates/dhcp-engine/tests/data/dnsmasq-offer.hex"
            )),
        ),
        (
            "dnsmasq-ack",
            hex(include_str!(
                "../../crates/dhcp-engine/tests/data/dnsmasq-ack.hex"
            )),
        ),
        (
            "kea-ack",
            hex(include_str!("../../crates/dhcp-engine/tests/data/kea-ack.hex")),
        ),
        (
            "gce-ack",
            hex(include_str!("../../crates/dhcp-engine/tests/data/gce-ack.hex")),
        ),
    ]
}

fn fixture(name: &str) -> Vec<u8> {
    fixtures()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f)
        .expect("known fixture")
}

/// The DHCP payload of a fixture frame.
fn payload(frame: &[u8]) -> Vec<u8> {
    match parse_frame(frame, false) {
        Ok(Inbound::Dhcp(udp)) => udp.payload.to_vec(),
        other => panic!("fixture is not DHCP: {other:?}"),
    }
}

/// A fixture's options without 53 and END, ready to follow the 53 that
/// `Step::Reply` writes first.
fn options_of(name: &str) -> Vec<u8> {
    let p = payload(&fixture(name));
    let mut rest = &p[240..];
    let mut out = Vec::new();
    while let [code, tail @ ..] = rest {
        match *code {
            0 => rest = tail,
            255 => break,
            _ => {
                let len = usize::from(tail[0]);
                if *code != 53 {
                    out.extend_from_slice(&[*code, tail[0]]);
                    out.extend_from_slice(&tail[1..1 + len]);
                }
                rest = &tail[1 + len..];
            }
        }
    }
    out
}

/// Options of a plain lease on 10.0.0.0/24 from 10.0.0.1 (the stored lease
/// of the engine scenarios lives there): server id, lease time, mask, router.
fn lan_options(lease_secs: u32) -> Vec<u8> {
    let mut o = vec![54, 4, 10, 0, 0, 1, 51, 4];
    o.extend_from_slice(&lease_secs.to_be_bytes());
    o.extend_from_slice(&[1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 0, 1]);
    o
}

// ---- the seeds ---------------------------------------------------------------

fn frame_parse_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = fixtures()
        .into_iter()
        .map(|(name, frame)| (name.to_string(), [&[0u8][..], &frame].concat()))
        .collect();
    // Checksum offload (field notes 9): the UDP checksum is unfinished and
    // the flag byte says so.
    let mut offloaded = fixture("gce-ack");
    offloaded[40] ^= 0x5a;
    seeds.push(("gce-ack-offloaded".into(), [&[1u8][..], &offloaded].concat()));
    // A frame cut inside the DHCP header, and one to another port.
    let offer = fixture("dnsmasq-offer");
    seeds.push((
        "dnsmasq-offer-truncated".into(),
        [&[0u8][..], &offer[..200]].concat(),
    ));
    let to_dns = build_udp_frame(
        [0x52, 0x54, 0, 0xab, 0xcd, 0xef],
        MAC,
        Ipv4Addr::new(192, 168, 122, 1),
        Ipv4Addr::new(192, 168, 122, 50),
        67,
        53,
        &payload(&offer),
    );
    seeds.push(("udp-to-port-53".into(), [&[0u8][..], &to_dns].concat()));
    let arp = ArpPacket {
        op: ArpOp::Reply,
        sender_mac: [0x52, 0x54, 0, 0xab, 0xcd, 0xef],
        sender_ip: Ipv4Addr::new(192, 168, 122, 50),
        target_mac: MAC,
        target_ip: Ipv4Addr::new(192, 168, 122, 50),
    };
    seeds.push((
        "arp-reply".into(),
        [&[0u8][..], &build_arp_frame(&arp, BROADCAST_MAC)].concat(),
    ));
    seeds
}

fn dhcp_roundtrip_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = fixtures()
        .into_iter()
        .map(|(name, frame)| (name.to_string(), payload(&frame)))
        .collect();
    // RFC 2131 4.1 overload: options field, then `file`, then `sname`.
    let mut overload = payload(&fixture("kea-ack"));
    overload.truncate(240);
    overload.extend_from_slice(&[53, 1, 5, 52, 1, 3, 255]);
    overload[108..118].copy_from_slice(&[51, 4, 0, 0, 14, 16, 12, 2, b'h', b'1']);
    overload[118] = 255;
    overload[44..51].copy_from_slice(&[15, 4, b'l', b'a', b'n', b'1', 255]);
    seeds.push(("overload-file-sname".into(), overload));
    // RFC 3396: option 119 split over two instances, concatenated on read.
    let mut long = payload(&fixture("dnsmasq-ack"));
    long.truncate(240);
    long.extend_from_slice(&[53, 1, 5, 119, 5, 3, b'l', b'a', b'n', 0]);
    long.extend_from_slice(&[119, 6, 3, b'c', b'o', b'm', 0xc0, 0]);
    long.push(255);
    seeds.push(("rfc3396-split-119".into(), long));
    seeds
}

fn sample_leases() -> Vec<Lease> {
    fixtures()
        .iter()
        .filter_map(|(_, frame)| {
            let Ok(Inbound::Dhcp(udp)) = parse_frame(frame, false) else {
                return None;
            };
            let msg = Message::parse(udp.payload).ok()?;
            lease_from_reply(&msg, udp.src_ip, Instant(5_000), &Limits::default()).ok()
        })
        .collect()
}

fn ipc_decode_seeds() -> Vec<(String, Vec<u8>)> {
    let leases = sample_leases();
    assert_eq!(leases.len(), 4, "every fixture yields a lease");
    let gce = leases[3].clone();
    let dnsmasq = leases[1].clone();
    let status = Status {
        state: ClientState::Bound,
        lease: Some(gce.clone()),
        counters: Counters {
            frames_received: 4,
            offers: 1,
            acks: 1,
            transmitted: 2,
            ..Counters::default()
        },
    };
    let mut config = EngineConfig::new(
        MAC,
        ClientIdKind::Duid {
            iaid: 7,
            duid: vec![0, 4, 1, 2, 3, 4, 5, 6, 7, 8],
        },
    );
    config.hostname = Some("node-1".into());
    let enc = |r: Result<Vec<u8>, _>| r.expect("seed encodes");
    vec![
        (
            "to-actuator-apply-gce".into(),
            enc(encode(&ToActuator::Apply {
                lease: gce.clone(),
                valid_secs: 86_400,
            })),
        ),
        (
            "to-actuator-remove-dnsmasq".into(),
            enc(encode(&ToActuator::Remove {
                lease: dnsmasq.clone(),
            })),
        ),
        (
            "to-actuator-persist-none".into(),
            enc(encode(&ToActuator::Persist(None))),
        ),
        (
            "to-actuator-publish".into(),
            enc(encode(&ToActuator::Publish(PublishedStatus {
                status: status.clone(),
                interface: "eth0".into(),
                sandbox: "seccomp".into(),
                sandbox_reason: "--sandbox seccomp".into(),
                engine_restarts: 1,
                frames_refused: 0,
                intents_refused: 0,
                now: Instant(7_000),
            }))),
        ),
        (
            "from-engine-transmit".into(),
            enc(encode(&FromEngine::Action(EngineAction::Transmit(fixture(
                "dnsmasq-offer",
            ))))),
        ),
        (
            "from-engine-apply-kea".into(),
            enc(encode(&FromEngine::Action(EngineAction::ApplyLease {
                lease: leases[2].clone(),
                valid_secs: 3600,
            }))),
        ),
        (
            "from-engine-publish".into(),
            enc(encode(&FromEngine::Action(EngineAction::PublishStatus(status)))),
        ),
        (
            "from-engine-dropped-refused".into(),
            enc(encode(&FromEngine::Refused(DropReason::Refused(
                Refusal::GatewayNotOnLink,
            )))),
        ),
        (
            "to-engine-start-stored".into(),
            enc(encode(&ToEngine::Start {
                start: EngineStart {
                    config,
                    stored: Some(dnsmasq),
                    link_up: true,
                },
                seed: [0x5e; 32],
            })),
        ),
        (
            "to-engine-event-frame".into(),
            enc(encode(&ToEngine::Event(EngineEvent::Frame {
                data: fixture("kea-ack"),
                checksum_offloaded: true,
            }))),
        ),
        (
            "from-actuator-failed".into(),
            enc(encode(&FromActuator::Result {
                kind: IntentKind::ApplyLease,
                outcome: Outcome::Failed("EEXIST".into()),
            })),
        ),
        (
            "from-network-frame".into(),
            enc(encode(&FromNetwork::Frame {
                data: fixture("gce-ack"),
                checksum_offloaded: false,
            })),
        ),
    ]
}

const DNSMASQ_ADDR: [u8; 4] = [192, 168, 122, 50];
const DNSMASQ_SERVER: [u8; 4] = [192, 168, 122, 1];
const OFFER: u8 = 2;
const ACK: u8 = 5;
const NAK: u8 = 6;

fn reply(msg_type: u8, yiaddr: [u8; 4], server: [u8; 4], options: Vec<u8>) -> Step {
    Step::Reply {
        msg_type,
        yiaddr,
        server,
        offloaded: false,
        options,
    }
}

/// DISCOVER -> OFFER -> REQUEST -> ACK with a dnsmasq-shaped server.
fn dora(acd: bool) -> Vec<(u32, Step)> {
    let opts = options_of("dnsmasq-ack");
    let mut steps = vec![
        (
            5,
            reply(OFFER, DNSMASQ_ADDR, DNSMASQ_SERVER, options_of("dnsmasq-offer")),
        ),
        (5, reply(ACK, DNSMASQ_ADDR, DNSMASQ_SERVER, opts)),
    ];
    if acd {
        // RFC 5227 probing with the default short timings, then BOUND.
        steps.extend([(100, Step::Tick), (100, Step::Tick), (200, Step::Tick)]);
    }
    steps
}

/// The engine scenarios: (name, input, what the run must show).
type Expectation = fn(&EngineTrace) -> bool;

fn engine_scenarios() -> Vec<(&'static str, EngineInput, Expectation)> {
    let input = |acd: bool, stored: Option<StoredLease>, steps: Vec<(u32, Step)>| EngineInput {
        seed: [0x42; 32],
        acd,
        stored,
        steps,
    };
    let stored = Some(StoredLease { host: 50, secs: 3600 });
    let held = [10, 0, 0, 50];
    let lan_server = [10, 0, 0, 1];

    // 1: lease, renewal at T1 (1800 s), RELEASE on stop.
    let mut renew = dora(false);
    renew.extend([
        (1_800_000, Step::Tick),
        (
            20,
            reply(ACK, DNSMASQ_ADDR, DNSMASQ_SERVER, options_of("dnsmasq-ack")),
        ),
        (1_000, Step::Stop { release: true }),
    ]);
    // 2: RFC 5227 conflict while probing -> DECLINE, INIT, a second lease.
    let mut conflict = dora(true)[..2].to_vec();
    conflict.extend([
        (
            30,
            Step::Arp {
                request: false,
                sender_ip: DNSMASQ_ADDR,
                target_ip: DNSMASQ_ADDR,
            },
        ),
        (1_000, Step::Tick),
    ]);
    conflict.extend(dora(true));
    // 3: INIT-REBOOT answered by a NAK (moved networks), then a new lease.
    let mut nak = vec![(
        10,
        reply(NAK, [0; 4], DNSMASQ_SERVER, vec![54, 4, 192, 168, 122, 1]),
    )];
    nak.extend(dora(false));
    // 4: INIT-REBOOT ACK, carrier flap, a failing actuator, renew on demand.
    let flap = vec![
        (10, reply(ACK, held, lan_server, lan_options(3600))),
        (1_000, Step::LinkDown),
        (60_000, Step::LinkUp),
        (10, reply(ACK, held, lan_server, lan_options(3600))),
        (
            5,
            Step::Intent {
                kind: IntentKind::ApplyLease,
                ok: false,
            },
        ),
        (1_000, Step::Tick),
        (
            5,
            Step::Intent {
                kind: IntentKind::ApplyLease,
                ok: true,
            },
        ),
        (10_000, Step::Renew),
        (10, reply(ACK, held, lan_server, lan_options(3600))),
    ];
    // 5: nobody answers renewals: RENEWING, REBINDING, expiry, INIT.
    let mut expire = dora(false);
    expire.extend((0..14).map(|_| (300_000, Step::Tick)));
    // 6: Google Cloud: /32, option 121 host route first, MTU 1460, 119.
    let gce_server = [169, 254, 169, 254];
    let gce_addr = [10, 128, 0, 5];
    let gce = vec![
        (5, reply(OFFER, gce_addr, gce_server, options_of("gce-ack"))),
        (5, reply(ACK, gce_addr, gce_server, options_of("gce-ack"))),
        (3_000, Step::Tick),
    ];
    // 7: junk in every state: random bytes, a stranger's reply, a reply
    // with a bad checksum flag, ARP while selecting, Renew while unbound.
    let mut stranger = fixture("dnsmasq-offer");
    stranger[14 + 20 + 8 + 28] ^= 0xff;
    let junk = vec![
        (
            5,
            Step::RawFrame((0u8..=90).map(|b| b.wrapping_mul(37)).collect()),
        ),
        (5, Step::RawFrame(stranger)),
        (
            5,
            Step::Arp {
                request: true,
                sender_ip: [0; 4],
                target_ip: DNSMASQ_ADDR,
            },
        ),
        (5, Step::Renew),
        (
            5,
            Step::Reply {
                msg_type: OFFER,
                yiaddr: DNSMASQ_ADDR,
                server: DNSMASQ_SERVER,
                offloaded: true,
                options: options_of("dnsmasq-offer"),
            },
        ),
        (5, reply(ACK, [0; 4], DNSMASQ_SERVER, options_of("dnsmasq-ack"))),
        (
            5,
            Step::Intent {
                kind: IntentKind::PublishStatus,
                ok: true,
            },
        ),
        (5, Step::Stop { release: false }),
        (5, Step::Tick),
    ];
    // 8: silence at T1, an ACK in REBINDING (after T2, 3150 s), then an ARP
    // claim on our address that we defend once (RFC 5227 2.4 (b)).
    let mut rebind = dora(false);
    rebind.extend([
        (1_800_000, Step::Tick),
        (1_350_000, Step::Tick),
        (
            10,
            reply(ACK, DNSMASQ_ADDR, DNSMASQ_SERVER, options_of("dnsmasq-ack")),
        ),
        (
            10,
            Step::Arp {
                request: true,
                sender_ip: DNSMASQ_ADDR,
                target_ip: DNSMASQ_ADDR,
            },
        ),
    ]);

    vec![
        ("renew-release", input(false, None, renew), |t| {
            t.counters.renewals == 1
                && t.states.contains(&ClientState::Renewing)
                && t.states.last() == Some(&ClientState::Stopped)
                && t.removed == 1
        }),
        ("acd-conflict-decline", input(true, None, conflict), |t| {
            t.counters.declines == 1 && t.states.contains(&ClientState::Probing) && t.applied == 1
        }),
        ("init-reboot-nak", input(false, stored, nak), |t| {
            t.counters.naks == 1 && t.removed == 1 && t.states.last() == Some(&ClientState::Bound)
        }),
        ("init-reboot-link-flap", input(true, stored, flap), |t| {
            t.states.contains(&ClientState::LinkDown)
                && t.states.contains(&ClientState::Renewing)
                && t.applied >= 4
        }),
        ("renew-rebind-expire", input(false, None, expire), |t| {
            t.counters.expiries == 1
                && t.states.contains(&ClientState::Rebinding)
                && t.states.last() == Some(&ClientState::Selecting)
        }),
        ("gce-slash-32", input(false, None, gce), |t| {
            t.applied == 1 && t.states.last() == Some(&ClientState::Bound)
        }),
        ("junk-then-stop", input(false, None, junk), |t| {
            t.applied == 0 && t.counters.frames_dropped == 4 && t.states.last() == Some(&ClientState::Stopped)
        }),
        ("rebind-then-defend", input(false, None, rebind), |t| {
            t.counters.rebinds == 1 && t.counters.conflicts == 1 && t.transmitted >= 5
        }),
    ]
}

fn engine_events_seeds() -> Vec<(String, Vec<u8>)> {
    engine_scenarios()
        .into_iter()
        .map(|(name, input, _)| (name.to_string(), input.to_bytes()))
        .collect()
}

/// An `engine_contract` scenario written against the engine itself: each
/// step is run on a client as `mirage_engine::fuzz::drive` will run it, so
/// replies can carry the xid the client really uses and the scenario's
/// outcome is known.
struct Script {
    client: Client,
    now: Instant,
    xid: [u8; 4],
    steps: Vec<ContractStep<EngineEvent>>,
    actions: usize,
    states: Vec<ClientState>,
    applied: usize,
}

impl Script {
    fn new(start: &ContractStart) -> Script {
        let mut out = Vec::new();
        let client = Client::start(start.engine_start(), contract::START, start.seed, &mut out);
        let mut script = Script {
            client,
            now: contract::START,
            xid: [0; 4],
            steps: Vec::new(),
            actions: 0,
            states: Vec::new(),
            applied: 0,
        };
        script.took(out);
        script
    }

    fn took(&mut self, out: Vec<EngineAction>) {
        self.actions += out.len();
        for a in &out {
            match a {
                EngineAction::Transmit(f) => {
                    if let Some(x) = mirage_fuzz::check_transmit(f) {
                        self.xid = x;
                    }
                }
                EngineAction::ApplyLease { .. } => self.applied += 1,
                _ => {}
            }
        }
        if !self.states.contains(&self.client.state()) {
            self.states.push(self.client.state());
        }
    }

    fn event(&mut self, ms: u16, event: EngineEvent) -> &mut Script {
        self.now = self.now.add_millis(u64::from(ms));
        let mut out = Vec::new();
        let _ = self.client.handle(self.now, event.clone(), &mut out);
        self.steps.push(ContractStep::Event(ms, event));
        self.took(out);
        self
    }

    /// A timer run after `ms`, or at the client's wake-up when 0.
    fn timer(&mut self, ms: u16) -> &mut Script {
        self.now = if ms == 0 {
            self.now.max(self.client.poll_at())
        } else {
            self.now.add_millis(u64::from(ms))
        };
        let mut out = Vec::new();
        self.client.on_timer(self.now, &mut out);
        self.steps.push(ContractStep::Timer(ms));
        self.took(out);
        self
    }

    /// A reply to the client's current transaction from `server`.
    fn reply(
        &mut self,
        ms: u16,
        msg_type: u8,
        yiaddr: [u8; 4],
        server: [u8; 4],
        options: Vec<u8>,
    ) -> &mut Script {
        let payload = mirage_fuzz::reply_payload(self.xid, msg_type, yiaddr, &options);
        let data = build_udp_frame(
            SERVER_MAC,
            MAC,
            Ipv4Addr::from(server),
            Ipv4Addr::BROADCAST,
            67,
            68,
            &payload,
        );
        self.event(
            ms,
            EngineEvent::Frame {
                data,
                checksum_offloaded: false,
            },
        )
    }

    fn bytes(&self, start: &ContractStart) -> Vec<u8> {
        [start.to_bytes(), contract::encode_steps(&self.steps)].concat()
    }
}

/// The `engine_contract` scenarios: (name, input bytes, the script's run).
fn contract_scenarios() -> Vec<(&'static str, Vec<u8>, Script)> {
    let start = |acd: bool, stored: Option<StoredLease>, link_up: bool| ContractStart {
        seed: [0x17; 32],
        acd,
        link_up,
        duid: true,
        hostname: true,
        release_on_stop: false,
        stored,
        retransmit: 3990,
    };
    let lan = [10, 0, 0, 1];
    let addr = [10, 0, 0, 60];
    let mut out = Vec::new();

    // DORA with a 10-minute lease, renewal at T1 (a jump to the wake-up),
    // a forced RELEASE.
    let s = start(false, None, true);
    let mut dora = Script::new(&s);
    dora.reply(5, OFFER, addr, lan, lan_options(600))
        .reply(5, ACK, addr, lan, lan_options(600))
        .timer(0)
        .reply(5, ACK, addr, lan, lan_options(600))
        .event(1000, EngineEvent::Stop { force_release: true });
    out.push(("dora-renew-release", dora.bytes(&s), dora));

    // RFC 5227: the offered address is in use; DECLINE, then a new lease,
    // renewals unanswered, an ACK while REBINDING.
    let s = start(true, None, true);
    let mut acd = Script::new(&s);
    acd.reply(5, OFFER, addr, lan, lan_options(600))
        .reply(5, ACK, addr, lan, lan_options(600))
        .timer(0)
        .event(
            10,
            EngineEvent::Frame {
                data: mirage_fuzz::arp_frame(false, addr, addr),
                checksum_offloaded: false,
            },
        )
        .timer(0)
        .reply(5, OFFER, [10, 0, 0, 61], lan, lan_options(600))
        .reply(5, ACK, [10, 0, 0, 61], lan, lan_options(600));
    while acd.client.state() != ClientState::Rebinding {
        acd.timer(0);
    }
    acd.reply(5, ACK, [10, 0, 0, 61], lan, lan_options(600));
    out.push(("acd-decline-rebind", acd.bytes(&s), acd));

    // A stored lease and no carrier at start; carrier, INIT-REBOOT ACK, a
    // failing actuator retried, renewal on demand.
    let s = start(false, Some(StoredLease { host: 50, secs: 3600 }), false);
    let held = [10, 0, 0, 50];
    let mut reboot = Script::new(&s);
    reboot
        .event(2000, EngineEvent::LinkUp)
        .reply(5, ACK, held, lan, lan_options(3600))
        .event(
            5,
            EngineEvent::IntentResult {
                kind: IntentKind::ApplyLease,
                ok: false,
            },
        )
        .timer(0)
        .timer(0)
        .event(10_000, EngineEvent::Renew)
        .reply(5, ACK, held, lan, lan_options(3600));
    out.push(("stored-carrier-late-apply-fails", reboot.bytes(&s), reboot));

    // Silence after the lease: RENEWING, REBINDING, expiry, all by jumps.
    let s = start(false, None, true);
    let mut expire = Script::new(&s);
    expire
        .reply(5, OFFER, addr, lan, lan_options(120))
        .reply(5, ACK, addr, lan, lan_options(120));
    while expire.client.counters().expiries == 0 {
        expire.timer(0);
    }
    out.push(("silence-to-expiry", expire.bytes(&s), expire));
    out
}

fn engine_contract_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = contract_scenarios()
        .into_iter()
        .map(|(name, bytes, _)| (name.to_string(), bytes))
        .collect();
    // Bytes that are mostly not events: the fallback timer runs.
    let mut junk = ContractStart::from_bytes(&[0x5a; 38]).0.to_bytes();
    junk.extend((0u16..300).map(|i| (i.wrapping_mul(97) >> 1) as u8));
    seeds.push(("junk".into(), junk));
    seeds
}

// ---- ntp_wire and ntp_engine ---------------------------------------------------

/// A server reply (stratum 2, chrony's shape) answering `origin`, with the
/// server's clock at `t2` (+ 20 us at T3).
fn ntp_reply(origin: NtpTimestamp, t2: NtpTimestamp) -> Vec<u8> {
    NtpRepr {
        leap: Leap::None,
        version: 4,
        mode: Mode::Server,
        stratum: 2,
        poll: 6,
        precision: -25,
        root_delay: NtpShort(0x34a),
        root_dispersion: NtpShort(0x2c),
        reference_id: [192, 0, 2, 200],
        reference: t2,
        origin,
        receive: t2,
        transmit: t2.add_nanos(20_000),
    }
    .to_bytes()
    .to_vec()
}

fn ntp_kiss(origin: NtpTimestamp, code: &[u8; 4]) -> Vec<u8> {
    let mut b = ntp_reply(origin, NtpTimestamp::from_parts(0xed28_3350, 0));
    b[0] = 0xe4;
    b[1] = 0;
    b[12..16].copy_from_slice(code);
    b
}

fn ntp_wire_seeds() -> Vec<(String, Vec<u8>)> {
    let t = NtpTimestamp::from_parts(0xed28_3350, 0x2000_0000);
    let reply = ntp_reply(NtpTimestamp(0x8b1f_559e_632e_019a), t);
    let with = |extra: &[u8]| {
        let mut v = reply.clone();
        v.extend_from_slice(extra);
        v
    };
    let mut ef = vec![0x01, 0x04, 0x00, 0x10];
    ef.extend_from_slice(&[0xab; 12]);
    vec![
        ("reply".into(), reply.clone()),
        ("kiss-rate".into(), ntp_kiss(NtpTimestamp(7), b"RATE")),
        ("request".into(), NtpRepr::client_request(t).to_bytes().to_vec()),
        ("reply-md5-mac".into(), with(&[0x11; 20])),
        ("reply-extension-field".into(), with(&ef)),
        ("reply-truncated".into(), reply[..47].to_vec()),
        (
            "era-1-rollover".into(),
            ntp_reply(NtpTimestamp(9), NtpTimestamp(0xffff_ffff_ffff_0000)),
        ),
    ]
}

/// An `ntp_engine` scenario run against the engine as it is written, so
/// that its replies carry the cookies the engine really sends.
struct NtpScript {
    engine: ntp_engine::Ntp,
    now: Instant,
    steps: Vec<ContractStep<NtpEvent>>,
    actions: Vec<NtpAction>,
}

impl NtpScript {
    fn new(start: &NtpStart) -> NtpScript {
        let mut actions = Vec::new();
        let engine = ntp_engine::Ntp::start(start.engine_start(), contract::START, start.seed, &mut actions);
        NtpScript {
            engine,
            now: contract::START,
            steps: Vec::new(),
            actions,
        }
    }

    fn event(&mut self, ms: u16, ev: NtpEvent) {
        self.now = self.now.add_millis(u64::from(ms));
        let mut out = Vec::new();
        let _ = self.engine.handle(self.now, ev.clone(), &mut out);
        self.actions.extend(out);
        self.steps.push(ContractStep::Event(ms, ev));
    }

    /// Jump to the engine's wake-up.
    fn wake(&mut self) {
        self.now = self.now.max(self.engine.poll_at());
        let mut out = Vec::new();
        self.engine.on_timer(self.now, &mut out);
        self.actions.extend(out);
        self.steps.push(ContractStep::Timer(0));
    }

    /// Requests sent and not answered yet by this script, oldest first.
    fn take_requests(&mut self, answered: &mut usize) -> Vec<(std::net::SocketAddr, NtpTimestamp)> {
        let sends: Vec<_> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                NtpAction::Send { to, transmit, .. } => Some((*to, *transmit)),
                _ => None,
            })
            .collect();
        let new = sends[*answered..].to_vec();
        *answered = sends.len();
        new
    }

    /// Answer every request sent so far: the transmit report, then a reply
    /// 1 ms later from a server `offset_ms` off (or `kiss` from the first).
    fn answer(&mut self, answered: &mut usize, offset_ms: i64, kiss: Option<&[u8; 4]>) {
        for (i, (to, cookie)) in self.take_requests(answered).into_iter().enumerate() {
            let local =
                NtpTimestamp::from_unix_nanos(1_800_000_000_000_000_000 + i128::from(self.now.0) * 1_000_000);
            self.event(
                0,
                NtpEvent::Sent {
                    to,
                    transmit: cookie,
                    at: local,
                },
            );
            let data = match kiss {
                Some(code) if i == 0 => ntp_kiss(cookie, code),
                _ => ntp_reply(cookie, local.add_nanos(offset_ms * 1_000_000 + 500_000)),
            };
            self.event(
                1,
                NtpEvent::Received {
                    from: to,
                    data,
                    at: local.add_nanos(1_000_000),
                },
            );
        }
    }

    /// Answer every DNS query sent so far as the resolver would: the
    /// question echoed, four A records (none for AAAA).
    fn answer_dns(&mut self) {
        let queries: Vec<(u64, std::net::SocketAddr, Vec<u8>)> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                NtpAction::Resolve { query, to, data } => Some((*query, *to, data.clone())),
                _ => None,
            })
            .collect();
        for (query, from, data) in queries {
            let mut reply = dns_wire::Message::parse(&data).unwrap();
            reply.header.response = true;
            if reply.questions[0].qtype == dns_wire::Type::A {
                for host in 101..105 {
                    reply.answers.push(dns_wire::Record {
                        name: reply.questions[0].name.clone(),
                        class: dns_wire::Class::IN,
                        ttl: 150,
                        data: dns_wire::RData::A(Ipv4Addr::new(192, 0, 2, host)),
                    });
                }
            }
            self.event(
                20,
                NtpEvent::Resolved {
                    query,
                    from,
                    data: reply.to_bytes().unwrap(),
                },
            );
        }
    }

    fn bytes(&self, start: &NtpStart) -> Vec<u8> {
        let mut b = start.to_bytes();
        b.extend(contract::encode_steps(&self.steps));
        b
    }
}

fn ntp_scenarios() -> Vec<(&'static str, Vec<u8>, NtpScript)> {
    let start = |servers: u8, observe: bool, drift: Option<i16>| NtpStart {
        seed: [0x2b; 32],
        observe,
        use_dhcp: true,
        servers,
        min_poll: 2,
        drift_ppm: drift,
        pool: false,
    };
    let mut out = Vec::new();
    // Three servers 250 ms off: the first estimate steps; the actuator
    // confirms; two polls later they agree.
    let s = start(2, false, None);
    let mut sc = NtpScript::new(&s);
    let mut answered = 0;
    sc.answer(&mut answered, 250, None);
    sc.event(
        0,
        NtpEvent::IntentResult {
            kind: NtpIntentKind::Step,
            ok: true,
        },
    );
    for _ in 0..3 {
        sc.wake();
        sc.answer(&mut answered, 0, None);
    }
    out.push(("three-step-then-slew", sc.bytes(&s), sc));
    // One server, a stored frequency, a 20 ms offset: slewed; then DENY.
    let s = start(0, false, Some(-37));
    let mut sc = NtpScript::new(&s);
    let mut answered = 0;
    sc.answer(&mut answered, 20, None);
    sc.wake();
    sc.answer(&mut answered, 20, Some(b"DENY"));
    out.push(("one-server-slew-then-deny", sc.bytes(&s), sc));
    // Observe mode, two servers, a RATE, a refused intent, DHCP servers.
    let s = start(1, true, None);
    let mut sc = NtpScript::new(&s);
    let mut answered = 0;
    sc.answer(&mut answered, 3, Some(b"RATE"));
    sc.event(
        5,
        NtpEvent::DhcpServers(vec![[192, 0, 2, 9].into(), [192, 0, 2, 2].into()]),
    );
    sc.wake();
    sc.answer(&mut answered, 3, None);
    out.push(("observe-rate-dhcp", sc.bytes(&s), sc));
    // Four servers, one 10 s off (a falseticker), a refused step first.
    let s = start(3, false, None);
    let mut sc = NtpScript::new(&s);
    let mut answered = 0;
    let requests = sc.take_requests(&mut answered);
    for (i, (to, cookie)) in requests.into_iter().enumerate() {
        let local = NtpTimestamp::from_unix_nanos(1_800_000_000_000_000_000);
        sc.event(
            0,
            NtpEvent::Sent {
                to,
                transmit: cookie,
                at: local,
            },
        );
        let off = if i == 2 { 10_000 } else { 300 };
        let data = ntp_reply(cookie, local.add_nanos(off * 1_000_000));
        sc.event(
            1,
            NtpEvent::Received {
                from: to,
                data,
                at: local.add_nanos(1_000_000),
            },
        );
    }
    sc.event(
        0,
        NtpEvent::IntentResult {
            kind: NtpIntentKind::Step,
            ok: false,
        },
    );
    // The operator accepts the held step: polled again at once.
    sc.event(0, NtpEvent::StepAccepted);
    sc.wake();
    out.push(("falseticker-held", sc.bytes(&s), sc));
    // A pool: its lookup answered with four addresses, then every source
    // answered twice.
    let s = NtpStart {
        pool: true,
        ..start(0, false, None)
    };
    let mut sc = NtpScript::new(&s);
    let mut answered = 0;
    sc.answer_dns();
    sc.answer(&mut answered, 40, None);
    sc.wake();
    sc.answer(&mut answered, 0, None);
    out.push(("pool-resolved", sc.bytes(&s), sc));
    out
}

fn ntp_engine_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = ntp_scenarios()
        .into_iter()
        .map(|(name, bytes, _)| (name.to_string(), bytes))
        .collect();
    let mut junk = NtpStart::from_bytes(&[0x3c; 37]).0.to_bytes();
    junk.extend((0u16..300).map(|i| (i.wrapping_mul(61) >> 1) as u8));
    seeds.push(("junk".into(), junk));
    seeds
}

/// One of each hypercall with buffers in the guest's heap (the fuzzing
/// layout's heap starts after the image's two pages and a guard page), and
/// the pointer attacks the hostile guest makes.
fn kvm_hypercall_seeds() -> Vec<(String, Vec<u8>)> {
    use mirage_fuzz::HypercallInput;
    const HEAP: u64 = 0x10_3000;
    let call = |mode: u8, port: u16, regs: [u64; 3], inbox: &[u8]| {
        HypercallInput {
            mode,
            port,
            regs,
            fill: b"guest".to_vec(),
            inbox: inbox.to_vec(),
        }
        .to_bytes()
    };
    vec![
        ("recv".into(), call(0, 0, [HEAP, 64, u64::MAX], b"a message")),
        ("send-supervisor".into(), call(0, 1, [0, HEAP, 32], b"")),
        ("send-peer".into(), call(0, 1, [1, HEAP, 32], b"")),
        ("send-bad-route".into(), call(0, 1, [2, HEAP, 32], b"")),
        ("log".into(), call(0, 2, [HEAP, 100, 0], b"")),
        ("seed".into(), call(0, 3, [HEAP, 0, 0], b"")),
        ("exit".into(), call(0, 4, [3, 0, 0], b"")),
        ("recv-into-code".into(), call(0, 0, [0x10_0000, 64, 0], b"x")),
        ("send-past-memory".into(), call(0, 1, [0, (2 << 20) - 8, 16], b"")),
        ("send-oversized".into(), call(0, 1, [0, HEAP, 9000], b"")),
        ("unknown-port".into(), call(8, 0x80, [0, 0, 0], b"")),
        (
            "folded-pointers".into(),
            call(7, 0, [u64::MAX - 3, u64::MAX, 5], b"folded"),
        ),
    ]
}

// ---- dns_wire ----------------------------------------------------------------

/// DNS messages: a 0x20 query with EDNS, replies of every typed RDATA, the
/// RFC 1035 §4.1.4 and RFC 3597 §5 examples, a pool reply through a CNAME,
/// and refused shapes (a pointer loop, a forward pointer, two OPTs).
fn dns_wire_seeds() -> Vec<(String, Vec<u8>)> {
    use dns_wire::{Class, Edns, Message, Name, RData, Record, Soa, Type};
    use std::net::Ipv6Addr;
    let name = |t: &str| Name::from_ascii(t).unwrap();
    let rr = |owner: &str, data: RData| Record {
        name: name(owner),
        class: Class::IN,
        ttl: 3600,
        data,
    };
    let mut query = Message::query(0x3c1f, name("PoOl.nTp.ORg"), Type::AAAA);
    query.edns = Some(Edns::new(1232));
    let mut pool = query.clone();
    pool.header.response = true;
    pool.header.recursion_available = true;
    pool.answers = vec![
        rr("pool.ntp.org", RData::Cname(name("2.pool.ntp.org"))),
        rr(
            "2.pool.ntp.org",
            RData::Aaaa(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x7b)),
        ),
        rr(
            "2.pool.ntp.org",
            RData::Aaaa(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x7c)),
        ),
    ];
    let mut typed = Message::query(7, name("example.org"), Type::ANY);
    typed.header.response = true;
    typed.answers = vec![
        rr("example.org", RData::A(Ipv4Addr::new(192, 0, 2, 1))),
        rr("example.org", RData::Ns(name("ns.example.org"))),
        rr("www.example.org", RData::Cname(name("example.org"))),
        rr("1.2.0.192.in-addr.arpa", RData::Ptr(name("example.org"))),
        rr(
            "example.org",
            RData::Mx {
                preference: 10,
                exchange: name("mx.example.org"),
            },
        ),
        rr("example.org", RData::Txt(vec![b"v=spf1 -all".to_vec(), vec![]])),
        rr(
            "_ntp._udp.example.org",
            RData::Srv {
                priority: 1,
                weight: 2,
                port: 123,
                target: name("ntp.example.org"),
            },
        ),
    ];
    typed.authorities = vec![rr(
        "example.org",
        RData::Soa(Soa {
            mname: name("ns.example.org"),
            rname: name("hostmaster.example.org"),
            serial: 1,
            refresh: 7200,
            retry: 900,
            expire: 1209600,
            minimum: 300,
        }),
    )];
    let mut nxdomain = Message::query(8, name("nope.example"), Type::A);
    nxdomain.header.response = true;
    nxdomain.header.rcode = 3;
    let hex = |t: &str| {
        let digits: Vec<u8> = t.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect::<Vec<u8>>()
    };
    vec![
        ("query-0x20-edns".into(), query.to_bytes().unwrap()),
        ("pool-cname-aaaa".into(), pool.to_bytes().unwrap()),
        ("typed-rdata".into(), typed.to_bytes().unwrap()),
        ("nxdomain".into(), nxdomain.to_bytes().unwrap()),
        (
            "rfc1035-compression".into(),
            hex(
                "1234 8100 0001 0002 0000 0000 01 46 03 49 53 49 04 41 52 50 41 00 0001 0001
                 03 46 4f 4f c0 0c 0001 0001 0000003c 0004 0a000001 c0 12 0002 0001 0000003c 0001 00",
            ),
        ),
        (
            "rfc3597-unknown".into(),
            hex("0002 8400 0000 0003 0000 0000
                 01 61 07 65 78 61 6d 70 6c 65 00 02db 0020 00000e10 0006 abcdef012345
                 01 62 c0 0e f38b 0004 00000e10 0000
                 01 65 c0 0e 0001 0001 00000e10 0004 0a000001"),
        ),
        (
            "pointer-loop".into(),
            hex("0001 8000 0001 0000 0000 0000 01 61 c0 10 01 62 c0 0c 0001 0001"),
        ),
        (
            "pointer-forward".into(),
            hex("0001 8000 0002 0000 0000 0000 c0 11 0001 0001 01 61 00 0001 0001"),
        ),
        (
            "two-opt".into(),
            hex("0001 8000 0000 0000 0000 0002 00 0029 1000 00000000 0000 00 0029 1000 00000000 0000"),
        ),
    ]
}

/// DNS engine scenarios: a query answered, merged and cached; a forged
/// reply then the real one; a silent upstream then the next; malformed
/// client queries; special-use names and a CNAME loop with serve-stale on;
/// and junk.
fn dns_engine_seeds() -> Vec<(String, Vec<u8>)> {
    use dns_engine::{Event, Inbound, Transport};
    use dns_wire::{Edns, Message, Name, Type};
    use mirage_fuzz::DnsStart;
    let query = |id: u16, name: &str, edns: bool| {
        let mut m = Message::query(id, Name::from_ascii(name).unwrap(), Type::A);
        m.edns = edns.then(|| Edns::new(1232));
        m.to_bytes().unwrap()
    };
    let q = |client: u64, data: Vec<u8>| Inbound::Query {
        client,
        transport: Transport::Udp,
        data,
    };
    // The engine's first query number and id come from its seed; a reply
    // built here matches only by chance, which the fuzzer then mutates.
    let reply = |data: Vec<u8>| {
        let mut r = Message::parse(&data).unwrap();
        r.header.response = true;
        r.to_bytes().unwrap()
    };
    let batch = |items: Vec<Inbound>| Event::Batch(items);
    let start = |flags: u8, upstreams: u8| {
        DnsStart {
            seed: [5; 32],
            flags,
            upstreams,
        }
        .to_bytes()
    };
    let with = |header: Vec<u8>, steps: Vec<ContractStep<Event>>| {
        let mut out = header;
        out.extend(contract::encode_steps(&steps));
        out
    };
    vec![
        (
            "answered-merged-cached".into(),
            with(
                start(3, 0),
                vec![
                    ContractStep::Event(
                        1,
                        batch(vec![
                            q(1, query(1, "a.test", true)),
                            q(2, query(2, "A.TEST", false)),
                        ]),
                    ),
                    ContractStep::Event(
                        5,
                        batch(vec![Inbound::Reply {
                            query: 0,
                            data: reply(query(9, "a.test", true)),
                        }]),
                    ),
                    ContractStep::Event(5, batch(vec![q(3, query(3, "a.test", false))])),
                ],
            ),
        ),
        (
            "silent-then-next".into(),
            with(
                start(1, 2),
                vec![
                    ContractStep::Event(1, batch(vec![q(1, query(1, "b.test", true))])),
                    ContractStep::Timer(0),
                    ContractStep::Event(3, batch(vec![Inbound::Failed { query: 1 }])),
                    ContractStep::Timer(0),
                ],
            ),
        ),
        (
            "malformed-clients".into(),
            with(
                start(0, 0),
                vec![ContractStep::Event(
                    1,
                    batch(vec![
                        q(1, vec![0; 12]),
                        q(2, vec![0xff; 40]),
                        q(3, {
                            let mut d = query(3, "c.test", false);
                            d[2] |= 0x80;
                            d
                        }),
                        q(4, {
                            let mut d = query(4, "c.test", false);
                            d[2] |= 0x10;
                            d
                        }),
                    ]),
                )],
            ),
        ),
        (
            "local-loop-stale".into(),
            with(
                // The cache and serve-stale on.
                start(10, 0),
                vec![
                    ContractStep::Event(
                        1,
                        batch(vec![
                            q(1, query(1, "localhost", true)),
                            q(2, query(2, "x.onion", false)),
                            q(3, query(3, "loop.test", true)),
                        ]),
                    ),
                    ContractStep::Event(
                        2,
                        batch(vec![Inbound::Reply {
                            query: 0,
                            data: {
                                let mut r = Message::parse(&reply(query(9, "loop.test", true))).unwrap();
                                r.header.authentic_data = true;
                                r.answers.push(dns_wire::Record {
                                    name: Name::from_ascii("loop.test").unwrap(),
                                    class: dns_wire::Class::IN,
                                    ttl: 60,
                                    data: dns_wire::RData::Cname(Name::from_ascii("loop.test").unwrap()),
                                });
                                r.to_bytes().unwrap()
                            },
                        }]),
                    ),
                    ContractStep::Timer(0),
                ],
            ),
        ),
        ("junk".into(), {
            let mut junk = start(7, 3);
            junk.extend((0u16..300).map(|i| (i.wrapping_mul(37) >> 1) as u8));
            junk
        }),
    ]
}

fn generated() -> BTreeMap<&'static str, Vec<(String, Vec<u8>)>> {
    BTreeMap::from([
        ("frame_parse", frame_parse_seeds()),
        ("dhcp_roundtrip", dhcp_roundtrip_seeds()),
        ("engine_events", engine_events_seeds()),
        ("engine_contract", engine_contract_seeds()),
        ("ipc_decode", ipc_decode_seeds()),
        ("ntp_wire", ntp_wire_seeds()),
        ("ntp_engine", ntp_engine_seeds()),
        ("kvm_hypercall", kvm_hypercall_seeds()),
        ("dns_wire", dns_wire_seeds()),
        ("dns_engine", dns_engine_seeds()),
    ])
}

fn seed_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}

fn harness(target: &str) -> fn(&[u8]) {
    match target {
        "frame_parse" => mirage_fuzz::frame_parse,
        "dhcp_roundtrip" => mirage_fuzz::dhcp_roundtrip,
        "engine_events" => mirage_fuzz::engine_events,
        "engine_contract" => mirage_fuzz::engine_contract,
        "ipc_decode" => mirage_fuzz::ipc_decode,
        "ntp_wire" => mirage_fuzz::ntp_wire,
        "ntp_engine" => mirage_fuzz::ntp_engine,
        "kvm_hypercall" => mirage_fuzz::kvm_hypercall,
        "dns_wire" => mirage_fuzz::dns_wire,
        "dns_engine" => mirage_fuzz::dns_engine,
        other => panic!("unknown target {other}"),
    }
}

// ---- tests -------------------------------------------------------------------

#[test]
fn seeds_on_disk_match_the_generator() {
    let write = std::env::var_os("MIRAGE_WRITE_SEEDS").is_some();
    for (target, seeds) in generated() {
        let dir = seed_dir(target);
        if write {
            fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in seeds {
            let path = dir.join(&name);
            if write {
                fs::write(&path, &bytes).unwrap();
            }
            let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                on_disk, bytes,
                "{target}/{name} is stale: rerun with MIRAGE_WRITE_SEEDS=1"
            );
        }
    }
}

#[test]
fn seeds_are_small_and_few() {
    for (target, seeds) in generated() {
        assert!((4..=20).contains(&seeds.len()), "{target}: {} seeds", seeds.len());
        for (name, bytes) in seeds {
            assert!(
                !bytes.is_empty() && bytes.len() <= MAX_SEED_LEN,
                "{target}/{name}: {} bytes",
                bytes.len()
            );
        }
    }
}

/// Every file under `seeds/` (generated or a minimized crash) runs clean.
#[test]
fn every_seed_passes_its_harness() {
    for target in TARGETS {
        let run = harness(target);
        let mut count = 0;
        for entry in fs::read_dir(seed_dir(target)).unwrap() {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            run(&bytes);
            count += 1;
        }
        assert!(count > 0, "{target} has no seeds");
    }
}

#[test]
fn engine_scenarios_reach_what_they_were_written_for() {
    for (name, input, expect) in engine_scenarios() {
        let trace = run_engine_events(&input);
        assert!(expect(&trace), "{name}: {trace:?}");
    }
}

#[test]
fn engine_input_bytes_round_trip_and_any_bytes_decode() {
    for (name, input, _) in engine_scenarios() {
        assert_eq!(EngineInput::from_bytes(&input.to_bytes()), input, "{name}");
    }
    // Short, empty and odd inputs decode to something runnable.
    for data in [&b""[..], &[1], &[0xff; 40], &[0; 100]] {
        let input = EngineInput::from_bytes(data);
        assert!(input.steps.len() <= mirage_fuzz::MAX_STEPS);
        run_engine_events(&input);
    }
    // The step count is capped however long the input is.
    let many = EngineInput::from_bytes(&[3u8; 36 + 5 * 1000]);
    assert_eq!(many.steps.len(), mirage_fuzz::MAX_STEPS);
}

#[test]
fn the_transmit_check_refuses_what_the_network_role_refuses() {
    // A DHCP client frame as the engine builds it passes and yields its xid.
    let mut msg = payload(&fixture("dnsmasq-offer"));
    msg[0] = 1;
    msg[28..34].copy_from_slice(&MAC);
    let ours = build_udp_frame(
        MAC,
        BROADCAST_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        &msg,
    );
    assert_eq!(mirage_fuzz::check_transmit(&ours), Some([0x39, 0x03, 0xf3, 0x26]));
    let refused = |frame: Vec<u8>| std::panic::catch_unwind(|| mirage_fuzz::check_transmit(&frame)).is_err();
    // ARP sent as someone else, a reply instead of a request, wrong ports,
    // a foreign source MAC, an oversized frame.
    assert!(refused(mirage_fuzz::arp_frame(true, [1, 2, 3, 4], [1, 2, 3, 4])));
    let mut reply = msg.clone();
    reply[0] = 2;
    assert!(refused(build_udp_frame(
        MAC,
        BROADCAST_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        &reply
    )));
    assert!(refused(build_udp_frame(
        MAC,
        BROADCAST_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        53,
        &msg
    )));
    let mut foreign = ours.clone();
    foreign[6] ^= 1;
    assert!(refused(foreign));
    let mut big = msg.clone();
    big.resize(1600, 0);
    assert!(refused(build_udp_frame(
        MAC,
        BROADCAST_MAC,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        &big
    )));
}

/// Each `engine_contract` scenario reaches what it was written for, and
/// the generic runner, fed its bytes, runs it exactly as the script did.
#[test]
fn engine_contract_scenarios_reach_what_they_were_written_for() {
    let scenarios = contract_scenarios();
    for (name, bytes, script) in &scenarios {
        assert_eq!(run_engine_contract(bytes), script.actions, "{name}");
        let c = script.client.counters();
        let ok = match *name {
            "dora-renew-release" => {
                c.renewals == 1 && script.client.state() == ClientState::Stopped && c.transmitted == 4
            }
            "acd-decline-rebind" => {
                c.declines == 1 && c.rebinds == 1 && script.states.contains(&ClientState::Probing)
            }
            "stored-carrier-late-apply-fails" => {
                script.states[0] == ClientState::LinkDown && c.renewals == 1 && script.applied >= 3
            }
            "silence-to-expiry" => {
                script.states.contains(&ClientState::Rebinding)
                    && script.client.state() == ClientState::Selecting
            }
            other => panic!("no expectation for {other}"),
        };
        assert!(ok, "{name}: {:?} {c:?} applied {}", script.states, script.applied);
    }
    assert_eq!(scenarios.len(), 4);
}

#[test]
fn contract_start_bytes_round_trip_and_any_bytes_run() {
    for (_, bytes, _) in contract_scenarios() {
        let (start, rest) = ContractStart::from_bytes(&bytes);
        assert_eq!(start.to_bytes(), bytes[..mirage_fuzz::CONTRACT_HEADER_LEN]);
        assert_eq!(rest, &bytes[mirage_fuzz::CONTRACT_HEADER_LEN..]);
    }
    for data in [&b""[..], &[0xff], &[0xff; 40], &[0; 100], &[0x80; 200]] {
        run_engine_contract(data);
    }
}

/// Each `ntp_engine` scenario reaches what it was written for, and the
/// generic runner, fed its bytes, runs it exactly as the script did.
#[test]
fn ntp_scenarios_reach_what_they_were_written_for() {
    let scenarios = ntp_scenarios();
    for (name, bytes, script) in &scenarios {
        assert_eq!(run_ntp_engine(bytes), script.actions.len(), "{name}");
        let c = script.engine.counters();
        let steps = script
            .actions
            .iter()
            .filter(|a| matches!(a, NtpAction::Step { .. }))
            .count();
        let slews = script
            .actions
            .iter()
            .filter(|a| matches!(a, NtpAction::Slew { .. }))
            .count();
        let ok = match *name {
            "three-step-then-slew" => {
                steps == 1 && slews >= 1 && script.engine.state() == SyncState::Synchronized
            }
            "one-server-slew-then-deny" => slews >= 1 && steps == 0 && c.kiss_deny == 1,
            "observe-rate-dhcp" => {
                c.kiss_rate == 1 && steps + slews == 0 && script.engine.state() == SyncState::Observing
            }
            "falseticker-held" => {
                steps == 1 && c.steps_refused == 1 && script.engine.state() == SyncState::Held
            }
            "pool-resolved" => {
                let status = script.engine.status();
                status.sources.len() == 5 && status.names[0].sources == 4 && c.samples >= 5
            }
            other => panic!("no expectation for {other}"),
        };
        assert!(
            ok,
            "{name}: {c:?} state {:?} steps {steps} slews {slews}",
            script.engine.state()
        );
    }
    assert_eq!(scenarios.len(), 5);
}

#[test]
fn ntp_start_bytes_round_trip_and_any_bytes_run() {
    for (_, bytes, _) in ntp_scenarios() {
        let (start, _) = NtpStart::from_bytes(&bytes);
        assert_eq!(start.to_bytes(), bytes[..mirage_fuzz::NTP_HEADER_LEN]);
    }
    for data in [&b""[..], &[0xff], &[0xff; 40], &[0; 100], &[0x80; 200]] {
        run_ntp_engine(data);
    }
}
