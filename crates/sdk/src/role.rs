//! Roles declared as data and started once, by the SDK.
//!
//! A service declares each role as a [`RolePlan`]: its ids, the
//! capabilities it keeps, its seccomp allow-list (SDK tables and the
//! service's own), the directory descriptors Landlock allows and contains,
//! its limits. The supervisor turns a plan and the role's own typed
//! configuration into a [`RoleSpec`] with one call ([`RolePlan::spec`]) or
//! into a [`RoleStart`] for a restart ([`RolePlan::start`]).
//!
//! The role is started as `<bin> role NAME` and nothing else: everything it
//! needs comes in its *hello* ([`Hello`]), the first message on its channel
//! (fd 3), which the supervisor wrote before the role ran: the plan as data
//! (the allow-list as numbers and conditions), whether the sandbox is on,
//! the log level and the service's configuration for the role. A service's
//! own first message (the engine's `Start`) follows the hello.
//!
//! In the role, [`main_if_role`] reads the hello, starts logging and calls
//! the service's entry for the role with a [`Starting`]: the role checks
//! and wraps its descriptors (which needs calls its allow-list does not
//! hold), then [`Starting::enter`] applies the plan
//! ([`crate::sandbox::apply`]), installs the seccomp filter last, logs the
//! "sandbox in force" line and hands over the channel. The channel exists
//! only on the far side of `enter`, so a role cannot talk before its
//! sandbox is in force.

