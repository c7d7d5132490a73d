//! The two sandboxed roles as data (docs/dns.md, "The roles"): the plans
//! the SDK applies in each role ([`mirage_sdk::role`]) and what each role is
//! told in its hello. There is no actuator: the forwarder changes nothing
//! on the host (the supervisor publishes its own status files).
//!
//! | role | uid | capabilities | descriptors | seccomp |
//! | --- | --- | --- | --- | --- |
//! | engine | 65529 | none | its channel, the direct channel to the network role (4; a KVM guest's tender: the KVM device at 4, the direct channel at 5) | `BASE` (a tender: `BASE`, `TENDER`, `mirage_sdk::kvm::tender_plan`) |
//! | network | 65530 | none | the listeners (UDP, then TCP, from 4), the direct channel after them; TCP connect to the upstreams' ports only (Landlock) | `BASE`, [`NETWORK`] |
//!
//! The engine and the network role talk over a direct channel
//! ([`mirage_sdk::runtime::Runtime::link`]), so both are restartable and
//! restart together; the listeners stay with the supervisor, which hands a
//! duplicate to each network role it starts.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use mirage_sdk::role::RolePlan;
use mirage_sdk::sandbox::seccomp::{Allow, BASE, When};
use serde::{Deserialize, Serialize};

mirage_sdk::role_ids! {
    /// `[ids]`: who each role runs as.
    pub struct IdsConfig =>
    /// The ids each role runs as.
    pub struct RoleIds {
        engine: 65529,
        network: 65530,
    }
}

/// The engine's end of the direct channel.
pub const FD_ENGINE_PEER: RawFd = 4;
/// The same for a KVM guest's tender, whose KVM device comes first
/// (`mirage_sdk::kvm::FD_KVM`); the tender moves it above the VM's
/// descriptors (`mirage_sdk::kvm::peer_above_the_vm`).
pub const FD_ENGINE_PEER_KVM: RawFd = mirage_sdk::kvm::FD_KVM + 1;
/// The network role's first listener; UDP listeners come first, then TCP
/// ones, then the direct channel ([`NetworkSettings::peer_fd`]).
pub const FD_FIRST_LISTENER: RawFd = 4;

/// The network role's own calls, beyond [`BASE`] (reviewed in
/// docs/security.md, "mirage-dns"):
/// - `sendto` with an address, and `sendmmsg` (several at once): answers
///   to UDP clients on the unconnected listeners; the address is the one
///   the query came from, which the role keeps (the engine never names an
///   address); `recvmmsg`: several client queries per read;
/// - `socket` for `AF_INET` and `AF_INET6` only, and `connect`: a fresh
///   connected UDP socket per upstream query
///   ([`mirage_sdk::udp::connected_socket`], no `bind`: the kernel picks a
///   random source port), or a TCP connection for a truncated answer's
///   retry ([`mirage_sdk::tcp::connect_nonblocking`]), to an address the
///   role checked is a configured upstream. Without capabilities these
///   families give only UDP, TCP and (where `ping_group_range` allows the
///   gid) ICMP echo sockets; Landlock forbids TCP bind, and TCP connect to
///   any port but the upstreams' ([`network`]);
/// - `accept4` on the TCP listeners, and the `ioctl` `FIONBIO` that makes
///   an accepted connection non-blocking (std's `set_nonblocking`).
pub const NETWORK: &[Allow] = &[
    mirage_sdk::allow!(sendto),
    mirage_sdk::allow!(sendmmsg),
    mirage_sdk::allow!(recvmmsg),
    mirage_sdk::allow!(socket, When::ArgEq(0, libc::AF_INET as u64)),
    mirage_sdk::allow!(socket, When::ArgEq(0, libc::AF_INET6 as u64)),
    mirage_sdk::allow!(connect),
    mirage_sdk::allow!(accept4),
    mirage_sdk::allow!(ioctl, When::Ioctl(libc::FIONBIO as u32)),
];

/// The engine: nothing but its two channels.
pub fn engine(ids: &RoleIds) -> RolePlan {
    RolePlan::strict("engine", ids.engine.uid, ids.engine.gid, &[BASE])
}

/// The network role: its listeners, one socket per upstream query in
/// flight and one per TCP client, within `limits`; TCP connect only to the
/// upstreams' ports (Landlock), for the retries of truncated answers.
pub fn network(
    ids: &RoleIds,
    listeners: usize,
    limits: &NetworkLimits,
    upstreams: &[SocketAddr],
) -> RolePlan {
    let mut plan = RolePlan::strict("network", ids.network.uid, ids.network.gid, &[BASE, NETWORK]);
    plan.nofile = limits.nofile(listeners);
    let mut ports: Vec<u16> = upstreams.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    plan.tcp_connect_ports = ports;
    plan
}

