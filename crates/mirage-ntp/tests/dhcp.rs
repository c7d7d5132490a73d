//! mirage-ntp and mirage-dhcp together: dnsmasq hands out DHCP option 42
//! naming a chronyd (`-x`: it never touches the clock) in the server's
//! namespace; mirage-dhcp, in the client's namespace, publishes the
//! servers it learned in its runtime directory (`servers.json`);
//! mirage-ntp `--observe` follows that file and measures the server it
//! names. A changed lease changes the source; a released lease leaves
//! none. Needs root (namespaces, the roles' privilege drop), dnsmasq and
//! chronyd (scripts/install-deps.sh); CI runs as root. The mirage-dhcp
//! binary is `MIRAGE_DHCP_BIN`, else the workspace's build (made here
//! with cargo if missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{Netns, unique_id};
use mirage_testkit::process::{Procs, Proto, wait_listening};
use mirage_testkit::procfs::{ProcStatus, role_pid};
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;

fn ntp_bin() -> PathBuf {
    mirage_testkit::service_bin("MIRAGE_NTP_BIN", env!("CARGO_BIN_EXE_mirage-ntp"))
}

/// mirage-dhcp: the named build, else the one beside this crate's binary
/// (same target and profile), built by cargo first so it is current.
fn dhcp_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MIRAGE_DHCP_BIN")
        && !p.is_empty()
    {
        assert!(Path::new(&p).is_file(), "MIRAGE_DHCP_BIN={p}: no such file");
        return p.into();
    }
    let ours = Path::new(env!("CARGO_BIN_EXE_mirage-ntp"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "mirage-dhcp", "--bin", "mirage-dhcp"]);
    if ours.components().any(|c| c.as_os_str() == "release") {
        build.arg("--release");
    }
    let out = build.output().expect("cargo runs");
    assert!(out.status.success(), "building mirage-dhcp: {out:?}");
    let bin = ours.with_file_name("mirage-dhcp");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

const CLIENT_IF: &str = "veth-c";
const SERVER_IF: &str = "veth-s";
/// mirage-ntp's roles run as these (the `[ids]` table), not the defaults.
const IDS: [(&str, u32, u32); 3] = [
    ("engine", 65440, 65440),
    ("network", 65441, 65442),
    ("actuator", 65443, 65443),
];

/// Dropped in field order: the processes, the namespaces, the directory.
struct Fixture {
    procs: Procs,
    server: Netns,
    client: Netns,
    dir: TestDir,
    subnet: String,
    dnsmasq: Option<usize>,
}

impl Fixture {
    fn new() -> Fixture {
        let (id, n) = unique_id();
        let subnet = format!("10.{}.{}", 100 + std::process::id() % 100, 1 + n % 250);
        let server = Netns::add(&format!("nds{id}"));
        let client = Netns::add(&format!("ndc{id}"));
        let dir = TestDir::new("mirage-ntp-dhcp", &id);
        server.exec(&[
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
            client.name(),
        ]);
        // Two addresses on the server's side: the lease names one, then the
        // other, and chronyd answers on both.
        server.addr_add(SERVER_IF, &format!("{subnet}.1/24"));
        server.addr_add(SERVER_IF, &format!("{subnet}.2/24"));
        server.link_up(SERVER_IF);
        let mut f = Fixture {
            procs: Procs::new(),
            server,
            client,
            dir,
            subnet,
            dnsmasq: None,
        };
        let conf = f.dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "allow all\nlocal stratum 8\nport 123\ncmdport 0\npidfile {0}/chronyd.pid\ndriftfile {0}/chrony.drift\n",
                f.dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = f.server.command("chronyd");
        cmd.args(["-x", "-d", "-u", "root", "-f"]).arg(&conf);
        f.procs.spawn_logged(cmd, &f.dir.join("chrony.log"));
        wait_listening(&f.server, Proto::Udp, 123, Duration::from_secs(20));
        f
    }

