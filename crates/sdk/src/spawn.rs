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
//! - an empty environment and `/` as working directory: a role takes its
//!   configuration from its channel, never from inherited state.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};

/// What roles re-execute by default: the running binary itself, even if its
/// file was replaced or removed since it started.
pub const SELF_EXE: &str = "/proc/self/exe";

/// The fd number the first passed descriptor gets in the child.
pub const FIRST_FIXED_FD: RawFd = 3;

/// A started role: the process and the read end of its stderr pipe.
#[derive(Debug)]
pub struct RoleChild {
    child: Child,
    stderr: ChildStderr,
}

impl RoleChild {
    /// Process id of the role.
    pub fn id(&self) -> u32 {
        self.child.id()
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
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGKILL the role (no error if it already exited but was not reaped).
    pub fn kill(&mut self) -> io::Result<()> {
        self.child.kill()
    }

    /// Reap the role if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Wait for the role to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Split into the process and its stderr pipe.
    pub fn into_parts(self) -> (Child, ChildStderr) {
        (self.child, self.stderr)
    }
}

/// Start `exe` (default [`SELF_EXE`]) with `args` (after argv\[0\]) and
/// `fds` placed at 3, 4, 5, ... in the child.
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
    let sources: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    if sources.iter().any(|&fd| fd < FIRST_FIXED_FD) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors 0-2 cannot be passed to a role",
        ));
    }
    let count = RawFd::try_from(sources.len())
        .ok()
        .filter(|&n| n <= 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    // Duplicates of the sources land at or above `scratch`: clear of both
    // the sources and the targets, so no placement can clobber another.
    let scratch = sources
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(FIRST_FIXED_FD + count - 1)
        + 1;
    let first_free = FIRST_FIXED_FD + count;
    let mut temps: Vec<RawFd> = vec![-1; sources.len()];
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };

    let mut cmd = Command::new(exe.unwrap_or(Path::new(SELF_EXE)));
    cmd.args(args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let place_fds = move || -> io::Result<()> {
        // Runs in the forked child before execve: only async-signal-safe
        // calls, no allocation (`temps` was allocated before the fork).
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before the prctl above took effect; then
        // we were re-parented and must not run orphaned.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        for (tmp, &src) in temps.iter_mut().zip(&sources) {
            // SAFETY: F_DUPFD_CLOEXEC on an fd the parent passed open; the
            // copy is owned by this (about to exec) child only.
            *tmp = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, scratch) };
            if *tmp < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for (target, &tmp) in (FIRST_FIXED_FD..).zip(&temps) {
            // SAFETY: dup2 onto a fixed number; whatever was there belongs to
            // nobody in this child (it is about to exec). The copy made by
            // dup2 is not close-on-exec, which is what lets it survive execve.
            if unsafe { libc::dup2(tmp, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        mark_cloexec_from(first_free)
    };
    // SAFETY: the closure only makes async-signal-safe system calls and does
    // not allocate, as required between fork and exec.
    unsafe { cmd.pre_exec(place_fds) };
    let mut child = cmd.spawn()?;
    let Some(stderr) = child.stderr.take() else {
        // Cannot happen with Stdio::piped(); do not leave the child running.
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other("child has no stderr pipe"));
    };
    Ok(RoleChild { child, stderr })
}

/// Mark every descriptor from `first` up close-on-exec. Marking (rather than
/// closing) keeps std's own exec-error pipe working until the very execve.
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
