//! Per-role seccomp allow-lists, declared as data and compiled with
//! seccompiler. Any call not on the list kills the whole process (SIGSYS,
//! `SECCOMP_RET_KILL_PROCESS`): a role that makes an unexpected call is
//! compromised or broken, and the supervisor restarts it.
//!
//! Lists are additive: Network and Actuator start from Engine's list, and
//! Supervisor's list holds every role's list plus what spawning needs,
//! because seccomp filters are inherited and stack: a role started by a
//! filtered supervisor runs under both filters, so the supervisor's must let
//! the role's start-up and its [`super::apply`] through.
//!
//! No list contains `socket`, `ptrace`, `process_vm_*`, `setns`, `vfork`,
//! `clone3` (its flags live in memory, out of the filter's sight) or an
//! unconditional `unshare`: unprivileged user namespaces are enabled on
//! typical hosts, so a uid-65534 process could otherwise
//! `unshare(CLONE_NEWUSER)` and gain a fresh set of namespace-local
//! capabilities to attack the kernel with. Only the supervisor's list holds
//! `fork` (x86_64, where musl's fork() calls it; it takes no flags).
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

/// The roles of a service, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Parses everything, decides everything; talks only over its channel
    /// and logs to stderr.
    Engine,
    /// Moves frames between its packet socket and its channel.
    Network,
    /// Applies checked intents over netlink and writes state files.
    Actuator,
    /// Spawns and restarts the roles and relays between them.
    Supervisor,
}

impl Role {
    /// Every role, for iteration in tests and docs.
    pub const ALL: [Role; 4] = [Role::Engine, Role::Network, Role::Actuator, Role::Supervisor];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Engine => "engine",
            Role::Network => "network",
            Role::Actuator => "actuator",
            Role::Supervisor => "supervisor",
        }
    }
}

/// When an allowed call is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// Argument `n` (0-based) equals the value.
    ArgEq(u8, u64),
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

/// One entry of an allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allow {
    pub nr: i64,
    pub name: &'static str,
    pub when: When,
}

macro_rules! allow {
    ($name:ident) => {
        allow!($name, When::Always)
    };
    ($name:ident, $when:expr) => {
        Allow {
            nr: sys::$name,
            name: stringify!($name),
            when: $when,
        }
    };
}

/// Syscall numbers by their kernel names (so the tables read like strace).
#[allow(non_upper_case_globals)]
mod sys {
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
        getsockopt => SYS_getsockopt, open_tree => SYS_open_tree,
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

/// Engine: an event loop over its channel fd, logging to stderr.
const ENGINE: &[Allow] = &[
    allow!(read),
    allow!(recvfrom),
    // Logging only: fd 2. Sending only on connected sockets (no address).
    allow!(write, When::ArgEq(0, 2)),
    allow!(writev, When::ArgEq(0, 2)),
    allow!(sendto, When::ArgEq(4, 0)),
    allow!(ppoll),
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

#[cfg(target_arch = "x86_64")]
const ENGINE_ARCH: &[Allow] = &[allow!(poll)];
#[cfg(not(target_arch = "x86_64"))]
const ENGINE_ARCH: &[Allow] = &[];

/// Network (on top of Engine): frames in with their PACKET_AUXDATA. Frames
/// go out with Engine's `sendto` without an address, so only on the
/// interface the packet socket is bound to: a `sockaddr_ll` (or `sendmsg`,
/// whose address lives in memory, out of the filter's sight) could name
/// any other interface.
const NETWORK: &[Allow] = &[allow!(recvmsg)];

/// Actuator (on top of Engine): rtnetlink on its socket and state files in
/// the directories it was given.
const ACTUATOR: &[Allow] = &[
    allow!(sendto),
    allow!(sendmsg),
    allow!(recvfrom),
    allow!(recvmsg),
    allow!(openat),
    allow!(read),
    allow!(write),
    allow!(fsync),
    allow!(fdatasync),
    allow!(renameat2),
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

#[cfg(target_arch = "x86_64")]
const ACTUATOR_ARCH: &[Allow] = &[allow!(renameat)];
#[cfg(not(target_arch = "x86_64"))]
const ACTUATOR_ARCH: &[Allow] = &[];

/// Supervisor (on top of all roles): spawning, reaping, signalling, and what
/// a re-executed role needs before its own filter is in place (static libc
/// and Rust start-up, then [`super::apply`]).
const SUPERVISOR: &[Allow] = &[
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
];

#[cfg(target_arch = "x86_64")]
const SUPERVISOR_ARCH: &[Allow] = &[
    allow!(dup2),
    allow!(arch_prctl),
    allow!(readlink),
    // musl's fork() and open() use the legacy calls where the architecture
    // has them: fork carries no flags (no namespaces), and open is the
    // supervisor's /dev/null for a restarted role.
    allow!(fork),
    allow!(open),
];
#[cfg(not(target_arch = "x86_64"))]
const SUPERVISOR_ARCH: &[Allow] = &[];

/// The tables that make up `role`'s list, in order.
fn tables(role: Role) -> Vec<&'static [Allow]> {
    let engine = [ENGINE, ENGINE_ARCH];
    match role {
        Role::Engine => engine.to_vec(),
        Role::Network => [&engine[..], &[NETWORK]].concat(),
        Role::Actuator => [&engine[..], &[ACTUATOR, ACTUATOR_ARCH]].concat(),
        Role::Supervisor => [
            &engine[..],
            &[NETWORK, ACTUATOR, ACTUATOR_ARCH, SUPERVISOR, SUPERVISOR_ARCH],
        ]
        .concat(),
    }
}

/// `role`'s allow-list as data: every entry of every table it is built from
/// (a call may appear more than once with different conditions; any entry
/// that matches allows the call).
pub fn allow_list(role: Role) -> Vec<Allow> {
    tables(role).into_iter().flatten().copied().collect()
}

/// Why a filter could not be built or installed.
#[derive(Debug)]
pub enum SeccompError {
    Compile(seccompiler::BackendError),
    Install(seccompiler::Error),
}

impl std::fmt::Display for SeccompError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeccompError::Compile(e) => write!(f, "seccomp filter does not compile: {e}"),
            SeccompError::Install(e) => write!(f, "seccomp filter not installed: {e}"),
        }
    }
}

