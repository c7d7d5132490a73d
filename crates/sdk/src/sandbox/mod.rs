//! Privilege drop and sandboxes for roles (DESIGN.md sections 1 and 3).
//!
//! A role calls [`apply`] early in its `main`, with the [`DropPlan`] the
//! service chose for it, and then installs its seccomp filter as the very
//! last step (the allow-lists do not contain the calls [`apply`] makes);
//! [`crate::role`] does both from the role's declared plan. The steps run
//! in this order, each for a reason:
//!
//! 0. Directory descriptors in `contain_dirs` are replaced by descriptors on
//!    private clones of their mounts, whose `..` stops at the directory
//!    (`CAP_SYS_ADMIN`; best effort, reported), so they do not lead out of
//!    the empty root of step 2 where Landlock is missing.
//! 1. Landlock preparation: open the allowed directories (paths need the
//!    host's file system, which step 2 hides) and build the ruleset (it needs
//!    a new fd, which the `RLIMIT_NOFILE` of step 8 may forbid).
//! 2. Optional private mount namespace whose root is an empty, read-only
//!    tmpfs (best effort: needs `CAP_SYS_ADMIN`; the report says if it holds).
//! 3. Clear the capability bounding set (needs `CAP_SETPCAP`, so before the
//!    uid change). A process that never held `CAP_SETPCAP` (a non-root
//!    container user with ambient capabilities) keeps the set it was given;
//!    no_new_privs makes it inert, and the report lists it.
//! 4. `PR_SET_KEEPCAPS`, so the permitted set survives the uid change.
//! 5. `setgroups([])`, `setresgid`, `setresuid`: numeric ids only, a static
//!    binary in a scratch image cannot look names up.
//! 6. Exactly `keep_caps` in permitted and effective; inheritable and ambient
//!    empty, so nothing survives an execve.
//! 7. Resource limits: `RLIMIT_NOFILE`, `RLIMIT_CORE` 0, optionally
//!    `RLIMIT_NPROC` 0 (no fork) and `RLIMIT_FSIZE` 0 (no file growth).
//! 8. `PR_SET_NO_NEW_PRIVS`, `PR_SET_DUMPABLE` 0 (no ptrace by same-uid
//!    processes, no core dumps, /proc/pid files owned by root).
//! 9. Re-arm `PR_SET_PDEATHSIG`: the kernel clears it on every credential
//!    change; if the parent died meanwhile the process exits.
//! 10. Landlock restriction (best effort: fully, partially or not enforced).

mod landlock;
mod mount;
mod privileges;
pub mod seccomp;

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use caps::Capability;

/// Exit status used when the supervisor died while a role dropped its
/// privileges (the role must not keep running orphaned).
pub const EXIT_PARENT_GONE: i32 = 70;

/// A directory a role may use under Landlock.
#[derive(Debug)]
pub enum DirRef<'a> {
    /// An open directory (any open mode, `O_PATH` is enough); survives the
    /// mount-namespace step, so this is what roles in an empty root use.
    Fd(BorrowedFd<'a>),
    /// A path, opened before the mount-namespace step.
    Path(PathBuf),
}

/// What a role may do beneath a [`LandlockDir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirAccess {
    /// List and read files.
    ReadOnly,
    /// Read, create, write, truncate, rename and delete regular files and
    /// directories; never execute, create devices, sockets, fifos or links.
    ReadWrite,
}

/// One directory hierarchy the Landlock ruleset allows.
#[derive(Debug)]
pub struct LandlockDir<'a> {
    pub dir: DirRef<'a>,
    pub access: DirAccess,
}

