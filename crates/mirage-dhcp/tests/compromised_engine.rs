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

use dhcp_engine::wire::dhcp::{Message, MessageType, Op, Options};
use dhcp_engine::wire::frame::{ArpOp, ArpPacket, Inbound, build_arp_frame, build_udp_frame, parse_frame};
use mirage_dhcp::plan::{self, RoleSettings};
use mirage_ipc::{
    BoundAddress, FromActuator, FromNetwork, INFINITE_LEASE, Instant, Lease, NetworkBinding, Outcome,
    Refusal, Route, ToActuator, ToNetwork,
};
use mirage_sdk::channel::Channel;
use mirage_sdk::netlink::{LinkMonitor, Rtnl};
use mirage_sdk::packet::PacketSocket;
use mirage_sdk::spawn::RoleChild;
use mirage_testkit::raw::{RawServer, Spec};
use mirage_testkit::role::{alive, recv_within, start_planned, wait_dead};
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
    mirage_testkit::netns::in_netns(&net.client_ns, body)
}

/// The settings every DHCP role's hello carries for the client interface,
/// with the default limits.
fn settings(ifindex: u32, mac: [u8; 6]) -> RoleSettings {
    RoleSettings::new(CLIENT_IF, ifindex, mac, Default::default())
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
        let mut config = settings(link.index, link.mac.unwrap());
        config.resolv_name = Some("resolv.conf".into());
        let fds = [
            rtnl.as_fd(),
            monitor.as_fd(),
            state.as_fd(),
            run.as_fd(),
            resolv_dir.as_fd(),
            resolv_file.as_fd(),
        ];
        let actuator_plan = plan::actuator(support::ACTUATOR_ID, support::ACTUATOR_ID, true);
        let (ours, mut actuator) =
            start_planned(std::path::Path::new(bin()), &actuator_plan, &config, None, &fds);

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
        wait_dead(
            &mut actuator,
            Duration::from_millis(ANSWER_MS),
            "actuator kept an oversized message",
        );
        let _ = client_ns;
    });
}

// ------------------------------------------------------------ network role

/// A DHCP client message as a compromised engine may build it: every field
/// its own choice.
struct Dhcp {
    kind: MessageType,
    chaddr: [u8; 6],
    client_id: Vec<u8>,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

impl Dhcp {
    /// What our client sends: our chaddr and client identifier.
    fn ours(kind: MessageType, mac: [u8; 6]) -> Dhcp {
        Dhcp {
            kind,
            chaddr: mac,
            client_id: client_id_of(mac),
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            server_id: None,
        }
    }

    /// The whole frame, from our MAC.
    fn frame(&self, mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&self.chaddr);
        let msg = Message {
            op: Op::Request,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0x1234_5678,
            secs: 0,
            broadcast: true,
            ciaddr: self.ciaddr,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: self.giaddr,
            chaddr,
            options: Options {
                message_type: Some(self.kind),
                client_id: Some(self.client_id.clone()),
                requested_ip: self.requested,
                server_id: self.server_id,
                ..Options::default()
            },
        };
        let mut payload = Vec::new();
        msg.encode(&mut payload);
        build_udp_frame(mac, dst_mac, src, dst, 68, 67, &payload)
    }

