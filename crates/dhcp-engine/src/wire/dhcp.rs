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
//!
//! The parser walks the option areas without copying, collecting
//! `(code, value)` slices; only codes that appear more than once (RFC 3396
//! long options) are concatenated into a fresh buffer, and only decoded
//! values are allocated.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::Route;

use super::{classless_routes, domain_search};

/// RFC 1497 / RFC 2131 section 3: the first four option bytes.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header before the cookie (RFC 2131 figure 1).
pub const FIXED_HEADER_LEN: usize = 236;
/// RFC 1542 section 2.1: BOOTP relays and old servers expect at least 300.
pub const MIN_MESSAGE_LEN: usize = 300;
/// Most option instances (pad and end not counted) one message may carry,
/// over all areas, before it is refused. Real replies carry a few dozen.
pub const MAX_OPTION_INSTANCES: usize = 1024;

const SNAME: core::ops::Range<usize> = 44..108;
const FILE: core::ops::Range<usize> = 108..236;
const OPT_PAD: u8 = 0;
const OPT_END: u8 = 255;
const OPT_OVERLOAD: u8 = 52;
/// RFC 4702 section 2.1 flag bits.
const FQDN_FLAG_S: u8 = 0x01;
const FQDN_FLAG_E: u8 = 0x04;

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
    /// 81 (RFC 4702): the name. Encoded with flags S and E (the server updates
    /// the A record; canonical wire format) and RCODEs 0; a name without a
    /// trailing dot is sent as a partial name (no root label, RFC 4702
    /// 2.1) so the server may complete it. Parsed back from either format.
    pub client_fqdn: Option<String>,
    /// 119 (RFC 3397), decompressed. `Err(())` when present but malformed
    /// (compression loop, pointer forward/out of range, label too long, name
    /// over 255 bytes, missing terminator).
    pub domain_search: Option<Result<Vec<String>, ()>>,
    /// 121 (RFC 3442). `Err(())` when present but malformed (prefix length
    /// over 32, truncated entry, destination bits set past the prefix).
    pub classless_routes: Option<Result<Vec<Route>, ()>>,
    /// 80 (RFC 4039)
    pub rapid_commit: bool,
    /// Every other option (codes not decoded above, 52 excepted), RFC 3396
    /// concatenated, in order of first appearance. Encoded verbatim after the
    /// known options, so a test server can also send what we do not decode
    /// (or malformed values on purpose).
    pub other: Vec<(u8, Vec<u8>)>,
    /// Options seen, total (after concatenation); for limits and metrics.
    /// Counts distinct codes, 52 included, pad and end not.
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

impl MessageType {
    /// The option 53 value (RFC 2132 9.6, RFC 3203 for 9).
    pub const fn code(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
            MessageType::ForceRenew => 9,
            MessageType::Other(c) => c,
        }
    }

    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            9 => MessageType::ForceRenew,
            c => MessageType::Other(c),
        }
    }
}

/// Codes decoded into named fields of [`Options`] (everything else goes to
/// `other`); 52 is consumed by the parser itself.
const KNOWN_CODES: [u8; 24] = [
    1, 3, 6, 12, 15, 26, 28, 42, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 80, 81, 119, 121,
];

/// Walk one option area, pushing each instance. `Ok` once END is seen;
/// bytes after END are padding and ignored (RFC 2131 4.1 pads sname/file).
fn walk_area<'a>(area: &'a [u8], out: &mut Vec<(u8, &'a [u8])>) -> Result<(), DhcpError> {
    let mut pos = 0;
    while let Some(&code) = area.get(pos) {
        match code {
            OPT_PAD => pos += 1,
            OPT_END => return Ok(()),
            _ => {
                // RFC 2132 2: every other option has a length byte; a value
                // running past the area is the CVE-2016-1503 shape.
                let len = usize::from(*area.get(pos + 1).ok_or(DhcpError::OptionOverrun)?);
                let value = area.get(pos + 2..pos + 2 + len).ok_or(DhcpError::OptionOverrun)?;
                if out.len() == MAX_OPTION_INSTANCES {
                    return Err(DhcpError::TooManyOptions);
                }
                out.push((code, value));
                pos += 2 + len;
            }
        }
    }
    Err(DhcpError::MissingEnd)
}

