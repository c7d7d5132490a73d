//! The actuator's rtnetlink client: links, IPv4 addresses, routes, MTU and
//! carrier events, over blocking `NETLINK_ROUTE` sockets.
//!
//! Every change is a request with `NLM_F_ACK`; the answer is matched by
//! sequence number and sender (port 0, the kernel), and a negative answer
//! becomes an [`io::Error`] carrying the kernel's errno. Replies that belong
//! to an older request (say, one that timed out) are skipped.
//!
//! Syscalls. [`Rtnl::open`]: socket, setsockopt (SO_RCVTIMEO).
//! [`Rtnl::from_raw_fd`]: getsockopt (SO_DOMAIN, SO_TYPE, SO_PROTOCOL),
//! recvfrom (drain), setsockopt. Every request: `sendto` (the libc's `send`),
//! then `recvfrom` until the answer. [`LinkMonitor::open`]: socket, bind;
//! `from_raw_fd`: getsockopt, setsockopt (NETLINK_ADD_MEMBERSHIP); both then
//! sendto, poll, recvfrom. [`LinkMonitor::read_events`]: `recvfrom` with
//! MSG_DONTWAIT, and `sendto` to query the link after ENOBUFS.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use mirage_ipc::Route;
use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkHeader, NlasIterator,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeader, AddressMessage, AddressScope, CacheInfo,
};
use netlink_packet_route::link::{LinkFlags, LinkHeader};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::packet::adopt_socket;

/// Lifetime value meaning "forever" in `IFA_CACHEINFO`.
pub const FOREVER: u32 = 0xffff_ffff;

/// The main routing table (RT_TABLE_MAIN), where routes go by default.
pub const MAIN_TABLE: u32 = 254;

/// Receive buffer. The kernel sizes dump datagrams to the reader's buffer
/// but never above 32 KiB, so this always holds a whole datagram.
const RECV_BUF_LEN: usize = 64 * 1024;
/// How long one request may wait for the kernel before giving up: a stuck
/// call must not hang the actuator (field note 3: slow netlink under load).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A dump the kernel flags as inconsistent (`NLM_F_DUMP_INTR`) is retried.
const DUMP_ATTEMPTS: usize = 3;
/// Datagrams read per [`LinkMonitor::read_events`] call, so an event storm
/// cannot keep the caller away from its other descriptors.
const MONITOR_BATCH: usize = 64;

const NLMSG_HEADER_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
/// The attributes we read back (linux/if_link.h, if_addr.h, rtnetlink.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MIN_MTU: u16 = 50;
const IFLA_MAX_MTU: u16 = 51;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;
/// Multicast group bit of link events (`RTMGRP_LINK`) and its group number.
const RTMGRP_LINK: u32 = 1;
const RTNLGRP_LINK: u32 = 1;
const IFF_UP: u32 = 1;
const IFF_LOWER_UP: u32 = 1 << 16;
const IFF_DORMANT: u32 = 1 << 17;
const IFNAMSIZ: usize = 16;

/// Carrier as the DHCP client needs it: administratively up, lower layer up
/// (`IFF_LOWER_UP`, the device has carrier) and not dormant (e.g. waiting
/// for 802.1X). The kernel derives the RFC 2863 operstate (IFLA_OPERSTATE)
/// from exactly these, so reading the flags from the fixed header gives the
/// same answer without depending on attribute parsing.
fn carrier_from_flags(flags: u32) -> bool {
    flags & IFF_UP != 0 && flags & IFF_LOWER_UP != 0 && flags & IFF_DORMANT == 0
}

/// One network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index (`ifindex`).
    pub index: u32,
    /// Interface name (IFLA_IFNAME).
    pub name: String,
    /// Hardware address; `None` for links without a 6-byte one (tun, ip6gre...).
    pub mac: Option<[u8; 6]>,
    /// Current MTU (IFLA_MTU).
    pub mtu: u32,
    /// Smallest MTU the device takes (IFLA_MIN_MTU, kernel >= 4.19);
    /// `None` when not reported or 0 (no limit).
    pub min_mtu: Option<u32>,
    /// Largest MTU the device takes (IFLA_MAX_MTU); `None` when not
    /// reported or 0 (no limit).
    pub max_mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Usable carrier: `IFF_UP`, `IFF_LOWER_UP` and not `IFF_DORMANT`.
    pub carrier: bool,
}

impl LinkInfo {
    /// Reads an RTM_NEWLINK payload (`ifinfomsg` + attributes).
    fn parse(payload: &[u8]) -> io::Result<LinkInfo> {
        let header = LinkHeader::parse(payload).map_err(|_| invalid_data("short ifinfomsg"))?;
        let flags = header.flags.bits();
        let mut info = LinkInfo {
            index: header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            min_mtu: None,
            max_mtu: None,
            up: flags & IFF_UP != 0,
            carrier: carrier_from_flags(flags),
        };
        for (kind, value) in attributes(&payload[header.buffer_len()..])? {
            match kind {
                IFLA_IFNAME => {
                    let name = value.split(|&b| b == 0).next().unwrap_or_default();
                    info.name = String::from_utf8_lossy(name).into_owned();
                }
                IFLA_ADDRESS => info.mac = <[u8; 6]>::try_from(value).ok(),
                IFLA_MTU => info.mtu = attr_u32(value)?,
                IFLA_MIN_MTU => info.min_mtu = Some(attr_u32(value)?).filter(|&m| m > 0),
                IFLA_MAX_MTU => info.max_mtu = Some(attr_u32(value)?).filter(|&m| m > 0),
                _ => {}
            }
        }
        Ok(info)
    }
}

