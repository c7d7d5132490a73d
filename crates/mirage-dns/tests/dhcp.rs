//! mirage-dns and mirage-dhcp together (docs/dns.md, "DHCP servers";
//! docs/operators.md, "A local DNS stub"): dnsmasq hands out a lease
//! naming a DNS server in the server's namespace (another dnsmasq on each
//! of two addresses, answering `where.test` with the address it serves
//! on); mirage-dhcp, with `resolv_conf_nameserver = 127.0.0.53`, writes
//! resolv.conf naming the stub and publishes the lease's servers in
//! `servers.json`; mirage-dns, with no upstream configured, follows that
//! file: a query to the stub is answered by the learned server, the
//! uplink resolv.conf lists it, and a new lease naming the other server is
//! followed. Needs root (namespaces, port 53, the roles' privilege drop)
//! and dnsmasq (scripts/install-deps.sh); CI runs as root. The mirage-dhcp
//! binary is `MIRAGE_DHCP_BIN`, else the workspace's build (made here with
//! cargo if missing).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dns_wire::{RData, Rcode, Type};
use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{Netns, in_netns, unique_id};
use mirage_testkit::process::{Procs, Proto, wait_listening};
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use support::{ask_udp, query};

/// mirage-dhcp: the named build, else the one beside this crate's binary
/// (same target and profile), built by cargo first so it is current.
fn dhcp_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MIRAGE_DHCP_BIN")
        && !p.is_empty()
    {
        assert!(Path::new(&p).is_file(), "MIRAGE_DHCP_BIN={p}: no such file");
        return p.into();
    }
    let ours = Path::new(env!("CARGO_BIN_EXE_mirage-dns"));
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
const STUB: &str = "127.0.0.53";

/// Dropped in field order: the processes, the namespaces, the directory.
struct Fixture {
    procs: Procs,
    server: Netns,
    client: Netns,
    dir: TestDir,
    subnet: String,
    dhcp_server: Option<usize>,
}

impl Fixture {
    fn new() -> Fixture {
        let (id, n) = unique_id();
        let subnet = format!("10.{}.{}", 100 + std::process::id() % 100, 1 + n % 250);
        let server = Netns::add(&format!("dds{id}"));
        let client = Netns::add(&format!("ddc{id}"));
        let dir = TestDir::new("mirage-dns-dhcp", &id);
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
        server.addr_add(SERVER_IF, &format!("{subnet}.1/24"));
        server.addr_add(SERVER_IF, &format!("{subnet}.2/24"));
        server.link_up(SERVER_IF);
        let mut f = Fixture {
            procs: Procs::new(),
            server,
            client,
            dir,
            subnet,
            dhcp_server: None,
        };
        // One DNS server on each address, each naming itself as
        // where.test's address (TTL 0: nothing is cached).
        for host in [1, 2] {
            let addr = format!("{}.{host}", f.subnet);
            let mut cmd = f.server.command("dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--log-queries",
                &format!("--listen-address={addr}"),
                &format!("--host-record=where.test,{addr}"),
            ])
            .arg(format!(
                "--pid-file={}",
                f.dir.join(&format!("dns{host}.pid")).display()
            ));
            f.procs.spawn_logged(cmd, &f.dir.join(&format!("dns{host}.log")));
        }
        wait_listening(&f.server, Proto::Udp, 53, Duration::from_secs(10));
        f
    }

    /// dnsmasq handing out `dns` as option 6 and a search domain, T1 2 s
    /// (renewals come fast); DHCP only.
    fn start_dhcp_server(&mut self, dns: &str) {
        if let Some(old) = self.dhcp_server.take() {
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
            &format!("--dhcp-option=option:dns-server,{dns}"),
            "--dhcp-option=option:domain-search,corp.example",
            "--dhcp-option=option:T1,2",
            "--dhcp-option=option:T2,4",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            self.dir.join("dnsmasq.leases").display()
        ))
        .arg(format!("--pid-file={}", self.dir.join("dnsmasq.pid").display()));
        self.dhcp_server = Some(self.procs.spawn_logged(cmd, &self.dir.join("dnsmasq.log")));
        wait_listening(&self.server, Proto::Udp, 67, Duration::from_secs(10));
    }

    fn dns_status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("dns-run/status.json")).ok()?).ok()
    }

    fn logs(&self) -> String {
        format!(
            "dns status {:?}\nservers.json {:?}\nresolv.conf {:?}\nuplink {:?}\n--- dns\n{}\n--- dhcp\n{}",
            self.dns_status(),
            std::fs::read_to_string(self.dir.join("dhcp-run/servers.json")),
            std::fs::read_to_string(self.dir.join("resolv.conf")),
            std::fs::read_to_string(self.dir.join("dns-run/resolv.conf")),
            read_lossy(&self.dir.join("dns.log")),
            read_lossy(&self.dir.join("dhcp.log"))
        )
    }

    /// Wait for mirage-dns to forward to exactly `upstreams`.
    fn wait_upstreams(&self, upstreams: &[String]) -> serde_json::Value {
        wait_some(
            Duration::from_secs(30),
            &format!("upstreams {upstreams:?}"),
            || {
                self.dns_status()
                    .filter(|v| v["upstreams"] == serde_json::json!(upstreams))
            },
            || self.logs(),
        )
    }

    /// where.test through the stub, in the client's namespace.
    fn ask_stub(&self, id: u16) -> (Rcode, Vec<IpAddr>) {
        in_netns(self.client.name(), move || {
            let stub: SocketAddr = format!("{STUB}:53").parse().unwrap();
            let m = ask_udp(stub, &query(id, "where.test", Type::A, true)).expect("the stub answers");
            assert_eq!(m.header.id, id);
            let addrs = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(*a)),
                    _ => None,
                })
                .collect();
            (m.rcode(), addrs)
        })
    }

    /// The lines of a resolv.conf that are not comments.
    fn body(&self, name: &str) -> Vec<String> {
        read_lossy(&self.dir.join(name))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    }
}

