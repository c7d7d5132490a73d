//! A compromised engine: the test stands where the supervisor forwards the
//! engine's messages, starts the real actuator and network roles (the real
//! binary, real sandbox, real fds) and sends them everything a hostile
//! engine could ask for. Every request must be refused, the host left
//! untouched, and both roles must keep running.
//! Needs root (namespaces, raw sockets, privilege drop); CI runs as root.

mod support;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::Duration;

use mirage_ipc::{
    FromActuator, FromNetwork, INFINITE_LEASE, Instant, Lease, Outcome, Refusal, Route, ToActuator, ToNetwork,
};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::netlink::{LinkMonitor, Rtnl};
use mirage_sdk::packet::PacketSocket;
use mirage_sdk::spawn::{RoleChild, spawn};
use support::{CLIENT_IF, Net, bin};

/// Bound on one answer from a role. The first answer includes the role's
/// start-up (exec of the test build, sandbox set-up), which takes far longer
/// on a loaded CI machine than on an idle one; answers come as soon as they
/// are ready, so a generous bound costs nothing when all is well.
const ANSWER_MS: u64 = 20_000;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn lease(net: &Net) -> Lease {
    Lease {
        address: ip(&format!("{}.77", net.subnet)),
        prefix_len: 24,
        server_id: ip(&net.server_ip),
        routes: vec![Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: ip(&net.server_ip),
        }],
        dns_servers: vec![ip(&net.server_ip)],
        ntp_servers: vec![],
        domain_name: None,
        search: vec![],
        hostname: None,
        mtu: None,
        lease_secs: 600,
        renew_secs: 300,
        rebind_secs: 525,
        acquired_at: Instant(0),
    }
}

/// Run `body` on a thread that lives in the client namespace, so the
/// sockets it opens and the roles it starts are there too (a role dies with
/// the thread that spawned it, so the whole test runs on that thread).
fn in_client_ns(net: &Net, body: impl FnOnce() + Send + 'static) {
    let ns = std::fs::File::open(format!("/run/netns/{}", net.client_ns)).unwrap();
    let t = std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        body();
    });
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

