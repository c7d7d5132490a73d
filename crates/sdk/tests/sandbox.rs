//! Privilege-separation plumbing, tested against the real kernel.
//!
//! Needs root (CI runs as root): the privilege-drop tests switch uids and
//! capabilities, the mount-namespace step needs CAP_SYS_ADMIN. Every test
//! that changes process state does it in a forked child, so the test process
//! itself is never sandboxed; every child is waited for with a deadline and
//! killed if it overruns. No network traffic leaves the process: only socket
//! pairs and pipes are used, and one packet socket on loopback.
//!
//! A forked child of this multi-threaded test process only uses raw system
//! calls, the libc's malloc (which glibc and musl make fork-safe) and this
//! crate, and always leaves with `_exit`, never by returning into the test
//! harness.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mirage_ipc::{FromNetwork, ToNetwork};
use mirage_sdk::channel::{Channel, ChannelError, wait_readable};
use mirage_sdk::sandbox::seccomp::{self, Allow, SeccompError};
use mirage_sdk::sandbox::{
    self, Capability, DirAccess, DirRef, DropPlan, LandlockDir, LandlockState, SandboxReport,
};
use mirage_sdk::spawn::spawn;

const CHILD_DEADLINE: Duration = Duration::from_secs(20);

/// The SDK's seccomp tables composed as its services compose them, by kind
/// of role; the supervisor's list is the union of the three roles' and its
/// own ([`seccomp::supervisor_list`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Engine,
    Network,
    Actuator,
    Supervisor,
}

const ENGINE: &[&[Allow]] = &[seccomp::BASE];
const NETWORK: &[&[Allow]] = &[seccomp::BASE, seccomp::PACKET_IN];
const ACTUATOR: &[&[Allow]] = &[seccomp::BASE, seccomp::NETLINK, seccomp::STATE_FILES];

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Engine => "engine",
            Role::Network => "network",
            Role::Actuator => "actuator",
            Role::Supervisor => "supervisor",
        }
    }
}

/// `role`'s program, compiled in the calling process.
fn filter(role: Role) -> Result<seccomp::Program, SeccompError> {
    match role {
        Role::Engine => seccomp::filter(ENGINE),
        Role::Network => seccomp::filter(NETWORK),
        Role::Actuator => seccomp::filter(ACTUATOR),
        Role::Supervisor => seccomp::supervisor_filter(&[ENGINE, NETWORK, ACTUATOR]),
    }
}

fn install(role: Role) -> Result<(), SeccompError> {
    seccomp::install_program(&filter(role)?)
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Run `f` in a forked child and return how it ended. The child exits with
/// `f`'s return value, or 101 if `f` panics.
fn in_child(f: impl FnOnce() -> i32) -> Ended {
    // SAFETY: fork in a multi-threaded process; the child only runs `f`
    // (see the module docs for what it may do) and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leave the child without running the harness's destructors.
        unsafe { libc::_exit(code) };
    }
    wait_bounded(pid)
}

/// Reap `pid`, SIGKILLing it if it is still running at the deadline.
fn wait_bounded(pid: libc::pid_t) -> Ended {
    let deadline = Instant::now() + CHILD_DEADLINE;
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; `status` is writable.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(rc >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if rc == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("child {pid} overran its deadline");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if libc::WIFEXITED(status) {
        Ended::Exited(libc::WEXITSTATUS(status))
    } else {
        Ended::Signaled(libc::WTERMSIG(status))
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a writable array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all(fd: RawFd, bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is valid for reads of its length.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return false;
        }
        rest = &rest[n as usize..];
    }
    true
}

/// Read until EOF, bounded in time.
fn read_to_end_bounded(fd: OwnedFd) -> Vec<u8> {
    let deadline = Instant::now() + CHILD_DEADLINE;
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no EOF before the deadline; got {:?}",
            String::from_utf8_lossy(&out)
        );
        let ready = wait_readable(&[file.as_fd()], Some(left.as_millis() as u64)).unwrap();
        if !ready[0] {
            continue;
        }
        match file.read(&mut buf).unwrap() {
            0 => return out,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The last syscall before a forbidden one sends this byte on a socket, so
/// that a SIGSYS is known to come from the forbidden call and not earlier.
const MARK: u8 = b'!';

fn mark(fd: RawFd) {
    // SAFETY: one byte from a live local; connected socket, no address.
    unsafe { libc::sendto(fd, [MARK].as_ptr().cast(), 1, 0, std::ptr::null(), 0) };
}

/// A forbidden call with arguments that would be harmless if it were
/// allowed (then the child exits 0 and the test fails).
#[derive(Clone, Copy, Debug)]
enum Forbidden {
    Openat,
    SocketInet,
    SocketPacket,
    Execve,
    Ptrace,
    UnshareUser,
    UnshareNsAndUser,
    Setns,
    Clone3,
    CloneNewUser,
    KillInit,
    MmapExec,
    WriteStdout,
    TgkillNotAbort,
    Mkdirat,
    SocketpairInet,
}

fn make_forbidden_call(call: Forbidden) -> i64 {
    let path = c"/";
    // SAFETY: every call below gets valid pointers or null, and none of
    // them would change anything outside this child if it were allowed.
    unsafe {
        match call {
            Forbidden::Openat => {
                libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY)
            }
            Forbidden::SocketInet => libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, 0),
            Forbidden::SocketPacket => libc::syscall(libc::SYS_socket, libc::AF_PACKET, libc::SOCK_RAW, 0),
            Forbidden::Execve => libc::syscall(
                libc::SYS_execve,
                c"/nonexistent/x".as_ptr(),
                std::ptr::null::<*const libc::c_char>(),
                std::ptr::null::<*const libc::c_char>(),
            ),
            Forbidden::Ptrace => libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKDATA, 1, 0, 0),
            Forbidden::UnshareUser => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
            Forbidden::UnshareNsAndUser => {
                libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER | libc::CLONE_NEWNS)
            }
            Forbidden::Setns => libc::syscall(libc::SYS_setns, -1, 0),
            // Size 0 is invalid: EINVAL if it got through.
            Forbidden::Clone3 => libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize),
            // Would fail with EINVAL anyway (CLONE_NEWUSER with CLONE_FS).
            Forbidden::CloneNewUser => libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWUSER | libc::CLONE_FS | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            ),
            Forbidden::KillInit => libc::syscall(libc::SYS_kill, 1, 0),
            Forbidden::MmapExec => libc::syscall(
                libc::SYS_mmap,
                0,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ),
            Forbidden::WriteStdout => libc::syscall(libc::SYS_write, 1, path.as_ptr(), 0),
            Forbidden::TgkillNotAbort => libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), 0),
            Forbidden::Mkdirat => libc::syscall(
                libc::SYS_mkdirat,
                libc::AT_FDCWD,
                c"/nonexistent/x".as_ptr(),
                0o700,
            ),
            Forbidden::SocketpairInet => {
                let mut fds = [0; 2];
                libc::syscall(
                    libc::SYS_socketpair,
                    libc::AF_INET,
                    libc::SOCK_STREAM,
                    0,
                    fds.as_mut_ptr(),
                )
            }
        }
    }
}

