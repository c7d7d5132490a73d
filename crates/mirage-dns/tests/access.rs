//! Who mirage-dns answers (docs/dns.md, "The network role's policy"): the
//! access list (`allow`, by default loopback and the listen addresses), a
//! rate per client address (`[limits] client_per_second`,
//! `client_burst`), and the TCP client limits (connections, idle timeout,
//! pipelining), against the real binary and unbound in a network
//! namespace the test creates. Needs root and unbound
//! (scripts/install-deps.sh); CI runs as root.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use dns_wire::{Message, Rcode, Type};
use mirage_testkit::netns::in_netns;
use mirage_testkit::wait::wait_some;
use support::{Fixture, UPSTREAM_PORT, ask_tcp, ask_udp, query, with_unbound};

/// An interface with two of the host's addresses: mirage-dns listens
/// on the first; the second is the host's too, but not a listen address.
const LISTEN: &str = "10.53.0.1";
const OTHER: &str = "10.53.0.2";

fn add_addresses(f: &Fixture) {
    // A veth pair inside the namespace (no dummy module everywhere).
    f.ns.exec(&["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    f.ns.addr_add("d0", &format!("{LISTEN}/24"));
    f.ns.addr_add("d0", &format!("{OTHER}/24"));
    f.ns.link_up("d0");
    f.ns.link_up("d1");
}

fn wait_status(f: &Fixture, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_some(
        Duration::from_secs(20),
        what,
        || f.status().filter(|v| ok(v)),
        || format!("{:?}\n{}", f.status(), f.log()),
    )
}

/// A UDP client bound to `from`, asking `to` once: the socket, to read
/// the answer (or its absence) later.
fn send_from(from: &str, to: SocketAddr, data: &[u8]) -> UdpSocket {
    let s = UdpSocket::bind(format!("{from}:0")).unwrap();
    s.send_to(data, to).unwrap();
    s
}

#[test]
fn clients_outside_the_access_list_are_dropped_and_a_flooding_client_is_rate_limited() {
    let mut f = with_unbound("dnsa");
    add_addresses(&f);
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    f.start_dns_with(
        "[limits]\nclient_per_second = 5\nclient_burst = 10\nclient_rate_loopback = true\n",
        &[
            "--listen",
            "127.0.0.53",
            "--listen",
            LISTEN,
            "--upstream",
            &upstream,
        ],
    );
    let v = f.status().unwrap_or_default();
    let ns = f.ns.name().to_owned();
    let listen: SocketAddr = format!("{LISTEN}:53").parse().unwrap();
    let stub: SocketAddr = "127.0.0.53:53".parse().unwrap();

    // From the host's other address, not in the default list: the query
    // is dropped unanswered and counted.
    let outsider = in_netns(&ns, move || {
        send_from(OTHER, listen, &query(0x10, "a.test", Type::A, false))
    });
    let v2 = wait_status(&f, "a query not allowed", |v| {
        v["network"]["dropped"]["not-allowed"].as_u64() >= Some(1)
    });
    assert_eq!(
        v2["allow"],
        serde_json::json!(["127.0.0.0/8", "::1/128", format!("{LISTEN}/32")]),
        "{v} {v2}"
    );
    // From the listen address itself, and from loopback: answered (after
    // the outsider's query was read, so the outsider would have had its
    // answer by now).
    let answered = in_netns(&ns, move || {
        let s = send_from(LISTEN, listen, &query(0x11, "a.test", Type::A, false));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).expect("the listen address is answered");
        let m = Message::parse(&buf[..n]).unwrap();
        let lo = ask_udp(stub, &query(0x12, "a.test", Type::A, false)).expect("loopback is answered");
        outsider.set_nonblocking(true).unwrap();
        let nothing = outsider.recv(&mut buf).map(|_| ()).map_err(|e| e.kind());
        (m.header.id, m.rcode(), lo.rcode(), nothing)
    });
    assert_eq!(
        answered,
        (0x11, Rcode::NOERROR, Rcode::NOERROR, Err(ErrorKind::WouldBlock))
    );
    // Over TCP the outsider's connection is closed unread.
    let closed = in_netns(&ns, move || {
        let mut s = socket_from(OTHER, listen).expect("the kernel accepts the connection");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&[0, 12, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    });
    assert!(closed, "the outsider's TCP connection must be closed unanswered");
    let v = wait_status(&f, "the TCP outsider counted", |v| {
        v["network"]["dropped"]["not-allowed"].as_u64() >= Some(2)
    });
    assert_eq!(v["network"]["dropped"]["rate-limited"], 0, "{v}");

    // A flood from 127.0.0.1: a burst of 10 at 5 a second, the rest
    // dropped and counted; another client is still answered meanwhile.
    const FLOOD: u16 = 200;
    let (answers, other) = in_netns(&ns, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for id in 0..FLOOD {
            s.send_to(&query(0x1000 + id, "a.test", Type::A, false), stub)
                .unwrap();
        }
        // Another loopback address: another client, its own bucket (one
        // query, no retry: a retry would be a second query).
        let o = send_from("127.0.0.2", stub, &query(0x2000, "a.test", Type::A, false));
        o.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1500];
        let other = o
            .recv(&mut buf)
            .ok()
            .map(|n| Message::parse(&buf[..n]).unwrap().rcode());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1500];
        let mut answers = 0u16;
        while s.recv(&mut buf).is_ok() {
            answers += 1;
        }
        (answers, other)
    });
    assert_eq!(other, Some(Rcode::NOERROR), "another client is served");
    assert!(answers < FLOOD, "{answers} of {FLOOD} answered");
    let v = wait_status(&f, "the flood counted", |v| {
        v["network"]["dropped"]["rate-limited"].as_u64() >= Some(1)
    });
    let limited = v["network"]["dropped"]["rate-limited"].as_u64().unwrap();
    assert_eq!(
        limited + u64::from(answers),
        u64::from(FLOOD),
        "every flood query answered or counted: {v}"
    );
    let metrics = std::fs::read_to_string(f.dir.join("run/metrics.prom")).unwrap();
    assert!(
        metrics.contains(&format!(
            "mirage_dns_clients_dropped_total{{reason=\"rate-limited\"}} {limited}"
        )),
        "{metrics}"
    );
}

