//! The network role's rules (docs/dns.md, "The network role's policy"),
//! as plain data structures its loop and the tests share. Whatever a
//! compromised engine asks:
//! - an upstream query goes only to a configured upstream, on its port
//!   ([`check_query`]), from a fresh socket, within a rate
//!   ([`TokenBucket`]) and a bound on sockets open;
//! - an answer goes only to a client that has a query outstanding, once,
//!   with that query's id, as a response, within a size bound
//!   ([`Clients::answer`]): the engine names a client by the role's token,
//!   never by an address, so the host cannot be made a reflector.
//!
//! And whoever a client is: only a client within the access list is read
//! ([`Cidr`]), and each client address within its own rate
//! ([`ClientLimiter`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A DNS header (RFC 1035 section 4.1.1).
pub const HEADER_LEN: usize = 12;
/// The largest upstream query let out: one question (a name of at most
/// 255 octets) and an OPT record fit with room to spare.
pub const MAX_UPSTREAM_QUERY: usize = 512;
/// The largest UDP answer: the engine advertises and honours 1232
/// (`dns_engine::EDNS_PAYLOAD`).
pub const MAX_UDP_ANSWER: usize = dns_engine::EDNS_PAYLOAD as usize;
/// The largest TCP answer ([`dns_engine::MAX_TCP_ANSWER`]).
pub const MAX_TCP_ANSWER: usize = dns_engine::MAX_TCP_ANSWER;
/// The QR bit: set in responses (byte 2 of the header).
const QR: u8 = 0x80;

/// Why the role did not do what the engine asked.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutboundRefusal {
    /// An upstream index that is not a configured upstream.
    NotAnUpstream,
    /// Not a query: shorter than a header, longer than any query, or with
    /// the QR bit set.
    NotAQuery,
    /// A query number already in flight.
    QueryInFlight,
    /// Over `limits.upstream_sockets` or the upstream rate.
    UpstreamCapped,
    /// An answer for a client token the role never gave out: the engine
    /// invented a client.
    NeverAsked,
    /// An answer for a query already answered, dropped, or expired (or
    /// whose TCP connection closed): late, not hostile by itself.
    NoLongerOutstanding,
    /// Not a response to that query: too short, QR clear, or another id.
    NotTheAnswer,
    /// Longer than the transport's bound.
    TooLarge,
}

impl OutboundRefusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            OutboundRefusal::NotAnUpstream => "not-an-upstream",
            OutboundRefusal::NotAQuery => "not-a-query",
            OutboundRefusal::QueryInFlight => "query-in-flight",
            OutboundRefusal::UpstreamCapped => "upstream-capped",
            OutboundRefusal::NeverAsked => "never-asked",
            OutboundRefusal::NoLongerOutstanding => "no-longer-outstanding",
            OutboundRefusal::NotTheAnswer => "not-the-answer",
            OutboundRefusal::TooLarge => "too-large",
        }
    }
}

/// The upstream query `data` to upstream number `upstream`: its address
/// if that is a configured upstream and `data` looks like a query.
pub fn check_query(
    upstreams: &[SocketAddr],
    upstream: u8,
    data: &[u8],
) -> Result<SocketAddr, OutboundRefusal> {
    let to = *upstreams
        .get(usize::from(upstream))
        .ok_or(OutboundRefusal::NotAnUpstream)?;
    if data.len() < HEADER_LEN || data.len() > MAX_UPSTREAM_QUERY || data[2] & QR != 0 {
        return Err(OutboundRefusal::NotAQuery);
    }
    Ok(to)
}

/// Where a client query came from: where its answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// UDP listener number `listener`, from `client`.
    Udp { listener: usize, client: SocketAddr },
    /// TCP connection number `conn`.
    Tcp { conn: u64 },
}

/// One client query waiting for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub origin: Origin,
    /// The query's id: the answer must carry it.
    pub id: u16,
    /// Boot-clock milliseconds after which it is forgotten.
    pub expires_ms: u64,
}

/// Why a client datagram was not passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Shorter than a header, or a response (never answered: two servers
    /// must not be made to answer each other forever).
    NotAQuery,
    /// The table is full.
    Full,
}

