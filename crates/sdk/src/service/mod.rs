//! The MirageSDK convention, written once for every service: where a
//! service's files live, its common command-line flags and how they layer
//! over its config file, its `status` command, its metrics names and its
//! versioned state files.
//!
//! A service names itself once, by implementing [`Service`]:
//!
//! ```
//! use mirage_sdk::service::{Paths, Service};
//!
//! #[derive(Debug, Clone, Copy)]
//! struct Ntp;
//! impl Service for Ntp {
//!     const NAME: &'static str = "ntp";
//! }
//!
//! assert_eq!(Ntp::paths().config, std::path::Path::new("/etc/mirage/ntp/config.toml"));
//! assert_eq!(Paths::of("ntp").run_dir, std::path::Path::new("/run/mirage/ntp"));
//! ```
//!
//! - [`cli`]: the common flags ([`CommonArgs`]), the sandbox choice, config
//!   loading and "flag over file over default".
//! - [`status`]: the `status` command (safe read of `status.json`, text and
//!   `--json` output).
//! - [`dirs`]: the state and runtime directories (and files such as
//!   resolv.conf) a supervisor opens for a role to write.
//! - [`escape`]: strings made safe for a terminal.
//! - [`ids`]: the ids each role runs as (config syntax, no root, fitting a
//!   supervisor that is not root, warnings).
//! - [`learned`]: `servers.json`, the servers a DHCP client learned, for
//!   the services that use them (NTP, DNS).
//! - [`launch`]: a supervisor's start: roles side by side, then its own
//!   sandbox.
//! - [`metrics`]: the Prometheus textfile writer (`mirage_<svc>_...`).
//! - [`publish`]: when and how status.json and metrics.prom are written
//!   (rate-limited, atomic, nothing lost).
//! - [`state`]: versioned JSON state files.

pub mod cli;
pub mod dirs;
pub mod escape;
pub mod ids;
pub mod launch;
pub mod learned;
pub mod metrics;
pub mod publish;
pub mod state;
pub mod status;

use std::path::PathBuf;

pub use cli::{Common, CommonArgs, CommonLayer, SandboxKind};
pub use status::StatusArgs;

/// Published by every service in its runtime directory: its state for the
/// `status` command and operators.
pub const STATUS_FILE: &str = "status.json";
/// Published by every service in its runtime directory: the node
/// exporter's textfile collector reads it.
pub const METRICS_FILE: &str = "metrics.prom";

/// A service built on the SDK, known by its short name.
pub trait Service {
    /// Short name: `dhcp` gives the binary `mirage-dhcp`, the directories
    /// `/etc/mirage/dhcp`, `/var/lib/mirage/dhcp`, `/run/mirage/dhcp` and
    /// metrics named `mirage_dhcp_...`. Lowercase letters and digits.
    const NAME: &'static str;
    /// What a running instance is called in messages ("is the client
    /// running?").
    const NOUN: &'static str = "service";

    /// The binary's name, for messages.
    fn program() -> String {
        format!("mirage-{}", Self::NAME)
    }

    /// The default paths of the convention.
    fn paths() -> Paths {
        Paths::of(Self::NAME)
    }
}

/// A service's default files and directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `/etc/mirage/<svc>/config.toml`: optional, read-only.
    pub config: PathBuf,
    /// `/var/lib/mirage/<svc>`: persistent state.
    pub state_dir: PathBuf,
    /// `/run/mirage/<svc>`: published status and metrics.
    pub run_dir: PathBuf,
}

impl Paths {
    /// The paths of service `name`.
    ///
    /// # Panics
    /// If `name` is not a valid service name ([`is_valid_name`]): it is a
    /// constant of the service, and a bad one would put files elsewhere.
    pub fn of(name: &str) -> Paths {
        assert!(is_valid_name(name), "{name:?} is not a service name");
        Paths {
            config: PathBuf::from(format!("/etc/mirage/{name}/config.toml")),
            state_dir: PathBuf::from(format!("/var/lib/mirage/{name}")),
            run_dir: PathBuf::from(format!("/run/mirage/{name}")),
        }
    }
}

/// A service name is 1..=32 lowercase ASCII letters and digits, starting
/// with a letter: one path component and a valid part of a metric name.
pub fn is_valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A supervisor's run as the process's exit status: an error is logged
/// (under the supervisor's prefix) and is a failure.
pub fn exit_code(run: Result<std::process::ExitCode, String>) -> std::process::ExitCode {
    run.unwrap_or_else(|e| {
        log::error!("{e}");
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dns;
    impl Service for Dns {
        const NAME: &'static str = "dns";
        const NOUN: &'static str = "server";
    }

    #[test]
    fn paths_follow_the_convention() {
        let p = Dns::paths();
        assert_eq!(p.config, PathBuf::from("/etc/mirage/dns/config.toml"));
        assert_eq!(p.state_dir, PathBuf::from("/var/lib/mirage/dns"));
        assert_eq!(p.run_dir, PathBuf::from("/run/mirage/dns"));
        assert_eq!(Dns::program(), "mirage-dns");
    }

    #[test]
    fn names_that_would_escape_a_directory_or_a_metric_name_are_refused() {
        for good in ["dhcp", "ntp", "dns", "https2"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            "a/b",
            "Dhcp",
            "2dns",
            "d-ns",
            "d_ns",
            "dns ",
            &"a".repeat(33),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(std::panic::catch_unwind(|| Paths::of("../etc")).is_err());
    }
}
