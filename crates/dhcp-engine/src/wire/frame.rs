//! Ethernet II / IPv4 / UDP / ARP framing, on top of `smoltcp::wire`.
//!
//! INTERFACE CONTRACT (used by `client`; keep the signatures stable):
//! - [`parse_frame`] classifies an inbound frame as DHCP-over-UDP or ARP.
//! - [`build_udp_frame`] and [`build_arp_frame`] build outbound frames.
//!
//! `smoltcp` gives us bounds-checked views of each header; the policy of what
//! we accept (no fragments, exact lengths, checksums) is decided here, because
//! smoltcp's own `check_len` is more lenient than we want for a parser that
//! runs on hostile input.

use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::DropReason;
use smoltcp::wire::{
    ArpOperation, ArpPacket as SmolArpPacket, ArpRepr, ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame,
    EthernetProtocol, IPV4_HEADER_LEN, IpAddress, IpProtocol, Ipv4Packet, UdpPacket,
};

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;

/// UDP header length (RFC 768).
const UDP_HEADER_LEN: usize = 8;
/// Ethernet/IPv4 ARP body length (RFC 826: 8 fixed bytes + 2 * (6 + 4)).
const ARP_LEN: usize = 28;
/// Largest UDP payload one IPv4 packet can carry (total length is 16 bits).
const MAX_UDP_PAYLOAD: usize = 65535 - IPV4_HEADER_LEN - UDP_HEADER_LEN;
/// Time to live of what we send; DHCP is link-local traffic, but relays
/// forward it, so use the common host default rather than 1.
const TTL: u8 = 64;

/// A UDP datagram carried in an IPv4 packet in an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    pub op: ArpOp,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// IPv4 UDP to port 68 (checksums verified unless offloaded).
    Dhcp(UdpDatagram<'a>),
    Arp(ArpPacket),
}

/// Parse an inbound frame. Accepts only Ethernet II with IPv4 (no options
/// beyond the header length field allows, not a fragment, total length
/// consistent with the frame, header checksum valid) carrying UDP to port 68
/// with a valid UDP checksum (a zero checksum means "none" per RFC 768; when
/// `checksum_offloaded` is set the UDP checksum is not verified), or ARP for
/// Ethernet/IPv4. Anything else is `BadFrame` / `BadChecksum`. Trailing
/// Ethernet padding after the IPv4 total length is ignored.
pub fn parse_frame(frame: &[u8], checksum_offloaded: bool) -> Result<Inbound<'_>, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::BadFrame)?;
    let src_mac = eth.src_addr().0;
    let dst_mac = eth.dst_addr().0;
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => parse_ipv4(eth.payload(), src_mac, dst_mac, checksum_offloaded),
        EthernetProtocol::Arp => parse_arp(eth.payload()).map(Inbound::Arp),
        _ => Err(DropReason::BadFrame),
    }
}

fn parse_ipv4<'a>(
    data: &'a [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    checksum_offloaded: bool,
) -> Result<Inbound<'a>, DropReason> {
    // new_checked refuses a buffer shorter than 20 bytes or than the header
    // length, IHL < 5 and a total length shorter than the header or longer
    // than what the frame holds (RFC 791 3.1). Bytes after the total length
    // are Ethernet padding (frames are at least 60 bytes) and are ignored.
    let ip = Ipv4Packet::new_checked(data).map_err(|_| DropReason::BadFrame)?;
    if ip.version() != 4 {
        return Err(DropReason::BadFrame);
    }
    // We never reassemble: a DHCP reply fits one packet (RFC 2131 2: 576-byte
    // datagrams), and fragments are a classic way to smuggle past filters.
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::BadFrame);
    }
    if ip.next_header() != IpProtocol::Udp {
        return Err(DropReason::BadFrame);
    }
    // The header checksum covers header only (RFC 791 3.1); checksum
    // offload concerns the transport checksum, the kernel checked this one.
    if !ip.verify_checksum() {
        return Err(DropReason::BadChecksum);
    }
    let src_ip = ip.src_addr();
    let dst_ip = ip.dst_addr();
    let segment = ip.payload();

    let udp = UdpPacket::new_checked(segment).map_err(|_| DropReason::BadFrame)?;
    // The UDP length must be exactly what the IPv4 packet carries: anything
    // shorter leaves unexplained bytes inside the packet (RFC 768).
    if usize::from(udp.len()) != segment.len() {
        return Err(DropReason::BadFrame);
    }
    if udp.dst_port() != DHCP_CLIENT_PORT {
        return Err(DropReason::BadFrame);
    }
    // RFC 768: a zero checksum means the sender computed none (smoltcp's
    // verify_checksum accepts it). With offload (TP_STATUS_CSUMNOTREADY) the
    // field holds only the pseudo-header sum and must not be verified.
    if !checksum_offloaded && !udp.verify_checksum(&IpAddress::Ipv4(src_ip), &IpAddress::Ipv4(dst_ip)) {
        return Err(DropReason::BadChecksum);
    }
    Ok(Inbound::Dhcp(UdpDatagram {
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        src_port: udp.src_port(),
        dst_port: udp.dst_port(),
        payload: udp.payload(),
    }))
}

