//! The example's roles, declared as data: the supervisor starts them from
//! these plans, and the end-to-end tests start a single role from the very
//! same ones (`mirage_testkit::role::start_planned`).

use std::os::fd::RawFd;

use mirage_sdk::role::RolePlan;
use mirage_sdk::sandbox::seccomp;

/// The roles' uid = gid: ids of the service's own, not `nobody`'s.
pub const ENGINE_ID: u32 = 65524;
pub const NETWORK_ID: u32 = 65525;
/// The network role's connected UDP socket (its channel is 3).
pub const FD_SOCKET: RawFd = 4;

/// The engine: nothing but its channel, the SDK's base list.
pub fn engine() -> RolePlan {
    RolePlan::strict("engine", ENGINE_ID, ENGINE_ID, &[seccomp::BASE])
}

/// The network role: its connected socket (`send`/`recv` are `sendto`/
/// `recvfrom` without an address, in the base list) and `recvmsg`.
pub fn network() -> RolePlan {
    RolePlan::strict(
        "network",
        NETWORK_ID,
        NETWORK_ID,
        &[seccomp::BASE, seccomp::PACKET_IN],
    )
}
