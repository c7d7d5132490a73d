//! A programmable hostile DHCP server for end-to-end tests.
//!
//! It speaks raw Ethernet on the server end of a [`Net`]'s veth pair, on
//! the test kit's raw server ([`RawServer`]): a thread moves into the server
//! namespace, opens [`PacketSocket::open_server`] (UDP to port 67 and ARP,
//! filtered in the kernel) and hands every client message to a *script*: a
//! closure that maps
//! the message to zero or more whole frames to send back. Scripts build
//! replies with [`Ctx`] (well-formed OFFER / ACK / NAK as [`Message`]s that
//! the case then bends) or write raw bytes where the case needs malformed
//! wire data. Frames can also be injected unsolicited ([`HostileServer::inject`])
//! or flooded at a fixed rate ([`HostileServer::flood`]).
//!
//! Nothing here validates what it sends: that is the point. Everything runs
//! inside the namespaces the test made, never on a real interface.
//! Needs root (namespaces, raw sockets); CI runs as root.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Instant;

use dhcp_engine::wire::dhcp::{MAGIC_COOKIE, Message, MessageType, Op, Options};
use dhcp_engine::wire::frame::{BROADCAST_MAC, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, build_udp_frame};
use mirage_sdk::packet::PacketSocket;
use mirage_testkit::raw::{Link, RawServer, Spec};

use super::{Net, SERVER_IF};

/// Lease time of the standard replies: long enough that no renewal happens
/// during a case unless the case shortens it.
pub const STANDARD_LEASE_SECS: u32 = 600;
/// Host part of the address the standard OFFER carries.
pub const OFFERED_HOST: u8 = 77;
/// Fixed BOOTP header length (RFC 2131 figure 1), before the magic cookie.
const FIXED_HEADER_LEN: usize = 236;
const ETH_HEADER_LEN: usize = 14;

/// A client message as the server received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub src_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// Option 53 (`Other(0)` when absent).
    pub kind: MessageType,
    /// Messages of the same kind received before this one (0 for the first).
    pub nth: usize,
    pub msg: Message,
}

impl Seen {
    /// A REQUEST with option 54 set: SELECTING (RFC 2131 4.3.2).
    pub fn is_selecting_request(&self) -> bool {
        self.kind == MessageType::Request && self.msg.options.server_id.is_some()
    }

    /// A REQUEST with option 50, no 54 and ciaddr 0: INIT-REBOOT.
    pub fn is_init_reboot_request(&self) -> bool {
        self.kind == MessageType::Request
            && self.msg.options.server_id.is_none()
            && self.msg.options.requested_ip.is_some()
            && self.msg.ciaddr.is_unspecified()
    }

    /// A REQUEST with ciaddr set: RENEWING (unicast) or REBINDING.
    pub fn is_renewal(&self) -> bool {
        self.kind == MessageType::Request && !self.msg.ciaddr.is_unspecified()
    }

    /// The client's MAC from chaddr.
    pub fn chaddr(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.msg.chaddr[..6]);
        mac
    }
}

/// What the server knows about its link; scripts build replies from it.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub server_mac: [u8; 6],
    pub server_ip: Ipv4Addr,
    /// First three octets of the /24 the veth pair lives in.
    pub prefix: [u8; 3],
}

impl Ctx {
    /// `prefix.host`.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }

    /// The address the standard OFFER carries.
    pub fn offered(&self) -> Ipv4Addr {
        self.addr(OFFERED_HOST)
    }

