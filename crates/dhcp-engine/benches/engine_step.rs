//! Engine step throughput: one inbound frame through `Client::handle`
//! (framing, checksums, header match, DHCP decode, lease build and policy,
//! the decision and the actions it produces), with the client in the state
//! where such a frame really arrives:
//!
//! - OFFERs in SELECTING (the first is taken: REQUEST built and sent);
//! - ACKs in RENEWING with our xid (lease re-applied, persisted, published)
//!   and with a stale xid (dropped after the fixed-header peek);
//! - late ACKs in BOUND;
//! - junk: random bytes, truncated frames, UDP to other ports, other
//!   clients' replies and ARP chatter.
//!
//! The figure to watch is `engine_step/mix` in elements (frames) per second;
//! it runs on one core, so it is frames per second per core. Target: at
//! least one million. Run with `cargo bench -p dhcp-engine --bench engine_step`.
//!
//! Replies are the codec fixtures (`tests/data/*.hex`, dnsmasq-shaped) with
//! the xid the client really uses, so every frame takes the path it would
//! take on a LAN; `validate` checks that before anything is measured.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dhcp_engine::Client;
use dhcp_engine::lease::lease_from_reply;
use dhcp_engine::wire::dhcp::Message;
use dhcp_engine::wire::frame::{Inbound, build_udp_frame, parse_frame};
use mirage_ipc::{
    ClientIdKind, ClientState, DropReason, EngineAction, EngineConfig, EngineEvent, Instant, Lease, Limits,
};

/// The fixtures' client MAC (chaddr and Ethernet destination).
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Another host on the same LAN.
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x99, 0x88, 0x77];
const SEED: [u8; 32] = [0x5e; 32];
/// Every state is set up at T0; frames are handled at T_RUN, before any
/// timer (retransmission >= 3 s, announcements 1 s, T1 30 min) is due, so a
/// measured step is the frame and nothing else.
const T0: Instant = Instant(10_000);
const T_RUN: Instant = Instant(10_100);
/// Selecting / renewing clients per batch of the mix.
const MIX_CLIENTS: usize = 8;

#[path = "../tests/support/hex.rs"]
mod fixture;
use fixture::hex;

fn offer_fixture() -> Vec<u8> {
    hex(include_str!("../tests/data/dnsmasq-offer.hex"))
}

fn ack_fixture() -> Vec<u8> {
    hex(include_str!("../tests/data/dnsmasq-ack.hex"))
}

/// A fixture frame re-addressed: new xid, chaddr and Ethernet destination,
/// UDP destination port; checksums recomputed.
fn readdress(fixture: &[u8], xid: u32, chaddr: [u8; 6], dst_port: u16) -> Vec<u8> {
    let Ok(Inbound::Dhcp(udp)) = parse_frame(fixture, false) else {
        panic!("fixture is not DHCP")
    };
    let mut msg = Message::parse(udp.payload).expect("fixture parses");
    msg.xid = xid;
    msg.chaddr[..6].copy_from_slice(&chaddr);
    let mut payload = Vec::new();
    msg.encode(&mut payload);
    build_udp_frame(
        udp.src_mac,
        chaddr,
        udp.src_ip,
        udp.dst_ip,
        67,
        dst_port,
        &payload,
    )
}

fn reply_for_us(fixture: &[u8], xid: u32) -> Vec<u8> {
    readdress(fixture, xid, MAC, 68)
}

fn config() -> EngineConfig {
    // Production defaults: RFC 2131 timings, RFC 5227 conflict detection on.
    EngineConfig::new(MAC, ClientIdKind::Mac)
}

/// The xid of the last DHCP frame among `actions`.
fn last_xid(actions: &[EngineAction]) -> u32 {
    actions
        .iter()
        .rev()
        .find_map(|a| match a {
            EngineAction::Transmit(f) if f.len() > 50 && f[12..14] == [8, 0] => {
                Some(u32::from_be_bytes([f[46], f[47], f[48], f[49]]))
            }
            _ => None,
        })
        .expect("the client sent a DHCP message")
}

/// The lease of the dnsmasq ACK, as a previous run would have stored it.
fn stored_lease() -> Lease {
    let frame = ack_fixture();
    let Ok(Inbound::Dhcp(udp)) = parse_frame(&frame, false) else {
        panic!("fixture is not DHCP")
    };
    let msg = Message::parse(udp.payload).unwrap();
    lease_from_reply(&msg, udp.src_ip, T0, &Limits::default()).expect("fixture lease is valid")
}

/// A client in SELECTING (DISCOVER sent) and the xid it waits for.
fn selecting() -> (Client, u32) {
    let mut c = Client::new(config(), None, T0, SEED);
    let mut out = Vec::new();
    c.handle(T0, EngineEvent::Tick, &mut out).unwrap();
    assert_eq!(c.state(), ClientState::Selecting);
    (c, last_xid(&out))
}

