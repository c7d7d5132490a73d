//! Messages (RFC 1035 §4.1): header, questions, resource records, typed
//! RDATA, EDNS0 (RFC 6891) and opaque RDATA (RFC 3597).

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::name::{Budget, Name};
use crate::{Error, Limits};

/// Length of the fixed header (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;

/// Longest CNAME chain [`Message::addresses`] follows.
const MAX_CNAME_CHAIN: usize = 8;

/// A resource record type (RFC 1035 §3.2.2 and later registrations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Type(pub u16);

impl Type {
    pub const A: Type = Type(1);
    pub const NS: Type = Type(2);
    pub const CNAME: Type = Type(5);
    pub const SOA: Type = Type(6);
    pub const PTR: Type = Type(12);
    pub const MX: Type = Type(15);
    pub const TXT: Type = Type(16);
    /// RFC 3596.
    pub const AAAA: Type = Type(28);
    /// RFC 2782.
    pub const SRV: Type = Type(33);
    /// RFC 6891.
    pub const OPT: Type = Type(41);
    pub const ANY: Type = Type(255);
}

/// A class (RFC 1035 §3.2.4). In an OPT record this field is the UDP
/// payload size instead, which [`Edns`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Class(pub u16);

impl Class {
    pub const IN: Class = Class(1);
    pub const CH: Class = Class(3);
    pub const ANY: Class = Class(255);
}

/// The header's OPCODE (4 bits, RFC 1035 §4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

impl Opcode {
    pub const QUERY: Opcode = Opcode(0);
}

/// A response code: the header's 4 bits, extended by EDNS to 12 (RFC 6891
/// §6.1.3); see [`Message::rcode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rcode(pub u16);

impl Rcode {
    pub const NOERROR: Rcode = Rcode(0);
    pub const FORMERR: Rcode = Rcode(1);
    pub const SERVFAIL: Rcode = Rcode(2);
    pub const NXDOMAIN: Rcode = Rcode(3);
    pub const NOTIMP: Rcode = Rcode(4);
    pub const REFUSED: Rcode = Rcode(5);
    /// RFC 6891 §9.
    pub const BADVERS: Rcode = Rcode(16);
}

/// The header without its counts (the sections' lengths are the counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub id: u16,
    /// A response (QR).
    pub response: bool,
    /// 4 bits.
    pub opcode: u8,
    pub authoritative: bool,
    pub truncated: bool,
    pub recursion_desired: bool,
    pub recursion_available: bool,
    /// The reserved Z bit, kept as received (RFC 1035 says zero; we do not
    /// refuse what a forwarder should pass on).
    pub z: bool,
    /// RFC 4035 §3.2.3.
    pub authentic_data: bool,
    /// RFC 4035 §3.2.2.
    pub checking_disabled: bool,
    /// The low 4 bits of the response code.
    pub rcode: u8,
}

impl Header {
    /// The header and the four counts (QD, AN, NS, AR) of a message,
    /// without reading further or allocating.
    pub fn parse(data: &[u8]) -> Result<(Header, [u16; 4]), Error> {
        let bytes: &[u8; HEADER_LEN] = data
            .get(..HEADER_LEN)
            .ok_or(Error::Truncated)?
            .try_into()
            .map_err(|_| Error::Truncated)?;
        let word = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        let flags = word(2);
        let bit = |n: u16| flags & (1 << n) != 0;
        let header = Header {
            id: word(0),
            response: bit(15),
            opcode: ((flags >> 11) & 0xf) as u8,
            authoritative: bit(10),
            truncated: bit(9),
            recursion_desired: bit(8),
            recursion_available: bit(7),
            z: bit(6),
            authentic_data: bit(5),
            checking_disabled: bit(4),
            rcode: (flags & 0xf) as u8,
        };
        Ok((header, [word(4), word(6), word(8), word(10)]))
    }

    fn flags(&self) -> u16 {
        let bit = |b: bool, n: u16| u16::from(b) << n;
        bit(self.response, 15)
            | (u16::from(self.opcode & 0xf) << 11)
            | bit(self.authoritative, 10)
            | bit(self.truncated, 9)
            | bit(self.recursion_desired, 8)
            | bit(self.recursion_available, 7)
            | bit(self.z, 6)
            | bit(self.authentic_data, 5)
            | bit(self.checking_disabled, 4)
            | u16::from(self.rcode & 0xf)
    }
}

/// A question (RFC 1035 §4.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    pub name: Name,
    pub qtype: Type,
    pub qclass: Class,
}