/// Apply `role`'s filter in a child, make `call`, and assert the kernel
/// killed the child with SIGSYS right at that call.
fn assert_kills(role: Role, call: Forbidden) {
    let program = filter(role).unwrap();
    let (mark_tx, mark_rx) = Channel::pair().unwrap();
    let ended = in_child(|| {
        if seccomp::install_program(&program).is_err() {
            return 10;
        }
        mark(mark_tx.as_raw_fd());
        make_forbidden_call(call);
        0
    });
    drop(mark_tx);
    assert_eq!(ended, Ended::Signaled(libc::SIGSYS), "{role:?} {call:?}");
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let n = unsafe {
        libc::recv(
            mark_rx.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(
        (n, byte[0]),
        (1, MARK),
        "{role:?} {call:?}: died before the forbidden call"
    );
}

// ---------------------------------------------------------------- seccomp

#[test]
fn engine_filter_kills_forbidden_calls() {
    use Forbidden::*;
    for call in [
        Openat,
        SocketInet,
        Execve,
        Ptrace,
        UnshareUser,
        Setns,
        Clone3,
        CloneNewUser,
        KillInit,
        MmapExec,
        WriteStdout,
        TgkillNotAbort,
    ] {
        assert_kills(Role::Engine, call);
    }
}

#[test]
fn network_filter_kills_forbidden_calls() {
    use Forbidden::*;
    for call in [
        Openat,
        SocketPacket,
        SocketInet,
        Execve,
        Ptrace,
        UnshareUser,
        Setns,
        Clone3,
        MmapExec,
    ] {
        assert_kills(Role::Network, call);
    }
}

#[test]
fn actuator_filter_kills_forbidden_calls() {
    use Forbidden::*;
    for call in [
        SocketInet,
        SocketPacket,
        Execve,
        Ptrace,
        UnshareUser,
        Setns,
        Clone3,
        CloneNewUser,
        Mkdirat,
    ] {
        assert_kills(Role::Actuator, call);
    }
}

#[test]
fn supervisor_filter_kills_forbidden_calls() {
    use Forbidden::*;
    for call in [
        SocketInet,
        SocketPacket,
        Ptrace,
        UnshareUser,
        UnshareNsAndUser,
        Setns,
        CloneNewUser,
        MmapExec,
        SocketpairInet,
    ] {
        assert_kills(Role::Supervisor, call);
    }
}

#[test]
fn a_service_table_adds_its_calls_and_nothing_else_has_them() {
    // An NTP actuator's own table: reading (here) and slewing the clock.
    const CLOCK: &[Allow] = &[mirage_sdk::allow!(clock_adjtime)];
    let query = || {
        // SAFETY: timex is plain data; modes 0 only reads the clock's state.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a timex that lives across the call.
        unsafe { libc::syscall(libc::SYS_clock_adjtime, libc::CLOCK_REALTIME, &mut tx) }
    };
    let with = seccomp::filter(&[seccomp::BASE, CLOCK]).unwrap();
    let ended = in_child(|| {
        if seccomp::install_program(&with).is_err() {
            return 10;
        }
        if query() < 0 { 20 } else { 0 }
    });
    assert_eq!(ended, Ended::Exited(0));
    for role in [Role::Engine, Role::Network, Role::Actuator] {
        let program = filter(role).unwrap();
        let ended = in_child(|| {
            if seccomp::install_program(&program).is_err() {
                return 10;
            }
            query();
            0
        });
        assert_eq!(ended, Ended::Signaled(libc::SIGSYS), "{role:?}");
    }
}

/// What every role does: channel traffic, polling, clocks, memory, logging
/// to fd 2, abort's helpers. Returns 0 or the number of the failed step.
fn engine_calls(chan: &Channel, peer: &Channel) -> i32 {
    let msg = FromNetwork::Frame {
        data: vec![7; 600],
        checksum_offloaded: true,
    };
    if chan.send(&msg).is_err() {
        return 20;
    }
    if wait_readable(&[peer.as_fd()], Some(1000)).ok() != Some(vec![true]) {
        return 21;
    }
    match peer.recv::<FromNetwork>() {
        Ok(Some(got)) if got == msg => {}
        _ => return 22,
    }
    if mirage_sdk::clock::boottime().millis() == 0 || mirage_sdk::clock::realtime_ms() == 0 {
        return 23;
    }
    // SAFETY: raw calls with valid local pointers; every mapping made here
    // is unmapped here.
    unsafe {
        if libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_BOOTTIME,
            &mut libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        ) != 0
        {
            return 24;
        }
        if libc::write(2, c"".as_ptr().cast(), 0) != 0 {
            return 25;
        }
        let len = 1 << 20;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return 26;
        }
        if libc::mprotect(p, len, libc::PROT_READ) != 0 || libc::madvise(p, len, libc::MADV_DONTNEED) != 0 {
            return 27;
        }
        let q = libc::mremap(p, len, 2 * len, libc::MREMAP_MAYMOVE);
        if q == libc::MAP_FAILED || libc::munmap(q, 2 * len) != 0 {
            return 28;
        }
        let mut seed = [0u8; 16];
        if libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) != 16 {
            return 29;
        }
        let word = 0u32;
        if libc::syscall(
            libc::SYS_futex,
            &word,
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
            0,
            0,
            0,
        ) < 0
        {
            return 30;
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut old) != 0 {
            return 31;
        }
        let mut ss: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(std::ptr::null(), &mut ss) != 0 {
            return 32;
        }
        if libc::getpid() <= 0 || libc::gettid() <= 0 {
            return 33;
        }
    }
    // A big heap allocation goes through mmap, a small one through brk.
    let big = vec![1u8; 4 << 20];
    let small: Vec<Box<u64>> = (0..1000).map(Box::new).collect();
    if big.iter().map(|&b| u64::from(b)).sum::<u64>() + *small[999] != (4 << 20) + 999 {
        return 34;
    }
    0
}

#[test]
fn engine_filter_allows_an_event_loop() {
    let program = filter(Role::Engine).unwrap();
    let ended = in_child(|| {
        // Made in the child, so that no copy in the parent keeps it open.
        let Ok((a, b)) = Channel::pair() else { return 9 };
        if seccomp::install_program(&program).is_err() {
            return 10;
        }
        let rc = engine_calls(&a, &b);
        if rc != 0 {
            return rc;
        }
        drop(a);
        // The peer is gone: end-of-file, through ppoll's POLLHUP check.
        match b.recv::<FromNetwork>() {
            Ok(None) => 0,
            _ => 40,
        }
    });
    assert_eq!(ended, Ended::Exited(0));
}

#[test]
fn engine_filter_lets_abort_abort() {
    let ended = in_child(|| {
        // Compiled in the child: the filter names the pid it may signal.
        if install(Role::Engine).is_err() {
            return 10;
        }
        std::process::abort();
    });
    // SIGABRT, not SIGSYS: the libc's abort path is on the list.
    assert_eq!(ended, Ended::Signaled(libc::SIGABRT));
}

#[test]
fn roles_may_not_signal_another_process() {
    // A stand-in for the supervisor (same uid, as in a container): the
    // filtered child tries to abort it.
    // SAFETY: fork in a multi-threaded process; the child only calls pause
    // and _exit.
    let target = unsafe { libc::fork() };
    assert!(target >= 0);
    if target == 0 {
        // SAFETY: the stand-in only sleeps until it is killed.
        unsafe {
            libc::pause();
            libc::_exit(0)
        };
    }
    for role in [Role::Engine, Role::Network, Role::Actuator] {
        for call in [libc::SYS_tgkill, libc::SYS_tkill, libc::SYS_kill] {
            let ended = in_child(|| {
                if install(role).is_err() {
                    return 10;
                }
                // SAFETY: signal calls with plain integer arguments.
                unsafe {
                    match call {
                        libc::SYS_tgkill => libc::syscall(call, target, target, libc::SIGABRT),
                        _ => libc::syscall(call, target, libc::SIGABRT),
                    };
                }
                20
            });
            assert_eq!(
                ended,
                Ended::Signaled(libc::SIGSYS),
                "{} may call {call} on another pid",
                role.as_str()
            );
        }
    }
    let mut status = 0;
    // SAFETY: our own child; still there, so no signal reached it.
    let alive = unsafe { libc::waitpid(target, &mut status, libc::WNOHANG) } == 0;
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(target, libc::SIGKILL);
        libc::waitpid(target, &mut status, 0);
    }
    assert!(alive, "the stand-in supervisor was signalled");
}

#[test]
fn network_filter_allows_frames_with_auxdata() {
    let program = filter(Role::Network).unwrap();
    let (a, b) = Channel::pair().unwrap();
    let ended = in_child(|| {
        if seccomp::install_program(&program).is_err() {
            return 10;
        }
        let rc = engine_calls(&a, &b);
        if rc != 0 {
            return rc;
        }
        let mut payload = [5u8; 64];
        let mut cbuf = [0u64; 8];
        // SAFETY: msghdr over local buffers that outlive the calls.
        unsafe {
            if libc::send(a.as_raw_fd(), payload.as_ptr().cast(), 64, 0) != 64 {
                return 41;
            }
            let mut iov = libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
            if libc::recvmsg(b.as_raw_fd(), &mut msg, 0) != 64 {
                return 42;
            }
        }
        0
    });
    assert_eq!(ended, Ended::Exited(0));
}

