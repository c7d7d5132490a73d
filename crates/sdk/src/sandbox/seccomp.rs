//! Seccomp allow-lists as data, compiled with seccompiler. Any call not on
//! a role's list kills the whole process (SIGSYS,
//! `SECCOMP_RET_KILL_PROCESS`): a role that makes an unexpected call is
//! compromised or broken, and the supervisor restarts it.
//!
//! A role's list is composed from tables: the SDK's building blocks
//! ([`BASE`], [`PACKET_IN`], [`NETLINK`], [`STATE_FILES`], and [`TENDER`]
//! for an engine run as a KVM guest) and the
//! service's own `&'static [Allow]` tables, written with [`allow!`](crate::allow)
//! and the names of [`sys`]:
//!
//! ```
//! use mirage_sdk::sandbox::seccomp::{self, Allow};
//! const CLOCK: &[Allow] = &[mirage_sdk::allow!(clock_adjtime)];
//! let program = seccomp::filter(&[seccomp::BASE, CLOCK]).unwrap();
//! assert!(program.len() > 20);
//! ```
//!
//! Filters are inherited and stack: a role started by a filtered supervisor
//! runs under both filters, so the supervisor's list ([`supervisor_list`])
//! is the union of every role's list, of what a role's start-up and its
//! [`super::apply`] need ([`SUPERVISOR`]), and of the supervisor's own
//! event loop and files.
//!
//! No SDK table contains `socket`, `bind`, `connect`, `ptrace`,
//! `process_vm_*`, `setns`, `vfork`, `clone3` (its flags live in memory, out
//! of the filter's sight) or an unconditional `unshare`: unprivileged user
//! namespaces are enabled on typical hosts, so a uid-65534 process could
//! otherwise `unshare(CLONE_NEWUSER)` and gain a fresh set of
//! namespace-local capabilities to attack the kernel with. Only
//! [`SUPERVISOR`] holds `fork` (x86_64, where musl's fork() calls it; it
//! takes no flags). A role refuses to install a list that breaks these
//! rules ([`check_role_list`]), whoever composed it.
//!
//! A sandboxed role may signal only itself, and only with SIGABRT (its abort
//! path): in a container every role shares one uid, so a wider `tgkill`
//! would let a compromised engine abort the supervisor. The role's own pid is
//! written into its filter when the filter is compiled, in the role.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};
use serde::{Deserialize, Serialize};

pub use seccompiler::BpfProgram as Program;

/// When an allowed call is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum When {
    Always,
    /// Argument `n` (0-based) equals the value.
    ArgEq(u8, u64),
    /// `ioctl` with this request (the kernel reads it as a 32-bit
    /// `unsigned int`, and a libc may sign-extend it, so only the low 32
    /// bits are compared).
    Ioctl(u32),
    /// `ioctl` on this descriptor with this request (32 bits each, as the
    /// kernel reads them).
    IoctlOn {
        fd: i32,
        request: u32,
    },
    /// Argument `n` has none of the mask's bits set.
    ArgMaskClear(u8, u64),
    /// Argument `pid_arg` is the calling process's own pid and argument
    /// `arg` equals `value`. The pid is the compiling process's (see
    /// [`filter`]).
    OwnPidAndArgEq {
        pid_arg: u8,
        arg: u8,
        value: u64,
    },
}

/// One entry of an allow-list table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allow {
    pub nr: i64,
    pub name: &'static str,
    pub when: When,
}

/// One entry of an allow-list as it travels to a role (its hello): the
/// number and condition are what the filter is built from, the name is for
/// logs and errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub nr: i64,
    pub when: When,
    pub name: String,
}

impl From<&Allow> for Rule {
    fn from(a: &Allow) -> Rule {
        Rule {
            nr: a.nr,
            when: a.when,
            name: a.name.to_owned(),
        }
    }
}

/// An allow-list entry: `allow!(read)` allows `read` always,
/// `allow!(write, When::ArgEq(0, 2))` only when the condition holds. The
/// name is a syscall of [`sandbox::seccomp::sys`](crate::sandbox::seccomp::sys).
#[macro_export]
macro_rules! allow {
    ($name:ident) => {
        $crate::allow!($name, $crate::sandbox::seccomp::When::Always)
    };
    ($name:ident, $when:expr) => {
        $crate::sandbox::seccomp::Allow {
            nr: $crate::sandbox::seccomp::sys::$name,
            name: stringify!($name),
            when: $when,
        }
    };
}
pub use crate::allow;

