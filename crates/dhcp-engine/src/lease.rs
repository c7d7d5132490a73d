//! From a DHCPACK to a [`Lease`]: decoding meaning, sanitizing, refusing.
//!
//! INTERFACE CONTRACT (used by `client`):
//! [`lease_from_reply`] turns an OFFER/ACK into a lease that passes
//! [`Lease::check`], or says why it cannot.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::{
    INFINITE_LEASE, Instant, Lease, Limits, Refusal, Route, is_valid_domain_name, prefix_mask,
    server_refusal, unicast_refusal,
};

use crate::wire::dhcp::Message;

/// Build the lease a reply offers. `src_ip` is the IPv4 source of the reply
/// (server identifier fallback when option 54 is missing). `acquired_at` is
/// when our REQUEST was sent.
///
/// Sanitizing (field notes and RFCs, each cited at its line):
/// - prefix from option 1 (a non-contiguous mask is refused), else classful;
/// - routes from option 121 when present (option 3 ignored, RFC 3442), with
///   on-link host routes for gateways moved first and a route whose gateway
///   stays off-link dropped (a malformed 121 refuses the lease); else a
///   default route via the first router of option 3 that is on-link (others
///   ignored);
/// - DNS / NTP: unusable entries (0.0.0.0, loopback, ...) dropped, the rest
///   truncated to `limits`; domain/search/hostname kept only if valid names;
/// - MTU below 576 ignored, above 65535 impossible; T1/T2 defaulted to
///   0.5 / 0.875 of the lease and forced into T1 <= T2 <= lease; an infinite
///   lease (0xffffffff) stays infinite without overflow; a zero or missing
///   lease time is refused;
/// - routes the policy refuses (shorter than `min_route_prefix_len`, into a
///   reserved range...) dropped one by one, the lease kept; with
///   `ignore_classless_routes` option 121 is not read at all;
/// - finally [`Lease::check`] must pass.
pub fn lease_from_reply(
    msg: &Message,
    src_ip: Ipv4Addr,
    acquired_at: Instant,
    limits: &Limits,
) -> Result<Lease, Refusal> {
    lease_and_dropped_routes(msg, src_ip, acquired_at, limits).map(|(lease, _)| lease)
}

/// [`lease_from_reply`], also saying how many routes the policy dropped.
pub fn lease_and_dropped_routes(
    msg: &Message,
    src_ip: Ipv4Addr,
    acquired_at: Instant,
    limits: &Limits,
) -> Result<(Lease, usize), Refusal> {
    let o = &msg.options;
    let address = msg.yiaddr;
    // Checked first: the classful default below has no answer for these.
    if let Some(r) = unicast_refusal(address) {
        return Err(r);
    }
    let prefix_len = match o.subnet_mask {
        Some(mask) => mask_prefix(mask).ok_or(Refusal::BadPrefixLength)?,
        None => classful_prefix(address).ok_or(Refusal::BadPrefixLength)?,
    };
    // RFC 2131 4.3.1 makes option 54 mandatory, yet servers omit it
    // (field notes 8); the reply's source is the server we talked to.
    let server_id = o.server_id.unwrap_or(src_ip);
    let (lease_secs, renew_secs, rebind_secs) = lease_times(o.lease_time, o.renewal_time, o.rebinding_time)?;

    let classless = o
        .classless_routes
        .as_ref()
        .filter(|_| !limits.ignore_classless_routes);
    let routes = match classless {
        // A 121 that does not decode (RFC 3442 section 3 encoding) is not
        // half-applied: the lease is refused.
        Some(Err(())) => return Err(Refusal::BadRoute),
        // RFC 3442: when 121 is present, option 3 is ignored.
        Some(Ok(given)) => order_routes(given),
        None => default_route(&o.routers, address, prefix_len)
            .into_iter()
            .collect(),
    };

    // RFC 2132 9.4 allows 68; RFC 791 guarantees 576 to every host, and a
    // smaller MTU than that breaks DHCP itself: ignore rather than apply.
    let mtu = o.mtu.filter(|m| *m >= 576);

    let mut lease = Lease {
        address,
        prefix_len,
        server_id,
        routes,
        dns_servers: usable(&o.dns_servers, limits.max_dns_servers),
        ntp_servers: usable(&o.ntp_servers, limits.max_ntp_servers),
        // Names end up in resolv.conf and status files: anything but a
        // plain DNS name (quotes, newlines, shell metacharacters) is dropped
        // here (CVE-2018-1111 class), and refused again by `check`.
        domain_name: o.domain_name.clone().filter(|n| is_valid_domain_name(n)),
        search: match &o.domain_search {
            Some(Ok(names)) => names
                .iter()
                .filter(|n| is_valid_domain_name(n))
                .take(usize::from(limits.max_search_domains))
                .cloned()
                .collect::<Vec<String>>(),
            // A malformed 119 (compression loop, ...) gives no search list.
            _ => Vec::new(),
        },
        hostname: o.hostname.clone().filter(|n| is_valid_domain_name(n)),
        mtu,
        lease_secs,
        renew_secs,
        rebind_secs,
        acquired_at,
    };
    // Losing one route costs less than losing the lease; the actuator still
    // refuses any lease that carries a refused route.
    let dropped = lease.retain_allowed_routes(limits);
    lease.check(limits)?;
    Ok((lease, dropped))
}

