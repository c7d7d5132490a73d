//! What mirage-dns's suites share: unbound as the upstream, in a network
//! namespace the test creates, and a small DNS client (UDP and TCP) on
//! dns-wire. Needs root and unbound (scripts/install-deps.sh).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use dns_wire::{Edns, Message, Name, Type};
use mirage_testkit::netns::{Netns, unique_id};
use mirage_testkit::process::{Procs, Proto, wait_listening};
use mirage_testkit::tempdir::TestDir;

pub fn bin() -> PathBuf {
    mirage_testkit::service_bin("MIRAGE_DNS_BIN", env!("CARGO_BIN_EXE_mirage-dns"))
}

/// The port unbound answers on, on 127.0.0.1 and ::1.
pub const UPSTREAM_PORT: u16 = 5300;

/// One test per sandbox for each case: `CASE::seccomp` and `CASE::kvm`
/// (the engine as a KVM guest; needs /dev/kvm, see `mirage_testkit::kvm`).
#[macro_export]
macro_rules! in_each_sandbox {
    ($suite:literal: $($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn seccomp() {
                super::$case("seccomp")
            }
            #[test]
            fn kvm() {
                if mirage_testkit::kvm::usable(concat!($suite, "::", stringify!($case))) {
                    super::$case("kvm")
                }
            }
        }
    )*};
}

/// Dropped in field order: the processes, the namespace, the directory.
pub struct Fixture {
    pub procs: Procs,
    pub ns: Netns,
    pub dir: TestDir,
    /// `--sandbox` for mirage-dns when set ([`Fixture::in_sandbox`]).
    pub sandbox: Option<&'static str>,
}

/// The zone unbound serves: `a.test` has an A and an AAAA record,
/// `alias.test` is a CNAME to it, `many.test` 100 A records (see
/// [`with_unbound`]), anything else in `test.` is NXDOMAIN.
const ZONE: &str = r#"
    local-zone: "test." static
    local-data: "a.test. 300 IN A 192.0.2.10"
    local-data: "a.test. 300 IN AAAA 2001:db8::10"
    local-data: "alias.test. 300 IN CNAME a.test."
    local-data: "test. 300 IN SOA ns.test. admin.test. 1 3600 600 86400 60"
"#;

/// unbound answering from local data only (no recursion, no network) in
/// a fresh namespace.
pub fn with_unbound(tag: &str) -> Fixture {
    let (id, _) = unique_id();
    let ns = Netns::add_unique(tag);
    let dir = TestDir::new("mirage-dns", &id);
    let conf = dir.join("unbound.conf");
    let d = dir.path().display();
    // `many.test`: 100 A records, about 1.7 KB: truncated over UDP at 1232.
    let many: String = (1..=100)
        .map(|i| format!("    local-data: \"many.test. 300 IN A 198.51.100.{i}\"\n"))
        .collect();
    std::fs::write(
        &conf,
        format!(
            "server:\n    interface: 127.0.0.1@{UPSTREAM_PORT}\n    interface: ::1@{UPSTREAM_PORT}\n    \
             do-daemonize: no\n    username: \"\"\n    chroot: \"\"\n    directory: \"{d}\"\n    \
             pidfile: \"{d}/unbound.pid\"\n    use-syslog: no\n    logfile: \"\"\n    \
             access-control: 127.0.0.0/8 allow\n    access-control: ::1 allow\n    \
             module-config: \"iterator\"\n{ZONE}{many}\nremote-control:\n    control-enable: no\n"
        ),
    )
    .unwrap();
    let mut procs = Procs::new();
    let mut cmd = ns.command("unbound");
    cmd.args(["-d", "-c"]).arg(&conf);
    procs.spawn_logged(cmd, &dir.join("unbound.log"));
    wait_listening(&ns, Proto::Udp, UPSTREAM_PORT, Duration::from_secs(20));
    Fixture {
        procs,
        ns,
        dir,
        sandbox: None,
    }
}

impl Fixture {
    /// mirage-dns runs with `--sandbox sandbox`.
    pub fn in_sandbox(mut self, sandbox: &'static str) -> Fixture {
        self.sandbox = Some(sandbox);
        self
    }

    /// mirage-dns in the namespace with `args` after `run`, its run
    /// directory and log in the test's directory.
    pub fn start_dns(&mut self, args: &[&str]) -> usize {
        self.start_dns_with("", args)
    }

