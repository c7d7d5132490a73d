//! DHCP messages (RFC 2131 section 2, options RFC 2132).
//!
//! INTERFACE CONTRACT (used by `client` and `lease`; keep the types stable,
//! add fields only with defaults):
//! - [`Message::parse`] decodes a BOOTP/DHCP payload strictly: fixed header,
//!   magic cookie, options with RFC 3396 concatenation of repeated codes,
//!   option overload (52) into `file` then `sname` (RFC 2131 4.1), END
//!   required in each area. An option whose length runs past the end, or a
//!   missing END, makes the whole message invalid.
//! - [`Message::encode`] writes a client message.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::Route;

/// RFC 2132 section 9.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    /// RFC 3203 FORCERENEW (ignored without RFC 6704 authentication).
    ForceRenew,
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request,
    Reply,
}

/// Decoded options. Absent options are `None` / empty. Values are decoded
/// but not policy-checked here (see `lease`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// 53
    pub message_type: Option<MessageType>,
    /// 1
    pub subnet_mask: Option<Ipv4Addr>,
    /// 3
    pub routers: Vec<Ipv4Addr>,
    /// 6
    pub dns_servers: Vec<Ipv4Addr>,
    /// 12
    pub hostname: Option<String>,
    /// 15 (raw text, validated later)
    pub domain_name: Option<String>,
    /// 26
    pub mtu: Option<u16>,
    /// 28
    pub broadcast: Option<Ipv4Addr>,
    /// 42
    pub ntp_servers: Vec<Ipv4Addr>,
    /// 50
    pub requested_ip: Option<Ipv4Addr>,
    /// 51
    pub lease_time: Option<u32>,
    /// 54
    pub server_id: Option<Ipv4Addr>,
    /// 55
    pub parameter_request_list: Vec<u8>,
    /// 56
    pub message: Option<String>,
    /// 57
    pub max_message_size: Option<u16>,
    /// 58
    pub renewal_time: Option<u32>,
    /// 59
    pub rebinding_time: Option<u32>,
    /// 60
    pub vendor_class: Option<Vec<u8>>,
    /// 61
    pub client_id: Option<Vec<u8>>,
    /// 81 (RFC 4702): flags + name as sent (client side, encoded only).
    pub client_fqdn: Option<String>,
    /// 119 (RFC 3397), decompressed. `Err(())` when present but malformed
    /// (compression loop, pointer forward/out of range, label too long, name
    /// over 255 bytes, missing terminator).
    pub domain_search: Option<Result<Vec<String>, ()>>,
    /// 121 (RFC 3442). `Err(())` when present but malformed (prefix length
    /// over 32, truncated entry).
    pub classless_routes: Option<Result<Vec<Route>, ()>>,
    /// 80 (RFC 4039)
    pub rapid_commit: bool,
    /// Options seen, total (after concatenation); for limits and metrics.
    pub count: u16,
}

/// A decoded DHCP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub op: Op,
    /// Must be 1 (Ethernet) with hlen 6 for our replies.
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    /// The BROADCAST flag (RFC 2131 figure 2).
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub options: Options,
}

/// Why a payload is not a valid DHCP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpError {
    Truncated,
    BadMagic,
    BadOp,
    /// An option's length runs past the end of its area (CVE-2016-1503 shape).
    OptionOverrun,
    MissingEnd,
    /// A fixed-size option with the wrong length (e.g. option 51 of 3 bytes).
    BadOptionLength,
    /// Overload (52) value other than 1, 2, 3.
    BadOverload,
    TooManyOptions,
}

impl Message {
    /// Parse a DHCP payload (the UDP payload). Zero-copy walk of the option
    /// areas; only the decoded values are allocated.
    pub fn parse(payload: &[u8]) -> Result<Message, DhcpError> {
        let _ = payload;
        todo!()
    }

    /// Append the encoded message to `out`: fixed header, cookie, every
    /// present option (53 first, then 61, 50, 54, 12, 81, 60, 57, 55, then
    /// the rest, 119 and 121 in wire form), END, padded to the 300-byte BOOTP
    /// minimum. Values over 255 bytes are split per RFC 3396. Encoding every
    /// field lets tests and the hostile test server build replies too.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let _ = out;
        todo!()
    }
}