/// Syscall numbers by their kernel names (so the tables read like strace).
///
/// Some numbers here are in no SDK table, on purpose: `clock_adjtime`,
/// `clock_settime` and `adjtimex` for a clock actuator's own table, and
/// **`socket`, `bind` and `connect`, which no role should ever need**: every
/// socket is opened by the supervisor before its filter and handed over at
/// a fixed number. A role that may open sockets can reach any network
/// (another interface, another namespace's abstract socket, the metadata
/// server) whatever its descriptors say; a table that names them needs its
/// own security review (docs/security.md).
#[allow(non_upper_case_globals)]
pub mod sys {
    macro_rules! nrs {
        ($($name:ident => $sys:ident),* $(,)?) => { $(pub const $name: i64 = libc::$sys as i64;)* };
    }
    nrs!(
        read => SYS_read, write => SYS_write, writev => SYS_writev, recvfrom => SYS_recvfrom,
        sendto => SYS_sendto, recvmsg => SYS_recvmsg, sendmsg => SYS_sendmsg, ppoll => SYS_ppoll,
        clock_gettime => SYS_clock_gettime, exit => SYS_exit, exit_group => SYS_exit_group, brk => SYS_brk,
        mmap => SYS_mmap, mprotect => SYS_mprotect, munmap => SYS_munmap, mremap => SYS_mremap,
        madvise => SYS_madvise, rt_sigreturn => SYS_rt_sigreturn, rt_sigprocmask => SYS_rt_sigprocmask,
        sigaltstack => SYS_sigaltstack, futex => SYS_futex, getrandom => SYS_getrandom, tgkill => SYS_tgkill,
        gettid => SYS_gettid, getpid => SYS_getpid, close => SYS_close, restart_syscall => SYS_restart_syscall,
        openat => SYS_openat, fsync => SYS_fsync, fdatasync => SYS_fdatasync, renameat2 => SYS_renameat2,
        unlinkat => SYS_unlinkat, fchmod => SYS_fchmod, fstat => SYS_fstat, newfstatat => SYS_newfstatat,
        statx => SYS_statx, lseek => SYS_lseek, getdents64 => SYS_getdents64, ftruncate => SYS_ftruncate,
        pread64 => SYS_pread64, recvmmsg => SYS_recvmmsg, sendmmsg => SYS_sendmmsg,
        clone => SYS_clone, clone3 => SYS_clone3, execve => SYS_execve, wait4 => SYS_wait4, waitid => SYS_waitid,
        kill => SYS_kill, tkill => SYS_tkill, pipe2 => SYS_pipe2, dup => SYS_dup, dup3 => SYS_dup3,
        close_range => SYS_close_range, fcntl => SYS_fcntl, socketpair => SYS_socketpair, prctl => SYS_prctl,
        setresuid => SYS_setresuid, setresgid => SYS_setresgid, setgroups => SYS_setgroups,
        getgroups => SYS_getgroups, capget => SYS_capget, capset => SYS_capset, prlimit64 => SYS_prlimit64,
        getuid => SYS_getuid, geteuid => SYS_geteuid, getgid => SYS_getgid, getegid => SYS_getegid,
        getresuid => SYS_getresuid, getresgid => SYS_getresgid, getppid => SYS_getppid, seccomp => SYS_seccomp,
        landlock_create_ruleset => SYS_landlock_create_ruleset, landlock_add_rule => SYS_landlock_add_rule,
        landlock_restrict_self => SYS_landlock_restrict_self, unshare => SYS_unshare, mount => SYS_mount,
        umount2 => SYS_umount2, pivot_root => SYS_pivot_root, chdir => SYS_chdir, fchdir => SYS_fchdir,
        rt_sigaction => SYS_rt_sigaction, set_tid_address => SYS_set_tid_address,
        set_robust_list => SYS_set_robust_list, rseq => SYS_rseq, nanosleep => SYS_nanosleep,
        clock_nanosleep => SYS_clock_nanosleep, sched_yield => SYS_sched_yield,
        sched_getaffinity => SYS_sched_getaffinity, uname => SYS_uname, readlinkat => SYS_readlinkat,
        getsockopt => SYS_getsockopt, accept4 => SYS_accept4, open_tree => SYS_open_tree, ioctl => SYS_ioctl,
        clock_adjtime => SYS_clock_adjtime, clock_settime => SYS_clock_settime, adjtimex => SYS_adjtimex,
        // In no SDK table: see the module docs.
        socket => SYS_socket, bind => SYS_bind, connect => SYS_connect, setsockopt => SYS_setsockopt,
        getpeername => SYS_getpeername, getsockname => SYS_getsockname,
    );
    #[cfg(target_arch = "x86_64")]
    nrs!(poll => SYS_poll, renameat => SYS_renameat, dup2 => SYS_dup2, arch_prctl => SYS_arch_prctl,
         readlink => SYS_readlink, fork => SYS_fork, open => SYS_open);
}

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const SIGABRT: u64 = libc::SIGABRT as u64;

