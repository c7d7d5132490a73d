//! A link-local IPv6 upstream with its interface (field note 19): two
//! namespaces joined by a veth pair with link-local addresses only, a
//! scripted upstream (`mirage_testkit::dns`) on the peer's fe80 address,
//! mirage-dns asked through 127.0.0.53. Needs root (namespaces, port 53).

mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use dns_wire::{RData, Rcode, Type};
use mirage_testkit::dns::{DnsServer, Query, Reply};
use mirage_testkit::netns::{Netns, in_netns, unique_id, veth};
use mirage_testkit::process::Procs;
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use support::{Fixture, ask_udp, query};

/// The interface index of `dev` in `ns` (`ip -o link show`: "N: dev@...").
fn index_of(ns: &Netns, dev: &str) -> u32 {
    let out = ns.output(&["ip", "-o", "link", "show", dev]);
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no index for {dev}: {out:?}"))
}

#[test]
fn a_link_local_upstream_with_its_interface_answers_and_one_without_is_refused() {
    let (id, _) = unique_id();
    let ours = Netns::add_unique("dnsl");
    let theirs = Netns::add_unique("dnsu");
    veth(&ours, "up0", &theirs, "dn0");
    // Link-local addresses only (nodad: usable at once).
    ours.exec(&["ip", "-6", "addr", "add", "fe80::2/64", "dev", "up0", "nodad"]);
    theirs.exec(&["ip", "-6", "addr", "add", "fe80::1/64", "dev", "dn0", "nodad"]);
    let global = ours.output(&["ip", "-6", "addr", "show", "scope", "global"]);
    assert!(global.trim().is_empty(), "no global address: {global}");
    let server_addr = SocketAddr::V6(SocketAddrV6::new(
        "fe80::1".parse().unwrap(),
        53,
        0,
        index_of(&theirs, "dn0"),
    ));
    let server = DnsServer::start(
        theirs.name(),
        server_addr,
        &[],
        Box::new(|q: &Query| vec![Reply::message(&q.answer_a(300, Ipv4Addr::new(192, 0, 2, 77)))]),
    );
    let dir = TestDir::new("mirage-dns-linklocal", &id);
    let mut f = Fixture {
        procs: Procs::new(),
        ns: ours,
        dir,
        sandbox: Some("seccomp"),
    };

    // Without its interface a link-local upstream is refused at start,
    // on the command line and in the config file; so is an unknown one.
    for (config, args, says) in [
        (
            "",
            &["--upstream", "fe80::1"][..],
            "link-local address: give its interface",
        ),
        (
            "upstreams = [\"[fe80::1]:53\"]\n",
            &[][..],
            "link-local address: give its interface",
        ),
        (
            "",
            &["--upstream", "fe80::1%nosuch0"][..],
            "no interface \"nosuch0\"",
        ),
    ] {
        let before = f.log().len();
        let idx = f.spawn_dns_with(&[], config, args);
        let status = f
            .procs
            .wait_exit(idx, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{args:?} {config:?}: still running"));
        assert!(!status.success(), "{args:?} {config:?}: {status:?}");
        let log = f.log();
        assert!(log[before..].contains(says), "{args:?} {config:?}: {log}");
    }

    f.start_dns_with("", &["--upstream", "fe80::1%up0"]);
    let got = {
        let q = query(1, "ll.test", Type::A, true);
        in_netns(f.ns.name(), move || ask_udp("127.0.0.53:53".parse().unwrap(), &q))
            .expect("an answer through the link-local upstream")
    };
    assert_eq!(got.rcode(), Rcode::NOERROR);
    assert_eq!(got.answers[0].data, RData::A(Ipv4Addr::new(192, 0, 2, 77)));
    // It came over the veth, from our link-local address.
    let seen = server.seen();
    assert_eq!(
        seen.len(),
        1,
        "{:?}",
        seen.iter().map(|q| q.from).collect::<Vec<_>>()
    );
    match seen[0].from {
        SocketAddr::V6(from) => assert!(from.ip().is_unicast_link_local(), "{from}"),
        other => panic!("{other}"),
    }
    let v = wait_some(Duration::from_secs(10), "status.json", || f.status(), || f.log());
    assert_eq!(v["upstreams"], serde_json::json!(["[fe80::1%up0]:53"]), "{v}");
    let uplink = std::fs::read_to_string(f.dir.join("run/resolv.conf")).unwrap();
    assert!(uplink.lines().any(|l| l == "nameserver fe80::1%up0"), "{uplink}");
}
