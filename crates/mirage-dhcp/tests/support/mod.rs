//! Test hosts for end-to-end tests: a server and a client network namespace
//! joined by a veth pair, a real DHCP server from Debian in the server
//! namespace, and our daemon in the client namespace. Built on
//! mirage-testkit (namespaces, processes, /proc, address watches); what is
//! here is DHCP's: the topologies, the server configurations, the daemon's
//! command line and status. Everything is torn down in `Drop`, also when a
//! test fails. Needs root (CI runs as root).
#![allow(dead_code, unused_imports)]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mirage_testkit::cmd::read_lossy;
pub use mirage_testkit::cmd::{read, run};
pub use mirage_testkit::monitor::AddrWatch;
use mirage_testkit::netns::{Netns, exec as sh, unique_id, veth_between as veth};
use mirage_testkit::process::{Procs, Proto, listening_in, wait_listening_in};
pub use mirage_testkit::procfs::roles_of;
use mirage_testkit::tempdir::TestDir;
pub use mirage_testkit::wait::wait_until;

/// The binary under test: the one cargo built for these tests, or the one
/// `MIRAGE_DHCP_BIN` names (CI runs the dnsmasq suite against the shipped
/// build of scripts/build-release.sh that way).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        mirage_testkit::service_bin("MIRAGE_DHCP_BIN", env!("CARGO_BIN_EXE_mirage-dhcp"))
            .display()
            .to_string()
    })
}
pub const CLIENT_IF: &str = "veth-c";
/// The roles' default ids (uid = gid) when the daemon starts as root
/// (src/config.rs); the actuator's also own the state and runtime dirs.
pub const NETWORK_ID: u32 = 65520;
pub const ENGINE_ID: u32 = 65521;
pub const ACTUATOR_ID: u32 = 65522;
pub const SERVER_IF: &str = "veth-s";

/// Two namespaces and a veth pair. Subnet 10.<a>.<b>.0/24, server at .1.
pub struct Net {
    pub server_ns: String,
    pub client_ns: String,
    pub subnet: String,
    pub server_ip: String,
    pub dir: PathBuf,
    /// Where servers run: `hosts[0]` is `server_ns` / `server_ip`; the
    /// two-server and relay topologies add more (see the constructors).
    pub hosts: Vec<ServerHost>,
    /// Servers, relays and daemons; their logs are printed when a test fails.
    procs: Procs,
    /// `--sandbox` for [`Net::start_client`] when its arguments name none
    /// (`None`: the daemon's default, auto).
    pub sandbox: Option<&'static str>,
    /// Mount points to unmount before the directory goes.
    mounts: Vec<PathBuf>,
    /// Client, server, and any hub, relay or second server namespace.
    namespaces: Vec<Netns>,
    /// Last: removed after everything above is gone and its logs printed.
    scratch: TestDir,
}

/// A namespace a DHCP server runs in: the interface it is bound to, its own
/// address, and the client subnet it serves (`prefix` is the first three
/// octets; every subnet here is a /24) with the router it hands out.
#[derive(Clone, Debug)]
pub struct ServerHost {
    pub ns: String,
    pub ifname: String,
    pub ip: String,
    pub prefix: String,
    pub router: String,
    /// Set when requests reach the server through a relay: the server's own
    /// link subnet (first three octets), which some servers must declare.
    pub link_prefix: Option<String>,
}

impl Net {
    /// Client and server namespaces (and `extra` more, named `md<tag><id>`),
    /// no links yet; subnet 10.<a>.<b>, returned with the id and a, b.
    fn bare(extra: &[&str]) -> (Net, String, u32, u32) {
        let (id, n) = unique_id();
        let (a, b) = (100 + (std::process::id() % 100), 1 + n % 250);
        let scratch = TestDir::new("mirage-e2e", &id);
        let prefix = format!("10.{a}.{b}");
        let server_ns = Netns::add(&format!("mds{id}"));
        let client_ns = Netns::add(&format!("mdc{id}"));
        let mut namespaces = vec![server_ns, client_ns];
        for tag in extra {
            namespaces.push(Netns::add(&format!("md{tag}{id}")));
        }
        let net = Net {
            server_ns: format!("mds{id}"),
            client_ns: format!("mdc{id}"),
            subnet: prefix.clone(),
            server_ip: format!("{prefix}.1"),
            dir: scratch.path().to_owned(),
            hosts: Vec::new(),
            procs: Procs::new(),
            sandbox: None,
            mounts: Vec::new(),
            namespaces,
            scratch,
        };
        (net, id, a, b)
    }

    /// The namespace created as `extra[i]` by [`Net::bare`].
    fn extra_ns(&self, i: usize) -> String {
        self.namespaces[2 + i].name().to_owned()
    }

