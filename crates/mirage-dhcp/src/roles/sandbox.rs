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
