//! The MirageSDK test kit: what every service's end-to-end suite needs to
//! run real processes on real (but private) networks, shared by the DHCP,
//! NTP and DNS suites. A dev-dependency only
//! (`publish = false`); nothing in it knows a protocol, but for [`ntp`] and [`dns`].
//!
//! - [`netns`]: named network namespaces and veth pairs, removed on drop
//!   (also on panic), commands and whole threads run inside one, unique
//!   names per test process, and a namespace of its own per test body.
//! - [`process`]: real server processes in a namespace, killed and reaped on
//!   drop, their logs printed when a test fails; waiting until a UDP or TCP
//!   port listens.
//! - [`procfs`]: a role's `/proc/PID/status` (ids, capabilities, seccomp
//!   mode, NoNewPrivs), a daemon's role processes, the KVM descriptors a
//!   process holds.
//! - [`monitor`]: rtnetlink address events seen through `ip monitor`,
//!   synchronised with marker addresses instead of sleeps.
//! - [`role`]: the compromised-engine pattern: start one real role of a
//!   service binary with the descriptors and arguments a supervisor would
//!   give it, and talk to it over its channel as the supervisor.
//! - [`raw`]: hostile-server scaffolding: a raw packet server on one end of
//!   a veth pair that answers each frame with scripted frames, injects and
//!   floods.
//! - [`ntp`]: a programmable NTP server (UDP, in a namespace): a script
//!   builds every answer from the request, from the server's address or
//!   another one, now or late; unsolicited datagrams and floods.
//! - [`dns`]: a scripted DNS upstream (UDP and TCP, in a namespace): a
//!   script builds every reply from the query, honest, bent or raw bytes,
//!   from the server's address or another one, now, late or when the test
//!   releases it; unsolicited datagrams and floods.
//! - [`container`]: a service's image in podman with runc: written by the
//!   reproducible writer and loaded through `oci:`, run as the operator
//!   runs it in a namespace of the test's, containers and images removed
//!   on drop; the supervisor's and roles' privileges read from `/proc`;
//!   a Containerfile's build compared with the writer's image.
//! - [`kvm`]: whether the `--sandbox kvm` runs of a suite run: they fail
//!   loudly without a usable `/dev/kvm` unless `MIRAGE_NO_KVM=1`.
//! - [`layout`]: a service binary's segments by process and what of each a
//!   running process has resident.
//! - [`tempdir`]: a scratch directory per test, removed on drop.
//! - [`cmd`] and [`wait`]: commands that must succeed, bounded waits that
//!   panic with a clear message.
//!
//! Tests built on the kit need root (namespaces, raw sockets, privilege
//! drop); CI runs them as root. Traffic stays inside namespaces the test
//! created.
//!
//! # Example: a namespace test
//!
//! Two namespaces joined by a veth pair, a server process in one, checks
//! from the other; everything is gone when `server`, `client` and `procs`
//! drop, whether the test passes or panics.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use mirage_testkit::netns::{Netns, veth};
//! use mirage_testkit::process::{Proto, Procs, wait_listening};
//!
//! let server = Netns::add_unique("ks");
//! let client = Netns::add_unique("kc");
//! veth(&server, "veth-s", &client, "veth-c");
//! server.exec(&["ip", "addr", "add", "10.9.0.1/24", "dev", "veth-s"]);
//! client.exec(&["ip", "addr", "add", "10.9.0.2/24", "dev", "veth-c"]);
//!
//! let mut procs = Procs::new();
//! let log = std::env::temp_dir().join("kit-example-server.log");
//! let mut cmd = server.command("busybox");
//! cmd.args(["nc", "-ll", "-p", "7000", "-e", "cat"]);
//! procs.spawn_logged(cmd, &log);
//! wait_listening(&server, Proto::Tcp, 7000, Duration::from_secs(10));
//! client.exec(&["busybox", "ping", "-c", "1", "-W", "5", "10.9.0.1"]);
//! ```

#![forbid(unsafe_code)]

pub mod clock;
pub mod cmd;
pub mod container;
pub mod dns;
pub mod kvm;
pub mod layout;
pub mod monitor;
pub mod netns;
pub mod ntp;
pub mod process;
pub mod procfs;
pub mod raw;
pub mod role;
mod scripted;
pub mod tempdir;
pub mod wait;

use std::path::{Path, PathBuf};

/// The service binary a suite tests: the file the environment variable
/// `env` names when it is set (CI points it at the shipped release build),
/// else `built`, the one cargo built for the tests (pass
/// `env!("CARGO_BIN_EXE_<name>")`). Panics if `env` names no file: a typo
/// must not silently test another build.
pub fn service_bin(env: &str, built: &str) -> PathBuf {
    pick_bin(env, std::env::var(env).ok(), built)
}

fn pick_bin(env: &str, value: Option<String>, built: &str) -> PathBuf {
    match value {
        Some(path) if !path.is_empty() => {
            assert!(Path::new(&path).is_file(), "{env}={path}: no such file");
            PathBuf::from(path)
        }
        _ => PathBuf::from(built),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_binary_and_a_missing_one_panics() {
        assert_eq!(pick_bin("X", None, "/built"), PathBuf::from("/built"));
        assert_eq!(
            pick_bin("X", Some(String::new()), "/built"),
            PathBuf::from("/built")
        );
        let file = std::env::temp_dir().join(format!("testkit-bin-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let named = Some(file.display().to_string());
        assert_eq!(pick_bin("X", named.clone(), "/built"), file);
        std::fs::remove_file(&file).unwrap();
        let missing = std::panic::catch_unwind(|| pick_bin("X", named, "/built"));
        assert!(missing.is_err(), "a named but missing binary must panic");
    }
}
