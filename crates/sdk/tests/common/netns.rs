//! Test helper: run a test body in a network namespace of its own.
//!
//! The body runs on a new thread that calls `unshare(CLONE_NEWNET)`: only that
//! thread moves, so tests running in parallel never see each other's links,
//! and the host's interfaces are never touched. Processes spawned from the
//! thread (`ip`, `ethtool`) inherit its namespace. The namespace has no name
//! and no bind mount: it disappears with its last user (the thread, its
//! sockets, and the children, which [`Spawned`] kills on drop), on success
//! and on panic alike. Needs root (CAP_SYS_ADMIN for unshare, CAP_NET_ADMIN
//! inside); CI runs tests as root.
#![allow(dead_code)]

use std::os::fd::RawFd;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `body` in a fresh network namespace with `lo` up, failing the test
/// if it panics or takes longer than `timeout`.
pub fn run_in_netns<F>(timeout: Duration, body: F)
where
    F: FnOnce() + Send + 'static,
{
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        // Signals the waiting test thread when the body ends, panic or not.
        struct Done(mpsc::Sender<()>);
        impl Drop for Done {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let _done = Done(done_tx);
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed (tests need root): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        body();
    });
    match done_rx.recv_timeout(timeout) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test body did not finish within {timeout:?}"),
    }
}

/// Runs a command to completion, panicking with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS...` in the current thread's namespace.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Creates a veth pair `a`/`b` in the current namespace, both down.
pub fn veth_pair(a: &str, b: &str) {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
}

/// A child process killed and reaped on drop.
pub struct Spawned(pub Child);

impl Spawned {
    pub fn new(program: &str, args: &[&str]) -> Spawned {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {program}: {e}"));
        Spawned(child)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `fd` is readable or `timeout` passes.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, count 1.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, left.as_millis().min(60_000) as i32) };
        if rc > 0 {
            return true;
        }
        if rc == 0 || Instant::now() >= deadline {
            return false;
        }
        // rc < 0: EINTR, try again until the deadline.
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
