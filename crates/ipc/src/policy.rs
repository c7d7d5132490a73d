//! The lease policy: what a legitimate DHCP server could have told us.
//!
//! One implementation, run twice: by the engine before it asks to apply a
//! lease, and by the actuator on every request, because the actuator must
//! assume the engine is compromised (DESIGN.md section 1, "intents, not
//! syscalls").

use core::net::Ipv4Addr;
use serde::{Deserialize, Serialize};

use crate::{INFINITE_LEASE, Lease, Route, prefix_mask};

/// Bounds on what a lease may carry. Fixed at start, identical on both sides.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
// Also the `[limits]` table of configuration files (see AcdConfig).
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_routes: u16,
    pub max_dns_servers: u8,
    pub max_ntp_servers: u8,
    pub max_search_domains: u8,
    /// Ignore option 121 (RFC 3442 classless routes): use only option 3's
    /// default route. Closes TunnelVision (CVE-2024-3661) entirely, at the
    /// price of networks that need 121 (Google Cloud's /32 leases).
    pub ignore_classless_routes: bool,
    /// Shortest prefix a route other than the default route may have. A
    /// route shorter than a VPN's 0/1 + 128/1 but longer than 0/0 takes
    /// traffic from the tunnel (CVE-2024-3661); no LAN needs one under /8.
    pub min_route_prefix_len: u8,
    /// Shortest subnet mask (option 1) taken. The kernel adds a prefix route
    /// for the subnet, so a /2 mask is a TunnelVision route too; the largest
    /// classful network is a /8.
    pub min_subnet_prefix_len: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_routes: 64,
            max_dns_servers: 8,
            max_ntp_servers: 8,
            max_search_domains: 16,
            ignore_classless_routes: false,
            min_route_prefix_len: 8,
            min_subnet_prefix_len: 8,
        }
    }
}