/// `clone` flags that create namespaces. The low byte of clone's flags is
/// the exit signal, so CLONE_NEWTIME (0x80, clone3/unshare only) is not
/// among them.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Every role: an event loop over its channel fd (and the sockets it was
/// given), logging to stderr. Alone, this is an engine's whole list.
pub const BASE: &[Allow] = &[
    allow!(read),
    allow!(recvfrom),
    // Logging only: fd 2. Sending only on connected sockets (no address).
    allow!(write, When::ArgEq(0, 2)),
    allow!(writev, When::ArgEq(0, 2)),
    allow!(sendto, When::ArgEq(4, 0)),
    allow!(ppoll),
    #[cfg(target_arch = "x86_64")]
    allow!(poll),
    allow!(clock_gettime),
    allow!(exit),
    allow!(exit_group),
    // The allocator. No executable mappings: a role never loads code.
    allow!(brk),
    allow!(mmap, When::ArgMaskClear(2, PROT_EXEC)),
    allow!(mprotect, When::ArgMaskClear(2, PROT_EXEC)),
    allow!(munmap),
    allow!(mremap),
    allow!(madvise),
    allow!(futex),
    // A libc's malloc may seed itself; std's HashMap keys.
    allow!(getrandom),
    allow!(rt_sigreturn),
    allow!(rt_sigprocmask),
    allow!(sigaltstack),
    // The kernel restarts interrupted sleeps/polls with this call.
    allow!(restart_syscall),
    // abort(): glibc raises SIGABRT with tgkill(getpid(), gettid(), SIGABRT),
    // musl with tkill(gettid(), SIGABRT); roles are single-threaded, so the
    // thread id is the pid.
    allow!(
        tgkill,
        When::OwnPidAndArgEq {
            pid_arg: 0,
            arg: 2,
            value: SIGABRT
        }
    ),
    allow!(
        tkill,
        When::OwnPidAndArgEq {
            pid_arg: 0,
            arg: 1,
            value: SIGABRT
        }
    ),
    allow!(getpid),
    allow!(gettid),
    // Dropping a channel at shutdown. Debug builds of std check that an
    // OwnedFd is still open before closing it, with fcntl(fd, F_GETFD).
    allow!(close),
    allow!(fcntl, When::ArgEq(1, libc::F_GETFD as u64)),
];

/// Frames in with their PACKET_AUXDATA (a network role on a packet
/// socket). Frames go out with [`BASE`]'s `sendto` without an address, so
/// only on the interface the packet socket is bound to: a `sockaddr_ll` (or
/// `sendmsg`, whose address lives in memory, out of the filter's sight)
/// could name any other interface.
pub const PACKET_IN: &[Allow] = &[allow!(recvmsg)];

/// rtnetlink on the sockets a role was given: requests carry a
/// `sockaddr_nl` (the kernel), answers and events come with their sender.
pub const NETLINK: &[Allow] = &[allow!(sendto), allow!(sendmsg), allow!(recvfrom), allow!(recvmsg)];