use std::os::fd::{BorrowedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::runtime::{Restart, RoleSpec, RoleStart};
use crate::sandbox::seccomp::{self, Allow, Rule};
use crate::sandbox::{Capability, DirAccess, DirRef, DropPlan, LandlockDir, SandboxReport};
use crate::service::SandboxKind;

/// The role's channel to its supervisor.
pub const FD_CHANNEL: RawFd = 3;

/// Exit status of a role whose entry failed before its sandbox was in
/// force ([`Starting::enter`]): at its setup. The runtime does not restart
/// a role that fails at setup the same way twice in a row (a restart
/// changes nothing its setup depends on: ids, limits, capabilities).
pub const EXIT_SETUP_FAILED: i32 = 72;
/// Exit status of a role that said no restart can help ([`cannot_run`]):
/// the service stops.
pub const EXIT_CANNOT_RUN: i32 = 78;

/// Whether this process's sandbox is in force (set by [`Starting::enter`]).
static ENTERED: AtomicBool = AtomicBool::new(false);
/// Whether this role said it cannot run ([`cannot_run`]).
static CANNOT_RUN: AtomicBool = AtomicBool::new(false);

/// `why` as a role's error that no restart can help (its configuration
/// cannot work here): returned from the role's entry, the role exits with
/// [`EXIT_CANNOT_RUN`] and the runtime stops the service instead of
/// restarting the role.
pub fn cannot_run(why: impl Into<String>) -> String {
    CANNOT_RUN.store(true, Ordering::Relaxed);
    why.into()
}

/// The exit status of a role whose entry failed.
fn failure_status() -> u8 {
    if CANNOT_RUN.load(Ordering::Relaxed) {
        EXIT_CANNOT_RUN as u8
    } else if !ENTERED.load(Ordering::Relaxed) {
        EXIT_SETUP_FAILED as u8
    } else {
        1
    }
}

/// One role of a service, as data (see the module docs).
#[derive(Clone, Debug)]
pub struct RolePlan {
    /// The role's name: its subcommand (`role NAME`), its log prefix and
    /// the `seccomp=NAME` of its "sandbox in force" line.
    pub name: &'static str,
    /// Numeric ids to switch to (real, effective and saved).
    pub uid: u32,
    pub gid: u32,
    /// Capabilities kept in the permitted and effective sets; every other
    /// one is gone for good.
    pub keep_caps: Vec<Capability>,
    /// The tables its seccomp allow-list is composed of: SDK building
    /// blocks ([`seccomp::BASE`]...) and the service's own.
    pub seccomp: Vec<&'static [Allow]>,
    /// Directories Landlock allows, by the role's fixed descriptor number;
    /// empty means no file access at all.
    pub landlock_dirs: Vec<(RawFd, DirAccess)>,
    /// Directory descriptors replaced by ones nothing outside the
    /// directory can be reached from (step 0 of [`crate::sandbox::apply`]).
    pub contain_dirs: Vec<RawFd>,
    /// TCP ports Landlock lets the role connect to (empty: none; TCP bind
    /// is never allowed).
    pub tcp_connect_ports: Vec<u16>,
    /// `RLIMIT_NOFILE`.
    pub nofile: u64,
    /// `RLIMIT_NPROC` 0: no fork.
    pub nproc_zero: bool,
    /// `RLIMIT_FSIZE` 0: no file growth.
    pub fsize_zero: bool,
    /// A private mount namespace with an empty read-only root (never with
    /// `--sandbox none`).
    pub private_mount_ns: bool,
    /// An engine role run as a KVM guest: its memory in bytes (0: the
    /// tender's default, `mirage_kvm::Config::default()`). Per service:
    /// an engine whose state grows with its configuration (a cache) needs
    /// more than the default ([`crate::kvm::guest_memory_mib_for`]).
    pub guest_memory: usize,
}

impl RolePlan {
    /// The strictest plan ([`DropPlan::strict`]) under the role's own ids,
    /// with `seccomp` as its allow-list: no capabilities, 16 fds, no fork,
    /// no file growth, no file access, empty root. Loosen only what the
    /// role needs.
    pub fn strict(name: &'static str, uid: u32, gid: u32, seccomp: &[&'static [Allow]]) -> RolePlan {
        let strict = DropPlan::strict();
        RolePlan {
            name,
            uid,
            gid,
            keep_caps: Vec::new(),
            seccomp: seccomp.to_vec(),
            landlock_dirs: Vec::new(),
            contain_dirs: Vec::new(),
            tcp_connect_ports: Vec::new(),
            nofile: strict.nofile,
            nproc_zero: strict.nproc_zero,
            fsize_zero: strict.fsize_zero,
            private_mount_ns: strict.private_mount_ns,
            guest_memory: 0,
        }
    }

    /// The plan as it travels in the hello.
    pub fn data(&self) -> PlanData {
        PlanData {
            uid: self.uid,
            gid: self.gid,
            keep_caps: self.keep_caps.iter().map(|c| c.to_string()).collect(),
            seccomp: seccomp::allow_list(&self.seccomp)
                .iter()
                .map(Rule::from)
                .collect(),
            landlock_dirs: self.landlock_dirs.clone(),
            contain_dirs: self.contain_dirs.clone(),
            tcp_connect_ports: self.tcp_connect_ports.clone(),
            nofile: self.nofile,
            nproc_zero: self.nproc_zero,
            fsize_zero: self.fsize_zero,
            private_mount_ns: self.private_mount_ns,
            guest_memory: self.guest_memory,
        }
    }

    /// The role's hello, encoded: its first message.
    pub fn hello<T: Serialize>(&self, options: RoleOptions, config: &T) -> Result<Vec<u8>, String> {
        let config =
            mirage_ipc::encode(config).map_err(|e| format!("the {} role's configuration: {e}", self.name))?;
        let hello = Hello {
            role: self.name.to_owned(),
            plan: self.data(),
            // A service that never resolved `auto` (no guest image, no
            // `kvm::choose`) gets what auto resolves to without a guest.
            sandbox: match options.sandbox {
                SandboxKind::Auto => SandboxKind::Seccomp,
                kind => kind,
            },
            log_level: options.log_level.as_str().to_owned(),
            config,
        };
        mirage_ipc::encode(&hello).map_err(|e| format!("the {} role's hello: {e}", self.name))
    }

    /// How to start the role (a first start or a restart): `role NAME`,
    /// its hello, then the service's own first message if any. A role
    /// restarted with descriptors gets them in the result's `fds`.
    pub fn start<T: Serialize>(
        &self,
        options: RoleOptions,
        config: &T,
        first: Option<Vec<u8>>,
    ) -> Result<RoleStart, String> {
        let mut messages = vec![self.hello(options, config)?];
        messages.extend(first);
        Ok(RoleStart {
            exe: None,
            args: args(self.name),
            first: messages,
            fds: Vec::new(),
        })
    }

    /// The role's [`RoleSpec`]: [`RolePlan::start`] with the descriptors it
    /// gets at 4, 5, ... and its restart policy.
    pub fn spec<'a, T: Serialize>(
        &self,
        options: RoleOptions,
        config: &T,
        first: Option<Vec<u8>>,
        fds: Vec<BorrowedFd<'a>>,
        restart: Restart,
    ) -> Result<RoleSpec<'a>, String> {
        let start = self.start(options, config, first)?;
        Ok(RoleSpec {
            name: self.name,
            exe: start.exe,
            args: start.args,
            fds,
            first: start.first,
            restart,
        })
    }
}