#[test]
fn mirage_dns_serves_the_host_through_the_servers_mirage_dhcp_learned() {
    let dhcp_bin = dhcp_bin();
    let mut f = Fixture::new();
    let s = f.subnet.clone();
    f.start_dhcp_server(&format!("{s}.1"));

    // mirage-dns first, on the stub: no upstream configured, so it
    // follows servers.json, which does not exist yet.
    let config = f.dir.join("dns.toml");
    std::fs::write(
        &config,
        format!(
            "dhcp_servers = \"{}\"\n",
            f.dir.join("dhcp-run/servers.json").display()
        ),
    )
    .unwrap();
    let mut cmd = f.client.command(support::bin().to_str().unwrap());
    cmd.args(["run", "--log-level", "debug", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(f.dir.join("dns-run"));
    let dns = f.procs.spawn_logged(cmd, &f.dir.join("dns.log"));
    wait_listening(&f.client, Proto::Udp, 53, Duration::from_secs(20));
    let v = f.wait_upstreams(&[]);
    assert_eq!(v["dhcp"]["servers"], serde_json::json!([]), "{v}");
    // Nothing to forward to yet: SERVFAIL at once, and an uplink file
    // with no server.
    assert_eq!(f.ask_stub(1).0, Rcode::SERVFAIL);
    assert!(f.body("dns-run/resolv.conf").is_empty(), "{}", f.logs());

    // mirage-dhcp with the stub as resolv.conf's only nameserver.
    let mut cmd = f.client.command(dhcp_bin.to_str().unwrap());
    cmd.args(["run", "--interface", CLIENT_IF, "--min-lease-secs", "4"])
        .args(["--resolv-conf-nameserver", STUB])
        .args(["--log-level", "debug", "--state-dir"])
        .arg(f.dir.join("dhcp-state"))
        .arg("--run-dir")
        .arg(f.dir.join("dhcp-run"))
        .arg("--resolv-conf")
        .arg(f.dir.join("resolv.conf"));
    f.procs.spawn_logged(cmd, &f.dir.join("dhcp.log"));

    let v = f.wait_upstreams(&[format!("{s}.1:53")]);
    assert_eq!(v["dhcp"]["servers"], serde_json::json!([format!("{s}.1")]), "{v}");
    assert_eq!(v["dhcp"]["search"], serde_json::json!(["corp.example"]), "{v}");
    wait_some(
        Duration::from_secs(10),
        "resolv.conf naming the stub",
        || (f.body("resolv.conf") == ["search corp.example", &format!("nameserver {STUB}")]).then_some(()),
        || f.logs(),
    );
    // The host's resolver is the stub, answered by the learned server.
    assert_eq!(
        f.ask_stub(2),
        (Rcode::NOERROR, vec![format!("{s}.1").parse().unwrap()])
    );
    // Container runtimes get the learned server itself.
    assert_eq!(
        f.body("dns-run/resolv.conf"),
        ["search corp.example".to_string(), format!("nameserver {s}.1")],
        "{}",
        f.logs()
    );

    // The lease changes at the next renewal: the other server.
    f.start_dhcp_server(&format!("{s}.2"));
    let v = f.wait_upstreams(&[format!("{s}.2:53")]);
    assert!(v["dhcp"]["changes"].as_u64() >= Some(2), "{v}");
    assert_eq!(
        f.ask_stub(3),
        (Rcode::NOERROR, vec![format!("{s}.2").parse().unwrap()])
    );
    wait_some(
        Duration::from_secs(5),
        "the uplink file naming the new server",
        || {
            (f.body("dns-run/resolv.conf")
                == ["search corp.example".to_string(), format!("nameserver {s}.2")])
            .then_some(())
        },
        || f.logs(),
    );
    // resolv.conf still names the stub.
    assert_eq!(
        f.body("resolv.conf"),
        ["search corp.example", &format!("nameserver {STUB}")]
    );

    // Each new list started the pair again on purpose: no fault, no
    // back-off, not counted as an engine restart.
    let log = read_lossy(&f.dir.join("dns.log"));
    assert!(
        log.contains("stopped to start again (the upstreams changed)"),
        "{log}"
    );
    assert!(!log.contains("restarting in"), "{log}");
    assert_eq!(f.dns_status().unwrap()["engine_restarts"], 0);

    f.procs.signal(dns, "TERM");
    let exit = f
        .procs
        .wait_exit(dns, Duration::from_secs(10))
        .expect("mirage-dns stops");
    assert!(exit.success(), "{exit:?}: {}", f.logs());
}

/// A learned server that is one of our own listen addresses is refused
/// (a forwarding loop), the others used; the file changing is followed,
/// and an emptied list leaves no upstream. servers.json is written by the
/// test here, as mirage-dhcp's actuator writes it.
#[test]
fn a_learned_server_that_is_our_own_listen_address_is_refused() {
    let (id, _) = unique_id();
    let ns = Netns::add_unique("ddl");
    let dir = TestDir::new("mirage-dns-dhcp-loop", &id);
    let servers = dir.join("servers.json");
    let write = |dns: &[&str], search: &[&str]| {
        let v =
            serde_json::json!({"version": 1, "interface": "eth0", "ntp": [], "dns": dns, "search": search});
        let tmp = dir.join("servers.json.new");
        std::fs::write(&tmp, v.to_string()).unwrap();
        std::fs::rename(&tmp, &servers).unwrap();
    };
    write(&[STUB, "127.0.0.9", "127.0.0.9"], &["a.example", "search"]);
    let config = dir.join("dns.toml");
    std::fs::write(&config, format!("dhcp_servers = \"{}\"\n", servers.display())).unwrap();
    let mut procs = Procs::new();
    let mut cmd = ns.command(support::bin().to_str().unwrap());
    cmd.args(["run", "--log-level", "debug", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(dir.join("run"));
    let dns = procs.spawn_logged(cmd, &dir.join("dns.log"));
    let status = || -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/status.json")).ok()?).ok()
    };
    let logs = || format!("{:?}\n{}", status(), read_lossy(&dir.join("dns.log")));
    let v = wait_some(
        Duration::from_secs(20),
        "the learned upstream",
        || status().filter(|v| v["upstreams"] == serde_json::json!(["127.0.0.9:53"])),
        logs,
    );
    assert_eq!(v["dhcp"]["self_loops"], serde_json::json!([STUB]), "{v}");
    let log = read_lossy(&dir.join("dns.log"));
    assert!(
        log.contains("refused the learned DNS server 127.0.0.53:53: it is one of our own listen addresses"),
        "{log}"
    );
    // The uplink file: the search domain that is a resolv.conf keyword
    // left out, the refused server too.
    let uplink = read_lossy(&dir.join("run/resolv.conf"));
    let body: Vec<&str> = uplink.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(body, ["search a.example", "nameserver 127.0.0.9"], "{uplink}");

    // The list changes, then empties.
    write(&["127.0.0.10"], &[]);
    wait_some(
        Duration::from_secs(10),
        "the new learned upstream",
        || status().filter(|v| v["upstreams"] == serde_json::json!(["127.0.0.10:53"])),
        logs,
    );
    write(&[], &[]);
    let v = wait_some(
        Duration::from_secs(10),
        "no upstream",
        || status().filter(|v| v["upstreams"] == serde_json::json!([])),
        logs,
    );
    assert_eq!(v["dhcp"]["changes"], 3, "{v}");
    assert_eq!(v["engine_restarts"], 0, "{v}");
    let uplink = read_lossy(&dir.join("run/resolv.conf"));
    assert!(!uplink.contains("nameserver"), "{uplink}");

    // A configured upstream that is ours is an error at start.
    let out = ns
        .command(support::bin().to_str().unwrap())
        .args(["run", "--config", "/dev/null", "--upstream", STUB, "--run-dir"])
        .arg(dir.join("run2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is one of our own listen addresses"), "{err}");

    procs.signal(dns, "TERM");
    let exit = procs
        .wait_exit(dns, Duration::from_secs(10))
        .expect("mirage-dns stops");
    assert!(exit.success(), "{exit:?}: {}", logs());
}