/// One IPv4 address of an interface, lifetimes as they stand now (seconds
/// left; [`FOREVER`] for permanent addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressInfo {
    /// The local address (IFA_LOCAL).
    pub addr: Ipv4Addr,
    /// Prefix length of the address's subnet.
    pub prefix_len: u8,
    /// Seconds until the kernel removes the address.
    pub valid_secs: u32,
    /// Seconds until the address is deprecated.
    pub preferred_secs: u32,
}

/// A main-table IPv4 route as read back from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RouteEntry {
    route: Route,
    oif: Option<u32>,
    metric: u32,
    tos: u8,
    kind: RouteType,
}

fn invalid_input(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn invalid_data(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A first sequence number that differs between processes and restarts, so
/// a new actuator on an inherited socket does not take a stale answer for
/// its own.
fn initial_sequence() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// Serializes one request of type `kind`. Never panics: the buffer is sized
/// from the message.
///
/// Requests are emitted from their concrete message type, and answers are
/// read field by field over [`NlasIterator`] (see [`attributes`]), never
/// through the crate's catch-all `RouteNetlinkMessage`: decoding or encoding
/// that enum links in the codec of every rtnetlink family (traffic control,
/// neighbours, every link kind...), which made up a quarter of the binary's
/// code for the dozen fields we use.
fn encode_request<M: Emitable>(kind: u16, msg: &M, flags: u16, seq: u32) -> Vec<u8> {
    let len = NLMSG_HEADER_LEN + msg.buffer_len();
    let mut header = NetlinkHeader::default();
    header.length = u32::try_from(len).unwrap_or(u32::MAX);
    header.message_type = kind;
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut out = vec![0u8; len];
    header.emit(&mut out[..NLMSG_HEADER_LEN]);
    msg.emit(&mut out[NLMSG_HEADER_LEN..]);
    out
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// A 4-byte attribute value; any other length is malformed.
fn attr_u32(value: &[u8]) -> io::Result<u32> {
    match value {
        [a, b, c, d] => Ok(u32::from_ne_bytes([*a, *b, *c, *d])),
        _ => Err(invalid_data("netlink attribute is not 4 bytes")),
    }
}

/// An IPv4 address attribute; any other length is malformed.
fn attr_ipv4(value: &[u8]) -> io::Result<Ipv4Addr> {
    <[u8; 4]>::try_from(value)
        .map(Ipv4Addr::from)
        .map_err(|_| invalid_data("netlink address attribute is not IPv4"))
}

/// The (type, value) pairs of an attribute area, the nested and byte-order
/// flag bits masked off the type. A length pointing outside the area fails.
fn attributes(area: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    NlasIterator::new(area)
        .map(|nla| {
            nla.map(|nla| {
                // new_checked proved 4 <= length <= the bytes left.
                let (kind, len) = (nla.kind(), usize::from(nla.length()));
                (kind, &nla.into_inner()[4..len])
            })
            .map_err(|_| invalid_data("netlink attribute length out of bounds"))
        })
        .collect()
}

/// A link request: the crate's `ifinfomsg` header and raw attributes.
///
/// Not `LinkMessage`: its attribute type covers every link kind's settings,
/// and emitting it links in all of their encoders (about 25 KiB) for the two
/// attributes we send, IFLA_IFNAME and IFLA_MTU.
#[derive(Default)]
struct LinkRequest {
    header: LinkHeader,
    attributes: Vec<DefaultNla>,
}

impl LinkRequest {
    fn index(index: u32) -> LinkRequest {
        let mut req = LinkRequest::default();
        req.header.index = index;
        req
    }
}

impl Emitable for LinkRequest {
    fn buffer_len(&self) -> usize {
        self.header.buffer_len() + self.attributes.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.header.emit(buffer);
        self.attributes
            .as_slice()
            .emit(&mut buffer[self.header.buffer_len()..]);
    }
}

/// One answer message of a request: its type and what follows `nlmsghdr`.
struct Reply {
    kind: u16,
    payload: Vec<u8>,
}

/// The fixed header fields of one raw netlink message.
#[derive(Clone, Copy, Debug)]
struct RawHeader {
    kind: u16,
    flags: u16,
    seq: u32,
}

/// Splits a datagram into its messages (`nlmsghdr` + payload, 4-byte
/// aligned). A length field pointing outside the datagram is an error.
fn split_messages(data: &[u8]) -> io::Result<Vec<(RawHeader, &[u8])>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while data.len() - off >= NLMSG_HEADER_LEN {
        let rest = &data[off..];
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HEADER_LEN || len > rest.len() {
            return Err(invalid_data("netlink message length out of bounds"));
        }
        let header = RawHeader {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
        };
        out.push((header, &rest[..len]));
        off += len.next_multiple_of(4).min(rest.len());
    }
    Ok(out)
}

/// Error code of an NLMSG_ERROR message: 0 for an ACK, else a negative errno.
fn error_code(msg: &[u8]) -> io::Result<i32> {
    msg.get(NLMSG_HEADER_LEN..NLMSG_HEADER_LEN + 4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| invalid_data("short netlink error message"))
}

/// Reads one datagram from the kernel into `buf`. `Ok(None)`: it came from
/// another process (which may not speak for the kernel) and was dropped.
fn recv_datagram(sock: &Socket, buf: &mut [u8], flags: i32) -> io::Result<Option<usize>> {
    let mut slice = &mut buf[..];
    let (n, from) = sock.recv_from(&mut slice, flags | libc::MSG_TRUNC)?;
    if from.port_number() != 0 {
        return Ok(None);
    }
    if n > buf.len() {
        return Err(invalid_data("netlink datagram larger than the receive buffer"));
    }
    Ok(Some(n))
}

/// Sends one whole request.
fn send_request(sock: &Socket, bytes: &[u8]) -> io::Result<()> {
    let n = sock.send(bytes, 0)?;
    if n != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "netlink request sent only in part",
        ));
    }
    Ok(())
}