/// What every role of a service shares at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleOptions {
    /// What is in force (never `Auto`: the supervisor resolved it,
    /// [`crate::kvm::choose`]). `none`: no seccomp filter and no private
    /// mount namespace (debugging); `kvm`: the engine role runs its guest
    /// ([`crate::engine_role::run_sandboxed`]), the others are as with
    /// `seccomp`.
    pub sandbox: SandboxKind,
    pub log_level: log::LevelFilter,
}

/// The command line of role `name` after the executable: `role NAME`.
pub fn args(name: &str) -> Vec<String> {
    vec!["role".to_owned(), name.to_owned()]
}

/// A [`RolePlan`] as data, as the role receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanData {
    pub uid: u32,
    pub gid: u32,
    /// `CAP_NET_ADMIN`-style names.
    pub keep_caps: Vec<String>,
    pub seccomp: Vec<Rule>,
    pub landlock_dirs: Vec<(RawFd, DirAccess)>,
    pub contain_dirs: Vec<RawFd>,
    pub tcp_connect_ports: Vec<u16>,
    pub nofile: u64,
    pub nproc_zero: bool,
    pub fsize_zero: bool,
    pub private_mount_ns: bool,
    /// [`RolePlan::guest_memory`].
    pub guest_memory: usize,
}

/// A role's first message (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be the name the role was started as.
    pub role: String,
    pub plan: PlanData,
    /// The sandbox in force: `seccomp`, `kvm` or `none`.
    pub sandbox: SandboxKind,
    /// A `log::LevelFilter` name.
    pub log_level: String,
    /// The service's configuration for the role, postcard-encoded.
    pub config: Vec<u8>,
}

