//! The kit against the real kernel: namespaces and veth pairs appear and go,
//! processes in them are reaped, ports are awaited, address events are seen,
//! and the raw server answers frames with its script. Needs root; CI runs
//! as root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mirage_sdk::packet::PacketSocket;
use mirage_testkit::monitor::AddrWatch;
use mirage_testkit::netns::{Netns, in_netns, run_in_netns, veth, veth_pair};
use mirage_testkit::process::{Procs, Proto, listening, wait_listening};
use mirage_testkit::raw::{Link, RawServer, Spec};
use mirage_testkit::wait::wait_until;

const BOUND: Duration = Duration::from_secs(20);

fn exists(ns: &str) -> bool {
    Path::new(&format!("/run/netns/{ns}")).exists()
}

#[test]
fn namespaces_and_their_processes_go_on_drop_also_on_panic() {
    let (name, mut stray) = {
        let a = Netns::add_unique("kta");
        let b = Netns::add_unique("ktb");
        veth(&a, "kt-a", &b, "kt-b");
        a.addr_add("kt-a", "10.201.0.1/24");
        b.addr_add("kt-b", "10.201.0.2/24");
        b.exec(&["busybox", "ping", "-c", "1", "-W", "5", "10.201.0.1"]);
        // A process left running in the namespace is killed with it.
        let mut stray = a.command("sleep");
        stray.arg("60");
        let stray = stray.spawn().unwrap();
        // `ip netns exec` enters the namespace, then execs sleep.
        wait_until(BOUND, || a.pids() == vec![stray.id()]);
        (a.name().to_owned(), stray)
    };
    assert!(!exists(&name), "{name} still there");
    let st = stray.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st}"
    );

    // Same on a panic, which also prints the kept logs.
    let mut kept = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::add_unique("ktp");
        kept = ns.name().to_owned();
        panic!("failing test");
    }));
    assert!(r.is_err());
    assert!(!exists(&kept), "{kept} survived a panic");
}

#[test]
fn a_server_is_awaited_until_it_listens_and_reaped_after() {
    let ns = Netns::add_unique("ktl");
    let dir = std::env::temp_dir().join(format!("kt-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut procs = Procs::new();
    assert!(!listening(&ns, Proto::Tcp, 7001));
    let mut cmd = ns.command("sh");
    // Listens after a delay: the wait must not return before.
    cmd.args(["-c", "sleep 0.3; exec busybox nc -ll -p 7001 -e cat"]);
    let idx = procs.spawn_logged(cmd, &dir.join("server.log"));
    wait_listening(&ns, Proto::Tcp, 7001, BOUND);
    assert!(listening(&ns, Proto::Tcp, 7001));
    assert!(!listening(&ns, Proto::Udp, 7001));
    let pid = procs.pid(idx);
    drop(procs);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn addr_watch_sees_deletions_up_to_the_call() {
    let ns = Netns::add_unique("ktw");
    ns.exec(&[
        "ip", "link", "add", "kt-d", "type", "veth", "peer", "name", "kt-e",
    ]);
    ns.link_up("kt-d");
    let log = std::env::temp_dir().join(format!("kt-watch-{}.log", std::process::id()));
    let watch = AddrWatch::start(ns.name(), &log);
    assert!(watch.deletions().is_empty());
    ns.addr_add("kt-d", "10.202.0.5/24");
    ns.exec(&["ip", "addr", "del", "10.202.0.5/24", "dev", "kt-d"]);
    // No wait needed: deletions() syncs with a marker first.
    let d = watch.deletions();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].contains("10.202.0.5/24"), "{d:?}");
    drop(watch);
    std::fs::remove_file(&log).unwrap();
}

#[test]
fn in_netns_runs_on_a_thread_there_and_run_in_netns_is_private() {
    let ns = Netns::add_unique("ktn");
    ns.exec(&[
        "ip", "link", "add", "kt-only", "type", "veth", "peer", "name", "kt-peer",
    ]);
    let name = ns.name().to_owned();
    let seen = in_netns(&name, || mirage_testkit::cmd::ip(&["link", "show", "kt-only"]));
    assert!(seen.contains("kt-only"));
    assert!(
        !Command::new("ip")
            .args(["link", "show", "kt-only"])
            .output()
            .unwrap()
            .status
            .success(),
        "the test thread moved"
    );
    let r = std::panic::catch_unwind(|| in_netns(&name, || panic!("inside")));
    assert!(r.is_err(), "a panic inside must fail the caller");
    // Unique names: a link leaked into the host by a broken kit must not
    // fail the next run.
    let x = format!("kx{}", mirage_testkit::netns::unique_id().0);
    let inside = x.clone();
    run_in_netns(BOUND, move || {
        veth_pair(&inside, &format!("{inside}p"));
        mirage_testkit::cmd::ip(&["link", "show", &inside]);
    });
    assert!(
        !Command::new("ip")
            .args(["link", "show", &x])
            .output()
            .unwrap()
            .status
            .success(),
        "{x} is in the test's namespace"
    );
}

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// An Ethernet ARP frame (RFC 826) for 10.203.0.x addresses.
fn arp(op: u16, src: [u8; 6], dst: [u8; 6], sender: u8, target: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src);
    f.extend_from_slice(&[10, 203, 0, sender]);
    f.extend_from_slice(&if op == ARP_REPLY { dst } else { [0; 6] });
    f.extend_from_slice(&[10, 203, 0, target]);
    f
}

