//! The lease policy: what a legitimate DHCP server could have told us.
//!
//! One implementation, run twice: by the engine before it asks to apply a
//! lease, and by the actuator on every request, because the actuator must
//! assume the engine is compromised (DESIGN.md section 1, "intents, not
//! syscalls").

use core::net::Ipv4Addr;
use serde::{Deserialize, Serialize};

use crate::{INFINITE_LEASE, Lease, prefix_mask};

/// Bounds on what a lease may carry. Fixed at start, identical on both sides.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
// Also the `[limits]` table of configuration files (see AcdConfig).
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_routes: u16,
    pub max_dns_servers: u8,
    pub max_ntp_servers: u8,
    pub max_search_domains: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_routes: 64,
            max_dns_servers: 8,
            max_ntp_servers: 8,
            max_search_domains: 16,
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
    /// Prefix length over 32, bits set past the prefix, or a destination in
    /// 0.0.0.0/8 or 127.0.0.0/8.
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
/// on-link route (gateway 0.0.0.0) that comes before index `before`.
fn on_link(lease: &Lease, gateway: Ipv4Addr, before: usize) -> bool {
    let mask = prefix_mask(lease.prefix_len);
    if lease.prefix_len < 32 && u32::from(gateway) & mask == u32::from(lease.address) & mask {
        return true;
    }
    lease.routes[..before].iter().any(|r| {
        r.gateway.is_unspecified()
            && u32::from(gateway) & prefix_mask(r.prefix_len) == u32::from(r.destination)
    })
}

impl Lease {
    /// Check the whole lease against the policy. `Ok` means every field is
    /// something a legitimate server could have sent and the host can apply.
    pub fn check(&self, limits: &Limits) -> Result<(), Refusal> {
        if let Some(r) = unicast_refusal(self.address) {
            return Err(r);
        }
        if self.prefix_len == 0 || self.prefix_len > 32 {
            return Err(Refusal::BadPrefixLength);
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
        if self.routes.len() > usize::from(limits.max_routes) {
            return Err(Refusal::TooManyRoutes);
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.prefix_len > 32
                || u32::from(route.destination) & !prefix_mask(route.prefix_len) != 0
                || (route.prefix_len > 0 && matches!(route.destination.octets()[0], 0 | 127))
            {
                return Err(Refusal::BadRoute);
            }
            if !route.gateway.is_unspecified() {
                if unicast_refusal(route.gateway).is_some() || route.gateway == self.address {
                    return Err(Refusal::BadRoute);
                }
                if !on_link(self, route.gateway, i) {
                    return Err(Refusal::GatewayNotOnLink);
                }
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
}
