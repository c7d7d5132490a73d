//! The three sandboxed roles as data (docs/ntp.md, "The service"): the
//! plans the SDK applies in each role ([`mirage_sdk::role`]) and what each
//! role is told in its hello.
//!
//! | role | uid (default, `[ids]`) | capabilities | descriptors | seccomp |
//! | --- | --- | --- | --- | --- |
//! | engine | 65526 | none | its channel (a KVM guest's tender: the KVM device) | `BASE` (a tender: `BASE`, `TENDER`, `mirage_sdk::kvm::tender_plan`) |
//! | network | 65527 | none | one UDP socket per server, connected (or, with no route to it at start, bound and connected later by the supervisor); with names, [`DNS_SOCKETS_PER_RESOLVER`] per resolver, the same, and one unconnected per family | `BASE`, `PACKET_IN`; with names also [`ADDRESSED_SEND`] |
//! | actuator | 65528 | `CAP_SYS_TIME` (none with `--observe`, nor when the supervisor does not hold it) | state directory (drift file) | `BASE`, [`CLOCK`], `STATE_FILES` (`BASE` only with `--observe`) |

use std::net::SocketAddr;
use std::os::fd::RawFd;

use mirage_sdk::role::RolePlan;
use mirage_sdk::sandbox::seccomp::{Allow, BASE, PACKET_IN, STATE_FILES, When};
use mirage_sdk::sandbox::{Capability, DirAccess};
use mirage_sdk::service::ids::RoleId;
use mirage_sdk::service::state::Versioned;
use serde::{Deserialize, Serialize};

use crate::policy::ClockPolicy;

/// The roles' default uid = gid: of the service's own (the range systemd
/// leaves unused, after mirage-dhcp's 65520..=65522 and the example's).
/// The config file's `[ids]` table replaces them.
pub const ENGINE_ID: u32 = 65526;
pub const NETWORK_ID: u32 = 65527;
pub const ACTUATOR_ID: u32 = 65528;

mirage_sdk::role_ids! {
    /// `[ids]`: who each role runs as (`65526` or `"UID:GID"`).
    pub struct IdsConfig =>
    /// The ids each role runs as.
    pub struct RoleIds {
        engine: ENGINE_ID,
        network: NETWORK_ID,
        /// Also owns the state directory (the drift file).
        actuator: ACTUATOR_ID,
    }
}

/// Network role: the first server's socket; server `i`'s is at
/// `FD_FIRST_SOCKET + i` (its channel is 3), then the DNS sockets in the
/// order of [`NetworkSettings::resolvers`], then the unconnected sockets
/// of [`NetworkSettings::named_sockets`].
pub const FD_FIRST_SOCKET: RawFd = 4;
/// Sockets opened per resolver, each on its own ephemeral port and
/// connected to it: a query goes out on a socket with no query in flight,
/// in turn (no role may open a socket, so they are opened at start). Eight:
/// four lookups (an A and an AAAA query each) at once per resolver.
pub const DNS_SOCKETS_PER_RESOLVER: usize = 8;
/// Actuator: the state directory (the drift file), when not observing.
pub const FD_STATE_DIR: RawFd = 4;
/// The drift file's name in the state directory.
pub const DRIFT_FILE: &str = "drift.json";

/// The actuator's clock calls: `clock_adjtime` on `CLOCK_REALTIME` (0)
/// only, which is how the SDK makes every adjtimex-style call
/// (`mirage_sdk::clock`); any other clock id (a PTP device, TAI) kills
/// the role. The modes live in memory, out of the filter's sight: the role
/// checks them (the policy) before the call.
pub const CLOCK: &[Allow] = &[mirage_sdk::allow!(clock_adjtime, When::ArgEq(0, 0))];