impl Question {
    /// Same type and class, and the name octet for octet, case included
    /// (what a 0x20 resolver checks on the reply).
    pub fn eq_exact(&self, other: &Question) -> bool {
        self.qtype == other.qtype && self.qclass == other.qclass && self.name.eq_exact(&other.name)
    }
}

/// A resource record (RFC 1035 §4.1.3); its type is its data's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub class: Class,
    pub ttl: u32,
    pub data: RData,
}

impl Record {
    pub fn rtype(&self) -> Type {
        self.data.rtype()
    }
}

/// An SOA record's data (RFC 1035 §3.3.13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Soa {
    pub mname: Name,
    pub rname: Name,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
}

/// Typed RDATA, or opaque RDATA (RFC 3597 §5) for every other type, and for
/// A, AAAA and SRV outside class IN (their meaning is class-specific).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    /// RFC 3596.
    Aaaa(Ipv6Addr),
    Cname(Name),
    Ns(Name),
    Ptr(Name),
    Mx {
        preference: u16,
        exchange: Name,
    },
    /// One or more character-strings of at most 255 octets each (RFC 1035
    /// §3.3.14).
    Txt(Vec<Vec<u8>>),
    Soa(Soa),
    /// RFC 2782.
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    /// Any other type, as octets. Never OPT: that is [`Message::edns`].
    Unknown {
        rtype: Type,
        data: Vec<u8>,
    },
}

impl RData {
    pub fn rtype(&self) -> Type {
        match self {
            RData::A(_) => Type::A,
            RData::Aaaa(_) => Type::AAAA,
            RData::Cname(_) => Type::CNAME,
            RData::Ns(_) => Type::NS,
            RData::Ptr(_) => Type::PTR,
            RData::Mx { .. } => Type::MX,
            RData::Txt(_) => Type::TXT,
            RData::Soa(_) => Type::SOA,
            RData::Srv { .. } => Type::SRV,
            RData::Unknown { rtype, .. } => *rtype,
        }
    }

    /// Decode `message[start..end]` as the RDATA of a `rtype` record of
    /// `class`. Names may be compressed in the types of RFC 1035 and in SRV
    /// (RFC 3597 §4 asks receivers to accept that); other types are opaque.
    fn parse(
        message: &[u8],
        start: usize,
        end: usize,
        rtype: Type,
        class: Class,
        budget: &mut Budget,
    ) -> Result<RData, Error> {
        let mut r = Reader {
            message,
            pos: start,
            end,
            short: Error::BadRdata,
            raw: 0,
        };
        let data = match rtype {
            Type::A if class == Class::IN => RData::A(Ipv4Addr::from(r.array::<4>()?)),
            Type::AAAA if class == Class::IN => RData::Aaaa(Ipv6Addr::from(r.array::<16>()?)),
            Type::CNAME => RData::Cname(r.name(budget)?),
            Type::NS => RData::Ns(r.name(budget)?),
            Type::PTR => RData::Ptr(r.name(budget)?),
            Type::MX => RData::Mx {
                preference: r.u16()?,
                exchange: r.name(budget)?,
            },
            Type::TXT => {
                let mut strings = Vec::new();
                while r.pos < r.end {
                    let len = usize::from(r.array::<1>()?[0]);
                    strings.push(r.bytes(len)?.to_vec());
                }
                if strings.is_empty() {
                    return Err(Error::BadRdata);
                }
                RData::Txt(strings)
            }
            Type::SOA => RData::Soa(Soa {
                mname: r.name(budget)?,
                rname: r.name(budget)?,
                serial: r.u32()?,
                refresh: r.u32()?,
                retry: r.u32()?,
                expire: r.u32()?,
                minimum: r.u32()?,
            }),
            Type::SRV if class == Class::IN => RData::Srv {
                priority: r.u16()?,
                weight: r.u16()?,
                port: r.u16()?,
                target: r.name(budget)?,
            },
            _ => RData::Unknown {
                rtype,
                data: r.bytes(end - start)?.to_vec(),
            },
        };
        if r.pos != end {
            return Err(Error::BadRdata);
        }
        // Names were counted expanded: the total does not depend on how
        // the message was compressed.
        budget.spend_decoded(r.raw)?;
        Ok(data)
    }
}

/// An EDNS0 option (RFC 6891 §6.1.2), opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdnsOption {
    pub code: u16,
    pub data: Vec<u8>,
}