/// Everything [`apply`] does to a role.
#[derive(Debug)]
pub struct DropPlan<'a> {
    /// Numeric ids to switch to (real, effective and saved).
    pub uid: u32,
    pub gid: u32,
    /// Capabilities kept in the permitted and effective sets; every other
    /// one is gone for good (the bounding set is cleared).
    pub keep_caps: Vec<Capability>,
    /// `RLIMIT_NOFILE`, soft and hard: new fds get numbers below this.
    pub nofile: u64,
    /// `RLIMIT_NPROC` 0: the role cannot fork (its uid is not root).
    pub nproc_zero: bool,
    /// `RLIMIT_FSIZE` 0: the role cannot grow any file (SIGXFSZ).
    pub fsize_zero: bool,
    /// Move into a private mount namespace with an empty read-only root.
    pub private_mount_ns: bool,
    /// Directories Landlock allows; empty means no file access at all.
    pub landlock_dirs: Vec<LandlockDir<'a>>,
    /// Directory descriptors (the role's fixed numbers) to replace, at the
    /// same numbers, by descriptors nothing outside the directory can be
    /// reached from (step 0 of [`apply`]).
    pub contain_dirs: Vec<RawFd>,
    /// TCP ports Landlock lets the role connect to (ABI 4 and later; any
    /// address, this port); empty: no TCP connect at all. TCP bind is never
    /// allowed.
    pub tcp_connect_ports: Vec<u16>,
}

impl DropPlan<'_> {
    /// The strictest plan: nobody/nogroup (65534), no capabilities, 16 fds,
    /// no fork, no file growth, empty root, no file access. Roles loosen
    /// only what they need. Services set ids of their own: other software
    /// runs as `nobody` too, and could signal the role or write its files.
    pub fn strict() -> Self {
        DropPlan {
            uid: 65534,
            gid: 65534,
            keep_caps: Vec::new(),
            nofile: 16,
            nproc_zero: true,
            fsize_zero: true,
            private_mount_ns: true,
            landlock_dirs: Vec::new(),
            contain_dirs: Vec::new(),
            tcp_connect_ports: Vec::new(),
        }
    }
}

/// How much of the Landlock ruleset the running kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockState {
    FullyEnforced,
    /// An older kernel: some access rights could not be restricted.
    PartiallyEnforced,
    /// No Landlock in this kernel (or disabled at boot).
    NotEnforced,
}

impl LandlockState {
    /// Words for logs and status.json.
    pub const fn as_str(self) -> &'static str {
        match self {
            LandlockState::FullyEnforced => "fully enforced",
            LandlockState::PartiallyEnforced => "partially enforced",
            LandlockState::NotEnforced => "not enforced",
        }
    }
}

/// What is in force after [`apply`], for logs and status.json. Everything
/// not listed here is guaranteed (apply fails otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// Empty read-only root in a private mount namespace.
    pub mount_namespace: bool,
    /// Why the mount namespace is not in force (when asked for but missing).
    pub mount_namespace_error: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Capabilities left in the permitted and effective sets, as
    /// `CAP_NET_ADMIN`-style names, sorted.
    pub capabilities: Vec<String>,
    /// Capabilities left in the bounding set, sorted: empty unless the
    /// process started without `CAP_SETPCAP` (see [`apply`], step 3).
    #[serde(default)]
    pub bounding_set: Vec<String>,
    pub nofile: u64,
    pub nproc_zero: bool,
    pub fsize_zero: bool,
    pub no_new_privs: bool,
    pub landlock: LandlockState,
    /// Whether the plan's `contain_dirs` hold (`None`: none were given).
    #[serde(default)]
    pub dirs_contained: Option<bool>,
    /// Why they do not.
    #[serde(default)]
    pub dirs_contained_error: Option<String>,
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caps = if self.capabilities.is_empty() {
            "none".to_owned()
        } else {
            self.capabilities.join(",")
        };
        write!(
            f,
            "uid={} gid={} caps={}{} mount-ns={}{} landlock={} no-new-privs={} nofile={}{}{}",
            self.uid,
            self.gid,
            caps,
            if self.bounding_set.is_empty() {
                String::new()
            } else {
                format!(" bounding={}", self.bounding_set.join(","))
            },
            if self.mount_namespace {
                "private-empty-root"
            } else {
                "host"
            },
            match self.dirs_contained {
                None => "",
                Some(true) => " dir-fds=contained",
                Some(false) => " dir-fds=NOT-contained",
            },
            self.landlock.as_str(),
            self.no_new_privs,
            self.nofile,
            if self.nproc_zero { " nproc=0" } else { "" },
            if self.fsize_zero { " fsize=0" } else { "" },
        )
    }
}