/// What the supervisor needs, beyond the SDK's supervisor list, to
/// follow the DHCP client's servers: a UDP socket per server (IPv4 or
/// IPv6 datagram sockets only), bound to an ephemeral port, connected,
/// kernel receive timestamps on (with names, also the resolvers' sockets and
/// the unconnected ones, whose port it reads back: `getsockname`); the network role is then started again
/// with them, and checks each socket's peer (`getpeername`) under this
/// filter before its own. The supervisor also `connect`s, at its 2 s
/// retry, a socket it handed over unconnected because there was no route
/// to its server or resolver at start. In the supervisor's filter only when
/// `dhcp_servers` is in use or a socket waits for a route ([`udp_setup`]);
/// no role's list ever holds it.
pub const UDP_SETUP: &[Allow] = &[
    mirage_sdk::allow!(socket, When::ArgEq(0, AF_INET)),
    mirage_sdk::allow!(socket, When::ArgEq(0, AF_INET6)),
    mirage_sdk::allow!(bind),
    mirage_sdk::allow!(connect),
    mirage_sdk::allow!(setsockopt),
    mirage_sdk::allow!(getpeername),
    mirage_sdk::allow!(getsockname),
];
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;

/// [`UDP_SETUP`] as a pseudo-role for the supervisor's filter
/// (`mirage_sdk::service::launch::confine`): no role runs under it.
pub fn udp_setup() -> RolePlan {
    RolePlan::strict("udp-setup", 0, 0, &[UDP_SETUP])
}

/// Sending to an address (`sendto`), for the unconnected sockets of
/// sources resolved from names: their addresses are not known at start,
/// when the sockets are opened. The role sends on them only 48-byte client
/// requests, to ports of configured names (see the network role).
pub const ADDRESSED_SEND: &[Allow] = &[mirage_sdk::allow!(sendto)];

/// The engine: nothing but its channel.
pub fn engine(id: RoleId) -> RolePlan {
    RolePlan::strict("engine", id.uid, id.gid, &[BASE])
}

/// The network role: one UDP socket per server, each connected to its
/// server by the supervisor, so the kernel delivers only that server's
/// datagrams and `send` (`sendto` without an address, in `BASE`) can reach
/// no one else: no table with an addressed `sendto` or `sendmsg` is
/// needed. Replies are read with `recvmsg` (`PACKET_IN`) for their kernel
/// timestamp.
pub fn network(id: RoleId, sockets: usize, names: bool) -> RolePlan {
    let tables: &[&[Allow]] = if names {
        &[BASE, PACKET_IN, ADDRESSED_SEND]
    } else {
        &[BASE, PACKET_IN]
    };
    let mut plan = RolePlan::strict("network", id.uid, id.gid, tables);
    plan.nofile = 16 + sockets as u64;
    plan
}

/// The actuator: `CAP_SYS_TIME`, [`CLOCK`], and files beneath the state
/// directory (contained, Landlock). Observing, it holds no capability, no
/// clock call and no directory: the kernel itself guarantees it never
/// touches the clock.
pub fn actuator(id: RoleId, observe: bool) -> RolePlan {
    if observe {
        return RolePlan::strict("actuator", id.uid, id.gid, &[BASE]);
    }
    let mut plan = RolePlan::strict("actuator", id.uid, id.gid, &[BASE, CLOCK, STATE_FILES]);
    plan.keep_caps = vec![Capability::CAP_SYS_TIME];
    plan.fsize_zero = false;
    plan.landlock_dirs = vec![(FD_STATE_DIR, DirAccess::ReadWrite)];
    plan.contain_dirs = vec![FD_STATE_DIR];
    plan
}

/// The network role's hello: the servers, in the order of its sockets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NetworkSettings {
    pub servers: Vec<SocketAddr>,
    /// The resolver each DNS socket is connected to, in socket order.
    pub resolvers: Vec<SocketAddr>,
    /// The names a DNS query may ask for (host names and pools).
    pub names: Vec<String>,
    /// The NTP ports of those names: a request to an address that is not a
    /// configured server may go only to one of them.
    pub named_ports: Vec<u16>,
    /// The local address of each unconnected socket (one per family), in
    /// socket order.
    pub named_sockets: Vec<SocketAddr>,
}

impl NetworkSettings {
    /// Descriptors the role takes.
    pub fn sockets(&self) -> usize {
        self.servers.len() + self.resolvers.len() + self.named_sockets.len()
    }
}

/// The actuator's hello: its mode and the policy, fixed for its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActuatorSettings {
    pub observe: bool,
    pub policy: ClockPolicy,
}

/// No build of mirage-ntp predates this (2026-01-01T00:00:00Z): the time
/// floor when no state file says later (field notes item 13).
pub const BUILD_TIME_FLOOR_UNIX_SECS: i64 = 1_767_225_600;