/// (op, sender host, sender MAC) of an ARP frame.
fn parse_arp(f: &[u8]) -> Option<(u16, u8, [u8; 6])> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] {
        return None;
    }
    Some((
        u16::from_be_bytes([f[20], f[21]]),
        f[31],
        f[22..28].try_into().unwrap(),
    ))
}

#[test]
fn raw_server_answers_each_frame_with_its_script_and_floods() {
    let a = Netns::add_unique("ktr");
    let b = Netns::add_unique("ktq");
    veth(&a, "kt-s", &b, "kt-c");
    let spec = |ns: &Netns, ifname: &str| Spec {
        ns: ns.name().to_owned(),
        ifname: ifname.to_owned(),
        open: |index| PacketSocket::open_server(index),
    };
    // The server: answers each ARP request for .1 with a reply, twice.
    let server = RawServer::start(
        spec(&a, "kt-s"),
        |link: Link| Ok(link.mac),
        |f: &[u8], _before: &[(u16, u8, [u8; 6])]| parse_arp(f).filter(|m| m.0 == ARP_REQUEST),
        |mac: &[u8; 6], m: &(u16, u8, [u8; 6])| {
            let reply = arp(ARP_REPLY, *mac, m.2, 1, m.1);
            vec![reply.clone(), reply]
        },
    );
    // The peer: records replies, answers nothing.
    let peer = RawServer::start(
        spec(&b, "kt-c"),
        |link: Link| Ok(link.mac),
        |f: &[u8], _: &[(u16, u8, [u8; 6])]| parse_arp(f).filter(|m| m.0 == ARP_REPLY),
        |_: &[u8; 6], _: &(u16, u8, [u8; 6])| Vec::new(),
    );
    let (server_mac, peer_mac) = (*server.ctx(), *peer.ctx());
    peer.inject(&[arp(ARP_REQUEST, peer_mac, [0xff; 6], 2, 1)]);
    let got = peer.wait_for(BOUND, "ARP reply", |m| m.0 == ARP_REPLY);
    assert_eq!(got, (ARP_REPLY, 1, server_mac));
    wait_until(BOUND, || peer.seen().len() == 2);
    assert_eq!(server.seen(), vec![(ARP_REQUEST, 2, peer_mac)]);
    assert_eq!(server.sent(), 2);
    assert_eq!(peer.sent(), 1);

    // A flood goes out at about the rate asked; every frame is answered.
    let n = peer.flood(500, Duration::from_millis(400), |i| {
        arp(ARP_REQUEST, peer_mac, [0xff; 6], 10 + (i % 200) as u8, 1)
    });
    assert!(n > 0 && n <= 200, "{n} frames at 500/s for 0.4 s");
    wait_until(BOUND, || {
        server.count_where(|m| m.0 == ARP_REQUEST) == 1 + n as usize
    });
}