impl std::error::Error for SeccompError {}

/// The conditions that must all hold; none: always allowed.
fn conditions(when: When, own_pid: u32) -> Result<Vec<SeccompCondition>, seccompiler::BackendError> {
    let eq = |arg, v| SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v);
    Ok(match when {
        When::Always => Vec::new(),
        When::ArgEq(arg, v) => vec![eq(arg, v)?],
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

/// Compile `role`'s allow-list into a BPF program (allocates). The calling
/// process's pid goes into the self-signalling entries: a program compiled
/// before `fork` names the parent, so the child could abort its parent and
/// not itself. Compile in the process that installs it.
pub fn filter(role: Role) -> Result<BpfProgram, SeccompError> {
    let pid = std::process::id();
    // None: allowed unconditionally; Some(rules): allowed if any rule matches.
    let mut calls: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for entry in allow_list(role) {
        let conds = conditions(entry.when, pid).map_err(SeccompError::Compile)?;
        let slot = calls.entry(entry.nr).or_insert_with(|| Some(Vec::new()));
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
    let program: BpfProgram = compiled.try_into().map_err(SeccompError::Compile)?;
    if role == Role::Supervisor {
        return Ok([clone3_enosys_prefix(), program].concat());
    }
    Ok(program)
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

/// Install `role`'s filter on the calling thread (call it last, after
/// [`super::apply`]; the list does not contain the calls `apply` makes).
/// Sets no_new_privs, as the kernel requires without CAP_SYS_ADMIN.
pub fn install(role: Role) -> Result<(), SeccompError> {
    let program = filter(role)?;
    seccompiler::apply_filter(&program).map_err(SeccompError::Install)
}

/// Install an already compiled program (does not allocate on success; for
/// use right after `fork`).
pub fn install_program(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_calls_are_never_unconditionally_allowed() {
        let never = [
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_clone3,
        ];
        for role in Role::ALL {
            for entry in allow_list(role) {
                assert!(
                    !never.contains(&entry.nr),
                    "{} allows {}",
                    role.as_str(),
                    entry.name
                );
                if entry.nr == sys::unshare || entry.nr == sys::clone {
                    assert_ne!(
                        entry.when,
                        When::Always,
                        "{} allows {} unconditionally",
                        role.as_str(),
                        entry.name
                    );
                }
                if role != Role::Supervisor {
                    for forbidden in [sys::execve, sys::clone, sys::unshare, sys::kill, libc::SYS_fork] {
                        assert_ne!(entry.nr, forbidden, "{} allows {}", role.as_str(), entry.name);
                    }
                }
            }
        }
    }

    #[test]
    fn lists_grow_from_engine() {
        let nrs = |r| {
            allow_list(r)
                .into_iter()
                .map(|a| (a.nr, a.when))
                .collect::<Vec<_>>()
        };
        let engine = nrs(Role::Engine);
        for role in [Role::Network, Role::Actuator, Role::Supervisor] {
            let list = nrs(role);
            assert!(
                engine.iter().all(|e| list.contains(e)),
                "{} lacks an engine call",
                role.as_str()
            );
        }
        let sup = nrs(Role::Supervisor);
        for role in [Role::Network, Role::Actuator] {
            assert!(
                nrs(role).iter().all(|e| sup.contains(e)),
                "supervisor lacks a {} call",
                role.as_str()
            );
        }
    }

    #[test]
    fn every_profile_compiles_and_starts_as_expected() {
        for role in Role::ALL {
            let p = filter(role).unwrap();
            assert!(
                p.len() > 20 && p.len() < 4096,
                "{}: {} instructions",
                role.as_str(),
                p.len()
            );
        }
        let sup = filter(Role::Supervisor).unwrap();
        assert_eq!(sup[..3], clone3_enosys_prefix()[..]);
        assert_ne!(filter(Role::Engine).unwrap()[..3], clone3_enosys_prefix()[..]);
    }
}