    pub fn new() -> Net {
        let (mut net, _, _, _) = Net::bare(&[]);
        net.hosts.push(ServerHost {
            ns: net.server_ns.clone(),
            ifname: SERVER_IF.into(),
            ip: net.server_ip.clone(),
            prefix: net.subnet.clone(),
            router: net.server_ip.clone(),
            link_prefix: None,
        });
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
        net
    }

    pub fn in_client(&self, args: &[&str]) -> Output {
        sh(&self.client_ns, args)
    }

    pub fn in_server(&self, args: &[&str]) -> Output {
        sh(&self.server_ns, args)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// dnsmasq bound to the server veth only: DHCP only (port=0 turns DNS
    /// off), no ping check (it delays every offer by seconds), leases in the
    /// test's directory. `extra` adds dhcp options.
    pub fn start_dnsmasq(&mut self, lease: &str, extra: &[&str]) -> usize {
        let s = &self.subnet;
        let mut args: Vec<String> = vec![
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
        let log = self.path("dnsmasq.log");
        let mut cmd = mirage_testkit::netns::command_in(&self.server_ns, "dnsmasq");
        cmd.args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        self.procs.keep_log(&log);
        let idx = self.procs.spawn(cmd);
        // dnsmasq is ready once it has bound its DHCP socket.
        wait_listening_in(&self.server_ns, Proto::Udp, 67, Duration::from_secs(10));
        idx
    }

    /// Our daemon in the client namespace; dirs and resolv.conf in the test
    /// directory.
    pub fn start_client(&mut self, extra: &[&str]) -> usize {
        let mut cmd = mirage_testkit::netns::command_in(&self.client_ns, bin());
        cmd.args(["run", "--interface", CLIENT_IF]);
        cmd.arg("--state-dir").arg(self.path("state"));
        cmd.arg("--run-dir").arg(self.path("run"));
        cmd.arg("--resolv-conf").arg(self.path("resolv.conf"));
        cmd.args(["--log-level", "debug"]);
        if let Some(sandbox) = self.sandbox
            && !extra.contains(&"--sandbox")
        {
            cmd.args(["--sandbox", sandbox]);
        }
        cmd.args(extra);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("client.log"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.procs.keep_log(&self.path("client.log"));
        self.procs.spawn(cmd)
    }

    pub fn child_pid(&self, idx: usize) -> u32 {
        self.procs.pid(idx)
    }

    /// Send `sig` to the child at `idx` (the daemon runs as `ip netns exec`'s
    /// exec'd image, so the pid is the daemon's).
    pub fn signal(&self, idx: usize, sig: &str) {
        self.procs.signal(idx, sig);
    }

    /// Wait for the child at `idx` to exit, up to `timeout`.
    pub fn wait_exit(&mut self, idx: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.procs.wait_exit(idx, timeout)
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
        mirage_testkit::wait::wait_some(
            timeout,
            &format!("state {state}"),
            || self.status().filter(|s| s["state"] == state),
            || format!("status {:?}\nlog:\n{}", self.status(), self.client_log()),
        )
    }

    /// Pids of the daemon's roles, by role name.
    pub fn role_pids(&self, daemon: usize) -> Vec<(String, u32)> {
        roles_of(self.child_pid(daemon))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Processes first (they hold the mounts), then the mounts; the
        // namespaces and the directory go with the fields, in that order.
        self.procs.kill_all();
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

// ---- real DHCP servers from Debian -------------------------------------

/// The DHCP servers the interop suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Server {
    /// dnsmasq (dnsmasq-base).
    Dnsmasq,
    /// ISC Kea 2.x (kea-dhcp4-server).
    Kea,
    /// ISC dhcpd 4.4 (isc-dhcp-server).
    Dhcpd,
    /// busybox udhcpd.
    Udhcpd,
}

impl Server {
    pub const ALL: [Server; 4] = [Server::Dnsmasq, Server::Kea, Server::Dhcpd, Server::Udhcpd];

    pub fn name(self) -> &'static str {
        match self {
            Server::Dnsmasq => "dnsmasq",
            Server::Kea => "kea",
            Server::Dhcpd => "dhcpd",
            Server::Udhcpd => "udhcpd",
        }
    }

    /// dnsmasq refuses leases under 120 s; the others take a few seconds.
    pub fn min_lease_secs(self) -> u32 {
        if self == Server::Dnsmasq { 120 } else { 1 }
    }

    /// Whether the server can be told to send T1 / T2 (options 58 / 59).
    /// udhcpd has no setting for them: clients use 1/2 and 7/8 of the lease.
    pub fn sets_t1_t2(self) -> bool {
        self != Server::Udhcpd
    }
}

/// One RFC 3442 route as a server is told to send it.
#[derive(Clone, Debug)]
pub struct StaticRoute {
    pub dest: String,
    pub prefix_len: u8,
    pub gateway: String,
}

impl StaticRoute {
    pub fn new(dest: &str, prefix_len: u8, gateway: &str) -> Self {
        StaticRoute {
            dest: dest.into(),
            prefix_len,
            gateway: gateway.into(),
        }
    }

    /// RFC 3442 section 3 encoding: width, significant octets, router.
    fn wire(&self) -> Vec<u8> {
        let dest: std::net::Ipv4Addr = self.dest.parse().unwrap();
        let gw: std::net::Ipv4Addr = self.gateway.parse().unwrap();
        let mut v = vec![self.prefix_len];
        v.extend_from_slice(&dest.octets()[..usize::from(self.prefix_len).div_ceil(8)]);
        v.extend_from_slice(&gw.octets());
        v
    }
}

/// What a server hands out. Every server gets the same intent, written in its
/// own configuration language, so the scenarios are server-independent.
#[derive(Clone, Debug)]
pub struct Offer {
    pub lease_secs: u32,
    /// T1 / T2 in seconds, where the server can send them.
    pub t1_t2: Option<(u32, u32)>,
    /// Pool, as the last octet of the first and last address.
    pub pool: (u8, u8),
    /// Option 3; `None` sends the host's router.
    pub router: Option<String>,
    pub mtu: Option<u16>,
    pub search: Vec<String>,
    pub ntp: Vec<String>,
    /// Option 1 override (the cloud shape sends 255.255.255.255).
    pub netmask: Option<String>,
    /// Option 121.
    pub routes: Vec<StaticRoute>,
    /// dnsmasq only: --dhcp-authoritative (it then NAKs foreign addresses
    /// instead of ignoring them).
    pub authoritative: bool,
}

impl Offer {
    /// A plain lease of `lease_secs` from .50 to .150.
    pub fn new(lease_secs: u32) -> Offer {
        Offer {
            lease_secs,
            t1_t2: None,
            pool: (50, 150),
            router: None,
            mtu: None,
            search: Vec::new(),
            ntp: Vec::new(),
            netmask: None,
            routes: Vec::new(),
            authoritative: true,
        }
    }
}

impl Offer {
    /// A lease long enough that no timer fires during a short scenario.
    pub fn long(server: Server) -> Offer {
        Offer::new(300.max(server.min_lease_secs()))
    }

    /// Short timings: 10 s leases with T1 2 s, T2 4 s where the server
    /// allows; dnsmasq keeps its 120 s minimum with T1 2 s, T2 4 s.
    pub fn short(server: Server) -> Offer {
        let mut o = Offer::new(10.max(server.min_lease_secs()));
        if server.sets_t1_t2() {
            o.t1_t2 = Some((2, 4));
        }
        o
    }
}

/// A server started by [`Net::start_server`].
#[derive(Clone, Debug)]
pub struct ServerRun {
    pub kind: Server,
    pub host: usize,
    pub child: usize,
    pub log: PathBuf,
    pub leases: PathBuf,
}

/// Per-server configuration file contents.
fn server_config(kind: Server, h: &ServerHost, o: &Offer, leases: &Path) -> String {
    let p = &h.prefix;
    let router = o.router.clone().unwrap_or_else(|| h.router.clone());
    let (lo, hi) = o.pool;
    match kind {
        Server::Dnsmasq => unreachable!("dnsmasq is configured on its command line"),
        Server::Kea => {
            let mut opts = vec![
                serde_json::json!({"name": "routers", "data": router}),
                serde_json::json!({"name": "domain-name-servers", "data": h.ip}),
            ];
            if let Some(m) = o.mtu {
                opts.push(serde_json::json!({"name": "interface-mtu", "data": m.to_string()}));
            }
            if !o.search.is_empty() {
                opts.push(serde_json::json!({"name": "domain-search", "data": o.search.join(", ")}));
            }
            if !o.ntp.is_empty() {
                opts.push(serde_json::json!({"name": "ntp-servers", "data": o.ntp.join(", ")}));
            }
            if !o.routes.is_empty() {
                // Kea 2.2 knows 121 only as binary: send the RFC 3442 bytes.
                let hex: String = o
                    .routes
                    .iter()
                    .flat_map(|r| r.wire())
                    .map(|b| format!("{b:02X}"))
                    .collect();
                opts.push(serde_json::json!({"code": 121, "csv-format": false, "data": hex}));
            }
            let mut subnet = serde_json::json!({
                "id": 1,
                "subnet": format!("{p}.0/24"),
                "pools": [{"pool": format!("{p}.{lo} - {p}.{hi}")}],
                "option-data": opts,
            });
            if o.netmask.as_deref() == Some("255.255.255.255") {
                // Kea derives option 1 from the subnet and ignores a
                // subnet-mask in option-data: a /32 lease needs a /32 subnet,
                // tied to the interface since the server's address is not in it.
                subnet["subnet"] = format!("{p}.{lo}/32").into();
                subnet["pools"] = serde_json::json!([{"pool": format!("{p}.{lo} - {p}.{lo}")}]);
                subnet["interface"] = h.ifname.clone().into();
            } else {
                assert!(o.netmask.is_none(), "Kea: option 1 comes from the subnet");
            }
            if let Some((t1, t2)) = o.t1_t2 {
                subnet["renew-timer"] = t1.into();
                subnet["rebind-timer"] = t2.into();
            } else {
                subnet["calculate-tee-times"] = true.into();
            }
            let cfg = serde_json::json!({"Dhcp4": {
                "interfaces-config": {"interfaces": [h.ifname], "dhcp-socket-type": "raw"},
                "lease-database": {"type": "memfile", "persist": true,
                                   "name": leases.display().to_string(), "lfc-interval": 0},
                "valid-lifetime": o.lease_secs,
                "min-valid-lifetime": o.lease_secs,
                "max-valid-lifetime": o.lease_secs,
                "authoritative": o.authoritative,
                "subnet4": [subnet],
                "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}],
                             "severity": "INFO"}],
            }});
            serde_json::to_string_pretty(&cfg).unwrap()
        }
        Server::Dhcpd => {
            let mut c = String::new();
            if o.authoritative {
                c += "authoritative;\n";
            }
            c += "ddns-update-style none;\n";
            // dhcpd pings an address before offering it (a 1 s wait).
            c += "ping-check false;\n";
            let l = o.lease_secs;
            c += &format!("default-lease-time {l};\nmax-lease-time {l};\nmin-lease-time {l};\n");
            c += "option rfc3442-classless-static-routes code 121 = array of integer 8;\n";
            if let Some(lp) = &h.link_prefix {
                // dhcpd wants a declaration for the subnet it listens on.
                c += &format!("subnet {lp}.0 netmask 255.255.255.0 {{ }}\n");
            }
            c += &format!("subnet {p}.0 netmask 255.255.255.0 {{\n");
            c += &format!("  range {p}.{lo} {p}.{hi};\n");
            c += &format!("  option routers {router};\n");
            c += &format!("  option domain-name-servers {};\n", h.ip);
            if let Some(m) = o.mtu {
                c += &format!("  option interface-mtu {m};\n");
            }
            if !o.search.is_empty() {
                let q: Vec<String> = o.search.iter().map(|d| format!("\"{d}\"")).collect();
                c += &format!("  option domain-search {};\n", q.join(", "));
            }
            if !o.ntp.is_empty() {
                c += &format!("  option ntp-servers {};\n", o.ntp.join(", "));
            }
            if let Some(m) = &o.netmask {
                c += &format!("  option subnet-mask {m};\n");
            }
            if !o.routes.is_empty() {
                let bytes: Vec<String> = o
                    .routes
                    .iter()
                    .flat_map(|r| r.wire())
                    .map(|b| b.to_string())
                    .collect();
                c += &format!("  option rfc3442-classless-static-routes {};\n", bytes.join(","));
            }
            if let Some((t1, t2)) = o.t1_t2 {
                c += &format!("  option dhcp-renewal-time {t1};\n  option dhcp-rebinding-time {t2};\n");
            }
            c += "}\n";
            c
        }
        Server::Udhcpd => {
            let mut c = format!("start {p}.{lo}\nend {p}.{hi}\ninterface {}\n", h.ifname);
            c += &format!("lease_file {}\n", leases.display());
            // Its default would refuse leases shorter than a minute.
            c += &format!("min_lease {}\n", o.lease_secs.min(60));
            c += &format!(
                "option subnet {}\n",
                o.netmask.as_deref().unwrap_or("255.255.255.0")
            );
            c += &format!("option router {router}\noption dns {}\n", h.ip);
            c += &format!("option lease {}\n", o.lease_secs);
            if let Some(m) = o.mtu {
                c += &format!("option mtu {m}\n");
            }
            if !o.search.is_empty() {
                c += &format!("option search {}\n", o.search.join(" "));
            }
            if !o.ntp.is_empty() {
                c += &format!("option ntpsrv {}\n", o.ntp.join(" "));
            }
            if !o.routes.is_empty() {
                let r: Vec<String> = o
                    .routes
                    .iter()
                    .map(|r| format!("{}/{} {}", r.dest, r.prefix_len, r.gateway))
                    .collect();
                c += &format!("option staticroutes {}\n", r.join(" "));
            }
            c
        }
    }
}

static NEXT_SERVER: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// Two server namespaces and the client on one bridge (in a hub
    /// namespace): servers at .1 (`hosts[0]`) and .2 (`hosts[1]`) of the same
    /// /24, each bound to its own veth, so any two servers can both listen on
    /// port 67 and both answer the same broadcast DISCOVER.
    pub fn new_two_servers() -> Net {
        let (mut net, _id, _, _) = Net::bare(&["h", "2"]);
        let hub = net.extra_ns(0);
        let second = net.extra_ns(1);
        sh(&hub, &["ip", "link", "add", "br0", "type", "bridge"]);
        sh(&hub, &["ip", "link", "set", "br0", "up"]);
        veth(&hub, "h-c", &net.client_ns, CLIENT_IF);
        veth(&hub, "h-s0", &net.server_ns, SERVER_IF);
        veth(&hub, "h-s1", &second, SERVER_IF);
        for port in ["h-c", "h-s0", "h-s1"] {
            sh(&hub, &["ip", "link", "set", port, "master", "br0"]);
        }
        let p = net.subnet.clone();
        for (i, ns) in [net.server_ns.clone(), second].into_iter().enumerate() {
            let ip = format!("{p}.{}", i + 1);
            sh(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", SERVER_IF]);
            net.hosts.push(ServerHost {
                ns,
                ifname: SERVER_IF.into(),
                ip: ip.clone(),
                prefix: p.clone(),
                router: ip,
                link_prefix: None,
            });
        }
        net
    }

    /// Client -> relay namespace running ISC dhcrelay (gateway .1 of the
    /// client subnet) -> server namespace on another /24 (172.16.b.0/24,
    /// server at .2). The server sees giaddr set and answers the relay;
    /// renewals are unicast and routed through the relay namespace.
    pub fn new_relayed() -> Net {
        let (mut net, _id, _, b) = Net::bare(&["r"]);
        let relay = net.extra_ns(0);
        let p = net.subnet.clone();
        let link = format!("172.16.{b}");
        veth(&relay, "r-down", &net.client_ns, CLIENT_IF);
        veth(&relay, "r-up", &net.server_ns, SERVER_IF);
        sh(
            &relay,
            &["ip", "addr", "add", &format!("{p}.1/24"), "dev", "r-down"],
        );
        sh(
            &relay,
            &["ip", "addr", "add", &format!("{link}.1/24"), "dev", "r-up"],
        );
        sh(&relay, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let server_ip = format!("{link}.2");
        sh(
            &net.server_ns,
            &["ip", "addr", "add", &format!("{server_ip}/24"), "dev", SERVER_IF],
        );
        sh(
            &net.server_ns,
            &[
                "ip",
                "route",
                "add",
                &format!("{p}.0/24"),
                "via",
                &format!("{link}.1"),
            ],
        );
        net.server_ip = server_ip.clone();
        net.hosts.push(ServerHost {
            ns: net.server_ns.clone(),
            ifname: SERVER_IF.into(),
            ip: server_ip.clone(),
            prefix: p.clone(),
            router: format!("{p}.1"),
            link_prefix: Some(link),
        });
        let log = net.path("dhcrelay.log");
        // dhcrelay: apt-get install isc-dhcp-relay.
        let mut cmd = mirage_testkit::netns::command_in(&relay, "dhcrelay");
        cmd.args(["-d", "-4"])
            .args(["-pf", &net.path("dhcrelay.pid").display().to_string()])
            .args(["-id", "r-down", "-iu", "r-up", &server_ip])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        net.procs.keep_log(&log);
        net.procs.spawn(cmd);
        wait_until(Duration::from_secs(10), || {
            read_lossy(&log).contains("Sending on") && listening_in(&relay, Proto::Udp, 67)
        });
        net
    }

    /// Start `kind` on `hosts[host]`, bound to that host's veth only, with
    /// config, leases and log in the test's directory; returns once it
    /// listens (panics with its log if it exits or does not come up).
    pub fn start_server(&mut self, kind: Server, host: usize, offer: &Offer) -> ServerRun {
        let h = self.hosts[host].clone();
        let tag = format!("{}-{}", kind.name(), NEXT_SERVER.fetch_add(1, Ordering::SeqCst));
        let log = self.path(&format!("{tag}.log"));
        let leases = self.path(&format!("{tag}.leases"));
        let conf = self.path(&format!("{tag}.conf"));
        let pid = self.path(&format!("{tag}.pid"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns]);
        match kind {
            Server::Dnsmasq => {
                let p = &h.prefix;
                let (lo, hi) = offer.pool;
                let router = offer.router.clone().unwrap_or_else(|| h.router.clone());
                let mask = offer.netmask.as_deref().unwrap_or("255.255.255.0");
                cmd.args([
                    "dnsmasq",
                    "--keep-in-foreground",
                    "--no-daemon",
                    "--conf-file=/dev/null",
                ]);
                cmd.args([
                    "--port=0",
                    "--bind-interfaces",
                    "--except-interface=lo",
                    "--no-ping",
                ]);
                cmd.args(["--log-dhcp", "--log-facility=-"]);
                cmd.arg(format!("--interface={}", h.ifname));
                cmd.arg(format!(
                    "--dhcp-range={p}.{lo},{p}.{hi},255.255.255.0,{}",
                    offer.lease_secs
                ));
                cmd.arg(format!("--dhcp-leasefile={}", leases.display()));
                cmd.arg(format!("--pid-file={}", pid.display()));
                cmd.arg(format!("--dhcp-option=option:router,{router}"));
                cmd.arg(format!("--dhcp-option=option:dns-server,{}", h.ip));
                if offer.authoritative {
                    cmd.arg("--dhcp-authoritative");
                }
                if let Some((t1, t2)) = offer.t1_t2 {
                    cmd.arg(format!("--dhcp-option=option:T1,{t1}"));
                    cmd.arg(format!("--dhcp-option=option:T2,{t2}"));
                }
                if let Some(m) = offer.mtu {
                    cmd.arg(format!("--dhcp-option=option:mtu,{m}"));
                }
                if !offer.search.is_empty() {
                    cmd.arg(format!(
                        "--dhcp-option=option:domain-search,{}",
                        offer.search.join(",")
                    ));
                }
                if !offer.ntp.is_empty() {
                    cmd.arg(format!("--dhcp-option=option:ntp-server,{}", offer.ntp.join(",")));
                }
                if offer.netmask.is_some() {
                    cmd.arg(format!("--dhcp-option=option:netmask,{mask}"));
                }
                if !offer.routes.is_empty() {
                    let r: Vec<String> = offer
                        .routes
                        .iter()
                        .map(|r| format!("{}/{},{}", r.dest, r.prefix_len, r.gateway))
                        .collect();
                    cmd.arg(format!(
                        "--dhcp-option=option:classless-static-route,{}",
                        r.join(",")
                    ));
                }
            }
            Server::Kea => {
                // Kea opens no socket on an interface without carrier: the
                // peer must be up (the daemon would bring it up anyway).
                sh(&self.client_ns, &["ip", "link", "set", CLIENT_IF, "up"]);
                // And the carrier must have reached the server's side, which
                // on a busy machine takes a moment after `ip link set up`
                // returns; after 5 s Kea starts anyway, and the check below
                // says so if it opened no socket.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !has_carrier(&h.ns, &h.ifname) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::fs::write(&conf, server_config(kind, &h, offer, &leases)).unwrap();
                // Kea keeps its lock and pid files where these say.
                cmd.env("KEA_LOCKFILE_DIR", &self.dir)
                    .env("KEA_PIDFILE_DIR", &self.dir);
                cmd.args(["kea-dhcp4", "-c"]).arg(&conf);
            }
            Server::Dhcpd => {
                std::fs::write(&conf, server_config(kind, &h, offer, &leases)).unwrap();
                std::fs::write(&leases, "").unwrap();
                cmd.args(["dhcpd", "-f", "-d", "-4", "-cf"]).arg(&conf);
                cmd.arg("-lf").arg(&leases).arg("-pf").arg(&pid).arg(&h.ifname);
            }
            Server::Udhcpd => {
                std::fs::write(&conf, server_config(kind, &h, offer, &leases)).unwrap();
                // -a: ARP-ping an address for 100 ms (default 2 s) before offering.
                cmd.args(["busybox", "udhcpd", "-f", "-a", "100"]).arg(&conf);
            }
        }
        let idx = self.procs.spawn_logged(cmd, &log);
        let ns = h.ns.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.procs.try_wait(idx) {
                panic!("{} exited at start ({st}):\n{}", kind.name(), read_lossy(&log));
            }
            let text = read_lossy(&log);
            let ready = match kind {
                Server::Kea => {
                    assert!(
                        !text.contains("DHCPSRV_NO_SOCKETS_OPEN"),
                        "kea opened no socket:\n{text}"
                    );
                    text.contains("DHCP4_STARTED")
                }
                Server::Dhcpd => text.contains("Server starting service."),
                Server::Dnsmasq | Server::Udhcpd => listening_in(&ns, Proto::Udp, 67),
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up:\n{text}",
                kind.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ServerRun {
            kind,
            host,
            child: idx,
            log,
            leases,
        }
    }

    /// Stop a server (SIGTERM, then SIGKILL after 5 s) and wait for it.
    pub fn stop_server(&mut self, s: &ServerRun) {
        self.procs.stop(s.child, Duration::from_secs(5));
    }

    /// Renumber `hosts[host]` into the /24 `prefix` (the server's old
    /// address goes): a server started afterwards serves the new subnet.
    pub fn move_server(&mut self, host: usize, prefix: &str) {
        let h = &mut self.hosts[host];
        sh(&h.ns, &["ip", "addr", "flush", "dev", &h.ifname]);
        let ip = format!("{prefix}.1");
        sh(
            &h.ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", &h.ifname],
        );
        h.ip = ip.clone();
        h.router = ip;
        h.prefix = prefix.into();
    }

    /// Whether the server recorded a DHCPRELEASE for `addr`, from its log or
    /// its lease database.
    pub fn server_saw_release(&self, s: &ServerRun, addr: &str) -> bool {
        let log = read_lossy(&s.log);
        match s.kind {
            Server::Dnsmasq => log.lines().any(|l| l.contains("DHCPRELEASE") && l.contains(addr)),
            Server::Dhcpd => log
                .lines()
                .any(|l| l.starts_with(&format!("DHCPRELEASE of {addr} ")) && l.contains("(found)")),
            Server::Kea => log
                .lines()
                .any(|l| l.contains("DHCP4_RELEASE ") && l.contains(&format!("address {addr} was released"))),
            Server::Udhcpd => {
                // udhcpd writes its (binary) lease file on SIGUSR1: a released
                // lease is kept with zero time left.
                let _ = Command::new("kill")
                    .args(["-USR1", &self.procs.pid(s.child).to_string()])
                    .status();
                let mut left = None;
                let deadline = Instant::now() + Duration::from_secs(3);
                while left.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                    left = udhcpd_lease_left(&s.leases, addr);
                }
                left == Some(0)
            }
        }
    }

    /// Our daemon under `sandbox`, with a short first retransmission (a
    /// DISCOVER lost while a busy machine starts a server is resent soon),
    /// and the lowest lease floor, so that [`Offer::short`] timings (T1 2 s)
    /// are used as sent instead of being raised to the default floor's 10 s.
    pub fn start_daemon(&mut self, sandbox: &str, extra: &[&str]) -> usize {
        let mut args = vec![
            "--sandbox",
            sandbox,
            "--first-retransmit-ms",
            "1000",
            "--min-lease-secs",
            "4",
        ];
        args.extend_from_slice(extra);
        self.start_client(&args)
    }

    /// Drop every frame leaving `dev` (namespace `ns`) that the nftables
    /// expression `rule` matches, in a netdev egress hook. Packet sockets
    /// transmit through it, so it also holds back frames of our daemon and
    /// of servers using raw sockets. Undone by [`Net::unblock`].
    pub fn block(&self, ns: &str, dev: &str, rule: &str) {
        let script = format!(
            "table netdev mirage_test {{\n  chain out {{\n    type filter hook egress device \"{dev}\" priority 0;\n    {rule} drop\n  }}\n}}\n"
        );
        let path = self.path(&format!("nft-{ns}.conf"));
        std::fs::write(&path, script).unwrap();
        sh(ns, &["nft", "-f", &path.display().to_string()]);
    }

    /// Remove what [`Net::block`] added in `ns`.
    pub fn unblock(&self, ns: &str) {
        sh(ns, &["nft", "delete", "table", "netdev", "mirage_test"]);
    }

    /// Stop the child at `idx` with SIGKILL and reap it.
    pub fn kill_child(&mut self, idx: usize) {
        self.procs.kill(idx);
    }

    /// A small tmpfs of `size` (e.g. "64k") mounted on the test's `name`
    /// directory (unmounted in Drop): for full or read-only state dirs.
    pub fn mount_tmpfs(&mut self, name: &str, size: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                // The actuator's, as a directory the daemon made would be.
                &format!("size={size},mode=0700,uid={ACTUATOR_ID},gid={ACTUATOR_ID}"),
                "mirage-test",
            ])
            .arg(&p));
        self.mounts.push(p.clone());
        p
    }

    /// Watch address events in the client namespace until dropped.
    pub fn watch_addresses(&self) -> AddrWatch {
        let log = self.path(&format!(
            "monitor-{}.log",
            NEXT_SERVER.fetch_add(1, Ordering::SeqCst)
        ));
        AddrWatch::start(&self.client_ns, &log)
    }

    /// The daemon's role pid by name (panics if it is not running).
    pub fn role_pid(&self, daemon: usize, role: &str) -> u32 {
        mirage_testkit::procfs::role_pid(self.child_pid(daemon), role)
    }
}