    /// Broadcast from 0.0.0.0.
    fn broadcast(&self, mac: [u8; 6]) -> Vec<u8> {
        self.frame(mac, [0xff; 6], Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
    }
}

/// Option 61 in its MAC form (RFC 2132 9.14).
fn client_id_of(mac: [u8; 6]) -> Vec<u8> {
    let mut id = vec![1];
    id.extend_from_slice(&mac);
    id
}

fn hex(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

fn arp(op: ArpOp, mac: [u8; 6], sender_ip: Ipv4Addr, target_mac: [u8; 6], target_ip: Ipv4Addr) -> Vec<u8> {
    let packet = ArpPacket {
        op,
        sender_mac: mac,
        sender_ip,
        target_mac,
        target_ip,
    };
    let dst = if op == ArpOp::Reply { target_mac } else { [0xff; 6] };
    build_arp_frame(&packet, dst)
}

/// The real network role, started as the supervisor starts it, on the
/// client interface; the test stands where the supervisor forwards the
/// engine's frames.
struct NetworkRole {
    chan: Channel,
    child: RoleChild,
    mac: [u8; 6],
    /// Frames the role passed in from the wire, in order.
    inbound: Vec<Vec<u8>>,
    /// Rate-cap reports: frames dropped.
    capped: u64,
}

impl NetworkRole {
    /// Call on the client-namespace thread.
    fn start() -> NetworkRole {
        let mut rtnl = Rtnl::open().unwrap();
        let link = rtnl.link_by_name(CLIENT_IF).unwrap();
        rtnl.set_link_up(link.index).unwrap();
        let mac = link.mac.unwrap();
        let sock = PacketSocket::open(link.index, true).unwrap();
        let mut config = settings(link.index, mac);
        config.client_id = Some(client_id_of(mac));
        config.with_arp = true;
        let network_plan = plan::network(support::NETWORK_ID, support::NETWORK_ID);
        let (chan, child) = start_planned(
            std::path::Path::new(bin()),
            &network_plan,
            &config,
            None,
            &[sock.as_fd()],
        );
        NetworkRole {
            chan,
            child,
            mac,
            inbound: Vec::new(),
            capped: 0,
        }
    }

    /// Handle one message from the role if one comes within `ms`; returns a
    /// refusal's reason.
    fn next(&mut self, ms: u64) -> Option<Option<String>> {
        match recv_within::<FromNetwork>(&self.chan, ms)? {
            FromNetwork::Frame { data, .. } => self.inbound.push(data),
            FromNetwork::Refused { reason } => return Some(Some(reason)),
            FromNetwork::Capped { frames } => self.capped += frames,
        }
        Some(None)
    }

    /// Send `frame` and expect the role to refuse it.
    fn refused(&mut self, name: &str, frame: Vec<u8>) -> String {
        // One frame per rate-cap token: the cap refills 10 a second.
        std::thread::sleep(Duration::from_millis(120));
        self.chan.send(&ToNetwork::Transmit(frame)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(ANSWER_MS);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next(left.as_millis() as u64) {
                Some(Some(reason)) => {
                    assert!(alive(&mut self.child), "the network role died on {name}");
                    return reason;
                }
                Some(None) => {}
                None => panic!("{name}: sent, not refused"),
            }
        }
    }

    /// Send `frame` and expect no refusal (collecting what comes in).
    fn passed(&mut self, name: &str, frame: Vec<u8>) {
        std::thread::sleep(Duration::from_millis(120));
        self.chan.send(&ToNetwork::Transmit(frame)).unwrap();
        self.settle(name);
    }

    /// Take in what the role sends for a while; no refusal allowed.
    fn settle(&mut self, name: &str) {
        while let Some(msg) = self.next(400) {
            assert_eq!(msg, None, "{name}: refused");
        }
        assert!(alive(&mut self.child), "the network role died on {name}");
    }

    fn tell(&mut self, bound: Option<BoundAddress>, applying: Option<BoundAddress>) {
        self.chan
            .send(&ToNetwork::Binding(NetworkBinding { bound, applying }))
            .unwrap();
    }

    /// The DHCP replies to us that came in, decoded.
    fn replies(&self) -> Vec<Message> {
        self.inbound
            .iter()
            .filter_map(|f| match parse_frame(f, true) {
                Ok(Inbound::Dhcp(udp)) => Message::parse(udp.payload).ok(),
                _ => None,
            })
            .filter(|m| m.chaddr[..6] == self.mac)
            .collect()
    }
}

/// Everything the server's interface receives (UDP to 67 and ARP) while it
/// runs: the kit's raw server in the server namespace, answering nothing.
struct Capture {
    server: RawServer<(), Vec<u8>>,
    /// Frames already handed out by [`Capture::take`].
    taken: std::cell::Cell<usize>,
}

impl Capture {
    fn start(net: &Net) -> Capture {
        let spec = Spec {
            ns: net.server_ns.clone(),
            ifname: support::SERVER_IF.into(),
            open: PacketSocket::open_server,
        };
        let server = RawServer::start(
            spec,
            |_| Ok(()),
            |frame: &[u8], _: &[Vec<u8>]| Some(frame.to_vec()),
            |_: &(), _: &Vec<u8>| Vec::new(),
        );
        Capture {
            server,
            taken: std::cell::Cell::new(0),
        }
    }

    /// What arrived since the last call.
    fn take(&self) -> Vec<Vec<u8>> {
        let all = self.server.seen();
        let new = all[self.taken.get()..].to_vec();
        self.taken.set(all.len());
        new
    }
}

/// The DHCP message type of a captured client frame from `mac`.
fn captured_dhcp(frame: &[u8], mac: [u8; 6]) -> Option<MessageType> {
    if frame.len() < 42 || frame[6..12] != mac || frame[12..14] != [8, 0] {
        return None;
    }
    Message::parse(&frame[42..]).ok()?.options.message_type
}

/// The (op, sender IP) of a captured ARP frame from `mac`.
fn captured_arp(frame: &[u8], mac: [u8; 6]) -> Option<(u16, Ipv4Addr)> {
    if frame.len() < 42 || frame[6..12] != mac || frame[12..14] != [8, 6] {
        return None;
    }
    let op = u16::from_be_bytes([frame[20], frame[21]]);
    Some((op, Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31])))
}