/// Lowest `min_lease_secs` honoured, whatever the config says: T1 then stays
/// at least 2 s, so no lease can make the client renew in a loop.
pub const MIN_LEASE_FLOOR_SECS: u32 = 4;

/// Raise a lease shorter than `min_lease_secs` to that length, and T1 / T2
/// to at least half and 7/8 of it (the RFC 2131 4.4.5 defaults of a minimum
/// lease). A 1 s lease gives T1 = T2 = 0, a renewal right after every ACK:
/// dhcpcd treats anything under 20 s as 20 s for the same reason. The
/// order T1 <= T2 <= lease is kept: each bound is raised by a floor that
/// respects it.
pub fn floor_lease_times(lease: &mut Lease, min_lease_secs: u32) {
    let min = min_lease_secs.max(MIN_LEASE_FLOOR_SECS);
    let min_t1 = min / 2;
    // u64: 7/8 of a u32 cannot overflow; the result is below `min`.
    let min_t2 = (u64::from(min) * 7 / 8) as u32;
    lease.lease_secs = lease.lease_secs.max(min);
    lease.renew_secs = lease.renew_secs.max(min_t1);
    lease.rebind_secs = lease.rebind_secs.max(min_t2);
}

/// Prefix length of a contiguous netmask (ones then zeros), else `None`.
fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    // Contiguous iff nothing is set after the leading ones.
    if m.checked_shl(ones).unwrap_or(0) != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

/// RFC 791 class A, B and C default masks (RFC 2131 does not say what a
/// client should use without option 1; every client falls back to these).
fn classful_prefix(address: Ipv4Addr) -> Option<u8> {
    match address.octets()[0] {
        0..=127 => Some(8),
        128..=191 => Some(16),
        192..=223 => Some(24),
        _ => None,
    }
}

/// Lease, T1 and T2 (RFC 2131 4.4.5: T1 defaults to 0.5 and T2 to 0.875 of
/// the lease). Given values are used only if T1 < T2 < lease; otherwise both
/// are recomputed, since a server that sent one wrong value cannot be trusted
/// with the other. An infinite lease keeps infinite timers unless finite ones
/// were given in order (RFC 2131 3.3).
fn lease_times(lease: Option<u32>, t1: Option<u32>, t2: Option<u32>) -> Result<(u32, u32, u32), Refusal> {
    // Option 51 is a MUST in OFFER and ACK (RFC 2131 table 3).
    let lease = lease.ok_or(Refusal::BadLeaseTimes)?;
    if lease == 0 {
        return Err(Refusal::BadLeaseTimes);
    }
    if lease == INFINITE_LEASE {
        let t1 = t1.unwrap_or(INFINITE_LEASE);
        let t2 = t2.unwrap_or(INFINITE_LEASE);
        let ordered = t1 < t2 || (t1 == INFINITE_LEASE && t2 == INFINITE_LEASE);
        return Ok(if ordered {
            (lease, t1, t2)
        } else {
            (lease, INFINITE_LEASE, INFINITE_LEASE)
        });
    }
    // u64 so that 7/8 of a 32-bit lease cannot overflow; results fit in u32
    // because they are below `lease`.
    let default_t1 = (u64::from(lease) / 2) as u32;
    let default_t2 = (u64::from(lease) * 7 / 8) as u32;
    let t1 = t1.unwrap_or(default_t1);
    let t2 = t2.unwrap_or(default_t2);
    // T1 = 0 would renew right after every ACK, a busy loop against the
    // server (mozim#99 shape): treat it like any other out-of-order value.
    Ok(if 0 < t1 && t1 < t2 && t2 < lease {
        (lease, t1, t2)
    } else {
        (lease, default_t1, default_t2)
    })
}