/// State files in the directory descriptors a role was given (Landlock
/// and the contained descriptors say which): atomic replace, fsync,
/// removal, listing.
pub const STATE_FILES: &[Allow] = &[
    allow!(openat),
    allow!(read),
    allow!(write),
    allow!(fsync),
    allow!(fdatasync),
    allow!(renameat2),
    #[cfg(target_arch = "x86_64")]
    allow!(renameat),
    allow!(unlinkat),
    allow!(fchmod),
    allow!(fstat),
    allow!(newfstatat),
    allow!(statx),
    allow!(lseek),
    allow!(close),
    allow!(getdents64),
    allow!(ftruncate),
];

/// The tender of a KVM guest ([`crate::kvm`]), on top of [`BASE`]: its
/// channel I/O, clock, allocator and exit are [`BASE`]'s; beyond them,
/// `KVM_RUN` on its vCPU's descriptor (fixed at [`FD_VCPU`]), reading the
/// guest's system registers there after a page fault (for the faulting
/// address), and what the watchdog thread needs: its sleeps and kicking
/// the vCPU thread (the process's first) out of `KVM_RUN` with the one
/// signal [`mirage_kvm::KICK_SIGNAL`]. No other ioctl on any descriptor:
/// the VM's and the device's are gone, the guest's memory map is fixed.
pub const TENDER: &[Allow] = &[
    allow!(
        ioctl,
        When::IoctlOn {
            fd: FD_VCPU,
            request: mirage_kvm::ioctls::KVM_RUN as u32
        }
    ),
    allow!(
        ioctl,
        When::IoctlOn {
            fd: FD_VCPU,
            request: mirage_kvm::ioctls::KVM_GET_SREGS as u32
        }
    ),
    allow!(
        tgkill,
        When::OwnPidAndArgEq {
            pid_arg: 0,
            arg: 2,
            value: KICK_SIGNAL
        }
    ),
    allow!(
        tkill,
        When::OwnPidAndArgEq {
            pid_arg: 0,
            arg: 1,
            value: KICK_SIGNAL
        }
    ),
    allow!(nanosleep),
    allow!(clock_nanosleep),
];

/// Where a tender's vCPU descriptor is: the first two numbers after the
/// role's channel (3) and the KVM device (4) are the VM's and the vCPU's,
/// made before the filter ([`crate::kvm`] checks it).
pub const FD_VCPU: i32 = 6;

const KICK_SIGNAL: u64 = mirage_kvm::KICK_SIGNAL as u64;

/// What building a VM takes ([`mirage_kvm::Vm::new`] on the KVM device a
/// tender is given, and reading a configured image): for the supervisor's list only, so that an engine it
/// restarts can build its VM under the supervisor's filter before it
/// installs its own ([`TENDER`]). Each request by number; no other ioctl.
pub const KVM_SETUP: &[Allow] = &[
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_CREATE_VM as u32)),
    allow!(
        ioctl,
        When::Ioctl(mirage_kvm::ioctls::KVM_GET_VCPU_MMAP_SIZE as u32)
    ),
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_CHECK_EXTENSION as u32)),
    allow!(
        ioctl,
        When::Ioctl(mirage_kvm::ioctls::KVM_GET_SUPPORTED_CPUID as u32)
    ),
    allow!(
        ioctl,
        When::Ioctl(mirage_kvm::ioctls::KVM_SET_USER_MEMORY_REGION as u32)
    ),
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_CREATE_VCPU as u32)),
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_SET_CPUID2 as u32)),
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_GET_SREGS as u32)),
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_SET_SREGS as u32)),
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_SET_FPU as u32)),
    allow!(ioctl, When::Ioctl(mirage_kvm::ioctls::KVM_SET_REGS as u32)),
    // A configured guest image, read from offset 0 of the descriptor every
    // engine shares (crate::kvm::FD_GUEST_IMAGE); plain `read` is BASE's.
    allow!(pread64),
];