/// Whether `ifname` in namespace `ns` has carrier (`LOWER_UP`).
fn has_carrier(ns: &str, ifname: &str) -> bool {
    let out = sh(ns, &["ip", "-j", "link", "show", "dev", ifname]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
        v[0]["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "LOWER_UP"))
    })
}

/// Seconds left on `addr` in a busybox udhcpd lease file: an 8-byte
/// timestamp, then 36-byte records (expires, ip, mac[6], hostname[20],
/// pad[2]; numbers in network order, expiry as time left).
pub fn udhcpd_lease_left(path: &Path, addr: &str) -> Option<u32> {
    let data = std::fs::read(path).ok()?;
    let want: std::net::Ipv4Addr = addr.parse().ok()?;
    data.get(8..)?
        .chunks_exact(36)
        .find_map(|r| (r[4..8] == want.octets()).then(|| u32::from_be_bytes([r[0], r[1], r[2], r[3]])))
}

// ---- results for docs/interop.md ------------------------------------------

/// Environment variable naming a file that outcomes are appended to (one
/// JSON object a line); scripts/interop-table.sh renders it as the table of
/// docs/interop.md. Unset: nothing is recorded, the tests still assert.
pub const RESULTS_ENV: &str = "MIRAGE_INTEROP_RESULTS";