/// Why a lease (or an intent carrying one) is refused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    AddressUnspecified,
    AddressBroadcast,
    AddressMulticast,
    AddressLoopback,
    /// 240.0.0.0/4 (RFC 1112 class E).
    AddressReserved,
    /// 169.254.0.0/16 is for RFC 3927, never handed out by DHCP.
    AddressLinkLocal,
    /// The network or broadcast address of the lease's own prefix.
    AddressIsNetworkOrBroadcast,
    BadPrefixLength,
    BadServerId,
    TooManyRoutes,
    /// Prefix length over 32, bits set past the prefix, a gateway that is
    /// not a unicast address, or a destination inside 0.0.0.0/8, 127.0.0.0/8,
    /// 224.0.0.0/4 (multicast) or 240.0.0.0/4 (class E and 255.255.255.255).
    BadRoute,
    /// A gateway neither inside the leased prefix nor made on-link by an
    /// earlier on-link route.
    GatewayNotOnLink,
    TooManyDnsServers,
    BadDnsServer,
    TooManyNtpServers,
    BadNtpServer,
    BadDomainName,
    TooManySearchDomains,
    BadHostname,
    /// Outside 576..=65535 (RFC 2132 9.4 minimum 68, RFC 791 576 for hosts).
    BadMtu,
    /// MTU above what the device supports (actuator only).
    MtuAboveDevice,
    /// Zero lease, or not T1 <= T2 <= lease.
    BadLeaseTimes,
    /// An intent for another interface or lease than the one in force.
    NotOurLease,
    /// An intent the actuator's policy does not allow at all.
    NotAllowed,
    /// A route other than the default route shorter than
    /// `min_route_prefix_len` (TunnelVision, CVE-2024-3661).
    RouteTooShort,
    /// A subnet mask shorter than `min_subnet_prefix_len`.
    SubnetTooLarge,
    /// A route that option 3 could not have given, with
    /// `ignore_classless_routes` set.
    ClasslessRouteIgnored,
    /// Our address is the server identifier: that host has it already.
    AddressIsServer,
    /// Our address is a route's gateway: that host has it already.
    AddressIsGateway,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::AddressUnspecified => "address 0.0.0.0",
            Refusal::AddressBroadcast => "address is the limited broadcast",
            Refusal::AddressMulticast => "address is multicast",
            Refusal::AddressLoopback => "address is loopback",
            Refusal::AddressReserved => "address is class E",
            Refusal::AddressLinkLocal => "address is link-local",
            Refusal::AddressIsNetworkOrBroadcast => "address is the network or broadcast of its prefix",
            Refusal::BadPrefixLength => "bad prefix length",
            Refusal::BadServerId => "bad server identifier",
            Refusal::TooManyRoutes => "too many routes",
            Refusal::BadRoute => "bad route",
            Refusal::GatewayNotOnLink => "gateway not on-link",
            Refusal::TooManyDnsServers => "too many DNS servers",
            Refusal::BadDnsServer => "bad DNS server address",
            Refusal::TooManyNtpServers => "too many NTP servers",
            Refusal::BadNtpServer => "bad NTP server address",
            Refusal::BadDomainName => "bad domain name",
            Refusal::TooManySearchDomains => "too many search domains",
            Refusal::BadHostname => "bad hostname",
            Refusal::BadMtu => "MTU out of range",
            Refusal::MtuAboveDevice => "MTU above the device maximum",
            Refusal::BadLeaseTimes => "bad lease times",
            Refusal::NotOurLease => "not the lease in force",
            Refusal::NotAllowed => "not allowed",
            Refusal::RouteTooShort => "route prefix shorter than the minimum",
            Refusal::SubnetTooLarge => "subnet mask shorter than the minimum",
            Refusal::ClasslessRouteIgnored => "classless routes (option 121) are ignored",
            Refusal::AddressIsServer => "address is the server's",
            Refusal::AddressIsGateway => "address is a gateway's",
        }
    }
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `addr` cannot be a host's unicast address, if it cannot.
pub fn unicast_refusal(addr: Ipv4Addr) -> Option<Refusal> {
    let o = addr.octets();
    if addr.is_unspecified() || o[0] == 0 {
        Some(Refusal::AddressUnspecified)
    } else if addr.is_broadcast() {
        Some(Refusal::AddressBroadcast)
    } else if addr.is_multicast() {
        Some(Refusal::AddressMulticast)
    } else if addr.is_loopback() {
        Some(Refusal::AddressLoopback)
    } else if o[0] >= 240 {
        Some(Refusal::AddressReserved)
    } else if addr.is_link_local() {
        Some(Refusal::AddressLinkLocal)
    } else {
        None
    }
}

/// Why `addr` cannot be a DNS or NTP server we use, if it cannot. Like
/// [`unicast_refusal`] but link-local is allowed: clouds serve DNS and NTP
/// from 169.254.169.254 (the metadata server of Google Cloud, and others).
pub fn server_refusal(addr: Ipv4Addr) -> Option<Refusal> {
    match unicast_refusal(addr) {
        Some(Refusal::AddressLinkLocal) => None,
        other => other,
    }
}

/// A DNS name as it may appear in resolv.conf: LDH labels of 1..=63 bytes
/// (underscore allowed, as real zones use it), at most 253 bytes, no leading
/// or trailing hyphen. Anything else (spaces, quotes, newlines, shell
/// metacharacters) is refused, so no option value can inject a directive.
pub fn is_valid_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
    })
}

/// Is `gateway` reachable on-link: inside the leased prefix, or covered by an
/// on-link route (gateway 0.0.0.0) among `earlier`. An on-link default route
/// does not count: it would make every address on-link and empty the check
/// (it is still installed where the policy allows it: proxy-ARP networks).
fn on_link(lease: &Lease, gateway: Ipv4Addr, earlier: &[Route]) -> bool {
    let mask = prefix_mask(lease.prefix_len);
    if lease.prefix_len < 32 && u32::from(gateway) & mask == u32::from(lease.address) & mask {
        return true;
    }
    earlier.iter().any(|r| {
        r.gateway.is_unspecified()
            && r.prefix_len > 0
            && u32::from(gateway) & prefix_mask(r.prefix_len) == u32::from(r.destination)
    })
}

