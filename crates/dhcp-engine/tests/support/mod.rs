//! Virtual-time harness: one client, fake servers and ARP peers on a fake
//! link, and a log of everything the client asked for.
//!
//! Time only moves when the harness moves it: `run_until` jumps straight to
//! the client's next wake-up or the next frame in flight, so a day of lease
//! life runs in microseconds and every instant is exact.
#![allow(dead_code)]

pub mod server;

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use dhcp_engine::Client;
use dhcp_engine::wire::dhcp::{Message, MessageType};
use dhcp_engine::wire::frame::{self, ArpPacket, Inbound};
use mirage_ipc::{
    ClientIdKind, ClientState, DropReason, EngineAction, EngineConfig, EngineEvent, Instant, IntentKind,
    Lease,
};
pub use server::{ArpPeer, FakeServer, Mode, client_udp};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x1e, 0x00, 0x00, 0x01];

/// The config most tests use: DUID client id, RFC 2131 timings, ACD off
/// (tests that probe turn it on).
pub fn config() -> EngineConfig {
    let mut c = EngineConfig::new(
        CLIENT_MAC,
        ClientIdKind::Duid {
            iaid: 7,
            duid: vec![0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        },
    );
    c.acd.enabled = false;
    c.hostname = Some("node-1".into());
    c
}

/// A frame the client sent, decoded.
#[derive(Clone, Debug)]
pub enum Sent {
    Dhcp {
        msg: Box<Message>,
        dst_mac: [u8; 6],
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
    },
    Arp(ArpPacket),
}

impl Sent {
    pub fn dhcp_type(&self) -> Option<MessageType> {
        match self {
            Sent::Dhcp { msg, .. } => msg.options.message_type,
            Sent::Arp(_) => None,
        }
    }
}

pub fn decode_sent(data: &[u8]) -> Sent {
    if let Ok(Inbound::Arp(arp)) = frame::parse_frame(data, false) {
        return Sent::Arp(arp);
    }
    let (dst_mac, src_ip, dst_ip, payload) = client_udp(data).expect("client frame is UDP to 67 or ARP");
    let msg = Message::parse(payload).expect("client message parses");
    Sent::Dhcp {
        msg: Box::new(msg),
        dst_mac,
        src_ip,
        dst_ip,
    }
}

pub struct Sim {
    pub client: Client,
    pub now: Instant,
    pub servers: Vec<FakeServer>,
    pub peers: Vec<ArpPeer>,
    /// One-way delay of every frame on the fake link.
    pub latency_ms: u64,
    /// Frames on their way to the client: (arrival, bytes).
    pub in_flight: VecDeque<(Instant, Vec<u8>)>,
    /// Everything the client asked for, with the time it asked.
    pub log: Vec<(Instant, EngineAction)>,
    /// Every frame the client dropped, with the reason.
    pub drops: Vec<(Instant, DropReason)>,
    /// When false, transmitted frames are lost (cable unplugged).
    pub link_up: bool,
    /// When set, the actuator answers every ApplyLease with a failure.
    pub apply_fails: bool,
    /// When set, the client's own ARP frames come back to it, as they do on
    /// some bridges and with some drivers (field notes item 15).
    pub echo_arp: bool,
    config: EngineConfig,
}

impl Sim {
    pub fn new(config: EngineConfig, stored: Option<Lease>, now: Instant, seed: u8) -> Sim {
        Sim {
            client: Client::new(config.clone(), stored, now, [seed; 32]),
            now,
            servers: Vec::new(),
            peers: Vec::new(),
            latency_ms: 1,
            in_flight: VecDeque::new(),
            log: Vec::new(),
            drops: Vec::new(),
            link_up: true,
            apply_fails: false,
            echo_arp: false,
            config,
        }
    }

    pub fn with_server(config: EngineConfig, seed: u8) -> Sim {
        let mut s = Sim::new(config, None, Instant(0), seed);
        s.servers.push(FakeServer::new(1));
        s
    }

    /// Feed one event at the current time and carry out what comes out.
    pub fn handle(&mut self, event: EngineEvent) -> Result<(), DropReason> {
        let mut out = Vec::new();
        let r = self.client.handle(self.now, event, &mut out);
        if let Err(reason) = r {
            self.drops.push((self.now, reason));
        }
        self.carry_out(out);
        r
    }

    fn carry_out(&mut self, out: Vec<EngineAction>) {
        let mut results = Vec::new();
        for action in out {
            match &action {
                EngineAction::Transmit(data) if self.link_up => {
                    let at = self.now.add_millis(self.latency_ms);
                    let mut replies = Vec::new();
                    for s in &mut self.servers {
                        replies.extend(s.receive(self.now, data));
                    }
                    for p in &self.peers {
                        replies.extend(p.receive(data));
                    }
                    if self.echo_arp && matches!(frame::parse_frame(data, false), Ok(Inbound::Arp(_))) {
                        replies.push(data.clone());
                    }
                    for r in replies {
                        self.in_flight.push_back((at, r));
                    }
                }
                EngineAction::ApplyLease { lease, .. } => {
                    // The invariant every test relies on.
                    assert_eq!(
                        lease.check(&self.config.limits),
                        Ok(()),
                        "ApplyLease of a refused lease"
                    );
                    if self.apply_fails {
                        results.push(EngineEvent::IntentResult {
                            kind: IntentKind::ApplyLease,
                            ok: false,
                        });
                    }
                }
                _ => {}
            }
            self.log.push((self.now, action));
        }
        for ev in results {
            self.handle(ev).expect("intent results are never dropped");
        }
    }

    /// Move time forward to `end`, waking the client whenever it asked to
    /// and delivering frames when they arrive.
    pub fn run_until(&mut self, end: Instant) {
        for _ in 0..1_000_000 {
            let wake = self.client.poll_at();
            let frame_at = self.in_flight.front().map_or(Instant::NEVER, |f| f.0);
            let t = wake.min(frame_at);
            if t > end {
                self.now = self.now.max(end);
                return;
            }
            self.now = self.now.max(t);
            if frame_at <= wake {
                let (_, data) = self.in_flight.pop_front().expect("a frame is in flight");
                let _ = self.handle(EngineEvent::Frame {
                    data,
                    checksum_offloaded: false,
                });
            } else {
                let _ = self.handle(EngineEvent::Tick);
            }
        }
        panic!(
            "simulation did not reach {end:?}: the client wakes up in a loop (now {:?}, state {:?}, poll_at {:?}, in flight {})",
            self.now,
            self.client.state(),
            self.client.poll_at(),
            self.in_flight.len()
        );
    }

    pub fn run_for_secs(&mut self, secs: u64) {
        let end = self.now.add_secs(secs);
        self.run_until(end);
    }

    /// Deliver a frame to the client now.
    pub fn inject(&mut self, data: Vec<u8>) -> Result<(), DropReason> {
        self.handle(EngineEvent::Frame {
            data,
            checksum_offloaded: false,
        })
    }

    /// Every frame the client sent, decoded, with its time.
    pub fn sent(&self) -> Vec<(Instant, Sent)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                EngineAction::Transmit(d) => Some((*t, decode_sent(d))),
                _ => None,
            })
            .collect()
    }

    /// DHCP messages of `kind` the client sent, with their time.
    pub fn sent_dhcp(&self, kind: MessageType) -> Vec<(Instant, Message, [u8; 6], Ipv4Addr, Ipv4Addr)> {
        self.sent()
            .into_iter()
            .filter_map(|(t, s)| match s {
                Sent::Dhcp {
                    msg,
                    dst_mac,
                    src_ip,
                    dst_ip,
                } if msg.options.message_type == Some(kind) => Some((t, *msg, dst_mac, src_ip, dst_ip)),
                _ => None,
            })
            .collect()
    }

    pub fn sent_arp(&self) -> Vec<(Instant, ArpPacket)> {
        self.sent()
            .into_iter()
            .filter_map(|(t, s)| match s {
                Sent::Arp(a) => Some((t, a)),
                Sent::Dhcp { .. } => None,
            })
            .collect()
    }

    /// States in the order they were published.
    pub fn states(&self) -> Vec<ClientState> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                EngineAction::PublishStatus(s) => Some(s.state),
                _ => None,
            })
            .collect()
    }

    pub fn applies(&self) -> Vec<(Instant, Lease, u32)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                EngineAction::ApplyLease { lease, valid_secs } => Some((*t, lease.clone(), *valid_secs)),
                _ => None,
            })
            .collect()
    }

    pub fn removes(&self) -> Vec<(Instant, Lease)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                EngineAction::RemoveLease { lease } => Some((*t, lease.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn persists(&self) -> Vec<(Instant, Option<Lease>)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                EngineAction::PersistLease(l) => Some((*t, l.clone())),
                _ => None,
            })
            .collect()
    }

    /// Run until the client is BOUND (or panic after `secs` of virtual time).
    pub fn bind_within(&mut self, secs: u64) {
        let end = self.now.add_secs(secs);
        while self.client.state() != ClientState::Bound {
            assert!(self.now < end, "not bound within {secs} s: {:?}", self.states());
            let step = self.now.add_millis(10).min(end);
            self.run_until(step);
        }
    }
}
