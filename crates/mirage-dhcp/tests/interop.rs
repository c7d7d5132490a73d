//! Interoperability: every scenario against dnsmasq, Kea, ISC dhcpd and
//! busybox udhcpd (Debian packages), each in namespaces the test creates,
//! under `--sandbox seccomp`, `--sandbox none` and `--sandbox kvm` (the
//! engine as a KVM guest). Each (server, sandbox) pair runs in its own
//! thread and namespaces, and records its outcome for docs/interop.md
//! (scripts/interop-table.sh).
//! Needs root (network namespaces, raw sockets) and /dev/kvm (without it
//! the kvm runs fail, unless `MIRAGE_NO_KVM=1` skips them with a loud
//! line); CI runs as root.

mod support;

use std::time::{Duration, Instant};

use support::{CLIENT_IF, Net, Offer, Server, StaticRoute, matrix, read};

const BOUND_WITHIN: Duration = Duration::from_secs(20);

fn start_client(net: &mut Net, sandbox: &str, extra: &[&str]) -> usize {
    net.start_daemon(sandbox, extra)
}

fn long(server: Server) -> Offer {
    Offer::long(server)
}

fn short(server: Server) -> Offer {
    Offer::short(server)
}

fn routes(net: &Net) -> String {
    net.client_routes()
}

#[test]
fn plain_lease() {
    matrix("plain lease", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        let offer = long(server);
        net.start_server(server, 0, &offer);
        start_client(&mut net, sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        let lease = &status["lease"];
        let addr = lease["address"].as_str().unwrap().to_string();
        let host: u32 = addr.rsplit('.').next().unwrap().parse().unwrap();
        assert!(addr.starts_with(&format!("{}.", net.subnet)), "{addr}");
        assert!((50..=150).contains(&host), "{addr} outside the pool");
        assert_eq!(lease["prefix_len"], 24);
        assert_eq!(lease["server_id"], net.server_ip.as_str());
        assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
        let valid = net.client_addr_json()["valid_life_time"].as_u64().unwrap();
        let granted = u64::from(offer.lease_secs);
        assert!(
            valid <= granted && valid + 30 >= granted,
            "valid_life_time {valid} of {granted}"
        );
        let r = routes(&net);
        assert!(
            r.contains(&format!("default via {} dev {CLIENT_IF}", net.server_ip)),
            "{r}"
        );
        let resolv = read(&net.path("resolv.conf"));
        assert!(
            resolv.contains(&format!("nameserver {}\n", net.server_ip)),
            "{resolv}"
        );
        assert_eq!(status["sandbox"], sandbox);
        assert_eq!(status["frames_refused"], 0);
        assert_eq!(status["intents_refused"], 0);
        // Kea and dhcpd hand out the lowest free address; dnsmasq and
        // udhcpd pick one from a hash of the client.
        let pick = if host == 50 {
            "lowest free address"
        } else {
            "address hashed from the client"
        };
        format!("/24, {} s lease, {pick}", lease["lease_secs"])
    });
}

#[test]
fn mtu_option() {
    matrix("MTU (26)", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        let mut offer = long(server);
        offer.mtu = Some(1400);
        net.start_server(server, 0, &offer);
        start_client(&mut net, sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        assert_eq!(status["lease"]["mtu"], 1400);
        let link = net.in_client(&["ip", "-j", "link", "show", CLIENT_IF]);
        let link: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
        assert_eq!(link[0]["mtu"], 1400);
        "link MTU 1400".into()
    });
}

#[test]
fn domain_search_list() {
    matrix("search list (119)", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        let mut offer = long(server);
        offer.search = vec![
            "corp.example".into(),
            "example.org".into(),
            "lab.corp.example".into(),
        ];
        net.start_server(server, 0, &offer);
        start_client(&mut net, sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        assert_eq!(
            status["lease"]["search"],
            serde_json::json!(["corp.example", "example.org", "lab.corp.example"])
        );
        let resolv = read(&net.path("resolv.conf"));
        assert!(
            resolv.contains("search corp.example example.org lab.corp.example\n"),
            "{resolv}"
        );
        "3 domains in order".into()
    });
}

/// RFC 3442: with 121 present, option 3 is ignored; the default route and
/// a static route come from 121, via a gateway that is not option 3's.
#[test]
fn classless_routes_with_default() {
    matrix("classless routes (121)", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        let p = net.subnet.clone();
        let gw = format!("{p}.254");
        let mut offer = long(server);
        offer.routes = vec![
            StaticRoute::new("198.51.100.0", 24, &gw),
            StaticRoute::new("0.0.0.0", 0, &gw),
        ];
        net.start_server(server, 0, &offer);
        start_client(&mut net, sandbox, &[]);
        net.wait_state("bound", BOUND_WITHIN);
        let r = routes(&net);
        assert!(r.contains(&format!("default via {gw} dev {CLIENT_IF}")), "{r}");
        assert!(
            r.contains(&format!("198.51.100.0/24 via {gw} dev {CLIENT_IF}")),
            "{r}"
        );
        assert!(!r.contains(&format!("via {p}.1 ")), "option 3 was used: {r}");
        "default + /24 from 121, option 3 ignored".into()
    });
}