/// Is `gw` inside the leased prefix? Mirrors `Lease::check`: a /32 has no
/// neighbours, so nothing is on-link through it.
fn in_prefix(gw: Ipv4Addr, address: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = prefix_mask(prefix_len);
    prefix_len < 32 && u32::from(gw) & mask == u32::from(address) & mask
}

/// Option 121 routes as given, but with every on-link route (gateway
/// 0.0.0.0) first: the kernel refuses a route via a gateway it cannot reach
/// yet ("Network unreachable", field notes 1), and Google Cloud sends the
/// host route to its gateway after (or before) the default route via it.
/// A route whose gateway stays off-link is then dropped, on its own, by
/// `Lease::retain_allowed_routes`.
fn order_routes(given: &[Route]) -> Vec<Route> {
    let (on_link, via): (Vec<Route>, Vec<Route>) = given.iter().partition(|r| r.gateway.is_unspecified());
    on_link.into_iter().chain(via).collect()
}

/// Without option 121: a default route via the first router of option 3
/// that is a usable unicast address inside the leased prefix (RFC 2132 3.5
/// lists routers in order of preference). A router outside the prefix is
/// ignored rather than made on-link by a guess, and so is the network or
/// broadcast address of the prefix (no host can be either).
fn default_route(routers: &[Ipv4Addr], address: Ipv4Addr, prefix_len: u8) -> Option<Route> {
    let host_bits = !prefix_mask(prefix_len);
    // /31 (RFC 3021) has no network or broadcast address.
    let special = |r: Ipv4Addr| {
        let host = u32::from(r) & host_bits;
        prefix_len <= 30 && (host == 0 || host == host_bits)
    };
    routers
        .iter()
        .find(|&&r| {
            unicast_refusal(r).is_none() && r != address && !special(r) && in_prefix(r, address, prefix_len)
        })
        .map(|&gateway| Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway,
        })
}

