//! Starting roles: re-execute our own binary so that each role gets a fresh
//! address space (nothing of the supervisor's heap, no copied secrets) and
//! exactly the descriptors it needs (DESIGN.md section 3).
//!
//! The child gets:
//! - the given descriptors at fixed numbers 3, 4, 5, ... in the order given,
//!   and no other descriptor above 2 (everything else is marked close-on-exec
//!   with `close_range`, or one by one on kernels older than 5.11);
//! - stdin and stdout on `/dev/null`, stderr on a pipe back to the caller, who
//!   relays each line under the role's name (see `log::relay_line`);
//! - `PR_SET_PDEATHSIG(SIGKILL)`, so a role never outlives the supervisor;
//! - an empty environment, `/` as working directory, an empty signal mask
//!   and SIGPIPE at its default: a role takes its configuration from its
//!   channel, never from inherited state.
//!
//! Starting is split in two, so that a supervisor can start several roles at
//! once: [`start`] forks and returns as soon as the child exists, and
//! [`PendingRole::finish`] later waits until the child has executed the
//! binary (or reports why it could not). `std::process::Command::spawn`
//! always waits for the exec; with a few roles on a small machine, the
//! children's exec and start-up then run one after the other instead of side
//! by side, and that wait was most of the time to the first DISCOVER.
//! [`spawn`] does both steps for callers that start one role.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ChildStderr, ExitStatus};

/// What roles re-execute by default: the running binary itself, even if its
/// file was replaced or removed since it started.
pub const SELF_EXE: &str = "/proc/self/exe";

/// The fd number the first passed descriptor gets in the child.
pub const FIRST_FIXED_FD: RawFd = 3;

/// Most descriptors one role can be given.
const MAX_FDS: usize = 1024;

/// A child process we started: its pid, and its exit status once reaped.
/// Unlike `std::process::Child` it can be made from a plain fork.
#[derive(Debug)]
pub struct RoleProcess {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
}

impl From<std::process::Child> for RoleProcess {
    /// Take over a child started with `std::process::Command` (its stdio
    /// handles are closed; the process is not waited for or killed).
    fn from(child: std::process::Child) -> Self {
        RoleProcess {
            pid: child.id() as libc::pid_t,
            status: None,
        }
    }
}

impl RoleProcess {
    /// Process id.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// SIGKILL the process (no error if it already exited, reaped or not).
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill with our own child's pid; it is not reaped yet (we
        // would hold its status), so the pid cannot have been reused.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Its exit code, once reaped, if it exited (not killed by a signal).
    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Reap the process if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    /// Wait for the process to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.reap(0)? {
                return Ok(status);
            }
        }
    }

    fn reap(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw: libc::c_int = 0;
        loop {
            // SAFETY: waitpid on our own child with a valid status pointer.
            let rc = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
            if rc == self.pid {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                return Ok(Some(status));
            }
            if rc == 0 {
                return Ok(None);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }
}

/// A started role: the process and the read end of its stderr pipe.
#[derive(Debug)]
pub struct RoleChild {
    process: RoleProcess,
    stderr: ChildStderr,
}

impl RoleChild {
    /// Process id of the role.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// The role's stderr pipe, to poll (it is an fd) and read log lines from.
    pub fn stderr(&mut self) -> &mut ChildStderr {
        &mut self.stderr
    }

    /// The stderr pipe as a borrowed fd, for [`crate::channel::wait_readable`].
    pub fn stderr_fd(&self) -> BorrowedFd<'_> {
        self.stderr.as_fd()
    }

    /// The process, for `kill`, `wait` and `try_wait`.
    pub fn process(&mut self) -> &mut RoleProcess {
        &mut self.process
    }

    /// SIGKILL the role (no error if it already exited but was not reaped).
    pub fn kill(&mut self) -> io::Result<()> {
        self.process.kill()
    }

    /// Reap the role if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// Wait for the role to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.process.wait()
    }

    /// Split into the process and its stderr pipe.
    pub fn into_parts(self) -> (RoleProcess, ChildStderr) {
        (self.process, self.stderr)
    }
}