/// The drift file: the frequency a previous run learnt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriftFile {
    pub version: u32,
    /// ppm scaled by 2^16 (the kernel's unit).
    pub scaled_ppm: i64,
    /// When it was saved (Unix seconds, by the clock being disciplined: the
    /// engine saves only once its frequency is known): the last known good
    /// time, the next run's time floor. Absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_unix_secs: Option<i64>,
}

impl Versioned for DriftFile {
    const VERSION: u32 = 1;
    const WHAT: &'static str = "drift file";
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_sdk::sandbox::seccomp;

    #[test]
    fn the_plans_are_the_table_above() {
        let ids = RoleIds::DEFAULT;
        let e = engine(ids.engine);
        assert_eq!(
            (e.uid, e.keep_caps.len(), e.seccomp.clone()),
            (ENGINE_ID, 0, vec![BASE])
        );
        let n = network(ids.network, 3, false);
        assert_eq!((n.uid, n.keep_caps.len(), n.nofile), (NETWORK_ID, 0, 19));
        assert_eq!(n.seccomp, [BASE, PACKET_IN]);
        let named = network(ids.network, 3, true);
        assert_eq!(named.seccomp, [BASE, PACKET_IN, ADDRESSED_SEND]);
        let a = actuator(RoleId { uid: 900, gid: 901 }, false);
        assert_eq!((a.uid, a.gid), (900, 901));
        assert_eq!(a.keep_caps, [Capability::CAP_SYS_TIME]);
        assert_eq!(a.seccomp, [BASE, CLOCK, STATE_FILES]);
        assert_eq!(a.contain_dirs, [FD_STATE_DIR]);
        let o = actuator(ids.actuator, true);
        assert!(o.keep_caps.is_empty() && o.contain_dirs.is_empty() && o.landlock_dirs.is_empty());
        assert_eq!(o.seccomp, [BASE]);
        for plan in [e, n, named, a, o, udp_setup()] {
            assert!(seccomp::filter(&plan.seccomp).is_ok(), "{}", plan.name);
        }
    }

    #[test]
    fn the_ids_table_replaces_the_defaults_role_by_role_and_refuses_root() {
        let parse = |text: &str| mirage_sdk::config::parse::<IdsConfig>(std::path::Path::new("ids"), text);
        let section = parse("engine = 900\nactuator = \"901:902\"\n").unwrap();
        let ids = RoleIds::resolve(&section).unwrap();
        assert_eq!(ids.engine, RoleId::same(900));
        assert_eq!(ids.network, RoleId::same(NETWORK_ID));
        assert_eq!(ids.actuator, RoleId { uid: 901, gid: 902 });
        assert_eq!(
            RoleIds::resolve(&IdsConfig::default()).unwrap(),
            RoleIds {
                engine: RoleId::same(65526),
                network: RoleId::same(65527),
                actuator: RoleId::same(65528),
            }
        );
        let root = parse("network = 0").unwrap();
        assert_eq!(RoleIds::resolve(&root).unwrap_err().0, "ids.network");
        assert!(parse("dns = 5").is_err());
        // Defaults: one id per role, none shared and none `nobody`.
        assert!(RoleIds::DEFAULT.warnings(true).is_empty());
    }

    #[test]
    fn only_the_steering_actuator_may_call_clock_adjtime_and_only_on_realtime() {
        let calls = |p: &RolePlan| -> Vec<(i64, When)> {
            p.seccomp
                .iter()
                .flat_map(|t| t.iter())
                .map(|a| (a.nr, a.when))
                .collect()
        };
        let clock = seccomp::sys::clock_adjtime;
        let ids = RoleIds::DEFAULT;
        for p in [
            engine(ids.engine),
            network(ids.network, 16, true),
            actuator(ids.actuator, true),
        ] {
            assert!(
                !calls(&p).iter().any(|&(nr, _)| nr == clock
                    || nr == seccomp::sys::adjtimex
                    || nr == seccomp::sys::clock_settime),
                "{}",
                p.name
            );
        }
        let a: Vec<_> = calls(&actuator(ids.actuator, false))
            .into_iter()
            .filter(|&(nr, _)| nr == clock)
            .collect();
        // CLOCK_REALTIME is clock id 0.
        assert_eq!(a, [(clock, When::ArgEq(0, 0))]);
    }
}
