//! What the client puts on the wire, and the cheap look at what comes in.
//!
//! Outbound messages follow RFC 2131 table 5 (which options each message
//! type carries); inbound replies get a fixed-offset header peek so that the
//! common drop paths (someone else's xid or chaddr) cost no allocation.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::{ClientIdKind, EngineConfig};

use crate::wire::dhcp::{Message, MessageType, Op, Options};
use crate::wire::frame::{self, ArpOp, ArpPacket, DHCP_CLIENT_PORT, DHCP_SERVER_PORT};

/// Option 55: what we ask servers for (RFC 2132 9.8). 121 is asked for with
/// 3 kept as fallback (RFC 3442 section 4), 119 for the search list.
pub const PARAMETER_REQUEST_LIST: [u8; 14] = [1, 3, 6, 12, 15, 26, 28, 42, 51, 54, 58, 59, 119, 121];

/// Option 57: the largest DHCP message we accept (RFC 2132 9.10); matches
/// an Ethernet MTU so servers never need IP fragmentation to reach us.
pub const MAX_MESSAGE_SIZE: u16 = 1500;

/// Option 61 bytes for a config.
///
/// RFC 4361 section 6.1: type 255, a 4-byte IAID, then the DUID; or, for
/// networks with MAC-based reservations (field notes item 7), the classic
/// RFC 2132 9.14 form: hardware type 1 followed by the MAC.
pub fn client_id_bytes(config: &EngineConfig) -> Vec<u8> {
    match &config.client_id {
        ClientIdKind::Duid { iaid, duid } => {
            let mut id = Vec::with_capacity(5 + duid.len());
            id.push(255);
            id.extend_from_slice(&iaid.to_be_bytes());
            id.extend_from_slice(duid);
            id
        }
        ClientIdKind::Mac => {
            let mut id = Vec::with_capacity(7);
            id.push(1);
            id.extend_from_slice(&config.mac);
            id
        }
    }
}

/// The variable parts of one client message.
pub struct Outgoing {
    pub kind: MessageType,
    pub xid: u32,
    pub secs: u16,
    /// RFC 2131 4.1: set while we cannot receive unicast to an address we do
    /// not have yet.
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    /// Option 50.
    pub requested: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
}

/// Build the DHCP message. DISCOVER and REQUEST carry 57, 55 and our
/// hostname / vendor class (RFC 2131 table 5 allows them); DECLINE and
/// RELEASE carry neither 55 nor 57 (table 5: MUST NOT).
pub fn message(config: &EngineConfig, client_id: &[u8], o: &Outgoing) -> Message {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&config.mac);
    let full = matches!(o.kind, MessageType::Discover | MessageType::Request);
    let options = Options {
        message_type: Some(o.kind),
        client_id: Some(client_id.to_vec()),
        requested_ip: o.requested,
        server_id: o.server_id,
        max_message_size: full.then_some(MAX_MESSAGE_SIZE),
        parameter_request_list: if full {
            PARAMETER_REQUEST_LIST.to_vec()
        } else {
            Vec::new()
        },
        hostname: if full { config.hostname.clone() } else { None },
        vendor_class: if full {
            config
                .vendor_class
                .as_ref()
                .map(|v: &String| v.as_bytes().to_vec())
        } else {
            None
        },
        ..Options::default()
    };
    Message {
        op: Op::Request,
        htype: 1,
        hlen: 6,
        hops: 0,
        xid: o.xid,
        secs: o.secs,
        broadcast: o.broadcast,
        ciaddr: o.ciaddr,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: Ipv4Addr::UNSPECIFIED,
        chaddr,
        options,
    }
}

/// Wrap a client message in UDP 68 -> 67, IPv4 and Ethernet.
pub fn udp_frame(
    mac: [u8; 6],
    msg: &Message,
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(320);
    msg.encode(&mut payload);
    frame::build_udp_frame(
        mac,
        dst_mac,
        src_ip,
        dst_ip,
        DHCP_CLIENT_PORT,
        DHCP_SERVER_PORT,
        &payload,
    )
}

/// RFC 5227 2.1.1 probe: sender IP all zeroes (so that no neighbour cache is
/// polluted with an address we may not get), target MAC zero.
pub fn arp_probe(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let arp = ArpPacket {
        op: ArpOp::Request,
        sender_mac: mac,
        sender_ip: Ipv4Addr::UNSPECIFIED,
        target_mac: [0; 6],
        target_ip: addr,
    };
    frame::build_arp_frame(&arp, frame::BROADCAST_MAC)
}

/// RFC 5227 2.3 announcement: a request with sender IP = target IP = ours,
/// which updates stale neighbour caches; also the 2.4 defence packet.
pub fn arp_announce(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let arp = ArpPacket {
        op: ArpOp::Request,
        sender_mac: mac,
        sender_ip: addr,
        target_mac: [0; 6],
        target_ip: addr,
    };
    frame::build_arp_frame(&arp, frame::BROADCAST_MAC)
}

/// The fixed BOOTP header fields we match replies on (RFC 2131 figure 1).
pub struct Header {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub xid: u32,
    pub chaddr: [u8; 6],
}

/// Fixed header (236 bytes) plus the magic cookie: anything shorter cannot
/// be a DHCP message.
const MIN_DHCP_LEN: usize = 240;

/// Read the fixed header at its RFC 2131 offsets without decoding options:
/// the drop decision for other clients' traffic needs only these fields.
pub fn peek_header(payload: &[u8]) -> Option<Header> {
    if payload.len() < MIN_DHCP_LEN {
        return None;
    }
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&payload[28..34]);
    Some(Header {
        op: payload[0],
        htype: payload[1],
        hlen: payload[2],
        xid: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
        chaddr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn client_ids_have_the_rfc_4361_and_mac_forms() {
        let mac = [2, 0, 0, 0, 0, 9];
        let cfg = EngineConfig::new(
            mac,
            ClientIdKind::Duid {
                iaid: 0x0102_0304,
                duid: vec![0, 4, 0xaa],
            },
        );
        assert_eq!(client_id_bytes(&cfg), vec![255, 1, 2, 3, 4, 0, 4, 0xaa]);
        let cfg = EngineConfig::new(mac, ClientIdKind::Mac);
        assert_eq!(client_id_bytes(&cfg), vec![1, 2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn peek_reads_fixed_offsets_and_refuses_short_payloads() {
        let mut p = vec![0u8; 240];
        p[0] = 2;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        p[28..34].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        let h = peek_header(&p).unwrap();
        assert_eq!((h.op, h.htype, h.hlen, h.xid), (2, 1, 6, 0xdead_beef));
        assert_eq!(h.chaddr, [1, 2, 3, 4, 5, 6]);
        assert!(peek_header(&p[..239]).is_none());
    }
}