    /// dnsmasq handing out `ntp` as option 42, T1 2 s (renewals come fast).
    fn start_dnsmasq(&mut self, ntp: &str) {
        if let Some(old) = self.dnsmasq.take() {
            self.procs.stop(old, Duration::from_secs(5));
        }
        let s = &self.subnet;
        let mut cmd = self.server.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            &format!("--interface={SERVER_IF}"),
            "--except-interface=lo",
            "--no-ping",
            "--log-dhcp",
            &format!("--dhcp-range={s}.50,{s}.150,255.255.255.0,120"),
            &format!("--dhcp-option=option:dns-server,{s}.1"),
            &format!("--dhcp-option=option:ntp-server,{ntp}"),
            "--dhcp-option=option:T1,2",
            "--dhcp-option=option:T2,4",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            self.dir.join("dnsmasq.leases").display()
        ))
        .arg(format!("--pid-file={}", self.dir.join("dnsmasq.pid").display()));
        self.dnsmasq = Some(self.procs.spawn_logged(cmd, &self.dir.join("dnsmasq.log")));
        wait_listening(&self.server, Proto::Udp, 67, Duration::from_secs(10));
    }

    fn ntp_status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("run/status.json")).ok()?).ok()
    }

    fn servers_file(&self) -> PathBuf {
        self.dir.join("dhcp-run/servers.json")
    }

    fn logs(&self) -> String {
        format!(
            "ntp status {:?}\nservers.json {:?}\n--- ntp\n{}\n--- dhcp\n{}",
            self.ntp_status(),
            std::fs::read_to_string(self.servers_file()),
            read_lossy(&self.dir.join("ntp.log")),
            read_lossy(&self.dir.join("dhcp.log"))
        )
    }

    /// Wait for mirage-ntp to measure exactly `server` (port 123), from DHCP.
    fn wait_source(&self, server: &str, within: Duration) -> serde_json::Value {
        let want = format!("{server}:123");
        wait_some(
            within,
            &format!("{want} selected"),
            || {
                self.ntp_status().filter(|v| {
                    v["state"] == "observing"
                        && v["sources"].as_array().is_some_and(|s| {
                            s.len() == 1
                                && s[0]["address"] == want.as_str()
                                && s[0]["state"] == "selected"
                                && s[0]["origin"] == "dhcp"
                        })
                })
            },
            || self.logs(),
        )
    }
}