/// Interface index by name, in this process's network namespace.
fn ifindex(name: &std::ffi::CStr) -> u32 {
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(i > 0, "no interface {name:?}");
    i
}

/// The network role's packet socket may send only where it is bound: a
/// frame without an address goes out (here on loopback), a `sendto` naming
/// another interface, or any `sendmsg`, kills the role.
#[test]
fn network_filter_sends_only_on_the_bound_interface() {
    let lo = ifindex(c"lo");
    let sock = mirage_sdk::packet::PacketSocket::open(lo, false).expect("packet socket on lo (root)");
    let program = filter(Role::Network).unwrap();
    // Broadcast, from a locally administered MAC, an unused ethertype.
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]);
    frame.resize(60, 0);
    let other = lo + 1000;
    for how in ["sendto", "sendmsg"] {
        let (mark_tx, mark_rx) = Channel::pair().unwrap();
        let ended = in_child(|| {
            if seccomp::install_program(&program).is_err() {
                return 10;
            }
            if sock.send(&frame).is_err() {
                return 11;
            }
            mark(mark_tx.as_raw_fd());
            // SAFETY: the address and the frame are live locals.
            unsafe {
                let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                sa.sll_family = libc::AF_PACKET as u16;
                sa.sll_ifindex = other as i32;
                sa.sll_halen = 6;
                let len = std::mem::size_of_val(&sa) as u32;
                if how == "sendto" {
                    libc::sendto(
                        sock.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const sa).cast(),
                        len,
                    );
                } else {
                    let mut iov = libc::iovec {
                        iov_base: frame.as_ptr().cast_mut().cast(),
                        iov_len: frame.len(),
                    };
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_name = (&raw mut sa).cast();
                    msg.msg_namelen = len;
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    libc::sendmsg(sock.as_raw_fd(), &msg, 0);
                }
            }
            0
        });
        drop(mark_tx);
        assert_eq!(ended, Ended::Signaled(libc::SIGSYS), "{how} with an address");
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        let n = unsafe {
            libc::recv(
                mark_rx.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_DONTWAIT,
            )
        };
        assert_eq!(
            (n, byte[0]),
            (1, MARK),
            "{how}: the send without an address did not work"
        );
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirage-sandbox-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

#[test]
fn actuator_filter_allows_atomic_file_writes() {
    let program = filter(Role::Actuator).unwrap();
    let dir = temp_dir("actuator");
    let dir_c = cstr(&dir);
    let (a, b) = Channel::pair().unwrap();
    let ended = in_child(|| {
        if seccomp::install_program(&program).is_err() {
            return 10;
        }
        let rc = engine_calls(&a, &b);
        if rc != 0 {
            return rc;
        }
        // SAFETY: raw calls on descriptors opened here, with literal C strings
        // and local buffers.
        unsafe {
            // openat, as the actuator's file code (rustix) calls it; musl's
            // open() is the legacy open syscall on x86_64.
            let d = libc::openat(
                libc::AT_FDCWD,
                dir_c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if d < 0 {
                return 50;
            }
            let f = libc::openat(
                d,
                c".lease.tmp".as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600,
            );
            if f < 0 || libc::write(f, c"lease".as_ptr().cast(), 5) != 5 {
                return 51;
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fchmod(f, 0o640) != 0
                || libc::fsync(f) != 0
                || libc::fdatasync(f) != 0
                || libc::fstat(f, &mut st) != 0
                || libc::lseek(f, 0, libc::SEEK_SET) != 0
                || libc::ftruncate(f, 3) != 0
                || libc::close(f) != 0
            {
                return 52;
            }
            if libc::fstatat(d, c".lease.tmp".as_ptr(), &mut st, 0) != 0 || st.st_size != 3 {
                return 53;
            }
            let mut stx: libc::statx = std::mem::zeroed();
            if libc::statx(d, c".lease.tmp".as_ptr(), 0, libc::STATX_SIZE, &mut stx) != 0 {
                return 54;
            }
            if libc::renameat(d, c".lease.tmp".as_ptr(), d, c"lease".as_ptr()) != 0
                // musl has no renameat2 wrapper.
                || libc::syscall(
                    libc::SYS_renameat2,
                    d,
                    c"lease".as_ptr(),
                    d,
                    c"lease2".as_ptr(),
                    libc::RENAME_NOREPLACE,
                ) != 0
            {
                return 55;
            }
            let mut dents = [0u64; 256];
            if libc::syscall(
                libc::SYS_getdents64,
                d,
                dents.as_mut_ptr(),
                std::mem::size_of_val(&dents),
            ) <= 0
            {
                return 56;
            }
            let f = libc::openat(d, c"lease2".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            let mut buf = [0u8; 8];
            if f < 0 || libc::read(f, buf.as_mut_ptr().cast(), 8) != 3 || &buf[..3] != b"lea" {
                return 57;
            }
            if libc::close(f) != 0 || libc::unlinkat(d, c"lease2".as_ptr(), 0) != 0 || libc::fsync(d) != 0 {
                return 58;
            }
            // Netlink-style datagrams: sendmsg/recvmsg/recvfrom.
            let mut byte = [1u8];
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if libc::sendmsg(a.as_raw_fd(), &msg, 0) != 1 || libc::recvmsg(b.as_raw_fd(), &mut msg, 0) != 1 {
                return 59;
            }
        }
        0
    });
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ended, Ended::Exited(0));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn supervisor_filter_allows_spawning_roles() {
    let program = filter(Role::Supervisor).unwrap();
    let ended = in_child(|| {
        if seccomp::install_program(&program).is_err() {
            return 10;
        }
        // clone3 is answered with ENOSYS (glibc then falls back to clone).
        // SAFETY: size 0, null pointer: the kernel would say EINVAL.
        let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        if rc != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return 60;
        }
        // A channel for a restarted role.
        let Ok((a, b)) = Channel::pair() else { return 61 };
        // Re-execute ourselves (a static Rust binary, like a role) with the
        // channel at fd 3: start-up and exit pass the filter. `--help` makes
        // the test harness print its usage (to /dev/null) and exit 0.
        let Ok(mut child) = spawn(None, ["--help"], &[b.as_fd()]) else {
            return 62;
        };
        drop(b);
        match child.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => return 63 + 100 * i32::from(s.code().is_none()),
            Err(_) => return 64,
        }
        let mut log = Vec::new();
        if child.stderr().read_to_end(&mut log).is_err() {
            return 65;
        }
        // The role's end was closed when it exited: our end sees EOF.
        if !matches!(a.recv::<u8>(), Ok(None)) {
            return 66;
        }
        // A role's private mount namespace still works under this filter.
        // SAFETY: unshare in this throw-away child.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return 67;
        }
        0
    });
    assert_eq!(ended, Ended::Exited(0));
}

// ---------------------------------------------------------- privilege drop

/// Fields of /proc/self/status, as text after the colon.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
}

fn landlock_abi() -> i64 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with null attributes only
    // returns the ABI version.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    }
}

fn expected_landlock() -> LandlockState {
    match landlock_abi() {
        abi if abi >= 6 => LandlockState::FullyEnforced,
        abi if abi >= 1 => LandlockState::PartiallyEnforced,
        _ => LandlockState::NotEnforced,
    }
}

/// Everything a dropped child reports back through its pipe.
struct Dropped {
    status: String,
    report: SandboxReport,
    probes: String,
}