/// Client queries outstanding, by the token the engine answers with.
/// Tokens count up from 1 and are never reused, so a token the role never
/// gave out is told from one that expired; every query waits the same
/// time, so the lowest token is the first to expire.
pub struct Clients {
    pending: BTreeMap<u64, Pending>,
    /// Queries outstanding per TCP connection (no entry: none).
    per_conn: HashMap<u64, usize>,
    next: u64,
    max: usize,
    timeout_ms: u64,
}

impl Clients {
    pub fn new(max: usize, timeout_ms: u64) -> Clients {
        Clients {
            pending: BTreeMap::new(),
            per_conn: HashMap::new(),
            next: 1,
            max,
            timeout_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A query `data` from `origin` at `now_ms`: its token.
    pub fn admit(&mut self, origin: Origin, data: &[u8], now_ms: u64) -> Result<u64, Admission> {
        if data.len() < HEADER_LEN || data[2] & QR != 0 {
            return Err(Admission::NotAQuery);
        }
        if self.pending.len() >= self.max {
            return Err(Admission::Full);
        }
        let token = self.next;
        self.next += 1;
        if let Origin::Tcp { conn } = origin {
            *self.per_conn.entry(conn).or_default() += 1;
        }
        self.pending.insert(
            token,
            Pending {
                origin,
                id: u16::from_be_bytes([data[0], data[1]]),
                expires_ms: now_ms.saturating_add(self.timeout_ms),
            },
        );
        Ok(token)
    }

    /// The engine's answer `data` to `token`: where it goes, if the
    /// policy lets it. The query is no longer outstanding afterwards
    /// (answered once), unless the answer was refused for its content.
    pub fn answer(&mut self, token: u64, data: &[u8]) -> Result<Pending, OutboundRefusal> {
        let Some(p) = self.pending.get(&token).copied() else {
            return Err(if token == 0 || token >= self.next {
                OutboundRefusal::NeverAsked
            } else {
                OutboundRefusal::NoLongerOutstanding
            });
        };
        let max = match p.origin {
            Origin::Udp { .. } => MAX_UDP_ANSWER,
            Origin::Tcp { .. } => MAX_TCP_ANSWER,
        };
        if data.len() > max {
            return Err(OutboundRefusal::TooLarge);
        }
        if data.len() < HEADER_LEN || data[2] & QR == 0 || u16::from_be_bytes([data[0], data[1]]) != p.id {
            return Err(OutboundRefusal::NotTheAnswer);
        }
        self.remove(token);
        Ok(p)
    }

    /// Forget `token`, keeping the per-connection counts.
    fn remove(&mut self, token: u64) -> Option<Pending> {
        let p = self.pending.remove(&token)?;
        if let Origin::Tcp { conn } = p.origin
            && let Some(n) = self.per_conn.get_mut(&conn)
        {
            *n -= 1;
            if *n == 0 {
                self.per_conn.remove(&conn);
            }
        }
        Some(p)
    }

    /// Whether `token` is a TCP client's query still outstanding: the only
    /// kind an answer may come to in parts.
    pub fn tcp_outstanding(&self, token: u64) -> Result<(), OutboundRefusal> {
        match self.pending.get(&token) {
            Some(Pending {
                origin: Origin::Tcp { .. },
                ..
            }) => Ok(()),
            Some(_) => Err(OutboundRefusal::TooLarge),
            None if token == 0 || token >= self.next => Err(OutboundRefusal::NeverAsked),
            None => Err(OutboundRefusal::NoLongerOutstanding),
        }
    }

    /// The engine gives up on `token`: forget it.
    pub fn drop_query(&mut self, token: u64) -> Result<(), OutboundRefusal> {
        match self.remove(token) {
            Some(_) => Ok(()),
            None if token == 0 || token >= self.next => Err(OutboundRefusal::NeverAsked),
            None => Err(OutboundRefusal::NoLongerOutstanding),
        }
    }

    /// Forget what expired by `now_ms`; how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while let Some((&t, p)) = self.pending.first_key_value()
            && p.expires_ms <= now_ms
        {
            self.remove(t);
            n += 1;
        }
        n
    }

    /// TCP connection `conn` closed: forget its queries.
    pub fn forget_conn(&mut self, conn: u64) {
        if self.per_conn.remove(&conn).is_some() {
            self.pending.retain(|_, p| p.origin != Origin::Tcp { conn });
        }
    }

    /// Queries outstanding on TCP connection `conn`: kept by count, as the
    /// role asks for every connection on every round.
    pub fn on_conn(&self, conn: u64) -> usize {
        self.per_conn.get(&conn).copied().unwrap_or(0)
    }

    /// Connections with queries outstanding (what the tests check is
    /// forgotten).
    #[cfg(test)]
    fn conns_waiting(&self) -> usize {
        self.per_conn.len()
    }

    /// The earliest expiry, if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.pending.first_key_value().map(|(_, p)| p.expires_ms)
    }
}