#[test]
fn mirage_ntp_follows_the_ntp_servers_mirage_dhcp_learned() {
    let dhcp_bin = dhcp_bin();
    let mut f = Fixture::new();
    let s = f.subnet.clone();
    f.start_dnsmasq(&format!("{s}.1"));

    // mirage-ntp first: servers.json does not exist yet; no server is
    // configured, only the file to follow.
    let config = f.dir.join("ntp.toml");
    let ids: String = IDS
        .iter()
        .map(|(role, uid, gid)| format!("{role} = \"{uid}:{gid}\"\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "dhcp_servers = \"{}\"\nobserve = true\n[ids]\n{ids}",
            f.servers_file().display()
        ),
    )
    .unwrap();
    let mut cmd = f.client.command(ntp_bin().to_str().unwrap());
    cmd.args(["run", "--log-level", "debug", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(f.dir.join("state"))
        .arg("--run-dir")
        .arg(f.dir.join("run"));
    let ntp = f.procs.spawn_logged(cmd, &f.dir.join("ntp.log"));
    let v = wait_some(
        Duration::from_secs(20),
        "mirage-ntp waiting for DHCP servers",
        || f.ntp_status().filter(|v| v["state"] == "no-sources"),
        || f.logs(),
    );
    assert_eq!(v["dhcp"]["servers"], serde_json::json!([]), "{v}");

    let mut cmd = f.client.command(dhcp_bin.to_str().unwrap());
    cmd.args(["run", "--interface", CLIENT_IF, "--min-lease-secs", "4"])
        .args(["--release-on-stop", "--log-level", "debug", "--state-dir"])
        .arg(f.dir.join("dhcp-state"))
        .arg("--run-dir")
        .arg(f.dir.join("dhcp-run"))
        .arg("--resolv-conf")
        .arg(f.dir.join("resolv.conf"));
    let dhcp = f.procs.spawn_logged(cmd, &f.dir.join("dhcp.log"));

    // What mirage-dhcp publishes for every consumer.
    let published = wait_some(
        Duration::from_secs(30),
        "servers.json with the lease's servers",
        || {
            let text = std::fs::read_to_string(f.servers_file()).ok()?;
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(|v| v["ntp"].as_array().is_some_and(|a| !a.is_empty()))
        },
        || f.logs(),
    );
    assert_eq!(
        published,
        serde_json::json!({
            "version": 1, "interface": CLIENT_IF,
            "ntp": [format!("{s}.1")], "dns": [format!("{s}.1")], "search": [],
        })
    );

    // mirage-ntp measures the server the lease names.
    let v = f.wait_source(&format!("{s}.1"), Duration::from_secs(30));
    let offset = v["offset_ms"].as_f64().unwrap();
    assert!(offset.abs() < 5.0, "chronyd serves this very clock: {v}");
    assert_eq!(v["sources"][0]["stratum"], 8, "{v}");
    assert_eq!(v["dhcp"]["servers"], serde_json::json!([format!("{s}.1")]), "{v}");
    assert_eq!(v["dhcp"]["error"], serde_json::Value::Null, "{v}");
    assert_eq!(v["refused"], serde_json::json!({}), "{v}");

    // Its roles run as the [ids] table says.
    let pid = f.procs.pid(ntp);
    for (role, uid, gid) in IDS {
        let st = ProcStatus::read(role_pid(pid, role));
        assert_eq!(st.uids(), [uid; 4], "{role}");
        assert_eq!(st.gids(), [gid; 4], "{role}");
        assert_eq!(st.seccomp(), 2, "{role}");
    }

    // The lease changes at the next renewal: another NTP server.
    f.start_dnsmasq(&format!("{s}.2"));
    let v = f.wait_source(&format!("{s}.2"), Duration::from_secs(30));
    assert_eq!(v["dhcp"]["servers"], serde_json::json!([format!("{s}.2")]), "{v}");
    assert!(v["dhcp"]["changes"].as_u64() >= Some(2), "{v}");
    let published: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.servers_file()).unwrap()).unwrap();
    assert_eq!(published["ntp"], serde_json::json!([format!("{s}.2")]));

    // The lease goes (released on stop): the file empties, no source left.
    f.procs.signal(dhcp, "TERM");
    let exit = f
        .procs
        .wait_exit(dhcp, Duration::from_secs(10))
        .expect("mirage-dhcp stops");
    assert!(exit.success(), "{exit:?}: {}", f.logs());
    let published: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.servers_file()).unwrap()).unwrap();
    assert_eq!(published["ntp"], serde_json::json!([]), "{published}");
    assert_eq!(published["dns"], serde_json::json!([]), "{published}");
    let v = wait_some(
        Duration::from_secs(10),
        "no source once the lease is gone",
        || {
            f.ntp_status()
                .filter(|v| v["sources"].as_array().is_some_and(|s| s.is_empty()))
        },
        || f.logs(),
    );
    assert_eq!(v["state"], "no-sources", "{v}");

    // Each new list started the network role again on purpose: no fault,
    // no back-off.
    let log = read_lossy(&f.dir.join("ntp.log"));
    assert!(
        log.contains("network stopped to start again (the DHCP servers changed: new sockets)"),
        "{log}"
    );
    assert!(!log.contains("restarting in"), "{log}");

    f.procs.signal(ntp, "TERM");
    let exit = f
        .procs
        .wait_exit(ntp, Duration::from_secs(10))
        .expect("mirage-ntp stops");
    assert!(exit.success(), "{exit:?}: {}", f.logs());
}