    /// [`Fixture::start_dns`] with `config` as its config file.
    pub fn start_dns_with(&mut self, config: &str, args: &[&str]) -> usize {
        let daemon = self.spawn_dns_with(&[], config, args);
        wait_listening(&self.ns, Proto::Udp, 53, Duration::from_secs(20));
        wait_listening(&self.ns, Proto::Tcp, 53, Duration::from_secs(20));
        daemon
    }

    /// [`Fixture::start_dns`] without waiting for its listeners, run by
    /// `wrapper` (a command line that ends where the binary goes, such as
    /// `prlimit --nofile=1024:1024 --`) if not empty.
    pub fn spawn_dns(&mut self, wrapper: &[&str], args: &[&str]) -> usize {
        self.spawn_dns_with(wrapper, "", args)
    }

    /// [`Fixture::spawn_dns`] with `config` as its config file.
    pub fn spawn_dns_with(&mut self, wrapper: &[&str], config: &str, args: &[&str]) -> usize {
        let path = self.dir.join("dns.toml");
        std::fs::write(&path, config).unwrap();
        let bin = bin();
        let mut line: Vec<&str> = wrapper.to_vec();
        line.push(bin.to_str().unwrap());
        let mut cmd = self.ns.command(line[0]);
        cmd.args(&line[1..])
            .arg("run")
            .args(args)
            .args(self.sandbox.map(|s| ["--sandbox", s]).into_iter().flatten())
            .arg("--config")
            .arg(&path)
            .args(["--log-level", "debug", "--run-dir"])
            .arg(self.dir.join("run"));
        self.procs.spawn_logged(cmd, &self.dir.join("dns.log"))
    }

    /// `a.test` A asked of 127.0.0.53 (unbound's one address), and the
    /// status once that answer is counted.
    pub fn answers_a_test(&self) -> serde_json::Value {
        let got = mirage_testkit::netns::in_netns(self.ns.name(), || {
            let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
            ask_udp(ours, &query(1, "a.test", Type::A, false))
        })
        .expect("an answer");
        assert_eq!(
            (got.rcode(), got.answers.len()),
            (dns_wire::Rcode::NOERROR, 1),
            "{got:?}"
        );
        mirage_testkit::wait::wait_some(
            Duration::from_secs(10),
            "the answer counted",
            || {
                self.status()
                    .filter(|v| v["engine"]["answered"].as_u64() >= Some(1))
            },
            || self.log(),
        )
    }

    pub fn log(&self) -> String {
        mirage_testkit::cmd::read_lossy(&self.dir.join("dns.log"))
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("run/status.json")).ok()?).ok()
    }

    /// status.json's `sandbox` is the one asked for, with its reason; a
    /// guest's tender logged that it runs one, and its memory is
    /// published.
    pub fn assert_sandbox(&self, v: &serde_json::Value, sandbox: &str) {
        let log = self.log();
        assert_eq!(v["sandbox"], sandbox, "{v}");
        let reason = v["sandbox_reason"].as_str().unwrap();
        assert!(reason.starts_with(&format!("--sandbox {sandbox}")), "{reason}");
        let guest = log
            .lines()
            .any(|l| l.contains("[engine]") && l.contains("engine runs as a KVM guest"));
        assert_eq!(guest, sandbox == "kvm", "{log}");
        if sandbox == "kvm" {
            assert!(reason.contains("the guest booted and answered"), "{reason}");
            assert!(v["guest_memory_mib"].as_u64() >= Some(8), "{v}");
        } else {
            assert!(v["guest_memory_mib"].is_null(), "{v}");
        }
    }
}

/// What `mirage_testkit::procfs::kvm_fds` must be for `role` under `sandbox`.
pub fn want_kvm_fds(role: &str, sandbox: &str) -> &'static [&'static str] {
    match (role, sandbox) {
        ("engine", "kvm") => &["anon_inode:kvm-vcpu:0", "anon_inode:kvm-vm"],
        _ => &[],
    }
}

/// A query for `name` and `qtype`, EDNS with 1232 if `edns`.
pub fn query(id: u16, name: &str, qtype: Type, edns: bool) -> Vec<u8> {
    let mut m = Message::query(id, Name::from_ascii(name).unwrap(), qtype);
    m.edns = edns.then(|| Edns::new(1232));
    m.to_bytes().unwrap()
}