/// The Google Cloud shape: /32 address, a host route to the gateway in 121
/// before the default route through it (field notes item 1).
#[test]
fn cloud_slash_32_with_host_route() {
    matrix(
        "cloud /32 + 121 host route",
        &Server::ALL,
        &[],
        |server, sandbox| {
            let mut net = Net::new();
            let p = net.subnet.clone();
            let gw = format!("{p}.1");
            let mut offer = long(server);
            offer.netmask = Some("255.255.255.255".into());
            offer.mtu = Some(1460);
            offer.routes = vec![
                StaticRoute::new(&gw, 32, "0.0.0.0"),
                StaticRoute::new("0.0.0.0", 0, &gw),
            ];
            net.start_server(server, 0, &offer);
            start_client(&mut net, sandbox, &[]);
            let status = net.wait_state("bound", BOUND_WITHIN);
            let addr = status["lease"]["address"].as_str().unwrap().to_string();
            assert_eq!(status["lease"]["prefix_len"], 32, "{status}");
            assert_eq!(net.client_addrs(), vec![format!("{addr}/32")]);
            let r = routes(&net);
            assert!(
                r.contains(&format!("{gw} dev {CLIENT_IF} ")),
                "no host route: {r}"
            );
            assert!(r.contains(&format!("default via {gw} dev {CLIENT_IF}")), "{r}");
            // The kernel resolves an off-link destination through the gateway.
            let get = net.in_client(&["ip", "route", "get", "192.0.2.10"]);
            let get = String::from_utf8_lossy(&get.stdout).into_owned();
            assert!(get.contains(&format!("via {gw} dev {CLIENT_IF}")), "{get}");
            format!("/32, host route then default, MTU {}", status["lease"]["mtu"])
        },
    );
}

#[test]
fn ntp_servers_published() {
    matrix("NTP servers (42)", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        let mut offer = long(server);
        offer.ntp = vec!["10.9.9.9".into(), "10.9.9.10".into()];
        net.start_server(server, 0, &offer);
        start_client(&mut net, sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        assert_eq!(
            status["lease"]["ntp_servers"],
            serde_json::json!(["10.9.9.9", "10.9.9.10"])
        );
        "status.json lists both".into()
    });
}

#[test]
fn short_lease_renewals() {
    matrix("short lease, renewals", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        let offer = short(server);
        net.start_server(server, 0, &offer);
        start_client(&mut net, sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        let addr = net.client_addrs();
        let watch = net.watch_addresses();
        let t1 = status["lease"]["renew_in_secs"].as_u64().unwrap();
        // Two renewals take 2 x T1; allow one more T1 and slack for load.
        let deadline = Instant::now() + Duration::from_secs(3 * t1 + 10);
        loop {
            let s = net.status().unwrap();
            if s["counters"]["renewals"].as_u64().unwrap_or(0) >= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "no renewals: {s}");
            assert_eq!(net.client_addrs(), addr, "the address changed during renewals");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(net.client_addrs(), addr);
        assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
        let s = net.status().unwrap();
        assert_eq!(s["counters"]["rebinds"], 0, "a renewal went unanswered: {s}");
        let timers = match offer.t1_t2 {
            Some((t1, t2)) => format!("T1 {t1} s, T2 {t2} s sent"),
            None => "no T1/T2 sent (1/2, 7/8 used)".into(),
        };
        format!("{} s lease, {timers}: renewed in place", s["lease"]["lease_secs"])
    });
}