/// Apply `plan` (built in the child by `make_plan`) in a child, then report
/// /proc/self/status (opened before the drop: afterwards there is no /proc),
/// the SandboxReport and a line of probes.
fn drop_in_child(make_plan: fn() -> DropPlan<'static>) -> Dropped {
    let (rx, tx) = pipe();
    let ended = in_child(|| {
        let Ok(mut status_file) = std::fs::File::open("/proc/self/status") else {
            return 10;
        };
        let report = match sandbox::apply(&make_plan()) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_all(tx.as_raw_fd(), format!("ERROR {e}").as_bytes());
                return 11;
            }
        };
        let mut status = String::new();
        if status_file.read_to_string(&mut status).is_err() {
            return 12;
        }
        let probes = probes();
        let text = format!(
            "{status}\x00{}\x00{probes}",
            serde_json::to_string(&report).unwrap_or_default()
        );
        if !write_all(tx.as_raw_fd(), text.as_bytes()) {
            return 13;
        }
        0
    });
    drop(tx);
    let out = String::from_utf8(read_to_end_bounded(rx)).unwrap();
    assert_eq!(ended, Ended::Exited(0), "child said: {out}");
    let mut parts = out.split('\x00');
    let status = parts.next().unwrap().to_owned();
    let report: SandboxReport = serde_json::from_str(parts.next().unwrap()).unwrap();
    let probes = parts.next().unwrap().to_owned();
    Dropped {
        status,
        report,
        probes,
    }
}

/// Observations made after the drop, as `key=value` words.
fn probes() -> String {
    let mut out = String::new();
    // SAFETY: plain queries with valid local pointers, in the child.
    unsafe {
        for (name, res) in [
            ("nofile", libc::RLIMIT_NOFILE),
            ("nproc", libc::RLIMIT_NPROC),
            ("fsize", libc::RLIMIT_FSIZE),
            ("core", libc::RLIMIT_CORE),
        ] {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(res, &mut lim);
            out += &format!("{name}={}/{} ", lim.rlim_cur, lim.rlim_max);
        }
        out += &format!("dumpable={} ", libc::prctl(libc::PR_GET_DUMPABLE));
        let mut sig: libc::c_int = 0;
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig);
        out += &format!("pdeathsig={sig} ");
        let mut fs: libc::statfs = std::mem::zeroed();
        let mut vfs: libc::statvfs = std::mem::zeroed();
        let root_tmpfs_ro = libc::statfs(c"/".as_ptr(), &mut fs) == 0
            // f_type is i64 on glibc, u64 on musl: compare the bits.
            && u64::from_ne_bytes(fs.f_type.to_ne_bytes()) == libc::TMPFS_MAGIC as u64
            && libc::statvfs(c"/".as_ptr(), &mut vfs) == 0
            && (vfs.f_flag & libc::ST_RDONLY) != 0;
        out += &format!("root-tmpfs-ro={root_tmpfs_ro} ");
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN: proves the kept capability works.
        let mut sv = [0; 2];
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        );
        let size: libc::c_int = 1 << 16;
        let forced = libc::setsockopt(
            sv[0],
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            std::mem::size_of_val(&size) as u32,
        ) == 0;
        out += &format!("net-admin-works={forced} ");
        libc::close(sv[0]);
        libc::close(sv[1]);
        // RLIMIT_NPROC 0 for a non-root uid: fork fails with EAGAIN.
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(0);
        }
        if pid > 0 {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        out += &format!("fork-works={}", pid > 0);
    }
    out
}

fn nobody_plan() -> DropPlan<'static> {
    DropPlan {
        nofile: 32,
        ..DropPlan::strict()
    }
}

fn net_admin_plan() -> DropPlan<'static> {
    DropPlan {
        nofile: 64,
        keep_caps: vec![Capability::CAP_NET_ADMIN],
        ..DropPlan::strict()
    }
}

fn assert_dropped_ids(status: &str) {
    assert_eq!(status_field(status, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(status, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(status, "Groups"), "");
    assert_eq!(status_field(status, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(status, "CapInh"), "0000000000000000");
    assert_eq!(status_field(status, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(status, "NoNewPrivs"), "1");
}

#[test]
fn strict_drop_leaves_nothing() {
    let d = drop_in_child(nobody_plan);
    assert_dropped_ids(&d.status);
    assert_eq!(status_field(&d.status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&d.status, "CapPrm"), "0000000000000000");
    assert_eq!(
        d.probes,
        "nofile=32/32 nproc=0/0 fsize=0/0 core=0/0 dumpable=0 pdeathsig=9 root-tmpfs-ro=true \
         net-admin-works=false fork-works=false"
    );
    assert_eq!(
        d.report,
        SandboxReport {
            mount_namespace: true,
            mount_namespace_error: None,
            uid: 65534,
            gid: 65534,
            capabilities: vec![],
            bounding_set: vec![],
            nofile: 32,
            nproc_zero: true,
            fsize_zero: true,
            no_new_privs: true,
            landlock: expected_landlock(),
            dirs_contained: None,
            dirs_contained_error: None,
        }
    );
}

#[test]
fn drop_can_keep_net_admin_only() {
    let d = drop_in_child(net_admin_plan);
    assert_dropped_ids(&d.status);
    // Bit 12 is CAP_NET_ADMIN.
    assert_eq!(status_field(&d.status, "CapEff"), "0000000000001000");
    assert_eq!(status_field(&d.status, "CapPrm"), "0000000000001000");
    assert!(d.probes.contains("nofile=64/64 "), "{}", d.probes);
    assert!(d.probes.contains("net-admin-works=true "), "{}", d.probes);
    assert_eq!(d.report.capabilities, vec!["CAP_NET_ADMIN".to_owned()]);
    assert!(d.report.mount_namespace);
    assert_eq!(d.report.landlock, expected_landlock());
}

/// Make this (child) process see a kernel without Landlock: the three
/// Landlock calls fail with ENOSYS, as on a kernel built or booted without
/// it, so the drop runs its best-effort path and enforces nothing.
fn hide_landlock() -> bool {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let rules = [
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]
    .into_iter()
    .map(|n| (n, vec![]))
    .collect();
    let Ok(filter) = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    ) else {
        return false;
    };
    let Ok(prog): Result<BpfProgram, _> = filter.try_into() else {
        return false;
    };
    seccompiler::apply_filter(&prog).is_ok()
}

/// Regression (issue 9, item 9): on a kernel without Landlock, the
/// actuator's directory descriptors led out of its empty root
/// (`openat(dirfd, "../../etc/passwd")`). Contained, each reaches only what
/// lies beneath it, and still works for everything the actuator does there.
#[test]
fn directory_fds_do_not_lead_out_without_landlock() {
    let base = temp_dir("contain");
    let names = ["state", "run", "resolv"];
    for n in names {
        std::fs::create_dir(base.join(n)).unwrap();
        std::fs::write(base.join(n).join("inside"), b"in").unwrap();
        // The role's own, as the supervisor makes them.
        std::os::unix::fs::chown(base.join(n), Some(65534), Some(65534)).unwrap();
    }
    // Readable by anyone: only containment can keep the child from it.
    std::fs::write(base.join("secret"), b"out").unwrap();
    let dirs: Vec<std::fs::File> = names
        .iter()
        .map(|n| std::fs::File::open(base.join(n)).unwrap())
        .collect();
    let raw: Vec<RawFd> = dirs.iter().map(|d| d.as_raw_fd()).collect();
    let (rx, tx) = pipe();
    let ended = in_child(|| {
        if !hide_landlock() {
            return 10;
        }
        let plan = DropPlan {
            nofile: 64,
            fsize_zero: false,
            landlock_dirs: raw
                .iter()
                .map(|&fd| LandlockDir {
                    // SAFETY: the test keeps `dirs` open for the child's life.
                    dir: DirRef::Fd(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }),
                    access: DirAccess::ReadWrite,
                })
                .collect(),
            contain_dirs: raw.clone(),
            ..DropPlan::strict()
        };
        let report = match sandbox::apply(&plan) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_all(tx.as_raw_fd(), format!("ERROR {e}").as_bytes());
                return 11;
            }
        };
        let mut out = format!(
            "landlock={} contained={:?} mount-ns={}",
            report.landlock.as_str(),
            report.dirs_contained,
            report.mount_namespace
        );
        for (&fd, n) in raw.iter().zip(names) {
            // SAFETY: the fd stays open; BorrowedFd only for rustix's calls.
            let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let open = |p: &str| {
                rustix::fs::openat(dir, p, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty())
                    .map(drop)
                    .map_err(|e| e.raw_os_error())
            };
            let escapes = ["../secret", "../../../../../../etc/passwd", "..//../secret"]
                .iter()
                .filter(|p| open(p).is_ok())
                .count();
            let inside = open("inside").is_ok() && open("../inside").is_ok();
            let write = mirage_sdk::files::write_atomic(dir, "new", b"x", 0o644).is_ok();
            out += &format!(" {n}:escapes={escapes},inside={inside},write={write}");
        }
        if !write_all(tx.as_raw_fd(), out.as_bytes()) {
            return 12;
        }
        0
    });
    drop(tx);
    let out = String::from_utf8(read_to_end_bounded(rx)).unwrap();
    let written = names.iter().all(|n| base.join(n).join("new").is_file());
    std::fs::remove_dir_all(&base).unwrap();
    assert_eq!(ended, Ended::Exited(0), "child said: {out}");
    assert_eq!(
        out,
        "landlock=not enforced contained=Some(true) mount-ns=true \
         state:escapes=0,inside=true,write=true run:escapes=0,inside=true,write=true \
         resolv:escapes=0,inside=true,write=true"
    );
    assert!(written);
}