    /// A well-formed reply of `kind` to `req`, as a legitimate server on this
    /// link would send it (RFC 2131 table 3): xid, chaddr, flags and
    /// client identifier echoed (RFC 6842), option 54, and for OFFER / ACK
    /// a /24, a router and a DNS server (this server), a 600 s lease.
    /// The ACK's yiaddr is what the REQUEST asked for (ciaddr, else option
    /// 50), else the standard offer.
    pub fn reply(&self, req: &Seen, kind: MessageType) -> Message {
        let nak = kind == MessageType::Nak;
        let yiaddr = match kind {
            MessageType::Nak => Ipv4Addr::UNSPECIFIED,
            MessageType::Offer => self.offered(),
            _ if !req.msg.ciaddr.is_unspecified() => req.msg.ciaddr,
            _ => req.msg.options.requested_ip.unwrap_or(self.offered()),
        };
        let mut options = Options {
            message_type: Some(kind),
            server_id: Some(self.server_ip),
            client_id: req.msg.options.client_id.clone(),
            ..Options::default()
        };
        if !nak {
            options.lease_time = Some(STANDARD_LEASE_SECS);
            options.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
            options.routers = vec![self.server_ip];
            options.dns_servers = vec![self.server_ip];
        }
        Message {
            op: Op::Reply,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: req.msg.xid,
            secs: 0,
            broadcast: req.msg.broadcast,
            ciaddr: if nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                req.msg.ciaddr
            },
            yiaddr,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: req.msg.chaddr,
            options,
        }
    }

    pub fn offer(&self, req: &Seen) -> Message {
        self.reply(req, MessageType::Offer)
    }

    pub fn ack(&self, req: &Seen) -> Message {
        self.reply(req, MessageType::Ack)
    }

    pub fn nak(&self, req: &Seen) -> Message {
        self.reply(req, MessageType::Nak)
    }

    /// Where a reply to `req` goes (RFC 2131 4.1, no relay): a client with
    /// an address (ciaddr) gets unicast, except for a NAK; everything else
    /// is broadcast (our client always sets the BROADCAST flag before it has
    /// an address).
    pub fn destination(&self, req: &Seen, nak: bool) -> ([u8; 6], Ipv4Addr) {
        if !nak && !req.msg.ciaddr.is_unspecified() {
            (req.src_mac, req.msg.ciaddr)
        } else {
            (BROADCAST_MAC, Ipv4Addr::BROADCAST)
        }
    }

    /// `m` encoded and framed from this server to wherever `req` says.
    pub fn frame(&self, req: &Seen, m: &Message) -> Vec<u8> {
        self.frame_as(self.server_mac, self.server_ip, req, m)
    }

    /// Like [`Ctx::frame`], from another (spoofed or second) server.
    pub fn frame_as(&self, src_mac: [u8; 6], src_ip: Ipv4Addr, req: &Seen, m: &Message) -> Vec<u8> {
        let (dst_mac, dst_ip) = self.destination(req, m.options.message_type == Some(MessageType::Nak));
        build_udp_frame(
            src_mac,
            dst_mac,
            src_ip,
            dst_ip,
            DHCP_SERVER_PORT,
            DHCP_CLIENT_PORT,
            &encode(m),
        )
    }

    /// Any UDP payload framed from this server to where `req` says replies go.
    pub fn frame_payload(&self, req: &Seen, payload: &[u8]) -> Vec<u8> {
        let (dst_mac, dst_ip) = self.destination(req, false);
        build_udp_frame(
            self.server_mac,
            dst_mac,
            self.server_ip,
            dst_ip,
            DHCP_SERVER_PORT,
            DHCP_CLIENT_PORT,
            payload,
        )
    }

    /// The behaviour of a plain, honest server: DISCOVER -> OFFER of the
    /// standard address, REQUEST -> ACK, anything else -> silence.
    pub fn standard(&self, req: &Seen) -> Vec<Vec<u8>> {
        match req.kind {
            MessageType::Discover => vec![self.frame(req, &self.offer(req))],
            MessageType::Request => vec![self.frame(req, &self.ack(req))],
            _ => Vec::new(),
        }
    }
}

/// `m` as DHCP payload bytes.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    m.encode(&mut out);
    out
}

/// The fixed header and magic cookie of `m`, followed by `options` verbatim
/// (no END added): for option areas no encoder would write.
pub fn with_raw_options(m: &Message, options: &[u8]) -> Vec<u8> {
    let mut bare = m.clone();
    bare.options = Options::default();
    let mut out = encode(&bare);
    out.truncate(FIXED_HEADER_LEN + MAGIC_COOKIE.len());
    out.extend_from_slice(options);
    out
}

/// Frame surgery: offsets of an Ethernet + IPv4 (IHL 5) + UDP frame as
/// `build_udp_frame` makes it.
pub mod surgery {
    use super::ETH_HEADER_LEN;

    const IP: usize = ETH_HEADER_LEN;
    const UDP: usize = ETH_HEADER_LEN + 20;