/// Ask `server` over UDP, up to 5 tries of 2 s: the parsed answer (with
/// the query's id), or `None` when nothing answered.
pub fn ask_udp(server: SocketAddr, data: &[u8]) -> Option<Message> {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(local).unwrap();
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let id = u16::from_be_bytes([data[0], data[1]]);
    let mut buf = [0u8; 65535];
    for _ in 0..5 {
        s.send(data).unwrap();
        while let Ok(n) = s.recv(&mut buf) {
            let m = Message::parse(&buf[..n]).expect("a well-formed answer");
            if m.header.id == id {
                return Some(m);
            }
        }
    }
    None
}

/// Ask `server` over one TCP connection, `queries` pipelined: the answers
/// in the order they came.
pub fn ask_tcp(server: SocketAddr, queries: &[Vec<u8>]) -> Vec<Message> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    for q in queries {
        out.extend_from_slice(&(q.len() as u16).to_be_bytes());
        out.extend_from_slice(q);
    }
    s.write_all(&out).unwrap();
    let mut answers = Vec::new();
    for _ in queries {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut m).unwrap();
        answers.push(Message::parse(&m).expect("a well-formed answer"));
    }
    answers
}

/// The zone nsd serves in [`with_nsd`] (`test.`): SOA TTL 300 and MINIMUM
/// 60, so negative answers are cached 60 s (RFC 2308 section 5).
pub fn nsd_zone() -> String {
    // TXT records of `n` octets of text, in strings of at most 250.
    let txt = |n: usize| -> String {
        let text: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        text.chunks(250)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "$ORIGIN test.\n$TTL 300\n\
         @ IN SOA ns.test. admin.test. 1 3600 600 86400 60\n\
         @ IN NS ns.test.\n\
         ns IN A 127.0.0.1\n\
         a IN A 192.0.2.10\n\
         a IN AAAA 2001:db8::10\n\
         alias IN CNAME b.test.\n\
         b IN CNAME a.test.\n\
         out IN CNAME www.example.\n\
         loop IN CNAME loop.test.\n\
         mx IN MX 10 a.test.\n\
         mx IN MX 20 b.test.\n\
         *.w IN A 192.0.2.20\n\
         *.t IN TXT {}\n\
         short 4 IN A 192.0.2.30\n\
         ten 10 IN A 192.0.2.31\n\
         big IN TXT {}\n\
         bigger IN TXT {}\n\
         huge IN TXT {}\n",
        txt(800),
        txt(700),
        txt(2000),
        txt(20000),
    )
}

/// The port nsd answers on, on 127.0.0.1 (the same as unbound's).
pub const NSD_PORT: u16 = UPSTREAM_PORT;

/// nsd serving [`nsd_zone`] in a fresh namespace, its statistics on a
/// control socket in the test's directory ([`Fixture::nsd_stat`]).
pub fn with_nsd(tag: &str) -> Fixture {
    let (id, _) = unique_id();
    let ns = Netns::add_unique(tag);
    let dir = TestDir::new("mirage-dns", &id);
    let d = dir.path().display();
    std::fs::write(dir.join("test.zone"), nsd_zone()).unwrap();
    std::fs::write(
        dir.join("nsd.conf"),
        format!(
            "server:\n    ip-address: 127.0.0.1@{NSD_PORT}\n    username: \"\"\n    chroot: \"\"\n    \
             zonesdir: \"{d}\"\n    database: \"\"\n    pidfile: \"{d}/nsd.pid\"\n    \
             xfrdfile: \"{d}/xfrd.state\"\n    zonelistfile: \"{d}/zone.list\"\n    \
             logfile: \"{d}/nsd.log\"\n    server-count: 1\n    verbosity: 1\n    \
             rrl-ratelimit: 0\n\
             remote-control:\n    control-enable: yes\n    control-interface: {d}/nsd.sock\n\
             zone:\n    name: \"test\"\n    zonefile: \"test.zone\"\n"
        ),
    )
    .unwrap();
    let mut procs = Procs::new();
    let mut cmd = ns.command("nsd");
    cmd.args(["-d", "-c"]).arg(dir.join("nsd.conf"));
    procs.spawn_logged(cmd, &dir.join("nsd.out"));
    wait_listening(&ns, Proto::Udp, NSD_PORT, Duration::from_secs(20));
    Fixture {
        procs,
        ns,
        dir,
        sandbox: None,
    }
}

impl Fixture {
    /// One of nsd's statistics (`nsd-control stats_noreset`), e.g.
    /// `num.queries`.
    pub fn nsd_stat(&self, key: &str) -> u64 {
        let conf = self.dir.join("nsd.conf");
        let out = self
            .ns
            .output(&["nsd-control", "-c", conf.to_str().unwrap(), "stats_noreset"]);
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in nsd's statistics: {out}"))
    }
}