/// The supervisor's own: spawning, reaping, signalling, and what a
/// re-executed role needs before its own filter is in place (static libc
/// and Rust start-up, then [`super::apply`]).
pub const SUPERVISOR: &[Allow] = &[
    // Processes and threads, without namespaces (see module docs for clone3).
    allow!(clone, When::ArgMaskClear(0, CLONE_NAMESPACE_FLAGS)),
    allow!(execve),
    allow!(wait4),
    allow!(waitid),
    allow!(kill),
    allow!(tgkill),
    allow!(tkill),
    allow!(rt_sigaction),
    allow!(nanosleep),
    allow!(clock_nanosleep),
    allow!(sched_yield),
    allow!(sched_getaffinity),
    // Descriptors: pipes for role stderr, channels for restarted roles,
    // placing fds at fixed numbers.
    allow!(pipe2),
    allow!(socketpair, When::ArgEq(0, libc::AF_UNIX as u64)),
    allow!(dup),
    allow!(dup3),
    allow!(close_range),
    allow!(fcntl),
    // A restarted role checks that its inherited fds are what it expects
    // (SO_DOMAIN, SO_TYPE) before it installs its own filter.
    allow!(getsockopt),
    // Start-up of a re-executed static binary.
    allow!(set_tid_address),
    allow!(set_robust_list),
    allow!(rseq),
    allow!(prlimit64),
    allow!(uname),
    allow!(readlinkat),
    // A role's privilege drop (super::apply) and filter installation.
    allow!(prctl),
    allow!(setresuid),
    allow!(setresgid),
    allow!(setgroups),
    allow!(getgroups),
    allow!(capget),
    allow!(capset),
    allow!(getuid),
    allow!(geteuid),
    allow!(getgid),
    allow!(getegid),
    allow!(getresuid),
    allow!(getresgid),
    allow!(getppid),
    allow!(seccomp),
    allow!(landlock_create_ruleset),
    allow!(landlock_add_rule),
    allow!(landlock_restrict_self),
    // The role's private mount namespace: only CLONE_NEWNS, never a user
    // namespace; mount and pivot_root need CAP_SYS_ADMIN anyway.
    allow!(unshare, When::ArgEq(0, libc::CLONE_NEWNS as u64)),
    allow!(mount),
    allow!(umount2),
    allow!(pivot_root),
    // Contained directory descriptors (a restarted role that is given any).
    allow!(open_tree),
    allow!(chdir),
    allow!(fchdir),
    #[cfg(target_arch = "x86_64")]
    allow!(dup2),
    #[cfg(target_arch = "x86_64")]
    allow!(arch_prctl),
    #[cfg(target_arch = "x86_64")]
    allow!(readlink),
    // musl's fork() and open() use the legacy calls where the architecture
    // has them: fork carries no flags (no namespaces), and open is the
    // supervisor's /dev/null for a restarted role.
    #[cfg(target_arch = "x86_64")]
    allow!(fork),
    #[cfg(target_arch = "x86_64")]
    allow!(open),
];

/// What every supervisor's list holds whatever its roles: its event loop
/// ([`BASE`], with reads and writes on its channels, pipes and signal
/// pipe), the files it may write itself (a service without an actuator
/// publishes its status; glibc opens /dev/null with `openat`), and
/// [`SUPERVISOR`]. [`PACKET_IN`] and [`NETLINK`] are the receive and send
/// calls of its channels and log pipes.
pub const SUPERVISOR_TABLES: &[&[Allow]] = &[BASE, PACKET_IN, NETLINK, STATE_FILES, SUPERVISOR];

/// A composed list as data: every entry of every table (a call may appear
/// more than once with different conditions; any entry that matches allows
/// the call).
pub fn allow_list(tables: &[&[Allow]]) -> Vec<Allow> {
    tables.iter().flat_map(|t| t.iter()).copied().collect()
}

/// The supervisor's list: [`SUPERVISOR_TABLES`] and every table of every
/// role it starts, so a role started later (a restarted engine) can make
/// every call its own filter allows.
pub fn supervisor_list(roles: &[&[&[Allow]]]) -> Vec<Allow> {
    let mut list = allow_list(SUPERVISOR_TABLES);
    for tables in roles {
        list.extend(allow_list(tables));
    }
    list
}

