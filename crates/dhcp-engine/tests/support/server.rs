//! An in-process DHCP server and ARP peer for virtual-time simulations.
//!
//! The server speaks just enough RFC 2131 to drive the client through every
//! state: OFFER for DISCOVER, ACK or NAK for REQUEST (selecting, init-reboot,
//! renewing, rebinding), and it records everything it saw. Its replies are
//! built with the codec (`Message::encode`, `build_udp_frame`), so the client
//! is exercised on real bytes.

use std::net::Ipv4Addr;

use dhcp_engine::wire::dhcp::{Message, MessageType, Op, Options};
use dhcp_engine::wire::frame::{
    self, ArpOp, ArpPacket, BROADCAST_MAC, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, Inbound,
};
use mirage_ipc::Instant;

/// How a server answers REQUESTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer everything it should.
    Normal,
    /// Answer nothing at all (server down, or unicast lost).
    Silent,
    /// NAK every REQUEST (also those naming another server while SELECTING:
    /// a misbehaving second server).
    NakAll,
    /// Offer, and answer broadcasts, but ignore unicast (RENEWING) requests,
    /// like a server behind a relay that does not forward unicast (field
    /// notes item 11) or Azure at T1 (item 10).
    IgnoreUnicast,
    /// Answer DISCOVER and the REQUESTs of SELECTING and INIT-REBOOT, but
    /// NAK every renewal (ciaddr set): the flapping case of issue 9.
    NakRenewals,
}

/// One client message as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub msg: Message,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub dst_mac: [u8; 6],
}

pub struct FakeServer {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub mode: Mode,
    /// The address handed to the (single) client; moved on after a DECLINE.
    pub address: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub lease_secs: u32,
    pub t1: Option<u32>,
    pub t2: Option<u32>,
    /// Send option 54 (field notes item 8: some servers do not).
    pub send_server_id: bool,
    /// Echo option 61 (RFC 6842).
    pub echo_client_id: bool,
    /// Replace the echoed option 61 with this one (an RFC 6842 test).
    pub client_id_override: Option<Vec<u8>>,
    /// Add this to the xid of replies (a wrong-xid test).
    pub xid_skew: u32,
    /// Reply source port (a wrong-port test); 67 normally.
    pub src_port: u16,
    /// Overwrite chaddr of replies with this (a wrong-chaddr test).
    pub chaddr_override: Option<[u8; 6]>,
    /// ACK a different address than requested (RENEWING test).
    pub ack_address_override: Option<Ipv4Addr>,
    pub seen: Vec<Seen>,
}