/// Servers that can be used (0.0.0.0 in option 6 is seen in the wild, field
/// notes 14; link-local is fine: cloud metadata servers serve DNS and NTP),
/// at most `max` of them, in the server's order.
fn usable(servers: &[Ipv4Addr], max: u8) -> Vec<Ipv4Addr> {
    servers
        .iter()
        .copied()
        .filter(|a| server_refusal(*a).is_none())
        .take(usize::from(max))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn mask_prefix_accepts_only_contiguous_masks() {
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(mask_prefix(Ipv4Addr::new(128, 0, 0, 0)), Some(1));
        assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 255)), None);
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 253)), None);
    }

    #[test]
    fn classful_defaults() {
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 0, 0, 1)), Some(8));
        assert_eq!(classful_prefix(Ipv4Addr::new(127, 255, 0, 1)), Some(8));
        assert_eq!(classful_prefix(Ipv4Addr::new(128, 0, 0, 1)), Some(16));
        assert_eq!(classful_prefix(Ipv4Addr::new(191, 255, 0, 1)), Some(16));
        assert_eq!(classful_prefix(Ipv4Addr::new(192, 0, 2, 1)), Some(24));
        assert_eq!(classful_prefix(Ipv4Addr::new(223, 0, 2, 1)), Some(24));
        assert_eq!(classful_prefix(Ipv4Addr::new(224, 0, 0, 1)), None);
    }

    #[test]
    fn lease_times_keep_order_and_never_overflow() {
        assert_eq!(
            lease_times(Some(0), Some(1), Some(2)),
            Err(Refusal::BadLeaseTimes)
        );
        assert_eq!(lease_times(None, Some(1), Some(2)), Err(Refusal::BadLeaseTimes));
        assert_eq!(lease_times(Some(8), None, None), Ok((8, 4, 7)));
        assert_eq!(lease_times(Some(8), Some(4), Some(4)), Ok((8, 4, 7)));
        assert_eq!(lease_times(Some(8), Some(1), Some(7)), Ok((8, 1, 7)));
        assert_eq!(lease_times(Some(8), Some(0), Some(7)), Ok((8, 4, 7)));
        for lease in [1, 2, 3, 1000, u32::MAX - 1] {
            for t1 in [None, Some(0), Some(lease / 3), Some(lease), Some(u32::MAX)] {
                for t2 in [None, Some(0), Some(lease / 2), Some(lease), Some(u32::MAX)] {
                    let (l, a, b) = lease_times(Some(lease), t1, t2).unwrap();
                    assert!(a <= b && b <= l, "{lease} {t1:?} {t2:?}");
                }
            }
        }
    }

    #[test]
    fn short_leases_and_timers_are_raised_to_the_floor() {
        let mut l = Lease {
            address: Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            routes: Vec::new(),
            dns_servers: Vec::new(),
            ntp_servers: Vec::new(),
            domain_name: None,
            search: Vec::new(),
            hostname: None,
            mtu: None,
            lease_secs: 1,
            renew_secs: 0,
            rebind_secs: 0,
            acquired_at: Instant(0),
        };
        let mut one = l.clone();
        floor_lease_times(&mut one, 20);
        assert_eq!((one.lease_secs, one.renew_secs, one.rebind_secs), (20, 10, 17));
        // Long leases keep their length; only a too-short T1 / T2 moves.
        l.lease_secs = 3600;
        l.renew_secs = 1;
        l.rebind_secs = 3000;
        floor_lease_times(&mut l, 20);
        assert_eq!((l.lease_secs, l.renew_secs, l.rebind_secs), (3600, 10, 3000));
        // A floor under the hard minimum is raised to it.
        let mut z = one.clone();
        z.lease_secs = 1;
        z.renew_secs = 0;
        z.rebind_secs = 0;
        floor_lease_times(&mut z, 0);
        assert_eq!((z.lease_secs, z.renew_secs, z.rebind_secs), (4, 2, 3));
        for (lease, t1, t2) in [(1, 0, 0), (5, 2, 4), (30, 3, 20), (INFINITE_LEASE, 1, 2)] {
            for floor in [0, 4, 20, 3600] {
                let mut x = one.clone();
                (x.lease_secs, x.renew_secs, x.rebind_secs) = (lease, t1, t2);
                floor_lease_times(&mut x, floor);
                assert!(x.renew_secs <= x.rebind_secs && x.rebind_secs <= x.lease_secs);
                assert!(x.renew_secs >= floor.max(MIN_LEASE_FLOOR_SECS) / 2);
            }
        }
    }

    #[test]
    fn on_link_routes_come_first_and_off_link_gateways_are_dropped() {
        let r = |d: [u8; 4], p: u8, g: [u8; 4]| Route {
            destination: Ipv4Addr::from(d),
            prefix_len: p,
            gateway: Ipv4Addr::from(g),
        };
        let me = Ipv4Addr::new(10, 128, 0, 5);
        let given = [
            r([0, 0, 0, 0], 0, [10, 128, 0, 1]),
            r([10, 128, 0, 1], 32, [0, 0, 0, 0]),
            r([10, 200, 0, 0], 16, [10, 129, 0, 1]),
        ];
        assert_eq!(order_routes(&given), [given[1], given[0], given[2]]);
        let lease = |prefix_len| {
            let mut l = Lease {
                address: me,
                prefix_len,
                server_id: Ipv4Addr::new(10, 128, 0, 1),
                routes: order_routes(&given),
                dns_servers: Vec::new(),
                ntp_servers: Vec::new(),
                domain_name: None,
                search: Vec::new(),
                hostname: None,
                mtu: None,
                lease_secs: 600,
                renew_secs: 300,
                rebind_secs: 500,
                acquired_at: Instant(0),
            };
            let dropped = l.retain_allowed_routes(&Limits::default());
            (l.routes, dropped)
        };
        assert_eq!(lease(32), (vec![given[1], given[0]], 1));
        // In a /15 the third gateway is on-link by the prefix.
        assert_eq!(lease(15), (vec![given[1], given[0], given[2]], 0));
    }
}