/// Calls a role's list may never hold, whoever composed it: they escape
/// the sandbox (another namespace, another process's memory, a new
/// program) or hide their arguments from the filter (`clone3`).
const NEVER_FOR_ROLES: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_setns,
    libc::SYS_clone3,
    libc::SYS_clone,
    libc::SYS_unshare,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_kill,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_fork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vfork,
];

/// Refuse a role's list that breaks the rules of the module docs: none of
/// the calls that escape a sandbox, and signals (`tgkill`, `tkill`) only to
/// the role itself with SIGABRT (or, for a tender, the watchdog's kick).
pub fn check_role_list(rules: &[Rule]) -> Result<(), String> {
    for r in rules {
        if NEVER_FOR_ROLES.contains(&r.nr) {
            return Err(format!("a role may not call {} ({})", r.name, r.nr));
        }
        let self_abort = |pid_arg, arg| When::OwnPidAndArgEq {
            pid_arg,
            arg,
            value: SIGABRT,
        };
        // A tender's watchdog kicks its own vCPU thread with one signal.
        let self_kick = |pid_arg, arg| When::OwnPidAndArgEq {
            pid_arg,
            arg,
            value: KICK_SIGNAL,
        };
        let ok = match r.nr {
            sys::tgkill => r.when == self_abort(0, 2) || r.when == self_kick(0, 2),
            sys::tkill => r.when == self_abort(0, 1) || r.when == self_kick(0, 1),
            _ => true,
        };
        if !ok {
            return Err(format!(
                "a role may signal only itself with SIGABRT, not {:?} ({})",
                r.when, r.name
            ));
        }
    }
    Ok(())
}

/// Why a filter could not be built or installed.
#[derive(Debug)]
pub enum SeccompError {
    Compile(seccompiler::BackendError),
    Install(seccompiler::Error),
    /// A role's list breaks the rules ([`check_role_list`]).
    Refused(String),
}

impl std::fmt::Display for SeccompError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeccompError::Compile(e) => write!(f, "seccomp filter does not compile: {e}"),
            SeccompError::Install(e) => write!(f, "seccomp filter not installed: {e}"),
            SeccompError::Refused(why) => write!(f, "seccomp filter refused: {why}"),
        }
    }
}

impl std::error::Error for SeccompError {}

/// The conditions that must all hold; none: always allowed.
fn conditions(when: When, own_pid: u32) -> Result<Vec<SeccompCondition>, seccompiler::BackendError> {
    let eq = |arg, v| SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v);
    let eq32 =
        |arg, v: u32| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, u64::from(v));
    Ok(match when {
        When::Always => Vec::new(),
        When::ArgEq(arg, v) => vec![eq(arg, v)?],
        When::Ioctl(request) => vec![eq32(1, request)?],
        When::IoctlOn { fd, request } => vec![eq32(0, fd as u32)?, eq32(1, request)?],
        When::ArgMaskClear(arg, mask) => vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?],
        // pid_t is an int: the kernel reads only the low 32 bits.
        When::OwnPidAndArgEq { pid_arg, arg, value } => vec![
            SeccompCondition::new(
                pid_arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(own_pid),
            )?,
            eq(arg, value)?,
        ],
    })
}

fn target_arch() -> Result<TargetArch, seccompiler::BackendError> {
    TargetArch::try_from(std::env::consts::ARCH)
}

/// Compile (number, condition) pairs; the calling process's pid goes into
/// the self-signalling entries.
fn compile(entries: impl IntoIterator<Item = (i64, When)>) -> Result<BpfProgram, SeccompError> {
    let pid = std::process::id();
    // None: allowed unconditionally; Some(rules): allowed if any rule matches.
    let mut calls: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for (nr, when) in entries {
        let conds = conditions(when, pid).map_err(SeccompError::Compile)?;
        let slot = calls.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (conds.is_empty(), slot.as_mut()) {
            (true, _) => *slot = None,
            (false, Some(rules)) => rules.push(SeccompRule::new(conds).map_err(SeccompError::Compile)?),
            (false, None) => {}
        }
    }
    let rules = calls
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let arch = target_arch().map_err(SeccompError::Compile)?;
    let compiled = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch)
        .map_err(SeccompError::Compile)?;
    compiled.try_into().map_err(SeccompError::Compile)
}

