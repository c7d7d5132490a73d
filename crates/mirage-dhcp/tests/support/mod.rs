//! Test hosts for end-to-end tests: a server and a client network namespace
//! joined by a veth pair, a real DHCP server from Debian in the server
//! namespace, and our daemon in the client namespace. Everything is torn down
//! in `Drop`, also when a test fails. Needs root (CI runs as root).
#![allow(dead_code)]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mirage-dhcp");
pub const CLIENT_IF: &str = "veth-c";
pub const SERVER_IF: &str = "veth-s";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces and a veth pair. Subnet 10.<a>.<b>.0/24, server at .1.
pub struct Net {
    pub server_ns: String,
    pub client_ns: String,
    pub subnet: String,
    pub server_ip: String,
    pub dir: PathBuf,
    children: Vec<Child>,
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh(ns: &str, args: &[&str]) -> Output {
    run(Command::new("ip").arg("netns").arg("exec").arg(ns).args(args))
}

impl Net {
    pub fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let (a, b) = (100 + (std::process::id() % 100), 1 + n % 250);
        let dir = std::env::temp_dir().join(format!("mirage-e2e-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let net = Net {
            server_ns: format!("mds{id}"),
            client_ns: format!("mdc{id}"),
            subnet: format!("10.{a}.{b}"),
            server_ip: format!("10.{a}.{b}.1"),
            dir,
            children: Vec::new(),
        };
        run(Command::new("ip").args(["netns", "add", &net.server_ns]));
        run(Command::new("ip").args(["netns", "add", &net.client_ns]));
        sh(
            &net.server_ns,
            &[
                "ip",
                "link",
                "add",
                SERVER_IF,
                "type",
                "veth",
                "peer",
                "name",
                CLIENT_IF,
                "netns",
                &net.client_ns,
            ],
        );
        sh(
            &net.server_ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.server_ip),
                "dev",
                SERVER_IF,
            ],
        );
        sh(&net.server_ns, &["ip", "link", "set", SERVER_IF, "up"]);
        sh(&net.server_ns, &["ip", "link", "set", "lo", "up"]);
        sh(&net.client_ns, &["ip", "link", "set", "lo", "up"]);
        net
    }

    pub fn in_client(&self, args: &[&str]) -> Output {
        sh(&self.client_ns, args)
    }

    pub fn in_server(&self, args: &[&str]) -> Output {
        sh(&self.server_ns, args)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// dnsmasq bound to the server veth only: DHCP only (port=0 turns DNS
    /// off), no ping check (it delays every offer by seconds), leases in the
    /// test's directory. `extra` adds dhcp options.
    pub fn start_dnsmasq(&mut self, lease: &str, extra: &[&str]) -> usize {
        let s = &self.subnet;
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.server_ns.clone(),
            "dnsmasq".into(),
            "--keep-in-foreground".into(),
            "--no-daemon".into(),
            "--conf-file=/dev/null".into(),
            "--port=0".into(),
            "--bind-interfaces".into(),
            format!("--interface={SERVER_IF}"),
            "--except-interface=lo".into(),
            "--no-ping".into(),
            "--log-dhcp".into(),
            format!("--dhcp-range={s}.50,{s}.150,255.255.255.0,{lease}"),
            format!("--dhcp-leasefile={}", self.path("dnsmasq.leases").display()),
            format!("--pid-file={}", self.path("dnsmasq.pid").display()),
            format!("--dhcp-option=option:router,{}", self.server_ip),
            format!("--dhcp-option=option:dns-server,{}", self.server_ip),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = std::fs::File::create(self.path("dnsmasq.log")).unwrap();
        let child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        self.children.push(child);
        // dnsmasq is ready once it has bound its DHCP socket.
        wait_until(Duration::from_secs(10), || {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.server_ns, "ss", "-lun"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(":67 ")
        });
        self.children.len() - 1
    }

    /// Our daemon in the client namespace; dirs and resolv.conf in the test
    /// directory.
    pub fn start_client(&mut self, extra: &[&str]) -> usize {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.client_ns,
            BIN,
            "run",
            "--interface",
            CLIENT_IF,
        ]);
        cmd.arg("--state-dir").arg(self.path("state"));
        cmd.arg("--run-dir").arg(self.path("run"));
        cmd.arg("--resolv-conf").arg(self.path("resolv.conf"));
        cmd.args(["--log-level", "debug"]);
        cmd.args(extra);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("client.log"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.children.push(cmd.spawn().unwrap());
        self.children.len() - 1
    }

    pub fn child_pid(&self, idx: usize) -> u32 {
        self.children[idx].id()
    }

    /// Send `sig` to the child at `idx` (the daemon runs as `ip netns exec`'s
    /// exec'd image, so the pid is the daemon's).
    pub fn signal(&self, idx: usize, sig: &str) {
        run(Command::new("kill").args(["-s", sig, &self.children[idx].id().to_string()]));
    }

    /// Wait for the child at `idx` to exit, up to `timeout`.
    pub fn wait_exit(&mut self, idx: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.children[idx].try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn client_log(&self) -> String {
        std::fs::read_to_string(self.path("client.log")).unwrap_or_default()
    }

    /// IPv4 addresses on the client veth as `addr/prefix`.
    pub fn client_addrs(&self) -> Vec<String> {
        let out = self.in_client(&["ip", "-j", "-4", "addr", "show", "dev", CLIENT_IF]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    pub fn client_addr_json(&self) -> serde_json::Value {
        let out = self.in_client(&["ip", "-j", "-4", "addr", "show", "dev", CLIENT_IF]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["addr_info"][0].clone()
    }

    pub fn client_routes(&self) -> String {
        String::from_utf8_lossy(&self.in_client(&["ip", "-4", "route", "show"]).stdout).into_owned()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.path("run/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Wait for status.json to say `state` (panics with the log on timeout).
    pub fn wait_state(&self, state: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && s["state"] == state
            {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "no state {state} within {timeout:?}; status {:?}\nlog:\n{}",
                    self.status(),
                    self.client_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the daemon's roles, by role name.
    pub fn role_pids(&self, daemon: usize) -> Vec<(String, u32)> {
        let parent = self.child_pid(daemon);
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid: u32 = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            if ppid != parent {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            if args.len() > 2 && args[1] == "role" {
                out.push((args[2].clone(), pid));
            }
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client_ns, &self.server_ns] {
            // Anything still running in the namespace goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::thread::panicking() {
            eprintln!("client log:\n{}", self.client_log());
            eprintln!(
                "dnsmasq log:\n{}",
                std::fs::read_to_string(self.path("dnsmasq.log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poll `cond` every 20 ms until true; panic after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