/// A role's entry: its name and the function that runs it.
pub type Entry = (&'static str, fn(Starting) -> Result<(), String>);

/// A role between its hello and its sandbox: the service reads its
/// configuration and takes its descriptors, then calls [`Starting::enter`].
pub struct Starting {
    name: &'static str,
    channel: Channel,
    hello: Hello,
}

impl Starting {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The sandbox in force, as the supervisor resolved it.
    pub fn sandbox(&self) -> SandboxKind {
        self.hello.sandbox
    }

    /// The guest memory its plan names ([`RolePlan::guest_memory`]; 0:
    /// the tender's default).
    pub fn guest_memory(&self) -> usize {
        self.hello.plan.guest_memory
    }

    /// The service's configuration for this role, from the hello.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, String> {
        mirage_ipc::decode(&self.hello.config)
            .map_err(|e| format!("the {} role's configuration: {e}", self.name))
    }

    /// Apply the plan, install the seccomp filter last, log what is in
    /// force, and hand over the channel.
    pub fn enter(self) -> Result<Started, String> {
        self.enter_with(|| Ok(())).map(|(started, ())| started)
    }

    /// [`Starting::enter`] for a role that needs a thread of its own (a
    /// KVM tender's watchdog): `before_filter` runs once the privileges
    /// are dropped and before the filter, which forbids creating threads,
    /// is installed on every thread. A thread started there inherits the
    /// dropped ids and capabilities, no_new_privs and Landlock, and gets
    /// the filter with the rest; the plan's "no fork" limit follows it.
    pub fn enter_with<T>(
        self,
        before_filter: impl FnOnce() -> Result<T, String>,
    ) -> Result<(Started, T), String> {
        let p = &self.hello.plan;
        let filtered = self.hello.sandbox.filtered();
        let keep_caps = p
            .keep_caps
            .iter()
            .map(|name| {
                name.parse::<Capability>()
                    .map_err(|e| format!("capability {name}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut landlock_dirs = Vec::new();
        for &(fd, access) in &p.landlock_dirs {
            if fd < crate::fd::FIRST_FIXED_FD || !crate::fd::is_open(fd) {
                return Err(format!("the plan's directory fd {fd} is not open"));
            }
            landlock_dirs.push(LandlockDir {
                dir: DirRef::Fd(crate::fd::borrow_fixed(fd)),
                access,
            });
        }
        // Compiled before the drop: a list the role must refuse stops it
        // before anything changed, and the filter's allocations are done.
        let program = if filtered {
            Some(seccomp::filter_rules(&p.seccomp).map_err(|e| format!("seccomp: {e}"))?)
        } else {
            None
        };
        let plan = DropPlan {
            uid: p.uid,
            gid: p.gid,
            keep_caps,
            nofile: p.nofile,
            // Set after `before_filter`, whose threads it would refuse.
            nproc_zero: false,
            fsize_zero: p.fsize_zero,
            private_mount_ns: p.private_mount_ns && filtered,
            landlock_dirs,
            contain_dirs: p.contain_dirs.clone(),
            tcp_connect_ports: p.tcp_connect_ports.clone(),
        };
        let mut report = crate::sandbox::apply(&plan).map_err(|e| e.to_string())?;
        if let Some(why) = &report.mount_namespace_error {
            log::warn!("no private mount namespace: {why}");
        }
        if let Some(why) = &report.dirs_contained_error {
            log::warn!("directory descriptors not contained (Landlock alone fences them): {why}");
        }
        let prepared = before_filter()?;
        if p.nproc_zero {
            crate::sandbox::forbid_new_processes().map_err(|e| e.to_string())?;
            report.nproc_zero = true;
        }
        match program {
            Some(program) => {
                seccomp::install_program_all_threads(&program).map_err(|e| format!("seccomp: {e}"))?;
                log::info!("sandbox: {report} seccomp={}", self.name);
            }
            None => log::warn!("sandbox: {report} seccomp=OFF"),
        }
        ENTERED.store(true, Ordering::Relaxed);
        Ok((
            Started {
                name: self.name,
                channel: self.channel,
                report,
            },
            prepared,
        ))
    }
}

/// A role in its sandbox.
pub struct Started {
    pub name: &'static str,
    /// Its channel to the supervisor (what follows the hello is the
    /// service's: the engine's `Start`, then its events).
    pub channel: Channel,
    /// What is in force.
    pub report: SandboxReport,
}

/// Run the role named on the command line if this process is one (`<bin>
/// role NAME`), with the entry of that name; `None` otherwise, and the
/// binary goes on to its own command line. Call it first in `main`: a
/// role's start-up parses nothing else.
pub fn main_if_role(entries: &[Entry]) -> Option<ExitCode> {
    let mut argv = std::env::args_os().skip(1);
    if argv.next()? != "role" {
        return None;
    }
    let name = argv.next();
    let extra = argv.next();
    let result = match (name.as_ref().and_then(|n| n.to_str()), extra) {
        (Some(name), None) => run(entries, name),
        _ => Err("usage: role NAME (started by the supervisor)".to_owned()),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            // Before the hello, no logger is installed yet.
            if !log::log_enabled!(log::Level::Error) {
                eprintln!("ERROR {e}");
            }
            ExitCode::from(failure_status())
        }
    })
}

fn run(entries: &[Entry], name: &str) -> Result<(), String> {
    let &(name, entry) = entries
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("no role named {name:?}"))?;
    let channel = Channel::from_raw_fd(FD_CHANNEL).map_err(|e| format!("channel: {e}"))?;
    let hello = match channel.recv::<Hello>() {
        Ok(Some(h)) => h,
        Ok(None) => return Err("the supervisor closed the channel before the hello".into()),
        Err(e) => return Err(format!("hello: {e}")),
    };
    let level: log::LevelFilter = hello
        .log_level
        .parse()
        .map_err(|_| format!("hello: log level {:?}", hello.log_level))?;
    crate::log::init(level, "");
    if hello.role != name {
        return Err(format!(
            "hello for the {:?} role, started as {name:?}",
            hello.role
        ));
    }
    entry(Starting { name, channel, hello })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Settings {
        interface: String,
        ifindex: u32,
    }

    const CLOCK: &[Allow] = &[crate::allow!(clock_adjtime)];

    #[test]
    fn a_plan_travels_as_data_and_starts_with_its_hello_first() {
        let mut plan = RolePlan::strict("actuator", 65522, 65523, &[seccomp::BASE, CLOCK]);
        plan.keep_caps = vec![Capability::CAP_SYS_TIME];
        plan.landlock_dirs = vec![(6, DirAccess::ReadWrite)];
        plan.contain_dirs = vec![6];
        let options = RoleOptions {
            sandbox: SandboxKind::Seccomp,
            log_level: log::LevelFilter::Debug,
        };
        let settings = Settings {
            interface: "eth0".into(),
            ifindex: 2,
        };
        let start = plan.start(options, &settings, Some(vec![1, 2, 3])).unwrap();
        assert_eq!(start.args, ["role", "actuator"]);
        assert_eq!(start.first.len(), 2);
        assert_eq!(start.first[1], [1, 2, 3]);
        let hello: Hello = mirage_ipc::decode(&start.first[0]).unwrap();
        assert_eq!(hello.role, "actuator");
        assert_eq!(hello.sandbox, SandboxKind::Seccomp);
        assert_eq!(
            hello.log_level.parse::<log::LevelFilter>(),
            Ok(log::LevelFilter::Debug)
        );
        assert_eq!((hello.plan.uid, hello.plan.gid), (65522, 65523));
        assert_eq!(hello.plan.keep_caps, ["CAP_SYS_TIME"]);
        assert_eq!(hello.plan.landlock_dirs, [(6, DirAccess::ReadWrite)]);
        assert_eq!(hello.plan.seccomp.len(), seccomp::BASE.len() + 1);
        let last = hello.plan.seccomp.last().unwrap();
        assert_eq!(
            (last.nr, last.name.as_str()),
            (libc::SYS_clock_adjtime, "clock_adjtime")
        );
        assert_eq!(
            (hello.plan.nofile, hello.plan.nproc_zero, hello.plan.fsize_zero),
            (16, true, true)
        );
        let got: Settings = mirage_ipc::decode(&hello.config).unwrap();
        assert_eq!(got, settings);
        assert_eq!(hello.plan.guest_memory, 0, "the tender's default unless set");
        // A tender's guest memory travels with its plan.
        let mut tender = plan.clone();
        tender.guest_memory = 36 << 20;
        let hello: Hello = mirage_ipc::decode(&tender.hello(options, &settings).unwrap()).unwrap();
        assert_eq!(hello.plan.guest_memory, 36 << 20);
        // Without seccomp the hello says so; the role then skips the filter
        // and the mount namespace.
        let off = RoleOptions {
            sandbox: SandboxKind::None,
            ..options
        };
        let hello: Hello = mirage_ipc::decode(&plan.hello(off, &settings).unwrap()).unwrap();
        assert_eq!(hello.sandbox, SandboxKind::None);
        let spec = plan
            .spec(options, &settings, None, vec![], Restart::Never)
            .unwrap();
        assert_eq!((spec.name, spec.first.len()), ("actuator", 1));
    }

    #[test]
    fn the_hello_of_a_large_role_fits_one_message() {
        let plan = RolePlan::strict(
            "actuator",
            1,
            1,
            &[
                seccomp::BASE,
                seccomp::NETLINK,
                seccomp::STATE_FILES,
                seccomp::PACKET_IN,
            ],
        );
        let hello = plan.hello(
            RoleOptions {
                sandbox: SandboxKind::Seccomp,
                log_level: log::LevelFilter::Info,
            },
            &vec![0u8; 1024],
        );
        assert!(hello.unwrap().len() < mirage_ipc::MAX_MESSAGE_LEN / 2);
    }
}