/// Compile a role's list, composed of `tables`, into a BPF program
/// (allocates). The calling process's pid goes into the self-signalling
/// entries: a program compiled before `fork` names the parent, so the child
/// could abort its parent and not itself. Compile in the process that
/// installs it. The list is checked first ([`check_role_list`]).
pub fn filter(tables: &[&[Allow]]) -> Result<BpfProgram, SeccompError> {
    let rules: Vec<Rule> = allow_list(tables).iter().map(Rule::from).collect();
    filter_rules(&rules)
}

/// [`filter`] for a list as it came in a role's hello.
pub fn filter_rules(rules: &[Rule]) -> Result<BpfProgram, SeccompError> {
    check_role_list(rules).map_err(SeccompError::Refused)?;
    compile(rules.iter().map(|r| (r.nr, r.when)))
}

/// The supervisor's program: [`supervisor_list`] of the roles' tables,
/// after three instructions that make `clone3` fail with ENOSYS.
pub fn supervisor_filter(roles: &[&[&[Allow]]]) -> Result<BpfProgram, SeccompError> {
    let program = compile(supervisor_list(roles).iter().map(|a| (a.nr, a.when)))?;
    Ok([clone3_enosys_prefix(), program].concat())
}

/// Three instructions put before the supervisor's program: `clone3` fails
/// with ENOSYS, which makes a libc fall back to `clone` (whose flags the
/// filter can see). Any other number goes on to the seccompiler program,
/// which starts with its own architecture check.
fn clone3_enosys_prefix() -> BpfProgram {
    const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    vec![
        // seccomp_data.nr is at offset 0.
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JEQ_K,
            jt: 0,
            jf: 1,
            k: sys::clone3 as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ]
}

/// Install a role's filter, composed of `tables`, on the calling thread
/// (call it last, after [`super::apply`]; the lists do not contain the
/// calls `apply` makes). Sets no_new_privs, as the kernel requires without
/// CAP_SYS_ADMIN.
pub fn install(tables: &[&[Allow]]) -> Result<(), SeccompError> {
    install_program(&filter(tables)?)
}

/// [`install`] for a list as it came in a role's hello.
pub fn install_rules(rules: &[Rule]) -> Result<(), SeccompError> {
    install_program(&filter_rules(rules)?)
}

/// Install the supervisor's filter: its own tables and every table of the
/// roles it starts ([`supervisor_list`]). Roles started later inherit it
/// and stack their own on top.
pub fn install_supervisor(roles: &[&crate::role::RolePlan]) -> Result<(), SeccompError> {
    let tables: Vec<&[&[Allow]]> = roles.iter().map(|r| &r.seccomp[..]).collect();
    install_program(&supervisor_filter(&tables)?)
}

/// [`KVM_SETUP`] as a pseudo-role for [`install_supervisor`]: no role
/// runs under it, the supervisor's list holds it.
pub fn kvm_setup_plan() -> crate::role::RolePlan {
    crate::role::RolePlan::strict("kvm-setup", 0, 0, &[KVM_SETUP])
}

/// Install an already compiled program on every thread of the process
/// (`SECCOMP_FILTER_FLAG_TSYNC`): for a role that started a thread before
/// its filter (a tender's watchdog).
pub fn install_program_all_threads(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter_all_threads(program).map_err(SeccompError::Install)
}

