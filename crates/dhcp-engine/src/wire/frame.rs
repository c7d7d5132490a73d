//! Ethernet II / IPv4 / UDP / ARP framing, on top of `smoltcp::wire`.
//!
//! INTERFACE CONTRACT (used by `client`; keep the signatures stable):
//! - [`parse_frame`] classifies an inbound frame as DHCP-over-UDP or ARP.
//! - [`build_udp_frame`] and [`build_arp_frame`] build outbound frames.

use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::DropReason;

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;

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
    let _ = (frame, checksum_offloaded);
    todo!()
}

/// Build Ethernet + IPv4 (TTL 64, DF clear, ID 0, checksum filled) + UDP
/// (checksum filled) around `payload`.
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
    let _ = (src_mac, dst_mac, src_ip, dst_ip, src_port, dst_port, payload);
    todo!()
}

/// Build an Ethernet frame (source = `arp.sender_mac`) carrying `arp`.
pub fn build_arp_frame(arp: &ArpPacket, dst_mac: [u8; 6]) -> Vec<u8> {
    let _ = (arp, dst_mac);
    todo!()
}