/// Ranges no route may lie inside: "this network" (RFC 1122 3.2.1.3),
/// loopback, multicast (RFC 5771) and class E with the limited broadcast
/// (RFC 1112 4). A route that only covers one of them (0.0.0.0/1, 128/1) is
/// an ordinary route.
const NO_ROUTE_INSIDE: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

fn inside(route: &Route, net: Ipv4Addr, net_len: u8) -> bool {
    route.prefix_len >= net_len && u32::from(route.destination) & prefix_mask(net_len) == u32::from(net)
}

impl Lease {
    /// Why `route`, installed after the routes `earlier`, is not allowed
    /// with this lease, if it is not. Our address as the gateway is a fault
    /// of the whole lease (see [`Lease::check`]), not of the route.
    pub fn route_refusal(&self, route: &Route, earlier: &[Route], limits: &Limits) -> Option<Refusal> {
        if route.prefix_len > 32
            || u32::from(route.destination) & !prefix_mask(route.prefix_len) != 0
            || NO_ROUTE_INSIDE.iter().any(|&(net, len)| inside(route, net, len))
        {
            return Some(Refusal::BadRoute);
        }
        // The default route is what every DHCP network gives; a VPN's own
        // 0/1 + 128/1 are more specific than it, so it takes nothing away.
        if route.prefix_len != 0 && route.prefix_len < limits.min_route_prefix_len {
            return Some(Refusal::RouteTooShort);
        }
        if limits.ignore_classless_routes {
            // Without option 121 the only route is option 3's default route
            // via a router inside the prefix.
            let mask = prefix_mask(self.prefix_len);
            let in_prefix =
                self.prefix_len < 32 && u32::from(route.gateway) & mask == u32::from(self.address) & mask;
            if !earlier.is_empty() || route.prefix_len != 0 || route.gateway.is_unspecified() || !in_prefix {
                return Some(Refusal::ClasslessRouteIgnored);
            }
        }
        if !route.gateway.is_unspecified() {
            if unicast_refusal(route.gateway).is_some() {
                return Some(Refusal::BadRoute);
            }
            if !on_link(self, route.gateway, earlier) {
                return Some(Refusal::GatewayNotOnLink);
            }
        }
        None
    }

    /// Drop the routes [`Lease::route_refusal`] refuses, each judged after
    /// the routes kept before it, keeping the rest in order; returns how many
    /// were dropped. A server that sends one route we refuse (a TunnelVision
    /// route, a route to a multicast range) then costs that route, not the
    /// lease.
    pub fn retain_allowed_routes(&mut self, limits: &Limits) -> usize {
        let given = core::mem::take(&mut self.routes);
        let mut dropped = 0;
        for route in given {
            if self.route_refusal(&route, &self.routes, limits).is_none() {
                self.routes.push(route);
            } else {
                dropped += 1;
            }
        }
        dropped
    }

