//! Real processes a test starts (servers, relays, the daemon under test):
//! killed and reaped when the test ends, pass or panic, with their logs
//! printed on failure so a red CI run says what the server saw.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{read_lossy, run};
use crate::netns::Netns;

/// A child process killed and reaped on drop.
pub struct Spawned(pub Child);

impl Spawned {
    /// Start `program args...`, stdin closed, stdout piped, stderr dropped.
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

/// The processes of one test, by index in start order. Drop kills and reaps
/// every one of them; if the test is failing it first prints each log
/// registered with [`Procs::spawn_logged`] or [`Procs::keep_log`].
#[derive(Default)]
pub struct Procs {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Procs {
    pub fn new() -> Procs {
        Procs::default()
    }

    /// Start `cmd` as is (its stdio as the caller set it up).
    pub fn spawn(&mut self, mut cmd: Command) -> usize {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// Start `cmd` with stdout and stderr appended to `log`, which is kept
    /// for the failure message.
    pub fn spawn_logged(&mut self, mut cmd: Command, log: &Path) -> usize {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        self.keep_log(log);
        self.spawn(cmd)
    }

    /// Print `log` too if the test fails (a file a process writes itself).
    pub fn keep_log(&mut self, log: &Path) {
        if !self.logs.iter().any(|l| l == log) {
            self.logs.push(log.to_owned());
        }
    }

    pub fn pid(&self, idx: usize) -> u32 {
        self.children[idx].id()
    }

    pub fn child(&mut self, idx: usize) -> &mut Child {
        &mut self.children[idx]
    }

    /// Whether the child at `idx` has exited (reaping it if so).
    pub fn try_wait(&mut self, idx: usize) -> Option<ExitStatus> {
        self.children[idx].try_wait().unwrap()
    }

    /// Send `sig` (a name `kill -s` knows) to the child at `idx`.
    pub fn signal(&self, idx: usize, sig: &str) {
        run(Command::new("kill").args(["-s", sig, &self.pid(idx).to_string()]));
    }

    /// Wait for the child at `idx` to exit, up to `timeout`.
    pub fn wait_exit(&mut self, idx: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait(idx) {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL the child at `idx` and reap it.
    pub fn kill(&mut self, idx: usize) {
        let _ = self.children[idx].kill();
        let _ = self.children[idx].wait();
    }

    /// SIGTERM, then SIGKILL after `grace`, and reap.
    pub fn stop(&mut self, idx: usize, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid(idx).to_string()])
            .status();
        if self.wait_exit(idx, grace).is_none() {
            self.kill(idx);
        }
    }

    /// SIGKILL and reap every child (those already gone are skipped); for
    /// fixtures that must stop their processes before other teardown.
    pub fn kill_all(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The kept logs, each under its path: what a failing test prints.
    pub fn logs_text(&self) -> String {
        self.logs
            .iter()
            .map(|l| format!("{}:\n{}\n", l.display(), read_lossy(l)))
            .collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("{}", self.logs_text());
        }
    }
}

/// A transport for [`listening`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

/// Whether something in `ns` listens on `port` (`ss -l`).
pub fn listening(ns: &Netns, proto: Proto, port: u16) -> bool {
    listening_in(ns.name(), proto, port)
}

/// [`listening`] by namespace name.
pub fn listening_in(ns: &str, proto: Proto, port: u16) -> bool {
    let flag = match proto {
        Proto::Udp => "-lun",
        Proto::Tcp => "-ltn",
    };
    let needle = format!(":{port} ");
    crate::netns::output(ns, &["ss", flag]).contains(&needle)
}

/// Wait until something in `ns` listens on `port`; panics after `timeout`.
pub fn wait_listening(ns: &Netns, proto: Proto, port: u16, timeout: Duration) {
    wait_listening_in(ns.name(), proto, port, timeout)
}

/// [`wait_listening`] by namespace name.
pub fn wait_listening_in(ns: &str, proto: Proto, port: u16, timeout: Duration) {
    crate::wait::wait_for(
        timeout,
        &format!("{proto:?} port {port} listening in {ns}"),
        || listening_in(ns, proto, port),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procs_kill_and_reap_their_children_on_drop() {
        use std::os::unix::process::ExitStatusExt;
        let mut procs = Procs::new();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let idx = procs.spawn(cmd);
        let pid = procs.pid(idx);
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        // What Drop does: killed (not waited out) and reaped.
        procs.kill_all();
        let st = procs.try_wait(idx).expect("reaped");
        assert_eq!(st.signal(), Some(9), "{st}");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still there"
        );
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let second = procs.spawn(cmd);
        let pid = procs.pid(second);
        drop(procs);
        // Reaped: no zombie left under our pid either.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still there"
        );
    }

    #[test]
    fn logs_are_appended_and_stop_terminates() {
        let log = std::env::temp_dir().join(format!("testkit-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut procs = Procs::new();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 60"]);
        let idx = procs.spawn_logged(cmd, &log);
        crate::wait::wait_until(Duration::from_secs(10), || read_lossy(&log).contains("started"));
        assert!(procs.logs_text().contains("started"));
        procs.stop(idx, Duration::from_secs(5));
        assert!(procs.try_wait(idx).is_some());
        std::fs::remove_file(&log).unwrap();
    }
}