/// The value of `code`: one instance borrowed, several concatenated in the
/// order met (RFC 3396 section 6), `None` if absent.
fn value<'a>(instances: &[(u8, &'a [u8])], code: u8) -> Option<Cow<'a, [u8]>> {
    let mut found = instances.iter().filter(|(c, _)| *c == code);
    let (_, first) = found.next()?;
    let mut acc: Option<Vec<u8>> = None;
    for (_, more) in found {
        acc.get_or_insert_with(|| first.to_vec()).extend_from_slice(more);
    }
    Some(match acc {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(*first),
    })
}

fn ipv4(v: &[u8]) -> Result<Ipv4Addr, DhcpError> {
    let b: [u8; 4] = v.try_into().map_err(|_| DhcpError::BadOptionLength)?;
    Ok(Ipv4Addr::from(b))
}

fn u32_be(v: &[u8]) -> Result<u32, DhcpError> {
    let b: [u8; 4] = v.try_into().map_err(|_| DhcpError::BadOptionLength)?;
    Ok(u32::from_be_bytes(b))
}

fn u16_be(v: &[u8]) -> Result<u16, DhcpError> {
    let b: [u8; 2] = v.try_into().map_err(|_| DhcpError::BadOptionLength)?;
    Ok(u16::from_be_bytes(b))
}

/// Address lists (3, 6, 42): RFC 2132 gives a minimum length of 4 and
/// "multiples of 4".
fn ipv4_list(v: &[u8]) -> Result<Vec<Ipv4Addr>, DhcpError> {
    if v.is_empty() || !v.len().is_multiple_of(4) {
        return Err(DhcpError::BadOptionLength);
    }
    Ok(v.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect())
}

/// Text options (12, 15, 56): some servers NUL-terminate them, so trailing
/// NULs go; a value that is not UTF-8 is kept as absent (it could never be a
/// valid name anyway). Validation of content is `lease`'s job.
fn text(v: &[u8]) -> Option<String> {
    let end = v.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    core::str::from_utf8(&v[..end]).ok().map(String::from)
}

/// RFC 4702 section 2.3.1 canonical wire format without compression; a name
/// ending without the root label is a partial name (returned without the
/// trailing dot).
fn fqdn_wire(v: &[u8]) -> Option<String> {
    let mut name = String::new();
    let mut pos = 0;
    while let Some(&len) = v.get(pos) {
        if len == 0 {
            // Root label: must be the last byte.
            if pos + 1 != v.len() {
                return None;
            }
            name.push('.');
            return Some(name);
        }
        if len > 63 {
            return None;
        }
        let label = core::str::from_utf8(v.get(pos + 1..pos + 1 + usize::from(len))?).ok()?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(label);
        pos += 1 + usize::from(len);
    }
    Some(name)
}

fn decode_fqdn(v: &[u8]) -> Result<Option<String>, DhcpError> {
    // Flags, RCODE1, RCODE2, then the name (RFC 4702 section 2).
    if v.len() < 3 {
        return Err(DhcpError::BadOptionLength);
    }
    let name = &v[3..];
    Ok(if v[0] & FQDN_FLAG_E != 0 {
        fqdn_wire(name)
    } else {
        // The deprecated ASCII form (RFC 4702 2.3.1), kept byte for byte so
        // that what `encode_fqdn` writes in this form reads back the same.
        core::str::from_utf8(name).ok().map(String::from)
    })
}

fn encode_fqdn(name: &str, out: &mut Vec<u8>) {
    let mut value = Vec::with_capacity(name.len() + 5);
    value.extend_from_slice(&[FQDN_FLAG_S | FQDN_FLAG_E, 0, 0]);
    let fqdn = name.ends_with('.');
    let start = value.len();
    let wire_ok = domain_search::encode_name(name, &mut value);
    if wire_ok && !fqdn {
        // Drop the root label: a partial name (RFC 4702 2.1).
        value.pop();
    }
    // Use the wire form only if it reads back as exactly this name (labels
    // with dots or NULs in them, empty labels and over-long names do not).
    if !wire_ok || fqdn_wire(&value[start..]).as_deref() != Some(name) {
        // Fall back to the deprecated ASCII form (E clear), which carries
        // the value as given.
        value.truncate(start);
        value[0] = FQDN_FLAG_S;
        value.extend_from_slice(name.as_bytes());
    }
    put(out, 81, &value);
}

