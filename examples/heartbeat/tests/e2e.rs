//! mirage-heartbeat end to end: the real binary in a network namespace of
//! its own, pinging a UDP echo peer on that namespace's loopback. Needs
//! root (namespaces, the roles' privilege drop); CI runs as root.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{Netns, enter, unique_id};
use mirage_testkit::process::Procs;
use mirage_testkit::procfs::{ProcStatus, role_pid};
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;

const PORT: u16 = 7070;

/// A UDP peer in `ns` on 127.0.0.1:PORT that answers each datagram with
/// `answer(datagram)`; stops when the returned flag drops.
struct Peer(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Peer {
    fn start(ns: &Netns, answer: fn(&mut [u8])) -> Peer {
        let stop = Arc::new(AtomicBool::new(false));
        let name = ns.name().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let t = std::thread::spawn(move || {
            enter(&name).expect("setns");
            let sock = UdpSocket::bind(("127.0.0.1", PORT)).expect("bind the peer");
            sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    answer(&mut buf[..n]);
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("peer ready");
        Peer(stop, Some(t))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// Fields of the procs, then the directory: dropped in that order.
struct Fixture {
    procs: Procs,
    _peer: Peer,
    _ns: Netns,
    dir: TestDir,
}

fn start(answer: fn(&mut [u8])) -> (Fixture, usize) {
    let (id, _) = unique_id();
    let ns = Netns::add_unique("hb");
    let peer = Peer::start(&ns, answer);
    let dir = TestDir::new("mirage-heartbeat", &id);
    let mut procs = Procs::new();
    let bin = mirage_testkit::service_bin("MIRAGE_HEARTBEAT_BIN", env!("CARGO_BIN_EXE_mirage-heartbeat"));
    let mut cmd = ns.command(bin.to_str().unwrap());
    cmd.args([
        "run",
        "--peer",
        &format!("127.0.0.1:{PORT}"),
        "--period-ms",
        "100",
    ])
    .args(["--config", "/dev/null", "--log-level", "debug", "--run-dir"])
    .arg(dir.join("run"));
    let idx = procs.spawn_logged(cmd, &dir.join("heartbeat.log"));
    let f = Fixture {
        procs,
        _peer: peer,
        _ns: ns,
        dir,
    };
    (f, idx)
}

fn status(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/status.json")).ok()?).ok()
}

/// status.json once `ok` holds for it (bounded wait).
fn status_when(f: &Fixture, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_some(
        Duration::from_secs(20),
        what,
        || status(f.dir.path()).filter(|v| ok(v)),
        || read_lossy(&f.dir.join("heartbeat.log")),
    )
}

#[test]
fn pongs_are_counted_and_the_roles_run_sandboxed() {
    let (mut f, idx) = start(|_| {});
    let v = status_when(&f, "three pongs", |v| v["pongs"].as_u64() >= Some(3));
    assert_eq!(v["refused"], 0, "{v}");
    assert_eq!(v["sandbox"], "seccomp");
    assert!(v["last_rtt_ms"].as_u64().is_some(), "{v}");
    let pid = f.procs.pid(idx);
    for (role, id) in [("engine", 65524), ("network", 65525)] {
        let st = ProcStatus::read(role_pid(pid, role));
        assert_eq!(st.uids(), [id; 4], "{role}");
        assert_eq!(st.gids(), [id; 4], "{role}");
        assert_eq!(st.seccomp(), 2, "{role} runs under its filter");
        assert!(st.no_new_privs(), "{role}");
        assert_eq!(
            st.caps("CapEff") | st.caps("CapPrm") | st.caps("CapBnd"),
            0,
            "{role}"
        );
    }
    let sup = ProcStatus::read(pid);
    assert_eq!(sup.seccomp(), 2, "supervisor");
    // The SDK's supervisor drop: only what starting and stopping roles
    // needs, in every set, bounding set included.
    let keep = mirage_sdk::sandbox::SUPERVISOR_CAPS
        .iter()
        .fold(0u64, |m, c| m | (1 << c.index()));
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(sup.caps(set) & !keep, 0, "supervisor {set}");
    }
    assert_eq!(sup.caps("CapInh"), 0, "supervisor CapInh");
    let metrics = read_lossy(&f.dir.join("run/metrics.prom"));
    assert!(metrics.contains("mirage_heartbeat_pongs_total "), "{metrics}");
    // The status command reads what was published.
    let bin = mirage_testkit::service_bin("MIRAGE_HEARTBEAT_BIN", env!("CARGO_BIN_EXE_mirage-heartbeat"));
    let out = std::process::Command::new(&bin)
        .args(["status", "--run-dir"])
        .arg(f.dir.join("run"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("pongs"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{PORT}")), "{text}");
    // A killed engine is started again, and the pongs go on.
    let before = v["pongs"].as_u64().unwrap();
    let engine = role_pid(pid, "engine");
    mirage_testkit::cmd::run(std::process::Command::new("kill").args(["-9", &engine.to_string()]));
    status_when(&f, "a restarted engine's pongs", |v| {
        v["engine_restarts"] == 1 && v["pongs"].as_u64() > Some(before + 2)
    });
    assert_ne!(role_pid(pid, "engine"), engine);
    // SIGTERM: an orderly stop.
    f.procs.signal(idx, "TERM");
    let st = f.procs.wait_exit(idx, Duration::from_secs(10)).expect("stopped");
    assert!(st.success(), "{st}");
}

#[test]
fn a_peer_that_answers_with_another_id_is_refused_and_counted() {
    let (f, _) = start(|d| {
        if let Some(last) = d.last_mut() {
            *last ^= 1;
        }
    });
    let v = status_when(&f, "three refusals", |v| v["refused"].as_u64() >= Some(3));
    assert_eq!(v["pongs"], 0, "{v}");
    assert!(v["last_rtt_ms"].is_null(), "{v}");
    assert!(v["pings"].as_u64() >= Some(3), "{v}");
    let log = read_lossy(&f.dir.join("heartbeat.log"));
    assert!(log.contains("refused a datagram (wrong-id)"), "{log}");
}

/// The network role's own messages, as the supervisor encodes them (the
/// binary's types are private; postcard encodes by variant order).
#[derive(serde::Serialize)]
enum ToNetwork {
    Send(Vec<u8>),
}
#[derive(serde::Deserialize, Debug, PartialEq)]
enum FromNetwork {
    Datagram(Vec<u8>),
    Refused,
}

#[test]
fn the_network_role_sends_only_pings_at_a_capped_rate() {
    // The compromised-engine pattern: the test is the supervisor of one
    // real network role and sends what a compromised engine could ask for.
    use mirage_testkit::role::{recv_within, start_planned};
    use std::os::fd::AsFd;
    let ns = Netns::add_unique("hbn");
    let bin = mirage_testkit::service_bin("MIRAGE_HEARTBEAT_BIN", env!("CARGO_BIN_EXE_mirage-heartbeat"));
    mirage_testkit::netns::in_netns(ns.name(), move || {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(peer.local_addr().unwrap()).unwrap();
        // The role's own plan, as its supervisor declares it.
        let plan = mirage_heartbeat::plan::network();
        let (ours, mut role) = start_planned(&bin, &plan, &(), None, &[sock.as_fd()]);
        drop(sock);
        let mut buf = [0u8; 64];
        // A ping goes out as it is.
        let ping = b"HB\0\0\0\0\0\0\0\x07".to_vec();
        ours.send(&ToNetwork::Send(ping.clone())).unwrap();
        let (n, from) = peer.recv_from(&mut buf).expect("the ping");
        assert_eq!(&buf[..n], &ping[..]);
        // Anything else is refused and never sent.
        for junk in [b"GET / HTTP/1.0\r\n".to_vec(), b"HB".to_vec(), vec![0; 10]] {
            ours.send(&ToNetwork::Send(junk)).unwrap();
            assert_eq!(
                recv_within::<FromNetwork>(&ours, 5000),
                Some(FromNetwork::Refused)
            );
        }
        // A burst of pings: the cap lets a few through, refuses the rest.
        for _ in 0..20 {
            ours.send(&ToNetwork::Send(ping.clone())).unwrap();
        }
        let mut refused = 0;
        while recv_within::<FromNetwork>(&ours, 500) == Some(FromNetwork::Refused) {
            refused += 1;
        }
        let mut sent = 0;
        while peer.recv_from(&mut buf).is_ok() {
            sent += 1;
        }
        assert_eq!(sent + refused, 20);
        // 5 at once, 25 a second after: a slow machine may refill a few.
        assert!((4..=10).contains(&sent), "{sent} pings of a burst of 20 went out");
        // What the peer sends comes back over the channel.
        peer.send_to(b"pong", from).unwrap();
        assert_eq!(
            recv_within::<FromNetwork>(&ours, 5000),
            Some(FromNetwork::Datagram(b"pong".to_vec()))
        );
        drop(ours);
        mirage_testkit::role::wait_dead(&mut role, Duration::from_secs(10), "network role");
    });
}