/// `SO_RCVTIMEO`; `None` blocks forever.
fn set_recv_timeout(sock: &Socket, timeout: Option<Duration>) -> io::Result<()> {
    let t = timeout.unwrap_or(Duration::ZERO);
    let tv = libc::timeval {
        // Both fields are 64-bit on x86_64 and aarch64 (glibc and musl).
        tv_sec: t.as_secs().min(i64::MAX as u64) as _,
        tv_usec: t.subsec_micros() as _,
    };
    crate::packet::setsockopt(sock.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// Takes over an inherited NETLINK_ROUTE socket (datagram or raw type).
fn adopt_netlink(fd: RawFd) -> io::Result<Socket> {
    let owned = match adopt_socket(fd, libc::AF_NETLINK, libc::SOCK_DGRAM, Some(NETLINK_ROUTE as i32)) {
        Ok(owned) => owned,
        Err(e) if e.kind() == io::ErrorKind::InvalidInput && fd > 2 => {
            adopt_socket(fd, libc::AF_NETLINK, libc::SOCK_RAW, Some(NETLINK_ROUTE as i32))?
        }
        Err(e) => return Err(e),
    };
    // SAFETY: the descriptor comes out of an OwnedFd, so the Socket becomes
    // its only owner.
    Ok(unsafe { Socket::from_raw_fd(owned.into_raw_fd()) })
}

/// Blocking rtnetlink client for one process (the actuator role).
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

impl Rtnl {
    /// Opens a NETLINK_ROUTE socket. Reading needs no privilege; changes
    /// need CAP_NET_ADMIN.
    pub fn open() -> io::Result<Rtnl> {
        let sock = Socket::new(NETLINK_ROUTE)?;
        Rtnl::with_socket(sock)
    }

    /// Takes over an inherited NETLINK_ROUTE socket at a fixed fd number,
    /// after checking what it is. Answers left in its queue by a previous
    /// owner are discarded. Call once per number, at role start.
    pub fn from_raw_fd(fd: RawFd) -> io::Result<Rtnl> {
        let sock = adopt_netlink(fd)?;
        let mut rtnl = Rtnl::with_socket(sock)?;
        rtnl.drain();
        Ok(rtnl)
    }

    fn with_socket(sock: Socket) -> io::Result<Rtnl> {
        set_recv_timeout(&sock, Some(DEFAULT_TIMEOUT))?;
        Ok(Rtnl {
            sock,
            seq: initial_sequence(),
            buf: vec![0; RECV_BUF_LEN],
        })
    }

    /// How long a request waits for the kernel's answer (default 10 s;
    /// `None`: forever). A request that times out fails with `TimedOut`;
    /// its late answer is recognised as stale and skipped.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        set_recv_timeout(&self.sock, timeout)
    }

    fn drain(&mut self) {
        for _ in 0..1024 {
            let mut slice = &mut self.buf[..];
            if self
                .sock
                .recv_from(&mut slice, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
                .is_err()
            {
                break;
            }
        }
    }

    /// Sends one request and collects the answer: the messages that carry
    /// our sequence number, up to the ACK (or NLMSG_DONE for a dump).
    fn transact<M: Emitable>(&mut self, kind: u16, msg: &M, flags: u16) -> io::Result<Vec<Reply>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = if dump { flags } else { flags | NLM_F_ACK };
        for _ in 0..DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            send_request(&self.sock, &encode_request(kind, msg, flags, seq))?;
            let mut replies = Vec::new();
            let mut interrupted = false;
            loop {
                let n = match recv_datagram(&self.sock, &mut self.buf, 0) {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no rtnetlink answer in time",
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                let mut finished = false;
                for (header, raw) in split_messages(&self.buf[..n])? {
                    if header.seq != seq {
                        continue; // a stale answer to an earlier request
                    }
                    match header.kind {
                        NLMSG_ERROR => match error_code(raw)? {
                            0 => finished = true,
                            code => return Err(io::Error::from_raw_os_error(code.saturating_neg())),
                        },
                        NLMSG_DONE => finished = true,
                        NLMSG_OVERRUN => return Err(invalid_data("netlink overrun")),
                        _ => {
                            interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
                            replies.push(Reply {
                                kind: header.kind,
                                payload: raw[NLMSG_HEADER_LEN..].to_vec(),
                            });
                        }
                    }
                }
                if finished {
                    break;
                }
            }
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "rtnetlink dump kept changing",
        ))
    }

    /// A change request: succeeds when the kernel ACKs it.
    fn request<M: Emitable>(&mut self, kind: u16, msg: &M, flags: u16) -> io::Result<()> {
        self.transact(kind, msg, flags).map(drop)
    }

    fn get_link(&mut self, msg: LinkRequest) -> io::Result<LinkInfo> {
        let replies = self.transact(RTM_GETLINK, &msg, 0)?;
        let link = replies
            .iter()
            .find(|r| r.kind == RTM_NEWLINK)
            .ok_or_else(|| invalid_data("no link in the answer"))?;
        LinkInfo::parse(&link.payload)
    }

    /// The link with this index (ENODEV if there is none).
    pub fn link(&mut self, index: u32) -> io::Result<LinkInfo> {
        if index == 0 {
            return Err(invalid_input("interface index 0"));
        }
        self.get_link(LinkRequest::index(index))
    }

    /// The link with this name (ENODEV if there is none).
    pub fn link_by_name(&mut self, name: &str) -> io::Result<LinkInfo> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(invalid_input("not an interface name"));
        }
        let mut msg = LinkRequest::default();
        // IFLA_IFNAME is a NUL-terminated string.
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        msg.attributes.push(DefaultNla::new(IFLA_IFNAME, value));
        self.get_link(msg)
    }

    /// Sets `IFF_UP` on the link, leaving its other flags alone.
    pub fn set_link_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkRequest::index(index);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RTM_SETLINK, &msg, 0)
    }

    /// The link named `name`, brought up if it was down, as it is then
    /// (its carrier, MTU...): what a service on one interface opens first.
    /// Errors name the interface.
    pub fn link_up_by_name(&mut self, name: &str) -> Result<LinkInfo, String> {
        let link = self
            .link_by_name(name)
            .map_err(|e| format!("interface {name}: {e}"))?;
        if !link.up {
            self.set_link_up(link.index)
                .map_err(|e| format!("bringing {name} up: {e}"))?;
        }
        self.link(link.index)
            .map_err(|e| format!("interface {name}: {e}"))
    }

    /// Sets the link MTU. The kernel refuses values outside the device's
    /// `min_mtu..=max_mtu` with EINVAL; callers clamp first (field note 4).
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut msg = LinkRequest::index(index);
        msg.attributes
            .push(DefaultNla::new(IFLA_MTU, mtu.to_ne_bytes().to_vec()));
        self.request(RTM_SETLINK, &msg, 0)
    }

    fn address_message(index: u32, addr: Ipv4Addr, prefix_len: u8) -> io::Result<AddressMessage> {
        if prefix_len > 32 {
            return Err(invalid_input("IPv4 prefix length over 32"));
        }
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr)));
        Ok(msg)
    }

    /// Adds `addr/prefix_len`, or updates it in place if present, with
    /// kernel lifetimes (the kernel removes the address itself when
    /// `valid_secs` runs out; [`FOREVER`] for none). `preferred_secs` must
    /// not exceed `valid_secs`, and `valid_secs` must not be 0 (EINVAL).
    ///
    /// `NLM_F_CREATE|NLM_F_REPLACE` makes the kernel update the matching
    /// address's lifetimes without deleting it: no RTM_DELADDR, no moment
    /// without the address, so open connections survive renewals and
    /// restarts (field note 6).
    pub fn replace_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
        broadcast: Option<Ipv4Addr>,
        valid_secs: u32,
        preferred_secs: u32,
    ) -> io::Result<()> {
        let mut msg = Rtnl::address_message(index, addr, prefix_len)?;
        if let Some(b) = broadcast {
            msg.attributes.push(AddressAttribute::Broadcast(b));
        }
        let mut cache = CacheInfo::default();
        cache.ifa_valid = valid_secs;
        cache.ifa_preferred = preferred_secs;
        msg.attributes.push(AddressAttribute::CacheInfo(cache));
        self.request(RTM_NEWADDR, &msg, NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Removes `addr/prefix_len` (EADDRNOTAVAIL if it is not there).
    pub fn delete_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let msg = Rtnl::address_message(index, addr, prefix_len)?;
        self.request(RTM_DELADDR, &msg, 0)
    }

    /// The IPv4 addresses of the interface with their remaining lifetimes.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<AddressInfo>> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        query.header.index = index;
        let replies = self.transact(RTM_GETADDR, &query, NLM_F_DUMP)?;
        let mut out = Vec::new();
        for reply in replies.iter().filter(|r| r.kind == RTM_NEWADDR) {
            if let Some(info) = parse_address(&reply.payload, index)? {
                out.push(info);
            }
        }
        Ok(out)
    }

    fn route_message(table: u32, index: u32, route: &Route, metric: u32) -> io::Result<RouteMessage> {
        if route.prefix_len > 32 {
            return Err(invalid_input("IPv4 prefix length over 32"));
        }
        // 0 is "unspecified" (the kernel would pick main) and 255 is the
        // kernel's local table: neither is a table routes are put in.
        if table == 0 || table == 255 {
            return Err(invalid_input("route table 0 or 255"));
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.prefix_len;
        // rtm_table holds 8 bits; RTA_TABLE carries larger numbers.
        match u8::try_from(table) {
            Ok(t) => msg.header.table = t,
            Err(_) => {
                msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
                msg.attributes.push(RouteAttribute::Table(table));
            }
        }
        msg.header.protocol = RouteProtocol::Dhcp;
        // RFC 3442 section 3: a 0.0.0.0 router means the destination is
        // on-link, which is what scope link says to the kernel.
        msg.header.scope = if route.gateway.is_unspecified() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        msg.header.kind = RouteType::Unicast;
        if route.prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(route.destination)));
        }
        if !route.gateway.is_unspecified() {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(route.gateway)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        msg.attributes.push(RouteAttribute::Priority(metric));
        Ok(msg)
    }

    /// Installs `route` via this interface in the main table with protocol
    /// DHCP (RTPROT_DHCP) and the given metric, replacing our own route with
    /// the same destination and metric if there is one.
    ///
    /// The kernel matches a replacement on destination, TOS and metric only,
    /// whatever the device, so a plain NLM_F_REPLACE could overwrite another
    /// interface's route. The route is therefore first created exclusively;
    /// when one with that destination and metric exists, it is replaced only
    /// if none of them belongs to another interface (else EEXIST). Give each
    /// interface its own metric to avoid that case.
    ///
    /// A gateway must be reachable on-link when the route is added (else
    /// ENETUNREACH): install host routes to gateways first (field note 1).
    pub fn replace_route(
        &mut self,
        index: u32,
        route: Route,
        prefsrc: Option<Ipv4Addr>,
        metric: u32,
    ) -> io::Result<()> {
        self.replace_route_in(MAIN_TABLE, index, route, prefsrc, metric)
    }

    /// [`Rtnl::replace_route`] in routing table `table` (1..=254 or above
    /// 255; [`MAIN_TABLE`] is the main one).
    pub fn replace_route_in(
        &mut self,
        table: u32,
        index: u32,
        route: Route,
        prefsrc: Option<Ipv4Addr>,
        metric: u32,
    ) -> io::Result<()> {
        let mut msg = Rtnl::route_message(table, index, &route, metric)?;
        if let Some(src) = prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        match self.request(RTM_NEWROUTE, &msg, NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            other => return other,
        }
        let foreign = self.table_routes(table)?.iter().any(|r| {
            r.route.destination == route.destination
                && r.route.prefix_len == route.prefix_len
                && r.metric == metric
                && r.tos == 0
                && r.oif != Some(index)
        });
        if foreign {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        self.request(RTM_NEWROUTE, &msg, NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Deletes our route (this interface, this gateway, protocol DHCP, this
    /// metric); ESRCH if there is none. Routes others installed are never
    /// matched.
    pub fn delete_route(&mut self, index: u32, route: Route, metric: u32) -> io::Result<()> {
        self.delete_route_in(MAIN_TABLE, index, route, metric)
    }

    /// [`Rtnl::delete_route`] in routing table `table`.
    pub fn delete_route_in(&mut self, table: u32, index: u32, route: Route, metric: u32) -> io::Result<()> {
        let mut msg = Rtnl::route_message(table, index, &route, metric)?;
        msg.header.scope = RouteScope::NoWhere;
        self.request(RTM_DELROUTE, &msg, 0)
    }

    /// The unicast routes of the main table that leave through this
    /// interface, whoever installed them (the kernel's prefix routes too).
    pub fn routes(&mut self, index: u32) -> io::Result<Vec<Route>> {
        self.routes_in(MAIN_TABLE, index)
    }

    /// [`Rtnl::routes`] of routing table `table`.
    pub fn routes_in(&mut self, table: u32, index: u32) -> io::Result<Vec<Route>> {
        Ok(self
            .table_routes(table)?
            .into_iter()
            .filter(|r| r.oif == Some(index) && r.kind == RouteType::Unicast)
            .map(|r| r.route)
            .collect())
    }

    fn table_routes(&mut self, table: u32) -> io::Result<Vec<RouteEntry>> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let replies = self.transact(RTM_GETROUTE, &query, NLM_F_DUMP)?;
        let mut out = Vec::new();
        for reply in replies.iter().filter(|r| r.kind == RTM_NEWROUTE) {
            if let Some((t, entry)) = parse_route(&reply.payload)?
                && t == table
            {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// Reads an RTM_NEWADDR payload (`ifaddrmsg` + attributes); `None` for
/// another interface's or a non-IPv4 address.
fn parse_address(payload: &[u8], index: u32) -> io::Result<Option<AddressInfo>> {
    let header = AddressHeader::parse(payload).map_err(|_| invalid_data("short ifaddrmsg"))?;
    if header.family != AddressFamily::Inet || header.index != index {
        return Ok(None);
    }
    let (mut local, mut address, mut lifetimes) = (None, None, None);
    for (kind, value) in attributes(&payload[header.buffer_len()..])? {
        match kind {
            IFA_LOCAL => local = Some(attr_ipv4(value)?),
            IFA_ADDRESS => address = Some(attr_ipv4(value)?),
            // struct ifa_cacheinfo: ifa_prefered, ifa_valid, cstamp, tstamp.
            IFA_CACHEINFO if value.len() >= 8 => {
                lifetimes = Some((ne_u32(&value[4..8]), ne_u32(&value[..4])));
            }
            IFA_CACHEINFO => return Err(invalid_data("short ifa_cacheinfo")),
            _ => {}
        }
    }
    let (valid_secs, preferred_secs) = lifetimes.unwrap_or((FOREVER, FOREVER));
    Ok(local.or(address).map(|addr| AddressInfo {
        addr,
        prefix_len: header.prefix_len,
        valid_secs,
        preferred_secs,
    }))
}

/// Reads an RTM_NEWROUTE payload (`rtmsg` + attributes) into its table and
/// route; `None` for a non-IPv4 route.
fn parse_route(payload: &[u8]) -> io::Result<Option<(u32, RouteEntry)>> {
    let header = RouteHeader::parse(payload).map_err(|_| invalid_data("short rtmsg"))?;
    if header.address_family != AddressFamily::Inet {
        return Ok(None);
    }
    let mut table = u32::from(header.table);
    let mut entry = RouteEntry {
        route: Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: header.destination_prefix_length,
            gateway: Ipv4Addr::UNSPECIFIED,
        },
        oif: None,
        metric: 0,
        tos: header.tos,
        kind: header.kind,
    };
    for (kind, value) in attributes(&payload[header.buffer_len()..])? {
        match kind {
            RTA_DST => entry.route.destination = attr_ipv4(value)?,
            RTA_GATEWAY => entry.route.gateway = attr_ipv4(value)?,
            RTA_OIF => entry.oif = Some(attr_u32(value)?),
            RTA_PRIORITY => entry.metric = attr_u32(value)?,
            RTA_TABLE => table = attr_u32(value)?,
            _ => {}
        }
    }
    Ok(Some((table, entry)))
}

/// Reads an RTM_NEWROUTE payload; `None` for a non-IPv4 route or one
/// outside the main table.
#[cfg(test)]
fn parse_main_route(payload: &[u8]) -> io::Result<Option<RouteEntry>> {
    Ok(parse_route(payload)?.and_then(|(t, e)| (t == MAIN_TABLE).then_some(e)))
}

impl AsRawFd for Rtnl {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for Rtnl {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// A change of the monitored link's carrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkEvent {
    /// The link gained a usable carrier (see [`LinkInfo::carrier`]).
    CarrierUp,
    /// The link lost its carrier, went down, or was removed.
    CarrierDown,
}

/// Watches one interface's carrier through RTMGRP_LINK notifications.
///
/// Only changes against the last known state are reported, so repeated
/// notifications (the kernel sends one for every flag or statistics
/// change) collapse into real transitions.
pub struct LinkMonitor {
    sock: Socket,
    index: u32,
    carrier: bool,
    /// Notifications were lost; query the link once the queue is empty.
    resync_pending: bool,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LinkMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkMonitor")
            .field("fd", &self.sock.as_raw_fd())
            .field("index", &self.index)
            .field("carrier", &self.carrier)
            .finish()
    }
}

impl LinkMonitor {
    /// Subscribes to link events and reads the link's current carrier.
    /// Needs no privilege. Fails with ENODEV if the link does not exist.
    pub fn open(index: u32) -> io::Result<LinkMonitor> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        LinkMonitor::start(sock, index)
    }

    /// Takes over an inherited NETLINK_ROUTE socket (subscribing it to link
    /// events if it is not yet) and reads the link's current carrier.
    pub fn from_raw_fd(fd: RawFd, index: u32) -> io::Result<LinkMonitor> {
        let sock = adopt_netlink(fd)?;
        sock.add_membership(RTNLGRP_LINK)?;
        LinkMonitor::start(sock, index)
    }

    fn start(sock: Socket, index: u32) -> io::Result<LinkMonitor> {
        if index == 0 {
            return Err(invalid_input("interface index 0"));
        }
        let mut monitor = LinkMonitor {
            sock,
            index,
            carrier: false,
            resync_pending: false,
            seq: initial_sequence(),
            buf: vec![0; RECV_BUF_LEN],
        };
        monitor.sync(DEFAULT_TIMEOUT)?;
        Ok(monitor)
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The carrier state as last seen.
    pub fn carrier(&self) -> bool {
        self.carrier
    }

    /// Asks the kernel for the link; the answer arrives on this socket and
    /// is handled like any notification. Returns the request's sequence.
    fn request_link(&mut self) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let msg = LinkRequest::index(self.index);
        send_request(&self.sock, &encode_request(RTM_GETLINK, &msg, 0, self.seq))?;
        Ok(self.seq)
    }

    /// Reads the current state, waiting at most `timeout` for the answer.
    /// If notifications overflow the queue meanwhile, the answer may have
    /// been dropped with them: ask again once the queue is empty.
    fn sync(&mut self, timeout: Duration) -> io::Result<()> {
        let mut seq = self.request_link()?;
        let mut ask_again = false;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || (!ask_again && !poll_readable(self.sock.as_fd(), left)?) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no rtnetlink answer in time",
                ));
            }
            let n = match recv_datagram(&self.sock, &mut self.buf, libc::MSG_DONTWAIT) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if ask_again {
                        ask_again = false;
                        seq = self.request_link()?;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::InvalidData =>
                {
                    ask_again = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut events = Vec::new();
            if self.process(n, Some(seq), &mut events)? {
                return Ok(());
            }
        }
    }

    /// Handles every message of the datagram in `self.buf[..n]`, appending
    /// transitions to `events`. Returns true once the answer to `wanted`
    /// was seen; an error answer to it fails (ENODEV: no such link).
    fn process(&mut self, n: usize, wanted: Option<u32>, events: &mut Vec<LinkEvent>) -> io::Result<bool> {
        let mut answered = false;
        for (header, raw) in split_messages(&self.buf[..n])? {
            let payload = &raw[NLMSG_HEADER_LEN..];
            let carrier = match header.kind {
                RTM_NEWLINK | RTM_DELLINK => {
                    // struct ifinfomsg: family, pad, type, index (i32), flags (u32).
                    let Some(fixed) = payload.get(..12) else { continue };
                    let index = u32::from_ne_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
                    if index != self.index {
                        continue;
                    }
                    let flags = u32::from_ne_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
                    answered |= Some(header.seq) == wanted;
                    header.kind == RTM_NEWLINK && carrier_from_flags(flags)
                }
                NLMSG_ERROR if Some(header.seq) == wanted || header.seq == self.seq => {
                    let errno = error_code(raw)?.saturating_neg();
                    if errno == 0 {
                        continue;
                    }
                    // Outside start-up, ENODEV means the link is gone: no
                    // carrier. Anything else is a real failure.
                    if wanted.is_some() || errno != libc::ENODEV {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    false
                }
                _ => continue,
            };
            if carrier != self.carrier {
                if wanted.is_none() {
                    events.push(if carrier {
                        LinkEvent::CarrierUp
                    } else {
                        LinkEvent::CarrierDown
                    });
                }
                self.carrier = carrier;
            }
        }
        Ok(answered)
    }

    /// Reads every pending notification without blocking and returns the
    /// carrier transitions of our link, oldest first.
    ///
    /// When the kernel dropped notifications (ENOBUFS: our queue
    /// overflowed), the link is queried again once the queue is empty: while
    /// it is not, the kernel would drop the answer too. The answer is handled
    /// like a notification, so the state and the events catch up.
    pub fn read_events(&mut self) -> io::Result<Vec<LinkEvent>> {
        let mut events = Vec::new();
        for _ in 0..MONITOR_BATCH {
            let n = match recv_datagram(&self.sock, &mut self.buf, libc::MSG_DONTWAIT) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.resync_pending {
                        break;
                    }
                    // The kernel answers within sendto, so the next read
                    // finds the answer.
                    self.resync_pending = false;
                    self.request_link()?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::InvalidData =>
                {
                    self.resync_pending = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.process(n, None, &mut events)?;
        }
        Ok(events)
    }
}

/// Waits until `fd` is readable or `timeout` passes (false).
fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: one live pollfd, count 1.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    match rc {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

impl AsRawFd for LinkMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HEADER_LEN + payload.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    #[test]
    fn split_messages_walks_aligned_messages_and_rejects_bad_lengths() {
        let mut data = raw_message(NLMSG_ERROR, 0, 7, &[0, 0, 0, 0]);
        data.extend(raw_message(RTM_NEWLINK, 2, 8, &[1, 2, 3])); // padded to 4
        data.extend(raw_message(NLMSG_DONE, 0, 9, &[0; 4]));
        let msgs = split_messages(&data).unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            (msgs[1].0.kind, msgs[1].0.flags, msgs[1].0.seq),
            (RTM_NEWLINK, 2, 8)
        );
        assert_eq!(msgs[1].1.len(), NLMSG_HEADER_LEN + 3);
        assert_eq!(error_code(msgs[0].1).unwrap(), 0);

        let mut too_long = data.clone();
        too_long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(split_messages(&too_long).is_err());
        let mut too_short = data.clone();
        too_short[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(split_messages(&too_short).is_err());
        assert!(split_messages(&[]).unwrap().is_empty());
        assert!(error_code(&raw_message(NLMSG_ERROR, 0, 1, &[])).is_err());
    }

    /// `len` pseudo-random bytes (an LCG), every `stride`-th one below
    /// `small` so that some length fields are plausible.
    fn garbage(seed: &mut u32, len: usize, stride: usize, small: u32) -> Vec<u8> {
        (0..len)
            .map(|i| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if i % stride == 0 {
                    (*seed % small) as u8
                } else {
                    (*seed >> 24) as u8
                }
            })
            .collect()
    }

    #[test]
    fn split_messages_never_panics_on_garbage() {
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..300 {
            let data = garbage(&mut seed, len, 16, 40);
            if let Ok(msgs) = split_messages(&data) {
                for (h, raw) in msgs {
                    if h.kind == NLMSG_ERROR {
                        let _ = error_code(raw);
                    }
                }
            }
        }
    }

    #[test]
    fn carrier_needs_up_lower_up_and_not_dormant() {
        assert!(carrier_from_flags(IFF_UP | IFF_LOWER_UP));
        assert!(!carrier_from_flags(IFF_LOWER_UP));
        assert!(!carrier_from_flags(IFF_UP));
        assert!(!carrier_from_flags(IFF_UP | IFF_LOWER_UP | IFF_DORMANT));
    }

    #[test]
    fn requests_carry_flags_and_sequence() {
        let mut msg = LinkRequest::index(5);
        msg.attributes
            .push(DefaultNla::new(IFLA_MTU, 1400u32.to_ne_bytes().to_vec()));
        let bytes = encode_request(RTM_GETLINK, &msg, NLM_F_ACK, 0xabcd);
        let msgs = split_messages(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        let (h, raw) = msgs[0];
        assert_eq!(h.kind, RTM_NEWLINK + 2); // RTM_GETLINK
        assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(h.seq, 0xabcd);
        assert_eq!(
            &raw[NLMSG_HEADER_LEN + 4..NLMSG_HEADER_LEN + 8],
            &5u32.to_ne_bytes()
        );
        // The header's length covers the attribute; the request reads back
        // as the link it names.
        assert_eq!(raw.len(), NLMSG_HEADER_LEN + IFINFOMSG_LEN + 8);
        let link = LinkInfo::parse(&raw[NLMSG_HEADER_LEN..]).unwrap();
        assert_eq!((link.index, link.mtu), (5, 1400));
    }

    /// Fixed header lengths (`ifinfomsg`, `ifaddrmsg`, `rtmsg`) and the
    /// numbers the hand-built answers below use.
    const IFINFOMSG_LEN: usize = 16;
    const IFADDRMSG_LEN: usize = 8;
    const RTMSG_LEN: usize = 12;
    const AF_INET: u8 = 2;
    const RTN_UNICAST: u8 = 1;

    /// One attribute as the kernel lays it out: length, type, value, padding.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn ifaddrmsg(family: u8, prefix_len: u8, index: u32) -> Vec<u8> {
        let mut out = vec![family, prefix_len, 0, 0];
        out.extend_from_slice(&index.to_ne_bytes());
        out
    }

    #[test]
    fn addresses_are_read_field_by_field() {
        let mut cache = Vec::new();
        for v in [600u32, 3600, 1, 2] {
            cache.extend_from_slice(&v.to_ne_bytes());
        }
        let mut msg = ifaddrmsg(AF_INET, 24, 7);
        msg.extend(nla(IFA_ADDRESS, &[10, 0, 0, 9]));
        msg.extend(nla(IFA_LOCAL, &[10, 0, 0, 5]));
        msg.extend(nla(IFA_CACHEINFO, &cache));
        msg.extend(nla(99, &[1, 2, 3])); // unknown, skipped
        let info = parse_address(&msg, 7).unwrap().unwrap();
        // IFA_LOCAL wins; ifa_cacheinfo holds preferred before valid.
        assert_eq!(info.addr, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(info.prefix_len, 24);
        assert_eq!((info.valid_secs, info.preferred_secs), (3600, 600));

        // Other interfaces and families are not ours.
        assert_eq!(parse_address(&msg, 8).unwrap(), None);
        let mut v6 = msg.clone();
        v6[0] = 10;
        assert_eq!(parse_address(&v6, 7).unwrap(), None);

        // No lifetimes: permanent.
        let mut plain = ifaddrmsg(AF_INET, 32, 7);
        plain.extend(nla(IFA_ADDRESS, &[192, 0, 2, 1]));
        let info = parse_address(&plain, 7).unwrap().unwrap();
        assert_eq!((info.valid_secs, info.preferred_secs), (FOREVER, FOREVER));

        // Malformed: short header, short or wrong-sized values, a length
        // running past the end.
        assert!(parse_address(&msg[..7], 7).is_err());
        let mut bad = ifaddrmsg(AF_INET, 24, 7);
        bad.extend(nla(IFA_LOCAL, &[10, 0, 0]));
        assert!(parse_address(&bad, 7).is_err());
        let mut bad = ifaddrmsg(AF_INET, 24, 7);
        bad.extend(nla(IFA_CACHEINFO, &[0; 4]));
        assert!(parse_address(&bad, 7).is_err());
        let mut bad = ifaddrmsg(AF_INET, 24, 7);
        bad.extend(nla(IFA_LOCAL, &[10, 0, 0, 5]));
        bad[IFADDRMSG_LEN] = 40;
        assert!(parse_address(&bad, 7).is_err());
    }

    #[test]
    fn routes_are_read_field_by_field() {
        // family, dst_len, src_len, tos, table, protocol, scope, type, flags
        let mut msg = vec![AF_INET, 32, 0, 0, 254, 16, 0, RTN_UNICAST, 0, 0, 0, 0];
        msg.extend(nla(RTA_DST, &[10, 128, 0, 1]));
        msg.extend(nla(RTA_GATEWAY, &[10, 0, 0, 1]));
        msg.extend(nla(RTA_OIF, &3u32.to_ne_bytes()));
        msg.extend(nla(RTA_PRIORITY, &100u32.to_ne_bytes()));
        let entry = parse_main_route(&msg).unwrap().unwrap();
        assert_eq!(
            entry.route,
            Route {
                destination: Ipv4Addr::new(10, 128, 0, 1),
                prefix_len: 32,
                gateway: Ipv4Addr::new(10, 0, 0, 1),
            }
        );
        assert_eq!(
            (entry.oif, entry.metric, entry.kind),
            (Some(3), 100, RouteType::Unicast)
        );

        // RTA_TABLE overrides the 8-bit table field (tables above 255).
        let mut other = msg.clone();
        other.extend(nla(RTA_TABLE, &1000u32.to_ne_bytes()));
        assert_eq!(parse_main_route(&other).unwrap(), None);
        let mut main = msg.clone();
        main[4] = 252; // RT_TABLE_COMPAT, real table in RTA_TABLE
        main.extend(nla(RTA_TABLE, &254u32.to_ne_bytes()));
        assert!(parse_main_route(&main).unwrap().is_some());

        let mut v6 = msg.clone();
        v6[0] = 10;
        assert_eq!(parse_main_route(&v6).unwrap(), None);
        assert!(parse_main_route(&msg[..11]).is_err());
        let mut bad = msg[..RTMSG_LEN].to_vec();
        bad.extend(nla(RTA_OIF, &[3, 0]));
        assert!(parse_main_route(&bad).is_err());
    }

    #[test]
    fn links_are_read_field_by_field() {
        // family, pad, type (u16), index, flags, change mask
        let mut msg = vec![0, 0, 1, 0];
        msg.extend_from_slice(&4u32.to_ne_bytes());
        msg.extend_from_slice(&(IFF_UP | IFF_LOWER_UP).to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend(nla(IFLA_IFNAME, b"eth0\0"));
        msg.extend(nla(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]));
        msg.extend(nla(IFLA_MTU, &1500u32.to_ne_bytes()));
        msg.extend(nla(IFLA_MIN_MTU, &0u32.to_ne_bytes()));
        msg.extend(nla(IFLA_MAX_MTU, &9000u32.to_ne_bytes()));
        let info = LinkInfo::parse(&msg).unwrap();
        assert_eq!(
            info,
            LinkInfo {
                index: 4,
                name: "eth0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
                min_mtu: None,
                max_mtu: Some(9000),
                up: true,
                carrier: true,
            }
        );
        // A hardware address that is not 6 bytes (tun, ip6gre) is none.
        let mut tun = msg[..IFINFOMSG_LEN].to_vec();
        tun.extend(nla(IFLA_ADDRESS, &[0; 16]));
        assert_eq!(LinkInfo::parse(&tun).unwrap().mac, None);
        assert!(LinkInfo::parse(&msg[..15]).is_err());
        let mut bad = msg[..IFINFOMSG_LEN].to_vec();
        bad.extend(nla(IFLA_MTU, &[0; 8]));
        assert!(LinkInfo::parse(&bad).is_err());
    }

    #[test]
    fn answer_parsers_never_panic_on_garbage() {
        let mut seed = 0x2545_f491_u32;
        for len in 0..400 {
            let data = garbage(&mut seed, len, 8, 24);
            let _ = LinkInfo::parse(&data);
            // The index the message names, so its attributes get read.
            let index = data.get(4..8).map_or(0, ne_u32);
            let _ = parse_address(&data, index);
            let _ = parse_main_route(&data);
        }
    }

    #[test]
    fn route_messages_follow_rfc3442_scopes() {
        let on_link = Route {
            destination: Ipv4Addr::new(10, 128, 0, 1),
            prefix_len: 32,
            gateway: Ipv4Addr::UNSPECIFIED,
        };
        let msg = Rtnl::route_message(MAIN_TABLE, 3, &on_link, 100).unwrap();
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert_eq!(msg.header.protocol, RouteProtocol::Dhcp);
        assert_eq!(msg.header.table, RouteHeader::RT_TABLE_MAIN);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(msg.attributes.contains(&RouteAttribute::Priority(100)));

        let default = Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Ipv4Addr::new(10, 128, 0, 1),
        };
        let msg = Rtnl::route_message(MAIN_TABLE, 3, &default, 100).unwrap();
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        // Other tables: in the header up to 254, in RTA_TABLE above 255.
        let msg = Rtnl::route_message(100, 3, &default, 100).unwrap();
        assert_eq!(msg.header.table, 100);
        let msg = Rtnl::route_message(1000, 3, &default, 100).unwrap();
        assert_eq!(msg.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        for bad in [0, 255] {
            assert!(Rtnl::route_message(bad, 3, &default, 100).is_err());
        }
        let bad = Route {
            prefix_len: 33,
            ..default
        };
        assert_eq!(
            Rtnl::route_message(MAIN_TABLE, 3, &bad, 0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