/// A client in BOUND, through INIT-REBOOT of the stored lease.
fn bound() -> Client {
    let mut c = Client::new(config(), Some(stored_lease()), T0, SEED);
    let mut out = Vec::new();
    c.handle(T0, EngineEvent::Tick, &mut out).unwrap();
    let ack = reply_for_us(&ack_fixture(), last_xid(&out));
    c.handle(
        T0,
        EngineEvent::Frame {
            data: ack,
            checksum_offloaded: false,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(c.state(), ClientState::Bound);
    c
}

/// A client in RENEWING (unicast REQUEST sent) and the xid it waits for.
fn renewing() -> (Client, u32) {
    let mut c = bound();
    let mut out = Vec::new();
    c.handle(T0, EngineEvent::Renew, &mut out).unwrap();
    assert_eq!(c.state(), ClientState::Renewing);
    (c, last_xid(&out))
}

/// Deterministic junk (xorshift64), so every run measures the same bytes.
fn random_frames(n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let len = 60 + (next() % 1455) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

/// Frames cut short: inside each header, and a datagram whose IP/UDP
/// lengths are consistent but whose DHCP message is cut (BadDhcp).
fn truncated_frames(xid: u32) -> Vec<Vec<u8>> {
    let offer = reply_for_us(&offer_fixture(), xid);
    let mut frames: Vec<Vec<u8>> = [0, 13, 14, 30, 34, 41, 42, 100, 200, 281, 300]
        .iter()
        .map(|&n| offer[..n.min(offer.len() - 1)].to_vec())
        .collect();
    frames.push(offer[..offer.len() - 1].to_vec());
    let Ok(Inbound::Dhcp(udp)) = parse_frame(&offer, false) else {
        unreachable!()
    };
    frames.push(build_udp_frame(
        udp.src_mac,
        MAC,
        udp.src_ip,
        udp.dst_ip,
        67,
        68,
        &udp.payload[..200],
    ));
    frames
}

/// Traffic a client on a busy LAN sees that is not for it: broadcast UDP to
/// other services, other clients' DISCOVERs and the servers' broadcast
/// OFFERs to them, ARP.
fn other_traffic(xid: u32) -> Vec<Vec<u8>> {
    let offer = offer_fixture();
    let mut frames: Vec<Vec<u8>> = [53u16, 67, 123, 137, 138, 5353, 1900]
        .iter()
        .map(|&port| readdress(&offer, xid, MAC, port))
        .collect();
    // Another client's broadcast OFFER: port 68, right xid even, other chaddr.
    frames.push(readdress(&offer, xid, OTHER_MAC, 68));
    frames.push(readdress(&offer, xid.wrapping_add(1), OTHER_MAC, 68));
    // Another client's DISCOVER (68 -> 67, broadcast).
    let discover = build_udp_frame(
        OTHER_MAC,
        [0xff; 6],
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        &[1u8; 300],
    );
    frames.push(discover);
    // ARP who-has from a neighbour.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&OTHER_MAC);
    arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&OTHER_MAC);
    arp.extend_from_slice(&[192, 168, 122, 7, 0, 0, 0, 0, 0, 0, 192, 168, 122, 1]);
    frames.push(arp);
    frames
}

fn frame(data: &[u8]) -> EngineEvent {
    EngineEvent::Frame {
        data: data.to_vec(),
        checksum_offloaded: false,
    }
}

/// One step, as the engine role does it: hand the frame over, carry out
/// (here: drop) the actions.
#[inline]
fn step(client: &mut Client, data: &[u8], out: &mut Vec<EngineAction>) -> Result<(), DropReason> {
    let r = client.handle(T_RUN, frame(data), out);
    out.clear();
    r
}

/// Every frame set below takes the path it is named for.
struct Frames {
    offer: Vec<u8>,
    second_offer: Vec<u8>,
    ack: Vec<u8>,
    stale_ack: Vec<u8>,
    random: Vec<Vec<u8>>,
    truncated: Vec<Vec<u8>>,
    other: Vec<Vec<u8>>,
}

fn frames() -> Frames {
    let (_, sel_xid) = selecting();
    let (_, ren_xid) = renewing();
    Frames {
        offer: reply_for_us(&offer_fixture(), sel_xid),
        // A second server's offer, after the first was taken.
        second_offer: {
            let mut f = reply_for_us(&offer_fixture(), sel_xid);
            // Different server MAC; the frame stays valid.
            f[11] ^= 1;
            f
        },
        ack: reply_for_us(&ack_fixture(), ren_xid),
        stale_ack: reply_for_us(&ack_fixture(), ren_xid.wrapping_sub(1)),
        random: random_frames(32),
        truncated: truncated_frames(sel_xid),
        other: other_traffic(sel_xid),
    }
}

fn validate(f: &Frames) {
    let mut out = Vec::new();
    let (mut c, _) = selecting();
    assert_eq!(step(&mut c, &f.offer, &mut out), Ok(()));
    assert_eq!(c.state(), ClientState::Requesting);
    assert_eq!(
        step(&mut c, &f.second_offer, &mut out),
        Err(DropReason::Unexpected)
    );

    let (mut c, _) = renewing();
    assert_eq!(step(&mut c, &f.stale_ack, &mut out), Err(DropReason::NotForUs));
    assert_eq!(c.state(), ClientState::Renewing);
    assert_eq!(step(&mut c, &f.ack, &mut out), Ok(()));
    assert_eq!(c.state(), ClientState::Bound);
    assert_eq!(c.counters().renewals, 1);
    // Now BOUND: a late duplicate of the ACK is not expected.
    assert_eq!(step(&mut c, &f.ack, &mut out), Err(DropReason::Unexpected));

    for (name, set) in [
        ("random", &f.random),
        ("truncated", &f.truncated),
        ("other", &f.other),
    ] {
        for (i, data) in set.iter().enumerate() {
            for (mut c, state) in [
                (selecting().0, ClientState::Selecting),
                (renewing().0, ClientState::Renewing),
            ] {
                // Dropped, or (a neighbour's ARP) looked at and ignored:
                // either way no state change and nothing to do.
                let r = c.handle(T_RUN, frame(data), &mut out);
                let is_arp = data.get(12..14) == Some(&[8, 6]);
                assert!(r.is_err() || is_arp, "{name}[{i}] accepted");
                assert!(
                    !out.iter()
                        .any(|a| matches!(a, EngineAction::Transmit(_) | EngineAction::ApplyLease { .. })),
                    "{name}[{i}] caused an action"
                );
                assert_eq!(c.state(), state, "{name}[{i}] changed the state");
                out.clear();
            }
        }
    }
}

/// Which client of a mix batch a frame goes to.
#[derive(Clone, Copy)]
enum To {
    Selecting(usize),
    Renewing(usize),
}

/// 64 frames: per selecting client an accepted OFFER and a second server's
/// OFFER, per renewing client a stale and then the right ACK (8 clients of
/// each), and 32 junk frames spread over all clients. Half the frames are
/// replies to us: far more than a real LAN, so a conservative figure.
fn mix(f: &Frames) -> Vec<(To, Vec<u8>)> {
    let junk: Vec<&Vec<u8>> = f
        .random
        .iter()
        .take(11)
        .chain(f.truncated.iter().take(11))
        .chain(f.other.iter().take(10))
        .collect();
    let mut m = Vec::new();
    for i in 0..MIX_CLIENTS {
        m.push((To::Selecting(i), f.offer.clone()));
        m.push((To::Renewing(i), f.stale_ack.clone()));
        m.push((To::Selecting(i), junk[4 * i].clone()));
        m.push((To::Renewing(i), junk[4 * i + 1].clone()));
        m.push((To::Selecting(i), f.second_offer.clone()));
        m.push((To::Renewing(i), f.ack.clone()));
        m.push((To::Selecting(i), junk[4 * i + 2].clone()));
        m.push((To::Renewing(i), junk[4 * i + 3].clone()));
    }
    m
}

fn bench(c: &mut Criterion) {
    let f = frames();
    validate(&f);
    let mix = mix(&f);
    assert_eq!(mix.len(), 64);

    let mut g = c.benchmark_group("engine_step");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));

    g.throughput(Throughput::Elements(mix.len() as u64));
    g.bench_function("mix", |b| {
        b.iter_batched(
            || {
                let sel: Vec<Client> = (0..MIX_CLIENTS).map(|_| selecting().0).collect();
                let ren: Vec<Client> = (0..MIX_CLIENTS).map(|_| renewing().0).collect();
                (sel, ren, Vec::with_capacity(8))
            },
            |(mut sel, mut ren, mut out)| {
                for (to, data) in &mix {
                    let client = match *to {
                        To::Selecting(i) => &mut sel[i],
                        To::Renewing(i) => &mut ren[i],
                    };
                    let _ = black_box(step(client, black_box(data), &mut out));
                }
                // Dropped outside the measurement.
                (sel, ren)
            },
            BatchSize::SmallInput,
        )
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("offer_selecting", |b| {
        b.iter_batched(
            || (selecting().0, Vec::with_capacity(8)),
            |(mut c, mut out)| {
                let _ = black_box(step(&mut c, black_box(&f.offer), &mut out));
                c
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ack_renewing_right_xid", |b| {
        b.iter_batched(
            || (renewing().0, Vec::with_capacity(8)),
            |(mut c, mut out)| {
                let _ = black_box(step(&mut c, black_box(&f.ack), &mut out));
                c
            },
            BatchSize::SmallInput,
        )
    });
    // Frames that leave the state as it is run against one long-lived client.
    let (mut ren, _) = renewing();
    let mut out = Vec::with_capacity(8);
    g.bench_function("ack_renewing_wrong_xid", |b| {
        b.iter(|| black_box(step(&mut ren, black_box(&f.stale_ack), &mut out)))
    });
    let mut bnd = bound();
    g.bench_function("ack_bound_late", |b| {
        b.iter(|| black_box(step(&mut bnd, black_box(&f.ack), &mut out)))
    });
    let (mut sel, _) = selecting();
    for (name, set) in [
        ("junk_random", &f.random),
        ("junk_truncated", &f.truncated),
        ("junk_other_traffic", &f.other),
    ] {
        g.throughput(Throughput::Elements(set.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                for data in set {
                    let _ = black_box(step(&mut sel, black_box(data), &mut out));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
