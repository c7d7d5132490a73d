//! Private mount namespace with an empty, read-only root.
//!
//! A role that parses or applies network input has no business with the file
//! system: it gets its directories as open fds. Hiding the whole tree makes
//! that structural instead of relying on Landlock alone (which older kernels
//! lack). Steps: `unshare(CLONE_NEWNS)`, make every mount private (so nothing
//! we do propagates to the host), mount a read-only tmpfs over an existing
//! directory, make it the root with the `pivot_root(".", ".")` idiom
//! (pivot_root(2), "new_root and put_old may be the same directory") and
//! detach the old root stacked on top of it.
//!
//! This needs `CAP_SYS_ADMIN` in the current user namespace, which a
//! container may not grant; it is best effort and the caller reports whether
//! it holds.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Existing directories to mount the new root on. Any directory will do,
/// the mount only lives in our private namespace until the pivot; /proc
/// exists wherever roles can be started (they re-execute /proc/self/exe).
const MOUNTPOINTS: [&CStr; 4] = [c"/proc", c"/tmp", c"/dev", c"/mnt"];

fn check(step: &str, rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{step}: {e}")))
    }
}

/// Enter a new mount namespace whose root is an empty read-only tmpfs. On
/// error the process may be in a new namespace that still shows the host
/// tree (as private mounts), which is no worse than before.
pub(super) fn enter_empty_root() -> io::Result<()> {
    // SAFETY: unshare with a flag only.
    check("unshare(CLONE_NEWNS)", unsafe {
        libc::unshare(libc::CLONE_NEWNS)
    })?;
    // SAFETY: literal C strings; null source, type and data are allowed for
    // a propagation change.
    check("make / private", unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for target in MOUNTPOINTS {
        // SAFETY: literal C strings for source, target, type and data.
        let rc = unsafe {
            libc::mount(
                c"mirage-root".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                c"size=4k,mode=0555".as_ptr().cast(),
            )
        };
        if rc != 0 {
            last = io::Error::last_os_error();
            continue;
        }
        return pivot_into(target).inspect_err(|_| {
            // Put the view back as it was (the namespace stays private).
            // SAFETY: literal C string; detaching our own mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            // SAFETY: literal C string.
            unsafe { libc::chdir(c"/".as_ptr()) };
        });
    }
    Err(io::Error::new(last.kind(), format!("mount tmpfs: {last}")))
}

fn pivot_into(target: &CStr) -> io::Result<()> {
    // SAFETY: literal C string.
    check("chdir new root", unsafe { libc::chdir(target.as_ptr()) })?;
    // SAFETY: pivot_root has no libc wrapper; both arguments are ".".
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    check("pivot_root", if rc == 0 { 0 } else { -1 })?;
    // The old root is now mounted on top of "."; detach it (lazily: fds the
    // role holds keep their files reachable).
    // SAFETY: literal C string.
    check("detach old root", unsafe {
        libc::umount2(c".".as_ptr(), libc::MNT_DETACH)
    })?;
    // SAFETY: literal C string.
    check("chdir /", unsafe { libc::chdir(c"/".as_ptr()) })
}

/// open_tree(2) flags (linux/mount.h; not in every libc crate release).
const OPEN_TREE_CLONE: libc::c_uint = 1;

/// Replace the directory descriptor `fd` (same number) by one on a private,
/// detached clone of its mount whose root is that directory.
///
/// A descriptor opened before the mount namespace step still points into
/// the host's tree, so without Landlock `openat(fd, "../../etc/passwd")`
/// would walk out of the empty root. `..` from the root of a detached mount
/// stays where it is (path_resolution(7): a mount without a parent), so
/// through the clone only what lies beneath the directory can be reached,
/// whatever the kernel's Landlock support. Needs `CAP_SYS_ADMIN` (and the
/// mount in the caller's namespace: call it before `unshare`); the clone
/// lives as long as a descriptor to it.
pub(super) fn contain_dir(fd: RawFd) -> io::Result<()> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: open_tree reads the empty C string and touches no other memory;
    // an fd number that is not open makes it fail with EBADF.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, fd, c"".as_ptr(), flags) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("open_tree: {e}")));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(rc as RawFd) };
    // open_tree gives an O_PATH descriptor; fsync and getdents need a real one.
    let dir = rustix::fs::openat(
        &tree,
        ".",
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // SAFETY: dup3 onto a number the caller gave us for this purpose; the
    // old open file description is released, the number stays open.
    check(
        "dup3",
        unsafe { libc::dup3(dir.as_raw_fd(), fd, libc::O_CLOEXEC) }.min(0),
    )
}