/// Needs root (the drop) and Landlock ABI 4 for the network rights.
#[test]
fn landlock_allows_tcp_connect_only_to_the_plans_ports() {
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, o) = (allowed.local_addr().unwrap(), other.local_addr().unwrap());
    let (rx, tx) = pipe();
    let ended = in_child(|| {
        let plan = DropPlan {
            uid: 0,
            gid: 0,
            nofile: 64,
            nproc_zero: false,
            private_mount_ns: false,
            tcp_connect_ports: vec![a.port()],
            ..DropPlan::strict()
        };
        if let Err(e) = sandbox::apply(&plan) {
            let _ = write_all(tx.as_raw_fd(), format!("ERROR {e}").as_bytes());
            return 11;
        }
        let errno =
            |r: std::io::Result<std::net::TcpStream>| r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
        let to_allowed = errno(std::net::TcpStream::connect(a));
        let to_other = errno(std::net::TcpStream::connect(o));
        let bind = std::net::TcpListener::bind("127.0.0.1:0")
            .err()
            .and_then(|e| e.raw_os_error())
            .unwrap_or(0);
        let text = format!("allowed={to_allowed} other={to_other} bind={bind}");
        if !write_all(tx.as_raw_fd(), text.as_bytes()) {
            return 12;
        }
        0
    });
    drop(tx);
    let out = String::from_utf8(read_to_end_bounded(rx)).unwrap();
    assert_eq!(ended, Ended::Exited(0), "child said: {out}");
    if landlock_abi() >= 4 {
        let eacces = libc::EACCES;
        assert_eq!(out, format!("allowed=0 other={eacces} bind={eacces}"));
    } else {
        assert!(out.starts_with("allowed=0 "), "{out}");
    }
}

#[test]
fn landlock_limits_files_to_the_given_directories() {
    let rw = temp_dir("landlock-rw");
    let ro = temp_dir("landlock-ro");
    std::fs::write(ro.join("config"), b"x").unwrap();
    let ro_dir = std::fs::File::open(&ro).unwrap();
    let (rx, tx) = pipe();
    let ended = in_child(|| {
        // uid 0 without capabilities: owner of the test directories, but
        // with no DAC override left.
        let plan = DropPlan {
            uid: 0,
            gid: 0,
            nofile: 64,
            nproc_zero: false,
            private_mount_ns: false,
            landlock_dirs: vec![
                LandlockDir {
                    dir: DirRef::Path(rw.clone()),
                    access: DirAccess::ReadWrite,
                },
                LandlockDir {
                    dir: DirRef::Fd(ro_dir.as_fd()),
                    access: DirAccess::ReadOnly,
                },
            ],
            ..DropPlan::strict()
        };
        let report = match sandbox::apply(&plan) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_all(tx.as_raw_fd(), format!("ERROR {e}").as_bytes());
                return 11;
            }
        };
        let errno = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
        // fsize_zero is set: create and rename, but write no bytes.
        let created = errno(std::fs::File::create(rw.join("new")).map(drop));
        let renamed = errno(std::fs::rename(rw.join("new"), rw.join("renamed")));
        let read_ro = errno(std::fs::read(ro.join("config")).map(drop));
        let write_ro = errno(std::fs::File::create(ro.join("other")).map(drop));
        let outside = errno(std::fs::read("/etc/passwd").map(drop));
        // SAFETY: signal 0 only checks permission.
        let signal_parent = if unsafe { libc::kill(libc::getppid(), 0) } == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        };
        let text = format!(
            "landlock={} created={created} renamed={renamed} read_ro={read_ro} write_ro={write_ro} \
             outside={outside} signal_parent={signal_parent}",
            report.landlock.as_str()
        );
        if !write_all(tx.as_raw_fd(), text.as_bytes()) {
            return 12;
        }
        0
    });
    drop(tx);
    let out = String::from_utf8(read_to_end_bounded(rx)).unwrap();
    let renamed_exists = rw.join("renamed").exists();
    std::fs::remove_dir_all(&rw).unwrap();
    std::fs::remove_dir_all(&ro).unwrap();
    assert_eq!(ended, Ended::Exited(0), "child said: {out}");
    assert!(renamed_exists);
    let eacces = libc::EACCES;
    let eperm = libc::EPERM;
    match expected_landlock() {
        LandlockState::FullyEnforced => assert_eq!(
            out,
            format!(
                "landlock=fully enforced created=0 renamed=0 read_ro=0 write_ro={eacces} outside={eacces} \
                 signal_parent={eperm}"
            )
        ),
        LandlockState::PartiallyEnforced => {
            assert!(
                out.contains(&format!("write_ro={eacces} outside={eacces}")),
                "{out}"
            )
        }
        LandlockState::NotEnforced => assert!(out.starts_with("landlock=not enforced"), "{out}"),
    }
}

#[test]
fn dropped_engine_runs_its_event_loop_under_its_filter() {
    let (a, b) = Channel::pair().unwrap();
    let ended = in_child(|| {
        if sandbox::apply(&DropPlan::strict()).is_err() {
            return 10;
        }
        if install(Role::Engine).is_err() {
            return 11;
        }
        engine_calls(&a, &b)
    });
    assert_eq!(ended, Ended::Exited(0));
}

// ----------------------------------------------------------------- channel

#[test]
fn channel_round_trip_and_eof() {
    let (a, b) = Channel::pair().unwrap();
    let out = ToNetwork::Transmit(vec![0xaa; mirage_ipc::MAX_FRAME_LEN]);
    a.send(&out).unwrap();
    b.send(&FromNetwork::Refused {
        reason: "not ours".into(),
    })
    .unwrap();
    assert_eq!(
        wait_readable(&[a.as_fd(), b.as_fd()], Some(1000)).unwrap(),
        vec![true, true]
    );
    assert_eq!(b.recv::<ToNetwork>().unwrap(), Some(out));
    assert_eq!(
        a.recv::<FromNetwork>().unwrap(),
        Some(FromNetwork::Refused {
            reason: "not ours".into()
        })
    );
    assert_eq!(
        wait_readable(&[a.as_fd(), b.as_fd()], Some(0)).unwrap(),
        vec![false, false]
    );
    drop(a);
    // A hung-up peer counts as readable: the read reports end-of-file.
    assert_eq!(wait_readable(&[b.as_fd()], Some(1000)).unwrap(), vec![true]);
    assert!(matches!(b.recv::<ToNetwork>(), Ok(None)));
    assert!(matches!(
        b.send(&ToNetwork::Transmit(vec![])),
        Err(ChannelError::Io(_))
    ));
}

