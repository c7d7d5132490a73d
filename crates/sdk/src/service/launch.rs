//! A supervisor's start, the same for every service: its roles start side
//! by side, then the supervisor drops to what starting and stopping roles
//! needs while they exec, then each start is confirmed.
//!
//! ```no_run
//! # fn specs() -> Vec<mirage_sdk::runtime::RoleSpec<'static>> { vec![] }
//! # fn plans() -> Vec<mirage_sdk::role::RolePlan> { vec![] }
//! use mirage_sdk::service::{SandboxKind, launch};
//!
//! let (specs, plans) = (specs(), plans()); // specs borrow the privileged descriptors
//! let starting = launch::start_all(&specs)?;
//! drop(specs); // and the descriptors themselves: the supervisor keeps none
//! let roles = launch::confine(starting, SandboxKind::Seccomp, &plans.iter().collect::<Vec<_>>())?;
//! # Ok::<(), String>(())
//! ```

use crate::role::RolePlan;
use crate::runtime::{Role, RoleSpec, StartingRole};
use crate::sandbox::seccomp;

use super::SandboxKind;

/// Start every role without waiting for any exec: each fork returns at
/// once, and the children exec and drop their privileges in parallel
/// instead of one after the other (their start-up is most of the time to
/// a service's first packet). Messages to a role wait in its channel.
pub fn start_all(specs: &[RoleSpec<'_>]) -> Result<Vec<StartingRole>, String> {
    specs.iter().map(RoleSpec::start).collect()
}

/// Sandbox the supervisor, then confirm each role's exec. The supervisor's
/// drop ([`crate::sandbox::drop_supervisor`]) and, unless the sandbox is
/// [`SandboxKind::None`], its filter come before the confirmation: the
/// children are past the fork and inherit nothing more from it, and
/// confirming takes no privilege, so the filter's compile and install
/// overlap the roles' start-up. Roles started later (a restarted engine)
/// inherit the filter and stack their own on top, so it holds every role's
/// list (`plans`: every role the service may ever start), and with
/// [`SandboxKind::Kvm`] what building a VM takes
/// ([`seccomp::KVM_SETUP`]): a restarted engine builds its VM under it.
/// Drop the privileged descriptors the roles got before calling this.
pub fn confine(
    starting: Vec<StartingRole>,
    sandbox: SandboxKind,
    plans: &[&RolePlan],
) -> Result<Vec<Role>, String> {
    crate::sandbox::drop_supervisor().map_err(|e| format!("dropping supervisor privileges: {e}"))?;
    if sandbox.filtered() {
        let kvm = seccomp::kvm_setup_plan();
        let mut plans = plans.to_vec();
        if sandbox == SandboxKind::Kvm {
            plans.push(&kvm);
        }
        seccomp::install_supervisor(&plans).map_err(|e| format!("supervisor seccomp: {e}"))?;
    }
    starting.into_iter().map(StartingRole::finish).collect()
}