/// A role whose process exists but may not have executed the binary yet.
/// Its stderr pipe and the fds it was given are already in place, so the
/// caller may send it messages right away (they wait in the channel).
#[derive(Debug)]
#[must_use = "finish() reports whether the role could be executed"]
pub struct PendingRole {
    child: RoleChild,
    /// Read end of a close-on-exec pipe: EOF once the child has executed
    /// the binary; an [`ExecFailure`] record if it could not.
    exec_status: OwnedFd,
}

/// Where the child failed before it ran the role, reported with its errno.
const STAGES: [&str; 5] = [
    "arming the parent-death signal",
    "the parent exited before the role started",
    "placing descriptors",
    "changing to /",
    "executing",
];

/// What a child that could not execute the binary writes to its status pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExecFailure {
    stage: u32,
    errno: i32,
}

impl ExecFailure {
    const LEN: usize = 8;

    fn encode(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.stage.to_ne_bytes());
        b[4..].copy_from_slice(&self.errno.to_ne_bytes());
        b
    }

    /// `None` for anything but a whole record (a short read is reported as
    /// such by the caller).
    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::LEN] = b.try_into().ok()?;
        Some(ExecFailure {
            stage: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            errno: i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
    }

    fn into_error(self) -> io::Error {
        let os = io::Error::from_raw_os_error(self.errno);
        let stage = STAGES.get(self.stage as usize).copied().unwrap_or("starting");
        io::Error::new(os.kind(), format!("{stage}: {os}"))
    }
}

impl PendingRole {
    /// Process id of the role.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Wait until the child has executed the binary. On failure the child
    /// (which exits at once) is reaped and the error says which step failed,
    /// with the kind of its errno (`NotFound` for a missing executable).
    pub fn finish(mut self) -> io::Result<RoleChild> {
        let mut buf = [0u8; ExecFailure::LEN];
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: reading into the unfilled rest of a local buffer.
            let n = unsafe {
                libc::read(
                    self.exec_status.as_raw_fd(),
                    buf[got..].as_mut_ptr().cast(),
                    buf.len() - got,
                )
            };
            match n {
                0 => break,
                n if n > 0 => got += n as usize,
                _ => {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EINTR) {
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        return Err(err);
                    }
                }
            }
        }
        if got == 0 {
            // EOF with nothing written: the close-on-exec end went away in
            // a successful execve.
            return Ok(self.child);
        }
        // The child is on its way to _exit; reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(match ExecFailure::decode(&buf[..got]) {
            Some(f) => f.into_error(),
            None => io::Error::other("the child failed before exec without saying why"),
        })
    }
}