/// A step of [`apply`] that failed. Every error is fatal for the role: the
/// process is half-dropped and must exit.
#[derive(Debug)]
pub enum SandboxError {
    /// A system call failed; `step` names it.
    Os { step: &'static str, source: io::Error },
    /// The capability library refused.
    Caps { step: &'static str, message: String },
    /// Landlock refused the ruleset (not "unsupported kernel", which is a
    /// report state, but a real error such as a bad directory).
    Landlock(String),
    /// After the drop, the kernel shows something other than the plan.
    Verify(String),
}

impl fmt::Display for SandboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SandboxError::Os { step, source } => write!(f, "sandbox: {step}: {source}"),
            SandboxError::Caps { step, message } => write!(f, "sandbox: {step}: {message}"),
            SandboxError::Landlock(m) => write!(f, "sandbox: landlock: {m}"),
            SandboxError::Verify(m) => write!(f, "sandbox: verification failed: {m}"),
        }
    }
}

impl std::error::Error for SandboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SandboxError::Os { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand for "system call in `step` failed with errno".
pub(crate) fn os_err(step: &'static str) -> SandboxError {
    SandboxError::Os {
        step,
        source: io::Error::last_os_error(),
    }
}

/// What a supervisor keeps once its roles run: enough to start a new
/// engine (which drops to its own plan) and to stop the roles, nothing that
/// touches the network or files (no NET_ADMIN, NET_RAW, DAC_OVERRIDE...).
pub const SUPERVISOR_CAPS: [Capability; 5] = [
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_KILL,
];

/// Whether the calling thread holds `cap` in its effective set and its
/// bounding set: what a supervisor needs to start a role that keeps `cap`
/// (a role executed by root gets its permitted set from the bounding set,
/// and asks for nothing it was not given). A container started without
/// the capability (`--cap-drop`, or a runtime's default set) has it in
/// neither. It says nothing of user namespaces: a capability held in one
/// other than the initial one passes here and the kernel still refuses
/// what needs the initial one (CAP_SYS_TIME's clock calls); only trying
/// tells (`mirage_sdk::clock::probe_clock_control`).
pub fn holds(cap: Capability) -> bool {
    use caps::CapSet;
    let has = |set| caps::has_cap(None, set, cap).unwrap_or(false);
    has(CapSet::Effective) && has(CapSet::Bounding)
}

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
    set_not_dumpable().map_err(|e| e.to_string())
}

/// Make the calling process non-dumpable (`PR_SET_DUMPABLE` 0): no core
/// file, and no ptrace attach or /proc access from processes of the same
/// uid. [`apply`] does this to every role; a supervisor that shares its uid
/// with its roles (a container run as a non-root user) calls it for itself.
pub fn set_not_dumpable() -> Result<(), SandboxError> {
    privileges::set_not_dumpable()
}

/// `RLIMIT_NPROC` 0 now: for a role that started a thread of its own
/// after [`apply`] (a tender's watchdog), whose plan asked for no fork; the
/// limit only stops new processes and threads, not those that exist.
pub fn forbid_new_processes() -> Result<(), SandboxError> {
    privileges::setrlimit("RLIMIT_NPROC", libc::RLIMIT_NPROC, 0)
}

