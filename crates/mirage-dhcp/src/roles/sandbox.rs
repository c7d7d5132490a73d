//! How each role drops its privileges: the per-role plans of
//! docs/security.md, built on the SDK's sandbox (privilege drop, then the
//! role's seccomp allow-list, installed last).

use mirage_sdk::sandbox::seccomp::{self, Role};
use mirage_sdk::sandbox::{Capability, DirAccess, DirRef, DropPlan, LandlockDir};

use super::{FD_RESOLV_DIR, FD_RUN_DIR, FD_STATE_DIR, RoleArgs};
use crate::config::SandboxKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Engine,
    Network,
    Actuator,
}

pub fn enter(args: &RoleArgs, profile: Profile) -> Result<(), String> {
    let mut plan = DropPlan::strict();
    plan.uid = args.uid;
    plan.gid = args.gid;
    let role = match profile {
        // Nothing at all: the channel (and, for the network role, the packet
        // socket opened by the supervisor) are all these roles use.
        Profile::Engine => Role::Engine,
        Profile::Network => Role::Network,
        Profile::Actuator => {
            plan.keep_caps = vec![Capability::CAP_NET_ADMIN];
            plan.fsize_zero = false;
            plan.nofile = 32;
            let rw = |fd| LandlockDir {
                dir: DirRef::Fd(mirage_sdk::fd::borrow_fixed(fd)),
                access: DirAccess::ReadWrite,
            };
            plan.landlock_dirs = vec![rw(FD_STATE_DIR), rw(FD_RUN_DIR)];
            plan.contain_dirs = vec![FD_STATE_DIR, FD_RUN_DIR];
            if args.resolv_name.is_some() {
                plan.landlock_dirs.push(rw(FD_RESOLV_DIR));
                plan.contain_dirs.push(FD_RESOLV_DIR);
            }
            Role::Actuator
        }
    };
    if args.sandbox == SandboxKind::None {
        plan.private_mount_ns = false;
    }
    let report = mirage_sdk::sandbox::apply(&plan).map_err(|e| e.to_string())?;
    if let Some(why) = &report.mount_namespace_error {
        log::warn!("no private mount namespace: {why}");
    }
    if let Some(why) = &report.dirs_contained_error {
        log::warn!("directory descriptors not contained (Landlock alone fences them): {why}");
    }
    match args.sandbox {
        SandboxKind::Seccomp => {
            seccomp::install(role).map_err(|e| format!("seccomp: {e}"))?;
            log::info!("sandbox: {report} seccomp={}", role.as_str());
        }
        SandboxKind::None => log::warn!("sandbox: {report} seccomp=OFF"),
    }
    Ok(())
}

/// What the supervisor keeps once the roles run: enough to start a new
/// engine (which drops to its own plan) and to stop the roles, nothing that
/// touches the network or files (no NET_ADMIN, NET_RAW, DAC_OVERRIDE...).
pub const SUPERVISOR_CAPS: [Capability; 5] = [
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_KILL,
];

/// Reduce the supervisor to [`SUPERVISOR_CAPS`] in every set, bounding set
/// included, so an engine started later inherits no more than that.
///
/// Started as a non-root uid with ambient capabilities (the container
/// setup of docs/security.md) the supervisor holds only NET_RAW and
/// NET_ADMIN, none of [`SUPERVISOR_CAPS`]: it ends with no capability at
/// all, and its bounding set, which it cannot shrink without CAP_SETPCAP,
/// stays as the runtime set it (the roles' no_new_privs makes it inert).
/// Clearing the inheritable set also clears the ambient set, so an engine
/// restarted later starts with nothing. The supervisor is made non-dumpable:
/// in that setup it shares its uid with the roles, and a same-uid process
/// must not be able to ptrace it or read its /proc files.
pub fn drop_supervisor() -> Result<(), String> {
    use caps::CapSet;
    let keep: caps::CapsHashSet = SUPERVISOR_CAPS.iter().copied().collect();
    let current = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    if current.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("bounding {cap}: {e}"))?;
            }
        }
    }
    let kept: caps::CapsHashSet = keep.intersection(&current).copied().collect();
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new()).map_err(|e| e.to_string())?;
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("ambient: {e}"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| e.to_string())?;
    mirage_sdk::sandbox::set_not_dumpable().map_err(|e| e.to_string())
}
