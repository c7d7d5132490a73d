//! Fixed file descriptor numbers: a role finds its channel, sockets and
//! directories at numbers agreed with the supervisor (see `spawn`), opened
//! before the role's `exec`. These wrappers are the one place where such a
//! number becomes an owned or borrowed fd.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Lowest fd number that may be used as a fixed fd (0-2 are stdio).
pub const FIRST_FIXED_FD: RawFd = 3;

/// Is `fd` open in this process?
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; it is harmless for any
    // integer, open or not.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Take ownership of fixed fd `fd`. Panics if it is not open or is a stdio
/// number: that is a wiring bug between supervisor and role, not input.
pub fn take_fixed(fd: RawFd) -> OwnedFd {
    assert!(fd >= FIRST_FIXED_FD && is_open(fd), "fixed fd {fd} is not open");
    // SAFETY: the fd is open (checked above) and, by the spawn contract, owned
    // by nobody else in this process; callers take each number once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Borrow fixed fd `fd` for the life of the process (directory fds the role
/// keeps open until it exits).
pub fn borrow_fixed(fd: RawFd) -> BorrowedFd<'static> {
    assert!(fd >= FIRST_FIXED_FD && is_open(fd), "fixed fd {fd} is not open");
    // SAFETY: the fd is open and is never closed while the process runs (the
    // role never takes ownership of the numbers it borrows).
    unsafe { BorrowedFd::borrow_raw(fd) }
}