    /// Check the whole lease against the policy. `Ok` means every field is
    /// something a legitimate server could have sent and the host can apply.
    pub fn check(&self, limits: &Limits) -> Result<(), Refusal> {
        if let Some(r) = unicast_refusal(self.address) {
            return Err(r);
        }
        if self.prefix_len == 0 || self.prefix_len > 32 {
            return Err(Refusal::BadPrefixLength);
        }
        // The kernel adds a route for the prefix: a /2 mask would be a
        // TunnelVision route of its own.
        if self.prefix_len < limits.min_subnet_prefix_len {
            return Err(Refusal::SubnetTooLarge);
        }
        // /31 (RFC 3021) and /32 have no network or broadcast address.
        if self.prefix_len <= 30 && (self.address == self.network() || self.address == self.broadcast()) {
            return Err(Refusal::AddressIsNetworkOrBroadcast);
        }
        // The server identifier is where renewals are unicast to: it must be
        // a host a server could be. Link-local is one (Google Cloud's DHCP
        // server is 169.254.169.254); loopback, 0/8, class E and group
        // addresses are not.
        if server_refusal(self.server_id).is_some() {
            return Err(Refusal::BadServerId);
        }
        // An address that a peer we talk to already holds is in use: taking
        // it would steal that host's traffic (or our own renewals).
        if self.server_id == self.address {
            return Err(Refusal::AddressIsServer);
        }
        if self.routes.len() > usize::from(limits.max_routes) {
            return Err(Refusal::TooManyRoutes);
        }
        if self.routes.iter().any(|r| r.gateway == self.address) {
            return Err(Refusal::AddressIsGateway);
        }
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(r) = self.route_refusal(route, &self.routes[..i], limits) {
                return Err(r);
            }
        }
        if self.dns_servers.len() > usize::from(limits.max_dns_servers) {
            return Err(Refusal::TooManyDnsServers);
        }
        if self.dns_servers.iter().any(|a| server_refusal(*a).is_some()) {
            return Err(Refusal::BadDnsServer);
        }
        if self.ntp_servers.len() > usize::from(limits.max_ntp_servers) {
            return Err(Refusal::TooManyNtpServers);
        }
        if self.ntp_servers.iter().any(|a| server_refusal(*a).is_some()) {
            return Err(Refusal::BadNtpServer);
        }
        if self.search.len() > usize::from(limits.max_search_domains) {
            return Err(Refusal::TooManySearchDomains);
        }
        let names_ok = self
            .domain_name
            .iter()
            .chain(self.search.iter())
            .all(|n| is_valid_domain_name(n));
        if !names_ok {
            return Err(Refusal::BadDomainName);
        }
        if let Some(h) = &self.hostname
            && !is_valid_domain_name(h)
        {
            return Err(Refusal::BadHostname);
        }
        if let Some(mtu) = self.mtu
            && mtu < 576
        {
            return Err(Refusal::BadMtu);
        }
        if self.lease_secs == 0 || self.renew_secs > self.rebind_secs || self.rebind_secs > self.lease_secs {
            return Err(Refusal::BadLeaseTimes);
        }
        // An infinite lease keeps T1/T2 finite or infinite; both are fine.
        let _ = INFINITE_LEASE;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{Instant, Route};
    use alloc::string::ToString;
    use alloc::vec;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn lease() -> Lease {
        Lease {
            address: ip("192.168.1.10"),
            prefix_len: 24,
            server_id: ip("192.168.1.1"),
            routes: vec![Route {
                destination: ip("0.0.0.0"),
                prefix_len: 0,
                gateway: ip("192.168.1.1"),
            }],
            dns_servers: vec![ip("192.168.1.1")],
            ntp_servers: vec![],
            domain_name: Some("example.org".to_string()),
            search: vec!["example.org".to_string()],
            hostname: None,
            mtu: Some(1500),
            lease_secs: 3600,
            renew_secs: 1800,
            rebind_secs: 3150,
            acquired_at: Instant(0),
        }
    }

    #[test]
    fn a_plain_lease_passes() {
        assert_eq!(lease().check(&Limits::default()), Ok(()));
    }

    #[test]
    fn bad_addresses_are_refused() {
        let cases = [
            ("0.0.0.0", Refusal::AddressUnspecified),
            ("255.255.255.255", Refusal::AddressBroadcast),
            ("224.0.0.1", Refusal::AddressMulticast),
            ("127.0.0.1", Refusal::AddressLoopback),
            ("240.0.0.1", Refusal::AddressReserved),
            ("169.254.3.4", Refusal::AddressLinkLocal),
            ("192.168.1.0", Refusal::AddressIsNetworkOrBroadcast),
            ("192.168.1.255", Refusal::AddressIsNetworkOrBroadcast),
        ];
        for (a, want) in cases {
            let mut l = lease();
            l.address = ip(a);
            assert_eq!(l.check(&Limits::default()), Err(want), "{a}");
        }
    }

