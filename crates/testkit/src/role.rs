//! The compromised-engine pattern: a test stands where the supervisor
//! would, starts one real role of the service binary (the shipped code, its
//! real sandbox, the descriptors the supervisor would hand it) and talks to
//! it over its channel. A test that sends what a compromised peer could
//! send (out-of-policy intents, forged frames) proves the role's own checks,
//! not the supervisor's.
//!
//! Roles are re-executions of the service binary as `<bin> role <name>`,
//! told everything else by their hello, the first message on their channel
//! ([`mirage_sdk::role`]): [`start_planned`] starts one from the service's
//! own [`RolePlan`] and configuration. The role dies with the thread that
//! spawned it, so run the whole test on one thread in the role's namespace
//! ([`crate::netns::in_netns`]).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::role::{RoleOptions, RolePlan};
use mirage_sdk::service::SandboxKind;
use mirage_sdk::spawn::{RoleChild, spawn};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The command line of role `role` under the SDK's re-exec convention.
pub fn role_args(role: &str) -> Vec<String> {
    mirage_sdk::role::args(role)
}

/// Start the process of role `args` (see [`role_args`]) of the service
/// binary `bin` with `fds` as its descriptors 3, 4, ... (the channel
/// first); panics if it cannot be started. The role waits for its hello.
pub fn start_role(bin: &Path, args: &[String], fds: &[BorrowedFd<'_>]) -> RoleChild {
    spawn(Some(bin), args, fds).unwrap_or_else(|e| panic!("start {bin:?} {args:?}: {e}"))
}

/// Start role `plan` of `bin` as its supervisor would: `role NAME`, `fds`
/// at 4, 5, ..., its hello (seccomp on, log level debug, `config`) and
/// `first` waiting in its channel. Returns the test's end of the channel.
pub fn start_planned<T: Serialize>(
    bin: &Path,
    plan: &RolePlan,
    config: &T,
    first: Option<Vec<u8>>,
    fds: &[BorrowedFd<'_>],
) -> (Channel, RoleChild) {
    let options = RoleOptions {
        sandbox: SandboxKind::Seccomp,
        log_level: log::LevelFilter::Debug,
    };
    let start = plan
        .start(options, config, first)
        .unwrap_or_else(|e| panic!("the {} role's hello: {e}", plan.name));
    let (ours, theirs) = Channel::pair().unwrap();
    let mut all = vec![theirs.as_fd()];
    all.extend_from_slice(fds);
    let child = start_role(bin, &start.args, &all);
    drop(theirs);
    for message in &start.first {
        ours.send_raw(message).unwrap();
    }
    (ours, child)
}

/// The next message on `chan` if one comes within `ms`; `None` on
/// timeout or end of channel. Panics on a message that does not decode:
/// a role must never send one.
pub fn recv_within<T: DeserializeOwned>(chan: &Channel, ms: u64) -> Option<T> {
    let ready = wait_readable(&[chan.as_fd()], Some(ms)).unwrap();
    if !ready[0] {
        return None;
    }
    chan.recv::<T>().expect("role sent a bad message")
}

/// Whether the role still runs (reaping it if it has exited).
pub fn alive(role: &mut RoleChild) -> bool {
    role.try_wait().unwrap().is_none()
}

/// Wait until the role has exited (panics, naming `what`, after `timeout`).
pub fn wait_dead(role: &mut RoleChild, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while alive(role) {
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_args_follow_the_re_exec_convention() {
        assert_eq!(role_args("engine").join(" "), "role engine");
    }

    #[test]
    fn a_role_is_alive_until_it_exits_and_silence_is_none() {
        let (ours, theirs) = Channel::pair().unwrap();
        // `sh -c CMD role x`: a stand-in role that lives until its channel
        // (fd 3) is closed by our side.
        let args: Vec<String> = ["-c", "read _ <&3 || true", "role", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut role = start_role(Path::new("/bin/sh"), &args, &[theirs.as_fd()]);
        drop(theirs);
        assert!(alive(&mut role));
        assert!(recv_within::<u32>(&ours, 50).is_none());
        drop(ours);
        wait_dead(&mut role, Duration::from_secs(10), "stand-in role");
        assert!(!alive(&mut role));
    }
}