/// The OPT pseudo-record (RFC 6891 §6.1.2-3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The requestor's UDP payload size (the CLASS field).
    pub udp_payload_size: u16,
    /// The upper 8 bits of the 12-bit response code.
    pub extended_rcode: u8,
    pub version: u8,
    /// DNSSEC OK (RFC 3225).
    pub dnssec_ok: bool,
    /// The other 15 flag bits, kept as received.
    pub z: u16,
    pub options: Vec<EdnsOption>,
}

impl Edns {
    /// EDNS version 0, no flags, no options.
    pub fn new(udp_payload_size: u16) -> Edns {
        Edns {
            udp_payload_size,
            extended_rcode: 0,
            version: 0,
            dnssec_ok: false,
            z: 0,
            options: Vec::new(),
        }
    }

    fn parse(class: Class, ttl: u32, data: &[u8]) -> Result<Edns, Error> {
        let mut options = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let head = rest.get(..4).ok_or(Error::BadRdata)?;
            let code = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = rest.get(4..4 + len).ok_or(Error::BadRdata)?;
            options.push(EdnsOption {
                code,
                data: value.to_vec(),
            });
            rest = &rest[4 + len..];
        }
        let [extended_rcode, version, flags_high, flags_low] = ttl.to_be_bytes();
        let flags = u16::from_be_bytes([flags_high, flags_low]);
        Ok(Edns {
            udp_payload_size: class.0,
            extended_rcode,
            version,
            dnssec_ok: flags & 0x8000 != 0,
            z: flags & 0x7fff,
            options,
        })
    }

    fn ttl(&self) -> u32 {
        let flags = (u16::from(self.dnssec_ok) << 15) | (self.z & 0x7fff);
        let [high, low] = flags.to_be_bytes();
        u32::from_be_bytes([self.extended_rcode, self.version, high, low])
    }
}

/// A whole message. The header's counts are the sections' lengths (the
/// additional count includes the OPT record, which is [`Message::edns`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    pub edns: Option<Edns>,
}

/// Reads fields of a message up to a bound (a record's RDATA end).
struct Reader<'a> {
    message: &'a [u8],
    pos: usize,
    end: usize,
    /// What running past `end` is: the message's end (`Truncated`) or a
    /// record's RDLENGTH (`BadRdata`).
    short: Error,
    /// Octets read other than names (names count as they expand).
    raw: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.end)
            .ok_or(self.short)?;
        let bytes = &self.message[self.pos..end];
        self.pos = end;
        self.raw += len;
        Ok(bytes)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        self.bytes(N)?.try_into().map_err(|_| self.short)
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    /// A name whose in-place part must end within the bound.
    fn name(&mut self, budget: &mut Budget) -> Result<Name, Error> {
        let (name, end) = Name::parse(&self.message[..self.end], self.pos, budget)
            .map_err(|e| if e == Error::Truncated { self.short } else { e })?;
        self.pos = end;
        Ok(name)
    }
}

impl Message {
    /// A standard query for `name` of `qtype` in class IN, recursion
    /// desired, no EDNS.
    pub fn query(id: u16, name: Name, qtype: Type) -> Message {
        Message {
            header: Header {
                id,
                recursion_desired: true,
                ..Header::default()
            },
            questions: alloc::vec![Question {
                name,
                qtype,
                qclass: Class::IN,
            }],
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: None,
        }
    }

    /// The full response code (header and EDNS, RFC 6891 §6.1.3).
    pub fn rcode(&self) -> Rcode {
        let high = self.edns.as_ref().map_or(0, |e| u16::from(e.extended_rcode));
        Rcode((high << 4) | u16::from(self.header.rcode & 0xf))
    }

    /// Whether this is a response to `query`: QR set, the same id and
    /// opcode, and the same questions octet for octet (case included, so a
    /// 0x20-randomized query is checked by it).
    pub fn is_response_to(&self, query: &Message) -> bool {
        self.header.response
            && self.header.id == query.header.id
            && self.header.opcode == query.header.opcode
            && self.questions.len() == query.questions.len()
            && self
                .questions
                .iter()
                .zip(&query.questions)
                .all(|(a, b)| a.eq_exact(b))
    }

