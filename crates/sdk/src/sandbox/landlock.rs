//! Landlock: file-system access limited to the role's own directories, no
//! TCP bind, TCP connect only to the ports a plan names (none by default),
//! no signals to or abstract-socket connections with processes outside the
//! role.
//!
//! We ask for the rights of Landlock ABI 6 (Linux 6.12: file system,
//! TCP, signal and abstract-socket scoping) in the crate's best-effort mode,
//! so an older kernel enforces what it can and the report says "partially"
//! or "not enforced". Signal scoping also stops a compromised role from
//! killing its sibling roles where they share a uid (a supervisor started
//! as a non-root uid cannot give each role its own).

use ::landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::{DirAccess, DirRef, LandlockDir, LandlockState, SandboxError};

/// The ABI whose rights we request (see the module docs).
const TARGET_ABI: ABI = ABI::V6;

fn rights(access: DirAccess) -> BitFlags<AccessFs> {
    match access {
        DirAccess::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
        DirAccess::ReadWrite => {
            AccessFs::ReadFile
                | AccessFs::ReadDir
                | AccessFs::WriteFile
                | AccessFs::Truncate
                | AccessFs::MakeReg
                | AccessFs::MakeDir
                | AccessFs::RemoveFile
                | AccessFs::RemoveDir
        }
    }
}

fn ll_err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Landlock(e.to_string())
}

/// Build the ruleset while paths still resolve and new fds are allowed.
pub(super) fn prepare(
    dirs: &[LandlockDir<'_>],
    tcp_connect_ports: &[u16],
) -> Result<RulesetCreated, SandboxError> {
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .handle_access(AccessNet::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .create()
        .map_err(ll_err)?;
    for d in dirs {
        created = match &d.dir {
            DirRef::Fd(fd) => created.add_rule(PathBeneath::new(*fd, rights(d.access))),
            DirRef::Path(p) => {
                let fd = PathFd::new(p).map_err(|e| ll_err(format!("{}: {e}", p.display())))?;
                created.add_rule(PathBeneath::new(fd, rights(d.access)))
            }
        }
        .map_err(ll_err)?;
    }
    for &port in tcp_connect_ports {
        created = created
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(ll_err)?;
    }
    Ok(created)
}

/// Enforce the ruleset on this thread and its future children.
pub(super) fn restrict(created: RulesetCreated) -> Result<LandlockState, SandboxError> {
    let status = created.restrict_self().map_err(ll_err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockState::FullyEnforced,
        RulesetStatus::PartiallyEnforced => LandlockState::PartiallyEnforced,
        RulesetStatus::NotEnforced => LandlockState::NotEnforced,
    })
}