/// The network role's limits (`[limits]` in the config file).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkLimits {
    /// Client queries waiting for their answer at once; more are dropped.
    pub pending_queries: u32,
    /// How long a client query waits for its answer (ms).
    pub query_timeout_ms: u32,
    /// Upstream sockets open at once (one per query in flight).
    pub upstream_sockets: u32,
    /// Upstream queries per second, and at once in a burst.
    pub upstream_per_second: u32,
    pub upstream_burst: u32,
    /// TCP client connections at once; more are closed at once.
    pub tcp_clients: u32,
    /// A TCP connection with nothing outstanding is closed after this
    /// long (ms; RFC 7766 section 6.2.3).
    pub tcp_idle_ms: u32,
    /// Queries one TCP connection may have outstanding (pipelined, RFC
    /// 7766 section 6.2.1.1); its further queries wait in its socket.
    pub tcp_pipeline: u32,
    /// Queries one client address may send a second, and at once in a
    /// burst; more are dropped (0: no limit).
    pub client_per_second: u32,
    pub client_burst: u32,
    /// Whether loopback clients are rate-limited too. Off by default:
    /// every process of the host asks from 127.0.0.1 (or ::1), so a limit
    /// per address there would throttle the whole host at once; the
    /// limit is for clients reached on other addresses (containers).
    pub client_rate_loopback: bool,
    /// Client addresses whose rate is kept at once (the table's bound).
    pub client_table: u32,
    /// The IPv6 prefix length one rate is kept for: 128, an address (the
    /// default: containers on a bridge share one /64), or shorter where
    /// each client owns a prefix (64: a host and its temporary addresses).
    pub client_ipv6_prefix: u8,
}

impl Default for NetworkLimits {
    fn default() -> NetworkLimits {
        NetworkLimits {
            pending_queries: 4096,
            query_timeout_ms: 10_000,
            upstream_sockets: 1024,
            upstream_per_second: 5000,
            upstream_burst: 1000,
            tcp_clients: 64,
            tcp_idle_ms: 10_000,
            tcp_pipeline: 16,
            client_per_second: 2000,
            client_burst: 4000,
            client_rate_loopback: false,
            client_table: 4096,
            client_ipv6_prefix: 128,
        }
    }
}

/// Descriptors of the network role beyond its sockets: its channels, std's
/// and the allocator's, with room to spare.
const BASE_FDS: u64 = 16;
/// The least a network role is started with when the descriptor limit
/// makes [`NetworkLimits::fit`] lower the configured limits.
pub const MIN_UPSTREAM_SOCKETS: u32 = 16;
pub const MIN_TCP_CLIENTS: u32 = 4;

/// What [`NetworkLimits::fit`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lowered {
    /// The configured limits, and the descriptors they need.
    pub upstream_sockets: u32,
    pub tcp_clients: u32,
    pub wanted: u64,
}

impl NetworkLimits {
    /// The network role's `RLIMIT_NOFILE` with `listeners` listening
    /// sockets: one descriptor per upstream socket and per TCP client.
    pub fn nofile(&self, listeners: usize) -> u64 {
        BASE_FDS + listeners as u64 + u64::from(self.upstream_sockets) + u64::from(self.tcp_clients)
    }

    /// The limits fitted to a descriptor limit of `max` (the hard
    /// `RLIMIT_NOFILE` the roles inherit: a role without
    /// `CAP_SYS_RESOURCE`, which they all drop first, cannot raise it).
    /// Within it, they are kept; above it, `upstream_sockets` and
    /// `tcp_clients` are lowered in proportion, to no less than
    /// [`MIN_UPSTREAM_SOCKETS`] and [`MIN_TCP_CLIENTS`] (or what was
    /// configured, if less); an error if even that does not fit.
    pub fn fit(self, listeners: usize, max: u64) -> Result<(NetworkLimits, Option<Lowered>), String> {
        let wanted = self.nofile(listeners);
        if wanted <= max {
            return Ok((self, None));
        }
        let min_up = self.upstream_sockets.min(MIN_UPSTREAM_SOCKETS);
        let min_tcp = self.tcp_clients.min(MIN_TCP_CLIENTS);
        let minimal = NetworkLimits {
            upstream_sockets: min_up,
            tcp_clients: min_tcp,
            ..self
        };
        if minimal.nofile(listeners) > max {
            return Err(format!(
                "the descriptor limit (RLIMIT_NOFILE, hard) is {max}: the network role needs at least {} \
                 ({BASE_FDS} + {listeners} listeners + {min_up} upstream sockets + {min_tcp} TCP clients) \
                 and {wanted} with [limits] as configured; raise it (podman --ulimit nofile=4096:4096, \
                 systemd LimitNOFILE=4096)",
                minimal.nofile(listeners)
            ));
        }
        let room = max - BASE_FDS - listeners as u64;
        let sockets = u64::from(self.upstream_sockets) + u64::from(self.tcp_clients);
        let up = (u64::from(self.upstream_sockets) * room / sockets)
            .max(u64::from(min_up))
            .min(room - u64::from(min_tcp));
        let tcp = (room - up).min(u64::from(self.tcp_clients));
        let fitted = NetworkLimits {
            upstream_sockets: up as u32,
            tcp_clients: tcp as u32,
            ..self
        };
        Ok((
            fitted,
            Some(Lowered {
                upstream_sockets: self.upstream_sockets,
                tcp_clients: self.tcp_clients,
                wanted,
            }),
        ))
    }