    /// The addresses the answer section gives for `name` in class IN,
    /// following a chain of at most 8 CNAMEs (in any order, RFC 1034 §3.6.2
    /// does not fix one), with their TTLs.
    pub fn addresses(&self, name: &Name) -> Vec<(IpAddr, u32)> {
        let mut owner = name;
        for _ in 0..=MAX_CNAME_CHAIN {
            let found: Vec<(IpAddr, u32)> = self
                .answers
                .iter()
                .filter(|r| r.class == Class::IN && r.name == *owner)
                .filter_map(|r| match r.data {
                    RData::A(a) => Some((IpAddr::V4(a), r.ttl)),
                    RData::Aaaa(a) => Some((IpAddr::V6(a), r.ttl)),
                    _ => None,
                })
                .collect();
            if !found.is_empty() {
                return found;
            }
            let next = self.answers.iter().find_map(|r| match &r.data {
                RData::Cname(target) if r.class == Class::IN && r.name == *owner => Some(target),
                _ => None,
            });
            match next {
                Some(target) => owner = target,
                None => break,
            }
        }
        Vec::new()
    }

    /// Parse with the default [`Limits`].
    pub fn parse(data: &[u8]) -> Result<Message, Error> {
        Message::parse_with(data, &Limits::default())
    }

    /// Parse and check a whole message (see the crate's strictness rules).
    pub fn parse_with(data: &[u8], limits: &Limits) -> Result<Message, Error> {
        let (header, [qd, an, ns, ar]) = Header::parse(data)?;
        let total = u32::from(qd) + u32::from(an) + u32::from(ns) + u32::from(ar);
        if total > limits.max_records {
            return Err(Error::RecordBudget);
        }
        // A question takes at least 5 octets, a record 11: refuse counts the
        // data cannot hold before allocating for them.
        let least = usize::from(qd) * 5 + (usize::from(an) + usize::from(ns) + usize::from(ar)) * 11;
        if least > data.len() - HEADER_LEN {
            return Err(Error::Truncated);
        }
        let mut budget = Budget::new(limits);
        let mut pos = HEADER_LEN;
        let mut questions = Vec::with_capacity(usize::from(qd));
        for _ in 0..qd {
            let (name, end) = Name::parse(data, pos, &mut budget)?;
            let mut r = Reader {
                message: data,
                pos: end,
                end: data.len(),
                short: Error::Truncated,
                raw: 0,
            };
            questions.push(Question {
                name,
                qtype: Type(r.u16()?),
                qclass: Class(r.u16()?),
            });
            pos = r.pos;
        }
        let mut edns = None;
        let mut sections: [Vec<Record>; 3] = Default::default();
        for (index, count) in [an, ns, ar].into_iter().enumerate() {
            let section = &mut sections[index];
            section.reserve(usize::from(count));
            for _ in 0..count {
                let (name, end) = Name::parse(data, pos, &mut budget)?;
                let mut r = Reader {
                    message: data,
                    pos: end,
                    end: data.len(),
                    short: Error::Truncated,
                    raw: 0,
                };
                let rtype = Type(r.u16()?);
                let class = Class(r.u16()?);
                let ttl = r.u32()?;
                let rdlength = usize::from(r.u16()?);
                let rdata_start = r.pos;
                let rdata = r.bytes(rdlength)?;
                pos = r.pos;
                if rtype == Type::OPT {
                    // RFC 6891 §6.1.1: one OPT, owned by the root, and only
                    // in the additional section.
                    if index != 2 || edns.is_some() || !name.is_root() {
                        return Err(Error::BadOpt);
                    }
                    budget.spend_decoded(rdlength)?;
                    edns = Some(Edns::parse(class, ttl, rdata)?);
                    continue;
                }
                let data = RData::parse(data, rdata_start, pos, rtype, class, &mut budget)?;
                section.push(Record {
                    name,
                    class,
                    ttl,
                    data,
                });
            }
        }
        if pos != data.len() {
            return Err(Error::TrailingData);
        }
        let [answers, authorities, additionals] = sections;
        Ok(Message {
            header,
            questions,
            answers,
            authorities,
            additionals,
            edns,
        })
    }