/// A token bucket: `per_second` tokens a second, at most `burst` saved.
pub struct TokenBucket {
    per_second: u64,
    burst: u64,
    /// Tokens, in thousandths (one token a second is one a millisecond of
    /// thousandths).
    milli_tokens: u64,
    at_ms: u64,
}

impl TokenBucket {
    pub fn new(per_second: u32, burst: u32, now_ms: u64) -> TokenBucket {
        TokenBucket {
            per_second: u64::from(per_second),
            burst: u64::from(burst.max(1)),
            milli_tokens: u64::from(burst.max(1)) * 1000,
            at_ms: now_ms,
        }
    }

    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(self.per_second))
            .min(self.burst * 1000);
        if self.milli_tokens < 1000 {
            return false;
        }
        self.milli_tokens -= 1000;
        true
    }

    /// Its tokens at `now_ms`, in thousandths.
    pub fn level(&self, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.milli_tokens
            .saturating_add(elapsed.saturating_mul(self.per_second))
            .min(self.burst * 1000)
    }

    /// Whether the bucket would be full at `now_ms`: a client that stopped
    /// asking, whose entry can go.
    pub fn is_full(&self, now_ms: u64) -> bool {
        self.level(now_ms) >= self.burst * 1000
    }
}

/// An address block of the access list (`allow`): `ADDR/LEN`, or an
/// address alone (the host: /32 or /128).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address block (ADDR/LEN or ADDR)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        // `::ffff:a.b.c.d/LEN` (LEN 96 or more) is the IPv4 block it maps,
        // as clients' mapped addresses count as IPv4 ones.
        Ok(match addr {
            IpAddr::V6(v6) if len >= 96 && v6.to_ipv4_mapped().is_some() => Cidr {
                addr: addr.to_canonical(),
                len: len - 96,
            },
            _ => Cidr { addr, len },
        })
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counting as its IPv4
    /// address) is within the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4 clients match IPv4 blocks only (a mapped block was made one
        // by `parse`): `::/0` means every IPv6 client, not every client.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Whether `ip` is within one of `allow`'s blocks.
pub fn allowed(allow: &[Cidr], ip: IpAddr) -> bool {
    allow.iter().any(|c| c.contains(ip))
}