    #[test]
    fn cloud_slash_32_with_host_route_first_passes_and_reversed_fails() {
        let mut l = lease();
        l.address = ip("10.128.0.5");
        l.prefix_len = 32;
        l.routes = vec![
            Route {
                destination: ip("10.128.0.1"),
                prefix_len: 32,
                gateway: ip("0.0.0.0"),
            },
            Route {
                destination: ip("0.0.0.0"),
                prefix_len: 0,
                gateway: ip("10.128.0.1"),
            },
        ];
        assert_eq!(l.check(&Limits::default()), Ok(()));
        l.routes.reverse();
        assert_eq!(l.check(&Limits::default()), Err(Refusal::GatewayNotOnLink));
    }

    #[test]
    fn off_link_gateway_and_bad_routes_are_refused() {
        let mut l = lease();
        l.routes[0].gateway = ip("10.0.0.1");
        assert_eq!(l.check(&Limits::default()), Err(Refusal::GatewayNotOnLink));
        let mut l = lease();
        l.routes.push(Route {
            destination: ip("10.1.2.3"),
            prefix_len: 8,
            gateway: ip("192.168.1.1"),
        });
        assert_eq!(l.check(&Limits::default()), Err(Refusal::BadRoute));
        let mut l = lease();
        l.routes.push(Route {
            destination: ip("127.0.0.0"),
            prefix_len: 8,
            gateway: ip("192.168.1.1"),
        });
        assert_eq!(l.check(&Limits::default()), Err(Refusal::BadRoute));
        let mut l = lease();
        l.routes = vec![l.routes[0]; 1000];
        assert_eq!(l.check(&Limits::default()), Err(Refusal::TooManyRoutes));
    }