/// Append one outcome. `outcome` is "pass", "fail" or "n/a"; `note` says
/// what the server did (or why the scenario cannot be expressed).
pub fn record(scenario: &str, server: &str, sandbox: &str, outcome: &str, note: &str) {
    let Ok(path) = std::env::var(RESULTS_ENV) else {
        return;
    };
    let line = serde_json::json!({
        "scenario": scenario, "server": server, "sandbox": sandbox,
        "outcome": outcome, "note": note,
    })
    .to_string()
        + "\n";
    use std::io::Write;
    // One write of one line with O_APPEND: parallel tests do not interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The two sandboxes every scenario runs under.
pub const SANDBOXES: [&str; 2] = ["seccomp", "none"];

/// [`SANDBOXES`] and `kvm` (the engine as a KVM guest), unless KVM is
/// unusable here and `MIRAGE_NO_KVM=1` says to skip it
/// ([`mirage_testkit::kvm::usable`]; without it, no KVM fails loudly).
pub fn sandboxes_with_kvm(scenario: &str) -> Vec<&'static str> {
    let mut all = SANDBOXES.to_vec();
    if mirage_testkit::kvm::usable(scenario) {
        all.push("kvm");
    }
    all
}

/// Run `case` for every (server, sandbox) pair at once, each in its own
/// thread and namespaces, under every sandbox: [`sandboxes_with_kvm`]
/// (`seccomp`, `none` and `kvm`; without a usable KVM device the kvm runs
/// fail loudly, or are skipped with a loud line under `MIRAGE_NO_KVM=1`).
/// Every pair's outcome is recorded (its note on success, the panic
/// message on failure); panics afterwards if any failed, naming all of
/// them. `na` lists servers that cannot express the scenario, with the
/// reason, recorded as "n/a" and not run.
pub fn matrix<F>(scenario: &str, servers: &[Server], na: &[(Server, &str)], case: F)
where
    F: Fn(Server, &str) -> String + Sync,
{
    matrix_in(scenario, servers, na, &sandboxes_with_kvm(scenario), case)
}

/// [`matrix`] over the sandboxes `sandboxes`.
pub fn matrix_in<F>(
    scenario: &str,
    servers: &[Server],
    na: &[(Server, &str)],
    sandboxes: &[&'static str],
    case: F,
) where
    F: Fn(Server, &str) -> String + Sync,
{
    for (s, why) in na {
        for sb in sandboxes {
            record(scenario, s.name(), sb, "n/a", why);
        }
    }
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = servers
            .iter()
            .flat_map(|s| sandboxes.iter().map(move |sb| (*s, *sb)))
            .map(|(s, sb)| {
                let case = &case;
                (s, sb, scope.spawn(move || case(s, sb)))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|(s, sb, h)| match h.join() {
                Ok(note) => {
                    record(scenario, s.name(), sb, "pass", &note);
                    None
                }
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into());
                    let first = msg.lines().next().unwrap_or("").to_string();
                    record(scenario, s.name(), sb, "fail", &first);
                    Some(format!("{} / {sb}: {msg}", s.name()))
                }
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{scenario} failed for:\n{}",
        failures.join("\n---\n")
    );
}