#[test]
fn channel_rejects_oversize_garbage_and_trailing_bytes() {
    let (a, b) = Channel::pair().unwrap();
    // Over the cap: refused before decoding, and the datagram is consumed.
    a.send_raw(&vec![0u8; mirage_ipc::MAX_MESSAGE_LEN + 808]).unwrap();
    assert!(matches!(
        b.recv::<ToNetwork>(),
        Err(ChannelError::Oversize(n)) if n == mirage_ipc::MAX_MESSAGE_LEN + 808
    ));
    // Variant index 200 does not exist.
    a.send_raw(&[200, 1, 2, 3]).unwrap();
    assert!(matches!(
        b.recv::<ToNetwork>(),
        Err(ChannelError::Codec(mirage_ipc::CodecError::Decode))
    ));
    // A valid message followed by one more byte.
    let mut bytes = mirage_ipc::encode(&ToNetwork::Transmit(vec![1, 2])).unwrap();
    bytes.push(0);
    a.send_raw(&bytes).unwrap();
    assert!(matches!(
        b.recv::<ToNetwork>(),
        Err(ChannelError::Codec(mirage_ipc::CodecError::Trailing))
    ));
    // A message that would not fit is refused by the sender.
    let big = ToNetwork::Transmit(vec![0; mirage_ipc::MAX_MESSAGE_LEN]);
    assert!(matches!(
        a.send(&big),
        Err(ChannelError::Codec(mirage_ipc::CodecError::TooLarge))
    ));
    // The channel still works after all that.
    a.send(&ToNetwork::Transmit(vec![9])).unwrap();
    assert_eq!(b.recv::<ToNetwork>().unwrap(), Some(ToNetwork::Transmit(vec![9])));
}

