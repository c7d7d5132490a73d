//! Virtual-time harness: the SDK's generic simulation
//! ([`mirage_engine::sim::Sim`]) of one client, in a [`DhcpWorld`] of fake
//! servers and ARP peers on a fake link and an actuator, and the DHCP views
//! of its log ([`DhcpSim`]).
//!
//! Time only moves when the harness moves it: `run_until` jumps straight to
//! the client's next wake-up or the next frame in flight, so a day of lease
//! life runs in microseconds and every instant is exact.
#![allow(dead_code)]

pub mod server;

use std::net::Ipv4Addr;

use dhcp_engine::Client;
use dhcp_engine::wire::dhcp::{Message, MessageType};
use dhcp_engine::wire::frame::{self, ArpPacket, Inbound};
use mirage_engine::sim::{Schedule, World};
use mirage_ipc::{
    ClientIdKind, ClientState, DropReason, EngineAction, EngineConfig, EngineEvent, Instant, IntentKind,
    Lease, Limits,
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

/// The client in virtual time.
pub type Sim = mirage_engine::sim::Sim<Client, DhcpWorld>;

/// Everything around the client: a link with servers and ARP peers on it,
/// and an actuator. It answers the client's actions by scheduling events.
pub struct DhcpWorld {
    pub servers: Vec<FakeServer>,
    pub peers: Vec<ArpPeer>,
    /// One-way delay of every frame on the fake link.
    pub latency_ms: u64,
    /// When false, transmitted frames are lost (cable unplugged).
    pub link_up: bool,
    /// When set, the actuator answers every ApplyLease with a failure.
    pub apply_fails: bool,
    /// When set, the client's own ARP frames come back to it, as they do on
    /// some bridges and with some drivers (field notes item 15).
    pub echo_arp: bool,
    /// The policy every ApplyLease must pass (the client's config's).
    pub limits: Limits,
}

impl DhcpWorld {
    pub fn new(limits: Limits) -> DhcpWorld {
        DhcpWorld {
            servers: Vec::new(),
            peers: Vec::new(),
            latency_ms: 1,
            link_up: true,
            apply_fails: false,
            echo_arp: false,
            limits,
        }
    }
}

impl World<Client> for DhcpWorld {
    fn on_action(&mut self, now: Instant, action: &EngineAction, schedule: &mut Schedule<EngineEvent>) {
        match action {
            EngineAction::Transmit(data) if self.link_up => {
                let at = now.add_millis(self.latency_ms);
                let mut replies = Vec::new();
                for s in &mut self.servers {
                    replies.extend(s.receive(now, data));
                }
                for p in &self.peers {
                    replies.extend(p.receive(data));
                }
                if self.echo_arp && matches!(frame::parse_frame(data, false), Ok(Inbound::Arp(_))) {
                    replies.push(data.clone());
                }
                for data in replies {
                    schedule.at(
                        at,
                        EngineEvent::Frame {
                            data,
                            checksum_offloaded: false,
                        },
                    );
                }
            }
            EngineAction::ApplyLease { lease, .. } => {
                // The invariant every test relies on.
                assert_eq!(lease.check(&self.limits), Ok(()), "ApplyLease of a refused lease");
                if self.apply_fails {
                    schedule.at(
                        now,
                        EngineEvent::IntentResult {
                            kind: IntentKind::ApplyLease,
                            ok: false,
                        },
                    );
                }
            }
            _ => {}
        }
    }
}

/// The DHCP client's simulation: how tests build it, feed it frames, and
/// read its log.
pub trait DhcpSim {
    /// A client built with `Client::new` at `now` (nothing sent until its
    /// first wake-up), on a link with no server yet.
    fn new(config: EngineConfig, stored: Option<Lease>, now: Instant, seed: u8) -> Self;
    /// A client at time 0 and one server, `FakeServer::new(1)`.
    fn with_server(config: EngineConfig, seed: u8) -> Self;
    /// Deliver a frame to the client now.
    fn inject_frame(&mut self, data: Vec<u8>) -> Result<(), DropReason>;
    fn run_for_secs(&mut self, secs: u64);
    /// Pull the cable (`plugged` false) or plug it back at `at`: the link
    /// carries frames or not from then on, and the client hears of it then.
    fn cable_at(&mut self, at: Instant, plugged: bool);
    /// Run until the client is BOUND (or panic after `secs` of virtual
    /// time), in 10 ms steps.
    fn bind_within(&mut self, secs: u64);
    /// Every frame the client sent, decoded, with its time.
    fn sent(&self) -> Vec<(Instant, Sent)>;
    /// DHCP messages of `kind` the client sent, with their time.
    fn sent_dhcp(&self, kind: MessageType) -> Vec<(Instant, Message, [u8; 6], Ipv4Addr, Ipv4Addr)>;
    fn sent_arp(&self) -> Vec<(Instant, ArpPacket)>;
    /// States in the order they were published.
    fn states(&self) -> Vec<ClientState>;
    fn applies(&self) -> Vec<(Instant, Lease, u32)>;
    fn removes(&self) -> Vec<(Instant, Lease)>;
    fn persists(&self) -> Vec<(Instant, Option<Lease>)>;
}

impl DhcpSim for Sim {
    fn new(config: EngineConfig, stored: Option<Lease>, now: Instant, seed: u8) -> Sim {
        let world = DhcpWorld::new(config.limits);
        Sim::from_engine(Client::new(config, stored, now, [seed; 32]), now, world)
    }

    fn with_server(config: EngineConfig, seed: u8) -> Sim {
        let mut s = <Sim as DhcpSim>::new(config, None, Instant(0), seed);
        s.world.servers.push(FakeServer::new(1));
        s
    }

    fn inject_frame(&mut self, data: Vec<u8>) -> Result<(), DropReason> {
        self.handle(EngineEvent::Frame {
            data,
            checksum_offloaded: false,
        })
    }

    fn run_for_secs(&mut self, secs: u64) {
        self.run_for(secs.saturating_mul(1000));
    }

    fn cable_at(&mut self, at: Instant, plugged: bool) {
        self.change_at(at, move |now, world, schedule| {
            world.link_up = plugged;
            let event = if plugged {
                EngineEvent::LinkUp
            } else {
                EngineEvent::LinkDown
            };
            schedule.at(now, event);
        });
    }

    fn bind_within(&mut self, secs: u64) {
        let end = self.now.add_secs(secs);
        while self.engine.state() != ClientState::Bound {
            assert!(self.now < end, "not bound within {secs} s: {:?}", self.states());
            let step = self.now.add_millis(10).min(end);
            self.run_until(step);
        }
    }

    fn sent(&self) -> Vec<(Instant, Sent)> {
        self.pick(|a| match a {
            EngineAction::Transmit(d) => Some(decode_sent(d)),
            _ => None,
        })
    }

    fn sent_dhcp(&self, kind: MessageType) -> Vec<(Instant, Message, [u8; 6], Ipv4Addr, Ipv4Addr)> {
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

    fn sent_arp(&self) -> Vec<(Instant, ArpPacket)> {
        self.sent()
            .into_iter()
            .filter_map(|(t, s)| match s {
                Sent::Arp(a) => Some((t, a)),
                Sent::Dhcp { .. } => None,
            })
            .collect()
    }

    fn states(&self) -> Vec<ClientState> {
        self.pick(|a| match a {
            EngineAction::PublishStatus(s) => Some(s.state),
            _ => None,
        })
        .into_iter()
        .map(|(_, s)| s)
        .collect()
    }

    fn applies(&self) -> Vec<(Instant, Lease, u32)> {
        self.pick(|a| match a {
            EngineAction::ApplyLease { lease, valid_secs } => Some((lease.clone(), *valid_secs)),
            _ => None,
        })
        .into_iter()
        .map(|(t, (l, v))| (t, l, v))
        .collect()
    }

    fn removes(&self) -> Vec<(Instant, Lease)> {
        self.pick(|a| match a {
            EngineAction::RemoveLease { lease } => Some(lease.clone()),
            _ => None,
        })
    }

    fn persists(&self) -> Vec<(Instant, Option<Lease>)> {
        self.pick(|a| match a {
            EngineAction::PersistLease(l) => Some(l.clone()),
            _ => None,
        })
    }
}