    /// Every limit within what the role can hold.
    pub fn check(&self) -> Result<(), String> {
        let within = |key: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("limits.{key} = {v} is not within {lo}..={hi}"))
            }
        };
        within("pending_queries", self.pending_queries, 1, 65_536)?;
        within("query_timeout_ms", self.query_timeout_ms, 500, 60_000)?;
        within("upstream_sockets", self.upstream_sockets, 1, 16_384)?;
        within("upstream_per_second", self.upstream_per_second, 1, 1_000_000)?;
        within("upstream_burst", self.upstream_burst, 1, 1_000_000)?;
        within("tcp_clients", self.tcp_clients, 0, 4096)?;
        within("tcp_idle_ms", self.tcp_idle_ms, 100, 300_000)?;
        within("tcp_pipeline", self.tcp_pipeline, 1, 1024)?;
        within("client_per_second", self.client_per_second, 0, 1_000_000)?;
        within("client_burst", self.client_burst, 1, 1_000_000)?;
        within("client_table", self.client_table, 1, 1_000_000)?;
        within("client_ipv6_prefix", u32::from(self.client_ipv6_prefix), 32, 128)
    }
}

/// The network role's hello.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Where each UDP listener is bound, in the order of its descriptors.
    pub udp: Vec<SocketAddr>,
    /// Where each TCP listener is bound, after the UDP ones.
    pub tcp: Vec<SocketAddr>,
    /// The upstream servers, as the engine's `Start` numbers them; as
    /// text, which keeps a link-local address's scope id (postcard's
    /// socket address does not).
    #[serde(with = "scoped")]
    pub upstreams: Vec<SocketAddr>,
    /// The clients read: a query from anyone else is dropped unread
    /// (`allow`; by default loopback and the listen addresses).
    pub allow: Vec<crate::policy::Cidr>,
    pub limits: NetworkLimits,
}

/// Socket addresses as their text, `[fe80::1%2]:53` with its scope id.
mod scoped {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::net::SocketAddr;