/// A TCP connection from `from` to `to` (std cannot bind a TCP client's
/// source address).
fn socket_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    bind(&fd, &local)?;
    connect(&fd, &to)?;
    Ok(TcpStream::from(fd))
}

#[test]
fn tcp_clients_are_bounded_in_number_idle_time_and_pipelining() {
    let mut f = with_unbound("dnst");
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    f.start_dns_with(
        "[limits]\ntcp_clients = 2\ntcp_idle_ms = 3000\ntcp_pipeline = 4\n",
        &["--listen", "127.0.0.53", "--upstream", &upstream],
    );
    let ns = f.ns.name().to_owned();
    let stub: SocketAddr = "127.0.0.53:53".parse().unwrap();
    // Six queries pipelined on one connection, over the pipeline limit of
    // four: all answered (the rest wait in the socket, unread, until
    // answers free room).
    let answers = in_netns(&ns, move || {
        let qs: Vec<Vec<u8>> = (0..6)
            .map(|i| query(0x300 + i, "a.test", Type::A, false))
            .collect();
        let mut ids: Vec<u16> = ask_tcp(stub, &qs).iter().map(|m| m.header.id).collect();
        ids.sort_unstable();
        ids
    });
    assert_eq!(answers, (0x300..0x306).collect::<Vec<u16>>());
    // Two connections held open: a third is closed at once.
    let third = in_netns(&ns, move || {
        let a = TcpStream::connect(stub).unwrap();
        let b = TcpStream::connect(stub).unwrap();
        let mut c = TcpStream::connect(stub).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let closed = match c.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut,
            Ok(_) => false,
        };
        // The held ones are closed once idle.
        let mut idle = Vec::new();
        for mut s in [a, b] {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            idle.push(matches!(s.read(&mut buf), Ok(0)));
        }
        (closed, idle)
    });
    assert_eq!(third, (true, vec![true, true]), "{}", f.log());
    let v = wait_status(&f, "the TCP limits counted", |v| {
        v["network"]["tcp_over_limit"].as_u64() >= Some(1)
            && v["network"]["tcp_closed_idle"].as_u64() >= Some(2)
    });
    assert_eq!(v["network"]["dropped"]["not-allowed"], 0, "{v}");
}
