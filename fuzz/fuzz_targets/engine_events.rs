//! The engine fed arbitrary event sequences, with replies shaped to match
//! its last transaction (right xid and chaddr) so that the fuzzer reaches
//! every state, not only the drop paths. Invariants checked at every step:
//! no panic, the next wake-up is finite and not in the past (unless
//! stopped), no ApplyLease that the policy refuses, bounded output.
#![no_main]
use arbitrary::Arbitrary;
use dhcp_engine::Client;
use dhcp_engine::wire::frame::build_udp_frame;
use libfuzzer_sys::fuzz_target;
use mirage_ipc::{
    ClientIdKind, EngineAction, EngineConfig, EngineEvent, INFINITE_LEASE, Instant, IntentKind, Lease, Limits,
};
use std::net::Ipv4Addr;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

#[derive(Arbitrary, Debug)]
enum Step {
    Reply { msg_type: u8, yiaddr: [u8; 4], server: [u8; 4], options: Vec<u8>, offloaded: bool },
    RawFrame(Vec<u8>),
    Arp { op: bool, sender_ip: [u8; 4], target_ip: [u8; 4] },
    Tick,
    LinkUp,
    LinkDown,
    IntentFailed,
    Renew,
    Stop(bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: [u8; 32],
    acd: bool,
    stored: Option<(u8, u16)>,
    steps: Vec<(u32, Step)>,
}

fn reply(xid: [u8; 4], msg_type: u8, yiaddr: [u8; 4], options: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 2;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid);
    p[16..20].copy_from_slice(&yiaddr);
    p[28..34].copy_from_slice(&MAC);
    p.extend_from_slice(&[99, 130, 83, 99, 53, 1, msg_type]);
    p.extend_from_slice(&options[..options.len().min(1200)]);
    p.push(255);
    p
}

fuzz_target!(|input: Input| {
    let mut config = EngineConfig::new(MAC, ClientIdKind::Mac);
    config.acd.enabled = input.acd;
    let limits = Limits::default();
    let stored = input.stored.map(|(host, secs)| Lease {
        address: Ipv4Addr::new(10, 0, 0, host.clamp(2, 254)),
        prefix_len: 24,
        server_id: Ipv4Addr::new(10, 0, 0, 1),
        routes: vec![],
        dns_servers: vec![],
        ntp_servers: vec![],
        domain_name: None,
        search: vec![],
        hostname: None,
        mtu: None,
        lease_secs: u32::from(secs).max(1),
        renew_secs: u32::from(secs) / 2,
        rebind_secs: u32::from(secs) * 7 / 8,
        acquired_at: Instant(0),
    });
    let mut now = Instant(1_000);
    let mut client = Client::new(config, stored, now, input.seed);
    let mut out = Vec::new();
    let mut xid = [0u8; 4];
    let mut stopped = false;
    let _ = client.handle(now, EngineEvent::Tick, &mut out);
    for (advance, step) in input.steps.into_iter().take(256) {
        for a in out.drain(..) {
            match a {
                EngineAction::Transmit(f) if f.len() >= 50 && f[12..14] == [8, 0] => {
                    xid.copy_from_slice(&f[46..50]);
                }
                EngineAction::ApplyLease { lease, valid_secs } => {
                    assert_eq!(lease.check(&limits), Ok(()), "applied a refused lease");
                    assert!(lease.lease_secs == INFINITE_LEASE || valid_secs <= lease.lease_secs);
                }
                _ => {}
            }
        }
        now = now.add_millis(u64::from(advance % 4_000_000));
        let event = match step {
            Step::Reply { msg_type, yiaddr, server, options, offloaded } => EngineEvent::Frame {
                data: build_udp_frame(
                    SERVER_MAC,
                    MAC,
                    Ipv4Addr::from(server),
                    Ipv4Addr::BROADCAST,
                    67,
                    68,
                    &reply(xid, msg_type, yiaddr, &options),
                ),
                checksum_offloaded: offloaded,
            },
            Step::RawFrame(data) => EngineEvent::Frame { data, checksum_offloaded: false },
            Step::Arp { op, sender_ip, target_ip } => {
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&SERVER_MAC);
                f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, if op { 1 } else { 2 }]);
                f.extend_from_slice(&SERVER_MAC);
                f.extend_from_slice(&sender_ip);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&target_ip);
                EngineEvent::Frame { data: f, checksum_offloaded: false }
            }
            Step::Tick => EngineEvent::Tick,
            Step::LinkUp => EngineEvent::LinkUp,
            Step::LinkDown => EngineEvent::LinkDown,
            Step::IntentFailed => EngineEvent::IntentResult { kind: IntentKind::ApplyLease, ok: false },
            Step::Renew => EngineEvent::Renew,
            Step::Stop(release) => {
                stopped = true;
                EngineEvent::Stop { force_release: release }
            }
        };
        let _ = client.handle(now, event, &mut out);
        // Honour the wake-up the engine asked for, as a real loop would.
        let due = client.poll_at();
        if due <= now {
            let _ = client.handle(now, EngineEvent::Tick, &mut out);
        }
        assert!(out.len() < 64, "unbounded output: {} actions", out.len());
        let due = client.poll_at();
        if !stopped {
            assert!(due != Instant::NEVER, "no wake-up while running");
            assert!(due > now, "wake-up in the past after a tick");
        }
    }
});