/// A token bucket per client, in a table of at most `max`
/// entries: `per_second` queries a second, `burst` at once (0: no limit).
/// A client is its IPv4 address, or its IPv6 address cut to a prefix
/// ([`client_key`]; 128 unless [`ClientLimiter::ipv6_prefix`] says).
/// A full table first forgets the clients whose buckets are full again
/// (they stopped asking), then, if that freed less than a quarter, those
/// with the most tokens left, so a flood of spoofed addresses costs a
/// bounded table and amortised constant time, and a limited client is
/// forgotten only after those asking less than it (among empty buckets,
/// as any of them); a client forgotten starts again with a full bucket.
pub struct ClientLimiter {
    per_second: u32,
    loopback_too: bool,
    burst: u32,
    max: usize,
    ipv6_prefix: u8,
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl ClientLimiter {
    pub fn new(per_second: u32, burst: u32, max: usize, loopback_too: bool) -> ClientLimiter {
        ClientLimiter {
            per_second,
            loopback_too,
            burst,
            max: max.max(1),
            ipv6_prefix: 128,
            buckets: HashMap::new(),
        }
    }

    /// Keep one rate per IPv6 prefix of `len` bits (at most 128).
    pub fn ipv6_prefix(mut self, len: u8) -> ClientLimiter {
        self.ipv6_prefix = len.min(128);
        self
    }

    /// Whether a query from `ip` at `now_ms` is within its client's rate.
    pub fn take(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let ip = ip.to_canonical();
        if self.per_second == 0 || (ip.is_loopback() && !self.loopback_too) {
            return true;
        }
        let ip = client_key(ip, self.ipv6_prefix);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max {
            self.buckets.retain(|_, b| !b.is_full(now_ms));
            let room = self.max / 4 + 1;
            if self.max - self.buckets.len().min(self.max) < room {
                // The clients with the most tokens left go first: those
                // asking least. A flooder's empty bucket stays, so new
                // (perhaps spoofed) sources cannot make it forgotten.
                let excess = self.buckets.len() + room - self.max;
                let mut by_level: Vec<(u64, IpAddr)> = self
                    .buckets
                    .iter()
                    .map(|(ip, b)| (b.level(now_ms), *ip))
                    .collect();
                by_level.select_nth_unstable_by(excess - 1, |a, b| b.0.cmp(&a.0));
                for (_, ip) in &by_level[..excess] {
                    self.buckets.remove(ip);
                }
            }
        }
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(per_second, burst, now_ms))
            .take(now_ms)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The client a rate is kept for: an IPv4 address, or an IPv6 one cut to
/// `prefix` bits. Where each client owns a prefix (a host on a network of
/// its own picks any address in its /64, RFC 8981), a bucket per address
/// would let it multiply its rate; where clients share one (containers on
/// a bridge), a bucket per prefix would make one throttle all, hence the
/// setting. Link-local addresses (fe80::/10, one /64 on every link) and
/// loopback stay whole.
pub fn client_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if prefix < 128 && v6.segments()[0] & 0xffc0 != 0xfe80 && !v6.is_loopback() => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        other => other,
    }
}

/// What the role holds at once of TCP answers still arriving in parts;
/// more is refused (`too-large`), so an engine cannot make it hoard.
pub const MAX_PARTS_HELD: usize = 1 << 20;

/// The parts of TCP answers the engine sends ahead of their last part
/// (`dns_engine::Outbound::AnswerPart`), by client token.
#[derive(Default, Debug)]
pub struct AnswerParts {
    held: BTreeMap<u64, (u16, Vec<u8>)>,
    bytes: usize,
}

impl AnswerParts {
    /// Keep a part of the answer to `token`: a TCP query outstanding, the
    /// same announced size as its earlier parts, room left for a last part,
    /// within [`MAX_PARTS_HELD`]. Any refusal drops what was held for it.
    pub fn part(
        &mut self,
        clients: &Clients,
        token: u64,
        total: u16,
        data: &[u8],
    ) -> Result<(), OutboundRefusal> {
        let checked = clients.tcp_outstanding(token).and_then(|()| {
            let (t, held) = self.held.get(&token).map_or((total, 0), |(t, h)| (*t, h.len()));
            if t != total
                || held + data.len() >= usize::from(total)
                || self.bytes + data.len() > MAX_PARTS_HELD
            {
                Err(OutboundRefusal::TooLarge)
            } else {
                Ok(())
            }
        });
        if let Err(why) = checked {
            self.forget(token);
            return Err(why);
        }
        let entry = self.held.entry(token).or_insert_with(|| (total, Vec::new()));
        entry.1.extend_from_slice(data);
        self.bytes += data.len();
        Ok(())
    }

    /// The whole answer to `token` given its last part: the parts held
    /// before it, which must add up to the size they announced.
    pub fn finish(&mut self, token: u64, last: Vec<u8>) -> Result<Vec<u8>, OutboundRefusal> {
        let Some((total, mut whole)) = self.held.remove(&token) else {
            return Ok(last);
        };
        self.bytes -= whole.len();
        whole.extend_from_slice(&last);
        if whole.len() != usize::from(total) {
            return Err(OutboundRefusal::NotTheAnswer);
        }
        Ok(whole)
    }

    fn forget(&mut self, token: u64) {
        if let Some((_, h)) = self.held.remove(&token) {
            self.bytes -= h.len();
        }
    }