/// Drop privileges as `plan` says (see the module docs for the order). Call
/// it single-threaded, early in the role's `main`, then install the role's
/// seccomp filter. If the parent (supervisor) died meanwhile, the process
/// exits with [`EXIT_PARENT_GONE`] instead of returning.
pub fn apply(plan: &DropPlan<'_>) -> Result<SandboxReport, SandboxError> {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let mut dirs_contained_error = None;
    for &fd in &plan.contain_dirs {
        if let Err(e) = mount::contain_dir(fd) {
            dirs_contained_error = Some(format!("fd {fd}: {e}"));
            break;
        }
    }
    let dirs_contained = (!plan.contain_dirs.is_empty()).then_some(dirs_contained_error.is_none());
    let ruleset = landlock::prepare(&plan.landlock_dirs, &plan.tcp_connect_ports)?;

    let (mount_namespace, mount_namespace_error) = if plan.private_mount_ns {
        match mount::enter_empty_root() {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        }
    } else {
        (false, None)
    };

    let bounding_left = privileges::clear_bounding_set()?;
    privileges::set_keepcaps(true)?;
    privileges::switch_ids(plan.uid, plan.gid)?;
    privileges::set_caps(&plan.keep_caps)?;
    privileges::set_keepcaps(false)?;
    privileges::set_rlimits(plan)?;
    privileges::set_no_new_privs()?;
    privileges::set_not_dumpable()?;
    privileges::rearm_pdeathsig()?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        // Re-parented: the supervisor is gone and nobody will read our
        // messages or stop us; do not run on half-configured.
        std::process::exit(EXIT_PARENT_GONE);
    }
    let landlock = landlock::restrict(ruleset)?;

    let capabilities = privileges::verify(plan, bounding_left)?;
    Ok(SandboxReport {
        mount_namespace,
        mount_namespace_error,
        uid: plan.uid,
        gid: plan.gid,
        capabilities,
        bounding_set: privileges::names_of(bounding_left),
        nofile: plan.nofile,
        nproc_zero: plan.nproc_zero,
        fsize_zero: plan.fsize_zero,
        no_new_privs: true,
        landlock,
        dirs_contained,
        dirs_contained_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit `cap` of the hexadecimal `field` (CapEff, CapBnd) of this
    /// thread's /proc status.
    fn proc_bit(status: &str, field: &str, cap: Capability) -> bool {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:\t")))
            .unwrap_or_else(|| panic!("{field} in {status}"));
        u64::from_str_radix(line.trim(), 16).unwrap() & cap.bitmask() != 0
    }

    fn proc_holds(cap: Capability) -> bool {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        proc_bit(&status, "CapEff", cap) && proc_bit(&status, "CapBnd", cap)
    }

    #[test]
    fn holds_is_the_effective_and_the_bounding_set() {
        for cap in [
            Capability::CAP_SYS_TIME,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_SETPCAP,
            Capability::CAP_CHOWN,
        ] {
            assert_eq!(holds(cap), proc_holds(cap), "{cap}");
        }
        // A thread that drops CAP_SYS_TIME from its bounding set (as a
        // container runtime does before it runs the service) no longer
        // holds it, though it is still in its effective set; the other
        // threads are untouched (the bounding set is per thread).
        if !(holds(Capability::CAP_SYS_TIME) && holds(Capability::CAP_SETPCAP)) {
            assert!(
                !rustix::process::geteuid().is_root(),
                "root without CAP_SYS_TIME or CAP_SETPCAP: the drop cannot be tested"
            );
            eprintln!("not root: the bounding-set drop is not tested here");
            return;
        }
        std::thread::spawn(|| {
            caps::drop(None, caps::CapSet::Bounding, Capability::CAP_SYS_TIME).unwrap();
            assert!(caps::has_cap(None, caps::CapSet::Effective, Capability::CAP_SYS_TIME).unwrap());
            assert!(!holds(Capability::CAP_SYS_TIME));
            assert!(!proc_holds(Capability::CAP_SYS_TIME));
            assert!(holds(Capability::CAP_SETPCAP));
        })
        .join()
        .unwrap();
        assert!(holds(Capability::CAP_SYS_TIME));
    }
}