/// Write one option, split into 255-byte pieces (RFC 3396 section 7); an
/// empty value is written once with length 0.
fn put(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    if value.is_empty() {
        out.extend_from_slice(&[code, 0]);
        return;
    }
    for chunk in value.chunks(255) {
        out.push(code);
        // chunks(255) yields at most 255 bytes.
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

fn put_ips(out: &mut Vec<u8>, code: u8, ips: &[Ipv4Addr]) {
    if ips.is_empty() {
        return;
    }
    let v: Vec<u8> = ips.iter().flat_map(|a| a.octets()).collect();
    put(out, code, &v);
}

impl Options {
    fn decode(instances: &[(u8, &[u8])]) -> Result<Options, DhcpError> {
        let mut o = Options::default();
        if let Some(v) = value(instances, 53) {
            let [t] = *v else {
                return Err(DhcpError::BadOptionLength);
            };
            o.message_type = Some(MessageType::from_code(t));
        }
        let ip = |code| value(instances, code).map(|v| ipv4(&v)).transpose();
        let secs = |code| value(instances, code).map(|v| u32_be(&v)).transpose();
        let list = |code| value(instances, code).map_or(Ok(Vec::new()), |v| ipv4_list(&v));
        o.subnet_mask = ip(1)?;
        o.broadcast = ip(28)?;
        o.requested_ip = ip(50)?;
        o.server_id = ip(54)?;
        o.lease_time = secs(51)?;
        o.renewal_time = secs(58)?;
        o.rebinding_time = secs(59)?;
        o.routers = list(3)?;
        o.dns_servers = list(6)?;
        o.ntp_servers = list(42)?;
        o.mtu = value(instances, 26).map(|v| u16_be(&v)).transpose()?;
        o.max_message_size = value(instances, 57).map(|v| u16_be(&v)).transpose()?;
        o.hostname = value(instances, 12).and_then(|v| text(&v));
        o.domain_name = value(instances, 15).and_then(|v| text(&v));
        o.message = value(instances, 56).and_then(|v| text(&v));
        o.parameter_request_list = value(instances, 55).map(Cow::into_owned).unwrap_or_default();
        o.vendor_class = value(instances, 60).map(Cow::into_owned);
        if let Some(v) = value(instances, 61) {
            // RFC 2132 9.14: type byte plus at least one byte of identifier.
            if v.len() < 2 {
                return Err(DhcpError::BadOptionLength);
            }
            o.client_id = Some(v.into_owned());
        }
        if let Some(v) = value(instances, 80) {
            // RFC 4039 section 4: length 0.
            if !v.is_empty() {
                return Err(DhcpError::BadOptionLength);
            }
            o.rapid_commit = true;
        }
        o.client_fqdn = value(instances, 81)
            .map(|v| decode_fqdn(&v))
            .transpose()?
            .flatten();
        o.domain_search = value(instances, 119).map(|v| domain_search::decode(&v));
        o.classless_routes = value(instances, 121).map(|v| classless_routes::decode(&v));
        let mut seen = [false; 256];
        for &(code, _) in instances {
            let first = !seen[usize::from(code)];
            seen[usize::from(code)] = true;
            if first && !KNOWN_CODES.contains(&code) {
                o.other.push((
                    code,
                    value(instances, code).map(Cow::into_owned).unwrap_or_default(),
                ));
            }
        }
        // At most 254 distinct codes (pad and end are not instances).
        o.count = seen.iter().filter(|s| **s).count() as u16;
        Ok(o)
    }

    /// Append every present option in the order documented on
    /// [`Message::encode`] (no END).
    fn encode(&self, out: &mut Vec<u8>) {
        if let Some(t) = self.message_type {
            put(out, 53, &[t.code()]);
        }
        if let Some(id) = &self.client_id {
            put(out, 61, id);
        }
        if let Some(a) = self.requested_ip {
            put(out, 50, &a.octets());
        }
        if let Some(a) = self.server_id {
            put(out, 54, &a.octets());
        }
        if let Some(h) = &self.hostname {
            put(out, 12, h.as_bytes());
        }
        if let Some(n) = &self.client_fqdn {
            encode_fqdn(n, out);
        }
        if let Some(v) = &self.vendor_class {
            put(out, 60, v);
        }
        if let Some(m) = self.max_message_size {
            put(out, 57, &m.to_be_bytes());
        }
        if !self.parameter_request_list.is_empty() {
            put(out, 55, &self.parameter_request_list);
        }
        if let Some(a) = self.subnet_mask {
            put(out, 1, &a.octets());
        }
        put_ips(out, 3, &self.routers);
        put_ips(out, 6, &self.dns_servers);
        if let Some(d) = &self.domain_name {
            put(out, 15, d.as_bytes());
        }
        if let Some(m) = self.mtu {
            put(out, 26, &m.to_be_bytes());
        }
        if let Some(a) = self.broadcast {
            put(out, 28, &a.octets());
        }
        put_ips(out, 42, &self.ntp_servers);
        if let Some(s) = self.lease_time {
            put(out, 51, &s.to_be_bytes());
        }
        if let Some(m) = &self.message {
            put(out, 56, m.as_bytes());
        }
        if let Some(s) = self.renewal_time {
            put(out, 58, &s.to_be_bytes());
        }
        if let Some(s) = self.rebinding_time {
            put(out, 59, &s.to_be_bytes());
        }
        if self.rapid_commit {
            put(out, 80, &[]);
        }
        // 119 uncompressed (RFC 3397 allows it); an `Err` value has nothing
        // left to encode and is skipped, as are empty lists.
        if let Some(Ok(names)) = &self.domain_search {
            let mut v = Vec::new();
            domain_search::encode(names, &mut v);
            if !v.is_empty() {
                put(out, 119, &v);
            }
        }
        if let Some(Ok(routes)) = &self.classless_routes
            && !routes.is_empty()
        {
            let mut v = Vec::new();
            classless_routes::encode(routes, &mut v);
            put(out, 121, &v);
        }
        for (code, v) in &self.other {
            // Pad and end carry no value; writing them would end the area.
            if !matches!(*code, OPT_PAD | OPT_END) {
                put(out, *code, v);
            }
        }
    }
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl Message {
    /// Parse a DHCP payload (the UDP payload). Zero-copy walk of the option
    /// areas; only the decoded values are allocated.
    pub fn parse(payload: &[u8]) -> Result<Message, DhcpError> {
        // Fixed header + cookie; every index below is < 240.
        if payload.len() < FIXED_HEADER_LEN + MAGIC_COOKIE.len() {
            return Err(DhcpError::Truncated);
        }
        let op = match payload[0] {
            1 => Op::Request,
            2 => Op::Reply,
            _ => return Err(DhcpError::BadOp),
        };
        if payload[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4] != MAGIC_COOKIE {
            return Err(DhcpError::BadMagic);
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&payload[28..44]);

        let mut instances = Vec::new();
        walk_area(&payload[FIXED_HEADER_LEN + 4..], &mut instances)?;
        // Option 52 must be in the options field itself (RFC 2132 9.3); its
        // value says which header fields hold more options.
        let overload = match value(&instances, OPT_OVERLOAD) {
            None => 0,
            Some(v) => match *v {
                [o @ 1..=3] => o,
                [_] => return Err(DhcpError::BadOverload),
                _ => return Err(DhcpError::BadOptionLength),
            },
        };
        let main_len = instances.len();
        // RFC 2131 4.1: the `file` field is read before `sname`, and each
        // overloaded field must end with END.
        if overload & 1 != 0 {
            walk_area(&payload[FILE], &mut instances)?;
        }
        if overload & 2 != 0 {
            walk_area(&payload[SNAME], &mut instances)?;
        }
        // An overload option inside an overloaded field would need the
        // fields to be read again; nothing legitimate does that.
        if instances[main_len..].iter().any(|(c, _)| *c == OPT_OVERLOAD) {
            return Err(DhcpError::BadOverload);
        }

        Ok(Message {
            op,
            htype: payload[1],
            hlen: payload[2],
            hops: payload[3],
            xid: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
            secs: u16::from_be_bytes([payload[8], payload[9]]),
            // RFC 2131 figure 2: the leftmost flag bit; the others MBZ and
            // are ignored on receipt.
            broadcast: payload[10] & 0x80 != 0,
            ciaddr: addr(payload, 12),
            yiaddr: addr(payload, 16),
            siaddr: addr(payload, 20),
            giaddr: addr(payload, 24),
            chaddr,
            options: Options::decode(&instances)?,
        })
    }

    /// Append the encoded message to `out`: fixed header, cookie, every
    /// present option (53 first, then 61, 50, 54, 12, 81, 60, 57, 55, then
    /// the rest, 119 and 121 in wire form), END, padded to the 300-byte BOOTP
    /// minimum. Values over 255 bytes are split per RFC 3396. Encoding every
    /// field lets tests and the hostile test server build replies too.
    ///
    /// `sname` and `file` are written as zeros (no overload), and `count` is
    /// not encoded (the parser recomputes it).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(match self.op {
            Op::Request => 1,
            Op::Reply => 2,
        });
        out.extend_from_slice(&[self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&(if self.broadcast { 0x8000u16 } else { 0 }).to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        out.resize(start + FIXED_HEADER_LEN, 0);
        out.extend_from_slice(&MAGIC_COOKIE);
        self.options.encode(out);
        out.push(OPT_END);
        if out.len() - start < MIN_MESSAGE_LEN {
            out.resize(start + MIN_MESSAGE_LEN, OPT_PAD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn with_options(options: &[u8]) -> Vec<u8> {
        let mut p = vec![2u8, 1, 6, 0];
        p.resize(FIXED_HEADER_LEN, 0);
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(options);
        p
    }

    /// decode -> encode -> decode -> encode gives the same bytes twice.
    fn assert_fixed_point(payload: &[u8]) -> Message {
        let first = Message::parse(payload).unwrap();
        let mut a = Vec::new();
        first.encode(&mut a);
        let second = Message::parse(&a).unwrap();
        let mut b = Vec::new();
        second.encode(&mut b);
        assert_eq!(a, b);
        second
    }

    #[test]
    fn fqdn_forms_read_back_as_written() {
        let cases: [(&[u8], Option<&str>); 7] = [
            // E set, partial name "host1".
            (
                &[81, 9, 0x05, 0, 0, 5, b'h', b'o', b's', b't', b'1'],
                Some("host1"),
            ),
            // E set, fully qualified "a.b.".
            (&[81, 8, 0x05, 0, 0, 1, b'a', 1, b'b', 0], Some("a.b.")),
            // E set, a label holding dots and a NUL: kept as text, re-sent
            // in ASCII form.
            (&[81, 7, 0x04, 0, 0, 3, b'.', b'.', 0], Some("..\0")),
            // E set, root label not last: invalid, dropped.
            (&[81, 6, 0x04, 0, 0, 0, 1, b'a'], None),
            // E set, label running past the value.
            (&[81, 5, 0x04, 0, 0, 5, b'a'], None),
            // ASCII form.
            (&[81, 7, 0x01, 0, 0, b'x', b'.', b'y', 0], Some("x.y\0")),
            // ASCII form, not UTF-8.
            (&[81, 4, 0x00, 0, 0, 0xff], None),
        ];
        for (opt, want) in cases {
            let mut o = opt.to_vec();
            o.push(OPT_END);
            let m = assert_fixed_point(&with_options(&o));
            assert_eq!(m.options.client_fqdn.as_deref(), want, "{opt:?}");
        }
    }

    #[test]
    fn lossy_values_reach_a_fixed_point() {
        let payloads: [&[u8]; 4] = [
            // Text with trailing NULs; empty text; empty vendor class.
            &[12, 3, b'a', 0, 0, 15, 0, 60, 0, 55, 0, OPT_END],
            // Search names with non-UTF-8 bytes and a dotted label.
            &[119, 9, 2, 0xff, b'a', 3, b'b', b'.', b'c', 0, 0, OPT_END],
            // Unknown options, one empty, one repeated.
            &[224, 0, 250, 2, 1, 2, 250, 1, 3, OPT_END],
            // Overloaded content moves into the options field.
            &[52, 1, 3, OPT_END],
        ];
        for p in payloads {
            let mut msg = with_options(p);
            if p[0] == 52 {
                msg[108] = 12;
                msg[109] = 1;
                msg[110] = b'f';
                msg[111] = OPT_END;
                msg[44] = OPT_END;
            }
            assert_fixed_point(&msg);
        }
    }

    #[test]
    fn message_type_codes_round_trip() {
        for code in 0..=255u8 {
            assert_eq!(MessageType::from_code(code).code(), code);
        }
        assert_eq!(MessageType::from_code(5), MessageType::Ack);
        assert_eq!(MessageType::from_code(9), MessageType::ForceRenew);
    }
}