#[test]
fn channel_nonblocking_recv_would_block() {
    let (_a, b) = Channel::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    match b.recv::<u8>() {
        Err(ChannelError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        other => panic!("{other:?}"),
    }
}

#[test]
fn channel_adopts_only_inherited_seqpacket_fds() {
    let (a, b) = Channel::pair().unwrap();
    // Our own ends are close-on-exec, so they are refused (they are owned).
    assert_eq!(
        Channel::from_raw_fd(a.as_raw_fd()).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    // A copy without close-on-exec looks inherited and is adopted.
    // SAFETY: dup of an fd we own; the copy is handed to Channel below.
    let copy = unsafe { libc::dup(b.as_raw_fd()) };
    assert!(copy > 2);
    let adopted = Channel::from_raw_fd(copy).unwrap();
    // Adoption set close-on-exec again, so a second adoption fails.
    assert!(Channel::from_raw_fd(copy).is_err());
    a.send(&7u32).unwrap();
    assert_eq!(adopted.recv::<u32>().unwrap(), Some(7));
    // Not a socket: a pipe end without close-on-exec.
    let (r, _w) = pipe();
    // SAFETY: dup of an fd we own; closed below.
    let p = unsafe { libc::dup(r.as_raw_fd()) };
    assert_eq!(
        Channel::from_raw_fd(p).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    // SAFETY: closing the copy made above, once.
    unsafe { libc::close(p) };
    assert!(Channel::from_raw_fd(-1).is_err());
    assert_eq!(
        Channel::from_raw_fd(0).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}

// ------------------------------------------------------------------- spawn

#[test]
fn spawned_child_sees_only_stdio_and_the_fixed_fds() {
    let (pipe_r, pipe_w) = pipe();
    let (chan_here, chan_there) = Channel::pair().unwrap();
    // A descriptor without close-on-exec in the parent must not leak either.
    // SAFETY: dup of an fd we own; closed below.
    let leaky = unsafe { libc::dup(pipe_w.as_raw_fd()) };
    // Look at the shell's descriptors from a child process (ls), after
    // reading where 0 and 1 point; `exec 1>&2` moves stdout to the log pipe
    // for good (a per-command redirection would park a copy at fd 10).
    let script = "r=$(/bin/readlink /proc/$$/fd/0 /proc/$$/fd/1); exec 1>&2; /bin/ls /proc/$$/fd; \
                  echo $r; echo hi >&3; printf x >&4; exit 0";
    let result = spawn(
        Some(Path::new("/bin/sh")),
        ["-c", script],
        &[pipe_w.as_fd(), chan_there.as_fd()],
    );
    // SAFETY: closing our copy made above, once.
    unsafe { libc::close(leaky) };
    let child = result.unwrap();
    drop(pipe_w);
    drop(chan_there);
    let (mut proc_child, stderr) = {
        let id = child.id();
        assert!(id > 0);
        child.into_parts()
    };
    let log = String::from_utf8(read_to_end_bounded(stderr.into())).unwrap();
    let status = proc_child.wait().unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert_eq!(log, "0\n1\n2\n3\n4\n/dev/null /dev/null\n");
    assert_eq!(read_to_end_bounded(pipe_r), b"hi\n");
    let mut buf = [0u8; 8];
    // SAFETY: reading into a local buffer.
    let n = unsafe {
        libc::recv(
            chan_here.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            8,
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], b"x");
}

#[test]
fn spawn_refuses_standard_stream_numbers() {
    let stdin = std::io::stdin();
    let err = spawn(Some(Path::new("/bin/true")), [""; 0], &[stdin.as_fd()]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn spawn_reports_a_missing_executable() {
    let err = spawn(Some(Path::new("/nonexistent/role")), [""; 0], &[]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn spawned_role_dies_with_its_parent() {
    let (alive_r, alive_w) = pipe();
    let (pid_r, pid_w) = pipe();
    // The intermediate child plays the supervisor: it spawns a long sleep
    // holding `alive_w` at fd 3, reports its pid, and exits at once.
    let ended = in_child(|| {
        let Ok(role) = spawn(Some(Path::new("/bin/sleep")), ["30"], &[alive_w.as_fd()]) else {
            return 10;
        };
        if !write_all(pid_w.as_raw_fd(), &role.id().to_ne_bytes()) {
            return 11;
        }
        0
    });
    assert_eq!(ended, Ended::Exited(0));
    drop(alive_w);
    drop(pid_w);
    let pid_bytes = read_to_end_bounded(pid_r);
    let pid = u32::from_ne_bytes(pid_bytes.as_slice().try_into().unwrap());
    // The sleep holds the only other write end: EOF means it is dead.
    let start = Instant::now();
    let ready = wait_readable(&[alive_r.as_fd()], Some(5000)).unwrap();
    if !ready[0] {
        // SAFETY: cleaning up the orphan we started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!("role outlived its parent");
    }
    let mut buf = [0u8; 1];
    // SAFETY: reading into a local buffer.
    assert_eq!(
        unsafe { libc::read(alive_r.as_raw_fd(), buf.as_mut_ptr().cast(), 1) },
        0
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

// ------------------------------------------- started as a container user

/// Put the calling (root) process where a container runtime puts a non-root
/// container user that was given NET_ADMIN and NET_RAW (podman/runc with
/// `--user 65534:65534 --cap-drop=all --cap-add=NET_RAW,NET_ADMIN`): uid and
/// gid 65534, `groups` as supplementary groups, both capabilities in the
/// bounding, permitted, effective, inheritable and ambient sets, nothing else
/// (no CAP_SETPCAP, CAP_SETUID, CAP_SETGID). Returns false on any failure.
fn become_container_user(groups: &[libc::gid_t]) -> bool {
    let keep = (1u64 << 12) | (1u64 << 13);
    // SAFETY: prctl/setgroups/setres[ug]id/capset with valid arguments, in
    // a forked child.
    unsafe {
        for cap in 0..64u64 {
            if keep & (1 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_READ, cap) == 1
                && libc::prctl(libc::PR_CAPBSET_DROP, cap) != 0
            {
                return false;
            }
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::prctl(libc::PR_SET_KEEPCAPS, 1) != 0
            || libc::setresgid(65534, 65534, 65534) != 0
            || libc::setresuid(65534, 65534, 65534) != 0
        {
            return false;
        }
        let hdr = [0x2008_0522u32, 0];
        let (lo, hi) = (keep as u32, (keep >> 32) as u32);
        let data = [lo, lo, lo, hi, hi, hi];
        if libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) != 0
            || libc::prctl(libc::PR_SET_KEEPCAPS, 0) != 0
        {
            return false;
        }
        for cap in [12u64, 13] {
            let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
            if libc::prctl(libc::PR_CAP_AMBIENT, raise, cap, 0, 0) != 0 {
                return false;
            }
        }
    }
    true
}

/// As [`drop_in_child`], after [`become_container_user`]: the child's
/// status and report, or the error `apply` gave.
fn drop_as_container_user(
    groups: &'static [libc::gid_t],
    make_plan: fn() -> DropPlan<'static>,
) -> Result<(String, SandboxReport), String> {
    let (rx, tx) = pipe();
    let ended = in_child(|| {
        if !become_container_user(groups) {
            return 20;
        }
        let Ok(mut status_file) = std::fs::File::open("/proc/self/status") else {
            return 10;
        };
        let text = match sandbox::apply(&make_plan()) {
            Ok(report) => {
                let mut status = String::new();
                if status_file.read_to_string(&mut status).is_err() {
                    return 12;
                }
                format!(
                    "{status}\x00{}",
                    serde_json::to_string(&report).unwrap_or_default()
                )
            }
            Err(e) => format!("ERROR {e}"),
        };
        if write_all(tx.as_raw_fd(), text.as_bytes()) {
            0
        } else {
            13
        }
    });
    drop(tx);
    let out = String::from_utf8(read_to_end_bounded(rx)).unwrap();
    assert_eq!(ended, Ended::Exited(0), "child said: {out}");
    if let Some(e) = out.strip_prefix("ERROR ") {
        return Err(e.to_owned());
    }
    let (status, report) = out.split_once('\x00').unwrap();
    Ok((status.to_owned(), serde_json::from_str(report).unwrap()))
}

/// Regression: a role started inside a container as uid 65534 with ambient
/// capabilities has no CAP_SETPCAP (bounding set cannot shrink) and no
/// CAP_SETGID (its runtime-given supplementary group, its own gid, cannot
/// be cleared). Both steps used to fail; now they are left as they are,
/// reported, and everything else of the plan still holds.
#[test]
fn container_user_with_ambient_caps_drops_to_the_plan() {
    let (status, report) = drop_as_container_user(&[65534], net_admin_plan).unwrap();
    assert_eq!(status_field(&status, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(&status, "Groups"), "65534");
    assert_eq!(status_field(&status, "CapEff"), "0000000000001000");
    assert_eq!(status_field(&status, "CapPrm"), "0000000000001000");
    assert_eq!(status_field(&status, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&status, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd"), "0000000000003000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(report.capabilities, vec!["CAP_NET_ADMIN".to_owned()]);
    assert_eq!(
        report.bounding_set,
        vec!["CAP_NET_ADMIN".to_owned(), "CAP_NET_RAW".to_owned()]
    );
    // No CAP_SYS_ADMIN: the empty root is reported missing, not faked.
    assert!(!report.mount_namespace);
    assert!(report.mount_namespace_error.is_some());
    assert!(
        report
            .to_string()
            .contains(" bounding=CAP_NET_ADMIN,CAP_NET_RAW "),
        "{report}"
    );

    let (status, report) = drop_as_container_user(&[], nobody_plan).unwrap();
    assert_eq!(status_field(&status, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(&status, "Groups"), "");
    assert!(report.capabilities.is_empty());
}

/// What cannot be reached without the privilege still fails: another uid
/// (no CAP_SETUID), or a supplementary group other than the target gid.
#[test]
fn container_user_cannot_skip_what_would_matter() {
    fn other_uid() -> DropPlan<'static> {
        DropPlan {
            uid: 1000,
            gid: 65534,
            ..nobody_plan()
        }
    }
    let err = drop_as_container_user(&[], other_uid).unwrap_err();
    assert!(err.contains("setresuid"), "{err}");
    let err = drop_as_container_user(&[65534, 100], nobody_plan).unwrap_err();
    assert!(err.contains("setgroups"), "{err}");
}

// ------------------------------------------------------------ KVM tender

/// In a child: the DHCP engine's guest built on the KVM device as the
/// engine role builds it (channel at 3, device at 4, so the vCPU lands at
/// the fixed [`seccomp::FD_VCPU`]), the device closed, the watchdog
/// started, and the tender's filter ([`seccomp::TENDER`] over
/// [`seccomp::BASE`]) on both threads; then `then` with the armed guest
/// and the channel. `mark` goes to fd 0. Exit codes 10..=15 say which
/// step failed.
fn as_tender(
    chan: &Channel,
    mark: Option<&Channel>,
    then: impl FnOnce(mirage_kvm::ArmedVm, Channel) -> i32,
) -> Ended {
    as_tender_under(None, chan, mark, then)
}

/// [`as_tender`] for an engine with a direct channel (`Runtime::link`):
/// `image`'s guest, `peer` placed where the runtime puts it (fd 5, after
/// the device) and moved as the engine role moves it
/// ([`mirage_sdk::kvm::peer_above_the_vm`]); `then` gets both channels.
fn as_tender_with_peer(
    image: &'static [u8],
    chan: &Channel,
    peer: &Channel,
    then: impl FnOnce(mirage_kvm::ArmedVm, Channel, Channel) -> i32,
) -> Ended {
    let program = seccomp::filter(&[seccomp::BASE, seccomp::TENDER]).unwrap();
    let kvm = mirage_kvm::open().unwrap();
    in_child(|| {
        // SAFETY: placing live descriptors at fixed numbers and closing
        // every other one, in this child only.
        unsafe {
            let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD, 100);
            let (c, k, p) = (
                high(chan.as_raw_fd()),
                high(kvm.as_raw_fd()),
                high(peer.as_raw_fd()),
            );
            if libc::dup2(c, 3) != 3 || libc::dup2(k, 4) != 4 || libc::dup2(p, 5) != 5 {
                return 10;
            }
            libc::syscall(libc::SYS_close_range, 6, u32::MAX, 0);
        }
        let (Ok(chan), Ok(peer)) = (Channel::from_raw_fd(3), Channel::from_raw_fd(5)) else {
            return 15;
        };
        let Ok(peer) = mirage_sdk::kvm::peer_above_the_vm(peer) else {
            return 16;
        };
        // SAFETY: fd 4 is the device, placed above; this Kvm owns it now.
        let kvm = unsafe { mirage_kvm::Kvm::from_raw_fd(4) };
        let Ok(vm) = mirage_kvm::Vm::new(&kvm, image, &mirage_kvm::Config::default()) else {
            return 11;
        };
        drop(kvm);
        if vm.vcpu_fd() != seccomp::FD_VCPU || !vm.uses_sync_regs() {
            return 12;
        }
        let Ok(armed) = vm.arm() else { return 13 };
        if seccomp::install_program_all_threads(&program).is_err() {
            return 14;
        }
        then(armed, chan, peer)
    })
}

/// [`as_tender`] in a child that starts under `inherited` (a supervisor's
/// filter), as a restarted engine does.
fn as_tender_under(
    inherited: Option<&seccomp::Program>,
    chan: &Channel,
    mark: Option<&Channel>,
    then: impl FnOnce(mirage_kvm::ArmedVm, Channel) -> i32,
) -> Ended {
    let program = seccomp::filter(&[seccomp::BASE, seccomp::TENDER]).unwrap();
    let kvm = mirage_kvm::open().unwrap();
    in_child(|| {
        if let Some(inherited) = inherited
            && seccomp::install_program(inherited).is_err()
        {
            return 9;
        }
        // SAFETY: placing live descriptors at fixed numbers and closing
        // every other one, in this child only.
        unsafe {
            // Out of the way first: a source may sit at a target number.
            let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD, 100);
            let (c, k) = (high(chan.as_raw_fd()), high(kvm.as_raw_fd()));
            let m = mark.map(|m| high(m.as_raw_fd()));
            if libc::dup2(c, 3) != 3 || libc::dup2(k, 4) != 4 {
                return 10;
            }
            if let Some(m) = m
                && libc::dup2(m, 0) != 0
            {
                return 10;
            }
            libc::syscall(libc::SYS_close_range, 5, u32::MAX, 0);
        }
        // SAFETY: fd 4 is the device, placed above; this Kvm owns it now.
        let kvm = unsafe { mirage_kvm::Kvm::from_raw_fd(4) };
        let Ok(vm) = mirage_kvm::Vm::new(&kvm, mirage_kvm_testimages::DHCP, &mirage_kvm::Config::default())
        else {
            return 11;
        };
        drop(kvm);
        if vm.vcpu_fd() != seccomp::FD_VCPU || !vm.uses_sync_regs() {
            return 12;
        }
        let Ok(chan) = Channel::from_raw_fd(3) else {
            return 15;
        };
        let Ok(armed) = vm.arm() else { return 13 };
        if seccomp::install_program_all_threads(&program).is_err() {
            return 14;
        }
        then(armed, chan)
    })
}

fn kvm_here(what: &str) -> bool {
    mirage_testkit::kvm::usable(&format!("sandbox::{what}"))
}

/// A DHCP guest's DISCOVER through a tender in a child (under `inherited`
/// first, if given), then the end of its run.
fn tender_sends_a_discover(inherited: Option<&seccomp::Program>) {
    use mirage_ipc::{ClientIdKind, EngineAction, EngineConfig, EngineStart, FromEngine, ToEngine};
    let (sup, far) = Channel::pair().unwrap();
    let mac = [2, 0, 0, 0, 0, 9];
    sup.send(&ToEngine::Start {
        start: EngineStart {
            config: EngineConfig::new(mac, ClientIdKind::Mac),
            stored: None,
            link_up: true,
        },
        seed: [5; 32],
    })
    .unwrap();
    let checker = std::thread::spawn(move || {
        // The DISCOVER, from the guest through its tender.
        let frame = (0..10).find_map(|_| match sup.recv::<FromEngine>() {
            Ok(Some(FromEngine::Action(EngineAction::Transmit(frame)))) => Some(frame),
            _ => None,
        });
        // What else it says now (status), so that it waits in a receive
        // when the channel closes, which ends it with status 0.
        while wait_readable(&[sup.as_fd()], Some(200)).unwrap()[0] {
            if !matches!(sup.recv::<FromEngine>(), Ok(Some(_))) {
                break;
            }
        }
        drop(sup);
        frame
    });
    let ended = as_tender_under(inherited, &far, None, |armed, chan| {
        let mut host = mirage_sdk::engine_role::ChannelHost::new(chan);
        match armed.run(&mut host, &mut |_: &str| {}) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("the guest under its tender's filter: {e}");
                21
            }
        }
    });
    drop(far);
    let frame = checker
        .join()
        .unwrap()
        .unwrap_or_else(|| panic!("no DISCOVER from the guest; the tender ended {ended:?}"));
    assert_eq!(&frame[6..12], &mac);
    assert_eq!(ended, Ended::Exited(0));
}

#[test]
fn a_tender_runs_its_guest_under_its_filter() {
    if kvm_here("a_tender_runs_its_guest_under_its_filter") {
        tender_sends_a_discover(None);
    }
}

/// A restarted engine starts under its supervisor's filter, which holds
/// what building a VM takes ([`seccomp::KVM_SETUP`]) and the tender's list.
#[test]
fn a_restarted_tender_builds_its_vm_under_the_supervisors_filter() {
    if !kvm_here("a_restarted_tender_builds_its_vm_under_the_supervisors_filter") {
        return;
    }
    let tender = mirage_sdk::kvm::tender_plan(mirage_sdk::role::RolePlan::strict("engine", 1, 1, ENGINE));
    let setup = seccomp::kvm_setup_plan();
    let tables: Vec<&[&[Allow]]> = [&tender, &setup].iter().map(|p| &p.seccomp[..]).collect();
    let supervisor = seccomp::supervisor_filter(&tables).unwrap();
    tender_sends_a_discover(Some(&supervisor));
}

/// A tender with a direct channel to a peer role: the peer's end, handed
/// over where the VM's descriptor would go, is moved above the vCPU, so the
/// VM and vCPU get the numbers the tender's filter names; under that
/// filter the guest's sends reach the peer and the supervisor by their
/// route, and the peer's events reach the guest. Needs root and /dev/kvm.
#[test]
fn a_tender_relays_its_guests_direct_channel_under_its_filter() {
    if !kvm_here("a_tender_relays_its_guests_direct_channel_under_its_filter") {
        return;
    }
    type To = mirage_engine::ToEngine<(), u32>;
    type From = mirage_engine::FromEngine<u32, u32>;
    let (sup, sup_far) = Channel::pair().unwrap();
    let (peer, peer_far) = Channel::pair().unwrap();
    sup.send(&To::Start {
        start: (),
        seed: [0; 32],
    })
    .unwrap();
    let checker = std::thread::spawn(move || {
        let from = |c: &Channel| c.recv::<From>().ok().flatten();
        let hello = from(&sup);
        // A tender that died is the assertions' to report (with its end).
        let _ = peer.send(&To::Event(6));
        let relayed = from(&peer);
        let _ = peer.send(&To::Event(7));
        let refused = from(&sup);
        drop(sup);
        (hello, relayed, refused)
    });
    let ended = as_tender_with_peer(
        mirage_kvm_testimages::RELAY,
        &sup_far,
        &peer_far,
        |armed, chan, peer| {
            let mut host = mirage_sdk::engine_role::ChannelHost::with_peer(chan, peer);
            match armed.run(&mut host, &mut |_: &str| {}) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("the guest under its tender's filter: {e}");
                    21
                }
            }
        },
    );
    drop((sup_far, peer_far));
    let (hello, relayed, refused) = checker.join().unwrap();
    assert_eq!(hello, Some(mirage_engine::FromEngine::Action(0)), "{ended:?}");
    assert_eq!(relayed, Some(mirage_engine::FromEngine::Action(6)), "{ended:?}");
    assert_eq!(refused, Some(mirage_engine::FromEngine::Refused(7)), "{ended:?}");
    assert_eq!(ended, Ended::Exited(0));
}

/// What a compromised tender might try, beyond `KVM_RUN` on its vCPU.
#[derive(Clone, Copy, Debug)]
enum TenderForbidden {
    /// Another request on the vCPU: its registers.
    GetRegsOnVcpu,
    /// `KVM_RUN` on another descriptor (the VM's).
    RunOnVm,
    /// A new vCPU in the same VM.
    CreateVcpu,
    /// A terminal ioctl on stderr.
    TermiosOnStderr,
    Other(Forbidden),
}

#[test]
fn the_tender_filter_kills_other_ioctls_open_socket_and_execve() {
    if !kvm_here("the_tender_filter_kills_other_ioctls_open_socket_and_execve") {
        return;
    }
    use TenderForbidden::*;
    let vm_fd = (seccomp::FD_VCPU - 1) as libc::c_ulong;
    for call in [
        GetRegsOnVcpu,
        RunOnVm,
        CreateVcpu,
        TermiosOnStderr,
        Other(Forbidden::Openat),
        Other(Forbidden::SocketInet),
        Other(Forbidden::SocketPacket),
        Other(Forbidden::Execve),
        Other(Forbidden::MmapExec),
        Other(Forbidden::TgkillNotAbort),
    ] {
        let (mark_tx, mark_rx) = Channel::pair().unwrap();
        let (chan, _far) = Channel::pair().unwrap();
        let ended = as_tender(&chan, Some(&mark_tx), |armed, _chan| {
            mark(0);
            let vcpu = seccomp::FD_VCPU as libc::c_ulong;
            let mut regs = [0u8; 4096];
            // SAFETY: each call gets a valid descriptor number and buffer;
            // none changes anything outside this child if it is allowed.
            unsafe {
                match call {
                    GetRegsOnVcpu => {
                        libc::syscall(libc::SYS_ioctl, vcpu, 0x8090_ae81u64, regs.as_mut_ptr());
                    }
                    RunOnVm => {
                        libc::syscall(libc::SYS_ioctl, vm_fd, mirage_kvm::ioctls::KVM_RUN, 0);
                    }
                    CreateVcpu => {
                        libc::syscall(libc::SYS_ioctl, vm_fd, mirage_kvm::ioctls::KVM_CREATE_VCPU, 1);
                    }
                    TermiosOnStderr => {
                        libc::syscall(libc::SYS_ioctl, 2, libc::TCGETS, regs.as_mut_ptr());
                    }
                    Other(f) => {
                        make_forbidden_call(f);
                    }
                }
            }
            drop(armed);
            0
        });
        assert_eq!(ended, Ended::Signaled(libc::SIGSYS), "{call:?}");
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        let n = unsafe {
            libc::recv(
                mark_rx.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_DONTWAIT,
            )
        };
        assert_eq!(
            (n, byte[0]),
            (1, MARK),
            "{call:?}: died before the forbidden call"
        );
    }
}