/// Install an already compiled program (does not allocate on success; for
/// use right after `fork`).
pub fn install_program(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compositions the SDK's services use, by role kind.
    const ROLES: [(&str, &[&[Allow]]); 3] = [
        ("engine", &[BASE]),
        ("network", &[BASE, PACKET_IN]),
        ("actuator", &[BASE, NETLINK, STATE_FILES]),
    ];
    /// Every SDK table a role may be composed of.
    const ROLE_TABLES: [(&str, &[Allow]); 4] = [
        ("BASE", BASE),
        ("PACKET_IN", PACKET_IN),
        ("NETLINK", NETLINK),
        ("STATE_FILES", STATE_FILES),
    ];

    fn roles_supervisor() -> Vec<Allow> {
        supervisor_list(&ROLES.map(|(_, t)| t))
    }

    #[test]
    fn dangerous_calls_are_never_unconditionally_allowed() {
        let never = [
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_bind,
            libc::SYS_connect,
            libc::SYS_clone3,
        ];
        let sup = ("supervisor", roles_supervisor());
        let tables = ROLE_TABLES.map(|(name, t)| (name, t.to_vec()));
        for (name, list) in tables.iter().chain([&sup]) {
            for entry in list {
                assert!(!never.contains(&entry.nr), "{name} allows {}", entry.name);
                if entry.nr == sys::unshare || entry.nr == sys::clone {
                    assert_ne!(
                        entry.when,
                        When::Always,
                        "{name} allows {} unconditionally",
                        entry.name
                    );
                }
            }
        }
        for (name, list) in &tables {
            for entry in list {
                for forbidden in [sys::execve, sys::clone, sys::unshare, sys::kill, libc::SYS_fork] {
                    assert_ne!(entry.nr, forbidden, "{name} allows {}", entry.name);
                }
            }
        }
        for (name, tables) in ROLES {
            let rules: Vec<Rule> = allow_list(tables).iter().map(Rule::from).collect();
            assert_eq!(check_role_list(&rules), Ok(()), "{name}");
        }
    }

    #[test]
    fn roles_refuse_lists_that_escape_or_signal_others() {
        let rule = |nr, when| Rule {
            nr,
            when,
            name: "x".into(),
        };
        let base: Vec<Rule> = BASE.iter().map(Rule::from).collect();
        for bad in [
            rule(libc::SYS_ptrace, When::Always),
            rule(libc::SYS_setns, When::Always),
            rule(libc::SYS_clone3, When::Always),
            rule(sys::execve, When::Always),
            rule(sys::clone, When::ArgMaskClear(0, CLONE_NAMESPACE_FLAGS)),
            rule(sys::unshare, When::ArgEq(0, libc::CLONE_NEWNS as u64)),
            rule(sys::kill, When::Always),
            rule(sys::tgkill, When::Always),
            rule(sys::tkill, When::ArgEq(1, SIGABRT)),
            rule(
                sys::tgkill,
                When::OwnPidAndArgEq {
                    pid_arg: 0,
                    arg: 2,
                    value: libc::SIGKILL as u64,
                },
            ),
        ] {
            let mut list = base.clone();
            list.push(bad.clone());
            assert!(check_role_list(&list).is_err(), "{bad:?} accepted");
            assert!(matches!(filter_rules(&list), Err(SeccompError::Refused(_))));
        }
        // The supervisor's own table is never a role's.
        assert!(filter(&[BASE, SUPERVISOR]).is_err());
    }

    #[test]
    fn lists_grow_from_base_and_the_supervisor_holds_every_role() {
        let pairs = |l: Vec<Allow>| l.into_iter().map(|a| (a.nr, a.when)).collect::<Vec<_>>();
        let base = pairs(BASE.to_vec());
        let sup = pairs(roles_supervisor());
        for (name, tables) in ROLES {
            let list = pairs(allow_list(tables));
            assert!(base.iter().all(|e| list.contains(e)), "{name} lacks a base call");
            assert!(
                list.iter().all(|e| sup.contains(e)),
                "supervisor lacks a {name} call"
            );
        }
        // A service's own table reaches the supervisor's list with its role.
        const CLOCK: &[Allow] = &[allow!(clock_adjtime)];
        let ntp = supervisor_list(&[&[BASE, NETLINK, CLOCK]]);
        assert!(ntp.iter().any(|a| a.nr == sys::clock_adjtime));
        assert!(!roles_supervisor().iter().any(|a| a.nr == sys::clock_adjtime));
    }

    #[test]
    fn every_profile_compiles_and_starts_as_expected() {
        for (name, tables) in ROLES {
            let p = filter(tables).unwrap();
            assert!(p.len() > 20 && p.len() < 4096, "{name}: {} instructions", p.len());
            assert_ne!(p[..3], clone3_enosys_prefix()[..]);
        }
        let sup = supervisor_filter(&ROLES.map(|(_, t)| t)).unwrap();
        assert!(sup.len() > 20 && sup.len() < 4096);
        assert_eq!(sup[..3], clone3_enosys_prefix()[..]);
    }
}
