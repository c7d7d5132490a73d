//! Network namespaces and veth pairs: the private networks every
//! end-to-end test runs on, so that tests in parallel never see each
//! other's links and the host's interfaces are never touched.
//!
//! Two kinds:
//! - [`Netns`]: a named namespace (`ip netns add`) that commands, server
//!   processes and threads ([`in_netns`]) can enter; on drop everything
//!   still running in it is killed and the namespace deleted, also when the
//!   test panics.
//! - [`run_in_netns`]: a namespace for one test body on a thread of its
//!   own, gone when the body ends.
//!
//! Names are unique per test process ([`unique_id`]): namespaces are
//! global, and several test binaries run at once.

use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::cmd::{ip, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh id for this test process: `(text, n)`, text being
/// `<pid mod 100000>x<n>` (short enough for interface and namespace names)
/// and `n` counting up from 0 in this process (tests derive subnets from it).
pub fn unique_id() -> (String, u32) {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    (format!("{}x{n}", std::process::id() % 100_000), n)
}

/// A named network namespace with `lo` up, deleted on drop after killing
/// whatever still runs in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create namespace `name` (panics if it exists or `ip` fails).
    pub fn add(name: &str) -> Netns {
        run(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns { name: name.into() };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Create a namespace named `prefix` + a [`unique_id`].
    pub fn add_unique(prefix: &str) -> Netns {
        Netns::add(&format!("{prefix}{}", unique_id().0))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` in this namespace (`ip netns exec`,
    /// which execs it: the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        command_in(&self.name, program)
    }

    /// Run `args` in this namespace; panics unless it succeeds.
    pub fn exec(&self, args: &[&str]) -> Output {
        exec(&self.name, args)
    }

    /// Run `args` in this namespace, stdout as text whatever the exit.
    pub fn output(&self, args: &[&str]) -> String {
        output(&self.name, args)
    }

    /// Add `cidr` (e.g. `10.1.2.1/24`) to `dev`.
    pub fn addr_add(&self, dev: &str, cidr: &str) {
        self.exec(&["ip", "addr", "add", cidr, "dev", dev]);
    }

    /// Set `dev` up.
    pub fn link_up(&self, dev: &str) {
        self.exec(&["ip", "link", "set", dev, "up"]);
    }

    /// Pids of the processes in this namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip").args(["netns", "pids", &self.name]).output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still running in the namespace goes with it.
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A command that runs `program` in namespace `ns`.
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Run `args` in namespace `ns`; panics with stderr unless it succeeds.
pub fn exec(ns: &str, args: &[&str]) -> Output {
    run(Command::new("ip").arg("netns").arg("exec").arg(ns).args(args))
}

/// Run `args` in namespace `ns` and return stdout as text, whatever the
/// exit status (for polling commands like `ss`).
pub fn output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip netns exec {ns} {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`), both up. The pair goes
/// with either namespace.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) {
    veth_between(ns_a.name(), a, ns_b.name(), b);
}

/// [`veth`] by namespace names.
pub fn veth_between(ns_a: &str, a: &str, ns_b: &str, b: &str) {
    exec(
        ns_a,
        &[
            "ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ],
    );
    exec(ns_a, &["ip", "link", "set", a, "up"]);
    exec(ns_b, &["ip", "link", "set", b, "up"]);
}

/// Creates a veth pair `a`/`b` in the calling thread's namespace, both down.
pub fn veth_pair(a: &str, b: &str) {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
}

/// Move the calling thread into namespace `ns` (only this thread: sockets it
/// opens and processes it spawns are then in `ns`).
pub fn enter(ns: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .map_err(std::io::Error::from)
}

/// Run `body` on a thread that lives in namespace `ns` and wait for it; a
/// panic in `body` fails the caller. Roles a test starts die with the
/// thread that spawned them, so a test that plays a role's supervisor runs
/// whole on that thread.
pub fn in_netns<R: Send + 'static>(ns: &str, body: impl FnOnce() -> R + Send + 'static) -> R {
    let name = ns.to_owned();
    let t = std::thread::spawn(move || {
        enter(&name).unwrap_or_else(|e| panic!("setns {name}: {e}"));
        body()
    });
    match t.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `body` in a fresh network namespace of its own with `lo` up,
/// failing the test if it panics or takes longer than `timeout`.
///
/// The body runs on a new thread that enters the namespace: only that
/// thread moves. Processes spawned from it (`ip`, `ethtool`) inherit its
/// namespace. The namespace's name goes when this returns (and what still
/// runs in it is killed); the namespace itself disappears with its last
/// user (the thread, its sockets), on success and on panic alike.
pub fn run_in_netns<F>(timeout: Duration, body: F)
where
    F: FnOnce() + Send + 'static,
{
    let ns = Netns::add_unique("mk");
    let name = ns.name().to_owned();
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
        enter(&name).unwrap_or_else(|e| panic!("setns {name} (tests need root): {e}"));
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
