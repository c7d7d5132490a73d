//! Bounded waits. Every wait in a suite has a bound, and running out of it
//! panics with what was awaited (and, where the caller gives one, the state
//! that would explain why): a hung test is a failure with a message, never
//! a CI timeout.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// How often the polling waits look again.
const POLL: Duration = Duration::from_millis(20);

/// Poll `cond` every 20 ms until true; panic after `timeout`.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) {
    wait_for(timeout, "condition", cond)
}

/// Like [`wait_until`], naming `what` in the panic message.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not met within {timeout:?}");
        std::thread::sleep(POLL);
    }
}

/// Poll `f` every 20 ms until it returns `Some`; after `timeout` panic with
/// `what` and `explain()` (a log, a status file) so the failure says why.
pub fn wait_some<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what} not within {timeout:?}\n{}", explain());
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes;
/// returns whether it did (for tests that assert on the result themselves).
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `fd` is readable or `timeout` passes.
pub fn wait_readable(fd: impl AsFd, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let fd = fd.as_fd();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 60,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            // EINTR: try again until the deadline.
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_that_runs_out_names_what_it_waited_for() {
        let err = std::panic::catch_unwind(|| wait_for(Duration::from_millis(50), "the moon", || false))
            .unwrap_err();
        assert!(err.downcast_ref::<String>().unwrap().contains("the moon"));
        let mut n = 0;
        wait_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
        assert!(!eventually(Duration::from_millis(50), || false));
    }

    #[test]
    fn wait_some_panics_with_the_explanation() {
        let err = std::panic::catch_unwind(|| {
            wait_some(
                Duration::from_millis(50),
                "a lease",
                || None::<u8>,
                || "log: empty".into(),
            )
        })
        .unwrap_err();
        assert!(err.downcast_ref::<String>().unwrap().contains("log: empty"));
        assert_eq!(wait_some(Duration::from_secs(1), "x", || Some(7), String::new), 7);
    }

    #[test]
    fn readable_only_once_written() {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!wait_readable(&r, Duration::from_millis(30)));
        std::io::Write::write_all(&mut &w, b"x").unwrap();
        assert!(wait_readable(&r, Duration::from_millis(1000)));
    }
}