    /// Forget the parts of queries no longer outstanding.
    pub fn retain(&mut self, clients: &Clients) {
        let gone: Vec<u64> = self
            .held
            .keys()
            .copied()
            .filter(|t| clients.tcp_outstanding(*t).is_err())
            .collect();
        for t in gone {
            self.forget(t);
        }
    }

    /// Octets held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_blocks_parse_and_match() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.1.2.3".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert_eq!(one.len, 128);
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::9".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "::/129", "x/8", "10.0.0.0/", "10.0.0.0/-1", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Cidr::host("::ffff:10.0.0.1".parse().unwrap()).to_string(),
            "10.0.0.1/32"
        );
        assert!(allowed(&[lo, one], "127.0.0.53".parse().unwrap()));
        assert!(!allowed(&[], "127.0.0.53".parse().unwrap()));
        // An IPv4-mapped block is the IPv4 block it maps; no other IPv6
        // block, however wide, holds IPv4 or mapped clients.
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains("10.9.8.7".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        for v6 in ["::/0", "::/64", "::ffff:0:0/95", "2001:db8::/32"] {
            let b = Cidr::parse(v6).unwrap();
            assert!(
                !b.contains("10.9.8.7".parse().unwrap()),
                "{v6} holds an IPv4 client"
            );
            assert!(
                !b.contains("::ffff:10.9.8.7".parse().unwrap()),
                "{v6} holds a mapped client"
            );
        }
    }

    #[test]
    fn each_client_has_its_own_rate_in_a_bounded_table() {
        let mut l = ClientLimiter::new(10, 5, 8, true);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let taken = (0..20).filter(|_| l.take(a, 0)).count();
        assert_eq!(taken, 5, "the burst, then nothing at the same instant");
        assert!(l.take(b, 0), "another client has its own bucket");
        assert!(!l.take(a, 50), "half a token");
        assert!(l.take(a, 100), "one token after 100 ms at 10/s");
        // Spoofed sources: the table never grows past its bound, and
        // the flooder is never the one forgotten: its bucket stays empty.
        for i in 0..1000u32 {
            l.take(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), 100);
            assert!(l.len() <= 8);
        }
        assert!(!l.take(a, 100), "the flooder was forgotten");
        assert!(ClientLimiter::new(0, 0, 1, true).take(a, 0), "0: no limit");
    }

    #[test]
    fn an_ipv6_client_is_its_address_or_its_prefix_and_a_link_local_one_its_address() {
        let whole = |s: &str| client_key(s.parse().unwrap(), 128).to_string();
        assert_eq!(whole("2001:db8:1:2:aaaa::1"), "2001:db8:1:2:aaaa::1");
        let key = |s: &str| client_key(s.parse().unwrap(), 64).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(
            client_key("2001:db8:1:2:aaaa::1".parse().unwrap(), 48).to_string(),
            "2001:db8:1::"
        );
        assert_eq!(key("fd00::5:6:7:8"), "fd00::");
        assert_eq!(key("fe80::1:2"), "fe80::1:2");
        assert_eq!(key("febf::1:2"), "febf::1:2");
        assert_eq!(key("::1"), "::1");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        // With a /64 prefix, addresses of one /64 share a bucket; the next
        // /64 has its own. By default each address has its own.
        let mut per_address = ClientLimiter::new(10, 5, 8, true);
        let (x, y): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        assert_eq!((0..10).filter(|_| per_address.take(x, 0)).count(), 5);
        assert!(per_address.take(y, 0));
        let mut l = ClientLimiter::new(10, 5, 8, true).ipv6_prefix(64);
        let taken = (0..20u128)
            .filter(|i| {
                let ip = Ipv6Addr::from(0x2001_0db8_0000_0001_0000_0000_0000_0000u128 + i);
                l.take(IpAddr::V6(ip), 0)
            })
            .count();
        assert_eq!(taken, 5, "20 addresses of one /64: one burst");
        assert!(l.take("2001:db8:0:2::1".parse().unwrap(), 0));
        let link: Vec<IpAddr> = (1..=20).map(|i| format!("fe80::{i}").parse().unwrap()).collect();
        assert_eq!(link.iter().filter(|ip| l.take(**ip, 0)).count(), 20);
    }

    #[test]
    fn loopback_clients_are_not_limited_unless_asked() {
        let mut host = ClientLimiter::new(10, 5, 8, false);
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!((0..100).filter(|_| host.take(ip, 0)).count(), 100, "{ip}");
        }
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!((0..100).filter(|_| host.take(other, 0)).count(), 5);
        let mut strict = ClientLimiter::new(10, 5, 8, true);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!((0..100).filter(|_| strict.take(lo, 0)).count(), 5);
    }

    fn query(id: u16) -> Vec<u8> {
        let mut q = vec![0u8; HEADER_LEN];
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    fn response(id: u16) -> Vec<u8> {
        let mut r = query(id);
        r[2] |= QR;
        r
    }

    #[test]
    fn queries_go_only_to_configured_upstreams_and_only_as_queries() {
        let ups: Vec<SocketAddr> = vec![
            "192.0.2.1:53".parse().unwrap(),
            "[2001:db8::1]:5353".parse().unwrap(),
        ];
        assert_eq!(check_query(&ups, 1, &query(1)), Ok(ups[1]));
        assert_eq!(
            check_query(&ups, 2, &query(1)),
            Err(OutboundRefusal::NotAnUpstream)
        );
        assert_eq!(
            check_query(&ups, 0, &response(1)),
            Err(OutboundRefusal::NotAQuery)
        );
        assert_eq!(check_query(&ups, 0, &[0; 11]), Err(OutboundRefusal::NotAQuery));
        assert_eq!(check_query(&ups, 0, &[0; 513]), Err(OutboundRefusal::NotAQuery));
        // A link-local upstream is sent to with its scope: the same
        // address on another interface is another upstream.
        let scoped: Vec<SocketAddr> = vec![
            "[fe80::1%2]:53".parse().unwrap(),
            "[fe80::1%3]:53".parse().unwrap(),
        ];
        assert_ne!(scoped[0], scoped[1]);
        assert_eq!(check_query(&scoped, 1, &query(1)), Ok(scoped[1]));
        match check_query(&scoped, 0, &query(1)) {
            Ok(SocketAddr::V6(v6)) => assert_eq!(v6.scope_id(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_answer_goes_once_to_a_client_that_asked_with_its_id() {
        let mut c = Clients::new(2, 1000);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let udp = Origin::Udp {
            listener: 0,
            client: from,
        };
        assert_eq!(c.admit(udp, &response(7), 0), Err(Admission::NotAQuery));
        assert_eq!(c.admit(udp, &[0; 11], 0), Err(Admission::NotAQuery));
        let t = c.admit(udp, &query(7), 0).unwrap();
        assert_eq!(c.answer(t + 1, &response(7)), Err(OutboundRefusal::NeverAsked));
        assert_eq!(c.answer(0, &response(7)), Err(OutboundRefusal::NeverAsked));
        assert_eq!(c.answer(t, &response(8)), Err(OutboundRefusal::NotTheAnswer));
        assert_eq!(c.answer(t, &query(7)), Err(OutboundRefusal::NotTheAnswer));
        let mut big = response(7);
        big.resize(MAX_UDP_ANSWER + 1, 0);
        assert_eq!(c.answer(t, &big), Err(OutboundRefusal::TooLarge));
        assert_eq!(c.answer(t, &response(7)).unwrap().origin, udp);
        assert_eq!(
            c.answer(t, &response(7)),
            Err(OutboundRefusal::NoLongerOutstanding)
        );
        // TCP answers may be larger.
        let tcp = Origin::Tcp { conn: 3 };
        let t = c.admit(tcp, &query(9), 0).unwrap();
        big[..2].copy_from_slice(&9u16.to_be_bytes());
        assert!(c.answer(t, &big).is_ok());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_expired_and_closed() {
        let mut c = Clients::new(2, 1000);
        let udp = Origin::Udp {
            listener: 0,
            client: "127.0.0.1:4000".parse().unwrap(),
        };
        let a = c.admit(udp, &query(1), 0).unwrap();
        let b = c.admit(Origin::Tcp { conn: 1 }, &query(2), 500).unwrap();
        assert_eq!(c.admit(udp, &query(3), 0), Err(Admission::Full));
        assert_eq!(c.next_expiry(), Some(1000));
        assert_eq!(c.expire(1000), 1);
        assert_eq!(
            c.answer(a, &response(1)),
            Err(OutboundRefusal::NoLongerOutstanding)
        );
        assert_eq!(c.on_conn(1), 1);
        c.forget_conn(1);
        assert!(c.is_empty());
        assert_eq!(
            (c.on_conn(1), c.conns_waiting()),
            (0, 0),
            "nothing kept of a closed connection"
        );
        assert_eq!(c.drop_query(b), Err(OutboundRefusal::NoLongerOutstanding));
        let d = c.admit(udp, &query(4), 0).unwrap();
        assert_eq!(c.drop_query(d), Ok(()));
        assert_eq!(c.drop_query(99), Err(OutboundRefusal::NeverAsked));
        // A connection's count follows answers and expiries.
        let tcp = Origin::Tcp { conn: 2 };
        let e = c.admit(tcp, &query(5), 2000).unwrap();
        c.admit(tcp, &query(6), 2500).unwrap();
        assert_eq!(c.on_conn(2), 2);
        assert!(c.answer(e, &response(5)).is_ok());
        assert_eq!(c.on_conn(2), 1);
        assert_eq!(c.expire(3500), 1);
        assert_eq!((c.on_conn(2), c.len(), c.conns_waiting()), (0, 0, 0));
        // Many connections closed with a query each: nothing left of them.
        for conn in 10..1000 {
            c.admit(Origin::Tcp { conn }, &query(7), 4000).unwrap();
            assert_eq!(c.on_conn(conn), 1);
            c.forget_conn(conn);
        }
        assert_eq!((c.len(), c.conns_waiting()), (0, 0));
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(10, 5, 0);
        assert_eq!((0..100).filter(|_| b.take(0)).count(), 5);
        assert!(!b.take(99));
        assert!(b.take(100));
        assert!(!b.take(100));
        assert_eq!((0..100).filter(|_| b.take(10_000)).count(), 5);
    }

    #[test]
    fn answers_in_parts_only_for_tcp_queries_add_up_and_are_bounded() {
        let mut c = Clients::new(16, 10_000);
        let udp = Origin::Udp {
            listener: 0,
            client: "127.0.0.1:5000".parse().unwrap(),
        };
        let tcp = Origin::Tcp { conn: 1 };
        let tu = c.admit(udp, &query(1), 0).unwrap();
        let tt = c.admit(tcp, &query(2), 0).unwrap();
        let mut p = AnswerParts::default();
        assert_eq!(p.part(&c, tu, 9000, &[0; 4096]), Err(OutboundRefusal::TooLarge));
        assert_eq!(p.part(&c, 99, 9000, &[0; 4096]), Err(OutboundRefusal::NeverAsked));
        let mut whole = response(2);
        whole.resize(9000, 7);
        p.part(&c, tt, 9000, &whole[..4096]).unwrap();
        p.part(&c, tt, 9000, &whole[4096..8192]).unwrap();
        assert_eq!(p.bytes(), 8192);
        let done = p.finish(tt, whole[8192..].to_vec()).unwrap();
        assert_eq!(done, whole);
        assert_eq!(p.bytes(), 0);
        assert_eq!(c.answer(tt, &done).unwrap().origin, tcp);
        // Parts that do not add up, another size announced, or no room
        // left for a last part: refused, nothing held.
        let t = c.admit(tcp, &query(3), 0).unwrap();
        p.part(&c, t, 9000, &[0; 4096]).unwrap();
        assert_eq!(p.finish(t, vec![0; 10]), Err(OutboundRefusal::NotTheAnswer));
        p.part(&c, t, 9000, &[0; 4096]).unwrap();
        assert_eq!(p.part(&c, t, 8000, &[0; 10]), Err(OutboundRefusal::TooLarge));
        assert_eq!(p.bytes(), 0);
        assert_eq!(p.part(&c, t, 4096, &[0; 4096]), Err(OutboundRefusal::TooLarge));
        // Held parts of a query gone are forgotten.
        p.part(&c, t, 9000, &[0; 4096]).unwrap();
        c.drop_query(t).unwrap();
        p.retain(&c);
        assert_eq!(p.bytes(), 0);
    }
}