    /// Flip bits of the UDP checksum (never to 0, which means "none").
    pub fn break_udp_checksum(f: &mut [u8]) {
        f[UDP + 6] ^= 0x5a;
        if f[UDP + 6] == 0 && f[UDP + 7] == 0 {
            f[UDP + 7] = 1;
        }
    }

    pub fn break_ip_checksum(f: &mut [u8]) {
        f[IP + 10] ^= 0xa5;
    }

    /// Set the IPv4 More Fragments flag (the header checksum is not
    /// updated: the kernel's filter drops the frame before anyone checks).
    pub fn set_more_fragments(f: &mut [u8]) {
        f[IP + 6] |= 0x20;
    }

    pub fn set_udp_source_port(f: &mut [u8], port: u16) {
        f[UDP..UDP + 2].copy_from_slice(&port.to_be_bytes());
    }

    pub fn set_destination_mac(f: &mut [u8], mac: [u8; 6]) {
        f[..6].copy_from_slice(&mac);
    }
}

/// A client frame: Ethernet II, IPv4, UDP 68 -> 67. Returns the MACs and
/// addresses and the UDP payload; `None` for anything else.
fn parse_client_frame(f: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr, &[u8])> {
    let eth_type = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    if eth_type != 0x0800 {
        return None;
    }
    let ip = f.get(ETH_HEADER_LEN..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    if *ip.get(9)? != 17 || ihl < 20 || total < ihl + 8 || total > ip.len() {
        return None;
    }
    let udp = &ip[ihl..total];
    let (sport, dport) = (
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
    );
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if sport != DHCP_CLIENT_PORT || dport != DHCP_SERVER_PORT || udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&f[6..12]);
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Some((src_mac, src_ip, dst_ip, &udp[8..udp_len]))
}

/// A case's behaviour: each client message in, the frames to answer with.
pub type Script = Box<dyn FnMut(&Ctx, &Seen) -> Vec<Vec<u8>> + Send>;

/// A client message from a received frame: a BOOTREQUEST to port 67, with
/// `nth` counted over the messages recorded `before` it; `None` for
/// anything else.
fn parse_seen(frame: &[u8], before: &[Seen]) -> Option<Seen> {
    let (src_mac, src_ip, dst_ip, payload) = parse_client_frame(frame)?;
    let msg = Message::parse(payload).ok()?;
    if msg.op != Op::Request {
        return None;
    }
    let kind = msg.options.message_type.unwrap_or(MessageType::Other(0));
    Some(Seen {
        at: Instant::now(),
        src_mac,
        src_ip,
        dst_ip,
        kind,
        nth: before.iter().filter(|s| s.kind == kind).count(),
        msg,
    })
}

/// The running server: the kit's [`RawServer`] speaking DHCP (its
/// `ctx`, `inject`, `seen`, `sent`, `wait_for` and `flood` through `Deref`).
/// Stops (and joins its thread) on drop.
pub struct HostileServer(RawServer<Ctx, Seen>);

impl std::ops::Deref for HostileServer {
    type Target = RawServer<Ctx, Seen>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl HostileServer {
    /// Start serving `net`'s server end with `script`. Returns once the
    /// socket is open, so no client message can be missed.
    pub fn start(net: &Net, script: impl FnMut(&Ctx, &Seen) -> Vec<Vec<u8>> + Send + 'static) -> Self {
        let mut script: Script = Box::new(script);
        let server_ip: Ipv4Addr = net.server_ip.parse().expect("server ip");
        let o = server_ip.octets();
        let spec = Spec {
            ns: net.server_ns.clone(),
            ifname: SERVER_IF.into(),
            open: PacketSocket::open_server,
        };
        let ctx = move |link: Link| {
            Ok(Ctx {
                server_mac: link.mac,
                server_ip,
                prefix: [o[0], o[1], o[2]],
            })
        };
        HostileServer(RawServer::start(
            spec,
            ctx,
            parse_seen,
            move |c: &Ctx, s: &Seen| script(c, s),
        ))
    }

    /// Client messages of `kind` so far.
    pub fn count(&self, kind: MessageType) -> usize {
        self.count_where(|s| s.kind == kind)
    }
}