impl FakeServer {
    pub fn new(index: u8) -> FakeServer {
        FakeServer {
            mac: [0x02, 0x53, 0, 0, 0, index],
            ip: Ipv4Addr::new(192, 168, 7, index),
            mode: Mode::Normal,
            address: Ipv4Addr::new(192, 168, 7, 100 + index),
            mask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(192, 168, 7, 254)),
            lease_secs: 86_400,
            t1: None,
            t2: None,
            send_server_id: true,
            echo_client_id: true,
            client_id_override: None,
            xid_skew: 0,
            src_port: DHCP_SERVER_PORT,
            chaddr_override: None,
            ack_address_override: None,
            seen: Vec::new(),
        }
    }

    /// Messages of `kind` seen so far.
    pub fn seen_of(&self, kind: MessageType) -> Vec<&Seen> {
        self.seen
            .iter()
            .filter(|s| s.msg.options.message_type == Some(kind))
            .collect()
    }

    /// Take in one frame the client sent; return the frames to answer with.
    pub fn receive(&mut self, at: Instant, data: &[u8]) -> Vec<Vec<u8>> {
        // parse_frame only takes UDP to port 68; client frames go to 67, so
        // read them with a small hand parser of our own making.
        let Some((dst_mac, src_ip, dst_ip, payload)) = client_udp(data) else {
            return Vec::new();
        };
        self.receive_udp(at, dst_mac, src_ip, dst_ip, payload)
    }

    pub fn receive_udp(
        &mut self,
        at: Instant,
        dst_mac: [u8; 6],
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        payload: &[u8],
    ) -> Vec<Vec<u8>> {
        if dst_mac != BROADCAST_MAC && dst_mac != self.mac {
            return Vec::new();
        }
        if dst_ip != Ipv4Addr::BROADCAST && dst_ip != self.ip {
            return Vec::new();
        }
        let Ok(msg) = Message::parse(payload) else {
            return Vec::new();
        };
        self.seen.push(Seen {
            at,
            msg: msg.clone(),
            src_ip,
            dst_ip,
            dst_mac,
        });
        if self.mode == Mode::Silent {
            return Vec::new();
        }
        let unicast = dst_mac == self.mac;
        match msg.options.message_type {
            Some(MessageType::Discover) => vec![self.reply(&msg, MessageType::Offer, self.address)],
            Some(MessageType::Request) => {
                if unicast && self.mode == Mode::IgnoreUnicast {
                    return Vec::new();
                }
                if self.mode == Mode::NakAll
                    || (self.mode == Mode::NakRenewals && !msg.ciaddr.is_unspecified())
                {
                    return vec![self.reply(&msg, MessageType::Nak, Ipv4Addr::UNSPECIFIED)];
                }
                // SELECTING: a REQUEST naming another server declines ours.
                if let Some(sid) = msg.options.server_id
                    && sid != self.ip
                {
                    return Vec::new();
                }
                let wanted = msg.options.requested_ip.unwrap_or(msg.ciaddr);
                if wanted == self.address {
                    let addr = self.ack_address_override.unwrap_or(self.address);
                    vec![self.reply(&msg, MessageType::Ack, addr)]
                } else {
                    vec![self.reply(&msg, MessageType::Nak, Ipv4Addr::UNSPECIFIED)]
                }
            }
            Some(MessageType::Decline) => {
                let o = self.address.octets();
                self.address = Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(1));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A reply message to `req` (not yet framed), with this server's options.
    pub fn reply_message(&self, req: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> Message {
        let mut options = Options {
            message_type: Some(kind),
            server_id: self.send_server_id.then_some(self.ip),
            ..Options::default()
        };
        if self.echo_client_id {
            options.client_id = self
                .client_id_override
                .clone()
                .or_else(|| req.options.client_id.clone());
        }
        if kind != MessageType::Nak {
            options.subnet_mask = Some(self.mask);
            options.routers = self.router.into_iter().collect();
            options.dns_servers = vec![self.ip];
            options.lease_time = Some(self.lease_secs);
            options.renewal_time = self.t1;
            options.rebinding_time = self.t2;
        }
        let mut chaddr = req.chaddr;
        if let Some(c) = self.chaddr_override {
            chaddr[..6].copy_from_slice(&c);
        }
        Message {
            op: Op::Reply,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: req.xid.wrapping_add(self.xid_skew),
            secs: 0,
            broadcast: req.broadcast,
            ciaddr: req.ciaddr,
            yiaddr,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options,
        }
    }

    /// Frame a reply the way RFC 2131 4.1 says a server delivers it:
    /// broadcast when the client asked for it or has no address, else
    /// unicast to ciaddr / yiaddr and chaddr.
    pub fn frame(&self, req: &Message, reply: &Message) -> Vec<u8> {
        let mut payload = Vec::new();
        reply.encode(&mut payload);
        let (dst_mac, dst_ip) = if reply.options.message_type == Some(MessageType::Nak)
            || req.broadcast
            || req.ciaddr.is_unspecified()
        {
            (BROADCAST_MAC, Ipv4Addr::BROADCAST)
        } else {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&req.chaddr[..6]);
            (mac, req.ciaddr)
        };
        frame::build_udp_frame(
            self.mac,
            dst_mac,
            self.ip,
            dst_ip,
            self.src_port,
            DHCP_CLIENT_PORT,
            &payload,
        )
    }

    pub fn reply(&self, req: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> Vec<u8> {
        let m = self.reply_message(req, kind, yiaddr);
        self.frame(req, &m)
    }
}

/// Read Ethernet + IPv4 + UDP to port 67 (the client's direction, which the
/// engine's own parser rejects by design). Returns (dst MAC, src IP, dst IP,
/// payload).
pub fn client_udp(data: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr, &[u8])> {
    if data.len() < 14 + 20 + 8 || data[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &data[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp = &ip[ihl..total.min(ip.len())];
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != DHCP_SERVER_PORT {
        return None;
    }
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&data[..6]);
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Some((dst_mac, src, dst, &udp[8..]))
}

/// A host on the link that owns `owns` and answers ARP for it, the way a
/// neighbour with a static address (or a duplicate VM) does.
pub struct ArpPeer {
    pub mac: [u8; 6],
    pub owns: Ipv4Addr,
}

impl ArpPeer {
    /// Answer probes and requests for our address (RFC 826 reply).
    pub fn receive(&self, data: &[u8]) -> Vec<Vec<u8>> {
        let Ok(Inbound::Arp(arp)) = frame::parse_frame(data, false) else {
            return Vec::new();
        };
        if arp.op != ArpOp::Request || arp.target_ip != self.owns || arp.sender_mac == self.mac {
            return Vec::new();
        }
        let reply = ArpPacket {
            op: ArpOp::Reply,
            sender_mac: self.mac,
            sender_ip: self.owns,
            target_mac: arp.sender_mac,
            target_ip: arp.sender_ip,
        };
        vec![frame::build_arp_frame(&reply, arp.sender_mac)]
    }
}