fn role_args(role: &str, ifindex: u32, mac: [u8; 6]) -> Vec<String> {
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    [
        "role",
        role,
        "--interface",
        CLIENT_IF,
        "--ifindex",
        &ifindex.to_string(),
        "--mac",
        &mac,
        "--uid",
        &role_id(role),
        "--gid",
        &role_id(role),
        "--sandbox",
        "seccomp",
        "--log-level",
        "debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The ids the supervisor gives `role` by default.
fn role_id(role: &str) -> String {
    match role {
        "network" => support::NETWORK_ID,
        "engine" => support::ENGINE_ID,
        _ => support::ACTUATOR_ID,
    }
    .to_string()
}

fn recv_within<T: serde::de::DeserializeOwned>(chan: &Channel, ms: u64) -> Option<T> {
    let ready = wait_readable(&[chan.as_fd()], Some(ms)).unwrap();
    if !ready[0] {
        return None;
    }
    chan.recv::<T>().expect("role sent a bad message")
}

fn alive(role: &mut RoleChild) -> bool {
    role.try_wait().unwrap().is_none()
}

#[test]
fn actuator_refuses_every_out_of_policy_intent() {
    let net = Net::new();
    let dir = net.dir.clone();
    let good = lease(&net);
    let server = net.server_ip.clone();
    let client_ns = net.client_ns.clone();
    in_client_ns(&net, move || {
        let mut rtnl = Rtnl::open().unwrap();
        let link = rtnl.link_by_name(CLIENT_IF).unwrap();
        rtnl.set_link_up(link.index).unwrap();
        let monitor = LinkMonitor::open(link.index).unwrap();
        for d in ["state", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            let id = support::ACTUATOR_ID;
            std::os::unix::fs::chown(dir.join(d), Some(id), Some(id)).unwrap();
        }
        let state = mirage_sdk::files::open_dir(&dir.join("state")).unwrap();
        let run = mirage_sdk::files::open_dir(&dir.join("run")).unwrap();
        std::fs::write(dir.join("resolv.conf"), "# before\n").unwrap();
        let resolv_dir = mirage_sdk::files::open_dir(&dir).unwrap();
        let resolv_file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("resolv.conf"))
            .unwrap();
        let (ours, theirs) = Channel::pair().unwrap();
        let mut args = role_args("actuator", link.index, link.mac.unwrap());
        args.extend(["--resolv-name".to_string(), "resolv.conf".to_string()]);
        let fds = [
            theirs.as_fd(),
            rtnl.as_fd(),
            monitor.as_fd(),
            state.as_fd(),
            run.as_fd(),
            resolv_dir.as_fd(),
            resolv_file.as_fd(),
        ];
        let mut actuator = spawn(Some(std::path::Path::new(bin())), &args, &fds).unwrap();
        drop(theirs);

        let ask = |msg: ToActuator| -> Outcome {
            ours.send(&msg).unwrap();
            loop {
                match recv_within::<FromActuator>(&ours, ANSWER_MS).expect("no answer from the actuator") {
                    FromActuator::Result { outcome, .. } => return outcome,
                    FromActuator::LinkUp | FromActuator::LinkDown => continue,
                }
            }
        };
        let apply = |l: &Lease| ToActuator::Apply {
            lease: l.clone(),
            valid_secs: 300,
        };
        let refused = |o: Outcome| match o {
            Outcome::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        };

        let addresses = |rtnl: &mut Rtnl| -> Vec<String> {
            rtnl.addresses(link.index)
                .unwrap()
                .iter()
                .map(|a| format!("{}/{}", a.addr, a.prefix_len))
                .collect()
        };
        let with = |f: &dyn Fn(&mut Lease)| {
            let mut l = good.clone();
            f(&mut l);
            l
        };
        let cases: Vec<(&str, ToActuator, Refusal)> = vec![
            (
                "loopback 127.0.0.1/8",
                apply(&with(&|l| {
                    l.address = ip("127.0.0.1");
                    l.prefix_len = 8;
                })),
                Refusal::AddressLoopback,
            ),
            (
                "multicast 224.0.0.1",
                apply(&with(&|l| l.address = ip("224.0.0.1"))),
                Refusal::AddressMulticast,
            ),
            (
                "0.0.0.0",
                apply(&with(&|l| l.address = ip("0.0.0.0"))),
                Refusal::AddressUnspecified,
            ),
            (
                "limited broadcast",
                apply(&with(&|l| l.address = ip("255.255.255.255"))),
                Refusal::AddressBroadcast,
            ),
            (
                "default route via an off-link gateway",
                apply(&with(&|l| l.routes[0].gateway = ip("10.250.0.1"))),
                Refusal::GatewayNotOnLink,
            ),
            (
                "100 routes",
                apply(&with(&|l| {
                    l.routes = (0..100u8)
                        .map(|i| Route {
                            destination: Ipv4Addr::new(10, 200, i, 0),
                            prefix_len: 24,
                            gateway: ip(&server),
                        })
                        .collect()
                })),
                Refusal::TooManyRoutes,
            ),
            (
                "route to loopback",
                apply(&with(&|l| {
                    l.routes.push(Route {
                        destination: ip("127.0.0.0"),
                        prefix_len: 8,
                        gateway: ip(&server),
                    })
                })),
                Refusal::BadRoute,
            ),
            (
                "TunnelVision: 0.0.0.0/1 beside the default route",
                apply(&with(&|l| {
                    l.routes.push(Route {
                        destination: ip("0.0.0.0"),
                        prefix_len: 1,
                        gateway: ip(&server),
                    })
                })),
                Refusal::RouteTooShort,
            ),
            (
                "TunnelVision: a /2 subnet",
                apply(&with(&|l| l.prefix_len = 2)),
                Refusal::SubnetTooLarge,
            ),
            (
                "route to multicast 224/4",
                apply(&with(&|l| {
                    l.routes.push(Route {
                        destination: ip("224.0.0.0"),
                        prefix_len: 4,
                        gateway: ip(&server),
                    })
                })),
                Refusal::BadRoute,
            ),
            (
                "route to 255.255.255.255/32",
                apply(&with(&|l| {
                    l.routes.push(Route {
                        destination: ip("255.255.255.255"),
                        prefix_len: 32,
                        gateway: ip(&server),
                    })
                })),
                Refusal::BadRoute,
            ),
            (
                "gateway made on-link by an on-link default route",
                apply(&with(&|l| {
                    l.routes = vec![
                        Route {
                            destination: Ipv4Addr::UNSPECIFIED,
                            prefix_len: 0,
                            gateway: Ipv4Addr::UNSPECIFIED,
                        },
                        Route {
                            destination: ip("198.51.100.0"),
                            prefix_len: 24,
                            gateway: ip("203.0.113.1"),
                        },
                    ]
                })),
                Refusal::GatewayNotOnLink,
            ),
            (
                "our address is the server's",
                apply(&with(&|l| l.address = ip(&server))),
                Refusal::AddressIsServer,
            ),
            (
                "our address is the gateway's",
                apply(&with(&|l| l.routes[0].gateway = l.address)),
                Refusal::AddressIsGateway,
            ),
            (
                "resolv.conf injection",
                apply(&with(&|l| l.search = vec!["x\nnameserver 6.6.6.6".into()])),
                Refusal::BadDomainName,
            ),
            (
                "huge resolv.conf (many long search domains)",
                apply(&with(&|l| {
                    l.search = (0..20)
                        .map(|i| format!("{}{i}.example", "a".repeat(50)))
                        .collect()
                })),
                Refusal::TooManySearchDomains,
            ),
            (
                "100 DNS servers",
                apply(&with(&|l| l.dns_servers = vec![ip(&server); 100])),
                Refusal::TooManyDnsServers,
            ),
            ("MTU 67", apply(&with(&|l| l.mtu = Some(67))), Refusal::BadMtu),
            (
                "lifetime beyond the lease",
                ToActuator::Apply {
                    lease: good.clone(),
                    valid_secs: 601,
                },
                Refusal::BadLeaseTimes,
            ),
            (
                "zero lifetime",
                ToActuator::Apply {
                    lease: good.clone(),
                    valid_secs: 0,
                },
                Refusal::BadLeaseTimes,
            ),
            (
                "remove a lease that is not in force",
                ToActuator::Remove {
                    lease: with(&|l| l.address = ip(&server)),
                },
                Refusal::NotOurLease,
            ),
            (
                "persist a refused lease",
                ToActuator::Persist(Some(with(&|l| l.address = ip("127.0.0.1")))),
                Refusal::AddressLoopback,
            ),
        ];
        for (name, msg, want) in cases {
            assert_eq!(refused(ask(msg)), want, "{name}");
            assert!(addresses(&mut rtnl).is_empty(), "{name} changed the interface");
            assert!(alive(&mut actuator), "the actuator died on {name}");
        }
        assert!(
            rtnl.routes(link.index)
                .unwrap()
                .iter()
                .all(|r| r.gateway.is_unspecified())
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
            "# before\n"
        );
        assert!(!dir.join("state").join(format!("lease-{CLIENT_IF}.json")).exists());

        // The policy is not just "refuse everything": the legitimate lease
        // goes through, with its kernel lifetime, and a Remove of it works.
        assert_eq!(ask(apply(&good)), Outcome::Done);
        assert_eq!(addresses(&mut rtnl), vec![format!("{}/24", good.address)]);
        assert!(
            std::fs::read_to_string(dir.join("resolv.conf"))
                .unwrap()
                .contains(&format!("nameserver {server}"))
        );
        let infinite = Lease {
            lease_secs: INFINITE_LEASE,
            ..good.clone()
        };
        assert_eq!(ask(ToActuator::Persist(Some(infinite))), Outcome::Done);
        assert_eq!(ask(ToActuator::Remove { lease: good.clone() }), Outcome::Done);
        assert!(addresses(&mut rtnl).is_empty());
        assert!(alive(&mut actuator));

        // The MTU a lease changed is put back when no lease asks for it:
        // by a lease without option 26, and by RemoveLease.
        let mtu = |rtnl: &mut Rtnl| rtnl.link(link.index).unwrap().mtu;
        let before = mtu(&mut rtnl);
        let jumbo = Lease {
            mtu: Some(1400),
            ..good.clone()
        };
        assert_eq!(ask(apply(&jumbo)), Outcome::Done);
        assert_eq!(mtu(&mut rtnl), 1400);
        assert_eq!(ask(apply(&good)), Outcome::Done);
        assert_eq!(mtu(&mut rtnl), before);
        assert_eq!(ask(apply(&jumbo)), Outcome::Done);
        assert_eq!(
            ask(apply(&Lease {
                mtu: Some(1300),
                ..good.clone()
            })),
            Outcome::Done
        );
        assert_eq!(mtu(&mut rtnl), 1300);
        assert_eq!(ask(ToActuator::Remove { lease: good.clone() }), Outcome::Done);
        assert_eq!(mtu(&mut rtnl), before);
        assert!(addresses(&mut rtnl).is_empty());

        // A message over the size cap is not an intent at all: the actuator
        // treats its peer as broken and exits (the supervisor never forwards
        // such a thing; it drops the engine that sent it).
        let _ = ours.send_raw(&vec![0u8; 64 * 1024]);
        let deadline = std::time::Instant::now() + Duration::from_millis(ANSWER_MS);
        while alive(&mut actuator) {
            assert!(
                std::time::Instant::now() < deadline,
                "actuator kept an oversized message"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = client_ns;
    });
}

#[test]
fn network_role_refuses_frames_that_are_not_ours() {
    let net = Net::new();
    in_client_ns(&net, move || {
        let mut rtnl = Rtnl::open().unwrap();
        let link = rtnl.link_by_name(CLIENT_IF).unwrap();
        rtnl.set_link_up(link.index).unwrap();
        let mac = link.mac.unwrap();
        let sock = PacketSocket::open(link.index, true).unwrap();
        let (ours, theirs) = Channel::pair().unwrap();
        let args = role_args("network", link.index, mac);
        let mut network = spawn(
            Some(std::path::Path::new(bin())),
            &args,
            &[theirs.as_fd(), sock.as_fd()],
        )
        .unwrap();
        drop(theirs);
        drop(sock);

        let udp = |src_mac: [u8; 6], sport: u16, dport: u16| {
            dhcp_engine::wire::frame::build_udp_frame(
                src_mac,
                [0xff; 6],
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                sport,
                dport,
                &[0u8; 300],
            )
        };
        let mut foreign = mac;
        foreign[5] ^= 0xff;
        let mut tcp = udp(mac, 68, 67);
        tcp[23] = 6;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("foreign source MAC", udp(foreign, 68, 67)),
            ("UDP to port 53", udp(mac, 68, 53)),
            ("UDP from port 5353", udp(mac, 5353, 67)),
            ("TCP", tcp),
            ("oversized", vec![0u8; 2000]),
            ("runt", vec![0u8; 20]),
        ];
        for (name, frame) in cases {
            ours.send(&ToNetwork::Transmit(frame)).unwrap();
            match recv_within::<FromNetwork>(&ours, ANSWER_MS) {
                Some(FromNetwork::Refused { .. }) => {}
                other => panic!("{name}: expected a refusal, got {other:?}"),
            }
            assert!(alive(&mut network), "the network role died on {name}");
        }
        // A legitimate frame is sent without a word back.
        ours.send(&ToNetwork::Transmit(udp(mac, 68, 67))).unwrap();
        match recv_within::<FromNetwork>(&ours, 300) {
            None | Some(FromNetwork::Frame { .. }) => {}
            Some(other) => panic!("a good frame was refused: {other:?}"),
        }
        assert!(alive(&mut network));
        let _ = network.kill();
    });
}

/// The route settings as the actuator enforces them on its own: with
/// `--ignore-classless-routes` only option 3's shape gets through, and
/// `--route-table` puts the routes in that table, not the main one.
#[test]
fn actuator_enforces_ignored_121_and_installs_routes_in_their_table() {
    let net = Net::new();
    let dir = net.dir.clone();
    let good = lease(&net);
    let server = net.server_ip.clone();
    in_client_ns(&net, move || {
        let mut rtnl = Rtnl::open().unwrap();
        let link = rtnl.link_by_name(CLIENT_IF).unwrap();
        rtnl.set_link_up(link.index).unwrap();
        let monitor = LinkMonitor::open(link.index).unwrap();
        for d in ["state", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            std::os::unix::fs::chown(dir.join(d), Some(65534), Some(65534)).unwrap();
        }
        let state = mirage_sdk::files::open_dir(&dir.join("state")).unwrap();
        let run = mirage_sdk::files::open_dir(&dir.join("run")).unwrap();
        let (ours, theirs) = Channel::pair().unwrap();
        let mut args = role_args("actuator", link.index, link.mac.unwrap());
        args.extend(
            ["--ignore-classless-routes", "--route-table", "100"]
                .iter()
                .map(|s| s.to_string()),
        );
        let fds = [
            theirs.as_fd(),
            rtnl.as_fd(),
            monitor.as_fd(),
            state.as_fd(),
            run.as_fd(),
        ];
        let mut actuator = spawn(Some(std::path::Path::new(bin())), &args, &fds).unwrap();
        drop(theirs);
        let ask = |msg: ToActuator| -> Outcome {
            ours.send(&msg).unwrap();
            loop {
                match recv_within::<FromActuator>(&ours, ANSWER_MS).expect("no answer from the actuator") {
                    FromActuator::Result { outcome, .. } => return outcome,
                    FromActuator::LinkUp | FromActuator::LinkDown => continue,
                }
            }
        };
        let apply = |l: &Lease| ToActuator::Apply {
            lease: l.clone(),
            valid_secs: 300,
        };
        let corp = Route {
            destination: ip("172.16.0.0"),
            prefix_len: 12,
            gateway: ip(&server),
        };
        let with_121 = Lease {
            routes: vec![corp, good.routes[0]],
            ..good.clone()
        };
        assert_eq!(
            ask(apply(&with_121)),
            Outcome::Refused(Refusal::ClasslessRouteIgnored)
        );
        assert!(rtnl.addresses(link.index).unwrap().is_empty());
        assert!(alive(&mut actuator));

        assert_eq!(ask(apply(&good)), Outcome::Done);
        assert_eq!(rtnl.routes_in(100, link.index).unwrap(), good.routes);
        assert!(
            !rtnl.routes(link.index).unwrap().contains(&good.routes[0]),
            "the default route went to the main table"
        );
        assert_eq!(ask(ToActuator::Remove { lease: good.clone() }), Outcome::Done);
        assert!(rtnl.routes_in(100, link.index).unwrap().is_empty());
        assert!(alive(&mut actuator));
    });
}
