//! The three sandboxed roles as data: the per-role plans of
//! docs/security.md, which the SDK applies in each role
//! ([`mirage_sdk::role`]), and what each role is told in its hello.

use std::os::fd::RawFd;

use mirage_ipc::Limits;
use mirage_sdk::role::RolePlan;
use mirage_sdk::sandbox::seccomp::{BASE, NETLINK, PACKET_IN, STATE_FILES};
use mirage_sdk::sandbox::{Capability, DirAccess};
use serde::{Deserialize, Serialize};

/// Every role: channel to the supervisor.
pub const FD_CHANNEL: RawFd = mirage_sdk::role::FD_CHANNEL;
/// Network role: the AF_PACKET socket.
pub const FD_PACKET: RawFd = 4;
/// Actuator role: rtnetlink request socket.
pub const FD_RTNL: RawFd = 4;
/// Actuator role: rtnetlink link-event socket.
pub const FD_LINK_EVENTS: RawFd = 5;
/// Actuator role: state directory (lease file).
pub const FD_STATE_DIR: RawFd = 6;
/// Actuator role: runtime directory (status.json, metrics.prom).
pub const FD_RUN_DIR: RawFd = 7;
/// Actuator role: directory holding resolv.conf (only with `resolv_name`).
pub const FD_RESOLV_DIR: RawFd = 8;
/// Actuator role: resolv.conf itself, opened for writing, for targets that
/// cannot be replaced by rename (bind mounts, directories we may not write).
pub const FD_RESOLV_FILE: RawFd = 9;

/// The engine: nothing at all but its channel.
pub fn engine(uid: u32, gid: u32) -> RolePlan {
    RolePlan::strict("engine", uid, gid, &[BASE])
}

/// The network role: the packet socket the supervisor opened, frames in
/// with `recvmsg`, out with the base list's `sendto` without an address.
pub fn network(uid: u32, gid: u32) -> RolePlan {
    RolePlan::strict("network", uid, gid, &[BASE, PACKET_IN])
}

/// The actuator: CAP_NET_ADMIN, rtnetlink, and files beneath its state and
/// runtime directories (and resolv.conf's, when it writes one) only, each
/// contained so `..` leads nowhere; it writes files, so no `RLIMIT_FSIZE`
/// 0, and holds more descriptors.
pub fn actuator(uid: u32, gid: u32, resolv: bool) -> RolePlan {
    let mut plan = RolePlan::strict("actuator", uid, gid, &[BASE, NETLINK, STATE_FILES]);
    plan.keep_caps = vec![Capability::CAP_NET_ADMIN];
    plan.fsize_zero = false;
    plan.nofile = 32;
    let mut dirs = vec![FD_STATE_DIR, FD_RUN_DIR];
    if resolv {
        dirs.push(FD_RESOLV_DIR);
    }
    plan.landlock_dirs = dirs.iter().map(|&fd| (fd, DirAccess::ReadWrite)).collect();
    plan.contain_dirs = dirs;
    plan
}

/// What the network role and the actuator are told in their hello. Nothing
/// here is secret; the role trusts it because only the supervisor can
/// start it with its descriptors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RoleSettings {
    pub interface: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// The lease policy's limits (the actuator re-checks every intent).
    pub limits: Limits,
    /// Network role: option 61 exactly as the engine sends it; frames with
    /// another client identifier are refused.
    pub client_id: Option<Vec<u8>>,
    /// Network role: ARP passes too (conflict detection); the supervisor's
    /// socket filter already says so.
    pub with_arp: bool,
    /// Actuator: resolv.conf's file name inside [`FD_RESOLV_DIR`].
    pub resolv_name: Option<String>,
    /// Actuator: the one nameserver resolv.conf names instead of the
    /// lease's DNS servers (`resolv_conf_nameserver`).
    pub resolv_nameserver: Option<std::net::IpAddr>,
    /// Actuator: a first start's DUID (hex) to store in the state
    /// directory, off the path to the first lease.
    pub store_duid: Option<String>,
    /// Actuator: routing table for the lease's routes (default: main).
    pub route_table: Option<u32>,
}

impl RoleSettings {
    /// Settings for a role on `interface`, nothing role-specific set.
    pub fn new(interface: &str, ifindex: u32, mac: [u8; 6], limits: Limits) -> RoleSettings {
        RoleSettings {
            interface: interface.to_owned(),
            ifindex,
            mac,
            limits,
            client_id: None,
            with_arp: false,
            resolv_name: None,
            resolv_nameserver: None,
            store_duid: None,
            route_table: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plans_are_docs_security_md() {
        let e = engine(65521, 65521);
        assert_eq!(
            (e.keep_caps.len(), e.nofile, e.nproc_zero, e.fsize_zero),
            (0, 16, true, true)
        );
        assert!(e.landlock_dirs.is_empty() && e.contain_dirs.is_empty() && e.private_mount_ns);
        assert_eq!(e.seccomp, [BASE]);
        assert_eq!(network(1, 2).seccomp, [BASE, PACKET_IN]);
        let a = actuator(65522, 65522, false);
        assert_eq!(a.keep_caps, [Capability::CAP_NET_ADMIN]);
        assert_eq!((a.nofile, a.nproc_zero, a.fsize_zero), (32, true, false));
        assert_eq!(a.contain_dirs, [FD_STATE_DIR, FD_RUN_DIR]);
        assert_eq!(a.seccomp, [BASE, NETLINK, STATE_FILES]);
        let a = actuator(65522, 65522, true);
        assert_eq!(
            a.landlock_dirs,
            [FD_STATE_DIR, FD_RUN_DIR, FD_RESOLV_DIR].map(|fd| (fd, DirAccess::ReadWrite))
        );
        assert_eq!(a.contain_dirs, [FD_STATE_DIR, FD_RUN_DIR, FD_RESOLV_DIR]);
    }
}