#[test]
fn network_role_refuses_frames_that_are_not_ours() {
    let net = Net::new();
    in_client_ns(&net, move || {
        let mut role = NetworkRole::start();
        let mac = role.mac;
        let udp = |src_mac: [u8; 6], sport: u16, dport: u16| {
            let mut f = Dhcp::ours(MessageType::Discover, mac).broadcast(mac);
            f[6..12].copy_from_slice(&src_mac);
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dport.to_be_bytes());
            f
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
            role.refused(name, frame);
        }
        // A legitimate frame is sent without a word back.
        role.passed("DISCOVER", udp(mac, 68, 67));
        let _ = role.child.kill();
    });
}

/// Issue 9 item 3: a compromised engine made the network role send an ARP
/// reply claiming another host's address, a RELEASE of another client's
/// lease, REQUESTs with invented chaddrs and a DISCOVER flood. Each shape is
/// refused, against a real server whose view (its leases, its neighbour
/// table) stays as it was; what a client legitimately sends still passes.
#[test]
fn network_role_keeps_a_compromised_engine_from_attacking_the_lan() {
    let mut net = Net::new();
    let s = net.subnet.clone();
    let server = ip(&net.server_ip);
    let victim = ip(&format!("{s}.60"));
    let victim_mac = [0x02, 0x00, 0x5e, 0x77, 0x77, 0x60];
    // Another client's lease, as dnsmasq stores it (expiry, MAC, address,
    // name, client id), and the server's neighbour entry for that client.
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let victim_line = format!(
        "{expiry} {} {victim} victim {}",
        hex(&victim_mac, ":"),
        hex(&client_id_of(victim_mac), ":")
    );
    let leases = net.path("dnsmasq.leases");
    std::fs::write(&leases, format!("{victim_line}\n")).unwrap();
    net.start_dnsmasq("600", &[]);
    net.in_server(&[
        "ip",
        "neigh",
        "replace",
        &victim.to_string(),
        "lladdr",
        &hex(&victim_mac, ":"),
        "dev",
        support::SERVER_IF,
        "nud",
        "stale",
    ]);
    let neigh = |net: &Net| {
        let out = net.in_server(&[
            "ip",
            "neigh",
            "show",
            &victim.to_string(),
            "dev",
            support::SERVER_IF,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(neigh(&net).contains(&hex(&victim_mac, ":")));
    let server_mac = {
        let out = net.in_server(&["cat", &format!("/sys/class/net/{}/address", support::SERVER_IF)]);
        parse_mac(String::from_utf8_lossy(&out.stdout).trim())
    };
    let capture = Capture::start(&net);
    let (tx, rx) = std::sync::mpsc::channel();
    let leases_path = leases.clone();
    in_client_ns(&net, move || {
        let mut role = NetworkRole::start();
        let mac = role.mac;
        // The kernel takes a new link-layer address for a neighbour only
        // once its entry is a second old (locktime): let it age, so the
        // ARP attacks below would have worked.
        std::thread::sleep(Duration::from_millis(1200));
        let zero = Ipv4Addr::UNSPECIFIED;

        // --- What a client sends passes: a whole exchange with dnsmasq.
        role.passed("DISCOVER", Dhcp::ours(MessageType::Discover, mac).broadcast(mac));
        let offer = role
            .replies()
            .into_iter()
            .find(|m| m.options.message_type == Some(MessageType::Offer))
            .expect("dnsmasq answered the DISCOVER");
        let ours = offer.yiaddr;
        let request = Dhcp {
            requested: Some(ours),
            server_id: Some(server),
            ..Dhcp::ours(MessageType::Request, mac)
        };
        role.passed("REQUEST while SELECTING", request.broadcast(mac));
        assert!(
            role.replies()
                .iter()
                .any(|m| m.options.message_type == Some(MessageType::Ack) && m.yiaddr == ours),
            "no ACK for {ours}"
        );
        role.passed("ARP probe", arp(ArpOp::Request, mac, zero, [0; 6], ours));

        // --- Refused, before any address is ours.
        let mut reasons = Vec::new();
        let mut refuse = |role: &mut NetworkRole, name: &str, frame: Vec<u8>| {
            reasons.push((name.to_string(), role.refused(name, frame)));
        };
        refuse(
            &mut role,
            "ARP reply claiming the victim's address",
            arp(ArpOp::Reply, mac, victim, server_mac, server),
        );
        refuse(
            &mut role,
            "ARP request claiming the victim's address",
            arp(ArpOp::Request, mac, victim, [0; 6], server),
        );
        refuse(
            &mut role,
            "gratuitous ARP for the victim's address",
            arp(ArpOp::Request, mac, victim, [0; 6], victim),
        );
        refuse(
            &mut role,
            "announcement of the offered address before it is applied",
            arp(ArpOp::Request, mac, ours, [0; 6], ours),
        );
        let release_victim = Dhcp {
            kind: MessageType::Release,
            chaddr: victim_mac,
            client_id: client_id_of(victim_mac),
            ciaddr: victim,
            giaddr: zero,
            requested: None,
            server_id: Some(server),
        };
        refuse(
            &mut role,
            "RELEASE of another client's lease",
            release_victim.frame(mac, server_mac, victim, server),
        );
        refuse(
            &mut role,
            "RELEASE of another client's lease, broadcast",
            release_victim.frame(mac, [0xff; 6], zero, Ipv4Addr::BROADCAST),
        );
        let release_as_us = Dhcp {
            ciaddr: victim,
            server_id: Some(server),
            ..Dhcp::ours(MessageType::Release, mac)
        };
        refuse(
            &mut role,
            "RELEASE of another client's address with our chaddr",
            release_as_us.frame(mac, server_mac, victim, server),
        );
        for i in 0..3u8 {
            let chaddr = [0x02, 0x66, 0x66, 0x66, 0x66, i];
            let invented = Dhcp {
                chaddr,
                client_id: client_id_of(chaddr),
                requested: Some(ip(&format!("{s}.{}", 140 + i))),
                server_id: Some(server),
                ..Dhcp::ours(MessageType::Request, mac)
            };
            refuse(
                &mut role,
                "REQUEST with an invented chaddr",
                invented.broadcast(mac),
            );
        }
        let invented_id = Dhcp {
            client_id: vec![0xff, 1, 2, 3, 4, 0, 4, 9, 9],
            requested: Some(ip(&format!("{s}.145"))),
            server_id: Some(server),
            ..Dhcp::ours(MessageType::Request, mac)
        };
        refuse(
            &mut role,
            "REQUEST with our chaddr and an invented client id",
            invented_id.broadcast(mac),
        );
        let decline_victim = Dhcp {
            requested: Some(victim),
            server_id: Some(server),
            ..Dhcp::ours(MessageType::Decline, mac)
        };
        refuse(
            &mut role,
            "DECLINE of an address nobody offered us",
            decline_victim.broadcast(mac),
        );
        let relayed = Dhcp {
            giaddr: victim,
            ..Dhcp::ours(MessageType::Discover, mac)
        };
        refuse(
            &mut role,
            "DISCOVER with a giaddr (the answer goes to another host)",
            relayed.broadcast(mac),
        );
        let mut offer_frame = Dhcp::ours(MessageType::Offer, mac).broadcast(mac);
        offer_frame[42] = 2;
        refuse(&mut role, "a server's OFFER", offer_frame);
        refuse(
            &mut role,
            "unicast to the server from 0.0.0.0",
            Dhcp::ours(MessageType::Discover, mac).frame(mac, server_mac, zero, server),
        );
        let renew = Dhcp {
            ciaddr: ours,
            ..Dhcp::ours(MessageType::Request, mac)
        };
        refuse(
            &mut role,
            "RENEWING before the address is applied",
            renew.frame(mac, server_mac, ours, server),
        );

        // --- The supervisor says the actuator is applying our address: the
        // announcement waits, then goes out once the apply is done.
        let bound = BoundAddress {
            address: ours,
            server,
        };
        role.tell(None, Some(bound));
        role.passed(
            "announcement while applying (held)",
            arp(ArpOp::Request, mac, ours, [0; 6], ours),
        );
        let before = capture.take();
        role.tell(Some(bound), None);
        role.settle("announcement after the apply");

        // --- Bound: our address and our server, nothing else.
        role.passed("RENEWING", renew.frame(mac, server_mac, ours, server));
        role.passed(
            "REBINDING",
            renew.frame(mac, [0xff; 6], ours, Ipv4Addr::BROADCAST),
        );
        refuse(
            &mut role,
            "ARP reply for our own address",
            arp(ArpOp::Reply, mac, ours, server_mac, server),
        );
        refuse(
            &mut role,
            "ARP request from our address for another host",
            arp(ArpOp::Request, mac, ours, [0; 6], server),
        );
        refuse(
            &mut role,
            "REQUEST from our address to another host",
            renew.frame(mac, victim_mac, ours, victim),
        );
        refuse(
            &mut role,
            "ARP reply claiming the victim's address, bound",
            arp(ArpOp::Reply, mac, victim, server_mac, server),
        );

        // --- A flood of otherwise good DISCOVERs meets the rate cap.
        let discover = Dhcp::ours(MessageType::Discover, mac).broadcast(mac);
        let started = std::time::Instant::now();
        let mut sent = 0;
        while sent < 2000 {
            if role
                .chan
                .try_send(&ToNetwork::Transmit(discover.clone()))
                .unwrap()
            {
                sent += 1;
            } else {
                while role.next(0).is_some() {}
            }
        }
        let flood_secs = started.elapsed().as_secs_f64();
        // Until the cap's report comes (at most a second after the first
        // capped frame), and the role's queue is empty.
        let deadline = std::time::Instant::now() + Duration::from_millis(ANSWER_MS);
        while role.capped == 0 && std::time::Instant::now() < deadline {
            let _ = role.next(200);
        }
        role.settle("the flood");
        let window_secs = started.elapsed().as_secs_f64();
        let capped = role.capped;

        // --- A RELEASE of our own lease passes and frees it at the server.
        let release = Dhcp {
            ciaddr: ours,
            server_id: Some(server),
            ..Dhcp::ours(MessageType::Release, mac)
        };
        role.passed(
            "RELEASE of our lease",
            release.frame(mac, server_mac, ours, server),
        );
        assert!(alive(&mut role.child));
        let _ = role.child.kill();
        tx.send((
            reasons,
            mac,
            ours,
            before,
            flood_secs,
            window_secs,
            capped,
            capture,
        ))
        .unwrap();
    });
    let (reasons, mac, ours, before, flood_secs, window_secs, capped, capture) = rx.recv().unwrap();
    for (name, reason) in &reasons {
        eprintln!("refused {name}: {reason}");
    }
    let after = capture.take();

    // The held announcement went out only after the apply.
    let announced = |frames: &[Vec<u8>]| {
        frames
            .iter()
            .filter(|f| captured_arp(f, mac) == Some((1, ours)))
            .count()
    };
    assert_eq!(announced(&before), 0, "announced before the apply was done");
    assert_eq!(announced(&after), 1, "the held announcement was not sent");
    // Nothing refused reached the wire: no ARP reply, no ARP with the
    // victim's address, no DHCP with a foreign chaddr.
    let all: Vec<&Vec<u8>> = before.iter().chain(&after).collect();
    for f in &all {
        if let Some((op, sender)) = captured_arp(f, mac) {
            assert_eq!(op, 1, "an ARP reply left");
            assert!(sender == ours || sender.is_unspecified(), "ARP as {sender} left");
        }
        if f.len() > 70 && f[12..14] == [8, 0] {
            assert_eq!(f[42 + 28..42 + 34], mac, "a foreign chaddr left");
        }
    }
    // The flood: at most the burst plus the rate over the window.
    let discovers = after
        .iter()
        .filter(|f| captured_dhcp(f, mac) == Some(MessageType::Discover))
        .count();
    let bound = 30.0 + 10.0 * window_secs + 2.0;
    eprintln!(
        "flood of 2000 in {flood_secs:.2} s: {discovers} DISCOVERs reached the server in {window_secs:.2} s, {capped} capped"
    );
    assert!(discovers >= 1, "the cap let nothing through");
    assert!(
        (discovers as f64) <= bound,
        "{discovers} DISCOVERs passed, bound {bound:.0}"
    );
    assert!(capped >= 2000 - bound as u64, "capped {capped}");

    // The server's view: the other client's lease and neighbour entry as
    // they were; no lease for an invented chaddr; our own released.
    let leases_now = std::fs::read_to_string(&leases_path).unwrap();
    assert!(
        leases_now.contains(&victim_line),
        "victim lease changed:\n{leases_now}"
    );
    assert!(
        !leases_now.contains("02:66:66:66:66"),
        "invented clients got leases:\n{leases_now}"
    );
    wait_until_released(&leases_path, ours);
    let n = neigh(&net);
    assert!(n.contains(&hex(&victim_mac, ":")), "neighbour entry moved: {n}");
    drop(capture);
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

/// dnsmasq writes its lease file after a RELEASE; wait for it (bounded).
fn wait_until_released(path: &std::path::Path, addr: Ipv4Addr) {
    let needle = format!(" {addr} ");
    support::wait_until(Duration::from_millis(ANSWER_MS), || {
        !std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(&needle)
    });
}

/// The route settings as the actuator enforces them on its own: with
/// `ignore_classless_routes` only option 3's shape gets through, and
/// `route_table` puts the routes in that table, not the main one.
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
            std::os::unix::fs::chown(
                dir.join(d),
                Some(support::ACTUATOR_ID),
                Some(support::ACTUATOR_ID),
            )
            .unwrap();
        }
        let state = mirage_sdk::files::open_dir(&dir.join("state")).unwrap();
        let run = mirage_sdk::files::open_dir(&dir.join("run")).unwrap();
        let mut config = settings(link.index, link.mac.unwrap());
        config.limits.ignore_classless_routes = true;
        config.route_table = Some(100);
        let fds = [rtnl.as_fd(), monitor.as_fd(), state.as_fd(), run.as_fd()];
        let actuator_plan = plan::actuator(support::ACTUATOR_ID, support::ACTUATOR_ID, false);
        let (ours, mut actuator) =
            start_planned(std::path::Path::new(bin()), &actuator_plan, &config, None, &fds);
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