    #[test]
    fn server_id_must_be_a_host_a_server_could_be() {
        let mut l = lease();
        for ok in ["192.168.1.1", "169.254.169.254", "10.0.0.1"] {
            l.server_id = ip(ok);
            assert_eq!(l.check(&Limits::default()), Ok(()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            l.server_id = ip(bad);
            assert_eq!(l.check(&Limits::default()), Err(Refusal::BadServerId), "{bad}");
        }
    }

    #[test]
    fn link_local_servers_are_fine_but_not_loopback_ones() {
        let mut l = lease();
        l.dns_servers = vec![ip("169.254.169.254")];
        l.ntp_servers = vec![ip("169.254.169.254")];
        assert_eq!(l.check(&Limits::default()), Ok(()));
        l.dns_servers = vec![ip("127.0.0.53")];
        assert_eq!(l.check(&Limits::default()), Err(Refusal::BadDnsServer));
        l.dns_servers = vec![ip("0.0.0.0")];
        assert_eq!(l.check(&Limits::default()), Err(Refusal::BadDnsServer));
    }

    #[test]
    fn names_with_metacharacters_are_refused() {
        for bad in [
            "a b",
            "x;reboot",
            "a\nnameserver 1.2.3.4",
            "\"q\"",
            "-lead.org",
            "$(id)",
            "",
        ] {
            let mut l = lease();
            l.search = vec![bad.to_string()];
            assert_eq!(
                l.check(&Limits::default()),
                Err(Refusal::BadDomainName),
                "{bad:?}"
            );
        }
        assert!(is_valid_domain_name("c.my-project.internal."));
        assert!(is_valid_domain_name("_srv.example.org"));
    }

    #[test]
    fn lease_times_and_mtu() {
        let mut l = lease();
        l.renew_secs = 4000;
        assert_eq!(l.check(&Limits::default()), Err(Refusal::BadLeaseTimes));
        let mut l = lease();
        l.lease_secs = 0;
        assert_eq!(l.check(&Limits::default()), Err(Refusal::BadLeaseTimes));
        let mut l = lease();
        l.lease_secs = INFINITE_LEASE;
        l.renew_secs = INFINITE_LEASE;
        l.rebind_secs = INFINITE_LEASE;
        assert_eq!(l.check(&Limits::default()), Ok(()));
        assert_eq!(l.expires_at(), Instant::NEVER);
        let mut l = lease();
        l.mtu = Some(67);
        assert_eq!(l.check(&Limits::default()), Err(Refusal::BadMtu));
    }
    fn route(d: &str, p: u8, g: &str) -> Route {
        Route {
            destination: ip(d),
            prefix_len: p,
            gateway: ip(g),
        }
    }

    fn any_length() -> Limits {
        Limits {
            min_route_prefix_len: 0,
            ..Limits::default()
        }
    }

    #[test]
    fn zero_slash_one_is_an_ordinary_route_not_this_network() {
        // 0.0.0.0/1 covers 0/8 but is not inside it: the "this network"
        // rule must not refuse it (it did, and the whole lease with it).
        let mut l = lease();
        l.routes.push(route("0.0.0.0", 1, "192.168.1.1"));
        l.routes.push(route("128.0.0.0", 1, "192.168.1.1"));
        assert_eq!(l.check(&any_length()), Ok(()));
        // Inside 0/8 it still is refused.
        for (d, p) in [("0.0.0.0", 8), ("0.1.0.0", 16), ("0.0.0.1", 32)] {
            let mut l = lease();
            l.routes.push(route(d, p, "192.168.1.1"));
            assert_eq!(l.check(&any_length()), Err(Refusal::BadRoute), "{d}/{p}");
        }
    }

    #[test]
    fn routes_into_multicast_class_e_and_broadcast_are_refused() {
        for (d, p) in [
            ("224.0.0.0", 4),
            ("239.1.0.0", 16),
            ("224.0.0.251", 32),
            ("240.0.0.0", 4),
            ("250.0.0.0", 8),
            ("255.255.255.255", 32),
        ] {
            let mut l = lease();
            l.routes.push(route(d, p, "192.168.1.1"));
            assert_eq!(l.check(&any_length()), Err(Refusal::BadRoute), "{d}/{p}");
        }
        // Covering those ranges is not lying inside them.
        let mut l = lease();
        l.routes.push(route("192.0.0.0", 2, "192.168.1.1"));
        assert_eq!(l.check(&any_length()), Ok(()));
    }

    #[test]
    fn tunnelvision_routes_are_too_short_by_default() {
        // A VPN installs 0/1 + 128/1; anything between /1 and the minimum
        // would win over them (CVE-2024-3661).
        for (d, p) in [("0.0.0.0", 1), ("128.0.0.0", 1), ("64.0.0.0", 2), ("8.0.0.0", 7)] {
            let mut l = lease();
            l.routes.push(route(d, p, "192.168.1.1"));
            assert_eq!(
                l.check(&Limits::default()),
                Err(Refusal::RouteTooShort),
                "{d}/{p}"
            );
        }
        // The default route and corporate /8../32 routes pass.
        let mut l = lease();
        l.routes.push(route("10.0.0.0", 8, "192.168.1.1"));
        l.routes.push(route("172.16.0.0", 12, "192.168.1.1"));
        l.routes.push(route("203.0.113.9", 32, "192.168.1.1"));
        assert_eq!(l.check(&Limits::default()), Ok(()));
        let strict = Limits {
            min_route_prefix_len: 16,
            ..Limits::default()
        };
        assert_eq!(l.check(&strict), Err(Refusal::RouteTooShort));
        l.routes.truncate(1);
        assert_eq!(l.check(&strict), Ok(()));
    }

    #[test]
    fn a_short_subnet_mask_is_refused() {
        let mut l = lease();
        l.address = ip("10.1.2.3");
        for (p, want) in [
            (2, Err(Refusal::SubnetTooLarge)),
            (7, Err(Refusal::SubnetTooLarge)),
            (8, Ok(())),
            (32, Ok(())),
        ] {
            l.prefix_len = p;
            l.routes.clear();
            assert_eq!(l.check(&Limits::default()), want, "/{p}");
        }
        let strict = Limits {
            min_subnet_prefix_len: 16,
            ..Limits::default()
        };
        l.prefix_len = 12;
        assert_eq!(l.check(&strict), Err(Refusal::SubnetTooLarge));
    }

    #[test]
    fn ignoring_classless_routes_allows_only_option_3s_shape() {
        let ignore = Limits {
            ignore_classless_routes: true,
            ..Limits::default()
        };
        assert_eq!(lease().check(&ignore), Ok(()));
        let mut l = lease();
        l.routes.clear();
        assert_eq!(l.check(&ignore), Ok(()));
        let mut l = lease();
        l.routes.push(route("10.0.0.0", 8, "192.168.1.1"));
        assert_eq!(l.check(&ignore), Err(Refusal::ClasslessRouteIgnored));
        let mut l = lease();
        l.routes = vec![route("10.0.0.0", 8, "192.168.1.1")];
        assert_eq!(l.check(&ignore), Err(Refusal::ClasslessRouteIgnored));
        // The cloud /32 shape needs 121: refused.
        let mut l = lease();
        l.address = ip("10.128.0.5");
        l.prefix_len = 32;
        l.routes = vec![
            route("10.128.0.1", 32, "0.0.0.0"),
            route("0.0.0.0", 0, "10.128.0.1"),
        ];
        assert_eq!(l.check(&Limits::default()), Ok(()));
        assert_eq!(l.check(&ignore), Err(Refusal::ClasslessRouteIgnored));
    }

    #[test]
    fn an_on_link_default_route_does_not_make_gateways_on_link() {
        let mut l = lease();
        l.routes = vec![route("0.0.0.0", 0, "0.0.0.0")];
        assert_eq!(l.check(&Limits::default()), Ok(()));
        l.routes.push(route("198.51.100.0", 24, "203.0.113.1"));
        assert_eq!(l.check(&Limits::default()), Err(Refusal::GatewayNotOnLink));
        // A narrower on-link route still does (the cloud shape).
        l.routes.insert(1, route("203.0.113.0", 24, "0.0.0.0"));
        assert_eq!(l.check(&Limits::default()), Ok(()));
    }

    #[test]
    fn our_address_may_not_be_the_servers_or_a_gateways() {
        let mut l = lease();
        l.server_id = l.address;
        assert_eq!(l.check(&Limits::default()), Err(Refusal::AddressIsServer));
        let mut l = lease();
        l.routes[0].gateway = l.address;
        assert_eq!(l.check(&Limits::default()), Err(Refusal::AddressIsGateway));
        let mut l = lease();
        l.routes.push(route("10.0.0.0", 8, "192.168.1.10"));
        assert_eq!(l.check(&Limits::default()), Err(Refusal::AddressIsGateway));
    }

    #[test]
    fn refused_routes_are_dropped_and_the_rest_kept_in_order() {
        let mut l = lease();
        l.routes = vec![
            route("0.0.0.0", 1, "192.168.1.1"),
            route("10.0.0.0", 8, "192.168.1.1"),
            route("224.0.0.0", 4, "192.168.1.1"),
            route("128.0.0.0", 1, "192.168.1.1"),
            route("198.51.100.0", 24, "203.0.113.1"),
            route("0.0.0.0", 0, "192.168.1.1"),
        ];
        assert!(l.check(&Limits::default()).is_err());
        assert_eq!(l.retain_allowed_routes(&Limits::default()), 4);
        assert_eq!(
            l.routes,
            vec![
                route("10.0.0.0", 8, "192.168.1.1"),
                route("0.0.0.0", 0, "192.168.1.1")
            ]
        );
        assert_eq!(l.check(&Limits::default()), Ok(()));
        // A gateway made on-link by a route that was itself dropped is not.
        let mut l = lease();
        l.routes = vec![
            route("203.0.0.0", 4, "0.0.0.0"),
            route("203.0.113.0", 24, "203.0.113.1"),
        ];
        assert_eq!(l.retain_allowed_routes(&Limits::default()), 2);
        assert!(l.routes.is_empty());
    }
}