/// The server comes back on another subnet. RFC 2131 4.4.5 lets a server
/// NAK a RENEWING/REBINDING client on the wrong network; dhcpd and udhcpd
/// never NAK RENEWING, Kea 2.x drops. Whatever the server does, the client
/// must end up on the new subnet: by a NAK, or at expiry. Records which.
#[test]
fn nak_after_subnet_change() {
    matrix(
        "subnet changes under a lease",
        &Server::ALL,
        &[],
        |server, sandbox| {
            let mut net = Net::new();
            let offer = short(server);
            let first = net.start_server(server, 0, &offer);
            start_client(&mut net, sandbox, &[]);
            let status = net.wait_state("bound", BOUND_WITHIN);
            let old = status["lease"]["address"].as_str().unwrap().to_string();
            let lease_secs = status["lease"]["lease_secs"].as_u64().unwrap();
            net.stop_server(&first);
            let new_prefix = format!("172.31.{}", net.subnet.rsplit('.').next().unwrap());
            net.move_server(0, &new_prefix);
            let moved_at = Instant::now();
            let log_before = net.client_log().len();
            net.start_server(server, 0, &offer);
            let deadline = moved_at + Duration::from_secs(lease_secs + 20);
            let new = loop {
                if let Some(s) = net.status()
                    && s["state"] == "bound"
                    && let Some(a) = s["lease"]["address"].as_str()
                    && a.starts_with(&format!("{new_prefix}."))
                {
                    break a.to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "still not on {new_prefix}: {:?}",
                    net.status()
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            let addrs = net.client_addrs();
            assert_eq!(addrs.len(), 1, "{addrs:?}");
            assert!(addrs[0].starts_with(&new), "{addrs:?}");
            let s = net.status().unwrap();
            let log = net.client_log()[log_before..].to_string();
            let naks = s["counters"]["naks"].as_u64().unwrap();
            let how = if naks > 0 {
                if log.contains("state renewing -> selecting") {
                    "NAK while renewing"
                } else if log.contains("state rebinding -> selecting") {
                    "NAK while rebinding"
                } else {
                    "NAK"
                }
            } else {
                assert!(s["counters"]["expiries"].as_u64().unwrap() >= 1, "{s}");
                "no NAK: old lease expired, then DISCOVER"
            };
            assert!(!old.starts_with(&format!("{new_prefix}.")));
            how.to_string()
        },
    );
}

/// The server vanishes: REBINDING at T2, the address kept while the lease
/// is valid and removed at expiry (dnsmasq's 120 s version is in dnsmasq.rs).
#[test]
fn server_gone_rebinds_then_expires() {
    let servers = [Server::Kea, Server::Dhcpd, Server::Udhcpd];
    let na = [(Server::Dnsmasq, "120 s minimum lease: tests/dnsmasq.rs covers it")];
    matrix("server gone: rebind, expiry", &servers, &na, |server, sandbox| {
        let mut net = Net::new();
        let run = net.start_server(server, 0, &Offer::new(10));
        start_client(&mut net, sandbox, &[]);
        net.wait_state("bound", BOUND_WITHIN);
        let watch = net.watch_addresses();
        net.stop_server(&run);
        let s = net.wait_state("rebinding", Duration::from_secs(15));
        assert_eq!(net.client_addrs().len(), 1, "gone before expiry");
        assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
        let left = s["lease"]["remaining_secs"].as_u64().unwrap();
        let at = Instant::now();
        support::wait_until(Duration::from_secs(left + 5), || net.client_addrs().is_empty());
        let after = at.elapsed().as_secs();
        assert!(after + 2 >= left, "removed after {after} s, {left} s were left");
        support::wait_until(Duration::from_secs(5), || {
            net.status()
                .is_some_and(|s| s["counters"]["expiries"].as_u64() >= Some(1) && s["state"] != "bound")
        });
        assert!(!routes(&net).contains("default"), "{}", routes(&net));
        "rebinding, then removed at expiry".to_string()
    });
}

/// Two servers answer the same DISCOVER (two namespaces on one bridge).
/// The client takes one offer and uses that server's lease consistently.
#[test]
fn two_servers_offer_at_once() {
    matrix("two servers at once", &Server::ALL, &[], |server, sandbox| {
        let partner = if server == Server::Dnsmasq {
            Server::Kea
        } else {
            Server::Dnsmasq
        };
        let mut net = Net::new_two_servers();
        let mut a = long(server);
        a.pool = (50, 99);
        let mut b = long(partner);
        b.pool = (100, 149);
        net.start_server(server, 0, &a);
        net.start_server(partner, 1, &b);
        start_client(&mut net, sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        let addr = status["lease"]["address"].as_str().unwrap().to_string();
        let host: u32 = addr.rsplit('.').next().unwrap().parse().unwrap();
        let (winner, ip) = if host < 100 {
            (server, &net.hosts[0].ip)
        } else {
            (partner, &net.hosts[1].ip)
        };
        assert_eq!(status["lease"]["server_id"], ip.as_str(), "{status}");
        assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
        let r = routes(&net);
        assert!(r.contains(&format!("default via {ip} ")), "{r}");
        format!("with {}: took {}'s offer", partner.name(), winner.name())
    });
}

/// A relayed lease: giaddr set by ISC dhcrelay, server on another subnet,
/// renewals unicast through the relay namespace's routing.
#[test]
fn relayed_lease() {
    matrix("relayed (giaddr)", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new_relayed();
        let offer = short(server);
        net.start_server(server, 0, &offer);
        start_client(&mut net, sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        let addr = status["lease"]["address"].as_str().unwrap().to_string();
        assert!(addr.starts_with(&format!("{}.", net.subnet)), "{addr}");
        assert_eq!(status["lease"]["server_id"], net.server_ip.as_str());
        let r = routes(&net);
        assert!(r.contains(&format!("default via {}.1 ", net.subnet)), "{r}");
        let t1 = status["lease"]["renew_in_secs"].as_u64().unwrap();
        support::wait_until(Duration::from_secs(3 * t1 + 10), || {
            net.status()
                .is_some_and(|s| s["counters"]["renewals"].as_u64() >= Some(1))
        });
        let s = net.status().unwrap();
        let how = if s["counters"]["rebinds"] == 0 {
            "renewed by unicast through the relay"
        } else {
            "unicast renewal unanswered; rebound by broadcast"
        };
        format!("lease via dhcrelay; {how}")
    });
}