    pub fn serialize<S: Serializer>(v: &[SocketAddr], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(ToString::to_string).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|a| a.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

impl NetworkSettings {
    /// The network role's end of the direct channel: after its listeners.
    pub fn peer_fd(&self) -> RawFd {
        FD_FIRST_LISTENER + (self.udp.len() + self.tcp.len()) as RawFd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_sdk::sandbox::seccomp::{self, sys};

    #[test]
    fn the_network_role_gets_the_upstreams_scope_ids() {
        let settings = NetworkSettings {
            udp: vec!["127.0.0.53:53".parse().unwrap()],
            tcp: vec![],
            upstreams: vec!["[fe80::1%7]:53".parse().unwrap(), "192.0.2.1:53".parse().unwrap()],
            allow: vec![],
            limits: NetworkLimits::default(),
        };
        let bytes = mirage_engine::codec::encode(&settings).unwrap();
        let back: NetworkSettings = mirage_engine::codec::decode(&bytes).unwrap();
        assert_eq!(back, settings);
        match back.upstreams[0] {
            SocketAddr::V6(v6) => assert_eq!(v6.scope_id(), 7),
            a => panic!("{a}"),
        }
    }

    #[test]
    fn limits_out_of_range_are_named() {
        assert_eq!(NetworkLimits::default().check(), Ok(()));
        let prefix = |p: u8| {
            NetworkLimits {
                client_ipv6_prefix: p,
                ..NetworkLimits::default()
            }
            .check()
        };
        assert_eq!(prefix(64), Ok(()));
        assert_eq!(
            prefix(20),
            Err("limits.client_ipv6_prefix = 20 is not within 32..=128".to_owned())
        );
        assert!(prefix(129).is_err());
        let toml: NetworkLimits = toml::from_str("client_ipv6_prefix = 64").unwrap();
        assert_eq!(toml.client_ipv6_prefix, 64);
    }

    #[test]
    fn the_plans_are_the_table_above() {
        let ids = RoleIds::DEFAULT;
        let e = engine(&ids);
        assert_eq!((e.uid, e.gid, e.keep_caps.len()), (65529, 65529, 0));
        assert_eq!(e.seccomp, [BASE]);
        let limits = NetworkLimits::default();
        let ups: Vec<SocketAddr> = vec![
            "192.0.2.1:53".parse().unwrap(),
            "192.0.2.2:5353".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
        ];
        let n = network(&ids, 2, &limits, &ups);
        assert_eq!(n.tcp_connect_ports, [53, 5353]);
        assert!(engine(&ids).tcp_connect_ports.is_empty());
        assert_eq!((n.uid, n.keep_caps.len()), (65530, 0));
        assert_eq!(n.seccomp, [BASE, NETWORK]);
        assert_eq!(n.nofile, 16 + 2 + 1024 + 64);
        for plan in [e, n] {
            assert!(seccomp::filter(&plan.seccomp).is_ok(), "{}", plan.name);
            assert!(plan.landlock_dirs.is_empty() && plan.private_mount_ns);
        }
        assert!(limits.check().is_ok());
        let bad = NetworkLimits {
            tcp_pipeline: 0,
            ..limits
        };
        assert!(bad.check().unwrap_err().contains("limits.tcp_pipeline"));
    }

    #[test]
    fn the_limits_fit_the_descriptor_limit_or_say_it_is_too_low() {
        let limits = NetworkLimits::default();
        // Within the limit: as configured.
        assert_eq!(limits.fit(2, 4096), Ok((limits, None)));
        assert_eq!(limits.fit(2, 1106), Ok((limits, None)));
        // A runtime's 1024: both lowered in proportion, every descriptor
        // within the limit, and what was configured reported.
        let (fitted, lowered) = limits.fit(2, 1024).unwrap();
        assert_eq!((fitted.upstream_sockets, fitted.tcp_clients), (946, 60));
        assert_eq!(fitted.nofile(2), 1024);
        assert_eq!(
            lowered,
            Some(Lowered {
                upstream_sockets: 1024,
                tcp_clients: 64,
                wanted: 1106
            })
        );
        assert_eq!(fitted.pending_queries, limits.pending_queries);
        // Near the floor: the minimum, never below it.
        let (fitted, _) = limits.fit(2, 16 + 2 + 16 + 4).unwrap();
        assert_eq!((fitted.upstream_sockets, fitted.tcp_clients), (16, 4));
        for max in [40, 64, 100, 300, 1000, 1105] {
            let (f, _) = limits.fit(2, max).unwrap();
            assert!(f.nofile(2) <= max, "{max}: {f:?}");
            assert!(f.upstream_sockets >= 16 && f.tcp_clients >= 4, "{max}: {f:?}");
            assert!(f.check().is_ok());
        }
        // Below it: an error that names the limit and the fix.
        let err = limits.fit(2, 37).unwrap_err();
        assert!(err.contains("is 37") && err.contains("at least 38"), "{err}");
        assert!(err.contains("nofile=4096"), "{err}");
        // No TCP clients configured: none made up.
        let no_tcp = NetworkLimits {
            tcp_clients: 0,
            ..limits
        };
        let (f, _) = no_tcp.fit(1, 100).unwrap();
        assert_eq!((f.upstream_sockets, f.tcp_clients), (83, 0));
    }

    #[test]
    fn only_the_network_role_opens_sockets_and_never_binds() {
        let calls = |p: &RolePlan| -> Vec<(i64, When)> {
            p.seccomp
                .iter()
                .flat_map(|t| t.iter())
                .map(|a| (a.nr, a.when))
                .collect()
        };
        let ids = RoleIds::DEFAULT;
        let e = calls(&engine(&ids));
        for nr in [sys::socket, sys::connect, sys::bind, sys::accept4] {
            assert!(!e.iter().any(|&(n, _)| n == nr), "the engine may call {nr}");
        }
        let n = calls(&network(&ids, 1, &NetworkLimits::default(), &[]));
        assert!(!n.iter().any(|&(nr, _)| nr == sys::bind));
        let sockets: Vec<When> = n
            .iter()
            .filter(|&&(nr, _)| nr == sys::socket)
            .map(|&(_, w)| w)
            .collect();
        assert_eq!(
            sockets,
            [
                When::ArgEq(0, libc::AF_INET as u64),
                When::ArgEq(0, libc::AF_INET6 as u64)
            ]
        );
        let settings = NetworkSettings {
            udp: vec!["127.0.0.53:53".parse().unwrap()],
            tcp: vec!["127.0.0.53:53".parse().unwrap()],
            upstreams: vec![],
            allow: vec![],
            limits: NetworkLimits::default(),
        };
        assert_eq!(settings.peer_fd(), 6);
    }
}