fn parse_arp(data: &[u8]) -> Result<ArpPacket, DropReason> {
    let pkt = SmolArpPacket::new_checked(data).map_err(|_| DropReason::BadFrame)?;
    // ArpRepr::parse accepts only htype 1 (Ethernet), ptype 0x0800, hlen 6
    // and plen 4: the only ARP that RFC 5227 conflict detection needs.
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_hardware_addr,
        target_protocol_addr,
    } = ArpRepr::parse(&pkt).map_err(|_| DropReason::BadFrame)?
    else {
        return Err(DropReason::BadFrame);
    };
    let op = match operation {
        ArpOperation::Request => ArpOp::Request,
        ArpOperation::Reply => ArpOp::Reply,
        _ => return Err(DropReason::BadFrame),
    };
    Ok(ArpPacket {
        op,
        sender_mac: source_hardware_addr.0,
        sender_ip: source_protocol_addr,
        target_mac: target_hardware_addr.0,
        target_ip: target_protocol_addr,
    })
}

/// Build Ethernet + IPv4 (TTL 64, DF clear, ID 0, checksum filled) + UDP
/// (checksum filled) around `payload`.
///
/// A payload longer than one IPv4 packet can carry (65507 bytes) is cut to
/// that size; DHCP messages are a few hundred bytes, so this only keeps a
/// caller bug from producing an inconsistent frame.
#[allow(clippy::too_many_arguments)]
pub fn build_udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_UDP_PAYLOAD)];
    let udp_len = UDP_HEADER_LEN + payload.len();
    let ip_len = IPV4_HEADER_LEN + udp_len;
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + ip_len];

    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(EthernetAddress(dst_mac));
    eth.set_src_addr(EthernetAddress(src_mac));
    eth.set_ethertype(EthernetProtocol::Ipv4);

    let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]);
    ip.set_version(4);
    ip.set_header_len(IPV4_HEADER_LEN as u8);
    ip.set_dscp(0);
    ip.set_ecn(0);
    // ip_len <= 65535 by the cut above.
    ip.set_total_len(ip_len as u16);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_frag_offset(0);
    ip.set_hop_limit(TTL);
    ip.set_next_header(IpProtocol::Udp);
    ip.set_src_addr(src_ip);
    ip.set_dst_addr(dst_ip);
    ip.fill_checksum();

    let mut udp = UdpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..]);
    udp.set_src_port(src_port);
    udp.set_dst_port(dst_port);
    udp.set_len(udp_len as u16);
    udp.payload_mut().copy_from_slice(payload);
    // RFC 768: the checksum covers the pseudo header; a computed 0 is sent
    // as 0xffff (smoltcp does this).
    udp.fill_checksum(&IpAddress::Ipv4(src_ip), &IpAddress::Ipv4(dst_ip));
    buf
}

/// Build an Ethernet frame (source = `arp.sender_mac`) carrying `arp`.
pub fn build_arp_frame(arp: &ArpPacket, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + ARP_LEN];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(EthernetAddress(dst_mac));
    eth.set_src_addr(EthernetAddress(arp.sender_mac));
    eth.set_ethertype(EthernetProtocol::Arp);
    let repr = ArpRepr::EthernetIpv4 {
        operation: match arp.op {
            ArpOp::Request => ArpOperation::Request,
            ArpOp::Reply => ArpOperation::Reply,
        },
        source_hardware_addr: EthernetAddress(arp.sender_mac),
        source_protocol_addr: arp.sender_ip,
        target_hardware_addr: EthernetAddress(arp.target_mac),
        target_protocol_addr: arp.target_ip,
    };
    repr.emit(&mut SmolArpPacket::new_unchecked(&mut buf[ETHERNET_HEADER_LEN..]));
    buf
}