/// Start `exe` (default [`SELF_EXE`]) with `args` (after argv\[0\]) and
/// `fds` placed at 3, 4, 5, ... in the child, and wait until it runs.
///
/// The descriptors stay open (and owned) in the caller. Each must be above 2:
/// lower numbers are the child's standard streams. The child dies with
/// SIGKILL when the *thread* that called this exits (that is how the kernel
/// defines the parent for `PR_SET_PDEATHSIG`), so call it from the
/// supervisor's main thread.
pub fn spawn<I, S>(exe: Option<&Path>, args: I, fds: &[BorrowedFd<'_>]) -> io::Result<RoleChild>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    start(exe, args, fds)?.finish()
}

/// Like [`spawn`], but returns as soon as the child process exists, without
/// waiting for it to execute the binary; call [`PendingRole::finish`] for
/// that (a role that is never finished still runs, but an exec failure then
/// shows only as its early exit).
pub fn start<I, S>(exe: Option<&Path>, args: I, fds: &[BorrowedFd<'_>]) -> io::Result<PendingRole>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let sources: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    if sources.iter().any(|&fd| fd < FIRST_FIXED_FD) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors 0-2 cannot be passed to a role",
        ));
    }
    if sources.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    // Everything the child uses is allocated here: between fork and execve
    // it may only make async-signal-safe calls (the parent may have threads
    // whose locks were copied mid-use), so no allocation there.
    let path = cstring(exe.unwrap_or(Path::new(SELF_EXE)).as_os_str())?;
    let mut argv_owned = vec![path.clone()];
    for a in args {
        argv_owned.push(cstring(a.as_ref())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let devnull: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into();
    let (stderr_r, stderr_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    // SAFETY: an all-zero sigset_t is a valid value to initialise.
    let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty_mask` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut empty_mask) };
    let plan = ChildPlan {
        path: &path,
        argv: &argv,
        envp: &envp,
        sources: &sources,
        devnull: devnull.as_raw_fd(),
        stderr_w: stderr_w.as_raw_fd(),
        status_w: status_w.as_raw_fd(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        empty_mask,
    };
    let mut copies = vec![-1; sources.len()];

    // SAFETY: the child runs only `exec_child`, which makes async-signal-safe
    // system calls on memory allocated above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child (see above).
        unsafe { exec_child(&plan, &mut copies) }
    }
    // Our copies of the child's ends close here; the pipes report the
    // child's exec and its log lines.
    drop((stderr_w, status_w, devnull));
    Ok(PendingRole {
        child: RoleChild {
            process: RoleProcess { pid, status: None },
            stderr: ChildStderr::from(stderr_r),
        },
        exec_status: status_r,
    })
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the forked child needs, prepared by the parent.
struct ChildPlan<'a> {
    path: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    sources: &'a [RawFd],
    devnull: RawFd,
    stderr_w: RawFd,
    status_w: RawFd,
    parent: libc::pid_t,
    empty_mask: libc::sigset_t,
}

/// The forked child: set itself up and execute the binary, or report the
/// failed step on the status pipe and `_exit(127)`.
///
/// # Safety
/// Call only in a freshly forked child. Every call here is
/// async-signal-safe and nothing allocates (`copies` was allocated before
/// the fork, one slot per source).
unsafe fn exec_child(plan: &ChildPlan<'_>, copies: &mut [RawFd]) -> ! {
    let count = plan.sources.len() as RawFd;
    let first_free = FIRST_FIXED_FD + count;
    let mut status_fd = plan.status_w;
    let fail = |stage: u32, status_fd: RawFd| -> ! {
        let record = ExecFailure {
            stage,
            errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
        }
        .encode();
        // SAFETY: write and _exit are async-signal-safe; the record is on
        // the stack. A failed write leaves the parent with "exited early".
        unsafe {
            libc::write(status_fd, record.as_ptr().cast(), record.len());
            libc::_exit(127)
        }
    };
    // SAFETY (whole block): plain system calls with integer arguments or
    // pointers into memory prepared before the fork.
    unsafe {
        // Signals as a fresh process expects them: nothing blocked, SIGPIPE
        // not ignored (the Rust runtime ignores it in the parent).
        libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            fail(0, status_fd);
        }
        // The parent may have died before the prctl above took effect; then
        // we were re-parented and must not run orphaned.
        if libc::getppid() != plan.parent {
            *libc::__errno_location() = libc::ESRCH;
            fail(1, status_fd);
        }
        // Every descriptor the child keeps is first copied to a number at or
        // above `first_free`: F_DUPFD never replaces an open descriptor, and
        // nothing up there is a target of the dup2 calls below, so no
        // placement can clobber a descriptor that is still to be placed,
        // whatever numbers the parent's descriptors had.
        let hi = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
        let st = hi(status_fd);
        if st < 0 {
            fail(2, status_fd);
        }
        status_fd = st;
        let null = hi(plan.devnull);
        let err = hi(plan.stderr_w);
        if null < 0 || err < 0 {
            fail(2, status_fd);
        }
        for (copy, &src) in copies.iter_mut().zip(plan.sources) {
            *copy = hi(src);
            if *copy < 0 {
                fail(2, status_fd);
            }
        }
        // dup2 clears close-on-exec on the new descriptor, which is what
        // lets it survive execve; the copies themselves stay close-on-exec.
        let stdio = [(null, 0), (null, 1), (err, 2)];
        let fixed = copies.iter().copied().zip(FIRST_FIXED_FD..);
        for (from, to) in stdio.into_iter().chain(fixed) {
            if libc::dup2(from, to) < 0 {
                fail(2, status_fd);
            }
        }
        if mark_cloexec_from(first_free).is_err() {
            fail(2, status_fd);
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            fail(3, status_fd);
        }
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(4, status_fd)
    }
}

/// Mark every descriptor from `first` up close-on-exec. Marking (rather than
/// closing) keeps the exec-status pipe working until the very execve.
fn mark_cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
        return Err(err);
    }
    // Kernels before 5.11: walk up to the descriptor limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = RawFd::try_from(lim.rlim_cur).unwrap_or(RawFd::MAX);
    for fd in first..end {
        // SAFETY: F_SETFD on a number that may or may not be open; EBADF is fine.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    #[test]
    fn failure_records_round_trip_and_short_ones_are_refused() {
        let f = ExecFailure {
            stage: 4,
            errno: libc::ENOENT,
        };
        assert_eq!(ExecFailure::decode(&f.encode()), Some(f));
        assert_eq!(ExecFailure::decode(&f.encode()[..5]), None);
        let e = f.into_error();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("executing: "), "{e}");
        // A stage number from nowhere still makes an error, not a panic.
        let odd = ExecFailure { stage: 99, errno: 0 }.into_error();
        assert!(odd.to_string().starts_with("starting: "), "{odd}");
    }

    #[test]
    fn start_returns_before_the_exec_is_confirmed_and_finish_reports_it() {
        // Several children in flight at once, each confirmed afterwards.
        let pending: Vec<PendingRole> = (0..3)
            .map(|i| start(Some(Path::new("/bin/sh")), ["-c", &format!("echo r{i} >&2")], &[]).unwrap())
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            let mut child = p.finish().unwrap();
            let mut log = String::new();
            child.stderr().read_to_string(&mut log).unwrap();
            assert_eq!(log, format!("r{i}\n"));
            assert!(child.wait().unwrap().success());
            // Reaped: kill and wait stay harmless and keep the status.
            child.kill().unwrap();
            assert!(child.try_wait().unwrap().is_some_and(|s| s.success()));
        }
    }

    #[test]
    fn a_missing_executable_is_reported_by_finish_and_reaped() {
        let p = start(Some(Path::new("/nonexistent/role")), ["x"], &[]).unwrap();
        let pid = p.id();
        let err = p.finish().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().starts_with("executing: "), "{err}");
        // Reaped by finish: no such child is left to wait for.
        // SAFETY: waitpid with a null status pointer on a pid we started.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(rc, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ECHILD));
    }

    #[test]
    fn arguments_with_nul_bytes_are_refused_before_forking() {
        let err = start(Some(Path::new("/bin/true")), ["a\0b"], &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn descriptors_land_at_fixed_numbers_in_the_order_given() {
        let (a_r, a_w) = pipe().unwrap();
        let (b_r, b_w) = pipe().unwrap();
        let script = "printf 1 >&3; printf 2 >&4";
        // One child after the other, so each pipe's content has one order.
        for fds in [[a_w.as_fd(), b_w.as_fd()], [b_w.as_fd(), a_w.as_fd()]] {
            let mut child = spawn(Some(Path::new("/bin/sh")), ["-c", script], &fds).unwrap();
            assert!(child.wait().unwrap().success());
        }
        drop((a_w, b_w));
        let read_all = |fd: OwnedFd| {
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(read_all(a_r), "12");
        assert_eq!(read_all(b_r), "21");
    }

    #[test]
    fn kill_and_try_wait_on_a_running_child() {
        let mut child = spawn(Some(Path::new("/bin/sleep")), ["30"], &[]).unwrap();
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "SIGKILL did not end the child");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