    /// The message in wire form, names compressed (owner and question names,
    /// and names in the RDATA of the RFC 1035 types; never in other RDATA,
    /// RFC 3597 §4, nor in SRV, RFC 2782).
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.emit(&mut out)?;
        Ok(out)
    }

    /// Append the wire form to `out` (which should be empty: compression
    /// offsets count from its start).
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let count = |n: usize| u16::try_from(n).map_err(|_| Error::TooLarge);
        let additional_count = count(self.additionals.len() + usize::from(self.edns.is_some()))?;
        let start = out.len();
        out.extend_from_slice(&self.header.id.to_be_bytes());
        out.extend_from_slice(&self.header.flags().to_be_bytes());
        for n in [
            count(self.questions.len())?,
            count(self.answers.len())?,
            count(self.authorities.len())?,
            additional_count,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        let mut writer = Writer {
            out,
            start,
            suffixes: Vec::new(),
        };
        for q in &self.questions {
            writer.name(&q.name, true);
            writer.out.extend_from_slice(&q.qtype.0.to_be_bytes());
            writer.out.extend_from_slice(&q.qclass.0.to_be_bytes());
        }
        for record in self
            .answers
            .iter()
            .chain(&self.authorities)
            .chain(&self.additionals)
        {
            writer.record(record)?;
        }
        if let Some(edns) = &self.edns {
            writer.out.push(0);
            writer.out.extend_from_slice(&Type::OPT.0.to_be_bytes());
            writer.out.extend_from_slice(&edns.udp_payload_size.to_be_bytes());
            writer.out.extend_from_slice(&edns.ttl().to_be_bytes());
            let length_at = writer.out.len();
            writer.out.extend_from_slice(&[0, 0]);
            for option in &edns.options {
                writer.out.extend_from_slice(&option.code.to_be_bytes());
                writer
                    .out
                    .extend_from_slice(&count(option.data.len())?.to_be_bytes());
                writer.out.extend_from_slice(&option.data);
            }
            writer.fill_length(length_at)?;
        }
        Ok(())
    }
}

/// Writes names with compression: every suffix written in a compressible
/// place is remembered with its offset (exact case, so that compression
/// never changes a name's case).
struct Writer<'a, 'm> {
    out: &'a mut Vec<u8>,
    start: usize,
    /// Borrowed from the names written (the message outlives the
    /// writer): no copy per suffix.
    suffixes: Vec<(u16, &'m [u8])>,
}

impl<'m> Writer<'_, 'm> {
    fn name(&mut self, name: &'m Name, compress: bool) {
        let wire = name.as_wire();
        let mut offset = 0;
        while wire[offset] != 0 {
            let suffix = &wire[offset..];
            if compress {
                if let Some((at, _)) = self.suffixes.iter().find(|(_, s)| *s == suffix) {
                    self.out.extend_from_slice(&(0xc000 | at).to_be_bytes());
                    return;
                }
                // A pointer holds 14 bits of offset.
                if let Ok(at) = u16::try_from(self.out.len() - self.start)
                    && at < 0x4000
                {
                    self.suffixes.push((at, suffix));
                }
            }
            let len = usize::from(wire[offset]);
            self.out.extend_from_slice(&wire[offset..offset + 1 + len]);
            offset += 1 + len;
        }
        self.out.push(0);
    }

    fn fill_length(&mut self, length_at: usize) -> Result<(), Error> {
        let len = u16::try_from(self.out.len() - length_at - 2).map_err(|_| Error::TooLarge)?;
        self.out[length_at..length_at + 2].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    fn record(&mut self, record: &'m Record) -> Result<(), Error> {
        let rtype = record.rtype();
        if rtype == Type::OPT {
            return Err(Error::BadOpt);
        }
        self.name(&record.name, true);
        self.out.extend_from_slice(&rtype.0.to_be_bytes());
        self.out.extend_from_slice(&record.class.0.to_be_bytes());
        self.out.extend_from_slice(&record.ttl.to_be_bytes());
        let length_at = self.out.len();
        self.out.extend_from_slice(&[0, 0]);
        match &record.data {
            RData::A(a) => self.out.extend_from_slice(&a.octets()),
            RData::Aaaa(a) => self.out.extend_from_slice(&a.octets()),
            RData::Cname(n) | RData::Ns(n) | RData::Ptr(n) => self.name(n, true),
            RData::Mx { preference, exchange } => {
                self.out.extend_from_slice(&preference.to_be_bytes());
                self.name(exchange, true);
            }
            RData::Txt(strings) => {
                if strings.is_empty() {
                    return Err(Error::BadRdata);
                }
                for s in strings {
                    let len = u8::try_from(s.len()).map_err(|_| Error::BadRdata)?;
                    self.out.push(len);
                    self.out.extend_from_slice(s);
                }
            }
            RData::Soa(soa) => {
                self.name(&soa.mname, true);
                self.name(&soa.rname, true);
                for n in [soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
                    self.out.extend_from_slice(&n.to_be_bytes());
                }
            }
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                for n in [priority, weight, port] {
                    self.out.extend_from_slice(&n.to_be_bytes());
                }
                self.name(target, false);
            }
            RData::Unknown { data, .. } => self.out.extend_from_slice(data),
        }
        self.fill_length(length_at)
    }
}
